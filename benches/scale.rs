//! Scale benchmark (issue 11): `cargo bench --bench scale`.
//!
//! Everything runs in this one process on 127.0.0.x: the relay (real spool on
//! disk), the SMTP clients, the DNS world and one TLS MX sink that every
//! benchmark domain points to.
//!
//! 1. **Deferred queue**: N messages (100,000 by default, `SCALE_DEFERRED`)
//!    are written to a spool, due in an hour; the relay starts on it. Printed:
//!    start-up time (replay), RSS, CPU while nothing is due, and how long a new
//!    message to a working domain takes to reach the sink meanwhile.
//! 2. **One domain**: M messages (10,000, `SCALE_MESSAGES`) to one domain.
//! 3. **M domains, one MX host**: M messages, each to its own domain, every
//!    domain's MX record naming the same host (MX rollup).
//!
//! Rows 2 and 3 print messages/s, TLS connections, full handshakes and
//! resumed handshakes as the sink saw them.

#[path = "../tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::client::Client;
use support::dns_world::{DnsWorld, ZoneKind};
use support::mx::{free_port, MxOptions, MxServer, Stats};
use support::pki::TestCa;
use tlsrelay::config::Config;
use tlsrelay::relay::Relay;
use tlsrelay::spool::{Envelope, Spool};
use tokio::sync::watch;

