//! The two replies every call gets — an admission's and a report's — encoded
//! by hand, byte for byte as bincode encodes them.
//!
//! Through serde, bincode walks a reply twice (once to measure it against the
//! frame limit, once to write it) and writes every field through `io::Write`
//! into the buffer: about 700 instructions per vote, and an admission with a
//! bulkhead, an active-agent cap and a lease carries five votes. Here the bytes
//! are put straight into the buffer in one pass, and the frame's length is
//! written (and checked against the limit) once they are all there. Every
//! other reply still goes through serde (`frame::encode_frame_into`): they are
//! rare, and one encoder is less to keep in step than two.
//!
//! An admission's layout is written in one place, [`AdmitWriter`]: the daemon
//! writes its decisions with it, and [`encode_reply_into`] an `AdmitReply`.
//! Kept in step by the property tests in `message/tests.rs` (arbitrary admit
//! and report replies, this encoding against serde's); a field added to
//! `AdmitReply`, `ReportReply`, `Vote` or `RetryAdvice` is a compile error
//! here (each is destructured without `..`) until it is written too.

use bytes::{BufMut, BytesMut};

use crate::frame::{encode_frame_into, MAX_FRAME_LEN};
use crate::message::{
    AdmitReply, BreakerState, GuardKind, ReplyRef, ReportReply, Response, RetryAdvice, Vote,
};

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
        Response::Admit(reply) => put_admit(buf, id, reply),
        Response::Report(reply) if reply.retry.is_none() => {
            // ok, duplicate, an optional breaker state and charge, no advice.
            let start = buf.len();
            in_one_piece::<{ REPLY_HEAD + 1 + 1 + 5 + 9 + 1 }>(buf, |w| {
                put_reply_head(w, id, RESPONSE_REPORT);
                reply.put(w);
            });
            end_frame(buf, start)
        }
        Response::Report(reply) => {
            let start = begin_reply(buf, id, RESPONSE_REPORT);
            reply.put(buf);
            end_frame(buf, start)
        }
        _ => encode_frame_into(buf, &ReplyRef { id, response }),
    }
}

/// An `AdmitReply` through [`AdmitWriter`], the one place its layout is written.
fn put_admit(buf: &mut BytesMut, id: u64, reply: &AdmitReply) -> Result<(), bincode::Error> {
    let AdmitReply {
        allowed,
        reservation,
        guard,
        rule,
        reason,
        retry_after_ms,
        votes,
        cost,
        service,
    } = reply;
    let head = AdmitHead {
        allowed: *allowed,
        reservation: *reservation,
        guard: *guard,
        rule: rule.as_deref(),
        reason: reason.as_deref(),
        retry_after_ms: *retry_after_ms,
        votes: votes.len(),
    };
    let mut writer = AdmitWriter::begin(buf, id, &head);
    for vote in votes {
        let Vote {
            guard,
            rule,
            allow,
            shadow,
            reason,
            retry_after_ms,
        } = vote;
        writer.vote(&VoteRef {
            guard: *guard,
            rule,
            allow: *allow,
            shadow: *shadow,
            reason: &[reason.as_str()],
            retry_after_ms: *retry_after_ms,
        });
    }
    writer.finish(*cost, service.as_deref())
}

/// Starts a reply frame: a length prefix to be filled in by [`end_frame`], the
/// frame's and the response's variants and the request id. Returns where the
/// frame starts.
#[inline]
fn begin_reply(buf: &mut BytesMut, id: u64, response_variant: u32) -> usize {
    let start = buf.len();
    // The usual reply is a few hundred bytes; one reservation serves it.
    buf.reserve(512);
    put_reply_head(buf, id, response_variant);
    start
}

/// The bytes [`begin_reply`] writes (`REPLY_HEAD` of them).
#[inline]
fn put_reply_head<B: BufMut>(buf: &mut B, id: u64, response_variant: u32) {
    buf.put_u32(0);
    buf.put_u32_le(SERVER_FRAME_REPLY);
    buf.put_u64_le(id);
    buf.put_u32_le(response_variant);
}

