//! Sessions are shared by the domains of one site, never across proofs; site
//! limits and the back-off after a storm of temporary failures hold per site.
//! Real TLS SMTP servers and the in-process signed DNS world.

mod support;

use std::time::Duration;

use support::dns_world::{DnsWorld, ZoneKind};
use support::mx::{free_port, MxOptions, MxServer};
use support::pki::TestCa;
use support::relay::TestRelay;
use support::{ip, sha256};

/// Submits one message to `to` and waits until the relay is done with it.
async fn send(relay: &TestRelay, to: &str) -> String {
    let id = relay
        .submit("s@org.test", &[to], b"Subject: s\r\n\r\nx\r\n")
        .await;
    relay.wait_attempted(std::slice::from_ref(&id)).await;
    id
}

/// The `auth` of the successful outcome records of `domain`.
fn auths(relay: &TestRelay, domain: &str) -> Vec<String> {
    relay
        .outcomes()
        .iter()
        .filter(|o| o.domain == domain && o.tls_ok)
        .filter_map(|o| o.auth.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_are_shared_by_domains_but_never_across_proofs() {
    let ca = TestCa::new("sites CA");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("ca.pem");
    ca.write_root_pem(&root);
    let port = free_port();
    // One host, valid for the floor (WebPKI for its name) and named by TLSA records.
    let cert = ca.leaf(&["mx.shared.test"]);
    let mx = MxServer::start_on(ip("127.0.8.10"), port, MxOptions::with_cert(cert.clone()))
        .await
        .unwrap();
    let world = DnsWorld::builder()
        .zone("shared.test", ZoneKind::Signed)
        .a("mx.shared.test", "127.0.8.10")
        .tlsa(port, "mx.shared.test", 3, 1, 1, &sha256(&cert.spki_der))
        .zone("floor1.test", ZoneKind::Unsigned)
        .mx("floor1.test", 10, "mx.shared.test")
        .zone("floor2.test", ZoneKind::Unsigned)
        .mx("floor2.test", 10, "mx.shared.test")
        .zone("dane1.test", ZoneKind::Signed)
        .mx("dane1.test", 10, "mx.shared.test")
        .zone("dane2.test", ZoneKind::Signed)
        .mx("dane2.test", 10, "mx.shared.test")
        .start()
        .await;
    let relay = TestRelay::start(&world, &root, port, "connection_reuse_time = \"60s\"").await;

    send(&relay, "a@floor1.test").await;
    assert_eq!(mx.stats().connections, 1);
    // Same host and address, but DANE is owed: the floor session is not reused.
    send(&relay, "b@dane1.test").await;
    assert_eq!(
        mx.stats().connections,
        2,
        "a new session for the DANE domain"
    );
    assert_eq!(auths(&relay, "dane1.test"), ["dane"]);
    // Another domain on the same host under the same proof: the sessions roll up.
    send(&relay, "c@floor2.test").await;
    send(&relay, "d@dane2.test").await;
    assert_eq!(mx.stats().connections, 2, "{:?}", mx.stats());
    assert_eq!(mx.received().len(), 4);
    assert_eq!(auths(&relay, "floor2.test"), ["verify"]);
    assert_eq!(auths(&relay, "dane2.test"), ["dane"]);
    // Messages 2 and 4 rode the DANE session, 1 and 3 the floor one.
    let conns: Vec<usize> = mx.received().iter().map(|m| m.connection).collect();
    assert_eq!(conns[0], conns[2]);
    assert_eq!(conns[1], conns[3]);
    assert_ne!(conns[0], conns[1]);
}

#[tokio::test(flavor = "multi_thread")]
async fn site_limits_and_backoff_hold_per_site() {
    let ca = TestCa::new("limits CA");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("ca.pem");
    ca.write_root_pem(&root);
    let servers = MxServer::start_on_all(&[ip("127.0.8.20"), ip("127.0.8.21")], |i| {
        let name = ["mx.site.test", "mx.other.test"][i];
        MxOptions {
            data_delay: Some(Duration::from_millis(300)),
            ..MxOptions::with_cert(ca.leaf(&[name]))
        }
        .rcpt_reply("later", "451 4.3.0 try again later")
    })
    .await
    .unwrap();
    let (site, other) = (&servers[0], &servers[1]);
    let world = DnsWorld::builder()
        .zone("site.test", ZoneKind::Unsigned)
        .a("mx.site.test", "127.0.8.20")
        .a("mx.other.test", "127.0.8.21")
        .mx("a.site.test", 10, "mx.site.test")
        .mx("b.site.test", 10, "mx.site.test")
        .mx("c.site.test", 10, "mx.other.test")
        .start()
        .await;
    let relay = TestRelay::start(
        &world,
        &root,
        site.port(),
        "retry_schedule = [\"1h\"]\nmax_connections_per_site = 2\nmax_connections_per_domain = 10\n\
         connection_reuse_time = \"0s\"",
    )
    .await;

    // Ten messages at once to two domains of one site: never more than 2 connections.
    let mut ids = vec![];
    for i in 0..10 {
        let d = ["a", "b"][i % 2];
        let to = format!("u{i}@{d}.site.test");
        ids.push(
            relay
                .submit("s@org.test", &[&to], b"Subject: l\r\n\r\nx\r\n")
                .await,
        );
    }
    relay.wait_attempted(&ids).await;
    assert!(site.wait_for_messages(10, Duration::from_secs(20)).await);
    assert_eq!(site.stats().max_open, 2, "{:?}", site.stats());

    // A storm of 4xx from the site: after five, it backs off, for both its domains.
    for i in 0..5 {
        let d = ["a", "b"][i % 2];
        send(&relay, &format!("later@{d}.site.test")).await;
    }
    let before = site.stats().connections;
    let paused = send(&relay, "u@b.site.test").await;
    assert_eq!(
        site.stats().connections,
        before,
        "no connection while backing off"
    );
    let why = relay.last_reason(&paused);
    assert!(why.contains("backs off"), "{why}");
    assert!(why.contains("mx.site.test"), "{why}");
    // Another site is not touched.
    send(&relay, "u@c.site.test").await;
    assert_eq!(other.received().len(), 1);
}
