//! TLS configuration shared by the inbound server and outbound delivery.
//!
//! Always the ring provider, TLS 1.2 and 1.3 only; rustls offers only
//! forward-secret key exchanges, so every session tlsrelay makes has them.

pub mod dane;

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;

use crate::policy::PeerCheck;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

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

/// The crypto provider every TLS configuration of tlsrelay uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a PEM certificate chain; the error names the file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: cannot read certificates: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: bad PEM certificate: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no CERTIFICATE block found", path.display()));
    }
    Ok(certs)
}

/// The rustls server configuration for inbound STARTTLS.
pub fn server_config(cert: &Path, key_file: &Path) -> Result<rustls::ServerConfig, String> {
    let certs = load_certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| format!("{}: cannot read a private key: {e}", key_file.display()))?;
    rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            format!(
                "{} and {} do not make a usable certificate and key: {e}",
                cert.display(),
                key_file.display()
            )
        })
}

/// Builds the outbound client configurations (one per kind of check).
#[derive(Debug, Clone)]
pub struct ClientTls {
    webpki: Arc<rustls::ClientConfig>,
    encrypt: Arc<rustls::ClientConfig>,
    webpki_verifier: Arc<FloorVerifier>,
    encrypt_verifier: Arc<FloorVerifier>,
    roots: Arc<rustls::RootCertStore>,
}

impl ClientTls {
    /// Mozilla's roots plus the PEM files in `extra_roots`.
    pub fn new(extra_roots: &[std::path::PathBuf]) -> Result<ClientTls, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for path in extra_roots {
            for cert in load_certs(path)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: unusable root certificate: {e}", path.display()))?;
            }
        }
        let roots = Arc::new(roots);
        let webpki =
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots.clone(), provider())
                .build()
                .map_err(|e| format!("cannot build the WebPKI verifier: {e}"))?;
        let webpki_verifier = Arc::new(FloorVerifier {
            inner: Some(webpki),
            provider: provider(),
        });
        let encrypt_verifier = Arc::new(FloorVerifier {
            inner: None,
            provider: provider(),
        });
        Ok(ClientTls {
            webpki: client_config(webpki_verifier.clone()),
            encrypt: client_config(encrypt_verifier.clone()),
            webpki_verifier,
            encrypt_verifier,
            roots,
        })
    }

    /// The verifier that carries out `check`.
    pub fn verifier(
        &self,
        check: &PeerCheck,
    ) -> Arc<dyn rustls::client::danger::ServerCertVerifier> {
        match check {
            PeerCheck::WebPki => self.webpki_verifier.clone(),
            PeerCheck::EncryptOnly => self.encrypt_verifier.clone(),
            PeerCheck::Dane { records, names } => Arc::new(crate::tls::dane::DaneVerifier::new(
                records.clone(),
                names.clone(),
                provider(),
            )),
            PeerCheck::Names { names, ca } => {
                let roots = match ca {
                    None => Ok(self.roots.clone()),
                    Some(certs) => {
                        let mut store = rustls::RootCertStore::empty();
                        certs
                            .iter()
                            .try_for_each(|c| store.add(c.clone()))
                            .map(|()| Arc::new(store))
                            .map_err(|e| e.to_string())
                    }
                };
                let inner = roots.and_then(|r| {
                    rustls::client::WebPkiServerVerifier::builder_with_provider(r, provider())
                        .build()
                        .map_err(|e| e.to_string())
                });
                Arc::new(NamesVerifier {
                    inner: inner.map_err(|e| format!("policy CA file unusable: {e}")),
                    names: names.clone(),
                    provider: provider(),
                })
            }
            PeerCheck::Fingerprint { cert, spki } => Arc::new(FingerprintVerifier {
                cert: cert.clone(),
                spki: spki.clone(),
                provider: provider(),
            }),
        }
    }

    /// Judges a chain seen on the wire by `check`, as the handshake would (minus the
    /// signature, which was checked when the chain was received).
    pub fn evaluate(
        &self,
        check: &PeerCheck,
        chain: &[CertificateDer<'static>],
        name: &str,
    ) -> Result<(), String> {
        let (leaf, rest) = chain.split_first().ok_or("no certificate presented")?;
        let server_name =
            rustls_pki_types::ServerName::try_from(name.to_string()).map_err(|e| e.to_string())?;
        let now = rustls_pki_types::UnixTime::now();
        self.verifier(check)
            .verify_server_cert(leaf, rest, &server_name, &[], now)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// The client configuration that carries out `check`.
    pub fn config(&self, check: &PeerCheck) -> Arc<rustls::ClientConfig> {
        match check {
            PeerCheck::WebPki => self.webpki.clone(),
            PeerCheck::EncryptOnly => self.encrypt.clone(),
            other => client_config(self.verifier(other)),
        }
    }

    /// Like `config`, but offering TLS 1.3 only (a local policy's `min_tls = "1.3"`).
    pub fn config_tls13(&self, check: &PeerCheck) -> Arc<rustls::ClientConfig> {
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .expect("ring supports TLS 1.3")
                .dangerous()
                .with_custom_certificate_verifier(self.verifier(check))
                .with_no_client_auth(),
        )
    }
}

