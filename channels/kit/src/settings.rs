//! Settings shared by every adapter (`ADAPTER_*`) and helpers to read key material from files
//! or the environment. Secrets never print.
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// A secret value (key material, API keys) that never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, thiserror::Error)]
#[error("setting {key}: {reason}")]
pub struct SettingError {
    pub key: String,
    pub reason: String,
}

fn bad(key: &str, reason: impl Into<String>) -> SettingError {
    SettingError {
        key: key.to_owned(),
        reason: reason.into(),
    }
}

/// A plain setting, with a default.
pub fn var_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_owned())
}

/// A required plain setting: `KEY`, or the contents of the file named by `KEY_FILE`.
pub fn required(key: &str) -> Result<String, SettingError> {
    secret(key).map(|s| s.0)
}

/// A secret: `KEY` directly, or read from the file named by `KEY_FILE` (Kubernetes Secrets
/// mount as files). Surrounding whitespace of a file's content is trimmed.
pub fn secret(key: &str) -> Result<Secret, SettingError> {
    if let Ok(v) = std::env::var(key) {
        return Ok(Secret(v));
    }
    let file_key = format!("{key}_FILE");
    match std::env::var(&file_key) {
        Ok(path) => std::fs::read_to_string(&path)
            .map(|s| Secret(s.trim().to_owned()))
            .map_err(|e| bad(&file_key, format!("cannot read {path}: {e}"))),
        Err(_) => Err(bad(key, format!("set {key} or {file_key}"))),
    }
}

/// A bearer token: a [`secret`] of at least 16 printable ASCII characters (it travels in an
/// HTTP/2 header).
pub fn token(key: &str) -> Result<Secret, SettingError> {
    let t = secret(key)?;
    if t.0.len() < 16 || !t.0.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad(key, "must be at least 16 printable ASCII characters"));
    }
    Ok(t)
}

pub fn parse_addr(key: &str, default: &str) -> Result<SocketAddr, SettingError> {
    var_or(key, default)
        .parse()
        .map_err(|e| bad(key, format!("not a socket address: {e}")))
}

pub fn parse_ms(key: &str, default: u64) -> Result<Duration, SettingError> {
    match std::env::var(key) {
        Ok(v) => v
            .parse::<u64>()
            .map(Duration::from_millis)
            .map_err(|e| bad(key, format!("not milliseconds: {e}"))),
        Err(_) => Ok(Duration::from_millis(default)),
    }
}

/// A positive count, with a default.
pub fn parse_count(key: &str, default: usize) -> Result<usize, SettingError> {
    match std::env::var(key) {
        Ok(v) => match v.parse::<usize>() {
            Ok(0) => Err(bad(key, "must be at least 1")),
            Ok(n) => Ok(n),
            Err(e) => Err(bad(key, format!("not a count: {e}"))),
        },
        Err(_) => Ok(default),
    }
}

/// `ADAPTER_ENV`: where the adapter runs. Production refuses to start with secrets only a
/// developer machine may use (see [`KitSettings::production_check`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AdapterEnv {
    #[default]
    Development,
    Production,
}

impl AdapterEnv {
    /// `ADAPTER_ENV`: `development` (default) or `production`.
    ///
    /// # Errors
    /// A [`SettingError`] for any other value.
    pub fn from_env() -> Result<Self, SettingError> {
        match std::env::var("ADAPTER_ENV") {
            Err(_) => Ok(Self::Development),
            Ok(v) => match v.trim() {
                "development" => Ok(Self::Development),
                "production" => Ok(Self::Production),
                _ => Err(bad("ADAPTER_ENV", "must be development or production")),
            },
        }
    }
}

/// Why `s` is too weak for a production secret, or `None`: the same rules as payd's
/// `config::weak_secret` (the adapters do not depend on payd), so one generated value (e.g.
/// `openssl rand -base64 32`) passes both.
pub fn weak_secret(s: &str) -> Option<&'static str> {
    if s.len() < 32 {
        return Some("is shorter than 32 characters");
    }
    let distinct: std::collections::BTreeSet<char> = s.chars().collect();
    if distinct.len() < 8 {
        return Some("has fewer than 8 distinct characters");
    }
    let lower = s.to_ascii_lowercase();
    [
        "test", "dev", "changeme", "secret", "example", "password", "default",
    ]
    .iter()
    .any(|w| lower.contains(w))
    .then_some(
        "contains a placeholder word (test, dev, changeme, secret, example, password, default)",
    )
}

