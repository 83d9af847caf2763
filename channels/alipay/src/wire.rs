//! Alipay gateway parameters, `biz_content` and response-node types, the notification form decoder,
//! and [`parse_yuan`] / [`format_yuan`]: the one exact conversion between fen (`i64`) and the yuan
//! strings Alipay puts on the wire. No float is involved anywhere.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, FixedOffset, Utc};
use serde::{Deserialize, Serialize};

/// Production gateway.
pub const GATEWAY: &str = "https://openapi.alipay.com/gateway.do";
/// Sandbox gateway.
pub const SANDBOX_GATEWAY: &str = "https://openapi-sandbox.dl.alipaydev.com/gateway.do";

/// Methods used by the adapter.
pub mod method {
    pub const PRECREATE: &str = "alipay.trade.precreate";
    pub const PAGE_PAY: &str = "alipay.trade.page.pay";
    pub const APP_PAY: &str = "alipay.trade.app.pay";
    pub const QUERY: &str = "alipay.trade.query";
    pub const CLOSE: &str = "alipay.trade.close";
    pub const REFUND: &str = "alipay.trade.refund";
    pub const REFUND_QUERY: &str = "alipay.trade.fastpay.refund.query";
    pub const BILL_DOWNLOAD_URL_QUERY: &str = "alipay.data.dataservice.bill.downloadurl.query";
}

/// The exact body Alipay expects in reply to a notification it should stop retrying.
pub const NOTIFY_ACK: &str = "success";

/// Alipay timestamps are Beijing time.
pub const BEIJING: FixedOffset = match FixedOffset::east_opt(8 * 3600) {
    Some(offset) => offset,
    None => panic!("UTC+8 is a valid offset"),
};

/// `yyyy-MM-dd HH:mm:ss` in Beijing time, the form of `timestamp`, `time_expire` and notify times.
pub fn format_timestamp(at: DateTime<Utc>) -> String {
    at.with_timezone(&BEIJING)
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

// ------------------------------------------------------------------------------------------ money

/// Largest amount Alipay accepts: 100,000,000.00 yuan.
pub const MAX_FEN: i64 = 10_000_000_000;

/// A yuan string that is not an exact, non-negative amount with at most two decimals.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("{0:?} is not a yuan amount (digits, optionally '.' and one or two digits)")]
    Syntax(String),
    #[error("{0:?} has more than two decimals")]
    TooPrecise(String),
    #[error("{0:?} is out of range")]
    OutOfRange(String),
    #[error("negative amount {0} fen")]
    Negative(i64),
}

/// Parses Alipay's decimal yuan (`"88.88"`, `"0.01"`, `"100"`, `"1.5"`) into fen, exactly.
///
/// Refused: signs, exponents, whitespace, separators, an empty integer or fraction part (`".5"`,
/// `"5."`), redundant leading zeros (`"01.00"`), more than two decimals (even `"1.000"`: Alipay never
/// sends them, so one would mean a misread field), and values past `i64`.
///
/// # Errors
/// [`AmountError`] naming the input.
pub fn parse_yuan(text: &str) -> Result<i64, AmountError> {
    let syntax = || AmountError::Syntax(text.to_owned());
    let (integer, fraction) = match text.split_once('.') {
        Some((integer, fraction)) => (integer, Some(fraction)),
        None => (text, None),
    };
    if integer.is_empty() || !integer.bytes().all(|b| b.is_ascii_digit()) {
        return Err(syntax());
    }
    if integer.len() > 1 && integer.starts_with('0') {
        return Err(syntax());
    }
    let fraction_fen = match fraction {
        None => 0,
        Some(f) if f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit()) => return Err(syntax()),
        Some(f) if f.len() > 2 => return Err(AmountError::TooPrecise(text.to_owned())),
        Some(f) => {
            let digits: i64 = f.parse().map_err(|_| syntax())?;
            if f.len() == 1 { digits * 10 } else { digits }
        }
    };
    let out_of_range = || AmountError::OutOfRange(text.to_owned());
    let yuan: i64 = integer.parse().map_err(|_| out_of_range())?;
    yuan.checked_mul(100)
        .and_then(|fen| fen.checked_add(fraction_fen))
        .ok_or_else(out_of_range)
}

