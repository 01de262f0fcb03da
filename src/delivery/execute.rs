//! One attempt at the recipients of one domain: gather → plan → execute.
//!
//! The facts are gathered (I/O), the plan is made by the pure
//! [`crate::policy::plan_domain`], and this module walks it: each host to
//! connect to, each of its addresses, until a transaction settles the
//! recipients. Everything that happens goes to the [`Observer`].

use std::net::{IpAddr, SocketAddr};

use tokio::sync::OwnedSemaphorePermit;

use super::attempt::Body;
use super::client::{Dial, HostError, Session};
use super::observer::Observer;
use super::pool::{Lease, SessionKey};
use super::sites::{limits_for, Limits, Site, SiteSlot};
use super::transaction::transact;
use super::Context;
use crate::cluster::SlotLease;
use crate::model::domain::Domain;
use crate::model::mechanism::TlsDemand;
use crate::model::rcpt::{AppliedPolicy, RcptResult};
use crate::model::status::EnhancedStatus;
use crate::policy::facts::DomainFacts;
use crate::policy::local::LocalPolicy;
use crate::policy::overrides::{self, Replaced, Standing};
use crate::policy::{DomainPlan, HostStep, SkipCause, Target};
use crate::reporting::metrics as names;
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

/// Delivers to one domain: gather, plan, then each host in turn, over a
/// session kept from any domain's mail to the same place when one is idle.
pub(super) async fn deliver_domain(ctx: &Context, job: &Job<'_>) -> Vec<(usize, RcptResult)> {
    let (facts, plan) = ctx.plan_for(job.domain, job.demand).await;
    let obs = Observer::new(ctx, job.env, job.domain).routed(facts.route());
    let local = local_standing(job, &facts);
    if let (Some((result, words)), None) = (&facts.sts.error, local) {
        obs.sts_failed(*result, words);
    }
    execute(ctx, job, plan, &facts, &obs).await
}

/// Logs and counts how the domain's local entry stands (expired, ignored for
/// want of an override flag, overriding); returns the entry that decides, if any.
fn local_standing<'f>(job: &Job<'_>, facts: &'f DomainFacts) -> Option<&'f LocalPolicy> {
    let (id, domain) = (&job.env.id, job.domain);
    if let Some(p) = &facts.expired {
        let expires = p
            .exception
            .expires
            .map(|d| d.to_string())
            .unwrap_or_default();
        tracing::info!(%id, %domain, entry = %p.source, expires, "local policy entry expired: no longer applied, the domain gets DANE, MTA-STS or the floor again");
    }
    let count = |r: Replaced, result: &'static str| {
        for (on, published) in [(r.dane, "dane"), (r.mta_sts, "mta-sts")] {
            if on {
                metrics::counter!(names::LOCAL_OVERRIDES, "published" => published, "result" => result).increment(1);
            }
        }
    };
    match overrides::standing(facts) {
        Standing::Ignored { missing } => {
            let entry = facts
                .local
                .as_ref()
                .map(|p| p.source.as_str())
                .unwrap_or("");
            let flags = missing.flags().join(" and ");
            tracing::warn!(%id, %domain, entry, missing = %flags, "local policy entry ignored: the domain publishes a policy the entry would replace without saying so; its published policy applies");
            count(missing, "ignored");
        }
        Standing::Applies { replaced } if replaced.any() => count(replaced, "applied"),
        _ => {}
    }
    overrides::effective_local(facts)
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
    let site = Site::of(&steps);
    let at = SiteUse {
        limits: limits_for(&ctx.config.delivery, job.domain, &site),
        site: &site,
    };
    let _slots = match take_slots(ctx, job, &at).await {
        Ok(slots) => slots,
        Err(paused) => return paused,
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
                let target = (t, &applied);
                if let Some(results) = try_target(ctx, job, target, obs, &mut tally, &at).await {
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
    at: &SiteUse<'_>,
) -> Option<Vec<(usize, RcptResult)>> {
    if let Some(note) = &t.note {
        obs.note(t, note);
    }
    for &ip in &t.addrs {
        match try_address(ctx, (job, obs, at), (t, applied), ip).await {
            Ok(results) => return Some(results),
            Err((reason, requiretls)) => {
                tally.requiretls_refusals += usize::from(requiretls);
                tally.reasons.push(reason);
            }
        }
    }
    None
}

/// The site a plan's hosts make up, and the limits that hold there for this domain.
pub(super) struct SiteUse<'a> {
    /// The site.
    pub site: &'a Site,
    /// Its limits for this domain.
    pub limits: Limits,
}

/// Everything one domain's attempt holds while it may open connections.
pub(super) struct Slots {
    _domain: OwnedSemaphorePermit,
    _site: SiteSlot,
    _global: OwnedSemaphorePermit,
    /// In a fleet: the domain's and the site's fleet-wide slots (`[cluster]`).
    _fleet: (Option<SlotLease>, Option<SlotLease>),
}

