//! One attempt at the recipients of one domain: gather → plan → execute.
//!
//! The facts are gathered (I/O), the plan is made by the pure
//! [`crate::policy::plan_domain`], and this module walks it: each host to
//! connect to, each of its addresses, until a transaction settles the
//! recipients. Everything that happens goes to the [`Observer`].

use std::net::{IpAddr, SocketAddr};

use super::attempt::Body;
use super::client::{Session, Timeouts};
use super::observer::Observer;
use super::transaction::transact;
use super::Context;
use crate::model::domain::Domain;
use crate::model::mechanism::TlsDemand;
use crate::model::rcpt::{AppliedPolicy, RcptResult};
use crate::model::status::EnhancedStatus;
use crate::policy::facts::DomainFacts;
use crate::policy::{DomainPlan, HostStep, SkipCause, Target};
use crate::spool::Envelope;

/// The recipients of one domain of one message, and what the message demands of TLS.
pub(super) struct Job<'a> {
    /// The message's envelope.
    pub env: &'a Envelope,
    /// The message itself, read when a connection is ready for it.
    pub message: &'a Body,
    /// The recipient domain.
    pub domain: &'a Domain,
    /// The recipients (indexes into the envelope) in that domain.
    pub idxs: &'a [usize],
    /// What the message demands of TLS.
    pub demand: TlsDemand,
}

impl Job<'_> {
    /// The same result for every recipient of the job.
    pub fn all(&self, result: RcptResult) -> Vec<(usize, RcptResult)> {
        self.idxs.iter().map(|&i| (i, result.clone())).collect()
    }
}

/// Why the hosts of a plan did not take the message.
#[derive(Default)]
struct Tally {
    reasons: Vec<String>,
    requiretls_refusals: usize,
}

/// Delivers to one domain: a pooled session if one is idle, else gather, plan and execute.
pub(super) async fn deliver_domain(ctx: &Context, job: &Job<'_>) -> Vec<(usize, RcptResult)> {
    let _permits = ctx.connection_permits(job.domain).await;
    if let Some(results) = try_pooled(ctx, job).await {
        return results;
    }
    let (facts, plan) = ctx.plan_for(job.domain, job.demand).await;
    let obs = Observer::new(ctx, job.env, job.domain);
    if let Some((result, words)) = &facts.sts.error {
        obs.sts_failed(*result, words);
    }
    execute(ctx, job, plan, &facts, &obs).await
}

/// Reuses a session kept from a recent delivery to the same domain. Only
/// ordinary mail does: REQUIRETLS and waived messages take the full path.
async fn try_pooled(ctx: &Context, job: &Job<'_>) -> Option<Vec<(usize, RcptResult)>> {
    if job.demand != TlsDemand::Standard {
        return None;
    }
    let (mut session, req, applied) = ctx.pool.take(job.domain)?;
    if !session.reset().await {
        return None;
    }
    transact(ctx, job, session, (&req, &applied), true).await
}

/// Carries a plan out.
async fn execute(
    ctx: &Context,
    job: &Job<'_>,
    plan: DomainPlan,
    facts: &DomainFacts,
    obs: &Observer<'_>,
) -> Vec<(usize, RcptResult)> {
    let (steps, untried) = match plan {
        DomainPlan::Fail { status, reason } => {
            obs.domain_settled("failed", &reason, None);
            return job.all(RcptResult::failed(status, reason));
        }
        DomainPlan::Defer { reason, result } => {
            obs.domain_settled("deferred", &reason, result);
            return job.all(RcptResult::Deferred { reason });
        }
        DomainPlan::Hosts { steps, untried, .. } => (steps, untried),
    };
    if let Some(waiver) = job.demand.waiver() {
        tracing::info!(id = %job.env.id, domain = %job.domain, waiver, "authentication waived: TLS without certificate checks for this message");
    }
    let mut tally = Tally::default();
    for step in &steps {
        match step {
            HostStep::Skip(s) => {
                obs.skipped(s);
                tally.requiretls_refusals += usize::from(s.cause == SkipCause::RequireTls);
                tally.reasons.push(s.reason.clone());
            }
            HostStep::Connect(t) => {
                let applied = applied_policy(t, facts);
                if let Some(results) = try_target(ctx, job, (t, &applied), obs, &mut tally).await {
                    return results;
                }
            }
        }
    }
    conclude(job, tally, untried)
}

