//! The control socket: how `tlsrelay queue …` and `tlsrelay report send`
//! reach a running server, which alone holds the spool.
//!
//! `SPOOL/control.sock` is a Unix socket in the spool directory (mode 0700),
//! so only the server's user and root can reach it; the server also checks
//! the peer's uid. One request per connection: a JSON line in, a JSON line
//! out. Every request is logged with the peer's uid and pid.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};

use crate::config::Config;
use crate::delivery::Command;
use crate::model::domain::Domain;
use crate::ops::filter::Filter;
use crate::ops::queue;
use crate::resolve::dns::Dns;
use crate::spool::{Envelope, Spool};

/// A command for the running server. Fields added since the first release
/// are left out of the wire form when empty, so older forms stay valid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum Request {
    /// `queue list`.
    QueueList {
        /// JSON instead of a table.
        json: bool,
        /// Which messages.
        #[serde(default, skip_serializing_if = "Filter::is_empty")]
        filter: Filter,
    },
    /// `queue summary`: messages per domain and age.
    QueueSummary {
        /// JSON instead of a table.
        json: bool,
        /// Which messages.
        #[serde(default, skip_serializing_if = "Filter::is_empty")]
        filter: Filter,
    },
    /// `queue show ID`.
    QueueShow {
        /// Queue id.
        id: String,
        /// JSON instead of text.
        json: bool,
    },
    /// `queue show ID --raw`: the stored bytes, base64 in `output`.
    QueueRaw {
        /// Queue id.
        id: String,
    },
    /// `queue retry`.
    QueueRetry {
        /// Queue id; without one, the messages `filter` takes (all when empty).
        id: Option<String>,
        /// Which messages, without an id.
        #[serde(default, skip_serializing_if = "Filter::is_empty")]
        filter: Filter,
        /// Confirmed for more than one message.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        yes: bool,
    },
    /// `queue delete`.
    QueueDelete {
        /// Queue id; without one, the messages `filter` takes (all when empty).
        id: Option<String>,
        /// Which messages, without an id.
        #[serde(default, skip_serializing_if = "Filter::is_empty")]
        filter: Filter,
        /// Confirmed for more than one message.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        yes: bool,
    },
    /// `queue bounce`.
    QueueBounce {
        /// Queue id; without one, the messages `filter` takes (all when empty).
        id: Option<String>,
        /// Which messages, without an id.
        #[serde(default, skip_serializing_if = "Filter::is_empty")]
        filter: Filter,
        /// Confirmed for more than one message.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        yes: bool,
    },
    /// `queue hold`: no attempt until released.
    QueueHold {
        /// Queue id; without one, the messages `filter` takes (all when empty).
        id: Option<String>,
        /// Which messages, without an id.
        #[serde(default, skip_serializing_if = "Filter::is_empty")]
        filter: Filter,
    },
    /// `queue release`: held messages back into the schedule.
    QueueRelease {
        /// Queue id; without one, the messages `filter` takes (all when empty).
        id: Option<String>,
        /// Which messages, without an id.
        #[serde(default, skip_serializing_if = "Filter::is_empty")]
        filter: Filter,
    },
    /// `queue suspend DOMAIN --for T`.
    QueueSuspend {
        /// The destination domain.
        domain: Domain,
        /// For how long.
        seconds: u64,
    },
    /// `queue resume DOMAIN`.
    QueueResume {
        /// The destination domain.
        domain: Domain,
    },
    /// `queue suspended`: the suspensions running.
    QueueSuspended {
        /// JSON instead of text.
        json: bool,
    },
    /// `report send`: the day's reports, all of them with `now`.
    ReportSend {
        /// The UTC day.
        day: NaiveDate,
        /// Send even those not due yet.
        now: bool,
    },
    /// `reload`: what SIGHUP does, with its report.
    Reload,
}

