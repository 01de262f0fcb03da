//! MTA-STS (RFC 8461): discovery, HTTPS policy fetch, and the on-disk cache.
//!
//! The parsers and the MX matcher live in [`crate::protocol::sts`]; this module does the
//! I/O. The fetch follows §3.3 strictly: the certificate must be WebPKI-valid for
//! `mta-sts.<domain>`, redirects are not followed, only 200 counts, the media type
//! must be `text/plain`, and the body is capped while it is read. The cache
//! follows §5: a policy is used until it expires; a changed TXT `id` triggers a
//! refetch; a failed refetch keeps the unexpired cached policy; a fetched
//! `mode: none` replaces the cached policy at once.
//!
//! Policy domains are [`Domain`]s: `_mta-sts`, `mta-sts.` and the cache file are
//! always named by the A-label.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::domain::Domain;
use crate::model::rfc8460::ResultType;
use crate::protocol::sts::{self, StsError, StsPolicy, StsRecord};
use crate::resolve::dns::{Answer, Dns};
use crate::spool::now_unix;

/// Largest policy body accepted (RFC 8461 §3.3 suggests 64 KiB).
pub const MAX_POLICY_BYTES: usize = 64 * 1024;

/// A cached policy, as kept on disk.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CachedPolicy {
    /// The policy domain (A-label).
    pub domain: String,
    /// The TXT record id the policy was fetched under.
    pub id: String,
    /// The policy text as fetched.
    pub policy: String,
    /// When it was fetched (Unix seconds).
    pub fetched_at: i64,
    /// When it expires (fetch time + max_age).
    pub expires_at: i64,
}

impl CachedPolicy {
    /// The parsed policy (it was valid when stored).
    pub fn parsed(&self) -> Option<StsPolicy> {
        sts::parse_policy(&self.policy).ok()
    }

    /// An entry for a policy fetched now under the TXT record `id`.
    fn fetched_now(domain: &Domain, id: String, (policy, text): (StsPolicy, String)) -> Self {
        let now = now_unix();
        CachedPolicy {
            domain: domain.to_string(),
            id,
            policy: text,
            fetched_at: now,
            expires_at: now + policy.max_age as i64,
        }
    }
}

/// Where the policy in force came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Fetched just now.
    Fetched,
    /// From the cache.
    Cached,
}

/// The result of looking up a domain's MTA-STS policy.
#[derive(Debug, Clone, Default)]
pub struct Lookup {
    /// The policy in force, if any, and where it came from.
    pub policy: Option<(StsPolicy, Source)>,
    /// The TXT record id seen, if any.
    pub record_id: Option<String>,
    /// What went wrong on the way (reported via TLS-RPT), even when a cached policy stands in.
    pub error: Option<(ResultType, String)>,
}

/// How to fetch policies.
#[derive(Debug, Clone)]
pub struct FetchSettings {
    /// Port of the policy host (443; other values for labs and tests).
    pub port: u16,
    /// Extra trusted roots for the policy host (tests and labs), on top of Mozilla's.
    pub extra_roots: Vec<PathBuf>,
    /// Whole-fetch timeout.
    pub timeout: Duration,
}

/// The MTA-STS engine: discovery, fetch and cache.
pub struct MtaSts {
    dns: Dns,
    settings: FetchSettings,
    dir: PathBuf,
    tls: Arc<rustls::ClientConfig>,
    memory: Mutex<HashMap<Domain, CachedPolicy>>,
    /// One fetch at a time per domain: concurrent lookups wait for it and read its result.
    fetching: Mutex<HashMap<Domain, Arc<tokio::sync::Mutex<()>>>>,
    /// The fleet's cache (`[cluster]`): read before the local view is trusted,
    /// written after each fetch.
    shared: std::sync::OnceLock<Arc<crate::cluster::Cluster>>,
}

/// Why the engine cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The cache directory cannot be created.
    #[error("cannot create {dir}: {error}")]
    CacheDir {
        /// The directory.
        dir: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The HTTPS client's roots or TLS settings (in the words of `crate::tls`).
    #[error("{0}")]
    Tls(String),
}

