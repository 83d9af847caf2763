//! Refunds against real Postgres with an unreachable adapter: the reservation that can never
//! exceed what was paid, the one refund transition fed by ChannelEvents.ReportRefund (amount
//! checked, repeats recorded once, contradictions flagged), and the query job flagging a refund
//! whose outcome stays unknown.
use diesel::RunQueryDsl;
use payproto::channel::v1 as cpb;
use payproto::channel::v1::channel_events_service_client::ChannelEventsServiceClient;
use payproto::payment::v1 as pb;
use tonic::Code;

use crate::helpers::*;

/// A server whose WeChat adapter cannot be reached: every refund call's outcome is unknown, so
/// refunds stay PROCESSING until an event or a query says otherwise.
pub(crate) async fn app_with_dead_adapter(delays: &str) -> TestApp {
    let delays = delays.to_owned();
    spawn_app_with(move |s| {
        s.channel_wechat_endpoint = Some("http://127.0.0.1:9".into());
        s.channel_wechat_token = Some(payd::config::Secret::new("test-payd-to-wechat-token"));
        s.channel_timeout_ms = 300;
        s.refund_query_delays_ms = delays;
        s.refund_job_tick_ms = 20;
        // Longer than the creating call can take here (an unreachable adapter, a loaded
        // machine): a PENDING refund whose creator is still waiting is not the job's yet.
        s.refund_pending_grace_ms = Some(10_000);
    })
    .await
}

/// A PAID order of `amount`, paid through a WeChat attempt `out_trade_no` (as ReportPayment
/// leaves it).
pub(crate) async fn paid_order(
    app: &mut TestApp,
    no: &str,
    out_trade_no: &str,
    amount: i64,
) -> pb::Order {
    let order = create_order(app, no, amount).await;
    diesel::sql_query(format!(
        "INSERT INTO payment_attempts (id, order_id, out_trade_no, channel, method, amount_minor, currency, status, payer_digest, pay_deadline) \
         VALUES (gen_random_uuid(), '{}', '{out_trade_no}', 'WECHAT', 'WECHAT_NATIVE', {amount}, 'CNY', 'PAYING', '\\x00', now() + interval '1 hour')",
        order.order_id,
    ))
    .execute(&mut app.conn())
    .unwrap();
    diesel::sql_query(format!(
        "UPDATE orders SET status = 'PAYING', version = version + 1, transition_reason = 'test setup' WHERE id = '{}'",
        order.order_id
    ))
    .execute(&mut app.conn())
    .unwrap();
    let mut events = events_client(app, WECHAT_TOKEN).await;
    events
        .report_payment(tonic::Request::new(cpb::ReportPaymentRequest {
            channel: cpb::Channel::Wechat as i32,
            channel_event_id: format!("pay-{out_trade_no}"),
            result: Some(cpb::PaymentResult {
                out_trade_no: out_trade_no.into(),
                state: cpb::TradeState::Succeeded as i32,
                channel_trade_no: format!("4200{out_trade_no}"),
                paid: Some(cpb::Money {
                    amount_minor: amount,
                    currency: "CNY".into(),
                }),
                paid_at: None,
                channel_status: "SUCCESS".into(),
            }),
        }))
        .await
        .unwrap();
    order
}

pub(crate) type Events = ChannelEventsServiceClient<
    tonic::service::interceptor::InterceptedService<
        tonic::transport::Channel,
        Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send>,
    >,
>;

pub(crate) async fn events_client(app: &TestApp, token: &'static str) -> Events {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", app.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let auth: tonic::metadata::MetadataValue<_> = format!("Bearer {token}").parse().unwrap();
    ChannelEventsServiceClient::with_interceptor(
        ch,
        Box::new(move |mut r: tonic::Request<()>| {
            r.metadata_mut().insert("authorization", auth.clone());
            Ok(r)
        }) as Box<dyn FnMut(_) -> _ + Send>,
    )
}

pub(crate) fn refund_req(order_id: &str, amount: i64, no: &str) -> pb::CreateRefundRequest {
    pb::CreateRefundRequest {
        order_id: order_id.into(),
        amount: Some(pb::Money {
            amount_minor: amount,
            currency: "CNY".into(),
        }),
        reason: "returned".into(),
        refund_request_no: no.into(),
        operator: "alice".into(),
    }
}

fn refund_result(
    out_refund_no: &str,
    state: cpb::RefundState,
    amount: Option<i64>,
) -> cpb::RefundResult {
    cpb::RefundResult {
        out_refund_no: out_refund_no.into(),
        state: state as i32,
        channel_refund_no: format!("5030{out_refund_no}"),
        refunded: amount.map(|a| cpb::Money {
            amount_minor: a,
            currency: "CNY".into(),
        }),
        succeeded_at: None,
        channel_status: format!("{state:?}"),
    }
}

