//! Outbound delivery against real parts: the in-process signed DNS world, SMTP
//! servers with rustls on 127.0.0.x, certificates from a test CA.

mod support;

use std::net::IpAddr;
use std::time::Duration;

use support::dns_world::{DnsWorld, ZoneKind};
use support::mx::{free_port, Mitm, MxOptions, MxServer};
use support::pki::{self, KeyKind, LeafOptions, TestCa, TrustedCa};
use support::relay::TestRelay;
use tlsrelay::reporting::outcome::ResultType;
use tlsrelay::spool::RcptState;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn message(tag: &str) -> Vec<u8> {
    format!(
        "From: sender@org.test\r\nTo: someone\r\nMessage-ID: <{tag}@org.test>\r\nSubject: {tag}\r\n\r\nHello {tag}.\r\n.leading dot\r\n..two dots\r\n"
    )
    .into_bytes()
}

fn pki() -> TrustedCa {
    TrustedCa::new("tlsrelay test CA")
}

/// The sender's own domain, whose MX collects DSNs.
async fn dsn_sink(ca: &TestCa, port: u16) -> MxServer {
    MxServer::start_on(
        ip("127.0.0.99"),
        port,
        MxOptions::with_cert(ca.leaf(&["mx.org.test"])),
    )
    .await
    .unwrap()
}

fn world_with_org() -> support::dns_world::DnsWorldBuilder {
    DnsWorld::builder()
        .zone("org.test", ZoneKind::Unsigned)
        .mx("org.test", 10, "mx.org.test")
        .a("mx.org.test", "127.0.0.99")
}

#[tokio::test]
async fn delivered_over_tls13_with_exact_bytes() {
    let p = pki();
    let port = free_port();
    let mx = MxServer::start_on(
        ip("127.0.0.10"),
        port,
        MxOptions::with_cert(p.ca.leaf(&["mx1.example.test"])),
    )
    .await
    .unwrap();
    let world = DnsWorld::builder()
        .zone("example.test", ZoneKind::Signed)
        .mx("example.test", 10, "mx1.example.test")
        .a("mx1.example.test", "127.0.0.10")
        .start()
        .await;
    let relay = TestRelay::start(&world, &p.root, port, "").await;
    let body = message("exact");
    let id = relay
        .submit("sender@org.test", &["rcpt@example.test"], &body)
        .await;
    let stored = relay.spool.read_message(&id).unwrap();
    assert!(
        mx.wait_for_messages(1, Duration::from_secs(10)).await,
        "{}",
        mx.transcript_text()
    );
    let got = &mx.received()[0];
    assert_eq!(
        got.data, stored,
        "the receiving server gets the stored bytes exactly"
    );
    assert!(got.data.ends_with(&body));
    let received = String::from_utf8_lossy(&got.data)
        .matches("Received: ")
        .count();
    assert_eq!(received, 1, "exactly one Received header added");
    let tls = got.tls.as_ref().expect("delivered over TLS");
    assert_eq!(tls.version, rustls::ProtocolVersion::TLSv1_3);
    assert_eq!(tls.sni.as_deref(), Some("mx1.example.test"));
    assert_eq!(got.mail_from, "sender@org.test");
    assert_eq!(got.rcpt_addresses(), ["rcpt@example.test"]);
    assert_eq!(mx.stats().plaintext_transactions, 0);
    assert!(
        relay
            .wait_queue(Duration::from_secs(5), |q| q.is_empty())
            .await,
        "delivered messages leave the queue"
    );
    let outcomes = relay.outcomes();
    assert!(outcomes.iter().any(|o| o.tls_ok
        && o.mx_host == "mx1.example.test"
        && o.auth.as_deref() == Some("verify")));
}

