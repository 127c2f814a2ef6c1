//! Alert webhooks (SPEC §4): breaker opened or closed, budget thresholds, quota
//! exhausted, store failures and failed reloads, posted as Slack-compatible JSON.
//!
//! Why it is shaped this way: alerts are raised on the decision path (some under
//! the admission lock), and delivery must never slow or block a decision. So
//! [`Alerts::raise`] only checks suppression (a short lock on a small map) and
//! `try_send`s into a bounded queue; a full queue drops the alert and counts it.
//! One [`Delivery`] task, spawned by `main`, does the network I/O with retries, off
//! the hot path. Each alert key (kind, subject and, for budgets, threshold) fires
//! at most once per suppression window, measured on the monotonic clock, so a
//! flapping breaker does not flood a channel.
//!
//! Plain HTTP only: HTTPS would need a TLS stack, which pulls C/asm builds into
//! the daemon. An `https://` URL is refused when the config is validated; point the
//! webhook at a local relay that forwards over TLS.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::money::Usd;

/// Attempts per alert, and the wait before the second one (doubled after).
const ATTEMPTS: u32 = 3;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// How long one POST (connect, send, answer) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long shutdown waits for queued alerts.
const DRAIN_FOR: Duration = Duration::from_secs(1);
/// Past this many remembered keys, expired ones are forgotten (bounds memory: quota
/// keys can be per agent).
const PRUNE_AT: usize = 1024;

/// Something an operator should hear about.
#[derive(Debug, Clone, PartialEq)]
pub enum Alert {
    /// A breaker opened (tripped, or a trial failed).
    BreakerOpened { service: String, from: String },
    /// A breaker closed again after being open.
    BreakerClosed { service: String },
    /// A budget's spending crossed a configured percentage of its limit.
    BudgetThreshold {
        budget: String,
        threshold: u8,
        spent: Usd,
        limit: Usd,
    },
    /// A quota counter is used up; calls it governs are denied until its window ends.
    QuotaExhausted { quota: String, key: String },
    /// The ledger failed a transaction: budget-governed requests are refused.
    StoreFailed { reason: String },
    /// A configuration reload was refused; the old configuration stays in force.
    ReloadFailed { reason: String },
}

/// `[alerts]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertsConfig {
    /// Where alerts are posted; `None`: alerts are only logged (at debug).
    pub webhook: Option<WebhookUrl>,
    /// How long an alert key stays quiet after it fired.
    pub suppress: Duration,
    /// Alerts waiting for delivery; more are dropped and counted.
    pub queue: usize,
}

/// A plain `http://` webhook address, split for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    /// As configured. Not logged: the path of a Slack webhook is its secret.
    pub url: String,
    /// `host[:port]`, for the `Host` header.
    authority: String,
    /// Host name or address, without IPv6 brackets, for connecting.
    host: String,
    port: u16,
    /// Path and query, at least `/`.
    path: String,
}