/// A reply's length prefix, frame variant, id and response variant.
const REPLY_HEAD: usize = 4 + 4 + 8 + 4;

/// Writes what `write` puts into a stack buffer of `N` bytes first, then
/// into `buf` in one piece: for the fixed-width parts of the usual replies,
/// where a write per field into the `BytesMut` (each with its capacity
/// check) cost more than the fields. `write` must fit in `N` bytes.
#[inline]
fn in_one_piece<const N: usize>(buf: &mut BytesMut, write: impl FnOnce(&mut &mut [u8])) {
    let mut stack = [0u8; N];
    let mut rest = &mut stack[..];
    write(&mut rest);
    let used = N - rest.len();
    buf.put_slice(&stack[..used]);
}

/// Writes the length of the frame begun at `start`, or takes the frame back
/// out when it exceeds the limit.
#[inline]
fn end_frame(buf: &mut BytesMut, start: usize) -> Result<(), bincode::Error> {
    let len = buf.len() - start - 4;
    if len > MAX_FRAME_LEN {
        buf.truncate(start);
        return Err(Box::new(bincode::ErrorKind::SizeLimit));
    }
    let len = u32::try_from(len).expect("at most MAX_FRAME_LEN");
    buf[start..start + 4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// A value's bincode encoding (fixed-width integers, little-endian).
trait Hot {
    fn put<B: BufMut>(&self, buf: &mut B);
}

impl<T: Hot + ?Sized> Hot for &T {
    #[inline]
    fn put<B: BufMut>(&self, buf: &mut B) {
        (**self).put(buf);
    }
}

impl Hot for bool {
    #[inline]
    fn put<B: BufMut>(&self, buf: &mut B) {
        buf.put_u8(u8::from(*self));
    }
}

/// A fixed-width number is its little-endian bytes.
macro_rules! hot_number {
    ($($ty:ty => $put:ident),*) => {$(
        impl Hot for $ty {
            #[inline]
            fn put<B: BufMut>(&self, buf: &mut B) {
                buf.$put(*self);
            }
        }
    )*};
}

hot_number!(u32 => put_u32_le, u64 => put_u64_le, f64 => put_f64_le);

/// A string is its length as a `u64`, then its bytes.
impl Hot for str {
    #[inline]
    fn put<B: BufMut>(&self, buf: &mut B) {
        buf.put_u64_le(self.len() as u64);
        buf.put_slice(self.as_bytes());
    }
}

impl Hot for String {
    #[inline]
    fn put<B: BufMut>(&self, buf: &mut B) {
        self.as_str().put(buf);
    }
}

/// An option is a tag byte, 0 or 1, then the value when there is one.
impl<T: Hot> Hot for Option<T> {
    #[inline]
    fn put<B: BufMut>(&self, buf: &mut B) {
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
            fn put<B: BufMut>(&self, buf: &mut B) {
                buf.put_u32_le(*self as u32);
            }
        }
    )*};
}

hot_unit_enum!(GuardKind, BreakerState);

/// A struct is its fields in declaration order. Each is listed here and
/// destructured without `..`, so a field added to one of these messages is a
/// compile error until it is listed too.
macro_rules! hot_struct {
    ($($ty:ident { $($field:ident),* $(,)? })*) => {$(
        impl Hot for $ty {
            #[inline]
            fn put<B: BufMut>(&self, buf: &mut B) {
                let $ty { $($field),* } = self;
                $($field.put(buf);)*
            }
        }
    )*};
}

hot_struct! {
    RetryAdvice { retry, after_ms, attempt, reason }
    ReportReply { ok, duplicate, breaker, charged, retry }
}

