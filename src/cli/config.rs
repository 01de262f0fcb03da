//! `tlsrelay config check [FILE] [--print]`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;
use tlsrelay::config::Config;

/// What to do with a configuration file.
#[derive(Subcommand)]
pub enum ConfigAction {
    /// Parse FILE and load every file it names as `serve` would (certificate and
    /// key, users, trust anchor, roots, policies, DKIM key). Exit status 0 when
    /// `serve` would start with it, 1 when not.
    Check {
        /// The file to check.
        file: PathBuf,
        /// Also print the effective configuration (defaults filled in) as TOML.
        #[arg(long)]
        print: bool,
    },
}

/// Checks the file: parse errors, then every named file; warnings after.
pub fn run(action: ConfigAction) -> anyhow::Result<ExitCode> {
    let ConfigAction::Check { file, print } = action;
    let config = Config::load(&file)?;
    let shown = file.display();
    let problems = config.check_files();
    for p in &problems {
        eprintln!("{shown}: error: {p}");
    }
    let warnings = config.warnings();
    for w in &warnings {
        eprintln!("{shown}: warning: {w}");
    }
    if print {
        print!(
            "{}",
            toml::to_string(&config).context("cannot render the configuration")?
        );
    }
    if !problems.is_empty() {
        eprintln!(
            "{shown}: {} error(s); serve would refuse to start",
            problems.len()
        );
        return Ok(ExitCode::from(1));
    }
    let verdict = match warnings.len() {
        0 => format!("{shown}: ok"),
        n => format!("{shown}: ok, with {n} warning(s) above"),
    };
    // With --print, stdout is the TOML alone, so that it can be saved as a file.
    if print {
        eprintln!("{verdict}");
    } else {
        println!("{verdict}");
    }
    Ok(ExitCode::SUCCESS)
}
