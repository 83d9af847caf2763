//! Vectors from CHANNEL_PROTOCOLS.md §A9 (official SDK tests and SELF-COMPUTED ones with the keys the
//! Java SDK publishes), the independent Python vectors, and negative cases.

use aes_gcm::Aes128Gcm;
use chrono::TimeZone as _;
use serde_json::Value;

use super::*;
use crate::status::{PaymentStatus, RefundState, RefundStatus, TradeState};
use crate::wire::{CertificatesResponse, RefundNotifyResource, Transaction};

const MERCHANT_KEY: &str =
    include_str!("../../tests/fixtures/wechatpay_java_sdk_test_merchant_private_key.pem");
const PLATFORM_KEY: &str =
    include_str!("../../tests/fixtures/wechatpay_java_sdk_test_platform_private_key.pem");
const PLATFORM_PUBLIC_KEY: &str =
    include_str!("../../tests/fixtures/wechatpay_java_sdk_test_platform_public_key.pem");
const GO_NOTIFY_PUBLIC_KEY: &str =
    include_str!("../../tests/fixtures/wechatpay_go_sdk_test_notify_public_key.pem");
const DOWNLOAD_CERTIFICATE_RESPONSE: &str =
    include_str!("../../tests/fixtures/wechatpay_java_sdk_test_download_certificate_response.json");
const INDEPENDENT: &str = include_str!("../../tests/fixtures/independent_vectors.json");

const MERCHANT_SERIAL: &str = "5F1C72E2A8931B72A2E13AF8DEE92471EB397115";
const PLATFORM_SERIAL: &str = "440024045C4A427599D09BB4E3DE0279F2E813FD";
const API_V3_KEY: &str = "a7cde1ZJB1kG2e7VfTs3jQzaWizur8Gb";

fn merchant() -> MerchantSigner {
    MerchantSigner::from_pkcs8_pem("1234567891", MERCHANT_SERIAL, MERCHANT_KEY).unwrap()
}

fn platform_verifier() -> PlatformVerifier {
    let mut verifier = PlatformVerifier::new();
    verifier
        .add_public_key_pem(PLATFORM_SERIAL, PLATFORM_PUBLIC_KEY)
        .unwrap();
    verifier
}

fn at(unix: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(unix, 0).unwrap()
}

fn headers<'a>(
    timestamp: &'a str,
    nonce: &'a str,
    signature: &'a str,
    serial: &'a str,
) -> WechatpayHeaders<'a> {
    WechatpayHeaders {
        timestamp,
        nonce,
        signature,
        serial,
        signature_type: None,
    }
}

fn independent() -> Value {
    serde_json::from_str(INDEPENDENT).unwrap()
}

fn s(value: &Value) -> &str {
    value.as_str().unwrap()
}

// ---------------------------------------------------------------- §A9 vector 4 and V5..V7: requests

#[test]
fn a9_4_java_sdk_message_for_a_get_with_query() {
    let message = request_message(
        "GET",
        "https://api.mch.weixin.qq.com/v3/pay/transactions/id/1217752501201407033233368018?mchid=1230000109",
        1652750623,
        "eBYqCOxa0QudMnPvVilkTzOg3gHh5Z3u",
        "",
    )
    .unwrap();
    assert_eq!(
        message,
        "GET\n/v3/pay/transactions/id/1217752501201407033233368018?mchid=1230000109\n1652750623\neBYqCOxa0QudMnPvVilkTzOg3gHh5Z3u\n\n"
    );
    let header = merchant()
        .authorization(
            "GET",
            "https://api.mch.weixin.qq.com/v3/pay/transactions/id/1217752501201407033233368018?mchid=1230000109",
            1652750623,
            "eBYqCOxa0QudMnPvVilkTzOg3gHh5Z3u",
            "",
        )
        .unwrap();
    assert!(header.starts_with(
        "WECHATPAY2-SHA256-RSA2048 mchid=\"1234567891\",nonce_str=\"eBYqCOxa0QudMnPvVilkTzOg3gHh5Z3u\",timestamp=\"1652750623\",serial_no=\"5F1C72E2A8931B72A2E13AF8DEE92471EB397115\",signature=\""
    ));
}

