//! Keeping the log useful: stable journal ids for each kind of event
//! (`message_id.rs`), and a per-second budget of denial lines so a storm of
//! denials cannot flood the journal (`budget.rs`). The ids are plain constants,
//! so the state and the store can name them without depending on the budget (and
//! through it on `metrics`).

mod budget;
pub mod message_id;

pub use budget::{LogBudget, Verdict, DENIALS, DENIALS_PER_SECOND};
