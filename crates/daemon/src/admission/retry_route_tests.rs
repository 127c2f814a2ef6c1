//! Retry advice, retry budgets, routes and the breaker's half-open race through
//! the whole admission (every guard, one lock), on a manual clock and a real
//! ledger in a temp dir.

use std::sync::Barrier;
use std::time::Duration;

use super::tests::{outcome, plan};
use super::*;
use crate::clock::{Clock, ManualClock};
use crate::guard::breaker::Phase;
use crate::guard::retry::Why;
use crate::money::Usd;
use crate::protocol::GuardKind;
use crate::store::Store;

const S: Duration = Duration::from_secs(1);

struct Fixture {
    admission: Arc<Admission>,
    clock: ManualClock,
    store: Store,
    _dir: tempfile::TempDir,
}

fn fixture(toml: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let config = Arc::new(Config::from_toml(toml).expect("test config is valid"));
    let (store, snapshot) = Store::open(dir.path()).unwrap();
    let admission = Admission::new(
        config,
        &SharedClock::new(clock.clone()),
        &snapshot,
        Alerts::disabled(),
    )
    .unwrap();
    Fixture {
        admission: Arc::new(admission),
        clock,
        store,
        _dir: dir,
    }
}

fn failure(retryable: bool) -> Outcome {
    Outcome {
        retryable,
        ..outcome(true)
    }
}

fn caller(session: u64) -> Caller<'static> {
    Caller {
        session,
        agent: "a",
        pid: 0,
        uid: 0,
    }
}

impl Fixture {
    fn now(&self) -> Moment {
        Moment {
            mono: self.clock.now(),
            unix: self.clock.unix(),
        }
    }

    async fn admit(&self, session: u64, plan: Plan<'_>) -> Decision {
        match self
            .admission
            .admit(caller(session), plan, self.now())
            .unwrap()
        {
            Admitted::Decided(decision) => decision,
            Admitted::Durable(durable) => self
                .admission
                .commit(&self.store, &SharedClock::new(self.clock.clone()), durable)
                .await
                .unwrap(),
        }
    }

    async fn report(&self, id: u64, outcome: Outcome) -> Settlement {
        match self
            .admission
            .report(id, None, outcome, self.now())
            .unwrap()
        {
            Reporting::Settled(settlement) => settlement,
            Reporting::Durable(durable) => self
                .admission
                .commit(&self.store, &SharedClock::new(self.clock.clone()), durable)
                .await
                .unwrap(),
            Reporting::Lookup { .. } => panic!("in memory"),
        }
    }

    /// Fails `service` five times in a row: its breaker opens.
    async fn open(&self, service: &str) {
        for _ in 0..5 {
            let d = self.admit(1, plan(service)).await;
            self.report(d.reservation.unwrap(), failure(false)).await;
        }
        assert_eq!(self.phase(service), Phase::Open);
    }

    fn phase(&self, service: &str) -> Phase {
        self.admission.breakers(Some(service), self.clock.now())[0]
            .1
            .phase
    }

    fn route(&self, route: &str, cost: Option<f64>) -> Routed {
        let plan = Plan {
            route: Some(route),
            cost: cost.map(|c| Usd::from_dollars(c).unwrap()),
            ..plan("")
        };
        self.admission
            .route(caller(1), plan, None, self.now())
            .unwrap()
    }
}

const TRIALS: &str =
    "[breaker]\nhalf_open_trials = 4\nopen_for = \"60s\"\n[budget]\nenabled = false\n";

