//! Wire and file grammars: MTA-STS records and policies, delivery status notifications,
//! message data, xtext values.

pub mod data;
pub mod dsn;
pub mod sts;
pub mod xtext;
