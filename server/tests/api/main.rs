//! In-process API tests: each test gets its own database, Redis prefix and server on port 0.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod auth;
mod data_protection;
mod events;
mod helpers;
mod idempotency;
mod lease;
mod locks;
mod orders;
mod outbox;
mod pay;
mod queries;
mod recon;
mod refunds;
mod sessions;
mod validation;
