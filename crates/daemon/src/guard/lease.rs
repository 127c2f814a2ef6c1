//! Leases: named, exclusive, with a time to live (SPEC §3.6), so two agents do
//! not change the same thing at once, and the second is told who has it.
//!
//! A lease is held by a session (one connection), in one of two ways: taken by
//! a `Lease` request, it lasts until released, until its TTL passes unrenewed,
//! or until the connection ends; taken by an admission that named it, it is the
//! admission's, and also ends when the call is reported or released (with the
//! default TTL as the longest it can last). An admission naming a lease its own
//! session already holds takes nothing and leaves that hold alone. Every
//! acquisition gets a grant number, so a stale holder (an admission whose lease
//! has since expired and been granted again) can never release someone else's.
//!
//! Leases are not durable: they live in memory only, so a daemon restart frees
//! every one, and a reservation reloaded as an orphan holds none (its
//! connection, which held the lease, is gone).
//!
//! Time to live is checked lazily against the `now` each request brings (the
//! guard reads no clock): an expired lease is free to the next asker, and
//! `purge` forgets expired ones so the counts stay honest.
//!
//! Cost. An admission naming a lease its session holds looks it up once and
//! allocates nothing; when it is the lease such an admission found last (an
//! agent naming one lease call after call), it compares names instead. One
//! that takes it reuses the name and holder of the last lease an admission
//! gave back when it is the same lease, and a session's list of names is
//! inline for the usual one or two.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use smallvec::SmallVec;

use super::{Call, Checked, GuardKind, Keep, Reason, Report, Settled, Verdict, Vote};

type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// `[leases]`, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseLimits {
    /// A lease taken without a TTL (and every lease an admission takes).
    pub default_ttl: Duration,
    /// The longest TTL a request may ask for.
    pub max_ttl: Duration,
    /// Leases one connection may hold at once.
    pub max_per_connection: u32,
    /// Leases held on the whole host at once.
    pub max_total: u32,
}

/// The session that holds, or asks for, a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub session: u64,
    pub agent: String,
    pub pid: u32,
    pub uid: u32,
}

/// The pipeline stage and the lease table.
pub struct Leases {
    limits: LeaseLimits,
    by_name: Map<Arc<str>, Held>,
    /// Names held per session, so a session's end is O(its leases).
    by_session: Map<u64, Names>,
    next_grant: u64,
    /// The name and holder of the last lease an admission gave back, for the
    /// next admission that takes the same lease (their allocations reused).
    spare: Option<(Arc<str>, Holder)>,
    /// The lease an admission last found held by its own session, as it was
    /// then: answers the next admission of that session naming it without a
    /// lookup. Forgotten whenever any lease is taken, renewed or let go, so it
    /// never answers for a hold that has changed.
    recent: Option<Recent>,
}

/// [`Leases::recent`]: a lease, its holder's session and its expiry.
struct Recent {
    name: Arc<str>,
    session: u64,
    expires: Duration,
}

/// A session's leases: inline for the usual one or two.
type Names = SmallVec<[Arc<str>; 2]>;

struct Held {
    holder: Holder,
    expires: Duration,
    grant: u64,
    /// Taken by an admission (ends with its call) rather than by a request.
    by_admission: bool,
}

/// What an admission took: the lease and its grant.
#[derive(Debug)]
pub struct Grant {
    name: Arc<str>,
    grant: Option<u64>,
}

// Kept inline in the reservation (no heap allocation per admission).
const _: () = assert!(super::fits_inline::<Grant>());

/// Why a lease was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseDenial {
    /// Another session holds it.
    Held {
        name: String,
        holder: Holder,
        expires_in: Duration,
    },
    /// Taking it would pass `leases.max_per_connection` or `leases.max_total`.
    TooMany(LeaseError),
}

/// Why a `Lease` request could not be carried out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    #[error("ttl_ms must be at least 1")]
    ZeroTtl,
    #[error("a TTL of {asked:?} is longer than leases.max_ttl ({max:?}); ask for at most {} ms and renew before it runs out", max.as_millis())]
    TtlTooLong { asked: Duration, max: Duration },
    #[error(
        "this connection already holds {0} leases (leases.max_per_connection); release one first"
    )]
    PerConnection(u32),
    #[error(
        "the daemon already holds {0} leases (leases.max_total); retry when some are released"
    )]
    Total(u32),
}

