//! Typed `payment.v1` calls for the cross-process tests, as an app (`shop-1`) would make them,
//! and the payer's side of a payment at the sandboxes.
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use payproto::auth::{Signed, SignedChannel, SigningKeys};
use payproto::channel::v1 as cpb;
use payproto::payment::v1 as pb;
use payproto::payment::v1::payment_service_client::PaymentServiceClient;
use tonic::transport::Channel;

use crate::platform::{Platform, SandboxedChannel};

/// A `payment.v1` client whose calls are signed as the app each request's `x-app-id` names.
pub type Client = PaymentServiceClient<SignedChannel>;

/// Test apps holding every role (test fixtures, not secrets; never used outside tests).
pub const TEST_APPS: &[&str] = &[
    "shop-1",
    "shop-2",
    "shop-3",
    "other-app",
    "shop-ctl",
    "bench",
    "ops",
];
/// A test app holding only `orders.read`.
pub const READER_APP: &str = "reader-1";
/// A test app whose two secrets are valid at once (rotation); it signs with the newer.
pub const ROTATING_APP: &str = "rotating-1";
/// A test app with a rate limit of 5 calls a second, bursts of 5.
pub const LIMITED_APP: &str = "limited-1";
/// A test app with every role but `refunds.write_large`.
pub const SMALL_REFUNDS_APP: &str = "small-refunds-1";

/// The test fixture secret of `app`.
pub fn test_secret(app: &str) -> String {
    format!("test-fixture-secret-of-{app}-not-a-real-secret")
}

/// The older of [`ROTATING_APP`]'s two secrets.
pub fn rotating_old_secret() -> String {
    format!("test-fixture-old-secret-of-{ROTATING_APP}-not-real")
}

const ALL_ROLES: &str = r#"["orders.write", "orders.read", "refunds.write", "refunds.write_large", "refunds.read", "events.read", "events.write", "recon.admin", "audit.read"]"#;

/// The credentials (`PAYD_APP_CREDENTIALS`) every test payd gets.
pub fn test_credentials_toml() -> String {
    let mut s = String::new();
    for app in TEST_APPS {
        s.push_str(&format!(
            "[[app]]\nid = \"{app}\"\nsecrets = [\"{}\"]\nroles = {ALL_ROLES}\nrate_per_sec = 100000\nburst = 100000\n\n",
            test_secret(app)
        ));
    }
    s.push_str(&format!(
        "[[app]]\nid = \"{READER_APP}\"\nsecrets = [\"{}\"]\nroles = [\"orders.read\"]\n\n",
        test_secret(READER_APP)
    ));
    s.push_str(&format!(
        "[[app]]\nid = \"{ROTATING_APP}\"\nsecrets = [\"{}\", \"{}\"]\nroles = {ALL_ROLES}\n\n",
        rotating_old_secret(),
        test_secret(ROTATING_APP)
    ));
    s.push_str(&format!(
        "[[app]]\nid = \"{LIMITED_APP}\"\nsecrets = [\"{}\"]\nroles = {ALL_ROLES}\nrate_per_sec = 5\nburst = 5\n\n",
        test_secret(LIMITED_APP)
    ));
    s.push_str(&format!(
        "[[app]]\nid = \"{SMALL_REFUNDS_APP}\"\nsecrets = [\"{}\"]\nroles = [\"orders.write\", \"orders.read\", \"refunds.write\", \"refunds.read\"]\n\n",
        test_secret(SMALL_REFUNDS_APP)
    ));
    s
}

/// Keys for every test app.
pub fn test_signing_keys() -> SigningKeys {
    let apps: Vec<(String, String)> = TEST_APPS
        .iter()
        .chain(&[READER_APP, ROTATING_APP, LIMITED_APP, SMALL_REFUNDS_APP])
        .map(|a| ((*a).to_owned(), test_secret(a)))
        .collect();
    SigningKeys::many(apps.iter().map(|(a, s)| (a.as_str(), s.as_bytes())))
}