/// Formats fen as Alipay's yuan string with exactly two decimals: `8888` → `"88.88"`, `1` →
/// `"0.01"`, `100` → `"1.00"`.
///
/// # Errors
/// [`AmountError::Negative`]: no Alipay amount field is negative.
pub fn format_yuan(fen: i64) -> Result<String, AmountError> {
    if fen < 0 {
        return Err(AmountError::Negative(fen));
    }
    Ok(format!("{}.{:02}", fen / 100, fen % 100))
}

/// An amount in fen that travels as a yuan string. The only way in or out is [`parse_yuan`] /
/// [`format_yuan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Yuan(i64);

impl Yuan {
    /// # Errors
    /// [`AmountError::Negative`].
    pub fn from_fen(fen: i64) -> Result<Self, AmountError> {
        if fen < 0 {
            return Err(AmountError::Negative(fen));
        }
        Ok(Self(fen))
    }

    pub fn fen(self) -> i64 {
        self.0
    }
}

impl TryFrom<String> for Yuan {
    type Error = AmountError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        parse_yuan(&text).map(Self)
    }
}

impl From<Yuan> for String {
    fn from(amount: Yuan) -> Self {
        amount.to_string()
    }
}

impl fmt::Display for Yuan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The constructor guarantees fen >= 0, so this is format_yuan without its error case.
        write!(f, "{}.{:02}", self.0 / 100, self.0 % 100)
    }
}

// ------------------------------------------------------------------------------ request parameters

/// The common gateway parameters of one call. `sign` is added by
/// [`crate::signature::AppSigner::sign_params`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayParams {
    pub app_id: String,
    pub method: String,
    /// [`format_timestamp`] of the send time.
    pub timestamp: String,
    pub notify_url: Option<String>,
    /// Page pay only.
    pub return_url: Option<String>,
    pub app_auth_token: Option<String>,
    /// Certificate mode only.
    pub app_cert_sn: Option<String>,
    pub alipay_root_cert_sn: Option<String>,
}

impl GatewayParams {
    /// The full parameter set for `biz`: fixed `format=JSON`, `charset=utf-8`, `sign_type=RSA2`,
    /// `version=1.0`, the optional fields that are set, and `biz_content` as compact JSON. The JSON
    /// string is signed exactly as produced here, so it must not be rebuilt afterwards.
    ///
    /// # Errors
    /// The serde error if `biz` cannot serialize.
    pub fn to_params<B: Serialize>(
        &self,
        biz: &B,
    ) -> Result<BTreeMap<String, String>, serde_json::Error> {
        let mut params = BTreeMap::new();
        let mut put = |key: &str, value: &str| {
            params.insert(key.to_owned(), value.to_owned());
        };
        put("app_id", &self.app_id);
        put("method", &self.method);
        put("format", "JSON");
        put("charset", "utf-8");
        put("sign_type", crate::signature::SIGN_TYPE);
        put("timestamp", &self.timestamp);
        put("version", "1.0");
        for (key, value) in [
            ("notify_url", &self.notify_url),
            ("return_url", &self.return_url),
            ("app_auth_token", &self.app_auth_token),
            ("app_cert_sn", &self.app_cert_sn),
            ("alipay_root_cert_sn", &self.alipay_root_cert_sn),
        ] {
            if let Some(value) = value {
                put(key, value);
            }
        }
        put("biz_content", &serde_json::to_string(biz)?);
        Ok(params)
    }
}

pub use channel_kit::form::{FormError, encode as encode_form, parse as parse_form};

// ------------------------------------------------------------------------------------ biz_content

