//! Wire and file grammars: MTA-STS records and policies, delivery status notifications,
//! message data.

pub mod data;
pub mod dsn;
pub mod sts;
