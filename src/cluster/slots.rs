//! Fleet-wide connection slots: a limit that holds for all nodes together.
//!
//! One sorted set per limited key (`prefix:slot:KEY`): members are leases, scores
//! their expiry in Redis's own clock (no trust in the nodes' clocks). Taking a slot
//! drops the expired leases and adds one while fewer than `limit` remain, in one
//! Lua script. A held lease is renewed every third of its lifetime; a dead node's
//! leases expire with it, and a dropped [`SlotLease`] gives its slot back at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::Script;

use super::redis::Redis;
use super::ClusterError;

const ACQUIRE: &str = r#"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"#;

const RENEW: &str = r#"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1
"#;

/// Takes fleet-wide slots for this node.
pub struct Slots {
    redis: Arc<Redis>,
    prefix: String,
    node: String,
    ttl: Duration,
    seq: AtomicU64,
}

/// One held slot; renewed while held, given back when dropped.
pub struct SlotLease {
    renew: tokio::task::JoinHandle<()>,
    redis: Arc<Redis>,
    key: String,
    token: String,
}

impl Slots {
    /// Slots under `prefix` (`prefix:KEY`), leased by `node` for `ttl` at a time.
    pub fn new(redis: Arc<Redis>, prefix: String, node: &str, ttl: Duration) -> Slots {
        Slots {
            redis,
            prefix,
            node: node.to_string(),
            ttl,
            seq: AtomicU64::new(0),
        }
    }

    /// One of the `limit` slots of `key` for the fleet: `None` while all are
    /// taken; an error when Redis cannot be asked (then the local limit alone holds).
    pub async fn acquire(
        &self,
        key: &str,
        limit: usize,
    ) -> Result<Option<SlotLease>, ClusterError> {
        let key = format!("{}:{key}", self.prefix);
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let token = format!("{}:{}:{n}", self.node, std::process::id());
        let ttl = self.ttl.as_millis().to_string();
        let args = [token.clone(), limit.to_string(), ttl.clone()];
        let taken: i64 = self
            .redis
            .script(&Script::new(ACQUIRE), &[&key], &args)
            .await?;
        if taken == 0 {
            return Ok(None);
        }
        let renew = tokio::spawn(renew(
            self.redis.clone(),
            key.clone(),
            token.clone(),
            self.ttl,
        ));
        Ok(Some(SlotLease {
            renew,
            redis: self.redis.clone(),
            key,
            token,
        }))
    }

    /// Waits for one of the `limit` slots of `key`; `None` (go on under the local
    /// limit alone) when Redis cannot be asked.
    pub async fn wait(&self, key: &str, limit: usize) -> Option<SlotLease> {
        let mut pause = Duration::from_millis(20);
        loop {
            match self.acquire(key, limit).await {
                Ok(Some(lease)) => return Some(lease),
                Ok(None) => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                Err(e) => {
                    metrics::counter!(crate::model::metric::CLUSTER_LOCAL_FALLBACKS, "what" => "slots").increment(1);
                    tracing::debug!(key, error = %e, "fleet slot not available, local limit only");
                    return None;
                }
            }
        }
    }
}

/// Renews the lease every third of its lifetime, while it is held.
async fn renew(redis: Arc<Redis>, key: String, token: String, ttl: Duration) {
    let ttl_ms = ttl.as_millis().to_string();
    loop {
        tokio::time::sleep(ttl / 3).await;
        let args = [token.clone(), ttl_ms.clone()];
        let _ = redis
            .script::<i64>(&Script::new(RENEW), &[&key], &args)
            .await;
    }
}

impl Drop for SlotLease {
    fn drop(&mut self) {
        self.renew.abort();
        let (redis, key, token) = (self.redis.clone(), self.key.clone(), self.token.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            // When this fails the lease runs out by itself within the slot TTL.
            rt.spawn(async move {
                let _ = redis
                    .run::<i64>(redis::cmd("ZREM").arg(&key).arg(&token))
                    .await;
            });
        }
    }
}
