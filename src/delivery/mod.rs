//! Outbound delivery: the scheduler that takes queued messages to their
//! recipient domains, and one attempt at one domain.
//!
//! The scheduler ([`Delivery::run`]) keeps due messages moving. An attempt at a
//! message (`attempt`) runs its recipient domains concurrently and writes each
//! domain's result to the spool as soon as it is known. An attempt at a domain
//! (`execute`) gathers the facts, asks the pure plan, and walks it through the
//! SMTP `client`; the `observer` turns what happens into outcome records, metrics
//! and log lines.

mod attempt;
pub mod client;
mod execute;
mod observer;
mod pool;
mod recipient_log;
mod scheduler;
mod sites;
pub mod suspend;
mod timers;
pub(crate) mod transaction;

pub use scheduler::Command;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::config::Config;
use crate::model::domain::Domain;
use crate::model::mechanism::TlsDemand;
use crate::policy::facts::DomainFacts;
use crate::policy::local::{PolicyError, PolicySet};
use crate::policy::{plan_domain, DomainPlan, Settings};
use crate::reporting::outcome::OutcomeLog;
use crate::reporting::receipts::ReceiptLog;
use crate::resolve::dns::Dns;
use crate::resolve::gather::Gatherer;
use crate::resolve::mta_sts::{FetchSettings, MtaSts};
use crate::spool::{Envelope, Spool};
use crate::tls::{ClientTls, ClientTlsError};
use pool::Pool;

/// Everything an attempt needs, shared by all attempts.
pub struct Context {
    config: Arc<Config>,
    spool: Spool,
    dns: Dns,
    tls: ClientTls,
    outcomes: OutcomeLog,
    /// Delivery receipts, when `[receipts] enabled`.
    receipts: Option<Arc<ReceiptLog>>,
    connections: Arc<Semaphore>,
    per_domain: Mutex<HashMap<Domain, Arc<Semaphore>>>,
    pool: Pool,
    sites: sites::Sites,
    requeue: mpsc::UnboundedSender<Envelope>,
    mta_sts: Option<Arc<MtaSts>>,
    policies: PolicySlot,
    /// Domains the operator suspended: no attempt goes to them.
    suspended: std::sync::RwLock<suspend::Suspensions>,
    /// The fleet (`[cluster]`, issue 12): fleet-wide connection slots.
    cluster: std::sync::OnceLock<Arc<crate::cluster::Cluster>>,
}

