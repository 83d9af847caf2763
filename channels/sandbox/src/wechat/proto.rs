//! WeChat Pay API v3 seen from the platform: check a merchant's `Authorization` header, sign
//! responses and callbacks (`Wechatpay-*` headers), seal callback resources with
//! AEAD_AES_256_GCM into the notification envelope, and build the JSON error bodies.
//!
//! The header is parsed into an [`Authorization`] first and only then checked, so every way a
//! header can be malformed has its own [`RequestRejection`] before any cryptography runs.

use std::str::FromStr;

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, FixedOffset, SecondsFormat};
use rand::Rng;
use rand::distributions::Alphanumeric;
use rsa::{RsaPrivateKey, RsaPublicKey};
use serde::{Deserialize, Serialize};

use crate::keys::{self, KeyError, Keyring};

/// The only signature scheme the sandbox accepts and emits.
pub const SIGNATURE_SCHEME: &str = "WECHATPAY2-SHA256-RSA2048";

/// Prefix of the deliberately wrong signatures WeChat sends to test merchants' verification.
pub const PROBE_SIGNATURE_PREFIX: &str = "WECHATPAY/SIGNTEST/";

/// Largest accepted `|now - timestamp|` minus one: like the official SDKs, a difference of
/// 300 s or more is refused. WeChat documents no server-side window; this mirrors the client rule.
pub const MAX_CLOCK_SKEW_SECS: i64 = 300;

/// The AEAD algorithm name carried in every callback resource.
pub const RESOURCE_ALGORITHM: &str = "AEAD_AES_256_GCM";

