//! The retry policy and the retry budget on a manual clock (time is the `now`
//! handed in): backoff with jitter and cap, attempts, Retry-After, the
//! breaker, and the budget's ratio, floor, promises and undo.

use std::num::NonZeroU32;

use super::*;
use crate::clock::Moment;
use crate::guard::{Guard, TakenList, Votes};
use crate::money::Usd;

const MS: Duration = Duration::from_millis(1);
const S: Duration = Duration::from_secs(1);

fn ask(attempt: u32) -> Ask {
    Ask {
        attempt,
        upstream_after: None,
    }
}

fn budget() -> ServiceRetries {
    ServiceRetries::new(Arc::from("svc"), RetryConfig::default())
}

fn call(attempt: u32, now: Duration) -> Call<'static> {
    Call {
        agent: "a",
        service: "svc",
        model: None,
        units: NonZeroU32::MIN,
        estimate: Usd::ZERO,
        now: Moment { mono: now, unix: 0 },
        shadow_all: false,
        content: None,
        attempt,
        session: 1,
        pid: 0,
        uid: 0,
        lease: None,
        waiter: None,
        places: crate::guard::Places::default(),
    }
}

fn retries() -> Retries {
    let mut retries = Retries::new(Jitter::new(7));
    retries.get_or_insert("svc", RetryConfig::default);
    retries
}

/// What a check voted and took.
struct Out {
    votes: Votes,
    taken: TakenList,
}

/// Runs the guard's check alone: the verdict, the votes, what it took.
fn check(retries: &mut Retries, attempt: u32, now: Duration) -> (Verdict, Out) {
    let mut votes = Votes::new();
    let mut out = Checked::new(&mut votes);
    let verdict = retries.check(&call(attempt, now), &mut out);
    let taken = std::mem::take(&mut out.taken);
    (verdict, Out { votes, taken })
}

fn admit(retries: &mut Retries, attempt: u32, now: Duration) -> Verdict {
    check(retries, attempt, now).0
}

fn state(retries: &Retries, now: Duration) -> (u32, u32, u32, usize) {
    let b = retries.get("svc").unwrap();
    let (calls, retried) = b.totals(now);
    (calls, retried, b.in_flight(), b.promised())
}

#[test]
fn jitter_stays_within_twenty_percent_either_way_and_uses_the_range() {
    let config = RetryConfig::default();
    let mut jitter = Jitter::new(42);
    for attempt in 1..=6 {
        let base = 0.1 * 2f64.powi(attempt as i32 - 1);
        let (mut lo, mut hi) = (f64::MAX, 0f64);
        for _ in 0..10_000 {
            let wait = config.backoff(attempt, jitter.unit()).as_secs_f64();
            assert!(
                wait >= base * 0.8 - 1e-9 && wait <= base * 1.2 + 1e-9,
                "attempt {attempt}: {wait} outside ±20 % of {base}"
            );
            lo = lo.min(wait);
            hi = hi.max(wait);
        }
        assert!(
            lo < base * 0.82 && hi > base * 1.18,
            "spread {lo}..{hi} of {base}"
        );
    }
    // The ends of the unit interval map to the ends of the spread.
    assert_eq!(config.backoff(1, 0.0), 80 * MS);
    assert_eq!(config.backoff(1, 0.5), 100 * MS);
    assert_eq!(config.backoff(2, 0.5), 200 * MS);
    assert_eq!(config.backoff(3, 0.5), 400 * MS);
}

#[test]
fn the_wait_is_capped_at_max_even_when_the_power_overflows() {
    let config = RetryConfig::default();
    // 0.1 × 2^9 = 51.2 s: capped.
    for unit in [0.0, 0.5, 0.999] {
        let wait = config.backoff(10, unit);
        assert!(wait <= 30 * S, "{wait:?}");
    }
    assert_eq!(config.backoff(10, 0.5), 30 * S);
    assert_eq!(config.backoff(u32::MAX, 0.3), 30 * S, "2^huge is infinite");
    // Just below the cap, jitter up is cut at the cap, jitter down is kept.
    let near = RetryConfig {
        max: Duration::from_millis(450),
        ..RetryConfig::default()
    };
    assert_eq!(near.backoff(3, 0.999), Duration::from_millis(450));
    assert_eq!(near.backoff(3, 0.0), Duration::from_millis(320));
}

