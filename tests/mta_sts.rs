//! MTA-STS against a real in-process HTTPS server and the DNS world: fetch rules,
//! the cache, and enforcement during delivery.

mod support;

use std::net::IpAddr;
use std::time::Duration;

use support::dns_world::{DnsWorld, ZoneKind};
use support::https::{HttpsServer, Response};
use support::mx::{free_port, MxOptions, MxServer};
use support::pki::{self, TrustedCa};
use support::relay::TestRelay;
use tlsrelay::model::domain::Domain;
use tlsrelay::protocol::sts::Mode;
use tlsrelay::reporting::outcome::ResultType;
use tlsrelay::resolve::mta_sts::{FetchSettings, MtaSts, Source};

const ENFORCE: &str = "version: STSv1\r\nmode: enforce\r\nmx: mx1.sts.test\r\nmx: *.backup.sts.test\r\nmax_age: 86400\r\n";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn sts_test() -> Domain {
    Domain::parse("sts.test").unwrap()
}

fn setup() -> TrustedCa {
    TrustedCa::new("sts test CA")
}

fn world(id: &str) -> support::dns_world::DnsWorldBuilder {
    DnsWorld::builder()
        .zone("sts.test", ZoneKind::Unsigned)
        .txt("_mta-sts.sts.test", &[&format!("v=STSv1; id={id}")])
        .a("mta-sts.sts.test", "127.0.3.30")
}

fn engine(world: &DnsWorld, s: &TrustedCa, port: u16, cache: &std::path::Path) -> MtaSts {
    MtaSts::new(
        world.dns(),
        FetchSettings {
            port,
            extra_roots: vec![s.root.clone()],
            timeout: Duration::from_secs(5),
        },
        cache,
    )
    .unwrap()
}

/// Twenty lookups of one domain at once make one HTTPS fetch; all get the policy.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_lookups_share_one_fetch() {
    let s = setup();
    let port = free_port();
    let server = HttpsServer::start(
        ip("127.0.3.30"),
        port,
        s.ca.leaf(&["mta-sts.sts.test"]),
        Response::policy(ENFORCE),
    )
    .await;
    let w = world("7").start().await;
    let cache = tempfile::tempdir().unwrap();
    let e = std::sync::Arc::new(engine(&w, &s, port, cache.path()));
    let lookups: Vec<_> = (0..20)
        .map(|_| {
            let e = e.clone();
            tokio::spawn(async move { e.lookup(&sts_test()).await })
        })
        .collect();
    for l in lookups {
        let found = l.await.unwrap();
        assert_eq!(found.policy.expect("a policy").0.mode, Mode::Enforce);
    }
    assert_eq!(server.requests().len(), 1, "{:?}", server.requests());
}

