//! The ends of the commit path and of the money's periods: connections that
//! end while their admissions are written, writes that fail, reports before
//! an admission is written, charges the ledger refuses, thresholds raised
//! once per period, charges, resets and refunds that count in the period
//! they were filed under, orphans recovered at start. Each test here caught
//! a bug the rest of the suite let through (a mutation pass over `engine.rs`,
//! `commit.rs`, `reservation.rs` and `ledger.rs`, ARCHITECTURE.md).

use super::*;

/// The caller of a connection, for admissions decided without the fixture's
/// commit (to act between the decision and its write).
fn caller_of(session: u64) -> Caller<'static> {
    Caller {
        session,
        uid: 1000,
        agent: "a",
        pid: 0,
    }
}

/// Decides an admission that must be written, without writing it yet.
fn decide_durable(f: &Fixture, session: u64, plan: Plan<'_>) -> Durable<PendingAdmit> {
    match f
        .admission
        .admit(caller_of(session), plan, f.now())
        .unwrap()
    {
        Admitted::Durable(durable) => durable,
        Admitted::Decided(d) => panic!("expected a write first: {d:?}"),
    }
}

/// A connection that ends while its admissions are being written: once
/// written, the one holding money is an orphan (the ledger holds it, so
/// memory keeps its estimate, and it is still reportable), and the one that
/// holds none (only a durable quota count) is released, not left open with
/// nobody to report it. Memory equals the ledger, as a restart shows.
#[tokio::test]
async fn admissions_whose_connection_ended_mid_write_are_orphaned_or_released() {
    let f = fixture(
        "[budget]\nlimit = 10.0\norphan_timeout = \"1h\"\n[[quotas]]\nname = \"daily\"\nlimit = 5\nwindow = \"day\"\nservices = [\"free\"]\n",
    );
    let paid = decide_durable(
        &f,
        1,
        Plan {
            cost: Some(usd(2.0)),
            ..plan("s")
        },
    );
    let free = decide_durable(
        &f,
        1,
        Plan {
            cost: Some(Usd::ZERO),
            ..plan("free")
        },
    );
    let (paid_id, free_id) = (
        paid.pending.decision().reservation.unwrap(),
        free.pending.decision().reservation.unwrap(),
    );
    assert_eq!(f.admission.end_session(1, f.now()), (1, 1));
    f.commit(paid).await.unwrap();
    f.commit(free).await.unwrap();
    assert_eq!(
        f.admission.open_reservations(),
        1,
        "only the orphan is open"
    );
    let global = f.budget("global");
    assert_eq!((global.reserved, global.orphaned), (usd(2.0), 1));
    let err = f.report_with(free_id, outcome(false)).await.unwrap_err();
    assert!(err.contains("released when its connection closed"), "{err}");
    let f = f.restart();
    let global = f.budget("global");
    assert_eq!(
        (global.reserved, global.orphaned),
        (usd(2.0), 1),
        "the ledger holds what memory held"
    );
    assert_eq!(f.report(paid_id, false).await.charged, Some(usd(2.0)));
}

/// A report of a reservation whose admission is still being written is
/// refused as busy (nothing is charged for a reservation the ledger may yet
/// refuse to open), and is accepted once the write is done.
#[tokio::test]
async fn a_report_before_its_admission_is_written_is_busy() {
    let f = fixture("[budget]\nlimit = 10.0\n");
    let durable = decide_durable(
        &f,
        1,
        Plan {
            cost: Some(usd(2.0)),
            ..plan("s")
        },
    );
    let id = durable.pending.decision().reservation.unwrap();
    let err = f.report_with(id, outcome(false)).await.unwrap_err();
    assert!(err.contains("is being committed right now"), "{err}");
    assert_eq!(f.budget("global").spent, Usd::ZERO, "nothing charged");
    f.commit(durable).await.unwrap();
    assert_eq!(f.report(id, false).await.charged, Some(usd(2.0)));
    assert_eq!(f.budget("global").spent, usd(2.0));
}

/// Admissions whose write failed hold nothing, and that includes their
/// connection's count: `daemon.max_reservations_per_connection` counts open
/// reservations, so failed ones must not use it up (a connection retrying
/// through a ledger outage would otherwise be refused for good).
#[tokio::test]
async fn admissions_whose_write_failed_do_not_count_against_the_connections_cap() {
    let f = fixture("[daemon]\nmax_reservations_per_connection = 2\n[budget]\nlimit = 10.0\n");
    let paid = || Plan {
        cost: Some(usd(1.0)),
        ..plan("s")
    };
    f.store.fail_writes(true);
    for _ in 0..2 {
        assert!(f.admit_plan(1, "a", paid()).await.is_err());
    }
    f.store.fail_writes(false);
    for n in 0..2 {
        let d = f.admit_plan(1, "a", paid()).await;
        assert!(d.is_ok_and(|d| d.allowed), "admission {n}");
    }
}

