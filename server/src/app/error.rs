//! The use-case error: every way a call can fail, typed, with its cause kept, before it is mapped
//! to a gRPC status in `grpc/status.rs`. `Debug` prints the whole cause chain, for logs.
use std::fmt;

use chrono::{DateTime, Utc};

use crate::channel_client::{CallFailure, ChannelDisabled};
use crate::domain::{Channel, FieldError, IllegalTransition, OrderId};
use crate::locks::LockError;
use crate::storage::StorageError;
use crate::storage::idempotency::IdempotencyError;

/// What a `NotFound` or `Conflict` is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    Order(OrderId),
    /// An app's order named by its merchant_order_no.
    MerchantOrderNo(String),
    /// A payment attempt named by its `out_trade_no`.
    Trade(String),
    /// A channel event named by its id.
    Event(String),
    Refund(uuid::Uuid),
    /// An app's refund named by its refund_request_no.
    RefundRequestNo(String),
    /// A refund named by its `out_refund_no`.
    OutRefund(String),
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Order(id) => write!(f, "order {id}"),
            Subject::MerchantOrderNo(no) => write!(f, "order with merchant_order_no {no}"),
            Subject::Trade(no) => write!(f, "trade {no}"),
            Subject::Event(id) => write!(f, "channel event {id}"),
            Subject::Refund(id) => write!(f, "refund {id}"),
            Subject::RefundRequestNo(no) => write!(f, "refund with refund_request_no {no}"),
            Subject::OutRefund(no) => write!(f, "refund {no}"),
        }
    }
}

impl From<OrderId> for Subject {
    fn from(id: OrderId) -> Self {
        Subject::Order(id)
    }
}

/// The variants that carry a bare `String` carry the user-facing message itself:
/// `Unauthenticated`, `AlreadyExists`, `PermissionDenied` and `ChannelRefused` (the channel's own
/// refusal text).
#[derive(thiserror::Error)]
pub enum ServiceError {
    #[error("invalid argument: {0}")]
    Invalid(#[from] FieldError),
    /// The user-facing message says what is missing or wrong.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    #[error("{0} not found")]
    NotFound(Subject),
    /// The user-facing message names the conflicting field.
    #[error("{0}")]
    AlreadyExists(String),
    #[error("idempotency key was already used with different parameters")]
    IdempotencyMismatch,
    #[error(transparent)]
    IllegalTransition(#[from] IllegalTransition),
    #[error("order expired at {}; create a new order", .0.to_rfc3339())]
    Expired(DateTime<Utc>),
    /// Another call holds the order's lock.
    #[error("order {0} is busy; retry")]
    Busy(OrderId),
    /// A newer lock holder wrote the row first: this call's lock had expired under it.
    #[error("order {0} was changed by a newer lock holder; this write was refused")]
    Fenced(OrderId),
    /// The row changed between read and write (optimistic lock, a unique index, a concurrent
    /// delivery of the same event).
    #[error("{0} changed concurrently; retry")]
    Conflict(Subject),
    /// Postgres: transient (unreachable, pool timeout) or not (a query bug, a corrupt row).
    #[error("storage")]
    Storage(#[from] StorageError),
    /// Redis could not be reached for the order's lock.
    #[error("redis unavailable")]
    Redis(#[source] redis::RedisError),
    /// The channel gave a final refusal; the user-facing message is its own.
    #[error("the channel refused: {0}")]
    ChannelRefused(String),
    /// The channel could not be reached, did not answer in time, or answered nothing payd can
    /// trust: the outcome is unknown. `detail` is for logs only.
    #[error("channel {channel} unavailable ({failure:?}): {detail}")]
    ChannelUnavailable {
        channel: Channel,
        /// How the failed call was read; `None` when the call answered but confirmed nothing.
        failure: Option<CallFailure>,
        detail: String,
    },
    #[error(transparent)]
    ChannelDisabled(#[from] ChannelDisabled),
    /// An open trade handed to a payer cannot be closed at its channel yet (it does not exist
    /// there until the payer scans or submits it, or the channel has no close): nothing else may
    /// start until its payable window has lapsed.
    #[error(
        "the open {channel} trade {out_trade_no} may still be paid until {}; it cannot be closed at the channel before then ({detail}); pay it, or retry after {}",
        until.to_rfc3339(),
        retry_after.to_rfc3339()
    )]
    TradeStillPayable {
        channel: Channel,
        out_trade_no: String,
        until: DateTime<Utc>,
        retry_after: DateTime<Utc>,
        /// The channel's status text.
        detail: String,
    },
    /// The channel reports the trade paid with another amount or currency: nothing moved, the
    /// order is held for a person.
    #[error(
        "the {channel} trade {out_trade_no} is reported paid with an amount or currency that differs from the order; the order is held for review"
    )]
    AmountHeld {
        channel: Channel,
        out_trade_no: String,
    },
    /// Only PAID or PARTIALLY_REFUNDED orders can be refunded.
    #[error("order is {0}; only PAID or PARTIALLY_REFUNDED orders can be refunded")]
    NotRefundable(crate::domain::OrderStatus),
    /// The refund would take the refunds that are not FAILED above what was paid.
    #[error(
        "a refund of {requested} exceeds what remains refundable: {remaining} ({currency} minor units) of {paid} paid"
    )]
    RefundExceeds {
        requested: i64,
        remaining: i64,
        paid: i64,
        currency: String,
    },
    /// This replica holds no snowflake worker-id lease, so it mints no `out_trade_no`.
    #[error("this server cannot mint trade numbers right now (worker-id lease lost); retry")]
    LeaseLost,
    /// An adapter reported an event it has no right to report (the message says which).
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// A bug or a broken invariant; the context says what was being done.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl fmt::Debug for ServiceError {
    /// Prints the whole cause chain, for logs (zero2prod's `error_chain_fmt`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        error_chain_fmt(self, f)
    }
}

/// Writes `e` and every `source()` below it, one per line.
///
/// # Errors
/// Only the formatter's.
pub fn error_chain_fmt(e: &impl std::error::Error, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    writeln!(f, "{e}")?;
    let mut cur = e.source();
    while let Some(c) = cur {
        writeln!(f, "caused by: {c}")?;
        cur = c.source();
    }
    Ok(())
}

impl From<diesel::result::Error> for ServiceError {
    fn from(e: diesel::result::Error) -> Self {
        StorageError::from(e).into()
    }
}

impl From<IdempotencyError> for ServiceError {
    fn from(e: IdempotencyError) -> Self {
        match e {
            IdempotencyError::Mismatch => ServiceError::IdempotencyMismatch,
            IdempotencyError::Storage(s) => s.into(),
        }
    }
}

impl ServiceError {
    /// The error of a failed lock acquisition for order `id`.
    pub fn from_lock(id: OrderId, e: LockError) -> Self {
        match e {
            LockError::Busy(_) => ServiceError::Busy(id),
            LockError::Redis(r) => ServiceError::Redis(r),
            LockError::Fence(s) => s.into(),
        }
    }
}
