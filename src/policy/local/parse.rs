//! Reading policy files: TOML tables to checked, normalised [`LocalPolicy`] values.
//!
//! Every name goes through [`Domain`] (the project's one normaliser); this
//! module only chooses the words a policy file's author sees when it refuses one.

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde::Deserialize;
use toml::Spanned;

use super::{
    Exception, Fingerprint, FingerprintError, Level, LevelError, LocalPolicy, MinTls, Overrides,
    PolicyError,
};
use crate::model::domain::{Domain, DomainError, MxPattern};
use crate::model::egress::{AddressFamily, EgressOverride, HopError, NextHop};
use crate::policy::requirement::CaCerts;

/// What is wrong with one value (or line) of a policy file; shown after `file:line: `.
#[derive(Debug, thiserror::Error)]
pub enum FieldError {
    /// `[policy]` instead of `[[policy]]`.
    #[error("write [[policy]] with two brackets: each policy is one entry of an array of tables")]
    SingleBrackets,
    /// A `domain` written as `*.x`.
    #[error("domain \"{key}\": write \".{rest}\" (leading dot) for every subdomain")]
    WildcardKey {
        /// The key as written.
        key: String,
        /// What follows `*.`.
        rest: String,
    },
    /// A name that is not a domain or host name.
    #[error("{field}: {error}")]
    Name {
        /// The key the name was written under: `domain`, `match` or `mx`.
        field: &'static str,
        /// Why it is not a name.
        error: NameError,
    },
    /// An unknown or refused `level`.
    #[error(transparent)]
    Level(#[from] LevelError),
    /// `match` at a level without name checks.
    #[error("match applies to levels verify and secure only; level {0} {why}", why = match_refusal(*.0))]
    MatchNotForLevel(Level),
    /// `match = []`.
    #[error("match is empty; list names or remove the key for the level's default")]
    MatchEmpty,
    /// A `match` name with `*`.
    #[error(
        "match \"{0}\": no wildcards; write \".example.com\" for any subdomain of example.com"
    )]
    MatchWildcard(String),
    /// `fingerprints` at a level other than fingerprint.
    #[error("fingerprints apply to level fingerprint only, not {0}")]
    FingerprintsNotForLevel(Level),
    /// A pin that cannot be used.
    #[error(transparent)]
    Fingerprint(#[from] FingerprintError),
    /// Level fingerprint without pins.
    #[error("level fingerprint needs at least one pin, e.g. fingerprints = [\"spki-sha256:HEX\"]")]
    NoPin,
    /// `ca_file` at a level without name checks.
    #[error("ca_file applies to levels verify and secure only, not {0}")]
    CaFileNotForLevel(Level),
    /// `ca_file = ""`.
    #[error("ca_file is empty; give a PEM file")]
    CaFileEmpty,
    /// A CA file that cannot serve as trust anchors.
    #[error(transparent)]
    CaFile(#[from] CaFileError),
    /// A `min_tls` other than 1.2 or 1.3.
    #[error(
        "min_tls = {0} is not supported; write \"1.2\" (the default) or \"1.3\" (tlsrelay never uses older versions)"
    )]
    MinTls(toml::Value),
    /// `mx = []`.
    #[error(
        "mx is empty, which would allow no host; list MX host patterns or remove the key to allow every MX host"
    )]
    MxEmpty,
    /// An `mx` pattern with `*` elsewhere than as its whole first label.
    #[error(
        "mx \"{0}\": a wildcard is allowed only as the whole leftmost label, e.g. \"*.mail.example.com\""
    )]
    MxWildcard(String),
    /// An `mx` pattern written `.x` (the local-policy spelling) instead of `*.x`.
    #[error("mx \"{pattern}\": write \"*{rest}\" for hosts one label below {parent}")]
    MxLeadingDot {
        /// The pattern as written.
        pattern: String,
        /// The pattern without surrounding whitespace (`.x`).
        rest: String,
        /// The domain after the dot.
        parent: String,
    },
    /// `level` missing in a `[[policy]]` table.
    #[error("level is missing; write level = \"verify\" (or dane-only, dane, secure, fingerprint, encrypt)")]
    NoLevel,
    /// `via` in a `[[policy]]` table.
    #[error("via belongs in a [[route]] table: write [[route]] instead of [[policy]] to send this domain's mail to a next hop")]
    ViaInPolicy,
    /// A `[[route]]` without `via`.
    #[error("a route needs via, e.g. via = \"[gateway.partner.example]:25\" (that host) or \"relay.example.net\" (its MX hosts)")]
    NoVia,
    /// A `via` that is not a next hop.
    #[error(transparent)]
    Hop(#[from] HopError),
    /// A source address that is not an address of its family.
    #[error("{field} = \"{value}\" is not an {family} address")]
    Source {
        /// `source_ipv4` or `source_ipv6`.
        field: &'static str,
        /// The value as written.
        value: String,
        /// `IPv4` or `IPv6`.
        family: &'static str,
    },
    /// An unknown `address_family`.
    #[error(
        "address_family = \"{0}\" is unknown; write any, ipv4, ipv6, prefer-ipv6 or prefer-ipv4"
    )]
    Family(String),
    /// An `expires` that is not a date.
    #[error("expires = {0} is not a date; write a day as expires = 2027-06-30 (the entry applies through that day, UTC)")]
    Expires(String),
    /// A second policy for a domain.
    #[error(
        "\"{domain}\" already has a policy at {first}; a domain may have only one policy, remove one of them"
    )]
    Duplicate {
        /// The normalised key.
        domain: String,
        /// Where the first policy is, as `file:line`.
        first: String,
    },
}

