//! Interoperability with a real receiving MTA: Debian's Postfix, started by hand
//! on loopback as the MX host of the test domains.
//!
//! These tests are `#[ignore]`: they need root and `/usr/sbin/postfix`. Run them with
//! `cargo test --test interop_postfix_mx -- --ignored --test-threads=1`.
//!
//! Each test writes its own Postfix instance into a temporary directory (main.cf,
//! master.cf, spool, data, maillog, Maildir), starts it with `postfix -c DIR start`
//! and stops it when the guard is dropped, also on panic. The instance listens on
//! two addresses with the same port:
//! - `127.0.0.110:P`: smtpd with STARTTLS (`smtpd_tls_security_level = may`), a
//!   certificate for `mx1.pf.test` from the test CA, and a Received header that
//!   records the TLS version and cipher;
//! - `127.0.0.111:P`: the same smtpd with `smtpd_tls_security_level = none`, so
//!   STARTTLS is not offered.
//!
//! Every recipient of every domain is delivered into one Maildir (`catchall/`).
//! Postfix never does DNS here (`smtpd_peername_lookup = no`, nothing is forwarded).

mod support;

use std::fs;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use support::dns_world::{DnsWorld, ZoneKind};
use support::mx::free_port;
use support::pki::TestCa;
use support::relay::TestRelay;
use tlsrelay::reporting::outcome::ResultType;
use tlsrelay::spool::RcptState;

const POSTFIX: &str = "/usr/sbin/postfix";
const TLS_ADDR: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 110);
const NOTLS_ADDR: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 111);
/// The syslog name of the listener without STARTTLS, to find its log lines.
const NOTLS_SYSLOG: &str = "postfix-pfmx/notls";

/// Panics with a clear message unless this process can run a Postfix instance.
fn require_postfix() {
    if !Path::new(POSTFIX).exists() {
        panic!(
            "{POSTFIX} is missing: this test needs Debian's postfix package \
             (apt-get install -y --no-install-recommends postfix, with debconf \
             postfix/main_mailer_type = 'Local only' and a policy-rc.d that exits 101)"
        );
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!("this test starts a Postfix instance and must run as root");
    }
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// The numeric uid or gid printed by `id` (`-u` or `-g`) for `user`.
fn id_of(flag: &str, user: &str) -> u32 {
    let out = run(Command::new("id").arg(flag).arg(user));
    assert!(out.status.success(), "id {flag} {user}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// Whether a TCP socket listens on `ip:port` (read from /proc/net/tcp, so that
/// probing does not open an SMTP session that would show up in the maillog).
fn listening(ip: Ipv4Addr, port: u16) -> bool {
    let want = format!("{:08X}:{:04X}", u32::from_le_bytes(ip.octets()), port);
    fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1] == want && f[3] == "0A"
        })
}

/// A Postfix instance in a temporary directory; stopped on drop.
struct PostfixMx {
    etc: PathBuf,
    spool: PathBuf,
    maildir: PathBuf,
    maillog: PathBuf,
    port: u16,
    // Last field: removed after `Drop::drop` has stopped Postfix.
    _dir: tempfile::TempDir,
}

