//! `[[delivery.shaping]]`: connection limits and message rates for one domain
//! or for every site whose MX hosts match a pattern.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::model::domain::{Domain, MxPattern};

/// A message rate: `10/s`, `600/m`, `3600/h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Messages per period.
    pub count: u32,
    /// The period.
    pub per: Duration,
}

impl Rate {
    /// The time one message takes of the period.
    pub fn interval(self) -> Duration {
        self.per / self.count.max(1)
    }
}

/// A rate that could not be read, with the form that would be valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a rate; write messages per second, minute or hour, e.g. \"10/s\", \"600/m\", \"3600/h\"")]
pub struct RateError(pub String);

impl FromStr for Rate {
    type Err = RateError;

    fn from_str(s: &str) -> Result<Rate, RateError> {
        let bad = || RateError(s.to_string());
        let (count, unit) = s.trim().split_once('/').ok_or_else(bad)?;
        let count: u32 = count
            .trim()
            .parse()
            .ok()
            .filter(|&c| c > 0)
            .ok_or_else(bad)?;
        let per = match unit.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        Ok(Rate { count, per })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.per.as_secs() {
            1 => "s",
            60 => "m",
            _ => "h",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for Rate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One `[[delivery.shaping]]` entry: limits for a domain, or for the sites
/// whose MX hosts match `mx`. Keys left out keep `[delivery]`'s values.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ShapingRule {
    /// A recipient domain (`example.com`; `.example.com` = its subdomains).
    pub domain: Option<String>,
    /// An MX host pattern (`*.mail.protection.outlook.com`): every site with such a host.
    pub mx: Option<String>,
    /// Simultaneous connections.
    pub max_connections: Option<usize>,
    /// Messages per connection before it is closed.
    pub max_messages_per_connection: Option<usize>,
    /// Messages per second, minute or hour.
    pub rate: Option<Rate>,
}

impl ShapingRule {
    /// Whether the rule names `domain` (exactly, or by a `.parent` key).
    pub fn names_domain(&self, domain: &Domain) -> bool {
        let Some(key) = self.domain.as_deref().map(str::trim) else {
            return false;
        };
        match key.strip_prefix('.') {
            Some(parent) => domain
                .as_str()
                .strip_suffix(parent)
                .is_some_and(|head| head.ends_with('.')),
            None => Domain::parse(key).is_ok_and(|k| &k == domain),
        }
    }

    /// The `mx` pattern, parsed.
    pub fn mx_pattern(&self) -> Option<MxPattern> {
        self.mx.as_deref().and_then(|p| MxPattern::parse(p).ok())
    }

    /// What is wrong with the rule, if anything: the key and the fix.
    pub fn problem(&self) -> Option<(&'static str, String)> {
        match (&self.domain, &self.mx) {
            (None, None) | (Some(_), Some(_)) => {
                return Some((
                    "shaping",
                    "each [[delivery.shaping]] entry names either domain = \"example.com\" or mx = \"*.mx.example.net\"".into(),
                ))
            }
            (Some(d), None) if Domain::parse(d.trim().trim_start_matches('.')).is_err() => {
                return Some(("domain", format!("shaping domain \"{d}\" is not a domain name")))
            }
            (None, Some(m)) if MxPattern::parse(m).is_err() => {
                return Some((
                    "mx",
                    format!("shaping mx \"{m}\" is not an MX host pattern; write \"mx.example.net\" or \"*.example.net\""),
                ))
            }
            _ => {}
        }
        (self.max_connections == Some(0)).then(|| {
            (
                "max_connections",
                "a shaping max_connections of 0 would never deliver; write at least 1".into(),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        for (text, count, secs) in [("10/s", 10, 1), ("600/m", 600, 60), (" 5 / h ", 5, 3600)] {
            let r: Rate = text.parse().unwrap();
            assert_eq!((r.count, r.per.as_secs()), (count, secs), "{text}");
        }
        assert_eq!(
            "600/m".parse::<Rate>().unwrap().interval(),
            Duration::from_millis(100)
        );
        assert_eq!("600/m".parse::<Rate>().unwrap().to_string(), "600/m");
        for bad in ["10", "0/s", "-1/s", "10/d", "x/s", ""] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
    }

    #[test]
    fn domain_keys() {
        let rule = |d: &str| ShapingRule {
            domain: Some(d.into()),
            ..ShapingRule::default()
        };
        let d = |s: &str| Domain::parse(s).unwrap();
        assert!(rule("Example.COM").names_domain(&d("example.com")));
        assert!(!rule("example.com").names_domain(&d("a.example.com")));
        assert!(rule(".example.com").names_domain(&d("a.example.com")));
        assert!(!rule(".example.com").names_domain(&d("example.com")));
        assert!(!rule(".example.com").names_domain(&d("notexample.com")));
        assert!(rule("x").problem().is_none());
        assert!(ShapingRule::default().problem().is_some());
    }
}
