//! Admission semantics on a manual clock and a real ledger in a temp dir:
//! all-or-nothing, connection-scoped release, budgets with reservations, prices,
//! reset periods, orphans, restarts, quotas, admin operations, failing disks.

use super::*;
use crate::clock::{Clock, ManualClock};
use crate::guard::breaker::Phase;
use crate::money::Usd;
use crate::protocol::GuardKind;
use crate::store::Store;
use std::num::NonZeroU32;
use std::time::Duration;

mod periods;
mod settling;

const S: Duration = Duration::from_secs(1);
const DAY: Duration = Duration::from_secs(86_400);

struct Fixture {
    admission: Arc<Admission>,
    clock: ManualClock,
    store: Store,
    config: Arc<Config>,
    dir: tempfile::TempDir,
}

fn usd(dollars: f64) -> Usd {
    Usd::from_dollars(dollars).unwrap()
}

/// The ledger as the daemon opens it at a start: told `config`'s budgets.
fn open_store(
    dir: &std::path::Path,
    config: &Config,
    clock: &ManualClock,
) -> (Store, crate::store::Snapshot) {
    let options = crate::store::StoreOptions {
        opening: opening(config, clock.unix()),
        ..Default::default()
    };
    Store::open_with(dir, &options).unwrap()
}

fn fixture(toml: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let config = Arc::new(Config::from_toml(toml).expect("test config is valid"));
    let (store, snapshot) = open_store(dir.path(), &config, &clock);
    let admission = Admission::new(
        Arc::clone(&config),
        &SharedClock::new(clock.clone()),
        &snapshot,
        Alerts::disabled(),
    )
    .unwrap();
    Fixture {
        admission: Arc::new(admission),
        clock,
        store,
        config,
        dir,
    }
}

/// A plain call to `service` (shared with `retry_route_tests.rs`).
pub(super) fn plan(service: &str) -> Plan<'_> {
    Plan {
        service,
        units: NonZeroU32::MIN,
        input_units: 0,
        output_units: 0,
        cost: None,
        model: None,
        content: None,
        attempt: 1,
        route: None,
        lease: None,
        wait: None,
    }
}

/// An outcome with nothing but `failure` (shared with `retry_route_tests.rs`).
pub(super) fn outcome(failure: bool) -> Outcome {
    Outcome {
        failure,
        units: None,
        input_units: None,
        output_units: None,
        cost: None,
        latency: None,
        retryable: false,
        attempt: None,
        upstream_after: None,
    }
}

impl Fixture {
    fn now(&self) -> Moment {
        Moment {
            mono: self.clock.now(),
            unix: self.clock.unix(),
        }
    }

    /// Admits as `cmd::admit` does: decide, write, confirm (or abort).
    async fn admit_plan(
        &self,
        session: u64,
        agent: &str,
        plan: Plan<'_>,
    ) -> Result<Decision, String> {
        self.admit_as(session, 1000, agent, plan).await
    }

    /// [`Fixture::admit_plan`] for a connection of `uid`.
    async fn admit_as(
        &self,
        session: u64,
        uid: u32,
        agent: &str,
        plan: Plan<'_>,
    ) -> Result<Decision, String> {
        let caller = Caller {
            session,
            uid,
            agent,
            pid: 0,
        };
        let admitted = self
            .admission
            .admit(caller, plan, self.now())
            .map_err(|e| e.to_string())?;
        match admitted {
            Admitted::Decided(decision) => Ok(decision),
            Admitted::Durable(durable) => self.commit(durable).await,
        }
    }

    /// The daemon's one commit path, on the fixture's store and clock.
    async fn commit<P: Pending>(&self, durable: Durable<P>) -> Result<P::Output, String> {
        self.admission
            .commit(&self.store, &SharedClock::new(self.clock.clone()), durable)
            .await
            .map_err(|e| e.to_string())
    }

    async fn admit(&self, session: u64, agent: &str, service: &str) -> Decision {
        self.admit_plan(session, agent, plan(service))
            .await
            .expect("decided")
    }

    async fn admit_cost(&self, session: u64, agent: &str, service: &str, cost: f64) -> Decision {
        let plan = Plan {
            cost: Some(usd(cost)),
            ..plan(service)
        };
        self.admit_plan(session, agent, plan)
            .await
            .expect("decided")
    }

    /// Reports as `cmd::report` does.
    async fn finish(
        &self,
        reporting: Result<Reporting, AdmissionError>,
    ) -> Result<Settlement, String> {
        match reporting.map_err(|e| e.to_string())? {
            Reporting::Settled(s) => Ok(s),
            Reporting::Durable(durable) => self.commit(durable).await,
            Reporting::Lookup { key, reservation } => match self.store.is_charged(&key).await {
                Ok(true) => Ok(Settlement::duplicate()),
                Ok(false) => Err(AdmissionError::UnknownReservation(reservation).to_string()),
                Err(err) => Err(err.to_string()),
            },
        }
    }

    async fn report_with(&self, id: u64, outcome: Outcome) -> Result<Settlement, String> {
        self.finish(self.admission.report(id, None, outcome, self.now()))
            .await
    }

    async fn report(&self, id: u64, failure: bool) -> Settlement {
        self.report_with(id, outcome(failure))
            .await
            .expect("reported")
    }

    /// Five failures reported without admission open a default breaker.
    async fn open_breaker(&self, service: &str) {
        for _ in 0..5 {
            self.finish(self.admission.report_unreserved(
                "x",
                service,
                None,
                outcome(true),
                self.now(),
            ))
            .await
            .unwrap();
        }
    }

    fn budget(&self, name: &str) -> BudgetView {
        self.admission
            .budgets(None, self.now())
            .into_iter()
            .find(|b| b.name == name)
            .unwrap_or_else(|| panic!("no budget {name}"))
    }

    /// Closes the ledger and builds a fresh engine from it, as a restart does.
    fn restart(self) -> Fixture {
        self.store.close();
        let (store, snapshot) = open_store(self.dir.path(), &self.config, &self.clock);
        let admission = Admission::new(
            Arc::clone(&self.config),
            &SharedClock::new(self.clock.clone()),
            &snapshot,
            Alerts::disabled(),
        )
        .unwrap();
        Fixture {
            admission: Arc::new(admission),
            store,
            ..self
        }
    }

    /// [`Fixture::restart`] with another config.
    fn restart_with(mut self, toml: &str) -> Fixture {
        self.config = Arc::new(Config::from_toml(toml).expect("test config is valid"));
        self.restart()
    }

    /// Sets `budget`'s balance in the ledger file to the ledger's maximum,
    /// behind the engine's back: its next charge is refused by the ledger.
    fn fill_balance_behind_its_back(&self, budget: &str) {
        rusqlite::Connection::open(self.dir.path().join(crate::store::LEDGER_FILE))
            .unwrap()
            .execute(
                "UPDATE balances SET spent = ?1 WHERE budget = ?2",
                rusqlite::params![crate::money::MAX_BALANCE.micros(), budget],
            )
            .unwrap();
    }

    async fn settle_orphans(&self) {
        for durable in self.admission.due_orphans(self.now()) {
            let _ = self.commit(durable).await;
        }
    }
}

const TWO_RULES: &str = r#"
[[rate_limits]]
name = "roomy"
rate = 1
per = "1h"
burst = 100
[[rate_limits]]
name = "tight"
rate = 1
burst = 1
"#;

