//! Fuzz cases for everything the UnionPay adapter reads from outside: the form-encoded notify with
//! its `signature` and `signPubKeyCert`, synchronous answers, amounts and the reconciliation
//! file (`fileContent`: Base64 of deflated ZIP, ZM lines). Style: see the WeChat adapter's
//! `adapter::tests::fuzz` (names start with `fuzz_`, `PROPTEST_CASES`, no panic is the property).
use proptest::prelude::*;

use super::*;

fn verify(cb: &Callback) -> Result<Notification, Rejection> {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    static ADAPTER: OnceLock<UnionpayAdapter> = OnceLock::new();
    let rt = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    });
    rt.block_on(ADAPTER.get_or_init(adapter).verify_callback(cb))
}

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ -~]{0,24}",
        "-?[0-9]{0,22}",
        "[0-9]{14}",
        Just("00".to_owned()),
        Just("5.1.0".to_owned()),
        Just(String::new()),
        ".{0,8}",
    ]
}

proptest! {
    #[test]
    fn fuzz_unionpay_notify_with_an_arbitrary_body(
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

    /// Signed with the pinned certificate's key, so changed, added or removed fields reach the
    /// field parser (amounts, times, `respCode`, `reqReserved`).
    #[test]
    fn fuzz_unionpay_signed_notify_mutations(
        changes in proptest::collection::vec(
            (prop::sample::select(vec![
                "txnType", "txnSubType", "merId", "orderId", "txnTime", "txnAmt",
                "currencyCode", "queryId", "traceNo", "traceTime", "respCode", "respMsg",
                "reqReserved", "settleAmt", "settleDate", "origQryId", "accNo", "extra",
            ]), proptest::option::of(value())),
            0..6,
        ),
        refund in any::<bool>(),
    ) {
        let mut f = fields(if refund { "04" } else { "01" }, "20260101080000T0001", MER_ID);
        for (key, v) in changes {
            match v {
                Some(v) => f.insert(key.to_owned(), v),
                None => f.remove(key),
            };
        }
        let _ = verify(&good(f));
    }

    /// Unsigned field sets with arbitrary certificates and signatures: the certificate parser
    /// and the pinning check see attacker-chosen text.
    #[test]
    fn fuzz_unionpay_notify_certificate_and_signature_fields(
        cert in prop_oneof![
            ".{0,200}",
            "-----BEGIN CERTIFICATE-----\n[A-Za-z0-9+/=\n]{0,300}\n-----END CERTIFICATE-----",
        ],
        signature in "[A-Za-z0-9+/=]{0,400}",
        cert_id in "[0-9]{0,24}",
    ) {
        let mut f = fields("01", "20260101080000T0001", MER_ID);
        f.insert("signPubKeyCert".into(), cert);
        f.insert("signature".into(), signature);
        f.insert("certId".into(), cert_id);
        let _ = verify(&body_callback(&f));
    }

    #[test]
    fn fuzz_unionpay_sync_answers_and_notify_forms(body in ".{0,400}|([a-zA-Z]{1,8}=[ -~]{0,12}&){0,8}") {
        let _ = crate::wire::parse_sync_response(&body);
        let _ = crate::wire::parse_notify_form(&body);
    }

    #[test]
    fn fuzz_unionpay_txn_amounts(text in ".{0,24}|-?[0-9]{0,24}") {
        let _ = crate::wire::parse_txn_amt(&text);
    }

    #[test]
    fn fuzz_unionpay_file_content(
        text in "[A-Za-z0-9+/=]{0,600}|.{0,200}",
        raw in proptest::collection::vec(any::<u8>(), 0..2048),
    ) {
        let _ = crate::statement::decode_file_content(&text);
        let day = chrono::NaiveDate::from_ymd_opt(2026, 1, 1).unwrap();
        let _ = crate::statement::parse_reconciliation_zip_bytes(&raw, day);
    }
}
