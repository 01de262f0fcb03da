//! Running `tlsrelay serve` as a service, on the real binary: root is refused
//! without `[server] user`; with it, the listeners are bound as root and every
//! spool file is created by that user; spool files are private whatever the umask.

mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::client::Client;
use support::mx::free_port;

const BIN: &str = env!("CARGO_BIN_EXE_tlsrelay");

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A config listening on `port` with its spool at `spool`, delivery off, plus `server_extra`.
fn write_config(dir: &Path, port: u16, spool: &Path, server_extra: &str) -> PathBuf {
    let path = dir.join("tlsrelay.toml");
    let text = format!(
        "[server]\nlisten = [\"127.0.0.1:{port}\"]\nhostname = \"relay.test\"\n{server_extra}\n\
         [spool]\ndir = \"{}\"\n[delivery]\nenabled = false\n[tls_rpt]\nenabled = false\n",
        spool.display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// `tlsrelay serve -c config` with `umask`; `allow_root` sets the test-suite
/// escape hatch (TLSRELAY_ALLOW_ROOT=1), which is otherwise removed.
fn spawn_serve(config: &Path, umask: libc::mode_t, allow_root: bool) -> Child {
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "-c"]).arg(config);
    if allow_root {
        cmd.env("TLSRELAY_ALLOW_ROOT", "1");
    } else {
        cmd.env_remove("TLSRELAY_ALLOW_ROOT");
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: umask is async-signal-safe and touches nothing but the child.
    unsafe {
        cmd.pre_exec(move || {
            libc::umask(umask);
            Ok(())
        });
    }
    cmd.spawn().unwrap()
}

/// Waits until the relay accepts on `port`, failing with its stderr if it exits first.
async fn wait_listening(child: &mut Child, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!("relay exited with {status} before listening: {err}");
        }
        assert!(Instant::now() < deadline, "relay did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One message through SMTP; the 250 means it is in the spool.
async fn relay_one(port: u16) {
    let (mut c, greeting) = Client::connect(format!("127.0.0.1:{port}").parse().unwrap()).await;
    assert_eq!(greeting.code, 220);
    assert_eq!(c.cmd("EHLO client.test").await.code, 250);
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").await.code, 250);
    assert_eq!(c.cmd("RCPT TO:<b@example.net>").await.code, 250);
    assert_eq!(c.cmd("DATA").await.code, 354);
    let reply = c.cmd("Subject: service test\r\n\r\nhello\r\n.").await;
    assert_eq!(reply.code, 250, "{}", reply.text());
    c.cmd("QUIT").await;
}

/// SIGTERM, then the exit status and stderr.
fn stop(child: Child) -> Output {
    // SAFETY: kill with a pid we own.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait_with_output().unwrap()
}

/// Every path under `dir`, `dir` included.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    if dir.is_dir() {
        for e in std::fs::read_dir(dir).unwrap() {
            out.extend(walk(&e.unwrap().path()));
        }
    }
    out
}

/// A `Key:` line of /proc/PID/status, tabs and all.
fn proc_status(pid: u32, key: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(key)).unwrap();
    line[key.len()..].trim().to_string()
}

#[tokio::test]
async fn serve_as_root_without_user_is_refused() {
    if !is_root() {
        eprintln!("skipped: needs root (CI runs as root)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let spool = dir.path().join("spool");
    let config = write_config(dir.path(), port, &spool, "");
    let out = spawn_serve(&config, 0o077, false)
        .wait_with_output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let want = format!(
        "tlsrelay: refusing to run as root: set [server] user = \"tlsrelay\" in {}, or run as an unprivileged user\n",
        config.display()
    );
    assert_eq!(stderr, want);
    assert!(!spool.exists(), "nothing may be created before the refusal");
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[tokio::test]
async fn serve_as_root_binds_then_runs_as_the_configured_user() {
    if !is_root() {
        eprintln!("skipped: needs root (CI runs as root)");
        return;
    }
    let nobody = (65534, 65534);
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // A directory only `nobody` may write: the spool inside is created by the relay.
    let base = dir.path().join("base");
    std::fs::create_dir(&base).unwrap();
    std::os::unix::fs::chown(&base, Some(nobody.0), Some(nobody.1)).unwrap();
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o700)).unwrap();
    let spool = base.join("spool");
    // Below 1024: only root can bind it, so listening there proves the bind came first.
    let port = (600..1000)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port below 1024");
    let config = write_config(dir.path(), port, &spool, "user = \"nobody\"");
    let mut child = spawn_serve(&config, 0o022, false);
    wait_listening(&mut child, port).await;
    let pid = child.id();
    assert_eq!(proc_status(pid, "Uid:"), "65534\t65534\t65534\t65534");
    assert_eq!(proc_status(pid, "Gid:"), "65534\t65534\t65534\t65534");
    assert_eq!(proc_status(pid, "CapEff:"), "0000000000000000");
    assert_eq!(proc_status(pid, "CapPrm:"), "0000000000000000");
    relay_one(port).await;
    let out = stop(child);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("msg=\"switched from root to the configured user\" user=nobody uid=65534"),
        "{stderr}"
    );
    let files = walk(&spool);
    assert!(files.len() > 3, "the spool holds files: {files:?}");
    for f in files {
        let m = std::fs::symlink_metadata(&f).unwrap();
        assert_eq!(
            (m.uid(), m.gid()),
            nobody,
            "{} not created by nobody",
            f.display()
        );
    }
}

#[tokio::test]
async fn spool_files_are_private_under_umask_022() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let port = free_port();
    // As root, the test-suite escape hatch keeps root (the user switch has its own test).
    let config = write_config(dir.path(), port, &spool, "");
    let mut child = spawn_serve(&config, 0o022, true);
    wait_listening(&mut child, port).await;
    relay_one(port).await;
    // Listed while it runs: the control socket exists only then.
    let during = walk(&spool);
    let out = stop(child);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(during.len() > 3, "the spool holds files: {during:?}");
    let loose: Vec<String> = during
        .iter()
        .filter_map(|f| {
            let m = std::fs::symlink_metadata(f).ok()?;
            let mode = m.permissions().mode() & 0o777;
            let want = if m.is_dir() { 0o700 } else { 0o600 };
            (mode != want).then(|| format!("{} {mode:o}", f.display()))
        })
        .collect();
    assert!(loose.is_empty(), "not 0700/0600 under umask 022: {loose:?}");
}
