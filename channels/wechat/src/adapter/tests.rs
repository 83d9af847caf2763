//! Callbacks built here with freshly generated keys: the adapter accepts a correctly signed and
//! sealed notification and refuses each way of breaking one with the matching reason.
use std::sync::{Arc, OnceLock};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use channel_kit::settings::Secret;
use rsa::RsaPrivateKey;
use rsa::pkcs1v15::SigningKey;
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use rsa::signature::{SignatureEncoding, Signer};
use sha2::Sha256;

use super::*;
use crate::signature::response_message;

const NOW: i64 = 1_704_081_605;
const MCHID: &str = "1900000001";
const APIV3_KEY: &str = "a7cde1ZJB1kG2e7VfTs3jQzaWizur8Gb";
const PLATFORM_SERIAL: &str = "PUB_KEY_ID_0000000000000024101100397200000006";

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(NOW, 0).unwrap()
}

struct Keys {
    merchant: RsaPrivateKey,
    platform: RsaPrivateKey,
    stranger: RsaPrivateKey,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let mut rng = rand::thread_rng();
        Keys {
            merchant: RsaPrivateKey::new(&mut rng, 2048).unwrap(),
            platform: RsaPrivateKey::new(&mut rng, 2048).unwrap(),
            stranger: RsaPrivateKey::new(&mut rng, 2048).unwrap(),
        }
    })
}

fn adapter() -> WechatAdapter {
    adapter_with("http://127.0.0.1:1", false, now)
}

fn adapter_with(api_base: &str, download: bool, now: fn() -> DateTime<Utc>) -> WechatAdapter {
    adapter_refreshing_every(api_base, download, now, 3600)
}

fn adapter_refreshing_every(
    api_base: &str,
    download: bool,
    now: fn() -> DateTime<Utc>,
    refresh_secs: u64,
) -> WechatAdapter {
    let k = keys();
    let settings = WechatSettings {
        api_base: api_base.into(),
        mchid: MCHID.into(),
        appid: "wxd678efh567hg6787".into(),
        merchant_key: Secret::new(k.merchant.to_pkcs8_pem(LineEnding::LF).unwrap().to_string()),
        merchant_serial: "5F1C72E2A8931B72A2E13AF8DEE92471EB397115".into(),
        platform_public_key: Some(
            k.platform
                .to_public_key()
                .to_public_key_pem(LineEnding::LF)
                .unwrap(),
        ),
        platform_serial: Some(PLATFORM_SERIAL.into()),
        certificate_download: download,
        certificate_refresh_secs: refresh_secs,
        certificate_min_refresh_secs: 30,
        apiv3_key: Secret::new(APIV3_KEY),
        notify_url: "http://127.0.0.1:8081/notify/payment".into(),
        refund_notify_url: "http://127.0.0.1:8081/notify/refund".into(),
        timestamp_window_secs: 300,
    };
    let keys = WechatKeys::load(&settings).unwrap();
    WechatAdapter::new(&settings, keys, reqwest::Client::new(), now)
}

fn seal(key: &str, plaintext: &str, associated_data: &str) -> String {
    let cipher = Aes256Gcm::new_from_slice(key.as_bytes()).unwrap();
    let sealed = cipher
        .encrypt(
            Nonce::from_slice(b"fG1l57vn9BCX"),
            Payload {
                msg: plaintext.as_bytes(),
                aad: associated_data.as_bytes(),
            },
        )
        .unwrap();
    BASE64.encode(sealed)
}

fn transaction(mchid: &str) -> String {
    format!(
        r#"{{"mchid":"{mchid}","appid":"wxd678efh567hg6787","out_trade_no":"T20240101000001","transaction_id":"4200000000202401010000000001","trade_type":"JSAPI","trade_state":"SUCCESS","trade_state_desc":"支付成功","bank_type":"OTHERS","attach":"","success_time":"2024-01-01T12:00:00+08:00","payer":{{"openid":"o-secret"}},"amount":{{"total":100,"payer_total":100,"currency":"CNY","payer_currency":"CNY"}}}}"#
    )
}

fn envelope(event_type: &str, original_type: &str, ciphertext: &str) -> String {
    format!(
        r#"{{"id":"EV-2018022511223320873","create_time":"2024-01-01T12:00:05+08:00","resource_type":"encrypt-resource","event_type":"{event_type}","summary":"支付成功","resource":{{"original_type":"{original_type}","algorithm":"AEAD_AES_256_GCM","ciphertext":"{ciphertext}","associated_data":"{original_type}","nonce":"fG1l57vn9BCX"}}}}"#
    )
}

