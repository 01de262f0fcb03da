//! The outbound SMTP client: connect, EHLO, mandatory STARTTLS, EHLO again, and
//! one or more mail transactions. No command that carries mail is ever sent
//! before TLS is up: the only plaintext commands are EHLO, STARTTLS and QUIT.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;

use crate::protocol::data::normalize_line_ends;
use crate::reporting::outcome::ResultType;

/// One SMTP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit code.
    pub code: u16,
    /// The text of each line, without the code.
    pub lines: Vec<String>,
}

impl Reply {
    /// The reply on one line, as it goes into logs and bounces: `550 5.1.1 no such user`.
    pub fn one_line(&self) -> String {
        format!("{} {}", self.code, self.lines.join(" / "))
    }

    /// The enhanced status code at the start of the text, if any.
    pub fn enhanced(&self) -> Option<String> {
        let first = self.lines.first()?.split(' ').next()?;
        let parts: Vec<&str> = first.split('.').collect();
        let ok = parts.len() == 3
            && matches!(parts[0], "2" | "4" | "5")
            && parts[1..]
                .iter()
                .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()));
        ok.then(|| first.to_string())
    }

    /// 2xx.
    pub fn is_ok(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// 5xx.
    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }
}

/// Collects the lines of one (multi-line) reply; pure, so that it can be fuzzed.
#[derive(Debug, Default)]
pub struct ReplyReader {
    lines: Vec<String>,
}

impl ReplyReader {
    /// Takes one line (without its line end); the reply once its last line came.
    pub fn line(&mut self, line: &[u8]) -> io::Result<Option<Reply>> {
        let text = String::from_utf8_lossy(line);
        let Some(code) = text
            .get(..3)
            .filter(|c| c.bytes().all(|b| b.is_ascii_digit()))
        else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("malformed reply line: {text:?}"),
            ));
        };
        let code: u16 = code.parse().unwrap_or(0);
        let more = text.as_bytes().get(3) == Some(&b'-');
        self.lines.push(text.get(4..).unwrap_or("").to_string());
        if !more {
            let lines = std::mem::take(&mut self.lines);
            return Ok(Some(Reply { code, lines }));
        }
        if self.lines.len() > 100 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "reply longer than 100 lines",
            ));
        }
        Ok(None)
    }
}

/// Extensions the server announced in its EHLO reply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// STARTTLS.
    pub starttls: bool,
    /// PIPELINING.
    pub pipelining: bool,
    /// SIZE, with the limit (0 = no limit given).
    pub size: Option<u64>,
    /// 8BITMIME.
    pub eightbitmime: bool,
    /// SMTPUTF8.
    pub smtputf8: bool,
    /// DSN.
    pub dsn: bool,
    /// REQUIRETLS.
    pub requiretls: bool,
}

impl Capabilities {
    /// Reads the capabilities from an EHLO reply (the first line is the greeting).
    pub fn from_ehlo(reply: &Reply) -> Capabilities {
        let mut caps = Capabilities::default();
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let keyword = words.next().unwrap_or("").to_ascii_uppercase();
            match keyword.as_str() {
                "STARTTLS" => caps.starttls = true,
                "PIPELINING" => caps.pipelining = true,
                "SIZE" => caps.size = Some(words.next().and_then(|w| w.parse().ok()).unwrap_or(0)),
                "8BITMIME" => caps.eightbitmime = true,
                "SMTPUTF8" => caps.smtputf8 = true,
                "DSN" => caps.dsn = true,
                "REQUIRETLS" => caps.requiretls = true,
                _ => {}
            }
        }
        caps
    }
}

/// Why a session with a host could not be used.
#[derive(Debug, Clone, PartialEq)]
pub struct HostError {
    /// Plain words, naming the host and address.
    pub reason: String,
    /// The RFC 8460 result type, when the failure is about TLS.
    pub result: Option<ResultType>,
    /// The server's reply, when it gave one.
    pub reply: Option<Reply>,
    /// Our end of the connection, once connected (TLS-RPT's sending-mta-ip).
    pub local: Option<SocketAddr>,
}

