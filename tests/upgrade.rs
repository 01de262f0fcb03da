//! Upgrade: a spool in the earlier one-file-per-message layout (a fixture in
//! the repository) is converted at start and its mail delivered.

mod support;

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use support::dns_world::{DnsWorld, ZoneKind};
use support::mx::{free_port, MxOptions, MxServer};
use support::pki::TrustedCa;
use support::relay::{config_text, TestRelay};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Copies the fixture spool; arrival times become now, or the queue lifetime
/// would bounce the messages instead of delivering them.
fn copy_fixture(to: &Path) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/spool-v1");
    for sub in ["queue", "tmp"] {
        std::fs::create_dir_all(to.join(sub)).unwrap();
        for entry in std::fs::read_dir(from.join(sub)).unwrap() {
            let path = entry.unwrap().path();
            let mut bytes = std::fs::read(&path).unwrap();
            if path.extension().is_some_and(|x| x == "env") {
                let mut env: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                env["received_at"] = tlsrelay::spool::now_unix().into();
                bytes = serde_json::to_vec_pretty(&env).unwrap();
            }
            std::fs::write(to.join(sub).join(path.file_name().unwrap()), bytes).unwrap();
        }
    }
}

#[tokio::test]
async fn a_spool_of_the_earlier_layout_is_converted_and_delivered() {
    let p = TrustedCa::new("upgrade CA");
    let port = free_port();
    let mx = MxServer::start_on(
        ip("127.0.0.41"),
        port,
        MxOptions::with_cert(p.ca.leaf(&["mx1.example.test"])),
    )
    .await
    .unwrap();
    let world = DnsWorld::builder()
        .zone("example.test", ZoneKind::Signed)
        .mx("example.test", 10, "mx1.example.test")
        .a("mx1.example.test", "127.0.0.41")
        .start()
        .await;
    let dir = Arc::new(tempfile::tempdir().unwrap());
    copy_fixture(&dir.path().join("spool"));
    let text = config_text(dir.path(), &world, &p.root, port, "");
    let relay = TestRelay::start_with(dir.clone(), text).await;
    let rec = relay.spool.recovery();
    assert_eq!(rec.imported.messages, 2, "{rec:?}");
    assert_eq!(
        rec.imported.discarded_partial, 1,
        "the partial file in tmp/"
    );
    assert!(rec.imported.corrupt.is_empty());

    assert!(
        mx.wait_for_messages(2, Duration::from_secs(20)).await,
        "{}",
        mx.transcript_text()
    );
    assert!(
        relay
            .wait_queue(Duration::from_secs(10), |q| q.is_empty())
            .await
    );
    let mut rcpts: Vec<String> = mx
        .received()
        .iter()
        .flat_map(|m| m.rcpt_addresses())
        .collect();
    rcpts.sort();
    assert_eq!(
        rcpts,
        ["bob@example.test", "dave@example.test"],
        "carol had her copy already"
    );
    for m in mx.received() {
        assert!(m
            .data_str()
            .contains("Subject: written by the one-file-per-message spool\r\n"));
    }
    let spool = dir.path().join("spool");
    assert_eq!(
        std::fs::read_to_string(spool.join("VERSION")).unwrap(),
        "2\n"
    );
    assert!(!spool.join("queue").exists() && !spool.join("tmp").exists());
    relay.stop().await;
}
