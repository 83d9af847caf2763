//! WeChat Pay API v3 JSON bodies and request paths. Amounts are integer fen (`i64`); serde rejects a
//! JSON float there. Optional request fields are skipped rather than sent as `null`, which WeChat
//! forbids, and unknown response fields are ignored because WeChat may add fields at any time.

use serde::{Deserialize, Serialize};

/// API host; `https://api2.mch.weixin.qq.com` is the documented backup.
pub const API_HOST: &str = "https://api.mch.weixin.qq.com";

/// `POST` path of the JSAPI / mini-program prepay.
pub const JSAPI_PREPAY_PATH: &str = "/v3/pay/transactions/jsapi";
/// `POST` path of the Native (QR code) prepay.
pub const NATIVE_PREPAY_PATH: &str = "/v3/pay/transactions/native";
/// `POST` path of a refund.
pub const REFUND_PATH: &str = "/v3/refund/domestic/refunds";
/// `GET` path of the platform certificate list.
pub const CERTIFICATES_PATH: &str = "/v3/certificates";

/// `GET` path and query of a query by merchant order number.
pub fn query_by_out_trade_no_path(out_trade_no: &str, mchid: &str) -> String {
    format!(
        "/v3/pay/transactions/out-trade-no/{}?mchid={}",
        encode_component(out_trade_no),
        encode_component(mchid)
    )
}

/// `GET` path and query of a query by WeChat transaction id.
pub fn query_by_transaction_id_path(transaction_id: &str, mchid: &str) -> String {
    format!(
        "/v3/pay/transactions/id/{}?mchid={}",
        encode_component(transaction_id),
        encode_component(mchid)
    )
}

/// `POST` path of a close; the body is [`CloseRequest`] and a success is HTTP 204 with no body.
pub fn close_path(out_trade_no: &str) -> String {
    format!(
        "/v3/pay/transactions/out-trade-no/{}/close",
        encode_component(out_trade_no)
    )
}

/// `GET` path of a refund query.
pub fn refund_query_path(out_refund_no: &str) -> String {
    format!(
        "/v3/refund/domestic/refunds/{}",
        encode_component(out_refund_no)
    )
}

/// Percent-encodes everything but RFC 3986 unreserved characters, so that the path we sign is the
/// path we send (merchant order numbers may contain `|`, `*` and `@`).
fn encode_component(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `amount` of a prepay: integer fen and currency (`CNY`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderAmount {
    pub total: i64,
    pub currency: String,
}

/// `payer` of a JSAPI prepay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payer {
    pub openid: String,
}

/// `POST /v3/pay/transactions/jsapi`. `payer` is required here and absent for Native.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JsapiPrepayRequest {
    pub appid: String,
    pub mchid: String,
    pub description: String,
    pub out_trade_no: String,
    /// RFC 3339 with offset, e.g. `2018-06-08T10:34:56+08:00`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_expire: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attach: Option<String>,
    pub notify_url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goods_tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub support_fapiao: Option<bool>,
    pub amount: OrderAmount,
    pub payer: Payer,
}

/// `POST /v3/pay/transactions/native`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NativePrepayRequest {
    pub appid: String,
    pub mchid: String,
    pub description: String,
    pub out_trade_no: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_expire: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attach: Option<String>,
    pub notify_url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goods_tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub support_fapiao: Option<bool>,
    pub amount: OrderAmount,
}

/// JSAPI prepay answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JsapiPrepayResponse {
    pub prepay_id: String,
}

/// Native prepay answer: the `weixin://wxpay/bizpayurl?pr=…` to render as a QR code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NativePrepayResponse {
    pub code_url: String,
}

/// Body of a close request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloseRequest {
    pub mchid: String,
}

/// `payer` of a transaction; absent on unpaid orders.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransactionPayer {
    #[serde(default)]
    pub openid: Option<String>,
}

/// `amount` of a transaction. Every field is optional because an unpaid order carries only some.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransactionAmount {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payer_total: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payer_currency: Option<String>,
}

/// A transaction: the answer of both queries, and the decrypted resource of a `TRANSACTION.SUCCESS`
/// notification (`original_type = transaction`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transaction {
    pub mchid: String,
    pub appid: String,
    pub out_trade_no: String,
    /// Absent until WeChat assigns one (e.g. `NOTPAY`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trade_type: Option<String>,
    /// Mapped by [`crate::status::TradeState::parse`].
    pub trade_state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trade_state_desc: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bank_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attach: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payer: Option<TransactionPayer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<TransactionAmount>,
}

/// `amount` of a refund request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundRequestAmount {
    pub refund: i64,
    /// The original order total; WeChat checks it.
    pub total: i64,
    pub currency: String,
}

/// `POST /v3/refund/domestic/refunds`. Exactly one of `transaction_id` and `out_trade_no` should be
/// set; `out_refund_no` is the idempotency key of the refund.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_trade_no: Option<String>,
    pub out_refund_no: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub funds_account: Option<String>,
    pub amount: RefundRequestAmount,
}

