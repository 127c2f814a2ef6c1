//! Quotas: counted resources with a limit per window ("3 calls a day; the 4th is
//! blocked"), keyed like rate limits. Counts are exact integers, so a limit of
//! millions is exact, and a limit of 0 blocks everything.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::period::Period;
use super::rate::{Scope, Weight};

/// A validated quota from config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaSpec {
    pub name: String,
    pub scope: Scope,
    pub services: Vec<String>,
    pub agents: Vec<String>,
    pub weight: Weight,
    pub limit: u64,
    pub window: Period,
    pub shadow: bool,
}

/// One quota and its counters.
#[derive(Debug)]
pub struct QuotaRule {
    spec: QuotaSpec,
    /// The quota's name, shared with every vote it casts.
    name: Arc<str>,
    counters: HashMap<String, Counter>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    pub window_start: u64,
    pub used: u64,
}

/// What an admission took from one quota, for an exact undo and for the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaTaken {
    pub key: String,
    pub n: u64,
    pub window_start: u64,
    before: Option<Counter>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuotaDenial {
    #[error("quota of {limit} per {} used up ({used} used)", .window.window_name())]
    Exhausted {
        limit: u64,
        used: u64,
        window: Period,
        retry_after: Option<Duration>,
        /// The counter that is used up (for the operator's alert).
        key: String,
    },
    #[error("a weight of {asked} can never fit a quota of {limit}")]
    Never { asked: u64, limit: u64 },
}

// === impl QuotaRule ===

impl QuotaRule {
    pub fn new(spec: QuotaSpec) -> QuotaRule {
        QuotaRule {
            name: Arc::from(spec.name.as_str()),
            spec,
            counters: HashMap::new(),
        }
    }

    /// A rule for `spec` that keeps the counters of `old` (same name and window, so
    /// the counters still mean the same thing).
    pub fn carry_over(spec: QuotaSpec, old: QuotaRule) -> QuotaRule {
        QuotaRule {
            name: Arc::from(spec.name.as_str()),
            spec,
            counters: old.counters,
        }
    }

    pub fn spec(&self) -> &QuotaSpec {
        &self.spec
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn applies(&self, agent: &str, service: &str) -> bool {
        super::filter_matches(&self.spec.services, service)
            && super::filter_matches(&self.spec.agents, agent)
    }

    pub fn key(&self, agent: &str, service: &str) -> String {
        super::scope_key(self.spec.scope, agent, service)
    }

    pub fn weight_of(&self, units: u32) -> u64 {
        match self.spec.weight {
            Weight::Requests => 1,
            Weight::Units => u64::from(units),
        }
    }

    /// Takes `n` from `key`'s counter in the window containing `now` (Unix seconds).
    ///
    /// # Errors
    /// A [`QuotaDenial`]; nothing is taken.
    pub fn check(&mut self, key: String, n: u64, now: u64) -> Result<QuotaTaken, QuotaDenial> {
        let limit = self.spec.limit;
        if n > limit && limit > 0 {
            return Err(QuotaDenial::Never { asked: n, limit });
        }
        let window_start = self.spec.window.start(now);
        let before = self.counters.get(&key).copied();
        let used = before
            .filter(|c| c.window_start == window_start)
            .map_or(0, |c| c.used);
        if used + n > limit {
            let retry_after = match limit {
                0 => None,
                _ => self.spec.window.remaining(now).map(Duration::from_secs),
            };
            return Err(QuotaDenial::Exhausted {
                limit,
                used,
                window: self.spec.window,
                retry_after,
                key,
            });
        }
        self.counters.insert(
            key.clone(),
            Counter {
                window_start,
                used: used + n,
            },
        );
        Ok(QuotaTaken {
            key,
            n,
            window_start,
            before,
        })
    }

    /// Puts the counter back as it was before `taken`.
    pub fn undo(&mut self, taken: &QuotaTaken) {
        match taken.before {
            Some(counter) => self.counters.insert(taken.key.clone(), counter),
            None => self.counters.remove(&taken.key),
        };
    }

    /// Gives `taken` back arithmetically (other admissions may have counted since).
    pub fn give_back(&mut self, taken: &QuotaTaken) {
        if let Some(counter) = self.counters.get_mut(&taken.key) {
            if counter.window_start == taken.window_start {
                counter.used = counter.used.saturating_sub(taken.n);
            }
        }
    }

    /// Loads a counter from the ledger at startup.
    pub fn restore(&mut self, key: String, counter: Counter) {
        self.counters.insert(key, counter);
    }

    /// Starts `key`'s current window over. Returns whether it had a counter.
    pub fn reset(&mut self, key: &str) -> bool {
        self.counters.remove(key).is_some()
    }

    /// Counters of the current windows.
    pub fn counters(&self, now: u64) -> impl Iterator<Item = (&str, u64)> + '_ {
        let start = self.spec.window.start(now);
        self.counters
            .iter()
            .filter(move |(_, c)| c.window_start == start)
            .map(|(key, c)| (key.as_str(), c.used))
    }

