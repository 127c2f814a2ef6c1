//! Where a charge is filed, and which of its budgets an admin's reset made
//! forgive it.
//!
//! A charge's `budgets` column holds one `name@period_start` line for each
//! budget it was charged to. An admin's reset of a budget's period sets its
//! balance to 0: it forgives every charge filed under that period until
//! then. The ledger records that as the last charge's row id at the reset
//! (table `forgiven`; row ids only grow, as charges are never deleted once
//! filed), so a reset costs one row whatever the charges. A forgiven charge
//! is then neither taken out of that budget again by a refund (which would
//! take it out of what was spent after the reset: an overrun) nor moved into
//! a new period when the budget's reset changes (which would count it again:
//! `periods.rs`).

use rusqlite::{params, Connection, OptionalExtension};

use super::sql::{to_i64, to_u64};

/// The text a charge filed under `budgets` stores.
pub(super) fn join(budgets: &[(String, u64)]) -> String {
    budgets
        .iter()
        .map(|(name, start)| line(name, *start))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The budgets a charge was filed under, with the period of each; unreadable
/// lines are left out.
pub(super) fn split(text: &str) -> Vec<(String, u64)> {
    text.split('\n')
        .filter_map(|line| {
            let (name, start) = parse(line)?;
            Some((name.to_owned(), start))
        })
        .collect()
}

/// `text` with each line that `change` (given the budget's name and period
/// start) answers with a new line replaced by it; `None` when none changed.
/// Other lines stay exactly as they were.
pub(super) fn rewrite(
    text: &str,
    mut change: impl FnMut(&str, u64) -> Option<String>,
) -> Option<String> {
    let mut changed = false;
    let lines: Vec<String> = text
        .split('\n')
        .map(
            |line| match parse(line).and_then(|(name, start)| change(name, start)) {
                Some(new) => {
                    changed = true;
                    new
                }
                None => line.to_owned(),
            },
        )
        .collect();
    changed.then(|| lines.join("\n"))
}

/// The line that files a charge under `name`'s period `start`.
pub(super) fn line(name: &str, start: u64) -> String {
    format!("{name}@{start}")
}

fn parse(line: &str) -> Option<(&str, u64)> {
    let (name, start) = line.rsplit_once('@')?;
    Some((name, start.parse().ok()?))
}

/// Records that `budget`'s period `start` forgives every charge filed so far.
pub(super) fn forgive(conn: &Connection, budget: &str, start: u64) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO forgiven (budget, period_start, through)
         VALUES (?1, ?2, (SELECT COALESCE(MAX(rowid), 0) FROM charges))
         ON CONFLICT (budget, period_start) DO UPDATE SET through = excluded.through",
    )?
    .execute(params![budget, to_i64(start)])?;
    Ok(())
}

/// The last charge (row id) `budget`'s period `start` forgave, if a reset did.
pub(super) fn forgiven_through(
    conn: &Connection,
    budget: &str,
    start: u64,
) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached("SELECT through FROM forgiven WHERE budget = ?1 AND period_start = ?2")?
        .query_row(params![budget, to_i64(start)], |row| row.get(0))
        .optional()
}

/// Every period of `budget` a reset forgave charges in, with the last one.
pub(super) fn forgiven(conn: &Connection, budget: &str) -> rusqlite::Result<Vec<(u64, i64)>> {
    let mut stmt =
        conn.prepare_cached("SELECT period_start, through FROM forgiven WHERE budget = ?1")?;
    let rows = stmt.query_map([budget], |row| {
        Ok((to_u64(row.get::<_, i64>(0)?), row.get::<_, i64>(1)?))
    })?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_and_rewrite_only_what_changes() {
        let filed = vec![("global".to_owned(), 0), ("agent:a@x".to_owned(), 100)];
        let text = join(&filed);
        assert_eq!(split(&text), filed, "a name may hold an @");
        let moved = rewrite(&text, |name, start| (start == 100).then(|| line(name, 7))).unwrap();
        assert_eq!(moved, "global@0\nagent:a@x@7");
        assert_eq!(rewrite(&text, |_, _| None), None);
        assert_eq!(
            split("global@soon\nagent:b@5"),
            vec![("agent:b".to_owned(), 5)]
        );
    }

    proptest::proptest! {
        /// Whatever a ledger holds (a hand edit, a bad disk), reading it
        /// never panics; changing nothing rewrites nothing; a move keeps
        /// every readable line's budget and leaves unreadable lines as
        /// they were.
        #[test]
        fn any_text_is_read_and_rewritten_safely(
            text in "((global|agent:[a-z@]{0,3})@[0-9a-z]{0,4}\\n?){0,4}",
            start in 0u64..100,
        ) {
            let filed = split(&text);
            proptest::prop_assert_eq!(rewrite(&text, |_, _| None), None);
            let moved = rewrite(&text, |name, _| Some(line(name, start)));
            proptest::prop_assert_eq!(moved.is_some(), !filed.is_empty());
            if let Some(moved) = moved {
                let names: Vec<_> = filed.iter().map(|(n, _)| (n.clone(), start)).collect();
                proptest::prop_assert_eq!(split(&moved), names);
                proptest::prop_assert_eq!(moved.split('\n').count(), text.split('\n').count());
            }
        }
    }
}
