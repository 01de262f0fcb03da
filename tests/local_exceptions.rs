//! Local policy entries that expire, and entries that would replace a domain's
//! published DANE: the relay, `policy check`, `policy list`, `check --json` and
//! the metrics, against real SMTP servers and the in-process signed DNS world.
//! (Its own test binary: it reads process-wide metrics other relays would also set.)

mod support;

use support::child::run_cli;
use support::dns_world::{DnsWorld, ZoneKind};
use support::mx::{free_port, MxOptions, MxServer};
use support::pki::{self, TestCa};
use support::relay::TestRelay;
use support::{ip, sha256};

/// The text of GET /metrics on the relay's metrics listener.
async fn metrics(port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// The day `days` from today (UTC), as a policy file writes it.
fn day(days: i64) -> String {
    (chrono::Utc::now().date_naive() + chrono::Duration::days(days)).to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn exceptions_expire_and_overrides_must_be_written() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("exceptions CA");
    let root = dir.path().join("ca.pem");
    ca.write_root_pem(&root);
    let port = free_port();
    let names = ["gone", "soon", "bare"];
    let mut builder = DnsWorld::builder();
    let mut servers = vec![];
    for (i, n) in names.iter().enumerate() {
        let (domain, host) = (format!("{n}.test"), format!("mx.{n}.test"));
        let cert = pki::self_signed(&[&host]);
        let addr = format!("127.0.6.{}", 30 + i);
        builder = builder
            .zone(&domain, ZoneKind::Signed)
            .mx(&domain, 10, &host)
            .a(&host, &addr)
            .tlsa(port, &host, 3, 1, 1, &sha256(&cert.spki_der));
        servers.push(
            MxServer::start_on(ip(&addr), port, MxOptions::with_cert(cert))
                .await
                .unwrap(),
        );
    }
    let world = builder.start().await;
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    let file = format!(
        r#"[[policy]]
domain = "gone.test"
level = "encrypt"
override_dane = true
expires = {gone}
owner = "postmaster"
reason = "their TLSA was broken"

[[policy]]
domain = "soon.test"
level = "encrypt"
override_dane = true
expires = {soon}
ticket = "OPS-7"

[[policy]]
domain = "bare.test"
level = "encrypt"
"#,
        gone = day(-1),
        soon = day(5)
    );
    std::fs::write(policies.join("p.toml"), &file).unwrap();
    let metrics_port = free_port();
    let relay = TestRelay::start(
        &world,
        &root,
        port,
        &format!(
            "retry_schedule = [\"1h\"]\n[policies]\ndir = \"{}\"\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"",
            policies.display()
        ),
    )
    .await;
    let msg = b"Subject: exceptions\r\n\r\nx\r\n";
    let mut ids = vec![];
    for n in names {
        ids.push(
            relay
                .submit("s@org.test", &[&format!("u@{n}.test")], msg)
                .await,
        );
    }
    relay.wait_attempted(&ids).await;
    for (n, s) in names.iter().zip(&servers) {
        assert_eq!(s.received().len(), 1, "{n}: {}", relay.last_reason(&ids[0]));
    }
    let auth = |d: &str| {
        relay
            .outcomes()
            .iter()
            .find(|o| o.domain == d && o.tls_ok)
            .and_then(|o| o.auth.clone())
            .unwrap_or_default()
    };
    // Past its expires: DANE authenticates the domain again.
    assert_eq!(auth("gone.test"), "dane");
    // Still in force, with its override: the exception applies.
    assert_eq!(auth("soon.test"), "local");
    // No override_dane: the entry is ignored, DANE applies.
    assert_eq!(auth("bare.test"), "dane");
    // The warning before expiry and the overrides, in metrics.
    let body = metrics(metrics_port).await;
    for line in [
        "tlsrelay_local_policy_exceptions{state=\"expiring\"} 1",
        "tlsrelay_local_policy_exceptions{state=\"expired\"} 1",
        "tlsrelay_local_policy_overrides_total{published=\"dane\",result=\"applied\"} 1",
        "tlsrelay_local_policy_overrides_total{published=\"dane\",result=\"ignored\"} 1",
    ] {
        assert!(body.contains(line), "{line} in:\n{body}");
    }

    let config = dir.path().join("tlsrelay.toml");
    std::fs::write(&config, relay.config_text()).unwrap();
    let run = |args: &'static [&'static str]| {
        let c = config.clone();
        tokio::task::spawn_blocking(move || run_cli(&c, args))
    };
    // policy check: the missing override fails with the file and line; the expiry warns.
    let (code, out) = run(&["policy", "check"]).await.unwrap();
    assert_eq!(code, 1, "{out}");
    let p = policies.join("p.toml");
    let bare = format!(
        "{}:17: bare.test (encrypt): ERROR: the domain publishes DANE",
        p.display()
    );
    assert!(out.contains(&bare), "{bare} in:\n{out}");
    assert!(out.contains("override_dane = true"), "{out}");
    assert!(
        out.contains(&format!(
            "{}:10: soon.test (encrypt): warning: expires {}",
            p.display(),
            day(5)
        )),
        "{out}"
    );
    assert!(
        out.contains("gone.test (encrypt): warning: expired"),
        "{out}"
    );
    // policy list: days left.
    let (code, out) = run(&["policy", "list"]).await.unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("{} (5d left)", day(5))), "{out}");
    assert!(out.contains("(EXPIRED)"), "{out}");
    assert!(out.contains("ticket: OPS-7"), "{out}");
    // check --json: the exception's state and the standing.
    let (_, out) = run(&["check", "soon.test", "--json"]).await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["local"]["entry"]["exception"]["state"], "expiring",
        "{out}"
    );
    assert_eq!(v["local"]["entry"]["exception"]["days_left"], 5, "{out}");
    assert_eq!(v["local"]["standing"]["standing"], "applies", "{out}");
    assert_eq!(v["local"]["standing"]["replaced"]["dane"], true, "{out}");
    let (_, out) = run(&["check", "bare.test", "--json"]).await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["local"]["standing"]["standing"], "ignored", "{out}");
    assert_eq!(v["local"]["standing"]["missing"]["dane"], true, "{out}");
    let (_, out) = run(&["check", "gone.test", "--json"]).await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["local"]["entry"], serde_json::Value::Null, "{out}");
    assert_eq!(
        v["local"]["expired"]["exception"]["state"], "expired",
        "{out}"
    );
    assert_eq!(
        v["local"]["expired"]["about"],
        "owner: postmaster, reason: their TLSA was broken"
    );
}
