//! Local policies: per-domain TLS rules written by the operator.
//!
//! Every file ending in `.toml` directly inside the policy directory holds one or
//! more `[[policy]]` tables (subdirectories and names starting with `.` are not
//! read, so `policies/examples/` is never loaded by accident):
//!
//! ```toml
//! [[policy]]
//! domain = "partner-bank.example"        # ".example.com" = every subdomain, not example.com itself
//! level = "secure"                        # dane-only | dane | verify | secure | fingerprint | encrypt
//! match = ["partner-bank.example", ".partner-bank.example"]   # verify/secure only
//! ca_file = "/etc/tlsrelay/partner-bank-ca.pem"               # verify/secure only; relative = next to this file
//! min_tls = "1.3"                         # "1.2" (default) or "1.3"
//! mx = ["mx1.partner-bank.example", "*.mail.partner-bank.example"]   # optional
//! ```
//!
//! Levels keep Postfix's names where they mean the same thing:
//!
//! - `dane-only`: the MX host must be authenticated by DANE (usable, DNSSEC-secure
//!   TLSA records); a host without them is not used.
//! - `dane`: DANE where usable, otherwise the relay's WebPKI check of the MX host
//!   name. Stricter than Postfix's `dane`, which falls back to opportunistic TLS.
//! - `verify`: WebPKI chain (or `ca_file`), and the certificate carries one of the
//!   `match` names; by default the MX host name.
//! - `secure`: as `verify`, but by default the certificate must name the recipient
//!   domain or one of its subdomains (Postfix's `nexthop:dot-nexthop`), so an MX
//!   record forged in insecure DNS gains nothing.
//! - `fingerprint`: the leaf certificate (`cert-sha256:`) or its public key
//!   (`spki-sha256:`) must match one of `fingerprints`; no chain or name checks.
//! - `encrypt`: TLS required, certificate not checked (its key strength still is).
//!
//! `none` and `may` are refused: tlsrelay never sends mail without TLS.
//!
//! A local policy decides for its domain: it replaces the DANE, MTA-STS and floor
//! rows of the decision table (docs/ARCHITECTURE.md) for that domain. This module
//! only reads and checks the rules; the delivery engine carries them out.
//!
//! Lookup: the exact domain first, then the nearest `.parent` entry (the longest
//! one wins). Names are compared case-insensitively, without a trailing dot, and
//! internationalised names as A-labels (`xn--…`).
//!
//! [`import_postfix`] converts a Postfix `smtp_tls_policy_maps` source table.

mod parse;
mod postfix;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use chrono::NaiveDate;

use crate::model::domain::{Domain, MxPattern};
use crate::model::egress::{EgressOverride, NextHop};
use crate::policy::requirement::CaCerts;

use parse::FieldError;
pub use postfix::{import_postfix, Skipped};

/// How a local policy authenticates the MX hosts of its domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Level {
    /// DANE required; a host without usable secure TLSA records is not used.
    DaneOnly,
    /// DANE where usable, otherwise WebPKI for the MX host name (never opportunistic).
    Dane,
    /// WebPKI (or `ca_file`) chain, certificate names one of the match names (default: MX host).
    Verify,
    /// WebPKI (or `ca_file`) chain, certificate names one of the match names (default: the domain).
    Secure,
    /// The leaf certificate or its public key matches a pinned SHA-256 fingerprint.
    Fingerprint,
    /// TLS required, certificate not checked.
    Encrypt,
}

impl Level {
    /// Every level, strongest-sounding first, as listed in error messages.
    pub const ALL: [Level; 6] = [
        Level::DaneOnly,
        Level::Dane,
        Level::Verify,
        Level::Secure,
        Level::Fingerprint,
        Level::Encrypt,
    ];

