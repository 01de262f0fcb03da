//! A scriptable SMTP server playing a receiving MX host, on real loopback
//! sockets with real rustls; a STARTTLS-stripping man in the middle.
//!
//! The server records every accepted message (envelope with raw parameters,
//! exact DATA/BDAT bytes, TLS details), counts connections and handshakes and,
//! most importantly, `plaintext_transactions`: every MAIL, RCPT, DATA or BDAT
//! command that reached it outside TLS.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{CipherSuite, ProtocolVersion, ServerConfig};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use super::pki::{self, CertChain};

/// Longest command line or DATA line accepted.
const MAX_LINE: usize = 1 << 20;
/// Largest message accepted (DATA or the sum of BDAT chunks).
const MAX_MESSAGE: usize = 64 << 20;
/// A connection idle this long is closed.
const IDLE: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TlsVersions {
    #[default]
    Both,
    Tls12Only,
    Tls13Only,
}

/// What the MX host offers and how it answers. `Default` is a plain, polite
/// host: STARTTLS (self-signed certificate for `hostname` unless `cert` is
/// set), PIPELINING, 8BITMIME, ENHANCEDSTATUSCODES; everything accepted.
#[derive(Clone, Debug)]
pub struct MxOptions {
    /// Name in the greeting and the EHLO reply.
    pub hostname: String,
    /// Offer STARTTLS in the EHLO reply (before TLS).
    pub starttls: bool,
    /// The chain presented in the handshake; `None`: self-signed for `hostname`.
    pub cert: Option<CertChain>,
    /// Present `cert` but sign the handshake with this chain's key (a server
    /// replaying a real certificate without its private key).
    pub sign_with_key_of: Option<CertChain>,
    pub tls_versions: TlsVersions,
    /// Advertise REQUIRETLS (only after TLS, as RFC 8689 wants).
    pub requiretls: bool,
    pub smtputf8: bool,
    pub pipelining: bool,
    pub size: Option<u64>,
    pub dsn: bool,
    pub chunking: bool,
    pub eightbitmime: bool,
    /// Whole greeting line(s), e.g. `"554 5.7.1 go away"`; `None`: `220 <hostname> ESMTP`.
    /// A greeting that is not 2xx makes the host answer every command but QUIT with 503.
    pub greeting: Option<String>,
    /// Reply to every MAIL command instead of `250 2.1.0 OK`.
    pub mail_reply: Option<String>,
    /// Reply to RCPT by address: the key is a full address or a local part
    /// (case-insensitive; the full address wins). Others get `250 2.1.5 OK`.
    pub rcpt_replies: HashMap<String, String>,
    /// Final reply after DATA (or BDAT LAST) instead of `250 2.0.0 OK`. A
    /// message is recorded as received only when this reply is 2xx.
    pub data_reply: Option<String>,
    /// Close the connection right after the N-th accepted message on it.
    pub drop_after_messages: Option<usize>,
    /// Wait this long before the reply after the data (a slow host).
    pub data_delay: Option<Duration>,
}

impl Default for MxOptions {
    fn default() -> Self {
        MxOptions {
            hostname: "mx.test".to_string(),
            starttls: true,
            cert: None,
            sign_with_key_of: None,
            tls_versions: TlsVersions::Both,
            requiretls: false,
            smtputf8: false,
            pipelining: true,
            size: None,
            dsn: false,
            chunking: false,
            eightbitmime: true,
            greeting: None,
            mail_reply: None,
            rcpt_replies: HashMap::new(),
            data_reply: None,
            drop_after_messages: None,
            data_delay: None,
        }
    }
}

impl MxOptions {
    /// A host offering STARTTLS with `cert`.
    pub fn with_cert(cert: CertChain) -> Self {
        MxOptions {
            hostname: cert
                .names
                .first()
                .cloned()
                .unwrap_or_else(|| "mx.test".into()),
            cert: Some(cert),
            ..Default::default()
        }
    }

    /// A host that does not offer STARTTLS.
    pub fn plaintext() -> Self {
        MxOptions {
            starttls: false,
            ..Default::default()
        }
    }

    /// Script the reply to `RCPT TO:<who>`; `who` is an address or a local part.
    pub fn rcpt_reply(mut self, who: &str, reply: &str) -> Self {
        self.rcpt_replies
            .insert(who.to_ascii_lowercase(), reply.to_string());
        self
    }

    fn rcpt_reply_for(&self, address: &str) -> Option<&String> {
        let local = address.rsplit_once('@').map_or(address, |(l, _)| l);
        let find = |key: &str| {
            self.rcpt_replies
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v)
        };
        find(address).or_else(|| find(local))
    }
}

