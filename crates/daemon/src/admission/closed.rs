//! The memory of recently closed reservations: what tells a repeated report
//! ("already reported", answered as a duplicate) or a report of a released
//! reservation from a report of an id the daemon never issued or has
//! forgotten (looked up in the ledger).
//!
//! Every report closes a reservation, so this is written once per report,
//! under the engine lock. A hash map of the last 65,536 closed ids, with a
//! FIFO of them for eviction, cost two random touches of a megabyte-sized
//! table per report (the insert and the eviction): cache misses that made it
//! the daemon's most expensive function at 16 connections × pipeline 32
//! (8 % of its cycles, `perf record`), while counting few instructions.
//! Reservation ids are issued in order (`epoch << 32 | counter`, the counter
//! only grows within a run), and reports mostly close recent ones, so the
//! recent closes are kept as two bits per id in a ring indexed by the id:
//! 64 KiB, touched where the newest ids are, which stays in cache. What does
//! not fit the ring — a reservation that stayed open while most of a window
//! of newer ones were issued, an orphan of an earlier run — goes to a small
//! FIFO map as before.
//!
//! What is remembered: a reservation closed while among the last
//! [`REMEMBERED`] ids issued stays known until [`REMEMBERED`] more ids are
//! issued after it; any other close is kept until [`REMEMBERED`] later such
//! closes. A report of a forgotten id is looked up in the ledger, as it
//! always was once the old map evicted it.

use std::collections::{HashMap, VecDeque};

/// How many later ids, or later out-of-window closes, a close is remembered
/// for (at least).
pub(super) const REMEMBERED: u64 = 65_536;

/// The ring's width in ids: a close whose id is at most `WINDOW - REMEMBERED`
/// behind the newest closed id is kept in the ring, and stays there until the
/// ring moves `REMEMBERED` further.
const WINDOW: u64 = 1 << 18;

/// Two bits per id in a `u64` word.
const PER_WORD: u64 = 32;

/// How a closed reservation ended, to answer a late report correctly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Closed {
    Reported,
    Released,
}

impl Closed {
    fn bits(self) -> u64 {
        match self {
            Closed::Reported => 1,
            Closed::Released => 2,
        }
    }

    fn from_bits(bits: u64) -> Option<Closed> {
        match bits {
            1 => Some(Closed::Reported),
            2 => Some(Closed::Released),
            _ => None,
        }
    }
}

/// A bounded memory of closed reservation ids.
pub(super) struct RecentlyClosed {
    /// Two bits per id for the ids `newest - WINDOW + 1 ..= newest`, at
    /// `id % WINDOW`: 0 while open (or never issued), else [`Closed::bits`].
    ring: Box<[u64]>,
    /// The highest id closed so far; the ring covers the `WINDOW` ids up to
    /// it. Zero before the first close (every real id is above it).
    newest: u64,
    /// Closes that did not fit the ring, oldest first.
    late: Late,
}

/// Closes outside the ring: bounded FIFO eviction. Rare (see the module
/// doc), so the standard map serves.
#[derive(Default)]
struct Late {
    order: VecDeque<u64>,
    ids: HashMap<u64, Closed>,
}

impl Default for RecentlyClosed {
    fn default() -> RecentlyClosed {
        RecentlyClosed {
            ring: vec![0; (WINDOW / PER_WORD) as usize].into_boxed_slice(),
            newest: 0,
            late: Late::default(),
        }
    }
}

impl RecentlyClosed {
    /// Remembers how `id` was closed (a second close of the same id replaces
    /// the first's).
    pub(super) fn insert(&mut self, id: u64, how: Closed) {
        if id > self.newest {
            self.advance(id);
        } else if self.newest - id > WINDOW - REMEMBERED {
            // Its cell, if the ring still covers it, must not answer for it
            // with what an earlier close of the same id wrote there.
            if self.newest - id < WINDOW {
                let (word, shift) = place(id);
                self.ring[word] &= !(0b11 << shift);
            }
            self.late.insert(id, how);
            return;
        }
        let (word, shift) = place(id);
        let cell = &mut self.ring[word];
        *cell = (*cell & !(0b11 << shift)) | (how.bits() << shift);
    }

    pub(super) fn get(&self, id: u64) -> Option<Closed> {
        if id <= self.newest && self.newest - id < WINDOW {
            let (word, shift) = place(id);
            if let Some(how) = Closed::from_bits((self.ring[word] >> shift) & 0b11) {
                return Some(how);
            }
        }
        // An id in the ring's range may still have been filed late: it was
        // closed when the ring had already moved close to it.
        self.late.ids.get(&id).copied()
    }

