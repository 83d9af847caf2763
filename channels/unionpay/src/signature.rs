//! UnionPay 5.1.0 `signMethod=01` signatures. The merchant signs with the key of its signing
//! certificate and names it by `certId` (the certificate serial in decimal); UnionPay signs answers
//! and notifications and ships its signing certificate in `signPubKeyCert`, so trust in that
//! certificate (issuer, subject name, validity) is checked here before its key is used.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use channel_kit::crypto::{RsaSigningKey, RsaVerifyingKey};
use chrono::{DateTime, Utc};
use rsa::pkcs8::DecodePublicKey;
use rsa::{BigUint, RsaPublicKey};
use sha2::{Digest, Sha256};
use x509_cert::Certificate;
use x509_cert::der::asn1::ObjectIdentifier;
use x509_cert::der::{DecodePem, Encode};

/// The protocol version this module signs and verifies.
pub const VERSION: &str = "5.1.0";
/// `signMethod` for RSA certificates.
pub const SIGN_METHOD_RSA: &str = "01";
/// Third `@`-separated element of the subject CN of every production UnionPay signing certificate.
pub const UNIONPAY_COMPANY_NAME: &str = "中国银联股份有限公司";
/// The test environment's signing certificates use this element instead.
pub const TEST_CN_ELEMENT: &str = "00040000:SIGN";

const CN_OID: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");
const SHA256_WITH_RSA_OID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
const SHA1_WITH_RSA_OID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.5");

/// A key or certificate could not be loaded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("merchant private key is not a PKCS#8 RSA key: {0}")]
    PrivateKey(String),
    #[error("certificate is not a PEM X.509 certificate with an RSA key: {0}")]
    Certificate(String),
}

/// A field map could not be signed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignError {
    /// Other versions hash differently (5.0.0 uses SHA-1); signing them as 5.1.0 would be refused.
    #[error("version {0:?} is not 5.1.0")]
    Version(String),
    #[error("signMethod {0:?} is not 01")]
    SignMethod(String),
    #[error("RSA signing failed: {0}")]
    Rsa(String),
}

/// An answer or notification cannot be trusted. Distinct variants let operators tell a certificate
/// rotation (unknown `certId`, untrusted issuer) from a forgery (bad signature).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("no signature field")]
    MissingSignature,
    #[error("version {0:?} is not 5.1.0")]
    Version(String),
    #[error("signMethod {0:?} is not 01")]
    SignMethod(String),
    #[error("neither signPubKeyCert nor a known certId")]
    MissingCertificate,
    #[error("signPubKeyCert is unreadable: {0}")]
    Certificate(String),
    #[error("certId {cert_id:?} does not name signPubKeyCert (serial {serial})")]
    CertIdMismatch { cert_id: String, serial: String },
    #[error("no pinned certificate with certId {0:?}")]
    UnknownCertId(String),
    #[error("certificate {0} (no trust path to a configured root)")]
    UntrustedCertificate(String),
    #[error("certificate subject CN {0:?} is not a UnionPay signing certificate")]
    WrongSubject(String),
    #[error("certificate {serial} is not valid at {at}")]
    OutsideValidity { serial: String, at: DateTime<Utc> },
    #[error("signature does not verify")]
    BadSignature,
}

/// The sorted `k=v&…` string the merchant signs: every field but `signature`, empty values
/// dropped (the official SDK's `filterBlank` before signing a request), raw values.
/// `BTreeMap` order is byte order, i.e. ASCII order.
pub fn signing_string(fields: &BTreeMap<String, String>) -> String {
    join_fields(fields, false)
}

/// The sorted `k=v&…` string an answer or notification is verified over: every field but
/// `signature`, **empty values kept** (`key=`). UnionPay signs its answers over all the fields it
/// sends, blanks included (the official SDK's `coverMap2String` in `validate` filters nothing), so
/// dropping them would refuse genuine answers that carry an empty field.
pub fn verification_string(fields: &BTreeMap<String, String>) -> String {
    join_fields(fields, true)
}

fn join_fields(fields: &BTreeMap<String, String>, keep_empty: bool) -> String {
    let mut content = String::new();
    for (key, value) in fields {
        if key == "signature" || (value.is_empty() && !keep_empty) {
            continue;
        }
        if !content.is_empty() {
            content.push('&');
        }
        content.push_str(key);
        content.push('=');
        content.push_str(value);
    }
    content
}