    /// The level's name, as Postfix spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::DaneOnly => "dane-only",
            Level::Dane => "dane",
            Level::Verify => "verify",
            Level::Secure => "secure",
            Level::Fingerprint => "fingerprint",
            Level::Encrypt => "encrypt",
        }
    }

    /// The level with exactly this name (case-sensitive), if there is one.
    pub fn from_name(name: &str) -> Option<Level> {
        Level::ALL.into_iter().find(|l| l.as_str() == name)
    }

    /// Whether the level checks certificate names (`match`, `ca_file` apply).
    pub fn checks_names(self) -> bool {
        matches!(self, Level::Verify | Level::Secure)
    }

    /// Parses a level name; the error explains refusals and lists the valid names.
    fn parse(s: &str) -> Result<Level, LevelError> {
        match Level::from_name(s) {
            Some(l) => Ok(l),
            None if s == "none" || s == "may" => Err(LevelError::Refused(s.to_string())),
            None => Err(LevelError::Unknown(s.to_string())),
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `level` that names no level tlsrelay has.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LevelError {
    /// `none` or `may`: plaintext or opportunistic delivery, which tlsrelay never does.
    #[error(
        "level \"{0}\" is refused: tlsrelay never sends mail without TLS, so it has no \
         plaintext or opportunistic level; the lowest level is \"encrypt\" (TLS required, \
         certificate not checked), or remove the policy and the domain gets the relay's floor"
    )]
    Refused(String),
    /// Any other word.
    #[error("unknown level \"{0}\"; valid levels: {valid}", valid = Level::ALL.map(Level::as_str).join(", "))]
    Unknown(String),
}

/// A pinned SHA-256 fingerprint, written `cert-sha256:HEX` or `spki-sha256:HEX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fingerprint {
    /// SHA-256 of the DER-encoded leaf certificate (changes with every renewal).
    Cert([u8; 32]),
    /// SHA-256 of the DER-encoded SubjectPublicKeyInfo (survives renewal with the same key).
    PublicKey([u8; 32]),
}

impl Fingerprint {
    /// Parses `cert-sha256:HEX` or `spki-sha256:HEX` (hex in any case, colons optional).
    pub fn parse(s: &str) -> Result<Fingerprint, FingerprintError> {
        let Some((kind, hex)) = s.trim().split_once(':') else {
            return Err(FingerprintError::NoType(s.to_string()));
        };
        let make: fn([u8; 32]) -> Fingerprint = match kind.to_ascii_lowercase().as_str() {
            "cert-sha256" => Fingerprint::Cert,
            "spki-sha256" | "pubkey-sha256" => Fingerprint::PublicKey,
            "sha256" => return Err(FingerprintError::NotSaid(s.to_string())),
            _ => return Err(FingerprintError::Unsupported(kind.to_string())),
        };
        let bytes = decode_hex(hex).map_err(|error| FingerprintError::Hex {
            input: s.to_string(),
            error,
        })?;
        let digest: [u8; 32] =
            bytes
                .as_slice()
                .try_into()
                .map_err(|_| FingerprintError::Length {
                    input: s.to_string(),
                    bytes: bytes.len(),
                })?;
        Ok(make(digest))
    }

    /// The 32-byte digest.
    pub fn digest(&self) -> &[u8; 32] {
        match self {
            Fingerprint::Cert(d) | Fingerprint::PublicKey(d) => d,
        }
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self {
            Fingerprint::Cert(_) => "cert-sha256",
            Fingerprint::PublicKey(_) => "spki-sha256",
        };
        let hex: Vec<String> = self.digest().iter().map(|b| format!("{b:02X}")).collect();
        write!(f, "{kind}:{}", hex.join(":"))
    }
}

/// How to write a fingerprint, appended to every fingerprint error.
const FINGERPRINT_USAGE: &str = "write \"cert-sha256:HEX\" (SHA-256 of the certificate) or \
                                 \"spki-sha256:HEX\" (SHA-256 of its public key)";

/// A fingerprint that cannot be used as a pin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FingerprintError {
    /// No `type:` before the digest.
    #[error("fingerprint \"{0}\" has no type; {FINGERPRINT_USAGE}")]
    NoType(String),
    /// `sha256:`, which leaves open whether the certificate or its key was hashed.
    #[error("fingerprint \"{0}\" does not say what was hashed; {FINGERPRINT_USAGE}")]
    NotSaid(String),
    /// Another digest type (MD5, SHA-1, …).
    #[error("fingerprint type \"{0}\" is not supported (SHA-256 only); {FINGERPRINT_USAGE}")]
    Unsupported(String),
    /// The digest is not hex.
    #[error("fingerprint \"{input}\": {error}")]
    Hex {
        /// The fingerprint as written.
        input: String,
        /// What is wrong with the digits.
        error: HexError,
    },
    /// The digest has the wrong length for SHA-256.
    #[error("fingerprint \"{input}\" has {bytes} bytes; a SHA-256 digest has 32 (64 hex digits)")]
    Length {
        /// The fingerprint as written.
        input: String,
        /// How many bytes the digits give.
        bytes: usize,
    },
}