impl Request {
    /// The word for what a command does to messages, when it changes them.
    fn changes(&self) -> Option<&'static str> {
        Some(match self {
            Request::QueueRetry { .. } => "retried",
            Request::QueueDelete { .. } => "deleted",
            Request::QueueBounce { .. } => "bounced",
            Request::QueueHold { .. } => "held",
            Request::QueueRelease { .. } => "released",
            _ => return None,
        })
    }
}

/// The server's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// Whether the command succeeded.
    pub ok: bool,
    /// What to print (on success), or the error (on failure).
    pub output: String,
}

/// Why the control socket could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Connecting, writing or reading failed.
    #[error("cannot reach the running server through {}: {err}", path.display())]
    Io {
        /// The socket.
        path: PathBuf,
        /// What failed.
        err: std::io::Error,
    },
    /// The spool is locked but nothing answers on its socket, for longer than a start takes.
    #[error(
        "the server holding the spool does not answer on {} after {}s (still replaying a large spool, or hung?); see its log",
        path.display(), STARTUP_WAIT.as_secs()
    )]
    NotListening {
        /// The socket.
        path: PathBuf,
    },
    /// The server's answer is not a response.
    #[error("the running server answered something unreadable: {0}")]
    Answer(String),
}

/// The control socket of the spool at `dir`.
pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join("control.sock")
}

/// Sends one request to the server running on the spool at `dir`.
pub async fn call(dir: &Path, req: &Request) -> Result<Response, ControlError> {
    let path = socket_path(dir);
    let io = |err| ControlError::Io {
        path: path.clone(),
        err,
    };
    let mut stream = connect(dir, &path).await?;
    let mut line = serde_json::to_vec(req).map_err(|e| io(e.into()))?;
    line.push(b'\n');
    stream.write_all(&line).await.map_err(io)?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .await
        .map_err(io)?;
    serde_json::from_str(&answer).map_err(|e| ControlError::Answer(format!("{e}: {answer:?}")))
}

/// How long a command waits for a server that holds the spool lock but does not
/// listen yet: it is replaying the spool before it binds the socket.
const STARTUP_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Connects to the socket, waiting while a server is starting on the spool.
async fn connect(dir: &Path, path: &Path) -> Result<UnixStream, ControlError> {
    let deadline = std::time::Instant::now() + STARTUP_WAIT;
    loop {
        match UnixStream::connect(path).await {
            Ok(stream) => return Ok(stream),
            // Refused: a socket file left by a killed server, not yet replaced.
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionRefused | ErrorKind::NotFound) => {
                if !crate::spool::is_locked(dir) {
                    return Err(ControlError::Io {
                        path: path.to_path_buf(),
                        err: std::io::Error::new(
                            e.kind(),
                            format!(
                                "{e}; no server holds the spool any more, run the command again"
                            ),
                        ),
                    });
                }
                if std::time::Instant::now() >= deadline {
                    return Err(ControlError::NotListening {
                        path: path.to_path_buf(),
                    });
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(err) => {
                return Err(ControlError::Io {
                    path: path.to_path_buf(),
                    err,
                })
            }
        }
    }
}

/// What the server needs to carry out requests.
#[derive(Clone)]
pub struct Handler {
    /// The configuration.
    pub config: Arc<Config>,
    /// The spool.
    pub spool: Spool,
    /// The resolver (for `report send`).
    pub dns: Dns,
    /// Where changed envelopes go so the scheduler sees them at once.
    pub requeue: Option<mpsc::UnboundedSender<Envelope>>,
    /// Where holds, deletions and suspensions go so the scheduler acts at once.
    pub scheduler: Option<mpsc::UnboundedSender<Command>>,
    /// What `reload` runs; set once `serve` has made it.
    pub reloader: Arc<std::sync::OnceLock<Arc<crate::ops::reload::Reloader>>>,
}

/// Binds the control socket of the spool at `dir`, which this process holds locked.
pub fn bind(dir: &Path) -> std::io::Result<UnixListener> {
    let path = socket_path(dir);
    // A socket left by a server that was killed; the spool lock says none runs.
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Answers requests on `listener` until `stop` turns true.
pub async fn serve(handler: Handler, listener: UnixListener, mut stop: watch::Receiver<bool>) {
    let path = socket_path(handler.spool.dir());
    let handler = Arc::new(handler);
    loop {
        tokio::select! {
            _ = stop.wait_for(|v| *v) => break,
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    tokio::spawn(answer(handler.clone(), stream));
                }
            }
        }
    }
    let _ = std::fs::remove_file(&path);
}