#[test]
fn three_attempts_means_two_retries_then_give_up() {
    let mut b = budget();
    let first = b.advise(ask(1), BreakerView::Admits, 0.5, S);
    assert!(first.retry);
    assert_eq!((first.after, first.attempt), (Some(100 * MS), 2));
    assert_eq!(
        first.why,
        Why::Backoff {
            next: 2,
            retries: 2
        }
    );
    let second = b.advise(ask(2), BreakerView::Admits, 0.5, S);
    assert!(second.retry);
    assert_eq!((second.after, second.attempt), (Some(200 * MS), 3));
    let third = b.advise(ask(3), BreakerView::Admits, 0.5, S);
    assert!(!third.retry);
    assert_eq!(third.after, None);
    assert_eq!(
        third.why,
        Why::AttemptsUsed {
            attempt: 3,
            attempts: 3
        }
    );
    assert_eq!(
        third.why.to_string(),
        "attempt 3 was the last of 3: give up"
    );
    // Attempts set to 1: no retries at all.
    let mut once = ServiceRetries::new(
        Arc::from("svc"),
        RetryConfig {
            attempts: 1,
            ..RetryConfig::default()
        },
    );
    assert!(!once.advise(ask(1), BreakerView::Admits, 0.5, S).retry);
}

#[test]
fn the_upstreams_retry_after_is_never_undercut() {
    let mut b = budget();
    let longer = Ask {
        attempt: 1,
        upstream_after: Some(5 * S),
    };
    let advice = b.advise(longer, BreakerView::Admits, 0.999, S);
    assert_eq!(advice.after, Some(5 * S));
    assert_eq!(
        advice.why,
        Why::UpstreamAfter {
            next: 2,
            retries: 2
        }
    );
    // Beyond the cap too: Retry-After is a fact, not a guess.
    let beyond = Ask {
        attempt: 1,
        upstream_after: Some(90 * S),
    };
    assert_eq!(
        b.advise(beyond, BreakerView::Admits, 0.5, S).after,
        Some(90 * S)
    );
    // A shorter one leaves the backoff in force.
    let shorter = Ask {
        attempt: 2,
        upstream_after: Some(10 * MS),
    };
    let advice = b.advise(shorter, BreakerView::Admits, 0.5, S);
    assert_eq!(advice.after, Some(200 * MS));
    assert!(matches!(advice.why, Why::Backoff { .. }));
}

#[test]
fn an_open_breaker_defers_the_retry_until_it_half_opens() {
    let mut b = budget();
    let advice = b.advise(ask(1), BreakerView::OpenFor(42 * S), 0.5, S);
    assert!(advice.retry);
    assert_eq!(advice.after, Some(42 * S));
    assert_eq!(
        advice.why,
        Why::BreakerOpen {
            next: 2,
            retries: 2
        }
    );
    assert_eq!(
        advice.why.to_string(),
        "retry 2 of at most 2 once the circuit half-opens"
    );
    // An upstream Retry-After longer than the open period still wins.
    let longer = Ask {
        attempt: 1,
        upstream_after: Some(50 * S),
    };
    assert_eq!(
        b.advise(longer, BreakerView::OpenFor(42 * S), 0.5, S).after,
        Some(50 * S)
    );
    let forced = b.advise(ask(1), BreakerView::ForcedOpen, 0.5, S);
    assert!(!forced.retry);
    assert_eq!(forced.why, Why::ForcedOpen);
}

