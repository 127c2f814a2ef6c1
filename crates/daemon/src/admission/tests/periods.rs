//! A budget whose reset changes, by a reload or between two starts: its new
//! period starts at what was charged since that period began, however the
//! charges were filed before (`store/periods.rs`), and memory equals the
//! ledger after every change, as a restart with the same config shows.
//!
//! The fixture's clock starts on Monday 2026-11-23, 00:00 UTC.

use super::*;

const HOURS: Duration = Duration::from_secs(3600);

/// `global` never resets; `agent:a` resets as `reset` says, limit $10.
fn resetting(reset: &str) -> String {
    format!("[budget]\nlimit = 1000.0\nreset = \"never\"\n[budget.agents.a]\nlimit = 10.0\nreset = \"{reset}\"\n")
}

/// Admits and reports a call of `dollars` by agent `a`; its reservation id.
async fn spend(f: &Fixture, dollars: f64) -> u64 {
    let id = f
        .admit_cost(1, "a", "s", dollars)
        .await
        .reservation
        .expect("admitted");
    f.report_with(id, costing(dollars)).await.expect("charged");
    id
}

/// An admin's `budget --budget agent:a --reset`.
async fn reset_a(f: &Fixture) {
    admin(
        f,
        AdminKind::ResetBudget {
            budget: "agent:a".into(),
        },
    )
    .await
    .unwrap();
}

/// An admin's refund of reservation `id`'s charge.
async fn refund(f: &Fixture, id: u64) {
    admin(
        f,
        AdminKind::Refund {
            key: reservation_key(id),
        },
    )
    .await
    .unwrap();
}

fn spent(f: &Fixture) -> Usd {
    f.budget("agent:a").spent
}

/// The balances the ledger holds for `budget`, by period start.
fn ledger_balances(f: &Fixture, budget: &str) -> Vec<(u64, Usd)> {
    let conn = rusqlite::Connection::open(f.dir.path().join(crate::store::LEDGER_FILE)).unwrap();
    let mut stmt = conn
        .prepare("SELECT period_start, spent FROM balances WHERE budget = ?1 AND spent > 0 ORDER BY period_start")
        .unwrap();
    let rows = stmt
        .query_map([budget], |row| {
            Ok((row.get::<_, i64>(0)? as u64, Usd::from_micros(row.get(1)?)))
        })
        .unwrap();
    rows.collect::<Result<_, _>>().unwrap()
}

const NOV_1: u64 = 1_795_392_000 - 22 * 86_400;
const MON_23: u64 = 1_795_392_000;

/// Daily to monthly by a reload: the month counts the three days' charges,
/// not only those filed under its first day's start; its limit governs them.
#[tokio::test]
async fn a_budget_made_monthly_counts_what_its_days_were_charged_this_month() {
    let f = fixture(&resetting("daily"));
    spend(&f, 2.0).await;
    f.clock.advance(DAY);
    spend(&f, 3.0).await;
    f.clock.advance(DAY + 5 * HOURS);
    spend(&f, 4.0).await;
    assert_eq!(spent(&f), usd(4.0), "Wednesday's, daily");
    let done = f.reconfigure(&resetting("monthly")).unwrap();
    assert_eq!(done.budgets_new_period, 1);
    assert_eq!(spent(&f), usd(9.0), "the month so far");
    assert_eq!(
        ledger_balances(&f, "agent:a"),
        vec![(NOV_1, usd(9.0))],
        "moved, not copied: the days' balances gave them back"
    );
    let d = f.admit_cost(1, "a", "s", 1.5).await;
    assert!(
        !d.allowed,
        "$9 + $1.50 is past the month's $10: {:?}",
        d.votes
    );
    let f = f.restart_with(&resetting("monthly"));
    assert_eq!(spent(&f), usd(9.0), "memory equals the ledger");
}

