//! HTTP to WeChat Pay API v3: every request is signed, and every answer's `Wechatpay-*` signature
//! is verified before a byte of it is believed. Errors are sorted by what the core may conclude:
//! 5xx and transport failures say nothing (`Unavailable`/`Timeout`), documented refusals are final
//! (`Refused`), and an answer that does not verify is never trusted (`BadResponse`).
use std::sync::Arc;

use channel_kit::ChannelError;
use chrono::{DateTime, Utc};
use reqwest::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha1::{Digest, Sha1};

use crate::signature::{
    MerchantSigner, PlatformVerifier, VerifyError, WechatpayHeaders, generate_nonce,
};
use crate::status::{ErrorClass, classify_error};
use crate::wire::ErrorResponse;

/// A verified answer: HTTP status and the exact body bytes that were signed.
#[derive(Debug)]
pub struct Verified {
    pub status: u16,
    pub body: Vec<u8>,
}

/// What a signed, verified non-2xx answer said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformRefusal {
    pub status: u16,
    pub code: String,
    pub message: String,
    pub class: ErrorClass,
}

impl PlatformRefusal {
    /// The error the core sees: refusals are final, everything else says "query later".
    pub fn into_error(self) -> ChannelError {
        match self.class {
            ErrorClass::Rejected | ErrorClass::NotFound => ChannelError::Refused {
                code: self.code,
                message: self.message,
            },
            ErrorClass::RateLimited | ErrorClass::Unknown => ChannelError::Unavailable(format!(
                "HTTP {} {}: {}",
                self.status, self.code, self.message
            )),
        }
    }
}

/// The outcome of one API call whose answer verified.
#[derive(Debug)]
pub enum Answer {
    /// 2xx.
    Ok(Verified),
    /// A verified 4xx with WeChat's error body.
    Refused(PlatformRefusal),
}

/// Signs requests with the merchant key and verifies answers with the platform key.
#[derive(Clone)]
pub struct WechatClient {
    http: reqwest::Client,
    api_base: String,
    signer: Arc<MerchantSigner>,
    verifier: Arc<PlatformVerifier>,
    /// Sent as `Wechatpay-Serial` on requests, so that WeChat signs answers with the key we hold
    /// (the documented way to ask for public-key-mode signatures during key migration).
    platform_serial: String,
    now: fn() -> DateTime<Utc>,
}

impl WechatClient {
    pub fn new(
        http: reqwest::Client,
        api_base: &str,
        signer: Arc<MerchantSigner>,
        verifier: Arc<PlatformVerifier>,
        platform_serial: &str,
        now: fn() -> DateTime<Utc>,
    ) -> Self {
        Self {
            http,
            api_base: api_base.trim_end_matches('/').to_owned(),
            signer,
            verifier,
            platform_serial: platform_serial.to_owned(),
            now,
        }
    }

    /// `GET` of a path (with query) under the API base.
    ///
    /// # Errors
    /// See [`WechatClient::call`].
    pub async fn get(&self, path_and_query: &str) -> Result<Answer, ChannelError> {
        self.call(Method::GET, path_and_query, None).await
    }

    /// `POST` of a JSON body.
    ///
    /// # Errors
    /// See [`WechatClient::call`].
    pub async fn post<B: Serialize>(&self, path: &str, body: &B) -> Result<Answer, ChannelError> {
        let json = serde_json::to_string(body)
            .map_err(|e| ChannelError::Internal(format!("serializing {path}: {e}")))?;
        self.call(Method::POST, path, Some(json)).await
    }

