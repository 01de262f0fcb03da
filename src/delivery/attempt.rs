//! One attempt at every pending recipient of a message: its domains run
//! concurrently, each domain's result is written to the spool when known, then
//! expiry, DSNs and the next attempt time.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::task::JoinSet;

use super::execute::{deliver_domain, Job};
use super::Context;
use crate::model::domain::Domain;
use crate::model::mechanism::TlsDemand;
use crate::model::rcpt::RcptResult;
use crate::model::status::EnhancedStatus;
use crate::protocol::dsn;
use crate::reporting::metrics as names;
use crate::spool::{now_unix, Envelope, RcptState};

/// One attempt at a message. Returns the envelope to keep queued, or None when
/// the message is finished and removed.
pub(super) async fn attempt(ctx: Arc<Context>, mut env: Envelope) -> Option<Envelope> {
    let spool = ctx.spool.clone();
    let id = env.id.clone();
    let message = match tokio::task::spawn_blocking(move || spool.read_message(&id)).await {
        Ok(Ok(m)) => Arc::new(m),
        other => {
            tracing::error!(id = %env.id, error = ?other.err(), "cannot read the queued message; will retry");
            env.next_attempt = now_unix() + 60;
            return Some(env);
        }
    };
    let mut failed = settle_invalid_domains(&mut env);
    let mut domains = JoinSet::new();
    for (domain, idxs) in pending_by_domain(&env) {
        let (ctx, env, message) = (ctx.clone(), env.clone(), message.clone());
        domains.spawn(async move {
            let demand = demand_of(&ctx, &env);
            let job = Job {
                env: &env,
                message: &message,
                domain: &domain,
                idxs: &idxs,
                demand,
            };
            deliver_domain(&ctx, &job).await
        });
    }
    while let Some(done) = domains.join_next().await {
        let Ok(results) = done else { continue };
        for (i, result) in results {
            failed.extend(apply(&mut env, i, &result));
        }
        if !persist(&ctx, &env).await {
            return None;
        }
    }
    finish_attempt(&ctx, env, &message, failed).await
}

/// What the message demands of TLS, with the operator's setting for `TLS-Required: No`.
fn demand_of(ctx: &Context, env: &Envelope) -> TlsDemand {
    let honor = ctx.config.delivery.honor_tls_required_no;
    TlsDemand::of(env.requiretls, env.tls_report, env.tls_required_no, honor)
}

/// Pending recipients grouped by their (normalised) domain.
fn pending_by_domain(env: &Envelope) -> HashMap<Domain, Vec<usize>> {
    let mut by_domain: HashMap<Domain, Vec<usize>> = HashMap::new();
    for (i, r) in env.recipients.iter().enumerate() {
        if r.state != RcptState::Queued {
            continue;
        }
        if let Ok(d) = Domain::of_address(&r.address) {
            by_domain.entry(d).or_default().push(i);
        }
    }
    by_domain
}

/// Fails recipients whose domain is no domain name at all: no retry can help.
fn settle_invalid_domains(env: &mut Envelope) -> Vec<dsn::RecipientStatus> {
    let invalid: Vec<(usize, String)> = (env.recipients.iter().enumerate())
        .filter(|(_, r)| r.state == RcptState::Queued)
        .filter_map(|(i, r)| {
            Domain::of_address(&r.address)
                .err()
                .map(|e| (i, e.to_string()))
        })
        .collect();
    let mut failed = Vec::new();
    for (i, why) in invalid {
        let result = RcptResult::failed(EnhancedStatus::BAD_DESTINATION_SYSTEM, why);
        failed.extend(apply(env, i, &result));
    }
    failed
}

/// Records one recipient's result, and counts it; the DSN line when it failed.
fn apply(env: &mut Envelope, i: usize, result: &RcptResult) -> Option<dsn::RecipientStatus> {
    let (outcome, auth) = match result {
        RcptResult::Delivered { mechanism, .. } => ("delivered", mechanism.as_str()),
        RcptResult::Failed { .. } => ("failed", "none"),
        RcptResult::Deferred { .. } => ("deferred", "none"),
    };
    metrics::counter!(names::DELIVERIES, "result" => outcome, "auth" => auth).increment(1);
    env.apply(i, result)
}

/// After the domains: expiry, failure and delay notices, next attempt, removal.
async fn finish_attempt(
    ctx: &Context,
    mut env: Envelope,
    message: &[u8],
    mut failed: Vec<dsn::RecipientStatus>,
) -> Option<Envelope> {
    env.attempts += 1;
    let now = now_unix();
    let d = &ctx.config.delivery;
    failed.extend(env.expire(now, d.queue_lifetime.get()));
    if !failed.is_empty() {
        queue_dsn(ctx, &env, message, dsn::Kind::Failure, &failed).await;
    }
    let schedule: Vec<std::time::Duration> = d.retry_schedule.iter().map(|s| s.get()).collect();
    env.schedule_next(now, &schedule);
    let delayed = env.delay_notice_due(now, d.delay_notice_after.get());
    if !delayed.is_empty() {
        queue_dsn(ctx, &env, message, dsn::Kind::Delay, &delayed).await;
    }
    if env.is_finished() {
        let (spool, id) = (ctx.spool.clone(), env.id.clone());
        let _ = tokio::task::spawn_blocking(move || spool.remove(&id)).await;
        tracing::info!(id = %env.id, "finished; removed from the queue");
        return None;
    }
    persist(ctx, &env).await.then_some(env)
}

/// Writes the envelope; false when the message vanished (deleted by the operator).
async fn persist(ctx: &Context, env: &Envelope) -> bool {
    let (spool, copy) = (ctx.spool.clone(), env.clone());
    match tokio::task::spawn_blocking(move || spool.update(&copy)).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::info!(id = %env.id, "message was removed from the queue during the attempt");
            false
        }
        other => {
            tracing::error!(id = %env.id, error = ?other, "cannot update the envelope");
            true
        }
    }
}

/// Stores a DSN to the envelope sender (never for the null sender) and queues it.
async fn queue_dsn(
    ctx: &Context,
    env: &Envelope,
    message: &[u8],
    kind: dsn::Kind,
    rcpts: &[dsn::RecipientStatus],
) {
    if env.sender.is_empty() {
        return;
    }
    let hostname = &ctx.config.server.hostname;
    let retry_until = env.retry_until(ctx.config.delivery.queue_lifetime.get());
    let body = dsn::build(hostname, env, message, kind, rcpts, retry_until);
    let notice = dsn::notice_envelope(env, hostname, body.len() as u64);
    let (spool, stored) = (ctx.spool.clone(), notice.clone());
    match tokio::task::spawn_blocking(move || spool.store(&stored, &body)).await {
        Ok(Ok(())) => {
            tracing::info!(id = %env.id, dsn = %notice.id, kind = ?kind, to = %env.sender, recipients = rcpts.len(), "delivery status notification queued");
            let _ = ctx.requeue.send(notice);
        }
        other => tracing::error!(id = %env.id, error = ?other, "cannot queue the DSN"),
    }
}