/// Why `match` means nothing at `level`.
fn match_refusal(level: Level) -> &'static str {
    match level {
        Level::Fingerprint => "checks the fingerprints, not names",
        Level::Encrypt => "checks no names",
        _ => "checks names as DANE (RFC 7672) prescribes",
    }
}

/// A name that [`Domain::parse`] refused, in the words policy files have always used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Nothing (or only a dot) was written.
    #[error("the name is empty")]
    Empty,
    /// Two dots in a row, or a leading dot where none is allowed.
    #[error("\"{0}\" has an empty label (two dots in a row?)")]
    EmptyLabel(String),
    /// A character other than letters, digits, hyphens and dots.
    #[error("\"{0}\" is not a domain name: only letters, digits, hyphens and dots are allowed")]
    Character(String),
    /// A label starting or ending with `-`.
    #[error("\"{0}\" is not a domain name: a label cannot start or end with a hyphen")]
    Hyphen(String),
    /// Longer than DNS allows.
    #[error("\"{0}\" is longer than 253 characters")]
    TooLong(String),
    /// A label longer than DNS allows.
    #[error("\"{0}\" has a label longer than 63 characters")]
    LabelTooLong(String),
    /// An all-numeric last label.
    #[error("\"{0}\" looks like an IP address; policies name domains")]
    IpAddress(String),
    /// Anything else (too long, not a valid IDN), in [`Domain`]'s words.
    #[error("\"{name}\" is not a domain name: {why}")]
    Refused {
        /// The name as written (trimmed, without a trailing dot).
        name: String,
        /// Why [`Domain`] refused it.
        why: String,
    },
}

