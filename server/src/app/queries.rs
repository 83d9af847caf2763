//! Convergence jobs: active queries of open payment attempts, and the expiry of unpaid orders.
//!
//! Both run on every replica. Queries are shared through `FOR UPDATE SKIP LOCKED` claims with a
//! lease (`attempts::claim_due_queries`); every answer goes through the one results transition
//! (`App::apply_payment_result`), and every close through `App::close_at_channel` under the
//! order's Redis lock, so two replicas doing the same thing at once change nothing twice.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::Connection;
use uuid::Uuid;

use super::events::{self, EventType, Extra};
use super::{App, ServiceError, Subject};
use crate::domain::{AppId, AttemptStatus, Channel, OrderEvent, OrderId, OrderStatus, TradeState};
use crate::storage::attempts::{self, AttemptRow};
use crate::storage::orders::{self, OrderRow};

/// How open attempts are queried and unpaid orders expired.
#[derive(Debug, Clone)]
pub struct PaymentQueries {
    /// Gaps between the queries of an open attempt, from its creation (Prepay) on; after the
    /// last, the gap doubles up to `ceiling`, until the order's expiry plus the deadline margin.
    pub delays: Vec<Duration>,
    /// The longest gap between two queries.
    pub ceiling: Duration,
    /// How long a claimed attempt is the claimer's (its next due time while being queried).
    pub claim_lease: Duration,
    /// How often the query job looks for due attempts.
    pub tick: Duration,
    /// How many attempts one tick claims.
    pub batch: i64,
    /// How often the expiry job looks for expired orders.
    pub expiry_tick: Duration,
    /// How many expired orders one tick takes.
    pub expiry_batch: i64,
    /// How long an expired order whose channel could not be reached waits before another try.
    pub expiry_retry: Duration,
    /// Expired orders that cannot be closed yet, and when to try again.
    ///
    /// Kept in memory rather than in a column: it only spares the channels and the database a
    /// hot loop, it is not a guarantee. Correctness comes from the order's lock and the state
    /// machine (a second close of a closed order is refused harmlessly), so another replica that
    /// does not share this map, or this one after a restart, at worst tries once early and
    /// learns the same `retry_after`. A column would need a migration and a write per deferral
    /// for no gain in safety.
    pub deferred: Arc<Mutex<HashMap<Uuid, DateTime<Utc>>>>,
}

impl Default for PaymentQueries {
    fn default() -> Self {
        Self {
            delays: [10_000, 20_000, 30_000]
                .into_iter()
                .map(Duration::from_millis)
                .collect(),
            ceiling: Duration::from_secs(300),
            claim_lease: Duration::from_secs(35),
            tick: Duration::from_secs(1),
            batch: 50,
            expiry_tick: Duration::from_secs(1),
            expiry_batch: 50,
            expiry_retry: Duration::from_secs(5),
            deferred: Arc::default(),
        }
    }
}

impl PaymentQueries {
    /// When a new (or newly PAYING) attempt is first queried.
    pub fn first_due(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now + chrono_of(
            self.delays
                .first()
                .copied()
                .unwrap_or(Duration::from_secs(10)),
        )
    }

    fn defer(&self, order: Uuid, until: DateTime<Utc>) {
        let mut d = match self.deferred.lock() {
            Ok(d) => d,
            Err(p) => p.into_inner(),
        };
        d.insert(order, until);
    }

    /// The deferred orders still waiting at `now` (the others are forgotten).
    fn still_deferred(&self, now: DateTime<Utc>) -> Vec<Uuid> {
        let mut d = match self.deferred.lock() {
            Ok(d) => d,
            Err(p) => p.into_inner(),
        };
        d.retain(|_, until| *until > now);
        d.keys().copied().collect()
    }
}

