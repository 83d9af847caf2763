//! The refund state machine, beside the order and attempt machines: the only place that decides
//! which refund status follows which. Every path (the creating call's channel answer, refund
//! notifications, the refund query job) goes through [`RefundStatus::apply`].
//!
//! ```text
//! PENDING ─▶ PROCESSING ─▶ SUCCEEDED
//!    │           └───────▶ FAILED   (releases its amount)
//!    └──────────▶ SUCCEEDED | FAILED (a channel that answers synchronously)
//! ```
//!
//! Final states accept nothing: a "failed" after a success, or a "succeeded" after a failure,
//! is a contradiction from the channel that a person must look at (the failed refund's amount
//! may already be reserved by another refund), never something to apply.
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};

use super::order::UnknownStatus;
use super::{Channel, FieldError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefundStatus {
    /// Recorded, amount reserved; the channel has not answered yet.
    Pending,
    /// Accepted by the channel, or its outcome is unknown: queried until it is known.
    Processing,
    Succeeded,
    /// Refused or closed by the channel; its amount is released.
    Failed,
}

/// What a channel said about a refund (the answer to the creating call, a notification, a
/// query), or that the call got no usable answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefundEvent {
    /// Accepted but not done, or no answer that can be trusted (timeout, unreachable, UNKNOWN):
    /// the refund may exist at the channel, so it is in flight until a query says otherwise.
    InFlight,
    Succeeded,
    /// Final refusal or closure by the channel.
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("refund is {from}; {event:?} is not allowed in that state")]
pub struct IllegalRefundTransition {
    pub from: RefundStatus,
    pub event: RefundEvent,
}

impl RefundStatus {
    pub const ALL: [RefundStatus; 4] = [
        RefundStatus::Pending,
        RefundStatus::Processing,
        RefundStatus::Succeeded,
        RefundStatus::Failed,
    ];

    /// The one transition function for refunds.
    ///
    /// `Processing + InFlight` stays `Processing` (a query that still knows nothing is legal and
    /// changes nothing); every event on a final state is refused.
    ///
    /// # Errors
    /// [`IllegalRefundTransition`] when `event` has no edge out of `self`.
    pub fn apply(self, event: RefundEvent) -> Result<RefundStatus, IllegalRefundTransition> {
        use RefundEvent as E;
        use RefundStatus as S;
        Ok(match (self, event) {
            (S::Pending | S::Processing, E::InFlight) => S::Processing,
            (S::Pending | S::Processing, E::Succeeded) => S::Succeeded,
            (S::Pending | S::Processing, E::Failed) => S::Failed,
            (S::Succeeded | S::Failed, _) => {
                return Err(IllegalRefundTransition { from: self, event });
            }
        })
    }

    pub fn is_final(self) -> bool {
        match self {
            RefundStatus::Succeeded | RefundStatus::Failed => true,
            RefundStatus::Pending | RefundStatus::Processing => false,
        }
    }

    /// Whether the refund's amount counts against what remains refundable.
    pub fn holds_amount(self) -> bool {
        match self {
            RefundStatus::Pending | RefundStatus::Processing | RefundStatus::Succeeded => true,
            RefundStatus::Failed => false,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RefundStatus::Pending => "PENDING",
            RefundStatus::Processing => "PROCESSING",
            RefundStatus::Succeeded => "SUCCEEDED",
            RefundStatus::Failed => "FAILED",
        }
    }
}

impl fmt::Display for RefundStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RefundStatus {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RefundStatus::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

/// What a channel says about a refund, in the channel contract's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChannelRefundState {
    Processing,
    Succeeded,
    Failed,
    /// The channel has no record of this refund number.
    NotFound,
    Unknown,
}

impl ChannelRefundState {
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelRefundState::Processing => "PROCESSING",
            ChannelRefundState::Succeeded => "SUCCEEDED",
            ChannelRefundState::Failed => "FAILED",
            ChannelRefundState::NotFound => "NOT_FOUND",
            ChannelRefundState::Unknown => "UNKNOWN",
        }
    }

    /// The event this state is for the machine. "Not found" is in flight, never failed: the
    /// creating request may still be on its way, or the platform may answer it later; the query
    /// job re-sends the same number where that is safe.
    pub fn event(self) -> RefundEvent {
        match self {
            ChannelRefundState::Succeeded => RefundEvent::Succeeded,
            ChannelRefundState::Failed => RefundEvent::Failed,
            ChannelRefundState::Processing
            | ChannelRefundState::NotFound
            | ChannelRefundState::Unknown => RefundEvent::InFlight,
        }
    }
}

