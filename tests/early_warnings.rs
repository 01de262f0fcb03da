//! Early warnings in a running relay (the real binary): after mail to five
//! domains, the periodic probe (a 2s interval here) warns about the MX whose
//! certificate expires in 5 days and the MX whose TLSA record no longer matches
//! its certificate (and about an MTA-STS policy that does not list the MX, and a
//! TLSA lookup that is DNSSEC-bogus), in the log, in `/metrics` and in
//! `SPOOL/warnings.json`; the healthy DANE domain gets no warning.
//! `tlsrelay check --warnings` finds the same.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use support::child::start_relay_logging;
use support::client::Client;
use support::dns_world::{DnsWorld, ZoneKind};
use support::https::{HttpsServer, Response};
use support::mx::{free_port, MxOptions, MxServer};
use support::pki::{self, LeafOptions, TestCa};
use tlsrelay::model::metric as m;
use tlsrelay::reporting::early_warning::{load_latest, WarningKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn sha256(b: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, b)
        .as_ref()
        .to_vec()
}

async fn metrics_text(port: u16) -> String {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// The value of one series (name with labels, exactly as rendered).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn submit(addr: SocketAddr, rcpt: &str) {
    let (mut c, _) = Client::connect(addr).await;
    c.cmd("EHLO client.test").await;
    assert_eq!(c.cmd("MAIL FROM:<sender@org.test>").await.code, 250);
    assert_eq!(c.cmd(&format!("RCPT TO:<{rcpt}>")).await.code, 250);
    assert_eq!(c.cmd("DATA").await.code, 354);
    c.send(b"Subject: early warnings\r\n\r\nx\r\n").await;
    assert_eq!(c.cmd(".").await.code, 250);
    c.cmd("QUIT").await;
}

/// The `msg="early warning"` line naming `domain` and `kind`, if logged yet.
fn warning_line(log: &str, domain: &str, kind: &str) -> Option<String> {
    log.lines()
        .find(|l| {
            l.contains("msg=\"early warning\"")
                && l.contains(&format!("domain={domain} "))
                && l.contains(&format!("kind={kind} "))
        })
        .map(str::to_string)
}

