//! REQUIRETLS (RFC 8689) end to end, and the `TLS-Required: No` header.

mod support;

use std::net::IpAddr;
use std::time::Duration;

use support::dns_world::{DnsWorld, DnsWorldBuilder, ZoneKind};
use support::mx::{free_port, MxOptions, MxServer};
use support::pki::{self, TestCa, TrustedCa};
use support::relay::TestRelay;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn pki() -> TrustedCa {
    TrustedCa::new("requiretls CA")
}

/// The sender's domain, signed, whose MX offers REQUIRETLS, so that a DSN about a
/// REQUIRETLS message (itself sent with REQUIRETLS) can reach it.
fn with_org(b: DnsWorldBuilder) -> DnsWorldBuilder {
    b.zone("org.test", ZoneKind::Signed)
        .mx("org.test", 10, "mx.org.test")
        .a("mx.org.test", "127.0.6.99")
}

async fn org_sink(ca: &TestCa, port: u16) -> MxServer {
    let mut o = MxOptions::with_cert(ca.leaf(&["mx.org.test"]));
    o.requiretls = true;
    MxServer::start_on(ip("127.0.6.99"), port, o).await.unwrap()
}

const MSG: &[u8] = b"Subject: secret\r\nMessage-ID: <rt@org.test>\r\n\r\nconfidential\r\n";

#[tokio::test]
async fn requiretls_to_a_host_without_requiretls_fails_with_5_7_30() {
    let p = pki();
    let port = free_port();
    let sink = org_sink(&p.ca, port).await;
    let mx = MxServer::start_on(
        ip("127.0.6.10"),
        port,
        MxOptions::with_cert(p.ca.leaf(&["mx.norequire.test"])),
    )
    .await
    .unwrap();
    let world = with_org(DnsWorld::builder())
        .zone("norequire.test", ZoneKind::Signed)
        .mx("norequire.test", 10, "mx.norequire.test")
        .a("mx.norequire.test", "127.0.6.10")
        .start()
        .await;
    let (relay, root) = TestRelay::start_with_inbound_tls(&world, &p.root, port, "").await;
    relay
        .submit_tls(
            root,
            "MAIL FROM:<sender@org.test> REQUIRETLS RET=FULL",
            &["user@norequire.test"],
            MSG,
        )
        .await;
    assert!(
        sink.wait_for_messages(1, Duration::from_secs(15)).await,
        "a DSN"
    );
    assert!(mx.received().is_empty(), "not delivered");
    let dsn = &sink.received()[0];
    let text = dsn.data_str();
    assert!(text.contains("Status: 5.7.30"), "{text}");
    assert!(text.contains("does not offer REQUIRETLS"), "{text}");
    assert!(
        dsn.has_mail_param("REQUIRETLS"),
        "the DSN itself travels with REQUIRETLS"
    );
    assert!(
        text.contains("text/rfc822-headers"),
        "headers only, even with RET=FULL: {text}"
    );
    assert!(
        !text.contains("confidential"),
        "the body is not returned: {text}"
    );
}

#[tokio::test]
async fn requiretls_to_an_authenticated_host_that_offers_it_is_delivered_with_the_parameter() {
    let p = pki();
    let port = free_port();
    let mut o = MxOptions::with_cert(p.ca.leaf(&["mx.strict.test"]));
    o.requiretls = true;
    let mx = MxServer::start_on(ip("127.0.6.11"), port, o).await.unwrap();
    let world = DnsWorld::builder()
        .zone("strict.test", ZoneKind::Signed)
        .mx("strict.test", 10, "mx.strict.test")
        .a("mx.strict.test", "127.0.6.11")
        .start()
        .await;
    let (relay, root) = TestRelay::start_with_inbound_tls(&world, &p.root, port, "").await;
    relay
        .submit_tls(
            root,
            "MAIL FROM:<sender@org.test> REQUIRETLS",
            &["user@strict.test"],
            MSG,
        )
        .await;
    assert!(mx.wait_for_messages(1, Duration::from_secs(10)).await);
    let got = &mx.received()[0];
    assert!(got.has_mail_param("REQUIRETLS"), "{:?}", got.mail_params);
    assert!(got.tls.is_some());
}

