//! The platform callback listener. Order of work for every callback:
//! 1. refuse a body over `ADAPTER_CALLBACK_MAX_BODY_BYTES` with HTTP 413 (unread when its
//!    `Content-Length` says so, else as soon as the bytes read pass it);
//! 2. read its header and body within their timeouts (a stalled client is cut off), while
//!    holding one of `ADAPTER_CALLBACK_MAX_RECEIVING` permits;
//! 3. verify (signature, key id, time window, decryption) while holding one of
//!    `ADAPTER_CALLBACK_MAX_VERIFYING` permits — a failure is counted and answered with the
//!    platform's failure reply, and nothing is forwarded;
//! 4. only a verified callback takes one of `ADAPTER_CALLBACK_MAX_IN_FLIGHT` forwarding permits,
//!    and forwards to the core's `ChannelEvents`, retrying within the forward budget: a total
//!    from the moment its header was in, each attempt only gets what is left of it;
//! 5. only when the core answered OK (the event is durably recorded) reply with the platform's
//!    success form. If the core cannot be reached, reply failure so the platform retries: a crash
//!    anywhere loses nothing.
//!
//! Each permit is taken with `try_acquire`: a full stage sheds the callback at once with HTTP 503
//! and the platform's failure reply (the platform retries), so nothing queues. Forged callbacks
//! are cheap to refuse and never reach stage 4, so however many arrive they cannot hold the
//! forwarding slots a genuine callback needs; at worst they make it retry at stage 3.
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use payproto::channel::v1::channel_events_service_client::ChannelEventsServiceClient;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

use crate::{Adapter, Callback, KitSettings, Metrics, Notification, Reply, pb};

/// Forwards verified notifications to the core.
#[derive(Clone)]
pub struct Forwarder {
    client: ChannelEventsServiceClient<Channel>,
    /// `authorization: Bearer <ADAPTER_CORE_TOKEN>` for every report.
    auth: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    budget: Duration,
    channel: pb::Channel,
}

impl Forwarder {
    pub fn new(settings: &KitSettings, channel: pb::Channel) -> anyhow::Result<Self> {
        // No per-request timeout here: each attempt carries what is left of the budget.
        let endpoint = Endpoint::from_shared(settings.core_endpoint.clone())?
            .connect_timeout(settings.forward_budget.min(Duration::from_secs(1)));
        // `ADAPTER_CORE_TLS_CA_FILE` (payd's CA, for an https:// core endpoint) and
        // `ADAPTER_CORE_TLS_CERT_FILE`/`_KEY_FILE` (this adapter's certificate, for mutual TLS).
        let tls = payproto::tls::TlsFiles::from_env("ADAPTER_CORE_TLS_", "CA_FILE")
            .client("ADAPTER_CORE_TLS_*")?;
        let endpoint = payproto::tls::client_endpoint(endpoint, tls, "ADAPTER_CORE_ENDPOINT")?;
        let auth = format!("Bearer {}", settings.core_token.expose())
            .parse()
            .map_err(|_| anyhow::anyhow!("ADAPTER_CORE_TOKEN must be printable ASCII"))?;
        Ok(Self {
            auth,
            client: ChannelEventsServiceClient::new(endpoint.connect_lazy()),
            budget: settings.forward_budget,
            channel,
        })
    }

    /// The request with payd's credential and a gRPC deadline of `timeout`.
    fn authorized<T>(&self, body: T, timeout: Duration) -> tonic::Request<T> {
        let mut r = tonic::Request::new(body);
        r.metadata_mut().insert("authorization", self.auth.clone());
        r.set_timeout(timeout);
        r
    }

    /// One report, given `remaining` of the budget. The local timeout also bounds the wait for
    /// a connection (the gRPC deadline only starts once the request is sent).
    async fn report(&self, n: &Notification, remaining: Duration) -> Result<bool, tonic::Status> {
        let mut client = self.client.clone();
        let call = async {
            match n.clone() {
                Notification::Payment { event_id, result } => client
                    .report_payment(self.authorized(
                        pb::ReportPaymentRequest {
                            channel: self.channel as i32,
                            channel_event_id: event_id,
                            result: Some(result),
                        },
                        remaining,
                    ))
                    .await
                    .map(|r| r.into_inner().first_time),
                Notification::Refund {
                    event_id,
                    out_trade_no,
                    result,
                } => client
                    .report_refund(self.authorized(
                        pb::ReportRefundRequest {
                            channel: self.channel as i32,
                            channel_event_id: event_id,
                            out_trade_no,
                            result: Some(result),
                        },
                        remaining,
                    ))
                    .await
                    .map(|r| r.into_inner().first_time),
            }
        };
        tokio::time::timeout(remaining, call)
            .await
            .unwrap_or_else(|_| {
                Err(tonic::Status::deadline_exceeded(
                    "the core did not answer within the forward budget",
                ))
            })
    }

