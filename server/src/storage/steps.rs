//! The lifecycle's common steps as single statements (G7: round trips and commits per payment).
//!
//! Each step used to be a transaction of 5 to 11 round trips: BEGIN, a locking read per row,
//! one write per table, COMMIT. Here the common case of a step is one `WITH` statement, its own
//! transaction: every part is guarded by what the writer read (status, version, `updated_at`,
//! fence), so the statement either makes exactly the change the state machine approved on
//! that reading, or changes nothing (a part that matches no row, or `payd_require` rolling the
//! whole statement back when a later part fails after an earlier one wrote). A refused step
//! says nothing about why: the caller then runs the step's multi-statement transaction, which
//! reads under row locks and tells each case apart. Both paths make the same rows; the
//! statement only skips the round trips.
//!
//! Locks are taken in the order every writer uses: the order's row first (the first part
//! writes it, and each later part depends on it), then the attempt's, then new rows.
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bytea, Jsonb, Nullable, Text, Timestamptz};
use uuid::Uuid;

use super::StorageError;
use super::attempts::AttemptRow;
use super::orders::OrderRow;
use super::schema::{channel_events, orders, payment_attempts};
use super::sql::is_refusal;
use crate::domain::{AttemptStatus, OrderStatus};

/// `t` as Postgres stores it (microseconds, rounded down as diesel sends it): what a value
/// written now reads back as, so that an event encoded before the write shows the row exactly
/// as committed.
pub fn stored_instant(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

/// What a payment result needs to know, read in one statement without locks.
#[derive(Debug, Clone)]
pub struct ResultContext {
    /// The channel event is in the inbox already (a repeat).
    pub seen: bool,
    /// The attempt of the reported `out_trade_no`, its order and the order's `event_seq`.
    pub known: Option<(AttemptRow, OrderRow, i64)>,
}

/// Reads what [`ResultContext`] holds: one round trip when the attempt is known (the common
/// case), two when it is not.
pub fn result_context(
    conn: &mut PgConnection,
    channel: &str,
    event_id: &str,
    out_trade_no: &str,
) -> Result<ResultContext, StorageError> {
    let seen = diesel::dsl::exists(
        channel_events::table
            .filter(channel_events::channel.eq(channel))
            .filter(channel_events::event_id.eq(event_id)),
    );
    let row: Option<(AttemptRow, OrderRow, i64, bool)> = payment_attempts::table
        .inner_join(orders::table)
        .filter(payment_attempts::out_trade_no.eq(out_trade_no))
        .select((
            AttemptRow::as_select(),
            OrderRow::as_select(),
            orders::event_seq,
            seen,
        ))
        .first(conn)
        .optional()?;
    Ok(match row {
        Some((a, o, seq, seen)) => ResultContext {
            seen,
            known: Some((a, o, seq)),
        },
        None => ResultContext {
            seen: super::events::seen(conn, channel, event_id)?,
            known: None,
        },
    })
}

/// A success that pays the order: the attempt and the order move as read (the order's
/// `closed_at` cleared, as `orders::transition` does for every move to a state other than
/// CLOSED), the `order.paid`
/// event (encoded from the rows as they will be) goes to the outbox, the channel event to the
/// inbox, and the call's audit record (if any) is written, all in one statement.
pub struct PaidWrite<'a> {
    /// The rows as read, and the order's `event_seq` then.
    pub order: &'a OrderRow,
    pub order_event_seq: i64,
    pub attempt: &'a AttemptRow,
    /// The state machine's answers.
    pub order_to: OrderStatus,
    pub attempt_to: AttemptStatus,
    pub reason: &'a str,
    /// `updated_at` of both rows ([`stored_instant`]).
    pub at: DateTime<Utc>,
    pub paid_minor: i64,
    pub channel_trade_no: Option<&'a str>,
    pub succeeded_at: DateTime<Utc>,
    /// The outbox event: its id, type and payload (numbered `order_event_seq + 1`).
    pub event_id: Uuid,
    pub event_type: &'a str,
    pub payload: &'a [u8],
    /// The inbox row.
    pub channel: &'a str,
    pub channel_event_id: &'a str,
    pub state: &'a str,
    pub outcome: &'a str,
    pub inbox_payload: &'a serde_json::Value,
    /// The call's audit record, as `audit_records` JSON (`jsonb_populate_record`).
    pub audit: Option<&'a serde_json::Value>,
}

