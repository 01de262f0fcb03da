//! `tlsrelay report [send]`: TLS reporting (RFC 8460) for the operator.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use chrono::NaiveDate;
use clap::Subcommand;
use tlsrelay::config::Config;
use tlsrelay::ops::control::{self, Request};
use tlsrelay::reporting::outcome::OutcomeLog;
use tlsrelay::reporting::reporter::{summarize, DomainSummary, Reporter, SendResult};
use tlsrelay::spool::{Spool, SpoolError};

use super::{dns, load_config, pretty_json, runtime};

/// What to do with TLS reports.
#[derive(Subcommand)]
pub enum ReportAction {
    /// Send the reports of a finished day that are due, as the running relay would.
    ///
    /// A report is due once its UTC day has ended and the domain's randomized
    /// delay within `tls_rpt.max_delay` has passed; without --now, reports that
    /// are not due yet are left for later.
    Send {
        /// Send every report of the day that is not sent yet, now, without
        /// waiting for its randomized delay.
        #[arg(long)]
        now: bool,
        /// The UTC day (YYYY-MM-DD, or "today"); default yesterday. A day that
        /// has not ended gives a preview: nothing is sent or marked.
        #[arg(long)]
        day: Option<String>,
    },
}

/// Shows the sessions per domain, or sends reports.
pub fn run(
    config_path: Option<&Path>,
    action: Option<ReportAction>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let config = load_config(config_path)?;
    let log = OutcomeLog::open(&config.spool.dir.join("outcomes"))?;
    match action {
        None => show(&log, json),
        Some(ReportAction::Send { now, day }) => {
            send(config, parse_day(day.as_deref())?, now, json)
        }
    }
}

/// The day `--day` names: yesterday without it, today for "today".
fn parse_day(arg: Option<&str>) -> anyhow::Result<NaiveDate> {
    let today = chrono::Utc::now().date_naive();
    match arg {
        None => Ok(today.pred_opt().unwrap_or(today)),
        Some("today") => Ok(today),
        Some(d) => NaiveDate::parse_from_str(d, "%Y-%m-%d")
            .map_err(|e| anyhow::anyhow!("--day {d}: {e}; write YYYY-MM-DD")),
    }
}

/// Today's and yesterday's sessions and failures per domain.
fn show(log: &OutcomeLog, json: bool) -> anyhow::Result<ExitCode> {
    let today = chrono::Utc::now().date_naive();
    let mut all = serde_json::Map::new();
    for (label, day) in [
        ("current", today),
        ("last", today.pred_opt().unwrap_or(today)),
    ] {
        let sum = summarize(&log.read_day(&day.format("%Y-%m-%d").to_string())?);
        if json {
            all.insert(
                label.into(),
                serde_json::json!({"day": day.to_string(), "domains": sum}),
            );
        } else {
            print!("{}", render_period(label, day, &sum));
        }
    }
    if json {
        println!("{}", serde_json::Value::Object(all));
    }
    Ok(ExitCode::SUCCESS)
}

/// One period of `tlsrelay report`: a heading, then one line per domain.
fn render_period(label: &str, day: NaiveDate, sum: &BTreeMap<String, DomainSummary>) -> String {
    let mut out = format!("{label} period: {day} (UTC)\n");
    if sum.is_empty() {
        out.push_str("  no sessions\n");
    }
    for (d, s) in sum {
        let f: Vec<String> = s.failures.iter().map(|(k, v)| format!("{k}={v}")).collect();
        out.push_str(&format!(
            "  {d:<30} {:>6} ok {:>6} failed  {}\n",
            s.successful,
            s.failed,
            f.join(" ")
        ));
    }
    out
}

/// Sends the day's due reports (all of them with `now`), or previews a day that
/// has not ended, and says what happened: through the running server when one
/// holds the spool.
fn send(config: Config, day: NaiveDate, now: bool, json: bool) -> anyhow::Result<ExitCode> {
    let sent: SendResult = runtime()?.block_on(async {
        let spool = match Spool::open(&config.spool.dir) {
            Ok(spool) => spool,
            Err(SpoolError::Locked(_)) => {
                let req = Request::ReportSend { day, now };
                let answer = control::call(&config.spool.dir, &req).await?;
                anyhow::ensure!(answer.ok, "{}", answer.output);
                return Ok(serde_json::from_str(&answer.output)?);
            }
            Err(e) => return Err(e.into()),
        };
        let dns = dns(&config)?;
        let cluster = tlsrelay::cluster::Cluster::open(&config)?;
        let reporter = Reporter::new(Arc::new(config), spool, dns, None)
            .map_err(anyhow::Error::msg)?
            .in_cluster(cluster);
        let at = chrono::Utc::now().timestamp();
        reporter
            .send_command(day, now, at)
            .await
            .map_err(anyhow::Error::msg)
    })?;
    if json {
        println!("{}", pretty_json(&sent)?);
    } else if sent.preview {
        println!("{day} has not ended (UTC): a preview; nothing is sent or marked, the day's reports go out after it ends");
    }
    if !json {
        print!("{}", render_sent(day, &sent));
    }
    Ok(ExitCode::SUCCESS)
}

/// One line per report: the day, the domain and what each destination said.
fn render_sent(day: NaiveDate, sent: &SendResult) -> String {
    if sent.reports.is_empty() {
        return format!("{day}: no report due\n");
    }
    let retry = if sent.preview { "" } else { " (will retry)" };
    sent.reports
        .iter()
        .map(|s| {
            format!(
                "{} {}: {}{}\n",
                s.day,
                s.domain,
                s.results.join("; "),
                if s.done { "" } else { retry }
            )
        })
        .collect()
}
