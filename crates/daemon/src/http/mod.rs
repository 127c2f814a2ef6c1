//! The operator's HTTP listener (127.0.0.1:8765 by default). Routes:
//!
//! * `GET /metrics` — Prometheus text exposition. Counters and histograms are
//!   recorded where things happen; gauges of state (breakers, budgets, quotas,
//!   connections, the ledger) are refreshed from `State` at scrape time
//!   (`gauges.rs`), so they cost nothing between scrapes.
//! * `GET /health` — the JSON health document (the `status` request's reply);
//!   `503` when unhealthy, `200` otherwise.
//! * `GET /ready` — `200` once the agent socket accepts connections, `503` before.
//!
//! Architecture Invariant: nothing here can stall the agent socket. Connections are
//! capped, headers must arrive within a timeout, and every handler only takes the
//! same short locks a request does.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod gauges;

use crate::protocol::Health;
use crate::state::State;

/// HTTP connections served at once; more wait in the kernel's backlog.
const MAX_HTTP_CONNECTIONS: usize = 32;

/// A client must send its request headers within this time.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Set once the agent socket accepts connections; never unset.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

// === impl Readiness ===

impl Readiness {
    pub fn set(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Serves `listener` until `shutdown` fires.
pub async fn run(
    listener: TcpListener,
    state: State,
    metrics: Option<PrometheusHandle>,
    ready: Readiness,
    shutdown: CancellationToken,
) {
    let tracker = TaskTracker::new();
    let limit = Arc::new(Semaphore::new(MAX_HTTP_CONNECTIONS));
    let routes = Arc::new(Routes {
        state,
        metrics,
        ready,
    });
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            permit = Arc::clone(&limit).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    log::warn!("http accept failed: {err}; retrying in 100ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let routes = Arc::clone(&routes);
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |request| {
                let routes = Arc::clone(&routes);
                async move { Ok::<_, Infallible>(routes.handle(&request)) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                result = connection => if let Err(err) = result {
                    log::debug!("http connection: {err}");
                },
                _ = shutdown.cancelled() => {}
            }
        });
    }
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(1), tracker.wait()).await;
}

/// Binds the HTTP address, refusing non-loopback addresses unless allowed.
///
/// # Errors
/// The bind error, with the address.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    use anyhow::Context;
    TcpListener::bind(addr).await.with_context(|| {
        format!("binding the HTTP listener on {addr} (set [http] listen, or --http off)")
    })
}

struct Routes {
    state: State,
    metrics: Option<PrometheusHandle>,
    ready: Readiness,
}

// === impl Routes ===

impl Routes {
    fn handle(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET is served here\n");
        }
        match request.uri().path() {
            "/metrics" => match &self.metrics {
                Some(handle) => {
                    gauges::refresh(&self.state);
                    let mut response = text(StatusCode::OK, handle.render());
                    response.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static(
                            "text/plain; version=0.0.4; charset=utf-8",
                        ),
                    );
                    response
                }
                None => text(
                    StatusCode::NOT_FOUND,
                    "metrics are not recorded in this process\n",
                ),
            },
            "/health" => {
                let report = crate::cmd::health(&self.state);
                let code = if report.status == Health::Unhealthy {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::OK
                };
                let body = serde_json::to_string(&report)
                    .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
                let mut response = text(code, body + "\n");
                response.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static("application/json"),
                );
                response
            }
            "/ready" if self.ready.is_ready() => text(StatusCode::OK, "ready\n"),
            "/ready" => text(StatusCode::SERVICE_UNAVAILABLE, "starting\n"),
            _ => text(
                StatusCode::NOT_FOUND,
                "not found; routes: /metrics /health /ready\n",
            ),
        }
    }
}

fn text(code: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = code;
    response
}
