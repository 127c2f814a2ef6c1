//! A reservation: what an allowed admission took, guard by guard, from the
//! moment it was decided until it is reported, released or settled as an
//! orphan; and the bounded memory of recently closed ones that tells a repeated
//! report from an unknown one.

use std::collections::VecDeque;
use std::time::Duration;

use super::FastMap;
use crate::guard::Taken;

/// How many closed reservation ids are remembered to recognise a repeated report.
const RECENTLY_CLOSED: usize = 65_536;

/// What an allowed admission took, held until its outcome is known.
pub(super) struct Reservation {
    /// `None` once the connection is gone (or after a restart): an orphan.
    pub(super) session: Option<u64>,
    pub(super) orphaned_at: Option<Duration>,
    pub(super) agent: String,
    pub(super) service: String,
    pub(super) model: Option<String>,
    pub(super) units: u32,
    pub(super) input_units: u32,
    pub(super) output_units: u32,
    /// 1 for a first call, more for a retry: the default `attempt` of its report.
    pub(super) attempt: u32,
    /// What each guard took, in pipeline order.
    pub(super) taken: Vec<Taken>,
    pub(super) stage: Stage,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stage {
    /// Decided; its ledger entries are being written.
    Admitting,
    Open,
    /// Its charge (or orphan settlement) is being written.
    Settling,
}

/// How a closed reservation ended, to answer a late report correctly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Closed {
    Reported,
    Released,
}

/// A bounded memory of closed reservation ids (FIFO eviction).
#[derive(Default)]
pub(super) struct RecentlyClosed {
    order: VecDeque<u64>,
    ids: FastMap<u64, Closed>,
}

// === impl RecentlyClosed ===

impl RecentlyClosed {
    pub(super) fn insert(&mut self, id: u64, how: Closed) {
        if self.ids.insert(id, how).is_none() {
            self.order.push_back(id);
            if self.order.len() > RECENTLY_CLOSED {
                if let Some(old) = self.order.pop_front() {
                    self.ids.remove(&old);
                }
            }
        }
    }

    pub(super) fn get(&self, id: u64) -> Option<Closed> {
        self.ids.get(&id).copied()
    }
}

/// The idempotency key of a reservation's charge.
pub fn reservation_key(id: u64) -> String {
    format!("reservation:{id}")
}