/// What a `Lease` request asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseOp {
    /// Take it, or renew it when this session holds it, for `ttl` (`None`:
    /// `leases.default_ttl`).
    Acquire {
        ttl: Option<Duration>,
    },
    Release,
}

/// The answer to a `Lease` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseOutcome {
    /// The asking session holds the lease now.
    pub granted: bool,
    /// Time left when granted.
    pub expires_in: Option<Duration>,
    /// Who holds it, when another session does.
    pub holder: Option<(Holder, Duration)>,
    /// A release gave it back.
    pub released: bool,
}

// === impl Leases ===

impl Leases {
    pub fn new(limits: LeaseLimits) -> Leases {
        Leases {
            limits,
            by_name: Map::default(),
            by_session: Map::default(),
            next_grant: 1,
            spare: None,
            recent: None,
        }
    }

    /// New limits from a reload; leases held keep their expiry.
    pub fn reconfigure(&mut self, limits: LeaseLimits) {
        self.limits = limits;
    }

    /// Leases held and not expired at `now`.
    pub fn held(&self, now: Duration) -> u32 {
        let live = self.by_name.values().filter(|h| h.expires > now).count();
        u32::try_from(live).unwrap_or(u32::MAX)
    }

    /// Forgets expired leases.
    pub fn purge(&mut self, now: Duration) {
        let expired: Vec<Arc<str>> = self
            .by_name
            .iter()
            .filter(|(_, held)| held.expires <= now)
            .map(|(name, _)| Arc::clone(name))
            .collect();
        for name in expired {
            self.remove(&name);
        }
    }

    /// A `Lease` request by `holder` for the lease `name`.
    ///
    /// # Errors
    /// A TTL of 0 or above `leases.max_ttl`; a new lease beyond the caps.
    pub fn request(
        &mut self,
        name: &str,
        op: LeaseOp,
        holder: Holder,
        now: Duration,
    ) -> Result<LeaseOutcome, LeaseError> {
        self.expire(name, now);
        let other = self
            .by_name
            .get(name)
            .filter(|held| held.holder.session != holder.session)
            .map(|held| (held.holder.clone(), held.expires.saturating_sub(now)));
        let mine = self.by_name.contains_key(name) && other.is_none();
        let mut outcome = LeaseOutcome {
            granted: false,
            expires_in: None,
            holder: None,
            released: false,
        };
        if other.is_some() {
            outcome.holder = other;
            return Ok(outcome);
        }
        let LeaseOp::Acquire { ttl } = op else {
            if mine {
                self.remove(name);
                outcome.released = true;
            }
            return Ok(outcome);
        };
        let ttl = self.ttl(ttl)?;
        if mine {
            let next_grant = &mut self.next_grant;
            self.recent = None;
            if let Some(held) = self.by_name.get_mut(name) {
                // A renewal. A lease an admission took becomes the session's:
                // it now outlives the call, and the call's end (holding the
                // old grant) leaves it alone.
                held.expires = now + ttl;
                if held.by_admission {
                    held.by_admission = false;
                    held.grant = *next_grant;
                    *next_grant += 1;
                }
            }
        } else {
            self.room_for(holder.session)?;
            self.insert(Arc::from(name), holder, now + ttl, false);
        }
        outcome.granted = true;
        outcome.expires_in = Some(ttl);
        Ok(outcome)
    }

    /// Frees every lease `session` holds (its connection ended). Returns how many.
    pub fn end_session(&mut self, session: u64) -> usize {
        let Some(names) = self.by_session.remove(&session) else {
            return 0;
        };
        self.recent = None;
        for name in &names {
            self.by_name.remove(name);
        }
        names.len()
    }

    fn ttl(&self, asked: Option<Duration>) -> Result<Duration, LeaseError> {
        match asked {
            None => Ok(self.limits.default_ttl),
            Some(ttl) if ttl.is_zero() => Err(LeaseError::ZeroTtl),
            Some(ttl) if ttl > self.limits.max_ttl => Err(LeaseError::TtlTooLong {
                asked: ttl,
                max: self.limits.max_ttl,
            }),
            Some(ttl) => Ok(ttl),
        }
    }

    fn room_for(&self, session: u64) -> Result<(), LeaseError> {
        let mine = self.by_session.get(&session).map_or(0, |names| names.len());
        if mine >= self.limits.max_per_connection as usize {
            return Err(LeaseError::PerConnection(self.limits.max_per_connection));
        }
        if self.by_name.len() >= self.limits.max_total as usize {
            return Err(LeaseError::Total(self.limits.max_total));
        }
        Ok(())
    }

