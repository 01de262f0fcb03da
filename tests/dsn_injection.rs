//! ENVID and ORCPT values cannot put lines of their own into a bounce: xtext
//! that decodes to control characters is refused at MAIL and RCPT, and the DSN
//! builder never writes a line break taken from an envelope into a field.

mod support;

use std::net::IpAddr;
use std::time::Duration;

use support::client::Client;
use support::dns_world::{DnsWorld, ZoneKind};
use support::mx::{free_port, MxOptions, MxServer};
use support::pki::TrustedCa;
use support::relay::TestRelay;
use tlsrelay::model::notify::Notify;
use tlsrelay::spool::Envelope;

const INJECTED_ENVID: &str = "ENV+0D+0AX-Injected-Field:+20yes+0D+0A+0D+0A--fake-boundary";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[tokio::test]
async fn xtext_decoding_to_control_characters_is_refused_at_mail_and_rcpt() {
    let p = TrustedCa::new("tlsrelay test CA");
    let world = DnsWorld::builder()
        .zone("org.test", ZoneKind::Unsigned)
        .start()
        .await;
    let relay = TestRelay::start(&world, &p.root, free_port(), "enabled = false").await;
    let (mut c, _) = Client::connect(relay.addr).await;
    c.cmd("EHLO client.test").await;
    for mail in [
        format!("MAIL FROM:<a@org.test> ENVID={INJECTED_ENVID}"),
        "MAIL FROM:<a@org.test> ENVID=A+00B".into(),
        "MAIL FROM:<a@org.test> ENVID=A+09B".into(),
        "MAIL FROM:<a@org.test> ENVID=A+7FB".into(),
    ] {
        let r = c.cmd(&mail).await;
        assert_eq!(r.code, 501, "{mail}: {r:?}");
        assert!(
            r.text().starts_with("501 5.5.4 ENVID") && r.text().contains("control character"),
            "{mail}: {r:?}"
        );
    }
    // Printable values, encoded spaces included, are fine.
    let r = c.cmd("MAIL FROM:<a@org.test> ENVID=QQ+20314159").await;
    assert_eq!(r.code, 250, "{r:?}");
    for rcpt in [
        "RCPT TO:<b@x.test> ORCPT=rfc822;b+0D+0AX-Injected-Field:+20yes@x.test",
        "RCPT TO:<b@x.test> ORCPT=rfc822;b+0A@x.test",
        "RCPT TO:<b@x.test> ORCPT=rfc822;b+1B[2J@x.test",
    ] {
        let r = c.cmd(rcpt).await;
        assert_eq!(r.code, 501, "{rcpt}: {r:?}");
        assert!(
            r.text().starts_with("501 5.5.4 ORCPT") && r.text().contains("control character"),
            "{rcpt}: {r:?}"
        );
    }
    let r = c
        .cmd("RCPT TO:<b@x.test> ORCPT=rfc822;George+20@Tax-+20ME+20.GOV")
        .await;
    assert_eq!(r.code, 250, "{r:?}");
}

#[tokio::test]
async fn bounce_of_an_envelope_with_line_breaks_has_no_injected_lines() {
    let p = TrustedCa::new("tlsrelay test CA");
    let port = free_port();
    let sink = MxServer::start_on(
        ip("127.0.0.99"),
        port,
        MxOptions::with_cert(p.ca.leaf(&["mx.org.test"])),
    )
    .await
    .unwrap();
    let _mx = MxServer::start_on(
        ip("127.0.0.83"),
        port,
        MxOptions::with_cert(p.ca.leaf(&["mx.bounce.test"]))
            .rcpt_reply("gone", "550 5.1.1 no such user"),
    )
    .await
    .unwrap();
    let world = DnsWorld::builder()
        .zone("org.test", ZoneKind::Unsigned)
        .mx("org.test", 10, "mx.org.test")
        .a("mx.org.test", "127.0.0.99")
        .zone("bounce.test", ZoneKind::Unsigned)
        .mx("bounce.test", 10, "mx.bounce.test")
        .a("mx.bounce.test", "127.0.0.83")
        .start()
        .await;
    let relay = TestRelay::start(&world, &p.root, port, "").await;
    // An envelope from the spool (as an older version, or a hand, may have
    // written it) with line breaks in ENVID and ORCPT.
    let message = b"Subject: x\r\n\r\nhello\r\n";
    let mut env = Envelope::generated(
        "relay.test",
        "sender@org.test",
        "gone@bounce.test",
        Notify::default(),
        message.len() as u64,
    );
    env.envid = Some("ENV\r\nX-Injected-Field: yes\r\n\r\n--fake-boundary".into());
    env.recipients[0].orcpt = Some("gone@bounce.test\r\nX-Injected-Orcpt: yes".into());
    relay.store_and_announce(&env, message);
    assert!(
        sink.wait_for_messages(1, Duration::from_secs(15)).await,
        "the bounce arrives"
    );
    let dsn = sink.received()[0].data_str();
    for line in dsn.split("\r\n") {
        assert!(
            !line.starts_with("X-Injected") && !line.starts_with("--fake-boundary"),
            "injected line {line:?} in\n{dsn}"
        );
    }
    assert!(
        dsn.contains("Original-Envelope-Id: ENV+0D+0AX-Injected-Field:"),
        "{dsn}"
    );
    assert!(
        dsn.contains("Original-Recipient: rfc822; gone@bounce.test+0D+0AX-Injected-Orcpt:"),
        "{dsn}"
    );
    assert!(
        dsn.contains("Final-Recipient: rfc822; gone@bounce.test"),
        "{dsn}"
    );
}