#[tokio::test]
async fn a_denial_by_a_later_rule_takes_nothing_from_earlier_ones() {
    let f = fixture(TWO_RULES);
    assert!(f.admit(1, "a", "s").await.allowed);
    for _ in 0..50 {
        let d = f.admit(1, "a", "s").await;
        assert!(!d.allowed);
        assert_eq!(&*d.decisive_vote().unwrap().rule, "tight");
    }
    // "roomy" barely refills; had the 50 denials taken from it, fewer than 99 of
    // these would pass.
    for n in 0..99 {
        f.clock.advance(S);
        let d = f.admit(1, "a", "s").await;
        assert!(
            d.allowed,
            "admission {n}: roomy must still have room: {:?}",
            d.votes
        );
    }
    f.clock.advance(S);
    let d = f.admit(1, "a", "s").await;
    assert_eq!(&*d.decisive_vote().unwrap().rule, "roomy");
}

#[tokio::test]
async fn a_rate_denial_gives_back_the_trial_slot() {
    let f = fixture("[breaker]\nhalf_open_trials = 1\n[[rate_limits]]\nname = \"tight\"\nrate = 1\nburst = 1\nscope = \"agent\"\n");
    f.open_breaker("s").await;
    f.clock.advance(61 * S);
    // Agent "a" spends its only cell on another service, so its next admission for
    // "s" passes the breaker (taking the one trial slot) and then fails the rate.
    assert!(f.admit(1, "a", "other").await.allowed);
    let denied = f.admit(1, "a", "s").await;
    assert!(!denied.allowed);
    assert_eq!(
        denied.votes[0].reason.to_string(),
        "circuit half-open: admitted as a trial call"
    );
    assert_eq!(denied.decisive_vote().unwrap().guard, GuardKind::Rate);
    let trial = f.admit(2, "b", "s").await;
    assert!(
        trial.allowed,
        "the trial slot must be free for agent b: {:?}",
        trial.votes
    );
}

#[tokio::test]
async fn a_dropped_session_frees_trial_slots_without_counting() {
    let f = fixture("[breaker]\nhalf_open_trials = 2\nsuccess_threshold = 1\n");
    f.open_breaker("s").await;
    f.clock.advance(61 * S);
    assert!(f.admit(1, "a", "s").await.allowed);
    assert!(f.admit(1, "a", "s").await.allowed);
    assert!(
        !f.admit(2, "b", "s").await.allowed,
        "both trial slots are taken"
    );
    assert_eq!(
        f.admission.end_session(1, f.now()),
        (2, 0),
        "$0 reservations hold no money: released, not orphaned"
    );
    let snapshot = &f.admission.breakers(Some("s"), f.clock.now())[0].1;
    assert_eq!(
        snapshot.phase,
        Phase::HalfOpen,
        "a vanished trial is not a success"
    );
    assert_eq!(snapshot.trials_in_flight, 0);
    assert!(f.admit(2, "b", "s").await.allowed);
}

#[tokio::test]
async fn a_repeated_report_is_acknowledged_once() {
    let f = fixture("");
    let id = f.admit(1, "a", "s").await.reservation.unwrap();
    assert!(!f.report(id, true).await.duplicate);
    for _ in 0..10 {
        assert!(f.report(id, true).await.duplicate);
    }
    let snapshot = &f.admission.breakers(Some("s"), f.clock.now())[0].1;
    assert_eq!(snapshot.consecutive_failures, 1, "counted once");
    let err = f.report_with(12345, outcome(false)).await.unwrap_err();
    assert!(err.contains("reservation 12345 was never issued"), "{err}");
}

#[tokio::test]
async fn without_budgets_a_dropped_sessions_reservation_is_released() {
    let f = fixture("[budget]\nenabled = false\n");
    let id = f.admit(1, "a", "s").await.reservation.unwrap();
    assert_eq!(f.admission.end_session(1, f.now()), (1, 0));
    let err = f.report_with(id, outcome(true)).await.unwrap_err();
    assert!(err.contains("released when its connection closed"), "{err}");
}

#[tokio::test]
async fn an_open_breaker_denies_every_agent_with_the_time_left() {
    let f = fixture("");
    f.open_breaker("s").await;
    f.clock.advance(10 * S);
    for agent in ["a", "b", "c"] {
        let d = f.admit(7, agent, "s").await;
        assert!(!d.allowed);
        let vote = d.decisive_vote().unwrap();
        assert_eq!(vote.guard, GuardKind::Breaker);
        assert_eq!(vote.retry_after, Some(50 * S));
    }
    assert!(
        f.admit(7, "a", "other").await.allowed,
        "other services are unaffected"
    );
}

#[tokio::test]
async fn shadow_mode_records_but_never_denies() {
    let f = fixture("[daemon]\nmode = \"shadow\"\n[budget]\nlimit = 1.0\n[[rate_limits]]\nname = \"tight\"\nrate = 1\nburst = 1\n");
    f.open_breaker("s").await;
    assert!(f.admit_cost(1, "a", "s", 0.5).await.allowed);
    let d = f.admit_cost(1, "a", "s", 0.9).await;
    assert!(d.allowed);
    for guard in [GuardKind::Breaker, GuardKind::Rate, GuardKind::Budget] {
        assert!(
            d.votes
                .iter()
                .any(|v| !v.allow && v.shadow && v.guard == guard),
            "{guard:?}: {:?}",
            d.votes
        );
    }
}

#[tokio::test]
async fn unknown_services_and_caps() {
    let f = fixture("[daemon]\nallow_unknown_services = false\nmax_reservations_per_connection = 2\n[services.s]\n");
    let err = f.admit_plan(1, "a", plan("t")).await.unwrap_err();
    assert!(err.starts_with("unknown service \"t\""), "{err}");
    f.admit(1, "a", "s").await;
    f.admit(1, "a", "s").await;
    let err = f.admit_plan(1, "a", plan("s")).await.unwrap_err();
    assert!(err.contains("already holds 2 open reservations"), "{err}");
}

#[tokio::test]
async fn reported_units_settle_weighted_limits() {
    let f = fixture("[[rate_limits]]\nname = \"tokens\"\nweight = \"units\"\nrate = 1000\nper = \"60s\"\nburst = 1000\n");
    let tokens = |n| Plan {
        units: NonZeroU32::new(n).unwrap(),
        ..plan("s")
    };
    let d = f.admit_plan(1, "a", tokens(1000)).await.unwrap();
    assert!(d.allowed);
    assert!(!f.admit_plan(1, "a", tokens(1)).await.unwrap().allowed);
    let used = Outcome {
        units: Some(300),
        ..outcome(false)
    };
    f.report_with(d.reservation.unwrap(), used).await.unwrap();
    assert!(
        f.admit_plan(1, "a", tokens(700)).await.unwrap().allowed,
        "700 unused tokens came back"
    );
}

// --- budgets ---------------------------------------------------------------

