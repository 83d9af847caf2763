//! Pay against a payd with no adapter configured: the refusals that happen before (or instead of)
//! any channel call. The channel paths run cross-process in `tests/tests`.
use payproto::channel::v1 as cpb;
use payproto::payment::v1 as pb;
use tonic::Code;

use crate::helpers::*;

fn pay_req(order_id: &str, channel: cpb::Channel, method: cpb::PayMethod) -> pb::PayRequest {
    pb::PayRequest {
        order_id: order_id.to_owned(),
        channel: channel as i32,
        method: method as i32,
        payer: Some(pb::Payer {
            payer_id: String::new(),
            client_ip: "203.0.113.7".into(),
        }),
        idempotency_key: String::new(),
    }
}

fn native(order_id: &str) -> pb::PayRequest {
    pay_req(order_id, cpb::Channel::Wechat, cpb::PayMethod::WechatNative)
}

fn attempts(app: &TestApp) -> i64 {
    app.count("SELECT count(*) AS n FROM payment_attempts")
}

#[tokio::test]
async fn pay_with_a_method_of_another_channel_is_refused_naming_the_method_and_changes_nothing() {
    let mut app = spawn_app().await;
    let order = create_order(&mut app, "PAY-VALID-0001", 100).await;
    let before = app.snapshot();
    let err = app
        .client
        .pay(req(pay_req(
            &order.order_id,
            cpb::Channel::Alipay,
            cpb::PayMethod::WechatNative,
        )))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().starts_with("method"), "{}", err.message());

    // JSAPI needs the payer's openid.
    let err = app
        .client
        .pay(req(pay_req(
            &order.order_id,
            cpb::Channel::Wechat,
            cpb::PayMethod::WechatJsapi,
        )))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().starts_with("payer.payer_id"),
        "{}",
        err.message()
    );
    assert_eq!(app.snapshot(), before);
    assert_eq!(attempts(&app), 0);
}

#[tokio::test]
async fn pay_for_an_unknown_order_is_not_found() {
    let mut app = spawn_app().await;
    let err = app
        .client
        .pay(req(native("0190f5d6-8d2a-7c3e-9b1a-2f4e6d8c0a11")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert_eq!(attempts(&app), 0);
}

#[tokio::test]
async fn pay_for_another_apps_order_is_not_found_and_opens_nothing() {
    let mut app = spawn_app().await;
    let order = create_order(&mut app, "PAY-OTHER-0001", 100).await;
    let before = app.snapshot();
    let err = app
        .client
        .pay(req_as("shop-2", native(&order.order_id)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert_eq!(app.snapshot(), before);
    assert_eq!(attempts(&app), 0);
}

#[tokio::test]
async fn pay_for_a_closed_order_is_refused_naming_its_state() {
    let mut app = spawn_app().await;
    let order = create_order(&mut app, "PAY-CLOSED-0001", 100).await;
    app.client
        .close_order(req(pb::CloseOrderRequest {
            order_id: order.order_id.clone(),
            idempotency_key: String::new(),
        }))
        .await
        .unwrap();
    let before = app.snapshot();
    let err = app
        .client
        .pay(req(native(&order.order_id)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("CLOSED"), "{}", err.message());
    assert_eq!(app.snapshot(), before);
    assert_eq!(attempts(&app), 0);
}

#[tokio::test]
async fn pay_through_a_channel_this_server_has_no_adapter_for_is_refused_naming_it() {
    let mut app = spawn_app().await;
    let order = create_order(&mut app, "PAY-NOADAPTER-0001", 100).await;
    let err = app
        .client
        .pay(req(native(&order.order_id)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("WECHAT"), "{}", err.message());
    // No parameters were handed out: the order is still PENDING.
    let got = app
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
    assert_eq!(got.status, pb::OrderStatus::Pending as i32);
}

#[tokio::test]
async fn a_pay_reusing_another_calls_idempotency_key_is_already_exists_and_opens_nothing() {
    let mut app = spawn_app().await;
    let mut first = create("PAY-IDEM-0001", 100);
    first.idempotency_key = "shared-key-1".into();
    let order = app
        .client
        .create_order(req(first))
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    let before = app.snapshot();
    let mut pay = native(&order.order_id);
    pay.idempotency_key = "shared-key-1".into();
    let err = app.client.pay(req(pay)).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    assert!(
        err.message().starts_with("idempotency_key"),
        "{}",
        err.message()
    );
    assert_eq!(app.snapshot(), before);
    assert_eq!(attempts(&app), 0);
}

/// A stored value the code does not know fails once, when its row loads (the rows are typed):
/// the call is INTERNAL with an opaque message, and nothing changes.
#[tokio::test]
async fn an_attempt_row_with_an_unknown_method_fails_when_it_loads_and_changes_nothing() {
    use diesel::RunQueryDsl;
    let mut app = spawn_app().await;
    let order = create_order(&mut app, "PAY-CORRUPT-0001", 100).await;
    diesel::sql_query(format!(
        "INSERT INTO payment_attempts (id, order_id, out_trade_no, channel, method, amount_minor, currency, status, payer_digest, pay_deadline) \
         VALUES (gen_random_uuid(), '{}', 'P9000000001', 'WECHAT', 'WECHAT_TELEPATHY', 100, 'CNY', 'PAYING', '\\x00', now() + interval '1 hour')",
        order.order_id
    ))
    .execute(&mut app.conn())
    .unwrap();
    let before = app.snapshot();
    let err = app
        .client
        .close_order(req(pb::CloseOrderRequest {
            order_id: order.order_id.clone(),
            idempotency_key: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Internal, "{err:?}");
    assert!(
        err.message().starts_with("internal error (reference "),
        "{}",
        err.message()
    );
    assert_eq!(app.snapshot(), before);
}