/// Verifies a chain to the roots and a leaf name from a list of acceptable names.
#[derive(Debug)]
struct NamesVerifier {
    inner: Result<Arc<rustls::client::WebPkiServerVerifier>, String>,
    names: Vec<String>,
    provider: Arc<CryptoProvider>,
}

/// Whether leaf name `presented` satisfies the acceptable name `wanted` (`.x` = a subdomain of x).
pub fn name_matches(wanted: &str, presented: &str) -> bool {
    let w = wanted.trim_end_matches('.').to_ascii_lowercase();
    let p = presented.trim_end_matches('.').to_ascii_lowercase();
    match w.strip_prefix('.') {
        Some(parent) => {
            p.len() > parent.len() + 1 && p.ends_with(&format!(".{parent}")) && !p.starts_with("*.")
        }
        None => p == w,
    }
}

impl rustls::client::danger::ServerCertVerifier for NamesVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        check_key_strength(end_entity)?;
        let inner = self
            .inner
            .as_ref()
            .map_err(|e| rustls::Error::General(e.clone()))?;
        let ee = webpki::EndEntityCert::try_from(end_entity).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        let presented: Vec<String> = ee.valid_dns_names().map(str::to_string).collect();
        let mut last = None;
        for name in presented
            .iter()
            .filter(|p| self.names.iter().any(|w| name_matches(w, p)))
        {
            let Ok(sn) = rustls_pki_types::ServerName::try_from(name.clone()) else {
                continue;
            };
            match inner.verify_server_cert(end_entity, intermediates, &sn, ocsp_response, now) {
                Ok(v) => return Ok(v),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
                Arc::new(CheckFailed(format!(
                    "certificate names [{}] match none of the policy's names [{}]",
                    presented.join(", "),
                    self.names.join(", ")
                ))),
            )))
        }))
    }

    real_signature_checks!();
}

/// Accepts a leaf whose certificate or public key has a pinned SHA-256 digest.
#[derive(Debug)]
struct FingerprintVerifier {
    cert: Vec<[u8; 32]>,
    spki: Vec<[u8; 32]>,
    provider: Arc<CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for FingerprintVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        check_key_strength(end_entity)?;
        let digest = |b: &[u8]| {
            let d = ring::digest::digest(&ring::digest::SHA256, b);
            let mut out = [0u8; 32];
            out.copy_from_slice(d.as_ref());
            out
        };
        if self.cert.contains(&digest(end_entity.as_ref())) {
            return Ok(rustls::client::danger::ServerCertVerified::assertion());
        }
        if let Ok(ee) = webpki::EndEntityCert::try_from(end_entity) {
            if self
                .spki
                .contains(&digest(ee.subject_public_key_info().as_ref()))
            {
                return Ok(rustls::client::danger::ServerCertVerified::assertion());
            }
        }
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::Other(rustls::OtherError(Arc::new(CheckFailed(
                "the certificate matches none of the pinned fingerprints".into(),
            )))),
        ))
    }

    real_signature_checks!();
}

/// A client configuration (ring, TLS 1.2/1.3, SNI on) around a verifier.
fn client_config(
    verifier: Arc<dyn rustls::client::danger::ServerCertVerifier>,
) -> Arc<rustls::ClientConfig> {
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports TLS 1.2 and 1.3")
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth(),
    )
}

/// The floor's verifier: WebPKI (or nothing, for `encrypt`), always the key-strength
/// rule, and always a real check of the handshake signature.
#[derive(Debug)]
struct FloorVerifier {
    inner: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for FloorVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls_pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        check_key_strength(end_entity)?;
        match &self.inner {
            Some(v) => {
                v.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            }
            None => Ok(rustls::client::danger::ServerCertVerified::assertion()),
        }
    }

    real_signature_checks!();
}

/// A server key below the strength DESIGN.md requires.
#[derive(Debug)]
pub struct WeakKey(pub String);

impl std::fmt::Display for WeakKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "server key too weak: {}", self.0)
    }
}

impl std::error::Error for WeakKey {}

/// A certificate that a local policy's rule does not accept, in plain words.
#[derive(Debug)]
pub struct CheckFailed(pub String);

impl std::fmt::Display for CheckFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CheckFailed {}

/// Refuses leaf keys below RSA-2048; accepts ECDSA P-256/P-384 and Ed25519.
pub fn check_key_strength(leaf: &CertificateDer<'_>) -> Result<(), rustls::Error> {
    let weak = |s: String| {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
            Arc::new(WeakKey(s)),
        )))
    };
    let cert = webpki::EndEntityCert::try_from(leaf)
        .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding))?;
    match key_description(&cert.subject_public_key_info()) {
        Some(KeyKind::Rsa(bits)) if bits >= 2048 => Ok(()),
        Some(KeyKind::Rsa(bits)) => Err(weak(format!("RSA-{bits}, at least RSA-2048 is required"))),
        Some(KeyKind::Ec) | Some(KeyKind::Ed25519) => Ok(()),
        None => Err(weak("unknown key type".into())),
    }
}

