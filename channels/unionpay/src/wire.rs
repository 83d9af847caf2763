//! UnionPay 5.1.0 field maps: consume (txnType 01), query (00) and refund (04) requests, the
//! bracket-aware parser of synchronous `k=v&…` answers, the notification form decoder, typed
//! results, and [`parse_txn_amt`] / [`format_txn_amt`]: the one exact conversion between fen and the
//! `txnAmt` digit strings. No float is involved anywhere.

use std::collections::BTreeMap;

use chrono::{DateTime, FixedOffset, Utc};

use crate::signature::{SIGN_METHOD_RSA, VERSION};

/// Production gateway host.
pub const GATEWAY: &str = "https://gateway.95516.com";
/// Test gateway host.
pub const TEST_GATEWAY: &str = "https://gateway.test.95516.com";
/// Browser form POST of a consume.
pub const FRONT_TRANS_PATH: &str = "/gateway/api/frontTransReq.do";
/// Server-to-server transactions (refund, undo, background consume).
pub const BACK_TRANS_PATH: &str = "/gateway/api/backTransReq.do";
/// Single query.
pub const QUERY_TRANS_PATH: &str = "/gateway/api/queryTrans.do";

/// `currencyCode` of CNY.
pub const CNY: &str = "156";

/// `txnTime` and `payTimeout` are Beijing time.
const BEIJING: FixedOffset = match FixedOffset::east_opt(8 * 3600) {
    Some(offset) => offset,
    None => panic!("UTC+8 is a valid offset"),
};

/// `YYYYMMDDhhmmss` in Beijing time, the form of `txnTime` and `payTimeout`.
pub fn format_txn_time(at: DateTime<Utc>) -> String {
    at.with_timezone(&BEIJING)
        .format("%Y%m%d%H%M%S")
        .to_string()
}

/// A field map could not be built or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("txnAmt {0:?} is not 1 to 12 digits without leading zeros")]
    Amount(String),
    #[error("amount {0} fen is out of range for txnAmt")]
    AmountRange(i64),
    #[error("orderId {0:?} must be 8 to 40 characters of [0-9A-Za-z]")]
    OrderId(String),
    #[error("txnTime {0:?} must be 14 digits (YYYYMMDDhhmmss)")]
    TxnTime(String),
    #[error("answer is not a k=v&… string near byte {0}")]
    Syntax(usize),
    #[error("bad percent escape in {0:?}")]
    Escape(String),
    #[error("decoded value is not UTF-8")]
    Utf8,
    #[error("duplicate field {0:?}")]
    Duplicate(String),
    #[error("missing field {0}")]
    Missing(&'static str),
}

// ------------------------------------------------------------------------------------------ money

/// Largest `txnAmt`: 12 digits.
pub const MAX_TXN_AMT: i64 = 999_999_999_999;

/// Parses `txnAmt` (fen as digits, `"1"` = 0.01 CNY). Refused: empty, signs, spaces, decimal points,
/// leading zeros, more than 12 digits.
///
/// # Errors
/// [`WireError::Amount`].
pub fn parse_txn_amt(text: &str) -> Result<i64, WireError> {
    let bad = || WireError::Amount(text.to_owned());
    if text.is_empty() || text.len() > 12 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    if text.len() > 1 && text.starts_with('0') {
        return Err(bad());
    }
    text.parse().map_err(|_| bad())
}

/// Formats fen as `txnAmt`.
///
/// # Errors
/// [`WireError::AmountRange`] for negative amounts or more than 12 digits.
pub fn format_txn_amt(fen: i64) -> Result<String, WireError> {
    if !(0..=MAX_TXN_AMT).contains(&fen) {
        return Err(WireError::AmountRange(fen));
    }
    Ok(fen.to_string())
}

/// `orderId` is `AN8..40` in the 5.1.0 specification: 8 to 40 letters and digits, no `-` or `_`.
pub const ORDER_ID_LEN: std::ops::RangeInclusive<usize> = 8..=40;

/// Checks a merchant order number (`orderId`, also a refund's own `orderId`) against the spec.
///
/// # Errors
/// [`WireError::OrderId`].
pub fn check_order_id(order_id: &str) -> Result<(), WireError> {
    if !ORDER_ID_LEN.contains(&order_id.len())
        || !order_id.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return Err(WireError::OrderId(order_id.to_owned()));
    }
    Ok(())
}

