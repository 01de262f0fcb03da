//! How one MX host must be authenticated: DANE, MTA-STS, a local policy, or the floor.

use crate::config::Floor;
use crate::model::dns::{Answer, Security, Tlsa, TlsaAnswer};
use crate::model::mechanism::Mechanism;
use crate::model::rfc8460::{PolicyType, ResultType};
use crate::policy::local::{Fingerprint, Level, LocalPolicy, MinTls};
use crate::policy::requirement::{PeerCheck, Requirement};
use crate::protocol::sts::StsPolicy;

/// The requirement for host `host` under the floor (no DANE, MTA-STS or local policy applies).
pub fn requirement(host: &str, floor: Floor) -> Requirement {
    let (check, mechanism) = match floor {
        Floor::Verify => (PeerCheck::WebPki, Mechanism::Verify),
        Floor::Encrypt => (PeerCheck::EncryptOnly, Mechanism::Encrypt),
    };
    Requirement {
        host: host.to_string(),
        sni: host.to_string(),
        check,
        mechanism,
        waiver: None,
        policy: PolicyType::NoPolicyFound,
        tls13_only: false,
    }
}

/// What to do with one MX host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPlan {
    /// Connect and authenticate as the requirement says.
    Connect(Requirement),
    /// Do not contact this host in this attempt.
    Skip {
        /// Plain words.
        reason: String,
        /// The RFC 8460 result to record.
        result: Option<ResultType>,
    },
}

/// Whether DANE applies at all: TLSA is looked up only when the MX answer and the
/// host's addresses are DNSSEC-secure (RFC 7672 §2.2).
pub fn wants_tlsa(mx: Security, addresses: Security) -> bool {
    mx.is_secure() && addresses.is_secure()
}

/// The MTA-STS policy in force for the recipient domain, as the decision needs it.
#[derive(Debug, Clone, Copy)]
pub enum StsRule<'a> {
    /// No policy, or `mode: none`.
    Absent,
    /// `mode: enforce`: unlisted MX hosts are not contacted; WebPKI for the MX name.
    Enforce(&'a StsPolicy),
    /// `mode: testing`: the floor applies; failures are only reported.
    Testing(&'a StsPolicy),
}

/// What applies when DANE does not: MTA-STS in enforce mode, or the floor.
fn without_dane(host: &str, floor: Floor, sts: StsRule<'_>) -> HostPlan {
    match sts {
        StsRule::Enforce(p) if !p.allows(host) => HostPlan::Skip {
            reason: format!(
                "{host} is not among the MX hosts allowed by the MTA-STS policy (mx: {}); not contacted",
                p.mx_strings().join(", ")
            ),
            result: Some(ResultType::ValidationFailure),
        },
        StsRule::Enforce(_) => HostPlan::Connect(Requirement {
            host: host.to_string(),
            sni: host.to_string(),
            check: PeerCheck::WebPki,
            mechanism: Mechanism::MtaSts,
            waiver: None,
            policy: PolicyType::Sts,
            tls13_only: false,
        }),
        StsRule::Testing(_) => HostPlan::Connect(Requirement {
            policy: PolicyType::Sts,
            ..requirement(host, floor)
        }),
        StsRule::Absent => HostPlan::Connect(requirement(host, floor)),
    }
}

/// The requirement for `host` given its TLSA answer (`None` when DANE does not
/// apply) and the domain's MTA-STS rule. `base` is the TLSA base domain (the
/// host, or its secure CNAME target). DANE, when usable, takes precedence.
pub fn host_plan(
    host: &str,
    base: &str,
    floor: Floor,
    tlsa: Option<TlsaAnswer>,
    sts: StsRule<'_>,
) -> HostPlan {
    let Some(tlsa) = tlsa else {
        return without_dane(host, floor, sts);
    };
    let doubt = |why: String, result| HostPlan::Skip {
        reason: format!("{host}: {why}; not contacted, and no weaker rule stands in"),
        result: Some(result),
    };
    match tlsa {
        Answer::Records {
            records,
            security: Security::Secure,
            ..
        } => {
            let usable: Vec<_> = records.into_iter().filter(Tlsa::is_usable).collect();
            if usable.is_empty() {
                // RFC 7672 §2.2: unusable records mean no DANE authentication, TLS still mandatory.
                return without_dane(host, floor, sts);
            }
            let mut names = vec![base.to_string()];
            if base != host {
                names.push(host.to_string());
            }
            HostPlan::Connect(Requirement {
                host: host.to_string(),
                sni: base.to_string(),
                check: PeerCheck::Dane {
                    records: usable,
                    names,
                },
                mechanism: Mechanism::Dane,
                waiver: None,
                policy: PolicyType::Tlsa,
                tls13_only: false,
            })
        }
        Answer::Records {
            security: Security::Insecure,
            ..
        }
        | Answer::NoRecords {
            security: Security::Secure | Security::Insecure,
        }
        | Answer::NxDomain {
            security: Security::Secure | Security::Insecure,
        } => without_dane(host, floor, sts),
        Answer::Records { security, .. }
        | Answer::NoRecords { security }
        | Answer::NxDomain { security } => doubt(
            format!("the TLSA answer for _25._tcp.{base} is DNSSEC-{security}"),
            ResultType::DnssecInvalid,
        ),
        Answer::Bogus(why) => doubt(
            format!("DNSSEC validation of the TLSA records failed: {why}"),
            ResultType::DnssecInvalid,
        ),
        Answer::TempFail(why) => doubt(
            format!("the TLSA lookup failed: {why}"),
            ResultType::TlsaInvalid,
        ),
    }
}

/// Whether a host may carry a REQUIRETLS message (RFC 8689 §4.2.1): the MX host
/// was learnt securely (DNSSEC-validated MX answer, or the host matches the
/// domain's MTA-STS policy) and its certificate is verified (WebPKI, DANE or a
/// local name check), not merely encrypted or pinned.
pub fn requiretls_ok(
    req: &Requirement,
    mx_security: Security,
    host_in_sts_policy: bool,
) -> Result<(), RequireTlsRefusal> {
    if !mx_security.is_secure() && !host_in_sts_policy {
        return Err(RequireTlsRefusal::NotLearntSecurely);
    }
    match req.check {
        PeerCheck::WebPki | PeerCheck::Dane { .. } | PeerCheck::Names { .. } => Ok(()),
        PeerCheck::EncryptOnly | PeerCheck::Fingerprint { .. } => {
            Err(RequireTlsRefusal::NotVerified(req.mechanism))
        }
    }
}

/// Why a host may not carry a REQUIRETLS message (RFC 8689 §4.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequireTlsRefusal {
    /// Neither DNSSEC nor an MTA-STS policy vouches for the MX host.
    #[error(
        "REQUIRETLS: the MX record was not DNSSEC-validated and no MTA-STS policy lists the host"
    )]
    NotLearntSecurely,
    /// The host would be authenticated without checking its certificate chain.
    #[error("REQUIRETLS: the host would be authenticated by `{0}`, which does not verify its certificate chain")]
    NotVerified(Mechanism),
}

