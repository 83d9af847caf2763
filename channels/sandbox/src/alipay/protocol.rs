//! The Alipay open API gateway seen from the platform: verify an app's RSA2-signed gateway call,
//! answer with a signed `{"…_response":{…},"sign":"…"}` body, sign async notifications, and
//! convert yuan decimal strings.
//!
//! Signing content is always "sorted, non-empty, decoded `k=v` joined by `&`"; what differs is
//! the excluded keys: requests exclude `sign` only, notifications exclude `sign` and `sign_type`.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, FixedOffset, NaiveDateTime, Utc};
use rsa::{RsaPrivateKey, RsaPublicKey};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::form::{self, FormError, Params};
use crate::keys::{self, KeyError, Keyring};

/// The only `sign_type` the sandbox accepts and emits (SHA256withRSA).
pub const SIGN_TYPE_RSA2: &str = "RSA2";

/// `timestamp`, `notify_time`, `gmt_*`: `yyyy-MM-dd HH:mm:ss`, Beijing time.
pub const TIMESTAMP_FORMAT: &str = "%Y-%m-%d %H:%M:%S";

/// Keys left out of a request's signing content.
const REQUEST_UNSIGNED: &[&str] = &["sign"];
/// Keys left out of a notification's signing content.
const NOTIFY_UNSIGNED: &[&str] = &["sign", "sign_type"];

/// Failures of the platform's own operations.
#[derive(Debug, thiserror::Error)]
pub enum AlipayProtocolError {
    /// RSA signing failed.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A response node was not a JSON object, or could not be serialised.
    #[error("response node is not a JSON object: {0}")]
    NodeNotObject(String),
    /// The method name cannot become a node name (only `[a-z0-9.]` is allowed).
    #[error("method {0:?} cannot name a response node")]
    BadMethod(String),
    /// A synchronous response body could not be taken apart (test-side verification).
    #[error("malformed response body: {0}")]
    MalformedResponse(String),
    /// A signature did not verify (test-side verification).
    #[error("signature does not verify")]
    SignatureMismatch,
}

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
    /// codes; they are not in the shared protocol notes.
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

/// `k=v&…` over `params` sorted by key, leaving out `excluded` keys and empty values. Values
/// are used decoded, exactly as received.
pub fn signing_content(params: &Params, excluded: &[&str]) -> String {
    params
        .iter()
        .filter(|(k, v)| !v.is_empty() && !excluded.contains(&k.as_str()))
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
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

/// Parses `yyyy-MM-dd HH:mm:ss`.
pub fn parse_timestamp(text: &str) -> Option<NaiveDateTime> {
    NaiveDateTime::parse_from_str(text, TIMESTAMP_FORMAT).ok()
}

/// Renders an instant as Alipay does: Beijing wall-clock time, `yyyy-MM-dd HH:mm:ss`.
pub fn format_timestamp(instant: DateTime<Utc>) -> String {
    let beijing = FixedOffset::east_opt(8 * 3600).map(|tz| instant.with_timezone(&tz));
    match beijing {
        Some(local) => local.format(TIMESTAMP_FORMAT).to_string(),
        None => instant.format(TIMESTAMP_FORMAT).to_string(),
    }
}

/// `alipay.trade.query` → `alipay_trade_query_response`.
///
/// # Errors
/// [`AlipayProtocolError::BadMethod`] for characters outside `[a-z0-9.]`.
pub fn response_node_name(method: &str) -> Result<String, AlipayProtocolError> {
    let valid = !method.is_empty()
        && method
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.');
    if !valid {
        return Err(AlipayProtocolError::BadMethod(method.to_owned()));
    }
    Ok(format!("{}_response", method.replace('.', "_")))
}

/// The node name Alipay uses when the gateway itself rejects a call.
pub const ERROR_NODE: &str = "error_response";

/// The platform's signing identity: Alipay's private key, and in certificate mode the
/// `alipay_cert_sn` of the matching certificate.
pub struct AlipaySigner {
    key: RsaPrivateKey,
    cert_sn: Option<String>,
}

impl std::fmt::Debug for AlipaySigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlipaySigner")
            .field("cert_sn", &self.cert_sn)
            .finish_non_exhaustive()
    }
}