/// The domain's permit, the site's slot and a global one, in a fleet the
/// fleet-wide slots of both (always domain before site, on every node); the
/// recipients' deferral while the site backs off.
async fn take_slots(
    ctx: &Context,
    job: &Job<'_>,
    at: &SiteUse<'_>,
) -> Result<Slots, Vec<(usize, RcptResult)>> {
    let domain = ctx.domain_permit(job.domain).await;
    let per_domain = ctx.config.delivery.max_connections_per_domain;
    let fleet_domain = ctx
        .fleet_slot(format!("domain:{}", job.domain), per_domain)
        .await;
    let site = ctx.sites.acquire(at.site, &at.limits).await.map_err(|p| {
        let reason = format!(
            "the site of {} ({}) answered with repeated temporary failures; \
             tlsrelay backs off (level {}) for {} s more",
            job.domain,
            at.site,
            p.level,
            p.remaining.as_secs().max(1)
        );
        job.all(RcptResult::Deferred { reason })
    })?;
    let fleet_site = ctx
        .fleet_slot(format!("site:{}", at.site), at.limits.max_connections)
        .await;
    let global = ctx.connections.clone().acquire_owned().await;
    Ok(Slots {
        _domain: domain,
        _site: site,
        _global: global.expect("semaphore never closed"),
        _fleet: (fleet_domain, fleet_site),
    })
}

/// One connection: an idle session to the same place under the same proof, or
/// a new one opened and authenticated; then the transaction. The error is the
/// reason, and whether it was for lack of REQUIRETLS.
async fn try_address(
    ctx: &Context,
    (job, obs, at): (&Job<'_>, &Observer<'_>, &SiteUse<'_>),
    (t, applied): (&Target, &AppliedPolicy),
    ip: IpAddr,
) -> Result<Vec<(usize, RcptResult)>, (String, bool)> {
    let addr = SocketAddr::new(ip, t.port);
    let key = SessionKey::of(&t.req, addr, t.egress.source_for(ip));
    let (mut session, lease) = match reuse(ctx, job, &key).await {
        Some((session, messages, last)) => {
            // The domain's TLS reports count this session as one of its own.
            if &last != job.domain {
                obs.established(t, addr, session.local_addr);
            }
            (session, Lease::reused(key, messages, &at.limits))
        }
        None => {
            let session = open(ctx, t, addr, &key).await.map_err(|e| {
                obs.refused(t, addr, &e);
                let tempfail = e
                    .reply
                    .as_ref()
                    .is_some_and(|r| (400..500).contains(&r.code));
                ctx.sites.answered(at.site, tempfail.then_some(false));
                (e.reason, false)
            })?;
            obs.established(t, addr, session.local_addr);
            (session, Lease::new(key, &at.limits))
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
    tokio::time::sleep(ctx.sites.rate_wait(at.site, at.limits.rate)).await;
    let results = transact(ctx, job, session, (&t.req, applied), lease).await;
    ctx.sites.answered(at.site, site_signal(results.as_deref()));
    results.ok_or_else(|| {
        let why = "dropped the connection during the transaction";
        (format!("{}[{ip}] {why}", t.req.host), false)
    })
}

/// An idle session with exactly this key, still answering RSET.
async fn reuse(ctx: &Context, job: &Job<'_>, key: &SessionKey) -> Option<(Session, usize, Domain)> {
    let (mut session, messages, last) = ctx.pool.take(key)?;
    if !session.reset().await {
        tracing::debug!(id = %job.env.id, host = %key.host, addr = %key.addr, "idle session did not answer RSET; opening a new one");
        return None;
    }
    Some((session, messages, last))
}

/// Opens and authenticates a new session for `t` at `addr`.
async fn open(
    ctx: &Context,
    t: &Target,
    addr: SocketAddr,
    key: &SessionKey,
) -> Result<Session, HostError> {
    let d = &ctx.config.delivery;
    let tls = if t.req.tls13_only {
        ctx.tls.config_tls13(&t.req.check)
    } else {
        ctx.tls.config(&t.req.check)
    };
    let dial = Dial {
        source: key.source,
        connect: d.connect_timeout.get(),
        command: d.command_timeout.get(),
        data: d.data_timeout.get(),
    };
    let helo = ctx.config.helo_name();
    Session::open(&t.req.host, addr, helo, tls, &t.req.sni, dial).await
}

/// What a transaction says about the site: a delivery or a permanent answer
/// means it is up, only temporary failures count towards a back-off, a broken
/// session says nothing.
fn site_signal(results: Option<&[(usize, RcptResult)]>) -> Option<bool> {
    let results = results?;
    let answered = results.iter().any(|(_, r)| match r {
        RcptResult::Delivered { .. } => true,
        RcptResult::Failed { remote, .. } => remote.is_some(),
        RcptResult::Deferred { .. } => false,
    });
    let deferred = results
        .iter()
        .any(|(_, r)| matches!(r, RcptResult::Deferred { .. }));
    match (answered, deferred) {
        (true, _) => Some(true),
        (false, true) => Some(false),
        (false, false) => None,
    }
}

/// The policy a receipt names for deliveries to `t`.
fn applied_policy(t: &Target, facts: &DomainFacts) -> AppliedPolicy {
    let mut a = AppliedPolicy::of(
        t.report.policy,
        &t.report.policy_strings,
        facts.sts.record_id.as_deref(),
        overrides::effective_local(facts).map(|l| l.source.as_str()),
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
