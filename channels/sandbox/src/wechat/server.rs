//! The WeChat Pay API v3 endpoints: JSAPI and Native prepay, query, close, refund, refund query,
//! trade bill; plus the TRANSACTION.SUCCESS and REFUND.SUCCESS/CLOSED/ABNORMAL callbacks. Every
//! request is checked with [`MerchantKeys::verify_request`]; every answer and callback is signed
//! by the platform key.

// Handlers short-circuit with the platform's signed answer as `Err(Response)`; boxing it would
// only add noise, since every path ends in a `Response` anyway.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, FixedOffset, SecondsFormat, Utc};
use rand::Rng;
use serde_json::{Value, json};
use sha1::{Digest, Sha1};

use super::protocol::{
    ApiV3Key, ErrorBody, ErrorCode, ErrorDetail, EventType, IncomingRequest, MerchantKeys,
    NotificationDraft, NotificationEnvelope, PlatformSigner,
};
use crate::alipay::protocol::format_yuan;
use crate::callbacks::{self, Notification, NotificationKind};
use crate::control;
use crate::http_client::OutgoingRequest;
use crate::keyfiles::WechatKeyFiles;
use crate::ledger::{
    NewRefund, NewTrade, PrepayError, Refund, RefundError, RefundState, Trade, TradeState,
};
use crate::platform::{
    BuildError, Core, Profile, RefundEnding, SimulatedPlatform, Tamper, lock,
    schedule_refund_settlement,
};

/// 15s/15s/30s/3m/10m/20m/30m/30m/30m/60m/3h/3h/3h/6h/6h, from the payment notify page.
const RETRY_SCHEDULE: [Duration; 15] = [
    Duration::from_secs(15),
    Duration::from_secs(15),
    Duration::from_secs(30),
    Duration::from_secs(180),
    Duration::from_secs(600),
    Duration::from_secs(1200),
    Duration::from_secs(1800),
    Duration::from_secs(1800),
    Duration::from_secs(1800),
    Duration::from_secs(3600),
    Duration::from_secs(3 * 3600),
    Duration::from_secs(3 * 3600),
    Duration::from_secs(3 * 3600),
    Duration::from_secs(6 * 3600),
    Duration::from_secs(6 * 3600),
];

/// WeChat Pay's notification rules.
pub static PROFILE: Profile = Profile {
    name: "wechat",
    retry_schedule: &RETRY_SCHEDULE,
    is_acknowledged: |reply| reply.status == 200 || reply.status == 204,
    new_notify_id: || uuid::Uuid::new_v4().to_string(),
};

/// Announced by `tamper: "serial"`: no merchant has a key under this id.
const UNKNOWN_SERIAL: &str = "PUB_KEY_ID_0199999999999999999999999999999999";

/// Bill download links stay valid this long (WeChat: 30 s).
const BILL_URL_TTL: Duration = Duration::from_secs(30);

fn beijing(instant: DateTime<Utc>) -> DateTime<FixedOffset> {
    let tz = FixedOffset::east_opt(8 * 3600).unwrap_or_else(|| Utc.fix());
    instant.with_timezone(&tz)
}

use chrono::Offset as _;

fn rfc3339(instant: DateTime<Utc>) -> String {
    beijing(instant).to_rfc3339_opts(SecondsFormat::Secs, false)
}

fn random_alphanumeric(len: usize) -> String {
    rand::thread_rng()
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// The business object of one callback, and the altered copy `tamper: "body"` sends instead.
struct Resource<'a> {
    event_type: EventType,
    associated_data: &'a str,
    plaintext: &'a [u8],
    tampered_plaintext: Option<&'a [u8]>,
}

/// A platform certificate issued by `POST /sandbox/keys/rotate` (certificate mode).
#[derive(Debug)]
struct IssuedCertificate {
    signer: Arc<PlatformSigner>,
    pem: String,
    effective: DateTime<Utc>,
    expire: DateTime<Utc>,
}

/// The platform's signing keys. The public key of the key files (public-key mode, `PUB_KEY_ID_…`)
/// is active at start; a rotation issues a platform certificate that signs alongside the active
/// keys (answers and callbacks pick one at random, as during WeChat's migration), and a
/// retirement leaves only the newest one signing.
#[derive(Debug)]
struct SigningKeys {
    public_key: Arc<PlatformSigner>,
    certificates: Vec<IssuedCertificate>,
    /// Serials that sign now, oldest first.
    active: Vec<String>,
}

impl SigningKeys {
    fn signer(&self, serial: &str) -> Option<Arc<PlatformSigner>> {
        if self.public_key.serial() == serial {
            return Some(Arc::clone(&self.public_key));
        }
        self.certificates
            .iter()
            .find(|c| c.signer.serial() == serial)
            .map(|c| Arc::clone(&c.signer))
    }

    /// For an answer: the key the request asked for with `Wechatpay-Serial` when it is active,
    /// else the newest active key.
    fn for_answer(&self, requested: Option<&str>) -> Arc<PlatformSigner> {
        let serial = requested
            .filter(|r| self.active.iter().any(|a| a == r))
            .or_else(|| self.active.last().map(String::as_str))
            .unwrap_or_else(|| self.public_key.serial());
        self.signer(serial)
            .unwrap_or_else(|| Arc::clone(&self.public_key))
    }

    /// For a callback: any active key, at random.
    fn for_callback(&self) -> Arc<PlatformSigner> {
        let pick = rand::thread_rng().gen_range(0..self.active.len().max(1));
        self.active
            .get(pick)
            .and_then(|serial| self.signer(serial))
            .unwrap_or_else(|| Arc::clone(&self.public_key))
    }
}

