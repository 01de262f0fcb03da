//! `tlsrelay check` and delivery make one plan: over every domain of a test DNS
//! world (DANE, CNAME bases, unusable TLSA, bogus and failing DNS, MTA-STS,
//! local policies, null MX, NXDOMAIN, implicit MX), the plan delivery would
//! carry out equals the one `check` shows, and `check` shows the SNI delivery
//! really sends.

mod support;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use support::dns_world::{DnsWorld, RecordType, ZoneKind};
use support::https::{HttpsServer, Response};
use support::mx::{free_port, MxOptions, MxServer};
use support::pki::{self, TestCa};
use support::relay::{config_text, TestRelay};
use tlsrelay::config::Config;
use tlsrelay::delivery::Delivery;
use tlsrelay::model::domain::Domain;
use tlsrelay::model::mechanism::TlsDemand;
use tlsrelay::ops::check::{self, Sources};
use tlsrelay::policy::local::PolicySet;
use tlsrelay::policy::{DomainPlan, HostStep};
use tlsrelay::resolve::dns::Dns;
use tlsrelay::resolve::mta_sts::{FetchSettings, MtaSts};
use tlsrelay::spool::Spool;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn sha256(b: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, b)
        .as_ref()
        .to_vec()
}

/// Every domain of the world below, with what its plan must look like.
const DOMAINS: &[(&str, &str)] = &[
    ("dane.test", "connect mx.dane.test sni=mx.dane.test dane"),
    // The MX host is a secure CNAME whose target has no TLSA while the host name
    // has: the base (and SNI) is the host name. `check` used to show the target.
    ("cname.test", "connect mx.cname.test sni=mx.cname.test dane"),
    // TLSA at the CNAME target: the target is the base and the SNI.
    (
        "cnamet.test",
        "connect mx.cnamet.test sni=real.cnamet.test dane",
    ),
    (
        "unusable.test",
        "connect mx.unusable.test sni=mx.unusable.test verify",
    ),
    (
        "plain.test",
        "connect mx.plain.test sni=mx.plain.test verify",
    ),
    (
        "sts.test",
        "connect mx.sts.test sni=mx.sts.test mta-sts; skip rogue.sts.test",
    ),
    (
        "local.test",
        "connect mx.local.test sni=mx.local.test local",
    ),
    (
        "multi.test",
        "skip noaddr.multi.test; connect mx2.multi.test sni=mx2.multi.test dane",
    ),
    ("sf.test", "skip mx.sf.test"),
    ("bogus.test", "defer"),
    ("nullmx.test", "fail 5.1.10"),
    ("nowhere.test", "fail 5.1.2"),
    (
        "implicit.test",
        "connect implicit.test sni=implicit.test verify",
    ),
];

/// A plan in the short form of `DOMAINS`.
fn short(plan: &DomainPlan) -> String {
    match plan {
        DomainPlan::Fail { status, .. } => format!("fail {status}"),
        DomainPlan::Defer { .. } => "defer".into(),
        DomainPlan::Hosts { steps, .. } => steps
            .iter()
            .map(|s| match s {
                HostStep::Connect(t) => format!(
                    "connect {} sni={} {}",
                    t.req.host, t.req.sni, t.req.mechanism
                ),
                HostStep::Skip(s) => format!("skip {}", s.host),
            })
            .collect::<Vec<_>>()
            .join("; "),
    }
}

struct World {
    _dir: tempfile::TempDir,
    _https: HttpsServer,
    _dns: DnsWorld,
    config: Config,
}

