//! `tlsrelay check DOMAIN`: what tlsrelay would do for a domain, and why.
//!
//! It asks the same DNS, reads the same policies and runs the same decision
//! functions as delivery, so its verdict is the relay's verdict. `--probe` also
//! connects to each host, does STARTTLS without sending mail, and checks the
//! presented chain against DANE, MTA-STS and the floor.

use std::fmt::Write as _;
use std::net::SocketAddr;

use serde::Serialize;

use crate::config::Config;
use crate::policy::local::PolicySet;
use crate::policy::PeerCheck;
use crate::policy::{self, HostPlan, MxPlan, StsRule};
use crate::protocol::sts::Mode;
use crate::resolve::dns::{Answer, Dns, Security};
use crate::resolve::mta_sts::MtaSts;

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
    /// Per MX host.
    pub hosts: Vec<HostReport>,
    /// Whether tlsrelay can deliver to the domain.
    pub deliverable: bool,
    /// Why not, when it cannot.
    pub verdict: String,
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
    /// The presented chain: per certificate, SHA-256 and the DNS names.
    pub chain: Vec<String>,
    /// Whether the chain satisfies the TLSA records (None when DANE does not apply).
    pub dane: Option<String>,
    /// Whether it satisfies MTA-STS (WebPKI for the MX name), when a policy applies.
    pub mta_sts: Option<String>,
    /// Whether it satisfies the floor.
    pub floor: String,
    /// Whether it satisfies the requirement tlsrelay would apply.
    pub satisfies_requirement: bool,
}

