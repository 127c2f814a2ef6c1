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
//! capped (32 for every route, 8 more for the probes only, 4 per peer: a local
//! uid, see `peer.rs`), headers must arrive within 2 s, a connection that finds
//! no slot is closed at once instead of waiting in the backlog, and every
//! handler only takes the same short locks a request does.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod gauges;
mod peer;

use peer::{PeerKey, Peers};

use crate::protocol::Health;
use crate::state::{Limit, State};

/// HTTP connections served at once for every route.
const MAX_HTTP_CONNECTIONS: usize = 32;

/// Connections beyond [`MAX_HTTP_CONNECTIONS`] served for the probes only
/// (`/health`, `/ready`): a full listener still answers the probes that decide
/// whether the daemon is restarted. Beyond both, a connection is closed at once
/// rather than left in the kernel's backlog, where probes would time out.
const PROBE_RESERVE: usize = 8;

/// Connections one peer (a local uid, or a remote address) may hold at once, so
/// one user's half-sent requests cannot take the slots of everyone's probes.
const MAX_PER_PEER: usize = 4;

/// Accepted connections whose peer is being looked up at once (a read of
/// `/proc/net/tcp` each); beyond it a connection is closed at once.
const MAX_IDENTIFYING: usize = 64;

/// A client must send its request headers within this time. A probe or a scrape
/// sends them at once; a longer wait only lets idle connections hold slots.
const HEADER_TIMEOUT: Duration = Duration::from_secs(2);

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
    let slots = Arc::new(Semaphore::new(MAX_HTTP_CONNECTIONS));
    let reserve = Arc::new(Semaphore::new(PROBE_RESERVE));
    let peers = Arc::new(Peers::default());
    let identifying = Arc::new(Semaphore::new(MAX_IDENTIFYING));
    let routes = Arc::new(Routes {
        state,
        metrics,
        ready,
    });
    loop {
        // Accepting never waits for a slot: a connection that finds none is
        // closed now (and counted), so the backlog never holds probes behind
        // connections that are not being served.
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    log::warn!("http accept failed: {err}; retrying in 100ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Who the peer is takes a read of procfs, in the connection's task; the
        // connections being identified are capped too, so a connect flood cannot
        // queue unbounded work.
        let Ok(identifying) = Arc::clone(&identifying).try_acquire_owned() else {
            routes.state.counters().hit(Limit::HttpConnections);
            log::debug!("http connection from {peer} closed: too many being identified");
            continue;
        };
        let routes = Arc::clone(&routes);
        let peers = Arc::clone(&peers);
        let (slots, reserve) = (Arc::clone(&slots), Arc::clone(&reserve));
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let local = stream.local_addr().unwrap_or(peer);
            // procfs is read on the blocking pool, not on a worker.
            let key = tokio::task::spawn_blocking(move || PeerKey::of(peer, local))
                .await
                .unwrap_or(PeerKey::Ip(peer.ip()));
            drop(identifying);
            // The peer's share first, then a slot: one peer's connections never
            // hold more than their share of the slots, even for a moment.
            let Some(_held) = peers.enter(key, MAX_PER_PEER) else {
                routes.state.counters().hit(Limit::HttpPerPeer);
                log::debug!(
                    "http connection from {peer} ({key}) closed: it already holds {MAX_PER_PEER} connections"
                );
                return;
            };
            let (_permit, probes_only) = match slots.try_acquire_owned() {
                Ok(permit) => (permit, false),
                Err(_) => match reserve.try_acquire_owned() {
                    Ok(permit) => (permit, true),
                    Err(_) => {
                        routes.state.counters().hit(Limit::HttpConnections);
                        log::debug!("http connection from {peer} closed: every slot is taken");
                        return;
                    }
                },
            };
            let service = hyper::service::service_fn(move |request| {
                let routes = Arc::clone(&routes);
                async move { Ok::<_, Infallible>(routes.handle(&request, probes_only)) }
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
    /// Answers `request`; on a connection of the probes' reserve
    /// (`probes_only`), only `/health` and `/ready`.
    /// Any body type: only the method and the path are read (the tests make
    /// requests without a connection).
    fn handle<B>(&self, request: &Request<B>, probes_only: bool) -> Response<Full<Bytes>> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET is served here\n");
        }
        if probes_only && !matches!(request.uri().path(), "/health" | "/ready") {
            let mut response = text(
                StatusCode::SERVICE_UNAVAILABLE,
                "every HTTP slot is taken; only /health and /ready are answered now, retry in a second\n",
            );
            response.headers_mut().insert(
                hyper::header::RETRY_AFTER,
                hyper::header::HeaderValue::from_static("1"),
            );
            return response;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SharedClock;
    use crate::config::Config;
    use crate::store::Store;

    fn routes(dir: &std::path::Path) -> Routes {
        let (store, snapshot) = Store::open(dir).expect("ledger");
        let state =
            State::new(Config::default(), SharedClock::system(), store, &snapshot).expect("state");
        Routes {
            state,
            metrics: None,
            ready: Readiness::default(),
        }
    }

    fn get(routes: &Routes, path: &str, probes_only: bool) -> Response<Full<Bytes>> {
        let request = Request::get(path).body(()).expect("a request");
        routes.handle(&request, probes_only)
    }

    /// `/ready` says "starting" until the agent socket accepts connections.
    #[test]
    fn ready_says_starting_until_the_socket_accepts() {
        let dir = tempfile::tempdir().expect("temp dir");
        let routes = routes(dir.path());
        assert_eq!(
            get(&routes, "/ready", false).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        routes.ready.set();
        assert_eq!(get(&routes, "/ready", false).status(), StatusCode::OK);
    }

    /// A connection let in on the probes' reserve is answered on `/health`
    /// and `/ready` only; anything else is told to come back in a second.
    #[test]
    fn a_probes_only_connection_is_answered_the_probes_alone() {
        let dir = tempfile::tempdir().expect("temp dir");
        let routes = routes(dir.path());
        routes.ready.set();
        let refused = get(&routes, "/metrics", true);
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            refused.headers().get(hyper::header::RETRY_AFTER),
            Some(&hyper::header::HeaderValue::from_static("1"))
        );
        assert_eq!(get(&routes, "/health", true).status(), StatusCode::OK);
        assert_eq!(get(&routes, "/ready", true).status(), StatusCode::OK);
        // On an ordinary connection the same path is routed.
        assert_eq!(
            get(&routes, "/metrics", false).status(),
            StatusCode::NOT_FOUND
        );
    }
}