/// The root store and TLS setup report their errors in words.
impl From<String> for SetupError {
    fn from(words: String) -> SetupError {
        SetupError::Tls(words)
    }
}

/// Why a domain's policy could not be had, in RFC 8460 terms ([`FetchError::result_type`]).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// `_mta-sts.<domain>` holds no `v=STSv1` record.
    #[error("_mta-sts.{domain} has no STSv1 record")]
    NoRecord {
        /// The policy domain.
        domain: Domain,
    },
    /// The `_mta-sts` record does not parse.
    #[error("_mta-sts.{domain} TXT: {error}")]
    BadRecord {
        /// The policy domain.
        domain: Domain,
        /// What is wrong with it.
        error: StsError,
    },
    /// The `_mta-sts` lookup failed (bogus or temporary).
    #[error("_mta-sts.{domain} TXT lookup failed: {why}")]
    RecordLookup {
        /// The policy domain.
        domain: Domain,
        /// What the resolver said.
        why: String,
    },
    /// The policy host has no address.
    #[error("{host}: has no address records")]
    NoAddress {
        /// `mta-sts.<domain>`.
        host: String,
    },
    /// The policy host's address lookup failed.
    #[error("{host}: address lookup failed: {why}")]
    AddressLookup {
        /// `mta-sts.<domain>`.
        host: String,
        /// What the resolver said.
        why: String,
    },
    /// The HTTPS client cannot be built.
    #[error("{host}: cannot build the HTTPS client: {error}")]
    Client {
        /// `mta-sts.<domain>`.
        host: String,
        /// The client's error.
        error: reqwest::Error,
    },
    /// The policy host's certificate is not WebPKI-valid for its name.
    #[error("{host}: certificate not valid: {words}")]
    Certificate {
        /// `mta-sts.<domain>`.
        host: String,
        /// The TLS error, in words.
        words: String,
    },
    /// The HTTPS request failed otherwise.
    #[error("{host}: {words}")]
    Request {
        /// `mta-sts.<domain>`.
        host: String,
        /// The error and its causes, in words.
        words: String,
    },
    /// A status other than 200 (redirects included: they are not followed).
    #[error("{host}: answered HTTP {status} (only 200 is accepted){}", redirect_note(*.status))]
    Status {
        /// `mta-sts.<domain>`.
        host: String,
        /// The status.
        status: reqwest::StatusCode,
    },
    /// A media type other than `text/plain`.
    #[error("{host}: served the policy as `{media}`; it must be text/plain")]
    MediaType {
        /// `mta-sts.<domain>`.
        host: String,
        /// The `Content-Type` as served.
        media: String,
    },
    /// `Content-Length` over [`MAX_POLICY_BYTES`].
    #[error("{host}: announced a body over {MAX_POLICY_BYTES} bytes")]
    AnnouncedTooLarge {
        /// `mta-sts.<domain>`.
        host: String,
    },
    /// A body over [`MAX_POLICY_BYTES`].
    #[error("{host}: sent a body over {MAX_POLICY_BYTES} bytes")]
    TooLarge {
        /// `mta-sts.<domain>`.
        host: String,
    },
    /// Reading the body failed.
    #[error("{host}: body: {error}")]
    Body {
        /// `mta-sts.<domain>`.
        host: String,
        /// The client's error.
        error: reqwest::Error,
    },
    /// The body is not UTF-8.
    #[error("{host}: the policy is not UTF-8 text")]
    NotUtf8 {
        /// `mta-sts.<domain>`.
        host: String,
    },
    /// The body is not a valid policy.
    #[error("{host}: invalid policy: {error}")]
    BadPolicy {
        /// `mta-sts.<domain>`.
        host: String,
        /// What is wrong with it.
        error: StsError,
    },
}

fn redirect_note(status: reqwest::StatusCode) -> &'static str {
    if status.is_redirection() {
        "; redirects are not followed (RFC 8461 §3.3)"
    } else {
        ""
    }
}

