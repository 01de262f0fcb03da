//! One attempt at every pending recipient of a message: its domains run
//! concurrently, each domain's result is written to the spool when known, then
//! expiry, DSNs and the next attempt time.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::task::JoinSet;

use super::execute::{deliver_domain, Job};
use super::Context;
use crate::config::HumanDuration;
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

/// Records one recipient's result; the DSN line when it failed.
fn apply(env: &mut Envelope, i: usize, result: &RcptResult) -> Option<dsn::RecipientStatus> {
    let r = &mut env.recipients[i];
    match result {
        RcptResult::Delivered {
            host,
            mechanism,
            reply,
        } => {
            metrics::counter!(names::DELIVERIES, "result" => "delivered", "auth" => mechanism.as_str()).increment(1);
            r.state = RcptState::Delivered;
            r.status = Some(reply.clone());
            r.last_reason = Some(format!("delivered to {host}"));
            None
        }
        RcptResult::Failed {
            status,
            reason,
            remote,
            diagnostic,
        } => {
            metrics::counter!(names::DELIVERIES, "result" => "failed", "auth" => "none")
                .increment(1);
            Some(fail(
                env,
                i,
                *status,
                reason.clone(),
                remote.clone(),
                diagnostic.clone(),
            ))
        }
        RcptResult::Deferred { reason } => {
            metrics::counter!(names::DELIVERIES, "result" => "deferred", "auth" => "none")
                .increment(1);
            r.last_reason = Some(reason.clone());
            None
        }
    }
}

/// Fails one recipient; the line for its DSN.
fn fail(
    env: &mut Envelope,
    i: usize,
    status: EnhancedStatus,
    reason: String,
    remote: Option<String>,
    diagnostic: Option<String>,
) -> dsn::RecipientStatus {
    let r = &mut env.recipients[i];
    r.state = RcptState::Failed;
    r.status = Some(status.to_string());
    r.last_reason = Some(reason.clone());
    dsn::RecipientStatus {
        address: r.address.clone(),
        orcpt: r.orcpt.clone(),
        status: status.to_string(),
        remote_mta: remote,
        diagnostic,
        reason,
    }
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
    failed.extend(expire(&mut env, now, d.queue_lifetime));
    failed.retain(|s| {
        (env.recipients.iter())
            .find(|r| r.address == s.address)
            .is_some_and(|r| dsn::wanted(&r.notify, dsn::Kind::Failure))
    });
    if !failed.is_empty() {
        queue_dsn(ctx, &env, message, dsn::Kind::Failure, &failed).await;
    }
    let step = d.retry_schedule[(env.attempts as usize - 1).min(d.retry_schedule.len() - 1)];
    env.next_attempt = now + step.get().as_secs() as i64;
    let delayed = delay_notice_due(&mut env, now, d.delay_notice_after.get());
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

/// Past the queue lifetime, every pending recipient fails with 5.4.7.
fn expire(env: &mut Envelope, now: i64, lifetime: HumanDuration) -> Vec<dsn::RecipientStatus> {
    if now - env.received_at < lifetime.get().as_secs() as i64 {
        return vec![];
    }
    let pending: Vec<usize> = (0..env.recipients.len())
        .filter(|&i| env.recipients[i].state == RcptState::Queued)
        .collect();
    let attempts = env.attempts;
    pending
        .into_iter()
        .map(|i| {
            let last = env.recipients[i]
                .last_reason
                .as_deref()
                .unwrap_or("no attempt completed");
            let reason = format!(
                "gave up after {lifetime} in the queue ({attempts} attempts); last attempt: {last}"
            );
            fail(env, i, EnhancedStatus::EXPIRED, reason, None, None)
        })
        .collect()
}

/// The 4.4.7 lines of a delay notice when one is due; marks it sent.
fn delay_notice_due(
    env: &mut Envelope,
    now: i64,
    after: std::time::Duration,
) -> Vec<dsn::RecipientStatus> {
    let after = after.as_secs() as i64;
    if env.is_finished() || env.delay_notice_sent || after == 0 || now - env.received_at < after {
        return vec![];
    }
    env.delay_notice_sent = true;
    env.pending()
        .filter(|r| dsn::wanted(&r.notify, dsn::Kind::Delay))
        .map(|r| dsn::RecipientStatus {
            address: r.address.clone(),
            orcpt: r.orcpt.clone(),
            status: EnhancedStatus::DELAYED.to_string(),
            remote_mta: None,
            diagnostic: None,
            reason: r.last_reason.clone().unwrap_or_default(),
        })
        .collect()
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
    let body = dsn::build(hostname, env, message, kind, rcpts);
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
