//! The requests and replies of every call — `admit` and `report` — read and
//! written by hand, byte for byte as bincode reads and writes them; every other
//! message goes through serde.
//!
//! Through serde, bincode spent more on these two than the daemon spent
//! deciding them: a reply walked twice (measured against the frame limit, then
//! written) field by field through `io::Write`, a request's optional fields and
//! names each through a visitor. serde stays the reference: property tests
//! (`message/tests.rs`) hold both paths equal on arbitrary messages, the
//! decoder falls back to serde for anything it does not take (another request,
//! a payload, a malformed byte: serde's error is the one reported), and the
//! fuzz target checks that what it takes serde takes the same.

mod decode;
mod encode;

pub use decode::{decode_request, decode_request_or};
pub use encode::{encode_reply_into, AdmitHead, AdmitWriter, VoteRef};