/// Why delivery could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// A root certificate file is unusable.
    #[error(transparent)]
    Tls(#[from] ClientTlsError),
    /// The MTA-STS cache cannot be opened.
    #[error("{0}")]
    MtaSts(String),
    /// A local policy file is wrong (file, line and fix).
    #[error(transparent)]
    Policies(#[from] PolicyError),
    /// The suspensions file cannot be read (then nothing is delivered).
    #[error(transparent)]
    Suspensions(#[from] suspend::SuspendError),
    /// The receipt files cannot be opened.
    #[error("cannot open the delivery receipts in {}: {source}", dir.display())]
    Receipts {
        /// The receipts directory.
        dir: std::path::PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The outcome log cannot be opened.
    #[error("cannot open {}: {source}", dir.display())]
    Outcomes {
        /// The outcome directory.
        dir: std::path::PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
}

/// The local policies in force; replaced as a whole on reload (SIGHUP).
pub type PolicySlot = Arc<std::sync::RwLock<Arc<PolicySet>>>;

/// The delivery engine: build it with `new`, feed it with the sender from
/// `queue_sender`, and drive it with `run`.
pub struct Delivery {
    ctx: Arc<Context>,
    incoming: mpsc::UnboundedReceiver<Envelope>,
    commands: mpsc::UnboundedReceiver<Command>,
    command_tx: mpsc::UnboundedSender<Command>,
}

impl Delivery {
    /// Sets up TLS, MTA-STS, local policies and the outcome log.
    pub fn new(config: Arc<Config>, spool: Spool, dns: Dns) -> Result<Delivery, DeliveryError> {
        let tls = ClientTls::new(&config.delivery.extra_roots)?;
        let mta_sts = if config.mta_sts.enabled {
            let settings = FetchSettings {
                port: config.mta_sts.https_port,
                extra_roots: config.mta_sts.extra_roots.clone(),
                timeout: config.mta_sts.fetch_timeout.get(),
            };
            let dir = spool.dir().join("mta-sts");
            let engine = MtaSts::new(dns.clone(), settings, &dir);
            Some(Arc::new(
                engine.map_err(|e| DeliveryError::MtaSts(e.to_string()))?,
            ))
        } else {
            None
        };
        let policies = match &config.policies.dir {
            Some(dir) => PolicySet::load_dir(dir)?,
            None => PolicySet::empty(),
        };
        if !policies.is_empty() {
            tracing::info!(count = policies.len(), "local policies loaded");
        }
        let dir = spool.dir().join("outcomes");
        let outcomes =
            OutcomeLog::open(&dir).map_err(|source| DeliveryError::Outcomes { dir, source })?;
        let receipts = if config.receipts.enabled {
            let dir = spool.dir().join("receipts");
            let retention = config.receipts.retention.get();
            let log = ReceiptLog::open(&dir, retention)
                .map_err(|source| DeliveryError::Receipts { dir, source })?;
            Some(Arc::new(log))
        } else {
            None
        };
        let suspended = suspend::Suspensions::load(spool.dir())?;
        let (tx, rx) = mpsc::unbounded_channel();
        let (command_tx, commands) = mpsc::unbounded_channel();
        let ctx = Context {
            suspended: std::sync::RwLock::new(suspended),
            connections: Arc::new(Semaphore::new(config.delivery.max_connections)),
            config,
            spool,
            dns,
            tls,
            outcomes,
            receipts,
            per_domain: Mutex::new(HashMap::new()),
            pool: Pool::default(),
            sites: sites::Sites::default(),
            requeue: tx,
            mta_sts,
            policies: Arc::new(std::sync::RwLock::new(Arc::new(policies))),
            cluster: std::sync::OnceLock::new(),
        };
        Ok(Delivery {
            ctx: Arc::new(ctx),
            incoming: rx,
            commands,
            command_tx,
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

    /// Joins the fleet: its MTA-STS cache and connection slots (`[cluster]`).
    pub fn join_cluster(&self, cluster: Arc<crate::cluster::Cluster>) {
        if let Some(sts) = &self.ctx.mta_sts {
            sts.share_through(cluster.clone());
        }
        let _ = self.ctx.cluster.set(cluster);
    }

    /// Where new messages are announced (the inbound server sends each one here).
    pub fn queue_sender(&self) -> mpsc::UnboundedSender<Envelope> {
        self.ctx.requeue.clone()
    }

    /// Where the operator's holds and suspensions reach the scheduler.
    pub fn commands(&self) -> mpsc::UnboundedSender<Command> {
        self.command_tx.clone()
    }

    /// The facts and the plan an attempt at `domain` would use now: the very
    /// path of delivery, for comparing with `tlsrelay check`.
    pub async fn plan_for(&self, domain: &Domain, demand: TlsDemand) -> (DomainFacts, DomainPlan) {
        self.ctx.plan_for(domain, demand).await
    }
}

impl Context {
    /// Whether the operator suspended deliveries to `domain` now.
    fn is_suspended(&self, domain: &Domain) -> bool {
        let s = self.suspended.read().unwrap_or_else(|e| e.into_inner());
        s.until(domain, crate::spool::now_unix()).is_some()
    }

    /// Takes a permit for one more attempt at `domain` (`max_connections_per_domain`).
    async fn domain_permit(&self, domain: &Domain) -> OwnedSemaphorePermit {
        let per = {
            let mut map = self.per_domain.lock().expect("permit map lock");
            let limit = self.config.delivery.max_connections_per_domain;
            map.entry(domain.clone())
                .or_insert_with(|| Arc::new(Semaphore::new(limit)))
                .clone()
        };
        per.acquire_owned().await.expect("semaphore never closed")
    }

    /// In a fleet, one of the fleet-wide slots under `key` (`domain:…`, `site:…`);
    /// none alone, and none while Redis is down (the local limits hold then).
    async fn fleet_slot(&self, key: String, limit: usize) -> Option<crate::cluster::SlotLease> {
        let cluster = self.cluster.get()?;
        cluster.slots.wait(&key, limit).await
    }

    /// Gathers the facts of `domain` with the policies in force now, and plans.
    async fn plan_for(&self, domain: &Domain, demand: TlsDemand) -> (DomainFacts, DomainPlan) {
        let facts = self.gather(domain).await;
        let plan = plan_domain(&facts, Settings::of(&self.config.delivery), demand);
        (facts, plan)
    }

    /// Gathers the facts of `domain` with the policies in force now.
    async fn gather(&self, domain: &Domain) -> DomainFacts {
        let policies = self.policies.read().expect("policy lock").clone();
        Gatherer {
            dns: &self.dns,
            mta_sts: self.mta_sts.as_deref(),
            policies: &policies,
            port: self.config.delivery.port,
            max_hosts: self.config.delivery.max_hosts_per_attempt,
        }
        .gather(domain)
        .await
    }
}
