//! The inbound server under abuse, over real sockets: password guessing (on the
//! real binary, with its memory measured), slow clients, and every slot taken.

mod support;

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use support::client::{connect_tcp_from, Client, Reply};
use tlsrelay::config::Config;
use tlsrelay::inbound::Inbound;
use tlsrelay::spool::Spool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ATTACKER: [u8; 4] = [127, 0, 0, 1];
const LEGIT: [u8; 4] = [127, 0, 0, 2];

fn ip(a: [u8; 4]) -> IpAddr {
    IpAddr::from(a)
}

fn b64(s: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// A self-signed certificate for relay.test, a users file with alice (argon2id,
/// the crate's default and recommended parameters: m=19456, t=2, p=1), and the
/// `[server]` TOML naming them.
fn tls_and_users(dir: &Path) -> (String, rustls_pki_types::CertificateDer<'static>) {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["relay.test".to_string()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    let salt = SaltString::encode_b64(b"saltsaltsaltsalt").unwrap();
    let hash = argon2::Argon2::default()
        .hash_password(b"correct horse", &salt)
        .unwrap()
        .to_string();
    std::fs::write(dir.join("users"), format!("alice:{hash}\n")).unwrap();
    let toml = format!(
        "tls_cert_file = \"{0}/cert.pem\"\ntls_key_file = \"{0}/key.pem\"\nauth_users_file = \"{0}/users\"\n",
        dir.display()
    );
    (toml, cert.der().clone())
}

/// VmHWM and VmRSS of a process, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    };
    (field("VmHWM:"), field("VmRSS:"))
}

