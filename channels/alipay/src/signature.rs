//! Alipay RSA2 signatures: the app key signs request parameters; Alipay's key signs the raw
//! `*_response` node of synchronous answers and the parameters of asynchronous notifications.
//! Verification always runs over the bytes Alipay sent, never over a re-serialization.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use channel_kit::crypto::{RsaSigningKey, RsaVerifyingKey};
use rsa::RsaPublicKey;
use rsa::pkcs1::EncodeRsaPublicKey as _;
use rsa::pkcs8::DecodePublicKey;
use serde_json::value::RawValue;
use x509_cert::Certificate;
use x509_cert::der::{DecodePem, Encode};

/// The `sign_type` this module implements (SHA256withRSA). Legacy `RSA` (SHA1) is refused.
pub const SIGN_TYPE: &str = "RSA2";

/// A key or certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("app private key is neither PKCS#1 nor PKCS#8 RSA: {0}")]
    PrivateKey(String),
    #[error("Alipay public key is not an SPKI RSA key: {0}")]
    PublicKey(String),
    #[error("Alipay certificate is not a PEM X.509 RSA certificate: {0}")]
    Certificate(String),
}

/// The RSA primitive failed while signing.
#[derive(Debug, thiserror::Error)]
#[error("RSA signing failed: {0}")]
pub struct SignError(String);

/// A signature does not verify over the given content (also: not Base64, wrong length).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("signature does not verify")]
pub struct BadSignature;

/// A synchronous answer cannot be trusted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResponseError {
    #[error("response body is not a JSON object: {0}")]
    Json(String),
    #[error("response has neither {0:?} nor \"error_response\"")]
    MissingNode(String),
    /// A success must be signed. (Unsigned *failures* are classified by their code instead, as
    /// the official SDK does: see [`AlipayVerifier::verify_response`].)
    #[error("response carries no sign")]
    MissingSign,
    #[error("signature does not verify over the response node")]
    BadSignature,
}

/// An asynchronous notification (or return-URL query) cannot be trusted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NotifyError {
    #[error("notification carries no sign")]
    MissingSign,
    #[error("unsupported sign_type {0:?}")]
    SignType(String),
    #[error("signature does not verify over the notification parameters")]
    BadSignature,
}

/// The sorted `k=v&…` string of all parameters except those in `exclude` and those with empty
/// values, with raw (not URL-encoded) values. `BTreeMap` order is byte order, i.e. ASCII order.
fn content_excluding(params: &BTreeMap<String, String>, exclude: &[&str]) -> String {
    let mut content = String::new();
    for (key, value) in params {
        if value.is_empty() || exclude.contains(&key.as_str()) {
            continue;
        }
        if !content.is_empty() {
            content.push('&');
        }
        content.push_str(key);
        content.push('=');
        content.push_str(value);
    }
    content
}

/// What a request signs: every parameter but `sign` (`sign_type` stays in), empty values dropped.
pub fn request_signing_content(params: &BTreeMap<String, String>) -> String {
    content_excluding(params, &["sign"])
}

/// What a notification or return-URL query signs: every parameter but `sign` and `sign_type`, empty
/// values dropped. Values must already be URL-decoded exactly once.
pub fn notify_signing_content(params: &BTreeMap<String, String>) -> String {
    content_excluding(params, &["sign", "sign_type"])
}

/// The merchant application's private key.
pub struct AppSigner {
    /// Signs through aws-lc-rs (constant time; RUSTSEC-2023-0071).
    key: RsaSigningKey,
}

impl fmt::Debug for AppSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AppSigner(<redacted>)")
    }
}

impl AppSigner {
    /// Loads a PEM key, PKCS#1 (`BEGIN RSA PRIVATE KEY`, what Alipay's key tool exports) or PKCS#8.
    ///
    /// # Errors
    /// [`KeyError::PrivateKey`] when neither form parses.
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        RsaSigningKey::from_pem(pem)
            .map(|key| Self { key })
            .map_err(|e| KeyError::PrivateKey(e.to_string()))
    }

    /// Loads the bare Base64 DER the Alipay console shows (no PEM armour), PKCS#8 or PKCS#1.
    ///
    /// # Errors
    /// [`KeyError::PrivateKey`] when the text is not Base64 or neither form parses.
    pub fn from_base64_der(text: &str) -> Result<Self, KeyError> {
        RsaSigningKey::from_base64_der(text)
            .map(|key| Self { key })
            .map_err(|e| KeyError::PrivateKey(e.to_string()))
    }

    /// SHA256withRSA (PKCS#1 v1.5) over `content`, Base64. Deterministic.
    ///
    /// # Errors
    /// [`SignError`] only if the RSA primitive fails.
    pub fn sign(&self, content: &str) -> Result<String, SignError> {
        self.key
            .sign_sha256_base64(content.as_bytes())
            .map_err(|e| SignError(e.to_string()))
    }

    /// Signs a complete request parameter set in place: drops any old `sign`, signs
    /// [`request_signing_content`], inserts `sign`. URL-encode only after this.
    ///
    /// # Errors
    /// See [`AppSigner::sign`].
    pub fn sign_params(&self, params: &mut BTreeMap<String, String>) -> Result<(), SignError> {
        params.remove("sign");
        let sign = self.sign(&request_signing_content(params))?;
        params.insert("sign".to_owned(), sign);
        Ok(())
    }
}

