//! [`channel_kit::Adapter`] for the UnionPay online gateway 5.1.0: front (browser) consume, query,
//! refund, refund query, the reconciliation file, and verification of back notifications.
//!
//! UnionPay names a transaction by `orderId` **and** `txnTime` (its send time), and a query must
//! repeat both. The adapter keeps no state: `txnTime` is the creation time the core sends with
//! Prepay and Refund (see [`txn_time_at`]), which also makes a repeated Prepay the same UnionPay
//! order; Prepay hands it back as `channel_prepay_id`, which the core passes to later queries.
use std::collections::BTreeMap;
use std::sync::Arc;

use channel_kit::fields::cny_fen;
use channel_kit::{
    Adapter, Callback, ChannelError, Notification, RejectReason, Rejection, Reply, pb,
};
use chrono::{DateTime, FixedOffset, Utc};

use crate::client::UnionpayClient;
use crate::config::{UnionpayKeys, UnionpaySettings};
use crate::signature::{PlatformVerifier, VerifyError};
use crate::status::{
    SubmitOutcome, TransactionStatus, classify_submit, notify_status, query_status,
};
use crate::wire::{
    self, BACK_TRANS_PATH, CNY, ChannelType, ConsumeRequest, FRONT_TRANS_PATH, QUERY_TRANS_PATH,
    QueryRequest, RefundRequest, TransactionResult,
};

/// How this platform is named in error messages.
const PLATFORM: &str = "UnionPay";

/// `txnTime`, `payTimeout` and the file's times are Beijing time.
pub(crate) const BEIJING: FixedOffset = match FixedOffset::east_opt(8 * 3600) {
    Some(offset) => offset,
    None => panic!("UTC+8 is a valid offset"),
};

/// The key of the form's target URL in a FRONT prepay's `pay_params` (every other key is a
/// signed form field).
pub const ACTION_KEY: &str = "action";

/// The `txnTime` (Beijing time) of a transaction the core created at `at`.
///
/// UnionPay names a transaction by `orderId` and `txnTime`; the core sends its creation time with
/// every request that needs it, so the adapter stays stateless and a retry names the same trade.
///
/// # Errors
/// `InvalidArgument` naming `field` when the core sent no valid time.
pub fn txn_time_at(
    at: Option<&prost_types::Timestamp>,
    field: &str,
) -> Result<String, ChannelError> {
    at.and_then(|t| DateTime::from_timestamp(t.seconds, 0))
        .map(wire::format_txn_time)
        .ok_or_else(|| {
            ChannelError::InvalidArgument(format!(
                "{field} is required: UnionPay identifies a transaction by orderId and txnTime"
            ))
        })
}

/// The txnTime naming a payment: what Prepay returned as `channel_prepay_id`, or, when the core
/// never got that answer, the same value derived from the attempt's creation time (which Prepay
/// used).
fn txn_time_of(channel_prepay_id: &str, created_at: Option<&prost_types::Timestamp>) -> String {
    if channel_prepay_id.is_empty() {
        txn_time_at(created_at, "created_at").unwrap_or_default()
    } else {
        channel_prepay_id.to_owned()
    }
}

/// `156` is the only currency these adapters handle.
fn currency_of(code: Option<&str>) -> Result<String, String> {
    match code {
        Some(CNY) | None => Ok("CNY".to_owned()),
        Some(other) => Err(format!("currencyCode {other:?} is not CNY (156)")),
    }
}

fn wire_error(e: wire::WireError) -> ChannelError {
    ChannelError::InvalidArgument(e.to_string())
}

fn status_text(r: &TransactionResult) -> String {
    match &r.orig_resp_code {
        Some(orig) => format!("respCode={} origRespCode={orig}", r.resp_code),
        None => format!("respCode={}", r.resp_code),
    }
}

fn payment_state(s: TransactionStatus) -> pb::TradeState {
    match s {
        TransactionStatus::Pending => pb::TradeState::Pending,
        TransactionStatus::Succeeded => pb::TradeState::Succeeded,
        TransactionStatus::Failed => pb::TradeState::Failed,
        TransactionStatus::NotFound => pb::TradeState::NotFound,
        TransactionStatus::Unknown => pb::TradeState::Unknown,
    }
}

