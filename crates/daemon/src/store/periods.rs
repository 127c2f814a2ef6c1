//! A budget whose reset changed: what it was charged since its new period
//! began is re-filed under that period, so the new period starts at what the
//! agent really spent in it.
//!
//! The ledger keeps balances by (budget, period start), and each charge says
//! under which period of each budget it is filed. A budget switched from
//! `daily` to `monthly` would otherwise open the month at whatever was filed
//! under the month's first day (that day's spend), forgetting the rest of the
//! month: an overrun of the very limit the operator just set. One switched
//! from `monthly` to `daily` would open today at nothing.
//!
//! So the ledger remembers the reset each budget's balances were kept under
//! (table `periods`), and when a budget is opened with another one it moves
//! every unrefunded charge made since the new period's start (by the charge's
//! time, `charges.at`) from the balance it was filed under to the new
//! period's: the charge's `budgets` names the new period, the old balance
//! gives the amount back, the new one takes it. Moved, not copied: a refund
//! of a moved charge later takes it out of the balance that counts it, and a
//! second change of the reset cannot count it twice; moving again what was
//! moved moves nothing.
//!
//! Finding them reads the whole `charges` table, and each move rewrites a
//! row. On the development VM, with a million charges in the ledger: a
//! reload moving 32,576 of them took 0.2 s (monthly to daily) to 0.6-0.8 s
//! (daily to monthly, every charge the budget's, so each one parsed); a
//! start moving all million, 3.8 s (about 3.5 us a charge moved). `charges.at` has no index on purpose: a change of reset is
//! an operator's rare act, and an index is written by every charge (1.5-2 us
//! more a charge, measured). At a reload the writer does this work while
//! charges wait behind it.
//!
//! What stays: a charge already refunded (its amount is in no balance), and
//! a charge an admin's reset forgave (`filing.rs`: the reset took it out of
//! the balance, and it is not counted again). A ledger written before this
//! table existed has no reset on record: the first open records the
//! config's reset without moving anything.
//!
//! It runs where the ledger is read for a budget's opening: the start-up load
//! (before anything is served, in one transaction with the record of the new
//! reset) and a reload's books (a job in the writer's queue, after every
//! write queued before it). A reload records the reset once it is applied
//! (`Entry::RecordReset`), and the record moves again first: what was
//! filed under the old reset between the read and the switch. Moving is idempotent: a charge already filed under
//! the new period stays. So whatever is lost or refused between the move
//! and the record (a power loss, a reload whose books came too late), the
//! next opening finds the old reset on record and moves again what the
//! daemon filed meanwhile.

use std::collections::HashMap;

use rusqlite::types::Value;
use rusqlite::{params, Connection, OptionalExtension};

use super::filing;
use super::sql::{to_i64, to_u64};
use crate::guard::period::Period;
use crate::money::{Usd, MAX_BALANCE};

/// The budgets the daemon opens, and the wall time (Unix seconds) they are
/// opened at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Opening {
    pub now: u64,
    pub budgets: Vec<Opened>,
}

/// A budget the daemon opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    pub name: String,
    /// The reset it opens with.
    pub reset: Period,
    /// The reset it has been filed under until now, when the daemon already
    /// has it (a reload that changes its reset): its charges are moved
    /// whatever the ledger has on record.
    pub filed_as: Option<Period>,
}

impl Opening {
    pub fn names(&self) -> Vec<String> {
        self.budgets.iter().map(|b| b.name.clone()).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.budgets.is_empty()
    }

    /// What records these budgets' resets once a reload that read their
    /// books is applied ([`super::Entry::RecordReset`]).
    pub fn records(&self) -> Vec<super::Entry> {
        self.budgets
            .iter()
            .map(|b| super::Entry::RecordReset {
                budget: b.name.clone(),
                reset: b.reset,
                at: self.now,
            })
            .collect()
    }
}

/// Most budgets whose candidates SQLite finds by their names; more are
/// told apart by parsing every charge's text.
pub(super) const PREFILTER_MOST: usize = 16;

