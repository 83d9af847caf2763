//! Use cases: each one validates nothing (the edge did), takes the locks it needs, and makes its
//! change in one Postgres transaction together with the idempotency record.
pub mod audit;
pub mod delivery;
pub mod error;
pub mod events;
pub mod pay;
pub mod queries;
pub mod reconciliation;
pub mod refunds;
pub mod results;

use std::time::Duration;

use chrono::Utc;
use diesel::Connection;

pub use error::{ServiceError, Subject};

use anyhow::Context;

use crate::domain::KeyClaim;
use crate::domain::{AppId, NewOrder, OrderEvent, OrderId, OrderLimits};
use crate::domain::{Order, OrderFilter};
use crate::locks::{LockGuard, Locks};
use crate::metrics::Metrics;
use crate::storage::Db;
use crate::storage::idempotency::{self, Claimed};
use crate::storage::orders::{self, NewOrderRow, OrderRow, Transition, WriteRefused};

/// How far this replica's clock may be from the database's for an order to take its times
/// from this replica (CreateOrder's single statement). Orders are listed by `created_at` and
/// expired by `expires_at`; the transaction that runs beyond this takes the database's clock.
const CLOCK_SKEW_ACCEPTED: Duration = Duration::from_secs(1);

/// The result of a state-changing call made with an idempotency key.
#[derive(Debug)]
pub enum Outcome<T> {
    Done(T),
    /// The encoded response of the first call with this key.
    Replayed(Vec<u8>),
}

/// An idempotency claim plus how to encode the response that will be stored under it.
pub struct IdempotentWrite<T = Order> {
    pub claim: KeyClaim,
    pub encode: fn(&T) -> Vec<u8>,
}

#[derive(Clone)]
pub struct App {
    pub db: Db,
    pub locks: Locks,
    pub limits: OrderLimits,
    pub idempotency_retention: Duration,
    pub metrics: Metrics,
    pub channels: crate::channel_client::ChannelClients,
    /// Mints `out_trade_no`s with this process's leased worker id.
    pub ids: std::sync::Arc<crate::domain::snowflake::Snowflake>,
    /// Which adapter secret may report for which channel (ChannelEvents).
    pub adapter_tokens: std::sync::Arc<Vec<(crate::domain::Channel, crate::config::Secret)>>,
    /// Holds the worker-id lease (a Postgres session advisory lock); replaced when it is lost
    /// and leased again.
    pub worker_lease: std::sync::Arc<std::sync::Mutex<diesel::PgConnection>>,
    /// Channel-side payable windows of new trades.
    pub pay_windows: pay::PayWindows,
    /// How unsettled refunds are followed up.
    pub refunds: refunds::RefundPolicy,
    /// Each app's EventSink, and the delivery schedule.
    pub sinks: std::sync::Arc<delivery::EventSinks>,
    /// How open attempts are queried and unpaid orders expired.
    pub payment_queries: queries::PaymentQueries,
    /// Whether the common steps run as single statements (`PAYD_SINGLE_STATEMENT_WRITES`).
    pub single_statement_writes: bool,
}

impl App {
    /// Creates the order, or returns the app's existing order with the same merchant_order_no.
    ///
    /// # Errors
    /// `AlreadyExists` when that existing order has a different amount, currency or subject: a
    /// resubmission must describe the same order, or the caller would believe in an amount that is
    /// not the one on record.
    pub async fn create_order(
        &self,
        app: AppId,
        new: NewOrder,
        idem: Option<IdempotentWrite>,
    ) -> Result<Outcome<Order>, ServiceError> {
        let retention = self.idempotency_retention;
        let expires_in = new.expires_in;
        let metadata =
            serde_json::to_value(&new.metadata).context("encoding the order's metadata")?;
        let audit = audit::current();
        if self.single_statement_writes
            && idem.is_none()
            && let Some(order) = self
                .create_order_in_one_statement(&app, &new, &metadata, &audit)
                .await?
        {
            return Ok(Outcome::Done(order));
        }
        let outcome = self
            .db
            .run(move |conn| {
                conn.transaction(|conn| {
                    if let Some(i) = &idem
                        && let Claimed::Replay(bytes) =
                            idempotency::claim(conn, &i.claim, retention)?
                    {
                        return Ok(Outcome::Replayed(bytes));
                    }
                    let row = NewOrderRow {
                        id: OrderId::new().as_uuid(),
                        app_id: app.as_str(),
                        merchant_order_no: new.merchant_order_no.as_str(),
                        amount_minor: new.amount.minor(),
                        currency: new.amount.currency().code(),
                        subject: new.subject.as_str(),
                        metadata,
                        status: crate::domain::OrderStatus::Pending,
                    };
                    let (order, created) = match orders::insert(conn, &row, expires_in)? {
                        Some(o) => {
                            events::record(
                                conn,
                                events::EventType::OrderCreated,
                                &Order::from(o.clone()),
                                events::Extra::default(),
                            )?;
                            (o, true)
                        }
                        None => {
                            let existing = orders::find_by_merchant_order_no(
                                conn,
                                &app,
                                row.merchant_order_no,
                            )?
                            .ok_or_else(|| {
                                anyhow::anyhow!(
                                    "the order that conflicted on merchant_order_no vanished"
                                )
                            })?;
                            same_order(&existing, &row)?;
                            (existing, false)
                        }
                    };
                    let order = Order::from(order);
                    if let Some(i) = &idem {
                        idempotency::store_response(conn, &i.claim, &(i.encode)(&order))?;
                    }
                    // A resubmission returns the first order and changes nothing: the edge
                    // records it as a repeat (REPLAYED).
                    if created {
                        audit::record(
                            conn,
                            audit.as_ref(),
                            "/CreateOrder",
                            &audit::Targets {
                                target: Some(order.merchant_order_no.as_str().to_owned()),
                                ..audit::Targets::order(order.id)
                            },
                        )?;
                    }
                    Ok::<_, ServiceError>(Outcome::Done(order))
                })
            })
            .await?;
        Ok(outcome)
    }

