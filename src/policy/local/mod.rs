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

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use hickory_resolver::proto::rr::Name;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde::Deserialize;

use crate::policy::requirement::CaCerts;
use toml::Spanned;

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

    /// Parses a level name; the error explains refusals and lists the valid names.
    fn parse(s: &str) -> Result<Level, String> {
        if let Some(l) = Level::ALL.iter().find(|l| l.as_str() == s) {
            return Ok(*l);
        }
        if s == "none" || s == "may" {
            return Err(format!(
                "level \"{s}\" is refused: tlsrelay never sends mail without TLS, so it has no \
                 plaintext or opportunistic level; the lowest level is \"encrypt\" (TLS required, \
                 certificate not checked), or remove the policy and the domain gets the relay's floor"
            ));
        }
        Err(format!(
            "unknown level \"{s}\"; valid levels: {}",
            Level::ALL.map(Level::as_str).join(", ")
        ))
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
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
    pub fn parse(s: &str) -> Result<Fingerprint, String> {
        let usage = "write \"cert-sha256:HEX\" (SHA-256 of the certificate) or \
                     \"spki-sha256:HEX\" (SHA-256 of its public key)";
        let Some((kind, hex)) = s.trim().split_once(':') else {
            return Err(format!("fingerprint \"{s}\" has no type; {usage}"));
        };
        let make: fn([u8; 32]) -> Fingerprint = match kind.to_ascii_lowercase().as_str() {
            "cert-sha256" => Fingerprint::Cert,
            "spki-sha256" | "pubkey-sha256" => Fingerprint::PublicKey,
            "sha256" => {
                return Err(format!(
                    "fingerprint \"{s}\" does not say what was hashed; {usage}"
                ))
            }
            _ => {
                return Err(format!(
                    "fingerprint type \"{kind}\" is not supported (SHA-256 only); {usage}"
                ))
            }
        };
        let bytes = decode_hex(hex).map_err(|e| format!("fingerprint \"{s}\": {e}"))?;
        let digest: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            format!(
                "fingerprint \"{s}\" has {} bytes; a SHA-256 digest has 32 (64 hex digits)",
                bytes.len()
            )
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

/// Decodes hex digits, ignoring `:` separators.
fn decode_hex(hex: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<u8> = hex.bytes().filter(|&b| b != b':').collect();
    if let Some(bad) = digits.iter().find(|b| !b.is_ascii_hexdigit()) {
        return Err(format!("`{}` is not a hex digit", *bad as char));
    }
    if !digits.len().is_multiple_of(2) {
        return Err(format!("odd number of hex digits ({})", digits.len()));
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
    pub mx: Vec<String>,
    /// Where the policy was written, as `file:line`.
    pub source: String,
}

impl LocalPolicy {
    /// Names the certificate must carry when delivering for `domain` to `mx_host` (empty for levels without name checks).
    pub fn required_names(&self, domain: &str, mx_host: &str) -> Vec<String> {
        if !matches!(self.level, Level::Verify | Level::Secure) {
            return vec![];
        }
        if !self.match_names.is_empty() {
            return self.match_names.clone();
        }
        let norm = |s: &str| normalize_name(s).unwrap_or_else(|_| s.to_ascii_lowercase());
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
        let Ok(host) = normalize_name(host) else {
            return false;
        };
        self.mx.iter().any(|p| match p.strip_prefix("*.") {
            Some(suffix) => host
                .split_once('.')
                .is_some_and(|(first, rest)| !first.is_empty() && rest == suffix),
            None => *p == host,
        })
    }
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

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{}: {}", self.file.display(), l, self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

impl std::error::Error for PolicyError {}

/// Every local policy, indexed by domain.
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    policies: Vec<LocalPolicy>,
    index: HashMap<String, usize>,
}

impl PolicySet {
    /// A set without policies: every domain gets the DANE / MTA-STS / floor rules.
    pub fn empty() -> PolicySet {
        PolicySet::default()
    }

    /// Reads every `*.toml` file directly in `dir` (sorted by name), checking `ca_file`s and duplicate domains.
    pub fn load_dir(dir: &Path) -> Result<PolicySet, PolicyError> {
        let dir_err = |message: String| PolicyError {
            file: dir.to_owned(),
            line: None,
            message,
        };
        let entries = std::fs::read_dir(dir)
            .map_err(|e| dir_err(format!("cannot read the policy directory: {e}")))?;
        let mut files = vec![];
        for entry in entries {
            let entry =
                entry.map_err(|e| dir_err(format!("cannot read the policy directory: {e}")))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with('.') || !name.ends_with(".toml") {
                continue;
            }
            // Follows symbolic links; directories named *.toml are not files.
            if std::fs::metadata(entry.path()).is_ok_and(|m| m.is_file()) {
                files.push(entry.path());
            }
        }
        files.sort();
        let mut set = PolicySet::empty();
        for path in files {
            let text = std::fs::read_to_string(&path).map_err(|e| PolicyError {
                file: path.clone(),
                line: None,
                message: format!("cannot read the policy file: {e}"),
            })?;
            for (policy, line) in parse(&text, &path, true)? {
                set.insert(policy, &path, line)?;
            }
        }
        Ok(set)
    }

    /// Parses one policy file's text (without reading `ca_file`s); `path` names it in errors and sources.
    pub fn parse_file(text: &str, path: &Path) -> Result<Vec<LocalPolicy>, PolicyError> {
        let parsed = parse(text, path, false)?;
        // A duplicate inside one file is an error here too.
        let mut set = PolicySet::empty();
        for (policy, line) in parsed {
            set.insert(policy, path, line)?;
        }
        Ok(set.policies)
    }

    /// Adds a policy; a second policy for the same domain is an error naming both places.
    fn insert(&mut self, policy: LocalPolicy, path: &Path, line: usize) -> Result<(), PolicyError> {
        if let Some(&i) = self.index.get(&policy.domain) {
            return Err(PolicyError {
                file: path.to_owned(),
                line: Some(line),
                message: format!(
                    "\"{}\" already has a policy at {}; a domain may have only one policy, remove one of them",
                    policy.domain, self.policies[i].source
                ),
            });
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
        let d = normalize_name(domain).unwrap_or_else(|_| {
            let t = domain.trim();
            t.strip_suffix('.').unwrap_or(t).to_ascii_lowercase()
        });
        if let Some(&i) = self.index.get(&d) {
            return Some(&self.policies[i]);
        }
        let mut rest = d.as_str();
        while let Some((_, parent)) = rest.split_once('.') {
            if let Some(&i) = self.index.get(&format!(".{parent}")) {
                return Some(&self.policies[i]);
            }
            rest = parent;
        }
        None
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

/// A policy file as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    policy: Vec<RawPolicy>,
}

/// One `[[policy]]` table as written, with positions for error messages.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    domain: Spanned<String>,
    level: Spanned<String>,
    #[serde(rename = "match")]
    match_names: Option<Spanned<Vec<Spanned<String>>>>,
    fingerprints: Option<Spanned<Vec<Spanned<String>>>>,
    ca_file: Option<Spanned<String>>,
    min_tls: Option<Spanned<toml::Value>>,
    mx: Option<Spanned<Vec<Spanned<String>>>>,
}

/// Parses and checks a file; returns each policy with the line of its `domain`.
fn parse(
    text: &str,
    path: &Path,
    check_files: bool,
) -> Result<Vec<(LocalPolicy, usize)>, PolicyError> {
    let err = |line: usize, message: String| PolicyError {
        file: path.to_owned(),
        line: Some(line),
        message,
    };
    if let Some(i) = text.lines().position(|l| l.trim() == "[policy]") {
        return Err(err(
            i + 1,
            "write [[policy]] with two brackets: each policy is one entry of an array of tables"
                .into(),
        ));
    }
    let raw: RawFile = toml::from_str(text).map_err(|e| PolicyError {
        file: path.to_owned(),
        line: e.span().map(|s| line_of(text, s.start)),
        message: e.message().trim().to_string(),
    })?;
    let at = |span: std::ops::Range<usize>| line_of(text, span.start);
    let mut out = vec![];
    for raw in raw.policy {
        let domain_line = at(raw.domain.span());
        let domain = normalize_key(raw.domain.get_ref()).map_err(|m| err(domain_line, m))?;
        let level_line = at(raw.level.span());
        let level = Level::parse(raw.level.get_ref()).map_err(|m| err(level_line, m))?;
        let names_check = matches!(level, Level::Verify | Level::Secure);

        let mut match_names = vec![];
        if let Some(m) = &raw.match_names {
            if !names_check {
                return Err(err(
                    at(m.span()),
                    format!(
                        "match applies to levels verify and secure only; level {level} {}",
                        match level {
                            Level::Fingerprint => "checks the fingerprints, not names",
                            Level::Encrypt => "checks no names",
                            _ => "checks names as DANE (RFC 7672) prescribes",
                        }
                    ),
                ));
            }
            if m.get_ref().is_empty() {
                return Err(err(
                    at(m.span()),
                    "match is empty; list names or remove the key for the level's default".into(),
                ));
            }
            for n in m.get_ref() {
                match_names.push(normalize_match(n.get_ref()).map_err(|e| err(at(n.span()), e))?);
            }
        }

        let mut fingerprints = vec![];
        match &raw.fingerprints {
            Some(f) if level != Level::Fingerprint => {
                return Err(err(
                    at(f.span()),
                    format!("fingerprints apply to level fingerprint only, not {level}"),
                ))
            }
            Some(f) => {
                for fp in f.get_ref() {
                    fingerprints
                        .push(Fingerprint::parse(fp.get_ref()).map_err(|e| err(at(fp.span()), e))?);
                }
            }
            None => {}
        }
        if level == Level::Fingerprint && fingerprints.is_empty() {
            return Err(err(
                raw.fingerprints.as_ref().map_or(level_line, |f| at(f.span())),
                "level fingerprint needs at least one pin, e.g. fingerprints = [\"spki-sha256:HEX\"]"
                    .into(),
            ));
        }

        let ca_file = match &raw.ca_file {
            Some(c) if !names_check => {
                return Err(err(
                    at(c.span()),
                    format!("ca_file applies to levels verify and secure only, not {level}"),
                ))
            }
            Some(c) if c.get_ref().trim().is_empty() => {
                return Err(err(
                    at(c.span()),
                    "ca_file is empty; give a PEM file".into(),
                ))
            }
            Some(c) => {
                let p = PathBuf::from(c.get_ref());
                let p = match path.parent() {
                    Some(dir) if p.is_relative() => dir.join(p),
                    _ => p,
                };
                // Not read (parse_file): an empty trust set, so such a policy fails closed.
                let certs = if check_files {
                    check_ca_file(&p).map_err(|e| err(at(c.span()), e))?
                } else {
                    Vec::new()
                };
                Some((p, CaCerts::from(certs)))
            }
            None => None,
        };
        let (ca_file, ca) = ca_file.unzip();

        let min_tls = match &raw.min_tls {
            None => MinTls::Tls12,
            Some(v) => match v.get_ref() {
                toml::Value::String(s) if s == "1.2" => MinTls::Tls12,
                toml::Value::String(s) if s == "1.3" => MinTls::Tls13,
                toml::Value::Float(f) if *f == 1.2 => MinTls::Tls12,
                toml::Value::Float(f) if *f == 1.3 => MinTls::Tls13,
                other => {
                    return Err(err(
                        at(v.span()),
                        format!(
                            "min_tls = {other} is not supported; write \"1.2\" (the default) or \"1.3\" (tlsrelay never uses older versions)"
                        ),
                    ))
                }
            },
        };

        let mut mx = vec![];
        if let Some(m) = &raw.mx {
            if m.get_ref().is_empty() {
                return Err(err(
                    at(m.span()),
                    "mx is empty, which would allow no host; list MX host patterns or remove the key to allow every MX host".into(),
                ));
            }
            for p in m.get_ref() {
                mx.push(normalize_mx(p.get_ref()).map_err(|e| err(at(p.span()), e))?);
            }
        }

        out.push((
            LocalPolicy {
                domain,
                level,
                match_names,
                fingerprints,
                ca_file,
                ca,
                min_tls,
                mx,
                source: format!("{}:{}", path.display(), domain_line),
            },
            domain_line,
        ));
    }
    Ok(out)
}

/// Checks that a CA file holds at least one PEM certificate usable as a trust anchor.
fn check_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let shown = path.display();
    let bytes = std::fs::read(path).map_err(|e| {
        format!("ca_file {shown} cannot be read ({e}); give a PEM file with the CA certificates to trust for this domain")
    })?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("ca_file {shown}: bad PEM ({e})"))?;
    if certs.is_empty() {
        return Err(format!(
            "ca_file {shown} holds no certificate; it needs at least one -----BEGIN CERTIFICATE----- block"
        ));
    }
    for (i, c) in certs.iter().enumerate() {
        webpki::anchor_from_trusted_cert(c).map_err(|e| {
            format!(
                "ca_file {shown}: certificate {} cannot be a trust anchor ({e:?})",
                i + 1
            )
        })?;
    }
    Ok(certs)
}

/// The 1-based line holding byte `offset` of `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Normalises a host or domain name: lowercase A-labels, no trailing dot, letters/digits/hyphens.
fn normalize_name(input: &str) -> Result<String, String> {
    let s = input.trim();
    let s = s.strip_suffix('.').unwrap_or(s);
    if s.is_empty() {
        return Err("the name is empty".into());
    }
    let ascii = if s.is_ascii() {
        s.to_ascii_lowercase()
    } else {
        let name = Name::from_utf8(s)
            .map_err(|e| format!("\"{s}\" is not a valid internationalised name ({e})"))?;
        let a = name.to_ascii();
        a.strip_suffix('.').unwrap_or(&a).to_ascii_lowercase()
    };
    if ascii.len() > 253 {
        return Err(format!("\"{s}\" is longer than 253 characters"));
    }
    for label in ascii.split('.') {
        if label.is_empty() {
            return Err(format!("\"{s}\" has an empty label (two dots in a row?)"));
        }
        if label.len() > 63 {
            return Err(format!("\"{s}\" has a label longer than 63 characters"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(format!(
                "\"{s}\" is not a domain name: only letters, digits, hyphens and dots are allowed"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!(
                "\"{s}\" is not a domain name: a label cannot start or end with a hyphen"
            ));
        }
    }
    if ascii
        .rsplit('.')
        .next()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!(
            "\"{s}\" looks like an IP address; policies name domains"
        ));
    }
    Ok(ascii)
}

/// Normalises a policy key: a domain, or `.domain` for every subdomain.
fn normalize_key(s: &str) -> Result<String, String> {
    let t = s.trim();
    if let Some(rest) = t.strip_prefix("*.") {
        return Err(format!(
            "domain \"{s}\": write \".{rest}\" (leading dot) for every subdomain"
        ));
    }
    match t.strip_prefix('.') {
        Some(parent) => normalize_name(parent).map(|n| format!(".{n}")),
        None => normalize_name(t),
    }
    .map_err(|e| format!("domain: {e}"))
}

/// Normalises a `match` name: a host name, or `.domain` for any subdomain.
fn normalize_match(s: &str) -> Result<String, String> {
    let t = s.trim();
    if t.contains('*') {
        return Err(format!(
            "match \"{s}\": no wildcards; write \".example.com\" for any subdomain of example.com"
        ));
    }
    match t.strip_prefix('.') {
        Some(parent) => normalize_name(parent).map(|n| format!(".{n}")),
        None => normalize_name(t),
    }
    .map_err(|e| format!("match: {e}"))
}

/// Normalises an `mx` pattern: a host name, or `*.domain` for one label below it (as in MTA-STS).
fn normalize_mx(s: &str) -> Result<String, String> {
    let t = s.trim();
    let (wild, rest) = match t.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, t),
    };
    if rest.contains('*') {
        return Err(format!(
            "mx \"{s}\": a wildcard is allowed only as the whole leftmost label, e.g. \"*.mail.example.com\""
        ));
    }
    if let Some(parent) = rest.strip_prefix('.') {
        return Err(format!(
            "mx \"{s}\": write \"*{rest}\" for hosts one label below {parent}"
        ));
    }
    let n = normalize_name(rest).map_err(|e| format!("mx: {e}"))?;
    Ok(if wild { format!("*.{n}") } else { n })
}

/// A line of a Postfix table that [`import_postfix`] did not carry over, or carried without an attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The 1-based line where the table entry starts.
    pub line: usize,
    /// The entry's text (continuation lines joined with a space).
    pub text: String,
    /// Why; starts with "carried" when the line was carried and only part of it was not.
    pub reason: String,
}

