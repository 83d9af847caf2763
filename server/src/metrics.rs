//! Prometheus metrics of the core, served as text on `/metrics`.
use prometheus::{IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

/// The Content-Type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

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
    /// Single-statement writes of the lifecycle's common steps by step and outcome
    /// (`committed`, or `refused`: the rows had changed since they were read, or the case was
    /// not the common one after all, and the step's transaction ran instead).
    pub single_statement_writes: IntCounterVec,
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
    /// Reconciliation runs finished, by channel and outcome (COMPLETED, FAILED).
    pub recon_runs: IntCounterVec,
    /// Statement lines read by reconciliation, by channel.
    pub recon_lines: IntCounterVec,
    /// New discrepancies recorded, by channel and kind.
    pub recon_discrepancies: IntCounterVec,
    /// Lost results repaired through the results transition, by channel.
    pub recon_repairs: IntCounterVec,
    /// Channel results whose amount or currency differs from the attempt's.
    pub amount_mismatches: IntCounterVec,
    /// Pay calls that reused an open attempt instead of calling the channel.
    pub attempts_reused: IntCounterVec,
    /// Refunds that reached a final state, by channel and outcome (succeeded, failed).
    pub refunds: IntCounterVec,
    /// Money refunded (succeeded refunds), in minor units, by channel and currency.
    pub refunded_minor: IntCounterVec,
    /// Refund queries made by the job, by channel and what they learned.
    pub refund_queries: IntCounterVec,
    /// Refunds whose outcome stayed unknown past the last query: a person must settle them.
    pub refunds_flagged: IntCounterVec,
    /// Refunds not settled yet (PENDING or PROCESSING), by channel; refreshed by the job.
    pub refunds_unsettled: IntGaugeVec,
    /// Unsettled refunds flagged for a person, by channel; refreshed by the job.
    pub refunds_needing_attention: IntGaugeVec,
    /// Age of the oldest unsettled refund, by channel (0 when none): a refund stuck in
    /// PROCESSING shows here long before it is flagged.
    pub refunds_oldest_unsettled_age: IntGaugeVec,
    /// Automatic refunds of duplicate payments that reached a final state, by outcome.
    pub duplicate_refunds: IntCounterVec,
    /// Outbox: events not yet in stream order, pending push delivery, dead-lettered; age of the
    /// oldest pending delivery.
    pub outbox_unsequenced: prometheus::IntGauge,
    pub outbox_pending: prometheus::IntGauge,
    pub outbox_dead: prometheus::IntGauge,
    pub outbox_oldest_pending_age: prometheus::IntGauge,
    /// Push deliveries to EventSinks by outcome (delivered, failed, dead).
    pub event_deliveries: IntCounterVec,
    /// Commit-to-acknowledgement time of delivered events.
    pub event_delivery_lag: prometheus::Histogram,
    // Active queries and expiry.
    /// Queries of open attempts by the query job, by channel and what they learned.
    pub payment_attempt_queries: IntCounterVec,
    /// Open attempts whose outcome stayed unknown past the last query: a person must settle them.
    pub payment_attempts_flagged: IntCounterVec,
    /// Open attempts (INIT or PAYING), by channel; refreshed by the query job.
    pub payment_attempts_open: IntGaugeVec,
    /// Open attempts flagged for a person, by channel; refreshed by the query job.
    pub payment_attempts_needing_attention: IntGaugeVec,
    /// Orders closed by the expiry job.
    pub orders_expired: IntCounter,
    /// Operations (issue 12), refreshed by `ops::watch`: whether Postgres and Redis answer a cheap
    /// check, by dependency; 1 while this replica holds its worker-id lease; build info.
    pub dependency_up: IntGaugeVec,
    pub worker_lease_held: prometheus::IntGauge,
    pub build_info: IntGaugeVec,
    /// Duplicate payments not refunded yet and the age of the oldest, by channel (from the database).
    pub duplicates_unrefunded: IntGaugeVec,
    pub duplicates_oldest_unrefunded_age: IntGaugeVec,
    /// Age of the oldest attempt still PAYING (not flagged), by channel (from the database).
    pub attempts_oldest_paying_age: IntGaugeVec,
    /// Server-side gRPC latency by service and method (time to the response headers).
    pub grpc_request_duration: prometheus::HistogramVec,
    /// Client-side latency of payd's calls to the adapters, by channel, service and method.
    pub channel_request_duration: prometheus::HistogramVec,
    /// Open orders (PENDING, PAYING) by status, from the database (final states are counted by
    /// `payd_order_transitions_total`: counting them would scan the table).
    pub orders_open: IntGaugeVec,
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
        let single_statement_writes = vec(
            "payd_single_statement_writes_total",
            "Single-statement writes of common steps; refused ones ran as a transaction instead.",
            &["step", "outcome"],
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
        let recon_runs = vec(
            "payment_reconciliation_runs_total",
            "Reconciliation runs finished, by channel and outcome (COMPLETED, FAILED).",
            &["channel", "outcome"],
        )?;
        let recon_lines = vec(
            "payment_reconciliation_lines_total",
            "Statement lines read by reconciliation runs.",
            &["channel"],
        )?;
        let recon_discrepancies = vec(
            "payment_reconciliation_discrepancies_total",
            "New reconciliation discrepancies, by channel and kind (repaired ones included).",
            &["channel", "kind"],
        )?;
        let recon_repairs = vec(
            "payment_reconciliation_repairs_total",
            "Results missing locally that reconciliation applied through the results transition.",
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
        let refunds = vec(
            "payment_refunds_total",
            "Refunds that reached a final state, by channel and outcome (succeeded, failed).",
            &["channel", "outcome"],
        )?;
        let refunded_minor = vec(
            "payment_refunded_minor_total",
            "Money given back by succeeded refunds, in minor units of the currency.",
            &["channel", "currency"],
        )?;
        let refund_queries = vec(
            "payment_refund_queries_total",
            "Refund queries by the refund query job, by channel and result.",
            &["channel", "result"],
        )?;
        let refunds_flagged = vec(
            "payment_refunds_flagged_total",
            "Refunds whose outcome stayed unknown past the last query, or that the channel contradicted: flagged for a person.",
            &["channel", "reason"],
        )?;
        let gauge =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntGaugeVec, prometheus::Error> {
                let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(g.clone()))?;
                Ok(g)
            };
        let refunds_unsettled = gauge(
            "payment_refunds_unsettled",
            "Refunds not settled yet (PENDING or PROCESSING), by channel.",
            &["channel"],
        )?;
        let refunds_needing_attention = gauge(
            "payment_refunds_needing_attention",
            "Unsettled refunds flagged for a person, by channel.",
            &["channel"],
        )?;
        let refunds_oldest_unsettled_age = gauge(
            "payment_refunds_oldest_unsettled_age_seconds",
            "Age of the oldest refund not settled yet (PENDING or PROCESSING), by channel; 0 when none.",
            &["channel"],
        )?;
        let duplicate_refunds = vec(
            "payment_duplicate_refunds_total",
            "Automatic refunds of duplicate payments that reached a final state, by channel and outcome.",
            &["channel", "outcome"],
        )?;
        let int_gauge =
            |name: &str, help: &str| -> Result<prometheus::IntGauge, prometheus::Error> {
                let g = prometheus::IntGauge::new(name, help)?;
                registry.register(Box::new(g.clone()))?;
                Ok(g)
            };
        let outbox_unsequenced = int_gauge(
            "payment_outbox_unsequenced_events",
            "Committed events not yet given their stream position.",
        )?;
        let outbox_pending = int_gauge(
            "payment_outbox_pending_deliveries",
            "Events waiting to be pushed to their app's EventSink.",
        )?;
        let outbox_dead = int_gauge(
            "payment_outbox_dead_letters",
            "Events whose push delivery gave up after the last try (RedeliverEvents puts them back).",
        )?;
        let outbox_oldest_pending_age = int_gauge(
            "payment_outbox_oldest_pending_age_seconds",
            "Age of the oldest event waiting for push delivery; 0 when none.",
        )?;
        let event_deliveries = vec(
            "payment_event_deliveries_total",
            "Push deliveries to EventSinks by outcome (delivered, failed, dead).",
            &["outcome"],
        )?;
        let event_delivery_lag = prometheus::Histogram::with_opts(
            prometheus::HistogramOpts::new(
                "payment_event_delivery_lag_seconds",
                "From the event's commit to the sink's acknowledgement.",
            )
            .buckets(vec![
                0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0, 300.0, 3600.0,
            ]),
        )?;
        registry.register(Box::new(event_delivery_lag.clone()))?;
        // Active queries and expiry.
        let payment_attempt_queries = vec(
            "payment_attempt_queries_total",
            "Queries of open payment attempts by the query job, by channel and result.",
            &["channel", "result"],
        )?;
        let payment_attempts_flagged = vec(
            "payment_attempts_flagged_total",
            "Open payment attempts whose outcome stayed unknown past the last query: flagged for a person.",
            &["channel"],
        )?;
        let payment_attempts_open = gauge(
            "payment_attempts_open",
            "Open payment attempts (INIT or PAYING), by channel.",
            &["channel"],
        )?;
        let payment_attempts_needing_attention = gauge(
            "payment_attempts_needing_attention",
            "Open payment attempts flagged for a person, by channel.",
            &["channel"],
        )?;
        let orders_expired = IntCounter::new(
            "payment_orders_expired_total",
            "Unpaid orders closed at their expiry by the expiry job.",
        )?;
        registry.register(Box::new(orders_expired.clone()))?;
        let dependency_up = gauge(
            "payd_dependency_up",
            "Whether a dependency answered payd's last periodic check (1) or not (0).",
            &["dependency"],
        )?;
        let worker_lease_held = int_gauge(
            "payd_worker_lease_held",
            "1 while this replica holds its snowflake worker-id lease (it can mint trade numbers).",
        )?;
        let build_info = gauge(
            "payd_build_info",
            "Always 1; the labels say which build runs.",
            &["version"],
        )?;
        let duplicates_unrefunded = gauge(
            "payment_duplicate_payments_unrefunded",
            "Duplicate payments whose automatic refund has not succeeded yet, by channel.",
            &["channel"],
        )?;
        let duplicates_oldest_unrefunded_age = gauge(
            "payment_duplicate_payments_oldest_unrefunded_age_seconds",
            "Age of the oldest duplicate payment not refunded yet, by channel; 0 when none.",
            &["channel"],
        )?;
        let attempts_oldest_paying_age = gauge(
            "payment_attempts_oldest_paying_age_seconds",
            "Age of the oldest attempt still PAYING and not flagged, by channel; 0 when none.",
            &["channel"],
        )?;
        let grpc_request_duration = prometheus::HistogramVec::new(
            prometheus::HistogramOpts::new(
                "payd_grpc_request_duration_seconds",
                "Server-side gRPC latency to the response headers (the whole call when unary).",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["service", "method"],
        )?;
        registry.register(Box::new(grpc_request_duration.clone()))?;
        let channel_request_duration = prometheus::HistogramVec::new(
            prometheus::HistogramOpts::new(
                "payd_channel_request_duration_seconds",
                "payd's calls to the adapters (client side), to the response headers.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["channel", "service", "method"],
        )?;
        registry.register(Box::new(channel_request_duration.clone()))?;
        let orders_open = gauge(
            "payment_orders_open",
            "Orders not final yet, by status (PENDING, PAYING).",
            &["status"],
        )?;
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(Self {
            duplicate_refunds,
            outbox_unsequenced,
            outbox_pending,
            outbox_dead,
            outbox_oldest_pending_age,
            event_deliveries,
            event_delivery_lag,
            payment_attempt_queries,
            payment_attempts_flagged,
            payment_attempts_open,
            payment_attempts_needing_attention,
            orders_expired,
            refunds_oldest_unsettled_age,
            refunds,
            refunded_minor,
            refund_queries,
            refunds_flagged,
            refunds_unsettled,
            refunds_needing_attention,
            registry,
            grpc_requests,
            rejected_requests,
            order_transitions,
            single_statement_writes,
            idempotent_replays,
            lock_acquisitions,
            fence_rejections,
            idempotency_keys_purged,
            channel_events,
            duplicate_payments,
            recon_runs,
            recon_lines,
            recon_discrepancies,
            recon_repairs,
            amount_mismatches,
            attempts_reused,
            dependency_up,
            worker_lease_held,
            build_info,
            duplicates_unrefunded,
            duplicates_oldest_unrefunded_age,
            attempts_oldest_paying_age,
            grpc_request_duration,
            channel_request_duration,
            orders_open,
        })
    }

    /// The text exposition format.
    /// The registry, for metrics owned by another module (auth).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}
