//! Sending SMTP TLS reports (RFC 8460 §5): once a UTC day has ended, for every
//! policy domain with sessions that day, discover `_smtp._tls.<domain>`, build the
//! report from the outcome records, and deliver it to each `rua`: an HTTPS POST of
//! the gzipped JSON, or a report message queued through tlsrelay itself.
//!
//! Report mail is flagged (`Envelope::tls_report`): it is not reported on, and it
//! is delivered over TLS with relaxed authentication (never plaintext).

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::NaiveDate;
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use crate::config::Config;
use crate::reporting::outcome::{Outcome, OutcomeLog};
use crate::reporting::tlsrpt::{self, Rua};
use crate::resolve::dns::{Answer, Dns};
use crate::spool::{self, Envelope, RcptState, Recipient, Spool};

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
}

/// What happened to one (day, domain) report.
#[derive(Debug, Clone, Serialize)]
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

impl Reporter {
    /// A reporter over the spool's outcome records.
    pub fn new(
        config: Arc<Config>,
        spool: Spool,
        dns: Dns,
        queue: Option<mpsc::UnboundedSender<Envelope>>,
    ) -> Result<Reporter, String> {
        let outcomes =
            OutcomeLog::open(&spool.dir().join("outcomes")).map_err(|e| e.to_string())?;
        let tls = crate::tls::https_client_config(&config.tls_rpt.extra_roots)
            .map_err(|e| e.to_string())?;
        let dkim = match (&config.tls_rpt.dkim_key_file, &config.tls_rpt.dkim_selector) {
            (Some(path), Some(selector)) => {
                let pem = std::fs::read_to_string(path)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                let from = from_address(&config);
                let domain = config.tls_rpt.dkim_domain.clone().unwrap_or_else(|| {
                    from.rsplit_once('@')
                        .map(|(_, d)| d.to_string())
                        .unwrap_or_default()
                });
                Some(
                    tlsrpt::DkimReportSigner::from_pem(&pem, &domain, selector)
                        .map_err(|e| format!("{}: {e}", path.display()))?,
                )
            }
            _ => None,
        };
        Ok(Reporter {
            dkim,
            dir: spool.dir().join("tlsrpt"),
            config,
            spool,
            dns,
            outcomes,
            queue,
            tls: Arc::new(tls),
        })
    }

    fn submitter(&self) -> String {
        self.config
            .tls_rpt
            .submitter
            .clone()
            .unwrap_or_else(|| self.config.server.hostname.clone())
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
        let mut out = Vec::new();
        let records = self
            .outcomes
            .read_day(&day.format("%Y-%m-%d").to_string())
            .unwrap_or_default();
        let mut domains: Vec<String> = records
            .iter()
            .filter(|o| !o.report_mail)
            .map(|o| o.domain.clone())
            .collect();
        domains.sort();
        domains.dedup();
        for domain in domains {
            if !keep(&domain) || tlsrpt::is_done(&self.dir, day, &domain).unwrap_or(false) {
                continue;
            }
            out.push(self.send_one(&records, day, &domain).await);
        }
        out
    }

    async fn send_one(&self, records: &[Outcome], day: NaiveDate, domain: &str) -> Sent {
        let mut sent = Sent {
            day: day.to_string(),
            domain: domain.to_string(),
            results: vec![],
            done: false,
        };
        let ruas = match self.dns.txt(&format!("_smtp._tls.{domain}")).await {
            Answer::Records { records, .. } => {
                let joined: Vec<Vec<u8>> = records.iter().map(|r| r.joined()).collect();
                tlsrpt::parse_rua(&joined)
            }
            Answer::NoRecords { .. } | Answer::NxDomain { .. } => Ok(None),
            Answer::Bogus(w) | Answer::TempFail(w) => {
                sent.results
                    .push(format!("_smtp._tls lookup failed, will retry: {w}"));
                return sent;
            }
        };
        let ruas = match ruas {
            Ok(Some(r)) => r,
            Ok(None) => {
                sent.results
                    .push("no TLSRPT record: nothing to send".into());
                sent.done = tlsrpt::mark_done(&self.dir, day, domain, "no TLSRPT record").is_ok();
                return sent;
            }
            Err(e) => {
                sent.results.push(format!("unusable TLSRPT record: {e}"));
                sent.done =
                    tlsrpt::mark_done(&self.dir, day, domain, &format!("unusable record: {e}"))
                        .is_ok();
                return sent;
            }
        };
        let Some(agg) = tlsrpt::aggregate(records, domain, day) else {
            sent.results.push("no sessions: no report".into());
            sent.done = tlsrpt::mark_done(&self.dir, day, domain, "no sessions").is_ok();
            return sent;
        };
        let submitter = self.submitter();
        let id = tlsrpt::report_id(day, domain, &submitter);
        let c = &self.config.tls_rpt;
        let contact = c
            .contact_info
            .clone()
            .unwrap_or_else(|| format!("postmaster@{}", self.config.server.hostname));
        let report = tlsrpt::build_report(&agg, &c.organization_name, &contact, &id);
        let json = tlsrpt::report_json(&report);
        let Ok(gz) = tlsrpt::gzip(json.as_bytes()) else {
            sent.results.push("cannot compress the report".into());
            return sent;
        };
        let mut all_ok = true;
        for rua in ruas {
            let r = match &rua {
                Rua::Https(url) => self.post(url, &gz).await,
                Rua::Mailto(addr) => {
                    self.queue_mail(&report, domain, &submitter, addr, &gz)
                        .await
                }
            };
            match r {
                Ok(words) => sent.results.push(words),
                Err(words) => {
                    all_ok = false;
                    sent.results.push(words);
                }
            }
        }
        if all_ok {
            sent.done = tlsrpt::mark_done(&self.dir, day, domain, &sent.results.join("; ")).is_ok();
            metrics::counter!(crate::reporting::metrics::TLS_REPORTS, "result" => "sent")
                .increment(1);
        } else {
            metrics::counter!(crate::reporting::metrics::TLS_REPORTS, "result" => "failed")
                .increment(1);
        }
        tracing::info!(day = %day, domain, results = %sent.results.join("; "), done = sent.done, "TLS report");
        sent
    }