/// `alipay.trade.precreate` (QR code).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrecreateBiz {
    pub out_trade_no: String,
    pub total_amount: Yuan,
    pub subject: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// `yyyy-MM-dd HH:mm:ss`, Beijing time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_expire: Option<String>,
    /// `1m`–`15d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_express: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_id: Option<String>,
}

/// `product_code` of the browser/app pay methods.
pub mod product_code {
    /// `alipay.trade.page.pay`.
    pub const PAGE: &str = "FAST_INSTANT_TRADE_PAY";
    /// `alipay.trade.app.pay`.
    pub const APP: &str = "QUICK_MSECURITY_PAY";
}

/// `alipay.trade.page.pay` / `app.pay`: not called server-side; the signed parameters go
/// to the browser (redirect or auto-submitted form) or to the app SDK.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PagePayBiz {
    pub out_trade_no: String,
    pub total_amount: Yuan,
    pub subject: String,
    /// One of [`product_code`].
    pub product_code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_expire: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_express: Option<String>,
    /// Echoed back URL-encoded in the notification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passback_params: Option<String>,
}

/// Names a trade by merchant number or Alipay number; used by query and close.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TradeRefBiz {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_trade_no: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trade_no: Option<String>,
}

impl TradeRefBiz {
    pub fn by_out_trade_no(out_trade_no: &str) -> Self {
        Self {
            out_trade_no: Some(out_trade_no.to_owned()),
            trade_no: None,
        }
    }
}

/// `alipay.trade.refund`. `out_request_no` identifies this refund within the trade; resending the
/// same one is the idempotent retry, so the adapter always sets it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundBiz {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_trade_no: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trade_no: Option<String>,
    pub refund_amount: Yuan,
    pub out_request_no: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refund_reason: Option<String>,
}

/// `alipay.trade.fastpay.refund.query`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundQueryBiz {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_trade_no: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trade_no: Option<String>,
    pub out_request_no: String,
}

/// `alipay.data.dataservice.bill.downloadurl.query`: `bill_type` `trade` or `signcustomer`,
/// `bill_date` `yyyy-MM-dd` (daily) or `yyyy-MM` (monthly).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BillDownloadUrlQueryBiz {
    pub bill_type: String,
    pub bill_date: String,
}

// -------------------------------------------------------------------------------- response nodes

/// `code`/`msg`/`sub_code`/`sub_msg`, present in every node; see [`crate::status::classify`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseStatus {
    pub code: String,
    #[serde(default)]
    pub msg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_msg: Option<String>,
}

/// `alipay_trade_precreate_response`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrecreateResponse {
    #[serde(flatten)]
    pub status: ResponseStatus,
    #[serde(default)]
    pub out_trade_no: Option<String>,
    #[serde(default)]
    pub qr_code: Option<String>,
}

/// `alipay_trade_query_response`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TradeQueryResponse {
    #[serde(flatten)]
    pub status: ResponseStatus,
    #[serde(default)]
    pub trade_no: Option<String>,
    #[serde(default)]
    pub out_trade_no: Option<String>,
    #[serde(default)]
    pub buyer_logon_id: Option<String>,
    /// Mapped by [`crate::status::TradeStatus::parse`].
    #[serde(default)]
    pub trade_status: Option<String>,
    #[serde(default)]
    pub total_amount: Option<Yuan>,
    #[serde(default)]
    pub buyer_pay_amount: Option<Yuan>,
    #[serde(default)]
    pub receipt_amount: Option<Yuan>,
    #[serde(default)]
    pub invoice_amount: Option<Yuan>,
    #[serde(default)]
    pub point_amount: Option<Yuan>,
    #[serde(default)]
    pub send_pay_date: Option<String>,
}

/// `alipay_trade_close_response`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TradeCloseResponse {
    #[serde(flatten)]
    pub status: ResponseStatus,
    #[serde(default)]
    pub trade_no: Option<String>,
    #[serde(default)]
    pub out_trade_no: Option<String>,
}

