//! The raising side: [`Alerts`], a cheap handle held by the engine, the state and
//! the commands. Raising checks suppression, then `try_send`s into a bounded queue,
//! and never blocks: a full queue drops the alert and counts it.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use super::suppress::Suppression;
use super::{Alert, AlertsConfig, Delivery};

/// The raising side; cheap to clone.
#[derive(Clone)]
pub struct Alerts {
    inner: Arc<Inner>,
}

struct Inner {
    /// `None` when no webhook is configured.
    queue: Option<mpsc::Sender<Alert>>,
    suppression: Suppression,
}

// === impl Alerts ===

impl Alerts {
    /// The raising handle and, when a webhook is configured, the delivery task's
    /// half (to run with [`Delivery::run`]).
    pub fn new(config: &AlertsConfig) -> (Alerts, Option<Delivery>) {
        let (queue, delivery) = match &config.webhook {
            Some(url) => {
                let (tx, rx) = mpsc::channel(config.queue.max(1));
                (Some(tx), Some(Delivery::new(url, config.ca.as_ref(), rx)))
            }
            None => (None, None),
        };
        let alerts = Alerts {
            inner: Arc::new(Inner {
                queue,
                suppression: Suppression::new(config.suppress),
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
        if !self.inner.suppression.first_in_window(alert.key(), now) {
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
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::alerts::event::samples::{opened, threshold};
    use crate::config::WebhookUrl;

    fn with_webhook(queue: usize) -> (Alerts, Delivery) {
        let (alerts, delivery) = Alerts::new(&AlertsConfig {
            webhook: Some(WebhookUrl::parse("http://127.0.0.1:9/hook").expect("valid")),
            queue,
            ..AlertsConfig::default()
        });
        (alerts, delivery.expect("a webhook is configured"))
    }

    fn queued(delivery: &mut Delivery) -> Vec<Alert> {
        std::iter::from_fn(|| delivery.try_next()).collect()
    }

    #[test]
    fn a_key_fires_once_per_window() {
        let (alerts, mut delivery) = with_webhook(16);
        let t0 = Instant::now();
        alerts.raise_at(opened("a"), t0);
        alerts.raise_at(opened("a"), t0 + Duration::from_secs(299));
        alerts.raise_at(opened("b"), t0 + Duration::from_secs(1));
        alerts.raise_at(opened("a"), t0 + Duration::from_secs(300));
        assert_eq!(
            queued(&mut delivery),
            vec![opened("a"), opened("b"), opened("a")]
        );
    }

    #[test]
    fn each_threshold_is_its_own_key() {
        let (alerts, mut delivery) = with_webhook(16);
        let t0 = Instant::now();
        for t in [50, 80, 100, 80] {
            alerts.raise_at(threshold(t), t0);
        }
        assert_eq!(
            queued(&mut delivery),
            vec![threshold(50), threshold(80), threshold(100)]
        );
    }

    #[test]
    fn a_full_queue_drops_without_blocking() {
        let (alerts, mut delivery) = with_webhook(2);
        let t0 = Instant::now();
        for n in 0..5 {
            alerts.raise_at(opened(&format!("s{n}")), t0);
        }
        assert_eq!(queued(&mut delivery), vec![opened("s0"), opened("s1")]);
    }

    #[test]
    fn without_a_webhook_nothing_is_queued() {
        let (alerts, delivery) = Alerts::new(&AlertsConfig::default());
        assert!(delivery.is_none());
        alerts.raise(opened("a"));
    }
}
