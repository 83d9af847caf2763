//! # payd
//!
//! The core of the payment platform: it owns orders (and, later, payment attempts and refunds)
//! and the truth about them.
//!
//! # Layout
//! - [`domain`]: pure types and the order state machine (no IO).
//! - [`app`]: use cases; each change is one Postgres transaction with its idempotency record.
//! - [`storage`]: diesel schema, pool and repositories (Postgres is the source of truth).
//! - [`locks`]: Redis per-order locks with fencing tokens checked by Postgres writes.
//! - [`channel_client`]: the outbound side: adapter clients (`channel.v1.ChannelAdapter`) with
//!   payd's token, the `channel.v1` conversions, and the one reading of a failed call's status.
//!   Used by `app` and `grpc`; imports neither.
//! - [`auth`]: the tower layer that authenticates, authorizes and rate-limits `payment.v1`.
//! - [`grpc`]: the tonic services (inbound) and the one error-to-status mapping.
//! - [`crypto`]: the data keys: personal fields sealed at rest (AES-256-GCM), keyed lookups.
//! - [`config`], [`telemetry`], [`metrics`], [`startup`]: process wiring.
pub mod app;
pub mod auth;
pub mod channel_client;
pub mod config;
pub mod crypto;
pub mod domain;
pub mod grpc;
pub mod grpc_metrics;
pub mod locks;
pub mod metrics;
pub mod ops;
pub mod startup;
pub mod storage;
pub mod telemetry;
