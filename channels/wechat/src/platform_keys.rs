//! The platform keys this adapter trusts, and how they stay current while WeChat rotates them:
//! public keys configured by the operator (public-key mode, `PUB_KEY_ID_…`) plus platform
//! certificates downloaded from `/v3/certificates` (certificate mode), all at once and chosen by
//! `Wechatpay-Serial`, so both modes work during WeChat's migration, when it signs with either at
//! random. Certificates are fetched at start, periodically, and when an answer or callback names a
//! serial we do not know (at most once per `min_refresh_interval`), before it is refused.
use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::signature::{
    DownloadedCertificate, PlatformVerifier, VerifyError, WechatpayHeaders, normalize_serial,
};

/// When certificates are refreshed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefreshPolicy {
    /// Whether `/v3/certificates` is used at all (off: public-key mode only).
    pub download: bool,
    /// Periodic refresh.
    pub every: Duration,
    /// An unknown serial triggers a refresh at most this often (a flood of forged serials must
    /// not turn into a flood of downloads).
    pub min_interval: Duration,
}

/// The shared store: one per adapter process, read by every verification.
#[derive(Debug)]
pub struct PlatformKeys {
    verifier: RwLock<PlatformVerifier>,
    /// Configured public-key ids, in configuration order.
    public_key_ids: Vec<String>,
    /// Downloaded certificates: serial → end of validity (Unix seconds).
    certificates: RwLock<HashMap<String, i64>>,
    /// Last refresh caused by an unknown serial; the mutex also serializes those refreshes.
    last_refresh: tokio::sync::Mutex<Option<Instant>>,
    policy: RefreshPolicy,
}

impl PlatformKeys {
    /// A store holding the configured public keys (already in `verifier`).
    pub fn new(
        verifier: PlatformVerifier,
        public_key_ids: Vec<String>,
        policy: RefreshPolicy,
    ) -> Self {
        Self {
            verifier: RwLock::new(verifier),
            public_key_ids,
            certificates: RwLock::new(HashMap::new()),
            last_refresh: tokio::sync::Mutex::new(None),
            policy,
        }
    }

    pub fn policy(&self) -> RefreshPolicy {
        self.policy
    }

    /// Verifies with the keys known now.
    ///
    /// # Errors
    /// See [`PlatformVerifier::verify`].
    pub fn verify(
        &self,
        headers: &WechatpayHeaders<'_>,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Result<(), VerifyError> {
        self.verifier
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .verify(headers, body, now)
    }

    /// A copy of the current verifier with `extra` certificates added: what a `/v3/certificates`
    /// answer is verified with (it may be signed by a certificate it brings).
    pub fn verifier_with(&self, extra: &[DownloadedCertificate]) -> PlatformVerifier {
        let mut verifier = self
            .verifier
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        for cert in extra {
            if let Err(e) = verifier.add_public_key(&cert.serial, &cert.key) {
                tracing::warn!(serial = %cert.serial, error = %e, "a downloaded platform certificate's key is not usable");
            }
        }
        verifier
    }

    /// Adds downloaded certificates (known ones are kept: WeChat lists old and new certificates
    /// side by side during a rotation, and a signature by the old one stays valid until it expires).
    pub fn add_certificates(&self, certs: &[DownloadedCertificate]) {
        let mut verifier = self
            .verifier
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut known = self
            .certificates
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for cert in certs {
            match verifier.add_public_key(&cert.serial, &cert.key) {
                Ok(()) => {
                    known.insert(cert.serial.clone(), cert.not_after);
                }
                Err(e) => {
                    tracing::warn!(serial = %cert.serial, error = %e, "a downloaded platform certificate's key is not usable");
                }
            }
        }
    }

    pub fn contains(&self, serial: &str) -> bool {
        self.verifier
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(serial)
    }

    /// The serial sent as `Wechatpay-Serial` on requests, i.e. the key we ask WeChat to sign its
    /// answer with: the first configured public key, else the downloaded certificate that expires
    /// last. `None` when nothing is known yet.
    pub fn preferred_serial(&self) -> Option<String> {
        if let Some(id) = self.public_key_ids.first() {
            return Some(id.clone());
        }
        self.certificates
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .max_by_key(|(serial, not_after)| (**not_after, (*serial).clone()))
            .map(|(serial, _)| serial.clone())
    }

    /// Takes the unknown-serial refresh slot: `Some(guard)` when a refresh for `serial` should run
    /// now (it is still unknown and the last unknown-serial refresh is older than the minimum
    /// interval, or `force`), `None` otherwise. Holding the guard serializes these refreshes;
    /// [`RefreshSlot::done`] records the attempt.
    pub async fn refresh_slot(&self, serial: Option<&str>, force: bool) -> Option<RefreshSlot<'_>> {
        if !self.policy.download {
            return None;
        }
        let guard = self.last_refresh.lock().await;
        // Another task may have fetched the certificate while we waited for the lock.
        if serial.is_some_and(|s| self.contains(&normalize_serial(s))) {
            return None;
        }
        let recent = guard.is_some_and(|at| at.elapsed() < self.policy.min_interval);
        if recent && !force {
            return None;
        }
        Some(RefreshSlot { guard })
    }
}

/// The right to refresh now (see [`PlatformKeys::refresh_slot`]).
pub struct RefreshSlot<'a> {
    guard: tokio::sync::MutexGuard<'a, Option<Instant>>,
}

impl RefreshSlot<'_> {
    /// Records the attempt, successful or not, for the rate limit.
    pub fn done(mut self) {
        *self.guard = Some(Instant::now());
    }
}
