//! Limits on password checks: a bounded pool, and failure throttling per client
//! address and per user.
//!
//! One argon2 check needs the memory its hash names (19 MiB with the recommended
//! parameters) and tens of milliseconds of CPU. Unbounded, a few dozen guessing
//! sessions exhaust memory and starve honest users. So checks run on at most
//! `auth_parallel_checks` blocking threads, each with a reused memory buffer, and
//! at most `auth_queue_limit` more may wait. One client address has one check in
//! progress at a time, and after a failure it keeps that turn for a delay that
//! grows with its recent failures, until the address (or the user) is locked out.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::Block;
use tokio::sync::Semaphore;

use super::auth::Users;
use crate::config::ServerConfig;

/// Records kept before old ones are pruned, so spraying addresses cannot grow the maps.
const PRUNE_ABOVE: usize = 4096;

/// What became of one AUTH attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The password is right.
    Ok,
    /// The password is wrong (the failure delay has been waited out).
    Failed,
    /// The client address is locked out: 421 4.7.0.
    ClientLocked,
    /// The user is locked out: 454 4.7.0.
    UserLocked,
    /// Too many checks already waiting: 454 4.7.0.
    Busy,
}

/// Recent failures of one address or user.
#[derive(Debug, Default)]
struct Record {
    failures: u32,
    last: Option<Instant>,
    locked_until: Option<Instant>,
}

impl Record {
    fn locked(&self, now: Instant) -> bool {
        self.locked_until.is_some_and(|t| now < t)
    }

    /// Counts a failure; returns the recent failures and whether this one locked.
    fn fail(&mut self, now: Instant, max: u32, lockout: Duration) -> (u32, bool) {
        if self.last.is_some_and(|t| now.duration_since(t) > lockout) {
            self.failures = 0;
        }
        self.failures += 1;
        self.last = Some(now);
        let n = self.failures;
        if n >= max {
            self.locked_until = Some(now + lockout);
            self.failures = 0;
            return (n, true);
        }
        (n, false)
    }

    fn stale(&self, now: Instant, lockout: Duration) -> bool {
        !self.locked(now) && self.last.is_none_or(|t| now.duration_since(t) > lockout)
    }
}

#[derive(Default)]
struct State {
    clients: HashMap<IpAddr, Record>,
    users: HashMap<String, Record>,
    /// One check at a time per address: its holder, and those waiting, share the Arc.
    turns: HashMap<IpAddr, Arc<tokio::sync::Mutex<()>>>,
}

/// The password-check pool and the failure records of one server.
pub(crate) struct AuthGate {
    pool: Arc<Semaphore>,
    /// Argon2 working memory, one buffer per running check, reused.
    memory: Arc<Mutex<Vec<Vec<Block>>>>,
    waiting: AtomicUsize,
    queue_limit: usize,
    delay: Duration,
    max_client_failures: u32,
    max_user_failures: u32,
    lockout: Duration,
    state: Mutex<State>,
}

/// Leaves the wait count when dropped, also if the session is cancelled.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The throttling key of an address: IPv6 clients are counted per /64, which one
/// host usually has whole.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
        v4 => v4,
    }
}

impl AuthGate {
    /// A gate sized by the `[server]` `auth_*` keys.
    pub(crate) fn new(cfg: &ServerConfig) -> AuthGate {
        AuthGate {
            pool: Arc::new(Semaphore::new(cfg.auth_parallel_checks())),
            memory: Arc::new(Mutex::new(Vec::new())),
            waiting: AtomicUsize::new(0),
            queue_limit: cfg.auth_queue_limit,
            delay: cfg.auth_failure_delay.get(),
            max_client_failures: cfg.auth_max_failures_per_client,
            max_user_failures: cfg.auth_max_failures_per_user,
            lockout: cfg.auth_lockout.get(),
            state: Mutex::new(State::default()),
        }
    }

    /// Whether `ip` is locked out of AUTH now.
    pub(crate) fn client_locked(&self, ip: IpAddr) -> bool {
        let st = self.state.lock().unwrap();
        st.clients
            .get(&client_key(ip))
            .is_some_and(|r| r.locked(Instant::now()))
    }

