//! `payd` settings: defaults that work on a developer machine, overridden by an optional TOML
//! file (`PAYD_CONFIG=/path/payd.toml`) and then by `PAYD_*` environment variables.
//! Validated once at start; an error names the bad key.
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::domain::OrderLimits;

/// A string that never prints (connection URLs carry passwords).
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
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

/// One enabled adapter process.
#[derive(Debug, Clone)]
pub struct AdapterEndpoint {
    pub channel: crate::domain::Channel,
    /// Its `channel.v1.ChannelAdapter` gRPC endpoint.
    pub url: String,
    /// What payd presents to it as `authorization: Bearer …`.
    pub token: Secret,
}

/// Every setting, with its environment variable in the doc line.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// `PAYD_LISTEN`: gRPC listen address.
    pub listen: SocketAddr,
    /// `PAYD_METRICS_LISTEN`: Prometheus `/metrics` and `/healthz` HTTP address.
    pub metrics_listen: SocketAddr,
    /// `PAYD_DATABASE_URL`: Postgres URL (libpq syntax). Its database must exist.
    pub database_url: Secret,
    /// `PAYD_DATABASE_POOL_SIZE`: connections per process.
    pub database_pool_size: u32,
    /// `PAYD_DATABASE_CONNECT_TIMEOUT_MS`: how long a request waits for a pooled connection.
    pub database_connect_timeout_ms: u64,
    /// `PAYD_DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS`: Postgres ends a session of payd's that
    /// sits idle inside a transaction this long (a stopped replica), releasing its row locks;
    /// 0 turns it off. Keep it below `PAYD_LOCK_TTL_MS`, so that a stopped holder's row locks
    /// are gone before its order lock expires and another replica takes the order.
    pub database_idle_in_transaction_timeout_ms: u64,
    /// `PAYD_SINGLE_STATEMENT_WRITES`: the lifecycle's common steps (CreateOrder, Pay's attempt
    /// and commit, a success that pays the order) are one statement each instead of a
    /// transaction of several (`storage::steps`). `false` runs every step as its transaction:
    /// the same rows, more round trips.
    pub single_statement_writes: bool,
    /// `PAYD_REDIS_URL`.
    pub redis_url: Secret,
    /// `PAYD_REDIS_KEY_PREFIX`: prepended to every Redis key, so deployments (and tests) can share
    /// one Redis.
    pub redis_key_prefix: String,
    /// `PAYD_LOCK_TTL_MS`: per-order lock lifetime; a holder paused longer loses it, and the fence
    /// refuses its late writes.
    pub lock_ttl_ms: u64,
    /// `PAYD_LOCK_WAIT_MS`: how long a call waits for a busy order lock before `ABORTED`.
    pub lock_wait_ms: u64,
    /// `PAYD_IDEMPOTENCY_RETENTION_SECS`: how long idempotency keys are remembered (≥ 24 h).
    pub idempotency_retention_secs: u64,
    /// `PAYD_MAX_AMOUNT_MINOR`: the largest order amount accepted, in minor units.
    pub max_amount_minor: i64,
    /// `PAYD_DEFAULT_EXPIRY_SECS`, `PAYD_MIN_EXPIRY_SECS`, `PAYD_MAX_EXPIRY_SECS`.
    pub default_expiry_secs: u64,
    pub min_expiry_secs: u64,
    pub max_expiry_secs: u64,
    /// `PAYD_SHUTDOWN_GRACE_MS`: after SIGTERM, how long in-flight calls get to finish.
    pub shutdown_grace_ms: u64,
    /// `PAYD_LOG_FORMAT`: `json` (default) or `text`.
    pub log_format: String,
    /// `PAYD_CHANNEL_WECHAT_ENDPOINT`, `PAYD_CHANNEL_ALIPAY_ENDPOINT`,
    /// `PAYD_CHANNEL_UNIONPAY_ENDPOINT`: gRPC endpoints of the adapter processes. A channel
    /// without an endpoint is disabled (Pay answers FAILED_PRECONDITION).
    pub channel_wechat_endpoint: Option<String>,
    pub channel_alipay_endpoint: Option<String>,
    pub channel_unionpay_endpoint: Option<String>,
    /// `PAYD_CHANNEL_WECHAT_TOKEN`, `PAYD_CHANNEL_ALIPAY_TOKEN`, `PAYD_CHANNEL_UNIONPAY_TOKEN`
    /// (or the `…_TOKEN_FILE` variants naming a file with it): payd's credential for that
    /// adapter's `ChannelAdapter` (`authorization: Bearer …` on every call). Required for each
    /// channel with an endpoint.
    pub channel_wechat_token: Option<Secret>,
    pub channel_wechat_token_file: Option<std::path::PathBuf>,
    pub channel_alipay_token: Option<Secret>,
    pub channel_alipay_token_file: Option<std::path::PathBuf>,
    pub channel_unionpay_token: Option<Secret>,
    pub channel_unionpay_token_file: Option<std::path::PathBuf>,
    /// `PAYD_CHANNEL_TIMEOUT_MS`: deadline of one call to an adapter (which has its own, shorter,
    /// deadline towards the platform).
    pub channel_timeout_ms: u64,
    /// `PAYD_ADAPTER_TOKENS`: `channel:token` pairs, comma-separated (e.g.
    /// `wechat:…,alipay:…,unionpay:…`), or `PAYD_ADAPTER_TOKENS_FILE` naming a file with them.
    /// Only a caller presenting `authorization: Bearer <token>` may report events to
    /// ChannelEvents, and only for the token's channel. Unset: ChannelEvents refuses everyone.
    pub adapter_tokens: Option<Secret>,
    pub adapter_tokens_file: Option<std::path::PathBuf>,
    /// `PAYD_PAY_WINDOW_WECHAT_SECS`, `PAYD_PAY_WINDOW_ALIPAY_SECS`,
    /// `PAYD_PAY_WINDOW_UNIONPAY_SECS`: how long a trade handed to a payer stays payable at its
    /// channel (sent as WeChat `time_expire`, Alipay `time_expire`, UnionPay `payTimeout`; never
    /// past the order's expiry). WeChat's default is its prepay_id validity (2 h). Alipay and
    /// UnionPay trades come into existence only when the payer scans or submits, so they cannot
    /// be closed before that and a channel switch waits for the window to lapse: keep it short.
    pub pay_window_wechat_secs: u64,
    pub pay_window_alipay_secs: u64,
    pub pay_window_unionpay_secs: u64,
    /// `PAYD_PAY_DEADLINE_MARGIN_MS`: after a trade's deadline, how long until a channel's "no
    /// such trade" or "still pending" is taken as closed (clock differences with the platform).
    pub pay_deadline_margin_ms: u64,
    /// `PAYD_WORKER_LEASE_CHECK_MS`: how often the snowflake worker-id lease is checked; a lost
    /// lease stops Pay (UNAVAILABLE) until one is held again.
    pub worker_lease_check_ms: u64,
    /// `PAYD_REFUND_QUERY_DELAYS_MS`: comma-separated delays between queries of a refund whose
    /// outcome is not known yet (from the channel's answer on); past the last, the refund is
    /// flagged for a person. Default 5 s, 10 s, 30 s, 1 m, 2 m, 5 m, 10 m, 30 m, 1 h, 2 h, 6 h,
    /// 12 h, then daily for three days (bank-card refunds take working days).
    #[serde(deserialize_with = "text_or_number")]
    pub refund_query_delays_ms: String,
    /// `PAYD_REFUND_PENDING_GRACE_MS`: after how long a refund whose creating call never came
    /// back (its process died) is taken up by the query job. Default: the channel timeout + 5 s.
    pub refund_pending_grace_ms: Option<u64>,
    /// `PAYD_REFUND_JOB_TICK_MS`: how often the refund query job looks for due refunds.
    pub refund_job_tick_ms: u64,
    /// `PAYD_EVENT_SINKS`: where each app's events are pushed, `app=url` pairs separated by
    /// commas (`shop-1=http://orders.internal:7000`); an app without a sink reads its events
    /// with WatchEvents only.
    pub event_sinks: String,
    /// `PAYD_EVENT_RETRY_DELAYS_MS`: delays between push-delivery tries of one event; past the
    /// last it is dead-lettered. Default 15 s, 1 m, 5 m, 30 m, 2 h, 6 h, 12 h, 24 h.
    #[serde(deserialize_with = "text_or_number")]
    pub event_retry_delays_ms: String,
    /// `PAYD_EVENT_SINK_TIMEOUT_MS`: how long a sink may take to acknowledge one event.
    pub event_sink_timeout_ms: u64,
    /// `PAYD_OUTBOX_TICK_MS`: how often the sequencer and the dispatcher run when idle.
    pub outbox_tick_ms: u64,
    /// `PAYD_OPS_APP_ID`: the app that receives the events that concern no order
    /// (`reconciliation.completed`/`.failed`, discrepancies of trades we do not know); it reads
    /// them with WatchEvents as that app and gets them pushed when `PAYD_EVENT_SINKS` names a
    /// sink for it. Default `ops`.
    pub ops_app_id: String,
    /// `PAYD_RECON_SCHEDULE`: "HH:MM" Beijing time at which every replica reconciles each enabled
    /// channel's previous Beijing day (one run per channel and day across replicas); empty (the
    /// default) turns the schedule off. Runs on demand (RunReconciliation) work either way.
    pub recon_schedule: String,
    /// `PAYD_PAYMENT_QUERY_DELAYS_MS`: comma-separated gaps between the active queries of an
    /// open payment attempt, from its Prepay on (default 10 s, 20 s, 30 s); after the last, the
    /// gap doubles up to `PAYD_PAYMENT_QUERY_CEILING_MS`, until the order's expiry plus
    /// `PAYD_PAY_DEADLINE_MARGIN_MS`; an attempt still unknown then is flagged for a person.
    #[serde(deserialize_with = "text_or_number")]
    pub payment_query_delays_ms: String,
    /// `PAYD_PAYMENT_QUERY_CEILING_MS`: the longest gap between two queries of an attempt.
    pub payment_query_ceiling_ms: u64,
    /// `PAYD_PAYMENT_QUERY_TICK_MS`: how often the payment query job looks for due attempts.
    pub payment_query_tick_ms: u64,
    /// `PAYD_EXPIRY_TICK_MS`: how often the expiry job looks for expired unpaid orders.
    pub expiry_tick_ms: u64,
    /// `PAYD_ENV`: `development` (default) or `production`. In production payd refuses to start
    /// with a missing, default or obviously weak secret, and says which.
    pub env: String,
    /// `PAYD_DATA_KEYS` (or `PAYD_DATA_KEYS_FILE`): the data keys sealing personal fields at
    /// rest, `id:base64-of-32-bytes` entries separated by commas or newlines, oldest first: the
    /// last is active (new values), the others only open old ones. Unset: the public
    /// development key (refused in production).
    pub data_keys: Option<Secret>,
    pub data_keys_file: Option<std::path::PathBuf>,
    /// `PAYD_DATA_HMAC_KEY` (or `PAYD_DATA_HMAC_KEY_FILE`): base64 of at least 32 bytes, the
    /// key of the keyed hashes used where only equality is needed (the payer id). Separate from
    /// the data keys, and not rotated with them (the hashes would change).
    pub data_hmac_key: Option<Secret>,
    pub data_hmac_key_file: Option<std::path::PathBuf>,
    /// `PAYD_APP_CREDENTIALS` (TOML text) or `PAYD_APP_CREDENTIALS_FILE` (a file with it): every
    /// app allowed to call `payment.v1`, its secrets (several at once, for rotation), roles and
    /// optional rate (README, "Calling payd from another language"). Unset: every call is
    /// refused as UNAUTHENTICATED.
    pub app_credentials: Option<Secret>,
    pub app_credentials_file: Option<std::path::PathBuf>,
    /// `PAYD_AUTH_WINDOW_SECS`: how far a signature's timestamp may be from payd's clock, either
    /// way; nonces are remembered for twice this.
    pub auth_window_secs: u64,
    /// `PAYD_RATE_LIMIT_PER_SEC`, `PAYD_RATE_LIMIT_BURST`: each app's rate limit unless its
    /// credentials entry sets its own; shared by all replicas through Redis.
    pub rate_limit_per_sec: u32,
    pub rate_limit_burst: u32,
    /// `PAYD_REFUND_LARGE_THRESHOLDS`: `CUR=minor` pairs, comma-separated (`CNY=1000000`): a
    /// refund above its currency's amount needs the role `refunds.write_large`. Empty: none.
    pub refund_large_thresholds: String,
    /// `PAYD_TLS_CERT_FILE`, `PAYD_TLS_KEY_FILE` (PEM): serve gRPC (`payment.v1` and the
    /// adapters' `ChannelEvents`) over TLS. `PAYD_TLS_CLIENT_CA_FILE`: and require every client,
    /// app or adapter, to present a certificate issued by this CA (mutual TLS).
    pub tls_cert_file: Option<std::path::PathBuf>,
    pub tls_key_file: Option<std::path::PathBuf>,
    pub tls_client_ca_file: Option<std::path::PathBuf>,
    /// `PAYD_CHANNEL_TLS_CA_FILE`: the CA of the adapters' certificates, for `https://` adapter
    /// endpoints; `PAYD_CHANNEL_TLS_CERT_FILE`, `PAYD_CHANNEL_TLS_KEY_FILE`: payd's client
    /// certificate, when the adapters require one.
    pub channel_tls_ca_file: Option<std::path::PathBuf>,
    pub channel_tls_cert_file: Option<std::path::PathBuf>,
    pub channel_tls_key_file: Option<std::path::PathBuf>,
}