/// The refund's state after the synchronous answer to its `backTransReq.do`; `None` is a final
/// refusal (amount above the refundable, unpaid or unknown original, …: nothing happened).
///
/// - `00`: accepted, **not** done: PROCESSING until the notification or a query says more.
/// - `03`/`04`/`05`: UNKNOWN, query.
/// - `12` (duplicate): this `orderId` + `txnTime` was submitted before, so a refund under it
///   exists and this answer says nothing of how it stands: UNKNOWN, query. Never a refusal: reading
///   it as FAILED would release an amount that is still being refunded.
pub(crate) fn refund_submit_state(resp_code: &str) -> Option<pb::RefundState> {
    match (resp_code, classify_submit(resp_code)) {
        ("12", _) => Some(pb::RefundState::Unknown),
        (_, SubmitOutcome::Accepted) => Some(pb::RefundState::Processing),
        (_, SubmitOutcome::Unknown) => Some(pb::RefundState::Unknown),
        (_, SubmitOutcome::Rejected) => None,
    }
}

fn refund_state(s: TransactionStatus) -> pb::RefundState {
    match s {
        TransactionStatus::Pending => pb::RefundState::Processing,
        TransactionStatus::Succeeded => pb::RefundState::Succeeded,
        TransactionStatus::Failed => pb::RefundState::Failed,
        TransactionStatus::NotFound => pb::RefundState::NotFound,
        TransactionStatus::Unknown => pb::RefundState::Unknown,
    }
}

/// The amount of a successful transaction; a success without one is not believed.
fn succeeded_amount(r: &TransactionResult) -> Result<pb::Money, String> {
    let fen = r
        .txn_amt_fen
        .ok_or("a successful transaction without txnAmt")?;
    Ok(pb::Money {
        amount_minor: fen,
        currency: currency_of(r.currency_code.as_deref())?,
    })
}

fn payment_result(
    out_trade_no: &str,
    r: &TransactionResult,
    status: TransactionStatus,
) -> Result<pb::PaymentResult, String> {
    let state = payment_state(status);
    let paid = match state {
        pb::TradeState::Succeeded => Some(succeeded_amount(r)?),
        _ => None,
    };
    Ok(pb::PaymentResult {
        out_trade_no: out_trade_no.to_owned(),
        state: state as i32,
        channel_trade_no: r.query_id.clone().unwrap_or_default(),
        paid,
        paid_at: None,
        channel_status: status_text(r),
    })
}

fn refund_result(
    out_refund_no: &str,
    r: &TransactionResult,
    status: TransactionStatus,
) -> Result<pb::RefundResult, String> {
    let state = refund_state(status);
    let refunded = match state {
        pb::RefundState::Succeeded => Some(succeeded_amount(r)?),
        _ => None,
    };
    Ok(pb::RefundResult {
        out_refund_no: out_refund_no.to_owned(),
        state: state as i32,
        channel_refund_no: r.query_id.clone().unwrap_or_default(),
        refunded,
        succeeded_at: None,
        channel_status: status_text(r),
    })
}

/// The UnionPay adapter. Stateless: every id comes in the request.
pub struct UnionpayAdapter {
    client: UnionpayClient,
    verifier: Arc<PlatformVerifier>,
    mer_id: String,
    gateway_base: String,
    file_trans_url: String,
    back_url: String,
    refund_back_url: String,
    front_url: Option<String>,
    channel_type: ChannelType,
    front_register: bool,
    now: fn() -> DateTime<Utc>,
}

impl UnionpayAdapter {
    /// Builds the adapter from validated settings and parsed keys; `now` is the clock used for
    /// `txnTime` of file requests and for certificate validity.
    pub fn new(
        settings: &UnionpaySettings,
        keys: UnionpayKeys,
        http: reqwest::Client,
        now: fn() -> DateTime<Utc>,
    ) -> Self {
        let verifier = Arc::new(keys.verifier);
        Self {
            client: UnionpayClient::new(
                http,
                &settings.mer_id,
                Arc::new(keys.signer),
                verifier.clone(),
                now,
            ),
            verifier,
            mer_id: settings.mer_id.clone(),
            gateway_base: settings.gateway_base.clone(),
            file_trans_url: settings.file_trans_url.clone(),
            back_url: settings.back_url.clone(),
            refund_back_url: settings.refund_back_url.clone(),
            front_url: settings.front_url.clone(),
            channel_type: if settings.channel_type == "08" {
                ChannelType::Mobile
            } else {
                ChannelType::Pc
            },
            front_register: settings.front_register,
            now,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.gateway_base)
    }

