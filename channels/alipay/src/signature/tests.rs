//! Vectors B9-1..B9-4 of CHANNEL_PROTOCOLS.md (yansongda/pay and go-pay/gopay tests, with the keys
//! they publish), the independent Python vectors, and negative cases.

use serde_json::Value;

use super::*;
use crate::status::{CallOutcome, PaymentStatus, TradeStatus, classify};
use crate::wire::{RefundResponse, TradeNotification, TradeQueryResponse, parse_form};

const APP_KEY: &str =
    include_str!("../../tests/fixtures/yansongda_pay_test_app_private_key_pkcs1.pem");
const YANSONGDA_ALIPAY_PUBLIC_KEY: &str =
    include_str!("../../tests/fixtures/yansongda_pay_test_alipay_public_key.pem");
const GOPAY_ALIPAY_PUBLIC_KEY: &str =
    include_str!("../../tests/fixtures/gopay_test_alipay_public_key.pem");
const INDEPENDENT: &str = include_str!("../../tests/fixtures/independent_vectors.json");

/// Parses an already-decoded `k=v&…` string, splitting each pair at its first `=`.
fn params_of(content: &str) -> BTreeMap<String, String> {
    content
        .split('&')
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

fn independent() -> Value {
    serde_json::from_str(INDEPENDENT).unwrap()
}

fn gateway_verifier(v: &Value) -> AlipayVerifier {
    AlipayVerifier::from_public_key_pem(v["gateway_public_key_pem"].as_str().unwrap()).unwrap()
}

fn string_map(value: &Value) -> BTreeMap<String, String> {
    value
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect()
}

// ---------------------------------------------------------------- B9-1: request signing

const B9_1_CONTENT: &str = r#"alipay_root_cert_sn=687b59193f3f462dd5336e5abf83c5d8_02941eef3187dddf3d3b83462e1dfcf6&app_cert_sn=e90dd23a37c5c7b616e003970817ff82&app_id=9021000122682882&biz_content={"out_trade_no":"1703141270"}&charset=utf-8&format=JSON&method=alipay.trade.query&notify_url=http://hk.ysdor.cn/index.php&return_url=http://hk.ysdor.cn/index.php&sign_type=RSA2&timestamp=2023-12-21 06:54:37&version=1.0"#;
const B9_1_SIGN: &str = "FrzUwXziVWK2x5glZkGoQ6dGR87O33APv3D/lWjVqPrFnMwcYjOYyln1B1bw5VuOwokLRmqcwWuTumBg8Q+n4FkVR3DMCvL8ywTBp5+6pRAETfhFop4m+r6jI+dgOavwyoZ69CWCzCcEyb0vMjgrV2eoSI4bgLjJyPcGpZ+iDBTSvE6eVxs05bUjainAOB5NnAvME06nkaxGLB4qwF9c3SQoiZt7QcMRdyy6mRItZxRaEjMm6qX8dfPuuquJC4wpTRk8PQeu5EMR4yyc1atxso3CMovjkGr5LzDtqLNseyqqorYW+Gfu3ugHSs9aqkwAAysg79O6TsvuFa9OHq64Tg==";

#[test]
fn b9_1_yansongda_request_signature() {
    let mut params = params_of(B9_1_CONTENT);
    // An empty value and a stale sign must not enter the signed string.
    params.insert("app_auth_token".into(), String::new());
    params.insert("sign".into(), "stale".into());
    assert_eq!(request_signing_content(&params), B9_1_CONTENT);

    let signer = AppSigner::from_pem(APP_KEY).unwrap();
    assert_eq!(signer.sign(B9_1_CONTENT).unwrap(), B9_1_SIGN);
    signer.sign_params(&mut params).unwrap();
    assert_eq!(params["sign"], B9_1_SIGN);
}

#[test]
fn b9_1_key_also_loads_from_bare_base64() {
    let body: String = APP_KEY
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let signer = AppSigner::from_base64_der(&body).unwrap();
    assert_eq!(signer.sign(B9_1_CONTENT).unwrap(), B9_1_SIGN);
}

// ---------------------------------------------------------------- B9-2 / B9-3: notify and return URL

const B9_2_CONTENT: &str = r#"app_id=9021000122682882&auth_app_id=9021000122682882&buyer_id=2088722003899169&buyer_pay_amount=0.01&charset=utf-8&fund_bill_list=[{"amount":"0.01","fundChannel":"ALIPAYACCOUNT"}]&gmt_create=2023-12-21 16:26:32&gmt_payment=2023-12-21 16:26:43&invoice_amount=0.01&notify_id=2023122101222162644199160501632046&notify_time=2023-12-21 16:26:45&notify_type=trade_status_sync&out_trade_no=1703147160&point_amount=0.00&receipt_amount=0.01&seller_id=2088721003899159&subject=yansongda+测试 - 1&total_amount=0.01&trade_no=2023122122001499160501589436&trade_status=TRADE_SUCCESS&version=1.0"#;
const B9_2_SIGN: &str = "Rs7SszD15WqbdJsGZPN+HpCBcQzBCkJx0ccNeg1rpUxyTVA1ps2vJ4sLhaa7O+lliTj6N1MSGqc8cK6JSs7nPg731RAOfneirtrqrlW2u0m15kWAKrVjgPGLUMtK/eT15e/6NcxsWra/bsZaan+nFDzO8xceOwy96W+qVUtTPfBRBp9Zjryi5oIONOifGMALD284YbNC3qq2eyqVysF+zgk+/MtuHk2Eh/fL7UbClHQXQ2hD686Dt8bR949TNMbkWCYXstmjVBO55qF8xhaoF/b5zAe5/O/13g/QlwDXBcF3XwJpbFWrBehoFFCnJhR/xXZ0E+D2Vsw1oAQ3l+R2dQ==";

fn b9_2_params() -> BTreeMap<String, String> {
    let mut params = params_of(B9_2_CONTENT);
    params.insert("sign_type".into(), "RSA2".into());
    params.insert("sign".into(), B9_2_SIGN.into());
    params
}

#[test]
fn b9_2_yansongda_notify_with_a_plus_verifies() {
    let verifier = AlipayVerifier::from_public_key_pem(YANSONGDA_ALIPAY_PUBLIC_KEY).unwrap();
    let params = b9_2_params();
    assert_eq!(notify_signing_content(&params), B9_2_CONTENT);
    verifier.verify_notify(&params).unwrap();

    // Through the wire: form-encoded once by the sender, decoded once here.
    let decoded = parse_form(&crate::wire::encode_form(&params)).unwrap();
    assert_eq!(decoded["subject"], "yansongda+测试 - 1");
    verifier.verify_notify(&decoded).unwrap();

    let notification = TradeNotification::from_params(&decoded).unwrap();
    assert_eq!(notification.total_amount.fen(), 1);
    assert_eq!(
        TradeStatus::parse(&notification.trade_status).payment_status(),
        PaymentStatus::Succeeded
    );
}

#[test]
fn b9_2_decoding_the_plus_twice_breaks_the_signature() {
    let verifier = AlipayVerifier::from_public_key_pem(YANSONGDA_ALIPAY_PUBLIC_KEY).unwrap();
    let mut params = b9_2_params();
    params.insert("subject".into(), "yansongda 测试 - 1".into());
    assert_eq!(
        verifier.verify_notify(&params),
        Err(NotifyError::BadSignature)
    );
}

#[test]
fn b9_3_yansongda_return_url_verifies_from_the_query_string() {
    let query = "app_id=9021000122682882&auth_app_id=9021000122682882&charset=utf-8&method=alipay.trade.page.pay.return&out_trade_no=1703141270&seller_id=2088721003899159&sign=RJzbs5y7I41BO9UPnCdq7oWgoInyjELi9Qj6D%2BLAZXVpHTedemAHfVUowuF9iuznGZLxU6Xv1L3ZkzTGxmIfvzontCZNb0%2BRROqiT41lX91VYd6j4ZcOn8zsvlCdQSVHmYNJi%2Bw%2F40uHxo1ufRwHxBNtQKsoJCYk5VtZ92pQFvVyE5wPPT6Nolww5WlCAPxcWNby8VAiWT%2Bd2yxmFm8vZ6yj5rsLHTR72O76TkEXzOEex6e36Zf8M9YXww7RQbflMfk9eURPHW%2FoQq4hZr%2FlX7%2FO1nT5vdT4UVFai4V18Xm1KspBun8outJxqlWMIKVxGsYhIH1E79ORt4wQA7PG1g%3D%3D&sign_type=RSA2&timestamp=2023-12-21+14%3A48%3A44&total_amount=0.01&trade_no=2023122122001499160501586202&version=1.0";
    let params = parse_form(query).unwrap();
    assert_eq!(
        notify_signing_content(&params),
        "app_id=9021000122682882&auth_app_id=9021000122682882&charset=utf-8&method=alipay.trade.page.pay.return&out_trade_no=1703141270&seller_id=2088721003899159&timestamp=2023-12-21 14:48:44&total_amount=0.01&trade_no=2023122122001499160501586202&version=1.0"
    );
    AlipayVerifier::from_public_key_pem(YANSONGDA_ALIPAY_PUBLIC_KEY)
        .unwrap()
        .verify_notify(&params)
        .unwrap();
}

// ---------------------------------------------------------------- B9-4: sync response

const B9_4_NODE: &str = r#"{"code":"10000","msg":"Success","buyer_logon_id":"854***@qq.com","buyer_pay_amount":"0.01","buyer_user_id":"2088102363632794","fund_bill_list":[{"amount":"0.01","fund_channel":"PCREDIT"}],"gmt_payment":"2019-08-29 20:14:05","invoice_amount":"0.01","out_trade_no":"GZ201901301040361012","point_amount":"0.00","receipt_amount":"0.01","total_amount":"0.01","trade_no":"2019082922001432790585537960"}"#;
const B9_4_SIGN: &str = "bk3SzX0CZRI811IJioS2XKQHcgMixUT8mYyGQj+vcOAQas7GIYi6LpykqqSc3m7+yvqoG0TdX/c2JjYnpw/J53JxtC2IC4vsLuIPIgghVo5qafsfSxEJ22w20RZDatI2dYqFVcj8Jp+4aesQ8zMMNw7cX9NLyk7kw3DecYeyQp+zrZMueZPqLh88Z+54G+e6QuSU++0ouqQVd4PkpPqy6YI+8MdMUX4Ve0jOQxMmYH8BC6n5ZsTH/uEaLEtzYVZdSw/xdSQ7K1SH73aEH8XbRYx6rL7RkKksrdvhezX+ThDjQ+fTWjvNFrGcg3fmqXRy2elvoalu+BQmqlkWWjEJYA==";

fn gopay_verifier() -> AlipayVerifier {
    let base64_body: String = GOPAY_ALIPAY_PUBLIC_KEY
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    AlipayVerifier::from_public_key_base64(&base64_body).unwrap()
}

#[test]
fn b9_4_gopay_sync_response_verifies_over_the_raw_node() {
    let body = format!(r#"{{"alipay_trade_pay_response":{B9_4_NODE},"sign":"{B9_4_SIGN}"}}"#);
    let signed = gopay_verifier()
        .verify_response(&body, "alipay.trade.pay")
        .unwrap();
    assert_eq!(signed.node_text, B9_4_NODE);
    assert!(!signed.is_error_response);
    let node: TradeQueryResponse = signed.parse().unwrap();
    assert_eq!(
        classify(&node.status.code, node.status.sub_code.as_deref()),
        CallOutcome::Success
    );
    assert_eq!(node.total_amount.map(crate::wire::Yuan::fen), Some(1));
}

#[test]
fn b9_4_a_reserialized_node_does_not_verify() {
    let reserialized =
        serde_json::to_string(&serde_json::from_str::<Value>(B9_4_NODE).unwrap()).unwrap();
    assert_ne!(reserialized, B9_4_NODE);
    assert_eq!(
        gopay_verifier().verify(reserialized.as_bytes(), B9_4_SIGN),
        Err(BadSignature)
    );
}

// ---------------------------------------------------------------- independent Python vectors

#[test]
fn independent_request_signatures_are_byte_identical() {
    let v = independent();
    let signer = AppSigner::from_pem(APP_KEY).unwrap();
    for case in v["request_signatures"].as_array().unwrap() {
        let mut params = string_map(&case["params"]);
        assert_eq!(
            request_signing_content(&params),
            case["content"].as_str().unwrap()
        );
        signer.sign_params(&mut params).unwrap();
        assert_eq!(params["sign"], case["sign"].as_str().unwrap());
    }
}

#[test]
fn independent_sync_responses_verify_over_their_exact_text() {
    let v = independent();
    let verifier = gateway_verifier(&v);
    for case in v["sync_responses"].as_array().unwrap() {
        let body = case["body"].as_str().unwrap();
        let method = case["method"].as_str().unwrap();
        let signed = verifier.verify_response(body, method).unwrap();
        assert_eq!(
            signed.node_text,
            case["node_text"].as_str().unwrap(),
            "{method}"
        );
    }
}

#[test]
fn independent_sync_responses_parse_into_their_outcomes() {
    let v = independent();
    let verifier = gateway_verifier(&v);
    let cases = v["sync_responses"].as_array().unwrap();

    let query: TradeQueryResponse = verifier
        .verify_response(cases[0]["body"].as_str().unwrap(), "alipay.trade.query")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(query.total_amount.map(crate::wire::Yuan::fen), Some(8888));
    assert_eq!(
        TradeStatus::parse(query.trade_status.as_deref().unwrap()).payment_status(),
        PaymentStatus::Succeeded
    );

    let precreate: crate::wire::PrecreateResponse = verifier
        .verify_response(cases[1]["body"].as_str().unwrap(), "alipay.trade.precreate")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        precreate.qr_code.as_deref(),
        Some("https://qr.alipay.com/bax00000000000000000")
    );

    let refund: RefundResponse = verifier
        .verify_response(cases[2]["body"].as_str().unwrap(), "alipay.trade.refund")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(refund.status.sub_msg.as_deref(), Some("交易不存在"));
    assert_eq!(
        classify(&refund.status.code, refund.status.sub_code.as_deref()),
        CallOutcome::TradeNotExist
    );

    let close: crate::wire::TradeCloseResponse = verifier
        .verify_response(cases[3]["body"].as_str().unwrap(), "alipay.trade.close")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        classify(&close.status.code, close.status.sub_code.as_deref()),
        CallOutcome::Unknown
    );

    let error = verifier
        .verify_response(cases[4]["body"].as_str().unwrap(), "alipay.trade.query")
        .unwrap();
    assert!(error.is_error_response);
}