    /// When a callback that arrived now must have been answered.
    pub fn deadline_from_now(&self) -> Instant {
        Instant::now() + self.budget
    }

    /// Reports the notification until the core acknowledges it or `deadline` passes (see
    /// [`Forwarder::deadline_from_now`]): the budget is a total over all attempts and backoffs.
    ///
    /// # Errors
    /// The last status when the core never acknowledged in time.
    pub async fn forward(
        &self,
        n: &Notification,
        deadline: Instant,
    ) -> Result<bool, tonic::Status> {
        let mut backoff = Duration::from_millis(50);
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(tonic::Status::deadline_exceeded(
                    "forward budget spent before an attempt",
                ));
            }
            match self.report(n, remaining).await {
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
                    if Instant::now() + backoff >= deadline {
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
    /// One permit per body being read (`ADAPTER_CALLBACK_MAX_RECEIVING`): bounds the memory
    /// and connections unverified callbacks hold.
    receiving: Arc<Semaphore>,
    /// One permit per callback being verified (`ADAPTER_CALLBACK_MAX_VERIFYING`): bounds the
    /// CPU a flood of forged callbacks can take.
    verifying: Arc<Semaphore>,
    /// One permit per verified callback being forwarded (`ADAPTER_CALLBACK_MAX_IN_FLIGHT`).
    /// Only a callback whose signature verified takes one, so forged callbacks never compete
    /// with genuine ones for the slow part (waiting for the core).
    in_flight: Arc<Semaphore>,
    body_timeout: Duration,
    /// `ADAPTER_CALLBACK_MAX_BODY_BYTES`.
    max_body: usize,
}

/// Every path under `/notify/` is a callback endpoint (payment and refund URLs differ only in
/// their path, which the adapter chose when it gave the platform its `notify_url`).
pub fn router<A: Adapter>(
    adapter: Arc<A>,
    forwarder: Forwarder,
    metrics: Metrics,
    settings: &KitSettings,
) -> axum::Router {
    let shared = Arc::new(Shared {
        adapter,
        forwarder,
        metrics,
        receiving: Arc::new(Semaphore::new(settings.callback_max_receiving)),
        verifying: Arc::new(Semaphore::new(settings.callback_max_verifying)),
        in_flight: Arc::new(Semaphore::new(settings.callback_max_in_flight)),
        body_timeout: settings.callback_body_timeout,
        max_body: settings.callback_max_body_bytes,
    });
    axum::Router::new()
        .route("/notify/{*rest}", axum::routing::any(handle::<A>))
        .with_state(shared)
}

async fn handle<A: Adapter>(State(s): State<Arc<Shared<A>>>, req: Request) -> Response {
    // A body announced too large is refused before it takes a permit or a byte is read.
    if declared_length(req.headers()).is_some_and(|n| n > s.max_body as u64) {
        return too_large(&s);
    }
    // Every stage below takes its permit with `try_acquire`: a full stage sheds at once with
    // the platform's failure reply (the platform retries), nothing queues behind a flood.
    let Ok(receiving) = s.receiving.clone().try_acquire_owned() else {
        return shed(&s, "shed_receiving");
    };
    // The budget runs from the moment the header is in: that is the platform's clock too.
    let deadline = s.forwarder.deadline_from_now();
    let (parts, body) = req.into_parts();
    let body = match tokio::time::timeout(s.body_timeout, read_body(body, s.max_body)).await {
        Ok(Ok(b)) => b,
        Ok(Err(BodyError::TooLarge)) => return too_large(&s),
        Ok(Err(BodyError::Unreadable)) => {
            count_rejection(&s.metrics, "malformed");
            return to_response(s.adapter.nack("body unreadable"));
        }
        Err(_) => {
            count_callback(&s.metrics, "body_timeout");
            count_timeout(&s.metrics, "body");
            return to_response(s.adapter.nack("body not received in time"));
        }
    };
    // The body is in: a slow sender no longer holds anything a verification needs.
    drop(receiving);
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
    let Ok(verifying) = s.verifying.clone().try_acquire_owned() else {
        return shed(&s, "shed_verifying");
    };
    let verified = s.adapter.verify_callback(&cb).await;
    drop(verifying);
    let notification = match verified {
        Ok(n) => n,
        Err(rej) => {
            count_rejection(&s.metrics, rej.reason.label());
            tracing::warn!(reason = rej.reason.label(), detail = %rej.detail, "callback rejected");
            return to_response(s.adapter.nack("verification failed"));
        }
    };
    // Only now, with the signature verified, does the callback compete for a forwarding slot;
    // it is held until the reply is built.
    let Ok(_forwarding) = s.in_flight.clone().try_acquire_owned() else {
        return shed(&s, "shed");
    };
    match s.forwarder.forward(&notification, deadline).await {
        Ok(first_time) => {
            count_callback(
                &s.metrics,
                if first_time { "accepted" } else { "duplicate" },
            );
            to_response(s.adapter.ack())
        }
        Err(status) => {
            count_callback(&s.metrics, "forward_failed");
            if status.code() == tonic::Code::DeadlineExceeded {
                count_timeout(&s.metrics, "forward");
            }
            tracing::warn!(code = ?status.code(), message = status.message(), "core did not record the callback; asking the platform to retry");
            to_response(s.adapter.nack("not recorded yet"))
        }
    }
}

/// The request's `Content-Length`, when it has a readable one (chunked bodies have none and
/// are bounded while read).
fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

enum BodyError {
    /// More than `ADAPTER_CALLBACK_MAX_BODY_BYTES` arrived.
    TooLarge,
    /// The connection failed or the framing was broken mid-body.
    Unreadable,
}

/// Collects the body, stopping at the first frame that takes it past `limit`: whatever the
/// header claimed, no more than `limit` bytes are ever held.
async fn read_body(body: axum::body::Body, limit: usize) -> Result<Bytes, BodyError> {
    use futures::StreamExt as _;
    let mut frames = body.into_data_stream();
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = frames.next().await {
        let frame = frame.map_err(|_| BodyError::Unreadable)?;
        if buf.len() + frame.len() > limit {
            return Err(BodyError::TooLarge);
        }
        buf.extend_from_slice(&frame);
    }
    Ok(buf.freeze())
}

/// HTTP 503 with the platform's failure body, counted under `outcome`.
fn shed<A: Adapter>(s: &Shared<A>, outcome: &str) -> Response {
    count_callback(&s.metrics, outcome);
    to_response(nack_with(
        s,
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded; retry later",
    ))
}

/// HTTP 413 with the platform's failure body, counted as a rejection.
fn too_large<A: Adapter>(s: &Shared<A>) -> Response {
    count_rejection(&s.metrics, "too_large");
    to_response(nack_with(
        s,
        StatusCode::PAYLOAD_TOO_LARGE,
        "body too large",
    ))
}

/// The platform's failure reply with another HTTP status than the adapter's default.
fn nack_with<A: Adapter>(s: &Shared<A>, status: StatusCode, why: &str) -> Reply {
    let mut reply = s.adapter.nack(why);
    reply.status = status.as_u16();
    reply
}

fn count_callback(m: &Metrics, outcome: &str) {
    m.callbacks.with_label_values(&[m.channel(), outcome]).inc();
}

fn count_timeout(m: &Metrics, phase: &str) {
    m.callback_timeouts
        .with_label_values(&[m.channel(), phase])
        .inc();
}

fn count_rejection(m: &Metrics, reason: &str) {
    count_callback(m, "rejected");
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

/// Serves `router` over HTTP/1.1 (platforms call back with HTTP/1.1) until `stop` resolves,
/// then lets the open connections finish (the caller bounds that wait). A connection whose
/// request header is not complete within `header_timeout` is closed and counted.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    header_timeout: Duration,
    metrics: Metrics,
    stop: impl std::future::Future<Output = ()>,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(stop);
    loop {
        let stream = tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accepting a callback connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // TCP_NODELAY: see `crate::nodelay`.
        let _ = stream.set_nodelay(true);
        let conn = graceful.watch(http.serve_connection(
            TokioIo::new(stream),
            TowerToHyperService::new(router.clone()),
        ));
        let metrics = metrics.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                if e.is_timeout() {
                    count_timeout(&metrics, "header");
                } else {
                    tracing::debug!(error = %e, "callback connection ended with an error");
                }
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
