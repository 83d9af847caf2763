//! The transactional outbox: events appended in the transaction that made their fact true, put
//! in stream order after commit by one sequencer at a time, streamed to WatchEvents readers and
//! pushed to EventSinks by the dispatcher.
//!
//! An event belongs to an order (sequenced by `orders.event_seq`) or, when it concerns no order
//! (a reconciliation run, a discrepancy of a trade we do not know), to a stream key (sequenced by
//! `outbox_streams`). Either is its ordering key: delivery keeps each key's events in sequence.
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use uuid::Uuid;

use super::StorageError;
use super::schema::{orders, outbox_events};

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = outbox_events, check_for_backend(diesel::pg::Pg))]
pub struct OutboxRow {
    pub id: i64,
    pub event_id: Uuid,
    pub app_id: String,
    /// The order the event is about; `None` for an event of a stream key.
    pub order_id: Option<Uuid>,
    /// 1, 2, … within the event's order, or within its stream key.
    pub order_seq: i64,
    pub event_type: String,
    pub payload: Vec<u8>,
    pub created_at: DateTime<Utc>,
    pub stream_seq: Option<i64>,
    pub delivery: String,
    pub delivery_attempts: i32,
    pub next_delivery_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub delivered_at: Option<DateTime<Utc>>,
    /// The key of an event that belongs to no order (`reconciliation:WECHAT:2026-12-01`).
    pub stream_key: Option<String>,
}

/// Appends an event of `order` inside the caller's transaction. The per-order sequence number is
/// taken from `orders.event_seq` by an UPDATE, which holds the order's row lock until commit, so
/// an order's events are numbered in the order their transactions commit. `payload` encodes the
/// event from its id and sequence number.
pub fn append(
    conn: &mut PgConnection,
    app_id: &str,
    order_id: Uuid,
    event_type: &str,
    payload: impl FnOnce(Uuid, i64) -> Vec<u8>,
) -> Result<Uuid, StorageError> {
    let seq: i64 = diesel::update(orders::table.filter(orders::id.eq(order_id)))
        .set(orders::event_seq.eq(orders::event_seq + 1))
        .returning(orders::event_seq)
        .get_result(conn)?;
    let event_id = Uuid::now_v7();
    diesel::insert_into(outbox_events::table)
        .values((
            outbox_events::event_id.eq(event_id),
            outbox_events::app_id.eq(app_id),
            outbox_events::order_id.eq(order_id),
            outbox_events::order_seq.eq(seq),
            outbox_events::event_type.eq(event_type),
            outbox_events::payload.eq(payload(event_id, seq)),
            outbox_events::delivery.eq("NONE"),
        ))
        .execute(conn)?;
    Ok(event_id)
}

/// Appends an event that belongs to no order to `stream_key`, inside the caller's transaction.
/// The key's sequence comes from `outbox_streams` by an upsert that holds the key's row lock
/// until commit, so (as for an order) a key's events are numbered in commit order.
pub fn append_to_stream(
    conn: &mut PgConnection,
    app_id: &str,
    stream_key: &str,
    event_type: &str,
    payload: impl FnOnce(Uuid, i64) -> Vec<u8>,
) -> Result<Uuid, StorageError> {
    #[derive(QueryableByName)]
    struct Seq {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        event_seq: i64,
    }
    let seq: Seq = diesel::sql_query(
        "INSERT INTO outbox_streams (stream_key, event_seq) VALUES ($1, 1) \
         ON CONFLICT (stream_key) DO UPDATE SET event_seq = outbox_streams.event_seq + 1 \
         RETURNING event_seq",
    )
    .bind::<diesel::sql_types::Text, _>(stream_key)
    .get_result(conn)?;
    let event_id = Uuid::now_v7();
    diesel::insert_into(outbox_events::table)
        .values((
            outbox_events::event_id.eq(event_id),
            outbox_events::app_id.eq(app_id),
            outbox_events::stream_key.eq(stream_key),
            outbox_events::order_seq.eq(seq.event_seq),
            outbox_events::event_type.eq(event_type),
            outbox_events::payload.eq(payload(event_id, seq.event_seq)),
            outbox_events::delivery.eq("NONE"),
        ))
        .execute(conn)?;
    Ok(event_id)
}

