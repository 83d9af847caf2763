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

use crate::platform_keys::PlatformKeys;
use crate::signature::{
    ApiV3Key, MerchantSigner, VerifyError, WechatpayHeaders, generate_nonce, open_certificates,
};
use crate::status::{ErrorClass, classify_error};
use crate::wire::{CERTIFICATES_PATH, CertificatesResponse, ErrorResponse};

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

/// Signs requests with the merchant key and verifies answers with the platform keys.
#[derive(Clone)]
pub struct WechatClient {
    http: reqwest::Client,
    api_base: String,
    signer: Arc<MerchantSigner>,
    /// The trusted platform keys; [`PlatformKeys::preferred_serial`] goes out as
    /// `Wechatpay-Serial` on requests, so that WeChat signs answers with a key we hold (the
    /// documented way to choose the key during the migration to public keys).
    keys: Arc<PlatformKeys>,
    /// Decrypts downloaded platform certificates.
    api_v3_key: ApiV3Key,
    now: fn() -> DateTime<Utc>,
}

impl WechatClient {
    pub fn new(
        http: reqwest::Client,
        api_base: &str,
        signer: Arc<MerchantSigner>,
        keys: Arc<PlatformKeys>,
        api_v3_key: ApiV3Key,
        now: fn() -> DateTime<Utc>,
    ) -> Self {
        Self {
            http,
            api_base: api_base.trim_end_matches('/').to_owned(),
            signer,
            keys,
            api_v3_key,
            now,
        }
    }

    pub fn keys(&self) -> &Arc<PlatformKeys> {
        &self.keys
    }

    /// Downloads `/v3/certificates`, decrypts every certificate with the APIv3 key, verifies the
    /// answer's signature (with a key already trusted or one of the certificates it brings, as
    /// the official SDKs bootstrap), and adds the certificates valid now. Returns their serials.
    ///
    /// # Errors
    /// Transport errors as usual; `BadResponse` when the answer does not verify or an entry does
    /// not decrypt; a refusal's error otherwise.
    pub async fn refresh_certificates(&self) -> Result<Vec<String>, ChannelError> {
        let url = format!("{}{CERTIFICATES_PATH}", self.api_base);
        let response = self.send(Method::GET, &url, None).await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.bytes().await?.to_vec();
        if status != 200 {
            return Err(match refusal(status, &bytes) {
                Some(r) => r.into_error(),
                None => ChannelError::Unavailable(format!(
                    "HTTP {status} downloading platform certificates: {}",
                    snippet(&bytes)
                )),
            });
        }
        let listed: CertificatesResponse = serde_json::from_slice(&bytes).map_err(|e| {
            ChannelError::BadResponse(format!("/v3/certificates is not the expected JSON: {e}"))
        })?;
        let now = (self.now)();
        let certs = open_certificates(&listed, &self.api_v3_key, now)
            .map_err(|e| ChannelError::BadResponse(format!("/v3/certificates: {e}")))?;
        let candidate = self.keys.verifier_with(&certs);
        let wechatpay = wechatpay_headers(&headers)
            .map_err(|why| ChannelError::BadResponse(format!("/v3/certificates: {why}")))?;
        candidate.verify(&wechatpay, &bytes, now).map_err(|e| {
            ChannelError::BadResponse(format!("/v3/certificates answer does not verify: {e}"))
        })?;
        self.keys.add_certificates(&certs);
        Ok(certs.into_iter().map(|c| c.serial).collect())
    }

    /// On a serial we do not know: refreshes the certificates (rate limited) and says whether
    /// the serial is known afterwards.
    pub async fn refresh_for_unknown_serial(&self, serial: &str) -> bool {
        let Some(slot) = self.keys.refresh_slot(Some(serial), false).await else {
            return self.keys.contains(serial);
        };
        match self.refresh_certificates().await {
            Ok(serials) => {
                tracing::info!(unknown = serial, downloaded = ?serials, "platform certificates refreshed on an unknown serial");
            }
            Err(e) => {
                tracing::warn!(unknown = serial, error = %e, "platform certificate refresh failed");
            }
        }
        slot.done();
        self.keys.contains(serial)
    }

