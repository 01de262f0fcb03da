//! The fleet's MTA-STS cache: every node writes the policies it fetches and reads
//! the others' before it trusts its own view of a domain.
//!
//! One key per policy domain holds the [`CachedPolicy`] as JSON, living until the
//! policy expires. RFC 8461 ids only say "different", not "newer", so the policy
//! fetched last wins, on write (a Lua check in Redis) and on read ([`adopt`]).
//! A policy from Redis never weakens what a node knows: an expired one is ignored,
//! and one fetched earlier than the local entry (a stale `mode: none` too) is not taken.

use redis::Script;

use super::{Cluster, ClusterError};
use crate::model::domain::Domain;
use crate::resolve::mta_sts::CachedPolicy;

/// Sets the entry unless the one in Redis was fetched at the same time or later.
const PUT: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, c = pcall(cjson.decode, cur)
  if ok and tonumber(c.fetched_at) and tonumber(c.fetched_at) >= tonumber(ARGV[2]) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return 1
"#;

/// How far ahead of this node's clock another node's fetch time may be.
const CLOCK_SLACK: i64 = 300;

/// Whether a node takes `shared` (from Redis) over its `local` entry at `now`:
/// only an unexpired, valid policy fetched later than an unexpired local one.
pub fn adopt(local: Option<&CachedPolicy>, shared: &CachedPolicy, now: i64) -> bool {
    // A fetch time in the future (a node's clock far ahead, or a forged entry)
    // would outrank every later fetch: not taken.
    if shared.expires_at <= now
        || shared.fetched_at > now + CLOCK_SLACK
        || shared.parsed().is_none()
    {
        return false;
    }
    match local {
        Some(l) if l.expires_at > now => shared.fetched_at > l.fetched_at,
        _ => true,
    }
}

impl Cluster {
    /// The fleet's entry for `domain`, if any (not checked: see [`adopt`]).
    pub async fn sts_get(&self, domain: &Domain) -> Result<Option<CachedPolicy>, ClusterError> {
        let key = self.key(&["sts", domain.as_str()]);
        let text: Option<String> = self.redis.run(redis::cmd("GET").arg(&key)).await?;
        let Some(text) = text else {
            return Ok(None);
        };
        let entry: CachedPolicy = serde_json::from_str(&text).map_err(|e| ClusterError::Value {
            key: key.clone(),
            why: e.to_string(),
        })?;
        // The key names the domain; an entry claiming another is not used for it.
        Ok((Domain::parse(&entry.domain).ok().as_ref() == Some(domain)).then_some(entry))
    }

    /// Offers a freshly fetched entry to the fleet: stored unless Redis holds a later one.
    pub async fn sts_put(&self, entry: &CachedPolicy) -> Result<bool, ClusterError> {
        let ttl_ms = (entry.expires_at - crate::spool::now_unix()).max(1) * 1000;
        let key = self.key(&["sts", &entry.domain]);
        let json = serde_json::to_string(entry).map_err(|e| ClusterError::Value {
            key: key.clone(),
            why: e.to_string(),
        })?;
        let args = [json, entry.fetched_at.to_string(), ttl_ms.to_string()];
        let stored: i64 = self.redis.script(&Script::new(PUT), &[&key], &args).await?;
        Ok(stored == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(mode: &str, fetched_at: i64, expires_at: i64) -> CachedPolicy {
        CachedPolicy {
            domain: "example.com".into(),
            id: fetched_at.to_string(),
            policy: format!("version: STSv1\nmode: {mode}\nmx: mx.example.com\nmax_age: 86400\n"),
            fetched_at,
            expires_at,
        }
    }

    #[test]
    fn shared_policies_never_weaken_the_local_one() {
        let now = 1_000;
        let local = entry("enforce", 500, 2_000);
        let expired_local = entry("enforce", 100, 900);
        let mut garbage = entry("enforce", 800, 2_000);
        garbage.policy = "not a policy".into();
        // (local, shared, taken)
        let cases = [
            (None, entry("enforce", 500, 2_000), true),
            (None, entry("enforce", 500, 1_000), false),
            (Some(&local), entry("enforce", 600, 2_000), true),
            (Some(&local), entry("none", 600, 2_000), true),
            (Some(&local), entry("none", 400, 2_000), false),
            (Some(&local), entry("enforce", 500, 2_000), false),
            (Some(&local), entry("testing", 499, 5_000), false),
            (Some(&expired_local), entry("testing", 50, 1_500), true),
            (Some(&local), garbage, false),
            (Some(&local), entry("none", 1_301, 90_000), false),
            (Some(&local), entry("none", 1_300, 90_000), true),
        ];
        for (i, (local, shared, want)) in cases.into_iter().enumerate() {
            assert_eq!(adopt(local, &shared, now), want, "case {i}");
        }
    }
}