/// Why a webhook could not be delivered.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("connecting to {authority}: {source}")]
    Connect {
        authority: String,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("building the request: {0}")]
    Request(#[from] hyper::http::Error),
    #[error("the webhook answered {0}")]
    Status(hyper::StatusCode),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// The raising side; cheap to clone.
#[derive(Clone)]
pub struct Alerts {
    inner: Arc<Inner>,
}

struct Inner {
    /// `None` when no webhook is configured.
    queue: Option<mpsc::Sender<Alert>>,
    suppress: Duration,
    fired: Mutex<Fired>,
}

/// When each key last fired, and the size at which expired keys are forgotten
/// next (doubling while they are all still live, so pruning stays amortised O(1)).
struct Fired {
    at: HashMap<String, Instant>,
    prune_at: usize,
}

/// The sending side: one task that posts queued alerts to the webhook.
pub struct Delivery {
    url: WebhookUrl,
    queue: mpsc::Receiver<Alert>,
}

// === impl Alert ===

impl Alert {
    /// The kind, as a stable name (JSON field, logs).
    pub fn kind(&self) -> &'static str {
        match self {
            Alert::BreakerOpened { .. } => "breaker_opened",
            Alert::BreakerClosed { .. } => "breaker_closed",
            Alert::BudgetThreshold { .. } => "budget_threshold",
            Alert::QuotaExhausted { .. } => "quota_exhausted",
            Alert::StoreFailed { .. } => "store_failed",
            Alert::ReloadFailed { .. } => "reload_failed",
        }
    }

    /// What is suppressed together: kind, subject and (budgets) threshold, so 50,
    /// 80 and 100 % of one budget each fire once per window.
    pub fn key(&self) -> String {
        match self {
            Alert::BreakerOpened { service, .. } | Alert::BreakerClosed { service } => {
                format!("{}:{service}", self.kind())
            }
            Alert::BudgetThreshold {
                budget, threshold, ..
            } => format!("{}:{budget}:{threshold}", self.kind()),
            Alert::QuotaExhausted { quota, key } => format!("{}:{quota}:{key}", self.kind()),
            Alert::StoreFailed { .. } | Alert::ReloadFailed { .. } => self.kind().to_owned(),
        }
    }

    /// One line for humans (Slack's `text`).
    pub fn text(&self) -> String {
        match self {
            Alert::BreakerOpened { service, from } => {
                format!("automation-framework: circuit breaker of {service:?} opened (was {from}); calls to it are refused until it recovers")
            }
            Alert::BreakerClosed { service } => {
                format!("automation-framework: circuit breaker of {service:?} closed again")
            }
            Alert::BudgetThreshold {
                budget,
                threshold,
                spent,
                limit,
            } => format!(
                "automation-framework: budget {budget} crossed {threshold}%: {spent} spent of {limit}"
            ),
            Alert::QuotaExhausted { quota, key } => format!(
                "automation-framework: quota {quota} used up for {key}; its calls are denied until the window ends"
            ),
            Alert::StoreFailed { reason } => format!(
                "automation-framework: the ledger failed ({reason}); budget-governed requests are refused until it recovers"
            ),
            Alert::ReloadFailed { reason } => format!(
                "automation-framework: configuration reload refused ({reason}); the old configuration stays in force"
            ),
        }
    }

    /// The Slack-compatible body: `text`, plus one attachment with the fields.
    pub fn to_json(&self) -> serde_json::Value {
        let mut fields = vec![("kind", self.kind().to_owned())];
        match self {
            Alert::BreakerOpened { service, from } => {
                fields.push(("service", service.clone()));
                fields.push(("from", from.clone()));
            }
            Alert::BreakerClosed { service } => fields.push(("service", service.clone())),
            Alert::BudgetThreshold {
                budget,
                threshold,
                spent,
                limit,
            } => {
                fields.push(("budget", budget.clone()));
                fields.push(("threshold", format!("{threshold}%")));
                fields.push(("spent", spent.to_string()));
                fields.push(("limit", limit.to_string()));
            }
            Alert::QuotaExhausted { quota, key } => {
                fields.push(("quota", quota.clone()));
                fields.push(("key", key.clone()));
            }
            Alert::StoreFailed { reason } | Alert::ReloadFailed { reason } => {
                fields.push(("reason", reason.clone()));
            }
        }
        let color = match self {
            Alert::BreakerClosed { .. } => "good",
            Alert::BudgetThreshold { threshold, .. } if *threshold < 100 => "warning",
            _ => "danger",
        };
        serde_json::json!({
            "text": self.text(),
            "attachments": [{
                "color": color,
                "fields": fields
                    .into_iter()
                    .map(|(title, value)| serde_json::json!({"title": title, "value": value, "short": true}))
                    .collect::<Vec<_>>(),
            }],
        })
    }
}

// === impl WebhookUrl ===

impl WebhookUrl {
    /// Parses `http://host[:port][/path]`.
    ///
    /// # Errors
    /// What is wrong with `text`, for the config error.
    pub fn parse(text: &str) -> Result<WebhookUrl, String> {
        if text
            .get(..8)
            .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
        {
            return Err(format!("{text:?}: HTTPS is not supported yet (it needs a TLS stack); use a plain http:// URL of a local relay that forwards to the HTTPS endpoint"));
        }
        let rest = text
            .get(..7)
            .filter(|s| s.eq_ignore_ascii_case("http://"))
            .map(|_| &text[7..])
            .ok_or_else(|| format!("{text:?} is not a URL like \"http://127.0.0.1:9000/hook\""))?;
        let (authority, path) = match rest.find(['/', '?']) {
            Some(at) if rest[at..].starts_with('/') => (&rest[..at], rest[at..].to_owned()),
            Some(at) => (&rest[..at], format!("/{}", &rest[at..])),
            None => (rest, "/".to_owned()),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(format!(
                "{text:?} has no host (or carries credentials, which are not supported)"
            ));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !port.contains(']') => {
                let port = port
                    .parse::<u16>()
                    .map_err(|e| format!("{text:?}: port {port:?}: {e}"))?;
                (host, port)
            }
            _ => (authority, 80),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || path.chars().any(char::is_whitespace) {
            return Err(format!(
                "{text:?} is not a URL like \"http://127.0.0.1:9000/hook\""
            ));
        }
        Ok(WebhookUrl {
            url: text.to_owned(),
            authority: authority.to_owned(),
            host: host.to_owned(),
            port,
            path,
        })
    }
}

// === impl AlertsConfig ===

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            webhook: None,
            suppress: Duration::from_secs(300),
            queue: 256,
        }
    }
}