fn chrono_of(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// When an open attempt created at `created` is due for its next query, after `made` queries;
/// `None` when the schedule is over (the attempt, if still unknown, goes to a person).
///
/// The query times are `created + d0`, `+ d1`, … (the `delays` are the gaps), then gaps doubling
/// from the last delay up to `ceiling`; every time at or past the end (`order_expires_at +
/// margin`, when every trade of the order has lapsed at its channel) is replaced by one last
/// query at the end.
pub fn next_query_due(
    created: DateTime<Utc>,
    order_expires_at: DateTime<Utc>,
    margin: Duration,
    delays: &[Duration],
    ceiling: Duration,
    made: u32,
) -> Option<DateTime<Utc>> {
    let end = order_expires_at + chrono_of(margin);
    let mut at = created;
    let mut gap = Duration::ZERO;
    for k in 0..=made {
        let i = usize::try_from(k).unwrap_or(usize::MAX);
        gap = match delays.get(i) {
            Some(d) => *d,
            None => gap
                .saturating_mul(2)
                .min(ceiling)
                .max(Duration::from_millis(1)),
        };
        at += chrono_of(gap);
        if at >= end {
            return (k == made).then_some(end);
        }
    }
    Some(at)
}

impl App {
    /// The payment query job: claims the due open attempts (shared by replicas through `FOR
    /// UPDATE SKIP LOCKED` and a lease), asks each one's channel, and applies what it says.
    ///
    /// Returns how many attempts were looked at.
    pub async fn run_payment_queries(&self) -> Result<usize, ServiceError> {
        let batch = self.payment_queries.batch;
        let lease = self.payment_queries.claim_lease;
        let due = self
            .db
            .run(move |conn| attempts::claim_due_queries(conn, batch, lease))
            .await?;
        let n = due.len();
        let mut tasks = tokio::task::JoinSet::new();
        for (row, made) in due {
            let app = self.clone();
            tasks.spawn(async move {
                let no = row.out_trade_no.clone();
                if let Err(e) = app.query_one_attempt(row, made).await {
                    tracing::warn!(out_trade_no = %no, error = ?e, "payment query failed; retried at the end of its lease");
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        Ok(n)
    }

    /// One query of one claimed attempt (`made` counts it), then its next due time or its flag.
    ///
    /// - SUCCEEDED, FAILED, CLOSED: applied through the results transition.
    /// - no such trade, or pending, for an INIT attempt (its parameters never left payd): closed
    ///   at its channel, which settles it CLOSED, never paid.
    /// - no such trade, or pending, for a PAYING attempt: nothing until its deadline plus the
    ///   margin has lapsed, then closed at its channel (settled CLOSED from the query where the
    ///   channel has no close).
    /// - anything else (unreachable, UNKNOWN): nothing; asked again on schedule.
    async fn query_one_attempt(&self, a: AttemptRow, made: i32) -> Result<(), ServiceError> {
        let channel = a.channel;
        let order_id = OrderId::from_uuid(a.order_id);
        let order = self
            .db
            .run(move |conn| {
                orders::find_by_id(conn, order_id)?
                    .ok_or_else(|| ServiceError::NotFound(Subject::Order(order_id)))
            })
            .await?;
        let answer = self.query_at_channel(&a).await;
        let label = match &answer {
            Ok(r) => r.state.as_str(),
            Err(_) => "UNAVAILABLE",
        };
        self.metrics
            .payment_attempt_queries
            .with_label_values(&[channel.as_str(), label])
            .inc();
        match answer {
            Ok(mut r) => match r.state {
                TradeState::Succeeded | TradeState::Failed | TradeState::Closed => {
                    r.event_id = format!("query:{}:{}", a.out_trade_no, r.state.as_str());
                    self.apply_payment_result(r).await?;
                }
                TradeState::NotFound | TradeState::Pending
                    if a.status == AttemptStatus::Init
                        || self.pay_windows.lapsed(&a, Utc::now()) =>
                {
                    self.close_for_query(&a).await;
                }
                TradeState::NotFound | TradeState::Pending | TradeState::Unknown => {}
            },
            Err(e) => {
                tracing::info!(out_trade_no = %a.out_trade_no, %channel, error = ?e, "payment query: the channel could not be asked");
            }
        }
        let id = a.id;
        let Some(now) = self
            .db
            .run(move |conn| attempts::find_by_id(conn, id))
            .await?
        else {
            return Ok(());
        };
        if !now.status.is_open() {
            return Ok(());
        }
        let next = next_query_due(
            a.created_at,
            order.expires_at,
            self.pay_windows.deadline_margin,
            &self.payment_queries.delays,
            self.payment_queries.ceiling,
            u32::try_from(made).unwrap_or(0),
        );
        match next {
            Some(at) => {
                self.db
                    .run(move |conn| attempts::schedule_query(conn, id, at))
                    .await?;
            }
            None => self.flag_attempt(&a, made).await?,
        }
        Ok(())
    }

    /// Closes the attempt at its channel under its order's lock (a Pay in flight holds it);
    /// a busy lock or a channel that cannot settle it leaves it to the next query.
    async fn close_for_query(&self, a: &AttemptRow) {
        let order_id = OrderId::from_uuid(a.order_id);
        let guard = match self.lock_order(order_id).await {
            Ok(g) => g,
            Err(e) => {
                tracing::debug!(out_trade_no = %a.out_trade_no, error = ?e, "order lock not taken; closing at the next query");
                return;
            }
        };
        let id = a.id;
        let current = self
            .db
            .run(move |conn| attempts::find_by_id(conn, id))
            .await;
        // Only the attempt the decision was made about: a Pay that moved it INIT → PAYING
        // meanwhile has just handed its parameters out, and its trade must stay payable.
        if let Ok(Some(current)) = current
            && current.status == a.status
            && let Err(e) = self.close_at_channel(&current).await
        {
            tracing::info!(out_trade_no = %a.out_trade_no, error = ?e, "payment query: the trade could not be closed yet");
        }
        self.unlock(guard).await;
    }

    /// Flags an attempt still unknown past its last query for a person, with its outbox event.
    async fn flag_attempt(&self, a: &AttemptRow, made: i32) -> Result<(), ServiceError> {
        let id = a.id;
        let order_id = OrderId::from_uuid(a.order_id);
        let flagged = self
            .db
            .run(move |conn| {
                conn.transaction(|conn| {
                    if !attempts::flag_for_attention(conn, id)? {
                        return Ok::<_, ServiceError>(false);
                    }
                    let order = orders::find_by_id(conn, order_id)?
                        .ok_or_else(|| ServiceError::NotFound(Subject::Order(order_id)))?;
                    let attempt = attempts::find_by_id(conn, id)?
                        .ok_or_else(|| anyhow::anyhow!("attempt {id} vanished while flagged"))?;
                    events::record(
                        conn,
                        EventType::PaymentNeedsAttention,
                        &crate::domain::Order::from(order),
                        Extra {
                            attempt: Some(&crate::domain::Attempt::from(attempt)),
                            detail: "the payment's outcome is still unknown after the last scheduled query",
                            ..Default::default()
                        },
                    )?;
                    Ok(true)
                })
            })
            .await?;
        if flagged {
            self.metrics
                .payment_attempts_flagged
                .with_label_values(&[a.channel.as_str()])
                .inc();
            tracing::error!(
                channel = %a.channel,
                out_trade_no = %a.out_trade_no,
                attempt_id = %a.id,
                order_id = %a.order_id,
                queries = made,
                "payment outcome still unknown after the last query: flagged for a person, never guessed"
            );
        }
        Ok(())
    }

    /// Refreshes the open-attempt gauges (one aggregate query).
    pub async fn refresh_attempt_gauges(&self) -> Result<(), ServiceError> {
        let rows = self.db.run(attempts::open_by_channel).await?;
        for c in Channel::ALL {
            let (open, flagged) = rows
                .iter()
                .find(|r| r.channel == c)
                .map_or((0, 0), |r| (r.open, r.needing_attention));
            self.metrics
                .payment_attempts_open
                .with_label_values(&[c.as_str()])
                .set(open);
            self.metrics
                .payment_attempts_needing_attention
                .with_label_values(&[c.as_str()])
                .set(flagged);
        }
        Ok(())
    }

    /// The expiry job: closes a batch of PENDING or PAYING orders past their `expires_at`,
    /// oldest first, as CloseOrder does (the open attempt at its channel first), with reason
    /// "expired". An order that cannot be closed yet is left alone until its `retry_after`.
    ///
    /// Returns how many orders were looked at.
    pub async fn expire_orders(&self) -> Result<usize, ServiceError> {
        let skip = self.payment_queries.still_deferred(Utc::now());
        let batch = self.payment_queries.expiry_batch;
        let due = self
            .db
            .run(move |conn| orders::find_expired(conn, batch, &skip))
            .await?;
        let n = due.len();
        let mut tasks = tokio::task::JoinSet::new();
        for order in due {
            let app = self.clone();
            tasks.spawn(async move {
                let id = order.id;
                if let Err(e) = app.expire_one(order).await {
                    tracing::warn!(order_id = %id, error = ?e, "expiring an order failed; tried again later");
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        Ok(n)
    }

    async fn expire_one(&self, order: OrderRow) -> Result<(), ServiceError> {
        let id = order.order_id();
        let app = AppId::parse("app_id", &order.app_id)
            .map_err(|e| anyhow::anyhow!("order {id} has a bad app id: {e:?}"))?;
        let guard = match self.lock_order(id).await {
            Ok(g) => g,
            // Someone is working on the order: this round skips it.
            Err(ServiceError::Busy(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let r = self.expire_locked(app, id).await;
        let r = match r {
            Ok(Some(app)) => self.apply_expiry(app, id, &guard).await,
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        };
        self.unlock(guard).await;
        r
    }

    /// Under the order's lock: closes its open attempt at the channel; `Some(app)` when the
    /// order may now be closed.
    async fn expire_locked(&self, app: AppId, id: OrderId) -> Result<Option<AppId>, ServiceError> {
        let (order, open) = self
            .db
            .run(move |conn| {
                let order = orders::find_by_id(conn, id)?
                    .ok_or_else(|| ServiceError::NotFound(Subject::Order(id)))?;
                Ok::<_, ServiceError>((order, attempts::find_open(conn, id)?))
            })
            .await?;
        if !matches!(order.status, OrderStatus::Pending | OrderStatus::Paying) {
            return Ok(None);
        }
        if let Some(attempt) = open {
            match self.close_at_channel(&attempt).await {
                Ok(()) => {}
                // Paid after all: the order is PAID, nothing to expire.
                Err(ServiceError::IllegalTransition(_)) => return Ok(None),
                Err(ServiceError::TradeStillPayable { retry_after, .. }) => {
                    self.payment_queries.defer(id.as_uuid(), retry_after);
                    return Ok(None);
                }
                Err(e @ ServiceError::AmountHeld { .. }) => {
                    tracing::error!(order_id = %id, error = %e, "an expired order is held for review; not closed");
                    self.payment_queries
                        .defer(id.as_uuid(), Utc::now() + chrono::Duration::minutes(10));
                    return Ok(None);
                }
                Err(e) => {
                    self.payment_queries.defer(
                        id.as_uuid(),
                        Utc::now() + chrono_of(self.payment_queries.expiry_retry),
                    );
                    return Err(e);
                }
            }
        }
        Ok(Some(app))
    }

    async fn apply_expiry(
        &self,
        app: AppId,
        id: OrderId,
        guard: &crate::locks::LockGuard,
    ) -> Result<(), ServiceError> {
        match self
            .apply_event(app, id, OrderEvent::Closed, "expired", guard, None)
            .await
        {
            Ok(_) => {
                self.metrics.orders_expired.inc();
                tracing::info!(order_id = %id, "order expired and closed");
                Ok(())
            }
            // Paid or closed meanwhile (another replica, or a result that just arrived).
            Err(ServiceError::IllegalTransition(_)) => Ok(()),
            Err(e) => {
                self.payment_queries.defer(
                    id.as_uuid(),
                    Utc::now() + chrono_of(self.payment_queries.expiry_retry),
                );
                Err(e)
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_schedule_follows_the_gaps_then_doubles_to_the_ceiling_then_ends() {
        let t0 = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let s = chrono::Duration::seconds;
        let expires = t0 + s(3_600);
        let delays = [ms(10_000), ms(20_000), ms(30_000)];
        let due = |made| next_query_due(t0, expires, ms(60_000), &delays, ms(300_000), made);
        assert_eq!(due(0), Some(t0 + s(10)));
        assert_eq!(due(1), Some(t0 + s(30)));
        assert_eq!(due(2), Some(t0 + s(60)));
        assert_eq!(due(3), Some(t0 + s(120)));
        assert_eq!(due(4), Some(t0 + s(240)));
        assert_eq!(due(5), Some(t0 + s(480)));
        assert_eq!(due(6), Some(t0 + s(780)));
        // Past the end (expiry + margin = t0 + 3660 s): one last query at the end, then none.
        let mut made = 0;
        while due(made).is_some_and(|t| t < t0 + s(3_660)) {
            made += 1;
        }
        assert_eq!(due(made), Some(t0 + s(3_660)));
        assert_eq!(due(made + 1), None);
        assert_eq!(due(made + 100), None);
    }

    #[test]
    fn an_order_expiring_before_the_first_gap_gets_one_query_at_its_end() {
        let t0 = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let expires = t0 + chrono::Duration::seconds(5);
        let delays = [ms(10_000)];
        let due = |made| next_query_due(t0, expires, ms(1_000), &delays, ms(300_000), made);
        assert_eq!(due(0), Some(t0 + chrono::Duration::seconds(6)));
        assert_eq!(due(1), None);
    }
}
