//! A STARTTLS SMTP sink for benchmarks: `cargo run --release --example tls_sink -- --help`.
//!
//! It accepts mail only inside TLS (MAIL, RCPT, DATA or BDAT before STARTTLS get
//! `530 5.7.0` and are counted as `plaintext_refused`), counts each message and
//! throws it away. Every 100 ms (and on SIGTERM/SIGINT) it writes its counters to
//! `--status` as `key value` lines, replaced atomically, so that a shell script can
//! read them with `awk`.
//!
//! Not `tests/support/mx.rs`: that server keeps every message and a transcript of
//! every line in memory and searches its buffer from the start for each line, which
//! is right for assertions but too slow for thousands of messages a second.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// Command line.
#[derive(Parser, Debug)]
#[command(
    about = "STARTTLS SMTP sink: counts messages received over TLS, refuses mail outside TLS"
)]
struct Args {
    /// Address to listen on (loopback only).
    #[arg(long)]
    listen: SocketAddr,
    /// Certificate chain (PEM, leaf first).
    #[arg(long)]
    cert: PathBuf,
    /// Private key (PEM).
    #[arg(long)]
    key: PathBuf,
    /// File the counters are written to.
    #[arg(long)]
    status: PathBuf,
    /// Name in the greeting and the EHLO reply.
    #[arg(long, default_value = "sink.test")]
    hostname: String,
}

/// Counters shared by every connection; times are microseconds since the Unix epoch.
#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    tls_handshakes: AtomicU64,
    tls_failures: AtomicU64,
    messages: AtomicU64,
    bytes: AtomicU64,
    plaintext_refused: AtomicU64,
    first_message_us: AtomicU64,
    last_message_us: AtomicU64,
}

impl Counters {
    fn message(&self, len: usize) {
        let now = now_us();
        self.messages.fetch_add(1, Relaxed);
        self.bytes.fetch_add(len as u64, Relaxed);
        let _ = self
            .first_message_us
            .compare_exchange(0, now, Relaxed, Relaxed);
        self.last_message_us.fetch_max(now, Relaxed);
    }

    fn render(&self) -> String {
        let secs = |a: &AtomicU64| format!("{:.6}", a.load(Relaxed) as f64 / 1e6);
        format!(
            "connections {}\ntls_handshakes {}\ntls_failures {}\nmessages {}\nbytes {}\nplaintext_refused {}\nfirst_message_unix {}\nlast_message_unix {}\n",
            self.connections.load(Relaxed),
            self.tls_handshakes.load(Relaxed),
            self.tls_failures.load(Relaxed),
            self.messages.load(Relaxed),
            self.bytes.load(Relaxed),
            self.plaintext_refused.load(Relaxed),
            secs(&self.first_message_us),
            secs(&self.last_message_us),
        )
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Written to a temporary file and renamed, so a reader never sees half a file.
fn write_status(path: &Path, c: &Counters) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, c.render())?;
    std::fs::rename(&tmp, path)
}

fn tls_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<ServerConfig>> {
    let chain = CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(key)?;
    let config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
    Ok(Arc::new(config))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.listen.ip().is_loopback(),
        "refusing to listen on {}: loopback only",
        args.listen
    );
    let acceptor = TlsAcceptor::from(tls_config(&args.cert, &args.key)?);
    let listener = TcpListener::bind(args.listen).await?;
    let counters = Arc::new(Counters::default());
    write_status(&args.status, &counters)?;
    let hostname: Arc<str> = args.hostname.into();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((tcp, _)) = accepted else { continue };
                let _ = tcp.set_nodelay(true);
                counters.connections.fetch_add(1, Relaxed);
                tokio::spawn(connection(tcp, acceptor.clone(), hostname.clone(), counters.clone()));
            }
            _ = tick.tick() => write_status(&args.status, &counters)?,
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    write_status(&args.status, &counters)?;
    print!("{}", counters.render());
    Ok(())
}

async fn connection(tcp: TcpStream, acceptor: TlsAcceptor, host: Arc<str>, c: Arc<Counters>) {
    let mut conn = Conn::new(tcp);
    if conn
        .reply(&format!("220 {host} ESMTP tls_sink\r\n"))
        .await
        .is_err()
    {
        return;
    }
    let tcp = match session(&mut conn, &host, &c, false).await {
        Ok(Next::StartTls) => conn.stream,
        _ => return,
    };
    match acceptor.accept(tcp).await {
        Ok(tls) => {
            c.tls_handshakes.fetch_add(1, Relaxed);
            let _ = session(&mut Conn::new(tls), &host, &c, true).await;
        }
        Err(_) => {
            c.tls_failures.fetch_add(1, Relaxed);
        }
    }
}

/// How a session part ended.
enum Next {
    Closed,
    StartTls,
}

/// A stream with an input buffer (consumed from `start`) and replies waiting to be
/// written; replies go out only when the input holds no further complete command,
/// which is what PIPELINING asks of a server.
struct Conn<S> {
    stream: S,
    buf: Vec<u8>,
    start: usize,
    out: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    fn new(stream: S) -> Self {
        Conn {
            stream,
            buf: Vec::with_capacity(64 * 1024),
            start: 0,
            out: Vec::with_capacity(1024),
        }
    }

