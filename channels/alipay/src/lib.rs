//! Alipay OpenAPI (classic `gateway.do` protocol) adapter: the protocol modules and the adapter
//! process (`alipay-adapter`).
//!
//! # Layout
//! - [`signature`]: RSA2 (SHA256withRSA) signing of the sorted `k=v&…` parameter string, verification
//!   of synchronous responses over the exact raw text of their `*_response` node, and of asynchronous
//!   notifications (without `sign` and `sign_type`).
//! - [`wire`]: gateway parameters, `biz_content` and response-node types for precreate, page/app
//!   pay, query, close, refund, refund query and the bill download URL; the form decoder for
//!   notifications; and the one exact conversion between fen and Alipay's yuan strings (`"88.88"`).
//! - [`status`]: `trade_status`, response `code`/`sub_code` and refund-query semantics, mapped so that
//!   only an explicit success or failure is final.
//! - [`config`]: `ALIPAY_*` settings (keys also from `*_FILE`), validated at start.
//! - [`client`]: signed gateway calls; every answer is verified before it is parsed.
//! - [`statement`]: the trade bill (ZIP of GBK CSV) as statement lines.
//! - [`adapter`]: [`channel_kit::Adapter`] over the above, including notification verification.

pub mod adapter;
pub mod client;
pub mod config;
pub mod signature;
pub mod statement;
pub mod status;
pub mod wire;
