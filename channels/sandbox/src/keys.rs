//! Key material for the sandbox platforms: PEM/DER loading, X.509 certificates, fresh RSA-2048
//! key pairs, and the one signature primitive all three platforms share (RSA PKCS#1 v1.5 over
//! SHA-256).
//!
//! Signing goes through aws-lc-rs ([`SigningKey`]): its private-key operations are constant time,
//! the `rsa` crate's are not (RUSTSEC-2023-0071). `rsa` still parses keys, builds certificates and
//! verifies (public-key operations, which the advisory does not touch). This is the sandboxes' own
//! code: they share no signing code with the adapters they test.
//!
//! PEM is decoded here by hand rather than with a strict RFC 7468 reader, because the keys the
//! platforms hand out come with CRLF line breaks, odd line widths or no armour at all.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rand::rngs::OsRng;
use rsa::pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey};
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use rsa::{BigUint, RsaPrivateKey, RsaPublicKey};
use sha2::Sha256;
use x509_cert::builder::{Builder, CertificateBuilder, Profile};
use x509_cert::der::asn1::{SetOfVec, Utf8StringRef};
use x509_cert::der::{Any, Decode, Encode};
use x509_cert::name::{Name, RdnSequence, RelativeDistinguishedName};
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::SubjectPublicKeyInfoOwned;
use x509_cert::time::{Time, Validity};

/// OID of the X.500 `commonName` attribute (2.5.4.3).
const COMMON_NAME: x509_cert::der::asn1::ObjectIdentifier =
    x509_cert::der::asn1::ObjectIdentifier::new_unwrap("2.5.4.3");