/// Alipay's public key (public-key mode) or the key of the Alipay certificate (certificate mode).
#[derive(Debug, Clone)]
pub struct AlipayVerifier {
    /// Verification runs on aws-lc ([`RsaVerifyingKey`]); the key is read with the `rsa` crate.
    key: RsaVerifyingKey,
}

impl AlipayVerifier {
    fn from_key(key: &RsaPublicKey, err: fn(String) -> KeyError) -> Result<Self, KeyError> {
        let der = key.to_pkcs1_der().map_err(|e| err(e.to_string()))?;
        let key = RsaVerifyingKey::from_der(der.as_bytes()).map_err(|e| err(e.to_string()))?;
        Ok(Self { key })
    }

    /// # Errors
    /// [`KeyError::PublicKey`] when the PEM is not an RSA SPKI key.
    pub fn from_public_key_pem(pem: &str) -> Result<Self, KeyError> {
        let key = RsaPublicKey::from_public_key_pem(pem)
            .map_err(|e| KeyError::PublicKey(e.to_string()))?;
        Self::from_key(&key, KeyError::PublicKey)
    }

    /// The bare Base64 SPKI the Alipay console shows.
    ///
    /// # Errors
    /// [`KeyError::PublicKey`] when the text is not Base64 SPKI RSA.
    pub fn from_public_key_base64(text: &str) -> Result<Self, KeyError> {
        let compact: String = text.split_whitespace().collect();
        let der = BASE64
            .decode(compact)
            .map_err(|e| KeyError::PublicKey(e.to_string()))?;
        let key = RsaPublicKey::from_public_key_der(&der)
            .map_err(|e| KeyError::PublicKey(e.to_string()))?;
        Self::from_key(&key, KeyError::PublicKey)
    }

    /// Certificate mode: the key inside `alipayCertPublicKey_RSA2.crt`. The certificate's validity is
    /// the caller's concern; which certificate to use comes from `alipay_cert_sn`.
    ///
    /// # Errors
    /// [`KeyError::Certificate`] when the PEM is not an X.509 certificate with an RSA key.
    pub fn from_certificate_pem(pem: &str) -> Result<Self, KeyError> {
        let cert = Certificate::from_pem(pem.as_bytes())
            .map_err(|e| KeyError::Certificate(e.to_string()))?;
        let spki = cert
            .tbs_certificate
            .subject_public_key_info
            .to_der()
            .map_err(|e| KeyError::Certificate(e.to_string()))?;
        let key = RsaPublicKey::from_public_key_der(&spki)
            .map_err(|e| KeyError::Certificate(e.to_string()))?;
        Self::from_key(&key, KeyError::Certificate)
    }

    /// SHA256withRSA verification of a Base64 `sign` over `content`.
    ///
    /// # Errors
    /// [`BadSignature`] for any mismatch, including a sign that is not Base64.
    pub fn verify(&self, content: &[u8], sign: &str) -> Result<(), BadSignature> {
        let raw = BASE64.decode(sign).map_err(|_| BadSignature)?;
        self.key
            .verify_sha256(content, &raw)
            .map_err(|_| BadSignature)
    }

