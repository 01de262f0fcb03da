//! A real `redis-server` (the Debian package) on a free loopback port, for the
//! cluster tests; stopped (SIGKILL) and started again on the same port at will.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `redis-server`.
pub struct RedisServer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    child: Option<Child>,
    /// Certificate chain and key files: TLS only.
    tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// Whether the tests may run: `redis-server` is installed. Without it the tests
/// skip loudly, unless `CI` is set: then its absence is a failure.
pub fn available(test: &str) -> bool {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false");
        assert!(
            !ci,
            "{test}: redis-server is not installed (apt-get install -y redis-server); CI needs it"
        );
        eprintln!(
            "SKIPPED {test}: redis-server is not installed (apt-get install -y redis-server)"
        );
    }
    found
}

impl RedisServer {
    /// Starts a server with no persistence on a free port.
    pub fn start() -> RedisServer {
        let mut r = RedisServer {
            port: super::mx::free_port(),
            child: None,
            tls: None,
        };
        r.start_again();
        r
    }

    /// Starts a server that speaks TLS only, with the chain and key in these files.
    pub fn start_tls(chain: &std::path::Path, key: &std::path::Path) -> RedisServer {
        let mut r = RedisServer {
            port: super::mx::free_port(),
            child: None,
            tls: Some((chain.to_path_buf(), key.to_path_buf())),
        };
        r.start_again();
        r
    }

    /// The URL for `[cluster] redis`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Kills the server (its data is gone: no persistence).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub fn start_again(&mut self) {
        self.stop();
        let port = self.port.to_string();
        let mut cmd = Command::new("redis-server");
        match &self.tls {
            None => cmd.args(["--bind", "127.0.0.1", "--port", &port]),
            Some((chain, key)) => cmd
                .args(["--bind", "127.0.0.1", "--port", "0", "--tls-port", &port])
                .arg("--tls-cert-file")
                .arg(chain)
                .arg("--tls-key-file")
                .arg(key)
                .args(["--tls-auth-clients", "no"]),
        };
        let child = cmd
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
