//! The order state machine: the only place that decides which status follows which. Every path
//! (API calls, channel results, jobs) goes through [`OrderStatus::apply`].
//!
//! ```text
//! PENDING ─▶ PAYING ─▶ PAID ─▶ PARTIALLY_REFUNDED ─▶ REFUNDED
//!    │   ◀──────┘ │       └────────────────────────────▲
//!    └────────────┴─▶ CLOSED ─▶ PAID (a late success still counts)
//! ```
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OrderStatus {
    Pending,
    Paying,
    Paid,
    PartiallyRefunded,
    Refunded,
    Closed,
}

/// Something that happened to an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OrderEvent {
    /// A payment attempt was opened at a channel (also while another one is open).
    PaymentStarted,
    /// The last open attempt failed or was closed; the payer may try again.
    PaymentAbandoned,
    /// A channel confirmed the payment. Accepted even on a CLOSED order: the money has moved.
    PaymentSucceeded,
    /// CloseOrder or expiry, while unpaid.
    Closed,
    /// A refund succeeded; `fully` when the refunded total now equals the paid amount.
    RefundSucceeded { fully: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("order is {from}; {event} is not allowed in that state")]
pub struct IllegalTransition {
    pub from: OrderStatus,
    pub event: OrderEvent,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 6] = [
        OrderStatus::Pending,
        OrderStatus::Paying,
        OrderStatus::Paid,
        OrderStatus::PartiallyRefunded,
        OrderStatus::Refunded,
        OrderStatus::Closed,
    ];

    /// The one transition function.
    ///
    /// # Errors
    /// [`IllegalTransition`] when `event` has no edge out of `self`. A `PaymentSucceeded` on an
    /// order that is already paid is refused here; the caller records it as a duplicate payment.
    pub fn apply(self, event: OrderEvent) -> Result<OrderStatus, IllegalTransition> {
        use OrderEvent as E;
        use OrderStatus as S;
        let next = match (self, event) {
            (S::Pending | S::Paying, E::PaymentStarted) => S::Paying,
            (S::Paying, E::PaymentAbandoned) => S::Pending,
            (S::Pending | S::Paying | S::Closed, E::PaymentSucceeded) => S::Paid,
            (S::Pending | S::Paying, E::Closed) => S::Closed,
            (S::Paid | S::PartiallyRefunded, E::RefundSucceeded { fully: false }) => {
                S::PartiallyRefunded
            }
            (S::Paid | S::PartiallyRefunded, E::RefundSucceeded { fully: true }) => S::Refunded,
            (
                S::Pending | S::Paying | S::Paid | S::PartiallyRefunded | S::Refunded | S::Closed,
                _,
            ) => return Err(IllegalTransition { from: self, event }),
        };
        Ok(next)
    }

    /// No event can move the order any more.
    pub fn is_terminal(self) -> bool {
        match self {
            OrderStatus::Refunded => true,
            OrderStatus::Pending
            | OrderStatus::Paying
            | OrderStatus::Paid
            | OrderStatus::PartiallyRefunded
            | OrderStatus::Closed => false,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "PENDING",
            OrderStatus::Paying => "PAYING",
            OrderStatus::Paid => "PAID",
            OrderStatus::PartiallyRefunded => "PARTIALLY_REFUNDED",
            OrderStatus::Refunded => "REFUNDED",
            OrderStatus::Closed => "CLOSED",
        }
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown order status {0:?}")]
pub struct UnknownStatus(pub String);

impl FromStr for OrderStatus {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        OrderStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

impl fmt::Display for OrderEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OrderEvent::PaymentStarted => "starting a payment",
            OrderEvent::PaymentAbandoned => "abandoning the payment",
            OrderEvent::PaymentSucceeded => "a successful payment",
            OrderEvent::Closed => "closing",
            OrderEvent::RefundSucceeded { fully: false } => "a partial refund",
            OrderEvent::RefundSucceeded { fully: true } => "a full refund",
        })
    }
}

