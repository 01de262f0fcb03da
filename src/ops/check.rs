//! `tlsrelay check DOMAIN`: what tlsrelay would do for a domain, and why.
//!
//! It is delivery's gather and plan ([`Sources::plan_for`]) followed by a
//! rendering, so its verdict is the relay's verdict. `--probe` also
//! connects to each host, does STARTTLS without sending mail, and checks the
//! presented chain against DANE, MTA-STS and the floor.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use serde::Serialize;

use rustls_pki_types::CertificateDer;

use super::local_report::{local_section, render_local, LocalSection};
use crate::config::{Config, Floor};
use crate::delivery::client::{Dial, HostError, Session};
use crate::model::dns::{Answer, Security};
use crate::model::domain::Domain;
use crate::model::mechanism::TlsDemand;
use crate::policy::facts::{DomainFacts, HostFacts};
use crate::policy::local::PolicySet;
use crate::policy::plan::tlsa_string;
use crate::policy::{
    plan_domain, DomainPlan, HostStep, MxPlan, PeerCheck, Requirement, Settings, SkipCause, Target,
};
use crate::protocol::sts::Mode;
use crate::resolve::dns::Dns;
use crate::resolve::gather::Gatherer;
use crate::resolve::mta_sts::MtaSts;
use crate::tls::ClientTls;

/// Everything `check` found, also its JSON form.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The domain checked (ASCII form).
    pub domain: String,
    /// The DNSSEC self-test: "ok", or why DANE cannot work now.
    pub dnssec_self_test: String,
    /// MX lookup: status words and DNSSEC status.
    pub mx: String,
    /// DNSSEC status of the MX answer.
    pub mx_dnssec: Option<String>,
    /// The `_mta-sts` record id, if any.
    pub mta_sts_record: Option<String>,
    /// The MTA-STS policy in force (mode and mx patterns) and where it came from.
    pub mta_sts_policy: Option<StsSummary>,
    /// A problem with MTA-STS discovery or fetch.
    pub mta_sts_error: Option<String>,
    /// The `_smtp._tls` TLS-RPT record, if any.
    pub tls_rpt: Option<String>,
    /// The local policy for the domain, if any.
    pub local_policy: Option<String>,
    /// The local entry in detail: route, exception state, override standing, egress.
    pub local: Option<LocalSection>,
    /// Per MX host.
    pub hosts: Vec<HostReport>,
    /// Whether tlsrelay can deliver to the domain (as far as `verdict_kind` knows).
    pub deliverable: bool,
    /// What the verdict rests on.
    pub verdict_kind: VerdictKind,
    /// The verdict in words.
    pub verdict: String,
}

/// What a `check` verdict rests on; the exit status follows `deliverable`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum VerdictKind {
    /// The policies allow delivery and hosts would be contacted; not probed, so
    /// STARTTLS and certificates are unknown (exit 0).
    PolicyAllows,
    /// At least one host passed the live STARTTLS and certificate check (exit 0).
    ProbePassed,
    /// The policies leave no host that may be contacted (exit 1).
    NoUsableHost,
    /// No host passed the live check (exit 1).
    ProbeFailed,
    /// Mail to the domain fails for good, e.g. a null MX (exit 1).
    Refused,
    /// Mail to the domain is deferred now, e.g. DNS failed (exit 1).
    Deferred,
    /// The domain is not a domain name (exit 1).
    BadDomain,
}

/// A TLSA record in full, for `--json`.
#[derive(Debug, Serialize)]
pub struct TlsaRecord {
    /// Certificate usage (2 DANE-TA, 3 DANE-EE; others are unusable for SMTP).
    pub usage: u8,
    /// Selector (0 certificate, 1 public key).
    pub selector: u8,
    /// Matching type (0 exact, 1 SHA-256, 2 SHA-512).
    pub matching: u8,
    /// Association data, hex.
    pub data: String,
    /// Whether tlsrelay can use it (RFC 7672 §3.1).
    pub usable: bool,
    /// The name it was found under (the TLSA base domain).
    pub base: String,
}

/// One certificate of a probed chain, for `--json`.
#[derive(Debug, Serialize)]
pub struct CertInfo {
    /// SHA-256 of the certificate, hex.
    pub sha256: String,
    /// Its DNS names.
    pub names: Vec<String>,
    /// Start of validity (RFC 3339), when it parses.
    pub not_before: Option<String>,
    /// End of validity (RFC 3339), when it parses.
    pub not_after: Option<String>,
    /// Whole days from now until `not_after` (negative: expired).
    pub days_left: Option<i64>,
}

