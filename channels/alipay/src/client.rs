//! HTTP to the Alipay gateway: every request is signed with the app key, and every answer is
//! verified over the exact text of its `*_response` node before it is parsed. Transport failures
//! and non-200 answers say nothing (`Unavailable`/`Timeout`); an answer that does not verify,
//! including an unsigned gateway error, is never trusted (`BadResponse`).
use std::collections::BTreeMap;
use std::sync::Arc;

use channel_kit::ChannelError;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::signature::{AlipayVerifier, AppSigner, ResponseError, extract_response};
use crate::status::{CallOutcome, classify};
use crate::wire::{GatewayParams, ResponseStatus, encode_form, format_timestamp};

/// Signs gateway parameters and verifies answers.
#[derive(Clone)]
pub struct AlipayClient {
    http: reqwest::Client,
    gateway: String,
    app_id: String,
    signer: Arc<AppSigner>,
    verifier: Arc<AlipayVerifier>,
    now: fn() -> DateTime<Utc>,
}

/// Which redirect URLs a call carries.
#[derive(Debug, Clone, Copy, Default)]
pub struct Urls<'a> {
    pub notify_url: Option<&'a str>,
    pub return_url: Option<&'a str>,
}

impl AlipayClient {
    pub fn new(
        http: reqwest::Client,
        gateway: &str,
        app_id: &str,
        signer: Arc<AppSigner>,
        verifier: Arc<AlipayVerifier>,
        now: fn() -> DateTime<Utc>,
    ) -> Self {
        Self {
            http,
            gateway: gateway.to_owned(),
            app_id: app_id.to_owned(),
            signer,
            verifier,
            now,
        }
    }

    pub fn gateway(&self) -> &str {
        &self.gateway
    }

    /// The complete signed parameter set of one call (also what page and app pay hand out).
    ///
    /// # Errors
    /// `Internal` if `biz` cannot serialize or the RSA primitive fails.
    pub fn signed_params<B: Serialize>(
        &self,
        method: &str,
        biz: &B,
        urls: Urls<'_>,
    ) -> Result<BTreeMap<String, String>, ChannelError> {
        let gateway = GatewayParams {
            app_id: self.app_id.clone(),
            method: method.to_owned(),
            timestamp: format_timestamp((self.now)()),
            notify_url: urls.notify_url.map(str::to_owned),
            return_url: urls.return_url.map(str::to_owned),
            app_auth_token: None,
            app_cert_sn: None,
            alipay_root_cert_sn: None,
        };
        let mut params = gateway
            .to_params(biz)
            .map_err(|e| ChannelError::Internal(format!("biz_content of {method}: {e}")))?;
        self.signer
            .sign_params(&mut params)
            .map_err(|e| ChannelError::Internal(e.to_string()))?;
        Ok(params)
    }

    /// Calls `method` and returns the verified node text (the method's node, or
    /// `error_response`), ready to parse.
    ///
    /// # Errors
    /// `Timeout`/`Unavailable` for transport failures and non-200 answers; `BadResponse` when the
    /// answer does not verify.
    pub async fn call<B: Serialize>(
        &self,
        method: &str,
        biz: &B,
        urls: Urls<'_>,
    ) -> Result<String, ChannelError> {
        let params = self.signed_params(method, biz, urls)?;
        let response = self
            .http
            .post(&self.gateway)
            .header(
                "Content-Type",
                "application/x-www-form-urlencoded;charset=utf-8",
            )
            .body(encode_form(&params))
            .send()
            .await?;
        let status = response.status().as_u16();
        let body = response.text().await?;
        if status != 200 {
            return Err(ChannelError::Unavailable(format!(
                "HTTP {status} from the Alipay gateway for {method}"
            )));
        }
        if let Ok(raw) = extract_response(&body, method)
            && raw.sign.is_none()
        {
            return Err(unsigned_answer(method, raw.node_text));
        }
        let signed = self
            .verifier
            .verify_response(&body, method)
            .map_err(|e: ResponseError| {
                ChannelError::BadResponse(format!("answer to {method}: {e}"))
            })?;
        Ok(signed.node_text.to_owned())
    }