#[tokio::test]
async fn unauthenticated_hosts_are_refused_and_mail_stays_queued() {
    let p = pki();
    let port = free_port();
    // One domain per failure, each with its own MX host.
    let cases: Vec<(&str, &str, MxOptions, &str, Option<ResultType>)> = vec![
        (
            "notls.test",
            "127.0.0.20",
            MxOptions::plaintext(),
            "did not offer STARTTLS",
            Some(ResultType::StarttlsNotSupported),
        ),
        (
            "selfsigned.test",
            "127.0.0.21",
            MxOptions::with_cert(pki::self_signed(&["mx.selfsigned.test"])),
            "unknown issuer",
            Some(ResultType::CertificateNotTrusted),
        ),
        (
            "expired.test",
            "127.0.0.22",
            MxOptions::with_cert(p.ca.leaf_with(&["mx.expired.test"], LeafOptions::expired())),
            "xpired",
            Some(ResultType::CertificateExpired),
        ),
        (
            "mismatch.test",
            "127.0.0.23",
            MxOptions::with_cert(p.ca.leaf(&["other.name.test"])),
            "not valid for name",
            Some(ResultType::CertificateHostMismatch),
        ),
        (
            "rsa1024.test",
            "127.0.0.24",
            MxOptions::with_cert(p.ca.leaf_with(
                &["mx.rsa1024.test"],
                LeafOptions::default().key(KeyKind::Rsa1024),
            )),
            "RSA-1024",
            Some(ResultType::ValidationFailure),
        ),
    ];
    let mut builder = DnsWorld::builder();
    let mut servers = Vec::new();
    for (domain, addr, opts, _, _) in &cases {
        let host = format!("mx.{domain}");
        builder = builder
            .zone(domain, ZoneKind::Unsigned)
            .mx(domain, 10, &host)
            .a(&host, addr);
        let mut opts = opts.clone();
        opts.hostname = host.clone();
        servers.push(MxServer::start_on(ip(addr), port, opts).await.unwrap());
    }
    let world = builder.start().await;
    let relay = TestRelay::start(&world, &p.root, port, "retry_schedule = [\"1h\"]").await;
    let mut ids = Vec::new();
    for (domain, ..) in &cases {
        ids.push(
            relay
                .submit(
                    "sender@org.test",
                    &[&format!("user@{domain}")],
                    &message(domain),
                )
                .await,
        );
    }
    assert!(
        relay
            .wait_queue(Duration::from_secs(20), |q| q.len() == cases.len()
                && q.iter().all(|e| e.attempts >= 1))
            .await,
        "every message gets one attempt"
    );
    let outcomes = relay.outcomes();
    for (((domain, _, _, words, result), server), id) in cases.iter().zip(&servers).zip(&ids) {
        let env = relay.spool.load(id).unwrap();
        let r = &env.recipients[0];
        assert_eq!(r.state, RcptState::Queued, "{domain}: kept queued");
        let reason = r.last_reason.clone().unwrap_or_default();
        assert!(
            reason.contains(&format!("mx.{domain}[")),
            "{domain}: reason names the host: {reason}"
        );
        assert!(
            reason.contains(words),
            "{domain}: reason {reason:?} should mention {words:?}"
        );
        assert!(server.received().is_empty(), "{domain}: nothing delivered");
        assert_eq!(
            server.stats().plaintext_transactions,
            0,
            "{domain}: no MAIL/RCPT/DATA in clear\n{}",
            server.transcript_text()
        );
        let o = outcomes
            .iter()
            .find(|o| o.domain == *domain)
            .expect("an outcome per host");
        assert_eq!(o.result, *result, "{domain}");
        assert!(!o.tls_ok);
    }
}

#[tokio::test]
async fn stripped_starttls_is_not_delivered() {
    let p = pki();
    let port = free_port();
    let real = MxServer::start_on(
        ip("127.0.0.30"),
        port,
        MxOptions::with_cert(p.ca.leaf(&["mx.victim.test"])),
    )
    .await
    .unwrap();
    let mitm = Mitm::start(ip("127.0.0.31"), port, real.addr())
        .await
        .unwrap();
    let world = DnsWorld::builder()
        .zone("victim.test", ZoneKind::Unsigned)
        .mx("victim.test", 10, "mx.victim.test")
        .a("mx.victim.test", "127.0.0.31") // the attacker answers for the host
        .start()
        .await;
    let relay = TestRelay::start(&world, &p.root, port, "retry_schedule = [\"1h\"]").await;
    let id = relay
        .submit("sender@org.test", &["user@victim.test"], &message("mitm"))
        .await;
    assert!(
        relay
            .wait_queue(Duration::from_secs(10), |q| q
                .iter()
                .any(|e| e.attempts >= 1))
            .await
    );
    assert!(mitm.stripped() >= 1, "the MITM did strip STARTTLS");
    assert!(
        mitm.plaintext_commands().is_empty(),
        "{:?}",
        mitm.plaintext_commands()
    );
    assert!(real.received().is_empty());
    let env = relay.spool.load(&id).unwrap();
    assert!(env.recipients[0]
        .last_reason
        .as_deref()
        .unwrap()
        .contains("did not offer STARTTLS"));
}

