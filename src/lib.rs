//! tlsrelay: an outbound SMTP relay that delivers mail only over authenticated,
//! forward-secret TLS.
//!
//! The modules follow a message's path: [`inbound`] accepts it, [`spool`] keeps it
//! durable, and the binary's commands ([`queue`]) let the operator look at it.

pub mod config;
pub mod inbound;
pub mod queue;
pub mod spool;
pub mod tls;