/// Refuses a weak `secret` read from `key`, naming the key.
///
/// # Errors
/// A [`SettingError`] on `key` saying what is weak.
pub fn refuse_weak(key: &str, secret: &Secret) -> Result<(), SettingError> {
    match weak_secret(secret.expose()) {
        Some(w) => Err(bad(
            key,
            format!("{w}; refused with ADAPTER_ENV=production"),
        )),
        None => Ok(()),
    }
}

/// Refuses a secret file that other users may read or write (`chmod 600`, or a Kubernetes
/// Secret volume's `defaultMode: 0400`, fixes it). `key_file` is the setting that named `path`.
///
/// # Errors
/// A [`SettingError`] on `key_file` when the file is open to others or cannot be inspected.
pub fn refuse_open_file(key_file: &str, path: &std::path::Path) -> Result<(), SettingError> {
    use std::os::unix::fs::PermissionsExt as _;
    // `metadata` follows symlinks: Kubernetes mounts each key as a link into `..data/`.
    let mode = std::fs::metadata(path)
        .map_err(|e| bad(key_file, format!("cannot inspect {}: {e}", path.display())))?
        .permissions()
        .mode();
    if mode & 0o006 != 0 {
        return Err(bad(
            key_file,
            format!(
                "{} is open to other users (mode {:04o}); refused with ADAPTER_ENV=production: \
                 chmod 600 it",
                path.display(),
                mode & 0o7777
            ),
        ));
    }
    Ok(())
}

/// [`refuse_open_file`] for each of `keys` given as a file (`KEY_FILE` set and `KEY` not, as
/// [`secret`] reads them).
///
/// # Errors
/// The first file open to others.
pub fn refuse_open_secret_files(keys: &[&str]) -> Result<(), SettingError> {
    for key in keys {
        if std::env::var_os(key).is_some() {
            continue;
        }
        let key_file = format!("{key}_FILE");
        if let Some(path) = std::env::var_os(&key_file) {
            refuse_open_file(&key_file, std::path::Path::new(&path))?;
        }
    }
    Ok(())
}

/// What every adapter process needs regardless of platform.
#[derive(Debug, Clone)]
pub struct KitSettings {
    /// `ADAPTER_ENV` (default development).
    pub env: AdapterEnv,
    /// `ADAPTER_GRPC_LISTEN`: where the core calls `channel.v1.ChannelAdapter`.
    pub grpc_listen: SocketAddr,
    /// `ADAPTER_CALLBACK_LISTEN`: where the platform's callbacks arrive (behind the ingress).
    pub callback_listen: SocketAddr,
    /// `ADAPTER_METRICS_LISTEN`: `/metrics` and `/healthz`, kept off the public callback port.
    pub metrics_listen: SocketAddr,
    /// `ADAPTER_CORE_ENDPOINT`: payd's gRPC endpoint for `ChannelEvents`.
    pub core_endpoint: String,
    /// `ADAPTER_CORE_TOKEN` (or `_FILE`): this adapter's secret for payd's `ChannelEvents`;
    /// payd maps it to the one channel this adapter may report for.
    pub core_token: Secret,
    /// `ADAPTER_GRPC_TOKEN` (or `_FILE`): payd's credential for this adapter's
    /// `channel.v1.ChannelAdapter` (`authorization: Bearer …`); every other caller is refused.
    pub grpc_token: Secret,
    /// `ADAPTER_FORWARD_BUDGET_MS`: how long a callback may spend getting the core's ack before
    /// the platform is told to retry (WeChat wants an answer within 5 s).
    pub forward_budget: Duration,
    /// `ADAPTER_CALLBACK_HEADER_TIMEOUT_MS`: a callback connection that has not sent a complete
    /// request header within this is closed (slowloris).
    pub callback_header_timeout: Duration,
    /// `ADAPTER_CALLBACK_BODY_TIMEOUT_MS`: time to receive a callback's body once its header is
    /// in; slower bodies get the platform's failure reply.
    pub callback_body_timeout: Duration,
    /// `ADAPTER_CALLBACK_MAX_IN_FLIGHT` (default 256): verified callbacks being forwarded to the
    /// core at once; more are shed at once with the platform's failure reply (the platform
    /// retries) instead of queueing. Unverified callbacks never take one of these.
    pub callback_max_in_flight: usize,
    /// `ADAPTER_CALLBACK_MAX_RECEIVING` (default 256): callback bodies being read at once (each
    /// at most `callback_max_body_bytes`); more are shed.
    pub callback_max_receiving: usize,
    /// `ADAPTER_CALLBACK_MAX_VERIFYING` (default twice the CPUs): callbacks being verified at
    /// once; more are shed. Verification is CPU work, so more than this only queues for the CPU.
    pub callback_max_verifying: usize,
    /// `ADAPTER_CALLBACK_MAX_BODY_BYTES` (default 65536): a callback body larger than this is
    /// refused with HTTP 413 — unread when its `Content-Length` says so, else once the bytes
    /// read pass it. Platform callbacks are a few KiB; this bounds what a forged one can make
    /// the listener hold.
    pub callback_max_body_bytes: usize,
    /// `ADAPTER_PLATFORM_TIMEOUT_MS`: per-request timeout towards the platform.
    pub platform_timeout: Duration,
    /// `ADAPTER_SHUTDOWN_GRACE_MS`.
    pub shutdown_grace: Duration,
}