/// What can go wrong while loading or making key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The text has no `-----BEGIN …-----`/`-----END …-----` pair we understand.
    #[error("no PEM block found (expected one of: {expected})")]
    NoPemBlock {
        /// The labels that would have been accepted.
        expected: &'static str,
    },
    /// The armour was there but the Base64 inside was not.
    #[error("PEM body is not valid Base64")]
    PemBase64(#[source] base64::DecodeError),
    /// The DER did not describe an RSA private key.
    #[error("not an RSA private key: {0}")]
    PrivateKey(String),
    /// The DER did not describe an RSA public key.
    #[error("not an RSA public key: {0}")]
    PublicKey(String),
    /// The DER did not describe an X.509 certificate.
    #[error("not an X.509 certificate: {0}")]
    Certificate(String),
    /// RSA key generation failed (it only fails if the RNG does).
    #[error("RSA key generation failed")]
    Generate(#[source] rsa::Error),
    /// Building or signing a certificate failed.
    #[error("certificate construction failed: {0}")]
    Build(String),
    /// RSA signing failed.
    #[error("RSA signing failed")]
    Sign(#[source] rsa::Error),
    /// aws-lc refused the key for signing (for example shorter than 2048 bits).
    #[error("key cannot sign: {0}")]
    Unusable(String),
    /// aws-lc could not sign (only if the system RNG fails).
    #[error("RSA signing failed")]
    SignFailed,
}

/// A private key ready to sign `SHA256withRSA` in constant time (aws-lc-rs), built once per
/// platform identity: building it parses and checks the key, which costs about one signature.
pub struct SigningKey {
    pair: aws_lc_rs::signature::RsaKeyPair,
    rng: aws_lc_rs::rand::SystemRandom,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

impl SigningKey {
    /// Hands `key` to aws-lc (through its PKCS#8 DER).
    ///
    /// # Errors
    /// [`KeyError::Unusable`] if aws-lc refuses it.
    pub fn new(key: &RsaPrivateKey) -> Result<Self, KeyError> {
        let der = key
            .to_pkcs8_der()
            .map_err(|e| KeyError::Unusable(e.to_string()))?;
        let pair = aws_lc_rs::signature::RsaKeyPair::from_pkcs8(der.as_bytes())
            .map_err(|e| KeyError::Unusable(e.to_string()))?;
        Ok(Self {
            pair,
            rng: aws_lc_rs::rand::SystemRandom::new(),
        })
    }

    /// `SHA256withRSA` (PKCS#1 v1.5) over `message`: raw signature bytes. Deterministic.
    ///
    /// # Errors
    /// [`KeyError::SignFailed`] if the system RNG fails.
    pub fn sign_sha256(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        let mut signature = vec![0; self.pair.public_modulus_len()];
        self.pair
            .sign(
                &aws_lc_rs::signature::RSA_PKCS1_SHA256,
                &self.rng,
                message,
                &mut signature,
            )
            .map_err(|_| KeyError::SignFailed)?;
        Ok(signature)
    }
}

/// One decoded PEM block: its label and the DER bytes.
struct PemBlock {
    label: String,
    der: Vec<u8>,
}

/// Finds the first PEM block whose label is in `labels`, tolerating CRLF and any line width.
fn decode_pem(text: &str, labels: &[&str], expected: &'static str) -> Result<PemBlock, KeyError> {
    for label in labels {
        let begin = format!("-----BEGIN {label}-----");
        let end = format!("-----END {label}-----");
        let Some(start) = text.find(&begin) else {
            continue;
        };
        let body_start = start + begin.len();
        let Some(body_len) = text[body_start..].find(&end) else {
            continue;
        };
        let body: String = text[body_start..body_start + body_len]
            .chars()
            .filter(|c| !c.is_ascii_whitespace())
            .collect();
        let der = BASE64.decode(body).map_err(KeyError::PemBase64)?;
        return Ok(PemBlock {
            label: (*label).to_owned(),
            der,
        });
    }
    Err(KeyError::NoPemBlock { expected })
}

/// Loads an RSA private key from PEM: PKCS#8 (`PRIVATE KEY`) or PKCS#1 (`RSA PRIVATE KEY`).
///
/// # Errors
/// [`KeyError::NoPemBlock`] without either label; [`KeyError::PrivateKey`] for bad DER.
pub fn load_private_key_pem(pem: &str) -> Result<RsaPrivateKey, KeyError> {
    let block = decode_pem(
        pem,
        &["PRIVATE KEY", "RSA PRIVATE KEY"],
        "PRIVATE KEY, RSA PRIVATE KEY",
    )?;
    if block.label == "PRIVATE KEY" {
        RsaPrivateKey::from_pkcs8_der(&block.der).map_err(|e| KeyError::PrivateKey(e.to_string()))
    } else {
        RsaPrivateKey::from_pkcs1_der(&block.der).map_err(|e| KeyError::PrivateKey(e.to_string()))
    }
}

/// Loads an RSA public key from PEM: SPKI (`PUBLIC KEY`), PKCS#1 (`RSA PUBLIC KEY`), or the
/// subject key of a `CERTIFICATE`.
///
/// # Errors
/// [`KeyError::NoPemBlock`] without a known label; [`KeyError::PublicKey`] or
/// [`KeyError::Certificate`] for bad DER.
pub fn load_public_key_pem(pem: &str) -> Result<RsaPublicKey, KeyError> {
    let block = decode_pem(
        pem,
        &["PUBLIC KEY", "RSA PUBLIC KEY", "CERTIFICATE"],
        "PUBLIC KEY, RSA PUBLIC KEY, CERTIFICATE",
    )?;
    match block.label.as_str() {
        "PUBLIC KEY" => public_key_from_spki_der(&block.der),
        "RSA PUBLIC KEY" => {
            RsaPublicKey::from_pkcs1_der(&block.der).map_err(|e| KeyError::PublicKey(e.to_string()))
        }
        _ => Ok(CertificateInfo::from_der(&block.der, pem)?.public_key),
    }
}

/// Loads a public key given as bare Base64 SPKI DER, the form Alipay's console hands out.
///
/// # Errors
/// [`KeyError::PemBase64`] or [`KeyError::PublicKey`].
pub fn load_public_key_base64_der(text: &str) -> Result<RsaPublicKey, KeyError> {
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let der = BASE64.decode(compact).map_err(KeyError::PemBase64)?;
    public_key_from_spki_der(&der)
}

fn public_key_from_spki_der(der: &[u8]) -> Result<RsaPublicKey, KeyError> {
    RsaPublicKey::from_public_key_der(der).map_err(|e| KeyError::PublicKey(e.to_string()))
}

/// Generates a fresh RSA-2048 key pair for a test run.
///
/// # Errors
/// [`KeyError::Generate`] if the operating system RNG fails.
pub fn generate_rsa_2048() -> Result<RsaPrivateKey, KeyError> {
    RsaPrivateKey::new(&mut OsRng, 2048).map_err(KeyError::Generate)
}

/// `SHA256withRSA` (PKCS#1 v1.5), the signature every sandboxed platform uses, for a one-off
/// signature (tests playing the merchant). It prepares the key each call: the platforms' signers
/// hold a [`SigningKey`] instead.
///
/// # Errors
/// [`KeyError::Unusable`] if the key cannot sign (for example it is too short).
pub fn sign_sha256_rsa(key: &RsaPrivateKey, message: &[u8]) -> Result<Vec<u8>, KeyError> {
    SigningKey::new(key)?.sign_sha256(message)
}

/// Checks a `SHA256withRSA` (PKCS#1 v1.5) signature; `true` only for an exact match.
///
/// On aws-lc: the `rsa` crate took 0.47 ms a check on this machine against 0.05 ms
/// (`rsa_sign_bench`), and the sandbox checks every merchant request, so under load its checks
/// cost more than its own signatures. Handing the key over (PKCS#1 DER, parsed by aws-lc) costs
/// a few microseconds a call, which keeps the keys the sandbox holds in one form.
pub fn verify_sha256_rsa(key: &RsaPublicKey, message: &[u8], signature: &[u8]) -> bool {
    use rsa::pkcs1::EncodeRsaPublicKey as _;
    let Ok(der) = key.to_pkcs1_der() else {
        return false;
    };
    aws_lc_rs::signature::UnparsedPublicKey::new(
        &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
        der.as_bytes(),
    )
    .verify(message, signature)
    .is_ok()
}

/// The parts of an X.509 certificate the platforms care about: the serial (WeChat spells it in
/// upper-case hex, UnionPay in decimal as `certId`), the subject CN, the validity window and the
/// RSA key.
#[derive(Clone, Debug)]
pub struct CertificateInfo {
    pem: String,
    serial: Vec<u8>,
    subject_common_name: Option<String>,
    not_before_unix: u64,
    not_after_unix: u64,
    public_key: RsaPublicKey,
}

impl CertificateInfo {
    /// Parses a PEM `CERTIFICATE` and keeps the PEM text as given.
    ///
    /// # Errors
    /// [`KeyError::NoPemBlock`], [`KeyError::Certificate`] or [`KeyError::PublicKey`].
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        let block = decode_pem(pem, &["CERTIFICATE"], "CERTIFICATE")?;
        Self::from_der(&block.der, pem)
    }

    fn from_der(der: &[u8], pem: &str) -> Result<Self, KeyError> {
        let cert = x509_cert::Certificate::from_der(der)
            .map_err(|e| KeyError::Certificate(e.to_string()))?;
        let tbs = &cert.tbs_certificate;
        let spki_der = tbs
            .subject_public_key_info
            .to_der()
            .map_err(|e| KeyError::Certificate(e.to_string()))?;
        let public_key = public_key_from_spki_der(&spki_der)?;
        // DER integers carry a leading 0x00 when the top bit is set; platforms drop it.
        let serial: Vec<u8> = tbs
            .serial_number
            .as_bytes()
            .iter()
            .copied()
            .skip_while(|b| *b == 0)
            .collect();
        Ok(Self {
            pem: pem.to_owned(),
            serial,
            subject_common_name: common_name(&tbs.subject),
            not_before_unix: tbs.validity.not_before.to_unix_duration().as_secs(),
            not_after_unix: tbs.validity.not_after.to_unix_duration().as_secs(),
            public_key,
        })
    }

    /// The PEM text exactly as it was loaded or issued.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// Serial in upper-case hex without leading zero bytes (WeChat's `serial_no`).
    pub fn serial_hex(&self) -> String {
        hex::encode_upper(&self.serial)
    }

    /// Serial in decimal (UnionPay's `certId`).
    pub fn serial_decimal(&self) -> String {
        BigUint::from_bytes_be(&self.serial).to_str_radix(10)
    }

    /// The subject's first `CN`, when it is a UTF-8 or printable string.
    pub fn subject_common_name(&self) -> Option<&str> {
        self.subject_common_name.as_deref()
    }

    /// Start of validity, Unix seconds.
    pub fn not_before_unix(&self) -> u64 {
        self.not_before_unix
    }

    /// End of validity, Unix seconds.
    pub fn not_after_unix(&self) -> u64 {
        self.not_after_unix
    }

    /// The certified RSA public key.
    pub fn public_key(&self) -> &RsaPublicKey {
        &self.public_key
    }
}

fn common_name(name: &Name) -> Option<String> {
    name.0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .find(|atv| atv.oid == COMMON_NAME)
        .and_then(|atv| {
            atv.value
                .decode_as::<Utf8StringRef<'_>>()
                .map(|s| s.as_str().to_owned())
                .or_else(|_| {
                    atv.value
                        .decode_as::<x509_cert::der::asn1::PrintableStringRef<'_>>()
                        .map(|s| s.as_str().to_owned())
                })
                .ok()
        })
}

/// Issues a self-signed SHA256withRSA certificate for `key`, so a sandbox platform can publish
/// a certificate (UnionPay's `signPubKeyCert`, WeChat's platform certificate) for a key made
/// at test time.
///
/// The PEM uses CRLF line breaks, as UnionPay's certificates do.
///
/// # Errors
/// [`KeyError::Build`] if the name, validity or signature cannot be encoded.
pub fn issue_self_signed_certificate(
    key: &RsaPrivateKey,
    common_name: &str,
    serial: u64,
    not_before: SystemTime,
    valid_for: Duration,
) -> Result<CertificateInfo, KeyError> {
    issue_certificate(
        key,
        common_name,
        serial,
        (not_before, valid_for),
        CertificateRole::Leaf,
        None,
    )
}

/// What a certificate made by [`issue_certificate`] is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertificateRole {
    /// A self-signed trust anchor (`basicConstraints cA`).
    Root,
    /// An intermediate ("middle") CA (`basicConstraints cA`, path length 0).
    Middle,
    /// An end-entity signing certificate.
    Leaf,
}

/// The issuer of a certificate: its subject CN and private key.
#[derive(Debug, Clone, Copy)]
pub struct Issuer<'a> {
    /// The issuer's subject CN (the sandbox's names are a single CN).
    pub common_name: &'a str,
    /// The issuer's private key, which signs the new certificate.
    pub key: &'a RsaPrivateKey,
}