/// Why a merchant's request was refused. Every variant is answered with HTTP 401 `SIGN_ERROR`
/// (see [`RequestRejection::error_body`]), as WeChat does.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestRejection {
    /// No `Authorization` header at all.
    #[error("missing Authorization header")]
    MissingAuthorization,
    /// The header does not start with `WECHATPAY2-SHA256-RSA2048` and one space.
    #[error("unsupported authorization scheme")]
    UnsupportedScheme,
    /// The `key="value"` list is not well formed.
    #[error("malformed Authorization parameters: {0}")]
    Syntax(&'static str),
    /// A parameter other than the five documented ones.
    #[error("unknown Authorization parameter {0:?}")]
    UnknownParameter(String),
    /// One of the five parameters appears twice.
    #[error("Authorization parameter {0} appears twice")]
    DuplicateParameter(&'static str),
    /// One of the five parameters is absent.
    #[error("Authorization parameter {0} is missing")]
    MissingParameter(&'static str),
    /// `timestamp` is not canonical decimal Unix seconds.
    #[error("timestamp is not decimal Unix seconds")]
    BadTimestamp,
    /// `signature` is not standard padded Base64.
    #[error("signature is not Base64")]
    BadSignatureEncoding,
    /// The request target is not origin-form (`/path?query`).
    #[error("request target must start with '/'")]
    BadRequestTarget,
    /// No merchant key is registered under `serial_no`.
    #[error("no merchant certificate with serial {0}")]
    UnknownSerial(String),
    /// The serial is registered, but to another merchant.
    #[error("serial {serial} does not belong to merchant {mchid}")]
    SerialNotOwned {
        /// The serial named in the header.
        serial: String,
        /// The mchid named in the header.
        mchid: String,
    },
    /// The timestamp is 5 minutes or more away from the sandbox clock.
    #[error("timestamp {timestamp} is too far from now ({now})")]
    Expired {
        /// The header's timestamp.
        timestamp: i64,
        /// The sandbox clock.
        now: i64,
    },
    /// The signature does not verify over the rebuilt message.
    #[error("signature does not match the request")]
    SignatureMismatch,
}

/// Failures of the platform's own operations (signing, encryption, serialisation).
#[derive(Debug, thiserror::Error)]
pub enum WechatProtoError {
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

/// A parsed `Authorization: WECHATPAY2-SHA256-RSA2048 …` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authorization {
    /// Merchant id.
    pub mchid: String,
    /// Request nonce.
    pub nonce_str: String,
    /// Unix seconds.
    pub timestamp: i64,
    /// Serial of the merchant API certificate, upper-case hex.
    pub serial_no: String,
    /// Decoded RSA signature bytes.
    pub signature: Vec<u8>,
}

const PARAMETER_NAMES: [&str; 5] = ["mchid", "nonce_str", "timestamp", "serial_no", "signature"];

impl FromStr for Authorization {
    type Err = RequestRejection;

    /// Parses strictly: the scheme, one space, then exactly the five `key="value"` pairs in any
    /// order, separated by bare commas. Values may not contain `"`.
    fn from_str(header: &str) -> Result<Self, Self::Err> {
        let rest = header
            .strip_prefix(SIGNATURE_SCHEME)
            .and_then(|r| r.strip_prefix(' '))
            .ok_or(RequestRejection::UnsupportedScheme)?;
        let mut values: [Option<&str>; 5] = [None; 5];
        let mut cursor = rest;
        loop {
            let (name, after_name) = cursor
                .split_once('=')
                .ok_or(RequestRejection::Syntax("expected key=\"value\""))?;
            let index = PARAMETER_NAMES
                .iter()
                .position(|known| *known == name)
                .ok_or_else(|| RequestRejection::UnknownParameter(name.to_owned()))?;
            let quoted = after_name
                .strip_prefix('"')
                .ok_or(RequestRejection::Syntax("value must be double-quoted"))?;
            let (value, after_value) = quoted
                .split_once('"')
                .ok_or(RequestRejection::Syntax("unterminated quoted value"))?;
            if value.is_empty() {
                return Err(RequestRejection::Syntax("empty value"));
            }
            if values[index].replace(value).is_some() {
                return Err(RequestRejection::DuplicateParameter(PARAMETER_NAMES[index]));
            }
            if after_value.is_empty() {
                break;
            }
            cursor = after_value
                .strip_prefix(',')
                .ok_or(RequestRejection::Syntax("pairs must be separated by ','"))?;
        }
        let take =
            |i: usize| values[i].ok_or(RequestRejection::MissingParameter(PARAMETER_NAMES[i]));
        let timestamp_text = take(2)?;
        Ok(Self {
            mchid: take(0)?.to_owned(),
            nonce_str: take(1)?.to_owned(),
            timestamp: parse_unix_seconds(timestamp_text)?,
            serial_no: take(3)?.to_owned(),
            signature: BASE64
                .decode(take(4)?)
                .map_err(|_| RequestRejection::BadSignatureEncoding)?,
        })
    }
}

/// Canonical decimal only, so that the number re-rendered into the message equals the header text.
fn parse_unix_seconds(text: &str) -> Result<i64, RequestRejection> {
    let canonical = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    if !canonical {
        return Err(RequestRejection::BadTimestamp);
    }
    text.parse().map_err(|_| RequestRejection::BadTimestamp)
}

impl Authorization {
    /// Renders the header value in the SDKs' order (mchid, nonce_str, timestamp, serial_no,
    /// signature); test clients use it.
    pub fn to_header_value(&self) -> String {
        format!(
            "{SIGNATURE_SCHEME} mchid=\"{}\",nonce_str=\"{}\",timestamp=\"{}\",serial_no=\"{}\",signature=\"{}\"",
            self.mchid,
            self.nonce_str,
            self.timestamp,
            self.serial_no,
            BASE64.encode(&self.signature)
        )
    }
}

/// The five-line request message: method, raw request target, timestamp, nonce, body, each
/// followed by `\n` (the body line too, even when the body is empty).
pub fn request_message(
    method: &str,
    target: &str,
    timestamp: i64,
    nonce: &str,
    body: &[u8],
) -> Vec<u8> {
    let mut message = format!("{method}\n{target}\n{timestamp}\n{nonce}\n").into_bytes();
    message.extend_from_slice(body);
    message.push(b'\n');
    message
}

/// The three-line response/callback message: `timestamp\nnonce\nbody\n`.
pub fn response_message(timestamp: i64, nonce: &str, body: &[u8]) -> Vec<u8> {
    let mut message = format!("{timestamp}\n{nonce}\n").into_bytes();
    message.extend_from_slice(body);
    message.push(b'\n');
    message
}

/// A merchant request as it arrived, before any decoding.
#[derive(Clone, Copy, Debug)]
pub struct IncomingRequest<'a> {
    /// HTTP method as sent (upper case).
    pub method: &'a str,
    /// Raw request target, path plus `?query`, still percent-encoded.
    pub target: &'a str,
    /// The `Authorization` header value, if any.
    pub authorization: Option<&'a str>,
    /// Exact body bytes.
    pub body: &'a [u8],
}

/// Registered merchant API keys: `serial_no` → (mchid, public key).
#[derive(Clone, Debug, Default)]
pub struct MerchantKeys {
    keyring: Keyring,
}

impl MerchantKeys {
    /// No merchants registered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the API certificate key `serial_no` of merchant `mchid`.
    pub fn register(&mut self, mchid: &str, serial_no: &str, public_key: RsaPublicKey) {
        self.keyring.register(serial_no, mchid, public_key);
    }

    /// Checks a merchant request: header syntax, key lookup by serial, serial ownership,
    /// the ±5-minute window against `now` (Unix seconds), then the signature over the message
    /// rebuilt from the raw method, target and body.
    ///
    /// # Errors
    /// The first [`RequestRejection`] found, in that order.
    pub fn verify_request(
        &self,
        request: &IncomingRequest<'_>,
        now: i64,
    ) -> Result<Authorization, RequestRejection> {
        let auth: Authorization = request
            .authorization
            .ok_or(RequestRejection::MissingAuthorization)?
            .parse()?;
        if !request.target.starts_with('/') {
            return Err(RequestRejection::BadRequestTarget);
        }
        let entry = self
            .keyring
            .find(&auth.serial_no)
            .ok_or_else(|| RequestRejection::UnknownSerial(auth.serial_no.clone()))?;
        if entry.owner != auth.mchid {
            return Err(RequestRejection::SerialNotOwned {
                serial: auth.serial_no.clone(),
                mchid: auth.mchid.clone(),
            });
        }
        if (now - auth.timestamp).abs() >= MAX_CLOCK_SKEW_SECS {
            return Err(RequestRejection::Expired {
                timestamp: auth.timestamp,
                now,
            });
        }
        let message = request_message(
            request.method,
            request.target,
            auth.timestamp,
            &auth.nonce_str,
            request.body,
        );
        if !keys::verify_sha256_rsa(&entry.public_key, &message, &auth.signature) {
            return Err(RequestRejection::SignatureMismatch);
        }
        Ok(auth)
    }
}

/// Checks a JSAPI `paySign` (`appId\ntimeStamp\nnonceStr\npackage\n`, merchant key), the way the
/// WeChat client would before opening the cashier.
///
/// # Errors
/// [`RequestRejection::BadSignatureEncoding`] or [`RequestRejection::SignatureMismatch`].
pub fn verify_pay_sign(
    merchant_key: &RsaPublicKey,
    app_id: &str,
    time_stamp: &str,
    nonce_str: &str,
    package: &str,
    pay_sign: &str,
) -> Result<(), RequestRejection> {
    let message = format!("{app_id}\n{time_stamp}\n{nonce_str}\n{package}\n");
    let signature = BASE64
        .decode(pay_sign)
        .map_err(|_| RequestRejection::BadSignatureEncoding)?;
    if keys::verify_sha256_rsa(merchant_key, message.as_bytes(), &signature) {
        Ok(())
    } else {
        Err(RequestRejection::SignatureMismatch)
    }
}

/// The `Wechatpay-*` headers of one signed response or callback.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignatureHeaders {
    /// `Wechatpay-Timestamp`.
    pub timestamp: i64,
    /// `Wechatpay-Nonce`.
    pub nonce: String,
    /// `Wechatpay-Signature`, Base64 (or a probe string).
    pub signature: String,
    /// `Wechatpay-Serial`: platform certificate serial or `PUB_KEY_ID_…`.
    pub serial: String,
}

