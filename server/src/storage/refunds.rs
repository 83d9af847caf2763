//! Refunds, the amounts they reserve on their attempt, and their transition history.
//!
//! The invariant "refunds that are not FAILED never add up to more than was paid" is held by
//! [`reserve`]: one conditional UPDATE of the attempt's `refund_reserved_minor`, which Postgres
//! evaluates under the row's lock, so two concurrent reservations can never both pass on the
//! same remaining amount (the second re-checks the condition against the first's committed
//! value). A CHECK constraint on the column says the same once more.
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use uuid::Uuid;

use super::StorageError;
use super::schema::{payment_attempts, refund_transitions, refunds};
use crate::domain::{AppId, Channel, RefundFilter, RefundStatus};

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = refunds, check_for_backend(diesel::pg::Pg))]
pub struct RefundRow {
    pub id: Uuid,
    pub app_id: String,
    pub order_id: Uuid,
    pub attempt_id: Uuid,
    pub refund_request_no: String,
    pub out_refund_no: String,
    pub channel: Channel,
    pub amount_minor: i64,
    pub currency: String,
    pub reason: String,
    pub status: RefundStatus,
    pub channel_refund_no: Option<String>,
    pub channel_status: Option<String>,
    pub failure_reason: Option<String>,
    pub requested_by: String,
    pub operator: Option<String>,
    pub create_response: Option<Vec<u8>>,
    pub next_query_at: Option<DateTime<Utc>>,
    pub queries: i32,
    pub needs_attention: bool,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub succeeded_at: Option<DateTime<Utc>>,
    pub duplicate_payment_id: Option<Uuid>,
    /// The reason, sealed (see [`crate::crypto`]); [`RefundRow::reason`] holds it opened once
    /// the row is read through this module.
    pub reason_sealed: Option<String>,
}

/// Associated data of a refund's sealed reason: it opens only in its own row.
fn reason_aad(id: Uuid) -> Vec<u8> {
    crate::crypto::aad("refunds", "reason", &id)
}

/// Opens the sealed reason into `reason`. A legacy row (written before sealing) keeps its
/// clear reason until `payd reencrypt` seals it.
///
/// # Errors
/// `Corrupt` when the value does not open: its key is not loaded (dropped too early), or the
/// ciphertext was altered or moved from another row.
pub fn unseal(mut r: RefundRow) -> Result<RefundRow, StorageError> {
    if let Some(sealed) = &r.reason_sealed {
        r.reason = crate::crypto::keys()
            .open(&reason_aad(r.id), sealed)
            .map_err(|e| StorageError::Corrupt(format!("refund {}: reason: {e}", r.id)))?;
    }
    Ok(r)
}

fn unseal_opt(r: Option<RefundRow>) -> Result<Option<RefundRow>, StorageError> {
    r.map(unseal).transpose()
}

fn unseal_all(rows: Vec<RefundRow>) -> Result<Vec<RefundRow>, StorageError> {
    rows.into_iter().map(unseal).collect()
}

/// Seals refund reasons written in clear (before sealing existed) or under an older key, up to
/// `limit` rows with ids after `after`; returns the last id looked at (`None` when done) and
/// how many rows were rewritten. Each batch is one transaction, and a row already sealed under
/// the active key is left alone, so the command can stop and be run again at any point.
pub fn reseal_batch(
    conn: &mut PgConnection,
    after: Option<Uuid>,
    limit: i64,
) -> Result<(Option<Uuid>, usize), StorageError> {
    use diesel::Connection;
    let keys = crate::crypto::keys();
    conn.transaction(|conn| {
        // The nil UUID sorts before every id.
        let rows: Vec<(Uuid, String, Option<String>)> = refunds::table
            .filter(refunds::id.gt(after.unwrap_or(Uuid::nil())))
            .select((refunds::id, refunds::reason, refunds::reason_sealed))
            .order(refunds::id.asc())
            .limit(limit)
            .for_update()
            .load(conn)?;
        let mut changed = 0;
        for (id, clear, sealed) in &rows {
            let plain = match sealed {
                Some(s) if crate::crypto::key_id(s) == Some(keys.active_id()) => continue,
                Some(s) => keys
                    .open(&reason_aad(*id), s)
                    .map_err(|e| StorageError::Corrupt(format!("refund {id}: reason: {e}")))?,
                None if clear.is_empty() => continue,
                None => clear.clone(),
            };
            let resealed = keys
                .seal(&reason_aad(*id), &plain)
                .map_err(|e| StorageError::Corrupt(e.to_string()))?;
            diesel::update(refunds::table.filter(refunds::id.eq(id)))
                .set((refunds::reason.eq(""), refunds::reason_sealed.eq(resealed)))
                .execute(conn)?;
            changed += 1;
        }
        Ok((rows.last().map(|r| r.0), changed))
    })
}

