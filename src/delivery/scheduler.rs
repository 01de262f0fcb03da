//! The scheduler: keeps due messages moving, picks up what changed on disk,
//! and stops gracefully.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinSet;

use super::attempt::{attempt, AfterAttempt};
use super::suspend::Suspensions;
use super::{Context, Delivery};
use crate::reporting::metrics as names;
use crate::resolve::mta_sts::MtaSts;
use crate::spool::{now_unix, Envelope};

/// What the operator changed that the scheduler acts on at once, without
/// waiting for a rescan of the spool (the spool already holds the change).
#[derive(Debug, Clone)]
pub enum Command {
    /// These messages were put on hold: out of the schedule; one in flight is
    /// held again when its attempt ends (the attempt wrote its older envelope).
    Hold(Vec<String>),
    /// These messages were deleted: out of the schedule.
    Forget(Vec<String>),
    /// The suspensions now in force (after `queue suspend` or `queue resume`).
    Suspensions(Suspensions),
}

/// Messages waiting for their next attempt, and attempts in flight.
struct Queue {
    waiting: HashMap<String, Envelope>,
    in_flight: HashSet<String>,
    /// Messages held while their attempt was in flight.
    hold_after: HashSet<String>,
    /// Messages whose last attempt could not be written to the spool: their
    /// state in `waiting` is newer than the disk's, so a rescan keeps it (else a
    /// full disk would make every scan retry them at once).
    unsaved: HashSet<String>,
    tasks: JoinSet<(String, AfterAttempt)>,
}

impl Delivery {
    /// Delivers until `shutdown` turns true, then lets attempts in flight finish
    /// (at most `server.shutdown_grace`).
    pub async fn run(mut self, initial: Vec<Envelope>, mut shutdown: watch::Receiver<bool>) {
        let ctx = self.ctx.clone();
        if !ctx.config.delivery.enabled {
            // Accept-and-keep mode: nothing is attempted, nothing is read back.
            tracing::info!(
                queued = initial.len(),
                "delivery is disabled ([delivery] enabled = false); messages stay queued"
            );
            let _ = shutdown.wait_for(|v| *v).await;
            return;
        }
        if let Some(sts) = ctx.mta_sts.clone() {
            spawn_sts_refresh(&ctx, sts, shutdown.clone());
        }
        let scan_every =
            (ctx.config.delivery.queue_scan_interval.get()).max(Duration::from_millis(200));
        let mut q = Queue {
            waiting: HashMap::new(),
            in_flight: HashSet::new(),
            hold_after: HashSet::new(),
            unsaved: HashSet::new(),
            tasks: JoinSet::new(),
        };
        for env in initial {
            q.add(env);
        }
        let mut last_scan = Instant::now();
        loop {
            q.start_due(&ctx);
            let to_scan = scan_every.saturating_sub(last_scan.elapsed());
            let sleep = q
                .until_next(&ctx)
                .min(to_scan.max(Duration::from_millis(50)));
            tokio::select! {
                _ = shutdown.wait_for(|v| *v) => break,
                Some(env) = self.incoming.recv() => q.add(env),
                Some(cmd) = self.commands.recv() => q.command(&ctx, cmd),
                Some(done) = q.tasks.join_next(), if !q.tasks.is_empty() => {
                    if let Ok((id, env)) = done {
                        q.finished(&ctx, id, env);
                    }
                }
                _ = tokio::time::sleep(sleep) => {}
            }
            if last_scan.elapsed() >= scan_every {
                last_scan = Instant::now();
                ctx.pool
                    .close_idle(ctx.config.delivery.connection_reuse_time.get())
                    .await;
                q.rescan(&ctx).await;
            }
        }
        q.drain(&ctx).await;
        ctx.pool.close_idle(Duration::ZERO).await;
    }
}

impl Queue {
    /// Starts an attempt for every due message not waiting only for
    /// suspended domains; ends the suspensions whose time is up.
    fn start_due(&mut self, ctx: &Arc<Context>) {
        let now = now_unix();
        let suspended = end_suspensions(ctx, now);
        let due: Vec<String> = (self.waiting.values())
            .filter(|e| e.next_attempt <= now && !suspended.blocks(e, now))
            .map(|e| e.id.clone())
            .collect();
        for id in due {
            let env = self.waiting.remove(&id).expect("listed above");
            self.in_flight.insert(id.clone());
            let ctx = ctx.clone();
            self.tasks
                .spawn(async move { (id, attempt(ctx, env).await) });
        }
    }

    /// How long until the next waiting message is due or a suspension ends
    /// (a long time when none waits).
    fn until_next(&self, ctx: &Context) -> Duration {
        let now = now_unix();
        let suspended = ctx.suspended.read().unwrap_or_else(|e| e.into_inner());
        (self.waiting.values())
            .filter(|e| !suspended.blocks(e, now))
            .map(|e| e.next_attempt)
            .chain(suspended.next_end(now))
            .min()
            .map_or(Duration::from_secs(3600), |t| {
                Duration::from_secs((t - now).max(1) as u64)
            })
    }

