//! Writing facts to the outbox, inside the transaction that made them true. The payload is the
//! `payment.v1.Event` the app will receive (the order, refund or attempt as the API shows it), so
//! the stream and the sink deliver exactly what was true at commit, not what is true when they
//! read it. (This is the one place outside `grpc` that builds API messages: the outbox stores
//! them.)
use diesel::PgConnection;
use payproto::payment::v1 as pb;
use prost::Message;

use crate::channel_client::timestamp;
use crate::domain::{Attempt, Order, Refund};
use crate::grpc::convert::{attempt_to_pb, order_to_pb, refund_to_pb};
use crate::storage::StorageError;
use crate::storage::outbox;

/// The kinds of fact the outbox carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    OrderCreated,
    OrderPaid,
    OrderClosed,
    OrderPartiallyRefunded,
    OrderRefunded,
    RefundSucceeded,
    RefundFailed,
    RefundNeedsAttention,
    DuplicateDetected,
    PaymentNeedsAttention,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::OrderCreated => "order.created",
            EventType::OrderPaid => "order.paid",
            EventType::OrderClosed => "order.closed",
            EventType::OrderPartiallyRefunded => "order.partially_refunded",
            EventType::OrderRefunded => "order.refunded",
            EventType::RefundSucceeded => "refund.succeeded",
            EventType::RefundFailed => "refund.failed",
            EventType::RefundNeedsAttention => "refund.needs_attention",
            EventType::DuplicateDetected => "payment.duplicate_detected",
            EventType::PaymentNeedsAttention => "payment.needs_attention",
        }
    }
}

/// What an event says beside its order.
#[derive(Debug, Default)]
pub struct Extra<'a> {
    pub refund: Option<&'a Refund>,
    pub attempt: Option<&'a Attempt>,
    pub detail: &'a str,
}

/// Appends `kind` about `order` (as it is after the change) to the outbox.
///
/// # Errors
/// Storage errors (the caller's transaction then rolls back with its change).
pub fn record(
    conn: &mut PgConnection,
    kind: EventType,
    order: &Order,
    extra: Extra<'_>,
) -> Result<uuid::Uuid, StorageError> {
    let mut event = pb::Event {
        event_id: String::new(),
        r#type: kind.as_str().to_owned(),
        app_id: order.app_id.clone(),
        order_id: order.id.hyphenated().to_string(),
        order_sequence: 0,
        cursor: String::new(),
        occurred_at: Some(timestamp(order.updated_at.max(chrono::Utc::now()))),
        order: Some(order_to_pb(order)),
        refund: extra.refund.map(refund_to_pb),
        attempt: extra.attempt.map(attempt_to_pb),
        detail: extra.detail.to_owned(),
    };
    outbox::append(conn, &order.app_id, order.id, kind.as_str(), |id, seq| {
        event.event_id = id.hyphenated().to_string();
        event.order_sequence = seq;
        event.encode_to_vec()
    })
}