#[tokio::test]
async fn fetch_rules_each_violation_is_a_precise_error() {
    let s = setup();
    let port = free_port();
    let good_cert = s.ca.leaf(&["mta-sts.sts.test"]);
    let server =
        HttpsServer::start(ip("127.0.3.30"), port, good_cert, Response::policy(ENFORCE)).await;
    let w = world("1").start().await;
    let cache = tempfile::tempdir().unwrap();
    let e = engine(&w, &s, port, cache.path());

    let (policy, _) = e
        .fetch(&sts_test())
        .await
        .expect("a good policy is fetched");
    assert_eq!(policy.mode, Mode::Enforce);
    assert_eq!(server.requests(), ["GET /.well-known/mta-sts.txt HTTP/1.1"]);

    let big = "x".repeat(70 * 1024);
    let cases: Vec<(Response, ResultType, &str)> = vec![
        (
            Response {
                status: "302 Found".into(),
                headers: vec![
                    ("Location".into(), "https://mta-sts.sts.test/other".into()),
                    ("Content-Type".into(), "text/plain".into()),
                ],
                body: ENFORCE.into(),
                content_length: true,
            },
            ResultType::StsPolicyFetchError,
            "redirects are not followed",
        ),
        (
            Response {
                status: "404 Not Found".into(),
                ..Response::policy(ENFORCE)
            },
            ResultType::StsPolicyFetchError,
            "HTTP 404",
        ),
        (
            Response {
                headers: vec![("Content-Type".into(), "text/html".into())],
                ..Response::policy(ENFORCE)
            },
            ResultType::StsPolicyFetchError,
            "must be text/plain",
        ),
        (
            Response::policy(&big),
            ResultType::StsPolicyFetchError,
            "over 65536 bytes",
        ),
        (
            Response {
                content_length: false,
                ..Response::policy(&big)
            },
            ResultType::StsPolicyFetchError,
            "over 65536 bytes",
        ),
        (
            Response::policy("version: STSv1\r\nmode: sometimes\r\nmax_age: 10\r\n"),
            ResultType::StsPolicyInvalid,
            "invalid policy",
        ),
    ];
    for (resp, kind, words) in cases {
        server.set_response(resp.clone());
        let err = e.fetch(&sts_test()).await.expect_err(words);
        assert_eq!(err.result_type(), kind, "{words}: {err:?}");
        assert!(err.to_string().contains(words), "{words}: {err}");
    }
    drop(server);

    // Certificates: untrusted, and valid but for the wrong name.
    for (cert, words) in [
        (pki::self_signed(&["mta-sts.sts.test"]), "certificate"),
        (s.ca.leaf(&["mta-sts.other.test"]), "certificate"),
    ] {
        let _srv =
            HttpsServer::start(ip("127.0.3.30"), port, cert, Response::policy(ENFORCE)).await;
        let err = e.fetch(&sts_test()).await.expect_err("bad certificate");
        assert_eq!(err.result_type(), ResultType::StsWebpkiInvalid, "{err:?}");
        assert!(err.to_string().contains(words), "{err}");
    }
}

#[tokio::test]
async fn cache_is_used_when_the_refetch_fails_and_survives_a_restart() {
    let s = setup();
    let port = free_port();
    let cache = tempfile::tempdir().unwrap();
    let w1 = world("1").start().await;
    {
        let server = HttpsServer::start(
            ip("127.0.3.30"),
            port,
            s.ca.leaf(&["mta-sts.sts.test"]),
            Response::policy(ENFORCE),
        )
        .await;
        let e = engine(&w1, &s, port, cache.path());
        let l = e.lookup(&sts_test()).await;
        assert_eq!(
            l.policy.as_ref().map(|(p, src)| (p.mode, *src)),
            Some((Mode::Enforce, Source::Fetched))
        );
        // Same id: no second fetch.
        let l = e.lookup(&sts_test()).await;
        assert_eq!(l.policy.map(|(_, src)| src), Some(Source::Cached));
        assert_eq!(server.requests().len(), 1);
    }
    // A new process (new engine, same directory), the policy host is down, and the id changed:
    // the refetch fails, the unexpired cached policy stays in force, and the failure is reported.
    let w2 = world("2").start().await;
    let e = engine(&w2, &s, port, cache.path());
    let l = e.lookup(&sts_test()).await;
    let (p, src) = l.policy.expect("cached policy used");
    assert_eq!((p.mode, src), (Mode::Enforce, Source::Cached));
    assert_eq!(l.error.map(|e| e.0), Some(ResultType::StsPolicyFetchError));
}

#[tokio::test]
async fn id_change_refetches_and_mode_none_lifts_enforcement() {
    let s = setup();
    let port = free_port();
    let cache = tempfile::tempdir().unwrap();
    let server = HttpsServer::start(
        ip("127.0.3.30"),
        port,
        s.ca.leaf(&["mta-sts.sts.test"]),
        Response::policy(ENFORCE),
    )
    .await;
    let w1 = world("1").start().await;
    let e = engine(&w1, &s, port, cache.path());
    assert!(e.lookup(&sts_test()).await.policy.is_some());
    server.set_response(Response::policy(
        "version: STSv1\r\nmode: none\r\nmax_age: 86400\r\n",
    ));
    let w2 = world("2").start().await;
    let e = engine(&w2, &s, port, cache.path());
    let l = e.lookup(&sts_test()).await;
    assert_eq!(server.requests().len(), 2, "a new id means a refetch");
    let (p, src) = l.policy.unwrap();
    assert_eq!((p.mode, src), (Mode::None, Source::Fetched));
    assert!(p.allows("anything.example"), "mode none allows every host");
    assert_eq!(
        e.cached()[0].id,
        "2",
        "mode none replaced the cached policy at once"
    );
}

