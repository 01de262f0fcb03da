//! The whole relay in one place: spool recovery, inbound server and delivery,
//! started together and stopped together. `tlsrelay serve` and the integration
//! tests both use it.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;

use crate::config::Config;
use crate::delivery::{Delivery, DeliveryError};
use crate::inbound::Inbound;
use crate::ops::control::Handler;
use crate::ops::reload::Reloader;
use crate::resolve::dns::{Dns, DnsSettings, DnsSetupError};
use crate::spool::{Spool, SpoolError};

/// A relay that is listening; `run` serves until the shutdown signal.
pub struct Relay {
    config: Arc<Config>,
    reporter: Option<crate::reporting::reporter::Reporter>,
    inbound: Inbound,
    delivery: Delivery,
    initial: Vec<crate::spool::Envelope>,
    control: Handler,
    control_listener: tokio::net::UnixListener,
    /// Held so the periodic DNSSEC self-test runs as long as the relay does.
    _health: Arc<crate::reporting::health::Health>,
    /// The periodic early-warnings probe, when `[warnings] enabled` and delivery is on.
    warnings: Option<crate::reporting::early_warning::Task>,
    /// The fleet, with `[cluster]`.
    cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// The DNS settings of a configuration.
pub fn dns_settings(config: &Config) -> DnsSettings {
    DnsSettings {
        nameservers: config.dns.nameservers.iter().map(|n| n.0).collect(),
        trust_anchor: config.dns.trust_anchor_file.clone(),
        timeout: config.dns.timeout.get(),
        attempts: config.dns.attempts,
    }
}

/// Why the relay could not start; each names what to look at.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The spool directory cannot be opened or created.
    #[error("cannot open the spool {}: {source}", dir.display())]
    Spool {
        /// The spool directory.
        dir: std::path::PathBuf,
        /// What went wrong.
        source: SpoolError,
    },
    /// Another server holds the spool, or the lock cannot be taken.
    #[error("{0}")]
    Lock(SpoolError),
    /// The metrics endpoint cannot listen.
    #[error("{0}")]
    Metrics(String),
    /// The resolver cannot be set up (nameservers, trust anchor).
    #[error(transparent)]
    Dns(#[from] DnsSetupError),
    /// Delivery cannot be set up (roots, policies, MTA-STS cache, outcome log).
    #[error(transparent)]
    Delivery(#[from] DeliveryError),
    /// TLS reporting cannot be set up.
    #[error("{0}")]
    Reporter(String),
    /// `[cluster]` cannot be set up.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    /// The inbound listeners cannot start.
    #[error(transparent)]
    Inbound(#[from] crate::inbound::StartError),
    /// The control socket (for `tlsrelay queue …`) cannot listen.
    #[error("cannot listen on the control socket {}: {err} (a Unix socket path is limited to 107 bytes)", path.display())]
    Control {
        /// The socket.
        path: std::path::PathBuf,
        /// What failed.
        err: std::io::Error,
    },
}

impl Relay {
    /// Locks and recovers the spool, sets up DNS and TLS, and binds the listeners.
    pub async fn start(config: Arc<Config>) -> Result<Relay, StartError> {
        let listeners = crate::inbound::bind_listeners(&config.server.listen).await?;
        Relay::start_on(config, listeners).await
    }

    /// Like [`Relay::start`], on SMTP listeners bound earlier (by `serve`, as
    /// root, before it switches user): everything else, spool first, is opened here.
    pub async fn start_on(
        config: Arc<Config>,
        listeners: Vec<tokio::net::TcpListener>,
    ) -> Result<Relay, StartError> {
        let dir = &config.spool.dir;
        let spool = open_spool(dir, config.spool.segment_size)?;
        let health = crate::reporting::health::Health::new(&config);
        if let Some(addr) = config.metrics.listen {
            let posture = config.metrics.posture.then(|| dir.clone());
            crate::reporting::endpoint::start(addr, health.clone(), posture)
                .map_err(|e| StartError::Metrics(e.to_string()))?;
            let paths = if config.metrics.posture {
                "/metrics, /healthz, /readyz, /posture"
            } else {
                "/metrics, /healthz, /readyz"
            };
            tracing::info!(%addr, paths, "metrics endpoint listening");
        }
        let dns = Dns::new(&dns_settings(&config))?;
        if config.delivery.enabled {
            // In the background, and again and again: a slow resolver must not delay the
            // listener, and one that starts stripping DNSSEC later must still be seen.
            let weak = Arc::downgrade(&health);
            tokio::spawn(crate::reporting::health::run_self_tests(dns.clone(), weak));
        }
        let delivery = Delivery::new(config.clone(), spool.clone(), dns.clone())?;
        let cluster = crate::cluster::Cluster::open(&config)?;
        if let Some(c) = &cluster {
            delivery.join_cluster(c.clone());
        }
        let warnings = warnings_task(&config, &dns, &delivery)?;
        let control_dns = dns.clone();
        let reporter = if config.tls_rpt.enabled && config.delivery.enabled {
            Some(
                crate::reporting::reporter::Reporter::new(
                    config.clone(),
                    spool.clone(),
                    dns,
                    Some(delivery.queue_sender()),
                )
                .map_err(|e| StartError::Reporter(e.to_string()))?
                .in_cluster(cluster.clone()),
            )
        } else {
            None
        };
        let control = Handler {
            config: config.clone(),
            spool: spool.clone(),
            dns: control_dns,
            requeue: config.delivery.enabled.then(|| delivery.queue_sender()),
            scheduler: config.delivery.enabled.then(|| delivery.commands()),
            reloader: Arc::default(),
        };
        // Before the inbound listener: once mail is accepted, queue commands must reach us.
        let control_listener =
            crate::ops::control::bind(dir).map_err(|err| StartError::Control {
                path: crate::ops::control::socket_path(dir),
                err,
            })?;
        let queued = Some(delivery.queue_sender());
        let inbound = Inbound::with_listeners(config.clone(), spool, queued, listeners)?;
        Ok(Relay {
            cluster,
            _health: health,
            warnings,
            control_listener,
            config,
            reporter,
            inbound,
            delivery,
            initial: control.spool.list(),
            control,
        })
    }

    /// What SIGHUP and `tlsrelay reload` do: see [`Reloader::reload`].
    pub fn reloader(&self, config_path: Option<std::path::PathBuf>) -> Arc<Reloader> {
        let reloader = Arc::new(Reloader {
            config_path,
            current: std::sync::Mutex::new(self.config.clone()),
            slot: self.delivery.policy_slot(),
            mta_sts: self.delivery.mta_sts(),
            credentials: self.inbound.credentials(),
        });
        // `tlsrelay reload` reaches it through the control socket.
        let _ = self.control.reloader.set(reloader.clone());
        reloader
    }

    /// The spool this relay holds (open and locked while the relay lives).
    pub fn spool(&self) -> &Spool {
        &self.control.spool
    }

    /// Where a message stored by other means than inbound SMTP is announced to
    /// the scheduler (which never rescans the spool).
    pub fn queue_sender(&self) -> tokio::sync::mpsc::UnboundedSender<crate::spool::Envelope> {
        self.delivery.queue_sender()
    }

    /// The inbound listening addresses.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.inbound.local_addrs()
    }

    /// Serves until `shutdown` turns true, then stops both halves cleanly.
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        let day = std::time::Duration::from_secs(86_400);
        let watch = tokio::spawn(crate::ops::exceptions::watch(
            self.delivery.policy_slot(),
            day,
        ));
        let delivery = tokio::spawn(self.delivery.run(self.initial, shutdown.clone()));
        let control = self.control.clone();
        let stop = shutdown.clone();
        tokio::spawn(crate::ops::control::serve(
            control,
            self.control_listener,
            stop,
        ));
        if let Some(c) = &self.cluster {
            c.spawn_tasks(self.control.spool.clone(), shutdown.clone());
        }
        if let Some(r) = self.reporter {
            tokio::spawn(r.run(shutdown.clone()));
        }
        if let Some(w) = self.warnings {
            tokio::spawn(w.run(shutdown.clone()));
        }
        self.inbound.run(shutdown).await;
        let _ = delivery.await;
        watch.abort();
    }
}

/// The early-warnings task, with delivery's MTA-STS engine (or, when MTA-STS is
/// off and so never asked, one over the same cache directory).
fn warnings_task(
    config: &Arc<Config>,
    dns: &Dns,
    delivery: &Delivery,
) -> Result<Option<crate::reporting::early_warning::Task>, StartError> {
    if !(config.warnings.enabled && config.delivery.enabled) {
        return Ok(None);
    }
    let sts = match delivery.mta_sts() {
        Some(sts) => sts,
        None => {
            let settings = crate::resolve::mta_sts::FetchSettings {
                port: config.mta_sts.https_port,
                extra_roots: config.mta_sts.extra_roots.clone(),
                timeout: config.mta_sts.fetch_timeout.get(),
            };
            let dir = config.spool.dir.join("mta-sts");
            let sts = crate::resolve::mta_sts::MtaSts::new(dns.clone(), settings, &dir)
                .map_err(|e| StartError::Delivery(DeliveryError::MtaSts(e.to_string())))?;
            Arc::new(sts)
        }
    };
    Ok(Some(crate::reporting::early_warning::Task {
        config: config.clone(),
        dns: dns.clone(),
        sts,
        policies: delivery.policy_slot(),
        spool_dir: config.spool.dir.clone(),
    }))
}

/// Opens (locks, imports, replays) the spool and logs what recovery found.
fn open_spool(dir: &std::path::Path, segment_bytes: u64) -> Result<Spool, StartError> {
    let opts = crate::spool::Options {
        segment_bytes: segment_bytes.max(64 * 1024),
        ..Default::default()
    };
    let spool = Spool::open_with(dir, opts).map_err(|source| match source {
        SpoolError::Locked(_) => StartError::Lock(source),
        source => StartError::Spool {
            dir: dir.to_path_buf(),
            source,
        },
    })?;
    let rec = spool.recovery();
    tracing::info!(
        spool = %dir.display(),
        queued = rec.queued,
        segments = rec.segments,
        imported = rec.imported.messages,
        discarded_partial = rec.imported.discarded_partial,
        "spool recovered"
    );
    for d in &rec.dropped {
        tracing::error!(segment = d.seg, offset = d.offset, bytes = d.bytes, why = %d.why, "spool recovery dropped part of a segment");
    }
    for id in &rec.imported.corrupt {
        tracing::error!(id = %id, "damaged envelope moved to {}/corrupt; inspect it by hand", dir.display());
    }
    Ok(spool)
}