/// Hex digits that do not decode to bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HexError {
    /// A character that is neither a hex digit nor `:`.
    #[error("`{0}` is not a hex digit")]
    NotHex(char),
    /// An odd number of digits.
    #[error("odd number of hex digits ({0})")]
    OddDigits(usize),
}

/// Decodes hex digits, ignoring `:` separators.
fn decode_hex(hex: &str) -> Result<Vec<u8>, HexError> {
    let digits: Vec<u8> = hex.bytes().filter(|&b| b != b':').collect();
    if let Some(bad) = digits.iter().find(|b| !b.is_ascii_hexdigit()) {
        return Err(HexError::NotHex(*bad as char));
    }
    if !digits.len().is_multiple_of(2) {
        return Err(HexError::OddDigits(digits.len()));
    }
    Ok(digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect())
}

/// The lowest TLS version a policy accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum MinTls {
    /// TLS 1.2 or 1.3 (the relay never goes lower).
    #[default]
    Tls12,
    /// TLS 1.3 only.
    Tls13,
}

impl MinTls {
    /// `"1.2"` or `"1.3"`, as written in policy files.
    pub fn as_str(self) -> &'static str {
        match self {
            MinTls::Tls12 => "1.2",
            MinTls::Tls13 => "1.3",
        }
    }
}

/// One domain's rule, checked and normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalPolicy {
    /// The domain as written, normalised (lowercase A-labels, no trailing dot); `.x` = subdomains of x.
    pub domain: String,
    /// How MX hosts are authenticated.
    pub level: Level,
    /// verify/secure: names the certificate must carry (`.x` = any subdomain of x); empty = the level's default.
    pub match_names: Vec<String>,
    /// fingerprint: the pins; the leaf must match one of them.
    pub fingerprints: Vec<Fingerprint>,
    /// verify/secure: trust only the CA certificates in this PEM file instead of Mozilla's roots.
    pub ca_file: Option<PathBuf>,
    /// The certificates of `ca_file`, read once when the policy is loaded.
    pub ca: Option<CaCerts>,
    /// Lowest TLS version accepted.
    pub min_tls: MinTls,
    /// MX host patterns allowed (`*.x` = one label below x); empty = every MX host.
    pub mx: Vec<MxPattern>,
    /// A `[[route]]`: the next hop that takes the domain's mail instead of its MX hosts.
    pub route: Option<NextHop>,
    /// Source addresses and families this entry sets (the rest come from `[delivery]`).
    pub egress: EgressOverride,
    /// Until when the entry applies, and who asked for it and why.
    pub exception: Exception,
    /// Whether the entry may replace the DANE or MTA-STS policy the domain publishes.
    pub overrides: Overrides,
    /// Where the policy was written, as `file:line`.
    pub source: String,
}

impl LocalPolicy {
    /// Names the certificate must carry when delivering for `domain` to `mx_host` (empty for levels without name checks).
    pub fn required_names(&self, domain: &str, mx_host: &str) -> Vec<String> {
        if !self.level.checks_names() {
            return vec![];
        }
        if !self.match_names.is_empty() {
            return self.match_names.clone();
        }
        // A name Domain refuses stays in the list (lower-cased): an empty
        // list must never stand for "no name to check".
        let norm =
            |s: &str| Domain::parse(s).map_or_else(|_| s.to_ascii_lowercase(), |d| d.to_string());
        match self.level {
            Level::Secure => {
                let d = norm(domain);
                vec![d.clone(), format!(".{d}")]
            }
            _ => vec![norm(mx_host)],
        }
    }

    /// Whether this policy's `mx` patterns allow contacting `host` (always, when there are none).
    pub fn allows_mx(&self, host: &str) -> bool {
        if self.mx.is_empty() {
            return true;
        }
        let Ok(host) = Domain::parse(host) else {
            return false;
        };
        self.mx.iter().any(|p| p.matches_domain(&host))
    }
}

/// The bookkeeping of an entry that is an exception: its end, owner and reason.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Exception {
    /// The last day (UTC) the entry applies; none = no end.
    pub expires: Option<NaiveDate>,
    /// Who is responsible for it.
    pub owner: Option<String>,
    /// Why it exists.
    pub reason: Option<String>,
    /// The ticket that decided it.
    pub ticket: Option<String>,
}

/// How many days before `expires` the relay starts warning, daily.
pub const EXPIRY_WARNING_DAYS: i64 = 14;

