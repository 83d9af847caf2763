//! [`channel_kit::Adapter`] for Alipay: precreate (QR), page pay and app pay, query, close,
//! refund, refund query, the trade bill, and verification of `trade_status_sync` notifications
//! (payments, and the refund notifications that carry `out_biz_no`).
use std::sync::Arc;

use channel_kit::fields::required;
use channel_kit::time::timestamp;
use channel_kit::{
    Adapter, Callback, ChannelError, Notification, RejectReason, Rejection, Reply, pb,
};
use chrono::{DateTime, NaiveDateTime, TimeZone as _, Utc};
use serde::de::DeserializeOwned;

use crate::client::{AlipayClient, Urls};
use crate::config::{AlipayKeys, AlipaySettings};
use crate::signature::{AlipayVerifier, NotifyError};
use crate::status::{
    CallOutcome, PaymentStatus, RefundStatus, TradeStatus, classify, refund_query_status,
};
use crate::wire::{
    self, BEIJING, BillDownloadUrlQueryBiz, BillDownloadUrlResponse, MAX_FEN, PagePayBiz,
    PrecreateBiz, PrecreateResponse, RefundBiz, RefundQueryBiz, RefundQueryResponse,
    RefundResponse, ResponseStatus, TradeCloseResponse, TradeNotification, TradeQueryResponse,
    TradeRefBiz, Yuan, encode_form, method, product_code,
};

/// The only currency these merchant APIs settle in.
const CNY: &str = "CNY";

