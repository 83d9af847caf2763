//! # channel-kit
//!
//! Everything a channel adapter process shares, so each adapter crate only says how its platform
//! signs, verifies and names things.
//!
//! # Layout
//! - [`Adapter`]: the trait an adapter implements (platform calls + callback verification).
//! - [`grpc`]: serves `channel.v1.ChannelAdapter` over any [`Adapter`] to payd only (bearer
//!   token), mapping [`ChannelError`] to gRPC statuses.
//! - [`callbacks`]: the HTTP listener for the platform's signed callbacks. A callback is verified,
//!   forwarded to the core's `ChannelEvents`, and acknowledged to the platform **only after** the
//!   core has durably recorded it; otherwise the platform is told to retry.
//! - [`crypto`]: the merchant RSA key: loading and constant-time signing (aws-lc-rs).
//! - [`settings`]: the shared `ADAPTER_*` settings and helpers to read keys from files/env.
//! - [`metrics`]: Prometheus counters every adapter exports.
//! - [`fields`]: checks every adapter makes on the core's requests (required fields, CNY fen).
//! - [`form`]: the strict `application/x-www-form-urlencoded` codec (Alipay and UnionPay).
//! - [`statement`]: streaming a day's statement (line sink, tally, spooling downloads).
//! - [`time`]: `chrono` instants as `channel.v1` timestamps.
//! - [`serve`]: runs the three listeners until a shutdown signal.
pub mod callbacks;
pub mod crypto;
pub mod fields;
pub mod form;
pub mod grpc;
pub mod grpc_metrics;
pub mod metrics;
pub mod settings;
pub mod statement;
pub mod time;

use std::sync::Arc;

use axum::serve::ListenerExt;

pub use payproto::channel::v1 as pb;

pub use metrics::Metrics;
pub use settings::KitSettings;

/// Why a platform call did not produce a result. Each variant has one gRPC status (see
/// `grpc::status`), chosen so the core knows whether the outcome is known.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The request cannot be expressed at this platform (unsupported method, bad field).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The platform refused for a final business reason; `code` is the platform's own.
    #[error("refused by the platform: {code}: {message}")]
    Refused { code: String, message: String },
    /// The platform could not be reached or answered with a system error: nothing is known.
    #[error("platform unavailable: {0}")]
    Unavailable(String),
    /// No answer in time: the outcome is unknown; query later.
    #[error("platform timed out: {0}")]
    Timeout(String),
    /// The platform's answer failed signature verification and is not trusted.
    #[error("platform response failed verification: {0}")]
    BadResponse(String),
    /// A statement file that does not read (truncated, bad encoding, a malformed line, a summary
    /// that does not add up); the message names the line. Lines may already have been streamed:
    /// the consumer discards the run.
    #[error("statement unreadable: {0}")]
    BadStatement(String),
    #[error("internal adapter error: {0}")]
    Internal(String),
}

impl From<reqwest::Error> for ChannelError {
    fn from(e: reqwest::Error) -> Self {
        if e.is_timeout() {
            ChannelError::Timeout(e.to_string())
        } else {
            ChannelError::Unavailable(e.to_string())
        }
    }
}

/// A platform callback as it arrived: the raw request target (never decoded: signatures cover
/// the raw form), headers and body bytes.
#[derive(Debug, Clone)]
pub struct Callback {
    pub method: http::Method,
    pub target: String,
    pub headers: http::HeaderMap,
    pub body: bytes::Bytes,
}

/// What a verified callback says.
#[derive(Debug, Clone, PartialEq)]
pub enum Notification {
    Payment {
        /// The platform's id of this notification; stable across its retries.
        event_id: String,
        result: pb::PaymentResult,
    },
    Refund {
        event_id: String,
        out_trade_no: String,
        result: pb::RefundResult,
    },
}