    /// One query (txnType 00) of the transaction `order_id` sent at `txn_time` (for a payment,
    /// what Prepay returned as `channel_prepay_id`).
    async fn query(
        &self,
        order_id: &str,
        txn_time: &str,
        field: &str,
    ) -> Result<TransactionResult, ChannelError> {
        if txn_time.len() != 14 || !txn_time.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ChannelError::InvalidArgument(format!(
                "{field}: the trade's txnTime (YYYYMMDDhhmmss) is required, got {txn_time:?}"
            )));
        }
        let txn_time = txn_time.to_owned();
        let mut fields = QueryRequest {
            mer_id: self.mer_id.clone(),
            order_id: order_id.to_owned(),
            txn_time,
            channel_type: self.channel_type,
        }
        .to_fields()
        .map_err(wire_error)?;
        self.client.sign(&mut fields)?;
        let answer = self
            .client
            .call(&self.url(QUERY_TRANS_PATH), &fields)
            .await?;
        let result = TransactionResult::from_fields(&answer)
            .map_err(|e| ChannelError::BadResponse(format!("query answer: {e}")))?;
        if result.order_id.as_deref().is_some_and(|o| o != order_id) {
            return Err(ChannelError::BadResponse(format!(
                "query answer names order {:?}",
                result.order_id
            )));
        }
        Ok(result)
    }

    async fn query_payment_state(
        &self,
        out_trade_no: &str,
        txn_time: &str,
    ) -> Result<pb::PaymentResult, ChannelError> {
        let r = self.query(out_trade_no, txn_time, "out_trade_no").await?;
        if r.resp_code == "00" && r.txn_type.as_deref().is_some_and(|t| t != "01") {
            return Err(ChannelError::BadResponse(format!(
                "order {out_trade_no} is txnType {:?}, not a consume",
                r.txn_type
            )));
        }
        let status = query_status(&r.resp_code, r.orig_resp_code.as_deref());
        payment_result(out_trade_no, &r, status).map_err(ChannelError::BadResponse)
    }

    /// Whether UnionPay knows the transaction `order_id` sent at `txn_time` (query `respCode=00`);
    /// `34` means it does not.
    ///
    /// # Errors
    /// `Unavailable` when the query does not say either way.
    async fn trade_exists(&self, order_id: &str, txn_time: &str) -> Result<bool, ChannelError> {
        let r = self.query(order_id, txn_time, "out_trade_no").await?;
        match r.resp_code.as_str() {
            "00" => Ok(true),
            "34" => Ok(false),
            other => Err(ChannelError::Unavailable(format!(
                "query before the front submission answered respCode={other}: {}",
                r.resp_msg
            ))),
        }
    }

    fn verified_fields(&self, cb: &Callback) -> Result<BTreeMap<String, String>, Rejection> {
        let malformed = |e: String| Rejection::new(RejectReason::Malformed, e);
        let body = std::str::from_utf8(&cb.body).map_err(|e| malformed(e.to_string()))?;
        let fields = wire::parse_notify_form(body).map_err(|e| malformed(e.to_string()))?;
        self.verifier.verify(&fields, (self.now)()).map_err(|e| {
            let reason = match &e {
                VerifyError::MissingSignature | VerifyError::BadSignature => {
                    RejectReason::BadSignature
                }
                VerifyError::Version(_)
                | VerifyError::SignMethod(_)
                | VerifyError::Certificate(_) => RejectReason::Malformed,
                VerifyError::MissingCertificate
                | VerifyError::CertIdMismatch { .. }
                | VerifyError::UnknownCertId(_)
                | VerifyError::UntrustedCertificate(_)
                | VerifyError::WrongSubject(_)
                | VerifyError::OutsideValidity { .. } => RejectReason::UnknownKey,
            };
            Rejection::new(reason, e.to_string())
        })?;
        match fields.get("merId") {
            Some(mer_id) if mer_id == &self.mer_id => Ok(fields),
            other => Err(Rejection::new(
                RejectReason::WrongMerchant,
                format!("notification for merchant {other:?}"),
            )),
        }
    }
}