/// An order as the use cases hand it out: what the API shows of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub id: uuid::Uuid,
    pub app_id: String,
    pub merchant_order_no: String,
    pub amount_minor: i64,
    pub currency: String,
    pub subject: String,
    pub metadata: serde_json::Value,
    pub status: OrderStatus,
    pub paid_minor: i64,
    pub refunded_minor: i64,
    pub version: i64,
    pub expires_at: chrono::DateTime<chrono::Utc>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
    pub closed_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl Order {
    /// The caller's metadata (string pairs, as CreateOrder stored them).
    pub fn metadata_map(&self) -> std::collections::BTreeMap<String, String> {
        serde_json::from_value(self.metadata.clone()).unwrap_or_default()
    }
}

/// Filters of ListOrders; `after` is the (created_at, id) of the last order of the previous
/// page.
#[derive(Debug, Clone, Default)]
pub struct OrderFilter {
    pub statuses: Vec<OrderStatus>,
    pub created_from: Option<chrono::DateTime<chrono::Utc>>,
    pub created_to: Option<chrono::DateTime<chrono::Utc>>,
    pub after: Option<(chrono::DateTime<chrono::Utc>, uuid::Uuid)>,
    pub limit: i64,
}

#[cfg(test)]
mod tests {
    use super::OrderEvent as E;
    use super::OrderStatus as S;
    use super::*;

    const EVENTS: [OrderEvent; 6] = [
        E::PaymentStarted,
        E::PaymentAbandoned,
        E::PaymentSucceeded,
        E::Closed,
        E::RefundSucceeded { fully: false },
        E::RefundSucceeded { fully: true },
    ];

    /// The whole table, written out independently of `apply`: every (state, event) pair.
    fn expected(from: S, event: E) -> Option<S> {
        let table: &[(S, E, S)] = &[
            (S::Pending, E::PaymentStarted, S::Paying),
            (S::Paying, E::PaymentStarted, S::Paying),
            (S::Paying, E::PaymentAbandoned, S::Pending),
            (S::Pending, E::PaymentSucceeded, S::Paid),
            (S::Paying, E::PaymentSucceeded, S::Paid),
            (S::Closed, E::PaymentSucceeded, S::Paid),
            (S::Pending, E::Closed, S::Closed),
            (S::Paying, E::Closed, S::Closed),
            (
                S::Paid,
                E::RefundSucceeded { fully: false },
                S::PartiallyRefunded,
            ),
            (S::Paid, E::RefundSucceeded { fully: true }, S::Refunded),
            (
                S::PartiallyRefunded,
                E::RefundSucceeded { fully: false },
                S::PartiallyRefunded,
            ),
            (
                S::PartiallyRefunded,
                E::RefundSucceeded { fully: true },
                S::Refunded,
            ),
        ];
        table
            .iter()
            .find(|(f, e, _)| *f == from && *e == event)
            .map(|(_, _, to)| *to)
    }

    #[test]
    fn every_state_event_pair_matches_the_table() {
        let mut legal = 0;
        for from in S::ALL {
            for event in EVENTS {
                match (from.apply(event), expected(from, event)) {
                    (Ok(to), Some(want)) => {
                        assert_eq!(to, want, "{from} + {event}");
                        legal += 1;
                    }
                    (Err(e), None) => {
                        assert_eq!(e, IllegalTransition { from, event });
                        assert!(e.to_string().contains(from.as_str()), "{e}");
                    }
                    (got, want) => panic!("{from} + {event}: got {got:?}, want {want:?}"),
                }
            }
        }
        assert_eq!(legal, 12);
    }

    #[test]
    fn terminal_states_accept_no_event() {
        for from in S::ALL {
            let any_edge = EVENTS.iter().any(|e| from.apply(*e).is_ok());
            assert_eq!(from.is_terminal(), !any_edge, "{from}");
        }
    }

    #[test]
    fn a_second_success_on_a_paid_order_is_refused() {
        for from in [S::Paid, S::PartiallyRefunded, S::Refunded] {
            assert!(from.apply(E::PaymentSucceeded).is_err());
        }
    }

    #[test]
    fn statuses_round_trip_through_text() {
        for s in S::ALL {
            assert_eq!(s.as_str().parse::<S>().ok(), Some(s));
        }
        assert!("paid".parse::<S>().is_err());
    }
}
