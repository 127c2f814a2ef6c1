//! Concurrency: bulkheads (at most N calls in flight per service, per agent, per
//! agent and service, or in all) and the cap on agents with calls in flight on
//! the host (SPEC §3.6), with an optional first-come-first-served wait.
//!
//! A permit is held by the reservation of the admission that took it, and goes
//! back when the call is reported, released, aborted, or its connection ends
//! (`disconnect` gives it back at once: an orphan holds no permit, and nor does a
//! reservation reloaded after a restart: permits are not durable).
//!
//! Waiting. An admission that may wait and is refused only for want of a permit
//! is queued (`enqueue`) on every bulkhead key it needs, in one step under the
//! engine lock, so every queue agrees on who came first. A queued waiter passes
//! a key when the calls in flight plus the waiters ahead of it leave a permit
//! over; a newcomer counts every waiter as ahead of it, so it cannot overtake
//! the line. Whenever a key gains room (a permit back, a waiter leaving) the
//! waiters that might now pass are woken through the handle they gave
//! ([`Wake`]); a woken waiter runs its whole admission again and stays in line
//! if it still does not fit. A waiter that leaves (admitted, refused by another
//! guard, timed out, or its connection gone) is removed from every queue
//! (`leave`): it held no permit while it waited, so there is nothing to give
//! back. The waiting itself, and its deadline, happen outside the lock
//! (`cmd/admit.rs`); this file never waits.
//!
//! Cost. An admission under a bulkhead allocates nothing in the usual case,
//! and giving its permits back looks nothing up by name: a key's count is an
//! entry of a table, found by the key's bytes (borrowed from the call, or built
//! on the stack for an `agent/service` pair; the entry found last is tried
//! first), and a permit holds the entry's number, kept inline with the others.
//! The agents' counts are kept the same way. An emptied key keeps its entry,
//! and its name in the table, until another key needs the entry: a key (or an
//! agent) busy every few calls is then neither added nor removed each time,
//! and a table is still as long as the most keys ever busy at once.

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;

use smallvec::SmallVec;

use super::rate::BucketKey;
use super::{
    filter_matches, Call, Checked, GuardKind, Keep, Reason, Report, Scope, Settled, Verdict, Vote,
};

type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The rule name of the cap on active agents, in votes, `status` and metrics.
pub const AGENTS_RULE: &str = "max_active_agents";

/// One `[[bulkheads]]` entry, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkheadSpec {
    pub name: String,
    pub scope: Scope,
    /// Services it applies to; empty means every service.
    pub services: Vec<String>,
    /// Agents it applies to; empty means every agent.
    pub agents: Vec<String>,
    /// Calls in flight per key; 0 closes the key entirely (every call refused).
    pub max_in_flight: u32,
    pub shadow: bool,
}

/// How a waiting admission is told that it may have room now. The guard only
/// calls it (no I/O, no waiting); `cmd/admit.rs` implements it on the future
/// that waits.
pub trait Wake: Send + Sync {
    fn wake(&self);
}

/// The pipeline stage: every bulkhead's keys and the active-agent cap.
pub struct Concurrency {
    rules: Vec<Rule>,
    agents: AgentCap,
    waiters: Map<u64, Waiter>,
    next_waiter: u64,
    next_rule: RuleId,
}

/// A bulkhead as its permits and waiters name it: a number, not its name, so a
/// permit stays small enough to be kept inline. A bulkhead kept by a reload
/// keeps its number; one removed and added again later gets a new one, so the
/// permits of the old one come back as no-ops.
type RuleId = u32;

