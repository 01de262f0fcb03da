//! Issue 16, finding 10, on the real binary and real sockets: terminal escapes
//! from the network never reach a terminal (log, `queue list/show`, `check`);
//! loopback destinations are refused unless the operator allows them; `config
//! check` and `serve` warn about open relays and loose key modes; an
//! authenticated user may only use the senders it owns.

mod support;

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use support::client::Client;
use support::dns_world::{DnsWorld, ZoneKind};
use support::mx::{free_port, MxOptions, MxServer};
use support::pki::TestCa;
use support::relay::{config_text, config_text_with_server, TestRelay};

const ESC: char = '\u{1b}';

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Runs the binary with `args`; returns the exit code, stdout and stderr.
fn tlsrelay(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tlsrelay"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Like `tlsrelay`, off the async runtime.
async fn tlsrelay_async(args: Vec<String>) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        tlsrelay(&args)
    })
    .await
    .unwrap()
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn b64(s: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// A users file line for `user` with `password` (argon2id defaults) and `owned` senders.
fn user_line(user: &str, password: &str, owned: &str) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt = SaltString::encode_b64(b"saltsaltsaltsalt").unwrap();
    let hash = argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .unwrap();
    format!("{user}:{hash} {owned}\n")
}

/// The real binary serving `config`, its stderr in `log`.
struct Served {
    child: Child,
    log: PathBuf,
}

