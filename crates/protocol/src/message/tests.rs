//! Property tests: every message round-trips through the real codec (length prefix
//! included), and the wire constants agree with the enums.

use bytes::BytesMut;
use proptest::prelude::*;
use tokio_util::codec::{Decoder, Encoder};

use super::*;
use crate::frame::{decode, encode, length_codec};
use crate::inbound::decode_client_frame;

/// Encodes `message` into a length-delimited frame and decodes it back.
fn through_codec<T>(message: &T) -> T
where
    T: Serialize + serde::de::DeserializeOwned,
{
    let body = encode(message).expect("message fits in a frame");
    let mut codec = length_codec();
    let mut wire = BytesMut::new();
    codec
        .encode(bytes::Bytes::from(body), &mut wire)
        .expect("frame encodes");
    let frame = codec
        .decode(&mut wire)
        .expect("frame decodes")
        .expect("frame complete");
    assert!(wire.is_empty(), "codec left bytes behind");
    decode(&frame).expect("message decodes")
}

proptest! {
    // Collections of up to 16 elements: nested vectors (a batch of breaker lists)
    // otherwise make each case megabytes large and the suite slow in debug builds,
    // without exercising any encoding path the smaller cases do not.
    #![proptest_config(ProptestConfig {
        cases: 256,
        max_default_size_range: 16,
        ..ProptestConfig::default()
    })]

    #[test]
    fn client_frames_round_trip(frame in any::<ClientFrame>()) {
        prop_assert_eq!(through_codec(&frame), frame);
    }

    #[test]
    fn responses_round_trip(response in any::<Response>()) {
        prop_assert_eq!(through_codec(&response), response);
    }

    #[test]
    fn requests_round_trip_through_json(request in any::<Request>()) {
        // The session's JSON form of the inner request structs must also round-trip.
        match &request {
            Request::Admit(a) => {
                let back: AdmitRequest = serde_json::from_value(serde_json::to_value(a).unwrap()).unwrap();
                prop_assert_eq!(&back, a);
            }
            Request::Report(r) => {
                let back: ReportRequest = serde_json::from_value(serde_json::to_value(r).unwrap()).unwrap();
                prop_assert_eq!(&back, r);
            }
            Request::ForceBreaker(f) => {
                let back: ForceBreakerRequest = serde_json::from_value(serde_json::to_value(f).unwrap()).unwrap();
                prop_assert_eq!(&back, f);
            }
            Request::Check(p) => {
                let back: Payload = serde_json::from_value(serde_json::to_value(p).unwrap()).unwrap();
                prop_assert_eq!(&back, p);
            }
            _ => {}
        }
    }

    #[test]
    fn any_truncation_is_malformed_not_a_panic(frame in any::<ClientFrame>(), cut in 0usize..64) {
        let body = encode(&frame).unwrap();
        let cut = cut.min(body.len().saturating_sub(1));
        prop_assert!(decode_client_frame(&body[..cut]).is_err());
    }

    #[test]
    fn random_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode_client_frame(&body);
    }
}

