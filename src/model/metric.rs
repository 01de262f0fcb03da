//! Prometheus metric names, in one place so that the dashboard and the code agree.

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
