//! Counts order transitions where they commit, once (`payd_order_transitions_total`).
//!
//! Every order transition is written by `orders::record_transition`, inside a transaction; it
//! notes the edge here (thread-local: a transaction runs on one thread, in `Db::run`'s blocking
//! task). A diesel instrumentation on each pooled connection watches the transaction: the notes
//! of a savepoint or transaction that rolls back are dropped, and those of the outermost
//! transaction are counted once its `COMMIT` succeeds. So replays, refused writes and retried
//! transactions count nothing.
use std::cell::RefCell;

use diesel::PgConnection;
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

/// Installs [`CountCommitted`] on every connection the pool hands out.
#[derive(Debug)]
pub struct Customizer {
    pub counter: IntCounterVec,
}

impl diesel::r2d2::CustomizeConnection<PgConnection, diesel::r2d2::Error> for Customizer {
    fn on_acquire(&self, conn: &mut PgConnection) -> Result<(), diesel::r2d2::Error> {
        use diesel::Connection;
        conn.set_instrumentation(CountCommitted {
            counter: self.counter.clone(),
        });
        Ok(())
    }
}
