//! Clients of the adapter processes, one per enabled channel.
use std::collections::HashMap;
use std::time::Duration;

use payproto::channel::v1::channel_adapter_client::ChannelAdapterClient;
use tonic::transport::{Channel as GrpcChannel, Endpoint};

use super::ServiceError;
use crate::domain::Channel;

#[derive(Clone, Default)]
pub struct ChannelClients {
    clients: HashMap<Channel, ChannelAdapterClient<GrpcChannel>>,
}

impl ChannelClients {
    /// Lazily connecting clients: payd starts even while an adapter is down; calls to it fail
    /// with UNAVAILABLE until it is back.
    ///
    /// # Errors
    /// When an endpoint is not a valid URI.
    pub fn new(
        endpoints: &[(Channel, Option<String>)],
        timeout: Duration,
    ) -> Result<Self, tonic::transport::Error> {
        let mut clients = HashMap::new();
        for (channel, endpoint) in endpoints {
            if let Some(url) = endpoint {
                let ep = Endpoint::from_shared(url.clone())?
                    .connect_timeout(Duration::from_secs(2))
                    .timeout(timeout);
                clients.insert(*channel, ChannelAdapterClient::new(ep.connect_lazy()));
            }
        }
        Ok(Self { clients })
    }

    pub fn get(&self, channel: Channel) -> Result<ChannelAdapterClient<GrpcChannel>, ServiceError> {
        self.clients
            .get(&channel)
            .cloned()
            .ok_or_else(|| ServiceError::ChannelDisabled(channel.to_string()))
    }
}
