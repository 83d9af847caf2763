//! WeChat `trade_state` and refund `status` mapped to the outcomes the core acts on. Strings WeChat
//! may add later parse as `Unrecognized` and map to `Unknown`: only an explicit success or failure is
//! ever final, so a new state can delay a result but never invent one.

/// What a payment's state means to the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PaymentStatus {
    /// Not paid yet, may still be paid.
    Pending,
    /// Paid.
    Succeeded,
    /// The payment attempt failed and will not be paid.
    Failed,
    /// Closed or revoked before payment; will not be paid.
    Closed,
    /// The answer does not say; query again.
    Unknown,
}

impl PaymentStatus {
    pub fn is_final(self) -> bool {
        match self {
            Self::Succeeded | Self::Failed | Self::Closed => true,
            Self::Pending | Self::Unknown => false,
        }
    }
}

/// `trade_state` of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TradeState {
    Success,
    /// Paid, then a refund was started; the payment itself succeeded.
    Refund,
    NotPay,
    Closed,
    /// Micropay only: the order was revoked.
    Revoked,
    /// Micropay only: waiting for the payer to enter a password.
    UserPaying,
    /// Failed, e.g. refused by the bank.
    PayError,
    /// Accepted, waiting for the debit (listed by the Java SDK).
    Accept,
    Unrecognized(String),
}

impl TradeState {
    pub fn parse(value: &str) -> Self {
        match value {
            "SUCCESS" => Self::Success,
            "REFUND" => Self::Refund,
            "NOTPAY" => Self::NotPay,
            "CLOSED" => Self::Closed,
            "REVOKED" => Self::Revoked,
            "USERPAYING" => Self::UserPaying,
            "PAYERROR" => Self::PayError,
            "ACCEPT" => Self::Accept,
            other => Self::Unrecognized(other.to_owned()),
        }
    }

    pub fn payment_status(&self) -> PaymentStatus {
        match self {
            Self::Success | Self::Refund => PaymentStatus::Succeeded,
            Self::NotPay | Self::UserPaying | Self::Accept => PaymentStatus::Pending,
            Self::Closed | Self::Revoked => PaymentStatus::Closed,
            Self::PayError => PaymentStatus::Failed,
            Self::Unrecognized(_) => PaymentStatus::Unknown,
        }
    }
}

/// What a refund's state means to the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefundStatus {
    Pending,
    Succeeded,
    /// WeChat closed the refund; no money moved.
    Closed,
    /// The money left the merchant but could not reach the payer (e.g. a cancelled card). WeChat
    /// expects manual handling through its abnormal-refund API, after which the refund can still
    /// succeed, so this is not final, and it is not a failure either: refunding again could pay twice.
    Abnormal,
    Unknown,
}

impl RefundStatus {
    pub fn is_final(self) -> bool {
        match self {
            Self::Succeeded | Self::Closed => true,
            Self::Pending | Self::Abnormal | Self::Unknown => false,
        }
    }
}

/// Refund `status` (query) / `refund_status` (notification).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RefundState {
    Success,
    Closed,
    Processing,
    Abnormal,
    Unrecognized(String),
}

impl RefundState {
    pub fn parse(value: &str) -> Self {
        match value {
            "SUCCESS" => Self::Success,
            "CLOSED" => Self::Closed,
            "PROCESSING" => Self::Processing,
            "ABNORMAL" => Self::Abnormal,
            other => Self::Unrecognized(other.to_owned()),
        }
    }

    pub fn refund_status(&self) -> RefundStatus {
        match self {
            Self::Success => RefundStatus::Succeeded,
            Self::Closed => RefundStatus::Closed,
            Self::Processing => RefundStatus::Pending,
            Self::Abnormal => RefundStatus::Abnormal,
            Self::Unrecognized(_) => RefundStatus::Unknown,
        }
    }
}

/// How to treat a non-2xx answer (see [`crate::wire::ErrorResponse`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// WeChat refused the request itself (parameters, auth, signature); nothing happened, and sending
    /// the same request again will fail the same way.
    Rejected,
    /// The order or refund does not exist (`ORDER_NOT_EXIST`, `RESOURCE_NOT_EXISTS`).
    NotFound,
    /// Rate limited; nothing happened, retry later.
    RateLimited,
    /// WeChat-side error or unknown code: the call may or may not have taken effect. Retry with the
    /// same parameters or query.
    Unknown,
}

