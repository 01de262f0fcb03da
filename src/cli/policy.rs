//! `tlsrelay policy …`: local policy files.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;
use tlsrelay::policy::local::{import_postfix, PolicySet};

use super::load_config;

/// What to do with local policies.
#[derive(Subcommand)]
pub enum PolicyAction {
    /// Convert a Postfix smtp_tls_policy_maps table to tlsrelay policy TOML (on
    /// stdout); every line that cannot be carried over is listed on stderr.
    ImportPostfix {
        /// The Postfix table (source text, not the .db).
        file: PathBuf,
    },
    /// Check the policy directory (`[policies] dir`) and list the policies.
    Check,
}

/// Runs one policy command.
pub fn run(config_path: Option<&Path>, action: PolicyAction) -> anyhow::Result<ExitCode> {
    match action {
        PolicyAction::ImportPostfix { file } => import(&file),
        PolicyAction::Check => check(config_path),
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

/// Loads the policy directory and lists its policies.
fn check(config_path: Option<&Path>) -> anyhow::Result<ExitCode> {
    let config = load_config(config_path)?;
    let Some(dir) = &config.policies.dir else {
        println!("no policy directory configured ([policies] dir)");
        return Ok(ExitCode::SUCCESS);
    };
    let set = PolicySet::load_dir(dir)?;
    for p in set.iter() {
        println!("{:<30} {:<12} {}", p.domain, p.level.as_str(), p.source);
    }
    println!("{}: {} policy(ies), ok", dir.display(), set.len());
    Ok(ExitCode::SUCCESS)
}