impl SignatureHeaders {
    /// Header name/value pairs, including `Wechatpay-Signature-Type`.
    pub fn to_pairs(&self) -> [(&'static str, String); 5] {
        [
            ("Wechatpay-Timestamp", self.timestamp.to_string()),
            ("Wechatpay-Nonce", self.nonce.clone()),
            ("Wechatpay-Signature", self.signature.clone()),
            ("Wechatpay-Serial", self.serial.clone()),
            ("Wechatpay-Signature-Type", SIGNATURE_SCHEME.to_owned()),
        ]
    }
}

/// The platform's signing identity: its private key and the serial (or public-key id) that
/// merchants use to find the matching public key.
pub struct PlatformSigner {
    serial: String,
    key: RsaPrivateKey,
}

impl std::fmt::Debug for PlatformSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlatformSigner")
            .field("serial", &self.serial)
            .finish_non_exhaustive()
    }
}

impl PlatformSigner {
    /// A signer announcing `serial` in `Wechatpay-Serial`.
    pub fn new(serial: impl Into<String>, key: RsaPrivateKey) -> Self {
        Self {
            serial: serial.into(),
            key,
        }
    }

    /// The serial put in `Wechatpay-Serial`.
    pub fn serial(&self) -> &str {
        &self.serial
    }

    /// Signs `timestamp\nnonce\nbody\n` over the exact body bytes that will be sent.
    ///
    /// # Errors
    /// [`WechatProtoError::Key`] if RSA signing fails.
    pub fn sign(
        &self,
        timestamp: i64,
        nonce: &str,
        body: &[u8],
    ) -> Result<SignatureHeaders, WechatProtoError> {
        let signature =
            keys::sign_sha256_rsa(&self.key, &response_message(timestamp, nonce, body))?;
        Ok(SignatureHeaders {
            timestamp,
            nonce: nonce.to_owned(),
            signature: BASE64.encode(signature),
            serial: self.serial.clone(),
        })
    }

    /// Like [`PlatformSigner::sign`] with a fresh 32-character nonce.
    ///
    /// # Errors
    /// [`WechatProtoError::Key`] if RSA signing fails.
    pub fn sign_with_fresh_nonce(
        &self,
        timestamp: i64,
        body: &[u8],
    ) -> Result<SignatureHeaders, WechatProtoError> {
        self.sign(timestamp, &random_alphanumeric(32), body)
    }

    /// Headers carrying a deliberately wrong `WECHATPAY/SIGNTEST/…` signature, which a correct
    /// merchant must reject.
    pub fn probe(&self, timestamp: i64, nonce: &str) -> SignatureHeaders {
        let mut filler = [0u8; 64];
        rand::thread_rng().fill(&mut filler[..]);
        SignatureHeaders {
            timestamp,
            nonce: nonce.to_owned(),
            signature: format!("{PROBE_SIGNATURE_PREFIX}{}", BASE64.encode(filler)),
            serial: self.serial.clone(),
        }
    }
}