/// Reads one request, carries it out, writes the response.
async fn answer(handler: Arc<Handler>, stream: UnixStream) {
    let cred = stream.peer_cred().ok();
    let (uid, pid) = (cred.map(|c| c.uid()), cred.and_then(|c| c.pid()));
    let who = |v: Option<u32>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
    let (uid_text, pid_text) = (who(uid), who(pid.and_then(|p| u32::try_from(p).ok())));
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    if BufReader::new(read).read_line(&mut line).await.is_err() {
        return;
    }
    let response = match serde_json::from_str::<Request>(&line) {
        _ if uid != Some(me) && uid != Some(0) => {
            refuse("permission denied: not the server's user or root")
        }
        Err(e) => refuse(&format!("not a control request: {e}")),
        Ok(req) => {
            let request = serde_json::to_string(&req).unwrap_or_default();
            tracing::info!(uid = %uid_text, pid = %pid_text, request = %request, "operator command");
            let response = handler.clone().run(req).await;
            if !response.ok {
                tracing::warn!(uid = %uid_text, pid = %pid_text, error = %response.output, "operator command failed");
            }
            response
        }
    };
    let mut out = serde_json::to_vec(&response).unwrap_or_default();
    out.push(b'\n');
    let _ = write.write_all(&out).await;
}

fn refuse(why: &str) -> Response {
    Response {
        ok: false,
        output: why.to_string(),
    }
}

impl Handler {
    /// Carries out one request (spool work off the async threads).
    pub async fn run(self: Arc<Self>, req: Request) -> Response {
        if let Request::ReportSend { day, now } = req {
            return self.report_send(day, now).await;
        }
        if let Request::Reload = req {
            return self.reload().await;
        }
        let h = self.clone();
        let result = tokio::task::spawn_blocking(move || h.queue(&req)).await;
        match result {
            Ok(Ok(output)) => Response { ok: true, output },
            Ok(Err(e)) => refuse(&e.to_string()),
            Err(e) => refuse(&format!("the command failed: {e}")),
        }
    }

    /// Runs a queue command on the server's spool, logs the messages it
    /// changed, then tells the scheduler.
    fn queue(&self, req: &Request) -> Result<String, queue::QueueError> {
        let done = run_queue(&self.spool, &self.config.server.hostname, req)?;
        if let Some(verb) = req.changes() {
            tracing::info!(
                count = done.ids.len(),
                ids = %done.ids.join(" "),
                dsns = %done.created.join(" "),
                "queue: {} message(s) {verb}",
                done.ids.len()
            );
        }
        self.tell_scheduler(req, &done);
        Ok(done.output)
    }

    /// Hands the scheduler what changed (it never rescans the spool).
    fn tell_scheduler(&self, req: &Request, done: &queue::Done) {
        let command = match req {
            Request::QueueHold { .. } => Some(Command::Hold(done.ids.clone())),
            Request::QueueDelete { .. } | Request::QueueBounce { .. } => {
                Some(Command::Forget(done.ids.clone()))
            }
            Request::QueueSuspend { .. } | Request::QueueResume { .. } => {
                done.suspensions.clone().map(Command::Suspensions)
            }
            _ => None,
        };
        if let (Some(tx), Some(command)) = (&self.scheduler, command) {
            let _ = tx.send(command);
        }
        let again = match req {
            Request::QueueRetry { .. } | Request::QueueRelease { .. } => &done.ids,
            Request::QueueBounce { .. } => &done.created,
            _ => return,
        };
        if let Some(tx) = &self.requeue {
            // Due messages and new DSNs start now, not at the next scan.
            for env in again.iter().filter_map(|id| self.spool.load(id).ok()) {
                let _ = tx.send(env);
            }
        }
    }

