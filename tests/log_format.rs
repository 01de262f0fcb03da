//! The server's log as a log pipeline reads it: the real binary, a real TLS
//! sink, one message to three recipients (delivered, refused, deferred); then
//! every line must parse — as JSON with `format = "json"`, as key=value pairs
//! with the default text format — and each recipient has one line naming the
//! queue id, Message-ID, sender, recipient, domain, MX host, address, TLS
//! version, cipher, mechanism, result and delay.

mod support;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::{Duration, Instant};

use support::child::start_relay_logging;
use support::client::Client;
use support::dns_world::{DnsWorld, ZoneKind};
use support::mx::{free_port, MxOptions, MxServer};
use support::pki::TestCa;

const MESSAGE: &str = "From: a@org.test\r\nTo: ok@log.test\r\nMessage-ID: <log-1@org.test>\r\nSubject: log\r\n\r\nhello\r\n";

/// A logfmt line as key → value; None when it does not parse.
fn logfmt(line: &str) -> Option<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut rest = line.trim_end();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        if key.is_empty() || key.contains([' ', '"']) {
            return None;
        }
        let (value, tail) = if let Some(q) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = q.char_indices();
            let end = loop {
                match chars.next()? {
                    (i, '"') => break i,
                    (_, '\\') => value.push(chars.next()?.1),
                    (_, c) => value.push(c),
                }
            };
            (value, &q[end + 1..])
        } else {
            let end = after.find(' ').unwrap_or(after.len());
            (after[..end].to_string(), &after[end..])
        };
        out.insert(key.to_string(), value);
        rest = tail.strip_prefix(' ').unwrap_or(tail);
        if !tail.is_empty() && !tail.starts_with(' ') {
            return None;
        }
    }
    Some(out)
}