/// An admission's reply frame written as its parts are at hand, for a server
/// that holds the decision in its own types: the votes are written one by one
/// from borrowed text, with no `AdmitReply` (its votes, their shared rule
/// names, their texts) built first. Byte for byte what serde writes for the
/// same `Response::Admit` (the property test
/// `an_admit_written_in_parts_encodes_as_serde_does`).
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
    pub guard: Option<GuardKind>,
    pub rule: Option<&'a str>,
    pub reason: Option<&'a str>,
    pub retry_after_ms: Option<u64>,
    /// How many votes follow: exactly this many [`AdmitWriter::vote`] calls.
    pub votes: usize,
}

impl AdmitHead<'_> {
    /// The fields, in declaration order.
    #[inline]
    fn put_fields<B: BufMut>(&self, buf: &mut B) {
        self.allowed.put(buf);
        self.reservation.put(buf);
        self.guard.put(buf);
        self.rule.put(buf);
        self.reason.put(buf);
        self.retry_after_ms.put(buf);
        buf.put_u64_le(self.votes as u64);
    }
}

/// One vote, its texts borrowed.
#[derive(Debug, Clone, Copy)]
pub struct VoteRef<'a> {
    pub guard: GuardKind,
    pub rule: &'a str,
    pub allow: bool,
    pub shadow: bool,
    /// The reason's text in pieces, written one after the other: a reason
    /// with numbers ("3 of 4 in flight") is written from its numbers' digits
    /// and the words between them, with no text of its own built first.
    pub reason: &'a [&'a str],
    pub retry_after_ms: Option<u64>,
}

impl<'b> AdmitWriter<'b> {
    /// Starts the frame of the reply to request `id`.
    pub fn begin(buf: &'b mut BytesMut, id: u64, head: &AdmitHead<'_>) -> AdmitWriter<'b> {
        let start = begin_reply(buf, id, RESPONSE_ADMIT);
        if head.rule.is_none() && head.reason.is_none() {
            // Fixed width without the denial's texts (the usual, allowed reply).
            in_one_piece::<{ 1 + 9 + 5 + 1 + 1 + 9 + 8 }>(buf, |w| head.put_fields(w));
        } else {
            head.put_fields(buf);
        }
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
        // The same bytes as the fields' `put`s, the fixed-width runs between
        // the two strings written as one piece each: five writes a vote, not
        // nine (every admission's reply carries a vote per guard).
        let buf = &mut *self.buf;
        let reason_len: usize = vote.reason.iter().map(|piece| piece.len()).sum();
        buf.reserve(4 + 8 + vote.rule.len() + 2 + 8 + reason_len + 9);
        let mut head = [0u8; 12];
        head[..4].copy_from_slice(&(vote.guard as u32).to_le_bytes());
        head[4..].copy_from_slice(&(vote.rule.len() as u64).to_le_bytes());
        buf.put_slice(&head);
        buf.put_slice(vote.rule.as_bytes());
        let mut middle = [0u8; 10];
        middle[0] = u8::from(vote.allow);
        middle[1] = u8::from(vote.shadow);
        middle[2..].copy_from_slice(&(reason_len as u64).to_le_bytes());
        buf.put_slice(&middle);
        for piece in vote.reason {
            buf.put_slice(piece.as_bytes());
        }
        let mut tail = [0u8; 9];
        let tail = match vote.retry_after_ms {
            None => &tail[..1],
            Some(ms) => {
                tail[0] = 1;
                tail[1..].copy_from_slice(&ms.to_le_bytes());
                &tail[..]
            }
        };
        buf.put_slice(tail);
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
        match service {
            None => in_one_piece::<{ 9 + 1 }>(self.buf, |w| {
                cost.put(w);
                service.put(w);
            }),
            Some(_) => {
                cost.put(self.buf);
                service.put(self.buf);
            }
        }
        // Taken back out by `end_frame` when too large, written otherwise:
        // either way, nothing for `Drop` to undo.
        self.finished = true;
        end_frame(self.buf, self.start)
    }
}

impl Drop for AdmitWriter<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.buf.truncate(self.start);
        }
    }
}
