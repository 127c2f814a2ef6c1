//! What the ledger is asked to do and what it answers: the entries of a job,
//! their outcomes, its errors, and what it holds at startup.
//!
//! These are the store's vocabulary for the rest of the daemon (guards name
//! [`Entry`] to say what makes their hold durable), so they live apart from the
//! machinery that writes them and import nothing of it.

use std::time::Duration;

use crate::money::Usd;

/// One change to the ledger. The entries of one job are applied atomically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// An admitted call's estimate, held until it settles.
    Reserve {
        id: u64,
        agent: String,
        service: String,
        model: Option<String>,
        estimate: Usd,
        budgets: Vec<String>,
        at: u64,
    },
    /// Spending: a settled reservation or a direct charge. A second charge with the
    /// same key makes the whole job a [`Outcome::Duplicate`].
    Charge {
        key: String,
        reservation: Option<u64>,
        agent: String,
        service: String,
        amount: Usd,
        /// Budget name and the start of the period the amount is filed under.
        budgets: Vec<(String, u64)>,
        at: u64,
    },
    /// A reservation closed without a charge.
    Unreserve {
        id: u64,
    },
    /// Quota usage in a durable window.
    QuotaAdd {
        quota: String,
        key: String,
        window_start: u64,
        n: u64,
    },
    QuotaReset {
        quota: String,
        key: String,
    },
    SetLimit {
        budget: String,
        limit: Usd,
    },
    ResetBudget {
        budget: String,
        period_start: u64,
    },
    /// The reset a budget's charges are now filed under, recorded once a
    /// reload that changed or added it is applied (`periods.rs`). It moves
    /// first what was filed under the old reset after the reload read its
    /// books ([`Outcome::Refiled`]); `at` is the reload's wall time.
    RecordReset {
        budget: String,
        reset: crate::guard::period::Period,
        at: u64,
    },
    /// Marks a charge refunded and takes it out of its budgets' balances.
    Refund {
        key: String,
    },
    /// Who did an admin operation, and when.
    Audit {
        uid: u32,
        pid: i32,
        action: String,
        at: u64,
    },
}

impl Entry {
    /// Whether this entry must be fsync'd before it is acknowledged.
    ///
    /// A charge, a refund, an admin change, an audit line, a durable quota count
    /// and a reservation's close are what the operator pays or decided: each is
    /// on stable storage before it is acknowledged, and survives power loss. A
    /// reservation only keeps the budget from being overrun by calls in flight:
    /// it is written (into the kernel's page cache, so it survives kill -9 of the
    /// daemon) before the admit is answered, but not fsync'd on its own. A power
    /// loss can lose the last milliseconds of reservations, and it also kills
    /// every agent that held them (they talk to the daemon over a Unix socket, on
    /// the same host), so nothing is left that could report against them; the
    /// next fsync makes every earlier reservation durable too (the WAL is one
    /// file, written in order).
    pub fn needs_sync(&self) -> bool {
        !matches!(self, Entry::Reserve { .. })
    }
}

/// What a job did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// A charge's key was already in the ledger; the job changed nothing.
    Duplicate,
    /// A charge would take a balance past [`crate::money::MAX_BALANCE`] (or a
    /// balance is unreadable); the job changed nothing.
    Refused(String),
    /// A refund: what was given back, and where it had been filed.
    Refunded {
        amount: Usd,
        budgets: Vec<(String, u64)>,
    },
    /// A refund of a key the ledger does not have (or already refunded).
    NotFound,
    /// Resets recorded, and the charges moved to the budgets' new periods
    /// on the way ([`Entry::RecordReset`]).
    Refiled(Vec<super::Refiled>),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// `message` says what failed, without the path (health shows it alone).
    #[error("the ledger at {path} failed: {message}")]
    Failed { path: String, message: String },
    #[error("the ledger at {path} did not commit within {}s (daemon.commit_timeout; is its filesystem frozen, full or failing?); nothing was acknowledged, retry later (a repeated report is counted once)", .waited.as_secs_f64())]
    TimedOut { path: String, waited: Duration },
    /// A charge the ledger will not file; not a failure of the ledger.
    #[error("the ledger refused the charge: {0}")]
    Refused(String),
    #[error("the ledger store is shut down")]
    Closed,
}

impl StoreError {
    /// What went wrong without the path, for health and for a store that could
    /// not be opened (which prefixes the path itself).
    pub fn reason(&self) -> String {
        match self {
            StoreError::Failed { message, .. } => message.clone(),
            other => other.to_string(),
        }
    }
}

/// What the ledger holds at startup.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Increases at every open; part of every reservation id, so ids never repeat
    /// across restarts.
    pub epoch: u64,
    pub reservations: Vec<StoredReservation>,
    /// Every budget's balances and admin-set limits.
    pub books: Books,
    /// Quota usage per quota, key and window start.
    pub quotas: Vec<(String, String, u64, u64)>,
    /// The ledger file did not exist and was created by this open.
    pub created: bool,
}

/// What the ledger holds for budgets: read whole at startup ([`Snapshot`]),
/// and for the budgets a reload adds ([`super::Store::books`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Books {
    /// Spent per budget and period start.
    pub balances: Vec<(String, u64, Usd)>,
    /// Limits set by an admin, overriding the config.
    pub limits: Vec<(String, Usd)>,
    /// Balances the ledger holds but that are not a valid amount (negative, a
    /// float left by an overflow before checked arithmetic): budget, period start,
    /// what was found. Those budgets fail closed until an admin resets them.
    pub unreadable: Vec<(String, u64, String)>,
    /// Budgets whose reset changed since the ledger last kept them, and the
    /// charges moved to their new period (`periods.rs`).
    pub refiled: Vec<super::Refiled>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredReservation {
    pub id: u64,
    pub agent: String,
    pub service: String,
    pub model: Option<String>,
    pub estimate: Usd,
    pub budgets: Vec<String>,
}