    /// Moves the ring up to `id`: the cells of the ids it passes are cleared
    /// of what older ids left in them (each cell is cleared once per lap, so
    /// this costs one step per id issued).
    fn advance(&mut self, id: u64) {
        let gap = id - self.newest;
        if gap >= WINDOW {
            self.ring.fill(0);
        } else {
            for passed in self.newest + 1..=id {
                let (word, shift) = place(passed);
                self.ring[word] &= !(0b11 << shift);
            }
        }
        self.newest = id;
    }
}

/// The ring word and bit offset of `id`'s two bits.
fn place(id: u64) -> (usize, u32) {
    let slot = id % WINDOW;
    // Both fit: the word is below WINDOW / 32, the shift below 64.
    ((slot / PER_WORD) as usize, ((slot % PER_WORD) * 2) as u32)
}

impl Late {
    fn insert(&mut self, id: u64, how: Closed) {
        if self.ids.insert(id, how).is_none() {
            self.order.push_back(id);
            if self.order.len() as u64 > REMEMBERED {
                if let Some(old) = self.order.pop_front() {
                    self.ids.remove(&old);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids as the engine issues them.
    fn id(epoch: u64, counter: u64) -> u64 {
        (epoch << 32) | counter
    }

    #[test]
    fn a_close_is_told_apart_from_an_open_or_unknown_id() {
        let mut closed = RecentlyClosed::default();
        assert_eq!(closed.get(id(3, 1)), None, "nothing closed yet");
        closed.insert(id(3, 2), Closed::Reported);
        closed.insert(id(3, 4), Closed::Released);
        assert_eq!(closed.get(id(3, 2)), Some(Closed::Reported));
        assert_eq!(closed.get(id(3, 4)), Some(Closed::Released));
        assert_eq!(closed.get(id(3, 1)), None, "issued before, still open");
        assert_eq!(closed.get(id(3, 3)), None, "between two closes, open");
        assert_eq!(closed.get(id(3, 5)), None, "not closed yet");
        assert_eq!(closed.get(id(2, 4)), None, "another run's id");
        closed.insert(id(3, 2), Closed::Released);
        assert_eq!(closed.get(id(3, 2)), Some(Closed::Released), "replaced");
    }

    #[test]
    fn a_close_is_remembered_for_as_many_later_ids_as_promised() {
        let mut closed = RecentlyClosed::default();
        let first = id(7, 1);
        closed.insert(first, Closed::Reported);
        // Laps of the ring: every later id closed, the first still known
        // until REMEMBERED ids past the window's edge.
        for later in first + 1..=first + WINDOW - 1 {
            closed.insert(later, Closed::Reported);
        }
        assert_eq!(closed.get(first), Some(Closed::Reported), "inside the ring");
        closed.insert(first + WINDOW, Closed::Released);
        assert_eq!(closed.get(first), None, "its cell went to a newer id");
        assert_eq!(closed.get(first + WINDOW), Some(Closed::Released));
        assert_eq!(closed.get(first + 1), Some(Closed::Reported));
    }

    #[test]
    fn an_old_reservation_closed_late_is_kept_outside_the_ring() {
        let mut closed = RecentlyClosed::default();
        closed.insert(id(5, 1_000_000), Closed::Reported);
        // Closed far behind the newest: an orphan of an earlier run, and one
        // of this run that stayed open for most of a window.
        let orphan = id(4, 9);
        let long_open = id(5, 1_000_000 - (WINDOW - REMEMBERED) - 1);
        closed.insert(orphan, Closed::Released);
        closed.insert(long_open, Closed::Reported);
        assert_eq!(closed.get(orphan), Some(Closed::Released));
        assert_eq!(closed.get(long_open), Some(Closed::Reported));
        // The ring moving on does not forget them...
        closed.insert(id(5, 1_000_000) + WINDOW * 3, Closed::Reported);
        assert_eq!(closed.get(long_open), Some(Closed::Reported));
        // ...REMEMBERED later late closes do, oldest first.
        for n in 0..REMEMBERED - 1 {
            closed.insert(id(1, n), Closed::Reported);
        }
        assert_eq!(closed.get(orphan), None, "evicted first");
        assert_eq!(
            closed.get(long_open),
            Some(Closed::Reported),
            "evicted next"
        );
        closed.insert(id(1, REMEMBERED), Closed::Reported);
        assert_eq!(closed.get(long_open), None);
        assert_eq!(closed.late.ids.len() as u64, REMEMBERED, "bounded");
    }

    #[test]
    fn a_close_just_inside_the_promise_stays_in_the_ring() {
        let mut closed = RecentlyClosed::default();
        let newest = id(2, 500_000);
        closed.insert(newest, Closed::Reported);
        let edge = newest - (WINDOW - REMEMBERED);
        closed.insert(edge, Closed::Released);
        assert!(closed.late.ids.is_empty(), "the ring holds it");
        // Remembered for REMEMBERED more ids, then its cell is reused.
        closed.insert(edge + WINDOW - 1, Closed::Reported);
        assert_eq!(closed.get(edge), Some(Closed::Released));
        assert_eq!(edge + WINDOW - 1 - newest, REMEMBERED - 1);
        closed.insert(edge + WINDOW, Closed::Reported);
        assert_eq!(closed.get(edge), None);
    }

    #[test]
    fn a_jump_of_a_whole_window_clears_the_ring() {
        let mut closed = RecentlyClosed::default();
        closed.insert(id(1, 10), Closed::Reported);
        closed.insert(id(1, 10) + 2 * WINDOW, Closed::Released);
        assert_eq!(closed.get(id(1, 10)), None);
        assert_eq!(
            closed.get(id(1, 10) + WINDOW),
            None,
            "same cell, never closed"
        );
        assert_eq!(closed.get(id(1, 10) + 2 * WINDOW), Some(Closed::Released));
    }

    /// A late close exactly a window behind the newest close has the newest's
    /// cell: it is kept outside the ring without wiping what the newest close
    /// wrote there (a report of the newest must still be told a duplicate).
    #[test]
    fn a_late_close_a_whole_window_behind_leaves_the_newest_alone() {
        let mut closed = RecentlyClosed::default();
        let newest = id(6, 1_000_000);
        closed.insert(newest, Closed::Released);
        closed.insert(newest - WINDOW, Closed::Reported);
        assert_eq!(closed.get(newest), Some(Closed::Released));
        assert_eq!(closed.get(newest - WINDOW), Some(Closed::Reported));
    }

    /// A jump over ids never closed clears every cell it passes, the first
    /// one included: an id the ring passed without a close is not answered
    /// for with what the id a window before it left in its cell.
    #[test]
    fn a_jump_clears_the_cells_it_passes_from_the_first() {
        let mut closed = RecentlyClosed::default();
        let first = id(7, 1);
        closed.insert(first, Closed::Released);
        closed.insert(first + WINDOW - 1, Closed::Reported);
        closed.insert(first + WINDOW + 5, Closed::Reported);
        assert_eq!(closed.get(first + WINDOW), None, "passed, never closed");
        assert_eq!(closed.get(first + WINDOW + 1), None, "passed, never closed");
        assert_eq!(closed.get(first + WINDOW + 5), Some(Closed::Reported));
    }

    proptest::proptest! {
        /// Against a record of every close: `get` never answers wrongly, and
        /// answers for as long as promised (a close in the ring until the
        /// ring moves `WINDOW` past its id; a late one for `REMEMBERED` later
        /// late closes, more than any run here makes).
        #[test]
        fn never_wrong_and_remembered_as_promised(
            ops in proptest::collection::vec((0u8..5, 1u64..300_000, proptest::bool::ANY), 1..200)
        ) {
            let mut closed = RecentlyClosed::default();
            let mut truth: HashMap<u64, Closed> = HashMap::new();
            // The newest id closed so far when each id was last closed.
            let mut kept_in_ring: HashMap<u64, bool> = HashMap::new();
            let mut top = id(9, 1);
            let mut order: Vec<u64> = Vec::new();
            for (kind, n, released) in ops {
                let how = if released { Closed::Released } else { Closed::Reported };
                let at = match kind {
                    // Newer ids closing in order, or after a jump.
                    0 => { top += n % 64 + 1; top }
                    1 => { top += n; top }
                    // An older id closing late.
                    2 => top.saturating_sub(n % 70_000),
                    3 => top.saturating_sub(n),
                    // One closed before, closed again (its last close counts).
                    _ => order.get(n as usize % order.len().max(1)).copied().unwrap_or(top),
                };
                order.push(at);
                let newest_before = closed.newest;
                closed.insert(at, how);
                truth.insert(at, how);
                kept_in_ring.insert(
                    at,
                    at > newest_before || newest_before - at <= WINDOW - REMEMBERED,
                );
                for (&k, &v) in &truth {
                    let got = closed.get(k);
                    proptest::prop_assert!(got.is_none() || got == Some(v), "{k}: {got:?}, closed {v:?}");
                    let in_ring = kept_in_ring[&k];
                    if !in_ring || closed.newest - k < WINDOW {
                        proptest::prop_assert_eq!(got, Some(v), "{} forgotten too soon", k);
                    }
                }
            }
        }
    }
}
