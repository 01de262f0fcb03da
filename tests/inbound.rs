//! The inbound server, spoken to over real sockets.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;

use support::client::Client;
use tlsrelay::config::Config;
use tlsrelay::inbound::Inbound;
use tlsrelay::spool::{DsnRet, Envelope, Spool};

struct Server {
    addr: SocketAddr,
    spool: Spool,
    _dir: tempfile::TempDir,
    _stop: tokio::sync::watch::Sender<bool>,
}

/// A server on 127.0.0.1:<ephemeral> with a fresh spool; `extra` is TOML for `[server]`.
async fn start(extra: &str) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nhostname = \"relay.test\"\n{extra}\n[spool]\ndir = \"{}\"\n",
        dir.path().display()
    );
    let config = Config::parse(&text, None).unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let inbound = Inbound::bind(Arc::new(config), spool.clone(), None)
        .await
        .unwrap();
    let addr = inbound.local_addrs()[0];
    let (stop, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(inbound.run(rx));
    Server {
        addr,
        spool,
        _dir: dir,
        _stop: stop,
    }
}

fn queued(spool: &Spool) -> Vec<Envelope> {
    spool.list()
}

/// The stored message without our Received header (which is its first field).
fn body_after_received(stored: &[u8]) -> &[u8] {
    assert!(stored.starts_with(b"Received: from "));
    let mut i = 0;
    loop {
        let nl = stored[i..].iter().position(|&b| b == b'\n').unwrap() + i;
        if !matches!(stored.get(nl + 1), Some(b' ') | Some(b'\t')) {
            return &stored[nl + 1..];
        }
        i = nl + 1;
    }
}

const MSG: &[u8] = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: hi\r\n\r\nline one\r\n..dot-stuffed line\r\nlast\r\n";

#[tokio::test]
async fn pipelined_transaction_is_stored_byte_for_byte() {
    let s = start("").await;
    let (mut c, greeting) = Client::connect(s.addr).await;
    assert_eq!(greeting.code, 220);
    assert!(greeting.text().contains("relay.test"));
    let ehlo = c.cmd("EHLO client.test").await;
    for cap in [
        "PIPELINING",
        "SIZE 52428800",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "CHUNKING",
        "DSN",
    ] {
        assert!(
            ehlo.lines.iter().any(|l| l[4..] == *cap),
            "{cap} missing: {ehlo:?}"
        );
    }
    assert!(
        !ehlo.text().contains("STARTTLS"),
        "no certificate, no STARTTLS"
    );
    // Everything up to DATA in one write, as a PIPELINING client does.
    c.send(b"MAIL FROM:<a@example.org> BODY=8BITMIME\r\nRCPT TO:<b@example.net>\r\nRCPT TO:<c@example.net>\r\nDATA\r\n")
        .await;
    let codes: Vec<u16> = [
        c.read().await,
        c.read().await,
        c.read().await,
        c.read().await,
    ]
    .iter()
    .map(|r| r.code)
    .collect();
    assert_eq!(codes, vec![250, 250, 250, 354]);
    c.send(MSG).await;
    let done = c.cmd(".").await;
    assert_eq!(done.code, 250, "{done:?}");
    assert!(done.text().starts_with("250 2.0.0 Ok: queued as "));
    assert_eq!(c.cmd("QUIT").await.code, 221);

    let q = queued(&s.spool);
    assert_eq!(q.len(), 1);
    let env = &q[0];
    assert!(done.text().ends_with(&env.id));
    assert_eq!(env.sender, "a@example.org");
    let rcpts: Vec<_> = env.recipients.iter().map(|r| r.address.as_str()).collect();
    assert_eq!(rcpts, ["b@example.net", "c@example.net"]);
    let stored = s.spool.read_message(&env.id).unwrap();
    let unstuffed = MSG.to_vec();
    let want: Vec<u8> = String::from_utf8(unstuffed)
        .unwrap()
        .replace("\n..dot", "\n.dot")
        .into_bytes();
    assert_eq!(body_after_received(&stored), want.as_slice());
    let received = String::from_utf8_lossy(&stored[..stored.len() - want.len()]).into_owned();
    assert!(
        received.contains("from client.test ([127.0.0.1])"),
        "{received}"
    );
    assert!(
        received.contains("by relay.test (tlsrelay) with ESMTP id"),
        "{received}"
    );
    assert_eq!(env.size as usize, stored.len());
}

