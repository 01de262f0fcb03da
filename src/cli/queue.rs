//! `tlsrelay queue …`: the operator's view of the spool (rendered by `ops::queue`).

use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;
use tlsrelay::ops::queue;

use super::load_config;

/// What to do with the queue.
#[derive(Subcommand)]
pub enum QueueAction {
    /// List queued messages.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one message's envelope and headers.
    Show {
        /// Queue id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Make deferred messages due now (the running relay picks them up within
    /// `delivery.queue_scan_interval`).
    Retry {
        /// Queue id.
        #[arg(required_unless_present = "all")]
        id: Option<String>,
        /// Every queued message.
        #[arg(long, conflicts_with = "id")]
        all: bool,
    },
    /// Remove a message from the queue without notifying anyone.
    Delete {
        /// Queue id.
        id: String,
    },
    /// Give up on a message now: its pending recipients fail and the sender gets a DSN.
    Bounce {
        /// Queue id.
        id: String,
    },
}

/// Runs one queue command on the configured spool and prints its output.
pub fn run(config_path: Option<&Path>, action: QueueAction) -> anyhow::Result<ExitCode> {
    let config = load_config(config_path)?;
    let spool = queue::open_spool(&config.spool.dir)?;
    let out = match action {
        QueueAction::List { json } => queue::list(&spool, json),
        QueueAction::Show { id, json } => queue::show(&spool, &id, json),
        // Without an id, clap has made sure `--all` was given.
        QueueAction::Retry { id, all: _ } => queue::retry(&spool, id.as_deref()),
        QueueAction::Delete { id } => queue::delete(&spool, &id),
        QueueAction::Bounce { id } => queue::bounce(&spool, &id, &config.server.hostname),
    }?;
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}
