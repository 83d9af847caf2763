//! UnionPay online gateway (全渠道 / ACP) 5.1.0 adapter: the protocol modules and the adapter process
//! (`unionpay-adapter`).
//!
//! # Layout
//! - [`signature`]: `signMethod=01` signing (SHA-256 hex of the sorted `k=v&…` string, then
//!   SHA256withRSA over that hex), the merchant `certId`, and verification of answers and
//!   notifications with the `signPubKeyCert` they carry, checked against configured issuers, the
//!   UnionPay subject name and the validity period (or with a pinned certificate named by `certId`).
//! - [`wire`]: field maps for consume (txnType 01, front and back), query (00) and refund (04), the
//!   bracket-aware parser of synchronous answers, the notification form decoder, and the one exact
//!   conversion between fen and `txnAmt` digit strings.
//! - [`status`]: `respCode` / `origRespCode` semantics; `00` accepts, `03`/`04`/`05` mean "query
//!   again", and only an explicit success or failure is final.
//! - [`config`]: `UNIONPAY_*` settings (keys and certificates also from `*_FILE`), validated at start.
//! - [`client`]: signed form posts; every answer is verified before it is read.
//! - [`statement`]: the reconciliation file (`txnType=76`, zlib-wrapped ZIP, fixed-width ZM lines).
//! - [`adapter`]: [`channel_kit::Adapter`] over the above, including notification verification.

pub mod adapter;
pub mod client;
pub mod config;
pub mod signature;
pub mod statement;
pub mod status;
pub mod wire;
