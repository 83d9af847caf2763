//! Caller authentication, authorization and rate limits for `payment.v1`: a tower layer around
//! the whole router that verifies each call's HMAC signature (see `payproto::auth` for the
//! canonical string), its timestamp window and single-use nonce, the app's role for the method
//! (one table, [`METHOD_ROLES`]), and the app's rate limit, before any service sees it.
//! Health, reflection and `channel.v1.ChannelEvents` (adapter tokens) pass through untouched.
//!
//! Redis holds the nonces and the rate-limit state, shared by every replica; both are one
//! script, so a call costs one Redis round trip. Redis down → `UNAVAILABLE` (fail closed): a
//! replica cannot tell a replay without it.
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use figment::Figment;
use figment::providers::{Format, Toml};
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full, Limited};
use payproto::auth::{
    APP_ID_HEADER, NONCE_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, canonical_string,
};
use prometheus::{IntCounterVec, Opts};
use prost::Message;
use redis::aio::ConnectionManager;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::http;

use crate::config::{ConfigError, Secret, Settings};
use crate::domain::AppId;

/// The largest request body buffered for verification (tonic's default decode limit).
const MAX_BODY: usize = 4 * 1024 * 1024;

/// Role of a large refund: `CreateRefund` above the currency's configured threshold.
pub const REFUNDS_WRITE_LARGE: &str = "refunds.write_large";

/// Which role each `payment.v1` method needs. A method not listed here is refused to everyone.
pub const METHOD_ROLES: &[(&str, &str)] = &[
    ("/payment.v1.PaymentService/CreateOrder", "orders.write"),
    ("/payment.v1.PaymentService/GetOrder", "orders.read"),
    ("/payment.v1.PaymentService/ListOrders", "orders.read"),
    ("/payment.v1.PaymentService/CloseOrder", "orders.write"),
    ("/payment.v1.PaymentService/Pay", "orders.write"),
    ("/payment.v1.PaymentService/CreateRefund", "refunds.write"),
    ("/payment.v1.PaymentService/GetRefund", "refunds.read"),
    ("/payment.v1.PaymentService/ListRefunds", "refunds.read"),
    ("/payment.v1.PaymentService/WatchEvents", "events.read"),
    ("/payment.v1.PaymentService/RedeliverEvents", "events.write"),
    (
        "/payment.v1.ReconciliationService/RunReconciliation",
        "recon.admin",
    ),
    (
        "/payment.v1.ReconciliationService/GetReconciliationRun",
        "recon.admin",
    ),
    (
        "/payment.v1.ReconciliationService/ListDiscrepancies",
        "recon.admin",
    ),
    (
        "/payment.v1.ReconciliationService/ResolveDiscrepancy",
        "recon.admin",
    ),
    ("/payment.v1.AuditService/ListAuditRecords", "audit.read"),
];

/// Every role an app may be given.
pub const ROLES: &[&str] = &[
    "orders.write",
    "orders.read",
    "refunds.write",
    REFUNDS_WRITE_LARGE,
    "refunds.read",
    "events.read",
    "events.write",
    "recon.admin",
    "audit.read",
];

/// The authenticated caller, put into the request's extensions for the services.
#[derive(Debug, Clone)]
pub struct Caller {
    pub app: AppId,
    pub roles: Arc<HashSet<String>>,
}

/// A rate: `per_sec` calls a second on average, bursts of up to `burst` calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_sec: u32,
    pub burst: u32,
}

