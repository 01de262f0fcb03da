//! Throughput benchmark: `cargo bench --bench throughput`.
//!
//! Everything runs in this one process on 127.0.0.x: the relay (real spool on
//! disk, fsync and all), the SMTP clients, the signed DNS world and the TLS MX
//! sink. Three phases:
//!
//! 1. Ingest, delivery disabled: K concurrent clients each send M messages of
//!    4 KiB over one connection (MAIL/RCPT/DATA pipelined); messages/s and the
//!    latency from the final "." to the 250 (the spool's fsyncs).
//! 2. End to end: N messages to one domain, delivered over verified TLS 1.3 to
//!    one in-process MX sink; messages/s from the first submission to the last
//!    message received, and the handshakes the sink saw.
//! 3. Peak RSS (VmHWM) after each phase.
//!
//! `BENCH_ONLY=<substring>` runs only the rows whose label contains it (for
//! profiling one phase with strace or perf).

#[path = "../tests/support/mod.rs"]
mod support;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::client::Client;
use support::dns_world::{DnsWorld, ZoneKind};
use support::mx::{free_port, MxOptions, MxServer};
use support::pki::TestCa;
use tlsrelay::config::Config;
use tlsrelay::relay::Relay;
use tokio::sync::watch;

/// Body size of every message (plus a few header lines).
const BODY_BYTES: usize = 4096;
/// Ingest rows: (concurrent clients, messages per client).
const INGEST: &[(usize, usize)] = &[(1, 1000), (10, 300), (50, 60)];
/// End-to-end row: (concurrent clients, messages per client).
const E2E: (usize, usize) = (10, 300);

/// A relay running in this process on its own spool.
struct BenchRelay {
    addr: SocketAddr,
    spool: tlsrelay::spool::Spool,
    _dir: tempfile::TempDir,
    stop: watch::Sender<bool>,
    handle: tokio::task::JoinHandle<()>,
}

impl BenchRelay {
    /// The test configuration of `support::relay`, but with the production queue scan
    /// interval (10 s; the tests use 1 s) so that the numbers are those of a default setup.
    async fn start(world: &DnsWorld, ca_pem: &Path, port: u16, delivery_extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let text = support::relay::config_text(dir.path(), world, ca_pem, port, delivery_extra)
            .replace(
                "queue_scan_interval = \"1s\"",
                "queue_scan_interval = \"10s\"",
            );
        let config = Config::parse(&text, None).unwrap();
        let relay = Relay::start(Arc::new(config)).await.unwrap();
        let addr = relay.local_addrs()[0];
        let spool = relay.spool().clone();
        let (stop, rx) = watch::channel(false);
        let handle = tokio::spawn(relay.run(rx));
        BenchRelay {
            addr,
            spool,
            _dir: dir,
            stop,
            handle,
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.handle.await;
    }
}

/// A message of `BODY_BYTES` body bytes in 64-character lines, ready for DATA
/// (no line starts with a dot), without the final ".".
fn message(tag: usize) -> Vec<u8> {
    let mut m = format!(
        "From: bench@org.test\r\nTo: rcpt@bench.test\r\nMessage-ID: <{tag}@org.test>\r\nSubject: bench {tag}\r\n\r\n"
    )
    .into_bytes();
    let line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ\r\n";
    while m.len() < BODY_BYTES {
        m.extend_from_slice(line);
    }
    m
}

/// One client: one connection, `n` messages, MAIL/RCPT/DATA pipelined.
/// Returns the latency from sending the data with its final "." to reading the 250, per message.
async fn client(addr: SocketAddr, n: usize, who: usize) -> Vec<Duration> {
    let (mut c, greeting) = Client::connect(addr).await;
    assert_eq!(greeting.code, 220, "{greeting:?}");
    let r = c.cmd("EHLO bench-client.test").await;
    assert!(r.text().contains("PIPELINING"), "{r:?}");
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        c.send(b"MAIL FROM:<bench@org.test>\r\nRCPT TO:<rcpt@bench.test>\r\nDATA\r\n")
            .await;
        for want in [250, 250, 354] {
            let r = c.read().await;
            assert_eq!(r.code, want, "{r:?}");
        }
        // Body and final "." in one write: sent apart, the small "." segment would wait
        // for the ACK of the body (Nagle; the test client cannot set TCP_NODELAY), and the
        // delayed ACK would add ~40 ms that has nothing to do with the relay.
        let mut data = message(who * 1_000_000 + i);
        data.extend_from_slice(b".\r\n");
        let t = Instant::now();
        c.send(&data).await;
        let r = c.read().await;
        lat.push(t.elapsed());
        assert_eq!(r.code, 250, "{r:?}");
    }
    c.cmd("QUIT").await;
    lat
}