impl From<RefundRow> for crate::domain::Refund {
    fn from(r: RefundRow) -> Self {
        Self {
            id: r.id,
            app_id: r.app_id,
            order_id: r.order_id,
            attempt_id: r.attempt_id,
            refund_request_no: r.refund_request_no,
            out_refund_no: r.out_refund_no,
            channel: r.channel,
            amount_minor: r.amount_minor,
            currency: r.currency,
            reason: r.reason,
            status: r.status,
            channel_refund_no: r.channel_refund_no,
            failure_reason: r.failure_reason,
            requested_by: r.requested_by,
            operator: r.operator,
            needs_attention: r.needs_attention,
            version: r.version,
            created_at: r.created_at,
            updated_at: r.updated_at,
            succeeded_at: r.succeeded_at,
        }
    }
}

#[derive(Debug, Insertable)]
#[diesel(table_name = refunds)]
pub struct NewRefundRow<'a> {
    pub id: Uuid,
    pub app_id: &'a str,
    pub order_id: Uuid,
    pub attempt_id: Uuid,
    pub refund_request_no: &'a str,
    pub out_refund_no: &'a str,
    pub channel: Channel,
    pub amount_minor: i64,
    pub currency: &'a str,
    pub reason: &'a str,
    pub status: RefundStatus,
    pub requested_by: &'a str,
    pub operator: Option<&'a str>,
    /// When the query job first looks at it if the creating call never comes back.
    pub next_query_at: DateTime<Utc>,
    pub duplicate_payment_id: Option<Uuid>,
}

/// Why a refund insert was refused by a unique index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefundInsertRefused {
    /// The app already has a refund with this `refund_request_no` (a concurrent call on another
    /// order won).
    RequestNoTaken,
    /// The minted `out_refund_no` is taken (two minters shared a worker id).
    RefundNoTaken,
}

/// Inserts the refund (PENDING) and its first history row.
pub fn insert(
    conn: &mut PgConnection,
    row: &NewRefundRow<'_>,
    actor: &str,
) -> Result<Result<RefundRow, RefundInsertRefused>, StorageError> {
    use diesel::result::{DatabaseErrorKind, Error};
    // The reason a person typed never reaches the table (or the WAL) in clear.
    let sealed = (!row.reason.is_empty())
        .then(|| crate::crypto::keys().seal(&reason_aad(row.id), row.reason))
        .transpose()
        .map_err(|e| StorageError::Corrupt(e.to_string()))?;
    let clear_free = NewRefundRow { reason: "", ..*row };
    let inserted = match diesel::insert_into(refunds::table)
        .values((&clear_free, refunds::reason_sealed.eq(sealed)))
        .returning(RefundRow::as_returning())
        .get_result::<RefundRow>(conn)
    {
        Ok(r) => RefundRow {
            reason: row.reason.to_owned(),
            ..r
        },
        Err(Error::DatabaseError(DatabaseErrorKind::UniqueViolation, info)) => {
            return match info.constraint_name() {
                Some("refunds_app_request_no") => Ok(Err(RefundInsertRefused::RequestNoTaken)),
                Some("refunds_out_refund_no_key") => Ok(Err(RefundInsertRefused::RefundNoTaken)),
                _ => Err(Error::DatabaseError(DatabaseErrorKind::UniqueViolation, info).into()),
            };
        }
        Err(e) => return Err(e.into()),
    };
    record_transition(
        conn,
        inserted.id,
        inserted.version,
        None,
        inserted.status,
        actor,
        "requested",
    )?;
    Ok(Ok(inserted))
}

