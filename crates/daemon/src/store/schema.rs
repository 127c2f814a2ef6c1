//! The ledger's tables, migrations, startup load, and how each entry is written.
//!
//! Amounts are INTEGER micro-dollars with CHECK constraints; `charges` is the
//! append-only journal (refunds mark a row, never delete it) and `balances` the
//! materialized spend per budget and period, updated in the same transaction.

use rusqlite::{params, Connection, OptionalExtension};

use rusqlite::types::Value;

use super::filing;
use super::periods::{self, Opening};
use super::sql::{to_i64, to_u64};
use super::{Books, Entry, Outcome, Snapshot, StoredReservation};
use crate::money::{Usd, MAX_BALANCE};

/// SQLite's page size (the default, which the ledger never changes).
pub(super) const PAGE_SIZE: u64 = 4096;

/// Schema migrations, applied in order; `PRAGMA user_version` is how many ran.
/// Append only: a released migration is never edited.
const MIGRATIONS: &[&str] = &[
    // 1: the first ledger.
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
     CREATE TABLE reservations (
         id INTEGER PRIMARY KEY,
         agent TEXT NOT NULL,
         service TEXT NOT NULL,
         model TEXT,
         estimate INTEGER NOT NULL CHECK (estimate >= 0),
         budgets TEXT NOT NULL,
         at INTEGER NOT NULL);
     CREATE TABLE charges (
         key TEXT PRIMARY KEY,
         reservation INTEGER,
         agent TEXT NOT NULL,
         service TEXT NOT NULL,
         amount INTEGER NOT NULL CHECK (amount >= 0),
         budgets TEXT NOT NULL,
         at INTEGER NOT NULL,
         refunded INTEGER NOT NULL DEFAULT 0 CHECK (refunded IN (0, 1)));
     CREATE TABLE balances (
         budget TEXT NOT NULL,
         period_start INTEGER NOT NULL,
         spent INTEGER NOT NULL CHECK (spent >= 0),
         PRIMARY KEY (budget, period_start));
     CREATE TABLE quota_usage (
         quota TEXT NOT NULL,
         key TEXT NOT NULL,
         window_start INTEGER NOT NULL,
         used INTEGER NOT NULL CHECK (used >= 0),
         PRIMARY KEY (quota, key, window_start));
     CREATE TABLE limits (budget TEXT PRIMARY KEY, amount INTEGER NOT NULL CHECK (amount >= 0));
     CREATE TABLE audit (
         id INTEGER PRIMARY KEY AUTOINCREMENT,
         at INTEGER NOT NULL,
         uid INTEGER NOT NULL,
         pid INTEGER NOT NULL,
         action TEXT NOT NULL);",
    // 2: the reset each budget's balances are kept under (`periods.rs`).
    "CREATE TABLE periods (budget TEXT PRIMARY KEY, reset TEXT NOT NULL);",
    // 3: what an admin's reset of a budget's period forgave (`filing.rs`).
    "CREATE TABLE forgiven (
         budget TEXT NOT NULL,
         period_start INTEGER NOT NULL,
         through INTEGER NOT NULL,
         PRIMARY KEY (budget, period_start));",
];

/// Pragmas for durability, then migrations. `wal_pages`: the WAL's size at
/// which it is checkpointed and to which it is cut back.
pub(super) fn prepare(conn: &mut Connection, wal_pages: u64) -> Result<(), String> {
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
        .map_err(|e| format!("enabling WAL: {e}"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(format!(
            "the filesystem does not support WAL (journal_mode is {mode})"
        ));
    }
    // FULL: the WAL is fsynced at every commit, so an acknowledged charge survives
    // power loss, not only a crash of the process. The writer thread lowers it to
    // NORMAL and leaves the fsync to the syncer thread (`syncer.rs`).
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(|e| e.to_string())?;
    conn.pragma_update(None, "foreign_keys", true)
        .map_err(|e| e.to_string())?;
    // A WAL that is checkpointed before it takes much of its filesystem, and
    // cut back after each checkpoint: on a small state filesystem an
    // ever-growing WAL fills it for good.
    conn.pragma_update(None, "wal_autocheckpoint", wal_pages as i64)
        .map_err(|e| e.to_string())?;
    conn.query_row(
        &format!("PRAGMA journal_size_limit = {}", wal_pages * PAGE_SIZE),
        [],
        |_| Ok(()),
    )
    .map_err(|e| e.to_string())?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(|e| e.to_string())?;
    let version = usize::try_from(version).unwrap_or(usize::MAX);
    if version > MIGRATIONS.len() {
        return Err(format!(
            "the ledger has schema version {version}, newer than this build knows ({}); run a newer automation-frameworkd",
            MIGRATIONS.len()
        ));
    }
    for (idx, migration) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction().map_err(|e| e.to_string())?;
        tx.execute_batch(migration)
            .and_then(|()| tx.pragma_update(None, "user_version", idx as i64 + 1))
            .and_then(|()| tx.commit())
            .map_err(|e| format!("migration {}: {e}", idx + 1))?;
    }
    Ok(())
}

