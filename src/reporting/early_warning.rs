//! Early warnings: problems at the busiest destinations seen before they stop
//! delivery. Every `[warnings] interval` the `top_domains` most frequent
//! destination domains (by messages in the outcome records of the last
//! [`WINDOW_DAYS`] days) are probed like `tlsrelay check --probe`; what the probe
//! finds ([`DomainProbe`]) goes through the pure [`evaluate`].
//!
//! Each warning is a WARN log line (`msg="early warning"` with domain, host,
//! kind, detail) and counts in the gauge `tlsrelay_early_warnings{kind}`. The
//! gauge has no domain label: destination domains are unbounded, so the log and
//! `SPOOL/warnings.json` ([`load_latest`]) name them, the metric only counts.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::config::Config;
use crate::delivery::client::{Dial, Session};
use crate::model::dns::{Answer, Security};
use crate::model::domain::Domain;
use crate::model::metric::{EARLY_WARNINGS, EARLY_WARNINGS_DOMAINS, EARLY_WARNINGS_LAST_RUN};
use crate::ops::check::Sources;
use crate::policy::facts::HostFacts;
use crate::policy::local::PolicySet;
use crate::policy::{DomainPlan, HostStep, PeerCheck, Target};
use crate::protocol::sts::Mode;
use crate::reporting::outcome::{Outcome, OutcomeLog};
use crate::resolve::dns::Dns;
use crate::resolve::mta_sts::MtaSts;
use crate::tls::ClientTls;

/// How many days of outcome records decide which domains are the busiest.
pub const WINDOW_DAYS: usize = 7;

/// The file under the spool that holds the latest results.
pub const FILE_NAME: &str = "warnings.json";

/// Domains probed at once.
const PARALLEL: usize = 4;

/// The first probe after start waits this long (or `interval`, when shorter),
/// so that a restart loop does not probe the world at every start.
const FIRST_DELAY: Duration = Duration::from_secs(60);

/// What is wrong, or about to be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum WarningKind {
    /// The MX host's certificate expires soon (or has expired: `days_left` < 0).
    CertExpiring {
        /// Whole days until `not_after`.
        days_left: i64,
    },
    /// The host's DNSSEC-secure TLSA records do not match the certificate it serves.
    TlsaMismatch,
    /// The domain's MTA-STS policy (enforce or testing) does not list the MX host.
    StsMxNotListed,
    /// The TLSA lookup of a host whose MX and addresses are signed came back bogus.
    TlsaBogus,
}

/// Every kind's label, for the metric's fixed label set.
pub const KINDS: [&str; 4] = [
    "cert-expiring",
    "tlsa-mismatch",
    "sts-mx-not-listed",
    "tlsa-bogus",
];

impl WarningKind {
    /// The kind's fixed word (log `kind=` and the metric's `kind` label).
    pub fn label(&self) -> &'static str {
        match self {
            WarningKind::CertExpiring { .. } => KINDS[0],
            WarningKind::TlsaMismatch => KINDS[1],
            WarningKind::StsMxNotListed => KINDS[2],
            WarningKind::TlsaBogus => KINDS[3],
        }
    }
}

/// One early warning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Warning {
    /// The destination domain (A-labels).
    pub domain: String,
    /// The MX host.
    pub host: String,
    /// What is wrong.
    #[serde(flatten)]
    pub kind: WarningKind,
    /// The facts in words.
    pub detail: String,
}

/// What the probe found for one MX host: the input of [`evaluate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostProbe {
    /// The MX host name.
    pub host: String,
    /// The TLSA lookup, as far as it matters here.
    pub tlsa: TlsaState,
    /// Whether the domain's MTA-STS policy (enforce or testing) lists the host;
    /// None without such a policy.
    pub sts_listed: Option<bool>,
    /// The served chain, when the host was reached.
    pub chain: Option<ChainProbe>,
}

/// The TLSA lookup of a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsaState {
    /// Not looked up (MX or addresses not signed), none, or a temporary failure.
    NotApplicable,
    /// Secure, usable records: DANE applies.
    Usable,
    /// The answer failed DNSSEC validation.
    Bogus(String),
}

/// What the served certificate chain showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainProbe {
    /// The leaf's `notAfter` (Unix seconds), when it parses.
    pub leaf_not_after: Option<i64>,
    /// Whether the chain matches the usable TLSA records (None when DANE does not apply).
    pub tlsa_match: Option<Result<(), String>>,
}

/// What the probe found for one domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainProbe {
    /// The domain.
    pub domain: Domain,
    /// Its MX hosts.
    pub hosts: Vec<HostProbe>,
}

