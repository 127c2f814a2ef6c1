//! The ledger on a real SQLite file in a temp dir.

use std::sync::atomic::Ordering;

use super::*;
use crate::guard::period::Period;
use periods::PREFILTER_MOST;

fn usd(dollars: f64) -> Usd {
    Usd::from_dollars(dollars).unwrap()
}

fn charge(key: &str, amount: f64) -> Entry {
    Entry::Charge {
        key: key.into(),
        reservation: None,
        agent: "a".into(),
        service: "s".into(),
        amount: usd(amount),
        budgets: vec![("global".into(), 100)],
        at: 100,
    }
}

/// A charge of `amount` filed under the global budget and `agent:a`'s.
fn charge_two(key: &str, amount: f64) -> Entry {
    let mut entry = charge(key, amount);
    if let Entry::Charge { budgets, .. } = &mut entry {
        budgets.push(("agent:a".into(), 100));
    }
    entry
}

/// Sets a budget's balance for period 100 in the ledger file, as a long life
/// of charges would have (the store must be closed).
fn set_spent(dir: &std::path::Path, budget: &str, spent: Usd) {
    let conn = Connection::open(dir.join(LEDGER_FILE)).unwrap();
    conn.execute(
        "INSERT INTO balances (budget, period_start, spent) VALUES (?1, 100, ?2)
         ON CONFLICT (budget, period_start) DO UPDATE SET spent = excluded.spent",
        rusqlite::params![budget, spent.micros()],
    )
    .unwrap();
}

/// The balances a start loads, in order.
fn balances_at_start(dir: &std::path::Path) -> Vec<(String, u64, Usd)> {
    let (_, snapshot) = Store::open(dir).unwrap();
    let mut balances = snapshot.books.balances;
    balances.sort();
    balances
}

#[tokio::test]
async fn charges_are_durable_idempotent_and_refundable() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, snapshot) = Store::open(dir.path()).unwrap();
        assert_eq!(snapshot.epoch, 1);
        assert_eq!(
            store.write(vec![charge("k1", 1.5)]).await,
            Ok(Outcome::Done)
        );
        assert_eq!(
            store.write(vec![charge("k1", 1.5)]).await,
            Ok(Outcome::Duplicate)
        );
        assert_eq!(
            store.write(vec![charge("k2", 2.0)]).await,
            Ok(Outcome::Done)
        );
        assert!(store.is_charged("k1").await.unwrap());
        assert!(!store.is_charged("k9").await.unwrap());
        store.close();
    }
    let (store, snapshot) = Store::open(dir.path()).unwrap();
    assert_eq!(snapshot.epoch, 2, "a new epoch per open");
    assert_eq!(
        snapshot.books.balances,
        vec![("global".to_owned(), 100, usd(3.5))]
    );
    assert_eq!(
        store.write(vec![charge("k1", 1.5)]).await,
        Ok(Outcome::Duplicate),
        "across restarts"
    );
    assert_eq!(
        store.write(vec![Entry::Refund { key: "k2".into() }]).await,
        Ok(Outcome::Refunded {
            amount: usd(2.0),
            budgets: vec![("global".into(), 100)]
        })
    );
    assert_eq!(
        store.write(vec![Entry::Refund { key: "k2".into() }]).await,
        Ok(Outcome::NotFound)
    );
    store.close();
    let (_, snapshot) = Store::open(dir.path()).unwrap();
    assert_eq!(
        snapshot.books.balances,
        vec![("global".to_owned(), 100, usd(1.5))]
    );
}

#[tokio::test]
async fn reservations_survive_until_charged_or_released() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path()).unwrap();
    for id in [1, 2, 3] {
        let reserve = Entry::Reserve {
            id,
            agent: "a".into(),
            service: "s".into(),
            model: Some("m".into()),
            estimate: usd(1.0),
            budgets: vec!["global".into(), "agent:a".into()],
            at: 5,
        };
        store.write(vec![reserve]).await.unwrap();
    }
    let mut settle = charge("reservation:1", 0.5);
    if let Entry::Charge { reservation, .. } = &mut settle {
        *reservation = Some(1);
    }
    store.write(vec![settle]).await.unwrap();
    store.write(vec![Entry::Unreserve { id: 2 }]).await.unwrap();
    store.close();
    let (_, snapshot) = Store::open(dir.path()).unwrap();
    assert_eq!(snapshot.reservations.len(), 1);
    let left = &snapshot.reservations[0];
    assert_eq!(
        (left.id, left.estimate, left.model.as_deref()),
        (3, usd(1.0), Some("m"))
    );
    assert_eq!(left.budgets, vec!["global", "agent:a"]);
}

