//! Local policy files decide for their domains: each level delivers or refuses as documented.

mod support;

use std::net::IpAddr;
use std::time::Duration;

use support::dns_world::{DnsWorld, ZoneKind};
use support::mx::{free_port, MxOptions, MxServer, TlsVersions};
use support::pki::{self, TestCa};
use support::relay::TestRelay;
use tlsrelay::reporting::outcome::ResultType;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

struct Case {
    domain: &'static str,
    policy: String,
    opts: MxOptions,
    /// None = delivered; Some(words) = refused with a reason containing the words.
    refused: Option<&'static str>,
}

#[tokio::test]
async fn each_level_delivers_or_refuses_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let public = TestCa::new("public CA");
    let partner = TestCa::new("partner private CA");
    let public_root = dir.path().join("public.pem");
    public.write_root_pem(&public_root);
    let partner_root = dir.path().join("partner.pem");
    partner.write_root_pem(&partner_root);
    let pinned = pki::self_signed(&["mx.pinned.test"]);
    let pinned_spki = pki::self_signed(&["mx.pinnedkey.test"]);
    let cases = vec![
        Case {
            domain: "enc.test",
            policy: "level = \"encrypt\"".into(),
            opts: MxOptions::with_cert(pki::self_signed(&["whatever"])),
            refused: None,
        },
        Case {
            domain: "encplain.test",
            policy: "level = \"encrypt\"".into(),
            opts: MxOptions::plaintext(),
            refused: Some("did not offer STARTTLS"),
        },
        Case {
            domain: "verify.test",
            policy: "level = \"verify\"".into(),
            opts: MxOptions::with_cert(public.leaf(&["mx.verify.test"])),
            refused: None,
        },
        Case {
            domain: "verifymatch.test",
            policy: "level = \"verify\"\nmatch = [\"relay.partner.example\"]".into(),
            opts: MxOptions::with_cert(public.leaf(&["mx.verifymatch.test"])),
            refused: Some("match none of the policy's names"),
        },
        Case {
            domain: "secure.test",
            policy: "level = \"secure\"".into(),
            opts: MxOptions::with_cert(public.leaf(&["mx.secure.test"])),
            refused: None,
        },
        Case {
            domain: "secureother.test",
            policy: "level = \"secure\"".into(),
            opts: MxOptions::with_cert(
                public
                    .leaf(&["mx.secureother.test", "mx.elsewhere.test"])
                    .clone(),
            ),
            refused: None,
        },
        Case {
            domain: "cafile.test",
            policy: format!(
                "level = \"secure\"\nca_file = \"{}\"",
                partner_root.display()
            ),
            opts: MxOptions::with_cert(partner.leaf(&["mx.cafile.test"])),
            refused: None,
        },
        Case {
            domain: "cafilewrong.test",
            policy: format!(
                "level = \"secure\"\nca_file = \"{}\"",
                partner_root.display()
            ),
            opts: MxOptions::with_cert(public.leaf(&["mx.cafilewrong.test"])),
            refused: Some("unknown issuer"),
        },
        Case {
            domain: "pinned.test",
            policy: format!(
                "level = \"fingerprint\"\nfingerprints = [\"cert-sha256:{}\"]",
                hex(
                    ring::digest::digest(&ring::digest::SHA256, pinned.leaf_der().as_ref())
                        .as_ref()
                )
            ),
            opts: MxOptions::with_cert(pinned.clone()),
            refused: None,
        },
        Case {
            domain: "pinnedkey.test",
            policy: format!(
                "level = \"fingerprint\"\nfingerprints = [\"spki-sha256:{}\"]",
                hex(ring::digest::digest(&ring::digest::SHA256, &pinned_spki.spki_der).as_ref())
            ),
            opts: MxOptions::with_cert(pinned_spki.clone()),
            refused: None,
        },
        Case {
            domain: "pinnedwrong.test",
            policy: format!(
                "level = \"fingerprint\"\nfingerprints = [\"cert-sha256:{}\"]",
                "ab".repeat(32)
            ),
            opts: MxOptions::with_cert(pki::self_signed(&["mx.pinnedwrong.test"])),
            refused: Some("pinned fingerprints"),
        },
        Case {
            domain: "daneonly.test",
            policy: "level = \"dane-only\"".into(),
            opts: MxOptions::with_cert(public.leaf(&["mx.daneonly.test"])),
            refused: Some("requires DANE"),
        },
        Case {
            domain: "tls13.test",
            policy: "level = \"verify\"\nmin_tls = \"1.3\"".into(),
            opts: MxOptions {
                tls_versions: TlsVersions::Tls12Only,
                ..MxOptions::with_cert(public.leaf(&["mx.tls13.test"]))
            },
            refused: Some("TLS handshake failed"),
        },
        Case {
            domain: "mxlist.test",
            policy: "level = \"verify\"\nmx = [\"*.allowed.test\"]".into(),
            opts: MxOptions::with_cert(public.leaf(&["mx.mxlist.test"])),
            refused: Some("not among the MX hosts allowed by the local policy"),
        },
    ];
    let port = free_port();
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    let mut text = String::new();
    let mut builder = DnsWorld::builder();
    let mut servers = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        text.push_str(&format!(
            "[[policy]]\ndomain = \"{}\"\n{}\n\n",
            c.domain, c.policy
        ));
        let host = format!("mx.{}", c.domain);
        let addr = format!("127.0.4.{}", 10 + i);
        builder = builder
            .zone(c.domain, ZoneKind::Unsigned)
            .mx(c.domain, 10, &host)
            .a(&host, &addr);
        let mut opts = c.opts.clone();
        opts.hostname = host;
        servers.push(MxServer::start_on(ip(&addr), port, opts).await.unwrap());
    }
    std::fs::write(policies.join("test.toml"), &text).unwrap();
    let world = builder.start().await;
    let relay = TestRelay::start(
        &world,
        &public_root,
        port,
        &format!(
            "retry_schedule = [\"1h\"]\n[policies]\ndir = \"{}\"",
            policies.display()
        ),
    )
    .await;
    let mut ids = Vec::new();
    for c in &cases {
        ids.push(
            relay
                .submit(
                    "sender@org.test",
                    &[&format!("user@{}", c.domain)],
                    b"Subject: p\r\n\r\nx\r\n",
                )
                .await,
        );
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline
        && !ids.iter().all(|id| {
            relay
                .spool
                .load(id)
                .map(|e| e.attempts >= 1)
                .unwrap_or(true)
        })
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut failures = Vec::new();
    for ((c, server), id) in cases.iter().zip(&servers).zip(&ids) {
        assert_eq!(server.stats().plaintext_transactions, 0, "{}", c.domain);
        let reason = relay
            .spool
            .load(id)
            .ok()
            .and_then(|e| e.recipients[0].last_reason.clone());
        match c.refused {
            None if server.received().len() != 1 => {
                failures.push(format!("{}: not delivered: {reason:?}", c.domain))
            }
            Some(words) if !server.received().is_empty() => failures.push(format!(
                "{}: delivered, should be refused ({words})",
                c.domain
            )),
            Some(words) if !reason.as_deref().unwrap_or("").contains(words) => {
                failures.push(format!("{}: reason {reason:?} lacks {words:?}", c.domain))
            }
            _ => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(relay
        .outcomes()
        .iter()
        .any(|o| o.domain == "daneonly.test" && o.result == Some(ResultType::DaneRequired)));
}
