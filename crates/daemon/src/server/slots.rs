//! Per-uid connection caps (`daemon.max_connections_per_uid`): a slot per
//! connection, counted by the uid the kernel reports, given back when the
//! connection's task drops it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// Open connections per uid (`daemon.max_connections_per_uid`).
pub(super) struct PerUid {
    pub(super) max: usize,
    open: Mutex<HashMap<u32, usize>>,
}

/// One uid's connection slot, held for the connection's lifetime.
pub(super) struct UidSlot {
    per_uid: Arc<PerUid>,
    uid: u32,
}

// === impl PerUid ===

impl PerUid {
    /// Up to `max` connections per uid.
    pub(super) fn new(max: usize) -> PerUid {
        PerUid {
            max,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one of `uid`'s slots, if it has one left.
    pub(super) fn try_acquire(self: &Arc<Self>, uid: u32) -> Option<UidSlot> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(uid).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(UidSlot {
            per_uid: Arc::clone(self),
            uid,
        })
    }
}

// === impl UidSlot ===

impl Drop for UidSlot {
    fn drop(&mut self) {
        let mut open = self
            .per_uid
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.uid) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.uid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_slots_are_counted_per_uid_and_given_back() {
        let per_uid = Arc::new(PerUid {
            max: 2,
            open: Mutex::new(HashMap::new()),
        });
        let a1 = per_uid.try_acquire(1).unwrap();
        let _a2 = per_uid.try_acquire(1).unwrap();
        assert!(per_uid.try_acquire(1).is_none());
        let _b1 = per_uid
            .try_acquire(2)
            .expect("another uid has its own slots");
        drop(a1);
        assert!(per_uid.try_acquire(1).is_some());
    }
}