impl PostfixMx {
    /// Writes the configuration and certificates, starts Postfix and waits until
    /// both listeners are up.
    fn start(ca: &TestCa, port: u16) -> PostfixMx {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().to_path_buf();
        // Postfix's daemons (user postfix) and the virtual delivery agent (user
        // nobody) must be able to walk into the directory.
        fs::set_permissions(&base, fs::Permissions::from_mode(0o755)).unwrap();
        let etc = base.join("etc");
        let spool = base.join("spool");
        let data = base.join("data");
        let mail = base.join("mail");
        let pki = base.join("pki");
        for d in [&etc, &spool, &data, &mail, &pki] {
            fs::create_dir(d).unwrap();
        }
        let postfix_uid = id_of("-u", "postfix");
        let postfix_gid = id_of("-g", "postfix");
        let nobody_uid = id_of("-u", "nobody");
        let nobody_gid = id_of("-g", "nobody");
        std::os::unix::fs::chown(&data, Some(postfix_uid), Some(postfix_gid)).unwrap();
        std::os::unix::fs::chown(&mail, Some(nobody_uid), Some(nobody_gid)).unwrap();

        // smtpd reads its key as root before dropping privileges, so 0600 is fine.
        let key = pki.join("mx1.key");
        let chain = pki.join("mx1-chain.pem");
        ca.leaf(&["mx1.pf.test"]).write_pem(&chain, &key);
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();

        let maillog = base.join("maillog");
        let main_cf = format!(
            "\
compatibility_level = 3.6
queue_directory = {spool}
data_directory = {data}
maillog_file = {maillog}
maillog_file_prefixes = /var, /dev/stdout, {base}
syslog_name = postfix-pfmx
inet_protocols = ipv4
# 127.0.0.110/111 are not interface addresses (only 127.0.0.1/8 is on lo): Postfix
# refuses them here, so listen on 'all' and name the exact host:port in master.cf.
inet_interfaces = all
myhostname = mx1.pf.test
mydomain = pf.test
myorigin = $myhostname
mynetworks = 127.0.0.0/8
mydestination =
relay_domains =
local_recipient_maps =
alias_maps =
alias_database =
biff = no
smtpd_peername_lookup = no
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_recipient_restrictions =
# Do not rewrite headers of mail from 127.0.0.1 (an interface address): the
# message must arrive as the relay sent it.
local_header_rewrite_clients =
smtpd_banner = $myhostname ESMTP tlsrelay-interop
smtpd_tls_security_level = may
smtpd_tls_chain_files = {key}, {chain}
smtpd_tls_loglevel = 1
smtpd_tls_received_header = yes
relayhost =
smtp_tls_security_level = none
virtual_mailbox_domains = static:all
virtual_mailbox_maps = static:catchall/
virtual_mailbox_base = {mail}
virtual_uid_maps = static:{nobody_uid}
virtual_gid_maps = static:{nobody_gid}
virtual_mailbox_limit = 0
local_transport = error:local delivery disabled
default_transport = error:this MX does not forward
",
            spool = spool.display(),
            data = data.display(),
            maillog = maillog.display(),
            base = base.display(),
            key = key.display(),
            chain = chain.display(),
            mail = mail.display(),
        );
        fs::write(etc.join("main.cf"), main_cf).unwrap();
        let master_cf = format!(
            "\
# service  type  private unpriv  chroot  wakeup  maxproc command
pickup     unix  n       -       n       60      1       pickup
cleanup    unix  n       -       n       -       0       cleanup
qmgr       unix  n       -       n       300     1       qmgr
tlsmgr     unix  -       -       n       1000?   1       tlsmgr
rewrite    unix  -       -       n       -       -       trivial-rewrite
bounce     unix  -       -       n       -       0       bounce
defer      unix  -       -       n       -       0       bounce
trace      unix  -       -       n       -       0       bounce
verify     unix  -       -       n       -       1       verify
flush      unix  n       -       n       1000?   0       flush
proxymap   unix  -       -       n       -       -       proxymap
proxywrite unix  -       -       n       -       1       proxymap
smtp       unix  -       -       n       -       -       smtp
relay      unix  -       -       n       -       -       smtp
showq      unix  n       -       n       -       -       showq
error      unix  -       -       n       -       -       error
retry      unix  -       -       n       -       -       error
discard    unix  -       -       n       -       -       discard
virtual    unix  -       n       n       -       -       virtual
anvil      unix  -       -       n       -       1       anvil
scache     unix  -       -       n       -       1       scache
tlsproxy   unix  -       -       n       -       0       tlsproxy
postlog    unix-dgram n  -       n       -       1       postlogd
{TLS_ADDR}:{port} inet n - n - - smtpd
{NOTLS_ADDR}:{port} inet n - n - - smtpd -o smtpd_tls_security_level=none -o syslog_name={NOTLS_SYSLOG}
"
        );
        fs::write(etc.join("master.cf"), master_cf).unwrap();

        // The guard exists before `start`, so a half-started instance is stopped too.
        let mx = PostfixMx {
            etc,
            spool,
            maildir: mail.join("catchall"),
            maillog,
            port,
            _dir: dir,
        };
        let out = run(Command::new(POSTFIX).arg("-c").arg(&mx.etc).arg("start"));
        if !out.status.success() {
            panic!(
                "postfix -c {} start failed: {out:?}\n{}\nmaillog:\n{}",
                mx.etc.display(),
                mx.check_on_tty(),
                mx.maillog_text()
            );
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while !(listening(TLS_ADDR, port) && listening(NOTLS_ADDR, port)) {
            if Instant::now() > deadline {
                panic!(
                    "Postfix does not listen on {TLS_ADDR}:{port} and {NOTLS_ADDR}:{port} \
                     after 15 s\nmaillog:\n{}",
                    mx.maillog_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        mx
    }

    /// `postfix check` run under `script`: postfix prints its errors only to a tty.
    fn check_on_tty(&self) -> String {
        let out = run(Command::new("script")
            .arg("-qc")
            .arg(format!("{POSTFIX} -c {} check", self.etc.display()))
            .arg("/dev/null"));
        format!(
            "postfix check: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    fn maillog_text(&self) -> String {
        fs::read_to_string(&self.maillog).unwrap_or_default()
    }

    /// The delivered messages (files in `catchall/new`), oldest name first.
    fn delivered(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = fs::read_dir(self.maildir.join("new"))
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort();
        files
    }

    /// Waits (at most `timeout`) until `n` messages are in the Maildir.
    async fn wait_delivered(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.delivered().len() < n {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        true
    }

    /// The master's pid, if Postfix wrote one.
    fn master_pid(&self) -> Option<i32> {
        fs::read_to_string(self.spool.join("pid/master.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for PostfixMx {
    fn drop(&mut self) {
        let started = Instant::now();
        let pid = self.master_pid();
        let _ = Command::new(POSTFIX)
            .arg("-c")
            .arg(&self.etc)
            .arg("stop")
            .output();
        // Wait (bounded) for the master to exit, so the next test can reuse the
        // addresses and the temporary directory can be removed.
        if let Some(pid) = pid {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while (listening(TLS_ADDR, self.port) || listening(NOTLS_ADDR, self.port))
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("Postfix instance stopped in {:?}", started.elapsed());
    }
}

/// A test CA with its root written to a file the relay trusts.
struct Pki {
    ca: TestCa,
    root: PathBuf,
    _dir: tempfile::TempDir,
}

fn pki() -> Pki {
    let ca = TestCa::new("tlsrelay interop CA");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("ca.pem");
    ca.write_root_pem(&root);
    Pki {
        ca,
        root,
        _dir: dir,
    }
}

/// Postfix, the DNS world and the relay, wired together.
async fn setup() -> (Pki, PostfixMx, DnsWorld, TestRelay) {
    require_postfix();
    let p = pki();
    let port = free_port();
    let started = Instant::now();
    let mx = PostfixMx::start(&p.ca, port);
    eprintln!(
        "Postfix listening on {TLS_ADDR}:{port} and {NOTLS_ADDR}:{port} after {:?}",
        started.elapsed()
    );
    let world = DnsWorld::builder()
        .zone("pf.test", ZoneKind::Unsigned)
        .mx("pf.test", 10, "mx1.pf.test")
        .a("mx1.pf.test", &TLS_ADDR.to_string())
        .zone("notls.test", ZoneKind::Unsigned)
        .mx("notls.test", 10, "mx.notls.test")
        .a("mx.notls.test", &NOTLS_ADDR.to_string())
        .start()
        .await;
    let relay = TestRelay::start(&world, &p.root, port, "retry_schedule = [\"1h\"]").await;
    (p, mx, world, relay)
}

/// A message with the things a receiving MTA might be tempted to touch: lines that
/// start with dots, trailing white space, a tab, a long line.
fn message(tag: &str) -> Vec<u8> {
    let long = "x".repeat(900);
    format!(
        "Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n\
         From: Sender <sender@org.test>\r\n\
         To: User <user@pf.test>\r\n\
         Message-ID: <{tag}@org.test>\r\n\
         Subject: interop {tag}\r\n\
         \r\n\
         Hello {tag}.\r\n\
         .leading dot\r\n\
         ..two dots\r\n\
         .\tdot and tab\r\n\
         trailing spaces   \r\n\
         {long}\r\n\
         last line\r\n"
    )
    .into_bytes()
}

/// The header named `name` (first one), unfolded.
fn header(text: &str, name: &str) -> Option<String> {
    let head = text.split("\n\n").next().unwrap_or("");
    let prefix = format!("{}:", name.to_ascii_lowercase());
    let mut lines = head.lines().peekable();
    while let Some(line) = lines.next() {
        if line.to_ascii_lowercase().starts_with(&prefix) {
            let mut value = line[prefix.len()..].trim().to_string();
            while let Some(next) = lines.peek() {
                if next.starts_with(' ') || next.starts_with('\t') {
                    value.push(' ');
                    value.push_str(next.trim());
                    lines.next();
                } else {
                    break;
                }
            }
            return Some(value);
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and /usr/sbin/postfix"]
async fn delivers_to_real_postfix_over_verified_tls() {
    let (_p, mx, _world, relay) = setup().await;
    let started = Instant::now();
    let body = message("verified");
    let id = relay
        .submit("sender@org.test", &["user@pf.test"], &body)
        .await;
    assert!(
        mx.wait_delivered(1, Duration::from_secs(30)).await,
        "nothing in the Maildir after 30 s; queue: {:?}\nmaillog:\n{}",
        relay.queue(),
        mx.maillog_text()
    );
    eprintln!("delivered into the Maildir in {:?}", started.elapsed());
    let files = mx.delivered();
    assert_eq!(files.len(), 1, "{files:?}");
    let got = fs::read(&files[0]).unwrap();
    let text = String::from_utf8(got.clone()).expect("UTF-8 message");
    eprintln!(
        "--- delivered file, headers ---\n{}",
        text.split("\n\n").next().unwrap()
    );

    // Maildir files have LF line ends; SMTP dot-stuffing is undone.
    let want: Vec<u8> = String::from_utf8(body.clone())
        .unwrap()
        .replace("\r\n", "\n")
        .into_bytes();
    assert!(
        got.ends_with(&want),
        "the submitted message must arrive intact at the end of the delivered file:\n{text}"
    );
    // Postfix's virtual agent prepends Return-Path, X-Original-To and Delivered-To,
    // its smtpd the Received header; the relay's own Received is next; nothing else
    // is added.
    let added = &text[..text.len() - want.len()];
    let names: Vec<&str> = added
        .lines()
        .filter(|l| !l.starts_with(' ') && !l.starts_with('\t'))
        .map(|l| l.split(':').next().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "Return-Path",
            "X-Original-To",
            "Delivered-To",
            "Received",
            "Received"
        ],
        "{added}"
    );
    assert_eq!(
        header(&text, "Return-Path").as_deref(),
        Some("<sender@org.test>")
    );
    assert_eq!(
        header(&text, "Delivered-To").as_deref(),
        Some("user@pf.test")
    );
    let received = header(&text, "Received").unwrap();
    assert!(
        received.contains("(using TLSv1.3 with cipher "),
        "Postfix must record that TLS 1.3 was used: {received}"
    );
    assert!(
        received.contains("by mx1.pf.test (Postfix) with ESMTPS"),
        "{received}"
    );
    assert!(received.contains("for <user@pf.test>"), "{received}");

    assert!(
        relay
            .wait_queue(Duration::from_secs(10), |q| q.is_empty())
            .await,
        "the delivered message leaves the queue: {:?}",
        relay.queue()
    );
    let outcomes = relay.outcomes();
    let o = outcomes
        .iter()
        .find(|o| o.queue_id == id)
        .unwrap_or_else(|| panic!("an outcome record for {id}: {outcomes:?}"));
    assert!(o.tls_ok, "{o:?}");
    assert_eq!(o.auth.as_deref(), Some("verify"), "{o:?}");
    assert_eq!(o.mx_host, "mx1.pf.test", "{o:?}");
    assert_eq!(o.result, None, "{o:?}");

    // Postfix's side of the story.
    let log = mx.maillog_text();
    assert!(
        log.lines()
            .any(|l| l.contains("TLS connection established from ")
                && l.contains(": TLSv1.3 with cipher ")),
        "{log}"
    );
    assert!(log.contains("status=sent (delivered to maildir)"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and /usr/sbin/postfix"]
async fn refuses_real_postfix_without_starttls() {
    let (_p, mx, _world, relay) = setup().await;
    let id = relay
        .submit("sender@org.test", &["user@notls.test"], &message("notls"))
        .await;
    assert!(
        relay
            .wait_queue(Duration::from_secs(20), |q| q
                .iter()
                .any(|e| e.id == id && e.attempts >= 1))
            .await,
        "one attempt within 20 s: {:?}",
        relay.queue()
    );
    let env = relay.spool.load(&id).unwrap();
    assert_eq!(env.attempts, 1, "{env:?}");
    let r = &env.recipients[0];
    assert_eq!(r.state, RcptState::Queued, "kept queued: {env:?}");
    let reason = r.last_reason.clone().unwrap_or_default();
    assert!(
        reason.contains("mx.notls.test[127.0.0.111]") && reason.contains("did not offer STARTTLS"),
        "{reason}"
    );
    let outcomes = relay.outcomes();
    let o = outcomes
        .iter()
        .find(|o| o.queue_id == id)
        .unwrap_or_else(|| panic!("an outcome record for {id}: {outcomes:?}"));
    assert!(!o.tls_ok, "{o:?}");
    assert_eq!(o.result, Some(ResultType::StarttlsNotSupported), "{o:?}");

    // Postfix logs the session's end with its command counts; wait for it (postlogd
    // writes asynchronously).
    let smtpd = format!("{NOTLS_SYSLOG}/smtpd[");
    let deadline = Instant::now() + Duration::from_secs(10);
    let disconnects = loop {
        let log = mx.maillog_text();
        let lines: Vec<String> = log
            .lines()
            .filter(|l| l.contains(&smtpd) && l.contains("disconnect from "))
            .map(str::to_string)
            .collect();
        if !lines.is_empty() || Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let log = mx.maillog_text();
    eprintln!("--- Postfix maillog ---\n{log}");
    assert_eq!(
        disconnects.len(),
        1,
        "one session on the plaintext listener:\n{log}"
    );
    let d = &disconnects[0];
    assert!(d.contains("ehlo=1") && d.contains("quit=1"), "{d}");
    for word in ["mail=", "rcpt=", "data=", "bdat=", "starttls=", "auth="] {
        assert!(!d.contains(word), "no {word} in the clear: {d}");
    }
    assert!(
        !log.contains("client=") && !log.contains("from=<sender@org.test>"),
        "Postfix must not have accepted a transaction:\n{log}"
    );
    assert!(mx.delivered().is_empty(), "nothing in the Maildir");
}
