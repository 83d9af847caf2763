//! [`channel_kit::Adapter`] for WeChat Pay API v3: JSAPI and Native prepay, query, close, refund,
//! refund query, the trade bill, and verification of payment and refund notifications.
use std::sync::Arc;

use channel_kit::fields::{cny_fen, required};
use channel_kit::time::timestamp;
use channel_kit::{
    Adapter, Callback, ChannelError, Notification, RejectReason, Rejection, Reply, pb,
};
use chrono::{DateTime, FixedOffset, Utc};

use crate::client::{Answer, WechatClient, parse};
use crate::config::{WechatKeys, WechatSettings};
use crate::signature::{
    ApiV3Key, MerchantSigner, VerifyError, WechatpayHeaders, decrypt_resource, generate_nonce,
};
use crate::status::{ErrorClass, PaymentStatus, RefundState, RefundStatus, TradeState};
use crate::wire::{
    self, BillType, CloseRequest, JsapiPrepayRequest, JsapiPrepayResponse, NativePrepayRequest,
    NativePrepayResponse, NotifyEnvelope, NotifyReply, OrderAmount, Payer, Refund,
    RefundNotifyResource, RefundRequest, RefundRequestAmount, TradeBillResponse, Transaction,
};

/// How this platform is named in error messages.
const PLATFORM: &str = "WeChat Pay";

/// The only currency these merchant APIs settle in.
const CNY: &str = "CNY";

/// WeChat's times are Beijing time (UTC+8, no daylight saving).
pub(crate) const BEIJING: FixedOffset = match FixedOffset::east_opt(8 * 3600) {
    Some(offset) => offset,
    None => panic!("UTC+8 is a valid offset"),
};

fn from_timestamp(t: &prost_types::Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0))
}

fn parse_rfc3339(text: &str) -> Option<prost_types::Timestamp> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| timestamp(t.with_timezone(&Utc)))
}

/// `trade_state` through the crate's exhaustive mapping to the contract's states.
pub(crate) fn trade_state(text: &str) -> pb::TradeState {
    match TradeState::parse(text).payment_status() {
        PaymentStatus::Pending => pb::TradeState::Pending,
        PaymentStatus::Succeeded => pb::TradeState::Succeeded,
        PaymentStatus::Failed => pb::TradeState::Failed,
        PaymentStatus::Closed => pb::TradeState::Closed,
        PaymentStatus::Unknown => pb::TradeState::Unknown,
    }
}

/// Refund `status`: `ABNORMAL` (money left but did not arrive; handled by hand at WeChat) is still
/// in flight, never a failure: refunding again could pay twice.
fn refund_state(text: &str) -> pb::RefundState {
    match RefundState::parse(text).refund_status() {
        RefundStatus::Pending | RefundStatus::Abnormal => pb::RefundState::Processing,
        RefundStatus::Succeeded => pb::RefundState::Succeeded,
        RefundStatus::Closed => pb::RefundState::Failed,
        RefundStatus::Unknown => pb::RefundState::Unknown,
    }
}

/// A transaction (query answer or decrypted notification) as the contract's result. A success must
/// carry its amount: the core checks it before believing the payment.
fn payment_result(t: &Transaction) -> Result<pb::PaymentResult, String> {
    let state = trade_state(&t.trade_state);
    let paid = if state == pb::TradeState::Succeeded {
        let amount = t.amount.as_ref();
        let total = amount
            .and_then(|a| a.total)
            .ok_or("a successful transaction without amount.total")?;
        let currency = amount
            .and_then(|a| a.currency.clone())
            .ok_or("a successful transaction without amount.currency")?;
        Some(pb::Money {
            amount_minor: total,
            currency,
        })
    } else {
        None
    };
    Ok(pb::PaymentResult {
        out_trade_no: t.out_trade_no.clone(),
        state: state as i32,
        channel_trade_no: t.transaction_id.clone().unwrap_or_default(),
        paid,
        paid_at: t.success_time.as_deref().and_then(parse_rfc3339),
        channel_status: t.trade_state.clone(),
    })
}

fn refund_result(r: &Refund) -> pb::RefundResult {
    let state = refund_state(&r.status);
    pb::RefundResult {
        out_refund_no: r.out_refund_no.clone(),
        state: state as i32,
        channel_refund_no: r.refund_id.clone(),
        refunded: Some(pb::Money {
            amount_minor: r.amount.refund,
            currency: r.amount.currency.clone().unwrap_or_else(|| CNY.to_owned()),
        }),
        succeeded_at: r.success_time.as_deref().and_then(parse_rfc3339),
        channel_status: r.status.clone(),
    }
}

