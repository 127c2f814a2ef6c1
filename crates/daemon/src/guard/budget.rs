//! Money budgets: a limit per period, spending that is a fact, and reservations
//! that hold an admitted call's estimate until its outcome is known.
//!
//! The check is `spent + reserved + estimate <= limit`, so concurrent admissions can
//! never together pass the limit; once `spent` alone reaches the limit (a call cost
//! more than estimated) nothing more is admitted until the period ends.
//!
//! A budget's period only moves forward. When the wall clock steps back (NTP, an
//! operator, a VM restored from a snapshot) the budget stays in the newest period
//! it has seen and keeps filing spending there: going back to an earlier period
//! would start it over from nothing (the old behaviour, which let a step back
//! and forth double a limit), and its real balance is in the ledger, not in
//! memory. The step is reported ([`Roll::SteppedBack`]) so the engine can log and
//! count it. A start after a step back resumes the newest period the ledger holds
//! ([`Budget::restore`]). The price: if the clock once ran ahead, the budget stays
//! in that future period until real time reaches it (an admin `reset` starts it
//! over).

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::period::Period;
use crate::money::Usd;

/// A validated budget from config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetSpec {
    /// `global`, `agent:NAME` or `service:NAME`.
    pub name: String,
    pub limit: Usd,
    pub reset: Period,
}

/// One budget's state in its current period.
#[derive(Debug, Clone)]
pub struct Budget {
    spec: BudgetSpec,
    /// The budget's name, shared with votes and denials.
    name: Arc<str>,
    period_start: u64,
    spent: Usd,
    reserved: Usd,
    /// The clock is in an earlier period than `period_start` (reported once).
    behind: bool,
    /// Why the ledger's balance of this period is not known (unreadable): the
    /// budget refuses every call until an admin resets it.
    unknown: Option<Arc<str>>,
}

/// What [`Budget::roll`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Roll {
    /// Still the same period.
    Same,
    /// A new period began: spending starts over.
    Next,
    /// The clock is now in an earlier period (`now_start`) than the budget's:
    /// it stays where it is. Reported once per step.
    SteppedBack { now_start: u64 },
}

/// Why a budget refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BudgetDenial {
    #[error("budget {name} is spent: {spent} of {limit}")]
    Exhausted {
        name: Arc<str>,
        spent: Usd,
        limit: Usd,
        retry_after: Option<Duration>,
    },
    #[error(
        "budget {name} has {remaining} left (of {limit}), the call is estimated at {estimate}"
    )]
    WouldExceed {
        name: Arc<str>,
        estimate: Usd,
        remaining: Usd,
        limit: Usd,
        retry_after: Option<Duration>,
    },
    #[error("budget {name}'s balance in the ledger is unknown ({why}); its calls are refused until an admin resets the budget")]
    Unknown { name: Arc<str>, why: Arc<str> },
}

// === impl Budget ===

impl Budget {
    /// A budget in the period containing `now` (Unix seconds), with what the ledger
    /// says was already spent in that period.
    pub fn new(spec: BudgetSpec, now: u64, spent: Usd) -> Budget {
        Budget {
            period_start: spec.reset.start(now),
            name: Arc::from(spec.name.as_str()),
            spec,
            spent,
            reserved: Usd::ZERO,
            behind: false,
            unknown: None,
        }
    }

    /// The budget as the ledger left it: in the newest of the period containing
    /// `now` and the periods the ledger holds balances for (a start after the
    /// clock stepped back resumes the newest period, as a running daemon would
    /// have stayed in it), with that period's balance. `balances` are this
    /// budget's (period start, balance) rows, `unreadable` its periods whose
    /// balance is not a valid amount. Rows of periods that are not boundaries of
    /// this budget's reset (left by another reset setting) are ignored.
    pub fn restore(
        spec: BudgetSpec,
        now: u64,
        balances: &[(u64, Usd)],
        unreadable: &[(u64, String)],
    ) -> Budget {
        let reset = spec.reset;
        let newest = reset.newest_start(
            now,
            balances
                .iter()
                .map(|(start, _)| *start)
                .chain(unreadable.iter().map(|(start, _)| *start)),
        );
        let spent = balances
            .iter()
            .filter(|(start, _)| *start == newest)
            .fold(Usd::ZERO, |sum, (_, spent)| sum + *spent);
        let mut budget = Budget::new(spec, now, spent);
        budget.period_start = newest;
        budget.behind = newest > reset.start(now);
        budget.unknown = unreadable
            .iter()
            .find(|(start, _)| *start == newest)
            .map(|(_, why)| Arc::from(why.as_str()));
        budget
    }