#[tokio::test]
async fn a_duplicate_rolls_back_only_its_own_job() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path()).unwrap();
    store.write(vec![charge("k", 1.0)]).await.unwrap();
    // Queue several jobs at once so they share a transaction.
    let jobs = (0..50).map(|i| {
        let store = store.clone();
        async move {
            let key = if i % 2 == 0 {
                "k".to_owned()
            } else {
                format!("new-{i}")
            };
            store
                .write(vec![
                    charge(&key, 1.0),
                    Entry::QuotaAdd {
                        quota: "q".into(),
                        key: "a".into(),
                        window_start: 0,
                        n: 1,
                    },
                ])
                .await
        }
    });
    let outcomes = futures_util::future::join_all(jobs).await;
    let done = outcomes.iter().filter(|o| **o == Ok(Outcome::Done)).count();
    let dups = outcomes
        .iter()
        .filter(|o| **o == Ok(Outcome::Duplicate))
        .count();
    assert_eq!((done, dups), (25, 25));
    store.close();
    let (_, snapshot) = Store::open(dir.path()).unwrap();
    assert_eq!(snapshot.books.balances[0].2, usd(26.0));
    assert_eq!(
        snapshot.quotas,
        vec![("q".to_owned(), "a".to_owned(), 0, 25)],
        "duplicates took no quota"
    );
}

/// Single-entry jobs run without a savepoint: a duplicate or a refund of nothing
/// among them must still change nothing and leave its neighbours' work in place.
#[tokio::test]
async fn single_entry_duplicates_change_nothing_in_a_shared_batch() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path()).unwrap();
    store.write(vec![charge("k", 1.0)]).await.unwrap();
    let jobs = (0..60).map(|i| {
        let store = store.clone();
        async move {
            let entry = match i % 3 {
                0 => charge("k", 1.0),
                1 => charge(&format!("new-{i}"), 1.0),
                _ => Entry::Refund {
                    key: format!("never-charged-{i}"),
                },
            };
            store.write(vec![entry]).await
        }
    });
    let outcomes = futures_util::future::join_all(jobs).await;
    let count = |want: Outcome| outcomes.iter().filter(|o| **o == Ok(want.clone())).count();
    assert_eq!(
        (
            count(Outcome::Done),
            count(Outcome::Duplicate),
            count(Outcome::NotFound)
        ),
        (20, 20, 20)
    );
    store.close();
    let (_, snapshot) = Store::open(dir.path()).unwrap();
    assert_eq!(snapshot.books.balances[0].2, usd(21.0));
}

#[tokio::test]
async fn a_failing_disk_fails_the_write_and_reports_unhealthy() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path()).unwrap();
    store.fail_writes(true);
    let err = store.write(vec![charge("k", 1.0)]).await.unwrap_err();
    assert!(err.to_string().contains("the ledger at "), "{err}");
    assert!(store.health().is_some());
    store.fail_writes(false);
    store.write(vec![charge("k", 1.0)]).await.unwrap();
    assert_eq!(
        store.health(),
        None,
        "recovers with the next good transaction"
    );
}

#[tokio::test]
async fn quota_windows_and_limits_load() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path()).unwrap();
    for (window, n) in [(0, 5), (60, 2), (60, 1)] {
        store
            .write(vec![Entry::QuotaAdd {
                quota: "q".into(),
                key: "k".into(),
                window_start: window,
                n,
            }])
            .await
            .unwrap();
    }
    store
        .write(vec![Entry::SetLimit {
            budget: "global".into(),
            limit: usd(7.0),
        }])
        .await
        .unwrap();
    store.close();
    let (_, snapshot) = Store::open(dir.path()).unwrap();
    assert_eq!(
        snapshot.quotas,
        vec![("q".to_owned(), "k".to_owned(), 60, 3)]
    );
    assert_eq!(snapshot.books.limits, vec![("global".to_owned(), usd(7.0))]);
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let conn = rusqlite::Connection::open(dir.path().join(LEDGER_FILE)).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    let err = Store::open(dir.path()).err().expect("refused");
    assert!(err.to_string().contains("schema version 99"), "{err}");
}

/// The completion of a commit runs with the ledger's answer even when nobody
/// awaits the reply any more: the daemon's memory follows the ledger, not the
/// connection (issue 10).
#[tokio::test]
async fn a_commit_completes_even_when_its_reply_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path()).unwrap();
    let (seen, answer) = std::sync::mpsc::channel();
    let dropped = store.commit(vec![charge("k1", 1.0)], move |result| {
        seen.send(result).unwrap();
    });
    drop(dropped);
    let result = tokio::task::spawn_blocking(move || answer.recv().unwrap())
        .await
        .unwrap();
    assert_eq!(result, Ok(Outcome::Done));
    assert!(store.is_charged("k1").await.unwrap());
}

/// A store that cannot take the write completes it at once, with why.
#[tokio::test]
async fn a_commit_on_a_closed_or_failed_store_completes_with_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path()).unwrap();
    store.close();
    let result = store.commit(vec![charge("k1", 1.0)], |r| r).await.unwrap();
    assert_eq!(result, Err(StoreError::Closed));

    let failed = Store::unavailable(dir.path(), "disk gone".into());
    let result = failed.commit(vec![charge("k1", 1.0)], |r| r).await.unwrap();
    assert!(
        matches!(&result, Err(StoreError::Failed { message, .. }) if message == "disk gone"),
        "{result:?}"
    );
}