fn callback(body: &str, timestamp: i64, serial: &str, signer: &RsaPrivateKey) -> Callback {
    let nonce = "0a1b2c3d4e5f60718293a4b5c6d7e8f9";
    let message = response_message(&timestamp.to_string(), nonce, body.as_bytes());
    let signature = SigningKey::<Sha256>::new(signer.clone()).sign(&message);
    let mut headers = http::HeaderMap::new();
    for (name, value) in [
        ("Wechatpay-Timestamp", timestamp.to_string()),
        ("Wechatpay-Nonce", nonce.to_owned()),
        ("Wechatpay-Serial", serial.to_owned()),
        ("Wechatpay-Signature", BASE64.encode(signature.to_bytes())),
        (
            "Wechatpay-Signature-Type",
            "WECHATPAY2-SHA256-RSA2048".to_owned(),
        ),
    ] {
        headers.insert(name, value.parse().unwrap());
    }
    Callback {
        method: http::Method::POST,
        target: "/notify/payment".into(),
        headers,
        body: body.to_owned().into_bytes().into(),
    }
}

fn payment_body() -> String {
    envelope(
        "TRANSACTION.SUCCESS",
        "transaction",
        &seal(APIV3_KEY, &transaction(MCHID), "transaction"),
    )
}

fn reason(result: Result<Notification, Rejection>) -> RejectReason {
    result.unwrap_err().reason
}

#[tokio::test]
async fn a_signed_payment_notification_is_accepted_with_its_envelope_id_and_amount() {
    let cb = callback(&payment_body(), NOW - 10, PLATFORM_SERIAL, &keys().platform);
    let Notification::Payment { event_id, result } = adapter().verify_callback(&cb).await.unwrap()
    else {
        panic!("expected a payment");
    };
    assert_eq!(event_id, "EV-2018022511223320873");
    assert_eq!(result.out_trade_no, "T20240101000001");
    assert_eq!(result.state, pb::TradeState::Succeeded as i32);
    assert_eq!(result.channel_trade_no, "4200000000202401010000000001");
    assert_eq!(
        result.paid,
        Some(pb::Money {
            amount_minor: 100,
            currency: "CNY".into()
        })
    );
    assert_eq!(result.paid_at.unwrap().seconds, 1_704_081_600);
}

#[tokio::test]
async fn a_body_changed_after_signing_is_a_bad_signature() {
    let mut cb = callback(&payment_body(), NOW, PLATFORM_SERIAL, &keys().platform);
    let tampered = String::from_utf8(cb.body.to_vec())
        .unwrap()
        .replace("EV-2018", "EV-2019");
    cb.body = tampered.into_bytes().into();
    assert_eq!(
        reason(adapter().verify_callback(&cb).await),
        RejectReason::BadSignature
    );
}

#[tokio::test]
async fn a_notification_signed_by_another_key_is_a_bad_signature() {
    let cb = callback(&payment_body(), NOW, PLATFORM_SERIAL, &keys().stranger);
    assert_eq!(
        reason(adapter().verify_callback(&cb).await),
        RejectReason::BadSignature
    );
}

#[tokio::test]
async fn an_unknown_serial_is_an_unknown_key() {
    let cb = callback(
        &payment_body(),
        NOW,
        "PUB_KEY_ID_NOT_OURS",
        &keys().platform,
    );
    assert_eq!(
        reason(adapter().verify_callback(&cb).await),
        RejectReason::UnknownKey
    );
}

#[tokio::test]
async fn a_timestamp_outside_the_window_is_stale_even_when_signed() {
    for skew in [-300, 301, 3_600] {
        let cb = callback(
            &payment_body(),
            NOW - skew,
            PLATFORM_SERIAL,
            &keys().platform,
        );
        assert_eq!(
            reason(adapter().verify_callback(&cb).await),
            RejectReason::StaleTimestamp,
            "{skew}"
        );
    }
}

#[tokio::test]
async fn a_resource_sealed_with_another_key_fails_to_decrypt() {
    let body = envelope(
        "TRANSACTION.SUCCESS",
        "transaction",
        &seal(
            "00000000000000000000000000000000",
            &transaction(MCHID),
            "transaction",
        ),
    );
    let cb = callback(&body, NOW, PLATFORM_SERIAL, &keys().platform);
    assert_eq!(
        reason(adapter().verify_callback(&cb).await),
        RejectReason::DecryptFailed
    );
}

#[tokio::test]
async fn a_notification_for_another_merchant_is_refused() {
    let body = envelope(
        "TRANSACTION.SUCCESS",
        "transaction",
        &seal(APIV3_KEY, &transaction("1900000002"), "transaction"),
    );
    let cb = callback(&body, NOW, PLATFORM_SERIAL, &keys().platform);
    assert_eq!(
        reason(adapter().verify_callback(&cb).await),
        RejectReason::WrongMerchant
    );
}

