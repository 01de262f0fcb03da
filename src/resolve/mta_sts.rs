//! MTA-STS (RFC 8461): discovery, HTTPS policy fetch, and the on-disk cache.
//!
//! The parsers and the MX matcher live in [`crate::protocol::sts`]; this module does the
//! I/O. The fetch follows §3.3 strictly: the certificate must be WebPKI-valid for
//! `mta-sts.<domain>`, redirects are not followed, only 200 counts, the media type
//! must be `text/plain`, and the body is capped while it is read. The cache
//! follows §5: a policy is used until it expires; a changed TXT `id` triggers a
//! refetch; a failed refetch keeps the unexpired cached policy; a fetched
//! `mode: none` replaces the cached policy at once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::protocol::sts::{self, StsPolicy};
use crate::reporting::outcome::ResultType;
use crate::resolve::dns::{Answer, Dns};
use crate::spool::now_unix;

/// Largest policy body accepted (RFC 8461 §3.3 suggests 64 KiB).
pub const MAX_POLICY_BYTES: usize = 64 * 1024;

/// A cached policy, as kept on disk.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CachedPolicy {
    /// The policy domain.
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
    memory: Mutex<HashMap<String, CachedPolicy>>,
}

/// Why a fetch failed: the RFC 8460 type and plain words.
pub type FetchError = (ResultType, String);

impl MtaSts {
    /// Opens the cache directory (created if missing) and loads every entry.
    pub fn new(dns: Dns, settings: FetchSettings, dir: &Path) -> Result<MtaSts, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let mut tls =
            crate::tls::https_client_config(&settings.extra_roots).map_err(|e| e.to_string())?;
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(MtaSts {
            dns,
            settings,
            dir: dir.to_path_buf(),
            tls: Arc::new(tls),
            memory: Mutex::new(read_cache_dir(dir)),
        })
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
    pub fn purge(&self, domain: Option<&str>) -> usize {
        let mut mem = self.memory.lock().unwrap();
        let victims: Vec<String> = match domain {
            Some(d) => mem.keys().filter(|k| k.as_str() == d).cloned().collect(),
            None => mem.keys().cloned().collect(),
        };
        for d in &victims {
            mem.remove(d);
            let _ = std::fs::remove_file(self.path_of(d));
        }
        victims.len()
    }

    fn path_of(&self, domain: &str) -> PathBuf {
        self.dir.join(format!("{domain}.json"))
    }

    fn unexpired(&self, domain: &str) -> Option<CachedPolicy> {
        let mem = self.memory.lock().unwrap();
        mem.get(domain)
            .filter(|c| c.expires_at > now_unix())
            .cloned()
    }

    fn store(&self, entry: CachedPolicy) {
        let path = self.path_of(&entry.domain);
        let tmp = path.with_extension("json.tmp");
        let written = serde_json::to_vec_pretty(&entry)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
            .and_then(|_| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            tracing::warn!(domain = %entry.domain, error = %e, "cannot write the MTA-STS cache entry");
        }
        self.memory
            .lock()
            .unwrap()
            .insert(entry.domain.clone(), entry);
    }