/// resilience4j#1432: calls arriving together at the instant the breaker
/// half-opens must not all get in. 100 threads admit at once, exactly at the
/// end of the open period: exactly `half_open_trials` are let through.
#[tokio::test]
async fn exactly_the_trial_slots_get_through_at_the_instant_it_half_opens() {
    let f = fixture(TRIALS);
    f.open("svc").await;
    f.clock.advance(60 * S);
    let now = f.now();
    let barrier = Arc::new(Barrier::new(100));
    let threads: Vec<_> = (0..100u64)
        .map(|n| {
            let admission = Arc::clone(&f.admission);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                match admission.admit(caller(100 + n), plan("svc"), now).unwrap() {
                    Admitted::Decided(decision) => decision,
                    Admitted::Durable(_) => panic!("no budget, nothing durable"),
                }
            })
        })
        .collect();
    let decisions: Vec<Decision> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let allowed = decisions.iter().filter(|d| d.allowed).count();
    assert_eq!(allowed, 4, "exactly half_open_trials trials");
    let transitions: usize = decisions.iter().map(|d| d.transitions.len()).sum();
    assert_eq!(transitions, 1, "one of them saw Open → HalfOpen");
    for denied in decisions.iter().filter(|d| !d.allowed) {
        let vote = denied.decisive_vote().unwrap();
        assert_eq!(vote.guard, GuardKind::Breaker);
        assert!(vote
            .reason
            .to_string()
            .contains("all 4 trial calls are in flight"));
    }
    let snapshot = &f.admission.breakers(Some("svc"), now.mono)[0].1;
    assert_eq!(
        (snapshot.phase, snapshot.trials_in_flight),
        (Phase::HalfOpen, 4)
    );
}

#[tokio::test]
async fn a_retryable_failure_gets_backoff_then_the_breakers_time_then_give_up() {
    let f = fixture("[budget]\nenabled = false\n");
    let d = f.admit(1, plan("svc")).await;
    let first = f.report(d.reservation.unwrap(), failure(true)).await;
    let advice = first.advice.expect("advice for a retryable failure");
    assert!(advice.retry);
    assert_eq!(advice.attempt, 2);
    let after = advice.after.unwrap();
    assert!(after >= Duration::from_millis(80) && after <= Duration::from_millis(120));
    assert_eq!(first.advised_service, "svc");

    // The retry is admitted (redeeming the advice) and carries its attempt
    // into the report: the third attempt is the last.
    let retry = f
        .admit(
            1,
            Plan {
                attempt: 2,
                ..plan("svc")
            },
        )
        .await;
    assert!(retry.allowed);
    let vote = retry
        .votes
        .iter()
        .find(|v| v.guard == GuardKind::Retry)
        .unwrap();
    assert_eq!(vote.reason.to_string(), "a retry the daemon advised");
    let second = f.report(retry.reservation.unwrap(), failure(true)).await;
    assert_eq!(second.advice.as_ref().unwrap().attempt, 3);
    let last = f
        .admit(
            1,
            Plan {
                attempt: 3,
                ..plan("svc")
            },
        )
        .await;
    let third = f.report(last.reservation.unwrap(), failure(true)).await;
    let advice = third.advice.unwrap();
    assert!(!advice.retry);
    assert!(matches!(
        advice.why,
        Why::AttemptsUsed {
            attempt: 3,
            attempts: 3
        }
    ));

    // Not retryable, or a success: no advice.
    let d = f.admit(1, plan("svc")).await;
    assert!(f
        .report(d.reservation.unwrap(), failure(false))
        .await
        .advice
        .is_none());

    // The failure that opens the breaker is told to wait until it half-opens.
    let d = f.admit(1, plan("svc")).await;
    let opening = f.report(d.reservation.unwrap(), failure(true)).await;
    assert_eq!(opening.phase, Some(Phase::Open));
    let advice = opening.advice.unwrap();
    assert!(advice.retry);
    assert_eq!(advice.after, Some(60 * S));
    assert!(matches!(advice.why, Why::BreakerOpen { .. }));
    // A report without a reservation, 20 s later: 40 s left.
    f.clock.advance(20 * S);
    let unreserved = f
        .admission
        .report_unreserved("a", "svc", None, failure(true), f.now())
        .unwrap();
    let Reporting::Settled(settled) = unreserved else {
        panic!("nothing to charge")
    };
    assert_eq!(settled.advice.unwrap().after, Some(40 * S));
}

