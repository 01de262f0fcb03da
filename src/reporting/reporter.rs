//! Sending SMTP TLS reports (RFC 8460 §5): once a UTC day has ended, for every
//! policy domain with sessions that day, discover `_smtp._tls.<domain>` (A-label),
//! build the report from the outcome records, and deliver it to each `rua`: an
//! HTTPS POST of the gzipped JSON, or a DKIM-signed report message queued through
//! tlsrelay itself.
//!
//! Report mail is flagged (`Envelope::tls_report`): it is not reported on, and it
//! is delivered over TLS with relaxed authentication (never plaintext).

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::NaiveDate;
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use crate::config::Config;
use crate::model::domain::{Domain, DomainError};
use crate::reporting::outcome::{Outcome, OutcomeLog, SessionResult};
use crate::reporting::tlsrpt::{self, PolicyDomain, RecordError, Rua, TlsReport};
use crate::reporting::upkeep;
use crate::resolve::dns::{Answer, Dns};
use crate::spool::{Envelope, Spool};

mod fleet;

/// Sends TLS reports.
pub struct Reporter {
    config: Arc<Config>,
    spool: Spool,
    dns: Dns,
    outcomes: OutcomeLog,
    dir: PathBuf,
    queue: Option<mpsc::UnboundedSender<Envelope>>,
    tls: Arc<rustls::ClientConfig>,
    dkim: Option<tlsrpt::DkimReportSigner>,
    /// The fleet (`[cluster]`): one report per domain and day for all nodes.
    cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// Why the reporter cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum ReporterError {
    /// The outcome directory cannot be opened.
    #[error("cannot open the outcome records in {dir}: {error}")]
    Outcomes {
        /// The directory.
        dir: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The HTTPS client's roots or TLS settings (in the words of `crate::tls`).
    #[error("{0}")]
    Tls(String),
    /// The DKIM key file cannot be read.
    #[error("{path}: {error}")]
    DkimKeyRead {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The DKIM key file holds no usable key.
    #[error("{path}: {error}")]
    DkimKey {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        error: tlsrpt::DkimKeyError,
    },
    /// No signing domain: `tls_rpt.dkim_domain` or the sender's domain is no domain name.
    #[error("DKIM signing domain for reports: {0}")]
    DkimDomain(DomainError),
}

/// The root store and TLS setup report their errors in words.
impl From<String> for ReporterError {
    fn from(words: String) -> ReporterError {
        ReporterError::Tls(words)
    }
}

/// Why a report did not reach one destination.
#[derive(Debug, thiserror::Error)]
pub enum RuaError {
    /// The `https:` URI does not parse as a URL.
    #[error("{url}: bad URL: {error}")]
    BadUrl {
        /// The URI.
        url: String,
        /// The parser's error.
        error: <reqwest::Url as std::str::FromStr>::Err,
    },
    /// The URL names no host.
    #[error("{url}: no host")]
    NoHost {
        /// The URI.
        url: String,
    },
    /// The host has no usable address.
    #[error("{url}: cannot resolve {host}")]
    Unresolved {
        /// The URI.
        url: String,
        /// Its host.
        host: String,
    },
    /// The HTTPS request failed.
    #[error("{url}: {error}")]
    Http {
        /// The URI.
        url: String,
        /// The client's error.
        error: reqwest::Error,
    },
    /// The server answered with a status other than success.
    #[error("{url}: POST answered {status}")]
    Refused {
        /// The URI.
        url: String,
        /// The status.
        status: reqwest::StatusCode,
    },
    /// The report message cannot be built or signed.
    #[error("mailto:{to}: {error}")]
    Message {
        /// The address.
        to: String,
        /// The error.
        error: std::io::Error,
    },
    /// The report message cannot be stored in the spool.
    #[error("mailto:{to}: cannot queue: {error}")]
    Queue {
        /// The address.
        to: String,
        /// The error.
        error: crate::spool::SpoolError,
    },
    /// The task storing the message failed.
    #[error("mailto:{to}: cannot queue: {error}")]
    QueueTask {
        /// The address.
        to: String,
        /// The error.
        error: tokio::task::JoinError,
    },
}

/// What happened to one (day, domain) report.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Sent {
    /// The UTC day reported on.
    pub day: String,
    /// The policy domain.
    pub domain: String,
    /// Per destination: what happened.
    pub results: Vec<String>,
    /// Whether the report counts as done (marker written).
    pub done: bool,
}

/// What `tlsrelay report send` did.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct SendResult {
    /// The day has not ended: nothing was sent or marked.
    pub preview: bool,
    /// One entry per report (sent, or previewed).
    pub reports: Vec<Sent>,
}