/// One entry carried over from a Postfix table.
struct Imported {
    line: usize,
    text: String,
    domain: String,
    level: Level,
    match_names: Vec<String>,
    fingerprints: Vec<Fingerprint>,
    min_tls: MinTls,
    comments: Vec<String>,
}

/// Converts a Postfix smtp_tls_policy_maps table (text of a hash/texthash source file) to tlsrelay policy TOML,
/// returning the TOML and every line it could not carry over with the reason.
///
/// Decisions: a line is not carried when its key is a route (`[host]`, `[host]:port`,
/// `host:port`), its level is `none`, `may` or unknown, it repeats an earlier key
/// (Postfix uses the first), it is a `fingerprint` line without a SHA-256 digest, or
/// its `protocols=` allow neither TLS 1.2 nor 1.3. `ciphers=`, `exclude=`, `tafile=`,
/// `connection_reuse=`, `servername=` and unknown attributes are reported and
/// dropped while the line's level is carried: dropping them never lets tlsrelay
/// accept less than the level demands (a missing `tafile=` means Mozilla's roots
/// must vouch for the host instead, so delivery fails closed rather than open).
/// Fingerprints are assumed to be SHA-256 (Postfix's `smtp_tls_fingerprint_digest`
/// default since 3.6) and are pinned both as certificate and public-key digests,
/// as Postfix compares either.
pub fn import_postfix(text: &str) -> (String, Vec<Skipped>) {
    let mut skipped = vec![];
    let mut entries: Vec<(usize, String)> = vec![];
    for (i, raw) in text.lines().enumerate() {
        let l = raw.trim_end_matches('\r');
        let trimmed = l.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if l.starts_with(char::is_whitespace) {
            match entries.last_mut() {
                Some((_, t)) => {
                    t.push(' ');
                    t.push_str(trimmed);
                }
                None => skipped.push(Skipped {
                    line: i + 1,
                    text: trimmed.into(),
                    reason: "continuation line (leading whitespace) without an entry before it"
                        .into(),
                }),
            }
            continue;
        }
        entries.push((i + 1, trimmed.to_string()));
    }

    let mut imported: Vec<Imported> = vec![];
    let mut first_line: HashMap<String, usize> = HashMap::new();
    for (line, text) in entries {
        let mut notes = vec![];
        match import_entry(line, &text, &mut notes) {
            Ok(mut entry) => {
                if let Some(first) = first_line.get(&entry.domain) {
                    skipped.push(Skipped {
                        line,
                        text,
                        reason: format!(
                            "duplicate key; Postfix uses the first entry, line {first}"
                        ),
                    });
                    continue;
                }
                first_line.insert(entry.domain.clone(), line);
                entry
                    .comments
                    .extend(notes.iter().map(|n| format!("note: {n}")));
                skipped.extend(notes.into_iter().map(|reason| Skipped {
                    line,
                    text: text.clone(),
                    reason,
                }));
                imported.push(entry);
            }
            Err(reason) => skipped.push(Skipped { line, text, reason }),
        }
    }
    skipped.sort_by_key(|s| s.line);

    let mut out = String::from(
        "# tlsrelay local policies converted from a Postfix smtp_tls_policy_maps table.\n\
         # Review before use: lines that were not carried over are listed by the converter.\n",
    );
    let q = |s: &str| toml::Value::String(s.to_string()).to_string();
    for e in &imported {
        out.push_str(&format!("\n# line {}: {}\n", e.line, e.text));
        for c in &e.comments {
            out.push_str(&format!("# {c}\n"));
        }
        out.push_str("[[policy]]\n");
        out.push_str(&format!("domain = {}\n", q(&e.domain)));
        out.push_str(&format!("level = {}\n", q(e.level.as_str())));
        if !e.match_names.is_empty() {
            let names: Vec<String> = e.match_names.iter().map(|n| q(n)).collect();
            out.push_str(&format!("match = [{}]\n", names.join(", ")));
        }
        if !e.fingerprints.is_empty() {
            out.push_str("fingerprints = [\n");
            for f in &e.fingerprints {
                out.push_str(&format!("    {},\n", q(&f.to_string())));
            }
            out.push_str("]\n");
        }
        if e.min_tls != MinTls::Tls12 {
            out.push_str(&format!("min_tls = {}\n", q(e.min_tls.as_str())));
        }
    }
    (out, skipped)
}

