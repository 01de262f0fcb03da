//! Crash under load (issue 10): the real binary is killed with SIGKILL at random
//! moments while 20 sessions send and delivery runs, five times, restarted each
//! time on the same spool. Every message that got a 250 must reach the MX sink;
//! duplicates are allowed (a kill between the sink's 250 and the spool noting the
//! delivery re-sends the message after the restart) and are counted.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::child::{queue_json, start_relay_logging};
use support::dns_world::{DnsWorld, ZoneKind};
use support::mx::{free_port, MxOptions, MxServer};
use support::pki::TestCa;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Concurrent SMTP sessions while the relay runs.
const SESSIONS: usize = 20;
/// Kills (each followed by a restart on the same spool).
const ROUNDS: usize = 5;
/// A round's kill comes after a random number of 250s in this range (plus a random
/// delay), so it lands at a different point of ingest and delivery each time.
const KILL_AFTER_ACKS: std::ops::RangeInclusive<usize> = 20..=250;
/// Longest wait for a round's kill moment; a slow machine then kills earlier.
const ROUND_LIMIT: Duration = Duration::from_secs(15);
/// Longest wait for the queue to empty after the last restart.
const DRAIN_LIMIT: Duration = Duration::from_secs(60);
/// Longest wait for any one reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Acknowledged messages: (token, queue id from the 250 text).
type Acks = Arc<Mutex<Vec<(usize, String)>>>;

/// A message carrying its token in the Message-ID, a few hundred bytes long.
fn message(k: usize) -> String {
    let mut m = format!(
        "From: <load@org.test>\r\nTo: <r{k}@crash.test>\r\nMessage-ID: <ck-{k}@crash.test>\r\nSubject: crash load {k}\r\n\r\n"
    );
    for line in 0..(k % 7 + 2) {
        m.push_str(&format!("token ck-{k} line {line} {}\r\n", "y".repeat(60)));
    }
    m.push_str(".\r\n");
    m
}

/// One reply's code and last line; `None` when the connection broke or went quiet.
async fn reply(r: &mut BufReader<TcpStream>) -> Option<(u16, String)> {
    loop {
        let mut line = String::new();
        match tokio::time::timeout(REPLY_TIMEOUT, r.read_line(&mut line)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return None,
        }
        if line.as_bytes().get(3) == Some(&b'-') {
            continue;
        }
        let code = line.get(..3)?.parse().ok()?;
        return Some((code, line.trim_end().to_string()));
    }
}

/// One session: sends new messages until `stop` or until the connection breaks
/// (the kill); records every 250 after DATA with the queue id it names.
async fn sender(addr: SocketAddr, next: Arc<AtomicUsize>, stop: Arc<AtomicBool>, acks: Acks) {
    let Ok(tcp) = TcpStream::connect(addr).await else {
        return;
    };
    let _ = tcp.set_nodelay(true);
    let mut r = BufReader::new(tcp);
    if reply(&mut r).await.map(|x| x.0) != Some(220) {
        return;
    }
    if r.get_mut().write_all(b"EHLO load.test\r\n").await.is_err()
        || reply(&mut r).await.map(|x| x.0) != Some(250)
    {
        return;
    }
    while !stop.load(Relaxed) {
        let k = next.fetch_add(1, Relaxed);
        let envelope =
            format!("MAIL FROM:<load@org.test>\r\nRCPT TO:<r{k}@crash.test>\r\nDATA\r\n");
        if r.get_mut().write_all(envelope.as_bytes()).await.is_err() {
            return;
        }
        for want in [250, 250, 354] {
            match reply(&mut r).await {
                Some((code, _)) if code == want => {}
                _ => return,
            }
        }
        if r.get_mut().write_all(message(k).as_bytes()).await.is_err() {
            return;
        }
        match reply(&mut r).await {
            Some((250, text)) => {
                // "250 2.0.0 Ok: queued as ID" (src/inbound/session.rs)
                let id = text.rsplit(' ').next().unwrap_or_default().to_string();
                acks.lock().unwrap().push((k, id));
            }
            _ => return,
        }
    }
    let _ = r.get_mut().write_all(b"QUIT\r\n").await;
}

