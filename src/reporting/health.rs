//! Readiness: whether this relay can take and deliver mail right now, as a pure
//! decision over a [`ReadyState`], and the periodic DNSSEC self-test that feeds it.
//!
//! A relay behind a resolver that strips DNSSEC accepts mail and defers every
//! domain; only a self-test that keeps running, and a readiness answer that
//! names it, lets the operator see that.

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::model::metric::{INBOUND_LISTENERS, SELFTEST_LAST, SELFTEST_OK};
use crate::resolve::dns::Dns;

/// Time between self-tests while they pass.
pub const SELFTEST_INTERVAL: Duration = Duration::from_secs(300);
/// Time between self-tests while they fail: recovery shows within half a minute.
pub const SELFTEST_RETRY: Duration = Duration::from_secs(30);

/// Inbound listeners accepting connections in this process.
static LISTENERS: AtomicUsize = AtomicUsize::new(0);

/// Held by each inbound accept loop; the listener counts as up while it lives.
#[derive(Debug)]
pub struct ListenerUp(());

/// Counts one more accepting listener until the returned guard is dropped (or its task aborted).
pub fn listener_up() -> ListenerUp {
    let n = LISTENERS.fetch_add(1, Ordering::SeqCst) + 1;
    metrics::gauge!(INBOUND_LISTENERS).set(n as f64);
    ListenerUp(())
}

impl Drop for ListenerUp {
    fn drop(&mut self) {
        let n = LISTENERS.fetch_sub(1, Ordering::SeqCst).saturating_sub(1);
        metrics::gauge!(INBOUND_LISTENERS).set(n as f64);
    }
}

/// What the DNSSEC self-test last found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dnssec {
    /// Delivery is off: nothing here resolves, so nothing needs DNSSEC.
    NotNeeded,
    /// The first self-test has not finished yet.
    Pending,
    /// The root DNSKEY RRset validated.
    Passed,
    /// It did not; why, as the self-test said it.
    Failed(String),
}

/// Everything readiness depends on, read at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyState {
    /// The last self-test.
    pub dnssec: Dnssec,
    /// Whether the spool directory takes writes, or why not.
    pub spool_writable: Result<(), String>,
    /// Free bytes on the spool's file system, or why they are unknown.
    pub free_bytes: Result<u64, String>,
    /// `[spool] min_free`.
    pub min_free: u64,
    /// Inbound listeners accepting connections.
    pub listeners: usize,
}

/// One reason the relay is not ready; shown one per line by `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotReady {
    /// The self-test has not finished.
    DnssecPending,
    /// The self-test failed.
    DnssecFailing(String),
    /// The spool directory refuses writes.
    SpoolNotWritable(String),
    /// Free space is below the reserve, so mail is being refused.
    DiskBelowReserve {
        /// Free bytes.
        free: u64,
        /// The reserve.
        reserve: u64,
    },
    /// Free space cannot be read.
    DiskUnknown(String),
    /// No listener accepts SMTP.
    NoListener,
}

impl fmt::Display for NotReady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotReady::DnssecPending => write!(f, "dnssec: the DNSSEC self-test has not finished yet"),
            // The self-test's own words already say what fails and that DANE cannot work.
            NotReady::DnssecFailing(why) => write!(f, "dnssec: {why}"),
            NotReady::SpoolNotWritable(why) => write!(f, "spool: not writable: {why}"),
            NotReady::DiskBelowReserve { free, reserve } => write!(
                f,
                "disk: {free} bytes free on the spool's file system, below the reserve of {reserve} ([spool] min_free)"
            ),
            NotReady::DiskUnknown(why) => write!(f, "disk: free space cannot be read: {why}"),
            NotReady::NoListener => write!(f, "inbound: no listener is accepting connections"),
        }
    }
}

/// Every reason the relay is not ready; none means ready. Pure.
pub fn readiness(s: &ReadyState) -> Vec<NotReady> {
    let mut out = Vec::new();
    match &s.dnssec {
        Dnssec::NotNeeded | Dnssec::Passed => {}
        Dnssec::Pending => out.push(NotReady::DnssecPending),
        Dnssec::Failed(why) => out.push(NotReady::DnssecFailing(why.clone())),
    }
    if let Err(why) = &s.spool_writable {
        out.push(NotReady::SpoolNotWritable(why.clone()));
    }
    match &s.free_bytes {
        Ok(free) if *free < s.min_free => out.push(NotReady::DiskBelowReserve {
            free: *free,
            reserve: s.min_free,
        }),
        Ok(_) => {}
        Err(why) => out.push(NotReady::DiskUnknown(why.clone())),
    }
    if s.listeners == 0 {
        out.push(NotReady::NoListener);
    }
    out
}

