#![allow(clippy::unwrap_used, clippy::expect_used)]

use rsa::RsaPrivateKey;

use super::*;
use crate::alipay::protocol::encode_notify_body;

fn call_params(app_id: &str) -> Params {
    let mut p = Params::new();
    for (k, v) in [
        ("app_id", app_id),
        ("method", "alipay.trade.precreate"),
        ("format", "JSON"),
        ("charset", "utf-8"),
        ("sign_type", "RSA2"),
        ("timestamp", "2024-01-01 12:00:00"),
        ("version", "1.0"),
        ("notify_url", "https://merchant.example/notify"),
        ("app_auth_token", ""),
        (
            "biz_content",
            r#"{"out_trade_no":"T1","total_amount":"88.88","subject":"测试+商品 & more"}"#,
        ),
    ] {
        p.insert(k.into(), v.into());
    }
    p
}

fn signed_body(key: &RsaPrivateKey, mut params: Params) -> String {
    let content = signing_content(&params, REQUEST_UNSIGNED);
    let sign = BASE64.encode(keys::sign_sha256_rsa(key, content.as_bytes()).unwrap());
    params.insert("sign".into(), sign);
    encode_notify_body(&params)
}

#[test]
fn a_freshly_signed_call_verifies_and_exposes_biz_content() {
    let key = keys::generate_rsa_2048().unwrap();
    let mut apps = AppKeys::new();
    apps.register("2021000000000001", key.to_public_key());
    let body = signed_body(&key, call_params("2021000000000001"));
    let call = apps.verify(&GatewayRequest::parse(&body).unwrap()).unwrap();
    assert_eq!(call.method, "alipay.trade.precreate");
    assert_eq!(call.biz_content["total_amount"], "88.88");
    assert_eq!(call.timestamp.to_string(), "2024-01-01 12:00:00");
}

#[test]
fn tampering_a_wrong_key_an_unknown_app_or_a_dropped_sign_type_is_refused() {
    let key = keys::generate_rsa_2048().unwrap();
    let other = keys::generate_rsa_2048().unwrap();
    let mut apps = AppKeys::new();
    apps.register("2021000000000001", key.to_public_key());

    let body = signed_body(&key, call_params("2021000000000001"));
    let mut tampered = GatewayRequest::parse(&body).unwrap().params().clone();
    tampered.insert("notify_url".into(), "https://attacker.example/".into());
    assert_eq!(
        apps.verify(&GatewayRequest::from_params(tampered)),
        Err(GatewayRejection::SignatureMismatch)
    );

    let wrong_key = signed_body(&other, call_params("2021000000000001"));
    assert_eq!(
        apps.verify(&GatewayRequest::parse(&wrong_key).unwrap()),
        Err(GatewayRejection::SignatureMismatch)
    );

    let unknown = signed_body(&key, call_params("2021000000000002"));
    assert_eq!(
        apps.verify(&GatewayRequest::parse(&unknown).unwrap()),
        Err(GatewayRejection::UnknownApp("2021000000000002".into()))
    );

    // sign_type is part of a request's signed content: signing without it must fail.
    let mut without = call_params("2021000000000001");
    without.remove("sign_type");
    let content = signing_content(&without, REQUEST_UNSIGNED);
    let mut params = call_params("2021000000000001");
    params.insert(
        "sign".into(),
        BASE64.encode(keys::sign_sha256_rsa(&key, content.as_bytes()).unwrap()),
    );
    assert_eq!(
        apps.verify(&GatewayRequest::from_params(params)),
        Err(GatewayRejection::SignatureMismatch)
    );
}

#[test]
fn missing_or_bad_common_parameters_are_refused_before_the_signature() {
    let apps = AppKeys::new();
    let mut p = call_params("1");
    p.insert("sign".into(), "AAAA".into());
    let check = |edit: &dyn Fn(&mut Params), expected: GatewayRejection| {
        let mut params = p.clone();
        edit(&mut params);
        assert_eq!(
            apps.verify(&GatewayRequest::from_params(params)),
            Err(expected)
        );
    };
    check(
        &|p| {
            p.remove("sign");
        },
        GatewayRejection::Missing("sign"),
    );
    check(
        &|p| {
            p.insert("method".into(), String::new());
        },
        GatewayRejection::Missing("method"),
    );
    check(
        &|p| {
            p.insert("sign_type".into(), "RSA".into());
        },
        GatewayRejection::UnsupportedSignType("RSA".into()),
    );
    check(
        &|p| {
            p.insert("timestamp".into(), "2024-01-01T12:00:00".into());
        },
        GatewayRejection::BadTimestamp("2024-01-01T12:00:00".into()),
    );
    check(
        &|p| {
            p.insert("biz_content".into(), "[1]".into());
        },
        GatewayRejection::BadBizContent,
    );
    assert!(matches!(
        GatewayRequest::parse("a=%zz"),
        Err(GatewayRejection::Form(_))
    ));
    assert_eq!(
        GatewayRejection::SignatureMismatch
            .to_node()
            .sub_code
            .as_deref(),
        Some("isv.invalid-signature")
    );
    assert_eq!(GatewayRejection::Missing("app_id").to_node().code, "40001");
}
