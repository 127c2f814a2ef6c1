//! Where a charge is filed: its `budgets` column, one `name@period_start` a
//! line for each budget that counts it.
//!
//! A line that starts with `-` names a budget that no longer counts the
//! charge: an admin's reset of that period forgave it (`forgive`). Budget
//! names start with `global`, `agent:` or `service:`, so no name starts with
//! `-`. A forgiven charge is then neither taken out of that budget again by a
//! refund (which would take it out of what was spent after the reset) nor
//! moved into a new period when the budget's reset changes (which would
//! count it again: `periods.rs`). The lines stay, so the journal still says
//! where the charge was filed.

/// The text a charge filed under `budgets` stores.
pub(super) fn join(budgets: &[(String, u64)]) -> String {
    budgets
        .iter()
        .map(|(name, start)| format!("{name}@{start}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The budgets that count the charge, with the period each filed it under;
/// forgiven and unreadable lines are left out.
pub(super) fn split(text: &str) -> Vec<(String, u64)> {
    text.split('\n')
        .filter_map(|line| {
            let (name, start) = counted(line)?;
            Some((name.to_owned(), start))
        })
        .collect()
}

/// `text` with each counting line that `change` (given the budget's name and
/// period start) answers with a new line replaced by it; `None` when none
/// changed. Other lines stay exactly as they were.
pub(super) fn rewrite(
    text: &str,
    mut change: impl FnMut(&str, u64) -> Option<String>,
) -> Option<String> {
    let mut changed = false;
    let lines: Vec<String> = text
        .split('\n')
        .map(
            |line| match counted(line).and_then(|(name, start)| change(name, start)) {
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

/// `text` with `budget`'s line for period `start` marked forgiven, if the
/// charge is counted there.
pub(super) fn forgive(text: &str, budget: &str, start: u64) -> Option<String> {
    rewrite(text, |name, filed| {
        (name == budget && filed == start).then(|| format!("-{}", line(name, filed)))
    })
}

/// A counting line's budget and period start.
fn counted(line: &str) -> Option<(&str, u64)> {
    if line.starts_with('-') {
        return None;
    }
    let (name, start) = line.rsplit_once('@')?;
    Some((name, start.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_and_forgiven_ones_stop_counting() {
        let filed = vec![("global".to_owned(), 0), ("agent:a@x".to_owned(), 100)];
        let text = join(&filed);
        assert_eq!(split(&text), filed, "a name may hold an @");
        let forgiven = forgive(&text, "agent:a@x", 100).unwrap();
        assert_eq!(forgiven, "global@0\n-agent:a@x@100");
        assert_eq!(split(&forgiven), vec![("global".to_owned(), 0)]);
        assert_eq!(forgive(&forgiven, "agent:a@x", 100), None, "once");
        assert_eq!(forgive(&text, "agent:a@x", 99), None, "another period");
        let moved = rewrite(&forgiven, |name, _| Some(line(name, 7))).unwrap();
        assert_eq!(moved, "global@7\n-agent:a@x@100", "forgiven lines stay");
        assert_eq!(
            split("global@soon\nagent:b@5"),
            vec![("agent:b".to_owned(), 5)]
        );
    }

    proptest::proptest! {
        /// Whatever a ledger holds (a hand edit, a bad disk), reading it
        /// never panics; changing nothing rewrites nothing; a forgiven line
        /// stops counting, and a move keeps every counting line's budget.
        #[test]
        fn any_text_is_read_and_rewritten_safely(
            text in "(-?(global|agent:[a-z@]{0,3})@[0-9a-z]{0,4}\n?){0,4}",
            start in 0u64..100,
        ) {
            let counted = split(&text);
            proptest::prop_assert_eq!(rewrite(&text, |_, _| None), None);
            for (name, filed) in &counted {
                let forgiven = forgive(&text, name, *filed).expect("counted, so forgivable");
                proptest::prop_assert!(!split(&forgiven).contains(&(name.clone(), *filed)));
            }
            let moved = rewrite(&text, |name, _| Some(line(name, start)));
            proptest::prop_assert_eq!(moved.is_some(), !counted.is_empty());
            if let Some(moved) = moved {
                let names: Vec<_> = counted.iter().map(|(n, _)| (n.clone(), start)).collect();
                proptest::prop_assert_eq!(split(&moved), names);
            }
        }
    }
}
