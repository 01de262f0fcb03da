//! The one place where what happened during an attempt at a domain becomes an
//! outcome record (RFC 8460 terms), a metric and a log line.

use std::net::{IpAddr, SocketAddr};

use super::client::HostError;
use super::Context;
use crate::model::domain::Domain;
use crate::model::rfc8460::{PolicyType, ResultType};
use crate::policy::{ReportFacts, SkipCause, Skipped, Target};
use crate::reporting::metrics as names;
use crate::reporting::outcome::Outcome;
use crate::spool::{now_unix, Envelope};

/// Observes one attempt at one domain of one message.
pub(super) struct Observer<'a> {
    ctx: &'a Context,
    env: &'a Envelope,
    domain: &'a Domain,
    /// The route's next hop, when a route replaced the MX hosts.
    route: Option<String>,
}

/// One outcome record's variable part.
struct Record<'a> {
    host: &'a str,
    addr: Option<SocketAddr>,
    report: &'a ReportFacts,
    auth: Option<String>,
    result: Option<ResultType>,
    detail: &'a str,
    sending_ip: Option<IpAddr>,
}

impl<'a> Observer<'a> {
    /// An observer for `domain` of `env`.
    pub(super) fn new(ctx: &'a Context, env: &'a Envelope, domain: &'a Domain) -> Self {
        Observer {
            ctx,
            env,
            domain,
            route: None,
        }
    }

    /// The same observer for a domain whose mail a route sends to `hop`.
    pub(super) fn routed(self, hop: Option<&crate::model::egress::NextHop>) -> Self {
        Observer {
            route: hop.map(|h| h.to_string()),
            ..self
        }
    }

    /// MTA-STS discovery or fetch failed (a cached policy may still stand in).
    pub(super) fn sts_failed(&self, result: ResultType, words: &str) {
        let report = ReportFacts {
            policy: PolicyType::Sts,
            ..ReportFacts::default()
        };
        self.record(Record {
            host: "",
            addr: None,
            report: &report,
            auth: None,
            result: Some(result),
            detail: words,
            sending_ip: None,
        });
    }

    /// The domain is deferred or failed before any host was looked at.
    pub(super) fn domain_settled(&self, what: &str, reason: &str, result: Option<ResultType>) {
        tracing::info!(id = %self.env.id, domain = %self.domain, result = %format!("{what}: {reason}"), "attempt");
        if let Some(result) = result {
            self.record(Record {
                host: "",
                addr: None,
                report: &ReportFacts::default(),
                auth: None,
                result: Some(result),
                detail: reason,
                sending_ip: None,
            });
        }
    }

    /// A host of the plan is not contacted.
    pub(super) fn skipped(&self, s: &Skipped) {
        let token = match (s.cause, s.result) {
            (SkipCause::RequireTls, _) => "refused:requiretls".to_string(),
            (SkipCause::LocalAddress, _) => "refused:local-address".to_string(),
            (_, Some(r)) => format!("refused:{}", r.as_str()),
            (_, None) => "refused:dns".to_string(),
        };
        tracing::info!(id = %self.env.id, domain = %self.domain, host = %s.host, tls = %token, reason = %s.reason, "attempt");
        if s.result.is_some() {
            self.record(Record {
                host: &s.host,
                addr: None,
                report: &s.report,
                auth: None,
                result: s.result,
                detail: &s.reason,
                sending_ip: None,
            });
        }
    }

    /// Something about a host the operator should know, without changing the plan.
    pub(super) fn note(&self, t: &Target, note: &str) {
        tracing::info!(id = %self.env.id, domain = %self.domain, host = %t.req.host, note, "attempt");
    }

    /// A host refused us, or TLS with it failed.
    pub(super) fn refused(&self, t: &Target, addr: SocketAddr, e: &HostError) {
        let token = e
            .result
            .map_or("none".to_string(), |r| format!("refused:{}", r.as_str()));
        tracing::info!(id = %self.env.id, domain = %self.domain, host = %t.req.host, addr = %addr, tls = %token, result = "host-refused", reason = %e.reason, "attempt");
        if e.result.is_some() {
            self.record(Record {
                host: &t.req.host,
                addr: Some(addr),
                report: &t.report,
                auth: Some(t.req.auth_label()),
                result: e.result,
                detail: &e.reason,
                sending_ip: e.local.map(|a| a.ip()),
            });
        }
    }

    /// The session is up but lacks REQUIRETLS, which the message demands.
    pub(super) fn requiretls_missing(&self, t: &Target, addr: SocketAddr, reason: &str) {
        tracing::info!(id = %self.env.id, domain = %self.domain, host = %t.req.host, addr = %addr, tls = %t.req.auth_label(), result = "requiretls-refused", reason, "attempt");
    }

    /// A TLS session was established and authenticated.
    pub(super) fn established(&self, t: &Target, addr: SocketAddr, local: Option<SocketAddr>) {
        self.record(Record {
            host: &t.req.host,
            addr: Some(addr),
            report: &t.report,
            auth: Some(t.req.auth_label()),
            result: None,
            detail: "TLS session established and authenticated",
            sending_ip: local.map(|a| a.ip()),
        });
    }

    /// Appends the outcome record and counts refusals.
    fn record(&self, r: Record<'_>) {
        let o = Outcome {
            time: now_unix(),
            queue_id: self.env.id.clone(),
            domain: self.domain.to_string(),
            mx_host: r.host.to_string(),
            addr: r.addr.map(|a| a.ip().to_string()),
            policy: r.report.policy,
            auth: r.auth,
            tls_ok: r.result.is_none(),
            result: r.result,
            report_mail: self.env.tls_report,
            detail: r.detail.to_string(),
            sending_ip: r.sending_ip.map(|i| i.to_string()),
            policy_strings: r.report.policy_strings.clone(),
            mx_patterns: r.report.mx_patterns.clone(),
            route: self.route.clone(),
        };
        if let Some(t) = r.result {
            metrics::counter!(names::REFUSALS, "result_type" => t.as_str()).increment(1);
            if t == ResultType::DnssecInvalid {
                metrics::counter!(names::DNSSEC_FAILURES).increment(1);
            }
        }
        if let Err(e) = self.ctx.outcomes.append(&o) {
            tracing::warn!(error = %e, "cannot record the outcome");
        }
    }
}
