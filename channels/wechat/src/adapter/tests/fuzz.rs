//! Fuzz cases (proptest) for everything the WeChat adapter reads from outside: callback headers
//! and bodies, the sealed resource inside them, API answers and trade bills.
//!
//! Style shared by every `fuzz_*` case in the workspace (scripts/fuzz.sh runs them):
//! - the name starts with `fuzz_`, so `cargo nextest run -E 'test(fuzz_)'` selects them all;
//! - the case count is proptest's default, read from `PROPTEST_CASES` (256 unless set), which
//!   keeps CI to seconds per case; `scripts/fuzz.sh [CASES|SECONDSs]` raises it;
//! - one case feeds arbitrary bytes, another mutates a valid message and re-signs it, so the
//!   input gets past the signature check into the deeper parsers;
//! - the property is only "no panic, and an error is an `Err`": results are not predicted;
//! - a failure proptest finds is copied into a named `#[test]` regression case next to it.
use proptest::prelude::*;

use super::*;

/// Verifies `cb` with one adapter and one runtime for the whole run (building either per case
/// would cost more than the case).
fn verify(cb: &Callback) -> Result<Notification, Rejection> {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    static ADAPTER: OnceLock<WechatAdapter> = OnceLock::new();
    let rt = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    });
    let adapter = ADAPTER.get_or_init(adapter);
    rt.block_on(adapter.verify_callback(cb))
}

/// The platform key as an aws-lc signer: re-signing every mutated body must stay cheap.
fn platform_signer() -> &'static channel_kit::crypto::RsaSigningKey {
    static SIGNER: OnceLock<channel_kit::crypto::RsaSigningKey> = OnceLock::new();
    SIGNER.get_or_init(|| {
        channel_kit::crypto::RsaSigningKey::from_pkcs8_der(
            keys().platform.to_pkcs8_der().unwrap().as_bytes(),
        )
        .unwrap()
    })
}

fn signed_callback(body: &[u8], timestamp: i64) -> Callback {
    let nonce = "0a1b2c3d4e5f60718293a4b5c6d7e8f9";
    let message = response_message(&timestamp.to_string(), nonce, body);
    let signature = platform_signer().sign_sha256_base64(&message).unwrap();
    let mut headers = http::HeaderMap::new();
    for (name, value) in [
        ("Wechatpay-Timestamp", timestamp.to_string()),
        ("Wechatpay-Nonce", nonce.to_owned()),
        ("Wechatpay-Serial", PLATFORM_SERIAL.to_owned()),
        ("Wechatpay-Signature", signature),
    ] {
        headers.insert(name, value.parse().unwrap());
    }
    Callback {
        method: http::Method::POST,
        target: "/notify/payment".into(),
        headers,
        body: body.to_vec().into(),
    }
}

/// Replaces `len` bytes at `at` (both taken modulo the input) with `with`.
fn mutate(valid: &str, at: usize, len: usize, with: &[u8]) -> Vec<u8> {
    let mut bytes = valid.as_bytes().to_vec();
    let at = at % (bytes.len() + 1);
    let end = (at + len % 16).min(bytes.len());
    bytes.splice(at..end, with.iter().copied());
    bytes
}

fn header_value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ -~]{0,80}",
        Just(NOW.to_string()),
        Just(PLATFORM_SERIAL.to_owned()),
        Just("WECHATPAY2-SHA256-RSA2048".to_owned()),
        "-?[0-9]{1,25}",
    ]
}

/// What the stand-in WeChat answers every request with next: HTTP status, body, and whether the
/// answer carries the platform's signature (over exactly these bytes).
static ANSWER: std::sync::Mutex<(u16, Vec<u8>, bool)> =
    std::sync::Mutex::new((200, Vec::new(), true));

/// Sets [`ANSWER`] and makes `call` with it, one exchange at a time (`cargo test` runs tests on
/// threads of one process; nextest gives each its own).
fn exchange(call: ApiCall, status: u16, body: Vec<u8>, signed: bool) -> String {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    *ANSWER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = (status, body, signed);
    call.run(api_adapter())
}

/// The runtime every API case runs on: the stand-in WeChat is spawned on it, and it only serves
/// while a case is being driven by `block_on`.
fn api_runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    })
}