/// Alipay's `yyyy-MM-dd HH:mm:ss` Beijing time (`gmt_refund` adds milliseconds).
fn parse_beijing(text: &str) -> Option<prost_types::Timestamp> {
    let naive = NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S")
        .or_else(|_| NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f"))
        .ok()?;
    BEIJING
        .from_local_datetime(&naive)
        .single()
        .map(|t| timestamp(t.with_timezone(&Utc)))
}

/// `trade_status` through the crate's exhaustive mapping.
fn trade_state(text: &str) -> pb::TradeState {
    match TradeStatus::parse(text).payment_status() {
        PaymentStatus::Pending => pb::TradeState::Pending,
        PaymentStatus::Succeeded => pb::TradeState::Succeeded,
        PaymentStatus::Failed => pb::TradeState::Failed,
        PaymentStatus::Closed => pb::TradeState::Closed,
        PaymentStatus::Unknown => pb::TradeState::Unknown,
    }
}

/// A CNY amount as Alipay's yuan, or `InvalidArgument` naming the field.
fn cny_yuan(amount: Option<&pb::Money>, field: &str) -> Result<Yuan, ChannelError> {
    let amount =
        amount.ok_or_else(|| ChannelError::InvalidArgument(format!("{field} is required")))?;
    if amount.currency != CNY {
        return Err(ChannelError::InvalidArgument(format!(
            "{field}: Alipay takes only CNY here, not {:?}",
            amount.currency
        )));
    }
    if amount.amount_minor <= 0 || amount.amount_minor > MAX_FEN {
        return Err(ChannelError::InvalidArgument(format!(
            "{field} must be between 0.01 and 100000000.00 yuan"
        )));
    }
    Yuan::from_fen(amount.amount_minor).map_err(|e| ChannelError::InvalidArgument(e.to_string()))
}

fn parse_node<T: DeserializeOwned>(node: &str, what: &str) -> Result<T, ChannelError> {
    serde_json::from_str(node).map_err(|e| {
        ChannelError::BadResponse(format!("{what} answer is not the expected JSON: {e}"))
    })
}

/// The error for an answer that is not a success, by what its code says about the call.
fn call_error(status: &ResponseStatus, outcome: CallOutcome) -> ChannelError {
    let code = status
        .sub_code
        .clone()
        .unwrap_or_else(|| status.code.clone());
    let message = status.sub_msg.clone().unwrap_or_else(|| status.msg.clone());
    match outcome {
        CallOutcome::Rejected | CallOutcome::TradeNotExist => {
            ChannelError::Refused { code, message }
        }
        CallOutcome::Success
        | CallOutcome::InProgress
        | CallOutcome::RateLimited
        | CallOutcome::Unknown => ChannelError::Unavailable(format!("{code}: {message}")),
    }
}

fn outcome(status: &ResponseStatus) -> CallOutcome {
    classify(&status.code, status.sub_code.as_deref())
}

/// `out_trade_no` as Alipay documents it for the trade APIs: at most 64 characters, letters,
/// digits and underscores.
///
/// # Errors
/// `InvalidArgument` naming the rule.
pub fn out_trade_no(value: &str) -> Result<&str, ChannelError> {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    if (1..=64).contains(&value.len()) && value.bytes().all(allowed) {
        Ok(value)
    } else {
        Err(ChannelError::InvalidArgument(format!(
            "out_trade_no {value:?}: Alipay takes 1 to 64 characters of [A-Za-z0-9_]"
        )))
    }
}

/// The Alipay adapter. Stateless: every id comes in the request.
pub struct AlipayAdapter {
    client: AlipayClient,
    verifier: Arc<AlipayVerifier>,
    app_id: String,
    notify_url: String,
    return_url: Option<String>,
}

impl AlipayAdapter {
    /// Builds the adapter from validated settings and parsed keys; `now` stamps requests.
    pub fn new(
        settings: &AlipaySettings,
        keys: AlipayKeys,
        http: reqwest::Client,
        now: fn() -> DateTime<Utc>,
    ) -> Self {
        let verifier = Arc::new(keys.verifier);
        Self {
            client: AlipayClient::new(
                http,
                &settings.gateway,
                &settings.app_id,
                Arc::new(keys.signer),
                verifier.clone(),
                now,
            ),
            verifier,
            app_id: settings.app_id.clone(),
            notify_url: settings.notify_url.clone(),
            return_url: settings.return_url.clone(),
        }
    }

    fn urls(&self) -> Urls<'_> {
        Urls {
            notify_url: Some(&self.notify_url),
            return_url: None,
        }
    }

    async fn query(&self, out_trade_no: &str) -> Result<pb::PaymentResult, ChannelError> {
        let node = self
            .client
            .call(
                method::QUERY,
                &TradeRefBiz::by_out_trade_no(out_trade_no),
                Urls::default(),
            )
            .await?;
        let answer: TradeQueryResponse = parse_node(&node, "trade query")?;
        match outcome(&answer.status) {
            CallOutcome::Success => {}
            CallOutcome::TradeNotExist => {
                // For a QR code this only means nobody has scanned it yet.
                return Ok(pb::PaymentResult {
                    out_trade_no: out_trade_no.to_owned(),
                    state: pb::TradeState::NotFound as i32,
                    channel_status: "ACQ.TRADE_NOT_EXIST".to_owned(),
                    ..Default::default()
                });
            }
            other => return Err(call_error(&answer.status, other)),
        }
        if answer
            .out_trade_no
            .as_deref()
            .is_some_and(|o| o != out_trade_no)
        {
            return Err(ChannelError::BadResponse(format!(
                "query answer names trade {:?}",
                answer.out_trade_no
            )));
        }
        let status_text = answer.trade_status.clone().unwrap_or_default();
        let state = trade_state(&status_text);
        let paid = if state == pb::TradeState::Succeeded {
            let total = answer.total_amount.ok_or_else(|| {
                ChannelError::BadResponse("a paid trade without total_amount".to_owned())
            })?;
            Some(pb::Money {
                amount_minor: total.fen(),
                currency: CNY.to_owned(),
            })
        } else {
            None
        };
        Ok(pb::PaymentResult {
            out_trade_no: out_trade_no.to_owned(),
            state: state as i32,
            channel_trade_no: answer.trade_no.unwrap_or_default(),
            paid,
            paid_at: answer.send_pay_date.as_deref().and_then(parse_beijing),
            channel_status: status_text,
        })
    }

    async fn refund_query(
        &self,
        out_trade_no: &str,
        out_refund_no: &str,
    ) -> Result<pb::RefundResult, ChannelError> {
        let biz = RefundQueryBiz {
            out_trade_no: Some(out_trade_no.to_owned()),
            trade_no: None,
            out_request_no: out_refund_no.to_owned(),
        };
        let node = self
            .client
            .call(method::REFUND_QUERY, &biz, Urls::default())
            .await?;
        let answer: RefundQueryResponse = parse_node(&node, "refund query")?;
        refund_query_result(answer, out_refund_no)
    }
}

