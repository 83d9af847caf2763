//! Reconciliation runs against real Postgres: one run per channel and day, and a run whose replica
//! died is taken over instead of blocking the day for good.
use diesel::RunQueryDsl;
use payproto::payment::v1 as pb;

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

/// One statement line as the adapters stream it, staged the way a run stages a page.
struct Line {
    kind: &'static str,
    out_trade_no: String,
    out_refund_no: String,
    amount: i64,
    currency: &'static str,
}

fn pay_line(out_trade_no: &str, amount: i64) -> Line {
    Line {
        kind: "PAYMENT",
        out_trade_no: out_trade_no.into(),
        out_refund_no: String::new(),
        amount,
        currency: "CNY",
    }
}

fn refund_line(out_trade_no: &str, out_refund_no: &str, amount: i64) -> Line {
    Line {
        kind: "REFUND",
        out_trade_no: out_trade_no.into(),
        out_refund_no: out_refund_no.into(),
        amount,
        currency: "CNY",
    }
}

fn today() -> chrono::NaiveDate {
    payd::app::reconciliation::beijing_day(chrono::Utc::now())
}

/// Starts a run of WECHAT today, stages `lines` as one statement and settles it (compare,
/// repairs, events, completion) exactly as a run does once its statement stream has ended.
async fn reconcile(app: &TestApp, lines: &[Line]) -> payd::storage::recon::RunRow {
    let day = today();
    let mut conn = app.conn();
    let (run, existing) =
        payd::storage::recon::start_run(&mut conn, "WECHAT", day, "shop-1").unwrap();
    assert!(!existing);
    let page: Vec<_> = lines
        .iter()
        .enumerate()
        .map(|(i, l)| payd::storage::recon::StagedLine {
            run_id: run.id,
            source_line: i as i64 + 2,
            kind: l.kind,
            out_trade_no: l.out_trade_no.clone(),
            out_refund_no: l.out_refund_no.clone(),
            channel_trade_no: format!("4200{}", l.out_trade_no),
            state: "SUCCEEDED",
            amount_minor: l.amount,
            currency: l.currency.into(),
            at: Some(chrono::Utc::now()),
        })
        .collect();
    payd::storage::recon::stage_page(&mut conn, run.id, &page).unwrap();
    let payments = lines.iter().filter(|l| l.kind == "PAYMENT").count() as i64;
    app.app
        .settle_run(
            run.id,
            payd::domain::Channel::Wechat,
            day,
            payments,
            lines.len() as i64 - payments,
        )
        .await
        .unwrap()
}

/// A PAID order of `shop-1` whose WECHAT attempt `out_trade_no` succeeded now (today).
async fn paid_order(app: &mut TestApp, no: &str, out_trade_no: &str, amount: i64) -> String {
    let order = create_order(app, no, amount).await;
    diesel::sql_query(format!(
        "INSERT INTO payment_attempts (id, order_id, out_trade_no, channel, method, amount_minor, \
         currency, status, payer_digest, paid_minor, succeeded_at, pay_deadline) VALUES \
         (gen_random_uuid(), '{}', '{out_trade_no}', 'WECHAT', 'WECHAT_NATIVE', {amount}, 'CNY', \
         'SUCCEEDED', '\\x00', {amount}, now(), now() + interval '1 hour')",
        order.order_id
    ))
    .execute(&mut app.conn())
    .unwrap();
    diesel::sql_query(format!(
        "UPDATE orders SET status = 'PAID', paid_minor = {amount}, version = version + 1, transition_reason = 'test setup' \
         WHERE id = '{}'",
        order.order_id
    ))
    .execute(&mut app.conn())
    .unwrap();
    order.order_id
}

/// A PAYING attempt of a new order (its result never arrived).
async fn paying_order(app: &mut TestApp, no: &str, out_trade_no: &str, amount: i64) -> String {
    let order = create_order(app, no, amount).await;
    add_paying_attempt(app, &order.order_id, out_trade_no, amount);
    order.order_id
}

