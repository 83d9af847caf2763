//! The one mapping from [`ServiceError`] to a gRPC status: the code is chosen from the error's
//! type, never from its text.
//!
//! | error                               | code                |
//! |-------------------------------------|---------------------|
//! | `Invalid` (field named)             | INVALID_ARGUMENT    |
//! | `Unauthenticated`                   | UNAUTHENTICATED     |
//! | `NotFound` (subject named)          | NOT_FOUND           |
//! | `AlreadyExists`, `IdempotencyMismatch` | ALREADY_EXISTS   |
//! | `IllegalTransition` (state named), `Expired` | FAILED_PRECONDITION |
//! | `Busy`, `Fenced`, `Conflict`        | ABORTED             |
//! | `ChannelRefused`, `ChannelDisabled`, `TradeStillPayable`, `AmountHeld`, `NotRefundable`, `RefundExceeds` (remaining amount named) | FAILED_PRECONDITION |
//! | `PermissionDenied`                  | PERMISSION_DENIED   |
//! | `Redis`, `ChannelUnavailable`, `LeaseLost` | UNAVAILABLE |
//! | `Storage`, transient (unreachable, pool timeout) | UNAVAILABLE |
//! | `Storage`, otherwise; `Internal`    | INTERNAL, opaque; the chain is logged |
//!
//! No message carries SQL, a file path, a key or a cause chain: the texts above are written
//! here or by the edge's validation. An INTERNAL answer carries only a fresh reference id, which
//! the log line with the whole chain also carries, so an operator can find it.
use tonic::{Code, Status};

use crate::app::ServiceError;

const RETRY_WITH_BACKOFF: &str = "a dependency is unavailable; retry with backoff";

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Invalid(f) => Status::invalid_argument(f.to_string()),
            ServiceError::Unauthenticated(m) => Status::unauthenticated(m),
            ServiceError::NotFound(what) => Status::not_found(format!("{what} not found")),
            ServiceError::AlreadyExists(m) => Status::already_exists(m),
            ServiceError::IdempotencyMismatch => Status::already_exists(
                "idempotency_key: already used with different parameters or on another method",
            ),
            ServiceError::IllegalTransition(t) => Status::failed_precondition(t.to_string()),
            e @ (ServiceError::Busy(_) | ServiceError::Fenced(_) | ServiceError::Conflict(_)) => {
                Status::aborted(e.to_string())
            }
            e @ (ServiceError::ChannelRefused(_)
            | ServiceError::ChannelDisabled(_)
            | ServiceError::Expired(_)
            | ServiceError::NotRefundable(_)
            | ServiceError::RefundExceeds { .. }
            | ServiceError::TradeStillPayable { .. }
            | ServiceError::AmountHeld { .. }) => Status::failed_precondition(e.to_string()),
            e @ ServiceError::LeaseLost => Status::unavailable(e.to_string()),
            ServiceError::PermissionDenied(m) => Status::permission_denied(m),
            ref e @ ServiceError::ChannelUnavailable { channel, .. } => {
                tracing::warn!(%channel, error = ?e, "channel unavailable");
                Status::unavailable(format!(
                    "channel {channel} unavailable; the outcome is unknown, retry: the same attempt will be reused"
                ))
            }
            ServiceError::Storage(s) if s.is_transient() => {
                tracing::warn!(error = ?s, "storage unavailable");
                Status::unavailable(RETRY_WITH_BACKOFF)
            }
            e @ ServiceError::Redis(_) => {
                tracing::warn!(error = ?e, "dependency unavailable");
                Status::unavailable(RETRY_WITH_BACKOFF)
            }
            e @ (ServiceError::Storage(_) | ServiceError::Internal(_)) => {
                let reference = uuid::Uuid::now_v7();
                tracing::error!(%reference, error = ?e, "internal error");
                Status::internal(format!("internal error (reference {reference})"))
            }
        }
    }
}

/// The code [`Status::from`] gives `e`, without building (or logging) the status: the audit
/// log records it for calls that wrote no record of their own.
pub fn code_of(e: &ServiceError) -> Code {
    match e {
        ServiceError::Invalid(_) => Code::InvalidArgument,
        ServiceError::Unauthenticated(_) => Code::Unauthenticated,
        ServiceError::NotFound(_) => Code::NotFound,
        ServiceError::AlreadyExists(_) | ServiceError::IdempotencyMismatch => Code::AlreadyExists,
        ServiceError::Busy(_) | ServiceError::Fenced(_) | ServiceError::Conflict(_) => {
            Code::Aborted
        }
        ServiceError::IllegalTransition(_)
        | ServiceError::ChannelRefused(_)
        | ServiceError::ChannelDisabled(_)
        | ServiceError::Expired(_)
        | ServiceError::NotRefundable(_)
        | ServiceError::RefundExceeds { .. }
        | ServiceError::TradeStillPayable { .. }
        | ServiceError::AmountHeld { .. } => Code::FailedPrecondition,
        ServiceError::PermissionDenied(_) => Code::PermissionDenied,
        ServiceError::LeaseLost
        | ServiceError::ChannelUnavailable { .. }
        | ServiceError::Redis(_) => Code::Unavailable,
        ServiceError::Storage(s) if s.is_transient() => Code::Unavailable,
        ServiceError::Storage(_) | ServiceError::Internal(_) => Code::Internal,
    }
}

