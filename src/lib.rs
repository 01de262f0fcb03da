//! tlsrelay: an outbound SMTP relay that delivers mail only over authenticated,
//! forward-secret TLS.
//!
//! The modules follow a message's path and show the layers: [`model`] holds the
//! pure types, [`protocol`] the grammars; [`inbound`] accepts a message, [`spool`]
//! keeps it durable, [`delivery`] carries it out. For each recipient domain,
//! [`resolve`] gathers the facts (DNS, MTA-STS), [`policy`] turns them into a plan
//! (pure), and [`tls`] carries out each host's requirement. [`reporting`] records
//! and reports what happened; [`ops`] holds the operator's views.
#![warn(missing_docs)]

pub mod cluster;
pub mod config;
pub mod delivery;
#[doc(hidden)]
pub mod fuzzing;
pub mod inbound;
pub mod model;
pub mod ops;
pub mod policy;
pub mod protocol;
pub mod relay;
pub mod reporting;
pub mod resolve;
pub mod spool;
pub mod tls;