fn check_txn_time(txn_time: &str) -> Result<(), WireError> {
    if txn_time.len() != 14 || !txn_time.bytes().all(|b| b.is_ascii_digit()) {
        return Err(WireError::TxnTime(txn_time.to_owned()));
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------ requests

/// `channelType`: which terminal the payer uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelType {
    /// `07`.
    Pc,
    /// `08`.
    Mobile,
}

impl ChannelType {
    pub fn code(self) -> &'static str {
        match self {
            Self::Pc => "07",
            Self::Mobile => "08",
        }
    }
}

fn base_fields(
    txn_type: &str,
    txn_sub_type: &str,
    biz_type: &str,
    mer_id: &str,
) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    for (key, value) in [
        ("version", VERSION),
        ("encoding", "utf-8"),
        ("signMethod", SIGN_METHOD_RSA),
        ("txnType", txn_type),
        ("txnSubType", txn_sub_type),
        ("bizType", biz_type),
        ("accessType", "0"),
        ("merId", mer_id),
    ] {
        fields.insert(key.to_owned(), value.to_owned());
    }
    fields
}

/// A consume (txnType 01, B2C gateway `bizType=000201`). Sent as a browser form to
/// [`FRONT_TRANS_PATH`] when `front_url` is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumeRequest {
    pub mer_id: String,
    pub order_id: String,
    /// [`format_txn_time`] of now; UnionPay requires the current time.
    pub txn_time: String,
    pub txn_amt_fen: i64,
    pub channel_type: ChannelType,
    pub front_url: Option<String>,
    pub back_url: String,
    pub pay_timeout: Option<String>,
    /// Echoed unchanged in query answers, notifications and the reconciliation file.
    pub req_reserved: Option<String>,
}

impl ConsumeRequest {
    /// The unsigned field map; sign it with [`crate::signature::MerchantSigner::sign`].
    ///
    /// # Errors
    /// [`WireError`] for an invalid order id, time or amount.
    pub fn to_fields(&self) -> Result<BTreeMap<String, String>, WireError> {
        check_order_id(&self.order_id)?;
        check_txn_time(&self.txn_time)?;
        let mut fields = base_fields("01", "01", "000201", &self.mer_id);
        fields.insert("channelType".into(), self.channel_type.code().into());
        fields.insert("currencyCode".into(), CNY.into());
        fields.insert("orderId".into(), self.order_id.clone());
        fields.insert("txnTime".into(), self.txn_time.clone());
        fields.insert("txnAmt".into(), format_txn_amt(self.txn_amt_fen)?);
        fields.insert("backUrl".into(), self.back_url.clone());
        for (key, value) in [
            ("frontUrl", &self.front_url),
            ("payTimeout", &self.pay_timeout),
            ("reqReserved", &self.req_reserved),
        ] {
            if let Some(value) = value {
                fields.insert(key.into(), value.clone());
            }
        }
        Ok(fields)
    }
}

/// A single query (txnType 00) of the transaction sent with `order_id` at `txn_time`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryRequest {
    pub mer_id: String,
    pub order_id: String,
    pub txn_time: String,
    /// `channelType` is a required field of the query in the 5.1.0 interface (the official demo
    /// `Form_6_5_Query` sends `07`).
    pub channel_type: ChannelType,
}

impl QueryRequest {
    /// # Errors
    /// [`WireError`] for an invalid order id or time.
    pub fn to_fields(&self) -> Result<BTreeMap<String, String>, WireError> {
        check_order_id(&self.order_id)?;
        check_txn_time(&self.txn_time)?;
        let mut fields = base_fields("00", "00", "000000", &self.mer_id);
        fields.insert("channelType".into(), self.channel_type.code().into());
        fields.insert("orderId".into(), self.order_id.clone());
        fields.insert("txnTime".into(), self.txn_time.clone());
        Ok(fields)
    }
}

/// A refund (txnType 04) of the consume whose `queryId` is `orig_qry_id`. `order_id` and `txn_time`
/// are **new** and identify the refund itself (they are also what a later query uses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundRequest {
    pub mer_id: String,
    pub order_id: String,
    pub txn_time: String,
    pub txn_amt_fen: i64,
    pub orig_qry_id: String,
    pub channel_type: ChannelType,
    pub back_url: String,
    pub req_reserved: Option<String>,
}

