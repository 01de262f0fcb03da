//! The readiness check before cutover: `tlsrelay check --from-postfix-log` on
//! a log written by a real Postfix (tests/fixtures/postfix-mail.log, made by
//! tests/fixtures/make-postfix-log.sh), against eight domains of the in-process
//! DNS world with eight different postures and real TLS test MX hosts.

mod support;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::dns_world::{DnsWorld, ZoneKind};
use support::https::{HttpsServer, Response};
use support::mx::{free_port, MxOptions, MxServer};
use support::pki::{self, LeafOptions, TestCa};
use support::relay::config_text;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn sha256(b: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, b)
        .as_ref()
        .to_vec()
}

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/postfix-mail.log")
}

/// Runs `tlsrelay --config FILE check ARGS` off the async runtime.
async fn check(config: &Path, args: &[&str]) -> (i32, String, String) {
    let config = config.to_path_buf();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_tlsrelay"))
            .arg("--config")
            .arg(&config)
            .arg("check")
            .args(&args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

/// The expected table: domain, messages in the fixture, mechanism, deliverable,
/// verdict kind, and a piece of the reason.
const EXPECTED: [(&str, u64, &str, bool, &str, &str); 8] = [
    (
        "dane.test",
        5,
        "dane",
        true,
        "probe-passed",
        "mx.dane.test: meets the dane requirement",
    ),
    (
        "sts.test",
        4,
        "mta-sts",
        true,
        "probe-passed",
        "mx.sts.test: meets the mta-sts requirement",
    ),
    (
        "floor.test",
        3,
        "verify",
        true,
        "probe-passed",
        "mx.floor.test: meets the verify requirement",
    ),
    (
        "danebad.test",
        2,
        "dane",
        false,
        "probe-failed",
        "mx.danebad.test: DANE not satisfied",
    ),
    (
        "expired.test",
        2,
        "verify",
        false,
        "probe-failed",
        "mx.expired.test: WebPKI not satisfied",
    ),
    ("bogus.test", 1, "", false, "deferred", "deferred"),
    (
        "nxdomain.test",
        1,
        "",
        false,
        "refused",
        "permanent failure",
    ),
    (
        "stsbad.test",
        1,
        "",
        false,
        "probe-failed",
        "mx.stsbad.test: not contacted: ",
    ),
];

#[tokio::test(flavor = "multi_thread")]
async fn readiness_table_from_a_real_postfix_log() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("readiness CA");
    let root = dir.path().join("ca.pem");
    ca.write_root_pem(&root);
    let port = free_port();
    let dane_cert = pki::self_signed(&["mx.dane.test"]);
    let stale_cert = pki::self_signed(&["mx.danebad.test"]);
    let served_cert = pki::self_signed(&["mx.danebad.test"]);
    let mut mx = vec![];
    for (addr, cert) in [
        ("127.0.15.10", dane_cert.clone()),
        ("127.0.15.11", ca.leaf(&["mx.sts.test"])),
        ("127.0.15.12", ca.leaf(&["mx.floor.test"])),
        (
            "127.0.15.13",
            ca.leaf_with(&["mx.expired.test"], LeafOptions::expired()),
        ),
        ("127.0.15.14", served_cert),
        ("127.0.15.15", ca.leaf(&["mx.stsbad.test"])),
    ] {
        mx.push(
            MxServer::start_on(ip(addr), port, MxOptions::with_cert(cert))
                .await
                .unwrap(),
        );
    }
    let policy = |mx: &str| {
        Response::policy(&format!(
            "version: STSv1\nmode: enforce\nmx: {mx}\nmax_age: 604800\n"
        ))
    };
    let _sts = HttpsServer::start(
        ip("127.0.15.30"),
        port,
        ca.leaf(&["mta-sts.sts.test"]),
        policy("mx.sts.test"),
    )
    .await;
    let _stsbad = HttpsServer::start(
        ip("127.0.15.31"),
        port,
        ca.leaf(&["mta-sts.stsbad.test"]),
        policy("mx.elsewhere.test"),
    )
    .await;
    let world = DnsWorld::builder()
        .zone("dane.test", ZoneKind::Signed)
        .mx("dane.test", 10, "mx.dane.test")
        .a("mx.dane.test", "127.0.15.10")
        .tlsa(port, "mx.dane.test", 3, 1, 1, &sha256(&dane_cert.spki_der))
        .zone("sts.test", ZoneKind::Unsigned)
        .mx("sts.test", 10, "mx.sts.test")
        .a("mx.sts.test", "127.0.15.11")
        .txt("_mta-sts.sts.test", &["v=STSv1; id=1"])
        .a("mta-sts.sts.test", "127.0.15.30")
        .zone("floor.test", ZoneKind::Unsigned)
        .mx("floor.test", 10, "mx.floor.test")
        .a("mx.floor.test", "127.0.15.12")
        .zone("expired.test", ZoneKind::Unsigned)
        .mx("expired.test", 10, "mx.expired.test")
        .a("mx.expired.test", "127.0.15.13")
        .zone("danebad.test", ZoneKind::Signed)
        .mx("danebad.test", 10, "mx.danebad.test")
        .a("mx.danebad.test", "127.0.15.14")
        .tlsa(
            port,
            "mx.danebad.test",
            3,
            1,
            1,
            &sha256(&stale_cert.spki_der),
        )
        .zone("stsbad.test", ZoneKind::Unsigned)
        .mx("stsbad.test", 10, "mx.stsbad.test")
        .a("mx.stsbad.test", "127.0.15.15")
        .txt("_mta-sts.stsbad.test", &["v=STSv1; id=1"])
        .a("mta-sts.stsbad.test", "127.0.15.31")
        .zone("bogus.test", ZoneKind::BadSignatures)
        .mx("bogus.test", 10, "mx.bogus.test")
        .a("mx.bogus.test", "127.0.15.16")
        .start()
        .await;
    let mut text = config_text(dir.path(), &world, &root, port, "");
    text.push_str(&format!(
        "[mta_sts]\nhttps_port = {port}\nextra_roots = [\"{}\"]\n",
        root.display()
    ));
    let config = dir.path().join("tlsrelay.toml");
    std::fs::write(&config, text).unwrap();
    let log = fixture();
    let log = log.to_str().unwrap();

    let (code, out, err) = check(&config, &["--from-postfix-log", log, "--parallel", "3"]).await;
    assert_eq!(code, 1, "some domains are not deliverable: {out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("DOMAIN")
            && lines[0].contains("MESSAGES  MECHANISM  DELIVERABLE  WHY"),
        "{out}"
    );
    for (i, (domain, n, mech, ok, _, why)) in EXPECTED.iter().enumerate() {
        let words: Vec<&str> = lines[i + 1].split_whitespace().collect();
        let mech = if mech.is_empty() { "-" } else { mech };
        let yes = if *ok { "yes" } else { "NO" };
        assert_eq!(
            words[..4],
            [*domain, &n.to_string(), mech, yes],
            "row {i}: {out}{err}"
        );
        assert!(lines[i + 1].contains(why), "row {i} wants {why:?}: {out}");
    }
    assert!(
        out.contains("8 domain(s): 3 deliverable, 5 not deliverable; 12 of 19 message(s) seen went to deliverable domains"),
        "{out}"
    );
    assert!(
        out.contains("deliverable by mechanism: dane 1, mta-sts 1, verify 1"),
        "{out}"
    );

    let (code, out, err) = check(&config, &["--from-postfix-log", log, "--json"]).await;
    assert_eq!(code, 1, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rows = v["domains"].as_array().unwrap();
    assert_eq!(rows.len(), 8, "{out}");
    for (row, (domain, n, mech, ok, kind, why)) in rows.iter().zip(EXPECTED) {
        assert_eq!(row["domain"], domain, "{out}");
        assert_eq!(row["messages"], n, "{out}");
        let want_mech = if mech.is_empty() {
            serde_json::Value::Null
        } else {
            mech.into()
        };
        assert_eq!(row["mechanism"], want_mech, "{domain}: {out}");
        assert_eq!(row["deliverable"], ok, "{domain}: {out}");
        assert_eq!(row["verdict_kind"], kind, "{domain}: {out}");
        assert!(
            row["why"].as_str().unwrap().contains(why),
            "{domain}: {out}"
        );
    }
    let s = &v["summary"];
    assert_eq!(
        (
            &s["domains"],
            &s["deliverable"],
            &s["messages"],
            &s["messages_deliverable"]
        ),
        (&8.into(), &3.into(), &19.into(), &12.into()),
        "{out}"
    );

    // A domains file: the same probes, counts as written, only the deliverable ones.
    let file = dir.path().join("domains.txt");
    std::fs::write(&file, "# partners\ndane.test 40\nSTS.test\nfloor.test 2\n").unwrap();
    let (code, out, err) = check(&config, &["--domains-file", file.to_str().unwrap()]).await;
    assert_eq!(code, 0, "all deliverable: {out}{err}");
    assert!(
        out.contains("3 domain(s): 3 deliverable, 0 not deliverable; 42 of 42"),
        "{out}"
    );
    let sts_row = out.lines().find(|l| l.starts_with("sts.test")).unwrap();
    assert_eq!(sts_row.split_whitespace().nth(1), Some("-"), "{out}");

    std::fs::write(&file, "dane.test\nnot a domain\n").unwrap();
    let (code, _, err) = check(&config, &["--domains-file", file.to_str().unwrap()]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("domains.txt: line 2"), "{err}");
    drop(mx);
}

#[test]
fn check_wants_one_source() {
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_tlsrelay"))
            .arg("check")
            .args(args)
            .output()
            .unwrap()
    };
    let both = run(&["example.com", "--domains-file", "x"]);
    assert_eq!(both.status.code(), Some(2));
    let none = run(&[]);
    assert_eq!(none.status.code(), Some(2));
    let zero = run(&["--domains-file", "x", "--parallel", "0"]);
    assert_eq!(zero.status.code(), Some(2));
    let empty = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(empty.path(), "Dec  2 05:00:00 h sshd[1]: hello\n").unwrap();
    let out = run(&["--from-postfix-log", empty.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no Postfix smtp/lmtp delivery lines"), "{err}");
}
