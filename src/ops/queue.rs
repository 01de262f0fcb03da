//! `tlsrelay queue …`: what the operator sees of the spool.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::delivery::suspend::{SuspendError, Suspensions};
use crate::model::domain::Domain;
use crate::model::status::EnhancedStatus;
use crate::model::visible::{visible, visible_lines};
use crate::ops::filter::Filter;
use crate::ops::summary;
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
    /// A bulk command matched more than one message without `--yes`; nothing changed.
    #[error("{n} messages match; add --yes to {verb} them")]
    Confirm {
        /// How many match.
        n: usize,
        /// What the command would do.
        verb: &'static str,
    },
    /// The suspensions file cannot be read or written.
    #[error(transparent)]
    Suspend(#[from] SuspendError),
    /// A bulk command failed after changing some messages.
    #[error("{err}; {n} message(s) were changed before that: {ids}")]
    Partial {
        /// How many were changed.
        n: usize,
        /// Their ids.
        ids: String,
        /// What stopped the command.
        err: Box<QueueError>,
    },
    /// `queue resume` for a domain that is not suspended.
    #[error("{0} is not suspended (`tlsrelay queue suspended` lists the suspensions)")]
    NotSuspended(Domain),
}

/// What a queue command did: its output, and what the server must tell the
/// scheduler and log.
#[derive(Debug, Default)]
pub struct Done {
    /// What to print.
    pub output: String,
    /// The messages the command changed.
    pub ids: Vec<String>,
    /// The messages it created (DSNs).
    pub created: Vec<String>,
    /// The suspensions in force after `suspend` or `resume`.
    pub suspensions: Option<Suspensions>,
}

impl From<String> for Done {
    fn from(output: String) -> Done {
        Done {
            output,
            ..Done::default()
        }
    }
}

/// The messages a command acts on: the one named, or those `filter` takes.
pub fn select(
    spool: &Spool,
    id: Option<&str>,
    filter: &Filter,
) -> Result<Vec<Envelope>, QueueError> {
    if let Some(id) = id {
        return Ok(vec![spool.load(id)?]);
    }
    let now = now_unix();
    Ok(spool
        .list()
        .into_iter()
        .filter(|e| filter.matches(e, now))
        .collect())
}

/// The error of a bulk command that stopped after changing `ids`.
fn partial(ids: &[String], err: impl Into<QueueError>) -> QueueError {
    let err = err.into();
    if ids.is_empty() {
        return err;
    }
    QueueError::Partial {
        n: ids.len(),
        ids: ids.join(" "),
        err: Box::new(err),
    }
}

/// The outcome of one message's change in a bulk command: `None` when the
/// message left the queue meanwhile (delivered, say), which is no failure.
fn applied<T>(
    result: Result<T, impl Into<QueueError>>,
    ids: &[String],
) -> Result<Option<T>, QueueError> {
    match result.map_err(Into::into) {
        Ok(v) => Ok(Some(v)),
        Err(QueueError::Spool(e)) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(partial(ids, e)),
    }
}

/// A change to more than one message needs `--yes`.
fn confirm(n: usize, yes: bool, verb: &'static str) -> Result<(), QueueError> {
    if n > 1 && !yes {
        return Err(QueueError::Confirm { n, verb });
    }
    Ok(())
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
    } else if env.held {
        "held"
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
        "held": env.held,
    })
}

/// `queue list`: a table for people or a JSON array for scripts, of the
/// messages `filter` takes; held messages and suspended domains are marked.
pub fn list(spool: &Spool, as_json: bool, filter: &Filter) -> Result<String, QueueError> {
    let envs = select(spool, None, filter)?;
    let suspended = Suspensions::load(spool.dir())?;
    let now = now_unix();
    if as_json {
        let rows: Vec<_> = (envs.iter())
            .map(|env| {
                let mut row = summary(env);
                row["suspended"] = json!(suspended_domains(env, &suspended, now)
                    .into_iter()
                    .map(|(d, until)| json!({"domain": d, "until": until}))
                    .collect::<Vec<_>>());
                row
            })
            .collect();
        return Ok(serde_json::to_string_pretty(&rows)? + "\n");
    }
    let mut out = String::new();
    if envs.is_empty() {
        if filter.is_empty() {
            out.push_str("queue is empty\n");
        } else {
            let _ = writeln!(out, "no message matches {}", filter.describe());
        }
        return Ok(out);
    }
    let _ = writeln!(
        out,
        "{:<16}  {:>8}  {:>7}  {:<8}  {:<19}  sender / recipients / last reason",
        "id", "size", "age", "state", "next attempt"
    );
    for env in &envs {
        list_entry(&mut out, env, &suspended, now);
    }
    let _ = writeln!(out, "{} message(s)", envs.len());
    Ok(out)
}