/// Where a domain wants its reports, from its `_smtp._tls` record.
enum Destinations {
    /// Send to these.
    Send(Vec<Rua>),
    /// Nothing to send, for good: the words say why (for the marker).
    Nowhere { result: String, note: String },
    /// The lookup failed for now: try again later.
    Retry(String),
}

impl Reporter {
    /// A reporter over the spool's outcome records.
    pub fn new(
        config: Arc<Config>,
        spool: Spool,
        dns: Dns,
        queue: Option<mpsc::UnboundedSender<Envelope>>,
    ) -> Result<Reporter, ReporterError> {
        let outcomes_dir = spool.dir().join("outcomes");
        let outcomes =
            OutcomeLog::open(&outcomes_dir).map_err(|error| ReporterError::Outcomes {
                dir: outcomes_dir,
                error,
            })?;
        let tls = crate::tls::https_client_config(&config.tls_rpt.extra_roots)
            .map_err(|e| e.to_string())?;
        Ok(Reporter {
            dkim: dkim_signer(&config)?,
            dir: spool.dir().join("tlsrpt"),
            config,
            spool,
            dns,
            outcomes,
            queue,
            tls: Arc::new(tls),
            cluster: None,
        })
    }

    /// Reports for the whole fleet of `cluster` (see `crate::cluster::reports`).
    pub fn in_cluster(mut self, cluster: Option<Arc<crate::cluster::Cluster>>) -> Reporter {
        self.cluster = cluster;
        self
    }

    /// `TLS-Report-Submitter` and the host part of report-ids: in A-label form
    /// when it is a domain name.
    fn submitter(&self) -> String {
        let submitter = self
            .config
            .tls_rpt
            .submitter
            .as_deref()
            .unwrap_or(&self.config.server.hostname);
        Domain::parse(submitter).map_or_else(|_| submitter.to_string(), |d| d.to_string())
    }

    /// One UTC day's outcome records (none when the file cannot be read).
    fn read_day(&self, day: NaiveDate) -> Vec<Outcome> {
        self.outcomes
            .read_day(&day.format("%Y-%m-%d").to_string())
            .unwrap_or_default()
    }

    /// What `tlsrelay report send` does: for a day that has not ended (UTC) at
    /// `now`, a preview that sends and marks nothing (a report covers a whole
    /// day, and marking it would suppress the real one); else the day's due
    /// reports, or all of them with `all`. Refused without a fully qualified
    /// `server.hostname`.
    pub async fn send_command(
        &self,
        day: NaiveDate,
        all: bool,
        now: i64,
    ) -> Result<SendResult, String> {
        if let Some(why) = upkeep::hostname_problem(&self.config.server.hostname) {
            return Err(format!("TLS reports cannot be sent: {why}"));
        }
        let today = chrono::DateTime::from_timestamp(now, 0).map_or(day, |t| t.date_naive());
        if day >= today {
            let reports = self.preview_day(day).await;
            return Ok(SendResult {
                preview: true,
                reports,
            });
        }
        let sent = if all {
            self.send_day(day).await
        } else {
            self.send_day_due(day, now).await
        };
        Ok(SendResult {
            preview: false,
            reports: sent,
        })
    }

    /// The reports `day` would give so far: per domain, where it would go and
    /// how many sessions it would count. Nothing is sent or marked.
    pub async fn preview_day(&self, day: NaiveDate) -> Vec<Sent> {
        let records = self.read_day(day);
        let mut out = Vec::new();
        for (domain, sessions) in tlsrpt::sessions_by_domain(&records, day) {
            let mut sent = Sent::new(day, &domain);
            let PolicyDomain::Valid(d) = &domain else {
                sent.results.push("not a domain name: no report".into());
                out.push(sent);
                continue;
            };
            let counts = tlsrpt::aggregate(d, day, &sessions).map_or_else(
                || "no sessions".to_string(),
                |a| {
                    let ok: u32 = a.policies.iter().map(|p| p.successful).sum();
                    let failed: u32 = a.policies.iter().map(|p| p.failed).sum();
                    format!("{ok} successful, {failed} failed sessions so far")
                },
            );
            let to = match self.destinations(d).await {
                Destinations::Send(ruas) => ruas
                    .iter()
                    .map(|r| match r {
                        Rua::Https(url) => format!("would POST to {url}: {counts}"),
                        Rua::Mailto(addr) => format!("would mail mailto:{addr}: {counts}"),
                    })
                    .collect(),
                Destinations::Nowhere { result, .. } => vec![result],
                Destinations::Retry(words) => vec![words],
            };
            sent.results = to;
            out.push(sent);
        }
        out
    }