#[tonic::async_trait]
impl Adapter for UnionpayAdapter {
    fn channel(&self) -> pb::Channel {
        pb::Channel::Unionpay
    }

    /// FRONT: the signed consume form for the payer's browser (`pay_params` = every signed field
    /// plus `action`, the URL to POST it to). UnionPay creates the trade when the browser submits
    /// it; with `UNIONPAY_FRONT_REGISTER` the adapter submits it itself (sandbox runs only).
    async fn prepay(&self, req: pb::PrepayRequest) -> Result<pb::PrepayResponse, ChannelError> {
        let method = pb::PayMethod::try_from(req.method).unwrap_or(pb::PayMethod::Unspecified);
        if method != pb::PayMethod::UnionpayFront {
            return Err(ChannelError::InvalidArgument(format!(
                "method {method:?} is not a UnionPay method"
            )));
        }
        let fen = cny_fen(req.amount.as_ref(), "amount", PLATFORM)?;
        let txn_time = txn_time_at(req.created_at.as_ref(), "created_at")?;
        // Handed back to the core, which passes it to every later query of this trade.
        let channel_prepay_id = txn_time.clone();
        let pay_timeout = req
            .expires_at
            .as_ref()
            .and_then(|t| DateTime::from_timestamp(t.seconds, 0))
            .map(wire::format_txn_time);
        let mut fields = ConsumeRequest {
            mer_id: self.mer_id.clone(),
            order_id: req.out_trade_no.clone(),
            txn_time,
            txn_amt_fen: fen,
            channel_type: self.channel_type,
            front_url: self.front_url.clone(),
            back_url: self.back_url.clone(),
            pay_timeout,
            req_reserved: None,
        }
        .to_fields()
        .map_err(wire_error)?;
        self.client.sign(&mut fields)?;
        let action = self.url(FRONT_TRANS_PATH);
        // A retried Prepay must not submit the same orderId/txnTime twice (the gateway refuses a
        // second submission as a duplicate): ask first whether the trade already exists.
        if self.front_register
            && !self
                .trade_exists(&req.out_trade_no, &channel_prepay_id)
                .await?
        {
            // Success is the cashier page (HTML, unsigned); a refusal is a signed k=v answer.
            let body = self.client.post_form(&action, &fields).await?;
            if !body.trim_start().starts_with('<') {
                let answer = self.client.verify_answer(&action, &body)?;
                let code = answer.get("respCode").cloned().unwrap_or_default();
                let message = answer.get("respMsg").cloned().unwrap_or_default();
                match classify_submit(&code) {
                    SubmitOutcome::Accepted => {}
                    SubmitOutcome::Unknown => {
                        return Err(ChannelError::Unavailable(format!(
                            "frontTransReq answered respCode={code}: {message}"
                        )));
                    }
                    SubmitOutcome::Rejected => {
                        return Err(ChannelError::Refused { code, message });
                    }
                }
            }
        }
        let mut pay_params = fields;
        pay_params.insert(ACTION_KEY.to_owned(), action);
        Ok(pb::PrepayResponse {
            pay_params,
            channel_prepay_id,
        })
    }

    async fn query_payment(
        &self,
        req: pb::QueryPaymentRequest,
    ) -> Result<pb::PaymentResult, ChannelError> {
        self.query_payment_state(
            &req.out_trade_no,
            &txn_time_of(&req.channel_prepay_id, req.created_at.as_ref()),
        )
        .await
    }