/// Where an entry stands on a given day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case", tag = "state")]
pub enum ExceptionState {
    /// No `expires`: the entry applies until it is removed.
    Permanent,
    /// It applies, and ends in more than [`EXPIRY_WARNING_DAYS`] days.
    Active {
        /// Days until the last day (0 on the last day).
        days_left: i64,
    },
    /// It applies, and ends within [`EXPIRY_WARNING_DAYS`] days: warned daily.
    Expiring {
        /// Days until the last day (0 on the last day).
        days_left: i64,
    },
    /// Past its last day: the entry no longer applies.
    Expired {
        /// Days since the last day (1 on the first day it no longer applies).
        days_ago: i64,
    },
}

impl Exception {
    /// The state of the entry on `today` (UTC).
    pub fn state(&self, today: NaiveDate) -> ExceptionState {
        let Some(last) = self.expires else {
            return ExceptionState::Permanent;
        };
        let days_left = (last - today).num_days();
        if days_left < 0 {
            ExceptionState::Expired {
                days_ago: -days_left,
            }
        } else if days_left <= EXPIRY_WARNING_DAYS {
            ExceptionState::Expiring { days_left }
        } else {
            ExceptionState::Active { days_left }
        }
    }

    /// Owner, reason and ticket in words, for log lines and listings.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = [
            ("owner", &self.owner),
            ("reason", &self.reason),
            ("ticket", &self.ticket),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}: {v}")))
        .collect();
        parts.join(", ")
    }
}

/// The `override_dane` and `override_mta_sts` flags of an entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Overrides {
    /// The entry may replace DANE the domain publishes.
    pub dane: bool,
    /// The entry may replace the domain's MTA-STS policy in enforce mode.
    pub mta_sts: bool,
}

/// A policy file that cannot be used: the file, the line and what would be valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// The file (or directory) that was read.
    pub file: PathBuf,
    /// The 1-based line of the offending key, where known.
    pub line: Option<usize>,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl PolicyError {
    /// An error in `file` at `line`.
    fn at(file: &Path, line: usize, error: FieldError) -> PolicyError {
        PolicyError {
            file: file.to_owned(),
            line: Some(line),
            message: error.to_string(),
        }
    }

    /// An error about `file` as a whole.
    fn whole(file: &Path, message: String) -> PolicyError {
        PolicyError {
            file: file.to_owned(),
            line: None,
            message,
        }
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{}: {}", self.file.display(), l, self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

impl std::error::Error for PolicyError {}

/// What [`PolicySet::lookup_on`] found for a domain.
#[derive(Debug, Clone, Copy, Default)]
pub struct Found<'a> {
    /// The entry that applies.
    pub active: Option<&'a LocalPolicy>,
    /// The nearest entry that would apply but has expired.
    pub expired: Option<&'a LocalPolicy>,
}

/// Every local policy, indexed by domain.
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    policies: Vec<LocalPolicy>,
    /// Policy key (`example.com` or `.example.com`) to its place in `policies`.
    index: HashMap<String, usize>,
}

impl PolicySet {
    /// A set without policies: every domain gets the DANE / MTA-STS / floor rules.
    pub fn empty() -> PolicySet {
        PolicySet::default()
    }

    /// Reads every `*.toml` file directly in `dir` (sorted by name), checking `ca_file`s and duplicate domains.
    pub fn load_dir(dir: &Path) -> Result<PolicySet, PolicyError> {
        let mut set = PolicySet::empty();
        for path in parse::policy_files(dir)? {
            set.extend(parse::read_file(&path)?, &path)?;
        }
        Ok(set)
    }

    /// Parses one policy file's text (without reading `ca_file`s); `path` names it in errors and sources.
    pub fn parse_file(text: &str, path: &Path) -> Result<Vec<LocalPolicy>, PolicyError> {
        // A duplicate inside one file is an error here too.
        let mut set = PolicySet::empty();
        set.extend(parse::parse(text, path, false)?, path)?;
        Ok(set.policies)
    }

    /// Adds the policies of one file, each with the line of its `domain`.
    fn extend(
        &mut self,
        parsed: Vec<(LocalPolicy, usize)>,
        path: &Path,
    ) -> Result<(), PolicyError> {
        self.policies.reserve(parsed.len());
        self.index.reserve(parsed.len());
        parsed
            .into_iter()
            .try_for_each(|(policy, line)| self.insert(policy, path, line))
    }