#[tokio::test]
async fn concurrent_reservations_never_pass_the_limit() {
    let f = fixture("[budget]\nlimit = 10.0\n");
    let mut allowed = 0;
    for session in 0..100 {
        if f.admit_cost(session, "a", "s", 1.0).await.allowed {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 10);
    let global = f.budget("global");
    assert_eq!(
        (global.spent, global.reserved, global.remaining),
        (Usd::ZERO, usd(10.0), Usd::ZERO)
    );
    let d = f.admit_cost(200, "a", "s", 1.0).await;
    let vote = d.decisive_vote().unwrap();
    assert_eq!((vote.guard, &*vote.rule), (GuardKind::Budget, "global"));
    assert!(
        vote.reason.to_string().contains("estimated at $1.00"),
        "{}",
        vote.reason
    );
}

#[tokio::test]
async fn report_commits_the_actual_cost_and_releases_the_rest() {
    let f = fixture("[budget]\nlimit = 10.0\n");
    let id = f.admit_cost(1, "a", "s", 4.0).await.reservation.unwrap();
    assert_eq!(f.budget("global").reserved, usd(4.0));
    let actual = Outcome {
        cost: Some(usd(1.25)),
        ..outcome(false)
    };
    let settled = f.report_with(id, actual).await.unwrap();
    assert_eq!(settled.charged, Some(usd(1.25)));
    let global = f.budget("global");
    assert_eq!((global.spent, global.reserved), (usd(1.25), Usd::ZERO));
}

#[tokio::test]
async fn an_overrun_is_recorded_and_blocks_further_admissions() {
    let f = fixture("[budget]\nlimit = 10.0\n");
    let id = f.admit_cost(1, "a", "s", 1.0).await.reservation.unwrap();
    let actual = Outcome {
        cost: Some(usd(12.0)),
        ..outcome(false)
    };
    f.report_with(id, actual).await.unwrap();
    assert_eq!(f.budget("global").spent, usd(12.0), "spend is a fact");
    let d = f.admit_cost(1, "a", "s", 0.0).await;
    assert!(!d.allowed);
    assert!(d
        .decisive_vote()
        .unwrap()
        .reason
        .to_string()
        .contains("is spent: $12.00 of $10.00"));
}

#[tokio::test]
async fn sub_budgets_per_agent_and_per_service() {
    let f = fixture("[budget]\nlimit = 100.0\n[budget.agents.planner]\nlimit = 2.0\n[budget.services.search]\nlimit = 3.0\n");
    assert!(f.admit_cost(1, "planner", "llm", 1.0).await.allowed);
    assert!(f.admit_cost(1, "planner", "llm", 1.0).await.allowed);
    let d = f.admit_cost(1, "planner", "llm", 1.0).await;
    assert_eq!(&*d.decisive_vote().unwrap().rule, "agent:planner");
    assert!(
        f.admit_cost(1, "coder", "llm", 5.0).await.allowed,
        "other agents only meet the global budget"
    );
    for _ in 0..3 {
        assert!(f.admit_cost(2, "coder", "search", 1.0).await.allowed);
    }
    let d = f.admit_cost(2, "coder", "search", 1.0).await;
    assert_eq!(&*d.decisive_vote().unwrap().rule, "service:search");
    let views = f.admission.budgets(Some("planner"), f.now());
    let names: Vec<_> = views.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["global", "agent:planner"]);
    assert_eq!(f.budget("global").reserved, usd(10.0));
}

#[tokio::test]
async fn prices_per_request_unit_and_model() {
    let f = fixture(
        r#"
[prices.llm]
per_request = 0.01
per_input_unit = 0.000002
per_output_unit = 0.00001
[prices."llm/big"]
per_request = 0.05
[prices.search]
per_unit = 0.001
"#,
    );
    let estimate = Plan {
        input_units: 1000,
        output_units: 500,
        ..plan("llm")
    };
    let d = f.admit_plan(1, "a", estimate).await.unwrap();
    assert_eq!(d.estimate, usd(0.01 + 0.002 + 0.005));
    let used = Outcome {
        input_units: Some(1000),
        output_units: Some(100),
        ..outcome(false)
    };
    let settled = f.report_with(d.reservation.unwrap(), used).await.unwrap();
    assert_eq!(
        settled.charged,
        Some(usd(0.01 + 0.002 + 0.001)),
        "actual from reported units"
    );

    let big = Plan {
        model: Some("big"),
        ..plan("llm")
    };
    assert_eq!(
        f.admit_plan(1, "a", big).await.unwrap().estimate,
        usd(0.05),
        "the model's entry wins"
    );
    let search = Plan {
        units: NonZeroU32::new(7).unwrap(),
        ..plan("search")
    };
    assert_eq!(
        f.admit_plan(1, "a", search).await.unwrap().estimate,
        usd(0.007)
    );
    assert_eq!(
        f.admit_plan(1, "a", plan("unpriced"))
            .await
            .unwrap()
            .estimate,
        Usd::ZERO
    );
    // No units reported and no cost: the estimate is charged.
    let d = f.admit_plan(1, "a", plan("llm")).await.unwrap();
    let settled = f.report(d.reservation.unwrap(), false).await;
    assert_eq!(settled.charged, Some(usd(0.01)));
}

/// Budgets reset once per calendar period, also across restarts
/// (BerriAI/litellm#7129, #22013, #10288).
#[tokio::test]
async fn a_daily_budget_resets_exactly_at_midnight_utc_even_across_a_restart() {
    let f = fixture("[budget]\nlimit = 10.0\nreset = \"daily\"\n");
    f.clock.advance(23 * 3600 * S);
    let id = f.admit_cost(1, "a", "s", 10.0).await.reservation.unwrap();
    f.report(id, false).await;
    assert!(!f.admit_cost(1, "a", "s", 1.0).await.allowed);
    assert_eq!(f.budget("global").resets_in, Some(3600));
    let f = f.restart();
    assert_eq!(
        f.budget("global").spent,
        usd(10.0),
        "the same day after a restart"
    );
    assert!(!f.admit_cost(1, "a", "s", 1.0).await.allowed);
    f.clock.advance(3599 * S);
    assert!(!f.admit_cost(1, "a", "s", 1.0).await.allowed, "23:59:59");
    f.clock.advance(S);
    assert!(f.admit_cost(1, "a", "s", 1.0).await.allowed, "midnight");
    assert_eq!(f.budget("global").spent, Usd::ZERO);
    // Down across the next midnight: the new day starts from zero.
    f.clock.advance(DAY);
    let f = f.restart();
    assert_eq!(f.budget("global").spent, Usd::ZERO);
}

#[tokio::test]
async fn a_monthly_budget_and_a_duration_reset() {
    let f = fixture("[budget]\nlimit = 1.0\nreset = \"monthly\"\n[budget.agents.a]\nlimit = 1.0\nreset = \"6h\"\n");
    let id = f.admit_cost(1, "a", "s", 0.5).await.reservation.unwrap();
    f.report(id, false).await;
    assert_eq!(f.budget("agent:a").resets_in, Some(6 * 3600));
    f.clock.advance(6 * 3600 * S);
    assert_eq!(f.budget("agent:a").spent, Usd::ZERO, "6h period over");
    assert_eq!(f.budget("global").spent, usd(0.5), "same month");
    // 2026-11-23 → 2026-12-01 is 8 days.
    f.clock.advance(8 * DAY);
    assert_eq!(f.budget("global").spent, Usd::ZERO, "new month");
}

// --- orphans and restarts ----------------------------------------------------

#[tokio::test]
async fn an_orphan_is_reportable_until_its_timeout_then_charged_its_estimate() {
    let f = fixture("[budget]\nlimit = 10.0\norphan_timeout = \"60s\"\n");
    let kept = f.admit_cost(1, "a", "s", 2.0).await.reservation.unwrap();
    let lost = f.admit_cost(1, "a", "s", 3.0).await.reservation.unwrap();
    f.admission.end_session(1, f.now());
    assert_eq!(f.budget("global").orphaned, 2);
    // The agent reconnects and reports one of them.
    let actual = Outcome {
        cost: Some(usd(1.5)),
        ..outcome(false)
    };
    f.report_with(kept, actual).await.unwrap();
    f.clock.advance(59 * S);
    f.settle_orphans().await;
    assert_eq!(f.budget("global").reserved, usd(3.0), "not yet");
    f.clock.advance(S);
    f.settle_orphans().await;
    let global = f.budget("global");
    assert_eq!(
        (global.spent, global.reserved, global.orphaned),
        (usd(4.5), Usd::ZERO, 0)
    );
    assert!(
        f.report_with(lost, outcome(false)).await.unwrap().duplicate,
        "settled by policy already"
    );
}