/// Lower-case hex SHA-256 of [`signing_string`]: the 64 ASCII bytes that the RSA signature covers.
pub fn signing_digest_hex(fields: &BTreeMap<String, String>) -> String {
    hex::encode(Sha256::digest(signing_string(fields).as_bytes()))
}

/// Lower-case hex SHA-256 of [`verification_string`].
pub fn verification_digest_hex(fields: &BTreeMap<String, String>) -> String {
    hex::encode(Sha256::digest(verification_string(fields).as_bytes()))
}

/// The merchant's signing key (from the PFX UnionPay issues) and its `certId`.
pub struct MerchantSigner {
    cert_id: String,
    /// Signs through aws-lc-rs (constant time; RUSTSEC-2023-0071).
    key: RsaSigningKey,
}

impl fmt::Debug for MerchantSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MerchantSigner")
            .field("cert_id", &self.cert_id)
            .finish_non_exhaustive()
    }
}

impl MerchantSigner {
    /// `cert_id` is the decimal serial of the merchant signing certificate; see
    /// [`SigningCertificate::cert_id`] to read it from the certificate.
    ///
    /// # Errors
    /// [`KeyError::PrivateKey`].
    pub fn from_pkcs8_pem(pem: &str, cert_id: &str) -> Result<Self, KeyError> {
        if !pem.contains("-----BEGIN PRIVATE KEY-----") {
            return Err(KeyError::PrivateKey(
                "expected a PEM block labelled PRIVATE KEY (PKCS#8)".to_owned(),
            ));
        }
        let key = RsaSigningKey::from_pem(pem).map_err(|e| KeyError::PrivateKey(e.to_string()))?;
        Ok(Self {
            cert_id: cert_id.to_owned(),
            key,
        })
    }

    pub fn cert_id(&self) -> &str {
        &self.cert_id
    }

    /// SHA256withRSA over the 64-byte hex digest, Base64. Deterministic.
    ///
    /// # Errors
    /// [`SignError::Rsa`] only if the RSA primitive fails.
    pub fn sign_digest_hex(&self, digest_hex: &str) -> Result<String, SignError> {
        self.key
            .sign_sha256_base64(digest_hex.as_bytes())
            .map_err(|e| SignError::Rsa(e.to_string()))
    }

    /// Signs a request in place: sets `certId`, drops any old `signature`, signs, inserts `signature`.
    ///
    /// # Errors
    /// [`SignError`] when `version`/`signMethod` are not 5.1.0/01 (both are required fields, so
    /// callers set them; see [`crate::wire`]).
    pub fn sign(&self, fields: &mut BTreeMap<String, String>) -> Result<(), SignError> {
        match fields.get("version").map(String::as_str) {
            Some(VERSION) => {}
            other => return Err(SignError::Version(other.unwrap_or_default().to_owned())),
        }
        match fields.get("signMethod").map(String::as_str) {
            Some(SIGN_METHOD_RSA) => {}
            other => return Err(SignError::SignMethod(other.unwrap_or_default().to_owned())),
        }
        fields.insert("certId".to_owned(), self.cert_id.clone());
        fields.remove("signature");
        let signature = self.sign_digest_hex(&signing_digest_hex(fields))?;
        fields.insert("signature".to_owned(), signature);
        Ok(())
    }
}

/// A UnionPay (or merchant) signing certificate, read once.
#[derive(Debug, Clone)]
pub struct SigningCertificate {
    cert_id: String,
    subject_cn: Option<String>,
    not_before: i64,
    not_after: i64,
    subject_der: Vec<u8>,
    issuer_der: Vec<u8>,
    /// `basicConstraints` says this certificate may issue others.
    is_ca: bool,
    tbs_der: Vec<u8>,
    signature_algorithm: ObjectIdentifier,
    signature: Vec<u8>,
    key: RsaPublicKey,
    /// The same key for checking signatures, on aws-lc: every answer and notification costs
    /// three checks (the shipped certificate's path, then the message).
    verifier: RsaVerifyingKey,
}

