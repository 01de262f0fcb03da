//! Queue tools for an incident (issue 13), run with the real binary against a
//! running server: filters, `summary`, bulk retry/delete/bounce behind `--yes`,
//! hold/release and suspend/resume, on a queue of 1,000 messages across 10
//! domains; and, with real TLS sinks, that a suspended domain and a held
//! message get no delivery attempt until resumed or released, across a restart,
//! and that a suspension ends by itself at its time.

mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use support::child::{start_relay_logging, Relay};
use support::client::Client;
use support::dns_world::{DnsWorld, ZoneKind};
use support::mx::{free_port, MxOptions, MxServer};
use support::pki::TestCa;
use tlsrelay::spool::{now_unix, Envelope, Spool};

/// Messages in the big queue, one recipient each.
const N: usize = 1000;
/// Ages (seconds) well inside each summary bucket: 0-5m … 320m+.
const AGES: [i64; 8] = [60, 400, 700, 1500, 3000, 6000, 12000, 30000];

fn domain(i: usize) -> String {
    format!("d{}.test", i % 10)
}

fn sender(i: usize) -> String {
    format!("s{}@org.test", i % 4)
}

fn reason(i: usize) -> Option<String> {
    match i % 5 {
        0 => Some(format!("mx.{}: 421 4.7.0 Try again later", domain(i))),
        1 => Some("TLS handshake failed: certificate expired".into()),
        _ => None,
    }
}

/// How many of the 1,000 messages `pred` takes: the truth the output must match.
fn count(pred: impl Fn(usize) -> bool) -> usize {
    (0..N).filter(|&i| pred(i)).count()
}

/// Stores the 1,000 deferred messages through the spool's own API (ten
/// threads, so group commit batches the flushes).
fn fill(dir: &Path) {
    let spool = Spool::open(dir).unwrap();
    let now = now_unix();
    std::thread::scope(|s| {
        for t in 0..10 {
            let spool = spool.clone();
            s.spawn(move || {
                for i in (t..N).step_by(10) {
                    let to = format!("r{i}@{}", domain(i));
                    let body = format!("Subject: m{i}\r\n\r\nbody {i}\r\n");
                    let mut env = Envelope::generated(
                        "relay.test",
                        &sender(i),
                        &to,
                        Default::default(),
                        body.len() as u64,
                    );
                    env.received_at = now - AGES[i % 8];
                    env.attempts = 1;
                    env.next_attempt = now + 3600;
                    env.recipients[0].last_reason = reason(i);
                    spool.store(&env, body.as_bytes()).unwrap();
                }
            });
        }
    });
}

fn queue(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tlsrelay"))
        .arg("queue")
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap()
}

fn ok(config: &Path, args: &[&str]) -> String {
    let out = queue(config, args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "queue {args:?}: {err}");
    String::from_utf8(out.stdout).unwrap()
}

/// The command fails (non-zero) and says `want`.
fn fails(config: &Path, args: &[&str], want: &str) {
    let out = queue(config, args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "queue {args:?} succeeded");
    assert!(err.contains(want), "queue {args:?}: {err}");
}

fn json(config: &Path, args: &[&str]) -> Value {
    serde_json::from_str(&ok(config, args)).unwrap()
}

/// How many messages `queue list --json ARGS` shows.
fn listed(config: &Path, args: &[&str]) -> usize {
    let mut all = vec!["list", "--json"];
    all.extend(args);
    json(config, &all).as_array().unwrap().len()
}

fn stop(relay: Relay) {
    let mut child = relay.child;
    // SAFETY: kill has no memory preconditions.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap();
}