/// Converts one logical line; `Err` = not carried (with the reason), `notes` = dropped attributes.
fn import_entry(line: usize, text: &str, notes: &mut Vec<String>) -> Result<Imported, String> {
    let mut tokens = text.split_whitespace();
    let key = tokens.next().unwrap_or_default();
    if key.starts_with('[') || key.contains(':') {
        return Err(
            "route-specific nexthop ([host], [host]:port or host:port) names a relay host, not a \
             recipient domain; tlsrelay policies are per recipient domain"
                .into(),
        );
    }
    if key.contains('@') {
        return Err("not a domain key; TLS policies are looked up by domain".into());
    }
    let domain = normalize_key(key)?;
    let Some(level_word) = tokens.next() else {
        return Err("no security level after the key".into());
    };
    let level_word = level_word.to_ascii_lowercase();
    let mut level = match level_word.as_str() {
        "none" | "may" => {
            return Err(format!(
                "level {level_word}: tlsrelay never sends without TLS; the domain gets the relay's floor instead"
            ))
        }
        w => Level::ALL
            .into_iter()
            .find(|l| l.as_str() == w)
            .ok_or_else(|| format!("unknown level \"{w}\""))?,
    };
    if text.contains('{') {
        return Err(
            "braced attribute values ({ name = value }) are not supported by the converter; convert this line by hand"
                .into(),
        );
    }

    let mut match_values: Vec<&str> = vec![];
    let mut min_tls = MinTls::Tls12;
    let mut comments = vec![];
    for attr in tokens {
        let Some((name, value)) = attr.split_once('=') else {
            notes.push(format!(
                "carried without `{attr}`: not an attribute (name=value)"
            ));
            continue;
        };
        match name.to_ascii_lowercase().as_str() {
            "match" => match_values.push(value),
            "protocols" => {
                let (min, note) = postfix_protocols(value)?;
                min_tls = min;
                if let Some(n) = note {
                    notes.push(format!(
                        "carried `{attr}` as min_tls = \"{}\": {n}",
                        min.as_str()
                    ));
                }
            }
            "ciphers" | "exclude" => notes.push(format!(
                "carried without `{attr}`: tlsrelay's cipher suites are fixed (forward-secret AEAD \
                 suites of TLS 1.2 and 1.3 only) and not set per domain"
            )),
            "tafile" => notes.push(format!(
                "carried without `{attr}`: trust-anchor files are not supported yet (they could \
                 become DANE-TA style anchors later); until then the certificate must chain to \
                 Mozilla's roots — if the file holds CA certificates, set ca_file to it by hand"
            )),
            "connection_reuse" => notes.push(format!(
                "carried without `{attr}`: connection reuse is relay-wide (delivery.connection_reuse_time)"
            )),
            "servername" => notes.push(format!(
                "carried without `{attr}`: tlsrelay sends the MX host name as SNI"
            )),
            _ => notes.push(format!("carried without `{attr}`: unknown attribute")),
        }
    }

    let mut match_names = vec![];
    let mut fingerprints = vec![];
    match level {
        Level::Fingerprint => {
            if match_values.is_empty() {
                return Err("fingerprint level without match= digests".into());
            }
            let mut dropped = vec![];
            for digest in match_values.iter().flat_map(|v| v.split('|')) {
                if digest.is_empty() {
                    continue;
                }
                let why = match decode_hex(digest) {
                    Ok(b) if b.len() == 32 => {
                        let d: [u8; 32] = b.try_into().unwrap();
                        for f in [Fingerprint::Cert(d), Fingerprint::PublicKey(d)] {
                            if !fingerprints.contains(&f) {
                                fingerprints.push(f);
                            }
                        }
                        continue;
                    }
                    Ok(b) if b.len() == 16 => "an MD5 digest",
                    Ok(b) if b.len() == 20 => "a SHA-1 digest",
                    Ok(_) => "not a SHA-256 digest (wrong length)",
                    Err(_) => "not hex",
                };
                dropped.push(format!("`{digest}` is {why}"));
            }
            let advice = "tlsrelay pins SHA-256 only; compute the SHA-256 fingerprint of the \
                          certificate or its public key";
            if fingerprints.is_empty() {
                return Err(format!(
                    "no SHA-256 fingerprint to carry ({}); {advice}",
                    dropped.join("; ")
                ));
            }
            for d in dropped {
                notes.push(format!("carried without digest {d}; {advice}"));
            }
            comments.push(
                "Postfix compares its fingerprints with the certificate and with its public key: \
                 both are pinned (SHA-256 assumed, Postfix's default digest since 3.6)"
                    .into(),
            );
        }
        Level::Verify | Level::Secure => {
            let parent = domain.starts_with('.');
            let base = domain.trim_start_matches('.').to_string();
            let mut words: Vec<String> = match_values
                .iter()
                .flat_map(|v| v.split(':'))
                .filter(|w| !w.is_empty())
                .map(|w| w.to_ascii_lowercase())
                .collect();
            words.dedup();
            let has = |w: &str| words.iter().any(|x| x == w);
            let only =
                |set: &[&str]| !words.is_empty() && words.iter().all(|w| set.contains(&w.as_str()));
            if words.is_empty() {
                if level == Level::Secure {
                    comments.push("Postfix's default match=nexthop:dot-nexthop is tlsrelay's default at level secure".into());
                }
            } else if level == Level::Secure
                && only(&["nexthop", "dot-nexthop"])
                && has("nexthop")
                && has("dot-nexthop")
            {
                comments
                    .push("match=nexthop:dot-nexthop is tlsrelay's default at level secure".into());
            } else if only(&["hostname"]) {
                if level == Level::Secure {
                    level = Level::Verify;
                    comments.push("Postfix secure with match=hostname checks only the MX host name: that is tlsrelay's level verify".into());
                } else {
                    comments.push(
                        "match=hostname (the MX host name) is tlsrelay's default at level verify"
                            .into(),
                    );
                }
            } else {
                if parent && (has("nexthop") || has("dot-nexthop")) {
                    return Err(format!(
                        "match=nexthop/dot-nexthop on the parent-domain key {domain} depends on the \
                         recipient domain and cannot be mixed with other names in tlsrelay; write a \
                         policy per domain"
                    ));
                }
                for w in &words {
                    let name = match w.as_str() {
                        "nexthop" => base.clone(),
                        "dot-nexthop" => format!(".{base}"),
                        "hostname" => {
                            comments.push("match=hostname is not listed: with explicit match names tlsrelay checks only those (Postfix also accepted the MX host name)".into());
                            continue;
                        }
                        w => normalize_match(w)?,
                    };
                    if !match_names.contains(&name) {
                        match_names.push(name);
                    }
                }
            }
        }
        Level::Dane | Level::DaneOnly | Level::Encrypt => {
            for v in &match_values {
                notes.push(format!(
                    "carried without `match={v}`: tlsrelay uses no match names at level {level}"
                ));
            }
        }
    }
    if level == Level::Dane {
        comments.push("tlsrelay's dane falls back to the relay's floor (WebPKI), not to opportunistic TLS as Postfix's does".into());
    }
    Ok(Imported {
        line,
        text: text.to_string(),
        domain,
        level,
        match_names,
        fingerprints,
        min_tls,
        comments,
    })
}

