//! The two replies every call gets — an admission's and a report's — encoded
//! by hand, byte for byte as bincode encodes them.
//!
//! Through serde, bincode walks a reply twice (once to measure it against the
//! frame limit, once to write it) and writes every field through `io::Write`
//! into the buffer: about 700 instructions per vote, and an admission with a
//! bulkhead, an active-agent cap and a lease carries five votes. Here the size
//! is summed in one pass over the lengths and the bytes are put straight into
//! the reserved buffer. Every other reply still goes through serde
//! (`frame::encode_frame_into`): they are rare, and one encoder is less to keep
//! in step than two.
//!
//! Kept in step by the property test `hot_replies_encode_as_serde_does`
//! (`message/tests.rs`): arbitrary admit and report replies, this encoding
//! against serde's. A field added to `AdmitReply`, `ReportReply`, `Vote` or
//! `RetryAdvice` fails it until it is added here too.

use bytes::{BufMut, BytesMut};

use crate::frame::{encode_frame_into, MAX_FRAME_LEN};
use crate::message::{AdmitReply, ReplyRef, ReportReply, Response, RetryAdvice, Vote};

/// `ServerFrame::Reply`'s variant index.
const SERVER_FRAME_REPLY: u32 = 1;
/// `Response::Admit`'s and `Response::Report`'s variant indices.
const RESPONSE_ADMIT: u32 = 2;
const RESPONSE_REPORT: u32 = 3;

/// Appends the frame `ServerFrame::Reply(ReplyEnvelope { id, response })` to
/// `buf`: length prefix and body, exactly as [`encode_frame_into`] would.
///
/// # Errors
/// Fails, leaving `buf` as it was, when the frame would exceed
/// [`MAX_FRAME_LEN`] (`EncodeErrorKind::SizeLimit`).
#[inline]
pub fn encode_reply_into(
    buf: &mut BytesMut,
    id: u64,
    response: &Response,
) -> Result<(), bincode::Error> {
    match response {
        Response::Admit(reply) => put_frame(buf, id, RESPONSE_ADMIT, reply),
        Response::Report(reply) => put_frame(buf, id, RESPONSE_REPORT, reply),
        _ => encode_frame_into(buf, &ReplyRef { id, response }),
    }
}

fn put_frame<T: Hot>(
    buf: &mut BytesMut,
    id: u64,
    variant: u32,
    reply: &T,
) -> Result<(), bincode::Error> {
    // Frame variant, id, response variant, then the reply.
    let len = 4 + 8 + 4 + Hot::len(reply);
    if len > MAX_FRAME_LEN {
        return Err(Box::new(bincode::ErrorKind::SizeLimit));
    }
    buf.reserve(4 + len);
    let start = buf.len();
    buf.put_u32(u32::try_from(len).expect("at most MAX_FRAME_LEN"));
    buf.put_u32_le(SERVER_FRAME_REPLY);
    buf.put_u64_le(id);
    buf.put_u32_le(variant);
    reply.put(buf);
    debug_assert_eq!(buf.len() - start, 4 + len);
    Ok(())
}

/// A value's bincode encoding (fixed-width integers, little-endian): its
/// length, and the bytes. Called as `Hot::len(x)`: for a `String` field,
/// `x.len()` would be the string's own length, without its 8-byte prefix.
trait Hot {
    fn len(&self) -> usize;
    fn put(&self, buf: &mut BytesMut);
}

impl Hot for bool {
    #[inline]
    fn len(&self) -> usize {
        1
    }
    #[inline]
    fn put(&self, buf: &mut BytesMut) {
        buf.put_u8(u8::from(*self));
    }
}

/// A fixed-width number is its little-endian bytes.
macro_rules! hot_number {
    ($($ty:ty => $put:ident),*) => {$(
        impl Hot for $ty {
            #[inline]
            fn len(&self) -> usize {
                std::mem::size_of::<$ty>()
            }
            #[inline]
            fn put(&self, buf: &mut BytesMut) {
                buf.$put(*self);
            }
        }
    )*};
}