/// The warnings of one domain's probe at `now` (Unix seconds). Pure.
pub fn evaluate(probe: &DomainProbe, now: i64, cert_expiry_days: u32) -> Vec<Warning> {
    let mut out = vec![];
    for h in &probe.hosts {
        let mut warn = |kind: WarningKind, detail: String| {
            out.push(Warning {
                domain: probe.domain.as_str().to_string(),
                host: h.host.clone(),
                kind,
                detail,
            })
        };
        if let TlsaState::Bogus(why) = &h.tlsa {
            warn(
                WarningKind::TlsaBogus,
                format!("the TLSA lookup failed DNSSEC validation: {why}"),
            );
        }
        if h.sts_listed == Some(false) {
            warn(
                WarningKind::StsMxNotListed,
                "the MTA-STS policy does not list this MX host".into(),
            );
        }
        let Some(chain) = &h.chain else { continue };
        if let Some(Err(why)) = &chain.tlsa_match {
            warn(
                WarningKind::TlsaMismatch,
                format!("the TLSA records do not match the served certificate: {why}"),
            );
        }
        if let Some(not_after) = chain.leaf_not_after {
            let days_left = (not_after - now).div_euclid(86400);
            if days_left < i64::from(cert_expiry_days) {
                let at = rfc3339(not_after);
                warn(
                    WarningKind::CertExpiring { days_left },
                    format!("the certificate expires {at} ({days_left} day(s) left)"),
                );
            }
        }
    }
    out
}

/// The `n` destination domains with the most messages (distinct queue ids),
/// most first, then by name; TLS report mail does not count. Pure.
pub fn top_domains<'a>(
    outcomes: impl IntoIterator<Item = &'a Outcome>,
    n: usize,
) -> Vec<(Domain, u64)> {
    let mut ids: BTreeMap<Domain, BTreeSet<&str>> = BTreeMap::new();
    for o in outcomes {
        if o.report_mail {
            continue;
        }
        if let Ok(d) = o.policy_domain() {
            ids.entry(d).or_default().insert(&o.queue_id);
        }
    }
    let mut top: Vec<(Domain, u64)> = (ids.into_iter())
        .map(|(d, q)| (d, q.len() as u64))
        .collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    top.truncate(n);
    top
}

/// How long to wait before the next probe. Pure.
pub fn next_delay(last_run: Option<i64>, now: i64, interval: Duration, first: bool) -> Duration {
    let earliest = if first {
        interval.min(FIRST_DELAY)
    } else {
        Duration::ZERO
    };
    let due = last_run.map_or(0, |t| (t + interval.as_secs() as i64 - now).max(0));
    earliest.max(Duration::from_secs(due as u64))
}

/// The latest results, as kept in `SPOOL/warnings.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarningsFile {
    /// When the probe ran (Unix seconds).
    pub time: i64,
    /// The domains probed, busiest first.
    pub domains: Vec<String>,
    /// What it found.
    pub warnings: Vec<Warning>,
}

