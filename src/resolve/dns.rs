//! Validating DNS client for the delivery path.
//!
//! Every answer carries its DNSSEC status, validated in this process by
//! hickory-resolver against a trust anchor (the IANA root key by default, or a
//! file of DNSKEY records that tests and operators can supply). The answer
//! types keep apart the outcomes the delivery decision table needs: records
//! found, a securely or insecurely proven absence (NODATA, NXDOMAIN), a bogus
//! answer, and a temporary failure (SERVFAIL, timeout, network).
//!
//! Names are always queried as fully qualified names: no search list, no hosts
//! file.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::lookup::Lookup;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError, NoRecords};
use hickory_resolver::proto::dnssec::{Proof, TrustAnchors};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use hickory_resolver::proto::ProtoError;
use hickory_resolver::TokioResolver;

pub use crate::model::dns::*;

/// The DNSSEC status hickory attached to a record.
fn security_of(proof: Proof) -> Security {
    match proof {
        Proof::Secure => Security::Secure,
        Proof::Insecure => Security::Insecure,
        Proof::Bogus => Security::Bogus,
        Proof::Indeterminate => Security::Indeterminate,
    }
}

/// How to build the resolver.
#[derive(Clone, Debug)]
pub struct DnsSettings {
    /// Name servers to ask (UDP, TCP on truncation); empty = /etc/resolv.conf.
    pub nameservers: Vec<SocketAddr>,
    /// File of DNSKEY records in zone-file syntax; None = IANA root KSKs built into hickory.
    pub trust_anchor: Option<PathBuf>,
    /// Time allowed for one query attempt.
    pub timeout: Duration,
    /// Tries per query (at least 1), each allowed `timeout`.
    pub attempts: usize,
}

impl Default for DnsSettings {
    fn default() -> Self {
        DnsSettings {
            nameservers: Vec::new(),
            trust_anchor: None,
            timeout: Duration::from_secs(5),
            attempts: 2,
        }
    }
}

/// Why the resolver could not be built.
#[derive(Debug)]
pub enum DnsSetupError {
    /// The trust anchor file could not be read.
    AnchorRead {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The trust anchor text does not parse as DNSKEY records.
    AnchorParse {
        /// The file (or `<text>` for in-memory anchors).
        source: String,
        /// The parser's message.
        reason: String,
    },
    /// The trust anchor holds no DNSKEY for the root zone `.`.
    AnchorNoRootKey {
        /// The file (or `<text>`).
        source: String,
    },
    /// The system resolver configuration could not be read.
    SystemConfig(String),
    /// hickory refused the configuration.
    Resolver(String),
}

impl fmt::Display for DnsSetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DnsSetupError::AnchorRead { path, error } => {
                write!(f, "cannot read DNSSEC trust anchor file {}: {error}", path.display())
            }
            DnsSetupError::AnchorParse { source, reason } => write!(
                f,
                "DNSSEC trust anchor {source} is not a list of DNSKEY records in zone-file syntax: {reason}"
            ),
            DnsSetupError::AnchorNoRootKey { source } => write!(
                f,
                "DNSSEC trust anchor {source} holds no DNSKEY record for the root zone \".\""
            ),
            DnsSetupError::SystemConfig(e) => {
                write!(f, "cannot read the system resolver configuration: {e}")
            }
            DnsSetupError::Resolver(e) => write!(f, "cannot build the DNS resolver: {e}"),
        }
    }
}

impl std::error::Error for DnsSetupError {}