/// What a merchant does with a response or callback; the sandbox uses it to check itself.
///
/// # Errors
/// [`RequestRejection::BadSignatureEncoding`] (probes land here) or
/// [`RequestRejection::SignatureMismatch`].
pub fn verify_platform_signature(
    platform_key: &RsaPublicKey,
    headers: &SignatureHeaders,
    body: &[u8],
) -> Result<(), RequestRejection> {
    let signature = BASE64
        .decode(&headers.signature)
        .map_err(|_| RequestRejection::BadSignatureEncoding)?;
    let message = response_message(headers.timestamp, &headers.nonce, body);
    if keys::verify_sha256_rsa(platform_key, &message, &signature) {
        Ok(())
    } else {
        Err(RequestRejection::SignatureMismatch)
    }
}

fn random_alphanumeric(len: usize) -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// The merchant's APIv3 key: 32 ASCII characters used directly as the AES-256 key.
#[derive(Clone)]
pub struct ApiV3Key([u8; 32]);

impl std::fmt::Debug for ApiV3Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiV3Key(..)")
    }
}

impl ApiV3Key {
    /// Accepts exactly 32 bytes. The Go SDK's 16-byte test keys (AES-128) are refused.
    ///
    /// # Errors
    /// [`WechatProtoError::ApiV3KeyLength`].
    pub fn new(bytes: &[u8]) -> Result<Self, WechatProtoError> {
        <[u8; 32]>::try_from(bytes)
            .map(Self)
            .map_err(|_| WechatProtoError::ApiV3KeyLength(bytes.len()))
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(&self.0.into())
    }

    /// AES-256-GCM encrypts `plaintext`; returns Base64 of ciphertext followed by the 16-byte tag.
    ///
    /// # Errors
    /// [`WechatProtoError::NonceLength`] unless `nonce` is 12 bytes; [`WechatProtoError::Aead`].
    pub fn seal(
        &self,
        nonce: &str,
        associated_data: &str,
        plaintext: &[u8],
    ) -> Result<String, WechatProtoError> {
        let nonce = resource_nonce(nonce)?;
        let sealed = self
            .cipher()
            .encrypt(
                nonce,
                Payload {
                    msg: plaintext,
                    aad: associated_data.as_bytes(),
                },
            )
            .map_err(|_| WechatProtoError::Aead)?;
        Ok(BASE64.encode(sealed))
    }

    /// The reverse of [`ApiV3Key::seal`], as the merchant performs it.
    ///
    /// # Errors
    /// [`WechatProtoError::NonceLength`], [`WechatProtoError::CiphertextEncoding`] or
    /// [`WechatProtoError::Aead`] when the tag does not authenticate.
    pub fn open(
        &self,
        nonce: &str,
        associated_data: &str,
        ciphertext: &str,
    ) -> Result<Vec<u8>, WechatProtoError> {
        let nonce = resource_nonce(nonce)?;
        let sealed = BASE64
            .decode(ciphertext)
            .map_err(|_| WechatProtoError::CiphertextEncoding)?;
        self.cipher()
            .decrypt(
                nonce,
                Payload {
                    msg: &sealed,
                    aad: associated_data.as_bytes(),
                },
            )
            .map_err(|_| WechatProtoError::Aead)
    }
}

fn resource_nonce(
    nonce: &str,
) -> Result<&Nonce<aes_gcm::aes::cipher::consts::U12>, WechatProtoError> {
    if nonce.len() != 12 {
        return Err(WechatProtoError::NonceLength(nonce.len()));
    }
    Ok(Nonce::from_slice(nonce.as_bytes()))
}

/// Callback event types the sandbox emits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    /// `TRANSACTION.SUCCESS`.
    TransactionSuccess,
    /// `REFUND.SUCCESS`.
    RefundSuccess,
    /// `REFUND.ABNORMAL`.
    RefundAbnormal,
    /// `REFUND.CLOSED`.
    RefundClosed,
}

impl EventType {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TransactionSuccess => "TRANSACTION.SUCCESS",
            Self::RefundSuccess => "REFUND.SUCCESS",
            Self::RefundAbnormal => "REFUND.ABNORMAL",
            Self::RefundClosed => "REFUND.CLOSED",
        }
    }

    /// `resource.original_type`: `transaction` or `refund`.
    pub fn original_type(self) -> &'static str {
        match self {
            Self::TransactionSuccess => "transaction",
            Self::RefundSuccess | Self::RefundAbnormal | Self::RefundClosed => "refund",
        }
    }

    /// The `summary` WeChat shows for this event.
    pub fn default_summary(self) -> &'static str {
        match self {
            Self::TransactionSuccess => "支付成功",
            Self::RefundSuccess => "退款成功",
            Self::RefundAbnormal => "退款异常",
            Self::RefundClosed => "退款关闭",
        }
    }
}