    /// The policy in force for `domain` (ASCII form), following RFC 8461 §5.
    pub async fn lookup(&self, domain: &str) -> Lookup {
        let cached = self.unexpired(domain);
        let from_cache = |c: &CachedPolicy| c.parsed().map(|p| (p, Source::Cached));
        let txt = self.dns.txt(&format!("_mta-sts.{domain}")).await;
        let record = match txt {
            Answer::Records { records, .. } => {
                let joined: Vec<Vec<u8>> = records.iter().map(|r| r.joined()).collect();
                match sts::parse_txt(&joined) {
                    Ok(r) => r,
                    Err(e) => {
                        return Lookup {
                            policy: cached.as_ref().and_then(from_cache),
                            record_id: None,
                            error: Some((
                                ResultType::StsPolicyInvalid,
                                format!("_mta-sts.{domain} TXT: {e}"),
                            )),
                        }
                    }
                }
            }
            Answer::NoRecords { .. } | Answer::NxDomain { .. } => None,
            Answer::Bogus(why) | Answer::TempFail(why) => {
                // Temporary: keep whatever the cache says.
                return Lookup {
                    policy: cached.as_ref().and_then(from_cache),
                    record_id: None,
                    error: cached.is_none().then(|| {
                        (
                            ResultType::StsPolicyFetchError,
                            format!("_mta-sts.{domain} TXT lookup failed: {why}"),
                        )
                    }),
                };
            }
        };
        let Some(record) = record else {
            // No record: a cached policy still stands until it expires (§3.2).
            return Lookup {
                policy: cached.as_ref().and_then(from_cache),
                record_id: None,
                error: None,
            };
        };
        if let Some(c) = &cached {
            if c.id == record.id {
                metrics::counter!(crate::reporting::metrics::STS_CACHE, "event" => "hit")
                    .increment(1);
                return Lookup {
                    policy: from_cache(c),
                    record_id: Some(record.id),
                    error: None,
                };
            }
        }
        metrics::counter!(crate::reporting::metrics::STS_CACHE, "event" => "miss").increment(1);
        match self.fetch(domain).await {
            Ok((policy, text)) => {
                let now = now_unix();
                self.store(CachedPolicy {
                    domain: domain.to_string(),
                    id: record.id.clone(),
                    policy: text,
                    fetched_at: now,
                    expires_at: now + policy.max_age as i64,
                });
                Lookup {
                    policy: Some((policy, Source::Fetched)),
                    record_id: Some(record.id),
                    error: None,
                }
            }
            Err(err) => {
                metrics::counter!(crate::reporting::metrics::STS_CACHE, "event" => "fetch_error")
                    .increment(1);
                tracing::info!(domain, error = %err.1, "MTA-STS policy fetch failed");
                Lookup {
                    policy: cached.as_ref().and_then(from_cache),
                    record_id: Some(record.id),
                    error: Some(err),
                }
            }
        }
    }

    /// Fetches now (ignoring the cache's freshness) and stores the result: `sts refresh`.
    pub async fn refresh(&self, domain: &str) -> Result<CachedPolicy, FetchError> {
        let id = match self.dns.txt(&format!("_mta-sts.{domain}")).await {
            Answer::Records { records, .. } => {
                let joined: Vec<Vec<u8>> = records.iter().map(|r| r.joined()).collect();
                match sts::parse_txt(&joined) {
                    Ok(Some(r)) => r.id,
                    Ok(None) => {
                        return Err((
                            ResultType::StsPolicyFetchError,
                            format!("_mta-sts.{domain} has no STSv1 record"),
                        ))
                    }
                    Err(e) => {
                        return Err((
                            ResultType::StsPolicyInvalid,
                            format!("_mta-sts.{domain}: {e}"),
                        ))
                    }
                }
            }
            _ => {
                return Err((
                    ResultType::StsPolicyFetchError,
                    format!("_mta-sts.{domain} has no TXT record"),
                ))
            }
        };
        let (policy, text) = self.fetch(domain).await?;
        let now = now_unix();
        let entry = CachedPolicy {
            domain: domain.to_string(),
            id,
            policy: text,
            fetched_at: now,
            expires_at: now + policy.max_age as i64,
        };
        self.store(entry.clone());
        Ok(entry)
    }

