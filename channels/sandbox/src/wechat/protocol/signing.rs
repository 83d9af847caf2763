//! The platform's side of signing: `Wechatpay-*` headers over `timestamp\nnonce\nbody\n` for
//! answers and callbacks, the deliberately wrong probe signatures, and the merchant's check of
//! them (which the sandbox uses on itself).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rand::Rng;
use rand::distributions::Alphanumeric;
use rsa::{RsaPrivateKey, RsaPublicKey};

use super::{RequestRejection, SIGNATURE_SCHEME, WechatProtocolError};
use crate::keys;

/// Prefix of the deliberately wrong signatures WeChat sends to test merchants' verification.
pub const PROBE_SIGNATURE_PREFIX: &str = "WECHATPAY/SIGNTEST/";

/// The three-line response/callback message: `timestamp\nnonce\nbody\n`.
pub fn response_message(timestamp: i64, nonce: &str, body: &[u8]) -> Vec<u8> {
    let mut message = format!("{timestamp}\n{nonce}\n").into_bytes();
    message.extend_from_slice(body);
    message.push(b'\n');
    message
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
    key: keys::SigningKey,
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
    ///
    /// # Errors
    /// [`WechatProtocolError::Key`] if the key cannot sign.
    pub fn new(serial: impl Into<String>, key: RsaPrivateKey) -> Result<Self, WechatProtocolError> {
        Ok(Self {
            serial: serial.into(),
            key: keys::SigningKey::new(&key)?,
        })
    }

    /// The serial put in `Wechatpay-Serial`.
    pub fn serial(&self) -> &str {
        &self.serial
    }

    /// Signs `timestamp\nnonce\nbody\n` over the exact body bytes that will be sent.
    ///
    /// # Errors
    /// [`WechatProtocolError::Key`] if RSA signing fails.
    pub fn sign(
        &self,
        timestamp: i64,
        nonce: &str,
        body: &[u8],
    ) -> Result<SignatureHeaders, WechatProtocolError> {
        let signature = self
            .key
            .sign_sha256(&response_message(timestamp, nonce, body))?;
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
    /// [`WechatProtocolError::Key`] if RSA signing fails.
    pub fn sign_with_fresh_nonce(
        &self,
        timestamp: i64,
        body: &[u8],
    ) -> Result<SignatureHeaders, WechatProtocolError> {
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

#[cfg(test)]
mod tests;