/// The encrypted `resource` object. Field order is the wire order of WeChat's own examples.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptedResource {
    /// `transaction` or `refund`.
    pub original_type: String,
    /// Always `AEAD_AES_256_GCM`.
    pub algorithm: String,
    /// Base64 of ciphertext plus tag.
    pub ciphertext: String,
    /// The AEAD associated data, possibly empty.
    pub associated_data: String,
    /// 12-character nonce.
    pub nonce: String,
}

/// The notification body. Field order is the wire order of WeChat's own examples, so a sealed
/// envelope serialises to the same bytes as theirs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationEnvelope {
    /// Event id, up to 36 characters.
    pub id: String,
    /// RFC 3339 with offset.
    pub create_time: String,
    /// Always `encrypt-resource`.
    pub resource_type: String,
    /// For example `TRANSACTION.SUCCESS`.
    pub event_type: String,
    /// For example `支付成功`.
    pub summary: String,
    /// The sealed business object.
    pub resource: EncryptedResource,
}

/// Everything needed to seal one callback.
#[derive(Clone, Debug)]
pub struct NotificationDraft<'a> {
    /// Event id.
    pub id: &'a str,
    /// Creation time, rendered with its offset (`+08:00` for WeChat's own).
    pub create_time: DateTime<FixedOffset>,
    /// Event type.
    pub event_type: EventType,
    /// Overrides [`EventType::default_summary`].
    pub summary: Option<&'a str>,
    /// AEAD associated data (`transaction` for payments; refunds may use the empty string).
    pub associated_data: &'a str,
    /// 12-character AEAD nonce.
    pub nonce: &'a str,
    /// The decrypted resource JSON (a Transaction or a refund notification).
    pub plaintext: &'a [u8],
}

impl NotificationEnvelope {
    /// Encrypts the draft's plaintext with `key` and wraps it in the envelope.
    ///
    /// # Errors
    /// [`WechatProtoError::NonceLength`] or [`WechatProtoError::Aead`].
    pub fn seal(key: &ApiV3Key, draft: &NotificationDraft<'_>) -> Result<Self, WechatProtoError> {
        let ciphertext = key.seal(draft.nonce, draft.associated_data, draft.plaintext)?;
        Ok(Self {
            id: draft.id.to_owned(),
            create_time: draft
                .create_time
                .to_rfc3339_opts(SecondsFormat::Secs, false),
            resource_type: "encrypt-resource".to_owned(),
            event_type: draft.event_type.as_str().to_owned(),
            summary: draft
                .summary
                .unwrap_or(draft.event_type.default_summary())
                .to_owned(),
            resource: EncryptedResource {
                original_type: draft.event_type.original_type().to_owned(),
                algorithm: RESOURCE_ALGORITHM.to_owned(),
                ciphertext,
                associated_data: draft.associated_data.to_owned(),
                nonce: draft.nonce.to_owned(),
            },
        })
    }

    /// The exact body bytes to sign and send: compact JSON, UTF-8 unescaped.
    ///
    /// # Errors
    /// [`WechatProtoError::Json`] (not expected for this type).
    pub fn to_body(&self) -> Result<String, WechatProtoError> {
        Ok(serde_json::to_string(self)?)
    }

    /// Decrypts the resource, as the merchant would.
    ///
    /// # Errors
    /// As [`ApiV3Key::open`].
    pub fn open(&self, key: &ApiV3Key) -> Result<Vec<u8>, WechatProtoError> {
        key.open(
            &self.resource.nonce,
            &self.resource.associated_data,
            &self.resource.ciphertext,
        )
    }
}

/// The documented error codes and their HTTP statuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ErrorCode {
    /// 400.
    #[serde(rename = "PARAM_ERROR")]
    ParamError,
    /// 400.
    #[serde(rename = "INVALID_REQUEST")]
    InvalidRequest,
    /// 401.
    #[serde(rename = "SIGN_ERROR")]
    SignError,
    /// 403.
    #[serde(rename = "NO_AUTH")]
    NoAuth,
    /// 404.
    #[serde(rename = "ORDER_NOT_EXIST")]
    OrderNotExist,
    /// 429.
    #[serde(rename = "RATELIMIT_EXCEEDED")]
    RateLimitExceeded,
    /// 500.
    #[serde(rename = "SYSTEM_ERROR")]
    SystemError,
    /// 503.
    #[serde(rename = "SERVICE_UNAVAILABLE")]
    ServiceUnavailable,
    /// 400: the order is already paid (close, prepay).
    #[serde(rename = "ORDERPAID")]
    OrderPaid,
    /// 400: the order is closed.
    #[serde(rename = "ORDER_CLOSED")]
    OrderClosed,
    /// 403: the `out_trade_no` was used with other parameters.
    #[serde(rename = "OUT_TRADE_NO_USED")]
    OutTradeNoUsed,
    /// 404: no such refund (or trade, on the refund API).
    #[serde(rename = "RESOURCE_NOT_EXISTS")]
    ResourceNotExists,
    /// 400: the appid does not belong to the mchid.
    #[serde(rename = "APPID_MCHID_NOT_MATCH")]
    AppidMchidNotMatch,
}

