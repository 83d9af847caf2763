//! Request signing for `payment.v1` callers: the canonical string payd verifies, and a tower
//! layer that signs every call a tonic client makes. payd shares only [`canonical_string`] and the
//! metadata names with this module; hashing, framing and HMAC are written again on its side, and
//! the test vector below (also in the README) pins both.
//!
//! # The signature
//! ```text
//! PAYD1-HMAC-SHA256\n<method path>\n<app id>\n<timestamp>\n<nonce>\n<hex sha256 of the body>
//! ```
//! * method path: the full gRPC path, e.g. `/payment.v1.PaymentService/CreateOrder`;
//! * timestamp: Unix seconds, decimal (`x-payd-timestamp`);
//! * nonce: 16 to 64 characters of `[A-Za-z0-9_-]`, never reused (`x-payd-nonce`);
//! * body: the request message as encoded protobuf bytes, without gRPC's 5-byte length prefix
//!   (every `payment.v1` call sends exactly one request message; an empty message hashes the
//!   empty string); compressed requests are not accepted.
//!
//! `x-payd-signature` is the lowercase hex HMAC-SHA256 of that string under one of the app's
//! secrets; `x-app-id` names the app.
use std::collections::HashMap;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use sha2::{Digest, Sha256};
use tonic::body::Body;
use tonic::codegen::http;

/// Metadata naming the calling app.
pub const APP_ID_HEADER: &str = "x-app-id";
/// Metadata carrying the Unix time (seconds) the request was signed at.
pub const TIMESTAMP_HEADER: &str = "x-payd-timestamp";
/// Metadata carrying the request's single-use nonce.
pub const NONCE_HEADER: &str = "x-payd-nonce";
/// Metadata carrying the hex HMAC-SHA256 signature.
pub const SIGNATURE_HEADER: &str = "x-payd-signature";
/// The first line of the canonical string: names the scheme, so a later one cannot be confused
/// with it.
pub const SCHEME: &str = "PAYD1-HMAC-SHA256";

/// The exact string that is signed (no trailing newline).
pub fn canonical_string(
    method_path: &str,
    app_id: &str,
    timestamp: &str,
    nonce: &str,
    body_sha256_hex: &str,
) -> String {
    format!("{SCHEME}\n{method_path}\n{app_id}\n{timestamp}\n{nonce}\n{body_sha256_hex}")
}

/// Lowercase hex HMAC-SHA256 of `canonical` under `secret`.
pub fn sign(secret: &[u8], canonical: &str) -> String {
    // HMAC accepts keys of any length; this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(canonical.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// The apps a client may sign as, and their secrets (the newest one of each app).
#[derive(Clone, Default)]
pub struct SigningKeys {
    secrets: Arc<HashMap<String, Vec<u8>>>,
    default_app: Option<String>,
}

impl std::fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKeys")
            .field("apps", &self.secrets.keys().collect::<Vec<_>>())
            .field("default_app", &self.default_app)
            .finish_non_exhaustive()
    }
}

impl SigningKeys {
    /// One app: every request is signed and sent as this app (its `x-app-id` is set to it).
    pub fn single(app_id: &str, secret: &[u8]) -> Self {
        Self {
            secrets: Arc::new(HashMap::from([(app_id.to_owned(), secret.to_vec())])),
            default_app: Some(app_id.to_owned()),
        }
    }

    /// Several apps (a test harness): each request is signed as the app its `x-app-id` names; a
    /// request without one, or naming an app not held here, goes out unsigned.
    pub fn many<'a>(apps: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Self {
        Self {
            secrets: Arc::new(
                apps.into_iter()
                    .map(|(a, s)| (a.to_owned(), s.to_vec()))
                    .collect(),
            ),
            default_app: None,
        }
    }
}

/// Signs every request of the service it wraps.
#[derive(Clone, Debug)]
pub struct SignLayer {
    keys: SigningKeys,
}

impl SignLayer {
    pub fn new(keys: SigningKeys) -> Self {
        Self { keys }
    }
}

impl<S> tower::Layer<S> for SignLayer {
    type Service = Signed<S>;
    fn layer(&self, inner: S) -> Signed<S> {
        Signed {
            inner,
            keys: self.keys.clone(),
        }
    }
}

