//! Outbound delivery: the scheduler that takes queued messages to their
//! recipient domains, and one attempt at one domain.
//!
//! The scheduler keeps due messages moving; an attempt at a message runs its
//! recipient domains concurrently and writes each domain's result to the spool as
//! soon as it is known, so a crash or restart re-sends as little as possible.

pub mod client;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::config::Config;
use crate::policy::local::PolicySet;
use crate::policy::{self, HostPlan, MxPlan, Requirement, StsRule};
use crate::protocol::dsn;
use crate::protocol::sts::Mode;
use crate::reporting::outcome::{Outcome, OutcomeLog, PolicyType, ResultType};
use crate::resolve::dns::{Answer, Dns};
use crate::resolve::mta_sts::{FetchSettings, MtaSts};
use crate::spool::{self, now_unix, Envelope, RcptState, Spool};
use crate::tls::ClientTls;
use client::{Reply, Session, Timeouts};

/// What became of one recipient in one attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum RcptOutcome {
    /// Accepted by `host`.
    Delivered {
        /// The MX host.
        host: String,
        /// How the host was authenticated (`dane`, `mta-sts`, `verify`, ...).
        auth: String,
        /// Its reply after the data.
        reply: String,
    },
    /// Permanently failed.
    Failed {
        /// Enhanced status code.
        status: String,
        /// Plain words.
        reason: String,
        /// The host whose reply decided it.
        remote: Option<String>,
        /// That reply.
        diagnostic: Option<String>,
    },
    /// Not delivered this time; retried later.
    Deferred {
        /// Plain words, naming every host tried and why it was not used.
        reason: String,
    },
}

/// An open session waiting for the next message to its domain: since when, and under which requirement.
type IdleSession = (Session, Instant, Requirement);

/// Everything an attempt needs, shared by all attempts.
pub struct Context {
    config: Arc<Config>,
    spool: Spool,
    dns: Dns,
    tls: ClientTls,
    outcomes: OutcomeLog,
    connections: Arc<Semaphore>,
    per_domain: Mutex<HashMap<String, Arc<Semaphore>>>,
    idle: Mutex<HashMap<String, Vec<IdleSession>>>,
    requeue: mpsc::UnboundedSender<Envelope>,
    mta_sts: Option<Arc<MtaSts>>,
    policies: PolicySlot,
}

/// The local policies in force; replaced as a whole on reload (SIGHUP).
pub type PolicySlot = Arc<std::sync::RwLock<Arc<PolicySet>>>;

/// The delivery engine: build it with `new`, feed it with the sender from
/// `queue_sender`, and drive it with `run`.
pub struct Delivery {
    ctx: Arc<Context>,
    incoming: mpsc::UnboundedReceiver<Envelope>,
}

impl Delivery {
    /// Sets up TLS, MTA-STS, local policies and the outcome log.
    pub fn new(config: Arc<Config>, spool: Spool, dns: Dns) -> Result<Delivery, String> {
        let tls = ClientTls::new(&config.delivery.extra_roots)?;
        let mta_sts = if config.mta_sts.enabled {
            let settings = FetchSettings {
                port: config.mta_sts.https_port,
                extra_roots: config.mta_sts.extra_roots.clone(),
                timeout: config.mta_sts.fetch_timeout.get(),
            };
            Some(Arc::new(
                MtaSts::new(dns.clone(), settings, &spool.dir().join("mta-sts"))
                    .map_err(|e| e.to_string())?,
            ))
        } else {
            None
        };
        let policies = match &config.policies.dir {
            Some(dir) => PolicySet::load_dir(dir).map_err(|e| e.to_string())?,
            None => PolicySet::empty(),
        };
        if !policies.is_empty() {
            tracing::info!(count = policies.len(), "local policies loaded");
        }
        let outcomes = OutcomeLog::open(&spool.dir().join("outcomes"))
            .map_err(|e| format!("cannot open {}/outcomes: {e}", spool.dir().display()))?;
        let (tx, rx) = mpsc::unbounded_channel();
        Ok(Delivery {
            ctx: Arc::new(Context {
                connections: Arc::new(Semaphore::new(config.delivery.max_connections)),
                config,
                spool,
                dns,
                tls,
                outcomes,
                per_domain: Mutex::new(HashMap::new()),
                idle: Mutex::new(HashMap::new()),
                requeue: tx,
                mta_sts,
                policies: Arc::new(std::sync::RwLock::new(Arc::new(policies))),
            }),
            incoming: rx,
        })
    }

    /// The local policies in force, for reloading on SIGHUP.
    pub fn policy_slot(&self) -> PolicySlot {
        self.ctx.policies.clone()
    }

    /// The MTA-STS engine, if enabled.
    pub fn mta_sts(&self) -> Option<Arc<MtaSts>> {
        self.ctx.mta_sts.clone()
    }