/// Runs `clients` clients of `each` messages at once; returns (wall time, latencies).
async fn submit_all(addr: SocketAddr, clients: usize, each: usize) -> (Duration, Vec<Duration>) {
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|k| tokio::spawn(client(addr, each, k)))
        .collect();
    let mut lat = Vec::with_capacity(clients * each);
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    (start.elapsed(), lat)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

/// A field of /proc/self/status in kB (VmHWM, VmRSS).
fn status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Bytes read and written through syscalls so far (/proc/self/io rchar, wchar).
fn io_chars() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    (get("rchar:"), get("wchar:"))
}

/// CPU time (user + system) of the whole process so far.
fn cpu_time() -> Duration {
    // SAFETY: getrusage fills the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Resource use over one phase.
struct Meter {
    wall: Instant,
    cpu: Duration,
    io: (u64, u64),
}

impl Meter {
    fn start() -> Meter {
        Meter {
            wall: Instant::now(),
            cpu: cpu_time(),
            io: io_chars(),
        }
    }

    /// "cpu% | read KiB/msg | written KiB/msg".
    fn finish(&self, msgs: usize) -> (f64, f64, f64) {
        let wall = self.wall.elapsed().as_secs_f64();
        let cpu = (cpu_time() - self.cpu).as_secs_f64();
        let (r, w) = io_chars();
        let per = |b: u64| b as f64 / 1024.0 / msgs as f64;
        (100.0 * cpu / wall, per(r - self.io.0), per(w - self.io.1))
    }
}

struct Row {
    label: String,
    msgs: usize,
    secs: f64,
    rate: f64,
    lat: Option<[Duration; 4]>,
    fsyncs: String,
    handshakes: String,
    cpu: f64,
    read_kib: f64,
    written_kib: f64,
    hwm_mb: f64,
}

fn main() {
    // Only warnings: the relay logs every message at info, the test support at debug.
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn,hickory_server=error")
        .with_writer(std::io::stderr)
        .try_init();
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let rows = rt.block_on(run(&only));
    print_table(&rows);
    println!(
        "\nbench duration {:.1} s; {} cores; everything (clients, relay, DNS, MX sink) in one process",
        started.elapsed().as_secs_f64(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
}

async fn run(only: &str) -> Vec<Row> {
    let ca = TestCa::new("tlsrelay bench CA");
    let pki_dir = tempfile::tempdir().unwrap();
    let ca_pem = pki_dir.path().join("ca.pem");
    ca.write_root_pem(&ca_pem);
    let mx_ip: IpAddr = "127.0.0.77".parse().unwrap();
    let world = DnsWorld::builder()
        .zone("bench.test", ZoneKind::Signed)
        .mx("bench.test", 10, "mx.bench.test")
        .a("mx.bench.test", &mx_ip.to_string())
        .start()
        .await;
    let mut rows = Vec::new();
    if "fsync probe".contains(only) {
        fsync_probe();
    }

    for &(k, m) in INGEST {
        let label = format!("ingest K={k} x M={m}");
        if !label.contains(only) {
            continue;
        }
        let relay = BenchRelay::start(&world, &ca_pem, free_port(), "enabled = false").await;
        let meter = Meter::start();
        let flushes = relay.spool.flushes();
        let (wall, mut lat) = submit_all(relay.addr, k, m).await;
        let flushes = relay.spool.flushes() - flushes;
        let (cpu, read_kib, written_kib) = meter.finish(k * m);
        relay.stop().await;
        lat.sort();
        rows.push(Row {
            label,
            msgs: k * m,
            secs: wall.as_secs_f64(),
            rate: (k * m) as f64 / wall.as_secs_f64(),
            lat: Some([
                percentile(&lat, 0.5),
                percentile(&lat, 0.9),
                percentile(&lat, 0.99),
                *lat.last().unwrap(),
            ]),
            fsyncs: format!("{:.2}", flushes as f64 / (k * m) as f64),
            handshakes: "-".into(),
            cpu,
            read_kib,
            written_kib,
            hwm_mb: status_kb("VmHWM") as f64 / 1024.0,
        });
    }

    let (k, m) = E2E;
    let n = k * m;
    let label = format!("end-to-end TLS, K={k} x M={m}");
    if label.contains(only) {
        let port = free_port();
        let mx = MxServer::start_on(
            mx_ip,
            port,
            MxOptions::with_cert(ca.leaf(&["mx.bench.test"])),
        )
        .await
        .unwrap();
        let relay = BenchRelay::start(&world, &ca_pem, port, "").await;
        // One message first, so that the DNSSEC self-test and the first lookups are
        // not in the figure (they would be in a long-running relay).
        let (_, _) = submit_all(relay.addr, 1, 1).await;
        assert!(mx.wait_for_messages(1, Duration::from_secs(20)).await);
        let before = mx.stats();
        let dns_before = world.queries().len();
        let meter = Meter::start();
        let flushes = relay.spool.flushes();
        let t0 = Instant::now();
        let (ingest_wall, mut lat) = submit_all(relay.addr, k, m).await;
        let ok = mx
            .wait_for_messages(before.messages + n, Duration::from_secs(90))
            .await;
        let wall = t0.elapsed();
        let (cpu, read_kib, written_kib) = meter.finish(n);
        let after = mx.stats();
        let got = after.messages - before.messages;
        assert!(ok, "only {got} of {n} messages reached the MX sink");
        assert_eq!(after.plaintext_transactions, 0);
        let tls13 = mx
            .received()
            .iter()
            .filter(|r| r.tls.as_ref().map(|t| t.version) == Some(rustls::ProtocolVersion::TLSv1_3))
            .count();
        assert_eq!(tls13, after.messages, "every message over TLS 1.3");
        let dns = world.queries().len() - dns_before;
        // The last removals are written just after the last message arrives.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let flushes = relay.spool.flushes() - flushes;
        relay.stop().await;
        lat.sort();
        println!(
            "end-to-end: submission alone took {:.2} s ({:.0} msg/s) while delivering; {} DNS queries during the run",
            ingest_wall.as_secs_f64(),
            n as f64 / ingest_wall.as_secs_f64(),
            dns
        );
        rows.push(Row {
            label,
            msgs: n,
            secs: wall.as_secs_f64(),
            rate: n as f64 / wall.as_secs_f64(),
            lat: Some([
                percentile(&lat, 0.5),
                percentile(&lat, 0.9),
                percentile(&lat, 0.99),
                *lat.last().unwrap(),
            ]),
            fsyncs: format!("{:.2}", flushes as f64 / n as f64),
            handshakes: format!(
                "{} ({} conns)",
                after.tls_handshakes - before.tls_handshakes,
                after.connections - before.connections
            ),
            cpu,
            read_kib,
            written_kib,
            hwm_mb: status_kb("VmHWM") as f64 / 1024.0,
        });
    }
    rows
}

/// The raw cost of one fsync on the spool's file system: 50 x (write 4 KiB, fsync).
fn fsync_probe() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let mut lat: Vec<Duration> = (0..50)
        .map(|i| {
            let mut f = std::fs::File::create(dir.path().join(format!("{i}"))).unwrap();
            f.write_all(&[b'x'; 4096]).unwrap();
            let t = Instant::now();
            f.sync_all().unwrap();
            t.elapsed()
        })
        .collect();
    lat.sort();
    println!(
        "fsync probe ({}): one fsync of a new 4 KiB file, p50 {} ms, p90 {} ms, max {} ms",
        std::env::temp_dir().display(),
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.9)),
        ms(*lat.last().unwrap())
    );
}