impl ErrorCode {
    /// The HTTP status WeChat answers with for this code.
    pub fn http_status(self) -> u16 {
        match self {
            Self::ParamError
            | Self::InvalidRequest
            | Self::OrderPaid
            | Self::OrderClosed
            | Self::AppidMchidNotMatch => 400,
            Self::OutTradeNoUsed => 403,
            Self::ResourceNotExists => 404,
            Self::SignError => 401,
            Self::NoAuth => 403,
            Self::OrderNotExist => 404,
            Self::RateLimitExceeded => 429,
            Self::SystemError => 500,
            Self::ServiceUnavailable => 503,
        }
    }
}

/// `detail` of an error body: where the problem is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ErrorDetail {
    /// JSON Pointer for body fields, variable name for URL/query fields.
    pub field: String,
    /// The offending value.
    pub value: String,
    /// What is wrong.
    pub issue: String,
    /// `body`, `query`, `path` or `authorization`.
    pub location: String,
}

/// `{"code":…,"message":…,"detail":{…}}`; `detail` is left out when absent, since WeChat's JSON
/// never carries `null`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ErrorBody {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// Human-readable message.
    pub message: String,
    /// Optional location of the problem.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<ErrorDetail>,
}

impl ErrorBody {
    /// An error body without detail.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            detail: None,
        }
    }

    /// Adds `detail`.
    pub fn with_detail(mut self, detail: ErrorDetail) -> Self {
        self.detail = Some(detail);
        self
    }

    /// The HTTP status to send with this body.
    pub fn http_status(&self) -> u16 {
        self.code.http_status()
    }

    /// The JSON text.
    ///
    /// # Errors
    /// [`WechatProtoError::Json`] (not expected for this type).
    pub fn to_json(&self) -> Result<String, WechatProtoError> {
        Ok(serde_json::to_string(self)?)
    }
}