#[tokio::test]
async fn bdat_chunks_make_one_message() {
    let s = start("").await;
    let (mut c, _) = Client::connect(s.addr).await;
    c.cmd("EHLO client.test").await;
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").await.code, 250);
    assert_eq!(c.cmd("RCPT TO:<b@example.net>").await.code, 250);
    c.send(b"BDAT 12\r\nSubject: x\r\n").await;
    assert_eq!(c.read().await.code, 250);
    // A chunk may contain a lone "." line: BDAT does no dot-stuffing.
    c.send(b"BDAT 10 LAST\r\n\r\n.\r\nend\r\n").await;
    let r = c.read().await;
    assert!(r.text().starts_with("250 2.0.0 Ok: queued as"), "{r:?}");
    let env = &queued(&s.spool)[0];
    let stored = s.spool.read_message(&env.id).unwrap();
    assert_eq!(
        body_after_received(&stored),
        b"Subject: x\r\n\r\n.\r\nend\r\n"
    );
    // DATA after BDAT in one transaction is refused.
    c.cmd("MAIL FROM:<a@example.org>").await;
    c.cmd("RCPT TO:<b@example.net>").await;
    c.send(b"BDAT 3\r\nabc").await;
    assert_eq!(c.read().await.code, 250);
    assert_eq!(c.cmd("DATA").await.code, 503);
}

#[tokio::test]
async fn dsn_parameters_are_kept() {
    let s = start("").await;
    let (mut c, _) = Client::connect(s.addr).await;
    c.cmd("EHLO client.test").await;
    assert_eq!(
        c.cmd("MAIL FROM:<a@example.org> RET=HDRS ENVID=QQ+2Bid")
            .await
            .code,
        250
    );
    let r = c
        .cmd("RCPT TO:<b@example.net> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;orig+2Bb@example.net")
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    assert_eq!(
        c.cmd("RCPT TO:<c@example.net> NOTIFY=NEVER").await.code,
        250
    );
    c.cmd("DATA").await;
    c.send(MSG).await;
    assert_eq!(c.cmd(".").await.code, 250);
    let env = &queued(&s.spool)[0];
    assert_eq!(env.ret, Some(DsnRet::Hdrs));
    assert_eq!(env.envid.as_deref(), Some("QQ+id"));
    assert_eq!(env.recipients[0].notify.to_string(), "success,delay");
    assert_eq!(
        env.recipients[0].orcpt.as_deref(),
        Some("orig+b@example.net")
    );
    assert_eq!(env.recipients[1].notify.to_string(), "never");
}

#[tokio::test]
async fn size_limit_is_enforced_before_and_during_data() {
    let s = start("max_message_size = 1000").await;
    let (mut c, _) = Client::connect(s.addr).await;
    let ehlo = c.cmd("EHLO client.test").await;
    assert!(ehlo.text().contains("250-SIZE 1000"));
    let r = c.cmd("MAIL FROM:<a@example.org> SIZE=5000").await;
    assert_eq!(r.code, 552);
    assert!(r.text().starts_with("552 5.3.4 "), "{r:?}");
    // A client that lies about SIZE (or gives none) is stopped while sending.
    c.cmd("MAIL FROM:<a@example.org>").await;
    c.cmd("RCPT TO:<b@example.net>").await;
    assert_eq!(c.cmd("DATA").await.code, 354);
    let big = vec![b'x'; 3000];
    c.send(b"Subject: big\r\n\r\n").await;
    c.send(&big).await;
    let r = c.cmd("\r\n.").await;
    assert!(r.text().starts_with("552 5.3.4 "), "{r:?}");
    assert!(queued(&s.spool).is_empty());
    // The session goes on.
    assert_eq!(c.cmd("NOOP").await.code, 250);
    // BDAT over the limit too.
    c.cmd("MAIL FROM:<a@example.org>").await;
    c.cmd("RCPT TO:<b@example.net>").await;
    c.send(b"BDAT 3000 LAST\r\n").await;
    c.send(&big).await;
    assert!(c.read().await.text().starts_with("552 5.3.4 "));
    assert!(queued(&s.spool).is_empty());
}