/// The transport of an outbound session.
enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Closed,
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Transport::Closed => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Transport::Closed => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Transport::Closed => Poll::Ready(Ok(())),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Transport::Closed => Poll::Ready(Ok(())),
        }
    }
}

/// How one outbound session is made: its source address and timeouts.
#[derive(Debug, Clone, Copy)]
pub struct Dial {
    /// The source address to bind; none: the kernel chooses.
    pub source: Option<IpAddr>,
    /// TCP connect.
    pub connect: Duration,
    /// Each command's reply.
    pub command: Duration,
    /// The reply after the message data.
    pub data: Duration,
}

impl Dial {
    /// The settings of a probe (`check`, early warnings): `[delivery]`'s timeouts,
    /// each reply waited for at most 30 s, from `source`.
    pub fn probe(d: &crate::config::DeliveryConfig, source: Option<IpAddr>) -> Dial {
        Dial {
            source,
            connect: d.connect_timeout.get(),
            command: d.command_timeout.get().min(Duration::from_secs(30)),
            data: d.data_timeout.get(),
        }
    }
}

/// An authenticated TLS session with one MX host, ready for mail transactions.
pub struct Session {
    transport: Transport,
    rbuf: Vec<u8>,
    /// The MX host name.
    pub host: String,
    /// The address connected to.
    pub addr: SocketAddr,
    /// What the server offers after STARTTLS.
    pub caps: Capabilities,
    /// TLS version, e.g. `TLSv1.3`.
    pub tls_version: String,
    /// Negotiated cipher suite.
    pub tls_cipher: String,
    /// Negotiated key exchange group, e.g. `X25519`.
    pub tls_kx_group: String,
    /// Our end of the connection.
    pub local_addr: Option<SocketAddr>,
    /// The certificate chain the server presented.
    pub peer_certificates: Vec<rustls_pki_types::CertificateDer<'static>>,
    timeouts: Dial,
    /// Counted in the open-connections gauge while the session lives.
    gauge: crate::reporting::metrics::OpenConnection,
}

/// A socket for a connection to `addr`, bound to `source` when one is configured.
fn bound_socket(addr: SocketAddr, source: Option<IpAddr>) -> Result<TcpSocket, String> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| format!("could not be reached: no socket ({e})"))?;
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0)).map_err(|e| {
            format!(
                "could not be reached: the source address {ip} cannot be used ({e}); \
                 check source_ipv4/source_ipv6"
            )
        })?;
    }
    Ok(socket)
}

impl Session {
    /// Connects to `addr`, says EHLO, insists on STARTTLS, completes a handshake
    /// checked by `tls` for the name `sni`, and says EHLO again.
    pub async fn open(
        host: &str,
        addr: SocketAddr,
        helo: &str,
        tls: Arc<rustls::ClientConfig>,
        sni: &str,
        timeouts: Dial,
    ) -> Result<Session, HostError> {
        let mut s = Session::connect(host, addr, timeouts).await?;
        s.until_starttls(helo).await?;
        s.handshake(tls, sni).await?;
        let ehlo = s.command_or_drop(&format!("EHLO {helo}")).await?;
        if !ehlo.is_ok() {
            let text = ehlo.one_line();
            let why = format!("refused EHLO after STARTTLS ({text})");
            return Err(s.error(why, None, Some(ehlo)));
        }
        s.caps = Capabilities::from_ehlo(&ehlo);
        Ok(s)
    }

    /// A TCP connection to `addr`, not yet greeted.
    async fn connect(host: &str, addr: SocketAddr, timeouts: Dial) -> Result<Session, HostError> {
        let failed = |reason: String| HostError {
            reason: format!("{host}[{}] {reason}", addr.ip()),
            result: None,
            reply: None,
            local: None,
        };
        let socket = match bound_socket(addr, timeouts.source) {
            Ok(s) => s,
            Err(e) => return Err(failed(e)),
        };
        let tcp = match tokio::time::timeout(timeouts.connect, socket.connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(failed(format!("refused the connection: {e}"))),
            Err(_) => {
                return Err(failed(format!(
                    "did not answer within {:?}",
                    timeouts.connect
                )))
            }
        };
        let _ = tcp.set_nodelay(true);
        Ok(Session {
            local_addr: tcp.local_addr().ok(),
            transport: Transport::Plain(tcp),
            rbuf: Vec::new(),
            host: host.to_string(),
            addr,
            caps: Capabilities::default(),
            tls_version: String::new(),
            tls_cipher: String::new(),
            tls_kx_group: String::new(),
            peer_certificates: Vec::new(),
            timeouts,
            gauge: crate::reporting::metrics::OpenConnection::new(),
        })
    }

