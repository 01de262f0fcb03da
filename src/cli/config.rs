//! `tlsrelay config check FILE`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use tlsrelay::config::Config;

/// What to do with a configuration file.
#[derive(Subcommand)]
pub enum ConfigAction {
    /// Parse and check FILE; exit status 0 when it is usable.
    Check {
        /// The file to check.
        file: PathBuf,
    },
}

/// Checks the file; its first problem is the error.
pub fn run(action: ConfigAction) -> anyhow::Result<ExitCode> {
    let ConfigAction::Check { file } = action;
    let config = Config::load(&file)?;
    let warnings = config.warnings();
    for w in &warnings {
        eprintln!("{}: warning: {w}", file.display());
    }
    match warnings.len() {
        0 => println!("{}: ok", file.display()),
        n => println!("{}: ok, with {n} warning(s) above", file.display()),
    }
    Ok(ExitCode::SUCCESS)
}