/// `alipay_trade_refund_response`. `refund_fee` is cumulative over the trade; `fund_change` says
/// whether money moved on this very call (`N` on an idempotent retry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundResponse {
    #[serde(flatten)]
    pub status: ResponseStatus,
    #[serde(default)]
    pub trade_no: Option<String>,
    #[serde(default)]
    pub out_trade_no: Option<String>,
    #[serde(default)]
    pub buyer_logon_id: Option<String>,
    #[serde(default)]
    pub fund_change: Option<String>,
    #[serde(default)]
    pub refund_fee: Option<Yuan>,
    #[serde(default)]
    pub send_back_fee: Option<Yuan>,
}

/// `alipay_trade_fastpay_refund_query_response`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundQueryResponse {
    #[serde(flatten)]
    pub status: ResponseStatus,
    #[serde(default)]
    pub out_request_no: Option<String>,
    #[serde(default)]
    pub out_trade_no: Option<String>,
    #[serde(default)]
    pub trade_no: Option<String>,
    #[serde(default)]
    pub total_amount: Option<Yuan>,
    #[serde(default)]
    pub refund_amount: Option<Yuan>,
    /// `REFUND_SUCCESS`, or absent; see [`crate::status::refund_query_status`].
    #[serde(default)]
    pub refund_status: Option<String>,
    #[serde(default)]
    pub gmt_refund_pay: Option<String>,
}

/// `alipay_data_dataservice_bill_downloadurl_query_response`. The URL is valid for 30 s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BillDownloadUrlResponse {
    #[serde(flatten)]
    pub status: ResponseStatus,
    #[serde(default)]
    pub bill_download_url: Option<String>,
}

// ---------------------------------------------------------------------------------- notification

/// A notification field is missing or malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotificationError {
    #[error("notification lacks {0}")]
    Missing(&'static str),
    #[error("notification field {field}: {source}")]
    Amount {
        field: &'static str,
        source: AmountError,
    },
}

/// The fields of a `trade_status_sync` notification the core needs. Build it only from parameters
/// that passed [`crate::signature::AlipayVerifier::verify_notify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TradeNotification {
    /// Stays the same across Alipay's retries: the natural inbox key.
    pub notify_id: String,
    pub notify_type: String,
    pub app_id: String,
    pub trade_no: String,
    pub out_trade_no: String,
    pub trade_status: String,
    pub total_amount: Yuan,
    pub receipt_amount: Option<Yuan>,
    pub buyer_pay_amount: Option<Yuan>,
    /// Partial refunds notify with `TRADE_SUCCESS`, the cumulative `refund_fee` and the refund's
    /// `out_request_no` in `out_biz_no`.
    pub refund_fee: Option<Yuan>,
    pub out_biz_no: Option<String>,
    pub gmt_payment: Option<String>,
    pub gmt_refund: Option<String>,
    pub gmt_close: Option<String>,
}