    /// Adds a policy; a second policy for the same domain is an error naming both places.
    fn insert(&mut self, policy: LocalPolicy, path: &Path, line: usize) -> Result<(), PolicyError> {
        if let Some(&i) = self.index.get(&policy.domain) {
            let duplicate = FieldError::Duplicate {
                domain: policy.domain,
                first: self.policies[i].source.clone(),
            };
            return Err(PolicyError::at(path, line, duplicate));
        }
        self.index
            .insert(policy.domain.clone(), self.policies.len());
        self.policies.push(policy);
        Ok(())
    }

    /// The policy for a recipient domain: the exact entry, else the nearest `.parent` entry.
    pub fn lookup(&self, domain: &str) -> Option<&LocalPolicy> {
        if self.policies.is_empty() {
            return None;
        }
        match Domain::parse(domain) {
            Ok(d) => self.lookup_normalised(d.as_str()),
            // A name Domain refuses (say, with an underscore) still falls
            // under its parents' policies, as it always has.
            Err(_) => {
                let t = domain.trim();
                self.lookup_normalised(&t.strip_suffix('.').unwrap_or(t).to_ascii_lowercase())
            }
        }
    }

    /// The policy for an already normalised recipient domain.
    pub fn lookup_domain(&self, domain: &Domain) -> Option<&LocalPolicy> {
        self.lookup_normalised(domain.as_str())
    }

    /// Lookup by a normalised name: one hash probe for the name and one per parent.
    fn lookup_normalised(&self, name: &str) -> Option<&LocalPolicy> {
        if let Some(&i) = self.index.get(name) {
            return Some(&self.policies[i]);
        }
        // Parent keys are the suffixes of ".name" that start at a dot, the
        // nearest parent first; ".name" itself is not a parent.
        let dotted = format!(".{name}");
        dotted
            .match_indices('.')
            .skip(1)
            .find_map(|(at, _)| self.index.get(&dotted[at..]))
            .map(|&i| &self.policies[i])
    }

