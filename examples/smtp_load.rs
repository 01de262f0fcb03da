//! An SMTP load client that measures the latency from the final `.` to the 250:
//! `cargo run --release --example smtp_load -- --help`.
//!
//! `--sessions` connections share `--messages` messages (each session takes the
//! next one when it is free); with `--rate` the messages are started on a fixed
//! schedule (message k at k/rate seconds) instead of as fast as possible. MAIL,
//! RCPT and DATA are pipelined when the server offers PIPELINING; the message and
//! its final `.` go out in one write, and the clock runs from that write to the
//! reply. smtp-source cannot do this: it measures nothing per message.
//!
//! The last line of output is machine-readable:
//! `RESULT sent=N failed=F secs=S rate=R p50_ms=.. p90_ms=.. p99_ms=.. max_ms=..`.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Command line.
#[derive(Parser, Debug)]
#[command(about = "SMTP load client: N sessions, per-message '.'->250 latency")]
struct Args {
    /// Server address (loopback only).
    #[arg(long)]
    server: SocketAddr,
    /// Concurrent sessions, one connection each.
    #[arg(long, default_value_t = 20)]
    sessions: usize,
    /// Messages in all.
    #[arg(long, default_value_t = 5000)]
    messages: usize,
    /// Approximate message size in bytes (headers and body).
    #[arg(long, default_value_t = 4096)]
    size: usize,
    /// Messages per second for all sessions together; 0: as fast as the server allows.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Envelope sender.
    #[arg(long, default_value = "load@org.test")]
    from: String,
    /// Envelope recipient.
    #[arg(long, default_value = "rcpt@example.test")]
    to: String,
    /// Use STARTTLS, trusting the CA in this PEM file.
    #[arg(long)]
    starttls_ca: Option<PathBuf>,
    /// Name the server certificate must carry (with --starttls-ca).
    #[arg(long, default_value = "localhost")]
    sni: String,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

/// What one session measured.
#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    failed: usize,
    error: Option<String>,
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A connection with an input buffer, reading whole replies.
struct Conn {
    stream: Box<dyn Stream>,
    buf: Vec<u8>,
}

impl Conn {
    async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// One reply: its code and its last line.
    async fn reply(&mut self) -> io::Result<(u16, String)> {
        loop {
            if let Some(p) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=p).collect();
                let line = String::from_utf8_lossy(&line).trim_end().to_string();
                if line.as_bytes().get(3) == Some(&b'-') {
                    continue;
                }
                let code = line.get(..3).and_then(|c| c.parse().ok()).ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidData, format!("bad reply {line:?}"))
                })?;
                return Ok((code, line));
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn expect(&mut self, what: &str, want: u16) -> io::Result<String> {
        let (code, line) = self.reply().await?;
        if code != want {
            return Err(io::Error::other(format!("{what}: {line}")));
        }
        Ok(line)
    }

    /// EHLO; returns the whole reply text upper-cased (to look for extensions).
    async fn ehlo(&mut self) -> io::Result<String> {
        self.send(b"EHLO smtp-load.test\r\n").await?;
        let mut text = String::new();
        loop {
            if let Some(p) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=p).collect();
                let line = String::from_utf8_lossy(&line).to_ascii_uppercase();
                text.push_str(&line);
                if !line.starts_with("250") {
                    return Err(io::Error::other(format!("EHLO: {}", line.trim_end())));
                }
                if line.as_bytes().get(3) != Some(&b'-') {
                    return Ok(text);
                }
                continue;
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// The body lines shared by every message (no line starts with a dot).
fn body(size: usize) -> Vec<u8> {
    let line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789\r\n";
    let mut b = Vec::with_capacity(size + line.len());
    while b.len() + 200 < size {
        b.extend_from_slice(line);
    }
    b
}

/// A whole message k for DATA, with its final `.` line.
fn message(args: &Args, run: u64, k: usize, body: &[u8]) -> Vec<u8> {
    let mut m = format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: smtp_load {k}\r\nMessage-ID: <load-{run}-{k}@smtp-load.test>\r\n\r\n",
        from = args.from,
        to = args.to,
    )
    .into_bytes();
    m.extend_from_slice(body);
    m.extend_from_slice(b".\r\n");
    m
}

async fn connect(args: &Args) -> anyhow::Result<(Conn, bool)> {
    let tcp = TcpStream::connect(args.server).await?;
    // Without it the final "." would wait for the ACK of the body (Nagle).
    tcp.set_nodelay(true)?;
    let mut conn = Conn {
        stream: Box::new(tcp),
        buf: Vec::new(),
    };
    conn.expect("greeting", 220).await?;
    let mut ext = conn.ehlo().await?;
    if let Some(ca) = &args.starttls_ca {
        anyhow::ensure!(ext.contains("STARTTLS"), "server does not offer STARTTLS");
        conn.send(b"STARTTLS\r\n").await?;
        conn.expect("STARTTLS", 220).await?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca)? {
            roots.add(cert?)?;
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let name = ServerName::try_from(args.sni.clone())?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, conn.stream)
            .await?;
        conn = Conn {
            stream: Box::new(tls),
            buf: Vec::new(),
        };
        ext = conn.ehlo().await?;
    }
    Ok((conn, ext.contains("PIPELINING")))
}

