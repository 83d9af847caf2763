//! Rows to API messages and back; the page-token format.
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use payproto::payment::v1 as pb;
use uuid::Uuid;

use crate::channel_client::{channel_to_pb, method_to_pb, timestamp};
use crate::domain::Attempt;
use crate::domain::Order;
use crate::domain::{AttemptStatus, Channel, FieldError, OrderStatus, PayMethod};
use crate::domain::{Refund, RefundStatus};
use payproto::channel::v1 as cpb;

/// # Errors
/// A [`FieldError`] naming `field` when the timestamp is outside what chrono can represent.
pub fn from_timestamp(
    field: &'static str,
    t: &prost_types::Timestamp,
) -> Result<DateTime<Utc>, FieldError> {
    let nanos = u32::try_from(t.nanos)
        .ok()
        .filter(|n| *n < 1_000_000_000)
        .ok_or_else(|| FieldError::new(field, "nanos must be in 0..1e9"))?;
    DateTime::from_timestamp(t.seconds, nanos).ok_or_else(|| FieldError::new(field, "out of range"))
}

pub fn status_to_pb(s: OrderStatus) -> pb::OrderStatus {
    match s {
        OrderStatus::Pending => pb::OrderStatus::Pending,
        OrderStatus::Paying => pb::OrderStatus::Paying,
        OrderStatus::Paid => pb::OrderStatus::Paid,
        OrderStatus::PartiallyRefunded => pb::OrderStatus::PartiallyRefunded,
        OrderStatus::Refunded => pb::OrderStatus::Refunded,
        OrderStatus::Closed => pb::OrderStatus::Closed,
    }
}

pub fn status_from_pb(field: &'static str, v: i32) -> Result<OrderStatus, FieldError> {
    match pb::OrderStatus::try_from(v) {
        Ok(pb::OrderStatus::Pending) => Ok(OrderStatus::Pending),
        Ok(pb::OrderStatus::Paying) => Ok(OrderStatus::Paying),
        Ok(pb::OrderStatus::Paid) => Ok(OrderStatus::Paid),
        Ok(pb::OrderStatus::PartiallyRefunded) => Ok(OrderStatus::PartiallyRefunded),
        Ok(pb::OrderStatus::Refunded) => Ok(OrderStatus::Refunded),
        Ok(pb::OrderStatus::Closed) => Ok(OrderStatus::Closed),
        Ok(pb::OrderStatus::Unspecified) | Err(_) => Err(FieldError::new(
            field,
            format!("{v} is not an order status"),
        )),
    }
}

pub fn order_to_pb(row: &Order) -> pb::Order {
    pb::Order {
        order_id: row.id.hyphenated().to_string(),
        app_id: row.app_id.clone(),
        merchant_order_no: row.merchant_order_no.clone(),
        amount: Some(pb::Money {
            amount_minor: row.amount_minor,
            currency: row.currency.clone(),
        }),
        subject: row.subject.clone(),
        metadata: row.metadata_map(),
        status: status_to_pb(row.status) as i32,
        paid_minor: row.paid_minor,
        refunded_minor: row.refunded_minor,
        version: row.version,
        expires_at: Some(timestamp(row.expires_at)),
        created_at: Some(timestamp(row.created_at)),
        updated_at: Some(timestamp(row.updated_at)),
        closed_at: row.closed_at.map(timestamp),
    }
}

/// Opaque keyset cursor: the (created_at, id) of the last order of a page.
pub fn encode_page_token(row: &Order) -> String {
    encode_cursor(row.created_at, row.id)
}

/// The cursor of a page whose last row was created at `at` with id `id`.
pub fn encode_cursor(at: DateTime<Utc>, id: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}:{}", at.timestamp_micros(), id.simple()))
}

pub fn refund_status_to_pb(s: RefundStatus) -> pb::RefundStatus {
    match s {
        RefundStatus::Pending => pb::RefundStatus::Pending,
        RefundStatus::Processing => pb::RefundStatus::Processing,
        RefundStatus::Succeeded => pb::RefundStatus::Succeeded,
        RefundStatus::Failed => pb::RefundStatus::Failed,
    }
}

pub fn refund_status_from_pb(field: &'static str, v: i32) -> Result<RefundStatus, FieldError> {
    match pb::RefundStatus::try_from(v) {
        Ok(pb::RefundStatus::Pending) => Ok(RefundStatus::Pending),
        Ok(pb::RefundStatus::Processing) => Ok(RefundStatus::Processing),
        Ok(pb::RefundStatus::Succeeded) => Ok(RefundStatus::Succeeded),
        Ok(pb::RefundStatus::Failed) => Ok(RefundStatus::Failed),
        Ok(pb::RefundStatus::Unspecified) | Err(_) => Err(FieldError::new(
            field,
            format!("{v} is not a refund status"),
        )),
    }
}

pub fn refund_to_pb(r: &Refund) -> pb::Refund {
    pb::Refund {
        refund_id: r.id.hyphenated().to_string(),
        order_id: r.order_id.hyphenated().to_string(),
        app_id: r.app_id.clone(),
        refund_request_no: r.refund_request_no.clone(),
        out_refund_no: r.out_refund_no.clone(),
        channel: channel_to_pb(r.channel) as i32,
        amount: Some(pb::Money {
            amount_minor: r.amount_minor,
            currency: r.currency.trim().to_owned(),
        }),
        reason: r.reason.clone(),
        status: refund_status_to_pb(r.status) as i32,
        channel_refund_no: r.channel_refund_no.clone().unwrap_or_default(),
        failure_reason: r.failure_reason.clone().unwrap_or_default(),
        requested_by: r.requested_by.clone(),
        operator: r.operator.clone().unwrap_or_default(),
        needs_attention: r.needs_attention,
        version: r.version,
        created_at: Some(timestamp(r.created_at)),
        updated_at: Some(timestamp(r.updated_at)),
        succeeded_at: r.succeeded_at.map(timestamp),
    }
}

