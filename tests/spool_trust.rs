//! The spool's contents are not trusted by the real binary: odd entries in
//! `tmp/` do not stop start-up, an envelope naming another id is set aside, and
//! removing the `lock` file does not let a second relay onto the same spool.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn write_config(dir: &Path, name: &str, port: u16) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = [\"127.0.0.1:{port}\"]\nhostname = \"relay.test\"\n[spool]\ndir = \"{}/spool\"\n[delivery]\nenabled = false\n",
            dir.display()
        ),
    )
    .unwrap();
    path
}

fn spawn(config: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_tlsrelay"))
        .args(["serve", "--config"])
        // Tests run as root in CI; the refusal itself is tested in tests/service.rs.
        .env("TLSRELAY_ALLOW_ROOT", "1")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until the relay listens on `port`, or panics with its stderr if it exits.
fn wait_listening(child: &mut Child, port: u16) {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(addr).is_err() {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!("relay exited with {status}: {err}");
        }
        assert!(Instant::now() < deadline, "relay did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn odd_tmp_entries_and_foreign_ids_do_not_stop_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    for sub in ["tmp/leftover-dir/deeper", "queue"] {
        std::fs::create_dir_all(spool.join(sub)).unwrap();
    }
    std::fs::write(spool.join("tmp/leftover-dir/deeper/f"), b"x").unwrap();
    std::fs::write(spool.join("tmp/AAAA0002.msg"), b"partial").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", spool.join("tmp/link")).unwrap();
    // An envelope whose id field points outside the spool, next to a file there.
    std::fs::write(dir.path().join("outside.msg"), b"not queued mail").unwrap();
    let env = include_str!("fixtures/envelope-v1.env")
        .replace("\"6A1B2C3D0E0F1A2B\"", "\"../../outside\"");
    std::fs::write(spool.join("queue/AAAA0001.env"), env).unwrap();
    std::fs::write(spool.join("queue/AAAA0001.msg"), b"x").unwrap();

    let port = free_port();
    let mut relay = spawn(&write_config(dir.path(), "a.toml", port));
    wait_listening(&mut relay, port);
    relay.kill().unwrap();
    relay.wait().unwrap();

    // The earlier layout's tmp/ is emptied (and removed) by the import.
    assert!(!spool.join("tmp").exists(), "tmp/ is gone after start-up");
    assert!(spool.join("corrupt/leftover-dir/deeper/f").exists());
    assert!(spool.join("corrupt/AAAA0001.env").exists());
    assert!(!spool.join("queue/AAAA0001.env").exists());
    assert!(dir.path().join("outside.msg").exists());
    assert!(Path::new("/etc/passwd").exists());
}

#[test]
fn second_relay_refuses_the_spool_even_when_the_lock_file_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let (port_a, port_b) = (free_port(), free_port());
    let mut a = spawn(&write_config(dir.path(), "a.toml", port_a));
    wait_listening(&mut a, port_a);
    std::fs::remove_file(dir.path().join("spool/lock")).unwrap();

    let mut b = spawn(&write_config(dir.path(), "b.toml", port_b));
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = b.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = b.kill();
    let _ = b.wait();
    let _ = a.kill();
    let _ = a.wait();
    let status = status.expect("the second relay kept running on a spool in use");
    assert!(!status.success());
    let mut err = String::new();
    use std::io::Read;
    b.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(err.contains("in use by another tlsrelay process"), "{err}");
}