/// Why the DNSSEC self-test failed; DANE cannot work until it passes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelfTestError {
    /// The root DNSKEY RRset came back, but not as secure.
    #[error(
        "DNSSEC self-test failed: the root DNSKEY RRset from {servers} is {security}, not secure, \
         against trust anchor {anchor}; DANE cannot work"
    )]
    NotSecure {
        /// The name servers asked.
        servers: String,
        /// Where the trust anchor came from.
        anchor: String,
        /// The status it came back with.
        security: Security,
    },
    /// The root DNSKEY RRset does not validate against the anchor.
    #[error(
        "DNSSEC self-test failed: the root DNSKEY RRset from {servers} does not validate against \
         trust anchor {anchor} ({reason}); the anchor is wrong or the servers strip DNSSEC \
         records, so DANE cannot work"
    )]
    Bogus {
        /// The name servers asked.
        servers: String,
        /// Where the trust anchor came from.
        anchor: String,
        /// What the validator said.
        reason: String,
    },
    /// No root DNSKEY records at all.
    #[error(
        "DNSSEC self-test failed: {servers} returned no root DNSKEY records; \
         the servers do not serve DNSSEC, so DANE cannot work"
    )]
    NoKeys {
        /// The name servers asked.
        servers: String,
    },
    /// The query got no answer.
    #[error(
        "DNSSEC self-test failed: cannot query the root zone (DNSKEY, then SOA): {reason}; \
         DANE cannot work until the name servers answer"
    )]
    Unanswered {
        /// What went wrong.
        reason: String,
    },
    /// The root DNSKEY matches the anchor (that needs no signature), but the
    /// root's other records do not validate: signatures are stripped on the way.
    #[error(
        "DNSSEC self-test failed: the root SOA from {servers} is {what}, not secure, although \
         the root DNSKEY matches trust anchor {anchor}; the servers strip DNSSEC signatures, \
         so DANE cannot work"
    )]
    Stripped {
        /// The name servers asked.
        servers: String,
        /// Where the trust anchor came from.
        anchor: String,
        /// What the SOA came back as (its security, or the validator's complaint).
        what: String,
    },
}

/// A validating DNS client; cheap to clone.
#[derive(Clone)]
pub struct Dns {
    inner: Arc<Inner>,
}

struct Inner {
    resolver: TokioResolver,
    /// "127.0.0.1:5353" or "127.0.0.1:53, [::1]:53", for messages.
    servers: String,
    /// Where the trust anchor came from, for messages.
    anchor: String,
    timeout: Duration,
    attempts: usize,
}

impl fmt::Debug for Dns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dns")
            .field("servers", &self.inner.servers)
            .field("anchor", &self.inner.anchor)
            .finish()
    }
}

/// Parses trust anchor text; `source` names it in errors.
fn parse_anchors(text: &str, source: &str) -> Result<TrustAnchors, DnsSetupError> {
    let anchors: TrustAnchors =
        with_class(text)
            .parse()
            .map_err(|e| DnsSetupError::AnchorParse {
                source: source.to_string(),
                reason: format!("{e}"),
            })?;
    if anchors.is_empty() {
        return Err(DnsSetupError::AnchorNoRootKey {
            source: source.to_string(),
        });
    }
    Ok(anchors)
}

