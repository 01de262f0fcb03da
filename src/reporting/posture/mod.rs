//! The posture report: how mail left over the last days, per destination
//! domain and in all, from the receipts (deliveries) and the outcome records
//! (refusals, in RFC 8460 result types). Pure: the caller reads the files.
//!
//! JSON shape (version 1), stable: every mechanism and every count is present
//! even when zero, so that a consumer can index without checks.
//!
//! ```text
//! { "version": 1, "generated": RFC 3339, "since": "YYYY-MM-DD", "until": "YYYY-MM-DD", "days": N,
//!   "totals": Counts + { "authenticated_messages": n, "authenticated_percent": p },
//!   "domains": [ Counts + { "domain": "a-label", "state": null | State } ],   (most messages first)
//!   "early_warnings": [ { "domain", "kind", "message" } ] }
//! Counts = { "messages", "recipients",
//!            "mechanisms": [ { "mechanism": "dane"|…, "recipients", "percent" } ] (all five, fixed order),
//!            "tls_versions": { "TLSv1.3": n, … }, "refusals": { "<rfc8460 type>": n, … } }
//! ```
//!
//! "Authenticated" is DANE, MTA-STS or WebPKI (`verify`): a message counts when
//! every recipient of it was delivered so. Local policies are shown apart (they
//! range from a pin to `encrypt`). TLS reports the relay sends itself (waiver
//! "TLS report") are not counted.

pub mod html;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use super::outcome::{Outcome, SessionResult};
use super::receipts::Receipt;
use crate::model::mechanism::Mechanism;

/// The whole report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Posture {
    /// The shape's version (1).
    pub version: u32,
    /// When it was made (RFC 3339).
    pub generated: String,
    /// First UTC day covered.
    pub since: String,
    /// Last UTC day covered.
    pub until: String,
    /// Days covered.
    pub days: u32,
    /// Fleet totals.
    pub totals: Totals,
    /// Per destination domain, most messages first.
    pub domains: Vec<DomainPosture>,
    /// Early warnings (expiring certificates, policy changes), filled by the caller; empty by default.
    pub early_warnings: Vec<EarlyWarning>,
}

/// Counts shared by the totals and each domain.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Counts {
    /// Distinct messages (queue ids) delivered.
    pub messages: u64,
    /// Recipients delivered.
    pub recipients: u64,
    /// Recipients by mechanism, every mechanism in [`Mechanism::ALL`] order.
    pub mechanisms: Vec<MechanismShare>,
    /// Recipients by TLS version.
    pub tls_versions: BTreeMap<String, u64>,
    /// Refused TLS sessions by RFC 8460 result type.
    pub refusals: BTreeMap<String, u64>,
}

/// One mechanism's share of the recipients.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MechanismShare {
    /// The mechanism.
    pub mechanism: Mechanism,
    /// Recipients delivered under it.
    pub recipients: u64,
    /// Percent of all recipients (one decimal).
    pub percent: f64,
}

/// The fleet totals.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Totals {
    /// The counts over every domain.
    #[serde(flatten)]
    pub counts: Counts,
    /// Messages every recipient of which went by DANE, MTA-STS or WebPKI.
    pub authenticated_messages: u64,
    /// Their percent of all messages (one decimal).
    pub authenticated_percent: f64,
}

/// One destination domain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DomainPosture {
    /// The domain (A-label).
    pub domain: String,
    /// Its counts.
    #[serde(flatten)]
    pub counts: Counts,
    /// Its DNS/MTA-STS state now (`--live`), else null.
    pub state: Option<DomainState>,
}

/// What DNS and MTA-STS say about a domain now (from `tlsrelay check`'s lookups).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DomainState {
    /// DNSSEC status of the MX answer.
    pub mx_dnssec: Option<String>,
    /// MX hosts, and how many of them DANE would authenticate.
    pub hosts: usize,
    /// Hosts with usable TLSA records.
    pub dane_hosts: usize,
    /// The MTA-STS mode in force, or the discovery problem.
    pub mta_sts: Option<String>,
    /// The local policy deciding for the domain.
    pub local_policy: Option<String>,
    /// `check`'s verdict kind (`policy-allows`, `no-usable-host`, …).
    pub verdict: String,
}

