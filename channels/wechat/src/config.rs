//! The WeChat adapter's settings: read from the environment (secrets also from `*_FILE`), and
//! validated at start so that a bad key fails the process with the variable named, not the first
//! payment.
use channel_kit::settings::{self, Secret, SettingError};

use std::time::Duration;

use crate::platform_keys::{PlatformKeys, RefreshPolicy};
use crate::signature::{ApiV3Key, MerchantSigner, PlatformVerifier, TIMESTAMP_WINDOW_SECS};

/// Production API host; the sandbox is reached by changing only this and the keys.
pub const DEFAULT_API_BASE: &str = "https://api.mch.weixin.qq.com";

/// Where the payment and refund notifications of this adapter arrive. The kit's callback
/// listener serves every path under `/notify/`.
pub const PAYMENT_NOTIFY_PATH: &str = "/notify/payment";
pub const REFUND_NOTIFY_PATH: &str = "/notify/refund";

/// Everything read from the environment, before any key is parsed.
#[derive(Debug, Clone)]
pub struct WechatSettings {
    /// `WECHAT_API_BASE`.
    pub api_base: String,
    /// `WECHAT_MCHID`.
    pub mchid: String,
    /// `WECHAT_APPID`.
    pub appid: String,
    /// `WECHAT_MERCHANT_KEY`: the merchant API key, PKCS#8 PEM.
    pub merchant_key: Secret,
    /// `WECHAT_MERCHANT_SERIAL`: serial of the merchant API certificate.
    pub merchant_serial: String,
    /// `WECHAT_PLATFORM_PUBLIC_KEY`: WeChat Pay public keys (public-key mode), SPKI PEM; several
    /// PEM blocks when WeChat has issued a new one and both are in use.
    pub platform_public_key: Option<String>,
    /// `WECHAT_PLATFORM_SERIAL`: the `PUB_KEY_ID_…` of each public key, comma-separated, in the
    /// order of the PEM blocks.
    pub platform_serial: Option<String>,
    /// `WECHAT_CERTIFICATE_DOWNLOAD` (default true): use `/v3/certificates` (certificate mode).
    pub certificate_download: bool,
    /// `WECHAT_CERTIFICATE_REFRESH_SECS` (default 3600): periodic certificate refresh.
    pub certificate_refresh_secs: u64,
    /// `WECHAT_CERTIFICATE_MIN_REFRESH_SECS` (default 30): an unknown serial refreshes at most
    /// this often.
    pub certificate_min_refresh_secs: u64,
    /// `WECHAT_APIV3_KEY`: 32 ASCII characters.
    pub apiv3_key: Secret,
    /// `WECHAT_NOTIFY_URL`, else `ADAPTER_PUBLIC_CALLBACK_BASE` + `/notify/payment`.
    pub notify_url: String,
    /// `WECHAT_REFUND_NOTIFY_URL`, else derived like `notify_url` with `/notify/refund`.
    pub refund_notify_url: String,
    /// `WECHAT_TIMESTAMP_WINDOW_SECS` (default 300).
    pub timestamp_window_secs: i64,
}

fn bad(key: &str, reason: impl Into<String>) -> SettingError {
    SettingError {
        key: key.to_owned(),
        reason: reason.into(),
    }
}

/// The public notify URLs: explicit ones win; otherwise both derive from
/// `ADAPTER_PUBLIC_CALLBACK_BASE`, or the refund URL from the payment URL's base.
///
/// # Errors
/// A [`SettingError`] naming the variable to set when neither is given.
pub fn notify_urls(prefix: &str) -> Result<(String, String), SettingError> {
    let base = std::env::var("ADAPTER_PUBLIC_CALLBACK_BASE")
        .ok()
        .map(|b| b.trim_end_matches('/').to_owned());
    let payment_key = format!("{prefix}_NOTIFY_URL");
    let refund_key = format!("{prefix}_REFUND_NOTIFY_URL");
    let payment = match (std::env::var(&payment_key).ok(), &base) {
        (Some(url), _) => url,
        (None, Some(base)) => format!("{base}{PAYMENT_NOTIFY_PATH}"),
        (None, None) => {
            return Err(bad(
                &payment_key,
                format!("set {payment_key} or ADAPTER_PUBLIC_CALLBACK_BASE"),
            ));
        }
    };
    let refund = match (std::env::var(&refund_key).ok(), &base) {
        (Some(url), _) => url,
        (None, Some(base)) => format!("{base}{REFUND_NOTIFY_PATH}"),
        (None, None) => match payment.strip_suffix(PAYMENT_NOTIFY_PATH) {
            Some(base) => format!("{base}{REFUND_NOTIFY_PATH}"),
            None => {
                return Err(bad(
                    &refund_key,
                    format!("set {refund_key} or ADAPTER_PUBLIC_CALLBACK_BASE"),
                ));
            }
        },
    };
    for (key, url) in [(&payment_key, &payment), (&refund_key, &refund)] {
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(bad(key, "must be an absolute http(s) URL"));
        }
    }
    Ok((payment, refund))
}

