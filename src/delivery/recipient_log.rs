//! One log line per recipient and attempt, like Postfix's `to=<…>, status=sent`
//! lines: what a helpdesk searches for by recipient or Message-ID, and what a
//! log pipeline counts. The fields every result has are on every line (`-`
//! when unknown); a delivered line adds the address and the TLS session.

use super::Context;
use crate::model::domain::Domain;
use crate::model::rcpt::RcptResult;
use crate::reporting::receipts::Receipt;
use crate::spool::{now_unix, Envelope};

/// Appends and flushes a receipt for each recipient `results` delivered (on a
/// blocking thread: the flush waits for the disk). A receipt that cannot be
/// written is logged as an error; the mail is delivered all the same.
pub(super) async fn write_receipts(ctx: &Context, env: &Envelope, results: &[(usize, RcptResult)]) {
    let Some(log) = ctx.receipts.clone() else {
        return;
    };
    let now = now_unix();
    let batch: Vec<Receipt> = (results.iter())
        .filter_map(|(i, r)| receipt(env, *i, r, now))
        .collect();
    if batch.is_empty() {
        return;
    }
    let count = batch.len();
    let written = tokio::task::spawn_blocking(move || log.append(batch)).await;
    let error = match written {
        Ok(Ok(())) => return,
        Ok(Err(e)) => e.to_string(),
        Err(e) => e.to_string(),
    };
    tracing::error!(id = %env.id, count, error = %error, "cannot write delivery receipts");
}

/// The receipt of recipient `i` of `env`, when `result` delivered it.
fn receipt(env: &Envelope, i: usize, result: &RcptResult, now: i64) -> Option<Receipt> {
    let RcptResult::Delivered {
        host,
        mechanism,
        channel,
        ..
    } = result
    else {
        return None;
    };
    let rcpt = &env.recipients[i].address;
    Some(Receipt {
        time: now,
        queue_id: env.id.clone(),
        message_id: env.message_id.clone(),
        sender: env.sender.clone(),
        recipient: rcpt.clone(),
        domain: Domain::of_address(rcpt).map_or_else(|_| String::new(), |d| d.to_string()),
        mx_host: host.clone(),
        addr: channel.addr.map(|a| a.ip().to_string()),
        tls_version: channel.tls_version.clone(),
        cipher: channel.cipher.clone(),
        kx_group: channel.kx_group.clone(),
        mechanism: *mechanism,
        spki_sha256: channel.spki_sha256.clone(),
        policy: (*channel.policy).clone(),
        prev: String::new(),
    })
}

/// Logs what became of recipient `i` of `env` in attempt number `attempt`.
pub(super) fn log_recipient(env: &Envelope, i: usize, attempt: u32, result: &RcptResult) {
    let rcpt = &env.recipients[i].address;
    let domain = Domain::of_address(rcpt).map_or_else(|_| "-".to_string(), |d| d.to_string());
    let common = Common {
        message_id: env.message_id.as_deref().unwrap_or("-"),
        from: format!("<{}>", env.sender),
        to: format!("<{rcpt}>"),
        domain,
        delay: now_unix().saturating_sub(env.received_at),
    };
    match result {
        RcptResult::Delivered {
            host,
            mechanism,
            reply,
            channel,
        } => tracing::info!(
            id = %env.id, message_id = %common.message_id, from = %common.from, to = %common.to,
            domain = %common.domain, host = %host,
            addr = %channel.addr.map_or_else(|| "-".to_string(), |a| a.ip().to_string()),
            source = %channel.source.map_or_else(|| "-".to_string(), |a| a.ip().to_string()),
            tls_version = %channel.tls_version, cipher = %channel.cipher, mechanism = %mechanism.as_str(),
            result = "delivered", delay = common.delay, attempt, reply = %reply,
            "recipient delivered"
        ),
        RcptResult::Failed {
            status,
            reason,
            remote,
            ..
        } => tracing::info!(
            id = %env.id, message_id = %common.message_id, from = %common.from, to = %common.to,
            domain = %common.domain, host = %remote.as_deref().unwrap_or("-"),
            result = "failed", status = %status, delay = common.delay, attempt,
            reason = %reason, "recipient failed"
        ),
        RcptResult::Deferred { reason } => tracing::info!(
            id = %env.id, message_id = %common.message_id, from = %common.from, to = %common.to,
            domain = %common.domain, result = "deferred", delay = common.delay,
            attempt, reason = %reason, "recipient deferred"
        ),
    }
}

/// Logs the recipients that `before` listed as pending and that the queue
/// lifetime has just failed (after the attempt was counted).
pub(super) fn log_expired(env: &Envelope, before: &[usize]) {
    for &i in before {
        let r = &env.recipients[i];
        if r.state == crate::spool::RcptState::Failed {
            let result = RcptResult::Failed {
                status: crate::model::status::EnhancedStatus::EXPIRED,
                reason: r.last_reason.clone().unwrap_or_default(),
                remote: None,
                diagnostic: None,
            };
            log_recipient(env, i, env.attempts, &result);
        }
    }
}

/// The fields every recipient line has.
struct Common<'a> {
    message_id: &'a str,
    from: String,
    to: String,
    domain: String,
    delay: i64,
}