impl AlipaySigner {
    /// A public-key-mode signer (no `alipay_cert_sn`).
    pub fn new(key: RsaPrivateKey) -> Self {
        Self { key, cert_sn: None }
    }

    /// A certificate-mode signer that adds `alipay_cert_sn` to responses.
    pub fn with_cert_sn(key: RsaPrivateKey, cert_sn: impl Into<String>) -> Self {
        Self {
            key,
            cert_sn: Some(cert_sn.into()),
        }
    }

    /// Base64 SHA256withRSA over `content`.
    ///
    /// # Errors
    /// [`AlipayProtocolError::Key`].
    pub fn sign(&self, content: &[u8]) -> Result<String, AlipayProtocolError> {
        Ok(BASE64.encode(keys::sign_sha256_rsa(&self.key, content)?))
    }

    /// Serialises `node` once, signs exactly that text, and embeds the same text in the body.
    ///
    /// # Errors
    /// [`AlipayProtocolError::NodeNotObject`] unless `node` serialises to a JSON object.
    pub fn sign_response<T: Serialize>(
        &self,
        node_name: &str,
        node: &T,
    ) -> Result<String, AlipayProtocolError> {
        let text = serde_json::to_string(node)
            .map_err(|e| AlipayProtocolError::NodeNotObject(e.to_string()))?;
        self.sign_raw_response(node_name, &text)
    }

    /// Like [`AlipaySigner::sign_response`] for node text that is already serialised; the text
    /// is signed and embedded byte for byte.
    ///
    /// # Errors
    /// [`AlipayProtocolError::NodeNotObject`] unless `node_json` is one JSON object.
    pub fn sign_raw_response(
        &self,
        node_name: &str,
        node_json: &str,
    ) -> Result<String, AlipayProtocolError> {
        let is_object = matches!(
            serde_json::from_str::<serde_json::Value>(node_json),
            Ok(serde_json::Value::Object(_))
        );
        if !is_object || node_json.trim() != node_json {
            return Err(AlipayProtocolError::NodeNotObject(node_json.to_owned()));
        }
        let sign = self.sign(node_json.as_bytes())?;
        let name = serde_json::Value::String(node_name.to_owned());
        let mut body = format!("{{{name}:{node_json}");
        if let Some(sn) = &self.cert_sn {
            body.push_str(&format!(
                ",\"alipay_cert_sn\":{}",
                serde_json::Value::String(sn.clone())
            ));
        }
        body.push_str(&format!(",\"sign\":\"{sign}\"}}"));
        Ok(body)
    }

    /// Like [`AlipaySigner::sign_response`], but the node is signed with plain `/` and embedded
    /// with every `/` escaped as `\/` (legal JSON, and what the official SDKs' second
    /// verification try, "针对JSON \/问题", exists for). **ASSUMPTION**: the notes do not say which
    /// answers Alipay escapes; the sandbox does it for every precreate answer (its `qr_code` is a
    /// URL), so that merchants are made to cope.
    ///
    /// # Errors
    /// As [`AlipaySigner::sign_raw_response`].
    pub fn sign_response_escaping_slashes<T: Serialize>(
        &self,
        node_name: &str,
        node: &T,
    ) -> Result<String, AlipayProtocolError> {
        let text = serde_json::to_string(node)
            .map_err(|e| AlipayProtocolError::NodeNotObject(e.to_string()))?;
        let signed = self.sign_raw_response(node_name, &text)?;
        let escaped = text.replace('/', "\\/");
        Ok(signed.replacen(&text, &escaped, 1))
    }

    /// The signed `error_response` body for a rejected call.
    ///
    /// # Errors
    /// [`AlipayProtocolError::Key`].
    pub fn sign_rejection(
        &self,
        rejection: &GatewayRejection,
    ) -> Result<String, AlipayProtocolError> {
        self.sign_response(ERROR_NODE, &rejection.to_node())
    }

