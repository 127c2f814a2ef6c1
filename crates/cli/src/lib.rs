//! The library half of the `automation-framework` CLI: the closed-loop load
//! generator behind `automation-framework bench` and the comparison benchmark
//! (`benches/compare`). It lives here, not in the daemon's library: the daemon
//! never generates load, and a binding never needs it.
//!
//! # Layout
//!
//! * [`load`] — the load shape, tallies and summaries; `load::wire`, the
//!   protocol driver with pre-encoded frames; `load::floor`, the in-process floor
//!   server (the same socket work with no decision).

#![deny(unsafe_code)]

pub mod load;