#[tokio::test]
async fn falls_back_to_the_next_mx_host() {
    let p = pki();
    let port = free_port();
    let first = MxServer::start_on(ip("127.0.0.40"), port, MxOptions::plaintext())
        .await
        .unwrap();
    let second = MxServer::start_on(
        ip("127.0.0.41"),
        port,
        MxOptions::with_cert(p.ca.leaf(&["mx2.fallback.test"])),
    )
    .await
    .unwrap();
    let world = DnsWorld::builder()
        .zone("fallback.test", ZoneKind::Signed)
        .mx("fallback.test", 10, "mx1.fallback.test")
        .mx("fallback.test", 20, "mx2.fallback.test")
        .a("mx1.fallback.test", "127.0.0.40")
        .a("mx2.fallback.test", "127.0.0.41")
        .start()
        .await;
    let relay = TestRelay::start(&world, &p.root, port, "").await;
    relay
        .submit(
            "sender@org.test",
            &["user@fallback.test"],
            &message("fallback"),
        )
        .await;
    assert!(second.wait_for_messages(1, Duration::from_secs(10)).await);
    assert!(first.received().is_empty());
    assert_eq!(first.stats().plaintext_transactions, 0);
    assert!(
        first.stats().connections >= 1,
        "the preferred host was tried first"
    );
}

#[tokio::test]
async fn null_mx_and_nxdomain_bounce_at_once() {
    let p = pki();
    let port = free_port();
    let sink = dsn_sink(&p.ca, port).await;
    let world = world_with_org()
        .zone("nullmx.test", ZoneKind::Signed)
        .null_mx("nullmx.test")
        // Unsigned: hickory 0.26 mis-validates some signed NXDOMAIN proofs as bogus
        // (then tlsrelay defers, failing closed).
        .zone("exists.test", ZoneKind::Unsigned)
        .a("exists.test", "127.0.0.50")
        .start()
        .await;
    let relay = TestRelay::start(&world, &p.root, port, "").await;
    relay
        .submit("sender@org.test", &["user@nullmx.test"], &message("nullmx"))
        .await;
    relay
        .submit(
            "sender@org.test",
            &["user@nosuch.exists.test"],
            &message("nx"),
        )
        .await;
    assert!(
        sink.wait_for_messages(2, Duration::from_secs(15)).await,
        "two DSNs"
    );
    let dsns: Vec<String> = sink.received().iter().map(|m| m.data_str()).collect();
    for m in sink.received() {
        assert_eq!(m.mail_from, "", "DSNs come from the null sender");
        assert_eq!(m.rcpt_addresses(), ["sender@org.test"]);
    }
    let all = dsns.join("\n----\n");
    assert!(all.contains("Status: 5.1.10"), "{all}");
    assert!(all.contains("null MX"), "{all}");
    assert!(all.contains("Status: 5.1.2"), "{all}");
    assert!(all.contains("NXDOMAIN"), "{all}");
    assert!(
        all.contains("report-type=\"delivery-status\"")
            || all.contains("report-type=delivery-status"),
        "{all}"
    );
    assert!(
        relay
            .wait_queue(Duration::from_secs(5), |q| q.is_empty())
            .await
    );
}

