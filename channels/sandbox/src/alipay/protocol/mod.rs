//! The Alipay open API gateway seen from the platform, one module per concern: [`request`]
//! verifies an app's RSA2-signed gateway call, [`signing`] answers with a signed
//! `{"…_response":{…},"sign":"…"}` body and signs async notifications, and [`units`] converts yuan
//! decimal strings and Beijing timestamps. Everything is re-exported here.
//!
//! Signing content is always "sorted, non-empty, decoded `k=v` joined by `&`"; what differs is
//! the excluded keys: requests exclude `sign` only, notifications exclude `sign` and `sign_type`.

use crate::form::Params;
use crate::keys::KeyError;

pub mod request;
pub mod signing;
pub mod units;

pub use request::{AppKeys, GatewayRejection, GatewayRequest, ResultNode, VerifiedCall};
pub use signing::{
    AlipaySigner, ERROR_NODE, encode_notify_body, response_node_name, verify_notify,
    verify_response_body,
};
pub use units::{
    AmountError, MAX_TRADE_FEN, TIMESTAMP_FORMAT, format_timestamp, format_yuan, parse_timestamp,
    parse_trade_amount, parse_yuan,
};

/// The only `sign_type` the sandbox accepts and emits (SHA256withRSA).
pub const SIGN_TYPE_RSA2: &str = "RSA2";

/// Keys left out of a request's signing content.
const REQUEST_UNSIGNED: &[&str] = &["sign"];
/// Keys left out of a notification's signing content.
const NOTIFY_UNSIGNED: &[&str] = &["sign", "sign_type"];

/// Failures of the platform's own operations.
#[derive(Debug, thiserror::Error)]
pub enum AlipayProtocolError {
    /// RSA signing failed.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A response node was not a JSON object, or could not be serialised.
    #[error("response node is not a JSON object: {0}")]
    NodeNotObject(String),
    /// The method name cannot become a node name (only `[a-z0-9.]` is allowed).
    #[error("method {0:?} cannot name a response node")]
    BadMethod(String),
    /// A synchronous response body could not be taken apart (test-side verification).
    #[error("malformed response body: {0}")]
    MalformedResponse(String),
    /// A signature did not verify (test-side verification).
    #[error("signature does not verify")]
    SignatureMismatch,
}

/// `k=v&…` over `params` sorted by key, leaving out `excluded` keys and empty values. Values
/// are used decoded, exactly as received.
pub fn signing_content(params: &Params, excluded: &[&str]) -> String {
    params
        .iter()
        .filter(|(k, v)| !v.is_empty() && !excluded.contains(&k.as_str()))
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}
