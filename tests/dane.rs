//! DANE against a signed DNS world: which hosts are authenticated by TLSA, which
//! are refused, and that doubtful DNS never falls back to weaker rules.

mod support;

use std::net::IpAddr;
use std::time::Duration;

use support::dns_world::{DnsWorld, DnsWorldBuilder, RecordType, ZoneKind};
use support::mx::{free_port, MxOptions, MxServer};
use support::pki::{CertChain, IntermediateOptions, LeafOptions, TestCa};
use support::relay::TestRelay;
use tlsrelay::reporting::outcome::{PolicyType, ResultType};
use tlsrelay::spool::RcptState;

fn sha256(b: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, b)
        .as_ref()
        .to_vec()
}
fn sha512(b: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA512, b)
        .as_ref()
        .to_vec()
}

/// A chain with the root appended, as DANE-TA servers present it (RFC 7671 §5.2.2).
fn with_root(mut chain: CertChain, ca: &TestCa) -> CertChain {
    chain.certs.push(ca.root_der());
    chain
}

enum Expect {
    /// Delivered, authenticated as `auth` (`dane` or `verify`).
    Delivered(&'static str),
    /// Refused; the reason contains the words; the outcome has the type.
    Refused(&'static str, ResultType),
}

struct Case {
    name: &'static str,
    opts: MxOptions,
    /// (usage, selector, matching, data)
    tlsa: Vec<(u8, u8, u8, Vec<u8>)>,
    expect: Expect,
}

/// `public` is trusted by the relay (the WebPKI floor); `private` is known only through TLSA.
struct Cas {
    public: TestCa,
    private: TestCa,
    _dir: tempfile::TempDir,
    public_root: std::path::PathBuf,
}

fn cas() -> Cas {
    let dir = tempfile::tempdir().unwrap();
    let public = TestCa::new("public test CA");
    let private = TestCa::new("private DANE CA");
    let public_root = dir.path().join("public.pem");
    public.write_root_pem(&public_root);
    Cas {
        public,
        private,
        _dir: dir,
        public_root,
    }
}

fn cases(c: &Cas) -> Vec<Case> {
    let priv_ca = &c.private;
    let leaf = |n: &str| priv_ca.leaf(&[n]);
    let mut v = Vec::new();
    let l = leaf("mx.ee311.dane.test");
    v.push(Case {
        name: "ee311",
        tlsa: vec![(3, 1, 1, sha256(&l.spki_der))],
        opts: MxOptions::with_cert(l),
        expect: Expect::Delivered("dane"),
    });
    let l = leaf("mx.ee301.dane.test");
    v.push(Case {
        name: "ee301",
        tlsa: vec![(3, 0, 1, sha256(l.leaf_der().as_ref()))],
        opts: MxOptions::with_cert(l),
        expect: Expect::Delivered("dane"),
    });
    let l = leaf("mx.ee312.dane.test");
    v.push(Case {
        name: "ee312",
        tlsa: vec![(3, 1, 2, sha512(&l.spki_der))],
        opts: MxOptions::with_cert(l),
        expect: Expect::Delivered("dane"),
    });
    let l = with_root(leaf("mx.ta211.dane.test"), priv_ca);
    let root_spki = webpki::EndEntityCert::try_from(&priv_ca.root_der())
        .unwrap()
        .subject_public_key_info()
        .as_ref()
        .to_vec();
    v.push(Case {
        name: "ta211",
        tlsa: vec![(2, 1, 1, sha256(&root_spki))],
        opts: MxOptions::with_cert(l),
        expect: Expect::Delivered("dane"),
    });
    let l = with_root(leaf("mx.ta201.dane.test"), priv_ca);
    v.push(Case {
        name: "ta201",
        tlsa: vec![(2, 0, 1, sha256(priv_ca.root_der().as_ref()))],
        opts: MxOptions::with_cert(l),
        expect: Expect::Delivered("dane"),
    });
    // DANE-EE ignores names and dates.
    let l = priv_ca.leaf_with(&["some.other.name"], LeafOptions::expired());
    v.push(Case {
        name: "eeexpired",
        tlsa: vec![(3, 1, 1, sha256(&l.spki_der))],
        opts: MxOptions::with_cert(l),
        expect: Expect::Delivered("dane"),
    });
    // Refusals.
    let l = leaf("mx.eewrong.dane.test");
    v.push(Case {
        name: "eewrong",
        tlsa: vec![(3, 1, 1, vec![0xab; 32])],
        opts: MxOptions::with_cert(l),
        expect: Expect::Refused("no TLSA record matches", ResultType::ValidationFailure),
    });
    let l = with_root(leaf("not.the.mx.name"), priv_ca);
    v.push(Case {
        name: "taname",
        tlsa: vec![(2, 1, 1, sha256(&root_spki))],
        opts: MxOptions::with_cert(l),
        expect: Expect::Refused("not valid for name", ResultType::CertificateHostMismatch),
    });
    let l = with_root(
        priv_ca
            .intermediate(IntermediateOptions {
                expired: true,
                is_ca: true,
            })
            .leaf(&["mx.taexpint.dane.test"]),
        priv_ca,
    );
    v.push(Case {
        name: "taexpint",
        tlsa: vec![(2, 1, 1, sha256(&root_spki))],
        opts: MxOptions::with_cert(l),
        expect: Expect::Refused("xpired", ResultType::CertificateExpired),
    });
    let not_ca = priv_ca.intermediate(IntermediateOptions {
        expired: false,
        is_ca: false,
    });
    let l = with_root(not_ca.leaf(&["mx.tanotca.dane.test"]), priv_ca);
    v.push(Case {
        name: "tanotca",
        tlsa: vec![(2, 1, 1, sha256(&root_spki))],
        opts: MxOptions::with_cert(l),
        expect: Expect::Refused("DANE", ResultType::ValidationFailure),
    });
    let l = not_ca.leaf(&["mx.tanotca2.dane.test"]);
    v.push(Case {
        name: "tanotca2",
        tlsa: vec![(2, 0, 1, sha256(not_ca.der().as_ref()))],
        opts: MxOptions::with_cert(l),
        expect: Expect::Refused("not a CA certificate", ResultType::ValidationFailure),
    });
    // The right certificate, but the handshake is signed with another key.
    let real = leaf("mx.wrongkey.dane.test");
    let other = leaf("mx.wrongkey.dane.test");
    let mut opts = MxOptions::with_cert(real.clone());
    opts.sign_with_key_of = Some(other);
    v.push(Case {
        name: "wrongkey",
        tlsa: vec![(3, 1, 1, sha256(&real.spki_der))],
        opts,
        expect: Expect::Refused("TLS handshake failed", ResultType::CertificateNotTrusted),
    });
    // DANE-EE skips chain checks, not the key-strength rule.
    let l = priv_ca.leaf_with(
        &["mx.eersa1024.dane.test"],
        LeafOptions::default().key(support::pki::KeyKind::Rsa1024),
    );
    v.push(Case {
        name: "eersa1024",
        tlsa: vec![(3, 1, 1, sha256(&l.spki_der))],
        opts: MxOptions::with_cert(l),
        expect: Expect::Refused("RSA-1024", ResultType::ValidationFailure),
    });
    // Usages 0/1 only: no DANE, TLS still required, floor authentication.
    let l = c.public.leaf(&["mx.unusable.dane.test"]);
    v.push(Case {
        name: "unusable",
        tlsa: vec![(0, 1, 1, vec![1; 32]), (1, 0, 1, vec![2; 32])],
        opts: MxOptions::with_cert(l),
        expect: Expect::Delivered("verify"),
    });
    let l = priv_ca.leaf(&["mx.unusablebad.dane.test"]);
    v.push(Case {
        name: "unusablebad",
        tlsa: vec![(1, 1, 1, sha256(&l.spki_der))],
        opts: MxOptions::with_cert(l),
        expect: Expect::Refused("unknown issuer", ResultType::CertificateNotTrusted),
    });
    // Securely absent TLSA: the floor.
    let l = c.public.leaf(&["mx.notlsa.dane.test"]);
    v.push(Case {
        name: "notlsa",
        tlsa: vec![],
        opts: MxOptions::with_cert(l),
        expect: Expect::Delivered("verify"),
    });
    v
}

#[tokio::test]
async fn dane_verdicts_per_host() {
    let c = cas();
    let port = free_port();
    let cases = cases(&c);
    let mut builder = DnsWorld::builder().zone("dane.test", ZoneKind::Signed);
    let mut servers = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let domain = format!("{}.dane.test", case.name);
        let host = format!("mx.{domain}");
        let addr = format!("127.0.1.{}", 10 + i);
        builder = builder.mx(&domain, 10, &host).a(&host, &addr);
        for (u, s, m, data) in &case.tlsa {
            builder = builder.tlsa(port, &host, *u, *s, *m, data);
        }
        let mut opts = case.opts.clone();
        opts.hostname = host.clone();
        servers.push(
            MxServer::start_on(addr.parse::<IpAddr>().unwrap(), port, opts)
                .await
                .unwrap(),
        );
    }
    let world = builder.start().await;
    let relay = TestRelay::start(&world, &c.public_root, port, "retry_schedule = [\"1h\"]").await;
    let mut ids = Vec::new();
    for case in &cases {
        let body = format!("Subject: {}\r\n\r\nbody\r\n", case.name);
        ids.push(
            relay
                .submit(
                    "sender@org.test",
                    &[&format!("user@{}.dane.test", case.name)],
                    body.as_bytes(),
                )
                .await,
        );
    }
    let settled = |relay: &TestRelay| {
        ids.iter().all(|id| {
            relay
                .spool
                .load(id)
                .map(|e| e.attempts >= 1)
                .unwrap_or(true)
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !settled(&relay) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let outcomes = relay.outcomes();
    let mut failures = Vec::new();
    for ((case, server), id) in cases.iter().zip(&servers).zip(&ids) {
        let domain = format!("{}.dane.test", case.name);
        assert_eq!(
            server.stats().plaintext_transactions,
            0,
            "{}: plaintext",
            case.name
        );
        let outcome = outcomes.iter().find(|o| o.domain == domain);
        match &case.expect {
            Expect::Delivered(auth) => {
                if server.received().len() != 1 {
                    let reason = relay
                        .spool
                        .load(id)
                        .ok()
                        .and_then(|e| e.recipients[0].last_reason.clone());
                    failures.push(format!("{}: not delivered: {reason:?}", case.name));
                    continue;
                }
                let o = outcome.unwrap();
                if o.auth.as_deref() != Some(*auth) || !o.tls_ok {
                    failures.push(format!(
                        "{}: authenticated as {:?}, want {auth}",
                        case.name, o.auth
                    ));
                }
                let want_policy = if *auth == "dane" {
                    PolicyType::Tlsa
                } else {
                    PolicyType::NoPolicyFound
                };
                if o.policy != want_policy {
                    failures.push(format!("{}: policy {:?}", case.name, o.policy));
                }
            }
            Expect::Refused(words, result) => {
                if !server.received().is_empty() {
                    failures.push(format!("{}: delivered but should be refused", case.name));
                    continue;
                }
                let env = relay.spool.load(id).unwrap();
                let reason = env.recipients[0].last_reason.clone().unwrap_or_default();
                if env.recipients[0].state != RcptState::Queued || !reason.contains(words) {
                    failures.push(format!(
                        "{}: reason {reason:?} should contain {words:?}",
                        case.name
                    ));
                }
                match outcome {
                    Some(o) if o.result == Some(*result) => {}
                    other => failures.push(format!(
                        "{}: outcome {:?}, want {result:?}",
                        case.name,
                        other.map(|o| o.result)
                    )),
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A world whose host has a WebPKI-valid certificate, so only DNS doubt can stop delivery.
async fn doubtful(
    build: impl FnOnce(DnsWorldBuilder, u16) -> DnsWorldBuilder,
    host: &str,
    ip: &str,
) -> (Cas, MxServer, DnsWorld, u16) {
    let c = cas();
    let port = free_port();
    let server = MxServer::start_on(
        ip.parse().unwrap(),
        port,
        MxOptions::with_cert(c.public.leaf(&[host])),
    )
    .await
    .unwrap();
    let world = build(DnsWorld::builder(), port).start().await;
    (c, server, world, port)
}

async fn assert_deferred_never_delivered(
    c: &Cas,
    server: &MxServer,
    world: &DnsWorld,
    port: u16,
    rcpt: &str,
    words: &str,
    result: ResultType,
) {
    let relay = TestRelay::start(world, &c.public_root, port, "retry_schedule = [\"1h\"]").await;
    let id = relay
        .submit("sender@org.test", &[rcpt], b"Subject: doubt\r\n\r\nx\r\n")
        .await;
    assert!(
        relay
            .wait_queue(Duration::from_secs(15), |q| q
                .iter()
                .any(|e| e.attempts >= 1))
            .await
    );
    let env = relay.spool.load(&id).unwrap();
    let reason = env.recipients[0].last_reason.clone().unwrap_or_default();
    assert_eq!(env.recipients[0].state, RcptState::Queued);
    assert!(reason.contains(words), "{reason}");
    assert!(
        server.received().is_empty(),
        "never delivered under the WebPKI floor instead"
    );
    assert_eq!(
        server.stats().connections,
        0,
        "the host is not even contacted"
    );
    assert!(
        relay.outcomes().iter().any(|o| o.result == Some(result)),
        "{:?}",
        relay.outcomes()
    );
}

#[tokio::test]
async fn bogus_mx_is_deferred() {
    let (c, server, world, port) = doubtful(
        |b, _| {
            b.zone("bogus.test", ZoneKind::BadSignatures)
                .mx("bogus.test", 10, "mx.bogus.test")
                .a("mx.bogus.test", "127.0.2.10")
        },
        "mx.bogus.test",
        "127.0.2.10",
    )
    .await;
    assert_deferred_never_delivered(
        &c,
        &server,
        &world,
        port,
        "user@bogus.test",
        "DNSSEC validation",
        ResultType::DnssecInvalid,
    )
    .await;
}

#[tokio::test]
async fn expired_signatures_are_deferred() {
    let (c, server, world, port) = doubtful(
        |b, _| {
            b.zone("expired.test", ZoneKind::ExpiredSignatures)
                .mx("expired.test", 10, "mx.expired.test")
                .a("mx.expired.test", "127.0.2.11")
        },
        "mx.expired.test",
        "127.0.2.11",
    )
    .await;
    assert_deferred_never_delivered(
        &c,
        &server,
        &world,
        port,
        "user@expired.test",
        "DNSSEC validation",
        ResultType::DnssecInvalid,
    )
    .await;
}

#[tokio::test]
async fn bogus_tlsa_is_deferred() {
    // Only the TLSA RRset is bogus: it lives in its own badly signed zone below the host.
    let (c, server, world, port) = doubtful(
        |b, port| {
            b.zone("sec.test", ZoneKind::Signed)
                .mx("sec.test", 10, "mx.sec.test")
                .a("mx.sec.test", "127.0.2.12")
                .zone("_tcp.mx.sec.test", ZoneKind::BadSignatures)
                .tlsa(port, "mx.sec.test", 3, 1, 1, &[7; 32])
        },
        "mx.sec.test",
        "127.0.2.12",
    )
    .await;
    assert_deferred_never_delivered(
        &c,
        &server,
        &world,
        port,
        "user@sec.test",
        "TLSA",
        ResultType::DnssecInvalid,
    )
    .await;
}

#[tokio::test]
async fn servfail_on_tlsa_is_deferred() {
    let (c, server, world, port) = doubtful(
        |b, port| {
            b.zone("sf.test", ZoneKind::Signed)
                .mx("sf.test", 10, "mx.sf.test")
                .a("mx.sf.test", "127.0.2.13")
                .servfail(&format!("_{port}._tcp.mx.sf.test"), RecordType::TLSA)
        },
        "mx.sf.test",
        "127.0.2.13",
    )
    .await;
    assert_deferred_never_delivered(
        &c,
        &server,
        &world,
        port,
        "user@sf.test",
        "TLSA lookup failed",
        ResultType::TlsaInvalid,
    )
    .await;
}

#[tokio::test]
async fn unsigned_zone_uses_the_floor_even_with_tlsa_records() {
    let c = cas();
    let port = free_port();
    let good = MxServer::start_on(
        "127.0.2.14".parse().unwrap(),
        port,
        MxOptions::with_cert(c.public.leaf(&["mx.plain.test"])),
    )
    .await
    .unwrap();
    let world = DnsWorld::builder()
        .zone("plain.test", ZoneKind::Unsigned)
        .mx("plain.test", 10, "mx.plain.test")
        .a("mx.plain.test", "127.0.2.14")
        .tlsa(port, "mx.plain.test", 3, 1, 1, &[9; 32]) // would not match; unsigned, so ignored
        .start()
        .await;
    let relay = TestRelay::start(&world, &c.public_root, port, "").await;
    relay
        .submit(
            "sender@org.test",
            &["user@plain.test"],
            b"Subject: x\r\n\r\ny\r\n",
        )
        .await;
    assert!(good.wait_for_messages(1, Duration::from_secs(10)).await);
    let o = relay.outcomes();
    assert_eq!(o[0].auth.as_deref(), Some("verify"));
    assert_eq!(o[0].policy, PolicyType::NoPolicyFound);
}

#[tokio::test]
async fn cname_target_is_the_tlsa_base_domain() {
    // RFC 7672 §2.2.2: the MX host is a secure CNAME; TLSA is found at the target,
    // which is also the SNI and a name a DANE-TA certificate may carry.
    let c = cas();
    let port = free_port();
    let chain = with_root(c.private.leaf(&["real.cn.test"]), &c.private);
    let root_spki = webpki::EndEntityCert::try_from(&c.private.root_der())
        .unwrap()
        .subject_public_key_info()
        .as_ref()
        .to_vec();
    let server = MxServer::start_on(
        "127.0.2.20".parse().unwrap(),
        port,
        MxOptions::with_cert(chain),
    )
    .await
    .unwrap();
    let world = DnsWorld::builder()
        .zone("cn.test", ZoneKind::Signed)
        .mx("cn.test", 10, "mx.cn.test")
        .cname("mx.cn.test", "real.cn.test")
        .a("real.cn.test", "127.0.2.20")
        .tlsa(port, "real.cn.test", 2, 1, 1, &sha256(&root_spki))
        .start()
        .await;
    let relay = TestRelay::start(&world, &c.public_root, port, "").await;
    relay
        .submit(
            "sender@org.test",
            &["user@cn.test"],
            b"Subject: cname\r\n\r\nx\r\n",
        )
        .await;
    assert!(
        server.wait_for_messages(1, Duration::from_secs(10)).await,
        "{:?}",
        relay.queue()
    );
    let got = &server.received()[0];
    assert_eq!(
        got.tls.as_ref().unwrap().sni.as_deref(),
        Some("real.cn.test")
    );
    assert_eq!(relay.outcomes()[0].auth.as_deref(), Some("dane"));
}