#[derive(Debug)]
struct AppEntry {
    secrets: Vec<Secret>,
    roles: Arc<HashSet<String>>,
    rate: Rate,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileApp {
    id: String,
    secrets: Vec<Secret>,
    #[serde(default)]
    roles: Vec<String>,
    rate_per_sec: Option<u32>,
    burst: Option<u32>,
}

#[derive(Deserialize)]
struct CredentialsFile {
    #[serde(default)]
    app: Vec<FileApp>,
}

/// Per-app credentials, roles and rates.
#[derive(Debug, Default)]
pub struct Credentials {
    apps: HashMap<String, AppEntry>,
}

impl Credentials {
    /// Parses the TOML credentials text (see the README, "Calling payd").
    ///
    /// # Errors
    /// Names the app and what is wrong: an unknown role, no secret, a secret shorter than 32
    /// characters, an id used twice, a zero rate.
    pub fn parse(text: &str, default: Rate) -> Result<Self, ConfigError> {
        let bad = |reason: String| ConfigError::Invalid {
            key: "app_credentials",
            reason,
        };
        let file: CredentialsFile = Figment::from(Toml::string(text))
            .extract()
            .map_err(|e| bad(e.to_string()))?;
        let mut apps = HashMap::new();
        for a in file.app {
            AppId::parse("id", &a.id).map_err(|e| bad(format!("app {:?}: {e}", a.id)))?;
            if a.secrets.is_empty() {
                return Err(bad(format!(
                    "app {}: at least one secret is required",
                    a.id
                )));
            }
            if a.secrets.iter().any(|s| s.expose().len() < 32) {
                return Err(bad(format!(
                    "app {}: every secret must be at least 32 characters",
                    a.id
                )));
            }
            if let Some(r) = a.roles.iter().find(|r| !ROLES.contains(&r.as_str())) {
                return Err(bad(format!("app {}: unknown role {r:?}", a.id)));
            }
            let rate = Rate {
                per_sec: a.rate_per_sec.unwrap_or(default.per_sec),
                burst: a.burst.unwrap_or(default.burst),
            };
            if rate.per_sec == 0 || rate.burst == 0 {
                return Err(bad(format!(
                    "app {}: rate_per_sec and burst must be > 0",
                    a.id
                )));
            }
            let entry = AppEntry {
                secrets: a.secrets,
                roles: Arc::new(a.roles.into_iter().collect()),
                rate,
            };
            if apps.insert(a.id.clone(), entry).is_some() {
                return Err(bad(format!("app {} is listed twice", a.id)));
            }
        }
        Ok(Self { apps })
    }
}

impl Credentials {
    /// No app is registered: every call will be refused.
    pub fn is_empty(&self) -> bool {
        self.apps.is_empty()
    }

    /// The first app whose secret is guessable ([`crate::config::weak_secret`]), named.
    pub fn weakness(&self) -> Option<String> {
        let mut ids: Vec<&String> = self.apps.keys().collect();
        ids.sort();
        ids.into_iter().find_map(|id| {
            self.apps[id]
                .secrets
                .iter()
                .find_map(|s| crate::config::weak_secret(s.expose()))
                .map(|w| format!("a secret of app {id} {w}"))
        })
    }
}

/// Why a call was refused before reaching a service: the metric label and the caller's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    Missing,
    Malformed,
    UnknownApp,
    WrongSignature,
    Expired,
    Future,
    Replayed,
}

impl Failure {
    fn label(self) -> &'static str {
        match self {
            Failure::Missing => "missing",
            Failure::Malformed => "malformed",
            Failure::UnknownApp => "unknown_app",
            Failure::WrongSignature => "wrong_signature",
            Failure::Expired => "expired",
            Failure::Future => "future",
            Failure::Replayed => "replayed",
        }
    }
}

/// What the layer needs: credentials, the window, Redis, thresholds and counters.
pub struct Auth {
    credentials: Credentials,
    window: Duration,
    redis: ConnectionManager,
    prefix: String,
    large_refund: HashMap<String, i64>,
    script: redis::Script,
    failures: IntCounterVec,
    denials: IntCounterVec,
    limited: IntCounterVec,
}