impl KitSettings {
    /// Reads `ADAPTER_*` with defaults for the given default ports.
    pub fn from_env(
        grpc_port: u16,
        callback_port: u16,
        metrics_port: u16,
    ) -> Result<Self, SettingError> {
        Ok(Self {
            env: AdapterEnv::from_env()?,
            grpc_listen: parse_addr("ADAPTER_GRPC_LISTEN", &format!("127.0.0.1:{grpc_port}"))?,
            callback_listen: parse_addr(
                "ADAPTER_CALLBACK_LISTEN",
                &format!("127.0.0.1:{callback_port}"),
            )?,
            metrics_listen: parse_addr(
                "ADAPTER_METRICS_LISTEN",
                &format!("127.0.0.1:{metrics_port}"),
            )?,
            core_endpoint: var_or("ADAPTER_CORE_ENDPOINT", "http://127.0.0.1:50051"),
            core_token: secret("ADAPTER_CORE_TOKEN")?,
            grpc_token: token("ADAPTER_GRPC_TOKEN")?,
            forward_budget: parse_ms("ADAPTER_FORWARD_BUDGET_MS", 3_000)?,
            callback_header_timeout: parse_ms("ADAPTER_CALLBACK_HEADER_TIMEOUT_MS", 5_000)?,
            callback_body_timeout: parse_ms("ADAPTER_CALLBACK_BODY_TIMEOUT_MS", 5_000)?,
            callback_max_in_flight: parse_count("ADAPTER_CALLBACK_MAX_IN_FLIGHT", 256)?,
            callback_max_receiving: parse_count("ADAPTER_CALLBACK_MAX_RECEIVING", 256)?,
            callback_max_verifying: parse_count(
                "ADAPTER_CALLBACK_MAX_VERIFYING",
                2 * std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
            )?,
            callback_max_body_bytes: parse_count("ADAPTER_CALLBACK_MAX_BODY_BYTES", 64 * 1024)?,
            platform_timeout: parse_ms("ADAPTER_PLATFORM_TIMEOUT_MS", 10_000)?,
            shutdown_grace: parse_ms("ADAPTER_SHUTDOWN_GRACE_MS", 10_000)?,
        })
    }

    /// With `ADAPTER_ENV=production`, refuses to start with a weak `ADAPTER_CORE_TOKEN` or
    /// `ADAPTER_GRPC_TOKEN` (see [`weak_secret`]), one token used for both directions, or a
    /// token file open to other users; then runs `channel_check`, the adapter's own checks of
    /// its platform secrets. In development it checks nothing: the sandbox's keys are fine there.
    ///
    /// # Errors
    /// A [`SettingError`] naming the first refused setting.
    pub fn production_check(
        &self,
        channel_check: impl FnOnce() -> Result<(), SettingError>,
    ) -> Result<(), SettingError> {
        if self.env != AdapterEnv::Production {
            return Ok(());
        }
        refuse_weak("ADAPTER_CORE_TOKEN", &self.core_token)?;
        refuse_weak("ADAPTER_GRPC_TOKEN", &self.grpc_token)?;
        if self.core_token == self.grpc_token {
            return Err(bad(
                "ADAPTER_GRPC_TOKEN",
                "is the same as ADAPTER_CORE_TOKEN; refused with ADAPTER_ENV=production: each \
                 direction needs its own token",
            ));
        }
        refuse_open_secret_files(&["ADAPTER_CORE_TOKEN", "ADAPTER_GRPC_TOKEN"])?;
        channel_check()
    }