    /// Where new messages are announced (the inbound server sends each one here).
    pub fn queue_sender(&self) -> mpsc::UnboundedSender<Envelope> {
        self.ctx.requeue.clone()
    }

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
        let scan_every = ctx
            .config
            .delivery
            .queue_scan_interval
            .get()
            .max(Duration::from_millis(200));
        let mut waiting: HashMap<String, Envelope> =
            initial.into_iter().map(|e| (e.id.clone(), e)).collect();
        let mut in_flight: HashSet<String> = HashSet::new();
        let mut tasks: JoinSet<(String, Option<Envelope>)> = JoinSet::new();
        let mut last_scan = Instant::now();
        if let Some(sts) = ctx.mta_sts.clone() {
            let every = ctx
                .config
                .mta_sts
                .refresh_interval
                .get()
                .max(Duration::from_secs(60));
            let parallel = ctx.config.mta_sts.refresh_parallel;
            let mut stop = shutdown.clone();
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
        loop {
            let now = now_unix();
            let due: Vec<String> = waiting
                .values()
                .filter(|e| e.next_attempt <= now)
                .map(|e| e.id.clone())
                .collect();
            for id in due {
                let env = waiting.remove(&id).expect("listed above");
                in_flight.insert(id.clone());
                let ctx = ctx.clone();
                tasks.spawn(async move { (id, attempt(ctx, env).await) });
            }
            let until_next = waiting
                .values()
                .map(|e| e.next_attempt)
                .min()
                .map(|t| Duration::from_secs((t - now).max(1) as u64))
                .unwrap_or(scan_every);
            let sleep = until_next.min(
                scan_every
                    .saturating_sub(last_scan.elapsed())
                    .max(Duration::from_millis(50)),
            );
            tokio::select! {
                _ = shutdown.wait_for(|v| *v) => break,
                Some(env) = self.incoming.recv() => {
                    if !in_flight.contains(&env.id) {
                        waiting.insert(env.id.clone(), env);
                    }
                }
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Ok((id, env)) = done {
                        in_flight.remove(&id);
                        if let Some(env) = env {
                            waiting.insert(id, env);
                        }
                    }
                }
                _ = tokio::time::sleep(sleep) => {}
            }
            if last_scan.elapsed() >= scan_every {
                last_scan = Instant::now();
                close_idle(&ctx, ctx.config.delivery.connection_reuse_time.get()).await;
                // The disk is the truth: pick up `queue retry`, `queue delete` and DSNs.
                let spool = ctx.spool.clone();
                if let Ok(Ok(on_disk)) = tokio::task::spawn_blocking(move || spool.list()).await {
                    let ids: HashSet<String> = on_disk.iter().map(|e| e.id.clone()).collect();
                    let oldest = on_disk.iter().map(|e| e.received_at).min();
                    metrics::gauge!(crate::reporting::metrics::QUEUE_SIZE)
                        .set(on_disk.len() as f64);
                    metrics::gauge!(crate::reporting::metrics::QUEUE_OLDEST)
                        .set(oldest.map_or(0, |t| (now_unix() - t).max(0)) as f64);
                    waiting.retain(|id, _| ids.contains(id));
                    for env in on_disk {
                        if !in_flight.contains(&env.id) {
                            waiting.insert(env.id.clone(), env);
                        }
                    }
                }
            }
        }
        let grace = ctx.config.server.shutdown_grace.get();
        if !tasks.is_empty() {
            tracing::info!(
                attempts = tasks.len(),
                "waiting for delivery attempts in flight"
            );
        }
        if tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} })
            .await
            .is_err()
        {
            tasks.abort_all();
        }
        close_idle(&ctx, Duration::ZERO).await;
    }
}

/// Closes pooled sessions idle for longer than `max_idle`.
async fn close_idle(ctx: &Context, max_idle: Duration) {
    let expired: Vec<Session> = {
        let mut idle = ctx.idle.lock().unwrap();
        let mut out = Vec::new();
        for list in idle.values_mut() {
            let mut keep = Vec::new();
            for (s, since, req) in list.drain(..) {
                if since.elapsed() >= max_idle {
                    out.push(s);
                } else {
                    keep.push((s, since, req));
                }
            }
            *list = keep;
        }
        idle.retain(|_, l| !l.is_empty());
        out
    };
    for s in expired {
        s.quit().await;
    }
}