/// Nonce, then the rate (GCRA on Redis time): -1 replayed, 0 admitted, n > 0 retry in n ms. A
/// refused replay costs the app no budget; a rate-limited call still burns its nonce.
const GUARD_LUA: &str = r"
if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then return -1 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[2]) or '0')
if tat < now then tat = now end
local new_tat = tat + tonumber(ARGV[2])
local allow_at = new_tat - tonumber(ARGV[3])
if allow_at > now then return math.ceil((allow_at - now) / 1000) end
redis.call('SET', KEYS[2], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return 0
";

impl Auth {
    /// # Errors
    /// A bad credentials file or threshold list, naming the key.
    pub fn from_settings(
        settings: &Settings,
        redis: ConnectionManager,
        metrics: &crate::metrics::Metrics,
    ) -> Result<Self, anyhow::Error> {
        let default = Rate {
            per_sec: settings.rate_limit_per_sec,
            burst: settings.rate_limit_burst,
        };
        let credentials = Credentials::parse(&settings.app_credentials_text()?, default)?;
        let failures = IntCounterVec::new(
            Opts::new(
                "payd_auth_failures_total",
                "payment.v1 calls refused as UNAUTHENTICATED (or UNAVAILABLE: store), by reason",
            ),
            &["reason"],
        )?;
        let denials = IntCounterVec::new(
            Opts::new(
                "payd_auth_denials_total",
                "payment.v1 calls refused as PERMISSION_DENIED, by the role that was missing",
            ),
            &["role"],
        )?;
        let limited = IntCounterVec::new(
            Opts::new(
                "payd_rate_limited_total",
                "payment.v1 calls refused as RESOURCE_EXHAUSTED by the app's rate limit",
            ),
            &["app"],
        )?;
        for c in [&failures, &denials, &limited] {
            metrics.registry().register(Box::new(c.clone()))?;
        }
        Ok(Self {
            credentials,
            window: Duration::from_secs(settings.auth_window_secs),
            redis,
            prefix: settings.redis_key_prefix.clone(),
            large_refund: settings.refund_large_thresholds()?,
            script: redis::Script::new(GUARD_LUA),
            failures,
            denials,
            limited,
        })
    }

    fn unauthenticated(&self, why: Failure, message: &str) -> Status {
        self.failures.with_label_values(&[why.label()]).inc();
        Status::unauthenticated(message.to_owned())
    }

    fn denied(&self, role: &str, message: String) -> Status {
        self.denials.with_label_values(&[role]).inc();
        Status::permission_denied(message)
    }

    /// Checks everything that needs no IO; on success, the caller and its rate.
    fn verify(
        &self,
        path: &str,
        headers: &http::HeaderMap,
        body: &[u8],
        now: u64,
    ) -> Result<(Caller, Rate, String), Status> {
        let header = |name: &str| -> Result<&str, Status> {
            let v = headers.get(name).ok_or_else(|| {
                self.unauthenticated(
                    Failure::Missing,
                    &format!("{name} metadata is required: every payment.v1 call is signed"),
                )
            })?;
            v.to_str().map_err(|_| {
                self.unauthenticated(Failure::Malformed, &format!("{name} must be ASCII"))
            })
        };
        let app_raw = header(APP_ID_HEADER)?;
        let app = AppId::parse(APP_ID_HEADER, app_raw)
            .map_err(|e| self.unauthenticated(Failure::Malformed, &e.to_string()))?;
        let timestamp = header(TIMESTAMP_HEADER)?;
        let nonce = header(NONCE_HEADER)?;
        let signature = header(SIGNATURE_HEADER)?;
        let ts: u64 = timestamp
            .parse()
            .ok()
            .filter(|_| timestamp.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| {
                self.unauthenticated(
                    Failure::Malformed,
                    &format!("{TIMESTAMP_HEADER} must be Unix seconds"),
                )
            })?;
        if !(16..=64).contains(&nonce.len())
            || !nonce
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(self.unauthenticated(
                Failure::Malformed,
                &format!("{NONCE_HEADER} must be 16..=64 characters of A-Z a-z 0-9 - _"),
            ));
        }
        let sig = hex::decode(signature)
            .ok()
            .filter(|s| s.len() == 32)
            .ok_or_else(|| {
                self.unauthenticated(
                    Failure::Malformed,
                    &format!("{SIGNATURE_HEADER} must be 64 hex digits (HMAC-SHA256)"),
                )
            })?;
        let message = grpc_message(body).ok_or_else(|| {
            self.unauthenticated(
                Failure::Malformed,
                "the request body must be one uncompressed gRPC message",
            )
        })?;
        let entry = self.credentials.apps.get(app.as_str()).ok_or_else(|| {
            self.unauthenticated(Failure::UnknownApp, "x-app-id names no registered app")
        })?;
        let digest = hex::encode(Sha256::digest(message));
        let canonical = canonical_string(path, app.as_str(), timestamp, nonce, &digest);
        let matches = entry.secrets.iter().any(|secret| {
            <Hmac<Sha256> as Mac>::new_from_slice(secret.expose().as_bytes())
                .map(|mut mac| {
                    mac.update(canonical.as_bytes());
                    // Constant-time comparison.
                    mac.verify_slice(&sig).is_ok()
                })
                .unwrap_or(false)
        });
        if !matches {
            return Err(self.unauthenticated(
                Failure::WrongSignature,
                "x-payd-signature does not match the request under any of the app's secrets",
            ));
        }
        let window = self.window.as_secs();
        if now > ts.saturating_add(window) {
            return Err(self.unauthenticated(
                Failure::Expired,
                &format!(
                    "the signature expired: signed {}s ago, the window is ±{window}s",
                    now - ts
                ),
            ));
        }
        if ts > now.saturating_add(window) {
            return Err(self.unauthenticated(
                Failure::Future,
                &format!(
                    "the signature is dated {}s in the future, the window is ±{window}s",
                    ts - now
                ),
            ));
        }
        let Some(role) = METHOD_ROLES
            .iter()
            .find(|(m, _)| *m == path)
            .map(|(_, r)| *r)
        else {
            return Err(self.denied("none", format!("{path} is not open to apps")));
        };
        if !entry.roles.contains(role) {
            return Err(self.denied(role, format!("app {app} lacks the role {role} for {path}")));
        }
        if path == "/payment.v1.PaymentService/CreateRefund"
            && !entry.roles.contains(REFUNDS_WRITE_LARGE)
            && let Ok(r) = payproto::payment::v1::CreateRefundRequest::decode(message)
            && let Some(amount) = r.amount
            && let Some(limit) = self.large_refund.get(&amount.currency)
            && amount.amount_minor > *limit
        {
            return Err(self.denied(
                REFUNDS_WRITE_LARGE,
                format!(
                    "a refund above {limit} minor units of {} needs the role {REFUNDS_WRITE_LARGE}",
                    amount.currency
                ),
            ));
        }
        let nonce_key = format!("{}auth:nonce:{app}:{nonce}", self.prefix);
        Ok((
            Caller {
                app,
                roles: entry.roles.clone(),
            },
            entry.rate,
            nonce_key,
        ))
    }

    /// One Redis round trip: remembers the nonce for twice the window (a timestamp at the edge
    /// of the window stays acceptable that long) and charges the app's rate.
    async fn guard(&self, caller: &Caller, rate: Rate, nonce_key: &str) -> Result<(), Status> {
        let emission_us = 1_000_000 / u64::from(rate.per_sec).max(1);
        let tolerance_us = emission_us * u64::from(rate.burst);
        let ttl_ms = u64::try_from(self.window.as_millis())
            .unwrap_or(u64::MAX / 4)
            .saturating_mul(2)
            .max(1);
        let rate_key = format!("{}auth:rate:{}", self.prefix, caller.app);
        let mut conn = self.redis.clone();
        let r: Result<i64, _> = self
            .script
            .key(nonce_key)
            .key(rate_key)
            .arg(ttl_ms)
            .arg(emission_us)
            .arg(tolerance_us)
            .invoke_async(&mut conn)
            .await;
        match r {
            Ok(0) => Ok(()),
            Ok(-1) => Err(self.unauthenticated(
                Failure::Replayed,
                "x-payd-nonce was already used: a request is accepted once",
            )),
            Ok(ms) => {
                self.limited.with_label_values(&[caller.app.as_str()]).inc();
                let mut s = Status::resource_exhausted(format!(
                    "app {} is over its rate limit of {}/s (burst {}); retry in {ms} ms",
                    caller.app, rate.per_sec, rate.burst
                ));
                if let Ok(v) = ms.to_string().parse() {
                    s.metadata_mut().insert("retry-after-ms", v);
                }
                Err(s)
            }
            Err(e) => {
                tracing::warn!(error = %e, "auth store (Redis) unavailable; refusing the call");
                self.failures
                    .with_label_values(&["store_unavailable"])
                    .inc();
                Err(Status::unavailable(
                    "authentication is unavailable (nonce store); retry with backoff",
                ))
            }
        }
    }
}