    fn insert(
        &mut self,
        name: Arc<str>,
        holder: Holder,
        expires: Duration,
        by_admission: bool,
    ) -> u64 {
        let grant = self.next_grant;
        self.next_grant += 1;
        self.recent = None;
        self.by_session
            .entry(holder.session)
            .or_default()
            .push(Arc::clone(&name));
        self.by_name.insert(
            name,
            Held {
                holder,
                expires,
                grant,
                by_admission,
            },
        );
        grant
    }

    /// Drops `name` if its TTL passed.
    fn expire(&mut self, name: &str, now: Duration) {
        if self.by_name.get(name).is_some_and(|h| h.expires <= now) {
            self.remove(name);
        }
    }

    /// Forgets `name`; returns its key and what it was.
    fn remove(&mut self, name: &str) -> Option<(Arc<str>, Held)> {
        let (key, held) = self.by_name.remove_entry(name)?;
        self.recent = None;
        if let Some(names) = self.by_session.get_mut(&held.holder.session) {
            names.retain(|n| &**n != name);
            if names.is_empty() {
                self.by_session.remove(&held.holder.session);
            }
        }
        Some((key, held))
    }

    /// Ends an admission's hold, if it is still the one it took.
    fn give_back(&mut self, grant: &mut Grant) {
        let Some(number) = grant.grant.take() else {
            return;
        };
        if self
            .by_name
            .get(&grant.name)
            .is_some_and(|held| held.grant == number && held.by_admission)
        {
            if let Some((name, held)) = self.remove(&grant.name.clone()) {
                self.spare = Some((name, held.holder));
            }
        }
    }

    /// The name and holder for a lease `call` takes: the spare ones when they
    /// are for the same lease, made afresh otherwise.
    fn name_and_holder(&mut self, name: &str, call: &Call<'_>) -> (Arc<str>, Holder) {
        match self.spare.take() {
            Some((spare, mut holder)) if *spare == *name => {
                holder.session = call.session;
                holder.agent.clear();
                holder.agent.push_str(call.agent);
                holder.pid = call.pid;
                holder.uid = call.uid;
                (spare, holder)
            }
            _ => (
                Arc::from(name),
                Holder {
                    session: call.session,
                    agent: call.agent.to_owned(),
                    pid: call.pid,
                    uid: call.uid,
                },
            ),
        }
    }
}

impl super::Guard for Leases {
    fn check(&mut self, call: &Call<'_>, out: &mut Checked) -> Verdict {
        let Some(name) = call.lease else {
            return Verdict::Allow;
        };
        let now = call.now.mono;
        let shadow = call.shadow_all;
        if let Some(recent) = &self.recent {
            if recent.session == call.session && recent.expires > now && *recent.name == *name {
                out.vote(Vote::allow(
                    GuardKind::Lease,
                    Arc::clone(&recent.name),
                    shadow,
                    Reason::Fixed("held by this connection"),
                ));
                return Verdict::Allow;
            }
        }
        // One lookup: an expired lease is dropped here, a live one answers.
        // The held lease's own name is the vote's rule: no copy of it per call.
        match self.by_name.get_key_value(name) {
            Some((rule, held)) if held.expires > now => {
                let rule = Arc::clone(rule);
                if held.holder.session == call.session {
                    self.recent = Some(Recent {
                        name: Arc::clone(&rule),
                        session: call.session,
                        expires: held.expires,
                    });
                    out.vote(Vote::allow(
                        GuardKind::Lease,
                        rule,
                        shadow,
                        Reason::Fixed("held by this connection"),
                    ));
                    return Verdict::Allow;
                }
                let expires_in = held.expires.saturating_sub(now);
                out.vote(Vote::deny(
                    GuardKind::Lease,
                    rule,
                    shadow,
                    LeaseDenial::Held {
                        name: name.to_owned(),
                        holder: held.holder.clone(),
                        expires_in,
                    },
                    Some(expires_in),
                ));
                return if shadow {
                    Verdict::Allow
                } else {
                    Verdict::Deny
                };
            }
            Some(_) => {
                self.remove(name);
            }
            None => {}
        }
        if let Err(err) = self.room_for(call.session) {
            out.vote(Vote::deny(
                GuardKind::Lease,
                Arc::from(name),
                shadow,
                LeaseDenial::TooMany(err),
                None,
            ));
            return if shadow {
                Verdict::Allow
            } else {
                Verdict::Deny
            };
        }
        let (rule, holder) = self.name_and_holder(name, call);
        let grant = self.insert(
            Arc::clone(&rule),
            holder,
            now + self.limits.default_ttl,
            true,
        );
        out.vote(Vote::allow(
            GuardKind::Lease,
            Arc::clone(&rule),
            shadow,
            Reason::Fixed("taken until the call is reported"),
        ));
        out.take(Grant {
            name: rule,
            grant: Some(grant),
        });
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
        // The connection held the lease: it ends with it, also for an orphan.
        self.give_back(super::own(taken));
        Keep::No
    }
}