    /// Verifies a synchronous answer to `method` (e.g. `alipay.trade.query`) and returns the exact
    /// node text, ready to parse with [`SignedResponse::parse`].
    ///
    /// # Errors
    /// [`ResponseError`]; any error means the outcome of the call is unknown.
    pub fn verify_response<'b>(
        &self,
        body: &'b str,
        method: &str,
    ) -> Result<SignedResponse<'b>, ResponseError> {
        let raw = extract_response(body, method)?;
        let sign = raw.sign.as_deref().ok_or(ResponseError::MissingSign)?;
        self.verify_node(raw.node_text, sign)?;
        Ok(SignedResponse {
            node_text: raw.node_text,
            is_error_response: raw.is_error_response,
            alipay_cert_sn: raw.alipay_cert_sn,
        })
    }

    /// The node text as sent, then (as the official SDKs do for JSON's optional escaping of `/`)
    /// the same text with every `\/` read as `/`: Alipay may have signed either form.
    ///
    /// # Errors
    /// [`ResponseError::BadSignature`] when neither form verifies.
    pub fn verify_node(&self, node_text: &str, sign: &str) -> Result<(), ResponseError> {
        if self.verify(node_text.as_bytes(), sign).is_ok() {
            return Ok(());
        }
        if node_text.contains("\\/")
            && self
                .verify(node_text.replace("\\/", "/").as_bytes(), sign)
                .is_ok()
        {
            return Ok(());
        }
        Err(ResponseError::BadSignature)
    }

    /// Verifies an asynchronous notification or a return-URL query, given its parameters decoded once
    /// (see [`crate::wire::parse_form`]).
    ///
    /// smartwalle/alipay also leaves `alipay_cert_sn` out of the signed string while the official rule
    /// names only `sign` and `sign_type`; when the field is present, both readings are tried. Either
    /// way the content was signed by Alipay's key, so accepting both admits no forgery.
    ///
    /// # Errors
    /// [`NotifyError`].
    pub fn verify_notify(&self, params: &BTreeMap<String, String>) -> Result<(), NotifyError> {
        match params.get("sign_type").map(String::as_str) {
            None | Some(SIGN_TYPE) => {}
            Some(other) => return Err(NotifyError::SignType(other.to_owned())),
        }
        let sign = params
            .get("sign")
            .filter(|s| !s.is_empty())
            .ok_or(NotifyError::MissingSign)?;
        if self
            .verify(notify_signing_content(params).as_bytes(), sign)
            .is_ok()
        {
            return Ok(());
        }
        if params.contains_key("alipay_cert_sn") {
            let without_sn = content_excluding(params, &["sign", "sign_type", "alipay_cert_sn"]);
            if self.verify(without_sn.as_bytes(), sign).is_ok() {
                return Ok(());
            }
        }
        Err(NotifyError::BadSignature)
    }
}

/// A synchronous answer split into its parts, before verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawResponse<'b> {
    /// The exact text of the node's value, `{` to the matching `}`, as it appears in the body.
    pub node_text: &'b str,
    /// The gateway answered with `error_response` instead of the method's node.
    pub is_error_response: bool,
    pub sign: Option<String>,
    /// Certificate mode: which Alipay certificate signed the answer.
    pub alipay_cert_sn: Option<String>,
}

/// A verified synchronous answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedResponse<'b> {
    pub node_text: &'b str,
    pub is_error_response: bool,
    pub alipay_cert_sn: Option<String>,
}

impl SignedResponse<'_> {
    /// Parses the verified node, e.g. as [`crate::wire::TradeQueryResponse`].
    ///
    /// # Errors
    /// The serde error when the node does not match `T`.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.node_text)
    }
}

/// The node name of `method`'s answer: dots become underscores, plus `_response`.
pub fn response_node_name(method: &str) -> String {
    format!("{}_response", method.replace('.', "_"))
}

/// Splits a synchronous answer into the raw node text (the method's node, else `error_response`),
/// `sign` and `alipay_cert_sn`, borrowing the node text from `body` so that the signed bytes are
/// exactly what Alipay sent.
///
/// # Errors
/// [`ResponseError::Json`] or [`ResponseError::MissingNode`].
pub fn extract_response<'b>(body: &'b str, method: &str) -> Result<RawResponse<'b>, ResponseError> {
    let top: HashMap<String, &'b RawValue> =
        serde_json::from_str(body).map_err(|e| ResponseError::Json(e.to_string()))?;
    let node_name = response_node_name(method);
    let (node, is_error_response) = match (top.get(&node_name), top.get("error_response")) {
        (Some(node), _) => (*node, false),
        (None, Some(node)) => (*node, true),
        (None, None) => return Err(ResponseError::MissingNode(node_name)),
    };
    let string_field = |name: &str| -> Result<Option<String>, ResponseError> {
        top.get(name)
            .map(|raw| {
                serde_json::from_str::<String>(raw.get())
                    .map_err(|e| ResponseError::Json(format!("{name}: {e}")))
            })
            .transpose()
    };
    Ok(RawResponse {
        node_text: node.get(),
        is_error_response,
        sign: string_field("sign")?,
        alipay_cert_sn: string_field("alipay_cert_sn")?,
    })
}

#[cfg(test)]
mod tests;