/// Why a callback was refused. The label goes into `adapter_callback_rejections_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// The signature does not verify (forged, or the body was changed after signing).
    BadSignature,
    /// The key serial / certificate id is not one this adapter trusts.
    UnknownKey,
    /// The signed timestamp is outside the accepted window (replay).
    StaleTimestamp,
    /// The ciphertext does not decrypt with our key.
    DecryptFailed,
    /// The callback is for another merchant/app.
    WrongMerchant,
    /// Not the platform's format at all.
    Malformed,
}

impl RejectReason {
    pub fn label(self) -> &'static str {
        match self {
            RejectReason::BadSignature => "bad_signature",
            RejectReason::UnknownKey => "unknown_key",
            RejectReason::StaleTimestamp => "stale_timestamp",
            RejectReason::DecryptFailed => "decrypt_failed",
            RejectReason::WrongMerchant => "wrong_merchant",
            RejectReason::Malformed => "malformed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: RejectReason,
    pub detail: String,
}

impl Rejection {
    pub fn new(reason: RejectReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

/// An HTTP reply to the platform, in the platform's documented form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

/// One payment platform. Implementations are stateless: every id they need arrives in the call.
#[tonic::async_trait]
pub trait Adapter: Send + Sync + 'static {
    fn channel(&self) -> pb::Channel;
    async fn prepay(&self, req: pb::PrepayRequest) -> Result<pb::PrepayResponse, ChannelError>;
    async fn query_payment(
        &self,
        req: pb::QueryPaymentRequest,
    ) -> Result<pb::PaymentResult, ChannelError>;
    async fn close_payment(
        &self,
        req: pb::ClosePaymentRequest,
    ) -> Result<pb::PaymentResult, ChannelError>;
    async fn refund(&self, req: pb::RefundRequest) -> Result<pb::RefundResult, ChannelError>;
    async fn query_refund(
        &self,
        req: pb::QueryRefundRequest,
    ) -> Result<pb::RefundResult, ChannelError>;
    /// Fetches the day's statement and pushes its lines, in file order, into `sink` as they are
    /// parsed (never holding the day whole); returns the totals once the whole file has read and
    /// its summary added up. An error after some lines were pushed ends the stream with that
    /// error (`BadStatement` → DATA_LOSS), and the consumer discards what it received.
    async fn fetch_statement(
        &self,
        req: pb::FetchStatementRequest,
        sink: statement::LineSink,
    ) -> Result<pb::StatementTotals, ChannelError>;
    /// Verifies a platform callback (signature, key id, time window, decryption) and parses it.
    /// Async because a key the adapter does not know yet may have to be fetched first (WeChat's
    /// platform certificates rotate).
    ///
    /// # Errors
    /// A [`Rejection`] for anything not provably from the platform; nothing is forwarded.
    async fn verify_callback(&self, cb: &Callback) -> Result<Notification, Rejection>;
    /// The platform's documented "received" reply.
    fn ack(&self) -> Reply;
    /// The platform's documented failure reply (the platform will retry).
    fn nack(&self, why: &str) -> Reply;
}

/// Runs an adapter: gRPC `ChannelAdapter` + health, the callback listener, and `/metrics`, until
/// `shutdown` resolves.
pub async fn serve<A: Adapter>(
    adapter: Arc<A>,
    settings: KitSettings,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listeners = Listeners::bind(&settings).await?;
    listeners.run(adapter, settings, shutdown).await
}

/// Bound listeners, so a test can learn the ports before serving.
pub struct Listeners {
    pub grpc: tokio::net::TcpListener,
    pub callbacks: tokio::net::TcpListener,
    pub metrics: tokio::net::TcpListener,
}

impl Listeners {
    pub async fn bind(s: &KitSettings) -> anyhow::Result<Self> {
        use anyhow::Context;
        Ok(Self {
            grpc: tokio::net::TcpListener::bind(s.grpc_listen)
                .await
                .with_context(|| format!("binding ADAPTER_GRPC_LISTEN {}", s.grpc_listen))?,
            callbacks: tokio::net::TcpListener::bind(s.callback_listen)
                .await
                .with_context(|| {
                    format!("binding ADAPTER_CALLBACK_LISTEN {}", s.callback_listen)
                })?,
            metrics: tokio::net::TcpListener::bind(s.metrics_listen)
                .await
                .with_context(|| format!("binding ADAPTER_METRICS_LISTEN {}", s.metrics_listen))?,
        })
    }