/// A completion that panics (a bug) does not take the writer thread down.
#[tokio::test]
async fn a_panicking_completion_leaves_the_writer_running() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path()).unwrap();
    let panicked = store
        .commit(vec![charge("k1", 1.0)], |_| -> () { panic!("a bug") })
        .await;
    assert_eq!(panicked, Err(StoreError::Closed));
    assert_eq!(
        store.write(vec![charge("k2", 1.0)]).await,
        Ok(Outcome::Done)
    );
}

/// Issue 16: 9,300 reports of $1e9 pushed a balance past i64 and SQLite stored a
/// float, after which the ledger would not open. A charge that would pass the
/// maximum balance is refused before anything is written.
#[tokio::test]
async fn a_charge_that_would_overflow_a_balance_is_refused_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path()).unwrap();
    let mut keys = 0;
    let refused = loop {
        keys += 1;
        // Bounded: without the balance's bound this would never be refused.
        assert!(keys <= 2_000, "no refusal after {keys} charges of $1e9");
        match store.write(vec![charge(&format!("k{keys}"), 1e9)]).await {
            Ok(Outcome::Done) => continue,
            other => break other,
        }
    };
    assert!(
        matches!(&refused, Ok(Outcome::Refused(why)) if why.contains("maximum")),
        "{refused:?}"
    );
    assert_eq!(keys, 1001, "$1e12 is 1,000 charges of $1e9");
    assert!(!store.is_charged(&format!("k{keys}")).await.unwrap());
    assert_eq!(store.health(), None, "a refusal is not a failure");
    drop(store);
    let (_, snapshot) = Store::open(dir.path()).unwrap();
    assert_eq!(
        snapshot.books.balances,
        vec![("global".into(), 100, crate::money::MAX_BALANCE)]
    );
}

/// A charge is refused with its budgets full, and a repeat of a filed one is
/// a duplicate all the same, whether it is filed under one budget (whose bound
/// is the balance's update's) or several (checked first); a refusal leaves
/// nothing behind.
#[tokio::test]
async fn full_budgets_refuse_new_charges_and_repeats_stay_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path()).unwrap();
    assert_eq!(
        store.write(vec![charge("one", 1.0)]).await,
        Ok(Outcome::Done)
    );
    assert_eq!(
        store.write(vec![charge_two("two", 1.0)]).await,
        Ok(Outcome::Done)
    );
    drop(store);
    let max = crate::money::MAX_BALANCE;
    set_spent(dir.path(), "global", max);
    set_spent(dir.path(), "agent:a", max);
    let (store, _) = Store::open(dir.path()).unwrap();
    for repeat in [
        charge("one", 1.0),
        charge_two("two", 1.0),
        charge("two", 1.0),
    ] {
        assert_eq!(store.write(vec![repeat]).await, Ok(Outcome::Duplicate));
    }
    for new in [charge("three", 1.0), charge_two("four", 1.0)] {
        let refused = store.write(vec![new]).await.unwrap();
        assert!(
            matches!(&refused, Outcome::Refused(why) if why.contains("maximum")),
            "{refused:?}"
        );
    }
    assert!(!store.is_charged("three").await.unwrap());
    assert!(!store.is_charged("four").await.unwrap());
    drop(store);
    assert_eq!(
        balances_at_start(dir.path()),
        vec![("agent:a".into(), 100, max), ("global".into(), 100, max)]
    );
}

#[tokio::test]
async fn a_balance_that_is_not_an_amount_is_reported_and_the_ledger_still_opens() {
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(dir.path()).unwrap());
    let conn = Connection::open(dir.path().join(LEDGER_FILE)).unwrap();
    // What an overflowed sum left behind before checked arithmetic.
    conn.execute_batch(
        "INSERT INTO balances VALUES ('global', 100, 9223372036854775807);
         UPDATE balances SET spent = spent + 1 WHERE budget = 'global';
         INSERT INTO balances VALUES ('agent:a', 100, 5);",
    )
    .unwrap();
    drop(conn);
    let (store, snapshot) = Store::open(dir.path()).unwrap();
    assert_eq!(
        snapshot.books.balances,
        vec![("agent:a".into(), 100, usd(0.000005))]
    );
    assert_eq!(
        snapshot.books.unreadable.len(),
        1,
        "{:?}",
        snapshot.books.unreadable
    );
    assert!(snapshot.books.unreadable[0].2.contains("overflowed"));
    let refused = store.write(vec![charge("k", 1.0)]).await.unwrap();
    assert!(matches!(refused, Outcome::Refused(why) if why.contains("reset")));
    // An admin reset makes it an amount again.
    store
        .write(vec![Entry::ResetBudget {
            budget: "global".into(),
            period_start: 100,
        }])
        .await
        .unwrap();
    assert_eq!(store.write(vec![charge("k", 1.0)]).await, Ok(Outcome::Done));
}

