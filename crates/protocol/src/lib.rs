//! The wire protocol shared by the daemon, the Rust client, the CLI and (later) the
//! Python bindings: frame limits, the bincode configuration, and the message types.
//!
//! Serializing and deserializing messages is implemented here and nowhere else. Nothing
//! in this module does I/O or knows what a guard is; `docs/PROTOCOL.md` is the
//! language-neutral description of the same bytes.

pub mod frame;
pub mod frame_codec;
pub mod handshake;
pub mod hot;
pub mod inbound;
pub mod message;
pub mod names;
pub mod paths;
pub mod text;

/// bincode's error, as the encoding functions return it (a frame too large for its
/// limit is `EncodeErrorKind::SizeLimit`).
pub use bincode::{Error as EncodeError, ErrorKind as EncodeErrorKind};
pub use frame::{
    decode, encode, encoded_len, length_codec, DecodeError, MAX_FRAME_LEN, MAX_PAYLOAD_LEN,
};
pub use frame_codec::{buffered_frame, consume_frame, FrameCodec, FrameTooLong};
pub use handshake::{Hello, PeerIdentity, Welcome, MAX_HELLO_LEN, PROTOCOL_VERSION};
pub use hot::{decode_request, encode_reply_into, AdmitHead, AdmitWriter, VoteRef};
pub use inbound::decode_client_frame;
pub use message::*;
pub use text::Text;
