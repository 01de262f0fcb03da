//! What delivery learns from the outside world before it connects: DNS answers
//! with their DNSSEC status, MTA-STS policies, and the facts of one domain gathered together.

pub mod dns;
pub mod gather;
pub mod https;
pub mod mta_sts;