/// A refund-query answer as the contract's result.
///
/// - `REFUND_SUCCESS` → SUCCEEDED with `refund_amount` (this refund's own amount).
/// - no `refund_status` → **NOT_FOUND**: the doc says an absent `refund_status` means "not
///   received, or failed", never "done", and Alipay's advice for it is to send the refund again
///   with the *same* `out_request_no` (the idempotent retry): that answer then tells a refund in
///   flight (`fund_change: N`, PROCESSING), a refusal (FAILED_PRECONDITION) or a refund that now
///   happens. It must not be read as FAILED: a refund in flight shows no `refund_status` either,
///   so refunding under a *new* number could pay twice.
/// - `ACQ.TRADE_NOT_EXIST` → NOT_FOUND; any other `refund_status` → UNKNOWN.
///
/// # Errors
/// A refusal or system error of the query call, or a success without `refund_amount`.
pub(crate) fn refund_query_result(
    answer: RefundQueryResponse,
    out_refund_no: &str,
) -> Result<pb::RefundResult, ChannelError> {
    match outcome(&answer.status) {
        CallOutcome::Success => {}
        CallOutcome::TradeNotExist => {
            return Ok(pb::RefundResult {
                out_refund_no: out_refund_no.to_owned(),
                state: pb::RefundState::NotFound as i32,
                channel_status: "ACQ.TRADE_NOT_EXIST".to_owned(),
                ..Default::default()
            });
        }
        other => return Err(call_error(&answer.status, other)),
    }
    let status = refund_query_status(answer.refund_status.as_deref());
    let state = match status {
        RefundStatus::Succeeded => pb::RefundState::Succeeded,
        RefundStatus::Absent => pb::RefundState::NotFound,
        RefundStatus::Unknown => pb::RefundState::Unknown,
    };
    let refunded = match (status, answer.refund_amount) {
        (RefundStatus::Succeeded, Some(amount)) => Some(pb::Money {
            amount_minor: amount.fen(),
            currency: CNY.to_owned(),
        }),
        (RefundStatus::Succeeded, None) => {
            return Err(ChannelError::BadResponse(
                "a successful refund without refund_amount".to_owned(),
            ));
        }
        _ => None,
    };
    Ok(pb::RefundResult {
        out_refund_no: out_refund_no.to_owned(),
        state: state as i32,
        channel_refund_no: answer.trade_no.unwrap_or_default(),
        refunded,
        succeeded_at: answer.gmt_refund_pay.as_deref().and_then(parse_beijing),
        channel_status: answer
            .refund_status
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "refund_status absent".to_owned()),
    })
}

/// What a `10000` answer of `alipay.trade.refund` says about the refund asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RefundAnswer {
    /// `fund_change: Y` and the cumulative `refund_fee` covers this refund: money moved now,
    /// exactly the amount asked.
    Succeeded,
    /// `fund_change: N` (an idempotent repeat, or a refund Alipay has not carried out yet), or a
    /// `Y` whose `refund_fee` does not cover this refund: the refund query decides.
    AskQuery,
}

pub(crate) fn read_refund_answer(answer: &RefundResponse, refund_fen: i64) -> RefundAnswer {
    let covered = answer
        .refund_fee
        .as_ref()
        .is_some_and(|fee| fee.fen() >= refund_fen);
    if answer.fund_change.as_deref() == Some("Y") && covered {
        RefundAnswer::Succeeded
    } else {
        RefundAnswer::AskQuery
    }
}

