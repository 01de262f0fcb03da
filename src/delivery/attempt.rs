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

/// What an attempt leaves for the scheduler.
pub(super) enum AfterAttempt {
    /// The message is finished and removed (or was removed meanwhile).
    Removed,
    /// The message stays queued; the spool holds this state.
    Queued(Envelope),
    /// The message stays queued, but the spool could not be written: this state,
    /// its next attempt time included, exists only in memory until it can be.
    Unsaved(Envelope),
}

/// One attempt at a message.
pub(super) async fn attempt(ctx: Arc<Context>, mut env: Envelope) -> AfterAttempt {
    let message = Arc::new(Body::new(ctx.spool.clone(), env.id.clone()));
    let failed = settle_invalid_domains(&mut env);
    env.owe(dsn::Kind::Failure, failed);
    let mut domains = JoinSet::new();
    for (domain, idxs) in pending_by_domain(&env) {
        if ctx.is_suspended(&domain) {
            // Its recipients wait, untouched, for the end of the suspension.
            continue;
        }
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
        // Receipts are flushed before the spool says "delivered" (see reporting::receipts).
        super::recipient_log::write_receipts(&ctx, &env, &results).await;
        let mut failed = Vec::new();
        for (i, result) in results {
            failed.extend(apply(&mut env, i, &result));
        }
        // The failure and the notice it owes are written together, so a crash
        // before the notice is stored cannot lose it.
        env.owe(dsn::Kind::Failure, failed);
        if persist(&ctx, &env).await == Persisted::Gone {
            return AfterAttempt::Removed;
        }
    }
    finish_attempt(&ctx, env, &message).await
}

/// A queued message's bytes, read from the spool the first time a connection
/// is ready to send them (or a notice needs them), then shared by the
/// attempt's domains.
pub(super) struct Body {
    spool: crate::spool::Spool,
    id: String,
    bytes: tokio::sync::OnceCell<Arc<Vec<u8>>>,
}

impl Body {
    fn new(spool: crate::spool::Spool, id: String) -> Body {
        Body {
            spool,
            id,
            bytes: tokio::sync::OnceCell::new(),
        }
    }

    /// The bytes, read once.
    pub(super) async fn get(&self) -> Result<Arc<Vec<u8>>, String> {
        let read = || async {
            let (spool, id) = (self.spool.clone(), self.id.clone());
            match tokio::task::spawn_blocking(move || spool.read_message(&id)).await {
                Ok(Ok(m)) => Ok(Arc::new(m)),
                Ok(Err(e)) => Err(e.to_string()),
                Err(e) => Err(e.to_string()),
            }
        };
        self.bytes.get_or_try_init(read).await.cloned()
    }
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
    super::recipient_log::log_recipient(env, i, env.attempts + 1, result);
    if outcome != "deferred" {
        crate::reporting::metrics::queue_time(outcome, now_unix() - env.received_at);
    }
    env.apply(i, result)
}

/// After the domains: expiry, failure and delay notices, next attempt, removal.
/// The message leaves the queue only once every notice it owes is stored.
async fn finish_attempt(ctx: &Context, mut env: Envelope, message: &Body) -> AfterAttempt {
    env.attempts += 1;
    let now = now_unix();
    let d = &ctx.config.delivery;
    let pending: Vec<usize> = (0..env.recipients.len())
        .filter(|&i| env.recipients[i].state == RcptState::Queued)
        .collect();
    let expired = env.expire(now, d.queue_lifetime.get());
    super::recipient_log::log_expired(&env, &pending);
    // Every recipient the lifetime failed, not only those whose NOTIFY asks for a DSN.
    for &i in &pending {
        if env.recipients[i].state == RcptState::Failed {
            crate::reporting::metrics::queue_time("expired", now - env.received_at);
        }
    }
    env.owe(dsn::Kind::Failure, expired);
    let schedule: Vec<std::time::Duration> = d.retry_schedule.iter().map(|s| s.get()).collect();
    env.schedule_next(now, &schedule);
    let delayed = env.delay_notice_due(now, d.delay_notice_after.get());
    env.owe(dsn::Kind::Delay, delayed);
    store_owed(ctx, &mut env, message).await;
    if env.is_done() {
        let (spool, id) = (ctx.spool.clone(), env.id.clone());
        match tokio::task::spawn_blocking(move || spool.remove(&id)).await {
            Ok(Ok(())) => {
                tracing::info!(id = %env.id, "finished; removed from the queue");
                return AfterAttempt::Removed;
            }
            other => {
                tracing::error!(id = %env.id, error = ?other, "cannot remove the finished message; will retry")
            }
        }
    }
    match persist(ctx, &env).await {
        Persisted::Saved => AfterAttempt::Queued(env),
        Persisted::Gone => AfterAttempt::Removed,
        Persisted::Failed => AfterAttempt::Unsaved(env),
    }
}

/// What became of an envelope update.
#[derive(Debug, PartialEq, Eq)]
enum Persisted {
    /// Written and durable.
    Saved,
    /// The message is no longer queued (deleted by the operator).
    Gone,
    /// The spool refused (a full disk): the state is only in memory.
    Failed,
}

/// Writes the envelope.
async fn persist(ctx: &Context, env: &Envelope) -> Persisted {
    let (spool, copy) = (ctx.spool.clone(), env.clone());
    match tokio::task::spawn_blocking(move || spool.update(&copy)).await {
        Ok(Ok(())) => Persisted::Saved,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::info!(id = %env.id, "message was removed from the queue during the attempt");
            Persisted::Gone
        }
        other => {
            tracing::error!(id = %env.id, error = ?other, "cannot update the envelope; the message stays queued");
            Persisted::Failed
        }
    }
}

/// Stores every notice the envelope owes; one that cannot be stored stays owed,
/// and with it the message stays queued, for the next attempt.
async fn store_owed(ctx: &Context, env: &mut Envelope, body: &Body) {
    if env.pending_dsns.is_empty() {
        return;
    }
    let message = match body.get().await {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(id = %env.id, error = %e, "cannot read the queued message for its notices; they stay owed");
            return;
        }
    };
    let message = message.as_slice();
    for owed in std::mem::take(&mut env.pending_dsns) {
        if !queue_dsn(ctx, env, message, owed.kind, &owed.recipients).await {
            env.pending_dsns.push(owed);
        }
    }
}

/// Stores a DSN to the envelope sender (never for the null sender) and queues
/// it; false when it could not be stored.
async fn queue_dsn(
    ctx: &Context,
    env: &Envelope,
    message: &[u8],
    kind: dsn::Kind,
    rcpts: &[dsn::RecipientStatus],
) -> bool {
    if env.sender.is_empty() {
        return true;
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
            true
        }
        other => {
            tracing::error!(id = %env.id, error = ?other, "cannot queue the DSN; the message stays queued until it can be");
            false
        }
    }
}
