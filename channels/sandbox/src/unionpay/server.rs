//! The UnionPay online gateway 5.1.0: `frontTransReq.do` (consume, answers a cashier page),
//! `backTransReq.do` (consume for tests, refund), `queryTrans.do` (single query), and the
//! `backUrl` notifications. Requests are checked with [`MerchantCerts::verify`]; answers and
//! notifications are signed with the platform key and carry `signPubKeyCert`.

// Handlers short-circuit with the platform's signed answer as `Err(Response)`; boxing it would
// only add noise, since every path ends in a `Response` anyway.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::post;
use chrono::{FixedOffset, Utc};
use rand::Rng;

use super::protocol::{
    MerchantCerts, PlatformSigner, RespCode, encode_notify_body, encode_sync_response,
};
use crate::callbacks::{self, Notification, NotificationKind};
use crate::control;
use crate::form::{self, Params};
use crate::http_client::OutgoingRequest;
use crate::keyfiles::{UNIONPAY_PLATFORM_CN, UnionpayKeyFiles};
use crate::keys;
use crate::ledger::{
    NewRefund, NewTrade, PrepayError, Refund, RefundError, RefundState, Trade, TradeState,
};
use crate::platform::{
    BuildError, Core, Profile, RefundEnding, SimulatedPlatform, Tamper, schedule_refund_settlement,
};

/// ASSUMPTION: UnionPay documents no `backUrl` retry schedule. The sandbox retries after
/// 30s, 1m, 2m, 5m, 10m, 30m, 1h, 2h (9 attempts in about 4 h).
const RETRY_SCHEDULE: [Duration; 8] = [
    Duration::from_secs(30),
    Duration::from_secs(60),
    Duration::from_secs(120),
    Duration::from_secs(300),
    Duration::from_secs(600),
    Duration::from_secs(1800),
    Duration::from_secs(3600),
    Duration::from_secs(7200),
];

/// UnionPay's notification rules.
pub static PROFILE: Profile = Profile {
    name: "unionpay",
    retry_schedule: &RETRY_SCHEDULE,
    is_acknowledged: |reply| reply.status == 200 || reply.status == 302,
    new_notify_id: || uuid::Uuid::new_v4().to_string(),
};

/// `orderId` is AN8..40 in the 5.1.0 specification (the official consume demo: "8-40位数字字母"):
/// 8 to 40 letters and digits, no `-` or `_`.
fn valid_order_id(order_id: &str) -> bool {
    (8..=40).contains(&order_id.len()) && order_id.bytes().all(|b| b.is_ascii_alphanumeric())
}

fn random_digits(len: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|_| char::from(b'0' + rng.gen_range(0..10u8)))
        .collect()
}

fn beijing_now(format: &str) -> String {
    let tz = FixedOffset::east_opt(8 * 3600).map(|tz| Utc::now().with_timezone(&tz));
    match tz {
        Some(t) => t.format(format).to_string(),
        None => Utc::now().format(format).to_string(),
    }
}

/// The UnionPay stand-in.
pub struct Unionpay {
    core: Core,
    mer_id: String,
    merchants: MerchantCerts,
    signer: PlatformSigner,
    rogue: OnceLock<Option<PlatformSigner>>,
}

impl std::fmt::Debug for Unionpay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unionpay")
            .field("mer_id", &self.mer_id)
            .finish_non_exhaustive()
    }
}

/// Setting up from key files failed.
#[derive(Debug, thiserror::Error)]
#[error("bad UnionPay key material: {0}")]
pub struct SetupError(String);

/// A sync answer: respCode plus message and extra fields.
struct Answer {
    code: String,
    message: String,
    fields: Params,
}

impl Answer {
    fn new(code: RespCode) -> Self {
        Self {
            code: code.as_str().to_owned(),
            message: code.message().to_owned(),
            fields: Params::new(),
        }
    }

    fn failed(message: &str) -> Self {
        Self {
            code: RespCode::Failed.as_str().to_owned(),
            message: message.to_owned(),
            fields: Params::new(),
        }
    }

    /// Adds a field, empty or not: the real gateway sends empty fields in its answers and
    /// notifications (and signs them), so merchants must keep them when verifying.
    fn with(mut self, key: &str, value: impl Into<String>) -> Self {
        self.fields.insert(key.to_owned(), value.into());
        self
    }
}