tokio::task_local! {
    /// The `Wechatpay-Serial` of the request being answered: which key the merchant can verify.
    static REQUESTED_SERIAL: Option<String>;
}

/// The WeChat Pay stand-in.
pub struct Wechat {
    core: Core,
    mchid: String,
    appid: String,
    merchants: MerchantKeys,
    keys: Mutex<SigningKeys>,
    apiv3_key: ApiV3Key,
    bills: Mutex<HashMap<String, crate::statements::SpooledBill>>,
    /// The last bill written, served again while its inputs stay the same.
    prepared_bill: Mutex<crate::statements::PreparedBill>,
}

impl std::fmt::Debug for Wechat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wechat")
            .field("mchid", &self.mchid)
            .finish_non_exhaustive()
    }
}

/// Setting up from key files failed.
#[derive(Debug, thiserror::Error)]
#[error("bad WeChat key material: {0}")]
pub struct SetupError(String);

impl Wechat {
    /// Builds the platform from loaded key files.
    ///
    /// # Errors
    /// [`SetupError`] if the APIv3 key is unusable.
    pub fn new(files: WechatKeyFiles, time_scale: f64) -> Result<Self, SetupError> {
        let mut merchants = MerchantKeys::new();
        merchants.register(
            &files.mchid,
            &files.merchant_cert.serial_hex(),
            files.merchant_cert.public_key().clone(),
        );
        let apiv3_key =
            ApiV3Key::new(files.apiv3_key.as_bytes()).map_err(|e| SetupError(e.to_string()))?;
        Ok(Self {
            core: Core::new(time_scale),
            mchid: files.mchid,
            appid: files.appid,
            merchants,
            keys: Mutex::new(SigningKeys {
                active: vec![files.platform_serial.clone()],
                public_key: Arc::new(
                    PlatformSigner::new(files.platform_serial, files.platform_key)
                        .map_err(|e| SetupError(e.to_string()))?,
                ),
                certificates: Vec::new(),
            }),
            apiv3_key,
            bills: Mutex::new(HashMap::new()),
            prepared_bill: Mutex::new(Default::default()),
        })
    }

    fn answer_signer(&self) -> Arc<PlatformSigner> {
        let requested = REQUESTED_SERIAL.try_with(Clone::clone).ok().flatten();
        lock(&self.keys).for_answer(requested.as_deref())
    }

    fn callback_signer(&self) -> Arc<PlatformSigner> {
        lock(&self.keys).for_callback()
    }

    /// Issues a new platform certificate (fresh RSA-2048 key, serial in upper-case hex), lists it
    /// in `/v3/certificates` and lets it sign next to the active keys.
    ///
    /// # Errors
    /// A message when key generation or issuance fails.
    pub fn rotate(&self) -> Result<Value, String> {
        let key = crate::keys::generate_rsa_2048().map_err(|e| e.to_string())?;
        let serial = rand::thread_rng().gen_range(1u64 << 60..u64::MAX);
        let effective = Utc::now() - chrono::Duration::minutes(5);
        let validity = Duration::from_secs(5 * 365 * 86_400);
        let cert = crate::keys::issue_certificate(
            &key,
            "Tenpay.com sign",
            serial,
            (effective.into(), validity),
            crate::keys::CertificateRole::Leaf,
            None,
        )
        .map_err(|e| e.to_string())?;
        let serial_hex = cert.serial_hex();
        let mut keys = lock(&self.keys);
        keys.certificates.push(IssuedCertificate {
            signer: Arc::new(
                PlatformSigner::new(serial_hex.clone(), key).map_err(|e| e.to_string())?,
            ),
            pem: cert.pem().replace("\r\n", "\n"),
            effective,
            expire: effective + chrono::Duration::from_std(validity).unwrap_or_default(),
        });
        keys.active.push(serial_hex.clone());
        Ok(json!({"serial": serial_hex, "active": keys.active}))
    }

    /// Leaves only the newest key signing.
    pub fn retire(&self) -> Value {
        let mut keys = lock(&self.keys);
        let newest = keys.active.last().cloned();
        keys.active = newest.into_iter().collect();
        json!({"active": keys.active})
    }

    fn key_view(&self) -> Value {
        let keys = lock(&self.keys);
        json!({
            "public_key_id": keys.public_key.serial(),
            "certificates": keys.certificates.iter().map(|c| c.signer.serial()).collect::<Vec<_>>(),
            "active": keys.active,
        })
    }