/// Tries each address of a host until one takes the transaction.
async fn try_target(
    ctx: &Context,
    job: &Job<'_>,
    (t, applied): (&Target, &AppliedPolicy),
    obs: &Observer<'_>,
    tally: &mut Tally,
) -> Option<Vec<(usize, RcptResult)>> {
    if let Some(note) = &t.note {
        obs.note(t, note);
    }
    for &ip in &t.addrs {
        match try_address(ctx, job, (t, applied), ip, obs).await {
            Ok(results) => return Some(results),
            Err((reason, requiretls)) => {
                tally.requiretls_refusals += usize::from(requiretls);
                tally.reasons.push(reason);
            }
        }
    }
    None
}

/// One connection: open and authenticate the session, then the transaction.
/// The error is the reason, and whether it was for lack of REQUIRETLS.
async fn try_address(
    ctx: &Context,
    job: &Job<'_>,
    (t, applied): (&Target, &AppliedPolicy),
    ip: IpAddr,
    obs: &Observer<'_>,
) -> Result<Vec<(usize, RcptResult)>, (String, bool)> {
    let d = &ctx.config.delivery;
    let addr = SocketAddr::new(ip, d.port);
    let tls = if t.req.tls13_only {
        ctx.tls.config_tls13(&t.req.check)
    } else {
        ctx.tls.config(&t.req.check)
    };
    let timeouts = Timeouts {
        connect: d.connect_timeout.get(),
        command: d.command_timeout.get(),
        data: d.data_timeout.get(),
    };
    let helo = ctx.config.helo_name();
    let mut session = match Session::open(&t.req.host, addr, helo, tls, &t.req.sni, timeouts).await
    {
        Ok(s) => s,
        Err(e) => {
            obs.refused(t, addr, &e);
            return Err((e.reason, false));
        }
    };
    session.authenticated_by(t.req.mechanism);
    if job.demand == TlsDemand::RequireTls && !session.caps.requiretls {
        let reason = format!(
            "{}[{}] does not offer REQUIRETLS, which the sender asked for (RFC 8689)",
            t.req.host, ip
        );
        obs.requiretls_missing(t, addr, &reason);
        session.quit().await;
        return Err((reason, true));
    }
    obs.established(t, addr, session.local_addr);
    transact(ctx, job, session, (&t.req, applied), false)
        .await
        .ok_or_else(|| {
            let why = "dropped the connection during the transaction";
            (format!("{}[{ip}] {why}", t.req.host), false)
        })
}

/// The policy a receipt names for deliveries to `t`.
fn applied_policy(t: &Target, facts: &DomainFacts) -> AppliedPolicy {
    let mut a = AppliedPolicy::of(
        t.report.policy,
        &t.report.policy_strings,
        facts.sts.record_id.as_deref(),
        facts.local.as_ref().map(|l| l.source.as_str()),
    );
    a.waiver = t.req.waiver.map(str::to_string);
    a
}

/// No host took the message: defer with every host's reason, or fail with
/// 5.7.30 when REQUIRETLS alone stood in the way.
fn conclude(job: &Job<'_>, mut tally: Tally, untried: usize) -> Vec<(usize, RcptResult)> {
    let only_requiretls =
        tally.requiretls_refusals > 0 && tally.requiretls_refusals == tally.reasons.len();
    if untried > 0 {
        tally.reasons.push(format!(
            "{untried} more MX host(s) not tried (delivery.max_hosts_per_attempt)"
        ));
    }
    let reason = if tally.reasons.is_empty() {
        format!("no usable MX host for {}", job.domain)
    } else {
        tally.reasons.join("; ")
    };
    if job.demand == TlsDemand::RequireTls && only_requiretls {
        let words = format!(
            "REQUIRETLS support required, and no MX host of {} could provide it: {reason}",
            job.domain
        );
        return job.all(RcptResult::failed(EnhancedStatus::REQUIRETLS, words));
    }
    job.all(RcptResult::Deferred { reason })
}
