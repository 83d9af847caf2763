//! The UnionPay adapter's settings: read from the environment (keys and certificates also from
//! `*_FILE`), and validated at start so that a bad key fails the process with the variable named.
use channel_kit::settings::{self, Secret, SettingError};

use crate::signature::{MerchantSigner, PlatformVerifier, SigningCertificate};
use crate::wire::GATEWAY;

/// The production file host (reconciliation files, `txnType=76`), per the official SDK config.
pub const PRODUCTION_FILE_TRANS_URL: &str = "https://filedownload.95516.com/";
/// Where a non-production gateway (the sandbox) serves file transfer.
pub const FILE_TRANS_PATH: &str = "/gateway/api/fileTransRequest.do";

/// Everything read from the environment, before any key is parsed.
#[derive(Debug, Clone)]
pub struct UnionpaySettings {
    /// `UNIONPAY_GATEWAY_BASE` (default `https://gateway.95516.com`).
    pub gateway_base: String,
    /// `UNIONPAY_FILE_TRANS_URL`: default the production file host when the gateway is the
    /// production one, else the gateway base + `/gateway/api/fileTransRequest.do`.
    pub file_trans_url: String,
    /// `UNIONPAY_MER_ID`.
    pub mer_id: String,
    /// `UNIONPAY_SIGN_KEY`: the merchant signing key, PKCS#8 PEM.
    pub sign_key: Secret,
    /// `UNIONPAY_SIGN_CERT_ID`, else the decimal serial of `UNIONPAY_SIGN_CERT`.
    pub sign_cert_id: String,
    /// `UNIONPAY_PLATFORM_CERT`: a pinned UnionPay signing certificate (PEM).
    pub platform_cert: Option<String>,
    /// `UNIONPAY_MIDDLE_CERT`: UnionPay's middle certificate, issuer of the signing certificates.
    pub middle_cert: Option<String>,
    /// `UNIONPAY_ROOT_CERT`: UnionPay's root certificate, issuer of the middle one (required with
    /// `UNIONPAY_MIDDLE_CERT`: the trust path ends at a configured root).
    pub root_cert: Option<String>,
    /// `UNIONPAY_ACCEPT_TEST_CN`: also accept the test environment's `00040000:SIGN` subjects.
    pub accept_test_cn: bool,
    /// `UNIONPAY_BACK_URL`, else `ADAPTER_PUBLIC_CALLBACK_BASE` + `/notify/payment`.
    pub back_url: String,
    /// `UNIONPAY_REFUND_BACK_URL`, else `ADAPTER_PUBLIC_CALLBACK_BASE` + `/notify/refund`.
    pub refund_back_url: String,
    /// `UNIONPAY_FRONT_URL`, else `ADAPTER_PUBLIC_CALLBACK_BASE` + `/notify/front`: where the
    /// payer's browser returns, carrying the same signed result as the back notification.
    pub front_url: Option<String>,
    /// `UNIONPAY_CHANNEL_TYPE`: `07` (PC, default) or `08` (mobile).
    pub channel_type: String,
    /// `UNIONPAY_FRONT_REGISTER`: when true, Prepay also POSTs the signed front form itself, so
    /// the trade exists without a browser (sandbox end-to-end runs). Default: false for UnionPay's
    /// own gateways (production `gateway.95516.com` and test `gateway.test.95516.com`), where the
    /// payer's browser must be the one to submit the form (its submission of the same
    /// orderId/txnTime would be refused as a duplicate), true for any other host.
    pub front_register: bool,
}

fn bad(key: &str, reason: impl Into<String>) -> SettingError {
    SettingError {
        key: key.to_owned(),
        reason: reason.into(),
    }
}

/// `KEY` or `KEY_FILE` when either is set.
fn optional(key: &str) -> Result<Option<String>, SettingError> {
    if std::env::var(key).is_ok() || std::env::var(format!("{key}_FILE")).is_ok() {
        settings::required(key).map(Some)
    } else {
        Ok(None)
    }
}

/// A boolean setting, `None` when unset.
fn flag(key: &str) -> Result<Option<bool>, SettingError> {
    match std::env::var(key) {
        Err(_) => Ok(None),
        Ok(v) => match v.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(Some(true)),
            "0" | "false" | "no" | "off" | "" => Ok(Some(false)),
            _ => Err(bad(key, "must be true or false")),
        },
    }
}

