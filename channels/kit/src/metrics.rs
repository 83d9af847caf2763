//! Counters every adapter exports on `/metrics`.
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder};

/// The Content-Type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

use crate::pb;

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    channel: &'static str,
    /// Callbacks by outcome: accepted (forwarded and acknowledged), duplicate, rejected,
    /// forward_failed, body_timeout, and the three ways of being shed with 503:
    /// shed_receiving (over `ADAPTER_CALLBACK_MAX_RECEIVING`), shed_verifying (over
    /// `ADAPTER_CALLBACK_MAX_VERIFYING`), shed (verified, but over
    /// `ADAPTER_CALLBACK_MAX_IN_FLIGHT`).
    pub callbacks: IntCounterVec,
    /// Callback deadlines that ran out, by phase: header (connection closed), body, forward
    /// (the core did not acknowledge within the forward budget).
    pub callback_timeouts: IntCounterVec,
    /// `channel.v1.ChannelAdapter` calls refused for their credential, by reason (missing,
    /// malformed, wrong).
    pub grpc_auth_failures: IntCounterVec,
    /// Refused callbacks by reason (bad_signature, unknown_key, stale_timestamp, …, and too_large
    /// for a body over `ADAPTER_CALLBACK_MAX_BODY_BYTES`).
    pub callback_rejections: IntCounterVec,
    /// Calls to the platform by operation and outcome.
    pub platform_requests: IntCounterVec,
    /// Duration of calls to the platform by operation.
    pub platform_request_duration: HistogramVec,
    /// Server-side gRPC latency by service and method (time to the response headers).
    pub grpc_request_duration: HistogramVec,
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
        let platform_request_duration = HistogramVec::new(
            HistogramOpts::new(
                "adapter_platform_request_duration_seconds",
                "Duration of calls to the payment platform, by operation.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["channel", "op"],
        )?;
        registry.register(Box::new(platform_request_duration.clone()))?;
        let grpc_request_duration = HistogramVec::new(
            HistogramOpts::new(
                "adapter_grpc_request_duration_seconds",
                "Server-side gRPC latency to the response headers, by service and method.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["service", "method"],
        )?;
        registry.register(Box::new(grpc_request_duration.clone()))?;
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(Self {
            platform_request_duration,
            grpc_request_duration,
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
            callback_timeouts: reg(
                "adapter_callback_timeouts_total",
                "Callback deadlines that ran out, by phase (header, body, forward).",
                &["channel", "phase"],
            )?,
            grpc_auth_failures: reg(
                "adapter_grpc_auth_failures_total",
                "ChannelAdapter calls refused as UNAUTHENTICATED, by reason (missing, malformed, wrong).",
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