fn name_of(common_name: &str) -> Result<Name, KeyError> {
    let build_err = |e: &dyn std::fmt::Display| KeyError::Build(e.to_string());
    let cn = Utf8StringRef::new(common_name).map_err(|e| build_err(&e))?;
    let atv = x509_cert::attr::AttributeTypeAndValue {
        oid: COMMON_NAME,
        value: Any::encode_from(&cn).map_err(|e| build_err(&e))?,
    };
    let rdn = RelativeDistinguishedName(SetOfVec::try_from(vec![atv]).map_err(|e| build_err(&e))?);
    Ok(RdnSequence(vec![rdn]))
}

/// Issues a SHA256withRSA certificate for `key`, signed by `issuer` (self-signed when `None`),
/// valid from `validity.0` for `validity.1`. The PEM uses CRLF line breaks.
///
/// # Errors
/// [`KeyError::Build`] if the name, validity or signature cannot be encoded.
pub fn issue_certificate(
    key: &RsaPrivateKey,
    common_name: &str,
    serial: u64,
    validity: (SystemTime, Duration),
    role: CertificateRole,
    issuer: Option<Issuer<'_>>,
) -> Result<CertificateInfo, KeyError> {
    let build_err = |e: &dyn std::fmt::Display| KeyError::Build(e.to_string());
    let subject = name_of(common_name)?;
    let issuer_name = match issuer {
        Some(i) => name_of(i.common_name)?,
        None => subject.clone(),
    };
    let (not_before, valid_for) = validity;
    let validity = Validity {
        not_before: Time::try_from(not_before).map_err(|e| build_err(&e))?,
        not_after: Time::try_from(not_before + valid_for).map_err(|e| build_err(&e))?,
    };
    let spki_der = key
        .to_public_key()
        .to_public_key_der()
        .map_err(|e| build_err(&e))?;
    let spki =
        SubjectPublicKeyInfoOwned::from_der(spki_der.as_bytes()).map_err(|e| build_err(&e))?;
    let signing_key = issuer.map_or(key, |i| i.key);
    let signer = rsa::pkcs1v15::SigningKey::<Sha256>::new(signing_key.clone());
    let profile = match role {
        CertificateRole::Root => Profile::Root,
        CertificateRole::Middle => Profile::SubCA {
            issuer: issuer_name,
            path_len_constraint: Some(0),
        },
        CertificateRole::Leaf => Profile::Leaf {
            issuer: issuer_name,
            enable_key_agreement: false,
            enable_key_encipherment: false,
        },
    };
    let builder = CertificateBuilder::new(
        profile,
        SerialNumber::from(serial),
        validity,
        subject,
        spki,
        &signer,
    )
    .map_err(|e| build_err(&e))?;
    let cert = builder
        .build::<rsa::pkcs1v15::Signature>()
        .map_err(|e| build_err(&e))?;
    let der = cert.to_der().map_err(|e| build_err(&e))?;
    let pem = pem_armour("CERTIFICATE", &der, "\r\n");
    CertificateInfo::from_der(&der, &pem)
}