impl Unionpay {
    /// Builds the platform from loaded key files.
    ///
    /// # Errors
    /// [`SetupError`] when the platform key does not match its certificate.
    pub fn new(files: UnionpayKeyFiles, time_scale: f64) -> Result<Self, SetupError> {
        let mut merchants = MerchantCerts::new();
        merchants.register_certificate(&files.mer_id, &files.merchant_cert);
        let signer = PlatformSigner::new(files.platform_key, files.platform_cert)
            .map_err(|e| SetupError(e.to_string()))?;
        Ok(Self {
            core: Core::new(time_scale),
            mer_id: files.mer_id,
            merchants,
            signer,
            rogue: OnceLock::new(),
        })
    }

    /// Echoes the request's common fields, adds the answer, signs, and encodes unescaped.
    fn respond(&self, request: &Params, answer: Answer) -> Response {
        let mut fields = Params::new();
        for key in [
            "version",
            "encoding",
            "bizType",
            "txnType",
            "txnSubType",
            "accessType",
            "merId",
            "orderId",
            "txnTime",
            "txnAmt",
            "currencyCode",
        ] {
            if let Some(v) = request.get(key).filter(|v| !v.is_empty()) {
                fields.insert(key.to_owned(), v.clone());
            }
        }
        // Echoed even when the merchant sent none: an empty, signed field (ASSUMPTION: which
        // fields the real gateway leaves empty is not in the notes; that it sends and signs empty
        // fields is what the official SDK's verification over all fields implies).
        fields.insert(
            "reqReserved".to_owned(),
            request.get("reqReserved").cloned().unwrap_or_default(),
        );
        fields.extend(answer.fields);
        fields.insert("respCode".to_owned(), answer.code);
        fields.insert("respMsg".to_owned(), answer.message);
        let body = self
            .signer
            .sign(fields)
            .map_err(|e| e.to_string())
            .and_then(|signed| encode_sync_response(&signed).map_err(|e| e.to_string()));
        match body {
            Ok(body) => ([("Content-Type", "text/plain;charset=UTF-8")], body).into_response(),
            Err(e) => {
                tracing::error!(error = %e, "signing a response failed");
                StatusCode::INTERNAL_SERVER_ERROR.into_response()
            }
        }
    }

    /// Decodes and verifies; `Err` is the signed rejection.
    fn admit(&self, body: &[u8]) -> Result<Params, Response> {
        let text = String::from_utf8_lossy(body);
        let fields = match form::decode(&text) {
            Ok(f) => f,
            Err(e) => {
                let rejection = super::protocol::RequestRejection::Form(e);
                return Err(self.respond(&Params::new(), Answer::new(rejection.resp_code())));
            }
        };
        if let Err(rejection) = self.merchants.verify(&fields) {
            tracing::info!(%rejection, "request refused");
            return Err(self.respond(&fields, Answer::new(rejection.resp_code())));
        }
        if self.core.inject_api_error() {
            return Err(self.respond(&fields, Answer::new(RespCode::Timeout)));
        }
        Ok(fields)
    }

    fn consume(&self, fields: &Params, method: &str) -> Result<Trade, Answer> {
        let get = |k: &str| fields.get(k).map(String::as_str).unwrap_or_default();
        let order_id = get("orderId");
        let valid_order = valid_order_id(order_id);
        let txn_time = get("txnTime");
        let valid_time = txn_time.len() == 14 && txn_time.bytes().all(|b| b.is_ascii_digit());
        let amount = get("txnAmt").parse::<u64>().ok().filter(|a| *a > 0);
        let (true, true, Some(amount)) = (valid_order, valid_time, amount) else {
            return Err(Answer::new(RespCode::FormatError));
        };
        if get("backUrl").is_empty() {
            return Err(Answer::new(RespCode::MissingElement));
        }
        // `payTimeout` (Beijing wall clock): the gateway refuses payment after it.
        let pay_deadline = match get("payTimeout") {
            "" => None,
            t => match chrono::NaiveDateTime::parse_from_str(t, "%Y%m%d%H%M%S")
                .ok()
                .and_then(|n| n.checked_sub_signed(chrono::Duration::hours(8)))
            {
                Some(utc) => Some(utc.and_utc()),
                None => return Err(Answer::new(RespCode::FormatError)),
            },
        };
        let mut extra = BTreeMap::new();
        for key in [
            "txnTime",
            "frontUrl",
            "reqReserved",
            "bizType",
            "channelType",
        ] {
            extra.insert(key.to_owned(), get(key).to_owned());
        }
        let fingerprint = serde_json::json!([
            method,
            amount,
            txn_time,
            get("backUrl"),
            get("frontUrl"),
            get("currencyCode"),
            get("reqReserved"),
        ])
        .to_string();
        let result = {
            let mut ledger = self.core.ledger();
            ledger.prepay(
                NewTrade {
                    out_trade_no: order_id.to_owned(),
                    method: method.to_owned(),
                    amount_minor: amount,
                    currency: "CNY".to_owned(),
                    subject: get("orderDesc").to_owned(),
                    notify_url: get("backUrl").to_owned(),
                    fingerprint,
                    extra,
                    pay_deadline,
                },
                format!("{}{}", beijing_now("%m%d%H%M%S"), random_digits(11)),
                String::new(),
            )
        };
        result.map_err(|e| match e {
            PrepayError::Conflict => Answer::failed("重复交易"),
            PrepayError::AlreadyPaid => Answer::failed("订单已支付"),
            PrepayError::Closed => Answer::failed("订单已关闭"),
        })
    }