    /// Fetches and parses `https://mta-sts.<domain>/.well-known/mta-sts.txt`.
    pub async fn fetch(&self, domain: &str) -> Result<(StsPolicy, String), FetchError> {
        let host = format!("mta-sts.{domain}");
        let fetch_err = |s: String| (ResultType::StsPolicyFetchError, format!("{host}: {s}"));
        let addrs = match self.dns.addresses(&host).await {
            Answer::Records { records, .. } => records,
            Answer::NoRecords { .. } | Answer::NxDomain { .. } => {
                return Err(fetch_err("has no address records".into()))
            }
            Answer::Bogus(w) | Answer::TempFail(w) => {
                return Err(fetch_err(format!("address lookup failed: {w}")))
            }
        };
        let sockets: Vec<SocketAddr> = addrs
            .iter()
            .map(|ip| SocketAddr::new(*ip, self.settings.port))
            .collect();
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured((*self.tls).clone())
            .redirect(reqwest::redirect::Policy::none())
            .https_only(true)
            .user_agent(concat!(
                "tlsrelay/",
                env!("CARGO_PKG_VERSION"),
                " (MTA-STS)"
            ))
            .timeout(self.settings.timeout)
            .resolve_to_addrs(&host, &sockets)
            .no_proxy()
            .build()
            .map_err(|e| fetch_err(format!("cannot build the HTTPS client: {e}")))?;
        let url = if self.settings.port == 443 {
            format!("https://{host}/.well-known/mta-sts.txt")
        } else {
            format!(
                "https://{host}:{}/.well-known/mta-sts.txt",
                self.settings.port
            )
        };
        let mut resp = client
            .get(&url)
            .send()
            .await
            .map_err(|e| classify_fetch_error(&host, &e))?;
        let status = resp.status();
        if status != reqwest::StatusCode::OK {
            let mut why = format!("answered HTTP {status} (only 200 is accepted)");
            if status.is_redirection() {
                why.push_str("; redirects are not followed (RFC 8461 §3.3)");
            }
            return Err(fetch_err(why));
        }
        let media = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let essence = media
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if essence != "text/plain" {
            return Err(fetch_err(format!(
                "served the policy as `{media}`; it must be text/plain"
            )));
        }
        if resp
            .content_length()
            .is_some_and(|n| n as usize > MAX_POLICY_BYTES)
        {
            return Err(fetch_err(format!(
                "announced a body over {MAX_POLICY_BYTES} bytes"
            )));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| fetch_err(format!("body: {e}")))?
        {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_POLICY_BYTES {
                return Err(fetch_err(format!(
                    "sent a body over {MAX_POLICY_BYTES} bytes"
                )));
            }
        }
        let text = String::from_utf8(body).map_err(|_| {
            (
                ResultType::StsPolicyInvalid,
                format!("{host}: the policy is not UTF-8 text"),
            )
        })?;
        let policy = sts::parse_policy(&text).map_err(|e| {
            (
                ResultType::StsPolicyInvalid,
                format!("{host}: invalid policy: {e}"),
            )
        })?;
        Ok((policy, text))
    }

    /// Refetches cached policies that expire within `window`, at most `parallel` at once.
    pub async fn refresh_expiring(self: &Arc<Self>, window: Duration, parallel: usize) -> usize {
        let soon = now_unix() + window.as_secs() as i64;
        let domains: Vec<String> = self
            .cached()
            .into_iter()
            .filter(|c| c.expires_at <= soon)
            .map(|c| c.domain)
            .collect();
        let sem = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
        let mut set = tokio::task::JoinSet::new();
        for d in domains.clone() {
            let me = self.clone();
            let sem = sem.clone();
            set.spawn(async move {
                let _p = sem.acquire_owned().await;
                if let Ok((policy, text)) = me.fetch(&d).await {
                    let id = me
                        .memory
                        .lock()
                        .unwrap()
                        .get(&d)
                        .map(|c| c.id.clone())
                        .unwrap_or_default();
                    let now = now_unix();
                    me.store(CachedPolicy {
                        domain: d,
                        id,
                        policy: text,
                        fetched_at: now,
                        expires_at: now + policy.max_age as i64,
                    });
                }
            });
        }
        while set.join_next().await.is_some() {}
        domains.len()
    }
}

/// Every readable cache entry in `dir`, by domain.
fn read_cache_dir(dir: &Path) -> HashMap<String, CachedPolicy> {
    let mut memory = HashMap::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for entry in rd.flatten() {
            if let Ok(bytes) = std::fs::read(entry.path()) {
                if let Ok(c) = serde_json::from_slice::<CachedPolicy>(&bytes) {
                    memory.insert(c.domain.clone(), c);
                }
            }
        }
    }
    memory
}

/// The RFC 8460 type for a failed HTTPS request: a certificate problem is
/// `sts-webpki-invalid`, anything else `sts-policy-fetch-error`.
fn classify_fetch_error(host: &str, e: &reqwest::Error) -> FetchError {
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = source {
        if let Some(tls) = s.downcast_ref::<rustls::Error>() {
            if matches!(tls, rustls::Error::InvalidCertificate(_)) {
                return (
                    ResultType::StsWebpkiInvalid,
                    format!("{host}: certificate not valid: {tls}"),
                );
            }
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if let Some(tls) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                if matches!(tls, rustls::Error::InvalidCertificate(_)) {
                    return (
                        ResultType::StsWebpkiInvalid,
                        format!("{host}: certificate not valid: {tls}"),
                    );
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
    // hyper-util boxes the TLS error in types that hide rustls::Error from
    // downcasting; rustls's own wording identifies certificate failures.
    if words.contains("invalid peer certificate") {
        return (
            ResultType::StsWebpkiInvalid,
            format!("{host}: certificate not valid: {words}"),
        );
    }
    (ResultType::StsPolicyFetchError, format!("{host}: {words}"))
}