#[test]
fn a_missing_ledger_where_one_was_is_not_recreated_without_init() {
    let dir = tempfile::tempdir().unwrap();
    let (_, snapshot) = Store::open(dir.path()).unwrap();
    assert!(snapshot.created);
    assert!(dir.path().join(LEDGER_MARKER).is_file());
    for file in ["ledger.sqlite3", "ledger.sqlite3-wal", "ledger.sqlite3-shm"] {
        let _ = std::fs::remove_file(dir.path().join(file));
    }
    let err = Store::open(dir.path()).err().expect("refused");
    assert!(err.to_string().contains("--init-ledger"), "{err}");
    assert!(!dir.path().join(LEDGER_FILE).exists(), "nothing created");
    let init = StoreOptions {
        init: true,
        ..StoreOptions::default()
    };
    let (_, snapshot) = Store::open_with(dir.path(), &init).unwrap();
    assert!(snapshot.created);
    assert_eq!(snapshot.epoch, 1);
    let (_, snapshot) = Store::open(dir.path()).unwrap();
    assert!(!snapshot.created, "an existing ledger just opens");
}

#[tokio::test]
async fn a_ledger_deleted_while_open_fails_every_later_write() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path()).unwrap();
    store.write(vec![charge("k1", 1.0)]).await.unwrap();
    std::fs::remove_file(dir.path().join(LEDGER_FILE)).unwrap();
    let err = store.write(vec![charge("k2", 1.0)]).await.unwrap_err();
    assert!(err.to_string().contains("deleted"), "{err}");
    assert!(store.health().is_some_and(|h| h.contains("deleted")));
    // Also when the file comes back: it is not the one that holds the books.
    std::fs::write(dir.path().join(LEDGER_FILE), b"").unwrap();
    assert!(store.write(vec![charge("k3", 1.0)]).await.is_err());
}

/// A commit that cannot finish (here: another process holds the write lock, as
/// a frozen disk would hold the fsync) is answered TimedOut after the bound,
/// health says so while it lasts, and a write queued behind it that its waiter
/// gave up on is never applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_commit_times_out_and_an_abandoned_write_is_never_applied() {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions {
        commit_timeout: Duration::from_millis(300),
        ..StoreOptions::default()
    };
    let (store, _) = Store::open_with(dir.path(), &options).unwrap();
    // On time, a completion is told so.
    let on_time = store.commit_late(vec![charge("k0", 1.0)], |result, late| (result, late));
    assert_eq!(on_time.await, Ok((Ok(Outcome::Done), Late::No)));
    let blocker = Connection::open(dir.path().join(LEDGER_FILE)).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let (told, late) = std::sync::mpsc::channel();
    let first = store.commit_late(vec![charge("k1", 1.0)], move |result, late| {
        let _ = told.send((result, late));
    });
    // Stuck in its transaction: health says so.
    until(|| store.health().is_some_and(|h| h.contains("commit_timeout"))).await;
    let second = store.write(vec![charge("k2", 1.0)]);
    let err = first.await.unwrap_err();
    assert!(matches!(err, StoreError::TimedOut { .. }), "{err}");
    assert!(matches!(second.await, Err(StoreError::TimedOut { .. })));
    blocker.execute_batch("ROLLBACK").unwrap();
    // The first was in its transaction: it is written all the same, late (the
    // busy handler waits 5 s), and its completion is told it is late (the
    // admission undoes in the ledger what its caller was told did not happen).
    // The second was never taken up.
    until(|| store.health().is_none()).await;
    assert_eq!(
        late.recv_timeout(Duration::from_secs(10)),
        Ok((Ok(Outcome::Done), Late::Yes))
    );
    assert!(!store.is_charged("k2").await.unwrap());
    assert!(store.write(vec![charge("k3", 1.0)]).await.is_ok());
}

/// A request answered Unavailable because its commit ran past
/// commit_timeout finds health saying so at once: the timeout counts from
/// its queueing, the stuck batch's running time from a moment later (a
/// batch that started 1 ms after the request was queued has run 1 ms less
/// than the request waited). Until that batch ends: the next one is judged
/// by its own running time.
#[test]
fn health_says_stuck_as_soon_as_a_commit_is_given_up() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path()).unwrap();
    let inner = store.inner();
    let now_mark = || u64::try_from(inner.born.elapsed().as_millis()).unwrap() + 1;
    inner
        .busy_since
        .store(now_mark(), std::sync::atomic::Ordering::Release);
    assert_eq!(inner.stuck(), None, "running for less than commit_timeout");
    inner.note_gave_up();
    let stuck = inner.stuck().expect("a waiter gave up on it");
    assert!(
        stuck.contains("running for 5s") && stuck.contains("commit_timeout (5s)"),
        "{stuck}"
    );
    // The batch ends, and another starts later.
    inner
        .busy_since
        .store(now_mark() + 1, std::sync::atomic::Ordering::Release);
    assert_eq!(inner.stuck(), None);
    inner
        .busy_since
        .store(0, std::sync::atomic::Ordering::Release);
    assert_eq!(inner.stuck(), None);
}