/// A channel's statement about one refund.
#[derive(Debug, Clone)]
pub struct RefundResult {
    pub channel: Channel,
    pub out_refund_no: String,
    pub state: ChannelRefundState,
    pub channel_refund_no: Option<String>,
    /// (minor units, currency) the channel says were refunded by this refund.
    pub refunded: Option<(i64, String)>,
    pub succeeded_at: Option<DateTime<Utc>>,
    pub channel_status: String,
}

/// A refund as the use cases hand it out: what the API shows of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refund {
    pub id: uuid::Uuid,
    pub app_id: String,
    pub order_id: uuid::Uuid,
    pub attempt_id: uuid::Uuid,
    pub refund_request_no: String,
    pub out_refund_no: String,
    pub channel: Channel,
    pub amount_minor: i64,
    pub currency: String,
    pub reason: String,
    pub status: RefundStatus,
    pub channel_refund_no: Option<String>,
    pub failure_reason: Option<String>,
    pub requested_by: String,
    pub operator: Option<String>,
    pub needs_attention: bool,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub succeeded_at: Option<DateTime<Utc>>,
}

/// Filters of ListRefunds; `after` is the (created_at, id) of the last refund of the previous
/// page.
#[derive(Debug, Clone, Default)]
pub struct RefundFilter {
    pub order_id: Option<uuid::Uuid>,
    pub statuses: Vec<RefundStatus>,
    pub created_from: Option<DateTime<Utc>>,
    pub created_to: Option<DateTime<Utc>>,
    pub after: Option<(DateTime<Utc>, uuid::Uuid)>,
    pub limit: i64,
}

/// The longest refund reason: WeChat's `reason` is at most 80 characters, the shortest limit of
/// the channels that show one to the payer.
pub const MAX_REASON_CHARS: usize = 80;

/// A CreateRefund request, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRefund {
    pub order_id: super::OrderId,
    pub amount: super::Money,
    pub reason: String,
    pub refund_request_no: String,
    pub operator: Option<String>,
}

