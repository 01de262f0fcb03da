//! The certificate verifiers of the WebPKI floor and of local policies, and the
//! handshake-signature check they (and the DANE verifier) all share.
//!
//! Each verifier applies the key-strength rule first, then its own rule; none
//! depends on how client configurations are assembled.

mod fingerprint;
mod floor;
mod names;

pub(crate) use fingerprint::FingerprintVerifier;
pub(crate) use floor::FloorVerifier;
pub use names::name_matches;
pub(crate) use names::{policy_ca_verifier, NamesVerifier};

use std::sync::Arc;

/// The handshake-signature half of every tlsrelay verifier: always the real
/// check with the provider's algorithms (`self.provider`). A verifier that only
/// compared certificates would let anyone replay a certificate without its key.
macro_rules! real_signature_checks {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &rustls_pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &rustls_pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    };
}
pub(crate) use real_signature_checks;

/// A certificate that a local policy's rule does not accept, in plain words.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CheckFailed(pub String);

/// A refused certificate carrying our own reason, so that the handshake error
/// (and `classify_tls_error`) shows the reason's words.
pub(crate) fn refused(reason: impl std::error::Error + Send + Sync + 'static) -> rustls::Error {
    rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
        Arc::new(reason),
    )))
}
