//! Domain names and MX host patterns, normalised once.
//!
//! DNS, TLS names, MTA-STS, local policies, outcome records and TLS reports all
//! compare names in one form: lower-case A-labels without a trailing dot. A
//! [`Domain`] is built once per recipient (or policy key, or MX host) and carries
//! that form, so an internationalised name such as `bücher.example` is never
//! looked up, stored or reported under its Unicode spelling.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use hickory_resolver::proto::rr::Name;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A name that is not a usable host or domain name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainError {
    /// The name as given.
    pub input: String,
    /// Why it was refused, in plain words.
    pub why: String,
}

impl fmt::Display for DomainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} is not a domain name: {}", self.input, self.why)
    }
}

impl std::error::Error for DomainError {}

/// A host or domain name: lower-case A-labels, no trailing dot, at least one label.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Domain(String);

impl Domain {
    /// Parses a name (U-labels allowed, any case, trailing dot ignored).
    pub fn parse(s: &str) -> Result<Domain, DomainError> {
        normalise_host(s.trim())
            .map(Domain)
            .map_err(|why| DomainError {
                input: s.to_string(),
                why,
            })
    }

    /// The domain of a mailbox (`local@domain`).
    pub fn of_address(address: &str) -> Result<Domain, DomainError> {
        let domain = address.rsplit_once('@').map_or(address, |(_, d)| d);
        Domain::parse(domain)
    }

    /// The normalised name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The parent domain (`b.c` for `a.b.c`), if there is one.
    pub fn parent(&self) -> Option<&str> {
        self.0.split_once('.').map(|(_, rest)| rest)
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Domain {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for Domain {
    type Err = DomainError;
    fn from_str(s: &str) -> Result<Domain, DomainError> {
        Domain::parse(s)
    }
}

impl Serialize for Domain {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Domain {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Domain, D::Error> {
        let s = String::deserialize(d)?;
        Domain::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Normalises a host name to lower-case A-labels without a trailing dot, or
/// says why it is not a host name.
fn normalise_host(s: &str) -> Result<String, String> {
    let name = s.strip_suffix('.').unwrap_or(s);
    if name.is_empty() {
        return Err("empty name".into());
    }
    if name.starts_with('[') || name.ends_with(']') {
        return Err("address literals are not allowed; a host name is required".into());
    }
    if name.parse::<Ipv4Addr>().is_ok() || name.parse::<Ipv6Addr>().is_ok() {
        return Err("IP addresses are not allowed; a host name is required".into());
    }
    if let Some(c) = name.chars().find(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!("character {c:?} is not allowed"));
    }
    let labels = name
        .split('.')
        .map(normalise_label)
        .collect::<Result<Vec<_>, _>>()?;
    let last = labels.last().expect("split yields at least one label");
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "all-numeric top-level label {last:?} (an IP address?); a host name is required"
        ));
    }
    let out = labels.join(".");
    if out.len() > 253 {
        return Err("name is longer than 253 octets".into());
    }
    Ok(out)
}

/// One label as a lower-case A-label.
fn normalise_label(label: &str) -> Result<String, String> {
    if label.is_empty() {
        return Err("empty label".into());
    }
    // ASCII characters must be letters, digits or hyphens, in U-labels too
    // (this also keeps "\" escapes away from the IDNA conversion).
    if let Some(c) = label
        .chars()
        .find(|c| c.is_ascii() && !c.is_ascii_alphanumeric() && *c != '-')
    {
        return Err(if c == '*' {
            "\"*\" is only allowed as the whole leftmost label (\"*.\" prefix)".to_string()
        } else {
            format!("character {c:?} is not allowed in label {label:?}")
        });
    }
    let ascii = if label.is_ascii() {
        label.to_ascii_lowercase()
    } else {
        let a = Name::from_utf8(label)
            .map_err(|_| format!("label {label:?} is not a valid IDN (IDNA conversion failed)"))?
            .to_ascii();
        let a = a.strip_suffix('.').unwrap_or(&a).to_ascii_lowercase();
        if a.is_empty() || !a.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(format!("label {label:?} is not a single IDN label"));
        }
        a
    };
    if ascii.len() > 63 {
        return Err(format!("label {label:?} is longer than 63 octets"));
    }
    if ascii.starts_with('-') || ascii.ends_with('-') {
        return Err(format!("label {label:?} begins or ends with \"-\""));
    }
    Ok(ascii)
}

/// One MX host pattern (MTA-STS `mx:` lines, local policy `mx` lists): a host
/// name, or `*.` plus a domain, which matches exactly one leftmost label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxPattern {
    /// The normalised pattern: lower case, A-labels, no trailing dot.
    text: String,
    /// Whether the pattern starts with `*.`.
    wildcard: bool,
}