struct Binary {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_binary(dir: &Path, server_toml: &str) -> Binary {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.join("tlsrelay.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = [\"127.0.0.1:{port}\"]\nhostname = \"relay.test\"\n{server_toml}\n[spool]\ndir = \"{}/spool\"\n[delivery]\nenabled = false\n",
            dir.display()
        ),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_tlsrelay"))
        .args(["serve", "--config"])
        // Tests run as root in CI; the refusal itself is tested in tests/service.rs.
        .env("TLSRELAY_ALLOW_ROOT", "1")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "relay did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Binary { child, addr }
}

/// Connects from `source`, does STARTTLS and EHLO; `None` if the server said no
/// or closed. Replies get 30 s, as other tests may share the CPU.
async fn tls_session(
    addr: SocketAddr,
    source: IpAddr,
    root: &rustls_pki_types::CertificateDer<'static>,
) -> Option<Client> {
    let mut c = Client::from_stream(connect_tcp_from(addr, source).await);
    if slow_reply(&mut c).await?.code != 220 {
        return None;
    }
    c.send(b"EHLO client.test\r\nSTARTTLS\r\n").await;
    slow_reply(&mut c).await?;
    if slow_reply(&mut c).await?.code != 220 {
        return None;
    }
    let mut c = c.start_tls(root.clone(), "relay.test").await;
    c.send(b"EHLO client.test\r\n").await;
    (slow_reply(&mut c).await?.code == 250).then_some(c)
}

/// Reads a reply allowing for the server's failure delays (longer than
/// `Client::read`); `None` when the connection closed or 30 s passed.
async fn slow_reply(c: &mut Client) -> Option<Reply> {
    tokio::time::timeout(Duration::from_secs(30), c.try_read())
        .await
        .ok()
        .flatten()
}

/// One guessing session loop: takes attempts from `left` until none remain.
/// Returns the reply codes it got (0: connection closed without a reply).
async fn guesser(
    addr: SocketAddr,
    root: rustls_pki_types::CertificateDer<'static>,
    left: Arc<AtomicUsize>,
    give_up: Instant,
) -> Vec<u16> {
    let mut codes = Vec::new();
    let mut session: Option<Client> = None;
    while Instant::now() < give_up
        && left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    {
        let mut c = match session.take() {
            Some(c) => c,
            None => match tls_session(addr, ip(ATTACKER), &root).await {
                Some(c) => c,
                None => {
                    codes.push(421);
                    continue;
                }
            },
        };
        let guess = format!("\0alice\0guess{}", codes.len());
        c.send(format!("AUTH PLAIN {}\r\n", b64(guess.as_bytes())).as_bytes())
            .await;
        let code = slow_reply(&mut c).await.map_or(0, |r| r.code);
        codes.push(code);
        if code == 535 || code == 454 {
            session = Some(c);
        }
    }
    codes
}

/// The finding: 40 concurrent guessing sessions made the relay grow to gigabytes
/// (one 19 MiB argon2 check each, unbounded) and slowed honest AUTH to seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn auth_under_attack_keeps_memory_bounded_and_honest_users_fast() {
    let dir = tempfile::tempdir().unwrap();
    let (toml, root) = tls_and_users(dir.path());
    // Nobody on loopback may relay without AUTH; the defaults govern the rest.
    let relay = start_binary(
        dir.path(),
        &format!("{toml}relay_networks = [\"192.0.2.0/24\"]\n"),
    )
    .await;
    let pid = relay.child.id();
    let (_, idle_rss) = memory_kib(pid);
    let started = Instant::now();
    // Past this the attack stops, so unfixed code fails in bounded time.
    let give_up = started + Duration::from_secs(45);
    let left = Arc::new(AtomicUsize::new(400));
    let attackers: Vec<_> = (0..40)
        .map(|_| tokio::spawn(guesser(relay.addr, root.clone(), left.clone(), give_up)))
        .collect();
    let sampler = {
        let done = left.clone();
        tokio::spawn(async move {
            let mut peak = 0;
            while done.load(Ordering::SeqCst) > 0 && Instant::now() < give_up {
                peak = peak.max(memory_kib(pid).1);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            peak
        })
    };
    // While the guesses are in flight, an honest client from another address.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut honest = tls_session(relay.addr, ip(LEGIT), &root).await.unwrap();
    let t = Instant::now();
    let auth = format!("AUTH PLAIN {}\r\n", b64(b"\0alice\0correct horse"));
    honest.send(auth.as_bytes()).await;
    let r = slow_reply(&mut honest).await;
    let honest_latency = t.elapsed();
    let mut codes = Vec::new();
    for a in attackers {
        codes.extend(a.await.unwrap());
    }
    let elapsed = started.elapsed();
    let peak_sampled = sampler.await.unwrap();
    let (hwm, rss) = memory_kib(pid);
    let count = |c: u16| codes.iter().filter(|&&x| x == c).count();
    println!(
        "{} attempts from 40 sessions in {elapsed:.1?}: 535 x{}, 454 x{}, 421 x{}, closed or no reply in 30 s x{}",
        codes.len(),
        count(535),
        count(454),
        count(421),
        count(0)
    );
    println!(
        "relay memory: VmRSS idle {idle_rss} KiB, peak sampled {peak_sampled} KiB, after {rss} KiB; VmHWM {hwm} KiB"
    );
    println!("honest AUTH from 127.0.0.2 during the attack: {honest_latency:?}, {r:?}");
    assert!(r.is_some_and(|r| r.text().starts_with("235 2.7.0 ")));
    assert!(
        honest_latency < Duration::from_secs(1),
        "honest AUTH took {honest_latency:?}"
    );
    assert!(hwm < 100 * 1024, "VmHWM {hwm} KiB is not under 100 MB");
    assert_eq!(codes.len(), 400, "the attack did not finish in 45 s");
    assert!(
        count(535) <= 5,
        "the attacker's address was not throttled: {} failures answered",
        count(535)
    );
    // The attacker's address stays locked out; the honest address is not.
    let mut again = tls_session(relay.addr, ip(ATTACKER), &root).await.unwrap();
    let r = again
        .cmd(&format!("AUTH PLAIN {}", b64(b"\0alice\0correct horse")))
        .await;
    assert!(r.text().starts_with("421 4.7.0 "), "{r:?}");
    assert!(elapsed < Duration::from_secs(60), "{elapsed:?}");
}

/// An in-process server on 127.0.0.1:<ephemeral>; `extra` is TOML for `[server]`.
async fn start(extra: &str) -> (SocketAddr, Spool, tempfile::TempDir) {
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
    tokio::spawn(async move {
        inbound.run(rx).await;
        drop(stop);
    });
    (addr, spool, dir)
}

/// Sends `bytes` one byte a second until the server answers; returns what it
/// answered and when (from the first byte), or panics after `give_up`.
async fn trickle(
    stream: &mut tokio::net::TcpStream,
    bytes: &[u8],
    give_up: Duration,
) -> (String, Duration) {
    let start = Instant::now();
    let mut got = Vec::new();
    for &b in bytes.iter().cycle() {
        assert!(
            start.elapsed() < give_up,
            "still connected after {give_up:?} of one byte a second"
        );
        if stream.write_all(&[b]).await.is_err() {
            break;
        }
        let mut buf = [0u8; 512];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await
        {
            got.extend_from_slice(&buf[..n]);
            if n == 0 || got.ends_with(b"\r\n") {
                break;
            }
        }
    }
    (String::from_utf8_lossy(&got).into_owned(), start.elapsed())
}

/// Reads one CRLF-terminated line (replies here are single lines).
async fn line(stream: &mut tokio::net::TcpStream) -> String {
    let mut got = Vec::new();
    while !got.ends_with(b"\r\n") {
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut b))
            .await
            .expect("reply")
            .unwrap();
        assert_eq!(n, 1, "closed after {:?}", String::from_utf8_lossy(&got));
        got.push(b[0]);
    }
    String::from_utf8(got).unwrap()
}

