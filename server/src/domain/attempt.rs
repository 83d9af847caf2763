//! Payment attempts (支付流水): one try at collecting an order's money through one channel.
//!
//! ```text
//! INIT ─▶ PAYING ─▶ SUCCEEDED
//!   │        ├────▶ FAILED ──┐
//!   └────────┴────▶ CLOSED ──┴─▶ SUCCEEDED (the channel says the money moved after all)
//! ```
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttemptStatus {
    Init,
    Paying,
    Succeeded,
    Failed,
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttemptEvent {
    /// The channel's prepay answered: the payer can pay now.
    Prepared,
    /// The channel confirmed the payment.
    Succeeded,
    /// The channel said the payment failed (final).
    Failed,
    /// Closed at the channel (unpaid), by us or by the channel's own expiry.
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("attempt is {from}; {event:?} is not allowed in that state")]
pub struct IllegalAttemptTransition {
    pub from: AttemptStatus,
    pub event: AttemptEvent,
}

impl AttemptStatus {
    pub const ALL: [AttemptStatus; 5] = [
        AttemptStatus::Init,
        AttemptStatus::Paying,
        AttemptStatus::Succeeded,
        AttemptStatus::Failed,
        AttemptStatus::Closed,
    ];

    /// The one transition function for attempts.
    ///
    /// A success is accepted after FAILED or CLOSED: if the channel says money moved, it moved,
    /// and hiding it would lose a payment. Everything else out of a final state is refused.
    pub fn apply(self, event: AttemptEvent) -> Result<AttemptStatus, IllegalAttemptTransition> {
        use AttemptEvent as E;
        use AttemptStatus as S;
        Ok(match (self, event) {
            (S::Init, E::Prepared) => S::Paying,
            (S::Init | S::Paying | S::Failed | S::Closed, E::Succeeded) => S::Succeeded,
            (S::Init | S::Paying, E::Failed) => S::Failed,
            (S::Init | S::Paying, E::Closed) => S::Closed,
            (S::Paying | S::Succeeded | S::Failed | S::Closed, _) => {
                return Err(IllegalAttemptTransition { from: self, event });
            }
        })
    }

    /// Open attempts hold the order's one "open attempt" slot.
    pub fn is_open(self) -> bool {
        match self {
            AttemptStatus::Init | AttemptStatus::Paying => true,
            AttemptStatus::Succeeded | AttemptStatus::Failed | AttemptStatus::Closed => false,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AttemptStatus::Init => "INIT",
            AttemptStatus::Paying => "PAYING",
            AttemptStatus::Succeeded => "SUCCEEDED",
            AttemptStatus::Failed => "FAILED",
            AttemptStatus::Closed => "CLOSED",
        }
    }
}

impl fmt::Display for AttemptStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AttemptStatus {
    type Err = super::order::UnknownStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AttemptStatus::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| super::order::UnknownStatus(s.to_owned()))
    }
}

/// What a channel says about a trade. Only `Succeeded`, `Failed` and `Closed` are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TradeState {
    Pending,
    Succeeded,
    Failed,
    Closed,
    NotFound,
    Unknown,
}

impl TradeState {
    pub fn as_str(self) -> &'static str {
        match self {
            TradeState::Pending => "PENDING",
            TradeState::Succeeded => "SUCCEEDED",
            TradeState::Failed => "FAILED",
            TradeState::Closed => "CLOSED",
            TradeState::NotFound => "NOT_FOUND",
            TradeState::Unknown => "UNKNOWN",
        }
    }
}

/// The payment platforms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    Wechat,
    Alipay,
    Unionpay,
}

impl Channel {
    pub const ALL: [Channel; 3] = [Channel::Wechat, Channel::Alipay, Channel::Unionpay];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Wechat => "WECHAT",
            Channel::Alipay => "ALIPAY",
            Channel::Unionpay => "UNIONPAY",
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Channel {
    type Err = super::order::UnknownStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Channel::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| super::order::UnknownStatus(s.to_owned()))
    }
}

/// How the payer pays; each belongs to exactly one channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PayMethod {
    WechatJsapi,
    WechatNative,
    AlipayQr,
    AlipayPage,
    AlipayApp,
    UnionpayFront,
}