struct Rule {
    spec: BulkheadSpec,
    id: RuleId,
    name: Arc<str>,
    /// Every entry's key: the busy ones' and the emptied ones' not reused yet
    /// (as [`AgentCap::named`], a key busy every few calls is not removed and
    /// added again each time).
    keys: Map<BucketKey, SlotId>,
    /// The keys' counts; an emptied key's entry waits in `free` for the next.
    slots: Vec<Slot>,
    /// Entries that emptied, oldest first; one busy again stays listed (taking
    /// it skips it), so each is listed at most once.
    free: VecDeque<SlotId>,
    /// The entry found last: tried first, by its key's bytes, before the
    /// table (a bulkhead over one service finds it there every time).
    last: SlotId,
    in_flight: u64,
    waiting: u64,
}

/// An entry of [`Rule::slots`].
type SlotId = u32;

struct Slot {
    key: BucketKey,
    in_flight: u32,
    /// Waiter ids, first come first.
    queue: VecDeque<u64>,
    /// In [`Rule::free`].
    listed: bool,
}

/// Agents with at least one admission in flight, and how many each has.
///
/// An agent's count is an entry of `entries`, found by name through `named`;
/// a permit holds the entry's number, so giving it back needs no lookup by
/// name, and neither the permit nor the table copies the name to the heap. An
/// agent with few calls in flight becomes active, and idle again, every few
/// calls, so an idle agent's entry keeps its name (and its place in `named`)
/// until another agent needs the entry: an agent coming back finds its entry
/// as an active one would, and nothing is added to or removed from the table.
/// The table is as long as the most agents ever active at once.
struct AgentCap {
    /// `None`: no cap (`concurrency.max_active_agents = 0`).
    max: Option<u32>,
    name: Arc<str>,
    /// Every entry's agent: the active ones' and the idle ones' not reused yet.
    named: Map<BucketKey, AgentId>,
    entries: Vec<Active>,
    /// Agents with a call in flight (entries with `calls > 0`).
    active: u32,
    /// Entries that went idle, oldest first, for the next agent to become
    /// active. An entry active again stays listed (taking it skips it), so
    /// each is listed at most once and the list is no longer than the table.
    idle: VecDeque<AgentId>,
    queue: VecDeque<u64>,
}

/// An entry of [`AgentCap::entries`].
type AgentId = u32;

/// One agent's count (`calls == 0`: idle).
struct Active {
    agent: BucketKey,
    calls: u32,
    /// In [`AgentCap::idle`].
    listed: bool,
}

struct Waiter {
    wake: Arc<dyn Wake>,
    /// Where it stands in line.
    places: Vec<Place>,
}

#[derive(Clone, PartialEq, Eq)]
enum Place {
    Key { rule: RuleId, slot: SlotId },
    Agents,
}

/// What an admission took: its permits (bulkhead and key's entry) and its
/// count among the active agents. Given back once: the lists are drained.
#[derive(Debug, Default)]
pub struct Permits {
    /// Inline for up to four bulkheads.
    keys: SmallVec<[(RuleId, SlotId); 4]>,
    agent: Option<AgentId>,
}

// Kept inline in the reservation (no heap allocation per admission).
const _: () = assert!(super::fits_inline::<Permits>());

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConcurrencyDenial {
    /// The bulkhead's key has no permit left for this call.
    Full {
        /// The key as shown (`agent/service` for pairs, empty for global).
        key: String,
        in_flight: u32,
        max: u32,
        waiting: u32,
    },
    /// The host's cap on agents with calls in flight is reached, and this
    /// agent has none.
    Agents { active: u32, max: u32, waiting: u32 },
}

/// One key's occupancy, for `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyOccupancy {
    pub bulkhead: String,
    /// As shown (`agent/service` for pairs).
    pub key: String,
    pub in_flight: u32,
    pub limit: u32,
    pub waiting: u32,
}

/// One bulkhead's totals over its keys, for `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkheadTotals {
    pub bulkhead: String,
    pub in_flight: u64,
    pub waiting: u64,
}

// === impl Concurrency ===

