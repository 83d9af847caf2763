//! Payment attempts. Status changes are conditional on the status that was read, like orders.
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use uuid::Uuid;

use super::StorageError;
use super::schema::payment_attempts;
use crate::domain::{AttemptStatus, Channel, OrderId, PayMethod};

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, QueryableByName)]
#[diesel(table_name = payment_attempts, check_for_backend(diesel::pg::Pg))]
pub struct AttemptRow {
    pub id: Uuid,
    pub order_id: Uuid,
    pub out_trade_no: String,
    pub channel: Channel,
    pub method: PayMethod,
    pub amount_minor: i64,
    pub currency: String,
    pub status: AttemptStatus,
    pub payer_digest: Vec<u8>,
    pub pay_params: Option<serde_json::Value>,
    pub channel_prepay_id: Option<String>,
    pub channel_trade_no: Option<String>,
    pub paid_minor: Option<i64>,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub succeeded_at: Option<DateTime<Utc>>,
    /// When the channel stops accepting payment for this trade (never after the order's expiry).
    pub pay_deadline: DateTime<Utc>,
}

impl From<AttemptRow> for crate::domain::Attempt {
    fn from(r: AttemptRow) -> Self {
        Self {
            id: r.id,
            order_id: r.order_id,
            out_trade_no: r.out_trade_no,
            channel: r.channel,
            method: r.method,
            amount_minor: r.amount_minor,
            currency: r.currency,
            status: r.status,
            channel_trade_no: r.channel_trade_no,
            paid_minor: r.paid_minor,
            created_at: r.created_at,
            updated_at: r.updated_at,
            succeeded_at: r.succeeded_at,
            pay_deadline: r.pay_deadline,
        }
    }
}

#[derive(Debug, Insertable)]
#[diesel(table_name = payment_attempts)]
pub struct NewAttemptRow<'a> {
    pub id: Uuid,
    pub order_id: Uuid,
    pub out_trade_no: &'a str,
    pub channel: Channel,
    pub method: PayMethod,
    pub amount_minor: i64,
    pub currency: &'a str,
    pub status: AttemptStatus,
    pub payer_digest: &'a [u8],
    pub pay_deadline: DateTime<Utc>,
    /// When the query job first looks at it (set here rather than by a second statement).
    pub next_query_at: Option<DateTime<Utc>>,
}

/// Why an attempt insert was refused by a unique index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertRefused {
    /// The order already has an open attempt (`payment_attempts_one_open_per_order`): another
    /// caller got there first.
    OpenAttemptExists,
    /// The `out_trade_no` is taken: two minters shared a worker id (a lost lease). Retryable with
    /// a fresh number.
    TradeNoTaken,
}