// === impl Alerts ===

impl Alerts {
    /// The raising handle and, when a webhook is configured, the delivery task's
    /// half (to run with [`Delivery::run`]).
    pub fn new(config: &AlertsConfig) -> (Alerts, Option<Delivery>) {
        let (queue, delivery) = match &config.webhook {
            Some(url) => {
                let (tx, rx) = mpsc::channel(config.queue.max(1));
                (
                    Some(tx),
                    Some(Delivery {
                        url: url.clone(),
                        queue: rx,
                    }),
                )
            }
            None => (None, None),
        };
        let alerts = Alerts {
            inner: Arc::new(Inner {
                queue,
                suppress: config.suppress,
                fired: Mutex::new(Fired {
                    at: HashMap::new(),
                    prune_at: PRUNE_AT,
                }),
            }),
        };
        (alerts, delivery)
    }

    /// Alerts that are only logged: no webhook.
    pub fn disabled() -> Alerts {
        Alerts::new(&AlertsConfig::default()).0
    }

    /// Queues `alert` for the webhook unless its key fired within the suppression
    /// window. Never blocks: a full queue drops it (counted in
    /// `automation_framework_alerts_dropped_total`).
    pub fn raise(&self, alert: Alert) {
        self.raise_at(alert, Instant::now());
    }

    /// [`Alerts::raise`] at a given instant (tests).
    pub fn raise_at(&self, alert: Alert, now: Instant) {
        let Some(queue) = &self.inner.queue else {
            log::debug!(alert = alert.kind(); "alert (no webhook configured): {}", alert.text());
            return;
        };
        if !self.first_in_window(alert.key(), now) {
            log::debug!(alert = alert.kind(); "alert suppressed (fired within alerts.suppress): {}", alert.text());
            return;
        }
        if let Err(err) = queue.try_send(alert) {
            metrics::counter!(crate::metrics::ALERTS_DROPPED).increment(1);
            let alert = match err {
                mpsc::error::TrySendError::Full(a) | mpsc::error::TrySendError::Closed(a) => a,
            };
            log::warn!(alert = alert.kind(); "alert dropped (queue full or delivery stopped): {}", alert.text());
        }
    }

    /// Records that `key` fires at `now`, unless it fired less than `suppress` ago.
    fn first_in_window(&self, key: String, now: Instant) -> bool {
        let suppress = self.inner.suppress;
        let mut fired = self
            .inner
            .fired
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(at) = fired.at.get(&key) {
            if now.saturating_duration_since(*at) < suppress {
                return false;
            }
        }
        if fired.at.len() >= fired.prune_at {
            fired
                .at
                .retain(|_, at| now.saturating_duration_since(*at) < suppress);
            fired.prune_at = (fired.at.len() * 2).max(PRUNE_AT);
        }
        fired.at.insert(key, now);
        true
    }
}

// === impl Delivery ===

