//! Notifications signed here: with the independent test platform key and its certificate (pinned,
//! as the sandbox's is), and forgeries with a freshly generated key. The adapter accepts the real
//! one and refuses each broken variant with the matching reason. UnionPay notifications carry no
//! signed timestamp; the time check is the certificate's validity, refused as an unknown key.
use std::sync::OnceLock;

use channel_kit::settings::Secret;
use channel_kit::time::timestamp;
use rsa::RsaPrivateKey;
use rsa::pkcs8::{EncodePrivateKey, LineEnding};
use serde_json::Value;

use super::*;
use crate::signature::MerchantSigner;

const PLATFORM_KEY: &str =
    include_str!("../../tests/fixtures/independent_test_unionpay_platform_private_key.pem");
const INDEPENDENT: &str = include_str!("../../tests/fixtures/independent_vectors.json");
const MER_ID: &str = "777290058167151";

fn certificate(which: &str) -> (String, String) {
    let v: Value = serde_json::from_str(INDEPENDENT).unwrap();
    let c = &v["certificates"][which];
    (
        c["pem"].as_str().unwrap().to_owned(),
        c["serial_decimal"].as_str().unwrap().to_owned(),
    )
}

fn stranger_pem() -> &'static str {
    static KEY: OnceLock<String> = OnceLock::new();
    KEY.get_or_init(|| {
        let key = RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
        key.to_pkcs8_pem(LineEnding::LF).unwrap().to_string()
    })
}

fn in_2026() -> DateTime<Utc> {
    DateTime::from_timestamp(1_767_225_600, 0).unwrap()
}

fn in_2040() -> DateTime<Utc> {
    DateTime::from_timestamp(2_208_988_800, 0).unwrap()
}

fn adapter_at(now: fn() -> DateTime<Utc>) -> UnionpayAdapter {
    let settings = UnionpaySettings {
        gateway_base: "http://127.0.0.1:1".into(),
        file_trans_url: "http://127.0.0.1:1/gateway/api/fileTransRequest.do".into(),
        mer_id: MER_ID.into(),
        sign_key: Secret::new(stranger_pem()),
        sign_cert_id: "69903319369".into(),
        platform_cert: Some(certificate("good").0),
        middle_cert: None,
        root_cert: None,
        accept_test_cn: false,
        back_url: "http://127.0.0.1:8083/notify/payment".into(),
        refund_back_url: "http://127.0.0.1:8083/notify/refund".into(),
        front_url: None,
        channel_type: "07".into(),
        front_register: false,
    };
    let keys = UnionpayKeys::load(&settings).unwrap();
    UnionpayAdapter::new(&settings, keys, reqwest::Client::new(), now)
}

fn adapter() -> UnionpayAdapter {
    adapter_at(in_2026)
}