impl Served {
    async fn start(config: &Path, log: PathBuf, port: u16) -> Served {
        let child = Command::new(env!("CARGO_BIN_EXE_tlsrelay"))
            .args(["serve", "--config"])
            // Tests run as root in CI; the refusal itself is tested in tests/service.rs.
            .env("TLSRELAY_ALLOW_ROOT", "1")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "relay did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Served { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log holds `needle`; returns the whole log.
    async fn wait_for(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the log:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes a self-signed certificate for relay.test; returns the `[server]` TOML and the root.
fn inbound_tls(dir: &Path) -> (String, rustls_pki_types::CertificateDer<'static>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["relay.test".to_string()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    set_mode(&dir.join("key.pem"), 0o600);
    let toml = format!(
        "tls_cert_file = \"{0}/cert.pem\"\ntls_key_file = \"{0}/key.pem\"\n",
        dir.display()
    );
    (toml, cert.der().clone())
}

/// The whole path of hostile text on the real binary: an AUTH user name and a
/// remote reply with escape sequences reach the log, a header and the reply
/// reach `queue list` and `queue show`; each shows them as `\x1b`, never raw.
/// Also: a users file readable by others is warned about at start; with
/// `sender_login_match` a user gets `553 5.7.1` for a sender it does not own;
/// the accepted line names the user.
#[tokio::test(flavor = "multi_thread")]
async fn serve_escapes_what_the_network_sends_and_binds_senders_to_users() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("hardening CA");
    let root = dir.path().join("ca.pem");
    ca.write_root_pem(&root);
    let mx_port = free_port();
    let hostile_reply = format!("451 4.7.1 {ESC}]0;pwned\u{7} greylisted {ESC}[2J");
    let mx = MxServer::start_on(
        ip("127.0.7.10"),
        mx_port,
        MxOptions {
            data_reply: Some(hostile_reply),
            ..MxOptions::with_cert(ca.leaf(&["mx.esc.test"]))
        },
    )
    .await
    .unwrap();
    let world = DnsWorld::builder()
        .zone("esc.test", ZoneKind::Unsigned)
        .mx("esc.test", 10, "mx.esc.test")
        .a("mx.esc.test", "127.0.7.10")
        .start()
        .await;
    let (tls, relay_root) = inbound_tls(dir.path());
    let users = dir.path().join("users");
    std::fs::write(&users, user_line("alice", "pw", "alice@esc.test")).unwrap();
    set_mode(&users, 0o644);
    let server = format!(
        "{tls}auth_users_file = \"{}\"\nsender_login_match = true\nrelay_networks = []\n",
        users.display()
    );
    let port = free_port();
    let text = config_text_with_server(dir.path(), &world, &root, mx_port, &server, "")
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    let config = dir.path().join("tlsrelay.toml");
    std::fs::write(&config, text).unwrap();
    let served = Served::start(&config, dir.path().join("serve.log"), port).await;
    let log = served.wait_for("listening").await;
    assert!(
        log.contains("auth_users_file") && log.contains("chmod 600"),
        "no warning about the users file's mode:\n{log}"
    );

    let (c, _) = Client::connect(format!("127.0.0.1:{port}").parse().unwrap()).await;
    let mut c = c;
    c.cmd("EHLO client.test").await;
    assert_eq!(c.cmd("STARTTLS").await.code, 220);
    let mut c = c.start_tls(relay_root, "relay.test").await;
    c.cmd("EHLO client.test").await;
    let hostile_user = format!("{ESC}]0;owned\u{7}root");
    let r = c
        .cmd(&format!(
            "AUTH PLAIN {}",
            b64(format!("\0{hostile_user}\0x").as_bytes())
        ))
        .await;
    assert_eq!(r.code, 535, "{r:?}");
    let r = c.cmd(&format!("AUTH PLAIN {}", b64(b"\0alice\0pw"))).await;
    assert_eq!(r.code, 235, "{r:?}");
    let r = c.cmd("MAIL FROM:<mallory@esc.test>").await;
    assert_eq!(r.code, 553, "{r:?}");
    assert!(r.text().starts_with("553 5.7.1 "), "{r:?}");
    assert!(r.text().contains("not owned by user alice"), "{r:?}");
    assert_eq!(c.cmd("MAIL FROM:<alice@esc.test>").await.code, 250);
    assert_eq!(c.cmd("RCPT TO:<bob@esc.test>").await.code, 250);
    assert_eq!(c.cmd("DATA").await.code, 354);
    c.send(format!("Subject: {ESC}[31mred{ESC}[0m\r\n\r\nhi\r\n").as_bytes())
        .await;
    let r = c.cmd(".").await;
    assert_eq!(r.code, 250, "{r:?}");
    let id = r.text().rsplit(' ').next().unwrap().to_string();

    let log = served.wait_for("greylisted").await;
    assert!(mx.stats().connections >= 1);
    assert!(!log.contains(ESC), "a raw ESC in the log:\n{log}");
    assert!(log.contains("\\x1b]0;owned\\x07root"), "{log}");
    assert!(
        log.contains("\\x1b]0;pwned\\x07 greylisted \\x1b[2J"),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("accepted") && l.contains("user=alice")),
        "{log}"
    );

    let cfg = config.display().to_string();
    let (code, list, err) = tlsrelay_async(vec![
        "--config".into(),
        cfg.clone(),
        "queue".into(),
        "list".into(),
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(!list.contains(ESC), "{list}");
    assert!(list.contains("\\x1b]0;pwned\\x07"), "{list}");
    let (code, show, err) = tlsrelay_async(vec![
        "--config".into(),
        cfg,
        "queue".into(),
        "show".into(),
        id,
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(!show.contains(ESC), "{show}");
    assert!(show.contains("Subject: \\x1b[31mred\\x1b[0m"), "{show}");
    assert!(show.contains("\\x1b]0;pwned\\x07"), "{show}");
}

/// `x@loop.test`, whose MX is on 127.0.0.x: refused by default (no connection,
/// a reason that says why), delivered with `allow_loopback_destinations`;
/// `check` agrees both ways, and shows a TXT record's escapes as text.
#[tokio::test(flavor = "multi_thread")]
async fn loopback_destinations_are_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("loopback CA");
    let root = dir.path().join("ca.pem");
    ca.write_root_pem(&root);
    let port = free_port();
    let mx = MxServer::start_on(
        ip("127.0.7.20"),
        port,
        MxOptions::with_cert(ca.leaf(&["mx.loop.test"])),
    )
    .await
    .unwrap();
    let world = DnsWorld::builder()
        .zone("loop.test", ZoneKind::Unsigned)
        .mx("loop.test", 10, "mx.loop.test")
        .a("mx.loop.test", "127.0.7.20")
        .aaaa("mx.loop.test", "::1")
        .txt_bytes(
            "_smtp._tls.loop.test",
            &[b"v=TLSRPTv1; rua=mailto:tls@loop.test\x1b[2J"],
        )
        .start()
        .await;
    let allowed = config_text(dir.path(), &world, &root, port, "");
    let refused = allowed.replace(
        "allow_loopback_destinations = true",
        "allow_loopback_destinations = false",
    );
    assert_ne!(allowed, refused);
    for (name, text) in [("allowed.toml", &allowed), ("refused.toml", &refused)] {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let check = |name: &str| {
        let cfg = dir.path().join(name).display().to_string();
        tlsrelay_async(vec![
            "--config".into(),
            cfg,
            "check".into(),
            "loop.test".into(),
        ])
    };
    let (code, out, err) = check("refused.toml").await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("cannot deliver"), "{out}");
    assert!(out.contains("only to loopback"), "{out}");
    assert!(!out.contains(ESC), "{out}");
    assert!(out.contains("tls@loop.test\\x1b[2J"), "{out}");
    let (code, out, err) = check("allowed.toml").await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("policy allows delivery to loop.test"), "{out}");

    // Delivery, refused: the recipient waits with the reason, no connection is made.
    let relay_dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let text = refused.replace(
        &dir.path().join("spool").display().to_string(),
        &relay_dir.path().join("spool").display().to_string(),
    );
    let relay = TestRelay::start_with(relay_dir, text).await;
    relay
        .submit(
            "a@sender.test",
            &["x@loop.test"],
            b"Subject: t\r\n\r\nhi\r\n",
        )
        .await;
    let deferred = relay
        .wait_queue(Duration::from_secs(20), |q| {
            q.iter()
                .any(|e| e.attempts > 0 && e.recipients[0].last_reason.is_some())
        })
        .await;
    assert!(deferred, "{:?}", relay.queue());
    let reason = relay.queue()[0].recipients[0].last_reason.clone().unwrap();
    assert!(reason.contains("127.0.7.20, ::1"), "{reason}");
    assert!(reason.contains("allow_loopback_destinations"), "{reason}");
    assert_eq!(mx.stats().connections, 0);
    relay.stop().await;

    // Allowed: delivered.
    let relay = TestRelay::start(&world, &root, port, "").await;
    relay
        .submit(
            "a@sender.test",
            &["x@loop.test"],
            b"Subject: t\r\n\r\nhi\r\n",
        )
        .await;
    let delivered = relay
        .wait_queue(Duration::from_secs(20), |q| q.is_empty())
        .await;
    assert!(delivered, "{:?}", relay.queue());
    assert_eq!(mx.received().len(), 1);
}

/// `config check` on the real binary: an open relay and secret files readable
/// by others are warnings that name the key or file and the fix; a tight
/// configuration is plainly ok.
#[test]
fn config_check_warns_about_open_relays_and_loose_modes() {
    let dir = tempfile::tempdir().unwrap();
    let (tls, _) = inbound_tls(dir.path());
    let users = dir.path().join("users");
    std::fs::write(&users, user_line("alice", "pw", "")).unwrap();
    let key = dir.path().join("key.pem");
    let write = |name: &str, server: &str| {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!(
                "[server]\nhostname = \"relay.test\"\n{server}\n{tls}auth_users_file = \"{}\"\n[spool]\ndir = \"{}\"\n",
                users.display(),
                dir.path().join("spool").display()
            ),
        )
        .unwrap();
        path.display().to_string()
    };
    let open = write(
        "open.toml",
        "listen = [\"0.0.0.0:25\"]\nrelay_networks = [\"0.0.0.0/0\", \"::/0\"]",
    );
    let tight = write(
        "tight.toml",
        "listen = [\"0.0.0.0:25\"]\nrelay_networks = [\"192.0.2.0/28\"]",
    );

    set_mode(&users, 0o666);
    set_mode(&key, 0o644);
    let (code, out, err) = tlsrelay(&["config", "check", &open]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ok, with 4 warning(s)"), "{out}");
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains(": warning: ")).collect();
    assert_eq!(warnings.len(), 4, "{err}");
    assert!(
        warnings.iter().all(|w| w.starts_with(&open)),
        "each warning names the file: {err}"
    );
    assert!(
        err.contains("open relay: server.relay_networks contains 0.0.0.0/0"),
        "{err}"
    );
    assert!(err.contains("contains ::/0"), "{err}");
    assert!(err.contains(&format!(
        "server.auth_users_file {} has mode 0666",
        users.display()
    )));
    assert!(err.contains(&format!(
        "server.tls_key_file {} has mode 0644",
        key.display()
    )));
    assert!(
        err.contains(&format!("chmod 600 {}", key.display())),
        "{err}"
    );

    set_mode(&users, 0o600);
    set_mode(&key, 0o600);
    let (code, out, err) = tlsrelay(&["config", "check", &tight]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, format!("{tight}: ok\n"));
    assert!(!err.contains("warning"), "{err}");
}