/// The world: one zone per case, an MTA-STS policy server, a local policy file.
async fn world(port: u16, ca: &TestCa) -> World {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("ca.pem");
    ca.write_root_pem(&root);
    let https = HttpsServer::start(
        ip("127.0.6.30"),
        port,
        ca.leaf(&["mta-sts.sts.test"]),
        Response::policy("version: STSv1\nmode: enforce\nmx: mx.sts.test\nmax_age: 604800\n"),
    )
    .await;
    let key = sha256(&pki::self_signed(&["x"]).spki_der);
    let dns = DnsWorld::builder()
        .zone("dane.test", ZoneKind::Signed)
        .mx("dane.test", 10, "mx.dane.test")
        .a("mx.dane.test", "127.0.6.10")
        .tlsa(port, "mx.dane.test", 3, 1, 1, &key)
        .zone("cname.test", ZoneKind::Signed)
        .mx("cname.test", 10, "mx.cname.test")
        .cname("mx.cname.test", "real.cname.test")
        .a("real.cname.test", "127.0.6.11")
        .tlsa(port, "mx.cname.test", 3, 1, 1, &key)
        .zone("cnamet.test", ZoneKind::Signed)
        .mx("cnamet.test", 10, "mx.cnamet.test")
        .cname("mx.cnamet.test", "real.cnamet.test")
        .a("real.cnamet.test", "127.0.6.12")
        .tlsa(port, "real.cnamet.test", 3, 1, 1, &key)
        .zone("unusable.test", ZoneKind::Signed)
        .mx("unusable.test", 10, "mx.unusable.test")
        .a("mx.unusable.test", "127.0.6.13")
        .tlsa(port, "mx.unusable.test", 0, 0, 1, &key)
        .zone("plain.test", ZoneKind::Unsigned)
        .mx("plain.test", 10, "mx.plain.test")
        .a("mx.plain.test", "127.0.6.14")
        .tlsa(port, "mx.plain.test", 3, 1, 1, &key)
        .zone("sts.test", ZoneKind::Unsigned)
        .mx("sts.test", 10, "mx.sts.test")
        .mx("sts.test", 20, "rogue.sts.test")
        .a("mx.sts.test", "127.0.6.15")
        .a("rogue.sts.test", "127.0.6.16")
        .txt("_mta-sts.sts.test", &["v=STSv1; id=20261201"])
        .a("mta-sts.sts.test", "127.0.6.30")
        .zone("local.test", ZoneKind::Signed)
        .mx("local.test", 10, "mx.local.test")
        .a("mx.local.test", "127.0.6.17")
        .tlsa(port, "mx.local.test", 3, 1, 1, &key)
        .zone("multi.test", ZoneKind::Signed)
        .mx("multi.test", 10, "noaddr.multi.test")
        .mx("multi.test", 20, "mx2.multi.test")
        .a("mx2.multi.test", "127.0.6.18")
        .tlsa(port, "mx2.multi.test", 3, 1, 1, &key)
        .zone("sf.test", ZoneKind::Signed)
        .mx("sf.test", 10, "mx.sf.test")
        .a("mx.sf.test", "127.0.6.19")
        .servfail(&format!("_{port}._tcp.mx.sf.test"), RecordType::TLSA)
        .zone("bogus.test", ZoneKind::BadSignatures)
        .mx("bogus.test", 10, "mx.bogus.test")
        .a("mx.bogus.test", "127.0.6.20")
        .zone("nullmx.test", ZoneKind::Signed)
        .null_mx("nullmx.test")
        .zone("implicit.test", ZoneKind::Unsigned)
        .a("implicit.test", "127.0.6.21")
        .start()
        .await;
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(
        policies.join("local.toml"),
        format!(
            "[[policy]]\ndomain = \"local.test\"\nlevel = \"fingerprint\"\nfingerprints = [\"spki-sha256:{}\"]\n",
            key.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ),
    )
    .unwrap();
    let mut text = config_text(dir.path(), &dns, &root, port, "");
    text.push_str(&format!(
        "[mta_sts]\nhttps_port = {port}\nextra_roots = [\"{}\"]\n[policies]\ndir = \"{}\"\n",
        root.display(),
        policies.display()
    ));
    let config = Config::parse(&text, None).unwrap();
    World {
        _dir: dir,
        _https: https,
        _dns: dns,
        config,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn check_and_delivery_make_the_same_plan() {
    let port = free_port();
    let ca = TestCa::new("plan CA");
    let w = world(port, &ca).await;
    let config = Arc::new(w.config.clone());
    let dns = Dns::new(&tlsrelay::relay::dns_settings(&config)).unwrap();
    let spool = Spool::open(&config.spool.dir).unwrap();
    let delivery = Delivery::new(config.clone(), spool, dns.clone()).unwrap();
    let settings = FetchSettings {
        port: config.mta_sts.https_port,
        extra_roots: config.mta_sts.extra_roots.clone(),
        timeout: config.mta_sts.fetch_timeout.get(),
    };
    let sts_dir = config.spool.dir.join("check-mta-sts");
    let sts = MtaSts::new(dns.clone(), settings, &sts_dir).unwrap();
    let policies = PolicySet::load_dir(config.policies.dir.as_ref().unwrap()).unwrap();
    let src = Sources {
        config: &config,
        dns: &dns,
        sts: &sts,
        policies: &policies,
    };
    for (name, want) in DOMAINS {
        let domain = Domain::parse(name).unwrap();
        let (_, by_delivery) = delivery.plan_for(&domain, TlsDemand::Standard).await;
        let (_, by_check) = src.plan_for(&domain).await;
        assert_eq!(by_check, by_delivery, "{name}: check and delivery disagree");
        assert_eq!(short(&by_delivery), *want, "{name}");
        // What `check` prints comes from that plan: the SNI of each contacted host.
        let report = check::run(&config, &dns, &sts, &policies, name, false).await;
        if let DomainPlan::Hosts { steps, .. } = &by_delivery {
            for (h, step) in report.hosts.iter().zip(steps) {
                let sni = match step {
                    HostStep::Connect(t) => Some(t.req.sni.clone()),
                    HostStep::Skip(_) => None,
                };
                assert_eq!(h.sni, sni, "{name}: {}", h.host);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn check_shows_the_sni_delivery_sends_for_a_cname_mx() {
    // RFC 7672 §2.2.2: TLSA at the MX host name, none at its CNAME target. The
    // relay's SNI on the wire and `check`'s must both be the host name.
    let port = free_port();
    let cert = pki::self_signed(&["mx.cname.test"]);
    let server = MxServer::start_on(ip("127.0.6.40"), port, MxOptions::with_cert(cert.clone()))
        .await
        .unwrap();
    let ca = TestCa::new("cname CA");
    let root = tempfile::tempdir().unwrap();
    let root_pem = root.path().join("ca.pem");
    ca.write_root_pem(&root_pem);
    let world = DnsWorld::builder()
        .zone("cname.test", ZoneKind::Signed)
        .mx("cname.test", 10, "mx.cname.test")
        .cname("mx.cname.test", "real.cname.test")
        .a("real.cname.test", "127.0.6.40")
        .tlsa(port, "mx.cname.test", 3, 1, 1, &sha256(&cert.spki_der))
        .start()
        .await;
    let relay = TestRelay::start(&world, &root_pem, port, "").await;
    relay
        .submit("a@org.test", &["b@cname.test"], b"Subject: x\r\n\r\nx\r\n")
        .await;
    assert!(server.wait_for_messages(1, Duration::from_secs(10)).await);
    let wire_sni = server.received()[0].tls.as_ref().unwrap().sni.clone();
    assert_eq!(wire_sni.as_deref(), Some("mx.cname.test"));

    let config = Config::parse(relay.config_text(), None).unwrap();
    let dns = Dns::new(&tlsrelay::relay::dns_settings(&config)).unwrap();
    let settings = FetchSettings {
        port: 443,
        extra_roots: vec![],
        timeout: Duration::from_secs(2),
    };
    let sts = MtaSts::new(dns.clone(), settings, &root.path().join("sts")).unwrap();
    let report = check::run(
        &config,
        &dns,
        &sts,
        &PolicySet::empty(),
        "cname.test",
        false,
    )
    .await;
    assert_eq!(report.hosts[0].sni, wire_sni, "{report:?}");
    // The DANE-TA names are delivery's too: the base (the host name), not the target.
    assert!(
        (report.hosts[0].requirement).ends_with("DANE-TA names: mx.cname.test"),
        "{report:?}"
    );
    assert!(report.deliverable, "{report:?}");
}