#[test]
fn v5_official_doc_message_signature() {
    let message = request_message(
        "GET",
        "/v3/certificates",
        1554208460,
        "593BEC0C930BF1AFEB40B4A08C8FB242",
        "",
    )
    .unwrap();
    assert_eq!(
        message,
        "GET\n/v3/certificates\n1554208460\n593BEC0C930BF1AFEB40B4A08C8FB242\n\n"
    );
    assert_eq!(
        merchant().sign(message.as_bytes()).unwrap(),
        "Yql2HJi5R+/B/WzOlH5KqIUNOCTrECi808qopAT8Pk2vUdtZln2Wmz/zkA6+HpMD7BuThk5ikNOpI7+8yVt+wLdak6RZPOd3ZUMwfgmrN2Vl2aF7yjFov07paW3Dix7NAL+J402H92DUu8LCSbzoU2XnNNHGFCxR7Zkkp3V/QYau9vml2BTQi87rqaq5xpYGPfBbPtPUEcvoYjhIlrplVh89P8/ktk4H+PG22zBongaOlQYPVTx3k2vlik7PWc+wX225vk4C8ryZ8e/l4XwyRQf7kWEJCBKT1GBPNzbO18N2UMJDyGkyuYwhyWSJ9QomxYwZWUGExbo/68Ao6yLcKA=="
    );
}

#[test]
fn v6_jsapi_prepay_authorization_header() {
    let body = r#"{"appid":"wxd678efh567hg6787","mchid":"1234567891","description":"Image形象店-深圳腾大-QQ公仔","out_trade_no":"1217752501201407033233368018","notify_url":"https://www.weixin.qq.com/wxpay/pay.php","amount":{"total":100,"currency":"CNY"},"payer":{"openid":"oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"}}"#;
    let url = "https://api.mch.weixin.qq.com/v3/pay/transactions/jsapi";
    let nonce = "5K8264ILTKCH16CQ2502SI8ZNMTM67VS";
    assert_eq!(
        request_message("POST", url, 1700000000, nonce, body).unwrap(),
        format!("POST\n/v3/pay/transactions/jsapi\n1700000000\n{nonce}\n{body}\n")
    );
    let signature = "ie3ehOz0KdMKPn/uH9Fi1G20TVpm7wbAD4GNouQsQgMnJt/53iI69fwuW05/2vHxf+qvLR5gUKJsR4vENXZk9Xa/tDO+OYqYyJ9B4kxjmxfYNuJp2CLXaYWznawB00RmnC98kqBtqjjVPH6kMsdncP/vVcIxij9fZamj4Pxtc3XvU2wQ1rbMS38A9uc+VtzNqx2svuZXSVE3cPeSmVP3ij2zEpC/8Rio5GXukoVVTZn1qpfrZvOluaxo5cfVZ3L9TlbnR6AL+AnL0QmxAENGw9M94py/jBeBxhuVlzhgRqcVRjxsE3zOqoD13uHy0PI1j6Wm5xmhsUwPuym/oUISNg==";
    assert_eq!(
        merchant()
            .authorization("POST", url, 1700000000, nonce, body)
            .unwrap(),
        format!(
            "WECHATPAY2-SHA256-RSA2048 mchid=\"1234567891\",nonce_str=\"{nonce}\",timestamp=\"1700000000\",serial_no=\"{MERCHANT_SERIAL}\",signature=\"{signature}\""
        )
    );
}

#[test]
fn v7_get_with_query_string_signature() {
    let message = request_message(
        "GET",
        "/v3/pay/transactions/out-trade-no/1217752501201407033233368018?mchid=1234567891",
        1700000001,
        "C5AC7061FCCAB6BF3E254DCF98995B8C",
        "",
    )
    .unwrap();
    assert_eq!(
        merchant().sign(message.as_bytes()).unwrap(),
        "iQ9S9NHSd9QUEKw5w0Oi8wH/7B14s8N4g1GlNssfUnAC6e/MMSJ3WT1T5+1Lf4v5HTDSz2D7TIDUpUtWYGuowaLLAXmO+RLC36JTt8c1+b1h/b5rX4dCFdO3n1rM6o33AJyjm+qT/OQl2+aVcJrHaCl+ma6kg9VmQC29jmwXjZ1LmMPf776kXclZW1ZKWJXbXgHICWSYzBvpiOk9L/ca2SvNV0S3rlT0N0Iq7lUulF1Jhl+DTyNk7qB4ARcxz42lC2R64Izwcd1CP5gTLSt4SCVMQF8kR1duLe13++d6nch1p/PB5Zjt5ygQxRV6uzkdg24xWr5dFsk1WzMCkRGVxw=="
    );
}

// ---------------------------------------------------------------- V8..V10: responses, notify, paySign

const V8_SIGNATURE: &str = "NelIwx6w5bqKFZu2JWO4mR0HLWgWFl0sRkc3oJfBDH4CKv5odsFAdGk/7uPL98dmWoBt/Oj34kP8+bqIA3Jh9Fk1HCZE0xX5GJfaKXTFaHV5kJZLecgFxfqzUTU2XnlEzzApyMGqtpW2zHcWA0LZdm4euRXC/2qtYwds9Bd4gV419iurN3IzYGuClSxRqs51AOPLsdYU+1c8qWisMZc8pqPuYam6IX1Km0tBeME1/wS+4R1vqlHdNVbyitoM7XAcTty8PsqbFMcrbASqPB4kTJF/5yqJN8R5wLHm7ms6phdWXqdGn+Qa2MPV+K6ESOzgdxN2Rq27dgvF6Us+7RJpcQ==";
const V8_BODY: &str = r#"{"prepay_id":"wx26112221580621e9b071c00d9e093b0000"}"#;

