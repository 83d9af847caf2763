//! The UnionPay online gateway 5.1.0 seen from the platform: verify a merchant's `signMethod=01`
//! request against the certificate named by `certId`, sign responses and notifications with the
//! platform key plus its `signPubKeyCert`, and the `respCode` values.
//!
//! 5.1.0 signs *twice over*: the sorted `k=v&…` string is hashed to lower-case SHA-256 hex, and
//! the RSA signature (itself SHA256withRSA) is taken over those 64 ASCII characters.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rsa::{RsaPrivateKey, RsaPublicKey};
use sha2::{Digest, Sha256};

use crate::form::{self, FormError, Params};
use crate::keys::{self, CertificateInfo, KeyError, Keyring};

/// The protocol version the sandbox speaks.
pub const VERSION: &str = "5.1.0";
/// `signMethod` for RSA certificates.
pub const SIGN_METHOD_RSA: &str = "01";
/// The third `@`-separated element of a genuine UnionPay signing certificate's CN.
pub const UNIONPAY_CN_NAME: &str = "中国银联股份有限公司";

/// The field that carries the signature and is never signed.
const SIGNATURE_FIELD: &str = "signature";

/// `k=v&…` over all fields but `signature`, empty values dropped, sorted by key, values raw.
pub fn signing_string(fields: &Params) -> String {
    fields
        .iter()
        .filter(|(k, v)| k.as_str() != SIGNATURE_FIELD && !v.is_empty())
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// Lower-case hex SHA-256 of [`signing_string`]: the 64 bytes that actually get RSA-signed.
pub fn signing_digest(fields: &Params) -> String {
    hex::encode(Sha256::digest(signing_string(fields).as_bytes()))
}

/// What the platform signs on its own answers and notifications: `k=v&…` over **every** field
/// but `signature`, empty values kept (`k=`). The official SDK verifies answers over all fields
/// (its `coverMap2String` in `validate` drops nothing); only merchant requests drop blanks
/// before signing.
pub fn platform_signing_string(fields: &Params) -> String {
    fields
        .iter()
        .filter(|(k, _)| k.as_str() != SIGNATURE_FIELD)
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// Lower-case hex SHA-256 of [`platform_signing_string`].
pub fn platform_signing_digest(fields: &Params) -> String {
    hex::encode(Sha256::digest(platform_signing_string(fields).as_bytes()))
}

/// `respCode` values. `00`, `03`, `04`, `05`, `34`, `98` and `A6` are in the shared protocol
/// notes; `01`, `10`, `11`, `13` follow the public ACP specification appendix, which the notes
/// could not cite.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RespCode {
    /// `00`: success (sync: accepted).
    Success,
    /// `01`: transaction failed.
    Failed,
    /// `03`: communication timeout, status unknown.
    Timeout,
    /// `04`: status unknown.
    StatusUnknown,
    /// `05`: accepted, processing.
    Accepted,
    /// `10`: message format error.
    FormatError,
    /// `11`: signature verification failed.
    SignatureInvalid,
    /// `12`: duplicate transaction.
    Duplicate,
    /// `13`: required element missing.
    MissingElement,
    /// `34`: no such transaction.
    NoSuchTransaction,
    /// `98`: file not present.
    FileNotFound,
    /// `A6`: success with defects (counts as success in notifications).
    PartialSuccess,
}

impl RespCode {
    /// The two-character wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "00",
            Self::Failed => "01",
            Self::Timeout => "03",
            Self::StatusUnknown => "04",
            Self::Accepted => "05",
            Self::FormatError => "10",
            Self::SignatureInvalid => "11",
            Self::Duplicate => "12",
            Self::MissingElement => "13",
            Self::NoSuchTransaction => "34",
            Self::FileNotFound => "98",
            Self::PartialSuccess => "A6",
        }
    }

    /// The code for a wire value, if the sandbox knows it.
    pub fn parse(code: &str) -> Option<Self> {
        [
            Self::Success,
            Self::Failed,
            Self::Timeout,
            Self::StatusUnknown,
            Self::Accepted,
            Self::FormatError,
            Self::SignatureInvalid,
            Self::Duplicate,
            Self::MissingElement,
            Self::NoSuchTransaction,
            Self::FileNotFound,
            Self::PartialSuccess,
        ]
        .into_iter()
        .find(|c| c.as_str() == code)
    }

    /// A `respMsg` in UnionPay's style.
    pub fn message(self) -> &'static str {
        match self {
            Self::Success => "成功[0000000]",
            Self::Failed => "交易失败",
            Self::Timeout => "交易通讯超时",
            Self::StatusUnknown => "交易状态未明",
            Self::Accepted => "交易已受理",
            Self::FormatError => "报文格式错误",
            Self::SignatureInvalid => "验证签名失败",
            Self::Duplicate => "重复交易",
            Self::MissingElement => "报文交易要素缺失",
            Self::NoSuchTransaction => "查无此交易",
            Self::FileNotFound => "文件不存在",
            Self::PartialSuccess => "有缺陷的成功",
        }
    }

    /// `03`/`04`/`05`: the merchant must query again.
    pub fn is_pending(self) -> bool {
        matches!(self, Self::Timeout | Self::StatusUnknown | Self::Accepted)
    }
}

