//! Counts order transitions where they commit, once (`payd_order_transitions_total`).
//!
//! Every order transition is written by `orders::record_transition`, inside a transaction; it
//! notes the edge here (thread-local: a transaction runs on one thread, in `Db::run`'s blocking
//! task). A diesel instrumentation on each pooled connection watches the transaction: the notes
//! of a savepoint or transaction that rolls back are dropped, and those of the outermost
//! transaction are counted once its `COMMIT` succeeds. So replays, refused writes and retried
//! transactions count nothing.
use std::cell::RefCell;

use diesel::connection::{Instrumentation, InstrumentationEvent};
use prometheus::IntCounterVec;

use crate::domain::OrderStatus;

#[derive(Default)]
struct Tx {
    /// Transaction depth now (0 outside any).
    depth: u32,
    /// The outermost COMMIT was sent; its FinishQuery says whether it worked.
    committing: bool,
    /// (depth written at, from, to).
    written: Vec<(u32, &'static str, &'static str)>,
}

thread_local! {
    static TX: RefCell<Tx> = RefCell::new(Tx::default());
}

/// Notes a transition written in the current transaction.
pub fn written(from: Option<OrderStatus>, to: OrderStatus) {
    TX.with(|t| {
        let mut t = t.borrow_mut();
        let depth = t.depth;
        t.written
            .push((depth, from.map_or("", OrderStatus::as_str), to.as_str()));
    });
}

/// The instrumentation counting committed transitions into `counter`.
pub struct CountCommitted {
    counter: IntCounterVec,
}

impl Instrumentation for CountCommitted {
    fn on_connection_event(&mut self, event: InstrumentationEvent<'_>) {
        TX.with(|t| {
            let mut t = t.borrow_mut();
            match event {
                InstrumentationEvent::BeginTransaction { depth, .. } => {
                    if depth.get() == 1 {
                        t.written.clear();
                        t.committing = false;
                    }
                    t.depth = depth.get();
                }
                InstrumentationEvent::CommitTransaction { depth, .. } => {
                    if depth.get() == 1 {
                        t.committing = true;
                    }
                    t.depth = depth.get() - 1;
                }
                InstrumentationEvent::RollbackTransaction { depth, .. } => {
                    let d = depth.get();
                    t.written.retain(|(at, _, _)| *at < d);
                    t.depth = d - 1;
                    if d == 1 {
                        t.written.clear();
                        t.committing = false;
                    }
                }
                InstrumentationEvent::FinishQuery { error, .. } if t.committing => {
                    t.committing = false;
                    let written = std::mem::take(&mut t.written);
                    if error.is_none() {
                        for (_, from, to) in written {
                            self.counter.with_label_values(&[from, to]).inc();
                        }
                    }
                }
                _ => {}
            }
        });
    }
}

impl CountCommitted {
    pub fn new(counter: IntCounterVec) -> Self {
        Self { counter }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use diesel::{Connection, PgConnection};

    use super::*;

    fn counter() -> IntCounterVec {
        IntCounterVec::new(prometheus::Opts::new("t", "t"), &["from", "to"]).unwrap()
    }

    /// A connection with the instrumentation (to the server's `postgres` database: no tables
    /// are needed).
    fn conn(c: &IntCounterVec) -> PgConnection {
        let base = std::env::var("TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned());
        let mut conn = PgConnection::establish(&format!("{base}/postgres")).unwrap();
        conn.set_instrumentation(CountCommitted { counter: c.clone() });
        conn
    }

    fn n(c: &IntCounterVec, from: &str, to: &str) -> u64 {
        c.with_label_values(&[from, to]).get()
    }

    #[test]
    fn transitions_count_once_committed_and_not_when_rolled_back() {
        let c = counter();
        let mut conn = conn(&c);
        conn.transaction::<_, diesel::result::Error, _>(|_| {
            written(None, OrderStatus::Pending);
            Ok(())
        })
        .unwrap();
        assert_eq!(n(&c, "", "PENDING"), 1);

        let _ = conn.transaction::<(), _, _>(|_| {
            written(Some(OrderStatus::Pending), OrderStatus::Paying);
            Err(diesel::result::Error::RollbackTransaction)
        });
        assert_eq!(n(&c, "PENDING", "PAYING"), 0);

        // A savepoint that rolls back takes its transitions with it; the outer ones count.
        conn.transaction::<_, diesel::result::Error, _>(|conn| {
            written(Some(OrderStatus::Pending), OrderStatus::Paying);
            let _ = conn.transaction::<(), _, _>(|_| {
                written(Some(OrderStatus::Paying), OrderStatus::Paid);
                Err(diesel::result::Error::RollbackTransaction)
            });
            Ok(())
        })
        .unwrap();
        assert_eq!(n(&c, "PENDING", "PAYING"), 1);
        assert_eq!(n(&c, "PAYING", "PAID"), 0);

        // Nothing is left over for the next transaction to count.
        conn.transaction::<_, diesel::result::Error, _>(|_| Ok(()))
            .unwrap();
        assert_eq!(n(&c, "", "PENDING"), 1);
        assert_eq!(n(&c, "PENDING", "PAYING"), 1);
    }
}
