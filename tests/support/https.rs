//! A small HTTPS server for MTA-STS policy tests: real rustls, HTTP/1.1 by hand,
//! one scripted response that tests can change while it runs.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::pki::CertChain;

/// What the server answers to every request.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status line after "HTTP/1.1 ", e.g. "200 OK" or "302 Found".
    pub status: String,
    /// Extra header lines, e.g. ("Content-Type", "text/plain").
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// Whether to send Content-Length (otherwise the body ends when the connection closes).
    pub content_length: bool,
}

impl Response {
    /// 200, text/plain, with Content-Length.
    pub fn policy(text: &str) -> Response {
        Response {
            status: "200 OK".into(),
            headers: vec![("Content-Type".into(), "text/plain; charset=utf-8".into())],
            body: text.as_bytes().to_vec(),
            content_length: true,
        }
    }
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Request {
    /// Request line and headers.
    pub head: String,
    /// The body (Content-Length bytes).
    pub body: Vec<u8>,
}

/// A running HTTPS server.
pub struct HttpsServer {
    addr: SocketAddr,
    response: Arc<Mutex<Response>>,
    requests: Arc<Mutex<Vec<String>>>,
    bodies: Arc<Mutex<Vec<Request>>>,
    connections: Arc<AtomicUsize>,
    /// Milliseconds each answer waits after the request is recorded.
    stall_ms: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HttpsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HttpsServer {
    /// Starts on `ip:port` presenting `cert`.
    pub async fn start(ip: IpAddr, port: u16, cert: CertChain, response: Response) -> HttpsServer {
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(cert.certs.clone(), cert.key.clone_key())
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        // SO_REUSEADDR: a test may restart a server on the same address at once.
        let socket = if ip.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }
        .unwrap();
        socket.set_reuseaddr(true).unwrap();
        let mut tries = 0;
        while let Err(e) = socket.bind(SocketAddr::new(ip, port)) {
            tries += 1;
            assert!(tries < 50, "bind {ip}:{port}: {e}");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let listener: TcpListener = socket.listen(64).unwrap();
        let addr = listener.local_addr().unwrap();
        let response = Arc::new(Mutex::new(response));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let bodies: Arc<Mutex<Vec<Request>>> = Arc::new(Mutex::new(Vec::new()));
        let stall_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (r, q, n, b) = (
            response.clone(),
            requests.clone(),
            connections.clone(),
            bodies.clone(),
        );
        let st = stall_ms.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                n.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                let (r, q, b, st) = (r.clone(), q.clone(), b.clone(), st.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => buf.extend_from_slice(&chunk[..k]),
                        }
                    }
                    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                    let length: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    while buf.len() < head_end + length {
                        match tls.read(&mut chunk).await {
                            Ok(0) | Err(_) => break,
                            Ok(k) => buf.extend_from_slice(&chunk[..k]),
                        }
                    }
                    q.lock()
                        .unwrap()
                        .push(head.lines().next().unwrap_or("").to_string());
                    b.lock().unwrap().push(Request {
                        head: head.clone(),
                        body: buf[head_end..].to_vec(),
                    });
                    let stall = st.load(Ordering::SeqCst);
                    if stall > 0 {
                        tokio::time::sleep(std::time::Duration::from_millis(stall)).await;
                    }
                    let resp = r.lock().unwrap().clone();
                    let mut head = format!("HTTP/1.1 {}\r\nConnection: close\r\n", resp.status);
                    for (k, v) in &resp.headers {
                        head.push_str(&format!("{k}: {v}\r\n"));
                    }
                    if resp.content_length {
                        head.push_str(&format!("Content-Length: {}\r\n", resp.body.len()));
                    }
                    head.push_str("\r\n");
                    let _ = tls.write_all(head.as_bytes()).await;
                    let _ = tls.write_all(&resp.body).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        HttpsServer {
            addr,
            response,
            requests,
            bodies,
            connections,
            stall_ms,
            task,
        }
    }

    /// Makes each answer wait `d` after its request is recorded (a slow receiver).
    pub fn set_stall(&self, d: std::time::Duration) {
        self.stall_ms.store(d.as_millis() as u64, Ordering::SeqCst);
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces the response for later requests.
    pub fn set_response(&self, r: Response) {
        *self.response.lock().unwrap() = r;
    }

    /// Request lines received so far.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    /// Full requests (head and body) received so far.
    pub fn full_requests(&self) -> Vec<Request> {
        self.bodies.lock().unwrap().clone()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}
