//! Alipay OpenAPI (classic `gateway.do` protocol) adapter: the protocol modules (the process comes
//! with the adapter kit).
//!
//! # Layout
//! - [`signature`]: RSA2 (SHA256withRSA) signing of the sorted `k=v&…` parameter string, verification
//!   of synchronous responses over the exact raw text of their `*_response` node, and of asynchronous
//!   notifications (without `sign` and `sign_type`).
//! - [`wire`]: gateway parameters, `biz_content` and response-node types for precreate, page/wap/app
//!   pay, query, close, refund, refund query and the bill download URL; the form decoder for
//!   notifications; and the one exact conversion between fen and Alipay's yuan strings (`"88.88"`).
//! - [`status`]: `trade_status`, response `code`/`sub_code` and refund-query semantics, mapped so that
//!   only an explicit success or failure is final.

pub mod signature;
pub mod status;
pub mod wire;
