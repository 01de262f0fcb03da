//! The readiness check before cutover: `tlsrelay check --from-postfix-log FILE`
//! or `--domains-file FILE` runs [`check::run`] with `--probe` on many domains
//! at once (a bound of `--parallel`), and prints one line per domain and a summary.
//!
//! Reading Postfix's log is the pure [`tally_postfix_log`]: a destination
//! domain's count is the number of distinct queued messages (queue ids) with at
//! least one recipient there that an `smtp` or `lmtp` delivery agent logged as
//! `sent`, `deferred` or `bounced`. A message with three recipients at one
//! domain counts once there (and three times under `recipients`); a deferred
//! message retried ten times counts once. Local, `discard`, `error` and
//! `virtual` deliveries are not outbound mail and are not counted.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use futures_util::stream::{self, StreamExt};
use serde::{Serialize, Serializer};

use super::check::{self, HostReport, Report, VerdictKind};
use crate::config::Config;
use crate::model::domain::Domain;
use crate::model::mechanism::Mechanism;
use crate::model::metric::MECHANISMS;
use crate::policy::local::PolicySet;
use crate::resolve::dns::Dns;
use crate::resolve::mta_sts::MtaSts;

/// How many domains are probed at once when `--parallel` is not given.
pub const DEFAULT_PARALLEL: usize = 8;

/// What a Postfix delivery agent said of one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStatus {
    /// `status=sent`.
    Sent,
    /// `status=deferred`.
    Deferred,
    /// `status=bounced`.
    Bounced,
}

/// One recipient's delivery line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogDelivery {
    /// The Postfix queue id.
    pub queue_id: String,
    /// The recipient as logged.
    pub recipient: String,
    /// The recipient's domain (lower-case A-labels).
    pub domain: Domain,
    /// The status word.
    pub status: LogStatus,
}

/// What one log line is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogLine {
    /// An `smtp`/`lmtp` delivery line with a recipient at a domain.
    Delivery(LogDelivery),
    /// A delivery line whose recipient has no usable domain (e.g. `user@[192.0.2.1]`).
    BadRecipient(String),
    /// Anything else: other Postfix lines, other programs, other statuses.
    Other,
}

/// The Postfix programs whose deliveries leave the machine.
const OUTBOUND_AGENTS: [&str; 2] = ["smtp", "lmtp"];

/// Reads one line of a Postfix log. Pure.
///
/// The syslog prefix may be traditional (`Dec  2 05:00:00 host`), RFC 3339
/// (`2026-12-02T05:00:00.123+00:00 host`) or Postfix's own `maillog_file`
/// form; the program tag is the first word shaped `NAME[PID]:` whose NAME
/// starts with `postfix` (`postfix/smtp`, `postfix-out/smtp`, `postfix/relay/smtp`).
pub fn parse_postfix_line(line: &str) -> LogLine {
    let Some((tag, rest)) = program_tag(line) else {
        return LogLine::Other;
    };
    let program = tag.rsplit('/').next().unwrap_or_default();
    if !tag.starts_with("postfix") || !tag.contains('/') || !OUTBOUND_AGENTS.contains(&program) {
        return LogLine::Other;
    }
    let Some((queue_id, rest)) = rest.split_once(": to=<") else {
        return LogLine::Other;
    };
    if queue_id.len() < 5 || !queue_id.chars().all(|c| c.is_ascii_alphanumeric()) {
        return LogLine::Other;
    }
    let Some((recipient, rest)) = rest.split_once(">, ") else {
        return LogLine::Other;
    };
    let status = match status_word(rest) {
        Some("sent") => LogStatus::Sent,
        Some("deferred") => LogStatus::Deferred,
        Some("bounced") => LogStatus::Bounced,
        _ => return LogLine::Other,
    };
    let Some((_, domain)) = recipient.rsplit_once('@') else {
        return LogLine::BadRecipient(recipient.to_string());
    };
    match Domain::parse(domain) {
        Ok(domain) => LogLine::Delivery(LogDelivery {
            queue_id: queue_id.to_string(),
            recipient: recipient.to_string(),
            domain,
            status,
        }),
        Err(_) => LogLine::BadRecipient(recipient.to_string()),
    }
}