/// A charge the ledger refuses (a balance at the ledger's maximum) is not
/// acknowledged and changes nothing in memory: nothing counted as spent that
/// the ledger lacks, and the reservation stays open, holding its estimate,
/// for a retry — as after a failed write.
#[tokio::test]
async fn a_charge_the_ledger_refuses_counts_nothing_and_keeps_its_reservation_open() {
    let f = fixture("[budget]\nlimit = 100.0\n[budget.agents.a]\nlimit = 50.0\n");
    let first = f.admit_cost(1, "a", "s", 1.0).await.reservation.unwrap();
    f.report(first, false).await;
    f.fill_balance_behind_its_back("agent:a");
    let id = f.admit_cost(1, "a", "s", 2.0).await.reservation.unwrap();
    let err = f.report_with(id, outcome(false)).await.unwrap_err();
    assert!(err.contains("the ledger refused the charge"), "{err}");
    let global = f.budget("global");
    assert_eq!(
        (global.spent, global.reserved),
        (usd(1.0), usd(2.0)),
        "not counted, still held"
    );
    assert_eq!(f.admission.open_reservations(), 1, "open for a retry");
    let again = f.report_with(id, outcome(false)).await.unwrap_err();
    assert!(again.contains("the ledger refused the charge"), "{again}");
}

/// An admission holding no money but a durable quota count, whose connection
/// ended while it was being written, and whose write then failed: the count
/// is given back (the ledger never had it), so the quota is not used up in
/// memory by a call that was never allowed.
#[tokio::test]
async fn a_quota_count_whose_write_failed_after_its_connection_ended_is_given_back() {
    let f = fixture("[[quotas]]\nname = \"daily\"\nlimit = 1\nwindow = \"day\"\n");
    let durable = decide_durable(&f, 1, plan("s"));
    assert_eq!(f.admission.end_session(1, f.now()), (1, 0));
    f.store.fail_writes(true);
    assert!(f.commit(durable).await.is_err());
    f.store.fail_writes(false);
    assert_eq!(f.admission.open_reservations(), 0);
    let used: u64 = f
        .admission
        .quotas(Some("daily"), f.now())
        .unwrap()
        .iter()
        .map(|v| v.used)
        .sum();
    assert_eq!(used, 0, "the failed write counted nothing");
    assert!(
        f.admit(2, "a", "s").await.allowed,
        "the day's one call is left"
    );
}

/// Reported reservations leave their connection's count:
/// `daemon.max_reservations_per_connection` bounds the calls a connection has
/// open, not the calls it has made, so a connection that admits and reports
/// in turn is never refused by it.
#[tokio::test]
async fn reported_reservations_free_their_connections_places() {
    let f = fixture("[daemon]\nmax_reservations_per_connection = 2\n[budget]\nlimit = 10.0\n");
    for n in 0..5 {
        let free = f.admit_plan(1, "a", plan("s")).await;
        let free = free.unwrap_or_else(|e| panic!("admission {n}: {e}"));
        f.report(free.reservation.unwrap(), false).await;
        let paid = f.admit_cost(1, "a", "s", 1.0).await;
        f.report(paid.reservation.unwrap(), false).await;
    }
    assert_eq!(f.budget("global").spent, usd(5.0));
}

/// Without budgets a report files no charge, so only the memory of recent
/// closes tells its repeat (a client retrying a report whose answer it lost)
/// from a report of an id never issued: the repeat is a duplicate, counted
/// once by the breaker.
#[tokio::test]
async fn a_repeated_report_without_budgets_is_a_duplicate() {
    let f = fixture("[budget]\nenabled = false\n");
    let id = f.admit(1, "a", "s").await.reservation.unwrap();
    assert!(!f.report(id, true).await.duplicate);
    let again = f.report_with(id, outcome(true)).await;
    assert!(again.as_ref().is_ok_and(|s| s.duplicate), "{again:?}");
    let snapshot = &f.admission.breakers(Some("s"), f.clock.now())[0].1;
    assert_eq!(snapshot.consecutive_failures, 1, "counted once");
}

// --- budget thresholds -------------------------------------------------------

