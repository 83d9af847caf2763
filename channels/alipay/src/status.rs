//! Alipay `trade_status`, response `code`/`sub_code` and refund-query results mapped to the outcomes
//! the core acts on. Unlisted strings map to `Unknown`: only an explicit success or failure is final.

/// What a payment's state means to the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PaymentStatus {
    Pending,
    Succeeded,
    Failed,
    /// The trade can no longer be paid.
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

/// `trade_status` of a query answer or notification.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TradeStatus {
    WaitBuyerPay,
    /// Closed unpaid at timeout, **or** fully refunded after payment. A `TRADE_CLOSED` seen for an
    /// attempt already recorded as paid is a full refund, never a reason to un-pay it.
    TradeClosed,
    /// Paid and still refundable.
    TradeSuccess,
    /// Paid and no longer refundable.
    TradeFinished,
    Unrecognized(String),
}

impl TradeStatus {
    pub fn parse(value: &str) -> Self {
        match value {
            "WAIT_BUYER_PAY" => Self::WaitBuyerPay,
            "TRADE_CLOSED" => Self::TradeClosed,
            "TRADE_SUCCESS" => Self::TradeSuccess,
            "TRADE_FINISHED" => Self::TradeFinished,
            other => Self::Unrecognized(other.to_owned()),
        }
    }

    pub fn payment_status(&self) -> PaymentStatus {
        match self {
            Self::WaitBuyerPay => PaymentStatus::Pending,
            Self::TradeClosed => PaymentStatus::Closed,
            Self::TradeSuccess | Self::TradeFinished => PaymentStatus::Succeeded,
            Self::Unrecognized(_) => PaymentStatus::Unknown,
        }
    }
}

/// What a synchronous answer's `code`/`sub_code` say about the call itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallOutcome {
    /// `10000`: the call succeeded (for `alipay.trade.refund`, the refund is done).
    Success,
    /// `10003`: order created, payer still paying (e.g. entering a password); query later.
    InProgress,
    /// `40004` + `ACQ.TRADE_NOT_EXIST`. For a precreated QR code this only means the buyer has not
    /// scanned yet (Alipay creates the trade on scan), so it is **not** a payment failure.
    TradeNotExist,
    /// `40005`: rate limited; nothing happened, call again later.
    RateLimited,
    /// The call was refused and had no effect: `20001`, `40001`, `40002`, `40003`, `40006`, or a
    /// `40004` business failure other than the ones above.
    Rejected,
    /// `20000`, a system-error `sub_code`, or any code not listed: the call may or may not have taken
    /// effect. Query, or retry with the same `out_trade_no` / `out_request_no`.
    Unknown,
}

impl CallOutcome {
    /// Whether the answer settles what happened to this call (as opposed to "ask again").
    pub fn is_definite(self) -> bool {
        match self {
            Self::Success | Self::TradeNotExist | Self::RateLimited | Self::Rejected => true,
            Self::InProgress | Self::Unknown => false,
        }
    }
}

/// `sub_code`s that mean "system busy, outcome unknown" rather than a business refusal. Alipay
/// sometimes prefixes them with `aop.`.
const UNKNOWN_SUB_CODES: [&str; 4] = [
    "ACQ.SYSTEM_ERROR",
    "isp.unknow-error",
    "aop.unknow-error",
    "isp.unknown-error",
];

fn sub_code_is(sub_code: Option<&str>, expected: &str) -> bool {
    sub_code.is_some_and(|s| s == expected || s.strip_prefix("aop.") == Some(expected))
}

/// Classifies a response node's `code` and `sub_code`.
pub fn classify(code: &str, sub_code: Option<&str>) -> CallOutcome {
    if UNKNOWN_SUB_CODES
        .iter()
        .any(|unknown| sub_code_is(sub_code, unknown))
    {
        return CallOutcome::Unknown;
    }
    match code {
        "10000" => CallOutcome::Success,
        "10003" => CallOutcome::InProgress,
        "20000" => CallOutcome::Unknown,
        "40004" if sub_code_is(sub_code, "ACQ.TRADE_NOT_EXIST") => CallOutcome::TradeNotExist,
        "40004" | "20001" | "40001" | "40002" | "40003" | "40006" => CallOutcome::Rejected,
        "40005" => CallOutcome::RateLimited,
        _ => CallOutcome::Unknown,
    }
}

