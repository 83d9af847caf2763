//! Snowflake-style ids for `out_trade_no`: 41 bits of milliseconds since 2026-01-01, 10 bits of
//! worker id, 12 bits of sequence. The worker id is leased from Postgres (an advisory lock held by
//! one connection for the process's life), so live replicas never share one; the UNIQUE index on
//! `out_trade_no` remains the last word.
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};

/// 2026-01-01T00:00:00Z in Unix milliseconds.
pub const EPOCH_MS: i64 = 1_767_225_600_000;
pub const MAX_WORKER: u16 = 1023;

#[derive(Debug)]
pub struct Snowflake {
    worker: AtomicU16,
    /// False while the worker-id lease is not known to be held: no id is minted then, since
    /// another replica may have taken the same worker id.
    leased: AtomicBool,
    state: Mutex<(i64, u16)>,
}

impl Snowflake {
    /// # Panics
    /// Never; a worker id above [`MAX_WORKER`] is masked to 10 bits by the caller's lease.
    pub fn new(worker: u16) -> Self {
        Self {
            worker: AtomicU16::new(worker & MAX_WORKER),
            leased: AtomicBool::new(true),
            state: Mutex::new((0, 0)),
        }
    }

    pub fn worker(&self) -> u16 {
        self.worker.load(Ordering::SeqCst)
    }

    /// The lease was lost: stop minting until [`Snowflake::leased_again`].
    pub fn lease_lost(&self) {
        self.leased.store(false, Ordering::SeqCst);
    }

    /// A lease on `worker` is held again (maybe another id than before).
    pub fn leased_again(&self, worker: u16) {
        self.worker.store(worker & MAX_WORKER, Ordering::SeqCst);
        self.leased.store(true, Ordering::SeqCst);
    }

    pub fn is_leased(&self) -> bool {
        self.leased.load(Ordering::SeqCst)
    }

    /// The next id for `now_ms`; monotonic even if the clock steps back (it then borrows from the
    /// last millisecond's sequence space, moving forward in time logically).
    pub fn next_at(&self, now_ms: i64) -> u64 {
        let mut st = match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let (last, seq) = *st;
        let (ms, seq) = if now_ms > last {
            (now_ms, 0)
        } else if seq < 4095 {
            (last, seq + 1)
        } else {
            (last + 1, 0)
        };
        *st = (ms, seq);
        let t = u64::try_from(ms - EPOCH_MS).unwrap_or(0) & ((1 << 41) - 1);
        (t << 22) | (u64::from(self.worker()) << 12) | u64::from(seq)
    }

    /// `out_trade_no`: "P" plus the decimal id (at most 20 characters), alphanumeric only so every
    /// channel accepts it (UnionPay's orderId allows no punctuation).
    ///
    /// `None` while the worker-id lease is lost.
    pub fn out_trade_no(&self) -> Option<String> {
        self.is_leased()
            .then(|| format!("P{}", self.next_at(chrono::Utc::now().timestamp_millis())))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_increasing_within_a_worker_even_when_the_clock_stalls() {
        let s = Snowflake::new(7);
        let mut last = 0;
        for i in 0..10_000 {
            // The clock stands still for 10 000 ids, then steps back.
            let now = EPOCH_MS + 1_000 - i64::from(i >= 9_000);
            let id = s.next_at(now);
            assert!(id > last);
            last = id;
        }
    }

    #[test]
    fn different_workers_never_collide() {
        let a = Snowflake::new(1);
        let b = Snowflake::new(2);
        let now = EPOCH_MS + 5;
        let ids_a: Vec<_> = (0..100).map(|_| a.next_at(now)).collect();
        let ids_b: Vec<_> = (0..100).map(|_| b.next_at(now)).collect();
        assert!(ids_a.iter().all(|x| !ids_b.contains(x)));
    }

    #[test]
    fn no_id_is_minted_while_the_lease_is_lost() {
        let s = Snowflake::new(3);
        s.lease_lost();
        assert_eq!(s.out_trade_no(), None);
        s.leased_again(4);
        assert_eq!(s.worker(), 4);
        assert!(s.out_trade_no().is_some());
    }

    #[test]
    fn out_trade_no_fits_every_channel() {
        let no = Snowflake::new(1023).out_trade_no().unwrap();
        assert!(no.len() <= 32 && no.len() >= 8, "{no}");
        assert!(no.chars().all(|c| c.is_ascii_alphanumeric()));
    }
}
