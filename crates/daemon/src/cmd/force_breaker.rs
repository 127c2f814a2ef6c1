//! `ForceBreaker`: the operator's override of one service's breaker (admin only;
//! `dispatch` has checked the peer). Logged with who did it, because it changes what
//! every agent on the host is allowed to do.

use std::time::Duration;

use super::breakers::breaker_info;
use super::error;
use crate::guard::breaker::Force;
use crate::names::{check_name, shown};
use crate::protocol::ErrorCode;
use crate::protocol::{BreakerForce, BreakerState, ErrorReply, ForceBreakerRequest, Response};
use crate::state::{Session, State};

pub(super) fn apply(
    state: &State,
    session: &Session,
    req: ForceBreakerRequest,
    now: Duration,
) -> Response {
    if let Err(err) = check_name(&req.service) {
        return error(
            ErrorCode::InvalidArgument,
            format!("service name {} {err}", shown(&req.service)),
        );
    }
    let force = match req.force {
        BreakerForce::Auto => None,
        BreakerForce::Open => Some(Force::Open),
        BreakerForce::Closed => Some(Force::Closed),
        BreakerForce::Disabled => Some(Force::Disabled),
    };
    let (snapshot, transition) = match state.admission().force_breaker(&req.service, force, now) {
        Ok(done) => done,
        Err(err) => return Response::Error(ErrorReply::from(err)),
    };
    let peer = &session.peer;
    let (from, to) = transition.map_or((snapshot.phase, snapshot.phase), |t| (t.from, t.to));
    let (from, to) = (BreakerState::from(from), BreakerState::from(to));
    log::warn!(
        service = req.service.as_str(), breaker_from = format!("{from:?}"), breaker_to = format!("{to:?}"), force = format!("{:?}", req.force),
        peer_uid = peer.uid, peer_gid = peer.gid, peer_pid = peer.pid;
        "breaker of {:?} forced {:?} by uid {} pid {}: {from:?} -> {to:?}",
        req.service, req.force, peer.uid, peer.pid
    );
    Response::ForceBreaker(breaker_info(req.service, snapshot))
}

#[cfg(test)]
mod tests {
    use crate::clock::SharedClock;
    use crate::cmd::dispatch;
    use crate::config::Config;
    use crate::connection::Peer;
    use crate::protocol::{
        BreakerForce, BreakerState, ErrorCode, ForceBreakerRequest, Request, Response,
    };
    use crate::state::State;

    fn force(force: BreakerForce) -> Request {
        Request::ForceBreaker(ForceBreakerRequest {
            service: "search".into(),
            force,
        })
    }

    #[test]
    fn only_admins_may_force_a_breaker() {
        let config = Config::from_toml("[access]\nagent_uids = [1001]\nadmin_uids = [1002]\n")
            .expect("valid");
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, snapshot) = crate::store::Store::open(dir.path()).expect("ledger");
        let state = State::new(config, SharedClock::system(), store, &snapshot).expect("state");
        let dispatch =
            |state: &State, session: &crate::state::Session, request: Request| match dispatch(
                state, session, request,
            ) {
                Ok(response) => response,
                Err(_) => panic!("forcing a breaker needs no ledger write"),
            };
        let agent = state.open_session("a".into(), Peer::of_uid(1001));
        match dispatch(&state, &agent, force(BreakerForce::Open)) {
            Response::Error(err) => {
                assert_eq!(err.code, ErrorCode::NotPermitted);
                assert!(
                    err.message
                        .starts_with("uid 1001 (gid 1001) may not run admin operations"),
                    "{}",
                    err.message
                );
            }
            other => panic!("expected NotPermitted, got {other:?}"),
        }
        // Nothing changed, and the refusal was counted.
        assert!(state.admission().breakers(None, state.now()).is_empty());
        assert_eq!(state.counters().get(crate::state::Limit::AdminOnly), 1);

        let admin = state.open_session("ops".into(), Peer::of_uid(1002));
        match dispatch(&state, &admin, force(BreakerForce::Open)) {
            Response::ForceBreaker(info) => assert_eq!(info.state, BreakerState::ForcedOpen),
            other => panic!("expected the breaker, got {other:?}"),
        }
        match dispatch(&state, &admin, force(BreakerForce::Auto)) {
            Response::ForceBreaker(info) => assert_eq!(info.state, BreakerState::Closed),
            other => panic!("expected the breaker, got {other:?}"),
        }
    }
}