    /// Signs `body` and wraps it in a response with the `Wechatpay-*` headers.
    fn signed(&self, status: StatusCode, body: String) -> Response {
        let headers = match self
            .answer_signer()
            .sign_with_fresh_nonce(Utc::now().timestamp(), body.as_bytes())
        {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(error = %e, "signing a response failed");
                return StatusCode::INTERNAL_SERVER_ERROR.into_response();
            }
        };
        let mut response = (status, body).into_response();
        let map = response.headers_mut();
        for (name, value) in headers.to_pairs() {
            if let Ok(v) = value.parse() {
                map.insert(name, v);
            }
        }
        if let Ok(v) = uuid::Uuid::new_v4().to_string().parse() {
            map.insert("Request-ID", v);
        }
        if status != StatusCode::NO_CONTENT
            && let Ok(v) = "application/json".parse()
        {
            map.insert("Content-Type", v);
        }
        response
    }

    fn json(&self, value: &Value) -> Response {
        self.signed(StatusCode::OK, value.to_string())
    }

    fn fail(&self, body: ErrorBody) -> Response {
        let status =
            StatusCode::from_u16(body.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let text = body
            .to_json()
            .unwrap_or_else(|_| r#"{"code":"SYSTEM_ERROR","message":"系统错误"}"#.to_owned());
        self.signed(status, text)
    }

    /// WeChat does not sign its answer to a request whose signature it rejected (401
    /// `SIGN_ERROR`): there is no authenticated merchant to sign for.
    fn unsigned_fail(&self, body: &ErrorBody) -> Response {
        let status = StatusCode::from_u16(body.http_status()).unwrap_or(StatusCode::UNAUTHORIZED);
        let text = body
            .to_json()
            .unwrap_or_else(|_| r#"{"code":"SIGN_ERROR","message":"签名错误"}"#.to_owned());
        let mut response = (status, text).into_response();
        let map = response.headers_mut();
        if let Ok(v) = uuid::Uuid::new_v4().to_string().parse() {
            map.insert("Request-ID", v);
        }
        if let Ok(v) = "application/json".parse() {
            map.insert("Content-Type", v);
        }
        response
    }

    fn param_error(&self, field: &str, issue: &str) -> Response {
        self.fail(
            ErrorBody::new(ErrorCode::ParamError, "参数错误").with_detail(ErrorDetail {
                field: field.to_owned(),
                value: String::new(),
                issue: issue.to_owned(),
                location: "body".to_owned(),
            }),
        )
    }

    /// Verifies the signature, then rolls for an injected system error. `Err` is the answer.
    fn admit(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<(), Response> {
        let target = uri
            .path_and_query()
            .map(|pq| pq.as_str())
            .unwrap_or_else(|| uri.path());
        let request = IncomingRequest {
            method: method.as_str(),
            target,
            authorization: headers.get("authorization").and_then(|v| v.to_str().ok()),
            body,
        };
        if let Err(rejection) = self
            .merchants
            .verify_request(&request, Utc::now().timestamp())
        {
            tracing::info!(%rejection, "request refused");
            return Err(self.unsigned_fail(&rejection.error_body()));
        }
        if self.core.inject_api_error() {
            return Err(self.fail(ErrorBody::new(ErrorCode::SystemError, "系统错误")));
        }
        Ok(())
    }

    fn trade_type(trade: &Trade) -> &'static str {
        if trade.method == "jsapi" {
            "JSAPI"
        } else {
            "NATIVE"
        }
    }

    /// The Transaction object (query answer and decrypted payment callback).
    fn transaction(&self, trade: &Trade) -> Value {
        let (state, desc) = match trade.state {
            TradeState::Pending => ("NOTPAY", "订单未支付"),
            TradeState::Succeeded
                if trade.refunds.iter().all(|r| r.state == RefundState::Failed) =>
            {
                ("SUCCESS", "支付成功")
            }
            TradeState::Succeeded => ("REFUND", "转入退款"),
            TradeState::Failed => ("PAYERROR", "支付失败"),
            TradeState::Closed => ("CLOSED", "订单已关闭"),
        };
        let mut value = json!({
            "appid": trade.extra("appid"),
            "mchid": self.mchid,
            "out_trade_no": trade.out_trade_no,
            "trade_type": Self::trade_type(trade),
            "trade_state": state,
            "trade_state_desc": desc,
            "attach": trade.extra("attach"),
            "amount": {"total": trade.amount_minor, "currency": trade.currency},
        });
        if let Some(paid_at) = trade.paid_at {
            value["transaction_id"] = json!(trade.channel_trade_no);
            value["bank_type"] = json!("OTHERS");
            value["success_time"] = json!(rfc3339(paid_at));
            value["payer"] = json!({"openid": trade.extra("openid")});
            let delta = self.core.faults().reported_amount_delta_minor;
            let reported = trade.amount_minor.saturating_add_signed(delta);
            value["amount"] = json!({
                "total": reported,
                "payer_total": reported,
                "currency": trade.currency,
                "payer_currency": trade.currency,
            });
        }
        value
    }

    fn refund_object(trade: &Trade, refund: &Refund) -> Value {
        let status = refund_status(refund);
        let mut value = json!({
            "refund_id": refund.channel_refund_no,
            "out_refund_no": refund.out_refund_no,
            "transaction_id": trade.channel_trade_no,
            "out_trade_no": trade.out_trade_no,
            "channel": "ORIGINAL",
            "user_received_account": "支付用户零钱",
            "create_time": rfc3339(refund.created_at),
            "status": status,
            "funds_account": "AVAILABLE",
            "amount": {
                "total": trade.amount_minor,
                "refund": refund.amount_minor,
                "from": [],
                "payer_total": trade.amount_minor,
                "payer_refund": refund.amount_minor,
                "settlement_refund": refund.amount_minor,
                "settlement_total": trade.amount_minor,
                "discount_refund": 0,
                "currency": trade.currency,
            },
            "promotion_detail": [],
        });
        if let (RefundState::Succeeded, Some(at)) = (refund.state, refund.settled_at) {
            value["success_time"] = json!(rfc3339(at));
        }
        value
    }

    /// Seals `plaintext` into a signed callback request.
    fn notification_request(
        &self,
        url: &str,
        notify_id: &str,
        resource: Resource<'_>,
        tamper: Tamper,
    ) -> Result<OutgoingRequest, BuildError> {
        let Resource {
            event_type,
            associated_data,
            plaintext,
            tampered_plaintext,
        } = resource;
        let crypto = |e: &dyn std::fmt::Display| BuildError::Crypto(e.to_string());
        let seal = |plaintext: &[u8]| {
            let nonce = random_alphanumeric(12);
            NotificationEnvelope::seal(
                &self.apiv3_key,
                &NotificationDraft {
                    id: notify_id,
                    create_time: beijing(Utc::now()),
                    event_type,
                    summary: None,
                    associated_data,
                    nonce: &nonce,
                    plaintext,
                },
            )
            .and_then(|envelope| envelope.to_body())
            .map_err(|e| crypto(&e))
        };
        let body = seal(plaintext)?;
        let now = Utc::now().timestamp();
        let timestamp = if tamper == Tamper::StaleTimestamp {
            now - 600
        } else {
            now
        };
        let signer = self.callback_signer();
        let mut headers = signer
            .sign_with_fresh_nonce(timestamp, body.as_bytes())
            .map_err(|e| crypto(&e))?;
        let mut sent_body = body.clone();
        match tamper {
            Tamper::None | Tamper::StaleTimestamp => {}
            Tamper::Signature => {
                // A genuine signature, but over a different message.
                let other = signer
                    .sign(timestamp, &headers.nonce, format!("{body} ").as_bytes())
                    .map_err(|e| crypto(&e))?;
                headers.signature = other.signature;
            }
            Tamper::Body => {
                sent_body = seal(tampered_plaintext.unwrap_or(plaintext))?;
            }
            Tamper::Serial => headers.serial = UNKNOWN_SERIAL.to_owned(),
        }
        let mut request = OutgoingRequest::post(url, "application/json", sent_body)
            .header("Request-ID", uuid::Uuid::new_v4().to_string());
        for (name, value) in headers.to_pairs() {
            request = request.header(name, value);
        }
        Ok(request)
    }

    /// The refund notification for a settled refund: `REFUND.SUCCESS`, `REFUND.CLOSED` or
    /// `REFUND.ABNORMAL`, to the refund's `notify_url` (none if the request had none).
    fn schedule_refund_notification(self: &Arc<Self>, trade: &Trade, refund: &Refund) {
        let Some(url) = refund.notify_url.clone().filter(|u| !u.is_empty()) else {
            return;
        };
        let status = refund_status(refund);
        let event_type = match status {
            "SUCCESS" => EventType::RefundSuccess,
            "CLOSED" => EventType::RefundClosed,
            "ABNORMAL" => EventType::RefundAbnormal,
            _ => return,
        };
        let mut plaintext = json!({
            "mchid": self.mchid,
            "out_trade_no": trade.out_trade_no,
            "transaction_id": trade.channel_trade_no,
            "out_refund_no": refund.out_refund_no,
            "refund_id": refund.channel_refund_no,
            "refund_status": status,
            "user_received_account": "支付用户零钱",
            "amount": {
                "total": trade.amount_minor,
                "refund": refund.amount_minor,
                "payer_total": trade.amount_minor,
                "payer_refund": refund.amount_minor,
            },
        });
        if let (RefundState::Succeeded, Some(at)) = (refund.state, refund.settled_at) {
            plaintext["success_time"] = json!(rfc3339(at));
        }
        let plaintext = plaintext.to_string();
        let notify_id = (PROFILE.new_notify_id)();
        let build = {
            let this = Arc::clone(self);
            let notify_id = notify_id.clone();
            Arc::new(move || {
                this.notification_request(
                    &url,
                    &notify_id,
                    Resource {
                        event_type,
                        associated_data: "refund",
                        plaintext: plaintext.as_bytes(),
                        tampered_plaintext: None,
                    },
                    Tamper::None,
                )
            })
        };
        let platform: Arc<dyn SimulatedPlatform> = self.clone();
        callbacks::dispatch(
            platform,
            Notification {
                notify_id,
                out_trade_no: trade.out_trade_no.clone(),
                kind: NotificationKind::Refund,
                build,
            },
        );
    }
}

/// A refund's WeChat `status` (query) / `refund_status` (notification): PROCESSING, ABNORMAL
/// (in flight, flagged), SUCCESS, or CLOSED (failed).
pub fn refund_status(refund: &Refund) -> &'static str {
    match (refund.state, refund.abnormal) {
        (RefundState::Processing, false) => "PROCESSING",
        (RefundState::Processing, true) => "ABNORMAL",
        (RefundState::Succeeded, _) => "SUCCESS",
        (RefundState::Failed, _) => "CLOSED",
    }
}

impl SimulatedPlatform for Wechat {
    fn profile(&self) -> &'static Profile {
        &PROFILE
    }

    fn core(&self) -> &Core {
        &self.core
    }

    fn refund_settled(self: Arc<Self>, trade: &Trade, refund: &Refund) {
        self.schedule_refund_notification(trade, refund);
    }

    fn supports_abnormal_refunds(&self) -> bool {
        true
    }

    fn payment_notification(
        &self,
        trade: &Trade,
        notify_id: &str,
        tamper: Tamper,
    ) -> Result<OutgoingRequest, BuildError> {
        let mut paid = trade.clone();
        paid.state = TradeState::Succeeded;
        paid.refunds.clear();
        paid.paid_at = paid.paid_at.or(Some(Utc::now()));
        let transaction = self.transaction(&paid);
        let mut tampered = transaction.clone();
        tampered["amount"]["total"] = json!(paid.amount_minor + 1);
        tampered["amount"]["payer_total"] = json!(paid.amount_minor + 1);
        self.notification_request(
            &trade.notify_url,
            notify_id,
            Resource {
                event_type: EventType::TransactionSuccess,
                associated_data: "transaction",
                plaintext: transaction.to_string().as_bytes(),
                tampered_plaintext: Some(tampered.to_string().as_bytes()),
            },
            tamper,
        )
    }
}