/// Wraps DER in PEM armour with 64-character lines and the given line break, without a break
/// after the END line.
pub fn pem_armour(label: &str, der: &[u8], line_break: &str) -> String {
    let body = BASE64.encode(der);
    let mut out = format!("-----BEGIN {label}-----");
    for chunk in body.as_bytes().chunks(64) {
        out.push_str(line_break);
        out.push_str(&String::from_utf8_lossy(chunk));
    }
    out.push_str(line_break);
    out.push_str(&format!("-----END {label}-----"));
    out
}

/// A named set of public keys, keyed by the identifier the protocol puts on the wire
/// (WeChat `serial_no`, Alipay `app_id`, UnionPay `certId`) and bound to the account that owns it.
#[derive(Clone, Debug, Default)]
pub struct Keyring {
    entries: HashMap<String, KeyringEntry>,
}

/// One registered key and the account (mchid, app_id, merId) it belongs to.
#[derive(Clone, Debug)]
pub struct KeyringEntry {
    /// The account that owns the key.
    pub owner: String,
    /// The key itself.
    pub public_key: RsaPublicKey,
}

impl Keyring {
    /// An empty keyring.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `public_key` under `key_id` for `owner`, replacing any previous entry.
    pub fn register(
        &mut self,
        key_id: impl Into<String>,
        owner: impl Into<String>,
        public_key: RsaPublicKey,
    ) {
        self.entries.insert(
            key_id.into(),
            KeyringEntry {
                owner: owner.into(),
                public_key,
            },
        );
    }