/// Gives committed, unsequenced events their stream position, oldest first, up to `limit`, and
/// marks those of `subscribed` apps for delivery. One sequencer at a time (a transaction-scoped
/// advisory lock; the others return 0 at once), and only committed rows are visible to it, so the
/// stream order is commit order at the sequencer's granularity, never with a gap a reader could
/// skip. Returns how many were sequenced.
///
/// One statement, its own transaction (it used to be BEGIN, the lock, the UPDATE and COMMIT:
/// four round trips a pass, and the pass runs every tick). Its snapshot is taken before it
/// holds the lock, so rows the previous sequencer numbered and committed in between can still
/// look unnumbered to it: the rows are chosen `FOR UPDATE`, which re-checks `stream_seq IS
/// NULL` on the newest version of each (READ COMMITTED) and drops those already numbered, before
/// any number is drawn. A number written twice would let a reader see an event twice.
///
/// The numbered rows are a CTE (never inlined: `nextval` is volatile) joined to the table by
/// primary key, so the plan cannot depend on the estimate of unnumbered rows. That estimate is
/// about 1 whenever autovacuum last analyzed the table in steady state, and with it the earlier
/// form (the numbering subquery joined on `stream_seq IS NULL`) became a nested loop that re-ran
/// the numbering, `nextval` included, once per unnumbered row: a pass over a backlog of 12,000
/// events took 7 s instead of 25 ms (paybench G5; `the_outbox_passes_do_work_in_proportion_to_
/// their_batch_when_the_statistics_say_nothing_is_pending`).
pub fn sequence(
    conn: &mut PgConnection,
    subscribed: &[String],
    limit: i64,
) -> Result<usize, StorageError> {
    use diesel::sql_types::{Array, BigInt, Text};
    const LOCK: i64 = 0x0070_6179_6473_6571; // "paydseq"
    Ok(crate::cached!(
        "WITH lock AS (SELECT pg_try_advisory_xact_lock($3) AS ok), \
         next AS ( \
           SELECT id, nextval('outbox_stream') AS seq FROM ( \
             SELECT id FROM outbox_events WHERE stream_seq IS NULL AND (SELECT ok FROM lock) \
             ORDER BY id LIMIT $1 FOR UPDATE) o \
           ORDER BY id) \
         UPDATE outbox_events e SET \
           stream_seq = next.seq, \
           delivery = CASE WHEN e.app_id = ANY($2) THEN 'PENDING' ELSE 'NONE' END, \
           next_delivery_at = CASE WHEN e.app_id = ANY($2) THEN now() END \
         FROM next WHERE e.id = next.id",
    )
    .bind::<BigInt, _>(limit)
    .bind::<Array<Text>, _>(subscribed)
    .bind::<BigInt, _>(LOCK)
    .execute(conn)?)
}

/// The app's sequenced events after `cursor`, in stream order.
pub fn read_stream(
    conn: &mut PgConnection,
    app_id: &str,
    cursor: i64,
    limit: i64,
) -> Result<Vec<OutboxRow>, StorageError> {
    Ok(outbox_events::table
        .filter(outbox_events::app_id.eq(app_id))
        .filter(outbox_events::stream_seq.gt(cursor))
        .order(outbox_events::stream_seq.asc())
        .limit(limit)
        .select(OutboxRow::as_select())
        .load(conn)?)
}