/// The platform routes plus the control API, ready to serve.
pub fn router(wechat: Arc<Wechat>) -> Router {
    let platform: Arc<dyn SimulatedPlatform> = wechat.clone();
    Router::new()
        .route("/v3/pay/transactions/jsapi", post(prepay_jsapi))
        .route("/v3/pay/transactions/native", post(prepay_native))
        .route(
            "/v3/pay/transactions/out-trade-no/{out_trade_no}",
            get(query),
        )
        .route("/v3/pay/transactions/id/{transaction_id}", get(query_by_id))
        .route(
            "/v3/pay/transactions/out-trade-no/{out_trade_no}/close",
            post(close),
        )
        .route("/v3/refund/domestic/refunds", post(refund))
        .route(
            "/v3/refund/domestic/refunds/{out_refund_no}",
            get(query_refund),
        )
        .route("/v3/bill/tradebill", get(trade_bill))
        .route("/v3/billdownload/file", get(download_bill))
        .route("/v3/certificates", get(certificates))
        .layer(axum::middleware::from_fn(remember_requested_serial))
        .route("/sandbox/keys", get(show_keys))
        .route("/sandbox/keys/rotate", post(rotate_keys))
        .route("/sandbox/keys/retire", post(retire_keys))
        .with_state(wechat)
        .merge(control::router(platform))
}

