//! The subcommands of the `tlsrelay` binary, one module each, with the
//! rendering of what they print. Errors are `anyhow` here: each becomes one
//! `tlsrelay: …` line on stderr and exit status 2.

pub mod audit;
pub mod check;
pub mod cluster;
pub mod config;
pub mod manpage;
pub mod policy;
pub mod posture;
pub mod queue;
pub mod reload;
pub mod report;
pub mod serve;
pub mod sts;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use tlsrelay::config::Config;
use tlsrelay::policy::local::PolicySet;
use tlsrelay::resolve::dns::Dns;
use tlsrelay::resolve::mta_sts::{FetchSettings, MtaSts};

/// The configuration file used when no `-c/--config` is given and it exists.
pub const SYSTEM_CONFIG: &str = "/etc/tlsrelay/tlsrelay.toml";

/// The environment variable naming the configuration file when `-c` is not given.
pub const CONFIG_ENV: &str = "TLSRELAY_CONFIG";

/// The configuration file to use: `-c`, else `$TLSRELAY_CONFIG` (when not
/// empty), else [`SYSTEM_CONFIG`] when it exists, else none (built-in defaults).
pub fn config_path(
    flag: Option<PathBuf>,
    env: Option<OsString>,
    system_exists: bool,
) -> Option<PathBuf> {
    flag.or_else(|| env.filter(|v| !v.is_empty()).map(PathBuf::from))
        .or_else(|| system_exists.then(|| PathBuf::from(SYSTEM_CONFIG)))
}

/// The configuration in `path`, or the built-in defaults without one.
pub fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    Ok(match path {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    })
}

/// A runtime for the subcommands that use the network.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Runtime::new()?)
}

/// The validating resolver `serve` would use.
pub fn dns(config: &Config) -> anyhow::Result<Dns> {
    Ok(Dns::new(&tlsrelay::relay::dns_settings(config))?)
}

/// DNS, the MTA-STS cache and the local policies as `serve` would set them up.
pub fn engines(config: &Config) -> anyhow::Result<(Dns, MtaSts, PolicySet)> {
    let dns = dns(config)?;
    let settings = FetchSettings {
        port: config.mta_sts.https_port,
        extra_roots: config.mta_sts.extra_roots.clone(),
        timeout: config.mta_sts.fetch_timeout.get(),
    };
    let sts = MtaSts::new(dns.clone(), settings, &config.spool.dir.join("mta-sts"))
        .map_err(anyhow::Error::msg)?;
    let policies = match &config.policies.dir {
        Some(dir) => PolicySet::load_dir(dir)?,
        None => PolicySet::empty(),
    };
    Ok((dns, sts, policies))
}

/// A Unix time in RFC 3339, or nothing when it is out of range.
pub fn rfc3339(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .map(|t| t.to_rfc3339())
        .unwrap_or_default()
}

/// Pretty JSON of a value, for `--json`.
pub fn pretty_json<T: serde::Serialize>(value: &T) -> anyhow::Result<String> {
    serde_json::to_string_pretty(value).context("cannot render JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_path_precedence() {
        let p = |s: &str| Some(PathBuf::from(s));
        let e = |s: &str| Some(OsString::from(s));
        let cases = [
            (p("a.toml"), e("b.toml"), true, p("a.toml")),
            (p("a.toml"), None, false, p("a.toml")),
            (None, e("b.toml"), true, p("b.toml")),
            (None, e(""), true, p(SYSTEM_CONFIG)),
            (None, e(""), false, None),
            (None, None, true, p(SYSTEM_CONFIG)),
            (None, None, false, None),
        ];
        for (flag, env, exists, want) in cases {
            let label = format!("{flag:?} {env:?} {exists}");
            assert_eq!(config_path(flag, env, exists), want, "{label}");
        }
    }
}
