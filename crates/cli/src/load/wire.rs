//! One benchmark connection speaking the daemon's protocol: handshake, then a
//! closed loop that keeps `pipeline` requests in flight, writes everything it can
//! send in one flush, and reads every reply that is already there before writing
//! again. The same driver runs against the daemon and against the floor, so the
//! two differ only in what answers.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use bytes::Bytes;
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::net::UnixStream;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use super::{Tally, Window};
use automation_framework_protocol::frame::{decode, encode, length_codec};
use automation_framework_protocol::{
    AdmitRequest, ClientFrame, Envelope, Hello, Outcome, Payload, ReportRequest, Request, Response,
    ServerFrame, PROTOCOL_VERSION,
};

/// What each connection asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mix {
    /// `admit`, then `report` (success) of the reservation it returned: what an
    /// agent does around every call. Both requests are timed and counted.
    Pairs,
    /// `admit` only, timed and counted. The reservations are released with
    /// untimed batches of reports (the daemon holds at most
    /// `daemon.max_reservations_per_connection` per connection).
    Admit,
    /// `ping`: the protocol without any guard.
    Ping,
    /// `check`: the content scanner on a fixed, realistic snippet of Python
    /// (about 1 KiB, one `eval` and one hard-coded key to find).
    Check,
}

impl Mix {
    pub fn name(self) -> &'static str {
        match self {
            Mix::Pairs => "pairs",
            Mix::Admit => "admit",
            Mix::Ping => "ping",
            Mix::Check => "check",
        }
    }
}

/// What to ask, shared by all connections.
#[derive(Debug, Clone)]
pub struct Ask {
    pub socket: PathBuf,
    pub mix: Mix,
    pub service: String,
    /// Distinct agent names (`bench-0` …), cycled through per request, so keyed
    /// state (per-agent rate limits, quotas, budgets) holds this many keys.
    pub keys: usize,
    /// The session's agent name (the handshake's).
    pub agent: String,
    /// A lease every admission names (taken by the admission, given back by
    /// its report); meant for one connection, as others would be refused it.
    pub lease: Option<String>,
}

/// Released reservations are reported in batches of this many.
const RELEASE_BATCH: usize = 256;

/// What a request in flight was.
#[derive(Clone, Copy)]
enum Sent {
    Timed(Instant, Kind),
    /// A batch of releases whose reply is read but not counted.
    Untimed,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Admit,
    Report,
    Ping,
    Check,
}

/// Connects and handshakes.
///
/// # Errors
/// When the socket cannot be reached or the daemon refuses the handshake.
pub async fn connect(
    socket: &Path,
    agent: &str,
) -> anyhow::Result<Framed<UnixStream, LengthDelimitedCodec>> {
    let stream = UnixStream::connect(socket)
        .await
        .with_context(|| format!("cannot connect to {}", socket.display()))?;
    let mut framed = Framed::new(stream, length_codec());
    let hello = ClientFrame::Hello(Hello {
        version: PROTOCOL_VERSION,
        client: concat!("automation-framework-bench/", env!("CARGO_PKG_VERSION")).to_owned(),
        agent: agent.to_owned(),
    });
    framed.send(Bytes::from(encode(&hello)?)).await?;
    let reply = framed
        .next()
        .await
        .context("the daemon closed the connection during the handshake")??;
    match decode::<ServerFrame>(&reply)? {
        ServerFrame::Welcome(_) => Ok(framed),
        ServerFrame::Error(err) => bail!("handshake refused: {:?}: {}", err.code, err.message),
        other => bail!("expected Welcome, got {other:?}"),
    }
}

/// The request frames of a load, encoded once and shared by every connection: per
/// request only the id (and a report's reservation) is patched in, so the client
/// spends its CPU on the socket, not on encoding.
pub struct Frames {
    /// One `admit` per key.
    admits: Vec<Vec<u8>>,
    report: Vec<u8>,
    /// Where a report's reservation id sits in `report`.
    report_reservation_at: usize,
    ping: Vec<u8>,
    check: Vec<u8>,
}

