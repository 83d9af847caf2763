//! WeChat Pay API v3 seen from the platform, one module per concern: [`authorization`] checks a
//! merchant's `Authorization` header, [`signing`] signs answers and callbacks (`Wechatpay-*`
//! headers), [`notification`] seals callback resources with AEAD_AES_256_GCM into the
//! notification envelope, and [`error_body`] builds the JSON error bodies. Everything is
//! re-exported here.

use crate::keys::KeyError;

pub mod authorization;
pub mod error_body;
pub mod notification;
pub mod signing;

pub use authorization::{
    Authorization, IncomingRequest, MAX_CLOCK_SKEW_SECS, MerchantKeys, RequestRejection,
    request_message, verify_pay_sign,
};
pub use error_body::{ErrorBody, ErrorCode, ErrorDetail};
pub use notification::{
    ApiV3Key, EncryptedResource, EventType, NotificationDraft, NotificationEnvelope,
    RESOURCE_ALGORITHM,
};
pub use signing::{
    PROBE_SIGNATURE_PREFIX, PlatformSigner, SignatureHeaders, response_message,
    verify_platform_signature,
};

/// The only signature scheme the sandbox accepts and emits.
pub const SIGNATURE_SCHEME: &str = "WECHATPAY2-SHA256-RSA2048";

/// Failures of the platform's own operations (signing, encryption, serialisation).
#[derive(Debug, thiserror::Error)]
pub enum WechatProtocolError {
    /// The APIv3 key must be exactly 32 bytes (AES-256).
    #[error("APIv3 key must be 32 bytes, got {0}")]
    ApiV3KeyLength(usize),
    /// The resource nonce must be exactly 12 bytes.
    #[error("resource nonce must be 12 bytes, got {0}")]
    NonceLength(usize),
    /// `ciphertext` is not Base64.
    #[error("resource ciphertext is not Base64")]
    CiphertextEncoding,
    /// AES-GCM refused: wrong key, nonce, associated data, or a tampered ciphertext.
    #[error("AES-GCM authentication failed")]
    Aead,
    /// RSA signing failed.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// JSON serialisation failed.
    #[error("JSON serialisation failed")]
    Json(#[from] serde_json::Error),
}