/// The program tag (`postfix/smtp`) and the text after `[PID]: `, from the
/// first word shaped `NAME[PID]:` among the first few.
fn program_tag(line: &str) -> Option<(&str, &str)> {
    let mut rest = line;
    for _ in 0..6 {
        rest = rest.trim_start();
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let (word, after) = rest.split_at(end);
        if let Some(body) = word.strip_suffix("]:") {
            if let Some((name, pid)) = body.split_once('[') {
                if !name.is_empty() && !pid.is_empty() && pid.chars().all(|c| c.is_ascii_digit()) {
                    return Some((name, after.trim_start()));
                }
            }
        }
        if after.is_empty() {
            return None;
        }
        rest = after;
    }
    None
}

/// The word after `status=` in the fields of a delivery line.
fn status_word(fields: &str) -> Option<&str> {
    let at = fields.find("status=")?;
    let word = &fields[at + "status=".len()..];
    Some(word.split([' ', ',']).next().unwrap_or_default())
}

/// A destination domain and how much mail went there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SeenDomain {
    /// The domain (lower-case A-labels).
    #[serde(serialize_with = "as_str")]
    pub domain: Domain,
    /// Distinct messages (queue ids) with a recipient there.
    pub messages: u64,
    /// Distinct recipients (queue id and address) there.
    pub recipients: u64,
}

/// What a Postfix log says about outbound mail.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogTally {
    /// Domains, most messages first (then by name).
    pub domains: Vec<SeenDomain>,
    /// Delivery lines counted.
    pub delivery_lines: usize,
    /// Recipients of delivery lines that name no usable domain.
    pub bad_recipients: Vec<String>,
}

/// Counts a whole Postfix log. Pure.
pub fn tally_postfix_log(text: &str) -> LogTally {
    let mut messages: BTreeMap<Domain, BTreeSet<String>> = BTreeMap::new();
    let mut recipients: BTreeMap<Domain, BTreeSet<(String, String)>> = BTreeMap::new();
    let mut tally = LogTally::default();
    for line in text.lines() {
        match parse_postfix_line(line) {
            LogLine::Delivery(d) => {
                tally.delivery_lines += 1;
                let rcpt = (d.queue_id.clone(), d.recipient.to_ascii_lowercase());
                recipients.entry(d.domain.clone()).or_default().insert(rcpt);
                messages.entry(d.domain).or_default().insert(d.queue_id);
            }
            LogLine::BadRecipient(r) => tally.bad_recipients.push(r),
            LogLine::Other => {}
        }
    }
    tally.domains = messages
        .into_iter()
        .map(|(domain, ids)| SeenDomain {
            recipients: recipients.get(&domain).map_or(0, |r| r.len() as u64),
            messages: ids.len() as u64,
            domain,
        })
        .collect();
    tally
        .domains
        .sort_by(|a, b| b.messages.cmp(&a.messages).then(a.domain.cmp(&b.domain)));
    tally
}

/// A domain to check and, when known, the messages seen for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The domain.
    pub domain: Domain,
    /// Messages seen (from a log, or the count in a domains file).
    pub messages: Option<u64>,
}

