//! What delivery knows about one recipient domain before it connects: the
//! answers of DNS and the policies in force, gathered by `resolve::gather`.
//!
//! Plain data, so that the plan is a pure function of it and `tlsrelay check`
//! can show exactly what delivery would decide.

use crate::model::dns::{AddrAnswer, MxHost, TlsaAnswer};
use crate::model::domain::Domain;
use crate::model::egress::NextHop;
use crate::model::rfc8460::ResultType;
use crate::policy::local::LocalPolicy;
use crate::policy::mx::MxPlan;
use crate::protocol::sts::StsPolicy;

/// Everything known about one recipient domain.
#[derive(Debug, Clone)]
pub struct DomainFacts {
    /// The recipient domain.
    pub domain: Domain,
    /// The local policy that decides for the domain, if a file names it.
    pub local: Option<LocalPolicy>,
    /// MTA-STS, when no local policy decides and MTA-STS is enabled.
    pub sts: StsFacts,
    /// The MX answer, as hosts in order, a deferral or a failure.
    pub mx: MxPlan,
    /// The hosts that may be tried in one attempt, in order, with their facts.
    pub hosts: Vec<HostFacts>,
    /// MX hosts beyond `delivery.max_hosts_per_attempt`, not looked at.
    pub untried: usize,
    /// The port the hosts are reached on: a route's, else `delivery.port`.
    pub port: u16,
    /// The nearest local policy entry that would apply but is past its `expires`.
    pub expired: Option<LocalPolicy>,
}

impl DomainFacts {
    /// The next hop when a route replaces the domain's MX hosts.
    pub fn route(&self) -> Option<&NextHop> {
        self.local.as_ref().and_then(|l| l.route.as_ref())
    }
}

/// What MTA-STS discovery and the policy cache said for the domain.
#[derive(Debug, Clone, Default)]
pub struct StsFacts {
    /// The policy in force (any mode), if one is known.
    pub policy: Option<StsPolicy>,
    /// Where it came from (`fetched`, `cached`).
    pub source: Option<String>,
    /// The id of the `_mta-sts` TXT record, if one was found.
    pub record_id: Option<String>,
    /// A discovery or fetch failure, as RFC 8460 reports it.
    pub error: Option<(ResultType, String)>,
}

/// What DNS said about one MX host.
#[derive(Debug, Clone)]
pub struct HostFacts {
    /// The MX host and its preference.
    pub mx: MxHost,
    /// Its addresses (A and AAAA) with their DNSSEC status and canonical name.
    pub addresses: AddrAnswer,
    /// The TLSA lookup, made only when the MX and address answers are DNSSEC-secure.
    pub tlsa: Option<TlsaFacts>,
}

/// The TLSA answer for a host and the base domain it was found at (RFC 7672 §2.2.2).
#[derive(Debug, Clone)]
pub struct TlsaFacts {
    /// The host's secure CNAME target when it has TLSA records, else the host.
    pub base: String,
    /// The answer at `_port._tcp.base`.
    pub answer: TlsaAnswer,
}
