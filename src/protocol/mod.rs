//! Wire and file grammars: MTA-STS records and policies, delivery status notifications, xtext values.

pub mod dsn;
pub mod sts;
pub mod xtext;