fn add_paying_attempt(app: &TestApp, order_id: &str, out_trade_no: &str, amount: i64) {
    diesel::sql_query(format!(
        "INSERT INTO payment_attempts (id, order_id, out_trade_no, channel, method, amount_minor, \
         currency, status, payer_digest, pay_deadline, next_query_at) VALUES (gen_random_uuid(), \
         '{order_id}', '{out_trade_no}', 'WECHAT', 'WECHAT_NATIVE', {amount}, 'CNY', 'PAYING', \
         '\\x00', now() + interval '1 hour', now() + interval '1 day')"
    ))
    .execute(&mut app.conn())
    .unwrap();
    diesel::sql_query(format!(
        "UPDATE orders SET status = 'PAYING', version = version + 1, transition_reason = 'test setup' WHERE id = '{order_id}' \
         AND status = 'PENDING'"
    ))
    .execute(&mut app.conn())
    .unwrap();
}

/// A refund of the order's attempt `out_trade_no`, in `status` (SUCCEEDED ones succeeded now),
/// with the amounts reserved (and refunded) on the attempt as CreateRefund would.
fn refund(app: &TestApp, out_trade_no: &str, out_refund_no: &str, amount: i64, status: &str) {
    let succeeded = status == "SUCCEEDED";
    diesel::sql_query(format!(
        "WITH a AS (UPDATE payment_attempts SET refund_reserved_minor = refund_reserved_minor + {amount}, \
           refunded_minor = refunded_minor + {} WHERE out_trade_no = '{out_trade_no}' \
           RETURNING id, order_id) \
         INSERT INTO refunds (id, app_id, order_id, attempt_id, refund_request_no, out_refund_no, \
           channel, amount_minor, currency, status, requested_by, next_query_at, succeeded_at) \
         SELECT gen_random_uuid(), 'shop-1', a.order_id, a.id, '{out_refund_no}', '{out_refund_no}', \
           'WECHAT', {amount}, 'CNY', '{status}', 'app:shop-1', now() + interval '1 day', {} FROM a",
        if succeeded { amount } else { 0 },
        if succeeded { "now()" } else { "NULL" },
    ))
    .execute(&mut app.conn())
    .unwrap();
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Found {
    kind: String,
    out_trade_no: String,
    out_refund_no: String,
    status: String,
}

fn found(app: &TestApp, run: uuid::Uuid) -> Vec<Found> {
    #[derive(diesel::QueryableByName)]
    struct R {
        #[diesel(sql_type = diesel::sql_types::Text)]
        kind: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        out_trade_no: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        out_refund_no: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        status: String,
    }
    let rows: Vec<R> = diesel::sql_query(format!(
        "SELECT kind, out_trade_no, out_refund_no, status FROM recon_discrepancies \
         WHERE run_id = '{run}' ORDER BY kind, out_trade_no, out_refund_no"
    ))
    .load(&mut app.conn())
    .unwrap();
    rows.into_iter()
        .map(|r| Found {
            kind: r.kind,
            out_trade_no: r.out_trade_no,
            out_refund_no: r.out_refund_no,
            status: r.status,
        })
        .collect()
}

fn f(kind: &str, trade: &str, refund: &str, status: &str) -> Found {
    Found {
        kind: kind.into(),
        out_trade_no: trade.into(),
        out_refund_no: refund.into(),
        status: status.into(),
    }
}

/// The `reconciliation.*` events as WatchEvents shows them to `app`, read until `n` arrived.
async fn watch(app: &mut TestApp, as_app: &str, n: usize) -> Vec<pb::Event> {
    use futures::StreamExt;
    let mut stream = app
        .client
        .watch_events(req_as(as_app, pb::WatchEventsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while got.len() < n {
        let next = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| panic!("{as_app} saw {} of {n} events: {got:?}", got.len()))
            .unwrap()
            .unwrap()
            .event
            .unwrap();
        if next.r#type.starts_with("reconciliation.") {
            got.push(next);
        }
    }
    got
}

/// Orders, their transitions and the refunds, without the event counter (events are expected).
fn money_state(app: &TestApp) -> String {
    #[derive(diesel::QueryableByName)]
    struct S {
        #[diesel(sql_type = diesel::sql_types::Text)]
        s: String,
    }
    let rows: Vec<S> = diesel::sql_query(
        "SELECT concat_ws('|', \
           (SELECT coalesce(string_agg(concat_ws(',', id, status, version, paid_minor, refunded_minor), ';' ORDER BY id), '') FROM orders), \
           (SELECT count(*)::text FROM order_transitions), \
           (SELECT coalesce(string_agg(concat_ws(',', id, status, amount_minor), ';' ORDER BY id), '') FROM refunds), \
           (SELECT coalesce(string_agg(concat_ws(',', id, status, refund_reserved_minor, refunded_minor), ';' ORDER BY id), '') FROM payment_attempts)) AS s",
    )
    .load(&mut app.conn())
    .unwrap();
    rows[0].s.clone()
}

fn recon_events(app: &TestApp, kind: &str) -> i64 {
    app.count(&format!(
        "SELECT count(*) AS n FROM outbox_events WHERE event_type = '{kind}'"
    ))
}

/// Every refund kind, each once: a refund we know that the channel does not list, one it lists
/// for another amount, one it lists as succeeded that is still PROCESSING here, and two it lists
/// that we never made (of a trade we know, and of one we do not). Each new discrepancy has one
/// `reconciliation.discrepancy_found` event, written with it: to the order's app when the trade
/// is ours, to the operations app otherwise; the run's end has one `reconciliation.completed`.
/// A second run of the day records and emits nothing new but its own completion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refund_kind_is_found_once_with_one_event_each_and_a_rerun_adds_nothing() {
    let mut app = spawn_app_with(|s| s.refund_pending_grace_ms = Some(3_600_000)).await;
    paid_order(&mut app, "RECON-R-1", "WXRF0000000001", 1000).await;
    refund(&app, "WXRF0000000001", "RFOK00000001", 100, "SUCCEEDED");
    refund(&app, "WXRF0000000001", "RFGONE000001", 200, "SUCCEEDED");
    refund(&app, "WXRF0000000001", "RFAMT0000001", 300, "SUCCEEDED");
    refund(&app, "WXRF0000000001", "RFPROC000001", 50, "PROCESSING");
    let lines = [
        pay_line("WXRF0000000001", 1000),
        refund_line("WXRF0000000001", "RFOK00000001", 100),
        refund_line("WXRF0000000001", "RFAMT0000001", 250),
        refund_line("WXRF0000000001", "RFPROC000001", 50),
        refund_line("WXRF0000000001", "RFNEW0000001", 70),
        refund_line("WXUNKNOWN00001", "RFNEW0000002", 80),
    ];
    let before = money_state(&app);
    let run = reconcile(&app, &lines).await;
    assert_eq!(run.status, "COMPLETED");
    assert_eq!((run.discrepancies, run.repaired), (5, 0), "{run:?}");
    assert_eq!(
        found(&app, run.id),
        vec![
            f(
                "REFUND_AMOUNT_MISMATCH",
                "WXRF0000000001",
                "RFAMT0000001",
                "OPEN"
            ),
            f(
                "REFUND_MISSING_AT_CHANNEL",
                "WXRF0000000001",
                "RFGONE000001",
                "OPEN"
            ),
            f(
                "REFUND_MISSING_LOCALLY",
                "WXRF0000000001",
                "RFNEW0000001",
                "OPEN"
            ),
            f(
                "REFUND_MISSING_LOCALLY",
                "WXUNKNOWN00001",
                "RFNEW0000002",
                "OPEN"
            ),
            f(
                "REFUND_STATUS_MISMATCH",
                "WXRF0000000001",
                "RFPROC000001",
                "OPEN"
            ),
        ]
    );
    // Refund discrepancies wait for a person: no order, transition or key changed.
    assert_eq!(money_state(&app), before);
    assert_eq!(recon_events(&app, "reconciliation.discrepancy_found"), 5);
    assert_eq!(recon_events(&app, "reconciliation.completed"), 1);

    // The order's app sees the four about its order, in its order's sequence.
    let shop = watch(&mut app, "shop-1", 4).await;
    let mut kinds: Vec<_> = shop
        .iter()
        .map(|e| e.discrepancy.as_ref().unwrap().kind.clone())
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "REFUND_AMOUNT_MISMATCH",
            "REFUND_MISSING_AT_CHANNEL",
            "REFUND_MISSING_LOCALLY",
            "REFUND_STATUS_MISMATCH"
        ]
    );
    for e in &shop {
        assert_eq!(e.app_id, "shop-1");
        assert!(!e.order_id.is_empty() && e.order.is_some() && e.stream_key.is_empty());
        assert_eq!(
            e.reconciliation_run.as_ref().unwrap().id,
            run.id.to_string()
        );
    }
    let mut seqs: Vec<i64> = shop.iter().map(|e| e.order_sequence).collect();
    seqs.dedup();
    assert_eq!(seqs.len(), 4, "one sequence number each: {seqs:?}");
    // The operations app sees the unknown trade's discrepancy, then the run's completion, in the
    // day's stream.
    let ops = watch(&mut app, "ops", 2).await;
    assert_eq!(ops[0].r#type, "reconciliation.discrepancy_found");
    assert_eq!(
        ops[0].discrepancy.as_ref().unwrap().out_refund_no,
        "RFNEW0000002"
    );
    assert_eq!(ops[1].r#type, "reconciliation.completed");
    let done = ops[1].reconciliation_run.as_ref().unwrap();
    assert_eq!((done.status.as_str(), done.discrepancies), ("COMPLETED", 5));
    let key = format!("reconciliation:WECHAT:{}", today());
    for (i, e) in ops.iter().enumerate() {
        assert_eq!(e.app_id, "ops");
        assert!(e.order_id.is_empty() && e.order.is_none());
        assert_eq!(e.stream_key, key);
        assert_eq!(e.order_sequence, i as i64 + 1);
    }

    // Re-running the day: nothing new, no new discrepancy event, one more completion.
    let again = reconcile(&app, &lines).await;
    assert_eq!((again.discrepancies, again.repaired), (0, 0), "{again:?}");
    assert!(found(&app, again.id).is_empty());
    assert_eq!(recon_events(&app, "reconciliation.discrepancy_found"), 5);
    assert_eq!(recon_events(&app, "reconciliation.completed"), 2);
    assert_eq!(money_state(&app), before);
}

/// A statement with two successes for one order (its paid trade and a second trade whose result
/// never arrived): both lines are DUPLICATE, and the second success goes through the results
/// transition, whose duplicate path records the duplicate payment, its automatic refund and the
/// `payment.duplicate_detected` event; the repair is recorded REPAIRED. A re-run repeats none of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_successes_for_one_order_are_a_duplicate_and_the_duplicate_path_refunds_it() {
    let mut app = spawn_app_with(|s| s.refund_pending_grace_ms = Some(3_600_000)).await;
    let order = paid_order(&mut app, "RECON-D-1", "WXDUP000000001", 700).await;
    add_paying_attempt(&app, &order, "WXDUP000000002", 700);
    let lines = [
        pay_line("WXDUP000000001", 700),
        pay_line("WXDUP000000002", 700),
    ];
    let run = reconcile(&app, &lines).await;
    assert_eq!((run.discrepancies, run.repaired), (3, 1), "{run:?}");
    assert_eq!(
        found(&app, run.id),
        vec![
            f("DUPLICATE", "WXDUP000000001", "", "OPEN"),
            f("DUPLICATE", "WXDUP000000002", "", "OPEN"),
            f("MISSING_LOCALLY", "WXDUP000000002", "", "REPAIRED"),
        ]
    );
    let dup = |sql: &str| app.count(sql);
    assert_eq!(dup("SELECT count(*) AS n FROM duplicate_payments"), 1);
    assert_eq!(
        dup(
            "SELECT count(*) AS n FROM refunds WHERE duplicate_payment_id IS NOT NULL \
             AND amount_minor = 700"
        ),
        1
    );
    assert_eq!(
        dup(
            "SELECT count(*) AS n FROM payment_attempts WHERE out_trade_no = 'WXDUP000000002' AND status = 'SUCCEEDED'"
        ),
        1
    );
    assert_eq!(recon_events(&app, "payment.duplicate_detected"), 1);
    assert_eq!(recon_events(&app, "reconciliation.discrepancy_found"), 3);
    // All three are about the order: its app gets them, none goes to operations.
    assert_eq!(
        dup(&format!(
            "SELECT count(*) AS n FROM outbox_events WHERE event_type = \
             'reconciliation.discrepancy_found' AND order_id = '{order}' AND app_id = 'shop-1'"
        )),
        3
    );
    assert_eq!(
        dup(&format!(
            "SELECT count(*) AS n FROM orders WHERE id = '{order}' AND status = 'PAID'"
        )),
        1,
        "a duplicate leaves the order PAID"
    );

    let again = reconcile(&app, &lines).await;
    assert_eq!((again.discrepancies, again.repaired), (0, 0), "{again:?}");
    assert_eq!(dup("SELECT count(*) AS n FROM duplicate_payments"), 1);
    assert_eq!(dup("SELECT count(*) AS n FROM refunds"), 1);
    assert_eq!(recon_events(&app, "reconciliation.discrepancy_found"), 3);
    assert_eq!(recon_events(&app, "reconciliation.completed"), 2);
}