/// Classifies an error answer by HTTP status and `code`. Any 5xx, and any code not listed, is
/// `Unknown`, never a definite failure.
pub fn classify_error(http_status: u16, code: &str) -> ErrorClass {
    if http_status >= 500 {
        return ErrorClass::Unknown;
    }
    match code {
        "ORDER_NOT_EXIST" | "RESOURCE_NOT_EXISTS" => ErrorClass::NotFound,
        "RATELIMIT_EXCEEDED" | "FREQUENCY_LIMITED" => ErrorClass::RateLimited,
        "PARAM_ERROR"
        | "INVALID_REQUEST"
        | "SIGN_ERROR"
        | "NO_AUTH"
        | "APPID_MCHID_NOT_MATCH"
        | "MCH_NOT_EXISTS"
        | "OUT_TRADE_NO_USED"
        | "ORDER_CLOSED"
        | "ORDERPAID"
        | "NOT_ENOUGH"
        | "INVALID_TRANSACTIONID"
        | "USER_ACCOUNT_ABNORMAL" => ErrorClass::Rejected,
        "SYSTEM_ERROR" | "SERVICE_UNAVAILABLE" | "BANK_ERROR" => ErrorClass::Unknown,
        _ => ErrorClass::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_trade_state_maps() {
        let table = [
            ("SUCCESS", PaymentStatus::Succeeded),
            ("REFUND", PaymentStatus::Succeeded),
            ("NOTPAY", PaymentStatus::Pending),
            ("CLOSED", PaymentStatus::Closed),
            ("REVOKED", PaymentStatus::Closed),
            ("USERPAYING", PaymentStatus::Pending),
            ("PAYERROR", PaymentStatus::Failed),
            ("ACCEPT", PaymentStatus::Pending),
        ];
        for (state, expected) in table {
            assert_eq!(
                TradeState::parse(state).payment_status(),
                expected,
                "{state}"
            );
        }
    }

    #[test]
    fn unknown_trade_states_are_never_final() {
        for state in ["", "success", "PAID", "SUCCESS ", "FINISHED"] {
            let status = TradeState::parse(state).payment_status();
            assert_eq!(status, PaymentStatus::Unknown, "{state:?}");
            assert!(!status.is_final());
        }
    }

    #[test]
    fn every_documented_refund_state_maps() {
        let table = [
            ("SUCCESS", RefundStatus::Succeeded, true),
            ("CLOSED", RefundStatus::Closed, true),
            ("PROCESSING", RefundStatus::Pending, false),
            ("ABNORMAL", RefundStatus::Abnormal, false),
            ("REFUNDCLOSE", RefundStatus::Unknown, false),
        ];
        for (state, expected, is_final) in table {
            let status = RefundState::parse(state).refund_status();
            assert_eq!(status, expected, "{state}");
            assert_eq!(status.is_final(), is_final, "{state}");
        }
    }

    #[test]
    fn only_pending_and_unknown_payments_are_open() {
        assert!(!PaymentStatus::Pending.is_final());
        assert!(!PaymentStatus::Unknown.is_final());
        assert!(PaymentStatus::Succeeded.is_final());
        assert!(PaymentStatus::Failed.is_final());
        assert!(PaymentStatus::Closed.is_final());
    }

    #[test]
    fn server_errors_and_unknown_codes_are_unknown() {
        assert_eq!(classify_error(500, "SYSTEM_ERROR"), ErrorClass::Unknown);
        assert_eq!(classify_error(503, "PARAM_ERROR"), ErrorClass::Unknown);
        assert_eq!(classify_error(400, "SOMETHING_NEW"), ErrorClass::Unknown);
        assert_eq!(classify_error(404, "ORDER_NOT_EXIST"), ErrorClass::NotFound);
        // A prepay of a trade already paid: final, and the core asks the channel what happened.
        assert_eq!(classify_error(400, "ORDERPAID"), ErrorClass::Rejected);
        assert_eq!(classify_error(401, "SIGN_ERROR"), ErrorClass::Rejected);
        assert_eq!(
            classify_error(429, "RATELIMIT_EXCEEDED"),
            ErrorClass::RateLimited
        );
    }
}
