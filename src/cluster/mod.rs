//! Several tlsrelay nodes as one fleet, sharing state in Redis (or Valkey):
//! the MTA-STS policy cache, TLS-RPT counts and the sending of one report per
//! receiving domain and day, fleet-wide connection slots, and heartbeats for
//! `tlsrelay cluster status`.
//!
//! Redis only ever adds to what a node knows: each node keeps its own MTA-STS
//! cache, limits and outcome records, and goes on with them alone while Redis is
//! unreachable ([`redis::Redis`] logs the change and sets `tlsrelay_cluster_redis_up`).
//! Without a `[cluster]` section none of this runs.

pub mod redis;
pub mod reports;
pub mod slots;
pub mod status;
pub mod sts;

use std::sync::Arc;
use std::time::Duration;

use crate::config::{ClusterConfig, Config};
pub use slots::{SlotLease, Slots};

/// Why a cluster call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// `cluster.redis` is not a usable URL.
    #[error("cluster.redis: {0}")]
    Url(String),
    /// Redis cannot be reached (or did not answer in time): go on with local state.
    #[error("Redis unreachable: {0}")]
    Down(String),
    /// Redis answered with an error.
    #[error("Redis: {0}")]
    Redis(String),
    /// A value in Redis does not decode.
    #[error("bad value in Redis at {key}: {why}")]
    Value {
        /// The key.
        key: String,
        /// What is wrong.
        why: String,
    },
}

/// This node's handle on the fleet.
pub struct Cluster {
    /// The settings of `[cluster]`.
    pub config: ClusterConfig,
    /// The Redis connection.
    pub redis: Arc<redis::Redis>,
    /// Fleet-wide connection slots.
    pub slots: Slots,
}

impl Cluster {
    /// The fleet handle of `config`, when it has a `[cluster]` section.
    pub fn open(config: &Config) -> Result<Option<Arc<Cluster>>, ClusterError> {
        let Some(c) = &config.cluster else {
            return Ok(None);
        };
        let redis = redis::Redis::open(&c.redis, c.tls_ca_file.as_deref(), c.timeout.get())?;
        let redis = Arc::new(redis);
        let slots = Slots::new(redis.clone(), key(c, &["slot"]), &c.node, c.slot_ttl.get());
        tracing::info!(node = %c.node, redis = %redis.shown(), "cluster: this node shares state with its fleet");
        Ok(Some(Arc::new(Cluster {
            config: c.clone(),
            redis,
            slots,
        })))
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.config.node
    }

    /// The key `prefix:part:part…`.
    pub fn key(&self, parts: &[&str]) -> String {
        key(&self.config, parts)
    }

    /// Heartbeats and count pushes, until `shutdown`.
    pub fn spawn_tasks(
        self: &Arc<Self>,
        spool: crate::spool::Spool,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let beat = self.config.heartbeat_interval.get();
        let me = self.clone();
        let s = spool.clone();
        tokio::spawn(every(beat, shutdown.clone(), move || {
            let (me, s) = (me.clone(), s.clone());
            async move { me.heartbeat(&s).await }
        }));
        let push = self.config.push_interval.get();
        let me = self.clone();
        let dir = spool.dir().join("outcomes");
        tokio::spawn(every(push, shutdown, move || {
            let (me, dir) = (me.clone(), dir.clone());
            async move { me.push_recent(&dir).await }
        }));
    }
}

/// The key `prefix:part:part…` of `config`.
fn key(config: &ClusterConfig, parts: &[&str]) -> String {
    let mut k = config.prefix.clone();
    for p in parts {
        k.push(':');
        k.push_str(p);
    }
    k
}

/// Runs `job` now and every `interval` until `shutdown`.
async fn every<F, Fut>(interval: Duration, mut shutdown: tokio::sync::watch::Receiver<bool>, job: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    loop {
        job().await;
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        if *shutdown.borrow() {
            return;
        }
    }
}