impl MxPattern {
    /// Parses a pattern (a host name or `*.domain`; U-labels allowed, trailing dot ignored).
    pub fn parse(s: &str) -> Result<Self, DomainError> {
        let (wildcard, base) = match s.strip_prefix("*.") {
            Some(base) => (true, base),
            None => (false, s),
        };
        let base = Domain::parse(base).map_err(|e| DomainError {
            input: s.to_string(),
            why: e.why,
        })?;
        let text = if wildcard {
            format!("*.{base}")
        } else {
            base.0
        };
        if text.len() > 253 {
            return Err(DomainError {
                input: s.to_string(),
                why: "pattern is longer than 253 octets".into(),
            });
        }
        Ok(MxPattern { text, wildcard })
    }

    /// Whether `host` matches (case-insensitive, trailing dots ignored, IDNs compared as A-labels).
    pub fn matches(&self, host: &str) -> bool {
        match Domain::parse(host) {
            Ok(host) => self.matches_domain(&host),
            Err(_) => false,
        }
    }

    /// Whether an already normalised host matches.
    pub fn matches_domain(&self, host: &Domain) -> bool {
        if self.wildcard {
            host.parent() == Some(&self.text[2..])
        } else {
            host.as_str() == self.text
        }
    }

    /// The normalised pattern: lower case, A-labels, no trailing dot.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for MxPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_normalise_to_one_form() {
        let cases = [
            ("Example.COM.", Ok("example.com")),
            ("bücher.example", Ok("xn--bcher-kva.example")),
            ("BÜCHER.example", Ok("xn--bcher-kva.example")),
            ("user@Bücher.Example", Ok("xn--bcher-kva.example")),
            ("", Err(())),
            ("a..b", Err(())),
            ("[192.0.2.1]", Err(())),
            ("192.0.2.1", Err(())),
            ("-a.example", Err(())),
            ("a b.example", Err(())),
            ("*.example", Err(())),
        ];
        for (input, want) in cases {
            let got = Domain::of_address(input)
                .map(|d| d.to_string())
                .map_err(|_| ());
            assert_eq!(got, want.map(str::to_string), "{input}");
        }
    }

    #[test]
    fn mx_patterns_match_one_label() {
        let cases = [
            ("mx.example.com", "MX.example.com.", true),
            ("*.example.com", "mx.example.com", true),
            ("*.example.com", "a.mx.example.com", false),
            ("*.example.com", "example.com", false),
            ("*.bücher.example", "mx.xn--bcher-kva.example", true),
            ("mx.example.com", "mx.example.net", false),
        ];
        for (pattern, host, want) in cases {
            let p = MxPattern::parse(pattern).unwrap();
            assert_eq!(p.matches(host), want, "{pattern} vs {host}");
        }
    }

    #[test]
    fn domain_reads_back_from_json() {
        let d = Domain::parse("bücher.example").unwrap();
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, "\"xn--bcher-kva.example\"");
        assert_eq!(serde_json::from_str::<Domain>(&json).unwrap(), d);
    }
}
