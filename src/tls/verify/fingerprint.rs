//! A local policy's `fingerprint`: the leaf certificate or its public key is pinned.

use std::sync::Arc;

use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::{real_signature_checks, refused, CheckFailed};
use crate::tls::keys::check_key_strength;

/// Accepts a leaf whose certificate or public key has a pinned SHA-256 digest.
#[derive(Debug)]
pub(crate) struct FingerprintVerifier {
    cert: Vec<[u8; 32]>,
    spki: Vec<[u8; 32]>,
    provider: Arc<CryptoProvider>,
}

impl FingerprintVerifier {
    /// Pins: SHA-256 digests of whole certificates (`cert`) and of public keys (`spki`).
    pub(crate) fn new(
        cert: Vec<[u8; 32]>,
        spki: Vec<[u8; 32]>,
        provider: Arc<CryptoProvider>,
    ) -> FingerprintVerifier {
        FingerprintVerifier {
            cert,
            spki,
            provider,
        }
    }

    fn pinned(&self, end_entity: &CertificateDer<'_>) -> bool {
        if self.cert.contains(&sha256(end_entity.as_ref())) {
            return true;
        }
        webpki::EndEntityCert::try_from(end_entity).is_ok_and(|ee| {
            self.spki
                .contains(&sha256(ee.subject_public_key_info().as_ref()))
        })
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

impl ServerCertVerifier for FingerprintVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        check_key_strength(end_entity)?;
        if self.pinned(end_entity) {
            return Ok(ServerCertVerified::assertion());
        }
        Err(refused(CheckFailed(
            "the certificate matches none of the pinned fingerprints".into(),
        )))
    }

    real_signature_checks!();
}