    /// A refund (`txnType=04`): accepted (`respCode=00`) as PROCESSING; its result comes by the
    /// refund notification and the query. Returns the new refund with the outcome it will
    /// settle to, for the settle timer.
    fn refund(&self, fields: &Params) -> (Answer, Option<(Refund, RefundEnding)>) {
        let get = |k: &str| fields.get(k).map(String::as_str).unwrap_or_default();
        let order_id = get("orderId");
        let Some(amount) = get("txnAmt").parse::<u64>().ok() else {
            return (Answer::new(RespCode::FormatError), None);
        };
        if order_id.is_empty() || get("origQryId").is_empty() || get("txnTime").len() != 14 {
            return (Answer::new(RespCode::MissingElement), None);
        }
        if !valid_order_id(order_id) {
            return (Answer::new(RespCode::FormatError), None);
        }
        let ending = self.core.faults().refund_outcome;
        let result = {
            let mut ledger = self.core.ledger();
            let Some(out_trade_no) = ledger
                .trade_by_channel_no(get("origQryId"))
                .map(|t| t.out_trade_no.clone())
            else {
                return (Answer::failed("原交易不存在"), None);
            };
            let mut extra = BTreeMap::new();
            extra.insert("txnTime".to_owned(), get("txnTime").to_owned());
            extra.insert("reqReserved".to_owned(), get("reqReserved").to_owned());
            ledger.refund_trade(
                &out_trade_no,
                NewRefund {
                    out_refund_no: order_id.to_owned(),
                    amount_minor: amount,
                    notify_url: Some(get("backUrl").to_owned()).filter(|u| !u.is_empty()),
                    fingerprint: serde_json::json!([amount, get("origQryId"), get("txnTime")])
                        .to_string(),
                    extra,
                    initial_state: RefundState::Processing,
                },
                format!("{}{}", beijing_now("%m%d%H%M%S"), random_digits(11)),
            )
        };
        let answer = match result {
            Ok(outcome) if outcome.created => {
                let answer = Answer::new(RespCode::Success)
                    .with("queryId", outcome.refund.channel_refund_no.clone());
                return (answer, Some((outcome.refund, ending)));
            }
            // ASSUMPTION: a second submission of the same orderId + txnTime is refused as a
            // duplicate (respCode=12, as for frontTransReq); the refund is unchanged (and the
            // request counted): the merchant must query.
            Ok(_) => Answer::new(RespCode::Duplicate),
            Err(RefundError::TradeNotFound) => Answer::failed("原交易不存在"),
            Err(RefundError::NotPaid) => Answer::failed("原交易状态不正确"),
            Err(RefundError::ExceedsPaid { .. }) => Answer::failed("退货金额超限"),
            Err(RefundError::Conflict) => Answer::failed("重复交易"),
            Err(RefundError::ZeroAmount) => Answer::new(RespCode::FormatError),
        };
        (answer, None)
    }