/// Zone-file syntax (RFC 1035 §5.1) lets a record leave out its TTL and class, as
/// `keymgr <zone> dnskey` does (`. DNSKEY 257 3 13 ...`), but hickory's trust anchor
/// parser needs the class: add `IN` before `DNSKEY` where a line names no class.
fn with_class(text: &str) -> String {
    let is_class = |t: &str| {
        ["IN", "CH", "HS", "CS"]
            .iter()
            .any(|c| t.eq_ignore_ascii_case(c))
    };
    let mut out = String::with_capacity(text.len() + 16);
    for line in text.lines() {
        let data = line.split(';').next().unwrap_or("");
        let tokens: Vec<&str> = data.split_whitespace().collect();
        let at = tokens.iter().position(|t| t.eq_ignore_ascii_case("DNSKEY"));
        match at {
            // owner [TTL] DNSKEY ...: the owner is given (no leading blank) and no class is.
            Some(i @ 1..=2)
                if !line.starts_with(char::is_whitespace)
                    && !tokens[1..i].iter().any(|t| is_class(t)) =>
            {
                out.push_str(&tokens[..i].join(" "));
                out.push_str(" IN ");
                out.push_str(&tokens[i..].join(" "));
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

impl Dns {
    /// Builds the resolver from settings, reading the trust anchor file if one is named.
    pub fn new(settings: &DnsSettings) -> Result<Dns, DnsSetupError> {
        match &settings.trust_anchor {
            None => Self::build(settings, TrustAnchors::default(), "(IANA root KSK)".into()),
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|error| DnsSetupError::AnchorRead {
                        path: path.clone(),
                        error,
                    })?;
                let source = path.display().to_string();
                let anchors = parse_anchors(&text, &source)?;
                Self::build(settings, anchors, source)
            }
        }
    }

    /// Builds the resolver with trust anchor text (DNSKEY records); `settings.trust_anchor` is ignored.
    pub fn with_anchor_text(settings: &DnsSettings, text: &str) -> Result<Dns, DnsSetupError> {
        let anchors = parse_anchors(text, "<text>")?;
        Self::build(settings, anchors, "<text>".into())
    }

    /// Where the trust anchor came from (a file path, `<text>` or the built-in IANA key).
    pub fn anchor_source(&self) -> &str {
        &self.inner.anchor
    }

    fn build(
        settings: &DnsSettings,
        anchors: TrustAnchors,
        anchor: String,
    ) -> Result<Dns, DnsSetupError> {
        let config = if settings.nameservers.is_empty() {
            let (config, _opts) = hickory_resolver::system_conf::read_system_conf()
                .map_err(|e| DnsSetupError::SystemConfig(e.to_string()))?;
            // Keep the servers, drop domain and search list: we only ask FQDNs.
            ResolverConfig::from_name_servers(config.name_servers().to_vec())
        } else {
            let servers = settings
                .nameservers
                .iter()
                .map(|addr| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = addr.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = addr.port();
                    NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
                })
                .collect();
            ResolverConfig::from_name_servers(servers)
        };
        let servers = describe_servers(config.name_servers());

        let mut opts = ResolverOpts::default();
        opts.validate = true;
        opts.use_hosts_file = ResolveHosts::Never;
        opts.timeout = settings.timeout;
        // hickory's `attempts` counts retries after the first try (RetryDnsHandle).
        opts.attempts = settings.attempts.max(1) - 1;
        opts.edns0 = true;
        // Answers are cached for their TTL; big enough for the domains of a busy day.
        opts.cache_size = 16_384;
        opts.ndots = 0;
        opts.preserve_intermediates = true;

        let resolver = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(opts)
            .with_trust_anchor(Arc::new(anchors))
            .build()
            .map_err(|e| DnsSetupError::Resolver(e.to_string()))?;
        Ok(Dns {
            inner: Arc::new(Inner {
                resolver,
                servers,
                anchor,
                timeout: settings.timeout,
                attempts: settings.attempts.max(1),
            }),
        })
    }

    /// MX records of `domain`, with null MX (RFC 7505) and NODATA (implicit MX) told apart.
    pub async fn mx(&self, domain: &str) -> MxAnswer {
        let answer = self
            .query(domain, RecordType::MX, |r| match r {
                RData::MX(mx) => Some(MxHost {
                    preference: mx.preference,
                    host: name_to_string(&mx.exchange),
                }),
                _ => None,
            })
            .await;
        mx_from_answer(answer)
    }

    /// A and AAAA records of `host` (either may be missing; both are asked).
    pub async fn addresses(&self, host: &str) -> AddrAnswer {
        let (a, aaaa) = tokio::join!(
            self.query(host, RecordType::A, |r| match r {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                _ => None,
            }),
            self.query(host, RecordType::AAAA, |r| match r {
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            })
        );
        combine_addresses(a, aaaa)
    }

    /// TLSA records at `_<port>._tcp.<host>`.
    pub async fn tlsa(&self, port: u16, host: &str) -> TlsaAnswer {
        let name = format!("_{port}._tcp.{}", host.trim_end_matches('.'));
        self.query(&name, RecordType::TLSA, |r| match r {
            RData::TLSA(t) => Some(Tlsa {
                usage: u8::from(t.cert_usage),
                selector: u8::from(t.selector),
                matching: u8::from(t.matching),
                data: t.cert_data.clone(),
            }),
            _ => None,
        })
        .await
    }

    /// TXT records of `name`, each record's strings kept apart.
    pub async fn txt(&self, name: &str) -> TxtAnswer {
        self.query(name, RecordType::TXT, |r| match r {
            RData::TXT(t) => Some(Txt {
                strings: t.txt_data.iter().map(|s| s.to_vec()).collect(),
            }),
            _ => None,
        })
        .await
    }

    /// Checks that the root DNSKEY RRset validates against the trust anchor (needed for DANE).
    pub async fn self_test(&self) -> Result<(), SelfTestError> {
        let answer = self
            .query(".", RecordType::DNSKEY, |r| match r {
                RData::DNSSEC(_) => Some(()),
                _ => None,
            })
            .await;
        let anchor = || self.inner.anchor.clone();
        let servers = || self.inner.servers.clone();
        match answer {
            Answer::Records {
                security: Security::Secure,
                ..
            } => self.self_test_signatures().await,
            Answer::Records { security, .. } => Err(SelfTestError::NotSecure {
                servers: servers(),
                anchor: anchor(),
                security,
            }),
            Answer::Bogus(reason) => Err(SelfTestError::Bogus {
                servers: servers(),
                anchor: anchor(),
                reason,
            }),
            Answer::NoRecords { .. } | Answer::NxDomain { .. } => {
                Err(SelfTestError::NoKeys { servers: servers() })
            }
            Answer::TempFail(reason) => Err(SelfTestError::Unanswered { reason }),
        }
    }

    /// The root SOA must validate too: a DNSKEY RRset equal to the anchor is
    /// trusted without its RRSIG, so only a signed record shows stripping.
    async fn self_test_signatures(&self) -> Result<(), SelfTestError> {
        let answer = self
            .query(".", RecordType::SOA, |r| match r {
                RData::SOA(_) => Some(()),
                _ => None,
            })
            .await;
        let what = match answer {
            Answer::Records {
                security: Security::Secure,
                ..
            } => return Ok(()),
            Answer::Records { security, .. }
            | Answer::NoRecords { security }
            | Answer::NxDomain { security } => security.to_string(),
            Answer::Bogus(reason) => format!("bogus ({})", reason.trim_end()),
            Answer::TempFail(reason) => return Err(SelfTestError::Unanswered { reason }),
        };
        Err(SelfTestError::Stripped {
            servers: self.inner.servers.clone(),
            anchor: self.inner.anchor.clone(),
            what,
        })
    }

    /// Runs one query and maps hickory's result into an `Answer`.
    async fn query<T>(
        &self,
        name: &str,
        rtype: RecordType,
        extract: impl Fn(&RData) -> Option<T>,
    ) -> Answer<T> {
        let what = format!("{rtype} {}", name.trim_end_matches('.'));
        let fqdn = match fqdn(name) {
            Ok(n) => n,
            Err(e) => return Answer::TempFail(format!("invalid name for {what}: {e}")),
        };
        let result = self.inner.resolver.lookup(fqdn, rtype).await;
        map_result(result, rtype, &extract, &self.context(&what))
    }

    fn context(&self, what: &str) -> QueryContext {
        QueryContext {
            what: what.to_string(),
            servers: self.inner.servers.clone(),
            timeout: self.inner.timeout,
            attempts: self.inner.attempts,
        }
    }
}

/// What a query was, for error messages.
struct QueryContext {
    what: String,
    servers: String,
    timeout: Duration,
    attempts: usize,
}

fn fqdn(name: &str) -> Result<Name, ProtoError> {
    let mut n = Name::from_ascii(name)?;
    n.set_fqdn(true);
    Ok(n)
}

/// Lower-case name without the trailing dot; the root is "".
fn name_to_string(name: &Name) -> String {
    let s = name.to_lowercase().to_ascii();
    s.trim_end_matches('.').to_string()
}

fn describe_servers(servers: &[NameServerConfig]) -> String {
    let mut out: Vec<String> = Vec::new();
    for ns in servers {
        let port = ns.connections.first().map(|c| c.port).unwrap_or(53);
        let s = SocketAddr::new(ns.ip, port).to_string();
        if !out.contains(&s) {
            out.push(s);
        }
    }
    if out.is_empty() {
        "no name servers".to_string()
    } else {
        out.join(", ")
    }
}

/// The weakest proof over records, ignoring RRSIGs; `None` when there are none.
fn weakest_proof<'r>(records: impl IntoIterator<Item = &'r Record>) -> Option<Security> {
    records
        .into_iter()
        .filter(|r| r.record_type() != RecordType::RRSIG)
        .map(|r| security_of(r.proof))
        .reduce(Security::weakest)
}