/// One attempt at every pending recipient of a message. Returns the envelope
/// to keep queued, or None when the message is finished and removed.
async fn attempt(ctx: Arc<Context>, mut env: Envelope) -> Option<Envelope> {
    let spool = ctx.spool.clone();
    let id = env.id.clone();
    let message = match tokio::task::spawn_blocking(move || spool.read_message(&id)).await {
        Ok(Ok(m)) => Arc::new(m),
        other => {
            tracing::error!(id = %env.id, error = ?other.err(), "cannot read the queued message; will retry");
            env.next_attempt = now_unix() + 60;
            return Some(env);
        }
    };
    if !ctx.config.delivery.enabled {
        env.next_attempt = now_unix() + 3600;
        return Some(env);
    }
    let mut by_domain: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, r) in env.recipients.iter().enumerate() {
        if r.state == RcptState::Queued {
            by_domain.entry(domain_of(&r.address)).or_default().push(i);
        }
    }
    let mut domains = JoinSet::new();
    for (domain, idxs) in by_domain {
        let ctx = ctx.clone();
        let env = env.clone();
        let message = message.clone();
        domains.spawn(async move {
            let results = deliver_domain(&ctx, &env, &message, &domain, &idxs).await;
            results
        });
    }
    let mut newly_failed = Vec::new();
    while let Some(done) = domains.join_next().await {
        let Ok(results) = done else { continue };
        for (i, outcome) in results {
            let r = &mut env.recipients[i];
            match outcome {
                RcptOutcome::Delivered { host, reply, auth } => {
                    metrics::counter!(crate::reporting::metrics::DELIVERIES, "result" => "delivered", "auth" => auth).increment(1);
                    r.state = RcptState::Delivered;
                    r.status = Some(reply);
                    r.last_reason = Some(format!("delivered to {host}"));
                }
                RcptOutcome::Failed {
                    status,
                    reason,
                    remote,
                    diagnostic,
                } => {
                    metrics::counter!(crate::reporting::metrics::DELIVERIES, "result" => "failed", "auth" => "none").increment(1);
                    r.state = RcptState::Failed;
                    r.status = Some(status.clone());
                    r.last_reason = Some(reason.clone());
                    newly_failed.push(dsn::RecipientStatus {
                        address: r.address.clone(),
                        orcpt: r.orcpt.clone(),
                        status,
                        remote_mta: remote,
                        diagnostic,
                        reason,
                    });
                    let _ = &newly_failed;
                }
                RcptOutcome::Deferred { reason } => {
                    metrics::counter!(crate::reporting::metrics::DELIVERIES, "result" => "deferred", "auth" => "none").increment(1);
                    r.last_reason = Some(reason);
                }
            }
        }
        if !persist(&ctx, &env).await {
            return None;
        }
    }
    env.attempts += 1;
    let now = now_unix();
    let d = &ctx.config.delivery;
    let pending: Vec<usize> = env
        .recipients
        .iter()
        .enumerate()
        .filter(|(_, r)| r.state == RcptState::Queued)
        .map(|(i, _)| i)
        .collect();
    if !pending.is_empty() && now - env.received_at >= d.queue_lifetime.get().as_secs() as i64 {
        for &i in &pending {
            let r = &mut env.recipients[i];
            let reason = format!(
                "gave up after {} in the queue ({} attempts); last attempt: {}",
                d.queue_lifetime,
                env.attempts,
                r.last_reason.as_deref().unwrap_or("no attempt completed")
            );
            r.state = RcptState::Failed;
            r.status = Some("5.4.7".into());
            r.last_reason = Some(reason.clone());
            newly_failed.push(dsn::RecipientStatus {
                address: r.address.clone(),
                orcpt: r.orcpt.clone(),
                status: "5.4.7".into(),
                remote_mta: None,
                diagnostic: None,
                reason,
            });
        }
    }
    let failed_wanted: Vec<dsn::RecipientStatus> = newly_failed
        .into_iter()
        .filter(|s| {
            env.recipients
                .iter()
                .find(|r| r.address == s.address)
                .is_some_and(|r| dsn::wanted(&r.notify, dsn::Kind::Failure))
        })
        .collect();
    if !failed_wanted.is_empty() {
        queue_dsn(&ctx, &env, &message, dsn::Kind::Failure, &failed_wanted).await;
    }
    let step = d.retry_schedule[(env.attempts as usize - 1).min(d.retry_schedule.len() - 1)];
    env.next_attempt = now + step.get().as_secs() as i64;
    let delay_after = d.delay_notice_after.get().as_secs() as i64;
    if !env.is_finished()
        && !env.delay_notice_sent
        && delay_after > 0
        && now - env.received_at >= delay_after
    {
        let delayed: Vec<dsn::RecipientStatus> = env
            .pending()
            .filter(|r| dsn::wanted(&r.notify, dsn::Kind::Delay))
            .map(|r| dsn::RecipientStatus {
                address: r.address.clone(),
                orcpt: r.orcpt.clone(),
                status: "4.4.7".into(),
                remote_mta: None,
                diagnostic: None,
                reason: r.last_reason.clone().unwrap_or_default(),
            })
            .collect();
        if !delayed.is_empty() {
            queue_dsn(&ctx, &env, &message, dsn::Kind::Delay, &delayed).await;
        }
        env.delay_notice_sent = true;
    }
    if env.is_finished() {
        let spool = ctx.spool.clone();
        let id = env.id.clone();
        let _ = tokio::task::spawn_blocking(move || spool.remove(&id)).await;
        tracing::info!(id = %env.id, "finished; removed from the queue");
        return None;
    }
    if !persist(&ctx, &env).await {
        return None;
    }
    Some(env)
}

