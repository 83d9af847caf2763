//! Orders and their transition history. Writes are intents turned into conditional UPDATEs: zero
//! rows matched means another writer won, and the caller is told which guard refused.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use uuid::Uuid;

use super::StorageError;
use super::schema::orders;
use crate::domain::{AppId, Currency, Money, OrderId, OrderStatus};

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, QueryableByName)]
#[diesel(table_name = orders, check_for_backend(diesel::pg::Pg))]
pub struct OrderRow {
    pub id: Uuid,
    pub app_id: String,
    pub merchant_order_no: String,
    pub amount_minor: i64,
    pub currency: String,
    pub subject: String,
    pub metadata: serde_json::Value,
    pub status: OrderStatus,
    pub paid_minor: i64,
    pub refunded_minor: i64,
    pub version: i64,
    pub fence: i64,
    pub expires_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub closed_at: Option<DateTime<Utc>>,
}

impl From<OrderRow> for crate::domain::Order {
    fn from(r: OrderRow) -> Self {
        Self {
            id: r.id,
            app_id: r.app_id,
            merchant_order_no: r.merchant_order_no,
            amount_minor: r.amount_minor,
            currency: r.currency,
            subject: r.subject,
            metadata: r.metadata,
            status: r.status,
            paid_minor: r.paid_minor,
            refunded_minor: r.refunded_minor,
            version: r.version,
            expires_at: r.expires_at,
            created_at: r.created_at,
            updated_at: r.updated_at,
            closed_at: r.closed_at,
        }
    }
}

impl OrderRow {
    pub fn order_id(&self) -> OrderId {
        OrderId::from_uuid(self.id)
    }

    pub fn amount(&self) -> Result<Money, StorageError> {
        let c: Currency =
            self.currency
                .parse()
                .map_err(|e: crate::domain::money::UnsupportedCurrency| {
                    StorageError::Corrupt(e.to_string())
                })?;
        Money::new(self.amount_minor, c).map_err(|e| StorageError::Corrupt(e.to_string()))
    }
}

#[derive(Debug, Insertable)]
#[diesel(table_name = orders)]
pub struct NewOrderRow<'a> {
    pub id: Uuid,
    pub app_id: &'a str,
    pub merchant_order_no: &'a str,
    pub amount_minor: i64,
    pub currency: &'a str,
    pub subject: &'a str,
    pub metadata: serde_json::Value,
    pub status: OrderStatus,
}

/// Inserts the order unless the app already has one with this merchant_order_no. `created_at`
/// is the database's clock (the column default), and `expires_at` is that clock plus
/// `expires_in`, so list cursors and expiry never depend on a replica's clock.
///
/// Returns `None` on that conflict. Concurrent inserts of one number serialize on the unique index:
/// the losers wait for the winner's commit and then see its row.
pub fn insert(
    conn: &mut PgConnection,
    row: &NewOrderRow<'_>,
    expires_in: std::time::Duration,
) -> Result<Option<OrderRow>, StorageError> {
    use diesel::sql_types::{Interval, Timestamptz};
    let expires_in = diesel::pg::data_types::PgInterval::from_microseconds(
        i64::try_from(expires_in.as_micros()).unwrap_or(i64::MAX),
    );
    let inserted = diesel::insert_into(orders::table)
        .values((
            row,
            orders::expires_at
                .eq(diesel::dsl::sql::<Timestamptz>("now() + ").bind::<Interval, _>(expires_in)),
        ))
        .on_conflict((orders::app_id, orders::merchant_order_no))
        .do_nothing()
        .returning(OrderRow::as_returning())
        .get_result(conn)
        .optional()?;
    // The database recorded the transition (trigger orders_transition_on_insert).
    if inserted.is_some() {
        super::transitions::written(None, OrderStatus::Pending);
    }
    Ok(inserted)
}

/// A fresh lock fencing token from the `lock_fences` sequence: strictly greater than every token
/// minted before, by any replica, whatever Redis lost or whatever its clock says.
pub fn mint_fence(conn: &mut PgConnection) -> Result<i64, StorageError> {
    Ok(diesel::select(payd_mint_fence()).get_result(conn)?)
}

diesel::define_sql_function! {
    /// `nextval('lock_fences')` (migration `single_statement_writes`), callable from the DSL,
    /// whose statements diesel prepares once (a `sql` literal is re-planned on every call).
    fn payd_mint_fence() -> diesel::sql_types::BigInt;
}