/// `amount` of a refund answer / query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundAmount {
    pub total: i64,
    pub refund: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payer_total: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payer_refund: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settlement_refund: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settlement_total: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discount_refund: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refund_fee: Option<i64>,
}

/// A refund: the answer of the refund call and of the refund query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refund {
    pub refund_id: String,
    pub out_refund_no: String,
    pub transaction_id: String,
    pub out_trade_no: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_received_account: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_time: Option<String>,
    /// Called `status` here and `refund_status` in the notification. Mapped by
    /// [`crate::status::RefundState::parse`].
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub funds_account: Option<String>,
    pub amount: RefundAmount,
}

/// `amount` of a refund notification resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundNotifyAmount {
    pub total: i64,
    pub refund: i64,
    pub payer_total: i64,
    pub payer_refund: i64,
}

/// Decrypted resource of a `REFUND.*` notification (`original_type = refund`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundNotifyResource {
    pub mchid: String,
    pub out_trade_no: String,
    pub transaction_id: String,
    pub out_refund_no: String,
    pub refund_id: String,
    pub refund_status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_received_account: Option<String>,
    pub amount: RefundNotifyAmount,
}

/// Which rows a trade bill holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum BillType {
    /// Payments by success time plus refunds by acceptance time.
    All,
    Success,
    Refund,
}

impl BillType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::All => "ALL",
            Self::Success => "SUCCESS",
            Self::Refund => "REFUND",
        }
    }
}

/// `GET /v3/bill/tradebill?…` path for one day (`bill_date` is `yyyy-MM-dd`); `gzip` asks for
/// `tar_type=GZIP`.
pub fn trade_bill_path(bill_date: chrono::NaiveDate, bill_type: BillType, gzip: bool) -> String {
    let mut path = format!(
        "/v3/bill/tradebill?bill_date={}&bill_type={}",
        bill_date.format("%Y-%m-%d"),
        bill_type.as_str()
    );
    if gzip {
        path.push_str("&tar_type=GZIP");
    }
    path
}

/// Trade bill answer. The download itself is a signed GET whose response is not signed; check the
/// file against `hash_value` (SHA-1 of the uncompressed file) instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TradeBillResponse {
    pub hash_type: String,
    pub hash_value: String,
    pub download_url: String,
}

/// Encrypted part of a notification or of a downloaded certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptedResource {
    pub algorithm: String,
    pub ciphertext: String,
    /// `transaction`, `refund`, `certificate`, or empty (refund docs show `""`).
    #[serde(default)]
    pub associated_data: String,
    pub nonce: String,
    /// Absent on downloaded certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_type: Option<String>,
}

/// The JSON body WeChat POSTs to `notify_url`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifyEnvelope {
    pub id: String,
    pub create_time: String,
    /// `TRANSACTION.SUCCESS`, `REFUND.SUCCESS`, `REFUND.ABNORMAL`, `REFUND.CLOSED`, …
    pub event_type: String,
    pub resource_type: String,
    #[serde(default)]
    pub summary: String,
    pub resource: EncryptedResource,
}

/// Reply body to a notification. The HTTP status (200/204 vs 4xx/5xx) is what WeChat reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifyReply {
    pub code: String,
    pub message: String,
}

impl NotifyReply {
    pub fn success() -> Self {
        Self {
            code: "SUCCESS".to_owned(),
            message: "成功".to_owned(),
        }
    }

    pub fn failure() -> Self {
        Self {
            code: "FAIL".to_owned(),
            message: "失败".to_owned(),
        }
    }
}

/// Error body of any non-2xx answer, e.g. `{"code":"ORDER_NOT_EXIST","message":"…"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    pub code: String,
    #[serde(default)]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
}

/// One entry of `GET /v3/certificates`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformCertificate {
    pub serial_no: String,
    pub effective_time: String,
    pub expire_time: String,
    pub encrypt_certificate: EncryptedResource,
}