#[tokio::test]
async fn too_many_recipients() {
    let s = start("max_recipients = 2").await;
    let (mut c, _) = Client::connect(s.addr).await;
    c.cmd("EHLO client.test").await;
    c.cmd("MAIL FROM:<a@example.org>").await;
    assert_eq!(c.cmd("RCPT TO:<b1@example.net>").await.code, 250);
    assert_eq!(c.cmd("RCPT TO:<b2@example.net>").await.code, 250);
    let r = c.cmd("RCPT TO:<b3@example.net>").await;
    assert!(r.text().starts_with("452 4.5.3 "), "{r:?}");
    c.cmd("DATA").await;
    c.send(MSG).await;
    assert_eq!(c.cmd(".").await.code, 250);
    assert_eq!(queued(&s.spool)[0].recipients.len(), 2);
}

#[tokio::test]
async fn syntax_errors_get_precise_replies() {
    let s = start("").await;
    let (mut c, _) = Client::connect(s.addr).await;
    let cases: &[(&str, &str)] = &[
        ("MAIL FROM:<a@example.org>", "503 5.5.1 "), // before EHLO
        ("EHLO", "501 5.5.4 "),
        ("FROB", "500 5.5.2 "),
        ("EHLO client.test", "250"),
        ("RCPT TO:<b@example.net>", "503 5.5.1 "),
        ("MAIL FROM:a@example.org", "501 5.5.4 "),
        ("MAIL FROM:<a@example.org> FOO=BAR", "555 5.5.4 "),
        ("MAIL FROM:<a@example.org> BODY=BINARYMIME", "555 5.5.4 "),
        ("MAIL FROM:<a@example.org>", "250 2.1.0 "),
        ("MAIL FROM:<a@example.org>", "503 5.5.1 "),
        ("RCPT TO:<nodomain>", "501 5.1.3 "),
        ("RCPT TO:<b@example.net> NOTIFY=SOMETIMES", "501 5.5.4 "),
        ("RCPT TO:<bé@example.net>", "553 5.6.7 "),
        ("DATA", "503 5.5.1 "),
        ("VRFY b", "252 2.5.2 "),
        ("RSET", "250 2.0.0 "),
        ("HELP", "214 2.0.0 "),
        ("QUIT", "221 2.0.0 "),
    ];
    for (cmd, want) in cases {
        let r = c.cmd(cmd).await;
        assert!(
            r.lines.last().unwrap().starts_with(want) || r.lines[0].starts_with(want),
            "{cmd}: {r:?}"
        );
    }
}

#[tokio::test]
async fn over_long_line_is_refused_and_the_session_goes_on() {
    let s = start("max_line_length = 600").await;
    let (mut c, _) = Client::connect(s.addr).await;
    c.cmd("EHLO client.test").await;
    let long = format!("MAIL FROM:<{}@example.org>", "a".repeat(5000));
    let r = c.cmd(&long).await;
    assert!(r.text().starts_with("500 5.5.2 Line too long"), "{r:?}");
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").await.code, 250);
}

#[tokio::test]
async fn data_timeout_closes_without_storing() {
    let s = start("data_timeout = \"1s\"").await;
    let (mut c, _) = Client::connect(s.addr).await;
    c.cmd("EHLO client.test").await;
    c.cmd("MAIL FROM:<a@example.org>").await;
    c.cmd("RCPT TO:<b@example.net>").await;
    c.cmd("DATA").await;
    c.send(b"Subject: half a message\r\n").await;
    let r = c.read().await;
    assert!(r.text().starts_with("421 4.4.2 "), "{r:?}");
    assert!(c.closed().await);
    assert!(queued(&s.spool).is_empty());
}

#[tokio::test]
async fn relay_refused_outside_relay_networks() {
    let s = start("relay_networks = [\"192.0.2.0/24\"]").await;
    let (mut c, _) = Client::connect(s.addr).await;
    c.cmd("EHLO client.test").await;
    c.cmd("MAIL FROM:<a@example.org>").await;
    let r = c.cmd("RCPT TO:<b@example.net>").await;
    assert!(
        r.text().starts_with(
            "554 5.7.1 Relay access denied: 127.0.0.1 is not in server.relay_networks"
        ),
        "{r:?}"
    );
}

