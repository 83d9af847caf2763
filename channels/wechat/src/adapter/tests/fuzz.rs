//! Fuzz cases (proptest) for everything the WeChat adapter reads from outside: callback headers
//! and bodies, the sealed resource inside them, API answers and trade bills.
//!
//! Style shared by every `fuzz_*` case in the workspace (scripts/fuzz.sh runs them):
//! - the name starts with `fuzz_`, so `cargo nextest run -E 'test(fuzz_)'` selects them all;
//! - the case count is proptest's default, read from `PROPTEST_CASES` (256 unless set), which
//!   keeps CI to seconds per case; `scripts/fuzz.sh --long` raises it;
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

proptest! {
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
