//! Vectors made by `fixtures/gen_sandbox_vectors.py` with Python `cryptography`: the sandbox must
//! accept what the Python "merchant" signed and reproduce byte for byte what the Python
//! "platform" produced.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use chrono::DateTime;
use sandbox::alipay::protocol as alipay;
use sandbox::form::Params;
use sandbox::keys::{self, CertificateInfo};
use sandbox::unionpay::protocol as unionpay;
use sandbox::wechat::protocol as wechat;
use serde_json::Value;
use sha2::{Digest, Sha256};

fn fixture(name: &str) -> String {
    let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "tests", "fixtures", name]
        .iter()
        .collect();
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn vectors() -> Value {
    serde_json::from_str(&fixture("sandbox_vectors.json")).unwrap()
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} is not a string"))
}

fn private_key(file: &str) -> rsa::RsaPrivateKey {
    keys::load_private_key_pem(&fixture(file)).unwrap()
}

fn params(v: &Value) -> Params {
    serde_json::from_value(v.clone()).unwrap()
}

#[test]
fn wechat_python_signed_requests_are_accepted() {
    let all = vectors();
    let w = &all["wechat"];
    let merchant = private_key(text(w, "merchant_key_file"));
    for (name, v) in w["requests"].as_object().unwrap() {
        let mut keys = wechat::MerchantKeys::new();
        keys.register(
            text(v, "mchid"),
            text(v, "serial_no"),
            merchant.to_public_key(),
        );
        let timestamp = v["timestamp"].as_i64().unwrap();
        let message = wechat::request_message(
            text(v, "method"),
            text(v, "target"),
            timestamp,
            text(v, "nonce"),
            text(v, "body").as_bytes(),
        );
        assert_eq!(
            String::from_utf8(message).unwrap(),
            text(v, "message"),
            "{name}"
        );
        let request = wechat::IncomingRequest {
            method: text(v, "method"),
            target: text(v, "target"),
            authorization: Some(text(v, "authorization")),
            body: text(v, "body").as_bytes(),
        };
        let auth = keys.verify_request(&request, timestamp + 10).unwrap();
        assert_eq!(auth.nonce_str, text(v, "nonce"), "{name}");

        // The raw target is signed: its decoded form must not verify.
        let decoded_target = text(v, "target").replace("%2F", "/").replace("%20", " ");
        if decoded_target != text(v, "target") {
            let decoded = wechat::IncomingRequest {
                target: &decoded_target,
                ..request
            };
            assert_eq!(
                keys.verify_request(&decoded, timestamp),
                Err(wechat::RequestRejection::SignatureMismatch)
            );
        }
    }
}

#[test]
fn wechat_platform_responses_match_python_byte_for_byte() {
    let all = vectors();
    let w = &all["wechat"];
    let platform = private_key(text(w, "platform_key_file"));
    for (name, v) in w["responses"].as_object().unwrap() {
        let signer = wechat::PlatformSigner::new(text(v, "serial"), platform.clone()).unwrap();
        let headers = signer
            .sign(
                v["timestamp"].as_i64().unwrap(),
                text(v, "nonce"),
                text(v, "body").as_bytes(),
            )
            .unwrap();
        assert_eq!(headers.signature, text(v, "signature"), "{name}");
    }
}

#[test]
fn wechat_refund_notification_matches_python_byte_for_byte() {
    let all = vectors();
    let w = &all["wechat"];
    let v = &w["refund_notification"];
    let key = wechat::ApiV3Key::new(text(v, "api_v3_key").as_bytes()).unwrap();
    let draft = wechat::NotificationDraft {
        id: text(v, "id"),
        create_time: DateTime::parse_from_rfc3339(text(v, "create_time")).unwrap(),
        event_type: wechat::EventType::RefundSuccess,
        summary: None,
        associated_data: text(v, "associated_data"),
        nonce: text(v, "resource_nonce"),
        plaintext: text(v, "plaintext").as_bytes(),
    };
    let envelope = wechat::NotificationEnvelope::seal(&key, &draft).unwrap();
    assert_eq!(envelope.resource.ciphertext, text(v, "ciphertext"));
    let body = envelope.to_body().unwrap();
    assert_eq!(body, text(v, "body"));
    let signer =
        wechat::PlatformSigner::new(text(v, "serial"), private_key(text(w, "platform_key_file")))
            .unwrap();
    let headers = signer
        .sign(
            v["timestamp"].as_i64().unwrap(),
            text(v, "nonce"),
            body.as_bytes(),
        )
        .unwrap();
    assert_eq!(headers.signature, text(v, "signature"));
}

