//! A client connection that starts in plaintext and may be upgraded by STARTTLS.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// The transport under an inbound SMTP session.
pub enum Conn {
    /// Before STARTTLS.
    Plain(TcpStream),
    /// After a completed STARTTLS handshake.
    Tls(Box<TlsStream<TcpStream>>),
    /// Transient state while the handshake owns the socket; never read or written.
    Upgrading,
}

impl Conn {
    /// TLS version and cipher suite, e.g. `TLSv1.3 TLS13_AES_256_GCM_SHA384`, when encrypted.
    pub fn tls_description(&self) -> Option<(String, String)> {
        match self {
            Conn::Tls(s) => {
                let (_, c) = s.get_ref();
                let version = c
                    .protocol_version()
                    .map(|v| match v {
                        rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3".to_string(),
                        rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2".to_string(),
                        other => format!("{other:?}"),
                    })
                    .unwrap_or_default();
                let cipher = c
                    .negotiated_cipher_suite()
                    .map(|s| format!("{:?}", s.suite()))
                    .unwrap_or_default();
                Some((version, cipher))
            }
            _ => None,
        }
    }
}

fn upgrading() -> io::Error {
    io::Error::other("connection is being upgraded to TLS")
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Conn::Upgrading => Poll::Ready(Err(upgrading())),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Conn::Upgrading => Poll::Ready(Err(upgrading())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Conn::Upgrading => Poll::Ready(Err(upgrading())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Conn::Upgrading => Poll::Ready(Ok(())),
        }
    }
}