#[tokio::test]
async fn a_command_trickled_a_byte_a_second_is_cut_off_at_the_deadline() {
    let (addr, _spool, _dir) = start("command_timeout = \"10s\"\ncommand_deadline = \"3s\"").await;
    let mut s = connect_tcp_from(addr, ip(ATTACKER)).await;
    assert!(line(&mut s).await.starts_with("220 "));
    let (reply, after) =
        trickle(&mut s, b"NOOP xxxxxxxxxxxxxxxxxxxx", Duration::from_secs(9)).await;
    println!("cut off after {after:?}: {reply:?}");
    assert!(reply.starts_with("421 4.4.2 "), "{reply:?}");
    assert!(
        after >= Duration::from_secs(2) && after < Duration::from_secs(6),
        "{after:?}"
    );
}

#[tokio::test]
async fn message_data_trickled_a_byte_a_second_is_cut_off_at_the_deadline() {
    let (addr, spool, _dir) = start("data_timeout = \"10s\"\ndata_deadline = \"3s\"").await;
    let mut s = connect_tcp_from(addr, ip(ATTACKER)).await;
    assert!(line(&mut s).await.starts_with("220 "));
    s.write_all(
        b"HELO client.test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n",
    )
    .await
    .unwrap();
    for want in ["250 ", "250 ", "250 ", "354 "] {
        let got = line(&mut s).await;
        assert!(got.starts_with(want), "{got:?}");
    }
    let (reply, after) = trickle(
        &mut s,
        b"Subject: slow\r\n\r\nbody\r\n",
        Duration::from_secs(9),
    )
    .await;
    println!("cut off after {after:?}: {reply:?}");
    assert!(reply.starts_with("421 4.4.2 "), "{reply:?}");
    assert!(
        after >= Duration::from_secs(2) && after < Duration::from_secs(6),
        "{after:?}"
    );
    assert!(spool.list().is_empty());
}

#[tokio::test]
async fn relay_networks_clients_get_reserved_sessions() {
    let (addr, _spool, _dir) =
        start("max_sessions = 3\nreserved_sessions = 1\nrelay_networks = [\"127.0.0.9/32\"]").await;
    let mut holders = Vec::new();
    for _ in 0..3 {
        let (c, g) = Client::connect_from(addr, ip(ATTACKER)).await;
        assert_eq!(g.code, 220);
        holders.push(c);
    }
    let (_, g) = Client::connect_from(addr, ip(ATTACKER)).await;
    assert!(g.text().starts_with("421 4.3.2 "), "{g:?}");
    let (mut ours, g) = Client::connect_from(addr, ip([127, 0, 0, 9])).await;
    assert_eq!(
        g.code, 220,
        "a relay_networks client must get a reserved slot: {g:?}"
    );
    assert_eq!(ours.cmd("HELO mta.test").await.code, 250);
    // The reserve is for relay_networks clients only, and it has one slot.
    let (_, g) = Client::connect_from(addr, ip([127, 0, 0, 9])).await;
    assert!(g.text().starts_with("421 4.3.2 "), "{g:?}");
}
