//! `tlsrelay cluster status`: the fleet as Redis knows it (heartbeats, each
//! node's queue, Redis's state). It reads Redis directly; no local server needed.

use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;
use tlsrelay::cluster::Cluster;

use super::{load_config, runtime};

/// What to do with the fleet.
#[derive(Debug, Subcommand)]
pub enum ClusterAction {
    /// The nodes seen (heartbeat), each node's queue size and oldest message, and Redis's state.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `action`; exit status 1 when Redis cannot be reached.
pub fn run(config_path: Option<&Path>, action: ClusterAction) -> anyhow::Result<ExitCode> {
    let ClusterAction::Status { json } = action;
    let config = load_config(config_path)?;
    let rt = runtime()?;
    let status = rt.block_on(async {
        let Some(cluster) = Cluster::open(&config)? else {
            anyhow::bail!("no [cluster] section in the configuration: this node runs alone");
        };
        Ok(cluster.status().await)
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", tlsrelay::cluster::status::render(&status));
    }
    Ok(if status.redis_state == "up" {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