    /// Sends every report still due for `day` (all policy domains with sessions).
    pub async fn send_day(&self, day: NaiveDate) -> Vec<Sent> {
        self.send_day_where(day, |_| true).await
    }

    /// Sends the reports for `day` whose time (`due_at`) has come by `now` (Unix
    /// seconds): what the running reporter would send.
    pub async fn send_day_due(&self, day: NaiveDate, now: i64) -> Vec<Sent> {
        self.send_day_where(day, |domain| now >= self.due_at(day, domain))
            .await
    }

    /// When the report on `domain` for `day` is due (Unix seconds): after the
    /// day's last records are written and the domain's randomized delay.
    pub fn due_at(&self, day: NaiveDate, domain: &str) -> i64 {
        tlsrpt::day_start(day) + 86400 + self.delay_for(domain).max(15 * 60)
    }

    async fn send_day_where(&self, day: NaiveDate, keep: impl Fn(&str) -> bool) -> Vec<Sent> {
        if let Some(cluster) = &self.cluster {
            return self.fleet_send_day(cluster, day, keep).await;
        }
        let mut out = Vec::new();
        let records = self.read_day(day);
        for (domain, sessions) in tlsrpt::sessions_by_domain(&records, day) {
            let shown = domain.to_string();
            if !keep(&shown) || tlsrpt::is_done(&self.dir, day, &domain).unwrap_or(false) {
                continue;
            }
            out.push(self.send_one(day, &domain, &sessions).await);
        }
        out
    }

    async fn send_one(&self, day: NaiveDate, domain: &PolicyDomain, sessions: &[&Outcome]) -> Sent {
        match domain {
            PolicyDomain::Valid(d) => self.send_report(day, d, sessions).await,
            PolicyDomain::Invalid { text, why } => {
                // Marked at once, so this is logged once and never retried.
                let words = format!("not a domain name ({why}): no report can be sent");
                tracing::warn!(day = %day, domain = %text, "outcome records name {text:?}, {words}");
                let mut sent = Sent::new(day, domain);
                sent.results.push(words.clone());
                sent.done = tlsrpt::mark_done(&self.dir, day, domain, &words).is_ok();
                sent
            }
        }
    }

    /// Looks up where `domain` wants reports, builds the day's report and sends it.
    async fn send_report(&self, day: NaiveDate, domain: &Domain, sessions: &[&Outcome]) -> Sent {
        let key = PolicyDomain::Valid(domain.clone());
        let mut sent = Sent::new(day, &key);
        let ruas = match self.destinations(domain).await {
            Destinations::Send(ruas) => ruas,
            Destinations::Nowhere { result, note } => {
                return self.finish(sent, day, &key, result, &note)
            }
            Destinations::Retry(words) => {
                sent.results.push(words);
                return sent;
            }
        };
        let Some(agg) = tlsrpt::aggregate(domain, day, sessions) else {
            let words = "no sessions: no report".to_string();
            return self.finish(sent, day, &key, words, "no sessions");
        };
        let submitter = self.submitter();
        let report = self.build_report(&agg, &submitter);
        let json = tlsrpt::report_json(&report);
        let Ok(gz) = tlsrpt::gzip(json.as_bytes()) else {
            sent.results.push("cannot compress the report".into());
            return sent;
        };
        let all_ok = self
            .deliver(&ruas, &report, domain, &submitter, &gz, &mut sent)
            .await;
        self.count_and_mark(sent, day, &key, all_ok)
    }

    /// Sends one report to each destination; true when every one took it.
    async fn deliver(
        &self,
        ruas: &[Rua],
        report: &TlsReport,
        domain: &Domain,
        submitter: &str,
        gz: &[u8],
        sent: &mut Sent,
    ) -> bool {
        let mut all_ok = true;
        for rua in ruas {
            let r = match rua {
                Rua::Https(url) => self.post(url, gz).await,
                Rua::Mailto(addr) => self.queue_mail(report, domain, submitter, addr, gz).await,
            };
            all_ok &= r.is_ok();
            sent.results.push(r.unwrap_or_else(|e| e.to_string()));
        }
        all_ok
    }

