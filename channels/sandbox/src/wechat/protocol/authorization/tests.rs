#![allow(clippy::unwrap_used, clippy::expect_used)]

use rsa::RsaPrivateKey;

use super::*;

const SERIAL: &str = "5F1C72E2A8931B72A2E13AF8DEE92471EB397115";

fn signed_request(key: &RsaPrivateKey, method: &str, target: &str, ts: i64, body: &[u8]) -> String {
    let signature =
        keys::sign_sha256_rsa(key, &request_message(method, target, ts, "NONCE123", body)).unwrap();
    Authorization {
        mchid: "1234567891".into(),
        nonce_str: "NONCE123".into(),
        timestamp: ts,
        serial_no: SERIAL.into(),
        signature,
    }
    .to_header_value()
}

fn keyring(key: &RsaPrivateKey) -> MerchantKeys {
    let mut keys = MerchantKeys::new();
    keys.register("1234567891", SERIAL, key.to_public_key());
    keys
}

#[test]
fn a_freshly_signed_request_verifies_and_a_tampered_one_does_not() {
    let key = keys::generate_rsa_2048().unwrap();
    let keys = keyring(&key);
    let body = br#"{"mchid":"1234567891"}"#;
    let header = signed_request(
        &key,
        "POST",
        "/v3/pay/transactions/native",
        1_700_000_000,
        body,
    );
    let request = IncomingRequest {
        method: "POST",
        target: "/v3/pay/transactions/native",
        authorization: Some(&header),
        body,
    };
    let auth = keys.verify_request(&request, 1_700_000_100).unwrap();
    assert_eq!(auth.mchid, "1234567891");

    let tampered = IncomingRequest {
        body: br#"{"mchid":"1234567892"}"#,
        ..request
    };
    assert_eq!(
        keys.verify_request(&tampered, 1_700_000_100),
        Err(RequestRejection::SignatureMismatch)
    );
    let other_target = IncomingRequest {
        target: "/v3/pay/transactions/jsapi",
        ..request
    };
    assert_eq!(
        keys.verify_request(&other_target, 1_700_000_100),
        Err(RequestRejection::SignatureMismatch)
    );
}

#[test]
fn wrong_key_wrong_serial_and_stale_timestamps_are_refused() {
    let key = keys::generate_rsa_2048().unwrap();
    let other = keys::generate_rsa_2048().unwrap();
    let header = signed_request(&other, "GET", "/v3/certificates", 1_700_000_000, b"");
    let request = IncomingRequest {
        method: "GET",
        target: "/v3/certificates",
        authorization: Some(&header),
        body: b"",
    };
    assert_eq!(
        keyring(&key).verify_request(&request, 1_700_000_000),
        Err(RequestRejection::SignatureMismatch)
    );
    assert_eq!(
        MerchantKeys::new().verify_request(&request, 1_700_000_000),
        Err(RequestRejection::UnknownSerial(SERIAL.into()))
    );
    let mut foreign = MerchantKeys::new();
    foreign.register("1900000001", SERIAL, other.to_public_key());
    assert!(matches!(
        foreign.verify_request(&request, 1_700_000_000),
        Err(RequestRejection::SerialNotOwned { .. })
    ));
    assert!(matches!(
        keyring(&other).verify_request(&request, 1_700_000_300),
        Err(RequestRejection::Expired { .. })
    ));
    assert!(
        keyring(&other)
            .verify_request(&request, 1_700_000_299)
            .is_ok()
    );
    assert!(
        keyring(&other)
            .verify_request(&request, 1_699_999_701)
            .is_ok()
    );
}

#[test]
fn parameters_may_come_in_any_order() {
    let header = format!(
        "{SIGNATURE_SCHEME} signature=\"AAAA\",timestamp=\"1\",serial_no=\"AB\",nonce_str=\"n\",mchid=\"m\""
    );
    let auth: Authorization = header.parse().unwrap();
    assert_eq!(auth.timestamp, 1);
    assert_eq!(auth.signature, vec![0, 0, 0]);
}

#[test]
fn malformed_headers_are_refused_with_a_reason() {
    let ok = "mchid=\"m\",nonce_str=\"n\",timestamp=\"1\",serial_no=\"S\",signature=\"AAAA\"";
    let cases: Vec<(String, RequestRejection)> = vec![
        (
            format!("WECHATPAY2-SHA256-RSA2048  {ok}"),
            RequestRejection::UnknownParameter(" mchid".into()),
        ),
        (
            format!("WECHATPAY2-SM2-WITH-SM3 {ok}"),
            RequestRejection::UnsupportedScheme,
        ),
        (
            format!("wechatpay2-sha256-rsa2048 {ok}"),
            RequestRejection::UnsupportedScheme,
        ),
        (ok.to_owned(), RequestRejection::UnsupportedScheme),
        (
            format!("{SIGNATURE_SCHEME} {}", ok.replace("\",", "\", ")),
            RequestRejection::UnknownParameter(" nonce_str".into()),
        ),
        (
            format!("{SIGNATURE_SCHEME} {ok},mchid=\"x\""),
            RequestRejection::DuplicateParameter("mchid"),
        ),
        (
            format!("{SIGNATURE_SCHEME} {ok},extra=\"x\""),
            RequestRejection::UnknownParameter("extra".into()),
        ),
        (
            format!("{SIGNATURE_SCHEME} {}", ok.replace(",serial_no=\"S\"", "")),
            RequestRejection::MissingParameter("serial_no"),
        ),
        (
            format!("{SIGNATURE_SCHEME} {}", ok.replace("\"m\"", "m")),
            RequestRejection::Syntax("value must be double-quoted"),
        ),
        (
            format!("{SIGNATURE_SCHEME} {}", ok.replace("\"1\"", "\"01\"")),
            RequestRejection::BadTimestamp,
        ),
        (
            format!("{SIGNATURE_SCHEME} {}", ok.replace("\"1\"", "\"-1\"")),
            RequestRejection::BadTimestamp,
        ),
        (
            format!("{SIGNATURE_SCHEME} {}", ok.replace("AAAA", "A*A=")),
            RequestRejection::BadSignatureEncoding,
        ),
        (
            format!("{SIGNATURE_SCHEME} {}", ok.replace("\"n\"", "\"\"")),
            RequestRejection::Syntax("empty value"),
        ),
        (
            format!("{SIGNATURE_SCHEME} {ok},"),
            RequestRejection::Syntax("expected key=\"value\""),
        ),
        (
            format!("{SIGNATURE_SCHEME} {}", ok.trim_end_matches('"')),
            RequestRejection::Syntax("unterminated quoted value"),
        ),
    ];
    for (header, expected) in cases {
        assert_eq!(header.parse::<Authorization>(), Err(expected), "{header}");
    }
}

#[test]
fn a_missing_header_and_an_absolute_target_are_refused() {
    let keys = MerchantKeys::new();
    let request = IncomingRequest {
        method: "GET",
        target: "/v3/certificates",
        authorization: None,
        body: b"",
    };
    assert_eq!(
        keys.verify_request(&request, 0),
        Err(RequestRejection::MissingAuthorization)
    );
    let header = format!(
        "{SIGNATURE_SCHEME} mchid=\"m\",nonce_str=\"n\",timestamp=\"1\",serial_no=\"S\",signature=\"AAAA\""
    );
    let absolute = IncomingRequest {
        target: "https://api.mch.weixin.qq.com/v3/certificates",
        authorization: Some(&header),
        ..request
    };
    assert_eq!(
        keys.verify_request(&absolute, 0),
        Err(RequestRejection::BadRequestTarget)
    );
}