/// Claims up to `limit` events due for delivery, for `lease`: for each ordering key (order or
/// stream key), only its earliest event still pending (so its events reach the sink in
/// sequence, one at a time), chosen
/// with `FOR UPDATE SKIP LOCKED` and moved past the lease in the same statement, so
/// dispatchers on several replicas never push one event at once and a dispatcher that dies
/// gives its claims back when the lease ends.
///
/// "Earliest pending of its key" is a correlated subquery (one index probe per candidate), not
/// `NOT EXISTS`: with the usual estimate of about one pending row, Postgres turned `NOT EXISTS`
/// into an anti-join that scanned every pending row per candidate, 0.6–1 s a claim once a sink
/// outage had left thousands pending (10 ms now).
pub fn claim_deliverable(
    conn: &mut PgConnection,
    limit: i64,
    lease: std::time::Duration,
) -> Result<Vec<OutboxRow>, StorageError> {
    let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
    // One statement: the rows it locks stay locked until it commits, which is all the claim
    // needs (a transaction around it would only add BEGIN and COMMIT round trips).
    Ok(crate::cached!(
        "WITH due AS ( \
               SELECT e.id FROM outbox_events e \
               WHERE e.delivery = 'PENDING' AND e.next_delivery_at <= now() \
                 AND e.order_seq = (SELECT min(p.order_seq) FROM outbox_events p \
                                    WHERE p.ordering_key = e.ordering_key AND p.delivery = 'PENDING') \
               ORDER BY e.next_delivery_at LIMIT $1 \
               FOR UPDATE OF e SKIP LOCKED) \
             UPDATE outbox_events e \
               SET next_delivery_at = now() + make_interval(secs => $2::double precision / 1000), \
                   delivery_attempts = delivery_attempts + 1 \
             FROM due WHERE e.id = due.id \
             RETURNING e.*",
    )
    .bind::<diesel::sql_types::BigInt, _>(limit)
    .bind::<diesel::sql_types::BigInt, _>(lease_ms)
    .load::<OutboxRowByName>(conn)?
    .into_iter()
    .map(OutboxRow::from)
    .collect())
}

/// The same row, loadable from `sql_query`.
#[derive(QueryableByName)]
#[diesel(table_name = outbox_events, check_for_backend(diesel::pg::Pg))]
struct OutboxRowByName {
    id: i64,
    event_id: Uuid,
    app_id: String,
    order_id: Option<Uuid>,
    order_seq: i64,
    event_type: String,
    payload: Vec<u8>,
    created_at: DateTime<Utc>,
    stream_seq: Option<i64>,
    delivery: String,
    delivery_attempts: i32,
    next_delivery_at: Option<DateTime<Utc>>,
    last_error: Option<String>,
    delivered_at: Option<DateTime<Utc>>,
    stream_key: Option<String>,
}

impl From<OutboxRowByName> for OutboxRow {
    fn from(r: OutboxRowByName) -> Self {
        Self {
            id: r.id,
            event_id: r.event_id,
            app_id: r.app_id,
            order_id: r.order_id,
            order_seq: r.order_seq,
            event_type: r.event_type,
            payload: r.payload,
            created_at: r.created_at,
            stream_seq: r.stream_seq,
            delivery: r.delivery,
            delivery_attempts: r.delivery_attempts,
            next_delivery_at: r.next_delivery_at,
            last_error: r.last_error,
            delivered_at: r.delivered_at,
            stream_key: r.stream_key,
        }
    }
}

/// Every `delivery` but `PENDING` (the column's CHECK allows four values). The delivery marks
/// guard with "none of these" rather than `= 'PENDING'`: they name their rows by primary key,
/// and `= 'PENDING'` lets the planner prefer the partial indexes on pending rows, which it
/// believes hold about one row and then scans whole, every pending row on every pass.
const NOT_PENDING: [&str; 3] = ["NONE", "DELIVERED", "DEAD"];