async fn remember_requested_serial(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let serial = request
        .headers()
        .get("Wechatpay-Serial")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    REQUESTED_SERIAL.scope(serial, next.run(request)).await
}

/// `GET /v3/certificates`: every issued platform certificate, sealed with the APIv3 key
/// (AEAD_AES_256_GCM, associated data `certificate`), in a signed answer.
async fn certificates(
    State(wechat): State<Arc<Wechat>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    if let Err(answer) = wechat.admit(&method, &uri, &headers, &raw) {
        return answer_after_delay(&wechat, answer).await;
    }
    let listed: Result<Vec<Value>, String> = {
        let keys = lock(&wechat.keys);
        keys.certificates
            .iter()
            .map(|c| {
                let nonce = random_alphanumeric(12);
                let ciphertext = wechat
                    .apiv3_key
                    .seal(&nonce, "certificate", c.pem.as_bytes())
                    .map_err(|e| e.to_string())?;
                Ok(json!({
                    "serial_no": c.signer.serial(),
                    "effective_time": rfc3339(c.effective),
                    "expire_time": rfc3339(c.expire),
                    "encrypt_certificate": {
                        "algorithm": "AEAD_AES_256_GCM",
                        "associated_data": "certificate",
                        "nonce": nonce,
                        "ciphertext": ciphertext,
                    },
                }))
            })
            .collect()
    };
    let response = match listed {
        Ok(data) => wechat.json(&json!({ "data": data })),
        Err(e) => {
            tracing::error!(error = %e, "sealing a certificate failed");
            wechat.fail(ErrorBody::new(ErrorCode::SystemError, "系统错误"))
        }
    };
    answer_after_delay(&wechat, response).await
}

async fn show_keys(State(wechat): State<Arc<Wechat>>) -> Response {
    axum::Json(wechat.key_view()).into_response()
}

async fn rotate_keys(State(wechat): State<Arc<Wechat>>) -> Response {
    let this = Arc::clone(&wechat);
    match tokio::task::spawn_blocking(move || this.rotate()).await {
        Ok(Ok(view)) => axum::Json(view).into_response(),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn retire_keys(State(wechat): State<Arc<Wechat>>) -> Response {
    axum::Json(wechat.retire()).into_response()
}

/// Hands `response` back after the injected `api_delay_ms`, if any.
async fn answer_after_delay(wechat: &Wechat, response: Response) -> Response {
    wechat.core.delay_api_answer().await;
    response
}

async fn prepay_jsapi(
    State(wechat): State<Arc<Wechat>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let response = prepay(&wechat, "jsapi", &method, &uri, &headers, &body);
    answer_after_delay(&wechat, response).await
}

async fn prepay_native(
    State(wechat): State<Arc<Wechat>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let response = prepay(&wechat, "native", &method, &uri, &headers, &body);
    answer_after_delay(&wechat, response).await
}

/// WeChat Pay's rule for `out_trade_no`: 6 to 32 characters, letters, digits and `_ - | *`.
fn valid_out_trade_no(no: &str) -> bool {
    (6..=32).contains(&no.len())
        && no
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'|' | b'*'))
}

