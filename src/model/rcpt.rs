//! What became of one recipient in one delivery attempt.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::model::mechanism::Mechanism;
use crate::model::rfc8460::PolicyType;
use crate::model::status::EnhancedStatus;

/// The TLS session a message went over, as a log line or a receipt names it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Channel {
    /// The address connected to.
    pub addr: Option<SocketAddr>,
    /// Our end of the connection: the source address (configured or chosen by the kernel).
    pub source: Option<SocketAddr>,
    /// TLS version, e.g. `TLSv1.3`.
    pub tls_version: String,
    /// Negotiated cipher suite.
    pub cipher: String,
    /// Negotiated key exchange group, e.g. `X25519`.
    pub kx_group: String,
    /// SHA-256 of the peer's end-entity SubjectPublicKeyInfo, lower-case hex
    /// (empty when the peer sent no certificate).
    pub spki_sha256: String,
    /// The policy the host was authenticated under (shared by the recipients of a session).
    pub policy: std::sync::Arc<AppliedPolicy>,
}

/// The policy that authenticated a host, as a receipt keeps it: enough to say
/// later which published (or local) rule a delivery rested on.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AppliedPolicy {
    /// The RFC 8460 policy type in force.
    #[serde(rename = "type")]
    pub policy_type: PolicyType,
    /// The TLSA records (`usage selector matching HEX`) under DANE.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tlsa: Vec<String>,
    /// The MTA-STS policy id (the `_mta-sts` TXT record's `id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sts_id: Option<String>,
    /// The local policy that decided, as `file:line`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<String>,
    /// Why certificate checks were waived for the message (`TLS-Required: No`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiver: Option<String>,
}

impl AppliedPolicy {
    /// The applied policy from the plan's values: `policy_strings` are kept as
    /// TLSA records only under a TLSA policy, the MTA-STS id only under an
    /// MTA-STS policy; the local source whenever a local policy decided for the
    /// domain (it may have asked for DANE or WebPKI).
    pub fn of(
        policy_type: PolicyType,
        policy_strings: &[String],
        sts_id: Option<&str>,
        local: Option<&str>,
    ) -> AppliedPolicy {
        AppliedPolicy {
            policy_type,
            tlsa: match policy_type {
                PolicyType::Tlsa => policy_strings.to_vec(),
                _ => vec![],
            },
            sts_id: sts_id
                .filter(|_| policy_type == PolicyType::Sts)
                .map(str::to_string),
            local: local.map(str::to_string),
            waiver: None,
        }
    }
}

/// The result for one recipient of one attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum RcptResult {
    /// Accepted by `host`.
    Delivered {
        /// The MX host.
        host: String,
        /// How the host was authenticated.
        mechanism: Mechanism,
        /// Its reply after the data.
        reply: String,
        /// The connection that carried it.
        channel: Channel,
    },
    /// Permanently failed.
    Failed {
        /// Enhanced status code.
        status: EnhancedStatus,
        /// Plain words.
        reason: String,
        /// The host whose reply decided it.
        remote: Option<String>,
        /// That reply.
        diagnostic: Option<String>,
    },
    /// Not delivered this time; retried later.
    Deferred {
        /// Plain words, naming every host tried and why it was not used.
        reason: String,
    },
}

impl RcptResult {
    /// A permanent failure decided locally (no remote reply).
    pub fn failed(status: EnhancedStatus, reason: impl Into<String>) -> RcptResult {
        RcptResult::Failed {
            status,
            reason: reason.into(),
            remote: None,
            diagnostic: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applied_policy_keeps_what_applied() {
        let tlsa = vec!["3 1 1 AB".to_string()];
        // (mechanism, policy type, sts id given, local given) → (tlsa kept, sts id kept, local kept)
        let cases = [
            (
                Mechanism::Dane,
                PolicyType::Tlsa,
                true,
                false,
                (true, false, false),
            ),
            (
                Mechanism::MtaSts,
                PolicyType::Sts,
                true,
                false,
                (false, true, false),
            ),
            (
                Mechanism::Verify,
                PolicyType::Sts,
                true,
                false,
                (false, true, false),
            ),
            (
                Mechanism::Verify,
                PolicyType::NoPolicyFound,
                true,
                false,
                (false, false, false),
            ),
            (
                Mechanism::Local,
                PolicyType::NoPolicyFound,
                false,
                true,
                (false, false, true),
            ),
            (
                Mechanism::Dane,
                PolicyType::Tlsa,
                false,
                true,
                (true, false, true),
            ),
        ];
        for (m, t, sts, local, (want_tlsa, want_sts, want_local)) in cases {
            let a = AppliedPolicy::of(t, &tlsa, sts.then_some("id1"), local.then_some("p.toml:3"));
            let label = format!("{m} {t:?}");
            assert_eq!(!a.tlsa.is_empty(), want_tlsa, "{label}");
            assert_eq!(a.sts_id.is_some(), want_sts, "{label}");
            assert_eq!(a.local.is_some(), want_local, "{label}");
        }
    }
}
