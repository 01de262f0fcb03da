//! `tlsrelay queue …`: what the operator sees of the spool.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::model::status::EnhancedStatus;
use crate::model::visible::{visible, visible_lines};
use crate::protocol::dsn;
use crate::spool::{now_unix, Envelope, RcptState, Spool, SpoolError};

/// Why a `queue` command failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The spool directory has no queue: wrong directory or configuration.
    #[error("no spool at {} (set [spool] dir, or run from the directory tlsrelay serve runs in)", .0.display())]
    NoSpool(PathBuf),
    /// The spool directory exists but cannot be opened.
    #[error("{}: {err}", dir.display())]
    Open {
        /// The spool directory.
        dir: PathBuf,
        /// Why it cannot be opened.
        err: SpoolError,
    },
    /// Reading or changing the queue failed.
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// Root would leave files the server's user cannot read.
    #[error("{} belongs to uid {uid}; run this as that user (e.g. `sudo -u` the service user), or start the server so the command goes through it", .dir.display())]
    NotOwner {
        /// The spool directory.
        dir: PathBuf,
        /// Its owner.
        uid: u32,
    },
    /// The JSON rendering failed.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

/// Opens the spool at `dir` for the operator when no server holds it,
/// refusing a directory that is no spool (so that a wrong working directory
/// does not create an empty one) and, for root, a spool another user owns.
pub fn open_spool(dir: &Path) -> Result<Spool, QueueError> {
    let is_spool = ["VERSION", "segments", "queue"]
        .iter()
        .any(|p| dir.join(p).exists());
    if !is_spool {
        return Err(QueueError::NoSpool(dir.to_path_buf()));
    }
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(dir).map(|m| m.uid()).unwrap_or(0);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 && owner != 0 && !crate::spool::is_locked(dir) {
        return Err(QueueError::NotOwner {
            dir: dir.to_path_buf(),
            uid: owner,
        });
    }
    Spool::open(dir).map_err(|err| QueueError::Open {
        dir: dir.to_path_buf(),
        err,
    })
}

/// One row of `queue list`, also its JSON form.
pub fn summary(env: &Envelope) -> serde_json::Value {
    let pending: Vec<&str> = env.pending().map(|r| r.address.as_str()).collect();
    let last_reason = env
        .recipients
        .iter()
        .filter_map(|r| r.last_reason.as_deref())
        .next_back();
    let state = if pending.is_empty() {
        "finished"
    } else if env.attempts == 0 {
        "new"
    } else {
        "deferred"
    };
    json!({
        "id": env.id,
        "sender": env.sender,
        "recipients": env.recipients.iter().map(|r| &r.address).collect::<Vec<_>>(),
        "pending": pending,
        "size": env.size,
        "age_seconds": (now_unix() - env.received_at).max(0),
        "state": state,
        "attempts": env.attempts,
        "last_reason": last_reason,
        "next_attempt": env.next_attempt,
        "requiretls": env.requiretls,
    })
}

/// `queue list`: a table for people or a JSON array for scripts.
pub fn list(spool: &Spool, as_json: bool) -> Result<String, QueueError> {
    let envs = spool.list();
    if as_json {
        let rows: Vec<_> = envs.iter().map(summary).collect();
        return Ok(serde_json::to_string_pretty(&rows)? + "\n");
    }
    let mut out = String::new();
    if envs.is_empty() {
        out.push_str("queue is empty\n");
        return Ok(out);
    }
    let _ = writeln!(
        out,
        "{:<16}  {:>8}  {:>7}  {:<8}  {:<19}  sender / recipients / last reason",
        "id", "size", "age", "state", "next attempt"
    );
    for env in &envs {
        let s = summary(env);
        let next = chrono::DateTime::from_timestamp(env.next_attempt, 0)
            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<16}  {:>8}  {:>7}  {:<8}  {:<19}  <{}>",
            env.id,
            env.size,
            human_age(s["age_seconds"].as_i64().unwrap_or(0)),
            s["state"].as_str().unwrap_or(""),
            next,
            visible(&env.sender)
        );
        for r in &env.recipients {
            let state = match r.state {
                RcptState::Queued => "queued",
                RcptState::Delivered => "delivered",
                RcptState::Failed => "failed",
            };
            let _ = writeln!(out, "{:>66}  -> <{}> {state}", "", visible(&r.address));
            if let Some(reason) = &r.last_reason {
                let _ = writeln!(out, "{:>66}     {}", "", visible(reason));
            }
        }
    }
    let _ = writeln!(out, "{} message(s)", envs.len());
    Ok(out)
}

