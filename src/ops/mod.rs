//! The operator's views (the queue commands, `tlsrelay check`, the control
//! socket, the log format) and the process identity of `serve`.

pub mod check;
pub mod control;
pub mod filter;
pub mod logging;
pub mod privileges;
pub mod queue;
pub mod readiness;
pub mod reload;
pub mod summary;