#[test]
fn logfmt_parser_reads_quoted_values() {
    let m = logfmt(r#"time=1 level=info msg="a \"b\" c" k=v e="""#).unwrap();
    assert_eq!(m["msg"], r#"a "b" c"#);
    assert_eq!(m["k"], "v");
    assert_eq!(m["e"], "");
    assert!(logfmt("no pairs here").is_none());
}

/// Runs the relay with `format`, sends the message, waits for the three
/// recipient lines; returns the log's lines, each as key → value.
async fn run(
    format: &str,
    parse: fn(&str) -> Option<BTreeMap<String, String>>,
) -> Vec<BTreeMap<String, String>> {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("log CA");
    let ca_pem = dir.path().join("ca.pem");
    ca.write_root_pem(&ca_pem);
    let opts = MxOptions::with_cert(ca.leaf(&["mx.log.test"]))
        .rcpt_reply("gone", "550 5.1.1 no such user")
        .rcpt_reply("later", "450 4.2.0 mailbox busy");
    let mx = MxServer::start_on(IpAddr::V4(Ipv4Addr::LOCALHOST), 0, opts)
        .await
        .unwrap();
    let world = DnsWorld::builder()
        .zone("log.test", ZoneKind::Signed)
        .mx("log.test", 10, "mx.log.test")
        .a("mx.log.test", "127.0.0.1")
        .start()
        .await;
    let port = free_port();
    let text = support::relay::config_text(dir.path(), &world, &ca_pem, mx.port(), "")
        .replace(
            "listen = [\"127.0.0.1:0\"]",
            &format!("listen = [\"127.0.0.1:{port}\"]"),
        )
        .replace(
            "level = \"debug\"",
            &format!("level = \"info\"\nformat = \"{format}\""),
        );
    let config = dir.path().join("tlsrelay.toml");
    std::fs::write(&config, text).unwrap();
    let log = dir.path().join("tlsrelay.log");
    let relay = start_relay_logging(&config, port, &log).await;
    submit(relay.addr).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let lines = loop {
        let lines = parsed(&log, parse);
        let outcomes = lines
            .iter()
            .filter(|l| l.get("msg").is_some_and(|m| m.starts_with("recipient ")))
            .count();
        if outcomes >= 3 || Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    relay.kill();
    lines
}

async fn submit(addr: std::net::SocketAddr) {
    let (mut c, _) = Client::connect(addr).await;
    c.cmd("EHLO client.test").await;
    assert_eq!(c.cmd("MAIL FROM:<a@org.test>").await.code, 250);
    for to in ["ok@log.test", "gone@log.test", "later@log.test"] {
        assert_eq!(c.cmd(&format!("RCPT TO:<{to}>")).await.code, 250);
    }
    assert_eq!(c.cmd("DATA").await.code, 354);
    c.send(MESSAGE.as_bytes()).await;
    assert_eq!(c.cmd(".").await.code, 250);
    c.cmd("QUIT").await;
}

/// Every line of the log, parsed; a line that does not parse fails the test.
fn parsed(
    log: &Path,
    parse: fn(&str) -> Option<BTreeMap<String, String>>,
) -> Vec<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .map(|l| parse(l).unwrap_or_else(|| panic!("a log line does not parse: {l}")))
        .collect()
}

fn json(line: &str) -> Option<BTreeMap<String, String>> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let mut out = BTreeMap::new();
    for (k, v) in v.as_object()? {
        let text = match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        // tracing's JSON names the message "message"; logfmt calls it "msg".
        out.insert(
            if k == "message" {
                "msg".into()
            } else {
                k.clone()
            },
            text,
        );
    }
    Some(out)
}

/// The three recipient lines carry what a helpdesk and a pipeline need.
fn check(lines: &[BTreeMap<String, String>]) {
    let find = |to: &str| {
        let hits: Vec<_> = lines
            .iter()
            .filter(|l| {
                l.get("msg").is_some_and(|m| m.starts_with("recipient "))
                    && l.get("to").map(String::as_str) == Some(to)
            })
            .collect();
        assert_eq!(hits.len(), 1, "one line for {to}: {hits:#?}");
        hits[0].clone()
    };
    let ok = find("<ok@log.test>");
    let want = [
        ("msg", "recipient delivered"),
        ("message_id", "log-1@org.test"),
        ("from", "<a@org.test>"),
        ("domain", "log.test"),
        ("host", "mx.log.test"),
        ("addr", "127.0.0.1"),
        ("tls_version", "TLSv1.3"),
        ("mechanism", "verify"),
        ("result", "delivered"),
        ("attempt", "1"),
    ];
    for (k, v) in want {
        assert_eq!(ok.get(k).map(String::as_str), Some(v), "{k} in {ok:#?}");
    }
    assert!(ok["cipher"].starts_with("TLS13_"), "{ok:#?}");
    assert!(ok["delay"].parse::<u64>().is_ok(), "{ok:#?}");
    assert!(!ok["id"].is_empty());
    let gone = find("<gone@log.test>");
    assert_eq!(gone["result"], "failed");
    assert_eq!(gone["status"], "5.1.1");
    assert_eq!(gone["host"], "mx.log.test");
    assert_eq!(gone["message_id"], "log-1@org.test");
    let later = find("<later@log.test>");
    assert_eq!(later["result"], "deferred");
    assert!(
        later["reason"].contains("450 4.2.0 mailbox busy"),
        "{later:#?}"
    );
    for l in lines {
        let target = l.get("target").map(String::as_str).unwrap_or("");
        assert!(
            !target.starts_with("hickory"),
            "dependency noise in the log: {l:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_parse_and_name_each_recipient() {
    let lines = run("json", json).await;
    check(&lines);
    assert!(lines
        .iter()
        .all(|l| l.contains_key("timestamp") && l.contains_key("level")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_lines_are_key_value_pairs_and_name_each_recipient() {
    let lines = run("text", logfmt).await;
    check(&lines);
    assert!(lines
        .iter()
        .all(|l| l.contains_key("time") && l.contains_key("level")));
}