impl Concurrency {
    pub fn new(specs: Vec<BulkheadSpec>, max_active_agents: Option<u32>) -> Concurrency {
        let mut next_rule = 0;
        let rules = specs
            .into_iter()
            .map(|spec| Rule::new(spec, &mut next_rule))
            .collect();
        Concurrency {
            rules,
            agents: AgentCap {
                max: max_active_agents,
                name: Arc::from(AGENTS_RULE),
                named: Map::default(),
                entries: Vec::new(),
                active: 0,
                idle: VecDeque::new(),
                queue: VecDeque::new(),
            },
            waiters: Map::default(),
            next_waiter: 1,
            next_rule,
        }
    }

    /// Takes the bulkheads and the agent cap of a new config. A bulkhead whose
    /// name stays keeps its calls in flight and its waiters (a lower limit
    /// refuses new calls until enough have ended); a removed one forgets its
    /// keys, and permits it had given are no-ops when they come back. Every
    /// waiter is woken to look again.
    pub fn reconfigure(&mut self, specs: Vec<BulkheadSpec>, max_active_agents: Option<u32>) {
        let mut old: Vec<Option<Rule>> = std::mem::take(&mut self.rules)
            .into_iter()
            .map(Some)
            .collect();
        let next_rule = &mut self.next_rule;
        self.rules = specs
            .into_iter()
            .map(|spec| {
                let kept = old
                    .iter_mut()
                    .find(|r| r.as_ref().is_some_and(|r| r.spec.name == spec.name))
                    .and_then(Option::take);
                match kept {
                    Some(mut rule) => {
                        rule.spec = spec;
                        rule
                    }
                    None => Rule::new(spec, next_rule),
                }
            })
            .collect();
        self.agents.max = max_active_agents;
        // Waiters queued on a bulkhead that is gone no longer stand there.
        let rules = &self.rules;
        for waiter in self.waiters.values_mut() {
            waiter.places.retain(|place| match place {
                Place::Key { rule, .. } => rules.iter().any(|r| r.id == *rule),
                Place::Agents => true,
            });
        }
        for waiter in self.waiters.values() {
            waiter.wake.wake();
        }
    }

    /// Queues waiter `ticket` (a new one when `None`) on every key `call` needs
    /// that it is not in line for yet; returns its id. Called when the call was
    /// refused for want of a permit and its caller will wait.
    pub fn enqueue(&mut self, ticket: Option<u64>, wake: &Arc<dyn Wake>, call: &Call<'_>) -> u64 {
        let id = ticket.unwrap_or_else(|| {
            let id = self.next_waiter;
            self.next_waiter += 1;
            id
        });
        let waiter = self.waiters.entry(id).or_insert_with(|| Waiter {
            wake: Arc::clone(wake),
            places: Vec::new(),
        });
        if self.agents.max.is_some()
            && !self.agents.is_active(call.agent)
            && !waiter.places.contains(&Place::Agents)
        {
            self.agents.queue.push_back(id);
            waiter.places.push(Place::Agents);
        }
        for rule in &mut self.rules {
            if !rule.applies(call) {
                continue;
            }
            let slot = match rule.find(call) {
                Some(slot) => slot,
                None => rule.add(call),
            };
            let place = Place::Key {
                rule: rule.id,
                slot,
            };
            if waiter.places.contains(&place) {
                continue;
            }
            rule.slots[slot as usize].queue.push_back(id);
            rule.waiting += 1;
            waiter.places.push(place);
        }
        id
    }

    /// Takes waiter `id` out of every line it stands in (admitted, refused,
    /// timed out, or gone); those behind it may now pass and are woken. A no-op
    /// for an id not waiting.
    pub fn leave(&mut self, id: u64) {
        let Some(waiter) = self.waiters.remove(&id) else {
            return;
        };
        for place in waiter.places {
            match place {
                Place::Agents => {
                    self.agents.queue.retain(|w| *w != id);
                    self.agents.wake(&self.waiters);
                }
                Place::Key { rule, slot: at } => {
                    let Some(rule) = self.rules.iter_mut().find(|r| r.id == rule) else {
                        continue;
                    };
                    let Some(slot) = rule.slots.get_mut(at as usize) else {
                        continue;
                    };
                    let before = slot.queue.len();
                    slot.queue.retain(|w| *w != id);
                    rule.waiting -= (before - slot.queue.len()) as u64;
                    wake(slot, rule.spec.max_in_flight, &self.waiters);
                    rule.retire(at);
                }
            }
        }
    }

