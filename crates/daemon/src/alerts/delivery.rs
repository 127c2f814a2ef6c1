//! The sending side: one task that drains the queue and posts each alert to the
//! webhook, retrying with exponential backoff, off the decision path. At shutdown
//! it gets about a second for what is still queued.

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::webhook::Webhook;
use super::{Alert, CaBundle, WebhookUrl};

/// Attempts per alert, and the wait before the second one (doubled after).
const ATTEMPTS: u32 = 3;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// How long shutdown waits for queued alerts.
const DRAIN_FOR: Duration = Duration::from_secs(1);

/// The sending side: one task that posts queued alerts to the webhook.
pub struct Delivery {
    webhook: Webhook,
    queue: mpsc::Receiver<Alert>,
}

// === impl Delivery ===

impl Delivery {
    pub(super) fn new(
        url: &WebhookUrl,
        ca: Option<&CaBundle>,
        queue: mpsc::Receiver<Alert>,
    ) -> Delivery {
        Delivery {
            webhook: Webhook::new(url.clone(), ca),
            queue,
        }
    }

    /// Posts queued alerts until `shutdown`; then posts what is still queued
    /// (including one cut short by the shutdown) for at most a second, and returns.
    pub async fn run(mut self, shutdown: CancellationToken) {
        log::info!(
            "alerts go to the webhook at {} (path not logged: it may be a secret)",
            self.webhook.authority()
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

    /// Posts one alert, retrying with exponential backoff; counts it sent or failed.
    async fn deliver(&self, alert: &Alert) {
        let body = Bytes::from(alert.to_json().to_string());
        let mut backoff = FIRST_BACKOFF;
        for attempt in 1..=ATTEMPTS {
            match self.webhook.post(body.clone()).await {
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
                    log::warn!(alert = alert.kind(); "alert not delivered to the webhook at {} after {ATTEMPTS} attempts: {err}", self.webhook.authority());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::alerts::event::samples::opened;
    use crate::alerts::{Alerts, AlertsConfig};

    /// A webhook that answers 500 twice: the alert is posted again after the
    /// backoff, then after twice the backoff, and delivered once.
    #[tokio::test]
    async fn a_failed_post_is_retried() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = tokio::spawn(async move {
            let mut requests = Vec::new();
            for status in [
                "500 Internal Server Error",
                "500 Internal Server Error",
                "200 OK",
            ] {
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
        // The two waits, the second twice the first: never less.
        assert!(started.elapsed() >= FIRST_BACKOFF * 3);
        let requests = server.await.expect("server");
        assert_eq!(requests.len(), 3);
        assert!(
            requests[2].starts_with("POST /hook HTTP/1.1\r\n"),
            "{}",
            requests[2]
        );
        assert!(requests[2].contains("\"search\""));
        drop(alerts);
    }
}