#[test]
fn v8_response_signature_verifies() {
    let h = headers(
        "1700000002",
        "c5ac7061fccab6bf3e254dcf98995b8c",
        V8_SIGNATURE,
        PLATFORM_SERIAL,
    );
    platform_verifier()
        .verify(&h, V8_BODY.as_bytes(), at(1700000002))
        .unwrap();
}

#[test]
fn v8_also_verifies_under_a_public_key_id() {
    let mut verifier = PlatformVerifier::new();
    verifier
        .add_public_key_pem(
            "PUB_KEY_ID_0000000000000024101100397200000006",
            PLATFORM_PUBLIC_KEY,
        )
        .unwrap();
    let h = headers(
        "1700000002",
        "c5ac7061fccab6bf3e254dcf98995b8c",
        V8_SIGNATURE,
        "PUB_KEY_ID_0000000000000024101100397200000006",
    );
    verifier
        .verify(&h, V8_BODY.as_bytes(), at(1700000100))
        .unwrap();
}

const V9_BODY: &str = r#"{"id":"EV-2018022511223320873","create_time":"2024-01-01T12:00:05+08:00","resource_type":"encrypt-resource","event_type":"TRANSACTION.SUCCESS","summary":"支付成功","resource":{"original_type":"transaction","algorithm":"AEAD_AES_256_GCM","ciphertext":"eVkeP/EB+SNVFo6wCO4F2KXci7J18cQhoqLL4lK9FdvLqp7i5OIYHV19Xcfj2tCyqm2npP8+KqYChkOnWmPkbbowdqoAJ9fLSk8hwTp2KPwm7GuaRzlXxV3gHqQ2sIdBga3zPER+aIe8l5T4bIBG8JtA1AH6ptMmZzR2qxcXUoqyK1ykHITDsur/01dATMlqz1dUWhIiIjYkE4/xErhtjKLDt8tAarkRCApstxZj5s0flVAgzs7T3R/98sof0D7RgAFsH5kTvl8/aF0n01JZqC+0bvkpbGlS1CHVMlxRpVjNSJh5qiuco8dSC3liyylY9Eqyfi/Igw48gR72xGd3BcLjPtCIqjMWFjQzntjXB37qFr+ttD43jcmpeR74VStaCYKxT/3NDNK8fsqNzDKUrYiECPwh1oZTmtcZzud4KMMOAfBJs9sV3NcowXlGHYn4KyG8P4jubrwjqZ+DPQ99U+RM/GV4aA4/VkJCnMorVb68NmvifXQneTcJ/LK5lPU5uvfr5FV++GmxszqH830EryyH1HAABMl9YWWUaNp3ze8azj1YWrEVSnh8fUjmyG2rzo8G1PHU7wPEG993Eq2f","associated_data":"transaction","nonce":"fG1l57vn9BCX"}}"#;
const V9_SIGNATURE: &str = "2WOAQJpsRlHG/K2HRNqUyqN+v/tBXtQr21Vm9vTa/8jhFwM2piQhu9Rk9uQymOTEcS3he0Ly8bC+10amDanGotOnUS39brRAn1iMZJlnPE1HNCXcXW5J94WvBqYjvM9Cv2I1opVHqmjn9dbV3cG1B0o0+rip2fbSMYjAH7wDE90TpACLDYUMvfWNXO86ESG3S4wVeY6ksBE0OrnKrhX9G4lpmiRoNDWBgrVZU9G7LJvWLAxt+L9aFWru6PBtPfQrto7wyHK/ditlQ+cNowvyTU+HjxoHdwzQojAIq2ORIn6g8OLj5mxWFF+v2WrS66UR2gDEtXA2K51sH1HYa9xMZg==";
const V9_NONCE: &str = "0a1b2c3d4e5f60718293a4b5c6d7e8f9";

#[test]
fn v9_transaction_success_notification_opens() {
    let h = headers("1704081605", V9_NONCE, V9_SIGNATURE, PLATFORM_SERIAL);
    let key = ApiV3Key::new(API_V3_KEY).unwrap();
    let opened = platform_verifier()
        .open_notification(&h, V9_BODY.as_bytes(), at(1704081605), &key)
        .unwrap();
    assert_eq!(opened.envelope.event_type, "TRANSACTION.SUCCESS");
    assert_eq!(
        opened.plaintext,
        r#"{"mchid":"1234567891","appid":"wxd678efh567hg6787","out_trade_no":"1217752501201407033233368018","transaction_id":"4200000000202401010000000001","trade_type":"JSAPI","trade_state":"SUCCESS","trade_state_desc":"支付成功","bank_type":"OTHERS","attach":"","success_time":"2024-01-01T12:00:00+08:00","payer":{"openid":"oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"},"amount":{"total":100,"payer_total":100,"currency":"CNY","payer_currency":"CNY"}}"#
    );
    let transaction: Transaction = opened.resource().unwrap();
    assert_eq!(
        TradeState::parse(&transaction.trade_state).payment_status(),
        PaymentStatus::Succeeded
    );
    assert_eq!(transaction.amount.unwrap().total, Some(100));
}

