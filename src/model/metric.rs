//! Prometheus metric names, in one place so that the dashboard and the code agree,
//! and the fixed label values each may carry (so every series exists, at zero,
//! from the start, and no label can grow without bound).

use crate::model::mechanism::Mechanism;
use crate::model::rfc8460::ResultType;

/// Plans where a local policy met published DANE or MTA-STS: applied (override flag written) or ignored.
pub const LOCAL_OVERRIDES: &str = "tlsrelay_local_policy_overrides_total";
/// Local policy entries by exception state: `expiring` (within 14 days) or `expired`.
pub const LOCAL_EXCEPTIONS: &str = "tlsrelay_local_policy_exceptions";
/// 1 while this node reaches the fleet's Redis, 0 while it goes on alone (only with `[cluster]`).
pub const CLUSTER_REDIS_UP: &str = "tlsrelay_cluster_redis_up";
/// Times a node used local state because Redis was unreachable, by `what`: sts, slots, counts.
pub const CLUSTER_LOCAL_FALLBACKS: &str = "tlsrelay_cluster_local_fallbacks_total";
/// Accepted messages.
pub const ACCEPTED: &str = "tlsrelay_messages_accepted_total";
/// Recipients settled or deferred per attempt, by `result` and by the `auth` that carried them.
pub const DELIVERIES: &str = "tlsrelay_deliveries_total";
/// Hosts refused, by RFC 8460 `result_type`.
pub const REFUSALS: &str = "tlsrelay_tls_refusals_total";
/// DNSSEC validation failures (bogus answers) met during delivery.
pub const DNSSEC_FAILURES: &str = "tlsrelay_dnssec_failures_total";
/// MTA-STS cache events: `event` = hit, miss, fetch_error.
pub const STS_CACHE: &str = "tlsrelay_mta_sts_cache_total";
/// TLS reports: `result` = sent, failed.
pub const TLS_REPORTS: &str = "tlsrelay_tls_reports_total";
/// Messages in the queue.
pub const QUEUE_SIZE: &str = "tlsrelay_queue_messages";
/// Age of the oldest queued message, in seconds.
pub const QUEUE_OLDEST: &str = "tlsrelay_queue_oldest_age_seconds";
/// Disk flushes of the spool's log; each covers a whole batch of records.
pub const SPOOL_FLUSHES: &str = "tlsrelay_spool_flushes_total";
/// Records written to the spool's log (messages, envelope changes, removals).
pub const SPOOL_RECORDS: &str = "tlsrelay_spool_records_total";
/// Free bytes on the spool's file system, read at each scrape.
pub const SPOOL_FREE: &str = "tlsrelay_spool_free_bytes";
/// The free-space reserve below which mail is refused (`[spool] min_free`).
pub const SPOOL_RESERVE: &str = "tlsrelay_spool_min_free_bytes";
/// Always 1; the `version` label carries the release.
pub const BUILD_INFO: &str = "tlsrelay_build_info";
/// 1 while the last DNSSEC self-test passed, else 0.
pub const SELFTEST_OK: &str = "tlsrelay_dnssec_selftest_ok";
/// Unix time of the last DNSSEC self-test run.
pub const SELFTEST_LAST: &str = "tlsrelay_dnssec_selftest_last_run_timestamp_seconds";
/// 1 while `/readyz` would answer 200, else 0 (computed at each scrape).
pub const READY: &str = "tlsrelay_ready";
/// Inbound SMTP connections taken (before any limit is applied).
pub const INBOUND_SESSIONS: &str = "tlsrelay_inbound_sessions_total";
/// Bytes of the messages accepted (as stored, our Received header included).
pub const INBOUND_BYTES: &str = "tlsrelay_inbound_bytes_total";
/// Inbound replies 4xx/5xx, by `class` and RFC 3463 `subject` (see [`refusal_labels`]).
pub const INBOUND_REJECTIONS: &str = "tlsrelay_inbound_rejections_total";
/// Inbound listeners accepting connections.
pub const INBOUND_LISTENERS: &str = "tlsrelay_inbound_listeners";
/// Seconds from arrival to a recipient's final outcome, by `result`.
pub const QUEUE_TIME: &str = "tlsrelay_delivery_queue_time_seconds";
/// Seconds of one SMTP transaction (MAIL to the end of data), by `outcome`.
pub const TRANSACTION_TIME: &str = "tlsrelay_delivery_transaction_seconds";
/// Open outbound SMTP connections (pooled idle ones included), by `mechanism`.
pub const OUTBOUND_CONNECTIONS: &str = "tlsrelay_outbound_connections";
/// Early warnings of the last probe, by `kind` (no domain label: domains are unbounded).
pub const EARLY_WARNINGS: &str = "tlsrelay_early_warnings";
/// Destination domains the last early-warnings probe looked at.
pub const EARLY_WARNINGS_DOMAINS: &str = "tlsrelay_early_warnings_domains_probed";
/// Unix time of the last early-warnings probe.
pub const EARLY_WARNINGS_LAST_RUN: &str = "tlsrelay_early_warnings_last_run_timestamp_seconds";