#[tokio::test]
async fn open_reservations_are_capped_per_uid_orphans_included_and_in_total() {
    let f = fixture(
        "[daemon]\nmax_reservations_per_uid = 3\nmax_reservations = 5\n[budget]\nlimit = 100.0\norphan_timeout = \"1h\"\n",
    );
    let cost = Plan {
        cost: Some(usd(0.5)),
        ..plan("s")
    };
    for _ in 0..3 {
        f.admit_as(1, 1000, "a", cost).await.unwrap();
    }
    // The connection ends; its reservations are orphans of uid 1000 now, and a new
    // connection of the same uid is still at the cap.
    assert_eq!(f.admission.end_session(1, f.now()), (0, 3));
    let refused = f.admit_as(2, 1000, "b", cost).await.unwrap_err();
    assert!(
        refused.contains("uid 1000 already holds 3 open reservations")
            && refused.contains("daemon.max_reservations_per_uid"),
        "{refused}"
    );
    f.admit_as(3, 1001, "c", cost).await.unwrap();
    f.admit_as(3, 1001, "c", cost).await.unwrap();
    let refused = f.admit_as(4, 1002, "d", cost).await.unwrap_err();
    assert!(
        refused.contains("holds 5 open reservations")
            && refused.contains("daemon.max_reservations)"),
        "{refused}"
    );
    assert_eq!(
        f.budget("global").reserved,
        usd(2.5),
        "refusals took nothing"
    );
}

#[tokio::test]
async fn a_zero_cost_reservation_is_neither_written_nor_orphaned() {
    let f = fixture("[budget]\nlimit = 10.0\norphan_timeout = \"1s\"\n");
    let free = f.admit_cost(1, "a", "s", 0.0).await.reservation.unwrap();
    f.admit_cost(1, "a", "s", 1.0).await;
    assert_eq!(
        f.admission.end_session(1, f.now()),
        (1, 1),
        "the $0 one is released, the $1 one an orphan"
    );
    let err = f.report_with(free, outcome(false)).await.unwrap_err();
    assert!(
        err.contains("was released when its connection closed"),
        "{err}"
    );
    let f = f.restart();
    assert_eq!(
        f.budget("global").orphaned,
        1,
        "only the $1 reservation was in the ledger"
    );
}

#[tokio::test]
async fn due_orphans_are_settled_in_batches_of_one_commit_each() {
    let f = fixture(
        "rate_limits = []\n[daemon]\nmax_reservations_per_connection = 3000\n[budget]\nlimit = 100.0\norphan_timeout = \"1s\"\n",
    );
    for _ in 0..2500 {
        f.admit_cost(1, "a", "s", 0.01).await;
    }
    f.admission.end_session(1, f.now());
    f.clock.advance(S);
    let batches = f.admission.due_orphans(f.now());
    let sizes: Vec<usize> = batches.iter().map(|d| d.pending.len()).collect();
    assert_eq!(sizes, [1024, 1024, 452]);
    assert!(
        f.admission.due_orphans(f.now()).is_empty(),
        "settling orphans are not handed out twice"
    );
    for durable in batches {
        f.commit(durable).await.unwrap();
    }
    let global = f.budget("global");
    assert_eq!(
        (global.spent, global.reserved, global.orphaned),
        (usd(25.0), Usd::ZERO, 0)
    );
    assert_eq!(f.admission.open_reservations(), 0);
}

#[tokio::test]
async fn the_release_policy_forgets_the_estimate() {
    let f = fixture("[budget]\norphan_timeout = \"1s\"\norphan_policy = \"release\"\n");
    f.admit_cost(1, "a", "s", 2.0).await;
    f.admission.end_session(1, f.now());
    f.clock.advance(S);
    f.settle_orphans().await;
    let global = f.budget("global");
    assert_eq!((global.spent, global.reserved), (Usd::ZERO, Usd::ZERO));
}

/// Two reservations reported under one idempotency key: the second report
/// is a duplicate, counted once, and its reservation is closed with it (it
/// held its estimate, and no later report could close it).
#[tokio::test]
async fn a_duplicate_report_closes_its_reservation_too() {
    let f = fixture("[budget]\nlimit = 10.0\n");
    let first = f.admit_cost(1, "a", "s", 2.0).await.reservation.unwrap();
    let second = f.admit_cost(1, "a", "s", 3.0).await.reservation.unwrap();
    let key = || Some("call-7".to_owned());
    let charged = f
        .finish(f.admission.report(first, key(), outcome(false), f.now()))
        .await
        .unwrap();
    assert!(!charged.duplicate);
    let again = f
        .finish(f.admission.report(second, key(), outcome(false), f.now()))
        .await
        .unwrap();
    assert!(again.duplicate, "the key was charged already");
    let global = f.budget("global");
    assert_eq!(
        (global.spent, global.reserved),
        (usd(2.0), Usd::ZERO),
        "charged once, and the second estimate is no longer held"
    );
    assert!(
        f.report(second, false).await.duplicate,
        "closed: a further report finds it reported"
    );
}

/// An admission's reservation written after its caller was already told
/// `Unavailable` (the commit outlived `daemon.commit_timeout`): the caller
/// makes no call, so the reservation goes from memory, and from the ledger
/// too, or a restart would bring it back as an orphan holding its estimate.
#[tokio::test]
async fn a_reservation_written_after_its_caller_gave_up_is_undone_in_the_ledger_too() {
    let f = fixture("[budget]\nlimit = 10.0\norphan_timeout = \"1h\"\n");
    let caller = Caller {
        session: 1,
        uid: 1000,
        agent: "a",
        pid: 0,
    };
    let plan = Plan {
        cost: Some(usd(2.0)),
        ..plan("s")
    };
    let Admitted::Durable(durable) = f.admission.admit(caller, plan, f.now()).unwrap() else {
        panic!("a budgeted admission is written first");
    };
    let Durable { entries, pending } = durable;
    // The ledger writes it, but too late for the waiter.
    let written = f.store.write(entries).await;
    let undo = pending.complete_late(&f.admission, written, f.now());
    f.store.write(undo).await.unwrap();
    assert_eq!(f.budget("global").reserved, Usd::ZERO, "gone from memory");
    let f = f.restart();
    let global = f.budget("global");
    assert_eq!(
        (global.reserved, global.orphaned),
        (Usd::ZERO, 0),
        "and from the ledger"
    );
}

#[tokio::test]
async fn a_restart_recovers_open_reservations_as_orphans_that_can_still_be_reported() {
    let f = fixture("[budget]\nlimit = 10.0\n");
    let id = f.admit_cost(1, "a", "s", 2.0).await.reservation.unwrap();
    let charged = f.admit_cost(1, "a", "s", 1.0).await.reservation.unwrap();
    f.report(charged, false).await;
    let f = f.restart();
    let global = f.budget("global");
    assert_eq!(
        (global.spent, global.reserved, global.orphaned),
        (usd(1.0), usd(2.0), 1)
    );
    assert!(
        f.report(charged, false).await.duplicate,
        "a report repeated after the restart counts once"
    );
    let settled = f.report(id, false).await;
    assert_eq!(settled.charged, Some(usd(2.0)));
    let next = f.admit_cost(1, "a", "s", 1.0).await.reservation.unwrap();
    assert_ne!(
        next >> 32,
        id >> 32,
        "ids of a new run never repeat old ones"
    );
}