/// Why a merchant request was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestRejection {
    /// The form body could not be decoded.
    #[error("undecodable form: {0}")]
    Form(#[from] FormError),
    /// A required field is absent or empty.
    #[error("missing field {0}")]
    Missing(&'static str),
    /// `version` is not `5.1.0`.
    #[error("unsupported version {0:?}")]
    UnsupportedVersion(String),
    /// `signMethod` is not `01`.
    #[error("unsupported signMethod {0:?}")]
    UnsupportedSignMethod(String),
    /// No certificate registered under `certId`.
    #[error("unknown certId {0}")]
    UnknownCertId(String),
    /// The `certId` is registered to another merchant.
    #[error("certId {cert_id} does not belong to merId {mer_id}")]
    CertIdNotOwned {
        /// The certId in the request.
        cert_id: String,
        /// The merId in the request.
        mer_id: String,
    },
    /// `signature` is not Base64.
    #[error("signature is not Base64")]
    BadSignatureEncoding,
    /// `signature` does not verify.
    #[error("signature does not verify")]
    SignatureMismatch,
}

impl RequestRejection {
    /// The `respCode` the gateway answers with.
    pub fn resp_code(&self) -> RespCode {
        match self {
            Self::Form(_) | Self::UnsupportedVersion(_) | Self::UnsupportedSignMethod(_) => {
                RespCode::FormatError
            }
            Self::Missing(_) => RespCode::MissingElement,
            Self::UnknownCertId(_)
            | Self::CertIdNotOwned { .. }
            | Self::BadSignatureEncoding
            | Self::SignatureMismatch => RespCode::SignatureInvalid,
        }
    }
}

/// Failures of the platform's own operations, and of the merchant-side checks the sandbox
/// runs on its own output.
#[derive(Debug, thiserror::Error)]
pub enum UnionpayProtocolError {
    /// RSA signing or certificate parsing failed.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The signing key does not match the certificate it would publish.
    #[error("the private key does not match the certificate")]
    KeyCertificateMismatch,
    /// A message lacks `signPubKeyCert` or `signature`.
    #[error("missing field {0}")]
    Missing(&'static str),
    /// The certificate's CN is not `…@中国银联股份有限公司@…`.
    #[error("certificate CN {0:?} is not a UnionPay signing certificate")]
    NotUnionPayCertificate(String),
    /// The certificate is outside its validity window.
    #[error("certificate is not valid at {0}")]
    CertificateExpired(u64),
    /// A signature does not verify.
    #[error("signature does not verify")]
    SignatureMismatch,
    /// A value would break the unencoded `k=v&…` response syntax.
    #[error("field {0} cannot be carried unencoded")]
    UnencodableValue(String),
}

/// A request whose signature checked out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedRequest {
    /// The merchant.
    pub mer_id: String,
    /// The certificate that signed.
    pub cert_id: String,
}

/// Registered merchant signing certificates: `certId` (decimal serial) → (merId, key).
#[derive(Clone, Debug, Default)]
pub struct MerchantCerts {
    keyring: Keyring,
}

impl MerchantCerts {
    /// No merchants registered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the key of certificate `cert_id` for merchant `mer_id`.
    pub fn register(&mut self, mer_id: &str, cert_id: &str, public_key: RsaPublicKey) {
        self.keyring.register(cert_id, mer_id, public_key);
    }

    /// Registers a merchant certificate, taking `certId` from its serial.
    pub fn register_certificate(&mut self, mer_id: &str, certificate: &CertificateInfo) {
        self.register(
            mer_id,
            &certificate.serial_decimal(),
            certificate.public_key().clone(),
        );
    }

    /// Decodes a form body and verifies it.
    ///
    /// # Errors
    /// As [`MerchantCerts::verify`], plus [`RequestRejection::Form`].
    pub fn verify_form(&self, body: &str) -> Result<(Params, VerifiedRequest), RequestRejection> {
        let fields = form::decode(body)?;
        let verified = self.verify(&fields)?;
        Ok((fields, verified))
    }

    /// Checks `version=5.1.0`, `signMethod=01`, the `certId` → key lookup and its owner `merId`,
    /// then the signature over the SHA-256 hex of the sorted fields.
    ///
    /// # Errors
    /// The first [`RequestRejection`] found, in that order.
    pub fn verify(&self, fields: &Params) -> Result<VerifiedRequest, RequestRejection> {
        let field = |name: &'static str| {
            fields
                .get(name)
                .map(String::as_str)
                .filter(|v| !v.is_empty())
                .ok_or(RequestRejection::Missing(name))
        };
        let version = field("version")?;
        if version != VERSION {
            return Err(RequestRejection::UnsupportedVersion(version.to_owned()));
        }
        let sign_method = field("signMethod")?;
        if sign_method != SIGN_METHOD_RSA {
            return Err(RequestRejection::UnsupportedSignMethod(
                sign_method.to_owned(),
            ));
        }
        let mer_id = field("merId")?;
        let cert_id = field("certId")?;
        let signature = field(SIGNATURE_FIELD)?;
        let entry = self
            .keyring
            .find(cert_id)
            .ok_or_else(|| RequestRejection::UnknownCertId(cert_id.to_owned()))?;
        if entry.owner != mer_id {
            return Err(RequestRejection::CertIdNotOwned {
                cert_id: cert_id.to_owned(),
                mer_id: mer_id.to_owned(),
            });
        }
        let signature = BASE64
            .decode(signature)
            .map_err(|_| RequestRejection::BadSignatureEncoding)?;
        if !keys::verify_sha256_rsa(
            &entry.public_key,
            signing_digest(fields).as_bytes(),
            &signature,
        ) {
            return Err(RequestRejection::SignatureMismatch);
        }
        Ok(VerifiedRequest {
            mer_id: mer_id.to_owned(),
            cert_id: cert_id.to_owned(),
        })
    }
}