/// `GET /v3/certificates` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificatesResponse {
    pub data: Vec<PlatformCertificate>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsapi_prepay_serializes_fen_as_integer_and_omits_absent_fields() {
        let request = JsapiPrepayRequest {
            appid: "wxd678efh567hg6787".into(),
            mchid: "1234567891".into(),
            description: "Image形象店-深圳腾大-QQ公仔".into(),
            out_trade_no: "1217752501201407033233368018".into(),
            time_expire: None,
            attach: None,
            notify_url: "https://www.weixin.qq.com/wxpay/pay.php".into(),
            goods_tag: None,
            support_fapiao: None,
            amount: OrderAmount {
                total: 100,
                currency: "CNY".into(),
            },
            payer: Payer {
                openid: "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o".into(),
            },
        };
        let json = serde_json::to_string(&request).unwrap();
        // Exactly the body of vector V6 of CHANNEL_PROTOCOLS.md.
        assert_eq!(
            json,
            r#"{"appid":"wxd678efh567hg6787","mchid":"1234567891","description":"Image形象店-深圳腾大-QQ公仔","out_trade_no":"1217752501201407033233368018","notify_url":"https://www.weixin.qq.com/wxpay/pay.php","amount":{"total":100,"currency":"CNY"},"payer":{"openid":"oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"}}"#
        );
    }

    #[test]
    fn a_float_amount_is_refused() {
        let body = r#"{"refund_id":"1","out_refund_no":"r","transaction_id":"t","out_trade_no":"o","status":"SUCCESS","amount":{"total":100.5,"refund":1}}"#;
        assert!(serde_json::from_str::<Refund>(body).is_err());
    }

    #[test]
    fn decrypted_payment_resource_parses() {
        let plaintext = r#"{"mchid":"1234567891","appid":"wxd678efh567hg6787","out_trade_no":"1217752501201407033233368018","transaction_id":"4200000000202401010000000001","trade_type":"JSAPI","trade_state":"SUCCESS","trade_state_desc":"支付成功","bank_type":"OTHERS","attach":"","success_time":"2024-01-01T12:00:00+08:00","payer":{"openid":"oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"},"amount":{"total":100,"payer_total":100,"currency":"CNY","payer_currency":"CNY"}}"#;
        let transaction: Transaction = serde_json::from_str(plaintext).unwrap();
        assert_eq!(transaction.trade_state, "SUCCESS");
        assert_eq!(transaction.amount.unwrap().total, Some(100));
    }

    #[test]
    fn refund_query_and_notify_resource_parse() {
        let query = r#"{"refund_id":"50000000382019052709732678859","out_refund_no":"1217752501201407033233368018","transaction_id":"1217752501201407033233368018","out_trade_no":"1217752501201407033233368018","channel":"ORIGINAL","user_received_account":"招商银行信用卡0403","success_time":"2020-12-01T16:18:12+08:00","create_time":"2020-12-01T16:18:12+08:00","status":"SUCCESS","funds_account":"UNSETTLED","amount":{"total":100,"refund":100,"from":[],"payer_total":90,"payer_refund":90,"settlement_refund":100,"settlement_total":100,"discount_refund":10,"currency":"CNY"},"promotion_detail":[]}"#;
        let refund: Refund = serde_json::from_str(query).unwrap();
        assert_eq!(refund.status, "SUCCESS");
        assert_eq!(refund.amount.refund, 100);

        let resource = r#"{"mchid":"1900000100","transaction_id":"1008450740201411110005820873","out_trade_no":"20150806125346","refund_id":"50200207182018070300011301001","out_refund_no":"7752501201407033233368018","refund_status":"SUCCESS","success_time":"2018-06-08T10:34:56+08:00","user_received_account":"招商银行信用卡0403","amount":{"total":999,"refund":999,"payer_total":999,"payer_refund":999}}"#;
        let notified: RefundNotifyResource = serde_json::from_str(resource).unwrap();
        assert_eq!(notified.refund_status, "SUCCESS");
        assert_eq!(notified.amount.payer_refund, 999);
    }

    #[test]
    fn paths_match_the_documented_forms() {
        assert_eq!(
            query_by_out_trade_no_path("1217752501201407033233368018", "1234567891"),
            "/v3/pay/transactions/out-trade-no/1217752501201407033233368018?mchid=1234567891"
        );
        assert_eq!(
            query_by_transaction_id_path("1217752501201407033233368018", "1230000109"),
            "/v3/pay/transactions/id/1217752501201407033233368018?mchid=1230000109"
        );
        assert_eq!(
            close_path("A|B@C"),
            "/v3/pay/transactions/out-trade-no/A%7CB%40C/close"
        );
        assert_eq!(refund_query_path("R1"), "/v3/refund/domestic/refunds/R1");
        let date = chrono::NaiveDate::from_ymd_opt(2024, 1, 2).unwrap();
        assert_eq!(
            trade_bill_path(date, BillType::All, false),
            "/v3/bill/tradebill?bill_date=2024-01-02&bill_type=ALL"
        );
        assert_eq!(
            trade_bill_path(date, BillType::Refund, true),
            "/v3/bill/tradebill?bill_date=2024-01-02&bill_type=REFUND&tar_type=GZIP"
        );
    }

    #[test]
    fn trade_bill_and_error_bodies_parse() {
        let bill: TradeBillResponse = serde_json::from_str(
            r#"{"hash_type":"SHA1","hash_value":"79bb0f45fc4c42234a918000b2668d689e2bde04","download_url":"https://api.mch.weixin.qq.com/v3/billdownload/file?token=xxx"}"#,
        )
        .unwrap();
        assert_eq!(bill.hash_type, "SHA1");
        let error: ErrorResponse = serde_json::from_str(
            r#"{"code":"PARAM_ERROR","message":"参数错误","detail":{"field":"/amount/currency","value":"XYZ","issue":"Currency code is invalid","location":"body"}}"#,
        )
        .unwrap();
        assert_eq!(error.code, "PARAM_ERROR");
        assert_eq!(
            serde_json::to_string(&NotifyReply::success()).unwrap(),
            r#"{"code":"SUCCESS","message":"成功"}"#
        );
    }
}