    /// A message announced by the inbound server (or a DSN, or one the operator
    /// retried or released), or read by a rescan; neither replaces a message in
    /// flight or one newer in memory than on disk. A held message is not scheduled.
    fn add(&mut self, env: Envelope) {
        if env.held {
            self.waiting.remove(&env.id);
        } else if !self.in_flight.contains(&env.id) && !self.unsaved.contains(&env.id) {
            self.waiting.insert(env.id.clone(), env);
        }
    }

    /// Carries out an operator's command.
    fn command(&mut self, ctx: &Context, cmd: Command) {
        match cmd {
            Command::Hold(ids) => {
                for id in ids {
                    self.waiting.remove(&id);
                    if self.in_flight.contains(&id) {
                        self.hold_after.insert(id);
                    }
                }
            }
            Command::Forget(ids) => {
                for id in ids {
                    self.waiting.remove(&id);
                    self.unsaved.remove(&id);
                }
            }
            Command::Suspensions(s) => {
                *ctx.suspended.write().unwrap_or_else(|e| e.into_inner()) = s;
            }
        }
    }

    /// An attempt ended; the envelope is kept when the message stays queued
    /// (and held again when it was held during the attempt).
    fn finished(&mut self, ctx: &Context, id: String, after: AfterAttempt) {
        self.in_flight.remove(&id);
        let hold = self.hold_after.remove(&id);
        match after {
            AfterAttempt::Removed => {
                self.unsaved.remove(&id);
            }
            AfterAttempt::Queued(env) | AfterAttempt::Unsaved(env) if hold => hold_again(ctx, env),
            AfterAttempt::Queued(env) => {
                self.unsaved.remove(&id);
                self.waiting.insert(id, env);
            }
            AfterAttempt::Unsaved(env) => {
                self.unsaved.insert(id.clone());
                self.waiting.insert(id, env);
            }
        }
    }

    /// The disk is the truth: picks up `queue retry`, `queue delete` and DSNs.
    async fn rescan(&mut self, ctx: &Context) {
        let spool = ctx.spool.clone();
        let Ok(on_disk) = tokio::task::spawn_blocking(move || spool.list()).await else {
            return;
        };
        let ids: HashSet<String> = on_disk.iter().map(|e| e.id.clone()).collect();
        let oldest = on_disk.iter().map(|e| e.received_at).min();
        metrics::gauge!(names::QUEUE_SIZE).set(on_disk.len() as f64);
        metrics::gauge!(names::QUEUE_OLDEST)
            .set(oldest.map_or(0, |t| (now_unix() - t).max(0)) as f64);
        self.waiting.retain(|id, _| ids.contains(id));
        self.unsaved.retain(|id| ids.contains(id));
        for env in on_disk {
            self.add(env);
        }
    }

    /// Lets attempts in flight finish, within `server.shutdown_grace`.
    async fn drain(&mut self, ctx: &Context) {
        if !self.tasks.is_empty() {
            tracing::info!(
                attempts = self.tasks.len(),
                "waiting for delivery attempts in flight"
            );
        }
        let grace = ctx.config.server.shutdown_grace.get();
        let all = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, all).await.is_err() {
            self.tasks.abort_all();
        }
    }
}

/// Removes the suspensions that have ended (logging each), and returns those
/// still running.
fn end_suspensions(ctx: &Context, now: i64) -> Suspensions {
    let mut s = ctx.suspended.write().unwrap_or_else(|e| e.into_inner());
    for domain in s.prune(now) {
        tracing::info!(%domain, "suspension ended; deliveries to the domain resume");
    }
    s.clone()
}

/// Writes the hold again over the envelope an attempt in flight wrote after
/// `queue hold` (the attempt started before it, with the envelope not held).
fn hold_again(ctx: &Context, mut env: Envelope) {
    env.held = true;
    let spool = ctx.spool.clone();
    tokio::task::spawn_blocking(move || {
        if let Err(e) = spool.update(&env) {
            tracing::error!(id = %env.id, error = %e, "cannot write the hold after the attempt; the message may be attempted again");
        }
    });
}

/// Refreshes MTA-STS policies close to expiry every `mta_sts.refresh_interval`.
fn spawn_sts_refresh(ctx: &Context, sts: Arc<MtaSts>, mut stop: watch::Receiver<bool>) {
    let every = (ctx.config.mta_sts.refresh_interval.get()).max(Duration::from_secs(60));
    let parallel = ctx.config.mta_sts.refresh_parallel;
    tokio::spawn(async move {
        loop {
            let stopping = tokio::select! {
                _ = stop.changed() => true,
                _ = tokio::time::sleep(every) => false,
            };
            if stopping || *stop.borrow() {
                return;
            }
            let n = sts.refresh_expiring(every * 2, parallel).await;
            if n > 0 {
                tracing::info!(policies = n, "MTA-STS policies close to expiry refreshed");
            }
        }
    });
}
