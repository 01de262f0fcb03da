//! SMTP TLS Reporting (RFC 8460): daily aggregate reports built from the outcome log.
//!
//! Delivery already records every TLS session attempt in RFC 8460 terms
//! ([`crate::reporting::outcome`]); this module only adds them up. The flow for one finished
//! UTC day `D` and one policy domain `P`:
//!
//! 1. [`pending_reports`] lists `(D, P)` pairs with sessions and no marker.
//!    Records are grouped by [`PolicyDomain`]: the A-label, so records under
//!    `bücher.example` and under `xn--bcher-kva.example` make one report.
//! 2. Look up `_smtp._tls.P` TXT (A-label) and [`parse_rua`] it. No record: [`mark_done`].
//! 3. [`aggregate`] the day's sessions of `P` ([`sessions_by_domain`]),
//!    [`build_report`] with a [`report_id`] that depends only on `(D, P, submitter)`,
//!    [`report_json`], [`gzip`].
//! 4. For `mailto:`: [`report_message`], DKIM-signed by a [`ReportSigner`]
//!    ([`DkimReportSigner`] when `tls_rpt.dkim_key_file` is set), queued with
//!    `report_mail` set so it is not itself counted. For `https:`: POST the gzip
//!    bytes as `application/tlsrpt+gzip`.
//! 5. [`mark_done`] once every destination accepted it. A record whose domain is
//!    no domain name at all is marked done at once (nothing can be sent for it).
//!
//! Crash safety: a finished day's outcome file no longer changes, and a report is
//! always the whole day rebuilt from it, never an increment. So a report is
//! either sent or not, and a crash between sending and [`mark_done`] re-sends the
//! same report once (same counts, same report-id, so the receiver can tell it is
//! a duplicate); sessions are never counted twice.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};

use chrono::NaiveDate;
use mail_auth::flate2::{write::GzEncoder, Compression};
use mail_auth::report::tlsrpt as rpt;
pub use mail_auth::report::tlsrpt::TlsReport;

use crate::model::domain::Domain;
use crate::reporting::outcome::{Outcome, OutcomeLog, PolicyType, ResultType, SessionResult};

/// The media type of a gzipped report (RFC 8460 §5, §6).
pub const GZIP_MEDIA_TYPE: &str = "application/tlsrpt+gzip";

const DAY_SECS: i64 = 86_400;

// ---------------------------------------------------------------------------
// `_smtp._tls` TXT record (RFC 8460 §3)
// ---------------------------------------------------------------------------

/// A report destination from a TLSRPT record's `rua=` field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rua {
    /// A `mailto:` URI: the address, percent-decoded, without `?` header fields.
    Mailto(String),
    /// An `https:` URI, as published, to POST the gzipped report to.
    Https(String),
}

/// Why a TLSRPT record is unusable; RFC 8460 §3 then treats the domain as not
/// implementing TLSRPT. The words go to the log and the sent marker.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// More than one record begins with `v=TLSRPTv1`.
    #[error("{0} TLSRPT records; RFC 8460 §3 allows exactly one")]
    Several(usize),
    /// A byte outside printable ASCII and blanks.
    #[error("TLSRPT record contains the byte 0x{0:02x}, outside printable ASCII")]
    NotPrintable(u8),
    /// The first field is not `v=TLSRPTv1`.
    #[error("TLSRPT record does not begin with v=TLSRPTv1")]
    NoVersion,
    /// Two delimiters in a row (only one trailing delimiter is allowed).
    #[error("TLSRPT record has an empty field")]
    EmptyField,
    /// A field without `=`.
    #[error("TLSRPT field {0:?} is not name=value")]
    NotNameValue(String),
    /// A field name outside the `tlsrpt-ext-name` grammar.
    #[error("TLSRPT field name {0:?} is not valid")]
    FieldName(String),
    /// A field value outside the `tlsrpt-ext-value` grammar.
    #[error("TLSRPT field {0:?} has an invalid value")]
    FieldValue(String),
    /// No `rua` field.
    #[error("TLSRPT record has no rua field")]
    NoRua,
    /// `rua` names no URI with a supported scheme.
    #[error("TLSRPT rua lists no mailto: or https: URI")]
    NoUsableUri,
    /// An empty URI in the `rua` list.
    #[error("TLSRPT rua has an empty URI")]
    EmptyUri,
    /// A character a URI may not hold here.
    #[error("TLSRPT rua URI {uri:?} contains {bad:?}")]
    UriCharacter {
        /// The URI.
        uri: String,
        /// The character.
        bad: char,
    },
    /// A URI without `scheme:`.
    #[error("TLSRPT rua URI {0:?} has no scheme")]
    NoScheme(String),
    /// A scheme outside the RFC 3986 grammar.
    #[error("TLSRPT rua URI {0:?} has an invalid scheme")]
    BadScheme(String),
    /// A `%` not followed by two hex digits, or escapes that are not UTF-8.
    #[error("TLSRPT rua URI {0:?} has a bad %-escape")]
    BadEscape(String),
    /// A `mailto:` URI whose address is not `local@domain`.
    #[error("TLSRPT rua {0:?} is not a mail address")]
    NotMailAddress(String),
    /// An `https:` URI without a host.
    #[error("TLSRPT rua {0:?} has no host")]
    NoHost(String),
}

/// Parses the TXT records at `_smtp._tls.<domain>` (each element one record, its
/// strings already concatenated) into report destinations.
///
/// `Ok(None)`: no record begins with `v=TLSRPTv1;`, so the domain does not ask
/// for reports. `Err`: more than one such record, or the one record is malformed,
/// or it names no `mailto:`/`https:` URI; RFC 8460 §3 says to treat the domain as
/// not implementing TLSRPT then, and the error says why (for the log). URIs with
/// other schemes are skipped with a log note.
pub fn parse_rua(txt_records: &[Vec<u8>]) -> Result<Option<Vec<Rua>>, RecordError> {
    let tlsrpt: Vec<&[u8]> = txt_records
        .iter()
        .map(Vec::as_slice)
        .filter(|r| begins_with_version(r))
        .collect();
    match tlsrpt.as_slice() {
        [] => Ok(None),
        [one] => parse_record(one).map(Some),
        many => Err(RecordError::Several(many.len())),
    }
}