/// The kinds of server key tlsrelay recognises.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// RSA with this many modulus bits.
    Rsa(usize),
    /// ECDSA on P-256 or P-384.
    Ec,
    /// Ed25519.
    Ed25519,
}

/// Reads the key type (and RSA size) from a DER SubjectPublicKeyInfo.
pub fn key_description(spki: &[u8]) -> Option<KeyKind> {
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    const EC: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    const P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    const P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
    const ED25519: &[u8] = &[0x2b, 0x65, 0x70];
    let (0x30, spki) = Der(spki).next()? else {
        return None;
    };
    let mut outer = Der(spki);
    let (0x30, alg) = outer.next()? else {
        return None;
    };
    let (0x03, key_bits) = outer.next()? else {
        return None;
    };
    let mut alg = Der(alg);
    let (0x06, oid) = alg.next()? else {
        return None;
    };
    if oid == RSA {
        let key = key_bits.get(1..)?; // skip the unused-bits byte
        let (0x30, rsa) = Der(key).next()? else {
            return None;
        };
        let (0x02, modulus) = Der(rsa).next()? else {
            return None;
        };
        let significant = modulus.iter().skip_while(|&&b| b == 0).count();
        let top = modulus.iter().find(|&&b| b != 0).copied().unwrap_or(0);
        let bits = significant.saturating_sub(1) * 8 + (8 - top.leading_zeros() as usize);
        Some(KeyKind::Rsa(bits))
    } else if oid == EC {
        let (0x06, curve) = alg.next()? else {
            return None;
        };
        (curve == P256 || curve == P384).then_some(KeyKind::Ec)
    } else if oid == ED25519 {
        Some(KeyKind::Ed25519)
    } else {
        None
    }
}

/// A minimal DER TLV reader, enough for SubjectPublicKeyInfo and basicConstraints.
#[derive(Clone)]
pub(crate) struct Der<'a>(pub(crate) &'a [u8]);

impl<'a> Iterator for Der<'a> {
    type Item = (u8, &'a [u8]);
    fn next(&mut self) -> Option<(u8, &'a [u8])> {
        let tag = *self.0.first()?;
        let first = *self.0.get(1)? as usize;
        let (len, hdr) = if first < 0x80 {
            (first, 2)
        } else {
            let n = first & 0x7f;
            if n == 0 || n > 4 {
                return None;
            }
            let mut len = 0usize;
            for i in 0..n {
                len = (len << 8) | *self.0.get(2 + i)? as usize;
            }
            (len, 2 + n)
        };
        let body = self.0.get(hdr..hdr + len)?;
        self.0 = &self.0[hdr + len..];
        Some((tag, body))
    }
}

/// The RFC 8460 result type and plain words for a failed TLS handshake.
pub fn classify_tls_error(err: &std::io::Error) -> (crate::reporting::outcome::ResultType, String) {
    use crate::reporting::outcome::ResultType as R;
    use rustls::CertificateError as C;
    let Some(tls) = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    else {
        return (R::ValidationFailure, format!("TLS handshake failed: {err}"));
    };
    let kind = match tls {
        rustls::Error::InvalidCertificate(c) => match c {
            C::Expired | C::ExpiredContext { .. } => R::CertificateExpired,
            C::NotValidForName | C::NotValidForNameContext { .. } => R::CertificateHostMismatch,
            C::UnknownIssuer | C::BadSignature => R::CertificateNotTrusted,
            _ => R::ValidationFailure,
        },
        _ => R::ValidationFailure,
    };
    let words = match tls {
        // The message of our own verifiers' errors, not their Debug form.
        rustls::Error::InvalidCertificate(C::Other(other)) => other.0.to_string(),
        other => other.to_string(),
    };
    (kind, format!("TLS handshake failed: {words}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_kinds_from_generated_certificates() {
        let cases: &[(&rcgen::SignatureAlgorithm, KeyKind)] = &[
            (&rcgen::PKCS_ECDSA_P256_SHA256, KeyKind::Ec),
            (&rcgen::PKCS_ECDSA_P384_SHA384, KeyKind::Ec),
            (&rcgen::PKCS_ED25519, KeyKind::Ed25519),
        ];
        for (alg, want) in cases {
            let key = rcgen::KeyPair::generate_for(alg).unwrap();
            let cert = rcgen::CertificateParams::new(vec!["a.test".into()])
                .unwrap()
                .self_signed(&key)
                .unwrap();
            let ee = webpki::EndEntityCert::try_from(cert.der()).unwrap();
            assert_eq!(
                key_description(&ee.subject_public_key_info()).as_ref(),
                Some(want)
            );
            assert!(check_key_strength(cert.der()).is_ok());
        }
    }

    #[test]
    fn der_reader_handles_long_lengths() {
        let mut v = vec![0x04, 0x82, 0x01, 0x00];
        v.extend(std::iter::repeat_n(7u8, 256));
        let (tag, body) = Der(&v).next().unwrap();
        assert_eq!((tag, body.len()), (0x04, 256));
        assert!(Der(&[0x04, 0x85, 0, 0, 0, 0, 1]).next().is_none());
        assert!(Der(&[0x04, 0x05, 0]).next().is_none());
    }
}