    /// Forgets counters of past windows.
    pub fn purge(&mut self, now: u64) {
        let start = self.spec.window.start(now);
        self.counters.retain(|_, c| c.window_start == start);
    }
}

/// The configured quotas: the pipeline's third stage.
#[derive(Debug, Default)]
pub struct Quotas {
    rules: Vec<QuotaRule>,
}

/// What an admission took from the quotas that apply to it, by quota name (a
/// reload may reorder or replace quotas; a counter of another window is never
/// touched by a give-back).
type Held = Vec<(Arc<str>, QuotaTaken)>;

// === impl Quotas ===

impl Quotas {
    pub fn new(rules: Vec<QuotaRule>) -> Quotas {
        Quotas { rules }
    }

    pub fn rules(&self) -> &[QuotaRule] {
        &self.rules
    }

    pub fn rules_mut(&mut self) -> &mut Vec<QuotaRule> {
        &mut self.rules
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut QuotaRule> {
        self.rules.iter_mut().find(|rule| rule.name() == name)
    }

    fn undo_all(&mut self, held: &Held) {
        for (name, taken) in held.iter().rev() {
            if let Some(rule) = self.get_mut(name) {
                rule.undo(taken);
            }
        }
    }
}

impl super::Guard for Quotas {
    fn check(&mut self, call: &super::Call<'_>, out: &mut super::Checked) -> super::Verdict {
        let mut held: Held = Vec::new();
        let mut denied = false;
        for rule in &mut self.rules {
            if !rule.applies(call.agent, call.service) {
                continue;
            }
            let shadow = call.shadow_all || rule.spec.shadow;
            let key = rule.key(call.agent, call.service);
            let n = rule.weight_of(call.units.get());
            match rule.check(key, n, call.now.unix) {
                Ok(took) => {
                    out.vote(super::Vote {
                        guard: super::GuardKind::Quota,
                        rule: Arc::clone(&rule.name),
                        allow: true,
                        shadow,
                        reason: super::Reason::Counted {
                            n,
                            limit: rule.spec.limit,
                            window: rule.spec.window,
                        },
                        retry_after: None,
                    });
                    held.push((Arc::clone(&rule.name), took));
                }
                Err(denial) => {
                    let retry_after = match &denial {
                        QuotaDenial::Exhausted { retry_after, .. } => *retry_after,
                        QuotaDenial::Never { .. } => None,
                    };
                    out.vote(super::Vote {
                        guard: super::GuardKind::Quota,
                        rule: Arc::clone(&rule.name),
                        allow: false,
                        shadow,
                        reason: super::Reason::Denied(Box::new(denial)),
                        retry_after,
                    });
                    if !shadow {
                        denied = true;
                        break;
                    }
                }
            }
        }
        if denied {
            self.undo_all(&held);
            return super::Verdict::Deny;
        }
        if !held.is_empty() {
            out.take(held);
        }
        super::Verdict::Allow
    }

