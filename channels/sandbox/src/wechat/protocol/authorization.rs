//! A merchant's request as WeChat Pay checks it: the `Authorization` header parsed into an
//! [`Authorization`] first and only then checked, so every way a header can be malformed has its
//! own [`RequestRejection`] before any cryptography runs; then the key by serial, the clock window
//! and the signature over the rebuilt request message. Also the JSAPI `paySign` check.

use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rsa::RsaPublicKey;

use super::SIGNATURE_SCHEME;
use crate::keys::{self, Keyring};

/// Largest accepted `|now - timestamp|` minus one: like the official SDKs, a difference of
/// 300 s or more is refused. WeChat documents no server-side window; this mirrors the client rule.
pub const MAX_CLOCK_SKEW_SECS: i64 = 300;

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

#[cfg(test)]
mod tests;
