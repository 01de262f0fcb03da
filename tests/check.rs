//! `tlsrelay check DOMAIN` on the in-process test world: the verdicts it prints
//! are the ones delivery would reach.

mod support;

use std::net::IpAddr;
use std::process::Command;

use support::dns_world::{DnsWorld, ZoneKind};
use support::https::{HttpsServer, Response};
use support::mx::{free_port, MxOptions, MxServer};
use support::pki::{self, TestCa};
use support::relay::config_text;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn sha256(b: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, b)
        .as_ref()
        .to_vec()
}

/// Runs the real binary: `tlsrelay --config FILE check DOMAIN [args]`.
fn check(config: &std::path::Path, domain: &str, extra: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tlsrelay"))
        .arg("--config")
        .arg(config)
        .arg("check")
        .arg(domain)
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn check_explains_each_domain() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("check CA");
    let root = dir.path().join("ca.pem");
    ca.write_root_pem(&root);
    let port = free_port();
    let dane_cert = pki::self_signed(&["mx.dane.test"]);
    let _dane_mx = MxServer::start_on(
        ip("127.0.5.10"),
        port,
        MxOptions::with_cert(dane_cert.clone()),
    )
    .await
    .unwrap();
    let _sts_mx = MxServer::start_on(
        ip("127.0.5.11"),
        port,
        MxOptions::with_cert(ca.leaf(&["mx.sts.test"])),
    )
    .await
    .unwrap();
    let _plain_mx = MxServer::start_on(ip("127.0.5.12"), port, MxOptions::plaintext())
        .await
        .unwrap();
    let _https = HttpsServer::start(
        ip("127.0.5.30"),
        port,
        ca.leaf(&["mta-sts.sts.test"]),
        Response::policy("version: STSv1\nmode: enforce\nmx: mx.sts.test\nmax_age: 604800\n"),
    )
    .await;
    let world = DnsWorld::builder()
        .zone("dane.test", ZoneKind::Signed)
        .mx("dane.test", 10, "mx.dane.test")
        .a("mx.dane.test", "127.0.5.10")
        .tlsa(port, "mx.dane.test", 3, 1, 1, &sha256(&dane_cert.spki_der))
        .txt(
            "_smtp._tls.dane.test",
            &["v=TLSRPTv1; rua=mailto:tls@dane.test"],
        )
        .zone("sts.test", ZoneKind::Unsigned)
        .mx("sts.test", 10, "mx.sts.test")
        .mx("sts.test", 20, "rogue.sts.test")
        .a("mx.sts.test", "127.0.5.11")
        .a("rogue.sts.test", "127.0.5.11")
        .txt("_mta-sts.sts.test", &["v=STSv1; id=20261128"])
        .a("mta-sts.sts.test", "127.0.5.30")
        .zone("plain.test", ZoneKind::Unsigned)
        .mx("plain.test", 10, "mx.plain.test")
        .a("mx.plain.test", "127.0.5.12")
        .zone("nullmx.test", ZoneKind::Signed)
        .null_mx("nullmx.test")
        .start()
        .await;
    let mut text = config_text(dir.path(), &world, &root, port, "");
    text.push_str(&format!(
        "[mta_sts]\nhttps_port = {port}\nextra_roots = [\"{}\"]\n",
        root.display()
    ));
    let config = dir.path().join("tlsrelay.toml");
    std::fs::write(&config, text).unwrap();

    let (code, out) = tokio::task::spawn_blocking({
        let c = config.clone();
        move || check(&c, "dane.test", &["--probe"])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1 MX host(s), DNSSEC secure"), "{out}");
    assert!(
        out.contains("DNSSEC:        ok: the root DNSKEY validates"),
        "{out}"
    );
    assert!(out.contains("3 1 1"), "{out}");
    assert!(out.contains("(usable)"), "{out}");
    assert!(
        out.contains("dane: TLS authenticated by 1 usable TLSA record(s)"),
        "{out}"
    );
    assert!(out.contains("DANE:      satisfied"), "{out}");
    assert!(
        out.contains("floor:     not satisfied"),
        "the self-signed cert fails the floor: {out}"
    );
    assert!(out.contains("meets the requirement"), "{out}");
    assert!(
        out.contains("TLS-RPT:       v=TLSRPTv1; rua=mailto:tls@dane.test"),
        "{out}"
    );
    assert!(out.contains(" expires 20"), "certificate expiry: {out}");
    for debug in ["UnknownIssuer", "Other(", "OtherError", "Some(", " { "] {
        assert!(!out.contains(debug), "Rust debug text {debug:?} in: {out}");
    }

    let (code, out) = tokio::task::spawn_blocking({
        let c = config.clone();
        move || check(&c, "dane.test", &["--probe", "--json"])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["verdict_kind"], "probe-passed", "{out}");
    let host = &v["hosts"][0];
    assert_eq!(host["mechanism"], "dane", "{out}");
    let tlsa = &host["tlsa_records"][0];
    assert_eq!(
        (
            tlsa["usage"].as_u64(),
            tlsa["selector"].as_u64(),
            tlsa["matching"].as_u64()
        ),
        (Some(3), Some(1), Some(1)),
        "{out}"
    );
    assert_eq!(
        tlsa["data"].as_str().map(str::len),
        Some(64),
        "the full SHA-256: {out}"
    );
    assert_eq!(tlsa["usable"], true);
    let cert = &host["probe"]["certificates"][0];
    assert!(
        cert["not_after"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{out}"
    );
    assert!(cert["days_left"].as_i64().is_some_and(|d| d > 0), "{out}");
    assert_eq!(cert["sha256"].as_str().map(str::len), Some(64), "{out}");

    let (code, out) = tokio::task::spawn_blocking({
        let c = config.clone();
        move || check(&c, "sts.test", &["--json"])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["mta_sts_policy"]["mode"], "enforce");
    assert_eq!(
        v["mta_sts_policy"]["mx"],
        serde_json::json!(["mx.sts.test"])
    );
    assert_eq!(v["mta_sts_record"], "20261128");
    assert_eq!(v["verdict_kind"], "policy-allows", "{out}");
    assert!(
        v["verdict"].as_str().unwrap().contains("hosts not probed"),
        "without --probe the verdict says what it cannot know: {out}"
    );
    let hosts = v["hosts"].as_array().unwrap();
    assert!(
        hosts[0]["requirement"]
            .as_str()
            .unwrap()
            .starts_with("mta-sts: TLS with a certificate WebPKI-valid for mx.sts.test"),
        "{out}"
    );
    assert_eq!(hosts[1]["usable"], false);
    assert!(
        hosts[1]["requirement"]
            .as_str()
            .unwrap()
            .contains("not among the MX hosts allowed by the MTA-STS policy"),
        "{out}"
    );

    let (code, out) = tokio::task::spawn_blocking({
        let c = config.clone();
        move || check(&c, "plain.test", &["--probe"])
    })
    .await
    .unwrap();
    assert_eq!(code, 1, "no STARTTLS: cannot deliver: {out}");
    assert!(out.contains("did not offer STARTTLS"), "{out}");
    assert!(
        out.contains("tlsrelay cannot deliver to plain.test"),
        "{out}"
    );

    let (code, out) = tokio::task::spawn_blocking(move || check(&config, "nullmx.test", &[]))
        .await
        .unwrap();
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("5.1.10"), "{out}");
}

#[test]
fn import_postfix_lists_what_it_cannot_carry_over() {
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("tls_policy");
    std::fs::write(
        &table,
        "# partners\nexample.com  secure match=nexthop:dot-nexthop\n.example.net dane-only\nlegacy.example may\n[mx.route.example]:587 encrypt\nbank.example verify protocols=>=TLSv1.3\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tlsrelay"))
        .args(["policy", "import-postfix"])
        .arg(&table)
        .output()
        .unwrap();
    assert!(out.status.success());
    let toml = String::from_utf8_lossy(&out.stdout);
    let skipped = String::from_utf8_lossy(&out.stderr);
    assert!(toml.contains("domain = \"example.com\""), "{toml}");
    assert!(toml.contains("domain = \".example.net\""), "{toml}");
    assert!(toml.contains("min_tls = \"1.3\""), "{toml}");
    assert!(
        skipped.contains(":4: not carried over: legacy.example may"),
        "{skipped}"
    );
    assert!(skipped.contains(":5: not carried over"), "{skipped}");
    // What it produced loads as a policy directory.
    let pdir = dir.path().join("p");
    std::fs::create_dir(&pdir).unwrap();
    std::fs::write(pdir.join("imported.toml"), toml.as_bytes()).unwrap();
    assert!(tlsrelay::policy::local::PolicySet::load_dir(&pdir).is_ok());
}