/// Writes the envelope; false when the message vanished (deleted by the operator).
async fn persist(ctx: &Context, env: &Envelope) -> bool {
    let spool = ctx.spool.clone();
    let env2 = env.clone();
    match tokio::task::spawn_blocking(move || spool.update(&env2)).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::info!(id = %env.id, "message was removed from the queue during the attempt");
            false
        }
        other => {
            tracing::error!(id = %env.id, error = ?other, "cannot update the envelope");
            true
        }
    }
}

/// Stores a DSN to the envelope sender (never for the null sender) and queues it.
async fn queue_dsn(
    ctx: &Context,
    env: &Envelope,
    message: &[u8],
    kind: dsn::Kind,
    rcpts: &[dsn::RecipientStatus],
) {
    if env.sender.is_empty() {
        return;
    }
    let body = dsn::build(&ctx.config.server.hostname, env, message, kind, rcpts);
    let notice = dsn::notice_envelope(env, &ctx.config.server.hostname, body.len() as u64);
    let spool = ctx.spool.clone();
    let n2 = notice.clone();
    match tokio::task::spawn_blocking(move || spool.store(&n2, &body)).await {
        Ok(Ok(())) => {
            tracing::info!(id = %env.id, dsn = %notice.id, kind = ?kind, to = %env.sender, recipients = rcpts.len(), "delivery status notification queued");
            let _ = ctx.requeue.send(notice);
        }
        other => tracing::error!(id = %env.id, error = ?other, "cannot queue the DSN"),
    }
}

/// The lower-case domain of an address.
fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map(|(_, d)| d)
        .unwrap_or(address)
        .trim_end_matches('.')
        .to_lowercase()
}

/// The domain in the ASCII (A-label) form DNS and TLS use.
fn ascii_domain(domain: &str) -> String {
    hickory_resolver::proto::rr::Name::from_utf8(domain)
        .map(|n| n.to_ascii().trim_end_matches('.').to_string())
        .unwrap_or_else(|_| domain.to_string())
}

fn all(idxs: &[usize], o: RcptOutcome) -> Vec<(usize, RcptOutcome)> {
    idxs.iter().map(|&i| (i, o.clone())).collect()
}

/// Takes a permit for one more connection to `domain`.
async fn connection_permits(
    ctx: &Context,
    domain: &str,
) -> (OwnedSemaphorePermit, OwnedSemaphorePermit) {
    let per = {
        let mut map = ctx.per_domain.lock().unwrap();
        map.entry(domain.to_string())
            .or_insert_with(|| {
                Arc::new(Semaphore::new(
                    ctx.config.delivery.max_connections_per_domain,
                ))
            })
            .clone()
    };
    let d = per.acquire_owned().await.expect("semaphore never closed");
    let g = ctx
        .connections
        .clone()
        .acquire_owned()
        .await
        .expect("semaphore never closed");
    (d, g)
}

