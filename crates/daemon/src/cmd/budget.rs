//! `Budget`: spent, reserved, limit and remaining of every budget (or of those
//! that apply to one agent).

use super::error;
use crate::admission::Moment;
use crate::names::{check_name, shown};
use crate::protocol::{BudgetInfo, BudgetReply, BudgetRequest, ErrorCode, Response};
use crate::state::State;

pub(super) fn apply(state: &State, req: BudgetRequest, now: Moment) -> Response {
    if let Some(agent) = &req.agent {
        if let Err(e) = check_name(agent) {
            return error(
                ErrorCode::InvalidArgument,
                format!("agent name {} {e}", shown(agent)),
            );
        }
    }
    let views = state.admission().budgets(req.agent.as_deref(), now);
    // Figures from memory while the ledger fails (or a balance in it is
    // unreadable) would read as the truth; they are the last known at best.
    let unknown = match (state.store().health(), state.admission().unknown_balances()) {
        (Some(failure), _) => Some(format!("the ledger is failing ({failure})")),
        (None, Some(unreadable)) => Some(format!("unreadable in the ledger: {unreadable}")),
        (None, None) => None,
    };
    if let Some(why) = unknown {
        let last: Vec<String> = views
            .iter()
            .map(|v| format!("{} {} spent of {}", v.name, v.spent, v.limit))
            .collect();
        return error(
            ErrorCode::Unavailable,
            format!(
                "balances are unknown: {why}; budget-governed calls are refused until it recovers. Last known: {}",
                last.join(", ")
            ),
        );
    }
    let budgets: Vec<BudgetInfo> = views
        .into_iter()
        .map(|v| BudgetInfo {
            name: v.name,
            spent: v.spent.dollars(),
            reserved: v.reserved.dollars(),
            limit: v.limit.dollars(),
            remaining: v.remaining.dollars(),
            orphaned: v.orphaned,
            reset: v.reset,
            resets_in_s: v.resets_in,
        })
        .collect();
    // The most specific budget asked for: the agent's own, else the global one.
    let own = req.agent.as_ref().map(|a| format!("agent:{a}"));
    let headline = budgets
        .iter()
        .find(|b| Some(&b.name) == own.as_ref())
        .or_else(|| budgets.iter().find(|b| b.name == "global"));
    let (spent, reserved, limit, remaining) = headline.map_or((0.0, 0.0, 0.0, 0.0), |b| {
        (b.spent, b.reserved, b.limit, b.remaining)
    });
    Response::Budget(BudgetReply {
        spent,
        reserved,
        limit,
        remaining,
        budgets,
    })
}
