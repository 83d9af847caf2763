//! The Alipay adapter's settings: read from the environment (keys also from `*_FILE`), and
//! validated at start so that a bad key fails the process with the variable named.
use channel_kit::settings::{self, Secret, SettingError};

use crate::signature::{AlipayVerifier, AppSigner};
use crate::wire::GATEWAY;

/// Where Alipay's notifications for this adapter arrive (payments and refunds alike: Alipay
/// sends refund notifications to the trade's `notify_url`).
pub const NOTIFY_PATH: &str = "/notify/payment";

/// Everything read from the environment, before any key is parsed.
#[derive(Debug, Clone)]
pub struct AlipaySettings {
    /// `ALIPAY_GATEWAY` (default the production `gateway.do`).
    pub gateway: String,
    /// `ALIPAY_APP_ID`.
    pub app_id: String,
    /// `ALIPAY_APP_PRIVATE_KEY`: PKCS#1 or PKCS#8 PEM, or the bare Base64 the console shows.
    pub app_private_key: Secret,
    /// `ALIPAY_PUBLIC_KEY`: Alipay's public key, SPKI PEM or bare Base64.
    pub alipay_public_key: String,
    /// `ALIPAY_NOTIFY_URL`, else `ADAPTER_PUBLIC_CALLBACK_BASE` + `/notify/payment`.
    pub notify_url: String,
    /// `ALIPAY_RETURN_URL` (optional): where page pay sends the browser back.
    pub return_url: Option<String>,
}

fn bad(key: &str, reason: impl Into<String>) -> SettingError {
    SettingError {
        key: key.to_owned(),
        reason: reason.into(),
    }
}

impl AlipaySettings {
    /// Reads every `ALIPAY_*` variable.
    ///
    /// # Errors
    /// A [`SettingError`] naming the first missing or malformed variable.
    pub fn from_env() -> Result<Self, SettingError> {
        let notify_url = match std::env::var("ALIPAY_NOTIFY_URL") {
            Ok(url) => url,
            Err(_) => match std::env::var("ADAPTER_PUBLIC_CALLBACK_BASE") {
                Ok(base) => format!("{}{NOTIFY_PATH}", base.trim_end_matches('/')),
                Err(_) => {
                    return Err(bad(
                        "ALIPAY_NOTIFY_URL",
                        "set ALIPAY_NOTIFY_URL or ADAPTER_PUBLIC_CALLBACK_BASE",
                    ));
                }
            },
        };
        if !(notify_url.starts_with("https://") || notify_url.starts_with("http://")) {
            return Err(bad("ALIPAY_NOTIFY_URL", "must be an absolute http(s) URL"));
        }
        Ok(Self {
            gateway: settings::var_or("ALIPAY_GATEWAY", GATEWAY),
            app_id: settings::required("ALIPAY_APP_ID")?,
            app_private_key: settings::secret("ALIPAY_APP_PRIVATE_KEY")?,
            alipay_public_key: settings::required("ALIPAY_PUBLIC_KEY")?,
            notify_url,
            return_url: std::env::var("ALIPAY_RETURN_URL").ok(),
        })
    }
}

impl AlipaySettings {
    /// The Alipay part of the production check (see `KitSettings::production_check`): the app
    /// private key, when read from a file, must be private to the adapter's user. (Its size is
    /// checked for every environment when it is loaded.)
    ///
    /// # Errors
    /// A [`SettingError`] naming the refused setting.
    pub fn production_check(&self) -> Result<(), SettingError> {
        settings::refuse_open_secret_files(&["ALIPAY_APP_PRIVATE_KEY"])
    }
}

/// The parsed keys.
#[derive(Debug)]
pub struct AlipayKeys {
    pub signer: AppSigner,
    pub verifier: AlipayVerifier,
}

impl AlipayKeys {
    /// Parses both keys, naming the variable whose value is unusable.
    ///
    /// # Errors
    /// A [`SettingError`] for the first key that does not parse.
    pub fn load(s: &AlipaySettings) -> Result<Self, SettingError> {
        let private = s.app_private_key.expose();
        let signer = if private.contains("-----BEGIN") {
            AppSigner::from_pem(private)
        } else {
            AppSigner::from_base64_der(private)
        }
        .map_err(|e| bad("ALIPAY_APP_PRIVATE_KEY", e.to_string()))?;
        let public = &s.alipay_public_key;
        let verifier = if public.contains("-----BEGIN CERTIFICATE") {
            AlipayVerifier::from_certificate_pem(public)
        } else if public.contains("-----BEGIN") {
            AlipayVerifier::from_public_key_pem(public)
        } else {
            AlipayVerifier::from_public_key_base64(public)
        }
        .map_err(|e| bad("ALIPAY_PUBLIC_KEY", e.to_string()))?;
        Ok(Self { signer, verifier })
    }
}
