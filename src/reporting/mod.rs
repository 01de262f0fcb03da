//! What tlsrelay tells others: outcome records, TLS reports (RFC 8460) and metrics.

pub mod early_warning;
pub mod endpoint;
pub mod health;
pub mod metrics;
pub mod outcome;
pub mod posture;
pub mod process;
pub mod receipts;
pub mod reporter;
pub mod tlsrpt;
pub mod upkeep;