    pub async fn run<A: Adapter>(
        self,
        adapter: Arc<A>,
        settings: KitSettings,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let channel = adapter.channel();
        let metrics = Metrics::new(channel)?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = move |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.changed().await;
        };

        let forwarder = callbacks::Forwarder::new(&settings, channel)?;
        let cb_router = callbacks::router(adapter.clone(), forwarder, metrics.clone(), &settings);
        let cb = tokio::spawn(callbacks::serve(
            self.callbacks,
            cb_router,
            settings.callback_header_timeout,
            metrics.clone(),
            stopped(stop_rx.clone()),
        ));
        let m = metrics.clone();
        let metrics_router = axum::Router::new()
            .route(
                "/metrics",
                axum::routing::get(move || {
                    std::future::ready((
                        [(axum::http::header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
                        m.render(),
                    ))
                }),
            )
            .route("/healthz", axum::routing::get(|| std::future::ready("ok")));
        let mh = tokio::spawn(
            axum::serve(self.metrics.tap_io(nodelay), metrics_router)
                .with_graceful_shutdown(stopped(stop_rx.clone()))
                .into_future(),
        );
        let (health_reporter, health) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<pb::channel_adapter_service_server::ChannelAdapterServiceServer<grpc::AdapterService<A>>>()
            .await;
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(payproto::ADAPTER_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(payproto::ADAPTER_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;
        let timed = grpc_metrics::Timed::new(
            metrics.grpc_request_duration.clone(),
            grpc_metrics::known_paths(&[payproto::ADAPTER_DESCRIPTOR_SET]),
        );
        // `ADAPTER_TLS_CERT_FILE`/`_KEY_FILE`: the ChannelAdapter port speaks TLS only;
        // `ADAPTER_TLS_CLIENT_CA_FILE`: and payd must present a certificate of that CA.
        let mut server = tonic::transport::Server::builder();
        if let Some(tls) = payproto::tls::TlsFiles::from_env("ADAPTER_TLS_", "CLIENT_CA_FILE")
            .server("ADAPTER_TLS_*")?
        {
            server = server.tls_config(tls)?;
        }
        let grpc = tokio::spawn(
            server
                .add_service(health)
                .add_service(reflection_v1)
                .add_service(reflection_v1alpha)
                // Health stays open for probes; ChannelAdapter only admits payd's token.
                .add_service(timed.wrap(
                    pb::channel_adapter_service_server::ChannelAdapterServiceServer::with_interceptor(
                        grpc::AdapterService::new(adapter, metrics.clone()),
                        grpc::RequirePaydToken::new(settings.grpc_token.clone(), metrics),
                    ),
                ))
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(self.grpc).with_nodelay(Some(true)),
                    stopped(stop_rx.clone()),
                ),
        );
        tracing::info!(channel = ?channel, "adapter serving");
        shutdown.await;
        tracing::info!("adapter shutting down");
        let _ = stop_tx.send(true);
        let _ = tokio::time::timeout(settings.shutdown_grace, async {
            let _ = cb.await;
            let _ = mh.await;
            let _ = grpc.await;
        })
        .await;
        Ok(())
    }
}

/// TCP_NODELAY on accepted connections: answers go out as headers then body, and Nagle's
/// algorithm would hold the body until the peer's delayed ACK (~40 ms) on every callback.
fn nodelay(s: &mut tokio::net::TcpStream) {
    let _ = s.set_nodelay(true);
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// JSON logs on stderr, level from `RUST_LOG` (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .json()
        .flatten_event(true)
        .try_init();
}