#[test]
fn v9_with_a_tampered_body_is_refused() {
    let tampered = V9_BODY.replace("TRANSACTION.SUCCESS", "TRANSACTION.SUCCESs");
    let h = headers("1704081605", V9_NONCE, V9_SIGNATURE, PLATFORM_SERIAL);
    let key = ApiV3Key::new(API_V3_KEY).unwrap();
    let err = platform_verifier()
        .open_notification(&h, tampered.as_bytes(), at(1704081605), &key)
        .unwrap_err();
    assert!(
        matches!(err, NotificationError::Verify(VerifyError::BadSignature)),
        "{err:?}"
    );
}

#[test]
fn v9_with_the_wrong_api_v3_key_does_not_decrypt() {
    let h = headers("1704081605", V9_NONCE, V9_SIGNATURE, PLATFORM_SERIAL);
    let wrong = ApiV3Key::new("a7cde1ZJB1kG2e7VfTs3jQzaWizur8Gc").unwrap();
    let err = platform_verifier()
        .open_notification(&h, V9_BODY.as_bytes(), at(1704081605), &wrong)
        .unwrap_err();
    assert!(
        matches!(
            err,
            NotificationError::Decrypt(DecryptError::Authentication)
        ),
        "{err:?}"
    );
}

#[test]
fn v10_jsapi_pay_sign() {
    let params = merchant()
        .jsapi_pay_params(
            "wxd678efh567hg6787",
            "wx26112221580621e9b071c00d9e093b0000",
            1700000003,
            "593BEC0C930BF1AFEB40B4A08C8FB242",
        )
        .unwrap();
    assert_eq!(
        params.pay_sign,
        "YPzPCG3dz6m6Msdgp1DqLX+LLJcH6HtA8rdFNvBTw06NhBcqn7RDYJ/V2IXwtTgHqPYirATxfphzEJpsMm8GbGkQAwyihsdw9InDicjmeG6kHGYNPVN4+2bCWxPYm7EUkcdsGg5psCeT6cmbchj6m/wb93J8kNUum5N/NA8fddUtMFvlbqZcpCgbOEtR1MhUn99O41jI+hgDWq181ICdQfz0Z1rOGPN7XKS+E86NzDYHW6wD+5jeosISIM/raFWTzB67I8dOBCY7Az37NvSmuHXCA/Wvr7Qy7IsplwW2YdG9xrcMh3bFs4cgkKMC7o4KYRqXJ/2QCcODiXrbtq4P6A=="
    );
    let json = serde_json::to_value(&params).unwrap();
    assert_eq!(json["appId"], "wxd678efh567hg6787");
    assert_eq!(json["timeStamp"], "1700000003");
    assert_eq!(json["nonceStr"], "593BEC0C930BF1AFEB40B4A08C8FB242");
    assert_eq!(
        json["package"],
        "prepay_id=wx26112221580621e9b071c00d9e093b0000"
    );
    assert_eq!(json["signType"], "RSA");
}

// ---------------------------------------------------------------- §A9 vectors 1..3: the SDKs' own tests

/// The Go SDK's tests use 16-byte keys, i.e. AES-128-GCM; the production path only takes 32 bytes.
fn open_aes_128(
    key: &str,
    nonce: &str,
    aad: &str,
    ciphertext: &str,
) -> Result<String, DecryptError> {
    let cipher = Aes128Gcm::new_from_slice(key.as_bytes()).unwrap();
    open_gcm(&cipher, nonce, aad, ciphertext)
}

#[test]
fn a9_1_go_sdk_aes_gcm_vector_and_its_negative_cases() {
    let (nonce, aad) = ("wCq51qZv4Yfg", "Dl56FrqWQJF1t9LtC3vEUsniZKvbqdR8");
    assert_eq!(
        open_aes_128(
            "testAPIv3Key0000",
            nonce,
            aad,
            "FsdXzxryWfKwvLJKf8LG/ToRPTRh8RN9wROC"
        )
        .unwrap(),
        "Hello World"
    );
    assert_eq!(
        open_aes_128("testAPIv3Key0000", nonce, aad, "not base64!"),
        Err(DecryptError::Base64)
    );
    assert_eq!(
        open_aes_128("testAPIv3Key0000", nonce, aad, "SGVsbG8gV29ybGQK"),
        Err(DecryptError::Authentication)
    );
    assert_eq!(
        open_aes_128(
            "testAPIv3Key1111",
            nonce,
            aad,
            "FsdXzxryWfKwvLJKf8LG/ToRPTRh8RN9wROC"
        ),
        Err(DecryptError::Authentication)
    );
    // A key of a non-AES length never becomes an APIv3 key.
    assert!(matches!(
        ApiV3Key::new("testAPIv3Key0000"),
        Err(KeyError::ApiV3KeyLength(16))
    ));
    assert!(matches!(
        ApiV3Key::new("testAPIv3Key000"),
        Err(KeyError::ApiV3KeyLength(15))
    ));
}

