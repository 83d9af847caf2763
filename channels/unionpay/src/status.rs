//! UnionPay `respCode` / `origRespCode` semantics, after the official demo's rules: a background
//! request's `00` only means "accepted"; `03`, `04` and `05` mean "outcome unknown, query again";
//! a query's own `respCode` says whether the *query* worked and `origRespCode` says what happened to
//! the transaction. Only an explicit success or failure of the transaction is final.

/// Codes that mean "still processing / outcome unknown: query again".
const QUERY_AGAIN: [&str; 3] = ["03", "04", "05"];

/// What the synchronous answer to a background request (refund, undo) says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubmitOutcome {
    /// `00`: accepted, **not** necessarily successful; wait for the notification or query.
    Accepted,
    /// `03`/`04`/`05`: unknown; query (at 1, 2, 4, 8, 16, 32 s for background transactions).
    Unknown,
    /// Any other code: the request failed and had no effect.
    Rejected,
}

/// Classifies the `respCode` of a background request's synchronous answer.
pub fn classify_submit(resp_code: &str) -> SubmitOutcome {
    match resp_code {
        "00" => SubmitOutcome::Accepted,
        code if QUERY_AGAIN.contains(&code) => SubmitOutcome::Unknown,
        _ => SubmitOutcome::Rejected,
    }
}

/// What a transaction's (payment or refund) state means to the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransactionStatus {
    /// Still processing; query again.
    Pending,
    Succeeded,
    /// UnionPay says the transaction failed.
    Failed,
    /// `34`, no such transaction: for a browser consume the payer may simply never have submitted
    /// the form, so this is not a failure before `payTimeout`.
    NotFound,
    /// The answer does not say (the query itself failed, or a code is missing); query again.
    Unknown,
}

impl TransactionStatus {
    pub fn is_final(self) -> bool {
        match self {
            Self::Succeeded | Self::Failed => true,
            Self::Pending | Self::NotFound | Self::Unknown => false,
        }
    }
}

/// Maps a query answer (`respCode`, `origRespCode`).
///
/// The demo calls any other outer `respCode` "failed", but that is the *query* failing (bad
/// parameters, throttling, …), which says nothing about the transaction: it maps to `Unknown`.
pub fn query_status(resp_code: &str, orig_resp_code: Option<&str>) -> TransactionStatus {
    match resp_code {
        "00" => match orig_resp_code {
            Some("00" | "A6") => TransactionStatus::Succeeded,
            Some(code) if QUERY_AGAIN.contains(&code) => TransactionStatus::Pending,
            Some("") | None => TransactionStatus::Unknown,
            Some(_) => TransactionStatus::Failed,
        },
        "34" => TransactionStatus::NotFound,
        code if QUERY_AGAIN.contains(&code) => TransactionStatus::Unknown,
        _ => TransactionStatus::Unknown,
    }
}

/// Maps the `respCode` of a background notification. `00` and `A6` (the demo's comment) are
/// success; UnionPay's notifications are not documented to report failures, so any other code is
/// `Unknown` and the query decides.
pub fn notify_status(resp_code: &str) -> TransactionStatus {
    match resp_code {
        "00" | "A6" => TransactionStatus::Succeeded,
        code if QUERY_AGAIN.contains(&code) => TransactionStatus::Pending,
        _ => TransactionStatus::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn submit_answers_classify() {
        assert_eq!(classify_submit("00"), SubmitOutcome::Accepted);
        for code in ["03", "04", "05"] {
            assert_eq!(classify_submit(code), SubmitOutcome::Unknown, "{code}");
        }
        for code in ["01", "02", "06", "12", "30", "61", ""] {
            assert_eq!(classify_submit(code), SubmitOutcome::Rejected, "{code}");
        }
    }

    #[test]
    fn query_answers_map() {
        let table = [
            ("00", Some("00"), TransactionStatus::Succeeded),
            ("00", Some("A6"), TransactionStatus::Succeeded),
            ("00", Some("03"), TransactionStatus::Pending),
            ("00", Some("04"), TransactionStatus::Pending),
            ("00", Some("05"), TransactionStatus::Pending),
            ("00", Some("01"), TransactionStatus::Failed),
            ("00", Some("61"), TransactionStatus::Failed),
            ("00", None, TransactionStatus::Unknown),
            ("00", Some(""), TransactionStatus::Unknown),
            ("34", None, TransactionStatus::NotFound),
            ("03", None, TransactionStatus::Unknown),
            ("04", Some("00"), TransactionStatus::Unknown),
            ("05", None, TransactionStatus::Unknown),
            ("10", None, TransactionStatus::Unknown),
            ("", None, TransactionStatus::Unknown),
        ];
        for (resp, orig, expected) in table {
            assert_eq!(query_status(resp, orig), expected, "{resp} {orig:?}");
        }
    }

    #[test]
    fn notifications_map() {
        assert_eq!(notify_status("00"), TransactionStatus::Succeeded);
        assert_eq!(notify_status("A6"), TransactionStatus::Succeeded);
        assert_eq!(notify_status("03"), TransactionStatus::Pending);
        assert_eq!(notify_status("99"), TransactionStatus::Unknown);
    }

    #[test]
    fn only_success_and_failure_are_final() {
        assert!(TransactionStatus::Succeeded.is_final());
        assert!(TransactionStatus::Failed.is_final());
        assert!(!TransactionStatus::Pending.is_final());
        assert!(!TransactionStatus::NotFound.is_final());
        assert!(!TransactionStatus::Unknown.is_final());
    }
}
