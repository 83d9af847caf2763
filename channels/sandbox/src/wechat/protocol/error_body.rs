//! WeChat Pay's JSON error bodies (`{"code":…,"message":…,"detail":{…}}`), the documented codes
//! with their HTTP statuses, and the 401 `SIGN_ERROR` body for a request that did not authenticate.

use serde::Serialize;

use super::{RequestRejection, WechatProtocolError};

/// The documented error codes and their HTTP statuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ErrorCode {
    /// 400.
    #[serde(rename = "PARAM_ERROR")]
    ParamError,
    /// 400.
    #[serde(rename = "INVALID_REQUEST")]
    InvalidRequest,
    /// 401.
    #[serde(rename = "SIGN_ERROR")]
    SignError,
    /// 403.
    #[serde(rename = "NO_AUTH")]
    NoAuth,
    /// 404.
    #[serde(rename = "ORDER_NOT_EXIST")]
    OrderNotExist,
    /// 429.
    #[serde(rename = "RATELIMIT_EXCEEDED")]
    RateLimitExceeded,
    /// 500.
    #[serde(rename = "SYSTEM_ERROR")]
    SystemError,
    /// 503.
    #[serde(rename = "SERVICE_UNAVAILABLE")]
    ServiceUnavailable,
    /// 400: the order is already paid (close, prepay).
    #[serde(rename = "ORDERPAID")]
    OrderPaid,
    /// 400: the order is closed.
    #[serde(rename = "ORDER_CLOSED")]
    OrderClosed,
    /// 403: the `out_trade_no` was used with other parameters.
    #[serde(rename = "OUT_TRADE_NO_USED")]
    OutTradeNoUsed,
    /// 404: no such refund (or trade, on the refund API).
    #[serde(rename = "RESOURCE_NOT_EXISTS")]
    ResourceNotExists,
    /// 400: the appid does not belong to the mchid.
    #[serde(rename = "APPID_MCHID_NOT_MATCH")]
    AppidMchidNotMatch,
}

impl ErrorCode {
    /// The HTTP status WeChat answers with for this code.
    pub fn http_status(self) -> u16 {
        match self {
            Self::ParamError
            | Self::InvalidRequest
            | Self::OrderPaid
            | Self::OrderClosed
            | Self::AppidMchidNotMatch => 400,
            Self::OutTradeNoUsed => 403,
            Self::ResourceNotExists => 404,
            Self::SignError => 401,
            Self::NoAuth => 403,
            Self::OrderNotExist => 404,
            Self::RateLimitExceeded => 429,
            Self::SystemError => 500,
            Self::ServiceUnavailable => 503,
        }
    }
}

/// `detail` of an error body: where the problem is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ErrorDetail {
    /// JSON Pointer for body fields, variable name for URL/query fields.
    pub field: String,
    /// The offending value.
    pub value: String,
    /// What is wrong.
    pub issue: String,
    /// `body`, `query`, `path` or `authorization`.
    pub location: String,
}

/// `{"code":…,"message":…,"detail":{…}}`; `detail` is left out when absent, since WeChat's JSON
/// never carries `null`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ErrorBody {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// Human-readable message.
    pub message: String,
    /// Optional location of the problem.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<ErrorDetail>,
}

impl ErrorBody {
    /// An error body without detail.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            detail: None,
        }
    }

    /// Adds `detail`.
    pub fn with_detail(mut self, detail: ErrorDetail) -> Self {
        self.detail = Some(detail);
        self
    }

    /// The HTTP status to send with this body.
    pub fn http_status(&self) -> u16 {
        self.code.http_status()
    }

    /// The JSON text.
    ///
    /// # Errors
    /// [`WechatProtocolError::Json`] (not expected for this type).
    pub fn to_json(&self) -> Result<String, WechatProtocolError> {
        Ok(serde_json::to_string(self)?)
    }
}

impl RequestRejection {
    /// The 401 `SIGN_ERROR` body WeChat sends for a request it cannot authenticate.
    pub fn error_body(&self) -> ErrorBody {
        ErrorBody::new(ErrorCode::SignError, "签名错误，验签失败").with_detail(ErrorDetail {
            field: "signature".to_owned(),
            value: String::new(),
            issue: self.to_string(),
            location: "authorization".to_owned(),
        })
    }
}

#[cfg(test)]
mod tests;