/// Marks delivered events (one statement for a batch; none for an empty one).
pub fn mark_delivered(conn: &mut PgConnection, ids: &[i64]) -> Result<usize, StorageError> {
    if ids.is_empty() {
        return Ok(0);
    }
    Ok(diesel::update(
        outbox_events::table
            .filter(outbox_events::id.eq_any(ids))
            .filter(outbox_events::delivery.ne_all(NOT_PENDING)),
    )
    .set((
        outbox_events::delivery.eq("DELIVERED"),
        outbox_events::delivered_at.eq(Utc::now()),
        outbox_events::next_delivery_at.eq(None::<DateTime<Utc>>),
        outbox_events::last_error.eq(None::<String>),
    ))
    .execute(conn)?)
}

/// A failed delivery: retried at `retry_at`, or dead-lettered when `None`.
#[derive(Debug, Clone)]
pub struct Failed {
    pub id: i64,
    pub error: String,
    pub retry_at: Option<DateTime<Utc>>,
}

/// Records a pass's failed deliveries in one statement. (One statement per event made a pass
/// against a sink that is down cost a commit per event: a second for 256 of them, while the
/// backlog behind them waited for the same loop to sequence it.)
pub fn mark_failed(conn: &mut PgConnection, failed: &[Failed]) -> Result<usize, StorageError> {
    use diesel::sql_types::{Array, BigInt, Nullable, Text, Timestamptz};
    if failed.is_empty() {
        return Ok(0);
    }
    let ids: Vec<i64> = failed.iter().map(|f| f.id).collect();
    let errors: Vec<&str> = failed.iter().map(|f| f.error.as_str()).collect();
    let retry_at: Vec<Option<DateTime<Utc>>> = failed.iter().map(|f| f.retry_at).collect();
    Ok(crate::cached!(
        "UPDATE outbox_events e SET \
           delivery = CASE WHEN f.retry_at IS NULL THEN 'DEAD' ELSE 'PENDING' END, \
           next_delivery_at = f.retry_at, last_error = f.error \
         FROM unnest($1::int8[], $2::text[], $3::timestamptz[]) AS f(id, error, retry_at) \
         WHERE e.id = f.id AND e.delivery <> ALL($4)"
    )
    .bind::<Array<BigInt>, _>(ids)
    .bind::<Array<Text>, _>(errors)
    .bind::<Array<Nullable<Timestamptz>>, _>(retry_at)
    .bind::<Array<Text>, _>(&NOT_PENDING[..])
    .execute(conn)?)
}

/// Puts the app's dead-lettered events (all, or those named) back into delivery.
pub fn redeliver(
    conn: &mut PgConnection,
    app_id: &str,
    event_ids: &[Uuid],
) -> Result<usize, StorageError> {
    let mut q = diesel::update(outbox_events::table)
        .filter(outbox_events::app_id.eq(app_id))
        .filter(outbox_events::delivery.eq("DEAD"))
        .into_boxed();
    if !event_ids.is_empty() {
        q = q.filter(outbox_events::event_id.eq_any(event_ids));
    }
    Ok(q.set((
        outbox_events::delivery.eq("PENDING"),
        outbox_events::delivery_attempts.eq(0),
        outbox_events::next_delivery_at.eq(Utc::now()),
    ))
    .execute(conn)?)
}

/// Backlog figures for the gauges: (unsequenced, pending delivery, dead, age in seconds of the
/// oldest pending delivery).
pub fn backlog(conn: &mut PgConnection) -> Result<(i64, i64, i64, i64), StorageError> {
    #[derive(QueryableByName)]
    struct B {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        unsequenced: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        pending: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        dead: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        oldest: i64,
    }
    let b: B = diesel::sql_query(
        "SELECT (SELECT count(*) FROM outbox_events WHERE stream_seq IS NULL) AS unsequenced, \
                (SELECT count(*) FROM outbox_events WHERE delivery = 'PENDING') AS pending, \
                (SELECT count(*) FROM outbox_events WHERE delivery = 'DEAD') AS dead, \
                coalesce((SELECT extract(epoch FROM now() - min(created_at))::bigint \
                          FROM outbox_events WHERE delivery = 'PENDING'), 0) AS oldest",
    )
    .get_result(conn)?;
    Ok((b.unsequenced, b.pending, b.dead, b.oldest))
}