/// `KEY` or `KEY_FILE` when either is set.
fn optional(key: &str) -> Result<Option<String>, SettingError> {
    if std::env::var(key).is_ok() || std::env::var(format!("{key}_FILE")).is_ok() {
        settings::required(key).map(Some)
    } else {
        Ok(None)
    }
}

fn flag(key: &str) -> Result<Option<bool>, SettingError> {
    match std::env::var(key) {
        Err(_) => Ok(None),
        Ok(v) => match v.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(Some(true)),
            "0" | "false" | "no" | "off" => Ok(Some(false)),
            _ => Err(bad(key, "must be true or false")),
        },
    }
}

fn seconds(key: &str, default: u64) -> Result<u64, SettingError> {
    match std::env::var(key) {
        Err(_) => Ok(default),
        Ok(v) => v
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|s| *s > 0)
            .ok_or_else(|| bad(key, "must be a positive number of seconds")),
    }
}

/// Splits concatenated PEM blocks.
fn pem_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        if line.starts_with("-----BEGIN ") {
            current.clear();
        }
        current.push_str(line);
        current.push('\n');
        if line.starts_with("-----END ") {
            blocks.push(std::mem::take(&mut current));
        }
    }
    blocks
}

impl WechatSettings {
    /// Reads every `WECHAT_*` variable.
    ///
    /// # Errors
    /// A [`SettingError`] naming the first missing or malformed variable.
    pub fn from_env() -> Result<Self, SettingError> {
        let (notify_url, refund_notify_url) = notify_urls("WECHAT")?;
        let window_key = "WECHAT_TIMESTAMP_WINDOW_SECS";
        let timestamp_window_secs = match std::env::var(window_key) {
            Ok(v) => v
                .trim()
                .parse::<i64>()
                .ok()
                .filter(|s| *s > 0)
                .ok_or_else(|| bad(window_key, "must be a positive number of seconds"))?,
            Err(_) => TIMESTAMP_WINDOW_SECS,
        };
        Ok(Self {
            api_base: settings::var_or("WECHAT_API_BASE", DEFAULT_API_BASE)
                .trim_end_matches('/')
                .to_owned(),
            mchid: settings::required("WECHAT_MCHID")?,
            appid: settings::required("WECHAT_APPID")?,
            merchant_key: settings::secret("WECHAT_MERCHANT_KEY")?,
            merchant_serial: settings::required("WECHAT_MERCHANT_SERIAL")?,
            platform_public_key: optional("WECHAT_PLATFORM_PUBLIC_KEY")?,
            platform_serial: optional("WECHAT_PLATFORM_SERIAL")?,
            certificate_download: flag("WECHAT_CERTIFICATE_DOWNLOAD")?.unwrap_or(true),
            certificate_refresh_secs: seconds("WECHAT_CERTIFICATE_REFRESH_SECS", 3600)?,
            certificate_min_refresh_secs: seconds("WECHAT_CERTIFICATE_MIN_REFRESH_SECS", 30)?,
            apiv3_key: settings::secret("WECHAT_APIV3_KEY")?,
            notify_url,
            refund_notify_url,
            timestamp_window_secs,
        })
    }
}

impl WechatSettings {
    /// The WeChat part of the production check (see `KitSettings::production_check`): the
    /// APIv3 key must not be weak (it decrypts every callback and certificate), and the key
    /// files must be private.
    ///
    /// # Errors
    /// A [`SettingError`] naming the refused setting.
    pub fn production_check(&self) -> Result<(), SettingError> {
        settings::refuse_weak("WECHAT_APIV3_KEY", &self.apiv3_key)?;
        settings::refuse_open_secret_files(&["WECHAT_MERCHANT_KEY", "WECHAT_APIV3_KEY"])
    }
}

/// The parsed keys: what the client and the callback verifier use.
#[derive(Debug)]
pub struct WechatKeys {
    pub signer: MerchantSigner,
    pub platform: PlatformKeys,
    pub apiv3_key: ApiV3Key,
}