    /// Verifies `Wechatpay-*` headers over `body`; an unknown serial first refreshes the
    /// platform certificates (rate limited) and is retried once.
    ///
    /// # Errors
    /// The [`VerifyError`] of the last attempt.
    pub async fn verify_signed(
        &self,
        headers: &WechatpayHeaders<'_>,
        body: &[u8],
    ) -> Result<(), VerifyError> {
        match self.keys.verify(headers, body, (self.now)()) {
            Err(VerifyError::UnknownSerial(serial)) => {
                if self.refresh_for_unknown_serial(&serial).await {
                    self.keys.verify(headers, body, (self.now)())
                } else {
                    Err(VerifyError::UnknownSerial(serial))
                }
            }
            other => other,
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
        if (400..500).contains(&status) && !headers.contains_key("Wechatpay-Signature") {
            // WeChat does not sign its answer to a request whose signature it rejected (401
            // SIGN_ERROR), and the official SDKs read every non-2xx answer by status and code
            // before (and without) verifying it. An unsigned answer may refuse, but may not
            // assert a state: "no such order" must come signed.
            let mut r = refusal(status, &bytes).ok_or_else(|| {
                ChannelError::BadResponse(format!(
                    "unsigned HTTP {status} answer to {path_and_query} without an error body: {}",
                    snippet(&bytes)
                ))
            })?;
            if r.class == ErrorClass::NotFound {
                r.class = ErrorClass::Unknown;
            }
            return Ok(Answer::Refused(r));
        }
        self.verify(&headers, &bytes).await.map_err(|why| {
            ChannelError::BadResponse(format!("HTTP {status} answer to {path_and_query}: {why}"))
        })?;
        if (200..300).contains(&status) {
            return Ok(Answer::Ok(Verified {
                status,
                body: bytes,
            }));
        }
        refusal(status, &bytes).map(Answer::Refused).ok_or_else(|| {
            ChannelError::BadResponse(format!("HTTP {status} without an error body"))
        })
    }

    /// Fetches a bill file from the `download_url` the bill API gave: a signed `GET` whose answer
    /// is *not* signed (documented), so its integrity is checked against the SHA-1 `hash_value`
    /// that came in the signed bill answer instead. The body is spooled to an anonymous temp file
    /// as it arrives, hashed on the way; the file comes back rewound.
    ///
    /// # Errors
    /// `BadStatement` when the file does not match the hash; transport errors as usual.
    pub async fn download_bill(
        &self,
        download_url: &str,
        hash_type: &str,
        hash_value: &str,
    ) -> Result<std::fs::File, ChannelError> {
        if !hash_type.eq_ignore_ascii_case("SHA1") {
            return Err(ChannelError::BadResponse(format!(
                "unsupported bill hash_type {hash_type:?}"
            )));
        }
        let response = self
            .send_with_timeout(
                Method::GET,
                download_url,
                None,
                Some(channel_kit::statement::DOWNLOAD_TIMEOUT),
            )
            .await?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            let bytes = response.bytes().await?;
            if status >= 500 {
                return Err(ChannelError::Unavailable(format!(
                    "HTTP {status} downloading the bill"
                )));
            }
            return Err(ChannelError::BadResponse(format!(
                "HTTP {status} downloading the bill: {}",
                snippet(&bytes)
            )));
        }
        let mut hasher = Sha1::new();
        let (file, size) =
            channel_kit::statement::spool(response, |chunk| hasher.update(chunk)).await?;
        let digest = hex::encode(hasher.finalize());
        if !digest.eq_ignore_ascii_case(hash_value) {
            return Err(ChannelError::BadStatement(format!(
                "bill file ({size} bytes) SHA-1 {digest} does not match the signed hash_value {hash_value}: truncated or altered"
            )));
        }
        Ok(file)
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        body: Option<String>,
    ) -> Result<reqwest::Response, ChannelError> {
        self.send_with_timeout(method, url, body, None).await
    }

    /// As `send`, with a total timeout other than the client's (a bill download).
    async fn send_with_timeout(
        &self,
        method: Method,
        url: &str,
        body: Option<String>,
        timeout: Option<std::time::Duration>,
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
            .header("User-Agent", "payplatform-wechat-adapter");
        if let Some(serial) = self.keys.preferred_serial() {
            request = request.header("Wechatpay-Serial", serial);
        }
        if let Some(body) = body {
            request = request
                .header("Content-Type", "application/json")
                .body(body);
        }
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        Ok(request.send().await?)
    }

    async fn verify(
        &self,
        headers: &reqwest::header::HeaderMap,
        body: &[u8],
    ) -> Result<(), String> {
        let wechatpay = wechatpay_headers(headers)?;
        self.verify_signed(&wechatpay, body)
            .await
            .map_err(|e: VerifyError| e.to_string())
    }
}

/// The `Wechatpay-*` headers of an answer.
fn wechatpay_headers(headers: &reqwest::header::HeaderMap) -> Result<WechatpayHeaders<'_>, String> {
    let header = |name: &str| -> Result<&str, String> {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| format!("no {name} header"))
    };
    Ok(WechatpayHeaders {
        timestamp: header("Wechatpay-Timestamp")?,
        nonce: header("Wechatpay-Nonce")?,
        signature: header("Wechatpay-Signature")?,
        serial: header("Wechatpay-Serial")?,
        signature_type: headers
            .get("Wechatpay-Signature-Type")
            .and_then(|v| v.to_str().ok()),
    })
}

/// A non-2xx answer's error body as a refusal classified by status and code; `None` when the
/// body is not WeChat's error JSON.
pub fn refusal(status: u16, body: &[u8]) -> Option<PlatformRefusal> {
    let error: ErrorResponse = serde_json::from_slice(body).ok()?;
    Some(PlatformRefusal {
        status,
        class: classify_error(status, &error.code),
        code: error.code,
        message: error.message,
    })
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