impl Default for Settings {
    fn default() -> Self {
        let limits = OrderLimits::default();
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            database_url: Secret::new("postgres://postgres@127.0.0.1:5432/payments"),
            database_pool_size: 16,
            database_connect_timeout_ms: 5_000,
            database_idle_in_transaction_timeout_ms: 5_000,
            single_statement_writes: true,
            redis_url: Secret::new("redis://127.0.0.1:6379"),
            redis_key_prefix: "payd:".to_owned(),
            lock_ttl_ms: 10_000,
            lock_wait_ms: 2_000,
            idempotency_retention_secs: 24 * 3600,
            max_amount_minor: limits.max_amount_minor,
            default_expiry_secs: limits.default_expiry.as_secs(),
            min_expiry_secs: limits.min_expiry.as_secs(),
            max_expiry_secs: limits.max_expiry.as_secs(),
            shutdown_grace_ms: 20_000,
            log_format: "json".to_owned(),
            channel_wechat_endpoint: None,
            channel_alipay_endpoint: None,
            channel_unionpay_endpoint: None,
            channel_wechat_token: None,
            channel_wechat_token_file: None,
            channel_alipay_token: None,
            channel_alipay_token_file: None,
            channel_unionpay_token: None,
            channel_unionpay_token_file: None,
            channel_timeout_ms: 15_000,
            adapter_tokens: None,
            adapter_tokens_file: None,
            pay_window_wechat_secs: 7_200,
            pay_window_alipay_secs: 900,
            pay_window_unionpay_secs: 900,
            pay_deadline_margin_ms: 60_000,
            worker_lease_check_ms: 2_000,
            refund_query_delays_ms: crate::app::refunds::RefundPolicy::default()
                .query_delays
                .iter()
                .map(|d| d.as_millis().to_string())
                .collect::<Vec<_>>()
                .join(","),
            refund_pending_grace_ms: None,
            refund_job_tick_ms: 1_000,
            event_sinks: String::new(),
            event_retry_delays_ms: "15000,60000,300000,1800000,7200000,21600000,43200000,86400000"
                .to_owned(),
            event_sink_timeout_ms: 10_000,
            outbox_tick_ms: 50,
            ops_app_id: crate::app::delivery::DEFAULT_OPS_APP.to_owned(),
            recon_schedule: String::new(),
            payment_query_delays_ms: "10000,20000,30000".to_owned(),
            payment_query_ceiling_ms: 300_000,
            payment_query_tick_ms: 1_000,
            app_credentials: None,
            app_credentials_file: None,
            auth_window_secs: 300,
            rate_limit_per_sec: 1_000,
            rate_limit_burst: 2_000,
            refund_large_thresholds: String::new(),
            tls_cert_file: None,
            tls_key_file: None,
            tls_client_ca_file: None,
            channel_tls_ca_file: None,
            channel_tls_cert_file: None,
            channel_tls_key_file: None,
            expiry_tick_ms: 1_000,
            env: "development".to_owned(),
            data_keys: None,
            data_keys_file: None,
            data_hmac_key: None,
            data_hmac_key_file: None,
        }
    }
}

