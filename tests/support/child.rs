//! The real `tlsrelay` binary as a child process, for tests that kill it.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `tlsrelay serve` and the address it listens on.
pub struct Relay {
    /// The `tlsrelay serve` process.
    pub child: Child,
    /// Where it accepts SMTP.
    pub addr: SocketAddr,
}

impl Relay {
    /// SIGKILL, then reap the process.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// Starts `tlsrelay serve --config config` (stderr discarded) and waits until
/// it accepts connections on 127.0.0.1:`port`.
pub async fn start_relay(config: &Path, port: u16) -> Relay {
    spawn(config, port, Stdio::null()).await
}

/// Like [`start_relay`], with the relay's stderr appended to `log`.
pub async fn start_relay_logging(config: &Path, port: u16, log: &Path) -> Relay {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    spawn(config, port, Stdio::from(file)).await
}

async fn spawn(config: &Path, port: u16, stderr: Stdio) -> Relay {
    let child = Command::new(env!("CARGO_BIN_EXE_tlsrelay"))
        .args(["serve", "--config"])
        // Tests run as root in CI; the refusal itself is tested in tests/service.rs.
        .env("TLSRELAY_ALLOW_ROOT", "1")
        .arg(config)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // Generous: start-up recovers the spool, and the machine may be busy.
    let deadline = Instant::now() + Duration::from_secs(60);
    // A connection that meets itself (the kernel picked the port we wait for as
    // its source, TCP self-connect) is not the relay listening.
    let listening = |s: &tokio::net::TcpStream| s.local_addr().ok() != s.peer_addr().ok();
    while !tokio::net::TcpStream::connect(addr)
        .await
        .is_ok_and(|s| listening(&s))
    {
        assert!(Instant::now() < deadline, "relay did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Relay { child, addr }
}

/// `tlsrelay queue list --json` for the spool of `config`.
pub fn queue_json(config: &Path) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_tlsrelay"))
        .args(["queue", "list", "--json", "--config"])
        .arg(config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Runs `tlsrelay --config FILE ARGS…` to its end: the exit code, and stdout then stderr.
pub fn run_cli(config: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tlsrelay"))
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}