fn is_wsp(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// `v=TLSRPTv1` followed by a field delimiter (`*WSP ";"`).
fn begins_with_version(record: &[u8]) -> bool {
    match record.strip_prefix(b"v=TLSRPTv1") {
        Some(rest) => rest.iter().find(|b| !is_wsp(**b)) == Some(&b';'),
        None => false,
    }
}

fn parse_record(record: &[u8]) -> Result<Vec<Rua>, RecordError> {
    if let Some(b) = record
        .iter()
        .find(|b| !(b.is_ascii_graphic() || is_wsp(**b)))
    {
        return Err(RecordError::NotPrintable(*b));
    }
    let text = std::str::from_utf8(record).expect("checked ASCII");
    let mut fields = text.split(';');
    let version = fields.next().unwrap_or_default();
    if version.trim_end_matches([' ', '\t']) != "v=TLSRPTv1" {
        return Err(RecordError::NoVersion);
    }
    let fields: Vec<&str> = fields.map(|f| f.trim_matches([' ', '\t'])).collect();
    let mut rua = None;
    for (i, field) in fields.iter().enumerate() {
        if field.is_empty() {
            // Only one trailing delimiter is allowed (`[field-delim]`).
            if i + 1 == fields.len() {
                continue;
            }
            return Err(RecordError::EmptyField);
        }
        if let Some(uris) = parse_field(field)? {
            // RFC 8460 §3 repeats fields in its grammar and allows more than
            // one rua: every one of them is a destination.
            rua.get_or_insert_with(Vec::new).extend(uris);
        }
    }
    let uris = rua.ok_or(RecordError::NoRua)?;
    if uris.is_empty() {
        return Err(RecordError::NoUsableUri);
    }
    Ok(uris)
}

/// One `name=value` field: the destinations when it is `rua`, `None` for any
/// other (valid) field, which is ignored.
fn parse_field(field: &str) -> Result<Option<Vec<Rua>>, RecordError> {
    let Some((name, value)) = field.split_once('=') else {
        return Err(RecordError::NotNameValue(field.to_string()));
    };
    if !valid_ext_name(name) {
        return Err(RecordError::FieldName(name.to_string()));
    }
    if name == "rua" {
        return parse_uris(value).map(Some);
    }
    // tlsrpt-ext-value = 1*(%x21-3A / %x3C / %x3E-7E)
    if value.is_empty() || value.bytes().any(|b| b == b'=' || !b.is_ascii_graphic()) {
        return Err(RecordError::FieldValue(name.to_string()));
    }
    Ok(None)
}

/// `(ALPHA / DIGIT) *31(ALPHA / DIGIT / "_" / "-" / ".")`
fn valid_ext_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && b[0].is_ascii_alphanumeric()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'))
}

/// `tlsrpt-uri *(*WSP "," *WSP tlsrpt-uri)`
fn parse_uris(value: &str) -> Result<Vec<Rua>, RecordError> {
    let mut out = Vec::new();
    for uri in value.split(',') {
        out.extend(parse_uri(uri.trim_matches([' ', '\t']))?);
    }
    Ok(out)
}

/// One URI: its destinations (several for a `mailto:` with a list), none for an
/// unsupported scheme.
fn parse_uri(uri: &str) -> Result<Vec<Rua>, RecordError> {
    if uri.is_empty() {
        return Err(RecordError::EmptyUri);
    }
    if let Some(bad) = uri.chars().find(|c| !is_uri_char(*c)) {
        return Err(RecordError::UriCharacter {
            uri: uri.to_string(),
            bad,
        });
    }
    let Some((scheme, rest)) = uri.split_once(':') else {
        return Err(RecordError::NoScheme(uri.to_string()));
    };
    if !valid_scheme(scheme) {
        return Err(RecordError::BadScheme(uri.to_string()));
    }
    if percent_decode(rest).is_none() {
        return Err(RecordError::BadEscape(uri.to_string()));
    }
    if scheme.eq_ignore_ascii_case("mailto") {
        parse_mailto(uri, rest)
    } else if scheme.eq_ignore_ascii_case("https") {
        parse_https(uri, rest).map(|r| vec![r])
    } else {
        tracing::info!(uri, "TLSRPT rua URI scheme not supported; skipped");
        Ok(vec![])
    }
}

/// RFC 6068: the addresses before any `?`, several separated by (encoded) commas.
fn parse_mailto(uri: &str, rest: &str) -> Result<Vec<Rua>, RecordError> {
    let to = rest.split_once('?').map_or(rest, |(to, _)| to);
    let to = percent_decode(to).ok_or_else(|| RecordError::BadEscape(uri.to_string()))?;
    to.split(',')
        .map(|addr| {
            if is_mail_address(addr) {
                Ok(Rua::Mailto(addr.to_string()))
            } else {
                Err(RecordError::NotMailAddress(uri.to_string()))
            }
        })
        .collect()
}

/// `local@domain`, both non-empty; an `@` in the local part only when it is quoted.
fn is_mail_address(addr: &str) -> bool {
    let Some((local, domain)) = addr.rsplit_once('@') else {
        return false;
    };
    let quoted = local.len() > 1 && local.starts_with('"') && local.ends_with('"');
    !local.is_empty()
        && !domain.is_empty()
        && !domain.contains('@')
        && (!local.contains('@') || quoted)
        && !addr.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// An `https:` URI must name a host (`https://host...`).
fn parse_https(uri: &str, rest: &str) -> Result<Rua, RecordError> {
    let host = rest
        .strip_prefix("//")
        .map(|r| r.split(['/', '?', '#']).next().unwrap_or_default());
    match host {
        Some(h) if !h.is_empty() && !h.starts_with(':') => Ok(Rua::Https(uri.to_string())),
        _ => Err(RecordError::NoHost(uri.to_string())),
    }
}

/// RFC 3986 characters, less `,` and `!` which RFC 8460 §3 requires encoded.
fn is_uri_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~:/?#[]@$&'()*+;=%".contains(c)
}

fn valid_scheme(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphabetic()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'))
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

// ---------------------------------------------------------------------------
// Aggregation (RFC 8460 §4)
// ---------------------------------------------------------------------------

/// The `domain` of outcome records as reports group and mark them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PolicyDomain {
    /// A domain name in A-label form: its report goes to `_smtp._tls.<name>`.
    Valid(Domain),
    /// Text that is no domain name, as recorded: no report can be sent for it.
    Invalid {
        /// The recorded text.
        text: String,
        /// Why it is not a domain name.
        why: String,
    },
}

impl PolicyDomain {
    /// The policy domain that recorded text names.
    pub fn parse(text: &str) -> PolicyDomain {
        match Domain::parse(text) {
            Ok(d) => PolicyDomain::Valid(d),
            Err(e) => PolicyDomain::Invalid {
                text: text.to_string(),
                why: e.why,
            },
        }
    }

    /// The policy domain of an outcome record.
    pub fn of(outcome: &Outcome) -> PolicyDomain {
        PolicyDomain::parse(&outcome.domain)
    }
}

impl fmt::Display for PolicyDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyDomain::Valid(d) => d.fmt(f),
            PolicyDomain::Invalid { text, .. } => f.write_str(text),
        }
    }
}

/// One policy domain's sessions on one UTC day, added up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Aggregate {
    /// The policy domain.
    pub policy_domain: Domain,
    /// The UTC day.
    pub day: NaiveDate,
    /// One entry per distinct policy, ordered by type, then strings.
    pub policies: Vec<PolicyAggregate>,
}

/// The sessions under one policy (RFC 8460 §4.3 `policy` + `summary`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyAggregate {
    /// The policy type.
    pub policy_type: PolicyType,
    /// `policy-string`: the STS policy lines or the TLSA records.
    pub policy_strings: Vec<String>,
    /// `mx-host`: the STS policy's MX patterns.
    pub mx_patterns: Vec<String>,
    /// `total-successful-session-count`.
    pub successful: u32,
    /// `total-failure-session-count`; always the sum of the failure counts.
    pub failed: u32,
    /// `failure-details`, ordered by result type, then addresses and host.
    pub failures: Vec<FailureAggregate>,
}

/// Failed sessions with the same result type, sending IP, MX host and receiving IP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureAggregate {
    /// `result-type`.
    pub result: ResultType,
    /// `sending-mta-ip`.
    pub sending_ip: Option<IpAddr>,
    /// `receiving-mx-hostname`; none when the failure came before any host.
    pub receiving_mx_host: Option<String>,
    /// `receiving-ip`.
    pub receiving_ip: Option<IpAddr>,
    /// `failed-session-count`.
    pub count: u32,
}