proptest! {
    // Server frames nest the deepest (a batch of replies, each a list of breakers or
    // votes); every reply kind is already covered by `responses_round_trip`, so fewer
    // cases suffice here to cover the frame variants.
    #![proptest_config(ProptestConfig {
        cases: 32,
        max_default_size_range: 4,
        ..ProptestConfig::default()
    })]

    #[test]
    fn server_frames_round_trip(frame in any::<ServerFrame>()) {
        prop_assert_eq!(through_codec(&frame), frame);
    }

    #[test]
    fn a_borrowed_reply_encodes_as_the_owned_frame(id in any::<u64>(), response in any::<Response>()) {
        let borrowed = encode(&ReplyRef { id, response: &response }).unwrap();
        let owned = encode(&ServerFrame::Reply(ReplyEnvelope { id, response })).unwrap();
        prop_assert_eq!(borrowed, owned);
    }

    #[test]
    fn hot_replies_encode_as_serde_does(id in any::<u64>(), response in any::<Response>()) {
        // Mostly other kinds (serde's own path); a share of admit and report
        // replies, the hand-written one.
        prop_assert_hot_encodes_as_serde(id, response)?;
    }

    #[test]
    fn hot_admit_replies_encode_as_serde_does(id in any::<u64>(), reply in any::<AdmitReply>()) {
        prop_assert_hot_encodes_as_serde(id, Response::Admit(reply))?;
    }

    #[test]
    fn an_admit_written_in_parts_encodes_as_serde_does(id in any::<u64>(), reply in any::<AdmitReply>()) {
        use crate::hot::{AdmitHead, AdmitWriter, VoteRef};
        let mut parts = BytesMut::from(&b"before"[..]);
        let head = AdmitHead {
            allowed: reply.allowed,
            reservation: reply.reservation,
            guard: reply.guard,
            rule: reply.rule.as_deref(),
            reason: reply.reason.as_deref(),
            retry_after_ms: reply.retry_after_ms,
            votes: reply.votes.len(),
        };
        let mut writer = AdmitWriter::begin(&mut parts, id, &head);
        for vote in &reply.votes {
            // In two pieces (the first maybe empty), as a reason with numbers is written.
            let reason = vote.reason.as_str();
            let cut = (0..=reason.len() / 2).rev().find(|&at| reason.is_char_boundary(at)).unwrap_or(0);
            writer.vote(&VoteRef {
                guard: vote.guard,
                rule: &vote.rule,
                allow: vote.allow,
                shadow: vote.shadow,
                reason: &[&reason[..cut], &reason[cut..]],
                retry_after_ms: vote.retry_after_ms,
            });
        }
        writer.finish(reply.cost, reply.service.as_deref()).unwrap();
        let mut serde = BytesMut::from(&b"before"[..]);
        crate::frame::encode_frame_into(&mut serde, &ServerFrame::Reply(ReplyEnvelope { id, response: Response::Admit(reply) })).unwrap();
        prop_assert_eq!(parts, serde);
    }

    #[test]
    fn hot_requests_decode_as_serde_does(frame in any::<ClientFrame>()) {
        let body = encode(&frame).unwrap();
        if let Some(hot) = crate::hot::decode_request(&body) {
            prop_assert_eq!(&hot, &frame);
        }
        prop_assert_eq!(decode_client_frame(&body).unwrap(), frame);
    }

    #[test]
    fn hot_admits_and_reports_decode_as_serde_does(
        id in any::<u64>(),
        admit in any::<AdmitRequest>(),
        report in any::<ReportRequest>(),
    ) {
        let with_payload = admit.payload.is_some();
        for request in [Request::Admit(admit), Request::Report(report)] {
            let frame = ClientFrame::Request(Envelope { id, request });
            let body = encode(&frame).unwrap();
            match crate::hot::decode_request(&body) {
                Some(hot) => prop_assert_eq!(hot, frame),
                // Only an admission with a payload is left to serde.
                None => {
                    let admit_with_payload = with_payload
                        && matches!(&frame, ClientFrame::Request(Envelope { request: Request::Admit(_), .. }));
                    prop_assert!(admit_with_payload, "left to serde: {:?}", frame);
                }
            }
        }
    }

    /// Whatever the hand-written decoder takes, serde takes the same: bytes
    /// flipped, cut or added anywhere in an admit or a report.
    #[test]
    fn the_hot_decoder_takes_nothing_serde_refuses(
        admit in any::<AdmitRequest>(),
        report in any::<ReportRequest>(),
        which in any::<bool>(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        edit in 0..3u8,
    ) {
        let request = if which { Request::Admit(admit) } else { Request::Report(report) };
        let mut body = encode(&ClientFrame::Request(Envelope { id: 9, request })).unwrap();
        let at = at.index(body.len());
        match edit {
            0 => body[at] = byte,
            1 => body.truncate(at),
            _ => body.insert(at, byte),
        }
        if let Some(hot) = crate::hot::decode_request(&body) {
            prop_assert_eq!(Some(hot), decode::<ClientFrame>(&body).ok());
        }
    }

    /// A byte after a whole admit or report: serde refuses the frame, and so
    /// does the hand-written decoder (the bytes are not ignored).
    #[test]
    fn a_byte_after_a_whole_request_is_refused_by_both_decoders(
        admit in any::<AdmitRequest>(),
        report in any::<ReportRequest>(),
        byte in any::<u8>(),
    ) {
        for request in [Request::Admit(admit.clone()), Request::Report(report.clone())] {
            let mut body = encode(&ClientFrame::Request(Envelope { id: 9, request })).unwrap();
            body.push(byte);
            prop_assert_eq!(crate::hot::decode_request(&body), None);
            prop_assert!(decode_client_frame(&body).is_err());
        }
    }

    #[test]
    fn hot_report_replies_encode_as_serde_does(id in any::<u64>(), reply in any::<ReportReply>()) {
        prop_assert_hot_encodes_as_serde(id, Response::Report(reply))?;
    }
}