/// The refund call's result once the query was asked after an accepted call that moved no money:
/// an absent `refund_status` is then a refund Alipay accepted and has not carried out, PROCESSING
/// (it was received, and not refused).
pub(crate) fn after_accepted_refund(mut queried: pb::RefundResult) -> pb::RefundResult {
    if queried.state == pb::RefundState::NotFound as i32 {
        queried.state = pb::RefundState::Processing as i32;
        queried.channel_status = "fund_change=N".to_owned();
    }
    queried
}

#[tonic::async_trait]
impl Adapter for AlipayAdapter {
    fn channel(&self) -> pb::Channel {
        pb::Channel::Alipay
    }

    async fn prepay(&self, req: pb::PrepayRequest) -> Result<pb::PrepayResponse, ChannelError> {
        let method = pb::PayMethod::try_from(req.method).unwrap_or(pb::PayMethod::Unspecified);
        let total_amount = cny_yuan(req.amount.as_ref(), "amount")?;
        let out_trade_no = out_trade_no(&req.out_trade_no)?.to_owned();
        let subject = required(&req.subject, "subject")?.to_owned();
        let time_expire = req
            .expires_at
            .as_ref()
            .and_then(|t| DateTime::from_timestamp(t.seconds, 0))
            .map(wire::format_timestamp);
        let pay_biz = |product: &str| PagePayBiz {
            out_trade_no: out_trade_no.clone(),
            total_amount,
            subject: subject.clone(),
            product_code: product.to_owned(),
            body: None,
            time_expire: time_expire.clone(),
            timeout_express: None,
            passback_params: None,
        };
        match method {
            pb::PayMethod::AlipayQr => {
                let biz = PrecreateBiz {
                    out_trade_no: out_trade_no.clone(),
                    total_amount,
                    subject: subject.clone(),
                    body: None,
                    time_expire: time_expire.clone(),
                    timeout_express: None,
                    store_id: None,
                };
                let node = self
                    .client
                    .call(method::PRECREATE, &biz, self.urls())
                    .await?;
                let answer: PrecreateResponse = parse_node(&node, "precreate")?;
                match outcome(&answer.status) {
                    CallOutcome::Success => {}
                    other => return Err(call_error(&answer.status, other)),
                }
                let qr_code = answer.qr_code.filter(|q| !q.is_empty()).ok_or_else(|| {
                    ChannelError::BadResponse("precreate answer without qr_code".to_owned())
                })?;
                Ok(pb::PrepayResponse {
                    pay_params: [("qr_code".to_owned(), qr_code)].into(),
                    channel_prepay_id: String::new(),
                })
            }
            // Page and app pay are not server calls: the signed parameters go to the browser or
            // the app SDK, and the trade exists at Alipay once the payer opens them.
            pb::PayMethod::AlipayPage => {
                let urls = Urls {
                    notify_url: Some(&self.notify_url),
                    return_url: self.return_url.as_deref(),
                };
                let params = self.client.signed_params(
                    method::PAGE_PAY,
                    &pay_biz(product_code::PAGE),
                    urls,
                )?;
                let pay_url = format!("{}?{}", self.client.gateway(), encode_form(&params));
                Ok(pb::PrepayResponse {
                    pay_params: [("pay_url".to_owned(), pay_url)].into(),
                    channel_prepay_id: String::new(),
                })
            }
            pb::PayMethod::AlipayApp => {
                let params = self.client.signed_params(
                    method::APP_PAY,
                    &pay_biz(product_code::APP),
                    self.urls(),
                )?;
                Ok(pb::PrepayResponse {
                    pay_params: [("order_string".to_owned(), encode_form(&params))].into(),
                    channel_prepay_id: String::new(),
                })
            }
            other => Err(ChannelError::InvalidArgument(format!(
                "method {other:?} is not an Alipay method"
            ))),
        }
    }

    async fn query_payment(
        &self,
        req: pb::QueryPaymentRequest,
    ) -> Result<pb::PaymentResult, ChannelError> {
        self.query(out_trade_no(&req.out_trade_no)?).await
    }

