//! The access policy against the real daemon: who may connect, which agent names a
//! uid may claim, who may run admin operations. The tests that need a second uid run
//! the CLI under `setpriv` and need root (CI runs as root); without root they say
//! they are skipped and why.

use automation_framework::client::ClientError;
use automation_framework::protocol::{AdmitRequest, ErrorCode, Request, Response};

use crate::util::Daemon;

/// Reserves "planner" for uid 1001, which is not the test's uid (root in CI, or
/// whoever runs the tests).
const PLANNER_IS_1001: &str = "[[agents]]\nname = \"planner\"\nuids = [1001]\n";

#[tokio::test]
async fn a_bound_agent_name_is_refused_at_the_handshake() {
    let daemon = Daemon::start(PLANNER_IS_1001);
    let err = automation_framework::client::Client::connect(&daemon.socket, "planner", "t")
        .await
        .err()
        .expect("the handshake is refused");
    let ClientError::Closed(reply) = err else {
        panic!("expected an error frame, got {err}");
    };
    assert_eq!(reply.code, ErrorCode::NotPermitted);
    let uid = nix::unistd::geteuid().as_raw();
    assert!(
        reply.message.contains(&format!("uid {uid}")),
        "{}",
        reply.message
    );
    assert!(reply.message.contains("agents[0]"), "{}", reply.message);
    let log = daemon.log();
    assert!(
        log.contains(&format!("refusing connection from uid {uid} gid ")) && log.contains(" pid "),
        "the refusal is logged with uid, gid and pid:\n{log}"
    );
    // Any other name is free.
    daemon.client("helper").await.ping().await.unwrap();
}

#[tokio::test]
async fn a_bound_agent_name_is_refused_per_request_and_the_session_goes_on() {
    let daemon = Daemon::start(PLANNER_IS_1001);
    let mut client = daemon.client("helper").await;
    let response = client
        .call(Request::Admit(AdmitRequest {
            agent: Some("planner".into()),
            service: "openai".into(),
            units: 1,
        }))
        .await
        .unwrap();
    match response {
        Response::Error(err) => {
            assert_eq!(err.code, ErrorCode::NotPermitted);
            assert!(err.message.contains("agents[0]"), "{}", err.message);
        }
        other => panic!("expected NotPermitted, got {other:?}"),
    }
    // The same request for the session's own (free) agent name is admitted.
    let reply = client
        .admit(AdmitRequest {
            agent: Some("helper".into()),
            service: "openai".into(),
            units: 1,
        })
        .await
        .unwrap();
    assert!(reply.allowed, "{reply:?}");
}
