//! The published test vectors of `shared/CHANNEL_PROTOCOLS.md` (copied into
//! `fixtures/official_vectors.json`), replayed against the sandbox's platform-side code.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes128Gcm, KeyInit, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::DateTime;
use sandbox::alipay::protocol as alipay;
use sandbox::form::{self, Params};
use sandbox::keys;
use sandbox::unionpay::protocol as unionpay;
use sandbox::wechat::protocol as wechat;
use serde_json::Value;

fn fixture(name: &str) -> String {
    let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "tests", "fixtures", name]
        .iter()
        .collect();
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn vectors() -> Value {
    serde_json::from_str(&fixture("official_vectors.json")).unwrap()
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} is not a string"))
}

fn private_key(file: &str) -> rsa::RsaPrivateKey {
    keys::load_private_key_pem(&fixture(file)).unwrap()
}

fn public_key(file: &str) -> rsa::RsaPublicKey {
    keys::load_public_key_pem(&fixture(file)).unwrap()
}

/// Splits `k=v&k=v` (values without `&`) into a map, as a signing string lists them.
fn params_from_content(content: &str) -> Params {
    content
        .split('&')
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

const MERCHANT_KEY: &str = "published_wechatpay_java_merchant_private_key.pem";
const PLATFORM_KEY: &str = "published_wechatpay_java_platform_private_key.pem";
const PLATFORM_PUBLIC_KEY: &str = "published_wechatpay_java_platform_public_key.pem";
const MCHID: &str = "1234567891";
const MERCHANT_SERIAL: &str = "5F1C72E2A8931B72A2E13AF8DEE92471EB397115";
const PLATFORM_SERIAL: &str = "440024045C4A427599D09BB4E3DE0279F2E813FD";

fn merchant_keys() -> wechat::MerchantKeys {
    let mut keys = wechat::MerchantKeys::new();
    keys.register(
        MCHID,
        MERCHANT_SERIAL,
        private_key(MERCHANT_KEY).to_public_key(),
    );
    keys
}

/// Splits a five-line request message back into (method, target, timestamp, nonce, body).
fn request_parts(message: &str) -> (String, String, i64, String, String) {
    let lines: Vec<&str> = message
        .strip_suffix('\n')
        .unwrap()
        .splitn(5, '\n')
        .collect();
    (
        lines[0].to_owned(),
        lines[1].to_owned(),
        lines[2].parse().unwrap(),
        lines[3].to_owned(),
        lines[4].to_owned(),
    )
}

fn header_for(timestamp: i64, nonce: &str, signature: &str) -> String {
    format!(
        "WECHATPAY2-SHA256-RSA2048 mchid=\"{MCHID}\",nonce_str=\"{nonce}\",timestamp=\"{timestamp}\",serial_no=\"{MERCHANT_SERIAL}\",signature=\"{signature}\""
    )
}

#[test]
fn wechat_a9_4_request_message_is_rebuilt_from_the_raw_target() {
    let v = &vectors()["wechat"]["a9_4"];
    let target = text(v, "url")
        .strip_prefix("https://api.mch.weixin.qq.com")
        .unwrap();
    let message = wechat::request_message(
        text(v, "method"),
        target,
        v["timestamp"].as_i64().unwrap(),
        text(v, "nonce"),
        b"",
    );
    assert_eq!(
        String::from_utf8(message).unwrap(),
        text(v, "expected_message")
    );
}

#[test]
fn wechat_v5_v6_v7_merchant_requests_verify_and_their_signatures_reproduce() {
    let all = vectors();
    let keys = merchant_keys();
    let merchant = private_key(MERCHANT_KEY);
    for name in ["v5", "v6", "v7"] {
        let v = &all["wechat"][name];
        let (method, target, timestamp, nonce, body) = request_parts(text(v, "message"));
        let signature = text(v, "signature");
        let header = header_for(timestamp, &nonce, signature);
        let request = wechat::IncomingRequest {
            method: &method,
            target: &target,
            authorization: Some(&header),
            body: body.as_bytes(),
        };
        let auth = keys.verify_request(&request, timestamp).unwrap();
        assert_eq!(auth.to_header_value(), header, "{name}");
        let reproduced = keys::sign_sha256_rsa(&merchant, text(v, "message").as_bytes()).unwrap();
        assert_eq!(BASE64.encode(reproduced), signature, "{name}");
    }
}

#[test]
fn wechat_v6_documented_header_parses_and_tampering_is_caught() {
    let v = &vectors()["wechat"]["v6"];
    let header = text(v, "header_template").replace("<the signature above>", text(v, "signature"));
    let body = text(v, "body");
    let request = wechat::IncomingRequest {
        method: "POST",
        target: "/v3/pay/transactions/jsapi",
        authorization: Some(&header),
        body: body.as_bytes(),
    };
    let now = v["timestamp"].as_i64().unwrap();
    assert!(merchant_keys().verify_request(&request, now).is_ok());

    let tampered_body = body.replace("\"total\":100", "\"total\":1");
    let tampered = wechat::IncomingRequest {
        body: tampered_body.as_bytes(),
        ..request
    };
    assert_eq!(
        merchant_keys().verify_request(&tampered, now),
        Err(wechat::RequestRejection::SignatureMismatch)
    );
    let mut wrong_key = wechat::MerchantKeys::new();
    wrong_key.register(MCHID, MERCHANT_SERIAL, public_key(PLATFORM_PUBLIC_KEY));
    assert_eq!(
        wrong_key.verify_request(&request, now),
        Err(wechat::RequestRejection::SignatureMismatch)
    );
    let mut wrong_serial = wechat::MerchantKeys::new();
    wrong_serial.register(
        MCHID,
        PLATFORM_SERIAL,
        private_key(MERCHANT_KEY).to_public_key(),
    );
    assert_eq!(
        wrong_serial.verify_request(&request, now),
        Err(wechat::RequestRejection::UnknownSerial(
            MERCHANT_SERIAL.into()
        ))
    );
    assert!(matches!(
        merchant_keys().verify_request(&request, now + 300),
        Err(wechat::RequestRejection::Expired { .. })
    ));
}

#[test]
fn wechat_v8_platform_response_signature_is_reproduced() {
    let v = &vectors()["wechat"]["v8"];
    let signer = wechat::PlatformSigner::new(PLATFORM_SERIAL, private_key(PLATFORM_KEY)).unwrap();
    let headers = signer
        .sign(
            v["timestamp"].as_i64().unwrap(),
            text(v, "nonce"),
            text(v, "body").as_bytes(),
        )
        .unwrap();
    assert_eq!(headers.signature, text(v, "signature"));
    assert_eq!(
        String::from_utf8(wechat::response_message(
            headers.timestamp,
            &headers.nonce,
            text(v, "body").as_bytes()
        ))
        .unwrap(),
        text(v, "message")
    );
    wechat::verify_platform_signature(
        &public_key(PLATFORM_PUBLIC_KEY),
        &headers,
        text(v, "body").as_bytes(),
    )
    .unwrap();
}

#[test]
fn wechat_v9_transaction_notification_is_reproduced_byte_for_byte() {
    let v = &vectors()["wechat"]["v9"];
    let key = wechat::ApiV3Key::new(text(v, "api_v3_key").as_bytes()).unwrap();
    let draft = wechat::NotificationDraft {
        id: "EV-2018022511223320873",
        create_time: DateTime::parse_from_rfc3339("2024-01-01T12:00:05+08:00").unwrap(),
        event_type: wechat::EventType::TransactionSuccess,
        summary: None,
        associated_data: text(v, "associated_data"),
        nonce: text(v, "resource_nonce"),
        plaintext: text(v, "plaintext").as_bytes(),
    };
    let envelope = wechat::NotificationEnvelope::seal(&key, &draft).unwrap();
    let body = envelope.to_body().unwrap();
    assert_eq!(body, text(v, "body"));
    let signer = wechat::PlatformSigner::new(PLATFORM_SERIAL, private_key(PLATFORM_KEY)).unwrap();
    let headers = signer
        .sign(
            v["timestamp"].as_i64().unwrap(),
            text(v, "nonce"),
            body.as_bytes(),
        )
        .unwrap();
    assert_eq!(headers.signature, text(v, "signature"));
    assert_eq!(headers.serial, text(v, "serial"));
    assert_eq!(
        envelope.open(&key).unwrap(),
        text(v, "plaintext").as_bytes()
    );
}

#[test]
fn wechat_v10_pay_sign_verifies_with_the_merchant_key() {
    let v = &vectors()["wechat"]["v10"];
    let lines: Vec<&str> = text(v, "message").split('\n').collect();
    let merchant = private_key(MERCHANT_KEY).to_public_key();
    wechat::verify_pay_sign(
        &merchant,
        lines[0],
        lines[1],
        lines[2],
        lines[3],
        text(v, "signature"),
    )
    .unwrap();
    assert_eq!(
        wechat::verify_pay_sign(
            &merchant,
            lines[0],
            "1700000004",
            lines[2],
            lines[3],
            text(v, "signature")
        ),
        Err(wechat::RequestRejection::SignatureMismatch)
    );
}

#[test]
fn wechat_a9_2_go_sdk_notification_signature_verifies() {
    let v = &vectors()["wechat"]["a9_2"];
    let key = public_key(text(v, "public_key_file"));
    let headers = wechat::SignatureHeaders {
        timestamp: v["timestamp"].as_i64().unwrap(),
        nonce: text(v, "nonce").to_owned(),
        signature: text(v, "signature").to_owned(),
        serial: text(v, "serial").to_owned(),
    };
    wechat::verify_platform_signature(&key, &headers, text(v, "body").as_bytes()).unwrap();
    let tampered = text(v, "body").replace("签约成功", "签约失败");
    assert!(wechat::verify_platform_signature(&key, &headers, tampered.as_bytes()).is_err());

    // The envelope parses into the sandbox's type; its 16-byte key is AES-128, which the
    // sandbox's AEAD_AES_256_GCM key type refuses, so the resource is opened here directly.
    let envelope: wechat::NotificationEnvelope = serde_json::from_str(text(v, "body")).unwrap();
    assert!(matches!(
        wechat::ApiV3Key::new(text(v, "api_v3_key").as_bytes()),
        Err(wechat::WechatProtocolError::ApiV3KeyLength(16))
    ));
    let cipher = Aes128Gcm::new_from_slice(text(v, "api_v3_key").as_bytes()).unwrap();
    let plaintext = cipher
        .decrypt(
            Nonce::from_slice(envelope.resource.nonce.as_bytes()),
            Payload {
                msg: &BASE64.decode(&envelope.resource.ciphertext).unwrap(),
                aad: envelope.resource.associated_data.as_bytes(),
            },
        )
        .unwrap();
    assert_eq!(plaintext, text(v, "plaintext").as_bytes());
}

#[test]
fn wechat_a9_1_sixteen_byte_go_key_is_refused_as_an_api_v3_key() {
    let v = &vectors()["wechat"]["a9_1"];
    assert!(wechat::ApiV3Key::new(text(v, "key").as_bytes()).is_err());
    let open = |key: &str, ciphertext: &str| {
        let cipher = Aes128Gcm::new_from_slice(key.as_bytes()).unwrap();
        let sealed = BASE64.decode(ciphertext).ok()?;
        cipher
            .decrypt(
                Nonce::from_slice(text(v, "nonce").as_bytes()),
                Payload {
                    msg: &sealed,
                    aad: text(v, "associated_data").as_bytes(),
                },
            )
            .ok()
    };
    assert_eq!(
        open(text(v, "key"), text(v, "ciphertext")).unwrap(),
        text(v, "plaintext").as_bytes()
    );
    assert!(open(text(v, "wrong_key"), text(v, "ciphertext")).is_none());
    assert!(open(text(v, "key"), text(v, "short_ciphertext")).is_none());
}

#[test]
fn wechat_a9_3_aes_256_gcm_seals_and_opens_exactly() {
    let v = &vectors()["wechat"]["a9_3"];
    let key = wechat::ApiV3Key::new(text(v, "key").as_bytes()).unwrap();
    let nonce = text(v, "nonce");
    let ad = text(v, "associated_data");
    assert_eq!(
        key.seal(nonce, ad, text(v, "plaintext").as_bytes())
            .unwrap(),
        text(v, "ciphertext")
    );
    assert_eq!(
        key.open(nonce, ad, text(v, "ciphertext")).unwrap(),
        text(v, "plaintext").as_bytes()
    );
    assert!(matches!(
        key.open(nonce, "bad-associatedData", text(v, "ciphertext")),
        Err(wechat::WechatProtocolError::Aead)
    ));
    assert!(matches!(
        key.open("bad-4a9R25RW", ad, text(v, "ciphertext")),
        Err(wechat::WechatProtocolError::Aead)
    ));
    assert!(matches!(
        key.open(nonce, ad, &BASE64.encode([0u8; 128])),
        Err(wechat::WechatProtocolError::Aead)
    ));
}

const ALIPAY_APP_ID: &str = "9021000122682882";

#[test]
fn alipay_b9_1_app_request_verifies_and_the_signature_reproduces() {
    let v = &vectors()["alipay"]["b9_1"];
    let app_key = private_key(text(v, "app_key_file"));
    let mut params = params_from_content(text(v, "signing_content"));
    params.insert("sign".into(), text(v, "sign").into());
    let request = alipay::GatewayRequest::from_params(params.clone());
    assert_eq!(request.signing_content(), text(v, "signing_content"));

    let mut apps = alipay::AppKeys::new();
    apps.register(ALIPAY_APP_ID, app_key.to_public_key());
    let call = apps.verify(&request).unwrap();
    assert_eq!(call.method, "alipay.trade.query");
    assert_eq!(call.biz_content["out_trade_no"], "1703141270");

    // Through the wire: form-encode, decode once, verify.
    let body = alipay::encode_notify_body(&params);
    apps.verify(&alipay::GatewayRequest::parse(&body).unwrap())
        .unwrap();

    let reproduced = alipay::AlipaySigner::new(app_key)
        .unwrap()
        .sign(text(v, "signing_content").as_bytes())
        .unwrap();
    assert_eq!(reproduced, text(v, "sign"));

    params.insert("timestamp".into(), "2023-12-21 06:54:38".into());
    assert_eq!(
        apps.verify(&alipay::GatewayRequest::from_params(params)),
        Err(alipay::GatewayRejection::SignatureMismatch)
    );
}

#[test]
fn alipay_b9_2_and_b9_3_real_notifications_verify_without_sign_and_sign_type() {
    let all = vectors();
    for name in ["b9_2", "b9_3"] {
        let v = &all["alipay"][name];
        let key = public_key(text(v, "public_key_file"));
        let mut params = params_from_content(text(v, "signing_content"));
        params.insert("sign".into(), text(v, "sign").into());
        params.insert("sign_type".into(), "RSA2".into());
        alipay::verify_notify(&key, &params).unwrap();

        let received = form::decode(&alipay::encode_notify_body(&params)).unwrap();
        alipay::verify_notify(&key, &received).unwrap();

        let mut tampered = params.clone();
        tampered.insert("total_amount".into(), "0.02".into());
        assert!(alipay::verify_notify(&key, &tampered).is_err(), "{name}");
    }
    let b9_2 = params_from_content(text(&all["alipay"]["b9_2"], "signing_content"));
    assert_eq!(b9_2["subject"], "yansongda+测试 - 1");
    let encoded = alipay::encode_notify_body(&params_from_content(text(
        &all["alipay"]["b9_3"],
        "signing_content",
    )));
    assert!(encoded.contains("timestamp=2023-12-21+14%3A48%3A44"));
}

#[test]
fn alipay_b9_4_real_sync_response_node_verifies_from_its_raw_text() {
    let v = &vectors()["alipay"]["b9_4"];
    let key = public_key(text(v, "public_key_file"));
    let body = format!(
        "{{\"alipay_trade_query_response\":{},\"sign\":\"{}\"}}",
        text(v, "node_json"),
        text(v, "sign")
    );
    let (name, node) = alipay::verify_response_body(&key, &body).unwrap();
    assert_eq!(name, "alipay_trade_query_response");
    assert_eq!(node, text(v, "node_json"));
    // Reordering the node's keys (what re-serialising would do) breaks the signature.
    let reordered: serde_json::Map<String, Value> =
        serde_json::from_str(text(v, "node_json")).unwrap();
    let sorted = serde_json::to_string(&reordered).unwrap();
    let rebuilt = format!(
        "{{\"alipay_trade_query_response\":{sorted},\"sign\":\"{}\"}}",
        text(v, "sign")
    );
    assert!(alipay::verify_response_body(&key, &rebuilt).is_err());
}

#[test]
fn unionpay_c_v1_merchant_request_verifies_and_the_signature_reproduces() {
    let v = &vectors()["unionpay"]["c_v1"];
    let key = private_key(text(v, "private_key_file"));
    let mut fields = params_from_content(text(v, "signing_string"));
    fields.insert("signature".into(), text(v, "signature").into());
    assert_eq!(unionpay::signing_string(&fields), text(v, "signing_string"));
    assert_eq!(unionpay::signing_digest(&fields), text(v, "digest"));

    let mut certs = unionpay::MerchantCerts::new();
    certs.register(text(v, "mer_id"), text(v, "cert_id"), key.to_public_key());
    let verified = certs.verify(&fields).unwrap();
    assert_eq!(verified.cert_id, "69903319369");
    let (_, verified) = certs
        .verify_form(&unionpay::encode_notify_body(&fields))
        .unwrap();
    assert_eq!(verified.mer_id, "777290058167151");

    let reproduced = keys::sign_sha256_rsa(&key, text(v, "digest").as_bytes()).unwrap();
    assert_eq!(BASE64.encode(reproduced), text(v, "signature"));

    let mut other_cert = fields.clone();
    other_cert.insert("certId".into(), "69903319370".into());
    assert_eq!(
        certs.verify(&other_cert),
        Err(unionpay::RequestRejection::UnknownCertId(
            "69903319370".into()
        ))
    );
    let mut tampered = fields.clone();
    tampered.insert("txnAmt".into(), "2".into());
    assert_eq!(
        certs.verify(&tampered),
        Err(unionpay::RequestRejection::SignatureMismatch)
    );
}

#[test]
fn unionpay_c_v2_real_response_verifies_with_its_sign_pub_key_cert() {
    let v = &vectors()["unionpay"]["c_v2"];
    let cert_pem = fixture(text(v, "sign_pub_key_cert_file"));
    assert_eq!(unionpay::normalise_pem(&cert_pem), cert_pem);
    let mut fields: Params = serde_json::from_value(v["fields"].clone()).unwrap();
    fields.insert("signPubKeyCert".into(), cert_pem);
    assert_eq!(
        unionpay::signing_digest(&fields),
        text(v, "signing_string_sha256")
    );
    assert_eq!(
        unionpay::signing_string(&fields).chars().count() as u64,
        v["signing_string_length"].as_u64().unwrap()
    );

    let cert = unionpay::verify_platform_message(&fields, None).unwrap();
    assert_eq!(cert.serial_decimal(), text(v, "cert_serial_decimal"));
    assert_eq!(cert.subject_common_name(), Some(text(v, "cert_cn")));
    // The certificate expired on 2025-07-31.
    assert!(matches!(
        unionpay::verify_platform_message(&fields, Some(1_754_000_000)),
        Err(unionpay::UnionpayProtocolError::CertificateExpired(_))
    ));
    let mut tampered = fields.clone();
    tampered.insert("origRespCode".into(), "01".into());
    assert!(matches!(
        unionpay::verify_platform_message(&tampered, None),
        Err(unionpay::UnionpayProtocolError::SignatureMismatch)
    ));
}