impl RequestRejection {
    /// The 401 `SIGN_ERROR` body WeChat sends for a request it cannot authenticate.
    pub fn error_body(&self) -> ErrorBody {
        ErrorBody::new(ErrorCode::SignError, "签名错误，验签失败").with_detail(ErrorDetail {
            field: "signature".to_owned(),
            value: String::new(),
            issue: self.to_string(),
            location: "authorization".to_owned(),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const SERIAL: &str = "5F1C72E2A8931B72A2E13AF8DEE92471EB397115";

    fn signed_request(
        key: &RsaPrivateKey,
        method: &str,
        target: &str,
        ts: i64,
        body: &[u8],
    ) -> String {
        let signature =
            keys::sign_sha256_rsa(key, &request_message(method, target, ts, "NONCE123", body))
                .unwrap();
        Authorization {
            mchid: "1234567891".into(),
            nonce_str: "NONCE123".into(),
            timestamp: ts,
            serial_no: SERIAL.into(),
            signature,
        }
        .to_header_value()
    }

    fn keyring(key: &RsaPrivateKey) -> MerchantKeys {
        let mut keys = MerchantKeys::new();
        keys.register("1234567891", SERIAL, key.to_public_key());
        keys
    }

    #[test]
    fn a_freshly_signed_request_verifies_and_a_tampered_one_does_not() {
        let key = keys::generate_rsa_2048().unwrap();
        let keys = keyring(&key);
        let body = br#"{"mchid":"1234567891"}"#;
        let header = signed_request(
            &key,
            "POST",
            "/v3/pay/transactions/native",
            1_700_000_000,
            body,
        );
        let request = IncomingRequest {
            method: "POST",
            target: "/v3/pay/transactions/native",
            authorization: Some(&header),
            body,
        };
        let auth = keys.verify_request(&request, 1_700_000_100).unwrap();
        assert_eq!(auth.mchid, "1234567891");

        let tampered = IncomingRequest {
            body: br#"{"mchid":"1234567892"}"#,
            ..request
        };
        assert_eq!(
            keys.verify_request(&tampered, 1_700_000_100),
            Err(RequestRejection::SignatureMismatch)
        );
        let other_target = IncomingRequest {
            target: "/v3/pay/transactions/jsapi",
            ..request
        };
        assert_eq!(
            keys.verify_request(&other_target, 1_700_000_100),
            Err(RequestRejection::SignatureMismatch)
        );
    }

    #[test]
    fn wrong_key_wrong_serial_and_stale_timestamps_are_refused() {
        let key = keys::generate_rsa_2048().unwrap();
        let other = keys::generate_rsa_2048().unwrap();
        let header = signed_request(&other, "GET", "/v3/certificates", 1_700_000_000, b"");
        let request = IncomingRequest {
            method: "GET",
            target: "/v3/certificates",
            authorization: Some(&header),
            body: b"",
        };
        assert_eq!(
            keyring(&key).verify_request(&request, 1_700_000_000),
            Err(RequestRejection::SignatureMismatch)
        );
        assert_eq!(
            MerchantKeys::new().verify_request(&request, 1_700_000_000),
            Err(RequestRejection::UnknownSerial(SERIAL.into()))
        );
        let mut foreign = MerchantKeys::new();
        foreign.register("1900000001", SERIAL, other.to_public_key());
        assert!(matches!(
            foreign.verify_request(&request, 1_700_000_000),
            Err(RequestRejection::SerialNotOwned { .. })
        ));
        assert!(matches!(
            keyring(&other).verify_request(&request, 1_700_000_300),
            Err(RequestRejection::Expired { .. })
        ));
        assert!(
            keyring(&other)
                .verify_request(&request, 1_700_000_299)
                .is_ok()
        );
        assert!(
            keyring(&other)
                .verify_request(&request, 1_699_999_701)
                .is_ok()
        );
    }

    #[test]
    fn parameters_may_come_in_any_order() {
        let header = format!(
            "{SIGNATURE_SCHEME} signature=\"AAAA\",timestamp=\"1\",serial_no=\"AB\",nonce_str=\"n\",mchid=\"m\""
        );
        let auth: Authorization = header.parse().unwrap();
        assert_eq!(auth.timestamp, 1);
        assert_eq!(auth.signature, vec![0, 0, 0]);
    }

    #[test]
    fn malformed_headers_are_refused_with_a_reason() {
        let ok = "mchid=\"m\",nonce_str=\"n\",timestamp=\"1\",serial_no=\"S\",signature=\"AAAA\"";
        let cases: Vec<(String, RequestRejection)> = vec![
            (
                format!("WECHATPAY2-SHA256-RSA2048  {ok}"),
                RequestRejection::UnknownParameter(" mchid".into()),
            ),
            (
                format!("WECHATPAY2-SM2-WITH-SM3 {ok}"),
                RequestRejection::UnsupportedScheme,
            ),
            (
                format!("wechatpay2-sha256-rsa2048 {ok}"),
                RequestRejection::UnsupportedScheme,
            ),
            (ok.to_owned(), RequestRejection::UnsupportedScheme),
            (
                format!("{SIGNATURE_SCHEME} {}", ok.replace("\",", "\", ")),
                RequestRejection::UnknownParameter(" nonce_str".into()),
            ),
            (
                format!("{SIGNATURE_SCHEME} {ok},mchid=\"x\""),
                RequestRejection::DuplicateParameter("mchid"),
            ),
            (
                format!("{SIGNATURE_SCHEME} {ok},extra=\"x\""),
                RequestRejection::UnknownParameter("extra".into()),
            ),
            (
                format!("{SIGNATURE_SCHEME} {}", ok.replace(",serial_no=\"S\"", "")),
                RequestRejection::MissingParameter("serial_no"),
            ),
            (
                format!("{SIGNATURE_SCHEME} {}", ok.replace("\"m\"", "m")),
                RequestRejection::Syntax("value must be double-quoted"),
            ),
            (
                format!("{SIGNATURE_SCHEME} {}", ok.replace("\"1\"", "\"01\"")),
                RequestRejection::BadTimestamp,
            ),
            (
                format!("{SIGNATURE_SCHEME} {}", ok.replace("\"1\"", "\"-1\"")),
                RequestRejection::BadTimestamp,
            ),
            (
                format!("{SIGNATURE_SCHEME} {}", ok.replace("AAAA", "A*A=")),
                RequestRejection::BadSignatureEncoding,
            ),
            (
                format!("{SIGNATURE_SCHEME} {}", ok.replace("\"n\"", "\"\"")),
                RequestRejection::Syntax("empty value"),
            ),
            (
                format!("{SIGNATURE_SCHEME} {ok},"),
                RequestRejection::Syntax("expected key=\"value\""),
            ),
            (
                format!("{SIGNATURE_SCHEME} {}", ok.trim_end_matches('"')),
                RequestRejection::Syntax("unterminated quoted value"),
            ),
        ];
        for (header, expected) in cases {
            assert_eq!(header.parse::<Authorization>(), Err(expected), "{header}");
        }
    }

    #[test]
    fn a_missing_header_and_an_absolute_target_are_refused() {
        let keys = MerchantKeys::new();
        let request = IncomingRequest {
            method: "GET",
            target: "/v3/certificates",
            authorization: None,
            body: b"",
        };
        assert_eq!(
            keys.verify_request(&request, 0),
            Err(RequestRejection::MissingAuthorization)
        );
        let header = format!(
            "{SIGNATURE_SCHEME} mchid=\"m\",nonce_str=\"n\",timestamp=\"1\",serial_no=\"S\",signature=\"AAAA\""
        );
        let absolute = IncomingRequest {
            target: "https://api.mch.weixin.qq.com/v3/certificates",
            authorization: Some(&header),
            ..request
        };
        assert_eq!(
            keys.verify_request(&absolute, 0),
            Err(RequestRejection::BadRequestTarget)
        );
    }

    #[test]
    fn responses_signed_by_the_platform_verify_and_probes_do_not() {
        let key = keys::generate_rsa_2048().unwrap();
        let signer =
            PlatformSigner::new("PUB_KEY_ID_0000000000000024101100397200000006", key.clone());
        let body = br#"{"code_url":"weixin://wxpay/bizpayurl?pr=abc"}"#;
        let headers = signer.sign_with_fresh_nonce(1_700_000_000, body).unwrap();
        assert_eq!(headers.nonce.len(), 32);
        assert!(verify_platform_signature(&key.to_public_key(), &headers, body).is_ok());
        assert_eq!(
            verify_platform_signature(&key.to_public_key(), &headers, b"{}"),
            Err(RequestRejection::SignatureMismatch)
        );
        let empty = signer.sign(1_700_000_000, "n", b"").unwrap();
        assert!(verify_platform_signature(&key.to_public_key(), &empty, b"").is_ok());

        let probe = signer.probe(1_700_000_000, "n");
        assert!(probe.signature.starts_with(PROBE_SIGNATURE_PREFIX));
        assert!(verify_platform_signature(&key.to_public_key(), &probe, body).is_err());
        let pairs = headers.to_pairs();
        assert_eq!(pairs[3], ("Wechatpay-Serial", signer.serial().to_owned()));
        assert_eq!(pairs[4].1, SIGNATURE_SCHEME);
    }

    #[test]
    fn a_sealed_notification_opens_with_the_same_key_only() {
        let key = ApiV3Key::new(b"0123456789abcdef0123456789abcdef").unwrap();
        let draft = NotificationDraft {
            id: "EV-1",
            create_time: DateTime::parse_from_rfc3339("2024-01-01T12:00:05+08:00").unwrap(),
            event_type: EventType::RefundSuccess,
            summary: None,
            associated_data: "",
            nonce: "abcdefghijkl",
            plaintext: br#"{"refund_status":"SUCCESS"}"#,
        };
        let envelope = NotificationEnvelope::seal(&key, &draft).unwrap();
        assert_eq!(envelope.create_time, "2024-01-01T12:00:05+08:00");
        assert_eq!(envelope.summary, "退款成功");
        assert_eq!(envelope.resource.original_type, "refund");
        assert_eq!(envelope.open(&key).unwrap(), draft.plaintext);

        let other = ApiV3Key::new(b"0123456789abcdef0123456789abcdeX").unwrap();
        assert!(matches!(envelope.open(&other), Err(WechatProtoError::Aead)));
        let mut tampered = envelope.clone();
        tampered.resource.associated_data = "refund".into();
        assert!(matches!(tampered.open(&key), Err(WechatProtoError::Aead)));

        let body = envelope.to_body().unwrap();
        let reparsed: NotificationEnvelope = serde_json::from_str(&body).unwrap();
        assert_eq!(reparsed, envelope);
    }

    #[test]
    fn keys_and_nonces_of_the_wrong_length_are_refused() {
        assert!(matches!(
            ApiV3Key::new(b"testAPIv3Key0000"),
            Err(WechatProtoError::ApiV3KeyLength(16))
        ));
        let key = ApiV3Key::new(&[7; 32]).unwrap();
        assert!(matches!(
            key.seal("short", "", b"x"),
            Err(WechatProtoError::NonceLength(5))
        ));
        assert!(matches!(
            key.open("abcdefghijkl", "", "not base64!"),
            Err(WechatProtoError::CiphertextEncoding)
        ));
    }

    #[test]
    fn error_bodies_match_the_documented_shape() {
        let body = ErrorBody::new(ErrorCode::ParamError, "参数错误").with_detail(ErrorDetail {
            field: "/amount/currency".into(),
            value: "XYZ".into(),
            issue: "Currency code is invalid".into(),
            location: "body".into(),
        });
        assert_eq!(
            body.to_json().unwrap(),
            r#"{"code":"PARAM_ERROR","message":"参数错误","detail":{"field":"/amount/currency","value":"XYZ","issue":"Currency code is invalid","location":"body"}}"#
        );
        assert_eq!(body.http_status(), 400);
        let plain = ErrorBody::new(ErrorCode::SignError, "签名信息错误，验签失败");
        assert_eq!(
            plain.to_json().unwrap(),
            r#"{"code":"SIGN_ERROR","message":"签名信息错误，验签失败"}"#
        );
        let rejection = RequestRejection::SignatureMismatch.error_body();
        assert_eq!(rejection.http_status(), 401);
        assert_eq!(
            ErrorBody::new(ErrorCode::RateLimitExceeded, "")
                .to_json()
                .unwrap(),
            r#"{"code":"RATELIMIT_EXCEEDED","message":""}"#
        );
    }
}
