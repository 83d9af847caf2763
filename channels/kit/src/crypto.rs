//! The merchant's RSA private key, for every adapter: loading (PKCS#8 or PKCS#1, PEM or DER) and
//! `SHA256withRSA` (PKCS#1 v1.5) signing through aws-lc-rs, whose private-key operations are
//! constant time. The `rsa` crate's are not (RUSTSEC-2023-0071, see docs/DECISIONS.md), so no
//! adapter signs with it; it stays only for public-key verification, which the advisory does not
//! touch.
//!
//! The sandboxes sign with their own copy of this primitive (`sandbox::keys`): they play the
//! other side of the protocol and share no signing code with the adapters.

use std::fmt;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    KeyPair as _, ParsedPublicKey, RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
    RSA_PKCS1_2048_8192_SHA256, RSA_PKCS1_SHA256, RsaKeyPair, UnparsedPublicKey,
};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

/// The smallest modulus any of the three platforms accepts (all of them use RSA-2048).
pub const MIN_MODULUS_BITS: usize = 2048;

/// A private key that could not be loaded. The messages never include key material.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("no PEM block labelled PRIVATE KEY or RSA PRIVATE KEY")]
    NoPemBlock,
    #[error("key text is not valid Base64")]
    Base64,
    /// aws-lc refused the DER: not RSA, not PKCS#8/PKCS#1, inconsistent, or an unsupported size.
    #[error("not a usable RSA private key: {0}")]
    Rejected(String),
    #[error("RSA modulus is {0} bits; at least {MIN_MODULUS_BITS} are required")]
    TooShort(usize),
}

/// Signing failed: only when the RNG used for blinding fails.
#[derive(Debug, thiserror::Error)]
#[error("RSA signing failed")]
pub struct SignError;

/// An RSA private key that signs `SHA256withRSA`. Cheap to share (`Send + Sync`); signing takes
/// `&self`.
pub struct RsaSigningKey {
    pair: RsaKeyPair,
    rng: SystemRandom,
}

impl fmt::Debug for RsaSigningKey {
    // The private key never prints; the modulus size is harmless and helps diagnose config.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RsaSigningKey")
            .field("bits", &(self.pair.public_modulus_len() * 8))
            .finish_non_exhaustive()
    }
}

impl RsaSigningKey {
    /// Loads a PEM key: PKCS#8 (`BEGIN PRIVATE KEY`) or PKCS#1 (`BEGIN RSA PRIVATE KEY`), with any
    /// line width and CRLF line breaks (keys handed out by the platforms' consoles vary).
    ///
    /// # Errors
    /// [`KeyError::NoPemBlock`], [`KeyError::Base64`], [`KeyError::Rejected`] or
    /// [`KeyError::TooShort`].
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        if let Some(der) = pem_block(pem, "PRIVATE KEY")? {
            return Self::from_pkcs8_der(&der);
        }
        if let Some(der) = pem_block(pem, "RSA PRIVATE KEY")? {
            return Self::from_pkcs1_der(&der);
        }
        Err(KeyError::NoPemBlock)
    }

    /// Loads a PKCS#8 `PrivateKeyInfo` holding an RSA key.
    ///
    /// # Errors
    /// [`KeyError::Rejected`] or [`KeyError::TooShort`].
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, KeyError> {
        Self::checked(RsaKeyPair::from_pkcs8(der).map_err(|e| KeyError::Rejected(e.to_string()))?)
    }

    /// Loads a PKCS#1 `RSAPrivateKey`.
    ///
    /// # Errors
    /// [`KeyError::Rejected`] or [`KeyError::TooShort`].
    pub fn from_pkcs1_der(der: &[u8]) -> Result<Self, KeyError> {
        Self::checked(RsaKeyPair::from_der(der).map_err(|e| KeyError::Rejected(e.to_string()))?)
    }

    /// Loads bare Base64 DER without PEM armour (the form the Alipay console shows), PKCS#8 or
    /// PKCS#1; whitespace is ignored.
    ///
    /// # Errors
    /// [`KeyError::Base64`] or, when neither form loads, the PKCS#8 error.
    pub fn from_base64_der(text: &str) -> Result<Self, KeyError> {
        let compact: String = text.split_whitespace().collect();
        let der = BASE64.decode(compact).map_err(|_| KeyError::Base64)?;
        Self::from_pkcs8_der(&der).or_else(|e| Self::from_pkcs1_der(&der).map_err(|_| e))
    }

    fn checked(pair: RsaKeyPair) -> Result<Self, KeyError> {
        let bits = pair.public_modulus_len() * 8;
        if bits < MIN_MODULUS_BITS {
            return Err(KeyError::TooShort(bits));
        }
        Ok(Self {
            pair,
            rng: SystemRandom::new(),
        })
    }

    /// `SHA256withRSA` (RSASSA-PKCS1-v1_5 over SHA-256) of `message`: the raw signature bytes,
    /// as long as the modulus. Deterministic (v1.5 has no salt; aws-lc blinds internally).
    ///
    /// # Errors
    /// [`SignError`] only if the system RNG fails.
    pub fn sign_sha256(&self, message: &[u8]) -> Result<Vec<u8>, SignError> {
        let mut signature = vec![0; self.pair.public_modulus_len()];
        self.pair
            .sign(&RSA_PKCS1_SHA256, &self.rng, message, &mut signature)
            .map_err(|_| SignError)?;
        Ok(signature)
    }

    /// [`RsaSigningKey::sign_sha256`], Base64 (standard alphabet, padded): the form all three
    /// platforms put on the wire.
    ///
    /// # Errors
    /// See [`RsaSigningKey::sign_sha256`].
    pub fn sign_sha256_base64(&self, message: &[u8]) -> Result<String, SignError> {
        Ok(BASE64.encode(self.sign_sha256(message)?))
    }

    /// The public half as a PKCS#1 `RSAPublicKey` DER (for checks that a configured certificate
    /// belongs to this key).
    pub fn public_key_pkcs1_der(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }
}

