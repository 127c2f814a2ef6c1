//! `Ping`: is the daemon there, and who am I to it?

use crate::protocol::{Pong, Response};
use crate::state::{Session, State};

pub(super) fn apply(_state: &State, session: &Session) -> Response {
    Response::Pong(Pong {
        ok: true,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        session: session.id,
        agent: session.agent.to_string(),
    })
}