impl WechatKeys {
    /// Parses every key, naming the variable whose value is unusable.
    ///
    /// # Errors
    /// A [`SettingError`] for the first key that does not parse.
    pub fn load(s: &WechatSettings) -> Result<Self, SettingError> {
        let signer =
            MerchantSigner::from_pkcs8_pem(&s.mchid, &s.merchant_serial, s.merchant_key.expose())
                .map_err(|e| bad("WECHAT_MERCHANT_KEY", e.to_string()))?;
        let mut verifier = PlatformVerifier::new().with_window_secs(s.timestamp_window_secs);
        let mut ids = Vec::new();
        match (&s.platform_public_key, &s.platform_serial) {
            (Some(pems), Some(serials)) => {
                let blocks = pem_blocks(pems);
                ids = serials
                    .split(',')
                    .map(|id| id.trim().to_owned())
                    .filter(|id| !id.is_empty())
                    .collect();
                if blocks.len() != ids.len() {
                    return Err(bad(
                        "WECHAT_PLATFORM_SERIAL",
                        format!(
                            "names {} key ids for {} public keys in WECHAT_PLATFORM_PUBLIC_KEY",
                            ids.len(),
                            blocks.len()
                        ),
                    ));
                }
                for (id, pem) in ids.iter().zip(&blocks) {
                    verifier
                        .add_public_key_pem(id, pem)
                        .map_err(|e| bad("WECHAT_PLATFORM_PUBLIC_KEY", e.to_string()))?;
                }
            }
            (None, None) if s.certificate_download => {}
            (None, None) => {
                return Err(bad(
                    "WECHAT_PLATFORM_PUBLIC_KEY",
                    "set WECHAT_PLATFORM_PUBLIC_KEY and WECHAT_PLATFORM_SERIAL, or leave WECHAT_CERTIFICATE_DOWNLOAD on: otherwise no answer verifies",
                ));
            }
            (Some(_), None) => {
                return Err(bad(
                    "WECHAT_PLATFORM_SERIAL",
                    "required with WECHAT_PLATFORM_PUBLIC_KEY",
                ));
            }
            (None, Some(_)) => {
                return Err(bad(
                    "WECHAT_PLATFORM_PUBLIC_KEY",
                    "required with WECHAT_PLATFORM_SERIAL",
                ));
            }
        }
        let apiv3_key = ApiV3Key::new(s.apiv3_key.expose())
            .map_err(|e| bad("WECHAT_APIV3_KEY", e.to_string()))?;
        let policy = RefreshPolicy {
            download: s.certificate_download,
            every: Duration::from_secs(s.certificate_refresh_secs),
            min_interval: Duration::from_secs(s.certificate_min_refresh_secs),
        };
        Ok(Self {
            signer,
            platform: PlatformKeys::new(verifier, ids, policy),
            apiv3_key,
        })
    }
}

#[cfg(test)]
mod tests {
    use rsa::RsaPrivateKey;
    use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};

    use super::*;

    fn settings(
        public_keys: Option<String>,
        serials: Option<&str>,
        download: bool,
    ) -> WechatSettings {
        let merchant = RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
        WechatSettings {
            api_base: DEFAULT_API_BASE.into(),
            mchid: "1900000001".into(),
            appid: "wxd678efh567hg6787".into(),
            merchant_key: Secret::new(merchant.to_pkcs8_pem(LineEnding::LF).unwrap().to_string()),
            merchant_serial: "5F1C72E2A8931B72A2E13AF8DEE92471EB397115".into(),
            platform_public_key: public_keys,
            platform_serial: serials.map(str::to_owned),
            certificate_download: download,
            certificate_refresh_secs: 3600,
            certificate_min_refresh_secs: 30,
            apiv3_key: Secret::new("a7cde1ZJB1kG2e7VfTs3jQzaWizur8Gb"),
            notify_url: "https://example.com/notify/payment".into(),
            refund_notify_url: "https://example.com/notify/refund".into(),
            timestamp_window_secs: 300,
        }
    }

    #[test]
    fn several_public_keys_are_trusted_under_their_ids_in_order() {
        let mut rng = rand::thread_rng();
        let pems: String = (0..2)
            .map(|_| {
                RsaPrivateKey::new(&mut rng, 2048)
                    .unwrap()
                    .to_public_key()
                    .to_public_key_pem(LineEnding::LF)
                    .unwrap()
            })
            .collect();
        let ids = "PUB_KEY_ID_0100000000000000000000000000000001, PUB_KEY_ID_0100000000000000000000000000000002";
        let keys = WechatKeys::load(&settings(Some(pems.clone()), Some(ids), false)).unwrap();
        assert!(
            keys.platform
                .contains("PUB_KEY_ID_0100000000000000000000000000000001")
        );
        assert!(
            keys.platform
                .contains("PUB_KEY_ID_0100000000000000000000000000000002")
        );
        assert_eq!(
            keys.platform.preferred_serial().as_deref(),
            Some("PUB_KEY_ID_0100000000000000000000000000000001")
        );
        // One id for two keys is a configuration error naming the variable.
        let e = WechatKeys::load(&settings(Some(pems), Some("PUB_KEY_ID_01"), false)).unwrap_err();
        assert_eq!(e.key, "WECHAT_PLATFORM_SERIAL");
    }

    #[test]
    fn production_refuses_a_weak_apiv3_key_naming_it() {
        let mut s = settings(None, None, true);
        assert!(
            s.production_check().is_ok(),
            "a random 32-character key passes"
        );
        for weak in [
            "00000000000000000000000000000000",
            "testtesttesttesttesttesttesttest",
            "short",
        ] {
            s.apiv3_key = Secret::new(weak);
            let e = s.production_check().unwrap_err();
            assert_eq!(e.key, "WECHAT_APIV3_KEY", "{weak}");
            assert!(e.reason.contains("ADAPTER_ENV=production"), "{}", e.reason);
        }
    }

    #[test]
    fn certificate_mode_alone_is_enough_but_nothing_at_all_is_refused() {
        let keys = WechatKeys::load(&settings(None, None, true)).unwrap();
        assert_eq!(keys.platform.preferred_serial(), None);
        let e = WechatKeys::load(&settings(None, None, false)).unwrap_err();
        assert_eq!(e.key, "WECHAT_PLATFORM_PUBLIC_KEY");
    }
}
