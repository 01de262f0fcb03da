//! The plan for one recipient domain: a pure function of the gathered facts and
//! the message's TLS demand.
//!
//! Delivery carries a plan out; `tlsrelay check` shows it. Both get it from
//! [`plan_domain`], so they cannot disagree.

use std::net::IpAddr;

use crate::config::Floor;
use crate::model::dns::{Answer, Security, TlsaAnswer};
use crate::model::egress::Egress;
use crate::model::mechanism::TlsDemand;
use crate::model::rfc8460::{PolicyType, ResultType};
use crate::model::status::EnhancedStatus;
use crate::policy::facts::{DomainFacts, HostFacts};
use crate::policy::host::{host_plan, local_host_plan, requiretls_ok, HostPlan, StsRule};
use crate::policy::local::LocalPolicy;
use crate::policy::mx::MxPlan;
use crate::policy::overrides;
use crate::policy::requirement::Requirement;
use crate::protocol::sts::{Mode, StsPolicy};

/// What to do for one recipient domain.
#[derive(Debug, Clone, PartialEq)]
pub enum DomainPlan {
    /// Fail the recipients now: no retry can help.
    Fail {
        /// Enhanced status code.
        status: EnhancedStatus,
        /// Plain words for the bounce.
        reason: String,
    },
    /// Try again later without contacting any host.
    Defer {
        /// Plain words for the log, the queue and the delay notice.
        reason: String,
        /// The RFC 8460 result to record, if one applies.
        result: Option<ResultType>,
    },
    /// Walk these hosts in order.
    Hosts {
        /// One step per MX host looked at.
        steps: Vec<HostStep>,
        /// DNSSEC status of the MX answer.
        mx_security: Security,
        /// MX hosts beyond `delivery.max_hosts_per_attempt`, not looked at.
        untried: usize,
    },
}

/// One MX host in the plan.
#[derive(Debug, Clone, PartialEq)]
pub enum HostStep {
    /// Connect to its addresses under a requirement.
    Connect(Target),
    /// Do not contact it in this attempt.
    Skip(Skipped),
}

/// A host to connect to.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// Its addresses, in the order DNS gave them.
    pub addrs: Vec<IpAddr>,
    /// What its TLS session must prove.
    pub req: Requirement,
    /// What TLS-RPT records about sessions with it.
    pub report: ReportFacts,
    /// Something the operator should know (an MTA-STS `testing` policy that does not list the host).
    pub note: Option<String>,
    /// The TCP port: a route's, else `delivery.port`.
    pub port: u16,
    /// Source addresses to bind (`[delivery]`, then the local entry's own).
    pub egress: Egress,
}

/// A host not contacted, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Skipped {
    /// The MX host.
    pub host: String,
    /// Plain words.
    pub reason: String,
    /// The RFC 8460 result to record; none when nothing is reported (e.g. no address).
    pub result: Option<ResultType>,
    /// What TLS-RPT records about the refusal.
    pub report: ReportFacts,
    /// Which kind of rule skipped it.
    pub cause: SkipCause,
}

/// Why a host is skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipCause {
    /// Its addresses could not be found or trusted.
    Dns,
    /// DANE, MTA-STS or a local policy forbids contacting it.
    Policy,
    /// It cannot carry a REQUIRETLS message (RFC 8689).
    RequireTls,
    /// Its addresses are this machine or its link (see [`Destinations`]).
    LocalAddress,
}

/// Which addresses delivery may connect to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Destinations {
    /// Never loopback, unspecified or link-local addresses: an MX record (or a
    /// name like `localhost`) pointing there would make tlsrelay deliver to
    /// itself or to whatever listens on this machine's port 25.
    #[default]
    PublicOnly,
    /// Every address; `delivery.allow_loopback_destinations`, for labs and tests
    /// whose MX hosts run on 127.0.0.0/8.
    AllowLoopback,
}

/// Whether `ip` is this machine or its link: loopback (127.0.0.0/8, ::1),
/// unspecified or "this network" (0.0.0.0/8, ::), link-local (169.254.0.0/16,
/// fe80::/10), also as IPv4-mapped IPv6 addresses.
pub fn is_local_destination(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.octets()[0] == 0 || v4.is_link_local(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_local_destination(IpAddr::V4(v4)),
            None => {
                v6.is_loopback() || v6.is_unspecified() || (v6.segments()[0] & 0xffc0) == 0xfe80
            }
        },
    }
}