fn text_field<'a>(body: &'a Value, pointer: &str) -> Option<&'a str> {
    body.pointer(pointer)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn prepay(
    wechat: &Wechat,
    kind: &str,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    raw: &[u8],
) -> Response {
    if let Err(answer) = wechat.admit(method, uri, headers, raw) {
        return answer;
    }
    let Ok(body) = serde_json::from_slice::<Value>(raw) else {
        return wechat.param_error("/", "body is not JSON");
    };
    let mut missing = None;
    for pointer in [
        "/appid",
        "/mchid",
        "/description",
        "/out_trade_no",
        "/notify_url",
    ] {
        if text_field(&body, pointer).is_none() {
            missing = Some(pointer);
            break;
        }
    }
    if let Some(pointer) = missing {
        return wechat.param_error(pointer, "missing or empty");
    }
    if !text_field(&body, "/out_trade_no").is_some_and(valid_out_trade_no) {
        return wechat.param_error(
            "/out_trade_no",
            "out_trade_no must be 6 to 32 characters of [A-Za-z0-9_-|*]",
        );
    }
    let Some(total) = body
        .pointer("/amount/total")
        .and_then(Value::as_u64)
        .filter(|t| *t > 0)
    else {
        return wechat.param_error("/amount/total", "must be a positive integer (fen)");
    };
    let currency = text_field(&body, "/amount/currency").unwrap_or("CNY");
    if currency != "CNY" {
        return wechat.param_error("/amount/currency", "Currency code is invalid");
    }
    let openid = if kind == "jsapi" {
        match text_field(&body, "/payer/openid") {
            Some(o) => o.to_owned(),
            None => return wechat.param_error("/payer/openid", "missing or empty"),
        }
    } else {
        format!("oSandbox{}", random_alphanumeric(20))
    };
    let appid = text_field(&body, "/appid").unwrap_or_default();
    let mchid = text_field(&body, "/mchid").unwrap_or_default();
    if mchid != wechat.mchid || appid != wechat.appid {
        return wechat.fail(ErrorBody::new(
            ErrorCode::AppidMchidNotMatch,
            "appid和mch_id不匹配",
        ));
    }
    let out_trade_no = text_field(&body, "/out_trade_no")
        .unwrap_or_default()
        .to_owned();
    let attach = text_field(&body, "/attach").unwrap_or_default();
    let fingerprint = json!([
        kind,
        appid,
        body["description"],
        total,
        currency,
        body["notify_url"],
        body.pointer("/payer/openid"),
        attach,
        body["time_expire"],
    ])
    .to_string();
    // `time_expire` (RFC 3339): WeChat closes the trade when it has passed.
    let pay_deadline = match text_field(&body, "/time_expire") {
        None => None,
        Some(t) => match DateTime::parse_from_rfc3339(t) {
            Ok(d) => Some(d.with_timezone(&Utc)),
            Err(_) => return wechat.param_error("/time_expire", "must be RFC 3339"),
        },
    };
    let mut extra = BTreeMap::new();
    extra.insert("appid".to_owned(), appid.to_owned());
    extra.insert("openid".to_owned(), openid);
    extra.insert("attach".to_owned(), attach.to_owned());
    let result = {
        let mut ledger = wechat.core.ledger();
        let channel_no = ledger.next_channel_no("42000", 28);
        let prepay_result = if kind == "jsapi" {
            format!(
                "wx{}{}",
                beijing(Utc::now()).format("%d%H%M%S%3f"),
                hex::encode(rand::random::<[u8; 9]>())
            )
        } else {
            format!("weixin://wxpay/bizpayurl?pr={}", random_alphanumeric(7))
        };
        ledger.prepay(
            NewTrade {
                out_trade_no,
                method: kind.to_owned(),
                amount_minor: total,
                currency: currency.to_owned(),
                subject: text_field(&body, "/description")
                    .unwrap_or_default()
                    .to_owned(),
                notify_url: text_field(&body, "/notify_url")
                    .unwrap_or_default()
                    .to_owned(),
                fingerprint,
                extra,
                pay_deadline,
            },
            channel_no,
            prepay_result,
        )
    };
    match result {
        Ok(trade) if kind == "jsapi" => wechat.json(&json!({"prepay_id": trade.prepay_result})),
        Ok(trade) => wechat.json(&json!({"code_url": trade.prepay_result})),
        Err(PrepayError::Conflict) => {
            wechat.fail(ErrorBody::new(ErrorCode::OutTradeNoUsed, "商户订单号重复"))
        }
        Err(PrepayError::AlreadyPaid) => {
            wechat.fail(ErrorBody::new(ErrorCode::OrderPaid, "该订单已支付"))
        }
        Err(PrepayError::Closed) => {
            wechat.fail(ErrorBody::new(ErrorCode::OrderClosed, "该订单已关闭"))
        }
    }
}

fn check_mchid_query(wechat: &Wechat, query: &HashMap<String, String>) -> Result<(), Response> {
    match query.get("mchid") {
        Some(m) if *m == wechat.mchid => Ok(()),
        _ => Err(wechat.fail(
            ErrorBody::new(ErrorCode::ParamError, "参数错误").with_detail(ErrorDetail {
                field: "mchid".to_owned(),
                value: query.get("mchid").cloned().unwrap_or_default(),
                issue: "mchid is missing or not this merchant".to_owned(),
                location: "query".to_owned(),
            }),
        )),
    }
}

async fn query(
    State(wechat): State<Arc<Wechat>>,
    Path(out_trade_no): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let response = (|| {
        wechat.admit(&method, &uri, &headers, b"")?;
        check_mchid_query(&wechat, &query)?;
        let trade = wechat.core.ledger().trade(&out_trade_no).cloned();
        Ok::<_, Response>(match trade {
            Some(trade) => wechat.json(&wechat.transaction(&trade)),
            None => wechat.fail(ErrorBody::new(ErrorCode::OrderNotExist, "订单不存在")),
        })
    })()
    .unwrap_or_else(|answer| answer);
    answer_after_delay(&wechat, response).await
}