impl NameError {
    /// Words for a name that `Domain` refused; `Domain` decides, this only explains.
    fn explain(input: &str, refused: DomainError) -> NameError {
        let t = input.trim();
        let name = t.strip_suffix('.').unwrap_or(t).to_string();
        let mut labels = name.split('.');
        let odd = |c: char| {
            (c.is_ascii() && !c.is_ascii_alphanumeric() && c != '-' && c != '.')
                || c.is_whitespace()
                || c.is_control()
        };
        // Lengths are known before IDNA conversion only for ASCII names.
        let ascii = name.is_ascii();
        if name.is_empty() {
            NameError::Empty
        } else if ascii && name.len() > 253 {
            NameError::TooLong(name)
        } else if labels.clone().any(str::is_empty) {
            NameError::EmptyLabel(name)
        } else if name.chars().any(odd) {
            NameError::Character(name)
        } else if labels
            .clone()
            .any(|l| l.starts_with('-') || l.ends_with('-'))
        {
            NameError::Hyphen(name)
        } else if ascii && labels.clone().any(|l| l.len() > 63) {
            NameError::LabelTooLong(name)
        } else if labels
            .next_back()
            .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
        {
            NameError::IpAddress(name)
        } else {
            NameError::Refused {
                name,
                why: refused.why,
            }
        }
    }
}

/// A `ca_file` that cannot serve as trust anchors.
#[derive(Debug, thiserror::Error)]
pub enum CaFileError {
    /// The file cannot be read.
    #[error("ca_file {} cannot be read ({error}); give a PEM file with the CA certificates to trust for this domain", .path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why it cannot be read.
        error: std::io::Error,
    },
    /// The PEM text is broken.
    #[error("ca_file {}: bad PEM ({error})", .path.display())]
    BadPem {
        /// The file.
        path: PathBuf,
        /// What the PEM reader said.
        error: rustls_pki_types::pem::Error,
    },
    /// No certificate in the file.
    #[error("ca_file {} holds no certificate; it needs at least one -----BEGIN CERTIFICATE----- block", .path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// A certificate that webpki cannot take as a trust anchor.
    #[error("ca_file {}: certificate {number} cannot be a trust anchor ({})", .path.display(), crate::tls::webpki_words(.error))]
    NotAnchor {
        /// The file.
        path: PathBuf,
        /// The certificate's place in the file, from 1.
        number: usize,
        /// What webpki said.
        error: webpki::Error,
    },
}

/// The `*.toml` files directly in `dir`, sorted by name (hidden files and directories left out).
pub(super) fn policy_files(dir: &Path) -> Result<Vec<PathBuf>, PolicyError> {
    let unreadable = |e: std::io::Error| {
        PolicyError::whole(dir, format!("cannot read the policy directory: {e}"))
    };
    let mut files = vec![];
    for entry in std::fs::read_dir(dir).map_err(unreadable)? {
        let entry = entry.map_err(unreadable)?;
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
    Ok(files)
}

/// Reads and checks one policy file, its `ca_file`s included.
pub(super) fn read_file(path: &Path) -> Result<Vec<(LocalPolicy, usize)>, PolicyError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| PolicyError::whole(path, format!("cannot read the policy file: {e}")))?;
    parse(&text, path, true)
}

/// Parses and checks a file; returns each policy with the line of its `domain`.
pub(super) fn parse(
    text: &str,
    path: &Path,
    read_ca_files: bool,
) -> Result<Vec<(LocalPolicy, usize)>, PolicyError> {
    let reader = Reader {
        path,
        lines: Lines::new(text),
        read_ca_files,
    };
    if let Some(i) = text
        .lines()
        .position(|l| l.trim() == "[policy]" || l.trim() == "[route]")
    {
        return Err(PolicyError::at(path, i + 1, FieldError::SingleBrackets));
    }
    let raw: RawFile = toml::from_str(text).map_err(|e| PolicyError {
        file: path.to_owned(),
        line: e.span().map(|s| reader.lines.of(s.start)),
        message: e.message().trim().to_string(),
    })?;
    let policies = raw.policy.into_iter().map(|p| reader.policy(p, false));
    let routes = raw.route.into_iter().map(|p| reader.policy(p, true));
    policies.chain(routes).collect()
}

/// A policy file as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    policy: Vec<RawPolicy>,
    #[serde(default)]
    route: Vec<RawPolicy>,
}

/// A list of strings as written, with positions.
type RawList = Spanned<Vec<Spanned<String>>>;

