//! The Prometheus endpoint, scraped after a small run, shows that run's counts.

mod support;

use std::time::Duration;

use support::dns_world::{DnsWorld, ZoneKind};
use support::mx::{free_port, MxOptions, MxServer};
use support::pki::TestCa;
use support::relay::TestRelay;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn scrape(port: u16) -> String {
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

fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_endpoint_shows_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("metrics CA");
    let root = dir.path().join("ca.pem");
    ca.write_root_pem(&root);
    let port = free_port();
    let good = MxServer::start_on(
        "127.0.8.10".parse().unwrap(),
        port,
        MxOptions::with_cert(ca.leaf(&["mx.good.test"])),
    )
    .await
    .unwrap();
    let _plain = MxServer::start_on("127.0.8.11".parse().unwrap(), port, MxOptions::plaintext())
        .await
        .unwrap();
    let world = DnsWorld::builder()
        .zone("good.test", ZoneKind::Unsigned)
        .mx("good.test", 10, "mx.good.test")
        .a("mx.good.test", "127.0.8.10")
        .zone("plain.test", ZoneKind::Unsigned)
        .mx("plain.test", 10, "mx.plain.test")
        .a("mx.plain.test", "127.0.8.11")
        .start()
        .await;
    let metrics_port = free_port();
    let relay = TestRelay::start(
        &world,
        &root,
        port,
        &format!("retry_schedule = [\"1h\"]\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\""),
    )
    .await;
    relay
        .submit(
            "sender@org.test",
            &["a@good.test"],
            b"Subject: 1\r\n\r\nx\r\n",
        )
        .await;
    relay
        .submit(
            "sender@org.test",
            &["b@plain.test"],
            b"Subject: 2\r\n\r\nx\r\n",
        )
        .await;
    assert!(good.wait_for_messages(1, Duration::from_secs(10)).await);
    assert!(
        relay
            .wait_queue(Duration::from_secs(10), |q| q.len() == 1
                && q[0].attempts >= 1)
            .await
    );
    tokio::time::sleep(Duration::from_millis(1500)).await; // one queue scan for the gauges
    let text = scrape(metrics_port).await;
    assert_eq!(
        value(&text, "tlsrelay_messages_accepted_total"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "tlsrelay_deliveries_total{result=\"delivered\",auth=\"verify\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "tlsrelay_deliveries_total{result=\"deferred\",auth=\"none\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "tlsrelay_tls_refusals_total{result_type=\"starttls-not-supported\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(value(&text, "tlsrelay_queue_messages"), Some(1.0), "{text}");
}
