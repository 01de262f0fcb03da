//! `tlsrelay policy …`: local policy files.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;
use tlsrelay::model::visible::visible;
use tlsrelay::ops::check::Sources;
use tlsrelay::ops::policies::check_entries;
use tlsrelay::policy::local::{import_postfix, ExceptionState, PolicySet};

use super::{engines, load_config, runtime};

/// What to do with local policies.
#[derive(Subcommand)]
pub enum PolicyAction {
    /// Convert a Postfix smtp_tls_policy_maps table to tlsrelay policy TOML (on
    /// stdout); every line that cannot be carried over is listed on stderr.
    ImportPostfix {
        /// The Postfix table (source text, not the .db).
        file: PathBuf,
    },
    /// Check the policy directory (`[policies] dir`): the files, and each entry
    /// for an exact domain against the DANE and MTA-STS it publishes (DNS
    /// lookups). Exit status 1 when an entry would replace a published policy
    /// without override_dane / override_mta_sts.
    Check,
    /// List the policies and routes with their expiry (days left), owner and reason.
    List,
}

/// Runs one policy command.
pub fn run(config_path: Option<&Path>, action: PolicyAction) -> anyhow::Result<ExitCode> {
    match action {
        PolicyAction::ImportPostfix { file } => import(&file),
        PolicyAction::Check => check(config_path),
        PolicyAction::List => list(config_path),
    }
}

/// Prints the converted table; what was left out goes to stderr, line by line.
fn import(file: &Path) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(file).with_context(|| file.display().to_string())?;
    let (toml, skipped) = import_postfix(&text);
    print!("{toml}");
    for s in &skipped {
        eprintln!(
            "{}:{}: not carried over: {} ({})",
            file.display(),
            s.line,
            tlsrelay::model::visible::visible(&s.text),
            tlsrelay::model::visible::visible(&s.reason)
        );
    }
    eprintln!("{} line(s) not carried over", skipped.len());
    Ok(ExitCode::SUCCESS)
}

/// Loads the policy directory, checks every exact-domain entry against DNS, and
/// names each entry that is ignored for want of an override flag.
fn check(config_path: Option<&Path>) -> anyhow::Result<ExitCode> {
    let config = load_config(config_path)?;
    let Some(dir) = &config.policies.dir else {
        println!("no policy directory configured ([policies] dir)");
        return Ok(ExitCode::SUCCESS);
    };
    let today = chrono::Utc::now().date_naive();
    let lines = runtime()?.block_on(async {
        let (dns, sts, policies) = engines(&config)?;
        let src = Sources {
            config: &config,
            dns: &dns,
            sts: &sts,
            policies: &policies,
        };
        anyhow::Ok(check_entries(&src, today).await)
    })?;
    let problems = lines.iter().filter(|l| l.problem).count();
    for l in &lines {
        println!("{}", visible(&l.text));
    }
    let set = PolicySet::load_dir(dir)?;
    if problems > 0 {
        println!(
            "{}: {} entr(ies), {problems} problem(s)",
            dir.display(),
            set.len()
        );
        return Ok(ExitCode::from(1));
    }
    println!("{}: {} entr(ies), ok", dir.display(), set.len());
    Ok(ExitCode::SUCCESS)
}

/// Lists every entry with its route and expiry.
fn list(config_path: Option<&Path>) -> anyhow::Result<ExitCode> {
    let config = load_config(config_path)?;
    let Some(dir) = &config.policies.dir else {
        println!("no policy directory configured ([policies] dir)");
        return Ok(ExitCode::SUCCESS);
    };
    let set = PolicySet::load_dir(dir)?;
    let today = chrono::Utc::now().date_naive();
    println!(
        "{:<28} {:<12} {:<28} {:<24} SOURCE / ABOUT",
        "DOMAIN", "LEVEL", "ROUTE", "EXPIRES"
    );
    for p in set.iter() {
        let route = p
            .route
            .as_ref()
            .map_or("-".to_string(), |h| format!("via {h}"));
        let about = p.exception.describe();
        let line = format!(
            "{:<28} {:<12} {:<28} {:<24} {}{}",
            p.domain,
            p.level.as_str(),
            route,
            expiry_words(p.exception.expires, p.exception.state(today)),
            p.source,
            if about.is_empty() {
                String::new()
            } else {
                format!(" ({about})")
            }
        );
        println!("{}", visible(&line));
    }
    Ok(ExitCode::SUCCESS)
}

/// `2027-06-30 (45d left)`, `2027-01-31 (EXPIRED)`, or `never`.
fn expiry_words(expires: Option<chrono::NaiveDate>, state: ExceptionState) -> String {
    let Some(day) = expires else {
        return "never".to_string();
    };
    match state {
        ExceptionState::Active { days_left } | ExceptionState::Expiring { days_left } => {
            format!("{day} ({days_left}d left)")
        }
        ExceptionState::Expired { .. } => format!("{day} (EXPIRED)"),
        ExceptionState::Permanent => "never".to_string(),
    }
}