#[tokio::test]
async fn a_failing_ledger_fails_budgeted_admissions_closed_and_changes_nothing() {
    let f = fixture("[budget]\nlimit = 10.0\n[[rate_limits]]\nname = \"one\"\nrate = 1\nper = \"1h\"\nburst = 1\n");
    f.store.fail_writes(true);
    let err = f
        .admit_plan(
            1,
            "a",
            Plan {
                cost: Some(usd(1.0)),
                ..plan("s")
            },
        )
        .await
        .unwrap_err();
    assert!(err.contains("the ledger at "), "{err}");
    let global = f.budget("global");
    assert_eq!((global.spent, global.reserved), (Usd::ZERO, Usd::ZERO));
    assert_eq!(f.admission.open_reservations(), 0);
    f.store.fail_writes(false);
    let d = f.admit_cost(1, "a", "s", 1.0).await;
    assert!(d.allowed, "the rate cell was given back: {:?}", d.votes);
    // A report whose charge cannot be written is not acknowledged, and can be retried.
    f.store.fail_writes(true);
    let id = d.reservation.unwrap();
    assert!(f.report_with(id, outcome(false)).await.is_err());
    assert_eq!(f.budget("global").spent, Usd::ZERO);
    f.store.fail_writes(false);
    assert_eq!(f.report(id, false).await.charged, Some(usd(1.0)));
}

#[tokio::test]
async fn a_direct_charge_needs_a_key_and_counts_once() {
    let f = fixture("");
    let charge = |key: Option<&str>| {
        let o = Outcome {
            cost: Some(usd(0.75)),
            ..outcome(false)
        };
        f.admission
            .report_unreserved("a", "s", key.map(str::to_owned), o, f.now())
    };
    let err = f.finish(charge(None)).await.unwrap_err();
    assert!(err.contains("needs an idempotency_key"), "{err}");
    assert_eq!(
        f.finish(charge(Some("call-1"))).await.unwrap().charged,
        Some(usd(0.75))
    );
    assert!(f.finish(charge(Some("call-1"))).await.unwrap().duplicate);
    assert_eq!(f.budget("global").spent, usd(0.75));
}

// --- quotas ------------------------------------------------------------------

#[tokio::test]
async fn a_quota_of_three_blocks_the_fourth_and_survives_a_restart() {
    let f =
        fixture("[[quotas]]\nname = \"daily\"\nscope = \"agent\"\nlimit = 3\nwindow = \"day\"\n");
    for _ in 0..3 {
        assert!(f.admit(1, "a", "s").await.allowed);
    }
    let d = f.admit(1, "a", "s").await;
    assert_eq!(d.decisive_vote().unwrap().guard, GuardKind::Quota);
    assert_eq!(d.decisive_vote().unwrap().retry_after, Some(DAY));
    let f = f.restart();
    assert!(
        !f.admit(1, "a", "s").await.allowed,
        "the day's count survived"
    );
    assert!(f.admit(1, "b", "s").await.allowed);
    let views = f.admission.quotas(None, f.now()).unwrap();
    assert_eq!(
        views
            .iter()
            .map(|v| (v.key.as_str(), v.used))
            .collect::<Vec<_>>(),
        [("a", 3), ("b", 1)]
    );
    f.clock.advance(DAY);
    assert!(f.admit(1, "a", "s").await.allowed, "a new day");
}

#[tokio::test]
async fn a_denial_by_any_guard_takes_nothing_from_quotas_or_budgets() {
    let f = fixture(
        "[budget]\nlimit = 2.0\n[[quotas]]\nname = \"q\"\nlimit = 5\nwindow = \"lifetime\"\n",
    );
    assert!(f.admit_cost(1, "a", "s", 2.0).await.allowed);
    for _ in 0..10 {
        assert_eq!(
            f.admit_cost(1, "a", "s", 1.0)
                .await
                .decisive_vote()
                .unwrap()
                .guard,
            GuardKind::Budget
        );
    }
    let views = f.admission.quotas(Some("q"), f.now()).unwrap();
    assert_eq!(views[0].used, 1, "the budget denials took no quota");
}

#[tokio::test]
async fn zero_and_minute_quotas() {
    let f = fixture("[[quotas]]\nname = \"none\"\nlimit = 0\nwindow = \"lifetime\"\nservices = [\"banned\"]\n[[quotas]]\nname = \"burst\"\nlimit = 2\nwindow = \"minute\"\n");
    let d = f.admit(1, "a", "banned").await;
    assert_eq!(&*d.decisive_vote().unwrap().rule, "none");
    assert_eq!(d.decisive_vote().unwrap().retry_after, None);
    f.admit(1, "a", "s").await;
    f.admit(1, "a", "s").await;
    assert!(!f.admit(1, "a", "s").await.allowed);
    let f = f.restart();
    assert!(
        f.admit(1, "a", "s").await.allowed,
        "minute windows are not worth a disk write"
    );
}

// --- admin -------------------------------------------------------------------

async fn admin(f: &Fixture, kind: AdminKind) -> Result<String, String> {
    let durable = f
        .admission
        .admin(
            AdminAction {
                uid: 0,
                pid: 42,
                kind,
            },
            f.now(),
        )
        .map_err(|e| e.to_string())?;
    f.commit(durable).await?.map_err(|e| e.to_string())
}

#[tokio::test]
async fn admin_operations_change_the_ledger_and_survive_a_restart() {
    let f = fixture("[budget]\nlimit = 10.0\n[[quotas]]\nname = \"q\"\nscope = \"agent+service\"\nlimit = 1\nwindow = \"day\"\n");
    let id = f.admit_cost(1, "a", "s", 4.0).await.reservation.unwrap();
    f.report(id, false).await;
    admin(
        &f,
        AdminKind::SetLimit {
            budget: "global".into(),
            limit: usd(5.0),
        },
    )
    .await
    .unwrap();
    assert!(
        !f.admit_cost(1, "b", "t", 2.0).await.allowed,
        "$4 of $5 spent"
    );
    admin(
        &f,
        AdminKind::Refund {
            key: reservation_key(id),
        },
    )
    .await
    .unwrap();
    assert_eq!(f.budget("global").spent, Usd::ZERO);
    let err = admin(
        &f,
        AdminKind::Refund {
            key: reservation_key(id),
        },
    )
    .await
    .unwrap_err();
    assert!(err.contains("no charge with idempotency key"), "{err}");
    let err = admin(
        &f,
        AdminKind::SetLimit {
            budget: "agent:nobody".into(),
            limit: usd(1.0),
        },
    )
    .await
    .unwrap_err();
    assert!(err.contains("no budget named"), "{err}");

    assert!(
        !f.admit(1, "a", "s").await.allowed,
        "quota used by the first admission"
    );
    admin(
        &f,
        AdminKind::ResetQuota {
            quota: "q".into(),
            key: "a/s".into(),
        },
    )
    .await
    .unwrap();
    assert!(f.admit(1, "a", "s").await.allowed);

    let f = f.restart();
    let global = f.budget("global");
    assert_eq!(
        (global.limit, global.spent),
        (usd(5.0), Usd::ZERO),
        "limit and refund are durable"
    );
    let id = f.admit_cost(2, "a", "x", 3.0).await.reservation.unwrap();
    f.report(id, false).await;
    admin(
        &f,
        AdminKind::ResetBudget {
            budget: "global".into(),
        },
    )
    .await
    .unwrap();
    assert_eq!(f.budget("global").spent, Usd::ZERO);
    let f = f.restart();
    assert_eq!(f.budget("global").spent, Usd::ZERO);
}

#[tokio::test]
async fn an_operator_forces_a_breaker_for_every_agent() {
    let f = fixture("");
    let (snapshot, transition) = f
        .admission
        .force_breaker("s", Some(Force::Open), f.clock.now())
        .unwrap();
    assert_eq!(snapshot.phase, Phase::ForcedOpen);
    assert_eq!(transition.map(|t| t.to), Some(Phase::ForcedOpen));
    assert!(!f.admit(1, "a", "s").await.allowed);
    assert!(!f.admit(2, "b", "s").await.allowed);
    let (snapshot, _) = f.admission.force_breaker("s", None, f.clock.now()).unwrap();
    assert_eq!(snapshot.phase, Phase::Closed);
    assert!(f.admit(1, "a", "s").await.allowed);

    let f = fixture("[daemon]\nallow_unknown_services = false\n");
    assert_eq!(
        f.admission
            .force_breaker("nope", Some(Force::Open), f.clock.now())
            .unwrap_err(),
        AdmissionError::UnknownService("nope".into())
    );
}