    async fn post(&self, url: &str, gz: &[u8]) -> Result<String, String> {
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url}: bad URL: {e}"))?;
        let host = parsed
            .host_str()
            .ok_or_else(|| format!("{url}: no host"))?
            .to_string();
        let port = parsed.port_or_known_default().unwrap_or(443);
        let addrs: Vec<SocketAddr> = match self.dns.addresses(&host).await {
            Answer::Records { records, .. } => records
                .into_iter()
                .map(|ip| SocketAddr::new(ip, port))
                .collect(),
            _ => return Err(format!("{url}: cannot resolve {host}")),
        };
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured((*self.tls).clone())
            .redirect(reqwest::redirect::Policy::none())
            .https_only(true)
            .user_agent(concat!(
                "tlsrelay/",
                env!("CARGO_PKG_VERSION"),
                " (TLS-RPT)"
            ))
            .timeout(Duration::from_secs(60))
            .resolve_to_addrs(&host, &addrs)
            .no_proxy()
            .build()
            .map_err(|e| format!("{url}: {e}"))?;
        let resp = client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, tlsrpt::GZIP_MEDIA_TYPE)
            .body(gz.to_vec())
            .send()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        if resp.status().is_success() {
            Ok(format!("{url}: POST accepted ({})", resp.status()))
        } else {
            Err(format!("{url}: POST answered {}", resp.status()))
        }
    }

    async fn queue_mail(
        &self,
        report: &mail_auth::report::tlsrpt::TlsReport,
        domain: &str,
        submitter: &str,
        to: &str,
        gz: &[u8],
    ) -> Result<String, String> {
        let from = from_address(&self.config);
        let mut msg = tlsrpt::report_message(report, domain, submitter, &from, &[to], gz)
            .map_err(|e| format!("mailto:{to}: {e}"))?;
        if let Some(signer) = &self.dkim {
            use tlsrpt::ReportSigner;
            msg = signer.sign(&msg).map_err(|e| format!("mailto:{to}: {e}"))?;
        }
        let now = spool::now_unix();
        let env = Envelope {
            id: spool::new_queue_id(),
            received_at: now,
            client: spool::ClientInfo {
                addr: "local".into(),
                helo: self.config.server.hostname.clone(),
                tls: None,
                auth_user: None,
            },
            sender: from.clone(),
            size: msg.len() as u64,
            body: spool::BodyType::SevenBit,
            smtputf8: false,
            requiretls: false,
            tls_required_no: false,
            tls_report: true,
            ret: None,
            envid: None,
            recipients: vec![Recipient {
                address: to.to_string(),
                notify: crate::model::notify::Notify::NEVER,
                orcpt: None,
                state: RcptState::Queued,
                last_reason: None,
                status: None,
            }],
            attempts: 0,
            next_attempt: now,
            delay_notice_sent: false,
        };
        let spool = self.spool.clone();
        let e2 = env.clone();
        tokio::task::spawn_blocking(move || spool.store(&e2, &msg))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("mailto:{to}: cannot queue: {e}"))?;
        if let Some(q) = &self.queue {
            let _ = q.send(env.clone());
        }
        Ok(format!("mailto:{to}: queued as {}", env.id))
    }

    /// Sends reports for finished days, each at a randomized time within
    /// `tls_rpt.max_delay` after the day ended, until `shutdown`.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        loop {
            let now = chrono::Utc::now();
            // A quarter of an hour of slack, so that the last records of a day are written.
            let finished = (now - chrono::Duration::minutes(15)).date_naive();
            if let Ok(pending) = tlsrpt::pending_reports(&self.outcomes, &self.dir, finished) {
                let mut by_day: BTreeMap<NaiveDate, Vec<String>> = BTreeMap::new();
                for (day, domain) in pending {
                    if now.timestamp() >= self.due_at(day, &domain) {
                        by_day.entry(day).or_default().push(domain);
                    }
                }
                for (day, domains) in by_day {
                    let records = self
                        .outcomes
                        .read_day(&day.format("%Y-%m-%d").to_string())
                        .unwrap_or_default();
                    for d in domains {
                        self.send_one(&records, day, &d).await;
                    }
                }
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

    /// A per-domain delay in seconds within `max_delay`, stable across restarts.
    fn delay_for(&self, domain: &str) -> i64 {
        let max = self.config.tls_rpt.max_delay.get().as_secs().max(1);
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (domain, &self.config.server.hostname).hash(&mut h);
        (h.finish() % max) as i64
    }
}

/// The sender of report mail.
fn from_address(config: &Config) -> String {
    config
        .tls_rpt
        .from
        .clone()
        .unwrap_or_else(|| format!("tlsrpt-noreply@{}", config.server.hostname))
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

/// Summaries per domain of one day's outcome records (report mail excluded).
pub fn summarize(records: &[Outcome]) -> BTreeMap<String, DomainSummary> {
    let mut out: BTreeMap<String, DomainSummary> = BTreeMap::new();
    for o in records.iter().filter(|o| !o.report_mail) {
        let s = out.entry(o.domain.clone()).or_default();
        if o.tls_ok {
            s.successful += 1;
        } else {
            s.failed += 1;
            if let Some(r) = o.result {
                *s.failures.entry(r.as_str().to_string()).or_default() += 1;
            }
        }
    }
    out
}