/// TLS as negotiated on one connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsInfo {
    pub version: ProtocolVersion,
    pub cipher_suite: CipherSuite,
    /// The SNI name the client sent, if any.
    pub sni: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rcpt {
    /// The address between the angle brackets.
    pub address: String,
    /// Parameters after the path, as sent (e.g. `NOTIFY=FAILURE`).
    pub params: Vec<String>,
}

/// One accepted message.
#[derive(Clone, Debug)]
pub struct ReceivedMessage {
    /// Index of the connection (0-based, in accept order).
    pub connection: usize,
    /// The EHLO/HELO argument in force.
    pub ehlo: String,
    /// The reverse path between the angle brackets (empty for `<>`).
    pub mail_from: String,
    /// MAIL parameters as sent (e.g. `SIZE=123`, `REQUIRETLS`).
    pub mail_params: Vec<String>,
    /// Accepted recipients only.
    pub rcpts: Vec<Rcpt>,
    /// The message after dot-unstuffing, without the final `.\r\n` (or the BDAT chunks joined).
    pub data: Vec<u8>,
    pub via_bdat: bool,
    /// `None`: the message came in plaintext.
    pub tls: Option<TlsInfo>,
}

impl ReceivedMessage {
    pub fn rcpt_addresses(&self) -> Vec<String> {
        self.rcpts.iter().map(|r| r.address.clone()).collect()
    }

    /// Whether MAIL carried the parameter `keyword` (case-insensitive, with or without a value).
    pub fn has_mail_param(&self, keyword: &str) -> bool {
        self.mail_params.iter().any(|p| {
            p.split('=')
                .next()
                .unwrap_or("")
                .eq_ignore_ascii_case(keyword)
        })
    }

    pub fn data_str(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub connections: usize,
    pub starttls_commands: usize,
    pub tls_handshakes: usize,
    pub tls_handshake_failures: usize,
    /// Accepted messages.
    pub messages: usize,
    /// MAIL, RCPT, DATA or BDAT commands received outside TLS (whatever the reply).
    pub plaintext_transactions: usize,
    /// Connections open now.
    pub open: usize,
    /// The most connections open at once.
    pub max_open: usize,
    /// Handshakes that resumed an earlier TLS session (no certificate sent).
    pub tls_resumed: usize,
}

#[derive(Default)]
struct State {
    stats: Stats,
    received: Vec<ReceivedMessage>,
    transcripts: Vec<Vec<String>>,
    tls_errors: Vec<String>,
    /// The client's address of each connection, in accept order.
    peers: Vec<SocketAddr>,
}

struct Shared {
    opts: Mutex<MxOptions>,
    state: Mutex<State>,
    /// One TLS configuration for every connection (so sessions can resume), built on first use.
    tls: Mutex<Option<Arc<ServerConfig>>>,
}

impl Shared {
    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.lock().unwrap())
    }

    fn log(&self, conn: usize, line: String) {
        self.with(|s| s.transcripts[conn].push(line));
    }
}

/// A running MX host. Dropping it stops the listener and its connections.
pub struct MxServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for MxServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A port that was free on 127.0.0.1 a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .unwrap()
        .port()
}

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(128)
}

impl MxServer {
    /// On 127.0.0.1, an ephemeral port.
    pub async fn start(opts: MxOptions) -> io::Result<MxServer> {
        Self::start_on(IpAddr::V4(Ipv4Addr::LOCALHOST), 0, opts).await
    }