#[test]
fn with_no_traffic_the_floor_allows_three_retries_at_once() {
    let mut b = budget();
    let t = 100 * S;
    for n in 0..3 {
        assert!(
            b.advise(ask(1), BreakerView::Admits, 0.5, t).retry,
            "retry {n}"
        );
    }
    let fourth = b.advise(ask(1), BreakerView::Admits, 0.5, t);
    assert!(!fourth.retry);
    let Why::Budget(spent) = fourth.why else {
        panic!("{fourth:?}")
    };
    assert_eq!(
        (spent.used, spent.calls, spent.at_once, spent.floor),
        (3, 0, 3, 3)
    );
    assert!(fourth
        .why
        .to_string()
        .starts_with("retry budget spent: 3 retries"));
    // Promises expire `budget_window` after the advised wait: room again.
    let later = t + 200 * MS + 10 * S;
    assert!(b.advise(ask(1), BreakerView::Admits, 0.5, later).retry);
}

#[test]
fn retries_may_be_a_fifth_of_the_recent_calls() {
    let mut r = retries();
    let t = 100 * S;
    for _ in 0..100 {
        assert_eq!(admit(&mut r, 1, t), Verdict::Allow);
    }
    assert_eq!(state(&r, t), (100, 0, 0, 0));
    let mut advised = 0;
    while r
        .advise("svc", ask(1), BreakerView::Admits, t)
        .unwrap()
        .retry
    {
        advised += 1;
        assert!(advised <= 100, "the budget never ran out");
    }
    assert_eq!(advised, 20, "20 % of 100 calls");

    // Every advised retry is admitted (redeeming its promise); retries are
    // calls too, so a few more fit before one is denied with the figures and
    // when to come back.
    for _ in 0..20 {
        let (verdict, out) = check(&mut r, 2, t);
        assert_eq!(verdict, Verdict::Allow);
        assert_eq!(out.votes[0].guard, GuardKind::Retry);
        assert_eq!(
            out.votes[0].reason.to_string(),
            "a retry the daemon advised"
        );
    }
    assert_eq!(state(&r, t), (120, 20, 20, 0));
    let mut more = 0;
    let out = loop {
        let (verdict, out) = check(&mut r, 2, t);
        if verdict == Verdict::Deny {
            break out;
        }
        assert_eq!(
            out.votes[0].reason.to_string(),
            "a retry within the service's retry budget"
        );
        more += 1;
    };
    assert_eq!(
        more, 4,
        "24 retries of 124 calls fit 20 %, 25 of 125 would not"
    );
    let vote = &out.votes[0];
    assert_eq!(
        (vote.guard, vote.allow, &*vote.rule),
        (GuardKind::Retry, false, "svc")
    );
    let spent = vote
        .reason
        .denial::<BudgetSpent>()
        .expect("a budget denial");
    assert_eq!((spent.used, spent.calls, spent.percent), (24, 124, 20));
    // The retries were counted in the slot of t, which leaves the window 10 s on.
    let wait = vote.retry_after.expect("when to come back");
    assert!(wait > 9 * S && wait <= 10 * S, "{wait:?}");
    assert!(out.taken.is_empty(), "a denial takes nothing");

    // Once the window has passed, the calls and retries are forgotten; the
    // retries still in flight hold the floor.
    let later = t + wait;
    assert_eq!(state(&r, later), (0, 0, 24, 0));
    assert_eq!(
        admit(&mut r, 2, later),
        Verdict::Deny,
        "24 in flight ≥ floor 3"
    );
}

#[test]
fn first_calls_are_never_denied_and_take_only_a_count() {
    let mut r = retries();
    let t = 5 * S;
    // Spend the floor with promises, then first calls still pass.
    for _ in 0..3 {
        assert!(
            r.advise("svc", ask(1), BreakerView::Admits, t)
                .unwrap()
                .retry
        );
    }
    let (verdict, out) = check(&mut r, 1, t);
    assert_eq!(verdict, Verdict::Allow);
    assert!(out.votes.is_empty(), "a first call gets no retry vote");
    assert_eq!(out.taken.len(), 1);
}

