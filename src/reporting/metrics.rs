//! Prometheus metrics: names in one place, so the dashboard and the code agree.
//!
//! Counters are cheap no-ops until `install` runs (`[metrics] listen` set).

use std::net::SocketAddr;

pub use crate::model::metric::*;

/// The Prometheus endpoint could not be started.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the metrics endpoint on {addr}: {error}")]
pub struct InstallError {
    /// The address asked for.
    pub addr: SocketAddr,
    /// The exporter's error.
    pub error: metrics_exporter_prometheus::BuildError,
}

/// Starts the Prometheus endpoint on `addr` (needs a running tokio runtime).
pub fn install(addr: SocketAddr) -> Result<(), InstallError> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|error| InstallError { addr, error })?;
    describe();
    Ok(())
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
    metrics::describe_gauge!(QUEUE_SIZE, "Messages in the queue.");
    metrics::describe_gauge!(QUEUE_OLDEST, "Age of the oldest queued message in seconds.");
    metrics::describe_counter!(
        SPOOL_FLUSHES,
        "Disk flushes of the spool log (each covers a batch of records)."
    );
    metrics::describe_counter!(SPOOL_RECORDS, "Records written to the spool log.");
}