/// Polls for a condition the writer thread brings about (an event, not time
/// passing), for at most ten seconds.
async fn until(condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "not within 10 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The WAL's size on disk in frames (a frame is a page and its 24-byte header,
/// after the file's 32-byte header).
fn wal_frames(dir: &std::path::Path) -> u64 {
    let wal = dir.join(format!("{LEDGER_FILE}-wal"));
    std::fs::metadata(wal).map_or(0, |m| m.len().saturating_sub(32) / (4096 + 24))
}

/// Under a stream of commits the checkpoint thread copies the WAL into the
/// database, and the writer keeps the WAL within its limit: the file never grows
/// past it by more than the commits made while a checkpoint held the lock,
/// however much is written (here about twenty times the limit). How many
/// those were depends on how the threads were scheduled, so the bound counts
/// them (`writer_checkpoints_busy`) rather than assuming a number.
#[tokio::test]
async fn the_wal_is_copied_by_its_own_thread_and_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let limit = 64;
    let (store, _) = Store::open_at(dir.path(), &StoreOptions::default(), Some(limit)).unwrap();
    // The most frames one commit added to the file, as seen.
    let mut per_commit = 0;
    let mut before = wal_frames(dir.path());
    for i in 0..400 {
        assert_eq!(
            store.write(vec![charge(&format!("k{i}"), 0.5)]).await,
            Ok(Outcome::Done)
        );
        let frames = wal_frames(dir.path());
        per_commit = per_commit.max(frames.saturating_sub(before));
        before = frames;
        let busy = store
            .stats()
            .writer_checkpoints_busy
            .load(Ordering::Relaxed);
        // Up to the limit, the commit that reached it, and one more commit
        // for each time the writer found the thread checkpointing.
        let bound = limit + (busy + 1) * per_commit.max(1);
        assert!(
            frames <= bound,
            "the WAL holds {frames} frames after {i} commits (limit {limit}, {busy} busy, {per_commit} per commit)"
        );
    }
    assert!(
        per_commit <= 8,
        "a charge's commit wrote {per_commit} frames"
    );
    until(|| store.stats().checkpoints.load(Ordering::Relaxed) > 0).await;
    store.close();
    // Every commit is there, whoever copied it where.
    let (_, snapshot) = Store::open(dir.path()).unwrap();
    assert_eq!(
        snapshot.books.balances,
        vec![("global".to_owned(), 100, usd(200.0))]
    );
}

/// Below its limit the WAL is checkpointed by the thread alone: the writer,
/// which answers every commit, never stops for one.
#[tokio::test]
async fn below_its_limit_the_wal_is_never_checkpointed_by_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let limit = 1000;
    let (store, _) = Store::open_at(dir.path(), &StoreOptions::default(), Some(limit)).unwrap();
    // A charge's commit writes a few frames: past a quarter of the limit
    // (a nudge to the thread), far from the limit.
    let mut i = 0;
    while wal_frames(dir.path()) < limit / 2 {
        store
            .write(vec![charge(&format!("k{i}"), 0.5)])
            .await
            .unwrap();
        i += 1;
        assert!(
            i < 1000,
            "1,000 commits and the WAL holds under {} frames",
            limit / 2
        );
    }
    until(|| store.stats().checkpoints.load(Ordering::Relaxed) > 0).await;
    assert_eq!(store.stats().writer_checkpoints.load(Ordering::Relaxed), 0);
    // The copied pages are in the database file: it grew past the few pages
    // it held when created.
    let db = std::fs::metadata(dir.path().join(LEDGER_FILE))
        .unwrap()
        .len();
    assert!(db > 8 * 4096, "the database file holds {db} bytes");
}

/// Closing the store ends the checkpoint thread with the writer: with the
/// last connection closed, SQLite folds the WAL into the database and removes
/// it.
#[tokio::test]
async fn closing_the_store_ends_the_checkpoint_thread() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path()).unwrap();
    store.write(vec![charge("k1", 1.0)]).await.unwrap();
    store.close();
    let wal = dir.path().join(format!("{LEDGER_FILE}-wal"));
    until(|| !wal.exists()).await;
}

/// The rows of one of the ledger's tables, read from the file itself.
fn rows(dir: &std::path::Path, table: &str) -> i64 {
    let conn = Connection::open(dir.join(LEDGER_FILE)).unwrap();
    conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |row| {
        row.get(0)
    })
    .unwrap()
}

/// A charge filed under several budgets is refused as a whole when any one of
/// them would pass the maximum, the first one included: its budgets are all
/// checked before any balance is added to (a charge is one entry, applied
/// without a savepoint of its own). Otherwise the first budget's balance kept
/// a charge the ledger refused, and a restart would load a spend memory never
/// had.
#[tokio::test]
async fn a_charge_refused_by_its_second_budget_adds_nothing_to_its_first() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path()).unwrap();
    assert_eq!(
        store.write(vec![charge_two("one", 1.0)]).await,
        Ok(Outcome::Done)
    );
    drop(store);
    set_spent(dir.path(), "agent:a", crate::money::MAX_BALANCE);
    let (store, _) = Store::open(dir.path()).unwrap();
    let refused = store.write(vec![charge_two("two", 1.0)]).await.unwrap();
    assert!(
        matches!(&refused, Outcome::Refused(why) if why.contains("agent:a")),
        "{refused:?}"
    );
    assert!(!store.is_charged("two").await.unwrap());
    drop(store);
    assert_eq!(
        balances_at_start(dir.path()),
        vec![
            ("agent:a".into(), 100, crate::money::MAX_BALANCE),
            ("global".into(), 100, usd(1.0)),
        ]
    );
}