/// The MTA-STS policy in plain terms.
#[derive(Debug, Serialize)]
pub struct StsSummary {
    /// enforce, testing or none.
    pub mode: String,
    /// The mx patterns.
    pub mx: Vec<String>,
    /// max_age in seconds.
    pub max_age: u64,
    /// fetched or cached.
    pub source: String,
}

/// What `check` found for one MX host.
#[derive(Debug, Serialize)]
pub struct HostReport {
    /// Preference and name.
    pub preference: u16,
    /// The MX host name.
    pub host: String,
    /// Its addresses.
    pub addresses: Vec<String>,
    /// DNSSEC status of the addresses, or the lookup problem.
    pub address_dnssec: String,
    /// TLSA records (`usage selector matching data-prefix`, usable or not), or why none.
    pub tlsa: Vec<String>,
    /// What the TLSA lookup said.
    pub tlsa_status: String,
    /// The name sent as SNI and checked (the TLSA base domain under DANE), when the host is contacted.
    pub sni: Option<String>,
    /// The TLSA records in full.
    pub tlsa_records: Vec<TlsaRecord>,
    /// The mechanism that would authenticate the host (dane, mta-sts, local, verify, encrypt).
    pub mechanism: Option<String>,
    /// The requirement tlsrelay would apply, or why the host is skipped.
    pub requirement: String,
    /// Whether the host would be contacted.
    pub usable: bool,
    /// `--probe` results.
    pub probe: Option<ProbeReport>,
}

/// What a live STARTTLS probe found.
#[derive(Debug, Serialize)]
pub struct ProbeReport {
    /// The address probed.
    pub address: String,
    /// Connection/handshake result, in words.
    pub result: String,
    /// TLS version.
    pub tls_version: Option<String>,
    /// Cipher suite.
    pub cipher: Option<String>,
    /// The presented chain: per certificate, SHA-256, the DNS names and expiry.
    pub chain: Vec<String>,
    /// The same chain as fields.
    pub certificates: Vec<CertInfo>,
    /// Whether the chain satisfies the TLSA records (None when DANE does not apply).
    pub dane: Option<String>,
    /// Whether it satisfies MTA-STS (WebPKI for the MX name), when a policy applies.
    pub mta_sts: Option<String>,
    /// Whether it satisfies the floor.
    pub floor: String,
    /// Whether it satisfies the requirement tlsrelay would apply.
    pub satisfies_requirement: bool,
}

/// Where `check` reads its facts: the same sources delivery uses.
pub struct Sources<'a> {
    /// The configuration (port, floor, host limit, whether MTA-STS is on).
    pub config: &'a Config,
    /// The validating resolver.
    pub dns: &'a Dns,
    /// The MTA-STS engine.
    pub sts: &'a MtaSts,
    /// The local policies.
    pub policies: &'a PolicySet,
}

impl Sources<'_> {
    /// The facts and the plan for `domain`, by the same gather and plan as delivery.
    pub async fn plan_for(&self, domain: &Domain) -> (DomainFacts, DomainPlan) {
        let d = &self.config.delivery;
        let facts = Gatherer {
            dns: self.dns,
            mta_sts: self.config.mta_sts.enabled.then_some(self.sts),
            policies: self.policies,
            port: d.port,
            max_hosts: d.max_hosts_per_attempt,
        }
        .gather(domain)
        .await;
        let plan = plan_domain(&facts, Settings::of(d), TlsDemand::Standard);
        (facts, plan)
    }
}