impl SigningCertificate {
    /// Reads a PEM certificate; CRLF line breaks (as in `signPubKeyCert`) are fine.
    ///
    /// # Errors
    /// [`KeyError::Certificate`].
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        let bad = |e: &dyn fmt::Display| KeyError::Certificate(e.to_string());
        let cert = Certificate::from_pem(pem.as_bytes()).map_err(|e| bad(&e))?;
        let tbs = &cert.tbs_certificate;
        let spki = tbs.subject_public_key_info.to_der().map_err(|e| bad(&e))?;
        let key = RsaPublicKey::from_public_key_der(&spki).map_err(|e| bad(&e))?;
        let verifier = RsaVerifyingKey::from_der(&spki).map_err(|e| bad(&e))?;
        let seconds = |t: x509_cert::time::Time| {
            i64::try_from(t.to_unix_duration().as_secs()).map_err(|e| bad(&e))
        };
        Ok(Self {
            cert_id: BigUint::from_bytes_be(tbs.serial_number.as_bytes()).to_str_radix(10),
            subject_cn: subject_cn(&cert),
            not_before: seconds(tbs.validity.not_before)?,
            not_after: seconds(tbs.validity.not_after)?,
            subject_der: tbs.subject.to_der().map_err(|e| bad(&e))?,
            issuer_der: tbs.issuer.to_der().map_err(|e| bad(&e))?,
            is_ca: is_ca(&cert),
            tbs_der: tbs.to_der().map_err(|e| bad(&e))?,
            signature_algorithm: cert.signature_algorithm.oid,
            signature: cert.signature.raw_bytes().to_vec(),
            key,
            verifier,
        })
    }

    fn serial_hex(&self) -> String {
        BigUint::parse_bytes(self.cert_id.as_bytes(), 10)
            .map(|n| n.to_str_radix(16).to_ascii_uppercase())
            .unwrap_or_default()
    }

    /// The certificate serial in decimal: what `certId` holds.
    pub fn cert_id(&self) -> &str {
        &self.cert_id
    }

    pub fn subject_cn(&self) -> Option<&str> {
        self.subject_cn.as_deref()
    }

    pub fn is_valid_at(&self, at: DateTime<Utc>) -> bool {
        (self.not_before..=self.not_after).contains(&at.timestamp())
    }

    /// Whether the subject CN names a UnionPay signing certificate: its third `@` element is
    /// [`UNIONPAY_COMPANY_NAME`], or [`TEST_CN_ELEMENT`] when `accept_test_cn`.
    pub fn has_unionpay_subject(&self, accept_test_cn: bool) -> bool {
        let third = self
            .subject_cn
            .as_deref()
            .and_then(|cn| cn.split('@').nth(2));
        match third {
            Some(UNIONPAY_COMPANY_NAME) => true,
            Some(TEST_CN_ELEMENT) => accept_test_cn,
            Some(_) | None => false,
        }
    }

    /// Verifies `signature` over `fields` with this certificate's key, with no trust decision:
    /// callers that received the certificate from the network go through [`PlatformVerifier`].
    ///
    /// # Errors
    /// [`VerifyError::MissingSignature`] or [`VerifyError::BadSignature`].
    pub fn verify_fields(&self, fields: &BTreeMap<String, String>) -> Result<(), VerifyError> {
        self.verify_digest(fields, &verification_digest_hex(fields))
    }

    /// As [`Self::verify_fields`], with the verification digest computed by the caller (over a
    /// field too large to hold, streamed from a file).
    ///
    /// # Errors
    /// [`VerifyError::MissingSignature`] or [`VerifyError::BadSignature`].
    pub fn verify_digest(
        &self,
        fields: &BTreeMap<String, String>,
        digest_hex: &str,
    ) -> Result<(), VerifyError> {
        let encoded = fields
            .get("signature")
            .filter(|s| !s.is_empty())
            .ok_or(VerifyError::MissingSignature)?;
        let raw = BASE64
            .decode(encoded)
            .map_err(|_| VerifyError::BadSignature)?;
        self.verifier
            .verify_sha256(digest_hex.as_bytes(), &raw)
            .map_err(|_| VerifyError::BadSignature)
    }

    /// Whether `issuer` signed this certificate (sha256WithRSA, or sha1WithRSA as CFCA still uses).
    fn is_issued_by(&self, issuer: &SigningCertificate) -> bool {
        if self.issuer_der != issuer.subject_der {
            return false;
        }
        if self.signature_algorithm == SHA256_WITH_RSA_OID {
            issuer
                .verifier
                .verify_sha256(&self.tbs_der, &self.signature)
                .is_ok()
        } else if self.signature_algorithm == SHA1_WITH_RSA_OID {
            issuer
                .verifier
                .verify_sha1_certificate(&self.tbs_der, &self.signature)
                .is_ok()
        } else {
            false
        }
    }

    fn same_key(&self, other: &SigningCertificate) -> bool {
        self.key == other.key
    }
}