#[tokio::test]
async fn a_retry_beyond_the_budget_is_denied_at_admission_and_changes_nothing() {
    let f = fixture("[budget]\nenabled = false\n[retry]\nbudget_min_retries = 1\n");
    let first = f
        .admit(
            1,
            Plan {
                attempt: 2,
                ..plan("svc")
            },
        )
        .await;
    assert!(first.allowed, "the floor lets one retry through");
    let denied = f
        .admit(
            1,
            Plan {
                attempt: 2,
                ..plan("svc")
            },
        )
        .await;
    assert!(!denied.allowed);
    let vote = denied.decisive_vote().unwrap();
    assert_eq!((vote.guard, &*vote.rule), (GuardKind::Retry, "svc"));
    assert!(
        vote.reason.to_string().starts_with("retry budget spent"),
        "{}",
        vote.reason
    );
    assert!(vote.retry_after.is_some());
    assert_eq!(
        f.admission.retry_budget("svc", f.clock.now()),
        Some((1, 1, 1, 0))
    );
    // Reported, the retry is no longer in flight: the floor has room again.
    f.report(first.reservation.unwrap(), failure(false)).await;
    assert!(
        f.admit(
            1,
            Plan {
                attempt: 2,
                ..plan("svc")
            }
        )
        .await
        .allowed
    );
}

const ROUTES: &str = r#"
[daemon]
allow_unknown_services = false
[services.primary]
[services.secondary]
[services.tertiary]
[budget]
limit = 10.0
[budget.services.secondary]
limit = 1.0
[[rate_limits]]
name = "tertiary"
rate = 1
per = "1h"
burst = 1
services = ["tertiary"]
[[routes]]
name = "llm"
chain = ["primary", "secondary", "tertiary"]
"#;

#[tokio::test]
async fn a_route_skips_an_open_breaker_and_a_price_that_does_not_fit() {
    let f = fixture(ROUTES);
    let routed = f.route("llm", Some(0.5));
    assert_eq!(routed.service.as_deref(), Some("primary"));
    assert!(routed.skipped.is_empty());

    f.open("primary").await;
    let routed = f.route("llm", Some(0.5));
    assert_eq!(routed.service.as_deref(), Some("secondary"));
    assert_eq!(routed.skipped.len(), 1);
    assert_eq!(routed.skipped[0].0, "primary");
    assert_eq!(routed.skipped[0].1.guard, GuardKind::Breaker);
    assert_eq!(routed.skipped[0].1.retry_after, Some(60 * S));

    // $2 does not fit secondary's $1 budget: tertiary.
    let routed = f.route("llm", Some(2.0));
    assert_eq!(routed.service.as_deref(), Some("tertiary"));
    let skips: Vec<_> = routed
        .skipped
        .iter()
        .map(|(s, v)| (s.as_str(), v.guard))
        .collect();
    assert_eq!(
        skips,
        [
            ("primary", GuardKind::Breaker),
            ("secondary", GuardKind::Budget)
        ]
    );

    // Routing took nothing: tertiary's one-call rate limit still has its call,
    // and no budget holds anything.
    for _ in 0..3 {
        assert_eq!(
            f.route("llm", Some(2.0)).service.as_deref(),
            Some("tertiary")
        );
    }
    let global = f.admission.budgets(None, f.now());
    assert!(global.iter().all(|b| b.reserved == Usd::ZERO));

    // Admit by route: the same choice, taken, and the chain falls through as
    // each is used up.
    let d = f
        .admit(
            1,
            Plan {
                route: Some("llm"),
                cost: Some(Usd::from_dollars(2.0).unwrap()),
                ..plan("")
            },
        )
        .await;
    assert!(d.allowed);
    assert_eq!(d.service.as_deref(), Some("tertiary"));
    assert_eq!(d.skipped.len(), 2);
    let routed = f.route("llm", Some(2.0));
    assert_eq!(routed.service, None, "tertiary's rate limit is used now");
    assert_eq!(routed.skipped.len(), 3);
    assert_eq!(routed.skipped[2].1.guard, GuardKind::Rate);
    let denied = f
        .admit(
            1,
            Plan {
                route: Some("llm"),
                cost: Some(Usd::from_dollars(2.0).unwrap()),
                ..plan("")
            },
        )
        .await;
    assert!(!denied.allowed);
    assert_eq!(
        denied.service.as_deref(),
        Some("tertiary"),
        "the last one tried"
    );
    assert_eq!(denied.decisive_vote().unwrap().guard, GuardKind::Rate);
    assert_eq!(denied.skipped.len(), 2);
}