/// One attempt at the recipients `idxs` (all in `domain`) of a message.
async fn deliver_domain(
    ctx: &Context,
    env: &Envelope,
    message: &[u8],
    domain: &str,
    idxs: &[usize],
) -> Vec<(usize, RcptOutcome)> {
    let _permits = connection_permits(ctx, domain).await;
    let d = &ctx.config.delivery;
    // A session kept open from a recent delivery to this domain.
    let pooled = {
        let mut idle = ctx.idle.lock().unwrap();
        idle.get_mut(domain).and_then(|l| l.pop())
    };
    if let Some((mut session, _, req)) = pooled {
        // A pooled session was chosen for ordinary mail: REQUIRETLS and
        // TLS-Required: No messages take the full path.
        let special =
            env.requiretls || env.tls_report || (env.tls_required_no && d.honor_tls_required_no);
        if special {
            ctx.idle
                .lock()
                .unwrap()
                .entry(domain.to_string())
                .or_default()
                .push((session, Instant::now(), req));
        } else if session.reset().await {
            if let Some(results) =
                transact(ctx, env, message, domain, idxs, session, &req, true).await
            {
                return results;
            }
        }
    }
    let ascii = ascii_domain(domain);
    let local = ctx.policies.read().unwrap().lookup(&ascii).cloned();
    // A local policy decides for its domain; otherwise MTA-STS may.
    let sts = match (&local, &ctx.mta_sts) {
        (None, Some(engine)) => {
            let found = match crate::model::domain::Domain::parse(&ascii) {
                Ok(d) => engine.lookup(&d).await,
                Err(_) => Default::default(),
            };
            if let Some((result, words)) = &found.error {
                record(
                    ctx,
                    env,
                    domain,
                    "",
                    None,
                    PolicyType::Sts,
                    None,
                    Some(*result),
                    words,
                    &Facts::default(),
                );
            }
            found.policy.map(|(p, _)| p)
        }
        _ => None,
    };
    let sts_facts = sts.as_ref().map(Facts::sts).unwrap_or_default();
    let rule = match &sts {
        Some(p) if p.mode == Mode::Enforce => StsRule::Enforce(p),
        Some(p) if p.mode == Mode::Testing => StsRule::Testing(p),
        _ => StsRule::Absent,
    };
    let plan = policy::plan_mx(&ascii, ctx.dns.mx(&ascii).await);
    let hosts = match plan {
        MxPlan::Fail { status, reason } => {
            log_domain(env, domain, &format!("failed: {reason}"));
            return all(
                idxs,
                RcptOutcome::Failed {
                    status: status.into(),
                    reason,
                    remote: None,
                    diagnostic: None,
                },
            );
        }
        MxPlan::Defer { reason, result } => {
            log_domain(env, domain, &format!("deferred: {reason}"));
            if let Some(result) = result {
                record(
                    ctx,
                    env,
                    domain,
                    "",
                    None,
                    PolicyType::NoPolicyFound,
                    None,
                    Some(result),
                    &reason,
                    &Facts::default(),
                );
            }
            return all(idxs, RcptOutcome::Deferred { reason });
        }
        MxPlan::Hosts {
            hosts, security, ..
        } => (hosts, security),
    };
    let (hosts, mx_security) = hosts;
    let mut reasons: Vec<String> = Vec::new();
    // Hosts refused because of REQUIRETLS; if that is every refusal, the message fails (5.7.30).
    let mut requiretls_refusals = 0usize;
    // RFC 8460 §5.3 asks that reports be delivered despite TLS failures; RFC 8689 §5
    // lets a sender waive authentication. Either way TLS itself stays mandatory.
    let relaxed =
        (env.tls_required_no && d.honor_tls_required_no || env.tls_report) && !env.requiretls;
    if relaxed {
        tracing::info!(id = %env.id, domain, "TLS-Required: No honoured: TLS without certificate checks for this message");
    }
    let timeouts = Timeouts {
        connect: d.connect_timeout.get(),
        command: d.command_timeout.get(),
        data: d.data_timeout.get(),
    };
    for mx in hosts.iter().take(d.max_hosts_per_attempt) {
        let (addrs, addr_security, canonical) = match ctx.dns.addresses(&mx.host).await {
            Answer::Records {
                records,
                security,
                owner,
            } => (records, security, owner),
            Answer::NoRecords { .. } | Answer::NxDomain { .. } => {
                reasons.push(format!("{} has no address records", mx.host));
                continue;
            }
            Answer::Bogus(why) => {
                let reason = format!(
                    "DNSSEC validation of the addresses of {} failed: {why}",
                    mx.host
                );
                tracing::info!(id = %env.id, domain, host = %mx.host, tls = "refused:dnssec-invalid", reason = %reason, "attempt");
                record(
                    ctx,
                    env,
                    domain,
                    &mx.host,
                    None,
                    PolicyType::NoPolicyFound,
                    None,
                    Some(ResultType::DnssecInvalid),
                    &reason,
                    &Facts::default(),
                );
                reasons.push(reason);
                continue;
            }
            Answer::TempFail(why) => {
                reasons.push(format!(
                    "address lookup for {} failed temporarily: {why}",
                    mx.host
                ));
                continue;
            }
        };
        let (base, tlsa) = if policy::wants_tlsa(mx_security, addr_security) {
            tlsa_for(ctx, &mx.host, &canonical).await
        } else {
            (mx.host.clone(), None)
        };
        if let StsRule::Testing(p) = rule {
            if !p.allows(&mx.host) {
                tracing::info!(id = %env.id, domain, host = %mx.host, "MTA-STS testing mode: this host is not in the policy; enforcement would refuse it");
            }
        }
        let tlsa_answer = tlsa.clone();
        let plan = match &local {
            _ if relaxed => HostPlan::Connect(Requirement {
                mechanism: if env.tls_report {
                    "encrypt (TLS report)"
                } else {
                    "encrypt (TLS-Required: No)"
                },
                ..policy::requirement(&mx.host, crate::config::Floor::Encrypt)
            }),
            Some(lp) => policy::local_host_plan(lp, &ascii, &mx.host, &base, tlsa),
            None => policy::host_plan(&mx.host, &base, d.floor, tlsa, rule),
        };
        let plan = match plan {
            HostPlan::Connect(req) if env.requiretls => {
                let sts_ok =
                    matches!(rule, StsRule::Enforce(p) | StsRule::Testing(p) if p.allows(&mx.host));
                match policy::requiretls_ok(&req, mx_security, sts_ok) {
                    Ok(()) => HostPlan::Connect(req),
                    Err(why) => {
                        let reason = format!("{}: {why}", mx.host);
                        tracing::info!(id = %env.id, domain, host = %mx.host, tls = %req.mechanism, result = "requiretls-refused", reason = %reason, "attempt");
                        requiretls_refusals += 1;
                        reasons.push(reason);
                        continue;
                    }
                }
            }
            other => other,
        };
        let req = match plan {
            HostPlan::Connect(req) => req,
            HostPlan::Skip { reason, result } => {
                tracing::info!(id = %env.id, domain, host = %mx.host, tls = %format!("refused:{}", result.map_or("dns", |r| r.as_str())), reason = %reason, "attempt");
                let ptype = if local.is_some() {
                    PolicyType::NoPolicyFound
                } else if matches!(
                    result,
                    Some(ResultType::DnssecInvalid | ResultType::TlsaInvalid)
                ) {
                    PolicyType::Tlsa
                } else if matches!(rule, StsRule::Enforce(_)) {
                    PolicyType::Sts
                } else {
                    PolicyType::NoPolicyFound
                };
                let facts = match ptype {
                    PolicyType::Sts => sts_facts.clone(),
                    PolicyType::Tlsa => Facts::tlsa(tlsa_answer.as_ref()),
                    PolicyType::NoPolicyFound => Facts::default(),
                };
                record(
                    ctx, env, domain, &mx.host, None, ptype, None, result, &reason, &facts,
                );
                reasons.push(reason);
                continue;
            }
        };
        let host_facts = match req.policy {
            PolicyType::Sts => sts_facts.clone(),
            PolicyType::Tlsa => Facts::tlsa(tlsa_answer.as_ref()),
            PolicyType::NoPolicyFound => Facts::default(),
        };
        for ip in addrs {
            let addr = SocketAddr::new(ip, d.port);
            let tls = if req.tls13_only {
                ctx.tls.config_tls13(&req.check)
            } else {
                ctx.tls.config(&req.check)
            };
            match Session::open(
                &mx.host,
                addr,
                ctx.config.helo_name(),
                tls,
                &req.sni,
                timeouts,
            )
            .await
            {
                Err(e) => {
                    let token = match e.result {
                        Some(r) => format!("refused:{}", r.as_str()),
                        None => "none".into(),
                    };
                    tracing::info!(id = %env.id, domain, host = %mx.host, addr = %addr, tls = %token, result = "host-refused", reason = %e.reason, "attempt");
                    if e.result.is_some() {
                        record(
                            ctx,
                            env,
                            domain,
                            &mx.host,
                            Some(addr),
                            req.policy,
                            Some(req.mechanism),
                            e.result,
                            &e.reason,
                            &host_facts.clone().from(e.local.map(|a| a.ip())),
                        );
                    }
                    reasons.push(e.reason);
                }
                Ok(session) if env.requiretls && !session.caps.requiretls => {
                    let reason = format!(
                        "{}[{}] does not offer REQUIRETLS, which the sender asked for (RFC 8689)",
                        mx.host,
                        addr.ip()
                    );
                    tracing::info!(id = %env.id, domain, host = %mx.host, addr = %addr, tls = %req.mechanism, result = "requiretls-refused", reason = %reason, "attempt");
                    session.quit().await;
                    requiretls_refusals += 1;
                    reasons.push(reason);
                }
                Ok(session) => {
                    record(
                        ctx,
                        env,
                        domain,
                        &mx.host,
                        Some(addr),
                        req.policy,
                        Some(req.mechanism),
                        None,
                        "TLS session established and authenticated",
                        &host_facts.clone().from(session.local_addr.map(|a| a.ip())),
                    );
                    if let Some(results) =
                        transact(ctx, env, message, domain, idxs, session, &req, false).await
                    {
                        return results;
                    }
                    reasons.push(format!(
                        "{}[{}] dropped the connection during the transaction",
                        mx.host,
                        addr.ip()
                    ));
                }
            }
        }
    }
    let only_requiretls = requiretls_refusals > 0 && requiretls_refusals == reasons.len();
    if hosts.len() > d.max_hosts_per_attempt {
        reasons.push(format!(
            "{} more MX host(s) not tried (delivery.max_hosts_per_attempt)",
            hosts.len() - d.max_hosts_per_attempt
        ));
    }
    let reason = if reasons.is_empty() {
        format!("no usable MX host for {domain}")
    } else {
        reasons.join("; ")
    };
    if env.requiretls && only_requiretls {
        return all(
            idxs,
            RcptOutcome::Failed {
                status: "5.7.30".into(),
                reason: format!("REQUIRETLS support required, and no MX host of {domain} could provide it: {reason}"),
                remote: None,
                diagnostic: None,
            },
        );
    }
    all(idxs, RcptOutcome::Deferred { reason })
}

