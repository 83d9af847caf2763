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
use crate::grpc::recon::{discrepancy_to_pb, run_to_pb};
use crate::storage::outbox;
use crate::storage::recon::{DiscrepancyRow, RunRow};
use crate::storage::{StorageError, orders};

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
    ReconciliationCompleted,
    ReconciliationFailed,
    DiscrepancyFound,
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
            EventType::ReconciliationCompleted => "reconciliation.completed",
            EventType::ReconciliationFailed => "reconciliation.failed",
            EventType::DiscrepancyFound => "reconciliation.discrepancy_found",
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
    let now = chrono::Utc::now();
    outbox::append(conn, &order.app_id, order.id, kind.as_str(), |id, seq| {
        encode(kind, order, &extra, id, seq, now)
    })
}

/// The stored payload of `kind` about `order`: the `payment.v1.Event` the app receives (cursor
/// left empty, the stream fills it in), numbered `seq` in the order's sequence. `now` is when
/// the fact became true, as far as this process knows; the event never claims to have happened
/// before the order's last change.
pub fn encode(
    kind: EventType,
    order: &Order,
    extra: &Extra<'_>,
    event_id: uuid::Uuid,
    seq: i64,
    now: chrono::DateTime<chrono::Utc>,
) -> Vec<u8> {
    pb::Event {
        event_id: event_id.hyphenated().to_string(),
        r#type: kind.as_str().to_owned(),
        app_id: order.app_id.clone(),
        order_id: order.id.hyphenated().to_string(),
        order_sequence: seq,
        cursor: String::new(),
        occurred_at: Some(timestamp(order.updated_at.max(now))),
        order: Some(order_to_pb(order)),
        refund: extra.refund.map(refund_to_pb),
        attempt: extra.attempt.map(attempt_to_pb),
        detail: extra.detail.to_owned(),
        ..Default::default()
    }
    .encode_to_vec()
}

/// The stream key of a channel's day: its run events, and the discrepancies of trades we do not
/// know, are ordered within it.
pub fn recon_stream_key(channel: &str, day: chrono::NaiveDate) -> String {
    format!("reconciliation:{channel}:{day}")
}

/// Appends a run-level event (`reconciliation.completed` / `.failed`) for the operations app,
/// in the transaction that ended the run.
///
/// # Errors
/// Storage errors (the caller's transaction then rolls back with the run's end).
pub fn record_run(
    conn: &mut PgConnection,
    ops_app: &str,
    kind: EventType,
    run: &RunRow,
) -> Result<uuid::Uuid, StorageError> {
    let key = recon_stream_key(&run.channel, run.day);
    let mut event = pb::Event {
        r#type: kind.as_str().to_owned(),
        app_id: ops_app.to_owned(),
        occurred_at: Some(timestamp(run.finished_at.unwrap_or_else(chrono::Utc::now))),
        reconciliation_run: Some(run_to_pb(run)),
        detail: run.error.clone().unwrap_or_default(),
        stream_key: key.clone(),
        ..Default::default()
    };
    outbox::append_to_stream(conn, ops_app, &key, kind.as_str(), |id, seq| {
        event.event_id = id.hyphenated().to_string();
        event.order_sequence = seq;
        event.encode_to_vec()
    })
}

/// Appends `reconciliation.discrepancy_found` in the transaction that recorded the discrepancy:
/// to its order's stream and app when we know the trade or refund, else to the operations app
/// under the day's stream key.
///
/// # Errors
/// Storage errors (the caller's transaction then rolls back with the discrepancy).
pub fn record_discrepancy(
    conn: &mut PgConnection,
    ops_app: &str,
    run: &RunRow,
    d: &DiscrepancyRow,
) -> Result<uuid::Uuid, StorageError> {
    let kind = EventType::DiscrepancyFound;
    let mut event = pb::Event {
        r#type: kind.as_str().to_owned(),
        occurred_at: Some(timestamp(d.created_at)),
        reconciliation_run: Some(run_to_pb(run)),
        discrepancy: Some(discrepancy_to_pb(d)),
        ..Default::default()
    };
    let order =
        match crate::storage::recon::order_of(conn, &d.channel, &d.out_trade_no, &d.out_refund_no)?
        {
            Some(id) => orders::find_by_id(conn, crate::domain::OrderId::from_uuid(id))?,
            None => None,
        };
    match order {
        Some(row) => {
            let order = Order::from(row);
            event.app_id = order.app_id.clone();
            event.order_id = order.id.hyphenated().to_string();
            event.order = Some(order_to_pb(&order));
            outbox::append(conn, &order.app_id, order.id, kind.as_str(), |id, seq| {
                event.event_id = id.hyphenated().to_string();
                event.order_sequence = seq;
                event.encode_to_vec()
            })
        }
        None => {
            let key = recon_stream_key(&d.channel, d.day);
            event.app_id = ops_app.to_owned();
            event.stream_key = key.clone();
            outbox::append_to_stream(conn, ops_app, &key, kind.as_str(), |id, seq| {
                event.event_id = id.hyphenated().to_string();
                event.order_sequence = seq;
                event.encode_to_vec()
            })
        }
    }
}
