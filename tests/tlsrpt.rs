//! TLS reporting over a run with mixed outcomes: the report's counts, the HTTPS
//! and mailto deliveries, and what must not be reported.

mod support;

use std::io::Read;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use support::dns_world::{DnsWorld, ZoneKind};
use support::https::{HttpsServer, Response};
use support::mx::{free_port, MxOptions, MxServer};
use support::pki::{self, TestCa};
use support::relay::{config_text, TestRelay};
use tlsrelay::config::Config;
use tlsrelay::reporting::outcome::{Outcome, OutcomeLog, PolicyType, ResultType};
use tlsrelay::reporting::reporter::Reporter;
use tlsrelay::reporting::tlsrpt;
use tlsrelay::spool::Spool;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn sha256(b: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, b)
        .as_ref()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread")]
async fn mixed_run_produces_exact_reports_by_https_and_mail() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("tlsrpt CA");
    let root = dir.path().join("ca.pem");
    ca.write_root_pem(&root);
    let port = free_port();
    // rpt.test: DANE success for one MX, STARTTLS missing on the other, reports by HTTPS.
    let dane_cert = pki::self_signed(&["mx1.rpt.test"]);
    let mx1 = MxServer::start_on(
        ip("127.0.7.10"),
        port,
        MxOptions::with_cert(dane_cert.clone()),
    )
    .await
    .unwrap();
    let _mx2 = MxServer::start_on(ip("127.0.7.11"), port, MxOptions::plaintext())
        .await
        .unwrap();
    // bad.test: name mismatch; reports by mail to org.test.
    let _bad = MxServer::start_on(
        ip("127.0.7.12"),
        port,
        MxOptions::with_cert(ca.leaf(&["wrong.name.test"])),
    )
    .await
    .unwrap();
    // org.test: the report mailbox.
    let org = MxServer::start_on(
        ip("127.0.7.99"),
        port,
        MxOptions::with_cert(ca.leaf(&["mx.org.test"])),
    )
    .await
    .unwrap();
    let receiver = HttpsServer::start(
        ip("127.0.7.30"),
        port,
        ca.leaf(&["reports.rpt.test"]),
        Response {
            status: "200 OK".into(),
            headers: vec![],
            body: vec![],
            content_length: true,
        },
    )
    .await;
    let world = DnsWorld::builder()
        .zone("rpt.test", ZoneKind::Signed)
        .mx("rpt.test", 10, "mx1.rpt.test")
        .mx("rpt.test", 20, "mx2.rpt.test")
        .a("mx1.rpt.test", "127.0.7.10")
        .a("mx2.rpt.test", "127.0.7.11")
        .tlsa(port, "mx1.rpt.test", 3, 1, 1, &sha256(&dane_cert.spki_der))
        .txt(
            "_smtp._tls.rpt.test",
            &[&format!(
                "v=TLSRPTv1; rua=https://reports.rpt.test:{port}/tlsrpt"
            )],
        )
        .a("reports.rpt.test", "127.0.7.30")
        .zone("bad.test", ZoneKind::Unsigned)
        .mx("bad.test", 10, "mx.bad.test")
        .a("mx.bad.test", "127.0.7.12")
        .txt(
            "_smtp._tls.bad.test",
            &["v=TLSRPTv1;rua=mailto:tlsrpt@org.test"],
        )
        .zone("quiet.test", ZoneKind::Unsigned)
        .zone("org.test", ZoneKind::Unsigned)
        .mx("org.test", 10, "mx.org.test")
        .a("mx.org.test", "127.0.7.99")
        .start()
        .await;
    let dkim_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let dkim_path = dir.path().join("dkim.pem");
    std::fs::write(&dkim_path, dkim_key.serialize_pem()).unwrap();
    let extra = format!(
        "retry_schedule = [\"1h\"]\n[tls_rpt]\nmax_delay = \"1h\"\norganization_name = \"Test Org\"\nextra_roots = [\"{}\"]\nfrom = \"tlsrpt@relay.test\"\ndkim_key_file = \"{}\"\ndkim_selector = \"rpt\"",
        root.display(),
        dkim_path.display()
    );
    let relay = TestRelay::start(&world, &root, port, &extra).await;
    // Two messages to rpt.test: with both MXs' order, each attempt hits mx1 (DANE ok);
    // a third message is to bad.test.
    relay
        .submit(
            "sender@org.test",
            &["a@rpt.test"],
            b"Subject: 1\r\n\r\nx\r\n",
        )
        .await;
    relay
        .submit(
            "sender@org.test",
            &["b@rpt.test"],
            b"Subject: 2\r\n\r\nx\r\n",
        )
        .await;
    relay
        .submit(
            "sender@org.test",
            &["c@bad.test"],
            b"Subject: 3\r\n\r\nx\r\n",
        )
        .await;
    assert!(mx1.wait_for_messages(2, Duration::from_secs(15)).await);
    assert!(
        relay
            .wait_queue(Duration::from_secs(15), |q| q.len() == 1
                && q[0].attempts >= 1)
            .await
    );

    // Build and send today's reports (as `tlsrelay report send --now --day today`).
    let text = config_text(relay.dir.path(), &world, &root, port, &extra);
    let config = Arc::new(Config::parse(&text, None).unwrap());
    let today = chrono::Utc::now().date_naive();
    let reporter = Reporter::new(
        config.clone(),
        relay.spool.clone(),
        world.dns(),
        Some(relay.queue_sender()),
    )
    .unwrap();
    let sent = reporter.send_day(today).await;
    let domains: Vec<&str> = sent.iter().map(|s| s.domain.as_str()).collect();
    assert_eq!(domains, ["bad.test", "rpt.test"], "{sent:?}");
    assert!(sent.iter().all(|s| s.done), "{sent:?}");

    // HTTPS: one gzipped POST with the right media type and exact counts.
    let posts = receiver.full_requests();
    assert_eq!(posts.len(), 1);
    assert!(
        posts[0].head.starts_with("POST /tlsrpt HTTP/1.1"),
        "{}",
        posts[0].head
    );
    assert!(
        posts[0]
            .head
            .to_ascii_lowercase()
            .contains("content-type: application/tlsrpt+gzip"),
        "{}",
        posts[0].head
    );
    let mut json = String::new();
    tlsrelay_gunzip(&posts[0].body)
        .read_to_string(&mut json)
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["organization-name"], "Test Org");
    let policies = v["policies"].as_array().unwrap();
    let tlsa = policies
        .iter()
        .find(|p| p["policy"]["policy-type"] == "tlsa")
        .expect("a tlsa policy");
    // One TLS session per connection to mx1: two, or one when the second message
    // went over the first session kept open in the pool.
    let sessions = mx1.stats().tls_handshakes;
    assert!((1..=2).contains(&sessions), "{:?}", mx1.stats());
    assert_eq!(
        tlsa["summary"]["total-successful-session-count"], sessions,
        "{json}"
    );
    assert_eq!(tlsa["summary"]["total-failure-session-count"], 0, "{json}");
    assert_eq!(tlsa["policy"]["policy-domain"], "rpt.test");
    // It parses with mail-auth's TLS-RPT parser, with the same counts.
    let parsed = mail_auth::report::tlsrpt::TlsReport::parse_json(json.as_bytes())
        .expect("mail-auth parses it");
    let total_ok: u32 = parsed
        .policies
        .iter()
        .map(|p| p.summary.total_success)
        .sum();
    assert_eq!(total_ok as usize, sessions);

    // mailto: a report message queued through the relay itself, delivered to org.test.
    assert!(
        org.wait_for_messages(1, Duration::from_secs(15)).await,
        "the report mail arrives"
    );
    let mail = org.received()[0].data_str();
    assert!(mail.contains("TLS-Report-Domain: bad.test"), "{mail}");
    assert!(mail.contains("TLS-Report-Submitter: relay.test"), "{mail}");
    let parsed_mail = mail_parser::MessageParser::default()
        .parse(mail.as_bytes())
        .unwrap();
    let subject = parsed_mail.subject().unwrap_or_default();
    assert!(
        subject.starts_with("Report Domain: bad.test Submitter: relay.test Report-ID: <"),
        "{subject}"
    );
    assert!(
        mail.contains("report-type=\"tlsrpt\"") || mail.contains("report-type=tlsrpt"),
        "{mail}"
    );
    assert!(mail.contains("application/tlsrpt+gzip"), "{mail}");
    assert!(org.received()[0].tls.is_some(), "report mail goes over TLS");
    assert!(
        mail.starts_with("DKIM-Signature: "),
        "report mail is DKIM-signed: {mail}"
    );
    let dkim = mail
        .split("\r\n")
        .take_while(|l| !l.starts_with("From:"))
        .collect::<String>();
    assert!(
        dkim.contains("d=relay.test")
            && dkim.contains("s=rpt")
            && dkim.contains("a=ed25519-sha256"),
        "{dkim}"
    );
    assert!(
        dkim.contains("tls-report-domain") || dkim.contains("TLS-Report-Domain"),
        "{dkim}"
    );

    // Sending again sends nothing (markers), and the report mail's own delivery is
    // recorded as report mail, so org.test gets no report of its own.
    let again = reporter.send_day(today).await;
    assert!(
        again
            .iter()
            .all(|s| s.domain != "bad.test" && s.domain != "rpt.test"),
        "{again:?}"
    );
    assert!(
        again.iter().all(|s| s.domain != "org.test"),
        "no report about report mail: {again:?}"
    );
    let outcomes = relay.outcomes();
    assert!(outcomes
        .iter()
        .any(|o| o.domain == "org.test" && o.report_mail));
    // And a day without sessions produces nothing.
    let yesterday = today.pred_opt().unwrap();
    assert!(reporter.send_day(yesterday).await.is_empty());
    assert_eq!(receiver.full_requests().len(), 1);
}