/// The TLSA answer for an MX host and its TLSA base domain (RFC 7672 §2.2.2): a
/// secure CNAME target first, then the MX host name itself.
async fn tlsa_for(
    ctx: &Context,
    host: &str,
    canonical: &str,
) -> (String, Option<crate::resolve::dns::TlsaAnswer>) {
    let port = ctx.config.delivery.port;
    tracing::debug!(host, canonical, "TLSA base domain candidates");
    if !canonical.is_empty() && !canonical.eq_ignore_ascii_case(host) {
        let answer = ctx.dns.tlsa(port, canonical).await;
        if !matches!(answer, Answer::NoRecords { .. } | Answer::NxDomain { .. }) {
            return (canonical.to_ascii_lowercase(), Some(answer));
        }
    }
    (host.to_string(), Some(ctx.dns.tlsa(port, host).await))
}

/// What TLS-RPT needs to know about the policy behind an outcome (RFC 8460 §4.4).
#[derive(Debug, Clone, Default)]
struct Facts {
    sending_ip: Option<String>,
    policy_strings: Vec<String>,
    mx_patterns: Vec<String>,
}

impl Facts {
    /// The facts of an MTA-STS policy: its lines and mx patterns.
    fn sts(p: &crate::protocol::sts::StsPolicy) -> Facts {
        Facts {
            sending_ip: None,
            policy_strings: p
                .text
                .lines()
                .map(str::to_string)
                .filter(|l| !l.is_empty())
                .collect(),
            mx_patterns: p.mx_strings(),
        }
    }