/// The pending domains of `env` that are suspended at `now`, with the end.
fn suspended_domains(env: &Envelope, suspended: &Suspensions, now: i64) -> Vec<(Domain, i64)> {
    let mut out: Vec<(Domain, i64)> = (env.pending())
        .filter_map(|r| Domain::of_address(&r.address).ok())
        .filter_map(|d| suspended.until(&d, now).map(|end| (d, end)))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// One message of the `queue list` table.
fn list_entry(out: &mut String, env: &Envelope, suspended: &Suspensions, now: i64) {
    let s = summary(env);
    let _ = writeln!(
        out,
        "{:<16}  {:>8}  {:>7}  {:<8}  {:<19}  <{}>",
        env.id,
        env.size,
        human_age(s["age_seconds"].as_i64().unwrap_or(0)),
        s["state"].as_str().unwrap_or(""),
        utc(env.next_attempt),
        visible(&env.sender)
    );
    for r in &env.recipients {
        let state = match r.state {
            RcptState::Queued => "queued",
            RcptState::Delivered => "delivered",
            RcptState::Failed => "failed",
        };
        let until = (r.state == RcptState::Queued)
            .then(|| Domain::of_address(&r.address).ok())
            .flatten()
            .and_then(|d| suspended.until(&d, now));
        let note = until.map_or(String::new(), |t| {
            format!(" (domain suspended until {} UTC)", utc(t))
        });
        let _ = writeln!(
            out,
            "{:>66}  -> <{}> {state}{note}",
            "",
            visible(&r.address)
        );
        if let Some(reason) = &r.last_reason {
            let _ = writeln!(out, "{:>66}     {}", "", visible(reason));
        }
    }
}

/// A Unix time as `YYYY-MM-DD HH:MM:SS` (UTC).
fn utc(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

/// `queue summary`: messages and recipients per destination domain by age.
pub fn queue_summary(spool: &Spool, as_json: bool, filter: &Filter) -> Result<String, QueueError> {
    let envs = select(spool, None, filter)?;
    let suspended = Suspensions::load(spool.dir())?;
    let shape = summary::shape(&envs, now_unix(), &suspended);
    if as_json {
        return Ok(serde_json::to_string_pretty(&shape)? + "\n");
    }
    Ok(summary::render(&shape))
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
        let envid = (env.envid.as_deref()).map_or("-".into(), |e| format!("\"{}\"", visible(e)));
        let ret = match env.ret {
            Some(crate::spool::DsnRet::Full) => "FULL",
            Some(crate::spool::DsnRet::Hdrs) => "HDRS",
            None => "-",
        };
        let _ = writeln!(out, "dsn:         ret {ret}, envid {envid}");
    }
    let _ = writeln!(out, "attempts:    {}", env.attempts);
    if env.held {
        let _ = writeln!(
            out,
            "held:        yes (`tlsrelay queue release {}` lets it go)",
            env.id
        );
    }
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

/// `queue retry`: makes the selected messages due now.
pub fn retry(
    spool: &Spool,
    id: Option<&str>,
    filter: &Filter,
    yes: bool,
) -> Result<Done, QueueError> {
    let envs = select(spool, id, filter)?;
    confirm(envs.len(), yes, "retry")?;
    let now = now_unix();
    let mut ids = Vec::new();
    for mut env in envs {
        if env.next_attempt > now {
            env.next_attempt = now;
            if applied(spool.update(&env), &ids)?.is_none() {
                continue;
            }
        }
        ids.push(env.id);
    }
    let output = format!("{} message(s) due for delivery now\n", ids.len());
    Ok(Done {
        output,
        ids,
        ..Done::default()
    })
}

/// `queue delete`: removes the selected messages silently.
pub fn delete(
    spool: &Spool,
    id: Option<&str>,
    filter: &Filter,
    yes: bool,
) -> Result<Done, QueueError> {
    let envs = select(spool, id, filter)?;
    confirm(envs.len(), yes, "delete")?;
    let mut ids = Vec::new();
    for env in envs {
        if applied(spool.remove(&env.id), &ids)?.is_some() {
            ids.push(env.id);
        }
    }
    let output = match id {
        Some(id) => format!("{id} deleted\n"),
        None => format!("{} message(s) deleted\n", ids.len()),
    };
    Ok(Done {
        output,
        ids,
        ..Done::default()
    })
}

/// `queue bounce`: gives up on the selected messages (see [`bounce_one`]).
pub fn bounce(
    spool: &Spool,
    id: Option<&str>,
    filter: &Filter,
    yes: bool,
    hostname: &str,
) -> Result<Done, QueueError> {
    let envs = select(spool, id, filter)?;
    confirm(envs.len(), yes, "bounce")?;
    let mut done = Done::default();
    for env in envs {
        let Some((line, dsn_id)) = applied(bounce_one(spool, &env.id, hostname), &done.ids)? else {
            continue;
        };
        if id.is_some() {
            done.output = line;
        }
        done.created.extend(dsn_id);
        done.ids.push(env.id);
    }
    if id.is_none() {
        let (n, notices) = (done.ids.len(), done.created.len());
        done.output = format!("{n} message(s) bounced; {notices} DSN(s) queued\n");
    }
    Ok(done)
}

/// `queue hold` (`hold` true) or `queue release`: marks the selected
/// messages held or not; those already so are left alone.
pub fn hold(
    spool: &Spool,
    id: Option<&str>,
    filter: &Filter,
    held: bool,
) -> Result<Done, QueueError> {
    let mut ids = Vec::new();
    for mut env in select(spool, id, filter)? {
        if env.held != held {
            env.held = held;
            if applied(spool.update(&env), &ids)?.is_some() {
                ids.push(env.id);
            }
        }
    }
    let verb = if held { "held" } else { "released" };
    let output = format!("{} message(s) {verb}\n", ids.len());
    Ok(Done {
        output,
        ids,
        ..Done::default()
    })
}

/// Suspend and resume are read-modify-write of one file; one at a time.
static SUSPENSIONS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// `queue suspend DOMAIN --for T`: no attempt to `domain` for `secs` seconds.
pub fn suspend(spool: &Spool, domain: &Domain, secs: u64) -> Result<Done, QueueError> {
    let _one = SUSPENSIONS.lock().unwrap_or_else(|e| e.into_inner());
    let now = now_unix();
    let end = now.saturating_add(i64::try_from(secs).unwrap_or(i64::MAX));
    let mut all = Suspensions::load(spool.dir())?;
    all.suspend(domain.clone(), end);
    all.save(spool.dir(), now)?;
    let filter = Filter {
        domain: Some(domain.clone()),
        ..Filter::default()
    };
    let waiting = select(spool, None, &filter)?.len();
    let output = format!(
        "{domain} suspended until {} UTC ({}); {waiting} message(s) wait for it\n",
        utc(end),
        crate::config::HumanDuration(std::time::Duration::from_secs(secs))
    );
    Ok(Done {
        output,
        suspensions: Some(all),
        ..Done::default()
    })
}

/// `queue resume DOMAIN`: ends a suspension now.
pub fn resume(spool: &Spool, domain: &Domain) -> Result<Done, QueueError> {
    let _one = SUSPENSIONS.lock().unwrap_or_else(|e| e.into_inner());
    let now = now_unix();
    let mut all = Suspensions::load(spool.dir())?;
    if !all.resume(domain, now) {
        return Err(QueueError::NotSuspended(domain.clone()));
    }
    all.save(spool.dir(), now)?;
    let output = format!("{domain} resumed; its messages are attempted again\n");
    Ok(Done {
        output,
        suspensions: Some(all),
        ..Done::default()
    })
}

/// `queue suspended`: the suspensions running, with the time left.
pub fn suspended(spool: &Spool, as_json: bool) -> Result<String, QueueError> {
    let now = now_unix();
    let all = Suspensions::load(spool.dir())?;
    let rows: Vec<(&Domain, i64)> = all.running(now).collect();
    if as_json {
        let v: Vec<_> = (rows.iter())
            .map(|(d, end)| json!({"domain": d, "until": end, "left_seconds": end - now}))
            .collect();
        return Ok(serde_json::to_string_pretty(&v)? + "\n");
    }
    if rows.is_empty() {
        return Ok("no domain is suspended\n".into());
    }
    let mut out = String::new();
    for (d, end) in rows {
        let left =
            crate::config::HumanDuration(std::time::Duration::from_secs((end - now).max(0) as u64));
        let _ = writeln!(out, "{d}  until {} UTC  ({left} left)", utc(end));
    }
    Ok(out)
}

/// Fails the pending recipients of message `id` and queues a DSN to the
/// sender for those whose NOTIFY asks for one; the line to print and the DSN's id.
pub fn bounce_one(
    spool: &Spool,
    id: &str,
    hostname: &str,
) -> Result<(String, Option<String>), QueueError> {
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
    let line = match &dsn_id {
        Some(d) => format!(
            "{id}: {n} recipient(s) bounced; DSN {d} queued to <{}>\n",
            env.sender
        ),
        None if env.sender.is_empty() => {
            format!("{id}: {n} recipient(s) bounced; no DSN (null sender)\n")
        }
        None => format!("{id}: {n} recipient(s) bounced; no DSN (no NOTIFY asks for one)\n"),
    };
    Ok((line, dsn_id))
}