#[tokio::test]
async fn enforce_mode_during_delivery() {
    let s = setup();
    let port = free_port();
    let _https = HttpsServer::start(
        ip("127.0.3.30"),
        port,
        s.ca.leaf(&["mta-sts.sts.test"]),
        Response::policy(ENFORCE),
    )
    .await;
    // The preferred MX is not in the policy (a forged MX record, say): it must never see a connection.
    let forged = MxServer::start_on(
        ip("127.0.3.10"),
        port,
        MxOptions::with_cert(s.ca.leaf(&["evil.attacker.test"])),
    )
    .await
    .unwrap();
    let good = MxServer::start_on(
        ip("127.0.3.11"),
        port,
        MxOptions::with_cert(s.ca.leaf(&["mx1.sts.test"])),
    )
    .await
    .unwrap();
    let badcert = MxServer::start_on(
        ip("127.0.3.12"),
        port,
        MxOptions::with_cert(pki::self_signed(&["mx.backup.sts.test"])),
    )
    .await
    .unwrap();
    let w = world("1")
        .mx("sts.test", 5, "evil.attacker.test")
        .mx("sts.test", 10, "mx1.sts.test")
        .a("evil.attacker.test", "127.0.3.10")
        .a("mx1.sts.test", "127.0.3.11")
        .zone("other.test", ZoneKind::Unsigned)
        .txt("_mta-sts.other.test", &["v=STSv1; id=1"])
        .a("mta-sts.other.test", "127.0.3.30")
        .mx("other.test", 10, "mx.backup.sts.test")
        .a("mx.backup.sts.test", "127.0.3.12")
        .start()
        .await;
    let relay = TestRelay::start(
        &w,
        &s.root,
        port,
        &format!(
            "retry_schedule = [\"1h\"]\n[mta_sts]\nhttps_port = {port}\nextra_roots = [\"{}\"]",
            s.root.display()
        ),
    )
    .await;
    relay
        .submit(
            "sender@org.test",
            &["user@sts.test"],
            b"Subject: sts\r\n\r\nhello\r\n",
        )
        .await;
    assert!(
        good.wait_for_messages(1, Duration::from_secs(10)).await,
        "{:?}",
        relay.queue()
    );
    assert_eq!(
        forged.stats().connections,
        0,
        "a host outside the policy is never contacted"
    );
    let o = relay.outcomes();
    assert!(
        o.iter().any(|o| o.mx_host == "mx1.sts.test"
            && o.tls_ok
            && o.auth.as_deref() == Some("mta-sts")),
        "{o:?}"
    );
    assert!(
        o.iter().any(|o| o.mx_host == "evil.attacker.test"
            && o.result == Some(ResultType::ValidationFailure)),
        "{o:?}"
    );
    let _ = badcert;
}

