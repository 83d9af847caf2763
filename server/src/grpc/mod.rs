//! gRPC wiring: one router used by production and tests alike.
pub mod audit;
pub mod convert;
pub mod events;
pub mod payment;
pub mod recon;
mod refund;
pub mod status;
pub mod watch;

use std::time::Duration;

use payproto::channel::v1::channel_events_service_server::ChannelEventsServiceServer;
use payproto::payment::v1::payment_service_server::PaymentServiceServer;
use payproto::payment::v1::reconciliation_service_server::ReconciliationServiceServer;
use tonic::transport::server::Router;

/// The router behind the auth layer.
pub type AuthedRouter =
    Router<tower::layer::util::Stack<crate::auth::AuthLayer, tower::layer::util::Identity>>;
use tonic_health::server::HealthReporter;

use crate::app::App;

/// Per-call deadline enforced by the server, whatever the client asked.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Builds the router: health, reflection (v1 and v1alpha, so grpcurl 1.8 and grpcurl-rs both
/// discover the API) and the payment service.
///
/// With `tls`, the port speaks TLS only (mutual TLS when it names a client CA).
///
/// # Errors
/// When the embedded descriptor sets do not parse (a build problem), or rustls refuses `tls`.
pub async fn build_grpc_router(
    app: App,
    auth: crate::auth::AuthLayer,
    tls: Option<tonic::transport::ServerTlsConfig>,
) -> anyhow::Result<(AuthedRouter, HealthReporter)> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<PaymentServiceServer<payment::PaymentApi>>()
        .await;
    reporter
        .set_serving::<ReconciliationServiceServer<recon::ReconciliationApi>>()
        .await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(payproto::PAYD_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(payproto::PAYD_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let timed = crate::grpc_metrics::Timed::new(
        app.metrics.grpc_request_duration.clone(),
        crate::grpc_metrics::known_paths(&[payproto::PAYD_DESCRIPTOR_SET]),
    );
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        server = server.tls_config(tls)?;
    }
    let router = server
        // Bound every call, so a stuck dependency cannot pin a request forever.
        .timeout(REQUEST_TIMEOUT)
        // Every payment.v1 call: signature, window, nonce, role, rate limit (crate::auth).
        .layer(auth)
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            timed.wrap(PaymentServiceServer::new(payment::PaymentApi::new(
                app.clone(),
            ))),
        )
        .add_service(timed.wrap(ReconciliationServiceServer::new(
            recon::ReconciliationApi::new(app.clone()),
        )))
        .add_service(timed.wrap(
            payproto::payment::v1::audit_service_server::AuditServiceServer::new(
                audit::AuditApi::new(app.clone()),
            ),
        ))
        .add_service(timed.wrap(ChannelEventsServiceServer::new(events::EventsApi::new(app))));
    Ok((router, reporter))
}
