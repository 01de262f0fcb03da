//! `tlsrelay reload`: what SIGHUP does, for the server on this configuration's
//! spool only (a signal by process name would reach every instance on the host),
//! and with its report.

use std::path::Path;
use std::process::ExitCode;

use tlsrelay::ops::control::{self, Request};

use super::{load_config, runtime};

/// Asks the server holding the spool to reload; prints what it did.
pub fn run(config_path: Option<&Path>) -> anyhow::Result<ExitCode> {
    let config = load_config(config_path)?;
    let dir = &config.spool.dir;
    if !tlsrelay::spool::is_locked(dir) {
        anyhow::bail!(
            "no server runs on the spool {}; nothing to reload",
            dir.display()
        );
    }
    let answer = runtime()?.block_on(control::call(dir, &Request::Reload))?;
    print!("{}", answer.output);
    Ok(if answer.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
