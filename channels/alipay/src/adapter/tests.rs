//! Notifications built here with freshly generated keys: the adapter accepts a correctly signed
//! one and refuses each way of breaking it with the matching reason. (Alipay notifications carry
//! no key id and no signed timestamp, so there is no wrong-serial or stale case to test.)
use std::collections::BTreeMap;
use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use channel_kit::settings::Secret;
use rsa::RsaPrivateKey;
use rsa::pkcs1v15::SigningKey;
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use rsa::signature::{SignatureEncoding, Signer};
use sha2::Sha256;

use super::*;
use crate::signature::notify_signing_content;

const APP_ID: &str = "2021000000000001";

struct Keys {
    app: RsaPrivateKey,
    alipay: RsaPrivateKey,
    stranger: RsaPrivateKey,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let mut rng = rsa::rand_core::OsRng;
        Keys {
            app: RsaPrivateKey::new(&mut rng, 2048).unwrap(),
            alipay: RsaPrivateKey::new(&mut rng, 2048).unwrap(),
            stranger: RsaPrivateKey::new(&mut rng, 2048).unwrap(),
        }
    })
}

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_704_081_605, 0).unwrap()
}

fn adapter() -> AlipayAdapter {
    let k = keys();
    let settings = AlipaySettings {
        gateway: "http://127.0.0.1:1/gateway.do".into(),
        app_id: APP_ID.into(),
        app_private_key: Secret::new(k.app.to_pkcs8_pem(LineEnding::LF).unwrap().to_string()),
        alipay_public_key: k
            .alipay
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap(),
        notify_url: "http://127.0.0.1:8082/notify/payment".into(),
        return_url: None,
    };
    let keys = AlipayKeys::load(&settings).unwrap();
    AlipayAdapter::new(&settings, keys, reqwest::Client::new(), now)
}

