//! What keeps TLS reporting safe to leave on: reports only under a name the
//! receiving domain can answer (a fully qualified `server.hostname`), and
//! outcome records and sent-report markers deleted after `tls_rpt.retention`.

use std::path::Path;
use std::time::Duration;

use chrono::NaiveDate;

use crate::model::domain::Domain;

/// Why `hostname` cannot sign reports, or None when it is fully qualified.
/// A short name such as `vm` would send reports from `tlsrpt-noreply@vm`,
/// an address nobody can reply to, under a submitter nobody can identify.
pub fn hostname_problem(hostname: &str) -> Option<String> {
    let fix =
        "set server.hostname to this relay's fully qualified name, e.g. \"relay.example.com\"";
    let bare = hostname.trim_end_matches('.');
    if bare.parse::<std::net::IpAddr>().is_ok() {
        return Some(format!(
            "server.hostname \"{hostname}\" is an address, not a name; {fix}"
        ));
    }
    if Domain::parse(bare).is_err() || !bare.contains('.') {
        return Some(format!(
            "server.hostname \"{hostname}\" is not a fully qualified domain name; {fix}"
        ));
    }
    let last = bare
        .rsplit('.')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if matches!(
        last.as_str(),
        "localhost" | "localdomain" | "local" | "internal" | "lan" | "home"
    ) {
        return Some(format!(
            "server.hostname \"{hostname}\" is a local name others cannot resolve; {fix}"
        ));
    }
    None
}

/// The days among `days` that are older than `retention` on `today`.
pub fn expired_days(days: &[NaiveDate], today: NaiveDate, retention: Duration) -> Vec<NaiveDate> {
    let keep = chrono::Duration::days((retention.as_secs() / 86400).max(1) as i64);
    days.iter().copied().filter(|d| today - *d > keep).collect()
}

/// Deletes outcome files (`outcomes/DAY.jsonl`) and marker directories
/// (`tlsrpt/sent/DAY/`) of the spool at `spool_dir` older than `retention`;
/// returns how many days went.
pub fn prune(spool_dir: &Path, today: NaiveDate, retention: Duration) -> usize {
    let outcomes = spool_dir.join("outcomes");
    let markers = spool_dir.join("tlsrpt").join("sent");
    let mut pruned = 0;
    for (dir, suffix) in [(&outcomes, ".jsonl"), (&markers, "")] {
        let days = day_entries(dir, suffix);
        for day in expired_days(&days, today, retention) {
            let path = dir.join(format!("{}{suffix}", day.format("%Y-%m-%d")));
            let gone = if suffix.is_empty() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            match gone {
                Ok(()) => pruned += 1,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot delete expired TLS reporting data")
                }
            }
        }
    }
    pruned
}

/// The days named by the entries of `dir` (`YYYY-MM-DD` + `suffix`).
fn day_entries(dir: &Path, suffix: &str) -> Vec<NaiveDate> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return vec![];
    };
    entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| NaiveDate::parse_from_str(n.strip_suffix(suffix)?, "%Y-%m-%d").ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_that_may_send_reports() {
        let cases = [
            ("relay.example.com", true),
            ("relay.example.com.", true),
            ("mx1.b\u{fc}cher.example", true),
            ("vm", false),
            ("localhost", false),
            ("relay.localdomain", false),
            ("192.0.2.1", false),
            ("[192.0.2.1]", false),
            ("", false),
        ];
        for (name, ok) in cases {
            assert_eq!(
                hostname_problem(name).is_none(),
                ok,
                "{name}: {:?}",
                hostname_problem(name)
            );
        }
    }

    #[test]
    fn days_past_retention() {
        let d = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
        let days = [
            d("2026-10-01"),
            d("2026-11-01"),
            d("2026-11-02"),
            d("2026-12-01"),
        ];
        let month = Duration::from_secs(30 * 86400);
        assert_eq!(
            expired_days(&days, d("2026-12-02"), month),
            vec![d("2026-10-01"), d("2026-11-01")]
        );
        assert_eq!(
            expired_days(&days, d("2026-12-02"), Duration::from_secs(0)),
            vec![d("2026-10-01"), d("2026-11-01"), d("2026-11-02")]
        );
    }

    #[test]
    fn prune_deletes_old_days_only() {
        let dir = tempfile::tempdir().unwrap();
        let outcomes = dir.path().join("outcomes");
        let sent = dir.path().join("tlsrpt/sent");
        std::fs::create_dir_all(&outcomes).unwrap();
        for day in ["2026-10-01", "2026-12-01"] {
            std::fs::write(outcomes.join(format!("{day}.jsonl")), "{}\n").unwrap();
            std::fs::create_dir_all(sent.join(day)).unwrap();
            std::fs::write(sent.join(day).join("example.com"), "done\n").unwrap();
        }
        std::fs::write(outcomes.join("notes.txt"), "kept").unwrap();
        let today = NaiveDate::from_ymd_opt(2026, 12, 2).unwrap();
        assert_eq!(prune(dir.path(), today, Duration::from_secs(30 * 86400)), 2);
        assert!(!outcomes.join("2026-10-01.jsonl").exists());
        assert!(!sent.join("2026-10-01").exists());
        assert!(outcomes.join("2026-12-01.jsonl").exists());
        assert!(sent.join("2026-12-01/example.com").exists());
        assert!(outcomes.join("notes.txt").exists());
    }
}