fn write_config(dir: &Path, port: u16) -> PathBuf {
    let path = dir.join("tlsrelay.toml");
    let text = format!(
        "[server]\nlisten = [\"127.0.0.1:{port}\"]\nhostname = \"relay.test\"\n[spool]\ndir = \"{}/spool\"\n[delivery]\nenabled = false\n",
        dir.display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Filters and `summary` count exactly what the model above says.
fn check_filters_and_summary(config: &Path) {
    let filters: [(&[&str], usize); 9] = [
        (&[], N),
        (&["--domain", "d3.test"], count(|i| i % 10 == 3)),
        (&["--domain", "D3.TEST."], count(|i| i % 10 == 3)),
        (&["--sender", "<S1@org.test>"], count(|i| i % 4 == 1)),
        (&["--recipient", "r7@d7.test"], 1),
        (&["--older-than", "1h"], count(|i| AGES[i % 8] >= 3600)),
        (&["--reason", "TRY AGAIN"], count(|i| i % 5 == 0)),
        (
            &[
                "--domain",
                "d1.test",
                "--sender",
                "s1@org.test",
                "--older-than",
                "10m",
                "--reason",
                "certificate",
            ],
            count(|i| i % 10 == 1 && i % 4 == 1 && AGES[i % 8] >= 600 && i % 5 == 1),
        ),
        // Every d1 message failed on a certificate, none said "try again".
        (&["--domain", "d1.test", "--reason", "try again"], 0),
    ];
    for (args, want) in filters {
        assert_eq!(listed(config, args), want, "list {args:?}");
    }
    let shape = json(config, &["summary", "--json"]);
    assert_eq!(shape["total"]["messages"], N);
    assert_eq!(shape["total"]["recipients"], N);
    assert_eq!(shape["total"]["ages"], serde_json::json!(vec![125; 8]));
    let rows = shape["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 10);
    for row in rows {
        let k: usize = row["domain"].as_str().unwrap()[1..2].parse().unwrap();
        assert_eq!(row["messages"], 100, "{row}");
        let ages: Vec<usize> = (0..8)
            .map(|b| count(|i| i % 10 == k && i % 8 == b))
            .collect();
        assert_eq!(row["ages"], serde_json::json!(ages), "{row}");
    }
    let one = json(
        config,
        &[
            "summary",
            "--json",
            "--domain",
            "d3.test",
            "--older-than",
            "1h",
        ],
    );
    assert_eq!(
        one["total"]["messages"],
        count(|i| i % 10 == 3 && AGES[i % 8] >= 3600)
    );
    let text = ok(config, &["summary"]);
    let total = text.lines().nth(1).unwrap();
    assert!(
        total.starts_with("TOTAL") && total.contains(" 1000 "),
        "{text}"
    );
    fails(
        config,
        &["list", "--older-than", "2hours"],
        "is not a duration",
    );
    fails(config, &["list", "--sender", "nobody"], "is not an address");
}

/// Bulk delete, retry and bounce need `--yes` for more than one message.
fn check_bulk(config: &Path) {
    fails(
        config,
        &["delete", "--domain", "d0.test"],
        "100 messages match; add --yes to delete them",
    );
    assert_eq!(listed(config, &[]), N, "nothing was deleted");
    assert_eq!(
        ok(config, &["delete", "--domain", "d0.test", "--yes"]),
        "100 message(s) deleted\n"
    );
    assert_eq!(listed(config, &[]), N - 100);
    fails(
        config,
        &["retry", "--all"],
        "900 messages match; add --yes to retry them",
    );
    let old9 = count(|i| i % 10 == 9 && AGES[i % 8] >= 3600);
    assert_eq!(
        ok(
            config,
            &[
                "retry",
                "--domain",
                "d9.test",
                "--older-than",
                "1h",
                "--yes"
            ]
        ),
        format!("{old9} message(s) due for delivery now\n")
    );
    let due = json(config, &["list", "--json", "--domain", "d9.test"]);
    let now_due = (due.as_array().unwrap().iter())
        .filter(|m| m["next_attempt"].as_i64().unwrap() <= now_unix())
        .count();
    assert_eq!(now_due, old9);
    let n = count(|i| i % 10 == 1 && i % 4 == 1);
    fails(
        config,
        &["bounce", "--domain", "d1.test", "--sender", "s1@org.test"],
        &format!("{n} messages match; add --yes to bounce them"),
    );
    assert_eq!(
        ok(
            config,
            &[
                "bounce",
                "--domain",
                "d1.test",
                "--sender",
                "s1@org.test",
                "--yes"
            ]
        ),
        format!("{n} message(s) bounced; {n} DSN(s) queued\n")
    );
    let dsns = json(config, &["list", "--json", "--sender", "<>"]);
    let dsns = dsns.as_array().unwrap();
    assert_eq!(dsns.len(), n);
    assert!(
        dsns.iter()
            .all(|d| d["pending"] == serde_json::json!(["s1@org.test"])),
        "DSNs go to the sender"
    );
    assert_eq!(listed(config, &["--domain", "d1.test"]), 100 - n);
}

/// Hold and release by filter and by id; suspend marks a domain's messages.
fn check_hold_and_suspend(config: &Path) {
    assert_eq!(
        ok(config, &["hold", "--domain", "d2.test"]),
        "100 message(s) held\n"
    );
    assert_eq!(
        ok(config, &["hold", "--domain", "d2.test"]),
        "0 message(s) held\n"
    );
    let d2 = json(config, &["list", "--json", "--domain", "d2.test"]);
    assert!(d2
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["state"] == "held" && m["held"] == true));
    let shape = json(config, &["summary", "--json"]);
    let row = |d: &str| {
        shape["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["domain"] == d)
            .cloned()
            .unwrap()
    };
    assert_eq!(row("d2.test")["held"], 100);
    assert_eq!(shape["total"]["held"], 100);
    let d4 = json(config, &["list", "--json", "--domain", "d4.test"]);
    let id = d4[0]["id"].as_str().unwrap().to_string();
    assert_eq!(ok(config, &["hold", &id]), "1 message(s) held\n");
    assert!(ok(config, &["show", &id]).contains("held:        yes"));
    let out = ok(config, &["suspend", "d5.test", "--for", "2h"]);
    assert!(
        out.starts_with("d5.test suspended until ")
            && out.ends_with("(2h); 100 message(s) wait for it\n"),
        "{out}"
    );
    assert!(ok(config, &["list", "--domain", "d5.test"]).contains("(domain suspended until "));
    let text = ok(config, &["summary"]);
    assert!(
        text.lines()
            .any(|l| l.starts_with("d5.test") && l.ends_with("(suspended)")),
        "{text}"
    );
    let listed = ok(config, &["suspended"]);
    assert!(
        listed.starts_with("d5.test  until ") && listed.contains("left)"),
        "{listed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_tools_on_a_thousand_messages() {
    let started = std::time::Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(dir.path(), port);
    fill(&dir.path().join("spool"));
    let log = dir.path().join("serve.log");
    let relay = start_relay_logging(&config, port, &log).await;

    check_filters_and_summary(&config);
    check_bulk(&config);
    check_hold_and_suspend(&config);

    // Holds and suspensions survive a restart.
    stop(relay);
    let relay = start_relay_logging(&config, port, &log).await;
    let d2 = json(&config, &["list", "--json", "--domain", "d2.test"]);
    assert!(d2.as_array().unwrap().iter().all(|m| m["held"] == true));
    assert!(ok(&config, &["suspended"]).starts_with("d5.test  until "));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("spool/suspended.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        ok(&config, &["release", "--domain", "d2.test"]),
        "100 message(s) released\n"
    );
    assert_eq!(listed(&config, &["--domain", "d2.test"]), 100);
    assert!(ok(&config, &["resume", "d5.test"]).starts_with("d5.test resumed"));
    fails(&config, &["resume", "d5.test"], "d5.test is not suspended");
    assert_eq!(ok(&config, &["suspended"]), "no domain is suspended\n");
    stop(relay);

    let log = std::fs::read_to_string(&log).unwrap();
    let line = |what: &str| {
        log.lines()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no {what:?} in {log}"))
            .to_string()
    };
    let deleted = line("queue: 100 message(s) deleted");
    assert!(
        deleted.contains("count=100") && deleted.contains("ids="),
        "{deleted}"
    );
    assert_eq!(
        deleted
            .split("ids=")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .take_while(|w| !w.contains('='))
            .count(),
        100,
        "{deleted}"
    );
    line("queue: 100 message(s) held");
    line("queue: 100 message(s) released");
    line(&format!(
        "queue: {} message(s) bounced",
        count(|i| i % 10 == 1 && i % 4 == 1)
    ));
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
}

/// Sends one message to `to` over SMTP; its queue id.
async fn submit(addr: std::net::SocketAddr, to: &str) -> String {
    let (mut c, _) = Client::connect(addr).await;
    c.cmd("EHLO client.test").await;
    assert_eq!(c.cmd("MAIL FROM:<a@org.test>").await.code, 250);
    assert_eq!(c.cmd(&format!("RCPT TO:<{to}>")).await.code, 250);
    assert_eq!(c.cmd("DATA").await.code, 354);
    c.send(b"Subject: suspend\r\n\r\nhi\r\n").await;
    let r = c.cmd(".").await;
    assert_eq!(r.code, 250, "{r:?}");
    r.text().rsplit(' ').next().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspended_domains_and_held_messages_get_no_attempt_until_resumed_or_released() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("queue tools CA");
    let ca_pem = dir.path().join("ca.pem");
    ca.write_root_pem(&ca_pem);
    let ips = [
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)),
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
    ];
    let sinks = MxServer::start_on_all(&ips, |i| {
        MxOptions::with_cert(ca.leaf(&[["mx.a.test", "mx.b.test"][i]]))
    })
    .await
    .unwrap();
    let (sink_a, sink_b) = (&sinks[0], &sinks[1]);
    let world = DnsWorld::builder()
        .zone("a.test", ZoneKind::Signed)
        .zone("b.test", ZoneKind::Signed)
        .mx("a.test", 10, "mx.a.test")
        .a("mx.a.test", "127.0.0.1")
        .mx("b.test", 10, "mx.b.test")
        .a("mx.b.test", "127.0.0.2")
        .start()
        .await;
    let port = free_port();
    let text = support::relay::config_text(
        dir.path(),
        &world,
        &ca_pem,
        sink_a.port(),
        "retry_schedule = [\"1s\"]\n",
    )
    .replace(
        "listen = [\"127.0.0.1:0\"]",
        &format!("listen = [\"127.0.0.1:{port}\"]"),
    )
    // Only the control socket's commands may reach the scheduler in time.
    .replace(
        "queue_scan_interval = \"1s\"",
        "queue_scan_interval = \"1h\"",
    );
    assert!(text.contains("queue_scan_interval = \"1h\""));
    let config = dir.path().join("tlsrelay.toml");
    std::fs::write(&config, text).unwrap();
    let log = dir.path().join("serve.log");
    let relay = start_relay_logging(&config, port, &log).await;

    ok(&config, &["suspend", "a.test", "--for", "2h"]);
    ok(&config, &["suspend", "b.test", "--for", "2h"]);
    for k in 0..5 {
        submit(relay.addr, &format!("r{k}@a.test")).await;
    }
    let held = submit(relay.addr, "held@b.test").await;
    assert_eq!(ok(&config, &["hold", &held]), "1 message(s) held\n");
    ok(&config, &["resume", "b.test"]);
    for k in 0..4 {
        submit(relay.addr, &format!("r{k}@b.test")).await;
    }
    assert!(
        sink_b.wait_for_messages(4, Duration::from_secs(20)).await,
        "b.test is delivered"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        sink_a.stats().connections,
        0,
        "no connection for the suspended domain"
    );
    assert_eq!(sink_b.stats().messages, 4, "the held message stays");
    let list = ok(&config, &["list"]);
    assert_eq!(
        list.matches("(domain suspended until ").count(),
        5,
        "{list}"
    );
    assert_eq!(listed(&config, &["--domain", "a.test"]), 5);

    // After a restart the suspension and the hold still stand.
    stop(relay);
    let relay = start_relay_logging(&config, port, &log).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        sink_a.stats().connections,
        0,
        "still suspended after the restart"
    );
    assert_eq!(sink_b.stats().messages, 4, "still held after the restart");

    assert!(ok(&config, &["resume", "a.test"]).starts_with("a.test resumed"));
    assert!(
        sink_a.wait_for_messages(5, Duration::from_secs(20)).await,
        "a.test is delivered after resume"
    );
    assert_eq!(ok(&config, &["release", &held]), "1 message(s) released\n");
    assert!(
        sink_b.wait_for_messages(5, Duration::from_secs(20)).await,
        "released, it is delivered"
    );
    let rcpts: Vec<String> = sink_b
        .received()
        .iter()
        .flat_map(|m| m.rcpt_addresses())
        .collect();
    assert!(rcpts.contains(&"held@b.test".to_string()), "{rcpts:?}");
    assert_eq!(listed(&config, &[]), 0);

    // A suspension ends by itself, and its messages go out then (no rescan: 1h).
    ok(&config, &["suspend", "b.test", "--for", "3s"]);
    submit(relay.addr, "later@b.test").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(sink_b.stats().messages, 5, "suspended for 3s");
    assert!(
        sink_b.wait_for_messages(6, Duration::from_secs(20)).await,
        "delivered when the suspension ended"
    );
    assert_eq!(ok(&config, &["suspended"]), "no domain is suspended\n");
    stop(relay);
}