async fn session(args: Arc<Args>, next: Arc<AtomicUsize>, t0: Instant, run: u64) -> Tally {
    let mut tally = Tally::default();
    if let Err(e) = session_inner(&args, &next, t0, run, &mut tally).await {
        tally.error = Some(e.to_string());
    }
    tally
}

async fn session_inner(
    args: &Args,
    next: &AtomicUsize,
    t0: Instant,
    run: u64,
    tally: &mut Tally,
) -> anyhow::Result<()> {
    let (mut conn, pipelining) = connect(args).await?;
    let body = body(args.size);
    let envelope = format!(
        "MAIL FROM:<{}>\r\nRCPT TO:<{}>\r\nDATA\r\n",
        args.from, args.to
    );
    loop {
        let k = next.fetch_add(1, Relaxed);
        if k >= args.messages {
            break;
        }
        if args.rate > 0.0 {
            tokio::time::sleep_until((t0 + Duration::from_secs_f64(k as f64 / args.rate)).into())
                .await;
        }
        if pipelining {
            conn.send(envelope.as_bytes()).await?;
        }
        let mut refused = None;
        for (i, (cmd, want)) in envelope
            .split_inclusive("\r\n")
            .zip([250, 250, 354])
            .enumerate()
        {
            if !pipelining {
                conn.send(cmd.as_bytes()).await?;
            }
            let (code, line) = conn.reply().await?;
            if code != want && refused.is_none() {
                refused = Some((i, line));
            }
        }
        if let Some((i, line)) = refused {
            tally.failed += 1;
            if i < 2 {
                // DATA got 503/554 after the refusal; start over cleanly.
                conn.send(b"RSET\r\n").await?;
                conn.reply().await?;
            }
            tally.error.get_or_insert(line);
            continue;
        }
        let data = message(args, run, k, &body);
        let start = Instant::now();
        conn.send(&data).await?;
        let (code, line) = conn.reply().await?;
        if code == 250 {
            tally.latencies.push(start.elapsed());
        } else {
            tally.failed += 1;
            tally.error.get_or_insert(line);
        }
    }
    conn.send(b"QUIT\r\n").await?;
    let _ = conn.reply().await;
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Arc::new(Args::parse());
    anyhow::ensure!(
        args.server.ip().is_loopback(),
        "refusing to load {}: loopback only",
        args.server
    );
    anyhow::ensure!(args.sessions > 0, "--sessions must be at least 1");
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let next = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..args.sessions)
        .map(|_| tokio::spawn(session(args.clone(), next.clone(), t0, run)))
        .collect();
    let all = async {
        let mut tallies = Vec::new();
        for t in tasks {
            tallies.push(t.await.unwrap_or_default());
        }
        tallies
    };
    let tallies = tokio::time::timeout(Duration::from_secs(args.timeout), all)
        .await
        .map_err(|_| anyhow::anyhow!("gave up after {} s", args.timeout))?;
    let secs = t0.elapsed().as_secs_f64();
    let mut lat: Vec<Duration> = tallies.iter().flat_map(|t| t.latencies.clone()).collect();
    lat.sort();
    let failed: usize = tallies.iter().map(|t| t.failed).sum();
    for (i, e) in tallies
        .iter()
        .enumerate()
        .filter_map(|(i, t)| Some((i, t.error.as_ref()?)))
    {
        eprintln!("session {i}: {e}");
    }
    let sent = lat.len();
    println!(
        "{sent} messages accepted, {failed} refused, in {secs:.2} s: {:.0} msg/s, {} sessions{}",
        sent as f64 / secs,
        args.sessions,
        if args.rate > 0.0 {
            format!(", paced at {:.0} msg/s", args.rate)
        } else {
            String::new()
        }
    );
    println!(
        "RESULT sent={sent} failed={failed} secs={secs:.3} rate={:.1} p50_ms={:.2} p90_ms={:.2} p99_ms={:.2} max_ms={:.2}",
        sent as f64 / secs,
        percentile(&lat, 0.50),
        percentile(&lat, 0.90),
        percentile(&lat, 0.99),
        percentile(&lat, 1.0),
    );
    anyhow::ensure!(
        sent + failed == args.messages,
        "only {} of {} messages got a final reply",
        sent + failed,
        args.messages
    );
    Ok(())
}
