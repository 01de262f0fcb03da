//! The spool's promise, tested on the real binary with SIGKILL:
//! a 250 after DATA survives a crash; a half-received message leaves no trace.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::child::{queue_json, start_relay, Relay};
use support::client::Client;
use support::mx::free_port;
use tlsrelay::spool::Spool;

fn write_config(dir: &Path, port: u16) -> std::path::PathBuf {
    let path = dir.join("tlsrelay.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = [\"127.0.0.1:{port}\"]\nhostname = \"relay.test\"\n[spool]\ndir = \"{}/spool\"\n[delivery]\nenabled = false\n",
            dir.display()
        ),
    )
    .unwrap();
    path
}

fn message(i: usize) -> Vec<u8> {
    // Varied sizes, so some messages straddle many socket reads.
    let filler = "x".repeat(70);
    let mut m =
        format!("Message-ID: <crash-{i}@test>\r\nSubject: crash test {i}\r\n\r\n").into_bytes();
    for line in 0..(i * 37 % 400) {
        m.extend_from_slice(format!("{i}:{line} {filler}\r\n").as_bytes());
    }
    m
}

#[tokio::test]
async fn sigkill_after_250_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(dir.path(), port);
    let mut acknowledged = Vec::new();
    // Several rounds: each kills the server the instant it has answered 250.
    for round in 0..3 {
        let mut relay = start_relay(&config, port).await;
        let (mut c, _) = Client::connect(relay.addr).await;
        c.cmd("EHLO client.test").await;
        for k in 0..5 {
            let i = round * 5 + k;
            c.cmd(&format!("MAIL FROM:<a{i}@example.org>")).await;
            c.cmd("RCPT TO:<b@example.net>").await;
            assert_eq!(c.cmd("DATA").await.code, 354);
            c.send(&message(i)).await;
            let r = c.cmd(".").await;
            assert_eq!(r.code, 250, "{r:?}");
            let id = r.text().rsplit(' ').next().unwrap().to_string();
            acknowledged.push((id, i));
        }
        relay.child.kill().unwrap(); // SIGKILL
        relay.child.wait().unwrap();
    }
    let mut relay = start_relay(&config, port).await;
    let q = queue_json(&config);
    assert_eq!(q.as_array().unwrap().len(), acknowledged.len());
    for (id, i) in &acknowledged {
        let row = q
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == *id.as_str())
            .unwrap();
        assert_eq!(row["sender"], format!("a{i}@example.org"));
    }
    relay.child.kill().unwrap();
    relay.child.wait().unwrap();
    // The bytes themselves, read back from the spool the killed server left.
    let spool = Spool::open(&dir.path().join("spool")).unwrap();
    assert!(
        spool.recovery().dropped.is_empty(),
        "{:?}",
        spool.recovery()
    );
    for (id, i) in &acknowledged {
        let stored = spool.read_message(id).unwrap();
        assert!(stored.ends_with(&message(*i)), "message {i} ({id}) differs");
        assert!(stored.starts_with(b"Received: "));
    }
}

#[tokio::test]
async fn sigkill_during_data_leaves_no_trace() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(dir.path(), port);
    let mut relay = start_relay(&config, port).await;
    let (mut c, _) = Client::connect(relay.addr).await;
    c.cmd("EHLO client.test").await;
    c.cmd("MAIL FROM:<a@example.org>").await;
    c.cmd("RCPT TO:<b@example.net>").await;
    assert_eq!(c.cmd("DATA").await.code, 354);
    let half = message(7);
    c.send(&half[..half.len() / 2]).await;
    // Let the server take in what was sent before it dies.
    tokio::time::sleep(Duration::from_millis(300)).await;
    relay.child.kill().unwrap();
    relay.child.wait().unwrap();
    assert!(
        c.try_read().await.is_none(),
        "no reply may come for a half message"
    );

    let mut relay = start_relay(&config, port).await;
    assert_eq!(queue_json(&config), serde_json::json!([]));
    relay.child.kill().unwrap();
    relay.child.wait().unwrap();
    let spool = Spool::open(&dir.path().join("spool")).unwrap();
    assert!(spool.is_empty());
    let rec = spool.recovery();
    assert!(
        rec.dropped.is_empty(),
        "nothing half-written reached the log: {rec:?}"
    );
}

#[tokio::test]
async fn sigterm_stops_cleanly_with_exit_0() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(dir.path(), port);
    let mut relay = start_relay(&config, port).await;
    let (mut c, _) = Client::connect(relay.addr).await;
    c.cmd("EHLO client.test").await;
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(relay.child.id() as i32, libc::SIGTERM) };
    let r = c.read().await;
    assert!(r.text().starts_with("421 4.3.2 "), "{r:?}");
    let status = relay.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn sighup_reloads_policies_and_keeps_the_old_set_on_a_bad_file() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(
        policies.join("a.toml"),
        "[[policy]]\ndomain = \"a.test\"\nlevel = \"encrypt\"\n",
    )
    .unwrap();
    let config = write_config(dir.path(), port);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!("[policies]\ndir = \"{}\"\n", policies.display()));
    std::fs::write(&config, text).unwrap();
    let log = dir.path().join("stderr.log");
    let child = Command::new(env!("CARGO_BIN_EXE_tlsrelay"))
        .args(["serve", "--config"])
        // Tests run as root in CI; the refusal itself is tested in tests/service.rs.
        .env("TLSRELAY_ALLOW_ROOT", "1")
        .arg(&config)
        .env("NO_COLOR", "1")
        .stderr(std::fs::File::create(&log).unwrap())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut relay = Relay {
        child,
        addr: format!("127.0.0.1:{port}").parse().unwrap(),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(relay.addr).await.is_err() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let hup = |pid: u32| unsafe { libc::kill(pid as i32, libc::SIGHUP) };
    let wait_for = |needle: &'static str| {
        let log = log.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                if text.contains(needle) {
                    return text;
                }
                assert!(
                    Instant::now() < deadline,
                    "no {needle:?} in the log:\n{text}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    std::fs::write(
        policies.join("b.toml"),
        "[[policy]]\ndomain = \"b.test\"\nlevel = \"verify\"\n",
    )
    .unwrap();
    hup(relay.child.id());
    let text = wait_for("local policies from").await;
    assert!(text.contains("2 local policies from"), "{text}");
    std::fs::write(
        policies.join("c.toml"),
        "[[policy]]\ndomain = \"c.test\"\nlevel = \"may\"\n",
    )
    .unwrap();
    hup(relay.child.id());
    let text = wait_for("local policies not reloaded").await;
    assert!(
        text.contains("c.toml:3"),
        "the error names the file and line: {text}"
    );
    // Still serving.
    let (mut c, g) = Client::connect(relay.addr).await;
    assert_eq!(g.code, 220);
    assert_eq!(c.cmd("QUIT").await.code, 221);
    relay.child.kill().unwrap();
    relay.child.wait().unwrap();
}