/// An adapter whose API base is a stand-in WeChat answering every path with [`ANSWER`].
fn api_adapter() -> &'static WechatAdapter {
    static ADAPTER: OnceLock<WechatAdapter> = OnceLock::new();
    ADAPTER.get_or_init(|| {
        let base = api_runtime().block_on(async {
            let app = axum::Router::new().fallback(|| async {
                let (status, body, signed) = ANSWER
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone();
                let mut headers = axum::http::HeaderMap::new();
                if signed {
                    let nonce = "5K8264ILTKCH16CQ2502SI8ZNMTM67VS";
                    let message = response_message(&NOW.to_string(), nonce, &body);
                    let signature = platform_signer().sign_sha256_base64(&message).unwrap();
                    for (name, value) in [
                        ("Wechatpay-Timestamp", NOW.to_string()),
                        ("Wechatpay-Nonce", nonce.to_owned()),
                        ("Wechatpay-Serial", PLATFORM_SERIAL.to_owned()),
                        ("Wechatpay-Signature", signature),
                    ] {
                        headers.insert(name, value.parse().unwrap());
                    }
                }
                let status = axum::http::StatusCode::from_u16(status).unwrap();
                (status, headers, body)
            });
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            format!("http://{addr}")
        });
        adapter_with(&base, false, now)
    })
}

/// One of the adapter's platform calls, each with a request that passes its own checks.
#[derive(Debug, Clone, Copy)]
enum ApiCall {
    Query,
    Close,
    Refund,
    QueryRefund,
    JsapiPrepay,
    NativePrepay,
}

const API_CALLS: [ApiCall; 6] = [
    ApiCall::Query,
    ApiCall::Close,
    ApiCall::Refund,
    ApiCall::QueryRefund,
    ApiCall::JsapiPrepay,
    ApiCall::NativePrepay,
];

impl ApiCall {
    /// A valid 2xx answer to this call (close answers 204 and then queries).
    fn valid_answer(self) -> String {
        match self {
            ApiCall::Query | ApiCall::Close => transaction(MCHID),
            // The API's refund says `status` where the notification says `refund_status`.
            ApiCall::Refund | ApiCall::QueryRefund => r#"{"refund_id":"50000000382019052709732678859","out_refund_no":"R20240101000001","transaction_id":"4200000000202401010000000001","out_trade_no":"T20240101000001","channel":"ORIGINAL","user_received_account":"招商银行信用卡0403","success_time":"2024-01-01T12:10:00+08:00","create_time":"2024-01-01T12:09:00+08:00","status":"SUCCESS","funds_account":"UNSETTLED","amount":{"total":100,"refund":40,"from":[],"payer_total":100,"payer_refund":40,"settlement_refund":40,"settlement_total":100,"discount_refund":0,"currency":"CNY"},"promotion_detail":[]}"#.into(),
            ApiCall::JsapiPrepay => {
                r#"{"prepay_id":"wx201410272009395522657a690389285100"}"#.into()
            }
            ApiCall::NativePrepay => {
                r#"{"code_url":"weixin://wxpay/bizpayurl?pr=p4lpSuKzz"}"#.into()
            }
        }
    }

    /// Calls the adapter; the result is only `Debug`-printed, never predicted.
    fn run(self, a: &WechatAdapter) -> String {
        let money = |fen| {
            Some(pb::Money {
                amount_minor: fen,
                currency: "CNY".into(),
            })
        };
        let trade = "T20240101000001".to_owned();
        api_runtime().block_on(async {
            match self {
                ApiCall::Query => format!(
                    "{:?}",
                    a.query_payment(pb::QueryPaymentRequest {
                        out_trade_no: trade,
                        ..Default::default()
                    })
                    .await
                ),
                ApiCall::Close => format!(
                    "{:?}",
                    a.close_payment(pb::ClosePaymentRequest {
                        out_trade_no: trade,
                        ..Default::default()
                    })
                    .await
                ),
                ApiCall::Refund => format!(
                    "{:?}",
                    a.refund(pb::RefundRequest {
                        out_trade_no: trade,
                        out_refund_no: "R20240101000001".into(),
                        refund: money(40),
                        total: money(100),
                        ..Default::default()
                    })
                    .await
                ),
                ApiCall::QueryRefund => format!(
                    "{:?}",
                    a.query_refund(pb::QueryRefundRequest {
                        out_trade_no: trade,
                        out_refund_no: "R20240101000001".into(),
                        ..Default::default()
                    })
                    .await
                ),
                ApiCall::JsapiPrepay | ApiCall::NativePrepay => {
                    let method = if matches!(self, ApiCall::JsapiPrepay) {
                        pb::PayMethod::WechatJsapi
                    } else {
                        pb::PayMethod::WechatNative
                    };
                    format!(
                        "{:?}",
                        a.prepay(pb::PrepayRequest {
                            out_trade_no: trade,
                            method: method as i32,
                            amount: money(100),
                            subject: "coffee".into(),
                            payer_id: "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o".into(),
                            ..Default::default()
                        })
                        .await
                    )
                }
            }
        })
    }
}

