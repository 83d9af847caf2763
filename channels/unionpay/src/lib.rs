//! UnionPay online gateway (全渠道 / ACP) 5.1.0 adapter: the protocol modules (the process comes with
//! the adapter kit).
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

pub mod signature;
pub mod status;
pub mod wire;