    /// Marks a report that needs no sending done, with `result` for the operator.
    fn finish(
        &self,
        mut sent: Sent,
        day: NaiveDate,
        domain: &PolicyDomain,
        result: String,
        note: &str,
    ) -> Sent {
        sent.results.push(result);
        sent.done = tlsrpt::mark_done(&self.dir, day, domain, note).is_ok();
        sent
    }

    /// After sending: the metric, the log line, and the marker when every destination accepted it.
    fn count_and_mark(
        &self,
        mut sent: Sent,
        day: NaiveDate,
        domain: &PolicyDomain,
        all_ok: bool,
    ) -> Sent {
        let result = if all_ok {
            sent.done = tlsrpt::mark_done(&self.dir, day, domain, &sent.results.join("; ")).is_ok();
            "sent"
        } else {
            "failed"
        };
        metrics::counter!(crate::reporting::metrics::TLS_REPORTS, "result" => result).increment(1);
        tracing::info!(day = %sent.day, domain = %sent.domain, results = %sent.results.join("; "), done = sent.done, "TLS report");
        sent
    }

    /// Reads `_smtp._tls.<domain>`; the name is the A-label, which DNS can ask for.
    async fn destinations(&self, domain: &Domain) -> Destinations {
        let ruas = match self.dns.txt(&format!("_smtp._tls.{domain}")).await {
            Answer::Records { records, .. } => {
                let joined: Vec<Vec<u8>> = records.iter().map(|r| r.joined()).collect();
                tlsrpt::parse_rua(&joined)
            }
            Answer::NoRecords { .. } | Answer::NxDomain { .. } => Ok(None),
            Answer::Bogus(w) | Answer::TempFail(w) => {
                return Destinations::Retry(format!("_smtp._tls lookup failed, will retry: {w}"))
            }
        };
        match ruas {
            Ok(Some(ruas)) => Destinations::Send(ruas),
            Ok(None) => Destinations::Nowhere {
                result: "no TLSRPT record: nothing to send".into(),
                note: "no TLSRPT record".into(),
            },
            Err(e) => unusable(&e),
        }
    }

    /// The report of `agg` with this relay's organization, contact and a stable report-id.
    fn build_report(&self, agg: &tlsrpt::Aggregate, submitter: &str) -> TlsReport {
        let id = tlsrpt::report_id(agg.day, &agg.policy_domain, submitter);
        self.build_report_with_id(agg, &id)
    }

    /// The report of `agg` with this relay's organization and contact, and `id`.
    fn build_report_with_id(&self, agg: &tlsrpt::Aggregate, id: &str) -> TlsReport {
        let c = &self.config.tls_rpt;
        let contact = c
            .contact_info
            .clone()
            .unwrap_or_else(|| format!("postmaster@{}", self.config.server.hostname));
        tlsrpt::build_report(agg, &c.organization_name, &contact, id)
    }