    /// Waiters in line (each counted once, however many keys it waits for).
    pub fn waiters(&self) -> usize {
        self.waiters.len()
    }

    /// Keys with calls in flight or waiting, at most `cap` of them, then the
    /// agent cap (as bulkhead [`AGENTS_RULE`]) when it has any.
    pub fn occupancy(&self, cap: usize) -> Vec<KeyOccupancy> {
        let mut out = Vec::new();
        if let Some(max) = self.agents.max {
            if self.agents.active > 0 || !self.agents.queue.is_empty() {
                out.push(KeyOccupancy {
                    bulkhead: AGENTS_RULE.to_owned(),
                    key: String::new(),
                    in_flight: self.agents.active,
                    limit: max,
                    waiting: count(self.agents.queue.len()),
                });
            }
        }
        'rules: for rule in &self.rules {
            for slot in rule.slots.iter().filter(|slot| !slot.is_empty()) {
                if out.len() >= cap {
                    break 'rules;
                }
                out.push(KeyOccupancy {
                    bulkhead: rule.spec.name.clone(),
                    key: shown(&slot.key),
                    in_flight: slot.in_flight,
                    limit: rule.spec.max_in_flight,
                    waiting: count(slot.queue.len()),
                });
            }
        }
        out
    }

    /// Each bulkhead's totals (and the agent cap's, when configured), O(rules).
    pub fn totals(&self) -> Vec<BulkheadTotals> {
        let mut out: Vec<BulkheadTotals> = self
            .rules
            .iter()
            .map(|rule| BulkheadTotals {
                bulkhead: rule.spec.name.clone(),
                in_flight: rule.in_flight,
                waiting: rule.waiting,
            })
            .collect();
        if self.agents.max.is_some() {
            out.push(BulkheadTotals {
                bulkhead: AGENTS_RULE.to_owned(),
                in_flight: u64::from(self.agents.active),
                waiting: self.agents.queue.len() as u64,
            });
        }
        out
    }

    /// The active-agent cap's vote; counts the call's agent when it passes and
    /// returns its entry (`None`: denied, or no cap).
    fn check_agent(&mut self, call: &Call<'_>, out: &mut Checked) -> Option<AgentId> {
        let agents = &mut self.agents;
        let max = agents.max?;
        let shadow = call.shadow_all;
        let found = agents.named.get(call.agent.as_bytes()).copied();
        let agent = if let Some(id) = found.filter(|&id| agents.entries[id as usize].calls > 0) {
            agents.entries[id as usize].calls += 1;
            id
        } else {
            let active = agents.active;
            let ahead = ahead(&agents.queue, call.waiter);
            if (u64::from(active) + ahead as u64) >= u64::from(max) {
                out.vote(Vote::deny(
                    GuardKind::Concurrency,
                    Arc::clone(&agents.name),
                    shadow,
                    ConcurrencyDenial::Agents {
                        active,
                        max,
                        waiting: count(agents.queue.len()),
                    },
                    None,
                ));
                if !shadow {
                    return None;
                }
                return Some(agents.activate(found, call.agent));
            }
            agents.activate(found, call.agent)
        };
        out.vote(Vote::allow(
            GuardKind::Concurrency,
            Arc::clone(&agents.name),
            shadow,
            Reason::InFlight {
                n: agents.active,
                max,
            },
        ));
        Some(agent)
    }

    /// Puts back what a check took when a later rule of the same check denies:
    /// nothing else ran in between, so no waiter can have gained room.
    fn give_back_quietly(&mut self, permits: &mut Permits) {
        for (id, at) in permits.keys.drain(..) {
            if let Some(rule) = self.rules.iter_mut().find(|r| r.id == id) {
                if let Some(slot) = rule.slots.get_mut(at as usize) {
                    slot.in_flight -= 1;
                    rule.in_flight -= 1;
                    rule.retire(at);
                }
            }
        }
        if let Some(agent) = permits.agent.take() {
            self.agents.deactivate(agent);
        }
    }

    /// Gives back what `permits` holds (once: the lists are drained) and wakes
    /// the waiters that may now pass.
    fn give_back(&mut self, permits: &mut Permits) {
        for (id, at) in permits.keys.drain(..).rev() {
            let Some(rule) = self.rules.iter_mut().find(|r| r.id == id) else {
                // Its bulkhead was removed by a reload.
                continue;
            };
            let Some(slot) = rule.slots.get_mut(at as usize) else {
                continue;
            };
            if slot.in_flight == 0 {
                // Given back twice: a bug elsewhere, but not one to count twice.
                continue;
            }
            slot.in_flight -= 1;
            rule.in_flight = rule.in_flight.saturating_sub(1);
            wake(slot, rule.spec.max_in_flight, &self.waiters);
            rule.retire(at);
        }
        if let Some(agent) = permits.agent.take() {
            if self.agents.deactivate(agent) {
                self.agents.wake(&self.waiters);
            }
        }
    }
}

