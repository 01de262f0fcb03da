//! The floor's verifier: WebPKI, or nothing at all for `encrypt`.

use std::sync::Arc;

use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::real_signature_checks;
use crate::tls::keys::check_key_strength;

/// WebPKI (or nothing, for `encrypt`), always the key-strength rule, and always
/// a real check of the handshake signature.
#[derive(Debug)]
pub(crate) struct FloorVerifier {
    inner: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl FloorVerifier {
    /// A chain to the roots of `webpki`, naming the host connected to.
    pub(crate) fn webpki(
        webpki: Arc<WebPkiServerVerifier>,
        provider: Arc<CryptoProvider>,
    ) -> FloorVerifier {
        FloorVerifier {
            inner: Some(webpki),
            provider,
        }
    }

    /// Any certificate with a strong enough key (the `encrypt` floor).
    pub(crate) fn encrypt_only(provider: Arc<CryptoProvider>) -> FloorVerifier {
        FloorVerifier {
            inner: None,
            provider,
        }
    }
}

impl ServerCertVerifier for FloorVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        check_key_strength(end_entity)?;
        match &self.inner {
            Some(v) => {
                v.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            }
            None => Ok(ServerCertVerified::assertion()),
        }
    }

    real_signature_checks!();
}