#[tokio::test]
async fn too_many_errors_closes_the_session() {
    let s = start("max_errors = 3").await;
    let (mut c, _) = Client::connect(s.addr).await;
    for _ in 0..3 {
        assert_eq!(c.cmd("FROB").await.code, 500);
    }
    c.send(b"FROB\r\n").await;
    assert_eq!(c.read().await.code, 500);
    let r = c.read().await;
    assert!(r.text().starts_with("421 4.7.0 "), "{r:?}");
    assert!(c.closed().await);
}

#[tokio::test]
async fn sessions_per_client_are_limited() {
    let s = start("max_sessions_per_client = 2").await;
    let (_a, ga) = Client::connect(s.addr).await;
    let (_b, gb) = Client::connect(s.addr).await;
    let (_c, gc) = Client::connect(s.addr).await;
    assert_eq!((ga.code, gb.code), (220, 220));
    assert!(gc.text().starts_with("421 4.7.0 "), "{gc:?}");
}

/// A self-signed server certificate for relay.test and its files.
fn tls_files(dir: &std::path::Path) -> (String, rustls_pki_types::CertificateDer<'static>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["relay.test".to_string()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    let toml = format!(
        "tls_cert_file = \"{0}/cert.pem\"\ntls_key_file = \"{0}/key.pem\"\n",
        dir.display()
    );
    (toml, cert.der().clone())
}

#[tokio::test]
async fn starttls_forgets_earlier_state_and_pipelined_commands() {
    let certs = tempfile::tempdir().unwrap();
    let (toml, root) = tls_files(certs.path());
    let s = start(&toml).await;
    let (mut c, _) = Client::connect(s.addr).await;
    let ehlo = c.cmd("EHLO client.test").await;
    assert!(ehlo.text().contains("STARTTLS"));
    assert!(
        !ehlo.text().contains("REQUIRETLS"),
        "REQUIRETLS only after TLS"
    );
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").await.code, 250);
    // A command injected after STARTTLS in the same packet must be ignored.
    c.send(b"STARTTLS\r\nRSET\r\n").await;
    let r = c.read().await;
    assert!(r.text().starts_with("220 2.0.0 "), "{r:?}");
    let mut c = c.start_tls(root, "relay.test").await;
    // The MAIL from before TLS is forgotten, and so is EHLO.
    assert_eq!(c.cmd("RCPT TO:<b@example.net>").await.code, 503);
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").await.code, 503);
    let ehlo = c.cmd("EHLO client.test").await;
    assert!(!ehlo.text().contains("STARTTLS"));
    assert!(ehlo.text().contains("REQUIRETLS"));
    assert_eq!(
        c.cmd("MAIL FROM:<a@example.org> REQUIRETLS").await.code,
        250
    );
    c.cmd("RCPT TO:<b@example.net>").await;
    c.cmd("DATA").await;
    c.send(MSG).await;
    assert_eq!(c.cmd(".").await.code, 250);
    let env = &queued(&s.spool)[0];
    assert!(env.requiretls);
    assert!(env.client.tls.as_deref().unwrap().starts_with("TLSv1.3 "));
    let stored = String::from_utf8(s.spool.read_message(&env.id).unwrap()).unwrap();
    assert!(stored.contains("with ESMTPS id"), "{stored}");
    assert!(
        stored.contains("(version=TLSv1.3 cipher=TLS13_"),
        "{stored}"
    );
}