/// The message of a body holding one uncompressed gRPC frame; the empty body is the empty
/// message.
fn grpc_message(body: &[u8]) -> Option<&[u8]> {
    if body.is_empty() {
        return Some(body);
    }
    let (head, rest) = body.split_at_checked(5)?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    (head[0] == 0 && rest.len() == len).then_some(rest)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The layer, added once to the server (see `grpc::build_grpc_router`).
#[derive(Clone)]
pub struct AuthLayer {
    auth: Arc<Auth>,
}

impl AuthLayer {
    pub fn new(auth: Auth) -> Self {
        Self {
            auth: Arc::new(auth),
        }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Authenticated<S>;
    fn layer(&self, inner: S) -> Authenticated<S> {
        Authenticated {
            inner,
            auth: self.auth.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Authenticated<S> {
    inner: S,
    auth: Arc<Auth>,
}

impl<S> tower::Service<http::Request<Body>> for Authenticated<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<http::Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if !req.uri().path().starts_with("/payment.v1.") {
            return Box::pin(inner.call(req));
        }
        let auth = self.auth.clone();
        Box::pin(async move {
            let (mut parts, body) = req.into_parts();
            let bytes = match Limited::new(body, MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => {
                    return Ok(Status::resource_exhausted(
                        "the request body is larger than 4 MiB or was cut off",
                    )
                    .into_http());
                }
            };
            let checked = auth.verify(parts.uri.path(), &parts.headers, &bytes, unix_now());
            let (caller, rate, nonce_key) = match checked {
                Ok(c) => c,
                Err(s) => return Ok(s.into_http()),
            };
            if let Err(s) = auth.guard(&caller, rate, &nonce_key).await {
                return Ok(s.into_http());
            }
            parts.extensions.insert(caller);
            inner
                .call(http::Request::from_parts(
                    parts,
                    Body::new(Full::new(bytes)),
                ))
                .await
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECRET: &str = "fuzz-fixture-secret-0123456789abcdef";
    const PATH: &str = "/payment.v1.PaymentService/CreateOrder";

    /// An Auth with one app holding every role, built once; Redis is never reached by
    /// `verify` (the lazy connection manager only needs a runtime to exist).
    fn auth() -> &'static Auth {
        static RT: std::sync::LazyLock<tokio::runtime::Runtime> = std::sync::LazyLock::new(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
        });
        static AUTH: std::sync::LazyLock<Auth> = std::sync::LazyLock::new(|| {
            let _entered = RT.enter();
            build_auth()
        });
        &AUTH
    }

    fn build_auth() -> Auth {
        let settings = Settings {
            app_credentials: Some(Secret::new(format!(
                "[[app]]\nid = \"shop-1\"\nsecrets = [\"{SECRET}\"]\nroles = [{}]\n",
                ROLES
                    .iter()
                    .map(|r| format!("\"{r}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
            refund_large_thresholds: "CNY=100".into(),
            ..Settings::default()
        };
        let client = redis::Client::open("redis://127.0.0.1:1/").unwrap();
        let redis = ConnectionManager::new_lazy_with_config(
            client,
            redis::aio::ConnectionManagerConfig::new(),
        )
        .unwrap();
        Auth::from_settings(&settings, redis, &crate::metrics::Metrics::new().unwrap()).unwrap()
    }

    fn framed(message: &[u8]) -> Vec<u8> {
        let mut b = vec![0];
        b.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
        b.extend_from_slice(message);
        b
    }

    /// Headers of a correctly signed call of `message` at `now`.
    fn signed_headers(message: &[u8], now: u64) -> http::HeaderMap {
        let digest = hex::encode(Sha256::digest(message));
        let nonce = "0123456789abcdef0123456789abcdef";
        let canonical = canonical_string(PATH, "shop-1", &now.to_string(), nonce, &digest);
        let sig = payproto::auth::sign(SECRET.as_bytes(), &canonical);
        let mut h = http::HeaderMap::new();
        h.insert(APP_ID_HEADER, "shop-1".parse().unwrap());
        h.insert(TIMESTAMP_HEADER, now.to_string().parse().unwrap());
        h.insert(NONCE_HEADER, nonce.parse().unwrap());
        h.insert(SIGNATURE_HEADER, sig.parse().unwrap());
        h
    }

    #[test]
    fn a_signed_call_verifies_and_its_caller_is_the_signing_app() {
        let a = auth();
        let now = 1_767_225_600;
        let (caller, _, nonce_key) = a
            .verify(
                PATH,
                &signed_headers(b"\x0a\x02hi", now),
                &framed(b"\x0a\x02hi"),
                now,
            )
            .unwrap();
        assert_eq!(caller.app.as_str(), "shop-1");
        assert!(nonce_key.ends_with("shop-1:0123456789abcdef0123456789abcdef"));
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512),
            ..ProptestConfig::default()
        })]

        /// Arbitrary metadata values and bodies: never a panic, and never accepted.
        #[test]
        fn fuzz_arbitrary_metadata_is_refused_without_panicking(
            app in proptest::option::of("[ -~]{0,80}"),
            ts in proptest::option::of("[ -~]{0,24}"),
            nonce in proptest::option::of("[ -~]{0,80}"),
            sig in proptest::option::of("[ -~]{0,80}"),
            path in "[ -~]{0,64}",
            body in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let a = auth();
            let mut h = http::HeaderMap::new();
            for (name, v) in [(APP_ID_HEADER, &app), (TIMESTAMP_HEADER, &ts), (NONCE_HEADER, &nonce), (SIGNATURE_HEADER, &sig)] {
                if let Some(v) = v
                    && let Ok(v) = http::HeaderValue::from_str(v)
                {
                    h.insert(name, v);
                }
            }
            prop_assert!(a.verify(&path, &h, &body, 1_767_225_600).is_err());
        }

        /// A correctly signed call with one byte of one header, of the body, or of the path
        /// changed: refused, never a panic.
        #[test]
        fn fuzz_a_signed_call_with_one_byte_changed_is_refused(
            message in proptest::collection::vec(any::<u8>(), 0..200),
            which in 0usize..6,
            pos in any::<usize>(),
            byte in any::<u8>(),
        ) {
            let a = auth();
            let now = 1_767_225_600;
            let mut h = signed_headers(&message, now);
            let mut body = framed(&message);
            let mut path = PATH.as_bytes().to_vec();
            let flip = |v: &mut Vec<u8>| -> bool {
                if v.is_empty() { return false; }
                let i = pos % v.len();
                let changed = v[i] != byte;
                v[i] = byte;
                changed
            };
            let changed = match which {
                0..=3 => {
                    let name = [APP_ID_HEADER, TIMESTAMP_HEADER, NONCE_HEADER, SIGNATURE_HEADER][which];
                    let mut v = h[name].as_bytes().to_vec();
                    let changed = flip(&mut v);
                    match http::HeaderValue::from_bytes(&v) {
                        Ok(v) => { h.insert(name, v); changed }
                        Err(_) => false,
                    }
                }
                4 => flip(&mut body),
                _ => flip(&mut path),
            };
            let path = String::from_utf8_lossy(&path).into_owned();
            let r = a.verify(&path, &h, &body, now);
            if changed {
                // An upper-case hex digit in the signature is the same signature.
                let lower = |h: &http::HeaderMap| h[SIGNATURE_HEADER].to_str().ok().map(str::to_ascii_lowercase);
                let same_sig = which == 3 && lower(&h) == lower(&signed_headers(&message, now));
                prop_assert!(r.is_err() || same_sig, "accepted after changing part {which}");
            } else {
                prop_assert!(r.is_ok());
            }
        }
    }

    #[test]
    fn every_method_of_the_table_needs_a_known_role() {
        for (m, r) in METHOD_ROLES {
            assert!(m.starts_with("/payment.v1."), "{m}");
            assert!(ROLES.contains(r), "{m}: {r}");
        }
    }

    #[test]
    fn a_body_is_one_uncompressed_frame() {
        assert_eq!(grpc_message(b""), Some(&b""[..]));
        assert_eq!(grpc_message(b"\x00\x00\x00\x00\x02hi"), Some(&b"hi"[..]));
        assert_eq!(grpc_message(b"\x01\x00\x00\x00\x02hi"), None);
        assert_eq!(grpc_message(b"\x00\x00\x00\x00\x01hi"), None);
        assert_eq!(grpc_message(b"\x00\x00"), None);
    }

    #[test]
    fn credentials_name_what_is_wrong() {
        let d = Rate {
            per_sec: 10,
            burst: 10,
        };
        let ok = Credentials::parse(
            "[[app]]\nid = \"shop-1\"\nsecrets = [\"0123456789abcdef0123456789abcdef\"]\nroles = [\"orders.read\"]\n",
            d,
        )
        .unwrap();
        assert_eq!(ok.apps["shop-1"].rate, d);
        let short =
            Credentials::parse("[[app]]\nid = \"shop-1\"\nsecrets = [\"short\"]\n", d).unwrap_err();
        assert!(short.to_string().contains("32 characters"), "{short}");
        let role = Credentials::parse(
            "[[app]]\nid = \"shop-1\"\nsecrets = [\"0123456789abcdef0123456789abcdef\"]\nroles = [\"orders.all\"]\n",
            d,
        )
        .unwrap_err();
        assert!(role.to_string().contains("orders.all"), "{role}");
    }
}