/// The `auth` label of a delivered recipient: one per mechanism.
pub const MECHANISMS: [Mechanism; 5] = [
    Mechanism::Dane,
    Mechanism::MtaSts,
    Mechanism::Local,
    Mechanism::Verify,
    Mechanism::Encrypt,
];

/// The `mechanism` label of a connection not yet authenticated (before and during the handshake).
pub const UNAUTHENTICATED: &str = "none";

/// Every RFC 8460 result type, for the `result_type` label.
pub const RESULT_TYPES: [ResultType; 11] = [
    ResultType::StarttlsNotSupported,
    ResultType::CertificateHostMismatch,
    ResultType::CertificateExpired,
    ResultType::CertificateNotTrusted,
    ResultType::ValidationFailure,
    ResultType::TlsaInvalid,
    ResultType::DnssecInvalid,
    ResultType::DaneRequired,
    ResultType::StsPolicyFetchError,
    ResultType::StsPolicyInvalid,
    ResultType::StsWebpkiInvalid,
];

/// `class` label values of inbound refusals.
pub const REFUSAL_CLASSES: [&str; 2] = ["transient", "permanent"];

/// `subject` label values of inbound refusals: the RFC 3463 subjects, by number.
pub const REFUSAL_SUBJECTS: [&str; 8] = [
    "other",
    "addressing",
    "mailbox",
    "mail_system",
    "network",
    "protocol",
    "content",
    "security",
];

/// The `(class, subject)` labels of an inbound reply, or None when it is no refusal.
///
/// Labels come from the reply code and the enhanced status code, never from the
/// reply's text, so the set stays at 16 series whatever clients send.
pub fn refusal_labels(code: u16, enhanced: &str) -> Option<(&'static str, &'static str)> {
    let class = match code / 100 {
        4 => REFUSAL_CLASSES[0],
        5 => REFUSAL_CLASSES[1],
        _ => return None,
    };
    let subject = enhanced
        .split('.')
        .nth(1)
        .and_then(|s| s.parse::<usize>().ok())
        .and_then(|n| REFUSAL_SUBJECTS.get(n))
        .copied()
        .unwrap_or(REFUSAL_SUBJECTS[0]);
    Some((class, subject))
}

/// `result` label values of the queue-time histogram.
pub const FINAL_RESULTS: [&str; 3] = ["delivered", "failed", "expired"];

/// `outcome` label values of the transaction-time histogram.
pub const TRANSACTION_OUTCOMES: [&str; 2] = ["completed", "broken"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_labels_come_from_codes_only() {
        for (code, esc, want) in [
            (250, "2.0.0", None),
            (354, "", None),
            (221, "2.0.0", None),
            (421, "4.3.2", Some(("transient", "mail_system"))),
            (421, "4.7.0", Some(("transient", "security"))),
            (452, "4.3.1", Some(("transient", "mail_system"))),
            (451, "4.4.2", Some(("transient", "network"))),
            (550, "5.7.1", Some(("permanent", "security"))),
            (553, "5.1.3", Some(("permanent", "addressing"))),
            (552, "5.2.3", Some(("permanent", "mailbox"))),
            (501, "5.5.4", Some(("permanent", "protocol"))),
            (554, "5.6.0", Some(("permanent", "content"))),
            (502, "", Some(("permanent", "other"))),
            (500, "5.9.9", Some(("permanent", "other"))),
            (500, "5.x.1", Some(("permanent", "other"))),
            (599, "5.0.0", Some(("permanent", "other"))),
        ] {
            assert_eq!(refusal_labels(code, esc), want, "{code} {esc}");
        }
    }

    #[test]
    fn label_sets_are_complete() {
        let words: Vec<&str> = MECHANISMS.iter().map(|m| m.as_str()).collect();
        assert_eq!(words, ["dane", "mta-sts", "local", "verify", "encrypt"]);
        let mut types: Vec<&str> = RESULT_TYPES.iter().map(|t| t.as_str()).collect();
        types.sort_unstable();
        types.dedup();
        assert_eq!(types.len(), RESULT_TYPES.len());
    }
}
