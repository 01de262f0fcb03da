//! How a TLS session was authenticated, and what a message demands of TLS.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The source of authentication of one MX host (the `tls=` word of a log line
/// and the `auth` label of the metrics).
// Serialized as the same word as `as_str` (receipts, posture).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mechanism {
    /// DNSSEC-signed TLSA records (RFC 7672).
    Dane,
    /// An MTA-STS policy in enforce mode (RFC 8461).
    MtaSts,
    /// A local policy file.
    Local,
    /// The floor: a WebPKI-valid certificate for the MX host.
    Verify,
    /// TLS without certificate checks (the operator's floor, a local `encrypt`,
    /// or a message whose authentication was waived).
    Encrypt,
}

impl Mechanism {
    /// Every mechanism, strongest evidence first (the order of posture tables).
    pub const ALL: [Mechanism; 5] = [
        Mechanism::Dane,
        Mechanism::MtaSts,
        Mechanism::Local,
        Mechanism::Verify,
        Mechanism::Encrypt,
    ];

    /// The fixed word: `dane`, `mta-sts`, `local`, `verify` or `encrypt`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mechanism::Dane => "dane",
            Mechanism::MtaSts => "mta-sts",
            Mechanism::Local => "local",
            Mechanism::Verify => "verify",
            Mechanism::Encrypt => "encrypt",
        }
    }
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one message demands of TLS, decided once per message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TlsDemand {
    /// Ordinary mail: the domain's policy decides.
    Standard,
    /// REQUIRETLS (RFC 8689): only hosts learnt securely, verified, and offering REQUIRETLS.
    RequireTls,
    /// `TLS-Required: No`, honoured by configuration: TLS without certificate checks.
    TlsRequiredNo,
    /// A TLS report (RFC 8460 §5.3 asks that it get through despite TLS failures):
    /// TLS without certificate checks, and never counted in reports.
    ReportMail,
}

impl TlsDemand {
    /// The demand of a message from its flags; REQUIRETLS always wins.
    pub fn of(requiretls: bool, report_mail: bool, tls_required_no: bool, honor_no: bool) -> Self {
        if requiretls {
            TlsDemand::RequireTls
        } else if report_mail {
            TlsDemand::ReportMail
        } else if tls_required_no && honor_no {
            TlsDemand::TlsRequiredNo
        } else {
            TlsDemand::Standard
        }
    }

    /// Whether certificate checks are waived for this message (TLS stays mandatory).
    pub fn waives_authentication(self) -> bool {
        matches!(self, TlsDemand::TlsRequiredNo | TlsDemand::ReportMail)
    }

    /// Why authentication was waived, for the log.
    pub fn waiver(self) -> Option<&'static str> {
        match self {
            TlsDemand::TlsRequiredNo => Some("TLS-Required: No"),
            TlsDemand::ReportMail => Some("TLS report"),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demand_table() {
        use TlsDemand::*;
        // (requiretls, report, tls-required-no, honour) → demand
        let cases = [
            ((false, false, false, false), Standard),
            ((false, false, true, false), Standard),
            ((false, false, true, true), TlsRequiredNo),
            ((false, true, false, false), ReportMail),
            ((true, false, true, true), RequireTls),
            ((true, true, false, false), RequireTls),
        ];
        for ((r, m, n, h), want) in cases {
            assert_eq!(TlsDemand::of(r, m, n, h), want, "{r} {m} {n} {h}");
        }
        assert!(TlsRequiredNo.waives_authentication());
        assert!(!RequireTls.waives_authentication());
    }
}