#[tokio::test]
async fn enforce_mode_invalid_certificate_defers() {
    let s = setup();
    let port = free_port();
    let policy = "version: STSv1\nmode: enforce\nmx: mx.sts.test\nmax_age: 86400\n";
    let _https = HttpsServer::start(
        ip("127.0.3.30"),
        port,
        s.ca.leaf(&["mta-sts.sts.test"]),
        Response::policy(policy),
    )
    .await;
    let mx = MxServer::start_on(
        ip("127.0.3.13"),
        port,
        MxOptions::with_cert(pki::self_signed(&["mx.sts.test"])),
    )
    .await
    .unwrap();
    let w = world("1")
        .mx("sts.test", 10, "mx.sts.test")
        .a("mx.sts.test", "127.0.3.13")
        .start()
        .await;
    // Even with the floor lowered to encrypt, MTA-STS enforce demands WebPKI for its domain.
    let relay = TestRelay::start(
        &w,
        &s.root,
        port,
        &format!("floor = \"encrypt\"\nretry_schedule = [\"1h\"]\n[mta_sts]\nhttps_port = {port}\nextra_roots = [\"{}\"]", s.root.display()),
    )
    .await;
    let id = relay
        .submit(
            "sender@org.test",
            &["user@sts.test"],
            b"Subject: sts\r\n\r\nhello\r\n",
        )
        .await;
    assert!(
        relay
            .wait_queue(Duration::from_secs(10), |q| q
                .iter()
                .any(|e| e.attempts >= 1))
            .await
    );
    assert!(mx.received().is_empty());
    let reason = relay.spool.load(&id).unwrap().recipients[0]
        .last_reason
        .clone()
        .unwrap();
    assert!(reason.contains("unknown issuer"), "{reason}");
    assert!(relay
        .outcomes()
        .iter()
        .any(|o| o.result == Some(ResultType::CertificateNotTrusted)
            && o.auth.as_deref() == Some("mta-sts")));
}

/// An internationalised policy domain is looked up, fetched, cached and purged
/// under its A-label, whichever spelling it was given in.
#[tokio::test]
async fn idn_policy_domain_uses_the_a_label_throughout() {
    let s = setup();
    let port = free_port();
    let _server = HttpsServer::start(
        ip("127.0.3.31"),
        port,
        s.ca.leaf(&["mta-sts.xn--bcher-kva.example"]),
        Response::policy(
            "version: STSv1\r\nmode: enforce\r\nmx: mx.xn--bcher-kva.example\r\nmax_age: 86400\r\n",
        ),
    )
    .await;
    let w = DnsWorld::builder()
        .zone("xn--bcher-kva.example", ZoneKind::Unsigned)
        .txt("_mta-sts.xn--bcher-kva.example", &["v=STSv1; id=7"])
        .a("mta-sts.xn--bcher-kva.example", "127.0.3.31")
        .zone("nosts.example", ZoneKind::Unsigned)
        .start()
        .await;
    let cache = tempfile::tempdir().unwrap();
    let e = engine(&w, &s, port, cache.path());
    let unicode = Domain::parse("Bücher.example").unwrap();
    let l = e.lookup(&unicode).await;
    assert_eq!(
        l.policy.map(|(p, src)| (p.mode, src)),
        Some((Mode::Enforce, Source::Fetched)),
        "{:?}",
        l.error
    );
    assert_eq!(l.record_id.as_deref(), Some("7"));
    let file = cache.path().join("xn--bcher-kva.example.json");
    assert!(file.is_file(), "cached under the A-label");
    assert_eq!(e.cached()[0].domain, "xn--bcher-kva.example");

    // A new engine reads it back; the A-label spelling finds the same entry.
    let e = engine(&w, &s, port, cache.path());
    let a_label = Domain::parse("xn--bcher-kva.example").unwrap();
    let l = e.lookup(&a_label).await;
    assert_eq!(l.policy.map(|(_, src)| src), Some(Source::Cached));
    let entry = e.refresh(&unicode).await.expect("refresh");
    assert_eq!(
        (entry.domain.as_str(), entry.id.as_str()),
        ("xn--bcher-kva.example", "7")
    );
    assert_eq!(e.purge(Some(&a_label)), 1);
    assert!(!file.exists());

    // No record: refresh says so, with the RFC 8460 type.
    let err = e
        .refresh(&Domain::parse("nosts.example").unwrap())
        .await
        .expect_err("no record");
    assert_eq!(err.result_type(), ResultType::StsPolicyFetchError);
    assert_eq!(
        err.to_string(),
        "_mta-sts.nosts.example has no STSv1 record"
    );
}