fn not_found_payment(out_trade_no: &str, code: &str) -> pb::PaymentResult {
    pb::PaymentResult {
        out_trade_no: out_trade_no.to_owned(),
        state: pb::TradeState::NotFound as i32,
        channel_status: code.to_owned(),
        ..Default::default()
    }
}

/// `out_trade_no` as WeChat Pay documents it: 6 to 32 characters of letters, digits and
/// `_ - | *`, unique per merchant.
///
/// # Errors
/// `InvalidArgument` naming the rule.
pub fn out_trade_no(value: &str) -> Result<&str, ChannelError> {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'|' | b'*');
    if (6..=32).contains(&value.len()) && value.bytes().all(allowed) {
        Ok(value)
    } else {
        Err(ChannelError::InvalidArgument(format!(
            "out_trade_no {value:?}: WeChat Pay takes 6 to 32 characters of [A-Za-z0-9_-|*]"
        )))
    }
}

/// The WeChat Pay adapter. Stateless: every id comes in the request.
pub struct WechatAdapter {
    client: WechatClient,
    signer: Arc<MerchantSigner>,
    apiv3_key: ApiV3Key,
    mchid: String,
    appid: String,
    notify_url: String,
    refund_notify_url: String,
    now: fn() -> DateTime<Utc>,
}

impl WechatAdapter {
    /// Builds the adapter from validated settings and parsed keys. `now` is the clock used for
    /// signing timestamps and the notification window (tests pass a fixed one).
    pub fn new(
        settings: &WechatSettings,
        keys: WechatKeys,
        http: reqwest::Client,
        now: fn() -> DateTime<Utc>,
    ) -> Self {
        let signer = Arc::new(keys.signer);
        Self {
            client: WechatClient::new(
                http,
                &settings.api_base,
                signer.clone(),
                Arc::new(keys.platform),
                keys.apiv3_key.clone(),
                now,
            ),
            signer,
            apiv3_key: keys.apiv3_key,
            mchid: settings.mchid.clone(),
            appid: settings.appid.clone(),
            notify_url: settings.notify_url.clone(),
            refund_notify_url: settings.refund_notify_url.clone(),
            now,
        }
    }

    /// Downloads the platform certificates now (at start).
    ///
    /// # Errors
    /// See [`WechatClient::refresh_certificates`].
    /// Scheduled refreshes do not count against the unknown-serial rate limit: that limit is
    /// there against floods of forged serials, not to delay the first sight of a new key.
    pub async fn refresh_certificates(&self) -> Result<Vec<String>, ChannelError> {
        self.client.refresh_certificates().await
    }

    /// Refreshes the platform certificates every [`crate::platform_keys::RefreshPolicy::every`]
    /// until the process ends (nothing when downloads are off).
    pub fn spawn_certificate_refresh(self: &Arc<Self>) {
        let policy = self.client.keys().policy();
        if !policy.download {
            return;
        }
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(policy.every);
            every.tick().await;
            loop {
                every.tick().await;
                match this.refresh_certificates().await {
                    Ok(serials) => tracing::debug!(?serials, "platform certificates refreshed"),
                    Err(e) => {
                        tracing::warn!(error = %e, "periodic platform certificate refresh failed")
                    }
                }
            }
        });
    }

    /// `time_expire`: RFC 3339 in Beijing time, e.g. `2018-06-08T10:34:56+08:00`.
    fn time_expire(expires_at: Option<&prost_types::Timestamp>) -> Option<String> {
        expires_at.and_then(from_timestamp).map(|t| {
            t.with_timezone(&BEIJING)
                .format("%Y-%m-%dT%H:%M:%S%:z")
                .to_string()
        })
    }

    async fn query(&self, out_trade_no: &str) -> Result<pb::PaymentResult, ChannelError> {
        let path = wire::query_by_out_trade_no_path(out_trade_no, &self.mchid);
        match self.client.get(&path).await? {
            Answer::Ok(v) => {
                let t: Transaction = parse(&v, "query")?;
                if t.out_trade_no != out_trade_no || t.mchid != self.mchid || t.appid != self.appid
                {
                    return Err(ChannelError::BadResponse(format!(
                        "query answer names trade {:?} of merchant {:?}, app {:?}",
                        t.out_trade_no, t.mchid, t.appid
                    )));
                }
                payment_result(&t).map_err(ChannelError::BadResponse)
            }
            Answer::Refused(r) if r.class == ErrorClass::NotFound => {
                Ok(not_found_payment(out_trade_no, &r.code))
            }
            Answer::Refused(r) => Err(r.into_error()),
        }
    }

    fn open_payment(&self, t: &Transaction) -> Result<pb::PaymentResult, Rejection> {
        if t.mchid != self.mchid {
            return Err(Rejection::new(
                RejectReason::WrongMerchant,
                format!("notification for merchant {:?}", t.mchid),
            ));
        }
        // A payment notification names the app it was made for: a trade of another app of the
        // same merchant is not one of ours.
        if t.appid != self.appid {
            return Err(Rejection::new(
                RejectReason::WrongMerchant,
                format!("notification for app {:?}", t.appid),
            ));
        }
        payment_result(t).map_err(|e| Rejection::new(RejectReason::Malformed, e))
    }
}