/// Claims the order row for the lock holder with `fence` (inside the caller's transaction, on a
/// row it has locked): refused when a newer holder has written. Every write of a locked section
/// goes through here or [`transition`], so a stale holder cannot write after a newer one.
pub fn claim_fence(
    conn: &mut PgConnection,
    id: OrderId,
    fence: i64,
) -> Result<Result<OrderRow, WriteRefused>, StorageError> {
    let updated = diesel::update(
        orders::table
            .filter(orders::id.eq(id.as_uuid()))
            .filter(orders::fence.le(fence)),
    )
    .set(orders::fence.eq(fence))
    .returning(OrderRow::as_returning())
    .get_result(conn)
    .optional()?;
    match updated {
        Some(row) => Ok(Ok(row)),
        None => {
            let current: Option<i64> = orders::table
                .filter(orders::id.eq(id.as_uuid()))
                .select(orders::fence)
                .first(conn)
                .optional()?;
            Ok(Err(match current {
                None => WriteRefused::Missing,
                Some(c) => WriteRefused::StaleFence {
                    ours: fence,
                    current: c,
                },
            }))
        }
    }
}

pub fn find(
    conn: &mut PgConnection,
    app: &AppId,
    id: OrderId,
) -> Result<Option<OrderRow>, StorageError> {
    Ok(orders::table
        .filter(orders::id.eq(id.as_uuid()))
        .filter(orders::app_id.eq(app.as_str()))
        .select(OrderRow::as_select())
        .first(conn)
        .optional()?)
}

/// The order by id alone, for internal paths that already hold an attempt of it.
pub fn find_by_id(conn: &mut PgConnection, id: OrderId) -> Result<Option<OrderRow>, StorageError> {
    Ok(orders::table
        .filter(orders::id.eq(id.as_uuid()))
        .select(OrderRow::as_select())
        .first(conn)
        .optional()?)
}

/// Reads the order and locks its row until the transaction ends. Writers that do not hold the
/// Redis lock (channel results) serialize here; they lock the order row before any attempt row.
pub fn find_for_update(
    conn: &mut PgConnection,
    id: OrderId,
) -> Result<Option<OrderRow>, StorageError> {
    Ok(orders::table
        .filter(orders::id.eq(id.as_uuid()))
        .select(OrderRow::as_select())
        .for_update()
        .first(conn)
        .optional()?)
}

pub fn find_by_merchant_order_no(
    conn: &mut PgConnection,
    app: &AppId,
    merchant_order_no: &str,
) -> Result<Option<OrderRow>, StorageError> {
    Ok(orders::table
        .filter(orders::app_id.eq(app.as_str()))
        .filter(orders::merchant_order_no.eq(merchant_order_no))
        .select(OrderRow::as_select())
        .first(conn)
        .optional()?)
}

/// A status change the state machine has already approved, with the guards the write must pass.
#[derive(Debug, Clone)]
pub struct Transition<'a> {
    pub id: OrderId,
    pub from: OrderStatus,
    pub to: OrderStatus,
    /// The version the caller read; the write fails if anyone changed the row since.
    pub expected_version: i64,
    /// The caller's lock fencing token; the write fails if a newer lock holder has written.
    pub fence: i64,
    pub reason: &'a str,
    pub at: DateTime<Utc>,
    /// `paid_minor` after the change (the current value for transitions that do not pay).
    pub paid_minor: i64,
}

/// Why a guarded write matched no row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteRefused {
    /// A newer lock holder (higher fence) has written the row: this caller's lock had expired.
    StaleFence {
        ours: i64,
        current: i64,
    },
    /// Someone changed the row since it was read (status or version differs).
    Conflict {
        status: OrderStatus,
        version: i64,
    },
    Missing,
}

/// Applies `t` if and only if the row is still in `t.from` at `t.expected_version` and no newer
/// fence has written it, and records the transition. Call it inside the caller's transaction.
pub fn transition(
    conn: &mut PgConnection,
    t: &Transition<'_>,
) -> Result<Result<OrderRow, WriteRefused>, StorageError> {
    {
        let closed_at = (t.to == OrderStatus::Closed).then_some(t.at);
        let updated = diesel::update(
            orders::table
                .filter(orders::id.eq(t.id.as_uuid()))
                .filter(orders::status.eq(t.from.as_str()))
                .filter(orders::version.eq(t.expected_version))
                .filter(orders::fence.le(t.fence)),
        )
        .set((
            orders::status.eq(t.to.as_str()),
            orders::version.eq(orders::version + 1),
            orders::fence.eq(t.fence),
            orders::updated_at.eq(t.at),
            orders::closed_at.eq(closed_at),
            orders::paid_minor.eq(t.paid_minor),
            orders::transition_reason.eq(t.reason),
        ))
        .returning(OrderRow::as_returning())
        .get_result(conn)
        .optional()?;
        match updated {
            Some(row) => {
                recorded(Some(t.from), t.to);
                Ok(Ok(row))
            }
            None => {
                let current = orders::table
                    .filter(orders::id.eq(t.id.as_uuid()))
                    .select(OrderRow::as_select())
                    .first(conn)
                    .optional()?;
                Ok(Err(match current {
                    None => WriteRefused::Missing,
                    Some(c) if c.fence > t.fence => WriteRefused::StaleFence {
                        ours: t.fence,
                        current: c.fence,
                    },
                    Some(c) => WriteRefused::Conflict {
                        status: c.status,
                        version: c.version,
                    },
                }))
            }
        }
    }
}