#[test]
fn a9_2_go_sdk_notification_verifies_and_decrypts() {
    let body = r#"{"id":"3119dfba-e649-5eec-ab1e-3412bc4d2e17","create_time":"2021-06-24T16:37:26+08:00","resource_type":"encrypt-resource","event_type":"PAYSCORE.USER_OPEN_SERVICE","summary":"签约成功","resource":{"original_type":"payscore","algorithm":"AEAD_AES_256_GCM","ciphertext":"YDS3lKPaC4Y52Gf3uhft5qUBlIa8b428AWTtTauHQfQrRw+X1WpiuHIDy0vo1Vd6VEq67aVyqPdDYMkRVSDaZL3iZttevRMOoPKMifozg6XPWjIZumks/GpT48lI4NizyeaqLBokNebthah3o1H76qSlO9NkDjp9bzmKLEYYH9TEklFUpsvPqOTOcgSLgh21YJXYR7dEBXFgRLiNIKRgO5JdXh1hccRUAlyVWxE54PXpnQ==","associated_data":"payscore","nonce":"Kj7QIyUiYx1q"}}"#;
    let signature = "tJHIiIS9eB2hAYstmAmbbD3ZE5LiIm/Ug5tuL4fC0YOFRWIHV39UFIZXC0e9Wl6lBu6sKvkqDkzpqzBsVHyXFlbYZTOQrVdG4b6LfTnK4mikv9++ixJMd3vTf2yCqvBkh98zs3Ds5zsYQakzbcwhmw4fMJs4nPLws28H0UW9FjDR//rxELLwXvV1VEA1IBLX70xptjL8hrfUjEE8kkry6yNJTHZRU8CAc7qHli2Ng1V1qb9ARbK8A3ThmFmPQvRGrapI/jS2laKKgYUmfdEdkNO6B2Cke5e8VTxY406ArAmQ90GAihDwIcb16TQMnzCMBoutnwZKNiKRACrFmtxw2Q==";
    let mut verifier = PlatformVerifier::new();
    verifier
        .add_public_key_pem("D7CE59D1F522D701", GO_NOTIFY_PUBLIC_KEY)
        .unwrap();
    let h = WechatpayHeaders {
        timestamp: "1624523846",
        nonce: "EcZ9Cmy4Xyx1i6RlJQzLcCyEqDa26NBz",
        signature,
        serial: "D7CE59D1F522D701",
        signature_type: Some(SCHEME),
    };
    verifier
        .verify(&h, body.as_bytes(), at(1624523846))
        .unwrap();

    let envelope: NotifyEnvelope = serde_json::from_str(body).unwrap();
    let resource = &envelope.resource;
    assert_eq!(
        open_aes_128(
            "testMchAPIv3Key0",
            &resource.nonce,
            &resource.associated_data,
            &resource.ciphertext
        )
        .unwrap(),
        r#"{"mchid":"1234567890","appid":"054aa7d7a2a54ab5898df65bd96f001c","create_time":"2020-06-30T12:12:00+08:00","out_contract_code":"21640bdbd08e473e828f3206a2741c6e"}"#
    );
    // The production path refuses the 16-byte key rather than silently switching to AES-128.
    assert!(ApiV3Key::new("testMchAPIv3Key0").is_err());
}

#[test]
fn a9_3_java_sdk_aes_256_gcm_both_directions() {
    let key = ApiV3Key::new(API_V3_KEY).unwrap();
    let ciphertext = "ulwSiIajGClcvcOYvOQ7+l+0PAbzzwI=";
    assert_eq!(
        decrypt_aes_256_gcm(&key, "uluk4a9R25RW", "associatedData", ciphertext).unwrap(),
        "message"
    );

    // Encryption is not part of the adapter; check the vector's other direction with the same cipher.
    let cipher = Aes256Gcm::new_from_slice(API_V3_KEY.as_bytes()).unwrap();
    let sealed = cipher
        .encrypt(
            Nonce::from_slice(b"uluk4a9R25RW"),
            Payload {
                msg: b"message",
                aad: b"associatedData",
            },
        )
        .unwrap();
    assert_eq!(BASE64.encode(sealed), ciphertext);

    assert_eq!(
        decrypt_aes_256_gcm(&key, "uluk4a9R25RW", "bad-associatedData", ciphertext),
        Err(DecryptError::Authentication)
    );
    assert_eq!(
        decrypt_aes_256_gcm(&key, "bad-4a9R25RW", "associatedData", ciphertext),
        Err(DecryptError::Authentication)
    );
    let zeros = BASE64.encode([0u8; 128]);
    assert_eq!(
        decrypt_aes_256_gcm(&key, "uluk4a9R25RW", "associatedData", &zeros),
        Err(DecryptError::Authentication)
    );
}