fn print_table(rows: &[Row]) {
    println!();
    println!(
        "| run | msgs | time s | msg/s | '.'→250 ms p50 / p90 / p99 / max | fsync/msg | TLS handshakes | CPU % (of 200) | rchar KiB/msg | wchar KiB/msg | VmHWM MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let lat = r.lat.map_or("-".to_string(), |l| {
            format!("{} / {} / {} / {}", ms(l[0]), ms(l[1]), ms(l[2]), ms(l[3]))
        });
        println!(
            "| {} | {} | {:.2} | {:.0} | {} | {} | {} | {:.0} | {:.1} | {:.1} | {:.1} |",
            r.label,
            r.msgs,
            r.secs,
            r.rate,
            lat,
            r.fsyncs,
            r.handshakes,
            r.cpu,
            r.read_kib,
            r.written_kib,
            r.hwm_mb
        );
    }
    println!(
        "| Postfix reference (testbed README §2, measured earlier on a machine of this kind, NOT this run): smtp-source 20 sessions → Postfix org → smtp-sink, plain | - | - | ingest 280–520, end-to-end 280–420 | - | - | - | - | - | - | - |"
    );
    println!(
        "| Postfix reference (same source): → Postfix org (TLS secure, CA + name verified) → Postfix mx (STARTTLS, discard), end-to-end | - | - | 137–149; with smtp_tls_connection_reuse 165–176 | - | - | 1 per msg (3000 verified) without reuse | - | - | - | - |"
    );
}
