//! What each fuzz target checks, shared by the libFuzzer targets
//! (`fuzz_targets/*.rs`) and the regression test that replays the committed inputs
//! on every `cargo test` (`tests/fuzzed.rs`), so a crash found once is checked
//! forever with the same code. Public API only.

#![allow(dead_code)]

use std::sync::OnceLock;

use automation_framework::access::Policy;
use automation_framework::clock::SharedClock;
use automation_framework::config::Config;
use automation_framework::connection::Peer;
use automation_framework::names::check_name;
use automation_framework::protocol::{
    decode, decode_client_frame, decode_request, encode, length_codec, ClientFrame, ErrorCode,
    FrameCodec, PROTOCOL_VERSION,
};
use automation_framework::server::handshake::accept_bytes;
use automation_framework::state::State;
use bytes::BytesMut;
use tokio_util::codec::Decoder;

/// The daemon's read path on arbitrary bytes: its frame codec splits the stream
/// into frames (the 1 MiB limit checked before allocation), each frame is
/// decoded as a `ClientFrame`. Nothing may panic, the daemon's codec must split
/// exactly as the clients' (`length_codec`) does, frames and where it fails,
/// and whatever decodes must re-encode to exactly the same bytes (the wire
/// format has one encoding per message, so a daemon and a client can never
/// disagree about what was sent).
pub fn decode_client_frame_target(data: &[u8]) {
    check_body(data);
    let mut daemon = FrameCodec::new();
    let mut client = length_codec();
    let mut ours = BytesMut::from(data);
    let mut theirs = BytesMut::from(data);
    loop {
        let (frame, same) = (daemon.decode(&mut ours), client.decode(&mut theirs));
        match (frame, same) {
            (Ok(Some(frame)), Ok(Some(same))) => {
                assert_eq!(frame, same, "both codecs take the same frame");
                check_body(&frame);
            }
            (Ok(None), Ok(None)) | (Err(_), Err(_)) => break,
            (frame, same) => panic!("the codecs disagree: {frame:?} against {same:?}"),
        }
    }
}

fn check_body(body: &[u8]) {
    if let Ok(frame) = decode_client_frame(body) {
        let again = encode(&frame).expect("a decoded frame re-encodes");
        assert_eq!(again, body, "one encoding per message");
    }
    // The hand-written decoder of admits and reports takes nothing serde
    // refuses, and reads what it takes as serde does.
    // Compared by their encodings: a NaN cost reads alike from both (the
    // daemon refuses it later, as not a finite amount) but is not equal to
    // itself.
    if let Some(hot) = decode_request(body) {
        let serde = decode::<ClientFrame>(body).expect("serde takes what the hot decoder takes");
        assert_eq!(
            encode(&hot).expect("re-encodes"),
            encode(&serde).expect("re-encodes"),
            "the hot decoder reads as serde does: {hot:?} against {serde:?}"
        );
    }
}

const POLICY: &str = "\
[access]
agent_uids = [1001, 1002]
agent_gids = [500]
[[agents]]
name = \"planner\"
uids = [1001]
[[agents]]
name = \"batch\"
gids = [700]
";

fn policy() -> &'static Policy {
    static POLICY_CELL: OnceLock<Policy> = OnceLock::new();
    POLICY_CELL.get_or_init(|| {
        let config = Config::from_toml(POLICY).expect("the fuzz policy is valid");
        Policy::new(&config.access, &config.agents, 0)
    })
}

/// The handshake's decision (`server::handshake::accept_bytes`) on an arbitrary
/// first frame from one of a few peers (the first byte picks it): nothing may panic,
/// an accepted `Hello` must satisfy every rule (version, names, `[[agents]]`
/// binding), and a refusal must carry a handshake error code and a message.
pub fn handshake_target(data: &[u8]) {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let peer = |uid: u32, gid: u32, groups: Vec<u32>| Peer {
        uid,
        gid,
        pid: 1,
        groups,
    };
    let peer = match pick % 5 {
        0 => peer(1001, 1001, vec![]),
        1 => peer(1002, 1002, vec![700]),
        2 => peer(1003, 500, vec![]),
        3 => peer(0, 0, vec![0]),
        _ => peer(u32::from(pick), 9, vec![u32::from(pick), 700]),
    };
    match accept_bytes(body, &peer, policy()) {
        Ok(hello) => {
            assert_eq!(hello.version, PROTOCOL_VERSION);
            assert!(check_name(&hello.agent).is_ok());
            assert!(hello.client.is_empty() || check_name(&hello.client).is_ok());
            assert!(policy().check_agent(&peer, &hello.agent).is_ok());
        }
        Err(refusal) => {
            assert!(matches!(
                refusal.code,
                ErrorCode::HandshakeRequired
                    | ErrorCode::VersionMismatch
                    | ErrorCode::InvalidArgument
                    | ErrorCode::NotPermitted
                    | ErrorCode::Malformed
            ));
            assert!(!refusal.message.is_empty());
        }
    }
}

/// The config parser on arbitrary text: `Config::from_toml` must accept or refuse
/// with an error, never panic, and a config it accepts must build the daemon's state
/// (guards, access policy) without failing: validation is the only gate.
pub fn config_target(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_toml(text) {
        Ok(config) => {
            // A ledger that refuses writes: building the state must not touch disk.
            let store = automation_framework::store::Store::unavailable(
                std::path::Path::new("/nonexistent/ledger.sqlite3"),
                "fuzzing".into(),
            );
            let snapshot = automation_framework::store::Snapshot::default();
            State::new(config, SharedClock::system(), store, &snapshot)
                .expect("a validated config builds");
        }
        Err(err) => assert!(!err.to_string().is_empty()),
    }
}
