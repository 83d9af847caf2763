//! payd's Postgres sessions: a session of a stopped replica, left idle inside a transaction that
//! holds an order's row lock, is ended by Postgres after
//! `PAYD_DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS`, so the other replicas' writes to that order go
//! on instead of waiting for the stopped one (found by the fault suite's F7: a Pay waited on such
//! a row until its caller gave up).
use std::time::{Duration, Instant};

use diesel::{Connection, RunQueryDsl};

use crate::helpers::*;

#[derive(diesel::QueryableByName)]
struct Setting {
    #[diesel(sql_type = diesel::sql_types::Text)]
    idle_in_transaction_session_timeout: String,
}

fn lock_order(conn: &mut diesel::PgConnection, id: &str) -> diesel::QueryResult<usize> {
    diesel::sql_query(format!(
        "SELECT id FROM orders WHERE id = '{id}' FOR UPDATE"
    ))
    .execute(conn)
}

#[tokio::test]
async fn a_session_idle_in_a_transaction_is_ended_and_its_row_locks_go_with_it() {
    let mut app = spawn_app_with(|s| s.database_idle_in_transaction_timeout_ms = 300).await;
    let order = create_order(&mut app, "SESSION-IDLE-1", 100).await;
    let pool = app.app.db.pool().clone();

    let shown: Setting = diesel::sql_query("SHOW idle_in_transaction_session_timeout")
        .get_result(&mut pool.get().unwrap())
        .unwrap();
    assert_eq!(shown.idle_in_transaction_session_timeout, "300ms");

    // The "stopped replica": its session takes the order's row lock inside a transaction, then
    // sends nothing for 3 s (its process frozen between two statements).
    let (id, p) = (order.order_id.clone(), pool.clone());
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let stopped = std::thread::spawn(move || {
        let mut conn = p.get().unwrap();
        conn.transaction::<_, diesel::result::Error, _>(|conn| {
            lock_order(conn, &id)?;
            locked_tx.send(()).unwrap();
            std::thread::sleep(Duration::from_secs(3));
            // Woken: its session is gone, so this transaction commits nothing.
            lock_order(conn, &id)
        })
    });
    locked_rx.recv().unwrap();

    // Another replica's write to the same order waits for the row only until Postgres ends the
    // idle session (300 ms), not for the 3 s the holder stays frozen.
    let (id, p) = (order.order_id.clone(), pool.clone());
    let waited = tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        let mut conn = p.get().unwrap();
        conn.transaction::<_, diesel::result::Error, _>(|conn| lock_order(conn, &id))
            .unwrap();
        t.elapsed()
    })
    .await
    .unwrap();
    assert!(
        waited < Duration::from_millis(2_000),
        "the row stayed locked by the idle session for {waited:?}"
    );
    assert!(
        stopped.join().unwrap().is_err(),
        "the frozen session's transaction must not survive"
    );
}

#[tokio::test]
async fn zero_turns_the_timeout_off() {
    let app = spawn_app_with(|s| s.database_idle_in_transaction_timeout_ms = 0).await;
    let shown: Setting = diesel::sql_query("SHOW idle_in_transaction_session_timeout")
        .get_result(&mut app.app.db.pool().get().unwrap())
        .unwrap();
    assert_eq!(shown.idle_in_transaction_session_timeout, "0");
}