/// Reads Postfix's `protocols=` value: the lowest TLS version tlsrelay should accept, and a note if the value
/// says something tlsrelay cannot express; `Err` when it allows neither TLS 1.2 nor 1.3.
fn postfix_protocols(value: &str) -> Result<(MinTls, Option<String>), String> {
    const NAMES: [&str; 6] = ["sslv2", "sslv3", "tlsv1", "tlsv1.1", "tlsv1.2", "tlsv1.3"];
    let idx = |s: &str| NAMES.iter().position(|n| n.eq_ignore_ascii_case(s));
    let mut include = [false; 6];
    let mut any_include = false;
    let mut exclude = [false; 6];
    let (mut lo, mut hi) = (0, 5);
    let mut unknown = vec![];
    for item in value.split([':', ',', ' ']).filter(|s| !s.is_empty()) {
        let (op, name) = if let Some(n) = item.strip_prefix(">=") {
            (">=", n)
        } else if let Some(n) = item.strip_prefix("<=") {
            ("<=", n)
        } else if let Some(n) = item.strip_prefix('!') {
            ("!", n)
        } else {
            ("", item)
        };
        let Some(i) = idx(name) else {
            unknown.push(item);
            continue;
        };
        match op {
            ">=" => lo = lo.max(i),
            "<=" => hi = hi.min(i),
            "!" => exclude[i] = true,
            _ => {
                include[i] = true;
                any_include = true;
            }
        }
    }
    let on = |i: usize| (!any_include || include[i]) && !exclude[i] && lo <= i && i <= hi;
    let mut notes = vec![];
    if !unknown.is_empty() {
        notes.push(format!("unknown protocol names {}", unknown.join(", ")));
    }
    if (0..4).any(on) {
        notes.push("it allows versions below TLS 1.2, which tlsrelay never uses".to_string());
    }
    let min = match (on(4), on(5)) {
        (true, _) => MinTls::Tls12,
        (false, true) => MinTls::Tls13,
        (false, false) => {
            return Err(format!(
            "protocols={value} allows neither TLS 1.2 nor TLS 1.3, the only versions tlsrelay uses"
        ))
        }
    };
    if !on(5) {
        notes.push(
            "it excludes TLS 1.3; tlsrelay does not cap the version, TLS 1.3 stays allowed".into(),
        );
    }
    Ok((min, (!notes.is_empty()).then(|| notes.join("; "))))
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "3d5a0f7c9b1e24d86a4c0e2f91b7d3a5c8e6f0a2b4d6c8e0f1a3b5c7d9e1f3a5";

    fn digest(hex: &str) -> [u8; 32] {
        decode_hex(hex).unwrap().try_into().unwrap()
    }

    fn parse_ok(text: &str) -> Vec<LocalPolicy> {
        PolicySet::parse_file(text, Path::new("/etc/tlsrelay/policies/p.toml"))
            .unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    fn set_of(text: &str) -> PolicySet {
        let mut set = PolicySet::empty();
        for (p, line) in parse(text, Path::new("p.toml"), false).unwrap() {
            set.insert(p, Path::new("p.toml"), line).unwrap();
        }
        set
    }

    #[test]
    fn valid_file_normalised() {
        let text = format!(
            r#"# partners
[[policy]]
domain = "Partner-Bank.EXAMPLE."
level = "secure"
match = ["MX.partner-bank.example", ".Mail.Partner-Bank.example."]
ca_file = "bank-ca.pem"
min_tls = "1.3"
mx = ["mx1.partner-bank.example", "*.Mail.partner-bank.example"]

[[policy]]
domain = ".bücher.example"
level = "fingerprint"
fingerprints = ["SPKI-SHA256:{}", "cert-sha256:{A}"]

[[policy]]
domain = "dane.example"
level = "dane-only"
min_tls = 1.2

[[policy]]
domain = "v.example"
level = "verify"
ca_file = "/abs/ca.pem"

[[policy]]
domain = "e.example"
level = "encrypt"
"#,
            A.to_uppercase()
                .as_bytes()
                .chunks(2)
                .map(|c| std::str::from_utf8(c).unwrap())
                .collect::<Vec<_>>()
                .join(":")
        );
        let got = parse_ok(&text);
        assert_eq!(got.len(), 5);
        assert_eq!(
            got[0],
            LocalPolicy {
                domain: "partner-bank.example".into(),
                level: Level::Secure,
                match_names: vec![
                    "mx.partner-bank.example".into(),
                    ".mail.partner-bank.example".into()
                ],
                fingerprints: vec![],
                ca_file: Some(PathBuf::from("/etc/tlsrelay/policies/bank-ca.pem")),
                // Not read by parse_file: an empty trust set (fails closed).
                ca: Some(CaCerts::from(Vec::new())),
                min_tls: MinTls::Tls13,
                mx: vec![
                    "mx1.partner-bank.example".into(),
                    "*.mail.partner-bank.example".into()
                ],
                source: "/etc/tlsrelay/policies/p.toml:3".into(),
            }
        );
        assert_eq!(got[1].domain, ".xn--bcher-kva.example");
        assert_eq!(
            got[1].fingerprints,
            vec![
                Fingerprint::PublicKey(digest(A)),
                Fingerprint::Cert(digest(A))
            ]
        );
        assert_eq!(got[1].source, "/etc/tlsrelay/policies/p.toml:11");
        assert_eq!(
            (got[2].level, got[2].min_tls),
            (Level::DaneOnly, MinTls::Tls12)
        );
        assert_eq!(got[3].ca_file, Some(PathBuf::from("/abs/ca.pem")));
        assert_eq!(got[3].match_names, Vec::<String>::new());
        assert_eq!(got[4].level, Level::Encrypt);
        // A file without policies is valid (everything commented out).
        assert!(parse_ok("# nothing yet\n").is_empty());
    }

    #[test]
    fn errors_name_line_and_fix() {
        let head = "[[policy]]\ndomain = \"example.com\"\n";
        let fp = format!("fingerprints = [\"spki-sha256:{A}\"]\n");
        let cases: Vec<(String, usize, &str)> = vec![
            (
                format!("{head}level = \"secure\"\nmatchs = [\"a.example\"]\n"),
                4,
                "unknown field `matchs`, expected one of `domain`, `level`, `match`, `fingerprints`, `ca_file`, `min_tls`, `mx`",
            ),
            (
                format!("{head}level = \"strict\"\n"),
                3,
                "unknown level \"strict\"; valid levels: dane-only, dane, verify, secure, fingerprint, encrypt",
            ),
            (
                format!("{head}level = \"none\"\n"),
                3,
                "level \"none\" is refused: tlsrelay never sends mail without TLS",
            ),
            (
                format!("{head}level = \"may\"\n"),
                3,
                "the lowest level is \"encrypt\"",
            ),
            (
                format!("{head}level = \"Secure\"\n"),
                3,
                "unknown level \"Secure\"",
            ),
            (
                format!("{head}level = \"fingerprint\"\nfingerprints = [\"spki-sha256:{A}\",\n  \"cert-sha256:zz{}\"]\n", &A[2..]),
                5,
                "`z` is not a hex digit",
            ),
            (
                format!("{head}level = \"fingerprint\"\nfingerprints = [\"cert-sha256:{}\"]\n", &A[..62]),
                4,
                "has 31 bytes; a SHA-256 digest has 32 (64 hex digits)",
            ),
            (
                format!("{head}level = \"fingerprint\"\nfingerprints = [\"sha256:{A}\"]\n"),
                4,
                "does not say what was hashed; write \"cert-sha256:HEX\"",
            ),
            (
                format!("{head}level = \"fingerprint\"\nfingerprints = [\"sha1:{}\"]\n", &A[..40]),
                4,
                "fingerprint type \"sha1\" is not supported (SHA-256 only)",
            ),
            (
                format!("{head}level = \"fingerprint\"\n{fp}match = [\"a.example\"]\n"),
                5,
                "match applies to levels verify and secure only; level fingerprint checks the fingerprints",
            ),
            (
                format!("{head}level = \"fingerprint\"\n"),
                3,
                "level fingerprint needs at least one pin",
            ),
            (
                format!("{head}level = \"fingerprint\"\nfingerprints = []\n"),
                4,
                "level fingerprint needs at least one pin",
            ),
            (
                format!("{head}level = \"secure\"\n{fp}"),
                4,
                "fingerprints apply to level fingerprint only, not secure",
            ),
            (
                format!("{head}level = \"encrypt\"\nca_file = \"ca.pem\"\n"),
                4,
                "ca_file applies to levels verify and secure only, not encrypt",
            ),
            (
                format!("{head}level = \"secure\"\nmin_tls = \"1.1\"\n"),
                4,
                "min_tls = \"1.1\" is not supported; write \"1.2\" (the default) or \"1.3\"",
            ),
            (
                format!("{head}level = \"secure\"\nmin_tls = 1.0\n"),
                4,
                "min_tls = 1.0 is not supported",
            ),
            (
                format!("{head}level = \"secure\"\nmatch = []\n"),
                4,
                "match is empty",
            ),
            (
                format!("{head}level = \"secure\"\nmatch = [\"*.example.com\"]\n"),
                4,
                "no wildcards; write \".example.com\"",
            ),
            (
                format!("{head}level = \"dane\"\nmatch = [\"a.example\"]\n"),
                4,
                "match applies to levels verify and secure only",
            ),
            (
                format!("{head}level = \"secure\"\nmx = []\n"),
                4,
                "mx is empty",
            ),
            (
                format!("{head}level = \"secure\"\nmx = [\"mx.*.example\"]\n"),
                4,
                "a wildcard is allowed only as the whole leftmost label",
            ),
            (
                "[[policy]]\ndomain = \"*.example.com\"\nlevel = \"secure\"\n".into(),
                2,
                "write \".example.com\" (leading dot) for every subdomain",
            ),
            (
                "[[policy]]\ndomain = \"exa mple.com\"\nlevel = \"secure\"\n".into(),
                2,
                "only letters, digits, hyphens and dots",
            ),
            (
                "[[policy]]\ndomain = \"192.0.2.1\"\nlevel = \"secure\"\n".into(),
                2,
                "looks like an IP address",
            ),
            (
                "[[policy]]\ndomain = \"a..example\"\nlevel = \"secure\"\n".into(),
                2,
                "empty label",
            ),
            (
                "\n[[policy]]\nlevel = \"secure\"\n".into(),
                2,
                "missing field `domain`",
            ),
            (
                "[policy]\ndomain = \"example.com\"\nlevel = \"secure\"\n".into(),
                1,
                "write [[policy]] with two brackets",
            ),
            (
                "[[policies]]\ndomain = \"example.com\"\n".into(),
                1,
                "unknown field `policies`, expected `policy`",
            ),
            (
                format!("{head}level = \"secure\"\n\n[[policy]]\ndomain = \"EXAMPLE.com.\"\nlevel = \"encrypt\"\n"),
                6,
                "\"example.com\" already has a policy at t.toml:2; a domain may have only one policy",
            ),
            (format!("{head}level = secure\n"), 3, "string values must be quoted"),
        ];
        for (text, line, needle) in &cases {
            let err = PolicySet::parse_file(text, Path::new("t.toml")).unwrap_err();
            let shown = err.to_string();
            assert_eq!(err.line, Some(*line), "{text}\n=> {shown}");
            assert!(
                shown.contains(needle),
                "{text}\n=> {shown}\nwanted: {needle}"
            );
            assert!(shown.starts_with(&format!("t.toml:{line}: ")), "{shown}");
        }
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
            ]
        );
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

    fn colon_hex(hex: &str) -> String {
        hex.to_uppercase()
            .as_bytes()
            .chunks(2)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(":")
    }

    #[test]
    fn import_realistic_postfix_table() {
        let b = "0011223344556677889900aabbccddeeff0011223344556677889900aabbccdd";
        let md5 = colon_hex("00112233445566778899aabbccddeeff");
        let sha1 = colon_hex("00112233445566778899aabbccddeeff00112233");
        let table = format!(
            "# /etc/postfix/tls_policy
\r
example.com             secure
.example.com            secure match=nexthop:dot-nexthop
bank.example            secure match=bank.example:.mail.bank.example protocols=>=TLSv1.3 ciphers=high
partner.example         verify match=hostname:MX.partner.example
hostonly.example        secure match=hostname
dane.example            dane-only
opportunistic.example   dane
[relay.example.net]:587 encrypt
[10.0.0.1]              verify
legacy.example          may
internal.example        NONE
pinned.example          fingerprint
    match={}|{md5}
\tmatch={b}
oldpin.example          fingerprint match={sha1}
proto.example           encrypt protocols=!SSLv2:!SSLv3:!TLSv1:!TLSv1.1 connection_reuse=yes
old-proto.example       encrypt protocols=!SSLv2:!SSLv3 exclude=3DES
tafile.example          secure tafile=/etc/postfix/ta.pem
weird.example           maybe
EXAMPLE.COM.            encrypt
bücher.example          verify match=nexthop:dot-nexthop
only12.example          Encrypt protocols=TLSv1.2
none13.example          encrypt protocols=<=TLSv1.1
",
            colon_hex(A)
        );
        let (toml_text, skipped) = import_postfix(&table);
        let got: Vec<(usize, &str)> = skipped
            .iter()
            .map(|s| (s.line, s.reason.as_str()))
            .collect();
        let want: Vec<(usize, String)> = vec![
            (5, "carried without `ciphers=high`: tlsrelay's cipher suites are fixed (forward-secret AEAD suites of TLS 1.2 and 1.3 only) and not set per domain".into()),
            (10, "route-specific nexthop ([host], [host]:port or host:port) names a relay host, not a recipient domain; tlsrelay policies are per recipient domain".into()),
            (11, "route-specific nexthop ([host], [host]:port or host:port) names a relay host, not a recipient domain; tlsrelay policies are per recipient domain".into()),
            (12, "level may: tlsrelay never sends without TLS; the domain gets the relay's floor instead".into()),
            (13, "level none: tlsrelay never sends without TLS; the domain gets the relay's floor instead".into()),
            (14, format!("carried without digest `{md5}` is an MD5 digest; tlsrelay pins SHA-256 only; compute the SHA-256 fingerprint of the certificate or its public key")),
            (17, format!("no SHA-256 fingerprint to carry (`{sha1}` is a SHA-1 digest); tlsrelay pins SHA-256 only; compute the SHA-256 fingerprint of the certificate or its public key")),
            (18, "carried without `connection_reuse=yes`: connection reuse is relay-wide (delivery.connection_reuse_time)".into()),
            (19, "carried `protocols=!SSLv2:!SSLv3` as min_tls = \"1.2\": it allows versions below TLS 1.2, which tlsrelay never uses".into()),
            (19, "carried without `exclude=3DES`: tlsrelay's cipher suites are fixed (forward-secret AEAD suites of TLS 1.2 and 1.3 only) and not set per domain".into()),
            (20, "carried without `tafile=/etc/postfix/ta.pem`: trust-anchor files are not supported yet (they could become DANE-TA style anchors later); until then the certificate must chain to Mozilla's roots — if the file holds CA certificates, set ca_file to it by hand".into()),
            (21, "unknown level \"maybe\"".into()),
            (22, "duplicate key; Postfix uses the first entry, line 3".into()),
            (24, "carried `protocols=TLSv1.2` as min_tls = \"1.2\": it excludes TLS 1.3; tlsrelay does not cap the version, TLS 1.3 stays allowed".into()),
            (25, "protocols=<=TLSv1.1 allows neither TLS 1.2 nor TLS 1.3, the only versions tlsrelay uses".into()),
        ];
        let want: Vec<(usize, &str)> = want.iter().map(|(l, r)| (*l, r.as_str())).collect();
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g, w);
        }
        assert_eq!(got.len(), want.len(), "{got:#?}");
        assert_eq!(
            skipped[5].text,
            "pinned.example          fingerprint match=".to_string()
                + &colon_hex(A)
                + "|"
                + &md5
                + " match="
                + b
        );

        // The round trip: the generated TOML parses back to exactly these policies.
        let back = PolicySet::parse_file(&toml_text, Path::new("imported.toml"))
            .unwrap_or_else(|e| panic!("{e}\n{toml_text}"));
        let summary: Vec<(&str, Level, Vec<&str>, MinTls)> = back
            .iter()
            .map(|p| {
                (
                    p.domain.as_str(),
                    p.level,
                    p.match_names.iter().map(String::as_str).collect(),
                    p.min_tls,
                )
            })
            .collect();
        use Level::*;
        use MinTls::*;
        assert_eq!(
            summary,
            vec![
                ("example.com", Secure, vec![], Tls12),
                (".example.com", Secure, vec![], Tls12),
                (
                    "bank.example",
                    Secure,
                    vec!["bank.example", ".mail.bank.example"],
                    Tls13
                ),
                ("partner.example", Verify, vec!["mx.partner.example"], Tls12),
                ("hostonly.example", Verify, vec![], Tls12),
                ("dane.example", DaneOnly, vec![], Tls12),
                ("opportunistic.example", Dane, vec![], Tls12),
                ("pinned.example", Fingerprint, vec![], Tls12),
                ("proto.example", Encrypt, vec![], Tls12),
                ("old-proto.example", Encrypt, vec![], Tls12),
                ("tafile.example", Secure, vec![], Tls12),
                (
                    "xn--bcher-kva.example",
                    Verify,
                    vec!["xn--bcher-kva.example", ".xn--bcher-kva.example"],
                    Tls12
                ),
                ("only12.example", Encrypt, vec![], Tls12),
            ]
        );
        let pinned = &back[7];
        assert_eq!(
            pinned.fingerprints,
            vec![
                super::Fingerprint::Cert(digest(A)),
                super::Fingerprint::PublicKey(digest(A)),
                super::Fingerprint::Cert(digest(b)),
                super::Fingerprint::PublicKey(digest(b)),
            ]
        );
        // Every policy says where it came from, and the comments explain the translation.
        assert!(toml_text.contains("# line 7: hostonly.example        secure match=hostname\n# Postfix secure with match=hostname checks only the MX host name"), "{toml_text}");
        assert!(
            toml_text.contains("not to opportunistic TLS"),
            "{toml_text}"
        );
        assert!(
            toml_text.contains("match=hostname is not listed"),
            "{toml_text}"
        );
        assert!(
            toml_text.contains("# note: carried without `ciphers=high`"),
            "{toml_text}"
        );
    }

    #[test]
    fn import_edge_cases() {
        let cases: &[(&str, &[&str])] = &[
            ("", &[]),
            ("   leading.example secure\n", &["continuation line"]),
            ("example.com\n", &["no security level"]),
            ("user@example.com secure\n", &["not a domain key"]),
            ("example.com:25 secure\n", &["route-specific"]),
            ("bad_domain.example secure\n", &["only letters, digits, hyphens"]),
            ("example.com secure { match = a:b }\n", &["braced attribute values"]),
            ("example.com fingerprint\n", &["fingerprint level without match= digests"]),
            ("example.com fingerprint match=zz\n", &["`zz` is not hex"]),
            (".example.com secure match=nexthop:mx.example.net\n", &["depends on the recipient domain"]),
            ("example.com secure match=*.example.net\n", &["no wildcards"]),
            ("example.com encrypt match=x.example junk servername=x.example foo=bar\n", &[
                "carried without `junk`: not an attribute",
                "carried without `servername=x.example`: tlsrelay sends the MX host name as SNI",
                "carried without `foo=bar`: unknown attribute",
                "carried without `match=x.example`: tlsrelay uses no match names at level encrypt",
            ]),
            ("example.com encrypt protocols=>=TLSv1.2:!TLSv1.3:bogus\n", &[
                "unknown protocol names bogus; it excludes TLS 1.3",
            ]),
        ];
        for (table, reasons) in cases {
            let (text, skipped) = import_postfix(table);
            assert_eq!(skipped.len(), reasons.len(), "{table}: {skipped:#?}");
            for (s, want) in skipped.iter().zip(*reasons) {
                assert!(s.reason.contains(want), "{table}: {} / {want}", s.reason);
                assert_eq!(s.line, 1);
            }
            PolicySet::parse_file(&text, Path::new("t.toml")).unwrap();
        }
        // exact keys translate nexthop / dot-nexthop next to other names.
        let (text, skipped) = import_postfix(
            "example.com secure match=nexthop:dot-nexthop:mx.example.net:hostname\n",
        );
        assert!(skipped.is_empty());
        let p = PolicySet::parse_file(&text, Path::new("t.toml")).unwrap();
        assert_eq!(
            p[0].match_names,
            ["example.com", ".example.com", "mx.example.net"]
        );
    }

    #[test]
    fn postfix_protocols_to_min_tls() {
        let cases: &[(&str, Option<MinTls>, bool)] = &[
            (">=TLSv1.2", Some(MinTls::Tls12), false),
            (">=TLSv1.3", Some(MinTls::Tls13), false),
            ("!SSLv2:!SSLv3:!TLSv1:!TLSv1.1", Some(MinTls::Tls12), false),
            (
                "!SSLv2,!SSLv3,!TLSv1,!TLSv1.1,!TLSv1.2",
                Some(MinTls::Tls13),
                false,
            ),
            ("TLSv1.2:TLSv1.3", Some(MinTls::Tls12), false),
            ("tlsv1.3", Some(MinTls::Tls13), false),
            (">=TLSv1", Some(MinTls::Tls12), true),
            ("!SSLv2:!SSLv3", Some(MinTls::Tls12), true),
            ("", Some(MinTls::Tls12), true),
            ("<=TLSv1.1", None, true),
            ("TLSv1", None, true),
            (">=TLSv1.3:!TLSv1.3", None, true),
        ];
        for (value, want, note) in cases {
            match postfix_protocols(value) {
                Ok((min, n)) => {
                    assert_eq!(Some(min), *want, "{value}");
                    assert_eq!(n.is_some(), *note, "{value}: {n:?}");
                }
                Err(e) => assert_eq!(None, *want, "{value}: {e}"),
            }
        }
    }
}