/// A signed transport to `endpoint` with `keys`, or the connection's error.
///
/// # Errors
/// payd cannot be reached.
pub async fn try_signed_channel(
    endpoint: String,
    keys: SigningKeys,
) -> Result<SignedChannel, tonic::transport::Error> {
    let channel = Channel::from_shared(endpoint)
        .expect("endpoint URL")
        .connect()
        .await?;
    Ok(Signed::new(channel, keys))
}

/// A signed transport to `endpoint` with `keys`.
pub async fn signed_channel(endpoint: String, keys: SigningKeys) -> SignedChannel {
    try_signed_channel(endpoint, keys)
        .await
        .expect("connect to payd")
}

/// Like [`client`], but a payd that cannot be reached is an error, not a panic.
///
/// # Errors
/// The connection failed.
pub async fn try_client(endpoint: String) -> Result<Client, tonic::transport::Error> {
    Ok(PaymentServiceClient::new(
        try_signed_channel(endpoint, test_signing_keys()).await?,
    ))
}

/// A client that signs as one app with one secret (and sends that app's `x-app-id`).
pub async fn client_as(endpoint: String, app: &str, secret: &str) -> Client {
    PaymentServiceClient::new(
        signed_channel(endpoint, SigningKeys::single(app, secret.as_bytes())).await,
    )
}

/// A client that signs nothing: for tests of refused requests only.
pub async fn unsigned_client(endpoint: String) -> PaymentServiceClient<Channel> {
    PaymentServiceClient::connect(endpoint)
        .await
        .expect("connect to payd")
}

/// A request from the app `shop-1`.
pub fn req<T>(body: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(body);
    r.metadata_mut()
        .insert("x-app-id", "shop-1".parse().expect("ascii"));
    r
}

/// A client signing as the test app each request names (`x-app-id`).
pub async fn client(endpoint: String) -> Client {
    PaymentServiceClient::new(signed_channel(endpoint, test_signing_keys()).await)
}

/// A signed `ReconciliationService` client (admin calls; requests are made with [`req`] like
/// the others, and signed as the app they name).
pub type ReconClient =
    payproto::payment::v1::reconciliation_service_client::ReconciliationServiceClient<
        SignedChannel,
    >;

pub async fn recon_client(endpoint: String) -> ReconClient {
    ReconClient::new(signed_channel(endpoint, test_signing_keys()).await)
}

/// A signed `AuditService` client for the test apps.
pub type AuditClient =
    payproto::payment::v1::audit_service_client::AuditServiceClient<SignedChannel>;

pub async fn audit_client(endpoint: String) -> AuditClient {
    AuditClient::new(signed_channel(endpoint, test_signing_keys()).await)
}

/// The QR (or form) method of each channel, which needs no payer id.
pub fn qr_method(ch: SandboxedChannel) -> cpb::PayMethod {
    match ch {
        SandboxedChannel::Wechat => cpb::PayMethod::WechatNative,
        SandboxedChannel::Alipay => cpb::PayMethod::AlipayQr,
        SandboxedChannel::Unionpay => cpb::PayMethod::UnionpayFront,
    }
}

pub fn channel_of(ch: SandboxedChannel) -> cpb::Channel {
    match ch {
        SandboxedChannel::Wechat => cpb::Channel::Wechat,
        SandboxedChannel::Alipay => cpb::Channel::Alipay,
        SandboxedChannel::Unionpay => cpb::Channel::Unionpay,
    }
}

/// CreateOrder, expiring in 15 minutes.
pub async fn create(c: &mut Client, no: &str, amount: i64) -> pb::Order {
    create_expiring(c, no, amount, 900).await
}

/// CreateOrder, expiring in `secs` seconds (below 60 only with a lower `PAYD_MIN_EXPIRY_SECS`).
pub async fn create_expiring(c: &mut Client, no: &str, amount: i64, secs: i64) -> pb::Order {
    c.create_order(req(pb::CreateOrderRequest {
        merchant_order_no: no.into(),
        amount: Some(pb::Money {
            amount_minor: amount,
            currency: "CNY".into(),
        }),
        subject: "Concert ticket".into(),
        expires_in_seconds: secs,
        metadata: BTreeMap::new(),
        idempotency_key: String::new(),
    }))
    .await
    .expect("create order")
    .into_inner()
    .order
    .expect("order")
}

