//! Wire and file grammars: MTA-STS records and policies, delivery status notifications.

pub mod dsn;
pub mod sts;