/// Reads a domains file: one domain a line, optionally followed by a message
/// count; `#` starts a comment. A domain listed twice is checked once (counts add up).
/// Errors name the line and what would be valid. Pure.
pub fn parse_domains_file(text: &str) -> Result<Vec<Target>, String> {
    let mut targets: Vec<Target> = vec![];
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let mut words = line.split_whitespace();
        let name = words.next().unwrap_or_default();
        let domain = Domain::parse(name).map_err(|e| {
            format!(
                "line {}: {e}; write one domain a line, e.g. \"example.com 120\"",
                i + 1
            )
        })?;
        let messages = match (words.next(), words.next()) {
            (None, _) => None,
            (Some(n), None) => Some(n.parse::<u64>().map_err(|_| {
                format!(
                    "line {}: `{n}` is not a message count; write a whole number after the domain",
                    i + 1
                )
            })?),
            (Some(_), Some(_)) => {
                return Err(format!(
                    "line {}: too many words; write a domain and at most a message count",
                    i + 1
                ))
            }
        };
        match targets.iter_mut().find(|t| t.domain == domain) {
            Some(t) => t.messages = add_counts(t.messages, messages),
            None => targets.push(Target { domain, messages }),
        }
    }
    Ok(targets)
}

/// Two optional counts added; unknown only when both are.
fn add_counts(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
    }
}

/// One line of the readiness table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Row {
    /// The domain (ASCII form).
    pub domain: String,
    /// Messages seen, when known.
    pub messages: Option<u64>,
    /// The mechanism that would authenticate delivery (of the host that passed,
    /// else of the first host that would be contacted).
    #[serde(serialize_with = "mechanism_str")]
    pub mechanism: Option<Mechanism>,
    /// Whether tlsrelay can deliver there now.
    pub deliverable: bool,
    /// What the verdict rests on.
    pub verdict_kind: VerdictKind,
    /// Why, in one line.
    pub why: String,
}

/// The whole readiness result, also its `--json` form.
#[derive(Debug, Clone, Serialize)]
pub struct Readiness {
    /// One row per domain, in the order given (most messages first from a log).
    pub domains: Vec<Row>,
    /// The totals.
    pub summary: Summary,
}

/// Totals of a readiness run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Domains checked.
    pub domains: usize,
    /// Domains tlsrelay can deliver to.
    pub deliverable: usize,
    /// Domains it cannot deliver to now.
    pub not_deliverable: usize,
    /// Messages seen in all (domains with a known count).
    pub messages: u64,
    /// Messages seen for deliverable domains.
    pub messages_deliverable: u64,
    /// Deliverable domains per mechanism (`dane`, `mta-sts`, ...).
    pub by_mechanism: BTreeMap<String, usize>,
}

fn as_str<S: Serializer>(d: &Domain, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(d.as_str())
}

fn mechanism_str<S: Serializer>(m: &Option<Mechanism>, s: S) -> Result<S::Ok, S::Error> {
    match m {
        Some(m) => s.serialize_str(m.as_str()),
        None => s.serialize_none(),
    }
}

/// The mechanism named by a `check` label.
fn mechanism_of(label: Option<&str>) -> Option<Mechanism> {
    MECHANISMS.into_iter().find(|m| Some(m.as_str()) == label)
}

/// The table row of one `check --probe` report. Pure.
pub fn row_of(report: &Report, messages: Option<u64>) -> Row {
    let passed =
        (report.hosts.iter()).find(|h| h.probe.as_ref().is_some_and(|p| p.satisfies_requirement));
    let first_usable = report.hosts.iter().find(|h| h.usable);
    let mechanism = mechanism_of(passed.or(first_usable).and_then(|h| h.mechanism.as_deref()));
    let why = match (report.verdict_kind, passed, first_usable) {
        (VerdictKind::ProbePassed | VerdictKind::PolicyAllows, Some(h), _) => {
            format!(
                "{}: meets the {} requirement",
                h.host,
                h.mechanism.as_deref().unwrap_or("?")
            )
        }
        (VerdictKind::ProbeFailed, _, Some(h)) => format!("{}: {}", h.host, probe_failure(h)),
        // With --probe a domain whose hosts may not be contacted is "probe failed" too.
        (VerdictKind::NoUsableHost | VerdictKind::ProbeFailed, _, None) => {
            match report.hosts.first() {
                Some(h) => format!("{}: {}", h.host, h.requirement),
                None => report.verdict.clone(),
            }
        }
        (VerdictKind::Refused | VerdictKind::Deferred, _, _) => report.mx.clone(),
        _ => report.verdict.clone(),
    };
    Row {
        domain: report.domain.clone(),
        messages,
        mechanism,
        deliverable: report.deliverable,
        verdict_kind: report.verdict_kind,
        why: crate::model::visible::visible(&why).into_owned(),
    }
}