    /// One signed call. The body we sign is the body we send, byte for byte.
    ///
    /// # Errors
    /// `Timeout`/`Unavailable` for transport failures and 5xx; `BadResponse` when the answer is
    /// unsigned or its signature, serial or timestamp does not verify.
    pub async fn call(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<String>,
    ) -> Result<Answer, ChannelError> {
        let url = format!("{}{}", self.api_base, path_and_query);
        let response = self.send(method, &url, body).await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.bytes().await?.to_vec();
        if status >= 500 {
            // A system error: nothing is known either way, so there is nothing to trust.
            return Err(ChannelError::Unavailable(format!(
                "HTTP {status} from WeChat: {}",
                snippet(&bytes)
            )));
        }
        self.verify(&headers, &bytes).map_err(|why| {
            ChannelError::BadResponse(format!("HTTP {status} answer to {path_and_query}: {why}"))
        })?;
        if (200..300).contains(&status) {
            return Ok(Answer::Ok(Verified {
                status,
                body: bytes,
            }));
        }
        let error: ErrorResponse = serde_json::from_slice(&bytes).map_err(|e| {
            ChannelError::BadResponse(format!("HTTP {status} without an error body: {e}"))
        })?;
        Ok(Answer::Refused(PlatformRefusal {
            status,
            class: classify_error(status, &error.code),
            code: error.code,
            message: error.message,
        }))
    }

    /// Fetches a bill file from the `download_url` the bill API gave: a signed `GET` whose answer
    /// is *not* signed (documented), so its integrity is checked against the SHA-1 `hash_value`
    /// that came in the signed bill answer instead.
    ///
    /// # Errors
    /// `BadResponse` when the file does not match the hash; transport errors as usual.
    pub async fn download_bill(
        &self,
        download_url: &str,
        hash_type: &str,
        hash_value: &str,
    ) -> Result<Vec<u8>, ChannelError> {
        if !hash_type.eq_ignore_ascii_case("SHA1") {
            return Err(ChannelError::BadResponse(format!(
                "unsupported bill hash_type {hash_type:?}"
            )));
        }
        let response = self.send(Method::GET, download_url, None).await?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await?.to_vec();
        if status >= 500 {
            return Err(ChannelError::Unavailable(format!(
                "HTTP {status} downloading the bill"
            )));
        }
        if !(200..300).contains(&status) {
            return Err(ChannelError::BadResponse(format!(
                "HTTP {status} downloading the bill: {}",
                snippet(&bytes)
            )));
        }
        let digest = hex::encode(Sha1::digest(&bytes));
        if !digest.eq_ignore_ascii_case(hash_value) {
            return Err(ChannelError::BadResponse(format!(
                "bill file SHA-1 {digest} does not match the signed hash_value {hash_value}"
            )));
        }
        Ok(bytes)
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        body: Option<String>,
    ) -> Result<reqwest::Response, ChannelError> {
        let nonce = generate_nonce();
        let timestamp = (self.now)().timestamp();
        let authorization = self
            .signer
            .authorization(
                method.as_str(),
                url,
                timestamp,
                &nonce,
                body.as_deref().unwrap_or(""),
            )
            .map_err(|e| ChannelError::InvalidArgument(format!("cannot sign {url}: {e}")))?;
        let mut request = self
            .http
            .request(method, url)
            .header("Authorization", authorization)
            .header("Accept", "application/json")
            .header("User-Agent", "payplatform-wechat-adapter")
            .header("Wechatpay-Serial", &self.platform_serial);
        if let Some(body) = body {
            request = request
                .header("Content-Type", "application/json")
                .body(body);
        }
        Ok(request.send().await?)
    }

    fn verify(&self, headers: &reqwest::header::HeaderMap, body: &[u8]) -> Result<(), String> {
        let header = |name: &str| -> Result<&str, String> {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| format!("no {name} header"))
        };
        let wechatpay = WechatpayHeaders {
            timestamp: header("Wechatpay-Timestamp")?,
            nonce: header("Wechatpay-Nonce")?,
            signature: header("Wechatpay-Signature")?,
            serial: header("Wechatpay-Serial")?,
            signature_type: headers
                .get("Wechatpay-Signature-Type")
                .and_then(|v| v.to_str().ok()),
        };
        self.verifier
            .verify(&wechatpay, body, (self.now)())
            .map_err(|e: VerifyError| e.to_string())
    }
}

/// Parses a verified 2xx body.
///
/// # Errors
/// `BadResponse`: a signed answer that is not the documented shape is not something to act on.
pub fn parse<T: DeserializeOwned>(v: &Verified, what: &str) -> Result<T, ChannelError> {
    serde_json::from_slice(&v.body).map_err(|e| {
        ChannelError::BadResponse(format!("{what} answer is not the expected JSON: {e}"))
    })
}

/// The start of a body for error messages (bodies of failures carry no secrets).
fn snippet(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned()
}