/// What `--mix check` scans: agent-written code of the usual shape, with one
/// dangerous call and one secret for the scanner to report.
const CHECK_SNIPPET: &str = r#"import json
import os
import requests

API_KEY = "AKIAIOSFODNN7EXAMPLE"


def fetch(url: str, retries: int = 3) -> dict:
    # Fetch a JSON document, retrying on 5xx answers.
    for attempt in range(retries):
        response = requests.get(url, timeout=10)
        if response.status_code < 500:
            return response.json()
    raise RuntimeError(f"{url} failed {retries} times")


def summarise(items: list[dict]) -> str:
    lines = []
    for item in items:
        title = item.get("title", "(untitled)")
        score = item.get("score", 0)
        lines.append(f"- {title}: {score}")
    return "
".join(lines)


def evaluate(expression: str) -> float:
    return eval(expression)


if __name__ == "__main__":
    data = fetch(os.environ.get("FEED_URL", "http://localhost/feed"))
    print(summarise(data["items"]))
    print(json.dumps({"total": len(data["items"])}))
"#;

/// Where the request id sits in a `ClientFrame::Request` (after the variant).
const ID_AT: std::ops::Range<usize> = 4..12;

impl Frames {
    /// # Errors
    /// When a frame cannot be encoded (an agent or service name over the frame size).
    pub fn new(ask: &Ask) -> anyhow::Result<Frames> {
        let request = |request: Request| encode(&ClientFrame::Request(Envelope { id: 0, request }));
        let admits = (0..ask.keys.max(1))
            .map(|k| {
                request(Request::Admit(AdmitRequest {
                    agent: Some(format!("bench-{k}").into()),
                    service: ask.service.as_str().into(),
                    lease: ask.lease.as_deref().map(Into::into),
                    ..AdmitRequest::default()
                }))
            })
            .collect::<Result<_, _>>()?;
        const MARK: u64 = 0x5eed_5eed_5eed_5eed;
        let report = request(Request::Report(ReportRequest {
            reservation: Some(MARK),
            outcome: Outcome::Success,
            ..ReportRequest::default()
        }))?;
        let report_reservation_at = report
            .windows(8)
            .position(|w| w == MARK.to_le_bytes())
            .context("the reservation in an encoded report")?;
        Ok(Frames {
            admits,
            report,
            report_reservation_at,
            ping: request(Request::Ping)?,
            check: request(Request::Check(Payload {
                lang: Some("python".to_owned()),
                text: CHECK_SNIPPET.to_owned(),
            }))?,
        })
    }

    fn report_into(&self, buf: &mut Vec<u8>, id: u64, reservation: u64) {
        buf.clear();
        buf.extend_from_slice(&self.report);
        buf[ID_AT].copy_from_slice(&id.to_le_bytes());
        let at = self.report_reservation_at;
        buf[at..at + 8].copy_from_slice(&reservation.to_le_bytes());
    }

    fn admit_into(&self, buf: &mut Vec<u8>, id: u64, key: usize) {
        buf.clear();
        buf.extend_from_slice(&self.admits[key % self.admits.len()]);
        buf[ID_AT].copy_from_slice(&id.to_le_bytes());
    }

    fn ping_into(&self, buf: &mut Vec<u8>, id: u64) {
        buf.clear();
        buf.extend_from_slice(&self.ping);
        buf[ID_AT].copy_from_slice(&id.to_le_bytes());
    }

    fn check_into(&self, buf: &mut Vec<u8>, id: u64) {
        buf.clear();
        buf.extend_from_slice(&self.check);
        buf[ID_AT].copy_from_slice(&id.to_le_bytes());
    }
}

