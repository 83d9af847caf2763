//! Domain values to `channel.v1` messages and back.
use chrono::{DateTime, Utc};
use payproto::channel::v1 as cpb;

use crate::domain::{Channel, PayMethod, PaymentResult, TradeState};

/// A protobuf timestamp of `t`.
pub fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

pub fn channel_to_pb(c: Channel) -> cpb::Channel {
    match c {
        Channel::Wechat => cpb::Channel::Wechat,
        Channel::Alipay => cpb::Channel::Alipay,
        Channel::Unionpay => cpb::Channel::Unionpay,
    }
}

pub fn method_to_pb(m: PayMethod) -> cpb::PayMethod {
    match m {
        PayMethod::WechatJsapi => cpb::PayMethod::WechatJsapi,
        PayMethod::WechatNative => cpb::PayMethod::WechatNative,
        PayMethod::AlipayQr => cpb::PayMethod::AlipayQr,
        PayMethod::AlipayPage => cpb::PayMethod::AlipayPage,
        PayMethod::AlipayApp => cpb::PayMethod::AlipayApp,
        PayMethod::UnionpayFront => cpb::PayMethod::UnionpayFront,
    }
}

/// Converts a channel's answer into the core's result type. An unspecified state is UNKNOWN:
/// never final.
pub fn result_from_pb(channel: Channel, event_id: String, r: cpb::PaymentResult) -> PaymentResult {
    let state = match cpb::TradeState::try_from(r.state) {
        Ok(cpb::TradeState::Pending) => TradeState::Pending,
        Ok(cpb::TradeState::Succeeded) => TradeState::Succeeded,
        Ok(cpb::TradeState::Failed) => TradeState::Failed,
        Ok(cpb::TradeState::Closed) => TradeState::Closed,
        Ok(cpb::TradeState::NotFound) => TradeState::NotFound,
        Ok(cpb::TradeState::Unknown | cpb::TradeState::Unspecified) | Err(_) => TradeState::Unknown,
    };
    PaymentResult {
        channel,
        event_id,
        out_trade_no: r.out_trade_no,
        state,
        channel_trade_no: Some(r.channel_trade_no).filter(|s| !s.is_empty()),
        paid: r.paid.map(|a| (a.amount_minor, a.currency)),
        paid_at: r
            .paid_at
            .and_then(|t| DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0))),
        channel_status: r.channel_status,
    }
}