impl PayMethod {
    pub const ALL: [PayMethod; 6] = [
        PayMethod::WechatJsapi,
        PayMethod::WechatNative,
        PayMethod::AlipayQr,
        PayMethod::AlipayPage,
        PayMethod::AlipayApp,
        PayMethod::UnionpayFront,
    ];

    pub fn channel(self) -> Channel {
        match self {
            PayMethod::WechatJsapi | PayMethod::WechatNative => Channel::Wechat,
            PayMethod::AlipayQr | PayMethod::AlipayPage | PayMethod::AlipayApp => Channel::Alipay,
            PayMethod::UnionpayFront => Channel::Unionpay,
        }
    }

    /// Methods that cannot work without the payer's channel identity.
    pub fn needs_payer_id(self) -> bool {
        match self {
            PayMethod::WechatJsapi => true,
            PayMethod::WechatNative
            | PayMethod::AlipayQr
            | PayMethod::AlipayPage
            | PayMethod::AlipayApp
            | PayMethod::UnionpayFront => false,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PayMethod::WechatJsapi => "WECHAT_JSAPI",
            PayMethod::WechatNative => "WECHAT_NATIVE",
            PayMethod::AlipayQr => "ALIPAY_QR",
            PayMethod::AlipayPage => "ALIPAY_PAGE",
            PayMethod::AlipayApp => "ALIPAY_APP",
            PayMethod::UnionpayFront => "UNIONPAY_FRONT",
        }
    }
}

impl FromStr for PayMethod {
    type Err = super::order::UnknownStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PayMethod::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| super::order::UnknownStatus(s.to_owned()))
    }
}

/// A channel's statement about one trade.
#[derive(Debug, Clone)]
pub struct PaymentResult {
    pub channel: Channel,
    /// Unique per channel; stable across redeliveries of the same notification.
    pub event_id: String,
    pub out_trade_no: String,
    pub state: TradeState,
    pub channel_trade_no: Option<String>,
    /// (minor units, currency) the channel says were paid.
    pub paid: Option<(i64, String)>,
    pub paid_at: Option<DateTime<Utc>>,
    pub channel_status: String,
}

/// A payment attempt as the use cases hand it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub id: uuid::Uuid,
    pub order_id: uuid::Uuid,
    pub out_trade_no: String,
    pub channel: Channel,
    pub method: PayMethod,
    pub amount_minor: i64,
    pub currency: String,
    pub status: AttemptStatus,
    pub channel_trade_no: Option<String>,
    pub paid_minor: Option<i64>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
    pub succeeded_at: Option<chrono::DateTime<chrono::Utc>>,
    pub pay_deadline: chrono::DateTime<chrono::Utc>,
}

#[cfg(test)]
mod tests {
    use super::AttemptEvent as E;
    use super::AttemptStatus as S;
    use super::*;

    #[test]
    fn every_state_event_pair_matches_the_table() {
        let table: &[(S, E, S)] = &[
            (S::Init, E::Prepared, S::Paying),
            (S::Init, E::Succeeded, S::Succeeded),
            (S::Paying, E::Succeeded, S::Succeeded),
            (S::Failed, E::Succeeded, S::Succeeded),
            (S::Closed, E::Succeeded, S::Succeeded),
            (S::Init, E::Failed, S::Failed),
            (S::Paying, E::Failed, S::Failed),
            (S::Init, E::Closed, S::Closed),
            (S::Paying, E::Closed, S::Closed),
        ];
        let events = [E::Prepared, E::Succeeded, E::Failed, E::Closed];
        for from in S::ALL {
            for ev in events {
                let want = table
                    .iter()
                    .find(|(f, e, _)| *f == from && *e == ev)
                    .map(|t| t.2);
                assert_eq!(from.apply(ev).ok(), want, "{from} + {ev:?}");
            }
        }
    }

    #[test]
    fn methods_belong_to_one_channel_and_names_round_trip() {
        for m in PayMethod::ALL {
            assert_eq!(m.as_str().parse::<PayMethod>().ok(), Some(m));
            assert!(m.as_str().starts_with(m.channel().as_str()));
        }
        for c in Channel::ALL {
            assert_eq!(c.as_str().parse::<Channel>().ok(), Some(c));
        }
    }

    #[test]
    fn open_means_init_or_paying() {
        for s in S::ALL {
            assert_eq!(s.is_open(), matches!(s, S::Init | S::Paying));
        }
    }
}