    async fn reply(&mut self, text: &str) -> io::Result<()> {
        self.out.extend_from_slice(text.as_bytes());
        self.flush().await
    }

    fn queue(&mut self, text: &str) {
        self.out.extend_from_slice(text.as_bytes());
    }

    async fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await?;
            self.stream.flush().await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Reads more input (after sending what waits); false at EOF.
    async fn fill(&mut self) -> io::Result<bool> {
        self.flush().await?;
        if self.start > 0 && self.start * 2 >= self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let len = self.buf.len();
        self.buf.resize(len + 32 * 1024, 0);
        let n = tokio::time::timeout(
            Duration::from_secs(120),
            self.stream.read(&mut self.buf[len..]),
        )
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "idle"))??;
        self.buf.truncate(len + n);
        Ok(n > 0)
    }

    /// One command line without its line end; `None` at EOF.
    async fn line(&mut self) -> io::Result<Option<String>> {
        let mut scanned = self.start;
        loop {
            if let Some(p) = self.buf[scanned..].iter().position(|&b| b == b'\n') {
                let end = scanned + p;
                let line = String::from_utf8_lossy(&self.buf[self.start..end])
                    .trim_end_matches('\r')
                    .to_string();
                self.start = end + 1;
                return Ok(Some(line));
            }
            scanned = self.buf.len();
            if scanned - self.start > 64 * 1024 {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
            }
            let offset = scanned - self.start;
            if !self.fill().await? {
                return Ok(None);
            }
            scanned = self.start + offset;
        }
    }

    /// Skips message data up to and including the `.` line; its length, `None` at EOF.
    async fn data(&mut self) -> io::Result<Option<usize>> {
        // The data starts after a line end, so a "." line at once is an empty message.
        let mut scanned = self.start;
        loop {
            let view = &self.buf[self.start..];
            if view.starts_with(b".\r\n") {
                self.start += 3;
                return Ok(Some(0));
            }
            let from = scanned.saturating_sub(4).max(self.start);
            if let Some(p) = self.buf[from..].windows(5).position(|w| w == b"\r\n.\r\n") {
                let len = from + p + 2 - self.start;
                self.start = from + p + 5;
                return Ok(Some(len));
            }
            let offset = self.buf.len() - self.start;
            if !self.fill().await? {
                return Ok(None);
            }
            scanned = self.start + offset;
        }
    }
}

/// Serves commands until QUIT, EOF or STARTTLS (outside TLS only).
async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    host: &str,
    c: &Counters,
    tls: bool,
) -> io::Result<Next> {
    let (mut mail, mut rcpts) = (false, 0usize);
    while let Some(line) = conn.line().await? {
        let verb = line.split(' ').next().unwrap_or("").to_ascii_uppercase();
        match verb.as_str() {
            "EHLO" => {
                (mail, rcpts) = (false, 0);
                let starttls = if tls { "" } else { "250-STARTTLS\r\n" };
                conn.queue(&format!(
                    "250-{host}\r\n250-PIPELINING\r\n250-SIZE 104857600\r\n250-8BITMIME\r\n{starttls}250 ENHANCEDSTATUSCODES\r\n"
                ));
            }
            "HELO" => conn.queue(&format!("250 {host}\r\n")),
            "STARTTLS" if !tls => {
                conn.reply("220 2.0.0 Ready to start TLS\r\n").await?;
                // Bytes pipelined behind STARTTLS would be injected into the TLS session.
                if conn.start != conn.buf.len() {
                    return Ok(Next::Closed);
                }
                return Ok(Next::StartTls);
            }
            "MAIL" | "RCPT" | "DATA" | "BDAT" if !tls => {
                c.plaintext_refused.fetch_add(1, Relaxed);
                conn.queue("530 5.7.0 Must issue a STARTTLS command first\r\n");
            }
            "MAIL" => {
                (mail, rcpts) = (true, 0);
                conn.queue("250 2.1.0 Ok\r\n");
            }
            "RCPT" if mail => {
                rcpts += 1;
                conn.queue("250 2.1.5 Ok\r\n");
            }
            "DATA" if rcpts > 0 => {
                conn.reply("354 End data with <CR><LF>.<CR><LF>\r\n")
                    .await?;
                let Some(len) = conn.data().await? else {
                    return Ok(Next::Closed);
                };
                c.message(len);
                (mail, rcpts) = (false, 0);
                conn.queue("250 2.0.0 Ok: queued\r\n");
            }
            "RCPT" | "DATA" => conn.queue("503 5.5.1 Bad sequence of commands\r\n"),
            "RSET" => {
                (mail, rcpts) = (false, 0);
                conn.queue("250 2.0.0 Ok\r\n");
            }
            "NOOP" => conn.queue("250 2.0.0 Ok\r\n"),
            "QUIT" => {
                conn.reply("221 2.0.0 Bye\r\n").await?;
                return Ok(Next::Closed);
            }
            _ => conn.queue("502 5.5.2 Command not implemented\r\n"),
        }
    }
    Ok(Next::Closed)
}