hot_number!(u32 => put_u32_le, u64 => put_u64_le, f64 => put_f64_le);

impl Hot for str {
    #[inline]
    fn len(&self) -> usize {
        8 + self.len()
    }
    #[inline]
    fn put(&self, buf: &mut BytesMut) {
        buf.put_u64_le(self.len() as u64);
        buf.put_slice(self.as_bytes());
    }
}

/// Text held as `String` or `Text` is a `str` on the wire.
macro_rules! hot_text {
    ($($ty:ty),*) => {$(
        impl Hot for $ty {
            #[inline]
            fn len(&self) -> usize {
                Hot::len(self.as_str())
            }
            #[inline]
            fn put(&self, buf: &mut BytesMut) {
                self.as_str().put(buf);
            }
        }
    )*};
}

hot_text!(String, crate::text::Text);

impl<T: Hot> Hot for Option<T> {
    #[inline]
    fn len(&self) -> usize {
        1 + self.as_ref().map_or(0, Hot::len)
    }
    #[inline]
    fn put(&self, buf: &mut BytesMut) {
        match self {
            None => buf.put_u8(0),
            Some(value) => {
                buf.put_u8(1);
                value.put(buf);
            }
        }
    }
}

/// A fieldless enum is its variant index as a `u32`.
macro_rules! hot_unit_enum {
    ($($ty:ty),*) => {$(
        impl Hot for $ty {
            #[inline]
            fn len(&self) -> usize {
                4
            }
            #[inline]
            fn put(&self, buf: &mut BytesMut) {
                buf.put_u32_le(*self as u32);
            }
        }
    )*};
}

hot_unit_enum!(crate::message::GuardKind, crate::message::BreakerState);

impl Hot for std::sync::Arc<str> {
    #[inline]
    fn len(&self) -> usize {
        Hot::len(&**self)
    }
    #[inline]
    fn put(&self, buf: &mut BytesMut) {
        (**self).put(buf);
    }
}

/// A sequence is its length as a `u64`, then its elements.
impl Hot for crate::message::Votes {
    #[inline]
    fn len(&self) -> usize {
        8 + self.iter().map(Hot::len).sum::<usize>()
    }
    #[inline]
    fn put(&self, buf: &mut BytesMut) {
        buf.put_u64_le(self.len() as u64);
        for vote in self {
            vote.put(buf);
        }
    }
}

/// A struct is its fields in declaration order. Each is listed here and
/// destructured without `..`, so a field added to one of these messages is a
/// compile error until it is listed too.
macro_rules! hot_struct {
    ($($ty:ident { $($field:ident),* $(,)? })*) => {$(
        impl Hot for $ty {
            #[inline]
            fn len(&self) -> usize {
                let $ty { $($field),* } = self;
                0 $(+ Hot::len($field))*
            }
            #[inline]
            fn put(&self, buf: &mut BytesMut) {
                let $ty { $($field),* } = self;
                $($field.put(buf);)*
            }
        }
    )*};
}

hot_struct! {
    Vote { guard, rule, allow, shadow, reason, retry_after_ms }
    AdmitReply {
        allowed, reservation, guard, rule, reason, retry_after_ms, votes, cost, service,
    }
    RetryAdvice { retry, after_ms, attempt, reason }
    ReportReply { ok, duplicate, breaker, charged, retry }
}

/// An admission's reply frame written as its parts are at hand, for a server
/// that holds the decision in its own types: the votes are written one by one
/// from borrowed text, with no `AdmitReply` (its votes, their shared rule
/// names, their texts) built first. Byte for byte what
/// [`encode_reply_into`] writes for the same `Response::Admit` (the property
/// test `an_admit_written_in_parts_encodes_as_serde_does`).
///
/// Dropped before [`AdmitWriter::finish`], the buffer is left as it was.
pub struct AdmitWriter<'b> {
    buf: &'b mut BytesMut,
    /// Where the frame starts in `buf` (its length prefix).
    start: usize,
    /// Votes announced in [`AdmitHead::votes`] and not written yet.
    votes_left: usize,
    finished: bool,
}