// === impl LeaseDenial ===

impl fmt::Display for LeaseDenial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LeaseDenial::Held {
                name,
                holder,
                expires_in,
            } => write!(
                f,
                "lease {} is held by agent {} (pid {}, uid {}, session {}) for another {} ms",
                crate::names::shown(name),
                crate::names::shown(&holder.agent),
                holder.pid,
                holder.uid,
                holder.session,
                expires_in.as_millis()
            ),
            LeaseDenial::TooMany(err) => write!(f, "{err}"),
        }
    }
}

impl std::error::Error for LeaseDenial {}

#[cfg(test)]
mod tests {
    use super::*;

    fn leases() -> Leases {
        Leases::new(LeaseLimits {
            default_ttl: Duration::from_secs(30),
            max_ttl: Duration::from_secs(300),
            max_per_connection: 2,
            max_total: 3,
        })
    }

    fn holder(session: u64) -> Holder {
        Holder {
            session,
            agent: format!("agent{session}"),
            pid: 100 + session as u32,
            uid: 1000,
        }
    }

    fn acquire(ttl_s: u64) -> LeaseOp {
        LeaseOp::Acquire {
            ttl: Some(Duration::from_secs(ttl_s)),
        }
    }

    const T0: Duration = Duration::from_secs(1000);

