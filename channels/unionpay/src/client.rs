//! HTTP to the UnionPay gateway: every request is signed (`signMethod=01`), and every answer is
//! verified (signature, shipped certificate, merchant) before a field of it is believed.
//! Transport failures and non-200 answers say nothing (`Unavailable`/`Timeout`); an answer that
//! does not verify is never trusted (`BadResponse`).
use std::collections::BTreeMap;
use std::sync::Arc;

use channel_kit::ChannelError;
use chrono::{DateTime, Utc};

use crate::signature::{MerchantSigner, PlatformVerifier};
use crate::wire::{encode_form, parse_sync_response};

/// Signs requests and verifies answers.
#[derive(Clone)]
pub struct UnionpayClient {
    http: reqwest::Client,
    mer_id: String,
    signer: Arc<MerchantSigner>,
    verifier: Arc<PlatformVerifier>,
    now: fn() -> DateTime<Utc>,
}

impl UnionpayClient {
    pub fn new(
        http: reqwest::Client,
        mer_id: &str,
        signer: Arc<MerchantSigner>,
        verifier: Arc<PlatformVerifier>,
        now: fn() -> DateTime<Utc>,
    ) -> Self {
        Self {
            http,
            mer_id: mer_id.to_owned(),
            signer,
            verifier,
            now,
        }
    }

    /// Signs a field map in place (sets `certId` and `signature`).
    ///
    /// # Errors
    /// `Internal` when the map is not a 5.1.0/`01` request or RSA fails.
    pub fn sign(&self, fields: &mut BTreeMap<String, String>) -> Result<(), ChannelError> {
        self.signer
            .sign(fields)
            .map_err(|e| ChannelError::Internal(e.to_string()))
    }

    /// POSTs a signed form and returns the answer's fields once they verify.
    ///
    /// # Errors
    /// `Timeout`/`Unavailable` for transport failures and non-200 answers; `BadResponse` when the
    /// answer does not parse, verify, or names another merchant.
    pub async fn call(
        &self,
        url: &str,
        fields: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, ChannelError> {
        let body = self.post_form(url, fields).await?;
        self.verify_answer(url, &body)
    }

    /// Parses and verifies a synchronous answer `body` received from `url`.
    ///
    /// # Errors
    /// `BadResponse` when the answer does not parse, verify, or names another merchant.
    pub fn verify_answer(
        &self,
        url: &str,
        body: &str,
    ) -> Result<BTreeMap<String, String>, ChannelError> {
        let answer = parse_sync_response(body)
            .map_err(|e| ChannelError::BadResponse(format!("answer from {url}: {e}")))?;
        self.verifier
            .verify(&answer, (self.now)())
            .map_err(|e| ChannelError::BadResponse(format!("answer from {url}: {e}")))?;
        if let Some(mer_id) = answer.get("merId").filter(|m| !m.is_empty())
            && mer_id != &self.mer_id
        {
            return Err(ChannelError::BadResponse(format!(
                "answer from {url} names merchant {mer_id:?}"
            )));
        }
        Ok(answer)
    }

    /// POSTs a signed form and spools a 200 answer's body to an anonymous temp file, unverified
    /// (the file-transfer answer carries the whole reconciliation file).
    ///
    /// # Errors
    /// `Timeout`/`Unavailable` for transport failures and non-200 answers.
    pub async fn post_form_to_file(
        &self,
        url: &str,
        fields: &BTreeMap<String, String>,
    ) -> Result<std::fs::File, ChannelError> {
        let response = self
            .http
            .post(url)
            .header(
                "Content-Type",
                "application/x-www-form-urlencoded;charset=UTF-8",
            )
            .body(encode_form(fields))
            .timeout(channel_kit::statement::DOWNLOAD_TIMEOUT)
            .send()
            .await?;
        let status = response.status().as_u16();
        if status != 200 {
            return Err(ChannelError::Unavailable(format!(
                "HTTP {status} from {url}"
            )));
        }
        Ok(channel_kit::statement::spool(response, |_| {}).await?.0)
    }

    /// Verifies an answer whose fields (but for one streamed large field) are `fields`, given
    /// the verification digest over all of them.
    ///
    /// # Errors
    /// `BadResponse` when the answer does not verify or names another merchant.
    pub fn verify_digest(
        &self,
        url: &str,
        fields: &BTreeMap<String, String>,
        digest_hex: &str,
    ) -> Result<(), ChannelError> {
        self.verifier
            .verify_with_digest(fields, digest_hex, (self.now)())
            .map_err(|e| ChannelError::BadResponse(format!("answer from {url}: {e}")))?;
        if let Some(mer_id) = fields.get("merId").filter(|m| !m.is_empty())
            && mer_id != &self.mer_id
        {
            return Err(ChannelError::BadResponse(format!(
                "answer from {url} names merchant {mer_id:?}"
            )));
        }
        Ok(())
    }

    /// POSTs a signed form and returns the body of a 200 answer, unverified (the front gateway
    /// answers with the payer's cashier page, which is not signed).
    ///
    /// # Errors
    /// `Timeout`/`Unavailable` for transport failures and non-200 answers.
    pub async fn post_form(
        &self,
        url: &str,
        fields: &BTreeMap<String, String>,
    ) -> Result<String, ChannelError> {
        let response = self
            .http
            .post(url)
            .header(
                "Content-Type",
                "application/x-www-form-urlencoded;charset=UTF-8",
            )
            .body(encode_form(fields))
            .send()
            .await?;
        let status = response.status().as_u16();
        let body = response.text().await?;
        if status != 200 {
            return Err(ChannelError::Unavailable(format!(
                "HTTP {status} from {url}"
            )));
        }
        Ok(body)
    }
}