/// Why a shared secret is unfit for production, if it is: short, one repeated character, or a
/// placeholder word (test, dev, changeme, secret, example, password).
pub fn weak_secret(s: &str) -> Option<&'static str> {
    let lower = s.to_ascii_lowercase();
    if s.len() < 32 {
        return Some("is shorter than 32 characters");
    }
    let distinct: std::collections::BTreeSet<char> = s.chars().collect();
    if distinct.len() < 8 {
        return Some("has fewer than 8 distinct characters");
    }
    [
        "test", "dev", "changeme", "secret", "example", "password", "default",
    ]
    .iter()
    .any(|w| lower.contains(w))
    .then_some(
        "contains a placeholder word (test, dev, changeme, secret, example, password, default)",
    )
}

/// A list setting given as one number (`PAYD_PAYMENT_QUERY_DELAYS_MS=600000`): the environment
/// provider reads it as an integer, which is still the one-element list the user meant.
fn text_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum TextOrNumber {
        Text(String),
        Number(u64),
    }
    Ok(match TextOrNumber::deserialize(d)? {
        TextOrNumber::Text(s) => s,
        TextOrNumber::Number(n) => n.to_string(),
    })
}

/// A comma-separated list of positive milliseconds.
fn parse_delays_ms(key: &'static str, text: &str) -> Result<Vec<Duration>, ConfigError> {
    text.split(',')
        .map(|d| d.trim().parse::<u64>().ok().filter(|n| *n > 0))
        .collect::<Option<Vec<u64>>>()
        .filter(|v| !v.is_empty())
        .map(|v| v.into_iter().map(Duration::from_millis).collect())
        .ok_or_else(|| ConfigError::Invalid {
            key,
            reason: "must be a comma-separated list of positive milliseconds".to_owned(),
        })
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("configuration key {key}: {reason}")]
    Invalid { key: &'static str, reason: String },
}

