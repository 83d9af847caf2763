//! A gateway call as Alipay checks it: decoded parameters, the required common parameters,
//! `sign_type=RSA2`, the timestamp, the app's key, then the signature; and the `error_response`
//! node each refusal is answered with.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::NaiveDateTime;
use rsa::RsaPublicKey;
use serde::Serialize;

use super::{REQUEST_UNSIGNED, SIGN_TYPE_RSA2, parse_timestamp, signing_content};
use crate::form::{self, FormError, Params};
use crate::keys::{self, Keyring};

/// Why a gateway call was refused. Each maps to the `error_response` node Alipay answers with
/// ([`GatewayRejection::to_node`]).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GatewayRejection {
    /// The body or query could not be decoded.
    #[error("undecodable parameters: {0}")]
    Form(#[from] FormError),
    /// A required common parameter is absent or empty.
    #[error("missing parameter {0}")]
    Missing(&'static str),
    /// `sign_type` is not `RSA2`.
    #[error("unsupported sign_type {0:?}")]
    UnsupportedSignType(String),
    /// `timestamp` is not `yyyy-MM-dd HH:mm:ss`.
    #[error("bad timestamp {0:?}")]
    BadTimestamp(String),
    /// `biz_content` is present but not a JSON object.
    #[error("biz_content is not a JSON object")]
    BadBizContent,
    /// No key is registered for `app_id`.
    #[error("unknown app_id {0:?}")]
    UnknownApp(String),
    /// `sign` is not Base64.
    #[error("sign is not Base64")]
    BadSignEncoding,
    /// `sign` does not verify over the signing content.
    #[error("sign does not verify")]
    SignatureMismatch,
}

/// The body of an `error_response` / business-failure node: `code`, `msg`, `sub_code`, `sub_msg`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ResultNode {
    /// `10000` success, `40002` illegal parameter, `40004` business failure, …
    pub code: String,
    /// Human-readable meaning of `code`.
    pub msg: String,
    /// Detailed reason, for example `isv.invalid-signature`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub_code: Option<String>,
    /// Human-readable meaning of `sub_code`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub_msg: Option<String>,
}

impl GatewayRejection {
    /// The node to put under `error_response`. The `isv.*` sub-codes are Alipay's public gateway
    /// codes as remembered (an **ASSUMPTION**, see the crate README), not cited from its documentation.
    pub fn to_node(&self) -> ResultNode {
        let (code, msg, sub_code, sub_msg) = match self {
            Self::Missing(name) => (
                "40001",
                "Missing Required Arguments",
                format!("isv.missing-{}", name.replace('_', "-")),
                format!("缺少参数 {name}"),
            ),
            Self::Form(_) => (
                "40002",
                "Invalid Arguments",
                "isv.invalid-parameter".to_owned(),
                self.to_string(),
            ),
            Self::UnsupportedSignType(_) => (
                "40002",
                "Invalid Arguments",
                "isv.invalid-signature-type".to_owned(),
                self.to_string(),
            ),
            Self::BadTimestamp(_) => (
                "40002",
                "Invalid Arguments",
                "isv.invalid-timestamp".to_owned(),
                self.to_string(),
            ),
            Self::BadBizContent => (
                "40002",
                "Invalid Arguments",
                "isv.invalid-parameter".to_owned(),
                self.to_string(),
            ),
            Self::UnknownApp(_) => (
                "40002",
                "Invalid Arguments",
                "isv.invalid-app-id".to_owned(),
                self.to_string(),
            ),
            Self::BadSignEncoding | Self::SignatureMismatch => (
                "40002",
                "Invalid Arguments",
                "isv.invalid-signature".to_owned(),
                "验签出错".to_owned(),
            ),
        };
        ResultNode {
            code: code.to_owned(),
            msg: msg.to_owned(),
            sub_code: Some(sub_code),
            sub_msg: Some(sub_msg),
        }
    }
}

