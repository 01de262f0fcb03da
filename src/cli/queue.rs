//! `tlsrelay queue …`: the operator's view of the spool (rendered by `ops::queue`).

use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;
use tlsrelay::ops::control::{self, Request};
use tlsrelay::ops::queue;
use tlsrelay::spool::SpoolError;

use super::{load_config, runtime};

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
        #[arg(long, conflicts_with = "raw")]
        json: bool,
        /// Print the stored message byte for byte (our Received header first).
        #[arg(long)]
        raw: bool,
    },
    /// Make deferred messages due now (the running relay starts them at once).
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

/// Runs one queue command: through the running server when one holds the
/// spool, else on the spool directly; prints its output.
pub fn run(config_path: Option<&Path>, action: QueueAction) -> anyhow::Result<ExitCode> {
    let config = load_config(config_path)?;
    let req = request(action);
    use base64::Engine;
    use std::io::Write;
    let dir = &config.spool.dir;
    let out = match queue::open_spool(dir) {
        Ok(spool) => control::run_queue(&spool, &config.server.hostname, &req)?,
        Err(queue::QueueError::Open {
            err: SpoolError::Locked(_),
            ..
        }) => {
            let answer = runtime()?.block_on(control::call(dir, &req))?;
            if !answer.ok {
                anyhow::bail!("{}", answer.output);
            }
            answer.output
        }
        Err(e) => return Err(e.into()),
    };
    if matches!(req, Request::QueueRaw { .. }) {
        // The bytes travel as base64: a message need not be UTF-8.
        let bytes = base64::engine::general_purpose::STANDARD.decode(out.trim_end())?;
        std::io::stdout().write_all(&bytes)?;
    } else {
        print!("{out}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The control request a command line stands for.
fn request(action: QueueAction) -> Request {
    match action {
        QueueAction::List { json } => Request::QueueList { json },
        QueueAction::Show { id, raw: true, .. } => Request::QueueRaw { id },
        QueueAction::Show { id, json, .. } => Request::QueueShow { id, json },
        // Without an id, clap has made sure `--all` was given.
        QueueAction::Retry { id, all: _ } => Request::QueueRetry { id },
        QueueAction::Delete { id } => Request::QueueDelete { id },
        QueueAction::Bounce { id } => Request::QueueBounce { id },
    }
}
