//! The operator's views (the queue commands, `tlsrelay check`, the control
//! socket, the log format) and the process identity of `serve`.

pub mod check;
pub mod control;
pub mod exceptions;
pub mod filter;
pub mod local_report;
pub mod logging;
pub mod policies;
pub mod privileges;
pub mod queue;
pub mod readiness;
pub mod reload;
pub mod summary;