/// Reads what the daemon needs at startup and starts a new epoch; the budgets
/// of `opening` whose reset changed have their charges re-filed first
/// (`periods.rs`).
pub(super) fn load(conn: &mut Connection, opening: &Opening) -> rusqlite::Result<Snapshot> {
    let tx = conn.transaction()?;
    let epoch: i64 = tx
        .query_row("SELECT value FROM meta WHERE key = 'epoch'", [], |row| {
            row.get(0)
        })
        .optional()?
        .unwrap_or(0)
        + 1;
    tx.execute(
        "INSERT INTO meta (key, value) VALUES ('epoch', ?1) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![epoch],
    )?;
    let mut snapshot = Snapshot {
        epoch: to_u64(epoch),
        ..Snapshot::default()
    };
    {
        let mut stmt = tx.prepare(
            "SELECT id, agent, service, model, estimate, budgets FROM reservations ORDER BY id",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok(StoredReservation {
                id: to_u64(row.get(0)?),
                agent: row.get(1)?,
                service: row.get(2)?,
                model: row.get(3)?,
                estimate: Usd::from_micros(row.get(4)?),
                budgets: split_names(&row.get::<_, String>(5)?),
            })
        })?;
        snapshot.reservations = rows.collect::<rusqlite::Result<_>>()?;
        // The latest window of each counter; older windows are history.
        let mut stmt = tx.prepare(
            "SELECT quota, key, MAX(window_start), used FROM quota_usage GROUP BY quota, key",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok((
                row.get(0)?,
                row.get(1)?,
                to_u64(row.get(2)?),
                to_u64(row.get(3)?),
            ))
        })?;
        snapshot.quotas = rows.collect::<rusqlite::Result<_>>()?;
    }
    let refiled = periods::refile(&tx, opening, periods::Record::Now)?;
    snapshot.books = books(&tx, None)?;
    snapshot.books.refiled = refiled;
    tx.commit()?;
    Ok(snapshot)
}

/// The books of the budgets named, or of every budget (`None`, at startup).
pub(super) fn books(conn: &Connection, names: Option<&[String]>) -> rusqlite::Result<Books> {
    let mut books = Books::default();
    // Read as any value: a balance that is not a valid amount (a float left by
    // an overflow in an older version, a hand edit) must not keep the whole
    // ledger from opening; its budget alone fails closed.
    let mut add = |budget: String, period: i64, spent: Value| match balance(&spent) {
        Ok(amount) => books.balances.push((budget, to_u64(period), amount)),
        Err(found) => books.unreadable.push((budget, to_u64(period), found)),
    };
    let mut limits = Vec::new();
    match names {
        None => {
            let mut stmt = conn.prepare("SELECT budget, period_start, spent FROM balances")?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                add(row.get(0)?, row.get(1)?, row.get(2)?);
            }
            let mut stmt = conn.prepare("SELECT budget, amount FROM limits")?;
            let rows =
                stmt.query_map([], |row| Ok((row.get(0)?, Usd::from_micros(row.get(1)?))))?;
            limits = rows.collect::<rusqlite::Result<_>>()?;
        }
        Some(names) => {
            // By the primary key, one budget at a time: the table holds every
            // budget's every period.
            let mut balances =
                conn.prepare("SELECT period_start, spent FROM balances WHERE budget = ?1")?;
            let mut limit = conn.prepare("SELECT amount FROM limits WHERE budget = ?1")?;
            for name in names {
                let mut rows = balances.query([name])?;
                while let Some(row) = rows.next()? {
                    add(name.clone(), row.get(0)?, row.get(1)?);
                }
                let amount: Option<i64> = limit.query_row([name], |row| row.get(0)).optional()?;
                limits.extend(amount.map(|a| (name.clone(), Usd::from_micros(a))));
            }
        }
    }
    books.limits = limits;
    Ok(books)
}

/// A stored balance as an amount, or what was found instead.
fn balance(value: &Value) -> Result<Usd, String> {
    match value {
        Value::Integer(n) if (0..=MAX_BALANCE.micros()).contains(n) => Ok(Usd::from_micros(*n)),
        Value::Integer(n) => Err(format!("{n} micro-dollars, outside 0 to {MAX_BALANCE}")),
        Value::Real(f) => Err(format!("the non-integer {f} (a sum that overflowed)")),
        Value::Null => Err("NULL".into()),
        Value::Text(_) | Value::Blob(_) => Err("a value that is not a number".into()),
    }
}

