//! `tlsrelay queue …`: the operator's view of the spool (rendered by `ops::queue`).

use std::path::Path;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use tlsrelay::model::domain::Domain;
use tlsrelay::ops::control::{self, Request};
use tlsrelay::ops::filter::{self, Address, Filter};
use tlsrelay::ops::queue;
use tlsrelay::spool::SpoolError;

use super::{load_config, runtime};

/// Which messages a command acts on; the conditions combine with AND.
#[derive(Args, Debug, Clone, Default)]
pub struct FilterArgs {
    /// Messages with a pending recipient in this domain.
    #[arg(long, value_name = "DOMAIN", value_parser = filter::parse_domain)]
    domain: Option<Domain>,
    /// Messages from this envelope sender (`<>` for the null sender).
    #[arg(long, value_name = "ADDR", value_parser = Address::parse)]
    sender: Option<Address>,
    /// Messages with this pending recipient.
    #[arg(long, value_name = "ADDR", value_parser = Address::parse)]
    recipient: Option<Address>,
    /// Messages that arrived at least this long ago (30s, 5m, 2h, 1d, 1h30m).
    #[arg(long, value_name = "AGE", value_parser = filter::parse_age)]
    older_than: Option<u64>,
    /// Messages whose last deferral or error reason contains this text (case ignored).
    #[arg(long, value_name = "TEXT")]
    reason: Option<String>,
}

impl From<FilterArgs> for Filter {
    fn from(a: FilterArgs) -> Filter {
        Filter {
            domain: a.domain,
            sender: a.sender,
            recipient: a.recipient,
            older_than: a.older_than,
            reason: a.reason,
        }
    }
}

/// The messages a changing command acts on: one id, `--all`, or filters.
#[derive(Args, Debug, Clone)]
pub struct Selection {
    /// Queue id.
    #[arg(
        required_unless_present_any = ["all", "domain", "sender", "recipient", "older_than", "reason"],
        conflicts_with_all = ["domain", "sender", "recipient", "older_than", "reason"]
    )]
    id: Option<String>,
    /// Every queued message.
    #[arg(long, conflicts_with_all = ["id", "domain", "sender", "recipient", "older_than", "reason"])]
    all: bool,
    #[command(flatten)]
    filter: FilterArgs,
}

/// A bulk change: the selection, and the confirmation it needs for more than one message.
#[derive(Args, Debug, Clone)]
pub struct Bulk {
    #[command(flatten)]
    select: Selection,
    /// Confirm a change to more than one message (without it nothing changes).
    #[arg(long)]
    yes: bool,
}

/// What to do with the queue.
#[derive(Subcommand)]
pub enum QueueAction {
    /// List queued messages (held ones and suspended domains are marked).
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Messages and recipients per destination domain by age, like Postfix's qshape.
    Summary {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        filter: FilterArgs,
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
    Retry(Bulk),
    /// Remove messages from the queue without notifying anyone.
    Delete(Bulk),
    /// Give up on messages now: their pending recipients fail and the senders get DSNs.
    Bounce(Bulk),
    /// Put messages on hold: never attempted (nor expired) until released.
    Hold(Selection),
    /// Let held messages be attempted again.
    Release(Selection),
    /// No delivery attempt to a destination domain for a while.
    Suspend {
        /// The destination domain.
        #[arg(value_parser = filter::parse_domain)]
        domain: Domain,
        /// How long (30s, 5m, 2h, 1d, 1h30m).
        #[arg(long = "for", value_name = "DURATION", value_parser = filter::parse_age)]
        duration: u64,
    },
    /// End a domain's suspension now.
    Resume {
        /// The destination domain.
        #[arg(value_parser = filter::parse_domain)]
        domain: Domain,
    },
    /// List the suspended domains with the time left.
    Suspended {
        /// Print JSON.
        #[arg(long)]
        json: bool,
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
        Ok(spool) => control::run_queue(&spool, &config.server.hostname, &req)?.output,
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

/// The id and filter of a selection; clap has made sure that without an id,
/// `--all` or a filter was given (`--all` is the empty filter).
fn parts(s: Selection) -> (Option<String>, Filter) {
    (s.id, s.filter.into())
}

/// The control request a command line stands for.
fn request(action: QueueAction) -> Request {
    match action {
        QueueAction::List { json, filter } => Request::QueueList {
            json,
            filter: filter.into(),
        },
        QueueAction::Summary { json, filter } => Request::QueueSummary {
            json,
            filter: filter.into(),
        },
        QueueAction::Show { id, raw: true, .. } => Request::QueueRaw { id },
        QueueAction::Show { id, json, .. } => Request::QueueShow { id, json },
        QueueAction::Retry(b) => {
            let ((id, filter), yes) = (parts(b.select), b.yes);
            Request::QueueRetry { id, filter, yes }
        }
        QueueAction::Delete(b) => {
            let ((id, filter), yes) = (parts(b.select), b.yes);
            Request::QueueDelete { id, filter, yes }
        }
        QueueAction::Bounce(b) => {
            let ((id, filter), yes) = (parts(b.select), b.yes);
            Request::QueueBounce { id, filter, yes }
        }
        QueueAction::Hold(s) => {
            let (id, filter) = parts(s);
            Request::QueueHold { id, filter }
        }
        QueueAction::Release(s) => {
            let (id, filter) = parts(s);
            Request::QueueRelease { id, filter }
        }
        QueueAction::Suspend { domain, duration } => Request::QueueSuspend {
            domain,
            seconds: duration,
        },
        QueueAction::Resume { domain } => Request::QueueResume { domain },
        QueueAction::Suspended { json } => Request::QueueSuspended { json },
    }
}