    /// An HTTP client for platform calls, with the configured timeout.
    pub fn http_client(&self) -> Result<reqwest::Client, reqwest::Error> {
        reqwest::Client::builder()
            .timeout(self.platform_timeout)
            .connect_timeout(Duration::from_secs(3))
            .build()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const STRONG_A: &str = "q8Zr3vN1xK7bW2mY5tH9cJ4pL6fD0sGa";
    const STRONG_B: &str = "Vb7Nq2Lm9Xc4Rt6Yh1Kp8Wz3Fs5Jd0Ge";

    fn production(core: &str, grpc: &str) -> KitSettings {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        KitSettings {
            env: AdapterEnv::Production,
            grpc_listen: any,
            callback_listen: any,
            metrics_listen: any,
            core_endpoint: "http://127.0.0.1:50051".into(),
            core_token: Secret::new(core),
            grpc_token: Secret::new(grpc),
            forward_budget: Duration::from_secs(3),
            callback_header_timeout: Duration::from_secs(5),
            callback_body_timeout: Duration::from_secs(5),
            callback_max_in_flight: 256,
            callback_max_receiving: 256,
            callback_max_verifying: 4,
            callback_max_body_bytes: 64 * 1024,
            platform_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(10),
        }
    }

    fn refused_key(r: Result<(), SettingError>) -> (String, String) {
        let e = r.unwrap_err();
        (e.key, e.reason)
    }

    #[test]
    fn production_refuses_a_short_placeholder_or_repetitive_token_naming_it() {
        for (core, grpc, key, why) in [
            ("", STRONG_B, "ADAPTER_CORE_TOKEN", "shorter than 32"),
            (
                "test-core-token-0123456789",
                STRONG_B,
                "ADAPTER_CORE_TOKEN",
                "shorter than 32",
            ),
            (
                STRONG_A,
                "changeme-changeme-changeme-changeme",
                "ADAPTER_GRPC_TOKEN",
                "placeholder",
            ),
            (
                STRONG_A,
                "abababababababababababababababab",
                "ADAPTER_GRPC_TOKEN",
                "distinct",
            ),
            (
                STRONG_A,
                "dev-grpc-token-0123456789abcdefghij",
                "ADAPTER_GRPC_TOKEN",
                "placeholder",
            ),
        ] {
            let (k, reason) = refused_key(production(core, grpc).production_check(|| Ok(())));
            assert_eq!(k, key, "{core} / {grpc}");
            assert!(reason.contains(why), "{reason}");
            assert!(reason.contains("ADAPTER_ENV=production"), "{reason}");
        }
    }

    #[test]
    fn production_refuses_one_token_for_both_directions() {
        let (k, reason) = refused_key(production(STRONG_A, STRONG_A).production_check(|| Ok(())));
        assert_eq!(k, "ADAPTER_GRPC_TOKEN");
        assert!(reason.contains("same as ADAPTER_CORE_TOKEN"), "{reason}");
    }

    #[test]
    fn production_with_strong_tokens_runs_the_channel_check_and_development_checks_nothing() {
        let strong = production(STRONG_A, STRONG_B);
        assert!(strong.production_check(|| Ok(())).is_ok());
        let (k, _) = refused_key(strong.production_check(|| Err(bad("WECHAT_APIV3_KEY", "weak"))));
        assert_eq!(k, "WECHAT_APIV3_KEY");

        let mut dev = production("short", "short");
        dev.env = AdapterEnv::Development;
        let mut ran = false;
        assert!(
            dev.production_check(|| {
                ran = true;
                Ok(())
            })
            .is_ok()
        );
        assert!(!ran, "development runs no channel check");
    }

    #[test]
    fn a_secret_file_open_to_other_users_is_refused_and_a_private_one_passes() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("grpc-token");
        std::fs::write(&path, STRONG_A).unwrap();

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (k, reason) = refused_key(refuse_open_file("ADAPTER_GRPC_TOKEN_FILE", &path));
        assert_eq!(k, "ADAPTER_GRPC_TOKEN_FILE");
        assert!(reason.contains("mode 0644"), "{reason}");

        // Group-readable is how a Kubernetes fsGroup shares a Secret with the container user.
        for mode in [0o600, 0o400, 0o440] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            assert!(
                refuse_open_file("ADAPTER_GRPC_TOKEN_FILE", &path).is_ok(),
                "{mode:o}"
            );
        }
        let (k, _) = refused_key(refuse_open_file(
            "ADAPTER_GRPC_TOKEN_FILE",
            &dir.path().join("missing"),
        ));
        assert_eq!(k, "ADAPTER_GRPC_TOKEN_FILE");
    }
}