    fn undo(&mut self, taken: Box<dyn Any + Send>) {
        if let Ok(held) = taken.downcast::<Held>() {
            self.undo_all(&held);
        }
    }

    fn abort(&mut self, taken: &mut (dyn Any + Send)) {
        for (name, taken) in super::own::<Held>(taken).iter() {
            if let Some(rule) = self.get_mut(name) {
                rule.give_back(taken);
            }
        }
    }

    fn settle(
        &mut self,
        _taken: &mut (dyn Any + Send),
        _report: &super::Report,
        _out: &mut super::Settled,
    ) {
        // A counted call stays counted, whatever its outcome.
    }

    fn release(&mut self, _taken: &mut (dyn Any + Send)) {}

    fn disconnect(&mut self, _taken: &mut (dyn Any + Send)) -> super::Keep {
        super::Keep::No
    }

    fn entries(
        &self,
        taken: &(dyn Any + Send),
        _reservation: u64,
        _call: &super::Call<'_>,
        out: &mut Vec<crate::store::Entry>,
    ) {
        let Some(held) = taken.downcast_ref::<Held>() else {
            return;
        };
        for (name, took) in held {
            let durable = self
                .rules
                .iter()
                .find(|rule| rule.name() == &**name)
                .is_some_and(|rule| rule.spec.window.is_durable());
            if durable {
                out.push(crate::store::Entry::QuotaAdd {
                    quota: name.to_string(),
                    key: took.key.clone(),
                    window_start: took.window_start,
                    n: took.n,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MON: u64 = 1_795_392_000;

    fn quota(limit: u64, window: Period) -> QuotaRule {
        QuotaRule::new(QuotaSpec {
            name: "q".into(),
            scope: Scope::Agent,
            services: vec![],
            agents: vec![],
            weight: Weight::Requests,
            limit,
            window,
            shadow: false,
        })
    }

    #[test]
    fn three_allowed_the_fourth_blocked_until_the_window_rolls() {
        let mut q = quota(3, Period::Daily);
        for _ in 0..3 {
            q.check("a".into(), 1, MON + 10).unwrap();
        }
        match q.check("a".into(), 1, MON + 10) {
            Err(QuotaDenial::Exhausted {
                used: 3,
                retry_after,
                ..
            }) => {
                assert_eq!(retry_after, Some(Duration::from_secs(86_390)))
            }
            other => panic!("{other:?}"),
        }
        q.check("b".into(), 1, MON + 10)
            .expect("keys are independent");
        q.check("a".into(), 1, MON + 86_400).expect("a new day");
    }

    #[test]
    fn zero_blocks_everything_forever() {
        let mut q = quota(0, Period::Forever);
        match q.check("a".into(), 1, MON) {
            Err(QuotaDenial::Exhausted {
                retry_after: None, ..
            }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn millions_are_exact() {
        let mut q = quota(3_000_000, Period::Forever);
        q.check("a".into(), 2_999_999, MON).unwrap();
        q.check("a".into(), 1, MON).unwrap();
        assert!(q.check("a".into(), 1, MON).is_err());
        assert_eq!(
            q.check("b".into(), 3_000_001, MON),
            Err(QuotaDenial::Never {
                asked: 3_000_001,
                limit: 3_000_000
            })
        );
    }

    #[test]
    fn undo_is_exact() {
        let mut q = quota(2, Period::Daily);
        let first = q.check("a".into(), 1, MON).unwrap();
        let second = q.check("a".into(), 1, MON).unwrap();
        q.undo(&second);
        q.undo(&first);
        assert_eq!(q.counters(MON).count(), 0);
        q.check("a".into(), 2, MON).unwrap();
    }
}