/// A job of several entries answered Refused, NotFound or Duplicate changes
/// nothing, whatever its entries before the one that answered did: they are
/// rolled back with the job's savepoint, and the batch's other jobs stay.
#[tokio::test]
async fn a_job_that_does_not_apply_leaves_nothing_of_its_earlier_entries() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path()).unwrap();
    store.write(vec![charge("filed", 1.0)]).await.unwrap();
    drop(store);
    set_spent(dir.path(), "full", crate::money::MAX_BALANCE);
    let (store, _) = Store::open(dir.path()).unwrap();
    let count = Entry::QuotaAdd {
        quota: "q".into(),
        key: "a".into(),
        window_start: 0,
        n: 1,
    };
    let audit = Entry::Audit {
        uid: 0,
        pid: 1,
        action: "refund key=nothing".into(),
        at: 100,
    };
    let mut too_much = charge("too-much", 1.0);
    if let Entry::Charge { budgets, .. } = &mut too_much {
        budgets[0].0 = "full".into();
    }
    let jobs = [
        (
            vec![count.clone(), charge("filed", 1.0)],
            Outcome::Duplicate,
        ),
        (
            vec![
                audit,
                Entry::Refund {
                    key: "nothing".into(),
                },
            ],
            Outcome::NotFound,
        ),
        (
            vec![count.clone(), too_much],
            Outcome::Refused(String::new()),
        ),
        (vec![count, charge("new", 1.0)], Outcome::Done),
    ];
    for (entries, expected) in jobs {
        let outcome = store.write(entries).await.unwrap();
        match expected {
            Outcome::Refused(_) => assert!(matches!(outcome, Outcome::Refused(_)), "{outcome:?}"),
            expected => assert_eq!(outcome, expected),
        }
    }
    drop(store);
    assert_eq!(
        balances_at_start(dir.path()),
        vec![
            ("full".into(), 100, crate::money::MAX_BALANCE),
            ("global".into(), 100, usd(2.0)),
        ]
    );
    let (_, snapshot) = Store::open(dir.path()).unwrap();
    assert_eq!(
        snapshot.quotas,
        vec![("q".to_owned(), "a".to_owned(), 0, 1)],
        "only the job that applied counted"
    );
    assert_eq!(
        rows(dir.path(), "audit"),
        0,
        "no audit of a refund of nothing"
    );
}

/// A statement that fails inside a batch (here a reservation id already in the
/// ledger) fails that batch, and the transaction it left open is rolled back:
/// the next write starts a transaction of its own and is applied.
#[tokio::test]
async fn a_failed_batch_does_not_wedge_the_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path()).unwrap();
    let reserve = || Entry::Reserve {
        id: 7,
        agent: "a".into(),
        service: "s".into(),
        model: None,
        estimate: usd(1.0),
        budgets: vec!["global".into()],
        at: 100,
    };
    assert_eq!(store.write(vec![reserve()]).await, Ok(Outcome::Done));
    assert!(store.write(vec![reserve()]).await.is_err());
    assert_eq!(
        store.write(vec![charge("after", 1.0)]).await,
        Ok(Outcome::Done)
    );
    assert_eq!(store.health(), None, "a later transaction succeeded");
    assert!(store.is_charged("after").await.unwrap());
}

/// A job waits for the fsync when any of its entries needs it: an admission
/// that reserves and counts a durable quota is answered after the fsync, as a
/// charge is; only a job of reservations alone is answered at once.
#[test]
fn a_job_waits_for_the_fsync_when_any_entry_needs_it() {
    let reserve = Entry::Reserve {
        id: 1,
        agent: "a".into(),
        service: "s".into(),
        model: None,
        estimate: usd(1.0),
        budgets: vec![],
        at: 100,
    };
    let count = Entry::QuotaAdd {
        quota: "q".into(),
        key: "a".into(),
        window_start: 0,
        n: 1,
    };
    assert!(!syncer::needs_sync(std::slice::from_ref(&reserve)));
    assert!(syncer::needs_sync(&[reserve.clone(), count.clone()]));
    assert!(syncer::needs_sync(&[count, reserve]));
}

/// Resetting a budget zeroes its current period's balance and leaves the
/// spend recorded for earlier periods as it was: the ledger's history.
#[tokio::test]
async fn a_budget_reset_leaves_earlier_periods_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path()).unwrap();
    let in_period = |key: &str, start: u64| {
        let mut entry = charge(key, 1.0);
        if let Entry::Charge { budgets, .. } = &mut entry {
            budgets[0].1 = start;
        }
        entry
    };
    store.write(vec![in_period("then", 100)]).await.unwrap();
    store.write(vec![in_period("now", 200)]).await.unwrap();
    let reset = Entry::ResetBudget {
        budget: "global".into(),
        period_start: 200,
    };
    assert_eq!(store.write(vec![reset]).await, Ok(Outcome::Done));
    drop(store);
    assert_eq!(
        balances_at_start(dir.path()),
        vec![
            ("global".into(), 100, usd(1.0)),
            ("global".into(), 200, Usd::ZERO),
        ]
    );
}