fn write_config(
    dir: &Path,
    world: &DnsWorld,
    root: &Path,
    ports: (u16, u16, u16),
) -> std::path::PathBuf {
    let (smtp, metrics, mx) = ports;
    let text = format!(
        r#"[server]
listen = ["127.0.0.1:{smtp}"]
hostname = "relay.test"
[spool]
dir = "{spool}"
[delivery]
port = {mx}
extra_roots = ["{ca}"]
allow_loopback_destinations = true
queue_scan_interval = "1s"
retry_schedule = ["1h"]
connect_timeout = "3s"
command_timeout = "5s"
[dns]
nameservers = ["{dns}"]
trust_anchor_file = "{anchor}"
timeout = "2s"
attempts = 1
[mta_sts]
https_port = {mx}
extra_roots = ["{ca}"]
[metrics]
listen = "127.0.0.1:{metrics}"
[warnings]
interval = "2s"
top_domains = 10
cert_expiry_days = 14
"#,
        spool = dir.join("spool").display(),
        ca = root.display(),
        dns = world.addr(),
        anchor = world.anchor_path().display(),
    );
    let path = dir.join("tlsrelay.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn expiring_certificate_and_stale_tlsa_are_warned() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("early warnings CA");
    let root = dir.path().join("ca.pem");
    ca.write_root_pem(&root);
    let port = free_port();
    let soon = LeafOptions {
        not_after: SystemTime::now() + Duration::from_secs(5 * 86400),
        ..Default::default()
    };
    let fine_cert = pki::self_signed(&["mx.fine.test"]);
    let old_cert = pki::self_signed(&["mx.stale.test"]);
    let new_cert = pki::self_signed(&["mx.stale.test"]);
    let _soon_mx = MxServer::start_on(
        ip("127.0.16.10"),
        port,
        MxOptions::with_cert(ca.leaf_with(&["mx.soon.test"], soon)),
    )
    .await
    .unwrap();
    let _stale_mx = MxServer::start_on(ip("127.0.16.11"), port, MxOptions::with_cert(new_cert))
        .await
        .unwrap();
    let _fine_mx = MxServer::start_on(
        ip("127.0.16.12"),
        port,
        MxOptions::with_cert(fine_cert.clone()),
    )
    .await
    .unwrap();
    let _https = HttpsServer::start(
        ip("127.0.16.30"),
        port,
        ca.leaf(&["mta-sts.unlisted.test"]),
        Response::policy("version: STSv1\nmode: enforce\nmx: mx.elsewhere.test\nmax_age: 604800\n"),
    )
    .await;
    let world = DnsWorld::builder()
        .zone("soon.test", ZoneKind::Unsigned)
        .mx("soon.test", 10, "mx.soon.test")
        .a("mx.soon.test", "127.0.16.10")
        .zone("stale.test", ZoneKind::Signed)
        .mx("stale.test", 10, "mx.stale.test")
        .a("mx.stale.test", "127.0.16.11")
        .tlsa(port, "mx.stale.test", 3, 1, 1, &sha256(&old_cert.spki_der))
        .zone("fine.test", ZoneKind::Signed)
        .mx("fine.test", 10, "mx.fine.test")
        .a("mx.fine.test", "127.0.16.12")
        .tlsa(port, "mx.fine.test", 3, 1, 1, &sha256(&fine_cert.spki_der))
        .zone("unlisted.test", ZoneKind::Unsigned)
        .mx("unlisted.test", 10, "mx.unlisted.test")
        .a("mx.unlisted.test", "127.0.16.12")
        .txt("_mta-sts.unlisted.test", &["v=STSv1; id=1"])
        .a("mta-sts.unlisted.test", "127.0.16.30")
        // MX and address signed; the TLSA records in a zone of their own whose signatures are broken.
        .zone("bogus.test", ZoneKind::Signed)
        .mx("bogus.test", 10, "mx.bogus.test")
        .a("mx.bogus.test", "127.0.16.12")
        .zone("_tcp.mx.bogus.test", ZoneKind::BadSignatures)
        .tlsa(port, "mx.bogus.test", 3, 1, 1, &sha256(&fine_cert.spki_der))
        .start()
        .await;
    let (smtp, metrics) = (free_port(), free_port());
    let config = write_config(dir.path(), &world, &root, (smtp, metrics, port));
    let log_path = dir.path().join("relay.log");
    let relay = start_relay_logging(&config, smtp, &log_path).await;

    let before = metrics_text(metrics).await;
    for kind in [
        "cert-expiring",
        "tlsa-mismatch",
        "sts-mx-not-listed",
        "tlsa-bogus",
    ] {
        let series = format!("{}{{kind=\"{kind}\"}}", m::EARLY_WARNINGS);
        assert_eq!(
            value(&before, &series),
            Some(0.0),
            "registered at zero: {before}"
        );
    }
    for rcpt in [
        "a@soon.test",
        "b@stale.test",
        "c@fine.test",
        "d@unlisted.test",
        "e@bogus.test",
    ] {
        submit(relay.addr, rcpt).await;
    }

    let deadline = Instant::now() + Duration::from_secs(60);
    let (expiring, mismatch, unlisted, bogus) = loop {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let found = (
            warning_line(&log, "soon.test", "cert-expiring"),
            warning_line(&log, "stale.test", "tlsa-mismatch"),
            warning_line(&log, "unlisted.test", "sts-mx-not-listed"),
            warning_line(&log, "bogus.test", "tlsa-bogus"),
        );
        if let (Some(a), Some(b), Some(c), Some(d)) = found {
            break (a, b, c, d);
        }
        assert!(
            Instant::now() < deadline,
            "no early warnings logged:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(expiring.contains("level=warn"), "{expiring}");
    assert!(expiring.contains("host=mx.soon.test"), "{expiring}");
    assert!(expiring.contains("day(s) left"), "{expiring}");
    assert!(mismatch.contains("host=mx.stale.test"), "{mismatch}");
    assert!(
        mismatch.contains("do not match the served certificate"),
        "{mismatch}"
    );
    assert!(unlisted.contains("host=mx.unlisted.test"), "{unlisted}");
    assert!(bogus.contains("host=mx.bogus.test"), "{bogus}");
    assert!(bogus.contains("DNSSEC"), "{bogus}");
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        !log.lines()
            .any(|l| l.contains("msg=\"early warning\"") && l.contains("domain=fine.test")),
        "the healthy DANE domain is not warned about:\n{log}"
    );

    // The gauges follow the latest probe: each kind once.
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let text = metrics_text(metrics).await;
        let v = |k: &str| value(&text, &format!("{}{{kind=\"{k}\"}}", m::EARLY_WARNINGS));
        let kinds = [
            "cert-expiring",
            "tlsa-mismatch",
            "sts-mx-not-listed",
            "tlsa-bogus",
        ];
        if kinds.iter().all(|k| v(k) == Some(1.0)) {
            break text;
        }
        assert!(Instant::now() < deadline, "metrics: {text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(value(&text, m::EARLY_WARNINGS_DOMAINS), Some(5.0), "{text}");
    assert!(
        value(&text, m::EARLY_WARNINGS_LAST_RUN).is_some_and(|t| t > 0.0),
        "{text}"
    );

    // The latest results stay in the spool for the posture report.
    let latest = load_latest(&dir.path().join("spool")).unwrap().unwrap();
    let mut kinds: Vec<(String, WarningKind)> = (latest.warnings.iter())
        .map(|w| (w.domain.clone(), w.kind.clone()))
        .collect();
    kinds.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(kinds.len(), 4, "{latest:?}");
    assert_eq!(kinds[0], ("bogus.test".into(), WarningKind::TlsaBogus));
    assert_eq!(kinds[1].0, "soon.test");
    assert!(
        matches!(kinds[1].1, WarningKind::CertExpiring { days_left } if (3..=5).contains(&days_left)),
        "{latest:?}"
    );
    assert_eq!(kinds[2], ("stale.test".into(), WarningKind::TlsaMismatch));
    assert_eq!(
        kinds[3],
        ("unlisted.test".into(), WarningKind::StsMxNotListed)
    );
    relay.kill();

    // The same probe by hand, from the spool's outcome records.
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_tlsrelay"))
            .arg("--config")
            .arg(&config)
            .args(["check", "--warnings"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("soon.test mx.soon.test cert-expiring: "),
        "{text}"
    );
    assert!(
        text.contains("stale.test mx.stale.test tlsa-mismatch: "),
        "{text}"
    );
    assert!(text.contains("5 domain(s) probed, 4 warning(s)"), "{text}");
}