    /// The single query: by `orderId` (+ `txnTime`) of a consume or a refund.
    fn query(&self, fields: &Params) -> (Params, Answer) {
        let get = |k: &str| fields.get(k).map(String::as_str).unwrap_or_default();
        let order_id = get("orderId");
        let txn_time = get("txnTime");
        let ledger = self.core.ledger();
        let mut echo = Params::new();
        for key in [
            "version",
            "encoding",
            "accessType",
            "merId",
            "orderId",
            "txnTime",
        ] {
            echo.insert(key.to_owned(), get(key).to_owned());
        }
        echo.insert("bizType".to_owned(), "000000".to_owned());
        if let Some(trade) = ledger
            .trade(order_id)
            .filter(|t| t.extra("txnTime") == txn_time)
        {
            echo.insert("txnType".to_owned(), "01".to_owned());
            echo.insert("txnSubType".to_owned(), "01".to_owned());
            echo.insert("txnAmt".to_owned(), trade.amount_minor.to_string());
            echo.insert("currencyCode".to_owned(), "156".to_owned());
            let orig = match trade.state {
                TradeState::Pending => RespCode::Accepted,
                TradeState::Succeeded => RespCode::Success,
                TradeState::Failed | TradeState::Closed => RespCode::Failed,
            };
            let mut answer = Answer::new(RespCode::Success)
                .with("origRespCode", orig.as_str())
                .with("origRespMsg", orig.message())
                .with("reqReserved", trade.extra("reqReserved"));
            if trade.state == TradeState::Succeeded {
                answer = self.settlement(answer, trade);
            }
            return (echo, answer);
        }
        if let Some((_, refund)) = ledger
            .refund(order_id)
            .filter(|(_, r)| r.extra.get("txnTime").map(String::as_str) == Some(txn_time))
        {
            echo.insert("txnType".to_owned(), "04".to_owned());
            echo.insert("txnSubType".to_owned(), "00".to_owned());
            echo.insert("txnAmt".to_owned(), refund.amount_minor.to_string());
            echo.insert("currencyCode".to_owned(), "156".to_owned());
            let (orig, orig_msg) = refund_result_code(refund);
            let mut answer = Answer::new(RespCode::Success)
                .with("origRespCode", orig.as_str())
                .with("origRespMsg", orig_msg)
                .with("queryId", refund.channel_refund_no.clone());
            if refund.state == RefundState::Succeeded {
                answer = answer
                    .with("settleAmt", refund.amount_minor.to_string())
                    .with("settleCurrencyCode", "156")
                    .with(
                        "settleDate",
                        refund
                            .settled_at
                            .unwrap_or(refund.created_at)
                            .format("%m%d")
                            .to_string(),
                    );
            }
            return (echo, answer);
        }
        (echo, Answer::new(RespCode::NoSuchTransaction))
    }

    fn settlement(&self, answer: Answer, trade: &Trade) -> Answer {
        let paid_at = trade.paid_at.unwrap_or_else(Utc::now);
        answer
            .with("queryId", trade.channel_trade_no.clone())
            .with(
                "traceNo",
                trade.channel_trade_no[trade.channel_trade_no.len().saturating_sub(6)..].to_owned(),
            )
            .with("traceTime", paid_at.format("%m%d%H%M%S").to_string())
            .with("settleAmt", trade.amount_minor.to_string())
            .with("settleCurrencyCode", "156")
            .with("settleDate", paid_at.format("%m%d").to_string())
            .with("accNo", "6216***********0018")
            .with("payCardType", "01")
            .with("issuerIdentifyMode", "0")
    }

    fn rogue_signer(&self) -> Result<&PlatformSigner, BuildError> {
        self.rogue
            .get_or_init(|| {
                let key = keys::generate_rsa_2048().ok()?;
                let cert = keys::issue_self_signed_certificate(
                    &key,
                    UNIONPAY_PLATFORM_CN,
                    rand::thread_rng().gen_range(10_000_000_000..100_000_000_000u64),
                    SystemTime::now() - Duration::from_secs(86_400),
                    Duration::from_secs(365 * 86_400),
                )
                .ok()?;
                PlatformSigner::new(key, cert).ok()
            })
            .as_ref()
            .ok_or_else(|| BuildError::Crypto("could not make a second key".to_owned()))
    }