/// Adds a succeeded refund to the order's refunded total and moves it to `to` (the state
/// machine's answer to `RefundSucceeded`), if the row is still at `expected_version`. The
/// writer holds the order's row lock; the fence is left as it is (no Redis lock is involved).
pub fn record_refund(
    conn: &mut PgConnection,
    order: &OrderRow,
    amount_minor: i64,
    to: OrderStatus,
    reason: &str,
) -> Result<Option<OrderRow>, StorageError> {
    let updated = diesel::update(
        orders::table
            .filter(orders::id.eq(order.id))
            .filter(orders::status.eq(order.status.as_str()))
            .filter(orders::version.eq(order.version)),
    )
    .set((
        orders::status.eq(to.as_str()),
        orders::version.eq(orders::version + 1),
        orders::updated_at.eq(Utc::now()),
        orders::refunded_minor.eq(orders::refunded_minor + amount_minor),
        orders::transition_reason.eq(reason),
    ))
    .returning(OrderRow::as_returning())
    .get_result(conn)
    .optional()?;
    if updated.is_some() {
        recorded(Some(order.status), to);
    }
    Ok(updated)
}

/// The order's row with a lock, scoped to the app (another app's order is not found).
pub fn find_for_update_as(
    conn: &mut PgConnection,
    app: &AppId,
    id: OrderId,
) -> Result<Option<OrderRow>, StorageError> {
    Ok(orders::table
        .filter(orders::id.eq(id.as_uuid()))
        .filter(orders::app_id.eq(app.as_str()))
        .select(OrderRow::as_select())
        .for_update()
        .first(conn)
        .optional()?)
}

/// Counts a transition the database has just recorded in `order_transitions` (the
/// `orders_record_transition` trigger writes the row in the UPDATE's own statement).
fn recorded(from: Option<OrderStatus>, to: OrderStatus) {
    super::transitions::written(from, to);
}

pub use crate::domain::OrderFilter as ListFilter;

/// Newest first; keyset pagination on (created_at, id), which the `orders_app_created` index serves.
pub fn list(
    conn: &mut PgConnection,
    app: &AppId,
    f: &ListFilter,
) -> Result<Vec<OrderRow>, StorageError> {
    let mut q = orders::table
        .filter(orders::app_id.eq(app.as_str()))
        .select(OrderRow::as_select())
        .into_boxed();
    if !f.statuses.is_empty() {
        q = q.filter(orders::status.eq_any(f.statuses.iter().map(|s| s.as_str())));
    }
    if let Some(from) = f.created_from {
        q = q.filter(orders::created_at.ge(from));
    }
    if let Some(to) = f.created_to {
        q = q.filter(orders::created_at.lt(to));
    }
    if let Some((at, id)) = f.after {
        q = q.filter(
            orders::created_at
                .lt(at)
                .or(orders::created_at.eq(at).and(orders::id.lt(id))),
        );
    }
    Ok(q.order((orders::created_at.desc(), orders::id.desc()))
        .limit(f.limit)
        .load(conn)?)
}

/// Up to `limit` PENDING or PAYING orders past their expiry, oldest expiry first, leaving out
/// `skip` (orders that cannot be closed yet; see `App::expire_orders`).
pub fn find_expired(
    conn: &mut PgConnection,
    limit: i64,
    skip: &[Uuid],
) -> Result<Vec<OrderRow>, StorageError> {
    Ok(orders::table
        // The statuses are SQL literals, not a bound array: the partial index `orders_open_expiry`
        // is usable only when the planner can prove its predicate, which a generic plan over a
        // bound array cannot. Such a plan, chosen while the table was small or its statistics
        // stale, made every tick of the expiry job scan the whole table (200–500 ms a tick at
        // 10^6 orders just bulk-loaded by reconbench, until ANALYZE replanned it).
        .filter(diesel::dsl::sql::<diesel::sql_types::Bool>(
            "orders.status IN ('PENDING', 'PAYING')",
        ))
        .filter(orders::expires_at.le(Utc::now()))
        .filter(diesel::dsl::not(orders::id.eq_any(skip)))
        .order(orders::expires_at.asc())
        .limit(limit)
        .select(OrderRow::as_select())
        .load(conn)?)
}