/// One `[[policy]]` table as written, with positions for error messages.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    domain: Spanned<String>,
    level: Option<Spanned<String>>,
    #[serde(rename = "match")]
    match_names: Option<RawList>,
    fingerprints: Option<RawList>,
    ca_file: Option<Spanned<String>>,
    min_tls: Option<Spanned<toml::Value>>,
    mx: Option<RawList>,
    via: Option<Spanned<String>>,
    source_ipv4: Option<Spanned<String>>,
    source_ipv6: Option<Spanned<String>>,
    address_family: Option<Spanned<String>>,
    expires: Option<Spanned<toml::Value>>,
    owner: Option<String>,
    reason: Option<String>,
    ticket: Option<String>,
    #[serde(default)]
    override_dane: bool,
    #[serde(default)]
    override_mta_sts: bool,
}

/// Where each line of a text starts, so that finding a line costs a binary
/// search rather than a scan from the top (which made big files quadratic).
struct Lines(Vec<usize>);

impl Lines {
    /// The line starts of `text`.
    fn new(text: &str) -> Lines {
        let starts = text.match_indices('\n').map(|(i, _)| i + 1);
        Lines(std::iter::once(0).chain(starts).collect())
    }

    /// The 1-based line holding byte `offset`.
    fn of(&self, offset: usize) -> usize {
        self.0.partition_point(|&start| start <= offset)
    }

    /// The line where `value` starts.
    fn at<T>(&self, value: &Spanned<T>) -> usize {
        self.of(value.span().start)
    }
}

/// One file being read.
struct Reader<'a> {
    path: &'a Path,
    lines: Lines,
    /// `load_dir` reads `ca_file`s; `parse_file` does not.
    read_ca_files: bool,
}

