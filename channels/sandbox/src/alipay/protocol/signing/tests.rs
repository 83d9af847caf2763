#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

#[test]
fn a_signed_response_embeds_exactly_the_signed_node_text() {
    let key = keys::generate_rsa_2048().unwrap();
    let signer =
        AlipaySigner::with_cert_sn(key.clone(), "6f1e366a31d9575cd546914add04f4af").unwrap();
    #[derive(Serialize)]
    struct Node<'a> {
        code: &'a str,
        msg: &'a str,
        out_trade_no: &'a str,
        qr_code: &'a str,
    }
    let node = Node {
        code: "10000",
        msg: "Success",
        out_trade_no: "T1",
        qr_code: "https://qr.alipay.com/bax0",
    };
    let name = response_node_name("alipay.trade.precreate").unwrap();
    let body = signer.sign_response(&name, &node).unwrap();
    assert!(body.starts_with(
        r#"{"alipay_trade_precreate_response":{"code":"10000","msg":"Success","out_trade_no":"T1","qr_code":"https://qr.alipay.com/bax0"},"alipay_cert_sn":"6f1e366a31d9575cd546914add04f4af","sign":""#
    ));
    let (found, text) = verify_response_body(&key.to_public_key(), &body).unwrap();
    assert_eq!(found, "alipay_trade_precreate_response");
    assert_eq!(text, serde_json::to_string(&node).unwrap());

    let tampered = body.replace("T1", "T2");
    assert!(matches!(
        verify_response_body(&key.to_public_key(), &tampered),
        Err(AlipayProtocolError::SignatureMismatch)
    ));
    let rejection = signer
        .sign_rejection(&GatewayRejection::SignatureMismatch)
        .unwrap();
    let (found, _) = verify_response_body(&key.to_public_key(), &rejection).unwrap();
    assert_eq!(found, ERROR_NODE);
    assert!(matches!(
        signer.sign_raw_response(&name, "[1]"),
        Err(AlipayProtocolError::NodeNotObject(_))
    ));
    assert!(matches!(
        response_node_name("Alipay.Trade"),
        Err(AlipayProtocolError::BadMethod(_))
    ));
}

#[test]
fn a_signed_notification_verifies_after_form_encoding_and_excludes_sign_type() {
    let key = keys::generate_rsa_2048().unwrap();
    let signer = AlipaySigner::new(key.clone()).unwrap();
    let mut params = Params::new();
    params.insert("subject".into(), "yansongda+测试 - 1".into());
    params.insert("trade_status".into(), "TRADE_SUCCESS".into());
    params.insert("passback_params".into(), String::new());
    let signed = signer.sign_notify(params).unwrap();
    assert_eq!(signed["sign_type"], "RSA2");
    let received = form::decode(&encode_notify_body(&signed)).unwrap();
    assert_eq!(received, signed);
    verify_notify(&key.to_public_key(), &received).unwrap();

    let mut changed = received.clone();
    changed.insert("sign_type".into(), "RSA".into());
    verify_notify(&key.to_public_key(), &changed).unwrap();
    changed.insert("trade_status".into(), "TRADE_FINISHED".into());
    assert!(verify_notify(&key.to_public_key(), &changed).is_err());
}