fn params(app_id: &str) -> BTreeMap<String, String> {
    [
        ("app_id", app_id),
        ("auth_app_id", app_id),
        ("buyer_id", "2088722003899169"),
        ("charset", "utf-8"),
        (
            "fund_bill_list",
            r#"[{"amount":"88.88","fundChannel":"ALIPAYACCOUNT"}]"#,
        ),
        ("gmt_create", "2024-01-01 11:59:50"),
        ("gmt_payment", "2024-01-01 12:00:00"),
        ("notify_id", "2024010101222162644199160501632046"),
        ("notify_time", "2024-01-01 12:00:05"),
        ("notify_type", "trade_status_sync"),
        ("out_trade_no", "T20240101000001"),
        ("subject", "flat white + cake"),
        ("total_amount", "88.88"),
        ("trade_no", "2024010122001499160501589436"),
        ("trade_status", "TRADE_SUCCESS"),
        ("version", "1.0"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

fn callback(mut params: BTreeMap<String, String>, signer: &RsaPrivateKey) -> Callback {
    let content = notify_signing_content(&params);
    let sign = SigningKey::<Sha256>::new(signer.clone()).sign(content.as_bytes());
    params.insert("sign".into(), BASE64.encode(sign.to_bytes()));
    params.insert("sign_type".into(), "RSA2".into());
    Callback {
        method: http::Method::POST,
        target: "/notify/payment".into(),
        headers: http::HeaderMap::new(),
        body: wire::encode_form(&params).into_bytes().into(),
    }
}

fn reason(result: Result<Notification, Rejection>) -> RejectReason {
    result.unwrap_err().reason
}

#[tokio::test]
async fn a_signed_payment_notification_is_accepted_with_its_notify_id_and_amount_in_fen() {
    let cb = callback(params(APP_ID), &keys().alipay);
    let Notification::Payment { event_id, result } = adapter().verify_callback(&cb).await.unwrap()
    else {
        panic!("expected a payment");
    };
    assert_eq!(event_id, "2024010101222162644199160501632046");
    assert_eq!(result.out_trade_no, "T20240101000001");
    assert_eq!(result.state, pb::TradeState::Succeeded as i32);
    assert_eq!(result.paid.unwrap().amount_minor, 8888);
    assert_eq!(result.paid_at.unwrap().seconds, 1_704_081_600);
}

#[tokio::test]
async fn a_changed_amount_is_a_bad_signature() {
    let cb = callback(params(APP_ID), &keys().alipay);
    let body = String::from_utf8(cb.body.to_vec())
        .unwrap()
        .replace("88.88", "0.01");
    let cb = Callback {
        body: body.into_bytes().into(),
        ..cb
    };
    assert_eq!(
        reason(adapter().verify_callback(&cb).await),
        RejectReason::BadSignature
    );
}

#[tokio::test]
async fn a_notification_signed_by_another_key_or_unsigned_is_a_bad_signature() {
    let cb = callback(params(APP_ID), &keys().stranger);
    assert_eq!(
        reason(adapter().verify_callback(&cb).await),
        RejectReason::BadSignature
    );
    let unsigned = Callback {
        body: wire::encode_form(&params(APP_ID)).into_bytes().into(),
        ..cb
    };
    assert_eq!(
        reason(adapter().verify_callback(&unsigned).await),
        RejectReason::BadSignature
    );
}

#[tokio::test]
async fn a_notification_for_another_app_is_refused() {
    let cb = callback(params("2021000000000002"), &keys().alipay);
    assert_eq!(
        reason(adapter().verify_callback(&cb).await),
        RejectReason::WrongMerchant
    );
}

#[tokio::test]
async fn a_refund_notification_becomes_a_refund_result() {
    let mut p = params(APP_ID);
    p.insert("out_biz_no".into(), "R20240101000001".into());
    p.insert("refund_fee".into(), "8.88".into());
    p.insert("gmt_refund".into(), "2024-01-01 13:00:00.123".into());
    let cb = callback(p, &keys().alipay);
    let Notification::Refund {
        out_trade_no,
        result,
        ..
    } = adapter().verify_callback(&cb).await.unwrap()
    else {
        panic!("expected a refund");
    };
    assert_eq!(out_trade_no, "T20240101000001");
    assert_eq!(result.out_refund_no, "R20240101000001");
    assert_eq!(result.state, pb::RefundState::Succeeded as i32);
    assert_eq!(result.succeeded_at.unwrap().seconds, 1_704_085_200);
}

#[test]
fn replies_follow_the_documented_forms() {
    let a = adapter();
    assert_eq!((a.ack().status, a.ack().body.as_str()), (200, "success"));
    assert_eq!(
        (a.nack("x").status, a.nack("x").body.as_str()),
        (200, "fail")
    );
}

#[tokio::test]
async fn page_and_app_pay_are_signed_without_calling_the_gateway() {
    let a = adapter();
    let request = |method: pb::PayMethod| pb::PrepayRequest {
        out_trade_no: "T20240101000001".into(),
        method: method as i32,
        amount: Some(pb::Money {
            amount_minor: 8888,
            currency: "CNY".into(),
        }),
        subject: "coffee".into(),
        ..Default::default()
    };
    let page = a.prepay(request(pb::PayMethod::AlipayPage)).await.unwrap();
    let url = &page.pay_params["pay_url"];
    assert!(url.starts_with("http://127.0.0.1:1/gateway.do?"));
    assert!(url.contains("method=alipay.trade.page.pay") && url.contains("&sign="));
    let app = a.prepay(request(pb::PayMethod::AlipayApp)).await.unwrap();
    assert!(app.pay_params["order_string"].contains("method=alipay.trade.app.pay"));

    let mut usd = request(pb::PayMethod::AlipayQr);
    usd.amount = Some(pb::Money {
        amount_minor: 1,
        currency: "USD".into(),
    });
    assert!(matches!(
        a.prepay(usd).await,
        Err(ChannelError::InvalidArgument(_))
    ));
    assert!(matches!(
        a.prepay(request(pb::PayMethod::WechatNative)).await,
        Err(ChannelError::InvalidArgument(_))
    ));
}

#[tokio::test]
async fn a_full_refund_notify_without_out_biz_no_is_a_refund_never_a_closed_payment() {
    // A full refund shows TRADE_CLOSED; the refund fields (refund_fee, gmt_refund, gmt_close) say
    // what it is, with or without out_biz_no (absent when the refund had no out_request_no).
    let mut p = params(APP_ID);
    p.insert("trade_status".into(), "TRADE_CLOSED".into());
    p.insert("refund_fee".into(), "88.88".into());
    p.insert("gmt_refund".into(), "2024-01-02 10:00:00.000".into());
    p.insert("gmt_close".into(), "2024-01-02 10:00:00".into());
    let cb = callback(p.clone(), &keys().alipay);
    let Notification::Refund {
        out_trade_no,
        result,
        ..
    } = adapter().verify_callback(&cb).await.unwrap()
    else {
        panic!("a refund notify read as a payment");
    };
    assert_eq!(out_trade_no, "T20240101000001");
    // Without out_request_no Alipay names the refund by the trade's out_trade_no.
    assert_eq!(result.out_refund_no, "T20240101000001");
    assert_eq!(result.state, pb::RefundState::Succeeded as i32);
    // A partial refund without out_biz_no: TRADE_SUCCESS with refund fields, still a refund.
    p.insert("trade_status".into(), "TRADE_SUCCESS".into());
    p.insert("refund_fee".into(), "1.00".into());
    p.remove("gmt_close");
    let cb = callback(p, &keys().alipay);
    assert!(matches!(
        adapter().verify_callback(&cb).await.unwrap(),
        Notification::Refund { .. }
    ));
}

#[tokio::test]
async fn out_trade_no_is_at_most_64_letters_digits_or_underscores() {
    assert!(out_trade_no(&"A".repeat(64)).is_ok());
    assert!(out_trade_no("P_2026_0001").is_ok());
    for bad in ["", &"A".repeat(65), "ORDER-0001", "订单1"] {
        assert!(
            matches!(out_trade_no(bad), Err(ChannelError::InvalidArgument(_))),
            "{bad}"
        );
    }
    let req = pb::PrepayRequest {
        out_trade_no: "A".repeat(65),
        method: pb::PayMethod::AlipayQr as i32,
        amount: Some(pb::Money {
            amount_minor: 100,
            currency: "CNY".into(),
        }),
        subject: "tea".into(),
        ..Default::default()
    };
    assert!(matches!(
        adapter().prepay(req).await,
        Err(ChannelError::InvalidArgument(_))
    ));
}

fn refund_answer(node: serde_json::Value) -> RefundResponse {
    serde_json::from_value(node).unwrap()
}

fn query_answer(node: serde_json::Value) -> RefundQueryResponse {
    serde_json::from_value(node).unwrap()
}

#[test]
fn fund_change_y_covering_the_refund_is_success_anything_else_asks_the_query() {
    let answer = |fund_change: &str, refund_fee: &str| {
        refund_answer(serde_json::json!({
            "code": "10000", "msg": "Success", "trade_no": "2024", "out_trade_no": "T1",
            "fund_change": fund_change, "refund_fee": refund_fee,
        }))
    };
    // 4.00 asked; the cumulative refund_fee includes earlier refunds.
    assert_eq!(
        read_refund_answer(&answer("Y", "4.00"), 400),
        RefundAnswer::Succeeded
    );
    assert_eq!(
        read_refund_answer(&answer("Y", "10.00"), 400),
        RefundAnswer::Succeeded
    );
    // Y whose cumulative total is below this refund cannot be this refund.
    assert_eq!(
        read_refund_answer(&answer("Y", "3.99"), 400),
        RefundAnswer::AskQuery
    );
    // N: an idempotent repeat, or a refund not carried out yet.
    assert_eq!(
        read_refund_answer(&answer("N", "4.00"), 400),
        RefundAnswer::AskQuery
    );
    assert_eq!(
        read_refund_answer(&answer("N", "0.00"), 400),
        RefundAnswer::AskQuery
    );
}

#[test]
fn a_refund_query_maps_success_absent_and_odd_statuses() {
    let ok = refund_query_result(
        query_answer(serde_json::json!({
            "code": "10000", "msg": "Success", "trade_no": "2024", "out_trade_no": "T1",
            "out_request_no": "R1", "total_amount": "10.00", "refund_amount": "4.00",
            "refund_status": "REFUND_SUCCESS", "gmt_refund_pay": "2024-01-01 13:00:00",
        })),
        "R1",
    )
    .unwrap();
    assert_eq!(ok.state, pb::RefundState::Succeeded as i32);
    assert_eq!(
        ok.refunded,
        Some(pb::Money {
            amount_minor: 400,
            currency: "CNY".into()
        })
    );
    assert_eq!(ok.succeeded_at.unwrap().seconds, 1_704_085_200);
    // Absent refund_status: "not received or failed" — not found, never failed.
    let absent = refund_query_result(
        query_answer(serde_json::json!({
            "code": "10000", "msg": "Success", "trade_no": "2024", "out_trade_no": "T1",
            "out_request_no": "R1",
        })),
        "R1",
    )
    .unwrap();
    assert_eq!(absent.state, pb::RefundState::NotFound as i32);
    assert_eq!(absent.refunded, None);
    // ...but right after an accepted refund call it is a refund in flight.
    assert_eq!(
        after_accepted_refund(absent).state,
        pb::RefundState::Processing as i32
    );
    let odd = refund_query_result(
        query_answer(serde_json::json!({
            "code": "10000", "msg": "Success", "refund_status": "REFUND_PROCESSING",
        })),
        "R1",
    )
    .unwrap();
    assert_eq!(odd.state, pb::RefundState::Unknown as i32);
    assert_eq!(
        after_accepted_refund(odd).state,
        pb::RefundState::Unknown as i32
    );
    let no_trade = refund_query_result(
        query_answer(serde_json::json!({
            "code": "40004", "msg": "Business Failed", "sub_code": "ACQ.TRADE_NOT_EXIST",
        })),
        "R1",
    )
    .unwrap();
    assert_eq!(no_trade.state, pb::RefundState::NotFound as i32);
    // A success without its amount is not believed.
    assert!(matches!(
        refund_query_result(
            query_answer(serde_json::json!({
                "code": "10000", "msg": "Success", "refund_status": "REFUND_SUCCESS",
            })),
            "R1",
        ),
        Err(ChannelError::BadResponse(_))
    ));
    // A system error of the query is "try again", not an answer.
    assert!(matches!(
        refund_query_result(
            query_answer(serde_json::json!({
                "code": "20000", "msg": "Service Currently Unavailable",
                "sub_code": "isp.unknow-error",
            })),
            "R1",
        ),
        Err(ChannelError::Unavailable(_))
    ));
}

#[test]
fn business_refusals_of_a_refund_are_final_refusals() {
    for sub_code in [
        "ACQ.SELLER_BALANCE_NOT_ENOUGH",
        "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL",
        "ACQ.TRADE_STATUS_ERROR",
        "ACQ.DISCORDANT_REPEAT_REQUEST",
        "ACQ.TRADE_NOT_EXIST",
    ] {
        let answer = refund_answer(serde_json::json!({
            "code": "40004", "msg": "Business Failed", "sub_code": sub_code, "sub_msg": "m",
        }));
        let error = call_error(&answer.status, outcome(&answer.status));
        assert!(
            matches!(&error, ChannelError::Refused { code, .. } if code == sub_code),
            "{sub_code}: {error:?}"
        );
    }
}

#[tokio::test]
async fn a_refund_notification_reports_the_cumulative_refund_fee_but_no_amount() {
    let mut p = params(APP_ID);
    p.insert("out_biz_no".into(), "R2".into());
    p.insert("refund_fee".into(), "6.00".into());
    p.insert("gmt_refund".into(), "2024-01-01 13:00:00.000".into());
    let cb = callback(p, &keys().alipay);
    let Notification::Refund {
        event_id, result, ..
    } = adapter().verify_callback(&cb).await.unwrap()
    else {
        panic!("expected a refund");
    };
    assert!(!event_id.is_empty());
    assert_eq!(result.out_refund_no, "R2");
    // refund_fee is the trade's total refunded, not this refund's amount.
    assert_eq!(result.refunded, None);
    assert!(result.channel_status.contains("refund_fee=6.00"));
}

mod fuzz;
