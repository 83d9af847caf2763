//! ChannelEvents against real Postgres: each reported result is recorded once and applied through
//! the state machines in the same transaction, with amount and currency checked.
use diesel::RunQueryDsl;
use payproto::channel::v1 as cpb;
use payproto::channel::v1::channel_events_service_client::ChannelEventsServiceClient;
use payproto::payment::v1 as pb;
use tonic::Code;

use crate::helpers::*;

/// Arranges an open attempt for `order` directly in the database (as Pay would leave it).
fn open_attempt(app: &TestApp, order: &pb::Order, out_trade_no: &str, status: &str) {
    diesel::sql_query(format!(
        "INSERT INTO payment_attempts (id, order_id, out_trade_no, channel, method, amount_minor, currency, status, payer_digest, pay_deadline) \
         VALUES (gen_random_uuid(), '{}', '{out_trade_no}', 'WECHAT', 'WECHAT_NATIVE', {}, 'CNY', '{status}', '\\x00', now() + interval '1 hour')",
        order.order_id,
        order.amount.as_ref().unwrap().amount_minor
    ))
    .execute(&mut app.conn())
    .unwrap();
    diesel::sql_query(format!(
        "UPDATE orders SET status = 'PAYING', version = version + 1, transition_reason = 'test setup' WHERE id = '{}'",
        order.order_id
    ))
    .execute(&mut app.conn())
    .unwrap();
}

fn paid(out_trade_no: &str, amount: i64, currency: &str) -> cpb::PaymentResult {
    cpb::PaymentResult {
        out_trade_no: out_trade_no.into(),
        state: cpb::TradeState::Succeeded as i32,
        channel_trade_no: format!("42000{out_trade_no}"),
        paid: Some(cpb::Money {
            amount_minor: amount,
            currency: currency.into(),
        }),
        paid_at: None,
        channel_status: "SUCCESS".into(),
    }
}

async fn report(
    app: &TestApp,
    channel: cpb::Channel,
    event_id: &str,
    result: cpb::PaymentResult,
) -> Result<bool, tonic::Status> {
    let token = match channel {
        cpb::Channel::Alipay => ALIPAY_TOKEN,
        _ => WECHAT_TOKEN,
    };
    report_with(app, Some(token), channel, event_id, result).await
}