/// A decoded gateway call (`POST gateway.do` form, or the query string of a browser redirect).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayRequest {
    params: Params,
}

impl GatewayRequest {
    /// Decodes a form body or query string; both use the same encoding.
    ///
    /// # Errors
    /// [`GatewayRejection::Form`].
    pub fn parse(encoded: &str) -> Result<Self, GatewayRejection> {
        Ok(Self {
            params: form::decode(encoded)?,
        })
    }

    /// Wraps parameters that were already decoded (form body and query merged by the caller).
    pub fn from_params(params: Params) -> Self {
        Self { params }
    }

    /// All parameters, sorted.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// One parameter.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params.get(key).map(String::as_str)
    }

    /// The content the app signed: everything but `sign` (so `sign_type` is included).
    pub fn signing_content(&self) -> String {
        signing_content(&self.params, REQUEST_UNSIGNED)
    }

    fn required(&self, key: &'static str) -> Result<&str, GatewayRejection> {
        self.get(key)
            .filter(|v| !v.is_empty())
            .ok_or(GatewayRejection::Missing(key))
    }
}

/// A call whose signature checked out.
#[derive(Clone, Debug, PartialEq)]
pub struct VerifiedCall {
    /// The calling app.
    pub app_id: String,
    /// For example `alipay.trade.query`.
    pub method: String,
    /// The request time as sent (Beijing time, no zone).
    pub timestamp: NaiveDateTime,
    /// `biz_content` parsed; an empty object when absent.
    pub biz_content: serde_json::Map<String, serde_json::Value>,
}

/// Registered app public keys: `app_id` → key.
#[derive(Clone, Debug, Default)]
pub struct AppKeys {
    keyring: Keyring,
}

impl AppKeys {
    /// No apps registered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the RSA2 public key of `app_id`.
    pub fn register(&mut self, app_id: &str, public_key: RsaPublicKey) {
        self.keyring.register(app_id, app_id, public_key);
    }

    /// Checks a gateway call: required common parameters, `sign_type=RSA2`, the timestamp
    /// format, the app's key, then the signature over the sorted content excluding `sign`.
    ///
    /// # Errors
    /// The first [`GatewayRejection`] found, in that order.
    pub fn verify(&self, request: &GatewayRequest) -> Result<VerifiedCall, GatewayRejection> {
        let app_id = request.required("app_id")?;
        let method = request.required("method")?;
        let sign = request.required("sign")?;
        let sign_type = request.required("sign_type")?;
        let timestamp_text = request.required("timestamp")?;
        request.required("version")?;
        if sign_type != SIGN_TYPE_RSA2 {
            return Err(GatewayRejection::UnsupportedSignType(sign_type.to_owned()));
        }
        let timestamp = parse_timestamp(timestamp_text)
            .ok_or_else(|| GatewayRejection::BadTimestamp(timestamp_text.to_owned()))?;
        let biz_content = match request.get("biz_content").filter(|v| !v.is_empty()) {
            None => serde_json::Map::new(),
            Some(text) => match serde_json::from_str(text) {
                Ok(serde_json::Value::Object(map)) => map,
                _ => return Err(GatewayRejection::BadBizContent),
            },
        };
        let entry = self
            .keyring
            .find(app_id)
            .ok_or_else(|| GatewayRejection::UnknownApp(app_id.to_owned()))?;
        let signature = BASE64
            .decode(sign)
            .map_err(|_| GatewayRejection::BadSignEncoding)?;
        if !keys::verify_sha256_rsa(
            &entry.public_key,
            request.signing_content().as_bytes(),
            &signature,
        ) {
            return Err(GatewayRejection::SignatureMismatch);
        }
        Ok(VerifiedCall {
            app_id: app_id.to_owned(),
            method: method.to_owned(),
            timestamp,
            biz_content,
        })
    }
}

#[cfg(test)]
mod tests;
