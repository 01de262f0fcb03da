//! MTA-STS (RFC 8461): the `_mta-sts` TXT record ([`parse_txt`]), the policy
//! body ([`parse_policy`]) and MX host pattern matching. Pure functions, no I/O.
//!
//! Where RFC 8461 leaves room, the choices are these (each one is pinned by a
//! case in the tests of `txt.rs` and `policy.rs`):
//!
//! * Duplicated non-`mx` fields, in the record and in the policy: the first
//!   one counts and later ones are ignored, as §3.2 says ("all entries except
//!   for the first SHALL be ignored"). A duplicate must still be a well-formed
//!   `name=value` / `name: value` field.
//! * A TXT record is an STS record only if it begins with exactly `v=STSv1`
//!   followed by `;`, whitespace or its end (§3.1). `v=STSv10;…`, `V=STSv1;…`
//!   and ` v=STSv1;…` are other records and are ignored.
//! * Apart from that, both parsers follow the ABNF strictly (case-sensitive
//!   field names and values, no whitespace around `=`, `:` directly after the
//!   field name), with three tolerances that cannot change what a field
//!   means: whitespace at the end of a TXT record, blank lines in a policy,
//!   and a trailing dot on an `mx` pattern.
//! * `max_age` above 31557600 (one year) but within the ABNF's ten digits is
//!   clamped to 31557600 instead of rejecting the whole policy.
//! * `mx` patterns may be given as U-labels; they are converted to A-labels.
//!   IP addresses and address literals are refused.
//!
//! Rejecting a policy makes a sender act as though the domain had no policy
//! (§3.3, §5.1), which is the weaker outcome; the tolerances above are cases
//! where rejecting would gain nothing. Callers must keep a cached, unexpired
//! policy when a fresh record or policy does not parse.

mod policy;
mod txt;

pub use crate::model::domain::MxPattern;
pub use policy::{parse_policy, Mode, StsPolicy};
pub use txt::{parse_txt, StsRecord};

/// The largest `max_age` RFC 8461 §3.2 allows: 31557600 seconds (one year).
pub const MAX_AGE_LIMIT: u64 = 31_557_600;

/// Why a record or policy was rejected: a precise message naming the line or field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StsError(pub String);

impl std::fmt::Display for StsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StsError {}

/// WSP in RFC 5234: space or tab.
fn is_wsp(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// Whether `name` is an `sts-ext-name` / `sts-policy-ext-name`:
/// `(ALPHA / DIGIT) *31(ALPHA / DIGIT / "_" / "-" / ".")`.
fn is_ext_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && b[0].is_ascii_alphanumeric()
        && b[1..]
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_names_and_error_display() {
        for (m, s) in [
            (Mode::Enforce, "enforce"),
            (Mode::Testing, "testing"),
            (Mode::None, "none"),
        ] {
            assert_eq!(m.as_str(), s);
        }
        let e = parse_txt(&[b"v=STSv1;".to_vec()]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "MTA-STS TXT record: missing required field id"
        );
        let _: &dyn std::error::Error = &e;
    }
}
