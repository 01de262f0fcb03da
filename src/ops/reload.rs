//! What SIGHUP and `tlsrelay reload` change in a running server without
//! dropping a session or a message: the configuration file is reread, and of it
//! the inbound certificate and key, the users file and the log level take effect
//! at once; the local policies and the MTA-STS cache are reread from disk. Any
//! other setting that changed is named as taking effect at the next restart.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use crate::config::Config;
use crate::inbound::credentials::Credentials;

/// Keys that a reload applies; any other changed key needs a restart.
const RELOADED: &[&str] = &[
    "server.tls_cert_file",
    "server.tls_key_file",
    "server.auth_users_file",
    "log.level",
];

/// Rereads what can change while running; a bad file keeps the old state.
pub struct Reloader {
    /// The configuration file (None: built-in defaults, nothing to reread).
    pub config_path: Option<std::path::PathBuf>,
    /// The configuration in force, to see what a reload changes.
    pub current: Mutex<Arc<Config>>,
    /// The local policies in force.
    pub slot: crate::delivery::PolicySlot,
    /// The MTA-STS engine, when on.
    pub mta_sts: Option<Arc<crate::resolve::mta_sts::MtaSts>>,
    /// The inbound certificate and users.
    pub credentials: Arc<Credentials>,
}

/// What one reload did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    /// What took effect.
    pub applied: Vec<String>,
    /// What could not be reloaded (the previous state stays in force).
    pub errors: Vec<String>,
    /// Changed settings that take effect only at the next restart.
    pub restart_needed: Vec<String>,
}

impl fmt::Display for ReloadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "reloaded: {}", list(&self.applied))?;
        for e in &self.errors {
            writeln!(f, "error (the previous state stays in force): {e}")?;
        }
        if !self.restart_needed.is_empty() {
            writeln!(
                f,
                "changed, takes effect at the next restart: {}",
                self.restart_needed.join(", ")
            )?;
        }
        Ok(())
    }
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "nothing".into()
    } else {
        items.join(", ")
    }
}

impl Reloader {
    /// Rereads the configuration, credentials, log level, policies and the
    /// MTA-STS cache; logs and returns what happened.
    pub fn reload(&self) -> ReloadReport {
        let mut report = ReloadReport::default();
        let config = self.reread_config(&mut report);
        if let Some(config) = &config {
            match self.credentials.reload(config) {
                Ok(done) => report.applied.extend(done),
                Err(e) => report.errors.push(format!("certificate or users: {e}")),
            }
            match crate::ops::logging::set_level(&config.log.level) {
                Ok(done) => report.applied.push(done),
                Err(e) => report.errors.push(e),
            }
        }
        self.reload_policies(&mut report);
        if let Some(sts) = &self.mta_sts {
            sts.reload_from_disk();
            report.applied.push("MTA-STS cache".into());
        }
        if let Some(config) = config {
            *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
        }
        log(&report);
        report
    }

    /// The configuration file, reread and compared with the one in force.
    fn reread_config(&self, report: &mut ReloadReport) -> Option<Config> {
        let path = self.config_path.as_ref()?;
        let config = match Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                report
                    .errors
                    .push(format!("configuration not reloaded: {e}"));
                return None;
            }
        };
        let current = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        report.restart_needed = changed_keys(&current, &config)
            .into_iter()
            .filter(|k| !RELOADED.contains(&k.as_str()))
            .collect();
        report
            .applied
            .push(format!("configuration {}", path.display()));
        Some(config)
    }

    /// The policies directory in force (a new `policies.dir` needs a restart).
    fn reload_policies(&self, report: &mut ReloadReport) {
        let current = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(dir) = &current.policies.dir else {
            return;
        };
        match crate::policy::local::PolicySet::load_dir(dir) {
            Ok(set) => {
                report.applied.push(format!(
                    "{} local policies from {}",
                    set.len(),
                    dir.display()
                ));
                super::exceptions::report(&set, chrono::Utc::now().date_naive());
                *self.slot.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set);
            }
            Err(e) => report
                .errors
                .push(format!("local policies not reloaded: {e}")),
        }
    }
}

/// Logs a reload: one line for what took effect, one per error, one for restarts.
fn log(report: &ReloadReport) {
    tracing::info!(applied = %list(&report.applied), "reload");
    for e in &report.errors {
        tracing::error!("reload: {e}; the previous state stays in force");
    }
    if !report.restart_needed.is_empty() {
        let keys = report.restart_needed.join(", ");
        tracing::warn!(keys = %keys, "reload: changed settings take effect only at the next restart");
    }
}

/// The dotted keys whose values differ between `a` and `b`.
pub fn changed_keys(a: &Config, b: &Config) -> Vec<String> {
    let (a, b) = (flatten(a), flatten(b));
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect()
}

/// Every leaf of the configuration as `section.key` → its TOML text.
fn flatten(config: &Config) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Ok(toml::Value::Table(sections)) = toml::Value::try_from(config) else {
        return out;
    };
    for (section, value) in sections {
        match value {
            toml::Value::Table(keys) => {
                for (k, v) in keys {
                    out.insert(format!("{section}.{k}"), v.to_string());
                }
            }
            other => {
                out.insert(section, other.to_string());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_keys_name_what_differs() {
        let parse = |t: &str| Config::parse(t, None).unwrap();
        let base = parse("[server]\nhostname = \"relay.test\"\n");
        let cases: [(&str, &[&str]); 4] = [
            ("[server]\nhostname = \"relay.test\"\n", &[]),
            (
                "[server]\nhostname = \"relay.test\"\nmax_sessions = 7\n",
                &["server.max_sessions"],
            ),
            (
                "[server]\nhostname = \"relay.test\"\n[log]\nlevel = \"debug\"\n",
                &["log.level"],
            ),
            (
                "[server]\nhostname = \"other.test\"\n[delivery]\nmax_connections = 3\n",
                &["delivery.max_connections", "server.hostname"],
            ),
        ];
        for (text, want) in cases {
            let got = changed_keys(&base, &parse(text));
            assert_eq!(
                got,
                want.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                "{text}"
            );
        }
    }
}
