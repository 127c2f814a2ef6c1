//! Admission semantics on a manual clock: all-or-nothing, connection-scoped release,
//! idempotent reports, shadow mode.

use super::*;
use crate::clock::{Clock, ManualClock};

const S: Duration = Duration::from_secs(1);

struct Fixture {
    admission: Admission,
    clock: ManualClock,
}

fn fixture(toml: &str) -> Fixture {
    let clock = ManualClock::new();
    let config = Arc::new(Config::from_toml(toml).expect("test config is valid"));
    let admission = Admission::new(config, &SharedClock::new(clock.clone())).unwrap();
    Fixture { admission, clock }
}

fn one() -> NonZeroU32 {
    NonZeroU32::MIN
}

impl Fixture {
    fn admit(&self, session: u64, agent: &str, service: &str) -> Decision {
        self.admission
            .admit(
                Caller { session, agent },
                Plan {
                    service,
                    units: one(),
                },
                self.clock.now(),
            )
            .expect("decided")
    }

    fn report(&self, reservation: u64, failure: bool) -> Settlement {
        self.admission
            .report(
                reservation,
                Outcome {
                    failure,
                    units: None,
                    latency: None,
                },
                self.clock.now(),
            )
            .expect("reported")
    }

    /// Five failures reported without admission open a default breaker.
    fn open_breaker(&self, service: &str) {
        for _ in 0..5 {
            let failure = Outcome {
                failure: true,
                units: None,
                latency: None,
            };
            self.admission
                .report_unreserved(service, failure, self.clock.now())
                .expect("reported");
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

#[test]
fn a_denial_by_a_later_rule_takes_nothing_from_earlier_ones() {
    let f = fixture(TWO_RULES);
    assert!(f.admit(1, "a", "s").allowed);
    for _ in 0..50 {
        let d = f.admit(1, "a", "s");
        assert!(!d.allowed);
        assert_eq!(d.decisive_vote().unwrap().rule, "tight");
    }
    // "roomy" barely refills; had the 50 denials taken from it, fewer than 99 of
    // these would pass.
    for n in 0..99 {
        f.clock.advance(S);
        let d = f.admit(1, "a", "s");
        assert!(
            d.allowed,
            "admission {n}: roomy must still have room: {:?}",
            d.votes
        );
    }
    f.clock.advance(S);
    let d = f.admit(1, "a", "s");
    assert_eq!(d.decisive_vote().unwrap().rule, "roomy");
}

#[test]
fn a_rate_denial_gives_back_the_trial_slot() {
    let f = fixture(
        "[breaker]\nhalf_open_trials = 1\n[[rate_limits]]\nname = \"tight\"\nrate = 1\nburst = 1\nscope = \"agent\"\n",
    );
    f.open_breaker("s");
    f.clock.advance(61 * S);
    // Agent "a" spends its only cell on another service, so its next admission for
    // "s" passes the breaker (taking the one trial slot) and then fails the rate.
    assert!(f.admit(1, "a", "other").allowed);
    let denied = f.admit(1, "a", "s");
    assert!(!denied.allowed);
    assert_eq!(
        denied.votes[0].reason,
        "circuit half-open: admitted as a trial call"
    );
    assert_eq!(denied.decisive_vote().unwrap().guard, Guard::Rate);
    // The trial slot must be free for agent "b".
    let trial = f.admit(2, "b", "s");
    assert!(trial.allowed, "{:?}", trial.votes);
}

#[test]
fn a_dropped_session_frees_trial_slots_without_counting() {
    let f = fixture("[breaker]\nhalf_open_trials = 2\nsuccess_threshold = 1\n");
    f.open_breaker("s");
    f.clock.advance(61 * S);
    assert!(f.admit(1, "a", "s").allowed);
    assert!(f.admit(1, "a", "s").allowed);
    assert!(!f.admit(2, "b", "s").allowed, "both trial slots are taken");
    assert_eq!(f.admission.release_session(1), 2);
    let snapshot = &f.admission.breakers(Some("s"), f.clock.now())[0].1;
    assert_eq!(
        snapshot.phase,
        Phase::HalfOpen,
        "a vanished trial is not a success"
    );
    assert_eq!(snapshot.trials_in_flight, 0);
    assert!(f.admit(2, "b", "s").allowed);
    assert_eq!(f.admission.open_reservations(), 1);
}

#[test]
fn a_repeated_report_is_acknowledged_once() {
    let f = fixture("");
    let d = f.admit(1, "a", "s");
    let id = d.reservation.unwrap();
    assert!(!f.report(id, true).duplicate);
    for _ in 0..10 {
        assert!(f.report(id, true).duplicate);
    }
    let snapshot = &f.admission.breakers(Some("s"), f.clock.now())[0].1;
    assert_eq!(snapshot.consecutive_failures, 1, "counted once");
    assert_eq!(
        f.admission.report(
            12345,
            Outcome {
                failure: false,
                units: None,
                latency: None
            },
            f.clock.now()
        ),
        Err(AdmissionError::UnknownReservation(12345))
    );
}

#[test]
fn a_report_after_the_session_dropped_counts_nowhere() {
    let f = fixture("");
    let id = f.admit(1, "a", "s").reservation.unwrap();
    f.admission.release_session(1);
    assert!(f.report(id, true).duplicate);
}

#[test]
fn an_open_breaker_denies_every_agent_with_the_time_left() {
    let f = fixture("");
    f.open_breaker("s");
    f.clock.advance(10 * S);
    for agent in ["a", "b", "c"] {
        let d = f.admit(7, agent, "s");
        assert!(!d.allowed);
        let vote = d.decisive_vote().unwrap();
        assert_eq!(vote.guard, Guard::Breaker);
        assert_eq!(vote.retry_after, Some(50 * S));
    }
    assert!(
        f.admit(7, "a", "other").allowed,
        "other services are unaffected"
    );
}

#[test]
fn shadow_mode_records_but_never_denies() {
    let f = fixture(
        "[daemon]\nmode = \"shadow\"\n[[rate_limits]]\nname = \"tight\"\nrate = 1\nburst = 1\n",
    );
    f.open_breaker("s");
    assert!(f.admit(1, "a", "s").allowed);
    let d = f.admit(1, "a", "s");
    assert!(d.allowed);
    assert!(d
        .votes
        .iter()
        .any(|v| !v.allow && v.shadow && v.guard == Guard::Breaker));
    assert!(d
        .votes
        .iter()
        .any(|v| !v.allow && v.shadow && v.guard == Guard::Rate));
}

#[test]
fn a_shadow_rule_votes_no_but_does_not_deny() {
    let f = fixture("[[rate_limits]]\nname = \"tight\"\nrate = 1\nburst = 1\nshadow = true\n");
    assert!(f.admit(1, "a", "s").allowed);
    let d = f.admit(1, "a", "s");
    assert!(d.allowed);
    assert!(!d.votes[1].allow && d.votes[1].shadow);
}

#[test]
fn unknown_services_and_caps() {
    let f = fixture("[daemon]\nallow_unknown_services = false\nmax_reservations_per_connection = 2\n[services.s]\n");
    let err = f
        .admission
        .admit(
            Caller {
                session: 1,
                agent: "a",
            },
            Plan {
                service: "t",
                units: one(),
            },
            f.clock.now(),
        )
        .unwrap_err();
    assert_eq!(err, AdmissionError::UnknownService("t".into()));
    f.admit(1, "a", "s");
    f.admit(1, "a", "s");
    let err = f
        .admission
        .admit(
            Caller {
                session: 1,
                agent: "a",
            },
            Plan {
                service: "s",
                units: one(),
            },
            f.clock.now(),
        )
        .unwrap_err();
    assert_eq!(err, AdmissionError::TooManyReservations(2));

    let f = fixture("[daemon]\nmax_services = 1\n");
    f.admit(1, "a", "s");
    let err = f
        .admission
        .admit(
            Caller {
                session: 1,
                agent: "a",
            },
            Plan {
                service: "t",
                units: one(),
            },
            f.clock.now(),
        )
        .unwrap_err();
    assert_eq!(err, AdmissionError::TooManyServices(1));
}

#[test]
fn reported_units_settle_weighted_limits() {
    let f = fixture("[[rate_limits]]\nname = \"tokens\"\nweight = \"units\"\nrate = 1000\nper = \"60s\"\nburst = 1000\n");
    let admit = |units| {
        f.admission
            .admit(
                Caller {
                    session: 1,
                    agent: "a",
                },
                Plan {
                    service: "s",
                    units: NonZeroU32::new(units).unwrap(),
                },
                f.clock.now(),
            )
            .unwrap()
    };
    let d = admit(1000);
    assert!(d.allowed);
    assert!(!admit(1).allowed);
    f.admission
        .report(
            d.reservation.unwrap(),
            Outcome {
                failure: false,
                units: Some(300),
                latency: None,
            },
            f.clock.now(),
        )
        .unwrap();
    assert!(admit(700).allowed, "700 unused tokens came back");
}

#[test]
fn an_operator_forces_a_breaker_for_every_agent() {
    let f = fixture("");
    let (snapshot, transition) = f
        .admission
        .force_breaker("s", Some(Force::Open), f.clock.now())
        .unwrap();
    assert_eq!(snapshot.phase, Phase::ForcedOpen);
    assert_eq!(transition.map(|t| t.to), Some(Phase::ForcedOpen));
    assert!(!f.admit(1, "a", "s").allowed);
    assert!(!f.admit(2, "b", "s").allowed);
    let (snapshot, _) = f.admission.force_breaker("s", None, f.clock.now()).unwrap();
    assert_eq!(snapshot.phase, Phase::Closed);
    assert!(f.admit(1, "a", "s").allowed);

    let f = fixture("[daemon]\nallow_unknown_services = false\n");
    assert_eq!(
        f.admission
            .force_breaker("nope", Some(Force::Open), f.clock.now())
            .unwrap_err(),
        AdmissionError::UnknownService("nope".into())
    );
}