/// An admission's fields before its votes; the strings borrowed.
#[derive(Debug, Clone, Copy)]
pub struct AdmitHead<'a> {
    pub allowed: bool,
    pub reservation: Option<u64>,
    pub guard: Option<crate::message::GuardKind>,
    pub rule: Option<&'a str>,
    pub reason: Option<&'a str>,
    pub retry_after_ms: Option<u64>,
    /// How many votes follow: exactly this many [`AdmitWriter::vote`] calls.
    pub votes: usize,
}

/// One vote, its texts borrowed.
#[derive(Debug, Clone, Copy)]
pub struct VoteRef<'a> {
    pub guard: crate::message::GuardKind,
    pub rule: &'a str,
    pub allow: bool,
    pub shadow: bool,
    pub reason: &'a str,
    pub retry_after_ms: Option<u64>,
}

impl<'b> AdmitWriter<'b> {
    /// Starts the frame of the reply to request `id`.
    pub fn begin(buf: &'b mut BytesMut, id: u64, head: &AdmitHead<'_>) -> AdmitWriter<'b> {
        let start = buf.len();
        // The usual reply is a few hundred bytes; one reservation serves it.
        buf.reserve(512);
        // The length is written once it is known (`finish`).
        buf.put_u32(0);
        buf.put_u32_le(SERVER_FRAME_REPLY);
        buf.put_u64_le(id);
        buf.put_u32_le(RESPONSE_ADMIT);
        head.allowed.put(buf);
        head.reservation.put(buf);
        head.guard.put(buf);
        put_opt_str(buf, head.rule);
        put_opt_str(buf, head.reason);
        head.retry_after_ms.put(buf);
        buf.put_u64_le(head.votes as u64);
        AdmitWriter {
            buf,
            start,
            votes_left: head.votes,
            finished: false,
        }
    }

    /// Writes the next vote.
    ///
    /// # Panics
    /// When more votes are written than [`AdmitHead::votes`] announced.
    #[inline]
    pub fn vote(&mut self, vote: &VoteRef<'_>) {
        assert!(self.votes_left > 0, "more votes than AdmitHead::votes");
        self.votes_left -= 1;
        let buf = &mut *self.buf;
        vote.guard.put(buf);
        vote.rule.put(buf);
        vote.allow.put(buf);
        vote.shadow.put(buf);
        vote.reason.put(buf);
        vote.retry_after_ms.put(buf);
    }

    /// Writes the fields after the votes and the frame's length.
    ///
    /// # Errors
    /// Fails, leaving the buffer as it was before [`AdmitWriter::begin`], when
    /// the frame exceeds [`MAX_FRAME_LEN`] (`EncodeErrorKind::SizeLimit`).
    ///
    /// # Panics
    /// When fewer votes were written than [`AdmitHead::votes`] announced.
    pub fn finish(
        mut self,
        cost: Option<f64>,
        service: Option<&str>,
    ) -> Result<(), bincode::Error> {
        assert_eq!(self.votes_left, 0, "fewer votes than AdmitHead::votes");
        cost.put(self.buf);
        put_opt_str(self.buf, service);
        let len = self.buf.len() - self.start - 4;
        if len > MAX_FRAME_LEN {
            // Drop truncates.
            return Err(Box::new(bincode::ErrorKind::SizeLimit));
        }
        let len = u32::try_from(len)
            .expect("at most MAX_FRAME_LEN")
            .to_be_bytes();
        self.buf[self.start..self.start + 4].copy_from_slice(&len);
        self.finished = true;
        Ok(())
    }
}

impl Drop for AdmitWriter<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.buf.truncate(self.start);
        }
    }
}

#[inline]
fn put_opt_str(buf: &mut BytesMut, text: Option<&str>) {
    match text {
        None => buf.put_u8(0),
        Some(text) => {
            buf.put_u8(1);
            text.put(buf);
        }
    }
}