/// Pay by `method` (of channel `ch`), for `payer_id`, with an optional idempotency key.
pub async fn pay_by(
    c: &mut Client,
    order_id: &str,
    ch: SandboxedChannel,
    method: cpb::PayMethod,
    payer_id: &str,
    idempotency_key: &str,
) -> Result<pb::PayResponse, tonic::Status> {
    c.pay(req(pb::PayRequest {
        order_id: order_id.into(),
        channel: channel_of(ch) as i32,
        method: method as i32,
        payer: Some(pb::Payer {
            payer_id: payer_id.into(),
            client_ip: "203.0.113.7".into(),
        }),
        idempotency_key: idempotency_key.into(),
    }))
    .await
    .map(tonic::Response::into_inner)
}

/// Pay by the channel's QR (or form) method.
pub async fn pay(
    c: &mut Client,
    order_id: &str,
    ch: SandboxedChannel,
) -> Result<pb::PayResponse, tonic::Status> {
    pay_by(c, order_id, ch, qr_method(ch), "", "").await
}

pub async fn close(c: &mut Client, order_id: &str) -> Result<pb::Order, tonic::Status> {
    c.close_order(req(pb::CloseOrderRequest {
        order_id: order_id.into(),
        idempotency_key: String::new(),
    }))
    .await
    .map(|r| r.into_inner().order.expect("order"))
}

pub async fn order_of(c: &mut Client, id: &str) -> pb::Order {
    c.get_order(req(pb::GetOrderRequest {
        lookup: Some(pb::get_order_request::Lookup::OrderId(id.into())),
    }))
    .await
    .expect("get order")
    .into_inner()
    .order
    .expect("order")
}

