//! The files a configuration names, loaded the way `serve` loads them, so that
//! `tlsrelay config check` fails exactly where `serve` would refuse to start:
//! certificate and key (and that they match), the users file, the trust
//! anchor, extra roots, the policies directory and the DKIM key.

use std::fmt;

use super::Config;

/// A file the configuration names that `serve` could not use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileProblem {
    /// The configuration key naming the file.
    pub key: &'static str,
    /// What is wrong with it, from the loader `serve` uses.
    pub message: String,
}

impl fmt::Display for FileProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

impl Config {
    /// Loads every file this configuration names; the problems, in file order.
    pub fn check_files(&self) -> Vec<FileProblem> {
        let mut problems = Vec::new();
        let mut check = |key: &'static str, result: Result<(), String>| {
            if let Err(message) = result {
                problems.push(FileProblem { key, message });
            }
        };
        let s = &self.server;
        if let (Some(cert), Some(key)) = (&s.tls_cert_file, &s.tls_key_file) {
            let loaded = crate::tls::server_config(cert, key);
            check(
                "server.tls_cert_file",
                loaded.map(drop).map_err(|e| e.to_string()),
            );
        }
        if let Some(path) = &s.auth_users_file {
            let loaded = crate::inbound::auth::Users::load(path);
            check(
                "server.auth_users_file",
                loaded.map(drop).map_err(|e| e.to_string()),
            );
        }
        let dns = crate::resolve::dns::Dns::new(&crate::relay::dns_settings(self));
        check(
            "dns.trust_anchor_file",
            dns.map(drop).map_err(|e| e.to_string()),
        );
        let roots = crate::tls::ClientTls::new(&self.delivery.extra_roots);
        check(
            "delivery.extra_roots",
            roots.map(drop).map_err(|e| e.to_string()),
        );
        let roots = crate::tls::https_client_config(&self.mta_sts.extra_roots);
        check(
            "mta_sts.extra_roots",
            roots.map(drop).map_err(|e| e.to_string()),
        );
        let roots = crate::tls::https_client_config(&self.tls_rpt.extra_roots);
        check(
            "tls_rpt.extra_roots",
            roots.map(drop).map_err(|e| e.to_string()),
        );
        if let Some(dir) = &self.policies.dir {
            let loaded = crate::policy::local::PolicySet::load_dir(dir);
            check("policies.dir", loaded.map(drop).map_err(|e| e.to_string()));
        }
        let dkim = crate::reporting::reporter::dkim_signer(self);
        check(
            "tls_rpt.dkim_key_file",
            dkim.map(drop).map_err(|e| e.to_string()),
        );
        problems
    }
}
