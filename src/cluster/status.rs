//! Heartbeats and `tlsrelay cluster status`: each node writes a small hash every
//! few seconds (time, queue size, oldest message, version) that expires after
//! three missed beats; the status command reads them straight from Redis.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{Cluster, ClusterError};
use crate::spool::{now_unix, Spool};

/// Missed heartbeats after which a node's entry expires.
const MISSED_BEATS: u32 = 3;

/// One node as its last heartbeat shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct NodeStatus {
    /// The node's name.
    pub node: String,
    /// Whether its heartbeat is current; a node that stopped beating is `gone`.
    pub alive: bool,
    /// Seconds since its last heartbeat.
    pub seen_secs_ago: Option<i64>,
    /// Messages in its queue.
    pub queue: Option<u64>,
    /// Age of its oldest queued message, in seconds.
    pub oldest_secs: Option<i64>,
    /// Its tlsrelay version.
    pub version: Option<String>,
}

/// What `tlsrelay cluster status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct FleetStatus {
    /// The Redis server (no password).
    pub redis: String,
    /// `up`, or `down: why`.
    pub redis_state: String,
    /// The server's version, when reachable.
    pub redis_version: Option<String>,
    /// The nodes seen, by name.
    pub nodes: Vec<NodeStatus>,
}

impl Cluster {
    /// Writes this node's heartbeat (queue size and oldest message of `spool`).
    pub async fn heartbeat(&self, spool: &Spool) {
        let s = spool.clone();
        let Ok((queue, oldest)) = tokio::task::spawn_blocking(move || s.size_and_oldest()).await
        else {
            return;
        };
        let key = self.key(&["node", self.node()]);
        let ttl = self.config.heartbeat_interval.get().as_millis() as u64 * MISSED_BEATS as u64;
        let mut pipe = redis::pipe();
        pipe.hset_multiple(
            &key,
            &[
                ("time", now_unix().to_string()),
                ("queue", queue.to_string()),
                ("oldest", oldest.map(|t| t.to_string()).unwrap_or_default()),
                ("version", env!("CARGO_PKG_VERSION").to_string()),
            ],
        )
        .ignore()
        .pexpire(&key, ttl as i64)
        .ignore()
        .sadd(self.key(&["nodes"]), self.node())
        .ignore();
        // A failure is logged by the handle; the next beat tries again.
        let _ = self.redis.pipe::<()>(pipe.atomic()).await;
    }

    /// The fleet as Redis knows it.
    pub async fn status(&self) -> FleetStatus {
        let mut st = FleetStatus {
            redis: self.redis.shown().to_string(),
            redis_state: "up".into(),
            redis_version: None,
            nodes: vec![],
        };
        match self.read_nodes().await {
            Ok((version, nodes)) => {
                st.redis_version = version;
                st.nodes = nodes;
            }
            Err(e) => st.redis_state = format!("down: {e}"),
        }
        st
    }

    async fn read_nodes(&self) -> Result<(Option<String>, Vec<NodeStatus>), ClusterError> {
        let info: String = self.redis.run(redis::cmd("INFO").arg("server")).await?;
        let version = info
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .map(|v| v.trim().to_string());
        let mut names: Vec<String> = self
            .redis
            .run(redis::cmd("SMEMBERS").arg(self.key(&["nodes"])))
            .await?;
        names.sort();
        let mut nodes = Vec::new();
        for name in names {
            let h: BTreeMap<String, String> = self
                .redis
                .run(redis::cmd("HGETALL").arg(self.key(&["node", &name])))
                .await?;
            nodes.push(node_status(name, &h, now_unix()));
        }
        Ok((version, nodes))
    }
}

/// A node's status from its heartbeat hash (empty: expired, the node is gone).
pub fn node_status(node: String, h: &BTreeMap<String, String>, now: i64) -> NodeStatus {
    let num = |k: &str| h.get(k).and_then(|v| v.parse::<i64>().ok());
    NodeStatus {
        node,
        alive: !h.is_empty(),
        seen_secs_ago: num("time").map(|t| (now - t).max(0)),
        queue: num("queue").map(|q| q.max(0) as u64),
        oldest_secs: num("oldest").map(|t| (now - t).max(0)),
        version: h.get("version").cloned(),
    }
}

/// The status as text, one line per node.
pub fn render(st: &FleetStatus) -> String {
    let mut out = format!(
        "redis {} {}{}\n",
        st.redis,
        st.redis_state,
        st.redis_version
            .as_deref()
            .map(|v| format!(" (version {v})"))
            .unwrap_or_default()
    );
    if st.nodes.is_empty() && st.redis_state == "up" {
        out.push_str("no node has sent a heartbeat\n");
    }
    for n in &st.nodes {
        let opt = |v: Option<i64>, unit: &str| v.map_or("-".to_string(), |v| format!("{v}{unit}"));
        if n.alive {
            out.push_str(&format!(
                "node {} up, seen {} ago, queue {}, oldest {}, version {}\n",
                n.node,
                opt(n.seen_secs_ago, "s"),
                n.queue.map_or("-".into(), |q| q.to_string()),
                opt(n.oldest_secs, "s"),
                n.version.as_deref().unwrap_or("-")
            ));
        } else {
            out.push_str(&format!("node {} gone (no heartbeat)\n", n.node));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_read_as_node_status() {
        let h: BTreeMap<String, String> = [
            ("time", "990"),
            ("queue", "7"),
            ("oldest", "400"),
            ("version", "0.1.0"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let up = node_status("a".into(), &h, 1000);
        assert_eq!(
            (up.alive, up.seen_secs_ago, up.queue, up.oldest_secs),
            (true, Some(10), Some(7), Some(600))
        );
        let mut empty_queue = h.clone();
        empty_queue.insert("oldest".into(), String::new());
        assert_eq!(
            node_status("a".into(), &empty_queue, 1000).oldest_secs,
            None
        );
        let gone = node_status("b".into(), &BTreeMap::new(), 1000);
        assert!(!gone.alive);
        let text = render(&FleetStatus {
            redis: "redis://127.0.0.1:6379".into(),
            redis_state: "up".into(),
            redis_version: Some("7.0.15".into()),
            nodes: vec![up, gone],
        });
        assert_eq!(
            text,
            "redis redis://127.0.0.1:6379 up (version 7.0.15)\n\
             node a up, seen 10s ago, queue 7, oldest 600s, version 0.1.0\n\
             node b gone (no heartbeat)\n"
        );
    }
}