/// What a refund's state means to the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefundStatus {
    /// No `refund_status`: "not received, or failed" (or, right after a `fund_change: N` answer,
    /// not refunded yet). Never a success; resending the refund with the **same**
    /// `out_request_no` is safe (Alipay's idempotent retry) and its answer tells which.
    Absent,
    Succeeded,
    Unknown,
}

impl RefundStatus {
    pub fn is_final(self) -> bool {
        match self {
            Self::Succeeded => true,
            Self::Absent | Self::Unknown => false,
        }
    }
}

/// `refund_status` of a `10000` refund-query answer. `REFUND_SUCCESS` is the only documented value;
/// its absence means "not received or failed", and a query sent too soon after the refund can miss
/// one that succeeds later, so absence is neither a success nor a failure.
pub fn refund_query_status(refund_status: Option<&str>) -> RefundStatus {
    match refund_status {
        Some("REFUND_SUCCESS") => RefundStatus::Succeeded,
        None | Some("") => RefundStatus::Absent,
        Some(_) => RefundStatus::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_trade_status_maps() {
        let table = [
            ("WAIT_BUYER_PAY", PaymentStatus::Pending),
            ("TRADE_CLOSED", PaymentStatus::Closed),
            ("TRADE_SUCCESS", PaymentStatus::Succeeded),
            ("TRADE_FINISHED", PaymentStatus::Succeeded),
            ("TRADE_PENDING", PaymentStatus::Unknown),
            ("trade_success", PaymentStatus::Unknown),
            ("", PaymentStatus::Unknown),
        ];
        for (status, expected) in table {
            assert_eq!(
                TradeStatus::parse(status).payment_status(),
                expected,
                "{status:?}"
            );
        }
        assert!(!PaymentStatus::Unknown.is_final());
        assert!(!PaymentStatus::Pending.is_final());
    }

    #[test]
    fn response_codes_classify() {
        let table = [
            ("10000", None, CallOutcome::Success),
            ("10003", None, CallOutcome::InProgress),
            ("20000", Some("isp.unknow-error"), CallOutcome::Unknown),
            ("20000", None, CallOutcome::Unknown),
            ("40004", Some("ACQ.SYSTEM_ERROR"), CallOutcome::Unknown),
            ("40004", Some("aop.ACQ.SYSTEM_ERROR"), CallOutcome::Unknown),
            ("20000", Some("aop.ACQ.SYSTEM_ERROR"), CallOutcome::Unknown),
            (
                "40004",
                Some("ACQ.TRADE_NOT_EXIST"),
                CallOutcome::TradeNotExist,
            ),
            ("40004", Some("ACQ.TRADE_HAS_CLOSE"), CallOutcome::Rejected),
            (
                "40004",
                Some("ACQ.SELLER_BALANCE_NOT_ENOUGH"),
                CallOutcome::Rejected,
            ),
            (
                "40002",
                Some("isv.invalid-signature"),
                CallOutcome::Rejected,
            ),
            ("40001", None, CallOutcome::Rejected),
            ("40003", None, CallOutcome::Rejected),
            ("40006", None, CallOutcome::Rejected),
            ("20001", None, CallOutcome::Rejected),
            ("40005", None, CallOutcome::RateLimited),
            ("50000", None, CallOutcome::Unknown),
            ("", None, CallOutcome::Unknown),
        ];
        for (code, sub_code, expected) in table {
            assert_eq!(classify(code, sub_code), expected, "{code} {sub_code:?}");
        }
        assert!(!CallOutcome::Unknown.is_definite());
        assert!(!CallOutcome::InProgress.is_definite());
    }

    #[test]
    fn refund_query_statuses_map() {
        assert_eq!(
            refund_query_status(Some("REFUND_SUCCESS")),
            RefundStatus::Succeeded
        );
        assert_eq!(refund_query_status(None), RefundStatus::Absent);
        assert_eq!(refund_query_status(Some("")), RefundStatus::Absent);
        assert_eq!(
            refund_query_status(Some("REFUND_FAIL")),
            RefundStatus::Unknown
        );
        assert!(RefundStatus::Succeeded.is_final());
        assert!(!RefundStatus::Absent.is_final());
        assert!(!RefundStatus::Unknown.is_final());
    }
}