    /// Counts the connection under the mechanism that authenticated its peer.
    pub fn authenticated_by(&mut self, mechanism: crate::model::mechanism::Mechanism) {
        self.gauge.authenticated(mechanism);
    }

    /// Greeting, EHLO and STARTTLS in clear: the only commands ever sent before TLS.
    async fn until_starttls(&mut self, helo: &str) -> Result<(), HostError> {
        let greeting =
            (self.read_reply(self.timeouts.command).await).map_err(|e| self.dropped(e))?;
        if greeting.code != 220 {
            let text = greeting.one_line();
            return Err(self.error(format!("greeted with {text}"), None, Some(greeting)));
        }
        let no_tls = Some(ResultType::StarttlsNotSupported);
        let ehlo = self.command_or_drop(&format!("EHLO {helo}")).await?;
        if !ehlo.is_ok() {
            let text = ehlo.one_line();
            let why = format!("refused EHLO ({text}), so STARTTLS is impossible; tlsrelay never delivers without TLS");
            return Err(self.error(why, no_tls, Some(ehlo)));
        }
        if !Capabilities::from_ehlo(&ehlo).starttls {
            let _ = self.command("QUIT", self.timeouts.command).await;
            let why = "did not offer STARTTLS; tlsrelay never delivers without TLS";
            return Err(self.error(why.into(), no_tls, None));
        }
        let reply = self.command_or_drop("STARTTLS").await?;
        if reply.code != 220 {
            let text = reply.one_line();
            let why = format!("refused STARTTLS ({text}); tlsrelay never delivers without TLS");
            return Err(self.error(why, no_tls, Some(reply)));
        }
        // Anything the server sent after its 220 came in clear: discard it.
        self.rbuf.clear();
        Ok(())
    }