impl Reader<'_> {
    /// `check` applied to `value`; an error is placed on the value's line.
    fn check<T, U>(
        &self,
        value: &Spanned<T>,
        check: impl FnOnce(&T) -> Result<U, FieldError>,
    ) -> Result<U, PolicyError> {
        check(value.get_ref()).map_err(|e| PolicyError::at(self.path, self.lines.at(value), e))
    }

    /// Every string of a list, checked one by one.
    fn each<U>(
        &self,
        list: &RawList,
        check: impl Fn(&str) -> Result<U, FieldError>,
    ) -> Result<Vec<U>, PolicyError> {
        list.get_ref()
            .iter()
            .map(|item| self.check(item, |s| check(s)))
            .collect()
    }

    /// One `[[policy]]` or `[[route]]` table, checked key by key in the order they are documented.
    fn policy(&self, raw: RawPolicy, is_route: bool) -> Result<(LocalPolicy, usize), PolicyError> {
        let line = self.lines.at(&raw.domain);
        let domain = self.check(&raw.domain, |d| policy_key(d))?;
        let level = self.level(&raw, is_route, line)?;
        let match_names = self.match_names(level, raw.match_names.as_ref())?;
        let fingerprints = self.fingerprints(level, &raw, line)?;
        let (ca_file, ca) = match &raw.ca_file {
            Some(c) => self.check(c, |name| self.ca_file(level, name))?,
            None => None,
        }
        .unzip();
        let min_tls = match &raw.min_tls {
            Some(v) => self.check(v, min_tls)?,
            None => MinTls::Tls12,
        };
        let mx = self.mx(raw.mx.as_ref())?;
        let route = self.via(&raw, is_route, line)?;
        let egress = self.egress(&raw)?;
        let exception = self.exception(&raw)?;
        let source = format!("{}:{line}", self.path.display());
        let policy = LocalPolicy {
            domain,
            level,
            match_names,
            fingerprints,
            ca_file,
            ca,
            min_tls,
            mx,
            route,
            egress,
            exception,
            overrides: Overrides {
                dane: raw.override_dane,
                mta_sts: raw.override_mta_sts,
            },
            source,
        };
        Ok((policy, line))
    }

    /// `level`: required in a policy; a route without one is `verify`.
    fn level(&self, raw: &RawPolicy, is_route: bool, line: usize) -> Result<Level, PolicyError> {
        match &raw.level {
            Some(l) => self.check(l, |l| Ok(Level::parse(l)?)),
            None if is_route => Ok(Level::Verify),
            None => Err(PolicyError::at(self.path, line, FieldError::NoLevel)),
        }
    }

    /// `via`: a route's next hop; required in a route, refused in a policy.
    fn via(
        &self,
        raw: &RawPolicy,
        is_route: bool,
        line: usize,
    ) -> Result<Option<NextHop>, PolicyError> {
        match (&raw.via, is_route) {
            (Some(v), false) => self.check(v, |_| Err(FieldError::ViaInPolicy)),
            (None, true) => Err(PolicyError::at(self.path, line, FieldError::NoVia)),
            (Some(v), true) => Ok(Some(self.check(v, |v| Ok(NextHop::parse(v)?))?)),
            (None, false) => Ok(None),
        }
    }

    /// `source_ipv4`, `source_ipv6`, `address_family` of this entry.
    fn egress(&self, raw: &RawPolicy) -> Result<EgressOverride, PolicyError> {
        Ok(EgressOverride {
            source_ipv4: opt(self, &raw.source_ipv4, |v| source(v, "source_ipv4", "IPv4"))?,
            source_ipv6: opt(self, &raw.source_ipv6, |v| source(v, "source_ipv6", "IPv6"))?,
            family: opt(self, &raw.address_family, |v| {
                AddressFamily::from_name(v.trim()).ok_or_else(|| FieldError::Family(v.clone()))
            })?,
        })
    }

    /// `expires`, `owner`, `reason`, `ticket`: why an exception exists and until when.
    fn exception(&self, raw: &RawPolicy) -> Result<Exception, PolicyError> {
        Ok(Exception {
            expires: opt(self, &raw.expires, expires)?,
            owner: raw.owner.clone(),
            reason: raw.reason.clone(),
            ticket: raw.ticket.clone(),
        })
    }

    /// `match`: verify and secure only, not empty, names without wildcards.
    fn match_names(
        &self,
        level: Level,
        list: Option<&RawList>,
    ) -> Result<Vec<String>, PolicyError> {
        let Some(list) = list else { return Ok(vec![]) };
        self.check(list, |names| {
            if !level.checks_names() {
                Err(FieldError::MatchNotForLevel(level))
            } else if names.is_empty() {
                Err(FieldError::MatchEmpty)
            } else {
                Ok(())
            }
        })?;
        self.each(list, match_name)
    }

    /// `fingerprints`: level fingerprint only, and required there.
    fn fingerprints(
        &self,
        level: Level,
        raw: &RawPolicy,
        line: usize,
    ) -> Result<Vec<Fingerprint>, PolicyError> {
        let pins = match &raw.fingerprints {
            Some(list) if level != Level::Fingerprint => {
                return self.check(list, |_| Err(FieldError::FingerprintsNotForLevel(level)))
            }
            Some(list) => self.each(list, |s| Ok(Fingerprint::parse(s)?))?,
            None => vec![],
        };
        if level == Level::Fingerprint && pins.is_empty() {
            let line = match &raw.fingerprints {
                Some(list) => self.lines.at(list),
                None => raw.level.as_ref().map_or(line, |l| self.lines.at(l)),
            };
            return Err(PolicyError::at(self.path, line, FieldError::NoPin));
        }
        Ok(pins)
    }

    /// `ca_file`: verify and secure only; relative to the policy file; read when loading.
    fn ca_file(&self, level: Level, name: &str) -> Result<Option<(PathBuf, CaCerts)>, FieldError> {
        if !level.checks_names() {
            return Err(FieldError::CaFileNotForLevel(level));
        }
        if name.trim().is_empty() {
            return Err(FieldError::CaFileEmpty);
        }
        let file = PathBuf::from(name);
        let file = match self.path.parent() {
            Some(dir) if file.is_relative() => dir.join(file),
            _ => file,
        };
        // Not read (parse_file): an empty trust set, so such a policy fails closed.
        let certs = if self.read_ca_files {
            read_ca_file(&file)?
        } else {
            Vec::new()
        };
        Ok(Some((file, CaCerts::from(certs))))
    }

    /// `mx`: not empty, MTA-STS-style patterns.
    fn mx(&self, list: Option<&RawList>) -> Result<Vec<MxPattern>, PolicyError> {
        let Some(list) = list else { return Ok(vec![]) };
        self.check(list, |patterns| {
            if patterns.is_empty() {
                Err(FieldError::MxEmpty)
            } else {
                Ok(())
            }
        })?;
        self.each(list, mx_pattern)
    }
}

