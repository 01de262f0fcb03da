//! The whole relay running in the test process, wired to a DNS world and a test CA.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tlsrelay::config::Config;
use tlsrelay::relay::Relay;
use tlsrelay::spool::{Envelope, Spool};
use tokio::sync::watch;

use super::client::Client;
use super::dns_world::DnsWorld;

/// A running relay with its own spool directory.
pub struct TestRelay {
    pub addr: SocketAddr,
    pub spool: Spool,
    pub dir: Arc<tempfile::TempDir>,
    config_text: String,
    stop: watch::Sender<bool>,
    handle: tokio::task::JoinHandle<()>,
    announce: tokio::sync::mpsc::UnboundedSender<Envelope>,
}

/// Configuration text for a relay that resolves through `world`, trusts the CA
/// in `ca_pem`, delivers to `port`, and retries quickly. `delivery_extra` is TOML
/// for the `[delivery]` section.
pub fn config_text(
    dir: &Path,
    world: &DnsWorld,
    ca_pem: &Path,
    port: u16,
    delivery_extra: &str,
) -> String {
    config_text_with_server(dir, world, ca_pem, port, "", delivery_extra)
}

/// Like `config_text`, with extra TOML for the `[server]` section too.
pub fn config_text_with_server(
    dir: &Path,
    world: &DnsWorld,
    ca_pem: &Path,
    port: u16,
    server_extra: &str,
    delivery_extra: &str,
) -> String {
    format!(
        r#"# Off: its probes would add connections the tests of the MX hosts do not expect.
[warnings]
enabled = false
[server]
listen = ["127.0.0.1:0"]
hostname = "relay.test"
shutdown_grace = "5s"
{server_extra}
[spool]
dir = "{spool}"
[log]
level = "debug"
[delivery]
port = {port}
extra_roots = ["{ca}"]
connect_timeout = "3s"
command_timeout = "5s"
data_timeout = "5s"
queue_scan_interval = "1s"
# The test MX hosts listen on 127.0.0.x.
allow_loopback_destinations = true
{delivery_extra}
[dns]
nameservers = ["{dns}"]
trust_anchor_file = "{anchor}"
timeout = "2s"
attempts = 1
"#,
        spool = dir.join("spool").display(),
        ca = ca_pem.display(),
        dns = world.addr(),
        anchor = world.anchor_path().display(),
    )
}

impl TestRelay {
    /// Starts a relay that offers STARTTLS inbound (self-signed for relay.test);
    /// returns it and the certificate a client must trust.
    pub async fn start_with_inbound_tls(
        world: &DnsWorld,
        ca_pem: &Path,
        port: u16,
        delivery_extra: &str,
    ) -> (TestRelay, rustls_pki_types::CertificateDer<'static>) {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let cert = super::pki::self_signed(&["relay.test"]);
        let (chain, key) = (dir.path().join("relay.pem"), dir.path().join("relay.key"));
        cert.write_pem(&chain, &key);
        let server = format!(
            "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"",
            chain.display(),
            key.display()
        );
        let text =
            config_text_with_server(dir.path(), world, ca_pem, port, &server, delivery_extra);
        (
            TestRelay::start_with(dir, text).await,
            cert.leaf_der().clone(),
        )
    }

    /// Submits over STARTTLS (needed for REQUIRETLS), trusting `root`.
    pub async fn submit_tls(
        &self,
        root: rustls_pki_types::CertificateDer<'static>,
        mail: &str,
        to: &[&str],
        message: &[u8],
    ) -> String {
        let (mut c, _) = Client::connect(self.addr).await;
        c.cmd("EHLO client.test").await;
        assert_eq!(c.cmd("STARTTLS").await.code, 220);
        let mut c = c.start_tls(root, "relay.test").await;
        c.cmd("EHLO client.test").await;
        let r = c.cmd(mail).await;
        assert_eq!(r.code, 250, "{r:?}");
        for t in to {
            let r = c.cmd(&format!("RCPT TO:<{t}>")).await;
            assert_eq!(r.code, 250, "{r:?}");
        }
        assert_eq!(c.cmd("DATA").await.code, 354);
        c.send(message).await;
        let r = c.cmd(".").await;
        assert_eq!(r.code, 250, "{r:?}");
        r.text().rsplit(' ').next().unwrap().to_string()
    }

    /// Starts a relay from configuration text in a fresh directory.
    pub async fn start(
        world: &DnsWorld,
        ca_pem: &Path,
        port: u16,
        delivery_extra: &str,
    ) -> TestRelay {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let text = config_text(dir.path(), world, ca_pem, port, delivery_extra);
        TestRelay::start_with(dir, text).await
    }