#[test]
fn retries_in_flight_hold_the_floor_until_they_end() {
    let mut r = retries();
    let t = 3 * S;
    let mut held = Vec::new();
    for _ in 0..3 {
        let (verdict, mut out) = check(&mut r, 2, t);
        assert_eq!(verdict, Verdict::Allow);
        held.push(out.taken.pop().unwrap());
    }
    assert_eq!(state(&r, t).2, 3);
    assert_eq!(admit(&mut r, 3, t), Verdict::Deny);
    // One is reported: its place is free again; reporting twice changes nothing.
    let mut first = held.pop().unwrap();
    let report = Report {
        failure: true,
        units: None,
        latency: None,
        now: Moment { mono: t, unix: 0 },
    };
    r.settle(&mut *first.what, &report, &mut Settled::default());
    r.settle(&mut *first.what, &report, &mut Settled::default());
    assert_eq!(state(&r, t).2, 2);
    assert_eq!(admit(&mut r, 2, t), Verdict::Allow);
    // A disconnect ends one too.
    let mut second = held.pop().unwrap();
    assert_eq!(r.disconnect(&mut *second.what), Keep::No);
    assert_eq!(state(&r, t).2, 2);
}

#[test]
fn undo_puts_back_the_count_the_retry_and_the_promise() {
    let mut r = retries();
    let t = 7 * S;
    assert!(
        r.advise("svc", ask(1), BreakerView::Admits, t)
            .unwrap()
            .retry
    );
    let before = state(&r, t);
    assert_eq!(before, (0, 0, 0, 1));
    let (verdict, mut out) = check(&mut r, 2, t);
    assert_eq!(verdict, Verdict::Allow);
    assert_eq!(state(&r, t), (1, 1, 1, 0));
    r.undo(&mut *out.taken.pop().unwrap().what);
    assert_eq!(state(&r, t), before);
    // Aborted later (a failed commit), after the slot moved on: the retry is
    // no longer in flight and the promise is back; the old slot is gone anyway.
    let (_, mut out) = check(&mut r, 2, t);
    let mut taken = out.taken.pop().unwrap();
    r.abort(&mut *taken.what);
    assert_eq!(state(&r, t), before);
}

#[test]
fn the_floor_and_ratio_follow_the_settings() {
    let config = RetryConfig {
        budget_percent: 50,
        budget_min_retries: 0,
        budget_window: S,
        ..RetryConfig::default()
    };
    let mut r = Retries::new(Jitter::new(1));
    r.get_or_insert("svc", || config.clone());
    let t = 10 * S;
    assert!(
        !r.advise("svc", ask(1), BreakerView::Admits, t)
            .unwrap()
            .retry,
        "no floor, no calls: no retry"
    );
    for _ in 0..4 {
        admit(&mut r, 1, t);
    }
    let advised = (0..10)
        .filter(|_| {
            r.advise("svc", ask(1), BreakerView::Admits, t)
                .unwrap()
                .retry
        })
        .count();
    assert_eq!(advised, 2, "half of 4 calls");
    // A shorter window forgets sooner: 1 s later the calls are gone.
    assert_eq!(state(&r, t + S).0, 0);
    // Reconfiguring keeps what was counted when the window is unchanged.
    let b = r.iter_mut().next().unwrap().1;
    b.reconfigure(RetryConfig {
        budget_percent: 100,
        ..config
    });
    assert_eq!(b.totals(t), (4, 0));
}

#[test]
fn the_generator_is_uniform_enough_and_reproducible() {
    let mut a = Jitter::new(9);
    let mut b = Jitter::new(9);
    let xs: Vec<f64> = (0..1000).map(|_| a.unit()).collect();
    let ys: Vec<f64> = (0..1000).map(|_| b.unit()).collect();
    assert_eq!(xs, ys);
    assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
    let below_half = xs.iter().filter(|x| **x < 0.5).count();
    assert!((400..600).contains(&below_half), "{below_half}");
}