#[test]
fn a9_3_java_sdk_downloaded_certificate_decrypts_to_its_serial() {
    let response: CertificatesResponse =
        serde_json::from_str(DOWNLOAD_CERTIFICATE_RESPONSE).unwrap();
    let entry = &response.data[0];
    let key = ApiV3Key::new(API_V3_KEY).unwrap();
    let pem = decrypt_resource(&key, &entry.encrypt_certificate).unwrap();
    assert_eq!(pem.len(), 1475);
    let mut verifier = PlatformVerifier::new();
    let serial = verifier.add_certificate_pem(&pem).unwrap();
    assert_eq!(serial, "5DEA10EF55877E3CF6C33255C2E7DEFFF7E427EC");
    assert_eq!(serial, entry.serial_no);
    assert!(verifier.contains("5dea10ef55877e3cf6c33255c2e7defff7e427ec"));
}

// ---------------------------------------------------------------- independent Python vectors

#[test]
fn independent_request_signatures_are_byte_identical() {
    let v = independent();
    for case in v["request_signatures"].as_array().unwrap() {
        let timestamp = case["timestamp"].as_i64().unwrap();
        let message = request_message(
            s(&case["method"]),
            s(&case["url"]),
            timestamp,
            s(&case["nonce"]),
            s(&case["body"]),
        )
        .unwrap();
        assert_eq!(message, s(&case["message"]));
        assert_eq!(
            merchant().sign(message.as_bytes()).unwrap(),
            s(&case["signature"])
        );
        let header = merchant()
            .authorization(
                s(&case["method"]),
                s(&case["url"]),
                timestamp,
                s(&case["nonce"]),
                s(&case["body"]),
            )
            .unwrap();
        assert_eq!(header, s(&case["authorization"]));
    }
}

#[test]
fn independent_response_signatures_verify() {
    let v = independent();
    let verifier = platform_verifier();
    for case in v["response_signatures"].as_array().unwrap() {
        let ts = s(&case["timestamp"]);
        let h = headers(
            ts,
            s(&case["nonce"]),
            s(&case["signature"]),
            s(&case["serial"]),
        );
        let now = at(ts.parse::<i64>().unwrap() + 10);
        verifier
            .verify(&h, s(&case["body"]).as_bytes(), now)
            .unwrap();
        // The platform's own signature is deterministic too: signing with its key gives Python's bytes.
        let platform = MerchantSigner::from_pkcs8_pem("-", PLATFORM_SERIAL, PLATFORM_KEY).unwrap();
        let message = response_message(ts, s(&case["nonce"]), s(&case["body"]).as_bytes());
        assert_eq!(platform.sign(&message).unwrap(), s(&case["signature"]));
    }
}

#[test]
fn independent_aead_ciphertexts_decrypt() {
    let v = independent();
    let key = ApiV3Key::new(s(&v["api_v3_key"])).unwrap();
    for case in v["aead"].as_array().unwrap() {
        let plaintext = decrypt_aes_256_gcm(
            &key,
            s(&case["nonce"]),
            s(&case["associated_data"]),
            s(&case["ciphertext"]),
        )
        .unwrap();
        assert_eq!(plaintext, s(&case["plaintext"]));
    }
}

#[test]
fn independent_refund_notification_opens() {
    let v = independent();
    let n = &v["refund_notification"];
    let key = ApiV3Key::new(s(&v["api_v3_key"])).unwrap();
    let ts = s(&n["timestamp"]);
    let h = headers(ts, s(&n["nonce"]), s(&n["signature"]), s(&n["serial"]));
    let opened = platform_verifier()
        .open_notification(
            &h,
            s(&n["body"]).as_bytes(),
            at(ts.parse::<i64>().unwrap() - 299),
            &key,
        )
        .unwrap();
    assert_eq!(opened.plaintext, s(&n["plaintext"]));
    assert_eq!(
        opened.envelope.resource.original_type.as_deref(),
        Some("refund")
    );
    let refund: RefundNotifyResource = opened.resource().unwrap();
    assert_eq!(
        RefundState::parse(&refund.refund_status).refund_status(),
        RefundStatus::Succeeded
    );
    assert_eq!(refund.amount.refund, 1);
}