impl RefundRequest {
    /// # Errors
    /// [`WireError`] for an invalid order id, time or amount.
    pub fn to_fields(&self) -> Result<BTreeMap<String, String>, WireError> {
        check_order_id(&self.order_id)?;
        check_txn_time(&self.txn_time)?;
        let mut fields = base_fields("04", "00", "000201", &self.mer_id);
        fields.insert("channelType".into(), self.channel_type.code().into());
        fields.insert("currencyCode".into(), CNY.into());
        fields.insert("orderId".into(), self.order_id.clone());
        fields.insert("txnTime".into(), self.txn_time.clone());
        fields.insert("txnAmt".into(), format_txn_amt(self.txn_amt_fen)?);
        fields.insert("origQryId".into(), self.orig_qry_id.clone());
        fields.insert("backUrl".into(), self.back_url.clone());
        if let Some(value) = &self.req_reserved {
            fields.insert("reqReserved".into(), value.clone());
        }
        Ok(fields)
    }
}

pub use channel_kit::form::encode as encode_form;

// ------------------------------------------------------------------------------------------ parsing

/// Parses a synchronous answer: `k=v&…`, **not** URL-encoded, where a value that starts with `{` or
/// `[` runs to its matching bracket and may contain `&` and `=` (as the official SDK's
/// `parseQString` reads it). Values are kept verbatim, brackets included, because that is what was
/// signed.
///
/// # Errors
/// [`WireError::Syntax`] for a pair without `=`, an empty key or an unclosed bracket;
/// [`WireError::Duplicate`] for a repeated key.
pub fn parse_sync_response(body: &str) -> Result<BTreeMap<String, String>, WireError> {
    let body = body.trim_end_matches(['\r', '\n']);
    let bytes = body.as_bytes();
    let mut fields = BTreeMap::new();
    let mut i = 0;
    while i < bytes.len() {
        let key_start = i;
        while i < bytes.len() && bytes[i] != b'=' && bytes[i] != b'&' {
            i += 1;
        }
        if i >= bytes.len() || bytes[i] != b'=' || i == key_start {
            return Err(WireError::Syntax(i));
        }
        let key = &body[key_start..i];
        i += 1;
        let value_start = i;
        let mut open: Option<(u8, u8, usize)> = None;
        while i < bytes.len() {
            let c = bytes[i];
            match open {
                None if i == value_start && (c == b'{' || c == b'[') => {
                    open = Some((c, if c == b'{' { b'}' } else { b']' }, 1));
                }
                None if c == b'&' => break,
                None => {}
                Some((opening, closing, depth)) => {
                    if c == opening {
                        open = Some((opening, closing, depth + 1));
                    } else if c == closing {
                        open = if depth == 1 {
                            None
                        } else {
                            Some((opening, closing, depth - 1))
                        };
                    }
                }
            }
            i += 1;
        }
        if open.is_some() {
            return Err(WireError::Syntax(i));
        }
        let value = &body[value_start..i];
        if fields.insert(key.to_owned(), value.to_owned()).is_some() {
            return Err(WireError::Duplicate(key.to_owned()));
        }
        // Skip the '&' separator.
        i += 1;
    }
    Ok(fields)
}

/// Decodes the form body of a background notification exactly once (`+` is a space).
///
/// # Errors
/// [`WireError::Escape`], [`WireError::Utf8`] or [`WireError::Duplicate`].
pub fn parse_notify_form(body: &str) -> Result<BTreeMap<String, String>, WireError> {
    channel_kit::form::parse(body).map_err(|e| match e {
        channel_kit::form::FormError::Escape(t) => WireError::Escape(t),
        channel_kit::form::FormError::Utf8 => WireError::Utf8,
        channel_kit::form::FormError::Duplicate(k) => WireError::Duplicate(k),
    })
}

/// The fields of a verified answer or notification that the core acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionResult {
    pub resp_code: String,
    pub resp_msg: String,
    /// Query answers only: the queried transaction's own result.
    pub orig_resp_code: Option<String>,
    pub orig_resp_msg: Option<String>,
    pub txn_type: Option<String>,
    pub order_id: Option<String>,
    pub txn_time: Option<String>,
    /// UnionPay's id of the transaction; a refund names its consume by it (`origQryId`).
    pub query_id: Option<String>,
    pub txn_amt_fen: Option<i64>,
    pub currency_code: Option<String>,
    pub settle_amt_fen: Option<i64>,
    /// `MMDD`.
    pub settle_date: Option<String>,
    pub trace_no: Option<String>,
    pub req_reserved: Option<String>,
}

