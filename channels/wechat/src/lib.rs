//! WeChat Pay API v3 adapter: the protocol modules and the adapter process (`wechat-adapter`).
//!
//! # Layout
//! - [`signature`]: request signing (`WECHATPAY2-SHA256-RSA2048` Authorization header), verification of
//!   responses and notifications against platform keys keyed by serial, `AEAD_AES_256_GCM` decryption
//!   of notification resources and downloaded certificates, and the JSAPI `paySign` parameters.
//! - [`wire`]: serde types for the JSON bodies (prepay, query, close, refund, refund query, trade bill,
//!   notification envelope and decrypted resources). Amounts are integer fen throughout.
//! - [`status`]: exhaustive mapping of `trade_state` / refund `status` to the few outcomes the core
//!   understands; only an explicit success or failure is final.
//! - [`config`]: `WECHAT_*` settings (secrets also from `*_FILE`), validated at start.
//! - [`platform_keys`]: the trusted platform keys (configured public keys and certificates from
//!   `/v3/certificates`), chosen by `Wechatpay-Serial` and refreshed as WeChat rotates them.
//! - [`client`]: signed HTTP calls; every answer's signature is verified before it is parsed.
//! - [`statement`]: the trade bill (backtick-prefixed CSV) as statement lines.
//! - [`adapter`]: [`channel_kit::Adapter`] over the above, including callback verification.

pub mod adapter;
pub mod client;
pub mod config;
pub mod platform_keys;
pub mod signature;
pub mod statement;
pub mod status;
pub mod wire;
