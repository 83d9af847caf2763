//! Prometheus metrics of the core, served as text on `/metrics`.
use prometheus::{IntCounter, IntCounterVec, Opts, Registry, TextEncoder};

/// Every metric `payd` exports, registered in its own registry (so tests running several apps in
/// one process do not collide).
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Finished gRPC calls by method and status code.
    pub grpc_requests: IntCounterVec,
    /// Requests refused before changing anything, by method and reason.
    pub rejected_requests: IntCounterVec,
    /// Order status changes by edge.
    pub order_transitions: IntCounterVec,
    /// Responses replayed from an idempotency key.
    pub idempotent_replays: IntCounterVec,
    /// Lock acquisitions by outcome (acquired, busy, error).
    pub lock_acquisitions: IntCounterVec,
    /// Writes refused because a newer lock holder had written the row.
    pub fence_rejections: IntCounter,
    /// Idempotency keys purged after their retention.
    pub idempotency_keys_purged: IntCounter,
    /// Channel results by channel, kind and what the core did with them.
    pub channel_events: IntCounterVec,
    /// Second successful payments of already paid orders: customers charged twice.
    pub duplicate_payments: IntCounterVec,
    /// Channel results whose amount or currency differs from the attempt's.
    pub amount_mismatches: IntCounterVec,
    /// Pay calls that reused an open attempt instead of calling the channel.
    pub attempts_reused: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let vec =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
                let c = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let grpc_requests = vec(
            "payd_grpc_requests_total",
            "Finished gRPC calls.",
            &["method", "code"],
        )?;
        let rejected_requests = vec(
            "payd_rejected_requests_total",
            "Requests refused without any change (invalid, unauthenticated, refused transition…).",
            &["method", "reason"],
        )?;
        let order_transitions = vec(
            "payd_order_transitions_total",
            "Order status changes.",
            &["from", "to"],
        )?;
        let idempotent_replays = vec(
            "payd_idempotent_replays_total",
            "Responses replayed for a repeated idempotency key.",
            &["method"],
        )?;
        let lock_acquisitions = vec(
            "payd_lock_acquisitions_total",
            "Order lock acquisitions.",
            &["outcome"],
        )?;
        let fence_rejections = IntCounter::new(
            "payd_fence_rejections_total",
            "Writes refused because a newer lock holder had already written the row.",
        )?;
        registry.register(Box::new(fence_rejections.clone()))?;
        let idempotency_keys_purged = IntCounter::new(
            "payd_idempotency_keys_purged_total",
            "Idempotency keys deleted after their retention.",
        )?;
        registry.register(Box::new(idempotency_keys_purged.clone()))?;
        let channel_events = vec(
            "payd_channel_events_total",
            "Channel results by channel, kind and outcome (APPLIED, REPEATED, DUPLICATE_PAYMENT…).",
            &["channel", "kind", "outcome"],
        )?;
        let duplicate_payments = vec(
            "payment_duplicate_payments_total",
            "Already paid orders paid again (customer charged twice; refunded automatically).",
            &["channel"],
        )?;
        let amount_mismatches = vec(
            "payd_channel_amount_mismatches_total",
            "Channel results whose amount or currency differs from the attempt.",
            &["channel"],
        )?;
        let attempts_reused = vec(
            "payd_attempts_reused_total",
            "Pay calls answered from an already open attempt (no channel call).",
            &["channel"],
        )?;
        Ok(Self {
            registry,
            grpc_requests,
            rejected_requests,
            order_transitions,
            idempotent_replays,
            lock_acquisitions,
            fence_rejections,
            idempotency_keys_purged,
            channel_events,
            duplicate_payments,
            amount_mismatches,
            attempts_reused,
        })
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}