#[tokio::test]
async fn auth_is_refused_before_tls_and_works_after() {
    use argon2::password_hash::{PasswordHasher, SaltString};
    use base64::Engine;
    let certs = tempfile::tempdir().unwrap();
    let (toml, root) = tls_files(certs.path());
    let salt = SaltString::encode_b64(b"saltsaltsaltsalt").unwrap();
    let hash = argon2::Argon2::default()
        .hash_password(b"correct horse", &salt)
        .unwrap()
        .to_string();
    std::fs::write(certs.path().join("users"), format!("alice:{hash}\n")).unwrap();
    let extra = format!(
        "{toml}auth_users_file = \"{}/users\"\nrelay_networks = [\"192.0.2.0/24\"]\n",
        certs.path().display()
    );
    let s = start(&extra).await;
    let (mut c, _) = Client::connect(s.addr).await;
    let ehlo = c.cmd("EHLO client.test").await;
    assert!(
        !ehlo.text().contains("AUTH"),
        "AUTH must not be offered in clear"
    );
    let b64 = |s: &[u8]| base64::engine::general_purpose::STANDARD.encode(s);
    let r = c
        .cmd(&format!("AUTH PLAIN {}", b64(b"\0alice\0correct horse")))
        .await;
    assert!(
        r.text()
            .starts_with("530 5.7.0 Must issue a STARTTLS command first"),
        "{r:?}"
    );
    assert_eq!(c.cmd("STARTTLS").await.code, 220);
    let mut c = c.start_tls(root, "relay.test").await;
    let ehlo = c.cmd("EHLO client.test").await;
    assert!(ehlo.text().contains("AUTH PLAIN LOGIN"));
    c.cmd("MAIL FROM:<a@example.org>").await;
    assert_eq!(
        c.cmd("RCPT TO:<b@example.net>").await.code,
        554,
        "not yet authenticated"
    );
    c.cmd("RSET").await;
    let r = c
        .cmd(&format!("AUTH PLAIN {}", b64(b"\0alice\0wrong")))
        .await;
    assert!(r.text().starts_with("535 5.7.8 "), "{r:?}");
    assert_eq!(c.cmd("AUTH LOGIN").await.code, 334);
    assert_eq!(c.cmd(&b64(b"alice")).await.code, 334);
    let r = c.cmd(&b64(b"correct horse")).await;
    assert!(r.text().starts_with("235 2.7.0 "), "{r:?}");
    c.cmd("MAIL FROM:<a@example.org>").await;
    assert_eq!(c.cmd("RCPT TO:<b@example.net>").await.code, 250);
    c.cmd("DATA").await;
    c.send(MSG).await;
    assert_eq!(c.cmd(".").await.code, 250);
    let env = &queued(&s.spool)[0];
    assert_eq!(env.client.auth_user.as_deref(), Some("alice"));
}

/// Whether `data` holds a CR not followed by LF or an LF not preceded by CR.
fn has_bare_line_end(data: &[u8]) -> bool {
    data.iter().enumerate().any(|(i, &b)| match b {
        b'\r' => data.get(i + 1) != Some(&b'\n'),
        b'\n' => i == 0 || data[i - 1] != b'\r',
        _ => false,
    })
}

/// EHLO and MAIL and RCPT, ready for DATA or BDAT.
async fn ready_for_data(addr: SocketAddr) -> Client {
    let (mut c, _) = Client::connect(addr).await;
    c.cmd("EHLO client.test").await;
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").await.code, 250);
    assert_eq!(c.cmd("RCPT TO:<b@example.net>").await.code, 250);
    c
}

#[tokio::test]
async fn lone_dot_right_after_354_ends_the_data() {
    let s = start("").await;
    let mut c = ready_for_data(s.addr).await;
    assert_eq!(c.cmd("DATA").await.code, 354);
    // Before the fix the `.` and QUIT were swallowed into the body (no reply).
    c.send(b".\r\nQUIT\r\n").await;
    let done = c.read().await;
    assert!(
        done.text().starts_with("250 2.0.0 Ok: queued as "),
        "{done:?}"
    );
    assert_eq!(c.read().await.code, 221);
    let q = queued(&s.spool);
    let stored = s.spool.read_message(&q[0].id).unwrap();
    assert_eq!(body_after_received(&stored), b"");
}

#[tokio::test]
async fn first_data_line_is_dot_unstuffed() {
    let s = start("").await;
    let mut c = ready_for_data(s.addr).await;
    assert_eq!(c.cmd("DATA").await.code, 354);
    c.send(b"..x\r\nbody\r\n").await;
    assert_eq!(c.cmd(".").await.code, 250);
    let q = queued(&s.spool);
    let stored = s.spool.read_message(&q[0].id).unwrap();
    assert_eq!(
        String::from_utf8_lossy(body_after_received(&stored)),
        ".x\r\nbody\r\n"
    );
}

