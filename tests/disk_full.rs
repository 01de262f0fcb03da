//! A full disk under the spool (a small tmpfs; needs root): acknowledged mail
//! never disappears, a bounce waits until it can be written, and a spool that
//! cannot be written neither speeds up retries nor litters `tmp/`.
//!
//! Run with `cargo test --test disk_full -- --ignored --test-threads=1` as root
//! (`.ci/run` does).

mod support;

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use support::dns_world::{DnsWorld, ZoneKind};
use support::mx::{free_port, MxOptions, MxServer};
use support::pki::{TestCa, TrustedCa};
use support::relay::{config_text, TestRelay};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A tmpfs mounted at `dir` for as long as this lives.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount -t tmpfs failed (this test needs root)");
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system holding `dir` up to the last page; returns the filler.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    for chunk in [1 << 16, 4096, 512] {
        let block = vec![0u8; chunk];
        while f.write_all(&block).is_ok() {}
    }
    let _ = f.sync_all();
    path
}

/// `RCPT` commands the server has seen so far.
fn rcpts(mx: &MxServer) -> usize {
    (mx.transcripts().iter().flatten())
        .filter(|l| l.starts_with("C: RCPT"))
        .count()
}

/// Entries in the spool's `tmp/`.
fn tmp_entries(spool: &Path) -> Vec<String> {
    std::fs::read_dir(spool.join("tmp"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

async fn sink(ca: &TestCa, port: u16) -> MxServer {
    MxServer::start_on(
        ip("127.0.0.99"),
        port,
        MxOptions::with_cert(ca.leaf(&["mx.org.test"])),
    )
    .await
    .unwrap()
}

fn world(domain: &str, mx_ip: &str) -> support::dns_world::DnsWorldBuilder {
    let host = format!("mx.{domain}");
    DnsWorld::builder()
        .zone("org.test", ZoneKind::Unsigned)
        .mx("org.test", 10, "mx.org.test")
        .a("mx.org.test", "127.0.0.99")
        .zone(domain, ZoneKind::Unsigned)
        .mx(domain, 10, &host)
        .a(&host, mx_ip)
}

/// Polls `f` every 50 ms until it holds or `secs` pass.
async fn until(secs: u64, f: impl Fn() -> bool) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while !f() {
        if std::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

#[tokio::test]
#[ignore = "needs root: mounts a tmpfs for the spool"]
async fn permanent_failure_on_a_full_disk_keeps_the_message_until_its_bounce_is_written() {
    let p = TrustedCa::new("tlsrelay test CA");
    let port = free_port();
    let sink = sink(&p.ca, port).await;
    let mx = MxServer::start_on(
        ip("127.0.0.81"),
        port,
        MxOptions::with_cert(p.ca.leaf(&["mx.full.test"])).rcpt_reply("gone", "450 4.2.0 later"),
    )
    .await
    .unwrap();
    let world = world("full.test", "127.0.0.81").start().await;
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let spool_dir = dir.path().join("spool");
    let mount = Tmpfs::mount(&spool_dir, "2m");
    let text = config_text(
        dir.path(),
        &world,
        &p.root,
        port,
        "retry_schedule = [\"1s\"]\nconnection_reuse_time = \"0s\"",
    );
    let relay = TestRelay::start_with(dir.clone(), text).await;
    let id = relay
        .submit(
            "sender@org.test",
            &["gone@full.test"],
            b"Subject: full\r\n\r\nhello\r\n",
        )
        .await;
    assert!(until(10, || rcpts(&mx) >= 1).await, "first attempt");

    // The disk fills up; then the recipient fails for good.
    let filler = fill(&spool_dir);
    mx.update_options(|o| {
        o.rcpt_replies
            .insert("gone".into(), "550 5.1.1 no such user".into());
    });
    let seen = rcpts(&mx);
    assert!(
        until(10, || rcpts(&mx) > seen).await,
        "attempt on a full disk"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        relay.spool.load(&id).is_ok() && relay.spool.read_message(&id).is_ok(),
        "the acknowledged message is still queued while its bounce cannot be written"
    );
    assert!(sink.received().is_empty());

    // Space again: the bounce is written, sent, and only then the message goes.
    std::fs::remove_file(filler).unwrap();
    assert!(
        sink.wait_for_messages(1, Duration::from_secs(15)).await,
        "the sender gets the bounce once it can be written"
    );
    let dsn = sink.received()[0].data_str();
    assert!(
        dsn.contains("Final-Recipient: rfc822; gone@full.test"),
        "{dsn}"
    );
    assert!(dsn.contains("550 5.1.1 no such user"), "{dsn}");
    assert!(
        relay
            .wait_queue(Duration::from_secs(10), |q| q.is_empty())
            .await,
        "the bounced message and its DSN leave the queue"
    );
    assert_eq!(sink.received().len(), 1, "one bounce");
    relay.stop().await;
    drop(mount);
}

#[tokio::test]
#[ignore = "needs root: mounts a tmpfs for the spool"]
async fn unwritable_spool_keeps_the_retry_schedule_and_leaves_nothing_in_tmp() {
    let p = TrustedCa::new("tlsrelay test CA");
    let port = free_port();
    let _sink = sink(&p.ca, port).await;
    let mx = MxServer::start_on(
        ip("127.0.0.82"),
        port,
        MxOptions::with_cert(p.ca.leaf(&["mx.later.test"])).rcpt_reply("later", "450 4.2.0 later"),
    )
    .await
    .unwrap();
    let world = world("later.test", "127.0.0.82").start().await;
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let spool_dir = dir.path().join("spool");
    let mount = Tmpfs::mount(&spool_dir, "2m");
    // The second attempt comes 3 s after the first, the next one an hour later;
    // the queue is rescanned every second.
    let text = config_text(
        dir.path(),
        &world,
        &p.root,
        port,
        "retry_schedule = [\"3s\", \"1h\"]\nconnection_reuse_time = \"0s\"",
    );
    let relay = TestRelay::start_with(dir.clone(), text).await;
    let id = relay
        .submit(
            "sender@org.test",
            &["later@later.test"],
            b"Subject: later\r\n\r\nhello\r\n",
        )
        .await;
    assert!(
        until(10, || relay.spool.load(&id).is_ok_and(|e| e.attempts == 1)).await,
        "first attempt recorded"
    );
    let _filler = fill(&spool_dir);
    assert!(until(10, || rcpts(&mx) >= 2).await, "second attempt");
    // That attempt's result could not be written; its schedule (an hour) holds anyway.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        rcpts(&mx),
        2,
        "no retry every queue scan: {}",
        mx.transcript_text()
    );
    assert_eq!(
        tmp_entries(&spool_dir),
        Vec::<String>::new(),
        "tmp/ is empty"
    );
    assert!(relay.spool.load(&id).is_ok(), "still queued");
    relay.stop().await;
    drop(mount);
}