    /// The common CreateOrder (a new merchant order number, no idempotency key) as one
    /// statement (`storage::steps::create_order`): the order, or `None` when the statement was
    /// refused (the number is taken, or this replica's clock is off) and nothing was written.
    async fn create_order_in_one_statement(
        &self,
        app: &AppId,
        new: &NewOrder,
        metadata: &serde_json::Value,
        audit: &Option<audit::AuditCtx>,
    ) -> Result<Option<Order>, ServiceError> {
        let now = Utc::now();
        let at = crate::storage::steps::stored_instant(now);
        let expires_at = crate::storage::steps::stored_instant(
            at + chrono::Duration::from_std(new.expires_in).context("order expiry")?,
        );
        let id = OrderId::new().as_uuid();
        // The order as the statement stores it: what the event and the answer show.
        let order = Order {
            id,
            app_id: app.as_str().to_owned(),
            merchant_order_no: new.merchant_order_no.as_str().to_owned(),
            amount_minor: new.amount.minor(),
            currency: new.amount.currency().code().to_owned(),
            subject: new.subject.as_str().to_owned(),
            metadata: metadata.clone(),
            status: crate::domain::OrderStatus::Pending,
            paid_minor: 0,
            refunded_minor: 0,
            version: 0,
            expires_at,
            created_at: at,
            updated_at: at,
            closed_at: None,
        };
        let event_id = uuid::Uuid::now_v7();
        let payload = events::encode(
            events::EventType::OrderCreated,
            &order,
            &events::Extra::default(),
            event_id,
            1,
            now,
        );
        let audit = audit.clone();
        let metrics = self.metrics.clone();
        self.db
            .run(move |conn| {
                let record = audit::for_statement(
                    audit.as_ref(),
                    "/CreateOrder",
                    &audit::Targets {
                        target: Some(order.merchant_order_no.clone()),
                        ..audit::Targets::order(order.id)
                    },
                )?;
                let row = NewOrderRow {
                    id: order.id,
                    app_id: &order.app_id,
                    merchant_order_no: &order.merchant_order_no,
                    amount_minor: order.amount_minor,
                    currency: &order.currency,
                    subject: &order.subject,
                    metadata: order.metadata.clone(),
                    status: order.status,
                };
                let stored = crate::storage::steps::create_order(
                    conn,
                    &crate::storage::steps::CreateWrite {
                        order: &row,
                        at,
                        expires_at,
                        max_skew: CLOCK_SKEW_ACCEPTED,
                        event_id,
                        event_type: events::EventType::OrderCreated.as_str(),
                        payload: &payload,
                        audit: record.as_ref().map(audit::InStatement::json),
                    },
                )?;
                metrics
                    .single_statement_writes
                    .with_label_values(&[
                        "create_order",
                        if stored.is_some() {
                            "committed"
                        } else {
                            "refused"
                        },
                    ])
                    .inc();
                let Some(stored) = stored else {
                    return Ok::<_, ServiceError>(None);
                };
                if let Some(record) = record {
                    record.written();
                }
                metrics
                    .order_transitions
                    .with_label_values(&["", order.status.as_str()])
                    .inc();
                debug_assert_eq!(Order::from(stored), order);
                Ok(Some(order))
            })
            .await
    }