    async fn post(&self, url: &str, gz: &[u8]) -> Result<String, RuaError> {
        let parsed = reqwest::Url::parse(url).map_err(|error| RuaError::BadUrl {
            url: url.to_string(),
            error,
        })?;
        let host = parsed
            .host_str()
            .ok_or_else(|| RuaError::NoHost {
                url: url.to_string(),
            })?
            .to_string();
        let port = parsed.port_or_known_default().unwrap_or(443);
        let addrs: Vec<SocketAddr> = match self.dns.addresses(&host).await {
            Answer::Records { records, .. } => records
                .into_iter()
                .map(|ip| SocketAddr::new(ip, port))
                .collect(),
            _ => {
                return Err(RuaError::Unresolved {
                    url: url.to_string(),
                    host,
                })
            }
        };
        let http = |error| RuaError::Http {
            url: url.to_string(),
            error,
        };
        let resp = self
            .https_client(&host, &addrs)
            .map_err(http)?
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, tlsrpt::GZIP_MEDIA_TYPE)
            .body(gz.to_vec())
            .send()
            .await
            .map_err(http)?;
        if resp.status().is_success() {
            Ok(format!("{url}: POST accepted ({})", resp.status()))
        } else {
            Err(RuaError::Refused {
                url: url.to_string(),
                status: resp.status(),
            })
        }
    }

    /// An HTTPS client that reaches `host` at `addrs`, never redirected, no proxy.
    fn https_client(&self, host: &str, addrs: &[SocketAddr]) -> reqwest::Result<reqwest::Client> {
        crate::resolve::https::strict_client(
            &self.tls,
            host,
            addrs,
            "TLS-RPT",
            Duration::from_secs(60),
        )
    }

    async fn queue_mail(
        &self,
        report: &TlsReport,
        domain: &Domain,
        submitter: &str,
        to: &str,
        gz: &[u8],
    ) -> Result<String, RuaError> {
        let message_error = |error| RuaError::Message {
            to: to.to_string(),
            error,
        };
        let from = from_address(&self.config);
        let mut msg = tlsrpt::report_message(report, domain.as_str(), submitter, &from, &[to], gz)
            .map_err(message_error)?;
        if let Some(signer) = &self.dkim {
            use tlsrpt::ReportSigner;
            msg = signer.sign(&msg).map_err(message_error)?;
        }
        let env = report_envelope(&self.config, &from, to, msg.len());
        let spool = self.spool.clone();
        let e2 = env.clone();
        tokio::task::spawn_blocking(move || spool.store(&e2, &msg))
            .await
            .map_err(|error| RuaError::QueueTask {
                to: to.to_string(),
                error,
            })?
            .map_err(|error| RuaError::Queue {
                to: to.to_string(),
                error,
            })?;
        if let Some(q) = &self.queue {
            let _ = q.send(env.clone());
        }
        Ok(format!("mailto:{to}: queued as {}", env.id))
    }

    /// Sends reports for finished days, each at a randomized time within
    /// `tls_rpt.max_delay` after the day ended, and deletes records past their
    /// retention, until `shutdown`. Without a fully qualified `server.hostname`
    /// it sends nothing, and says so once.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let unfit = upkeep::hostname_problem(&self.config.server.hostname);
        if let Some(why) = &unfit {
            tracing::warn!("TLS reports are not sent: {why}");
        }
        loop {
            let now = chrono::Utc::now();
            let retention = self.config.tls_rpt.retention.get();
            let pruned = upkeep::prune(self.spool.dir(), now.date_naive(), retention);
            if pruned > 0 {
                tracing::info!(
                    days = pruned,
                    "TLS reporting data past its retention deleted"
                );
            }
            if unfit.is_none() {
                self.send_due(now).await;
            }
            let stop = tokio::select! {
                _ = shutdown.changed() => true,
                _ = tokio::time::sleep(Duration::from_secs(600)) => false,
            };
            if stop || *shutdown.borrow() {
                return;
            }
        }
    }

    /// Sends the pending reports whose randomized time has come by `now`.
    async fn send_due(&self, now: chrono::DateTime<chrono::Utc>) {
        if let Some(cluster) = &self.cluster {
            return self.fleet_send_due(cluster, now).await;
        }
        // A quarter of an hour of slack, so that the last records of a day are written.
        let finished = (now - chrono::Duration::minutes(15)).date_naive();
        let Ok(pending) = tlsrpt::pending_reports(&self.outcomes, &self.dir, finished) else {
            return;
        };
        let mut by_day: BTreeMap<NaiveDate, BTreeSet<PolicyDomain>> = BTreeMap::new();
        for (day, domain) in pending {
            if now.timestamp() >= self.due_at(day, &domain.to_string()) {
                by_day.entry(day).or_default().insert(domain);
            }
        }
        for (day, due) in by_day {
            let records = self.read_day(day);
            for (domain, sessions) in tlsrpt::sessions_by_domain(&records, day) {
                if due.contains(&domain) {
                    self.send_one(day, &domain, &sessions).await;
                }
            }
        }
    }

    /// A per-domain delay in seconds within `max_delay`, stable across restarts.
    fn delay_for(&self, domain: &str) -> i64 {
        let max = self.config.tls_rpt.max_delay.get().as_secs().max(1);
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (domain, &self.config.server.hostname).hash(&mut h);
        (h.finish() % max) as i64
    }
}

impl Sent {
    fn new(day: NaiveDate, domain: &PolicyDomain) -> Sent {
        Sent {
            day: day.to_string(),
            domain: domain.to_string(),
            results: vec![],
            done: false,
        }
    }
}

/// An unusable `_smtp._tls` record: RFC 8460 §3 treats the domain as not asking for reports.
fn unusable(e: &RecordError) -> Destinations {
    Destinations::Nowhere {
        result: format!("unusable TLSRPT record: {e}"),
        note: format!("unusable record: {e}"),
    }
}

