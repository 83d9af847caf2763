//! The outbox against real Postgres: stream positions are given after commit, so a transaction
//! that commits late is never skipped by a reader; dead-lettered pushes come back with
//! RedeliverEvents.
use diesel::{PgConnection, RunQueryDsl};
use payproto::payment::v1 as pb;

use crate::helpers::*;

fn order_row(app: &TestApp, no: &str) -> uuid::Uuid {
    #[derive(diesel::QueryableByName)]
    struct Id {
        #[diesel(sql_type = diesel::sql_types::Uuid)]
        id: uuid::Uuid,
    }
    diesel::sql_query(format!(
        "INSERT INTO orders (id, app_id, merchant_order_no, amount_minor, currency, subject, status, expires_at) \
         VALUES (gen_random_uuid(), 'shop-1', '{no}', 100, 'CNY', 's', 'PENDING', now() + interval '1 hour') RETURNING id"
    ))
    .get_result::<Id>(&mut app.conn())
    .unwrap()
    .id
}

fn append(conn: &mut PgConnection, order: uuid::Uuid, kind: &str) {
    payd::storage::outbox::append(conn, "shop-1", order, kind, |id, seq| {
        format!("{id}:{seq}").into_bytes()
    })
    .unwrap();
}

/// The interleaving that loses events when a stream is paged by insert id: T1 inserts first
/// (lower id) and commits last. The reader has already passed T2's later id when T1's row
/// becomes visible. With positions assigned after commit, T1's event gets the later position and
/// the reader, resuming from its cursor, sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_that_commits_late_is_not_skipped_by_a_reader() {
    let app = spawn_app_with(|s| s.outbox_tick_ms = 3_600_000).await;
    let (a, b) = (order_row(&app, "OUTBOX-A"), order_row(&app, "OUTBOX-B"));
    let mut t1 = app.conn();
    let mut t2 = app.conn();
    let mut reader = app.conn();
    diesel::sql_query("BEGIN").execute(&mut t1).unwrap();
    append(&mut t1, a, "order.created");
    append(&mut t2, b, "order.created");
    // Only T2's row is committed: the reader gets it, and its cursor moves past it.
    payd::storage::outbox::sequence(&mut reader, &[], 100).unwrap();
    let first = payd::storage::outbox::read_stream(&mut reader, "shop-1", 0, 100).unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].order_id, Some(b));
    let cursor = first[0].stream_seq.unwrap();
    diesel::sql_query("COMMIT").execute(&mut t1).unwrap();
    payd::storage::outbox::sequence(&mut reader, &[], 100).unwrap();
    let next = payd::storage::outbox::read_stream(&mut reader, "shop-1", cursor, 100).unwrap();
    assert_eq!(next.len(), 1, "the late commit was skipped");
    assert_eq!(next[0].order_id, Some(a));
    // A's insert id is below B's: a reader paging by id from B's would have passed it.
    assert!(next[0].id < first[0].id);
}