/// A platform's RSA public key that checks `SHA256withRSA` (PKCS#1 v1.5) signatures, through
/// aws-lc-rs, parsed once.
///
/// The adapters still read keys and certificates with the `rsa` and `x509-cert` crates; only the
/// check itself runs here. It is the adapters' hottest operation (every platform answer and every
/// callback is verified: two verifications a payment), and the `rsa` crate took 0.47 ms for one
/// against 0.05 ms here (`cargo run --release -p channel-kit --example rsa_sign_bench`, same key,
/// same machine, one run): the `rsa` crate's verification cost an adapter more CPU than its
/// signing.
#[derive(Clone)]
pub struct RsaVerifyingKey {
    key: std::sync::Arc<ParsedPublicKey>,
}

impl fmt::Debug for RsaVerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RsaVerifyingKey").finish_non_exhaustive()
    }
}

/// A signature that does not verify (also: the wrong length, or a key below 2048 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("signature does not verify")]
pub struct BadSignature;

impl RsaVerifyingKey {
    /// From a DER public key: PKCS#1 `RSAPublicKey` or X.509 `SubjectPublicKeyInfo`.
    ///
    /// # Errors
    /// [`KeyError::Rejected`] when aws-lc cannot read it as an RSA public key.
    pub fn from_der(der: &[u8]) -> Result<Self, KeyError> {
        let key = ParsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, der)
            .map_err(|e| KeyError::Rejected(e.to_string()))?;
        Ok(Self {
            key: std::sync::Arc::new(key),
        })
    }

    /// Whether `signature` (raw bytes) is `SHA256withRSA` of `message` under this key. Keys
    /// shorter than 2048 bits never verify: no platform uses them.
    ///
    /// # Errors
    /// [`BadSignature`] for any mismatch.
    pub fn verify_sha256(&self, message: &[u8], signature: &[u8]) -> Result<(), BadSignature> {
        self.key
            .verify_sig(message, signature)
            .map_err(|_| BadSignature)
    }

    /// `SHA1withRSA`, which certificate authorities still use to sign some certificates (CFCA's
    /// UnionPay chain): only for checking a certificate's issuer, never a message.
    ///
    /// # Errors
    /// [`BadSignature`] for any mismatch.
    pub fn verify_sha1_certificate(
        &self,
        tbs_der: &[u8],
        signature: &[u8],
    ) -> Result<(), BadSignature> {
        let spki: &[u8] = (*self.key).as_ref();
        UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY, spki)
            .verify(tbs_der, signature)
            .map_err(|_| BadSignature)
    }
}

/// The DER inside the first `-----BEGIN {label}-----` … `-----END {label}-----` block, `None`
/// when there is no such block.
fn pem_block(text: &str, label: &str) -> Result<Option<Vec<u8>>, KeyError> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let Some(start) = text.find(&begin) else {
        return Ok(None);
    };
    let body = &text[start + begin.len()..];
    let Some(len) = body.find(&end) else {
        return Ok(None);
    };
    let compact: String = body[..len].split_whitespace().collect();
    BASE64
        .decode(compact)
        .map(Some)
        .map_err(|_| KeyError::Base64)
}

#[cfg(test)]
mod tests;
