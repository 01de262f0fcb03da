//! Outbound client configurations: one per distinct requirement, kept with its
//! session cache.
//!
//! A `ClientConfig` owns the cache of sessions it may resume, and a resumed
//! session is not verified again. So the same requirement always gets the same
//! configuration (resumption works across connections), and different
//! requirements never share one (a session verified under one rule is never
//! resumed under another).

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::ServerCertVerifier;
use rustls::client::{VerifierBuilderError, WebPkiServerVerifier};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, InvalidDnsNameError, ServerName, UnixTime};

use super::cache::Bounded;
use super::dane::DaneVerifier;
use super::provider;
use super::roots::{trust_store, RootsError};
use super::verify::{self, FingerprintVerifier, FloorVerifier, NamesVerifier};
use crate::policy::PeerCheck;

/// How many configurations for non-floor requirements are kept (the oldest goes first).
pub const CONFIG_CACHE_SIZE: usize = 4096;

/// Why the outbound TLS setup failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientTlsError {
    /// The extra roots cannot be read or trusted.
    #[error(transparent)]
    Roots(#[from] RootsError),
    /// No WebPKI verifier can be built over the roots.
    #[error("cannot build the WebPKI verifier: {0}")]
    Verifier(#[from] VerifierBuilderError),
}

/// Why a certificate chain does not satisfy a requirement (`ClientTls::evaluate`).
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    /// The server sent no certificate.
    #[error("no certificate presented")]
    NoCertificate,
    /// The name to check is not a valid DNS name.
    #[error("{0}")]
    BadName(#[from] InvalidDnsNameError),
    /// The verifier refused the chain.
    #[error("{}", super::errors::tls_words(.0))]
    Refused(#[from] rustls::Error),
}

/// A requirement and whether only TLS 1.3 is offered: what tells configurations apart.
type ConfigKey = (PeerCheck, bool);

/// Hands out the outbound client configuration for each requirement.
#[derive(Debug, Clone)]
pub struct ClientTls {
    /// Chains to the roots, naming the host (the floor, and `Names` without a CA file).
    webpki: Arc<WebPkiServerVerifier>,
    /// The floor's configurations, built up front: nearly every connection uses one.
    webpki_config: Arc<ClientConfig>,
    encrypt_config: Arc<ClientConfig>,
    /// Every other (requirement, TLS-1.3-only) pair.
    configs: Arc<Bounded<ConfigKey, Arc<ClientConfig>>>,
}

impl ClientTls {
    /// Mozilla's roots plus the PEM files in `extra_roots`.
    pub fn new(extra_roots: &[PathBuf]) -> Result<ClientTls, ClientTlsError> {
        ClientTls::with_roots(trust_store(extra_roots)?)
    }

    /// Over an already assembled trust store.
    pub fn with_roots(roots: Arc<RootCertStore>) -> Result<ClientTls, ClientTlsError> {
        let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider()).build()?;
        let floor = FloorVerifier::webpki(webpki.clone(), provider());
        let encrypt = FloorVerifier::encrypt_only(provider());
        Ok(ClientTls {
            webpki,
            webpki_config: client_config(Arc::new(floor), false),
            encrypt_config: client_config(Arc::new(encrypt), false),
            configs: Arc::new(Bounded::new(CONFIG_CACHE_SIZE)),
        })
    }

    /// The client configuration that carries out `check`.
    pub fn config(&self, check: &PeerCheck) -> Arc<ClientConfig> {
        match check {
            PeerCheck::WebPki => self.webpki_config.clone(),
            PeerCheck::EncryptOnly => self.encrypt_config.clone(),
            other => self.cached(other, false),
        }
    }

    /// Like `config`, but offering TLS 1.3 only (a local policy's `min_tls = "1.3"`).
    pub fn config_tls13(&self, check: &PeerCheck) -> Arc<ClientConfig> {
        self.cached(check, true)
    }

    /// Judges a chain seen on the wire by `check`, as the handshake would (minus the
    /// signature, which was checked when the chain was received).
    pub fn evaluate(
        &self,
        check: &PeerCheck,
        chain: &[CertificateDer<'static>],
        name: &str,
    ) -> Result<(), Rejection> {
        let (leaf, rest) = chain.split_first().ok_or(Rejection::NoCertificate)?;
        let server_name = ServerName::try_from(name.to_string())?;
        self.verifier(check)
            .verify_server_cert(leaf, rest, &server_name, &[], UnixTime::now())?;
        Ok(())
    }

    fn cached(&self, check: &PeerCheck, tls13_only: bool) -> Arc<ClientConfig> {
        let key = (canonical(check), tls13_only);
        self.configs
            .get_or_insert_with(&key, || client_config(self.verifier(&key.0), tls13_only))
    }

    /// The verifier that carries out `check`.
    fn verifier(&self, check: &PeerCheck) -> Arc<dyn ServerCertVerifier> {
        match check {
            PeerCheck::WebPki => Arc::new(FloorVerifier::webpki(self.webpki.clone(), provider())),
            PeerCheck::EncryptOnly => Arc::new(FloorVerifier::encrypt_only(provider())),
            PeerCheck::Dane { records, names } => Arc::new(DaneVerifier::new(
                records.clone(),
                names.clone(),
                provider(),
            )),
            PeerCheck::Names { names, ca } => {
                let chain = match ca {
                    None => Ok(self.webpki.clone()),
                    Some(certs) => verify::policy_ca_verifier(certs, provider()),
                };
                Arc::new(NamesVerifier::new(chain, names.clone(), provider()))
            }
            PeerCheck::Fingerprint { cert, spki } => Arc::new(FingerprintVerifier::new(
                cert.clone(),
                spki.clone(),
                provider(),
            )),
        }
    }
}

/// `check` with its DANE records in a fixed order: DNS servers may rotate an
/// RRset, and the verifier accepts any matching record whatever the order.
fn canonical(check: &PeerCheck) -> PeerCheck {
    let mut check = check.clone();
    if let PeerCheck::Dane { records, .. } = &mut check {
        records.sort_by(|a, b| {
            (a.usage, a.selector, a.matching, &a.data)
                .cmp(&(b.usage, b.selector, b.matching, &b.data))
        });
        records.dedup();
    }
    check
}

/// A client configuration (ring, SNI on, its own session cache) around a verifier,
/// offering TLS 1.2 and 1.3, or 1.3 only.
fn client_config(verifier: Arc<dyn ServerCertVerifier>, tls13_only: bool) -> Arc<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(provider());
    let builder = if tls13_only {
        builder.with_protocol_versions(&[&rustls::version::TLS13])
    } else {
        builder.with_safe_default_protocol_versions()
    };
    Arc::new(
        builder
            .expect("ring supports TLS 1.2 and 1.3")
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth(),
    )
}

/// A WebPKI client configuration for HTTPS (MTA-STS policies, TLS reports):
/// Mozilla's roots plus the PEM files in `extra_roots`.
pub fn https_client_config(extra_roots: &[PathBuf]) -> Result<ClientConfig, RootsError> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports TLS 1.2 and 1.3")
        .with_root_certificates(trust_store(extra_roots)?)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::dns::Tlsa;

    fn tlsa(usage: u8, byte: u8) -> Tlsa {
        Tlsa {
            usage,
            selector: 1,
            matching: 1,
            data: vec![byte; 32],
        }
    }

    fn dane(records: Vec<Tlsa>) -> PeerCheck {
        PeerCheck::Dane {
            records,
            names: vec!["mx.example.test".into()],
        }
    }

    fn names(ca: Option<crate::policy::requirement::CaCerts>) -> PeerCheck {
        PeerCheck::Names {
            names: vec![".example.test".into()],
            ca,
        }
    }

    fn policy_ca() -> crate::policy::requirement::CaCerts {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec![]).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        Arc::from(vec![p.self_signed(&key).unwrap().der().clone()])
    }

    #[test]
    fn one_config_per_requirement() {
        let tls = ClientTls::new(&[]).unwrap();
        let ca = policy_ca();
        let pin = PeerCheck::Fingerprint {
            cert: vec![[1; 32]],
            spki: vec![],
        };
        let checks = [
            PeerCheck::WebPki,
            PeerCheck::EncryptOnly,
            dane(vec![tlsa(3, 1)]),
            dane(vec![tlsa(3, 2)]),
            dane(vec![tlsa(3, 1), tlsa(2, 2)]),
            names(None),
            names(Some(ca.clone())),
            pin,
        ];
        let mut seen: Vec<Arc<ClientConfig>> = Vec::new();
        for check in &checks {
            for tls13 in [false, true] {
                let get = |c: &PeerCheck| {
                    if tls13 {
                        tls.config_tls13(c)
                    } else {
                        tls.config(c)
                    }
                };
                let first = get(check);
                // The same requirement (a fresh but equal value) gets the same config.
                assert!(
                    Arc::ptr_eq(&first, &get(&check.clone())),
                    "{check:?} {tls13}"
                );
                assert!(
                    seen.iter().all(|other| !Arc::ptr_eq(other, &first)),
                    "{check:?} {tls13} shares a config"
                );
                seen.push(first);
            }
        }
        // The same CA certificates read again (another Arc) are the same requirement.
        let reread: crate::policy::requirement::CaCerts = Arc::from(ca.to_vec());
        assert!(Arc::ptr_eq(
            &tls.config(&names(Some(ca))),
            &tls.config(&names(Some(reread)))
        ));
        // Clones share the cache.
        let copy = tls.clone();
        assert!(Arc::ptr_eq(
            &tls.config(&checks[2]),
            &copy.config(&checks[2])
        ));
    }

    #[test]
    fn record_order_does_not_split_a_requirement() {
        let tls = ClientTls::new(&[]).unwrap();
        let a = tls.config(&dane(vec![tlsa(3, 1), tlsa(2, 2), tlsa(3, 1)]));
        let b = tls.config(&dane(vec![tlsa(2, 2), tlsa(3, 1)]));
        assert!(Arc::ptr_eq(&a, &b));
    }

    #[test]
    fn evaluate_words() {
        let tls = ClientTls::new(&[]).unwrap();
        let err = tls.evaluate(&PeerCheck::EncryptOnly, &[], "mx.test");
        assert_eq!(err.unwrap_err().to_string(), "no certificate presented");
        let cert = rcgen::generate_simple_self_signed(vec!["mx.test".into()]).unwrap();
        let chain = [cert.cert.der().clone()];
        assert!(tls
            .evaluate(&PeerCheck::EncryptOnly, &chain, "mx.test")
            .is_ok());
        let err = tls
            .evaluate(&PeerCheck::WebPki, &chain, "mx.test")
            .unwrap_err();
        assert!(matches!(err, Rejection::Refused(_)), "{err}");
        assert!(tls
            .evaluate(&PeerCheck::WebPki, &chain, "not a name!")
            .is_err());
    }
}