impl Delivery {
    /// Posts queued alerts until `shutdown`; then posts what is still queued
    /// (including one cut short by the shutdown) for at most a second, and returns.
    pub async fn run(mut self, shutdown: CancellationToken) {
        log::info!(
            "alerts go to the webhook at {} (path not logged: it may be a secret)",
            self.url.authority
        );
        let mut current = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                alert = self.queue.recv() => match alert {
                    Some(alert) => current = Some(alert),
                    None => return,
                },
            }
            if let Some(alert) = &current {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    () = self.deliver(alert) => current = None,
                }
            }
        }
        self.queue.close();
        let drained = tokio::time::timeout(DRAIN_FOR, async {
            if let Some(alert) = current.take() {
                self.deliver(&alert).await;
            }
            while let Some(alert) = self.queue.recv().await {
                self.deliver(&alert).await;
            }
        })
        .await;
        if drained.is_err() {
            log::warn!("alerts still queued at shutdown were not delivered within {DRAIN_FOR:?}");
        }
    }

    /// The next queued alert, if any (tests of the raising side).
    #[cfg(test)]
    pub(crate) fn try_next(&mut self) -> Option<Alert> {
        self.queue.try_recv().ok()
    }

    /// Posts one alert, retrying with exponential backoff.
    async fn deliver(&self, alert: &Alert) {
        let body = Bytes::from(alert.to_json().to_string());
        let mut backoff = FIRST_BACKOFF;
        for attempt in 1..=ATTEMPTS {
            match post(&self.url, body.clone()).await {
                Ok(()) => {
                    metrics::counter!(crate::metrics::ALERTS_SENT).increment(1);
                    return;
                }
                Err(err) if attempt < ATTEMPTS => {
                    log::debug!(
                        "alert webhook attempt {attempt} failed: {err}; retrying in {backoff:?}"
                    );
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
                Err(err) => {
                    metrics::counter!(crate::metrics::ALERTS_FAILED).increment(1);
                    log::warn!(alert = alert.kind(); "alert not delivered to the webhook at {} after {ATTEMPTS} attempts: {err}", self.url.authority);
                }
            }
        }
    }
}

/// One POST of `body` to `url`, within [`REQUEST_TIMEOUT`].
async fn post(url: &WebhookUrl, body: Bytes) -> Result<(), DeliveryError> {
    tokio::time::timeout(REQUEST_TIMEOUT, post_once(url, body))
        .await
        .map_err(|_| DeliveryError::Timeout(REQUEST_TIMEOUT))?
}