/// Why a probed host failed its requirement, in the words of the rule that applied.
fn probe_failure(h: &HostReport) -> String {
    let Some(p) = &h.probe else {
        return "not probed".into();
    };
    if p.tls_version.is_none() {
        return p.result.clone();
    }
    let judged = match h.mechanism.as_deref() {
        Some("dane") => p.dane.as_ref().map(|d| format!("DANE {d}")),
        Some("mta-sts") => p.mta_sts.as_ref().map(|s| format!("MTA-STS {s}")),
        Some("verify") => Some(format!("WebPKI {}", p.floor)),
        _ => None,
    };
    judged.unwrap_or_else(|| "the certificate does not meet the requirement".into())
}

/// The totals of some rows. Pure.
pub fn summarize(rows: &[Row]) -> Summary {
    let mut s = Summary {
        domains: rows.len(),
        ..Summary::default()
    };
    for r in rows {
        let n = r.messages.unwrap_or(0);
        s.messages += n;
        if r.deliverable {
            s.deliverable += 1;
            s.messages_deliverable += n;
            let m = r.mechanism.map_or("unknown", Mechanism::as_str);
            *s.by_mechanism.entry(m.to_string()).or_default() += 1;
        } else {
            s.not_deliverable += 1;
        }
    }
    s
}

/// Probes every target, at most `parallel` at once, keeping their order.
pub async fn check_all(
    config: &Config,
    dns: &Dns,
    sts: &MtaSts,
    policies: &PolicySet,
    targets: Vec<Target>,
    parallel: usize,
) -> Readiness {
    let domains: Vec<Row> = stream::iter(targets)
        .map(|t| async move {
            let report = check::run(config, dns, sts, policies, t.domain.as_str(), true).await;
            row_of(&report, t.messages)
        })
        .buffered(parallel.max(1))
        .collect()
        .await;
    Readiness {
        summary: summarize(&domains),
        domains,
    }
}

/// The table and the summary, for people.
pub fn render(r: &Readiness) -> String {
    let width = (r.domains.iter().map(|d| d.domain.len()))
        .max()
        .unwrap_or(0)
        .max("DOMAIN".len());
    let mut out = format!(
        "{:<width$}  {:>8}  {:<9}  {:<11}  WHY\n",
        "DOMAIN", "MESSAGES", "MECHANISM", "DELIVERABLE"
    );
    for d in &r.domains {
        let _ = writeln!(
            out,
            "{:<width$}  {:>8}  {:<9}  {:<11}  {}",
            d.domain,
            d.messages.map_or("-".into(), |n| n.to_string()),
            d.mechanism.map_or("-", Mechanism::as_str),
            if d.deliverable { "yes" } else { "NO" },
            d.why
        );
    }
    out.push_str(&render_summary(&r.summary));
    crate::model::visible::visible_lines(&out).into_owned()
}