#[test]
fn alipay_python_signed_request_is_accepted_from_its_form_body() {
    let all = vectors();
    let v = &all["alipay"]["request"];
    let request = alipay::GatewayRequest::parse(text(v, "form_body")).unwrap();
    assert_eq!(request.signing_content(), text(v, "signing_content"));
    let mut apps = alipay::AppKeys::new();
    apps.register(
        text(&v["params"], "app_id"),
        private_key(text(v, "app_key_file")).to_public_key(),
    );
    let call = apps.verify(&request).unwrap();
    assert_eq!(call.method, "alipay.trade.refund");
    assert_eq!(call.biz_content["refund_reason"], "正常退款 & 测试+1");
    assert_eq!(
        alipay::parse_trade_amount(call.biz_content["refund_amount"].as_str().unwrap()),
        Ok(50)
    );
}

#[test]
fn alipay_sync_response_and_notify_match_python_byte_for_byte() {
    let all = vectors();
    let a = &all["alipay"];
    let signer = alipay::AlipaySigner::new(private_key(text(a, "platform_key_file"))).unwrap();

    let v = &a["response"];
    assert_eq!(
        alipay::response_node_name(text(v, "method")).unwrap(),
        text(v, "node_name")
    );
    let body = signer
        .sign_raw_response(text(v, "node_name"), text(v, "node_json"))
        .unwrap();
    assert_eq!(body, text(v, "body"));

    let v = &a["notify"];
    let signed = signer.sign_notify(params(&v["params"])).unwrap();
    assert_eq!(signed["sign"], text(v, "sign"));
    assert_eq!(alipay::encode_notify_body(&signed), text(v, "form_body"));
}

#[test]
fn unionpay_python_signed_request_is_accepted_from_its_form_body() {
    let all = vectors();
    let v = &all["unionpay"]["request"];
    let mut certs = unionpay::MerchantCerts::new();
    let fields = params(&v["fields"]);
    certs.register(
        &fields["merId"],
        &fields["certId"],
        private_key(text(v, "merchant_key_file")).to_public_key(),
    );
    let (decoded, verified) = certs.verify_form(text(v, "form_body")).unwrap();
    assert_eq!(verified.cert_id, "69903319369");
    assert_eq!(
        unionpay::signing_string(&decoded),
        text(v, "signing_string")
    );
    assert_eq!(unionpay::signing_digest(&decoded), text(v, "digest"));
}

#[test]
fn unionpay_notification_matches_python_byte_for_byte() {
    let all = vectors();
    let u = &all["unionpay"];
    let cert = CertificateInfo::from_pem(&fixture(text(u, "platform_cert_file"))).unwrap();
    assert_eq!(cert.serial_decimal(), text(u, "platform_cert_id"));
    let signer =
        unionpay::PlatformSigner::new(private_key(text(u, "platform_key_file")), cert).unwrap();

    let v = &u["notify"];
    let signed = signer.sign(params(&v["fields_before_signing"])).unwrap();
    assert_eq!(signed["signature"], text(v, "signature"));
    assert_eq!(unionpay::signing_digest(&signed), text(v, "digest"));
    assert_eq!(
        hex::encode(Sha256::digest(unionpay::signing_string(&signed).as_bytes())),
        text(v, "signing_string_sha256")
    );
    assert_eq!(unionpay::encode_notify_body(&signed), text(v, "form_body"));
    unionpay::verify_platform_message(&signed, Some(1_704_081_600)).unwrap();

    let body = unionpay::encode_sync_response(&signed).unwrap();
    assert_eq!(unionpay::parse_sync_response(&body), signed);
}