/// Unix time of 00:00:00 UTC on `day`.
pub fn day_start(day: NaiveDate) -> i64 {
    day.and_hms_opt(0, 0, 0)
        .expect("midnight exists")
        .and_utc()
        .timestamp()
}

/// The Unix seconds of the UTC `day`.
fn day_range(day: NaiveDate) -> Range<i64> {
    let start = day_start(day);
    start..start + DAY_SECS
}

fn policy_type_str(p: PolicyType) -> &'static str {
    match p {
        PolicyType::Tlsa => "tlsa",
        PolicyType::Sts => "sts",
        PolicyType::NoPolicyFound => "no-policy-found",
    }
}

fn parse_ip(s: Option<&str>) -> Option<IpAddr> {
    let s = s?;
    s.parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<SocketAddr>().ok().map(|a| a.ip()))
}

/// The reportable sessions that started on the UTC `day`, by policy domain.
/// Report mail and other records that are no session ([`Outcome::session`]) are left out.
pub fn sessions_by_domain(
    outcomes: &[Outcome],
    day: NaiveDate,
) -> BTreeMap<PolicyDomain, Vec<&Outcome>> {
    let range = day_range(day);
    let mut out: BTreeMap<PolicyDomain, Vec<&Outcome>> = BTreeMap::new();
    for o in outcomes {
        if range.contains(&o.time) && o.session() != SessionResult::NotCounted {
            out.entry(PolicyDomain::of(o)).or_default().push(o);
        }
    }
    out
}

/// Policy type, policy strings, MX patterns: what makes policies distinct.
type PolicyKey = (&'static str, Vec<String>, Vec<String>);
/// Result type, sending IP, MX host, receiving IP: what makes failure details distinct.
type FailureKey = (&'static str, Option<IpAddr>, Option<String>, Option<IpAddr>);

/// The counts of one policy while they are added up.
struct PolicyTally {
    policy_type: PolicyType,
    successful: u32,
    failed: u32,
    failures: BTreeMap<FailureKey, (ResultType, u32)>,
}

impl PolicyTally {
    fn add(&mut self, o: &Outcome) {
        match o.session() {
            SessionResult::Success => self.successful = self.successful.saturating_add(1),
            SessionResult::Failure(r) => {
                self.failed = self.failed.saturating_add(1);
                let host = (!o.mx_host.is_empty()).then(|| host_name(&o.mx_host));
                let key = (
                    r.as_str(),
                    parse_ip(o.sending_ip.as_deref()),
                    host,
                    parse_ip(o.addr.as_deref()),
                );
                let count = &mut self.failures.entry(key).or_insert((r, 0)).1;
                *count = count.saturating_add(1);
            }
            SessionResult::NotCounted => {}
        }
    }

    fn finish(self, (_, policy_strings, mx_patterns): PolicyKey) -> PolicyAggregate {
        let failures = self
            .failures
            .into_iter()
            .map(|((_, sip, host, rip), (result, count))| FailureAggregate {
                result,
                sending_ip: sip,
                receiving_mx_host: host,
                receiving_ip: rip,
                count,
            })
            .collect();
        PolicyAggregate {
            policy_type: self.policy_type,
            policy_strings,
            mx_patterns,
            successful: self.successful,
            failed: self.failed,
            failures,
        }
    }
}

/// An MX host name as reported: its A-label form, or the text as recorded when it is
/// no host name.
fn host_name(recorded: &str) -> String {
    Domain::parse(recorded).map_or_else(|_| recorded.to_string(), |d| d.to_string())
}

/// Adds up `policy_domain`'s `sessions` of the UTC `day` (as grouped by
/// [`sessions_by_domain`]; records that are no session are skipped). `None` when
/// there is no session.
pub fn aggregate(
    policy_domain: &Domain,
    day: NaiveDate,
    sessions: &[&Outcome],
) -> Option<Aggregate> {
    let mut policies: BTreeMap<PolicyKey, PolicyTally> = BTreeMap::new();
    for o in sessions {
        if o.session() == SessionResult::NotCounted {
            continue;
        }
        let key = (
            policy_type_str(o.policy),
            o.policy_strings.clone(),
            o.mx_patterns.clone(),
        );
        policies
            .entry(key)
            .or_insert_with(|| PolicyTally {
                policy_type: o.policy,
                successful: 0,
                failed: 0,
                failures: BTreeMap::new(),
            })
            .add(o);
    }
    if policies.is_empty() {
        return None;
    }
    Some(Aggregate {
        policy_domain: policy_domain.clone(),
        day,
        policies: policies
            .into_iter()
            .map(|(key, tally)| tally.finish(key))
            .collect(),
    })
}

// ---------------------------------------------------------------------------
// The report (RFC 8460 §4) and its encodings (§5)
// ---------------------------------------------------------------------------

/// A report-id that depends only on the day, the policy domain and the submitter,
/// so a report re-sent after a crash carries the same id.
pub fn report_id(day: NaiveDate, policy_domain: &Domain, submitter: &str) -> String {
    format!("{}.{policy_domain}@{submitter}", day.format("%Y%m%d"))
}

fn to_rpt_result(r: ResultType) -> rpt::ResultType {
    use rpt::ResultType as R;
    match r {
        ResultType::StarttlsNotSupported => R::StartTlsNotSupported,
        ResultType::CertificateHostMismatch => R::CertificateHostMismatch,
        ResultType::CertificateExpired => R::CertificateExpired,
        ResultType::CertificateNotTrusted => R::CertificateNotTrusted,
        ResultType::ValidationFailure => R::ValidationFailure,
        ResultType::TlsaInvalid => R::TlsaInvalid,
        ResultType::DnssecInvalid => R::DnssecInvalid,
        ResultType::DaneRequired => R::DaneRequired,
        ResultType::StsPolicyFetchError => R::StsPolicyFetchError,
        ResultType::StsPolicyInvalid => R::StsPolicyInvalid,
        ResultType::StsWebpkiInvalid => R::StsWebpkiInvalid,
    }
}

fn to_rpt_policy_type(p: PolicyType) -> rpt::PolicyType {
    match p {
        PolicyType::Tlsa => rpt::PolicyType::Tlsa,
        PolicyType::Sts => rpt::PolicyType::Sts,
        PolicyType::NoPolicyFound => rpt::PolicyType::NoPolicyFound,
    }
}

/// The RFC 8460 §4 report for `agg`, covering its UTC day
/// (`start-datetime` 00:00:00Z, `end-datetime` 23:59:59Z).
pub fn build_report(agg: &Aggregate, org_name: &str, contact: &str, report_id: &str) -> TlsReport {
    let start = day_start(agg.day);
    TlsReport {
        organization_name: Some(org_name.to_string()),
        date_range: rpt::DateRange::from_timestamps(start, start + DAY_SECS - 1),
        contact_info: Some(contact.to_string()),
        report_id: report_id.to_string(),
        policies: agg
            .policies
            .iter()
            .map(|p| report_policy(&agg.policy_domain, p))
            .collect(),
    }
}

/// One `policies` entry of the report.
fn report_policy(policy_domain: &Domain, p: &PolicyAggregate) -> rpt::Policy {
    rpt::Policy {
        policy: rpt::PolicyDetails {
            policy_type: to_rpt_policy_type(p.policy_type),
            policy_string: p.policy_strings.clone(),
            policy_domain: policy_domain.to_string(),
            mx_host: p.mx_patterns.clone(),
        },
        summary: rpt::Summary {
            total_success: p.successful,
            total_failure: p.failed,
        },
        failure_details: p
            .failures
            .iter()
            .map(|f| rpt::FailureDetails {
                result_type: to_rpt_result(f.result),
                sending_mta_ip: f.sending_ip,
                receiving_mx_hostname: f.receiving_mx_host.clone(),
                receiving_ip: f.receiving_ip,
                failed_session_count: f.count,
                ..Default::default()
            })
            .collect(),
    }
}

/// The report as JSON. Unlike mail-auth's `to_json`, absent optional members are
/// left out instead of written as `null` or `[]`.
pub fn report_json(report: &TlsReport) -> String {
    fn prune(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                map.retain(|k, v| {
                    !(v.is_null()
                        || (matches!(k.as_str(), "policy-string" | "mx-host" | "failure-details")
                            && v.as_array().is_some_and(Vec::is_empty)))
                });
                map.values_mut().for_each(prune);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(prune),
            _ => {}
        }
    }
    let mut value = serde_json::to_value(report).expect("a TlsReport serializes");
    prune(&mut value);
    value.to_string()
}

/// Gzips `json` for the `application/tlsrpt+gzip` encoding (RFC 8460 §5).
pub fn gzip(json: &[u8]) -> io::Result<Vec<u8>> {
    let mut e = GzEncoder::new(Vec::with_capacity(json.len() / 4), Compression::default());
    e.write_all(json)?;
    e.finish()
}

/// The report file name of RFC 8460 §5 (used for the email attachment):
/// `<submitter>!<policy-domain>!<begin-timestamp>!<end-timestamp>.json.gz`.
pub fn report_filename(report: &TlsReport, submitter: &str, policy_domain: &str) -> String {
    format!(
        "{}!{}!{}!{}.json.gz",
        submitter,
        policy_domain,
        report.date_range.start_datetime.to_timestamp(),
        report.date_range.end_datetime.to_timestamp()
    )
}

/// The report email of RFC 8460 §5.3 (generated by mail-auth): `TLS-Report-Domain`,
/// `TLS-Report-Submitter`, `Subject: Report Domain: … Submitter: … Report-ID: <…>`,
/// `multipart/report; report-type="tlsrpt"` with a text part and the gzip
/// attachment named as in [`report_filename`].
///
/// The message comes back unsigned: RFC 8460 §5.3 requires a DKIM signature of
/// the reporting domain (without `l=`), which a [`ReportSigner`] adds before the
/// message is queued.
pub fn report_message(
    report: &TlsReport,
    policy_domain: &str,
    submitter: &str,
    from: &str,
    to: &[&str],
    gz: &[u8],
) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(gz.len() * 2 + 2048);
    report.write_rfc5322_from_bytes(
        policy_domain,
        submitter,
        from,
        to.iter().copied(),
        gz,
        &mut out,
    )?;
    Ok(out)
}