/// Monthly to daily between two starts, then back and forth by reloads:
/// each change counts what its period holds, and no charge twice.
#[tokio::test]
async fn a_reset_changed_back_and_forth_counts_every_charge_once() {
    let f = fixture(&resetting("monthly"));
    spend(&f, 2.0).await;
    f.clock.advance(DAY);
    spend(&f, 3.0).await;
    assert_eq!(spent(&f), usd(5.0));
    let f = f.restart_with(&resetting("daily"));
    assert_eq!(
        spent(&f),
        usd(3.0),
        "today's, not nothing and not the month's"
    );
    spend(&f, 1.0).await;
    f.reconfigure(&resetting("monthly")).unwrap();
    assert_eq!(spent(&f), usd(6.0));
    f.reconfigure(&resetting("daily")).unwrap();
    assert_eq!(spent(&f), usd(4.0));
    f.reconfigure(&resetting("monthly")).unwrap();
    assert_eq!(
        spent(&f),
        usd(6.0),
        "Tuesday's charges moved back, not added again"
    );
    assert_eq!(ledger_balances(&f, "agent:a"), vec![(NOV_1, usd(6.0))]);
    assert_eq!(
        f.budget("global").spent,
        usd(6.0),
        "global, never reset, untouched"
    );
    let f = f.restart_with(&resetting("monthly"));
    assert_eq!(spent(&f), usd(6.0));
    let f = f.restart_with(&resetting("weekly"));
    assert_eq!(spent(&f), usd(6.0), "the week began on Monday");
    assert_eq!(ledger_balances(&f, "agent:a"), vec![(MON_23, usd(6.0))]);
}

/// A refund of a charge that was moved takes it out of the period that
/// counts it now, in memory and in the ledger; one refunded before the
/// change is not counted again.
#[tokio::test]
async fn refunds_before_and_after_a_change_of_reset_count_as_they_should() {
    let f = fixture(&resetting("daily"));
    let refunded_before = spend(&f, 1.0).await;
    refund(&f, refunded_before).await;
    let refunded_after = spend(&f, 2.0).await;
    f.clock.advance(DAY);
    spend(&f, 3.0).await;
    f.reconfigure(&resetting("monthly")).unwrap();
    assert_eq!(spent(&f), usd(5.0), "the refunded $1 stays out");
    refund(&f, refunded_after).await;
    assert_eq!(
        spent(&f),
        usd(3.0),
        "refunded from the month it was moved to"
    );
    let f = f.restart_with(&resetting("monthly"));
    assert_eq!(spent(&f), usd(3.0), "memory equals the ledger");
}

/// A charge made before the new period began stays in its old one: a
/// budget made daily on Tuesday does not count Monday.
#[tokio::test]
async fn charges_before_the_new_period_began_stay_where_they_were() {
    let f = fixture(&resetting("weekly"));
    spend(&f, 2.0).await;
    f.clock.advance(DAY + HOURS);
    spend(&f, 3.0).await;
    f.reconfigure(&resetting("daily")).unwrap();
    assert_eq!(spent(&f), usd(3.0));
    assert_eq!(
        ledger_balances(&f, "agent:a"),
        vec![(MON_23, usd(2.0)), (MON_23 + 86_400, usd(3.0))]
    );
    f.clock.advance(DAY);
    assert_eq!(spent(&f), Usd::ZERO, "Wednesday starts at nothing");
}

/// Two budgets changed by one reload are moved by one read of the charges,
/// each its own charges: a charge filed under both `global` and `agent:b`
/// moves only `agent:b`'s part.
#[tokio::test]
async fn budgets_changed_together_each_move_their_own_charges() {
    let two = |reset: &str| {
        format!(
            "{}[budget.agents.b]\nlimit = 10.0\nreset = \"{reset}\"\n",
            resetting(reset)
        )
    };
    let f = fixture(&two("daily"));
    spend(&f, 1.0).await;
    let b = f.admit_cost(2, "b", "s", 2.0).await.reservation.unwrap();
    f.report_with(b, costing(2.0)).await.unwrap();
    f.clock.advance(DAY);
    spend(&f, 3.0).await;
    let b = f.admit_cost(2, "b", "s", 4.0).await.reservation.unwrap();
    f.report_with(b, costing(4.0)).await.unwrap();
    f.reconfigure(&two("monthly")).unwrap();
    assert_eq!(
        (
            spent(&f),
            f.budget("agent:b").spent,
            f.budget("global").spent
        ),
        (usd(4.0), usd(6.0), usd(10.0))
    );
    let f = f.restart_with(&two("monthly"));
    assert_eq!((spent(&f), f.budget("agent:b").spent), (usd(4.0), usd(6.0)));
}