    pub fn spec(&self) -> &BudgetSpec {
        &self.spec
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Moves forward to the period containing `now`; spending starts over at a
    /// boundary. Reservations carry over: they are charged when they settle. A
    /// `now` in an earlier period than the budget's (the clock stepped back)
    /// changes nothing: the budget stays in its newest period.
    pub fn roll(&mut self, now: u64) -> Roll {
        let start = self.spec.reset.start(now);
        if start > self.period_start {
            self.period_start = start;
            self.spent = Usd::ZERO;
            self.behind = false;
            self.unknown = None;
            return Roll::Next;
        }
        if start == self.period_start {
            self.behind = false;
            return Roll::Same;
        }
        if self.behind {
            return Roll::Same;
        }
        self.behind = true;
        Roll::SteppedBack { now_start: start }
    }

    /// Why this period's balance is unknown, if it is.
    pub fn unknown(&self) -> Option<&str> {
        self.unknown.as_deref()
    }

    pub fn period_start(&self) -> u64 {
        self.period_start
    }

    /// May `estimate` be reserved now? Call [`Budget::roll`] first.
    ///
    /// # Errors
    /// A [`BudgetDenial`]; `retry_after` is the time to the next reset, if any.
    pub fn check(&self, estimate: Usd, now: u64) -> Result<(), BudgetDenial> {
        let limit = self.spec.limit;
        if let Some(why) = &self.unknown {
            return Err(BudgetDenial::Unknown {
                name: Arc::clone(&self.name),
                why: Arc::clone(why),
            });
        }
        // Until the end of the budget's period, which is later than the end of
        // `now`'s period when the clock stepped back.
        let retry_after = self
            .spec
            .reset
            .end(self.period_start)
            .map(|end| Duration::from_secs(end.saturating_sub(now)));
        if self.spent >= limit {
            return Err(BudgetDenial::Exhausted {
                name: Arc::clone(&self.name),
                spent: self.spent,
                limit,
                retry_after,
            });
        }
        if self.spent + self.reserved + estimate > limit {
            return Err(BudgetDenial::WouldExceed {
                name: Arc::clone(&self.name),
                estimate,
                remaining: self.remaining(),
                limit,
                retry_after,
            });
        }
        Ok(())
    }

    pub fn reserve(&mut self, amount: Usd) {
        self.reserved += amount;
    }

    pub fn release(&mut self, amount: Usd) {
        self.reserved -= amount;
    }

    /// Records spending filed under the period starting at `period_start`; spending
    /// of another period (a refund of last month's charge) does not touch this one.
    pub fn charge(&mut self, amount: Usd, period_start: u64) {
        if period_start == self.period_start {
            self.spent += amount;
        }
    }

    pub fn refund(&mut self, amount: Usd, period_start: u64) {
        if period_start == self.period_start {
            self.spent -= amount;
        }
    }

    pub fn set_limit(&mut self, limit: Usd) {
        self.spec.limit = limit;
    }

    /// Starts the current period over (the ledger's balance is 0 now, readable
    /// again if it was not).
    pub fn reset_spent(&mut self) {
        self.spent = Usd::ZERO;
        self.unknown = None;
    }

    pub fn spent(&self) -> Usd {
        self.spent
    }

    pub fn reserved(&self) -> Usd {
        self.reserved
    }

    pub fn limit(&self) -> Usd {
        self.spec.limit
    }

    pub fn remaining(&self) -> Usd {
        self.spec.limit - self.spent - self.reserved
    }

    /// The highest alert threshold (percent of the limit) that `spent` reached,
    /// among `thresholds`.
    pub fn threshold_reached(&self, thresholds: &[u8]) -> Option<u8> {
        let limit = self.spec.limit.micros();
        if limit == 0 {
            return thresholds.iter().copied().max();
        }
        thresholds
            .iter()
            .copied()
            .filter(|t| i128::from(self.spent.micros()) * 100 >= i128::from(limit) * i128::from(*t))
            .max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MON: u64 = 1_795_392_000;

    fn usd(dollars: f64) -> Usd {
        Usd::from_dollars(dollars).unwrap()
    }

    fn daily(limit: f64) -> Budget {
        Budget::new(
            BudgetSpec {
                name: "global".into(),
                limit: usd(limit),
                reset: Period::Daily,
            },
            MON + 3600,
            Usd::ZERO,
        )
    }

    #[test]
    fn reservations_count_against_the_limit() {
        let mut b = daily(10.0);
        for _ in 0..10 {
            b.check(usd(1.0), MON).unwrap();
            b.reserve(usd(1.0));
        }
        assert!(matches!(
            b.check(usd(1.0), MON),
            Err(BudgetDenial::WouldExceed { .. })
        ));
        assert!(b.check(Usd::ZERO, MON).is_ok(), "a free call still fits");
    }

    #[test]
    fn an_overrun_is_recorded_and_blocks_until_the_reset() {
        let mut b = daily(10.0);
        b.reserve(usd(1.0));
        b.release(usd(1.0));
        b.charge(usd(12.0), b.period_start());
        assert_eq!(b.spent(), usd(12.0));
        match b.check(Usd::ZERO, MON + 3600) {
            Err(BudgetDenial::Exhausted { retry_after, .. }) => {
                assert_eq!(retry_after, Some(Duration::from_secs(86_400 - 3600)))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(b.roll(MON + 86_399), Roll::Same);
        assert_eq!(b.roll(MON + 86_400), Roll::Next, "a new day");
        assert_eq!(b.spent(), Usd::ZERO);
        assert_eq!(b.roll(MON + 86_401), Roll::Same, "once per boundary");
        b.check(usd(10.0), MON + 86_401).unwrap();
    }

    #[test]
    fn charges_and_refunds_of_another_period_do_not_touch_this_one() {
        let mut b = daily(10.0);
        b.charge(usd(3.0), MON - 86_400);
        assert_eq!(b.spent(), Usd::ZERO);
        b.charge(usd(3.0), MON);
        b.refund(usd(1.0), MON);
        assert_eq!(b.spent(), usd(2.0));
        // Yesterday's charge refunded today: today's spending stays.
        b.refund(usd(1.0), MON - 86_400);
        assert_eq!(b.spent(), usd(2.0));
    }

    /// Issue 16: with a daily $100 budget, $90 on day 1 and $90 on day 2, a step
    /// back into day 1 must not start a fresh $100, nor a step forward again.
    #[test]
    fn a_step_back_of_the_clock_stays_in_the_newest_period() {
        let day1 = MON + 3600;
        let day2 = MON + 86_400 + 3600;
        let mut b = daily(100.0);
        b.charge(usd(90.0), b.period_start());
        assert_eq!(b.roll(day2), Roll::Next);
        b.charge(usd(90.0), b.period_start());
        assert_eq!(
            b.roll(day1),
            Roll::SteppedBack { now_start: MON },
            "reported"
        );
        assert_eq!(b.period_start(), MON + 86_400, "stays in day 2");
        assert_eq!(b.spent(), usd(90.0));
        assert!(b.check(usd(10.0), day1).is_ok());
        assert!(matches!(
            b.check(usd(10.01), day1),
            Err(BudgetDenial::WouldExceed { .. })
        ));
        assert_eq!(b.roll(day1 + 60), Roll::Same, "reported once per step");
        assert_eq!(b.roll(day2), Roll::Same, "back in its own period");
        assert_eq!(b.spent(), usd(90.0));
        // While behind, retry_after counts to the end of day 2, not of day 1.
        b.charge(usd(10.0), b.period_start());
        match b.check(Usd::ZERO, day1) {
            Err(BudgetDenial::Exhausted { retry_after, .. }) => {
                assert_eq!(retry_after, Some(Duration::from_secs(2 * 86_400 - 3600)))
            }
            other => panic!("{other:?}"),
        }
        // A second step back after coming forward is reported again.
        assert_eq!(b.roll(day1), Roll::SteppedBack { now_start: MON });
        assert_eq!(b.roll(MON + 2 * 86_400), Roll::Next, "day 3 is new");
        assert_eq!(b.spent(), Usd::ZERO);
    }

    #[test]
    fn a_restart_resumes_the_newest_period_the_ledger_holds() {
        let spec = BudgetSpec {
            name: "global".into(),
            limit: usd(100.0),
            reset: Period::Daily,
        };
        let day2 = MON + 86_400;
        let balances = [(MON, usd(90.0)), (day2, usd(95.0)), (MON - 7, usd(1.0))];
        // Started with the clock back in day 1: day 2's balance, not day 1's.
        let b = Budget::restore(spec.clone(), MON + 60, &balances, &[]);
        assert_eq!((b.period_start(), b.spent()), (day2, usd(95.0)));
        assert!(b.check(usd(5.01), MON + 60).is_err());
        // Started in day 3: a new period.
        let b = Budget::restore(spec.clone(), day2 + 86_400, &balances, &[]);
        assert_eq!(b.spent(), Usd::ZERO);
        // An unreadable balance fails this budget closed until reset.
        let mut b = Budget::restore(spec, MON + 60, &[], &[(MON, "NaN".into())]);
        assert!(matches!(
            b.check(Usd::ZERO, MON + 60),
            Err(BudgetDenial::Unknown { .. })
        ));
        b.reset_spent();
        assert!(b.check(usd(1.0), MON + 60).is_ok());
    }

    #[test]
    fn thresholds() {
        let mut b = daily(100.0);
        assert_eq!(b.threshold_reached(&[50, 80, 100]), None);
        b.charge(usd(80.0), MON);
        assert_eq!(b.threshold_reached(&[50, 80, 100]), Some(80));
    }
}

/// The money budgets: the pipeline's last stage, so a call denied by anything
/// else never touches money.
#[derive(Debug, Default)]
pub struct Budgets {
    by_name: HashMap<Arc<str>, Budget, foldhash::fast::RandomState>,
    global: Option<Arc<str>>,
    /// Agent name → its budget's name (`agent:NAME`), so finding the budgets of
    /// a call builds no string.
    by_agent: HashMap<Box<str>, Arc<str>, foldhash::fast::RandomState>,
    by_service: HashMap<Box<str>, Arc<str>, foldhash::fast::RandomState>,
    /// Steps back of the clock seen and not yet reported by the engine (which
    /// logs and counts them; guards do neither): budget, the clock's period, the
    /// budget's period.
    stepped_back: Vec<(Arc<str>, u64, u64)>,
}

/// An estimate held against the budgets a call falls under, until it settles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    pub budgets: Vec<Arc<str>>,
    pub estimate: Usd,
}

// Kept inline in the reservation (no heap allocation per admission).
const _: () = assert!(super::fits_inline::<Hold>());

// === impl Budgets ===

impl Budgets {
    /// Adds a budget; its name says what it governs (`global`, `agent:NAME`,
    /// `service:NAME`).
    pub fn insert(&mut self, budget: Budget) {
        let name = Arc::clone(&budget.name);
        if let Some(agent) = name.strip_prefix("agent:") {
            self.by_agent.insert(agent.into(), Arc::clone(&name));
        } else if let Some(service) = name.strip_prefix("service:") {
            self.by_service.insert(service.into(), Arc::clone(&name));
        } else {
            self.global = Some(Arc::clone(&name));
        }
        self.by_name.insert(name, budget);
    }

    /// Takes a budget out (a reload removed it). The holds that name it keep
    /// naming it; giving them back skips a budget that is not there.
    pub fn remove(&mut self, name: &str) -> Option<Budget> {
        let budget = self.by_name.remove(name)?;
        if let Some(agent) = name.strip_prefix("agent:") {
            self.by_agent.remove(agent);
        } else if let Some(service) = name.strip_prefix("service:") {
            self.by_service.remove(service);
        } else {
            self.global = None;
        }
        Some(budget)
    }

    pub fn get(&self, name: &str) -> Option<&Budget> {
        self.by_name.get(name)
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut Budget> {
        self.by_name.get_mut(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    pub fn names(&self) -> impl Iterator<Item = &Arc<str>> {
        self.by_name.keys()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&Arc<str>, &mut Budget)> {
        self.by_name.iter_mut()
    }

    /// The budgets a call by `agent` to `service` must fit: global, the agent's,
    /// the service's (those configured).
    pub fn applicable(&self, agent: &str, service: &str) -> Vec<Arc<str>> {
        if self.by_name.is_empty() {
            return Vec::new();
        }
        let mut names = Vec::with_capacity(3);
        names.extend(self.global.iter().cloned());
        names.extend(self.by_agent.get(agent).cloned());
        names.extend(self.by_service.get(service).cloned());
        names
    }

    /// Moves `name` to `now`'s period ([`Budget::roll`]), remembering a step
    /// back of the clock for [`Budgets::take_steps_back`].
    pub fn roll(&mut self, name: &str, now: u64) -> Option<&mut Budget> {
        let budget = self.by_name.get_mut(name)?;
        if let Roll::SteppedBack { now_start } = budget.roll(now) {
            self.stepped_back
                .push((Arc::clone(&budget.name), now_start, budget.period_start));
        }
        Some(budget)
    }

    /// The steps back seen since the last call: (budget, the clock's period
    /// start, the period the budget stays in).
    pub fn take_steps_back(&mut self) -> Vec<(Arc<str>, u64, u64)> {
        if self.stepped_back.is_empty() {
            return Vec::new();
        }
        std::mem::take(&mut self.stepped_back)
    }

    /// Gives a hold back to its budgets.
    pub fn give_back(&mut self, hold: &Hold) {
        for name in &hold.budgets {
            if let Some(budget) = self.by_name.get_mut(name) {
                budget.release(hold.estimate);
            }
        }
    }

    /// Holds `estimate` against `budgets` (a reservation restored from the ledger).
    pub fn hold(&mut self, budgets: Vec<Arc<str>>, estimate: Usd) -> Hold {
        for name in &budgets {
            if let Some(budget) = self.by_name.get_mut(name) {
                budget.reserve(estimate);
            }
        }
        Hold { budgets, estimate }
    }
}

impl super::Guard for Budgets {
    fn check(&mut self, call: &super::Call<'_>, out: &mut super::Checked) -> super::Verdict {
        let names = self.applicable(call.agent, call.service);
        if names.is_empty() {
            return super::Verdict::Allow;
        }
        let shadow = call.shadow_all;
        for name in &names {
            let budget = self
                .roll(name, call.now.unix)
                .expect("applicable budgets exist");
            match budget.check(call.estimate, call.now.unix) {
                Ok(()) => out.vote(super::Vote::allow(
                    super::GuardKind::Budget,
                    Arc::clone(name),
                    shadow,
                    super::Reason::Reserved {
                        estimate: call.estimate,
                        left: budget.remaining() - call.estimate,
                        limit: budget.limit(),
                    },
                )),
                Err(denial) => {
                    let retry_after = match &denial {
                        BudgetDenial::Exhausted { retry_after, .. }
                        | BudgetDenial::WouldExceed { retry_after, .. } => *retry_after,
                        BudgetDenial::Unknown { .. } => None,
                    };
                    out.vote(super::Vote::deny(
                        super::GuardKind::Budget,
                        Arc::clone(name),
                        shadow,
                        denial,
                        retry_after,
                    ));
                    if !shadow {
                        return super::Verdict::Deny;
                    }
                }
            }
        }
        let hold = self.hold(names, call.estimate);
        out.take(hold);
        super::Verdict::Allow
    }

    fn undo(&mut self, taken: &mut (dyn Any + Send)) {
        self.give_back(super::own::<Hold>(taken));
    }

    fn abort(&mut self, taken: &mut (dyn Any + Send)) {
        self.give_back(super::own::<Hold>(taken));
    }

    fn settle(
        &mut self,
        taken: &mut (dyn Any + Send),
        _report: &super::Report,
        _out: &mut super::Settled,
    ) {
        // The actual cost is charged by the report's own ledger entry; the
        // estimate held for the call goes back.
        self.give_back(super::own::<Hold>(taken));
    }

    fn release(&mut self, taken: &mut (dyn Any + Send)) {
        self.give_back(super::own::<Hold>(taken));
    }

    fn disconnect(&mut self, taken: &mut (dyn Any + Send)) -> super::Keep {
        // Held money stays held: the actual cost may still be reported. A $0
        // hold holds nothing the budget counts (issue 16: orphans of $0 floods),
        // so its connection's end releases it (ARCHITECTURE.md, orphans).
        match taken.downcast_ref::<Hold>() {
            Some(hold) if hold.estimate == Usd::ZERO => super::Keep::No,
            _ => super::Keep::Money,
        }
    }

    fn entries(
        &self,
        taken: &(dyn Any + Send),
        reservation: u64,
        call: &super::Call<'_>,
        out: &mut Vec<crate::store::Entry>,
    ) {
        let Some(hold) = taken.downcast_ref::<Hold>() else {
            return;
        };
        if hold.estimate == Usd::ZERO {
            // Nothing reserved, nothing a crash could lose from the books: a $0
            // reservation lives in memory only (issue 16).
            return;
        }
        out.push(crate::store::Entry::Reserve {
            id: reservation,
            agent: call.agent.to_owned(),
            service: call.service.to_owned(),
            model: call.model.map(str::to_owned),
            estimate: hold.estimate,
            budgets: hold.budgets.iter().map(|b| b.to_string()).collect(),
            at: call.now.unix,
        });
    }
}