    /// Signs notification parameters: sets `sign_type=RSA2`, then signs the sorted non-empty
    /// parameters other than `sign` and `sign_type`, and sets `sign`.
    ///
    /// # Errors
    /// [`AlipayProtocolError::Key`].
    pub fn sign_notify(&self, mut params: Params) -> Result<Params, AlipayProtocolError> {
        params.remove("sign");
        let sign = self.sign(signing_content(&params, NOTIFY_UNSIGNED).as_bytes())?;
        params.insert("sign_type".to_owned(), SIGN_TYPE_RSA2.to_owned());
        params.insert("sign".to_owned(), sign);
        Ok(params)
    }
}

/// The form body of a notification POST.
pub fn encode_notify_body(params: &Params) -> String {
    form::encode(params.iter().map(|(k, v)| (k.as_str(), v.as_str())))
}

/// What the merchant does with a synchronous response: find the raw `…_response` node text and
/// check `sign` over it. Returns the node name and text. The sandbox uses it to test itself.
///
/// # Errors
/// [`AlipayProtocolError::MalformedResponse`] or [`AlipayProtocolError::SignatureMismatch`].
pub fn verify_response_body(
    platform_key: &RsaPublicKey,
    body: &str,
) -> Result<(String, String), AlipayProtocolError> {
    let fields: BTreeMap<String, &RawValue> = serde_json::from_str(body)
        .map_err(|e| AlipayProtocolError::MalformedResponse(e.to_string()))?;
    let (name, node) = fields
        .iter()
        .find(|(k, _)| k.ends_with("_response"))
        .ok_or_else(|| AlipayProtocolError::MalformedResponse("no *_response node".into()))?;
    let sign: String = fields
        .get("sign")
        .map(|raw| serde_json::from_str(raw.get()))
        .transpose()
        .map_err(|e| AlipayProtocolError::MalformedResponse(e.to_string()))?
        .ok_or_else(|| AlipayProtocolError::MalformedResponse("no sign".into()))?;
    let signature = BASE64
        .decode(sign)
        .map_err(|_| AlipayProtocolError::SignatureMismatch)?;
    // As the official SDKs do: the node as sent, then with `\/` read as `/`.
    let text = node.get();
    let verifies = keys::verify_sha256_rsa(platform_key, text.as_bytes(), &signature)
        || (text.contains("\\/")
            && keys::verify_sha256_rsa(
                platform_key,
                text.replace("\\/", "/").as_bytes(),
                &signature,
            ));
    if !verifies {
        return Err(AlipayProtocolError::SignatureMismatch);
    }
    Ok((name.clone(), text.to_owned()))
}

/// What the merchant does with a notification (or return-URL) parameter set.
///
/// # Errors
/// [`AlipayProtocolError::MalformedResponse`] without `sign`; [`AlipayProtocolError::SignatureMismatch`].
pub fn verify_notify(
    platform_key: &RsaPublicKey,
    params: &Params,
) -> Result<(), AlipayProtocolError> {
    let sign = params
        .get("sign")
        .ok_or_else(|| AlipayProtocolError::MalformedResponse("no sign".into()))?;
    let signature = BASE64
        .decode(sign)
        .map_err(|_| AlipayProtocolError::SignatureMismatch)?;
    let content = signing_content(params, NOTIFY_UNSIGNED);
    if keys::verify_sha256_rsa(platform_key, content.as_bytes(), &signature) {
        Ok(())
    } else {
        Err(AlipayProtocolError::SignatureMismatch)
    }
}

/// Why a yuan string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AmountError {
    /// Not `digits[.d[d]]` with no sign, no exponent and no superfluous leading zero.
    #[error("{0:?} is not a yuan amount with at most two decimals")]
    Syntax(String),
    /// Too large to count in fen.
    #[error("{0:?} overflows")]
    Overflow(String),
    /// Outside Alipay's trade range [0.01, 100000000].
    #[error("{0} fen is outside [0.01, 100000000] yuan")]
    OutOfRange(u64),
}

