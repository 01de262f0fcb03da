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
    let text = text.replace("[spool]\n", "[spool]\nmin_free = 0\n");
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
    let text = text.replace("[spool]\n", "[spool]\nmin_free = 0\n");
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
    assert!(!spool_dir.join("tmp").exists(), "no partial files anywhere");
    assert!(relay.spool.load(&id).is_ok(), "still queued");
    relay.stop().await;
    drop(mount);
}

/// One message over its own connection; the reply to MAIL if it was not 250,
/// else the reply to the final dot.
async fn try_send(relay: &TestRelay, i: usize, body: &[u8]) -> support::client::Reply {
    let (mut c, _) = support::client::Client::connect(relay.addr).await;
    c.cmd("EHLO client.test").await;
    let r = c.cmd(&format!("MAIL FROM:<s{i}@org.test>")).await;
    if r.code != 250 {
        return r;
    }
    assert_eq!(c.cmd("RCPT TO:<r@nowhere.test>").await.code, 250);
    assert_eq!(c.cmd("DATA").await.code, 354);
    c.send(body).await;
    c.cmd(".").await
}

/// A spool on a 4 MiB tmpfs with a 1 MiB reserve and 256 KiB segments, delivery off.
/// The DNS world and CA live as long as the relay may be restarted.
async fn reserve_relay(
    dir: &Arc<tempfile::TempDir>,
    min_free: u64,
) -> (TestRelay, DnsWorld, TrustedCa) {
    let p = TrustedCa::new("tlsrelay test CA");
    let world = world("nowhere.test", "127.0.0.83").start().await;
    let text = config_text(dir.path(), &world, &p.root, free_port(), "enabled = false").replace(
        "[spool]\n",
        &format!("[spool]\nmin_free = {min_free}\nsegment_size = 262144\n"),
    );
    (TestRelay::start_with(dir.clone(), text).await, world, p)
}

#[tokio::test]
#[ignore = "needs root: mounts a tmpfs for the spool"]
async fn below_the_reserve_new_mail_gets_452_and_service_returns_with_space() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let spool_dir = dir.path().join("spool");
    let mount = Tmpfs::mount(&spool_dir, "4m");
    let (relay, _world, _ca) = reserve_relay(&dir, 1 << 20).await;
    let body = vec![b'x'; 32 * 1024];
    let body: Vec<u8> = body
        .chunks(998)
        .flat_map(|l| [l, b"\r\n"].concat())
        .collect();
    let mut acked = Vec::new();
    let refused = loop {
        let r = try_send(&relay, acked.len(), &body).await;
        if r.code != 250 {
            break r;
        }
        acked.push(r.text().rsplit(' ').next().unwrap().to_string());
        assert!(acked.len() < 200, "the reserve never applied");
    };
    assert_eq!(refused.code, 452, "{refused:?}");
    assert!(refused.text().starts_with("452 4.3.1 "), "{refused:?}");
    println!(
        "{} messages acknowledged before the reserve applied",
        acked.len()
    );
    assert!(acked.len() >= 40, "{}", acked.len());

    // Inside the reserve the queue can still change: delete most of it
    // (as delivery would), and whole segments come back.
    for id in &acked[..acked.len() - 5] {
        relay.spool.remove(id).unwrap();
    }
    relay.spool.compact().unwrap();
    println!(
        "after deleting: {:?} bytes free, segments {:?}",
        relay.spool.free_bytes(),
        relay.spool.segments()
    );
    let back = try_send(&relay, 999, &body).await;
    assert_eq!(back.code, 250, "service is back once space is: {back:?}");
    let mut kept: Vec<String> = acked[acked.len() - 5..].to_vec();
    kept.push(back.text().rsplit(' ').next().unwrap().to_string());
    for id in &kept {
        assert!(relay.spool.read_message(id).unwrap().ends_with(&body));
    }
    let (dir, text) = relay.stop().await;
    let relay = TestRelay::start_with(dir, text).await;
    let mut queued: Vec<String> = relay.spool.list().into_iter().map(|e| e.id).collect();
    queued.sort();
    kept.sort();
    assert_eq!(
        queued, kept,
        "nothing acknowledged lost, nothing deleted back"
    );
    assert!(relay.spool.recovery().dropped.is_empty());
    relay.stop().await;
    drop(mount);
}

#[tokio::test]
#[ignore = "needs root: mounts a tmpfs for the spool"]
async fn a_full_disk_at_the_end_of_data_gets_452_and_nothing_half_written_remains() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let spool_dir = dir.path().join("spool");
    let mount = Tmpfs::mount(&spool_dir, "2m");
    let (relay, _world, _ca) = reserve_relay(&dir, 0).await;
    let body = b"Subject: first\r\n\r\nbefore the disk filled\r\n".to_vec();
    let first = try_send(&relay, 0, &body).await;
    assert_eq!(first.code, 250, "{first:?}");
    let first = first.text().rsplit(' ').next().unwrap().to_string();
    let filler = fill(&spool_dir);
    let big: Vec<u8> = [b'y'; 998]
        .iter()
        .chain(b"\r\n")
        .copied()
        .cycle()
        .take(100 * 1000)
        .collect();
    let full = try_send(&relay, 1, &big).await;
    assert_eq!(full.code, 452, "{full:?}");
    assert!(full.text().starts_with("452 4.3.1 "), "{full:?}");
    std::fs::remove_file(filler).unwrap();
    let after = try_send(&relay, 2, &big).await;
    assert_eq!(after.code, 250, "{after:?}");
    let (dir, text) = relay.stop().await;
    let relay = TestRelay::start_with(dir, text).await;
    assert_eq!(
        relay.spool.len(),
        2,
        "the first and the last; the refused one never existed"
    );
    assert!(relay.spool.read_message(&first).unwrap().ends_with(&body));
    assert!(
        relay.spool.recovery().dropped.is_empty(),
        "{:?}",
        relay.spool.recovery()
    );
    relay.stop().await;
    drop(mount);
}