#[tokio::test]
async fn a_refund_notification_becomes_a_refund_result() {
    let resource = format!(
        r#"{{"mchid":"{MCHID}","out_trade_no":"T20240101000001","transaction_id":"4200000000202401010000000001","out_refund_no":"R20240101000001","refund_id":"50000000382019052709732678859","refund_status":"SUCCESS","success_time":"2024-01-02T10:00:00+08:00","user_received_account":"招商银行信用卡0403","amount":{{"total":100,"refund":40,"payer_total":100,"payer_refund":40}}}}"#
    );
    let body = envelope(
        "REFUND.SUCCESS",
        "refund",
        &seal(APIV3_KEY, &resource, "refund"),
    );
    let cb = callback(&body, NOW, PLATFORM_SERIAL, &keys().platform);
    let Notification::Refund {
        event_id,
        out_trade_no,
        result,
    } = adapter().verify_callback(&cb).await.unwrap()
    else {
        panic!("expected a refund");
    };
    assert_eq!(event_id, "EV-2018022511223320873");
    assert_eq!(out_trade_no, "T20240101000001");
    assert_eq!(result.out_refund_no, "R20240101000001");
    assert_eq!(result.state, pb::RefundState::Succeeded as i32);
    assert_eq!(result.refunded.unwrap().amount_minor, 40);
}

fn refund_resource(status: &str) -> String {
    format!(
        r#"{{"mchid":"{MCHID}","out_trade_no":"T20240101000001","transaction_id":"4200000000202401010000000001","out_refund_no":"R20240101000001","refund_id":"50000000382019052709732678859","refund_status":"{status}","user_received_account":"招商银行信用卡0403","amount":{{"total":100,"refund":40,"payer_total":100,"payer_refund":40}}}}"#
    )
}

fn refund_body(event_type: &str, status: &str) -> String {
    envelope(
        event_type,
        "refund",
        &seal(APIV3_KEY, &refund_resource(status), "refund"),
    )
}

#[tokio::test]
async fn abnormal_and_closed_refund_notifications_are_processing_and_failed() {
    for (event_type, status, expected) in [
        ("REFUND.ABNORMAL", "ABNORMAL", pb::RefundState::Processing),
        ("REFUND.CLOSED", "CLOSED", pb::RefundState::Failed),
        ("REFUND.SUCCESS", "SUCCESS", pb::RefundState::Succeeded),
    ] {
        let cb = callback(
            &refund_body(event_type, status),
            NOW,
            PLATFORM_SERIAL,
            &keys().platform,
        );
        let Notification::Refund {
            event_id, result, ..
        } = adapter().verify_callback(&cb).await.unwrap()
        else {
            panic!("expected a refund for {event_type}");
        };
        assert_eq!(event_id, "EV-2018022511223320873", "{event_type}");
        assert_eq!(result.state, expected as i32, "{event_type}");
        assert_eq!(result.channel_status, status);
        assert_eq!(result.channel_refund_no, "50000000382019052709732678859");
        assert_eq!(
            result.refunded,
            Some(pb::Money {
                amount_minor: 40,
                currency: "CNY".into()
            }),
            "{event_type}"
        );
    }
}

#[tokio::test]
async fn a_refund_notification_with_a_bad_signature_or_ciphertext_is_refused_with_fail() {
    let a = adapter();
    // Signed, then changed.
    let mut cb = callback(
        &refund_body("REFUND.SUCCESS", "SUCCESS"),
        NOW,
        PLATFORM_SERIAL,
        &keys().platform,
    );
    let tampered = String::from_utf8(cb.body.to_vec())
        .unwrap()
        .replace("REFUND.SUCCESS", "REFUND.CLOSED");
    cb.body = tampered.into_bytes().into();
    assert_eq!(
        reason(a.verify_callback(&cb).await),
        RejectReason::BadSignature
    );
    // Signed by another key.
    let cb = callback(
        &refund_body("REFUND.SUCCESS", "SUCCESS"),
        NOW,
        PLATFORM_SERIAL,
        &keys().stranger,
    );
    assert_eq!(
        reason(a.verify_callback(&cb).await),
        RejectReason::BadSignature
    );
    // Correctly signed, but sealed with another key, or not ciphertext at all.
    for ciphertext in [
        seal(
            "00000000000000000000000000000000",
            &refund_resource("SUCCESS"),
            "refund",
        ),
        "bm90IGEgY2lwaGVydGV4dA==".to_owned(),
    ] {
        let body = envelope("REFUND.SUCCESS", "refund", &ciphertext);
        let cb = callback(&body, NOW, PLATFORM_SERIAL, &keys().platform);
        assert_eq!(
            reason(a.verify_callback(&cb).await),
            RejectReason::DecryptFailed
        );
    }
    // What the kit answers for every rejection (nothing is forwarded): WeChat's failure form.
    let nack = a.nack("verification failed");
    assert!((400..600).contains(&nack.status));
    let body: serde_json::Value = serde_json::from_str(&nack.body).unwrap();
    assert_eq!(body["code"], "FAIL");
}

