//! DANE for SMTP (RFC 7672, with RFC 6698 and 7671): TLSA records checked inside
//! the TLS handshake.
//!
//! `DaneVerifier` is a rustls `ServerCertVerifier`. DANE-EE (usage 3) matches the
//! leaf certificate or its public key and checks neither names nor dates. DANE-TA
//! (usage 2) finds the trust anchor among the presented certificates, builds the
//! chain to it with rustls-webpki (dates, server-auth usage, CA constraints), and
//! checks the leaf's name against the TLSA base domain and the MX host name. The
//! handshake signature is always verified with the crypto provider, so a server
//! that replays a matching certificate without its key fails.

use std::sync::Arc;

use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::CertificateError;
use rustls_pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime};

use crate::model::dns::Tlsa;
use crate::tls::keys::{check_key_strength, Der};
use crate::tls::verify::{real_signature_checks, refused};

/// Whether certificate `cert` matches the selector and matching type of `t`.
pub fn matches(t: &Tlsa, cert: &CertificateDer<'_>) -> bool {
    let selected: Vec<u8> = match t.selector {
        0 => cert.as_ref().to_vec(),
        1 => match webpki::EndEntityCert::try_from(cert) {
            Ok(ee) => ee.subject_public_key_info().as_ref().to_vec(),
            Err(_) => return false,
        },
        _ => return false,
    };
    match t.matching {
        0 => selected == t.data,
        1 => ring::digest::digest(&ring::digest::SHA256, &selected).as_ref() == t.data.as_slice(),
        2 => ring::digest::digest(&ring::digest::SHA512, &selected).as_ref() == t.data.as_slice(),
        _ => false,
    }
}

/// Why DANE authentication failed, in plain words.
#[derive(Debug, thiserror::Error)]
#[error("DANE: {0}")]
pub struct DaneFailure(pub String);

fn failure(s: String) -> rustls::Error {
    refused(DaneFailure(s))
}

/// The verifier for one MX host with usable TLSA records.
#[derive(Debug)]
pub struct DaneVerifier {
    records: Vec<Tlsa>,
    /// Names a DANE-TA leaf may carry: the TLSA base domain and the MX host name.
    names: Vec<String>,
    provider: Arc<CryptoProvider>,
}

impl DaneVerifier {
    /// A verifier for `records` (only usable ones are kept) and the acceptable `names`.
    pub fn new(
        records: Vec<Tlsa>,
        names: Vec<String>,
        provider: Arc<CryptoProvider>,
    ) -> DaneVerifier {
        DaneVerifier {
            records: records.into_iter().filter(Tlsa::is_usable).collect(),
            names,
            provider,
        }
    }

    /// DANE-TA: `None` when no presented certificate matches `ta_record`, else
    /// whether the leaf chains to the matching one and carries an acceptable name.
    fn verify_ta(
        &self,
        ta_record: &Tlsa,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Option<Result<(), rustls::Error>> {
        let ta_cert = intermediates.iter().find(|c| matches(ta_record, c))?;
        Some(self.verify_chain_to(ta_cert, end_entity, intermediates, now))
    }

    fn verify_chain_to(
        &self,
        ta_cert: &CertificateDer<'_>,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let anchor = [trust_anchor(ta_cert)?];
        let ee = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let others: Vec<CertificateDer<'_>> = intermediates
            .iter()
            .filter(|c| c.as_ref() != ta_cert.as_ref())
            .cloned()
            .collect();
        ee.verify_for_usage(
            self.provider.signature_verification_algorithms.all,
            &anchor,
            &others,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(webpki_error)?;
        self.check_name(&ee)
    }

    /// The DANE-TA leaf must carry the TLSA base domain or the MX host name.
    fn check_name(&self, ee: &webpki::EndEntityCert<'_>) -> Result<(), rustls::Error> {
        let name_ok = self.names.iter().any(|n| {
            ServerName::try_from(n.as_str())
                .map(|sn| ee.verify_is_valid_for_subject_name(&sn).is_ok())
                .unwrap_or(false)
        });
        if name_ok {
            return Ok(());
        }
        let presented = ee.valid_dns_names().map(str::to_string).collect();
        let base = self.names.first().cloned().unwrap_or_default();
        let Ok(expected) = ServerName::try_from(base) else {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName,
            ));
        };
        Err(rustls::Error::InvalidCertificate(
            CertificateError::NotValidForNameContext {
                expected,
                presented,
            },
        ))
    }
}

/// The certificate matching a DANE-TA record as a trust anchor; it must be a CA.
fn trust_anchor<'a>(ta_cert: &'a CertificateDer<'a>) -> Result<TrustAnchor<'a>, rustls::Error> {
    if !is_ca(ta_cert) {
        return Err(failure(
            "the certificate matching the DANE-TA record is not a CA certificate".into(),
        ));
    }
    webpki::anchor_from_trusted_cert(ta_cert).map_err(|e| {
        failure(format!(
            "the DANE-TA certificate cannot be a trust anchor: {e}"
        ))
    })
}

fn webpki_error(e: webpki::Error) -> rustls::Error {
    use webpki::Error as W;
    rustls::Error::InvalidCertificate(match e {
        W::CertExpired { .. } => CertificateError::Expired,
        W::CertNotValidYet { .. } => CertificateError::NotValidYet,
        W::CertNotValidForName(_) => CertificateError::NotValidForName,
        W::UnknownIssuer => CertificateError::UnknownIssuer,
        W::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        other => {
            return failure(format!(
                "the chain to the DANE-TA anchor does not verify: {other:?}"
            ))
        }
    })
}

