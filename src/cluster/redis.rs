//! The Redis handle: one reconnecting connection, a short timeout on every call,
//! and the up/down state (a metric and one log line per change).
//!
//! While Redis is down, calls fail at once for a second at a time instead of each
//! waiting out the timeout: delivery never waits on a dead Redis.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, Script};

use super::ClusterError;
use crate::model::metric::CLUSTER_REDIS_UP;

/// How long calls fail fast after a failure before the next real try.
const RETRY_AFTER: Duration = Duration::from_secs(1);

const UNKNOWN: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

/// A shared, reconnecting Redis connection.
pub struct Redis {
    conn: ConnectionManager,
    timeout: Duration,
    state: AtomicU8,
    quiet_until: Mutex<Option<Instant>>,
    /// The server as shown to operators (no password).
    shown: String,
}

impl Redis {
    /// A handle on `url`; it connects on first use, so a Redis that is down at
    /// start delays nothing.
    pub fn open(
        url: &str,
        ca_file: Option<&std::path::Path>,
        timeout: Duration,
    ) -> Result<Redis, ClusterError> {
        // rediss:// builds its TLS client with rustls's process-wide provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = match ca_file {
            None => redis::Client::open(url),
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| {
                    ClusterError::Url(format!("cluster.tls_ca_file {}: {e}", path.display()))
                })?;
                let certs = redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                };
                redis::Client::build_with_tls(url, certs)
            }
        }
        .map_err(|e| ClusterError::Url(e.to_string()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| ClusterError::Url(e.to_string()))?;
        Ok(Redis {
            conn,
            timeout,
            state: AtomicU8::new(UNKNOWN),
            quiet_until: Mutex::new(None),
            shown: shown_url(url),
        })
    }

    /// The server, without credentials.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// Whether the last call reached Redis.
    pub fn is_up(&self) -> bool {
        self.state.load(Ordering::Relaxed) == UP
    }

    /// Runs one command.
    pub async fn run<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, ClusterError> {
        self.guard()?;
        let mut conn = self.conn.clone();
        let r = tokio::time::timeout(self.timeout, cmd.query_async::<T>(&mut conn)).await;
        self.settle(r)
    }

    /// Runs a pipeline (atomic when built with `.atomic()`).
    pub async fn pipe<T: FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T, ClusterError> {
        self.guard()?;
        let mut conn = self.conn.clone();
        let r = tokio::time::timeout(self.timeout, pipe.query_async::<T>(&mut conn)).await;
        self.settle(r)
    }

    /// Runs a Lua script on `keys` and `args`.
    pub async fn script<T: FromRedisValue>(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[String],
    ) -> Result<T, ClusterError> {
        self.guard()?;
        let mut inv = script.prepare_invoke();
        for k in keys {
            inv.key(*k);
        }
        for a in args {
            inv.arg(a);
        }
        let mut conn = self.conn.clone();
        let r = tokio::time::timeout(self.timeout, inv.invoke_async::<T>(&mut conn)).await;
        self.settle(r)
    }

    /// Fails at once while a recent failure says Redis is down.
    fn guard(&self) -> Result<(), ClusterError> {
        let quiet = self.quiet_until.lock().unwrap_or_else(|e| e.into_inner());
        match *quiet {
            Some(t) if Instant::now() < t => Err(ClusterError::Down("unreachable".into())),
            _ => Ok(()),
        }
    }

    fn settle<T>(
        &self,
        r: Result<redis::RedisResult<T>, tokio::time::error::Elapsed>,
    ) -> Result<T, ClusterError> {
        match r {
            Ok(Ok(v)) => {
                self.set_state(UP, "");
                Ok(v)
            }
            Ok(Err(e)) if !connection_trouble(&e) => Err(ClusterError::Redis(e.to_string())),
            Ok(Err(e)) => Err(self.down(e.to_string())),
            Err(_) => Err(self.down(format!("no answer within {:?}", self.timeout))),
        }
    }

    fn down(&self, why: String) -> ClusterError {
        *self.quiet_until.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(Instant::now() + RETRY_AFTER);
        self.set_state(DOWN, &why);
        ClusterError::Down(why)
    }

    fn set_state(&self, new: u8, why: &str) {
        if new == UP {
            *self.quiet_until.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
        let old = self.state.swap(new, Ordering::Relaxed);
        metrics::gauge!(CLUSTER_REDIS_UP).set(if new == UP { 1.0 } else { 0.0 });
        if old == new {
            return;
        }
        if new == UP {
            tracing::info!(redis = %self.shown, "cluster: Redis reachable, sharing state with the fleet");
        } else {
            tracing::warn!(redis = %self.shown, error = %why, "cluster: Redis unreachable, going on with local state (local MTA-STS cache and limits, counts kept on disk)");
        }
    }
}

/// Errors that mean "Redis is not there" rather than "the command was wrong".
fn connection_trouble(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal()
}

/// `url` without a password (`redis://user:secret@host` → `redis://user:***@host`).
pub fn shown_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
        Some((cred, host)) => match cred.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => format!("{scheme}://***@{host}"),
        },
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_secrets() {
        let cases = [
            ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
            ("redis://:pw@r.example:6379", "redis://:***@r.example:6379"),
            ("rediss://app:pw@r.example", "rediss://app:***@r.example"),
            ("redis://token@r.example", "redis://***@r.example"),
            ("nonsense", "nonsense"),
        ];
        for (url, want) in cases {
            assert_eq!(shown_url(url), want, "{url}");
        }
    }
}