    /// The entry in force for `domain` on `today`: an expired entry is passed
    /// over (and returned beside it), so the next nearer `.parent` entry, or
    /// none, decides instead.
    pub fn lookup_on(&self, domain: &Domain, today: NaiveDate) -> Found<'_> {
        let mut found = Found::default();
        if self.policies.is_empty() {
            return found;
        }
        let dotted = format!(".{domain}");
        let keys = std::iter::once(domain.as_str()).chain(
            dotted
                .match_indices('.')
                .skip(1)
                .map(|(at, _)| &dotted[at..]),
        );
        for policy in keys.filter_map(|k| self.index.get(k).map(|&i| &self.policies[i])) {
            match policy.exception.state(today) {
                ExceptionState::Expired { .. } => {
                    found.expired.get_or_insert(policy);
                }
                _ => {
                    found.active = Some(policy);
                    break;
                }
            }
        }
        found
    }

    /// How many policies there are.
    pub fn len(&self) -> usize {
        self.policies.len()
    }

    /// Whether there are no policies.
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// The policies, in file order.
    pub fn iter(&self) -> impl Iterator<Item = &LocalPolicy> {
        self.policies.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A SHA-256 digest in hex, for pins in the tests of this module and its children.
    pub(super) const A: &str = "3d5a0f7c9b1e24d86a4c0e2f91b7d3a5c8e6f0a2b4d6c8e0f1a3b5c7d9e1f3a5";

    /// The bytes of a 64-digit hex digest.
    pub(super) fn digest(hex: &str) -> [u8; 32] {
        decode_hex(hex).unwrap().try_into().unwrap()
    }

    fn set_of(text: &str) -> PolicySet {
        let path = Path::new("p.toml");
        let mut set = PolicySet::empty();
        set.extend(parse::parse(text, path, false).unwrap(), path)
            .unwrap();
        set
    }

    #[test]
    fn fingerprint_syntax() {
        let d = digest(A);
        let colons = A
            .as_bytes()
            .chunks(2)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(":");
        let cases: Vec<(String, Option<Fingerprint>)> = vec![
            (format!("cert-sha256:{A}"), Some(Fingerprint::Cert(d))),
            (
                format!("cert-sha256:{}", A.to_uppercase()),
                Some(Fingerprint::Cert(d)),
            ),
            (
                format!("spki-sha256:{colons}"),
                Some(Fingerprint::PublicKey(d)),
            ),
            (
                format!("pubkey-sha256:{}", colons.to_uppercase()),
                Some(Fingerprint::PublicKey(d)),
            ),
            (format!(" CERT-SHA256:{A} "), Some(Fingerprint::Cert(d))),
            (A.to_string(), None),
            (format!("cert-sha256:{A}00"), None),
            (format!("cert-sha256:{}", &A[1..]), None),
            (format!("md5:{}", &A[..32]), None),
            ("cert-sha256:".into(), None),
        ];
        for (text, want) in cases {
            assert_eq!(Fingerprint::parse(&text).ok(), want, "{text}");
        }
        // Display is parseable and canonical.
        let f = Fingerprint::PublicKey(d);
        assert_eq!(
            f.to_string(),
            format!("spki-sha256:{}", colons.to_uppercase())
        );
        assert_eq!(Fingerprint::parse(&f.to_string()), Ok(f));
    }

    #[test]
    fn exception_states() {
        let day = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
        let ends = |s: &str| Exception {
            expires: Some(day(s)),
            ..Exception::default()
        };
        let today = day("2027-03-01");
        let cases = [
            (Exception::default(), ExceptionState::Permanent),
            (ends("2027-04-01"), ExceptionState::Active { days_left: 31 }),
            (ends("2027-03-16"), ExceptionState::Active { days_left: 15 }),
            (
                ends("2027-03-15"),
                ExceptionState::Expiring { days_left: 14 },
            ),
            (
                ends("2027-03-01"),
                ExceptionState::Expiring { days_left: 0 },
            ),
            (ends("2027-02-28"), ExceptionState::Expired { days_ago: 1 }),
            (
                ends("2026-03-01"),
                ExceptionState::Expired { days_ago: 365 },
            ),
        ];
        for (e, want) in cases {
            assert_eq!(e.state(today), want, "{:?}", e.expires);
        }
    }

    #[test]
    fn expired_entries_stop_applying() {
        let set = set_of(
            r#"
[[policy]]
domain = "partner.example"
level = "encrypt"
expires = 2027-02-28
owner = "mail team"
[[policy]]
domain = ".example"
level = "secure"
expires = "2027-03-10"
[[policy]]
domain = "other.example"
level = "encrypt"
"#,
        );
        let day = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
        let d = |s: &str| Domain::parse(s).unwrap();
        let show = |f: Found<'_>| {
            (
                f.active.map(|p| p.domain.clone()),
                f.expired.map(|p| p.domain.clone()),
            )
        };
        let s = |x: &str| Some(x.to_string());
        let cases = [
            (
                "2027-02-28",
                "partner.example",
                (s("partner.example"), None),
            ),
            (
                "2027-03-01",
                "partner.example",
                (s(".example"), s("partner.example")),
            ),
            (
                "2027-03-11",
                "partner.example",
                (None, s("partner.example")),
            ),
            ("2027-03-11", "x.example", (None, s(".example"))),
            ("2027-03-11", "other.example", (s("other.example"), None)),
            ("2027-03-11", "unrelated.test", (None, None)),
        ];
        for (today, domain, want) in cases {
            assert_eq!(
                show(set.lookup_on(&d(domain), day(today))),
                want,
                "{today} {domain}"
            );
        }
    }

    #[test]
    fn lookup_precedence() {
        let set = set_of(
            r#"
[[policy]]
domain = "example.com"
level = "secure"
[[policy]]
domain = ".example.com"
level = "verify"
[[policy]]
domain = ".deep.example.com"
level = "dane-only"
[[policy]]
domain = "bücher.example"
level = "encrypt"
[[policy]]
domain = ".org"
level = "dane"
"#,
        );
        assert_eq!(set.len(), 5);
        assert!(!set.is_empty());
        let cases: &[(&str, Option<&str>)] = &[
            ("example.com", Some("example.com")),
            ("EXAMPLE.COM.", Some("example.com")),
            ("a.example.com", Some(".example.com")),
            ("A.b.Example.Com", Some(".example.com")),
            ("deep.example.com", Some(".example.com")),
            ("x.deep.example.com", Some(".deep.example.com")),
            ("y.x.deep.example.com.", Some(".deep.example.com")),
            ("notexample.com", None),
            ("com", None),
            ("example.net", None),
            ("bücher.example", Some("xn--bcher-kva.example")),
            ("BÜCHER.example.", Some("xn--bcher-kva.example")),
            ("xn--bcher-kva.example", Some("xn--bcher-kva.example")),
            ("sub.bücher.example", None),
            ("example.org", Some(".org")),
            ("org", None),
            ("", None),
        ];
        for (domain, want) in cases {
            let got = set.lookup(domain).map(|p| p.domain.as_str());
            assert_eq!(got, *want, "{domain}");
        }
        assert_eq!(PolicySet::empty().lookup("example.com"), None);
        let order: Vec<&str> = set.iter().map(|p| p.domain.as_str()).collect();
        assert_eq!(order[..2], ["example.com", ".example.com"]);
    }

    #[test]
    fn required_names_and_mx_patterns() {
        let set = set_of(
            r#"
[[policy]]
domain = ".example.com"
level = "secure"
mx = ["mx.example.net", "*.mail.example.com"]
[[policy]]
domain = "v.example"
level = "verify"
[[policy]]
domain = "m.example"
level = "verify"
match = ["cert.example", ".example.org"]
[[policy]]
domain = "e.example"
level = "encrypt"
"#,
        );
        let s = set.lookup("A.Example.com").unwrap();
        assert_eq!(
            s.required_names("A.Example.com.", "mx.example.net"),
            ["a.example.com", ".a.example.com"]
        );
        let v = set.lookup("v.example").unwrap();
        assert_eq!(
            v.required_names("v.example", "MX1.Host.example."),
            ["mx1.host.example"]
        );
        let m = set.lookup("m.example").unwrap();
        assert_eq!(
            m.required_names("m.example", "mx"),
            ["cert.example", ".example.org"]
        );
        let e = set.lookup("e.example").unwrap();
        assert!(e.required_names("e.example", "mx.e.example").is_empty());

        for (host, ok) in [
            ("mx.example.net", true),
            ("MX.example.net.", true),
            ("a.mail.example.com", true),
            ("mail.example.com", false),
            ("a.b.mail.example.com", false),
            ("mx.example.org", false),
            ("", false),
        ] {
            assert_eq!(s.allows_mx(host), ok, "{host}");
        }
        assert!(e.allows_mx("anything.example"));
    }

    #[test]
    fn level_names() {
        for l in Level::ALL {
            assert_eq!(Level::parse(l.as_str()), Ok(l));
            assert_eq!(l.to_string(), l.as_str());
        }
        assert_eq!(MinTls::default(), MinTls::Tls12);
        let e = PolicyError {
            file: "d".into(),
            line: None,
            message: "m".into(),
        };
        assert_eq!(e.to_string(), "d: m");
    }

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn load_dir_reads_toml_files_in_order_and_checks_them() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let ca = std::fs::read_to_string(examples_dir().join("partner-bank-ca.pem")).unwrap();
        write(dir, "ca.pem", &ca);
        write(
            dir,
            "b.toml",
            "[[policy]]\ndomain = \"b.example\"\nlevel = \"secure\"\nca_file = \"ca.pem\"\n",
        );
        write(
            dir,
            "a.toml",
            "[[policy]]\ndomain = \"a.example\"\nlevel = \"encrypt\"\n",
        );
        // Not read: other suffixes, hidden files, subdirectories.
        write(dir, "c.toml.example", "garbage");
        write(dir, ".#a.toml", "garbage");
        write(dir, "notes.txt", "garbage");
        std::fs::create_dir(dir.join("sub.toml")).unwrap();
        std::fs::create_dir(dir.join("old")).unwrap();
        write(&dir.join("old"), "x.toml", "garbage");

        let set = PolicySet::load_dir(dir).unwrap();
        let got: Vec<(&str, &str)> = set
            .iter()
            .map(|p| (p.domain.as_str(), p.source.as_str()))
            .collect();
        let a = format!("{}:2", dir.join("a.toml").display());
        let b = format!("{}:2", dir.join("b.toml").display());
        assert_eq!(got, [("a.example", a.as_str()), ("b.example", b.as_str())]);
        assert_eq!(
            set.lookup("b.example").unwrap().ca_file,
            Some(dir.join("ca.pem"))
        );

        // A duplicate across files names both places.
        write(
            dir,
            "c.toml",
            "\n[[policy]]\ndomain = \"A.example.\"\nlevel = \"verify\"\n",
        );
        let err = PolicySet::load_dir(dir).unwrap_err();
        assert_eq!((err.file.clone(), err.line), (dir.join("c.toml"), Some(3)));
        assert!(
            err.message
                .contains(&format!("already has a policy at {a}")),
            "{err}"
        );
        std::fs::remove_file(dir.join("c.toml")).unwrap();

        // ca_file is checked by load_dir (not by parse_file).
        let bad_ca = [
            ("missing.pem", None, "cannot be read"),
            (
                "empty.pem",
                Some("not a certificate\n"),
                "holds no certificate",
            ),
            (
                "junk.pem",
                Some("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
                "cannot be a trust anchor",
            ),
        ];
        for (name, content, needle) in bad_ca {
            if let Some(c) = content {
                write(dir, name, c);
            }
            let text = format!(
                "[[policy]]\ndomain = \"b.example\"\nlevel = \"secure\"\n\nca_file = \"{name}\"\n"
            );
            write(dir, "b.toml", &text);
            assert!(PolicySet::parse_file(&text, &dir.join("b.toml")).is_ok());
            let err = PolicySet::load_dir(dir).unwrap_err();
            assert_eq!(err.line, Some(5), "{err}");
            assert!(err.message.contains(needle), "{err}");
        }

        let err = PolicySet::load_dir(&dir.join("nope")).unwrap_err();
        assert!(
            err.to_string().contains("cannot read the policy directory"),
            "{err}"
        );
    }

    fn examples_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/examples")
    }

    /// The shipped examples stay valid, and `policies/` itself loads nothing.
    #[test]
    fn example_files_are_valid() {
        let set = PolicySet::load_dir(&examples_dir()).unwrap();
        let got: Vec<(&str, Level)> = set.iter().map(|p| (p.domain.as_str(), p.level)).collect();
        assert_eq!(
            got,
            [
                ("dane-mail.example", Level::DaneOnly),
                (".dane-mail.example", Level::DaneOnly),
                ("mostly-dane.example", Level::Dane),
                ("legacy-partner.example", Level::Encrypt),
                ("selfsigned-partner.example", Level::Fingerprint),
                ("partner-bank.example", Level::Secure),
                ("partner.example", Level::Fingerprint),
                (".filtered.example", Level::Verify),
            ]
        );
        let hop = set.lookup("x.filtered.example").unwrap().route.as_ref();
        assert_eq!(hop.unwrap().to_string(), "relay.filter.example.net");
        let bank = set.lookup("partner-bank.example").unwrap();
        assert_eq!(bank.min_tls, MinTls::Tls13);
        assert_eq!(
            bank.ca_file,
            Some(examples_dir().join("partner-bank-ca.pem"))
        );
        assert!(bank.allows_mx("a.mail.partner-bank.example"));
        assert!(!bank.allows_mx("mx2.partner-bank.example"));

        let top = PolicySet::load_dir(examples_dir().parent().unwrap()).unwrap();
        assert!(top.is_empty());
    }

    #[test]
    fn lookup_of_a_normalised_domain() {
        let set = set_of(
            "[[policy]]\ndomain = \".example.com\"\nlevel = \"verify\"\n\
             [[policy]]\ndomain = \"a.example.com\"\nlevel = \"encrypt\"\n",
        );
        let cases = [
            ("A.example.com", Some("a.example.com")),
            ("b.a.example.com", Some(".example.com")),
            ("example.com", None),
        ];
        for (name, want) in cases {
            let d = Domain::parse(name).unwrap();
            let got = set.lookup_domain(&d).map(|p| p.domain.as_str());
            assert_eq!(got, want, "{name}");
            assert_eq!(set.lookup(name).map(|p| p.domain.as_str()), want, "{name}");
        }
        // A name Domain refuses still falls under its parent's policy.
        assert_eq!(
            set.lookup("a_b.example.com").unwrap().domain,
            ".example.com"
        );
    }

    /// Many policies load and are each found (the index keeps both linear).
    #[test]
    fn many_policies_load_and_are_found() {
        let n = 20_000;
        let mut text = String::new();
        for i in 0..n {
            text.push_str(&format!(
                "[[policy]]\ndomain = \"d{i}.example\"\nlevel = \"encrypt\"\n"
            ));
        }
        let started = std::time::Instant::now();
        let set = set_of(&text);
        // Printed, not asserted: a timing bound would flake on a busy machine.
        // Quadratic loading took 9 s for 16,000 entries; linear takes well under one.
        eprintln!("{n} policies loaded in {:?}", started.elapsed());
        assert_eq!(set.len(), n);
        for i in (0..n).step_by(997) {
            let p = set.lookup(&format!("D{i}.example.")).unwrap();
            assert_eq!(p.source, format!("p.toml:{}", 3 * i + 2));
        }
    }
}