#[tokio::test]
async fn starttls_with_parameters_and_ehlo_with_controls_are_refused() {
    let certs = tempfile::tempdir().unwrap();
    let (toml, _root) = tls_files(certs.path());
    let s = start(&toml).await;
    let (mut c, _) = Client::connect(s.addr).await;
    let r = c.cmd("EHLO a\0b").await;
    assert!(r.text().starts_with("501 5.5.2 "), "{r:?}");
    assert!(!r.text().contains('\0'), "the argument is not echoed");
    let r = c.cmd("HELO a\x07b").await;
    assert!(r.text().starts_with("501 5.5.2 "), "{r:?}");
    assert!(c.cmd("EHLO client.test").await.text().contains("STARTTLS"));
    let r = c.cmd("STARTTLS now").await;
    assert!(r.text().starts_with("501 5.5.4 "), "{r:?}");
    // Still in plaintext and in step: the plain command works.
    assert_eq!(c.cmd("NOOP").await.code, 250);
    assert!(c.cmd("STARTTLS").await.text().starts_with("220 2.0.0 "));
}

#[tokio::test]
async fn bare_cr_and_lf_in_data_and_bdat_are_stored_as_crlf() {
    let s = start("").await;
    // DATA: bare CR, bare LF, and the smuggling shapes `\r.\r\n`, `\n.\n`, `\r\n.\r`.
    let mut c = ready_for_data(s.addr).await;
    assert_eq!(c.cmd("DATA").await.code, 354);
    c.send(b"Subject: s\r\n\r\na\rb\nc\r.\r\nMAIL FROM:<admin@example.org>\r\nd\n.\ne\r\n.\rf\r\n")
        .await;
    let r = c.cmd(".").await;
    assert_eq!(r.code, 250, "{r:?}");
    // BDAT: the same bytes in two chunks, split inside a CR LF pair.
    let mut c = ready_for_data(s.addr).await;
    c.send(b"BDAT 5\r\nx\ry\r\r").await;
    assert_eq!(c.read().await.code, 250);
    c.send(b"BDAT 5 LAST\r\n\nz\n.\r").await;
    let r = c.read().await;
    assert_eq!(r.code, 250, "{r:?}");
    let q = queued(&s.spool);
    assert_eq!(q.len(), 2);
    let mut bodies: Vec<String> = q
        .iter()
        .map(|e| {
            let stored = s.spool.read_message(&e.id).unwrap();
            assert!(!has_bare_line_end(&stored), "{stored:?}");
            String::from_utf8_lossy(body_after_received(&stored)).into_owned()
        })
        .collect();
    bodies.sort();
    assert_eq!(
        bodies,
        [
            "Subject: s\r\n\r\na\r\nb\r\nc\r\n.\r\nMAIL FROM:<admin@example.org>\r\nd\r\n.\r\ne\r\n.\r\nf\r\n",
            "x\r\ny\r\n\r\nz\r\n.\r\n",
        ]
    );
}

#[tokio::test]
async fn addresses_keep_their_quoting_meaning_and_controls_are_refused() {
    let s = start("").await;
    let (mut c, _) = Client::connect(s.addr).await;
    c.cmd("EHLO client.test").await;
    let r = c.cmd("MAIL FROM:<\"a\0b\"@example.org>").await;
    assert!(r.text().starts_with("553 5.1.7 "), "{r:?}");
    let r = c.cmd("MAIL FROM:<\"x> RET=FULL\"@example.org>").await;
    assert_eq!(r.code, 250, "{r:?}");
    let r = c.cmd("RCPT TO:<\"v\x01w\"@example.net>").await;
    assert!(r.text().starts_with("553 5.1.3 "), "{r:?}");
    let r = c.cmd("RCPT TO:<\"v\\\rw\"@example.net>").await;
    assert!(r.text().starts_with("553 5.1.3 "), "{r:?}");
    let r = c
        .cmd("RCPT TO:<\"victim@other.test> ORCPT=rfc822;x\"@example.net>")
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    assert_eq!(c.cmd("DATA").await.code, 354);
    assert_eq!(c.cmd("Subject: q\r\n\r\nx\r\n.").await.code, 250);
    let q = queued(&s.spool);
    assert_eq!(q[0].sender, "x> RET=FULL@example.org");
    assert_eq!(
        q[0].recipients[0].address,
        "victim@other.test> ORCPT=rfc822;x@example.net"
    );
}