    /// Checks `user`'s password for a client at `ip`, under every limit.
    pub(crate) async fn check(
        &self,
        ip: IpAddr,
        users: &Arc<Users>,
        user: &str,
        password: String,
    ) -> Verdict {
        let key = client_key(ip);
        let turn = self.turn(key);
        let _turn = turn.lock().await;
        // Re-checked after the wait: the checks ahead may have locked the address.
        if let Some(refusal) = self.refusal(key, user) {
            return refusal;
        }
        let Some(ok) = self.run(users, user, password).await else {
            return Verdict::Busy;
        };
        if ok {
            return Verdict::Ok;
        }
        let (n, locked) = self.failed(key, user, users.contains(user));
        if !locked {
            // Holding the turn while waiting is what makes the delay a rate limit.
            tokio::time::sleep(self.delay.saturating_mul(n)).await;
        }
        Verdict::Failed
    }

    fn turn(&self, key: IpAddr) -> Arc<tokio::sync::Mutex<()>> {
        let mut st = self.state.lock().unwrap();
        if st.turns.len() > PRUNE_ABOVE {
            // Only the map holds these: nobody is checking or waiting there.
            st.turns.retain(|_, t| Arc::strong_count(t) > 1);
        }
        st.turns.entry(key).or_default().clone()
    }

    fn refusal(&self, key: IpAddr, user: &str) -> Option<Verdict> {
        let now = Instant::now();
        let st = self.state.lock().unwrap();
        if st.clients.get(&key).is_some_and(|r| r.locked(now)) {
            return Some(Verdict::ClientLocked);
        }
        if st.users.get(user).is_some_and(|r| r.locked(now)) {
            return Some(Verdict::UserLocked);
        }
        None
    }

    /// Runs one check in the pool; `None` when the queue is full.
    async fn run(&self, users: &Arc<Users>, user: &str, password: String) -> Option<bool> {
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.queue_limit {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        let waiting = Waiting(&self.waiting);
        let permit = self.pool.clone().acquire_owned().await.ok()?;
        drop(waiting);
        let (users, user, memory) = (users.clone(), user.to_string(), self.memory.clone());
        let task = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let mut buf = memory.lock().unwrap().pop().unwrap_or_default();
            let ok = users.verify_with(&user, &password, &mut buf);
            memory.lock().unwrap().push(buf);
            ok
        });
        Some(task.await.unwrap_or(false))
    }

    /// Counts a failure for the address and (if listed) the user; returns the
    /// larger recent count and whether either is now locked out.
    fn failed(&self, key: IpAddr, user: &str, listed: bool) -> (u32, bool) {
        let now = Instant::now();
        let lockout = self.lockout;
        let mut st = self.state.lock().unwrap();
        if st.clients.len() > PRUNE_ABOVE {
            st.clients.retain(|_, r| !r.stale(now, lockout));
        }
        let (mut n, mut locked) =
            st.clients
                .entry(key)
                .or_default()
                .fail(now, self.max_client_failures, lockout);
        if locked {
            tracing::warn!(client = %key, lockout = %crate::config::HumanDuration(lockout), "AUTH locked out for this address: too many failures");
        }
        // Unlisted names get no record: there is no account to protect, and
        // invented names must not grow the map.
        if listed {
            let (u, user_locked) = st.users.entry(user.to_string()).or_default().fail(
                now,
                self.max_user_failures,
                lockout,
            );
            if user_locked {
                tracing::warn!(user = %user, "AUTH locked out for this user: too many failures");
            }
            n = n.max(u);
            locked |= user_locked;
        }
        (n, locked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_lock_then_expire() {
        let t0 = Instant::now();
        let lockout = Duration::from_secs(60);
        let mut r = Record::default();
        assert_eq!(r.fail(t0, 3, lockout), (1, false));
        assert_eq!(r.fail(t0, 3, lockout), (2, false));
        assert_eq!(r.fail(t0, 3, lockout), (3, true));
        assert!(r.locked(t0 + Duration::from_secs(59)));
        assert!(!r.locked(t0 + Duration::from_secs(61)));
        // A failure long after the last one starts the count again.
        let later = t0 + Duration::from_secs(200);
        assert_eq!(r.fail(later, 3, lockout), (1, false));
    }

    #[test]
    fn ipv6_clients_count_per_slash_64() {
        let a = client_key("2001:db8:1:2::1".parse().unwrap());
        let b = client_key("2001:db8:1:2:ffff::9".parse().unwrap());
        assert_eq!(a, b);
        assert_eq!(a, "2001:db8:1:2::".parse::<IpAddr>().unwrap());
        let mapped = client_key("::ffff:192.0.2.1".parse().unwrap());
        assert_eq!(mapped, "192.0.2.1".parse::<IpAddr>().unwrap());
    }
}
