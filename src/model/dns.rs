//! DNS answers as the delivery decision needs them: records with their DNSSEC
//! status, a proven absence, a bogus answer, or a temporary failure.

use std::fmt;
use std::net::IpAddr;

/// DNSSEC status of an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Security {
    /// A chain of signatures from the trust anchor proves the answer.
    Secure,
    /// The answer is provably in an unsigned part of the tree.
    Insecure,
    /// Signatures should be there but do not validate.
    Bogus,
    /// The validator could not decide.
    Indeterminate,
}

impl Security {
    /// True only for `Secure`.
    pub fn is_secure(self) -> bool {
        self == Security::Secure
    }

    /// The weaker of two statuses (Bogus < Indeterminate < Insecure < Secure).
    pub fn weakest(self, other: Security) -> Security {
        if self.rank() <= other.rank() {
            self
        } else {
            other
        }
    }

    fn rank(self) -> u8 {
        match self {
            Security::Bogus => 0,
            Security::Indeterminate => 1,
            Security::Insecure => 2,
            Security::Secure => 3,
        }
    }
}

impl fmt::Display for Security {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Security::Secure => "secure",
            Security::Insecure => "insecure",
            Security::Bogus => "bogus",
            Security::Indeterminate => "indeterminate",
        })
    }
}

/// One MX record: preference and exchange host (no trailing dot).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MxHost {
    /// Lower is preferred.
    pub preference: u16,
    /// The exchange host name, lower case, without the trailing dot.
    pub host: String,
}

/// One TLSA record, fields as on the wire (RFC 6698).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Tlsa {
    /// Certificate usage (0 PKIX-TA, 1 PKIX-EE, 2 DANE-TA, 3 DANE-EE).
    pub usage: u8,
    /// Selector (0 full certificate, 1 SubjectPublicKeyInfo).
    pub selector: u8,
    /// Matching type (0 exact, 1 SHA-256, 2 SHA-512).
    pub matching: u8,
    /// Certificate association data.
    pub data: Vec<u8>,
}

impl Tlsa {
    /// Whether tlsrelay can use the record for SMTP (RFC 7672 §3.1): usage 2
    /// or 3, selector 0 or 1, matching type 0, 1 or 2.
    pub fn is_usable(&self) -> bool {
        matches!(self.usage, 2 | 3)
            && matches!(self.selector, 0 | 1)
            && matches!(self.matching, 0..=2)
    }
}

/// One TXT record, its character-strings kept apart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Txt {
    /// The record's character-strings in order.
    pub strings: Vec<Vec<u8>>,
}

impl Txt {
    /// The strings concatenated, as RFC 7208 / RFC 8461 read a record.
    pub fn joined(&self) -> Vec<u8> {
        self.strings.concat()
    }
}

/// Outcome of a lookup for records of one type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer<T> {
    /// Records were found.
    Records {
        /// The records of the asked type (RRSIGs and CNAMEs left out).
        records: Vec<T>,
        /// The weakest proof among the records and any CNAMEs that led to them.
        security: Security,
        /// Owner name of the records (the canonical name after CNAMEs), no trailing dot.
        owner: String,
    },
    /// The name exists but has no records of this type (NODATA).
    NoRecords {
        /// Proof of the denial.
        security: Security,
    },
    /// The name does not exist.
    NxDomain {
        /// Proof of the denial.
        security: Security,
    },
    /// DNSSEC validation failed.
    Bogus(String),
    /// SERVFAIL, timeout or network trouble: try again later.
    TempFail(String),
}

impl<T> Answer<T> {
    /// The DNSSEC status of the answer; `None` for a temporary failure.
    pub fn security(&self) -> Option<Security> {
        match self {
            Answer::Records { security, .. }
            | Answer::NoRecords { security }
            | Answer::NxDomain { security } => Some(*security),
            Answer::Bogus(_) => Some(Security::Bogus),
            Answer::TempFail(_) => None,
        }
    }

    pub(crate) fn map<U>(self, f: impl FnOnce(Vec<T>) -> Vec<U>) -> Answer<U> {
        match self {
            Answer::Records {
                records,
                security,
                owner,
            } => Answer::Records {
                records: f(records),
                security,
                owner,
            },
            Answer::NoRecords { security } => Answer::NoRecords { security },
            Answer::NxDomain { security } => Answer::NxDomain { security },
            Answer::Bogus(r) => Answer::Bogus(r),
            Answer::TempFail(r) => Answer::TempFail(r),
        }
    }
}

/// Outcome of an MX lookup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MxAnswer {
    /// MX hosts in the order the server gave them (not sorted).
    Hosts {
        /// The hosts; null-MX entries (".") are left out when real hosts exist.
        hosts: Vec<MxHost>,
        /// DNSSEC status of the MX RRset.
        security: Security,
        /// Owner name of the MX RRset (after CNAMEs), no trailing dot.
        owner: String,
    },
    /// RFC 7505 null MX (`0 .`): the domain accepts no mail.
    NullMx {
        /// DNSSEC status of the MX RRset.
        security: Security,
    },
    /// No MX records (NODATA): implicit MX, the domain itself.
    NoRecords {
        /// Proof of the denial.
        security: Security,
    },
    /// The domain does not exist.
    NxDomain {
        /// Proof of the denial.
        security: Security,
    },
    /// DNSSEC validation failed.
    Bogus(String),
    /// SERVFAIL, timeout or network trouble.
    TempFail(String),
}

/// Outcome of an A + AAAA lookup.
pub type AddrAnswer = Answer<IpAddr>;
/// Outcome of a TLSA lookup.
pub type TlsaAnswer = Answer<Tlsa>;
/// Outcome of a TXT lookup.
pub type TxtAnswer = Answer<Txt>;
