//! `Quotas`: the counters of the current windows.
//!
//! The engine copies keys and counts under its lock and stops at [`MAX_LISTED`];
//! sorting and naming happen here, after the lock is released. A longer listing
//! would not fit in a reply frame (1 MiB, some 50 bytes a counter) and is refused
//! with a message pointing at the per-quota gauge instead.

use super::error;
use crate::admission::Moment;
use crate::guard::display_key;
use crate::protocol::{ErrorCode, QuotaInfo, QuotasReply, QuotasRequest, Response};
use crate::state::State;

/// Most counters one `quotas` reply lists.
pub const MAX_LISTED: usize = 10_000;

pub(super) fn apply(state: &State, req: QuotasRequest, now: Moment) -> Response {
    let listing = match state
        .admission()
        .quota_counters(req.quota.as_deref(), now, MAX_LISTED)
    {
        Ok(listing) => listing,
        Err(err) => return err.into(),
    };
    if !listing.complete {
        let which = req.quota.as_deref().map_or_else(
            || "the quotas hold".to_owned(),
            |q| format!("quota {q:?} holds"),
        );
        return error(
            ErrorCode::FrameTooLarge,
            format!("{which} more than {MAX_LISTED} counters in their current windows, more than one reply lists; ask for one quota (quota = NAME), or read automation_framework_quota_max_usage_ratio on /metrics for each quota's highest usage"),
        );
    }
    let mut quotas = Vec::new();
    for quota in listing.quotas {
        let window = quota.window.window_name();
        let resets_in = quota.window.remaining(now.unix);
        let mut counters = quota.counters;
        counters.sort_unstable();
        quotas.extend(counters.into_iter().map(|(key, used)| QuotaInfo {
            quota: quota.name.clone(),
            key: display_key(&key),
            used,
            limit: quota.limit,
            window: window.clone(),
            resets_in_s: resets_in,
        }));
    }
    Response::Quotas(QuotasReply { quotas })
}