/// The latest results under the spool at `spool_dir`; None before the first probe.
pub fn load_latest(spool_dir: &Path) -> std::io::Result<Option<WarningsFile>> {
    match std::fs::read(spool_dir.join(FILE_NAME)) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes the results whole (a temporary file renamed over the old one).
pub fn save(spool_dir: &Path, file: &WarningsFile) -> std::io::Result<()> {
    let tmp = spool_dir.join(format!("{FILE_NAME}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec_pretty(file)?)?;
    std::fs::rename(&tmp, spool_dir.join(FILE_NAME))
}

/// Logs each warning and sets the gauges.
pub fn publish(file: &WarningsFile) {
    let mut counts: BTreeMap<&str, usize> = KINDS.iter().map(|k| (*k, 0)).collect();
    for w in &file.warnings {
        *counts.entry(w.kind.label()).or_default() += 1;
        tracing::warn!(
            domain = %w.domain,
            host = %w.host,
            kind = w.kind.label(),
            detail = %w.detail,
            "early warning"
        );
    }
    for (kind, n) in counts {
        metrics::gauge!(EARLY_WARNINGS, "kind" => kind).set(n as f64);
    }
    metrics::gauge!(EARLY_WARNINGS_DOMAINS).set(file.domains.len() as f64);
    metrics::gauge!(EARLY_WARNINGS_LAST_RUN).set(file.time as f64);
    tracing::info!(
        domains = file.domains.len(),
        warnings = file.warnings.len(),
        "early warnings probe done"
    );
}

/// The busiest destination domains of the spool's outcome records.
pub fn busiest(spool_dir: &Path, n: usize) -> std::io::Result<Vec<(Domain, u64)>> {
    let dir = spool_dir.join("outcomes");
    if !dir.is_dir() {
        // No delivery yet; and `check --warnings` must not create spool directories.
        return Ok(vec![]);
    }
    let log = OutcomeLog::open(&dir)?;
    let days = log.days()?;
    let mut records = vec![];
    for day in days.iter().rev().take(WINDOW_DAYS) {
        records.extend(log.read_day(day)?);
    }
    Ok(top_domains(&records, n))
}

/// What a probe reads: the same sources delivery uses, and TLS for the handshake.
pub struct Prober<'a> {
    /// Configuration, DNS, MTA-STS and the local policies.
    pub sources: Sources<'a>,
    /// The outbound TLS set-up (its roots judge nothing here but DANE).
    pub tls: &'a ClientTls,
}

impl Prober<'_> {
    /// Probes `domains` (a few at once) and evaluates what was found.
    pub async fn run(&self, domains: &[Domain], now: i64) -> WarningsFile {
        let days = self.sources.config.warnings.cert_expiry_days;
        // Owned domains: a closure over borrowed ones is not `Send` enough for `tokio::spawn`.
        let warnings: Vec<Vec<Warning>> = stream::iter(domains.to_vec())
            .map(|d| async move { evaluate(&self.probe(&d).await, now, days) })
            .buffered(PARALLEL)
            .collect()
            .await;
        WarningsFile {
            time: now,
            domains: domains.iter().map(|d| d.as_str().to_string()).collect(),
            warnings: warnings.into_iter().flatten().collect(),
        }
    }

    /// Gathers and plans as delivery does, then reaches each host that would be contacted.
    pub async fn probe(&self, domain: &Domain) -> DomainProbe {
        let (facts, plan) = self.sources.plan_for(domain).await;
        let steps = match plan {
            DomainPlan::Hosts { steps, .. } => steps,
            _ => vec![],
        };
        let policy = (facts.sts.policy.as_ref()).filter(|p| p.mode != Mode::None);
        let mut hosts = vec![];
        for (i, hf) in facts.hosts.iter().enumerate() {
            let chain = match steps.get(i) {
                Some(HostStep::Connect(t)) => self.chain(hf, t).await,
                _ => None,
            };
            hosts.push(HostProbe {
                host: hf.mx.host.clone(),
                tlsa: tlsa_state(hf),
                sts_listed: policy.map(|p| p.allows(&hf.mx.host)),
                chain,
            });
        }
        DomainProbe {
            domain: domain.clone(),
            hosts,
        }
    }

    /// STARTTLS with the encrypt-only check (any chain is seen), then the chain judged offline.
    async fn chain(&self, hf: &HostFacts, t: &Target) -> Option<ChainProbe> {
        let config = self.sources.config;
        let d = &config.delivery;
        let addr = SocketAddr::new(*t.addrs.first()?, t.port);
        let timeouts = Dial::probe(d, t.egress.source_for(addr.ip()));
        let tls = self.tls.config(&PeerCheck::EncryptOnly);
        let opened = Session::open(
            &hf.mx.host,
            addr,
            config.helo_name(),
            tls,
            &t.req.sni,
            timeouts,
        );
        let session = match opened.await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(host = %hf.mx.host, %addr, error = %e.reason, "early warnings: host not reached");
                return None;
            }
        };
        let chain = session.peer_certificates.clone();
        session.quit().await;
        Some(ChainProbe {
            leaf_not_after: chain.first().and_then(not_after),
            tlsa_match: self.dane_match(hf, &chain),
        })
    }

    /// Whether the chain matches the host's secure, usable TLSA records.
    fn dane_match(
        &self,
        hf: &HostFacts,
        chain: &[CertificateDer<'static>],
    ) -> Option<Result<(), String>> {
        let tf = hf.tlsa.as_ref()?;
        let Answer::Records {
            records,
            security: Security::Secure,
            ..
        } = &tf.answer
        else {
            return None;
        };
        let usable: Vec<_> = records.iter().filter(|r| r.is_usable()).cloned().collect();
        if usable.is_empty() {
            return None;
        }
        let mut names = vec![tf.base.clone()];
        if tf.base != hf.mx.host {
            names.push(hf.mx.host.clone());
        }
        let check = PeerCheck::Dane {
            records: usable,
            names,
        };
        Some(
            self.tls
                .evaluate(&check, chain, &tf.base)
                .map_err(|e| e.to_string()),
        )
    }
}

