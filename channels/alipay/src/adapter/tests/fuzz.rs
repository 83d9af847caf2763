//! Fuzz cases for everything the Alipay adapter reads from outside: the form-encoded notify and
//! its sign, the gateway's JSON answers, amounts and bill files. Style: see the WeChat adapter's
//! `adapter::tests::fuzz` (names start with `fuzz_`, `PROPTEST_CASES`, no panic is the property).
use proptest::prelude::*;

use super::*;

fn verify(cb: &Callback) -> Result<Notification, Rejection> {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    static ADAPTER: OnceLock<AlipayAdapter> = OnceLock::new();
    let rt = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    });
    rt.block_on(ADAPTER.get_or_init(adapter).verify_callback(cb))
}

/// Alipay's key as an aws-lc signer, so re-signing every mutation stays cheap.
fn signed(mut params: BTreeMap<String, String>) -> Callback {
    static SIGNER: OnceLock<channel_kit::crypto::RsaSigningKey> = OnceLock::new();
    let signer = SIGNER.get_or_init(|| {
        channel_kit::crypto::RsaSigningKey::from_pkcs8_der(
            keys().alipay.to_pkcs8_der().unwrap().as_bytes(),
        )
        .unwrap()
    });
    let sign = signer
        .sign_sha256_base64(notify_signing_content(&params).as_bytes())
        .unwrap();
    params.insert("sign".into(), sign);
    params.insert("sign_type".into(), "RSA2".into());
    Callback {
        method: http::Method::POST,
        target: "/notify/payment".into(),
        headers: http::HeaderMap::new(),
        body: wire::encode_form(&params).into_bytes().into(),
    }
}

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ -~]{0,24}",
        "-?[0-9]{0,20}(\\.[0-9]{0,4})?",
        "[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}",
        Just("TRADE_SUCCESS".to_owned()),
        Just("TRADE_CLOSED".to_owned()),
        Just(String::new()),
        ".{0,8}",
    ]
}

proptest! {
    #[test]
    fn fuzz_alipay_notify_with_an_arbitrary_body(
        body in proptest::collection::vec(any::<u8>(), 0..2048),
    ) {
        let cb = Callback {
            method: http::Method::POST,
            target: "/notify/payment".into(),
            headers: http::HeaderMap::new(),
            body: body.into(),
        };
        let _ = verify(&cb);
    }

    /// Correctly signed, so each changed, added or removed parameter reaches the notification
    /// parser (amounts, statuses, refund fields).
    #[test]
    fn fuzz_alipay_signed_notify_mutations(
        changes in proptest::collection::vec(
            (prop::sample::select(vec![
                "total_amount", "refund_fee", "trade_status", "out_trade_no", "trade_no",
                "gmt_payment", "gmt_refund", "notify_id", "app_id", "out_biz_no", "seller_id",
                "receipt_amount", "buyer_pay_amount", "notify_type", "charset", "extra",
            ]), proptest::option::of(value())),
            0..6,
        ),
    ) {
        let mut p = params(APP_ID);
        for (key, v) in changes {
            match v {
                Some(v) => p.insert(key.to_owned(), v),
                None => p.remove(key),
            };
        }
        let _ = verify(&signed(p));
    }

    #[test]
    fn fuzz_alipay_gateway_answers(
        body in prop_oneof![
            ".{0,300}",
            "\\{\"alipay_trade_query_response\":\\{[ -~]{0,120}\\},\"sign\":\"[A-Za-z0-9+/=]{0,40}\"\\}",
            "\\{\"error_response\":[ -~]{0,60}\\}",
        ],
        method in prop::sample::select(vec!["alipay.trade.query", "alipay.trade.refund", "a", ""]),
    ) {
        let _ = crate::signature::extract_response(&body, method);
    }

    #[test]
    fn fuzz_alipay_yuan_amounts(text in ".{0,24}|-?[0-9]{0,22}(\\.[0-9]{0,4})?") {
        let _ = crate::wire::parse_yuan(&text);
    }

    #[test]
    fn fuzz_alipay_bill_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 0..4096),
        zip_magic in any::<bool>(),
    ) {
        let mut bytes = bytes;
        if zip_magic {
            bytes.splice(0..0, *b"PK\x03\x04");
        }
        let _ = crate::statement::parse_trade_bill_bytes(&bytes);
    }
}