    /// Runs the reload off the runtime's threads (it reads files) and answers its report.
    async fn reload(&self) -> Response {
        let Some(reloader) = self.reloader.get().cloned() else {
            return refuse("this server cannot reload (it was not started by tlsrelay serve)");
        };
        match tokio::task::spawn_blocking(move || reloader.reload()).await {
            Ok(report) => Response {
                ok: report.errors.is_empty(),
                output: report.to_string(),
            },
            Err(e) => refuse(&format!("the reload failed: {e}")),
        }
    }

    async fn report_send(&self, day: NaiveDate, now: bool) -> Response {
        let reporter = crate::reporting::reporter::Reporter::new(
            self.config.clone(),
            self.spool.clone(),
            self.dns.clone(),
            self.requeue.clone(),
        );
        let reporter = match reporter {
            Ok(r) => r,
            Err(e) => return refuse(&e.to_string()),
        };
        // In a fleet, the fleet's report (one per domain and day for all nodes).
        let reporter = match crate::cluster::Cluster::open(&self.config) {
            Ok(cluster) => reporter.in_cluster(cluster),
            Err(e) => return refuse(&e.to_string()),
        };
        let sent = match reporter
            .send_command(day, now, chrono::Utc::now().timestamp())
            .await
        {
            Ok(sent) => sent,
            Err(why) => return refuse(&why),
        };
        match serde_json::to_string(&sent) {
            Ok(output) => Response { ok: true, output },
            Err(e) => refuse(&e.to_string()),
        }
    }
}