fn url(key: &str, base: Option<&str>, path: &str) -> Result<String, SettingError> {
    let url = match (std::env::var(key), base) {
        (Ok(url), _) => url,
        (Err(_), Some(base)) => format!("{base}{path}"),
        (Err(_), None) => {
            return Err(bad(
                key,
                format!("set {key} or ADAPTER_PUBLIC_CALLBACK_BASE"),
            ));
        }
    };
    if url.starts_with("https://") || url.starts_with("http://") {
        Ok(url)
    } else {
        Err(bad(key, "must be an absolute http(s) URL"))
    }
}

/// Whether `base` is one of UnionPay's own hosts (`…95516.com`), production or test.
pub fn is_unionpay_host(base: &str) -> bool {
    let host = base
        .split_once("://")
        .map_or(base, |(_, rest)| rest)
        .split(['/', ':'])
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    host == "95516.com" || host.ends_with(".95516.com")
}

impl UnionpaySettings {
    /// Reads every `UNIONPAY_*` variable.
    ///
    /// # Errors
    /// A [`SettingError`] naming the first missing or malformed variable.
    pub fn from_env() -> Result<Self, SettingError> {
        let callback_base = std::env::var("ADAPTER_PUBLIC_CALLBACK_BASE")
            .ok()
            .map(|b| b.trim_end_matches('/').to_owned());
        let base = callback_base.as_deref();
        let gateway_base = settings::var_or("UNIONPAY_GATEWAY_BASE", GATEWAY)
            .trim_end_matches('/')
            .to_owned();
        let file_trans_url = match std::env::var("UNIONPAY_FILE_TRANS_URL") {
            Ok(url) => url,
            Err(_) if gateway_base == GATEWAY => PRODUCTION_FILE_TRANS_URL.to_owned(),
            Err(_) => format!("{gateway_base}{FILE_TRANS_PATH}"),
        };
        let sign_cert_id = match optional("UNIONPAY_SIGN_CERT_ID")? {
            Some(id) => id,
            None => match optional("UNIONPAY_SIGN_CERT")? {
                Some(pem) => SigningCertificate::from_pem(&pem)
                    .map_err(|e| bad("UNIONPAY_SIGN_CERT", e.to_string()))?
                    .cert_id()
                    .to_owned(),
                None => {
                    return Err(bad(
                        "UNIONPAY_SIGN_CERT_ID",
                        "set UNIONPAY_SIGN_CERT_ID(_FILE) or UNIONPAY_SIGN_CERT(_FILE)",
                    ));
                }
            },
        };
        if sign_cert_id.is_empty() || !sign_cert_id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad(
                "UNIONPAY_SIGN_CERT_ID",
                "must be the decimal certificate serial",
            ));
        }
        let channel_type = settings::var_or("UNIONPAY_CHANNEL_TYPE", "07");
        if channel_type != "07" && channel_type != "08" {
            return Err(bad(
                "UNIONPAY_CHANNEL_TYPE",
                "must be 07 (PC) or 08 (mobile)",
            ));
        }
        let front_url = match (std::env::var("UNIONPAY_FRONT_URL"), base) {
            (Ok(url), _) => Some(url),
            (Err(_), Some(base)) => Some(format!("{base}/notify/front")),
            (Err(_), None) => None,
        };
        let front_register =
            flag("UNIONPAY_FRONT_REGISTER")?.unwrap_or(!is_unionpay_host(&gateway_base));
        Ok(Self {
            gateway_base,
            file_trans_url,
            mer_id: settings::required("UNIONPAY_MER_ID")?,
            sign_key: settings::secret("UNIONPAY_SIGN_KEY")?,
            sign_cert_id,
            platform_cert: optional("UNIONPAY_PLATFORM_CERT")?,
            middle_cert: optional("UNIONPAY_MIDDLE_CERT")?,
            root_cert: optional("UNIONPAY_ROOT_CERT")?,
            accept_test_cn: flag("UNIONPAY_ACCEPT_TEST_CN")?.unwrap_or(false),
            back_url: url("UNIONPAY_BACK_URL", base, "/notify/payment")?,
            refund_back_url: url("UNIONPAY_REFUND_BACK_URL", base, "/notify/refund")?,
            front_url,
            channel_type,
            front_register,
        })
    }
}

