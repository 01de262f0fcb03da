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
    /// Explain what tlsrelay would do for a domain: MX, DNSSEC, MTA-STS, TLSA,
    /// TLS-RPT, local policy, and the requirement per host. Exit status 0 when
    /// tlsrelay can deliver there, 1 when it cannot.
    Check {
        /// The recipient domain.
        domain: String,
        /// Also connect to each host, do STARTTLS (no mail), and judge the certificate chain.
        #[arg(long)]
        probe: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The MTA-STS policy cache.
    Sts {
        #[command(subcommand)]
        action: StsAction,
    },
    /// Local policies.
    Policy {
        #[command(subcommand)]
        action: PolicyAction,
    },
    /// TLS reporting (RFC 8460): today's and yesterday's sessions per domain.
    Report {
        #[command(subcommand)]
        action: Option<ReportAction>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ReportAction {
    /// Send the reports of a finished day that are still due, without waiting.
    Send {
        /// Send now, ignoring the randomized delay.
        #[arg(long)]
        now: bool,
        /// The UTC day (YYYY-MM-DD, or "today" for testing); default yesterday.
        #[arg(long)]
        day: Option<String>,
    },
}

#[derive(Subcommand)]
enum StsAction {
    /// List cached policies.
    List,
    /// Show one domain's cached policy.
    Show {
        /// The policy domain.
        domain: String,
    },
    /// Fetch a domain's policy now and cache it.
    Refresh {
        /// The policy domain.
        domain: String,
    },
    /// Forget a domain's cached policy (or all of them).
    Purge {
        /// The policy domain.
        #[arg(required_unless_present = "all")]
        domain: Option<String>,
        /// Every cached policy.
        #[arg(long, conflicts_with = "domain")]
        all: bool,
    },
}

#[derive(Subcommand)]
enum PolicyAction {
    /// Convert a Postfix smtp_tls_policy_maps table to tlsrelay policy TOML (on
    /// stdout); every line that cannot be carried over is listed on stderr.
    ImportPostfix {
        /// The Postfix table (source text, not the .db).
        file: PathBuf,
    },
    /// Check the policy directory (`[policies] dir`) and list the policies.
    Check,
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

static CONFIG_PATH: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();

/// The configuration file `serve` was started with (for SIGHUP reloads).
fn cli_config_path() -> Option<PathBuf> {
    CONFIG_PATH.get().cloned().flatten()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = CONFIG_PATH.set(cli.config.clone());
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
                QueueAction::List { json } => tlsrelay::ops::queue::list(&spool, json),
                QueueAction::Show { id, json } => tlsrelay::ops::queue::show(&spool, &id, json),
                QueueAction::Retry { id, all: _ } => {
                    tlsrelay::ops::queue::retry(&spool, id.as_deref())
                }
                QueueAction::Delete { id } => tlsrelay::ops::queue::delete(&spool, &id),
                QueueAction::Bounce { id } => {
                    tlsrelay::ops::queue::bounce(&spool, &id, &config.server.hostname)
                }
            }
            .map_err(|e| e.to_string())?;
            print!("{out}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Check {
            domain,
            probe,
            json,
        } => {
            let config = load_config(cli.config.as_deref())?;
            let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
            let report = runtime.block_on(async {
                let (dns, sts, policies) = engines(&config)?;
                Ok::<_, String>(
                    tlsrelay::ops::check::run(&config, &dns, &sts, &policies, &domain, probe).await,
                )
            })?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?
                );
            } else {
                print!("{}", tlsrelay::ops::check::render(&report));
            }
            Ok(if report.deliverable {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Sts { action } => {
            let config = load_config(cli.config.as_deref())?;
            let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
            runtime.block_on(async {
                let (_, sts, _) = engines(&config)?;
                match action {
                    StsAction::List => {
                        let all = sts.cached();
                        if all.is_empty() {
                            println!("no cached MTA-STS policies");
                        }
                        for c in all {
                            let p = c.parsed();
                            println!(
                                "{:<30} id {:<20} mode {:<8} expires {}",
                                c.domain,
                                c.id,
                                p.as_ref().map(|p| format!("{:?}", p.mode).to_lowercase()).unwrap_or_default(),
                                chrono::DateTime::from_timestamp(c.expires_at, 0).map(|t| t.to_rfc3339()).unwrap_or_default()
                            );
                        }
                        Ok(ExitCode::SUCCESS)
                    }
                    StsAction::Show { domain } => match sts.cached().into_iter().find(|c| c.domain == domain) {
                        Some(c) => {
                            println!("{}", serde_json::to_string_pretty(&c).map_err(|e| e.to_string())?);
                            Ok(ExitCode::SUCCESS)
                        }
                        None => Err(format!("no cached MTA-STS policy for {domain}")),
                    },
                    StsAction::Refresh { domain } => match sts.refresh(&domain.parse().map_err(|e: tlsrelay::model::domain::DomainError| e.to_string())?).await {
                        Ok(c) => {
                            println!("{}: fetched policy id {} (expires {}); a running relay picks it up on SIGHUP", c.domain, c.id,
                                chrono::DateTime::from_timestamp(c.expires_at, 0).map(|t| t.to_rfc3339()).unwrap_or_default());
                            Ok(ExitCode::SUCCESS)
                        }
                        Err(e) => Err(format!("{e} ({})", e.result_type().as_str())),
                    },
                    StsAction::Purge { domain, all: _ } => {
                        let n = sts.purge(domain.as_deref().map(str::parse).transpose().map_err(|e: tlsrelay::model::domain::DomainError| e.to_string())?.as_ref());
                        println!("{n} cached policy(ies) removed; a running relay forgets them on SIGHUP");
                        Ok(ExitCode::SUCCESS)
                    }
                }
            })
        }
        Command::Policy { action } => match action {
            PolicyAction::ImportPostfix { file } => {
                let text = std::fs::read_to_string(&file)
                    .map_err(|e| format!("{}: {e}", file.display()))?;
                let (toml, skipped) = tlsrelay::policy::local::import_postfix(&text);
                print!("{toml}");
                for s in &skipped {
                    eprintln!(
                        "{}:{}: not carried over: {} ({})",
                        file.display(),
                        s.line,
                        s.text,
                        s.reason
                    );
                }
                eprintln!("{} line(s) not carried over", skipped.len());
                Ok(ExitCode::SUCCESS)
            }
            PolicyAction::Check => {
                let config = load_config(cli.config.as_deref())?;
                let Some(dir) = &config.policies.dir else {
                    println!("no policy directory configured ([policies] dir)");
                    return Ok(ExitCode::SUCCESS);
                };
                let set =
                    tlsrelay::policy::local::PolicySet::load_dir(dir).map_err(|e| e.to_string())?;
                for p in set.iter() {
                    println!("{:<30} {:<12} {}", p.domain, p.level.as_str(), p.source);
                }
                println!("{}: {} policy(ies), ok", dir.display(), set.len());
                Ok(ExitCode::SUCCESS)
            }
        },
        Command::Report { action, json } => {
            let config = load_config(cli.config.as_deref())?;
            let log =
                tlsrelay::reporting::outcome::OutcomeLog::open(&config.spool.dir.join("outcomes"))
                    .map_err(|e| e.to_string())?;
            match action {
                None => {
                    let today = chrono::Utc::now().date_naive();
                    let mut all = serde_json::Map::new();
                    for (label, day) in [
                        ("current", today),
                        ("last", today.pred_opt().unwrap_or(today)),
                    ] {
                        let records = log
                            .read_day(&day.format("%Y-%m-%d").to_string())
                            .map_err(|e| e.to_string())?;
                        let sum = tlsrelay::reporting::reporter::summarize(&records);
                        if json {
                            all.insert(
                                label.into(),
                                serde_json::json!({"day": day.to_string(), "domains": sum}),
                            );
                        } else {
                            println!("{label} period: {day} (UTC)");
                            if sum.is_empty() {
                                println!("  no sessions");
                            }
                            for (d, s) in sum {
                                let f: Vec<String> =
                                    s.failures.iter().map(|(k, v)| format!("{k}={v}")).collect();
                                println!(
                                    "  {d:<30} {:>6} ok {:>6} failed  {}",
                                    s.successful,
                                    s.failed,
                                    f.join(" ")
                                );
                            }
                        }
                    }
                    if json {
                        println!("{}", serde_json::Value::Object(all));
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Some(ReportAction::Send { now: _, day }) => {
                    let day = match day.as_deref() {
                        None => chrono::Utc::now().date_naive().pred_opt().unwrap(),
                        Some("today") => chrono::Utc::now().date_naive(),
                        Some(d) => chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d")
                            .map_err(|e| format!("--day {d}: {e}; write YYYY-MM-DD"))?,
                    };
                    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
                    let sent = runtime.block_on(async {
                        let dns = tlsrelay::resolve::dns::Dns::new(&tlsrelay::relay::dns_settings(
                            &config,
                        ))
                        .map_err(|e| e.to_string())?;
                        let spool = tlsrelay::spool::Spool::open(&config.spool.dir)
                            .map_err(|e| e.to_string())?;
                        let r = tlsrelay::reporting::reporter::Reporter::new(
                            std::sync::Arc::new(config.clone()),
                            spool,
                            dns,
                            None,
                        )
                        .map_err(|e| e.to_string())?;
                        Ok::<_, String>(r.send_day(day).await)
                    })?;
                    if json {
                        println!(
                            "{}",
                            serde_json::to_string_pretty(&sent).map_err(|e| e.to_string())?
                        );
                    } else {
                        if sent.is_empty() {
                            println!("{day}: no report due");
                        }
                        for s in &sent {
                            println!(
                                "{} {}: {}{}",
                                s.day,
                                s.domain,
                                s.results.join("; "),
                                if s.done { "" } else { " (will retry)" }
                            );
                        }
                    }
                    Ok(ExitCode::SUCCESS)
                }
            }
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

/// DNS, the MTA-STS cache and the local policies as `serve` would set them up.
fn engines(
    config: &Config,
) -> Result<
    (
        tlsrelay::resolve::dns::Dns,
        tlsrelay::resolve::mta_sts::MtaSts,
        tlsrelay::policy::local::PolicySet,
    ),
    String,
> {
    let dns = tlsrelay::resolve::dns::Dns::new(&tlsrelay::relay::dns_settings(config))
        .map_err(|e| e.to_string())?;
    let settings = tlsrelay::resolve::mta_sts::FetchSettings {
        port: config.mta_sts.https_port,
        extra_roots: config.mta_sts.extra_roots.clone(),
        timeout: config.mta_sts.fetch_timeout.get(),
    };
    let sts = tlsrelay::resolve::mta_sts::MtaSts::new(
        dns.clone(),
        settings,
        &config.spool.dir.join("mta-sts"),
    )
    .map_err(|e| e.to_string())?;
    let policies = match &config.policies.dir {
        Some(dir) => {
            tlsrelay::policy::local::PolicySet::load_dir(dir).map_err(|e| e.to_string())?
        }
        None => tlsrelay::policy::local::PolicySet::empty(),
    };
    Ok((dns, sts, policies))
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
    let reload = relay.reloader(cli_config_path());
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            reload.reload();
        }
    });
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
