//! Prometheus metrics: names in one place, so the dashboard and the code agree.
//!
//! Counters are cheap no-ops until `install` runs (`[metrics] listen` set). The
//! recorder is process-wide; `reporting::endpoint` serves what it renders.

use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::model::mechanism::Mechanism;
pub use crate::model::metric::*;

/// Queue time buckets: a minute to the default five-day lifetime.
const QUEUE_BUCKETS: [f64; 12] = [
    1.0, 5.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 14400.0, 43200.0, 86400.0, 432000.0,
];
/// Transaction time buckets: a LAN hop to a slow remote's data timeout.
const TRANSACTION_BUCKETS: [f64; 11] =
    [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0];

/// Installs the process-wide recorder and registers every known series at zero.
pub fn install() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(QUEUE_TIME.into()), &QUEUE_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(TRANSACTION_TIME.into()), &TRANSACTION_BUCKETS)?
        .install_recorder()?;
    describe();
    register();
    Ok(handle)
}

/// Makes every counter and gauge with a fixed label set exist from the start:
/// `rate()` and absence alerts need a series before its first event.
fn register() {
    for name in [
        ACCEPTED,
        DNSSEC_FAILURES,
        SPOOL_FLUSHES,
        SPOOL_RECORDS,
        INBOUND_SESSIONS,
        INBOUND_BYTES,
    ] {
        metrics::counter!(name).absolute(0);
    }
    for m in MECHANISMS {
        metrics::counter!(DELIVERIES, "result" => "delivered", "auth" => m.as_str()).absolute(0);
        metrics::gauge!(OUTBOUND_CONNECTIONS, "mechanism" => m.as_str()).set(0.0);
    }
    metrics::gauge!(OUTBOUND_CONNECTIONS, "mechanism" => UNAUTHENTICATED).set(0.0);
    for result in ["failed", "deferred"] {
        metrics::counter!(DELIVERIES, "result" => result, "auth" => "none").absolute(0);
    }
    for t in RESULT_TYPES {
        metrics::counter!(REFUSALS, "result_type" => t.as_str()).absolute(0);
    }
    for event in ["hit", "miss", "fetch_error"] {
        metrics::counter!(STS_CACHE, "event" => event).absolute(0);
    }
    for result in ["sent", "failed"] {
        metrics::counter!(TLS_REPORTS, "result" => result).absolute(0);
    }
    for class in REFUSAL_CLASSES {
        for subject in REFUSAL_SUBJECTS {
            metrics::counter!(INBOUND_REJECTIONS, "class" => class, "subject" => subject)
                .absolute(0);
        }
    }
    for published in ["dane", "mta-sts"] {
        for result in ["applied", "ignored"] {
            metrics::counter!(LOCAL_OVERRIDES, "published" => published, "result" => result)
                .absolute(0);
        }
    }
    for state in ["expiring", "expired"] {
        metrics::gauge!(LOCAL_EXCEPTIONS, "state" => state).set(0.0);
    }
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    for kind in super::early_warning::KINDS {
        metrics::gauge!(EARLY_WARNINGS, "kind" => kind).set(0.0);
    }
    for name in [QUEUE_SIZE, QUEUE_OLDEST, INBOUND_LISTENERS] {
        metrics::gauge!(name).set(0.0);
    }
}

fn describe() {
    metrics::describe_counter!(ACCEPTED, "Messages accepted and stored in the spool.");
    metrics::describe_counter!(
        DELIVERIES,
        "Recipient results per attempt, by result and by the authentication that carried them."
    );
    metrics::describe_counter!(REFUSALS, "MX hosts refused, by RFC 8460 result type.");
    metrics::describe_counter!(
        DNSSEC_FAILURES,
        "DNSSEC validation failures during delivery."
    );
    metrics::describe_counter!(
        STS_CACHE,
        "MTA-STS policy cache hits, misses and fetch errors."
    );
    metrics::describe_counter!(TLS_REPORTS, "SMTP TLS reports sent and failed.");
    metrics::describe_gauge!(
        CLUSTER_REDIS_UP,
        "1 while the fleet's Redis is reachable, 0 while this node goes on alone ([cluster] only)."
    );
    metrics::describe_counter!(
        CLUSTER_LOCAL_FALLBACKS,
        "Uses of local state because Redis was unreachable, by what (sts, slots, counts)."
    );
    metrics::describe_gauge!(QUEUE_SIZE, "Messages in the queue.");
    metrics::describe_gauge!(QUEUE_OLDEST, "Age of the oldest queued message in seconds.");
    metrics::describe_counter!(
        SPOOL_FLUSHES,
        "Disk flushes of the spool log (each covers a batch of records)."
    );
    metrics::describe_counter!(SPOOL_RECORDS, "Records written to the spool log.");
    describe_health();
    describe_traffic();
    metrics::describe_counter!(
        LOCAL_OVERRIDES,
        "Plans where a local policy met the DANE or MTA-STS a domain publishes: applied with its override flag, or ignored without it."
    );
    metrics::describe_gauge!(
        LOCAL_EXCEPTIONS,
        "Local policy entries past their expires date, or within 14 days of it."
    );
}

