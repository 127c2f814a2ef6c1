//! Breaker state machine, driven by explicit `now` values: no sleeping.

use super::*;

const S: Duration = Duration::from_secs(1);

fn breaker() -> Breaker {
    Breaker::new(BreakerConfig::default())
}

/// Admits and reports one call at `now`, returning the transition it caused.
fn call(b: &mut Breaker, failure: bool, now: Duration) -> Option<Transition> {
    b.advance(now);
    let pass = b.check(now).expect("admitted");
    b.record(Some(pass), failure, None, now)
}

fn open_it(b: &mut Breaker, now: Duration) {
    for _ in 0..5 {
        call(b, true, now);
    }
    assert_eq!(b.phase(), Phase::Open);
}

#[test]
fn opens_after_five_consecutive_failures_not_four() {
    let mut b = breaker();
    for _ in 0..4 {
        assert_eq!(call(&mut b, true, S), None);
    }
    assert_eq!(b.phase(), Phase::Closed);
    assert_eq!(
        call(&mut b, true, S),
        Some(Transition {
            from: Phase::Closed,
            to: Phase::Open
        })
    );
}

#[test]
fn a_success_resets_the_consecutive_count() {
    let mut b = breaker();
    for _ in 0..4 {
        call(&mut b, true, S);
    }
    call(&mut b, false, S);
    for _ in 0..4 {
        call(&mut b, true, S);
    }
    assert_eq!(b.phase(), Phase::Closed);
}

#[test]
fn open_denies_with_the_time_left_then_half_opens_lazily() {
    let mut b = breaker();
    open_it(&mut b, S);
    let denial = b.check(S + 10 * S).unwrap_err();
    assert_eq!(
        denial,
        BreakerDenial::Open {
            cause: Trip::Consecutive(5),
            retry_after: 50 * S
        }
    );
    assert_eq!(b.advance(S + 59 * S), None);
    assert_eq!(
        b.advance(S + 60 * S),
        Some(Transition {
            from: Phase::Open,
            to: Phase::HalfOpen
        })
    );
    assert_eq!(b.phase(), Phase::HalfOpen);
}

#[test]
fn half_open_admits_exactly_the_trial_allotment() {
    let mut b = breaker();
    open_it(&mut b, S);
    let now = 61 * S;
    b.advance(now);
    let passes: Vec<_> = (0..3).map(|_| b.check(now).unwrap()).collect();
    assert!(passes.iter().all(|p| matches!(p, Pass::Trial(_))));
    assert!(matches!(
        b.check(now),
        Err(BreakerDenial::TrialsBusy { trials: 3, .. })
    ));
}

#[test]
fn closes_after_three_successful_trials() {
    let mut b = breaker();
    open_it(&mut b, S);
    let now = 61 * S;
    b.advance(now);
    let passes: Vec<_> = (0..3).map(|_| b.check(now).unwrap()).collect();
    assert_eq!(b.record(Some(passes[0]), false, None, now), None);
    assert_eq!(b.record(Some(passes[1]), false, None, now), None);
    assert_eq!(
        b.record(Some(passes[2]), false, None, now),
        Some(Transition {
            from: Phase::HalfOpen,
            to: Phase::Closed
        })
    );
    assert_eq!(b.snapshot(now).consecutive_failures, 0);
}

#[test]
fn a_failed_trial_reopens_for_a_full_period() {
    let mut b = breaker();
    open_it(&mut b, S);
    let now = 61 * S;
    b.advance(now);
    let pass = b.check(now).unwrap();
    assert_eq!(
        b.record(Some(pass), true, None, now),
        Some(Transition {
            from: Phase::HalfOpen,
            to: Phase::Open
        })
    );
    assert_eq!(b.snapshot(now).open_remaining, Some(60 * S));
    assert_eq!(b.snapshot(now).times_opened, 2);
}

/// Reproducer for the "stuck in HALF_OPEN" family (resilience4j#903, #935, #2028).
#[test]
fn released_or_timed_out_trials_give_their_slot_back_without_counting() {
    let mut b = breaker();
    open_it(&mut b, S);
    let now = 61 * S;
    b.advance(now);
    let passes: Vec<_> = (0..3).map(|_| b.check(now).unwrap()).collect();
    b.release(passes[0]);
    let again = b.check(now).expect("released slot is reusable");
    assert_eq!(b.snapshot(now).trial_successes, 0);
    // The other trials are never reported: after trial_timeout they are forgotten.
    let later = now + 30 * S;
    b.advance(later);
    assert_eq!(b.snapshot(later).trials_in_flight, 0);
    // A late report of a forgotten trial counts neither way.
    assert_eq!(b.record(Some(passes[1]), true, None, later), None);
    assert_eq!(b.record(Some(again), true, None, later), None);
    assert_eq!(b.phase(), Phase::HalfOpen);
}

#[test]
fn trials_busy_suggests_coming_back_within_a_second() {
    let mut b = breaker();
    open_it(&mut b, S);
    let now = 61 * S;
    b.advance(now);
    for _ in 0..3 {
        b.check(now).unwrap();
    }
    match b.check(now + 29 * S + S / 2) {
        Err(BreakerDenial::TrialsBusy { retry_after, .. }) => assert_eq!(retry_after, S / 2),
        other => panic!("{other:?}"),
    }
}