/// Decompresses a gzip body.
fn tlsrelay_gunzip(b: &[u8]) -> impl Read + '_ {
    mail_auth::flate2::read::GzDecoder::new(b)
}

/// One outcome record of `domain` on `day`, as delivery writes them.
fn idn_outcome(day: chrono::NaiveDate, domain: &str, tls_ok: bool) -> Outcome {
    Outcome {
        time: day.and_hms_opt(10, 0, 0).unwrap().and_utc().timestamp(),
        queue_id: "q1".into(),
        domain: domain.into(),
        mx_host: "mx.xn--bcher-kva.example".into(),
        addr: Some("127.0.7.50".into()),
        policy: PolicyType::NoPolicyFound,
        auth: tls_ok.then(|| "verify".into()),
        tls_ok,
        result: (!tls_ok).then_some(ResultType::CertificateNotTrusted),
        report_mail: false,
        detail: String::new(),
        sending_ip: Some("127.0.0.1".into()),
        policy_strings: vec![],
        mx_patterns: vec![],
        route: None,
    }
}

/// Outcome records of an internationalised domain, stored under its Unicode
/// spelling (as delivery did before it used A-labels) and under its A-label, are
/// one policy domain: one report, found at `_smtp._tls.<A-label>`, with the
/// summed counts, sent once. A domain name that cannot be parsed is marked handled.
#[tokio::test(flavor = "multi_thread")]
async fn idn_domain_report_is_sent_once_under_the_a_label() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("tlsrpt IDN CA");
    let root = dir.path().join("ca.pem");
    ca.write_root_pem(&root);
    let port = free_port();
    let receiver = HttpsServer::start(
        ip("127.0.7.31"),
        port,
        ca.leaf(&["reports.xn--bcher-kva.example"]),
        Response {
            status: "200 OK".into(),
            headers: vec![],
            body: vec![],
            content_length: true,
        },
    )
    .await;
    let world = DnsWorld::builder()
        .zone("xn--bcher-kva.example", ZoneKind::Signed)
        .txt(
            "_smtp._tls.xn--bcher-kva.example",
            &[&format!(
                "v=TLSRPTv1; rua=https://reports.xn--bcher-kva.example:{port}/tlsrpt"
            )],
        )
        .a("reports.xn--bcher-kva.example", "127.0.7.31")
        .start()
        .await;
    let extra = format!(
        // The day is from 2024: kept past the default 30-day retention.
        "[tls_rpt]\norganization_name = \"Test Org\"\nretention = \"100000d\"\nextra_roots = [\"{}\"]",
        root.display()
    );
    let config = Arc::new(
        Config::parse(&config_text(dir.path(), &world, &root, port, &extra), None).unwrap(),
    );
    let spool = Spool::open(&config.spool.dir).unwrap();
    let log = OutcomeLog::open(&spool.dir().join("outcomes")).unwrap();
    let day = chrono::NaiveDate::from_ymd_opt(2024, 5, 1).unwrap();
    for o in [
        idn_outcome(day, "bücher.example", true),
        idn_outcome(day, "Bücher.Example", true),
        idn_outcome(day, "bücher.example", false),
        idn_outcome(day, "xn--bcher-kva.example", true),
        idn_outcome(day, "not a domain!", true),
    ] {
        log.append(&o).unwrap();
    }

    // One pass of the daemon's loop (shutdown already signalled): it lists the
    // pending reports, sends what is due and marks it.
    let reporter = Reporter::new(config.clone(), spool.clone(), world.dns(), None).unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(30), reporter.run(stopped))
        .await
        .expect("one pass of the reporter");
    assert!(
        world
            .queries()
            .iter()
            .any(|(name, _)| name == "_smtp._tls.xn--bcher-kva.example"),
        "{:?}",
        world.queries()
    );
    let tlsrpt_dir = spool.dir().join("tlsrpt");
    let marker = |name: &str| tlsrpt_dir.join("sent/2024-05-01").join(name);
    assert!(marker("xn--bcher-kva.example").is_file());
    let skipped = std::fs::read_to_string(marker("not%20a%20domain%21")).unwrap();
    assert!(skipped.contains("not a domain name"), "{skipped}");

    let posts = receiver.full_requests();
    assert_eq!(posts.len(), 1, "one report for both spellings");
    let mut json = String::new();
    tlsrelay_gunzip(&posts[0].body)
        .read_to_string(&mut json)
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let policies = v["policies"].as_array().unwrap();
    assert_eq!(policies.len(), 1, "{json}");
    let p = &policies[0];
    assert_eq!(
        p["policy"]["policy-domain"], "xn--bcher-kva.example",
        "{json}"
    );
    assert_eq!(p["summary"]["total-successful-session-count"], 3, "{json}");
    assert_eq!(p["summary"]["total-failure-session-count"], 1, "{json}");
    assert_eq!(
        p["failure-details"][0]["result-type"], "certificate-not-trusted",
        "{json}"
    );
    assert!(
        v["report-id"]
            .as_str()
            .unwrap()
            .starts_with("20240501.xn--bcher-kva.example@"),
        "{json}"
    );

    // Nothing is left to send: both names are marked.
    let reporter = Reporter::new(config.clone(), spool.clone(), world.dns(), None).unwrap();
    let again = reporter.send_day(day).await;
    assert!(again.is_empty(), "{again:?}");
    assert_eq!(receiver.full_requests().len(), 1);
    let pending =
        tlsrpt::pending_reports(&log, &spool.dir().join("tlsrpt"), day.succ_opt().unwrap())
            .unwrap();
    assert!(pending.is_empty(), "{pending:?}");
}