async fn report_refund(
    events: &mut Events,
    event_id: &str,
    result: cpb::RefundResult,
) -> Result<bool, tonic::Status> {
    events
        .report_refund(tonic::Request::new(cpb::ReportRefundRequest {
            channel: cpb::Channel::Wechat as i32,
            channel_event_id: event_id.into(),
            out_trade_no: String::new(),
            result: Some(result),
        }))
        .await
        .map(|r| r.into_inner().first_time)
}

async fn get(app: &mut TestApp, no: &str) -> pb::Refund {
    app.client
        .get_refund(req(pb::GetRefundRequest {
            lookup: Some(pb::get_refund_request::Lookup::RefundRequestNo(no.into())),
        }))
        .await
        .unwrap()
        .into_inner()
        .refund
        .unwrap()
}

/// The invariant is Postgres's: 50 reservations of a tenth of the amount, each on its own
/// connection and thread, released at once — without any order lock or Redis — and exactly 10
/// pass; the CHECK holds the total at what was paid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_racing_reservations_take_exactly_what_was_paid() {
    let mut app = app_with_dead_adapter("60000").await;
    let order = paid_order(&mut app, "RES-RACE-01", "T000RESRACE01", 10_000).await;
    let attempt: uuid::Uuid = {
        #[derive(diesel::QueryableByName)]
        struct A {
            #[diesel(sql_type = diesel::sql_types::Uuid)]
            id: uuid::Uuid,
        }
        diesel::sql_query(format!(
            "SELECT id FROM payment_attempts WHERE order_id = '{}'",
            order.order_id
        ))
        .get_result::<A>(&mut app.conn())
        .unwrap()
        .id
    };
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(50));
    let handles: Vec<_> = (0..50)
        .map(|_| {
            let mut conn = app.conn();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                payd::storage::refunds::reserve(&mut conn, attempt, 1_000).unwrap()
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 10);
    assert!(results.iter().filter_map(|r| r.err()).all(|left| left == 0));
    assert_eq!(
        app.count(&format!(
            "SELECT refund_reserved_minor AS n FROM payment_attempts WHERE id = '{attempt}'"
        )),
        10_000
    );
    // Even a write that skips `reserve` cannot go past the paid amount.
    let over = diesel::sql_query(format!(
        "UPDATE payment_attempts SET refund_reserved_minor = 10001 WHERE id = '{attempt}'"
    ))
    .execute(&mut app.conn());
    assert!(
        over.is_err(),
        "the CHECK let the reserved total exceed what was paid"
    );
}