async fn query_by_id(
    State(wechat): State<Arc<Wechat>>,
    Path(transaction_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let response = (|| {
        wechat.admit(&method, &uri, &headers, b"")?;
        check_mchid_query(&wechat, &query)?;
        let trade = wechat
            .core
            .ledger()
            .trade_by_channel_no(&transaction_id)
            .filter(|t| t.paid_at.is_some())
            .cloned();
        Ok::<_, Response>(match trade {
            Some(trade) => wechat.json(&wechat.transaction(&trade)),
            None => wechat.fail(ErrorBody::new(ErrorCode::OrderNotExist, "订单不存在")),
        })
    })()
    .unwrap_or_else(|answer| answer);
    answer_after_delay(&wechat, response).await
}

async fn close(
    State(wechat): State<Arc<Wechat>>,
    Path(out_trade_no): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let response = (|| {
        wechat.admit(&method, &uri, &headers, &body)?;
        let parsed: Value = serde_json::from_slice(&body)
            .map_err(|_| wechat.param_error("/", "body is not JSON"))?;
        if text_field(&parsed, "/mchid") != Some(wechat.mchid.as_str()) {
            return Err(wechat.param_error("/mchid", "missing or not this merchant"));
        }
        let result = if wechat.core.faults().close_race {
            wechat
                .core
                .ledger()
                .close_with_payment_in_flight(&out_trade_no)
        } else {
            wechat.core.ledger().close(&out_trade_no)
        };
        Ok(match result {
            Ok(_) => wechat.signed(StatusCode::NO_CONTENT, String::new()),
            Err(crate::ledger::TransitionError::NotFound) => {
                wechat.fail(ErrorBody::new(ErrorCode::OrderNotExist, "订单不存在"))
            }
            Err(crate::ledger::TransitionError::WrongState(_)) => {
                wechat.fail(ErrorBody::new(ErrorCode::OrderPaid, "订单已支付"))
            }
        })
    })()
    .unwrap_or_else(|answer| answer);
    answer_after_delay(&wechat, response).await
}

async fn refund(
    State(wechat): State<Arc<Wechat>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(answer) = wechat.admit(&method, &uri, &headers, &body) {
        return answer_after_delay(&wechat, answer).await;
    }
    let (response, created) = match refund_inner(&wechat, &body) {
        Ok((response, created)) => (response, created),
        Err(answer) => (answer, None),
    };
    // The refund settles on its own schedule whether or not the merchant waits for the answer
    // (a client that times out and hangs up must not stop the platform's work).
    if let Some((refund, ending)) = created {
        let platform: Arc<dyn SimulatedPlatform> = wechat.clone();
        schedule_refund_settlement(&platform, &refund, ending);
    }
    // Every refund-creating call that was executed (past the signature check and
    // `api_error_rate`) is answered `refund_answer_delay_ms` late.
    wechat.core.delay_refund_answer().await;
    answer_after_delay(&wechat, response).await
}

fn refund_inner(
    wechat: &Arc<Wechat>,
    raw: &[u8],
) -> Result<(Response, Option<(Refund, RefundEnding)>), Response> {
    let body: Value =
        serde_json::from_slice(raw).map_err(|_| wechat.param_error("/", "body is not JSON"))?;
    let ending = wechat.core.faults().refund_outcome;
    let out_refund_no = text_field(&body, "/out_refund_no")
        .ok_or_else(|| wechat.param_error("/out_refund_no", "missing or empty"))?
        .to_owned();
    let refund = body
        .pointer("/amount/refund")
        .and_then(Value::as_u64)
        .ok_or_else(|| wechat.param_error("/amount/refund", "must be an integer (fen)"))?;
    let total = body
        .pointer("/amount/total")
        .and_then(Value::as_u64)
        .ok_or_else(|| wechat.param_error("/amount/total", "must be an integer (fen)"))?;
    let out_trade_no = {
        let ledger = wechat.core.ledger();
        match (
            text_field(&body, "/out_trade_no"),
            text_field(&body, "/transaction_id"),
        ) {
            (Some(no), _) => Some(no.to_owned()),
            (None, Some(id)) => ledger
                .trade_by_channel_no(id)
                .map(|t| t.out_trade_no.clone()),
            (None, None) => {
                return Err(wechat.param_error("/out_trade_no", "out_trade_no or transaction_id"));
            }
        }
    };
    let not_found = || wechat.fail(ErrorBody::new(ErrorCode::ResourceNotExists, "订单不存在"));
    let out_trade_no = out_trade_no.ok_or_else(not_found)?;
    let notify_url = text_field(&body, "/notify_url").map(str::to_owned);
    let result = {
        let mut ledger = wechat.core.ledger();
        let trade_total = ledger.trade(&out_trade_no).map(|t| t.amount_minor);
        match trade_total {
            None => return Err(not_found()),
            Some(t) if t != total => {
                return Err(wechat.fail(ErrorBody::new(
                    ErrorCode::InvalidRequest,
                    "订单金额与原订单金额不一致",
                )));
            }
            Some(_) => {}
        }
        let channel_no = ledger.next_channel_no("50300", 29);
        ledger.refund_trade(
            &out_trade_no,
            NewRefund {
                out_refund_no,
                amount_minor: refund,
                notify_url: notify_url.clone(),
                fingerprint: json!([refund, total, notify_url]).to_string(),
                extra: BTreeMap::new(),
                initial_state: RefundState::Processing,
            },
            channel_no,
        )
    };
    let invalid = |message: &str| wechat.fail(ErrorBody::new(ErrorCode::InvalidRequest, message));
    match result {
        Ok(outcome) => {
            // WeChat accepts a refund as PROCESSING; a repeat answers its current status.
            let answer = wechat.json(&Wechat::refund_object(&outcome.trade, &outcome.refund));
            Ok((answer, outcome.created.then_some((outcome.refund, ending))))
        }
        Err(RefundError::TradeNotFound) => Err(not_found()),
        Err(RefundError::NotPaid) => Err(invalid("订单未支付，不能退款")),
        Err(RefundError::ExceedsPaid { .. }) => Err(invalid("申请退款金额超过订单可退金额")),
        Err(RefundError::Conflict) => Err(invalid("商户退款单号已被使用，请求参数与原请求不一致")),
        Err(RefundError::ZeroAmount) => Err(wechat.param_error("/amount/refund", "must be > 0")),
    }
}

async fn query_refund(
    State(wechat): State<Arc<Wechat>>,
    Path(out_refund_no): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let response = (|| {
        wechat.admit(&method, &uri, &headers, b"")?;
        let ledger = wechat.core.ledger();
        Ok::<_, Response>(match ledger.refund(&out_refund_no) {
            Some((trade, refund)) => wechat.json(&Wechat::refund_object(trade, refund)),
            None => wechat.fail(ErrorBody::new(ErrorCode::ResourceNotExists, "退款单不存在")),
        })
    })()
    .unwrap_or_else(|answer| answer);
    answer_after_delay(&wechat, response).await
}

async fn trade_bill(
    State(wechat): State<Arc<Wechat>>,
    Query(query): Query<HashMap<String, String>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let request = (|| {
        wechat.admit(&method, &uri, &headers, b"")?;
        let date = query
            .get("bill_date")
            .and_then(|d| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
            .ok_or_else(|| wechat.param_error("bill_date", "yyyy-MM-dd"))?;
        let bill_type = query
            .get("bill_type")
            .map_or("ALL", String::as_str)
            .to_owned();
        if !super::bill::known_bill_type(&bill_type) {
            return Err(wechat.param_error("bill_type", "ALL, SUCCESS or REFUND"));
        }
        let lines = {
            let ledger = wechat.core.ledger();
            let trades: Vec<&Trade> = ledger.trades().collect();
            super::bill::ledger_lines(&trades, date)
        };
        let faults = lock(&wechat.core.statement_faults).clone();
        Ok::<_, Response>(crate::statements::BillInputs {
            day: date,
            variant: bill_type,
            ledger_lines: lines,
            faults,
        })
    })();
    let response = match request {
        Err(answer) => answer,
        Ok(inputs) => match prepared_bill(&wechat, inputs).await {
            Ok((file, hash)) => {
                let token = random_alphanumeric(32);
                let mut bills = lock(&wechat.bills);
                crate::statements::purge(&mut bills);
                bills.insert(
                    token.clone(),
                    crate::statements::SpooledBill {
                        name: "bill.csv".to_owned(),
                        file,
                        expires: std::time::Instant::now() + BILL_URL_TTL,
                    },
                );
                let host = headers
                    .get("host")
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or("127.0.0.1");
                wechat.json(&json!({
                    "hash_type": "SHA1",
                    "hash_value": hash,
                    "download_url": format!("http://{host}/v3/billdownload/file?token={token}"),
                }))
            }
            Err(e) => {
                tracing::error!(error = %e, "writing a bill failed");
                StatusCode::INTERNAL_SERVER_ERROR.into_response()
            }
        },
    };
    answer_after_delay(&wechat, response).await
}

/// The bill file of `inputs` and its SHA-1: the one prepared earlier from the same inputs, or
/// a new one written to a temp file (hashed on the way) off the async threads, since a
/// synthetic day may be 10^6 lines.
async fn prepared_bill(
    wechat: &Arc<Wechat>,
    inputs: crate::statements::BillInputs,
) -> std::io::Result<(Arc<tempfile::NamedTempFile>, String)> {
    if let Some(ready) = lock(&wechat.prepared_bill).get(&inputs) {
        return Ok(ready);
    }
    let mchid = wechat.mchid.clone();
    let key = inputs.clone();
    let written = tokio::task::spawn_blocking(move || {
        let statement =
            crate::statements::DayStatement::new(inputs.day, inputs.ledger_lines, &inputs.faults);
        let mut file = tempfile::NamedTempFile::new()?;
        let mut hashing = HashingWriter {
            inner: std::io::BufWriter::new(file.as_file().try_clone()?),
            hasher: Sha1::new(),
        };
        super::bill::write_trade_bill(&mut hashing, &mchid, &statement, &inputs.variant)?;
        std::io::Write::flush(&mut hashing.inner)?;
        let hash = hex::encode(hashing.hasher.finalize());
        std::io::Write::flush(file.as_file_mut())?;
        Ok::<_, std::io::Error>((Arc::new(file), hash))
    })
    .await
    .map_err(std::io::Error::other)??;
    lock(&wechat.prepared_bill).put(key, written.0.clone(), written.1.clone());
    Ok(written)
}

/// Hashes what it writes (the bill's SHA-1 for `hash_value`).
struct HashingWriter<W> {
    inner: W,
    hasher: Sha1,
}

impl<W: std::io::Write> std::io::Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The download itself is signed by the merchant but, as at WeChat, not signed in the answer.
/// The bill is streamed from its temp file.
async fn download_bill(
    State(wechat): State<Arc<Wechat>>,
    Query(query): Query<HashMap<String, String>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Err(answer) = wechat.admit(&method, &uri, &headers, b"") {
        return answer;
    }
    let path = query.get("token").and_then(|t| {
        lock(&wechat.bills)
            .get(t)
            .filter(|b| b.expires > std::time::Instant::now())
            .map(|b| b.file.path().to_owned())
    });
    let Some(path) = path else {
        return wechat.fail(ErrorBody::new(ErrorCode::InvalidRequest, "下载链接已失效"));
    };
    match crate::statements::file_body(&path).await {
        Ok(body) => ([("Content-Type", "application/octet-stream")], body).into_response(),
        Err(_) => wechat.fail(ErrorBody::new(ErrorCode::InvalidRequest, "下载链接已失效")),
    }
}

/// `format_yuan` re-exported for the bill module.
pub(crate) fn yuan(fen: u64) -> String {
    format_yuan(fen)
}

/// Beijing wall-clock time for the bill module.
pub(crate) fn beijing_time(instant: DateTime<Utc>) -> DateTime<FixedOffset> {
    beijing(instant)
}
