//! Pure types shared by every layer: no I/O, no async, no TLS configuration.

pub mod address;
pub mod dns;
pub mod domain;
pub mod dsn;
pub mod egress;
pub mod mechanism;
pub mod metric;
pub mod notify;
pub mod rcpt;
pub mod rfc8460;
pub mod status;
pub mod visible;