/// The DKIM step for report mail (RFC 8460 §5.3: reports sent by mail MUST carry a
/// valid DKIM signature of the reporting domain). [`DkimReportSigner`] implements
/// it with mail-auth's DKIM signer.
pub trait ReportSigner {
    /// Returns `message` with a `DKIM-Signature` header prepended.
    fn sign(&self, message: &[u8]) -> io::Result<Vec<u8>>;
}

// ---------------------------------------------------------------------------
// Which reports were sent: `<tlsrpt_dir>/sent/<day>/<domain>`
// ---------------------------------------------------------------------------

/// The marker's file name: a domain's A-label form as it is (only `[a-z0-9.-]`,
/// never a leading `.`). Text that is no domain name is lower-cased, and bytes
/// outside `[a-z0-9._-]`, and a leading `.`, are written as `%XX` (so it can
/// never name a domain's marker, nor leave the directory).
fn marker_name(domain: &PolicyDomain) -> String {
    let text = match domain {
        PolicyDomain::Valid(d) => return d.to_string(),
        PolicyDomain::Invalid { text, .. } => text.to_ascii_lowercase(),
    };
    let mut out = String::with_capacity(text.len());
    for (i, b) in text.bytes().enumerate() {
        if b.is_ascii_lowercase()
            || b.is_ascii_digit()
            || b == b'-'
            || b == b'_'
            || (b == b'.' && i > 0)
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.is_empty() {
        out.push_str("%00");
    }
    out
}

fn marker_path(tlsrpt_dir: &Path, day: NaiveDate, domain: &PolicyDomain) -> PathBuf {
    tlsrpt_dir
        .join("sent")
        .join(day.format("%Y-%m-%d").to_string())
        .join(marker_name(domain))
}

/// Whether the `(day, domain)` report is marked done.
pub fn is_done(tlsrpt_dir: &Path, day: NaiveDate, domain: &PolicyDomain) -> io::Result<bool> {
    marker_path(tlsrpt_dir, day, domain).try_exists()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Marks the `(day, domain)` report done, durably and atomically (temporary file,
/// fsync, rename, fsync of the directory). Call it after every destination
/// accepted the report, or when the domain publishes no TLSRPT record; `note`
/// (e.g. the report-id and destinations) is stored in the marker for the operator.
pub fn mark_done(
    tlsrpt_dir: &Path,
    day: NaiveDate,
    domain: &PolicyDomain,
    note: &str,
) -> io::Result<()> {
    let path = marker_path(tlsrpt_dir, day, domain);
    let dir = path.parent().expect("marker has a parent");
    if !dir.is_dir() {
        fs::create_dir_all(dir)?;
        sync_dir(dir.parent().expect("day dir has a parent"))?;
        sync_dir(tlsrpt_dir)?;
    }
    let name = path
        .file_name()
        .expect("marker has a name")
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(note.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
    }
    fs::rename(&tmp, &path)?;
    sync_dir(dir)
}

/// The `(day, policy domain)` reports still to send: UTC days before `today` that
/// have at least one reportable session for the domain and no marker, oldest first.
///
/// Call it with `today` taken a little after midnight (e.g. `(now - 15 min)` UTC),
/// so that an attempt recorded at 23:59:59 has surely reached its day's file.
pub fn pending_reports(
    outcomes: &OutcomeLog,
    tlsrpt_dir: &Path,
    today: NaiveDate,
) -> io::Result<Vec<(NaiveDate, PolicyDomain)>> {
    let mut pending = Vec::new();
    for day_name in outcomes.days()? {
        let day = NaiveDate::parse_from_str(&day_name, "%Y-%m-%d").expect("days() checked it");
        if day >= today {
            continue;
        }
        let records = outcomes.read_day(&day_name)?;
        for domain in sessions_by_domain(&records, day).into_keys() {
            if !is_done(tlsrpt_dir, day, &domain)? {
                pending.push((day, domain));
            }
        }
    }
    Ok(pending)
}

// ---------------------------------------------------------------------------
// DKIM signing of report mail (RFC 8460 §5.3)
// ---------------------------------------------------------------------------

/// Why a DKIM key for report mail is unusable.
#[derive(Debug, thiserror::Error)]
pub enum DkimKeyError {
    /// The text holds no PEM private key.
    #[error("not a PEM private key: {0}")]
    NotPem(rustls_pki_types::pem::Error),
    /// The key is of a kind mail-auth cannot sign with.
    #[error("neither an RSA nor an Ed25519 key: {0}")]
    Unsupported(mail_auth::Error),
}

/// A DKIM signer for report mail (RFC 8460 §5.3: report mail is DKIM-signed), from a
/// PEM private key: RSA (PKCS#8 or PKCS#1) or Ed25519 (PKCS#8).
pub struct DkimReportSigner {
    der: rustls_pki_types::PrivateKeyDer<'static>,
    rsa: bool,
    domain: String,
    selector: String,
}

/// The header fields the report signature covers.
const SIGNED_HEADERS: [&str; 7] = [
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "TLS-Report-Domain",
    "TLS-Report-Submitter",
];

impl DkimReportSigner {
    /// Loads the key in `pem` for signing as `domain` with `selector`; checks it works.
    pub fn from_pem(
        pem: &str,
        domain: &Domain,
        selector: &str,
    ) -> Result<DkimReportSigner, DkimKeyError> {
        use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
        use rustls_pki_types::pem::PemObject;
        let der = rustls_pki_types::PrivateKeyDer::from_pem_slice(pem.as_bytes())
            .map_err(DkimKeyError::NotPem)?;
        let rsa = RsaKey::<Sha256>::from_key_der(der.clone_key()).is_ok();
        if !rsa {
            Ed25519Key::from_pkcs8_der(der.secret_der()).map_err(DkimKeyError::Unsupported)?;
        }
        Ok(DkimReportSigner {
            der,
            rsa,
            domain: domain.to_string(),
            selector: selector.to_string(),
        })
    }
}
impl ReportSigner for DkimReportSigner {
    fn sign(&self, message: &[u8]) -> io::Result<Vec<u8>> {
        use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
        use mail_auth::common::headers::HeaderWriter;
        use mail_auth::dkim::DkimSigner;
        let fail = |e: mail_auth::Error| io::Error::other(format!("DKIM signing failed: {e}"));
        let signature = if self.rsa {
            let key = RsaKey::<Sha256>::from_key_der(self.der.clone_key()).map_err(fail)?;
            DkimSigner::from_key(key)
                .domain(&self.domain)
                .selector(&self.selector)
                .headers(SIGNED_HEADERS)
                .sign(message)
        } else {
            let key = Ed25519Key::from_pkcs8_der(self.der.secret_der()).map_err(fail)?;
            DkimSigner::from_key(key)
                .domain(&self.domain)
                .selector(&self.selector)
                .headers(SIGNED_HEADERS)
                .sign(message)
        }
        .map_err(fail)?;
        let mut out = signature.to_header().into_bytes();
        out.extend_from_slice(message);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_parser::{MessageParser, MimeHeaders};
    use std::io::Read;

    // -- parse_rua ----------------------------------------------------------

    fn m(a: &str) -> Rua {
        Rua::Mailto(a.into())
    }
    fn h(u: &str) -> Rua {
        Rua::Https(u.into())
    }

    #[test]
    fn rua_table() {
        type Want = Result<Option<Vec<Rua>>, &'static str>;
        let ok = |v: Vec<Rua>| -> Want { Ok(Some(v)) };
        let cases: Vec<(Vec<&str>, Want)> = vec![
            (vec![], Ok(None)),
            (vec!["v=spf1 -all"], Ok(None)),
            (
                vec!["v=TLSRPTv1; rua=mailto:reports@example.com"],
                ok(vec![m("reports@example.com")]),
            ),
            (
                vec!["v=TLSRPTv1;rua=https://reporting.example.com/v1/tlsrpt"],
                ok(vec![h("https://reporting.example.com/v1/tlsrpt")]),
            ),
            (
                vec!["v=TLSRPTv1; rua=mailto:a@example.com,https://r.example.com/x"],
                ok(vec![m("a@example.com"), h("https://r.example.com/x")]),
            ),
            (
                vec!["v=TLSRPTv1 ;\trua=mailto:a@example.com , mailto:b@example.com ; "],
                ok(vec![m("a@example.com"), m("b@example.com")]),
            ),
            (
                vec![
                    "v=spf1 -all",
                    "v=TLSRPTv1; rua=mailto:a@example.com; ext_1.x=val:ue",
                ],
                ok(vec![m("a@example.com")]),
            ),
            (
                vec!["v=TLSRPTv1; rua=mailto:tls%2Brpt@example.com?subject=TLS"],
                ok(vec![m("tls+rpt@example.com")]),
            ),
            (
                vec!["v=TLSRPTv1; rua=mailto:a@x.example%2Cb@y.example"],
                ok(vec![m("a@x.example"), m("b@y.example")]),
            ),
            (
                vec!["v=TLSRPTv1; rua=MAILTO:a@example.com,HTTPS://r.example.com"],
                ok(vec![m("a@example.com"), h("HTTPS://r.example.com")]),
            ),
            (
                vec!["v=TLSRPTv1; rua=ftp://r.example.com/,mailto:a@example.com"],
                ok(vec![m("a@example.com")]),
            ),
            (
                vec!["v=TLSRPTv1; rua=mailto:%22a@b%22@c.example"],
                ok(vec![m("\"a@b\"@c.example")]),
            ),
            // Not a TLSRPT record at all: discarded (RFC 8460 §3).
            (vec!["V=TLSRPTv1; rua=mailto:a@example.com"], Ok(None)),
            (vec!["v=TLSRPTv2; rua=mailto:a@example.com"], Ok(None)),
            (vec!["v=TLSRPTv10; rua=mailto:a@example.com"], Ok(None)),
            (vec![" v=TLSRPTv1; rua=mailto:a@example.com"], Ok(None)),
            (vec!["v=TLSRPTv1"], Ok(None)),
            (
                vec!["v=TLSRPTv1", "v=TLSRPTv1; rua=mailto:a@example.com"],
                ok(vec![m("a@example.com")]),
            ),
            // Errors.
            (
                vec![
                    "v=TLSRPTv1; rua=mailto:a@example.com",
                    "v=TLSRPTv1; rua=mailto:b@example.com",
                ],
                Err("2 TLSRPT records"),
            ),
            (vec!["v=TLSRPTv1;"], Err("no rua")),
            (vec!["v=TLSRPTv1; RUA=mailto:a@example.com"], Err("no rua")),
            (
                vec!["v=TLSRPTv1; rua=mailto:a@example.com; rua=https://r.example.com/x"],
                ok(vec![m("a@example.com"), h("https://r.example.com/x")]),
            ),
            (vec!["v=TLSRPTv1; rua="], Err("empty URI")),
            (
                vec!["v=TLSRPTv1; rua=mailto:a@example.com,,mailto:b@example.com"],
                Err("empty URI"),
            ),
            (
                vec!["v=TLSRPTv1;; rua=mailto:a@example.com"],
                Err("empty field"),
            ),
            (
                vec!["v=TLSRPTv1; rua=mailto:a@example.com;;"],
                Err("empty field"),
            ),
            (
                vec!["v=TLSRPTv1; rua=ftp://r.example.com"],
                Err("no mailto: or https:"),
            ),
            (
                vec!["v=TLSRPTv1; rua=mailto:nobody"],
                Err("not a mail address"),
            ),
            (
                vec!["v=TLSRPTv1; rua=mailto:a@b@c"],
                Err("not a mail address"),
            ),
            (
                vec!["v=TLSRPTv1; rua=mailto:a@example.com%2"],
                Err("bad %-escape"),
            ),
            (
                vec!["v=TLSRPTv1; rua=mailto:a@example.com%+1"],
                Err("bad %-escape"),
            ),
            (vec!["v=TLSRPTv1; rua=https:///path"], Err("no host")),
            (vec!["v=TLSRPTv1; rua=https:r.example.com"], Err("no host")),
            (
                vec!["v=TLSRPTv1; rua=https://r.example.com/a!b"],
                Err("contains '!'"),
            ),
            (
                vec!["v=TLSRPTv1; rua=mailto:a@example.com x"],
                Err("contains ' '"),
            ),
            (vec!["v=TLSRPTv1; rua=a@example.com"], Err("no scheme")),
            (
                vec!["v=TLSRPTv1; rua=1x:a@example.com"],
                Err("invalid scheme"),
            ),
            (
                vec!["v=TLSRPTv1; rua=mailto:a@example.com; bad name=x"],
                Err("field name"),
            ),
            (
                vec!["v=TLSRPTv1; rua=mailto:a@example.com; _x=y"],
                Err("field name"),
            ),
            (
                vec!["v=TLSRPTv1; rua=mailto:a@example.com; abcdefghijabcdefghijabcdefghijabc=y"],
                Err("field name"),
            ),
            (
                vec!["v=TLSRPTv1; rua=mailto:a@example.com; ext=a=b"],
                Err("invalid value"),
            ),
            (
                vec!["v=TLSRPTv1; rua=mailto:a@example.com; ext="],
                Err("invalid value"),
            ),
            (
                vec!["v=TLSRPTv1; rua=mailto:a@example.com; noequals"],
                Err("not name=value"),
            ),
            (
                vec!["v=TLSRPTv1; rua=mailto:a@exa\u{e9}mple.com"],
                Err("outside printable ASCII"),
            ),
        ];
        for (records, want) in cases {
            let raw: Vec<Vec<u8>> = records.iter().map(|r| r.as_bytes().to_vec()).collect();
            let got = parse_rua(&raw);
            match (&got, &want) {
                (Ok(g), Ok(w)) => assert_eq!(g, w, "{records:?}"),
                (Err(g), Err(w)) => {
                    let g = g.to_string();
                    assert!(g.contains(w), "{records:?}: {g:?} lacks {w:?}")
                }
                _ => panic!("{records:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    // -- aggregation and the report -------------------------------------------

    const SENDER: &str = "198.51.100.7";
    const STS: [&str; 4] = [
        "version: STSv1",
        "mode: enforce",
        "mx: *.example.com",
        "max_age: 86400",
    ];
    const TLSA: &str = "3 1 1 0C72AC70B745AC19998811B131D662C9AC69DBDBE7CB23E5B514B56664C5D3D6";

    fn d(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    fn pd(s: &str) -> PolicyDomain {
        PolicyDomain::parse(s)
    }

    /// `domain`'s report of `day`, as the reporter builds it from a day's records.
    fn aggregate_of(all: &[Outcome], domain: &str, day: NaiveDate) -> Option<Aggregate> {
        let domain = Domain::parse(domain).unwrap();
        let groups = sessions_by_domain(all, day);
        aggregate(
            &domain,
            day,
            groups.get(&PolicyDomain::Valid(domain.clone()))?,
        )
    }

    fn outcome(
        day: &str,
        domain: &str,
        mx: &str,
        addr: Option<&str>,
        policy: PolicyType,
        result: Option<ResultType>,
    ) -> Outcome {
        let (policy_strings, mx_patterns) = match policy {
            PolicyType::Tlsa => (vec![TLSA.to_string()], vec![]),
            PolicyType::Sts => (
                STS.iter().map(|s| s.to_string()).collect(),
                vec!["*.example.com".to_string()],
            ),
            PolicyType::NoPolicyFound => (vec![], vec![]),
        };
        Outcome {
            time: day_start(d(day)) + 3600,
            queue_id: "q1".into(),
            domain: domain.into(),
            mx_host: mx.into(),
            addr: addr.map(str::to_string),
            policy,
            auth: None,
            tls_ok: result.is_none(),
            result,
            report_mail: false,
            detail: String::new(),
            sending_ip: addr.map(|_| SENDER.to_string()),
            policy_strings,
            mx_patterns,
            route: None,
        }
    }

    /// (description, copies, record)
    fn table() -> Vec<(&'static str, usize, Outcome)> {
        use PolicyType::{NoPolicyFound as N, Sts as S, Tlsa as T};
        use ResultType as R;
        let e = "example.com";
        let day1 = "2024-05-01";
        let mut report_mail = outcome(
            day1,
            e,
            "mx3.example.com",
            Some("192.0.2.4"),
            N,
            Some(R::CertificateExpired),
        );
        report_mail.report_mail = true;
        let mut report_mail_ok = outcome(day1, e, "mx1.example.com", Some("192.0.2.1"), T, None);
        report_mail_ok.report_mail = true;
        let mut only_reports = outcome(
            day1,
            "reports.test",
            "mx.reports.test",
            Some("192.0.2.9"),
            N,
            None,
        );
        only_reports.report_mail = true;
        let mut late = outcome(day1, e, "mx1.example.com", Some("192.0.2.1"), T, None);
        late.time = day_start(d(day1)) + DAY_SECS - 1;
        vec![
            (
                "DANE success",
                3,
                outcome(day1, e, "mx1.example.com", Some("192.0.2.1"), T, None),
            ),
            ("DANE success at 23:59:59", 1, late),
            (
                "DANE success, domain spelled differently",
                1,
                outcome(
                    day1,
                    "Example.COM.",
                    "mx1.example.com",
                    Some("192.0.2.1"),
                    T,
                    None,
                ),
            ),
            (
                "TLSA lookup failed, host skipped",
                1,
                outcome(day1, e, "mx1.example.com", None, T, Some(R::TlsaInvalid)),
            ),
            (
                "STS success",
                1,
                outcome(day1, e, "mx2.example.com", Some("192.0.2.2"), S, None),
            ),
            (
                "STS certificate not WebPKI-valid",
                2,
                outcome(
                    day1,
                    e,
                    "mx2.example.com",
                    Some("192.0.2.2"),
                    S,
                    Some(R::StsWebpkiInvalid),
                ),
            ),
            (
                "STS, same failure at another address",
                1,
                outcome(
                    day1,
                    e,
                    "MX2.example.com",
                    Some("192.0.2.3"),
                    S,
                    Some(R::StsWebpkiInvalid),
                ),
            ),
            (
                "STS policy fetch failed before any host",
                1,
                outcome(day1, e, "", None, N, Some(R::StsPolicyFetchError)),
            ),
            (
                "no STARTTLS",
                1,
                outcome(
                    day1,
                    e,
                    "mx3.example.com",
                    Some("192.0.2.4"),
                    N,
                    Some(R::StarttlsNotSupported),
                ),
            ),
            (
                "certificate names another host",
                1,
                outcome(
                    day1,
                    e,
                    "mx3.example.com",
                    Some("192.0.2.4"),
                    N,
                    Some(R::CertificateHostMismatch),
                ),
            ),
            (
                "floor success",
                1,
                outcome(day1, e, "mx3.example.com", Some("192.0.2.4"), N, None),
            ),
            ("report mail failure: not counted", 1, report_mail),
            ("report mail success: not counted", 1, report_mail_ok),
            ("a domain with only report mail", 1, only_reports),
            (
                "another domain",
                1,
                outcome(
                    day1,
                    "other.test",
                    "mx.other.test",
                    Some("192.0.2.8"),
                    N,
                    None,
                ),
            ),
            (
                "the next day",
                2,
                outcome(
                    "2024-05-02",
                    e,
                    "mx1.example.com",
                    Some("192.0.2.1"),
                    T,
                    Some(R::CertificateNotTrusted),
                ),
            ),
            (
                "the next day, success",
                1,
                outcome(
                    "2024-05-02",
                    e,
                    "mx1.example.com",
                    Some("192.0.2.1"),
                    T,
                    None,
                ),
            ),
        ]
    }

    fn outcomes() -> Vec<Outcome> {
        table()
            .into_iter()
            .flat_map(|(_, n, o)| std::iter::repeat_n(o, n))
            .collect()
    }

    /// (policy-type, successes, failures, [(result-type, mx, receiving ip, count)])
    type Summary = (String, u64, u64, Vec<(String, String, String, u64)>);

    fn summarize(json: &str) -> Vec<Summary> {
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        let s = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_string();
        v["policies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let failures: Vec<_> = p["failure-details"]
                    .as_array()
                    .map(|a| a.as_slice())
                    .unwrap_or_default()
                    .iter()
                    .map(|f| {
                        (
                            s(&f["result-type"]),
                            s(&f["receiving-mx-hostname"]),
                            s(&f["receiving-ip"]),
                            f["failed-session-count"].as_u64().unwrap(),
                        )
                    })
                    .collect();
                (
                    s(&p["policy"]["policy-type"]),
                    p["summary"]["total-successful-session-count"]
                        .as_u64()
                        .unwrap(),
                    p["summary"]["total-failure-session-count"]
                        .as_u64()
                        .unwrap(),
                    failures,
                )
            })
            .collect()
    }

    fn f(r: &str, mx: &str, ip: &str, n: u64) -> (String, String, String, u64) {
        (r.into(), mx.into(), ip.into(), n)
    }

    #[test]
    fn aggregate_table() {
        let all = outcomes();
        let cases: Vec<(&str, &str, Option<Vec<Summary>>)> = vec![
            (
                "example.com",
                "2024-05-01",
                Some(vec![
                    (
                        "no-policy-found".into(),
                        1,
                        3,
                        vec![
                            f(
                                "certificate-host-mismatch",
                                "mx3.example.com",
                                "192.0.2.4",
                                1,
                            ),
                            f("starttls-not-supported", "mx3.example.com", "192.0.2.4", 1),
                            f("sts-policy-fetch-error", "-", "-", 1),
                        ],
                    ),
                    (
                        "sts".into(),
                        1,
                        3,
                        vec![
                            f("sts-webpki-invalid", "mx2.example.com", "192.0.2.2", 2),
                            f("sts-webpki-invalid", "mx2.example.com", "192.0.2.3", 1),
                        ],
                    ),
                    (
                        "tlsa".into(),
                        5,
                        1,
                        vec![f("tlsa-invalid", "mx1.example.com", "-", 1)],
                    ),
                ]),
            ),
            (
                "EXAMPLE.com.",
                "2024-05-02",
                Some(vec![(
                    "tlsa".into(),
                    1,
                    2,
                    vec![f(
                        "certificate-not-trusted",
                        "mx1.example.com",
                        "192.0.2.1",
                        2,
                    )],
                )]),
            ),
            (
                "other.test",
                "2024-05-01",
                Some(vec![("no-policy-found".into(), 1, 0, vec![])]),
            ),
            ("other.test", "2024-05-02", None),
            ("reports.test", "2024-05-01", None),
            ("example.com", "2024-04-30", None),
        ];
        for (domain, day, want) in cases {
            let got = aggregate_of(&all, domain, d(day));
            let Some(agg) = got else {
                assert!(want.is_none(), "{domain} {day}: no report, want {want:?}");
                continue;
            };
            let want = want.unwrap_or_else(|| panic!("{domain} {day}: unexpected {agg:?}"));
            for p in &agg.policies {
                assert_eq!(p.failed, p.failures.iter().map(|f| f.count).sum::<u32>());
            }
            let id = report_id(agg.day, &agg.policy_domain, "relay.example.org");
            let report = build_report(&agg, "Example Org", "mailto:tlsrpt@example.org", &id);
            let json = report_json(&report);
            assert_eq!(summarize(&json), want, "{domain} {day}: {json}");
        }
    }

    #[test]
    fn report_fields_and_round_trip() {
        let all = outcomes();
        let day = d("2024-05-01");
        let agg = aggregate_of(&all, "example.com", day).unwrap();
        let id = report_id(day, &agg.policy_domain, "relay.example.org");
        assert_eq!(id, "20240501.example.com@relay.example.org");
        let report = build_report(&agg, "Example Org", "mailto:tlsrpt@example.org", &id);
        let json = report_json(&report);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["organization-name"], "Example Org");
        assert_eq!(v["contact-info"], "mailto:tlsrpt@example.org");
        assert_eq!(v["report-id"], id.as_str());
        assert_eq!(v["date-range"]["start-datetime"], "2024-05-01T00:00:00Z");
        assert_eq!(v["date-range"]["end-datetime"], "2024-05-01T23:59:59Z");
        assert!(!json.contains("null"), "{json}");
        let sts = &v["policies"][1];
        assert_eq!(sts["policy"]["policy-type"], "sts");
        assert_eq!(sts["policy"]["policy-domain"], "example.com");
        assert_eq!(sts["policy"]["policy-string"], serde_json::json!(STS));
        assert_eq!(
            sts["policy"]["mx-host"],
            serde_json::json!(["*.example.com"])
        );
        assert_eq!(sts["failure-details"][0]["sending-mta-ip"], SENDER);
        let tlsa = &v["policies"][2];
        assert_eq!(tlsa["policy"]["policy-string"], serde_json::json!([TLSA]));
        assert!(tlsa["policy"].get("mx-host").is_none());
        let none = &v["policies"][0];
        assert!(none["policy"].get("policy-string").is_none());
        // The fetch failure came before any host: no host, no addresses.
        let fetch = &none["failure-details"][2];
        assert_eq!(fetch["result-type"], "sts-policy-fetch-error");
        assert!(fetch.get("receiving-mx-hostname").is_none());
        assert!(fetch.get("sending-mta-ip").is_none());

        // mail-auth's parser reads back exactly what was built.
        let parsed = TlsReport::parse_json(json.as_bytes()).unwrap();
        assert_eq!(parsed, report);
        let counts: Vec<(u32, u32)> = parsed
            .policies
            .iter()
            .map(|p| (p.summary.total_success, p.summary.total_failure))
            .collect();
        assert_eq!(counts, [(1, 3), (1, 3), (5, 1)]);

        // The gzip decodes to the same JSON.
        let gz = gzip(json.as_bytes()).unwrap();
        assert_eq!(&gz[..2], &[0x1f, 0x8b]);
        let mut back = String::new();
        mail_auth::flate2::read::GzDecoder::new(&gz[..])
            .read_to_string(&mut back)
            .unwrap();
        assert_eq!(back, json);

        // The email.
        let msg = report_message(
            &report,
            "example.com",
            "relay.example.org",
            "tlsrpt-noreply@example.org",
            &["tlsrpt@example.com", "tls@reports.example.net"],
            &gz,
        )
        .unwrap();
        assert_eq!(
            TlsReport::parse_rfc5322(&msg, 1 << 20).unwrap(),
            report,
            "mail-auth reads the report back from the email"
        );
        let text = String::from_utf8_lossy(&msg);
        assert!(
            text.contains("TLS-Report-Domain: example.com\r\n"),
            "{text}"
        );
        assert!(
            text.contains("TLS-Report-Submitter: relay.example.org\r\n"),
            "{text}"
        );
        let parsed = MessageParser::default().parse(&msg).unwrap();
        assert_eq!(
            parsed.subject(),
            Some(
                "Report Domain: example.com Submitter: relay.example.org \
                 Report-ID: <20240501.example.com@relay.example.org>"
            )
        );
        let ct = parsed.content_type().unwrap();
        assert_eq!((ct.ctype(), ct.subtype()), ("multipart", Some("report")));
        assert_eq!(ct.attribute("report-type"), Some("tlsrpt"));
        assert_eq!(parsed.to().unwrap().iter().count(), 2);
        assert_eq!(
            parsed.from().unwrap().first().unwrap().address(),
            Some("tlsrpt-noreply@example.org")
        );
        assert!(parsed.text_body.len() == 1, "a text part");
        let att = parsed.attachment(0).unwrap();
        assert_eq!(
            att.content_type().map(|c| (c.ctype(), c.subtype())),
            Some(("application", Some("tlsrpt+gzip")))
        );
        let start = day_start(day);
        let name = format!(
            "relay.example.org!example.com!{start}!{}.json.gz",
            start + 86399
        );
        assert_eq!(att.attachment_name(), Some(name.as_str()));
        assert_eq!(
            report_filename(&report, "relay.example.org", "example.com"),
            name
        );
        assert_eq!(att.contents(), &gz[..]);
    }

    #[test]
    fn sessions_group_by_a_label() {
        let day = "2024-05-01";
        let rec = |domain: &str| {
            outcome(
                day,
                domain,
                "mx.xn--bcher-kva.example",
                Some("192.0.2.1"),
                PolicyType::NoPolicyFound,
                None,
            )
        };
        let mut report_mail = rec("report-only.example");
        report_mail.report_mail = true;
        let records = vec![
            rec("bücher.example"),
            rec("BÜCHER.example."),
            rec("xn--bcher-kva.example"),
            rec("XN--BCHER-KVA.EXAMPLE"),
            rec("not a domain!"),
            rec(""),
            report_mail,
        ];
        let groups: Vec<(String, usize)> = sessions_by_domain(&records, d(day))
            .into_iter()
            .map(|(k, v)| (format!("{k:?}"), v.len()))
            .collect();
        let invalid = |text: &str| match pd(text) {
            PolicyDomain::Invalid { .. } => format!("{:?}", pd(text)),
            valid => panic!("{valid:?} should be invalid"),
        };
        assert_eq!(
            groups,
            [
                (format!("{:?}", pd("xn--bcher-kva.example")), 4),
                (invalid(""), 1),
                (invalid("not a domain!"), 1),
            ]
        );
        let agg = aggregate_of(&records, "bücher.example", d(day)).unwrap();
        assert_eq!(agg.policy_domain.as_str(), "xn--bcher-kva.example");
        assert_eq!(agg.policies[0].successful, 4);
    }

    #[test]
    fn old_outcome_lines_still_parse() {
        let line = r#"{"time":1714525200,"queue_id":"q","domain":"example.com","mx_host":"mx","addr":"192.0.2.1","policy":"sts","auth":"verify","tls_ok":true,"result":null,"report_mail":false,"detail":""}"#;
        let o: Outcome = serde_json::from_str(line).unwrap();
        assert_eq!(o.sending_ip, None);
        assert!(o.policy_strings.is_empty() && o.mx_patterns.is_empty());
    }

    // -- markers ------------------------------------------------------------------

    #[test]
    fn marker_names() {
        for (domain, want) in [
            ("example.com", "example.com"),
            ("Example.COM.", "example.com"),
            ("a/b", "a%2Fb"),
            ("..", "%2E."),
            (".a.b", "%2Ea.b"),
            (".hidden", "%2Ehidden"),
            ("", "%00"),
            ("bücher.example", "xn--bcher-kva.example"),
            ("a_b.example", "a_b.example"),
            ("Not A Domain!", "not%20a%20domain%21"),
        ] {
            assert_eq!(marker_name(&pd(domain)), want, "{domain:?}");
        }
    }

    #[test]
    fn pending_and_markers_survive_a_crash() {
        let tmp = tempfile::tempdir().unwrap();
        let log = OutcomeLog::open(&tmp.path().join("outcomes")).unwrap();
        let state = tmp.path().join("tlsrpt");
        for o in outcomes() {
            log.append(&o).unwrap();
        }
        // Today's sessions are not reported yet.
        log.append(&outcome(
            "2024-05-03",
            "today.test",
            "mx",
            Some("192.0.2.1"),
            PolicyType::NoPolicyFound,
            None,
        ))
        .unwrap();
        let today = d("2024-05-03");
        let all = |v: &[(&str, &str)]| -> Vec<(NaiveDate, PolicyDomain)> {
            v.iter().map(|(day, dom)| (d(day), pd(dom))).collect()
        };
        let pending = pending_reports(&log, &state, today).unwrap();
        assert_eq!(
            pending,
            all(&[
                ("2024-05-01", "example.com"),
                ("2024-05-01", "other.test"),
                ("2024-05-02", "example.com"),
            ])
        );

        // Build and "send" the first report, then crash before the marker.
        let build = || {
            let records = log.read_day("2024-05-01").unwrap();
            let agg = aggregate_of(&records, "example.com", d("2024-05-01")).unwrap();
            let id = report_id(agg.day, &agg.policy_domain, "relay.example.org");
            report_json(&build_report(&agg, "Org", "mailto:x@example.org", &id))
        };
        let sent = build();
        // A crash while writing the marker leaves only a temporary file.
        let day_dir = state.join("sent").join("2024-05-01");
        fs::create_dir_all(&day_dir).unwrap();
        fs::write(day_dir.join(".example.com.tmp.4242"), "partial").unwrap();
        // After the restart: listed again, and rebuilt identically (same counts, same id).
        let pending = pending_reports(&log, &state, today).unwrap();
        assert_eq!(pending[0], (d("2024-05-01"), pd("example.com")));
        assert_eq!(build(), sent);

        // Sent again, and this time marked: never listed again.
        mark_done(
            &state,
            d("2024-05-01"),
            &pd("example.com"),
            "report-id x; mailto:a@example.com",
        )
        .unwrap();
        assert!(is_done(&state, d("2024-05-01"), &pd("Example.com.")).unwrap());
        assert_eq!(
            fs::read_to_string(day_dir.join("example.com")).unwrap(),
            "report-id x; mailto:a@example.com\n"
        );
        let pending = pending_reports(&log, &state, today).unwrap();
        assert_eq!(
            pending,
            all(&[("2024-05-01", "other.test"), ("2024-05-02", "example.com")])
        );

        // Marking again (the re-send case) is harmless.
        mark_done(&state, d("2024-05-01"), &pd("example.com"), "again").unwrap();
        mark_done(
            &state,
            d("2024-05-01"),
            &pd("other.test"),
            "no TLSRPT record",
        )
        .unwrap();
        mark_done(&state, d("2024-05-02"), &pd("example.com"), "sent").unwrap();
        assert!(pending_reports(&log, &state, today).unwrap().is_empty());
        // The next day, yesterday's domain shows up.
        assert_eq!(
            pending_reports(&log, &state, d("2024-05-04")).unwrap(),
            all(&[("2024-05-03", "today.test")])
        );
    }
}
