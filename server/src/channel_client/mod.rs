//! The outbound side: clients of the adapter processes (`channel.v1.ChannelAdapter`), one per
//! enabled channel, each presenting payd's token for that adapter on every call; the `channel.v1`
//! conversions; and the one reading of a failed call's status. Imports neither `app` nor `grpc`.
mod convert;
mod failure;

pub use convert::{channel_to_pb, method_to_pb, result_from_pb, timestamp};
pub use failure::CallFailure;

use std::collections::HashMap;
use std::time::Duration;

use payproto::channel::v1::channel_adapter_service_client::ChannelAdapterServiceClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel as GrpcChannel, Endpoint};

use crate::config::AdapterEndpoint;
use crate::domain::Channel;

/// A `channel.v1.ChannelAdapter` client that sends `authorization: Bearer <token>`, its calls
/// timed into `payd_channel_request_duration_seconds`.
pub type AdapterClient = ChannelAdapterServiceClient<
    InterceptedService<crate::grpc_metrics::TimedService<GrpcChannel>, BearerToken>,
>;

/// Adds payd's credential for one adapter to every request.
#[derive(Clone)]
pub struct BearerToken(MetadataValue<Ascii>);

impl Interceptor for BearerToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ChannelClientsError {
    #[error("{channel} endpoint: {source}")]
    Endpoint {
        channel: Channel,
        source: tonic::transport::Error,
    },
    #[error("{channel} token is not a valid header value")]
    Token { channel: Channel },
    #[error("the channel call histogram could not be made")]
    Metrics,
    #[error("{channel} endpoint: {source}")]
    Tls {
        channel: Channel,
        source: payproto::tls::TlsError,
    },
}

/// No adapter is configured for this channel on this server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("channel {0} is not enabled on this server")]
pub struct ChannelDisabled(pub Channel);

/// The adapter clients of the enabled channels.
#[derive(Clone, Default)]
pub struct ChannelClients {
    clients: HashMap<Channel, AdapterClient>,
}

impl ChannelClients {
    /// Lazily connecting clients: payd starts even while an adapter is down; calls to it fail
    /// with UNAVAILABLE until it is back.
    ///
    /// # Errors
    /// When an endpoint is not a valid URI or a token not a valid header value.
    pub fn new(
        adapters: &[AdapterEndpoint],
        timeout: Duration,
    ) -> Result<Self, ChannelClientsError> {
        let unregistered = prometheus::HistogramVec::new(
            prometheus::HistogramOpts::new("unregistered", "not exported"),
            &["channel", "service", "method"],
        )
        .map_err(|_| ChannelClientsError::Metrics)?;
        Self::new_timed(adapters, timeout, unregistered, None)
    }

    /// [`ChannelClients::new`], timing every call into `histogram` (labels channel, service,
    /// method), over TLS (`tls`, for `https://` endpoints: `PAYD_CHANNEL_TLS_*`).
    ///
    /// # Errors
    /// As [`ChannelClients::new`], and TLS settings that do not fit an endpoint's scheme.
    pub fn new_timed(
        adapters: &[AdapterEndpoint],
        timeout: Duration,
        histogram: prometheus::HistogramVec,
        tls: Option<tonic::transport::ClientTlsConfig>,
    ) -> Result<Self, ChannelClientsError> {
        let timed = crate::grpc_metrics::Timed::new(
            histogram,
            crate::grpc_metrics::known_paths(&[payproto::ADAPTER_DESCRIPTOR_SET]),
        );
        let mut clients = HashMap::new();
        for a in adapters {
            let channel = a.channel;
            let ep = Endpoint::from_shared(a.url.clone())
                .map_err(|source| ChannelClientsError::Endpoint { channel, source })?
                .connect_timeout(Duration::from_secs(2))
                .timeout(timeout);
            // The TLS settings serve the https:// endpoints; a plain one (an adapter not moved
            // to TLS yet) stays plain.
            let https = ep.uri().scheme_str() == Some("https");
            let ep =
                payproto::tls::client_endpoint(ep, tls.clone().filter(|_| https), channel.as_str())
                    .map_err(|source| ChannelClientsError::Tls { channel, source })?;
            let mut auth: MetadataValue<Ascii> = format!("Bearer {}", a.token.expose())
                .parse()
                .map_err(|_| ChannelClientsError::Token { channel })?;
            auth.set_sensitive(true);
            clients.insert(
                channel,
                ChannelAdapterServiceClient::with_interceptor(
                    timed
                        .with_prefix(&[channel.as_str()])
                        .wrap(ep.connect_lazy()),
                    BearerToken(auth),
                ),
            );
        }
        Ok(Self { clients })
    }

    /// The client of `channel`'s adapter.
    ///
    /// # Errors
    /// [`ChannelDisabled`] when this server has no adapter configured for `channel`.
    pub fn get(&self, channel: Channel) -> Result<AdapterClient, ChannelDisabled> {
        self.clients
            .get(&channel)
            .cloned()
            .ok_or(ChannelDisabled(channel))
    }
}