impl Fixture {
    /// Applies `toml` as a reload does.
    /// Every breaker's service and phase, now.
    fn phases(&self) -> Vec<(String, Phase)> {
        self.admission
            .breakers(None, self.now().mono)
            .into_iter()
            .map(|(service, snapshot)| (service, snapshot.phase))
            .collect()
    }

    /// A reload as `State::reload` makes it: the books of the budgets it
    /// opens read from the ledger first.
    fn reconfigure(&self, toml: &str) -> Result<Reconfigured, ReloadError> {
        let config = Arc::new(Config::from_toml(toml).expect("test config is valid"));
        let opening = self.admission.budgets_to_load(&config, self.now());
        let names = opening.names();
        let books = self
            .store
            .books(opening.clone())
            .expect("the ledger answers");
        let loaded = LoadedBooks { names, books };
        let done = self.admission.reconfigure(
            config,
            &SharedClock::new(self.clock.clone()),
            self.now(),
            &loaded,
        )?;
        // As `State::reload` records the resets once applied.
        drop(self.admission.record_resets(&self.store, &opening));
        Ok(done)
    }
}

const TIGHT: &str = "[[rate_limits]]\nname = \"tight\"\nrate = 1\nper = \"1h\"\nburst = 1\n";

#[tokio::test]
async fn a_reload_keeps_an_unchanged_rate_rules_bucket_and_starts_a_changed_one_fresh() {
    let f = fixture(TIGHT);
    assert!(f.admit(1, "a", "s").await.allowed);
    assert!(
        !f.admit(1, "a", "s").await.allowed,
        "the burst of 1 is spent"
    );

    let other = "[[rate_limits]]\nname = \"other\"\nrate = 1\nburst = 5\nservices = [\"t\"]\n";
    let done = f.reconfigure(&format!("{TIGHT}{other}")).unwrap();
    assert_eq!((done.rate_kept, done.rate_new), (1, 1));
    assert!(
        !f.admit(1, "a", "s").await.allowed,
        "an unchanged rule keeps its spent bucket"
    );

    let looser = TIGHT.replace("burst = 1", "burst = 2");
    let done = f.reconfigure(&looser).unwrap();
    assert_eq!((done.rate_kept, done.rate_new), (0, 1));
    assert!(
        f.admit(1, "a", "s").await.allowed,
        "a changed rule starts fresh"
    );
}

#[tokio::test]
async fn a_reload_leaves_an_open_breaker_open_and_keeps_an_operators_force() {
    let f = fixture("");
    f.open_breaker("s").await;
    f.admission
        .force_breaker("u", Some(Force::Open), f.clock.now())
        .unwrap();
    let done = f.reconfigure("[breaker]\nopen_for = \"5m\"\n").unwrap();
    assert_eq!(done.breakers, 2);
    let d = f.admit(1, "a", "s").await;
    assert!(!d.allowed, "still open after the reload: {:?}", d.votes);
    assert_eq!(d.decisive_vote().unwrap().guard, GuardKind::Breaker);
    assert!(!f.admit(1, "a", "u").await.allowed, "the force survived");
    let breakers = f.admission.breakers(Some("u"), f.clock.now());
    assert_eq!(breakers[0].1.phase, Phase::ForcedOpen);
}

#[tokio::test]
async fn an_admin_set_limit_survives_a_reload_that_changes_the_configured_limit() {
    let f = fixture("[budget]\nlimit = 10.0\n[budget.agents.a]\nlimit = 3.0\n");
    admin(
        &f,
        AdminKind::SetLimit {
            budget: "global".into(),
            limit: usd(5.0),
        },
    )
    .await
    .unwrap();
    let done = f
        .reconfigure("[budget]\nlimit = 20.0\n[budget.agents.a]\nlimit = 4.0\n")
        .unwrap();
    assert_eq!(done.admin_limits_kept, 1);
    assert_eq!(f.budget("global").limit, usd(5.0), "the admin's limit");
    assert_eq!(f.budget("agent:a").limit, usd(4.0), "the new config limit");
}

const WITH_A: &str = "[budget]\nlimit = 10.0\n[budget.agents.a]\nlimit = 3.0\n";
const WITHOUT_A: &str = "[budget]\nlimit = 10.0\n";

fn costing(dollars: f64) -> Outcome {
    Outcome {
        cost: Some(usd(dollars)),
        ..outcome(false)
    }
}

/// A budget taken out by one reload and put back by another is opened from
/// the ledger, as at a start: taking it out forgave nothing it had spent, and
/// what was spent while it was out was not its spending.
#[tokio::test]
async fn a_budget_removed_and_added_back_by_reloads_keeps_what_the_ledger_holds() {
    let f = fixture(WITH_A);
    let d = f.admit_cost(1, "a", "s", 2.0).await;
    f.report_with(d.reservation.unwrap(), costing(2.0))
        .await
        .unwrap();
    admin(
        &f,
        AdminKind::SetLimit {
            budget: "agent:a".into(),
            limit: usd(3.5),
        },
    )
    .await
    .unwrap();

    let done = f.reconfigure(WITHOUT_A).unwrap();
    assert_eq!((done.budgets_added, done.budgets_removed), (0, 1));
    assert!(f
        .admission
        .budgets(None, f.now())
        .iter()
        .all(|b| b.name != "agent:a"));
    let d = f.admit_cost(1, "a", "s", 2.5).await;
    assert!(d.allowed, "only the global budget applies: {:?}", d.votes);
    f.report_with(d.reservation.unwrap(), costing(2.5))
        .await
        .unwrap();

    let done = f.reconfigure(WITH_A).unwrap();
    assert_eq!((done.budgets_added, done.budgets_removed), (1, 0));
    let a = f.budget("agent:a");
    assert_eq!(
        (a.spent, a.reserved, a.limit),
        (usd(2.0), Usd::ZERO, usd(3.5)),
        "its balance and its admin-set limit, from the ledger"
    );
    assert_eq!(f.budget("global").spent, usd(4.5));
    assert!(
        !f.admit_cost(1, "a", "s", 1.6).await.allowed,
        "2 spent + 1.6 > 3.5"
    );
    let d = f.admit_cost(1, "a", "s", 1.5).await;
    assert!(d.allowed, "{:?}", d.votes);
    f.report_with(d.reservation.unwrap(), costing(1.0))
        .await
        .unwrap();
    assert_eq!(f.budget("agent:a").spent, usd(3.0));

    // Memory equals the ledger: a start with the same config opens the same.
    let f = f.restart();
    assert_eq!(f.budget("agent:a").spent, usd(3.0));
    assert_eq!(f.budget("global").spent, usd(5.5));
}

/// A budget put back by a reload holds again what the open reservations
/// made against it hold, so their reports give it back exactly; one made
/// while it was out holds nothing against it.
#[tokio::test]
async fn a_budget_added_back_holds_what_open_reservations_hold_against_it() {
    let f = fixture(WITH_A);
    let before = f.admit_cost(1, "a", "s", 1.5).await.reservation.unwrap();
    f.reconfigure(WITHOUT_A).unwrap();
    let during = f.admit_cost(1, "a", "s", 1.0).await.reservation.unwrap();
    assert_eq!(f.budget("global").reserved, usd(2.5));

    f.reconfigure(WITH_A).unwrap();
    assert_eq!(
        f.budget("agent:a").reserved,
        usd(1.5),
        "the hold made before it was taken out"
    );
    assert!(
        !f.admit_cost(1, "a", "s", 1.6).await.allowed,
        "1.5 held + 1.6 > 3"
    );
    f.report_with(before, costing(1.0)).await.unwrap();
    f.report_with(during, costing(1.0)).await.unwrap();
    let a = f.budget("agent:a");
    assert_eq!((a.spent, a.reserved), (usd(1.0), Usd::ZERO));
    let global = f.budget("global");
    assert_eq!((global.spent, global.reserved), (usd(2.0), Usd::ZERO));
    let f = f.restart();
    assert_eq!(f.budget("agent:a").spent, usd(1.0));
}