/// [`fixture`] whose alerts are queued for the test to read, none suppressed
/// (suppression is `Alerts`' own rule: what is read here is what the engine
/// raises).
fn fixture_with_alerts(toml: &str) -> (Fixture, crate::alerts::Delivery) {
    let (alerts, delivery) = Alerts::new(&crate::alerts::AlertsConfig {
        webhook: Some(crate::config::WebhookUrl::parse("http://127.0.0.1:9/hook").unwrap()),
        suppress: Duration::ZERO,
        ..crate::alerts::AlertsConfig::default()
    });
    let f = fixture(toml);
    f.store.close();
    let (store, snapshot) = Store::open(f.dir.path()).unwrap();
    let admission = Admission::new(
        Arc::clone(&f.config),
        &SharedClock::new(f.clock.clone()),
        &snapshot,
        alerts,
    )
    .unwrap();
    let f = Fixture {
        admission: Arc::new(admission),
        store,
        ..f
    };
    (f, delivery.expect("a webhook is configured"))
}

/// The budget thresholds raised since the last look, as (budget, percent).
fn thresholds_raised(delivery: &mut crate::alerts::Delivery) -> Vec<(String, u8)> {
    std::iter::from_fn(|| delivery.try_next())
        .filter_map(|alert| match alert {
            crate::alerts::Alert::BudgetThreshold {
                budget, threshold, ..
            } => Some((budget, threshold)),
            _ => None,
        })
        .collect()
}

/// A budget threshold is raised once per period and level when a charge
/// crosses it: not again for charges that stay at that level, again in a new
/// period, and again after an admin reset starts the period over.
#[tokio::test]
async fn each_threshold_is_raised_once_per_period_and_after_a_reset() {
    let (f, mut delivery) = fixture_with_alerts("[budget]\nlimit = 10.0\nreset = \"daily\"\n");
    let f = &f;
    let charge = |cost: f64| async move {
        let id = f.admit_cost(1, "a", "s", cost).await.reservation.unwrap();
        f.report(id, false).await;
    };
    let global = |level: u8| vec![("global".to_owned(), level)];
    charge(6.0).await;
    assert_eq!(thresholds_raised(&mut delivery), global(50), "6 of 10");
    charge(1.0).await;
    assert_eq!(thresholds_raised(&mut delivery), [], "7 of 10: still 50 %");
    f.clock.advance(DAY);
    charge(5.0).await;
    assert_eq!(thresholds_raised(&mut delivery), global(50), "a new day");
    admin(
        f,
        AdminKind::ResetBudget {
            budget: "global".into(),
        },
    )
    .await
    .unwrap();
    charge(5.0).await;
    assert_eq!(
        thresholds_raised(&mut delivery),
        global(50),
        "after a reset"
    );
    charge(3.0).await;
    assert_eq!(
        thresholds_raised(&mut delivery),
        global(80),
        "a higher level"
    );
}

/// A charge filed under a period its budget has left by the time the ledger
/// answers (a report written across midnight) counts in the period it was
/// filed under, where the ledger has it, not in the new one.
#[tokio::test]
async fn a_charge_written_across_a_period_change_counts_in_its_own_period() {
    let f = fixture("[budget]\nlimit = 10.0\nreset = \"daily\"\n");
    f.clock.advance(23 * 3600 * S);
    let id = f.admit_cost(1, "a", "s", 4.0).await.reservation.unwrap();
    let Ok(Reporting::Durable(durable)) = f.admission.report(id, None, outcome(false), f.now())
    else {
        panic!("a charge is written first");
    };
    f.clock.advance(3600 * S);
    assert_eq!(f.budget("global").spent, Usd::ZERO, "a new day");
    let settled = f.commit(durable).await.unwrap();
    assert_eq!(settled.charged, Some(usd(4.0)));
    let global = f.budget("global");
    assert_eq!((global.spent, global.reserved), (Usd::ZERO, Usd::ZERO));
    let f = f.restart();
    assert_eq!(
        f.budget("global").spent,
        Usd::ZERO,
        "as the ledger holds it"
    );
}

/// A report made while the wall clock stands in an earlier period than its
/// budget's (it stepped back) is filed under the budget's period, which the
/// budget stays in: the charge counts against the balance admissions are
/// checked against, in memory and in the ledger alike.
#[tokio::test]
async fn a_charge_made_while_the_clock_stepped_back_counts_in_the_budgets_period() {
    let f = fixture("[budget]\nlimit = 10.0\nreset = \"daily\"\n");
    let id = f.admit_cost(1, "a", "s", 4.0).await.reservation.unwrap();
    let back = Moment {
        unix: f.now().unix - 86_400,
        ..f.now()
    };
    let settled = f
        .finish(f.admission.report(id, None, outcome(false), back))
        .await
        .unwrap();
    assert_eq!(settled.charged, Some(usd(4.0)));
    assert_eq!(f.budget("global").spent, usd(4.0));
    let f = f.restart();
    assert_eq!(f.budget("global").spent, usd(4.0), "filed in that period");
}