#[test]
fn independent_notify_verifies_from_its_form_body() {
    let v = independent();
    let verifier = gateway_verifier(&v);
    let params = parse_form(v["notify"]["form_body"].as_str().unwrap()).unwrap();
    assert_eq!(params, string_map(&v["notify"]["params"]));
    assert_eq!(
        notify_signing_content(&params),
        v["notify"]["content"].as_str().unwrap()
    );
    verifier.verify_notify(&params).unwrap();
    assert_eq!(params["subject"], "a+b c&d=e 中文");
}

// ---------------------------------------------------------------- negative cases

#[test]
fn a_tampered_notify_is_refused() {
    let v = independent();
    let verifier = gateway_verifier(&v);
    let mut params = string_map(&v["notify"]["params"]);
    params.insert("total_amount".into(), "0.01".into());
    assert_eq!(
        verifier.verify_notify(&params),
        Err(NotifyError::BadSignature)
    );
}

#[test]
fn a_notify_signed_by_another_key_is_refused() {
    let v = independent();
    let mut params = string_map(&v["notify"]["params"]);
    let forged = AppSigner::from_pem(APP_KEY)
        .unwrap()
        .sign(&notify_signing_content(&params))
        .unwrap();
    params.insert("sign".into(), forged);
    assert_eq!(
        gateway_verifier(&v).verify_notify(&params),
        Err(NotifyError::BadSignature)
    );
}