/// An optional key, checked on its own line when present.
fn opt<T, U>(
    reader: &Reader<'_>,
    value: &Option<Spanned<T>>,
    check: impl FnOnce(&T) -> Result<U, FieldError>,
) -> Result<Option<U>, PolicyError> {
    value.as_ref().map(|v| reader.check(v, check)).transpose()
}

/// A source address of one family.
fn source<A: std::str::FromStr>(
    value: &str,
    field: &'static str,
    family: &'static str,
) -> Result<A, FieldError> {
    value.trim().parse().map_err(|_| FieldError::Source {
        field,
        value: value.to_string(),
        family,
    })
}

/// `expires`: a TOML date (`2027-06-30`) or the same in a string.
fn expires(value: &toml::Value) -> Result<chrono::NaiveDate, FieldError> {
    let text = match value {
        toml::Value::Datetime(d) if d.time.is_none() && d.offset.is_none() => d.to_string(),
        toml::Value::String(s) => s.trim().to_string(),
        other => return Err(FieldError::Expires(other.to_string())),
    };
    chrono::NaiveDate::parse_from_str(&text, "%Y-%m-%d")
        .map_err(|_| FieldError::Expires(value.to_string()))
}

/// `min_tls`: "1.2" or "1.3", quoted or not.
fn min_tls(value: &toml::Value) -> Result<MinTls, FieldError> {
    match value {
        toml::Value::String(s) if s == "1.2" => Ok(MinTls::Tls12),
        toml::Value::String(s) if s == "1.3" => Ok(MinTls::Tls13),
        toml::Value::Float(f) if *f == 1.2 => Ok(MinTls::Tls12),
        toml::Value::Float(f) if *f == 1.3 => Ok(MinTls::Tls13),
        other => Err(FieldError::MinTls(other.clone())),
    }
}

/// A name normalised by [`Domain`], a refusal explained under `field`.
fn domain(field: &'static str, name: &str) -> Result<Domain, FieldError> {
    Domain::parse(name).map_err(|e| FieldError::Name {
        field,
        error: NameError::explain(name, e),
    })
}

/// `name`, or `.name` for every subdomain of name, normalised.
fn dotted_name(field: &'static str, s: &str) -> Result<String, FieldError> {
    match s.strip_prefix('.') {
        Some(parent) => Ok(format!(".{}", domain(field, parent)?)),
        None => Ok(domain(field, s)?.to_string()),
    }
}

/// Normalises a policy key: a domain, or `.domain` for every subdomain.
pub(super) fn policy_key(s: &str) -> Result<String, FieldError> {
    let t = s.trim();
    if let Some(rest) = t.strip_prefix("*.") {
        return Err(FieldError::WildcardKey {
            key: s.to_string(),
            rest: rest.to_string(),
        });
    }
    dotted_name("domain", t)
}

/// Normalises a `match` name: a host name, or `.domain` for any subdomain.
pub(super) fn match_name(s: &str) -> Result<String, FieldError> {
    let t = s.trim();
    if t.contains('*') {
        return Err(FieldError::MatchWildcard(s.to_string()));
    }
    dotted_name("match", t)
}