/// A write that changes nothing but must reach the disk: does the ledger accept
/// writes (after a full disk was given room)?
pub(super) fn probe(conn: &mut Connection) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    tx.execute("UPDATE meta SET value = value WHERE key = 'epoch'", [])?;
    tx.commit()
}

/// The balance a charge of `amount` leaves in `budget`'s period, or why it may
/// not be filed: it would pass [`MAX_BALANCE`] (which no honest spending
/// reaches: a limit is at most $1e9), or the stored balance is unreadable.
fn checked_balance(
    sp: &Connection,
    budget: &str,
    period_start: u64,
    amount: Usd,
) -> rusqlite::Result<Result<(), String>> {
    let stored: Option<Value> = sp
        .prepare_cached("SELECT spent FROM balances WHERE budget = ?1 AND period_start = ?2")?
        .query_row(params![budget, to_i64(period_start)], |row| row.get(0))
        .optional()?;
    let current = match stored.as_ref().map(balance) {
        None => Usd::ZERO,
        Some(Ok(current)) => current,
        Some(Err(found)) => {
            return Ok(Err(format!(
                "budget {budget}'s balance in the ledger is {found}; an admin must reset the budget (automation-framework budget reset)"
            )))
        }
    };
    Ok(match current.checked_add(amount) {
        Some(total) if total <= MAX_BALANCE => Ok(()),
        _ => Err(format!(
            "a charge of {amount} would take budget {budget}'s balance of {current} past the ledger's maximum of {MAX_BALANCE}; nothing was charged"
        )),
    })
}

/// A charge refused by the balance check, unless its key is already filed: a
/// repeat of a filed charge is a duplicate, not a refusal.
fn refused_or_duplicate(sp: &Connection, key: &str, why: String) -> rusqlite::Result<Outcome> {
    Ok(if is_charged(sp, key)? {
        Outcome::Duplicate
    } else {
        Outcome::Refused(why)
    })
}

pub(super) fn is_charged(conn: &Connection, key: &str) -> rusqlite::Result<bool> {
    conn.prepare_cached("SELECT 1 FROM charges WHERE key = ?1")?
        .exists(params![key])
}