    pub async fn get_order(&self, app: AppId, id: OrderId) -> Result<Order, ServiceError> {
        self.db
            .run(move |conn| orders::find(conn, &app, id))
            .await?
            .map(Order::from)
            .ok_or_else(|| ServiceError::NotFound(Subject::Order(id)))
    }

    pub async fn get_order_by_merchant_no(
        &self,
        app: AppId,
        no: String,
    ) -> Result<Order, ServiceError> {
        self.db
            .run({
                let no = no.clone();
                move |conn| orders::find_by_merchant_order_no(conn, &app, &no)
            })
            .await?
            .map(Order::from)
            .ok_or_else(|| ServiceError::NotFound(Subject::MerchantOrderNo(no)))
    }

    pub async fn list_orders(
        &self,
        app: AppId,
        filter: OrderFilter,
    ) -> Result<Vec<Order>, ServiceError> {
        Ok(self
            .db
            .run(move |conn| orders::list(conn, &app, &filter))
            .await?
            .into_iter()
            .map(Order::from)
            .collect())
    }

    /// Closes an unpaid order under its lock.
    pub async fn close_order(
        &self,
        app: AppId,
        id: OrderId,
        idem: Option<IdempotentWrite>,
    ) -> Result<Outcome<Order>, ServiceError> {
        let guard = self.lock_order(id).await?;
        let result = async {
            // An attempt open at a channel is closed there first: if the payer paid meanwhile,
            // the order is PAID and closing it is refused.
            let open = self
                .db
                .run({
                    let app = app.clone();
                    move |conn| {
                        orders::find(conn, &app, id)?
                            .ok_or_else(|| ServiceError::NotFound(Subject::Order(id)))?;
                        Ok::<_, ServiceError>(crate::storage::attempts::find_open(conn, id)?)
                    }
                })
                .await?;
            if let Some(attempt) = open {
                match self.close_at_channel(&attempt).await {
                    Ok(()) => {}
                    // The channel says it was paid: the order's real state refuses the close.
                    Err(ServiceError::IllegalTransition(t)) => {
                        return Err(ServiceError::IllegalTransition(
                            crate::domain::IllegalTransition {
                                from: t.from,
                                event: OrderEvent::Closed,
                            },
                        ));
                    }
                    Err(e) => return Err(e),
                }
            }
            self.apply_event(
                app,
                id,
                OrderEvent::Closed,
                "closed by caller",
                &guard,
                idem,
            )
            .await
        }
        .await;
        self.unlock(guard).await;
        result
    }

    /// Takes the order's lock; every change to an order happens while holding it.
    pub async fn lock_order(&self, id: OrderId) -> Result<LockGuard, ServiceError> {
        let taken = self.locks.acquire(&format!("order:{id}")).await;
        self.count_lock(id, taken)
    }

    /// Takes the order's lock in Redis only: the caller's first statement mints the fencing
    /// token, and [`App::fence_order_lock`] completes the lock before anything is written.
    pub async fn lock_order_unfenced(
        &self,
        id: OrderId,
    ) -> Result<crate::locks::Unfenced, ServiceError> {
        let taken = self.locks.acquire_unfenced(&format!("order:{id}")).await;
        self.count_lock(id, taken)
    }

    /// See [`App::lock_order_unfenced`].
    pub async fn fence_order_lock(
        &self,
        id: OrderId,
        pending: crate::locks::Unfenced,
        fence: i64,
    ) -> Result<LockGuard, ServiceError> {
        self.locks.fence(pending, fence).await.map_err(|e| {
            self.metrics
                .lock_acquisitions
                .with_label_values(&["busy"])
                .inc();
            ServiceError::from_lock(id, e)
        })
    }

    fn count_lock<T>(
        &self,
        id: OrderId,
        taken: Result<T, crate::locks::LockError>,
    ) -> Result<T, ServiceError> {
        match taken {
            Ok(g) => {
                self.metrics
                    .lock_acquisitions
                    .with_label_values(&["acquired"])
                    .inc();
                Ok(g)
            }
            Err(e) => {
                let outcome = match e {
                    crate::locks::LockError::Busy(_) => "busy",
                    crate::locks::LockError::Redis(_) | crate::locks::LockError::Fence(_) => {
                        "error"
                    }
                };
                self.metrics
                    .lock_acquisitions
                    .with_label_values(&[outcome])
                    .inc();
                Err(ServiceError::from_lock(id, e))
            }
        }
    }

