//! Queue commands against a running server: they reach it over the spool's
//! control socket (the server alone holds the spool), and it logs each one.
//! Without a server they open the spool themselves, but root does not touch
//! a spool another user owns.

mod support;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::client::Client;

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
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

/// The server, its stderr going to `log`.
async fn serve(config: &Path, port: u16, log: &Path) -> Child {
    let child = Command::new(env!("CARGO_BIN_EXE_tlsrelay"))
        .args(["serve", "--config"])
        // Tests run as root in CI; the refusal itself is tested in tests/service.rs.
        .env("TLSRELAY_ALLOW_ROOT", "1")
        .arg(config)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "relay did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child
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

fn ok(out: Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    String::from_utf8(out.stdout).unwrap()
}

async fn submit(addr: SocketAddr, from: &str) -> String {
    let (mut c, _) = Client::connect(addr).await;
    c.cmd("EHLO client.test").await;
    assert_eq!(c.cmd(&format!("MAIL FROM:<{from}>")).await.code, 250);
    assert_eq!(
        c.cmd("RCPT TO:<b@example.net> NOTIFY=FAILURE").await.code,
        250
    );
    assert_eq!(c.cmd("DATA").await.code, 354);
    c.send(b"Subject: control\r\n\r\nhi\r\n").await;
    let r = c.cmd(".").await;
    assert_eq!(r.code, 250, "{r:?}");
    r.text().rsplit(' ').next().unwrap().to_string()
}

#[tokio::test]
async fn queue_commands_reach_the_running_server_and_are_logged() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(dir.path(), port);
    let log = dir.path().join("serve.log");
    let mut child = serve(&config, port, &log).await;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let ids = [
        submit(addr, "a@example.org").await,
        submit(addr, "b@example.org").await,
        submit(addr, "c@example.org").await,
    ];

    let list: serde_json::Value =
        serde_json::from_str(&ok(queue(&config, &["list", "--json"]))).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 3, "{list}");
    let show = ok(queue(&config, &["show", &ids[0]]));
    assert!(show.contains("Subject: control"), "{show}");
    let raw = queue(&config, &["show", &ids[0], "--raw"]);
    assert!(raw.status.success());
    assert!(raw.stdout.starts_with(b"Received: "), "our header first");
    assert!(
        raw.stdout.ends_with(b"Subject: control\r\n\r\nhi\r\n"),
        "byte for byte"
    );
    assert_eq!(
        ok(queue(&config, &["retry", "--all", "--yes"])),
        "3 message(s) due for delivery now\n"
    );
    assert_eq!(
        ok(queue(&config, &["delete", &ids[0]])),
        format!("{} deleted\n", ids[0])
    );
    let bounced = ok(queue(&config, &["bounce", &ids[1]]));
    assert!(
        bounced.contains("1 recipient(s) bounced; DSN "),
        "{bounced}"
    );
    let missing = queue(&config, &["delete", &ids[0]]);
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        err.contains(&format!("no message {} in the queue", ids[0])),
        "{err}"
    );

    let list: serde_json::Value =
        serde_json::from_str(&ok(queue(&config, &["list", "--json"]))).unwrap();
    let senders: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["sender"].as_str().unwrap())
        .collect();
    assert_eq!(senders.len(), 2, "{list}");
    assert!(
        senders.contains(&"c@example.org") && senders.contains(&""),
        "c's message and b's DSN: {senders:?}"
    );

    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap();
    let log = std::fs::read_to_string(&log).unwrap();
    let commands: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("msg=\"operator command\" uid="))
        .collect();
    assert_eq!(commands.len(), 8, "{log}");
    assert!(
        log.contains("operator command failed"),
        "the failed delete: {log}"
    );
    assert!(
        commands
            .iter()
            .any(|l| l.contains("queue-delete") && l.contains(&ids[0])),
        "{log}"
    );
    assert!(
        commands.iter().all(|l| l.contains(" uid=0 ")
            || l.contains(&format!(" uid={} ", unsafe { libc::geteuid() }))),
        "who ran it: {log}"
    );
    assert!(
        !dir.path().join("spool/control.sock").exists(),
        "the socket goes with the server"
    );
}

#[tokio::test]
async fn root_does_not_write_into_another_users_spool() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), free_port());
    let spool = dir.path().join("spool");
    std::fs::create_dir_all(spool.join("segments")).unwrap();
    std::os::unix::fs::chown(&spool, Some(65534), Some(65534)).unwrap();
    let out = queue(&config, &["list"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("belongs to uid 65534; run this as that user"),
        "{err}"
    );
    assert!(!spool.join("VERSION").exists(), "nothing was written");
}
