//! automation-framework: a host-wide sidecar daemon that AI-agent processes ask
//! before each outgoing call — may I, now, at this cost?
//!
//! # Layout
//!
//! A request travels **frame → connection → dispatch → guards → state**:
//!
//! * [`protocol`] — frame limits, the bincode configuration and the wire types
//!   shared by daemon and clients. No I/O.
//! * [`connection`] — one client socket at the frame level: read a `ClientFrame`,
//!   write a `ServerFrame`, the peer's kernel credentials.
//! * [`server`] — the accept loop, the connection cap, and the per-connection
//!   handler (handshake, timeouts, pipelining, shutdown).
//! * [`cmd`] — dispatch: one file per request kind, each a function of
//!   `(state, session, request, now)` returning a `Response`.
//! * [`admission`] — runs the guards of one admission atomically and keeps the
//!   reservations they produce.
//! * [`guard`] — pure decision logic (rate limits, circuit breakers).
//! * [`state`] — the shared handle: config, clock, access policy, admission engine,
//!   sessions.
//! * [`access`] — who may connect, act as which agent, and run admin operations,
//!   decided from the kernel's peer credentials.
//! * [`store`] — the durable ledger (SQLite, group commit): the only disk I/O.
//! * Edges: [`config`], [`socket`] (binding the path), [`systemd`] (activation and
//!   notify), [`http`] and [`metrics`] (/metrics, /health, /ready).
//!
//! The wire protocol ([`protocol`]) and the Rust client are crates of their own
//! (`automation-framework-protocol`, `automation-framework-client`); the CLI and
//! its load generator are `automation-framework-cli`.

#![deny(unsafe_code)]
#![warn(clippy::await_holding_lock)]

pub mod access;
pub mod admission;
pub mod alerts;
pub mod clock;
pub mod cmd;
pub mod config;
pub mod connection;
pub mod guard;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod money;
pub mod server;
pub mod socket;
pub mod state;
pub mod store;
pub mod systemd;

/// The wire protocol, shared with every client (its own crate, so a client or a
/// binding needs nothing of the daemon's).
pub use automation_framework_protocol as protocol;
pub use automation_framework_protocol::{names, paths};