    /// UnionPay has no close for a consume: an unpaid front trade lapses at its `payTimeout`, and
    /// a paid one can only be refunded. So this reports the trade's state as a query does: SUCCEEDED
    /// when it was paid (the contract's answer), otherwise PENDING/NOT_FOUND with a status text
    /// saying that nothing was closed.
    async fn close_payment(
        &self,
        req: pb::ClosePaymentRequest,
    ) -> Result<pb::PaymentResult, ChannelError> {
        let mut result = self
            .query_payment_state(
                &req.out_trade_no,
                &txn_time_of(&req.channel_prepay_id, req.created_at.as_ref()),
            )
            .await?;
        if result.state != pb::TradeState::Succeeded as i32 {
            result.channel_status = format!(
                "{}; UnionPay has no close: the trade lapses at payTimeout",
                result.channel_status
            );
        }
        Ok(result)
    }

    async fn refund(&self, req: pb::RefundRequest) -> Result<pb::RefundResult, ChannelError> {
        let fen = cny_fen(req.refund.as_ref(), "refund", PLATFORM)?;
        if req.channel_trade_no.is_empty() {
            return Err(ChannelError::InvalidArgument(
                "channel_trade_no (the payment's queryId) is required: UnionPay refunds name it as origQryId"
                    .to_owned(),
            ));
        }
        let mut fields = RefundRequest {
            mer_id: self.mer_id.clone(),
            order_id: req.out_refund_no.clone(),
            txn_time: txn_time_at(req.created_at.as_ref(), "created_at")?,
            txn_amt_fen: fen,
            orig_qry_id: req.channel_trade_no.clone(),
            channel_type: self.channel_type,
            back_url: self.refund_back_url.clone(),
            // Echoed in the refund's notification and the reconciliation file, which otherwise
            // name only the refund's own orderId.
            req_reserved: (!req.out_trade_no.is_empty()).then(|| req.out_trade_no.clone()),
        }
        .to_fields()
        .map_err(wire_error)?;
        self.client.sign(&mut fields)?;
        let answer = self
            .client
            .call(&self.url(BACK_TRANS_PATH), &fields)
            .await?;
        let r = TransactionResult::from_fields(&answer)
            .map_err(|e| ChannelError::BadResponse(format!("refund answer: {e}")))?;
        let Some(state) = refund_submit_state(&r.resp_code) else {
            return Err(ChannelError::Refused {
                code: r.resp_code,
                message: r.resp_msg,
            });
        };
        Ok(pb::RefundResult {
            out_refund_no: req.out_refund_no,
            state: state as i32,
            channel_refund_no: r.query_id.clone().unwrap_or_default(),
            refunded: None,
            succeeded_at: None,
            channel_status: status_text(&r),
        })
    }

    async fn query_refund(
        &self,
        req: pb::QueryRefundRequest,
    ) -> Result<pb::RefundResult, ChannelError> {
        let txn_time = txn_time_at(req.created_at.as_ref(), "created_at")?;
        let r = self
            .query(&req.out_refund_no, &txn_time, "out_refund_no")
            .await?;
        if r.resp_code == "00" && r.txn_type.as_deref().is_some_and(|t| t != "04") {
            return Err(ChannelError::BadResponse(format!(
                "order {} is txnType {:?}, not a refund",
                req.out_refund_no, r.txn_type
            )));
        }
        let status = query_status(&r.resp_code, r.orig_resp_code.as_deref());
        refund_result(&req.out_refund_no, &r, status).map_err(ChannelError::BadResponse)
    }