impl ServerCertVerifier for DaneVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // DANE-EE skips the chain checks, not the key-strength rule.
        check_key_strength(end_entity)?;
        if self
            .records
            .iter()
            .any(|t| t.usage == 3 && matches(t, end_entity))
        {
            return Ok(ServerCertVerified::assertion());
        }
        let mut last_err = None;
        for t in self.records.iter().filter(|t| t.usage == 2) {
            match self.verify_ta(t, end_entity, intermediates, now) {
                Some(Ok(())) => return Ok(ServerCertVerified::assertion()),
                Some(Err(e)) => last_err = Some(e),
                None => {}
            }
        }
        Err(last_err.unwrap_or_else(|| {
            failure(format!(
                "no TLSA record matches the certificate chain ({} usable record(s))",
                self.records.len()
            ))
        }))
    }

    real_signature_checks!();
}

/// Whether a certificate has basicConstraints with cA = TRUE.
pub fn is_ca(cert: &CertificateDer<'_>) -> bool {
    const BASIC_CONSTRAINTS: &[u8] = &[0x55, 0x1d, 0x13];
    let Some((0x30, cert)) = Der(cert.as_ref()).next() else {
        return false;
    };
    let Some((0x30, tbs)) = Der(cert).next() else {
        return false;
    };
    // Extensions are the [3] field of TBSCertificate.
    let Some((_, exts)) = Der(tbs).find(|(tag, _)| *tag == 0xa3) else {
        return false;
    };
    let Some((0x30, exts)) = Der(exts).next() else {
        return false;
    };
    for (tag, ext) in Der(exts) {
        if tag != 0x30 {
            continue;
        }
        let mut fields = Der(ext);
        let Some((0x06, oid)) = fields.next() else {
            continue;
        };
        if oid != BASIC_CONSTRAINTS {
            continue;
        }
        // Skip the optional `critical` BOOLEAN to the OCTET STRING value.
        let value = fields
            .find(|(t, _)| *t == 0x04)
            .map(|(_, v)| v)
            .unwrap_or(&[]);
        let Some((0x30, bc)) = Der(value).next() else {
            return false;
        };
        return matches!(Der(bc).next(), Some((0x01, [v])) if *v != 0);
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(usage: u8, selector: u8, matching: u8) -> Tlsa {
        Tlsa {
            usage,
            selector,
            matching,
            data: vec![],
        }
    }

    #[test]
    fn usability_table() {
        let cases = [
            ((3, 1, 1), true),
            ((3, 0, 1), true),
            ((3, 1, 2), true),
            ((2, 1, 1), true),
            ((2, 0, 0), true),
            ((0, 1, 1), false),
            ((1, 1, 1), false),
            ((4, 1, 1), false),
            ((3, 2, 1), false),
            ((3, 1, 3), false),
            ((2, 1, 255), false),
        ];
        for ((u, s, m), want) in cases {
            assert_eq!(rec(u, s, m).is_usable(), want, "{u} {s} {m}");
        }
    }

    #[test]
    fn matching_types_and_selectors() {
        use rcgen::PublicKeyData;
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["mx.test".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = cert.der().clone();
        let spki = key.subject_public_key_info();
        let sha256 = |b: &[u8]| {
            ring::digest::digest(&ring::digest::SHA256, b)
                .as_ref()
                .to_vec()
        };
        let sha512 = |b: &[u8]| {
            ring::digest::digest(&ring::digest::SHA512, b)
                .as_ref()
                .to_vec()
        };
        let cases = [
            (
                Tlsa {
                    usage: 3,
                    selector: 1,
                    matching: 1,
                    data: sha256(&spki),
                },
                true,
            ),
            (
                Tlsa {
                    usage: 3,
                    selector: 0,
                    matching: 1,
                    data: sha256(der.as_ref()),
                },
                true,
            ),
            (
                Tlsa {
                    usage: 3,
                    selector: 1,
                    matching: 2,
                    data: sha512(&spki),
                },
                true,
            ),
            (
                Tlsa {
                    usage: 3,
                    selector: 1,
                    matching: 0,
                    data: spki.clone(),
                },
                true,
            ),
            (
                Tlsa {
                    usage: 3,
                    selector: 0,
                    matching: 0,
                    data: der.as_ref().to_vec(),
                },
                true,
            ),
            (
                Tlsa {
                    usage: 3,
                    selector: 0,
                    matching: 1,
                    data: sha256(&spki),
                },
                false,
            ),
            (
                Tlsa {
                    usage: 3,
                    selector: 1,
                    matching: 1,
                    data: vec![0; 32],
                },
                false,
            ),
        ];
        for (t, want) in cases {
            assert_eq!(
                matches(&t, &der),
                want,
                "{} {} {}",
                t.usage,
                t.selector,
                t.matching
            );
        }
    }

    #[test]
    fn ca_flag() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec!["ca.test".into()]).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        assert!(is_ca(p.self_signed(&key).unwrap().der()));
        let leaf = rcgen::CertificateParams::new(vec!["mx.test".into()]).unwrap();
        assert!(!is_ca(leaf.self_signed(&key).unwrap().der()));
        let mut not_ca = rcgen::CertificateParams::new(vec!["x.test".into()]).unwrap();
        not_ca.is_ca = rcgen::IsCa::ExplicitNoCa;
        assert!(!is_ca(not_ca.self_signed(&key).unwrap().der()));
    }
}