/// Runs the check.
pub async fn run(
    config: &Config,
    dns: &Dns,
    sts: &MtaSts,
    policies: &PolicySet,
    domain: &str,
    probe: bool,
) -> Report {
    let self_test = match dns.self_test().await {
        Ok(()) => "ok: the root DNSKEY validates".into(),
        Err(why) => format!("FAILED: {why}; domains that need DANE are deferred"),
    };
    let domain = match Domain::parse(domain) {
        Ok(d) => d,
        Err(e) => {
            let mut r = Report::empty(domain, self_test, format!("cannot check: {e}"));
            r.verdict_kind = VerdictKind::BadDomain;
            return r;
        }
    };
    let src = Sources {
        config,
        dns,
        sts,
        policies,
    };
    let (facts, plan) = src.plan_for(&domain).await;
    let mut report = Report::empty(domain.as_str(), self_test, String::new());
    report.tls_rpt = tls_rpt_record(dns, &domain).await;
    describe_policies(&mut report, &facts);
    let today = chrono::Utc::now().date_naive();
    report.local = Some(local_section(&facts, config.delivery.egress(), today));
    let steps = match plan {
        DomainPlan::Fail { status, reason } => {
            report.mx = format!("permanent failure {status}: {reason}");
            report.verdict = report.mx.clone();
            report.verdict_kind = VerdictKind::Refused;
            return report;
        }
        DomainPlan::Defer { reason, .. } => {
            report.mx = format!("deferred: {reason}");
            report.verdict = report.mx.clone();
            report.verdict_kind = VerdictKind::Deferred;
            return report;
        }
        DomainPlan::Hosts { steps, .. } => steps,
    };
    describe_mx(&mut report, &facts);
    let tls = crate::tls::ClientTls::new(&config.delivery.extra_roots).ok();
    for (hf, step) in facts.hosts.iter().zip(&steps) {
        let mut h = host_report(hf, step);
        if let (true, Some(tls), HostStep::Connect(t)) = (probe, &tls, step) {
            let ctx = ProbeContext {
                config,
                tls,
                facts: &facts,
                host: hf,
            };
            h.probe = Some(ctx.probe(t).await);
        }
        report.hosts.push(h);
    }
    conclude(&mut report, probe);
    report
}

impl Report {
    /// A report with nothing found yet.
    fn empty(domain: &str, dnssec_self_test: String, verdict: String) -> Report {
        Report {
            domain: domain.to_string(),
            dnssec_self_test,
            mx: String::new(),
            mx_dnssec: None,
            mta_sts_record: None,
            mta_sts_policy: None,
            mta_sts_error: None,
            tls_rpt: None,
            local_policy: None,
            local: None,
            hosts: vec![],
            deliverable: false,
            verdict_kind: VerdictKind::NoUsableHost,
            verdict,
        }
    }
}

/// The `_smtp._tls` record(s), if any.
async fn tls_rpt_record(dns: &Dns, domain: &Domain) -> Option<String> {
    let Answer::Records { records, .. } = dns.txt(&format!("_smtp._tls.{domain}")).await else {
        return None;
    };
    let texts: Vec<String> = records
        .iter()
        .map(|r| String::from_utf8_lossy(&r.joined()).into_owned())
        .filter(|t| t.starts_with("v=TLSRPTv1"))
        .collect();
    (!texts.is_empty()).then(|| texts.join(" | "))
}

/// The local policy and MTA-STS as gathered.
fn describe_policies(report: &mut Report, facts: &DomainFacts) {
    report.local_policy = facts.local.as_ref().map(|p| {
        format!(
            "{} (level {}, from {})",
            p.domain,
            p.level.as_str(),
            p.source
        )
    });
    report.mta_sts_record = facts.sts.record_id.clone();
    report.mta_sts_error = (facts.sts.error.as_ref()).map(|(t, w)| format!("{}: {w}", t.as_str()));
    report.mta_sts_policy = facts.sts.policy.as_ref().map(|p| StsSummary {
        mode: p.mode.as_str().into(),
        mx: p.mx_strings(),
        max_age: p.max_age,
        source: facts.sts.source.clone().unwrap_or_default(),
    });
}

/// The MX answer in words.
fn describe_mx(report: &mut Report, facts: &DomainFacts) {
    if let MxPlan::Hosts {
        hosts,
        security,
        implicit,
    } = &facts.mx
    {
        report.mx = if *implicit {
            format!("no MX records; the domain itself is the mail host (implicit MX, DNSSEC {security})")
        } else {
            format!("{} MX host(s), DNSSEC {security}", hosts.len())
        };
        report.mx_dnssec = Some(security.to_string());
    }
}

/// One host's facts and its step of the plan.
fn host_report(hf: &HostFacts, step: &HostStep) -> HostReport {
    let mut h = HostReport {
        preference: hf.mx.preference,
        host: hf.mx.host.clone(),
        addresses: vec![],
        address_dnssec: String::new(),
        tlsa: vec![],
        tlsa_status: String::new(),
        tlsa_records: tlsa_records(hf),
        mechanism: None,
        sni: None,
        requirement: String::new(),
        usable: false,
        probe: None,
    };
    match &hf.addresses {
        Answer::Records {
            records, security, ..
        } => {
            h.addresses = records.iter().map(|a| a.to_string()).collect();
            h.address_dnssec = security.to_string();
        }
        Answer::Bogus(w) => h.address_dnssec = format!("bogus: {w}"),
        Answer::TempFail(w) => h.address_dnssec = format!("lookup failed: {w}"),
        _ => h.address_dnssec = "no address records".into(),
    }
    (h.tlsa, h.tlsa_status) = describe_tlsa(hf);
    match step {
        HostStep::Connect(t) => {
            h.usable = true;
            h.sni = Some(t.req.sni.clone());
            h.mechanism = Some(t.req.auth_label().to_string());
            h.requirement = describe(&t.req);
        }
        HostStep::Skip(s) if s.cause == SkipCause::Dns => {
            h.requirement = "skipped: no usable address".into();
        }
        HostStep::Skip(s) => h.requirement = format!("not contacted: {}", s.reason),
    }
    h
}

