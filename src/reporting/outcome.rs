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

use crate::model::domain::{Domain, DomainError};
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
    /// The route's next hop (`[host]:port` or a name), when a route replaced the MX hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
}

/// How one outcome record counts in TLS reports and summaries (RFC 8460 §4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionResult {
    /// A TLS session was established and authenticated.
    Success,
    /// A failed session, with its RFC 8460 result type.
    Failure(ResultType),
    /// Not a session to report: report mail, or a success that reached no address.
    NotCounted,
}

impl Outcome {
    /// How this record counts: the one reading of `report_mail`, `tls_ok`, `result`
    /// and `addr` that reports and `tlsrelay report` share.
    pub fn session(&self) -> SessionResult {
        // Report mail is not reported on (RFC 8460 §5.3), whatever happened to it.
        if self.report_mail {
            return SessionResult::NotCounted;
        }
        // RFC 8460 reports cover sessions with the domain's MX hosts under its
        // policy; routed mail went to a hop the operator chose, so it is recorded
        // (with `route`) for the operator's own views but not reported to the domain.
        if self.route.is_some() {
            return SessionResult::NotCounted;
        }
        match (self.tls_ok, self.result) {
            // A recorded result type is a failure, whatever `tls_ok` says.
            (_, Some(r)) => SessionResult::Failure(r),
            // A failure with no more specific type is `validation-failure` (RFC 8460 §4.3).
            (false, None) => SessionResult::Failure(ResultType::ValidationFailure),
            (true, None) if self.addr.is_some() => SessionResult::Success,
            // A "success" that never reached an address was no session.
            (true, None) => SessionResult::NotCounted,
        }
    }

    /// The policy domain in A-label form. Records written before delivery stored
    /// A-labels may hold the Unicode spelling (`bücher.example`); both give one `Domain`.
    pub fn policy_domain(&self) -> Result<Domain, DomainError> {
        Domain::parse(&self.domain)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn record(report_mail: bool, tls_ok: bool, result: Option<ResultType>, addr: bool) -> Outcome {
        Outcome {
            time: 1_714_525_200,
            queue_id: "q".into(),
            domain: "bücher.example".into(),
            mx_host: "mx.example".into(),
            addr: addr.then(|| "192.0.2.1".into()),
            policy: PolicyType::NoPolicyFound,
            auth: None,
            tls_ok,
            result,
            report_mail,
            detail: String::new(),
            sending_ip: None,
            policy_strings: vec![],
            mx_patterns: vec![],
            route: None,
        }
    }

    #[test]
    fn session_table() {
        use ResultType::{CertificateExpired as Expired, ValidationFailure as Untyped};
        use SessionResult::{Failure, NotCounted, Success};
        // (report_mail, tls_ok, result, reached an address, counts as)
        let cases = [
            (false, true, None, true, Success),
            (false, true, None, false, NotCounted),
            (false, false, Some(Expired), true, Failure(Expired)),
            (false, false, Some(Expired), false, Failure(Expired)),
            (false, true, Some(Expired), true, Failure(Expired)),
            (false, false, None, true, Failure(Untyped)),
            (false, false, None, false, Failure(Untyped)),
            (true, true, None, true, NotCounted),
            (true, false, Some(Expired), true, NotCounted),
            (true, false, None, false, NotCounted),
        ];
        for (report_mail, tls_ok, result, addr, want) in cases {
            let o = record(report_mail, tls_ok, result, addr);
            assert_eq!(
                o.session(),
                want,
                "{report_mail} {tls_ok} {result:?} {addr}"
            );
        }
    }

    #[test]
    fn policy_domain_is_the_a_label() {
        let mut o = record(false, true, None, true);
        assert_eq!(o.policy_domain().unwrap().as_str(), "xn--bcher-kva.example");
        o.domain = "not a domain!".into();
        assert!(o.policy_domain().is_err());
    }
}