/// The `cA` flag of `basicConstraints`; a certificate without the extension is not a CA.
fn is_ca(cert: &Certificate) -> bool {
    use x509_cert::der::Decode as _;
    use x509_cert::ext::pkix::BasicConstraints;
    const BASIC_CONSTRAINTS: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.19");
    cert.tbs_certificate
        .extensions
        .iter()
        .flatten()
        .find(|ext| ext.extn_id == BASIC_CONSTRAINTS)
        .and_then(|ext| BasicConstraints::from_der(ext.extn_value.as_bytes()).ok())
        .is_some_and(|bc| bc.ca)
}

fn subject_cn(cert: &Certificate) -> Option<String> {
    cert.tbs_certificate
        .subject
        .0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .find(|atv| atv.oid == CN_OID)
        .and_then(|atv| std::str::from_utf8(atv.value.value()).ok())
        .map(str::to_owned)
}

/// What the adapter trusts to sign UnionPay answers and notifications: as the official SDK does
/// (`CertUtil.verifyCertificateChain`), a `signPubKeyCert` is trusted when a path leads from it
/// through a configured middle certificate (`acp_prod_middle.cer`) to a configured root
/// (`acp_prod_root.cer`), every signature on the path verifies and every link is valid at the time
/// of verification. Pinned certificates (configured by hand) are the alternative.
#[derive(Debug, Clone, Default)]
pub struct PlatformVerifier {
    roots: Vec<SigningCertificate>,
    middles: Vec<SigningCertificate>,
    /// Certificates configured by hand, keyed by `certId`: the 5.0.0 way, and a pin for 5.1.0.
    pinned: HashMap<String, SigningCertificate>,
    accept_test_cn: bool,
}

/// Which certificate verified a message, for logs and rotation alerts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedBy {
    pub cert_id: String,
}

impl PlatformVerifier {
    /// Production rules: a `signPubKeyCert` must have a trust path to a configured root (or be pinned), name
    /// [`UNIONPAY_COMPANY_NAME`] and be valid now. With no issuer and no pin, nothing verifies.
    pub fn new() -> Self {
        Self::default()
    }

    /// Also accept subject CNs whose third element is `00040000:SIGN` (the SDK's
    /// `ifValidateCNName=false`, for the test environment).
    pub fn accept_test_cn(mut self, accept: bool) -> Self {
        self.accept_test_cn = accept;
        self
    }

    /// Adds a root certificate: the anchor every trust path must end at.
    ///
    /// # Errors
    /// [`KeyError::Certificate`] when the PEM is unreadable or not a CA certificate.
    pub fn add_root_pem(&mut self, pem: &str) -> Result<(), KeyError> {
        let cert = SigningCertificate::from_pem(pem)?;
        if !cert.is_ca {
            return Err(KeyError::Certificate(
                "the root certificate is not a CA (basicConstraints cA)".to_owned(),
            ));
        }
        self.roots.push(cert);
        Ok(())
    }

    /// Adds a middle certificate allowed to issue signing certificates; it is trusted only through
    /// a path to a root added with [`PlatformVerifier::add_root_pem`].
    ///
    /// # Errors
    /// [`KeyError::Certificate`] when the PEM is unreadable or not a CA certificate.
    pub fn add_middle_pem(&mut self, pem: &str) -> Result<(), KeyError> {
        let cert = SigningCertificate::from_pem(pem)?;
        if !cert.is_ca {
            return Err(KeyError::Certificate(
                "the middle certificate is not a CA (basicConstraints cA)".to_owned(),
            ));
        }
        self.middles.push(cert);
        Ok(())
    }

    /// Whether a path leaf → middle → root exists with every signature verifying and every link
    /// valid at `now`. The error names the most specific reason found.
    fn check_path(&self, leaf: &SigningCertificate, now: DateTime<Utc>) -> Result<(), VerifyError> {
        let mut reason = VerifyError::UntrustedCertificate(format!(
            "{}: no configured middle certificate issued it",
            leaf.cert_id
        ));
        for middle in self.middles.iter().filter(|m| leaf.is_issued_by(m)) {
            let roots: Vec<_> = self
                .roots
                .iter()
                .filter(|r| middle.is_issued_by(r))
                .collect();
            if roots.is_empty() {
                reason = VerifyError::UntrustedCertificate(format!(
                    "{}: its middle certificate {} was not issued by a configured root",
                    leaf.cert_id,
                    middle.serial_hex()
                ));
                continue;
            }
            if !middle.is_valid_at(now) {
                reason = VerifyError::OutsideValidity {
                    serial: format!("middle {}", middle.serial_hex()),
                    at: now,
                };
                continue;
            }
            if roots.iter().any(|r| r.is_valid_at(now)) {
                return Ok(());
            }
            reason = VerifyError::OutsideValidity {
                serial: "root".to_owned(),
                at: now,
            };
        }
        Err(reason)
    }