impl UnionpaySettings {
    /// The UnionPay part of the production check (see `KitSettings::production_check`): the
    /// test environment's certificates must not be trusted, and the signing key file must be
    /// private.
    ///
    /// # Errors
    /// A [`SettingError`] naming the refused setting.
    pub fn production_check(&self) -> Result<(), SettingError> {
        if self.accept_test_cn {
            return Err(bad(
                "UNIONPAY_ACCEPT_TEST_CN",
                "is true; refused with ADAPTER_ENV=production: it trusts the test environment's \
                 certificates",
            ));
        }
        settings::refuse_open_secret_files(&["UNIONPAY_SIGN_KEY"])
    }
}

/// The parsed key and trust anchors.
#[derive(Debug)]
pub struct UnionpayKeys {
    pub signer: MerchantSigner,
    pub verifier: PlatformVerifier,
}

impl UnionpayKeys {
    /// Parses the signing key and the certificates, naming the variable whose value is unusable.
    ///
    /// # Errors
    /// A [`SettingError`] for the first unusable value, or when nothing would be trusted.
    pub fn load(s: &UnionpaySettings) -> Result<Self, SettingError> {
        let signer = MerchantSigner::from_pkcs8_pem(s.sign_key.expose(), &s.sign_cert_id)
            .map_err(|e| bad("UNIONPAY_SIGN_KEY", e.to_string()))?;
        let mut verifier = PlatformVerifier::new().accept_test_cn(s.accept_test_cn);
        if let Some(pem) = &s.platform_cert {
            verifier
                .add_pinned_certificate_pem(pem)
                .map_err(|e| bad("UNIONPAY_PLATFORM_CERT", e.to_string()))?;
        }
        match (&s.middle_cert, &s.root_cert) {
            (Some(middle), Some(root)) => {
                verifier
                    .add_root_pem(root)
                    .map_err(|e| bad("UNIONPAY_ROOT_CERT", e.to_string()))?;
                verifier
                    .add_middle_pem(middle)
                    .map_err(|e| bad("UNIONPAY_MIDDLE_CERT", e.to_string()))?;
            }
            (Some(_), None) => {
                return Err(bad(
                    "UNIONPAY_ROOT_CERT",
                    "UNIONPAY_MIDDLE_CERT needs UNIONPAY_ROOT_CERT(_FILE): a trust path ends at a configured root",
                ));
            }
            (None, Some(_)) => {
                return Err(bad(
                    "UNIONPAY_MIDDLE_CERT",
                    "UNIONPAY_ROOT_CERT needs UNIONPAY_MIDDLE_CERT(_FILE): signing certificates are issued by the middle one",
                ));
            }
            (None, None) => {}
        }
        if s.platform_cert.is_none() && s.middle_cert.is_none() {
            return Err(bad(
                "UNIONPAY_PLATFORM_CERT",
                "set UNIONPAY_PLATFORM_CERT(_FILE) or UNIONPAY_MIDDLE_CERT(_FILE): otherwise no answer verifies",
            ));
        }
        Ok(Self { signer, verifier })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn production_refuses_the_test_environments_certificates() {
        let mut s = UnionpaySettings {
            gateway_base: "https://gateway.95516.com".into(),
            file_trans_url: PRODUCTION_FILE_TRANS_URL.into(),
            mer_id: "777290058110048".into(),
            sign_key: Secret::new("(not parsed by the check)"),
            sign_cert_id: "69903319369".into(),
            platform_cert: None,
            middle_cert: None,
            root_cert: None,
            accept_test_cn: false,
            back_url: "https://example.com/notify/payment".into(),
            refund_back_url: "https://example.com/notify/refund".into(),
            front_url: None,
            channel_type: "07".into(),
            front_register: false,
        };
        assert!(s.production_check().is_ok());
        s.accept_test_cn = true;
        assert_eq!(
            s.production_check().unwrap_err().key,
            "UNIONPAY_ACCEPT_TEST_CN"
        );
    }

    #[test]
    fn front_register_is_off_for_unionpays_own_gateways() {
        // The payer's browser submits the same orderId/txnTime; a second submission by the adapter
        // would be refused as a duplicate by the real gateways, test included.
        assert!(is_unionpay_host("https://gateway.95516.com"));
        assert!(is_unionpay_host("https://gateway.test.95516.com"));
        assert!(is_unionpay_host("https://GATEWAY.TEST.95516.COM:443/"));
        assert!(!is_unionpay_host("http://127.0.0.1:8093"));
        assert!(!is_unionpay_host("https://95516.com.example.org"));
    }
}
