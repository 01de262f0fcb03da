//! The HTTP endpoint of `[metrics] listen`: `/metrics`, `/healthz`, `/readyz`,
//! and `/posture` (the posture report's HTML page) with `[metrics] posture`.
//!
//! hyper serves HTTP/1.1; which answer a request gets is the pure [`route`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use metrics_exporter_prometheus::PrometheusHandle;

use super::health::{readiness, Health};
use crate::model::metric::{READY, SPOOL_FREE, SPOOL_RESERVE};

/// A connection may last this long; a slow client cannot hold one open.
const CONNECTION_TIME: Duration = Duration::from_secs(30);

/// The Prometheus text format's media type.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The endpoint could not be started.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The address cannot be bound.
    #[error("cannot listen for metrics on {addr}: {error}")]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        error: std::io::Error,
    },
    /// The process-wide recorder cannot be installed (one already is).
    #[error("cannot set up the metrics recorder: {0}")]
    Recorder(#[from] metrics_exporter_prometheus::BuildError),
}

/// What a request is answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `GET /metrics`.
    Metrics,
    /// `GET /healthz`: 200 while the process serves at all.
    Healthz,
    /// `GET /readyz`: 200, or 503 with the reasons.
    Readyz,
    /// `GET /posture`: the posture report (404 unless `[metrics] posture`).
    Posture,
    /// Any other path: 404.
    NotFound,
    /// A known path with another method: 405.
    MethodNotAllowed,
}

/// The route of a request. Pure.
pub fn route(method: &Method, path: &str) -> Route {
    let known = match path {
        "/metrics" => Route::Metrics,
        "/healthz" => Route::Healthz,
        "/readyz" => Route::Readyz,
        "/posture" => Route::Posture,
        _ => return Route::NotFound,
    };
    if method == Method::GET {
        known
    } else {
        Route::MethodNotAllowed
    }
}

/// Binds `addr`, installs the recorder and serves in the background (needs a tokio runtime).
/// With `posture` (the spool directory), `/posture` is served too.
pub fn start(
    addr: SocketAddr,
    health: Arc<Health>,
    posture: Option<std::path::PathBuf>,
) -> Result<(), EndpointError> {
    let listen = |error| EndpointError::Listen { addr, error };
    let std_listener = std::net::TcpListener::bind(addr).map_err(listen)?;
    std_listener.set_nonblocking(true).map_err(listen)?;
    let listener = tokio::net::TcpListener::from_std(std_listener).map_err(listen)?;
    let handle = super::metrics::install()?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        // Histograms buffer samples until rendered; without scrapes, this bounds them.
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    let endpoint = Arc::new(Endpoint {
        handle,
        health,
        posture,
    });
    tokio::spawn(serve(listener, endpoint));
    Ok(())
}

struct Endpoint {
    handle: PrometheusHandle,
    health: Arc<Health>,
    /// The spool directory whose receipts and outcomes `/posture` reads.
    posture: Option<std::path::PathBuf>,
}

async fn serve(listener: tokio::net::TcpListener, endpoint: Arc<Endpoint>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let endpoint = endpoint.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let endpoint = endpoint.clone();
                async move {
                    let (method, path) = (req.method().clone(), req.uri().path().to_string());
                    if route(&method, &path) == Route::Posture {
                        return Ok::<_, Infallible>(endpoint.posture().await);
                    }
                    Ok::<_, Infallible>(endpoint.answer(&method, &path))
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            // Errors here are the client's (a reset, bad HTTP); hyper has answered what it could.
            let _ = tokio::time::timeout(CONNECTION_TIME, conn).await;
        });
    }
}

impl Endpoint {
    /// The posture page of the last 30 days, read on a blocking thread.
    async fn posture(&self) -> Response<Full<Bytes>> {
        let Some(dir) = self.posture.clone() else {
            return self.answer(&Method::GET, "/not-found");
        };
        let now = chrono::Utc::now();
        let read = tokio::task::spawn_blocking(move || {
            let warnings = super::posture::early_warnings(&dir);
            super::posture::load(&dir, 30, now, warnings).map(|p| super::posture::html::render(&p))
        });
        match read.await {
            Ok(Ok(page)) => reply(StatusCode::OK, "text/html; charset=utf-8", page),
            Ok(Err(e)) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot read receipts or outcomes: {e}\n"),
            ),
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
        }
    }

    fn answer(&self, method: &Method, path: &str) -> Response<Full<Bytes>> {
        match route(method, path) {
            Route::Metrics => reply(StatusCode::OK, PROMETHEUS_TEXT, self.scrape()),
            Route::Healthz => text(StatusCode::OK, "ok\n".into()),
            Route::Readyz => {
                let reasons = readiness(&self.health.state());
                if reasons.is_empty() {
                    text(StatusCode::OK, "ready\n".into())
                } else {
                    let body: String = reasons.iter().map(|r| format!("{r}\n")).collect();
                    text(StatusCode::SERVICE_UNAVAILABLE, body)
                }
            }
            Route::Posture | Route::NotFound => text(
                StatusCode::NOT_FOUND,
                "not found: try /metrics, /healthz or /readyz\n".into(),
            ),
            Route::MethodNotAllowed => {
                let mut r = text(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "only GET is allowed\n".into(),
                );
                r.headers_mut().insert(
                    hyper::header::ALLOW,
                    hyper::header::HeaderValue::from_static("GET"),
                );
                r
            }
        }
    }

    /// The recorder's series, after the gauges read at scrape time, then the process metrics.
    fn scrape(&self) -> String {
        let state = self.health.state();
        metrics::gauge!(READY).set(if readiness(&state).is_empty() {
            1.0
        } else {
            0.0
        });
        if let Ok(free) = state.free_bytes {
            metrics::gauge!(SPOOL_FREE).set(free as f64);
        }
        metrics::gauge!(SPOOL_RESERVE).set(state.min_free as f64);
        let mut out = self.handle.render();
        if let Some(stats) = super::process::read() {
            out.push_str(&super::process::render(&stats));
        }
        out
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    reply(status, "text/plain; charset=utf-8", body)
}

fn reply(status: StatusCode, media_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(media_type),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        for (method, path, want) in [
            (Method::GET, "/metrics", Route::Metrics),
            (Method::GET, "/healthz", Route::Healthz),
            (Method::GET, "/readyz", Route::Readyz),
            (Method::GET, "/posture", Route::Posture),
            (Method::POST, "/posture", Route::MethodNotAllowed),
            (Method::GET, "/", Route::NotFound),
            (Method::GET, "/metrics/", Route::NotFound),
            (Method::GET, "/readyz/x", Route::NotFound),
            (Method::POST, "/nothing", Route::NotFound),
            (Method::POST, "/metrics", Route::MethodNotAllowed),
            (Method::HEAD, "/healthz", Route::MethodNotAllowed),
            (Method::DELETE, "/readyz", Route::MethodNotAllowed),
        ] {
            assert_eq!(route(&method, path), want, "{method} {path}");
        }
    }
}