/// Applies one job's entries (inside its savepoint when it has several).
///
/// Invariant: an entry that answers `Duplicate`, `NotFound` or `Refused` leaves
/// the ledger as it found it (it answers before it writes anything, or takes
/// back the one row it inserted), so a single-entry job needs no savepoint to
/// be rolled back.
pub(super) fn apply(sp: &Connection, entries: &[Entry]) -> rusqlite::Result<Outcome> {
    let mut outcome = Outcome::Done;
    for entry in entries {
        match entry {
            Entry::Reserve {
                id,
                agent,
                service,
                model,
                estimate,
                budgets,
                at,
            } => {
                sp.prepare_cached(
                    "INSERT INTO reservations (id, agent, service, model, estimate, budgets, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?
                .execute(params![to_i64(*id), agent, service, model, estimate.micros(), budgets.join("\n"), to_i64(*at)])?;
            }
            Entry::Charge {
                key,
                reservation,
                agent,
                service,
                amount,
                budgets,
                at,
            } => {
                // Three statements for the usual charge of one budget: the
                // insert tells a duplicate key apart (it inserts nothing), and
                // the balance's update carries its own bound (it changes
                // nothing past it). A charge of several budgets checks them
                // all first, since one refused after another was added would
                // leave a row behind.
                let single = budgets.len() == 1 && *amount <= MAX_BALANCE;
                if !single {
                    for (budget, period_start) in budgets {
                        if let Err(why) = checked_balance(sp, budget, *period_start, *amount)? {
                            return refused_or_duplicate(sp, key, why);
                        }
                    }
                }
                let inserted = sp
                    .prepare_cached(
                        "INSERT OR IGNORE INTO charges (key, reservation, agent, service, amount, budgets, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    )?
                    .execute(params![
                        key,
                        reservation.map(to_i64),
                        agent,
                        service,
                        amount.micros(),
                        filing::join(budgets),
                        to_i64(*at)
                    ])?;
                if inserted == 0 {
                    return Ok(Outcome::Duplicate);
                }
                for (budget, period_start) in budgets {
                    let added = sp
                        .prepare_cached(
                            "INSERT INTO balances (budget, period_start, spent) VALUES (?1, ?2, ?3)
                             ON CONFLICT (budget, period_start) DO UPDATE SET spent = spent + excluded.spent
                             WHERE typeof(spent) = 'integer' AND spent BETWEEN 0 AND ?4 - excluded.spent",
                        )?
                        .execute(params![
                            budget,
                            to_i64(*period_start),
                            amount.micros(),
                            MAX_BALANCE.micros()
                        ])?;
                    if added == 0 {
                        // Only a single budget gets here (the others were
                        // checked): its charge row goes, and the ledger is as
                        // it was. Why, in words, is the check's.
                        sp.prepare_cached("DELETE FROM charges WHERE key = ?1")?
                            .execute(params![key])?;
                        let why = checked_balance(sp, budget, *period_start, *amount)?
                            .err()
                            .unwrap_or_else(|| format!(
                                "budget {budget}'s balance in the ledger is not an amount a charge of {amount} can be added to; an admin must reset the budget (automation-framework budget reset)"
                            ));
                        return Ok(Outcome::Refused(why));
                    }
                }
                if let Some(id) = reservation {
                    sp.prepare_cached("DELETE FROM reservations WHERE id = ?1")?
                        .execute(params![to_i64(*id)])?;
                }
            }
            Entry::Unreserve { id } => {
                sp.prepare_cached("DELETE FROM reservations WHERE id = ?1")?
                    .execute(params![to_i64(*id)])?;
            }
            Entry::QuotaAdd {
                quota,
                key,
                window_start,
                n,
            } => {
                sp.prepare_cached(
                    "INSERT INTO quota_usage (quota, key, window_start, used) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (quota, key, window_start) DO UPDATE SET used = used + excluded.used",
                )?
                .execute(params![quota, key, to_i64(*window_start), to_i64(*n)])?;
            }
            Entry::QuotaReset { quota, key } => {
                sp.execute(
                    "DELETE FROM quota_usage WHERE quota = ?1 AND key = ?2",
                    params![quota, key],
                )?;
            }
            Entry::SetLimit { budget, limit } => {
                sp.execute(
                    "INSERT INTO limits (budget, amount) VALUES (?1, ?2) ON CONFLICT (budget) DO UPDATE SET amount = excluded.amount",
                    params![budget, limit.micros()],
                )?;
            }
            Entry::ResetBudget {
                budget,
                period_start,
            } => {
                sp.execute(
                    "UPDATE balances SET spent = 0 WHERE budget = ?1 AND period_start = ?2",
                    params![budget, to_i64(*period_start)],
                )?;
                filing::forgive(sp, budget, *period_start)?;
            }
            Entry::RecordReset { budget, reset, at } => {
                // What was filed under the old reset between the reload's
                // read and its switch is moved now, in the ledger's order:
                // everything filed under the old reset is queued before.
                let opened = Opening {
                    now: *at,
                    budgets: vec![periods::Opened {
                        name: budget.clone(),
                        reset: *reset,
                        filed_as: None,
                    }],
                };
                let moved = periods::refile(sp, &opened, periods::Record::Now)?;
                match &mut outcome {
                    Outcome::Refiled(all) => all.extend(moved),
                    other => *other = Outcome::Refiled(moved),
                }
            }
            Entry::Refund { key } => {
                let charge: Option<(i64, i64, String)> = sp
                    .query_row(
                        "SELECT rowid, amount, budgets FROM charges WHERE key = ?1 AND refunded = 0",
                        params![key],
                        |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
                    )
                    .optional()?;
                let Some((rowid, amount, filed)) = charge else {
                    return Ok(Outcome::NotFound);
                };
                sp.execute(
                    "UPDATE charges SET refunded = 1 WHERE key = ?1",
                    params![key],
                )?;
                // A budget whose reset forgave the charge gives nothing back:
                // its balance holds only what was spent after the reset.
                let mut budgets = Vec::new();
                for (budget, period_start) in filing::split(&filed) {
                    if filing::forgiven_through(sp, &budget, period_start)?
                        .is_none_or(|through| rowid > through)
                    {
                        budgets.push((budget, period_start));
                    }
                }
                for (budget, period_start) in &budgets {
                    sp.execute(
                        "UPDATE balances SET spent = MAX(spent - ?3, 0) WHERE budget = ?1 AND period_start = ?2",
                        params![budget, to_i64(*period_start), amount],
                    )?;
                }
                outcome = Outcome::Refunded {
                    amount: Usd::from_micros(amount),
                    budgets,
                };
            }
            Entry::Audit {
                uid,
                pid,
                action,
                at,
            } => {
                sp.execute(
                    "INSERT INTO audit (at, uid, pid, action) VALUES (?1, ?2, ?3, ?4)",
                    params![to_i64(*at), uid, pid, action],
                )?;
            }
        }
    }
    Ok(outcome)
}

/// Budget names are validated names: no control characters, so a newline separates.
fn split_names(text: &str) -> Vec<String> {
    text.split('\n')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}