    /// The entry registered under `key_id`.
    pub fn find(&self, key_id: &str) -> Option<&KeyringEntry> {
        self.entries.get(key_id)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_signs_and_verifies_and_rejects_a_changed_message() {
        let key = generate_rsa_2048().unwrap();
        let signature = sign_sha256_rsa(&key, b"hello").unwrap();
        assert!(verify_sha256_rsa(
            &key.to_public_key(),
            b"hello",
            &signature
        ));
        assert!(!verify_sha256_rsa(
            &key.to_public_key(),
            b"hellO",
            &signature
        ));
    }

    #[test]
    fn a_self_signed_certificate_round_trips_through_pem() {
        let key = generate_rsa_2048().unwrap();
        let start = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let cn = "041@8310000000083040@中国银联股份有限公司@00016495";
        let issued = issue_self_signed_certificate(
            &key,
            cn,
            69_678_957_876,
            start,
            Duration::from_secs(86_400),
        )
        .unwrap();
        assert!(issued.pem().contains("\r\n"));
        assert!(!issued.pem().ends_with('\n'));
        let loaded = CertificateInfo::from_pem(issued.pem()).unwrap();
        assert_eq!(loaded.serial_decimal(), "69678957876");
        assert_eq!(loaded.serial_hex(), "1039308534");
        assert_eq!(loaded.subject_common_name(), Some(cn));
        assert_eq!(loaded.not_before_unix(), 1_700_000_000);
        assert_eq!(loaded.not_after_unix(), 1_700_086_400);
        assert_eq!(loaded.public_key(), &key.to_public_key());
        assert_eq!(
            load_public_key_pem(issued.pem()).unwrap(),
            key.to_public_key()
        );
    }

    #[test]
    fn pem_without_a_known_label_is_refused() {
        let err = load_private_key_pem(
            "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----",
        )
        .unwrap_err();
        assert!(matches!(err, KeyError::NoPemBlock { .. }));
    }
}