/// The requirement for `host` when a local policy decides for the domain.
/// `tlsa` is the TLSA answer when DANE could apply (MX and addresses secure).
pub fn local_host_plan(
    lp: &LocalPolicy,
    domain: &str,
    host: &str,
    base: &str,
    tlsa: Option<TlsaAnswer>,
) -> HostPlan {
    if !lp.mx.is_empty() && !lp.allows_mx(host) {
        return HostPlan::Skip {
            reason: format!(
                "{host} is not among the MX hosts allowed by the local policy ({}); not contacted",
                lp.source
            ),
            result: Some(ResultType::ValidationFailure),
        };
    }
    let tls13_only = lp.min_tls == MinTls::Tls13;
    let with = |check: PeerCheck| {
        HostPlan::Connect(Requirement {
            host: host.to_string(),
            sni: host.to_string(),
            check,
            mechanism: Mechanism::Local,
            waiver: None,
            policy: PolicyType::NoPolicyFound,
            tls13_only,
        })
    };
    let plan = match lp.level {
        Level::DaneOnly => dane_only(lp, host, base, tlsa),
        Level::Dane => host_plan(host, base, Floor::Verify, tlsa, StsRule::Absent),
        Level::Verify | Level::Secure => with(PeerCheck::Names {
            names: lp.required_names(domain, host),
            ca: lp.ca.clone(),
        }),
        Level::Fingerprint => with(pins(&lp.fingerprints)),
        Level::Encrypt => with(PeerCheck::EncryptOnly),
    };
    match plan {
        HostPlan::Connect(mut r) => {
            r.tls13_only = r.tls13_only || tls13_only;
            HostPlan::Connect(r)
        }
        skip => skip,
    }
}

