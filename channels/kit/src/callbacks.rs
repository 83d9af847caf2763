//! The platform callback listener. Order of work for every callback:
//! 1. verify (signature, key id, time window, decryption) — a failure is counted and answered
//!    with the platform's failure reply, and nothing is forwarded;
//! 2. forward to the core's `ChannelEvents`, retrying within the forward budget;
//! 3. only when the core answered OK (the event is durably recorded) reply with the platform's
//!    success form. If the core cannot be reached, reply failure so the platform retries: a crash
//!    anywhere loses nothing.
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use payproto::channel::v1::channel_events_client::ChannelEventsClient;
use tonic::transport::{Channel, Endpoint};

use crate::{Adapter, Callback, KitSettings, Metrics, Notification, Reply, pb};

/// Callback bodies larger than this are refused unread (platform callbacks are a few KiB).
const MAX_BODY: usize = 64 * 1024;

/// Forwards verified notifications to the core.
#[derive(Clone)]
pub struct Forwarder {
    client: ChannelEventsClient<Channel>,
    /// `authorization: Bearer <ADAPTER_CORE_TOKEN>` for every report.
    auth: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    budget: Duration,
    channel: pb::Channel,
}

impl Forwarder {
    pub fn new(settings: &KitSettings, channel: pb::Channel) -> anyhow::Result<Self> {
        let endpoint = Endpoint::from_shared(settings.core_endpoint.clone())?
            .connect_timeout(Duration::from_secs(1))
            .timeout(settings.forward_budget);
        let auth = format!("Bearer {}", settings.core_token.expose())
            .parse()
            .map_err(|_| anyhow::anyhow!("ADAPTER_CORE_TOKEN must be printable ASCII"))?;
        Ok(Self {
            auth,
            client: ChannelEventsClient::new(endpoint.connect_lazy()),
            budget: settings.forward_budget,
            channel,
        })
    }

    fn authorized<T>(&self, body: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(body);
        r.metadata_mut().insert("authorization", self.auth.clone());
        r
    }

    /// Reports the notification until the core acknowledges it or the budget runs out.
    ///
    /// # Errors
    /// The last status when the core never acknowledged within the budget.
    pub async fn forward(&self, n: &Notification) -> Result<bool, tonic::Status> {
        let deadline = tokio::time::Instant::now() + self.budget;
        let mut backoff = Duration::from_millis(50);
        loop {
            let mut client = self.client.clone();
            let r = match n.clone() {
                Notification::Payment { event_id, result } => client
                    .report_payment(self.authorized(pb::ReportPaymentRequest {
                        channel: self.channel as i32,
                        channel_event_id: event_id,
                        result: Some(result),
                    }))
                    .await
                    .map(|r| r.into_inner().first_time),
                Notification::Refund {
                    event_id,
                    out_trade_no,
                    result,
                } => client
                    .report_refund(self.authorized(pb::ReportRefundRequest {
                        channel: self.channel as i32,
                        channel_event_id: event_id,
                        out_trade_no,
                        result: Some(result),
                    }))
                    .await
                    .map(|r| r.into_inner().first_time),
            };
            match r {
                Ok(first) => return Ok(first),
                // Only transient failures are worth a retry inside one callback.
                Err(s)
                    if matches!(
                        s.code(),
                        tonic::Code::Unavailable
                            | tonic::Code::DeadlineExceeded
                            | tonic::Code::Aborted
                            | tonic::Code::Unknown
                            | tonic::Code::Cancelled
                    ) =>
                {
                    let now = tokio::time::Instant::now();
                    if now + backoff >= deadline {
                        return Err(s);
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(800));
                }
                Err(s) => return Err(s),
            }
        }
    }
}

struct Shared<A> {
    adapter: Arc<A>,
    forwarder: Forwarder,
    metrics: Metrics,
}

/// Every path under `/notify/` is a callback endpoint (payment and refund URLs differ only in
/// their path, which the adapter chose when it gave the platform its `notify_url`).
pub fn router<A: Adapter>(adapter: Arc<A>, forwarder: Forwarder, metrics: Metrics) -> axum::Router {
    let shared = Arc::new(Shared {
        adapter,
        forwarder,
        metrics,
    });
    axum::Router::new()
        .route("/notify/{*rest}", axum::routing::any(handle::<A>))
        .with_state(shared)
}

async fn handle<A: Adapter>(State(s): State<Arc<Shared<A>>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body: Bytes = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            count_rejection(&s.metrics, "malformed");
            return to_response(s.adapter.nack("body too large or unreadable"));
        }
    };
    let target = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| parts.uri.path().to_owned());
    let cb = Callback {
        method: parts.method,
        target,
        headers: parts.headers,
        body,
    };
    let notification = match s.adapter.verify_callback(&cb).await {
        Ok(n) => n,
        Err(rej) => {
            count_rejection(&s.metrics, rej.reason.label());
            tracing::warn!(reason = rej.reason.label(), detail = %rej.detail, "callback rejected");
            return to_response(s.adapter.nack("verification failed"));
        }
    };
    match s.forwarder.forward(&notification).await {
        Ok(first_time) => {
            let outcome = if first_time { "accepted" } else { "duplicate" };
            s.metrics
                .callbacks
                .with_label_values(&[s.metrics.channel(), outcome])
                .inc();
            to_response(s.adapter.ack())
        }
        Err(status) => {
            s.metrics
                .callbacks
                .with_label_values(&[s.metrics.channel(), "forward_failed"])
                .inc();
            tracing::warn!(code = ?status.code(), message = status.message(), "core did not record the callback; asking the platform to retry");
            to_response(s.adapter.nack("not recorded yet"))
        }
    }
}

fn count_rejection(m: &Metrics, reason: &str) {
    m.callbacks
        .with_label_values(&[m.channel(), "rejected"])
        .inc();
    m.callback_rejections
        .with_label_values(&[m.channel(), reason])
        .inc();
}

fn to_response(r: Reply) -> Response {
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = (status, r.body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(r.content_type),
    );
    resp
}
