//! Memory equals the ledger: the daemon's `budget` answer against the ledger file
//! it writes. Run after every test that touches a budget.

use std::path::Path;
use std::time::{Duration, Instant};

use automation_framework::guard::period::Period;
use automation_framework::protocol::{AdmitRequest, Outcome, ReportRequest};
use automation_framework_client::Client;
use rusqlite::{Connection, OpenFlags};

/// One budget as the daemon's memory and the ledger file each hold it, in
/// micro-dollars: (spent, reserved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Books {
    pub budget: String,
    pub spent: i64,
    pub reserved: i64,
}

/// Polls until every budget's spent and reserved in memory equal the ledger's
/// (commits still in flight when a connection dropped finish within moments),
/// and panics with both sides if they do not within a few seconds.
///
/// `reserved == Σ estimates of open reservations` and `spent == the balance of
/// the current period`, per budget.
pub async fn assert_memory_matches_ledger(client: &mut Client, state_dir: &Path) {
    barrier(client).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (memory, ledger) = books(client, state_dir).await;
        if memory == ledger {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon's memory differs from its ledger:\n memory: {memory:?}\n ledger: {ledger:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every ledger write queued before now has committed: the ledger
/// has one writer that commits in order, so once a write of our own (a $0
/// admission and its $0 report, which change no balance) is answered, so are all
/// earlier ones. Without it a check right after a connection was cut could see
/// memory and ledger equal only because neither has the write yet.
async fn barrier(client: &mut Client) {
    // A daemon that refuses the barrier (an unknown service, a failed ledger)
    // is checked by polling alone.
    let Ok(admitted) = client
        .admit(AdmitRequest {
            service: "llm".into(),
            cost: Some(0.0),
            ..Default::default()
        })
        .await
    else {
        return;
    };
    if let Some(reservation) = admitted.reservation {
        let _ = client
            .report(ReportRequest {
                reservation: Some(reservation),
                outcome: Outcome::Success,
                cost: Some(0.0),
                ..Default::default()
            })
            .await;
    }
}

/// Both sides, sorted by budget name.
pub async fn books(client: &mut Client, state_dir: &Path) -> (Vec<Books>, Vec<Books>) {
    let reply = client.budget(None).await.expect("budget answered");
    let mut memory: Vec<Books> = reply
        .budgets
        .iter()
        .map(|b| Books {
            budget: b.name.clone(),
            spent: micros(b.spent),
            reserved: micros(b.reserved),
        })
        .collect();
    memory.sort_by(|a, b| a.budget.cmp(&b.budget));
    let ledger = memory
        .iter()
        .map(|m| {
            let reset = reply
                .budgets
                .iter()
                .find(|b| b.name == m.budget)
                .map_or("never", |b| b.reset.as_str());
            ledger_books(state_dir, &m.budget, reset)
        })
        .collect();
    (memory, ledger)
}

/// A budget as the ledger file holds it: the balance of its latest period
/// that `reset` cuts (a row of an earlier reset's period is not one of its),
/// and the estimates of the reservations still open against it.
pub fn ledger_books(state_dir: &Path, budget: &str, reset: &str) -> Books {
    let conn = Connection::open_with_flags(
        state_dir.join("ledger.sqlite3"),
        OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open the ledger read-only");
    let period = period_of(reset);
    let mut stmt = conn
        .prepare(
            "SELECT period_start, spent FROM balances WHERE budget = ?1 ORDER BY period_start DESC",
        )
        .expect("prepare");
    let spent: i64 = stmt
        .query_map([budget], |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?))
        })
        .expect("read the balances")
        .map(|row| row.expect("a balance"))
        .find(|(start, _)| period.start(*start as u64) == *start as u64)
        .map_or(0, |(_, spent)| spent);
    // Budgets are stored one name a line.
    let reserved: i64 = conn
        .query_row(
            "SELECT COALESCE(SUM(estimate), 0) FROM reservations WHERE instr(char(10) || budgets || char(10), char(10) || ?1 || char(10)) > 0",
            [budget],
            |row| row.get(0),
        )
        .expect("sum the open reservations");
    Books {
        budget: budget.to_owned(),
        spent,
        reserved,
    }
}

/// A budget's reset as the `budget` answer names it (`Period::name`).
fn period_of(reset: &str) -> Period {
    match reset {
        "never" => Period::Forever,
        "daily" => Period::Daily,
        "weekly" => Period::Weekly,
        "monthly" => Period::Monthly,
        "minute" => Period::Every(Duration::from_secs(60)),
        "hour" => Period::Every(Duration::from_secs(3600)),
        other => Period::Every(
            humantime::parse_duration(other)
                .unwrap_or_else(|e| panic!("a reset the daemon named {other:?}: {e}")),
        ),
    }
}

fn micros(dollars: f64) -> i64 {
    (dollars * 1e6).round() as i64
}

/// Ids of the reservations the ledger holds open.
pub fn open_reservations(state_dir: &Path) -> Vec<u64> {
    let conn = Connection::open_with_flags(
        state_dir.join("ledger.sqlite3"),
        OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open the ledger read-only");
    let mut stmt = conn
        .prepare("SELECT id FROM reservations ORDER BY id")
        .expect("prepare");
    stmt.query_map([], |row| row.get::<_, i64>(0))
        .expect("query")
        .map(|id| id.expect("an id") as u64)
        .collect()
}