pub fn decode_page_token(token: &str) -> Result<(DateTime<Utc>, Uuid), FieldError> {
    let bad = || FieldError::new("page_token", "is not a token this server issued");
    let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    let (micros, id) = text.split_once(':').ok_or_else(bad)?;
    let micros: i64 = micros.parse().map_err(|_| bad())?;
    let at = DateTime::from_timestamp_micros(micros).ok_or_else(bad)?;
    let id = Uuid::try_parse(id).map_err(|_| bad())?;
    Ok((at, id))
}

pub fn channel_from_pb(v: i32) -> Result<Channel, FieldError> {
    match cpb::Channel::try_from(v) {
        Ok(cpb::Channel::Wechat) => Ok(Channel::Wechat),
        Ok(cpb::Channel::Alipay) => Ok(Channel::Alipay),
        Ok(cpb::Channel::Unionpay) => Ok(Channel::Unionpay),
        Ok(cpb::Channel::Unspecified) | Err(_) => {
            Err(FieldError::new("channel", format!("{v} is not a channel")))
        }
    }
}

pub fn method_from_pb(v: i32) -> Result<PayMethod, FieldError> {
    match cpb::PayMethod::try_from(v) {
        Ok(cpb::PayMethod::WechatJsapi) => Ok(PayMethod::WechatJsapi),
        Ok(cpb::PayMethod::WechatNative) => Ok(PayMethod::WechatNative),
        Ok(cpb::PayMethod::AlipayQr) => Ok(PayMethod::AlipayQr),
        Ok(cpb::PayMethod::AlipayPage) => Ok(PayMethod::AlipayPage),
        Ok(cpb::PayMethod::AlipayApp) => Ok(PayMethod::AlipayApp),
        Ok(cpb::PayMethod::UnionpayFront) => Ok(PayMethod::UnionpayFront),
        Ok(cpb::PayMethod::Unspecified) | Err(_) => Err(FieldError::new(
            "method",
            format!("{v} is not a pay method"),
        )),
    }
}

fn attempt_status_to_pb(s: AttemptStatus) -> pb::AttemptStatus {
    match s {
        AttemptStatus::Init => pb::AttemptStatus::Init,
        AttemptStatus::Paying => pb::AttemptStatus::Paying,
        AttemptStatus::Succeeded => pb::AttemptStatus::Succeeded,
        AttemptStatus::Failed => pb::AttemptStatus::Failed,
        AttemptStatus::Closed => pb::AttemptStatus::Closed,
    }
}

pub fn attempt_to_pb(a: &Attempt) -> pb::PaymentAttempt {
    pb::PaymentAttempt {
        attempt_id: a.id.hyphenated().to_string(),
        order_id: a.order_id.hyphenated().to_string(),
        out_trade_no: a.out_trade_no.clone(),
        channel: channel_to_pb(a.channel) as i32,
        method: method_to_pb(a.method) as i32,
        status: attempt_status_to_pb(a.status) as i32,
        amount: Some(pb::Money {
            amount_minor: a.amount_minor,
            currency: a.currency.trim().to_owned(),
        }),
        created_at: Some(timestamp(a.created_at)),
    }
}

/// The paging and time window every List call shares, parsed once.
pub struct PageRequest {
    pub page_size: i32,
    pub created_from: Option<DateTime<Utc>>,
    pub created_to: Option<DateTime<Utc>>,
    /// The (created_at, id) cursor of the previous page.
    pub after: Option<(DateTime<Utc>, Uuid)>,
}

const DEFAULT_PAGE_SIZE: i32 = 50;
const MAX_PAGE_SIZE: i32 = 200;

impl PageRequest {
    /// `page_size` 0 means 50, at most 200; `created_from` must not be after `created_to`.
    ///
    /// # Errors
    /// A [`FieldError`] naming the malformed field.
    pub fn parse(
        page_size: i32,
        created_from: Option<&prost_types::Timestamp>,
        created_to: Option<&prost_types::Timestamp>,
        page_token: &str,
    ) -> Result<Self, FieldError> {
        let page_size = match page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if (1..=MAX_PAGE_SIZE).contains(&n) => n,
            n => {
                return Err(FieldError::new(
                    "page_size",
                    format!("must be 0..={MAX_PAGE_SIZE}, got {n}"),
                ));
            }
        };
        let created_from = created_from
            .map(|t| from_timestamp("created_from", t))
            .transpose()?;
        let created_to = created_to
            .map(|t| from_timestamp("created_to", t))
            .transpose()?;
        if let (Some(f), Some(t)) = (created_from, created_to)
            && f > t
        {
            return Err(FieldError::new(
                "created_from",
                "must not be after created_to",
            ));
        }
        let after = if page_token.is_empty() {
            None
        } else {
            Some(decode_page_token(page_token)?)
        };
        Ok(Self {
            page_size,
            created_from,
            created_to,
            after,
        })
    }
}
