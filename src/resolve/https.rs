//! The one way tlsrelay makes HTTPS requests (MTA-STS policies, TLS report
//! POSTs): to addresses our own validating resolver found, with tlsrelay's TLS
//! configuration, never redirected, never through a proxy.

use std::net::SocketAddr;
use std::time::Duration;

/// A client that reaches `host` only at `addrs`; `purpose` goes into the User-Agent.
pub fn strict_client(
    tls: &rustls::ClientConfig,
    host: &str,
    addrs: &[SocketAddr],
    purpose: &str,
    timeout: Duration,
) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls.clone())
        .redirect(reqwest::redirect::Policy::none())
        .https_only(true)
        .user_agent(format!(
            "tlsrelay/{} ({purpose})",
            env!("CARGO_PKG_VERSION")
        ))
        .timeout(timeout)
        .resolve_to_addrs(host, addrs)
        .no_proxy()
        .build()
}
