//! [`FrameCodec`]: the daemon's side of the framing [`crate::length_codec`]
//! describes (a 4-byte big-endian length, then the body), which never takes a
//! frame's length off the buffer before its body has arrived.
//!
//! `LengthDelimitedCodec` consumes a length as soon as it is read and keeps
//! "a body of n bytes is due" in its own state. The daemon reads a
//! pipelining client's frames where they lie in the read buffer when they
//! are all there ([`buffered_frame`], [`consume_frame`]), without a trip
//! through the stream's poll (about 250 instructions a frame): that needs
//! the buffer alone to say where the next frame starts, whatever the codec
//! read before. Both split
//! any stream into the same frames and fail at the same length (a
//! proptest holds them to it, and the `decode_client_frame` fuzz target
//! compares them); the length is checked against the limit before any room
//! is reserved for the body.

use std::io;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::frame::MAX_FRAME_LEN;

/// The bytes of a frame's length, before its body.
const HEAD: usize = 4;

/// A frame announced longer than the reader accepts: the stream cannot be
/// read further (its next frame's start is unknown without reading the body).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("frame of {len} bytes exceeds the maximum of {max}")]
pub struct FrameTooLong {
    pub len: usize,
    pub max: usize,
}

/// The length-delimited framing with a limit that can be lowered (before a
/// handshake only a small `Hello` may come).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameCodec {
    max: usize,
}

impl FrameCodec {
    /// Frames of up to [`MAX_FRAME_LEN`] bytes.
    pub fn new() -> FrameCodec {
        FrameCodec { max: MAX_FRAME_LEN }
    }

    pub fn max_frame_length(&self) -> usize {
        self.max
    }

    pub fn set_max_frame_length(&mut self, max: usize) {
        self.max = max;
    }
}

impl Default for FrameCodec {
    fn default() -> FrameCodec {
        FrameCodec::new()
    }
}

/// Takes the next frame's body off `buf` when the whole frame is there;
/// `Ok(None)` when more bytes are needed (room for the rest of a frame whose
/// length is known is reserved).
///
/// # Errors
/// [`FrameTooLong`] as soon as a length over `max` is read; `buf` is left as
/// it was.
#[inline]
pub fn split_frame(buf: &mut BytesMut, max: usize) -> Result<Option<BytesMut>, FrameTooLong> {
    let Some(len) = frame_len(buf, max)? else {
        return Ok(None);
    };
    let whole = HEAD + len;
    if buf.len() < whole {
        buf.reserve(whole - buf.len());
        return Ok(None);
    }
    buf.advance(HEAD);
    Ok(Some(buf.split_to(len)))
}

/// The body of the next frame when the whole frame is in `buf`, where it
/// lies, to be read in place and then taken off with [`consume_frame`]
/// (no `BytesMut` of its own: splitting one off costs a reference count
/// and its drop).
///
/// # Errors
/// As [`split_frame`].
#[inline]
pub fn buffered_frame(buf: &[u8], max: usize) -> Result<Option<&[u8]>, FrameTooLong> {
    match frame_len(buf, max)? {
        Some(len) => Ok(buf.get(HEAD..HEAD + len)),
        None => Ok(None),
    }
}

/// Takes off `buf` the frame whose body [`buffered_frame`] gave, `len` bytes.
#[inline]
pub fn consume_frame(buf: &mut BytesMut, len: usize) {
    buf.advance(HEAD + len);
}

/// The next frame's length, once its head is in `buf`.
#[inline]
fn frame_len(buf: &[u8], max: usize) -> Result<Option<usize>, FrameTooLong> {
    let Some(head) = buf.get(..HEAD) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(head.try_into().expect("HEAD bytes")) as usize;
    if len > max {
        return Err(FrameTooLong { len, max });
    }
    Ok(Some(len))
}

impl Decoder for FrameCodec {
    type Item = BytesMut;
    type Error = io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> io::Result<Option<BytesMut>> {
        split_frame(buf, self.max).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}

/// Writing a whole body as one frame (the daemon writes its frames into the
/// write buffer itself; this is the `Sink` its flushes go through).
impl Encoder<Bytes> for FrameCodec {
    type Error = io::Error;

