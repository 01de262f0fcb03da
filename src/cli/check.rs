//! `tlsrelay check DOMAIN`: the report and its verdict come from `ops::check`;
//! the readiness check (`--from-postfix-log`, `--domains-file`) from `ops::readiness`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use tlsrelay::ops::readiness;

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

/// Where the readiness check finds its domains.
pub enum Source {
    /// A file of domains (one a line, optionally with a message count).
    DomainsFile(PathBuf),
    /// Postfix logs, counted by `ops::readiness::tally_postfix_log`.
    PostfixLogs(Vec<PathBuf>),
}

/// The readiness check: every domain probed, one line each and a summary;
/// exit status 0 when all are deliverable, 1 when one is not.
pub fn readiness(
    config_path: Option<&Path>,
    source: Source,
    parallel: usize,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let config = load_config(config_path)?;
    let targets = targets(source)?;
    let result = runtime()?.block_on(async {
        let (dns, sts, policies) = engines(&config)?;
        anyhow::Ok(readiness::check_all(&config, &dns, &sts, &policies, targets, parallel).await)
    })?;
    if json {
        println!("{}", pretty_json(&result)?);
    } else {
        print!("{}", readiness::render(&result));
    }
    Ok(if result.summary.not_deliverable == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The domains to check, with the messages seen where the source tells.
fn targets(source: Source) -> anyhow::Result<Vec<readiness::Target>> {
    match source {
        Source::DomainsFile(path) => {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read the domains file {}", path.display()))?;
            readiness::parse_domains_file(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
        }
        Source::PostfixLogs(paths) => {
            let mut text = String::new();
            for path in &paths {
                let bytes = std::fs::read(path)
                    .with_context(|| format!("cannot read the Postfix log {}", path.display()))?;
                // Logs may hold stray non-UTF-8 bytes; they never touch the fields read.
                text.push_str(&String::from_utf8_lossy(&bytes));
                text.push('\n');
            }
            let tally = readiness::tally_postfix_log(&text);
            if !tally.bad_recipients.is_empty() {
                eprintln!(
                    "tlsrelay: {} delivery line(s) name a recipient without a usable domain (first: {}); not checked",
                    tally.bad_recipients.len(),
                    tlsrelay::model::visible::visible(&tally.bad_recipients[0])
                );
            }
            anyhow::ensure!(
                !tally.domains.is_empty(),
                "no Postfix smtp/lmtp delivery lines (postfix/smtp[PID]: ID: to=<...>, ... status=...) in {}",
                paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
            );
            Ok(tally
                .domains
                .into_iter()
                .map(|d| readiness::Target {
                    domain: d.domain,
                    messages: Some(d.messages),
                })
                .collect())
        }
    }
}

/// `check --warnings`: the early-warnings probe of the busiest destinations,
/// now; exit status 1 when it finds anything.
pub fn warnings(config_path: Option<&Path>, json: bool) -> anyhow::Result<ExitCode> {
    use tlsrelay::reporting::early_warning::{busiest, Prober};
    let config = load_config(config_path)?;
    let spool = &config.spool.dir;
    let top = busiest(spool, config.warnings.top_domains)
        .with_context(|| format!("cannot read the outcome records under {}", spool.display()))?;
    let domains: Vec<_> = top.into_iter().map(|(d, _)| d).collect();
    let file = runtime()?.block_on(async {
        let (dns, sts, policies) = engines(&config)?;
        let tls = tlsrelay::tls::ClientTls::new(&config.delivery.extra_roots)?;
        let prober = Prober {
            sources: tlsrelay::ops::check::Sources {
                config: &config,
                dns: &dns,
                sts: &sts,
                policies: &policies,
            },
            tls: &tls,
        };
        anyhow::Ok(prober.run(&domains, chrono::Utc::now().timestamp()).await)
    })?;
    if json {
        println!("{}", pretty_json(&file)?);
    } else {
        let mut out = String::new();
        for w in &file.warnings {
            out.push_str(&format!(
                "{} {} {}: {}\n",
                w.domain,
                w.host,
                w.kind.label(),
                w.detail
            ));
        }
        out.push_str(&format!(
            "{} domain(s) probed, {} warning(s)\n",
            file.domains.len(),
            file.warnings.len()
        ));
        print!("{}", tlsrelay::model::visible::visible_lines(&out));
    }
    Ok(if file.warnings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
