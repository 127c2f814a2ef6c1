//! A reservation: what an allowed admission took, guard by guard, from the
//! moment it was decided until it is reported, released or settled as an
//! orphan; the table of open ones, which counts them per uid so that the caps
//! (`daemon.max_reservations_per_uid`, `daemon.max_reservations`) are checked
//! in O(1); and the bounded memory of recently closed ones that tells a repeated
//! report from an unknown one.
//!
//! Memory: an open reservation costs about 700 bytes (the map slot with what
//! each guard took kept inline, the shared names), an orphan the same; the
//! caps' defaults (8,192 per uid, 32,768 in all) keep the table under 24 MiB.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::protocol::Name;
use std::time::Duration;

use super::pipeline::BUDGET_STAGE;
use super::FastMap;
use crate::guard::budget::Hold;
use crate::guard::TakenList;
use crate::money::Usd;

/// How many closed reservation ids are remembered to recognise a repeated report.
const RECENTLY_CLOSED: usize = 65_536;

/// What an allowed admission took, held until its outcome is known.
pub(super) struct Reservation {
    /// `None` once the connection is gone (or after a restart): an orphan.
    pub(super) session: Option<u64>,
    /// The kernel uid of the connection that made it; `None` for one restored
    /// from the ledger at start (it counts against the total cap only).
    pub(super) uid: Option<u32>,
    /// Its settlement failed as part of a batch (a duplicate key rolled the
    /// batch back): it is settled alone from now on.
    pub(super) settle_alone: bool,
    pub(super) orphaned_at: Option<Duration>,
    /// Kept inline (up to 24 bytes), so an agent named per request costs no
    /// allocation either.
    pub(super) agent: Name,
    /// Shared with the service's breaker: no copy per admission.
    pub(super) service: Arc<str>,
    pub(super) model: Option<String>,
    pub(super) units: u32,
    pub(super) input_units: u32,
    pub(super) output_units: u32,
    /// 1 for a first call, more for a retry: the default `attempt` of its report.
    pub(super) attempt: u32,
    /// What each guard took, in pipeline order.
    pub(super) taken: TakenList,
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

/// The open reservations by id, with how many each uid holds.
#[derive(Default)]
pub(super) struct Reservations {
    by_id: FastMap<u64, Reservation>,
    per_uid: FastMap<u32, usize>,
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

// === impl Reservations ===

impl Reservations {
    pub(super) fn insert(&mut self, id: u64, reservation: Reservation) {
        let uid = reservation.uid;
        if let Some(old) = self.by_id.insert(id, reservation) {
            self.uncount(old.uid);
        }
        if let Some(uid) = uid {
            *self.per_uid.entry(uid).or_default() += 1;
        }
    }

    pub(super) fn remove(&mut self, id: &u64) -> Option<Reservation> {
        let reservation = self.by_id.remove(id)?;
        self.uncount(reservation.uid);
        Some(reservation)
    }

    fn uncount(&mut self, uid: Option<u32>) {
        let Some(uid) = uid else { return };
        if let Some(n) = self.per_uid.get_mut(&uid) {
            *n -= 1;
            if *n == 0 {
                self.per_uid.remove(&uid);
            }
        }
    }

    pub(super) fn get_mut(&mut self, id: &u64) -> Option<&mut Reservation> {
        self.by_id.get_mut(id)
    }

    pub(super) fn contains_key(&self, id: &u64) -> bool {
        self.by_id.contains_key(id)
    }

    pub(super) fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Open reservations, orphans included, made by `uid`'s connections.
    pub(super) fn held_by(&self, uid: u32) -> usize {
        self.per_uid.get(&uid).copied().unwrap_or(0)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&u64, &Reservation)> {
        self.by_id.iter()
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &Reservation> {
        self.by_id.values()
    }
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

/// The money a reservation holds, if any (what the budget stage took).
pub(super) fn hold(reservation: &Reservation) -> Option<&Hold> {
    reservation
        .taken
        .iter()
        .find(|t| t.guard == BUDGET_STAGE)
        .and_then(|t| t.what.downcast_ref::<Hold>())
}

/// Whether a reservation holds money a budget counts: one that does becomes an
/// orphan when its connection ends, one that does not (no budget applies, or a
/// $0 estimate) is released.
pub(super) fn holds_money(reservation: &Reservation) -> bool {
    hold(reservation).is_some_and(|h| h.estimate > Usd::ZERO)
}