/// The TLSA lookup of a host, as far as early warnings care.
fn tlsa_state(hf: &HostFacts) -> TlsaState {
    match hf.tlsa.as_ref().map(|t| &t.answer) {
        Some(Answer::Bogus(why)) => TlsaState::Bogus(why.to_string()),
        Some(Answer::Records {
            records,
            security: Security::Secure,
            ..
        }) if records.iter().any(|r| r.is_usable()) => TlsaState::Usable,
        _ => TlsaState::NotApplicable,
    }
}

/// Unix seconds as RFC 3339 UTC.
fn rfc3339(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| t.to_string())
}

/// A certificate's `notAfter` in Unix seconds.
fn not_after(c: &CertificateDer<'_>) -> Option<i64> {
    let (_, x) = x509_parser::parse_x509_certificate(c.as_ref()).ok()?;
    Some(x.validity().not_after.timestamp())
}

/// What the periodic task holds.
pub struct Task {
    /// The configuration.
    pub config: Arc<Config>,
    /// The validating resolver.
    pub dns: Dns,
    /// The MTA-STS engine (delivery's, or one over the same cache when MTA-STS is off).
    pub sts: Arc<MtaSts>,
    /// The local policies in force (reloads are seen).
    pub policies: crate::delivery::PolicySlot,
    /// The spool directory (outcome records in, `warnings.json` out).
    pub spool_dir: PathBuf,
}