/// The operator's settings a plan depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// `delivery.floor`.
    pub floor: Floor,
    /// `delivery.allow_loopback_destinations`.
    pub destinations: Destinations,
    /// `delivery.source_ipv4`, `source_ipv6`, `address_family`.
    pub egress: Egress,
}

impl Settings {
    /// The settings of a `[delivery]` section.
    pub fn of(d: &crate::config::DeliveryConfig) -> Settings {
        Settings {
            floor: d.floor,
            destinations: if d.allow_loopback_destinations {
                Destinations::AllowLoopback
            } else {
                Destinations::PublicOnly
            },
            egress: d.egress(),
        }
    }
}

/// A floor with the default destinations (public addresses only).
impl From<Floor> for Settings {
    fn from(floor: Floor) -> Settings {
        Settings {
            floor,
            destinations: Destinations::PublicOnly,
            egress: Egress::default(),
        }
    }
}

/// What TLS-RPT needs to know about the policy behind an outcome (RFC 8460 §4.4).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReportFacts {
    /// The policy type in force.
    pub policy: PolicyType,
    /// The policy strings: TLSA records, or the MTA-STS policy's lines.
    pub policy_strings: Vec<String>,
    /// The MTA-STS policy's mx patterns.
    pub mx_patterns: Vec<String>,
}

impl ReportFacts {
    /// The facts of an MTA-STS policy: its lines and mx patterns.
    fn sts(p: Option<&StsPolicy>) -> ReportFacts {
        let Some(p) = p else {
            return ReportFacts::of(PolicyType::Sts);
        };
        ReportFacts {
            policy: PolicyType::Sts,
            policy_strings: p
                .text
                .lines()
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect(),
            mx_patterns: p.mx_strings(),
        }
    }

    /// The facts of a TLSA answer: its records, one per string.
    fn tlsa(answer: Option<&TlsaAnswer>) -> ReportFacts {
        let policy_strings = match answer {
            Some(Answer::Records { records, .. }) => records.iter().map(tlsa_string).collect(),
            _ => vec![],
        };
        ReportFacts {
            policy: PolicyType::Tlsa,
            policy_strings,
            mx_patterns: vec![],
        }
    }

    /// Facts with nothing but a policy type.
    fn of(policy: PolicyType) -> ReportFacts {
        ReportFacts {
            policy,
            ..ReportFacts::default()
        }
    }
}

/// A TLSA record as RFC 8460 §4.4 writes it: `usage selector matching HEX`.
pub fn tlsa_string(r: &crate::model::dns::Tlsa) -> String {
    let hex: String = r.data.iter().map(|b| format!("{b:02X}")).collect();
    format!("{} {} {} {hex}", r.usage, r.selector, r.matching)
}

/// The rules that do not change from host to host of one domain.
struct Rules<'a> {
    facts: &'a DomainFacts,
    /// The local entry that decides, unless it is ignored ([`overrides`]).
    local: Option<&'a LocalPolicy>,
    egress: Egress,
    floor: Floor,
    destinations: Destinations,
    demand: TlsDemand,
    sts: StsRule<'a>,
    mx_security: Security,
}

/// Plans one attempt at a domain.
pub fn plan_domain(facts: &DomainFacts, settings: Settings, demand: TlsDemand) -> DomainPlan {
    let mx_security = match &facts.mx {
        MxPlan::Fail { status, reason } => {
            return DomainPlan::Fail {
                status: *status,
                reason: reason.clone(),
            }
        }
        MxPlan::Defer { reason, result } => {
            return DomainPlan::Defer {
                reason: reason.clone(),
                result: *result,
            }
        }
        MxPlan::Hosts { security, .. } => *security,
    };
    let local = overrides::effective_local(facts);
    let rules = Rules {
        facts,
        local,
        egress: local.map_or(settings.egress, |l| settings.egress.with(&l.egress)),
        floor: settings.floor,
        destinations: settings.destinations,
        demand,
        sts: sts_rule(local, facts),
        mx_security,
    };
    DomainPlan::Hosts {
        steps: facts.hosts.iter().map(|h| rules.step(h)).collect(),
        mx_security,
        untried: facts.untried,
    }
}