#[tokio::test]
async fn a_reloaded_quota_keeps_its_counters_and_open_reservations_their_usage() {
    let quota = "[[quotas]]\nname = \"q\"\nscope = \"agent\"\nlimit = 2\nwindow = \"day\"\n";
    let f = fixture(quota);
    let d = f.admit(1, "a", "s").await;
    assert!(d.allowed);
    // A new quota first: "q" moves to index 1.
    let other = "[[quotas]]\nname = \"p\"\nlimit = 100\nwindow = \"day\"\n";
    let done = f
        .reconfigure(&format!(
            "{other}{}",
            quota.replace("limit = 2", "limit = 3")
        ))
        .unwrap();
    assert_eq!((done.quotas_kept, done.quotas_new), (0, 2));
    f.admission.lock().abort(d.reservation.unwrap());
    let views = f.admission.quotas(Some("q"), f.now()).unwrap();
    assert!(
        views.iter().all(|v| v.used == 0),
        "the abort gave back to q, not p: {views:?}"
    );
    for _ in 0..3 {
        assert!(f.admit(1, "a", "s").await.allowed);
    }
    assert!(!f.admit(1, "a", "s").await.allowed, "the new limit of 3");
}

#[tokio::test]
async fn a_service_the_reloaded_config_no_longer_accepts_is_refused() {
    let f = fixture("");
    assert!(f.admit(1, "a", "gone").await.allowed);
    f.reconfigure("[daemon]\nallow_unknown_services = false\n[services.kept]\n")
        .unwrap();
    let err = f.admit_plan(1, "a", plan("gone")).await.unwrap_err();
    assert!(err.contains("unknown service \"gone\""), "{err}");
    assert!(f.admit(1, "a", "kept").await.allowed);
}

/// Admissions to two services, interleaved and repeated, each land on their
/// own service's breaker: the engine remembers the last admission's service
/// to skip its lookups, and must never hand one service's name to another.
#[tokio::test]
async fn interleaved_services_keep_their_own_breakers() {
    let f = fixture("");
    // Until a's breaker opens (the default trips within a few failures).
    for round in 0.. {
        assert!(round < 20, "a's breaker never opened");
        let a = f.admit(1, "x", "a").await;
        let again = f.admit(1, "x", "a").await;
        let b = f.admit(1, "x", "b").await;
        assert!(b.allowed, "round {round}: {b:?}");
        f.report(b.reservation.unwrap(), false).await;
        let (Some(a), Some(again)) = (a.reservation, again.reservation) else {
            break;
        };
        f.report(a, true).await;
        f.report(again, true).await;
    }
    let denied = f.admit(1, "x", "a").await;
    assert_eq!(
        denied.decisive_vote().map(|v| v.guard),
        Some(GuardKind::Breaker)
    );
    assert!(
        f.admit(1, "x", "b").await.allowed,
        "b's breaker heard only successes"
    );
    assert_eq!(
        f.phases(),
        vec![
            ("a".to_owned(), Phase::Open),
            ("b".to_owned(), Phase::Closed)
        ]
    );
}

#[tokio::test]
async fn a_report_after_a_reload_moved_its_services_breaker_reaches_that_breaker() {
    // Three services in the tables' order a, b, c; b's reservations remember
    // b's places (the second). A reload that forgets a moves b and c up one,
    // so the second place now holds c.
    let services = "[daemon]\nallow_unknown_services = false\n\
        [services.a]\n[services.b]\n[services.c]\n";
    let f = fixture(services);
    for service in ["a", "b", "c"] {
        let admitted = f.admit(1, "x", service).await;
        f.report(admitted.reservation.unwrap(), false).await;
    }
    let held: Vec<u64> = {
        let mut held = Vec::new();
        for _ in 0..5 {
            held.push(f.admit(1, "x", "b").await.reservation.unwrap());
        }
        held
    };
    f.reconfigure("[daemon]\nallow_unknown_services = false\n[services.b]\n[services.c]\n")
        .unwrap();
    for id in held {
        f.report(id, true).await;
    }
    assert_eq!(
        f.phases(),
        vec![
            ("b".to_owned(), Phase::Open),
            ("c".to_owned(), Phase::Closed)
        ],
        "b's five failures opened b's breaker, not c's"
    );
    // And an admission after the reload finds each service where it is now.
    assert!(f.admit(1, "x", "c").await.allowed);
    let denied = f.admit(1, "x", "b").await;
    assert_eq!(
        denied.decisive_vote().map(|v| v.guard),
        Some(GuardKind::Breaker)
    );
}

/// Reservations of session 1 for `agent`, one per cost: orphans once the
/// session ends.
async fn orphans_of(f: &Fixture, agent: &str, costs: &[f64]) -> Vec<u64> {
    let mut ids = Vec::new();
    for &cost in costs {
        ids.push(f.admit_cost(1, agent, "s", cost).await.reservation.unwrap());
    }
    ids
}

/// An orphan's settling charge files under `reservation:<id>`, a key a client
/// may also name in a report of its own. When it already did, the orphan's
/// batch rolls back as a duplicate; from then on its orphans settle one per
/// job: the duplicate closes without a second charge, the rest are charged
/// their estimates.
#[tokio::test]
async fn an_orphan_batch_with_a_key_charged_before_settles_orphan_by_orphan() {
    let f = fixture("[budget]\nlimit = 100.0\norphan_timeout = \"1s\"\n");
    let reported = f.admit_cost(2, "a", "s", 1.0).await.reservation.unwrap();
    let ids = orphans_of(&f, "a", &[2.0, 3.0, 4.0]).await;
    let taken = Some(reservation_key(ids[0]));
    f.finish(f.admission.report(reported, taken, outcome(false), f.now()))
        .await
        .unwrap();
    f.admission.end_session(1, f.now());
    f.clock.advance(S);

    let batches = f.admission.due_orphans(f.now());
    assert_eq!(batches.len(), 1, "one batch of three");
    for durable in batches {
        let _ = f.commit(durable).await;
    }
    let global = f.budget("global");
    assert_eq!(
        (global.spent, global.reserved),
        (usd(1.0), usd(9.0)),
        "the batch rolled back: nothing charged, the estimates still held"
    );

    let alone = f.admission.due_orphans(f.now());
    let sizes: Vec<usize> = alone.iter().map(|d| d.pending.len()).collect();
    assert_eq!(sizes, [1, 1, 1], "then one orphan per job");
    for durable in alone {
        let _ = f.commit(durable).await;
    }
    let global = f.budget("global");
    assert_eq!(
        (global.spent, global.reserved),
        (usd(1.0 + 3.0 + 4.0), Usd::ZERO),
        "the duplicate closed uncharged, the others charged once"
    );
    assert_eq!(f.admission.open_reservations(), 0);
}

