//! Enhanced mail system status codes (RFC 3463), as values.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An enhanced status code `class.subject.detail`, e.g. `5.1.2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EnhancedStatus {
    /// 2 (success), 4 (persistent transient failure) or 5 (permanent failure).
    pub class: u8,
    /// The subject (1 addressing, 2 mailbox, 3 mail system, 4 network, 5 protocol, 6 content, 7 security).
    pub subject: u16,
    /// The detail within the subject.
    pub detail: u16,
}

impl EnhancedStatus {
    /// `5.0.0`: permanent failure, no more detail.
    pub const PERMANENT: EnhancedStatus = EnhancedStatus::new(5, 0, 0);
    /// `5.1.2`: the destination domain does not exist.
    pub const BAD_DESTINATION_SYSTEM: EnhancedStatus = EnhancedStatus::new(5, 1, 2);
    /// `5.1.3`: the destination mailbox address cannot be written in SMTP.
    pub const BAD_MAILBOX_SYNTAX: EnhancedStatus = EnhancedStatus::new(5, 1, 3);
    /// `5.1.7`: the sender's mailbox address cannot be written in SMTP.
    pub const BAD_SENDER_SYNTAX: EnhancedStatus = EnhancedStatus::new(5, 1, 7);
    /// `5.1.10`: the destination publishes a null MX (RFC 7505).
    pub const NULL_MX: EnhancedStatus = EnhancedStatus::new(5, 1, 10);
    /// `5.3.4`: the message is too big for the receiving system.
    pub const TOO_BIG: EnhancedStatus = EnhancedStatus::new(5, 3, 4);
    /// `4.4.7`: delivery delayed (delay notices).
    pub const DELAYED: EnhancedStatus = EnhancedStatus::new(4, 4, 7);
    /// `5.4.7`: the queue lifetime expired.
    pub const EXPIRED: EnhancedStatus = EnhancedStatus::new(5, 4, 7);
    /// `5.6.7`: the message needs SMTPUTF8 and the receiver lacks it.
    pub const NO_SMTPUTF8: EnhancedStatus = EnhancedStatus::new(5, 6, 7);
    /// `5.7.30`: REQUIRETLS could not be honoured (RFC 8689).
    pub const REQUIRETLS: EnhancedStatus = EnhancedStatus::new(5, 7, 30);

    /// A code from its three parts.
    pub const fn new(class: u8, subject: u16, detail: u16) -> EnhancedStatus {
        EnhancedStatus {
            class,
            subject,
            detail,
        }
    }

    /// Parses `c.s.d` (class 2, 4 or 5; subject and detail at most 3 digits).
    pub fn parse(s: &str) -> Option<EnhancedStatus> {
        let mut parts = s.split('.');
        let (c, sub, det) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let num = |p: &str| {
            (!p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
                .then(|| p.parse::<u16>().ok())
                .flatten()
        };
        let class = match c {
            "2" => 2,
            "4" => 4,
            "5" => 5,
            _ => return None,
        };
        Some(EnhancedStatus::new(class, num(sub)?, num(det)?))
    }

    /// Whether the code is a permanent failure (class 5).
    pub fn is_permanent(self) -> bool {
        self.class == 5
    }
}

impl fmt::Display for EnhancedStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

impl Serialize for EnhancedStatus {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for EnhancedStatus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<EnhancedStatus, D::Error> {
        let s = String::deserialize(d)?;
        EnhancedStatus::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!("{s:?} is not an enhanced status code"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display() {
        for (input, want) in [
            ("5.1.2", Some("5.1.2")),
            ("4.4.7", Some("4.4.7")),
            ("5.7.30", Some("5.7.30")),
            ("2.0.0", Some("2.0.0")),
            ("3.0.0", None),
            ("5.1", None),
            ("5.1.2.3", None),
            ("5.x.2", None),
            ("5.1234.2", None),
            ("", None),
        ] {
            let got = EnhancedStatus::parse(input).map(|s| s.to_string());
            assert_eq!(got.as_deref(), want, "{input}");
        }
        assert!(EnhancedStatus::EXPIRED.is_permanent());
        assert!(!EnhancedStatus::DELAYED.is_permanent());
    }
}
