//! The operator's views: the queue commands, `tlsrelay check`, the control socket and the log format.

pub mod check;
pub mod control;
pub mod filter;
pub mod logging;
pub mod queue;
pub mod summary;