/// Reserves `amount` of what `attempt` captured, or says how much remains refundable.
///
/// The check and the write are one statement, evaluated by Postgres on the locked row: a
/// concurrent reservation waits for this one's commit and re-checks against its result.
pub fn reserve(
    conn: &mut PgConnection,
    attempt: Uuid,
    amount: i64,
) -> Result<Result<(), i64>, StorageError> {
    let n = diesel::update(
        payment_attempts::table
            .filter(payment_attempts::id.eq(attempt))
            .filter(payment_attempts::status.eq("SUCCEEDED"))
            .filter(
                (payment_attempts::refund_reserved_minor + amount)
                    .nullable()
                    .le(payment_attempts::paid_minor),
            ),
    )
    .set(
        payment_attempts::refund_reserved_minor
            .eq(payment_attempts::refund_reserved_minor + amount),
    )
    .execute(conn)?;
    if n == 1 {
        return Ok(Ok(()));
    }
    let (paid, reserved): (Option<i64>, i64) = payment_attempts::table
        .find(attempt)
        .select((
            payment_attempts::paid_minor,
            payment_attempts::refund_reserved_minor,
        ))
        .first(conn)?;
    Ok(Err((paid.unwrap_or(0) - reserved).max(0)))
}

/// Gives a FAILED refund's amount back to what is refundable.
pub fn release(conn: &mut PgConnection, attempt: Uuid, amount: i64) -> Result<(), StorageError> {
    let n = diesel::update(
        payment_attempts::table
            .filter(payment_attempts::id.eq(attempt))
            .filter(payment_attempts::refund_reserved_minor.ge(amount)),
    )
    .set(
        payment_attempts::refund_reserved_minor
            .eq(payment_attempts::refund_reserved_minor - amount),
    )
    .execute(conn)?;
    if n == 1 {
        Ok(())
    } else {
        Err(StorageError::Corrupt(format!(
            "attempt {attempt} has less than {amount} reserved for refunds"
        )))
    }
}

/// Adds a SUCCEEDED refund to its attempt's refunded total (already reserved).
pub fn add_refunded(
    conn: &mut PgConnection,
    attempt: Uuid,
    amount: i64,
) -> Result<(), StorageError> {
    diesel::update(payment_attempts::table.filter(payment_attempts::id.eq(attempt)))
        .set(payment_attempts::refunded_minor.eq(payment_attempts::refunded_minor + amount))
        .execute(conn)?;
    Ok(())
}

/// (reserved, refunded) of an attempt.
pub fn attempt_totals(conn: &mut PgConnection, attempt: Uuid) -> Result<(i64, i64), StorageError> {
    Ok(payment_attempts::table
        .find(attempt)
        .select((
            payment_attempts::refund_reserved_minor,
            payment_attempts::refunded_minor,
        ))
        .first(conn)?)
}

pub fn find(
    conn: &mut PgConnection,
    app: &AppId,
    id: Uuid,
) -> Result<Option<RefundRow>, StorageError> {
    unseal_opt(
        refunds::table
            .filter(refunds::id.eq(id))
            .filter(refunds::app_id.eq(app.as_str()))
            .select(RefundRow::as_select())
            .first(conn)
            .optional()?,
    )
}

pub fn find_by_request_no(
    conn: &mut PgConnection,
    app: &AppId,
    no: &str,
) -> Result<Option<RefundRow>, StorageError> {
    unseal_opt(
        refunds::table
            .filter(refunds::app_id.eq(app.as_str()))
            .filter(refunds::refund_request_no.eq(no))
            .select(RefundRow::as_select())
            .first(conn)
            .optional()?,
    )
}

pub fn find_by_out_refund_no(
    conn: &mut PgConnection,
    out_refund_no: &str,
) -> Result<Option<RefundRow>, StorageError> {
    unseal_opt(
        refunds::table
            .filter(refunds::out_refund_no.eq(out_refund_no))
            .select(RefundRow::as_select())
            .first(conn)
            .optional()?,
    )
}

/// Locks the refund row (after its order's row, the order every writer uses).
pub fn find_by_out_refund_no_for_update(
    conn: &mut PgConnection,
    out_refund_no: &str,
) -> Result<Option<RefundRow>, StorageError> {
    unseal_opt(
        refunds::table
            .filter(refunds::out_refund_no.eq(out_refund_no))
            .select(RefundRow::as_select())
            .for_update()
            .first(conn)
            .optional()?,
    )
}

/// What a status change also records.
#[derive(Debug, Clone, Default)]
pub struct RefundChange {
    pub channel_refund_no: Option<String>,
    pub channel_status: Option<String>,
    pub failure_reason: Option<String>,
    pub succeeded_at: Option<DateTime<Utc>>,
    /// The query job's next look (`None` clears it: the refund is final).
    pub next_query_at: Option<DateTime<Utc>>,
}