/// A reload's read of a budget's books comes in the ledger's order of work:
/// it sees every write queued before it, and is answered only after those
/// writes' completions ran (so the daemon's memory counts them already).
#[tokio::test]
async fn books_see_the_writes_queued_before_and_come_after_their_completions() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path()).unwrap();
    store
        .write(vec![Entry::SetLimit {
            budget: "agent:a".into(),
            limit: usd(4.0),
        }])
        .await
        .unwrap();
    let completed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for key in 0..50 {
        let completed = std::sync::Arc::clone(&completed);
        // Queued, not awaited: the books are asked for while these wait.
        drop(
            store.commit(vec![charge_two(&format!("k{key}"), 0.5)], move |result| {
                assert_eq!(result, Ok(Outcome::Done));
                if key == 0 {
                    // A slow completion, so that books answered before the
                    // completions ran would be seen doing so.
                    let started = std::time::Instant::now();
                    while started.elapsed() < std::time::Duration::from_millis(20) {
                        std::hint::spin_loop();
                    }
                }
                completed.fetch_add(1, Ordering::SeqCst);
            }),
        );
    }
    let books = store
        .books(Opening {
            now: 100,
            budgets: ["agent:a", "agent:b"]
                .map(|name| Opened {
                    name: name.into(),
                    reset: Period::Daily,
                    filed_as: None,
                })
                .into(),
        })
        .unwrap();
    assert_eq!(
        completed.load(Ordering::SeqCst),
        50,
        "every completion ran first"
    );
    assert_eq!(
        books,
        Books {
            balances: vec![("agent:a".into(), 100, usd(25.0))],
            limits: vec![("agent:a".into(), usd(4.0))],
            unreadable: Vec::new(),
            refiled: Vec::new(),
        },
        "agent:a's alone (not global's), and nothing for agent:b"
    );
}

/// 2026-11-23, a Monday, 00:00 UTC, and the first of its month.
const MON_23: u64 = 1_795_392_000;
const NOV_1: u64 = MON_23 - 22 * 86_400;

/// A charge of `amount` to `agent:a` at `at`, filed under its day.
fn daily_charge(key: &str, amount: f64, at: u64) -> Entry {
    let mut entry = charge(key, amount);
    if let Entry::Charge {
        budgets, at: when, ..
    } = &mut entry
    {
        *budgets = vec![("agent:a".into(), at - at % 86_400)];
        *when = at;
    }
    entry
}

/// `agent:a` opened with `reset`, at a start or added by a reload.
fn opening(reset: Period, now: u64) -> Opening {
    Opening {
        now,
        budgets: vec![Opened {
            name: "agent:a".into(),
            reset,
            filed_as: None,
        }],
    }
}

fn options(opening: Opening) -> StoreOptions {
    StoreOptions {
        opening,
        ..StoreOptions::default()
    }
}

/// A ledger with no reset on record for a budget (written before the record
/// existed) keeps its balances as they are at the first open; the record is
/// made then, so the next change of reset is seen.
#[tokio::test]
async fn a_budget_without_a_reset_on_record_is_recorded_not_moved() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path()).unwrap();
    store
        .write(vec![daily_charge("k1", 1.0, MON_23 + 60)])
        .await
        .unwrap();
    store
        .write(vec![daily_charge("k2", 2.0, MON_23 + 86_400 + 60)])
        .await
        .unwrap();
    store.close();
    let now = MON_23 + 86_400 + 120;
    let (store, snapshot) =
        Store::open_with(dir.path(), &options(opening(Period::Monthly, now))).unwrap();
    assert!(snapshot.books.refiled.is_empty());
    store.close();
    assert_eq!(
        balances_at_start(dir.path()),
        vec![
            ("agent:a".into(), MON_23, usd(1.0)),
            ("agent:a".into(), MON_23 + 86_400, usd(2.0))
        ],
        "left as they were"
    );
    let (_, snapshot) =
        Store::open_with(dir.path(), &options(opening(Period::Weekly, now))).unwrap();
    assert_eq!(
        snapshot.books.refiled,
        vec![Refiled {
            budget: "agent:a".into(),
            from: "monthly".into(),
            to: "weekly".into(),
            period_start: MON_23,
            charges: 1,
            amount: usd(2.0),
        }],
        "Tuesday's charge moved to the week that began on Monday"
    );
}