/// A batch the ledger refuses (one orphan's charge would take its budget's
/// balance past the ledger's maximum) writes nothing; its orphans are then
/// tried one per job, so the one bad charge does not hold up the others.
#[tokio::test]
async fn a_refused_orphan_batch_is_tried_orphan_by_orphan() {
    let f = fixture(
        "[budget]\nlimit = 100.0\norphan_timeout = \"1s\"\n[budget.agents.a]\nlimit = 50.0\n",
    );
    let first = f.admit_cost(2, "a", "s", 1.0).await.reservation.unwrap();
    f.report(first, false).await;
    // Its next charge is refused by the ledger.
    f.fill_balance_behind_its_back("agent:a");
    orphans_of(&f, "a", &[2.0]).await;
    orphans_of(&f, "b", &[3.0]).await;
    f.admission.end_session(1, f.now());
    f.clock.advance(S);

    f.settle_orphans().await;
    assert_eq!(f.budget("global").spent, usd(1.0), "refused whole");
    f.settle_orphans().await;
    let global = f.budget("global");
    assert_eq!(
        (global.spent, global.reserved),
        (usd(1.0 + 3.0), usd(2.0)),
        "b's orphan charged alone; a's still refused, still held"
    );
    assert_eq!(f.admission.open_reservations(), 1);
}

/// Orphans whose settling the ledger fails stay open and held, nothing
/// counted in memory that the ledger lacks, and are settled at a later tick
/// once it writes again.
#[tokio::test]
async fn orphans_whose_settling_fails_are_settled_once_the_ledger_writes() {
    let f = fixture("[budget]\nlimit = 100.0\norphan_timeout = \"1s\"\n");
    orphans_of(&f, "a", &[2.0, 3.0]).await;
    f.admission.end_session(1, f.now());
    f.clock.advance(S);
    f.store.fail_writes(true);
    f.settle_orphans().await;
    let global = f.budget("global");
    assert_eq!(
        (global.spent, global.reserved, global.orphaned),
        (Usd::ZERO, usd(5.0), 2)
    );
    assert_eq!(f.admission.open_reservations(), 2);
    f.store.fail_writes(false);
    f.settle_orphans().await;
    let global = f.budget("global");
    assert_eq!(
        (global.spent, global.reserved, global.orphaned),
        (usd(5.0), Usd::ZERO, 0)
    );
    let f = f.restart();
    assert_eq!(f.budget("global").spent, usd(5.0), "as the ledger holds it");
}

/// A reload that opens a budget whose books were not read changes nothing:
/// the engine never opens a budget from nothing.
#[tokio::test]
async fn a_reload_without_the_books_of_a_budget_it_adds_is_refused() {
    let f = fixture(WITHOUT_A);
    let config = Arc::new(Config::from_toml(WITH_A).unwrap());
    let err = f
        .admission
        .reconfigure(
            config,
            &SharedClock::new(f.clock.clone()),
            f.now(),
            &LoadedBooks::default(),
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("budget.agents.a changed while the reload read")
            && err.contains("reload again"),
        "{err}"
    );
    assert!(f
        .admission
        .budgets(None, f.now())
        .iter()
        .all(|b| b.name != "agent:a"));
}

/// A budget given another period by a reload is opened from the ledger as
/// a start with the new config would open it, holding what its open
/// reservations hold.
#[tokio::test]
async fn a_reload_that_changes_a_budgets_period_opens_it_as_a_restart_would() {
    let f = fixture(WITH_A);
    let d = f.admit_cost(1, "a", "s", 1.0).await;
    f.report_with(d.reservation.unwrap(), costing(1.0))
        .await
        .unwrap();
    let held = f.admit_cost(1, "a", "s", 0.5).await.reservation.unwrap();
    let daily = format!("{WITH_A}reset = \"daily\"\n");
    let done = f.reconfigure(&daily).unwrap();
    assert_eq!(
        (
            done.budgets_added,
            done.budgets_removed,
            done.budgets_new_period
        ),
        (0, 0, 1)
    );
    let a = f.budget("agent:a");
    assert_eq!(a.reserved, usd(0.5));
    assert!(a.resets_in.is_some(), "daily now: {a:?}");
    f.clock.advance(DAY);
    f.report_with(held, costing(0.5)).await.unwrap();
    let spent = f.budget("agent:a").spent;
    assert_eq!(spent, usd(0.5), "filed under the new day");
    let f = f.restart_with(&daily);
    assert_eq!(f.budget("agent:a").spent, spent);
    assert_eq!(f.budget("agent:a").reserved, Usd::ZERO);
}

#[tokio::test]
async fn a_quota_whose_window_changed_starts_counting_afresh() {
    let quota = "[[quotas]]\nname = \"q\"\nscope = \"agent\"\nlimit = 1\nwindow = \"day\"\n";
    let f = fixture(quota);
    assert!(f.admit(1, "a", "s").await.allowed);
    assert!(!f.admit(1, "a", "s").await.allowed, "the day's one is used");
    f.reconfigure(&quota.replace("day", "hour")).unwrap();
    assert!(
        f.admit(1, "a", "s").await.allowed,
        "an hourly quota is not the daily one's count"
    );
}

#[tokio::test]
async fn a_reload_applies_new_breaker_settings_to_a_breaker_already_running() {
    let f = fixture("");
    let d = f.admit(1, "a", "s").await;
    f.report(d.reservation.unwrap(), false).await;
    f.reconfigure("[breaker]\nfailure_threshold = 1\n").unwrap();
    let d = f.admit(1, "a", "s").await;
    f.report(d.reservation.unwrap(), true).await;
    let d = f.admit(1, "a", "s").await;
    assert!(!d.allowed, "one failure opens it now: {:?}", d.votes);
    assert_eq!(d.decisive_vote().unwrap().guard, GuardKind::Breaker);
}

#[tokio::test]
async fn a_reload_applies_new_bulkhead_and_lease_limits_and_keeps_what_is_held() {
    let bulkhead = "[[bulkheads]]\nname = \"b\"\nmax_in_flight = 1\n";
    let leases = "[leases]\nmax_per_connection = 1\n";
    let f = fixture(&format!("{bulkhead}{leases}"));
    let held = f.admit(1, "a", "s").await;
    assert!(held.allowed);
    assert!(!f.admit(1, "a", "s").await.allowed, "the one slot is held");
    let holder = |session| crate::guard::lease::Holder {
        session,
        agent: "a".into(),
        pid: 1,
        uid: 0,
    };
    let acquire = |name: &str, session: u64| {
        f.admission.lease(
            name,
            crate::guard::lease::LeaseOp::Acquire { ttl: None },
            holder(session),
            f.clock.now(),
        )
    };
    acquire("x", 1).unwrap();
    assert!(acquire("y", 1).is_err(), "one lease a connection");

    f.reconfigure(&format!(
        "{}{}",
        bulkhead.replace('1', "2"),
        leases.replace('1', "2")
    ))
    .unwrap();
    assert!(f.admit(1, "a", "s").await.allowed, "a second slot");
    assert!(
        !f.admit(1, "a", "s").await.allowed,
        "the first is still counted"
    );
    acquire("y", 1).unwrap();
    assert!(acquire("z", 1).is_err(), "x is still held");
    f.report(held.reservation.unwrap(), false).await;
    assert!(f.admit(1, "a", "s").await.allowed, "its slot came back");
}

/// A half-open trial that timed out before a reload is forgotten, however
/// long the new `trial_timeout`: it was due under the old one, and its slot
/// goes to the next caller.
#[tokio::test]
async fn a_trial_timed_out_before_a_reload_frees_its_slot() {
    let config = "[breaker]\nopen_for = \"60s\"\nhalf_open_trials = 1\ntrial_timeout = \"10s\"\n";
    let f = fixture(config);
    f.open_breaker("s").await;
    f.clock.advance(61 * S);
    assert!(f.admit(1, "a", "s").await.allowed, "the one trial");
    assert!(!f.admit(1, "a", "s").await.allowed, "its slot is taken");
    f.clock.advance(11 * S);
    f.reconfigure(&config.replace("10s", "1m")).unwrap();
    let d = f.admit(1, "a", "s").await;
    assert!(d.allowed, "the stale trial's slot: {:?}", d.votes);
}
