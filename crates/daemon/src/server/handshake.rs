//! The handshake's decision, apart from the socket: from the first frame a client
//! sent and the peer the kernel reported, either the `Hello` to open a session with,
//! or the refusal to send before closing. Pure, so it is tested table-driven and
//! fuzzed (`fuzz/fuzz_targets/handshake.rs`); `opening.rs` does the reading, the
//! timeout, the writing and the logging.
//!
//! The peer was already let in by `Policy::check_connect` before any byte was read;
//! what is decided here is what the client says: its protocol version, its agent
//! name, and whether its uid may claim that name (`[[agents]]`).

use crate::access::Policy;
use crate::connection::Peer;
use crate::names::{check_name, shown};
use crate::protocol::{
    decode_client_frame, ClientFrame, DecodeError, ErrorCode, Hello, PROTOCOL_VERSION,
};

/// Why a handshake (or a read) was refused: the error frame to send before closing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

/// Decides on the first frame of a connection, already decoded.
///
/// # Errors
/// A [`Refusal`]: not a `Hello`, another protocol version, a bad or reserved agent
/// name, a bad client name, or a frame that is not a message at all.
pub fn accept(
    first: Result<ClientFrame, DecodeError>,
    peer: &Peer,
    policy: &Policy,
) -> Result<Hello, Refusal> {
    let hello = match first {
        Ok(ClientFrame::Hello(hello)) => hello,
        Ok(_) => {
            return Err(Refusal::new(
                ErrorCode::HandshakeRequired,
                "the first frame must be Hello (protocol handshake)",
            ))
        }
        Err(err) => return Err(decode_refusal(&err)),
    };
    if hello.version != PROTOCOL_VERSION {
        return Err(version_mismatch(hello.version));
    }
    if let Err(err) = check_name(&hello.agent) {
        return Err(Refusal::new(
            ErrorCode::InvalidArgument,
            format!("agent name {} {err}", shown(&hello.agent)),
        ));
    }
    // The client name only reaches logs, but logs are read by people and parsers.
    if !hello.client.is_empty() {
        if let Err(err) = check_name(&hello.client) {
            return Err(Refusal::new(
                ErrorCode::InvalidArgument,
                format!("client name {} {err}", shown(&hello.client)),
            ));
        }
    }
    policy
        .check_agent(peer, &hello.agent)
        .map_err(|denied| Refusal::new(ErrorCode::NotPermitted, denied.to_string()))?;
    Ok(hello)
}

/// [`accept`] on the raw body of the first frame.
///
/// # Errors
/// As [`accept`].
pub fn accept_bytes(body: &[u8], peer: &Peer, policy: &Policy) -> Result<Hello, Refusal> {
    accept(decode_client_frame(body), peer, policy)
}

/// The refusal for a frame body that did not decode.
pub fn decode_refusal(err: &DecodeError) -> Refusal {
    match err {
        DecodeError::VersionMismatch { version } => version_mismatch(*version),
        DecodeError::UnknownRequest { .. } | DecodeError::Malformed { .. } => Refusal::new(
            ErrorCode::Malformed,
            format!("{err}; the frame is not a valid protocol message"),
        ),
    }
}

fn version_mismatch(version: u16) -> Refusal {
    Refusal::new(
        ErrorCode::VersionMismatch,
        format!(
            "client speaks protocol version {version}, this daemon ({}) speaks version {PROTOCOL_VERSION}; use a client and daemon of matching versions",
            env!("CARGO_PKG_VERSION")
        ),
    )
}

// === impl Refusal ===

impl Refusal {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::protocol::{encode, Envelope, Request};

    fn policy() -> Policy {
        let config = Config::from_toml(
            "[access]\nagent_uids = [1001, 1002]\n[[agents]]\nname = \"planner\"\nuids = [1001]\n",
        )
        .expect("valid");
        Policy::new(&config.access, &config.agents, 0)
    }

    fn hello(version: u16, client: &str, agent: &str) -> Vec<u8> {
        encode(&ClientFrame::Hello(Hello {
            version,
            client: client.into(),
            agent: agent.into(),
        }))
        .expect("encodes")
    }

    /// One table: first frame, peer uid, expected outcome (the agent, or the code).
    #[test]
    fn decisions() {
        let request = encode(&ClientFrame::Request(Envelope {
            id: 1,
            request: Request::Ping,
        }))
        .expect("encodes");
        let cases: Vec<(Vec<u8>, u32, Result<&str, ErrorCode>)> = vec![
            (hello(PROTOCOL_VERSION, "c", "planner"), 1001, Ok("planner")),
            (hello(PROTOCOL_VERSION, "", "free"), 1002, Ok("free")),
            (
                hello(PROTOCOL_VERSION, "c", "planner"),
                1002,
                Err(ErrorCode::NotPermitted),
            ),
            (
                hello(PROTOCOL_VERSION, "c", ""),
                1001,
                Err(ErrorCode::InvalidArgument),
            ),
            (
                hello(PROTOCOL_VERSION, "c\n", "a"),
                1001,
                Err(ErrorCode::InvalidArgument),
            ),
            (
                hello(PROTOCOL_VERSION, &"c".repeat(129), "a"),
                1001,
                Err(ErrorCode::InvalidArgument),
            ),
            (
                hello(PROTOCOL_VERSION + 1, "c", "a"),
                1001,
                Err(ErrorCode::VersionMismatch),
            ),
            (request, 1001, Err(ErrorCode::HandshakeRequired)),
            (vec![0xde, 0xad], 1001, Err(ErrorCode::Malformed)),
        ];
        let policy = policy();
        for (body, uid, expected) in cases {
            let got = accept_bytes(&body, &Peer::of_uid(uid), &policy);
            let got = got.as_ref().map(|h| h.agent.as_str()).map_err(|r| r.code);
            assert_eq!(got, expected, "uid {uid}, body {body:?}");
        }
    }

    #[test]
    fn an_impersonation_refusal_names_the_uid_and_the_rule() {
        let refusal = accept_bytes(
            &hello(PROTOCOL_VERSION, "c", "planner"),
            &Peer::of_uid(1002),
            &policy(),
        )
        .unwrap_err();
        assert!(refusal.message.contains("uid 1002"), "{}", refusal.message);
        assert!(refusal.message.contains("agents[0]"), "{}", refusal.message);
    }
}