/// The TLSA records in full, as fields.
fn tlsa_records(hf: &HostFacts) -> Vec<TlsaRecord> {
    let Some(Answer::Records { records, .. }) = hf.tlsa.as_ref().map(|t| &t.answer) else {
        return vec![];
    };
    let base = hf.tlsa.as_ref().map(|t| t.base.clone()).unwrap_or_default();
    (records.iter())
        .map(|r| TlsaRecord {
            usage: r.usage,
            selector: r.selector,
            matching: r.matching,
            data: r.data.iter().map(|b| format!("{b:02x}")).collect(),
            usable: r.is_usable(),
            base: base.clone(),
        })
        .collect()
}

/// The TLSA records (each marked usable or not) and the lookup's status.
fn describe_tlsa(hf: &HostFacts) -> (Vec<String>, String) {
    let Some(t) = &hf.tlsa else {
        let why = "not looked up: the MX answer or the addresses are not DNSSEC-secure, so DANE cannot apply";
        return (vec![], why.into());
    };
    match &t.answer {
        Answer::Records {
            records, security, ..
        } => {
            let lines = records
                .iter()
                .map(|r| {
                    let use_ = if r.is_usable() {
                        "usable"
                    } else {
                        "unusable for SMTP"
                    };
                    format!("{} ({use_}) at {}", tlsa_string(r), t.base)
                })
                .collect();
            (
                lines,
                format!("{} record(s), DNSSEC {security}", records.len()),
            )
        }
        Answer::NoRecords { security } | Answer::NxDomain { security } => {
            (vec![], format!("none (DNSSEC {security})"))
        }
        Answer::Bogus(w) => (vec![], format!("bogus: {w}")),
        Answer::TempFail(w) => (vec![], format!("lookup failed: {w}")),
    }
}

/// The requirement in words.
fn describe(req: &Requirement) -> String {
    let m = req.auth_label();
    let sni = &req.sni;
    match &req.check {
        PeerCheck::WebPki => format!("{m}: TLS with a certificate WebPKI-valid for {sni}"),
        PeerCheck::EncryptOnly => format!("{m}: TLS required, certificate not checked"),
        PeerCheck::Dane { records, names } => format!(
            "{m}: TLS authenticated by {} usable TLSA record(s); SNI {sni}; DANE-TA names: {}",
            records.len(),
            names.join(", ")
        ),
        PeerCheck::Names { names, ca } => format!(
            "{m}: TLS with a certificate naming one of {} that chains to {}",
            names.join(", "),
            if ca.is_some() {
                "the policy's CA file"
            } else {
                "the trusted roots"
            }
        ),
        PeerCheck::Fingerprint { cert, spki } => format!(
            "{m}: TLS with a pinned certificate ({} certificate and {} public-key SHA-256 pin(s))",
            cert.len(),
            spki.len()
        ),
    }
}

/// Whether tlsrelay can deliver, and the verdict in words.
fn conclude(report: &mut Report, probe: bool) {
    let ascii = report.domain.clone();
    let usable = report.hosts.iter().filter(|h| h.usable).count();
    let probed_ok = (report.hosts.iter())
        .filter(|h| h.probe.as_ref().is_some_and(|p| p.satisfies_requirement))
        .count();
    report.verdict_kind = match (probe, probed_ok > 0, usable > 0) {
        (true, true, _) => VerdictKind::ProbePassed,
        (true, false, _) => VerdictKind::ProbeFailed,
        (false, _, true) => VerdictKind::PolicyAllows,
        (false, _, false) => VerdictKind::NoUsableHost,
    };
    report.deliverable = matches!(
        report.verdict_kind,
        VerdictKind::ProbePassed | VerdictKind::PolicyAllows
    );
    report.verdict = match report.verdict_kind {
        VerdictKind::PolicyAllows => format!(
            "policy allows delivery to {ascii}: {usable} host(s) would be contacted; \
             hosts not probed, so STARTTLS and certificates are unknown (add --probe)"
        ),
        VerdictKind::ProbePassed => {
            format!("tlsrelay can deliver to {ascii}: {probed_ok} host(s) passed the live check")
        }
        VerdictKind::ProbeFailed => {
            format!("tlsrelay cannot deliver to {ascii} now: no MX host passed the live check")
        }
        _ => format!("tlsrelay cannot deliver to {ascii} now: no MX host may be contacted"),
    };
}

