//! The RFC 8460 (TLS reporting) vocabulary: result types and policy types.

use serde::{Deserialize, Serialize};

/// RFC 8460 §4.3 result types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResultType {
    /// The host did not offer STARTTLS.
    StarttlsNotSupported,
    /// The certificate does not name the host.
    CertificateHostMismatch,
    /// The certificate (or one in its chain) has expired.
    CertificateExpired,
    /// The certificate chain does not lead to a trusted root.
    CertificateNotTrusted,
    /// Any other failure to set up or verify TLS.
    ValidationFailure,
    /// The TLSA records could not be used (DANE).
    TlsaInvalid,
    /// DNSSEC validation failed.
    DnssecInvalid,
    /// DANE was required but could not be used.
    DaneRequired,
    /// The MTA-STS policy could not be fetched.
    StsPolicyFetchError,
    /// The MTA-STS policy was invalid.
    StsPolicyInvalid,
    /// The certificate failed WebPKI validation under MTA-STS.
    StsWebpkiInvalid,
}

impl ResultType {
    /// The RFC 8460 spelling, e.g. `starttls-not-supported`.
    pub fn as_str(self) -> &'static str {
        match self {
            ResultType::StarttlsNotSupported => "starttls-not-supported",
            ResultType::CertificateHostMismatch => "certificate-host-mismatch",
            ResultType::CertificateExpired => "certificate-expired",
            ResultType::CertificateNotTrusted => "certificate-not-trusted",
            ResultType::ValidationFailure => "validation-failure",
            ResultType::TlsaInvalid => "tlsa-invalid",
            ResultType::DnssecInvalid => "dnssec-invalid",
            ResultType::DaneRequired => "dane-required",
            ResultType::StsPolicyFetchError => "sts-policy-fetch-error",
            ResultType::StsPolicyInvalid => "sts-policy-invalid",
            ResultType::StsWebpkiInvalid => "sts-webpki-invalid",
        }
    }
}

/// The RFC 8460 policy type an attempt ran under.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyType {
    /// DANE TLSA records.
    Tlsa,
    /// An MTA-STS policy.
    Sts,
    /// Neither (the floor or a local policy).
    #[default]
    NoPolicyFound,
}
