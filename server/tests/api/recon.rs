//! Reconciliation runs against real Postgres: one run per channel and day, and a run whose replica
//! died is taken over instead of blocking the day for good.
use diesel::RunQueryDsl;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_run_blocks_a_second_but_an_abandoned_one_is_taken_over() {
    let app = spawn_app().await;
    let day = chrono::NaiveDate::from_ymd_opt(2026, 12, 1).unwrap();
    let mut conn = app.conn();
    let (first, existing) =
        payd::storage::recon::start_run(&mut conn, "WECHAT", day, "shop-1").unwrap();
    assert!(!existing);
    // Alive (fresh heartbeat): a second start gets the same run.
    let (again, existing) =
        payd::storage::recon::start_run(&mut conn, "WECHAT", day, "shop-1").unwrap();
    assert!(existing);
    assert_eq!(again.id, first.id);
    // Its replica died: no heartbeat for longer than the limit.
    diesel::sql_query(format!(
        "UPDATE recon_runs SET heartbeat_at = now() - interval '{} seconds' WHERE id = '{}'",
        payd::storage::recon::ABANDONED_AFTER_SECS + 1,
        first.id
    ))
    .execute(&mut conn)
    .unwrap();
    let (taken_over, existing) =
        payd::storage::recon::start_run(&mut conn, "WECHAT", day, "shop-1").unwrap();
    assert!(!existing);
    assert_ne!(taken_over.id, first.id);
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM recon_runs WHERE id = '{}' AND status = 'FAILED' AND error LIKE 'abandoned%'",
            first.id
        )),
        1
    );
    assert_eq!(
        app.count("SELECT count(*) AS n FROM recon_runs WHERE status = 'RUNNING'"),
        1
    );
}
