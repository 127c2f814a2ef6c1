//! Suppression: each alert key (kind, subject and, for budgets, threshold) fires
//! at most once per window, measured on the monotonic clock, so a flapping breaker
//! does not flood a channel. Checked under one short lock on the raising side,
//! which may be under the admission lock: no I/O, amortised O(1).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Past this many remembered keys, expired ones are forgotten (bounds memory: quota
/// keys can be per agent).
const PRUNE_AT: usize = 1024;

/// When each key last fired.
pub(super) struct Suppression {
    window: Duration,
    fired: Mutex<Fired>,
}

/// The keys' last firings, and the size at which expired keys are forgotten next
/// (doubling while they are all still live, so pruning stays amortised O(1)).
struct Fired {
    at: HashMap<String, Instant>,
    prune_at: usize,
}

// === impl Suppression ===

impl Suppression {
    pub(super) fn new(window: Duration) -> Suppression {
        Suppression {
            window,
            fired: Mutex::new(Fired {
                at: HashMap::new(),
                prune_at: PRUNE_AT,
            }),
        }
    }

    /// Records that `key` fires at `now`, unless it fired less than a window ago.
    pub(super) fn first_in_window(&self, key: String, now: Instant) -> bool {
        let window = self.window;
        let mut fired = self.fired.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(at) = fired.at.get(&key) {
            if now.saturating_duration_since(*at) < window {
                return false;
            }
        }
        if fired.at.len() >= fired.prune_at {
            fired
                .at
                .retain(|_, at| now.saturating_duration_since(*at) < window);
            fired.prune_at = (fired.at.len() * 2).max(PRUNE_AT);
        }
        fired.at.insert(key, now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(300);

    #[test]
    fn a_key_fires_once_per_window() {
        let suppression = Suppression::new(WINDOW);
        let t0 = Instant::now();
        assert!(suppression.first_in_window("a".into(), t0));
        assert!(!suppression.first_in_window("a".into(), t0 + WINDOW - Duration::from_secs(1)));
        assert!(suppression.first_in_window("b".into(), t0));
        assert!(suppression.first_in_window("a".into(), t0 + WINDOW));
    }

    #[test]
    fn expired_keys_are_forgotten() {
        let suppression = Suppression::new(WINDOW);
        let t0 = Instant::now();
        for n in 0..PRUNE_AT {
            suppression.first_in_window(format!("k{n}"), t0);
        }
        assert!(suppression.first_in_window("new".into(), t0 + WINDOW));
        let fired = suppression.fired.lock().expect("not poisoned");
        assert_eq!(fired.at.len(), 1, "the expired keys were dropped");
    }

    #[test]
    fn live_keys_push_the_next_pruning_out() {
        let suppression = Suppression::new(WINDOW);
        let t0 = Instant::now();
        for n in 0..=PRUNE_AT {
            suppression.first_in_window(format!("k{n}"), t0);
        }
        let fired = suppression.fired.lock().expect("not poisoned");
        assert_eq!(fired.at.len(), PRUNE_AT + 1, "live keys are kept");
        assert_eq!(fired.prune_at, 2 * PRUNE_AT);
    }
}
