//! Delivery receipts and the posture report over real deliveries: a DANE
//! domain, an MTA-STS domain, a floor (WebPKI) domain, a domain with a local
//! SPKI pin, and one that refuses;
//! `tlsrelay audit find|verify` and `tlsrelay posture` run as the real binary.

mod support;

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::dns_world::{DnsWorld, ZoneKind};
use support::https::{HttpsServer, Response};
use support::mx::{free_port, MxOptions, MxServer};
use support::pki::{self, TrustedCa};
use support::relay::TestRelay;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn sha256_hex(b: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, b);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs `tlsrelay -c config ARGS`: exit status and stdout.
fn tlsrelay(config: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tlsrelay"))
        .arg("-c")
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.code().is_some(), "killed: {stderr}");
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap() + &stderr,
    )
}

/// The receipts of `message_id`, found by the binary.
fn find(config: &Path, message_id: &str) -> Vec<Value> {
    let (code, out) = tlsrelay(
        config,
        &["audit", "find", "--message-id", message_id, "--json"],
    );
    assert_eq!(code, 0, "{out}");
    serde_json::from_str::<Vec<Value>>(&out).unwrap()
}

/// The value a page's `data-n` path names in the posture JSON.
fn lookup(json: &Value, path: &str) -> Value {
    if path == "early_warnings.count" {
        return json["early_warnings"].as_array().unwrap().len().into();
    }
    let (scope, rest) = if let Some(rest) = path.strip_prefix("totals.") {
        (&json["totals"], rest)
    } else if let Some(rest) = path.strip_prefix("domains.") {
        let d = (json["domains"].as_array().unwrap().iter())
            .find(|d| rest.starts_with(&format!("{}.", d["domain"].as_str().unwrap())))
            .unwrap_or_else(|| panic!("no domain for {path}"));
        (d, &rest[d["domain"].as_str().unwrap().len() + 1..])
    } else {
        (json, path)
    };
    if let Some(m) = rest.strip_prefix("mechanisms.") {
        let (name, field) = m.split_once('.').unwrap();
        let share = (scope["mechanisms"].as_array().unwrap().iter())
            .find(|s| s["mechanism"] == name)
            .unwrap();
        return share[field].clone();
    }
    for map in ["tls_versions.", "refusals."] {
        if let Some(key) = rest.strip_prefix(map) {
            return scope[map.trim_end_matches('.')][key].clone();
        }
    }
    scope[rest].clone()
}

/// Every `data-n` number of a page equals the JSON's; returns how many were compared.
fn page_matches_json(html: &str, json: &Value) -> usize {
    let mut n = 0;
    for rest in html.split("data-n=\"").skip(1) {
        let (path, after) = rest.split_once('"').unwrap();
        let shown = after.split_once('>').unwrap().1.split('<').next().unwrap();
        let want = lookup(json, path);
        let want = want
            .as_f64()
            .unwrap_or_else(|| panic!("{path}: {want:?} is no number"));
        assert_eq!(shown.parse::<f64>().unwrap(), want, "{path}");
        n += 1;
    }
    n
}

/// GET `path` over plain HTTP/1.1; the body.
async fn http_get(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    text.split_once("\r\n\r\n").unwrap().1.to_string()
}

struct World {
    _servers: Vec<MxServer>,
    _https: HttpsServer,
    dns: DnsWorld,
    ca: TrustedCa,
    port: u16,
    spki: [String; 4],
}