impl FetchError {
    /// The RFC 8460 result type to report.
    pub fn result_type(&self) -> ResultType {
        match self {
            FetchError::BadRecord { .. }
            | FetchError::NotUtf8 { .. }
            | FetchError::BadPolicy { .. } => ResultType::StsPolicyInvalid,
            FetchError::Certificate { .. } => ResultType::StsWebpkiInvalid,
            _ => ResultType::StsPolicyFetchError,
        }
    }

    /// The error as `Lookup::error` carries it: type and words.
    fn reported(&self) -> (ResultType, String) {
        (self.result_type(), self.to_string())
    }
}

impl MtaSts {
    /// Opens the cache directory (created if missing) and loads every entry.
    pub fn new(dns: Dns, settings: FetchSettings, dir: &Path) -> Result<MtaSts, SetupError> {
        std::fs::create_dir_all(dir).map_err(|error| SetupError::CacheDir {
            dir: dir.to_path_buf(),
            error,
        })?;
        let mut tls =
            crate::tls::https_client_config(&settings.extra_roots).map_err(|e| e.to_string())?;
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(MtaSts {
            dns,
            settings,
            dir: dir.to_path_buf(),
            tls: Arc::new(tls),
            memory: Mutex::new(read_cache_dir(dir)),
            fetching: Mutex::new(HashMap::new()),
            shared: std::sync::OnceLock::new(),
        })
    }

    /// Shares policies with the fleet through `cluster` from now on.
    pub fn share_through(&self, cluster: Arc<crate::cluster::Cluster>) {
        let _ = self.shared.set(cluster);
    }

    /// Takes the fleet's entry for `domain` when it is later than the local one
    /// ([`crate::cluster::sts::adopt`]); Redis down leaves the local cache as it is.
    async fn read_shared(&self, domain: &Domain) {
        let Some(cluster) = self.shared.get() else {
            return;
        };
        let entry = match cluster.sts_get(domain).await {
            Ok(Some(entry)) => entry,
            Ok(None) => return,
            Err(e) => {
                metrics::counter!(crate::model::metric::CLUSTER_LOCAL_FALLBACKS, "what" => "sts")
                    .increment(1);
                tracing::debug!(domain = %domain, error = %e, "fleet MTA-STS cache not read; local cache only");
                return;
            }
        };
        let local = self.memory.lock().unwrap().get(domain).cloned();
        if crate::cluster::sts::adopt(local.as_ref(), &entry, now_unix()) {
            tracing::info!(domain = %domain, id = %entry.id, "MTA-STS policy taken from the fleet's cache");
            self.store(domain, entry);
        }
    }

    /// Offers a fetched entry to the fleet (when in one).
    async fn write_shared(&self, entry: &CachedPolicy) {
        if let Some(cluster) = self.shared.get() {
            if let Err(e) = cluster.sts_put(entry).await {
                tracing::debug!(domain = %entry.domain, error = %e, "MTA-STS policy not shared with the fleet");
            }
        }
    }

    /// Rereads the on-disk cache (after `tlsrelay sts refresh|purge`, on SIGHUP).
    pub fn reload_from_disk(&self) {
        *self.memory.lock().unwrap() = read_cache_dir(&self.dir);
    }

    /// Every cached entry, sorted by domain.
    pub fn cached(&self) -> Vec<CachedPolicy> {
        let mut v: Vec<_> = self.memory.lock().unwrap().values().cloned().collect();
        v.sort_by(|a, b| a.domain.cmp(&b.domain));
        v
    }

    /// Forgets one domain's cached policy (or all, with None).
    pub fn purge(&self, domain: Option<&Domain>) -> usize {
        let mut mem = self.memory.lock().unwrap();
        let victims: Vec<Domain> = match domain {
            Some(d) => mem.keys().filter(|k| *k == d).cloned().collect(),
            None => mem.keys().cloned().collect(),
        };
        for d in &victims {
            mem.remove(d);
        }
        // Files written before names were A-labels may have other names (`Example.COM.json`).
        for (path, domain, _) in cache_files(&self.dir) {
            if victims.contains(&domain) {
                let _ = std::fs::remove_file(path);
            }
        }
        victims.len()
    }

