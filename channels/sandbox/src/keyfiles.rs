//! The key directory shared by `sandbox keygen` and the three servers: what files exist per
//! platform, how fresh material is generated into them, and how a server loads its half.
//!
//! Each platform gets a sub-directory (`wechat/`, `alipay/`, `unionpay/`). The adapter reads the
//! merchant's private keys and the platform's public keys from the same files, so both sides of a
//! test agree on keys without sharing any code.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rand::Rng;
use rsa::RsaPrivateKey;
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};

use crate::keys::{self, CertificateInfo, CertificateRole, Issuer, KeyError};

/// Subject CN of the platform's UnionPay signing certificate: the third `@` element is what
/// merchants check.
pub const UNIONPAY_PLATFORM_CN: &str = "041@8310000000083040@中国银联股份有限公司@00016495";

/// Subject CN of the sandbox's UnionPay root certificate (`acp_test_root.cer` plays this part).
pub const UNIONPAY_ROOT_CN: &str = "Sandbox UnionPay Test Root";
/// Subject CN of the sandbox's UnionPay middle certificate (`acp_test_middle.cer`).
pub const UNIONPAY_MIDDLE_CN: &str = "Sandbox UnionPay Test OCA1";

/// Certificates are issued valid from a day ago for ten years, so clock skew never matters.
const CERT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400);

/// What can go wrong reading or writing the key directory.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file was read but its content is not usable key material.
    #[error("{path}: {source}")]
    Key {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: KeyError,
    },
    /// PKCS#8 / SPKI encoding failed.
    #[error("encoding {0} failed")]
    Encode(&'static str),
    /// A text file is empty or malformed.
    #[error("{path}: {issue}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        issue: &'static str,
    },
}

fn write(dir: &Path, name: &str, content: &str) -> Result<(), KeyFileError> {
    let path = dir.join(name);
    std::fs::write(&path, content).map_err(|source| KeyFileError::Io { path, source })
}

fn read(dir: &Path, name: &str) -> Result<String, KeyFileError> {
    let path = dir.join(name);
    std::fs::read_to_string(&path).map_err(|source| KeyFileError::Io { path, source })
}

/// Reads a one-line text file, trimming surrounding whitespace.
fn read_text(dir: &Path, name: &str) -> Result<String, KeyFileError> {
    let text = read(dir, name)?.trim().to_owned();
    if text.is_empty() {
        return Err(KeyFileError::Invalid {
            path: dir.join(name),
            issue: "file is empty",
        });
    }
    Ok(text)
}

fn read_private_key(dir: &Path, name: &str) -> Result<RsaPrivateKey, KeyFileError> {
    keys::load_private_key_pem(&read(dir, name)?).map_err(|source| KeyFileError::Key {
        path: dir.join(name),
        source,
    })
}

fn read_public_key(dir: &Path, name: &str) -> Result<rsa::RsaPublicKey, KeyFileError> {
    keys::load_public_key_pem(&read(dir, name)?).map_err(|source| KeyFileError::Key {
        path: dir.join(name),
        source,
    })
}

fn read_certificate(dir: &Path, name: &str) -> Result<CertificateInfo, KeyFileError> {
    CertificateInfo::from_pem(&read(dir, name)?).map_err(|source| KeyFileError::Key {
        path: dir.join(name),
        source,
    })
}

fn private_pem(key: &RsaPrivateKey) -> Result<String, KeyFileError> {
    Ok(key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|_| KeyFileError::Encode("PKCS#8 private key"))?
        .to_string())
}

fn public_pem(key: &RsaPrivateKey) -> Result<String, KeyFileError> {
    key.to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|_| KeyFileError::Encode("SPKI public key"))
}

fn generate(dir: &Path) -> Result<RsaPrivateKey, KeyFileError> {
    keys::generate_rsa_2048().map_err(|source| KeyFileError::Key {
        path: dir.to_owned(),
        source,
    })
}

fn certificate(
    dir: &Path,
    key: &RsaPrivateKey,
    cn: &str,
    serial: u64,
) -> Result<CertificateInfo, KeyFileError> {
    let not_before = SystemTime::now() - Duration::from_secs(86_400);
    keys::issue_self_signed_certificate(key, cn, serial, not_before, CERT_VALIDITY).map_err(
        |source| KeyFileError::Key {
            path: dir.to_owned(),
            source,
        },
    )
}

fn create_dir(dir: &Path) -> Result<(), KeyFileError> {
    std::fs::create_dir_all(dir).map_err(|source| KeyFileError::Io {
        path: dir.to_owned(),
        source,
    })
}

fn random_digits(len: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|_| char::from(b'0' + rng.gen_range(0..10u8)))
        .collect()
}

