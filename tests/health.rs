//! The metrics listener's health signals, against the real binary: each relay is
//! a child process, so each has its own process-wide metrics recorder.
//!
//! `/readyz` names a resolver that strips DNSSEC and is 200 behind a good one;
//! `/healthz` is 200; other paths are 404 and other methods 405; every counter
//! exists at zero before traffic; and a scrape after a delivery over TLS passes
//! `promtool check metrics`.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::child::{start_relay_logging, Relay};
use support::client::Client;
use support::dns_world::{DnsWorld, StrippingResolver, ZoneKind};
use support::mx::{free_port, MxOptions, MxServer};
use support::pki::TestCa;
use tlsrelay::model::metric as m;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One HTTP answer as the test saw it on the wire.
struct Answer {
    status: u16,
    head: String,
    body: String,
}

async fn http(port: u16, method: &str, path: &str) -> Answer {
    // The relay may still be starting: the wait for its SMTP port can end early
    // when a connection to a not-yet-bound port meets itself (TCP self-connect).
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut s = loop {
        match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("metrics endpoint 127.0.0.1:{port}: {e}"),
        }
    };
    let request =
        format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let (head, body) = out
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP answer: {out:?}"));
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap();
    Answer {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

/// The value of one series (name with labels, exactly as rendered).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Polls `/readyz` until `pred` holds, returning the last answer.
async fn readyz_until(port: u16, pred: impl Fn(&Answer) -> bool) -> Answer {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let a = http(port, "GET", "/readyz").await;
        if pred(&a) || Instant::now() > deadline {
            return a;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A relay config: SMTP on `smtp`, metrics on `metrics`, DNS from `dns` under
/// `world`'s anchor, `min_free` bytes of disk reserve.
fn write_config(
    dir: &Path,
    ports: (u16, u16, u16),
    dns: SocketAddr,
    world: &DnsWorld,
    ca: &Path,
    min_free: u64,
) -> PathBuf {
    let (smtp, metrics, mx) = ports;
    let path = dir.join("tlsrelay.toml");
    let text = format!(
        r#"[server]
listen = ["127.0.0.1:{smtp}"]
hostname = "relay.test"
[spool]
dir = "{spool}"
min_free = {min_free}
[delivery]
port = {mx}
extra_roots = ["{ca}"]
allow_loopback_destinations = true
queue_scan_interval = "1s"
connection_reuse_time = "60s"
[dns]
nameservers = ["{dns}"]
trust_anchor_file = "{anchor}"
timeout = "2s"
attempts = 1
[metrics]
listen = "127.0.0.1:{metrics}"
"#,
        spool = dir.join("spool").display(),
        ca = ca.display(),
        anchor = world.anchor_path().display(),
    );
    std::fs::write(&path, text).unwrap();
    path
}

async fn start(dir: &Path, config: &Path, smtp: u16) -> Relay {
    start_relay_logging(config, smtp, &dir.join("relay.log")).await
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_names_a_resolver_that_strips_dnssec() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("health CA");
    let root = dir.path().join("ca.pem");
    ca.write_root_pem(&root);
    let world = DnsWorld::builder()
        .zone("good.test", ZoneKind::Signed)
        .start()
        .await;
    let stripper = StrippingResolver::start(world.addr()).await;
    let (smtp, metrics) = (free_port(), free_port());
    let config = write_config(
        dir.path(),
        (smtp, metrics, free_port()),
        stripper.addr(),
        &world,
        &root,
        1 << 20,
    );
    let relay = start(dir.path(), &config, smtp).await;

    let a = readyz_until(metrics, |a| a.body.contains("self-test failed")).await;
    assert_eq!(a.status, 503, "{}\n{}", a.head, a.body);
    let lines: Vec<&str> = a.body.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "one reason per line, only DNSSEC: {}",
        a.body
    );
    assert!(
        lines[0].starts_with("dnssec: DNSSEC self-test failed: "),
        "{}",
        a.body
    );
    assert!(
        stripper.stripped() > 0,
        "the relay asked the stripping resolver"
    );
    let text = http(metrics, "GET", "/metrics").await.body;
    assert_eq!(value(&text, m::SELFTEST_OK), Some(0.0), "{text}");
    assert_eq!(value(&text, m::READY), Some(0.0), "{text}");
    assert!(
        value(&text, m::SELFTEST_LAST).is_some_and(|t| t > 1.0e9),
        "{text}"
    );
    let healthz = http(metrics, "GET", "/healthz").await;
    assert_eq!(healthz.status, 200, "alive even when not ready");
    relay.kill();
    let log = std::fs::read_to_string(dir.path().join("relay.log")).unwrap();
    let errors = log.lines().filter(|l| l.contains(" level=error ")).count();
    assert_eq!(
        errors, 1,
        "one ERROR line when the self-test starts failing: {log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_gives_every_reason_one_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let world = DnsWorld::builder().start().await;
    let stripper = StrippingResolver::start(world.addr()).await;
    let (smtp, metrics) = (free_port(), free_port());
    // A reserve no disk has: the relay runs, but refuses mail, and says so.
    let reserve: u64 = 9_000_000_000_000_000_000;
    let ca = dir.path().join("none.pem");
    TestCa::new("unused CA").write_root_pem(&ca);
    let ports = (smtp, metrics, free_port());
    let config = write_config(dir.path(), ports, stripper.addr(), &world, &ca, reserve);
    let relay = start(dir.path(), &config, smtp).await;
    let a = readyz_until(metrics, |a| a.body.contains("self-test failed")).await;
    eprintln!("/readyz answered:\n{}{}", a.head, a.body);
    assert_eq!(a.status, 503, "{}\n{}", a.head, a.body);
    let lines: Vec<&str> = a.body.lines().collect();
    assert_eq!(lines.len(), 2, "{}", a.body);
    assert!(
        lines[0].starts_with("dnssec: DNSSEC self-test failed: "),
        "{}",
        a.body
    );
    assert!(lines[1].starts_with("disk: "), "{}", a.body);
    assert!(
        lines[1].ends_with(&format!(
            "below the reserve of {reserve} ([spool] min_free)"
        )),
        "{}",
        a.body
    );
    let text = http(metrics, "GET", "/metrics").await.body;
    assert_eq!(
        value(&text, m::SPOOL_RESERVE),
        Some(reserve as f64),
        "{text}"
    );
    relay.kill();
}

/// Series of every counter the relay registers, with their fixed labels.
fn zero_counters() -> Vec<String> {
    // Not INBOUND_SESSIONS: the start-up wait of `child::start_relay` connects.
    let mut out: Vec<String> = [m::ACCEPTED, m::DNSSEC_FAILURES, m::INBOUND_BYTES]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for mech in m::MECHANISMS {
        out.push(format!(
            "{}{{result=\"delivered\",auth=\"{}\"}}",
            m::DELIVERIES,
            mech.as_str()
        ));
    }
    for r in ["failed", "deferred"] {
        out.push(format!("{}{{result=\"{r}\",auth=\"none\"}}", m::DELIVERIES));
    }
    for t in m::RESULT_TYPES {
        out.push(format!("{}{{result_type=\"{}\"}}", m::REFUSALS, t.as_str()));
    }
    for e in ["hit", "miss", "fetch_error"] {
        out.push(format!("{}{{event=\"{e}\"}}", m::STS_CACHE));
    }
    for r in ["sent", "failed"] {
        out.push(format!("{}{{result=\"{r}\"}}", m::TLS_REPORTS));
    }
    for c in m::REFUSAL_CLASSES {
        for s in m::REFUSAL_SUBJECTS {
            out.push(format!(
                "{}{{class=\"{c}\",subject=\"{s}\"}}",
                m::INBOUND_REJECTIONS
            ));
        }
    }
    out
}

/// `promtool check metrics` on `text`; a skip (loud) when promtool is missing, a failure under CI.
fn promtool_check(text: &str) {
    let path = std::env::temp_dir().join(format!("tlsrelay-scrape-{}.txt", std::process::id()));
    std::fs::write(&path, text).unwrap();
    let run = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&path).unwrap())
        .output();
    let _ = std::fs::remove_file(&path);
    match run {
        Ok(out) => assert!(
            out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
            "promtool check metrics:\n{}{}\n--- scrape ---\n{text}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("promtool is required under CI (apt-get install prometheus): {e}")
        }
        Err(e) => skipped(&format!(
            "promtool check metrics: promtool cannot run ({e})"
        )),
    }
}

async fn submit(addr: SocketAddr) {
    let (mut c, _) = Client::connect(addr).await;
    c.cmd("EHLO client.test").await;
    // Out of order: a refusal for the rejections counter (5.5.1: protocol).
    assert_eq!(c.cmd("RCPT TO:<a@good.test>").await.code, 503);
    assert_eq!(c.cmd("MAIL FROM:<sender@org.test>").await.code, 250);
    assert_eq!(c.cmd("RCPT TO:<a@good.test>").await.code, 250);
    assert_eq!(c.cmd("DATA").await.code, 354);
    c.send(b"Subject: health\r\n\r\nx\r\n").await;
    assert_eq!(c.cmd(".").await.code, 250);
    c.cmd("QUIT").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ready_relay_serves_clean_metrics_after_a_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("health CA");
    let root = dir.path().join("ca.pem");
    ca.write_root_pem(&root);
    let mx_port = free_port();
    let sink = MxServer::start_on(
        "127.0.13.10".parse().unwrap(),
        mx_port,
        MxOptions::with_cert(ca.leaf(&["mx.good.test"])),
    )
    .await
    .unwrap();
    let world = DnsWorld::builder()
        .zone("good.test", ZoneKind::Unsigned)
        .mx("good.test", 10, "mx.good.test")
        .a("mx.good.test", "127.0.13.10")
        .start()
        .await;
    let (smtp, metrics) = (free_port(), free_port());
    let config = write_config(
        dir.path(),
        (smtp, metrics, mx_port),
        world.addr(),
        &world,
        &root,
        1 << 20,
    );
    let relay = start(dir.path(), &config, smtp).await;

    let a = readyz_until(metrics, |a| a.status == 200).await;
    assert_eq!((a.status, a.body.as_str()), (200, "ready\n"), "{}", a.head);
    assert_eq!(http(metrics, "GET", "/healthz").await.status, 200);
    for path in ["/", "/metrics/", "/favicon.ico", "/readyz?"] {
        let a = http(metrics, "GET", path).await;
        let want = if path == "/readyz?" { 200 } else { 404 };
        assert_eq!(a.status, want, "GET {path}: {}", a.head);
    }
    for method in ["POST", "PUT", "DELETE"] {
        let a = http(metrics, method, "/metrics").await;
        assert_eq!(a.status, 405, "{method} /metrics");
        assert!(
            a.head.to_ascii_lowercase().contains("\r\nallow: get"),
            "{}",
            a.head
        );
    }

    let before = http(metrics, "GET", "/metrics").await;
    assert!(
        before.head.contains("text/plain; version=0.0.4"),
        "{}",
        before.head
    );
    for series in zero_counters() {
        assert_eq!(
            value(&before.body, &series),
            Some(0.0),
            "{series} at zero before traffic:\n{}",
            before.body
        );
    }
    assert!(
        value(&before.body, m::INBOUND_SESSIONS).is_some(),
        "{}",
        before.body
    );
    assert_eq!(
        value(&before.body, m::SELFTEST_OK),
        Some(1.0),
        "{}",
        before.body
    );
    promtool_check(&before.body);

    submit(relay.addr).await;
    assert!(sink.wait_for_messages(1, Duration::from_secs(20)).await);
    let delivered = format!("{}{{result=\"delivered\",auth=\"verify\"}}", m::DELIVERIES);
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let text = http(metrics, "GET", "/metrics").await.body;
        if value(&text, &delivered) == Some(1.0) || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for (series, want) in [
        (delivered.clone(), 1.0),
        (m::ACCEPTED.to_string(), 1.0),
        (
            format!(
                "{}{{class=\"permanent\",subject=\"protocol\"}}",
                m::INBOUND_REJECTIONS
            ),
            1.0,
        ),
        (
            format!("{}_count{{outcome=\"completed\"}}", m::TRANSACTION_TIME),
            1.0,
        ),
        (
            format!("{}_count{{result=\"delivered\"}}", m::QUEUE_TIME),
            1.0,
        ),
        (
            format!("{}{{mechanism=\"verify\"}}", m::OUTBOUND_CONNECTIONS),
            1.0,
        ),
        (
            format!("{}{{mechanism=\"none\"}}", m::OUTBOUND_CONNECTIONS),
            0.0,
        ),
        (
            format!(
                "{}{{version=\"{}\"}}",
                m::BUILD_INFO,
                env!("CARGO_PKG_VERSION")
            ),
            1.0,
        ),
        (m::INBOUND_LISTENERS.to_string(), 1.0),
        (m::READY.to_string(), 1.0),
    ] {
        assert_eq!(value(&text, &series), Some(want), "{series}:\n{text}");
    }
    assert!(
        value(&text, m::INBOUND_SESSIONS).is_some_and(|v| v >= 1.0),
        "{text}"
    );
    assert!(
        value(&text, m::INBOUND_BYTES).is_some_and(|v| v > 20.0),
        "{text}"
    );
    for series in [
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
        m::SPOOL_FREE,
    ] {
        assert!(
            value(&text, series).is_some_and(|v| v > 0.0),
            "{series}:\n{text}"
        );
    }
    assert!(
        value(&text, "process_cpu_seconds_total").is_some(),
        "{text}"
    );
    promtool_check(&text);
    relay.kill();
}

/// Says so on the real stderr: the test harness hides `eprintln!` of passing tests.
fn skipped(what: &str) {
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIPPED {what}; apt-get install prometheus (CI=true makes this a failure) ***\n"
    );
}

/// Runs promtool; false (after a loud skip) when it is missing outside CI.
fn promtool(args: &[&str]) -> bool {
    match std::process::Command::new("promtool").args(args).output() {
        Ok(out) => {
            assert!(
                out.status.success(),
                "promtool {}:\n{}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            true
        }
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("promtool is required under CI (apt-get install prometheus): {e}")
        }
        Err(e) => {
            skipped(&format!(
                "promtool {}: promtool cannot run ({e})",
                args.join(" ")
            ));
            false
        }
    }
}

/// The example rules load, and the main ones fire when they should and not before.
#[test]
fn example_alert_rules_are_valid_and_fire() {
    let root = env!("CARGO_MANIFEST_DIR");
    if promtool(&["check", "rules", &format!("{root}/deploy/alerts.yml")]) {
        promtool(&[
            "test",
            "rules",
            &format!("{root}/tests/fixtures/alerts_test.yml"),
        ]);
    }
}