    fn encode(&mut self, body: Bytes, buf: &mut BytesMut) -> io::Result<()> {
        let len = u32::try_from(body.len())
            .ok()
            .filter(|&len| len as usize <= self.max)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    FrameTooLong {
                        len: body.len(),
                        max: self.max,
                    },
                )
            })?;
        buf.reserve(HEAD + body.len());
        buf.put_u32(len);
        buf.put_slice(&body);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::length_codec;
    use proptest::prelude::*;

    /// Every frame `codec` takes from `stream` fed in `chunks`, and whether it
    /// stopped on an error.
    fn split_all<D>(mut codec: D, stream: &[u8], chunks: &[usize]) -> (Vec<Vec<u8>>, bool)
    where
        D: Decoder<Item = BytesMut, Error = io::Error>,
    {
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        let mut rest = stream;
        let mut sizes = chunks.iter().copied().cycle();
        while !rest.is_empty() {
            let n = sizes.next().unwrap_or(rest.len()).clamp(1, rest.len());
            buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            loop {
                match codec.decode(&mut buf) {
                    Ok(Some(frame)) => frames.push(frame.to_vec()),
                    Ok(None) => break,
                    Err(_) => return (frames, true),
                }
            }
        }
        (frames, false)
    }

    fn framed(bodies: &[Vec<u8>]) -> Vec<u8> {
        let mut stream = Vec::new();
        for body in bodies {
            stream.extend_from_slice(&(body.len() as u32).to_be_bytes());
            stream.extend_from_slice(body);
        }
        stream
    }

    proptest! {
        /// Frames and garbage, fed in pieces of any size: the same frames as
        /// tokio-util's codec, and an error at the same place.
        #[test]
        fn splits_as_the_length_delimited_codec_does(
            bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..6),
            tail in proptest::collection::vec(any::<u8>(), 0..12),
            chunks in proptest::collection::vec(1usize..50, 1..5),
            max in prop_oneof![Just(MAX_FRAME_LEN), 0usize..48],
        ) {
            let mut stream = framed(&bodies);
            stream.extend_from_slice(&tail);
            let mut ours = FrameCodec::new();
            ours.set_max_frame_length(max);
            let mut theirs = length_codec();
            theirs.set_max_frame_length(max);
            let theirs = split_all(theirs, &stream, &chunks);
            prop_assert_eq!(split_all(ours, &stream, &chunks), theirs);
        }
    }

    #[test]
    fn a_length_over_the_limit_fails_before_its_body_arrives_and_changes_nothing() {
        let mut buf = BytesMut::from(&[0, 0, 0, 9, 1][..]);
        assert_eq!(
            split_frame(&mut buf, 8),
            Err(FrameTooLong { len: 9, max: 8 })
        );
        assert_eq!(&buf[..], &[0, 0, 0, 9, 1]);
    }

    #[test]
    fn a_frame_cut_after_its_length_leaves_the_length_in_the_buffer() {
        // So a close at this point is a truncated frame (bytes remain), not
        // a clean end between frames.
        let mut buf = BytesMut::from(&[0, 0, 0, 3][..]);
        assert_eq!(split_frame(&mut buf, 8), Ok(None));
        assert_eq!(buf.len(), 4);
        assert!(buf.capacity() >= 7, "room for the body was reserved");
    }

    #[test]
    fn a_buffered_frame_is_read_in_place_then_taken_off() {
        let mut buf = BytesMut::from(&b"\0\0\0\x02ab\0\0\0\x03cd"[..]);
        let body = buffered_frame(&buf, 8).unwrap().unwrap();
        assert_eq!(body, b"ab");
        let len = body.len();
        consume_frame(&mut buf, len);
        assert_eq!(
            buffered_frame(&buf, 8),
            Ok(None),
            "the next one is short a byte"
        );
        assert_eq!(
            buffered_frame(&buf, 2),
            Err(FrameTooLong { len: 3, max: 2 })
        );
        assert_eq!(buf.len(), 6, "looking takes nothing off");
    }

    #[test]
    fn what_it_encodes_it_decodes() {
        let mut codec = FrameCodec::new();
        let mut buf = BytesMut::new();
        codec.encode(Bytes::from_static(b"abc"), &mut buf).unwrap();
        codec.encode(Bytes::new(), &mut buf).unwrap();
        assert_eq!(&buf[..], b"\0\0\0\x03abc\0\0\0\0");
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap(), &b"abc"[..]);
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap(), &b""[..]);
        assert!(buf.is_empty());
        codec.set_max_frame_length(2);
        let too_long = codec
            .encode(Bytes::from_static(b"abc"), &mut buf)
            .unwrap_err();
        assert_eq!(too_long.kind(), io::ErrorKind::InvalidInput);
        assert!(buf.is_empty(), "nothing written");
    }
}