async fn post_once(url: &WebhookUrl, body: Bytes) -> Result<(), DeliveryError> {
    let stream = tokio::net::TcpStream::connect((url.host.as_str(), url.port))
        .await
        .map_err(|source| DeliveryError::Connect {
            authority: url.authority.clone(),
            source,
        })?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    // The connection is driven here, beside the request, and dropped with it (no
    // task outlives a stuck webhook).
    let request = hyper::Request::post(url.path.as_str())
        .header(hyper::header::HOST, url.authority.as_str())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(
            hyper::header::USER_AGENT,
            concat!("automation-framework/", env!("CARGO_PKG_VERSION")),
        )
        .body(Full::new(body))?;
    let send = sender.send_request(request);
    tokio::pin!(send, connection);
    let response = tokio::select! {
        biased;
        response = &mut send => response?,
        // The server may answer and close at once (`connection: close`): the
        // answer is then already on its way to `send`.
        closed = &mut connection => {
            closed?;
            send.await?
        }
    };
    if response.status().is_success() {
        Ok(())
    } else {
        Err(DeliveryError::Status(response.status()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_webhook(queue: usize) -> (Alerts, Delivery) {
        let (alerts, delivery) = Alerts::new(&AlertsConfig {
            webhook: Some(WebhookUrl::parse("http://127.0.0.1:9/hook").expect("valid")),
            suppress: Duration::from_secs(300),
            queue,
        });
        (alerts, delivery.expect("a webhook is configured"))
    }

    fn opened(service: &str) -> Alert {
        Alert::BreakerOpened {
            service: service.into(),
            from: "Closed".into(),
        }
    }

    fn threshold(threshold: u8) -> Alert {
        Alert::BudgetThreshold {
            budget: "global".into(),
            threshold,
            spent: Usd::ZERO,
            limit: Usd::ZERO,
        }
    }

    #[test]
    fn a_key_fires_once_per_window() {
        let (alerts, mut delivery) = with_webhook(16);
        let t0 = Instant::now();
        alerts.raise_at(opened("a"), t0);
        alerts.raise_at(opened("a"), t0 + Duration::from_secs(299));
        alerts.raise_at(opened("b"), t0 + Duration::from_secs(1));
        alerts.raise_at(opened("a"), t0 + Duration::from_secs(300));
        let mut got = Vec::new();
        while let Ok(alert) = delivery.queue.try_recv() {
            got.push(alert);
        }
        assert_eq!(got, vec![opened("a"), opened("b"), opened("a")]);
    }

    #[test]
    fn each_threshold_is_its_own_key() {
        let (alerts, mut delivery) = with_webhook(16);
        let t0 = Instant::now();
        for t in [50, 80, 100, 80] {
            alerts.raise_at(threshold(t), t0);
        }
        let mut got = Vec::new();
        while let Ok(alert) = delivery.queue.try_recv() {
            got.push(alert);
        }
        assert_eq!(got, vec![threshold(50), threshold(80), threshold(100)]);
    }

    #[test]
    fn expired_keys_are_forgotten() {
        let (alerts, _delivery) = with_webhook(1);
        let t0 = Instant::now();
        for n in 0..PRUNE_AT {
            alerts.first_in_window(format!("k{n}"), t0);
        }
        let later = t0 + Duration::from_secs(300);
        assert!(alerts.first_in_window("new".into(), later));
        let fired = alerts.inner.fired.lock().expect("not poisoned");
        assert_eq!(fired.at.len(), 1, "the expired keys were dropped");
    }

    #[test]
    fn a_full_queue_drops_without_blocking() {
        let (alerts, mut delivery) = with_webhook(2);
        let t0 = Instant::now();
        for n in 0..5 {
            alerts.raise_at(opened(&format!("s{n}")), t0);
        }
        let mut got = Vec::new();
        while let Ok(alert) = delivery.queue.try_recv() {
            got.push(alert);
        }
        assert_eq!(got, vec![opened("s0"), opened("s1")]);
    }

    #[test]
    fn without_a_webhook_nothing_is_queued() {
        let (alerts, delivery) = Alerts::new(&AlertsConfig::default());
        assert!(delivery.is_none());
        alerts.raise(opened("a"));
    }

    #[test]
    fn urls() {
        let url = WebhookUrl::parse("http://127.0.0.1:9000/hook?x=1").expect("valid");
        assert_eq!(
            (url.host.as_str(), url.port, url.path.as_str()),
            ("127.0.0.1", 9000, "/hook?x=1")
        );
        let url = WebhookUrl::parse("http://relay.local").expect("valid");
        assert_eq!(
            (url.host.as_str(), url.port, url.path.as_str()),
            ("relay.local", 80, "/")
        );
        let url = WebhookUrl::parse("http://[::1]:8080/h").expect("valid");
        assert_eq!((url.host.as_str(), url.port), ("::1", 8080));
        let err = WebhookUrl::parse("https://hooks.slack.com/x").expect_err("tls");
        assert!(err.contains("HTTPS is not supported"), "{err}");
        for bad in [
            "hooks.slack.com/x",
            "http://",
            "http://u:p@h/x",
            "http://h:99999/",
        ] {
            assert!(WebhookUrl::parse(bad).is_err(), "{bad}");
        }
    }

    /// A webhook that answers 500 first: the alert is posted again after the
    /// backoff, and delivered once.
    #[tokio::test]
    async fn a_failed_post_is_retried() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = tokio::spawn(async move {
            let mut requests = Vec::new();
            for status in ["500 Internal Server Error", "200 OK"] {
                let (mut stream, _) = listener.accept().await.expect("accept");
                let mut buf = vec![0u8; 8192];
                let mut len = 0;
                // Headers and the small body arrive together or soon after.
                while !String::from_utf8_lossy(&buf[..len]).contains("}]}") {
                    let n = stream.read(&mut buf[len..]).await.expect("read");
                    assert!(n > 0, "closed early");
                    len += n;
                }
                requests.push(String::from_utf8_lossy(&buf[..len]).into_owned());
                let answer =
                    format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                stream.write_all(answer.as_bytes()).await.expect("write");
            }
            requests
        });
        let (alerts, delivery) = Alerts::new(&AlertsConfig {
            webhook: Some(
                WebhookUrl::parse(&format!("http://127.0.0.1:{port}/hook")).expect("valid"),
            ),
            ..AlertsConfig::default()
        });
        let delivery = delivery.expect("a webhook is configured");
        let alert = opened("search");
        let started = Instant::now();
        delivery.deliver(&alert).await;
        assert!(started.elapsed() >= FIRST_BACKOFF);
        let requests = server.await.expect("server");
        assert_eq!(requests.len(), 2);
        assert!(
            requests[1].starts_with("POST /hook HTTP/1.1\r\n"),
            "{}",
            requests[1]
        );
        assert!(requests[1].contains("\"search\""));
        drop(alerts);
    }

    #[test]
    fn the_body_is_slack_compatible() {
        let json = opened("search").to_json();
        assert!(json["text"].as_str().expect("text").contains("\"search\""));
        assert_eq!(json["attachments"][0]["fields"][1]["value"], "search");
    }
}