fn sec(s: Security) -> String {
    s.to_string()
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
    let ascii = hickory_resolver::proto::rr::Name::from_utf8(domain)
        .map(|n| n.to_ascii().trim_end_matches('.').to_lowercase())
        .unwrap_or_else(|_| domain.to_lowercase());
    let d = &config.delivery;
    let mut report = Report {
        domain: ascii.clone(),
        dnssec_self_test: match dns.self_test().await {
            Ok(()) => "ok: the root DNSKEY validates".into(),
            Err(why) => {
                format!("FAILED: {why}; domains that need DANE are deferred")
            }
        },
        mx: String::new(),
        mx_dnssec: None,
        mta_sts_record: None,
        mta_sts_policy: None,
        mta_sts_error: None,
        tls_rpt: None,
        local_policy: None,
        hosts: vec![],
        deliverable: false,
        verdict: String::new(),
    };
    let local = policies.lookup(&ascii);
    report.local_policy = local.map(|p| {
        format!(
            "{} (level {}, from {})",
            p.domain,
            p.level.as_str(),
            p.source
        )
    });
    if let Answer::Records { records, .. } = dns.txt(&format!("_smtp._tls.{ascii}")).await {
        let texts: Vec<String> = records
            .iter()
            .map(|r| String::from_utf8_lossy(&r.joined()).into_owned())
            .filter(|t| t.starts_with("v=TLSRPTv1"))
            .collect();
        if !texts.is_empty() {
            report.tls_rpt = Some(texts.join(" | "));
        }
    }
    let lookup = match crate::model::domain::Domain::parse(&ascii) {
        Ok(d) => sts.lookup(&d).await,
        Err(_) => Default::default(),
    };
    report.mta_sts_record = lookup.record_id.clone();
    report.mta_sts_error = lookup
        .error
        .as_ref()
        .map(|(t, w)| format!("{}: {w}", t.as_str()));
    let sts_policy = lookup.policy.as_ref().map(|(p, _)| p.clone());
    if let Some((p, source)) = &lookup.policy {
        report.mta_sts_policy = Some(StsSummary {
            mode: match p.mode {
                Mode::Enforce => "enforce",
                Mode::Testing => "testing",
                Mode::None => "none",
            }
            .into(),
            mx: p.mx_strings(),
            max_age: p.max_age,
            source: format!("{source:?}").to_lowercase(),
        });
    }
    let rule = match (&sts_policy, local) {
        (_, Some(_)) => StsRule::Absent,
        (Some(p), None) if p.mode == Mode::Enforce => StsRule::Enforce(p),
        (Some(p), None) if p.mode == Mode::Testing => StsRule::Testing(p),
        _ => StsRule::Absent,
    };
    let answer = dns.mx(&ascii).await;
    let (hosts, mx_security) = match policy::plan_mx(&ascii, answer) {
        MxPlan::Fail { status, reason } => {
            report.mx = format!("permanent failure {status}: {reason}");
            report.verdict = report.mx.clone();
            return report;
        }
        MxPlan::Defer { reason, .. } => {
            report.mx = format!("deferred: {reason}");
            report.verdict = report.mx.clone();
            return report;
        }
        MxPlan::Hosts {
            hosts,
            security,
            implicit,
        } => {
            report.mx = if implicit {
                format!("no MX records; the domain itself is the mail host (implicit MX, DNSSEC {security})")
            } else {
                format!("{} MX host(s), DNSSEC {security}", hosts.len())
            };
            report.mx_dnssec = Some(sec(security));
            (hosts, security)
        }
    };
    let tls_cfg = crate::tls::ClientTls::new(&d.extra_roots).ok();
    for mx in hosts.iter().take(d.max_hosts_per_attempt) {
        let mut h = HostReport {
            preference: mx.preference,
            host: mx.host.clone(),
            addresses: vec![],
            address_dnssec: String::new(),
            tlsa: vec![],
            tlsa_status: String::new(),
            requirement: String::new(),
            usable: false,
            probe: None,
        };
        let (addrs, addr_sec, canonical) = match dns.addresses(&mx.host).await {
            Answer::Records {
                records,
                security,
                owner,
            } => (records, security, owner),
            other => {
                h.address_dnssec = match other {
                    Answer::Bogus(w) => format!("bogus: {w}"),
                    Answer::TempFail(w) => format!("lookup failed: {w}"),
                    _ => "no address records".into(),
                };
                h.requirement = "skipped: no usable address".into();
                report.hosts.push(h);
                continue;
            }
        };
        h.addresses = addrs.iter().map(|a| a.to_string()).collect();
        h.address_dnssec = sec(addr_sec);
        let (base, tlsa) = if policy::wants_tlsa(mx_security, addr_sec) {
            let t = dns.tlsa(d.port, &canonical).await;
            let t = if canonical != mx.host
                && matches!(t, Answer::NoRecords { .. } | Answer::NxDomain { .. })
            {
                dns.tlsa(d.port, &mx.host).await
            } else {
                t
            };
            (
                if canonical != mx.host {
                    canonical.clone()
                } else {
                    mx.host.clone()
                },
                Some(t),
            )
        } else {
            h.tlsa_status = "not looked up: the MX answer or the addresses are not DNSSEC-secure, so DANE cannot apply".into();
            (mx.host.clone(), None)
        };
        if let Some(t) = &tlsa {
            h.tlsa_status = match t {
                Answer::Records {
                    records, security, ..
                } => {
                    for r in records {
                        let hex: String =
                            r.data.iter().take(8).map(|b| format!("{b:02x}")).collect();
                        h.tlsa.push(format!(
                            "{} {} {} {hex}… ({})",
                            r.usage,
                            r.selector,
                            r.matching,
                            if crate::tls::dane::usable(r) {
                                "usable"
                            } else {
                                "unusable for SMTP"
                            }
                        ));
                    }
                    format!("{} record(s), DNSSEC {security}", records.len())
                }
                Answer::NoRecords { security } | Answer::NxDomain { security } => {
                    format!("none (DNSSEC {security})")
                }
                Answer::Bogus(w) => format!("bogus: {w}"),
                Answer::TempFail(w) => format!("lookup failed: {w}"),
            };
        }
        let plan = match local {
            Some(lp) => policy::local_host_plan(lp, &ascii, &mx.host, &base, tlsa.clone()),
            None => policy::host_plan(&mx.host, &base, d.floor, tlsa.clone(), rule),
        };
        let req = match plan {
            HostPlan::Connect(req) => {
                h.usable = true;
                h.requirement = describe(&req.check, req.mechanism, &req.sni);
                Some(req)
            }
            HostPlan::Skip { reason, .. } => {
                h.requirement = format!("not contacted: {reason}");
                None
            }
        };
        if probe {
            if let (Some(tls), Some(ip)) = (&tls_cfg, addrs.first()) {
                let addr = SocketAddr::new(*ip, d.port);
                h.probe = Some(
                    probe_host(
                        config,
                        tls,
                        &mx.host,
                        addr,
                        req.as_ref(),
                        tlsa.as_ref(),
                        &base,
                        sts_policy.as_ref(),
                    )
                    .await,
                );
            }
        }
        report.hosts.push(h);
    }
    let usable = report.hosts.iter().filter(|h| h.usable).count();
    let probed_ok = report
        .hosts
        .iter()
        .filter(|h| h.probe.as_ref().is_some_and(|p| p.satisfies_requirement))
        .count();
    report.deliverable = if probe { probed_ok > 0 } else { usable > 0 };
    report.verdict = match (report.deliverable, probe) {
        (true, false) => {
            format!("tlsrelay can deliver to {ascii}: {usable} host(s) would be contacted")
        }
        (true, true) => {
            format!("tlsrelay can deliver to {ascii}: {probed_ok} host(s) passed the live check")
        }
        (false, false) => {
            format!("tlsrelay cannot deliver to {ascii} now: no MX host may be contacted")
        }
        (false, true) => {
            format!("tlsrelay cannot deliver to {ascii} now: no MX host passed the live check")
        }
    };
    report
}