/// The payment kinds the end-to-end test does not make: a lost success repaired through the
/// results transition (order PAID, `order.paid` out), a success the results transition refuses
/// (another currency: STATUS_MISMATCH, nothing moves), an amount mismatch on a trade we know,
/// our success the channel does not list, and a trade we never made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_kinds_are_found_and_only_a_matching_lost_success_is_repaired() {
    let mut app = spawn_app_with(|s| s.refund_pending_grace_ms = Some(3_600_000)).await;
    let lost = paying_order(&mut app, "RECON-P-1", "WXLOST00000001", 500).await;
    let refused = paying_order(&mut app, "RECON-P-2", "WXCUR000000001", 600).await;
    paid_order(&mut app, "RECON-P-3", "WXAMT000000001", 800).await;
    paid_order(&mut app, "RECON-P-4", "WXGONE00000001", 900).await;
    let mut usd = pay_line("WXCUR000000001", 600);
    usd.currency = "USD";
    let lines = [
        pay_line("WXLOST00000001", 500),
        usd,
        pay_line("WXAMT000000001", 801),
        pay_line("WXNEVER0000001", 300),
    ];
    let run = reconcile(&app, &lines).await;
    assert_eq!((run.discrepancies, run.repaired), (5, 1), "{run:?}");
    assert_eq!(
        found(&app, run.id),
        vec![
            f("AMOUNT_MISMATCH", "WXAMT000000001", "", "OPEN"),
            f("MISSING_AT_CHANNEL", "WXGONE00000001", "", "OPEN"),
            f("MISSING_LOCALLY", "WXLOST00000001", "", "REPAIRED"),
            f("MISSING_LOCALLY", "WXNEVER0000001", "", "OPEN"),
            f("STATUS_MISMATCH", "WXCUR000000001", "", "OPEN"),
        ]
    );
    let status = |app: &TestApp, id: &str| {
        app.count(&format!(
            "SELECT count(*) AS n FROM orders WHERE id = '{id}' AND status = 'PAID'"
        ))
    };
    assert_eq!(status(&app, &lost), 1, "the lost success is applied");
    assert_eq!(status(&app, &refused), 0, "a refused one moves nothing");
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM outbox_events WHERE event_type = 'order.paid' AND order_id = '{lost}'"
        )),
        1
    );
    assert_eq!(recon_events(&app, "reconciliation.discrepancy_found"), 5);
    assert_eq!(
        app.count(
            "SELECT count(*) AS n FROM outbox_events WHERE event_type = \
             'reconciliation.discrepancy_found' AND app_id = 'ops' AND order_id IS NULL"
        ),
        1,
        "only the trade we never made goes to operations"
    );
    let again = reconcile(&app, &lines).await;
    assert_eq!((again.discrepancies, again.repaired), (0, 0), "{again:?}");
    assert_eq!(recon_events(&app, "reconciliation.discrepancy_found"), 5);
    assert_eq!(recon_events(&app, "order.paid"), 1);
}
