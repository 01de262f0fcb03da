//! Configurations that work but are dangerous: `tlsrelay config check` prints
//! these, and `tlsrelay serve` logs them at start.
//!
//! They are warnings, not errors: a lab may want an open relay on a private
//! network, and a key file may be group-readable on purpose. Each one names the
//! key or file and the fix.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;

use super::{Config, Network};

/// A setting that works but that an operator most likely does not want.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigWarning {
    /// `relay_networks` lets a wide range of public addresses relay without
    /// AUTH, and the server listens on an address others can reach.
    OpenRelay {
        /// The too-wide entry of `server.relay_networks`.
        network: IpNet,
        /// A listening address that is not loopback.
        listen: std::net::SocketAddr,
    },
    /// A secret file is readable (or writable) by group or others.
    LooseMode {
        /// The configuration key naming the file.
        key: &'static str,
        /// The file.
        file: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// TLS reporting is on, but `server.hostname` cannot sign reports.
    ReportsOff {
        /// Why, with the fix.
        why: String,
    },
    /// `metrics.posture` asks for `/posture`, but there is no `metrics.listen` to serve it on.
    PostureWithoutListener,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigWarning::OpenRelay { network, listen } => write!(
                f,
                "open relay: server.relay_networks contains {network}, so anyone in it may relay \
                 mail without AUTH, and the server listens on {listen}; list only your own MTAs' \
                 networks (e.g. \"192.0.2.0/28\") or listen on 127.0.0.1 only"
            ),
            ConfigWarning::LooseMode { key, file, mode } => write!(
                f,
                "{key} {} has mode {mode:04o}, readable by group or others; run `chmod 600 {}` \
                 (owned by the user tlsrelay runs as)",
                file.display(),
                file.display()
            ),
            ConfigWarning::ReportsOff { why } => write!(
                f,
                "TLS reports will not be sent: {why} (or set tls_rpt.enabled = false)"
            ),
            ConfigWarning::PostureWithoutListener => write!(
                f,
                "metrics.posture = true has no effect without metrics.listen; set \
                 metrics.listen = \"127.0.0.1:9325\" to serve /posture"
            ),
        }
    }
}

/// Whether `net` lies entirely in address space that is not routed on the
/// Internet (private, shared, loopback, link-local, unique-local).
fn is_non_public(net: &IpNet) -> bool {
    const NON_PUBLIC: [&str; 9] = [
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "fc00::/7",
        "fe80::/10",
        "::1/128",
    ];
    NON_PUBLIC
        .iter()
        .any(|n| n.parse::<IpNet>().is_ok_and(|n| n.contains(net)))
}

/// Whether `net` holds more public addresses than one organisation's MTAs
/// plausibly need: wider than a /16 (IPv4) or a /32 (IPv6), outside private space.
pub fn is_wide_public(net: &IpNet) -> bool {
    let wide = match net {
        IpNet::V4(v4) => v4.prefix_len() < 16,
        IpNet::V6(v6) => v6.prefix_len() < 32,
    };
    wide && !is_non_public(net)
}

/// The open-relay warnings: wide public `relay_networks` on a reachable listener.
fn open_relay(config: &Config) -> Vec<ConfigWarning> {
    let Some(listen) = config
        .server
        .listen
        .iter()
        .find(|a| !is_loopback(a.ip()))
        .copied()
    else {
        return vec![];
    };
    config
        .server
        .relay_networks
        .iter()
        .filter(|Network(n)| is_wide_public(n))
        .map(|&Network(network)| ConfigWarning::OpenRelay { network, listen })
        .collect()
}

/// Loopback, also as an IPv4-mapped IPv6 address.
fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(v6.is_loopback(), |v4| v4.is_loopback()),
        IpAddr::V4(v4) => v4.is_loopback(),
    }
}

/// The permission bits of `file` when group or others have any access to it.
fn loose_mode(file: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(file).ok()?.permissions().mode() & 0o7777;
    (mode & 0o077 != 0).then_some(mode)
}

impl Config {
    /// What is dangerous in this configuration; empty when nothing is.
    pub fn warnings(&self) -> Vec<ConfigWarning> {
        let mut out = open_relay(self);
        let secrets = [
            ("server.tls_key_file", self.server.tls_key_file.as_ref()),
            (
                "server.auth_users_file",
                self.server.auth_users_file.as_ref(),
            ),
            ("tls_rpt.dkim_key_file", self.tls_rpt.dkim_key_file.as_ref()),
        ];
        for (key, file) in secrets {
            let Some(file) = file else { continue };
            if let Some(mode) = loose_mode(file) {
                out.push(ConfigWarning::LooseMode {
                    key,
                    file: file.clone(),
                    mode,
                });
            }
        }
        if self.tls_rpt.enabled && self.delivery.enabled {
            let why = crate::reporting::upkeep::hostname_problem(&self.server.hostname);
            out.extend(why.map(|why| ConfigWarning::ReportsOff { why }));
        }
        if self.metrics.posture && self.metrics.listen.is_none() {
            out.push(ConfigWarning::PostureWithoutListener);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wide_public_networks() {
        let cases = [
            ("0.0.0.0/0", true),
            ("0.0.0.0/1", true),
            ("::/0", true),
            ("2000::/3", true),
            ("1.0.0.0/8", true),
            ("198.51.0.0/15", true),
            ("198.51.0.0/16", false),
            ("192.0.2.0/24", false),
            ("10.0.0.0/8", false),
            ("172.16.0.0/12", false),
            ("fc00::/7", false),
            ("2001:db8::/32", false),
            ("2001:db8::/31", true),
        ];
        for (net, wide) in cases {
            assert_eq!(is_wide_public(&net.parse().unwrap()), wide, "{net}");
        }
    }

    #[test]
    fn open_relay_only_on_a_reachable_listener() {
        let parse = |text: &str| Config::parse(text, None).unwrap();
        let open = parse("[server]\nhostname = \"relay.example.com\"\nlisten = [\"0.0.0.0:25\"]\nrelay_networks = [\"0.0.0.0/0\"]\n");
        let w = open.warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        let text = w[0].to_string();
        assert!(text.contains("open relay"), "{text}");
        assert!(text.contains("0.0.0.0/0"), "{text}");
        let local =
            parse("[server]\nhostname = \"relay.example.com\"\nlisten = [\"127.0.0.1:25\"]\nrelay_networks = [\"0.0.0.0/0\"]\n");
        assert!(local.warnings().is_empty());
        let short = parse("[server]\nhostname = \"vm\"\n");
        let w: Vec<String> = short.warnings().iter().map(|w| w.to_string()).collect();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("TLS reports will not be sent: server.hostname \"vm\""),
            "{w:?}"
        );
        let quiet = parse("[server]\nhostname = \"vm\"\n[tls_rpt]\nenabled = false\n");
        assert!(quiet.warnings().is_empty());
        let fine = parse("[server]\nhostname = \"relay.example.com\"\nlisten = [\"[::]:25\"]\nrelay_networks = [\"10.0.0.0/8\"]\n");
        assert!(fine.warnings().is_empty());
        let host = "[server]\nhostname = \"relay.example.com\"\n";
        let posture = parse(&format!("{host}[metrics]\nposture = true\n"));
        assert_eq!(posture.warnings(), [ConfigWarning::PostureWithoutListener]);
        let served = parse(&format!(
            "{host}[metrics]\nposture = true\nlisten = \"127.0.0.1:9325\"\n"
        ));
        assert!(served.warnings().is_empty());
    }
}
