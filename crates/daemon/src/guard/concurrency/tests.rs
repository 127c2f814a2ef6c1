//! Unit tests of the bulkheads: permits counted exactly through every way a
//! call ends, the line's order, and who is woken when.

use crate::guard::{stash, Stash, Votes};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::clock::Moment;
use crate::guard::Guard;
use crate::money::Usd;

/// Counts its wake-ups.
#[derive(Default)]
struct Bell(AtomicUsize);

impl Wake for Bell {
    fn wake(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

impl Bell {
    fn rings(&self) -> usize {
        self.0.swap(0, Ordering::Relaxed)
    }
}

fn spec(name: &str, scope: Scope, max: u32) -> BulkheadSpec {
    BulkheadSpec {
        name: name.into(),
        scope,
        services: Vec::new(),
        agents: Vec::new(),
        max_in_flight: max,
        shadow: false,
    }
}

fn call<'a>(agent: &'a str, service: &'a str, waiter: Option<u64>) -> Call<'a> {
    Call {
        agent,
        service,
        model: None,
        units: NonZeroU32::MIN,
        estimate: Usd::ZERO,
        now: Moment {
            mono: Duration::from_secs(1),
            unix: 0,
        },
        shadow_all: false,
        content: None,
        attempt: 1,
        session: 1,
        pid: 0,
        uid: 0,
        lease: None,
        waiter,
        places: crate::guard::Places::default(),
    }
}

/// Checks `call`; the permits taken when allowed.
fn check(c: &mut Concurrency, call: &Call<'_>) -> Result<Stash, Vec<Vote>> {
    let mut votes = Votes::new();
    let mut out = Checked::new(&mut votes);
    match c.check(call, &mut out) {
        Verdict::Allow => Ok(out.taken.pop().map_or_else(|| stash(()), |t| t.what)),
        Verdict::Deny => {
            assert!(out.taken.is_empty(), "a denial takes nothing");
            Err(votes.into_vec())
        }
    }
}

fn in_flight(c: &Concurrency) -> Vec<(String, String, u32, u32)> {
    let mut keys: Vec<_> = c
        .occupancy(usize::MAX)
        .into_iter()
        .map(|k| (k.bulkhead, k.key, k.in_flight, k.waiting))
        .collect();
    keys.sort();
    keys
}

#[test]
fn exactly_max_permits_per_key_and_every_end_gives_one_back() {
    let mut c = Concurrency::new(vec![spec("svc", Scope::Service, 2)], None);
    let mut a = check(&mut c, &call("x", "s", None)).unwrap();
    let mut b = check(&mut c, &call("y", "s", None)).unwrap();
    let denied = check(&mut c, &call("z", "s", None)).unwrap_err();
    let vote = denied.last().unwrap();
    assert_eq!(
        vote.reason.to_string(),
        "bulkhead full for s: 2 of 2 calls in flight, 0 waiting",
        "the denial says how many are in flight"
    );
    assert_eq!(vote.retry_after, None);
    // Another key has its own permits.
    let mut other = check(&mut c, &call("z", "t", None)).unwrap();
    assert_eq!(
        in_flight(&c),
        vec![
            ("svc".into(), "s".into(), 2, 0),
            ("svc".into(), "t".into(), 1, 0)
        ]
    );
    // Settle, release, disconnect, abort: one permit back each, once.
    c.settle(&mut *a, &dummy_report(), &mut Settled::default());
    c.release(&mut *a);
    assert_eq!(c.disconnect(&mut *b), Keep::No);
    c.abort(&mut *b);
    c.undo(&mut *other);
    assert!(in_flight(&c).is_empty(), "emptied keys are forgotten");
    assert_eq!(c.totals()[0].in_flight, 0);
    for _ in 0..2 {
        check(&mut c, &call("z", "s", None)).unwrap();
    }
    assert!(check(&mut c, &call("z", "s", None)).is_err());
}

fn dummy_report() -> Report {
    Report {
        failure: false,
        units: None,
        latency: None,
        now: Moment {
            mono: Duration::ZERO,
            unix: 0,
        },
    }
}

#[test]
fn a_denial_by_a_later_bulkhead_puts_back_the_earlier_permits() {
    let mut c = Concurrency::new(
        vec![
            spec("per-agent", Scope::Agent, 5),
            spec("global", Scope::Global, 1),
        ],
        Some(3),
    );
    let _held = check(&mut c, &call("a", "s", None)).unwrap();
    let before = in_flight(&c);
    assert!(check(&mut c, &call("b", "s", None)).is_err());
    assert_eq!(
        in_flight(&c),
        before,
        "the agent cap and per-agent permit went back"
    );
}

#[test]
fn waiters_are_served_first_come_first_served_and_newcomers_cannot_overtake() {
    let mut c = Concurrency::new(vec![spec("svc", Scope::Service, 1)], None);
    let mut holder = check(&mut c, &call("h", "s", None)).unwrap();
    let bells: Vec<Arc<Bell>> = (0..3).map(|_| Arc::new(Bell::default())).collect();
    let mut tickets = Vec::new();
    for bell in &bells {
        let c_ = call("w", "s", None);
        assert!(check(&mut c, &c_).is_err());
        let wake: Arc<dyn Wake> = Arc::clone(bell) as Arc<dyn Wake>;
        tickets.push(c.enqueue(None, &wake, &c_));
    }
    assert_eq!(in_flight(&c), vec![("svc".into(), "s".into(), 1, 3)]);
    // The permit comes back: only the first in line is woken, and a newcomer
    // (or the second in line) finds no room ahead of it.
    c.release(&mut *holder);
    assert_eq!(
        bells.iter().map(|b| b.rings()).collect::<Vec<_>>(),
        [1, 0, 0]
    );
    assert!(check(&mut c, &call("new", "s", None)).is_err());
    assert!(check(&mut c, &call("w", "s", Some(tickets[1]))).is_err());
    let mut first = check(&mut c, &call("w", "s", Some(tickets[0]))).unwrap();
    c.leave(tickets[0]);
    // The third leaves (timed out): nothing to give back, the second is next.
    c.leave(tickets[2]);
    c.leave(tickets[2]);
    c.settle(&mut *first, &dummy_report(), &mut Settled::default());
    assert_eq!(bells[1].rings(), 1);
    let _second = check(&mut c, &call("w", "s", Some(tickets[1]))).unwrap();
    c.leave(tickets[1]);
    assert_eq!(c.waiters(), 0);
    assert_eq!(in_flight(&c), vec![("svc".into(), "s".into(), 1, 0)]);
}

#[test]
fn a_waiter_leaving_the_front_wakes_the_one_it_was_blocking() {
    // Two keys of room 2; the first waiter also needs a key that is full.
    let mut c = Concurrency::new(vec![spec("pair", Scope::AgentService, 1)], None);
    let _a = check(&mut c, &call("a", "s", None)).unwrap();
    let bell = Arc::new(Bell::default());
    let wake: Arc<dyn Wake> = Arc::clone(&bell) as Arc<dyn Wake>;
    let first = c.enqueue(None, &wake, &call("a", "s", None));
    let other = Arc::new(Bell::default());
    let other_wake: Arc<dyn Wake> = Arc::clone(&other) as Arc<dyn Wake>;
    let second = c.enqueue(None, &other_wake, &call("a", "s", None));
    c.leave(first);
    assert_eq!(other.rings(), 0, "still no permit free");
    assert!(check(&mut c, &call("a", "s", Some(second))).is_err());
    c.leave(second);
    assert_eq!(in_flight(&c), vec![("pair".into(), "a/s".into(), 1, 0)]);
}

/// A permit comes back and the first in line is woken for it; that waiter
/// leaves instead of taking it (its wait ran out, its client went away): the
/// one behind it is woken, or it would sleep beside a free permit until its
/// own wait ran out.
#[test]
fn a_woken_waiter_that_leaves_passes_the_free_permit_on() {
    woken_waiter_leaves_and_the_next_is_woken(Concurrency::new(
        vec![spec("one", Scope::Service, 1)],
        None,
    ));
}

/// The same for the active-agent cap's line.
#[test]
fn a_woken_agent_that_leaves_passes_the_free_place_on() {
    woken_waiter_leaves_and_the_next_is_woken(Concurrency::new(Vec::new(), Some(1)));
}

/// Room for one call (of agents `a`, `b`, `c` to service `s`): `a` holds it,
/// `b` and `c` wait, `a` ends, `b` is woken and leaves, `c` must be woken.
fn woken_waiter_leaves_and_the_next_is_woken(mut c: Concurrency) {
    let mut held = check(&mut c, &call("a", "s", None)).unwrap();
    let (first_bell, second_bell) = (Arc::new(Bell::default()), Arc::new(Bell::default()));
    let first_wake: Arc<dyn Wake> = Arc::clone(&first_bell) as Arc<dyn Wake>;
    let second_wake: Arc<dyn Wake> = Arc::clone(&second_bell) as Arc<dyn Wake>;
    let first = c.enqueue(None, &first_wake, &call("b", "s", None));
    let second = c.enqueue(None, &second_wake, &call("c", "s", None));
    c.settle(&mut *held, &dummy_report(), &mut Settled::default());
    assert_eq!(
        (first_bell.rings(), second_bell.rings()),
        (1, 0),
        "room for one: the first in line is woken"
    );
    c.leave(first);
    assert_eq!(
        second_bell.rings(),
        1,
        "the room passes to the next in line"
    );
    let _taken = check(&mut c, &call("c", "s", Some(second))).unwrap();
    c.leave(second);
    assert_eq!(c.waiters(), 0);
}

#[test]
fn the_agent_cap_counts_agents_not_calls() {
    let mut c = Concurrency::new(Vec::new(), Some(2));
    let mut a1 = check(&mut c, &call("a", "s", None)).unwrap();
    let mut a2 = check(&mut c, &call("a", "t", None)).unwrap();
    let mut b = check(&mut c, &call("b", "s", None)).unwrap();
    let denied = check(&mut c, &call("c", "s", None)).unwrap_err();
    assert_eq!(
        denied.last().unwrap().reason.to_string(),
        "2 of 2 agents already have calls in flight (concurrency.max_active_agents), 0 waiting"
    );
    // `a` still has a call in flight after one ends.
    c.settle(&mut *a1, &dummy_report(), &mut Settled::default());
    assert!(check(&mut c, &call("c", "s", None)).is_err());
    let bell = Arc::new(Bell::default());
    let wake: Arc<dyn Wake> = Arc::clone(&bell) as Arc<dyn Wake>;
    let ticket = c.enqueue(None, &wake, &call("c", "s", None));
    c.release(&mut *a2);
    assert_eq!(bell.rings(), 1, "agent a went idle: c may come in");
    let _c = check(&mut c, &call("c", "s", Some(ticket))).unwrap();
    c.leave(ticket);
    c.release(&mut *b);
    assert_eq!(
        c.totals(),
        vec![BulkheadTotals {
            bulkhead: AGENTS_RULE.into(),
            in_flight: 1,
            waiting: 0
        }]
    );
}

#[test]
fn churn_leaves_the_counts_exact() {
    let mut c = Concurrency::new(
        vec![
            spec("svc", Scope::Service, 4),
            spec("agent", Scope::Agent, 3),
        ],
        Some(5),
    );
    let bell: Arc<dyn Wake> = Arc::new(Bell::default());
    let mut held: Vec<Stash> = Vec::new();
    let mut waiting = Vec::new();
    let agents = ["a", "b", "c", "d", "e", "f", "g"];
    for round in 0..2_000usize {
        let agent = agents[round % agents.len()];
        let service = if round % 3 == 0 { "s" } else { "t" };
        match check(&mut c, &call(agent, service, None)) {
            Ok(permits) => held.push(permits),
            Err(_) if round % 2 == 0 => {
                waiting.push(c.enqueue(None, &bell, &call(agent, service, None)));
            }
            Err(_) => {}
        }
        if round % 5 == 0 && !held.is_empty() {
            let mut permits = held.swap_remove(round % held.len());
            match round % 3 {
                0 => c.settle(&mut *permits, &dummy_report(), &mut Settled::default()),
                1 => drop(c.disconnect(&mut *permits)),
                _ => c.release(&mut *permits),
            }
        }
        if round % 7 == 0 {
            if let Some(ticket) = waiting.pop() {
                c.leave(ticket);
            }
        }
    }
    for ticket in waiting {
        c.leave(ticket);
    }
    for mut permits in held {
        c.release(&mut *permits);
    }
    assert!(in_flight(&c).is_empty());
    assert_eq!(c.waiters(), 0);
    assert!(c
        .totals()
        .iter()
        .all(|t| t.in_flight == 0 && t.waiting == 0));
    for agent in ["p", "q", "r", "u"] {
        check(&mut c, &call(agent, "s", None)).unwrap_or_else(|_| panic!("capacity is back"));
    }
    assert!(
        check(&mut c, &call("v", "s", None)).is_err(),
        "and exactly 4"
    );
}

#[test]
fn a_reload_keeps_what_is_in_flight_and_forgets_removed_bulkheads() {
    let mut c = Concurrency::new(vec![spec("svc", Scope::Service, 2)], None);
    let mut a = check(&mut c, &call("a", "s", None)).unwrap();
    let _b = check(&mut c, &call("b", "s", None)).unwrap();
    c.reconfigure(vec![spec("svc", Scope::Service, 1)], None);
    assert!(check(&mut c, &call("c", "s", None)).is_err());
    c.release(&mut *a);
    assert!(
        check(&mut c, &call("c", "s", None)).is_err(),
        "2 - 1 = 1 of 1"
    );
    c.reconfigure(vec![spec("other", Scope::Service, 1)], None);
    let _c = check(&mut c, &call("c", "s", None)).unwrap();
    assert_eq!(in_flight(&c), vec![("other".into(), "s".into(), 1, 0)]);
}

#[test]
fn a_closed_bulkhead_refuses_everything_and_says_why() {
    let mut c = Concurrency::new(vec![spec("off", Scope::Global, 0)], None);
    let denied = check(&mut c, &call("a", "s", None)).unwrap_err();
    assert!(denied[0]
        .reason
        .to_string()
        .contains("max_in_flight = 0 refuses every call"));
    assert!(in_flight(&c).is_empty());
}

#[test]
fn a_shadow_bulkhead_counts_but_never_denies() {
    let mut s = spec("svc", Scope::Service, 1);
    s.shadow = true;
    let mut c = Concurrency::new(vec![s], None);
    let _a = check(&mut c, &call("a", "s", None)).unwrap();
    let mut votes = Votes::new();
    assert_eq!(
        c.check(&call("b", "s", None), &mut Checked::new(&mut votes)),
        Verdict::Allow
    );
    assert!(votes[0].shadow && !votes[0].allow);
    assert_eq!(in_flight(&c), vec![("svc".into(), "s".into(), 2, 0)]);
}

#[test]
fn names_too_long_to_keep_inline_count_like_short_ones() {
    let agent = "an-agent-whose-name-is-longer-than-thirty-bytes";
    let service = "a-service-whose-name-is-also-rather-long";
    let mut c = Concurrency::new(vec![spec("pair", Scope::AgentService, 1)], Some(1));
    let mut held = check(&mut c, &call(agent, service, None)).unwrap();
    let denied = check(&mut c, &call(agent, service, None)).unwrap_err();
    assert_eq!(
        denied.last().unwrap().reason.to_string(),
        format!("bulkhead full for {agent}/{service}: 1 of 1 calls in flight, 0 waiting")
    );
    c.release(&mut *held);
    assert!(in_flight(&c).is_empty());
    check(&mut c, &call(agent, service, None)).unwrap();
}

#[test]
fn a_bulkhead_removed_and_added_again_ignores_the_old_ones_permits() {
    let mut c = Concurrency::new(vec![spec("svc", Scope::Service, 1)], None);
    let mut old = check(&mut c, &call("a", "s", None)).unwrap();
    c.reconfigure(Vec::new(), None);
    c.reconfigure(vec![spec("svc", Scope::Service, 1)], None);
    let _new = check(&mut c, &call("b", "s", None)).unwrap();
    c.release(&mut *old);
    assert_eq!(
        in_flight(&c),
        vec![("svc".into(), "s".into(), 1, 0)],
        "the new bulkhead's permit is not given back by the old one's"
    );
    assert!(check(&mut c, &call("c", "s", None)).is_err());
}

#[test]
fn active_agents_reuse_their_entries() {
    let mut c = Concurrency::new(Vec::new(), Some(2));
    let mut steady = check(&mut c, &call("steady", "s", None)).unwrap();
    for n in 0..1_000 {
        let agent = format!("agent-{n}");
        let mut a = check(&mut c, &call(&agent, "s", None)).unwrap();
        let mut b = check(&mut c, &call(&agent, "t", None)).unwrap();
        assert!(check(&mut c, &call("other", "s", None)).is_err());
        c.settle(&mut *a, &dummy_report(), &mut Settled::default());
        c.release(&mut *b);
    }
    assert_eq!(c.agents.entries.len(), 2, "the most agents active at once");
    assert_eq!(c.totals()[0].in_flight, 1, "only steady is active");
    c.release(&mut *steady);
    assert_eq!(c.totals()[0].in_flight, 0);
    // A permit given back twice counts once.
    c.release(&mut *steady);
    for agent in ["p", "q"] {
        check(&mut c, &call(agent, "s", None)).unwrap();
    }
    assert!(check(&mut c, &call("r", "s", None)).is_err());
}

#[test]
fn emptied_keys_leave_their_entries_for_the_next_keys() {
    let mut c = Concurrency::new(vec![spec("pair", Scope::AgentService, 1)], None);
    let bell: Arc<dyn Wake> = Arc::new(Bell::default());
    for n in 0..500 {
        let agent = format!("agent-{n}");
        let mut held = check(&mut c, &call(&agent, "s", None)).unwrap();
        let ticket = c.enqueue(None, &bell, &call(&agent, "s", None));
        assert_eq!(
            in_flight(&c),
            vec![("pair".into(), format!("{agent}/s"), 1, 1)]
        );
        c.release(&mut *held);
        let mut next = check(&mut c, &call(&agent, "s", Some(ticket))).unwrap();
        c.leave(ticket);
        c.release(&mut *next);
        // Already given back: a no-op.
        c.abort(&mut *held);
    }
    assert_eq!(c.rules[0].slots.len(), 1, "the most keys busy at once");
    assert!(in_flight(&c).is_empty());
    check(&mut c, &call("a", "s", None)).unwrap();
    assert!(check(&mut c, &call("a", "s", None)).is_err());
}

#[test]
fn an_idle_agent_keeps_its_entry_until_another_agent_needs_it() {
    let mut c = Concurrency::new(Vec::new(), Some(2));
    let mut a = check(&mut c, &call("a", "s", None)).unwrap();
    c.release(&mut *a);
    // Back again: its own entry, still named, counted as a newcomer.
    let mut a = check(&mut c, &call("a", "s", None)).unwrap();
    let mut b = check(&mut c, &call("b", "s", None)).unwrap();
    assert_eq!(c.agents.entries.len(), 2);
    assert!(check(&mut c, &call("x", "s", None)).is_err());
    c.release(&mut *a);
    // `c` takes the entry `a` left: `a` is no longer known by name.
    let mut cc = check(&mut c, &call("c", "s", None)).unwrap();
    assert_eq!(c.agents.entries.len(), 2, "the idle entry was reused");
    assert!(
        check(&mut c, &call("a", "s", None)).is_err(),
        "a is a newcomer again, and b and c fill the cap"
    );
    let _c2 = check(&mut c, &call("c", "t", None)).unwrap();
    assert_eq!(c.totals()[0].in_flight, 2);
    c.release(&mut *b);
    c.release(&mut *cc);
    assert_eq!(c.totals()[0].in_flight, 1, "c still has a call in flight");
    let _a = check(&mut c, &call("a", "s", None)).unwrap();
    assert!(check(&mut c, &call("b", "s", None)).is_err());
}

#[test]
fn an_emptied_key_is_found_again_and_a_reused_entry_counts_only_its_new_key() {
    let mut c = Concurrency::new(vec![spec("pair", Scope::AgentService, 1)], None);
    let mut x = check(&mut c, &call("x", "s", None)).unwrap();
    c.release(&mut *x);
    // Found again in its own entry (the last found).
    let mut x = check(&mut c, &call("x", "s", None)).unwrap();
    assert!(check(&mut c, &call("x", "s", None)).is_err());
    c.release(&mut *x);
    // `y` takes the entry `x` left; `x` then needs (and gets) one of its own.
    let _y = check(&mut c, &call("y", "s", None)).unwrap();
    let _x = check(&mut c, &call("x", "s", None)).unwrap();
    assert_eq!(c.rules[0].slots.len(), 2);
    assert!(check(&mut c, &call("y", "s", None)).is_err());
    assert!(check(&mut c, &call("x", "s", None)).is_err());
    assert_eq!(
        in_flight(&c),
        vec![
            ("pair".into(), "x/s".into(), 1, 0),
            ("pair".into(), "y/s".into(), 1, 0)
        ]
    );
}