/// How a key reads in replies and `status` (`agent/service` for pairs).
fn shown(key: &BucketKey) -> String {
    let bytes: &[u8] = std::borrow::Borrow::borrow(key);
    String::from_utf8_lossy(bytes).replace('\0', "/")
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Wakes the waiters at the front of `slot`'s line that fit in its free permits.
fn wake(slot: &Slot, max: u32, waiters: &Map<u64, Waiter>) {
    let free = max.saturating_sub(slot.in_flight) as usize;
    for id in slot.queue.iter().take(free) {
        if let Some(waiter) = waiters.get(id) {
            waiter.wake.wake();
        }
    }
}

impl super::Guard for Concurrency {
    fn check(&mut self, call: &Call<'_>, out: &mut Checked) -> Verdict {
        if self.rules.is_empty() && self.agents.max.is_none() {
            return Verdict::Allow;
        }
        let mut permits = Permits::default();
        if self.agents.max.is_some() {
            let Some(agent) = self.check_agent(call, out) else {
                return Verdict::Deny;
            };
            permits.agent = Some(agent);
        }
        for rule in &mut self.rules {
            if !rule.applies(call) {
                continue;
            }
            let shadow = call.shadow_all || rule.spec.shadow;
            let max = rule.spec.max_in_flight;
            let found = rule.find(call);
            let slot = found.map(|at| &rule.slots[at as usize]);
            let (in_flight, waiting, ahead) = slot.map_or((0, 0, 0), |slot| {
                (
                    slot.in_flight,
                    slot.queue.len(),
                    ahead(&slot.queue, call.waiter),
                )
            });
            let fits = (u64::from(in_flight) + ahead as u64) < u64::from(max);
            if fits {
                out.vote(Vote::allow(
                    GuardKind::Concurrency,
                    Arc::clone(&rule.name),
                    shadow,
                    Reason::InFlight {
                        n: in_flight + 1,
                        max,
                    },
                ));
            } else {
                out.vote(Vote::deny(
                    GuardKind::Concurrency,
                    Arc::clone(&rule.name),
                    shadow,
                    ConcurrencyDenial::Full {
                        key: shown(&BucketKey::of(rule.spec.scope, call.agent, call.service)),
                        in_flight,
                        max,
                        waiting: count(waiting),
                    },
                    None,
                ));
                if !shadow {
                    // Exactly as before the check: nothing else ran meanwhile.
                    self.give_back_quietly(&mut permits);
                    return Verdict::Deny;
                }
                // A shadow bulkhead counts the call anyway, so its gauges show
                // what enforcing it would face.
            }
            let at = found.unwrap_or_else(|| rule.add(call));
            rule.slots[at as usize].in_flight += 1;
            rule.in_flight += 1;
            permits.keys.push((rule.id, at));
        }
        if !permits.keys.is_empty() || permits.agent.is_some() {
            out.take(permits);
        }
        Verdict::Allow
    }

    fn undo(&mut self, taken: &mut (dyn Any + Send)) {
        self.give_back(super::own(taken));
    }

    fn abort(&mut self, taken: &mut (dyn Any + Send)) {
        self.give_back(super::own(taken));
    }

    fn settle(&mut self, taken: &mut (dyn Any + Send), _report: &Report, _out: &mut Settled) {
        self.give_back(super::own(taken));
    }

    fn release(&mut self, taken: &mut (dyn Any + Send)) {
        self.give_back(super::own(taken));
    }

    fn disconnect(&mut self, taken: &mut (dyn Any + Send)) -> Keep {
        // A call whose agent is gone is not in flight any more as far as this
        // host can tell, and waiting for an orphan's timeout would hold the
        // bulkhead shut for minutes: the permit goes back now.
        self.give_back(super::own(taken));
        Keep::No
    }
}

/// How many waiters stand ahead of `waiter` in `queue`: all of them for a
/// newcomer (or a waiter not in this line).
fn ahead(queue: &VecDeque<u64>, waiter: Option<u64>) -> usize {
    waiter
        .and_then(|id| queue.iter().position(|w| *w == id))
        .unwrap_or(queue.len())
}

// === impl Rule ===

impl Rule {
    /// A new bulkhead, numbered from `next`.
    fn new(spec: BulkheadSpec, next: &mut RuleId) -> Rule {
        let id = *next;
        *next += 1;
        Rule {
            id,
            name: Arc::from(spec.name.as_str()),
            spec,
            keys: Map::default(),
            slots: Vec::new(),
            free: VecDeque::new(),
            last: 0,
            in_flight: 0,
            waiting: 0,
        }
    }

    fn applies(&self, call: &Call<'_>) -> bool {
        filter_matches(&self.spec.services, call.service)
            && filter_matches(&self.spec.agents, call.agent)
    }

    /// The entry of the key `call` falls under, when it has one: the last
    /// one found when it is that key's (every entry's key is in `keys`, so a
    /// match there is the table's answer), looked up by the call's own bytes
    /// otherwise (a pair's built on the stack).
    #[inline(always)]
    fn find(&mut self, call: &Call<'_>) -> Option<SlotId> {
        let pair;
        let wanted: &[u8] = match self.spec.scope {
            Scope::Global => b"",
            Scope::Agent => call.agent.as_bytes(),
            Scope::Service => call.service.as_bytes(),
            Scope::AgentService => {
                pair = BucketKey::of(Scope::AgentService, call.agent, call.service);
                std::borrow::Borrow::borrow(&pair)
            }
        };
        if let Some(slot) = self.slots.get(self.last as usize) {
            let key: &[u8] = std::borrow::Borrow::borrow(&slot.key);
            if key == wanted {
                return Some(self.last);
            }
        }
        let at = *self.keys.get(wanted)?;
        self.last = at;
        Some(at)
    }

    /// An entry for the key `call` falls under, which has none: an emptied
    /// one when there is one (its old key forgotten), a new one otherwise.
    fn add(&mut self, call: &Call<'_>) -> SlotId {
        let key = BucketKey::of(self.spec.scope, call.agent, call.service);
        while let Some(at) = self.free.pop_front() {
            let slot = &mut self.slots[at as usize];
            slot.listed = false;
            if !slot.is_empty() {
                // Busy again since it was listed.
                continue;
            }
            self.keys.remove(&slot.key);
            slot.key = key.clone();
            self.keys.insert(key, at);
            self.last = at;
            return at;
        }
        let at =
            SlotId::try_from(self.slots.len()).expect("fewer keys are busy at once than u32::MAX");
        self.slots.push(Slot {
            key: key.clone(),
            in_flight: 0,
            queue: VecDeque::new(),
            listed: false,
        });
        self.keys.insert(key, at);
        self.last = at;
        at
    }

    /// Lists entry `at` for reuse when nothing is in flight or waiting there.
    /// Its key stays in `keys` until the entry is reused.
    fn retire(&mut self, at: SlotId) {
        let Some(slot) = self.slots.get_mut(at as usize) else {
            return;
        };
        if slot.is_empty() && !slot.listed {
            slot.listed = true;
            self.free.push_back(at);
        }
    }
}

impl Slot {
    fn is_empty(&self) -> bool {
        self.in_flight == 0 && self.queue.is_empty()
    }
}

impl AgentCap {
    /// Whether `agent` has a call in flight.
    fn is_active(&self, agent: &str) -> bool {
        self.named
            .get(agent.as_bytes())
            .is_some_and(|&id| self.entries[id as usize].calls > 0)
    }

    /// Counts the first call of an agent not active now: in its own entry when
    /// it still has one (`found`, idle), else in an idle entry another agent
    /// left (which takes the new name), else in a new one.
    fn activate(&mut self, found: Option<AgentId>, agent: &str) -> AgentId {
        self.active += 1;
        if let Some(id) = found {
            self.entries[id as usize].calls = 1;
            return id;
        }
        let key = BucketKey::of(Scope::Agent, agent, "");
        while let Some(id) = self.idle.pop_front() {
            let entry = &mut self.entries[id as usize];
            entry.listed = false;
            if entry.calls > 0 {
                // Active again since it was listed.
                continue;
            }
            self.named.remove(&entry.agent);
            entry.agent = key.clone();
            entry.calls = 1;
            self.named.insert(key, id);
            return id;
        }
        let id = AgentId::try_from(self.entries.len())
            .expect("fewer agents are active at once than u32::MAX");
        self.entries.push(Active {
            agent: key.clone(),
            calls: 1,
            listed: false,
        });
        self.named.insert(key, id);
        id
    }

    /// Counts one call of entry `id` less; true when it was its agent's last.
    fn deactivate(&mut self, id: AgentId) -> bool {
        let Some(entry) = self.entries.get_mut(id as usize) else {
            return false;
        };
        if entry.calls == 0 {
            // Given back twice: a bug elsewhere, but not one to count twice.
            return false;
        }
        entry.calls -= 1;
        if entry.calls > 0 {
            return false;
        }
        self.active -= 1;
        if !entry.listed {
            entry.listed = true;
            self.idle.push_back(id);
        }
        true
    }

    fn wake(&self, waiters: &Map<u64, Waiter>) {
        let Some(max) = self.max else { return };
        let free = max.saturating_sub(self.active) as usize;
        for id in self.queue.iter().take(free) {
            if let Some(waiter) = waiters.get(id) {
                waiter.wake.wake();
            }
        }
    }
}

// === impl ConcurrencyDenial ===

impl fmt::Display for ConcurrencyDenial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConcurrencyDenial::Full {
                key,
                in_flight,
                max,
                waiting,
            } => {
                f.write_str("bulkhead full")?;
                if !key.is_empty() {
                    write!(f, " for {key}")?;
                }
                write!(f, ": {in_flight} of {max} calls in flight, {waiting} waiting")?;
                if *max == 0 {
                    f.write_str(" (max_in_flight = 0 refuses every call)")?;
                }
                Ok(())
            }
            ConcurrencyDenial::Agents {
                active,
                max,
                waiting,
            } => write!(
                f,
                "{active} of {max} agents already have calls in flight (concurrency.max_active_agents), {waiting} waiting"
            ),
        }
    }
}

impl std::error::Error for ConcurrencyDenial {}

#[cfg(test)]
mod tests;
