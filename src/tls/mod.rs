//! TLS configuration shared by the inbound server and outbound delivery.
//!
//! Always the ring provider, TLS 1.2 and 1.3 only; rustls offers only
//! forward-secret key exchanges, so every session tlsrelay makes has them.
//!
//! Dependencies point one way: `keys` and `pem` stand alone; the verifiers
//! (`verify`, `dane`) use `keys`; `roots` uses `pem`; `client` assembles
//! configurations from all of them and nothing imports it back.

mod cache;
mod client;
pub mod dane;
mod errors;
pub(crate) mod keys;
mod pem;
mod roots;
mod server;
mod verify;

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;

pub use client::{https_client_config, ClientTls, ClientTlsError, Rejection, CONFIG_CACHE_SIZE};
pub use errors::{classify_tls_error, plain_certificate_words, tls_words, webpki_words};
pub use keys::{check_key_strength, key_description, KeyKind, WeakKey};
pub use pem::{load_certs, PemError};
pub use roots::{trust_store, RootsError};
pub use server::{server_config, ServerTlsError};
pub use verify::{name_matches, CheckFailed};

/// The crypto provider every TLS configuration of tlsrelay uses (one per process).
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}