    /// Releases a lock. A failure here is logged, not returned: the work is committed, and the
    /// lock expires at its TTL anyway.
    pub async fn unlock(&self, guard: LockGuard) {
        if let Err(e) = self.locks.release(guard).await {
            tracing::warn!(error = %e, "releasing an order lock failed; it will expire");
        }
    }

    /// Applies `event` to the order through the state machine, as the holder of `guard`, in one
    /// transaction with the idempotency record.
    ///
    /// # Errors
    /// `IllegalTransition` (refused by the state machine), `Fenced` (a newer lock holder wrote
    /// first), `Conflict` (the row changed under us), `NotFound`.
    pub async fn apply_event(
        &self,
        app: AppId,
        id: OrderId,
        event: OrderEvent,
        reason: &'static str,
        guard: &LockGuard,
        idem: Option<IdempotentWrite>,
    ) -> Result<Outcome<Order>, ServiceError> {
        let retention = self.idempotency_retention;
        let fence = guard.fence();
        let audit = audit::current();
        let result = self
            .db
            .run(move |conn| {
                conn.transaction(|conn| {
                    if let Some(i) = &idem
                        && let Claimed::Replay(bytes) =
                            idempotency::claim(conn, &i.claim, retention)?
                    {
                        return Ok(Outcome::Replayed(bytes));
                    }
                    let current = orders::find(conn, &app, id)?
                        .ok_or_else(|| ServiceError::NotFound(Subject::Order(id)))?;
                    let from = current.status;
                    let to = from.apply(event)?;
                    let t = Transition {
                        id,
                        from,
                        to,
                        expected_version: current.version,
                        fence,
                        reason,
                        at: Utc::now(),
                        paid_minor: current.paid_minor,
                    };
                    let updated = match orders::transition(conn, &t)? {
                        Ok(row) => row,
                        Err(WriteRefused::StaleFence { .. }) => {
                            return Err(ServiceError::Fenced(id));
                        }
                        Err(WriteRefused::Conflict { .. }) => {
                            return Err(ServiceError::Conflict(Subject::Order(id)));
                        }
                        Err(WriteRefused::Missing) => {
                            return Err(ServiceError::NotFound(Subject::Order(id)));
                        }
                    };
                    let updated = Order::from(updated);
                    if to == crate::domain::OrderStatus::Closed {
                        events::record(
                            conn,
                            events::EventType::OrderClosed,
                            &updated,
                            events::Extra {
                                detail: reason,
                                ..events::Extra::default()
                            },
                        )?;
                    }
                    if let Some(i) = &idem {
                        idempotency::store_response(conn, &i.claim, &(i.encode)(&updated))?;
                    }
                    audit::record(
                        conn,
                        audit.as_ref(),
                        "/CloseOrder",
                        &audit::Targets::order(id.as_uuid()),
                    )?;
                    Ok::<_, ServiceError>(Outcome::Done((from, updated)))
                })
            })
            .await;
        match result {
            // Counted where it commits (storage::transitions).
            Ok(Outcome::Done((_, row))) => Ok(Outcome::Done(row)),
            Ok(Outcome::Replayed(b)) => Ok(Outcome::Replayed(b)),
            Err(ServiceError::Fenced(id)) => {
                self.metrics.fence_rejections.inc();
                Err(ServiceError::Fenced(id))
            }
            Err(e) => Err(e),
        }
    }

    /// Deletes idempotency keys past their retention, in batches, until none is left.
    pub async fn purge_idempotency_keys(&self) -> Result<usize, ServiceError> {
        let retention = self.idempotency_retention;
        let mut total = 0;
        loop {
            let n = self
                .db
                .run(move |conn| idempotency::purge_expired(conn, retention, 1000))
                .await?;
            total += n;
            self.metrics.idempotency_keys_purged.inc_by(n as u64);
            if n < 1000 {
                return Ok(total);
            }
        }
    }
}

/// A resubmitted CreateOrder must describe the order on record.
fn same_order(existing: &OrderRow, new: &NewOrderRow<'_>) -> Result<(), ServiceError> {
    let differs = if existing.amount_minor != new.amount_minor {
        Some("amount.amount_minor")
    } else if existing.currency != new.currency {
        Some("amount.currency")
    } else if existing.subject != new.subject {
        Some("subject")
    } else {
        None
    };
    match differs {
        None => Ok(()),
        Some(field) => Err(ServiceError::AlreadyExists(format!(
            "merchant_order_no {} already names order {} with a different {field}",
            existing.merchant_order_no, existing.id
        ))),
    }
}
