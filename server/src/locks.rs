//! Per-order distributed locks in Redis with fencing tokens from Postgres.
//!
//! The lock keeps replicas from racing to the same order (and to the same channel call); it
//! never carries correctness alone. Every write made under a lock carries the lock's fencing
//! token, and Postgres refuses a write whose token is lower than one that already wrote the row
//! (`orders.fence`), so a holder that paused past its TTL cannot overwrite a newer holder's work.
//!
//! Tokens come from the `lock_fences` sequence, minted right after the lock is taken: strictly
//! increasing across replicas, Redis restarts and failovers, whatever the Redis clock says (a
//! token derived from Redis data or time can go backwards after a failover to a replica whose
//! clock is behind, and a stale holder's write would then win).
//!
//! Two Redis round trips per locked section (acquire, compare-and-delete release) plus one
//! database round trip for the token, or none where the section's first statement draws the
//! token itself ([`Locks::acquire_unfenced`]: Pay). While held, the lock is renewed every third of its TTL, so
//! it outlives any chain of channel calls under it; a holder that stops running (paused, cut off
//! from Redis) stops renewing, loses the lock at its TTL, and the fence refuses its late writes.
use std::sync::Arc;
use std::time::Duration;

use rand::RngCore;
use redis::Script;
use redis::aio::ConnectionManager;

use crate::storage::{Db, StorageError};

/// `SET lock token NX PX ttl`: 1 when taken.
const ACQUIRE: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
return 0
";

/// Compare-and-delete: only the holder's token releases the lock (GET then DEL would race).
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Compare-and-extend: only the holder's token renews the lock.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("lock {0} is held by another call")]
    Busy(String),
    #[error("redis unavailable: {0}")]
    Redis(#[from] redis::RedisError),
    /// The fencing token could not be minted (Postgres unreachable); the lock was released.
    #[error("fence unavailable: {0}")]
    Fence(#[from] StorageError),
}

/// A held lock. Dropping it without [`Locks::release`] leaves the lock to expire at its TTL.
#[derive(Debug)]
#[must_use = "release the lock when the critical section ends"]
pub struct LockGuard {
    key: String,
    token: String,
    fence: i64,
    /// Keeps the lock alive while the guard lives; aborted on release or drop.
    renewal: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Some(r) = self.renewal.take() {
            r.abort();
        }
    }
}

impl LockGuard {
    /// The fencing token every write in this critical section must carry.
    pub fn fence(&self) -> i64 {
        self.fence
    }
}

/// A lock held in Redis whose fencing token is not minted yet (see [`Locks::acquire_unfenced`]).
/// Nothing may be written under it until [`Locks::fence`] turns it into a [`LockGuard`].
#[derive(Debug)]
#[must_use = "fence the lock, or abandon it"]
pub struct Unfenced {
    guard: LockGuard,
    resource: String,
    /// When the SET that took the lock was sent.
    taken_at: std::time::Instant,
    ttl: Duration,
    renew: bool,
}

#[derive(Clone)]
pub struct Locks {
    inner: Arc<Inner>,
}

struct Inner {
    redis: ConnectionManager,
    prefix: String,
    ttl: Duration,
    wait: Duration,
    acquire: Script,
    release: Script,
    renew: Script,
    db: Db,
}

