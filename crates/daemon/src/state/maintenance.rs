//! Periodic housekeeping: purging idle keyed state (and trimming the heap after
//! large purges), settling orphaned reservations by policy through the one commit
//! path, and watching the ledger's health for alerts.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::trim::trim_heap;
use super::State;
use crate::alerts::Alert;

/// Rate buckets forgotten in one purge beyond which the freed heap is handed back
/// to the kernel (`malloc_trim`). A bucket's table slot is 41 bytes (a long key
/// adds a heap block), the table half to 7/8 full, so this is a few MiB; below it
/// a walk of the heap is not worth it.
const TRIM_AFTER_FORGOTTEN: usize = 50_000;

/// How often orphaned reservations are checked for settlement.
const SETTLE_EVERY: Duration = Duration::from_secs(1);

// === impl State (maintenance) ===

impl State {
    /// Periodic housekeeping until `shutdown` fires: forgetting idle keyed state
    /// every `daemon.purge_interval` and giving the memory back, and settling
    /// orphaned reservations whose timeout passed. A reload's new interval is
    /// noticed within a second and starts with a purge.
    pub async fn maintain(self, shutdown: CancellationToken) {
        let every = |interval: Duration| {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick
        };
        let mut purge_interval = self.config().daemon.purge_interval;
        let mut purge = every(purge_interval);
        let mut settle = every(SETTLE_EVERY);
        let mut store_failing = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = purge.tick() => {
                    self.admission().purge(self.moment());
                    let forgotten = crate::guard::rate::take_forgotten();
                    if forgotten >= TRIM_AFTER_FORGOTTEN {
                        // The tables the store outgrew on the way up, long keys,
                        // and whatever was allocated among them stay resident
                        // with glibc until asked (10 to 20 MiB after a million
                        // keys). The walk took 1 ms after a million short keys,
                        // but 0.13 s after 775,000 small heap blocks (String
                        // keys, as long keys still are): not on a worker thread.
                        let started = std::time::Instant::now();
                        let trimmed = tokio::task::spawn_blocking(trim_heap).await.unwrap_or(false);
                        log::debug!(
                            "purge forgot {forgotten} rate buckets; heap trimmed in {:?} (memory returned: {trimmed})",
                            started.elapsed()
                        );
                    }
                }
                _ = settle.tick() => {
                    let configured = self.config().daemon.purge_interval;
                    if configured != purge_interval {
                        // Its first tick is immediate: the new interval starts now.
                        purge_interval = configured;
                        purge = every(purge_interval);
                    }
                    self.settle_orphans().await;
                    store_failing = self.watch_store(store_failing);
                }
            }
        }
    }

    /// Raises a store alert when the ledger starts failing (the writer thread
    /// records why in `Store::health`); returns whether it is failing now. Watched
    /// here, once a second, so the writer thread knows nothing of alerts.
    fn watch_store(&self, was_failing: bool) -> bool {
        match self.store().health() {
            Some(reason) => {
                if !was_failing {
                    self.alerts().raise(Alert::StoreFailed { reason });
                }
                true
            }
            None => false,
        }
    }

    /// Settles every due orphan by policy, durably; one that fails to write stays
    /// open and is tried again at the next tick. The settlements share group
    /// commits: all are queued before any is awaited.
    pub async fn settle_orphans(&self) {
        let commits: Vec<_> = self
            .admission()
            .due_orphans(self.moment())
            .into_iter()
            .map(|durable| self.commit(durable))
            .collect();
        for commit in commits {
            let _ = commit.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::Alerts;
    use crate::clock::SharedClock;
    use crate::config::Config;
    use crate::store::{Snapshot, Store};

    #[test]
    fn a_failing_store_is_alerted_once_while_it_fails() {
        let (alerts, delivery) = Alerts::new(&crate::alerts::AlertsConfig {
            webhook: Some(crate::alerts::WebhookUrl::parse("http://127.0.0.1:9/").expect("valid")),
            ..Default::default()
        });
        let mut delivery = delivery.expect("a webhook is configured");
        let store = Store::unavailable(
            std::path::Path::new("/nonexistent/ledger"),
            "disk gone".into(),
        );
        let state = State::with_alerts(
            Config::default(),
            SharedClock::system(),
            store,
            &Snapshot::default(),
            alerts,
        )
        .expect("state");
        assert!(state.watch_store(false));
        assert!(state.watch_store(true));
        assert!(matches!(
            delivery.try_next(),
            Some(Alert::StoreFailed { reason }) if reason.contains("disk gone")
        ));
        assert_eq!(delivery.try_next(), None, "raised on the transition only");
    }
}