#[tokio::test]
async fn queue_lifetime_expiry_bounces_with_each_hosts_reason() {
    let p = pki();
    let port = free_port();
    let sink = dsn_sink(&p.ca, port).await;
    let _a = MxServer::start_on(ip("127.0.0.60"), port, MxOptions::plaintext())
        .await
        .unwrap();
    let _b = MxServer::start_on(
        ip("127.0.0.61"),
        port,
        MxOptions::with_cert(pki::self_signed(&["mx2.slow.test"])),
    )
    .await
    .unwrap();
    let world = world_with_org()
        .zone("slow.test", ZoneKind::Unsigned)
        .mx("slow.test", 10, "mx1.slow.test")
        .mx("slow.test", 20, "mx2.slow.test")
        .a("mx1.slow.test", "127.0.0.60")
        .a("mx2.slow.test", "127.0.0.61")
        .start()
        .await;
    let relay = TestRelay::start(
        &world,
        &p.root,
        port,
        "retry_schedule = [\"1s\"]\nqueue_lifetime = \"3s\"\ndelay_notice_after = \"0s\"",
    )
    .await;
    relay
        .submit("sender@org.test", &["user@slow.test"], &message("expire"))
        .await;
    assert!(
        sink.wait_for_messages(1, Duration::from_secs(20)).await,
        "a failure DSN after the lifetime"
    );
    let dsn = sink.received()[0].data_str();
    assert!(dsn.contains("Action: failed"), "{dsn}");
    assert!(dsn.contains("Status: 5.4.7"), "{dsn}");
    assert!(
        dsn.contains("mx1.slow.test[127.0.0.60] did not offer STARTTLS"),
        "{dsn}"
    );
    assert!(
        dsn.contains("mx2.slow.test[127.0.0.61] TLS handshake failed"),
        "{dsn}"
    );
    assert!(
        relay
            .wait_queue(Duration::from_secs(5), |q| q.is_empty())
            .await
    );
}

#[tokio::test]
async fn delay_notice_after_the_configured_delay() {
    let p = pki();
    let port = free_port();
    let sink = dsn_sink(&p.ca, port).await;
    let _mx = MxServer::start_on(
        ip("127.0.0.62"),
        port,
        MxOptions::with_cert(p.ca.leaf(&["mx.later.test"]))
            .rcpt_reply("user", "451 4.3.0 try later"),
    )
    .await
    .unwrap();
    let world = world_with_org()
        .zone("later.test", ZoneKind::Unsigned)
        .mx("later.test", 10, "mx.later.test")
        .a("mx.later.test", "127.0.0.62")
        .start()
        .await;
    let relay = TestRelay::start(
        &world,
        &p.root,
        port,
        "retry_schedule = [\"1s\"]\ndelay_notice_after = \"2s\"",
    )
    .await;
    let id = relay
        .submit("sender@org.test", &["user@later.test"], &message("delay"))
        .await;
    assert!(
        sink.wait_for_messages(1, Duration::from_secs(20)).await,
        "a delay notice"
    );
    let dsn = sink.received()[0].data_str();
    assert!(dsn.contains("Action: delayed"), "{dsn}");
    assert!(dsn.contains("451 4.3.0 try later"), "{dsn}");
    // Still queued, and only one notice.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(sink.received().len(), 1);
    assert!(relay.spool.load(&id).unwrap().delay_notice_sent);
}

#[tokio::test]
async fn temporary_failures_are_retried_and_permanent_ones_bounce_one_recipient() {
    let p = pki();
    let port = free_port();
    let sink = dsn_sink(&p.ca, port).await;
    let mx = MxServer::start_on(
        ip("127.0.0.63"),
        port,
        MxOptions::with_cert(p.ca.leaf(&["mx.mixed.test"]))
            .rcpt_reply("later", "450 4.2.0 mailbox busy")
            .rcpt_reply("gone", "550 5.1.1 no such user"),
    )
    .await
    .unwrap();
    let world = world_with_org()
        .zone("mixed.test", ZoneKind::Unsigned)
        .mx("mixed.test", 10, "mx.mixed.test")
        .a("mx.mixed.test", "127.0.0.63")
        .start()
        .await;
    // No connection reuse: the retry must see the server's new replies.
    let relay = TestRelay::start(
        &world,
        &p.root,
        port,
        "retry_schedule = [\"1s\"]\nconnection_reuse_time = \"0s\"",
    )
    .await;
    relay
        .submit(
            "sender@org.test",
            &["ok@mixed.test", "later@mixed.test", "gone@mixed.test"],
            &message("mixed"),
        )
        .await;
    assert!(mx.wait_for_messages(1, Duration::from_secs(10)).await);
    assert_eq!(mx.received()[0].rcpt_addresses(), ["ok@mixed.test"]);
    // The 5xx recipient bounces; the others are not in the DSN.
    assert!(sink.wait_for_messages(1, Duration::from_secs(10)).await);
    let dsn = sink.received()[0].data_str();
    assert!(
        dsn.contains("Final-Recipient: rfc822; gone@mixed.test"),
        "{dsn}"
    );
    assert!(dsn.contains("550 5.1.1 no such user"), "{dsn}");
    assert!(
        !dsn.contains("Final-Recipient: rfc822; later@mixed.test"),
        "{dsn}"
    );
    assert!(
        !dsn.contains("Final-Recipient: rfc822; ok@mixed.test"),
        "{dsn}"
    );
    // The 4xx recipient is retried and goes through once the server accepts it.
    mx.update_options(|o| o.rcpt_replies.clear());
    assert!(
        mx.wait_for_messages(2, Duration::from_secs(15)).await,
        "{}",
        mx.transcript_text()
    );
    assert_eq!(mx.received()[1].rcpt_addresses(), ["later@mixed.test"]);
    assert!(
        relay
            .wait_queue(Duration::from_secs(5), |q| q.is_empty())
            .await
    );
    assert_eq!(sink.received().len(), 1, "no DSN for delivered recipients");
}