/// Maps a lookup result to an answer; the single place hickory's result shapes are read.
fn map_result<T>(
    result: Result<Lookup, NetError>,
    rtype: RecordType,
    extract: &dyn Fn(&RData) -> Option<T>,
    cx: &QueryContext,
) -> Answer<T> {
    match result {
        Ok(lookup) => {
            let wanted: Vec<&Record> = lookup
                .answers()
                .iter()
                .filter(|r| r.record_type() == rtype)
                .collect();
            let cnames = lookup
                .answers()
                .iter()
                .filter(|r| r.record_type() == RecordType::CNAME);
            if wanted.is_empty() {
                // A CNAME chain that ends without data: NODATA at the end of the chain.
                let security = weakest_proof(lookup.answers().iter().chain(lookup.authorities()))
                    .unwrap_or(Security::Indeterminate);
                if security == Security::Bogus {
                    return Answer::Bogus(format!("DNSSEC validation failed for {}", cx.what));
                }
                return Answer::NoRecords { security };
            }
            let security = weakest_proof(wanted.iter().copied().chain(cnames))
                .unwrap_or(Security::Indeterminate);
            if security == Security::Bogus {
                return Answer::Bogus(format!("DNSSEC validation failed for {}", cx.what));
            }
            let owner = name_to_string(&wanted[0].name);
            let records = wanted.iter().filter_map(|r| extract(&r.data)).collect();
            Answer::Records {
                records,
                security,
                owner,
            }
        }
        Err(err) => map_error(err, cx),
    }
}