/// The reply to `id` written by `hot::encode_reply_into` and by serde, after
/// bytes already in the buffer: the same frame.
fn prop_assert_hot_encodes_as_serde(id: u64, response: Response) -> Result<(), TestCaseError> {
    let mut hot = BytesMut::from(&b"before"[..]);
    crate::hot::encode_reply_into(&mut hot, id, &response).unwrap();
    let mut serde = BytesMut::from(&b"before"[..]);
    crate::frame::encode_frame_into(
        &mut serde,
        &ServerFrame::Reply(ReplyEnvelope { id, response }),
    )
    .unwrap();
    prop_assert_eq!(hot, serde);
    Ok(())
}

#[test]
fn a_hot_reply_too_large_for_a_frame_is_refused_and_leaves_the_buffer_alone() {
    let reply = AdmitReply {
        allowed: false,
        reservation: None,
        guard: None,
        rule: None,
        reason: Some("x".repeat(crate::MAX_FRAME_LEN)),
        retry_after_ms: None,
        votes: Votes::new(),
        cost: None,
        service: None,
    };
    let mut buf = BytesMut::from(&b"queued"[..]);
    let err = crate::hot::encode_reply_into(&mut buf, 7, &Response::Admit(reply)).unwrap_err();
    assert!(matches!(*err, bincode::ErrorKind::SizeLimit), "{err}");
    assert_eq!(&buf[..], b"queued");
}

#[test]
fn kind_count_matches_the_enum() {
    let last = encode(&Request::Route(RouteRequest {
        route: None,
        chain: Vec::new(),
        agent: None,
        units: 1,
        cost: None,
        model: None,
    }))
    .unwrap();
    let index = u32::from_le_bytes(last[0..4].try_into().unwrap());
    assert_eq!(index + 1, Request::KIND_COUNT);
}

#[test]
fn request_variant_constant_matches_the_enum() {
    let body = encode(&ClientFrame::Request(Envelope {
        id: 0,
        request: Request::Ping,
    }))
    .unwrap();
    assert_eq!(
        u32::from_le_bytes(body[0..4].try_into().unwrap()),
        ClientFrame::REQUEST_VARIANT
    );
}

/// The documented byte layout in docs/PROTOCOL.md, checked byte for byte.
#[test]
fn hello_bytes_match_the_documented_layout() {
    let body = encode(&ClientFrame::Hello(crate::Hello {
        version: 3,
        client: "c".into(),
        agent: "ab".into(),
    }))
    .unwrap();
    let expected: Vec<u8> = [
        &0u32.to_le_bytes()[..], // ClientFrame::Hello
        &3u16.to_le_bytes()[..], // version
        &1u64.to_le_bytes()[..], // client length
        b"c",
        &2u64.to_le_bytes()[..], // agent length
        b"ab",
    ]
    .concat();
    assert_eq!(body, expected);
    assert_eq!(crate::handshake::peek_hello_version(&body), Some(3));
}

/// A client of protocol version 1 (before `AdmitRequest.payload`) is told its
/// version, not handed a misread admission: its `Hello` decodes as this
/// version's layout (the layout did not change), so the version check is what
/// refuses it, and a version-1 `Admit` body sent anyway is not a valid frame.
#[test]
fn a_version_1_client_is_recognised_and_its_admit_does_not_decode() {
    let hello = encode(&ClientFrame::Hello(crate::Hello {
        version: 1,
        client: "old".into(),
        agent: "a".into(),
    }))
    .unwrap();
    assert_eq!(crate::handshake::peek_hello_version(&hello), Some(1));
    assert_ne!(crate::PROTOCOL_VERSION, 1);
    // Version 1's Admit: the same fields without the payload's Option tag.
    let mut v1 = encode(&ClientFrame::Request(Envelope {
        id: 8,
        request: Request::Admit(AdmitRequest {
            service: "openai".into(),
            ..AdmitRequest::default()
        }),
    }))
    .unwrap();
    assert_eq!(v1.pop(), Some(0), "the payload's None tag is the last byte");
    assert!(
        decode_client_frame(&v1).is_err(),
        "a version-1 admit is malformed here"
    );
}