    /// The cache file: the A-label is a safe file name (letters, digits, `-`, `.`; no leading `.`).
    fn path_of(&self, domain: &Domain) -> PathBuf {
        self.dir.join(format!("{domain}.json"))
    }

    fn unexpired(&self, domain: &Domain) -> Option<CachedPolicy> {
        let mem = self.memory.lock().unwrap();
        mem.get(domain)
            .filter(|c| c.expires_at > now_unix())
            .cloned()
    }

    fn store(&self, domain: &Domain, entry: CachedPolicy) {
        let path = self.path_of(domain);
        let tmp = path.with_extension("json.tmp");
        let written = serde_json::to_vec_pretty(&entry)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
            .and_then(|_| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            tracing::warn!(domain = %domain, error = %e, "cannot write the MTA-STS cache entry");
        }
        self.memory.lock().unwrap().insert(domain.clone(), entry);
    }

    /// The `_mta-sts.<domain>` record: `Ok(None)` when there is none.
    async fn record(&self, domain: &Domain) -> Result<Option<StsRecord>, FetchError> {
        match self.dns.txt(&format!("_mta-sts.{domain}")).await {
            Answer::Records { records, .. } => {
                let joined: Vec<Vec<u8>> = records.iter().map(|r| r.joined()).collect();
                sts::parse_txt(&joined).map_err(|error| FetchError::BadRecord {
                    domain: domain.clone(),
                    error,
                })
            }
            Answer::NoRecords { .. } | Answer::NxDomain { .. } => Ok(None),
            Answer::Bogus(why) | Answer::TempFail(why) => Err(FetchError::RecordLookup {
                domain: domain.clone(),
                why,
            }),
        }
    }

    /// The policy in force for `domain`, following RFC 8461 §5.
    pub async fn lookup(&self, domain: &Domain) -> Lookup {
        self.read_shared(domain).await;
        let cached = self.unexpired(domain);
        let cached_policy = || {
            cached
                .as_ref()
                .and_then(CachedPolicy::parsed)
                .map(|p| (p, Source::Cached))
        };
        let record = match self.record(domain).await {
            Ok(Some(record)) => record,
            // No record: a cached policy still stands until it expires (§3.2).
            Ok(None) => {
                return Lookup {
                    policy: cached_policy(),
                    ..Lookup::default()
                }
            }
            Err(e) => {
                // A failed lookup is temporary: not worth a report while the cache
                // stands in. A record that does not parse always is.
                let temporary = matches!(e, FetchError::RecordLookup { .. });
                return Lookup {
                    policy: cached_policy(),
                    record_id: None,
                    error: (!temporary || cached.is_none()).then(|| e.reported()),
                };
            }
        };
        if cached.as_ref().is_some_and(|c| c.id == record.id) {
            metrics::counter!(crate::model::metric::STS_CACHE, "event" => "hit").increment(1);
            return Lookup {
                policy: cached_policy(),
                record_id: Some(record.id),
                error: None,
            };
        }
        // Concurrent lookups of one domain share one fetch: the others wait,
        // then find the policy it stored under the same id.
        let gate = self.fetch_gate(domain);
        let turn = gate.lock().await;
        if let Some(c) = self.unexpired(domain).filter(|c| c.id == record.id) {
            drop(turn);
            self.release_gate(domain, gate);
            metrics::counter!(crate::model::metric::STS_CACHE, "event" => "hit").increment(1);
            return Lookup {
                policy: c.parsed().map(|p| (p, Source::Cached)),
                record_id: Some(record.id),
                error: None,
            };
        }
        metrics::counter!(crate::model::metric::STS_CACHE, "event" => "miss").increment(1);
        let fetched = self.fetch_and_store(domain, record.id.clone()).await;
        drop(turn);
        self.release_gate(domain, gate);
        match fetched {
            Ok((policy, _)) => Lookup {
                policy: Some((policy, Source::Fetched)),
                record_id: Some(record.id),
                error: None,
            },
            Err(e) => {
                metrics::counter!(crate::model::metric::STS_CACHE, "event" => "fetch_error")
                    .increment(1);
                tracing::info!(domain = %domain, error = %e, "MTA-STS policy fetch failed");
                Lookup {
                    policy: cached_policy(),
                    record_id: Some(record.id),
                    error: Some(e.reported()),
                }
            }
        }
    }