fn negative(code: ResponseCode, security: Security, cx: &QueryContext) -> Option<Answer<()>> {
    if security == Security::Bogus {
        return Some(Answer::Bogus(format!(
            "DNSSEC validation of the denial failed for {}",
            cx.what
        )));
    }
    match code {
        ResponseCode::NXDomain => Some(Answer::NxDomain { security }),
        ResponseCode::NoError => Some(Answer::NoRecords { security }),
        _ => None,
    }
}

/// Maps a hickory error to an answer (negative answers, Bogus, TempFail).
fn map_error<T>(err: NetError, cx: &QueryContext) -> Answer<T> {
    let from = &cx.servers;
    let what = &cx.what;
    let unit: Answer<()> = match &err {
        NetError::Dns(DnsError::NoRecordsFound(NoRecords {
            response_code,
            authorities,
            ..
        })) => {
            // No SOA/NSEC at all: hickory accepted the denial only after proving
            // the name insecure (or the name is special-use and answered locally).
            let security = authorities
                .as_ref()
                .and_then(|a| weakest_proof(a.iter()))
                .unwrap_or(Security::Insecure);
            match negative(*response_code, security, cx) {
                Some(a) => a,
                None => Answer::TempFail(format!(
                    "{} from {from} for {what}",
                    rcode_name(*response_code)
                )),
            }
        }
        NetError::Dns(DnsError::Nsec {
            response, proof, ..
        }) => {
            let security = security_of(*proof);
            match negative(response.response_code, security, cx) {
                Some(a) => a,
                None => Answer::TempFail(format!(
                    "{} from {from} for {what}",
                    rcode_name(response.response_code)
                )),
            }
        }
        NetError::Dns(DnsError::DnssecBogus) => {
            Answer::Bogus(format!("DNSSEC validation failed for {what}"))
        }
        NetError::Dns(DnsError::ResponseCode(code)) => {
            Answer::TempFail(format!("{} from {from} for {what}", rcode_name(*code)))
        }
        NetError::Timeout => Answer::TempFail(format!(
            "timeout after {} ({} attempt{}) asking {from} for {what}",
            human_duration(cx.timeout),
            cx.attempts,
            if cx.attempts == 1 { "" } else { "s" }
        )),
        other => Answer::TempFail(format!("{other} asking {from} for {what}")),
    };
    unit.map(|_| Vec::new())
}

fn rcode_name(code: ResponseCode) -> String {
    match code {
        ResponseCode::ServFail => "SERVFAIL".into(),
        ResponseCode::Refused => "REFUSED".into(),
        ResponseCode::FormErr => "FORMERR".into(),
        ResponseCode::NotImp => "NOTIMP".into(),
        ResponseCode::NXDomain => "NXDOMAIN".into(),
        other => format!("response code {other}"),
    }
}

fn human_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// Turns a generic answer for MX into an `MxAnswer`, recognising null MX.
fn mx_from_answer(answer: Answer<MxHost>) -> MxAnswer {
    match answer {
        Answer::Records {
            records,
            security,
            owner,
        } => {
            let (null, hosts): (Vec<MxHost>, Vec<MxHost>) =
                records.into_iter().partition(|h| h.host.is_empty());
            if hosts.is_empty() && !null.is_empty() {
                MxAnswer::NullMx { security }
            } else {
                MxAnswer::Hosts {
                    hosts,
                    security,
                    owner,
                }
            }
        }
        Answer::NoRecords { security } => MxAnswer::NoRecords { security },
        Answer::NxDomain { security } => MxAnswer::NxDomain { security },
        Answer::Bogus(r) => MxAnswer::Bogus(r),
        Answer::TempFail(r) => MxAnswer::TempFail(r),
    }
}

