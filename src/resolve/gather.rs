//! Gather: every DNS answer and policy that decides how one recipient domain
//! is reached, collected into one [`DomainFacts`] value before anything connects.
//!
//! Delivery and `tlsrelay check` both call [`Gatherer::gather`] and then the pure
//! [`crate::policy::plan_domain`], so the relay's verdict and `check`'s are one.

use tokio::task::JoinSet;

use crate::model::dns::{Answer, MxHost, Security};
use crate::model::domain::Domain;
use crate::model::egress::{HopLookup, NextHop};
use crate::policy::facts::{DomainFacts, HostFacts, StsFacts, TlsaFacts};
use crate::policy::local::PolicySet;
use crate::policy::{plan_mx, wants_tlsa, MxPlan};
use crate::resolve::dns::Dns;
use crate::resolve::mta_sts::{MtaSts, Source};

/// The sources of facts, borrowed for one gathering.
pub struct Gatherer<'a> {
    /// The validating resolver.
    pub dns: &'a Dns,
    /// The MTA-STS engine, when enabled.
    pub mta_sts: Option<&'a MtaSts>,
    /// The local policies in force.
    pub policies: &'a PolicySet,
    /// The SMTP port of MX hosts (TLSA records live at `_port._tcp.host`); a route states its own.
    pub port: u16,
    /// How many MX hosts one attempt looks at (`delivery.max_hosts_per_attempt`).
    pub max_hosts: usize,
}

impl Gatherer<'_> {
    /// Collects the facts for `domain`: local policy (or route), MTA-STS, MX, and per host its addresses and TLSA.
    pub async fn gather(&self, domain: &Domain) -> DomainFacts {
        let found = self
            .policies
            .lookup_on(domain, chrono::Utc::now().date_naive());
        let local = found.active.cloned();
        let route = local.as_ref().and_then(|l| l.route.clone());
        // A domain under a local policy still has its MTA-STS looked up: a policy that
        // would replace an enforced one needs `override_mta_sts` (policy::overrides).
        // MTA-STS discovery and the MX lookup are independent: asked at once.
        let sts = async {
            match (&route, self.mta_sts) {
                (None, Some(engine)) => sts_facts(engine, domain).await,
                _ => StsFacts::default(),
            }
        };
        let mx = async {
            match &route {
                Some(hop) => (self.hop_mx(hop).await, hop.port),
                None => {
                    let answer = self.dns.mx(domain.as_str()).await;
                    (plan_mx(domain.as_str(), answer), self.port)
                }
            }
        };
        let (sts, (mx, port)) = tokio::join!(sts, mx);
        let (hosts, untried) = match &mx {
            MxPlan::Hosts {
                hosts, security, ..
            } => {
                let n = hosts.len().min(self.max_hosts);
                let facts = self.hosts(&hosts[..n], *security, port).await;
                (facts, hosts.len() - n)
            }
            _ => (vec![], 0),
        };
        DomainFacts {
            domain: domain.clone(),
            local,
            sts,
            mx,
            hosts,
            untried,
            port,
            expired: found.expired.cloned(),
        }
    }

    /// The hosts of a route's next hop: the bracketed host itself (its name comes
    /// from the operator, not DNS, so it counts as secure for DANE), or the MX
    /// hosts of the hop's name. A hop that cannot be found defers: the route is
    /// the operator's to mend, the recipients are not at fault.
    async fn hop_mx(&self, hop: &NextHop) -> MxPlan {
        let plan = match hop.lookup {
            HopLookup::Direct => MxPlan::Hosts {
                hosts: vec![MxHost {
                    preference: 0,
                    host: hop.host.to_string(),
                }],
                security: Security::Secure,
                implicit: false,
            },
            HopLookup::Mx => plan_mx(hop.host.as_str(), self.dns.mx(hop.host.as_str()).await),
        };
        match plan {
            MxPlan::Fail { reason, .. } => MxPlan::Defer {
                reason: format!("route via {hop}: {reason}"),
                result: None,
            },
            MxPlan::Defer { reason, result } => MxPlan::Defer {
                reason: format!("route via {hop}: {reason}"),
                result,
            },
            hosts => hosts,
        }
    }

    /// The facts of each host, looked up concurrently, in the order given.
    async fn hosts(&self, hosts: &[MxHost], mx_security: Security, port: u16) -> Vec<HostFacts> {
        let mut set = JoinSet::new();
        for (i, mx) in hosts.iter().enumerate() {
            let (dns, mx) = (self.dns.clone(), mx.clone());
            set.spawn(async move { (i, host_facts(&dns, mx, mx_security, port).await) });
        }
        let mut out: Vec<(usize, HostFacts)> = Vec::with_capacity(hosts.len());
        while let Some(done) = set.join_next().await {
            out.push(done.expect("host lookups do not panic"));
        }
        out.sort_by_key(|(i, _)| *i);
        out.into_iter().map(|(_, f)| f).collect()
    }
}

/// What MTA-STS says for the domain.
async fn sts_facts(engine: &MtaSts, domain: &Domain) -> StsFacts {
    let found = engine.lookup(domain).await;
    let (policy, source) = match found.policy {
        Some((p, s)) => (
            Some(p),
            Some(
                match s {
                    Source::Fetched => "fetched",
                    Source::Cached => "cached",
                }
                .to_string(),
            ),
        ),
        None => (None, None),
    };
    StsFacts {
        policy,
        source,
        record_id: found.record_id,
        error: found.error,
    }
}

/// One host's addresses, and its TLSA records when DANE can apply (RFC 7672 §2.2).
async fn host_facts(dns: &Dns, mx: MxHost, mx_security: Security, port: u16) -> HostFacts {
    let addresses = dns.addresses(&mx.host).await;
    let tlsa = match &addresses {
        Answer::Records {
            security, owner, ..
        } if wants_tlsa(mx_security, *security) => {
            Some(tlsa_facts(dns, &mx.host, owner, port).await)
        }
        _ => None,
    };
    HostFacts {
        mx,
        addresses,
        tlsa,
    }
}

/// The TLSA answer and base domain (RFC 7672 §2.2.2): the host's secure CNAME
/// target when it has TLSA records (or its lookup is in doubt), else the host name.
async fn tlsa_facts(dns: &Dns, host: &str, canonical: &str, port: u16) -> TlsaFacts {
    if !canonical.is_empty() && !canonical.eq_ignore_ascii_case(host) {
        let answer = dns.tlsa(port, canonical).await;
        if !matches!(answer, Answer::NoRecords { .. } | Answer::NxDomain { .. }) {
            return TlsaFacts {
                base: canonical.to_ascii_lowercase(),
                answer,
            };
        }
    }
    TlsaFacts {
        base: host.to_string(),
        answer: dns.tlsa(port, host).await,
    }
}