    /// The file transfer (`txnType=76`) for the settlement day. `respCode=98` (no file for that
    /// day) is a refusal; anything but `00` says nothing. The answer is spooled to a temp file and
    /// verified with `fileContent` streamed through the digest; the file is then decoded and
    /// inflated into a second temp file and its ZM entry parsed as a stream into `sink`.
    async fn fetch_statement(
        &self,
        req: pb::FetchStatementRequest,
        sink: channel_kit::statement::LineSink,
    ) -> Result<pb::StatementTotals, ChannelError> {
        let day = chrono::NaiveDate::parse_from_str(&req.day, "%Y-%m-%d").map_err(|_| {
            ChannelError::InvalidArgument(format!("day {:?} is not YYYY-MM-DD", req.day))
        })?;
        let mut fields = crate::statement::request_fields(&self.mer_id, day, (self.now)());
        self.client.sign(&mut fields)?;
        let file = self
            .client
            .post_form_to_file(&self.file_trans_url, &fields)
            .await?;
        let client = self.client.clone();
        let url = self.file_trans_url.clone();
        tokio::task::spawn_blocking(move || {
            let mut answer = crate::statement::SpooledAnswer::scan(file)
                .map_err(|e| ChannelError::BadResponse(format!("answer from {url}: {e}")))?;
            let digest = answer.verification_digest_hex()?;
            client.verify_digest(&url, &answer.fields, &digest)?;
            let resp_code = answer.fields.get("respCode").cloned().unwrap_or_default();
            let resp_msg = answer.fields.get("respMsg").cloned().unwrap_or_default();
            match resp_code.as_str() {
                "00" => {}
                "98" => {
                    return Err(ChannelError::Refused {
                        code: resp_code,
                        message: format!("no reconciliation file for {day}: {resp_msg}"),
                    });
                }
                _ => {
                    return Err(ChannelError::Unavailable(format!(
                        "file transfer answered respCode={resp_code}: {resp_msg}"
                    )));
                }
            }
            if !answer.has_content() {
                return Err(ChannelError::BadResponse(
                    "file transfer answer without fileContent".to_owned(),
                ));
            }
            let in_file = |e: crate::statement::FileError| match ChannelError::from(e) {
                ChannelError::BadStatement(m) => {
                    ChannelError::BadStatement(format!("reconciliation file of {day}: {m}"))
                }
                other => other,
            };
            let zip = answer.inflate_to_temp().map_err(in_file)?;
            crate::statement::parse_reconciliation_zip(zip, day, |line| sink.blocking_push(line))
                .map_err(in_file)
        })
        .await
        .map_err(|e| ChannelError::Internal(format!("reconciliation file parser: {e}")))?
    }

    /// Back (and front) notifications: form bodies signed like answers. `respCode` 00/A6 is a
    /// success; anything else is UNKNOWN so that the core asks with a query.
    async fn verify_callback(&self, cb: &Callback) -> Result<Notification, Rejection> {
        let fields = self.verified_fields(cb)?;
        let malformed = |e: String| Rejection::new(RejectReason::Malformed, e);
        let r = TransactionResult::from_fields(&fields).map_err(|e| malformed(e.to_string()))?;
        let query_id = r
            .query_id
            .clone()
            .ok_or_else(|| malformed("no queryId".into()))?;
        let trace_time = fields
            .get("traceTime")
            .filter(|t| !t.is_empty())
            .ok_or_else(|| malformed("no traceTime".into()))?;
        let order_id = r
            .order_id
            .clone()
            .ok_or_else(|| malformed("no orderId".into()))?;
        // queryId is unique per transaction and traceTime per delivery of its result: together
        // they are stable across UnionPay's retries and distinct between payment and refund.
        let event_id = format!("{query_id}:{trace_time}");
        let status = match notify_status(&r.resp_code) {
            TransactionStatus::Succeeded => TransactionStatus::Succeeded,
            TransactionStatus::Pending
            | TransactionStatus::Failed
            | TransactionStatus::NotFound
            | TransactionStatus::Unknown => TransactionStatus::Unknown,
        };
        match r.txn_type.as_deref() {
            Some("01") => Ok(Notification::Payment {
                event_id,
                result: payment_result(&order_id, &r, status).map_err(malformed)?,
            }),
            Some("04") => Ok(Notification::Refund {
                event_id,
                out_trade_no: r.req_reserved.clone().unwrap_or_default(),
                result: refund_result(&order_id, &r, status).map_err(malformed)?,
            }),
            other => Err(malformed(format!("unhandled txnType {other:?}"))),
        }
    }

    fn ack(&self) -> Reply {
        Reply {
            status: 200,
            content_type: "text/plain",
            body: "ok".to_owned(),
        }
    }

    /// UnionPay reads only the HTTP status: anything but 200 makes it deliver again.
    fn nack(&self, _why: &str) -> Reply {
        Reply {
            status: 500,
            content_type: "text/plain",
            body: "fail".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests;