    /// On `ip:port` (`port` 0: ephemeral). Any 127.0.0.x works on Linux.
    pub async fn start_on(ip: IpAddr, port: u16, mut opts: MxOptions) -> io::Result<MxServer> {
        if opts.cert.is_none() {
            opts.cert = Some(pki::self_signed(&[&opts.hostname]));
        }
        let listener = bind(SocketAddr::new(ip, port))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            opts: Mutex::new(opts),
            state: Mutex::new(State::default()),
            tls: Mutex::new(None),
        });
        let task = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(MxServer { addr, shared, task })
    }

    /// One server per address, all on the same port (the relay uses one
    /// delivery port for every MX address). `opts(i)` gives server i its options.
    pub async fn start_on_all(
        ips: &[IpAddr],
        mut opts: impl FnMut(usize) -> MxOptions,
    ) -> io::Result<Vec<MxServer>> {
        let mut last_err = None;
        'attempt: for _ in 0..20 {
            let port = free_port();
            let mut servers = Vec::new();
            for (i, ip) in ips.iter().enumerate() {
                match Self::start_on(*ip, port, opts(i)).await {
                    Ok(s) => servers.push(s),
                    Err(e) => {
                        last_err = Some(e);
                        continue 'attempt;
                    }
                }
            }
            return Ok(servers);
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("no common free port")))
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn ip(&self) -> IpAddr {
        self.addr.ip()
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Change the behaviour for connections accepted from now on.
    pub fn update_options(&self, f: impl FnOnce(&mut MxOptions)) {
        f(&mut self.shared.opts.lock().unwrap());
        *self.shared.tls.lock().unwrap() = None;
    }

    /// The client address of every connection so far, in accept order.
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.shared.with(|s| s.peers.clone())
    }

    pub fn received(&self) -> Vec<ReceivedMessage> {
        self.shared.with(|s| s.received.clone())
    }

    /// Makes the final reply to each message wait `delay` (sessions stay busy that long).
    pub fn set_data_delay(&self, delay: Duration) {
        self.update_options(|o| o.data_delay = Some(delay));
    }

    pub fn stats(&self) -> Stats {
        self.shared.with(|s| s.stats)
    }

    /// Per connection: `C: ...` for what the client sent, `S: ...` for replies.
    pub fn transcripts(&self) -> Vec<Vec<String>> {
        self.shared.with(|s| s.transcripts.clone())
    }

    /// All transcripts as one text, for assertion messages.
    pub fn transcript_text(&self) -> String {
        let mut out = String::new();
        for (i, t) in self.transcripts().iter().enumerate() {
            out.push_str(&format!("--- {} connection {i}\n", self.addr));
            for line in t {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// Why handshakes failed, as the server saw it.
    pub fn tls_errors(&self) -> Vec<String> {
        self.shared.with(|s| s.tls_errors.clone())
    }

    /// Waits until `pred(stats)` holds; false on timeout.
    pub async fn wait_for(&self, timeout: Duration, pred: impl Fn(&Stats) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if pred(&self.stats()) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until at least `n` messages were accepted; false on timeout.
    pub async fn wait_for_messages(&self, n: usize, timeout: Duration) -> bool {
        self.wait_for(timeout, |s| s.messages >= n).await
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    // Owned here, so that aborting this task ends every connection too.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((tcp, peer)) = accepted else { continue };
                // Replies to pipelined commands go out at once, as a real MTA's do;
                // with Nagle they wait for the client's delayed ACK (40 ms each).
                let _ = tcp.set_nodelay(true);
                let id = shared.with(|s| {
                    s.stats.connections += 1;
                    s.stats.open += 1;
                    s.stats.max_open = s.stats.max_open.max(s.stats.open);
                    s.transcripts.push(Vec::new());
                    s.peers.push(peer);
                    s.transcripts.len() - 1
                });
                let opts = shared.opts.lock().unwrap().clone();
                let shared = shared.clone();
                connections.spawn(async move {
                    connection(tcp, id, opts, shared.clone()).await;
                    shared.with(|s| s.stats.open -= 1);
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

#[derive(Debug)]
struct FixedCert(Arc<CertifiedKey>);

impl ResolvesServerCert for FixedCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

fn tls_config(opts: &MxOptions) -> Result<Arc<ServerConfig>, rustls::Error> {
    let cert = match &opts.cert {
        Some(c) => c.clone(),
        None => pki::self_signed(&[&opts.hostname]),
    };
    let certified = match &opts.sign_with_key_of {
        Some(other) => cert.certified_key_with_key_of(other),
        None => cert.certified_key(),
    };
    let versions: &[&'static rustls::SupportedProtocolVersion] = match opts.tls_versions {
        TlsVersions::Both => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersions::Tls12Only => &[&rustls::version::TLS12],
        TlsVersions::Tls13Only => &[&rustls::version::TLS13],
    };
    let config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(versions)?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(FixedCert(certified)));
    Ok(Arc::new(config))
}

async fn connection(tcp: TcpStream, id: usize, opts: MxOptions, shared: Arc<Shared>) {
    let mut session = Session {
        id,
        opts,
        shared: shared.clone(),
        tls: None,
        ehlo: None,
        txn: Txn::default(),
        messages: 0,
    };
    let tcp = match session.run(tcp, true).await {
        Ok(End::StartTls(tcp)) => tcp,
        Ok(End::Closed) => return,
        Err(e) => {
            shared.log(id, format!("!! {e}"));
            return;
        }
    };
    let cached = shared.tls.lock().unwrap().clone();
    let config = match cached.map_or_else(|| tls_config(&session.opts), Ok) {
        Ok(c) => {
            *shared.tls.lock().unwrap() = Some(c.clone());
            c
        }
        Err(e) => {
            shared.log(id, format!("!! TLS config: {e}"));
            return;
        }
    };
    let accept = tokio_rustls::TlsAcceptor::from(config).accept(tcp);
    let tls = match tokio::time::timeout(IDLE, accept).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            shared.log(id, format!("!! TLS handshake failed: {e}"));
            shared.with(|s| {
                s.stats.tls_handshake_failures += 1;
                s.tls_errors.push(e.to_string());
            });
            return;
        }
        Err(_) => {
            shared.log(id, "!! TLS handshake timed out".into());
            shared.with(|s| {
                s.stats.tls_handshake_failures += 1;
                s.tls_errors.push("handshake timed out".into());
            });
            return;
        }
    };
    let (_, conn) = tls.get_ref();
    let info = TlsInfo {
        version: conn.protocol_version().expect("handshake done"),
        cipher_suite: conn
            .negotiated_cipher_suite()
            .expect("handshake done")
            .suite(),
        sni: conn.server_name().map(str::to_string),
    };
    shared.log(id, format!("-- TLS {info:?}"));
    let resumed = conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    shared.with(|s| {
        s.stats.tls_handshakes += 1;
        s.stats.tls_resumed += usize::from(resumed);
    });
    // RFC 3207: forget everything learnt before TLS.
    session.tls = Some(info);
    session.ehlo = None;
    session.txn = Txn::default();
    if let Err(e) = session.run(tls, false).await {
        shared.log(id, format!("!! {e}"));
    }
}

enum End<S> {
    Closed,
    StartTls(S),
}

#[derive(Default)]
struct Txn {
    mail_from: Option<(String, Vec<String>)>,
    rcpts: Vec<Rcpt>,
    bdat: Option<Vec<u8>>,
}

struct Session {
    id: usize,
    opts: MxOptions,
    shared: Arc<Shared>,
    tls: Option<TlsInfo>,
    ehlo: Option<String>,
    txn: Txn,
    messages: usize,
}

/// A stream with a read buffer that we can inspect (for pipelined bytes left
/// over at STARTTLS) and take the stream back from.
struct Io<S> {
    stream: S,
    buf: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Io<S> {
    async fn fill(&mut self) -> io::Result<bool> {
        let mut chunk = [0u8; 16 * 1024];
        let n = tokio::time::timeout(IDLE, self.stream.read(&mut chunk))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "idle"))??;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }

    /// A line without its terminator. Commands may end in a bare LF
    /// (`crlf_only` false); DATA lines end only at CRLF. `None` at EOF.
    async fn line(&mut self, crlf_only: bool) -> io::Result<Option<Vec<u8>>> {
        loop {
            let end = if crlf_only {
                self.buf
                    .windows(2)
                    .position(|w| w == b"\r\n")
                    .map(|p| (p, p + 2))
            } else {
                self.buf.iter().position(|&b| b == b'\n').map(|p| {
                    let start = if p > 0 && self.buf[p - 1] == b'\r' {
                        p - 1
                    } else {
                        p
                    };
                    (start, p + 1)
                })
            };
            if let Some((content_end, next)) = end {
                let line = self.buf[..content_end].to_vec();
                self.buf.drain(..next);
                return Ok(Some(line));
            }
            if self.buf.len() > MAX_LINE {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
            }
            if !self.fill().await? {
                return Ok(None);
            }
        }
    }

    async fn exact(&mut self, n: usize) -> io::Result<Vec<u8>> {
        while self.buf.len() < n {
            if !self.fill().await? {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "EOF in BDAT chunk",
                ));
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    async fn write(&mut self, text: &str) -> io::Result<()> {
        self.stream.write_all(text.as_bytes()).await?;
        self.stream.flush().await
    }
}

/// A reply with CRLF line ends; `text` may hold several lines separated by `\n`.
fn wire(text: &str) -> String {
    text.lines().map(|l| format!("{l}\r\n")).collect()
}

fn is_positive(reply: &str) -> bool {
    reply.starts_with('2') || reply.starts_with('3')
}

/// `FROM:<path> params` / `TO:<path> params` after the verb.
fn parse_path(rest: &str, prefix: &str) -> Option<(String, Vec<String>)> {
    let rest = rest.trim_start();
    if rest.len() < prefix.len() || !rest[..prefix.len()].eq_ignore_ascii_case(prefix) {
        return None;
    }
    let rest = rest[prefix.len()..].trim_start();
    let rest = rest.strip_prefix('<')?;
    // The path ends at the first `>` outside a quoted local part, as in RFC 5321.
    let (mut quoted, mut escaped) = (false, false);
    let close = rest.char_indices().find_map(|(i, c)| {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '>' if !quoted => return Some(i),
            _ => {}
        }
        None
    })?;
    let path = rest[..close].to_string();
    let params = rest[close + 1..]
        .split_ascii_whitespace()
        .map(str::to_string)
        .collect();
    Some((path, params))
}

impl Session {
    fn log(&self, line: String) {
        self.shared.log(self.id, line);
    }

    fn plaintext_command(&self) {
        if self.tls.is_none() {
            self.shared.with(|s| s.stats.plaintext_transactions += 1);
        }
    }

    async fn reply<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        io: &mut Io<S>,
        text: &str,
    ) -> io::Result<()> {
        for l in text.lines() {
            self.log(format!("S: {l}"));
        }
        io.write(&wire(text)).await
    }

    fn ehlo_reply(&self) -> String {
        let o = &self.opts;
        let mut lines = vec![format!("{} greets you", o.hostname)];
        if o.pipelining {
            lines.push("PIPELINING".into());
        }
        if let Some(size) = o.size {
            lines.push(format!("SIZE {size}"));
        }
        if o.eightbitmime {
            lines.push("8BITMIME".into());
        }
        if o.smtputf8 {
            lines.push("SMTPUTF8".into());
        }
        if o.dsn {
            lines.push("DSN".into());
        }
        if o.chunking {
            lines.push("CHUNKING".into());
        }
        lines.push("ENHANCEDSTATUSCODES".into());
        if self.tls.is_none() && o.starttls {
            lines.push("STARTTLS".into());
        }
        if self.tls.is_some() && o.requiretls {
            lines.push("REQUIRETLS".into());
        }
        let last = lines.len() - 1;
        lines
            .iter()
            .enumerate()
            .map(|(i, l)| format!("250{}{l}", if i == last { ' ' } else { '-' }))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Checks MAIL parameters against what was advertised.
    fn mail_param_error(&self, params: &[String]) -> Option<String> {
        let o = &self.opts;
        for p in params {
            let (key, value) = p.split_once('=').unwrap_or((p.as_str(), ""));
            let key = key.to_ascii_uppercase();
            let ok = match key.as_str() {
                "SIZE" => match (o.size, value.parse::<u64>()) {
                    (Some(limit), Ok(n)) => {
                        if n > limit {
                            return Some("552 5.3.4 Message size exceeds fixed limit".into());
                        }
                        true
                    }
                    _ => false,
                },
                "BODY" => match value.to_ascii_uppercase().as_str() {
                    "7BIT" | "8BITMIME" => o.eightbitmime,
                    "BINARYMIME" => o.chunking,
                    _ => false,
                },
                "SMTPUTF8" => o.smtputf8 && value.is_empty(),
                "REQUIRETLS" => o.requiretls && self.tls.is_some() && value.is_empty(),
                "RET" | "ENVID" => o.dsn,
                _ => false,
            };
            if !ok {
                return Some(format!("555 5.5.4 Unsupported MAIL parameter {p}"));
            }
        }
        None
    }

    fn rcpt_param_error(&self, params: &[String]) -> Option<String> {
        for p in params {
            let key = p.split('=').next().unwrap_or("").to_ascii_uppercase();
            if !(self.opts.dsn && (key == "NOTIFY" || key == "ORCPT")) {
                return Some(format!("555 5.5.4 Unsupported RCPT parameter {p}"));
            }
        }
        None
    }

    /// Runs the command loop on one stream (plaintext first, then TLS).
    async fn run<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        stream: S,
        greet: bool,
    ) -> io::Result<End<S>> {
        let mut io = Io {
            stream,
            buf: Vec::new(),
        };
        let mut refusing = false;
        if greet {
            let greeting = self
                .opts
                .greeting
                .clone()
                .unwrap_or_else(|| format!("220 {} ESMTP test MX", self.opts.hostname));
            refusing = !greeting.starts_with('2');
            self.reply(&mut io, &greeting).await?;
        }
        loop {
            let Some(raw) = io.line(false).await? else {
                self.log("-- client closed".into());
                return Ok(End::Closed);
            };
            let line = String::from_utf8_lossy(&raw).into_owned();
            self.log(format!("C: {line}"));
            let (verb, rest) = line.split_once(' ').unwrap_or((line.as_str(), ""));
            let verb = verb.to_ascii_uppercase();
            if matches!(verb.as_str(), "MAIL" | "RCPT" | "DATA" | "BDAT") {
                self.plaintext_command();
            }
            if refusing && verb != "QUIT" {
                if verb == "BDAT" {
                    // Nothing sensible to do with the chunk: close.
                    return Ok(End::Closed);
                }
                self.reply(&mut io, "503 5.5.1 No service").await?;
                continue;
            }
            match verb.as_str() {
                "EHLO" | "HELO" => {
                    let name = rest.trim();
                    if name.is_empty() {
                        self.reply(&mut io, "501 5.5.4 Domain name required")
                            .await?;
                        continue;
                    }
                    self.ehlo = Some(name.to_string());
                    self.txn = Txn::default();
                    let reply = if verb == "EHLO" {
                        self.ehlo_reply()
                    } else {
                        format!("250 {}", self.opts.hostname)
                    };
                    self.reply(&mut io, &reply).await?;
                }
                "STARTTLS" => {
                    if self.tls.is_some() {
                        self.reply(&mut io, "503 5.5.1 TLS already active").await?;
                    } else if !self.opts.starttls {
                        self.reply(&mut io, "502 5.5.1 STARTTLS not offered")
                            .await?;
                    } else if !rest.trim().is_empty() {
                        self.reply(&mut io, "501 5.5.4 No parameters allowed")
                            .await?;
                    } else {
                        self.shared.with(|s| s.stats.starttls_commands += 1);
                        self.reply(&mut io, "220 2.0.0 Ready to start TLS").await?;
                        if !io.buf.is_empty() {
                            // Pipelined after STARTTLS: received in plaintext,
                            // discarded (never executed inside TLS).
                            let leftover = String::from_utf8_lossy(&io.buf).into_owned();
                            for l in leftover.lines() {
                                self.log(format!("C (after STARTTLS, discarded): {l}"));
                                let v = l.split(' ').next().unwrap_or("").to_ascii_uppercase();
                                if matches!(v.as_str(), "MAIL" | "RCPT" | "DATA" | "BDAT") {
                                    self.plaintext_command();
                                }
                            }
                        }
                        return Ok(End::StartTls(io.stream));
                    }
                }
                "MAIL" => {
                    if self.ehlo.is_none() {
                        self.reply(&mut io, "503 5.5.1 EHLO first").await?;
                    } else if self.txn.mail_from.is_some() {
                        self.reply(&mut io, "503 5.5.1 Nested MAIL command").await?;
                    } else if let Some((path, params)) = parse_path(rest, "FROM:") {
                        let reply = self
                            .mail_param_error(&params)
                            .or_else(|| self.opts.mail_reply.clone())
                            .unwrap_or_else(|| "250 2.1.0 OK".into());
                        if is_positive(&reply) {
                            self.txn.mail_from = Some((path, params));
                        }
                        self.reply(&mut io, &reply).await?;
                    } else {
                        self.reply(&mut io, "501 5.5.4 Syntax: MAIL FROM:<address>")
                            .await?;
                    }
                }
                "RCPT" => {
                    if self.txn.mail_from.is_none() {
                        self.reply(&mut io, "503 5.5.1 MAIL first").await?;
                    } else if let Some((address, params)) = parse_path(rest, "TO:") {
                        let reply = self
                            .rcpt_param_error(&params)
                            .or_else(|| self.opts.rcpt_reply_for(&address).cloned())
                            .unwrap_or_else(|| "250 2.1.5 OK".into());
                        if is_positive(&reply) {
                            self.txn.rcpts.push(Rcpt { address, params });
                        }
                        self.reply(&mut io, &reply).await?;
                    } else {
                        self.reply(&mut io, "501 5.5.4 Syntax: RCPT TO:<address>")
                            .await?;
                    }
                }
                "DATA" => {
                    if !rest.trim().is_empty() {
                        self.reply(&mut io, "501 5.5.4 No parameters allowed")
                            .await?;
                    } else if self.txn.mail_from.is_none() || self.txn.bdat.is_some() {
                        self.reply(&mut io, "503 5.5.1 Bad sequence of commands")
                            .await?;
                    } else if self.txn.rcpts.is_empty() {
                        self.reply(&mut io, "554 5.5.1 No valid recipients").await?;
                    } else {
                        self.reply(&mut io, "354 End data with <CR><LF>.<CR><LF>")
                            .await?;
                        let Some(data) = self.read_data(&mut io).await? else {
                            self.log("-- client closed in DATA".into());
                            return Ok(End::Closed);
                        };
                        self.log(format!("C: <{} bytes of message>", data.len()));
                        if self.finish_message(&mut io, data, false).await? {
                            return Ok(End::Closed);
                        }
                    }
                }
                "BDAT" => {
                    if !self.opts.chunking {
                        self.reply(&mut io, "502 5.5.1 CHUNKING not offered")
                            .await?;
                        return Ok(End::Closed);
                    }
                    let mut args = rest.split_ascii_whitespace();
                    let size = args.next().and_then(|s| s.parse::<usize>().ok());
                    let last = match args.next() {
                        None => false,
                        Some(a) if a.eq_ignore_ascii_case("LAST") => true,
                        Some(_) => {
                            self.reply(&mut io, "501 5.5.4 Syntax: BDAT size [LAST]")
                                .await?;
                            return Ok(End::Closed);
                        }
                    };
                    let Some(size) = size.filter(|&s| s <= MAX_MESSAGE) else {
                        self.reply(&mut io, "501 5.5.4 Syntax: BDAT size [LAST]")
                            .await?;
                        return Ok(End::Closed);
                    };
                    let chunk = io.exact(size).await?;
                    self.log(format!("C: <{size} bytes of chunk>"));
                    if self.txn.mail_from.is_none() || self.txn.rcpts.is_empty() {
                        self.reply(&mut io, "503 5.5.1 Bad sequence of commands")
                            .await?;
                        continue;
                    }
                    let buf = self.txn.bdat.get_or_insert_with(Vec::new);
                    buf.extend_from_slice(&chunk);
                    if buf.len() > MAX_MESSAGE {
                        self.reply(&mut io, "552 5.3.4 Message too big").await?;
                        return Ok(End::Closed);
                    }
                    if last {
                        let data = self.txn.bdat.take().unwrap_or_default();
                        if self.finish_message(&mut io, data, true).await? {
                            return Ok(End::Closed);
                        }
                    } else {
                        self.reply(&mut io, &format!("250 2.0.0 {size} octets received"))
                            .await?;
                    }
                }
                "RSET" => {
                    self.txn = Txn::default();
                    self.reply(&mut io, "250 2.0.0 OK").await?;
                }
                "NOOP" => self.reply(&mut io, "250 2.0.0 OK").await?,
                "VRFY" => {
                    self.reply(&mut io, "252 2.5.0 Cannot VRFY user").await?;
                }
                "QUIT" => {
                    self.reply(&mut io, "221 2.0.0 Bye").await?;
                    return Ok(End::Closed);
                }
                _ => {
                    self.reply(&mut io, "500 5.5.2 Command not recognized")
                        .await?
                }
            }
        }
    }

    /// Reads dot-stuffed DATA up to the `.` line; the result keeps every CRLF
    /// but the terminator's. `None` at EOF.
    async fn read_data<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        io: &mut Io<S>,
    ) -> io::Result<Option<Vec<u8>>> {
        let mut data = Vec::new();
        loop {
            let Some(line) = io.line(true).await? else {
                return Ok(None);
            };
            if line == b"." {
                return Ok(Some(data));
            }
            let content = line.strip_prefix(b".").unwrap_or(&line);
            data.extend_from_slice(content);
            data.extend_from_slice(b"\r\n");
            if data.len() > MAX_MESSAGE {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "message too big",
                ));
            }
        }
    }

    /// Sends the final reply and records the message. true: close the connection now.
    async fn finish_message<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Io<S>,
        data: Vec<u8>,
        via_bdat: bool,
    ) -> io::Result<bool> {
        let txn = std::mem::take(&mut self.txn);
        let reply = match self.opts.size {
            Some(limit) if data.len() as u64 > limit => {
                "552 5.3.4 Message size exceeds fixed limit".to_string()
            }
            _ => self
                .opts
                .data_reply
                .clone()
                .unwrap_or_else(|| "250 2.0.0 OK".into()),
        };
        if let Some(delay) = self.opts.data_delay {
            tokio::time::sleep(delay).await;
        }
        let accepted = reply.starts_with('2');
        if accepted {
            let (mail_from, mail_params) = txn.mail_from.unwrap_or_default();
            let message = ReceivedMessage {
                connection: self.id,
                ehlo: self.ehlo.clone().unwrap_or_default(),
                mail_from,
                mail_params,
                rcpts: txn.rcpts,
                data,
                via_bdat,
                tls: self.tls.clone(),
            };
            self.shared.with(|s| {
                s.stats.messages += 1;
                s.received.push(message);
            });
            self.messages += 1;
        }
        self.reply(io, &reply).await?;
        if accepted && Some(self.messages) == self.opts.drop_after_messages {
            self.log("-- dropping the connection".into());
            return Ok(true);
        }
        Ok(false)
    }
}

