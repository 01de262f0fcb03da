//! Where delivery sends from and to: the next hop a route names, the source
//! addresses and the address families allowed.
//!
//! Pure values and decisions; `delivery::client` binds the sockets.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use crate::model::domain::Domain;

/// Which address families delivery connects over, and in which order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AddressFamily {
    /// Both, in the order DNS gave them.
    #[default]
    Any,
    /// IPv4 only (A records); AAAA records are not used.
    Ipv4,
    /// IPv6 only (AAAA records); A records are not used.
    Ipv6,
    /// Both, every IPv6 address first.
    PreferIpv6,
    /// Both, every IPv4 address first.
    PreferIpv4,
}

impl AddressFamily {
    /// Every family, as listed in error messages.
    pub const ALL: [AddressFamily; 5] = [
        AddressFamily::Any,
        AddressFamily::Ipv4,
        AddressFamily::Ipv6,
        AddressFamily::PreferIpv6,
        AddressFamily::PreferIpv4,
    ];

    /// The name as written in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            AddressFamily::Any => "any",
            AddressFamily::Ipv4 => "ipv4",
            AddressFamily::Ipv6 => "ipv6",
            AddressFamily::PreferIpv6 => "prefer-ipv6",
            AddressFamily::PreferIpv4 => "prefer-ipv4",
        }
    }

    /// The family with this name, if there is one.
    pub fn from_name(name: &str) -> Option<AddressFamily> {
        AddressFamily::ALL.into_iter().find(|f| f.as_str() == name)
    }

    /// The addresses to try, in order: those of other families dropped, the
    /// preferred family first (a stable sort, so DNS order holds within one family).
    pub fn order(self, addrs: &[IpAddr]) -> Vec<IpAddr> {
        let mut out: Vec<IpAddr> = addrs
            .iter()
            .copied()
            .filter(|a| match self {
                AddressFamily::Ipv4 => a.is_ipv4(),
                AddressFamily::Ipv6 => a.is_ipv6(),
                _ => true,
            })
            .collect();
        match self {
            AddressFamily::PreferIpv6 => out.sort_by_key(|a| a.is_ipv4()),
            AddressFamily::PreferIpv4 => out.sort_by_key(|a| a.is_ipv6()),
            _ => {}
        }
        out
    }
}

impl fmt::Display for AddressFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The source addresses and families of outgoing connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Egress {
    /// Bind IPv4 connections to this address (none: the kernel chooses).
    pub source_ipv4: Option<Ipv4Addr>,
    /// Bind IPv6 connections to this address (none: the kernel chooses).
    pub source_ipv6: Option<Ipv6Addr>,
    /// Which families to connect over.
    pub family: AddressFamily,
}

impl Egress {
    /// The source address for a connection to `dest`, if one is configured for its family.
    pub fn source_for(&self, dest: IpAddr) -> Option<IpAddr> {
        match dest {
            IpAddr::V4(_) => self.source_ipv4.map(IpAddr::V4),
            IpAddr::V6(_) => self.source_ipv6.map(IpAddr::V6),
        }
    }

    /// These settings with every value `over` states replacing this one's.
    pub fn with(self, over: &EgressOverride) -> Egress {
        Egress {
            source_ipv4: over.source_ipv4.or(self.source_ipv4),
            source_ipv6: over.source_ipv6.or(self.source_ipv6),
            family: over.family.unwrap_or(self.family),
        }
    }
}

/// The egress settings one route states; what it leaves out comes from `[delivery]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct EgressOverride {
    /// `source_ipv4` of the route.
    pub source_ipv4: Option<Ipv4Addr>,
    /// `source_ipv6` of the route.
    pub source_ipv6: Option<Ipv6Addr>,
    /// `address_family` of the route.
    pub family: Option<AddressFamily>,
}

/// How a route's next hop is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HopLookup {
    /// `[host]`: the host's own addresses, no MX lookup.
    Direct,
    /// `host`: the MX records of the name, as for a recipient domain.
    Mx,
}

/// The next hop of a route: `[host]:port` (no MX lookup) or `host[:port]` (MX lookup).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NextHop {
    /// The hop's name (an A-label host name).
    pub host: Domain,
    /// The SMTP port; 25 unless written.
    pub port: u16,
    /// Whether the name is looked up as MX or used as it is.
    pub lookup: HopLookup,
}

/// A `via` that is not a next hop.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HopError {
    /// Empty.
    #[error("via is empty; write \"[gateway.example.net]:25\" (that host) or \"relay.example.net\" (its MX hosts)")]
    Empty,
    /// `[host` without `]`.
    #[error("via \"{0}\": a bracket is not closed; write \"[gateway.example.net]:25\"")]
    Bracket(String),
    /// A port that is not 1–65535.
    #[error("via \"{0}\": the port must be a number from 1 to 65535")]
    Port(String),
    /// An IP literal: its certificate could not be checked by name.
    #[error("via \"{0}\": give the hop's host name, not an address: certificates are checked against names (put the name in DNS)")]
    Address(String),
    /// Not a host name.
    #[error("via \"{input}\": {why}")]
    Name {
        /// The value as written.
        input: String,
        /// Why the name is refused.
        why: String,
    },
}

