//! What the TLS layer must prove about one MX host before any mail is sent.

use crate::model::mechanism::Mechanism;
use crate::model::rfc8460::PolicyType;

/// Trust anchors read from a local policy's `ca_file`.
pub type CaCerts = std::sync::Arc<[rustls_pki_types::CertificateDer<'static>]>;

/// How an outbound TLS session must authenticate the MX host.
// Hash: outbound client configurations are cached per requirement (tls::ClientTls).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PeerCheck {
    /// WebPKI: the chain leads to a trusted root and names the MX host.
    WebPki,
    /// TLS required; the certificate is not checked (beyond key strength).
    EncryptOnly,
    /// DANE: the chain must match one of these (usable) TLSA records; a DANE-TA
    /// leaf must carry one of `names`.
    Dane {
        /// The usable TLSA records.
        records: Vec<crate::model::dns::Tlsa>,
        /// The TLSA base domain and the MX host name.
        names: Vec<String>,
    },
    /// A local policy's `verify`/`secure`: a chain to the roots (or to the
    /// policy's own CA file), and a leaf carrying one of `names` (`.x` = any
    /// subdomain of x).
    Names {
        /// Acceptable names.
        names: Vec<String>,
        /// CA certificates replacing the usual roots (a policy's `ca_file`, read at load).
        ca: Option<CaCerts>,
    },
    /// A local policy's `fingerprint`: the leaf certificate or its public key
    /// must have one of these SHA-256 digests; no chain or name checks.
    Fingerprint {
        /// SHA-256 digests of the whole certificate.
        cert: Vec<[u8; 32]>,
        /// SHA-256 digests of the SubjectPublicKeyInfo.
        spki: Vec<[u8; 32]>,
    },
}

/// How one MX host must be authenticated, decided before connecting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// The MX host name.
    pub host: String,
    /// The name sent as SNI and checked in the certificate (the TLSA base domain under DANE).
    pub sni: String,
    /// What the TLS layer must check.
    pub check: PeerCheck,
    /// Which rule decided it, for the log (`tls=verify`) and metrics.
    pub mechanism: Mechanism,
    /// Why certificate checks were waived for this message (`TLS-Required: No`, a TLS report).
    pub waiver: Option<&'static str>,
    /// The RFC 8460 policy type in force.
    pub policy: PolicyType,
    /// Offer TLS 1.3 only (a local policy's `min_tls = "1.3"`).
    pub tls13_only: bool,
}

impl Requirement {
    /// The authentication as logged and recorded: the mechanism, and the waiver if any
    /// (`encrypt (TLS-Required: No)`).
    pub fn auth_label(&self) -> String {
        match self.waiver {
            Some(w) => format!("{} ({w})", self.mechanism),
            None => self.mechanism.to_string(),
        }
    }
}