    /// Starts a relay from configuration text in a directory the caller prepared
    /// (for example with a small file system mounted at `spool`).
    pub async fn start_with(dir: Arc<tempfile::TempDir>, text: String) -> TestRelay {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter("tlsrelay=debug")
            .try_init();
        let config = Config::parse(&text, None).unwrap();
        let relay = Relay::start(Arc::new(config)).await.unwrap();
        let spool = relay.spool().clone();
        let announce = relay.queue_sender();
        let addr = relay.local_addrs()[0];
        let (stop, rx) = watch::channel(false);
        let handle = tokio::spawn(relay.run(rx));
        TestRelay {
            addr,
            spool,
            dir,
            config_text: text,
            stop,
            handle,
            announce,
        }
    }

    /// Where messages queued by other means (a reporter built by a test) are announced.
    pub fn queue_sender(&self) -> tokio::sync::mpsc::UnboundedSender<Envelope> {
        self.announce.clone()
    }

    /// Stores a message behind the SMTP listener's back (as a hand or an older
    /// release may have written it) and announces it, as inbound would.
    pub fn store_and_announce(&self, env: &Envelope, message: &[u8]) {
        self.spool.store(env, message).unwrap();
        let _ = self.announce.send(env.clone());
    }

    /// The configuration text the relay runs with.
    pub fn config_text(&self) -> &str {
        &self.config_text
    }

    /// Stops the relay cleanly (as SIGTERM does) and waits for it.
    pub async fn stop(self) -> (Arc<tempfile::TempDir>, String) {
        let _ = self.stop.send(true);
        let _ = self.handle.await;
        (self.dir, self.config_text)
    }

    /// Stops and starts again on the same spool.
    pub async fn restart(self) -> TestRelay {
        let (dir, text) = self.stop().await;
        TestRelay::start_with(dir, text).await
    }

    /// Submits one message over SMTP; returns its queue id.
    pub async fn submit(&self, from: &str, to: &[&str], message: &[u8]) -> String {
        self.submit_with(&format!("MAIL FROM:<{from}>"), to, message)
            .await
    }

    /// Submits with a caller-written MAIL command (for parameters). The message is
    /// dot-stuffed here, so the relay stores exactly `message`.
    pub async fn submit_with(&self, mail: &str, to: &[&str], message: &[u8]) -> String {
        let (mut c, _) = Client::connect(self.addr).await;
        c.cmd("EHLO client.test").await;
        let r = c.cmd(mail).await;
        assert_eq!(r.code, 250, "{r:?}");
        for t in to {
            let r = c.cmd(&format!("RCPT TO:<{t}>")).await;
            assert_eq!(r.code, 250, "{r:?}");
        }
        assert_eq!(c.cmd("DATA").await.code, 354);
        let mut stuffed = Vec::with_capacity(message.len() + 8);
        let mut at_start = true;
        for &b in message {
            if at_start && b == b'.' {
                stuffed.push(b'.');
            }
            stuffed.push(b);
            at_start = b == b'\n';
        }
        c.send(&stuffed).await;
        let r = c.cmd(".").await;
        assert_eq!(r.code, 250, "{r:?}");
        c.cmd("QUIT").await;
        r.text().rsplit(' ').next().unwrap().to_string()
    }

    /// The queued envelopes.
    pub fn queue(&self) -> Vec<Envelope> {
        self.spool.list()
    }

    /// Waits until `pred` holds for the queue (10 s at most); returns whether it did.
    pub async fn wait_queue(&self, timeout: Duration, pred: impl Fn(&[Envelope]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if pred(&self.queue()) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every outcome record written so far.
    pub fn outcomes(&self) -> Vec<tlsrelay::reporting::outcome::Outcome> {
        let dir = self.dir.path().join("spool/outcomes");
        let mut all = Vec::new();
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                all.extend(text.lines().filter_map(|l| serde_json::from_str(l).ok()));
            }
        }
        all
    }

    /// Waits until every message in `ids` has had an attempt (or left the queue), 30 s at most.
    pub async fn wait_attempted(&self, ids: &[String]) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline
            && !ids
                .iter()
                .all(|id| self.spool.load(id).map(|e| e.attempts >= 1).unwrap_or(true))
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The last reason recorded for the first recipient of `id` (empty once delivered).
    pub fn last_reason(&self, id: &str) -> String {
        self.spool
            .load(id)
            .ok()
            .and_then(|e| e.recipients[0].last_reason.clone())
            .unwrap_or_default()
    }

    /// The spool directory path.
    pub fn spool_dir(&self) -> PathBuf {
        self.dir.path().join("spool")
    }
}