/// An early warning about a destination (filled by the readiness checks).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EarlyWarning {
    /// The domain concerned.
    pub domain: String,
    /// A fixed word for the kind of warning.
    pub kind: String,
    /// The warning in words.
    pub message: String,
}

/// The latest early warnings kept in the spool (`warnings.json`), as the report lists them.
pub fn early_warnings(spool_dir: &std::path::Path) -> Vec<EarlyWarning> {
    let latest = crate::reporting::early_warning::load_latest(spool_dir);
    let Ok(Some(file)) = latest else {
        return vec![];
    };
    file.warnings
        .into_iter()
        .map(|w| EarlyWarning {
            domain: w.domain,
            kind: w.kind.label().to_string(),
            message: format!("{}: {}", w.host, w.detail),
        })
        .collect()
}

/// Whether a mechanism counts as authenticated in the headline.
pub fn authenticates(m: Mechanism) -> bool {
    matches!(m, Mechanism::Dane | Mechanism::MtaSts | Mechanism::Verify)
}

/// Percent with one decimal; 0 of 0 is 0.
fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        return 0.0;
    }
    (part as f64 * 1000.0 / whole as f64).round() / 10.0
}

/// Counts being gathered for one domain or the fleet.
#[derive(Default)]
struct Tally {
    messages: BTreeSet<String>,
    recipients: u64,
    mechanisms: HashMap<Mechanism, u64>,
    tls_versions: BTreeMap<String, u64>,
    refusals: BTreeMap<String, u64>,
}

impl Tally {
    fn add(&mut self, r: &Receipt) {
        self.messages.insert(r.queue_id.clone());
        self.recipients += 1;
        *self.mechanisms.entry(r.mechanism).or_default() += 1;
        *self.tls_versions.entry(r.tls_version.clone()).or_default() += 1;
    }

    fn counts(self) -> Counts {
        let mechanisms = (Mechanism::ALL.iter())
            .map(|&m| {
                let n = self.mechanisms.get(&m).copied().unwrap_or(0);
                MechanismShare {
                    mechanism: m,
                    recipients: n,
                    percent: percent(n, self.recipients),
                }
            })
            .collect();
        Counts {
            messages: self.messages.len() as u64,
            recipients: self.recipients,
            mechanisms,
            tls_versions: self.tls_versions,
            refusals: self.refusals,
        }
    }
}

/// The period a report covers, and when it was made.
#[derive(Debug, Clone)]
pub struct Period {
    /// When (RFC 3339).
    pub generated: String,
    /// First day.
    pub since: String,
    /// Last day.
    pub until: String,
    /// Days.
    pub days: u32,
}

/// The report over `receipts` and `outcomes` (already limited to the period).
pub fn build(
    period: Period,
    receipts: &[Receipt],
    outcomes: &[Outcome],
    early_warnings: Vec<EarlyWarning>,
) -> Posture {
    let mut fleet = Tally::default();
    let mut domains: BTreeMap<String, Tally> = BTreeMap::new();
    let mut weak_messages: BTreeSet<&str> = BTreeSet::new();
    let report_mail = crate::model::mechanism::TlsDemand::ReportMail.waiver();
    // TLS reports go out with relaxed authentication by design (RFC 8460 §5.3):
    // they are not the organisation's mail, so they are not counted.
    for r in receipts
        .iter()
        .filter(|r| r.policy.waiver.as_deref() != report_mail)
    {
        fleet.add(r);
        domains.entry(r.domain.clone()).or_default().add(r);
        if !authenticates(r.mechanism) {
            weak_messages.insert(&r.queue_id);
        }
    }
    for o in outcomes {
        let SessionResult::Failure(t) = o.session() else {
            continue;
        };
        let domain = o
            .policy_domain()
            .map_or_else(|_| o.domain.clone(), |d| d.to_string());
        let key = t.as_str().to_string();
        *fleet.refusals.entry(key.clone()).or_default() += 1;
        *domains
            .entry(domain)
            .or_default()
            .refusals
            .entry(key)
            .or_default() += 1;
    }
    let messages = fleet.messages.len() as u64;
    let authenticated = messages - weak_messages.len() as u64;
    let mut rows: Vec<DomainPosture> = (domains.into_iter())
        .map(|(domain, t)| DomainPosture {
            domain,
            counts: t.counts(),
            state: None,
        })
        .collect();
    rows.sort_by(|a, b| {
        (b.counts.messages, b.counts.refusals.values().sum::<u64>())
            .cmp(&(a.counts.messages, a.counts.refusals.values().sum::<u64>()))
            .then_with(|| a.domain.cmp(&b.domain))
    });
    Posture {
        version: 1,
        generated: period.generated,
        since: period.since,
        until: period.until,
        days: period.days,
        totals: Totals {
            counts: fleet.counts(),
            authenticated_messages: authenticated,
            authenticated_percent: percent(authenticated, messages),
        },
        domains: rows,
        early_warnings,
    }
}