/// What a new self-test result changes, for the log: one line per change, not per run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// First result, a pass.
    FirstPass,
    /// It was passing (or had not run) and now fails.
    StartedFailing,
    /// It was failing and now passes.
    Recovered,
    /// Same as before.
    Unchanged,
}

/// How a result moves the self-test's state. Pure.
pub fn change(before: &Dnssec, passed: bool) -> Change {
    match (before, passed) {
        (Dnssec::Failed(_), true) => Change::Recovered,
        (Dnssec::Failed(_), false) | (Dnssec::Passed, true) => Change::Unchanged,
        (Dnssec::Pending | Dnssec::NotNeeded, true) => Change::FirstPass,
        (Dnssec::Pending | Dnssec::NotNeeded | Dnssec::Passed, false) => Change::StartedFailing,
    }
}

/// When the next self-test runs: sooner while failing.
pub fn next_self_test(passed: bool) -> Duration {
    if passed {
        SELFTEST_INTERVAL
    } else {
        SELFTEST_RETRY
    }
}

/// The shared health of one relay: what the probes read.
#[derive(Debug)]
pub struct Health {
    spool_dir: PathBuf,
    min_free: u64,
    dnssec: Mutex<Dnssec>,
}

impl Health {
    /// Health of a relay with this spool; DNSSEC counts only when delivery is on.
    pub fn new(config: &crate::config::Config) -> Arc<Health> {
        let dnssec = if config.delivery.enabled {
            Dnssec::Pending
        } else {
            Dnssec::NotNeeded
        };
        Arc::new(Health {
            spool_dir: config.spool.dir.clone(),
            min_free: config.spool.min_free,
            dnssec: Mutex::new(dnssec),
        })
    }

    /// Reads the current state (a few system calls).
    pub fn state(&self) -> ReadyState {
        ReadyState {
            dnssec: self.dnssec_state(),
            spool_writable: writable(&self.spool_dir),
            free_bytes: crate::spool::free_bytes(&self.spool_dir).map_err(|e| e.to_string()),
            min_free: self.min_free,
            listeners: LISTENERS.load(Ordering::SeqCst),
        }
    }