/// dane.test (TLSA 3 1 1), sts.test (MTA-STS enforce), floor.test (WebPKI),
/// pinned.test (a local `fingerprint` policy), bad.test (a certificate for another name).
async fn world() -> World {
    let ca = TrustedCa::new("receipts CA");
    let port = free_port();
    let dane_cert = pki::self_signed(&["mx.dane.test"]);
    let sts_cert = ca.ca.leaf(&["mx.sts.test"]);
    let floor_cert = ca.ca.leaf(&["mx.floor.test"]);
    let pinned_cert = pki::self_signed(&["mx.pinned.test"]);
    let spki = [&dane_cert, &sts_cert, &floor_cert, &pinned_cert].map(|c| sha256_hex(&c.spki_der));
    let mut servers = Vec::new();
    for (addr, cert) in [
        ("127.0.15.10", dane_cert.clone()),
        ("127.0.15.11", sts_cert),
        ("127.0.15.12", floor_cert),
        ("127.0.15.13", ca.ca.leaf(&["wrong.name.test"])),
        ("127.0.15.14", pinned_cert),
    ] {
        let mx = MxServer::start_on(ip(addr), port, MxOptions::with_cert(cert));
        servers.push(mx.await.unwrap());
    }
    let policy = "version: STSv1\r\nmode: enforce\r\nmx: mx.sts.test\r\nmax_age: 86400\r\n";
    let https = HttpsServer::start(
        ip("127.0.15.30"),
        port,
        ca.ca.leaf(&["mta-sts.sts.test"]),
        Response::policy(policy),
    )
    .await;
    let spki_der = ring::digest::digest(&ring::digest::SHA256, &dane_cert.spki_der);
    let dns = DnsWorld::builder()
        .zone("dane.test", ZoneKind::Signed)
        .mx("dane.test", 10, "mx.dane.test")
        .a("mx.dane.test", "127.0.15.10")
        .tlsa(port, "mx.dane.test", 3, 1, 1, spki_der.as_ref())
        .zone("sts.test", ZoneKind::Unsigned)
        .mx("sts.test", 10, "mx.sts.test")
        .a("mx.sts.test", "127.0.15.11")
        .txt("_mta-sts.sts.test", &["v=STSv1; id=20261202T1"])
        .a("mta-sts.sts.test", "127.0.15.30")
        .zone("floor.test", ZoneKind::Unsigned)
        .mx("floor.test", 10, "mx.floor.test")
        .a("mx.floor.test", "127.0.15.12")
        .zone("bad.test", ZoneKind::Unsigned)
        .mx("bad.test", 10, "mx.bad.test")
        .a("mx.bad.test", "127.0.15.13")
        .zone("pinned.test", ZoneKind::Unsigned)
        .mx("pinned.test", 10, "mx.pinned.test")
        .a("mx.pinned.test", "127.0.15.14")
        .zone("org.test", ZoneKind::Unsigned)
        .start()
        .await;
    World {
        _servers: servers,
        _https: https,
        dns,
        ca,
        port,
        spki,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn receipts_are_found_verified_and_tampering_is_named() {
    let w = world().await;
    let metrics_port = free_port();
    let policies = tempfile::tempdir().unwrap();
    let pin_file = policies.path().join("pin.toml");
    std::fs::write(
        &pin_file,
        format!(
            "[[policy]]\ndomain = \"pinned.test\"\nlevel = \"fingerprint\"\nfingerprints = [\"spki-sha256:{}\"]\n",
            w.spki[3]
        ),
    )
    .unwrap();
    let extra = format!(
        "retry_schedule = [\"1h\"]\n[mta_sts]\nhttps_port = {}\nextra_roots = [\"{}\"]\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\nposture = true\n[policies]\ndir = \"{}\"\n",
        w.port,
        w.ca.root.display(),
        policies.path().display()
    );
    let relay = TestRelay::start(&w.dns, &w.ca.root, w.port, &extra).await;
    let config = relay.dir.path().join("tlsrelay.toml");
    std::fs::write(&config, relay.config_text()).unwrap();
    let msg = |id: &str| format!("Message-ID: <{id}>\r\nSubject: r\r\n\r\nbody\r\n");
    relay
        .submit(
            "s@org.test",
            &["a@dane.test", "b@dane.test"],
            msg("m1@org.test").as_bytes(),
        )
        .await;
    relay
        .submit("s@org.test", &["c@sts.test"], msg("m2@org.test").as_bytes())
        .await;
    relay
        .submit(
            "s@org.test",
            &["d@floor.test", "e@bad.test"],
            msg("m3@org.test").as_bytes(),
        )
        .await;
    relay
        .submit(
            "s@org.test",
            &["f@pinned.test"],
            msg("m4@org.test").as_bytes(),
        )
        .await;
    let settled = |q: &[tlsrelay::spool::Envelope]| q.len() == 1 && q[0].attempts >= 1;
    assert!(relay.wait_queue(Duration::from_secs(30), settled).await);

    // Each receipt, by Message-ID, with its mechanism, key and policy.
    let m1 = find(&config, "m1@org.test");
    assert_eq!(m1.len(), 2, "{m1:?}");
    for r in &m1 {
        assert_eq!(r["mechanism"], "dane");
        assert_eq!(r["spki_sha256"], w.spki[0]);
        assert_eq!(r["mx_host"], "mx.dane.test");
        assert_eq!(r["addr"], "127.0.15.10");
        assert_eq!(r["policy"]["type"], "tlsa");
        let tlsa = r["policy"]["tlsa"][0].as_str().unwrap();
        assert!(tlsa.starts_with("3 1 1 "), "{tlsa}");
        assert!(r["tls_version"].as_str().unwrap().starts_with("TLSv1."));
        assert!(!r["cipher"].as_str().unwrap().is_empty());
        assert!(!r["kx_group"].as_str().unwrap().is_empty(), "{r}");
        assert_eq!(r["sender"], "s@org.test");
    }
    let m2 = find(&config, "<m2@org.test>");
    assert_eq!(m2.len(), 1);
    assert_eq!(m2[0]["mechanism"], "mta-sts");
    assert_eq!(m2[0]["spki_sha256"], w.spki[1]);
    assert_eq!(m2[0]["policy"]["type"], "sts");
    assert_eq!(m2[0]["policy"]["sts_id"], "20261202T1");
    let m3 = find(&config, "m3@org.test");
    assert_eq!(m3.len(), 1, "bad.test is refused: no receipt");
    assert_eq!(m3[0]["recipient"], "d@floor.test");
    assert_eq!(m3[0]["mechanism"], "verify");
    assert_eq!(m3[0]["spki_sha256"], w.spki[2]);
    assert_eq!(m3[0]["policy"]["type"], "no-policy-found");
    let m4 = find(&config, "m4@org.test");
    assert_eq!(m4.len(), 1);
    assert_eq!(m4[0]["mechanism"], "local");
    assert_eq!(m4[0]["spki_sha256"], w.spki[3]);
    let source = m4[0]["policy"]["local"].as_str().unwrap();
    assert!(
        source.starts_with(&format!("{}:", pin_file.display())),
        "{source}"
    );
    // By recipient, in text.
    let (code, out) = tlsrelay(&config, &["audit", "find", "--recipient", "C@STS.test"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("mechanism    mta-sts"), "{out}");
    assert!(out.contains("MTA-STS id 20261202T1"), "{out}");
    let (code, out) = tlsrelay(&config, &["audit", "find", "--recipient", "d@floor.test"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("policy       no-policy-found\n"), "{out}");
    let (code, out) = tlsrelay(&config, &["audit", "find", "--recipient", "e@bad.test"]);
    assert_eq!((code, out.trim()), (1, "no receipt found"));

    let (code, out) = tlsrelay(&config, &["audit", "verify"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("5 intact record(s)"), "{out}");
    assert!(out.contains("chain:      intact"), "{out}");

    posture_matches(&config, metrics_port).await;
    tampering_is_named(&relay.spool_dir(), relay.config_text());
}

/// `posture --json`, `--html` and `/posture` agree, with the deliveries above.
async fn posture_matches(config: &Path, metrics_port: u16) {
    let (code, out) = tlsrelay(config, &["posture", "--json"]);
    assert_eq!(code, 0, "{out}");
    let json: Value = serde_json::from_str(&out).unwrap();
    let t = &json["totals"];
    assert_eq!(
        (t["messages"].as_u64(), t["recipients"].as_u64()),
        (Some(4), Some(5))
    );
    // The pinned domain's message went by a local policy: not in the headline.
    assert_eq!(t["authenticated_messages"], 3);
    assert_eq!(t["authenticated_percent"], 75.0);
    let shares: Vec<(String, u64)> = (t["mechanisms"].as_array().unwrap().iter())
        .map(|s| {
            (
                s["mechanism"].as_str().unwrap().into(),
                s["recipients"].as_u64().unwrap(),
            )
        })
        .collect();
    let want = [
        ("dane", 2),
        ("mta-sts", 1),
        ("local", 1),
        ("verify", 1),
        ("encrypt", 0),
    ];
    assert_eq!(shares, want.map(|(m, n)| (m.to_string(), n)));
    assert_eq!(t["mechanisms"][0]["percent"], 40.0);
    assert_eq!(t["mechanisms"][2]["percent"], 20.0);
    let domains: Vec<&str> = (json["domains"].as_array().unwrap().iter())
        .map(|d| d["domain"].as_str().unwrap())
        .collect();
    assert_eq!(
        domains,
        [
            "dane.test",
            "floor.test",
            "pinned.test",
            "sts.test",
            "bad.test"
        ]
    );
    let bad = &json["domains"][4];
    assert_eq!(bad["messages"], 0);
    assert!(
        bad["refusals"]["certificate-host-mismatch"]
            .as_u64()
            .unwrap()
            >= 1,
        "{bad}"
    );
    assert_eq!(json["early_warnings"], serde_json::json!([]));
    let (code, text) = tlsrelay(config, &["posture", "--days", "7"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("(7 days)"), "{text}");
    assert!(
        text.contains("75.0 % of messages authenticated by DANE or MTA-STS or WebPKI (3 of 4 messages, 5 recipients)"),
        "{text}"
    );
    let row = text.lines().find(|l| l.starts_with("bad.test")).unwrap();
    assert!(row.contains("certificate-host-mismatch"), "{row}");
    // --live: each domain's state now, as `check` sees it.
    let (code, out) = tlsrelay(config, &["posture", "--json", "--live"]);
    assert_eq!(code, 0, "{out}");
    let live: Value = serde_json::from_str(&out).unwrap();
    let state = |d: &str| {
        let row = (live["domains"].as_array().unwrap().iter()).find(|r| r["domain"] == d);
        row.unwrap()["state"].clone()
    };
    assert_eq!(state("dane.test")["dane_hosts"], 1, "{out}");
    assert_eq!(state("dane.test")["mx_dnssec"], "secure", "{out}");
    assert_eq!(state("sts.test")["mta_sts"], "enforce", "{out}");
    assert_eq!(state("floor.test")["dane_hosts"], 0, "{out}");
    assert_eq!(state("floor.test")["verdict"], "policy-allows", "{out}");
    assert_eq!(live["totals"], json["totals"]);

    let dir = tempfile::tempdir().unwrap();
    let html_path = dir.path().join("posture.html");
    let (code, out) = tlsrelay(config, &["posture", "--html", html_path.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    let html = std::fs::read_to_string(&html_path).unwrap();
    assert!(page_matches_json(&html, &json) > 30);
    assert!(html.contains("75.0</span> %</strong> of messages authenticated"));
    let served = http_get(&format!("127.0.0.1:{metrics_port}"), "/posture").await;
    assert_eq!(
        page_matches_json(&served, &json),
        page_matches_json(&html, &json)
    );
    // For tests/interop/posture.sh: the page and its JSON, for Chromium.
    if let Some(out) = std::env::var_os("TLSRELAY_POSTURE_OUT") {
        let out = Path::new(&out);
        std::fs::write(out.join("posture.html"), &html).unwrap();
        std::fs::write(
            out.join("posture.json"),
            serde_json::to_string(&json).unwrap(),
        )
        .unwrap();
    }
}

/// An edited record, a deleted line and a torn last line, each on a copy of the receipts.
fn tampering_is_named(spool: &Path, config_text: &str) {
    let files = tlsrelay::reporting::receipts::read_files(&spool.join("receipts")).unwrap();
    // The places of the 2nd and 3rd records of the chain (a day may end between them).
    let places: Vec<(String, usize)> = (files.iter())
        .flat_map(|(name, text)| (1..=text.lines().count()).map(move |l| (name.clone(), l)))
        .collect();
    assert_eq!(places.len(), 5);
    let last = places.len() - 1;
    type Edit = fn(&str) -> String;
    let cases: [(&str, Edit, i32, String); 3] = [
        (
            "edit",
            |l| l.replacen("@org.test", "@evil.test", 1),
            1,
            format!("{}:{}: the record was altered", places[1].0, places[1].1),
        ),
        ("delete", |_| String::new(), 1, {
            let (f, l) = &places[2];
            let l = if *f == places[1].0 { l - 1 } else { *l };
            format!("{f}:{l}: the record does not chain to the one before it")
        }),
        (
            "tear the last",
            |l| l[..l.len() / 2].to_string(),
            0,
            format!("torn:       {}:{}", places[last].0, places[last].1),
        ),
    ];
    for (name, edit, want_code, want) in cases {
        let copy = tempfile::tempdir().unwrap();
        let receipts = copy.path().join("spool/receipts");
        std::fs::create_dir_all(&receipts).unwrap();
        let target = if name == "tear the last" { last } else { 1 };
        for (file, text) in &files {
            let mut out = String::new();
            for (i, line) in text.lines().enumerate() {
                let here = (file.clone(), i + 1);
                let changed = if here == places[target] {
                    edit(line)
                } else {
                    line.to_string()
                };
                if !changed.is_empty() {
                    out.push_str(&changed);
                    if here != places[last] || name != "tear the last" {
                        out.push('\n');
                    }
                }
            }
            std::fs::write(receipts.join(file), out).unwrap();
        }
        let text = config_text.replace(
            &spool.display().to_string(),
            &copy.path().join("spool").display().to_string(),
        );
        let config = copy.path().join("tlsrelay.toml");
        std::fs::write(&config, text).unwrap();
        let (code, out) = tlsrelay(&config, &["audit", "verify"]);
        assert_eq!(code, want_code, "{name}: {out}");
        assert!(out.contains(&want), "{name}: want {want:?} in\n{out}");
    }
}