/// Inserts a new INIT attempt, or says which unique index refused it.
pub fn insert(
    conn: &mut PgConnection,
    row: &NewAttemptRow<'_>,
) -> Result<Result<AttemptRow, InsertRefused>, StorageError> {
    use diesel::result::{DatabaseErrorKind, Error};
    match diesel::insert_into(payment_attempts::table)
        .values(row)
        .returning(AttemptRow::as_returning())
        .get_result(conn)
    {
        Ok(a) => Ok(Ok(a)),
        Err(Error::DatabaseError(DatabaseErrorKind::UniqueViolation, info)) => {
            match info.constraint_name() {
                Some("payment_attempts_one_open_per_order") => {
                    Ok(Err(InsertRefused::OpenAttemptExists))
                }
                Some("payment_attempts_out_trade_no_key") => Ok(Err(InsertRefused::TradeNoTaken)),
                _ => Err(Error::DatabaseError(DatabaseErrorKind::UniqueViolation, info).into()),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// The order's attempts that are still open (INIT or PAYING) other than `except`.
pub fn find_open_others(
    conn: &mut PgConnection,
    order: OrderId,
    except: Uuid,
) -> Result<Vec<AttemptRow>, StorageError> {
    Ok(payment_attempts::table
        .filter(payment_attempts::order_id.eq(order.as_uuid()))
        .filter(payment_attempts::status.eq_any(["INIT", "PAYING"]))
        .filter(payment_attempts::id.ne(except))
        .select(AttemptRow::as_select())
        .load(conn)?)
}

/// The order's open attempt (INIT or PAYING), if any.
pub fn find_open(
    conn: &mut PgConnection,
    order: OrderId,
) -> Result<Option<AttemptRow>, StorageError> {
    Ok(payment_attempts::table
        .filter(payment_attempts::order_id.eq(order.as_uuid()))
        .filter(payment_attempts::status.eq_any(["INIT", "PAYING"]))
        .select(AttemptRow::as_select())
        .first(conn)
        .optional()?)
}

pub fn find_by_id(conn: &mut PgConnection, id: Uuid) -> Result<Option<AttemptRow>, StorageError> {
    Ok(payment_attempts::table
        .find(id)
        .select(AttemptRow::as_select())
        .first(conn)
        .optional()?)
}

/// Locks the attempt row (after its order's row: see `orders::find_for_update`).
pub fn find_by_out_trade_no_for_update(
    conn: &mut PgConnection,
    out_trade_no: &str,
) -> Result<Option<AttemptRow>, StorageError> {
    Ok(payment_attempts::table
        .filter(payment_attempts::out_trade_no.eq(out_trade_no))
        .select(AttemptRow::as_select())
        .for_update()
        .first(conn)
        .optional()?)
}

pub fn find_by_out_trade_no(
    conn: &mut PgConnection,
    out_trade_no: &str,
) -> Result<Option<AttemptRow>, StorageError> {
    Ok(payment_attempts::table
        .filter(payment_attempts::out_trade_no.eq(out_trade_no))
        .select(AttemptRow::as_select())
        .first(conn)
        .optional()?)
}

/// A status change approved by the attempt state machine, plus what the channel told us.
#[derive(Debug, Clone, Default)]
pub struct AttemptChange {
    pub pay_params: Option<serde_json::Value>,
    pub channel_prepay_id: Option<String>,
    pub channel_trade_no: Option<String>,
    pub paid_minor: Option<i64>,
    pub succeeded_at: Option<DateTime<Utc>>,
    /// Reschedules the query job's next look in the same statement.
    pub next_query_at: Option<DateTime<Utc>>,
}

/// Moves the attempt from `from` to `to` if it is still in `from`; `None` if someone else moved
/// it first. Fields left `None` in `change` keep their value.
pub fn transition(
    conn: &mut PgConnection,
    id: Uuid,
    from: AttemptStatus,
    to: AttemptStatus,
    change: AttemptChange,
) -> Result<Option<AttemptRow>, StorageError> {
    use diesel::dsl::sql;
    use diesel::sql_types::{Int8, Jsonb, Nullable, Text, Timestamptz};
    let updated = diesel::update(
        payment_attempts::table
            .filter(payment_attempts::id.eq(id))
            .filter(payment_attempts::status.eq(from.as_str())),
    )
    .set((
        payment_attempts::status.eq(to.as_str()),
        payment_attempts::version.eq(payment_attempts::version + 1),
        payment_attempts::updated_at.eq(Utc::now()),
        payment_attempts::pay_params.eq(diesel::dsl::sql::<Nullable<Jsonb>>("coalesce(")
            .bind::<Nullable<Jsonb>, _>(change.pay_params)
            .sql(", pay_params)")),
        payment_attempts::channel_prepay_id.eq(sql::<Nullable<Text>>("coalesce(")
            .bind::<Nullable<Text>, _>(change.channel_prepay_id)
            .sql(", channel_prepay_id)")),
        payment_attempts::channel_trade_no.eq(sql::<Nullable<Text>>("coalesce(")
            .bind::<Nullable<Text>, _>(change.channel_trade_no)
            .sql(", channel_trade_no)")),
        payment_attempts::paid_minor.eq(sql::<Nullable<Int8>>("coalesce(")
            .bind::<Nullable<Int8>, _>(change.paid_minor)
            .sql(", paid_minor)")),
        payment_attempts::succeeded_at.eq(sql::<Nullable<Timestamptz>>("coalesce(")
            .bind::<Nullable<Timestamptz>, _>(change.succeeded_at)
            .sql(", succeeded_at)")),
        payment_attempts::next_query_at.eq(sql::<Nullable<Timestamptz>>("coalesce(")
            .bind::<Nullable<Timestamptz>, _>(change.next_query_at)
            .sql(", next_query_at)")),
    ))
    .returning(AttemptRow::as_returning())
    .get_result(conn)
    .optional()?;
    Ok(updated)
}

/// The attempt that paid the order: its SUCCEEDED attempt that is not a recorded duplicate
/// payment (at most one, since every later success on a paid order is recorded as a duplicate
/// in the same transaction that marks it SUCCEEDED).
pub fn paying_attempt(
    conn: &mut PgConnection,
    order: OrderId,
) -> Result<Option<AttemptRow>, StorageError> {
    use super::schema::duplicate_payments;
    Ok(payment_attempts::table
        .filter(payment_attempts::order_id.eq(order.as_uuid()))
        .filter(payment_attempts::status.eq("SUCCEEDED"))
        .filter(diesel::dsl::not(diesel::dsl::exists(
            duplicate_payments::table
                .filter(duplicate_payments::attempt_id.eq(payment_attempts::id)),
        )))
        .order(payment_attempts::succeeded_at.asc())
        .select(AttemptRow::as_select())
        .first(conn)
        .optional()?)
}

/// Sets when the payment query job looks at the attempt next, while it is open.
pub fn schedule_query(
    conn: &mut PgConnection,
    id: Uuid,
    at: DateTime<Utc>,
) -> Result<(), StorageError> {
    diesel::update(
        payment_attempts::table
            .filter(payment_attempts::id.eq(id))
            .filter(payment_attempts::status.eq_any(["INIT", "PAYING"])),
    )
    .set(payment_attempts::next_query_at.eq(at))
    .execute(conn)?;
    Ok(())
}

/// Claims up to `limit` open attempts whose query is due, for `lease`: their due time moves past
/// the lease and their query count goes up, in one transaction with `FOR UPDATE SKIP LOCKED`,
/// so replicas running the job at once never claim the same attempt, and a claimer that dies
/// releases it when the lease ends. Each comes with its query count (this one included).
pub fn claim_due_queries(
    conn: &mut PgConnection,
    limit: i64,
    lease: std::time::Duration,
) -> Result<Vec<(AttemptRow, i32)>, StorageError> {
    use diesel::Connection;
    conn.transaction(|conn| {
        let now = Utc::now();
        let ids: Vec<Uuid> = payment_attempts::table
            .filter(payment_attempts::status.eq_any(["INIT", "PAYING"]))
            .filter(payment_attempts::needs_attention.eq(false))
            .filter(payment_attempts::next_query_at.le(now))
            .order(payment_attempts::next_query_at.asc())
            .limit(limit)
            .select(payment_attempts::id)
            .for_update()
            .skip_locked()
            .load(conn)?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let until = now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX);
        Ok(
            diesel::update(payment_attempts::table.filter(payment_attempts::id.eq_any(&ids)))
                .set((
                    payment_attempts::next_query_at.eq(until),
                    payment_attempts::queries.eq(payment_attempts::queries + 1),
                ))
                .returning((AttemptRow::as_returning(), payment_attempts::queries))
                .get_results(conn)?,
        )
    })
}

/// Flags an open attempt for a person (no more queries); `false` if it was settled or flagged
/// meanwhile. The caller writes the outbox event in the same transaction.
pub fn flag_for_attention(conn: &mut PgConnection, id: Uuid) -> Result<bool, StorageError> {
    let n = diesel::update(
        payment_attempts::table
            .filter(payment_attempts::id.eq(id))
            .filter(payment_attempts::status.eq_any(["INIT", "PAYING"]))
            .filter(payment_attempts::needs_attention.eq(false)),
    )
    .set((
        payment_attempts::needs_attention.eq(true),
        payment_attempts::next_query_at.eq(None::<DateTime<Utc>>),
        payment_attempts::updated_at.eq(Utc::now()),
    ))
    .execute(conn)?;
    Ok(n == 1)
}

/// Open attempts (INIT or PAYING) per channel, and how many of them are flagged for a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenByChannel {
    pub channel: Channel,
    pub open: i64,
    pub needing_attention: i64,
}

/// One aggregate query for the open-attempt gauges.
pub fn open_by_channel(conn: &mut PgConnection) -> Result<Vec<OpenByChannel>, StorageError> {
    use diesel::dsl::{count_star, sql};
    use diesel::sql_types::BigInt;
    let rows: Vec<(Channel, i64, i64)> = payment_attempts::table
        .filter(payment_attempts::status.eq_any(["INIT", "PAYING"]))
        .group_by(payment_attempts::channel)
        .select((
            payment_attempts::channel,
            count_star(),
            sql::<BigInt>("count(*) FILTER (WHERE needs_attention)"),
        ))
        .load(conn)?;
    Ok(rows
        .into_iter()
        .map(|(channel, open, needing_attention)| OpenByChannel {
            channel,
            open,
            needing_attention,
        })
        .collect())
}

/// Replaces the plain SHA-256 payer digests written before keyed hashes (32 bytes; keyed ones
/// are 33): the empty payer's becomes its keyed hash, any other is cleared once its attempt is
/// final (a digest is only compared while the attempt is open). Open attempts of a real payer
/// keep theirs until they end (Pay still recognises them). Returns how many rows changed.
pub fn rewrite_legacy_payer_digests(
    conn: &mut PgConnection,
    batch: i64,
) -> Result<usize, StorageError> {
    use sha2::Digest;
    let empty_sha = sha2::Sha256::digest(b"").to_vec();
    let empty_keyed = crate::crypto::keys().lookup_hash("payer_id", "");
    let mut total = 0;
    loop {
        let n = diesel::sql_query(
            "UPDATE payment_attempts SET payer_digest = CASE WHEN payer_digest = $1 THEN $2 \
             ELSE '\\x'::bytea END WHERE id IN (SELECT id FROM payment_attempts \
             WHERE length(payer_digest) = 32 AND (payer_digest = $1 \
             OR status IN ('SUCCEEDED', 'FAILED', 'CLOSED')) LIMIT $3)",
        )
        .bind::<diesel::sql_types::Bytea, _>(&empty_sha)
        .bind::<diesel::sql_types::Bytea, _>(&empty_keyed)
        .bind::<diesel::sql_types::BigInt, _>(batch)
        .execute(conn)?;
        total += n;
        if n == 0 {
            return Ok(total);
        }
    }
}