    fn call(session: u64, agent: &str, at: Duration) -> Call<'_> {
        Call {
            agent,
            service: "s",
            model: None,
            units: std::num::NonZeroU32::MIN,
            estimate: crate::money::Usd::ZERO,
            now: crate::clock::Moment { mono: at, unix: 0 },
            shadow_all: false,
            content: None,
            attempt: 1,
            session,
            pid: 100 + session as u32,
            uid: 1000,
            lease: Some("repo"),
            waiter: None,
            places: crate::guard::Places::default(),
        }
    }

    /// An admission's check of lease `repo`; what it took, if it took anything.
    fn admit(l: &mut Leases, call: &Call<'_>) -> Result<Option<super::super::Stash>, Vec<Vote>> {
        use crate::guard::Guard;
        let mut votes = super::super::Votes::new();
        let mut out = Checked::new(&mut votes);
        match l.check(call, &mut out) {
            Verdict::Allow => Ok(out.taken.pop().map(|t| t.what)),
            Verdict::Deny => Err(votes.into_vec()),
        }
    }

    #[test]
    fn an_admission_takes_the_lease_again_for_whoever_asks_next() {
        use crate::guard::Guard;
        let mut l = leases();
        let mut first = admit(&mut l, &call(1, "a", T0)).unwrap().expect("taken");
        assert!(
            admit(&mut l, &call(1, "a", T0)).unwrap().is_none(),
            "its own session's next call takes nothing"
        );
        l.release(&mut *first);
        assert_eq!(l.held(T0), 0);
        let _second = admit(&mut l, &call(2, "bee", T0)).unwrap().expect("taken");
        let refused = admit(&mut l, &call(3, "c", T0)).unwrap_err();
        let denial: &LeaseDenial = refused[0].reason.denial().unwrap();
        assert_eq!(
            denial,
            &LeaseDenial::Held {
                name: "repo".into(),
                holder: Holder {
                    session: 2,
                    agent: "bee".into(),
                    pid: 102,
                    uid: 1000
                },
                expires_in: Duration::from_secs(30),
            },
            "the new holder, not the last one"
        );
        // Past its TTL the hold is dropped on the next look and taken anew.
        let later = T0 + Duration::from_secs(30);
        let _third = admit(&mut l, &call(3, "c", later)).unwrap().expect("taken");
        assert_eq!(l.held(later), 1);
        assert_eq!(l.end_session(2), 0, "session 2's expired hold is gone");
        assert_eq!(l.end_session(3), 1);
    }

    /// The session's last hold, remembered to spare a lookup, is forgotten
    /// when the lease is released: the session's next call takes the lease
    /// again (a hold another session is refused by), not a pass on a hold
    /// that no longer exists.
    #[test]
    fn a_released_lease_is_taken_again_not_remembered_as_held() {
        let mut l = leases();
        assert!(
            l.request("repo", acquire(30), holder(1), T0)
                .unwrap()
                .granted
        );
        assert!(admit(&mut l, &call(1, "a", T0)).unwrap().is_none(), "held");
        assert!(
            l.request("repo", LeaseOp::Release, holder(1), T0)
                .unwrap()
                .released
        );
        assert!(
            admit(&mut l, &call(1, "a", T0)).unwrap().is_some(),
            "free again: this call takes it"
        );
        assert_eq!(l.held(T0), 1);
        assert!(
            admit(&mut l, &call(2, "b", T0)).is_err(),
            "and another session is refused while it does"
        );
    }

    #[test]
    fn a_lease_found_held_before_answers_again_only_while_that_hold_lasts() {
        let mut l = leases();
        assert!(
            l.request("repo", acquire(10), holder(1), T0)
                .unwrap()
                .granted
        );
        // Found by lookup, then (the same hold) without one.
        for _ in 0..2 {
            assert!(admit(&mut l, &call(1, "a", T0)).unwrap().is_none());
        }
        assert!(
            admit(&mut l, &call(2, "b", T0)).is_err(),
            "another session is refused"
        );
        // Renewed: still this session's, now until the new expiry.
        let renewed = T0 + Duration::from_secs(5);
        assert!(
            l.request("repo", acquire(10), holder(1), renewed)
                .unwrap()
                .granted
        );
        let past_first_ttl = T0 + Duration::from_secs(12);
        assert!(admit(&mut l, &call(1, "a", past_first_ttl))
            .unwrap()
            .is_none());
        // Past the renewed TTL the hold is gone: taken afresh by the admission.
        let expired = renewed + Duration::from_secs(10);
        assert!(admit(&mut l, &call(1, "a", expired)).unwrap().is_some());
        // Released, then taken by another session: the first is refused.
        let mut l = leases();
        assert!(
            l.request("repo", acquire(10), holder(1), T0)
                .unwrap()
                .granted
        );
        assert!(admit(&mut l, &call(1, "a", T0)).unwrap().is_none());
        assert!(
            l.request("repo", LeaseOp::Release, holder(1), T0)
                .unwrap()
                .released
        );
        assert!(
            l.request("repo", acquire(10), holder(2), T0)
                .unwrap()
                .granted
        );
        assert!(
            admit(&mut l, &call(1, "a", T0)).is_err(),
            "session 2 holds it"
        );
        // Session 2's connection ends; session 1's admission takes it.
        assert!(admit(&mut l, &call(2, "b", T0)).unwrap().is_none());
        assert_eq!(l.end_session(2), 1);
        assert!(admit(&mut l, &call(1, "a", T0)).unwrap().is_some());
    }

    #[test]
    fn a_held_lease_names_its_holder_and_frees_itself_at_its_ttl() {
        let mut l = leases();
        let got = l.request("repo", acquire(10), holder(1), T0).unwrap();
        assert!(got.granted);
        assert_eq!(got.expires_in, Some(Duration::from_secs(10)));
        let at = T0 + Duration::from_secs(4);
        let refused = l.request("repo", acquire(10), holder(2), at).unwrap();
        assert!(!refused.granted);
        assert_eq!(
            refused.holder,
            Some((holder(1), Duration::from_secs(6))),
            "the refusal names the holder and when it expires"
        );
        assert_eq!(l.held(at), 1);
        // One nanosecond before expiry it is still held; at expiry it is free.
        let just_before = T0 + Duration::from_secs(10) - Duration::from_nanos(1);
        assert!(
            !l.request("repo", acquire(10), holder(2), just_before)
                .unwrap()
                .granted
        );
        let at_expiry = T0 + Duration::from_secs(10);
        assert_eq!(l.held(at_expiry), 0);
        assert!(
            l.request("repo", acquire(10), holder(2), at_expiry)
                .unwrap()
                .granted
        );
        // The first holder's release is not the second's.
        let release = l
            .request("repo", LeaseOp::Release, holder(1), at_expiry)
            .unwrap();
        assert!(!release.released);
        assert_eq!(l.held(at_expiry), 1);
    }

    #[test]
    fn renewing_extends_and_release_frees_at_once() {
        let mut l = leases();
        l.request("x", acquire(10), holder(1), T0).unwrap();
        let later = T0 + Duration::from_secs(8);
        let renewed = l.request("x", acquire(10), holder(1), later).unwrap();
        assert_eq!(renewed.expires_in, Some(Duration::from_secs(10)));
        // Past the first TTL, still held thanks to the renewal.
        let past_first = T0 + Duration::from_secs(12);
        assert!(
            !l.request("x", acquire(1), holder(2), past_first)
                .unwrap()
                .granted
        );
        let released = l
            .request("x", LeaseOp::Release, holder(1), past_first)
            .unwrap();
        assert!(released.released);
        assert!(
            l.request("x", acquire(1), holder(2), past_first)
                .unwrap()
                .granted
        );
    }

    #[test]
    fn ttls_and_caps_are_checked_with_clear_errors() {
        let mut l = leases();
        assert_eq!(
            l.request("x", acquire(0), holder(1), T0),
            Err(LeaseError::ZeroTtl)
        );
        let err = l.request("x", acquire(301), holder(1), T0).unwrap_err();
        assert!(err.to_string().contains("leases.max_ttl"), "{err}");
        let default = l
            .request("x", LeaseOp::Acquire { ttl: None }, holder(1), T0)
            .unwrap();
        assert_eq!(default.expires_in, Some(Duration::from_secs(30)));
        l.request("y", acquire(10), holder(1), T0).unwrap();
        let err = l.request("z", acquire(10), holder(1), T0).unwrap_err();
        assert_eq!(err, LeaseError::PerConnection(2));
        assert!(err.to_string().contains("leases.max_per_connection"));
        // Renewing one already held is not a new lease.
        assert!(l.request("y", acquire(10), holder(1), T0).unwrap().granted);
        l.request("z", acquire(10), holder(2), T0).unwrap();
        assert_eq!(
            l.request("w", acquire(10), holder(3), T0),
            Err(LeaseError::Total(3))
        );
        // Expired leases do not count against the caps once purged.
        let later = T0 + Duration::from_secs(31);
        l.purge(later);
        assert_eq!(l.held(later), 0);
        assert!(
            l.request("w", acquire(10), holder(3), later)
                .unwrap()
                .granted
        );
    }

    #[test]
    fn a_session_end_frees_its_leases_only() {
        let mut l = leases();
        l.request("a", acquire(10), holder(1), T0).unwrap();
        l.request("b", acquire(10), holder(1), T0).unwrap();
        l.request("c", acquire(10), holder(2), T0).unwrap();
        assert_eq!(l.end_session(1), 2);
        assert_eq!(l.end_session(1), 0);
        assert_eq!(l.held(T0), 1);
        assert!(l.request("a", acquire(10), holder(3), T0).unwrap().granted);
    }

    #[test]
    fn an_admission_hold_ends_with_its_call_unless_renewed_by_request() {
        let mut l = leases();
        let insert = |l: &mut Leases| {
            let grant = l.insert("r".into(), holder(1), T0 + Duration::from_secs(30), true);
            Grant {
                name: Arc::from("r"),
                grant: Some(grant),
            }
        };
        let mut grant = insert(&mut l);
        l.give_back(&mut grant);
        assert_eq!(l.held(T0), 0);
        l.give_back(&mut grant);
        // Renewed by a Lease request: the session's now; the call's end leaves it.
        let mut grant = insert(&mut l);
        assert!(l.request("r", acquire(60), holder(1), T0).unwrap().granted);
        l.give_back(&mut grant);
        assert_eq!(l.held(T0), 1);
        // A stale grant never frees a later holder's lease.
        let mut l = leases();
        let mut stale = insert(&mut l);
        let after = T0 + Duration::from_secs(31);
        assert!(
            l.request("r", acquire(10), holder(2), after)
                .unwrap()
                .granted
        );
        l.give_back(&mut stale);
        assert_eq!(l.held(after), 1);
    }
}