/// The summary lines.
fn render_summary(s: &Summary) -> String {
    let by: Vec<String> = (s.by_mechanism.iter())
        .map(|(m, n)| format!("{m} {n}"))
        .collect();
    let mut out = format!(
        "\n{} domain(s): {} deliverable, {} not deliverable",
        s.domains, s.deliverable, s.not_deliverable
    );
    if s.messages > 0 {
        let _ = write!(
            out,
            "; {} of {} message(s) seen went to deliverable domains",
            s.messages_deliverable, s.messages
        );
    }
    out.push('\n');
    if !by.is_empty() {
        let _ = writeln!(out, "deliverable by mechanism: {}", by.join(", "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(queue_id: &str, recipient: &str, domain: &str, status: LogStatus) -> LogLine {
        LogLine::Delivery(LogDelivery {
            queue_id: queue_id.into(),
            recipient: recipient.into(),
            domain: Domain::parse(domain).unwrap(),
            status,
        })
    }

    #[test]
    fn postfix_lines() {
        use LogStatus::*;
        let tail = "relay=mx.example.com[192.0.2.1]:25, delay=1.2, delays=0.1/0/0.5/0.6, dsn=2.0.0";
        let cases: Vec<(String, LogLine)> = vec![
            (
                format!("Dec  2 05:00:00 host postfix/smtp[1]: 4ABC123: to=<user@example.com>, {tail}, status=sent (250 ok)"),
                delivery("4ABC123", "user@example.com", "example.com", Sent),
            ),
            (
                format!("Dec 02 05:24:09 org-mta postfix-org/smtp[5728]: 8FE8798C1BB: to=<later@bogus.test>, {tail}, status=deferred (450 4.3.0 busy)"),
                delivery("8FE8798C1BB", "later@bogus.test", "bogus.test", Deferred),
            ),
            (
                format!("2026-12-02T05:00:00.123456+00:00 mail postfix-instance/smtp[99]: 4dLwqN0mz8z9sQ6: to=<a@Example.NET>, {tail}, status=bounced (550 no)"),
                delivery("4dLwqN0mz8z9sQ6", "a@Example.NET", "example.net", Bounced),
            ),
            (
                format!("Dec  2 05:00:00 host postfix/lmtp[7]: 1A2B3C4D: to=<x@b\u{fc}cher.example>, orig_to=<y@alias.example>, {tail}, status=sent (250)"),
                delivery("1A2B3C4D", "x@b\u{fc}cher.example", "xn--bcher-kva.example", Sent),
            ),
            (
                format!("Dec  2 05:00:00 host postfix/relay/smtp[7]: 1A2B3C4D: to=<\"a@b\"@quoted.example>, {tail}, status=sent (250)"),
                delivery("1A2B3C4D", "\"a@b\"@quoted.example", "quoted.example", Sent),
            ),
            (
                format!("Dec  2 05:00:00 host postfix/smtp[1]: 4ABC123: to=<user@[192.0.2.1]>, {tail}, status=sent (250)"),
                LogLine::BadRecipient("user@[192.0.2.1]".into()),
            ),
            (
                "Dec  2 05:00:00 host postfix/qmgr[2]: 4ABC123: from=<s@example.org>, size=100, nrcpt=2 (queue active)".into(),
                LogLine::Other,
            ),
            (
                format!("Dec  2 05:00:00 host postfix/local[3]: 4ABC123: to=<root@host.example>, {tail}, status=sent (delivered to mailbox)"),
                LogLine::Other,
            ),
            (
                format!("Dec  2 05:00:00 host postfix/discard[3]: 4ABC123: to=<s@org.example>, {tail}, status=sent (org.example)"),
                LogLine::Other,
            ),
            (
                format!("Dec  2 05:00:00 host postfix/smtp[1]: 4ABC123: to=<user@example.com>, {tail}, status=deliverable (verify)"),
                LogLine::Other,
            ),
            (
                format!("Dec  2 05:00:00 host sshd[12]: postfix/smtp[1]: 4ABC123: to=<user@example.com>, {tail}, status=sent"),
                LogLine::Other,
            ),
            (
                format!("Dec  2 05:00:00 host exim[1]: 4ABC123: to=<user@example.com>, {tail}, status=sent"),
                LogLine::Other,
            ),
            (
                "Dec  2 05:00:00 host postfix/smtp[1]: warning: TLS library problem".into(),
                LogLine::Other,
            ),
            ("".into(), LogLine::Other),
            ("garbage without a tag".into(), LogLine::Other),
        ];
        for (line, want) in cases {
            assert_eq!(parse_postfix_line(&line), want, "{line}");
        }
    }

    #[test]
    fn tally_counts_messages_once_per_domain() {
        let tail = "relay=r, delay=0, dsn=2.0.0";
        let log = [
            format!("Dec  2 05:00:00 h postfix/smtp[1]: AAAAA1: to=<a@one.example>, {tail}, status=sent (ok)"),
            format!("Dec  2 05:00:00 h postfix/smtp[1]: AAAAA1: to=<b@one.example>, {tail}, status=sent (ok)"),
            format!("Dec  2 05:00:00 h postfix/smtp[1]: AAAAA1: to=<c@two.example>, {tail}, status=sent (ok)"),
            format!("Dec  2 05:00:00 h postfix/smtp[1]: BBBBB2: to=<a@ONE.example>, {tail}, status=deferred (x)"),
            format!("Dec  2 05:10:00 h postfix/smtp[1]: BBBBB2: to=<A@one.example>, {tail}, status=sent (ok)"),
            format!("Dec  2 05:10:00 h postfix/smtp[1]: CCCCC3: to=<x@[192.0.2.1]>, {tail}, status=sent (ok)"),
            "Dec  2 05:10:00 h postfix/qmgr[1]: CCCCC3: removed".to_string(),
        ]
        .join("\n");
        let t = tally_postfix_log(&log);
        let seen = |d: &str, m: u64, r: u64| SeenDomain {
            domain: Domain::parse(d).unwrap(),
            messages: m,
            recipients: r,
        };
        assert_eq!(
            t.domains,
            vec![seen("one.example", 2, 3), seen("two.example", 1, 1)]
        );
        assert_eq!(t.delivery_lines, 5);
        assert_eq!(t.bad_recipients, vec!["x@[192.0.2.1]".to_string()]);
    }

    #[test]
    fn domains_files() {
        let t = |d: &str, n: Option<u64>| Target {
            domain: Domain::parse(d).unwrap(),
            messages: n,
        };
        let ok = parse_domains_file("# partners\nExample.COM 12\n\nb\u{fc}cher.example\nexample.com 3 # again\nplain.example\n");
        assert_eq!(
            ok.unwrap(),
            vec![
                t("example.com", Some(15)),
                t("xn--bcher-kva.example", None),
                t("plain.example", None)
            ]
        );
        let bad = [
            ("ok.example\nnot a domain!\n", "line 2"),
            ("ok.example ten\n", "line 1: `ten` is not a message count"),
            ("ok.example 1 2\n", "too many words"),
        ];
        for (text, want) in bad {
            let err = parse_domains_file(text).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn summary_counts_messages_of_deliverable_domains() {
        let row = |d: &str, n: Option<u64>, m: Option<Mechanism>, ok: bool| Row {
            domain: d.into(),
            messages: n,
            mechanism: m,
            deliverable: ok,
            verdict_kind: if ok {
                VerdictKind::ProbePassed
            } else {
                VerdictKind::ProbeFailed
            },
            why: String::new(),
        };
        let rows = [
            row("a", Some(5), Some(Mechanism::Dane), true),
            row("b", Some(3), Some(Mechanism::Dane), true),
            row("c", Some(2), Some(Mechanism::Verify), false),
            row("d", None, Some(Mechanism::MtaSts), true),
        ];
        let s = summarize(&rows);
        assert_eq!((s.domains, s.deliverable, s.not_deliverable), (4, 3, 1));
        assert_eq!((s.messages, s.messages_deliverable), (10, 8));
        assert_eq!(s.by_mechanism.get("dane"), Some(&2));
        assert_eq!(s.by_mechanism.get("mta-sts"), Some(&1));
        assert_eq!(s.by_mechanism.get("verify"), None);
        let text = render(&Readiness {
            domains: rows.to_vec(),
            summary: s,
        });
        assert!(
            text.contains("4 domain(s): 3 deliverable, 1 not deliverable; 8 of 10 message(s)"),
            "{text}"
        );
        assert!(
            text.contains("deliverable by mechanism: dane 2, mta-sts 1"),
            "{text}"
        );
    }
}