/// A reload's books move the charges queued before them (in the writer's
/// order of work); moving again moves nothing. They leave the record of the
/// reset alone: a reload refused after the move (its answer came too late)
/// keeps the daemon filing by day, and the next start finds "daily" on
/// record and moves what was filed meanwhile. An applied reload's record
/// (`Entry::RecordReset`) ends the moving.
#[tokio::test]
async fn books_move_the_charges_queued_before_them_to_the_new_period() {
    let dir = tempfile::tempdir().unwrap();
    let now = MON_23 + 2 * 86_400;
    let (store, _) = Store::open_with(dir.path(), &options(opening(Period::Daily, now))).unwrap();
    let mut queued = Vec::new();
    for day in 0..3 {
        let at = MON_23 + day * 86_400 + 60;
        queued.push(store.commit(vec![daily_charge(&format!("k{day}"), 1.5, at)], |r| r));
    }
    let books = store.books(opening(Period::Monthly, now)).unwrap();
    for done in queued {
        assert_eq!(done.await, Ok(Ok(Outcome::Done)));
    }
    let spent: Vec<_> = books.balances.iter().filter(|b| b.2 > Usd::ZERO).collect();
    assert_eq!(spent, vec![&("agent:a".into(), NOV_1, usd(4.5))]);
    assert_eq!(
        (books.refiled.len(), books.refiled[0].charges),
        (1, 3),
        "{:?}",
        books.refiled
    );
    let again = store.books(opening(Period::Monthly, now)).unwrap();
    assert_eq!(again.refiled[0].charges, 0, "moved already: {again:?}");
    assert_eq!(again.balances, books.balances);
    // The reload was refused: the daemon still files by day.
    store
        .write(vec![daily_charge("late", 0.5, now + 60)])
        .await
        .unwrap();
    store.close();
    let (store, snapshot) =
        Store::open_with(dir.path(), &options(opening(Period::Monthly, now))).unwrap();
    assert_eq!(
        (
            snapshot.books.refiled[0].charges,
            snapshot.books.refiled[0].amount
        ),
        (1, usd(0.5)),
        "{:?}",
        snapshot.books.refiled
    );
    // Recorded by that start. An applied reload to weekly: its read moves,
    // its record moves nothing more (nothing was filed meanwhile), and a
    // start then finds the record and moves nothing.
    let read = store.books(opening(Period::Weekly, now)).unwrap();
    assert_eq!(read.refiled[0].charges, 4);
    let recorded = store
        .write(opening(Period::Weekly, now).records())
        .await
        .unwrap();
    assert!(
        matches!(&recorded, Outcome::Refiled(moved) if moved[0].charges == 0),
        "{recorded:?}"
    );
    store.close();
    let (_, snapshot) =
        Store::open_with(dir.path(), &options(opening(Period::Weekly, now))).unwrap();
    assert!(snapshot.books.refiled.is_empty());
    assert_eq!(
        balances_at_start(dir.path()),
        vec![
            ("agent:a".into(), NOV_1, Usd::ZERO),
            ("agent:a".into(), MON_23, usd(5.0)),
            ("agent:a".into(), MON_23 + 86_400, Usd::ZERO),
            ("agent:a".into(), MON_23 + 2 * 86_400, Usd::ZERO),
        ],
        "moved, not copied"
    );
}

/// A charge a hand edit left unreadable stays where it is; the others move,
/// and the ledger opens.
#[tokio::test]
async fn an_unreadable_charge_is_left_in_place_and_the_ledger_opens() {
    let dir = tempfile::tempdir().unwrap();
    let now = MON_23 + 86_400 + 120;
    let (store, _) = Store::open_with(dir.path(), &options(opening(Period::Daily, now))).unwrap();
    for (key, at) in [("k1", MON_23 + 60), ("k2", MON_23 + 86_400 + 60)] {
        store.write(vec![daily_charge(key, 1.0, at)]).await.unwrap();
    }
    store.close();
    Connection::open(dir.path().join(LEDGER_FILE))
        .unwrap()
        .execute(
            "UPDATE charges SET amount = 'one dollar' WHERE key = 'k1'",
            [],
        )
        .unwrap();
    let (_, snapshot) =
        Store::open_with(dir.path(), &options(opening(Period::Monthly, now))).unwrap();
    assert_eq!(
        (
            snapshot.books.refiled[0].charges,
            snapshot.books.refiled[0].amount
        ),
        (1, usd(1.0)),
        "{:?}",
        snapshot.books.refiled
    );
}

/// More budgets changed at once than SQLite is asked to find by name: every
/// charge is parsed, and the same charges move.
#[tokio::test]
async fn many_budgets_changed_at_once_move_the_same_charges() {
    let many = |reset| Opening {
        now: MON_23 + 86_400,
        budgets: (0..=PREFILTER_MOST)
            .map(|n| format!("agent:b{n}"))
            .chain(["agent:a".to_owned()])
            .map(|name| Opened {
                name,
                reset,
                filed_as: None,
            })
            .collect(),
    };
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open_with(dir.path(), &options(many(Period::Daily))).unwrap();
    for (key, at) in [("k1", MON_23 + 60), ("k2", MON_23 + 86_400 + 60)] {
        store.write(vec![daily_charge(key, 1.0, at)]).await.unwrap();
    }
    let books = store.books(many(Period::Monthly)).unwrap();
    let a = books
        .refiled
        .iter()
        .find(|r| r.budget == "agent:a")
        .unwrap();
    assert_eq!((a.charges, a.amount), (2, usd(2.0)));
    assert_eq!(books.refiled.len(), PREFILTER_MOST + 2);
}