    /// Closes at Alipay. A refusal (e.g. the trade was paid meanwhile) is checked against a query,
    /// so a paid trade comes back as SUCCEEDED instead of an error.
    async fn close_payment(
        &self,
        req: pb::ClosePaymentRequest,
    ) -> Result<pb::PaymentResult, ChannelError> {
        let out_trade_no = out_trade_no(&req.out_trade_no)?;
        let node = self
            .client
            .call(
                method::CLOSE,
                &TradeRefBiz::by_out_trade_no(out_trade_no),
                Urls::default(),
            )
            .await?;
        let answer: TradeCloseResponse = parse_node(&node, "close")?;
        match outcome(&answer.status) {
            CallOutcome::Success => Ok(pb::PaymentResult {
                out_trade_no: out_trade_no.to_owned(),
                state: pb::TradeState::Closed as i32,
                channel_trade_no: answer.trade_no.unwrap_or_default(),
                channel_status: "TRADE_CLOSED".to_owned(),
                ..Default::default()
            }),
            // A QR code nobody scanned has no trade to close; the query says so precisely.
            CallOutcome::TradeNotExist | CallOutcome::Rejected => {
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
                    Err(call_error(&answer.status, outcome(&answer.status)))
                }
            }
            other => Err(call_error(&answer.status, other)),
        }
    }

    async fn refund(&self, req: pb::RefundRequest) -> Result<pb::RefundResult, ChannelError> {
        let refund_amount = cny_yuan(req.refund.as_ref(), "refund")?;
        let out_trade_no = required(&req.out_trade_no, "out_trade_no")?;
        let out_refund_no = required(&req.out_refund_no, "out_refund_no")?;
        let biz = RefundBiz {
            out_trade_no: Some(out_trade_no.to_owned()),
            trade_no: None,
            refund_amount,
            out_request_no: out_refund_no.to_owned(),
            refund_reason: (!req.reason.is_empty()).then(|| req.reason.clone()),
        };
        let node = self
            .client
            .call(method::REFUND, &biz, Urls::default())
            .await?;
        let answer: RefundResponse = parse_node(&node, "refund")?;
        match outcome(&answer.status) {
            // `fund_change=Y`: money moved on this call for this out_request_no, so the refund is
            // exactly the amount asked. Otherwise (an idempotent retry, or Alipay still deciding)
            // the refund query says what happened. A business refusal (balance not enough, amount
            // above the refundable, trade not paid) is a final `Refused`.
            CallOutcome::Success
                if read_refund_answer(&answer, refund_amount.fen()) == RefundAnswer::Succeeded =>
            {
                Ok(pb::RefundResult {
                    out_refund_no: out_refund_no.to_owned(),
                    state: pb::RefundState::Succeeded as i32,
                    channel_refund_no: answer.trade_no.unwrap_or_default(),
                    refunded: Some(pb::Money {
                        amount_minor: refund_amount.fen(),
                        currency: CNY.to_owned(),
                    }),
                    succeeded_at: None,
                    channel_status: "fund_change=Y".to_owned(),
                })
            }
            CallOutcome::Success => self
                .refund_query(out_trade_no, out_refund_no)
                .await
                .map(after_accepted_refund),
            other => Err(call_error(&answer.status, other)),
        }
    }

    async fn query_refund(
        &self,
        req: pb::QueryRefundRequest,
    ) -> Result<pb::RefundResult, ChannelError> {
        self.refund_query(
            required(&req.out_trade_no, "out_trade_no")?,
            required(&req.out_refund_no, "out_refund_no")?,
        )
        .await
    }

    /// Asks for the day's bill URL, spools the ZIP to a temp file and streams its detail CSV
    /// (GBK, decoded line by line) into `sink`, checking the 合计 footer.
    async fn fetch_statement(
        &self,
        req: pb::FetchStatementRequest,
        sink: channel_kit::statement::LineSink,
    ) -> Result<pb::StatementTotals, ChannelError> {
        let day = chrono::NaiveDate::parse_from_str(&req.day, "%Y-%m-%d").map_err(|_| {
            ChannelError::InvalidArgument(format!("day {:?} is not YYYY-MM-DD", req.day))
        })?;
        let biz = BillDownloadUrlQueryBiz {
            bill_type: "trade".to_owned(),
            bill_date: day.format("%Y-%m-%d").to_string(),
        };
        let node = self
            .client
            .call(method::BILL_DOWNLOAD_URL_QUERY, &biz, Urls::default())
            .await?;
        let answer: BillDownloadUrlResponse = parse_node(&node, "bill download URL")?;
        match outcome(&answer.status) {
            CallOutcome::Success => {}
            other => return Err(call_error(&answer.status, other)),
        }
        let url = answer
            .bill_download_url
            .filter(|u| !u.is_empty())
            .ok_or_else(|| {
                ChannelError::BadResponse("bill answer without bill_download_url".to_owned())
            })?;
        let file = self.client.download(&url).await?;
        tokio::task::spawn_blocking(move || {
            crate::statement::parse_trade_bill(file, |line| sink.blocking_push(line))
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
        let malformed = |e: String| Rejection::new(RejectReason::Malformed, e);
        let body = std::str::from_utf8(&cb.body).map_err(|e| malformed(e.to_string()))?;
        let params = wire::parse_form(body).map_err(|e| malformed(e.to_string()))?;
        self.verifier.verify_notify(&params).map_err(|e| {
            let reason = match e {
                NotifyError::MissingSign | NotifyError::BadSignature => RejectReason::BadSignature,
                NotifyError::SignType(_) => RejectReason::Malformed,
            };
            Rejection::new(reason, e.to_string())
        })?;
        let n = TradeNotification::from_params(&params).map_err(|e| malformed(e.to_string()))?;
        if n.app_id != self.app_id {
            return Err(Rejection::new(
                RejectReason::WrongMerchant,
                format!("notification for app {:?}", n.app_id),
            ));
        }
        // A refund notify is told by its refund fields (`refund_fee`, `gmt_refund`), not by
        // `out_biz_no` alone, which is absent when the refund was made without `out_request_no`.
        // A full refund shows `TRADE_CLOSED`: read as a payment it would look like a closed,
        // unpaid trade, so it must never reach the payment path.
        if n.refund_fee.is_some() || n.gmt_refund.is_some() || n.out_biz_no.is_some() {
            let refund_fee = n
                .refund_fee
                .map(|f| f.to_string())
                .unwrap_or_else(|| "?".to_owned());
            // Without out_request_no Alipay names the refund by the trade's out_trade_no.
            let out_refund_no = n
                .out_biz_no
                .clone()
                .unwrap_or_else(|| n.out_trade_no.clone());
            // `refund_fee` is the trade's *cumulative* refunded amount, not this refund's, so it is
            // reported as status text only; the core takes the amount from its refund (or a query).
            return Ok(Notification::Refund {
                event_id: n.notify_id,
                out_trade_no: n.out_trade_no,
                result: pb::RefundResult {
                    out_refund_no,
                    state: pb::RefundState::Succeeded as i32,
                    channel_refund_no: n.trade_no,
                    refunded: None,
                    succeeded_at: n.gmt_refund.as_deref().and_then(parse_beijing),
                    channel_status: format!("{} refund_fee={refund_fee}", n.trade_status),
                },
            });
        }
        let state = trade_state(&n.trade_status);
        let paid = (state == pb::TradeState::Succeeded).then(|| pb::Money {
            amount_minor: n.total_amount.fen(),
            currency: CNY.to_owned(),
        });
        Ok(Notification::Payment {
            event_id: n.notify_id,
            result: pb::PaymentResult {
                out_trade_no: n.out_trade_no,
                state: state as i32,
                channel_trade_no: n.trade_no,
                paid,
                paid_at: n.gmt_payment.as_deref().and_then(parse_beijing),
                channel_status: n.trade_status,
            },
        })
    }

    fn ack(&self) -> Reply {
        Reply {
            status: 200,
            content_type: "text/plain",
            body: wire::NOTIFY_ACK.to_owned(),
        }
    }

    /// Alipay retries on any body other than `success`; the HTTP status stays 200 as documented.
    fn nack(&self, _why: &str) -> Reply {
        Reply {
            status: 200,
            content_type: "text/plain",
            body: "fail".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests;