/// Largest trade amount Alipay accepts, in fen (100000000 yuan).
pub const MAX_TRADE_FEN: u64 = 10_000_000_000;

/// `12345` fen → `"123.45"`; always two decimals, as Alipay writes amounts.
pub fn format_yuan(fen: u64) -> String {
    format!("{}.{:02}", fen / 100, fen % 100)
}

/// `"123.45"` / `"123.4"` / `"123"` → fen. No sign, exponent, spaces, or leading zeros
/// (`"0.5"` is fine, `"01"` is not); at most two decimals, never rounded.
///
/// # Errors
/// [`AmountError::Syntax`] or [`AmountError::Overflow`].
pub fn parse_yuan(text: &str) -> Result<u64, AmountError> {
    let syntax = || AmountError::Syntax(text.to_owned());
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let whole_ok = !whole.is_empty() && digits(whole) && (whole == "0" || !whole.starts_with('0'));
    let fraction_ok =
        digits(fraction) && fraction.len() <= 2 && (!fraction.is_empty() || !text.contains('.'));
    if !whole_ok || !fraction_ok {
        return Err(syntax());
    }
    let cents: u64 = match fraction.len() {
        0 => 0,
        1 => u64::from(fraction.as_bytes()[0] - b'0') * 10,
        _ => fraction.parse().map_err(|_| syntax())?,
    };
    whole
        .parse::<u64>()
        .ok()
        .and_then(|w| w.checked_mul(100))
        .and_then(|w| w.checked_add(cents))
        .ok_or_else(|| AmountError::Overflow(text.to_owned()))
}