impl NextHop {
    /// Parses `[host]`, `[host]:port`, `host` or `host:port`.
    pub fn parse(via: &str) -> Result<NextHop, HopError> {
        let s = via.trim();
        if s.is_empty() {
            return Err(HopError::Empty);
        }
        let (name, rest, lookup) = match s.strip_prefix('[') {
            Some(inner) => {
                let (name, rest) = inner
                    .split_once(']')
                    .ok_or_else(|| HopError::Bracket(via.to_string()))?;
                (name, rest, HopLookup::Direct)
            }
            None => match s.rsplit_once(':') {
                Some((name, _)) => (name, &s[name.len()..], HopLookup::Mx),
                None => (s, "", HopLookup::Mx),
            },
        };
        let port = match rest {
            "" => 25,
            r => r
                .strip_prefix(':')
                .and_then(|p| p.parse::<u16>().ok())
                .filter(|&p| p != 0)
                .ok_or_else(|| HopError::Port(via.to_string()))?,
        };
        if name.trim_end_matches('.').parse::<IpAddr>().is_ok() {
            return Err(HopError::Address(via.to_string()));
        }
        let host = Domain::parse(name).map_err(|e| HopError::Name {
            input: via.to_string(),
            why: e.to_string(),
        })?;
        Ok(NextHop { host, port, lookup })
    }
}

impl fmt::Display for NextHop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.lookup {
            HopLookup::Direct => write!(f, "[{}]:{}", self.host, self.port),
            HopLookup::Mx if self.port == 25 => write!(f, "{}", self.host),
            HopLookup::Mx => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_hops() {
        let ok = [
            (
                "[gw.partner.example]:2525",
                "gw.partner.example",
                2525,
                HopLookup::Direct,
            ),
            (
                "[GW.Partner.Example.]",
                "gw.partner.example",
                25,
                HopLookup::Direct,
            ),
            ("relay.example.net", "relay.example.net", 25, HopLookup::Mx),
            (
                " relay.example.net:587 ",
                "relay.example.net",
                587,
                HopLookup::Mx,
            ),
        ];
        for (via, host, port, lookup) in ok {
            let hop = NextHop::parse(via).unwrap_or_else(|e| panic!("{via}: {e}"));
            assert_eq!(
                (hop.host.as_str(), hop.port, hop.lookup),
                (host, port, lookup),
                "{via}"
            );
        }
        let bad = [
            ("", "empty"),
            ("[gw.example", "not closed"),
            ("[gw.example]:0", "port"),
            ("[gw.example]:x", "port"),
            ("gw.example:99999", "port"),
            ("[192.0.2.1]:25", "not an address"),
            ("[::1]", "not an address"),
            ("gw..example", "via"),
        ];
        for (via, words) in bad {
            let e = NextHop::parse(via).expect_err(via).to_string();
            assert!(e.contains(words), "{via}: {e}");
        }
        for via in [
            "[gw.example]:2525",
            "[gw.example]:25",
            "relay.example",
            "relay.example:587",
        ] {
            assert_eq!(NextHop::parse(via).unwrap().to_string(), via);
        }
    }

    #[test]
    fn families_filter_and_order() {
        let a: Vec<IpAddr> = ["2001:db8::1", "192.0.2.1", "2001:db8::2", "192.0.2.2"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let s = |v: Vec<IpAddr>| {
            v.iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        };
        let cases = [
            (
                AddressFamily::Any,
                "2001:db8::1 192.0.2.1 2001:db8::2 192.0.2.2",
            ),
            (AddressFamily::Ipv4, "192.0.2.1 192.0.2.2"),
            (AddressFamily::Ipv6, "2001:db8::1 2001:db8::2"),
            (
                AddressFamily::PreferIpv4,
                "192.0.2.1 192.0.2.2 2001:db8::1 2001:db8::2",
            ),
            (
                AddressFamily::PreferIpv6,
                "2001:db8::1 2001:db8::2 192.0.2.1 192.0.2.2",
            ),
        ];
        for (family, want) in cases {
            assert_eq!(s(family.order(&a)), want, "{family}");
            assert_eq!(AddressFamily::from_name(family.as_str()), Some(family));
        }
    }

    #[test]
    fn sources_by_family_and_route_overrides() {
        let global = Egress {
            source_ipv4: Some("127.0.0.5".parse().unwrap()),
            source_ipv6: None,
            family: AddressFamily::Any,
        };
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(global.source_for(v4), Some("127.0.0.5".parse().unwrap()));
        assert_eq!(global.source_for(v6), None);
        let route = EgressOverride {
            source_ipv4: Some("127.0.0.9".parse().unwrap()),
            source_ipv6: None,
            family: Some(AddressFamily::Ipv4),
        };
        let merged = global.with(&route);
        assert_eq!(merged.source_for(v4), Some("127.0.0.9".parse().unwrap()));
        assert_eq!(merged.family, AddressFamily::Ipv4);
        assert_eq!(global.with(&EgressOverride::default()), global);
    }
}