impl NewRefund {
    /// # Errors
    /// A [`FieldError`] naming the first malformed field.
    pub fn parse(
        order_id: &str,
        amount: Option<(i64, &str)>,
        reason: &str,
        refund_request_no: &str,
        operator: &str,
    ) -> Result<Self, FieldError> {
        let order_id = super::OrderId::parse("order_id", order_id)?;
        let (minor, currency) = amount.ok_or_else(|| FieldError::new("amount", "is required"))?;
        if minor <= 0 {
            return Err(FieldError::new(
                "amount.amount_minor",
                format!("must be positive, got {minor}"),
            ));
        }
        let currency: super::Currency =
            currency
                .parse()
                .map_err(|e: super::money::UnsupportedCurrency| {
                    FieldError::new("amount.currency", e.to_string())
                })?;
        let amount = super::Money::new(minor, currency)
            .map_err(|e| FieldError::new("amount.amount_minor", e.to_string()))?;
        let n = refund_request_no.len();
        if !(6..=64).contains(&n)
            || !refund_request_no
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(FieldError::new(
                "refund_request_no",
                "must be 6..=64 characters of [A-Za-z0-9_-]",
            ));
        }
        if reason.chars().count() > MAX_REASON_CHARS {
            return Err(FieldError::new(
                "reason",
                format!("must be at most {MAX_REASON_CHARS} characters"),
            ));
        }
        if reason.chars().any(char::is_control) {
            return Err(FieldError::new(
                "reason",
                "must not contain control characters",
            ));
        }
        let operator = if operator.is_empty() {
            None
        } else if operator.chars().count() <= 64
            && !operator.chars().any(char::is_control)
            && operator.trim() == operator
        {
            Some(operator.to_owned())
        } else {
            return Err(FieldError::new(
                "operator",
                "must be at most 64 characters, without control characters or surrounding spaces",
            ));
        };
        Ok(Self {
            order_id,
            amount,
            reason: reason.to_owned(),
            refund_request_no: refund_request_no.to_owned(),
            operator,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::RefundEvent as E;
    use super::RefundStatus as S;
    use super::*;

    const EVENTS: [RefundEvent; 3] = [E::InFlight, E::Succeeded, E::Failed];

    /// The whole table, written out independently of `apply`: every (state, event) pair.
    #[test]
    fn every_state_event_pair_matches_the_table() {
        let table: &[(S, E, S)] = &[
            (S::Pending, E::InFlight, S::Processing),
            (S::Pending, E::Succeeded, S::Succeeded),
            (S::Pending, E::Failed, S::Failed),
            (S::Processing, E::InFlight, S::Processing),
            (S::Processing, E::Succeeded, S::Succeeded),
            (S::Processing, E::Failed, S::Failed),
        ];
        let mut legal = 0;
        for from in S::ALL {
            for ev in EVENTS {
                let want = table
                    .iter()
                    .find(|(f, e, _)| *f == from && *e == ev)
                    .map(|t| t.2);
                match (from.apply(ev), want) {
                    (Ok(to), Some(w)) => {
                        assert_eq!(to, w, "{from} + {ev:?}");
                        legal += 1;
                    }
                    (Err(e), None) => {
                        assert_eq!(e, IllegalRefundTransition { from, event: ev });
                        assert!(e.to_string().contains(from.as_str()), "{e}");
                    }
                    (got, want) => panic!("{from} + {ev:?}: got {got:?}, want {want:?}"),
                }
            }
        }
        assert_eq!(legal, 6);
    }

    #[test]
    fn final_states_accept_nothing_and_only_failed_releases_its_amount() {
        for s in S::ALL {
            assert_eq!(
                s.is_final(),
                EVENTS.iter().all(|e| s.apply(*e).is_err()),
                "{s}"
            );
            assert_eq!(s.holds_amount(), s != S::Failed, "{s}");
        }
    }

    #[test]
    fn not_found_and_unknown_are_in_flight_never_failed() {
        use ChannelRefundState as C;
        assert_eq!(C::NotFound.event(), E::InFlight);
        assert_eq!(C::Unknown.event(), E::InFlight);
        assert_eq!(C::Processing.event(), E::InFlight);
        assert_eq!(C::Succeeded.event(), E::Succeeded);
        assert_eq!(C::Failed.event(), E::Failed);
    }

    #[test]
    fn statuses_round_trip_through_text() {
        for s in S::ALL {
            assert_eq!(s.as_str().parse::<S>().ok(), Some(s));
        }
        assert!("succeeded".parse::<S>().is_err());
    }

    fn parse(
        amount: i64,
        cur: &str,
        reason: &str,
        no: &str,
        op: &str,
    ) -> Result<NewRefund, String> {
        NewRefund::parse(
            "0192d5a8-7b7c-7cc3-9a43-2bd0d0c5a001",
            Some((amount, cur)),
            reason,
            no,
            op,
        )
        .map_err(|e| e.field.to_owned())
    }

    #[test]
    fn each_malformed_field_is_named() {
        assert_eq!(
            parse(0, "CNY", "", "R-000001", ""),
            Err("amount.amount_minor".into())
        );
        assert_eq!(
            parse(-5, "CNY", "", "R-000001", ""),
            Err("amount.amount_minor".into())
        );
        assert_eq!(
            parse(5, "XXX", "", "R-000001", ""),
            Err("amount.currency".into())
        );
        assert_eq!(
            parse(5, "CNY", "", "R-1", ""),
            Err("refund_request_no".into())
        );
        assert_eq!(
            parse(5, "CNY", "", "R 000001", ""),
            Err("refund_request_no".into())
        );
        assert_eq!(
            parse(5, "CNY", &"x".repeat(81), "R-000001", ""),
            Err("reason".into())
        );
        assert_eq!(
            parse(5, "CNY", "a\nb", "R-000001", ""),
            Err("reason".into())
        );
        assert_eq!(
            parse(5, "CNY", "", "R-000001", " ops"),
            Err("operator".into())
        );
        assert!(parse(5, "CNY", &"退".repeat(80), &"R".repeat(64), "张三").is_ok());
        assert_eq!(
            NewRefund::parse("nope", Some((5, "CNY")), "", "R-000001", "")
                .map_err(|e| e.field.to_owned()),
            Err("order_id".into())
        );
        assert_eq!(
            NewRefund::parse(
                "0192d5a8-7b7c-7cc3-9a43-2bd0d0c5a001",
                None,
                "",
                "R-000001",
                ""
            )
            .map_err(|e| e.field.to_owned()),
            Err("amount".into())
        );
    }
}