impl TradeNotification {
    /// # Errors
    /// [`NotificationError`] naming the field.
    pub fn from_params(params: &BTreeMap<String, String>) -> Result<Self, NotificationError> {
        let text = |name: &'static str| params.get(name).filter(|v| !v.is_empty()).cloned();
        let required = |name: &'static str| text(name).ok_or(NotificationError::Missing(name));
        let amount = |field: &'static str| -> Result<Option<Yuan>, NotificationError> {
            text(field)
                .map(|v| {
                    Yuan::try_from(v).map_err(|source| NotificationError::Amount { field, source })
                })
                .transpose()
        };
        Ok(Self {
            notify_id: required("notify_id")?,
            notify_type: required("notify_type")?,
            app_id: required("app_id")?,
            trade_no: required("trade_no")?,
            out_trade_no: required("out_trade_no")?,
            trade_status: required("trade_status")?,
            total_amount: amount("total_amount")?
                .ok_or(NotificationError::Missing("total_amount"))?,
            receipt_amount: amount("receipt_amount")?,
            buyer_pay_amount: amount("buyer_pay_amount")?,
            refund_fee: amount("refund_fee")?,
            out_biz_no: text("out_biz_no"),
            gmt_payment: text("gmt_payment"),
            gmt_refund: text("gmt_refund"),
            gmt_close: text("gmt_close"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yuan_strings_parse_exactly() {
        let table = [
            ("88.88", 8888),
            ("0.01", 1),
            ("0.1", 10),
            ("0", 0),
            ("0.00", 0),
            ("1", 100),
            ("1.5", 150),
            ("100000000.00", 10_000_000_000),
            ("92233720368547758.07", i64::MAX),
        ];
        for (text, fen) in table {
            assert_eq!(parse_yuan(text), Ok(fen), "{text}");
        }
    }

    #[test]
    fn malformed_yuan_strings_are_refused() {
        for text in [
            "", ".", ".5", "5.", "-1", "-0.01", "+1", "1e2", "1E2", "0x10", " 1", "1 ", "1,000",
            "1_000", "01", "00.01", "1..0", "1.2.3", "NaN", "inf", "１", "1.-1", "1.+1", "٣",
        ] {
            assert!(
                matches!(parse_yuan(text), Err(AmountError::Syntax(_))),
                "{text:?} -> {:?}",
                parse_yuan(text)
            );
        }
        for text in ["88.888", "0.001", "1.000", "1.0000000001"] {
            assert!(
                matches!(parse_yuan(text), Err(AmountError::TooPrecise(_))),
                "{text:?}"
            );
        }
        for text in ["92233720368547758.08", "99999999999999999999"] {
            assert!(
                matches!(parse_yuan(text), Err(AmountError::OutOfRange(_))),
                "{text:?}"
            );
        }
    }

    #[test]
    fn fen_formats_with_exactly_two_decimals() {
        let table = [
            (0, "0.00"),
            (1, "0.01"),
            (10, "0.10"),
            (100, "1.00"),
            (8888, "88.88"),
            (10_000_000_000, "100000000.00"),
        ];
        for (fen, text) in table {
            assert_eq!(format_yuan(fen).unwrap(), text);
            assert_eq!(parse_yuan(text).unwrap(), fen);
        }
        assert_eq!(format_yuan(i64::MAX).unwrap(), "92233720368547758.07");
        assert_eq!(format_yuan(-1), Err(AmountError::Negative(-1)));
    }

    #[test]
    fn every_fen_value_round_trips_in_a_range() {
        for fen in 0..=20_000 {
            assert_eq!(parse_yuan(&format_yuan(fen).unwrap()), Ok(fen));
        }
    }

    #[test]
    fn yuan_travels_as_a_json_string_only() {
        let biz = TradeQueryResponse {
            status: ResponseStatus {
                code: "10000".into(),
                msg: "Success".into(),
                sub_code: None,
                sub_msg: None,
            },
            trade_no: None,
            out_trade_no: None,
            buyer_logon_id: None,
            trade_status: None,
            total_amount: Some(Yuan::from_fen(8888).unwrap()),
            buyer_pay_amount: None,
            receipt_amount: None,
            invoice_amount: None,
            point_amount: None,
            send_pay_date: None,
        };
        assert!(
            serde_json::to_string(&biz)
                .unwrap()
                .contains(r#""total_amount":"88.88""#)
        );
        assert!(
            serde_json::from_str::<TradeQueryResponse>(r#"{"code":"10000","total_amount":88.88}"#)
                .is_err()
        );
        assert!(
            serde_json::from_str::<TradeQueryResponse>(
                r#"{"code":"10000","total_amount":"88.888"}"#
            )
            .is_err()
        );
        let parsed: TradeQueryResponse =
            serde_json::from_str(r#"{"code":"10000","msg":"Success","total_amount":"0.01"}"#)
                .unwrap();
        assert_eq!(parsed.total_amount.map(Yuan::fen), Some(1));
        assert!(Yuan::from_fen(-5).is_err());
    }

    #[test]
    fn gateway_params_carry_the_fixed_fields_and_compact_biz_content() {
        let at = DateTime::parse_from_rfc3339("2023-12-20T22:54:37Z")
            .unwrap()
            .with_timezone(&Utc);
        let common = GatewayParams {
            app_id: "9021000122682882".into(),
            method: method::PRECREATE.into(),
            timestamp: format_timestamp(at),
            notify_url: Some("https://example.com/n".into()),
            return_url: None,
            app_auth_token: None,
            app_cert_sn: None,
            alipay_root_cert_sn: None,
        };
        let biz = PrecreateBiz {
            out_trade_no: "T1".into(),
            total_amount: Yuan::from_fen(1).unwrap(),
            subject: "测试".into(),
            body: None,
            time_expire: None,
            timeout_express: Some("15m".into()),
            store_id: None,
        };
        let params = common.to_params(&biz).unwrap();
        assert_eq!(params["timestamp"], "2023-12-21 06:54:37");
        assert_eq!(params["sign_type"], "RSA2");
        assert_eq!(params["format"], "JSON");
        assert_eq!(params["charset"], "utf-8");
        assert_eq!(params["version"], "1.0");
        assert!(!params.contains_key("return_url"));
        assert_eq!(
            params["biz_content"],
            r#"{"out_trade_no":"T1","total_amount":"0.01","subject":"测试","timeout_express":"15m"}"#
        );
    }

    #[test]
    fn refund_biz_names_out_request_no() {
        let biz = RefundBiz {
            out_trade_no: Some("T1".into()),
            trade_no: None,
            refund_amount: Yuan::from_fen(150).unwrap(),
            out_request_no: "T1-R1".into(),
            refund_reason: None,
        };
        assert_eq!(
            serde_json::to_string(&biz).unwrap(),
            r#"{"out_trade_no":"T1","refund_amount":"1.50","out_request_no":"T1-R1"}"#
        );
    }

    #[test]
    fn forms_decode_once_and_round_trip() {
        let params = parse_form("subject=yansongda%2B%E6%B5%8B%E8%AF%95+-+1&timestamp=2023-12-21+14%3A48%3A44&empty=&flag").unwrap();
        assert_eq!(params["subject"], "yansongda+测试 - 1");
        assert_eq!(params["timestamp"], "2023-12-21 14:48:44");
        assert_eq!(params["empty"], "");
        assert_eq!(params["flag"], "");
        assert_eq!(parse_form(&encode_form(&params)).unwrap(), params);
        assert_eq!(parse_form("a=1&a=2"), Err(FormError::Duplicate("a".into())));
        assert!(matches!(parse_form("a=%2"), Err(FormError::Escape(_))));
        assert!(matches!(parse_form("a=%zz"), Err(FormError::Escape(_))));
        assert_eq!(parse_form("a=%FF"), Err(FormError::Utf8));
    }

    #[test]
    fn a_partial_refund_notification_parses() {
        let params = parse_form(
            "notify_id=n1&notify_type=trade_status_sync&app_id=a&trade_no=t&out_trade_no=o&trade_status=TRADE_SUCCESS&total_amount=88.88&refund_fee=1.00&out_biz_no=o-R1&gmt_refund=2024-03-10+12%3A00%3A00.123",
        )
        .unwrap();
        let notification = TradeNotification::from_params(&params).unwrap();
        assert_eq!(notification.total_amount.fen(), 8888);
        assert_eq!(notification.refund_fee.map(Yuan::fen), Some(100));
        assert_eq!(notification.out_biz_no.as_deref(), Some("o-R1"));

        let mut bad = params.clone();
        bad.insert("total_amount".into(), "88.8.8".into());
        assert!(matches!(
            TradeNotification::from_params(&bad),
            Err(NotificationError::Amount {
                field: "total_amount",
                ..
            })
        ));
        bad.remove("total_amount");
        assert_eq!(
            TradeNotification::from_params(&bad),
            Err(NotificationError::Missing("total_amount"))
        );
    }
}
