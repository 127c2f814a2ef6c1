//! Rate rules on a manual clock.

use super::*;
use crate::clock::{Clock, ManualClock};

const MS: Duration = Duration::from_millis(1);

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

fn rule(rate: u32, per: Duration, burst: u32, weight: Weight) -> (RateRule, ManualClock) {
    let clock = ManualClock::new();
    let spec = RateSpec {
        name: "test".into(),
        scope: Scope::AgentService,
        services: vec![],
        agents: vec![],
        weight,
        rate: nz(rate),
        per,
        burst: nz(burst),
        shadow: false,
    };
    (
        RateRule::new(spec, SharedClock::new(clock.clone())).unwrap(),
        clock,
    )
}

#[test]
fn burst_then_denial_with_the_exact_wait() {
    // The SPEC default: 10/s, burst 100.
    let (rule, clock) = rule(10, Duration::from_secs(1), 100, Weight::Requests);
    for _ in 0..100 {
        rule.check("k", nz(1), clock.now()).unwrap();
    }
    match rule.check("k", nz(1), clock.now()) {
        Err(RateDenial::NotUntil { retry_after, .. }) => assert_eq!(retry_after, 100 * MS),
        other => panic!("{other:?}"),
    }
    clock.advance(100 * MS);
    rule.check("k", nz(1), clock.now())
        .expect("one cell replenished");
    assert!(rule.check("k", nz(1), clock.now()).is_err());
}

#[test]
fn keys_are_independent() {
    let (rule, clock) = rule(1, Duration::from_secs(1), 1, Weight::Requests);
    rule.check(rule.key("a", "s"), nz(1), clock.now()).unwrap();
    rule.check(rule.key("b", "s"), nz(1), clock.now()).unwrap();
    assert!(rule.check(rule.key("a", "s"), nz(1), clock.now()).is_err());
}

#[test]
fn weight_beyond_the_burst_is_never_not_later() {
    let (rule, clock) = rule(100, Duration::from_secs(60), 50, Weight::Units);
    assert_eq!(
        rule.check("k", nz(51), clock.now()),
        Err(RateDenial::Never {
            asked: 51,
            burst: 50
        })
    );
}

#[test]
fn undo_restores_the_bucket_exactly() {
    let (rule, clock) = rule(1, Duration::from_secs(1), 2, Weight::Requests);
    let first = rule.check("k", nz(1), clock.now()).unwrap();
    let second = rule.check("k", nz(1), clock.now()).unwrap();
    rule.undo(&second);
    rule.undo(&first);
    assert_eq!(rule.bucket_count(), 0, "undone to the never-seen state");
    rule.check("k", nz(2), clock.now())
        .expect("full burst again");
}

#[test]
fn settle_gives_back_unused_units_and_charges_overruns() {
    // 1,000 tokens per minute, burst 1,000: one token per 60 ms.
    let (rule, clock) = rule(1000, Duration::from_secs(60), 1000, Weight::Units);
    let estimate = rule.check("k", nz(1000), clock.now()).unwrap();
    assert!(rule.check("k", nz(1), clock.now()).is_err());
    rule.settle(&estimate, 400);
    rule.check("k", nz(600), clock.now())
        .expect("600 unused tokens were given back");
    assert!(rule.check("k", nz(1), clock.now()).is_err());

    let (rule, clock) = rule_fresh();
    let estimate = rule.check("k", nz(10), clock.now()).unwrap();
    rule.settle(&estimate, 1000);
    match rule.check("k", nz(1), clock.now()) {
        Err(RateDenial::NotUntil { retry_after, .. }) => assert_eq!(retry_after, 60 * MS),
        other => panic!("the overrun must be charged: {other:?}"),
    }
}

fn rule_fresh() -> (RateRule, ManualClock) {
    rule(1000, Duration::from_secs(60), 1000, Weight::Units)
}

#[test]
fn requests_rules_ignore_units() {
    let (rule, _) = rule(1, Duration::from_secs(1), 1, Weight::Requests);
    assert_eq!(rule.weight_of(nz(500)), nz(1));
}

/// Reproducer for unbounded keyed state (governor#171).
#[test]
fn purge_forgets_full_buckets() {
    let (rule, clock) = rule(10, Duration::from_secs(1), 10, Weight::Requests);
    for i in 0..10_000 {
        rule.check(format!("key-{i}"), nz(1), clock.now()).unwrap();
    }
    rule.check("busy", nz(10), clock.now()).unwrap();
    assert_eq!(rule.bucket_count(), 10_001);
    clock.advance(200 * MS);
    rule.purge();
    assert_eq!(
        rule.bucket_count(),
        1,
        "only the drained bucket is remembered"
    );
}