#[tokio::test]
async fn requiretls_needs_a_securely_learnt_mx() {
    // The host offers REQUIRETLS and has a valid certificate, but the MX answer is
    // unsigned and no MTA-STS policy vouches for it.
    let p = pki();
    let port = free_port();
    let _sink = org_sink(&p.ca, port).await;
    let mut o = MxOptions::with_cert(p.ca.leaf(&["mx.unsigned.test"]));
    o.requiretls = true;
    let mx = MxServer::start_on(ip("127.0.6.12"), port, o).await.unwrap();
    let world = with_org(DnsWorld::builder())
        .zone("unsigned.test", ZoneKind::Unsigned)
        .mx("unsigned.test", 10, "mx.unsigned.test")
        .a("mx.unsigned.test", "127.0.6.12")
        .start()
        .await;
    let (relay, root) = TestRelay::start_with_inbound_tls(&world, &p.root, port, "").await;
    relay
        .submit_tls(
            root,
            "MAIL FROM:<sender@org.test> REQUIRETLS",
            &["user@unsigned.test"],
            MSG,
        )
        .await;
    assert!(
        relay
            .wait_queue(Duration::from_secs(10), |q| !q
                .iter()
                .any(|e| e.recipients[0].address == "user@unsigned.test"))
            .await
    );
    assert_eq!(mx.stats().connections, 0, "not even contacted");
}

#[tokio::test]
async fn tls_required_no_lowers_authentication_only_when_honoured_and_never_to_plaintext() {
    let p = pki();
    let port = free_port();
    let selfsigned = MxServer::start_on(
        ip("127.0.6.20"),
        port,
        MxOptions::with_cert(pki::self_signed(&["mx.lax.test"])),
    )
    .await
    .unwrap();
    let plain = MxServer::start_on(ip("127.0.6.21"), port, MxOptions::plaintext())
        .await
        .unwrap();
    let world = DnsWorld::builder()
        .zone("lax.test", ZoneKind::Unsigned)
        .mx("lax.test", 10, "mx.lax.test")
        .a("mx.lax.test", "127.0.6.20")
        .zone("plain.test", ZoneKind::Unsigned)
        .mx("plain.test", 10, "mx.plain.test")
        .a("mx.plain.test", "127.0.6.21")
        .start()
        .await;
    let msg = b"Subject: newsletter\r\nTLS-Required: No\r\n\r\nhello\r\n";
    // Not honoured (the default): refused like any unverifiable host.
    let relay = TestRelay::start(&world, &p.root, port, "retry_schedule = [\"1h\"]").await;
    let id = relay
        .submit("sender@org.test", &["user@lax.test"], msg)
        .await;
    assert!(
        relay
            .wait_queue(Duration::from_secs(10), |q| q
                .iter()
                .any(|e| e.attempts >= 1))
            .await
    );
    assert!(selfsigned.received().is_empty());
    assert!(relay.spool.load(&id).unwrap().tls_required_no);
    relay.stop().await;
    // Honoured: delivered over TLS without the certificate check; plaintext still refused.
    let relay = TestRelay::start(
        &world,
        &p.root,
        port,
        "retry_schedule = [\"1h\"]\nhonor_tls_required_no = true",
    )
    .await;
    relay
        .submit("sender@org.test", &["user@lax.test"], msg)
        .await;
    relay
        .submit("sender@org.test", &["user@plain.test"], msg)
        .await;
    assert!(
        selfsigned
            .wait_for_messages(1, Duration::from_secs(10))
            .await
    );
    assert!(selfsigned.received()[0].tls.is_some());
    assert!(
        relay
            .wait_queue(Duration::from_secs(10), |q| q
                .iter()
                .any(|e| e.attempts >= 1))
            .await
    );
    assert!(plain.received().is_empty());
    assert_eq!(plain.stats().plaintext_transactions, 0);
    let o = relay.outcomes();
    assert!(
        o.iter()
            .any(|o| o.auth.as_deref() == Some("encrypt (TLS-Required: No)") && o.tls_ok),
        "{o:?}"
    );
}
