//! The inbound certificate and key and the users file: loaded at start and
//! swapped whole on reload, so a session sees either the old set or the new one.

use std::sync::{Arc, RwLock};

use tokio_rustls::TlsAcceptor;

use super::auth::Users;
use crate::config::Config;

/// What STARTTLS presents and AUTH checks against.
#[derive(Default)]
pub struct Credentials {
    tls: RwLock<Option<TlsAcceptor>>,
    users: RwLock<Option<Arc<Users>>>,
}

impl Credentials {
    /// Loads the files `config` names; the first that cannot be used is the error.
    pub fn load(config: &Config) -> Result<Credentials, String> {
        let c = Credentials::default();
        c.reload(config)?;
        Ok(c)
    }

    /// The STARTTLS acceptor, when a certificate is configured.
    pub fn tls(&self) -> Option<TlsAcceptor> {
        self.tls.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The users, when `auth_users_file` is set.
    pub fn users(&self) -> Option<Arc<Users>> {
        self.users.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Loads both from `config`'s paths and swaps them in only when both load;
    /// on an error the previous ones stay in force. Returns what is now in force.
    pub fn reload(&self, config: &Config) -> Result<Vec<String>, String> {
        let s = &config.server;
        let tls = match (&s.tls_cert_file, &s.tls_key_file) {
            (Some(cert), Some(key)) => Some(TlsAcceptor::from(Arc::new(
                crate::tls::server_config(cert, key).map_err(|e| e.to_string())?,
            ))),
            _ => None,
        };
        let users = match &s.auth_users_file {
            Some(path) => Some(Arc::new(Users::load(path).map_err(|e| e.to_string())?)),
            None => None,
        };
        let mut done = Vec::new();
        if let Some(cert) = &s.tls_cert_file {
            done.push(format!("certificate {}", cert.display()));
        }
        if let Some(path) = &s.auth_users_file {
            done.push(format!("users {}", path.display()));
        }
        *self.tls.write().unwrap_or_else(|e| e.into_inner()) = tls;
        *self.users.write().unwrap_or_else(|e| e.into_inner()) = users;
        Ok(done)
    }
}
