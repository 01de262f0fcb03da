//! Routes, source addresses, address families and expiring exceptions, against
//! real SMTP servers with real TLS and the in-process signed DNS world.

mod support;

use support::child::run_cli;
use support::dns_world::{DnsWorld, ZoneKind};
use support::mx::{free_port, MxOptions, MxServer};
use support::pki::{self, TestCa};
use support::relay::TestRelay;
use support::{ip, sha256};
use tlsrelay::reporting::outcome::SessionResult;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn routes_send_to_their_hop_authenticated_from_their_source() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("routes CA");
    let root = dir.path().join("ca.pem");
    ca.write_root_pem(&root);
    let (mx_port, hop_port) = (free_port(), free_port());
    // The recipient domains' own MX hosts: a route must never reach them.
    let own_mx = MxServer::start_on(
        ip("127.0.6.10"),
        mx_port,
        MxOptions::with_cert(ca.leaf(&["mx.partner.test", "mx.wrongcert.test"])),
    )
    .await
    .unwrap();
    let gw_cert = pki::self_signed(&["gw.partner.test"]);
    let gw = MxServer::start_on(
        ip("127.0.6.11"),
        hop_port,
        MxOptions::with_cert(gw_cert.clone()),
    )
    .await
    .unwrap();
    let gw2 = MxServer::start_on(
        ip("127.0.6.12"),
        hop_port,
        MxOptions::with_cert(pki::self_signed(&["gw2.partner.test"])),
    )
    .await
    .unwrap();
    let hub = MxServer::start_on(
        ip("127.0.6.13"),
        hop_port,
        MxOptions::with_cert(ca.leaf(&["mx1.hub.test"])),
    )
    .await
    .unwrap();
    let world = DnsWorld::builder()
        .zone("partner.test", ZoneKind::Unsigned)
        .mx("partner.test", 10, "mx.partner.test")
        .a("mx.partner.test", "127.0.6.10")
        .a("gw.partner.test", "127.0.6.11")
        .a("gw2.partner.test", "127.0.6.12")
        .zone("wrongcert.test", ZoneKind::Unsigned)
        .mx("wrongcert.test", 10, "mx.wrongcert.test")
        .a("mx.wrongcert.test", "127.0.6.10")
        .zone("filtered.test", ZoneKind::Unsigned)
        .mx("filtered.test", 10, "mx.filtered.test")
        .a("mx.filtered.test", "127.0.6.10")
        .zone("hub.test", ZoneKind::Unsigned)
        .mx("relay.hub.test", 10, "mx1.hub.test")
        .a("mx1.hub.test", "127.0.6.13")
        .start()
        .await;
    let pin = hex(&sha256(&gw_cert.spki_der));
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(
        policies.join("routes.toml"),
        format!(
            r#"[[route]]
domain = "partner.test"
via = "[gw.partner.test]:{hop_port}"
level = "fingerprint"
fingerprints = ["spki-sha256:{pin}"]
source_ipv4 = "127.0.0.77"

[[route]]
domain = "wrongcert.test"
via = "[gw2.partner.test]:{hop_port}"
level = "fingerprint"
fingerprints = ["spki-sha256:{pin}"]

[[route]]
domain = ".filtered.test"
via = "relay.hub.test:{hop_port}"

[[route]]
domain = "filtered.test"
via = "relay.hub.test:{hop_port}"
"#
        ),
    )
    .unwrap();
    let relay = TestRelay::start(
        &world,
        &root,
        mx_port,
        &format!(
            "retry_schedule = [\"1h\"]\n[policies]\ndir = \"{}\"",
            policies.display()
        ),
    )
    .await;
    let msg = b"Subject: routed\r\n\r\nx\r\n";
    let ok = relay.submit("s@org.test", &["a@partner.test"], msg).await;
    let bad = relay.submit("s@org.test", &["b@wrongcert.test"], msg).await;
    let via_mx = relay.submit("s@org.test", &["c@filtered.test"], msg).await;
    let ids = [ok.clone(), bad.clone(), via_mx.clone()];
    relay.wait_attempted(&ids).await;

    // The pinned hop took partner.test's mail, from the route's source address.
    assert_eq!(gw.received().len(), 1, "{}", relay.last_reason(&ok));
    assert!(gw.received()[0].tls.is_some());
    assert_eq!(gw.peers()[0].ip(), ip("127.0.0.77"), "{:?}", gw.peers());
    // A hop with another certificate: refused, deferred, the reason given.
    assert!(gw2.received().is_empty());
    let why = relay.last_reason(&bad);
    assert!(why.contains("gw2.partner.test"), "{why}");
    assert!(why.contains("pinned"), "{why}");
    assert!(relay.spool.load(&bad).is_ok(), "deferred, still queued");
    // A hop named without brackets: its MX lookup found mx1.hub.test.
    assert_eq!(hub.received().len(), 1, "{}", relay.last_reason(&via_mx));
    assert!(world
        .queries()
        .iter()
        .any(|(name, t)| name.trim_end_matches('.') == "relay.hub.test" && t.to_string() == "MX"));
    // The recipient domains' own MX host was never contacted.
    assert_eq!(own_mx.stats().connections, 0);

    // Outcome records name the route; TLS reports do not count routed sessions.
    let outcomes = relay.outcomes();
    let partner: Vec<_> = outcomes
        .iter()
        .filter(|o| o.domain == "partner.test")
        .collect();
    assert!(!partner.is_empty());
    for o in &partner {
        assert_eq!(
            o.route.as_deref(),
            Some(format!("[gw.partner.test]:{hop_port}").as_str())
        );
        assert_eq!(o.session(), SessionResult::NotCounted);
        assert_eq!(o.sending_ip.as_deref(), Some("127.0.0.77"));
    }

    // check --json shows the route and the hop's requirement.
    let config = dir.path().join("tlsrelay.toml");
    std::fs::write(&config, relay.config_text()).unwrap();
    let (code, out) =
        tokio::task::spawn_blocking(move || run_cli(&config, &["check", "partner.test", "--json"]))
            .await
            .unwrap();
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let local = &v["local"];
    assert_eq!(local["entry"]["route"]["host"], "gw.partner.test", "{out}");
    assert_eq!(local["entry"]["route"]["port"], hop_port, "{out}");
    assert_eq!(local["entry"]["route"]["lookup"], "direct", "{out}");
    assert_eq!(local["standing"]["standing"], "route", "{out}");
    assert_eq!(local["egress"]["source_ipv4"], "127.0.0.77", "{out}");
    assert_eq!(v["hosts"][0]["host"], "gw.partner.test", "{out}");
    assert!(
        v["hosts"][0].to_string().contains("fingerprint") || out.contains("pinned"),
        "the hop's requirement: {out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn source_address_and_address_family() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("family CA");
    let root = dir.path().join("ca.pem");
    ca.write_root_pem(&root);
    let opts = || MxOptions::with_cert(ca.leaf(&["mx.dual.test"]));
    let servers = MxServer::start_on_all(&[ip("127.0.6.20"), ip("::1")], |_| opts())
        .await
        .unwrap();
    let (v4, v6) = (&servers[0], &servers[1]);
    let world = DnsWorld::builder()
        .zone("dual.test", ZoneKind::Unsigned)
        .mx("dual.test", 10, "mx.dual.test")
        .aaaa("mx.dual.test", "::1")
        .a("mx.dual.test", "127.0.6.20")
        .zone("dual6.test", ZoneKind::Unsigned)
        .mx("dual6.test", 10, "mx.dual.test")
        .start()
        .await;
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    // dual6.test: a local entry with its own family (verify names the MX host, as the floor does).
    std::fs::write(
        policies.join("p.toml"),
        "[[policy]]\ndomain = \"dual6.test\"\nlevel = \"verify\"\naddress_family = \"ipv6\"\n",
    )
    .unwrap();
    let relay = TestRelay::start(
        &world,
        &root,
        v4.port(),
        &format!(
            "retry_schedule = [\"1h\"]\nsource_ipv4 = \"127.0.0.66\"\naddress_family = \"ipv4\"\n\
             [policies]\ndir = \"{}\"",
            policies.display()
        ),
    )
    .await;
    let msg = b"Subject: family\r\n\r\nx\r\n";
    let a = relay.submit("s@org.test", &["a@dual.test"], msg).await;
    relay.wait_attempted(std::slice::from_ref(&a)).await;
    assert_eq!(v4.received().len(), 1, "{}", relay.last_reason(&a));
    assert_eq!(
        v6.stats().connections,
        0,
        "ipv4 only: the AAAA record is not used"
    );
    assert!(
        v4.peers().iter().all(|p| p.ip() == ip("127.0.0.66")),
        "{:?}",
        v4.peers()
    );
    let o = relay.outcomes();
    assert!(o
        .iter()
        .any(|o| o.domain == "dual.test" && o.sending_ip.as_deref() == Some("127.0.0.66")));

    let b = relay.submit("s@org.test", &["b@dual6.test"], msg).await;
    relay.wait_attempted(std::slice::from_ref(&b)).await;
    assert_eq!(v6.received().len(), 1, "{}", relay.last_reason(&b));
    assert_eq!(v4.received().len(), 1, "nothing more over IPv4");
}
