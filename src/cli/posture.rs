//! `tlsrelay posture`: how mail left over the last days, per destination domain
//! and in all (`reporting::posture`), as text, JSON or a self-contained HTML page.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use tlsrelay::config::Config;
use tlsrelay::ops::check::Report;
use tlsrelay::reporting::posture::{self, html, DomainState, Posture};

use super::{engines, load_config, pretty_json, runtime};

/// How to show the report.
pub struct Options {
    /// Days covered, up to and including today (UTC).
    pub days: u32,
    /// Print JSON.
    pub json: bool,
    /// Write the HTML page here.
    pub html: Option<PathBuf>,
    /// Look up each domain's DNS and MTA-STS state now.
    pub live: bool,
}

/// Builds the report from the spool's receipts and outcome records.
pub fn run(config_path: Option<&Path>, opts: Options) -> anyhow::Result<ExitCode> {
    let config = load_config(config_path)?;
    let dir = &config.spool.dir;
    let warnings = posture::early_warnings(dir);
    let mut report = posture::load(dir, opts.days, chrono::Utc::now(), warnings)
        .with_context(|| format!("cannot read receipts or outcomes in {}", dir.display()))?;
    if opts.live {
        add_live_state(&config, &mut report)?;
    }
    if let Some(path) = &opts.html {
        std::fs::write(path, html::render(&report))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if opts.json {
        println!("{}", pretty_json(&report)?);
    } else if opts.html.is_none() {
        print!("{}", render(&report));
    }
    Ok(ExitCode::SUCCESS)
}

/// Looks up each domain as `tlsrelay check` does (without --probe), one after another.
fn add_live_state(config: &Config, report: &mut Posture) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let (dns, sts, policies) = engines(config)?;
        for d in &mut report.domains {
            let r =
                tlsrelay::ops::check::run(config, &dns, &sts, &policies, &d.domain, false).await;
            d.state = Some(state_of(&r));
        }
        anyhow::Ok(())
    })
}

/// The posture's view of a `check` report.
pub fn state_of(r: &Report) -> DomainState {
    let verdict = serde_json::to_value(r.verdict_kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    DomainState {
        mx_dnssec: r.mx_dnssec.clone(),
        hosts: r.hosts.len(),
        dane_hosts: (r.hosts.iter())
            .filter(|h| h.mechanism.as_deref() == Some("dane"))
            .count(),
        mta_sts: (r.mta_sts_policy.as_ref().map(|p| p.mode.clone()))
            .or_else(|| r.mta_sts_error.clone()),
        local_policy: r.local_policy.clone(),
        verdict,
    }
}

/// The report as text.
pub fn render(p: &Posture) -> String {
    let mut out = String::new();
    let t = &p.totals;
    let _ = writeln!(
        out,
        "period:   {} to {} ({} days)",
        p.since, p.until, p.days
    );
    let _ = writeln!(
        out,
        "{:.1} % of messages authenticated by DANE or MTA-STS or WebPKI ({} of {} messages, {} recipients)",
        t.authenticated_percent, t.authenticated_messages, t.counts.messages, t.counts.recipients
    );
    let shares: Vec<String> = (t.counts.mechanisms.iter())
        .map(|m| format!("{} {:.1} %", m.mechanism, m.percent))
        .collect();
    let _ = writeln!(out, "by mechanism (recipients): {}", shares.join(", "));
    let _ = writeln!(
        out,
        "\n{:<32} {:>8} {:>10}  {:<28} refusals",
        "domain", "messages", "recipients", "mechanisms"
    );
    for d in &p.domains {
        let c = &d.counts;
        let shares: Vec<String> = (c.mechanisms.iter())
            .filter(|m| m.recipients > 0)
            .map(|m| format!("{} {:.0}%", m.mechanism, m.percent))
            .collect();
        let refusals: Vec<String> = c.refusals.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let _ = writeln!(
            out,
            "{:<32} {:>8} {:>10}  {:<28} {}",
            tlsrelay::model::visible::visible(&d.domain),
            c.messages,
            c.recipients,
            shares.join(", "),
            if refusals.is_empty() {
                "-".into()
            } else {
                refusals.join(", ")
            }
        );
        if let Some(s) = &d.state {
            let _ = writeln!(
                out,
                "{:<32} now: {}; DANE hosts {} of {}; MTA-STS {}",
                "",
                s.verdict,
                s.dane_hosts,
                s.hosts,
                s.mta_sts.as_deref().unwrap_or("none")
            );
        }
    }
    let _ = writeln!(out, "\nearly warnings: {}", p.early_warnings.len());
    for w in &p.early_warnings {
        let _ = writeln!(out, "  {} {}: {}", w.domain, w.kind, w.message);
    }
    out
}
