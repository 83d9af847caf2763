//! The sandboxes over real HTTP on 127.0.0.1: this file plays the merchant (signing with the
//! sandbox's own protocol helpers) and a tiny callback receiver.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use sandbox::alipay::protocol as alipay;
use sandbox::form::{self, Params};
use sandbox::http_client::{self, OutgoingRequest, Reply};
use sandbox::keys;
use sandbox::serve::{self, Which};
use sandbox::unionpay::protocol as unionpay;
use sandbox::wechat::protocol as wechat;
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(10);

/// Keys are generated once per test binary; each test gets its own server (and ledger).
fn keys_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("sandbox-e2e-{}", std::process::id()));
        sandbox::keyfiles::generate_all(&dir).unwrap();
        dir
    })
}

fn read(platform: &str, file: &str) -> String {
    std::fs::read_to_string(keys_dir().join(platform).join(file)).unwrap()
}

async fn start(which: Which) -> String {
    let router = serve::build_router(which, keys_dir(), 0.001).unwrap();
    let (listener, addr) = serve::bind("127.0.0.1:0").await.unwrap();
    tokio::spawn(serve::run(listener, router));
    format!("http://{addr}")
}

async fn send(request: OutgoingRequest) -> Reply {
    http_client::send(&request, TIMEOUT).await.unwrap()
}

async fn control(base: &str, method: &str, path: &str, body: Value) -> Value {
    let mut request = OutgoingRequest::post(
        format!("{base}{path}"),
        "application/json",
        body.to_string(),
    );
    request.method = method.to_owned();
    let reply = send(request).await;
    serde_json::from_slice(&reply.body).unwrap_or(Value::Null)
}

async fn pay(base: &str, out_trade_no: &str) -> Value {
    control(
        base,
        "POST",
        &format!("/sandbox/trades/{out_trade_no}/pay"),
        json!({"outcome": "success"}),
    )
    .await
}

/// What the receiver saw.
#[derive(Clone, Debug)]
struct Received {
    headers: HeaderMap,
    body: Vec<u8>,
}

#[derive(Clone, Default)]
struct Receiver {
    seen: Arc<Mutex<Vec<Received>>>,
    /// Statuses to answer with, in order; the last one repeats.
    script: Arc<Mutex<Vec<u16>>>,
    body: &'static str,
}