/// Drives one connection through `window` and returns what it measured.
///
/// # Errors
/// Connection failures and connection-level errors from the daemon.
pub async fn drive(
    ask: &Ask,
    frames: &Frames,
    index: usize,
    pipeline: usize,
    window: Window,
) -> anyhow::Result<Tally> {
    let mut framed = connect(&ask.socket, &ask.agent).await?;
    // Connections start at different keys, so K keys are all in use at once.
    let mut next_key = index;
    let mut tally = Tally::new();
    let mut in_flight: VecDeque<Sent> = VecDeque::with_capacity(pipeline + 1);
    // Reservations to report: the next requests of a pair, or releases.
    let mut to_report: VecDeque<u64> = VecDeque::new();
    let mut next_id: u64 = 1;
    let mut buf = Vec::with_capacity(256);

    loop {
        let now = Instant::now();
        let sending = !window.over(now);
        // Done once every reservation taken has been reported (or released).
        if !sending && in_flight.is_empty() && to_report.is_empty() {
            break;
        }
        // Fill the pipeline, then flush once.
        let mut fed = false;
        while in_flight.len() < pipeline {
            let id = next_id;
            let kind = match ask.mix {
                Mix::Pairs => {
                    if let Some(reservation) = to_report.pop_front() {
                        frames.report_into(&mut buf, id, reservation);
                        Kind::Report
                    } else if sending {
                        frames.admit_into(&mut buf, id, next_key);
                        next_key += 1;
                        Kind::Admit
                    } else {
                        break;
                    }
                }
                Mix::Admit => {
                    if to_report.len() >= RELEASE_BATCH || (!sending && !to_report.is_empty()) {
                        let frame = ClientFrame::Batch(
                            to_report
                                .drain(..)
                                .map(|reservation| Envelope {
                                    id: 0,
                                    request: Request::Report(ReportRequest {
                                        reservation: Some(reservation),
                                        outcome: Outcome::Success,
                                        ..ReportRequest::default()
                                    }),
                                })
                                .collect(),
                        );
                        framed.feed(Bytes::from(encode(&frame)?)).await?;
                        in_flight.push_back(Sent::Untimed);
                        fed = true;
                        continue;
                    }
                    if !sending {
                        break;
                    }
                    frames.admit_into(&mut buf, id, next_key);
                    next_key += 1;
                    Kind::Admit
                }
                Mix::Ping if sending => {
                    frames.ping_into(&mut buf, id);
                    Kind::Ping
                }
                Mix::Check if sending => {
                    frames.check_into(&mut buf, id);
                    Kind::Check
                }
                Mix::Ping | Mix::Check => break,
            };
            next_id += 1;
            framed.feed(&buf[..]).await?;
            in_flight.push_back(Sent::Timed(Instant::now(), kind));
            fed = true;
        }
        if fed {
            SinkExt::<&[u8]>::flush(&mut framed).await?;
        }
        if in_flight.is_empty() {
            continue;
        }
        // Wait for one reply, then take every reply already there.
        let mut reply = framed.next().await;
        loop {
            let body = match reply {
                None => bail!("the daemon closed the connection"),
                Some(body) => body?,
            };
            let read_at = Instant::now();
            let sent = in_flight
                .pop_front()
                .context("a reply to no request in flight")?;
            handle(&mut tally, &window, sent, read_at, &body, &mut to_report)?;
            match framed.next().now_or_never() {
                Some(more) => reply = more,
                None => break,
            }
        }
    }
    Ok(tally)
}

/// The fixed prefix of a single reply: frame variant, id, response variant, and
/// for an admission `allowed` and the reservation's option tag and id.
struct Prefix {
    response: u32,
    allowed: bool,
    reservation: Option<u64>,
}

/// Reads the fixed-width prefix of a `ServerFrame::Reply` without decoding the
/// rest (votes and reasons); `None` for anything else, which is decoded whole.
fn prefix(body: &[u8]) -> Option<Prefix> {
    let u32_at = |at: usize| Some(u32::from_le_bytes(body.get(at..at + 4)?.try_into().ok()?));
    if u32_at(0)? != 1 {
        return None;
    }
    let response = u32_at(12)?;
    let (allowed, reservation) = if response == 2 {
        let allowed = *body.get(16)? == 1;
        let reservation = match body.get(17)? {
            0 => None,
            _ => Some(u64::from_le_bytes(body.get(18..26)?.try_into().ok()?)),
        };
        (allowed, reservation)
    } else {
        (false, None)
    };
    Some(Prefix {
        response,
        allowed,
        reservation,
    })
}

