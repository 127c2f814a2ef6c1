//! The first exchange on every connection: the client says who it is and which
//! protocol it speaks, the daemon answers with its own version, a session id and the
//! identity the kernel reported for the peer.
//!
//! Versioning rule: `Hello` is variant 0 of `ClientFrame` and its first field is the
//! protocol version, forever. Any other change to a message's layout bumps
//! [`PROTOCOL_VERSION`], so a daemon can always read the version of a client newer or
//! older than itself and answer `VersionMismatch` instead of garbage.

use serde::{Deserialize, Serialize};

/// The protocol version this build speaks. Bumped on any wire-layout change:
/// 2 added `AdmitRequest.payload` (and the `Check` request, `GuardKind::Content`).
pub const PROTOCOL_VERSION: u16 = 3;

/// Largest frame a daemon accepts before the handshake completed, in bytes: only a
/// `Hello` may come then (at most 278 bytes in this version), so a peer that has not
/// said who it is cannot make the daemon buffer a full [`MAX_FRAME_LEN`] frame.
/// Generous, so a newer version's larger `Hello` is still read and answered with
/// `VersionMismatch`.
///
/// [`MAX_FRAME_LEN`]: super::MAX_FRAME_LEN
pub const MAX_HELLO_LEN: usize = 4096;

/// Client → daemon, the first frame of a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Hello {
    /// Must stay the first field (see the module doc).
    pub version: u16,
    /// Free-form client software name, for logs (`"automation-framework-cli/0.1.0"`).
    pub client: String,
    /// The agent name this connection acts as; requests default to it.
    pub agent: String,
}

/// Daemon → client, the answer to an acceptable [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Welcome {
    /// The protocol version the daemon speaks (equal to the client's).
    pub version: u16,
    /// The daemon's software version (`CARGO_PKG_VERSION`).
    pub server: String,
    /// Unique per daemon process; appears in the daemon's logs for this connection.
    pub session: u64,
    /// What the kernel (SO_PEERCRED) says about the connecting process.
    pub peer: PeerIdentity,
}

/// The kernel's view of a peer process at connect time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct PeerIdentity {
    pub uid: u32,
    pub gid: u32,
    pub pid: i32,
}

/// Reads the protocol version out of a frame that may be a `Hello` from another
/// protocol version, whose remaining fields this build cannot decode.
pub fn peek_hello_version(body: &[u8]) -> Option<u16> {
    let variant = u32::from_le_bytes(body.get(0..4)?.try_into().ok()?);
    if variant != 0 {
        return None;
    }
    Some(u16::from_le_bytes(body.get(4..6)?.try_into().ok()?))
}
