//! Local stand-ins for WeChat Pay, Alipay and UnionPay.
//!
//! # Layout
//! The sandbox plays the *platform* side of each protocol, so every module here verifies what a
//! merchant sends and signs what a platform would send back.
//!
//! - [`keys`]: PEM/DER key and certificate loading, fresh RSA-2048 keys, the RSA-SHA256 primitive.
//! - [`form`]: `application/x-www-form-urlencoded` decoding and encoding (Alipay and UnionPay).
//! - [`wechat::protocol`]: WeChat Pay API v3, one module per concern: `Authorization` checks
//!   ([`wechat::protocol::authorization`]), answer and callback signing
//!   ([`wechat::protocol::signing`]), AEAD_AES_256_GCM callback envelopes
//!   ([`wechat::protocol::notification`]), error bodies ([`wechat::protocol::error_body`]).
//! - [`alipay::protocol`]: Alipay gateway call verification ([`alipay::protocol::request`]),
//!   signed synchronous responses and async notifications ([`alipay::protocol::signing`]), yuan
//!   amounts and Beijing timestamps ([`alipay::protocol::units`]).
//! - [`unionpay::protocol`]: UnionPay 5.1.0 request verification, response and notification signing
//!   with `signPubKeyCert`, `respCode` values.
//! - `wechat::server`, `alipay::server`, `unionpay::server`: the platforms' HTTP APIs over a
//!   [`ledger`], plus their callbacks; `wechat::bill`, `alipay::bill`, `unionpay::bill`: statement
//!   files; [`statements`]: a day's lines with the control API's statement faults, synthetic
//!   days, bills spooled on disk.
//! - [`platform`]: the [`platform::SimulatedPlatform`] trait, each platform's constant
//!   [`platform::Profile`] and the shared [`platform::Core`] state (ledger, faults, delivery log,
//!   time scale); [`control`]: the unsigned `/sandbox/` control API;
//!   [`callbacks`]: delivery with retries and fault injection; [`http_client`]: a plain HTTP/1.1
//!   client; [`keyfiles`]: `sandbox keygen` and key loading; [`serve`]: router assembly.

pub mod alipay;
pub mod callbacks;
pub mod control;
pub mod form;
pub mod http_client;
pub mod keyfiles;
pub mod keys;
pub mod ledger;
pub mod platform;
pub mod serve;
pub mod statements;
pub mod unionpay;
pub mod wechat;