    /// The facts of a TLSA answer: its records, one per string.
    fn tlsa(answer: Option<&crate::resolve::dns::TlsaAnswer>) -> Facts {
        let policy_strings = match answer {
            Some(Answer::Records { records, .. }) => records
                .iter()
                .map(|r| {
                    let hex: String = r.data.iter().map(|b| format!("{b:02X}")).collect();
                    format!("{} {} {} {hex}", r.usage, r.selector, r.matching)
                })
                .collect(),
            _ => vec![],
        };
        Facts {
            policy_strings,
            ..Facts::default()
        }
    }

    fn from(mut self, ip: Option<std::net::IpAddr>) -> Facts {
        self.sending_ip = ip.map(|i| i.to_string());
        self
    }
}

fn log_domain(env: &Envelope, domain: &str, what: &str) {
    tracing::info!(id = %env.id, domain, result = %what, "attempt");
}

#[allow(clippy::too_many_arguments)]
fn record(
    ctx: &Context,
    env: &Envelope,
    domain: &str,
    host: &str,
    addr: Option<SocketAddr>,
    policy: PolicyType,
    auth: Option<&str>,
    result: Option<ResultType>,
    detail: &str,
    facts: &Facts,
) {
    let o = Outcome {
        time: now_unix(),
        queue_id: env.id.clone(),
        domain: domain.to_string(),
        mx_host: host.to_string(),
        addr: addr.map(|a| a.ip().to_string()),
        policy,
        auth: auth.map(str::to_string),
        tls_ok: result.is_none(),
        result,
        report_mail: env.tls_report,
        detail: detail.to_string(),
        sending_ip: facts.sending_ip.clone(),
        policy_strings: facts.policy_strings.clone(),
        mx_patterns: facts.mx_patterns.clone(),
    };
    if let Some(r) = result {
        metrics::counter!(crate::reporting::metrics::REFUSALS, "result_type" => r.as_str())
            .increment(1);
        if r == ResultType::DnssecInvalid {
            metrics::counter!(crate::reporting::metrics::DNSSEC_FAILURES).increment(1);
        }
    }
    if let Err(e) = ctx.outcomes.append(&o) {
        tracing::warn!(error = %e, "cannot record the outcome");
    }
}

