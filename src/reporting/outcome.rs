//! What happened on each attempt on each MX host, recorded in RFC 8460 terms.
//!
//! Delivery appends one JSON line per host attempt to
//! `<spool>/outcomes/YYYY-MM-DD.jsonl` (UTC day). TLS reporting aggregates these
//! files; it never re-derives results from logs.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

pub use crate::model::rfc8460::{PolicyType, ResultType};

/// One attempt on one MX host (or on the domain, when no host was reached).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// When (Unix seconds).
    pub time: i64,
    /// The message's queue id.
    pub queue_id: String,
    /// The recipient (policy) domain.
    pub domain: String,
    /// The MX host name, empty when the failure came before any host.
    pub mx_host: String,
    /// The address connected to, if any.
    pub addr: Option<String>,
    /// The policy type in force.
    pub policy: PolicyType,
    /// How the host was authenticated (`verify`, `encrypt`, `dane`, ...), or none.
    pub auth: Option<String>,
    /// The TLS session was established and authenticated.
    pub tls_ok: bool,
    /// The RFC 8460 failure type, when `tls_ok` is false and a type applies.
    pub result: Option<ResultType>,
    /// Whether the message was a TLS report (not counted in reports, RFC 8460 §3).
    pub report_mail: bool,
    /// Plain-words detail.
    pub detail: String,
    /// Our source address for the session, if known.
    #[serde(default)]
    pub sending_ip: Option<String>,
    /// The policy as RFC 8460 §4.3 `policy-string`: MTA-STS policy lines, or TLSA records as `3 1 1 HEX`.
    #[serde(default)]
    pub policy_strings: Vec<String>,
    /// The MTA-STS policy's `mx` patterns (RFC 8460 §4.3 `mx-host`).
    #[serde(default)]
    pub mx_patterns: Vec<String>,
}

/// Appends outcome records to the day's file.
#[derive(Debug)]
pub struct OutcomeLog {
    dir: PathBuf,
    lock: Mutex<()>,
}

impl OutcomeLog {
    /// Opens (creating) `dir` for outcome files.
    pub fn open(dir: &Path) -> io::Result<OutcomeLog> {
        fs::create_dir_all(dir)?;
        Ok(OutcomeLog {
            dir: dir.to_path_buf(),
            lock: Mutex::new(()),
        })
    }

    /// Appends one record to the file of its UTC day.
    pub fn append(&self, outcome: &Outcome) -> io::Result<()> {
        let day = chrono::DateTime::from_timestamp(outcome.time, 0)
            .map(|t| t.format("%Y-%m-%d").to_string())
            .unwrap_or_else(|| "unknown".into());
        let mut line = serde_json::to_vec(outcome)?;
        line.push(b'\n');
        let _guard = self.lock.lock().unwrap();
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{day}.jsonl")))?;
        f.write_all(&line)
    }

    /// The UTC days (`YYYY-MM-DD`) that have an outcome file, oldest first.
    pub fn days(&self) -> io::Result<Vec<String>> {
        let mut days = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let name = entry?.file_name();
            let Some(day) = name.to_str().and_then(|n| n.strip_suffix(".jsonl")) else {
                continue;
            };
            if chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d").is_ok() {
                days.push(day.to_string());
            }
        }
        days.sort();
        Ok(days)
    }

    /// Every record of one UTC day (`YYYY-MM-DD`).
    pub fn read_day(&self, day: &str) -> io::Result<Vec<Outcome>> {
        let text = match fs::read_to_string(self.dir.join(format!("{day}.jsonl"))) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(e),
        };
        // A torn last line (crash mid-append) is skipped, not fatal.
        Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    }
}