/// Reads the receipts and outcome records of the `days` UTC days up to and
/// including the day of `now` from the spool at `spool_dir`, and builds the report.
pub fn load(
    spool_dir: &std::path::Path,
    days: u32,
    now: chrono::DateTime<chrono::Utc>,
    early_warnings: Vec<EarlyWarning>,
) -> std::io::Result<Posture> {
    let until = now.date_naive();
    let since = until - chrono::Duration::days(i64::from(days.max(1)) - 1);
    let until_day = until.format("%Y-%m-%d").to_string();
    let receipts = super::receipts::read_since(&spool_dir.join("receipts"), Some(since), |r| {
        super::receipts::day_of(r.time) <= until_day
    })?;
    let outcome_dir = spool_dir.join("outcomes");
    let mut outcomes = Vec::new();
    if outcome_dir.is_dir() {
        let log = super::outcome::OutcomeLog::open(&outcome_dir)?;
        for day in log.days()? {
            let date = chrono::NaiveDate::parse_from_str(&day, "%Y-%m-%d").ok();
            if date.is_some_and(|d| d >= since && d <= until) {
                outcomes.extend(log.read_day(&day)?);
            }
        }
    }
    let fmt = |d: chrono::NaiveDate| d.format("%Y-%m-%d").to_string();
    let period = Period {
        generated: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        since: fmt(since),
        until: fmt(until),
        days: days.max(1),
    };
    Ok(build(period, &receipts, &outcomes, early_warnings))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::rcpt::AppliedPolicy;
    use crate::model::rfc8460::{PolicyType, ResultType};

    #[test]
    fn early_warnings_come_from_the_latest_probe() {
        use crate::reporting::early_warning::{Warning, WarningKind, WarningsFile, FILE_NAME};
        let dir = tempfile::tempdir().unwrap();
        assert!(early_warnings(dir.path()).is_empty());
        let file = WarningsFile {
            time: 0,
            domains: vec!["a.example".into()],
            warnings: vec![Warning {
                domain: "a.example".into(),
                host: "mx.a.example".into(),
                kind: WarningKind::TlsaMismatch,
                detail: "no TLSA record matches".into(),
            }],
        };
        std::fs::write(
            dir.path().join(FILE_NAME),
            serde_json::to_vec(&file).unwrap(),
        )
        .unwrap();
        let got = early_warnings(dir.path());
        assert_eq!(got.len(), 1);
        assert_eq!(
            (got[0].domain.as_str(), got[0].kind.as_str()),
            ("a.example", "tlsa-mismatch")
        );
        assert_eq!(got[0].message, "mx.a.example: no TLSA record matches");
    }

    fn receipt(q: &str, rcpt: &str, m: Mechanism, v: &str) -> Receipt {
        Receipt {
            time: 0,
            queue_id: q.into(),
            message_id: None,
            sender: String::new(),
            recipient: rcpt.into(),
            domain: rcpt.rsplit('@').next().unwrap().into(),
            mx_host: String::new(),
            addr: None,
            tls_version: v.into(),
            cipher: String::new(),
            kx_group: String::new(),
            mechanism: m,
            spki_sha256: String::new(),
            policy: AppliedPolicy::default(),
            prev: String::new(),
        }
    }

    fn outcome(domain: &str, result: Option<ResultType>, report_mail: bool) -> Outcome {
        Outcome {
            time: 0,
            queue_id: "q".into(),
            domain: domain.into(),
            mx_host: "mx".into(),
            addr: Some("192.0.2.1".into()),
            policy: PolicyType::NoPolicyFound,
            auth: None,
            tls_ok: result.is_none(),
            result,
            report_mail,
            detail: String::new(),
            sending_ip: None,
            policy_strings: vec![],
            mx_patterns: vec![],
            route: None,
        }
    }

    fn period() -> Period {
        Period {
            generated: "2026-12-02T00:00:00+00:00".into(),
            since: "2026-11-03".into(),
            until: "2026-12-02".into(),
            days: 30,
        }
    }

    #[test]
    fn counts_shares_and_headline() {
        use Mechanism::*;
        let receipts = [
            receipt("q1", "a@dane.test", Dane, "TLSv1.3"),
            receipt("q1", "b@dane.test", Dane, "TLSv1.3"),
            receipt("q1", "c@sts.test", MtaSts, "TLSv1.3"),
            receipt("q2", "d@floor.test", Verify, "TLSv1.2"),
            receipt("q3", "e@floor.test", Encrypt, "TLSv1.2"),
            receipt("q4", "f@dane.test", Dane, "TLSv1.3"),
            receipt("q4", "g@weak.test", Local, "TLSv1.3"),
            {
                let mut r = receipt("q5", "tlsrpt@dane.test", Encrypt, "TLSv1.3");
                r.policy.waiver = Some("TLS report".into());
                r
            },
        ];
        let outcomes = [
            outcome("bad.test", Some(ResultType::CertificateHostMismatch), false),
            outcome("bad.test", Some(ResultType::CertificateHostMismatch), false),
            outcome("dane.test", Some(ResultType::StarttlsNotSupported), false),
            outcome("dane.test", None, false),
            outcome("bad.test", Some(ResultType::CertificateExpired), true),
        ];
        let p = build(period(), &receipts, &outcomes, vec![]);
        let t = &p.totals;
        assert_eq!((t.counts.messages, t.counts.recipients), (4, 7));
        // q3 (encrypt) and q4 (one recipient by a local policy) are not authenticated.
        assert_eq!(
            (t.authenticated_messages, t.authenticated_percent),
            (2, 50.0)
        );
        let shares: Vec<(Mechanism, u64, f64)> = (t.counts.mechanisms.iter())
            .map(|s| (s.mechanism, s.recipients, s.percent))
            .collect();
        assert_eq!(
            shares,
            [
                (Dane, 3, 42.9),
                (MtaSts, 1, 14.3),
                (Local, 1, 14.3),
                (Verify, 1, 14.3),
                (Encrypt, 1, 14.3)
            ]
        );
        assert_eq!(t.counts.tls_versions["TLSv1.2"], 2);
        assert_eq!(t.counts.refusals["certificate-host-mismatch"], 2);
        assert_eq!(t.counts.refusals.len(), 2, "report mail is not counted");
        let order: Vec<&str> = p.domains.iter().map(|d| d.domain.as_str()).collect();
        assert_eq!(
            order,
            [
                "dane.test",
                "floor.test",
                "sts.test",
                "weak.test",
                "bad.test"
            ]
        );
        let dane = &p.domains[0].counts;
        assert_eq!((dane.messages, dane.recipients), (2, 3));
        assert_eq!(dane.mechanisms[0].percent, 100.0);
        assert_eq!(dane.refusals["starttls-not-supported"], 1);
        assert_eq!(p.domains[4].counts.messages, 0);
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["totals"]["mechanisms"][1]["mechanism"], "mta-sts");
        assert_eq!(json["domains"][0]["state"], serde_json::Value::Null);
        assert_eq!(json["early_warnings"], serde_json::json!([]));
        assert_eq!(json["totals"]["messages"], 4);
    }

    #[test]
    fn empty_period() {
        let p = build(period(), &[], &[], vec![]);
        assert_eq!(p.totals.authenticated_percent, 0.0);
        assert!(p.domains.is_empty());
        assert_eq!(p.totals.counts.mechanisms.len(), 5);
    }
}
