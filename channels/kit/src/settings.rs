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

/// What every adapter process needs regardless of platform.
#[derive(Debug, Clone)]
pub struct KitSettings {
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

    /// An HTTP client for platform calls, with the configured timeout.
    pub fn http_client(&self) -> Result<reqwest::Client, reqwest::Error> {
        reqwest::Client::builder()
            .timeout(self.platform_timeout)
            .connect_timeout(Duration::from_secs(3))
            .build()
    }
}
