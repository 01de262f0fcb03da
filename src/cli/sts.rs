//! `tlsrelay sts …`: the MTA-STS policy cache.

use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;
use tlsrelay::model::domain::Domain;
use tlsrelay::resolve::mta_sts::{CachedPolicy, MtaSts};

use super::{engines, load_config, pretty_json, rfc3339, runtime};

/// What to do with the MTA-STS cache.
#[derive(Subcommand)]
pub enum StsAction {
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

/// Runs one cache command.
pub fn run(config_path: Option<&Path>, action: StsAction) -> anyhow::Result<ExitCode> {
    let config = load_config(config_path)?;
    runtime()?.block_on(async {
        let (_, sts, _) = engines(&config)?;
        match action {
            StsAction::List => list(&sts),
            StsAction::Show { domain } => show(&sts, &domain),
            StsAction::Refresh { domain } => refresh(&sts, &domain).await,
            // Without a domain, clap has made sure `--all` was given.
            StsAction::Purge { domain, all: _ } => {
                let domain = domain.as_deref().map(Domain::parse).transpose()?;
                let n = sts.purge(domain.as_ref());
                println!("{n} cached policy(ies) removed; a running relay forgets them on SIGHUP");
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

/// One line per cached policy.
fn list(sts: &MtaSts) -> anyhow::Result<ExitCode> {
    let all = sts.cached();
    if all.is_empty() {
        println!("no cached MTA-STS policies");
    }
    for c in &all {
        println!("{}", list_line(c));
    }
    Ok(ExitCode::SUCCESS)
}

/// `DOMAIN id ID mode MODE expires TIME`, in columns.
fn list_line(c: &CachedPolicy) -> String {
    let mode = c
        .parsed()
        .as_ref()
        .map(|p| p.mode.as_str().to_string())
        .unwrap_or_default();
    format!(
        "{:<30} id {:<20} mode {:<8} expires {}",
        c.domain,
        c.id,
        mode,
        rfc3339(c.expires_at)
    )
}

/// The cached policy of one domain, as JSON.
fn show(sts: &MtaSts, domain: &str) -> anyhow::Result<ExitCode> {
    let domain = Domain::parse(domain)?;
    let Some(c) = (sts.cached().into_iter()).find(|c| c.domain == domain.as_str()) else {
        anyhow::bail!("no cached MTA-STS policy for {domain}");
    };
    println!("{}", pretty_json(&c)?);
    Ok(ExitCode::SUCCESS)
}

/// Fetches and caches a domain's policy now.
async fn refresh(sts: &MtaSts, domain: &str) -> anyhow::Result<ExitCode> {
    match sts.refresh(&Domain::parse(domain)?).await {
        Ok(c) => {
            println!(
                "{}: fetched policy id {} (expires {}); a running relay picks it up on SIGHUP",
                c.domain,
                c.id,
                rfc3339(c.expires_at)
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => anyhow::bail!("{e} ({})", e.result_type().as_str()),
    }
}
