//! How payd reads a failed adapter call: one exhaustive reading of every `tonic::Code`, after the
//! status table at the top of `channel.v1`.
use tonic::Code;

/// What a failed `ChannelAdapter` call tells payd about the trade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallFailure {
    /// FAILED_PRECONDITION: the platform refused for a final business reason. Final for this
    /// request, but not proof of the trade's state.
    Refused,
    /// INVALID_ARGUMENT: the request cannot be expressed at the platform. Final for this request,
    /// not proof of the trade's state either.
    Invalid,
    /// DEADLINE_EXCEEDED, CANCELLED, UNKNOWN, and answers that do not follow the contract: the call
    /// may or may not have reached the platform; query later.
    OutcomeUnknown,
    /// UNAUTHENTICATED: the platform's answer failed verification and is never trusted.
    Untrusted,
    /// UNAVAILABLE, RESOURCE_EXHAUSTED, and payd-to-adapter failures (token refused, adapter
    /// bug): the platform could not be reached, or was not asked; nothing is known.
    Unavailable,
}

impl CallFailure {
    /// Whether the platform gave a final refusal of this request (refused or invalid).
    pub fn is_refusal(self) -> bool {
        match self {
            CallFailure::Refused | CallFailure::Invalid => true,
            CallFailure::OutcomeUnknown | CallFailure::Untrusted | CallFailure::Unavailable => {
                false
            }
        }
    }
}

impl From<&tonic::Status> for CallFailure {
    fn from(s: &tonic::Status) -> Self {
        match s.code() {
            Code::FailedPrecondition => CallFailure::Refused,
            Code::InvalidArgument => CallFailure::Invalid,
            Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => CallFailure::OutcomeUnknown,
            Code::Unauthenticated => CallFailure::Untrusted,
            Code::Unavailable | Code::ResourceExhausted => CallFailure::Unavailable,
            // Outside the adapters' table: payd's own token refused (PERMISSION_DENIED), an
            // adapter bug or version skew. The platform may have been asked before the adapter
            // failed, so nothing is known.
            Code::PermissionDenied
            | Code::Internal
            | Code::Unimplemented
            | Code::NotFound
            | Code::AlreadyExists
            | Code::Aborted
            | Code::OutOfRange
            | Code::DataLoss => CallFailure::Unavailable,
            // A status with OK is not a failure the contract knows: treat it as unknown.
            Code::Ok => CallFailure::OutcomeUnknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_refusals_and_invalid_requests_are_refusals() {
        let read = |c| CallFailure::from(&tonic::Status::new(c, "x"));
        assert_eq!(read(Code::FailedPrecondition), CallFailure::Refused);
        assert_eq!(read(Code::InvalidArgument), CallFailure::Invalid);
        assert_eq!(read(Code::DeadlineExceeded), CallFailure::OutcomeUnknown);
        assert_eq!(read(Code::Unauthenticated), CallFailure::Untrusted);
        assert_eq!(read(Code::Unavailable), CallFailure::Unavailable);
        assert!(read(Code::FailedPrecondition).is_refusal());
        assert!(read(Code::InvalidArgument).is_refusal());
        for c in [
            Code::Ok,
            Code::Cancelled,
            Code::Unknown,
            Code::DeadlineExceeded,
            Code::NotFound,
            Code::AlreadyExists,
            Code::PermissionDenied,
            Code::ResourceExhausted,
            Code::Aborted,
            Code::OutOfRange,
            Code::Unimplemented,
            Code::Internal,
            Code::Unavailable,
            Code::DataLoss,
            Code::Unauthenticated,
        ] {
            assert!(!read(c).is_refusal(), "{c:?}");
        }
    }
}
