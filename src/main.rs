//! The `tlsrelay` command: parses the command line and hands each subcommand
//! to its module under `cli/`.

mod cli;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

/// An outbound SMTP relay that delivers only over authenticated, forward-secret TLS.
#[derive(Parser)]
#[command(name = "tlsrelay", version)]
struct Cli {
    /// Configuration file (TOML). Default: $TLSRELAY_CONFIG if set, else
    /// /etc/tlsrelay/tlsrelay.toml if it exists, else the built-in defaults.
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
        action: cli::config::ConfigAction,
    },
    /// Make the running server reread its configuration: certificate and key,
    /// users file, log level, local policies and the MTA-STS cache take effect
    /// at once; other changed settings are named as needing a restart. Exit
    /// status 1 when something could not be reloaded (the old state stays).
    Reload,
    /// Look at and manage the queue.
    Queue {
        #[command(subcommand)]
        action: cli::queue::QueueAction,
    },
    /// Explain what tlsrelay would do for a domain: MX, DNSSEC, MTA-STS, TLSA,
    /// TLS-RPT, local policy, and the requirement per host.
    ///
    /// Exit status: 0 when the policies allow delivery and a host would be
    /// contacted (without --probe; STARTTLS and certificates are then unknown),
    /// or when a host passed the live check (with --probe); 1 when no host may
    /// be contacted, none passed the live check, the domain refuses mail (null
    /// MX) or its lookup fails now; 2 when the check could not run (bad
    /// configuration or arguments). `--json` has the same verdict in
    /// `verdict_kind`.
    ///
    /// The readiness check before cutover: with --from-postfix-log or
    /// --domains-file, every domain is probed (as with --probe), --parallel at
    /// once, and one line per domain is printed (messages seen, mechanism,
    /// deliverable, why) with a summary; exit status 0 when every domain is
    /// deliverable, 1 when one is not.
    ///
    /// --warnings runs the server's early-warnings probe now on the busiest
    /// destination domains of the spool's outcome records and prints what it
    /// finds (it does not write the spool); exit status 1 when it finds any.
    #[command(group = clap::ArgGroup::new("what").required(true).args(["domain", "domains_file", "from_postfix_log", "warnings"]))]
    Check {
        /// The recipient domain.
        domain: Option<String>,
        /// Also connect to each host, do STARTTLS (no mail), and judge the certificate chain.
        #[arg(long)]
        probe: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Readiness: check the domains of this file (one a line, optionally with a message count).
        #[arg(long, value_name = "FILE")]
        domains_file: Option<PathBuf>,
        /// Readiness: check the destination domains of Postfix's log (smtp/lmtp
        /// delivery lines), with the messages seen per domain; may be repeated.
        #[arg(long, value_name = "FILE")]
        from_postfix_log: Vec<PathBuf>,
        /// Readiness: domains probed at once.
        #[arg(long, value_name = "N", default_value_t = tlsrelay::ops::readiness::DEFAULT_PARALLEL as u64,
              value_parser = clap::value_parser!(u64).range(1..=256))]
        parallel: u64,
        /// Early warnings now: probe the `[warnings] top_domains` busiest destinations.
        #[arg(long)]
        warnings: bool,
    },
    /// The MTA-STS policy cache.
    Sts {
        #[command(subcommand)]
        action: cli::sts::StsAction,
    },
    /// Local policies.
    Policy {
        #[command(subcommand)]
        action: cli::policy::PolicyAction,
    },
    /// TLS reporting (RFC 8460): today's and yesterday's sessions per domain.
    Report {
        #[command(subcommand)]
        action: Option<cli::report::ReportAction>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delivery receipts: find a message's or a recipient's receipts, or check
    /// their hash chain.
    Audit {
        #[command(subcommand)]
        action: cli::audit::AuditAction,
    },
    /// The posture report: per destination domain, messages and recipients
    /// delivered, the share of each mechanism, TLS versions and refusals (RFC
    /// 8460 types), with fleet totals on top; from the receipts and outcome
    /// records of the last days.
    Posture {
        /// Days covered, up to and including today (UTC).
        #[arg(long, default_value_t = 30)]
        days: u32,
        /// Print JSON (shape documented in reporting::posture; version 1).
        #[arg(long, conflicts_with = "html")]
        json: bool,
        /// Write the report as one self-contained HTML page to FILE.
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
        /// Also look up each domain's DNS and MTA-STS state now, as `check`
        /// does (one domain after another: slow with many domains).
        #[arg(long)]
        live: bool,
    },
    /// The fleet of nodes sharing state in Redis (`[cluster]`).
    Cluster {
        #[command(subcommand)]
        action: cli::cluster::ClusterAction,
    },
    /// Print the manual page tlsrelay(8) (roff), made from these definitions; used by packaging.
    #[command(hide = true)]
    Manpage,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tlsrelay: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // Every subcommand finds the file (and so the server's spool) the same way.
    let path = cli::config_path(
        cli.config,
        std::env::var_os(cli::CONFIG_ENV),
        Path::new(cli::SYSTEM_CONFIG).exists(),
    );
    let path = path.as_deref();
    match cli.command {
        Command::Serve => cli::serve::run(path),
        Command::Config { action } => cli::config::run(action),
        Command::Queue { action } => cli::queue::run(path, action),
        Command::Reload => cli::reload::run(path),
        Command::Check {
            domain: Some(domain),
            probe,
            json,
            ..
        } => cli::check::run(path, &domain, probe, json),
        Command::Check {
            warnings: true,
            json,
            ..
        } => cli::check::warnings(path, json),
        Command::Check {
            domains_file,
            from_postfix_log,
            parallel,
            json,
            ..
        } => {
            let source = match domains_file {
                Some(file) => cli::check::Source::DomainsFile(file),
                None => cli::check::Source::PostfixLogs(from_postfix_log),
            };
            cli::check::readiness(path, source, parallel as usize, json)
        }
        Command::Sts { action } => cli::sts::run(path, action),
        Command::Policy { action } => cli::policy::run(path, action),
        Command::Report { action, json } => cli::report::run(path, action, json),
        Command::Audit { action } => cli::audit::run(path, action),
        Command::Posture {
            days,
            json,
            html,
            live,
        } => cli::posture::run(
            path,
            cli::posture::Options {
                days,
                json,
                html,
                live,
            },
        ),
        Command::Cluster { action } => cli::cluster::run(path, action),
        Command::Manpage => {
            cli::manpage::write(Cli::command(), &mut std::io::stdout().lock())?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