/// [`parse_yuan`] plus Alipay's trade range [0.01, 100000000] yuan.
///
/// # Errors
/// As [`parse_yuan`], and [`AmountError::OutOfRange`].
pub fn parse_trade_amount(text: &str) -> Result<u64, AmountError> {
    let fen = parse_yuan(text)?;
    if fen == 0 || fen > MAX_TRADE_FEN {
        return Err(AmountError::OutOfRange(fen));
    }
    Ok(fen)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn call_params(app_id: &str) -> Params {
        let mut p = Params::new();
        for (k, v) in [
            ("app_id", app_id),
            ("method", "alipay.trade.precreate"),
            ("format", "JSON"),
            ("charset", "utf-8"),
            ("sign_type", "RSA2"),
            ("timestamp", "2024-01-01 12:00:00"),
            ("version", "1.0"),
            ("notify_url", "https://merchant.example/notify"),
            ("app_auth_token", ""),
            (
                "biz_content",
                r#"{"out_trade_no":"T1","total_amount":"88.88","subject":"测试+商品 & more"}"#,
            ),
        ] {
            p.insert(k.into(), v.into());
        }
        p
    }

    fn signed_body(key: &RsaPrivateKey, mut params: Params) -> String {
        let content = signing_content(&params, REQUEST_UNSIGNED);
        let sign = BASE64.encode(keys::sign_sha256_rsa(key, content.as_bytes()).unwrap());
        params.insert("sign".into(), sign);
        encode_notify_body(&params)
    }

    #[test]
    fn a_freshly_signed_call_verifies_and_exposes_biz_content() {
        let key = keys::generate_rsa_2048().unwrap();
        let mut apps = AppKeys::new();
        apps.register("2021000000000001", key.to_public_key());
        let body = signed_body(&key, call_params("2021000000000001"));
        let call = apps.verify(&GatewayRequest::parse(&body).unwrap()).unwrap();
        assert_eq!(call.method, "alipay.trade.precreate");
        assert_eq!(call.biz_content["total_amount"], "88.88");
        assert_eq!(call.timestamp.to_string(), "2024-01-01 12:00:00");
    }

    #[test]
    fn tampering_a_wrong_key_an_unknown_app_or_a_dropped_sign_type_is_refused() {
        let key = keys::generate_rsa_2048().unwrap();
        let other = keys::generate_rsa_2048().unwrap();
        let mut apps = AppKeys::new();
        apps.register("2021000000000001", key.to_public_key());

        let body = signed_body(&key, call_params("2021000000000001"));
        let mut tampered = GatewayRequest::parse(&body).unwrap().params().clone();
        tampered.insert("notify_url".into(), "https://attacker.example/".into());
        assert_eq!(
            apps.verify(&GatewayRequest::from_params(tampered)),
            Err(GatewayRejection::SignatureMismatch)
        );

        let wrong_key = signed_body(&other, call_params("2021000000000001"));
        assert_eq!(
            apps.verify(&GatewayRequest::parse(&wrong_key).unwrap()),
            Err(GatewayRejection::SignatureMismatch)
        );

        let unknown = signed_body(&key, call_params("2021000000000002"));
        assert_eq!(
            apps.verify(&GatewayRequest::parse(&unknown).unwrap()),
            Err(GatewayRejection::UnknownApp("2021000000000002".into()))
        );

        // sign_type is part of a request's signed content: signing without it must fail.
        let mut without = call_params("2021000000000001");
        without.remove("sign_type");
        let content = signing_content(&without, REQUEST_UNSIGNED);
        let mut params = call_params("2021000000000001");
        params.insert(
            "sign".into(),
            BASE64.encode(keys::sign_sha256_rsa(&key, content.as_bytes()).unwrap()),
        );
        assert_eq!(
            apps.verify(&GatewayRequest::from_params(params)),
            Err(GatewayRejection::SignatureMismatch)
        );
    }

    #[test]
    fn missing_or_bad_common_parameters_are_refused_before_the_signature() {
        let apps = AppKeys::new();
        let mut p = call_params("1");
        p.insert("sign".into(), "AAAA".into());
        let check = |edit: &dyn Fn(&mut Params), expected: GatewayRejection| {
            let mut params = p.clone();
            edit(&mut params);
            assert_eq!(
                apps.verify(&GatewayRequest::from_params(params)),
                Err(expected)
            );
        };
        check(
            &|p| {
                p.remove("sign");
            },
            GatewayRejection::Missing("sign"),
        );
        check(
            &|p| {
                p.insert("method".into(), String::new());
            },
            GatewayRejection::Missing("method"),
        );
        check(
            &|p| {
                p.insert("sign_type".into(), "RSA".into());
            },
            GatewayRejection::UnsupportedSignType("RSA".into()),
        );
        check(
            &|p| {
                p.insert("timestamp".into(), "2024-01-01T12:00:00".into());
            },
            GatewayRejection::BadTimestamp("2024-01-01T12:00:00".into()),
        );
        check(
            &|p| {
                p.insert("biz_content".into(), "[1]".into());
            },
            GatewayRejection::BadBizContent,
        );
        assert!(matches!(
            GatewayRequest::parse("a=%zz"),
            Err(GatewayRejection::Form(_))
        ));
        assert_eq!(
            GatewayRejection::SignatureMismatch
                .to_node()
                .sub_code
                .as_deref(),
            Some("isv.invalid-signature")
        );
        assert_eq!(GatewayRejection::Missing("app_id").to_node().code, "40001");
    }

    #[test]
    fn a_signed_response_embeds_exactly_the_signed_node_text() {
        let key = keys::generate_rsa_2048().unwrap();
        let signer = AlipaySigner::with_cert_sn(key.clone(), "6f1e366a31d9575cd546914add04f4af");
        #[derive(Serialize)]
        struct Node<'a> {
            code: &'a str,
            msg: &'a str,
            out_trade_no: &'a str,
            qr_code: &'a str,
        }
        let node = Node {
            code: "10000",
            msg: "Success",
            out_trade_no: "T1",
            qr_code: "https://qr.alipay.com/bax0",
        };
        let name = response_node_name("alipay.trade.precreate").unwrap();
        let body = signer.sign_response(&name, &node).unwrap();
        assert!(body.starts_with(
            r#"{"alipay_trade_precreate_response":{"code":"10000","msg":"Success","out_trade_no":"T1","qr_code":"https://qr.alipay.com/bax0"},"alipay_cert_sn":"6f1e366a31d9575cd546914add04f4af","sign":""#
        ));
        let (found, text) = verify_response_body(&key.to_public_key(), &body).unwrap();
        assert_eq!(found, "alipay_trade_precreate_response");
        assert_eq!(text, serde_json::to_string(&node).unwrap());

        let tampered = body.replace("T1", "T2");
        assert!(matches!(
            verify_response_body(&key.to_public_key(), &tampered),
            Err(AlipayProtocolError::SignatureMismatch)
        ));
        let rejection = signer
            .sign_rejection(&GatewayRejection::SignatureMismatch)
            .unwrap();
        let (found, _) = verify_response_body(&key.to_public_key(), &rejection).unwrap();
        assert_eq!(found, ERROR_NODE);
        assert!(matches!(
            signer.sign_raw_response(&name, "[1]"),
            Err(AlipayProtocolError::NodeNotObject(_))
        ));
        assert!(matches!(
            response_node_name("Alipay.Trade"),
            Err(AlipayProtocolError::BadMethod(_))
        ));
    }

    #[test]
    fn a_signed_notification_verifies_after_form_encoding_and_excludes_sign_type() {
        let key = keys::generate_rsa_2048().unwrap();
        let signer = AlipaySigner::new(key.clone());
        let mut params = Params::new();
        params.insert("subject".into(), "yansongda+测试 - 1".into());
        params.insert("trade_status".into(), "TRADE_SUCCESS".into());
        params.insert("passback_params".into(), String::new());
        let signed = signer.sign_notify(params).unwrap();
        assert_eq!(signed["sign_type"], "RSA2");
        let received = form::decode(&encode_notify_body(&signed)).unwrap();
        assert_eq!(received, signed);
        verify_notify(&key.to_public_key(), &received).unwrap();

        let mut changed = received.clone();
        changed.insert("sign_type".into(), "RSA".into());
        verify_notify(&key.to_public_key(), &changed).unwrap();
        changed.insert("trade_status".into(), "TRADE_FINISHED".into());
        assert!(verify_notify(&key.to_public_key(), &changed).is_err());
    }

    #[test]
    fn yuan_strings_convert_exactly() {
        assert_eq!(format_yuan(1), "0.01");
        assert_eq!(format_yuan(8888), "88.88");
        assert_eq!(format_yuan(10_000_000_000), "100000000.00");
        assert_eq!(parse_yuan("0.01"), Ok(1));
        assert_eq!(parse_yuan("88.8"), Ok(8880));
        assert_eq!(parse_yuan("100"), Ok(10_000));
        assert_eq!(parse_yuan("0"), Ok(0));
        for bad in [
            "", ".5", "1.", "01", "-1", "+1", "1.234", "1e2", " 1", "1,00", "0x10", "1.-1",
        ] {
            assert_eq!(
                parse_yuan(bad),
                Err(AmountError::Syntax(bad.into())),
                "{bad}"
            );
        }
        assert!(matches!(
            parse_yuan("999999999999999999999"),
            Err(AmountError::Overflow(_))
        ));
        assert_eq!(parse_trade_amount("0.00"), Err(AmountError::OutOfRange(0)));
        assert_eq!(
            parse_trade_amount("100000000.01"),
            Err(AmountError::OutOfRange(10_000_000_001))
        );
        assert_eq!(parse_trade_amount("100000000"), Ok(MAX_TRADE_FEN));
        for fen in [0, 1, 9, 10, 99, 100, 101, 123_456] {
            assert_eq!(parse_yuan(&format_yuan(fen)), Ok(fen));
        }
    }

    #[test]
    fn timestamps_are_rendered_in_beijing_time() {
        let instant = DateTime::parse_from_rfc3339("2023-12-21T06:54:37Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(format_timestamp(instant), "2023-12-21 14:54:37");
        assert!(parse_timestamp("2023-12-21 14:54:37").is_some());
        assert!(parse_timestamp("2023-12-21").is_none());
    }
}
