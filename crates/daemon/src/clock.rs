//! The one source of time for every guard.
//!
//! Guards never read the wall clock: dispatch reads the [`Moment`] once per request and
//! passes it down, and the rate limiter's governor clock is the same [`SharedClock`].
//! Time is a monotonic `Duration` since the clock was created, so tests drive it with
//! [`ManualClock`] and never sleep.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The moment a request is decided at: monotonic time for intervals, wall time
/// (Unix seconds) for calendar periods. Read once per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Moment {
    pub mono: Duration,
    pub unix: u64,
}

/// A monotonic clock measured from its own creation.
pub trait Clock: Send + Sync + 'static {
    /// Time elapsed since the clock's epoch. Never goes backwards.
    fn now(&self) -> Duration;

    /// Wall time, seconds since the Unix epoch (UTC): for calendar periods and the
    /// ledger's timestamps, never for measuring intervals.
    fn unix(&self) -> u64;
}

/// The process's monotonic clock (`CLOCK_MONOTONIC`, the clock of
/// `std::time::Instant` and tokio's timers), as time since the daemon started.
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    /// `CLOCK_MONOTONIC` at start, in nanoseconds.
    epoch: u64,
}

/// A clock that moves only when told to; for tests. Its wall time starts at
/// `unix_start` (default 2026-11-23 00:00 UTC, a Monday) and moves with `advance`.
#[derive(Debug, Clone)]
pub struct ManualClock {
    nanos: Arc<AtomicU64>,
    unix_start: u64,
}

/// A cheaply clonable handle on whichever clock the daemon runs on. It also
/// implements governor's `Clock`, so the rate limiter and the breakers agree on `now`.
#[derive(Clone)]
pub struct SharedClock(Arc<dyn Clock>);

// === impl Moment ===

impl Moment {
    /// Reads both clocks.
    pub fn read(clock: &SharedClock) -> Moment {
        Moment {
            mono: clock.now(),
            unix: clock.unix(),
        }
    }
}

// === impl SystemClock ===

impl SystemClock {
    pub fn new() -> SystemClock {
        SystemClock {
            epoch: monotonic_nanos(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock::new()
    }
}

impl Clock for SystemClock {
    /// Read twice per request (its moment, then its duration): plain
    /// nanoseconds, without `Instant::elapsed`'s normalising subtraction, cost
    /// half as much.
    fn now(&self) -> Duration {
        Duration::from_nanos(monotonic_nanos().saturating_sub(self.epoch))
    }

    /// The coarse wall clock (`CLOCK_REALTIME_COARSE`, the time of the last
    /// tick): whole seconds need no more, and it is read on every request for
    /// a fraction of a precise read.
    fn unix(&self) -> u64 {
        use nix::time::{clock_gettime, ClockId};
        clock_gettime(ClockId::CLOCK_REALTIME_COARSE)
            .ok()
            .and_then(|t| u64::try_from(t.tv_sec()).ok())
            .unwrap_or(0)
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds (u64 nanoseconds last 584 years of uptime).
fn monotonic_nanos() -> u64 {
    use nix::time::{clock_gettime, ClockId};
    // Never fails for CLOCK_MONOTONIC on Linux; 0 would read as the epoch.
    clock_gettime(ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        let secs = u64::try_from(t.tv_sec()).unwrap_or(0);
        let nanos = u64::try_from(t.tv_nsec()).unwrap_or(0);
        secs.saturating_mul(1_000_000_000).saturating_add(nanos)
    })
}

// === impl ManualClock ===

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock::starting_at(1_795_392_000)
    }
}

impl ManualClock {
    pub fn new() -> ManualClock {
        ManualClock::default()
    }

    /// A clock whose wall time starts at `unix_start` seconds.
    pub fn starting_at(unix_start: u64) -> ManualClock {
        ManualClock {
            nanos: Arc::new(AtomicU64::new(0)),
            unix_start,
        }
    }

    /// Moves time forward by `by`.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.nanos.fetch_add(by, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::SeqCst))
    }

    fn unix(&self) -> u64 {
        self.unix_start + self.now().as_secs()
    }
}

// === impl SharedClock ===

impl SharedClock {
    pub fn new(clock: impl Clock) -> SharedClock {
        SharedClock(Arc::new(clock))
    }

    pub fn system() -> SharedClock {
        SharedClock::new(SystemClock::new())
    }

    pub fn now(&self) -> Duration {
        self.0.now()
    }

    pub fn unix(&self) -> u64 {
        self.0.unix()
    }
}

impl std::fmt::Debug for SharedClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SharedClock").field(&self.0.now()).finish()
    }
}

impl governor::clock::Clock for SharedClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        self.0.now()
    }
}