/// Charges moved to a budget's new period when its reset changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refiled {
    pub budget: String,
    /// The reset the ledger had kept the budget's balances under.
    pub from: String,
    pub to: String,
    /// The start of the period the charges were moved to.
    pub period_start: u64,
    pub charges: u64,
    pub amount: Usd,
}

/// How the ledger records a reset: stable across versions (`Period::name`
/// is for people, and its durations' spelling is a library's).
fn recorded(reset: Period) -> String {
    match reset {
        Period::Forever => "never".into(),
        Period::Daily => "daily".into(),
        Period::Weekly => "weekly".into(),
        Period::Monthly => "monthly".into(),
        Period::Every(length) => format!("{}s", length.as_secs().max(1)),
    }
}

/// When the resets of the budgets opened are recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Record {
    /// With the move: a start, which applies what it read.
    Now,
    /// By `Entry::RecordReset`, once the reload that read the books is
    /// applied: a reload refused after the move must leave the record as the
    /// daemon still files, so that the next opening moves what it files
    /// meanwhile (moving again what was moved moves nothing).
    WhenApplied,
}

/// Records that `budget`'s charges are filed under `reset` from now on.
fn record(conn: &Connection, budget: &str, reset: Period) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO periods (budget, reset) VALUES (?1, ?2)
         ON CONFLICT (budget) DO UPDATE SET reset = excluded.reset",
    )?
    .execute(params![budget, recorded(reset)])?;
    Ok(())
}

/// Where a budget's reset differs from the one on record (or from the one
/// the daemon files it under), moves the charges its new period counts (the
/// module doc); records the resets as `when` says. Call inside a
/// transaction; a failure leaves it for the caller to roll back.
pub(super) fn refile(
    conn: &Connection,
    opening: &Opening,
    when: Record,
) -> rusqlite::Result<Vec<Refiled>> {
    let mut refiled = Vec::new();
    for opened in &opening.budgets {
        let budget = &opened.name;
        let to = recorded(opened.reset);
        let on_record: Option<String> = conn
            .prepare_cached("SELECT reset FROM periods WHERE budget = ?1")?
            .query_row([budget], |row| row.get(0))
            .optional()?;
        if when == Record::Now && on_record.as_deref() != Some(to.as_str()) {
            record(conn, budget, opened.reset)?;
        }
        let from = match opened.filed_as {
            Some(filed_as) if filed_as != opened.reset => recorded(filed_as),
            // A start, or a budget a reload adds: as the ledger last kept it,
            // when it says (a ledger written before the record says nothing).
            _ => match on_record {
                Some(from) if from != to => from,
                _ => continue,
            },
        };
        refiled.push(Refiled {
            budget: budget.clone(),
            from,
            to,
            period_start: opened_period(conn, budget, opened.reset, opening.now)?,
            charges: 0,
            amount: Usd::ZERO,
        });
    }
    if !refiled.is_empty() {
        move_charges(conn, &mut refiled)?;
    }
    Ok(refiled)
}

/// The period the budget opens in, as `guard::budget::Budget::restore`
/// chooses it ([`Period::newest_start`] over the ledger's balances).
fn opened_period(
    conn: &Connection,
    budget: &str,
    reset: Period,
    now: u64,
) -> rusqlite::Result<u64> {
    let mut stmt = conn.prepare_cached("SELECT period_start FROM balances WHERE budget = ?1")?;
    let starts = stmt
        .query_map([budget], |row| row.get::<_, i64>(0))?
        .map(|start| start.map(to_u64))
        .collect::<rusqlite::Result<Vec<u64>>>()?;
    Ok(reset.newest_start(now, starts))
}