/// What a probe of one host needs.
struct ProbeContext<'a> {
    config: &'a Config,
    tls: &'a ClientTls,
    facts: &'a DomainFacts,
    host: &'a HostFacts,
}

impl ProbeContext<'_> {
    /// Connects to the host's first address with the encrypt-only check to see
    /// the chain, then judges the chain offline by every rule.
    async fn probe(&self, t: &Target) -> ProbeReport {
        let addr = SocketAddr::new(t.addrs[0], t.port);
        let mut p = ProbeReport {
            address: addr.to_string(),
            result: String::new(),
            tls_version: None,
            cipher: None,
            chain: vec![],
            certificates: vec![],
            dane: None,
            mta_sts: None,
            floor: String::new(),
            satisfies_requirement: false,
        };
        let session = match self
            .open(addr, &t.req.sni, t.egress.source_for(addr.ip()))
            .await
        {
            Ok(s) => s,
            Err(e) => {
                p.result = e.reason;
                p.floor = "not reached".into();
                return p;
            }
        };
        p.result = "STARTTLS and handshake completed".into();
        p.tls_version = Some(session.tls_version.clone());
        p.cipher = Some(session.tls_cipher.clone());
        let chain = session.peer_certificates.clone();
        session.quit().await;
        p.certificates = chain.iter().map(cert_info).collect();
        p.chain = p.certificates.iter().map(describe_cert).collect();
        self.judge(&mut p, &chain, t);
        p
    }

    /// STARTTLS with the encrypt-only check, so that any chain is seen.
    async fn open(
        &self,
        addr: SocketAddr,
        sni: &str,
        source: Option<IpAddr>,
    ) -> Result<Session, HostError> {
        let d = &self.config.delivery;
        let timeouts = Dial::probe(d, source);
        let tls = self.tls.config(&PeerCheck::EncryptOnly);
        let helo = self.config.helo_name();
        Session::open(&self.host.mx.host, addr, helo, tls, sni, timeouts).await
    }

    /// The chain against DANE, MTA-STS, the floor and the planned requirement.
    fn judge(&self, p: &mut ProbeReport, chain: &[CertificateDer<'static>], t: &Target) {
        let host = self.host.mx.host.as_str();
        let judge = |check: &PeerCheck, name: &str| match self.tls.evaluate(check, chain, name) {
            Ok(()) => "satisfied".to_string(),
            Err(e) => format!("not satisfied: {e}"),
        };
        if let Some(tf) = &self.host.tlsa {
            if let Answer::Records {
                records,
                security: Security::Secure,
                ..
            } = &tf.answer
            {
                let usable: Vec<_> = (records.iter())
                    .filter(|r| r.is_usable())
                    .cloned()
                    .collect();
                if !usable.is_empty() {
                    let mut names = vec![tf.base.clone()];
                    if tf.base != host {
                        names.push(host.to_string());
                    }
                    let check = PeerCheck::Dane {
                        records: usable,
                        names,
                    };
                    p.dane = Some(judge(&check, &tf.base));
                }
            }
        }
        if let Some(policy) = self
            .facts
            .sts
            .policy
            .as_ref()
            .filter(|p| p.mode != Mode::None)
        {
            p.mta_sts = Some(if policy.allows(host) {
                judge(&PeerCheck::WebPki, host)
            } else {
                "not satisfied: host not listed in the policy".into()
            });
        }
        let floor = match self.config.delivery.floor {
            Floor::Verify => PeerCheck::WebPki,
            Floor::Encrypt => PeerCheck::EncryptOnly,
        };
        p.floor = judge(&floor, host);
        p.satisfies_requirement = self.tls.evaluate(&t.req.check, chain, &t.req.sni).is_ok();
    }
}