impl Receiver {
    fn seen(&self) -> Vec<Received> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits (bounded) until `n` requests arrived.
    async fn wait_for(&self, n: usize) -> Vec<Received> {
        for _ in 0..400 {
            let seen = self.seen();
            if seen.len() >= n {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("expected {n} callbacks, got {}", self.seen().len());
    }
}

async fn receive(
    State(receiver): State<Receiver>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
    receiver.seen.lock().unwrap().push(Received {
        headers,
        body: body.to_vec(),
    });
    let status = {
        let mut script = receiver.script.lock().unwrap();
        if script.len() > 1 {
            script.remove(0)
        } else {
            script.first().copied().unwrap_or(200)
        }
    };
    (StatusCode::from_u16(status).unwrap(), receiver.body)
}

async fn start_receiver(script: Vec<u16>, body: &'static str) -> (String, Receiver) {
    let receiver = Receiver {
        seen: Arc::default(),
        script: Arc::new(Mutex::new(script)),
        body,
    };
    let app = axum::Router::new()
        .route("/notify", post(receive))
        .with_state(receiver.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/notify", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, receiver)
}

async fn deliveries(base: &str) -> Vec<Value> {
    let reply = send(OutgoingRequest {
        method: "GET".into(),
        url: format!("{base}/sandbox/callbacks"),
        headers: vec![],
        body: vec![],
    })
    .await;
    serde_json::from_slice(&reply.body).unwrap()
}

// ---------------------------------------------------------------- WeChat merchant side

struct WechatMerchant {
    base: String,
    mchid: String,
    appid: String,
    serial: String,
    key: rsa::RsaPrivateKey,
    platform_key: rsa::RsaPublicKey,
    apiv3: wechat::ApiV3Key,
}

impl WechatMerchant {
    async fn start() -> Self {
        Self {
            base: start(Which::Wechat).await,
            mchid: read("wechat", "mchid.txt"),
            appid: read("wechat", "appid.txt"),
            serial: read("wechat", "merchant_serial.txt"),
            key: keys::load_private_key_pem(&read("wechat", "merchant_key.pem")).unwrap(),
            platform_key: keys::load_public_key_pem(&read("wechat", "platform_public.pem"))
                .unwrap(),
            apiv3: wechat::ApiV3Key::new(read("wechat", "apiv3_key.txt").as_bytes()).unwrap(),
        }
    }

    async fn call(&self, method: &str, target: &str, body: &str) -> Reply {
        let timestamp = chrono::Utc::now().timestamp();
        let nonce = "5K8264ILTKCH16CQ2502SI8ZNMTM67VS";
        let message = wechat::request_message(method, target, timestamp, nonce, body.as_bytes());
        let auth = wechat::Authorization {
            mchid: self.mchid.clone(),
            nonce_str: nonce.into(),
            timestamp,
            serial_no: self.serial.clone(),
            signature: keys::sign_sha256_rsa(&self.key, &message).unwrap(),
        };
        let reply = send(OutgoingRequest {
            method: method.into(),
            url: format!("{}{target}", self.base),
            headers: vec![
                ("Authorization".into(), auth.to_header_value()),
                ("Content-Type".into(), "application/json".into()),
                ("Accept".into(), "application/json".into()),
            ],
            body: body.as_bytes().to_vec(),
        })
        .await;
        let headers = wechat::SignatureHeaders {
            timestamp: reply
                .header("Wechatpay-Timestamp")
                .unwrap()
                .parse()
                .unwrap(),
            nonce: reply.header("Wechatpay-Nonce").unwrap().into(),
            signature: reply.header("Wechatpay-Signature").unwrap().into(),
            serial: reply.header("Wechatpay-Serial").unwrap().into(),
        };
        wechat::verify_platform_signature(&self.platform_key, &headers, &reply.body).unwrap();
        reply
    }

    fn native_body(&self, out_trade_no: &str, total: u64, notify_url: &str) -> String {
        json!({
            "appid": self.appid, "mchid": self.mchid, "description": "sandbox test",
            "out_trade_no": out_trade_no, "notify_url": notify_url,
            "amount": {"total": total, "currency": "CNY"},
        })
        .to_string()
    }

    async fn native(&self, out_trade_no: &str, total: u64, notify_url: &str) -> Reply {
        self.call(
            "POST",
            "/v3/pay/transactions/native",
            &self.native_body(out_trade_no, total, notify_url),
        )
        .await
    }

    /// Verifies and decrypts a callback the receiver got.
    fn open_callback(&self, received: &Received) -> Value {
        let header = |name: &str| {
            received
                .headers
                .get(name)
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned()
        };
        let headers = wechat::SignatureHeaders {
            timestamp: header("wechatpay-timestamp").parse().unwrap(),
            nonce: header("wechatpay-nonce"),
            signature: header("wechatpay-signature"),
            serial: header("wechatpay-serial"),
        };
        assert_eq!(headers.serial, read("wechat", "platform_serial.txt"));
        wechat::verify_platform_signature(&self.platform_key, &headers, &received.body).unwrap();
        let envelope: wechat::NotificationEnvelope =
            serde_json::from_slice(&received.body).unwrap();
        serde_json::from_slice(&envelope.open(&self.apiv3).unwrap()).unwrap()
    }
}

fn json_body(reply: &Reply) -> Value {
    serde_json::from_slice(&reply.body).unwrap()
}

#[tokio::test]
async fn wechat_native_prepay_then_query_round_trips_with_signed_answers() {
    let m = WechatMerchant::start().await;
    let reply = m.native("WX0001", 8888, "http://127.0.0.1:9/notify").await;
    assert_eq!(reply.status, 200);
    assert!(
        json_body(&reply)["code_url"]
            .as_str()
            .unwrap()
            .starts_with("weixin://wxpay/bizpayurl?pr=")
    );
    let target = format!("/v3/pay/transactions/out-trade-no/WX0001?mchid={}", m.mchid);
    let query = json_body(&m.call("GET", &target, "").await);
    assert_eq!(query["trade_state"], "NOTPAY");
    assert_eq!(query["amount"]["total"], 8888);
    let missing = m
        .call(
            "GET",
            &format!("/v3/pay/transactions/out-trade-no/NOPE?mchid={}", m.mchid),
            "",
        )
        .await;
    assert_eq!(
        (missing.status, json_body(&missing)["code"].clone()),
        (404, json!("ORDER_NOT_EXIST"))
    );
    let close = m
        .call(
            "POST",
            "/v3/pay/transactions/out-trade-no/WX0001/close",
            &json!({"mchid": m.mchid}).to_string(),
        )
        .await;
    assert_eq!(close.status, 204);
    assert_eq!(
        json_body(&m.call("GET", &target, "").await)["trade_state"],
        "CLOSED"
    );
}

#[tokio::test]
async fn wechat_duplicate_prepay_returns_the_same_code_url_and_counts_two_requests() {
    let m = WechatMerchant::start().await;
    let first = json_body(&m.native("WX0002", 100, "http://127.0.0.1:9/n").await);
    let second = json_body(&m.native("WX0002", 100, "http://127.0.0.1:9/n").await);
    assert_eq!(first, second);
    let trade = control(&m.base, "GET", "/sandbox/trades/WX0002", Value::Null).await;
    assert_eq!(trade["prepay_requests"], 2);
    let conflict = m.native("WX0002", 101, "http://127.0.0.1:9/n").await;
    assert_eq!(
        (conflict.status, json_body(&conflict)["code"].clone()),
        (403, json!("OUT_TRADE_NO_USED"))
    );
}

#[tokio::test]
async fn wechat_bad_signature_is_refused_with_401_sign_error() {
    let m = WechatMerchant::start().await;
    let body = m.native_body("WX0003", 100, "http://127.0.0.1:9/n");
    let timestamp = chrono::Utc::now().timestamp();
    let message =
        wechat::request_message("POST", "/v3/pay/transactions/native", timestamp, "N", b"{}");
    let auth = wechat::Authorization {
        mchid: m.mchid.clone(),
        nonce_str: "N".into(),
        timestamp,
        serial_no: m.serial.clone(),
        signature: keys::sign_sha256_rsa(&m.key, &message).unwrap(),
    };
    let reply = send(
        OutgoingRequest::post(
            format!("{}/v3/pay/transactions/native", m.base),
            "application/json",
            body,
        )
        .header("Authorization", auth.to_header_value()),
    )
    .await;
    assert_eq!(reply.status, 401);
    assert_eq!(json_body(&reply)["code"], "SIGN_ERROR");
    // WeChat does not sign its answer to a request whose signature it rejected.
    assert!(reply.header("Wechatpay-Signature").is_none());
    assert!(reply.header("Wechatpay-Serial").is_none());
}

#[tokio::test]
async fn wechat_payment_callback_is_signed_encrypted_and_delivered() {
    let m = WechatMerchant::start().await;
    let (url, receiver) = start_receiver(vec![200], "").await;
    m.native("WX0004", 500, &url).await;
    let paid = pay(&m.base, "WX0004").await;
    assert_eq!(paid["state"], "SUCCEEDED");
    let seen = receiver.wait_for(1).await;
    let transaction = m.open_callback(&seen[0]);
    assert_eq!(transaction["out_trade_no"], "WX0004");
    assert_eq!(transaction["trade_state"], "SUCCESS");
    assert_eq!(transaction["amount"]["total"], 500);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let log = deliveries(&m.base).await;
    assert_eq!(log.len(), 1);
    assert_eq!(log[0]["delivered"], true);
}

#[tokio::test]
async fn wechat_callback_answered_500_is_retried_on_the_scaled_schedule_then_delivered() {
    let m = WechatMerchant::start().await;
    let (url, receiver) = start_receiver(vec![500, 500, 204], "").await;
    m.native("WX0005", 500, &url).await;
    pay(&m.base, "WX0005").await;
    let seen = receiver.wait_for(3).await;
    let ids: Vec<String> = seen
        .iter()
        .map(|r| m.open_callback(r)["out_trade_no"].to_string())
        .collect();
    assert!(ids.iter().all(|id| id == "\"WX0005\""));
    let envelope_ids: Vec<Value> = seen
        .iter()
        .map(|r| serde_json::from_slice::<Value>(&r.body).unwrap()["id"].clone())
        .collect();
    assert!(
        envelope_ids.windows(2).all(|w| w[0] == w[1]),
        "event id is stable across retries"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let log = deliveries(&m.base).await;
    let summary: Vec<(u64, Value, bool)> = log
        .iter()
        .map(|d| {
            (
                d["attempt"].as_u64().unwrap(),
                d["http_status"].clone(),
                d["delivered"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (1, json!(500), false),
            (2, json!(500), false),
            (3, json!(204), true)
        ]
    );
    assert_eq!(
        receiver.seen().len(),
        3,
        "no attempt after the acknowledgement"
    );
}

#[tokio::test]
async fn wechat_lose_mode_delivers_nothing_and_copies_mode_delivers_three() {
    let m = WechatMerchant::start().await;
    let (url, receiver) = start_receiver(vec![200], "").await;
    control(
        &m.base,
        "POST",
        "/sandbox/faults",
        json!({"callback_mode": "lose"}),
    )
    .await;
    m.native("WX0006", 100, &url).await;
    pay(&m.base, "WX0006").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(receiver.seen().is_empty());
    let faults = control(
        &m.base,
        "POST",
        "/sandbox/faults",
        json!({"callback_mode": "deliver", "callback_copies": 3}),
    )
    .await;
    assert_eq!(faults["callback_copies"], 3);
    m.native("WX0007", 100, &url).await;
    pay(&m.base, "WX0007").await;
    let seen = receiver.wait_for(3).await;
    assert_eq!(seen.len(), 3);
    let reset = control(&m.base, "DELETE", "/sandbox/faults", Value::Null).await;
    assert_eq!(reset["callback_copies"], 1);
}

#[tokio::test]
async fn wechat_refund_over_the_paid_amount_is_refused_and_close_of_a_paid_trade_too() {
    let m = WechatMerchant::start().await;
    let (url, receiver) = start_receiver(vec![200], "").await;
    m.native("WX0008", 1000, &url).await;
    pay(&m.base, "WX0008").await;
    receiver.wait_for(1).await;
    let refund = |no: &str, amount: u64| {
        json!({"out_trade_no": "WX0008", "out_refund_no": no, "notify_url": url,
               "amount": {"refund": amount, "total": 1000, "currency": "CNY"}})
        .to_string()
    };
    let first = m
        .call("POST", "/v3/refund/domestic/refunds", &refund("R1", 600))
        .await;
    assert_eq!(first.status, 200);
    let again = m
        .call("POST", "/v3/refund/domestic/refunds", &refund("R1", 600))
        .await;
    assert_eq!(
        json_body(&again)["refund_id"],
        json_body(&first)["refund_id"]
    );
    let over = m
        .call("POST", "/v3/refund/domestic/refunds", &refund("R2", 401))
        .await;
    assert_eq!(
        (over.status, json_body(&over)["code"].clone()),
        (400, json!("INVALID_REQUEST"))
    );
    let refund_callback = m.open_callback(&receiver.wait_for(2).await[1]);
    assert_eq!(refund_callback["refund_status"], "SUCCESS");
    let queried = m.call("GET", "/v3/refund/domestic/refunds/R1", "").await;
    assert_eq!(json_body(&queried)["status"], "SUCCESS");
    let close = m
        .call(
            "POST",
            "/v3/pay/transactions/out-trade-no/WX0008/close",
            &json!({"mchid": m.mchid}).to_string(),
        )
        .await;
    assert_eq!(json_body(&close)["code"], "ORDERPAID");
}

#[tokio::test]
async fn wechat_tampered_notify_reaches_the_receiver_once_and_reports_its_answer() {
    let m = WechatMerchant::start().await;
    let (url, receiver) = start_receiver(vec![401], "").await;
    m.native("WX0009", 100, &url).await;
    let reply = control(
        &m.base,
        "POST",
        "/sandbox/trades/WX0009/notify",
        json!({"tamper": "signature"}),
    )
    .await;
    assert_eq!(reply["http_status"], 401);
    let seen = receiver.seen();
    assert_eq!(seen.len(), 1);
    let header = |name: &str| {
        seen[0]
            .headers
            .get(name)
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned()
    };
    let headers = wechat::SignatureHeaders {
        timestamp: header("wechatpay-timestamp").parse().unwrap(),
        nonce: header("wechatpay-nonce"),
        signature: header("wechatpay-signature"),
        serial: header("wechatpay-serial"),
    };
    assert!(wechat::verify_platform_signature(&m.platform_key, &headers, &seen[0].body).is_err());
    let trade = control(&m.base, "GET", "/sandbox/trades/WX0009", Value::Null).await;
    assert_eq!(trade["state"], "PENDING");
}

// ---------------------------------------------------------------- Alipay merchant side

struct AlipayMerchant {
    base: String,
    app_id: String,
    key: rsa::RsaPrivateKey,
    alipay_key: rsa::RsaPublicKey,
}

impl AlipayMerchant {
    async fn start() -> Self {
        Self {
            base: start(Which::Alipay).await,
            app_id: read("alipay", "app_id.txt"),
            key: keys::load_private_key_pem(&read("alipay", "app_private_key.pem")).unwrap(),
            alipay_key: keys::load_public_key_pem(&read("alipay", "alipay_public_key.pem"))
                .unwrap(),
        }
    }

    fn signed_params(&self, method: &str, biz: &Value, notify_url: Option<&str>) -> Params {
        let mut params = Params::new();
        for (k, v) in [
            ("app_id", self.app_id.as_str()),
            ("method", method),
            ("format", "JSON"),
            ("charset", "utf-8"),
            ("sign_type", "RSA2"),
            ("timestamp", "2024-01-01 12:00:00"),
            ("version", "1.0"),
        ] {
            params.insert(k.into(), v.into());
        }
        params.insert("biz_content".into(), biz.to_string());
        if let Some(url) = notify_url {
            params.insert("notify_url".into(), url.into());
        }
        let content = alipay::signing_content(&params, &["sign"]);
        let sign = BASE64.encode(keys::sign_sha256_rsa(&self.key, content.as_bytes()).unwrap());
        params.insert("sign".into(), sign);
        params
    }

    /// Calls the gateway, verifies the signed node, returns it.
    async fn call(&self, method: &str, biz: Value, notify_url: Option<&str>) -> Value {
        let params = self.signed_params(method, &biz, notify_url);
        self.post(&params).await
    }

    async fn post(&self, params: &Params) -> Value {
        let body = form::encode(params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let reply = send(OutgoingRequest::post(
            format!("{}/gateway.do?charset=utf-8", self.base),
            "application/x-www-form-urlencoded;charset=utf-8",
            body,
        ))
        .await;
        let (_, node) = alipay::verify_response_body(&self.alipay_key, &reply.text()).unwrap();
        serde_json::from_str(&node).unwrap()
    }
}

#[tokio::test]
async fn alipay_precreate_query_duplicate_and_bad_signature() {
    let m = AlipayMerchant::start().await;
    let biz = json!({"out_trade_no": "AP0001", "total_amount": "88.88", "subject": "s"});
    let first = m
        .call(
            "alipay.trade.precreate",
            biz.clone(),
            Some("http://127.0.0.1:9/n"),
        )
        .await;
    assert_eq!(first["code"], "10000");
    let second = m
        .call("alipay.trade.precreate", biz, Some("http://127.0.0.1:9/n"))
        .await;
    assert_eq!(first["qr_code"], second["qr_code"]);
    assert!(
        first["qr_code"]
            .as_str()
            .unwrap()
            .starts_with("https://qr.alipay.com/")
    );
    let trade = control(&m.base, "GET", "/sandbox/trades/AP0001", Value::Null).await;
    assert_eq!(
        (
            trade["prepay_requests"].clone(),
            trade["amount_minor"].clone()
        ),
        (json!(2), json!(8888))
    );
    // A precreated QR code is no trade until the payer scans it.
    let query = m
        .call(
            "alipay.trade.query",
            json!({"out_trade_no": "AP0001"}),
            None,
        )
        .await;
    assert_eq!(query["sub_code"], "ACQ.TRADE_NOT_EXIST");
    control(&m.base, "POST", "/sandbox/trades/AP0001/scan", Value::Null).await;
    let query = m
        .call(
            "alipay.trade.query",
            json!({"out_trade_no": "AP0001"}),
            None,
        )
        .await;
    assert_eq!(query["trade_status"], "WAIT_BUYER_PAY");
    let missing = m
        .call("alipay.trade.query", json!({"out_trade_no": "NOPE"}), None)
        .await;
    assert_eq!(missing["sub_code"], "ACQ.TRADE_NOT_EXIST");
    let other = json!({"out_trade_no": "AP0001", "total_amount": "88.89", "subject": "s"});
    let conflict = m
        .call(
            "alipay.trade.precreate",
            other,
            Some("http://127.0.0.1:9/n"),
        )
        .await;
    assert_eq!(conflict["code"], "40004");
    let mut forged = m.signed_params(
        "alipay.trade.query",
        &json!({"out_trade_no": "AP0001"}),
        None,
    );
    forged.insert(
        "biz_content".into(),
        json!({"out_trade_no": "AP0002"}).to_string(),
    );
    let refused = m.post(&forged).await;
    assert_eq!(refused["sub_code"], "isv.invalid-signature");
}

#[tokio::test]
async fn alipay_payment_notify_is_verifiable_retried_until_success_and_refund_is_bounded() {
    let m = AlipayMerchant::start().await;
    let (url, receiver) = start_receiver(vec![200], "fail").await;
    let biz = json!({"out_trade_no": "AP0003", "total_amount": "10.00", "subject": "s"});
    m.call("alipay.trade.precreate", biz, Some(&url)).await;
    pay(&m.base, "AP0003").await;
    // "fail" is not "success": Alipay retries (4 min × 0.001 = 240 ms).
    let seen = receiver.wait_for(2).await;
    let params = form::decode(&String::from_utf8_lossy(&seen[0].body)).unwrap();
    alipay::verify_notify(&m.alipay_key, &params).unwrap();
    assert_eq!(params["trade_status"], "TRADE_SUCCESS");
    assert_eq!(params["total_amount"], "10.00");
    let second = form::decode(&String::from_utf8_lossy(&seen[1].body)).unwrap();
    assert_eq!(params["notify_id"], second["notify_id"]);
    let query = m
        .call(
            "alipay.trade.query",
            json!({"out_trade_no": "AP0003"}),
            None,
        )
        .await;
    assert_eq!(query["trade_status"], "TRADE_SUCCESS");
    let refund = |no: &str, amount: &str| json!({"out_trade_no": "AP0003", "refund_amount": amount, "out_request_no": no});
    let ok = m
        .call("alipay.trade.refund", refund("RF1", "6.00"), None)
        .await;
    assert_eq!(
        (ok["fund_change"].clone(), ok["refund_fee"].clone()),
        (json!("Y"), json!("6.00"))
    );
    let over = m
        .call("alipay.trade.refund", refund("RF2", "4.01"), None)
        .await;
    assert_eq!(over["sub_code"], "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL");
    let queried = m
        .call(
            "alipay.trade.fastpay.refund.query",
            json!({"out_trade_no": "AP0003", "out_request_no": "RF1"}),
            None,
        )
        .await;
    assert_eq!(queried["refund_status"], "REFUND_SUCCESS");
    let close = m
        .call(
            "alipay.trade.close",
            json!({"out_trade_no": "AP0003"}),
            None,
        )
        .await;
    assert_eq!(close["sub_code"], "ACQ.TRADE_STATUS_ERROR");
}

// ---------------------------------------------------------------- UnionPay merchant side

struct UnionpayMerchant {
    base: String,
    mer_id: String,
    cert_id: String,
    key: rsa::RsaPrivateKey,
}

impl UnionpayMerchant {
    async fn start() -> Self {
        Self {
            base: start(Which::Unionpay).await,
            mer_id: read("unionpay", "mer_id.txt"),
            cert_id: read("unionpay", "merchant_cert_id.txt"),
            key: keys::load_private_key_pem(&read("unionpay", "merchant_sign_key.pem")).unwrap(),
        }
    }

    fn sign(&self, pairs: &[(&str, &str)]) -> Params {
        let mut fields = Params::new();
        for (k, v) in [
            ("version", "5.1.0"),
            ("encoding", "utf-8"),
            ("signMethod", "01"),
            ("accessType", "0"),
            ("currencyCode", "156"),
        ] {
            fields.insert(k.into(), v.into());
        }
        fields.insert("merId".into(), self.mer_id.clone());
        fields.insert("certId".into(), self.cert_id.clone());
        for (k, v) in pairs {
            fields.insert((*k).into(), (*v).into());
        }
        let digest = unionpay::signing_digest(&fields);
        let signature = keys::sign_sha256_rsa(&self.key, digest.as_bytes()).unwrap();
        fields.insert("signature".into(), BASE64.encode(signature));
        fields
    }

    async fn post(&self, path: &str, fields: &Params) -> Params {
        let body = form::encode(fields.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let reply = send(OutgoingRequest::post(
            format!("{}{path}", self.base),
            "application/x-www-form-urlencoded;charset=UTF-8",
            body,
        ))
        .await;
        let parsed = unionpay::parse_sync_response(&reply.text());
        unionpay::verify_platform_message(&parsed, None).unwrap();
        assert_eq!(
            unionpay::normalise_pem(&parsed["signPubKeyCert"]),
            unionpay::normalise_pem(&read("unionpay", "platform_sign_cert.pem"))
        );
        parsed
    }

    async fn consume(&self, order_id: &str, amount: &str, back_url: &str) -> Params {
        let fields = self.sign(&[
            ("txnType", "01"),
            ("txnSubType", "01"),
            ("bizType", "000201"),
            ("channelType", "07"),
            ("orderId", order_id),
            ("txnTime", "20240101120000"),
            ("txnAmt", amount),
            ("backUrl", back_url),
        ]);
        self.post("/gateway/api/backTransReq.do", &fields).await
    }

    async fn file_transfer(&self, settle_date: String, txn_type: &str) -> Params {
        let fields = self.sign(&[
            ("txnType", txn_type),
            ("txnSubType", "01"),
            ("bizType", "000000"),
            ("txnTime", "20240101120000"),
            ("settleDate", &settle_date),
            ("fileType", "00"),
        ]);
        self.post("/gateway/api/fileTransRequest.do", &fields).await
    }

    async fn query(&self, order_id: &str, txn_time: &str) -> Params {
        let fields = self.sign(&[
            ("txnType", "00"),
            ("txnSubType", "00"),
            ("bizType", "000000"),
            ("channelType", "07"),
            ("orderId", order_id),
            ("txnTime", txn_time),
        ]);
        self.post("/gateway/api/queryTrans.do", &fields).await
    }
}

#[tokio::test]
async fn unionpay_consume_query_notify_and_refund() {
    let m = UnionpayMerchant::start().await;
    let (url, receiver) = start_receiver(vec![500, 200], "ok").await;
    let created = m.consume("UP00000001", "1999", &url).await;
    assert_eq!(created["respCode"], "00");
    let again = m.consume("UP00000001", "1999", &url).await;
    assert_eq!(again["respCode"], "00");
    let trade = control(&m.base, "GET", "/sandbox/trades/UP00000001", Value::Null).await;
    assert_eq!(trade["prepay_requests"], 2);
    let pending = m.query("UP00000001", "20240101120000").await;
    assert_eq!(
        (
            pending["respCode"].as_str(),
            pending["origRespCode"].as_str()
        ),
        ("00", "05")
    );
    assert_eq!(
        m.query("UP00000009", "20240101120000").await["respCode"],
        "34"
    );
    pay(&m.base, "UP00000001").await;
    let seen = receiver.wait_for(2).await;
    let notify = form::decode(&String::from_utf8_lossy(&seen[1].body)).unwrap();
    unionpay::verify_platform_message(&notify, None).unwrap();
    assert_eq!(
        (notify["respCode"].as_str(), notify["txnAmt"].as_str()),
        ("00", "1999")
    );
    let paid = m.query("UP00000001", "20240101120000").await;
    assert_eq!(paid["origRespCode"], "00");
    let refund = |order_id: &str, amount: &str| {
        m.sign(&[
            ("txnType", "04"),
            ("txnSubType", "00"),
            ("bizType", "000201"),
            ("orderId", order_id),
            ("origQryId", paid["queryId"].as_str()),
            ("txnTime", "20240101130000"),
            ("txnAmt", amount),
            ("backUrl", url.as_str()),
        ])
    };
    let ok = m
        .post("/gateway/api/backTransReq.do", &refund("UPR0000001", "999"))
        .await;
    assert_eq!(ok["respCode"], "00");
    let over = m
        .post(
            "/gateway/api/backTransReq.do",
            &refund("UPR0000002", "1001"),
        )
        .await;
    assert_ne!(over["respCode"], "00");
    let mut forged = refund("UPR0000003", "1");
    forged.insert("txnAmt".into(), "2".into());
    let refused = m.post("/gateway/api/backTransReq.do", &forged).await;
    assert_eq!(refused["respCode"], "11");
}

/// `issuer` signed `cert` (sha256WithRSA) and names it as its issuer.
fn issued_by(cert: &x509_cert::Certificate, issuer: &x509_cert::Certificate) -> bool {
    use rsa::pkcs1v15::{Signature, VerifyingKey};
    use rsa::pkcs8::DecodePublicKey as _;
    use rsa::signature::Verifier as _;
    use x509_cert::der::Encode as _;
    let spki = issuer
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .unwrap();
    let key = rsa::RsaPublicKey::from_public_key_der(&spki).unwrap();
    let signature = Signature::try_from(cert.signature.raw_bytes()).unwrap();
    cert.tbs_certificate.issuer == issuer.tbs_certificate.subject
        && VerifyingKey::<sha2::Sha256>::new(key)
            .verify(&cert.tbs_certificate.to_der().unwrap(), &signature)
            .is_ok()
}

#[tokio::test]
async fn unionpay_signs_with_a_certificate_issued_by_its_middle_and_root() {
    use x509_cert::der::DecodePem as _;
    let m = UnionpayMerchant::start().await;
    let answer = m.query("UP00000404", "20240101120000").await;
    let pem = |text: &str| x509_cert::Certificate::from_pem(text.as_bytes()).unwrap();
    let leaf = pem(&answer["signPubKeyCert"]);
    let middle = pem(&read("unionpay", "middle_cert.pem"));
    let root = pem(&read("unionpay", "root_cert.pem"));
    assert!(
        issued_by(&leaf, &middle),
        "signPubKeyCert is issued by the middle"
    );
    assert!(
        issued_by(&middle, &root),
        "the middle is issued by the root"
    );
    assert!(issued_by(&root, &root), "the root is self-signed");
    assert!(
        !issued_by(&leaf, &root),
        "the root does not sign answers' certificates"
    );
}

#[tokio::test]
async fn unionpay_answers_and_notifies_carry_signed_empty_fields() {
    let m = UnionpayMerchant::start().await;
    let (url, receiver) = start_receiver(vec![200], "ok").await;
    let created = m.consume("UP00000077", "100", &url).await;
    // No reqReserved was sent: the answer still carries it, empty, and signed.
    assert_eq!(created["reqReserved"], "");
    assert!(unionpay::platform_signing_string(&created).contains("&reqReserved=&"));
    // A merchant that drops blanks before verifying refuses the genuine answer.
    let mut without = created.clone();
    without.retain(|_, v| !v.is_empty());
    assert!(unionpay::verify_platform_message(&without, None).is_err());
    pay(&m.base, "UP00000077").await;
    let seen = receiver.wait_for(1).await;
    let notify = form::decode(&String::from_utf8_lossy(&seen[0].body)).unwrap();
    assert_eq!(notify["reqReserved"], "");
    unionpay::verify_platform_message(&notify, None).unwrap();
}

#[tokio::test]
async fn unionpay_query_needs_channel_type_and_order_ids_are_8_to_40_alphanumerics() {
    let m = UnionpayMerchant::start().await;
    let no_channel_type = m.sign(&[
        ("txnType", "00"),
        ("txnSubType", "00"),
        ("bizType", "000000"),
        ("orderId", "UP00000001"),
        ("txnTime", "20240101120000"),
    ]);
    let answer = m.post("/gateway/api/queryTrans.do", &no_channel_type).await;
    assert_eq!(answer["respCode"], "13");
    let (url, _receiver) = start_receiver(vec![200], "ok").await;
    let forty = "A1".repeat(20);
    assert_eq!(m.consume(&forty, "100", &url).await["respCode"], "00");
    for bad in [
        "UP00001".to_owned(),
        "A".repeat(41),
        "UP_0000001".to_owned(),
    ] {
        assert_eq!(
            m.consume(&bad, "100", &url).await["respCode"],
            "10",
            "{bad}"
        );
    }
    assert_eq!(
        m.query(&"A".repeat(41), "20240101120000").await["respCode"],
        "10"
    );
}

impl WechatMerchant {
    /// A signed request carrying `Wechatpay-Serial` (the key the merchant can verify); the answer
    /// is returned unverified.
    async fn call_asking_for(&self, method: &str, target: &str, serial: &str) -> Reply {
        let timestamp = chrono::Utc::now().timestamp();
        let nonce = "C5AC7061FCCAB6BF3E254DCF98995B8C";
        let message = wechat::request_message(method, target, timestamp, nonce, b"");
        let auth = wechat::Authorization {
            mchid: self.mchid.clone(),
            nonce_str: nonce.into(),
            timestamp,
            serial_no: self.serial.clone(),
            signature: keys::sign_sha256_rsa(&self.key, &message).unwrap(),
        };
        send(OutgoingRequest {
            method: method.into(),
            url: format!("{}{target}", self.base),
            headers: vec![
                ("Authorization".into(), auth.to_header_value()),
                ("Accept".into(), "application/json".into()),
                ("Wechatpay-Serial".into(), serial.into()),
            ],
            body: Vec::new(),
        })
        .await
    }
}

fn signature_headers(get: impl Fn(&str) -> String) -> wechat::SignatureHeaders {
    wechat::SignatureHeaders {
        timestamp: get("wechatpay-timestamp").parse().unwrap(),
        nonce: get("wechatpay-nonce"),
        signature: get("wechatpay-signature"),
        serial: get("wechatpay-serial"),
    }
}

#[tokio::test]
async fn wechat_rotation_publishes_a_certificate_signs_with_both_keys_then_only_the_new_one() {
    let m = WechatMerchant::start().await;
    let public_key_id = read("wechat", "platform_serial.txt");
    let (url, receiver) = start_receiver(vec![200], "").await;
    m.native("WXROT0001", 100, &url).await;
    let rotated = control(&m.base, "POST", "/sandbox/keys/rotate", Value::Null).await;
    let serial = rotated["serial"].as_str().unwrap().to_owned();
    assert_eq!(rotated["active"], json!([public_key_id, serial]));

    // /v3/certificates lists the new certificate, sealed with the APIv3 key; the answer is
    // signed with the key the request asked for.
    let reply = m
        .call_asking_for("GET", "/v3/certificates", &public_key_id)
        .await;
    assert_eq!(reply.status, 200);
    let headers = signature_headers(|n| reply.header(n).unwrap().to_owned());
    assert_eq!(headers.serial, public_key_id);
    wechat::verify_platform_signature(&m.platform_key, &headers, &reply.body).unwrap();
    let listed = json_body(&reply);
    let entry = &listed["data"][0];
    assert_eq!(entry["serial_no"], serial.as_str());
    let sealed = &entry["encrypt_certificate"];
    assert_eq!(sealed["associated_data"], "certificate");
    let pem = m
        .apiv3
        .open(
            sealed["nonce"].as_str().unwrap(),
            "certificate",
            sealed["ciphertext"].as_str().unwrap(),
        )
        .unwrap();
    let cert = keys::CertificateInfo::from_pem(&String::from_utf8(pem).unwrap()).unwrap();
    assert_eq!(cert.serial_hex(), serial);
    let verify_with = |headers: &wechat::SignatureHeaders, body: &[u8]| {
        let key = if headers.serial == public_key_id {
            &m.platform_key
        } else {
            assert_eq!(headers.serial, serial);
            cert.public_key()
        };
        wechat::verify_platform_signature(key, headers, body).unwrap();
    };

    // Both keys sign callbacks, at random, while both are active.
    for _ in 0..24 {
        control(
            &m.base,
            "POST",
            "/sandbox/trades/WXROT0001/notify",
            json!({"tamper": "none"}),
        )
        .await;
    }
    let seen = receiver.wait_for(24).await;
    let serials: std::collections::BTreeSet<String> = seen
        .iter()
        .map(|r| {
            let h = signature_headers(|n| r.headers[n].to_str().unwrap().to_owned());
            verify_with(&h, &r.body);
            h.serial
        })
        .collect();
    assert_eq!(serials.len(), 2, "both keys in use: {serials:?}");

    // After retirement only the new certificate signs, answers included.
    let retired = control(&m.base, "POST", "/sandbox/keys/retire", Value::Null).await;
    assert_eq!(retired["active"], json!([serial]));
    for _ in 0..6 {
        control(
            &m.base,
            "POST",
            "/sandbox/trades/WXROT0001/notify",
            json!({"tamper": "none"}),
        )
        .await;
    }
    let seen = receiver.wait_for(30).await;
    for r in &seen[24..] {
        let h = signature_headers(|n| r.headers[n].to_str().unwrap().to_owned());
        assert_eq!(h.serial, serial);
        verify_with(&h, &r.body);
    }
    let target = format!(
        "/v3/pay/transactions/out-trade-no/WXROT0001?mchid={}",
        m.mchid
    );
    let answer = m.call_asking_for("GET", &target, &public_key_id).await;
    let h = signature_headers(|n| answer.header(n).unwrap().to_owned());
    assert_eq!(h.serial, serial, "a retired key no longer signs answers");
    verify_with(&h, &answer.body);
}

#[tokio::test]
async fn wechat_out_trade_no_must_be_6_to_32_of_its_characters() {
    let m = WechatMerchant::start().await;
    assert_eq!(
        m.native("WX|*_-01", 100, "http://127.0.0.1:9/n")
            .await
            .status,
        200
    );
    for bad in [
        "WX001".to_owned(),
        "W".repeat(33),
        "WX 00001".to_owned(),
        "WX@00001".to_owned(),
    ] {
        let reply = m.native(&bad, 100, "http://127.0.0.1:9/n").await;
        assert_eq!(reply.status, 400, "{bad}");
        assert_eq!(json_body(&reply)["code"], "PARAM_ERROR", "{bad}");
    }
}

#[tokio::test]
async fn alipay_precreated_qr_is_not_found_and_cannot_be_closed_until_scanned() {
    let m = AlipayMerchant::start().await;
    let biz = json!({"out_trade_no": "AP0010", "total_amount": "1.00", "subject": "s"});
    m.call("alipay.trade.precreate", biz, Some("http://127.0.0.1:9/n"))
        .await;
    let by_no = json!({"out_trade_no": "AP0010"});
    for method in ["alipay.trade.query", "alipay.trade.close"] {
        let node = m.call(method, by_no.clone(), None).await;
        assert_eq!(
            (node["code"].as_str(), node["sub_code"].as_str()),
            (Some("40004"), Some("ACQ.TRADE_NOT_EXIST")),
            "{method}"
        );
    }
    // The control API still shows the QR, pending.
    let trade = control(&m.base, "GET", "/sandbox/trades/AP0010", Value::Null).await;
    assert_eq!(trade["state"], "PENDING");
    let scanned = control(&m.base, "POST", "/sandbox/trades/AP0010/scan", Value::Null).await;
    assert_eq!(scanned["trade_status"], "WAIT_BUYER_PAY");
    let node = m.call("alipay.trade.query", by_no.clone(), None).await;
    assert_eq!(node["trade_status"], "WAIT_BUYER_PAY");
    let closed = m.call("alipay.trade.close", by_no, None).await;
    assert_eq!(closed["code"], "10000");
}

#[tokio::test]
async fn alipay_full_refund_without_out_request_no_notifies_trade_closed_without_out_biz_no() {
    let m = AlipayMerchant::start().await;
    let (url, receiver) = start_receiver(vec![200], "success").await;
    let biz = json!({"out_trade_no": "AP0011", "total_amount": "5.00", "subject": "s"});
    m.call("alipay.trade.precreate", biz, Some(&url)).await;
    pay(&m.base, "AP0011").await;
    receiver.wait_for(1).await;
    let ok = m
        .call(
            "alipay.trade.refund",
            json!({"out_trade_no": "AP0011", "refund_amount": "5.00"}),
            None,
        )
        .await;
    assert_eq!(ok["fund_change"], "Y");
    let seen = receiver.wait_for(2).await;
    let notify = form::decode(&String::from_utf8_lossy(&seen[1].body)).unwrap();
    alipay::verify_notify(&m.alipay_key, &notify).unwrap();
    assert_eq!(notify["trade_status"], "TRADE_CLOSED");
    assert_eq!(notify["refund_fee"], "5.00");
    assert!(notify.contains_key("gmt_refund") && notify.contains_key("gmt_close"));
    assert!(!notify.contains_key("out_biz_no"), "{notify:?}");
}

#[tokio::test]
async fn alipay_unknown_app_id_is_answered_unsigned_and_long_out_trade_no_refused() {
    let m = AlipayMerchant::start().await;
    let mut params = m.signed_params("alipay.trade.query", &json!({"out_trade_no": "AP1"}), None);
    params.insert("app_id".into(), "2021999999999999".into());
    let body = form::encode(params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let reply = send(OutgoingRequest::post(
        format!("{}/gateway.do", m.base),
        "application/x-www-form-urlencoded;charset=utf-8",
        body,
    ))
    .await;
    let answer: Value = serde_json::from_slice(&reply.body).unwrap();
    assert!(answer.get("sign").is_none(), "{answer}");
    assert_eq!(answer["error_response"]["code"], "40002");
    let long = "A".repeat(65);
    let node = m
        .call(
            "alipay.trade.precreate",
            json!({"out_trade_no": long, "total_amount": "1.00", "subject": "s"}),
            None,
        )
        .await;
    assert_eq!(node["sub_code"], "ACQ.INVALID_PARAMETER");
    let node = m
        .call(
            "alipay.trade.precreate",
            json!({"out_trade_no": "A".repeat(64), "total_amount": "1.00", "subject": "s"}),
            None,
        )
        .await;
    assert_eq!(node["code"], "10000");
}

#[tokio::test]
async fn alipay_precreate_answers_escape_slashes_in_the_node_but_sign_them_plain() {
    let m = AlipayMerchant::start().await;
    let params = m.signed_params(
        "alipay.trade.precreate",
        &json!({"out_trade_no": "AP0020", "total_amount": "1.00", "subject": "s"}),
        Some("http://127.0.0.1:9/n"),
    );
    let body = form::encode(params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let reply = send(OutgoingRequest::post(
        format!("{}/gateway.do", m.base),
        "application/x-www-form-urlencoded;charset=utf-8",
        body,
    ))
    .await;
    let text = reply.text();
    assert!(text.contains(r"https:\/\/qr.alipay.com\/"), "{text}");
    let top: std::collections::BTreeMap<String, Box<serde_json::value::RawValue>> =
        serde_json::from_str(&text).unwrap();
    let node = top["alipay_trade_precreate_response"].get();
    let sign: String = serde_json::from_str(top["sign"].get()).unwrap();
    let signature = BASE64.decode(sign).unwrap();
    // The escaped text as sent does not verify; the same text with `\/` read as `/` does.
    assert!(!keys::verify_sha256_rsa(
        &m.alipay_key,
        node.as_bytes(),
        &signature
    ));
    assert!(keys::verify_sha256_rsa(
        &m.alipay_key,
        node.replace(r"\/", "/").as_bytes(),
        &signature
    ));
}

#[tokio::test]
async fn unionpay_refuses_a_second_front_submission_of_the_same_order_as_a_duplicate() {
    let m = UnionpayMerchant::start().await;
    let fields = m.sign(&[
        ("txnType", "01"),
        ("txnSubType", "01"),
        ("bizType", "000201"),
        ("channelType", "07"),
        ("orderId", "UPFRONT0001"),
        ("txnTime", "20240101120000"),
        ("txnAmt", "100"),
        ("backUrl", "http://127.0.0.1:9/n"),
        ("frontUrl", "http://127.0.0.1:9/f"),
    ]);
    let submit = || async {
        let body = form::encode(fields.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        send(OutgoingRequest::post(
            format!("{}/gateway/api/frontTransReq.do", m.base),
            "application/x-www-form-urlencoded;charset=UTF-8",
            body,
        ))
        .await
        .text()
    };
    // The payer's browser: the cashier page.
    assert!(submit().await.trim_start().starts_with('<'));
    // The same form again (a merchant submitting it too): a signed duplicate refusal.
    let again = unionpay::parse_sync_response(&submit().await);
    unionpay::verify_platform_message(&again, None).unwrap();
    assert_eq!(again["respCode"], "12");
}

// ---------------------------------------------------------------- refunds in flight

async fn faults(base: &str, patch: Value) -> Value {
    control(base, "POST", "/sandbox/faults", patch).await
}

async fn refund_view(base: &str, out_refund_no: &str) -> Value {
    control(
        base,
        "GET",
        &format!("/sandbox/refunds/{out_refund_no}"),
        Value::Null,
    )
    .await
}

/// `POST /sandbox/refunds/{no}/settle`: (HTTP status, JSON).
async fn settle(base: &str, out_refund_no: &str, outcome: &str) -> (u16, Value) {
    let reply = send(OutgoingRequest::post(
        format!("{base}/sandbox/refunds/{out_refund_no}/settle"),
        "application/json",
        json!({ "outcome": outcome }).to_string(),
    ))
    .await;
    (
        reply.status,
        serde_json::from_slice(&reply.body).unwrap_or(Value::Null),
    )
}

/// Waits (bounded) until the refund is in `state`.
async fn wait_refund_state(base: &str, out_refund_no: &str, state: &str) -> Value {
    for _ in 0..300 {
        let view = refund_view(base, out_refund_no).await;
        if view["state"] == state {
            return view;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("refund {out_refund_no} never became {state}");
}

fn event_type(received: &Received) -> String {
    let body: Value = serde_json::from_slice(&received.body).unwrap();
    body["event_type"].as_str().unwrap().to_owned()
}

impl WechatMerchant {
    /// A paid Native trade of `total` fen notifying `url`; waits for its payment callback.
    async fn paid_trade(&self, no: &str, total: u64, url: &str, receiver: &Receiver) {
        self.native(no, total, url).await;
        pay(&self.base, no).await;
        receiver.wait_for(1).await;
    }

    fn refund_body(no: &str, refund_no: &str, amount: u64, total: u64, url: &str) -> String {
        json!({"out_trade_no": no, "out_refund_no": refund_no, "notify_url": url,
               "amount": {"refund": amount, "total": total, "currency": "CNY"}})
        .to_string()
    }

    async fn refund(&self, no: &str, refund_no: &str, amount: u64, total: u64, url: &str) -> Reply {
        self.call(
            "POST",
            "/v3/refund/domestic/refunds",
            &Self::refund_body(no, refund_no, amount, total, url),
        )
        .await
    }

    async fn refund_status(&self, refund_no: &str) -> Value {
        let reply = self
            .call(
                "GET",
                &format!("/v3/refund/domestic/refunds/{refund_no}"),
                "",
            )
            .await;
        json_body(&reply)["status"].clone()
    }
}

#[tokio::test]
async fn wechat_refund_is_processing_until_refund_settle_ms_then_notifies_refund_success() {
    let m = WechatMerchant::start().await;
    let (url, receiver) = start_receiver(vec![200], "").await;
    m.paid_trade("WXR001", 1000, &url, &receiver).await;
    let f = faults(&m.base, json!({"refund_settle_ms": 400})).await;
    assert_eq!(
        (f["refund_outcome"].clone(), f["refund_settle_ms"].clone()),
        (json!("success"), json!(400))
    );
    let first = m.refund("WXR001", "R1", 600, 1000, &url).await;
    assert_eq!(
        (first.status, json_body(&first)["status"].clone()),
        (200, json!("PROCESSING"))
    );
    assert_eq!(m.refund_status("R1").await, "PROCESSING");
    let again = m.refund("WXR001", "R1", 600, 1000, &url).await;
    assert_eq!(json_body(&again)["status"], "PROCESSING");
    assert_eq!(
        json_body(&again)["refund_id"],
        json_body(&first)["refund_id"]
    );
    let view = refund_view(&m.base, "R1").await;
    assert_eq!(
        (
            view["state"].clone(),
            view["requests"].clone(),
            view["out_trade_no"].clone(),
            view["amount_minor"].clone()
        ),
        (json!("PROCESSING"), json!(2), json!("WXR001"), json!(600))
    );
    // Only the settled refund is notified.
    assert_eq!(receiver.seen().len(), 1);
    let seen = receiver.wait_for(2).await;
    assert_eq!(event_type(&seen[1]), "REFUND.SUCCESS");
    let resource = m.open_callback(&seen[1]);
    assert_eq!(resource["refund_status"], "SUCCESS");
    assert_eq!(resource["amount"]["refund"], 600);
    assert!(resource["success_time"].is_string());
    assert_eq!(m.refund_status("R1").await, "SUCCESS");
    let repeat = m.refund("WXR001", "R1", 600, 1000, &url).await;
    assert_eq!(json_body(&repeat)["status"], "SUCCESS");
    let trade = control(&m.base, "GET", "/sandbox/trades/WXR001", Value::Null).await;
    assert_eq!(trade["refunds"].as_array().unwrap().len(), 1);
    assert_eq!(
        (
            trade["refunds"][0]["state"].clone(),
            trade["refunds"][0]["requests"].clone()
        ),
        (json!("SUCCEEDED"), json!(3))
    );
}

#[tokio::test]
async fn wechat_failed_refund_is_closed_notified_and_releases_its_amount() {
    let m = WechatMerchant::start().await;
    let (url, receiver) = start_receiver(vec![200], "").await;
    m.paid_trade("WXR002", 1000, &url, &receiver).await;
    faults(&m.base, json!({"refund_outcome": "fail"})).await;
    let first = m.refund("WXR002", "R1", 1000, 1000, &url).await;
    assert_eq!(json_body(&first)["status"], "PROCESSING");
    let seen = receiver.wait_for(2).await;
    assert_eq!(event_type(&seen[1]), "REFUND.CLOSED");
    assert_eq!(m.open_callback(&seen[1])["refund_status"], "CLOSED");
    assert_eq!(m.refund_status("R1").await, "CLOSED");
    assert_eq!(refund_view(&m.base, "R1").await["state"], "FAILED");
    // The closed refund released the whole amount to a new refund number.
    faults(&m.base, json!({"refund_outcome": "success"})).await;
    let second = m.refund("WXR002", "R2", 1000, 1000, &url).await;
    assert_eq!(second.status, 200);
    assert_eq!(event_type(&receiver.wait_for(3).await[2]), "REFUND.SUCCESS");
    let over = m.refund("WXR002", "R3", 1, 1000, &url).await;
    assert_eq!(json_body(&over)["code"], "INVALID_REQUEST");
}

#[tokio::test]
async fn wechat_manual_refund_waits_for_the_control_api_and_abnormal_stays_in_flight() {
    let m = WechatMerchant::start().await;
    let (url, receiver) = start_receiver(vec![200], "").await;
    m.paid_trade("WXR003", 1000, &url, &receiver).await;
    faults(&m.base, json!({"refund_outcome": "manual"})).await;
    m.refund("WXR003", "R1", 300, 1000, &url).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(m.refund_status("R1").await, "PROCESSING");
    assert_eq!(receiver.seen().len(), 1);
    let (status, view) = settle(&m.base, "R1", "success").await;
    assert_eq!((status, view["state"].clone()), (200, json!("SUCCEEDED")));
    assert_eq!(view["requests"], 1);
    assert_eq!(event_type(&receiver.wait_for(2).await[1]), "REFUND.SUCCESS");
    assert_eq!(settle(&m.base, "R1", "fail").await.0, 409);
    assert_eq!(settle(&m.base, "nope", "fail").await.0, 404);

    faults(&m.base, json!({"refund_outcome": "abnormal"})).await;
    m.refund("WXR003", "R2", 700, 1000, &url).await;
    let seen = receiver.wait_for(3).await;
    assert_eq!(event_type(&seen[2]), "REFUND.ABNORMAL");
    assert_eq!(m.open_callback(&seen[2])["refund_status"], "ABNORMAL");
    assert_eq!(m.refund_status("R2").await, "ABNORMAL");
    let view = refund_view(&m.base, "R2").await;
    assert_eq!(
        (view["state"].clone(), view["abnormal"].clone()),
        (json!("PROCESSING"), json!(true))
    );
    // Still in flight: its amount is not refundable.
    let over = m.refund("WXR003", "R3", 1, 1000, &url).await;
    assert_eq!(over.status, 400);
    // WeChat resolves it by hand: here it fails.
    let (status, view) = settle(&m.base, "R2", "fail").await;
    assert_eq!((status, view["state"].clone()), (200, json!("FAILED")));
    assert_eq!(event_type(&receiver.wait_for(4).await[3]), "REFUND.CLOSED");
    assert_eq!(m.refund_status("R2").await, "CLOSED");
}

#[tokio::test]
async fn wechat_refund_answer_delay_leaves_the_refund_behind_and_queries_answer_promptly() {
    let m = WechatMerchant::start().await;
    let (url, receiver) = start_receiver(vec![200], "").await;
    m.paid_trade("WXR004", 1000, &url, &receiver).await;
    faults(
        &m.base,
        json!({"refund_answer_delay_ms": 1500, "refund_outcome": "manual"}),
    )
    .await;
    // A client that gives up after 300 ms.
    let body = WechatMerchant::refund_body("WXR004", "R1", 100, 1000, &url);
    let timestamp = chrono::Utc::now().timestamp();
    let nonce = "TIMEOUTNONCE0000000000000000001";
    let target = "/v3/refund/domestic/refunds";
    let message = wechat::request_message("POST", target, timestamp, nonce, body.as_bytes());
    let auth = wechat::Authorization {
        mchid: m.mchid.clone(),
        nonce_str: nonce.into(),
        timestamp,
        serial_no: m.serial.clone(),
        signature: keys::sign_sha256_rsa(&m.key, &message).unwrap(),
    };
    let timed_out = http_client::send(
        &OutgoingRequest::post(format!("{}{target}", m.base), "application/json", body)
            .header("Authorization", auth.to_header_value())
            .header("Accept", "application/json"),
        Duration::from_millis(300),
    )
    .await;
    assert!(timed_out.is_err(), "the answer should have been late");
    let view = refund_view(&m.base, "R1").await;
    assert_eq!(
        (view["state"].clone(), view["requests"].clone()),
        (json!("PROCESSING"), json!(1))
    );
    let started = std::time::Instant::now();
    assert_eq!(m.refund_status("R1").await, "PROCESSING");
    assert!(started.elapsed() < Duration::from_millis(1000));
    // api_error_rate applies to refund calls: not executed.
    faults(
        &m.base,
        json!({"api_error_rate": 1.0, "refund_answer_delay_ms": 0}),
    )
    .await;
    let failed = m.refund("WXR004", "R2", 100, 1000, &url).await;
    assert_eq!(
        (failed.status, json_body(&failed)["code"].clone()),
        (500, json!("SYSTEM_ERROR"))
    );
    faults(&m.base, json!({"api_error_rate": 0.0})).await;
    assert_eq!(
        control(&m.base, "GET", "/sandbox/refunds/R2", Value::Null).await["error"],
        "no such refund"
    );
    let reset = control(&m.base, "DELETE", "/sandbox/faults", Value::Null).await;
    assert_eq!(
        (
            reset["refund_outcome"].clone(),
            reset["refund_settle_ms"].clone(),
            reset["refund_answer_delay_ms"].clone()
        ),
        (json!("success"), json!(0), json!(0))
    );
}

#[tokio::test]
async fn alipay_failed_refund_is_refused_recorded_and_not_notified() {
    let m = AlipayMerchant::start().await;
    let (url, receiver) = start_receiver(vec![200], "success").await;
    let biz = json!({"out_trade_no": "APR001", "total_amount": "10.00", "subject": "s"});
    m.call("alipay.trade.precreate", biz, Some(&url)).await;
    pay(&m.base, "APR001").await;
    receiver.wait_for(1).await;
    // Abnormal refunds are WeChat's alone.
    assert!(faults(&m.base, json!({"refund_outcome": "abnormal"})).await["error"].is_string());
    faults(&m.base, json!({"refund_outcome": "fail"})).await;
    let refund = |no: &str, amount: &str| json!({"out_trade_no": "APR001", "refund_amount": amount, "out_request_no": no});
    let refused = m
        .call("alipay.trade.refund", refund("RF1", "10.00"), None)
        .await;
    assert_eq!(
        (refused["code"].clone(), refused["sub_code"].clone()),
        (json!("40004"), json!("ACQ.SELLER_BALANCE_NOT_ENOUGH"))
    );
    let again = m
        .call("alipay.trade.refund", refund("RF1", "10.00"), None)
        .await;
    assert_eq!(again["sub_code"], "ACQ.SELLER_BALANCE_NOT_ENOUGH");
    let view = refund_view(&m.base, "RF1").await;
    assert_eq!(
        (view["state"].clone(), view["requests"].clone()),
        (json!("FAILED"), json!(2))
    );
    let queried = m
        .call(
            "alipay.trade.fastpay.refund.query",
            json!({"out_trade_no": "APR001", "out_request_no": "RF1"}),
            None,
        )
        .await;
    assert_eq!(queried["code"], "10000");
    assert!(queried.get("refund_status").is_none(), "{queried}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(receiver.seen().len(), 1, "no notify for a refused refund");
    // The refused amount is refundable under a new number.
    faults(&m.base, json!({"refund_outcome": "success"})).await;
    let ok = m
        .call("alipay.trade.refund", refund("RF2", "10.00"), None)
        .await;
    assert_eq!(
        (ok["fund_change"].clone(), ok["refund_fee"].clone()),
        (json!("Y"), json!("10.00"))
    );
}

#[tokio::test]
async fn alipay_manual_refund_answers_fund_change_n_until_settled_then_notifies() {
    let m = AlipayMerchant::start().await;
    let (url, receiver) = start_receiver(vec![200], "success").await;
    let biz = json!({"out_trade_no": "APR002", "total_amount": "10.00", "subject": "s"});
    m.call("alipay.trade.precreate", biz, Some(&url)).await;
    pay(&m.base, "APR002").await;
    receiver.wait_for(1).await;
    faults(&m.base, json!({"refund_outcome": "manual"})).await;
    let refund =
        json!({"out_trade_no": "APR002", "refund_amount": "4.00", "out_request_no": "RF1"});
    let first = m.call("alipay.trade.refund", refund.clone(), None).await;
    assert_eq!(
        (
            first["code"].clone(),
            first["fund_change"].clone(),
            first["refund_fee"].clone()
        ),
        (json!("10000"), json!("N"), json!("0.00"))
    );
    let query = || {
        m.call(
            "alipay.trade.fastpay.refund.query",
            json!({"out_trade_no": "APR002", "out_request_no": "RF1"}),
            None,
        )
    };
    assert!(query().await.get("refund_status").is_none());
    let (status, view) = settle(&m.base, "RF1", "success").await;
    assert_eq!((status, view["state"].clone()), (200, json!("SUCCEEDED")));
    let seen = receiver.wait_for(2).await;
    let notify = form::decode(&String::from_utf8_lossy(&seen[1].body)).unwrap();
    alipay::verify_notify(&m.alipay_key, &notify).unwrap();
    assert_eq!(
        (
            notify["trade_status"].as_str(),
            notify["refund_fee"].as_str(),
            notify["out_biz_no"].as_str()
        ),
        ("TRADE_SUCCESS", "4.00", "RF1")
    );
    assert_eq!(query().await["refund_status"], "REFUND_SUCCESS");
    let repeat = m.call("alipay.trade.refund", refund, None).await;
    assert_eq!(
        (repeat["fund_change"].clone(), repeat["refund_fee"].clone()),
        (json!("N"), json!("4.00"))
    );
    assert_eq!(refund_view(&m.base, "RF1").await["requests"], 2);
    assert_eq!(settle(&m.base, "RF1", "abnormal").await.0, 400);
}

impl UnionpayMerchant {
    fn refund_fields(&self, order_id: &str, orig_qry_id: &str, amount: &str, url: &str) -> Params {
        self.sign(&[
            ("txnType", "04"),
            ("txnSubType", "00"),
            ("bizType", "000201"),
            ("orderId", order_id),
            ("origQryId", orig_qry_id),
            ("txnTime", "20240101130000"),
            ("txnAmt", amount),
            ("backUrl", url),
        ])
    }
}

#[tokio::test]
async fn unionpay_refund_is_accepted_processing_then_notified_and_queried_by_its_own_order() {
    let m = UnionpayMerchant::start().await;
    let (url, receiver) = start_receiver(vec![200], "ok").await;
    m.consume("UPR1000001", "1000", &url).await;
    pay(&m.base, "UPR1000001").await;
    receiver.wait_for(1).await;
    let paid = m.query("UPR1000001", "20240101120000").await;
    faults(&m.base, json!({"refund_settle_ms": 400})).await;
    let fields = m.refund_fields("UPREF00001", &paid["queryId"], "600", &url);
    let accepted = m.post("/gateway/api/backTransReq.do", &fields).await;
    assert_eq!(accepted["respCode"], "00");
    let processing = m.query("UPREF00001", "20240101130000").await;
    assert_eq!(
        (
            processing["respCode"].as_str(),
            processing["origRespCode"].as_str()
        ),
        ("00", "05")
    );
    // ASSUMPTION under test: a resubmission is refused as a duplicate, and counted.
    let duplicate = m.post("/gateway/api/backTransReq.do", &fields).await;
    assert_eq!(duplicate["respCode"], "12");
    assert_eq!(refund_view(&m.base, "UPREF00001").await["requests"], 2);
    let seen = receiver.wait_for(2).await;
    let notify = form::decode(&String::from_utf8_lossy(&seen[1].body)).unwrap();
    unionpay::verify_platform_message(&notify, None).unwrap();
    assert_eq!(
        (
            notify["txnType"].as_str(),
            notify["respCode"].as_str(),
            notify["orderId"].as_str(),
            notify["txnAmt"].as_str()
        ),
        ("04", "00", "UPREF00001", "600")
    );
    assert_eq!(
        m.query("UPREF00001", "20240101130000").await["origRespCode"],
        "00"
    );
    assert_eq!(
        refund_view(&m.base, "UPREF00001").await["state"],
        "SUCCEEDED"
    );
}

#[tokio::test]
async fn unionpay_failed_refund_is_notified_with_a_failure_code_and_queried_as_failed() {
    let m = UnionpayMerchant::start().await;
    let (url, receiver) = start_receiver(vec![200], "ok").await;
    m.consume("UPR2000001", "1000", &url).await;
    pay(&m.base, "UPR2000001").await;
    receiver.wait_for(1).await;
    let paid = m.query("UPR2000001", "20240101120000").await;
    faults(&m.base, json!({"refund_outcome": "manual"})).await;
    let fields = m.refund_fields("UPREF00002", &paid["queryId"], "1000", &url);
    assert_eq!(
        m.post("/gateway/api/backTransReq.do", &fields).await["respCode"],
        "00"
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(receiver.seen().len(), 1);
    let (status, _) = settle(&m.base, "UPREF00002", "fail").await;
    assert_eq!(status, 200);
    wait_refund_state(&m.base, "UPREF00002", "FAILED").await;
    let seen = receiver.wait_for(2).await;
    let notify = form::decode(&String::from_utf8_lossy(&seen[1].body)).unwrap();
    unionpay::verify_platform_message(&notify, None).unwrap();
    assert_eq!(
        (notify["txnType"].as_str(), notify["respCode"].as_str()),
        ("04", "01")
    );
    assert_eq!(
        m.query("UPREF00002", "20240101130000").await["origRespCode"],
        "01"
    );
    // The failed refund's amount is refundable again under a new orderId.
    let fields = m.refund_fields("UPREF00003", &paid["queryId"], "1000", &url);
    assert_eq!(
        m.post("/gateway/api/backTransReq.do", &fields).await["respCode"],
        "00"
    );
}

#[tokio::test]
async fn alipay_refund_answer_delay_and_unionpay_api_errors_apply_to_refund_calls() {
    let m = AlipayMerchant::start().await;
    let (url, receiver) = start_receiver(vec![200], "success").await;
    let biz = json!({"out_trade_no": "APR003", "total_amount": "10.00", "subject": "s"});
    m.call("alipay.trade.precreate", biz, Some(&url)).await;
    pay(&m.base, "APR003").await;
    receiver.wait_for(1).await;
    faults(&m.base, json!({"refund_answer_delay_ms": 1500})).await;
    let params = m.signed_params(
        "alipay.trade.refund",
        &json!({"out_trade_no": "APR003", "refund_amount": "1.00", "out_request_no": "RF1"}),
        None,
    );
    let body = form::encode(params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let timed_out = http_client::send(
        &OutgoingRequest::post(
            format!("{}/gateway.do?charset=utf-8", m.base),
            "application/x-www-form-urlencoded;charset=utf-8",
            body,
        ),
        Duration::from_millis(300),
    )
    .await;
    assert!(timed_out.is_err(), "the answer should have been late");
    // Executed: the refund is there, and the query is not delayed.
    assert_eq!(refund_view(&m.base, "RF1").await["state"], "SUCCEEDED");
    let started = std::time::Instant::now();
    let queried = m
        .call(
            "alipay.trade.fastpay.refund.query",
            json!({"out_trade_no": "APR003", "out_request_no": "RF1"}),
            None,
        )
        .await;
    assert_eq!(queried["refund_status"], "REFUND_SUCCESS");
    assert!(started.elapsed() < Duration::from_millis(1000));

    let u = UnionpayMerchant::start().await;
    let (url, receiver) = start_receiver(vec![200], "ok").await;
    u.consume("UPR3000001", "1000", &url).await;
    pay(&u.base, "UPR3000001").await;
    receiver.wait_for(1).await;
    let paid = u.query("UPR3000001", "20240101120000").await;
    faults(&u.base, json!({"api_error_rate": 1.0})).await;
    let fields = u.refund_fields("UPREF00004", &paid["queryId"], "100", &url);
    let answer = u.post("/gateway/api/backTransReq.do", &fields).await;
    assert_eq!(answer["respCode"], "03");
    faults(&u.base, json!({"api_error_rate": 0.0})).await;
    assert_eq!(
        refund_view(&u.base, "UPREF00004").await["error"],
        "no such refund"
    );
}

// ---------------------------------------------------------------- statements

/// The stored ZIP inside a file-transfer answer's `fileContent` (Base64 of zlib).
fn inflate_file_content(content: &str) -> Vec<u8> {
    use std::io::Read as _;
    let deflated = BASE64.decode(content).unwrap();
    let mut zip = Vec::new();
    flate2::read::ZlibDecoder::new(deflated.as_slice())
        .read_to_end(&mut zip)
        .unwrap();
    zip
}

/// The ZM lines of a stored ZIP (entries are uncompressed, so the lines are there verbatim).
fn zm_lines(zip: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(zip)
        .split("\r\n")
        .filter_map(|l| {
            l.find("S56 ")
                .or_else(|| l.find("S30 "))
                .map(|i| l[i..].to_owned())
        })
        .collect()
}

#[tokio::test]
async fn unionpay_file_transfer_serves_the_days_zm_file_with_the_statement_faults() {
    let m = UnionpayMerchant::start().await;
    let (url, _receiver) = start_receiver(vec![200], "ok").await;
    for (order, amount) in [("UPF0000001", "1999"), ("UPF0000002", "500")] {
        assert_eq!(m.consume(order, amount, &url).await["respCode"], "00");
        pay(&m.base, order).await;
    }
    let today = chrono::Utc::now() + chrono::Duration::hours(8);
    let answer = m
        .file_transfer(today.format("%m%d").to_string(), "76")
        .await;
    assert_eq!(answer["respCode"], "00", "{answer:?}");
    assert_eq!(answer["fileType"], "00");
    assert!(answer["fileName"].ends_with(&format!("_{}.zip", today.format("%Y%m%d"))));
    let zip = inflate_file_content(&answer["fileContent"]);
    assert!(zip.starts_with(b"PK\x03\x04"));
    let lines = zm_lines(&zip);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines.iter().all(|l| l.len() == 607), "{lines:?}");
    assert_eq!(&lines[0][66..78], "000000001999");
    assert!(lines[0].contains("UPF0000001"));

    // Faults: drop one, alter the other, add one.
    control(
        &m.base,
        "POST",
        "/sandbox/statements/faults",
        json!({"drop": ["UPF0000001"], "alter": {"UPF0000002": 499},
               "add": [{"out_trade_no": "UPFADDED01", "amount_minor": 42}]}),
    )
    .await;
    let answer = m
        .file_transfer(today.format("%m%d").to_string(), "76")
        .await;
    let lines = zm_lines(&inflate_file_content(&answer["fileContent"]));
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].contains("UPF0000002") && lines[0].contains("000000000499"));
    assert!(lines[1].contains("UPFADDED01") && lines[1].contains("000000000042"));

    // A day without any trade has no file; a request that is not a file transfer is refused.
    let yesterday = (today - chrono::Duration::days(1))
        .format("%m%d")
        .to_string();
    assert_eq!(m.file_transfer(yesterday, "76").await["respCode"], "98");
    assert_eq!(
        m.file_transfer(today.format("%m%d").to_string(), "00")
            .await["respCode"],
        "10"
    );
}

#[tokio::test]
async fn statement_fault_and_synthetic_day_contract_of_the_control_api() {
    let base = start(Which::Wechat).await;
    let faults = control(
        &base,
        "POST",
        "/sandbox/statements/faults",
        json!({"drop": ["A"], "alter": {"B": 5}, "add": [{"out_trade_no": "C", "amount_minor": 7, "kind": "refund", "day": "2026-12-01"}]}),
    )
    .await;
    assert_eq!(faults["drop"], json!(["A"]));
    assert_eq!(faults["alter"], json!({"B": 5}));
    assert_eq!(faults["add"][0]["kind"], "refund");
    assert_eq!(faults["corrupt_summary"], false);
    let faults = control(
        &base,
        "POST",
        "/sandbox/statements/synthetic",
        json!({"day": "2026-12-01", "payments": 1000000}),
    )
    .await;
    assert_eq!(faults["synthetic"], json!({"2026-12-01": 1000000}));
    let faults = control(&base, "DELETE", "/sandbox/statements/faults", Value::Null).await;
    assert_eq!(faults["drop"], json!([]));
    assert_eq!(faults["synthetic"], json!({}));
}
