//! What became of one recipient in one delivery attempt.

use std::net::SocketAddr;

use crate::model::mechanism::Mechanism;
use crate::model::status::EnhancedStatus;

/// The TLS session a message went over, as a log line or a receipt names it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Channel {
    /// The address connected to.
    pub addr: Option<SocketAddr>,
    /// Our end of the connection: the source address (configured or chosen by the kernel).
    pub source: Option<SocketAddr>,
    /// TLS version, e.g. `TLSv1.3`.
    pub tls_version: String,
    /// Negotiated cipher suite.
    pub cipher: String,
}

/// The result for one recipient of one attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum RcptResult {
    /// Accepted by `host`.
    Delivered {
        /// The MX host.
        host: String,
        /// How the host was authenticated.
        mechanism: Mechanism,
        /// Its reply after the data.
        reply: String,
        /// The connection that carried it.
        channel: Channel,
    },
    /// Permanently failed.
    Failed {
        /// Enhanced status code.
        status: EnhancedStatus,
        /// Plain words.
        reason: String,
        /// The host whose reply decided it.
        remote: Option<String>,
        /// That reply.
        diagnostic: Option<String>,
    },
    /// Not delivered this time; retried later.
    Deferred {
        /// Plain words, naming every host tried and why it was not used.
        reason: String,
    },
}

impl RcptResult {
    /// A permanent failure decided locally (no remote reply).
    pub fn failed(status: EnhancedStatus, reason: impl Into<String>) -> RcptResult {
        RcptResult::Failed {
            status,
            reason: reason.into(),
            remote: None,
            diagnostic: None,
        }
    }
}
