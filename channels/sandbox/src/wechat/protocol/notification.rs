//! The callback envelope: the business object sealed with the merchant's APIv3 key
//! (AEAD_AES_256_GCM) into an [`EncryptedResource`] inside a [`NotificationEnvelope`].

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, FixedOffset, SecondsFormat};
use serde::{Deserialize, Serialize};

use super::WechatProtocolError;

/// The AEAD algorithm name carried in every callback resource.
pub const RESOURCE_ALGORITHM: &str = "AEAD_AES_256_GCM";

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
    /// [`WechatProtocolError::ApiV3KeyLength`].
    pub fn new(bytes: &[u8]) -> Result<Self, WechatProtocolError> {
        <[u8; 32]>::try_from(bytes)
            .map(Self)
            .map_err(|_| WechatProtocolError::ApiV3KeyLength(bytes.len()))
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(&self.0.into())
    }

    /// AES-256-GCM encrypts `plaintext`; returns Base64 of ciphertext followed by the 16-byte tag.
    ///
    /// # Errors
    /// [`WechatProtocolError::NonceLength`] unless `nonce` is 12 bytes; [`WechatProtocolError::Aead`].
    pub fn seal(
        &self,
        nonce: &str,
        associated_data: &str,
        plaintext: &[u8],
    ) -> Result<String, WechatProtocolError> {
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
            .map_err(|_| WechatProtocolError::Aead)?;
        Ok(BASE64.encode(sealed))
    }

    /// The reverse of [`ApiV3Key::seal`], as the merchant performs it.
    ///
    /// # Errors
    /// [`WechatProtocolError::NonceLength`], [`WechatProtocolError::CiphertextEncoding`] or
    /// [`WechatProtocolError::Aead`] when the tag does not authenticate.
    pub fn open(
        &self,
        nonce: &str,
        associated_data: &str,
        ciphertext: &str,
    ) -> Result<Vec<u8>, WechatProtocolError> {
        let nonce = resource_nonce(nonce)?;
        let sealed = BASE64
            .decode(ciphertext)
            .map_err(|_| WechatProtocolError::CiphertextEncoding)?;
        self.cipher()
            .decrypt(
                nonce,
                Payload {
                    msg: &sealed,
                    aad: associated_data.as_bytes(),
                },
            )
            .map_err(|_| WechatProtocolError::Aead)
    }
}

fn resource_nonce(
    nonce: &str,
) -> Result<&Nonce<aes_gcm::aes::cipher::consts::U12>, WechatProtocolError> {
    if nonce.len() != 12 {
        return Err(WechatProtocolError::NonceLength(nonce.len()));
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
    /// [`WechatProtocolError::NonceLength`] or [`WechatProtocolError::Aead`].
    pub fn seal(
        key: &ApiV3Key,
        draft: &NotificationDraft<'_>,
    ) -> Result<Self, WechatProtocolError> {
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
    /// [`WechatProtocolError::Json`] (not expected for this type).
    pub fn to_body(&self) -> Result<String, WechatProtocolError> {
        Ok(serde_json::to_string(self)?)
    }

    /// Decrypts the resource, as the merchant would.
    ///
    /// # Errors
    /// As [`ApiV3Key::open`].
    pub fn open(&self, key: &ApiV3Key) -> Result<Vec<u8>, WechatProtocolError> {
        key.open(
            &self.resource.nonce,
            &self.resource.associated_data,
            &self.resource.ciphertext,
        )
    }
}

#[cfg(test)]
mod tests;