/// The MTA-STS rule: none when a local policy decides.
fn sts_rule<'a>(local: Option<&LocalPolicy>, facts: &'a DomainFacts) -> StsRule<'a> {
    match (local, &facts.sts.policy) {
        (None, Some(p)) if p.mode == Mode::Enforce => StsRule::Enforce(p),
        (None, Some(p)) if p.mode == Mode::Testing => StsRule::Testing(p),
        _ => StsRule::Absent,
    }
}

impl Rules<'_> {
    /// The step for one host.
    fn step(&self, h: &HostFacts) -> HostStep {
        let host = h.mx.host.as_str();
        let addrs = match &h.addresses {
            Answer::Records { records, .. } => records.clone(),
            other => return HostStep::Skip(address_skip(host, other)),
        };
        let addrs = match self.public_addresses(host, addrs) {
            Ok(addrs) => addrs,
            Err(skip) => return HostStep::Skip(skip),
        };
        let addrs = match self.of_family(host, addrs) {
            Ok(addrs) => addrs,
            Err(skip) => return HostStep::Skip(skip),
        };
        let (base, tlsa) = match &h.tlsa {
            Some(t) => (t.base.as_str(), Some(t.answer.clone())),
            None => (host, None),
        };
        let plan = match self.local {
            _ if self.demand.waives_authentication() => HostPlan::Connect(self.waived(host)),
            Some(lp) => local_host_plan(lp, self.facts.domain.as_str(), host, base, tlsa.clone()),
            None => host_plan(host, base, self.floor, tlsa.clone(), self.sts),
        };
        match plan {
            HostPlan::Connect(req) => self.connect(host, addrs, req, tlsa.as_ref()),
            HostPlan::Skip { reason, result } => HostStep::Skip(Skipped {
                host: host.to_string(),
                reason,
                result,
                report: self.skip_report(result, tlsa.as_ref()),
                cause: SkipCause::Policy,
            }),
        }
    }

    /// The addresses delivery may connect to; a host with none is skipped.
    /// Mixed answers keep their public addresses, in DNS order.
    fn public_addresses(&self, host: &str, addrs: Vec<IpAddr>) -> Result<Vec<IpAddr>, Skipped> {
        if self.destinations == Destinations::AllowLoopback {
            return Ok(addrs);
        }
        let (local, public): (Vec<IpAddr>, Vec<IpAddr>) =
            addrs.into_iter().partition(|&a| is_local_destination(a));
        if !public.is_empty() || local.is_empty() {
            return Ok(public);
        }
        let listed: Vec<String> = local.iter().map(IpAddr::to_string).collect();
        Err(Skipped {
            host: host.to_string(),
            reason: format!(
                "{host} resolves only to loopback, unspecified or link-local addresses ({}); \
                 tlsrelay does not deliver to this machine or its link \
                 (delivery.allow_loopback_destinations is for labs and tests)",
                listed.join(", ")
            ),
            result: None,
            report: ReportFacts::default(),
            cause: SkipCause::LocalAddress,
        })
    }

    /// The addresses of the allowed families, the preferred first; a host with none is skipped.
    fn of_family(&self, host: &str, addrs: Vec<IpAddr>) -> Result<Vec<IpAddr>, Skipped> {
        let family = self.egress.family;
        let ordered = family.order(&addrs);
        if !ordered.is_empty() || addrs.is_empty() {
            return Ok(ordered);
        }
        Err(Skipped {
            host: host.to_string(),
            reason: format!(
                "{host} has no address of the families allowed (address_family = \"{family}\")"
            ),
            result: None,
            report: ReportFacts::default(),
            cause: SkipCause::Dns,
        })
    }

    /// A requirement without certificate checks, for a message that waived them.
    fn waived(&self, host: &str) -> Requirement {
        Requirement {
            waiver: self.demand.waiver(),
            ..crate::policy::host::requirement(host, Floor::Encrypt)
        }
    }

    /// A host to connect to, unless REQUIRETLS forbids it.
    fn connect(
        &self,
        host: &str,
        addrs: Vec<IpAddr>,
        req: Requirement,
        tlsa: Option<&TlsaAnswer>,
    ) -> HostStep {
        let listed = match self.sts {
            StsRule::Enforce(p) | StsRule::Testing(p) => p.allows(host),
            StsRule::Absent => false,
        };
        if self.demand == TlsDemand::RequireTls {
            if let Err(why) = requiretls_ok(&req, self.mx_security, listed) {
                return HostStep::Skip(Skipped {
                    host: host.to_string(),
                    reason: format!("{host}: {why}"),
                    result: None,
                    report: ReportFacts::of(req.policy),
                    cause: SkipCause::RequireTls,
                });
            }
        }
        let note = (matches!(self.sts, StsRule::Testing(_)) && !listed).then(|| {
            format!(
                "MTA-STS testing mode: {host} is not in the policy; enforcement would refuse it"
            )
        });
        let report = match req.policy {
            PolicyType::Sts => ReportFacts::sts(self.facts.sts.policy.as_ref()),
            PolicyType::Tlsa => ReportFacts::tlsa(tlsa),
            PolicyType::NoPolicyFound => ReportFacts::default(),
        };
        HostStep::Connect(Target {
            addrs,
            req,
            report,
            note,
            port: self.facts.port,
            egress: self.egress,
        })
    }

    /// The policy a refusal is reported under (RFC 8460 §4.3).
    fn skip_report(&self, result: Option<ResultType>, tlsa: Option<&TlsaAnswer>) -> ReportFacts {
        if self.local.is_some() {
            ReportFacts::default()
        } else if matches!(
            result,
            Some(ResultType::DnssecInvalid | ResultType::TlsaInvalid)
        ) {
            ReportFacts::tlsa(tlsa)
        } else if matches!(self.sts, StsRule::Enforce(_)) {
            ReportFacts::sts(self.facts.sts.policy.as_ref())
        } else {
            ReportFacts::default()
        }
    }
}