/// `queue show ID`: the envelope and the message headers.
pub fn show(spool: &Spool, id: &str, as_json: bool) -> Result<String, QueueError> {
    let env = spool.load(id)?;
    let msg = spool.read_message(id)?;
    let end = find_header_end(&msg);
    let headers = String::from_utf8_lossy(&msg[..end]).into_owned();
    if as_json {
        let v = json!({ "envelope": env, "headers": headers });
        return Ok(serde_json::to_string_pretty(&v)? + "\n");
    }
    let mut out = String::new();
    let _ = writeln!(out, "id:          {}", env.id);
    let _ = writeln!(
        out,
        "received:    {} from {} (helo {}){}",
        chrono::DateTime::from_timestamp(env.received_at, 0)
            .map(|t| t.to_rfc3339())
            .unwrap_or_default(),
        visible(&env.client.addr),
        visible(&env.client.helo),
        env.client
            .tls
            .as_ref()
            .map(|t| format!(" over {}", visible(t)))
            .unwrap_or_default()
    );
    let _ = writeln!(out, "sender:      <{}>", visible(&env.sender));
    let _ = writeln!(
        out,
        "size:        {} bytes, body {:?}, smtputf8 {}, requiretls {}",
        env.size, env.body, env.smtputf8, env.requiretls
    );
    if env.ret.is_some() || env.envid.is_some() {
        // The shape of `{:?}` (which scripts may read), the value made visible.
        let envid =
            (env.envid.as_deref()).map_or("None".into(), |e| format!("Some({:?})", visible(e)));
        let _ = writeln!(out, "dsn:         ret {:?}, envid {envid}", env.ret);
    }
    let _ = writeln!(out, "attempts:    {}", env.attempts);
    for r in &env.recipients {
        let _ = writeln!(
            out,
            "recipient:   <{}> {:?}{}{}",
            visible(&r.address),
            r.state,
            if r.notify.is_empty() {
                String::new()
            } else {
                format!(" notify={}", r.notify)
            },
            r.orcpt
                .as_ref()
                .map(|o| format!(" orcpt={}", visible(o)))
                .unwrap_or_default()
        );
        if let Some(reason) = &r.last_reason {
            let _ = writeln!(out, "             {}", visible(reason));
        }
    }
    let _ = writeln!(out, "\n{}", visible_lines(&headers));
    Ok(out)
}

fn find_header_end(msg: &[u8]) -> usize {
    msg.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 2)
        .unwrap_or(msg.len())
}

fn human_age(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// `queue retry [ID]`: makes one (or every) message due now.
pub fn retry(spool: &Spool, id: Option<&str>) -> Result<String, QueueError> {
    let envs = match id {
        Some(id) => vec![spool.load(id)?],
        None => spool.list(),
    };
    let now = now_unix();
    let mut n = 0;
    for mut env in envs {
        if env.next_attempt > now {
            env.next_attempt = now;
            spool.update(&env)?;
        }
        n += 1;
    }
    Ok(format!("{n} message(s) due for delivery now\n"))
}

/// `queue delete ID`: removes a message silently.
pub fn delete(spool: &Spool, id: &str) -> Result<String, QueueError> {
    spool.load(id)?;
    spool.remove(id)?;
    Ok(format!("{id} deleted\n"))
}

/// `queue bounce ID`: fails the pending recipients and queues a DSN to the
/// sender for those whose NOTIFY asks for one.
pub fn bounce(spool: &Spool, id: &str, hostname: &str) -> Result<String, QueueError> {
    let mut env = spool.load(id)?;
    let message = spool.read_message(id)?;
    let pending: Vec<usize> = (0..env.recipients.len())
        .filter(|&i| env.recipients[i].state == RcptState::Queued)
        .collect();
    // Failure notices an attempt owed but could not store (a full disk) go out
    // with this one; a delay notice is moot once the message bounces.
    let mut lines: Vec<_> = std::mem::take(&mut env.pending_dsns)
        .into_iter()
        .filter(|p| p.kind == dsn::Kind::Failure)
        .flat_map(|p| p.recipients)
        .collect();
    for &i in &pending {
        let reason = format!(
            "returned by the operator of {hostname}; last attempt: {}",
            env.recipients[i]
                .last_reason
                .as_deref()
                .unwrap_or("none yet")
        );
        lines.extend(env.fail(i, EnhancedStatus::PERMANENT, reason, None, None));
    }
    let n = pending.len();
    let dsn_id = if env.sender.is_empty() || lines.is_empty() {
        None
    } else {
        // Retries stop now.
        let body = dsn::build(
            hostname,
            &env,
            &message,
            dsn::Kind::Failure,
            &lines,
            now_unix(),
        );
        let notice = dsn::notice_envelope(&env, hostname, body.len() as u64);
        spool.store(&notice, &body)?;
        Some(notice.id)
    };
    spool.remove(id)?;
    Ok(match dsn_id {
        Some(d) => format!(
            "{id}: {n} recipient(s) bounced; DSN {d} queued to <{}>\n",
            env.sender
        ),
        None if env.sender.is_empty() => {
            format!("{id}: {n} recipient(s) bounced; no DSN (null sender)\n")
        }
        None => format!("{id}: {n} recipient(s) bounced; no DSN (no NOTIFY asks for one)\n"),
    })
}
