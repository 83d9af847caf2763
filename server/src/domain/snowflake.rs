//! Snowflake-style ids for `out_trade_no`: 41 bits of milliseconds since 2026-01-01, 10 bits of
//! worker id, 12 bits of sequence. The worker id is leased from Postgres (an advisory lock held by
//! one connection for the process's life), so live replicas never share one; the UNIQUE index on
//! `out_trade_no` remains the last word.
use std::sync::Mutex;

/// 2026-01-01T00:00:00Z in Unix milliseconds.
pub const EPOCH_MS: i64 = 1_767_225_600_000;
pub const MAX_WORKER: u16 = 1023;

#[derive(Debug)]
pub struct Snowflake {
    worker: u16,
    state: Mutex<(i64, u16)>,
}

impl Snowflake {
    /// # Panics
    /// Never; a worker id above [`MAX_WORKER`] is masked to 10 bits by the caller's lease.
    pub fn new(worker: u16) -> Self {
        Self {
            worker: worker & MAX_WORKER,
            state: Mutex::new((0, 0)),
        }
    }

    pub fn worker(&self) -> u16 {
        self.worker
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
        (t << 22) | (u64::from(self.worker) << 12) | u64::from(seq)
    }

    /// `out_trade_no`: "P" plus the decimal id (at most 20 characters), alphanumeric only so every
    /// channel accepts it (UnionPay's orderId allows no punctuation).
    pub fn out_trade_no(&self) -> String {
        format!("P{}", self.next_at(chrono::Utc::now().timestamp_millis()))
    }
}

#[cfg(test)]
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
    fn out_trade_no_fits_every_channel() {
        let no = Snowflake::new(1023).out_trade_no();
        assert!(no.len() <= 32 && no.len() >= 8, "{no}");
        assert!(no.chars().all(|c| c.is_ascii_alphanumeric()));
    }
}