/// Label for `payd_rejected_requests_total`: the client-side refusals, which change nothing.
pub fn rejection_reason(code: Code) -> Option<&'static str> {
    match code {
        Code::InvalidArgument => Some("invalid_argument"),
        Code::Unauthenticated => Some("unauthenticated"),
        Code::NotFound => Some("not_found"),
        Code::AlreadyExists => Some("already_exists"),
        Code::FailedPrecondition => Some("failed_precondition"),
        Code::Aborted => Some("aborted"),
        Code::PermissionDenied => Some("permission_denied"),
        Code::ResourceExhausted => Some("resource_exhausted"),
        Code::Ok
        | Code::Cancelled
        | Code::Unknown
        | Code::DeadlineExceeded
        | Code::OutOfRange
        | Code::Unimplemented
        | Code::Internal
        | Code::Unavailable
        | Code::DataLoss => None,
    }
}

/// Counts a finished call (`payd_grpc_requests_total`, and `payd_rejected_requests_total` for
/// refusals) and turns its error into the status: the one exit of every handler.
pub fn observe<T>(
    metrics: &crate::metrics::Metrics,
    method: &str,
    r: Result<T, ServiceError>,
) -> Result<tonic::Response<T>, Status> {
    let r = r.map_err(Status::from);
    let code = r.as_ref().err().map_or(Code::Ok, Status::code);
    metrics
        .grpc_requests
        .with_label_values(&[method, code_name(code)])
        .inc();
    if let Some(reason) = rejection_reason(code) {
        metrics
            .rejected_requests
            .with_label_values(&[method, reason])
            .inc();
    }
    r.map(tonic::Response::new)
}

/// The canonical name of a gRPC status code (`OK`, `INVALID_ARGUMENT`, …), as metrics labels
/// and logs spell it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use anyhow::Context;

    use super::*;
    use crate::storage::StorageError;

    #[test]
    fn code_of_agrees_with_the_status_mapping() {
        let cases = || {
            vec![
                ServiceError::Unauthenticated("x".into()),
                ServiceError::NotFound(crate::app::Subject::Trade("t".into())),
                ServiceError::AlreadyExists("x".into()),
                ServiceError::IdempotencyMismatch,
                ServiceError::Busy(crate::domain::OrderId::new()),
                ServiceError::LeaseLost,
                ServiceError::PermissionDenied("x".into()),
                ServiceError::ChannelRefused("x".into()),
                ServiceError::from(StorageError::Unavailable("pool".into())),
                ServiceError::from(StorageError::Corrupt("x".into())),
            ]
        };
        for (a, b) in cases().into_iter().zip(cases()) {
            assert_eq!(code_of(&a), Status::from(b).code(), "{a:?}");
        }
    }

    #[test]
    fn codes_are_labelled_by_their_canonical_names() {
        assert_eq!(code_name(Code::Ok), "OK");
        assert_eq!(code_name(Code::InvalidArgument), "INVALID_ARGUMENT");
        assert_eq!(code_name(Code::Unauthenticated), "UNAUTHENTICATED");
    }

    #[test]
    fn storage_errors_are_unavailable_when_transient_and_opaque_internal_otherwise() {
        let down = Status::from(ServiceError::from(StorageError::Unavailable("pool".into())));
        assert_eq!(down.code(), Code::Unavailable);
        let corrupt = Status::from(ServiceError::from(StorageError::Corrupt("secret".into())));
        assert_eq!(corrupt.code(), Code::Internal);
        assert!(
            corrupt.message().starts_with("internal error (reference "),
            "{}",
            corrupt.message()
        );
        assert!(!corrupt.message().contains("secret"));
    }

    #[test]
    fn an_internal_error_keeps_its_context_and_cause_for_the_log_only() {
        let e: ServiceError = Err::<(), _>(std::io::Error::other("disk on fire"))
            .context("reading the thing")
            .unwrap_err()
            .into();
        let logged = format!("{e:?}");
        assert!(logged.contains("reading the thing"), "{logged}");
        assert!(logged.contains("disk on fire"), "{logged}");
        assert_eq!(code_of(&e), Code::Internal);
        let status = Status::from(e);
        assert_eq!(status.code(), Code::Internal);
        assert!(
            !status.message().contains("disk on fire"),
            "{}",
            status.message()
        );
        assert!(!status.message().contains("reading the thing"));
    }
}
