//! An idempotency claim: which call of which app a key names, and what it asked.
use super::{AppId, IdempotencyKey};

/// One request's claim on a key.
#[derive(Debug, Clone)]
pub struct KeyClaim {
    pub app: AppId,
    pub key: IdempotencyKey,
    /// Full gRPC method name: a key is bound to one method.
    pub method: &'static str,
    /// SHA-256 of the encoded request with the key itself cleared.
    pub fingerprint: [u8; 32],
}