/// xtext (RFC 3461 §4): `+HH` for `+`, `=`, and bytes outside 33..=126.
fn xtext(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if (33..=126).contains(&b) && b != b'+' && b != b'=' {
            out.push(b as char);
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

/// Runs the transaction on an open session. None when the session broke before
/// any recipient was settled (the caller tries elsewhere).
#[allow(clippy::too_many_arguments)]
async fn transact(
    ctx: &Context,
    env: &Envelope,
    message: &[u8],
    domain: &str,
    idxs: &[usize],
    mut session: Session,
    req: &Requirement,
    reused: bool,
) -> Option<Vec<(usize, RcptOutcome)>> {
    let where_ = format!("{}[{}]", session.host, session.addr.ip());
    let fail_all = |status: &str, reason: String| {
        all(
            idxs,
            RcptOutcome::Failed {
                status: status.into(),
                reason,
                remote: Some(session.host.clone()),
                diagnostic: None,
            },
        )
    };
    if env.smtputf8 && !session.caps.smtputf8 {
        let r = fail_all(
            "5.6.7",
            format!("{where_} does not support SMTPUTF8, which this message needs"),
        );
        session.quit().await;
        return Some(r);
    }
    if let Some(limit) = session.caps.size.filter(|&l| l > 0 && env.size > l) {
        let r = fail_all(
            "5.3.4",
            format!(
                "{where_} accepts at most {limit} bytes; the message has {}",
                env.size
            ),
        );
        session.quit().await;
        return Some(r);
    }
    let caps = session.caps.clone();
    let mut mail = format!("MAIL FROM:<{}>", env.sender);
    if caps.size.is_some() {
        mail.push_str(&format!(" SIZE={}", env.size));
    }
    if env.body == spool::BodyType::EightBitMime && caps.eightbitmime {
        mail.push_str(" BODY=8BITMIME");
    }
    if env.smtputf8 {
        mail.push_str(" SMTPUTF8");
    }
    if env.requiretls {
        mail.push_str(" REQUIRETLS");
    }
    if caps.dsn {
        match env.ret {
            Some(spool::DsnRet::Full) => mail.push_str(" RET=FULL"),
            Some(spool::DsnRet::Hdrs) => mail.push_str(" RET=HDRS"),
            None => {}
        }
        if let Some(envid) = &env.envid {
            mail.push_str(&format!(" ENVID={}", xtext(envid)));
        }
    }
    let rcpt_cmds: Vec<String> = idxs
        .iter()
        .map(|&i| {
            let r = &env.recipients[i];
            let mut c = format!("RCPT TO:<{}>", r.address);
            if caps.dsn {
                if !r.notify.is_empty() {
                    c.push_str(&format!(" NOTIFY={}", r.notify.join(",").to_uppercase()));
                }
                if let Some(o) = &r.orcpt {
                    c.push_str(&format!(" ORCPT=rfc822;{}", xtext(o)));
                }
            }
            c
        })
        .collect();
    let replies = match session.transaction(&mail, &rcpt_cmds, message).await {
        Ok(r) => r,
        Err(e) => {
            tracing::info!(id = %env.id, domain, host = %session.host, error = %e, reused, "session failed during the transaction");
            return None;
        }
    };
    let diag = |r: &Reply| Some(r.one_line());
    let status_of = |r: &Reply, default: &str| r.enhanced().unwrap_or_else(|| default.to_string());
    let mut results = Vec::new();
    let mail_reply = replies.mail.clone().expect("MAIL always has a reply");
    if !mail_reply.is_ok() {
        let o = if mail_reply.is_permanent() {
            RcptOutcome::Failed {
                status: status_of(&mail_reply, "5.0.0"),
                reason: format!("{where_} refused the sender: {}", mail_reply.one_line()),
                remote: Some(session.host.clone()),
                diagnostic: diag(&mail_reply),
            }
        } else {
            RcptOutcome::Deferred {
                reason: format!("{where_} deferred the sender: {}", mail_reply.one_line()),
            }
        };
        results = all(idxs, o);
    } else {
        let mut accepted = Vec::new();
        for (k, &i) in idxs.iter().enumerate() {
            let Some(r) = replies.rcpts.get(k) else {
                continue;
            };
            if r.is_ok() {
                accepted.push(i);
            } else if r.is_permanent() {
                results.push((
                    i,
                    RcptOutcome::Failed {
                        status: status_of(r, "5.0.0"),
                        reason: format!("{where_} refused the recipient: {}", r.one_line()),
                        remote: Some(session.host.clone()),
                        diagnostic: diag(r),
                    },
                ));
            } else {
                results.push((
                    i,
                    RcptOutcome::Deferred {
                        reason: format!("{where_} deferred the recipient: {}", r.one_line()),
                    },
                ));
            }
        }
        if !accepted.is_empty() {
            let o = match &replies.data {
                Some(r) if r.is_ok() && replies.data_sent => RcptOutcome::Delivered {
                    host: session.host.clone(),
                    auth: req.mechanism.to_string(),
                    reply: r.one_line(),
                },
                Some(r) if r.is_permanent() => RcptOutcome::Failed {
                    status: status_of(r, "5.0.0"),
                    reason: format!("{where_} refused the message: {}", r.one_line()),
                    remote: Some(session.host.clone()),
                    diagnostic: diag(r),
                },
                Some(r) => RcptOutcome::Deferred {
                    reason: format!("{where_} deferred the message: {}", r.one_line()),
                },
                None => RcptOutcome::Deferred {
                    reason: format!("{where_} gave no reply to the message"),
                },
            };
            results.extend(accepted.into_iter().map(|i| (i, o.clone())));
        }
    }
    let delivered = results
        .iter()
        .filter(|(_, o)| matches!(o, RcptOutcome::Delivered { .. }))
        .count();
    tracing::info!(
        id = %env.id,
        domain,
        host = %session.host,
        addr = %session.addr,
        tls = %req.mechanism,
        version = %session.tls_version,
        cipher = %session.tls_cipher,
        reused,
        delivered,
        of = idxs.len(),
        result = %replies.data.as_ref().or(replies.mail.as_ref()).map(Reply::one_line).unwrap_or_default(),
        "attempt"
    );
    // Keep the session for the next message to this domain.
    if ctx.config.delivery.connection_reuse_time.get() > Duration::ZERO {
        ctx.idle
            .lock()
            .unwrap()
            .entry(domain.to_string())
            .or_default()
            .push((session, Instant::now(), req.clone()));
    } else {
        session.quit().await;
    }
    Some(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xtext_encoding() {
        assert_eq!(xtext("a+b=c d@x"), "a+2Bb+3Dc+20d@x");
        assert_eq!(xtext("plain"), "plain");
    }

    #[test]
    fn domains() {
        assert_eq!(domain_of("User@Example.COM."), "example.com");
        assert_eq!(ascii_domain("bücher.example"), "xn--bcher-kva.example");
    }
}