/// An admin's reset forgives what the period had spent: a later refund of a
/// charge made before it does not take the refund out of what was spent
/// after it, and a change of reset does not count the forgiven charges again.
#[tokio::test]
async fn what_a_reset_forgave_is_neither_refunded_from_it_nor_moved_again() {
    let f = fixture(&resetting("daily"));
    let before = spend(&f, 4.0).await;
    reset_a(&f).await;
    spend(&f, 3.0).await;
    refund(&f, before).await;
    assert_eq!(spent(&f), usd(3.0), "the $3 after the reset stays spent");
    assert_eq!(
        f.budget("global").spent,
        usd(3.0),
        "global gave the $4 back"
    );
    spend(&f, 2.0).await;
    reset_a(&f).await;
    f.clock.advance(DAY);
    spend(&f, 1.0).await;
    f.reconfigure(&resetting("monthly")).unwrap();
    assert_eq!(spent(&f), usd(1.0), "Monday's were forgiven; Tuesday's $1");
    let f = f.restart_with(&resetting("monthly"));
    assert_eq!(spent(&f), usd(1.0), "memory equals the ledger");
    assert_eq!(f.budget("global").spent, usd(6.0));
}

/// What is charged after a reset is the period's spending like any other: a
/// refund of it gives it back. The reset itself rewrites no charge.
#[tokio::test]
async fn a_charge_after_a_reset_is_refunded_from_the_budget() {
    let f = fixture(&resetting("daily"));
    spend(&f, 4.0).await;
    reset_a(&f).await;
    let after = spend(&f, 3.0).await;
    spend(&f, 1.0).await;
    refund(&f, after).await;
    assert_eq!(spent(&f), usd(1.0));
    let conn = rusqlite::Connection::open(f.dir.path().join(crate::store::LEDGER_FILE)).unwrap();
    let filed: Vec<String> = conn
        .prepare("SELECT budgets FROM charges ORDER BY rowid")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(
        filed
            .iter()
            .all(|text| text.contains(&format!("agent:a@{MON_23}"))),
        "filed as charged: {filed:?}"
    );
    let f = f.restart_with(&resetting("daily"));
    assert_eq!(spent(&f), usd(1.0), "memory equals the ledger");
}

/// A charge filed under the old reset between a reload's read and its
/// switch is moved by the record the applied reload queues, and counted in
/// memory when that completes: the new period misses nothing.
#[tokio::test]
async fn a_charge_between_the_reloads_read_and_its_switch_is_moved_too() {
    let f = fixture(&resetting("daily"));
    spend(&f, 2.0).await;
    f.clock.advance(DAY);
    spend(&f, 3.0).await;
    let config = Arc::new(Config::from_toml(&resetting("monthly")).unwrap());
    let opening = f.admission.budgets_to_load(&config, f.now());
    let books = f.store.books(opening.clone()).unwrap();
    spend(&f, 1.5).await;
    let loaded = LoadedBooks {
        names: opening.names(),
        books,
    };
    f.admission
        .reconfigure(config, &SharedClock::new(f.clock.clone()), f.now(), &loaded)
        .unwrap();
    assert_eq!(
        spent(&f),
        usd(5.0),
        "the read's: the month without the $1.50"
    );
    f.admission.record_resets(&f.store, &opening).await.unwrap();
    assert_eq!(spent(&f), usd(6.5), "the $1.50 moved and counted");
    let f = f.restart_with(&resetting("monthly"));
    assert_eq!(spent(&f), usd(6.5), "memory equals the ledger");
}
