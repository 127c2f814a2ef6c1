//! `Quotas`: the counters of the current windows.

use crate::admission::Moment;
use crate::protocol::{QuotaInfo, QuotasReply, QuotasRequest, Response};
use crate::state::State;

pub(super) fn apply(state: &State, req: QuotasRequest, now: Moment) -> Response {
    match state.admission().quotas(req.quota.as_deref(), now) {
        Ok(views) => Response::Quotas(QuotasReply {
            quotas: views
                .into_iter()
                .map(|v| QuotaInfo {
                    quota: v.quota,
                    key: v.key,
                    used: v.used,
                    limit: v.limit,
                    window: v.window,
                    resets_in_s: v.resets_in,
                })
                .collect(),
        }),
        Err(err) => err.into(),
    }
}
