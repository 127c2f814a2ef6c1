//! Alert webhooks (SPEC §4): breaker opened or closed, budget thresholds, quota
//! exhausted, store failures and failed reloads, posted as Slack-compatible JSON
//! to an `http://` or `https://` webhook.
//!
//! Why it is shaped this way: alerts are raised on the decision path (some under
//! the admission lock), and delivery must never slow or block a decision. So
//! [`Alerts::raise`] only checks suppression (a short lock on a small map) and
//! `try_send`s into a bounded queue; a full queue drops the alert and counts it.
//! One [`Delivery`] task, spawned by `main`, does the network I/O (TLS included)
//! with a timeout and retries, off the hot path.
//!
//! One concept a file: `event.rs` the [`Alert`] and its JSON body;
//! `suppress.rs` the once-per-window rule; `raise.rs` the [`Alerts`] handle;
//! `delivery.rs` the task that drains the queue, with retries; `webhook.rs` one
//! POST over HTTP or HTTPS. The settings ([`AlertsConfig`], [`WebhookUrl`]) are
//! configuration types and live in `config`.

mod delivery;
mod event;
mod raise;
mod suppress;
mod webhook;

pub use crate::config::{AlertsConfig, CaBundle, WebhookUrl};
pub use delivery::Delivery;
pub use event::Alert;
pub use raise::Alerts;
pub use webhook::DeliveryError;