/// Moves the refund from `from` (at `version`) to `to`, recording who did it; `None` when the
/// row changed since it was read. `from == to` records the channel's news without a status
/// change (no history row).
#[allow(clippy::too_many_arguments)]
pub fn transition(
    conn: &mut PgConnection,
    id: Uuid,
    from: RefundStatus,
    version: i64,
    to: RefundStatus,
    change: RefundChange,
    actor: &str,
    reason: &str,
) -> Result<Option<RefundRow>, StorageError> {
    use diesel::dsl::sql;
    use diesel::sql_types::{Nullable, Text, Timestamptz};
    let updated = diesel::update(
        refunds::table
            .filter(refunds::id.eq(id))
            .filter(refunds::status.eq(from.as_str()))
            .filter(refunds::version.eq(version)),
    )
    .set((
        refunds::status.eq(to.as_str()),
        refunds::version.eq(refunds::version + 1),
        refunds::updated_at.eq(Utc::now()),
        refunds::next_query_at.eq(change.next_query_at),
        refunds::channel_refund_no.eq(sql::<Nullable<Text>>("coalesce(")
            .bind::<Nullable<Text>, _>(change.channel_refund_no)
            .sql(", channel_refund_no)")),
        refunds::channel_status.eq(sql::<Nullable<Text>>("coalesce(")
            .bind::<Nullable<Text>, _>(change.channel_status)
            .sql(", channel_status)")),
        refunds::failure_reason.eq(sql::<Nullable<Text>>("coalesce(")
            .bind::<Nullable<Text>, _>(change.failure_reason)
            .sql(", failure_reason)")),
        refunds::succeeded_at.eq(sql::<Nullable<Timestamptz>>("coalesce(")
            .bind::<Nullable<Timestamptz>, _>(change.succeeded_at)
            .sql(", succeeded_at)")),
    ))
    .returning(RefundRow::as_returning())
    .get_result(conn)
    .optional()?;
    if let Some(r) = &updated
        && from != to
    {
        record_transition(conn, r.id, r.version, Some(from), to, actor, reason)?;
    }
    unseal_opt(updated)
}

fn record_transition(
    conn: &mut PgConnection,
    refund_id: Uuid,
    version: i64,
    from: Option<RefundStatus>,
    to: RefundStatus,
    actor: &str,
    reason: &str,
) -> Result<(), StorageError> {
    diesel::insert_into(refund_transitions::table)
        .values((
            refund_transitions::refund_id.eq(refund_id),
            refund_transitions::version.eq(version),
            refund_transitions::from_status.eq(from.map(RefundStatus::as_str)),
            refund_transitions::to_status.eq(to.as_str()),
            refund_transitions::actor.eq(actor),
            refund_transitions::reason.eq(reason),
        ))
        .execute(conn)?;
    Ok(())
}

/// Keeps the creating call's encoded response, replayed to every repeat of its request number.
/// Only the first writer's bytes are kept.
pub fn store_create_response(
    conn: &mut PgConnection,
    id: Uuid,
    bytes: &[u8],
) -> Result<(), StorageError> {
    diesel::update(
        refunds::table
            .filter(refunds::id.eq(id))
            .filter(refunds::create_response.is_null()),
    )
    .set(refunds::create_response.eq(bytes))
    .execute(conn)?;
    Ok(())
}

/// Claims up to `limit` unsettled refunds whose query is due, for `lease`: their due time moves
/// past the lease and their query count goes up, in one transaction with `FOR UPDATE SKIP
/// LOCKED`, so replicas running the job at once never claim the same refund, and a claimer that
/// dies releases it when the lease ends.
pub fn claim_due(
    conn: &mut PgConnection,
    limit: i64,
    lease: std::time::Duration,
) -> Result<Vec<RefundRow>, StorageError> {
    use diesel::Connection;
    conn.transaction(|conn| {
        let now = Utc::now();
        let ids: Vec<Uuid> = refunds::table
            .filter(refunds::status.eq_any(["PENDING", "PROCESSING"]))
            .filter(refunds::needs_attention.eq(false))
            .filter(refunds::next_query_at.le(now))
            .order(refunds::next_query_at.asc())
            .limit(limit)
            .select(refunds::id)
            .for_update()
            .skip_locked()
            .load(conn)?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let until = now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX);
        unseal_all(
            diesel::update(refunds::table.filter(refunds::id.eq_any(&ids)))
                .set((
                    refunds::next_query_at.eq(until),
                    refunds::queries.eq(refunds::queries + 1),
                ))
                .returning(RefundRow::as_returning())
                .get_results(conn)?,
        )
    })
}