#[test]
fn notify_without_sign_or_with_legacy_sign_type_is_refused() {
    let v = independent();
    let verifier = gateway_verifier(&v);
    let mut params = string_map(&v["notify"]["params"]);
    params.insert("sign_type".into(), "RSA".into());
    assert_eq!(
        verifier.verify_notify(&params),
        Err(NotifyError::SignType("RSA".into()))
    );
    params.insert("sign_type".into(), "RSA2".into());
    params.remove("sign");
    assert_eq!(
        verifier.verify_notify(&params),
        Err(NotifyError::MissingSign)
    );
}

#[test]
fn a_notify_with_alipay_cert_sn_verifies_under_either_reading() {
    let v = independent();
    let verifier = gateway_verifier(&v);
    // Signed without alipay_cert_sn, as smartwalle/alipay reads the rule.
    let mut params = string_map(&v["notify"]["params"]);
    params.insert(
        "alipay_cert_sn".into(),
        "6f1e366a31d9575cd546914add04f4af".into(),
    );
    verifier.verify_notify(&params).unwrap();
}

#[test]
fn a_tampered_sync_response_is_refused() {
    let v = independent();
    let body = v["sync_responses"][0]["body"]
        .as_str()
        .unwrap()
        .replace("88.88", "88.89");
    assert_eq!(
        gateway_verifier(&v).verify_response(&body, "alipay.trade.query"),
        Err(ResponseError::BadSignature)
    );
}

