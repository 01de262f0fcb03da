//! The operator's views: the queue commands and `tlsrelay check`.

pub mod check;
pub mod control;
pub mod filter;
pub mod queue;
pub mod summary;