impl Settings {
    /// Defaults, then the file named by `PAYD_CONFIG` (if any), then `PAYD_*` variables.
    pub fn load() -> Result<Self, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Settings::default()));
        if let Ok(path) = std::env::var("PAYD_CONFIG") {
            fig = fig.merge(Toml::file_exact(path));
        }
        let s: Settings = fig
            .merge(Env::prefixed("PAYD_").ignore(&["CONFIG"]))
            .extract()
            .map_err(Box::new)?;
        s.validate()?;
        Ok(s)
    }

    /// # Errors
    /// [`ConfigError::Invalid`] naming the first key whose value cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key, reason: &str| {
            Err(ConfigError::Invalid {
                key,
                reason: reason.to_owned(),
            })
        };
        if self.database_pool_size == 0 {
            return bad("database_pool_size", "must be at least 1");
        }
        if self.ops_app_id.trim().is_empty() {
            return bad(
                "ops_app_id",
                "must name the app that receives operations events",
            );
        }
        if self.lock_ttl_ms < 100 {
            return bad("lock_ttl_ms", "must be at least 100");
        }
        if self.idempotency_retention_secs < 24 * 3600 {
            return bad(
                "idempotency_retention_secs",
                "must be at least 86400 (24 h)",
            );
        }
        if self.max_amount_minor <= 0 {
            return bad("max_amount_minor", "must be positive");
        }
        if !(self.min_expiry_secs <= self.default_expiry_secs
            && self.default_expiry_secs <= self.max_expiry_secs)
        {
            return bad(
                "default_expiry_secs",
                "must lie within min_expiry_secs..=max_expiry_secs",
            );
        }
        if !matches!(self.log_format.as_str(), "json" | "text") {
            return bad("log_format", "must be json or text");
        }
        for (key, v) in [
            ("pay_window_wechat_secs", self.pay_window_wechat_secs),
            ("pay_window_alipay_secs", self.pay_window_alipay_secs),
            ("pay_window_unionpay_secs", self.pay_window_unionpay_secs),
        ] {
            if v == 0 {
                return bad(key, "must be at least 1");
            }
        }
        if self.worker_lease_check_ms == 0 {
            return bad("worker_lease_check_ms", "must be at least 1");
        }
        if self.refund_job_tick_ms == 0 {
            return bad("refund_job_tick_ms", "must be at least 1");
        }
        self.refund_policy()?;
        self.event_subscriptions()?;
        parse_delays_ms("event_retry_delays_ms", &self.event_retry_delays_ms)?;
        if self.outbox_tick_ms == 0 {
            return bad("outbox_tick_ms", "must be at least 1");
        }
        self.payment_queries()?;
        self.adapter_tokens()?;
        self.refund_large_thresholds()?;
        // TLS files: `payproto::tls::TlsFiles` refuses a half-configured set when the server
        // starts (one place for payd and the adapters), naming the variables.
        crate::auth::Credentials::parse(
            &self.app_credentials_text()?,
            crate::auth::Rate {
                per_sec: self.rate_limit_per_sec,
                burst: self.rate_limit_burst,
            },
        )?;
        self.adapter_endpoints()?;
        let keys = self.data_keys()?;
        match self.env.as_str() {
            "development" => {}
            "production" => self.production_check(&keys)?,
            _ => return bad("env", "must be development or production"),
        }
        Ok(())
    }

    /// Production refuses what only a developer machine may use: the public development keys,
    /// weak keys, missing or guessable adapter tokens, and a database URL without a password.
    fn production_check(&self, keys: &crate::crypto::DataKeys) -> Result<(), ConfigError> {
        let bad = |key: &'static str, reason: String| Err(ConfigError::Invalid { key, reason });
        if self.data_keys.is_none() && self.data_keys_file.is_none() {
            return bad(
                "data_keys",
                "is required in production (PAYD_DATA_KEYS or PAYD_DATA_KEYS_FILE)".into(),
            );
        }
        if self.data_hmac_key.is_none() && self.data_hmac_key_file.is_none() {
            return bad(
                "data_hmac_key",
                "is required in production (PAYD_DATA_HMAC_KEY or PAYD_DATA_HMAC_KEY_FILE)".into(),
            );
        }
        if let Some(w) = keys.weakness() {
            return bad("data_keys", format!("{w}; refused in production"));
        }
        let tokens = self.adapter_tokens()?;
        if tokens.is_empty() {
            return bad(
                "adapter_tokens",
                "is required in production: without it no adapter can report".into(),
            );
        }
        for (channel, t) in &tokens {
            if let Some(w) = weak_secret(t.expose()) {
                return bad(
                    "adapter_tokens",
                    format!("the {channel} token {w}; refused in production"),
                );
            }
        }
        let credentials = crate::auth::Credentials::parse(
            &self.app_credentials_text()?,
            crate::auth::Rate {
                per_sec: self.rate_limit_per_sec,
                burst: self.rate_limit_burst,
            },
        )?;
        if credentials.is_empty() {
            return bad(
                "app_credentials",
                "is required in production (PAYD_APP_CREDENTIALS_FILE): without it every call \
                 is refused"
                    .into(),
            );
        }
        if let Some(w) = credentials.weakness() {
            return bad("app_credentials", format!("{w}; refused in production"));
        }
        for e in self.adapter_endpoints()? {
            if let Some(w) = weak_secret(e.token.expose()) {
                return bad(
                    "channel_*_token",
                    format!("the {} token {w}; refused in production", e.channel),
                );
            }
        }
        Ok(())
    }

    /// The data key ring: configured keys, or the public development ring when none is.
    ///
    /// # Errors
    /// A malformed ring or lookup key, an unreadable file, or only one of the two configured.
    pub fn data_keys(&self) -> Result<crate::crypto::DataKeys, ConfigError> {
        let read =
            |key: &'static str, v: &Option<Secret>, f: &Option<std::path::PathBuf>| match (v, f) {
                (Some(s), _) => Ok(Some(s.expose().to_owned())),
                (None, Some(p)) => {
                    std::fs::read_to_string(p)
                        .map(Some)
                        .map_err(|e| ConfigError::Invalid {
                            key,
                            reason: format!("cannot read the file: {}", e.kind()),
                        })
                }
                (None, None) => Ok(None),
            };
        let keys = read("data_keys_file", &self.data_keys, &self.data_keys_file)?;
        let hmac = read(
            "data_hmac_key_file",
            &self.data_hmac_key,
            &self.data_hmac_key_file,
        )?;
        match (keys, hmac) {
            (None, None) => Ok(crate::crypto::DataKeys::development()),
            (Some(k), Some(h)) => {
                crate::crypto::DataKeys::parse(&k, &h).map_err(|e| ConfigError::Invalid {
                    key: "data_keys",
                    reason: e.to_string(),
                })
            }
            _ => Err(ConfigError::Invalid {
                key: "data_keys",
                reason: "data_keys and data_hmac_key are configured together".into(),
            }),
        }
    }

    /// The apps' event sinks as (app, url) pairs.
    ///
    /// # Errors
    /// `event_sinks` that is not `app=url` pairs, or names an app twice.
    pub fn event_subscriptions(&self) -> Result<Vec<(String, String)>, ConfigError> {
        let bad = |reason: String| ConfigError::Invalid {
            key: "event_sinks",
            reason,
        };
        let mut out: Vec<(String, String)> = Vec::new();
        for pair in self
            .event_sinks
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let (app, url) = pair
                .split_once('=')
                .ok_or_else(|| bad(format!("{pair:?} is not app=url")))?;
            crate::domain::AppId::parse("event_sinks", app.trim())
                .map_err(|e| bad(e.to_string()))?;
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(bad(format!("the sink of {app} must be an http(s) URL")));
            }
            if out.iter().any(|(a, _)| a == app.trim()) {
                return Err(bad(format!("{app} is named twice")));
            }
            out.push((app.trim().to_owned(), url.trim().to_owned()));
        }
        Ok(out)
    }

    /// The push-delivery schedule.
    ///
    /// # Errors
    /// A malformed `event_retry_delays_ms`.
    pub fn event_retry_delays(&self) -> Result<Vec<Duration>, ConfigError> {
        parse_delays_ms("event_retry_delays_ms", &self.event_retry_delays_ms)
    }

    /// How unsettled refunds are followed up.
    ///
    /// # Errors
    /// `refund_query_delays_ms` that is not a non-empty list of positive integers.
    pub fn refund_policy(&self) -> Result<crate::app::refunds::RefundPolicy, ConfigError> {
        let delays = parse_delays_ms("refund_query_delays_ms", &self.refund_query_delays_ms)?;
        let timeout = Duration::from_millis(self.channel_timeout_ms);
        Ok(crate::app::refunds::RefundPolicy {
            pending_grace: self
                .refund_pending_grace_ms
                .map_or(timeout + Duration::from_secs(5), Duration::from_millis),
            query_delays: delays,
            claim_lease: 2 * timeout + Duration::from_secs(5),
            tick: Duration::from_millis(self.refund_job_tick_ms),
            repeat_wait: timeout + Duration::from_secs(2),
            ..crate::app::refunds::RefundPolicy::default()
        })
    }

    /// The daily reconciliation time (Beijing), or `None` when the schedule is off.
    ///
    /// # Errors
    /// A `recon_schedule` that is neither empty nor "HH:MM".
    pub fn recon_schedule(&self) -> Result<Option<chrono::NaiveTime>, ConfigError> {
        let s = self.recon_schedule.trim();
        if s.is_empty() {
            return Ok(None);
        }
        chrono::NaiveTime::parse_from_str(s, "%H:%M")
            .map(Some)
            .map_err(|_| ConfigError::Invalid {
                key: "recon_schedule",
                reason: "must be HH:MM (Beijing time) or empty".to_owned(),
            })
    }

    /// How open attempts are queried and unpaid orders expired.
    ///
    /// # Errors
    /// `payment_query_delays_ms` that is not a non-empty list of positive integers, or a zero
    /// ceiling or tick.
    pub fn payment_queries(&self) -> Result<crate::app::queries::PaymentQueries, ConfigError> {
        let delays = self
            .payment_query_delays_ms
            .split(',')
            .map(|d| d.trim().parse::<u64>().ok().filter(|n| *n > 0))
            .collect::<Option<Vec<u64>>>()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| ConfigError::Invalid {
                key: "payment_query_delays_ms",
                reason: "must be a comma-separated list of positive milliseconds".to_owned(),
            })?;
        for (key, v) in [
            ("payment_query_ceiling_ms", self.payment_query_ceiling_ms),
            ("payment_query_tick_ms", self.payment_query_tick_ms),
            ("expiry_tick_ms", self.expiry_tick_ms),
        ] {
            if v == 0 {
                return Err(ConfigError::Invalid {
                    key,
                    reason: "must be at least 1".to_owned(),
                });
            }
        }
        let timeout = Duration::from_millis(self.channel_timeout_ms);
        Ok(crate::app::queries::PaymentQueries {
            delays: delays.into_iter().map(Duration::from_millis).collect(),
            ceiling: Duration::from_millis(self.payment_query_ceiling_ms),
            // A query, and possibly a close under the order's lock: two channel calls.
            claim_lease: 2 * timeout + Duration::from_secs(5),
            tick: Duration::from_millis(self.payment_query_tick_ms),
            expiry_tick: Duration::from_millis(self.expiry_tick_ms),
            ..crate::app::queries::PaymentQueries::default()
        })
    }

    /// How long a trade stays payable at each channel, and the margin past its deadline.
    pub fn pay_windows(&self) -> crate::app::pay::PayWindows {
        crate::app::pay::PayWindows {
            wechat: Duration::from_secs(self.pay_window_wechat_secs),
            alipay: Duration::from_secs(self.pay_window_alipay_secs),
            unionpay: Duration::from_secs(self.pay_window_unionpay_secs),
            deadline_margin: Duration::from_millis(self.pay_deadline_margin_ms),
        }
    }

    /// The enabled adapters: each channel with an endpoint, and the token payd presents to it.
    ///
    /// # Errors
    /// An endpoint without its token, a token that is too short or not printable ASCII, or an
    /// unreadable token file, with the key named.
    pub fn adapter_endpoints(&self) -> Result<Vec<AdapterEndpoint>, ConfigError> {
        use crate::domain::Channel;
        let table = [
            (
                Channel::Wechat,
                &self.channel_wechat_endpoint,
                &self.channel_wechat_token,
                &self.channel_wechat_token_file,
                ["channel_wechat_token", "channel_wechat_token_file"],
            ),
            (
                Channel::Alipay,
                &self.channel_alipay_endpoint,
                &self.channel_alipay_token,
                &self.channel_alipay_token_file,
                ["channel_alipay_token", "channel_alipay_token_file"],
            ),
            (
                Channel::Unionpay,
                &self.channel_unionpay_endpoint,
                &self.channel_unionpay_token,
                &self.channel_unionpay_token_file,
                ["channel_unionpay_token", "channel_unionpay_token_file"],
            ),
        ];
        let mut enabled = Vec::new();
        for (channel, endpoint, token, file, [key, file_key]) in table {
            let Some(url) = endpoint else { continue };
            let token = match (token, file) {
                (Some(t), _) => t.expose().to_owned(),
                (None, Some(path)) => std::fs::read_to_string(path)
                    .map_err(|e| ConfigError::Invalid {
                        key: file_key,
                        reason: format!("cannot read {}: {e}", path.display()),
                    })?
                    .trim()
                    .to_owned(),
                (None, None) => {
                    return Err(ConfigError::Invalid {
                        key,
                        reason: format!(
                            "required when the {channel} endpoint is set (PAYD_{up} or PAYD_{up}_FILE)",
                            up = key.to_uppercase()
                        ),
                    });
                }
            };
            if token.len() < 16 || !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ConfigError::Invalid {
                    key,
                    reason: "must be at least 16 printable ASCII characters".to_owned(),
                });
            }
            enabled.push(AdapterEndpoint {
                channel,
                url: url.clone(),
                token: Secret::new(token),
            });
        }
        Ok(enabled)
    }

    pub fn order_limits(&self) -> OrderLimits {
        OrderLimits {
            max_amount_minor: self.max_amount_minor,
            default_expiry: Duration::from_secs(self.default_expiry_secs),
            min_expiry: Duration::from_secs(self.min_expiry_secs),
            max_expiry: Duration::from_secs(self.max_expiry_secs),
        }
    }

    /// The app credentials text, from `app_credentials` or the file `app_credentials_file`
    /// (empty when neither is set).
    ///
    /// # Errors
    /// An unreadable file, named.
    /// payd's own TLS files (the gRPC server).
    pub fn server_tls(&self) -> payproto::tls::TlsFiles {
        payproto::tls::TlsFiles {
            cert: self.tls_cert_file.clone(),
            key: self.tls_key_file.clone(),
            ca: self.tls_client_ca_file.clone(),
        }
    }

    /// The TLS files of payd as the adapters' client.
    pub fn channel_tls(&self) -> payproto::tls::TlsFiles {
        payproto::tls::TlsFiles {
            cert: self.channel_tls_cert_file.clone(),
            key: self.channel_tls_key_file.clone(),
            ca: self.channel_tls_ca_file.clone(),
        }
    }

    pub fn app_credentials_text(&self) -> Result<String, ConfigError> {
        match (&self.app_credentials, &self.app_credentials_file) {
            (Some(s), _) => Ok(s.expose().to_owned()),
            (None, Some(path)) => std::fs::read_to_string(path).map_err(|e| ConfigError::Invalid {
                key: "app_credentials_file",
                reason: format!("cannot read {}: {e}", path.display()),
            }),
            (None, None) => Ok(String::new()),
        }
    }

    /// The large-refund thresholds by currency.
    ///
    /// # Errors
    /// A malformed pair, named.
    pub fn refund_large_thresholds(
        &self,
    ) -> Result<std::collections::HashMap<String, i64>, ConfigError> {
        self.refund_large_thresholds
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(|e| {
                let bad = || ConfigError::Invalid {
                    key: "refund_large_thresholds",
                    reason: format!("{e:?} is not CUR=minor_units"),
                };
                let (cur, n) = e.split_once('=').ok_or_else(bad)?;
                let n: i64 = n.trim().parse().map_err(|_| bad())?;
                Ok((cur.trim().to_uppercase(), n))
            })
            .collect()
    }

    /// The adapter tokens, from `adapter_tokens` or the file `adapter_tokens_file`.
    ///
    /// # Errors
    /// A bad entry or an unreadable file, with the key named.
    pub fn adapter_tokens(&self) -> Result<Vec<(crate::domain::Channel, Secret)>, ConfigError> {
        let raw = match (&self.adapter_tokens, &self.adapter_tokens_file) {
            (Some(s), _) => s.expose().to_owned(),
            (None, Some(path)) => {
                std::fs::read_to_string(path).map_err(|e| ConfigError::Invalid {
                    key: "adapter_tokens_file",
                    reason: format!("cannot read {}: {e}", path.display()),
                })?
            }
            (None, None) => return Ok(Vec::new()),
        };
        raw.split([',', '\n'])
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(|entry| {
                let bad = |reason: &str| ConfigError::Invalid {
                    key: "adapter_tokens",
                    reason: reason.to_owned(),
                };
                let (ch, token) = entry
                    .split_once(':')
                    .ok_or_else(|| bad("entries are channel:token"))?;
                let channel = ch
                    .trim()
                    .to_uppercase()
                    .parse::<crate::domain::Channel>()
                    .map_err(|_| bad("channel must be wechat, alipay or unionpay"))?;
                if token.trim().len() < 16 {
                    return Err(bad("tokens must be at least 16 characters"));
                }
                Ok((channel, Secret::new(token.trim())))
            })
            .collect()
    }

    pub fn lock_ttl(&self) -> Duration {
        Duration::from_millis(self.lock_ttl_ms)
    }

    pub fn lock_wait(&self) -> Duration {
        Duration::from_millis(self.lock_wait_ms)
    }

    pub fn idempotency_retention(&self) -> Duration {
        Duration::from_secs(self.idempotency_retention_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert!(Settings::default().validate().is_ok());
    }

    /// `PAYD_PAYMENT_QUERY_DELAYS_MS=600000` is a one-element list, not a type error (the
    /// environment provider reads a bare number as an integer).
    #[test]
    // figment::Jail's closure returns figment's own (large) error type.
    #[allow(clippy::result_large_err)]
    fn a_list_of_one_delay_given_as_a_number_is_accepted() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("PAYD_PAYMENT_QUERY_DELAYS_MS", "600000");
            jail.set_env("PAYD_EVENT_RETRY_DELAYS_MS", "1000");
            let s = Settings::load().map_err(|e| e.to_string())?;
            assert_eq!(s.payment_query_delays_ms, "600000");
            assert_eq!(s.event_retry_delays_ms, "1000");
            Ok(())
        });
    }

    #[test]
    fn a_short_idempotency_retention_is_refused_by_name() {
        let s = Settings {
            idempotency_retention_secs: 60,
            ..Settings::default()
        };
        let e = s
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("idempotency_retention_secs"), "{e}");
    }

    #[test]
    fn an_adapter_endpoint_without_its_token_is_refused_by_name() {
        let s = Settings {
            channel_alipay_endpoint: Some("http://127.0.0.1:50062".into()),
            ..Settings::default()
        };
        let e = s
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("channel_alipay_token"), "{e}");
        assert!(e.contains("PAYD_CHANNEL_ALIPAY_TOKEN_FILE"), "{e}");
    }

    #[test]
    fn each_adapter_endpoint_comes_with_its_own_token() {
        let s = Settings {
            channel_wechat_endpoint: Some("http://127.0.0.1:50061".into()),
            channel_wechat_token: Some(Secret::new("wechat-token-0123456789")),
            channel_alipay_token: Some(Secret::new("ignored: no alipay endpoint")),
            ..Settings::default()
        };
        let enabled = s.adapter_endpoints().unwrap_or_default();
        assert_eq!(enabled.len(), 1);
        assert_eq!(enabled[0].channel, crate::domain::Channel::Wechat);
        assert_eq!(enabled[0].token.expose(), "wechat-token-0123456789");
    }

    #[test]
    fn an_adapter_token_can_come_from_a_file() {
        let path = std::env::temp_dir().join(format!("payd-token-{}", uuid::Uuid::new_v4()));
        let written = std::fs::write(&path, "unionpay-token-from-a-file\n");
        assert!(written.is_ok());
        let s = Settings {
            channel_unionpay_endpoint: Some("http://127.0.0.1:50063".into()),
            channel_unionpay_token_file: Some(path.clone()),
            ..Settings::default()
        };
        let enabled = s.adapter_endpoints().unwrap_or_default();
        let _ = std::fs::remove_file(&path);
        assert_eq!(enabled.len(), 1);
        assert_eq!(enabled[0].token.expose(), "unionpay-token-from-a-file");
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Settings::default();
        assert!(!format!("{s:?}").contains("postgres://"));
    }
}
