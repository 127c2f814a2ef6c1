//! Frame layout and the one bincode configuration every peer must use.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of one bincode
//! message (fixed-width integers, little-endian, no trailing bytes). The length is
//! checked against [`MAX_FRAME_LEN`] before any buffer is allocated for the body, and
//! bincode's own size limit repeats the bound so a hostile length inside a message
//! (a string or vector prefix) cannot ask for more memory than the frame holds.

use bincode::Options;
use serde::{de::DeserializeOwned, Serialize};
use tokio_util::codec::LengthDelimitedCodec;

/// Largest frame body, in bytes, that either side accepts or sends: 1 MiB plus
/// 64 KiB, so a request carrying a payload of [`MAX_PAYLOAD_LEN`] (the content
/// guard's largest `max_payload`) still fits with its names and fields around it.
///
/// Client and daemon must agree on it; a larger frame is rejected before allocation.
pub const MAX_FRAME_LEN: usize = (1 << 20) + (1 << 16);

/// The largest text a `Check` or an `Admit` payload may carry (1 MiB): what fits
/// in a frame with room to spare for the rest of the request. The daemon's
/// `content.max_payload` may lower it, never raise it.
pub const MAX_PAYLOAD_LEN: usize = 1 << 20;

/// Why a frame body could not be turned into a message.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The request envelope was intact but names a request kind this build does not
    /// know, typically one added by a newer client. The connection can go on.
    #[error("unknown request kind {kind} in request {id}")]
    UnknownRequest {
        /// The request id, so the reply can echo it.
        id: u64,
        /// The variant index the client sent.
        kind: u32,
    },
    /// A `Hello` of another protocol version, whose layout this build cannot read.
    #[error("client speaks protocol version {version}")]
    VersionMismatch { version: u16 },
    /// Anything else: truncated, trailing bytes, bad variant, invalid UTF-8, too large.
    #[error("malformed message: {source}")]
    Malformed {
        #[source]
        source: bincode::Error,
    },
}

/// The framing codec with the protocol's limits; both sides use exactly this.
pub fn length_codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_type::<u32>()
        .big_endian()
        .max_frame_length(MAX_FRAME_LEN)
        .new_codec()
}

/// The bincode options of the wire format. Do not use `bincode::serialize`: its
/// configuration differs (no limit, trailing bytes allowed).
fn wire() -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_little_endian()
        .with_limit(MAX_FRAME_LEN as u64)
        .reject_trailing_bytes()
}

/// Encodes one message body (without the length prefix).
///
/// # Errors
/// Fails when the encoded message would exceed [`MAX_FRAME_LEN`].
pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, bincode::Error> {
    wire().serialize(message)
}

/// Appends one whole frame (length prefix and body) to `buf`, without an
/// intermediate buffer: the daemon's reply path, where a `Vec` per reply and a
/// copy of it into the socket buffer were measurable.
///
/// # Errors
/// Fails, leaving `buf` as it was, when the message would exceed [`MAX_FRAME_LEN`].
pub fn encode_frame_into<T: Serialize>(
    buf: &mut bytes::BytesMut,
    message: &T,
) -> Result<(), bincode::Error> {
    use bytes::BufMut;
    // The size pass enforces the limit; the body is then written unchecked (the
    // same options without a limit would measure a second time).
    let len = wire().serialized_size(message)?;
    let len32 = u32::try_from(len).map_err(|_| Box::new(bincode::ErrorKind::SizeLimit))?;
    let start = buf.len();
    buf.reserve(4 + len as usize);
    buf.put_u32(len32);
    let body = bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_little_endian()
        .serialize_into((&mut *buf).writer(), message);
    if let Err(err) = body {
        buf.truncate(start);
        return Err(err);
    }
    debug_assert_eq!(buf.len() - start, 4 + len as usize);
    Ok(())
}

/// The encoded size of one message body, without encoding it.
///
/// # Errors
/// Fails when the message would exceed [`MAX_FRAME_LEN`].
pub fn encoded_len<T: Serialize>(message: &T) -> Result<u64, bincode::Error> {
    wire().serialized_size(message)
}

/// Decodes one message body (without the length prefix).
///
/// # Errors
/// [`DecodeError::Malformed`] for anything that is not exactly one valid `T`.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, DecodeError> {
    wire()
        .deserialize(body)
        .map_err(|source| DecodeError::Malformed { source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inbound::decode_client_frame;
    use crate::message::{ClientFrame, Envelope, Request};

    #[test]
    fn a_frame_encoded_in_place_is_what_the_codec_would_send() {
        use tokio_util::codec::Encoder;
        let message = ClientFrame::Request(Envelope {
            id: 9,
            request: Request::Ping,
        });
        let mut in_place = bytes::BytesMut::from(&b"earlier"[..]);
        encode_frame_into(&mut in_place, &message).unwrap();
        let mut via_codec = bytes::BytesMut::from(&b"earlier"[..]);
        length_codec()
            .encode(
                bytes::Bytes::from(encode(&message).unwrap()),
                &mut via_codec,
            )
            .unwrap();
        assert_eq!(in_place, via_codec);

        let huge = vec![0u8; MAX_FRAME_LEN];
        let before = in_place.clone();
        assert!(encode_frame_into(&mut in_place, &huge).is_err());
        assert_eq!(in_place, before, "a refused frame leaves nothing behind");
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut body = encode(&ClientFrame::Request(Envelope {
            id: 1,
            request: Request::Ping,
        }))
        .unwrap();
        body.push(0);
        assert!(matches!(
            decode_client_frame(&body),
            Err(DecodeError::Malformed { .. })
        ));
    }

    #[test]
    fn a_string_length_beyond_the_frame_does_not_allocate() {
        // Hello { version, client: String(len = u64::MAX) ... }: bincode must refuse
        // from the limit, not try to allocate.
        let mut body = Vec::new();
        body.extend_from_slice(&0u32.to_le_bytes());
        body.extend_from_slice(&1u16.to_le_bytes());
        body.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode_client_frame(&body).is_err());
    }
}
