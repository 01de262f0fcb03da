//! A local policy's `verify`/`secure`: a chain to the roots (or to the policy's
//! own CA certificates) and a leaf carrying one of the policy's names.

use std::sync::Arc;

use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::{real_signature_checks, refused, CheckFailed};
use crate::tls::keys::check_key_strength;

/// Why a policy's CA certificates cannot anchor a chain (the policy then trusts nothing).
#[derive(Debug, thiserror::Error)]
pub(crate) enum UnusableCa {
    /// A certificate is not a usable trust anchor.
    #[error("policy CA file unusable: {0}")]
    Certificate(rustls::Error),
    /// The chain verifier could not be built from them.
    #[error("policy CA file unusable: {0}")]
    Verifier(rustls::client::VerifierBuilderError),
}

/// A chain verifier anchored at a policy's CA certificates only.
pub(crate) fn policy_ca_verifier(
    ca: &[CertificateDer<'static>],
    provider: Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, UnusableCa> {
    let mut store = rustls::RootCertStore::empty();
    for cert in ca {
        store.add(cert.clone()).map_err(UnusableCa::Certificate)?;
    }
    WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider)
        .build()
        .map_err(UnusableCa::Verifier)
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

/// Verifies a chain to the roots and a leaf name from a list of acceptable names.
#[derive(Debug)]
pub(crate) struct NamesVerifier {
    chain: Result<Arc<WebPkiServerVerifier>, UnusableCa>,
    names: Vec<String>,
    provider: Arc<CryptoProvider>,
}

impl NamesVerifier {
    /// Chains are checked by `chain` (an unusable CA refuses every certificate).
    pub(crate) fn new(
        chain: Result<Arc<WebPkiServerVerifier>, UnusableCa>,
        names: Vec<String>,
        provider: Arc<CryptoProvider>,
    ) -> NamesVerifier {
        NamesVerifier {
            chain,
            names,
            provider,
        }
    }

    fn no_name_matches(&self, presented: &[String]) -> rustls::Error {
        refused(CheckFailed(format!(
            "certificate names [{}] match none of the policy's names [{}]",
            presented.join(", "),
            self.names.join(", ")
        )))
    }
}

impl ServerCertVerifier for NamesVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        check_key_strength(end_entity)?;
        let chain = self
            .chain
            .as_ref()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        let ee = webpki::EndEntityCert::try_from(end_entity).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        let presented: Vec<String> = ee.valid_dns_names().map(str::to_string).collect();
        let mut last = None;
        // The chain is checked for each acceptable name the leaf carries, so that a
        // leaf whose name is fine but whose chain is not reports the chain's error.
        for name in presented
            .iter()
            .filter(|p| self.names.iter().any(|w| name_matches(w, p)))
        {
            let Ok(sn) = ServerName::try_from(name.clone()) else {
                continue;
            };
            match chain.verify_server_cert(end_entity, intermediates, &sn, ocsp_response, now) {
                Ok(v) => return Ok(v),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| self.no_name_matches(&presented)))
    }

    real_signature_checks!();
}

#[cfg(test)]
mod tests {
    use super::name_matches;

    #[test]
    fn name_matching_table() {
        let cases = [
            ("mx.example.com", "mx.example.com", true),
            ("MX.Example.com.", "mx.example.COM", true),
            ("mx.example.com", "mx2.example.com", false),
            (".example.com", "mx.example.com", true),
            (".example.com", "a.b.example.com", true),
            (".example.com", "example.com", false),
            (".example.com", "*.example.com", false),
            (".example.com", "mxexample.com", false),
            (".example.com", "x.example.org", false),
        ];
        for (wanted, presented, want) in cases {
            assert_eq!(
                name_matches(wanted, presented),
                want,
                "{wanted} {presented}"
            );
        }
    }
}
