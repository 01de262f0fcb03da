//! `tlsrelay reload` on a running server (the real binary): a new certificate,
//! a users file and a log level take effect without a restart; a changed limit
//! is named as needing one; a broken key keeps the old certificate in force.

mod support;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use rustls_pki_types::{CertificateDer, ServerName};
use support::child::start_relay_logging;
use support::client::Client;
use support::mx::free_port;
use support::pki::TestCa;

fn user_line(user: &str, password: &str) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt = SaltString::encode_b64(b"saltsaltsaltsalt").unwrap();
    let hash = argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .unwrap();
    format!("{user}:{hash}\n")
}

/// `tlsrelay reload -c config`: exit code and stdout.
fn reload(config: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tlsrelay"))
        .args(["reload", "-c"])
        .arg(config)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

/// Whether STARTTLS completes with a certificate that chains to `root`, and
/// whether the server then offers AUTH.
async fn starttls(addr: std::net::SocketAddr, root: CertificateDer<'static>) -> Option<bool> {
    let (mut c, _) = Client::connect(addr).await;
    c.cmd("EHLO client.test").await;
    assert_eq!(c.cmd("STARTTLS").await.code, 220);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = c.into_inner();
    let name = ServerName::try_from("relay.test").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .ok()?;
    let mut c = Client::from_stream_boxed(Box::new(tls));
    let ehlo = c.cmd("EHLO client.test").await;
    Some(ehlo.text().contains("AUTH"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_certificate_users_and_level_and_names_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (one, two) = (TestCa::new("reload CA one"), TestCa::new("reload CA two"));
    let (cert, key) = (d.join("cert.pem"), d.join("key.pem"));
    one.leaf(&["relay.test"]).write_pem(&cert, &key);
    let port = free_port();
    let base = format!(
        "[server]\nhostname = \"relay.test\"\nlisten = [\"127.0.0.1:{port}\"]\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
        cert.display(),
        key.display()
    );
    let rest = format!(
        "[spool]\ndir = \"{}\"\n[delivery]\nenabled = false\n[log]\nlevel = \"info\"\n",
        d.join("spool").display()
    );
    let config = d.join("tlsrelay.toml");
    std::fs::write(&config, format!("{base}{rest}")).unwrap();
    let log = d.join("relay.log");
    let relay = start_relay_logging(&config, port, &log).await;
    assert_eq!(
        starttls(relay.addr, one.root_der()).await,
        Some(false),
        "CA one, no AUTH"
    );

    // New certificate, a users file, debug logging and a new limit.
    two.leaf(&["relay.test"]).write_pem(&cert, &key);
    let users = d.join("users");
    std::fs::write(&users, user_line("alice", "pw")).unwrap();
    let text = format!(
        "{base}auth_users_file = \"{}\"\nmax_sessions = 7\n{}",
        users.display(),
        rest.replace("level = \"info\"", "level = \"debug\"")
    );
    std::fs::write(&config, text).unwrap();
    let (code, out) = reload(&config);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("certificate {}", cert.display())),
        "{out}"
    );
    assert!(out.contains(&format!("users {}", users.display())), "{out}");
    assert!(out.contains("log level debug"), "{out}");
    assert!(
        out.contains("changed, takes effect at the next restart: server.max_sessions"),
        "{out}"
    );
    assert!(
        !out.contains("log.level,"),
        "a reloaded key is not a restart: {out}"
    );
    assert_eq!(
        starttls(relay.addr, one.root_der()).await,
        None,
        "the old certificate is gone"
    );
    assert_eq!(
        starttls(relay.addr, two.root_der()).await,
        Some(true),
        "CA two, with AUTH"
    );

    // A key that does not match the certificate: refused, the old pair stays.
    one.leaf(&["relay.test"])
        .write_pem(d.join("other.pem"), &key);
    let (code, out) = reload(&config);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("error (the previous state stays in force): certificate or users"),
        "{out}"
    );
    assert_eq!(
        starttls(relay.addr, two.root_der()).await,
        Some(true),
        "still CA two"
    );
    relay.kill();
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("msg=reload applied="), "{log}");
    assert!(
        log.contains("level=debug"),
        "debug lines after the reload: {log}"
    );
}
