//! The use-case error: every way a call can fail, before it is mapped to a gRPC status in
//! `grpc/status.rs`.
use std::fmt;

use crate::domain::{FieldError, IllegalTransition};
use crate::locks::LockError;
use crate::storage::StorageError;
use crate::storage::idempotency::IdempotencyError;

#[derive(thiserror::Error)]
pub enum ServiceError {
    #[error("invalid argument: {0}")]
    Invalid(#[from] FieldError),
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("idempotency key was already used with different parameters")]
    IdempotencyMismatch,
    #[error(transparent)]
    IllegalTransition(#[from] IllegalTransition),
    #[error("order expired at {0}; create a new order")]
    Expired(String),
    #[error("order {0} is busy; retry")]
    Busy(String),
    /// A newer lock holder wrote the row first: this call's lock had expired under it.
    #[error("order {0} was changed by a newer lock holder; this write was refused")]
    Fenced(String),
    /// The row changed between read and write (optimistic lock).
    #[error("order {0} changed concurrently; retry")]
    Conflict(String),
    #[error("dependency unavailable: {0}")]
    Unavailable(String),
    /// The channel gave a final refusal (its own code in the message).
    #[error("the channel refused: {0}")]
    ChannelRefused(String),
    /// The channel could not be reached or did not answer in time: the outcome is unknown.
    #[error("channel {0} unavailable: {1}")]
    ChannelUnavailable(String, String),
    #[error("channel {0} is not enabled on this server")]
    ChannelDisabled(String),
    /// An open trade handed to a payer cannot be closed at its channel yet (it does not exist
    /// there until the payer scans or submits it, or the channel has no close): nothing else may
    /// start until its payable window has lapsed.
    #[error(
        "the open {channel} trade {out_trade_no} may still be paid until {until}; it cannot be closed at the channel before then ({detail}); pay it, or retry after {retry_after}"
    )]
    TradeStillPayable {
        channel: String,
        out_trade_no: String,
        until: String,
        retry_after: String,
        detail: String,
    },
    /// The channel reports the trade paid with another amount or currency: nothing moved, the
    /// order is held for a person.
    #[error(
        "the {channel} trade {out_trade_no} is reported paid with an amount or currency that differs from the order; the order is held for review"
    )]
    AmountHeld {
        channel: String,
        out_trade_no: String,
    },
    /// This replica holds no snowflake worker-id lease, so it mints no `out_trade_no`.
    #[error("this server cannot mint trade numbers right now (worker-id lease lost); retry")]
    LeaseLost,
    /// An adapter reported an event it has no right to report.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl fmt::Debug for ServiceError {
    /// Prints the whole cause chain, for logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{self}")?;
        let mut cur = std::error::Error::source(self);
        while let Some(c) = cur {
            writeln!(f, "caused by: {c}")?;
            cur = c.source();
        }
        Ok(())
    }
}

impl From<StorageError> for ServiceError {
    fn from(e: StorageError) -> Self {
        if e.is_transient() {
            ServiceError::Unavailable(e.to_string())
        } else {
            ServiceError::Internal(e.to_string())
        }
    }
}

impl From<crate::channel_client::ChannelDisabled> for ServiceError {
    fn from(e: crate::channel_client::ChannelDisabled) -> Self {
        ServiceError::ChannelDisabled(e.0.to_string())
    }
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

impl From<LockError> for ServiceError {
    fn from(e: LockError) -> Self {
        match e {
            LockError::Busy(r) => ServiceError::Busy(r),
            LockError::Redis(r) => ServiceError::Unavailable(format!("redis: {r}")),
            LockError::Fence(s) => s.into(),
        }
    }
}