/// A local `dane-only` policy: DANE as the table says, or the host is not contacted.
fn dane_only(lp: &LocalPolicy, host: &str, base: &str, tlsa: Option<TlsaAnswer>) -> HostPlan {
    let why = if tlsa.is_none() {
        "the MX or address records are not DNSSEC-secure"
    } else {
        "there are no usable DNSSEC-secure TLSA records"
    };
    match host_plan(host, base, Floor::Verify, tlsa, StsRule::Absent) {
        HostPlan::Connect(r) if matches!(r.check, PeerCheck::Dane { .. }) => HostPlan::Connect(r),
        skip @ HostPlan::Skip { .. } => skip,
        HostPlan::Connect(_) => HostPlan::Skip {
            reason: format!(
                "{host}: the local policy ({}) requires DANE, but {why}; not contacted",
                lp.source
            ),
            result: Some(ResultType::DaneRequired),
        },
    }
}

/// A local `fingerprint` policy's pins as the TLS check.
fn pins(fingerprints: &[Fingerprint]) -> PeerCheck {
    let (mut cert, mut spki) = (Vec::new(), Vec::new());
    for f in fingerprints {
        match f {
            Fingerprint::Cert(d) => cert.push(*d),
            Fingerprint::PublicKey(d) => spki.push(*d),
        }
    }
    PeerCheck::Fingerprint { cert, spki }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dane_table() {
        use crate::model::dns::Tlsa;
        let t = |u, s, m| Tlsa {
            usage: u,
            selector: s,
            matching: m,
            data: vec![1; 32],
        };
        let recs = |v: Vec<Tlsa>, security| Answer::Records {
            records: v,
            security,
            owner: "_25._tcp.mx.test".into(),
        };
        let cases: Vec<(Option<TlsaAnswer>, &str)> = vec![
            (None, "verify"),
            (Some(recs(vec![t(3, 1, 1)], Security::Secure)), "dane 1"),
            (
                Some(recs(
                    vec![t(3, 1, 1), t(0, 1, 1), t(2, 0, 1)],
                    Security::Secure,
                )),
                "dane 2",
            ),
            (
                Some(recs(vec![t(0, 1, 1), t(1, 0, 1)], Security::Secure)),
                "verify",
            ),
            (Some(recs(vec![t(3, 1, 1)], Security::Insecure)), "verify"),
            (
                Some(recs(vec![t(3, 1, 1)], Security::Bogus)),
                "skip dnssec-invalid",
            ),
            (
                Some(recs(vec![t(3, 1, 1)], Security::Indeterminate)),
                "skip dnssec-invalid",
            ),
            (
                Some(Answer::NoRecords {
                    security: Security::Secure,
                }),
                "verify",
            ),
            (
                Some(Answer::NxDomain {
                    security: Security::Secure,
                }),
                "verify",
            ),
            (
                Some(Answer::NoRecords {
                    security: Security::Bogus,
                }),
                "skip dnssec-invalid",
            ),
            (Some(Answer::Bogus("sig".into())), "skip dnssec-invalid"),
            (
                Some(Answer::TempFail("SERVFAIL".into())),
                "skip tlsa-invalid",
            ),
        ];
        for (answer, want) in cases {
            let got = match host_plan(
                "mx.test",
                "mx.test",
                Floor::Verify,
                answer.clone(),
                StsRule::Absent,
            ) {
                HostPlan::Connect(Requirement {
                    check: PeerCheck::Dane { records, .. },
                    ..
                }) => format!("dane {}", records.len()),
                HostPlan::Connect(r) => r.mechanism.to_string(),
                HostPlan::Skip { result, .. } => {
                    format!("skip {}", result.map_or("-", |r| r.as_str()))
                }
            };
            assert_eq!(got, want, "{answer:?}");
        }
        assert!(wants_tlsa(Security::Secure, Security::Secure));
        assert!(!wants_tlsa(Security::Secure, Security::Insecure));
        assert!(!wants_tlsa(Security::Insecure, Security::Secure));
    }

    #[test]
    fn requiretls_table() {
        let verify = requirement("mx.test", Floor::Verify);
        let encrypt = requirement("mx.test", Floor::Encrypt);
        let cases = [
            (&verify, Security::Secure, false, true),
            (&verify, Security::Insecure, true, true),
            (&verify, Security::Insecure, false, false),
            (&encrypt, Security::Secure, false, false),
            (&encrypt, Security::Secure, true, false),
        ];
        for (req, sec, sts, want) in cases {
            assert_eq!(
                requiretls_ok(req, sec, sts).is_ok(),
                want,
                "{} {sec} {sts}",
                req.mechanism
            );
        }
    }

    #[test]
    fn floor_requirements() {
        assert_eq!(
            requirement("mx.test", Floor::Verify).check,
            PeerCheck::WebPki
        );
        assert_eq!(
            requirement("mx.test", Floor::Verify).mechanism,
            Mechanism::Verify
        );
        assert_eq!(
            requirement("mx.test", Floor::Encrypt).check,
            PeerCheck::EncryptOnly
        );
    }
}