fn fields(txn_type: &str, order_id: &str, mer_id: &str) -> BTreeMap<String, String> {
    [
        ("version", "5.1.0"),
        ("encoding", "utf-8"),
        ("signMethod", "01"),
        ("txnType", txn_type),
        ("txnSubType", "01"),
        ("bizType", "000201"),
        ("accessType", "0"),
        ("merId", mer_id),
        ("orderId", order_id),
        ("txnTime", "20260101080000"),
        ("txnAmt", "8888"),
        ("currencyCode", "156"),
        ("queryId", "512601010800000000001"),
        ("traceNo", "000001"),
        ("traceTime", "0101080005"),
        ("respCode", "00"),
        ("respMsg", "成功[0000000]"),
        ("reqReserved", "20260101080000T0001"),
        ("settleAmt", "8888"),
        ("settleCurrencyCode", "156"),
        ("settleDate", "0101"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// Ships `cert` and signs with `key` under `cert_id`, as UnionPay does.
fn callback(mut f: BTreeMap<String, String>, key: &str, cert: &str, cert_id: &str) -> Callback {
    f.insert("signPubKeyCert".into(), cert.to_owned());
    MerchantSigner::from_pkcs8_pem(key, cert_id)
        .unwrap()
        .sign(&mut f)
        .unwrap();
    body_callback(&f)
}

fn body_callback(f: &BTreeMap<String, String>) -> Callback {
    Callback {
        method: http::Method::POST,
        target: "/notify/payment".into(),
        headers: http::HeaderMap::new(),
        body: wire::encode_form(f).into_bytes().into(),
    }
}

fn good(f: BTreeMap<String, String>) -> Callback {
    let (pem, serial) = certificate("good");
    callback(f, PLATFORM_KEY, &pem, &serial)
}

fn reason(result: Result<Notification, Rejection>) -> RejectReason {
    result.unwrap_err().reason
}

#[tokio::test]
async fn a_signed_payment_notification_is_accepted_with_query_id_and_trace_time_as_event_id() {
    let cb = good(fields("01", "20260101080000T0001", MER_ID));
    let Notification::Payment { event_id, result } = adapter().verify_callback(&cb).await.unwrap()
    else {
        panic!("expected a payment");
    };
    assert_eq!(event_id, "512601010800000000001:0101080005");
    assert_eq!(result.out_trade_no, "20260101080000T0001");
    assert_eq!(result.state, pb::TradeState::Succeeded as i32);
    assert_eq!(result.channel_trade_no, "512601010800000000001");
    assert_eq!(
        result.paid,
        Some(pb::Money {
            amount_minor: 8888,
            currency: "CNY".into()
        })
    );
}

#[tokio::test]
async fn a_changed_amount_is_a_bad_signature() {
    let cb = good(fields("01", "20260101080000T0001", MER_ID));
    let mut f = wire::parse_notify_form(std::str::from_utf8(&cb.body).unwrap()).unwrap();
    f.insert("txnAmt".into(), "1".into());
    assert_eq!(
        reason(adapter().verify_callback(&body_callback(&f)).await),
        RejectReason::BadSignature
    );
}

#[tokio::test]
async fn a_signature_by_another_key_is_a_bad_signature() {
    let (pem, serial) = certificate("good");
    let cb = callback(
        fields("01", "20260101080000T0001", MER_ID),
        stranger_pem(),
        &pem,
        &serial,
    );
    assert_eq!(
        reason(adapter().verify_callback(&cb).await),
        RejectReason::BadSignature
    );
}

#[tokio::test]
async fn a_certificate_that_is_not_pinned_or_a_wrong_cert_id_is_an_unknown_key() {
    let (other, other_serial) = certificate("expired");
    let cb = callback(
        fields("01", "20260101080000T0001", MER_ID),
        PLATFORM_KEY,
        &other,
        &other_serial,
    );
    assert_eq!(
        reason(adapter().verify_callback(&cb).await),
        RejectReason::UnknownKey
    );
    let (pem, _) = certificate("good");
    let cb = callback(
        fields("01", "20260101080000T0001", MER_ID),
        PLATFORM_KEY,
        &pem,
        "1",
    );
    assert_eq!(
        reason(adapter().verify_callback(&cb).await),
        RejectReason::UnknownKey
    );
}

#[tokio::test]
async fn a_certificate_past_its_validity_is_refused() {
    let cb = good(fields("01", "20260101080000T0001", MER_ID));
    assert_eq!(
        reason(adapter_at(in_2040).verify_callback(&cb).await),
        RejectReason::UnknownKey
    );
}

#[tokio::test]
async fn a_notification_for_another_merchant_is_refused() {
    let cb = good(fields("01", "20260101080000T0001", "777290058100000"));
    assert_eq!(
        reason(adapter().verify_callback(&cb).await),
        RejectReason::WrongMerchant
    );
}

#[tokio::test]
async fn a_refund_notification_names_its_payment_through_req_reserved() {
    let cb = good(fields("04", "20260101090000R0001", MER_ID));
    let Notification::Refund {
        out_trade_no,
        result,
        ..
    } = adapter().verify_callback(&cb).await.unwrap()
    else {
        panic!("expected a refund");
    };
    assert_eq!(out_trade_no, "20260101080000T0001");
    assert_eq!(result.out_refund_no, "20260101090000R0001");
    assert_eq!(result.state, pb::RefundState::Succeeded as i32);
    assert_eq!(result.refunded.unwrap().amount_minor, 8888);
}

#[tokio::test]
async fn any_other_resp_code_is_unknown_so_the_core_queries() {
    let mut f = fields("01", "20260101080000T0001", MER_ID);
    f.insert("respCode".into(), "61".into());
    let Notification::Payment { result, .. } = adapter().verify_callback(&good(f)).await.unwrap()
    else {
        panic!("expected a payment");
    };
    assert_eq!(result.state, pb::TradeState::Unknown as i32);
    assert_eq!(result.paid, None);
}

#[test]
fn txn_time_is_the_cores_creation_time_in_beijing() {
    // 2026-01-01T01:00:00Z is 09:00 in Beijing.
    let at = prost_types::Timestamp {
        seconds: 1_767_229_200,
        nanos: 0,
    };
    assert_eq!(txn_time_at(Some(&at), "x").unwrap(), "20260101090000");
    assert!(txn_time_at(None, "created_at").is_err());
}

#[test]
fn replies_follow_the_documented_forms() {
    let a = adapter();
    assert_eq!((a.ack().status, a.ack().body.as_str()), (200, "ok"));
    assert_eq!(a.nack("x").status, 500);
}

#[tokio::test]
async fn front_prepay_returns_the_signed_form_and_its_action() {
    let a = adapter();
    let response = a
        .prepay(pb::PrepayRequest {
            out_trade_no: "20260101080000T0001".into(),
            method: pb::PayMethod::UnionpayFront as i32,
            amount: Some(pb::Money {
                amount_minor: 8888,
                currency: "CNY".into(),
            }),
            subject: "coffee".into(),
            expires_at: Some(prost_types::Timestamp {
                seconds: 1_767_227_400,
                nanos: 0,
            }),
            // 2026-01-01T00:00:00Z: 08:00 in Beijing.
            created_at: Some(prost_types::Timestamp {
                seconds: 1_767_225_600,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let p = &response.pay_params;
    assert_eq!(
        p[ACTION_KEY],
        "http://127.0.0.1:1/gateway/api/frontTransReq.do"
    );
    assert_eq!(p["txnTime"], "20260101080000");
    assert_eq!(p["txnAmt"], "8888");
    assert_eq!(p["payTimeout"], "20260101083000");
    assert_eq!(p["certId"], "69903319369");
    assert!(!p["signature"].is_empty());

    let wrong = pb::PrepayRequest {
        out_trade_no: "20260101080000T0001".into(),
        method: pb::PayMethod::AlipayQr as i32,
        ..Default::default()
    };
    assert!(matches!(
        a.prepay(wrong).await,
        Err(ChannelError::InvalidArgument(_))
    ));
}

#[tokio::test]
async fn order_numbers_outside_8_to_40_alphanumerics_are_invalid_arguments() {
    let adapter = adapter();
    for bad in ["SHORT1", "ORDER_00000001", &"A".repeat(41)] {
        let req = pb::PrepayRequest {
            out_trade_no: bad.to_owned(),
            method: pb::PayMethod::UnionpayFront as i32,
            amount: Some(pb::Money {
                amount_minor: 100,
                currency: "CNY".into(),
            }),
            subject: "tea".into(),
            created_at: Some(timestamp(in_2026())),
            ..Default::default()
        };
        match adapter.prepay(req).await {
            Err(ChannelError::InvalidArgument(why)) => assert!(why.contains("orderId"), "{why}"),
            other => panic!("{bad}: {other:?}"),
        }
    }
}

#[test]
fn a_refund_submission_is_processing_when_accepted_and_unknown_when_duplicate() {
    assert_eq!(refund_submit_state("00"), Some(pb::RefundState::Processing));
    for code in ["03", "04", "05", "12"] {
        assert_eq!(
            refund_submit_state(code),
            Some(pb::RefundState::Unknown),
            "{code}"
        );
    }
    // Business refusals (amount above the refundable, unpaid original, …) are final.
    for code in ["01", "02", "06", "30", "61"] {
        assert_eq!(refund_submit_state(code), None, "{code}");
    }
}

fn refund_query(orig: Option<&str>, resp: &str) -> pb::RefundResult {
    let mut f = fields("04", "20260101090000R0001", MER_ID);
    f.insert("respCode".into(), resp.into());
    if let Some(orig) = orig {
        f.insert("origRespCode".into(), orig.into());
    }
    let r = TransactionResult::from_fields(&f).unwrap();
    let status = crate::status::query_status(&r.resp_code, r.orig_resp_code.as_deref());
    refund_result("20260101090000R0001", &r, status).unwrap()
}

#[test]
fn a_refund_query_is_processing_succeeded_failed_or_not_found_by_orig_resp_code() {
    let state = |orig: Option<&str>, resp: &str| refund_query(orig, resp).state;
    for orig in ["03", "04", "05"] {
        assert_eq!(
            state(Some(orig), "00"),
            pb::RefundState::Processing as i32,
            "{orig}"
        );
    }
    let done = refund_query(Some("00"), "00");
    assert_eq!(done.state, pb::RefundState::Succeeded as i32);
    assert_eq!(
        done.refunded,
        Some(pb::Money {
            amount_minor: 8888,
            currency: "CNY".into()
        })
    );
    assert_eq!(done.channel_refund_no, "512601010800000000001");
    // A failure code in a successful query is final.
    assert_eq!(state(Some("01"), "00"), pb::RefundState::Failed as i32);
    assert_eq!(refund_query(Some("01"), "00").refunded, None);
    assert_eq!(state(None, "34"), pb::RefundState::NotFound as i32);
    // The query itself not answering says nothing about the refund.
    for resp in ["03", "04", "05", "10"] {
        assert_eq!(state(None, resp), pb::RefundState::Unknown as i32, "{resp}");
    }
}

#[tokio::test]
async fn a_failed_refund_notification_is_unknown_so_the_core_queries_never_failed() {
    // The notes document only 00/A6 in notifications: a failure code is confirmed by the query.
    let mut f = fields("04", "20260101090000R0001", MER_ID);
    f.insert("respCode".into(), "01".into());
    let Notification::Refund {
        event_id, result, ..
    } = adapter().verify_callback(&good(f)).await.unwrap()
    else {
        panic!("expected a refund");
    };
    assert_eq!(event_id, "512601010800000000001:0101080005");
    assert_eq!(result.state, pb::RefundState::Unknown as i32);
    assert_eq!(result.refunded, None);
    assert!(result.channel_status.contains("respCode=01"));
}

#[test]
fn a_payment_without_its_prepay_answer_is_named_by_the_txn_time_of_its_creation() {
    let at = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
    let ts = timestamp(at);
    // What Prepay would have returned as channel_prepay_id for an attempt created `at`.
    let from_prepay = txn_time_at(Some(&ts), "created_at").unwrap();
    assert_eq!(txn_time_of("", Some(&ts)), from_prepay);
    assert_eq!(txn_time_of("20260101120000", Some(&ts)), "20260101120000");
    assert_eq!(txn_time_of("", None), "");
}

mod fuzz;
