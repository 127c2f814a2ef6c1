//! Guards: pure decision logic. Each takes `now` from its caller, holds its own
//! state, and answers with a permit or a typed denial that carries the number that
//! caused it. No guard does I/O, logs, sleeps or reads the clock itself; the
//! admission layer runs them together and turns their answers into votes.

pub mod breaker;
pub mod rate;

pub use breaker::{Breaker, BreakerConfig, BreakerDenial, Force, Pass, Transition, Trip};
pub use rate::{Cells, RateDenial, RateRule, Scope, Weight};