    /// Fetches a bill file from the short-lived URL Alipay gave in a signed answer, spooled to an
    /// anonymous temp file as it arrives (a ZIP needs seeking), rewound. The file itself is not
    /// signed; the URL's token is what authorises it.
    ///
    /// # Errors
    /// `Unavailable`/`Timeout` for transport failures and non-2xx answers.
    pub async fn download(&self, url: &str) -> Result<std::fs::File, ChannelError> {
        let response = self
            .http
            .get(url)
            .timeout(channel_kit::statement::DOWNLOAD_TIMEOUT)
            .send()
            .await?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            return Err(ChannelError::Unavailable(format!(
                "HTTP {status} downloading the bill"
            )));
        }
        Ok(channel_kit::statement::spool(response, |_| {}).await?.0)
    }
}

/// An answer without `sign`. The gateway does not sign some of its own errors (an unknown
/// `app_id` has no key to sign with); the official SDK verifies an answer only when it is a
/// success or carries a sign, and otherwise reads the failure by its code. So: an unsigned
/// success is never trusted; an unsigned failure is classified by `code`/`sub_code` into a
/// definite refusal or an outage. It may not assert a state: an unsigned `ACQ.TRADE_NOT_EXIST`
/// says nothing.
fn unsigned_answer(method: &str, node_text: &str) -> ChannelError {
    let Ok(status) = serde_json::from_str::<ResponseStatus>(node_text) else {
        return ChannelError::BadResponse(format!(
            "unsigned answer to {method} without code: {}",
            &node_text[..node_text.len().min(200)]
        ));
    };
    let code = status
        .sub_code
        .clone()
        .unwrap_or_else(|| status.code.clone());
    let message = status.sub_msg.clone().unwrap_or_else(|| status.msg.clone());
    match classify(&status.code, status.sub_code.as_deref()) {
        CallOutcome::Success => ChannelError::BadResponse(format!(
            "unsigned success answer to {method}: {}",
            ResponseError::MissingSign
        )),
        CallOutcome::Rejected => ChannelError::Refused { code, message },
        CallOutcome::InProgress
        | CallOutcome::TradeNotExist
        | CallOutcome::RateLimited
        | CallOutcome::Unknown => {
            ChannelError::Unavailable(format!("unsigned answer to {method}: {code}: {message}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsigned_failures_are_classified_by_code_and_unsigned_successes_refused() {
        let invalid_app = r#"{"code":"40002","msg":"Invalid Arguments","sub_code":"isv.invalid-app-id","sub_msg":"无效的AppID参数"}"#;
        match unsigned_answer("alipay.trade.query", invalid_app) {
            ChannelError::Refused { code, .. } => assert_eq!(code, "isv.invalid-app-id"),
            other => panic!("{other:?}"),
        }
        let busy = r#"{"code":"20000","msg":"Service Currently Unavailable","sub_code":"isp.unknow-error","sub_msg":"系统繁忙"}"#;
        assert!(matches!(
            unsigned_answer("alipay.trade.query", busy),
            ChannelError::Unavailable(_)
        ));
        let not_exist = r#"{"code":"40004","msg":"Business Failed","sub_code":"ACQ.TRADE_NOT_EXIST","sub_msg":"交易不存在"}"#;
        assert!(matches!(
            unsigned_answer("alipay.trade.query", not_exist),
            ChannelError::Unavailable(_)
        ));
        let limited = r#"{"code":"40005","msg":"Call Limited"}"#;
        assert!(matches!(
            unsigned_answer("alipay.trade.query", limited),
            ChannelError::Unavailable(_)
        ));
        let success = r#"{"code":"10000","msg":"Success","trade_status":"TRADE_SUCCESS"}"#;
        assert!(matches!(
            unsigned_answer("alipay.trade.query", success),
            ChannelError::BadResponse(_)
        ));
        assert!(matches!(
            unsigned_answer("alipay.trade.query", "{}"),
            ChannelError::BadResponse(_)
        ));
    }
}