#[test]
fn independent_pay_sign_is_byte_identical() {
    let v = independent();
    let p = &v["pay_sign"];
    let params = merchant()
        .jsapi_pay_params(
            s(&p["app_id"]),
            s(&p["prepay_id"]),
            p["timestamp"].as_i64().unwrap(),
            s(&p["nonce"]),
        )
        .unwrap();
    assert_eq!(params.pay_sign, s(&p["pay_sign"]));
}

#[test]
fn independent_certificate_download_round_trip() {
    let v = independent();
    let c = &v["certificate_download"];
    let key = ApiV3Key::new(s(&v["api_v3_key"])).unwrap();
    let response: CertificatesResponse = serde_json::from_str(s(&c["body"])).unwrap();
    let pem = decrypt_resource(&key, &response.data[0].encrypt_certificate).unwrap();
    assert_eq!(pem, s(&c["certificate_pem"]));

    let mut verifier = PlatformVerifier::new();
    let serial = verifier.add_certificate_pem(&pem).unwrap();
    // Leading zero nibble dropped, as WeChat prints serials.
    assert_eq!(serial, "123456789ABCDEF0123");
    assert_eq!(serial, s(&c["serial"]));

    let r = &c["response"];
    let ts = s(&r["timestamp"]);
    let now = at(ts.parse().unwrap());
    verifier
        .verify(
            &headers(ts, s(&r["nonce"]), s(&r["signature"]), &serial),
            s(&c["body"]).as_bytes(),
            now,
        )
        .unwrap();
    // The same serial written with its leading zero still finds the certificate.
    verifier
        .verify(
            &headers(
                ts,
                s(&r["nonce"]),
                s(&r["signature"]),
                "0123456789abcdef0123",
            ),
            s(&c["body"]).as_bytes(),
            now,
        )
        .unwrap();
}

// ---------------------------------------------------------------- negative cases

fn v8_headers<'a>(signature: &'a str, serial: &'a str, timestamp: &'a str) -> WechatpayHeaders<'a> {
    headers(
        timestamp,
        "c5ac7061fccab6bf3e254dcf98995b8c",
        signature,
        serial,
    )
}

#[test]
fn a_tampered_body_is_a_bad_signature() {
    let h = v8_headers(V8_SIGNATURE, PLATFORM_SERIAL, "1700000002");
    let body = V8_BODY.replace("wx26", "wx27");
    assert_eq!(
        platform_verifier().verify(&h, body.as_bytes(), at(1700000002)),
        Err(VerifyError::BadSignature)
    );
    // Re-serializing (here: adding a space) also breaks it: the raw body is what is signed.
    let spaced = V8_BODY.replace(':', ": ");
    assert_eq!(
        platform_verifier().verify(&h, spaced.as_bytes(), at(1700000002)),
        Err(VerifyError::BadSignature)
    );
}

#[test]
fn a_signature_by_another_key_is_a_bad_signature() {
    // The merchant key signing the platform's message: well-formed, wrong key.
    let forged = merchant()
        .sign(&response_message(
            "1700000002",
            "c5ac7061fccab6bf3e254dcf98995b8c",
            V8_BODY.as_bytes(),
        ))
        .unwrap();
    let h = v8_headers(&forged, PLATFORM_SERIAL, "1700000002");
    assert_eq!(
        platform_verifier().verify(&h, V8_BODY.as_bytes(), at(1700000002)),
        Err(VerifyError::BadSignature)
    );
}

#[test]
fn wechat_signature_probes_are_refused() {
    let probe = format!("WECHATPAY/SIGNTEST/{}", &V8_SIGNATURE[19..]);
    let h = v8_headers(&probe, PLATFORM_SERIAL, "1700000002");
    assert_eq!(
        platform_verifier().verify(&h, V8_BODY.as_bytes(), at(1700000002)),
        Err(VerifyError::BadSignature)
    );
    let h = v8_headers("not base64 at all", PLATFORM_SERIAL, "1700000002");
    assert_eq!(
        platform_verifier().verify(&h, V8_BODY.as_bytes(), at(1700000002)),
        Err(VerifyError::BadSignature)
    );
}

#[test]
fn an_unknown_serial_is_its_own_error() {
    let h = v8_headers(
        V8_SIGNATURE,
        "5F1C72E2A8931B72A2E13AF8DEE92471EB397115",
        "1700000002",
    );
    assert_eq!(
        platform_verifier().verify(&h, V8_BODY.as_bytes(), at(1700000002)),
        Err(VerifyError::UnknownSerial(
            "5F1C72E2A8931B72A2E13AF8DEE92471EB397115".into()
        ))
    );
}