// ---------------------------------------------------------------------------
// Man in the middle

#[derive(Default)]
struct MitmState {
    connections: usize,
    stripped: usize,
    starttls_refused: usize,
    plaintext_commands: Vec<String>,
    transcript: Vec<String>,
}

/// A proxy in front of an MX host that removes STARTTLS from EHLO replies and
/// answers a STARTTLS command itself with 454, so that everything stays in
/// plaintext and visible. Dropping it stops it.
pub struct Mitm {
    addr: SocketAddr,
    state: Arc<Mutex<MitmState>>,
    task: JoinHandle<()>,
}

impl Drop for Mitm {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Mitm {
    pub async fn start(listen_ip: IpAddr, port: u16, upstream: SocketAddr) -> io::Result<Mitm> {
        let listener = bind(SocketAddr::new(listen_ip, port))?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(MitmState::default()));
        let st = state.clone();
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((client, _)) = accepted else { continue };
                        st.lock().unwrap().connections += 1;
                        connections.spawn(mitm_connection(client, upstream, st.clone()));
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        Ok(Mitm { addr, state, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn connections(&self) -> usize {
        self.state.lock().unwrap().connections
    }

    /// EHLO replies from which STARTTLS was removed.
    pub fn stripped(&self) -> usize {
        self.state.lock().unwrap().stripped
    }

    /// STARTTLS commands the proxy refused (a client that ignored the EHLO reply).
    pub fn starttls_refused(&self) -> usize {
        self.state.lock().unwrap().starttls_refused
    }

    /// Client lines that began with MAIL, RCPT, DATA or BDAT (all in plaintext).
    pub fn plaintext_commands(&self) -> Vec<String> {
        self.state.lock().unwrap().plaintext_commands.clone()
    }

    pub fn transcript(&self) -> Vec<String> {
        self.state.lock().unwrap().transcript.clone()
    }
}

async fn mitm_connection(client: TcpStream, upstream: SocketAddr, state: Arc<Mutex<MitmState>>) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (client_read, client_write) = client.into_split();
    let (server_read, mut server_write) = server.into_split();
    let client_write = Arc::new(tokio::sync::Mutex::new(client_write));

    // Server to client: whole replies, STARTTLS removed.
    let to_client = {
        let client_write = client_write.clone();
        let state = state.clone();
        async move {
            let mut reader = BufReader::new(server_read);
            let mut reply: Vec<String> = Vec::new();
            loop {
                let mut raw = Vec::new();
                if reader.read_until(b'\n', &mut raw).await.unwrap_or(0) == 0 {
                    break;
                }
                let line = String::from_utf8_lossy(&raw)
                    .trim_end_matches(['\r', '\n'])
                    .to_string();
                let is_last = line.as_bytes().get(3) != Some(&b'-');
                reply.push(line);
                if !is_last {
                    continue;
                }
                let before = reply.len();
                reply.retain(|l| {
                    !l.get(4..)
                        .is_some_and(|t| t.trim().eq_ignore_ascii_case("STARTTLS"))
                });
                let out = {
                    let mut st = state.lock().unwrap();
                    if reply.len() != before {
                        st.stripped += 1;
                    }
                    let n = reply.len();
                    let mut out = String::new();
                    for (i, l) in reply.drain(..).enumerate() {
                        let fixed = if l.len() >= 4 {
                            format!(
                                "{}{}{}",
                                &l[..3],
                                if i + 1 == n { ' ' } else { '-' },
                                &l[4..]
                            )
                        } else {
                            l
                        };
                        st.transcript.push(format!("S: {fixed}"));
                        out.push_str(&fixed);
                        out.push_str("\r\n");
                    }
                    out
                };
                if client_write
                    .lock()
                    .await
                    .write_all(out.as_bytes())
                    .await
                    .is_err()
                {
                    break;
                }
            }
            let _ = client_write.lock().await.shutdown().await;
        }
    };

    // Client to server: lines passed on as they are, STARTTLS answered here.
    let to_server = async move {
        let mut reader = BufReader::new(client_read);
        loop {
            let mut raw = Vec::new();
            if reader.read_until(b'\n', &mut raw).await.unwrap_or(0) == 0 {
                break;
            }
            let line = String::from_utf8_lossy(&raw)
                .trim_end_matches(['\r', '\n'])
                .to_string();
            let verb = line.split(' ').next().unwrap_or("").to_ascii_uppercase();
            {
                let mut st = state.lock().unwrap();
                st.transcript.push(format!("C: {line}"));
                if matches!(verb.as_str(), "MAIL" | "RCPT" | "DATA" | "BDAT") {
                    st.plaintext_commands.push(line.clone());
                }
                if verb == "STARTTLS" {
                    st.starttls_refused += 1;
                    st.transcript
                        .push("S (mitm): 454 4.7.0 TLS not available".into());
                }
            }
            if verb == "STARTTLS" && line.trim().eq_ignore_ascii_case("STARTTLS") {
                let mut w = client_write.lock().await;
                if w.write_all(b"454 4.7.0 TLS not available\r\n")
                    .await
                    .is_err()
                {
                    break;
                }
                continue;
            }
            if server_write.write_all(&raw).await.is_err() {
                break;
            }
        }
        let _ = server_write.shutdown().await;
    };

    tokio::join!(to_client, to_server);
}
