//! Generated gRPC code. `payment.v1` is the API internal services call; `channel.v1` is the
//! contract between the core and each channel adapter process. Nothing generated is committed.
#![allow(clippy::all, clippy::unwrap_used, clippy::expect_used, missing_docs)]

pub mod auth;
pub mod tls;

pub mod common {
    pub mod v1 {
        tonic::include_proto!("common.v1");
    }
}

pub mod payment {
    pub mod v1 {
        tonic::include_proto!("payment.v1");
        pub use crate::common::v1::Money;
    }
}

pub mod channel {
    pub mod v1 {
        tonic::include_proto!("channel.v1");
        pub use crate::common::v1::Money;
    }
}

/// Encoded `FileDescriptorSet` of every proto above, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("payplatform_descriptor");

/// The descriptor set payd's reflection serves: `payment.v1` and `ChannelEventsService` (payd
/// does not serve `ChannelAdapterService`).
pub const PAYD_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("payd_descriptor");

/// The descriptor set an adapter's reflection serves: `ChannelAdapterService` only.
pub const ADAPTER_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("adapter_descriptor");