impl Locks {
    pub fn new(
        redis: ConnectionManager,
        prefix: impl Into<String>,
        ttl: Duration,
        wait: Duration,
        db: Db,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                redis,
                prefix: prefix.into(),
                ttl,
                wait,
                acquire: Script::new(ACQUIRE),
                release: Script::new(RELEASE),
                renew: Script::new(RENEW),
                db,
            }),
        }
    }

    /// Acquires the lock on `resource` (e.g. `order:<id>`), waiting up to the configured bound
    /// with jittered backoff.
    ///
    /// # Errors
    /// [`LockError::Busy`] when the wait runs out; [`LockError::Redis`] when Redis cannot be
    /// reached: the caller fails fast (UNAVAILABLE) rather than proceed without the lock.
    pub async fn acquire(&self, resource: &str) -> Result<LockGuard, LockError> {
        self.acquire_renewed(resource, self.inner.ttl).await
    }

    /// Acquires with an explicit TTL and no renewal: the holder loses the lock at the TTL even
    /// while it runs (tests use it to stand for a paused holder).
    ///
    /// # Errors
    /// As [`Locks::acquire`].
    pub async fn acquire_with_ttl(
        &self,
        resource: &str,
        ttl: Duration,
    ) -> Result<LockGuard, LockError> {
        self.acquire_inner(resource, ttl, false).await
    }

    async fn acquire_renewed(&self, resource: &str, ttl: Duration) -> Result<LockGuard, LockError> {
        self.acquire_inner(resource, ttl, true).await
    }

    async fn acquire_inner(
        &self,
        resource: &str,
        ttl: Duration,
        renew: bool,
    ) -> Result<LockGuard, LockError> {
        let pending = self.take(resource, ttl, renew).await?;
        match self.inner.db.run(crate::storage::orders::mint_fence).await {
            Ok(f) => self.fence(pending, f).await,
            Err(e) => {
                self.abandon(pending).await;
                Err(LockError::Fence(e))
            }
        }
    }

    /// Takes the lock in Redis and leaves minting its fencing token to the caller, whose first
    /// statement draws it (`nextval('lock_fences')`) in the same round trip as its first read,
    /// which saves the round trip (and the commit) of a statement of its own. The caller hands
    /// the token to [`Locks::fence`] before writing anything, or gives the lock back with
    /// [`Locks::abandon`]. Waits and fails as [`Locks::acquire`].
    ///
    /// # Errors
    /// As [`Locks::acquire`] ([`LockError::Fence`] excepted).
    pub async fn acquire_unfenced(&self, resource: &str) -> Result<Unfenced, LockError> {
        self.take(resource, self.inner.ttl, true).await
    }

    async fn take(
        &self,
        resource: &str,
        ttl: Duration,
        renew: bool,
    ) -> Result<Unfenced, LockError> {
        let key = format!("{}lock:{resource}", self.inner.prefix);
        let mut raw = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut raw);
        let token = hex::encode(raw);
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let deadline = tokio::time::Instant::now() + self.inner.wait;
        let mut backoff = Duration::from_millis(5);
        let mut conn = self.inner.redis.clone();
        let taken_at = loop {
            let sent_at = std::time::Instant::now();
            let taken: i64 = self
                .inner
                .acquire
                .key(&key)
                .arg(&token)
                .arg(ttl_ms)
                .invoke_async(&mut conn)
                .await?;
            if taken == 1 {
                break sent_at;
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(LockError::Busy(resource.to_owned()));
            }
            let jitter = Duration::from_millis(u64::from(rand::thread_rng().next_u32() % 5));
            tokio::time::sleep((backoff + jitter).min(deadline - now)).await;
            backoff = (backoff * 2).min(Duration::from_millis(100));
        };
        Ok(Unfenced {
            guard: LockGuard {
                key,
                token,
                fence: 0,
                renewal: None,
            },
            resource: resource.to_owned(),
            taken_at,
            ttl,
            renew,
        })
    }

    /// Completes a lock taken by [`Locks::acquire_unfenced`] with the fencing token minted
    /// since. Refused (and the lock given back) when the token may have been minted after the
    /// lock could have expired: such a token might be higher than the next holder's.
    ///
    /// # Errors
    /// [`LockError::Busy`] when the token came too late.
    pub async fn fence(&self, pending: Unfenced, fence: i64) -> Result<LockGuard, LockError> {
        let Unfenced {
            mut guard,
            resource,
            taken_at,
            ttl,
            renew,
        } = pending;
        guard.fence = fence;
        // Measured from before the SET, with a third of the TTL as margin for clock-rate
        // differences.
        if taken_at.elapsed() >= ttl * 2 / 3 {
            let _ = self.release(guard).await;
            return Err(LockError::Busy(format!(
                "{resource} (the fencing token took longer than the lock's validity)"
            )));
        }
        if renew {
            guard.renewal = Some(tokio::spawn(renew_loop(
                self.inner.clone(),
                guard.key.clone(),
                guard.token.clone(),
                ttl,
            )));
        }
        Ok(guard)
    }

    /// Gives back a lock whose fencing token was never minted (the caller's first statement
    /// failed, or found nothing to lock for). A failure is logged: the lock expires anyway.
    pub async fn abandon(&self, pending: Unfenced) {
        if let Err(e) = self.release(pending.guard).await {
            tracing::warn!(error = %e, "releasing an unfenced lock failed; it will expire");
        }
    }

    /// Releases the lock if this guard still holds it. Returns false when the lock had already
    /// expired (and maybe been taken by someone else, whose lock is left alone).
    pub async fn release(&self, mut guard: LockGuard) -> Result<bool, LockError> {
        if let Some(r) = guard.renewal.take() {
            r.abort();
        }
        let mut conn = self.inner.redis.clone();
        let n: i64 = self
            .inner
            .release
            .key(&guard.key)
            .arg(&guard.token)
            .invoke_async(&mut conn)
            .await?;
        Ok(n == 1)
    }

    /// Whether Redis answers a PING (the operations check behind `payd_dependency_up`).
    pub async fn ping(&self) -> bool {
        let mut conn = self.inner.redis.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .is_ok()
    }
}

/// Extends the lock every third of its TTL while its holder runs. Stops when the lock is no
/// longer this holder's (expired and taken by another): from then on only the fence speaks.
async fn renew_loop(inner: Arc<Inner>, key: String, token: String, ttl: Duration) {
    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
    let period = (ttl / 3).max(Duration::from_millis(10));
    let mut conn = inner.redis.clone();
    loop {
        tokio::time::sleep(period).await;
        let r: Result<i64, _> = inner
            .renew
            .key(&key)
            .arg(&token)
            .arg(ttl_ms)
            .invoke_async(&mut conn)
            .await;
        match r {
            Ok(1) => {}
            Ok(_) => {
                tracing::warn!(lock = %key, "lock lost before its holder finished; the fence decides its writes");
                return;
            }
            // Redis unreachable for a moment: keep trying until the TTL would have passed.
            Err(e) => tracing::warn!(lock = %key, error = %e, "lock renewal failed; retrying"),
        }
    }
}