fn describe(check: &PeerCheck, mechanism: &str, sni: &str) -> String {
    match check {
        PeerCheck::WebPki => format!("{mechanism}: TLS with a certificate WebPKI-valid for {sni}"),
        PeerCheck::EncryptOnly => format!("{mechanism}: TLS required, certificate not checked"),
        PeerCheck::Dane { records, names } => format!(
            "{mechanism}: TLS authenticated by {} usable TLSA record(s); DANE-TA names: {}",
            records.len(),
            names.join(", ")
        ),
        other => format!("{mechanism}: {other:?}"),
    }
}

#[allow(clippy::too_many_arguments)]
async fn probe_host(
    config: &Config,
    tls: &crate::tls::ClientTls,
    host: &str,
    addr: SocketAddr,
    req: Option<&policy::Requirement>,
    tlsa: Option<&crate::resolve::dns::TlsaAnswer>,
    base: &str,
    sts: Option<&crate::protocol::sts::StsPolicy>,
) -> ProbeReport {
    let d = &config.delivery;
    let timeouts = crate::delivery::client::Timeouts {
        connect: d.connect_timeout.get(),
        command: d
            .command_timeout
            .get()
            .min(std::time::Duration::from_secs(30)),
        data: d.data_timeout.get(),
    };
    let sni = req
        .map(|r| r.sni.clone())
        .unwrap_or_else(|| host.to_string());
    // Connect with the encrypt-only check to see the chain, then judge it offline by every rule.
    let session = crate::delivery::client::Session::open(
        host,
        addr,
        config.helo_name(),
        tls.config(&PeerCheck::EncryptOnly),
        &sni,
        timeouts,
    )
    .await;
    let mut p = ProbeReport {
        address: addr.to_string(),
        result: String::new(),
        tls_version: None,
        cipher: None,
        chain: vec![],
        dane: None,
        mta_sts: None,
        floor: String::new(),
        satisfies_requirement: false,
    };
    let session = match session {
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
    for c in &chain {
        let fp: String = ring::digest::digest(&ring::digest::SHA256, c.as_ref())
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let names = webpki::EndEntityCert::try_from(c)
            .map(|ee| {
                ee.valid_dns_names()
                    .map(str::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        p.chain.push(format!("sha256:{fp} names: [{names}]"));
    }
    session.quit().await;
    let judge = |check: &PeerCheck, name: &str| match tls.evaluate(check, &chain, name) {
        Ok(()) => "satisfied".to_string(),
        Err(e) => format!("not satisfied: {e}"),
    };
    if let Some(Answer::Records {
        records,
        security: Security::Secure,
        ..
    }) = tlsa
    {
        let usable: Vec<_> = records
            .iter()
            .filter(|r| crate::tls::dane::usable(r))
            .cloned()
            .collect();
        if !usable.is_empty() {
            let mut names = vec![base.to_string()];
            if base != host {
                names.push(host.to_string());
            }
            p.dane = Some(judge(
                &PeerCheck::Dane {
                    records: usable,
                    names,
                },
                base,
            ));
        }
    }
    if let Some(policy) = sts {
        if policy.mode != Mode::None {
            p.mta_sts = Some(if policy.allows(host) {
                judge(&PeerCheck::WebPki, host)
            } else {
                "not satisfied: host not listed in the policy".into()
            });
        }
    }
    let floor_check = match d.floor {
        crate::config::Floor::Verify => PeerCheck::WebPki,
        crate::config::Floor::Encrypt => PeerCheck::EncryptOnly,
    };
    p.floor = judge(&floor_check, host);
    p.satisfies_requirement = req.is_some_and(|r| tls.evaluate(&r.check, &chain, &r.sni).is_ok());
    p
}

/// The report in plain words, for people.
pub fn render(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "domain:        {}", r.domain);
    let _ = writeln!(out, "DNSSEC:        {}", r.dnssec_self_test);
    let _ = writeln!(out, "MX:            {}", r.mx);
    let _ = writeln!(
        out,
        "local policy:  {}",
        r.local_policy.as_deref().unwrap_or("none")
    );
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
    let _ = writeln!(out, "\n{}", r.verdict);
    out
}