    fn signed_notification(
        &self,
        url: &str,
        fields: Params,
        tamper: Tamper,
    ) -> Result<OutgoingRequest, BuildError> {
        let crypto = |e: &dyn std::fmt::Display| BuildError::Crypto(e.to_string());
        let signer = match tamper {
            Tamper::Serial => self.rogue_signer()?,
            Tamper::StaleTimestamp => return Err(BuildError::NotApplicable(tamper, "unionpay")),
            Tamper::None | Tamper::Signature | Tamper::Body => &self.signer,
        };
        let mut signed = signer.sign(fields).map_err(|e| crypto(&e))?;
        match tamper {
            Tamper::Signature => {
                let mut other = signed.clone();
                other.insert("respMsg".to_owned(), "tampered".to_owned());
                let resigned = self.signer.sign(other).map_err(|e| crypto(&e))?;
                if let Some(signature) = resigned.get("signature") {
                    signed.insert("signature".to_owned(), signature.clone());
                }
            }
            Tamper::Body => {
                let bumped = signed
                    .get("txnAmt")
                    .and_then(|a| a.parse::<u64>().ok())
                    .map(|a| (a + 100).to_string())
                    .unwrap_or_else(|| "100".to_owned());
                signed.insert("txnAmt".to_owned(), bumped);
            }
            Tamper::None | Tamper::Serial | Tamper::StaleTimestamp => {}
        }
        Ok(OutgoingRequest::post(
            url,
            "application/x-www-form-urlencoded;charset=UTF-8",
            encode_notify_body(&signed),
        ))
    }

    fn common_notify_fields(&self) -> Params {
        let mut fields = Params::new();
        for (k, v) in [
            ("version", super::protocol::VERSION),
            ("encoding", "utf-8"),
            ("accessType", "0"),
            ("currencyCode", "156"),
        ] {
            fields.insert(k.to_owned(), v.to_owned());
        }
        fields.insert("merId".to_owned(), self.mer_id.clone());
        fields
    }