/// Moves each budget's part of every unrefunded charge made at or after its
/// new period's start and filed under another of its periods, in one read of
/// the charges however many budgets changed; counts them into `refiled`.
fn move_charges(conn: &Connection, refiled: &mut [Refiled]) -> rusqlite::Result<()> {
    let index: HashMap<String, usize> = refiled
        .iter()
        .enumerate()
        .map(|(idx, r)| (r.budget.clone(), idx))
        .collect();
    let since = refiled.iter().map(|r| r.period_start).min().unwrap_or(0);
    // SQLite tells the candidates (`name@` in the text) apart for a few
    // budgets, before a row is copied out (charges of other budgets are
    // then never parsed). The exact name is told by parsing: one name can
    // end another (`agent:a` and `a`).
    let mut sql =
        "SELECT key, amount, budgets, at, rowid FROM charges WHERE at >= ?1 AND refunded = 0"
            .to_owned();
    let mut args = vec![Value::Integer(to_i64(since))];
    if refiled.len() <= PREFILTER_MOST {
        let candidates: Vec<String> = (0..refiled.len())
            .map(|idx| format!("instr(budgets, ?{}) > 0", idx + 2))
            .collect();
        sql = format!("{sql} AND ({})", candidates.join(" OR "));
        args.extend(
            refiled
                .iter()
                .map(|r| Value::Text(format!("{}@", r.budget))),
        );
    }
    let mut stmt = conn.prepare(&sql)?;
    // Read as any value: a row a hand edit left unreadable (a text amount)
    // is left where it is, and must not keep the ledger from opening.
    let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
    let mut charges = Vec::new();
    // What each budget's old balances give back: (refiled index, start) -> sum.
    let mut given_back: HashMap<(usize, u64), Usd> = HashMap::new();
    // What a reset of each budget's periods forgave.
    let mut forgiven: HashMap<(usize, u64), i64> = HashMap::new();
    for (idx, to) in refiled.iter().enumerate() {
        for (start, through) in filing::forgiven(conn, &to.budget)? {
            forgiven.insert((idx, start), through);
        }
    }
    while let Some(row) = rows.next()? {
        let (
            Value::Text(key),
            Value::Integer(amount @ 0..),
            Value::Text(filed),
            Value::Integer(at),
            Value::Integer(rowid),
        ) = (
            row.get(0)?,
            row.get(1)?,
            row.get(2)?,
            row.get(3)?,
            row.get(4)?,
        )
        else {
            continue;
        };
        let amount = Usd::from_micros(amount);
        let text = filing::rewrite(&filed, |name, from| {
            let idx = *index.get(name)?;
            let to = &mut refiled[idx];
            if to_u64(at) < to.period_start || from == to.period_start {
                return None;
            }
            // Forgiven by a reset of the period it was filed under: in no
            // balance, and not to be counted again.
            if forgiven
                .get(&(idx, from))
                .is_some_and(|through| rowid <= *through)
            {
                return None;
            }
            let back = given_back.entry((idx, from)).or_default();
            *back = back.checked_add(amount).unwrap_or(MAX_BALANCE);
            to.charges += 1;
            to.amount = to
                .amount
                .checked_add(amount)
                .unwrap_or(MAX_BALANCE)
                .min(MAX_BALANCE);
            Some(filing::line(name, to.period_start))
        });
        if let Some(text) = text {
            charges.push((key, text));
        }
    }
    for (key, filed) in &charges {
        conn.prepare_cached("UPDATE charges SET budgets = ?2 WHERE key = ?1")?
            .execute(params![key, filed])?;
    }
    // As a refund gives back: never below zero, and a balance that is not an
    // amount is left for an admin's reset.
    for ((idx, from), amount) in &given_back {
        conn.prepare_cached(
            "UPDATE balances SET spent = MAX(spent - ?3, 0)
             WHERE budget = ?1 AND period_start = ?2 AND typeof(spent) = 'integer'",
        )?
        .execute(params![
            refiled[*idx].budget,
            to_i64(*from),
            amount.micros()
        ])?;
    }
    for to in refiled.iter().filter(|r| r.charges > 0) {
        conn.prepare_cached(
            "INSERT INTO balances (budget, period_start, spent) VALUES (?1, ?2, ?3)
             ON CONFLICT (budget, period_start) DO UPDATE SET spent = MIN(spent + excluded.spent, ?4)
             WHERE typeof(spent) = 'integer'",
        )?
        .execute(params![
            to.budget,
            to_i64(to.period_start),
            to.amount.micros(),
            MAX_BALANCE.micros()
        ])?;
    }
    Ok(())
}