/// What `purge` forgets is counted for the maintenance task's decision to trim the
/// heap, and the table sized for a burst of keys is given back with them.
#[test]
fn purge_counts_what_it_forgot_and_gives_the_table_back() {
    let (rule, clock) = rule(10, Duration::from_secs(1), 10, Weight::Requests);
    for i in 0..10_000 {
        rule.check(format!("key-{i}"), nz(1), clock.now()).unwrap();
    }
    rule.check("busy", nz(10), clock.now()).unwrap();
    assert!(rule.store.lock().capacity() >= 10_001);
    clock.advance(200 * MS);
    rule.purge();
    // Other tests' purges may add to the process-wide count; none takes from it.
    assert!(take_forgotten() >= 10_000);
    assert!(
        rule.store.lock().capacity() < 100,
        "shrunk to fit the one bucket left"
    );
}

/// A table that stays mostly used is not rehashed at every purge: 600 of 1,000
/// keys stay, which `shrink_to_fit` would move to a table half the size.
#[test]
fn purge_keeps_the_table_of_a_mostly_used_key_set() {
    let (rule, clock) = rule(1, Duration::from_secs(1), 2, Weight::Requests);
    for i in 0..1_000 {
        // Two cells keep a bucket short for 2 s; one cell for 1 s.
        let cells = if i < 600 { 2 } else { 1 };
        rule.check(format!("key-{i}"), nz(cells), clock.now())
            .unwrap();
    }
    clock.advance(2_500 * MS);
    rule.purge();
    assert_eq!(rule.bucket_count(), 600);
    // Fitted to 600 it would hold 896; left alone it holds about 1,792 (a few
    // slots fewer where removals left tombstones).
    assert!(rule.store.lock().capacity() > 1_000);
}

/// Keys of every length are one bucket each, whether kept in the table (up to 30
/// bytes) or on the heap, and a stored key costs the table 32 bytes.
#[test]
fn short_and_long_keys_are_buckets_alike() {
    assert_eq!(std::mem::size_of::<BucketKey>(), 32);
    let (rule, clock) = rule(1, Duration::from_secs(1), 1, Weight::Requests);
    let keys = [
        String::new(),
        "x".repeat(30),
        "x".repeat(31),
        format!("{}\0{}", "a".repeat(128), "s".repeat(128)),
    ];
    for key in &keys {
        let cells = rule.check(key.clone(), nz(1), clock.now()).unwrap();
        assert!(
            rule.check(key.clone(), nz(1), clock.now()).is_err(),
            "{key:?}"
        );
        rule.undo(&cells);
        rule.check(key.clone(), nz(1), clock.now())
            .expect("undone to a full bucket");
    }
    assert_eq!(rule.bucket_count(), keys.len());
    let inline = |key: &String| {
        matches!(
            rule.store.lock().get_key_value(key.as_bytes()),
            Some((BucketKey::Inline { .. }, _))
        )
    };
    assert_eq!(
        keys.iter().map(inline).collect::<Vec<_>>(),
        [true, true, false, false]
    );
}

#[test]
fn filters_and_keys() {
    let clock = SharedClock::new(ManualClock::new());
    let spec = RateSpec {
        name: "openai".into(),
        scope: Scope::Service,
        services: vec!["openai".into()],
        agents: vec![],
        weight: Weight::Requests,
        rate: nz(1),
        per: Duration::from_secs(1),
        burst: nz(1),
        shadow: false,
    };
    let rule = RateRule::new(spec, clock).unwrap();
    assert!(rule.applies("anyone", "openai"));
    assert!(!rule.applies("anyone", "anthropic"));
    assert_eq!(rule.key("a", "openai"), "openai");
}

#[test]
fn bucket_keys_are_the_scope_keys_built_in_place() {
    let long = "a".repeat(40);
    for (agent, service) in [("a", "s"), ("agent-7", "openai"), (long.as_str(), "s")] {
        for scope in [
            Scope::Global,
            Scope::Agent,
            Scope::Service,
            Scope::AgentService,
        ] {
            let key = BucketKey::of(scope, agent, service);
            let expected = crate::guard::scope_key(scope, agent, service);
            assert_eq!(key, expected.as_str(), "{scope:?} {agent} {service}");
            let inline = matches!(key, BucketKey::Inline { .. });
            assert_eq!(inline, expected.len() <= INLINE, "{scope:?} {agent}");
        }
    }
    // A take from one rule is kept inline by its reservation.
    let (rule, clock) = rule(10, Duration::from_secs(1), 10, Weight::Requests);
    let cells = rule
        .check(rule.key("agent-7", "openai"), nz(1), clock.now())
        .unwrap();
    let held: Held = smallvec::smallvec![(Arc::new(rule), cells)];
    assert!(!crate::guard::stash(held).is_heap());
}

#[test]
fn a_denial_names_its_period_as_duration_debug_does() {
    for per in [
        Duration::from_secs(1),
        Duration::from_secs(3600),
        Duration::from_millis(100),
        Duration::from_millis(1500),
        Duration::from_micros(250),
    ] {
        assert_eq!(Per(per).to_string(), format!("{per:?}"));
    }
}