impl TransactionResult {
    /// Reads fields that passed [`crate::signature::PlatformVerifier::verify`].
    ///
    /// # Errors
    /// [`WireError::Missing`] without `respCode`; [`WireError::Amount`] for a malformed amount.
    pub fn from_fields(fields: &BTreeMap<String, String>) -> Result<Self, WireError> {
        let text = |name: &str| fields.get(name).filter(|v| !v.is_empty()).cloned();
        let amount = |name: &str| text(name).map(|v| parse_txn_amt(&v)).transpose();
        Ok(Self {
            resp_code: text("respCode").ok_or(WireError::Missing("respCode"))?,
            resp_msg: text("respMsg").unwrap_or_default(),
            orig_resp_code: text("origRespCode"),
            orig_resp_msg: text("origRespMsg"),
            txn_type: text("txnType"),
            order_id: text("orderId"),
            txn_time: text("txnTime"),
            query_id: text("queryId"),
            txn_amt_fen: amount("txnAmt")?,
            currency_code: text("currencyCode"),
            settle_amt_fen: amount("settleAmt")?,
            settle_date: text("settleDate"),
            trace_no: text("traceNo"),
            req_reserved: text("reqReserved"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txn_amt_parses_exactly() {
        for (text, fen) in [
            ("1", 1),
            ("0", 0),
            ("8888", 8888),
            ("999999999999", MAX_TXN_AMT),
        ] {
            assert_eq!(parse_txn_amt(text), Ok(fen));
            assert_eq!(format_txn_amt(fen).unwrap(), text);
        }
        for text in [
            "",
            "01",
            "00",
            "-1",
            "+1",
            "1.00",
            "1e2",
            " 1",
            "1 ",
            "1,000",
            "1000000000000",
            "０",
            "0x1",
        ] {
            assert_eq!(
                parse_txn_amt(text),
                Err(WireError::Amount(text.into())),
                "{text:?}"
            );
        }
        assert_eq!(format_txn_amt(-1), Err(WireError::AmountRange(-1)));
        assert_eq!(
            format_txn_amt(MAX_TXN_AMT + 1),
            Err(WireError::AmountRange(MAX_TXN_AMT + 1))
        );
    }

    #[test]
    fn consume_fields_match_the_c_v1_request() {
        let request = ConsumeRequest {
            mer_id: "777290058167151".into(),
            order_id: "yansongda20220903065448".into(),
            txn_time: "20220903065448".into(),
            txn_amt_fen: 1,
            channel_type: ChannelType::Pc,
            front_url: Some("https://yansongda.cn/unipay/return".into()),
            back_url: "https://yansongda.cn/unipay/notify".into(),
            pay_timeout: None,
            req_reserved: None,
        };
        let mut fields = request.to_fields().unwrap();
        fields.insert("certId".into(), "69903319369".into());
        assert_eq!(
            crate::signature::signing_string(&fields),
            "accessType=0&backUrl=https://yansongda.cn/unipay/notify&bizType=000201&certId=69903319369&channelType=07&currencyCode=156&encoding=utf-8&frontUrl=https://yansongda.cn/unipay/return&merId=777290058167151&orderId=yansongda20220903065448&signMethod=01&txnAmt=1&txnSubType=01&txnTime=20220903065448&txnType=01&version=5.1.0"
        );
    }

    #[test]
    fn query_and_refund_fields_carry_their_txn_types() {
        let query = QueryRequest {
            mer_id: "777290058167151".into(),
            order_id: "ORDER0001".into(),
            txn_time: "20240310120000".into(),
            channel_type: ChannelType::Pc,
        }
        .to_fields()
        .unwrap();
        assert_eq!(
            (
                query["txnType"].as_str(),
                query["txnSubType"].as_str(),
                query["bizType"].as_str()
            ),
            ("00", "00", "000000")
        );
        assert!(!query.contains_key("txnAmt"));
        // The official query demo (Form_6_5_Query) sends channelType; the 5.1.0 spec requires it.
        assert_eq!(query["channelType"], "07");

        let refund = RefundRequest {
            mer_id: "777290058167151".into(),
            order_id: "REFUND0001".into(),
            txn_time: "20240310130000".into(),
            txn_amt_fen: 50,
            orig_qry_id: "512403101200000000001".into(),
            channel_type: ChannelType::Mobile,
            back_url: "https://example.com/n".into(),
            req_reserved: None,
        }
        .to_fields()
        .unwrap();
        assert_eq!(
            (refund["txnType"].as_str(), refund["txnSubType"].as_str()),
            ("04", "00")
        );
        assert_eq!(refund["txnAmt"], "50");
        assert_eq!(refund["channelType"], "08");
        assert_eq!(refund["origQryId"], "512403101200000000001");
    }

    #[test]
    fn invalid_request_values_are_refused() {
        let mut request = QueryRequest {
            mer_id: "777290058167151".into(),
            order_id: "ORDER-0001".into(),
            txn_time: "20240310120000".into(),
            channel_type: ChannelType::Pc,
        };
        assert_eq!(
            request.to_fields(),
            Err(WireError::OrderId("ORDER-0001".into()))
        );
        request.order_id = "SHORT".into();
        assert!(request.to_fields().is_err());
        request.order_id = "ORDER0001".into();
        request.txn_time = "2024-03-10 12:00".into();
        assert_eq!(
            request.to_fields(),
            Err(WireError::TxnTime("2024-03-10 12:00".into()))
        );
    }

    #[test]
    fn order_ids_follow_the_spec_length_of_8_to_40_alphanumerics() {
        // 5.1.0 specification: orderId AN8..40 (the official consume demo: "8-40位数字字母").
        assert!(check_order_id(&"A".repeat(8)).is_ok());
        assert!(check_order_id(&"A1".repeat(20)).is_ok());
        assert!(check_order_id(&"A".repeat(7)).is_err());
        assert!(check_order_id(&"A".repeat(41)).is_err());
        for bad in ["ORDER_0001", "ORDER-0001", "ORDER 0001", "订单00000001"] {
            assert!(check_order_id(bad).is_err(), "{bad}");
        }
        // A snowflake out_trade_no of the core (P + up to 19 digits) fits.
        assert!(check_order_id("P9223372036854775807").is_ok());
    }

    #[test]
    fn txn_time_is_beijing_time() {
        let at = DateTime::parse_from_rfc3339("2022-09-02T22:54:48Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(format_txn_time(at), "20220903065448");
    }

    #[test]
    fn sync_answers_keep_bracketed_values_whole() {
        let fields =
            parse_sync_response("a=1&reqReserved={x=1&y={z=2}}&list=[1&2]&empty=&b=c=d\r\n")
                .unwrap();
        assert_eq!(fields["a"], "1");
        assert_eq!(fields["reqReserved"], "{x=1&y={z=2}}");
        assert_eq!(fields["list"], "[1&2]");
        assert_eq!(fields["empty"], "");
        assert_eq!(fields["b"], "c=d");
        // A bracket inside a value (not at its start) is an ordinary character.
        assert_eq!(parse_sync_response("m=a{b&n=1").unwrap()["m"], "a{b");
    }

    #[test]
    fn malformed_sync_answers_are_refused() {
        assert!(matches!(
            parse_sync_response("a=1&b"),
            Err(WireError::Syntax(_))
        ));
        assert!(matches!(
            parse_sync_response("=1"),
            Err(WireError::Syntax(_))
        ));
        assert!(matches!(
            parse_sync_response("a={1&b=2"),
            Err(WireError::Syntax(_))
        ));
        assert_eq!(
            parse_sync_response("a=1&a=2"),
            Err(WireError::Duplicate("a".into()))
        );
        assert_eq!(parse_sync_response("").unwrap(), BTreeMap::new());
    }

    #[test]
    fn notify_forms_decode_once() {
        let fields = parse_notify_form(
            "respMsg=%E6%88%90%E5%8A%9F%5B0000000%5D&reqReserved=%7Ba%3D1%26b%3D2%7D&x=a+b%2Bc",
        )
        .unwrap();
        assert_eq!(fields["respMsg"], "成功[0000000]");
        assert_eq!(fields["reqReserved"], "{a=1&b=2}");
        assert_eq!(fields["x"], "a b+c");
        assert_eq!(parse_notify_form(&encode_form(&fields)).unwrap(), fields);
        assert_eq!(
            parse_notify_form("a=1&a=1"),
            Err(WireError::Duplicate("a".into()))
        );
        assert!(matches!(
            parse_notify_form("a=%G1"),
            Err(WireError::Escape(_))
        ));
    }

    #[test]
    fn transaction_results_read_amounts_exactly() {
        let mut fields = parse_sync_response(
            "respCode=00&respMsg=ok&origRespCode=00&txnAmt=8888&settleAmt=8888&queryId=Q1",
        )
        .unwrap();
        let result = TransactionResult::from_fields(&fields).unwrap();
        assert_eq!(result.txn_amt_fen, Some(8888));
        assert_eq!(result.orig_resp_code.as_deref(), Some("00"));
        fields.insert("txnAmt".into(), "88.88".into());
        assert_eq!(
            TransactionResult::from_fields(&fields),
            Err(WireError::Amount("88.88".into()))
        );
        fields.remove("respCode");
        assert_eq!(
            TransactionResult::from_fields(&fields),
            Err(WireError::Missing("respCode"))
        );
    }
}