/// The sequencer is one statement, so its snapshot is taken before it holds the sequencer lock:
/// rows that the previous sequencer numbered and committed in between still look unnumbered to
/// it. Replayed here: another transaction holds the rows (as that previous sequencer would,
/// until its commit), the pass reads them as unnumbered and waits on them, then the holder
/// numbers them and commits. The pass must leave their numbers alone; without the UPDATE's own
/// `stream_seq IS NULL` re-check it numbered them a second time, and a reader past their first
/// numbers would see them twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequencer_pass_never_renumbers_what_a_previous_pass_committed_meanwhile() {
    let app = spawn_app_with(|s| s.outbox_tick_ms = 3_600_000).await;
    let order = order_row(&app, "OUTBOX-SEQ");
    append(&mut app.conn(), order, "order.created");
    append(&mut app.conn(), order, "order.paid");
    let mut previous = app.conn();
    diesel::sql_query("BEGIN").execute(&mut previous).unwrap();
    diesel::sql_query("SELECT id FROM outbox_events FOR UPDATE")
        .execute(&mut previous)
        .unwrap();
    let url = app.db.url.clone();
    let pass = std::thread::spawn(move || {
        use diesel::Connection;
        let mut conn = PgConnection::establish(&url).unwrap();
        payd::storage::outbox::sequence(&mut conn, &[], 100).unwrap()
    });
    // The pass has read the rows and waits for their row locks.
    let mut probe = app.conn();
    let mut waiting = || {
        #[derive(diesel::QueryableByName)]
        struct N {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        diesel::sql_query(
            "SELECT count(*) AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
             AND query LIKE '%outbox_stream%' AND datname = current_database()",
        )
        .get_result::<N>(&mut probe)
        .unwrap()
        .n
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while waiting() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the pass never waited"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    diesel::sql_query("UPDATE outbox_events SET stream_seq = 1000000 + order_seq")
        .execute(&mut previous)
        .unwrap();
    diesel::sql_query("COMMIT").execute(&mut previous).unwrap();
    assert_eq!(
        pass.join().unwrap(),
        0,
        "the pass numbered rows already numbered"
    );
    let rows = payd::storage::outbox::read_stream(&mut app.conn(), "shop-1", 0, 100).unwrap();
    let seqs: Vec<_> = rows.iter().map(|r| r.stream_seq.unwrap()).collect();
    assert_eq!(seqs, vec![1_000_001, 1_000_002]);
}

/// A sink that never answers OK: after the last try the event is dead-lettered (gauge), and
/// RedeliverEvents puts it back once the sink works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_lettered_events_come_back_with_redeliver_events() {
    let sink = e2e::sink::TestSink::start().await;
    sink.set_down(true);
    let url = sink.url.clone();
    let mut app = spawn_app_with(move |s| {
        s.event_sinks = format!("shop-1={url}");
        s.event_retry_delays_ms = "50,50".into();
        s.event_sink_timeout_ms = 500;
        s.outbox_tick_ms = 20;
    })
    .await;
    let order = create_order(&mut app, "OUTBOX-DEAD-1", 300).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while app.count("SELECT count(*) AS n FROM outbox_events WHERE delivery = 'DEAD'") < 1 {
        assert!(std::time::Instant::now() < deadline, "never dead-lettered");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(sink.refused(), 3, "one try and two retries");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let m = app.metrics_text().await;
        if m.contains("payment_outbox_dead_letters 1") {
            assert!(
                m.contains("payment_event_deliveries_total{outcome=\"dead\"} 1"),
                "{m}"
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{m}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    sink.set_down(false);
    let requeued = app
        .client
        .redeliver_events(req(pb::RedeliverEventsRequest { event_ids: vec![] }))
        .await
        .unwrap()
        .into_inner()
        .requeued;
    assert_eq!(requeued, 1);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while sink.received().is_empty() {
        assert!(std::time::Instant::now() < deadline, "not redelivered");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let e = &sink.received()[0];
    assert_eq!(e.r#type, "order.created");
    assert_eq!(e.order_id, order.order_id);
    assert_eq!(e.order_sequence, 1);
    assert_eq!(e.cursor, "1");
    // Another app's events are not this app's to redeliver.
    let other = app
        .client
        .redeliver_events(req_as(
            "shop-2",
            pb::RedeliverEventsRequest { event_ids: vec![] },
        ))
        .await
        .unwrap()
        .into_inner()
        .requeued;
    assert_eq!(other, 0);
}

/// Events that belong to no order are numbered per stream key in commit order and pushed one at
/// a time in that order, like an order's: the second is not claimed while the first is pending,
/// and an order's events are not held up by them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_a_stream_key_are_numbered_and_delivered_in_sequence() {
    let app = spawn_app_with(|s| s.outbox_tick_ms = 3_600_000).await;
    let mut conn = app.conn();
    let key = "reconciliation:WECHAT:2026-12-01";
    for kind in [
        "reconciliation.discrepancy_found",
        "reconciliation.completed",
    ] {
        payd::storage::outbox::append_to_stream(&mut conn, "ops", key, kind, |id, seq| {
            format!("{id}:{seq}").into_bytes()
        })
        .unwrap();
    }
    let order = order_row(&app, "OUTBOX-KEY-1");
    append(&mut conn, order, "order.created");
    payd::storage::outbox::sequence(&mut conn, &["ops".into(), "shop-1".into()], 100).unwrap();
    let ops = payd::storage::outbox::read_stream(&mut conn, "ops", 0, 100).unwrap();
    assert_eq!(ops.len(), 2);
    assert_eq!(
        ops.iter().map(|r| r.order_seq).collect::<Vec<_>>(),
        [1, 2],
        "numbered within the key"
    );
    assert!(
        ops.iter()
            .all(|r| r.order_id.is_none() && r.stream_key.as_deref() == Some(key))
    );
    let lease = std::time::Duration::from_secs(60);
    let first = payd::storage::outbox::claim_deliverable(&mut conn, 100, lease).unwrap();
    let mut claimed: Vec<_> = first.iter().map(|r| r.event_type.as_str()).collect();
    claimed.sort_unstable();
    assert_eq!(
        claimed,
        ["order.created", "reconciliation.discrepancy_found"],
        "one per ordering key"
    );
    // Its lease is not over, and the key's second event waits for the first.
    assert!(
        payd::storage::outbox::claim_deliverable(&mut conn, 100, lease)
            .unwrap()
            .is_empty()
    );
    let ids: Vec<i64> = first.iter().map(|r| r.id).collect();
    payd::storage::outbox::mark_delivered(&mut conn, &ids).unwrap();
    let second = payd::storage::outbox::claim_deliverable(&mut conn, 100, lease).unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].event_type, "reconciliation.completed");
    // A row names an order or a key, never both or neither.
    let both = diesel::sql_query(format!(
        "UPDATE outbox_events SET stream_key = 'x' WHERE order_id = '{order}'"
    ))
    .execute(&mut conn);
    assert!(
        both.is_err(),
        "an event with an order and a key was accepted"
    );
}

/// A pass's failed deliveries are recorded in one statement, each with its own fate: retried at
/// its time, or dead-lettered; a row no longer pending (delivered meanwhile by another pass) is
/// left alone.
#[tokio::test]
async fn failed_deliveries_of_a_pass_are_recorded_together_each_with_its_own_fate() {
    use payd::storage::outbox::{Failed, mark_delivered, mark_failed};
    let app = spawn_app_with(|s| s.outbox_tick_ms = 3_600_000).await;
    let order = order_row(&app, "OUTBOX-FAIL");
    let mut conn = app.conn();
    for kind in ["order.created", "order.paid", "order.closed"] {
        append(&mut conn, order, kind);
    }
    payd::storage::outbox::sequence(&mut conn, &["shop-1".into()], 100).unwrap();
    let rows = payd::storage::outbox::read_stream(&mut conn, "shop-1", 0, 100).unwrap();
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    mark_delivered(&mut conn, &ids[2..]).unwrap();
    let retry_at = chrono::Utc::now() + chrono::Duration::seconds(30);
    let n = mark_failed(
        &mut conn,
        &[
            Failed {
                id: ids[0],
                error: "Unavailable: down".into(),
                retry_at: Some(retry_at),
            },
            Failed {
                id: ids[1],
                error: "Internal: gave up".into(),
                retry_at: None,
            },
            Failed {
                id: ids[2],
                error: "late".into(),
                retry_at: None,
            },
        ],
    )
    .unwrap();
    assert_eq!(n, 2, "the delivered row is not pending any more");
    assert_eq!(mark_failed(&mut conn, &[]).unwrap(), 0);
    let rows = payd::storage::outbox::read_stream(&mut conn, "shop-1", 0, 100).unwrap();
    let fate: Vec<_> = rows
        .iter()
        .map(|r| {
            (
                r.delivery.as_str(),
                r.last_error.as_deref(),
                r.next_delivery_at,
            )
        })
        .collect();
    assert_eq!(
        fate,
        vec![
            (
                "PENDING",
                Some("Unavailable: down"),
                Some(payd::storage::steps::stored_instant(retry_at))
            ),
            ("DEAD", Some("Internal: gave up"), None),
            ("DELIVERED", None, None),
        ]
    );
}

/// The outbox's passes must cost in proportion to their batch whatever the statistics say.
/// Autovacuum analyzes the table in steady state, when nothing waits to be numbered or
/// delivered, so the planner believes about one row is; then a sink outage or a burst leaves
/// thousands. Replayed: the table analyzed with every event delivered, then 3,000 new events.
/// Counted, not timed: how far the stream's sequence moved (the sequencer's old plan re-ran its
/// numbering, `nextval` included, once per unnumbered row: 3,000 × 1,000 draws for a pass of
/// 1,000) and how many entries the passes read from the partial indexes on pending rows (the
/// claim's old anti-join scanned all 3,000 pending rows once per candidate, the delivery marks
/// all of them once per pass).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_passes_do_work_in_proportion_to_their_batch_when_the_statistics_say_nothing_is_pending()
 {
    use payd::storage::outbox::{Failed, claim_deliverable, mark_delivered, mark_failed, sequence};
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let n = |conn: &mut PgConnection, sql: &str| -> i64 {
        diesel::sql_query(sql).get_result::<N>(conn).unwrap().n
    };
    let bulk = |conn: &mut PgConnection, count: u32, delivered: bool| {
        diesel::sql_query(format!(
            "WITH o AS ( \
               INSERT INTO orders (id, app_id, merchant_order_no, amount_minor, currency, subject, status, expires_at) \
               SELECT gen_random_uuid(), 'shop-1', 'BULK-{delivered}-' || g, 100, 'CNY', 's', 'PENDING', now() + interval '1 hour' \
               FROM generate_series(1, {count}) g RETURNING id) \
             INSERT INTO outbox_events (event_id, app_id, order_id, order_seq, event_type, payload, stream_seq, delivery, delivered_at) \
             SELECT gen_random_uuid(), 'shop-1', o.id, 1, 'order.created', '\\x00', \
                    CASE WHEN {delivered} THEN nextval('outbox_stream') END, \
                    CASE WHEN {delivered} THEN 'DELIVERED' ELSE 'NONE' END, \
                    CASE WHEN {delivered} THEN now() END \
             FROM o"
        ))
        .execute(conn)
        .unwrap();
    };
    // Entries read from the partial indexes on unnumbered and pending rows, and whole scans of
    // the table, as the statistics collector has them once this session's counters are flushed.
    let partial_reads = |conn: &mut PgConnection| -> (i64, i64) {
        diesel::sql_query("SELECT pg_stat_force_next_flush()")
            .execute(conn)
            .unwrap();
        diesel::sql_query("SELECT 1").execute(conn).unwrap();
        let reads = n(
            conn,
            "SELECT coalesce(sum(idx_tup_read), 0)::bigint AS n FROM pg_stat_user_indexes \
             WHERE indexrelname IN ('outbox_unsequenced', 'outbox_due', 'outbox_key_pending')",
        );
        let scans = n(
            conn,
            "SELECT seq_scan AS n FROM pg_stat_user_tables WHERE relname = 'outbox_events'",
        );
        (reads, scans)
    };
    let app = spawn_app_with(|s| s.outbox_tick_ms = 3_600_000).await;
    let mut conn = app.conn();
    bulk(&mut conn, 2_000, true);
    diesel::sql_query("ANALYZE outbox_events")
        .execute(&mut conn)
        .unwrap();
    bulk(&mut conn, 3_000, false);
    let subscribed = ["shop-1".to_owned()];

    let before = n(&mut conn, "SELECT last_value AS n FROM outbox_stream");
    assert_eq!(sequence(&mut conn, &subscribed, 1_000).unwrap(), 1_000);
    let drawn = n(&mut conn, "SELECT last_value AS n FROM outbox_stream") - before;
    assert_eq!(drawn, 1_000, "a pass of 1,000 drew {drawn} stream numbers");
    while sequence(&mut conn, &subscribed, 1_000).unwrap() > 0 {}

    let reads = partial_reads(&mut conn);
    let claimed = claim_deliverable(&mut conn, 256, std::time::Duration::from_secs(30)).unwrap();
    assert_eq!(claimed.len(), 256);
    // Nor may the claim read the whole table instead (a plan that avoids the indexes). The
    // marks may: on a table this small a scan is cheaper than their 128 key probes, and the
    // planner knows the table's size.
    assert_eq!(
        partial_reads(&mut conn).1,
        reads.1,
        "the claim scanned outbox_events whole"
    );
    let ids: Vec<i64> = claimed.iter().map(|r| r.id).collect();
    assert_eq!(mark_delivered(&mut conn, &ids[..128]).unwrap(), 128);
    let failed: Vec<Failed> = ids[128..]
        .iter()
        .map(|&id| Failed {
            id,
            error: "Unavailable: down".into(),
            retry_at: Some(chrono::Utc::now()),
        })
        .collect();
    assert_eq!(mark_failed(&mut conn, &failed).unwrap(), 128);
    let read = partial_reads(&mut conn).0 - reads.0;
    // The claim reads about one entry of `outbox_due` per event it takes and one of
    // `outbox_key_pending` per candidate's "earliest of its key"; the marks go by primary key
    // (or the small table's scan), never through the partial indexes.
    assert!(
        read <= 4 * 256,
        "a claim of 256 and its marks read {read} entries of the partial indexes (3,000 pending)"
    );
}