/// Why a host whose addresses are missing or untrusted is skipped.
fn address_skip(host: &str, answer: &Answer<IpAddr>) -> Skipped {
    let (reason, result) = match answer {
        Answer::Bogus(why) => (
            format!("DNSSEC validation of the addresses of {host} failed: {why}"),
            Some(ResultType::DnssecInvalid),
        ),
        Answer::TempFail(why) => (
            format!("address lookup for {host} failed temporarily: {why}"),
            None,
        ),
        _ => (format!("{host} has no address records"), None),
    };
    Skipped {
        host: host.to_string(),
        reason,
        result,
        report: ReportFacts::default(),
        cause: SkipCause::Dns,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::dns::{MxHost, Tlsa};
    use crate::model::domain::Domain;
    use crate::model::egress::AddressFamily;
    use crate::policy::facts::{StsFacts, TlsaFacts};
    use crate::policy::local::PolicySet;
    use crate::protocol::sts::parse_policy;

    /// One host `mx.d.test` at 192.0.2.1; `tlsa` set when DANE can apply.
    fn host(addr_security: Security, tlsa: Option<TlsaAnswer>) -> HostFacts {
        HostFacts {
            mx: MxHost {
                preference: 10,
                host: "mx.d.test".into(),
            },
            addresses: Answer::Records {
                records: vec!["192.0.2.1".parse().unwrap()],
                security: addr_security,
                owner: "mx.d.test".into(),
            },
            tlsa: tlsa.map(|answer| TlsaFacts {
                base: "mx.d.test".into(),
                answer,
            }),
        }
    }

    fn dane_records() -> TlsaAnswer {
        Answer::Records {
            records: vec![Tlsa {
                usage: 3,
                selector: 1,
                matching: 1,
                data: vec![0xab; 32],
            }],
            security: Security::Secure,
            owner: "_25._tcp.mx.d.test".into(),
        }
    }

    fn facts(mx_security: Security, h: HostFacts) -> DomainFacts {
        DomainFacts {
            domain: Domain::parse("d.test").unwrap(),
            local: None,
            sts: StsFacts::default(),
            mx: MxPlan::Hosts {
                hosts: vec![h.mx.clone()],
                security: mx_security,
                implicit: false,
            },
            hosts: vec![h],
            untried: 0,
            port: 25,
            expired: None,
        }
    }

    fn with_sts(mut f: DomainFacts, mode: &str, mx: &str) -> DomainFacts {
        let text = format!("version: STSv1\nmode: {mode}\nmx: {mx}\nmax_age: 86400\n");
        f.sts = StsFacts {
            policy: Some(parse_policy(&text).unwrap()),
            ..StsFacts::default()
        };
        f
    }

    fn with_local(f: DomainFacts, level: &str) -> DomainFacts {
        with_entry(f, &format!("level = \"{level}\""))
    }

    fn with_entry(mut f: DomainFacts, lines: &str) -> DomainFacts {
        let text = format!("[[policy]]\ndomain = \"d.test\"\n{lines}\n");
        let set = PolicySet::parse_file(&text, std::path::Path::new("p.toml")).unwrap();
        f.local = set.into_iter().next();
        f
    }

    /// The plan in short words: `connect MECH[ (waiver)] [note]`, `skip CAUSE RESULT POLICY`, `fail`, `defer`.
    fn short(plan: &DomainPlan) -> String {
        let DomainPlan::Hosts { steps, .. } = plan else {
            return format!("{plan:?}")
                .split_whitespace()
                .next()
                .unwrap()
                .to_lowercase();
        };
        match &steps[0] {
            HostStep::Connect(t) => format!(
                "connect {}{}",
                t.req.auth_label(),
                if t.note.is_some() { " note" } else { "" }
            ),
            HostStep::Skip(s) => format!(
                "skip {:?} {} {:?}",
                s.cause,
                s.result.map_or("-", |r| r.as_str()),
                s.report.policy
            ),
        }
    }

    #[test]
    fn plan_table() {
        use Security::{Insecure, Secure};
        use TlsDemand::*;
        let secure = || facts(Secure, host(Secure, Some(dane_records())));
        let insecure = || facts(Insecure, host(Insecure, None));
        let cases: Vec<(&str, DomainFacts, TlsDemand, &str)> = vec![
            ("dane", secure(), Standard, "connect dane"),
            ("floor", insecure(), Standard, "connect verify"),
            (
                "report mail waives DANE",
                secure(),
                ReportMail,
                "connect encrypt (TLS report)",
            ),
            (
                "TLS-Required: No",
                insecure(),
                TlsRequiredNo,
                "connect encrypt (TLS-Required: No)",
            ),
            (
                "requiretls, secure MX",
                secure(),
                RequireTls,
                "connect dane",
            ),
            (
                "requiretls, insecure MX",
                insecure(),
                RequireTls,
                "skip RequireTls - NoPolicyFound",
            ),
            (
                "requiretls, insecure MX listed by MTA-STS",
                with_sts(insecure(), "enforce", "mx.d.test"),
                RequireTls,
                "connect mta-sts",
            ),
            (
                "requiretls, local encrypt with override_dane",
                with_entry(secure(), "level = \"encrypt\"\noverride_dane = true"),
                RequireTls,
                "skip RequireTls - NoPolicyFound",
            ),
            (
                "local encrypt on a DANE domain without override_dane: ignored",
                with_local(secure(), "encrypt"),
                Standard,
                "connect dane",
            ),
            (
                "local encrypt with override_dane",
                with_entry(secure(), "level = \"encrypt\"\noverride_dane = true"),
                Standard,
                "connect local",
            ),
            (
                "local encrypt, nothing published",
                with_local(insecure(), "encrypt"),
                Standard,
                "connect local",
            ),
            (
                "local verify on MTA-STS enforce without override: ignored",
                with_local(with_sts(insecure(), "enforce", "other.d.test"), "verify"),
                Standard,
                "skip Policy validation-failure Sts",
            ),
            (
                "local verify with override_mta_sts",
                with_entry(
                    with_sts(insecure(), "enforce", "other.d.test"),
                    "level = \"verify\"\noverride_mta_sts = true",
                ),
                Standard,
                "connect local",
            ),
            (
                "local fingerprint on a DANE domain needs no override",
                with_entry(
                    secure(),
                    &format!(
                        "level = \"fingerprint\"\nfingerprints = [\"spki-sha256:{}\"]",
                        "ab".repeat(32)
                    ),
                ),
                Standard,
                "connect local",
            ),
            (
                "local dane on MTA-STS enforce without DANE: ignored",
                with_local(with_sts(insecure(), "enforce", "other.d.test"), "dane"),
                Standard,
                "skip Policy validation-failure Sts",
            ),
            (
                "local dane-only on MTA-STS enforce needs no override",
                with_local(with_sts(secure(), "enforce", "other.d.test"), "dane-only"),
                Standard,
                "connect dane",
            ),
            (
                "local encrypt when the TLSA lookup is in doubt: ignored",
                with_local(
                    facts(Secure, host(Secure, Some(Answer::TempFail("t".into())))),
                    "encrypt",
                ),
                Standard,
                "skip Policy tlsa-invalid Tlsa",
            ),
            (
                "local dane",
                with_local(secure(), "dane-only"),
                Standard,
                "connect dane",
            ),
            (
                "local dane-only, insecure",
                with_local(insecure(), "dane-only"),
                Standard,
                "skip Policy dane-required NoPolicyFound",
            ),
            (
                "sts enforce, host not listed",
                with_sts(insecure(), "enforce", "other.d.test"),
                Standard,
                "skip Policy validation-failure Sts",
            ),
            (
                "sts testing, host not listed",
                with_sts(insecure(), "testing", "other.d.test"),
                Standard,
                "connect verify note",
            ),
            (
                "DANE beats MTA-STS",
                with_sts(secure(), "enforce", "other.d.test"),
                Standard,
                "connect dane",
            ),
            (
                "TLSA lookup failed",
                facts(
                    Secure,
                    host(Secure, Some(Answer::TempFail("timeout".into()))),
                ),
                Standard,
                "skip Policy tlsa-invalid Tlsa",
            ),
            (
                "addresses bogus",
                facts(
                    Secure,
                    HostFacts {
                        addresses: Answer::Bogus("rrsig".into()),
                        ..host(Secure, None)
                    },
                ),
                Standard,
                "skip Dns dnssec-invalid NoPolicyFound",
            ),
            (
                "no addresses",
                facts(
                    Secure,
                    HostFacts {
                        addresses: Answer::NoRecords { security: Secure },
                        ..host(Secure, None)
                    },
                ),
                Standard,
                "skip Dns - NoPolicyFound",
            ),
        ];
        for (name, f, demand, want) in cases {
            let got = short(&plan_domain(&f, Floor::Verify.into(), demand));
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn address_families_filter_and_skip() {
        let h = HostFacts {
            mx: MxHost {
                preference: 10,
                host: "mx.d.test".into(),
            },
            addresses: Answer::Records {
                records: vec!["192.0.2.1".parse().unwrap(), "2001:db8::1".parse().unwrap()],
                security: Security::Insecure,
                owner: "mx.d.test".into(),
            },
            tlsa: None,
        };
        let f = facts(Security::Insecure, h);
        let with = |family: AddressFamily, v4: Option<&str>| Settings {
            floor: Floor::Verify,
            destinations: Destinations::PublicOnly,
            egress: Egress {
                source_ipv4: v4.map(|a| a.parse().unwrap()),
                source_ipv6: None,
                family,
            },
        };
        let connect = |plan: DomainPlan| match plan {
            DomainPlan::Hosts { steps, .. } => match &steps[0] {
                HostStep::Connect(t) => Ok((t.addrs.clone(), t.egress)),
                HostStep::Skip(s) => Err(s.reason.clone()),
            },
            other => Err(format!("{other:?}")),
        };
        let (addrs, egress) = connect(plan_domain(
            &f,
            with(AddressFamily::Ipv4, Some("127.0.0.9")),
            TlsDemand::Standard,
        ))
        .unwrap();
        assert_eq!(addrs, vec!["192.0.2.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(
            egress.source_for(addrs[0]),
            Some("127.0.0.9".parse().unwrap())
        );
        let (addrs, _) = connect(plan_domain(
            &f,
            with(AddressFamily::PreferIpv6, None),
            TlsDemand::Standard,
        ))
        .unwrap();
        assert_eq!(addrs[0], "2001:db8::1".parse::<IpAddr>().unwrap());
        let mut v4_only = f.clone();
        if let Answer::Records { records, .. } = &mut v4_only.hosts[0].addresses {
            records.retain(IpAddr::is_ipv4);
        }
        let why = connect(plan_domain(
            &v4_only,
            with(AddressFamily::Ipv6, None),
            TlsDemand::Standard,
        ))
        .unwrap_err();
        assert!(why.contains("address_family = \"ipv6\""), "{why}");
    }

    #[test]
    fn local_addresses_table() {
        let cases = [
            ("127.0.0.1", true),
            ("127.255.0.9", true),
            ("0.0.0.0", true),
            ("0.1.2.3", true),
            ("169.254.1.1", true),
            ("::1", true),
            ("::", true),
            ("fe80::1", true),
            ("febf::1", true),
            ("::ffff:127.0.0.1", true),
            ("::ffff:0.0.0.0", true),
            ("192.0.2.1", false),
            ("10.0.0.1", false),
            ("2001:db8::1", false),
            ("fec0::1", false),
            ("::ffff:192.0.2.1", false),
            ("1.0.0.0", false),
        ];
        for (ip, local) in cases {
            assert_eq!(is_local_destination(ip.parse().unwrap()), local, "{ip}");
        }
    }

    /// `x@localhost`, an MX record on 127.0.0.1: refused unless the operator allows it.
    #[test]
    fn loopback_destinations_are_refused_by_default() {
        let with_addrs = |addrs: &[&str]| {
            let mut h = host(Security::Insecure, None);
            h.addresses = Answer::Records {
                records: addrs.iter().map(|a| a.parse().unwrap()).collect(),
                security: Security::Insecure,
                owner: "mx.d.test".into(),
            };
            facts(Security::Insecure, h)
        };
        let allow = Settings {
            floor: Floor::Verify,
            destinations: Destinations::AllowLoopback,
            egress: Egress::default(),
        };
        let only_local = with_addrs(&["127.0.0.1", "::1"]);
        let plan = plan_domain(&only_local, Floor::Verify.into(), TlsDemand::Standard);
        assert_eq!(short(&plan), "skip LocalAddress - NoPolicyFound");
        let DomainPlan::Hosts { steps, .. } = plan else {
            panic!()
        };
        let HostStep::Skip(s) = &steps[0] else {
            panic!()
        };
        assert!(s.reason.contains("127.0.0.1, ::1"), "{}", s.reason);
        assert!(s.reason.contains("allow_loopback_destinations"));
        // Report mail waives authentication, not this.
        let report = plan_domain(&only_local, Floor::Encrypt.into(), TlsDemand::ReportMail);
        assert_eq!(short(&report), "skip LocalAddress - NoPolicyFound");
        let plan = plan_domain(&only_local, allow, TlsDemand::Standard);
        assert_eq!(short(&plan), "connect verify");
        // A mixed answer keeps only its public addresses.
        let mixed = with_addrs(&["127.0.0.1", "192.0.2.7", "fe80::1"]);
        let DomainPlan::Hosts { steps, .. } =
            plan_domain(&mixed, Floor::Verify.into(), TlsDemand::Standard)
        else {
            panic!()
        };
        let HostStep::Connect(t) = &steps[0] else {
            panic!()
        };
        assert_eq!(t.addrs, vec!["192.0.2.7".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn mx_failures_and_deferrals_pass_through() {
        let mut f = facts(Security::Secure, host(Security::Secure, None));
        f.mx = MxPlan::Fail {
            status: EnhancedStatus::NULL_MX,
            reason: "null MX".into(),
        };
        assert!(matches!(
            plan_domain(&f, Floor::Verify.into(), TlsDemand::Standard),
            DomainPlan::Fail { status, .. } if status == EnhancedStatus::NULL_MX
        ));
        f.mx = MxPlan::Defer {
            reason: "bogus".into(),
            result: Some(ResultType::DnssecInvalid),
        };
        assert!(matches!(
            plan_domain(&f, Floor::Verify.into(), TlsDemand::Standard),
            DomainPlan::Defer {
                result: Some(ResultType::DnssecInvalid),
                ..
            }
        ));
    }

    #[test]
    fn report_facts_carry_the_policy() {
        let f = with_sts(
            facts(Security::Insecure, host(Security::Insecure, None)),
            "enforce",
            "mx.d.test",
        );
        let DomainPlan::Hosts { steps, .. } =
            plan_domain(&f, Floor::Verify.into(), TlsDemand::Standard)
        else {
            panic!("hosts");
        };
        let HostStep::Connect(t) = &steps[0] else {
            panic!("connect")
        };
        assert_eq!(t.report.policy, PolicyType::Sts);
        assert_eq!(t.report.mx_patterns, vec!["mx.d.test".to_string()]);
        assert!(t
            .report
            .policy_strings
            .contains(&"mode: enforce".to_string()));
        let f = facts(
            Security::Secure,
            host(Security::Secure, Some(dane_records())),
        );
        let DomainPlan::Hosts { steps, .. } =
            plan_domain(&f, Floor::Verify.into(), TlsDemand::Standard)
        else {
            panic!("hosts");
        };
        let HostStep::Connect(t) = &steps[0] else {
            panic!("connect")
        };
        assert_eq!(
            t.report.policy_strings,
            vec![format!("3 1 1 {}", "AB".repeat(32))]
        );
    }
}
