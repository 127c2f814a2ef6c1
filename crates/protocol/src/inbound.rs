//! A client's frame off the wire: an admit or a report read by hand
//! (`hot`), anything else by serde, and a frame that does not decode told
//! apart — a request kind from a newer client (the connection goes on), a
//! `Hello` of another protocol version, or garbage.

use crate::frame::{decode, DecodeError};
use crate::handshake::PROTOCOL_VERSION;
use crate::message::{ClientFrame, Request};

/// Decodes a client frame, telling an unknown request kind (a newer client; the
/// connection survives) apart from garbage (the connection is closed).
///
/// # Errors
/// As [`decode`], plus [`DecodeError::UnknownRequest`].
pub fn decode_client_frame(body: &[u8]) -> Result<ClientFrame, DecodeError> {
    // The usual requests by hand (`hot`); anything else, and every error, serde's.
    crate::hot::decode_request_or(body, decode_by_serde)
}

/// A frame the hand-written decoder does not take.
#[inline(never)]
fn decode_by_serde(body: &[u8]) -> Result<ClientFrame, DecodeError> {
    decode::<ClientFrame>(body).map_err(|err| {
        if let Some((id, kind)) = unknown_request(body) {
            return DecodeError::UnknownRequest { id, kind };
        }
        match crate::handshake::peek_hello_version(body) {
            Some(version) if version != PROTOCOL_VERSION => {
                DecodeError::VersionMismatch { version }
            }
            _ => err,
        }
    })
}

/// Reads the fixed prefix of a `ClientFrame::Request`: frame variant (u32 = 1),
/// request id (u64), request variant (u32). Returns the id and kind when the kind is
/// beyond the ones this build knows.
fn unknown_request(body: &[u8]) -> Option<(u64, u32)> {
    let frame_kind = u32::from_le_bytes(body.get(0..4)?.try_into().ok()?);
    if frame_kind != ClientFrame::REQUEST_VARIANT {
        return None;
    }
    let id = u64::from_le_bytes(body.get(4..12)?.try_into().ok()?);
    let kind = u32::from_le_bytes(body.get(12..16)?.try_into().ok()?);
    (kind >= Request::KIND_COUNT).then_some((id, kind))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::encode;
    use crate::message::Envelope;

    #[test]
    fn unknown_request_kind_is_told_apart_from_garbage() {
        let mut body = encode(&ClientFrame::Request(Envelope {
            id: 7,
            request: Request::Ping,
        }))
        .unwrap();
        body[12..16].copy_from_slice(&999u32.to_le_bytes());
        match decode_client_frame(&body) {
            Err(DecodeError::UnknownRequest { id: 7, kind: 999 }) => {}
            other => panic!("expected unknown request, got {other:?}"),
        }
        assert!(matches!(
            decode_client_frame(&[1, 2, 3]),
            Err(DecodeError::Malformed { .. })
        ));
    }

    /// The first kind past the known ones is unknown; the last known one,
    /// with a body that does not decode, is garbage.
    #[test]
    fn the_first_unknown_kind_is_the_known_count() {
        let mut body = encode(&ClientFrame::Request(Envelope {
            id: 7,
            request: Request::Ping,
        }))
        .unwrap();
        body[12..16].copy_from_slice(&Request::KIND_COUNT.to_le_bytes());
        assert!(matches!(
            decode_client_frame(&body),
            Err(DecodeError::UnknownRequest { id: 7, kind }) if kind == Request::KIND_COUNT
        ));
        body[12..16].copy_from_slice(&(Request::KIND_COUNT - 1).to_le_bytes());
        assert!(matches!(
            decode_client_frame(&body),
            Err(DecodeError::Malformed { .. })
        ));
    }

    /// Only a request can be of an unknown kind: a `Hello` of this version
    /// that does not decode is garbage, whatever its bytes where a request's
    /// kind would be.
    #[test]
    fn a_frame_that_is_not_a_request_has_no_kind() {
        let mut body = vec![0; 16];
        body[4..6].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        body[12..16].copy_from_slice(&999u32.to_le_bytes());
        assert!(matches!(
            decode_client_frame(&body),
            Err(DecodeError::Malformed { .. })
        ));
    }
}
