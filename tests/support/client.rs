//! A small SMTP client for tests: raw lines over a real socket, optional STARTTLS.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Anything a test client can talk over.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// One SMTP reply: code and the text of every line.
#[derive(Debug, Clone)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    /// The whole reply as the server wrote it, lines joined by `\n`.
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }
}

/// A test SMTP client.
pub struct Client {
    io: BufReader<Box<dyn Stream>>,
}

impl Client {
    /// The connection under the client (to start TLS on it by hand).
    pub fn into_inner(self) -> Box<dyn Stream> {
        self.io.into_inner()
    }

    /// A client over an established stream (e.g. after a hand-made TLS handshake).
    pub fn from_stream_boxed(stream: Box<dyn Stream>) -> Client {
        Client {
            io: BufReader::new(stream),
        }
    }

    /// Connects and returns the client and the greeting.
    pub async fn connect(addr: SocketAddr) -> (Client, Reply) {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let mut c = Client {
            io: BufReader::new(Box::new(tcp)),
        };
        let greeting = c.read().await;
        (c, greeting)
    }

    /// A client on an already connected stream (nothing read yet).
    pub fn from_stream(tcp: TcpStream) -> Client {
        Client {
            io: BufReader::new(Box::new(tcp)),
        }
    }

    /// Connects from the local address `source` (e.g. another 127.0.0.x, to be
    /// a different client to the server) and returns the client and the greeting.
    pub async fn connect_from(addr: SocketAddr, source: std::net::IpAddr) -> (Client, Reply) {
        let tcp = connect_tcp_from(addr, source).await;
        let mut c = Client {
            io: BufReader::new(Box::new(tcp)),
        };
        let greeting = c.read().await;
        (c, greeting)
    }

    /// Sends raw bytes.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.io.get_mut().write_all(bytes).await.expect("write");
        self.io.get_mut().flush().await.expect("flush");
    }

    /// Sends one command line (CRLF added) and reads its reply.
    pub async fn cmd(&mut self, line: &str) -> Reply {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.read().await
    }

    /// Reads one (possibly multi-line) reply; panics after 10 s.
    pub async fn read(&mut self) -> Reply {
        tokio::time::timeout(Duration::from_secs(10), self.try_read())
            .await
            .expect("timeout reading reply")
            .expect("connection closed before a reply")
    }

    /// Reads one reply, or None when the connection closed.
    pub async fn try_read(&mut self) -> Option<Reply> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = self.io.read_line(&mut line).await.ok()?;
            if n == 0 {
                return None;
            }
            let line = line.trim_end().to_string();
            let code: u16 = line.get(..3)?.parse().ok()?;
            let more = line.as_bytes().get(3) == Some(&b'-');
            lines.push(line);
            if !more {
                return Some(Reply { code, lines });
            }
        }
    }

    /// Whether the server closed the connection (reads until EOF, 10 s at most).
    pub async fn closed(&mut self) -> bool {
        tokio::time::timeout(Duration::from_secs(10), async {
            let mut buf = String::new();
            loop {
                buf.clear();
                match self.io.read_line(&mut buf).await {
                    Ok(0) | Err(_) => return true,
                    Ok(_) => continue,
                }
            }
        })
        .await
        .unwrap_or(false)
    }

    /// Upgrades to TLS (after the server's 220 to STARTTLS), trusting `root`.
    pub async fn start_tls(self, root: CertificateDer<'static>, name: &str) -> Client {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(root).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let inner = self.io.into_inner();
        let tls = connector
            .connect(ServerName::try_from(name.to_string()).unwrap(), inner)
            .await
            .expect("TLS handshake");
        Client {
            io: BufReader::new(Box::new(tls)),
        }
    }
}

/// A TCP connection to `addr` from the local address `source`.
pub async fn connect_tcp_from(addr: SocketAddr, source: std::net::IpAddr) -> TcpStream {
    let socket = match source {
        std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .expect("socket");
    socket
        .bind(SocketAddr::new(source, 0))
        .expect("bind source");
    socket.connect(addr).await.expect("connect")
}
