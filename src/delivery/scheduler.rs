//! The scheduler: starts each message's attempt when it is due (a timer
//! index, no rescans: whatever changes the queue tells the scheduler), and stops
//! gracefully.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinSet;

use super::attempt::{attempt, AfterAttempt};
use super::suspend::Suspensions;
use super::timers::Timers;
use super::{Context, Delivery};
use crate::model::domain::Domain;
use crate::reporting::metrics as names;
use crate::resolve::mta_sts::MtaSts;
use crate::spool::{now_unix, Envelope};

/// What the operator changed that the scheduler acts on at once (the spool
/// already holds the change).
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
    /// Waiting messages by due time; their envelopes stay in the spool.
    timers: Timers,
    in_flight: HashSet<String>,
    /// Messages held while their attempt was in flight.
    hold_after: HashSet<String>,
    /// Messages whose last attempt could not be written to the spool: their
    /// state here is newer than the disk's, so it is the one attempted next.
    unsaved: HashMap<String, Envelope>,
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
        let upkeep_every =
            (ctx.config.delivery.queue_scan_interval.get()).max(Duration::from_millis(200));
        let mut q = Queue {
            timers: Timers::default(),
            in_flight: HashSet::new(),
            hold_after: HashSet::new(),
            unsaved: HashMap::new(),
            tasks: JoinSet::new(),
        };
        for env in initial {
            q.add(env);
        }
        let mut last_upkeep = Instant::now();
        loop {
            q.start_due(&ctx);
            let to_upkeep = upkeep_every.saturating_sub(last_upkeep.elapsed());
            let sleep = q
                .until_next(&ctx)
                .min(to_upkeep.max(Duration::from_millis(50)));
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
            if last_upkeep.elapsed() >= upkeep_every {
                last_upkeep = Instant::now();
                ctx.pool
                    .close_idle(ctx.config.delivery.connection_reuse_time.get())
                    .await;
                q.gauges(&ctx);
            }
        }
        q.drain(&ctx).await;
        ctx.pool.close_idle(Duration::ZERO).await;
    }
}

impl Queue {
    /// Starts an attempt for every due message; one waiting only for suspended
    /// domains is put back until the first of those suspensions ends.
    fn start_due(&mut self, ctx: &Arc<Context>) {
        let now = now_unix();
        let suspended = end_suspensions(ctx, now);
        while let Some(id) = self.timers.pop_due(now) {
            let env = match self.unsaved.remove(&id) {
                Some(env) => env,
                None => match ctx.spool.load(&id) {
                    Ok(env) => env,
                    // Removed meanwhile (delivered by a DSN path, deleted): nothing to do.
                    Err(_) => continue,
                },
            };
            if env.held {
                continue;
            }
            if suspended.blocks(&env, now) {
                self.timers.set(&id, resumes_at(&suspended, &env, now));
                continue;
            }
            self.in_flight.insert(id.clone());
            let ctx = ctx.clone();
            self.tasks
                .spawn(async move { (id, attempt(ctx, env).await) });
        }
    }

    /// How long until the next waiting message is due or a suspension ends
    /// (an hour when none waits).
    fn until_next(&self, ctx: &Context) -> Duration {
        let now = now_unix();
        let suspended = ctx.suspended.read().unwrap_or_else(|e| e.into_inner());
        (self.timers.next().into_iter())
            .chain(suspended.next_end(now))
            .min()
            .map_or(Duration::from_secs(3600), |t| {
                Duration::from_secs((t - now).max(0) as u64)
            })
    }

    /// A message announced by the inbound server (or a DSN, or one the operator
    /// retried or released); a message in flight is left to its attempt. A held
    /// message is not scheduled.
    fn add(&mut self, env: Envelope) {
        if env.held {
            self.timers.remove(&env.id);
            self.unsaved.remove(&env.id);
        } else if !self.in_flight.contains(&env.id) {
            self.unsaved.remove(&env.id);
            self.timers.set(&env.id, env.next_attempt);
        }
    }

    /// Carries out an operator's command.
    fn command(&mut self, ctx: &Context, cmd: Command) {
        match cmd {
            Command::Hold(ids) => {
                for id in ids {
                    self.timers.remove(&id);
                    if self.in_flight.contains(&id) {
                        self.hold_after.insert(id);
                    }
                }
            }
            Command::Forget(ids) => {
                for id in ids {
                    self.timers.remove(&id);
                    self.unsaved.remove(&id);
                }
            }
            Command::Suspensions(s) => {
                *ctx.suspended.write().unwrap_or_else(|e| e.into_inner()) = s;
                // A resume may make blocked messages due before their suspension's end.
                for id in self.timers.ids() {
                    if let Ok(env) = ctx.spool.load(&id) {
                        self.timers.set(&id, env.next_attempt);
                    }
                }
            }
        }
    }

    /// An attempt ended; the message is scheduled again when it stays queued
    /// (and held again when it was held during the attempt).
    fn finished(&mut self, ctx: &Context, id: String, after: AfterAttempt) {
        self.in_flight.remove(&id);
        let hold = self.hold_after.remove(&id);
        match after {
            AfterAttempt::Removed => {}
            AfterAttempt::Queued(env) | AfterAttempt::Unsaved(env) if hold => hold_again(ctx, env),
            AfterAttempt::Queued(env) => self.timers.set(&id, env.next_attempt),
            AfterAttempt::Unsaved(env) => {
                self.timers.set(&id, env.next_attempt);
                self.unsaved.insert(id, env);
            }
        }
    }

    /// The queue gauges, from the spool's index (no disk read).
    fn gauges(&self, ctx: &Context) {
        let (size, oldest) = ctx.spool.size_and_oldest();
        metrics::gauge!(names::QUEUE_SIZE).set(size as f64);
        metrics::gauge!(names::QUEUE_OLDEST)
            .set(oldest.map_or(0, |t| (now_unix() - t).max(0)) as f64);
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

/// When a message that waits only for suspended domains may go: the first end
/// of those suspensions (at least a second from now).
fn resumes_at(suspended: &Suspensions, env: &Envelope, now: i64) -> i64 {
    env.pending()
        .filter_map(|r| Domain::of_address(&r.address).ok())
        .filter_map(|d| suspended.until(&d, now))
        .min()
        .unwrap_or(now + 60)
        .max(now + 1)
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
