//! The operator's views (the queue commands and `tlsrelay check`) and the
//! process identity of `serve`.

pub mod check;
pub mod control;
pub mod privileges;
pub mod queue;