fn write_config(
    dir: &Path,
    world: &DnsWorld,
    ca_pem: &Path,
    mx_port: u16,
    port: u16,
) -> std::path::PathBuf {
    let text =
        support::relay::config_text(dir, world, ca_pem, mx_port, "retry_schedule = [\"1s\"]\n")
            .replace(
                "listen = [\"127.0.0.1:0\"]",
                &format!("listen = [\"127.0.0.1:{port}\"]"),
            )
            // Debug logging of thousands of messages would only slow the relay down.
            .replace("level = \"debug\"", "level = \"info\"");
    assert!(text.contains(&format!("127.0.0.1:{port}")));
    let path = dir.join("tlsrelay.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_nothing() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("crash load CA");
    let ca_pem = dir.path().join("ca.pem");
    ca.write_root_pem(&ca_pem);
    let mx = MxServer::start_on(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        0,
        MxOptions::with_cert(ca.leaf(&["mx.crash.test"])),
    )
    .await
    .unwrap();
    let world = DnsWorld::builder()
        .zone("crash.test", ZoneKind::Signed)
        .mx("crash.test", 10, "mx.crash.test")
        .a("mx.crash.test", "127.0.0.1")
        .start()
        .await;
    let port = free_port();
    let config = write_config(dir.path(), &world, &ca_pem, mx.port(), port);
    let log = dir.path().join("tlsrelay.log");

    let acks: Acks = Arc::default();
    let next = Arc::new(AtomicUsize::new(0));
    let mut rounds = Vec::new();
    for _ in 0..ROUNDS {
        let relay = start_relay_logging(&config, port, &log).await;
        let before = acks.lock().unwrap().len();
        let target = rand::random_range(KILL_AFTER_ACKS);
        let stop = Arc::new(AtomicBool::new(false));
        let senders: Vec<_> = (0..SESSIONS)
            .map(|_| tokio::spawn(sender(relay.addr, next.clone(), stop.clone(), acks.clone())))
            .collect();
        let deadline = Instant::now() + ROUND_LIMIT;
        while acks.lock().unwrap().len() - before < target && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(Duration::from_micros(rand::random_range(0..20_000))).await;
        relay.kill();
        stop.store(true, Relaxed);
        for s in senders {
            // A session whose connection survived the kill (it cannot) would stop at `stop`.
            let _ = tokio::time::timeout(REPLY_TIMEOUT, s).await;
        }
        let delivered_so_far = mx.stats().messages;
        rounds.push((
            target,
            acks.lock().unwrap().len() - before,
            delivered_so_far,
        ));
    }

    // The last restart: no more sending; everything queued must go out.
    let relay = start_relay_logging(&config, port, &log).await;
    let drain_deadline = Instant::now() + DRAIN_LIMIT;
    let mut queued = usize::MAX;
    while Instant::now() < drain_deadline {
        queued = queue_json(&config).as_array().unwrap().len();
        if queued == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The sink's 250 comes before the spool removes the message: nothing more can arrive now.
    relay.kill();

    let acked: Vec<(usize, String)> = acks.lock().unwrap().clone();
    let mut delivered: BTreeMap<usize, usize> = BTreeMap::new();
    let received = mx.received();
    for m in &received {
        assert!(m.tls.is_some(), "a message reached the sink without TLS");
        let text = m.data_str();
        let k = text
            .split("Message-ID: <ck-")
            .nth(1)
            .and_then(|rest| rest.split('@').next())
            .and_then(|k| k.parse::<usize>().ok())
            .unwrap_or_else(|| panic!("a message without a token reached the sink:\n{text}"));
        *delivered.entry(k).or_default() += 1;
    }
    let acked_tokens: HashSet<usize> = acked.iter().map(|(k, _)| *k).collect();
    let ids: HashSet<&str> = acked.iter().map(|(_, id)| id.as_str()).collect();
    let lost: Vec<&(usize, String)> = acked
        .iter()
        .filter(|(k, _)| !delivered.contains_key(k))
        .collect();
    let duplicated_messages = delivered.values().filter(|&&n| n > 1).count();
    let extra_copies: usize = delivered.values().map(|&n| n.saturating_sub(1)).sum();
    let unacknowledged_delivered = delivered
        .keys()
        .filter(|k| !acked_tokens.contains(k))
        .count();

    println!("crash under load: {SESSIONS} sessions, {ROUNDS} SIGKILLs, restart on the same spool each time");
    for (i, (target, acked, delivered)) in rounds.iter().enumerate() {
        println!("  round {}: kill after {target} 250s: {acked} acknowledged in the round, {delivered} at the sink so far", i + 1);
    }
    println!("  acknowledged (250 + queue id)          {}", acked.len());
    println!(
        "  delivered (distinct messages at sink)  {}",
        delivered.len()
    );
    println!("  lost (acknowledged, never delivered)   {}", lost.len());
    println!("  duplicated (delivered more than once)  {duplicated_messages} messages, {extra_copies} extra copies");
    println!("  delivered without a 250 seen           {unacknowledged_delivered} (killed between fsync and the reply)");
    println!("  sink: {} messages, {} TLS handshakes, {} plaintext commands; queue left {queued}; {:.1} s",
        received.len(),
        mx.stats().tls_handshakes,
        mx.stats().plaintext_transactions,
        started.elapsed().as_secs_f64()
    );

    assert_eq!(ids.len(), acked.len(), "two 250s named the same queue id");
    assert!(
        acked.len() >= ROUNDS,
        "too little was acknowledged to test anything: {rounds:?}\n{}",
        tail(&log, 30)
    );
    assert_eq!(mx.stats().plaintext_transactions, 0);
    assert!(
        lost.is_empty(),
        "{} acknowledged messages lost (token, queue id): {:?}; queue left: {queued}\n{}",
        lost.len(),
        &lost[..lost.len().min(20)],
        tail(&log, 30)
    );
    assert_eq!(queued, 0, "the queue did not empty\n{}", tail(&log, 30));
}
