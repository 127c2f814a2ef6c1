//! `ClientFrame::Request` of an `Admit` or a `Report`, read by hand.
//!
//! Only the success path is here: the first byte that is not what serde would
//! accept (a tag other than 0 or 1, a string that is not UTF-8, a length past
//! the end, bytes left over) and the frame goes to serde, whose error is the
//! one the client gets. An `Admit` with a payload goes to serde too (a payload
//! is scanned, which costs far more than decoding it). The fields are read in
//! declaration order, all of them: bincode writes every field, defaults are for
//! the JSON forms.

use crate::message::{AdmitRequest, ClientFrame, Envelope, Name, Outcome, ReportRequest, Request};

/// The request in `body` when it is an `Admit` (without payload) or a
/// `Report`, decoded exactly as serde decodes it; `None` for anything else,
/// which the caller hands to serde.
#[inline]
pub fn decode_request(body: &[u8]) -> Option<ClientFrame> {
    decode_request_or(body, |_| Err(())).ok()
}

/// [`decode_request`], with `otherwise` deciding every frame it does not
/// take (`inbound::decode_client_frame` hands them to serde).
///
/// Each answer is made where it is returned: the request read field by field
/// straight into the frame, or `otherwise`'s answer passed on. A request is a
/// couple of hundred bytes; built in a function of its own and then wrapped
/// (`Request`, `ClientFrame`, `Option`, `Result`), it was copied at each
/// wrapping.
#[inline(always)]
pub fn decode_request_or<E>(
    body: &[u8],
    otherwise: impl FnOnce(&[u8]) -> Result<ClientFrame, E>,
) -> Result<ClientFrame, E> {
    let mut r = Reader { rest: body };
    // A field serde would refuse, or the end of the request when bytes are
    // left after it (bincode rejects trailing bytes): `otherwise`'s.
    macro_rules! read {
        ($field:expr) => {
            match $field {
                Some(value) => value,
                None => return otherwise(body),
            }
        };
    }
    macro_rules! last {
        ($field:expr) => {{
            let value = read!($field);
            if !r.rest.is_empty() {
                return otherwise(body);
            }
            value
        }};
    }
    if read!(r.u32()) != ClientFrame::REQUEST_VARIANT {
        return otherwise(body);
    }
    let id = read!(r.u64());
    // The fields in the order they are declared, which is the wire's: a
    // struct expression is evaluated in the order it is written, and one
    // missing a field does not compile.
    let kind = read!(r.u32());
    Ok(ClientFrame::Request(Envelope {
        id,
        request: match kind {
            2 => Request::Admit(AdmitRequest {
                agent: read!(r.option(Reader::name)),
                service: read!(r.name()),
                units: read!(r.u32()),
                cost: read!(r.option(Reader::f64)),
                model: read!(r.option(Reader::name)),
                input_units: read!(r.u32()),
                output_units: read!(r.u32()),
                // A payload: serde's.
                payload: match read!(r.u8()) {
                    0 => None,
                    _ => return otherwise(body),
                },
                attempt: read!(r.u32()),
                wait_ms: read!(r.option(Reader::u64)),
                lease: read!(r.option(Reader::name)),
                route: last!(r.option(Reader::name)),
            }),
            3 => Request::Report(ReportRequest {
                reservation: read!(r.option(Reader::u64)),
                service: read!(r.option(Reader::name)),
                outcome: match read!(r.u32()) {
                    0 => Outcome::Success,
                    1 => Outcome::Failure,
                    _ => return otherwise(body),
                },
                units: read!(r.option(Reader::u32)),
                latency_ms: read!(r.option(Reader::u64)),
                cost: read!(r.option(Reader::f64)),
                input_units: read!(r.option(Reader::u32)),
                output_units: read!(r.option(Reader::u32)),
                idempotency_key: read!(r.option(Reader::name)),
                agent: read!(r.option(Reader::name)),
                retryable: read!(r.bool()),
                attempt: read!(r.option(Reader::u32)),
                retry_after_ms: last!(r.option(Reader::u64)),
            }),
            _ => return otherwise(body),
        },
    }))
}

/// bincode's fixed-width little-endian encoding, read from a slice; `None` at
/// the first byte serde would refuse.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    #[inline]
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (bytes, rest) = self.rest.split_first_chunk::<N>()?;
        self.rest = rest;
        Some(*bytes)
    }

    #[inline]
    fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|[b]| b)
    }

    #[inline]
    fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_le_bytes)
    }

    #[inline]
    fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_le_bytes)
    }

    #[inline]
    fn f64(&mut self) -> Option<f64> {
        self.take().map(f64::from_le_bytes)
    }

    #[inline]
    fn bool(&mut self) -> Option<bool> {
        match self.u8()? {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }

    #[inline]
    fn str(&mut self) -> Option<&'a str> {
        let len = usize::try_from(self.u64()?).ok()?;
        if len > self.rest.len() {
            return None;
        }
        let (bytes, rest) = self.rest.split_at(len);
        self.rest = rest;
        std::str::from_utf8(bytes).ok()
    }

    #[inline]
    fn name(&mut self) -> Option<Name> {
        self.str().map(Name::from)
    }

    /// An `Option`: tag 0 is `None`, tag 1 the value.
    #[inline]
    fn option<T>(&mut self, value: impl FnOnce(&mut Self) -> Option<T>) -> Option<Option<T>> {
        match self.u8()? {
            0 => Some(None),
            1 => value(self).map(Some),
            _ => None,
        }
    }
}