#[test]
fn every_refund_status_maps_and_abnormal_is_never_failed() {
    for (status, expected) in [
        ("PROCESSING", pb::RefundState::Processing),
        ("ABNORMAL", pb::RefundState::Processing),
        ("SUCCESS", pb::RefundState::Succeeded),
        ("CLOSED", pb::RefundState::Failed),
        ("SOMETHING_NEW", pb::RefundState::Unknown),
        ("", pb::RefundState::Unknown),
    ] {
        assert_eq!(refund_state(status), expected, "{status:?}");
    }
}

#[test]
fn refusals_of_a_refund_are_final_refusals() {
    use crate::client::PlatformRefusal;
    use crate::status::classify_error;
    for (status, code) in [
        (400, "INVALID_REQUEST"),
        (403, "NOT_ENOUGH"),
        (400, "PARAM_ERROR"),
    ] {
        let refusal = PlatformRefusal {
            status,
            code: code.to_owned(),
            message: "m".to_owned(),
            class: classify_error(status, code),
        };
        assert!(
            matches!(refusal.into_error(), ChannelError::Refused { .. }),
            "{code}"
        );
    }
    let unknown = PlatformRefusal {
        status: 500,
        code: "SYSTEM_ERROR".to_owned(),
        message: "m".to_owned(),
        class: classify_error(500, "SYSTEM_ERROR"),
    };
    assert!(matches!(unknown.into_error(), ChannelError::Unavailable(_)));
}