/// Re-joins PEM lines with CRLF and no break after the END line, the form in which UnionPay
/// sends `signPubKeyCert`.
pub fn normalise_pem(pem: &str) -> String {
    pem.lines()
        .map(str::trim_end)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("\r\n")
}

/// The platform's signing identity: private key plus the certificate published with every
/// 5.1.0 message in `signPubKeyCert`.
pub struct PlatformSigner {
    key: keys::SigningKey,
    certificate: CertificateInfo,
    sign_pub_key_cert: String,
}

impl std::fmt::Debug for PlatformSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlatformSigner")
            .field("cert_id", &self.certificate.serial_decimal())
            .finish_non_exhaustive()
    }
}

impl PlatformSigner {
    /// Pairs `key` with its certificate.
    ///
    /// # Errors
    /// [`UnionpayProtocolError::KeyCertificateMismatch`] if the certificate is for another key.
    pub fn new(
        key: RsaPrivateKey,
        certificate: CertificateInfo,
    ) -> Result<Self, UnionpayProtocolError> {
        if certificate.public_key() != &key.to_public_key() {
            return Err(UnionpayProtocolError::KeyCertificateMismatch);
        }
        let sign_pub_key_cert = normalise_pem(certificate.pem());
        Ok(Self {
            key: keys::SigningKey::new(&key)?,
            certificate,
            sign_pub_key_cert,
        })
    }