    /// The lock that lets one lookup of `domain` fetch at a time.
    fn fetch_gate(&self, domain: &Domain) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.fetching.lock().unwrap();
        map.entry(domain.clone()).or_default().clone()
    }

    /// Forgets the lock of `domain` once no other lookup holds or waits for it.
    fn release_gate(&self, domain: &Domain, gate: Arc<tokio::sync::Mutex<()>>) {
        let mut map = self.fetching.lock().unwrap();
        // Ours and the map's: nobody else has it.
        if Arc::strong_count(&gate) <= 2 {
            map.remove(domain);
        }
    }

    /// Fetches now (ignoring the cache's freshness) and stores the result: `sts refresh`.
    pub async fn refresh(&self, domain: &Domain) -> Result<CachedPolicy, FetchError> {
        let record = self
            .record(domain)
            .await?
            .ok_or_else(|| FetchError::NoRecord {
                domain: domain.clone(),
            })?;
        let (_, entry) = self.fetch_and_store(domain, record.id).await?;
        Ok(entry)
    }

    /// Fetches the policy and caches it under the TXT record `id`.
    async fn fetch_and_store(
        &self,
        domain: &Domain,
        id: String,
    ) -> Result<(StsPolicy, CachedPolicy), FetchError> {
        let fetched = self.fetch(domain).await?;
        let policy = fetched.0.clone();
        let entry = CachedPolicy::fetched_now(domain, id, fetched);
        self.store(domain, entry.clone());
        self.write_shared(&entry).await;
        Ok((policy, entry))
    }

    /// Fetches and parses `https://mta-sts.<domain>/.well-known/mta-sts.txt`: the
    /// policy and its text as served.
    pub async fn fetch(&self, domain: &Domain) -> Result<(StsPolicy, String), FetchError> {
        let host = format!("mta-sts.{domain}");
        let addrs = self.policy_host_addrs(&host).await?;
        let client = self
            .https_client(&host, &addrs)
            .map_err(|error| FetchError::Client {
                host: host.clone(),
                error,
            })?;
        let resp = client
            .get(self.policy_url(&host))
            .send()
            .await
            .map_err(|e| classify_fetch_error(&host, &e))?;
        let body = read_policy_body(&host, resp).await?;
        let text =
            String::from_utf8(body).map_err(|_| FetchError::NotUtf8 { host: host.clone() })?;
        let policy =
            sts::parse_policy(&text).map_err(|error| FetchError::BadPolicy { host, error })?;
        Ok((policy, text))
    }

    /// The policy host's addresses, at the configured port.
    async fn policy_host_addrs(&self, host: &str) -> Result<Vec<SocketAddr>, FetchError> {
        match self.dns.addresses(host).await {
            Answer::Records { records, .. } => Ok(records
                .iter()
                .map(|ip| SocketAddr::new(*ip, self.settings.port))
                .collect()),
            Answer::NoRecords { .. } | Answer::NxDomain { .. } => Err(FetchError::NoAddress {
                host: host.to_string(),
            }),
            Answer::Bogus(why) | Answer::TempFail(why) => Err(FetchError::AddressLookup {
                host: host.to_string(),
                why,
            }),
        }
    }

    /// A client that reaches `host` only at `addrs`, never redirected, no proxy.
    fn https_client(&self, host: &str, addrs: &[SocketAddr]) -> reqwest::Result<reqwest::Client> {
        crate::resolve::https::strict_client(
            &self.tls,
            host,
            addrs,
            "MTA-STS",
            self.settings.timeout,
        )
    }

    fn policy_url(&self, host: &str) -> String {
        if self.settings.port == 443 {
            format!("https://{host}/.well-known/mta-sts.txt")
        } else {
            format!(
                "https://{host}:{}/.well-known/mta-sts.txt",
                self.settings.port
            )
        }
    }

    /// Refetches cached policies that expire within `window`, at most `parallel` at once.
    pub async fn refresh_expiring(self: &Arc<Self>, window: Duration, parallel: usize) -> usize {
        let soon = now_unix() + window.as_secs() as i64;
        let expiring: Vec<(Domain, String)> = self
            .memory
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, c)| c.expires_at <= soon)
            .map(|(d, c)| (d.clone(), c.id.clone()))
            .collect();
        let count = expiring.len();
        let sem = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
        let mut set = tokio::task::JoinSet::new();
        for (domain, id) in expiring {
            let me = self.clone();
            let sem = sem.clone();
            set.spawn(async move {
                let _p = sem.acquire_owned().await;
                // A failed refetch keeps the entry until it expires (RFC 8461 §5.1).
                let _ = me.fetch_and_store(&domain, id).await;
            });
        }
        while set.join_next().await.is_some() {}
        count
    }
}