impl Task {
    /// Probes every `[warnings] interval` until `shutdown` turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let tls = match ClientTls::new(&self.config.delivery.extra_roots) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "early warnings off: cannot set up TLS");
                return;
            }
        };
        let interval = self.config.warnings.interval.get();
        let mut last = load_latest(&self.spool_dir).ok().flatten().map(|f| f.time);
        let mut first = true;
        loop {
            let delay = next_delay(last, chrono::Utc::now().timestamp(), interval, first);
            first = false;
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.changed() => return,
            }
            let now = chrono::Utc::now().timestamp();
            last = Some(now);
            let file = self.once(&tls, now).await;
            publish(&file);
            if let Err(e) = save(&self.spool_dir, &file) {
                tracing::warn!(error = %e, file = FILE_NAME, "cannot keep the early warnings in the spool");
            }
        }
    }

    /// One probe of the busiest domains.
    async fn once(&self, tls: &ClientTls, now: i64) -> WarningsFile {
        let top = busiest(&self.spool_dir, self.config.warnings.top_domains).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "early warnings: cannot read the outcome records");
            vec![]
        });
        let domains: Vec<Domain> = top.into_iter().map(|(d, _)| d).collect();
        let policies: Arc<PolicySet> = self
            .policies
            .read()
            .map(|p| p.clone())
            .unwrap_or_else(|p| p.into_inner().clone());
        let prober = Prober {
            sources: Sources {
                config: &self.config,
                dns: &self.dns,
                sts: &self.sts,
                policies: &policies,
            },
            tls,
        };
        prober.run(&domains, now).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;
    const DAY: i64 = 86400;

    fn host(tlsa: TlsaState, sts_listed: Option<bool>, chain: Option<ChainProbe>) -> HostProbe {
        HostProbe {
            host: "mx.example.com".into(),
            tlsa,
            sts_listed,
            chain,
        }
    }

    fn chain(days: i64, tlsa_match: Option<Result<(), String>>) -> Option<ChainProbe> {
        Some(ChainProbe {
            leaf_not_after: Some(NOW + days * DAY + 60),
            tlsa_match,
        })
    }

    #[test]
    fn evaluate_table() {
        use TlsaState::*;
        let bad = || Some(Err("no TLSA record matches".to_string()));
        // (host facts, expected kinds)
        let cases: Vec<(HostProbe, Vec<WarningKind>)> = vec![
            (host(Usable, None, chain(90, Some(Ok(())))), vec![]),
            (host(NotApplicable, Some(true), chain(14, None)), vec![]),
            (
                host(NotApplicable, None, chain(5, None)),
                vec![WarningKind::CertExpiring { days_left: 5 }],
            ),
            (
                host(NotApplicable, None, chain(13, None)),
                vec![WarningKind::CertExpiring { days_left: 13 }],
            ),
            (
                host(NotApplicable, None, chain(-2, None)),
                vec![WarningKind::CertExpiring { days_left: -2 }],
            ),
            (
                host(Usable, None, chain(90, bad())),
                vec![WarningKind::TlsaMismatch],
            ),
            (
                host(Usable, None, chain(3, bad())),
                vec![
                    WarningKind::TlsaMismatch,
                    WarningKind::CertExpiring { days_left: 3 },
                ],
            ),
            (
                host(NotApplicable, Some(false), None),
                vec![WarningKind::StsMxNotListed],
            ),
            (
                host(Bogus("RRSIG expired".into()), None, None),
                vec![WarningKind::TlsaBogus],
            ),
            (host(NotApplicable, None, None), vec![]),
            (
                host(
                    NotApplicable,
                    None,
                    Some(ChainProbe {
                        leaf_not_after: None,
                        tlsa_match: None,
                    }),
                ),
                vec![],
            ),
        ];
        for (h, want) in cases {
            let probe = DomainProbe {
                domain: Domain::parse("example.com").unwrap(),
                hosts: vec![h.clone()],
            };
            let got: Vec<WarningKind> = evaluate(&probe, NOW, 14)
                .into_iter()
                .map(|w| w.kind)
                .collect();
            assert_eq!(got, want, "{h:?}");
        }
    }

    #[test]
    fn warnings_name_domain_host_and_facts() {
        let probe = DomainProbe {
            domain: Domain::parse("B\u{fc}cher.example").unwrap(),
            hosts: vec![host(
                TlsaState::Usable,
                None,
                chain(4, Some(Err("mismatch".into()))),
            )],
        };
        let w = evaluate(&probe, NOW, 14);
        assert_eq!(w[0].domain, "xn--bcher-kva.example");
        assert_eq!(w[0].host, "mx.example.com");
        assert!(w[0].detail.contains("mismatch"), "{:?}", w[0]);
        assert!(w[1].detail.contains("(4 day(s) left)"), "{:?}", w[1]);
        let labels: Vec<&str> = w.iter().map(|w| w.kind.label()).collect();
        assert_eq!(labels, ["tlsa-mismatch", "cert-expiring"]);
    }

    fn outcome(queue_id: &str, domain: &str, report_mail: bool) -> Outcome {
        Outcome {
            time: NOW,
            queue_id: queue_id.into(),
            domain: domain.into(),
            mx_host: String::new(),
            addr: None,
            policy: crate::reporting::outcome::PolicyType::NoPolicyFound,
            auth: None,
            tls_ok: true,
            result: None,
            report_mail,
            detail: String::new(),
            sending_ip: None,
            policy_strings: vec![],
            mx_patterns: vec![],
            route: None,
        }
    }

    #[test]
    fn busiest_domains_count_messages_not_attempts() {
        let records = [
            outcome("q1", "a.example", false),
            outcome("q1", "a.example", false),
            outcome("q1", "a.example", false),
            outcome("q2", "b.example", false),
            outcome("q3", "b.example", false),
            outcome("q4", "B.EXAMPLE", false),
            outcome("q5", "c.example", false),
            outcome("r1", "d.example", true),
            outcome("r2", "d.example", true),
            outcome("q6", "not a domain", false),
        ];
        let top = top_domains(&records, 2);
        let names: Vec<(&str, u64)> = top.iter().map(|(d, n)| (d.as_str(), *n)).collect();
        assert_eq!(names, [("b.example", 3), ("a.example", 1)]);
        assert_eq!(top_domains(&records, 10).len(), 3);
    }

    #[test]
    fn next_probe() {
        let day = Duration::from_secs(86400);
        let s = Duration::from_secs;
        // (last run, interval, first, wait)
        let cases = [
            (None, day, true, s(60)),
            (None, s(2), true, s(2)),
            (Some(NOW - 3 * DAY), day, true, s(60)),
            (Some(NOW - 3600), day, true, s(86400 - 3600)),
            (Some(NOW), day, false, day),
            (Some(NOW - 3 * DAY), day, false, s(0)),
        ];
        for (last, interval, first, want) in cases {
            assert_eq!(
                next_delay(last, NOW, interval, first),
                want,
                "{last:?} {interval:?} {first}"
            );
        }
    }

    #[test]
    fn latest_results_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load_latest(dir.path()).unwrap(), None);
        let file = WarningsFile {
            time: NOW,
            domains: vec!["example.com".into()],
            warnings: vec![Warning {
                domain: "example.com".into(),
                host: "mx.example.com".into(),
                kind: WarningKind::CertExpiring { days_left: 4 },
                detail: "soon".into(),
            }],
        };
        save(dir.path(), &file).unwrap();
        assert_eq!(load_latest(dir.path()).unwrap(), Some(file));
        let text = std::fs::read_to_string(dir.path().join(FILE_NAME)).unwrap();
        assert!(text.contains("\"kind\": \"cert-expiring\""), "{text}");
        assert!(text.contains("\"days_left\": 4"), "{text}");
        std::fs::write(dir.path().join(FILE_NAME), "{").unwrap();
        assert!(load_latest(dir.path()).is_err());
    }
}
