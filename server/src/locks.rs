//! Per-order distributed locks in Redis with fencing tokens.
//!
//! The lock keeps replicas from racing to the same order (and, later, to the same channel call);
//! it never carries correctness alone. Every write made under a lock carries the lock's fencing
//! token, and Postgres refuses a write whose token is lower than one that already wrote the row
//! (`orders.fence`), so a holder that paused past its TTL cannot overwrite a newer holder's work.
//!
//! Exactly two Redis round trips per locked section: one script acquires the lock *and* mints
//! the fencing token; one script releases by compare-and-delete.
use std::sync::Arc;
use std::time::Duration;

use rand::RngCore;
use redis::Script;
use redis::aio::ConnectionManager;

/// `SET lock token NX PX ttl`; on success mint the next fencing token.
///
/// Tokens are `max(previous + 1, Redis server time in µs)`: strictly increasing while Redis keeps
/// its data, and still increasing after Redis loses it (a restart without persistence), because
/// the clock has moved on. A plain INCR would restart at 1 and every later write would be fenced
/// out by the higher tokens Postgres has already seen.
const ACQUIRE: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local last = tonumber(redis.call('GET', KEYS[2]) or '0')
  local fence = math.max(now, last + 1)
  redis.call('SET', KEYS[2], string.format('%d', fence), 'PX', ARGV[3])
  return fence
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

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("lock {0} is held by another call")]
    Busy(String),
    #[error("redis unavailable: {0}")]
    Redis(#[from] redis::RedisError),
}

/// A held lock. Dropping it without [`Locks::release`] leaves the lock to expire at its TTL.
#[derive(Debug)]
#[must_use = "release the lock when the critical section ends"]
pub struct LockGuard {
    key: String,
    token: String,
    fence: i64,
}

impl LockGuard {
    /// The fencing token every write in this critical section must carry.
    pub fn fence(&self) -> i64 {
        self.fence
    }
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
}

impl Locks {
    pub fn new(
        redis: ConnectionManager,
        prefix: impl Into<String>,
        ttl: Duration,
        wait: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                redis,
                prefix: prefix.into(),
                ttl,
                wait,
                acquire: Script::new(ACQUIRE),
                release: Script::new(RELEASE),
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
        self.acquire_with_ttl(resource, self.inner.ttl).await
    }

    pub async fn acquire_with_ttl(
        &self,
        resource: &str,
        ttl: Duration,
    ) -> Result<LockGuard, LockError> {
        let key = format!("{}lock:{resource}", self.inner.prefix);
        let fence_key = format!("{}fence:{resource}", self.inner.prefix);
        let mut raw = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut raw);
        let token = hex::encode(raw);
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        // The fence counter outlives many lock generations; after it expires the clock still
        // keeps tokens increasing.
        let fence_ttl_ms = ttl_ms.saturating_mul(100).max(3_600_000);
        let deadline = tokio::time::Instant::now() + self.inner.wait;
        let mut backoff = Duration::from_millis(5);
        let mut conn = self.inner.redis.clone();
        loop {
            let fence: i64 = self
                .inner
                .acquire
                .key(&key)
                .key(&fence_key)
                .arg(&token)
                .arg(ttl_ms)
                .arg(fence_ttl_ms)
                .invoke_async(&mut conn)
                .await?;
            if fence > 0 {
                return Ok(LockGuard { key, token, fence });
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(LockError::Busy(resource.to_owned()));
            }
            let jitter = Duration::from_millis(u64::from(rand::thread_rng().next_u32() % 5));
            tokio::time::sleep((backoff + jitter).min(deadline - now)).await;
            backoff = (backoff * 2).min(Duration::from_millis(100));
        }
    }

    /// Releases the lock if this guard still holds it. Returns false when the lock had already
    /// expired (and maybe been taken by someone else, whose lock is left alone).
    pub async fn release(&self, guard: LockGuard) -> Result<bool, LockError> {
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
}