    /// The refund notification (`txnType=04`) of a settled refund: `respCode=00` succeeded,
    /// `01` failed.
    fn schedule_refund_notification(self: &Arc<Self>, trade: &Trade, refund: &Refund) {
        let Some(url) = refund.notify_url.clone() else {
            return;
        };
        if refund.state == RefundState::Processing {
            return;
        }
        let (code, message) = refund_result_code(refund);
        let at = refund.settled_at.unwrap_or(refund.created_at);
        let mut fields = self.common_notify_fields();
        for (k, v) in [
            ("bizType", "000201".to_owned()),
            ("txnType", "04".to_owned()),
            ("txnSubType", "00".to_owned()),
            ("orderId", refund.out_refund_no.clone()),
            (
                "txnTime",
                refund.extra.get("txnTime").cloned().unwrap_or_default(),
            ),
            ("txnAmt", refund.amount_minor.to_string()),
            ("origQryId", trade.channel_trade_no.clone()),
            ("queryId", refund.channel_refund_no.clone()),
            ("respCode", code.as_str().to_owned()),
            ("respMsg", message.to_owned()),
            ("settleAmt", refund.amount_minor.to_string()),
            ("settleCurrencyCode", "156".to_owned()),
            ("settleDate", at.format("%m%d").to_string()),
            ("traceNo", random_digits(6)),
            ("traceTime", at.format("%m%d%H%M%S").to_string()),
            (
                "reqReserved",
                refund.extra.get("reqReserved").cloned().unwrap_or_default(),
            ),
        ] {
            // Empty fields (reqReserved without one) are sent and signed, as by the gateway.
            fields.insert(k.to_owned(), v);
        }
        let notify_id = (PROFILE.new_notify_id)();
        let build = {
            let this = Arc::clone(self);
            Arc::new(move || this.signed_notification(&url, fields.clone(), Tamper::None))
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

/// A refund's result code, in queries (`origRespCode`) and its notification (`respCode`):
/// `05` processing, `00` succeeded, `01` failed (**ASSUMPTION**: the real failure codes are in
/// the appendix the notes lack).
fn refund_result_code(refund: &Refund) -> (RespCode, &'static str) {
    match refund.state {
        RefundState::Processing => (RespCode::Accepted, RespCode::Accepted.message()),
        RefundState::Succeeded => (RespCode::Success, RespCode::Success.message()),
        RefundState::Failed => (RespCode::Failed, "交易失败[退货失败]"),
    }
}

impl SimulatedPlatform for Unionpay {
    fn profile(&self) -> &'static Profile {
        &PROFILE
    }

    fn core(&self) -> &Core {
        &self.core
    }

    fn refund_settled(self: Arc<Self>, trade: &Trade, refund: &Refund) {
        self.schedule_refund_notification(trade, refund);
    }

    fn payment_notification(
        &self,
        trade: &Trade,
        _notify_id: &str,
        tamper: Tamper,
    ) -> Result<OutgoingRequest, BuildError> {
        let mut paid = trade.clone();
        paid.paid_at = paid.paid_at.or(Some(Utc::now()));
        let mut fields = self.common_notify_fields();
        let biz_type = Some(trade.extra("bizType"))
            .filter(|b| !b.is_empty())
            .unwrap_or("000201");
        for (k, v) in [
            ("bizType", biz_type),
            ("txnType", "01"),
            ("txnSubType", "01"),
            ("orderId", &trade.out_trade_no),
            ("txnTime", trade.extra("txnTime")),
        ] {
            fields.insert(k.to_owned(), v.to_owned());
        }
        fields.insert("txnAmt".to_owned(), trade.amount_minor.to_string());
        let answer = self
            .settlement(Answer::new(RespCode::Success), &paid)
            .with("reqReserved", trade.extra("reqReserved"));
        fields.extend(answer.fields);
        fields.insert("respCode".to_owned(), answer.code);
        fields.insert("respMsg".to_owned(), answer.message);
        self.signed_notification(&trade.notify_url, fields, tamper)
    }
}

/// The gateway routes plus the control API.
pub fn router(unionpay: Arc<Unionpay>) -> Router {
    let platform: Arc<dyn SimulatedPlatform> = unionpay.clone();
    Router::new()
        .route("/gateway/api/frontTransReq.do", post(front_trans))
        .route("/gateway/api/backTransReq.do", post(back_trans))
        .route("/gateway/api/queryTrans.do", post(query_trans))
        .route("/gateway/api/fileTransRequest.do", post(file_trans))
        .with_state(unionpay)
        .merge(control::router(platform))
}

fn escape_html(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

async fn front_trans(State(unionpay): State<Arc<Unionpay>>, body: Bytes) -> Response {
    let response = match unionpay.admit(&body) {
        Err(answer) => answer,
        Ok(fields) if fields.get("txnType").map(String::as_str) != Some("01") => {
            unionpay.respond(&fields, Answer::new(RespCode::FormatError))
        }
        // The payer's browser submits the form once: the gateway refuses a second submission of
        // the same orderId as a duplicate (ASSUMPTION: respCode 12 "重复交易", from the public
        // ACP code list the notes could not cite), even with identical fields.
        Ok(fields)
            if fields
                .get("orderId")
                .is_some_and(|o| unionpay.core.ledger().trade(o).is_some()) =>
        {
            unionpay.respond(&fields, Answer::new(RespCode::Duplicate))
        }
        Ok(fields) => match unionpay.consume(&fields, "front") {
            Ok(trade) => Html(format!(
                "<!DOCTYPE html><html><head><meta charset=\"UTF-8\"><title>银联在线支付 (sandbox)</title></head>\
                 <body><h1>UnionPay sandbox cashier</h1><p>orderId: <b id=\"orderId\">{}</b></p>\
                 <p>queryId: <b id=\"queryId\">{}</b></p><p>txnAmt: <b id=\"txnAmt\">{}</b></p>\
                 <p>Pay with <code>POST /sandbox/trades/{}/pay</code>.</p></body></html>",
                escape_html(&trade.out_trade_no),
                escape_html(&trade.channel_trade_no),
                trade.amount_minor,
                escape_html(&trade.out_trade_no),
            ))
            .into_response(),
            Err(answer) => unionpay.respond(&fields, answer),
        },
    };
    unionpay.core.delay_api_answer().await;
    response
}

async fn back_trans(State(unionpay): State<Arc<Unionpay>>, body: Bytes) -> Response {
    let mut created = None;
    let mut refund_call = false;
    let response = match unionpay.admit(&body) {
        Err(answer) => answer,
        Ok(fields) => {
            let answer = match fields.get("txnType").map(String::as_str) {
                Some("01") => match unionpay.consume(&fields, "back") {
                    Ok(_) => Answer::new(RespCode::Success),
                    Err(answer) => answer,
                },
                Some("04") => {
                    refund_call = true;
                    let (answer, new) = unionpay.refund(&fields);
                    created = new;
                    answer
                }
                _ => Answer::new(RespCode::FormatError),
            };
            unionpay.respond(&fields, answer)
        }
    };
    // The refund settles on its own schedule whether or not the merchant waits for the answer
    // (a client that times out and hangs up must not stop the platform's work).
    if let Some((refund, ending)) = created {
        let platform: Arc<dyn SimulatedPlatform> = unionpay.clone();
        schedule_refund_settlement(&platform, &refund, ending);
    }
    if refund_call {
        unionpay.core.delay_refund_answer().await;
    }
    unionpay.core.delay_api_answer().await;
    response
}

async fn query_trans(State(unionpay): State<Arc<Unionpay>>, body: Bytes) -> Response {
    let response = match unionpay.admit(&body) {
        Err(answer) => answer,
        Ok(fields) if fields.get("txnType").map(String::as_str) != Some("00") => {
            unionpay.respond(&fields, Answer::new(RespCode::FormatError))
        }
        // channelType is a required element of the query (the official demo Form_6_5_Query
        // sends 07).
        Ok(fields) if fields.get("channelType").is_none_or(|c| c.is_empty()) => {
            unionpay.respond(&fields, Answer::new(RespCode::MissingElement))
        }
        Ok(fields) if !fields.get("orderId").is_some_and(|o| valid_order_id(o)) => {
            unionpay.respond(&fields, Answer::new(RespCode::FormatError))
        }
        Ok(fields) => {
            let (echo, answer) = unionpay.query(&fields);
            unionpay.respond(&echo, answer)
        }
    };
    unionpay.core.delay_api_answer().await;
    response
}

/// The settlement day an `MMDD` names: this year's, or last year's when this year's is still to
/// come (Beijing time).
fn settle_day(mmdd: &str, today: chrono::NaiveDate) -> Option<chrono::NaiveDate> {
    use chrono::Datelike as _;
    if mmdd.len() != 4 || !mmdd.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let month: u32 = mmdd[..2].parse().ok()?;
    let day: u32 = mmdd[2..].parse().ok()?;
    let this_year = chrono::NaiveDate::from_ymd_opt(today.year(), month, day);
    match this_year {
        Some(d) if d <= today => Some(d),
        _ => chrono::NaiveDate::from_ymd_opt(today.year() - 1, month, day),
    }
}

/// The file transfer (`txnType=76`, `txnSubType=01`, `bizType=000000`, `fileType=00`,
/// `settleDate=MMDD`): the day's reconciliation file as `fileContent`, built from the ledger with
/// the statement faults applied. `respCode=98` for a day with no trade at all.
async fn file_trans(State(unionpay): State<Arc<Unionpay>>, body: Bytes) -> Response {
    let fields = match unionpay.admit(&body) {
        Err(answer) => return answer,
        Ok(fields) => fields,
    };
    let get = |k: &str| fields.get(k).map_or("", String::as_str);
    if get("txnType") != "76" || get("fileType") != "00" || get("bizType") != "000000" {
        return unionpay.respond(&fields, Answer::new(RespCode::FormatError));
    }
    let today = crate::statements::beijing_day(Utc::now());
    let Some(day) = settle_day(get("settleDate"), today) else {
        return unionpay.respond(&fields, Answer::new(RespCode::FormatError));
    };
    let lines = {
        let ledger = unionpay.core.ledger();
        let trades: Vec<&Trade> = ledger.trades().collect();
        super::bill::ledger_lines(&trades, day)
    };
    let faults = crate::platform::lock(&unionpay.core.statement_faults).clone();
    let statement = crate::statements::DayStatement::new(day, lines, &faults);
    if statement.lines.is_empty() && statement.synthetic == 0 {
        let answer = unionpay.respond(&fields, Answer::new(RespCode::FileNotFound));
        unionpay.core.delay_api_answer().await;
        return answer;
    }
    let mer_id = unionpay.mer_id.clone();
    let content =
        tokio::task::spawn_blocking(move || super::bill::file_content(&mer_id, &statement)).await;
    let response = match content {
        Ok(Ok(content)) => unionpay.respond(
            &fields,
            Answer::new(RespCode::Success)
                .with("fileType", "00")
                .with("settleDate", get("settleDate"))
                .with("fileName", super::bill::file_name(&unionpay.mer_id, day))
                .with("fileContent", content),
        ),
        other => {
            tracing::error!(?other, "writing a reconciliation file failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    };
    unionpay.core.delay_api_answer().await;
    response
}