/// Checks the status, media type and announced length, then reads the body,
/// capped at [`MAX_POLICY_BYTES`] while it arrives.
async fn read_policy_body(host: &str, mut resp: reqwest::Response) -> Result<Vec<u8>, FetchError> {
    let host = || host.to_string();
    let status = resp.status();
    if status != reqwest::StatusCode::OK {
        return Err(FetchError::Status {
            host: host(),
            status,
        });
    }
    let media = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let essence = media.split(';').next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("text/plain") {
        return Err(FetchError::MediaType {
            host: host(),
            media,
        });
    }
    if resp
        .content_length()
        .is_some_and(|n| n as usize > MAX_POLICY_BYTES)
    {
        return Err(FetchError::AnnouncedTooLarge { host: host() });
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|error| FetchError::Body {
        host: host(),
        error,
    })? {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_POLICY_BYTES {
            return Err(FetchError::TooLarge { host: host() });
        }
    }
    Ok(body)
}

/// Every readable cache entry in `dir`, by domain. An entry whose domain is no
/// domain name is left out; one written under another spelling is read under its A-label.
fn read_cache_dir(dir: &Path) -> HashMap<Domain, CachedPolicy> {
    let mut memory: HashMap<Domain, CachedPolicy> = HashMap::new();
    for (_, domain, entry) in cache_files(dir) {
        // Two files for one domain (an old spelling and the A-label): the newer wins.
        if memory
            .get(&domain)
            .is_none_or(|c| c.fetched_at < entry.fetched_at)
        {
            memory.insert(domain, entry);
        }
    }
    memory
}

/// The readable cache files in `dir`: path, domain, and the entry (its domain in A-label form).
fn cache_files(dir: &Path) -> Vec<(PathBuf, Domain, CachedPolicy)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return vec![];
    };
    let mut out = Vec::new();
    for entry in rd.flatten() {
        let path = entry.path();
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        let Ok(mut c) = serde_json::from_slice::<CachedPolicy>(&bytes) else {
            continue;
        };
        if let Ok(domain) = Domain::parse(&c.domain) {
            c.domain = domain.to_string();
            out.push((path, domain, c));
        }
    }
    out
}

