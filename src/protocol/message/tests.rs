//! Property tests: every message round-trips through the real codec (length prefix
//! included), and the wire constants agree with the enums.

use bytes::BytesMut;
use proptest::prelude::*;
use tokio_util::codec::{Decoder, Encoder};

use super::*;
use crate::protocol::frame::{decode, decode_client_frame, encode, length_codec};

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
}

#[test]
fn kind_count_matches_the_enum() {
    let last = encode(&Request::Reload).unwrap();
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
    let body = encode(&ClientFrame::Hello(crate::protocol::Hello {
        version: 1,
        client: "c".into(),
        agent: "ab".into(),
    }))
    .unwrap();
    let expected: Vec<u8> = [
        &0u32.to_le_bytes()[..], // ClientFrame::Hello
        &1u16.to_le_bytes()[..], // version
        &1u64.to_le_bytes()[..], // client length
        b"c",
        &2u64.to_le_bytes()[..], // agent length
        b"ab",
    ]
    .concat();
    assert_eq!(body, expected);
    assert_eq!(
        crate::protocol::handshake::peek_hello_version(&body),
        Some(1)
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