    /// The published certificate.
    pub fn certificate(&self) -> &CertificateInfo {
        &self.certificate
    }

    /// Signs a response or notification: sets `signMethod=01` and `signPubKeyCert` (both are
    /// signed), drops any `certId` (a 5.0.0 field) and old `signature`, then adds `signature`.
    ///
    /// # Errors
    /// [`UnionpayProtocolError::Key`] if RSA signing fails.
    pub fn sign(&self, mut fields: Params) -> Result<Params, UnionpayProtocolError> {
        fields.remove(SIGNATURE_FIELD);
        fields.remove("certId");
        fields.insert("signMethod".to_owned(), SIGN_METHOD_RSA.to_owned());
        fields.insert("signPubKeyCert".to_owned(), self.sign_pub_key_cert.clone());
        let signature = self
            .key
            .sign_sha256(platform_signing_digest(&fields).as_bytes())?;
        fields.insert(SIGNATURE_FIELD.to_owned(), BASE64.encode(signature));
        Ok(fields)
    }
}

/// What a merchant does with a response or notification: verify `signature` with the key in
/// `signPubKeyCert`, check the CN names UnionPay and, when `now` is given (Unix seconds), the
/// validity window. The chain to UnionPay's roots is not checked. Returns the certificate.
///
/// # Errors
/// [`UnionpayProtocolError`] describing the first failed check.
pub fn verify_platform_message(
    fields: &Params,
    now: Option<u64>,
) -> Result<CertificateInfo, UnionpayProtocolError> {
    let pem = fields
        .get("signPubKeyCert")
        .ok_or(UnionpayProtocolError::Missing("signPubKeyCert"))?;
    let signature = fields
        .get(SIGNATURE_FIELD)
        .ok_or(UnionpayProtocolError::Missing(SIGNATURE_FIELD))?;
    let certificate = CertificateInfo::from_pem(pem)?;
    let cn = certificate.subject_common_name().unwrap_or_default();
    if cn.split('@').nth(2) != Some(UNIONPAY_CN_NAME) {
        return Err(UnionpayProtocolError::NotUnionPayCertificate(cn.to_owned()));
    }
    if let Some(now) = now
        && (now < certificate.not_before_unix() || now > certificate.not_after_unix())
    {
        return Err(UnionpayProtocolError::CertificateExpired(now));
    }
    let signature = BASE64
        .decode(signature)
        .map_err(|_| UnionpayProtocolError::SignatureMismatch)?;
    if !keys::verify_sha256_rsa(
        certificate.public_key(),
        platform_signing_digest(fields).as_bytes(),
        &signature,
    ) {
        return Err(UnionpayProtocolError::SignatureMismatch);
    }
    Ok(certificate)
}

/// The synchronous response body: `k=v&…`, **not** URL-encoded. A value containing `&` must be
/// wrapped in `{…}` or `[…]` so the merchant's parser does not split inside it.
///
/// # Errors
/// [`UnionpayProtocolError::UnencodableValue`] when a key or value would not parse back unchanged.
pub fn encode_sync_response(fields: &Params) -> Result<String, UnionpayProtocolError> {
    let body = fields
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let reparsed = parse_sync_response(&body);
    if let Some((key, _)) = fields.iter().find(|(k, v)| reparsed.get(*k) != Some(v)) {
        return Err(UnionpayProtocolError::UnencodableValue(key.clone()));
    }
    if reparsed.len() != fields.len() {
        return Err(UnionpayProtocolError::UnencodableValue(String::new()));
    }
    Ok(body)
}