    /// The TLS handshake, checked by `tls` for the name `sni`.
    async fn handshake(
        &mut self,
        tls: Arc<rustls::ClientConfig>,
        sni: &str,
    ) -> Result<(), HostError> {
        let invalid = Some(ResultType::ValidationFailure);
        let Ok(name) = ServerName::try_from(sni.to_string()) else {
            return Err(self.error(format!("has a name unusable for TLS: {sni}"), invalid, None));
        };
        let Transport::Plain(tcp) = std::mem::replace(&mut self.transport, Transport::Closed)
        else {
            unreachable!("the transport is plain before STARTTLS");
        };
        let connector = tokio_rustls::TlsConnector::from(tls);
        let stream =
            match tokio::time::timeout(self.timeouts.command, connector.connect(name, tcp)).await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    let (kind, words) = crate::tls::classify_tls_error(&e);
                    return Err(self.error(words, Some(kind), None));
                }
                Err(_) => {
                    let why = "did not complete the TLS handshake in time";
                    return Err(self.error(why.into(), invalid, None));
                }
            };
        self.note_tls(stream.get_ref().1);
        self.transport = Transport::Tls(Box::new(stream));
        Ok(())
    }

    /// Keeps what the handshake negotiated, for logs, reports and `check`.
    fn note_tls(&mut self, c: &rustls::ClientConnection) {
        self.tls_version = match c.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".into(),
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".into(),
            other => format!("{other:?}"),
        };
        self.tls_cipher = c
            .negotiated_cipher_suite()
            .map(|cs| format!("{:?}", cs.suite()))
            .unwrap_or_default();
        self.tls_kx_group = c
            .negotiated_key_exchange_group()
            .map(|g| format!("{:?}", g.name()))
            .unwrap_or_default();
        self.peer_certificates = c
            .peer_certificates()
            .map(|certs| certs.iter().map(|c| c.clone().into_owned()).collect())
            .unwrap_or_default();
    }

    /// A command whose reply must come; a broken connection is a host error.
    async fn command_or_drop(&mut self, line: &str) -> Result<Reply, HostError> {
        let t = self.timeouts.command;
        self.command(line, t).await.map_err(|e| self.dropped(e))
    }

    /// The host dropped the connection.
    fn dropped(&self, e: io::Error) -> HostError {
        self.error(format!("dropped the connection: {e}"), None, None)
    }

    /// A host error naming this host and address.
    fn error(&self, reason: String, result: Option<ResultType>, reply: Option<Reply>) -> HostError {
        HostError {
            reason: format!("{}[{}] {reason}", self.host, self.addr.ip()),
            result,
            reply,
            local: self.local_addr,
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        let t = self.timeouts.command;
        match tokio::time::timeout(t, async {
            self.transport.write_all(bytes).await?;
            self.transport.flush().await
        })
        .await
        {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "timeout while sending",
            )),
        }
    }

    /// Sends one command and reads its reply.
    pub async fn command(&mut self, line: &str, timeout: Duration) -> io::Result<Reply> {
        self.write(format!("{line}\r\n").as_bytes()).await?;
        self.read_reply(timeout).await
    }

    /// Reads one (multi-line) reply.
    pub async fn read_reply(&mut self, timeout: Duration) -> io::Result<Reply> {
        let mut reader = ReplyReader::default();
        loop {
            let line = self.read_line(timeout).await?;
            if let Some(reply) = reader.line(&line)? {
                return Ok(reply);
            }
        }
    }

    async fn read_line(&mut self, timeout: Duration) -> io::Result<Vec<u8>> {
        loop {
            if let Some(pos) = self.rbuf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.rbuf.drain(..=pos).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(line);
            }
            if self.rbuf.len() > 8192 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "reply line too long",
                ));
            }
            let mut chunk = [0u8; 4096];
            let n = match tokio::time::timeout(timeout, self.transport.read(&mut chunk)).await {
                Ok(r) => r?,
                Err(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no reply within {timeout:?}"),
                    ))
                }
            };
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed",
                ));
            }
            self.rbuf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Runs one mail transaction. `mail` is the full MAIL command, `rcpts` the RCPT
    /// commands. Returns the reply to MAIL, to each RCPT, and (when at least one
    /// recipient was accepted) the reply after the data.
    pub async fn transaction(
        &mut self,
        mail: &str,
        rcpts: &[String],
        message: &[u8],
    ) -> io::Result<TransactionReplies> {
        let t = self.timeouts.command;
        let mut replies = TransactionReplies::default();
        if self.caps.pipelining {
            let mut batch = format!("{mail}\r\n");
            for r in rcpts {
                batch.push_str(r);
                batch.push_str("\r\n");
            }
            batch.push_str("DATA\r\n");
            self.write(batch.as_bytes()).await?;
            replies.mail = Some(self.read_reply(t).await?);
            for _ in rcpts {
                replies.rcpts.push(self.read_reply(t).await?);
            }
            let data = self.read_reply(t).await?;
            let mail_ok = replies.mail.as_ref().is_some_and(Reply::is_ok);
            let any_rcpt = replies.rcpts.iter().any(Reply::is_ok);
            if data.code != 354 {
                replies.data = Some(data);
                return Ok(replies);
            }
            if !mail_ok || !any_rcpt {
                // RFC 2920: the server said 354 although nothing can be delivered;
                // end the data at once with an empty message and expect a failure.
                self.write(b".\r\n").await?;
                let _ = self.read_reply(self.timeouts.data).await?;
                return Ok(replies);
            }
        } else {
            let mail_reply = self.command(mail, t).await?;
            let ok = mail_reply.is_ok();
            replies.mail = Some(mail_reply);
            if !ok {
                return Ok(replies);
            }
            for r in rcpts {
                let reply = self.command(r, t).await?;
                replies.rcpts.push(reply);
            }
            if !replies.rcpts.iter().any(Reply::is_ok) {
                return Ok(replies);
            }
            let data = self.command("DATA", t).await?;
            if data.code != 354 {
                replies.data = Some(data);
                return Ok(replies);
            }
        }
        let stuffed = dot_stuff(message);
        match tokio::time::timeout(self.timeouts.data, async {
            self.transport.write_all(&stuffed).await?;
            self.transport.flush().await
        })
        .await
        {
            Ok(r) => r?,
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "timeout while sending the message",
                ))
            }
        }
        replies.data_sent = true;
        replies.data = Some(self.read_reply(self.timeouts.data).await?);
        Ok(replies)
    }

    /// Resets the session between transactions; false when it is no longer usable.
    pub async fn reset(&mut self) -> bool {
        matches!(self.command("RSET", self.timeouts.command).await, Ok(r) if r.is_ok())
    }

    /// Says QUIT and closes.
    pub async fn quit(mut self) {
        let _ = self.command("QUIT", Duration::from_secs(5)).await;
        let _ = self.transport.shutdown().await;
    }
}