/// Writes `w`; `false` when it was refused and changed nothing.
///
/// # Errors
/// Storage errors other than the refusal.
pub fn pay_with_result(conn: &mut PgConnection, w: &PaidWrite<'_>) -> Result<bool, StorageError> {
    #[derive(QueryableByName)]
    struct Done {
        #[diesel(sql_type = BigInt)]
        order_version: i64,
        #[diesel(sql_type = BigInt)]
        attempt_version: i64,
    }
    let done = crate::cached!(
        "WITH o AS ( \
           UPDATE orders SET status = $1, version = version + 1, updated_at = $2, closed_at = NULL, \
                             paid_minor = $3, transition_reason = $4, event_seq = event_seq + 1 \
           WHERE id = $5 AND status = $6 AND version = $7 AND event_seq = $8 AND updated_at = $9 \
           RETURNING id, app_id, version, event_seq), \
         a AS ( \
           UPDATE payment_attempts SET status = $10, version = version + 1, updated_at = $2, \
                  channel_trade_no = coalesce($11, channel_trade_no), paid_minor = $3, \
                  succeeded_at = $12 \
           WHERE id = $13 AND status = $14 AND version = $15 AND updated_at = $16 \
             AND EXISTS (SELECT 1 FROM o) \
           RETURNING id, out_trade_no, version), \
         ev AS ( \
           INSERT INTO outbox_events (event_id, app_id, order_id, order_seq, event_type, payload, delivery) \
           SELECT $17, o.app_id, o.id, o.event_seq, $18, $19, 'NONE' FROM o, a \
           RETURNING id), \
         inbox AS ( \
           INSERT INTO channel_events (channel, event_id, kind, out_trade_no, state, outcome, payload) \
           SELECT $20, $21, 'PAYMENT', a.out_trade_no, $22, $23, $24 FROM a \
           ON CONFLICT (channel, event_id) DO NOTHING \
           RETURNING id), \
         audit AS ( \
           INSERT INTO audit_records (actor_kind, app_id, operator, adapter, action, outcome, code, \
                                      request_id, order_id, out_trade_no, refund_id, recon_run_id, target) \
           SELECT r.actor_kind, r.app_id, r.operator, r.adapter, r.action, r.outcome, r.code, \
                  r.request_id, r.order_id, r.out_trade_no, r.refund_id, r.recon_run_id, r.target \
           FROM a, jsonb_populate_record(NULL::audit_records, $25) r WHERE $25 IS NOT NULL) \
         SELECT o.version AS order_version, a.version AS attempt_version FROM o LEFT JOIN a ON true \
         WHERE payd_require(EXISTS (SELECT 1 FROM a) AND EXISTS (SELECT 1 FROM ev) \
                            AND EXISTS (SELECT 1 FROM inbox), 'payment result')",
    )
    .bind::<Text, _>(w.order_to.as_str())
    .bind::<Timestamptz, _>(w.at)
    .bind::<BigInt, _>(w.paid_minor)
    .bind::<Text, _>(w.reason)
    .bind::<diesel::sql_types::Uuid, _>(w.order.id)
    .bind::<Text, _>(w.order.status.as_str())
    .bind::<BigInt, _>(w.order.version)
    .bind::<BigInt, _>(w.order_event_seq)
    .bind::<Timestamptz, _>(w.order.updated_at)
    .bind::<Text, _>(w.attempt_to.as_str())
    .bind::<Nullable<Text>, _>(w.channel_trade_no)
    .bind::<Timestamptz, _>(w.succeeded_at)
    .bind::<diesel::sql_types::Uuid, _>(w.attempt.id)
    .bind::<Text, _>(w.attempt.status.as_str())
    .bind::<BigInt, _>(w.attempt.version)
    .bind::<Timestamptz, _>(w.attempt.updated_at)
    .bind::<diesel::sql_types::Uuid, _>(w.event_id)
    .bind::<Text, _>(w.event_type)
    .bind::<Bytea, _>(w.payload)
    .bind::<Text, _>(w.channel)
    .bind::<Text, _>(w.channel_event_id)
    .bind::<Text, _>(w.state)
    .bind::<Text, _>(w.outcome)
    .bind::<Jsonb, _>(w.inbox_payload)
    .bind::<Nullable<Jsonb>, _>(w.audit)
    .get_result::<Done>(conn)
    .optional();
    match done {
        Ok(Some(d)) => {
            debug_assert_eq!(
                (d.order_version, d.attempt_version),
                (w.order.version + 1, w.attempt.version + 1)
            );
            Ok(true)
        }
        Ok(None) => Ok(false),
        Err(e) if is_refusal(&e) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Pay's first statement under the order's Redis lock: draws the lock's fencing token and reads
/// the app's order with its open attempt (INIT or PAYING; at most one), in one round trip.
/// `None`: no such order for this app (no token was drawn).
pub fn pay_context(
    conn: &mut PgConnection,
    app: &str,
    order: Uuid,
) -> Result<Option<(i64, OrderRow, Option<AttemptRow>)>, StorageError> {
    Ok(orders::table
        .left_join(
            payment_attempts::table.on(payment_attempts::order_id
                .eq(orders::id)
                .and(payment_attempts::status.eq_any(["INIT", "PAYING"]))),
        )
        .filter(orders::id.eq(order))
        .filter(orders::app_id.eq(app))
        .select((
            super::orders::payd_mint_fence(),
            OrderRow::as_select(),
            Option::<AttemptRow>::as_select(),
        ))
        .first(conn)
        .optional()?)
}

/// Opens a new INIT attempt as the lock holder with `fence`, in one statement: claims the
/// order's row for the fence (refused when a newer holder wrote it) while the order is in one
/// of `payable` (the states the state machine lets a payment start from), and inserts the
/// attempt. `Ok(None)`: refused, nothing written. A unique index refusing the insert is
/// reported as by `attempts::insert`.
///
/// # Errors
/// Storage errors other than those.
pub fn open_attempt(
    conn: &mut PgConnection,
    fence: i64,
    payable: &[&str],
    row: &super::attempts::NewAttemptRow<'_>,
) -> Result<Result<Option<AttemptRow>, super::attempts::InsertRefused>, StorageError> {
    use diesel::result::{DatabaseErrorKind, Error};
    use diesel::sql_types::Array;
    let inserted = crate::cached!(
        "WITH o AS ( \
           UPDATE orders SET fence = $1 \
           WHERE id = $2 AND fence <= $1 AND status = ANY($3) \
           RETURNING id) \
         INSERT INTO payment_attempts (id, order_id, out_trade_no, channel, method, amount_minor, \
                                       currency, status, payer_digest, pay_deadline, next_query_at) \
         SELECT $4, o.id, $5, $6, $7, $8, $9, $10, $11, $12, $13 FROM o \
         RETURNING *",
    )
    .bind::<BigInt, _>(fence)
    .bind::<diesel::sql_types::Uuid, _>(row.order_id)
    .bind::<Array<Text>, _>(payable)
    .bind::<diesel::sql_types::Uuid, _>(row.id)
    .bind::<Text, _>(row.out_trade_no)
    .bind::<Text, _>(row.channel.as_str())
    .bind::<Text, _>(row.method.as_str())
    .bind::<BigInt, _>(row.amount_minor)
    .bind::<Text, _>(row.currency)
    .bind::<Text, _>(row.status.as_str())
    .bind::<Bytea, _>(row.payer_digest)
    .bind::<Timestamptz, _>(row.pay_deadline)
    .bind::<Nullable<Timestamptz>, _>(row.next_query_at)
    .get_result::<AttemptRow>(conn)
    .optional();
    match inserted {
        Ok(a) => Ok(Ok(a)),
        Err(Error::DatabaseError(DatabaseErrorKind::UniqueViolation, info)) => {
            match info.constraint_name() {
                Some("payment_attempts_one_open_per_order") => {
                    Ok(Err(super::attempts::InsertRefused::OpenAttemptExists))
                }
                Some("payment_attempts_out_trade_no_key") => {
                    Ok(Err(super::attempts::InsertRefused::TradeNoTaken))
                }
                _ => Err(Error::DatabaseError(DatabaseErrorKind::UniqueViolation, info).into()),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Pay's last write in one statement: the attempt INIT → PAYING with the Prepay answer, the
/// order moved as the state machine said on the reading (`order_to`; a version step of 0 when
/// it stays PAYING) and claimed for `fence`, and the call's audit record. Every part is guarded
/// by that reading: `false` when anything changed since, and nothing was written.
pub struct PrepayWrite<'a> {
    pub order: &'a OrderRow,
    pub order_to: OrderStatus,
    pub reason: Option<&'a str>,
    pub fence: i64,
    pub attempt: &'a AttemptRow,
    pub attempt_to: AttemptStatus,
    pub at: DateTime<Utc>,
    pub pay_params: &'a serde_json::Value,
    pub channel_prepay_id: Option<&'a str>,
    pub next_query_at: DateTime<Utc>,
    pub audit: Option<&'a serde_json::Value>,
}

/// Writes `w`; `false` when it was refused and changed nothing.
///
/// # Errors
/// Storage errors other than the refusal.
pub fn commit_prepay(conn: &mut PgConnection, w: &PrepayWrite<'_>) -> Result<bool, StorageError> {
    #[derive(QueryableByName)]
    struct Done {
        #[diesel(sql_type = BigInt)]
        order_version: i64,
        #[diesel(sql_type = BigInt)]
        attempt_version: i64,
    }
    let step = i64::from(w.order_to != w.order.status);
    let done = crate::cached!(
        "WITH o AS ( \
           UPDATE orders SET fence = $1, status = $2, version = version + $3, \
                  updated_at = CASE WHEN $3 = 1 THEN $4 ELSE updated_at END, \
                  transition_reason = $5 \
           WHERE id = $6 AND status = $7 AND version = $8 AND fence <= $1 \
           RETURNING id, version), \
         a AS ( \
           UPDATE payment_attempts SET status = $9, version = version + 1, updated_at = $4, \
                  pay_params = $10, channel_prepay_id = coalesce($11, channel_prepay_id), \
                  next_query_at = $12 \
           WHERE id = $13 AND status = $14 AND version = $15 AND updated_at = $16 \
             AND EXISTS (SELECT 1 FROM o) \
           RETURNING id, version), \
         audit AS ( \
           INSERT INTO audit_records (actor_kind, app_id, operator, adapter, action, outcome, code, \
                                      request_id, order_id, out_trade_no, refund_id, recon_run_id, target) \
           SELECT r.actor_kind, r.app_id, r.operator, r.adapter, r.action, r.outcome, r.code, \
                  r.request_id, r.order_id, r.out_trade_no, r.refund_id, r.recon_run_id, r.target \
           FROM a, jsonb_populate_record(NULL::audit_records, $17) r WHERE $17 IS NOT NULL) \
         SELECT o.version AS order_version, a.version AS attempt_version FROM o LEFT JOIN a ON true \
         WHERE payd_require(EXISTS (SELECT 1 FROM a), 'pay')",
    )
    .bind::<BigInt, _>(w.fence)
    .bind::<Text, _>(w.order_to.as_str())
    .bind::<BigInt, _>(step)
    .bind::<Timestamptz, _>(w.at)
    .bind::<Nullable<Text>, _>(w.reason)
    .bind::<diesel::sql_types::Uuid, _>(w.order.id)
    .bind::<Text, _>(w.order.status.as_str())
    .bind::<BigInt, _>(w.order.version)
    .bind::<Text, _>(w.attempt_to.as_str())
    .bind::<Jsonb, _>(w.pay_params)
    .bind::<Nullable<Text>, _>(w.channel_prepay_id)
    .bind::<Timestamptz, _>(w.next_query_at)
    .bind::<diesel::sql_types::Uuid, _>(w.attempt.id)
    .bind::<Text, _>(w.attempt.status.as_str())
    .bind::<BigInt, _>(w.attempt.version)
    .bind::<Timestamptz, _>(w.attempt.updated_at)
    .bind::<Nullable<Jsonb>, _>(w.audit)
    .get_result::<Done>(conn)
    .optional();
    match done {
        Ok(Some(d)) => {
            debug_assert_eq!(
                (d.order_version, d.attempt_version),
                (w.order.version + step, w.attempt.version + 1)
            );
            Ok(true)
        }
        Ok(None) => Ok(false),
        Err(e) if is_refusal(&e) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// CreateOrder in one statement: the order (unless the app already has its merchant order
/// number), its `order.created` event numbered 1, and the call's audit record. The order's
/// times are payd's clock, accepted only within `max_skew` of the database's: beyond that (or
/// on a number already taken) nothing is written and the caller's transaction, which takes the
/// database's clock, runs instead.
pub struct CreateWrite<'a> {
    pub order: &'a super::orders::NewOrderRow<'a>,
    /// `created_at` and `updated_at` ([`stored_instant`]).
    pub at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub max_skew: std::time::Duration,
    pub event_id: Uuid,
    pub event_type: &'a str,
    pub payload: &'a [u8],
    pub audit: Option<&'a serde_json::Value>,
}

/// Writes `w`; the order as stored, `None` when refused (nothing written).
///
/// # Errors
/// Storage errors other than the refusal.
pub fn create_order(
    conn: &mut PgConnection,
    w: &CreateWrite<'_>,
) -> Result<Option<OrderRow>, StorageError> {
    let o = w.order;
    let created = crate::cached!(
        "WITH o AS ( \
           INSERT INTO orders (id, app_id, merchant_order_no, amount_minor, currency, subject, \
                               metadata, status, created_at, updated_at, expires_at, event_seq) \
           SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $10, 1 \
           WHERE abs(extract(epoch FROM statement_timestamp() - $9)) < $11 \
           ON CONFLICT (app_id, merchant_order_no) DO NOTHING \
           RETURNING *), \
         ev AS ( \
           INSERT INTO outbox_events (event_id, app_id, order_id, order_seq, event_type, payload, delivery) \
           SELECT $12, o.app_id, o.id, 1, $13, $14, 'NONE' FROM o \
           RETURNING id), \
         audit AS ( \
           INSERT INTO audit_records (actor_kind, app_id, operator, adapter, action, outcome, code, \
                                      request_id, order_id, out_trade_no, refund_id, recon_run_id, target) \
           SELECT r.actor_kind, r.app_id, r.operator, r.adapter, r.action, r.outcome, r.code, \
                  r.request_id, r.order_id, r.out_trade_no, r.refund_id, r.recon_run_id, r.target \
           FROM o, jsonb_populate_record(NULL::audit_records, $15) r WHERE $15 IS NOT NULL) \
         SELECT o.* FROM o WHERE payd_require(EXISTS (SELECT 1 FROM ev), 'create order')",
    )
    .bind::<diesel::sql_types::Uuid, _>(o.id)
    .bind::<Text, _>(o.app_id)
    .bind::<Text, _>(o.merchant_order_no)
    .bind::<BigInt, _>(o.amount_minor)
    .bind::<Text, _>(o.currency)
    .bind::<Text, _>(o.subject)
    .bind::<Jsonb, _>(&o.metadata)
    .bind::<Text, _>(o.status.as_str())
    .bind::<Timestamptz, _>(w.at)
    .bind::<Timestamptz, _>(w.expires_at)
    .bind::<diesel::sql_types::Double, _>(w.max_skew.as_secs_f64())
    .bind::<diesel::sql_types::Uuid, _>(w.event_id)
    .bind::<Text, _>(w.event_type)
    .bind::<Bytea, _>(w.payload)
    .bind::<Nullable<Jsonb>, _>(w.audit)
    .get_result::<OrderRow>(conn)
    .optional();
    match created {
        Ok(row) => Ok(row),
        Err(e) if is_refusal(&e) => Ok(None),
        Err(e) => Err(e.into()),
    }
}