    /// Pins a signing certificate and returns its `certId`.
    ///
    /// # Errors
    /// [`KeyError::Certificate`].
    pub fn add_pinned_certificate_pem(&mut self, pem: &str) -> Result<String, KeyError> {
        let cert = SigningCertificate::from_pem(pem)?;
        let cert_id = cert.cert_id.clone();
        self.pinned.insert(cert_id.clone(), cert);
        Ok(cert_id)
    }

    /// Verifies a synchronous answer or a notification.
    ///
    /// With `signPubKeyCert`, that certificate must be trusted (issued by a configured issuer, or the
    /// same key as a pinned certificate with its serial), carry a UnionPay subject and be valid at
    /// `now`; a `certId` next to it must name it. Without one, `certId` must name a pinned
    /// certificate, which must be valid at `now`.
    ///
    /// # Errors
    /// [`VerifyError`], one variant per reason.
    pub fn verify(
        &self,
        fields: &BTreeMap<String, String>,
        now: DateTime<Utc>,
    ) -> Result<VerifiedBy, VerifyError> {
        self.verify_with_digest(fields, &verification_digest_hex(fields), now)
    }

    /// As [`Self::verify`], with the verification digest over every field (see
    /// [`verification_string`]) computed by the caller: `fields` may then leave out a field too
    /// large to hold (the reconciliation file's `fileContent`), which the digest covered.
    ///
    /// # Errors
    /// [`VerifyError`], one variant per reason.
    pub fn verify_with_digest(
        &self,
        fields: &BTreeMap<String, String>,
        digest_hex: &str,
        now: DateTime<Utc>,
    ) -> Result<VerifiedBy, VerifyError> {
        if fields.get("signature").is_none_or(|s| s.is_empty()) {
            return Err(VerifyError::MissingSignature);
        }
        match fields.get("version").map(String::as_str) {
            Some(VERSION) => {}
            other => return Err(VerifyError::Version(other.unwrap_or_default().to_owned())),
        }
        match fields.get("signMethod").map(String::as_str) {
            Some(SIGN_METHOD_RSA) => {}
            other => {
                return Err(VerifyError::SignMethod(
                    other.unwrap_or_default().to_owned(),
                ));
            }
        }
        let cert_id = fields.get("certId").filter(|c| !c.is_empty());
        let shipped = fields.get("signPubKeyCert").filter(|c| !c.is_empty());

        let owned;
        let cert = match (shipped, cert_id) {
            (Some(pem), _) => {
                owned = SigningCertificate::from_pem(pem)
                    .map_err(|e| VerifyError::Certificate(e.to_string()))?;
                if let Some(cert_id) = cert_id
                    && cert_id != &owned.cert_id
                {
                    return Err(VerifyError::CertIdMismatch {
                        cert_id: cert_id.clone(),
                        serial: owned.cert_id.clone(),
                    });
                }
                let pinned = self
                    .pinned
                    .get(&owned.cert_id)
                    .is_some_and(|pin| pin.same_key(&owned));
                if !pinned {
                    self.check_path(&owned, now)?;
                }
                if !owned.has_unionpay_subject(self.accept_test_cn) {
                    return Err(VerifyError::WrongSubject(
                        owned.subject_cn.clone().unwrap_or_default(),
                    ));
                }
                &owned
            }
            (None, Some(cert_id)) => self
                .pinned
                .get(cert_id)
                .ok_or_else(|| VerifyError::UnknownCertId(cert_id.clone()))?,
            (None, None) => return Err(VerifyError::MissingCertificate),
        };
        if !cert.is_valid_at(now) {
            return Err(VerifyError::OutsideValidity {
                serial: cert.cert_id.clone(),
                at: now,
            });
        }
        cert.verify_digest(fields, digest_hex)?;
        Ok(VerifiedBy {
            cert_id: cert.cert_id.clone(),
        })
    }
}

#[cfg(test)]
mod tests;
