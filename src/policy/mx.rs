//! RFC 5321 §5.1 and RFC 7505: which hosts an MX answer names, in which order.

use rand::seq::SliceRandom;

use crate::model::dns::{MxAnswer, MxHost, Security};
use crate::model::rfc8460::ResultType;
use crate::model::status::EnhancedStatus;

/// What to do for one recipient domain after its MX lookup.
#[derive(Debug, Clone, PartialEq)]
pub enum MxPlan {
    /// Try these hosts in this order.
    Hosts {
        /// Hosts by preference, equal preferences shuffled.
        hosts: Vec<MxHost>,
        /// DNSSEC status of the MX answer.
        security: Security,
        /// True when there was no MX record and the domain itself is the host.
        implicit: bool,
    },
    /// Try again later.
    Defer {
        /// Plain words for the log, the queue and the delay notice.
        reason: String,
        /// The RFC 8460 result to record, if one applies.
        result: Option<ResultType>,
    },
    /// Fail the recipients now: no retry can help.
    Fail {
        /// Enhanced status code.
        status: EnhancedStatus,
        /// Plain words for the bounce.
        reason: String,
    },
}

/// Applies RFC 5321 §5.1 and RFC 7505 to an MX answer.
pub fn plan_mx(domain: &str, answer: MxAnswer) -> MxPlan {
    match answer {
        MxAnswer::Hosts { hosts, security: Security::Bogus, .. } => MxPlan::Defer {
            reason: format!("DNSSEC validation of the MX records of {domain} failed (bogus); {hosts_n} host(s) not trusted", hosts_n = hosts.len()),
            result: Some(ResultType::DnssecInvalid),
        },
        MxAnswer::Hosts { mut hosts, security, .. } => {
            hosts.sort_by_key(|h| h.preference);
            shuffle_equal_preferences(&mut hosts);
            MxPlan::Hosts {
                hosts,
                security,
                implicit: false,
            }
        }
        MxAnswer::NullMx { .. } => MxPlan::Fail {
            status: EnhancedStatus::NULL_MX,
            reason: format!("{domain} publishes a null MX (RFC 7505): it accepts no mail"),
        },
        MxAnswer::NoRecords { security: Security::Bogus } => MxPlan::Defer {
            reason: format!("DNSSEC validation of the MX denial for {domain} failed (bogus)"),
            result: Some(ResultType::DnssecInvalid),
        },
        MxAnswer::NoRecords { security } => MxPlan::Hosts {
            hosts: vec![MxHost {
                preference: 0,
                host: domain.to_ascii_lowercase(),
            }],
            security,
            implicit: true,
        },
        MxAnswer::NxDomain { security: Security::Bogus } => MxPlan::Defer {
            reason: format!("DNSSEC validation of the NXDOMAIN for {domain} failed (bogus)"),
            result: Some(ResultType::DnssecInvalid),
        },
        MxAnswer::NxDomain { .. } => MxPlan::Fail {
            status: EnhancedStatus::BAD_DESTINATION_SYSTEM,
            reason: format!("the domain {domain} does not exist (NXDOMAIN)"),
        },
        MxAnswer::Bogus(why) => MxPlan::Defer {
            reason: format!("DNSSEC validation of the MX records of {domain} failed: {why}"),
            result: Some(ResultType::DnssecInvalid),
        },
        MxAnswer::TempFail(why) => MxPlan::Defer {
            reason: format!("MX lookup for {domain} failed temporarily: {why}"),
            result: None,
        },
    }
}

/// Shuffles runs of equal preference (RFC 5321 §5.1), keeping the runs in order.
fn shuffle_equal_preferences(hosts: &mut [MxHost]) {
    let mut rng = rand::rng();
    let mut start = 0;
    while start < hosts.len() {
        let pref = hosts[start].preference;
        let end = hosts[start..]
            .iter()
            .position(|h| h.preference != pref)
            .map_or(hosts.len(), |n| start + n);
        hosts[start..end].shuffle(&mut rng);
        start = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mx(p: u16, h: &str) -> MxHost {
        MxHost {
            preference: p,
            host: h.into(),
        }
    }

    #[test]
    fn mx_table() {
        use MxAnswer as A;
        let hosts = vec![mx(20, "b.test"), mx(10, "a.test")];
        let cases: Vec<(A, &str)> = vec![
            (
                A::Hosts {
                    hosts: hosts.clone(),
                    security: Security::Secure,
                    owner: "d.test".into(),
                },
                "hosts a.test,b.test secure",
            ),
            (
                A::Hosts {
                    hosts: hosts.clone(),
                    security: Security::Insecure,
                    owner: "d.test".into(),
                },
                "hosts a.test,b.test insecure",
            ),
            (
                A::Hosts {
                    hosts,
                    security: Security::Bogus,
                    owner: "d.test".into(),
                },
                "defer dnssec-invalid",
            ),
            (
                A::NullMx {
                    security: Security::Secure,
                },
                "fail 5.1.10",
            ),
            (
                A::NoRecords {
                    security: Security::Secure,
                },
                "implicit d.test secure",
            ),
            (
                A::NoRecords {
                    security: Security::Insecure,
                },
                "implicit d.test insecure",
            ),
            (
                A::NxDomain {
                    security: Security::Secure,
                },
                "fail 5.1.2",
            ),
            (
                A::NxDomain {
                    security: Security::Insecure,
                },
                "fail 5.1.2",
            ),
            (A::Bogus("x".into()), "defer dnssec-invalid"),
            (A::TempFail("SERVFAIL".into()), "defer -"),
        ];
        for (answer, want) in cases {
            let got = match plan_mx("d.test", answer.clone()) {
                MxPlan::Hosts {
                    hosts,
                    security,
                    implicit: false,
                } => format!(
                    "hosts {} {security}",
                    hosts
                        .iter()
                        .map(|h| h.host.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                MxPlan::Hosts {
                    hosts,
                    security,
                    implicit: true,
                } => format!("implicit {} {security}", hosts[0].host),
                MxPlan::Defer { result, .. } => {
                    format!("defer {}", result.map_or("-", |r| r.as_str()))
                }
                MxPlan::Fail { status, .. } => format!("fail {status}"),
            };
            assert_eq!(got, want, "{answer:?}");
        }
    }

    #[test]
    fn equal_preferences_are_shuffled_but_order_kept() {
        let mut seen_first = std::collections::HashSet::new();
        for _ in 0..200 {
            let answer = MxAnswer::Hosts {
                hosts: vec![
                    mx(20, "z.test"),
                    mx(10, "a.test"),
                    mx(10, "b.test"),
                    mx(10, "c.test"),
                ],
                security: Security::Insecure,
                owner: "d.test".into(),
            };
            let MxPlan::Hosts { hosts, .. } = plan_mx("d.test", answer) else {
                panic!()
            };
            assert_eq!(hosts[3].host, "z.test");
            seen_first.insert(hosts[0].host.clone());
        }
        assert_eq!(
            seen_first.len(),
            3,
            "each preference-10 host should come first sometimes"
        );
    }
}