/// Reads an `mx` pattern: a host name, or `*.domain` for one label below it (as in MTA-STS).
fn mx_pattern(s: &str) -> Result<MxPattern, FieldError> {
    let t = s.trim();
    let rest = t.strip_prefix("*.").unwrap_or(t);
    if rest.contains('*') {
        return Err(FieldError::MxWildcard(s.to_string()));
    }
    if let Some(parent) = rest.strip_prefix('.') {
        return Err(FieldError::MxLeadingDot {
            pattern: s.to_string(),
            rest: rest.to_string(),
            parent: parent.to_string(),
        });
    }
    MxPattern::parse(t).map_err(|e| FieldError::Name {
        field: "mx",
        error: NameError::explain(rest, e),
    })
}

/// Reads a CA file: at least one PEM certificate, each usable as a trust anchor.
fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, CaFileError> {
    let bytes = std::fs::read(path).map_err(|error| CaFileError::Unreadable {
        path: path.to_owned(),
        error,
    })?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|error| CaFileError::BadPem {
            path: path.to_owned(),
            error,
        })?;
    if certs.is_empty() {
        return Err(CaFileError::NoCertificate {
            path: path.to_owned(),
        });
    }
    for (i, c) in certs.iter().enumerate() {
        webpki::anchor_from_trusted_cert(c).map_err(|error| CaFileError::NotAnchor {
            path: path.to_owned(),
            number: i + 1,
            error,
        })?;
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{digest, A};
    use super::super::PolicySet;
    use super::*;

    fn parse_ok(text: &str) -> Vec<LocalPolicy> {
        PolicySet::parse_file(text, Path::new("/etc/tlsrelay/policies/p.toml"))
            .unwrap_or_else(|e| panic!("{e}\n{text}"))
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
                    MxPattern::parse("mx1.partner-bank.example").unwrap(),
                    MxPattern::parse("*.mail.partner-bank.example").unwrap()
                ],
                route: None,
                egress: EgressOverride::default(),
                exception: Exception::default(),
                overrides: Overrides::default(),
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
    fn routes_and_exceptions() {
        let got = parse_ok(
            r#"
[[route]]
domain = "partner.example"
via = "[gw.partner.example]:2525"
level = "fingerprint"
fingerprints = ["spki-sha256:3d5a0f7c9b1e24d86a4c0e2f91b7d3a5c8e6f0a2b4d6c8e0f1a3b5c7d9e1f3a5"]
source_ipv4 = "127.0.0.7"
address_family = "ipv4"

[[route]]
domain = ".filtered.example"
via = "filter.example.net"

[[policy]]
domain = "broken.example"
level = "encrypt"
expires = 2027-06-30
owner = "postmaster"
reason = "expired certificate"
ticket = "OPS-12"
override_dane = true
"#,
        );
        let hop = |s: &str| Some(NextHop::parse(s).unwrap());
        assert_eq!(got.len(), 3);
        let broken = &got[0];
        assert_eq!((broken.route.clone(), broken.level), (None, Level::Encrypt));
        assert_eq!(broken.exception.expires.unwrap().to_string(), "2027-06-30");
        assert_eq!(
            broken.exception.describe(),
            "owner: postmaster, reason: expired certificate, ticket: OPS-12"
        );
        assert_eq!(
            broken.overrides,
            Overrides {
                dane: true,
                mta_sts: false
            }
        );
        assert_eq!(got[1].route, hop("[gw.partner.example]:2525"));
        assert_eq!(
            got[1].egress.source_ipv4,
            Some("127.0.0.7".parse().unwrap())
        );
        assert_eq!(got[1].egress.family, Some(AddressFamily::Ipv4));
        assert_eq!(
            (got[2].route.clone(), got[2].level),
            (hop("filter.example.net"), Level::Verify)
        );
    }

    #[test]
    fn errors_name_line_and_fix() {
        let head = "[[policy]]\ndomain = \"example.com\"\n";
        let fp = format!("fingerprints = [\"spki-sha256:{A}\"]\n");
        let cases: Vec<(String, usize, &str)> = vec![
            (
                format!("{head}level = \"secure\"\nmatchs = [\"a.example\"]\n"),
                4,
                "unknown field `matchs`, expected one of `domain`, `level`, `match`, `fingerprints`, `ca_file`, `min_tls`, `mx`, `via`",
            ),
            (format!("{head}\n"), 2, "level is missing; write level = \"verify\""),
            (
                format!("{head}level = \"verify\"\nvia = \"[gw.example]\"\n"),
                4,
                "via belongs in a [[route]] table",
            ),
            (
                "[[route]]\ndomain = \"example.com\"\nlevel = \"verify\"\n".into(),
                2,
                "a route needs via",
            ),
            (
                "[[route]]\ndomain = \"example.com\"\n\nvia = \"[192.0.2.1]:25\"\n".into(),
                4,
                "give the hop's host name, not an address",
            ),
            (
                "[[route]]\ndomain = \"example.com\"\nvia = \"[gw.example]:0\"\n".into(),
                3,
                "the port must be a number from 1 to 65535",
            ),
            (
                "[[route]]\ndomain = \"example.com\"\nvia = \"gw.example\"\nsource_ipv4 = \"::1\"\n".into(),
                4,
                "source_ipv4 = \"::1\" is not an IPv4 address",
            ),
            (
                format!("{head}level = \"encrypt\"\naddress_family = \"inet6\"\n"),
                4,
                "address_family = \"inet6\" is unknown",
            ),
            (
                format!("{head}level = \"encrypt\"\nexpires = \"next year\"\n"),
                4,
                "is not a date; write a day as expires = 2027-06-30",
            ),
            (
                format!("{head}level = \"encrypt\"\nexpires = 2027-06-30T10:00:00Z\n"),
                4,
                "is not a date",
            ),
            ("[route]\ndomain = \"example.com\"\n".into(), 1, "write [[policy]] with two brackets"),
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
    fn refused_names_are_told_in_policy_words() {
        let long_label = format!("{}.example", "a".repeat(64));
        let long_name = format!("{}.com", vec!["a".repeat(63); 4].join("."));
        let cases: &[(&str, &str)] = &[
            ("", "domain: the name is empty"),
            (" . ", "domain: the name is empty"),
            ("a..example", "domain: \"a..example\" has an empty label (two dots in a row?)"),
            (
                "exa mple.com",
                "domain: \"exa mple.com\" is not a domain name: only letters, digits, hyphens and dots are allowed",
            ),
            (
                "[192.0.2.1]",
                "domain: \"[192.0.2.1]\" is not a domain name: only letters, digits, hyphens and dots are allowed",
            ),
            (
                "-a.example",
                "domain: \"-a.example\" is not a domain name: a label cannot start or end with a hyphen",
            ),
            ("192.0.2.1.", "domain: \"192.0.2.1\" looks like an IP address; policies name domains"),
            (&long_label, "has a label longer than 63 characters"),
            (&long_name, "is longer than 253 characters"),
            ("\u{301}x.example", "is not a domain name: label \"\\u{301}x\" is not a valid IDN"),
            ("*.example.com", "domain \"*.example.com\": write \".example.com\" (leading dot) for every subdomain"),
        ];
        for (input, want) in cases {
            let got = policy_key(input).unwrap_err().to_string();
            assert!(got.contains(want), "{input:?}: {got}");
        }
        let ok = [
            ("Example.COM.", "example.com"),
            (".Bücher.example", ".xn--bcher-kva.example"),
            (" x.example ", "x.example"),
        ];
        for (input, want) in ok {
            assert_eq!(policy_key(input).unwrap(), want, "{input:?}");
        }
    }

    #[test]
    fn lines_of_offsets() {
        let lines = Lines::new("ab\n\ncd\n");
        let cases = [(0, 1), (2, 1), (3, 2), (4, 3), (6, 3), (7, 4), (99, 4)];
        for (offset, line) in cases {
            assert_eq!(lines.of(offset), line, "offset {offset}");
        }
        assert_eq!(Lines::new("").of(0), 1);
    }
}