#[test]
fn replies_follow_the_documented_forms() {
    let a = adapter();
    assert_eq!(a.ack().status, 200);
    assert_eq!(a.ack().body, r#"{"code":"SUCCESS","message":"成功"}"#);
    assert_eq!(a.nack("x").status, 500);
    assert!(a.nack("x").body.contains(r#""code":"FAIL""#));
}

#[tokio::test]
async fn methods_and_currencies_the_channel_cannot_take_are_invalid_arguments() {
    let a = adapter();
    let request = |method: pb::PayMethod, currency: &str| pb::PrepayRequest {
        out_trade_no: "T20240101000001".into(),
        method: method as i32,
        amount: Some(pb::Money {
            amount_minor: 100,
            currency: currency.into(),
        }),
        subject: "coffee".into(),
        ..Default::default()
    };
    for r in [
        request(pb::PayMethod::AlipayQr, "CNY"),
        request(pb::PayMethod::WechatNative, "USD"),
        request(pb::PayMethod::WechatJsapi, "CNY"),
    ] {
        assert!(matches!(
            a.prepay(r).await,
            Err(ChannelError::InvalidArgument(_))
        ));
    }
}

// ---------------------------------------------------------------- key rotation, unsigned 4xx, ids

/// The independent vector's `/v3/certificates` answer (one certificate for the wechatpay-java
/// published platform key, serial `123456789ABCDEF0123`, signed at 1710000300).
const INDEPENDENT: &str = include_str!("../../tests/fixtures/independent_vectors.json");
const PUBLISHED_PLATFORM_KEY: &str =
    include_str!("../../tests/fixtures/wechatpay_java_sdk_test_platform_private_key.pem");

fn march_2024() -> DateTime<Utc> {
    DateTime::from_timestamp(1_710_000_310, 0).unwrap()
}

#[derive(Clone, Default)]
struct Mock {
    downloads: Arc<std::sync::atomic::AtomicUsize>,
    /// Serve the certificate list with a genuine signature over another message.
    forge: Arc<std::sync::atomic::AtomicBool>,
}

/// A stand-in for WeChat serving `/v3/certificates` (the vector) and, for every other path, an
/// unsigned 401 SIGN_ERROR / 404 ORDER_NOT_EXIST / 400 non-JSON answer chosen by the path.
async fn mock_wechat() -> (String, Mock) {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    let mock = Mock::default();
    let v: serde_json::Value = serde_json::from_str(INDEPENDENT).unwrap();
    let mut c = v["certificate_download"].clone();
    // A genuine platform signature, but over another answer.
    c["forged_signature"] = v["response_signatures"][0]["signature"].clone();
    let state = mock.clone();
    let app = axum::Router::new()
        .route(
            "/v3/certificates",
            axum::routing::get(move || {
                let c = c.clone();
                let state = state.clone();
                async move {
                    state
                        .downloads
                        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let r = &c["response"];
                    let signature = if state.forge.load(std::sync::atomic::Ordering::SeqCst) {
                        &c["forged_signature"]
                    } else {
                        &r["signature"]
                    };
                    (
                        [
                            (
                                "Wechatpay-Timestamp",
                                r["timestamp"].as_str().unwrap().to_owned(),
                            ),
                            ("Wechatpay-Nonce", r["nonce"].as_str().unwrap().to_owned()),
                            ("Wechatpay-Serial", r["serial"].as_str().unwrap().to_owned()),
                            (
                                "Wechatpay-Signature",
                                signature.as_str().unwrap().to_owned(),
                            ),
                        ],
                        c["body"].as_str().unwrap().to_owned(),
                    )
                }
            }),
        )
        .fallback(|uri: axum::http::Uri| async move {
            let path = uri.path().to_owned();
            if path.contains("SIGNERR") {
                (
                    StatusCode::UNAUTHORIZED,
                    r#"{"code":"SIGN_ERROR","message":"签名信息错误，验签失败"}"#,
                )
                    .into_response()
            } else if path.contains("NOTFOUND") {
                (
                    StatusCode::NOT_FOUND,
                    r#"{"code":"ORDER_NOT_EXIST","message":"订单不存在"}"#,
                )
                    .into_response()
            } else {
                (StatusCode::BAD_REQUEST, "<html>bad gateway page</html>").into_response()
            }
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), mock)
}

fn published_platform_key() -> RsaPrivateKey {
    use rsa::pkcs8::DecodePrivateKey as _;
    RsaPrivateKey::from_pkcs8_pem(PUBLISHED_PLATFORM_KEY).unwrap()
}

#[tokio::test]
async fn a_callback_under_a_new_certificate_serial_downloads_the_certificates_and_verifies() {
    let (base, mock) = mock_wechat().await;
    let a = adapter_with(&base, true, march_2024);
    // Signed by the old key (public-key mode) and by the new certificate: both are accepted, the
    // second after one download of /v3/certificates.
    let old = callback(
        &payment_body(),
        1_710_000_305,
        PLATFORM_SERIAL,
        &keys().platform,
    );
    assert!(a.verify_callback(&old).await.is_ok());
    assert_eq!(mock.downloads.load(std::sync::atomic::Ordering::SeqCst), 0);
    let new = callback(
        &payment_body(),
        1_710_000_305,
        "123456789ABCDEF0123",
        &published_platform_key(),
    );
    let Notification::Payment { result, .. } = a.verify_callback(&new).await.unwrap() else {
        panic!("expected a payment");
    };
    assert_eq!(result.state, pb::TradeState::Succeeded as i32);
    assert_eq!(mock.downloads.load(std::sync::atomic::Ordering::SeqCst), 1);
    // Known now: no further download; the old key still works too.
    assert!(a.verify_callback(&new).await.is_ok());
    assert!(a.verify_callback(&old).await.is_ok());
    assert_eq!(mock.downloads.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn unknown_serials_download_at_most_once_per_interval_before_being_refused() {
    let (base, mock) = mock_wechat().await;
    let a = adapter_with(&base, true, march_2024);
    for serial in ["0ABCDEF", "1ABCDEF", "2ABCDEF"] {
        let cb = callback(&payment_body(), 1_710_000_305, serial, &keys().stranger);
        assert_eq!(
            reason(a.verify_callback(&cb).await),
            RejectReason::UnknownKey
        );
    }
    assert_eq!(mock.downloads.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn downloaded_certificates_open_only_with_the_apiv3_key_and_within_their_validity() {
    let (base, _mock) = mock_wechat().await;
    let a = adapter_with(&base, true, march_2024);
    let v: serde_json::Value = serde_json::from_str(INDEPENDENT).unwrap();
    let listed: crate::wire::CertificatesResponse =
        serde_json::from_str(v["certificate_download"]["body"].as_str().unwrap()).unwrap();
    let key = ApiV3Key::new(APIV3_KEY).unwrap();
    let certs = crate::signature::open_certificates(&listed, &key, march_2024()).unwrap();
    assert_eq!(certs.len(), 1);
    // The adapter itself refreshed from a correctly signed list.
    assert_eq!(
        a.refresh_certificates().await.unwrap(),
        vec!["123456789ABCDEF0123".to_owned()]
    );
    // A list sealed under another APIv3 key does not open.
    let other = ApiV3Key::new("b7cde1ZJB1kG2e7VfTs3jQzaWizur8Gb").unwrap();
    assert!(crate::signature::open_certificates(&listed, &other, march_2024()).is_err());
    // Certificates outside their validity are dropped.
    let later = DateTime::from_timestamp(2_100_000_000, 0).unwrap();
    assert!(
        crate::signature::open_certificates(&listed, &key, later)
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn a_payment_notification_for_another_app_of_the_merchant_is_refused() {
    let other_app = transaction(MCHID).replace("wxd678efh567hg6787", "wx0000000000000001");
    let body = envelope(
        "TRANSACTION.SUCCESS",
        "transaction",
        &seal(APIV3_KEY, &other_app, "transaction"),
    );
    let cb = callback(&body, NOW, PLATFORM_SERIAL, &keys().platform);
    assert_eq!(
        reason(adapter().verify_callback(&cb).await),
        RejectReason::WrongMerchant
    );
}

#[tokio::test]
async fn unsigned_4xx_answers_are_refusals_by_status_and_code() {
    let (base, _mock) = mock_wechat().await;
    let a = adapter_with(&base, false, now);
    let query = |no: &str| pb::QueryPaymentRequest {
        out_trade_no: no.to_owned(),
        ..Default::default()
    };
    // 401 SIGN_ERROR comes unsigned: a definite refusal, not a bad response.
    match a.query_payment(query("SIGNERR0001")).await {
        Err(ChannelError::Refused { code, .. }) => assert_eq!(code, "SIGN_ERROR"),
        other => panic!("{other:?}"),
    }
    // An unsigned "no such order" may not assert a state: it says nothing.
    assert!(matches!(
        a.query_payment(query("NOTFOUND001")).await,
        Err(ChannelError::Unavailable(_))
    ));
    // An unsigned 4xx without WeChat's error body is not trusted at all.
    assert!(matches!(
        a.query_payment(query("GARBAGE0001")).await,
        Err(ChannelError::BadResponse(_))
    ));
}

#[tokio::test]
async fn out_trade_no_follows_wechats_rule_of_6_to_32_characters() {
    assert!(out_trade_no("P12345").is_ok());
    assert!(out_trade_no("A_b-c|d*e0123456789012345678901").is_ok());
    assert!(out_trade_no(&"A".repeat(32)).is_ok());
    for bad in [
        "P1234",
        &"A".repeat(33),
        "ORDER 0001",
        "ORDER@0001",
        "订单000001",
    ] {
        assert!(
            matches!(out_trade_no(bad), Err(ChannelError::InvalidArgument(_))),
            "{bad}"
        );
    }
    let a = adapter();
    let r = pb::PrepayRequest {
        out_trade_no: "P1234".into(),
        method: pb::PayMethod::WechatNative as i32,
        amount: Some(pb::Money {
            amount_minor: 100,
            currency: "CNY".into(),
        }),
        subject: "coffee".into(),
        ..Default::default()
    };
    assert!(matches!(
        a.prepay(r).await,
        Err(ChannelError::InvalidArgument(_))
    ));
}

#[tokio::test]
async fn a_certificate_list_whose_answer_does_not_verify_is_not_trusted() {
    let (base, mock) = mock_wechat().await;
    mock.forge.store(true, std::sync::atomic::Ordering::SeqCst);
    let a = adapter_with(&base, true, march_2024);
    let refreshed = a.refresh_certificates().await;
    assert!(
        matches!(refreshed, Err(ChannelError::BadResponse(_))),
        "{refreshed:?}"
    );
    let new = callback(
        &payment_body(),
        1_710_000_305,
        "123456789ABCDEF0123",
        &published_platform_key(),
    );
    assert_eq!(
        reason(a.verify_callback(&new).await),
        RejectReason::UnknownKey
    );
}

#[tokio::test]
async fn certificates_are_refreshed_periodically_without_any_callback() {
    let (base, mock) = mock_wechat().await;
    let a = Arc::new(adapter_refreshing_every(&base, true, march_2024, 1));
    a.spawn_certificate_refresh();
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert!(mock.downloads.load(std::sync::atomic::Ordering::SeqCst) >= 2);
    // Learnt in the background: a callback under the new serial needs no download of its own.
    let before = mock.downloads.load(std::sync::atomic::Ordering::SeqCst);
    let new = callback(
        &payment_body(),
        1_710_000_305,
        "123456789ABCDEF0123",
        &published_platform_key(),
    );
    assert!(a.verify_callback(&new).await.is_ok());
    assert!(mock.downloads.load(std::sync::atomic::Ordering::SeqCst) <= before + 1);
}

/// A "core" that counts the connections it gets and never answers.
async fn counting_core() -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = Arc::clone(&count);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                drop(stream);
            });
        }
    });
    (addr, count)
}

/// Posts `cb` to the kit's callback listener: (HTTP status, body).
async fn post_to_listener(addr: std::net::SocketAddr, cb: &Callback) -> (u16, String) {
    let reply = reqwest::Client::new()
        .post(format!("http://{addr}/notify/refund"))
        .headers(cb.headers.clone())
        .header("Content-Type", "application/json")
        .body(cb.body.to_vec())
        .send()
        .await
        .unwrap();
    (reply.status().as_u16(), reply.text().await.unwrap())
}

#[tokio::test]
async fn through_the_kit_a_forged_refund_notification_gets_fail_and_never_reaches_the_core() {
    use std::sync::atomic::Ordering;
    let (core, connections) = counting_core().await;
    let any = "127.0.0.1:0".parse().unwrap();
    let settings = channel_kit::KitSettings {
        env: channel_kit::settings::AdapterEnv::Development,
        grpc_listen: any,
        callback_listen: any,
        metrics_listen: any,
        core_endpoint: format!("http://{core}"),
        core_token: Secret::new("test-core-token-0123456789"),
        grpc_token: Secret::new("test-grpc-token-0123456789"),
        forward_budget: std::time::Duration::from_millis(500),
        callback_header_timeout: std::time::Duration::from_millis(500),
        callback_body_timeout: std::time::Duration::from_millis(500),
        callback_max_in_flight: 8,
        callback_max_receiving: 64,
        callback_max_verifying: 4,
        callback_max_body_bytes: 64 * 1024,
        platform_timeout: std::time::Duration::from_secs(1),
        shutdown_grace: std::time::Duration::from_secs(1),
    };
    let listeners = channel_kit::Listeners::bind(&settings).await.unwrap();
    let callbacks = listeners.callbacks.local_addr().unwrap();
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    // The adapter's clock is fixed at NOW; the notifications below are signed for then.
    tokio::spawn(listeners.run(Arc::new(adapter()), settings, async move {
        let _ = stopped.await;
    }));

    let bad_ciphertext = envelope(
        "REFUND.SUCCESS",
        "refund",
        &seal(
            "00000000000000000000000000000000",
            &refund_resource("SUCCESS"),
            "refund",
        ),
    );
    for cb in [
        callback(
            &refund_body("REFUND.SUCCESS", "SUCCESS"),
            NOW,
            PLATFORM_SERIAL,
            &keys().stranger,
        ),
        callback(&bad_ciphertext, NOW, PLATFORM_SERIAL, &keys().platform),
    ] {
        let (status, body) = post_to_listener(callbacks, &cb).await;
        assert!((400..600).contains(&status), "{status} {body}");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["code"], "FAIL");
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(
        connections.load(Ordering::SeqCst),
        0,
        "nothing was forwarded"
    );

    // The same listener does forward a genuine one (the core here never answers, so WeChat is
    // told to retry): the check above is not vacuous.
    let genuine = callback(
        &refund_body("REFUND.SUCCESS", "SUCCESS"),
        NOW,
        PLATFORM_SERIAL,
        &keys().platform,
    );
    let (status, _) = post_to_listener(callbacks, &genuine).await;
    assert_eq!(status, 500);
    assert!(connections.load(Ordering::SeqCst) >= 1);
}

/// A core that records the event id of every payment report and acknowledges it at once.
#[derive(Clone, Default)]
struct RecordingCore {
    payments: Arc<std::sync::Mutex<Vec<String>>>,
}

#[tonic::async_trait]
impl pb::channel_events_service_server::ChannelEventsService for RecordingCore {
    async fn report_payment(
        &self,
        request: tonic::Request<pb::ReportPaymentRequest>,
    ) -> Result<tonic::Response<pb::ReportPaymentResponse>, tonic::Status> {
        let mut payments = self.payments.lock().unwrap();
        let id = request.into_inner().channel_event_id;
        let first_time = !payments.contains(&id);
        payments.push(id);
        Ok(tonic::Response::new(pb::ReportPaymentResponse {
            first_time,
        }))
    }
    async fn report_refund(
        &self,
        _: tonic::Request<pb::ReportRefundRequest>,
    ) -> Result<tonic::Response<pb::ReportRefundResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("payments only"))
    }
}

async fn recording_core() -> (std::net::SocketAddr, RecordingCore) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let core = RecordingCore::default();
    let service = pb::channel_events_service_server::ChannelEventsServiceServer::new(core.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    (addr, core)
}

/// Posts `cb` with `client` (one connection pool per sender): (HTTP status, body).
async fn post_with(
    client: &reqwest::Client,
    addr: std::net::SocketAddr,
    cb: &Callback,
) -> (u16, String) {
    let reply = client
        .post(format!("http://{addr}/notify/payment"))
        .headers(cb.headers.clone())
        .header("Content-Type", "application/json")
        .body(cb.body.to_vec())
        .send()
        .await
        .unwrap();
    (reply.status().as_u16(), reply.text().await.unwrap())
}

/// The value of one sample line of the Prometheus text, 0 when absent.
fn sample(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

/// 128 senders replay a forgery (signed by a stranger's key) back to back while the platform
/// retries a genuine notification: the genuine one is acknowledged within a few tries, reaches
/// the core once, and every forgery is answered FAIL and counted (refused or shed while
/// verifying), none forwarded. The stages are one slot each, so the flood really fills them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_flood_of_forged_callbacks_a_genuine_one_is_forwarded_within_a_few_retries() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let (core, recorded) = recording_core().await;
    let any = "127.0.0.1:0".parse().unwrap();
    let settings = channel_kit::KitSettings {
        env: channel_kit::settings::AdapterEnv::Development,
        grpc_listen: any,
        callback_listen: any,
        metrics_listen: any,
        core_endpoint: format!("http://{core}"),
        core_token: Secret::new("test-core-token-0123456789"),
        grpc_token: Secret::new("test-grpc-token-0123456789"),
        forward_budget: std::time::Duration::from_secs(2),
        // Longer than the test: no kept-alive connection is closed under a sender, and no
        // body times out on a loaded machine (every forgery must end refused or shed).
        callback_header_timeout: std::time::Duration::from_secs(10),
        callback_body_timeout: std::time::Duration::from_secs(10),
        // Small stages, so the flood really fills them.
        callback_max_in_flight: 1,
        callback_max_receiving: 16,
        callback_max_verifying: 1,
        callback_max_body_bytes: 64 * 1024,
        platform_timeout: std::time::Duration::from_secs(1),
        shutdown_grace: std::time::Duration::from_secs(1),
    };
    let listeners = channel_kit::Listeners::bind(&settings).await.unwrap();
    let callbacks = listeners.callbacks.local_addr().unwrap();
    let metrics = listeners.metrics.local_addr().unwrap();
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(listeners.run(Arc::new(adapter()), settings, async move {
        let _ = stopped.await;
    }));
    // The same notification, once signed by the platform and once by a stranger (a forger
    // without the platform's key), each replayed as often as needed.
    let genuine = Arc::new(callback(
        &payment_body(),
        NOW,
        PLATFORM_SERIAL,
        &keys().platform,
    ));
    let forged = Arc::new(callback(
        &payment_body(),
        NOW,
        PLATFORM_SERIAL,
        &keys().stranger,
    ));

    // 32 senders post the forgery back to back until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let flood: Vec<_> = (0..128)
        .map(|_| {
            let (stop, sent, forged) = (stop.clone(), sent.clone(), forged.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut replies = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    replies.push(post_with(&client, callbacks, &forged).await);
                    sent.fetch_add(1, Ordering::SeqCst);
                }
                replies
            })
        })
        .collect();
    let started = std::time::Instant::now();
    while sent.load(Ordering::SeqCst) < 200 {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "the flood stalled"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }

    // The platform retries the genuine notification until it is acknowledged.
    let client = reqwest::Client::new();
    let mut tries = 0;
    let acknowledged = loop {
        tries += 1;
        let (status, body) = post_with(&client, callbacks, &genuine).await;
        if status == 200 || tries == 20 {
            break (status, body);
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let flooded_during = sent.load(Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    let mut forged_replies = Vec::new();
    for h in flood {
        forged_replies.extend(h.await.unwrap());
    }

    assert_eq!(
        acknowledged.0, 200,
        "after {tries} tries: {}",
        acknowledged.1
    );
    let ack: serde_json::Value = serde_json::from_str(&acknowledged.1).unwrap();
    assert_eq!(ack["code"], "SUCCESS");
    assert!(flooded_during >= 200);
    assert_eq!(
        *recorded.payments.lock().unwrap(),
        vec!["EV-2018022511223320873".to_owned()],
        "only the genuine notification reached the core, once"
    );
    for (status, body) in &forged_replies {
        assert!(matches!(status, 500 | 503), "{status} {body}");
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["code"], "FAIL");
    }
    let m = reqwest::get(format!("http://{metrics}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let refused = sample(
        &m,
        r#"adapter_callback_rejections_total{channel="wechat",reason="bad_signature"}"#,
    ) + sample(
        &m,
        r#"adapter_callbacks_total{channel="wechat",outcome="shed_verifying"}"#,
    ) + sample(
        &m,
        r#"adapter_callbacks_total{channel="wechat",outcome="shed_receiving"}"#,
    );
    // The genuine callback's tries before the acknowledged one were shed while verifying too.
    assert_eq!(
        refused as usize,
        forged_replies.len() + (tries - 1),
        "every forgery counted: {m}"
    );
    assert_eq!(
        sample(
            &m,
            r#"adapter_callbacks_total{channel="wechat",outcome="accepted"}"#
        ),
        1,
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            r#"adapter_callbacks_total{channel="wechat",outcome="shed"}"#
        ),
        0,
        "the genuine callback never waited for a forwarding slot: {m}"
    );
    eprintln!(
        "{} forgeries, genuine acknowledged on try {tries}, {} shed while verifying",
        forged_replies.len(),
        sample(
            &m,
            r#"adapter_callbacks_total{channel="wechat",outcome="shed_verifying"}"#
        )
    );
}

mod fuzz;