/// The API harness is not vacuous: an unmutated signed answer is believed, a signed answer that
/// is not JSON gets past the signature and is refused by the parser, and an unsigned 2xx is
/// refused by verification.
#[test]
fn the_api_answer_harness_reaches_the_parsers() {
    for call in API_CALLS {
        let result = exchange(call, 200, call.valid_answer().into_bytes(), true);
        assert!(result.starts_with("Ok("), "{call:?}: {result}");
    }
    let result = exchange(ApiCall::Query, 200, b"{not json".to_vec(), true);
    assert!(result.contains("not the expected JSON"), "{result}");
    let valid = ApiCall::Query.valid_answer().into_bytes();
    let result = exchange(ApiCall::Query, 200, valid, false);
    assert!(result.contains("BadResponse"), "{result}");
}

proptest! {
    /// Signed answers (and unsigned 4xx, which WeChat sends for a request it could not verify)
    /// to every platform call, mutated, so they reach the JSON parsers, the refusal
    /// classification and the checks on the ids and amounts that came back.
    #[test]
    fn fuzz_wechat_api_answer_mutations(
        call in prop::sample::select(API_CALLS.to_vec()),
        status in prop::sample::select(vec![200u16, 204, 400, 401, 403, 404, 429, 500]),
        error_body in any::<bool>(),
        signed in prop_oneof![4 => Just(true), 1 => Just(false)],
        at in any::<usize>(), len in any::<usize>(),
        with in "[ -~]{0,12}|\"[0-9A-Z_-]{0,20}\"|-?[0-9]{1,22}|[{}\\[\\],:]{1,3}",
    ) {
        let valid = if error_body {
            r#"{"code":"ORDER_NOT_EXIST","message":"订单不存在"}"#.to_owned()
        } else {
            call.valid_answer()
        };
        let _ = exchange(call, status, mutate(&valid, at, len, with.as_bytes()), signed);
    }

    #[test]
    fn fuzz_wechat_callback_with_arbitrary_headers_and_body(
        body in proptest::collection::vec(any::<u8>(), 0..2048),
        headers in proptest::collection::vec(
            (prop::sample::select(vec![
                "Wechatpay-Timestamp", "Wechatpay-Nonce", "Wechatpay-Serial",
                "Wechatpay-Signature", "Wechatpay-Signature-Type", "Content-Type",
            ]), header_value()),
            0..6,
        ),
    ) {
        let mut cb = signed_callback(&body, NOW);
        for (name, value) in headers {
            if let Ok(value) = value.parse() {
                cb.headers.insert(name, value);
            }
        }
        let _ = verify(&cb);
    }

    /// Signed by the platform, so the mutated envelope reaches JSON parsing and decryption.
    #[test]
    fn fuzz_wechat_signed_envelope_mutations(
        at in any::<usize>(), len in any::<usize>(),
        with in proptest::collection::vec(any::<u8>(), 0..24),
        timestamp in prop_oneof![Just(NOW), any::<i64>()],
    ) {
        let body = mutate(&payment_body(), at, len, &with);
        let _ = verify(&signed_callback(&body, timestamp));
    }

    /// Signed and sealed correctly, so the mutated plaintext reaches the resource parser and
    /// the amount, status and merchant checks.
    #[test]
    fn fuzz_wechat_sealed_resource_mutations(
        at in any::<usize>(), len in any::<usize>(),
        with in "[ -~]{0,12}|\"[0-9-]{0,20}\"|-?[0-9]{1,22}",
        refund in any::<bool>(),
    ) {
        let (plain, event, original) = if refund {
            (refund_resource("SUCCESS"), "REFUND.SUCCESS", "refund")
        } else {
            (transaction(MCHID), "TRANSACTION.SUCCESS", "transaction")
        };
        let plain = String::from_utf8_lossy(&mutate(&plain, at, len, with.as_bytes())).into_owned();
        let body = envelope(event, original, &seal(APIV3_KEY, &plain, original));
        let _ = verify(&signed_callback(body.as_bytes(), NOW));
    }

    #[test]
    fn fuzz_wechat_trade_bill_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 0..4096),
    ) {
        let _ = crate::statement::parse_trade_bill_bytes(&bytes);
    }

    #[test]
    fn fuzz_wechat_bill_amounts(text in "[ -~]{0,24}|`?-?[0-9]{0,20}(\\.[0-9]{0,4})?") {
        let _ = crate::statement::parse_bill_yuan(&text);
    }
}