/// Accounts for one reply.
fn handle(
    tally: &mut Tally,
    window: &Window,
    sent: Sent,
    read_at: Instant,
    body: &[u8],
    to_report: &mut VecDeque<u64>,
) -> anyhow::Result<()> {
    let (at, kind) = match sent {
        Sent::Untimed => {
            if let ServerFrame::Batch(replies) = decode(body)? {
                for reply in replies {
                    if let Response::Error(err) = reply.response {
                        tally.error(|| format!("report: {:?}: {}", err.code, err.message));
                    }
                }
            }
            return Ok(());
        }
        Sent::Timed(at, kind) => (at, kind),
    };
    // Pong 0, Admit 2, Report 3, Check 11 (the protocol's variant indices).
    let expected = match kind {
        Kind::Ping => 0,
        Kind::Admit => 2,
        Kind::Report => 3,
        Kind::Check => 11,
    };
    match prefix(body) {
        Some(reply) if reply.response == expected => {
            let counted = tally.record(window, at, read_at);
            if let Some(id) = reply.reservation {
                to_report.push_back(id);
            }
            if kind == Kind::Admit && !reply.allowed && counted {
                tally.denied += 1;
            }
        }
        _ => match decode::<ServerFrame>(body)? {
            ServerFrame::Reply(reply) => match reply.response {
                Response::Error(err) => {
                    tally.error(|| format!("{:?}: {}", err.code, err.message));
                }
                other => bail!("unexpected reply {other:?}"),
            },
            ServerFrame::Error(err) => {
                bail!(
                    "the daemon closed the connection: {:?}: {}",
                    err.code,
                    err.message
                )
            }
            other => bail!("expected a reply, got {other:?}"),
        },
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use automation_framework_protocol::{AdmitReply, ReplyEnvelope};

    #[test]
    fn the_reply_prefix_matches_the_decoder() {
        for (allowed, reservation) in [(true, Some(7u64 << 32 | 9)), (false, None)] {
            let body = encode(&ServerFrame::Reply(ReplyEnvelope {
                id: 3,
                response: Response::Admit(AdmitReply {
                    allowed,
                    reservation,
                    guard: None,
                    rule: None,
                    reason: None,
                    retry_after_ms: None,
                    votes: Default::default(),
                    cost: None,
                    service: None,
                }),
            }))
            .unwrap();
            let got = prefix(&body).unwrap();
            assert_eq!(
                (got.response, got.allowed, got.reservation),
                (2, allowed, reservation)
            );
        }
    }

    #[test]
    fn patched_frames_decode_as_the_requests_they_stand_for() {
        let ask = Ask {
            socket: PathBuf::new(),
            mix: Mix::Pairs,
            service: "svc".into(),
            keys: 3,
            agent: "a".into(),
            lease: None,
        };
        let frames = Frames::new(&ask).unwrap();
        let mut buf = Vec::new();
        frames.report_into(&mut buf, 11, 1 << 40);
        let ClientFrame::Request(envelope) = decode(&buf).unwrap() else {
            panic!("a request")
        };
        assert_eq!(envelope.id, 11);
        assert!(matches!(envelope.request, Request::Report(r) if r.reservation == Some(1 << 40)));
        frames.admit_into(&mut buf, 12, 5);
        let ClientFrame::Request(envelope) = decode(&buf).unwrap() else {
            panic!("a request")
        };
        assert_eq!(envelope.id, 12);
        assert!(
            matches!(envelope.request, Request::Admit(a) if a.agent.as_deref() == Some("bench-2"))
        );
    }
}