/// A certificate's fingerprint, names and validity.
fn cert_info(c: &CertificateDer<'_>) -> CertInfo {
    let sha256: String = ring::digest::digest(&ring::digest::SHA256, c.as_ref())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let names = webpki::EndEntityCert::try_from(c)
        .map(|ee| ee.valid_dns_names().map(str::to_string).collect())
        .unwrap_or_default();
    let validity = x509_parser::parse_x509_certificate(c.as_ref())
        .ok()
        .map(|(_, x)| {
            (
                x.validity().not_before.timestamp(),
                x.validity().not_after.timestamp(),
            )
        });
    let now = chrono::Utc::now().timestamp();
    CertInfo {
        sha256,
        names,
        not_before: validity.map(|(b, _)| rfc3339(b)),
        not_after: validity.map(|(_, a)| rfc3339(a)),
        days_left: validity.map(|(_, a)| (a - now).div_euclid(86400)),
    }
}

/// Unix seconds as RFC 3339 UTC.
fn rfc3339(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// A certificate as `sha256:HEX names: [..] expires DATE (N days)`.
fn describe_cert(c: &CertInfo) -> String {
    let expiry = match (&c.not_after, c.days_left) {
        (Some(at), Some(d)) if d < 0 => format!(" EXPIRED {at}"),
        (Some(at), Some(d)) => format!(" expires {at} ({d} days)"),
        _ => String::new(),
    };
    format!(
        "sha256:{} names: [{}]{expiry}",
        c.sha256,
        c.names.join(", ")
    )
}

/// The report in plain words, for people.
pub fn render(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "domain:        {}", r.domain);
    let _ = writeln!(out, "DNSSEC:        {}", r.dnssec_self_test);
    let _ = writeln!(out, "MX:            {}", r.mx);
    match &r.local {
        Some(section) => render_local(&mut out, section),
        None => {
            let local = r.local_policy.as_deref().unwrap_or("none");
            let _ = writeln!(out, "local policy:  {local}");
        }
    }
    match (&r.mta_sts_record, &r.mta_sts_policy) {
        (_, Some(p)) => {
            let _ = writeln!(
                out,
                "MTA-STS:       mode {} ({}), mx {}, max_age {}s{}",
                p.mode,
                p.source,
                p.mx.join(", "),
                p.max_age,
                r.mta_sts_record
                    .as_ref()
                    .map(|id| format!(", record id {id}"))
                    .unwrap_or_default()
            );
        }
        (Some(id), None) => {
            let _ = writeln!(out, "MTA-STS:       record id {id}, but no usable policy");
        }
        (None, None) => {
            let _ = writeln!(out, "MTA-STS:       none");
        }
    }
    if let Some(e) = &r.mta_sts_error {
        let _ = writeln!(out, "               problem: {e}");
    }
    let _ = writeln!(
        out,
        "TLS-RPT:       {}",
        r.tls_rpt.as_deref().unwrap_or("none")
    );
    for h in &r.hosts {
        render_host(&mut out, h);
    }
    let _ = writeln!(out, "\n{}", r.verdict);
    // TXT records, host names, certificate names and replies come from the
    // network: nothing in them may reach the terminal as a control character.
    crate::model::visible::visible_lines(&out).into_owned()
}

/// One host of the report in plain words.
fn render_host(out: &mut String, h: &HostReport) {
    let _ = writeln!(out, "\nMX {} {}", h.preference, h.host);
    let _ = writeln!(
        out,
        "  addresses:   {} (DNSSEC {})",
        h.addresses.join(", "),
        h.address_dnssec
    );
    let _ = writeln!(out, "  TLSA:        {}", h.tlsa_status);
    for t in &h.tlsa {
        let _ = writeln!(out, "               {t}");
    }
    let _ = writeln!(out, "  requirement: {}", h.requirement);
    if let Some(p) = &h.probe {
        let _ = writeln!(out, "  probe {}:    {}", p.address, p.result);
        if let (Some(v), Some(c)) = (&p.tls_version, &p.cipher) {
            let _ = writeln!(out, "    TLS:       {v} {c}");
        }
        for (i, c) in p.chain.iter().enumerate() {
            let _ = writeln!(out, "    cert {i}:    {c}");
        }
        if let Some(d) = &p.dane {
            let _ = writeln!(out, "    DANE:      {d}");
        }
        if let Some(s) = &p.mta_sts {
            let _ = writeln!(out, "    MTA-STS:   {s}");
        }
        let _ = writeln!(out, "    floor:     {}", p.floor);
        let _ = writeln!(
            out,
            "    verdict:   {}",
            if p.satisfies_requirement {
                "meets the requirement"
            } else {
                "does NOT meet the requirement"
            }
        );
    }
}