/// The DKIM signer of report mail, when `tls_rpt.dkim_key_file` and `dkim_selector` are set.
pub(crate) fn dkim_signer(
    config: &Config,
) -> Result<Option<tlsrpt::DkimReportSigner>, ReporterError> {
    let c = &config.tls_rpt;
    let (Some(path), Some(selector)) = (&c.dkim_key_file, &c.dkim_selector) else {
        return Ok(None);
    };
    let pem = std::fs::read_to_string(path).map_err(|error| ReporterError::DkimKeyRead {
        path: path.clone(),
        error,
    })?;
    // The signing domain: as configured, else the domain of the sender of report mail.
    let domain = match &c.dkim_domain {
        Some(d) => Domain::parse(d),
        None => Domain::of_address(&from_address(config)),
    }
    .map_err(ReporterError::DkimDomain)?;
    tlsrpt::DkimReportSigner::from_pem(&pem, &domain, selector)
        .map(Some)
        .map_err(|error| ReporterError::DkimKey {
            path: path.clone(),
            error,
        })
}

/// The sender of report mail.
fn from_address(config: &Config) -> String {
    config
        .tls_rpt
        .from
        .clone()
        .unwrap_or_else(|| format!("tlsrpt-noreply@{}", config.server.hostname))
}

/// The envelope of one report message to `to`, flagged as report mail.
fn report_envelope(config: &Config, from: &str, to: &str, size: usize) -> Envelope {
    let notify = crate::model::notify::Notify::NEVER;
    Envelope {
        tls_report: true,
        ..Envelope::generated(&config.server.hostname, from, to, notify, size as u64)
    }
}

/// Per domain: sessions and failures by result type, for `tlsrelay report`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DomainSummary {
    /// Successful TLS sessions.
    pub successful: u64,
    /// Failed ones.
    pub failed: u64,
    /// Failures by RFC 8460 result type.
    pub failures: BTreeMap<String, u64>,
}

/// Summaries per policy domain (A-label) of one day's outcome records, counted as
/// TLS reports count them ([`Outcome::session`]: report mail left out).
pub fn summarize(records: &[Outcome]) -> BTreeMap<String, DomainSummary> {
    let mut out: BTreeMap<String, DomainSummary> = BTreeMap::new();
    for o in records {
        let session = o.session();
        if session == SessionResult::NotCounted {
            continue;
        }
        let s = out.entry(PolicyDomain::of(o).to_string()).or_default();
        match session {
            SessionResult::Success => s.successful += 1,
            SessionResult::Failure(r) => {
                s.failed += 1;
                *s.failures.entry(r.as_str().to_string()).or_default() += 1;
            }
            SessionResult::NotCounted => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reporting::outcome::{PolicyType, ResultType};

    fn record(domain: &str, result: Option<ResultType>, report_mail: bool) -> Outcome {
        Outcome {
            time: 1_714_525_200,
            queue_id: "q".into(),
            domain: domain.into(),
            mx_host: "mx.example".into(),
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

    /// (domain, successes, failures, failures by result type)
    type Row = (String, u64, u64, Vec<(String, u64)>);

    #[test]
    fn summaries_count_as_reports_do() {
        use ResultType::CertificateExpired as Expired;
        let mut untyped = record("example.com", None, false);
        untyped.tls_ok = false;
        let mut no_address = record("example.com", None, false);
        no_address.addr = None;
        let records = [
            record("bücher.example", None, false),
            record("xn--bcher-kva.example", Some(Expired), false),
            record("Example.COM.", None, false),
            untyped,
            no_address,
            record("example.com", Some(Expired), true),
            record("reports.example", None, true),
            record("not a domain!", None, false),
        ];
        let got: Vec<Row> = summarize(&records)
            .into_iter()
            .map(|(d, s)| (d, s.successful, s.failed, s.failures.into_iter().collect()))
            .collect();
        let f = |r: &str, n: u64| (r.to_string(), n);
        assert_eq!(
            got,
            [
                ("example.com".into(), 1, 1, vec![f("validation-failure", 1)]),
                ("not a domain!".into(), 1, 0, vec![]),
                (
                    "xn--bcher-kva.example".into(),
                    1,
                    1,
                    vec![f("certificate-expired", 1)]
                ),
            ]
        );
    }
}