fn random_alphanumeric(len: usize) -> String {
    rand::thread_rng()
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// Generates fresh material for all three platforms under `dir`, overwriting existing files.
///
/// # Errors
/// [`KeyFileError`] if a directory or file cannot be written.
pub fn generate_all(dir: &Path) -> Result<(), KeyFileError> {
    generate_wechat(&dir.join("wechat"))?;
    generate_alipay(&dir.join("alipay"))?;
    generate_unionpay(&dir.join("unionpay"))?;
    Ok(())
}

/// Writes `mchid.txt`, `appid.txt`, the merchant key/cert/serial, the platform key/public key/
/// serial and `apiv3_key.txt` into `dir`.
///
/// # Errors
/// [`KeyFileError`].
pub fn generate_wechat(dir: &Path) -> Result<(), KeyFileError> {
    create_dir(dir)?;
    let mchid = format!("19{}", random_digits(8));
    let appid = format!("wx{}", hex::encode(rand::thread_rng().r#gen::<[u8; 8]>()));
    let merchant = generate(dir)?;
    // Top bit cleared so the DER integer needs no sign byte; WeChat serials are hex of the serial.
    let serial = rand::thread_rng().r#gen::<u64>() >> 1 | 1 << 62;
    let cert = certificate(dir, &merchant, &format!("{mchid} merchant API"), serial)?;
    let platform = generate(dir)?;
    let platform_serial = format!("PUB_KEY_ID_01{}", random_digits(32));
    write(dir, "mchid.txt", &mchid)?;
    write(dir, "appid.txt", &appid)?;
    write(dir, "merchant_key.pem", &private_pem(&merchant)?)?;
    write(dir, "merchant_serial.txt", &cert.serial_hex())?;
    write(dir, "merchant_cert.pem", cert.pem())?;
    write(dir, "platform_key.pem", &private_pem(&platform)?)?;
    write(dir, "platform_serial.txt", &platform_serial)?;
    write(dir, "platform_public.pem", &public_pem(&platform)?)?;
    write(dir, "apiv3_key.txt", &random_alphanumeric(32))?;
    Ok(())
}

/// Writes `app_id.txt` and the app and Alipay key pairs into `dir`.
///
/// # Errors
/// [`KeyFileError`].
pub fn generate_alipay(dir: &Path) -> Result<(), KeyFileError> {
    create_dir(dir)?;
    let app = generate(dir)?;
    let alipay = generate(dir)?;
    write(dir, "app_id.txt", &format!("2021{}", random_digits(12)))?;
    write(dir, "app_private_key.pem", &private_pem(&app)?)?;
    write(dir, "app_public_key.pem", &public_pem(&app)?)?;
    write(dir, "alipay_private_key.pem", &private_pem(&alipay)?)?;
    write(dir, "alipay_public_key.pem", &public_pem(&alipay)?)?;
    Ok(())
}

/// Writes `mer_id.txt`, the merchant signing key/cert/certId and the platform signing key/cert
/// into `dir`.
///
/// # Errors
/// [`KeyFileError`].
pub fn generate_unionpay(dir: &Path) -> Result<(), KeyFileError> {
    create_dir(dir)?;
    let mer_id = format!("777290058{}", random_digits(6));
    let merchant = generate(dir)?;
    let merchant_serial = rand::thread_rng().gen_range(10_000_000_000..100_000_000_000u64);
    let merchant_cert = certificate(
        dir,
        &merchant,
        &format!("041@Z2014-11-11@{mer_id}:SIGN@00000003"),
        merchant_serial,
    )?;
    // UnionPay's own hierarchy, as in production: a root, a middle CA issued by it, and the
    // signing certificate issued by the middle (what answers carry in signPubKeyCert).
    let key_err = |source| KeyFileError::Key {
        path: dir.to_owned(),
        source,
    };
    let validity = (
        SystemTime::now() - Duration::from_secs(86_400),
        CERT_VALIDITY,
    );
    let root = generate(dir)?;
    let root_cert = keys::issue_certificate(
        &root,
        UNIONPAY_ROOT_CN,
        rand::thread_rng().gen_range(1_000..1_000_000u64),
        validity,
        CertificateRole::Root,
        None,
    )
    .map_err(key_err)?;
    let middle = generate(dir)?;
    let middle_cert = keys::issue_certificate(
        &middle,
        UNIONPAY_MIDDLE_CN,
        rand::thread_rng().gen_range(1_000..1_000_000u64),
        validity,
        CertificateRole::Middle,
        Some(Issuer {
            common_name: UNIONPAY_ROOT_CN,
            key: &root,
        }),
    )
    .map_err(key_err)?;
    let platform = generate(dir)?;
    let platform_serial = rand::thread_rng().gen_range(10_000_000_000..100_000_000_000u64);
    let platform_cert = keys::issue_certificate(
        &platform,
        UNIONPAY_PLATFORM_CN,
        platform_serial,
        validity,
        CertificateRole::Leaf,
        Some(Issuer {
            common_name: UNIONPAY_MIDDLE_CN,
            key: &middle,
        }),
    )
    .map_err(key_err)?;
    write(dir, "mer_id.txt", &mer_id)?;
    write(dir, "root_cert.pem", root_cert.pem())?;
    write(dir, "middle_cert.pem", middle_cert.pem())?;
    write(dir, "merchant_sign_key.pem", &private_pem(&merchant)?)?;
    write(dir, "merchant_sign_cert.pem", merchant_cert.pem())?;
    write(dir, "merchant_cert_id.txt", &merchant_cert.serial_decimal())?;
    write(dir, "platform_sign_key.pem", &private_pem(&platform)?)?;
    write(dir, "platform_sign_cert.pem", platform_cert.pem())?;
    Ok(())
}

/// What the WeChat server needs from `wechat/`.
#[derive(Debug)]
pub struct WechatKeyFiles {
    /// Merchant id.
    pub mchid: String,
    /// App id.
    pub appid: String,
    /// Merchant API certificate (serial and public key).
    pub merchant_cert: CertificateInfo,
    /// Announced in `Wechatpay-Serial`.
    pub platform_serial: String,
    /// Signs responses and callbacks.
    pub platform_key: RsaPrivateKey,
    /// The 32-character APIv3 key.
    pub apiv3_key: String,
}

impl WechatKeyFiles {
    /// Loads from `dir` (the `wechat/` sub-directory).
    ///
    /// # Errors
    /// [`KeyFileError`] naming the missing or bad file.
    pub fn load(dir: &Path) -> Result<Self, KeyFileError> {
        let apiv3_key = read(dir, "apiv3_key.txt")?
            .trim_end_matches(['\r', '\n'])
            .to_owned();
        if apiv3_key.len() != 32 {
            return Err(KeyFileError::Invalid {
                path: dir.join("apiv3_key.txt"),
                issue: "the APIv3 key must be 32 bytes",
            });
        }
        Ok(Self {
            mchid: read_text(dir, "mchid.txt")?,
            appid: read_text(dir, "appid.txt")?,
            merchant_cert: read_certificate(dir, "merchant_cert.pem")?,
            platform_serial: read_text(dir, "platform_serial.txt")?,
            platform_key: read_private_key(dir, "platform_key.pem")?,
            apiv3_key,
        })
    }
}

/// What the Alipay server needs from `alipay/`.
#[derive(Debug)]
pub struct AlipayKeyFiles {
    /// The app.
    pub app_id: String,
    /// Verifies the app's calls.
    pub app_public_key: rsa::RsaPublicKey,
    /// Signs responses and notifications.
    pub alipay_private_key: RsaPrivateKey,
}

impl AlipayKeyFiles {
    /// Loads from `dir` (the `alipay/` sub-directory).
    ///
    /// # Errors
    /// [`KeyFileError`] naming the missing or bad file.
    pub fn load(dir: &Path) -> Result<Self, KeyFileError> {
        Ok(Self {
            app_id: read_text(dir, "app_id.txt")?,
            app_public_key: read_public_key(dir, "app_public_key.pem")?,
            alipay_private_key: read_private_key(dir, "alipay_private_key.pem")?,
        })
    }
}

/// What the UnionPay server needs from `unionpay/`.
#[derive(Debug)]
pub struct UnionpayKeyFiles {
    /// The merchant.
    pub mer_id: String,
    /// The merchant signing certificate; its decimal serial is the `certId`.
    pub merchant_cert: CertificateInfo,
    /// Signs responses and notifications.
    pub platform_key: RsaPrivateKey,
    /// Published in `signPubKeyCert`.
    pub platform_cert: CertificateInfo,
}

impl UnionpayKeyFiles {
    /// Loads from `dir` (the `unionpay/` sub-directory).
    ///
    /// # Errors
    /// [`KeyFileError`] naming the missing or bad file.
    pub fn load(dir: &Path) -> Result<Self, KeyFileError> {
        Ok(Self {
            mer_id: read_text(dir, "mer_id.txt")?,
            merchant_cert: read_certificate(dir, "merchant_sign_cert.pem")?,
            platform_key: read_private_key(dir, "platform_sign_key.pem")?,
            platform_cert: read_certificate(dir, "platform_sign_cert.pem")?,
        })
    }
}
