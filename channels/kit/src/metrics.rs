//! Counters every adapter exports on `/metrics`.
use prometheus::{IntCounterVec, Opts, Registry, TextEncoder};

use crate::pb;

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    channel: &'static str,
    /// Callbacks by outcome: accepted (forwarded and acknowledged), rejected, forward_failed.
    pub callbacks: IntCounterVec,
    /// Refused callbacks by reason (bad_signature, unknown_key, stale_timestamp, …).
    pub callback_rejections: IntCounterVec,
    /// Calls to the platform by operation and outcome.
    pub platform_requests: IntCounterVec,
}

impl Metrics {
    pub fn new(channel: pb::Channel) -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let reg =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
                let c = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        Ok(Self {
            channel: channel_label(channel),
            callbacks: reg(
                "adapter_callbacks_total",
                "Platform callbacks by outcome (accepted = forwarded to the core and acknowledged).",
                &["channel", "outcome"],
            )?,
            callback_rejections: reg(
                "adapter_callback_rejections_total",
                "Platform callbacks refused before forwarding, by reason.",
                &["channel", "reason"],
            )?,
            platform_requests: reg(
                "adapter_platform_requests_total",
                "Calls to the payment platform by operation and outcome.",
                &["channel", "op", "outcome"],
            )?,
            registry,
        })
    }

    pub fn channel(&self) -> &'static str {
        self.channel
    }

    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}

pub fn channel_label(c: pb::Channel) -> &'static str {
    match c {
        pb::Channel::Wechat => "wechat",
        pb::Channel::Alipay => "alipay",
        pb::Channel::Unionpay => "unionpay",
        pb::Channel::Unspecified => "unspecified",
    }
}