/// Reads a count from the environment, with a default.
fn count(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A small message (the benchmark is about scheduling and connections, not bytes).
fn message(tag: usize) -> Vec<u8> {
    format!("From: bench@org.test\r\nMessage-ID: <{tag}@org.test>\r\nSubject: scale {tag}\r\n\r\nscale benchmark message {tag}\r\n").into_bytes()
}

/// One kB-scale reading from /proc/self/status (VmRSS, VmHWM).
fn status_kb(field: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// CPU time of the whole process so far (user + system).
fn cpu_time() -> Duration {
    let text = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = text.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// A relay in this process.
struct BenchRelay {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    handle: tokio::task::JoinHandle<()>,
}

impl BenchRelay {
    async fn start(text: &str) -> (BenchRelay, Duration) {
        let config = Config::parse(text, None).unwrap();
        let t = Instant::now();
        let relay = Relay::start(Arc::new(config)).await.unwrap();
        let took = t.elapsed();
        let addr = relay.local_addrs()[0];
        let (stop, rx) = watch::channel(false);
        let handle = tokio::spawn(relay.run(rx));
        (BenchRelay { addr, stop, handle }, took)
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.handle.await;
    }
}

/// Sends one message per recipient over `clients` connections; returns when all got 250.
async fn submit(addr: SocketAddr, rcpts: Vec<String>, clients: usize) {
    let per = rcpts.len().div_ceil(clients);
    let tasks: Vec<_> = rcpts
        .chunks(per)
        .map(|chunk| {
            let chunk = chunk.to_vec();
            tokio::spawn(async move {
                let (mut c, _) = Client::connect(addr).await;
                c.cmd("EHLO scale-client.test").await;
                for (i, rcpt) in chunk.iter().enumerate() {
                    let cmds =
                        format!("MAIL FROM:<bench@org.test>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n");
                    c.send(cmds.as_bytes()).await;
                    for want in [250, 250, 354] {
                        assert_eq!(c.read().await.code, want);
                    }
                    let mut data = message(i);
                    data.extend_from_slice(b".\r\n");
                    c.send(&data).await;
                    assert_eq!(c.read().await.code, 250);
                }
                c.cmd("QUIT").await;
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

/// The DNS world: `one.test`, and a wildcard MX under `w.test`, so that every
/// `dN.w.test` has the MX host `mx.hub.test` (as thousands of domains hosted by
/// one provider have).
async fn world() -> DnsWorld {
    DnsWorld::builder()
        .zone("hub.test", ZoneKind::Unsigned)
        .a("mx.hub.test", "127.0.9.10")
        .zone("one.test", ZoneKind::Unsigned)
        .mx("one.test", 10, "mx.hub.test")
        .zone("w.test", ZoneKind::Unsigned)
        .zone("deferred.test", ZoneKind::Unsigned)
        .mx("deferred.test", 10, "mx.deferred.test")
        .a("mx.deferred.test", "127.0.9.99")
        .mx("*.w.test", 10, "mx.hub.test")
        .start()
        .await
}

/// Writes `n` messages to x@deferred.test into the spool at `dir`, due in an hour.
fn fill_spool(dir: &std::path::Path, n: usize) -> Duration {
    let t = Instant::now();
    let spool = Spool::open(dir).unwrap();
    let now = tlsrelay::spool::now_unix();
    std::thread::scope(|s| {
        for k in 0..8 {
            let spool = spool.clone();
            s.spawn(move || {
                for i in (k..n).step_by(8) {
                    let body = message(i);
                    let mut env = Envelope::generated(
                        "relay.test",
                        "bench@org.test",
                        &format!("x{i}@deferred.test"),
                        Default::default(),
                        body.len() as u64,
                    );
                    env.attempts = 1;
                    env.next_attempt = now + 3600;
                    spool.store(&env, &body).unwrap();
                }
            });
        }
    });
    t.elapsed()
}

/// Waits until the sink holds `n` messages (at most `limit`).
async fn wait_sink(sink: &MxServer, n: usize, limit: Duration) -> bool {
    sink.wait_for_messages(n, limit).await
}

fn main() {
    // The spool is filled by a child process, so the relay's RSS is not the filler's.
    if let Ok(spec) = std::env::var("SCALE_FILL") {
        let (dir, n) = spec.rsplit_once(':').expect("DIR:N");
        let took = fill_spool(std::path::Path::new(dir), n.parse().unwrap());
        println!("{}", took.as_secs_f64());
        return;
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn,hickory_server=error")
        .with_writer(std::io::stderr)
        .try_init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn run() {
    let deferred = count("SCALE_DEFERRED", 100_000);
    let messages = count("SCALE_MESSAGES", 10_000);
    let ca = TestCa::new("tlsrelay scale CA");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("ca.pem");
    ca.write_root_pem(&root);
    let port = free_port();
    let sink = MxServer::start_on(
        "127.0.9.10".parse().unwrap(),
        port,
        MxOptions::with_cert(ca.leaf(&["mx.hub.test"])),
    )
    .await
    .unwrap();
    let world = world().await;
    println!(
        "scale benchmark: {deferred} deferred, {messages} messages per delivery row; 2 cores\n"
    );

    // 1. The deferred queue.
    let spool_dir = dir.path().join("spool");
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .env("SCALE_FILL", format!("{}:{deferred}", spool_dir.display()))
        .output()
        .unwrap();
    let fill: f64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0.0);
    let text = support::relay::config_text(dir.path(), &world, &root, port, "")
        .replace(
            "queue_scan_interval = \"1s\"",
            "queue_scan_interval = \"10s\"",
        )
        .replace("level = \"debug\"", "level = \"warn\"");
    let (relay, start) = BenchRelay::start(&text).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (cpu0, t0) = (cpu_time(), Instant::now());
    tokio::time::sleep(Duration::from_secs(10)).await;
    let idle_cpu = (cpu_time() - cpu0).as_secs_f64() / t0.elapsed().as_secs_f64() * 100.0;
    let rss = status_kb("VmRSS:") / 1024;
    let t = Instant::now();
    submit(relay.addr, vec!["u@one.test".into()], 1).await;
    let fresh = wait_sink(&sink, 1, Duration::from_secs(30)).await;
    let latency = t.elapsed();
    println!("| row | value |\n|---|---|");
    println!(
        "| deferred messages queued | {deferred} (written in {fill:.1} s by a child process) |"
    );
    println!(
        "| start-up (spool replay, relay ready) | {:.2} s |",
        start.as_secs_f64()
    );
    println!("| RSS of the whole process while they wait | {rss} MiB |");
    println!("| CPU while nothing is due (10 s window) | {idle_cpu:.2} % of one core |");
    println!(
        "| new message to a working domain, submission to the sink | {:.0} ms{} |",
        latency.as_secs_f64() * 1000.0,
        if fresh { "" } else { " (NOT delivered)" }
    );
    relay.stop().await;
    let _ = std::fs::remove_dir_all(&spool_dir);

    // 2 and 3. One domain, then one domain per message, all on one MX host.
    println!("\n| run | messages | time s | msg/s | TLS connections | full handshakes | resumed | most open at once | CPU % (of 200) |\n|---|---|---|---|---|---|---|---|---|");
    let one: Vec<String> = (0..messages).map(|i| format!("u{i}@one.test")).collect();
    let many: Vec<String> = (0..messages).map(|i| format!("u@d{i}.w.test")).collect();
    let mut base = sink.received().len();
    for (label, rcpts) in [
        ("one domain", one),
        ("one domain per message, one MX host", many),
    ] {
        let text = support::relay::config_text(dir.path(), &world, &root, port, "")
            .replace(
                "queue_scan_interval = \"1s\"",
                "queue_scan_interval = \"10s\"",
            )
            .replace("level = \"debug\"", "level = \"warn\"");
        let (relay, _) = BenchRelay::start(&text).await;
        let before = sink.stats();
        let cpu0 = cpu_time();
        let t = Instant::now();
        let n = rcpts.len();
        submit(relay.addr, rcpts, 10).await;
        let done = wait_sink(&sink, base + n, Duration::from_secs(600)).await;
        let secs = t.elapsed().as_secs_f64();
        let cpu = (cpu_time() - cpu0).as_secs_f64() / secs * 100.0;
        let after = sink.stats();
        print_row(label, (n, secs, cpu), done, &before, &after);
        base += n;
        relay.stop().await;
        let _ = std::fs::remove_dir_all(&spool_dir);
    }
}

fn print_row(
    label: &str,
    (n, secs, cpu): (usize, f64, f64),
    done: bool,
    before: &Stats,
    after: &Stats,
) {
    let hs = after.tls_handshakes - before.tls_handshakes;
    let resumed = after.tls_resumed - before.tls_resumed;
    println!(
        "| {label}{} | {n} | {secs:.1} | {:.0} | {} | {} | {resumed} | {} | {cpu:.0} |",
        if done { "" } else { " (NOT all delivered)" },
        n as f64 / secs,
        after.connections - before.connections,
        hs - resumed,
        after.max_open,
    );
}
