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

use super::frame::{encode_frame_into, MAX_FRAME_LEN};
use super::message::{AdmitReply, ReplyRef, ReportReply, Response, RetryAdvice, Vote};

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

impl Hot for u32 {
    #[inline]
    fn len(&self) -> usize {
        4
    }
    #[inline]
    fn put(&self, buf: &mut BytesMut) {
        buf.put_u32_le(*self);
    }
}

impl Hot for u64 {
    #[inline]
    fn len(&self) -> usize {
        8
    }
    #[inline]
    fn put(&self, buf: &mut BytesMut) {
        buf.put_u64_le(*self);
    }
}

impl Hot for f64 {
    #[inline]
    fn len(&self) -> usize {
        8
    }
    #[inline]
    fn put(&self, buf: &mut BytesMut) {
        buf.put_f64_le(*self);
    }
}

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

impl Hot for String {
    #[inline]
    fn len(&self) -> usize {
        Hot::len(self.as_str())
    }
    #[inline]
    fn put(&self, buf: &mut BytesMut) {
        self.as_str().put(buf);
    }
}

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

hot_unit_enum!(super::message::GuardKind, super::message::BreakerState);

impl Hot for Vote {
    #[inline]
    fn len(&self) -> usize {
        let Vote {
            guard,
            rule,
            allow,
            shadow,
            reason,
            retry_after_ms,
        } = self;
        Hot::len(guard)
            + Hot::len(&**rule)
            + Hot::len(allow)
            + Hot::len(shadow)
            + Hot::len(reason.as_str())
            + Hot::len(retry_after_ms)
    }
    #[inline]
    fn put(&self, buf: &mut BytesMut) {
        let Vote {
            guard,
            rule,
            allow,
            shadow,
            reason,
            retry_after_ms,
        } = self;
        guard.put(buf);
        (**rule).put(buf);
        allow.put(buf);
        shadow.put(buf);
        reason.as_str().put(buf);
        retry_after_ms.put(buf);
    }
}

impl Hot for AdmitReply {
    fn len(&self) -> usize {
        // Destructured, so a new field is a compile error here first.
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
        } = self;
        Hot::len(allowed)
            + Hot::len(reservation)
            + Hot::len(guard)
            + Hot::len(rule)
            + Hot::len(reason)
            + Hot::len(retry_after_ms)
            + 8
            + votes.iter().map(Hot::len).sum::<usize>()
            + Hot::len(cost)
            + Hot::len(service)
    }
    fn put(&self, buf: &mut BytesMut) {
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
        } = self;
        allowed.put(buf);
        reservation.put(buf);
        guard.put(buf);
        rule.put(buf);
        reason.put(buf);
        retry_after_ms.put(buf);
        buf.put_u64_le(votes.len() as u64);
        for vote in votes {
            vote.put(buf);
        }
        cost.put(buf);
        service.put(buf);
    }
}

impl Hot for RetryAdvice {
    fn len(&self) -> usize {
        let RetryAdvice {
            retry,
            after_ms,
            attempt,
            reason,
        } = self;
        Hot::len(retry) + Hot::len(after_ms) + Hot::len(attempt) + Hot::len(reason)
    }
    fn put(&self, buf: &mut BytesMut) {
        let RetryAdvice {
            retry,
            after_ms,
            attempt,
            reason,
        } = self;
        retry.put(buf);
        after_ms.put(buf);
        attempt.put(buf);
        reason.put(buf);
    }
}

impl Hot for ReportReply {
    fn len(&self) -> usize {
        let ReportReply {
            ok,
            duplicate,
            breaker,
            charged,
            retry,
        } = self;
        Hot::len(ok) + Hot::len(duplicate) + Hot::len(breaker) + Hot::len(charged) + Hot::len(retry)
    }
    fn put(&self, buf: &mut BytesMut) {
        let ReportReply {
            ok,
            duplicate,
            breaker,
            charged,
            retry,
        } = self;
        ok.put(buf);
        duplicate.put(buf);
        breaker.put(buf);
        charged.put(buf);
        retry.put(buf);
    }
}