/// The error for a failed HTTPS request: a certificate problem is
/// `sts-webpki-invalid`, anything else `sts-policy-fetch-error`.
fn classify_fetch_error(host: &str, e: &reqwest::Error) -> FetchError {
    let certificate = |tls: &rustls::Error| FetchError::Certificate {
        host: host.to_string(),
        words: format!("invalid peer certificate: {}", crate::tls::tls_words(tls)),
    };
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = source {
        if let Some(tls) = s.downcast_ref::<rustls::Error>() {
            if matches!(tls, rustls::Error::InvalidCertificate(_)) {
                return certificate(tls);
            }
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if let Some(tls) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                if matches!(tls, rustls::Error::InvalidCertificate(_)) {
                    return certificate(tls);
                }
            }
        }
        source = s.source();
    }
    let mut words = e.to_string();
    let mut s = std::error::Error::source(e);
    while let Some(inner) = s {
        words.push_str(": ");
        words.push_str(&inner.to_string());
        s = inner.source();
    }
    let host = host.to_string();
    // hyper-util boxes the TLS error in types that hide rustls::Error from
    // downcasting; rustls's own wording identifies certificate failures.
    if words.contains("invalid peer certificate") {
        let words = crate::tls::plain_certificate_words(&words);
        FetchError::Certificate { host, words }
    } else {
        FetchError::Request { host, words }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetch_errors_map_to_rfc8460_types() {
        let d = || Domain::parse("example.com").unwrap();
        let h = || "mta-sts.example.com".to_string();
        let invalid = || StsError("bad".into());
        let cases = [
            (
                FetchError::NoRecord { domain: d() },
                ResultType::StsPolicyFetchError,
            ),
            (
                FetchError::BadRecord {
                    domain: d(),
                    error: invalid(),
                },
                ResultType::StsPolicyInvalid,
            ),
            (
                FetchError::RecordLookup {
                    domain: d(),
                    why: "SERVFAIL".into(),
                },
                ResultType::StsPolicyFetchError,
            ),
            (
                FetchError::Certificate {
                    host: h(),
                    words: "expired".into(),
                },
                ResultType::StsWebpkiInvalid,
            ),
            (
                FetchError::Status {
                    host: h(),
                    status: reqwest::StatusCode::FOUND,
                },
                ResultType::StsPolicyFetchError,
            ),
            (
                FetchError::TooLarge { host: h() },
                ResultType::StsPolicyFetchError,
            ),
            (
                FetchError::NotUtf8 { host: h() },
                ResultType::StsPolicyInvalid,
            ),
            (
                FetchError::BadPolicy {
                    host: h(),
                    error: invalid(),
                },
                ResultType::StsPolicyInvalid,
            ),
        ];
        for (e, want) in cases {
            assert_eq!(e.result_type(), want, "{e}");
        }
        let redirect = FetchError::Status {
            host: h(),
            status: reqwest::StatusCode::FOUND,
        };
        assert_eq!(
            redirect.to_string(),
            "mta-sts.example.com: answered HTTP 302 Found (only 200 is accepted); \
             redirects are not followed (RFC 8461 §3.3)"
        );
    }

    fn cache_entry(domain: &str, fetched_at: i64) -> String {
        serde_json::json!({
            "domain": domain,
            "id": fetched_at.to_string(),
            "policy": "version: STSv1\nmode: testing\nmax_age: 86400\n",
            "fetched_at": fetched_at,
            "expires_at": fetched_at + 86400,
        })
        .to_string()
    }

    #[tokio::test]
    async fn cache_entries_are_read_and_purged_under_their_a_label() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: String| std::fs::write(dir.path().join(name), text).unwrap();
        write("example.com.json", cache_entry("example.com", 1));
        // Written by an older version under the spelling it was given.
        write("BÜCHER.example.json", cache_entry("BÜCHER.example", 1));
        write(
            "xn--bcher-kva.example.json",
            cache_entry("xn--bcher-kva.example", 5),
        );
        write("bad.json", cache_entry("not a domain", 1));
        write("torn.json", "{\"domain\":".into());
        let mut got: Vec<(String, String, i64)> = read_cache_dir(dir.path())
            .into_iter()
            .map(|(k, c)| (k.to_string(), c.domain, c.fetched_at))
            .collect();
        got.sort();
        assert_eq!(
            got,
            [
                ("example.com".into(), "example.com".into(), 1),
                (
                    "xn--bcher-kva.example".into(),
                    "xn--bcher-kva.example".into(),
                    5
                ),
            ]
        );

        let dns = Dns::new(&crate::resolve::dns::DnsSettings {
            nameservers: vec!["127.0.0.1:9".parse().unwrap()],
            ..Default::default()
        })
        .unwrap();
        let settings = FetchSettings {
            port: 443,
            extra_roots: vec![],
            timeout: Duration::from_secs(1),
        };
        let sts = MtaSts::new(dns, settings, dir.path()).unwrap();
        assert_eq!(
            sts.purge(Some(&Domain::parse("bücher.example").unwrap())),
            1
        );
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["bad.json", "example.com.json", "torn.json"]);
    }
}