#[test]
fn reports_without_a_trial_do_not_move_a_half_open_breaker() {
    let mut b = breaker();
    open_it(&mut b, S);
    b.advance(61 * S);
    assert_eq!(b.record(None, true, None, 61 * S), None);
    assert_eq!(b.record(Some(Pass::Normal), false, None, 61 * S), None);
    assert_eq!(b.phase(), Phase::HalfOpen);
}

#[test]
fn outcomes_reported_while_open_are_ignored() {
    let mut b = breaker();
    open_it(&mut b, S);
    for _ in 0..10 {
        assert_eq!(b.record(Some(Pass::Normal), false, None, 2 * S), None);
    }
    assert_eq!(b.phase(), Phase::Open);
}

#[test]
fn failure_rate_over_the_window_trips_after_min_calls() {
    let mut b = Breaker::new(BreakerConfig {
        failure_threshold: 0,
        window: 10,
        failure_rate: 50,
        min_calls: 10,
        ..BreakerConfig::default()
    });
    // Alternate: 50 % failures, never 5 in a row.
    for i in 0..9 {
        call(&mut b, i % 2 == 0, S);
    }
    assert_eq!(
        b.phase(),
        Phase::Closed,
        "below min_calls no rate is computed"
    );
    assert!(
        call(&mut b, false, S).is_some(),
        "10 calls, 5 failures = 50 %"
    );
    assert_eq!(b.phase(), Phase::Open);
}

#[test]
fn the_window_slides() {
    let mut b = Breaker::new(BreakerConfig {
        failure_threshold: 0,
        window: 4,
        failure_rate: 75,
        min_calls: 4,
        ..BreakerConfig::default()
    });
    for failure in [true, true, false, false, false, true, true] {
        call(&mut b, failure, S);
    }
    let snap = b.snapshot(S);
    assert_eq!((snap.window_calls, snap.window_failures), (4, 2));
    assert_eq!(b.phase(), Phase::Closed);
}

#[test]
fn slow_calls_count_as_failures() {
    let mut b = Breaker::new(BreakerConfig {
        slow_call: Some(2 * S),
        ..BreakerConfig::default()
    });
    for _ in 0..5 {
        let pass = b.check(S).unwrap();
        b.record(Some(pass), false, Some(3 * S), S);
    }
    assert_eq!(b.phase(), Phase::Open);
}

#[test]
fn forced_states() {
    let mut b = Breaker::new(BreakerConfig {
        force: Force::Open,
        ..BreakerConfig::default()
    });
    assert_eq!(b.check(S), Err(BreakerDenial::ForcedOpen));
    assert_eq!(b.phase(), Phase::ForcedOpen);

    let mut b = Breaker::new(BreakerConfig {
        force: Force::Closed,
        ..BreakerConfig::default()
    });
    for _ in 0..10 {
        call(&mut b, true, S);
    }
    assert_eq!(b.phase(), Phase::ForcedClosed);
    assert_eq!(b.snapshot(S).consecutive_failures, 10, "still recorded");

    let mut b = Breaker::new(BreakerConfig {
        force: Force::Disabled,
        ..BreakerConfig::default()
    });
    for _ in 0..10 {
        call(&mut b, true, S);
    }
    assert_eq!(b.check(S), Ok(Pass::Free));
    assert_eq!(b.snapshot(S).consecutive_failures, 0, "nothing recorded");
}

#[test]
fn reconfigure_keeps_an_open_breaker_open() {
    let mut b = breaker();
    open_it(&mut b, S);
    b.reconfigure(BreakerConfig {
        success_threshold: 1,
        ..BreakerConfig::default()
    });
    assert_eq!(b.phase(), Phase::Open);
}

#[test]
fn a_runtime_override_wins_over_the_config_and_survives_reconfigure() {
    let mut b = breaker();
    assert_eq!(
        b.set_override(Some(Force::Open)),
        Some(Transition {
            from: Phase::Closed,
            to: Phase::ForcedOpen
        })
    );
    assert_eq!(b.check(S), Err(BreakerDenial::ForcedOpen));
    // A reload that changes the config's force does not undo the operator's.
    b.reconfigure(BreakerConfig {
        force: Force::Disabled,
        ..BreakerConfig::default()
    });
    assert_eq!(b.phase(), Phase::ForcedOpen);
    assert_eq!(b.set_override(Some(Force::Open)), None, "no change");
    // Dropping the override hands the breaker back to its config.
    assert_eq!(
        b.set_override(None),
        Some(Transition {
            from: Phase::ForcedOpen,
            to: Phase::Disabled
        })
    );
    assert_eq!(b.check(S), Ok(Pass::Free));
}

#[test]
fn the_state_machine_keeps_its_state_while_forced() {
    let mut b = breaker();
    open_it(&mut b, S);
    b.set_override(Some(Force::Closed));
    assert_eq!(b.check(S), Ok(Pass::Normal));
    b.set_override(None);
    assert_eq!(b.phase(), Phase::Open, "still open underneath");
}
