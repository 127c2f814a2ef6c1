//! A reservation: what an allowed admission took, guard by guard, from the
//! moment it was decided until it is reported, released or settled as an
//! orphan; the table of open ones, which counts them per uid so that the caps
//! (`daemon.max_reservations_per_uid`, `daemon.max_reservations`) are checked
//! in O(1). How closed ones are remembered is `closed.rs`.
//!
//! Memory: an open reservation costs about 700 bytes (its slot, with what each
//! guard took kept inline, and the shared names), an orphan the same; the caps'
//! defaults (8,192 per uid, 32,768 in all) keep the table under 24 MiB. Slots
//! are reused, not given back: the table keeps the room of its busiest moment,
//! as a hash map does.

use std::sync::Arc;

use crate::protocol::Name;
use std::time::Duration;

use super::pipeline::BUDGET_STAGE;
use super::FastMap;
use crate::guard::budget::Hold;
use crate::guard::TakenList;
use crate::money::Usd;

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
///
/// A reservation lives in one slot from its admission to its close and is
/// closed where it lies ([`Reservations::close_with`]): at ~700 bytes, each
/// move of it in and out of a hash map's buckets was a copy, four of them per
/// admit and report. The map holds only where each one is.
#[derive(Default)]
pub(super) struct Reservations {
    by_id: FastMap<u64, u32>,
    slots: Vec<Option<Reservation>>,
    /// Slots free for reuse.
    vacant: Vec<u32>,
    per_uid: FastMap<u32, usize>,
}

// === impl Reservations ===

impl Reservations {
    /// Always inlined: the reservation built by the caller is then written
    /// into its slot once, not built, passed and moved again (two copies of
    /// ~700 bytes per admission less, measured).
    #[inline(always)]
    pub(super) fn insert(&mut self, id: u64, reservation: Reservation) {
        let uid = reservation.uid;
        let slot = match self.vacant.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some(reservation);
                slot
            }
            None => {
                self.slots.push(Some(reservation));
                u32::try_from(self.slots.len() - 1).expect("at most daemon.max_reservations slots")
            }
        };
        if let Some(replaced) = self.by_id.insert(id, slot) {
            // Ids are never reused within an epoch; should one be, the
            // reservation it named is dropped, not leaked in its slot.
            if let Some(old) = self.slots[replaced as usize].take() {
                self.vacant.push(replaced);
                self.uncount(old.uid);
            }
        }
        if let Some(uid) = uid {
            *self.per_uid.entry(uid).or_default() += 1;
        }
    }

    /// Takes a reservation out of the table.
    pub(super) fn remove(&mut self, id: &u64) -> Option<Reservation> {
        let slot = self.by_id.remove(id)?;
        let reservation = self.slots[slot as usize]
            .take()
            .expect("an indexed slot holds its reservation");
        self.vacant.push(slot);
        self.uncount(reservation.uid);
        Some(reservation)
    }

    /// Runs `close` on a reservation where it lies, then drops it there: the
    /// usual end of a reservation, without moving it.
    pub(super) fn close_with<R>(
        &mut self,
        id: &u64,
        close: impl FnOnce(&mut Reservation) -> R,
    ) -> Option<R> {
        let slot = self.by_id.remove(id)?;
        let held = &mut self.slots[slot as usize];
        let reservation = held
            .as_mut()
            .expect("an indexed slot holds its reservation");
        let uid = reservation.uid;
        let closed = close(reservation);
        *held = None;
        self.vacant.push(slot);
        self.uncount(uid);
        Some(closed)
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
        let slot = *self.by_id.get(id)?;
        self.slots[slot as usize].as_mut()
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
        self.by_id.iter().filter_map(|(id, &slot)| {
            self.slots[slot as usize]
                .as_ref()
                .map(|reservation| (id, reservation))
        })
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &Reservation> {
        self.slots.iter().flatten()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn reservation(uid: u32) -> Reservation {
        Reservation {
            session: Some(1),
            uid: Some(uid),
            settle_alone: false,
            orphaned_at: None,
            agent: Name::from("a"),
            service: Arc::from("svc"),
            model: None,
            units: 1,
            input_units: 0,
            output_units: 0,
            attempt: 1,
            taken: TakenList::new(),
            stage: Stage::Open,
        }
    }

    #[test]
    fn a_closed_slot_is_reused_and_the_counts_follow() {
        let mut table = Reservations::default();
        table.insert(10, reservation(7));
        table.insert(11, reservation(7));
        table.insert(12, reservation(8));
        assert_eq!((table.len(), table.held_by(7), table.held_by(8)), (3, 2, 1));

        let attempt = table.close_with(&11, |r| r.attempt);
        assert_eq!(attempt, Some(1));
        assert_eq!(table.close_with(&11, |r| r.attempt), None, "closed once");
        assert_eq!((table.len(), table.held_by(7)), (2, 1));
        assert_eq!(table.values().count(), 2, "the closed slot holds nothing");

        table.insert(13, reservation(7));
        assert_eq!(table.slots.len(), 3, "the freed slot was reused");
        assert!(table.get_mut(&13).is_some() && table.contains_key(&10));
        let mut ids: Vec<u64> = table.iter().map(|(id, _)| *id).collect();
        ids.sort_unstable();
        assert_eq!(ids, [10, 12, 13]);

        assert!(table.remove(&10).is_some());
        assert!(table.remove(&12).is_some());
        assert!(table.remove(&13).is_some());
        assert_eq!((table.len(), table.held_by(7), table.held_by(8)), (0, 0, 0));
        assert!(table.per_uid.is_empty());

        // Slots freed by `remove` (a release, an abort) are reused as well:
        // churn through them does not grow the table.
        for id in 20..23 {
            table.insert(id, reservation(7));
        }
        assert_eq!(table.slots.len(), 3, "the removed ones' slots were reused");
    }

    #[test]
    fn an_id_filed_twice_keeps_one_reservation_and_one_count() {
        let mut table = Reservations::default();
        table.insert(5, reservation(7));
        table.insert(5, reservation(8));
        assert_eq!((table.len(), table.held_by(7), table.held_by(8)), (1, 0, 1));
        assert_eq!(
            table.values().count(),
            1,
            "the replaced one is not left in its slot"
        );
        table.insert(6, reservation(7));
        assert_eq!(table.slots.len(), 2, "the replaced one's slot was reused");
    }
}