/// Runs a queue request against an open spool (the server's, or the one a
/// command opened itself because no server runs).
pub fn run_queue(
    spool: &Spool,
    hostname: &str,
    req: &Request,
) -> Result<queue::Done, queue::QueueError> {
    match req {
        Request::QueueList { json, filter } => queue::list(spool, *json, filter).map(Into::into),
        Request::QueueSummary { json, filter } => {
            queue::queue_summary(spool, *json, filter).map(Into::into)
        }
        Request::QueueShow { id, json } => queue::show(spool, id, *json).map(Into::into),
        Request::QueueRaw { id } => {
            use base64::Engine;
            let bytes = spool.read_message(id)?;
            Ok((base64::engine::general_purpose::STANDARD.encode(bytes) + "\n").into())
        }
        Request::QueueRetry { id, filter, yes } => queue::retry(spool, id.as_deref(), filter, *yes),
        Request::QueueDelete { id, filter, yes } => {
            queue::delete(spool, id.as_deref(), filter, *yes)
        }
        Request::QueueBounce { id, filter, yes } => {
            queue::bounce(spool, id.as_deref(), filter, *yes, hostname)
        }
        Request::QueueHold { id, filter } => queue::hold(spool, id.as_deref(), filter, true),
        Request::QueueRelease { id, filter } => queue::hold(spool, id.as_deref(), filter, false),
        Request::QueueSuspend { domain, seconds } => queue::suspend(spool, domain, *seconds),
        Request::QueueResume { domain } => queue::resume(spool, domain),
        Request::QueueSuspended { json } => queue::suspended(spool, *json).map(Into::into),
        Request::ReportSend { .. } | Request::Reload => Ok(queue::Done::default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::filter;

    #[test]
    fn requests_keep_their_wire_form() {
        let cases = [
            (
                Request::QueueList {
                    json: true,
                    filter: Filter::default(),
                },
                r#"{"command":"queue-list","json":true}"#,
            ),
            (
                Request::QueueRetry {
                    id: None,
                    filter: Filter::default(),
                    yes: false,
                },
                r#"{"command":"queue-retry","id":null}"#,
            ),
            (
                Request::QueueBounce {
                    id: Some("AB12".into()),
                    filter: Filter::default(),
                    yes: false,
                },
                r#"{"command":"queue-bounce","id":"AB12"}"#,
            ),
            (
                Request::QueueDelete {
                    id: None,
                    filter: Filter {
                        domain: Some(Domain::parse("Example.NET").unwrap()),
                        older_than: Some(7200),
                        reason: Some("try later".into()),
                        ..Filter::default()
                    },
                    yes: true,
                },
                r#"{"command":"queue-delete","id":null,"filter":{"domain":"example.net","older_than":7200,"reason":"try later"},"yes":true}"#,
            ),
            (
                Request::QueueSummary {
                    json: false,
                    filter: Filter {
                        sender: Some(filter::Address::parse("<>").unwrap()),
                        ..Filter::default()
                    },
                },
                r#"{"command":"queue-summary","json":false,"filter":{"sender":""}}"#,
            ),
            (
                Request::QueueHold {
                    id: Some("AB12".into()),
                    filter: Filter::default(),
                },
                r#"{"command":"queue-hold","id":"AB12"}"#,
            ),
            (
                Request::QueueRelease {
                    id: None,
                    filter: Filter::default(),
                },
                r#"{"command":"queue-release","id":null}"#,
            ),
            (
                Request::QueueSuspend {
                    domain: Domain::parse("example.net").unwrap(),
                    seconds: 7200,
                },
                r#"{"command":"queue-suspend","domain":"example.net","seconds":7200}"#,
            ),
            (
                Request::QueueResume {
                    domain: Domain::parse("example.net").unwrap(),
                },
                r#"{"command":"queue-resume","domain":"example.net"}"#,
            ),
            (
                Request::QueueSuspended { json: true },
                r#"{"command":"queue-suspended","json":true}"#,
            ),
            (
                Request::ReportSend {
                    day: NaiveDate::from_ymd_opt(2026, 12, 1).unwrap(),
                    now: true,
                },
                r#"{"command":"report-send","day":"2026-12-01","now":true}"#,
            ),
        ];
        for (req, wire) in cases {
            assert_eq!(serde_json::to_string(&req).unwrap(), wire);
            assert_eq!(serde_json::from_str::<Request>(wire).unwrap(), req);
        }
    }

    /// A server killed with SIGKILL leaves its socket file; the next server holds
    /// the lock while it replays the spool, then binds. A command run in between
    /// waits for it instead of failing with "connection refused".
    #[tokio::test]
    async fn a_command_waits_for_a_starting_server_behind_a_stale_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = socket_path(dir.path());
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert_eq!(
            std::os::unix::net::UnixStream::connect(&path)
                .unwrap_err()
                .kind(),
            ErrorKind::ConnectionRefused
        );
        let spool = Spool::open(dir.path()).unwrap();
        let starting = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(600)).await;
            let listener = bind(spool.dir()).unwrap();
            let (stream, _) = listener.accept().await.unwrap();
            let (read, mut write) = stream.into_split();
            BufReader::new(read)
                .read_line(&mut String::new())
                .await
                .unwrap();
            write
                .write_all(b"{\"ok\":true,\"output\":\"up\"}\n")
                .await
                .unwrap();
            spool
        });
        let answer = call(
            dir.path(),
            &Request::QueueList {
                json: false,
                filter: Filter::default(),
            },
        )
        .await;
        assert_eq!(answer.unwrap().output, "up");
        drop(starting.await.unwrap());
    }

    /// No server holds the spool: the command says so at once instead of waiting.
    #[tokio::test]
    async fn a_stale_socket_without_a_server_fails_at_once() {
        let dir = tempfile::tempdir().unwrap();
        drop(std::os::unix::net::UnixListener::bind(socket_path(dir.path())).unwrap());
        let started = std::time::Instant::now();
        let err = call(
            dir.path(),
            &Request::QueueList {
                json: false,
                filter: Filter::default(),
            },
        )
        .await
        .unwrap_err();
        assert!(started.elapsed() < STARTUP_WAIT / 2, "{err}");
        assert!(
            err.to_string().contains("no server holds the spool"),
            "{err}"
        );
    }
}
