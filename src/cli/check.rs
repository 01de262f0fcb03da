//! `tlsrelay check DOMAIN`: the report and its verdict come from `ops::check`.

use std::path::Path;
use std::process::ExitCode;

use super::{engines, load_config, pretty_json, runtime};

/// Explains one domain; exit status 0 when tlsrelay can deliver there, 1 when not.
pub fn run(
    config_path: Option<&Path>,
    domain: &str,
    probe: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let config = load_config(config_path)?;
    let report = runtime()?.block_on(async {
        let (dns, sts, policies) = engines(&config)?;
        anyhow::Ok(tlsrelay::ops::check::run(&config, &dns, &sts, &policies, domain, probe).await)
    })?;
    if json {
        println!("{}", pretty_json(&report)?);
    } else {
        print!("{}", tlsrelay::ops::check::render(&report));
    }
    Ok(if report.deliverable {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