#[test]
fn admit_json_defaults_and_rejects_typos() {
    let admit: AdmitRequest = serde_json::from_str(r#"{"service":"openai"}"#).unwrap();
    assert_eq!(admit.units, 1);
    assert_eq!(admit.agent, None);
    let err = serde_json::from_str::<AdmitRequest>(r#"{"service":"openai","unit":3}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown field `unit`"), "{err}");
}

/// docs/PROTOCOL.md is what a client in another language is written from (issue
/// 10 found it saying unknown kinds start at 9 while `Reload` is 9): its tables of
/// variant indexes and struct fields, and the numbers it states, are the code's.
mod the_document {
    use std::collections::BTreeMap;

    use serde_json::Value;

    use super::*;
    use crate::{Hello, PeerIdentity, Welcome, MAX_FRAME_LEN, MAX_HELLO_LEN};

    const DOC: &str = include_str!("../../../../docs/PROTOCOL.md");

    /// The rows (cells, without the header) of the table that follows the line
    /// `heading` within a few lines.
    fn table_after(heading: &str) -> Vec<Vec<String>> {
        let at = DOC
            .lines()
            .position(|line| line == heading)
            .unwrap_or_else(|| panic!("docs/PROTOCOL.md has no line {heading:?}"));
        let rest: Vec<&str> = DOC.lines().skip(at + 1).collect();
        let start = rest
            .iter()
            .position(|line| line.starts_with('|'))
            .filter(|&gap| gap <= 3)
            .unwrap_or_else(|| panic!("no table right after {heading:?}"));
        rest[start..]
            .iter()
            .take_while(|line| line.starts_with('|'))
            .skip(2)
            .map(|line| {
                line.trim_matches('|')
                    .split(" | ")
                    .map(|cell| cell.trim().to_owned())
                    .collect()
            })
            .collect()
    }

    fn unquoted(cell: &str) -> &str {
        cell.trim_matches('`')
    }

    /// `Admit` and `"admit"` and `half_open` and `HalfOpen` alike.
    fn normalized(name: &str) -> String {
        name.chars()
            .filter(|c| *c != '_')
            .flat_map(char::to_lowercase)
            .collect()
    }

    /// The value of `T` whose encoding starts with `prefix` and is zeros after it
    /// (empty strings and vectors, `None`, 0, `false`, variant 0), if `prefix`
    /// starts a `T` at all: how the test reaches every variant without listing
    /// them (a new variant is found, and must be documented).
    fn zeroed<T: serde::de::DeserializeOwned>(prefix: &[u8]) -> Option<T> {
        use bincode::Options;
        let mut bytes = prefix.to_vec();
        bytes.resize(4096, 0);
        bincode::DefaultOptions::new()
            .with_fixint_encoding()
            .with_little_endian()
            .allow_trailing_bytes()
            .deserialize(&bytes)
            .ok()
    }

    /// Wire index → (JSON name, JSON value) of every variant of `T`.
    fn variants<T: Serialize + serde::de::DeserializeOwned>() -> BTreeMap<u32, (String, Value)> {
        (0u32..)
            .map_while(|index| zeroed::<T>(&index.to_le_bytes()).map(|value| (index, value)))
            .map(|(index, value)| {
                let json = serde_json::to_value(&value).unwrap();
                let name = match &json {
                    Value::String(name) => name.clone(),
                    Value::Object(map) => map.keys().next().unwrap().clone(),
                    other => panic!("not an externally tagged enum: {other}"),
                };
                (index, (name, json))
            })
            .collect()
    }

    /// The enum's table lists exactly its variants at their wire indexes; where
    /// the table has a JSON column, the JSON spelling too; where it lists a
    /// variant's fields, those in order.
    fn enum_matches<T: Serialize + serde::de::DeserializeOwned>(heading: &str) -> usize {
        let code = variants::<T>();
        let rows = table_after(heading);
        let doc: BTreeMap<u32, &Vec<String>> = rows
            .iter()
            .map(|row| (row[0].parse().expect("an index"), row))
            .collect();
        assert_eq!(
            doc.keys().collect::<Vec<_>>(),
            code.keys().collect::<Vec<_>>(),
            "the indexes of {heading:?}"
        );
        for (index, (name, json)) in &code {
            let row = doc[index];
            assert_eq!(
                normalized(unquoted(&row[1])),
                normalized(name),
                "{heading:?} index {index}"
            );
            if let Some(spelled) = row.get(2).filter(|cell| cell.starts_with("`\"")) {
                let spelled = spelled.split(' ').next().unwrap();
                assert_eq!(unquoted(spelled), json.to_string(), "{heading:?} {name}");
            }
            if let (Some(fields), Value::Object(map)) = (row.get(2), json) {
                if fields.contains(": ") {
                    let keys: Vec<&String> = map[name].as_object().unwrap().keys().collect();
                    assert_eq!(field_names(fields), keys, "{heading:?} {name}");
                }
            }
        }
        code.len()
    }

    /// "`budget: String`, `limit: f64`" → ["budget", "limit"].
    fn field_names(cell: &str) -> Vec<&str> {
        cell.split(", ")
            .map(|field| unquoted(field).split(':').next().unwrap())
            .collect()
    }

    #[test]
    fn enum_tables_match_the_code() {
        enum_matches::<ClientFrame>("`ClientFrame` (client → daemon):");
        enum_matches::<ServerFrame>("`ServerFrame` (daemon → client):");
        let kinds = enum_matches::<Request>("`Request`:");
        assert_eq!(kinds, Request::KIND_COUNT as usize);
        enum_matches::<Response>(
            "`Response` (note that `Error` keeps index 5; the kinds added after it follow it):",
        );
        enum_matches::<AdminRequest>(
            "`AdminRequest` is an enum whose variants carry named fields; each is encoded as",
        );
        enum_matches::<GuardKind>("`GuardKind`:");
        enum_matches::<Outcome>("`Outcome`:");
        enum_matches::<BreakerState>("`BreakerState`:");
        enum_matches::<BreakerForce>(
            "`BreakerForce` (the operator's override in `ForceBreakerRequest`):",
        );
        enum_matches::<Health>("`Health`:");
        enum_matches::<ErrorCode>("`ErrorCode`:");
    }

    #[test]
    fn struct_tables_list_the_fields_in_wire_order() {
        // Every "| `Struct` | `field: Type`, … |" row of section 5.
        let rows: BTreeMap<&str, Vec<&str>> = DOC
            .lines()
            .skip_while(|line| !line.starts_with("## 5. "))
            .take_while(|line| !line.starts_with("## 6. "))
            .filter_map(|line| {
                let cells: Vec<&str> = line.trim_matches('|').split(" | ").collect();
                let (name, fields) = (cells.first()?.trim(), cells.get(1)?.trim());
                (cells.len() == 2 && name.starts_with('`') && fields.contains(": "))
                    .then(|| (unquoted(name), field_names(fields)))
            })
            .collect();
        let mut checked = Vec::new();
        macro_rules! check {
            ($($ty:ident),* $(,)?) => {$(
                let value = zeroed::<$ty>(&[]).expect("zeros are a value");
                let json = serde_json::to_value(&value).unwrap();
                let keys: Vec<&String> = json.as_object().unwrap().keys().collect();
                let documented = rows
                    .get(stringify!($ty))
                    .unwrap_or_else(|| panic!("docs/PROTOCOL.md has no row for {}", stringify!($ty)));
                assert_eq!(documented, &keys, "{}", stringify!($ty));
                checked.push(stringify!($ty));
            )*};
        }
        check!(
            Hello,
            Welcome,
            PeerIdentity,
            Envelope,
            ReplyEnvelope,
            Pong,
            AdmitRequest,
            AdmitReply,
            Vote,
            ReportRequest,
            ReportReply,
            BreakersRequest,
            BreakersReply,
            BreakerInfo,
            BudgetRequest,
            BudgetReply,
            BudgetInfo,
            QuotasRequest,
            QuotasReply,
            QuotaInfo,
            AdminReply,
            ForceBreakerRequest,
            ReloadReply,
            Payload,
            CheckReply,
            Violation,
            StatusReport,
            BreakerCounts,
            ErrorReply,
            RetryAdvice,
            LeaseRequest,
            LeaseReply,
            LeaseHolder,
            RouteRequest,
            RouteReply,
            RouteSkip,
            InFlight,
        );
        let documented: Vec<&str> = rows.keys().copied().collect();
        checked.sort_unstable();
        assert_eq!(
            documented, checked,
            "a documented struct the test does not know"
        );
    }

    #[test]
    fn stated_numbers_are_the_code_s() {
        let kinds = Request::KIND_COUNT;
        for stated in [
            format!("index ≥ {kinds} for this daemon, `Request::KIND_COUNT`"),
            format!("`Request::KIND_COUNT` = {kinds}: an index ≥ {kinds}"),
            format!(
                "`Check` is index {}",
                Request::Check(Payload {
                    lang: None,
                    text: String::new()
                })
                .kind()
            ),
            format!(
                "`MAX_FRAME_LEN` = 1 MiB + 64 KiB = **{}** bytes",
                thousands(MAX_FRAME_LEN)
            ),
            format!(
                "`MAX_PAYLOAD_LEN` = 1 MiB = **{}** bytes",
                thousands(crate::MAX_PAYLOAD_LEN)
            ),
            format!(
                "Protocol version described here: **{}**",
                crate::PROTOCOL_VERSION
            ),
            format!("`MAX_HELLO_LEN` = **{}**", thousands(MAX_HELLO_LEN)),
            // version, two strings of at most MAX_NAME_LEN, variant index
            format!(
                "is at most {} bytes",
                4 + 2 + 2 * (8 + crate::names::MAX_NAME_LEN)
            ),
            format!("at most its first {} characters", crate::names::SHOWN_CHARS),
        ] {
            assert!(
                DOC.contains(&stated),
                "docs/PROTOCOL.md should say {stated:?}"
            );
        }
        // "### 6.3 `Admit` (2): …": each request's section names its index.
        for line in DOC.lines().filter(|l| l.starts_with("### 6.")) {
            let name = line.split('`').nth(1).unwrap();
            let index: usize = line.split(['(', ')']).nth(1).unwrap().parse().unwrap();
            let op = &Request::OPS[index];
            assert_eq!(normalized(name), normalized(op), "{line}");
        }
    }

    /// The bytes of the first code block after the line that starts with
    /// `marker`: on each line, the leading two-digit hex tokens.
    fn block_after(marker: &str) -> Vec<u8> {
        DOC.lines()
            .skip_while(|line| !line.starts_with(marker))
            .skip_while(|line| !line.starts_with("```"))
            .skip(1)
            .take_while(|line| !line.starts_with("```"))
            .flat_map(|line| {
                line.split_whitespace()
                    .take_while(|t| t.len() == 2 && t.bytes().all(|b| b.is_ascii_hexdigit()))
                    .map(|t| u8::from_str_radix(t, 16).unwrap())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn framed<T: Serialize>(message: &T) -> Vec<u8> {
        let body = encode(message).unwrap();
        [&u32::try_from(body.len()).unwrap().to_be_bytes()[..], &body].concat()
    }

    /// Section 9's byte dumps are what the code encodes (the reply dump with
    /// elided strings is left out).
    #[test]
    fn worked_examples_are_the_encoded_bytes() {
        use crate::Outcome;
        let examples: Vec<(&str, Vec<u8>)> = vec![
            (
                "### 9.2",
                framed(&ClientFrame::Request(Envelope {
                    id: 7,
                    request: Request::Ping,
                })),
            ),
            (
                "`Welcome { version: 3,",
                framed(&ServerFrame::Welcome(Welcome {
                    version: 3,
                    server: "0.1.0".into(),
                    session: 1,
                    peer: PeerIdentity {
                        uid: 1000,
                        gid: 1000,
                        pid: 4242,
                    },
                })),
            ),
            (
                "`Reply { id: 7, response: Pong",
                framed(&ServerFrame::Reply(ReplyEnvelope {
                    id: 7,
                    response: Response::Pong(Pong {
                        ok: true,
                        version: "0.1.0".into(),
                        session: 1,
                        agent: "ab".into(),
                    }),
                })),
            ),
            (
                "`Error(ErrorReply { code: VersionMismatch",
                framed(&ServerFrame::Error(ErrorReply::new(
                    ErrorCode::VersionMismatch,
                    "x",
                ))),
            ),
            (
                "`Request(Envelope { id: 8, request: Admit(",
                framed(&ClientFrame::Request(Envelope {
                    id: 8,
                    request: Request::Admit(AdmitRequest {
                        agent: None,
                        service: "openai".into(),
                        units: 1200,
                        cost: Some(0.02),
                        model: Some("gpt-4o".into()),
                        input_units: 1000,
                        output_units: 200,
                        payload: None,
                        ..AdmitRequest::default()
                    }),
                })),
            ),
            (
                "`Request(Envelope { id: 9, request: Report(",
                framed(&ClientFrame::Request(Envelope {
                    id: 9,
                    request: Request::Report(ReportRequest {
                        reservation: Some((1 << 32) | 1),
                        outcome: Outcome::Success,
                        latency_ms: Some(840),
                        cost: Some(0.017),
                        ..ReportRequest::default()
                    }),
                })),
            ),
            (
                "`Request(Envelope { id: 12, request: Check(",
                framed(&ClientFrame::Request(Envelope {
                    id: 12,
                    request: Request::Check(Payload {
                        lang: Some("py".into()),
                        text: "eval(x)".into(),
                    }),
                })),
            ),
            (
                "`Reply { id: 12, response: Check(",
                framed(&ServerFrame::Reply(ReplyEnvelope {
                    id: 12,
                    response: Response::Check(CheckReply {
                        lang: "python".into(),
                        violations: vec![Violation {
                            kind: "dangerous_call".into(),
                            rule: "py-eval".into(),
                            severity: "high".into(),
                            line: 1,
                            column: 1,
                            excerpt: "eval(x)".into(),
                            message: "eval".into(),
                        }],
                        omitted: 0,
                    }),
                })),
            ),
            (
                "### 9.5 A batch",
                framed(&ClientFrame::Batch(vec![
                    Envelope {
                        id: 1,
                        request: Request::Ping,
                    },
                    Envelope {
                        id: 2,
                        request: Request::Status,
                    },
                ])),
            ),
        ];
        for (marker, expected) in examples {
            assert_eq!(block_after(marker), expected, "the bytes after {marker:?}");
        }
        // Written inline, in groups: compared without the spaces.
        let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let squeezed: String = DOC.split_whitespace().collect();
        let report_reply = |duplicate: bool| {
            encode(&ServerFrame::Reply(ReplyEnvelope {
                id: 9,
                response: Response::Report(ReportReply {
                    ok: true,
                    duplicate,
                    breaker: (!duplicate).then_some(BreakerState::Closed),
                    charged: (!duplicate).then_some(0.017),
                    retry: None,
                }),
            }))
            .unwrap()
        };
        for inline in [
            framed(&ClientFrame::Request(Envelope {
                id: 10,
                request: Request::Budget(BudgetRequest { agent: None }),
            })),
            report_reply(false),
            report_reply(true),
        ] {
            let text = format!("`{}`", hex(&inline));
            assert!(
                squeezed.contains(&text),
                "docs/PROTOCOL.md should show {text}"
            );
        }
        let refund = framed(&ClientFrame::Request(Envelope {
            id: 11,
            request: Request::Admin(AdminRequest::Refund {
                key: "reservation:4294967297".into(),
            }),
        }));
        let marker = "`Request(Envelope { id: 10, request: Budget(";
        assert_eq!(block_after(marker), refund, "the Refund block");
    }

    fn thousands(n: usize) -> String {
        let digits = n.to_string();
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        out
    }
}

/// Issue 15: a request's names up to 24 bytes decode into place, without a heap
/// allocation per name; longer ones still decode (onto the heap).
/// The request a single-request frame decodes back to.
fn through_the_wire(frame: &ClientFrame) -> Request {
    match decode_client_frame(&encode(frame).unwrap()) {
        Ok(ClientFrame::Request(envelope)) => envelope.request,
        other => panic!("a request frame decodes as one, got {other:?}"),
    }
}

#[test]
fn short_names_decode_without_a_heap_allocation() {
    let long = "a-service-name-longer-than-24-bytes";
    let admit = ClientFrame::Request(Envelope {
        id: 1,
        request: Request::Admit(AdmitRequest {
            agent: Some("bench-0".into()),
            service: "x".repeat(24).into(),
            model: Some(String::from(long).into()),
            lease: Some("nightly-import".into()),
            route: Some("chat".into()),
            ..AdmitRequest::default()
        }),
    });
    let Request::Admit(req) = through_the_wire(&admit) else {
        panic!("an admit decodes as one");
    };
    assert_eq!(req.service, "x".repeat(24));
    for short in [
        Some(&req.service),
        req.agent.as_ref(),
        req.lease.as_ref(),
        req.route.as_ref(),
    ] {
        let short = short.expect("given");
        assert!(!short.is_heap_allocated(), "{short:?} is on the heap");
    }
    let model = req.model.expect("given");
    assert_eq!(model, long);
    assert!(model.is_heap_allocated());

    let report = ClientFrame::Request(Envelope {
        id: 2,
        request: Request::Report(ReportRequest {
            service: Some("openai".into()),
            idempotency_key: Some("reservation:4294967297".into()),
            agent: Some("bench-1".into()),
            ..ReportRequest::default()
        }),
    });
    let Request::Report(req) = through_the_wire(&report) else {
        panic!("a report decodes as one");
    };
    for short in [&req.service, &req.idempotency_key, &req.agent] {
        let short = short.as_ref().expect("given");
        assert!(!short.is_heap_allocated(), "{short:?} is on the heap");
    }
}

/// The votes of a reply (a `SmallVec` of votes with `Text` reasons) are the
/// bytes a `Vec` of votes with `String` texts was, and the usual two votes with
/// their formatted reasons decode in place.
#[test]
fn votes_encode_as_a_vec_of_strings_and_two_decode_in_place() {
    #[derive(Serialize)]
    struct StringVote {
        guard: GuardKind,
        rule: String,
        allow: bool,
        shadow: bool,
        reason: String,
        retry_after_ms: Option<u64>,
    }
    let texts = [
        ("open", "1 of burst 100000000 taken"),
        ("openai", "closed"),
        ("daily", &"long ".repeat(20)),
    ];
    for n in 0..=texts.len() {
        let votes: Votes = texts[..n]
            .iter()
            .map(|&(rule, reason)| Vote {
                guard: GuardKind::Rate,
                rule: rule.into(),
                allow: true,
                shadow: false,
                reason: reason.into(),
                retry_after_ms: Some(3),
            })
            .collect();
        let strings: Vec<StringVote> = texts[..n]
            .iter()
            .map(|&(rule, reason)| StringVote {
                guard: GuardKind::Rate,
                rule: rule.into(),
                allow: true,
                shadow: false,
                reason: reason.into(),
                retry_after_ms: Some(3),
            })
            .collect();
        let bytes = encode(&votes).unwrap();
        assert_eq!(bytes, encode(&strings).unwrap(), "{n} votes");
        let back: Votes = decode(&bytes).unwrap();
        assert_eq!(back, votes);
        assert_eq!(back.spilled(), n > 2, "{n} votes");
        for vote in back.iter().take(2) {
            assert!(!vote.reason.is_heap_allocated(), "{:?}", vote.reason);
        }
    }
}

#[test]
fn an_admit_writer_dropped_or_too_large_leaves_the_buffer_alone() {
    use crate::hot::{AdmitHead, AdmitWriter};
    let head = AdmitHead {
        allowed: true,
        reservation: Some(1),
        guard: None,
        rule: None,
        reason: None,
        retry_after_ms: None,
        votes: 0,
    };
    let mut buf = BytesMut::from(&b"queued"[..]);
    drop(AdmitWriter::begin(&mut buf, 7, &head));
    assert_eq!(&buf[..], b"queued");
    let huge = "x".repeat(crate::MAX_FRAME_LEN);
    let err = AdmitWriter::begin(&mut buf, 7, &head)
        .finish(None, Some(&huge))
        .unwrap_err();
    assert!(matches!(*err, bincode::ErrorKind::SizeLimit), "{err}");
    assert_eq!(&buf[..], b"queued");
}

/// Every byte of an admit and of a report (all options present, then none)
/// replaced by every value: whatever the hand-written decoder takes, serde
/// takes and reads alike. The corrupting proptest samples positions and
/// values; this walks them all, so each check of the decoder (a tag, a bool,
/// an outcome, the frame's variant, a payload handed to serde) has a byte
/// that fails without it.
#[test]
fn every_single_byte_change_reads_as_serde_reads_it() {
    let full_admit = AdmitRequest {
        agent: Some("planner".into()),
        service: "openai".into(),
        units: 3,
        cost: Some(0.25),
        model: Some("gpt-4o".into()),
        input_units: 10,
        output_units: 20,
        payload: None,
        attempt: 2,
        wait_ms: Some(50),
        lease: Some("repo".into()),
        route: Some("chat".into()),
    };
    let full_report = ReportRequest {
        reservation: Some(42),
        service: Some("openai".into()),
        outcome: Outcome::Failure,
        units: Some(3),
        latency_ms: Some(120),
        cost: Some(0.5),
        input_units: Some(10),
        output_units: Some(20),
        idempotency_key: Some("k-1".into()),
        agent: Some("planner".into()),
        retryable: true,
        attempt: Some(2),
        retry_after_ms: Some(1_000),
    };
    let requests = [
        Request::Admit(full_admit),
        Request::Admit(AdmitRequest {
            service: "s".into(),
            ..AdmitRequest::default()
        }),
        Request::Report(full_report),
        Request::Report(ReportRequest::default()),
    ];
    for request in requests {
        let body = encode(&ClientFrame::Request(Envelope { id: 7, request })).unwrap();
        for at in 0..body.len() {
            for value in 0..=u8::MAX {
                let mut changed = body.clone();
                changed[at] = value;
                if let Some(hot) = crate::hot::decode_request(&changed) {
                    let serde = decode::<ClientFrame>(&changed).unwrap_or_else(|err| {
                        panic!("byte {at} set to {value}: taken by hand ({hot:?}), refused by serde ({err})")
                    });
                    // Compared by their encodings: a NaN cost is not equal to itself.
                    assert_eq!(
                        encode(&hot).unwrap(),
                        encode(&serde).unwrap(),
                        "byte {at} set to {value}"
                    );
                }
            }
        }
    }
}