async fn report_with(
    app: &TestApp,
    token: Option<&str>,
    channel: cpb::Channel,
    event_id: &str,
    result: cpb::PaymentResult,
) -> Result<bool, tonic::Status> {
    let mut c = ChannelEventsServiceClient::connect(format!("http://{}", app.grpc_addr))
        .await
        .unwrap();
    let mut r = tonic::Request::new(cpb::ReportPaymentRequest {
        channel: channel as i32,
        channel_event_id: event_id.into(),
        result: Some(result),
    });
    if let Some(t) = token {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    c.report_payment(r).await.map(|r| r.into_inner().first_time)
}

async fn status_of(app: &mut TestApp, id: &str) -> i32 {
    app.client
        .get_order(req(pb::GetOrderRequest {
            lookup: Some(pb::get_order_request::Lookup::OrderId(id.into())),
        }))
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap()
        .status
}

#[tokio::test]
async fn a_reported_success_pays_the_order_once_and_a_repeat_changes_nothing() {
    let mut app = spawn_app().await;
    let order = create_order(&mut app, "EVENT-0001", 8888).await;
    open_attempt(&app, &order, "P1000000001", "PAYING");

    assert!(
        report(
            &app,
            cpb::Channel::Wechat,
            "EV-1",
            paid("P1000000001", 8888, "CNY")
        )
        .await
        .unwrap()
    );
    assert_eq!(
        status_of(&mut app, &order.order_id).await,
        pb::OrderStatus::Paid as i32
    );
    let before = app.snapshot();
    let transitions = app.count("SELECT count(*) AS n FROM order_transitions");
    // The same callback again, twenty times: acknowledged, nothing written.
    for _ in 0..20 {
        assert!(
            !report(
                &app,
                cpb::Channel::Wechat,
                "EV-1",
                paid("P1000000001", 8888, "CNY")
            )
            .await
            .unwrap()
        );
    }
    assert_eq!(app.snapshot(), before);
    assert_eq!(
        app.count("SELECT count(*) AS n FROM order_transitions"),
        transitions
    );
    assert_eq!(app.count("SELECT count(*) AS n FROM channel_events"), 1);
    assert_eq!(
        app.count("SELECT count(*) AS n FROM orders WHERE paid_minor = 8888"),
        1
    );
}

#[tokio::test]
async fn a_wrong_amount_or_currency_moves_nothing_and_is_counted() {
    let mut app = spawn_app().await;
    let order = create_order(&mut app, "EVENT-0002", 500).await;
    open_attempt(&app, &order, "P1000000002", "PAYING");
    report(
        &app,
        cpb::Channel::Wechat,
        "EV-2a",
        paid("P1000000002", 499, "CNY"),
    )
    .await
    .unwrap();
    report(
        &app,
        cpb::Channel::Wechat,
        "EV-2b",
        paid("P1000000002", 500, "USD"),
    )
    .await
    .unwrap();
    assert_eq!(
        status_of(&mut app, &order.order_id).await,
        pb::OrderStatus::Paying as i32
    );
    assert_eq!(
        app.count("SELECT count(*) AS n FROM channel_events WHERE outcome = 'AMOUNT_MISMATCH'"),
        2
    );
    let m = app.metrics_text().await;
    assert!(
        m.contains("payd_channel_amount_mismatches_total{channel=\"WECHAT\"} 2"),
        "{m}"
    );
}

#[tokio::test]
async fn a_second_successful_attempt_is_recorded_as_a_duplicate_payment() {
    let mut app = spawn_app().await;
    let order = create_order(&mut app, "EVENT-0003", 300).await;
    open_attempt(&app, &order, "P1000000003", "PAYING");
    report(
        &app,
        cpb::Channel::Wechat,
        "EV-3a",
        paid("P1000000003", 300, "CNY"),
    )
    .await
    .unwrap();
    // An older attempt, closed on our side, that the payer paid anyway.
    diesel::sql_query(format!(
        "INSERT INTO payment_attempts (id, order_id, out_trade_no, channel, method, amount_minor, currency, status, payer_digest, pay_deadline) \
         VALUES (gen_random_uuid(), '{}', 'P1000000004', 'WECHAT', 'WECHAT_NATIVE', 300, 'CNY', 'CLOSED', '\\x00', now())",
        order.order_id
    ))
    .execute(&mut app.conn())
    .unwrap();
    report(
        &app,
        cpb::Channel::Wechat,
        "EV-3b",
        paid("P1000000004", 300, "CNY"),
    )
    .await
    .unwrap();
    assert_eq!(
        status_of(&mut app, &order.order_id).await,
        pb::OrderStatus::Paid as i32
    );
    assert_eq!(app.count("SELECT count(*) AS n FROM duplicate_payments"), 1);
    let m = app.metrics_text().await;
    assert!(
        m.contains("payment_duplicate_payments_total{channel=\"WECHAT\"} 1"),
        "{m}"
    );
}

#[tokio::test]
async fn a_late_success_on_a_closed_order_still_counts() {
    let mut app = spawn_app().await;
    let order = create_order(&mut app, "EVENT-0005", 100).await;
    open_attempt(&app, &order, "P1000000005", "CLOSED");
    diesel::sql_query(format!(
        "UPDATE orders SET status = 'CLOSED' WHERE id = '{}'",
        order.order_id
    ))
    .execute(&mut app.conn())
    .unwrap();
    report(
        &app,
        cpb::Channel::Wechat,
        "EV-5",
        paid("P1000000005", 100, "CNY"),
    )
    .await
    .unwrap();
    assert_eq!(
        status_of(&mut app, &order.order_id).await,
        pb::OrderStatus::Paid as i32
    );
}

#[tokio::test]
async fn a_failed_attempt_returns_the_order_to_pending() {
    let mut app = spawn_app().await;
    let order = create_order(&mut app, "EVENT-0006", 100).await;
    open_attempt(&app, &order, "P1000000006", "PAYING");
    let mut r = paid("P1000000006", 100, "CNY");
    r.state = cpb::TradeState::Failed as i32;
    r.paid = None;
    report(&app, cpb::Channel::Wechat, "EV-6", r).await.unwrap();
    assert_eq!(
        status_of(&mut app, &order.order_id).await,
        pb::OrderStatus::Pending as i32
    );
    assert_eq!(
        app.count("SELECT count(*) AS n FROM payment_attempts WHERE status = 'FAILED'"),
        1
    );
}

#[tokio::test]
async fn an_adapter_cannot_report_another_channels_attempt_or_garbage() {
    let mut app = spawn_app().await;
    let order = create_order(&mut app, "EVENT-0007", 100).await;
    open_attempt(&app, &order, "P1000000007", "PAYING");
    let before = app.snapshot();
    let err = report(
        &app,
        cpb::Channel::Alipay,
        "EV-7",
        paid("P1000000007", 100, "CNY"),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    // Nor may the Alipay adapter report as WeChat.
    let err = report_with(
        &app,
        Some(ALIPAY_TOKEN),
        cpb::Channel::Wechat,
        "EV-7",
        paid("P1000000007", 100, "CNY"),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    // Without a token, or with a forged one, nobody may report.
    for token in [None, Some("test-wechat-adapter-tokeX")] {
        let err = report_with(
            &app,
            token,
            cpb::Channel::Wechat,
            "EV-7",
            paid("P1000000007", 100, "CNY"),
        )
        .await
        .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
    }
    let err = report(
        &app,
        cpb::Channel::Unspecified,
        "EV-7",
        paid("P1000000007", 100, "CNY"),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = report(
        &app,
        cpb::Channel::Wechat,
        "",
        paid("P1000000007", 100, "CNY"),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let mut no_amount = paid("P1000000007", 100, "CNY");
    no_amount.paid = None;
    let err = report(&app, cpb::Channel::Wechat, "EV-7", no_amount)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(app.snapshot(), before);
    assert_eq!(app.count("SELECT count(*) AS n FROM channel_events"), 0);
}

#[tokio::test]
async fn concurrent_deliveries_of_one_event_apply_it_once() {
    let mut app = spawn_app().await;
    let order = create_order(&mut app, "EVENT-0008", 100).await;
    open_attempt(&app, &order, "P1000000008", "PAYING");
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let addr = app.grpc_addr;
        tasks.push(tokio::spawn(async move {
            let mut c = ChannelEventsServiceClient::connect(format!("http://{addr}"))
                .await
                .unwrap();
            let mut r = tonic::Request::new(cpb::ReportPaymentRequest {
                channel: cpb::Channel::Wechat as i32,
                channel_event_id: "EV-8".into(),
                result: Some(paid("P1000000008", 100, "CNY")),
            });
            r.metadata_mut().insert(
                "authorization",
                format!("Bearer {WECHAT_TOKEN}").parse().unwrap(),
            );
            c.report_payment(r).await.map(|r| r.into_inner().first_time)
        }));
    }
    let mut firsts = 0;
    for t in tasks {
        if t.await.unwrap().unwrap() {
            firsts += 1;
        }
    }
    assert_eq!(firsts, 1);
    assert_eq!(
        status_of(&mut app, &order.order_id).await,
        pb::OrderStatus::Paid as i32
    );
    assert_eq!(app.count("SELECT count(*) AS n FROM channel_events"), 1);
    assert_eq!(
        app.count(&format!("SELECT count(*) AS n FROM order_transitions WHERE order_id = '{}' AND to_status = 'PAID'", order.order_id)),
        1
    );
}

/// A success is applied in one statement guarded by what was read (`storage::steps`). When the
/// order changes between that read and the write, the statement must write nothing and the
/// transaction must apply the result to the order as it now is. Replayed: another transaction
/// holds the order's row (as the expiry job would, closing it), the report reads the order as
/// PAYING and waits on the row, the holder closes the order and commits. The success then
/// pays the closed order (a late payment), through the transaction, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_success_whose_order_changed_after_it_was_read_is_applied_by_the_transaction() {
    let mut app = spawn_app().await;
    let order = create_order(&mut app, "EVENT-STALE", 8888).await;
    open_attempt(&app, &order, "P1000000077", "PAYING");
    let mut holder = app.conn();
    diesel::sql_query("BEGIN").execute(&mut holder).unwrap();
    diesel::sql_query(format!(
        "SELECT id FROM orders WHERE id = '{}' FOR UPDATE",
        order.order_id
    ))
    .execute(&mut holder)
    .unwrap();
    let id = order.order_id.clone();
    let mut probe = app.conn();
    let closer = tokio::task::spawn_blocking(move || {
        #[derive(diesel::QueryableByName)]
        struct N {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let waiting: N = diesel::sql_query(
                "SELECT count(*) AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
                 AND datname = current_database()",
            )
            .get_result(&mut probe)
            .unwrap();
            if waiting.n > 0 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the report never waited"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        diesel::sql_query(format!(
            "UPDATE orders SET status = 'CLOSED', version = version + 1, closed_at = now(), \
             updated_at = now(), transition_reason = 'expired' WHERE id = '{id}'"
        ))
        .execute(&mut holder)
        .unwrap();
        diesel::sql_query("COMMIT").execute(&mut holder).unwrap();
    });
    let first = report(
        &app,
        cpb::Channel::Wechat,
        "EV-STALE",
        paid("P1000000077", 8888, "CNY"),
    )
    .await
    .unwrap();
    closer.await.unwrap();
    assert!(first);
    assert_eq!(
        status_of(&mut app, &order.order_id).await,
        pb::OrderStatus::Paid as i32
    );
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM order_transitions WHERE order_id = '{}' \
             AND from_status = 'CLOSED' AND to_status = 'PAID' \
             AND reason = 'late payment on a closed order'",
            order.order_id
        )),
        1
    );
    assert_eq!(
        app.count("SELECT count(*) AS n FROM outbox_events WHERE event_type = 'order.paid'"),
        1
    );
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains(
            "payd_single_statement_writes_total{outcome=\"refused\",step=\"payment_result\"} 1"
        ),
        "{metrics}"
    );
    assert!(!metrics.contains("outcome=\"committed\",step=\"payment_result\""));
}