/// Combines the A and AAAA answers, failing closed: Bogus, then TempFail, win over data.
fn combine_addresses(a: Answer<IpAddr>, aaaa: Answer<IpAddr>) -> AddrAnswer {
    use Answer::*;
    match (a, aaaa) {
        (Bogus(r), _) | (_, Bogus(r)) => Bogus(r),
        (TempFail(r), _) | (_, TempFail(r)) => TempFail(r),
        (
            Records {
                records: mut r1,
                security: s1,
                owner,
            },
            Records {
                records: r2,
                security: s2,
                ..
            },
        ) => {
            r1.extend(r2);
            Records {
                records: r1,
                security: s1.weakest(s2),
                owner,
            }
        }
        (
            Records {
                records,
                security,
                owner,
            },
            NoRecords { security: s2 } | NxDomain { security: s2 },
        )
        | (
            NoRecords { security: s2 } | NxDomain { security: s2 },
            Records {
                records,
                security,
                owner,
            },
        ) => Records {
            records,
            security: security.weakest(s2),
            owner,
        },
        (NxDomain { security: s1 }, NxDomain { security: s2 }) => NxDomain {
            security: s1.weakest(s2),
        },
        (NoRecords { security: s1 } | NxDomain { security: s1 }, NoRecords { security: s2 })
        | (NoRecords { security: s1 }, NxDomain { security: s2 }) => NoRecords {
            security: s1.weakest(s2),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use Security::*;

    #[test]
    fn weakest_table() {
        let table = [
            (Secure, Secure, Secure),
            (Secure, Insecure, Insecure),
            (Insecure, Secure, Insecure),
            (Secure, Indeterminate, Indeterminate),
            (Insecure, Indeterminate, Indeterminate),
            (Indeterminate, Bogus, Bogus),
            (Secure, Bogus, Bogus),
            (Bogus, Secure, Bogus),
        ];
        for (a, b, want) in table {
            assert_eq!(a.weakest(b), want, "{a} vs {b}");
        }
    }

    fn mx(p: u16, h: &str) -> MxHost {
        MxHost {
            preference: p,
            host: h.into(),
        }
    }

    #[test]
    fn mx_mapping_table() {
        let rec = |records: Vec<MxHost>| Answer::Records {
            records,
            security: Secure,
            owner: "example.test".into(),
        };
        let table: Vec<(Answer<MxHost>, MxAnswer)> = vec![
            (rec(vec![mx(0, "")]), MxAnswer::NullMx { security: Secure }),
            (
                rec(vec![mx(10, "a.test"), mx(20, "b.test")]),
                MxAnswer::Hosts {
                    hosts: vec![mx(10, "a.test"), mx(20, "b.test")],
                    security: Secure,
                    owner: "example.test".into(),
                },
            ),
            (
                rec(vec![mx(0, ""), mx(10, "a.test")]),
                MxAnswer::Hosts {
                    hosts: vec![mx(10, "a.test")],
                    security: Secure,
                    owner: "example.test".into(),
                },
            ),
            (
                Answer::NoRecords { security: Insecure },
                MxAnswer::NoRecords { security: Insecure },
            ),
            (
                Answer::NxDomain { security: Secure },
                MxAnswer::NxDomain { security: Secure },
            ),
            (Answer::Bogus("x".into()), MxAnswer::Bogus("x".into())),
            (Answer::TempFail("y".into()), MxAnswer::TempFail("y".into())),
        ];
        for (input, want) in table {
            assert_eq!(mx_from_answer(input.clone()), want, "{input:?}");
        }
    }

    #[test]
    fn combine_addresses_table() {
        let v4 = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        let rec = |ip: IpAddr, security| Answer::Records {
            records: vec![ip],
            security,
            owner: "h.test".into(),
        };
        let table: Vec<(AddrAnswer, AddrAnswer, AddrAnswer)> = vec![
            (
                rec(v4, Secure),
                rec(v6, Secure),
                Answer::Records {
                    records: vec![v4, v6],
                    security: Secure,
                    owner: "h.test".into(),
                },
            ),
            (
                rec(v4, Secure),
                Answer::NoRecords { security: Secure },
                rec(v4, Secure),
            ),
            (
                Answer::NoRecords { security: Insecure },
                rec(v6, Secure),
                rec(v6, Insecure),
            ),
            (
                rec(v4, Secure),
                rec(v6, Insecure),
                Answer::Records {
                    records: vec![v4, v6],
                    security: Insecure,
                    owner: "h.test".into(),
                },
            ),
            (
                rec(v4, Secure),
                Answer::Bogus("b".into()),
                Answer::Bogus("b".into()),
            ),
            (
                Answer::TempFail("t".into()),
                rec(v6, Secure),
                Answer::TempFail("t".into()),
            ),
            (
                Answer::TempFail("t".into()),
                Answer::Bogus("b".into()),
                Answer::Bogus("b".into()),
            ),
            (
                Answer::NxDomain { security: Secure },
                Answer::NxDomain { security: Secure },
                Answer::NxDomain { security: Secure },
            ),
            (
                Answer::NoRecords { security: Secure },
                Answer::NoRecords { security: Insecure },
                Answer::NoRecords { security: Insecure },
            ),
            (
                Answer::NxDomain { security: Secure },
                Answer::NoRecords { security: Secure },
                Answer::NoRecords { security: Secure },
            ),
        ];
        for (a, aaaa, want) in table {
            assert_eq!(
                combine_addresses(a.clone(), aaaa.clone()),
                want,
                "{a:?} + {aaaa:?}"
            );
        }
    }

    fn cx() -> QueryContext {
        QueryContext {
            what: "MX example.test".into(),
            servers: "127.0.0.1:5353".into(),
            timeout: Duration::from_secs(2),
            attempts: 1,
        }
    }

    #[test]
    fn error_mapping_table() {
        let q = hickory_resolver::proto::op::Query::query(
            Name::from_ascii("example.test.").unwrap(),
            RecordType::MX,
        );
        let table: Vec<(NetError, Answer<()>)> = vec![
            (
                NetError::Dns(DnsError::ResponseCode(ResponseCode::ServFail)),
                Answer::TempFail("SERVFAIL from 127.0.0.1:5353 for MX example.test".into()),
            ),
            (
                NetError::Dns(DnsError::ResponseCode(ResponseCode::Refused)),
                Answer::TempFail("REFUSED from 127.0.0.1:5353 for MX example.test".into()),
            ),
            (
                NetError::Timeout,
                Answer::TempFail(
                    "timeout after 2s (1 attempt) asking 127.0.0.1:5353 for MX example.test".into(),
                ),
            ),
            (
                NetError::Dns(DnsError::DnssecBogus),
                Answer::Bogus("DNSSEC validation failed for MX example.test".into()),
            ),
            (
                NoRecords::new(q.clone(), ResponseCode::NXDomain).into(),
                Answer::NxDomain { security: Insecure },
            ),
            (
                NoRecords::new(q.clone(), ResponseCode::NoError).into(),
                Answer::NoRecords { security: Insecure },
            ),
        ];
        for (err, want) in table {
            let shown = format!("{err:?}");
            assert_eq!(map_error::<()>(err, &cx()), want, "{shown}");
        }
    }

    #[test]
    fn negative_proof_comes_from_authorities() {
        let q = hickory_resolver::proto::op::Query::query(
            Name::from_ascii("example.test.").unwrap(),
            RecordType::MX,
        );
        let soa = |proof| {
            let mut r = Record::from_rdata(
                Name::from_ascii("example.test.").unwrap(),
                60,
                RData::SOA(hickory_resolver::proto::rr::rdata::SOA::new(
                    Name::from_ascii("ns.example.test.").unwrap(),
                    Name::from_ascii("h.example.test.").unwrap(),
                    1,
                    60,
                    60,
                    60,
                    60,
                )),
            );
            r.proof = proof;
            r
        };
        let table = [
            (
                vec![soa(Proof::Secure)],
                ResponseCode::NoError,
                Answer::NoRecords { security: Secure },
            ),
            (
                vec![soa(Proof::Secure), soa(Proof::Insecure)],
                ResponseCode::NXDomain,
                Answer::NxDomain { security: Insecure },
            ),
            (
                vec![soa(Proof::Bogus)],
                ResponseCode::NXDomain,
                Answer::Bogus("DNSSEC validation of the denial failed for MX example.test".into()),
            ),
        ];
        for (auth, code, want) in table {
            let mut nr = NoRecords::new(q.clone(), code);
            nr.authorities = Some(auth.into());
            assert_eq!(map_error::<()>(nr.into(), &cx()), want);
        }
    }

    #[test]
    fn futures_are_send() {
        fn check<T: Send>(_: &T) {}
        let settings = DnsSettings {
            nameservers: vec!["127.0.0.1:53".parse().unwrap()],
            ..DnsSettings::default()
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let dns = Dns::new(&settings).unwrap();
        check(&dns.mx("example.test"));
        check(&dns.addresses("example.test"));
        check(&dns.tlsa(25, "example.test"));
        check(&dns.txt("example.test"));
        check(&dns.self_test());
    }

    #[test]
    fn name_formatting() {
        for (input, want) in [
            ("Example.TEST.", "example.test"),
            (".", ""),
            ("mx1.example.test", "mx1.example.test"),
        ] {
            assert_eq!(name_to_string(&Name::from_ascii(input).unwrap()), want);
        }
        assert_eq!(human_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(human_duration(Duration::from_secs(5)), "5s");
    }

    #[test]
    fn self_test_errors_say_dane_cannot_work() {
        let servers = || "127.0.0.1:53".to_string();
        let anchor = || "/etc/root.key".to_string();
        let cases = [
            (
                SelfTestError::NotSecure {
                    servers: servers(),
                    anchor: anchor(),
                    security: Insecure,
                },
                "the root DNSKEY RRset from 127.0.0.1:53 is insecure, not secure, against trust anchor /etc/root.key",
            ),
            (
                SelfTestError::Bogus {
                    servers: servers(),
                    anchor: anchor(),
                    reason: "no valid signature".into(),
                },
                "does not validate against trust anchor /etc/root.key (no valid signature)",
            ),
            (
                SelfTestError::NoKeys { servers: servers() },
                "127.0.0.1:53 returned no root DNSKEY records",
            ),
            (
                SelfTestError::Unanswered {
                    reason: "timeout".into(),
                },
                "cannot query the root zone (DNSKEY, then SOA): timeout",
            ),
            (
                SelfTestError::Stripped {
                    servers: servers(),
                    anchor: anchor(),
                    what: "insecure".into(),
                },
                "the root SOA from 127.0.0.1:53 is insecure, not secure, although the root DNSKEY matches trust anchor /etc/root.key; the servers strip DNSSEC signatures",
            ),
        ];
        for (e, words) in cases {
            let text = e.to_string();
            assert!(text.starts_with("DNSSEC self-test failed: "), "{text}");
            assert!(text.contains(words), "{text}");
            assert!(text.contains("DANE cannot work"), "{text}");
        }
    }

    #[test]
    fn anchor_errors_name_the_source() {
        let Err(e) = parse_anchors("garbage here\n", "/etc/x.key") else {
            panic!("garbage accepted")
        };
        assert!(e.to_string().contains("/etc/x.key"), "{e}");
        let Err(e) = parse_anchors("", "/etc/y.key") else {
            panic!("empty anchor accepted")
        };
        assert!(matches!(e, DnsSetupError::AnchorNoRootKey { .. }), "{e}");
        assert!(e.to_string().contains("/etc/y.key"), "{e}");
    }

    #[test]
    fn anchors_without_ttl_or_class_are_read() {
        // As written by `keymgr . dnskey` (the loopback test bed's root-anchor.dnskey).
        let key = "BIPRqbkXfXYdwzFm8iLHOz4lUGQKHMuRwhdXP5hwJVrwEy5TKNmhaAmp0GNnj1EK0HIURg3Y1n1U6U3098iX9A==";
        for text in [
            format!(". DNSKEY 257 3 13 {key}\n"),
            format!(". 3600 DNSKEY 257 3 13 {key} ; KSK\n"),
            format!(". IN DNSKEY 257 3 13 {key}\n"),
            format!(". 3600 IN DNSKEY 257 3 13 {key}\n"),
        ] {
            let anchors = parse_anchors(&text, "t").unwrap_or_else(|e| panic!("{text}: {e}"));
            assert!(!anchors.is_empty(), "{text}");
        }
        assert_eq!(
            with_class("; comment\n. DNSKEY 257 3 13 AA==\n"),
            "; comment\n. IN DNSKEY 257 3 13 AA==\n"
        );
    }
}