#[test]
fn the_timestamp_window_is_300_seconds_either_way() {
    let h = v8_headers(V8_SIGNATURE, PLATFORM_SERIAL, "1700000002");
    let verifier = platform_verifier();
    verifier
        .verify(&h, V8_BODY.as_bytes(), at(1700000002 + 299))
        .unwrap();
    verifier
        .verify(&h, V8_BODY.as_bytes(), at(1700000002 - 299))
        .unwrap();
    assert_eq!(
        verifier.verify(&h, V8_BODY.as_bytes(), at(1700000002 + 300)),
        Err(VerifyError::StaleTimestamp {
            timestamp: 1700000002,
            skew_secs: 300
        })
    );
    assert_eq!(
        verifier.verify(&h, V8_BODY.as_bytes(), at(1700000002 - 301)),
        Err(VerifyError::StaleTimestamp {
            timestamp: 1700000002,
            skew_secs: 301
        })
    );
}

#[test]
fn a_stale_notification_is_refused_before_decryption() {
    let h = headers("1704081605", V9_NONCE, V9_SIGNATURE, PLATFORM_SERIAL);
    let key = ApiV3Key::new(API_V3_KEY).unwrap();
    let err = platform_verifier()
        .open_notification(&h, V9_BODY.as_bytes(), at(1704081605 + 3600), &key)
        .unwrap_err();
    assert!(
        matches!(
            err,
            NotificationError::Verify(VerifyError::StaleTimestamp { .. })
        ),
        "{err:?}"
    );
}

#[test]
fn malformed_timestamps_and_foreign_signature_types_are_refused() {
    let verifier = platform_verifier();
    for ts in ["", "17e8", "1700000002.0", " 1700000002"] {
        let h = v8_headers(V8_SIGNATURE, PLATFORM_SERIAL, ts);
        assert_eq!(
            verifier.verify(&h, V8_BODY.as_bytes(), at(1700000002)),
            Err(VerifyError::MalformedTimestamp(ts.into()))
        );
    }
    let mut h = v8_headers(V8_SIGNATURE, PLATFORM_SERIAL, "1700000002");
    h.signature_type = Some("WECHATPAY2-SM2-WITH-SM3");
    assert_eq!(
        verifier.verify(&h, V8_BODY.as_bytes(), at(1700000002)),
        Err(VerifyError::SignatureType("WECHATPAY2-SM2-WITH-SM3".into()))
    );
}

#[test]
fn decryption_refuses_other_algorithms_and_nonce_lengths() {
    let key = ApiV3Key::new(API_V3_KEY).unwrap();
    let resource = EncryptedResource {
        algorithm: "AEAD_SM4_GCM".into(),
        ciphertext: "ulwSiIajGClcvcOYvOQ7+l+0PAbzzwI=".into(),
        associated_data: "associatedData".into(),
        nonce: "uluk4a9R25RW".into(),
        original_type: None,
    };
    assert_eq!(
        decrypt_resource(&key, &resource),
        Err(DecryptError::Algorithm("AEAD_SM4_GCM".into()))
    );
    assert_eq!(
        decrypt_aes_256_gcm(
            &key,
            "short",
            "associatedData",
            "ulwSiIajGClcvcOYvOQ7+l+0PAbzzwI="
        ),
        Err(DecryptError::NonceLength(5))
    );
}

#[test]
fn canonical_urls_keep_the_raw_query() {
    assert_eq!(
        canonical_url("https://api.mch.weixin.qq.com/v3/certificates").unwrap(),
        "/v3/certificates"
    );
    assert_eq!(
        canonical_url("https://api.mch.weixin.qq.com:443/v3/x?a=%E4%B8%AD&b=1#frag").unwrap(),
        "/v3/x?a=%E4%B8%AD&b=1"
    );
    assert_eq!(canonical_url("/v3/x?b=2&a=1").unwrap(), "/v3/x?b=2&a=1");
    assert!(canonical_url("api.mch.weixin.qq.com/v3").is_err());
    assert!(canonical_url("https://api.mch.weixin.qq.com?x=1").is_err());
}

#[test]
fn ambiguous_request_inputs_are_refused() {
    assert!(matches!(
        request_message("get", "/v3/x", 1, "n", ""),
        Err(SignError::Method(_))
    ));
    assert!(matches!(
        merchant().authorization("GET", "/v3/x", 1, "a\"b", ""),
        Err(SignError::Field { field: "nonce" })
    ));
    assert!(matches!(
        merchant().authorization("GET", "/v3/x", 1, "", ""),
        Err(SignError::Field { field: "nonce" })
    ));
}

#[test]
fn generated_nonces_are_32_alphanumerics_and_differ() {
    let a = generate_nonce();
    let b = generate_nonce();
    assert_eq!(a.len(), NONCE_LEN);
    assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()));
    assert_ne!(a, b);
}

#[test]
fn secrets_do_not_print() {
    let key = ApiV3Key::new(API_V3_KEY).unwrap();
    assert!(!format!("{key:?}").contains(API_V3_KEY));
    assert!(!format!("{:?}", merchant()).contains("PRIVATE"));
}