/// Sets when the query job looks at the refund next, if it is still unsettled.
pub fn schedule(conn: &mut PgConnection, id: Uuid, at: DateTime<Utc>) -> Result<(), StorageError> {
    diesel::update(
        refunds::table
            .filter(refunds::id.eq(id))
            .filter(refunds::status.eq_any(["PENDING", "PROCESSING"])),
    )
    .set(refunds::next_query_at.eq(at))
    .execute(conn)?;
    Ok(())
}

/// Which refunds [`flag_for_attention`] may flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagIf {
    /// Only while unsettled (PENDING or PROCESSING): the query job's "outcome unknown after the
    /// last query". Its answer may be overtaken by a callback that settles the refund between
    /// the job's read and its flag; a settled refund is then left as it is.
    Unsettled,
    /// Whatever its state: a contradiction of a final state by the channel.
    Any,
}

/// Flags a refund for a person; `false` if it was flagged meanwhile, or (with
/// [`FlagIf::Unsettled`]) settled meanwhile.
pub fn flag_for_attention(
    conn: &mut PgConnection,
    id: Uuid,
    reason: &str,
    when: FlagIf,
) -> Result<bool, StorageError> {
    let mut update = diesel::update(refunds::table)
        .filter(refunds::id.eq(id))
        .filter(refunds::needs_attention.eq(false))
        .into_boxed();
    if when == FlagIf::Unsettled {
        update = update.filter(refunds::status.eq_any(["PENDING", "PROCESSING"]));
    }
    let n = update
        .set((
            refunds::needs_attention.eq(true),
            refunds::next_query_at.eq(None::<DateTime<Utc>>),
            refunds::channel_status.eq(reason),
            refunds::updated_at.eq(Utc::now()),
            refunds::version.eq(refunds::version + 1),
        ))
        .execute(conn)?;
    Ok(n == 1)
}

/// Newest first; keyset pagination on (created_at, id).
pub fn list(
    conn: &mut PgConnection,
    app: &AppId,
    f: &RefundFilter,
) -> Result<Vec<RefundRow>, StorageError> {
    let mut q = refunds::table
        .filter(refunds::app_id.eq(app.as_str()))
        .select(RefundRow::as_select())
        .into_boxed();
    if let Some(order) = f.order_id {
        q = q.filter(refunds::order_id.eq(order));
    }
    if !f.statuses.is_empty() {
        q = q.filter(refunds::status.eq_any(f.statuses.iter().map(|s| s.as_str())));
    }
    if let Some(from) = f.created_from {
        q = q.filter(refunds::created_at.ge(from));
    }
    if let Some(to) = f.created_to {
        q = q.filter(refunds::created_at.lt(to));
    }
    if let Some((at, id)) = f.after {
        q = q.filter(
            refunds::created_at
                .lt(at)
                .or(refunds::created_at.eq(at).and(refunds::id.lt(id))),
        );
    }
    unseal_all(
        q.order((refunds::created_at.desc(), refunds::id.desc()))
            .limit(f.limit)
            .load(conn)?,
    )
}

/// Unsettled refunds of one channel: how many, how many need a person, and the age in seconds
/// of the oldest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsettled {
    pub channel: Channel,
    pub count: i64,
    pub needing_attention: i64,
    pub oldest_age_secs: i64,
}

/// Unsettled refunds (PENDING or PROCESSING) per channel: one aggregate over the `refunds_due`
/// partial index's rows, run by the job on its tick, not per scrape.
pub fn unsettled_by_channel(conn: &mut PgConnection) -> Result<Vec<Unsettled>, StorageError> {
    use diesel::dsl::{count_star, sql};
    use diesel::sql_types::BigInt;
    let rows: Vec<(Channel, i64, i64, i64)> = refunds::table
        .filter(refunds::status.eq_any(["PENDING", "PROCESSING"]))
        .group_by(refunds::channel)
        .select((
            refunds::channel,
            count_star(),
            sql::<BigInt>("count(*) FILTER (WHERE needs_attention)"),
            sql::<BigInt>("coalesce(extract(epoch FROM now() - min(created_at)), 0)::bigint"),
        ))
        .load(conn)?;
    Ok(rows
        .into_iter()
        .map(
            |(channel, count, needing_attention, oldest_age_secs)| Unsettled {
                channel,
                count,
                needing_attention,
                oldest_age_secs,
            },
        )
        .collect())
}