/// A tonic transport (usually a `Channel`) whose requests are signed: the body is buffered (one
/// request message), hashed and signed with a fresh nonce and the current time.
#[derive(Clone, Debug)]
pub struct Signed<S> {
    inner: S,
    keys: SigningKeys,
}

/// A signed `Channel`, the transport of `payment.v1` clients.
pub type SignedChannel = Signed<tonic::transport::Channel>;

/// A boxed error, what tonic clients accept from their transport.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

impl<S> Signed<S> {
    pub fn new(inner: S, keys: SigningKeys) -> Self {
        Self { inner, keys }
    }
}

/// The gRPC message inside a one-frame body (the body itself when it is not framed as expected;
/// payd refuses such a request anyway).
fn message_of(body: &[u8]) -> &[u8] {
    match body.get(5..) {
        Some(m) if body[0] == 0 => m,
        _ => body,
    }
}

/// A fresh 32-character nonce.
fn nonce() -> String {
    format!("{:032x}", rand::random::<u128>())
}

impl<S, R> tower::Service<http::Request<Body>> for Signed<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
{
    type Response = http::Response<R>;
    type Error = BoxError;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, BoxError>> + Send>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        // The clone that was polled ready is the one that serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let keys = self.keys.clone();
        Box::pin(async move {
            let (mut parts, body) = req.into_parts();
            // One app: always that one. Several: the one the request names.
            let app = match (&keys.default_app, parts.headers.get(APP_ID_HEADER)) {
                (Some(app), _) => Some(app.clone()),
                (None, Some(v)) => v.to_str().ok().map(str::to_owned),
                (None, None) => None,
            };
            let Some((app, secret)) = app.and_then(|a| keys.secrets.get(&a).map(|s| (a, s))) else {
                return inner
                    .call(http::Request::from_parts(parts, body))
                    .await
                    .map_err(Into::into);
            };
            let bytes = body.collect().await?.to_bytes();
            let digest = hex::encode(Sha256::digest(message_of(&bytes)));
            let timestamp = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
                .to_string();
            let nonce = nonce();
            let canonical = canonical_string(parts.uri.path(), &app, &timestamp, &nonce, &digest);
            let signature = sign(secret, &canonical);
            let h = &mut parts.headers;
            h.insert(APP_ID_HEADER, http::HeaderValue::from_str(&app)?);
            h.insert(TIMESTAMP_HEADER, http::HeaderValue::from_str(&timestamp)?);
            h.insert(NONCE_HEADER, http::HeaderValue::from_str(&nonce)?);
            h.insert(SIGNATURE_HEADER, http::HeaderValue::from_str(&signature)?);
            inner
                .call(http::Request::from_parts(
                    parts,
                    Body::new(Full::new(bytes)),
                ))
                .await
                .map_err(Into::into)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's test vector: fixed secret, time, nonce and body. The expected value was
    /// computed with Python's `hmac`/`hashlib`, not with this code.
    #[test]
    fn the_readme_test_vector_signs_as_documented() {
        let body = b"\x0a\x0bORDER-00001";
        let digest = hex::encode(Sha256::digest(body));
        assert_eq!(
            digest,
            "a0e1e61a5376b9320ccf6a28d8b4c22eff21cf071754565887aae5a8dae599ba"
        );
        let canonical = canonical_string(
            "/payment.v1.PaymentService/CreateOrder",
            "shop-1",
            "1767225600",
            "0123456789abcdef0123456789abcdef",
            &digest,
        );
        assert_eq!(
            canonical,
            format!(
                "PAYD1-HMAC-SHA256\n/payment.v1.PaymentService/CreateOrder\nshop-1\n1767225600\n0123456789abcdef0123456789abcdef\n{digest}"
            )
        );
        assert_eq!(
            sign(b"test-vector-secret-not-for-production", &canonical),
            "8eb4a7f898fddf6af18d1987a2a03182a7371f0f68da7e4058caf003ba10cc11"
        );
    }

    #[test]
    fn the_message_is_the_frame_payload() {
        assert_eq!(message_of(b"\x00\x00\x00\x00\x02hi"), b"hi");
        assert_eq!(message_of(b""), b"");
    }
}
