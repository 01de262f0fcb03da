//! The `tlsrelay` command: a thin layer over the library's modules.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use tlsrelay::config::Config;
use tlsrelay::spool::Spool;

/// An outbound SMTP relay that delivers only over authenticated, forward-secret TLS.
#[derive(Parser)]
#[command(name = "tlsrelay", version)]
struct Cli {
    /// Configuration file (TOML). Without it, the built-in defaults apply.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay.
    Serve,
    /// Check a configuration file and report the first problem.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Look at and manage the queue.
    Queue {
        #[command(subcommand)]
        action: QueueAction,
    },
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Parse and check FILE; exit status 0 when it is usable.
    Check {
        /// The file to check.
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum QueueAction {
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("tlsrelay: {msg}");
            ExitCode::from(2)
        }
    }
}

fn load_config(path: Option<&Path>) -> Result<Config, String> {
    match path {
        Some(p) => Config::load(p).map_err(|e| e.to_string()),
        None => Ok(Config::default()),
    }
}

fn run(cli: Cli) -> Result<ExitCode, String> {
    match cli.command {
        Command::Config {
            action: ConfigAction::Check { file },
        } => {
            let _ = Config::load(&file).map_err(|e| e.to_string())?;
            println!("{}: ok", file.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Queue { action } => {
            let config = load_config(cli.config.as_deref())?;
            let dir = &config.spool.dir;
            if !dir.join("queue").is_dir() {
                return Err(format!(
                    "no spool at {} (set [spool] dir, or run from the directory tlsrelay serve runs in)",
                    dir.display()
                ));
            }
            let spool = Spool::open(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let out = match action {
                QueueAction::List { json } => tlsrelay::queue::list(&spool, json),
                QueueAction::Show { id, json } => tlsrelay::queue::show(&spool, &id, json),
                QueueAction::Retry { id, all: _ } => tlsrelay::queue::retry(&spool, id.as_deref()),
                QueueAction::Delete { id } => tlsrelay::queue::delete(&spool, &id),
                QueueAction::Bounce { id } => {
                    tlsrelay::queue::bounce(&spool, &id, &config.server.hostname)
                }
            }
            .map_err(|e| e.to_string())?;
            print!("{out}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve => {
            let config = load_config(cli.config.as_deref())?;
            init_logging(&config.log.level);
            let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
            runtime.block_on(serve(Arc::new(config)))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn serve(config: Arc<Config>) -> Result<(), String> {
    let relay = tlsrelay::relay::Relay::start(config.clone()).await?;
    for addr in relay.local_addrs() {
        tracing::info!(%addr, hostname = %config.server.hostname, "listening");
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested");
        let _ = stop_tx.send(true);
    });
    relay.run(stop_rx).await;
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("cannot install the SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("cannot install the SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