    fn dnssec_state(&self) -> Dnssec {
        match self.dnssec.lock() {
            Ok(d) => d.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Stores a self-test result, sets its metrics, logs a change; returns the wait until the next.
    fn record(&self, result: Result<(), String>) -> Duration {
        let passed = result.is_ok();
        let mut slot = match self.dnssec.lock() {
            Ok(d) => d,
            Err(poisoned) => poisoned.into_inner(),
        };
        match (change(&slot, passed), &result) {
            (Change::FirstPass, _) => {
                tracing::info!("DNSSEC self-test passed: the root DNSKEY validates")
            }
            (Change::Recovered, _) => tracing::info!(
                "DNSSEC self-test passes again: the root DNSKEY validates; DANE domains are delivered again"
            ),
            (Change::StartedFailing, Err(why)) => tracing::error!(
                "{why}; domains that need DANE are deferred, never downgraded (the self-test is repeated every {} s)",
                SELFTEST_RETRY.as_secs()
            ),
            _ => {}
        }
        *slot = match result {
            Ok(()) => Dnssec::Passed,
            Err(why) => Dnssec::Failed(why),
        };
        metrics::gauge!(SELFTEST_OK).set(if passed { 1.0 } else { 0.0 });
        metrics::gauge!(SELFTEST_LAST).set(crate::spool::now_unix() as f64);
        next_self_test(passed)
    }
}

/// Whether the spool directory (and its segments) accept writes, by `access(2)`:
/// it sees a read-only mount and lost permissions without writing anything.
fn writable(dir: &std::path::Path) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    for d in [dir.to_path_buf(), dir.join("segments")] {
        let path = std::ffi::CString::new(d.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
        // SAFETY: access only reads the NUL-terminated path we own.
        if unsafe { libc::access(path.as_ptr(), libc::W_OK) } != 0 {
            let err = std::io::Error::last_os_error();
            return Err(format!("{}: {err}", d.display()));
        }
    }
    Ok(())
}

/// Runs the DNSSEC self-test now and again, for as long as someone holds the health.
pub async fn run_self_tests(dns: Dns, health: Weak<Health>) {
    loop {
        let result = dns.self_test().await.map_err(|e| e.to_string());
        let Some(health) = health.upgrade() else {
            return;
        };
        let wait = health.record(result);
        drop(health);
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> ReadyState {
        ReadyState {
            dnssec: Dnssec::Passed,
            spool_writable: Ok(()),
            free_bytes: Ok(1 << 30),
            min_free: 100 << 20,
            listeners: 1,
        }
    }

    #[test]
    fn readiness_names_each_reason() {
        let failing = || Dnssec::Failed("the root DNSKEY RRset is insecure".into());
        let cases: Vec<(ReadyState, Vec<NotReady>)> = vec![
            (good(), vec![]),
            (
                ReadyState {
                    dnssec: Dnssec::NotNeeded,
                    ..good()
                },
                vec![],
            ),
            (
                ReadyState {
                    dnssec: Dnssec::Pending,
                    ..good()
                },
                vec![NotReady::DnssecPending],
            ),
            (
                ReadyState {
                    dnssec: failing(),
                    ..good()
                },
                vec![NotReady::DnssecFailing(
                    "the root DNSKEY RRset is insecure".into(),
                )],
            ),
            (
                ReadyState {
                    spool_writable: Err("EROFS".into()),
                    ..good()
                },
                vec![NotReady::SpoolNotWritable("EROFS".into())],
            ),
            (
                ReadyState {
                    free_bytes: Ok(100 << 20),
                    ..good()
                },
                vec![],
            ),
            (
                ReadyState {
                    free_bytes: Ok((100 << 20) - 1),
                    ..good()
                },
                vec![NotReady::DiskBelowReserve {
                    free: (100 << 20) - 1,
                    reserve: 100 << 20,
                }],
            ),
            (
                ReadyState {
                    free_bytes: Err("EIO".into()),
                    ..good()
                },
                vec![NotReady::DiskUnknown("EIO".into())],
            ),
            (
                ReadyState {
                    listeners: 0,
                    ..good()
                },
                vec![NotReady::NoListener],
            ),
            (
                ReadyState {
                    dnssec: failing(),
                    free_bytes: Ok(0),
                    listeners: 0,
                    ..good()
                },
                vec![
                    NotReady::DnssecFailing("the root DNSKEY RRset is insecure".into()),
                    NotReady::DiskBelowReserve {
                        free: 0,
                        reserve: 100 << 20,
                    },
                    NotReady::NoListener,
                ],
            ),
        ];
        for (state, want) in cases {
            assert_eq!(readiness(&state), want, "{state:?}");
        }
    }

    #[test]
    fn reasons_read_as_one_line_each() {
        for (reason, want) in [
            (NotReady::DnssecPending, "dnssec: the DNSSEC self-test has not finished yet"),
            (
                NotReady::DnssecFailing("DNSSEC self-test failed: x; DANE cannot work".into()),
                "dnssec: DNSSEC self-test failed: x; DANE cannot work",
            ),
            (
                NotReady::DiskBelowReserve { free: 5, reserve: 10 },
                "disk: 5 bytes free on the spool's file system, below the reserve of 10 ([spool] min_free)",
            ),
            (NotReady::NoListener, "inbound: no listener is accepting connections"),
            (NotReady::SpoolNotWritable("/q: Read-only file system".into()), "spool: not writable: /q: Read-only file system"),
        ] {
            assert_eq!(reason.to_string(), want);
        }
    }

    #[test]
    fn self_test_changes_are_logged_once() {
        let failed = || Dnssec::Failed("x".into());
        for (before, passed, want) in [
            (Dnssec::Pending, true, Change::FirstPass),
            (Dnssec::Pending, false, Change::StartedFailing),
            (Dnssec::Passed, true, Change::Unchanged),
            (Dnssec::Passed, false, Change::StartedFailing),
            (failed(), false, Change::Unchanged),
            (failed(), true, Change::Recovered),
        ] {
            assert_eq!(change(&before, passed), want, "{before:?} {passed}");
        }
        assert_eq!(next_self_test(true), Duration::from_secs(300));
        assert_eq!(next_self_test(false), Duration::from_secs(30));
    }
}
