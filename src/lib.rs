//! tlsrelay: an outbound SMTP relay that delivers mail only over authenticated,
//! forward-secret TLS.
//!
//! The modules follow a message's path: [`inbound`] accepts it, [`spool`] keeps it
//! durable, and the binary's commands ([`queue`]) let the operator look at it.

pub mod config;
pub mod dane;
pub mod delivery;
pub mod dns;
pub mod dsn;
pub mod inbound;
pub mod local_policy;
pub mod outcome;
pub mod policy;
pub mod queue;
pub mod relay;
pub mod spool;
pub mod sts;
pub mod tls;