fn describe_health() {
    metrics::describe_gauge!(SPOOL_FREE, "Free bytes on the spool's file system.");
    metrics::describe_gauge!(
        SPOOL_RESERVE,
        "Free space below which mail is refused ([spool] min_free)."
    );
    metrics::describe_gauge!(BUILD_INFO, "Always 1; the version label names the release.");
    metrics::describe_gauge!(
        SELFTEST_OK,
        "1 while the last DNSSEC self-test (root DNSKEY validates) passed, else 0."
    );
    metrics::describe_gauge!(SELFTEST_LAST, "Unix time of the last DNSSEC self-test.");
    metrics::describe_gauge!(READY, "1 while /readyz answers 200, else 0.");
    metrics::describe_gauge!(
        EARLY_WARNINGS,
        "Early warnings found by the last probe of the busiest destinations, by kind."
    );
    metrics::describe_gauge!(
        EARLY_WARNINGS_DOMAINS,
        "Destination domains the last early-warnings probe looked at."
    );
    metrics::describe_gauge!(
        EARLY_WARNINGS_LAST_RUN,
        "Unix time of the last early-warnings probe."
    );
}

fn describe_traffic() {
    metrics::describe_counter!(INBOUND_SESSIONS, "Inbound SMTP connections taken.");
    metrics::describe_counter!(INBOUND_BYTES, "Bytes of accepted messages, as stored.");
    metrics::describe_counter!(
        INBOUND_REJECTIONS,
        "Inbound 4xx/5xx replies, by class and RFC 3463 subject."
    );
    metrics::describe_gauge!(
        INBOUND_LISTENERS,
        "Inbound listeners accepting connections."
    );
    metrics::describe_histogram!(
        QUEUE_TIME,
        metrics::Unit::Seconds,
        "Time from arrival to a recipient's final outcome."
    );
    metrics::describe_histogram!(
        TRANSACTION_TIME,
        metrics::Unit::Seconds,
        "Time of one outbound SMTP transaction (MAIL to the reply after data)."
    );
    metrics::describe_gauge!(
        OUTBOUND_CONNECTIONS,
        "Open outbound SMTP connections (idle pooled ones included), by the authentication of their TLS."
    );
}

/// Counts an inbound reply when it refuses something (4xx, 5xx).
pub fn inbound_reply(code: u16, enhanced: &str) {
    if let Some((class, subject)) = refusal_labels(code, enhanced) {
        metrics::counter!(INBOUND_REJECTIONS, "class" => class, "subject" => subject).increment(1);
    }
}

/// Records the time a recipient spent queued, at its final outcome (one of [`FINAL_RESULTS`]).
pub fn queue_time(result: &'static str, seconds: i64) {
    metrics::histogram!(QUEUE_TIME, "result" => result).record(seconds.max(0) as f64);
}

/// Records the time of one transaction; `completed` is false when the session broke.
pub fn transaction_time(elapsed: Duration, completed: bool) {
    let outcome = TRANSACTION_OUTCOMES[usize::from(!completed)];
    metrics::histogram!(TRANSACTION_TIME, "outcome" => outcome).record(elapsed.as_secs_f64());
}

/// One open outbound connection, counted in [`OUTBOUND_CONNECTIONS`] until dropped.
///
/// Labelled by mechanism, not by domain: domains are unbounded, mechanisms are five.
#[derive(Debug)]
pub struct OpenConnection {
    label: &'static str,
}

impl OpenConnection {
    /// Counts a connection that is not yet authenticated.
    pub fn new() -> OpenConnection {
        metrics::gauge!(OUTBOUND_CONNECTIONS, "mechanism" => UNAUTHENTICATED).increment(1.0);
        OpenConnection {
            label: UNAUTHENTICATED,
        }
    }

    /// Moves the connection to the mechanism that authenticated it.
    pub fn authenticated(&mut self, mechanism: Mechanism) {
        metrics::gauge!(OUTBOUND_CONNECTIONS, "mechanism" => self.label).decrement(1.0);
        self.label = mechanism.as_str();
        metrics::gauge!(OUTBOUND_CONNECTIONS, "mechanism" => self.label).increment(1.0);
    }
}

impl Default for OpenConnection {
    fn default() -> Self {
        OpenConnection::new()
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        metrics::gauge!(OUTBOUND_CONNECTIONS, "mechanism" => self.label).decrement(1.0);
    }
}