#[tokio::test]
async fn routes_are_named_in_the_config_and_checked() {
    let f = fixture(ROUTES);
    let err = f
        .admission
        .route(
            caller(1),
            Plan {
                route: Some("nope"),
                ..plan("")
            },
            None,
            f.now(),
        )
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "no route named \"nope\"; routes are the [[routes]] of the config: llm"
    );
    // A chain given in the request, with an undeclared service.
    let chain = ["primary".to_owned(), "other".to_owned()];
    let err = f
        .admission
        .route(caller(1), plan(""), Some(&chain[..]), f.now())
        .unwrap_err();
    assert!(matches!(err, AdmissionError::UnknownService(ref s) if s == "other"));

    let bad = |toml: &str| Config::from_toml(toml).unwrap_err().to_string();
    assert_eq!(
        bad("[[routes]]\nname = \"r\"\nchain = []\n"),
        "routes[0].chain: is empty; list the services to try, in order of preference (e.g. chain = [\"primary\", \"fallback\"])"
    );
    assert!(bad(
        "[[routes]]\nname = \"r\"\nchain = [\"a\"]\n[[routes]]\nname = \"r\"\nchain = [\"b\"]\n"
    )
    .starts_with("routes[1].name: \"r\" is used by an earlier route"));
    assert!(bad(
        "[daemon]\nallow_unknown_services = false\n[[routes]]\nname = \"r\"\nchain = [\"a\"]\n"
    )
    .starts_with("routes[0].chain[0]: service \"a\" is not declared"));
    assert!(bad("[[routes]]\nname = \"r\"\nchain = [\"a\", \"a\"]\n")
        .starts_with("routes[0].chain[1]: service \"a\" is already earlier"));
    assert!(bad("[retry]\njitter = 101\n").starts_with("retry.jitter: must be a percentage"));
    assert!(
        bad("[services.s.retry]\nmax = \"10ms\"\n").starts_with("services.s.retry.max: is 10ms")
    );
    assert!(bad("[retry]\nmultiplier = 0.5\n").starts_with("retry.multiplier:"));
    assert!(bad("[retry]\nbudget_percent = 0\nbudget_min_retries = 0\n")
        .starts_with("retry.budget_percent: and budget_min_retries are both 0"));
    // Per service, inheriting [retry].
    let config =
        Config::from_toml("[retry]\nattempts = 5\n[services.s.retry]\ninitial = \"1s\"\n").unwrap();
    let s = config.retry_for("s");
    assert_eq!((s.attempts, s.initial), (5, S));
    assert_eq!(
        config.retry_for("other").initial,
        Duration::from_millis(100)
    );
}

/// A reload reaches the retry policy of a service already advised.
#[tokio::test]
async fn a_reload_applies_new_retry_settings_to_a_service_already_advised() {
    let f = fixture("[budget]\nenabled = false\n");
    let d = f.admit(1, plan("svc")).await;
    let first = f.report(d.reservation.unwrap(), failure(true)).await;
    assert!(first.advice.unwrap().retry, "three attempts by default");
    let config = Config::from_toml("[budget]\nenabled = false\n[retry]\nattempts = 1\n").unwrap();
    f.admission
        .reconfigure(
            Arc::new(config),
            &SharedClock::new(f.clock.clone()),
            f.now(),
            &super::LoadedBooks::default(),
        )
        .unwrap();
    let d = f.admit(1, plan("svc")).await;
    let advice = f
        .report(d.reservation.unwrap(), failure(true))
        .await
        .advice
        .unwrap();
    assert!(!advice.retry, "one attempt now: {advice:?}");
}