#[tonic::async_trait]
impl Adapter for WechatAdapter {
    fn channel(&self) -> pb::Channel {
        pb::Channel::Wechat
    }

    async fn prepay(&self, req: pb::PrepayRequest) -> Result<pb::PrepayResponse, ChannelError> {
        let method = pb::PayMethod::try_from(req.method).unwrap_or(pb::PayMethod::Unspecified);
        let total = cny_fen(req.amount.as_ref(), "amount", PLATFORM)?;
        let out_trade_no = out_trade_no(&req.out_trade_no)?.to_owned();
        let description = required(&req.subject, "subject")?.to_owned();
        let time_expire = Self::time_expire(req.expires_at.as_ref());
        let amount = OrderAmount {
            total,
            currency: CNY.to_owned(),
        };
        match method {
            pb::PayMethod::WechatJsapi => {
                let openid = required(&req.payer_id, "payer_id (the payer's openid)")?;
                let body = JsapiPrepayRequest {
                    appid: self.appid.clone(),
                    mchid: self.mchid.clone(),
                    description,
                    out_trade_no,
                    time_expire,
                    attach: None,
                    notify_url: self.notify_url.clone(),
                    goods_tag: None,
                    support_fapiao: None,
                    amount,
                    payer: Payer {
                        openid: openid.to_owned(),
                    },
                };
                let answer = match self.client.post(wire::JSAPI_PREPAY_PATH, &body).await? {
                    Answer::Ok(v) => parse::<JsapiPrepayResponse>(&v, "JSAPI prepay")?,
                    Answer::Refused(r) => return Err(r.into_error()),
                };
                let params = self
                    .signer
                    .jsapi_pay_params(
                        &self.appid,
                        &answer.prepay_id,
                        (self.now)().timestamp(),
                        &generate_nonce(),
                    )
                    .map_err(|e| ChannelError::BadResponse(format!("cannot sign paySign: {e}")))?;
                let pay_params = [
                    ("appId", params.app_id),
                    ("timeStamp", params.time_stamp),
                    ("nonceStr", params.nonce_str),
                    ("package", params.package),
                    ("signType", params.sign_type),
                    ("paySign", params.pay_sign),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect();
                Ok(pb::PrepayResponse {
                    pay_params,
                    channel_prepay_id: answer.prepay_id,
                })
            }
            pb::PayMethod::WechatNative => {
                let body = NativePrepayRequest {
                    appid: self.appid.clone(),
                    mchid: self.mchid.clone(),
                    description,
                    out_trade_no,
                    time_expire,
                    attach: None,
                    notify_url: self.notify_url.clone(),
                    goods_tag: None,
                    support_fapiao: None,
                    amount,
                };
                let answer = match self.client.post(wire::NATIVE_PREPAY_PATH, &body).await? {
                    Answer::Ok(v) => parse::<NativePrepayResponse>(&v, "Native prepay")?,
                    Answer::Refused(r) => return Err(r.into_error()),
                };
                Ok(pb::PrepayResponse {
                    pay_params: [("code_url".to_owned(), answer.code_url)].into(),
                    channel_prepay_id: String::new(),
                })
            }
            other => Err(ChannelError::InvalidArgument(format!(
                "method {other:?} is not a WeChat Pay method"
            ))),
        }
    }

    async fn query_payment(
        &self,
        req: pb::QueryPaymentRequest,
    ) -> Result<pb::PaymentResult, ChannelError> {
        self.query(out_trade_no(&req.out_trade_no)?).await
    }

    /// Closes at WeChat, then asks for the trade's state, so that a trade paid just before the
    /// close (WeChat refuses to close it) comes back as SUCCEEDED rather than as an error.
    async fn close_payment(
        &self,
        req: pb::ClosePaymentRequest,
    ) -> Result<pb::PaymentResult, ChannelError> {
        let out_trade_no = out_trade_no(&req.out_trade_no)?;
        let body = CloseRequest {
            mchid: self.mchid.clone(),
        };
        match self
            .client
            .post(&wire::close_path(out_trade_no), &body)
            .await?
        {
            Answer::Ok(_) => self.query(out_trade_no).await,
            Answer::Refused(r) => {
                let state = self.query(out_trade_no).await?;
                let settled = [
                    pb::TradeState::Succeeded as i32,
                    pb::TradeState::Closed as i32,
                    pb::TradeState::Failed as i32,
                    pb::TradeState::NotFound as i32,
                ];
                if settled.contains(&state.state) {
                    Ok(state)
                } else {
                    Err(r.into_error())
                }
            }
        }
    }

    async fn refund(&self, req: pb::RefundRequest) -> Result<pb::RefundResult, ChannelError> {
        let refund = cny_fen(req.refund.as_ref(), "refund", PLATFORM)?;
        let total = cny_fen(req.total.as_ref(), "total", PLATFORM)?;
        if refund > total {
            return Err(ChannelError::InvalidArgument(
                "refund exceeds total".to_owned(),
            ));
        }
        let body = RefundRequest {
            transaction_id: None,
            out_trade_no: Some(required(&req.out_trade_no, "out_trade_no")?.to_owned()),
            out_refund_no: required(&req.out_refund_no, "out_refund_no")?.to_owned(),
            reason: (!req.reason.is_empty()).then(|| req.reason.clone()),
            notify_url: Some(self.refund_notify_url.clone()),
            funds_account: None,
            amount: RefundRequestAmount {
                refund,
                total,
                currency: CNY.to_owned(),
            },
        };
        match self.client.post(wire::REFUND_PATH, &body).await? {
            Answer::Ok(v) => {
                let r: Refund = parse(&v, "refund")?;
                if r.out_refund_no != req.out_refund_no {
                    return Err(ChannelError::BadResponse(format!(
                        "refund answer names refund {:?}",
                        r.out_refund_no
                    )));
                }
                Ok(refund_result(&r))
            }
            Answer::Refused(r) => Err(r.into_error()),
        }
    }

    async fn query_refund(
        &self,
        req: pb::QueryRefundRequest,
    ) -> Result<pb::RefundResult, ChannelError> {
        let out_refund_no = required(&req.out_refund_no, "out_refund_no")?;
        match self
            .client
            .get(&wire::refund_query_path(out_refund_no))
            .await?
        {
            Answer::Ok(v) => {
                let r: Refund = parse(&v, "refund query")?;
                if r.out_refund_no != out_refund_no
                    || (!req.out_trade_no.is_empty() && r.out_trade_no != req.out_trade_no)
                {
                    return Err(ChannelError::BadResponse(format!(
                        "refund query answer names refund {:?} of trade {:?}",
                        r.out_refund_no, r.out_trade_no
                    )));
                }
                Ok(refund_result(&r))
            }
            Answer::Refused(r) if r.class == ErrorClass::NotFound => Ok(pb::RefundResult {
                out_refund_no: out_refund_no.to_owned(),
                state: pb::RefundState::NotFound as i32,
                channel_status: r.code,
                ..Default::default()
            }),
            Answer::Refused(r) => Err(r.into_error()),
        }
    }

    /// Applies for the day's `ALL` trade bill, downloads it with a signed GET to a temp file
    /// (checked against the SHA-1 in the signed answer, hashed as it arrives) and parses it as a
    /// stream into `sink`.
    async fn fetch_statement(
        &self,
        req: pb::FetchStatementRequest,
        sink: channel_kit::statement::LineSink,
    ) -> Result<pb::StatementTotals, ChannelError> {
        let day = chrono::NaiveDate::parse_from_str(&req.day, "%Y-%m-%d").map_err(|_| {
            ChannelError::InvalidArgument(format!("day {:?} is not YYYY-MM-DD", req.day))
        })?;
        let path = wire::trade_bill_path(day, BillType::All, false);
        let bill: TradeBillResponse = match self.client.get(&path).await? {
            Answer::Ok(v) => parse(&v, "trade bill")?,
            Answer::Refused(r) => return Err(r.into_error()),
        };
        let file = self
            .client
            .download_bill(&bill.download_url, &bill.hash_type, &bill.hash_value)
            .await?;
        tokio::task::spawn_blocking(move || {
            crate::statement::parse_trade_bill(std::io::BufReader::new(file), |line| {
                sink.blocking_push(line)
            })
        })
        .await
        .map_err(|e| ChannelError::Internal(format!("bill parser: {e}")))?
        .map_err(|e| match ChannelError::from(e) {
            ChannelError::BadStatement(m) => {
                ChannelError::BadStatement(format!("trade bill of {day}: {m}"))
            }
            other => other,
        })
    }

    async fn verify_callback(&self, cb: &Callback) -> Result<Notification, Rejection> {
        let header = |name: &str| -> Result<&str, Rejection> {
            cb.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| Rejection::new(RejectReason::Malformed, format!("no {name}")))
        };
        let headers = WechatpayHeaders {
            timestamp: header("Wechatpay-Timestamp")?,
            nonce: header("Wechatpay-Nonce")?,
            signature: header("Wechatpay-Signature")?,
            serial: header("Wechatpay-Serial")?,
            signature_type: cb
                .headers
                .get("Wechatpay-Signature-Type")
                .and_then(|v| v.to_str().ok()),
        };
        self.client
            .verify_signed(&headers, &cb.body)
            .await
            .map_err(|e| {
                let reason = match &e {
                    VerifyError::StaleTimestamp { .. } => RejectReason::StaleTimestamp,
                    VerifyError::UnknownSerial(_) => RejectReason::UnknownKey,
                    VerifyError::BadSignature => RejectReason::BadSignature,
                    VerifyError::SignatureType(_) | VerifyError::MalformedTimestamp(_) => {
                        RejectReason::Malformed
                    }
                };
                Rejection::new(reason, e.to_string())
            })?;
        let envelope: NotifyEnvelope = serde_json::from_slice(&cb.body)
            .map_err(|e| Rejection::new(RejectReason::Malformed, e.to_string()))?;
        let plaintext = decrypt_resource(&self.apiv3_key, &envelope.resource)
            .map_err(|e| Rejection::new(RejectReason::DecryptFailed, e.to_string()))?;
        let malformed =
            |e: serde_json::Error| Rejection::new(RejectReason::Malformed, e.to_string());
        let original_type = envelope.resource.original_type.as_deref().unwrap_or("");
        if envelope.event_type.starts_with("TRANSACTION.") || original_type == "transaction" {
            let t: Transaction = serde_json::from_str(&plaintext).map_err(malformed)?;
            Ok(Notification::Payment {
                event_id: envelope.id,
                result: self.open_payment(&t)?,
            })
        } else if envelope.event_type.starts_with("REFUND.") || original_type == "refund" {
            let r: RefundNotifyResource = serde_json::from_str(&plaintext).map_err(malformed)?;
            if r.mchid != self.mchid {
                return Err(Rejection::new(
                    RejectReason::WrongMerchant,
                    format!("notification for merchant {:?}", r.mchid),
                ));
            }
            let state = refund_state(&r.refund_status);
            Ok(Notification::Refund {
                event_id: envelope.id,
                out_trade_no: r.out_trade_no.clone(),
                result: pb::RefundResult {
                    out_refund_no: r.out_refund_no,
                    state: state as i32,
                    channel_refund_no: r.refund_id,
                    refunded: Some(pb::Money {
                        amount_minor: r.amount.refund,
                        currency: CNY.to_owned(),
                    }),
                    succeeded_at: r.success_time.as_deref().and_then(parse_rfc3339),
                    channel_status: r.refund_status,
                },
            })
        } else {
            Err(Rejection::new(
                RejectReason::Malformed,
                format!("unhandled event_type {:?}", envelope.event_type),
            ))
        }
    }

    fn ack(&self) -> Reply {
        Reply {
            status: 200,
            content_type: "application/json",
            body: reply_body(&NotifyReply::success()),
        }
    }

    fn nack(&self, why: &str) -> Reply {
        let mut reply = NotifyReply::failure();
        reply.message = why.to_owned();
        Reply {
            status: 500,
            content_type: "application/json",
            body: reply_body(&reply),
        }
    }
}

fn reply_body(reply: &NotifyReply) -> String {
    serde_json::to_string(reply).unwrap_or_else(|_| format!("{{\"code\":\"{}\"}}", reply.code))
}

#[cfg(test)]
mod tests;
