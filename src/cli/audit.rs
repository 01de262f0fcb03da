//! `tlsrelay audit find|verify`: the delivery receipts in `<spool>/receipts`.
//! Read-only: the files are append-only, so this runs beside a live server.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use chrono::NaiveDate;
use clap::Subcommand;
use tlsrelay::reporting::receipts::{self, Query, Receipt, Verdict};

use super::{load_config, pretty_json, rfc3339};

/// What to do with the receipts.
#[derive(Subcommand)]
pub enum AuditAction {
    /// Show the receipts of a message or a recipient. Exit status 1 when none is found.
    Find {
        /// The Message-ID (angle brackets optional).
        #[arg(
            long,
            conflicts_with = "recipient",
            required_unless_present = "recipient"
        )]
        message_id: Option<String>,
        /// The recipient address (ASCII case ignored).
        #[arg(long)]
        recipient: Option<String>,
        /// Only receipts from this UTC day (YYYY-MM-DD) on.
        #[arg(long)]
        since: Option<String>,
        /// Print JSON (an array of receipts, as stored).
        #[arg(long)]
        json: bool,
    },
    /// Check the hash chain over every receipt file; name the first broken
    /// record. Exit status 0 when the chain holds (torn lines left by a crash
    /// are named but tolerated), 1 when it is broken.
    Verify,
}

/// Runs an audit command.
pub fn run(config_path: Option<&Path>, action: AuditAction) -> anyhow::Result<ExitCode> {
    let config = load_config(config_path)?;
    let dir = config.spool.dir.join("receipts");
    match action {
        AuditAction::Find {
            message_id,
            recipient,
            since,
            json,
        } => {
            let query = match (message_id, recipient) {
                (Some(id), _) => Query::MessageId(id),
                (None, Some(a)) => Query::Recipient(a),
                (None, None) => anyhow::bail!("give --message-id ID or --recipient ADDRESS"),
            };
            let since = since
                .map(|d| {
                    NaiveDate::parse_from_str(&d, "%Y-%m-%d")
                        .with_context(|| format!("--since {d}: expected a day as YYYY-MM-DD"))
                })
                .transpose()?;
            find(&dir, &query, since, json)
        }
        AuditAction::Verify => {
            let verdict = receipts::verify_dir(&dir)
                .with_context(|| format!("cannot read the receipts in {}", dir.display()))?;
            print!("{}", render_verdict(&verdict, &dir));
            Ok(if verdict.broken.is_some() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

/// Prints the receipts answering `query`.
fn find(
    dir: &Path,
    query: &Query,
    since: Option<NaiveDate>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let found = receipts::read_since(dir, since, |r| query.matches(r))
        .with_context(|| format!("cannot read the receipts in {}", dir.display()))?;
    if json {
        println!("{}", pretty_json(&found)?);
    } else if found.is_empty() {
        println!("no receipt found");
    } else {
        let blocks: Vec<String> = found.iter().map(render_receipt).collect();
        print!("{}", blocks.join("\n"));
    }
    Ok(if found.is_empty() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// One receipt as `key: value` lines.
pub fn render_receipt(r: &Receipt) -> String {
    let v = |s: &str| tlsrelay::model::visible::visible(s).into_owned();
    let mut out = String::new();
    let p = &r.policy;
    // The RFC 8460 spelling (`tlsa`, `sts`, `no-policy-found`), as in the JSON.
    let mut policy = serde_json::to_value(p.policy_type)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    if !p.tlsa.is_empty() {
        let _ = write!(policy, "; TLSA {}", p.tlsa.join(", "));
    }
    if let Some(id) = &p.sts_id {
        let _ = write!(policy, "; MTA-STS id {}", v(id));
    }
    if let Some(l) = &p.local {
        let _ = write!(policy, "; local policy {}", v(l));
    }
    if let Some(w) = &p.waiver {
        let _ = write!(policy, "; waived: {w}");
    }
    let lines = [
        ("delivered", rfc3339(r.time)),
        ("queue id", v(&r.queue_id)),
        ("message-id", v(r.message_id.as_deref().unwrap_or("-"))),
        ("from", format!("<{}>", v(&r.sender))),
        ("to", format!("<{}>", v(&r.recipient))),
        (
            "mx host",
            format!("{} [{}]", v(&r.mx_host), r.addr.as_deref().unwrap_or("-")),
        ),
        (
            "tls",
            format!("{} {} {}", r.tls_version, r.cipher, r.kx_group),
        ),
        ("mechanism", r.mechanism.to_string()),
        ("spki sha256", r.spki_sha256.clone()),
        ("policy", policy),
    ];
    for (k, val) in lines {
        let _ = writeln!(out, "{k:<12} {val}");
    }
    out
}

/// What `audit verify` prints.
pub fn render_verdict(v: &Verdict, dir: &Path) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "receipts:   {} intact record(s) in {} file(s) in {}",
        v.records,
        v.files,
        dir.display()
    );
    match &v.anchor {
        None => out.push_str("start:      the first receipt ever (genesis)\n"),
        Some(h) => {
            let _ = writeln!(
                out,
                "start:      chained to {h} (older files deleted by the retention)"
            );
        }
    }
    for t in &v.torn {
        let _ = writeln!(out, "torn:       {t}: an interrupted write (crash or power loss); tolerated, the chain continues past it");
    }
    match &v.broken {
        None => out.push_str("chain:      intact\n"),
        Some(b) => {
            let _ = writeln!(out, "chain:      BROKEN at {b}");
        }
    }
    out
}