/// An admin reset decided in one period and written after its budget moved
/// to the next resets nothing there: the ledger reset the period it was
/// given, and the new period's spending stands, in memory as in the ledger.
#[tokio::test]
async fn a_reset_written_after_the_period_changed_leaves_the_new_period_alone() {
    let f = fixture("[budget]\nlimit = 10.0\nreset = \"daily\"\n");
    f.clock.advance(23 * 3600 * S);
    let reset = f
        .admission
        .admin(
            AdminAction {
                uid: 0,
                pid: 42,
                kind: AdminKind::ResetBudget {
                    budget: "global".into(),
                },
            },
            f.now(),
        )
        .unwrap();
    f.clock.advance(3600 * S);
    let id = f.admit_cost(1, "a", "s", 3.0).await.reservation.unwrap();
    f.report(id, false).await;
    f.commit(reset).await.unwrap().unwrap();
    assert_eq!(f.budget("global").spent, usd(3.0), "the new day's stands");
    let f = f.restart();
    assert_eq!(f.budget("global").spent, usd(3.0), "as the ledger holds it");
}

/// A refund of a charge filed in an earlier period gives back nothing in the
/// current one: the ledger takes it from the period it was filed under.
#[tokio::test]
async fn a_refund_of_an_earlier_periods_charge_leaves_the_current_one_alone() {
    let f = fixture("[budget]\nlimit = 10.0\nreset = \"daily\"\n");
    let yesterday = f.admit_cost(1, "a", "s", 4.0).await.reservation.unwrap();
    f.report(yesterday, false).await;
    f.clock.advance(DAY);
    let today = f.admit_cost(1, "a", "s", 3.0).await.reservation.unwrap();
    f.report(today, false).await;
    let refunded = admin(
        &f,
        AdminKind::Refund {
            key: reservation_key(yesterday),
        },
    )
    .await
    .unwrap();
    assert!(refunded.contains("refunded $4.00"), "{refunded}");
    assert_eq!(f.budget("global").spent, usd(3.0));
    let f = f.restart();
    assert_eq!(f.budget("global").spent, usd(3.0), "as the ledger holds it");
}

/// Reservations recovered at start are orphans from that moment: once
/// `budget.orphan_timeout` has passed they are settled by the policy like any
/// other, not held for ever.
#[tokio::test]
async fn recovered_reservations_are_settled_once_their_orphan_timeout_passes() {
    let f = fixture("[budget]\nlimit = 10.0\norphan_timeout = \"1h\"\n");
    f.admit_cost(1, "a", "s", 2.0).await;
    let f = f.restart();
    f.clock.advance(3599 * S);
    f.settle_orphans().await;
    assert_eq!(f.budget("global").reserved, usd(2.0), "not due yet");
    f.clock.advance(S);
    f.settle_orphans().await;
    let global = f.budget("global");
    assert_eq!(
        (global.spent, global.reserved, global.orphaned),
        (usd(2.0), Usd::ZERO, 0),
        "charged its estimate"
    );
    assert_eq!(f.admission.open_reservations(), 0);
}

/// `budget.max_charge` is the largest charge accepted, itself included: a
/// call estimated at exactly the cap is admitted, and its report of exactly
/// the cap is charged, not refused (which would leave it unreportable).
#[tokio::test]
async fn a_charge_of_exactly_max_charge_is_accepted() {
    let f = fixture("[budget]\nlimit = 10.0\nmax_charge = 5.0\n");
    let id = f.admit_cost(1, "a", "s", 5.0).await.reservation.unwrap();
    let settled = f.report_with(id, costing(5.0)).await.unwrap();
    assert_eq!(settled.charged, Some(usd(5.0)));
    let o = Outcome {
        cost: Some(usd(5.0)),
        ..outcome(false)
    };
    let direct = f
        .finish(
            f.admission
                .report_unreserved("a", "s", Some("k".into()), o, f.now()),
        )
        .await
        .unwrap();
    assert_eq!(direct.charged, Some(usd(5.0)));
    assert_eq!(f.budget("global").spent, usd(10.0));
}