/// ReportRefund goes through the one transition: a success with another amount or none is not
/// believed, the right one settles the refund and the order, a repeat is recorded once, and a
/// later contradiction changes nothing but flags the refund for a person.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refund_events_are_checked_recorded_once_and_contradictions_flagged() {
    let mut app = app_with_dead_adapter("60000").await;
    let order = paid_order(&mut app, "RES-EVT-01", "T000RESEVT001", 10_000).await;
    let r = app
        .client
        .create_refund(req(refund_req(&order.order_id, 4_000, "RQ-EVT-0001")))
        .await
        .unwrap()
        .into_inner()
        .refund
        .unwrap();
    // The adapter is unreachable: nothing is known, nothing is guessed.
    assert_eq!(r.status, pb::RefundStatus::Processing as i32);
    assert_eq!(
        (r.requested_by.as_str(), r.operator.as_str()),
        ("shop-1", "alice")
    );
    let no = r.out_refund_no.clone();
    let mut events = events_client(&app, WECHAT_TOKEN).await;

    // Another amount: recorded, not believed.
    assert!(
        report_refund(
            &mut events,
            "rf-1",
            refund_result(&no, cpb::RefundState::Succeeded, Some(4_001))
        )
        .await
        .unwrap()
    );
    assert_eq!(
        get(&mut app, "RQ-EVT-0001").await.status,
        pb::RefundStatus::Processing as i32
    );
    // No amount at all: not believed either (a query confirms it).
    assert!(
        report_refund(
            &mut events,
            "rf-2",
            refund_result(&no, cpb::RefundState::Succeeded, None)
        )
        .await
        .unwrap()
    );
    assert_eq!(
        get(&mut app, "RQ-EVT-0001").await.status,
        pb::RefundStatus::Processing as i32
    );
    // The real thing.
    assert!(
        report_refund(
            &mut events,
            "rf-3",
            refund_result(&no, cpb::RefundState::Succeeded, Some(4_000))
        )
        .await
        .unwrap()
    );
    let settled = get(&mut app, "RQ-EVT-0001").await;
    assert_eq!(settled.status, pb::RefundStatus::Succeeded as i32);
    assert_eq!(settled.channel_refund_no, format!("5030{no}"));
    let o = app
        .client
        .get_order(req(pb::GetOrderRequest {
            lookup: Some(pb::get_order_request::Lookup::OrderId(
                order.order_id.clone(),
            )),
        }))
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_eq!(o.status, pb::OrderStatus::PartiallyRefunded as i32);
    assert_eq!(o.refunded_minor, 4_000);
    // A repeat is acknowledged and changes nothing.
    let version = settled.version;
    assert!(
        !report_refund(
            &mut events,
            "rf-3",
            refund_result(&no, cpb::RefundState::Succeeded, Some(4_000))
        )
        .await
        .unwrap()
    );
    assert_eq!(get(&mut app, "RQ-EVT-0001").await.version, version);
    assert_eq!(
        app.count("SELECT count(*) AS n FROM channel_events WHERE kind = 'REFUND'"),
        3
    );
    // A "failed" after the success: a contradiction for a person, the money state untouched.
    assert!(
        report_refund(
            &mut events,
            "rf-4",
            refund_result(&no, cpb::RefundState::Failed, None)
        )
        .await
        .unwrap()
    );
    let after = get(&mut app, "RQ-EVT-0001").await;
    assert_eq!(after.status, pb::RefundStatus::Succeeded as i32);
    assert!(after.needs_attention);
    assert_eq!(
        app.count(&format!(
            "SELECT refunded_minor AS n FROM payment_attempts WHERE order_id = '{}'",
            order.order_id
        )),
        4_000
    );
    // An unknown refund is recorded and acknowledged; another channel's adapter may not report.
    assert!(
        report_refund(
            &mut events,
            "rf-5",
            refund_result("P000000000NOPE", cpb::RefundState::Succeeded, Some(1))
        )
        .await
        .unwrap()
    );
    let mut alipay = events_client(&app, ALIPAY_TOKEN).await;
    let e = alipay
        .report_refund(tonic::Request::new(cpb::ReportRefundRequest {
            channel: cpb::Channel::Alipay as i32,
            channel_event_id: "rf-6".into(),
            out_trade_no: String::new(),
            result: Some(refund_result(&no, cpb::RefundState::Failed, None)),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let m = app.metrics_text().await;
    assert!(m.contains("payd_channel_events_total{channel=\"WECHAT\",kind=\"REFUND\",outcome=\"CONTRADICTION\"} 1"), "{m}");
    assert!(
        m.contains("payment_refunds_total{channel=\"WECHAT\",outcome=\"succeeded\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("payment_refunded_minor_total{channel=\"WECHAT\",currency=\"CNY\"} 4000"),
        "{m}"
    );
}

/// A failed refund releases its amount: the same amount can be refunded again under a new
/// number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_refund_releases_its_amount() {
    let mut app = app_with_dead_adapter("60000").await;
    let order = paid_order(&mut app, "RES-FAIL-01", "T000RESFAIL01", 5_000).await;
    let r = app
        .client
        .create_refund(req(refund_req(&order.order_id, 5_000, "RQ-FAIL-0001")))
        .await
        .unwrap()
        .into_inner()
        .refund
        .unwrap();
    let e = app
        .client
        .create_refund(req(refund_req(&order.order_id, 1, "RQ-FAIL-0002")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message().contains("remains refundable: 0"),
        "{}",
        e.message()
    );
    let mut events = events_client(&app, WECHAT_TOKEN).await;
    report_refund(
        &mut events,
        "rf-closed",
        refund_result(&r.out_refund_no, cpb::RefundState::Failed, None),
    )
    .await
    .unwrap();
    let failed = get(&mut app, "RQ-FAIL-0001").await;
    assert_eq!(failed.status, pb::RefundStatus::Failed as i32);
    assert!(!failed.failure_reason.is_empty());
    app.client
        .create_refund(req(refund_req(&order.order_id, 5_000, "RQ-FAIL-0003")))
        .await
        .unwrap();
    // The history says who did what.
    assert_eq!(
        app.count(
            "SELECT count(*) AS n FROM refund_transitions t JOIN refunds r ON r.id = t.refund_id \
             WHERE r.refund_request_no = 'RQ-FAIL-0001' AND t.actor IN ('app:shop-1 operator:alice', 'channel:answer', 'channel:event:rf-closed')"
        ),
        3
    );
}

/// A refund whose channel never answers is queried on its schedule and, past the last query,
/// flagged for a person (metric and gauge), never guessed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_unknown_past_the_last_query_is_flagged_for_a_person() {
    let mut app = app_with_dead_adapter("50,50").await;
    let order = paid_order(&mut app, "RES-FLAG-01", "T000RESFLAG01", 2_000).await;
    app.client
        .create_refund(req(refund_req(&order.order_id, 2_000, "RQ-FLAG-0001")))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let r = get(&mut app, "RQ-FLAG-0001").await;
        if r.needs_attention {
            assert_eq!(r.status, pb::RefundStatus::Processing as i32);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never flagged: {r:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        app.count(
            "SELECT queries::bigint AS n FROM refunds WHERE refund_request_no = 'RQ-FLAG-0001'"
        ),
        2
    );
    let m = app.metrics_text().await;
    assert!(
        m.contains("payment_refunds_flagged_total{channel=\"WECHAT\",reason=\"unknown_after_last_query\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("payment_refund_queries_total{channel=\"WECHAT\",result=\"UNKNOWN\"} 2"),
        "{m}"
    );

    // The gauges come from the job's periodic aggregate.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let m = app.metrics_text().await;
        if m.contains("payment_refunds_needing_attention{channel=\"WECHAT\"} 1") {
            assert!(
                m.contains("payment_refunds_unsettled{channel=\"WECHAT\"} 1"),
                "{m}"
            );
            assert!(
                m.contains("payment_refunds_oldest_unsettled_age_seconds{channel=\"WECHAT\"}"),
                "{m}"
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{m}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The query job's "outcome unknown after the last query" races a callback: the job read the
/// refund PROCESSING, its query of the (dead) adapter told it nothing, and before it flags the
/// refund for a person the channel's callback settles it. The flag must then change nothing: a
/// settled refund is not "unknown", and its version must not move under the settling writer.
/// (Seen as a flaky `refund_events_are_checked_…`: its version moved after the success.)
#[tokio::test]
async fn the_job_does_not_flag_a_refund_that_a_callback_settled_meanwhile() {
    let mut app = app_with_dead_adapter("60000").await;
    let order = paid_order(&mut app, "RES-RACE-01", "T000RESRACE01", 10_000).await;
    let (no, id) = processing_refund(&mut app, &order.order_id, 4_000, "RQ-RACE-001").await;
    // The callback settles it between the job's read and its flag.
    let mut events = events_client(&app, WECHAT_TOKEN).await;
    assert!(
        report_refund(
            &mut events,
            "race-1",
            refund_result(&no, cpb::RefundState::Succeeded, Some(4_000))
        )
        .await
        .unwrap()
    );
    let settled = get(&mut app, "RQ-RACE-001").await;
    assert_eq!(settled.status, pb::RefundStatus::Succeeded as i32);
    // The job's flag, as it runs after its last query.
    let flagged = payd::storage::refunds::flag_for_attention(
        &mut app.conn(),
        id,
        "outcome unknown after the last scheduled query",
        payd::storage::refunds::FlagIf::Unsettled,
    )
    .unwrap();
    assert!(!flagged, "a settled refund was flagged as unknown");
    let after = get(&mut app, "RQ-RACE-001").await;
    assert_eq!(
        (after.version, after.needs_attention),
        (settled.version, false)
    );
    // While it was unsettled, the same flag applies.
    let order = paid_order(&mut app, "RES-RACE-02", "T000RESRACE02", 10_000).await;
    let (_, id) = processing_refund(&mut app, &order.order_id, 1_000, "RQ-RACE-002").await;
    assert!(
        payd::storage::refunds::flag_for_attention(
            &mut app.conn(),
            id,
            "outcome unknown after the last scheduled query",
            payd::storage::refunds::FlagIf::Unsettled,
        )
        .unwrap()
    );
    assert!(get(&mut app, "RQ-RACE-002").await.needs_attention);
}

/// A refund of `order` left PROCESSING by the dead adapter: its `out_refund_no` and row id.
async fn processing_refund(
    app: &mut TestApp,
    order: &str,
    amount: i64,
    request_no: &str,
) -> (String, uuid::Uuid) {
    let r = app
        .client
        .create_refund(req(refund_req(order, amount, request_no)))
        .await
        .unwrap()
        .into_inner()
        .refund
        .unwrap();
    assert_eq!(r.status, pb::RefundStatus::Processing as i32);
    let id = payd::storage::refunds::find_by_out_refund_no(&mut app.conn(), &r.out_refund_no)
        .unwrap()
        .unwrap()
        .id;
    (r.out_refund_no, id)
}