/// The replies of one transaction.
#[derive(Debug, Default, Clone)]
pub struct TransactionReplies {
    /// Reply to MAIL.
    pub mail: Option<Reply>,
    /// Replies to each RCPT, in order.
    pub rcpts: Vec<Reply>,
    /// Reply to DATA (when not 354) or after the data.
    pub data: Option<Reply>,
    /// Whether the message data was sent.
    pub data_sent: bool,
}

/// The message with leading dots doubled, ending in CRLF.CRLF (RFC 5321 §4.5.2).
/// Every bare CR and bare LF goes out as CRLF (RFC 5321 §2.3.8): inbound already
/// stores only CRLF, and this keeps it true for any message however it was
/// spooled, so no `\r.\r\n` ever reaches a receiver as smuggling material.
pub fn dot_stuff(message: &[u8]) -> Vec<u8> {
    let message = normalize_line_ends(message);
    let mut out = Vec::with_capacity(message.len() + message.len() / 64 + 5);
    let mut at_line_start = true;
    for &b in &message {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_stuffing() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"a\r\n", b"a\r\n.\r\n"),
            (b".a\r\n.\r\nb\r\n", b"..a\r\n..\r\nb\r\n.\r\n"),
            (b"no newline", b"no newline\r\n.\r\n"),
            (b"", b"\r\n.\r\n"),
            (b"x\r\n..y\r\n", b"x\r\n...y\r\n.\r\n"),
            (
                b"a\r.\r\nb\n.\nc\r.\rd",
                b"a\r\n..\r\nb\r\n..\r\nc\r\n..\r\nd\r\n.\r\n",
            ),
            (b"x\r", b"x\r\n.\r\n"),
        ];
        for (input, want) in cases {
            assert_eq!(
                dot_stuff(input),
                *want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn capabilities() {
        let reply = Reply {
            code: 250,
            lines: [
                "mx.test hello",
                "PIPELINING",
                "SIZE 1000",
                "starttls",
                "8BITMIME",
                "SMTPUTF8",
                "DSN",
                "REQUIRETLS",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        };
        let caps = Capabilities::from_ehlo(&reply);
        assert!(
            caps.starttls
                && caps.pipelining
                && caps.eightbitmime
                && caps.smtputf8
                && caps.dsn
                && caps.requiretls
        );
        assert_eq!(caps.size, Some(1000));
        let greeting_only = Reply {
            code: 250,
            lines: vec!["STARTTLS is my name".into()],
        };
        assert!(
            !Capabilities::from_ehlo(&greeting_only).starttls,
            "the greeting line is not a capability"
        );
    }

    #[test]
    fn enhanced_codes() {
        let r = |t: &str| Reply {
            code: 550,
            lines: vec![t.into()],
        };
        assert_eq!(r("5.1.1 no such user").enhanced().as_deref(), Some("5.1.1"));
        assert_eq!(r("no such user").enhanced(), None);
        assert_eq!(r("5.1 x").enhanced(), None);
    }
}