#[tokio::test]
async fn restart_during_a_queue_run_loses_nothing_and_delivers_nothing_twice() {
    let p = pki();
    let port = free_port();
    let mx = MxServer::start_on(
        ip("127.0.0.70"),
        port,
        MxOptions::with_cert(p.ca.leaf(&["mx.bulk.test"])),
    )
    .await
    .unwrap();
    let world = DnsWorld::builder()
        .zone("bulk.test", ZoneKind::Unsigned)
        .mx("bulk.test", 10, "mx.bulk.test")
        .a("mx.bulk.test", "127.0.0.70")
        .start()
        .await;
    let relay = TestRelay::start(&world, &p.root, port, "max_connections_per_domain = 2").await;
    let n = 40;
    for i in 0..n {
        relay
            .submit(
                "sender@org.test",
                &[&format!("u{i}@bulk.test")],
                &message(&format!("bulk{i}")),
            )
            .await;
    }
    // Restart while the queue is being worked on.
    let relay = relay.restart().await;
    let relay = relay.restart().await;
    assert!(
        mx.wait_for_messages(n, Duration::from_secs(30)).await,
        "all {n} delivered"
    );
    assert!(
        relay
            .wait_queue(Duration::from_secs(10), |q| q.is_empty())
            .await
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut ids: Vec<String> = mx
        .received()
        .iter()
        .map(|m| {
            m.data_str()
                .split("Message-ID: <")
                .nth(1)
                .unwrap()
                .split('>')
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    ids.sort();
    let before = ids.len();
    ids.dedup();
    assert_eq!(before, n, "each message delivered exactly once");
    assert_eq!(ids.len(), n);
}

#[tokio::test]
async fn smtputf8_mail_to_a_host_without_smtputf8_fails_with_5_6_7() {
    let p = pki();
    let port = free_port();
    let sink = dsn_sink(&p.ca, port).await;
    let mut opts = MxOptions::with_cert(p.ca.leaf(&["mx.ascii.test"]));
    opts.smtputf8 = false;
    let mx = MxServer::start_on(ip("127.0.0.64"), port, opts)
        .await
        .unwrap();
    let world = world_with_org()
        .zone("ascii.test", ZoneKind::Unsigned)
        .mx("ascii.test", 10, "mx.ascii.test")
        .a("mx.ascii.test", "127.0.0.64")
        .start()
        .await;
    let relay = TestRelay::start(&world, &p.root, port, "").await;
    relay
        .submit_with(
            "MAIL FROM:<sender@org.test> SMTPUTF8",
            &["usér@ascii.test"],
            &message("utf8"),
        )
        .await;
    assert!(sink.wait_for_messages(1, Duration::from_secs(10)).await);
    let dsn = sink.received()[0].data_str();
    assert!(dsn.contains("Status: 5.6.7"), "{dsn}");
    assert!(dsn.contains("does not support SMTPUTF8"), "{dsn}");
    assert!(mx.received().is_empty());
}

#[tokio::test]
async fn encrypt_floor_accepts_any_certificate_but_never_plaintext_or_weak_keys() {
    let p = pki();
    let port = free_port();
    let selfsigned = MxServer::start_on(
        ip("127.0.0.65"),
        port,
        MxOptions::with_cert(pki::self_signed(&["whatever.invalid"])),
    )
    .await
    .unwrap();
    let plain = MxServer::start_on(ip("127.0.0.66"), port, MxOptions::plaintext())
        .await
        .unwrap();
    let weak = MxServer::start_on(
        ip("127.0.0.67"),
        port,
        MxOptions::with_cert(pki::self_signed(&["weak.test"])),
    )
    .await
    .unwrap();
    weak.update_options(|o| {
        o.cert = Some(p.ca.leaf_with(
            &["mx.weak.test"],
            LeafOptions::default().key(KeyKind::Rsa1024),
        ))
    });
    let world = DnsWorld::builder()
        .zone("enc.test", ZoneKind::Unsigned)
        .mx("enc.test", 10, "mx.enc.test")
        .a("mx.enc.test", "127.0.0.65")
        .zone("plain.test", ZoneKind::Unsigned)
        .mx("plain.test", 10, "mx.plain.test")
        .a("mx.plain.test", "127.0.0.66")
        .zone("weak.test", ZoneKind::Unsigned)
        .mx("weak.test", 10, "mx.weak.test")
        .a("mx.weak.test", "127.0.0.67")
        .start()
        .await;
    let relay = TestRelay::start(
        &world,
        &p.root,
        port,
        "floor = \"encrypt\"\nretry_schedule = [\"1h\"]",
    )
    .await;
    relay
        .submit("sender@org.test", &["user@enc.test"], &message("enc"))
        .await;
    relay
        .submit("sender@org.test", &["user@plain.test"], &message("plain"))
        .await;
    relay
        .submit("sender@org.test", &["user@weak.test"], &message("weak"))
        .await;
    assert!(
        selfsigned
            .wait_for_messages(1, Duration::from_secs(10))
            .await
    );
    assert!(selfsigned.received()[0].tls.is_some());
    assert!(
        relay
            .wait_queue(Duration::from_secs(10), |q| q.len() == 2
                && q.iter().all(|e| e.attempts >= 1))
            .await
    );
    assert!(plain.received().is_empty());
    assert_eq!(plain.stats().plaintext_transactions, 0);
    assert!(
        weak.received().is_empty(),
        "the key-strength rule holds under encrypt too"
    );
    let reasons: Vec<String> = relay
        .queue()
        .iter()
        .filter_map(|e| e.recipients[0].last_reason.clone())
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("did not offer STARTTLS")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("RSA-1024")),
        "{reasons:?}"
    );
}

#[tokio::test]
async fn internationalised_domain_is_looked_up_and_recorded_as_its_a_label() {
    // The relay resolves `bücher.test` as `xn--bcher-kva.test`, and its outcome
    // records (which TLS reports are built from) name the A-label, not the
    // Unicode spelling that DNS cannot look up.
    let p = pki();
    let port = free_port();
    let mut opts = MxOptions::with_cert(p.ca.leaf(&["mx.xn--bcher-kva.test"]));
    opts.smtputf8 = true;
    let mx = MxServer::start_on(ip("127.0.0.66"), port, opts)
        .await
        .unwrap();
    let world = world_with_org()
        .zone("xn--bcher-kva.test", ZoneKind::Unsigned)
        .mx("xn--bcher-kva.test", 10, "mx.xn--bcher-kva.test")
        .a("mx.xn--bcher-kva.test", "127.0.0.66")
        .start()
        .await;
    let relay = TestRelay::start(&world, &p.root, port, "").await;
    relay
        .submit_with(
            "MAIL FROM:<sender@org.test> SMTPUTF8",
            &["leser@Bücher.test"],
            &message("idn"),
        )
        .await;
    assert!(
        mx.wait_for_messages(1, Duration::from_secs(10)).await,
        "{:?}",
        relay.queue()
    );
    let o = relay.outcomes();
    assert!(!o.is_empty());
    assert!(o.iter().all(|o| o.domain == "xn--bcher-kva.test"), "{o:?}");
}

/// One signed domain `example.test` whose MX on `addr` captures what it gets.
async fn capturing_mx(addr: &str) -> (MxServer, DnsWorld, TestRelay) {
    let p = pki();
    let port = free_port();
    let mx = MxServer::start_on(
        ip(addr),
        port,
        MxOptions::with_cert(p.ca.leaf(&["mx1.example.test"])),
    )
    .await
    .unwrap();
    let world = DnsWorld::builder()
        .zone("example.test", ZoneKind::Signed)
        .mx("example.test", 10, "mx1.example.test")
        .a("mx1.example.test", addr)
        .start()
        .await;
    let relay = TestRelay::start(&world, &p.root, port, "").await;
    (mx, world, relay)
}

/// Whether `data` holds a CR not followed by LF or an LF not preceded by CR.
fn has_bare_line_end(data: &[u8]) -> bool {
    data.iter().enumerate().any(|(i, &b)| match b {
        b'\r' => data.get(i + 1) != Some(&b'\n'),
        b'\n' => i == 0 || data[i - 1] != b'\r',
        _ => false,
    })
}

#[tokio::test]
async fn quoted_local_parts_are_sent_on_quoted() {
    let (mx, _world, relay) = capturing_mx("127.0.0.61").await;
    let rcpt = "\"victim@other.test> ORCPT=rfc822;x\"@example.test";
    relay
        .submit_with(
            "MAIL FROM:<\"x> RET=FULL ENVID=injected\"@org.test>",
            &[rcpt, "\"a b\\\\c\"@example.test"],
            &message("quoted"),
        )
        .await;
    assert!(
        mx.wait_for_messages(1, Duration::from_secs(10)).await,
        "{}",
        mx.transcript_text()
    );
    let lines: Vec<String> = mx.transcripts().concat();
    let sent = |prefix: &str| lines.iter().any(|l| l.starts_with(prefix));
    assert!(
        lines.contains(&"C: MAIL FROM:<\"x> RET=FULL ENVID=injected\"@org.test>".to_string()),
        "{lines:#?}"
    );
    assert!(
        sent(&format!("C: RCPT TO:<{rcpt}>")),
        "the quoted local part stays one address: {lines:#?}"
    );
    assert!(sent("C: RCPT TO:<\"a b\\\\c\"@example.test>"), "{lines:#?}");
    assert!(!sent("C: RCPT TO:<victim@"), "{lines:#?}");
    assert!(!sent("C: MAIL FROM:<x>"), "{lines:#?}");
    // What the next hop's parser makes of it: one path each, no parameters injected.
    let got = &mx.received()[0];
    assert_eq!(got.mail_from, "\"x> RET=FULL ENVID=injected\"@org.test");
    assert!(!got.has_mail_param("RET") && !got.has_mail_param("ENVID"));
    assert_eq!(
        got.rcpt_addresses(),
        [rcpt.to_string(), "\"a b\\\\c\"@example.test".to_string()]
    );
    assert!(
        got.rcpts.iter().all(|r| r.params.is_empty()),
        "{:?}",
        got.rcpts
    );
}

#[tokio::test]
async fn bare_cr_and_lf_never_reach_the_next_hop() {
    let (mx, _world, relay) = capturing_mx("127.0.0.62").await;
    let body = b"From: sender@org.test\r\nSubject: smuggle\r\n\r\nHello\r.\r\nMAIL FROM:<admin@org.test>\r\nbare\nlf and bare\rcr\r\n.\n.\rend\r\n";
    let id = relay
        .submit("sender@org.test", &["rcpt@example.test"], body)
        .await;
    let stored = relay.spool.read_message(&id).unwrap();
    assert!(!has_bare_line_end(&stored), "stored: {stored:?}");
    assert!(
        mx.wait_for_messages(1, Duration::from_secs(10)).await,
        "{}",
        mx.transcript_text()
    );
    let got = &mx.received()[0];
    assert!(!has_bare_line_end(&got.data), "sent: {:?}", got.data);
    assert_eq!(got.data, stored, "the stored bytes, exactly");
    assert!(String::from_utf8_lossy(&got.data).ends_with(
        "Hello\r\n.\r\nMAIL FROM:<admin@org.test>\r\nbare\r\nlf and bare\r\ncr\r\n.\r\n.\r\nend\r\n"
    ));
    assert_eq!(mx.received().len(), 1, "one message, nothing smuggled");
}