#[test]
fn a_sync_response_signed_by_another_key_is_refused() {
    let v = independent();
    let node = v["sync_responses"][0]["node_text"].as_str().unwrap();
    let forged = AppSigner::from_pem(APP_KEY).unwrap().sign(node).unwrap();
    let body = format!(r#"{{"alipay_trade_query_response":{node},"sign":"{forged}"}}"#);
    assert_eq!(
        gateway_verifier(&v).verify_response(&body, "alipay.trade.query"),
        Err(ResponseError::BadSignature)
    );
}

#[test]
fn unsigned_or_misnamed_responses_are_refused() {
    let v = independent();
    let verifier = gateway_verifier(&v);
    let node = v["sync_responses"][0]["node_text"].as_str().unwrap();
    let unsigned = format!(r#"{{"alipay_trade_query_response":{node}}}"#);
    assert_eq!(
        verifier.verify_response(&unsigned, "alipay.trade.query"),
        Err(ResponseError::MissingSign)
    );
    let body = v["sync_responses"][0]["body"].as_str().unwrap();
    assert_eq!(
        verifier.verify_response(body, "alipay.trade.refund"),
        Err(ResponseError::MissingNode(
            "alipay_trade_refund_response".into()
        ))
    );
    assert!(matches!(
        verifier.verify_response("<html>502</html>", "alipay.trade.query"),
        Err(ResponseError::Json(_))
    ));
    // A signature over the right text but under the wrong node name still verifies the bytes; the
    // node name is chosen by the caller's method, so a query answer cannot pass as a refund answer.
    assert_eq!(
        response_node_name("alipay.trade.fastpay.refund.query"),
        "alipay_trade_fastpay_refund_query_response"
    );
}

#[test]
fn garbage_signatures_are_bad_signatures() {
    let verifier = gopay_verifier();
    assert_eq!(
        verifier.verify(B9_4_NODE.as_bytes(), "%%%"),
        Err(BadSignature)
    );
    assert_eq!(
        verifier.verify(B9_4_NODE.as_bytes(), "AAAA"),
        Err(BadSignature)
    );
    assert_eq!(verifier.verify(B9_4_NODE.as_bytes(), ""), Err(BadSignature));
}

#[test]
fn keys_that_are_not_rsa_keys_are_refused() {
    assert!(
        AppSigner::from_pem(
            "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n"
        )
        .is_err()
    );
    assert!(AppSigner::from_base64_der("not base64").is_err());
    assert!(AlipayVerifier::from_public_key_base64("AAAA").is_err());
    assert!(AlipayVerifier::from_certificate_pem(YANSONGDA_ALIPAY_PUBLIC_KEY).is_err());
    assert!(!format!("{:?}", AppSigner::from_pem(APP_KEY).unwrap()).contains("MII"));
}

#[test]
fn a_node_signed_with_plain_slashes_verifies_in_its_escaped_form() {
    let v = independent();
    let case = &v["escaped_slash_response"];
    let verifier =
        AlipayVerifier::from_public_key_pem(v["gateway_public_key_pem"].as_str().unwrap()).unwrap();
    let body = case["body"].as_str().unwrap();
    let signed = verifier
        .verify_response(body, case["method"].as_str().unwrap())
        .unwrap();
    assert_eq!(signed.node_text, case["node_text"].as_str().unwrap());
    assert!(signed.node_text.contains("\\/"));
    // The raw text alone does not verify: it is the second, unescaped try that does.
    assert!(
        verifier
            .verify(
                case["node_text"].as_str().unwrap().as_bytes(),
                case["sign"].as_str().unwrap()
            )
            .is_err()
    );
    // And a tampered node fails both tries.
    let tampered = body.replace("ORDER20240310B", "ORDER20240310C");
    assert_eq!(
        verifier.verify_response(&tampered, "alipay.trade.precreate"),
        Err(ResponseError::BadSignature)
    );
}
