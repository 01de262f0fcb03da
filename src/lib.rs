//! tlsrelay: an outbound SMTP relay that delivers mail only over authenticated,
//! forward-secret TLS.
//!
//! The modules follow a message's path: [`inbound`] accepts it, [`spool`] keeps it
//! durable, [`delivery`] carries it out, with every TLS decision taken in
//! [`policy`] (fed by [`dns`], [`mta_sts`] and [`local_policy`]) and carried out by
//! [`tls`] and [`dane`]; [`outcome`] records what happened and [`dsn`] tells the
//! sender. [`check`] and [`queue`] are the operator's views.

pub mod check;
pub mod config;
pub mod dane;
pub mod delivery;
pub mod dns;
pub mod dsn;
pub mod inbound;
pub mod local_policy;
pub mod metrics;
pub mod mta_sts;
pub mod outcome;
pub mod policy;
pub mod queue;
pub mod relay;
pub mod reporter;
pub mod spool;
pub mod sts;
pub mod tls;
pub mod tlsrpt;