/// Polls GetOrder until the order is in `want`.
///
/// # Panics
/// When it is not within `within`.
pub async fn wait_status(
    c: &mut Client,
    id: &str,
    want: pb::OrderStatus,
    within: Duration,
) -> pb::Order {
    let deadline = Instant::now() + within;
    loop {
        let o = order_of(c, id).await;
        if o.status == want as i32 {
            return o;
        }
        assert!(
            Instant::now() < deadline,
            "order {id} is {:?}, wanted {want:?}",
            pb::OrderStatus::try_from(o.status)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `SELECT count(*) AS n …` on the platform's database.
pub fn count(p: &Platform, sql: &str) -> i64 {
    use diesel::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let rows: Vec<N> = diesel::sql_query(sql)
        .load(&mut p.db.connect())
        .expect("count query");
    rows[0].n
}

impl Platform {
    /// The payer's browser submits a UnionPay front form (`pay_params` from Pay: the signed
    /// fields plus `action`), which is what creates the trade at UnionPay. Returns the HTTP
    /// status and body of the gateway's answer.
    pub async fn payer_submits_form(&self, pay_params: &HashMap<String, String>) -> (u16, String) {
        let mut form = pay_params.clone();
        let action = form.remove("action").expect("front form has an action");
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form.iter())
            .finish();
        let r = reqwest::Client::new()
            .post(action)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .expect("gateway reachable");
        let status = r.status().as_u16();
        (status, r.text().await.unwrap_or_default())
    }

    /// The payer pays what Pay handed out, as a person would: a UnionPay form is submitted
    /// first (creating the trade), an Alipay QR code scanned, then the payer completes the
    /// payment at the platform.
    /// Returns the control API's HTTP status (200 paid; 404 no such trade; 409 not payable).
    pub async fn payer_pays(
        &self,
        ch: SandboxedChannel,
        pay: &pb::PayResponse,
        outcome: &str,
    ) -> u16 {
        let out_trade_no = &pay.attempt.as_ref().expect("attempt").out_trade_no;
        match ch {
            SandboxedChannel::Unionpay => {
                let params: HashMap<String, String> = pay.pay_params.clone().into_iter().collect();
                self.payer_submits_form(&params).await;
            }
            // A precreated Alipay trade exists once the payer's app scans the QR code.
            SandboxedChannel::Alipay if pay.pay_params.contains_key("qr_code") => {
                self.sandbox_post(
                    ch,
                    &format!("/sandbox/trades/{out_trade_no}/scan"),
                    serde_json::json!({}),
                )
                .await;
            }
            SandboxedChannel::Alipay | SandboxedChannel::Wechat => {}
        }
        let (status, _) = self
            .sandbox_post(
                ch,
                &format!("/sandbox/trades/{out_trade_no}/pay"),
                serde_json::json!({ "outcome": outcome }),
            )
            .await;
        status
    }

    /// Successful trades in a sandbox's ledger, by out_trade_no.
    pub async fn sandbox_successes(&self, ch: SandboxedChannel) -> Vec<String> {
        let trades = self.sandbox_get(ch, "/sandbox/trades").await;
        trades
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|t| t["state"] == "SUCCEEDED")
                    .filter_map(|t| t["out_trade_no"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// CreateRefund by the app `shop-1`.
pub async fn refund(
    c: &mut Client,
    order_id: &str,
    amount: i64,
    refund_request_no: &str,
) -> Result<pb::Refund, tonic::Status> {
    c.create_refund(req(pb::CreateRefundRequest {
        order_id: order_id.into(),
        amount: Some(pb::Money {
            amount_minor: amount,
            currency: "CNY".into(),
        }),
        reason: "customer returned the goods".into(),
        refund_request_no: refund_request_no.into(),
        operator: "e2e".into(),
    }))
    .await
    .map(|r| r.into_inner().refund.expect("refund"))
}

pub async fn get_refund(c: &mut Client, refund_request_no: &str) -> pb::Refund {
    c.get_refund(req(pb::GetRefundRequest {
        lookup: Some(pb::get_refund_request::Lookup::RefundRequestNo(
            refund_request_no.into(),
        )),
    }))
    .await
    .expect("get refund")
    .into_inner()
    .refund
    .expect("refund")
}

/// Polls GetRefund until the refund is in `want`.
///
/// # Panics
/// When it is not within `within`.
pub async fn wait_refund(
    c: &mut Client,
    refund_request_no: &str,
    want: pb::RefundStatus,
    within: Duration,
) -> pb::Refund {
    let deadline = Instant::now() + within;
    loop {
        let r = get_refund(c, refund_request_no).await;
        if r.status == want as i32 {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "refund {refund_request_no} is {:?}, wanted {want:?}",
            pb::RefundStatus::try_from(r.status)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Platform {
    /// An order of `amount` paid through `ch` (the payer pays at the sandbox, the callback
    /// makes it PAID). Returns the order and the paying trade's out_trade_no.
    pub async fn paid_order(
        &self,
        c: &mut Client,
        ch: SandboxedChannel,
        merchant_order_no: &str,
        amount: i64,
    ) -> (pb::Order, String) {
        let order = create(c, merchant_order_no, amount).await;
        let pay = pay(c, &order.order_id, ch).await.expect("pay");
        assert_eq!(self.payer_pays(ch, &pay, "success").await, 200);
        let order = wait_status(
            c,
            &order.order_id,
            pb::OrderStatus::Paid,
            Duration::from_secs(20),
        )
        .await;
        let no = pay.attempt.expect("attempt").out_trade_no;
        (order, no)
    }

    /// The sandbox's refunds of one trade: (out_refund_no, amount, state, requests).
    pub async fn sandbox_refunds(
        &self,
        ch: SandboxedChannel,
        out_trade_no: &str,
    ) -> Vec<serde_json::Value> {
        self.sandbox_get(ch, &format!("/sandbox/trades/{out_trade_no}"))
            .await["refunds"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}