/// Parses a synchronous response body: pairs split on `&` outside `{…}`/`[…]`, key up to the
/// first `=`; brackets stay in the value. Later duplicates win.
pub fn parse_sync_response(body: &str) -> Params {
    let mut fields = Params::new();
    let mut depth = 0usize;
    let mut start = 0;
    let mut pairs = Vec::new();
    for (i, c) in body.char_indices() {
        match c {
            '{' | '[' => depth += 1,
            '}' | ']' => depth = depth.saturating_sub(1),
            '&' if depth == 0 => {
                pairs.push(&body[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    pairs.push(&body[start..]);
    for pair in pairs.into_iter().filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        fields.insert(key.to_owned(), value.to_owned());
    }
    fields
}

/// The URL-encoded form body of a background notification POST.
pub fn encode_notify_body(fields: &Params) -> String {
    form::encode(fields.iter().map(|(k, v)| (k.as_str(), v.as_str())))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    fn request_fields(cert_id: &str) -> Params {
        [
            ("version", VERSION),
            ("encoding", "utf-8"),
            ("signMethod", SIGN_METHOD_RSA),
            ("txnType", "04"),
            ("txnSubType", "00"),
            ("bizType", "000201"),
            ("accessType", "0"),
            ("channelType", "07"),
            ("merId", "777290058167151"),
            ("orderId", "R20240101120000"),
            ("origQryId", "512209110416475616528"),
            ("txnTime", "20240101120000"),
            ("txnAmt", "1"),
            ("backUrl", "https://merchant.example/unionpay/notify"),
            ("reqReserved", ""),
            ("certId", cert_id),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    fn sign_as_merchant(key: &RsaPrivateKey, mut fields: Params) -> Params {
        let signature = keys::sign_sha256_rsa(key, signing_digest(&fields).as_bytes()).unwrap();
        fields.insert("signature".into(), BASE64.encode(signature));
        fields
    }

    fn platform() -> (RsaPrivateKey, PlatformSigner) {
        let key = keys::generate_rsa_2048().unwrap();
        let cert = keys::issue_self_signed_certificate(
            &key,
            "041@8310000000083040@中国银联股份有限公司@00016495",
            69_678_957_876,
            UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            Duration::from_secs(365 * 86_400),
        )
        .unwrap();
        (key.clone(), PlatformSigner::new(key, cert).unwrap())
    }

    #[test]
    fn a_freshly_signed_request_verifies_through_the_form_body() {
        let key = keys::generate_rsa_2048().unwrap();
        let mut certs = MerchantCerts::new();
        certs.register("777290058167151", "69903319369", key.to_public_key());
        let fields = sign_as_merchant(&key, request_fields("69903319369"));
        let (decoded, verified) = certs.verify_form(&encode_notify_body(&fields)).unwrap();
        assert_eq!(decoded, fields);
        assert_eq!(verified.cert_id, "69903319369");
    }

    #[test]
    fn tampering_wrong_key_and_wrong_cert_id_are_refused_with_resp_code_11() {
        let key = keys::generate_rsa_2048().unwrap();
        let other = keys::generate_rsa_2048().unwrap();
        let mut certs = MerchantCerts::new();
        certs.register("777290058167151", "69903319369", key.to_public_key());
        certs.register("777290058100000", "1000", other.to_public_key());

        let mut tampered = sign_as_merchant(&key, request_fields("69903319369"));
        tampered.insert("txnAmt".into(), "100".into());
        let rejection = certs.verify(&tampered).unwrap_err();
        assert_eq!(rejection, RequestRejection::SignatureMismatch);
        assert_eq!(rejection.resp_code(), RespCode::SignatureInvalid);

        let wrong_key = sign_as_merchant(&other, request_fields("69903319369"));
        assert_eq!(
            certs.verify(&wrong_key),
            Err(RequestRejection::SignatureMismatch)
        );

        let unknown = sign_as_merchant(&key, request_fields("42"));
        assert_eq!(
            certs.verify(&unknown),
            Err(RequestRejection::UnknownCertId("42".into()))
        );

        let foreign = sign_as_merchant(&other, request_fields("1000"));
        assert!(matches!(
            certs.verify(&foreign),
            Err(RequestRejection::CertIdNotOwned { .. })
        ));

        let mut old = sign_as_merchant(&key, request_fields("69903319369"));
        old.insert("version".into(), "5.0.0".into());
        let rejection = certs.verify(&old).unwrap_err();
        assert_eq!(
            rejection,
            RequestRejection::UnsupportedVersion("5.0.0".into())
        );
        assert_eq!(rejection.resp_code(), RespCode::FormatError);

        let mut no_cert = sign_as_merchant(&key, request_fields("69903319369"));
        no_cert.remove("certId");
        assert_eq!(
            certs.verify(&no_cert),
            Err(RequestRejection::Missing("certId"))
        );
        let mut bad_sig = no_cert.clone();
        bad_sig.insert("certId".into(), "69903319369".into());
        bad_sig.insert("signature".into(), "@@".into());
        assert_eq!(
            certs.verify(&bad_sig),
            Err(RequestRejection::BadSignatureEncoding)
        );
    }

    #[test]
    fn platform_messages_carry_a_crlf_certificate_and_verify_as_a_merchant_would() {
        let (_, signer) = platform();
        let mut fields = request_fields("ignored");
        fields.insert("respCode".into(), RespCode::Success.as_str().into());
        fields.insert("respMsg".into(), RespCode::Success.message().into());
        let signed = signer.sign(fields).unwrap();
        assert!(!signed.contains_key("certId"));
        let cert = &signed["signPubKeyCert"];
        assert!(cert.contains("\r\n") && !cert.ends_with('\n'));
        let seen = verify_platform_message(&signed, Some(1_700_000_001)).unwrap();
        assert_eq!(seen.serial_decimal(), "69678957876");

        assert!(matches!(
            verify_platform_message(&signed, Some(1_600_000_000)),
            Err(UnionpayProtocolError::CertificateExpired(_))
        ));
        let mut tampered = signed.clone();
        tampered.insert("respCode".into(), "01".into());
        assert!(matches!(
            verify_platform_message(&tampered, None),
            Err(UnionpayProtocolError::SignatureMismatch)
        ));
        let mut lf = signed.clone();
        lf.insert("signPubKeyCert".into(), cert.replace("\r\n", "\n"));
        assert!(matches!(
            verify_platform_message(&lf, None),
            Err(UnionpayProtocolError::SignatureMismatch)
        ));
    }

    #[test]
    fn a_certificate_without_the_unionpay_cn_is_not_trusted_and_a_mismatched_key_is_refused() {
        let key = keys::generate_rsa_2048().unwrap();
        let cert = keys::issue_self_signed_certificate(
            &key,
            "041@Z2014-11-11@700000000000001:SIGN@00000003",
            1,
            UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            Duration::from_secs(86_400),
        )
        .unwrap();
        let signed = PlatformSigner::new(key, cert.clone())
            .unwrap()
            .sign(request_fields("1"))
            .unwrap();
        assert!(matches!(
            verify_platform_message(&signed, None),
            Err(UnionpayProtocolError::NotUnionPayCertificate(_))
        ));
        let other = keys::generate_rsa_2048().unwrap();
        assert!(matches!(
            PlatformSigner::new(other, cert),
            Err(UnionpayProtocolError::KeyCertificateMismatch)
        ));
    }

    #[test]
    fn sync_responses_round_trip_unencoded_with_bracketed_values() {
        let (_, signer) = platform();
        let mut fields = Params::new();
        fields.insert("respCode".into(), "00".into());
        fields.insert("reqReserved".into(), "{a=1&b=2}".into());
        let signed = signer.sign(fields).unwrap();
        let body = encode_sync_response(&signed).unwrap();
        assert!(body.contains("reqReserved={a=1&b=2}&"));
        assert_eq!(parse_sync_response(&body), signed);
        verify_platform_message(&parse_sync_response(&body), None).unwrap();

        let mut bad = Params::new();
        bad.insert("x".into(), "a&b=c".into());
        assert!(matches!(
            encode_sync_response(&bad),
            Err(UnionpayProtocolError::UnencodableValue(_))
        ));
    }

    #[test]
    fn resp_codes_round_trip_and_classify() {
        for code in [
            "00", "01", "03", "04", "05", "10", "11", "13", "34", "98", "A6",
        ] {
            assert_eq!(RespCode::parse(code).map(RespCode::as_str), Some(code));
        }
        assert_eq!(RespCode::parse("ZZ"), None);
        assert!(RespCode::Accepted.is_pending() && RespCode::Timeout.is_pending());
        assert!(!RespCode::Success.is_pending() && !RespCode::SignatureInvalid.is_pending());
    }
}
