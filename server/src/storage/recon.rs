//! Reconciliation storage: runs, the staged statement lines of a run, and discrepancies.
//!
//! The comparison itself is a handful of set queries (anti-joins both ways) over the staged lines
//! and the day's attempts and refunds, so payd holds one page of a statement at a time and never
//! a day.
use chrono::{DateTime, NaiveDate, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Date, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use uuid::Uuid;

use super::StorageError;

#[derive(Debug, Clone, QueryableByName)]
pub struct RunRow {
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    #[diesel(sql_type = Text)]
    pub channel: String,
    #[diesel(sql_type = Date)]
    pub day: NaiveDate,
    #[diesel(sql_type = Text)]
    pub status: String,
    #[diesel(sql_type = Text)]
    pub requested_by: String,
    #[diesel(sql_type = Timestamptz)]
    pub started_at: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub finished_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = BigInt)]
    pub lines_read: i64,
    #[diesel(sql_type = BigInt)]
    pub discrepancies: i64,
    #[diesel(sql_type = BigInt)]
    pub repaired: i64,
    #[diesel(sql_type = Nullable<BigInt>)]
    pub payment_count: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    pub refund_count: Option<i64>,
    #[diesel(sql_type = Nullable<Text>)]
    pub error: Option<String>,
    #[diesel(sql_type = BigInt)]
    pub expected_lines: i64,
}

#[derive(Debug, Clone, QueryableByName)]
pub struct DiscrepancyRow {
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    #[diesel(sql_type = SqlUuid)]
    pub run_id: Uuid,
    #[diesel(sql_type = Text)]
    pub channel: String,
    #[diesel(sql_type = Date)]
    pub day: NaiveDate,
    #[diesel(sql_type = Text)]
    pub kind: String,
    #[diesel(sql_type = Text)]
    pub out_trade_no: String,
    #[diesel(sql_type = Text)]
    pub out_refund_no: String,
    #[diesel(sql_type = Nullable<BigInt>)]
    pub channel_amount_minor: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    pub local_amount_minor: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    pub source_line: Option<i64>,
    #[diesel(sql_type = Text)]
    pub status: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub resolution: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub note: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub resolved_by: Option<String>,
    #[diesel(sql_type = Timestamptz)]
    pub created_at: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub resolved_at: Option<DateTime<Utc>>,
    /// The note, sealed (see [`crate::crypto`]); [`DiscrepancyRow::note`] holds it opened.
    #[diesel(sql_type = Nullable<Text>)]
    pub note_sealed: Option<String>,
}

/// Associated data of a discrepancy's sealed note: it opens only in its own row.
fn note_aad(id: Uuid) -> Vec<u8> {
    crate::crypto::aad("recon_discrepancies", "note", &id)
}

/// Opens the sealed note into `note` (a legacy clear note stays until `payd reencrypt`).
fn unseal_note(mut d: DiscrepancyRow) -> Result<DiscrepancyRow, StorageError> {
    if let Some(sealed) = &d.note_sealed {
        d.note = Some(
            crate::crypto::keys()
                .open(&note_aad(d.id), sealed)
                .map_err(|e| StorageError::Corrupt(format!("discrepancy {}: note: {e}", d.id)))?,
        );
    }
    Ok(d)
}

#[derive(QueryableByName)]
struct NoteRow {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = Nullable<Text>)]
    note: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    note_sealed: Option<String>,
}

/// Seals notes written in clear or under an older key, in id order after `after`, `limit` at
/// a time (see `refunds::reseal_batch`: one transaction per batch, idempotent, resumable).
pub fn reseal_notes_batch(
    conn: &mut PgConnection,
    after: Option<Uuid>,
    limit: i64,
) -> Result<(Option<Uuid>, usize), StorageError> {
    let keys = crate::crypto::keys();
    conn.transaction(|conn| {
        let rows: Vec<NoteRow> = diesel::sql_query(
            "SELECT id, note, note_sealed FROM recon_discrepancies \
             WHERE ($1::uuid IS NULL OR id > $1) ORDER BY id LIMIT $2 FOR UPDATE",
        )
        .bind::<Nullable<SqlUuid>, _>(after)
        .bind::<BigInt, _>(limit)
        .load(conn)?;
        let mut changed = 0;
        for r in &rows {
            let plain = match (&r.note_sealed, &r.note) {
                (Some(s), _) if crate::crypto::key_id(s) == Some(keys.active_id()) => continue,
                (Some(s), _) => keys.open(&note_aad(r.id), s).map_err(|e| {
                    StorageError::Corrupt(format!("discrepancy {}: note: {e}", r.id))
                })?,
                (None, Some(n)) if !n.is_empty() => n.clone(),
                (None, _) => continue,
            };
            let sealed = keys
                .seal(&note_aad(r.id), &plain)
                .map_err(|e| StorageError::Corrupt(e.to_string()))?;
            diesel::sql_query(
                "UPDATE recon_discrepancies SET note = NULL, note_sealed = $2 WHERE id = $1",
            )
            .bind::<SqlUuid, _>(r.id)
            .bind::<Text, _>(sealed)
            .execute(conn)?;
            changed += 1;
        }
        Ok((rows.last().map(|r| r.id), changed))
    })
}

const RUN_COLS: &str = "id, channel, day, status, requested_by, started_at, finished_at, \
    lines_read, discrepancies, repaired, payment_count, refund_count, error, expected_lines";
const DISC_COLS: &str = "id, run_id, channel, day, kind, out_trade_no, out_refund_no, \
    channel_amount_minor, local_amount_minor, source_line, status, resolution, note, resolved_by, \
    created_at, resolved_at, note_sealed";

/// A RUNNING run whose heartbeat (written with every staged page) is older than this is taken
/// to be abandoned.
pub const ABANDONED_AFTER_SECS: i32 = 600;

/// Starts a run of (channel, day), or returns the one RUNNING already (`true`).
///
/// Serialised per (channel, day) by a transaction-scoped advisory lock, and guarded by the partial
/// unique index `recon_runs_one_running` whatever happens: two replicas never run a day at once.
pub fn start_run(
    conn: &mut PgConnection,
    channel: &str,
    day: NaiveDate,
    requested_by: &str,
) -> Result<(RunRow, bool), StorageError> {
    conn.transaction(|conn| {
        diesel::sql_query("SELECT pg_advisory_xact_lock(hashtext('recon:' || $1 || ':' || $2::text))")
            .bind::<Text, _>(channel)
            .bind::<Date, _>(day)
            .execute(conn)?;
        // A run that stopped making progress (its replica died mid-statement) is taken over:
        // it ends FAILED with its staged lines dropped, so the day is not blocked for good.
        // Should its replica come back, what it records is keyed per day and kind and cannot
        // double anything.
        diesel::sql_query(
            "WITH abandoned AS ( \
               UPDATE recon_runs SET status = 'FAILED', finished_at = now(), \
                 error = 'abandoned: no progress for ' || $3 || ' seconds; taken over by a new run' \
               WHERE channel = $1 AND day = $2 AND status = 'RUNNING' \
                 AND heartbeat_at < now() - make_interval(secs => $3) RETURNING id) \
             , lines AS (DELETE FROM recon_statement_lines WHERE run_id IN (SELECT id FROM abandoned)) \
             DELETE FROM recon_repair_queue WHERE run_id IN (SELECT id FROM abandoned)",
        )
        .bind::<Text, _>(channel)
        .bind::<Date, _>(day)
        .bind::<diesel::sql_types::Integer, _>(ABANDONED_AFTER_SECS)
        .execute(conn)?;
        let running: Option<RunRow> = diesel::sql_query(format!(
            "SELECT {RUN_COLS} FROM recon_runs WHERE channel = $1 AND day = $2 AND status = 'RUNNING'"
        ))
        .bind::<Text, _>(channel)
        .bind::<Date, _>(day)
        .get_result(conn)
        .optional()?;
        if let Some(r) = running {
            return Ok((r, true));
        }
        // The day's local successes are what the statement should list: the progress bar's
        // length (two index range counts, on the indexes the comparison uses anyway).
        let row: RunRow = diesel::sql_query(format!(
            "INSERT INTO recon_runs (id, channel, day, status, requested_by, expected_lines) \
             VALUES ($1, $2, $3, 'RUNNING', $4, \
               (SELECT count(*) FROM payment_attempts a WHERE a.channel = $2 \
                  AND a.status = 'SUCCEEDED' AND a.succeeded_at >= {DAY_START} \
                  AND a.succeeded_at < {DAY_END}) + \
               (SELECT count(*) FROM refunds r WHERE r.channel = $2 AND r.status = 'SUCCEEDED' \
                  AND r.succeeded_at >= {DAY_START} AND r.succeeded_at < {DAY_END})) \
             RETURNING {RUN_COLS}"
        ))
        .bind::<SqlUuid, _>(Uuid::new_v4())
        .bind::<Text, _>(channel)
        .bind::<Date, _>(day)
        .bind::<Text, _>(requested_by)
        .get_result(conn)?;
        Ok((row, false))
    })
}

pub fn get_run(conn: &mut PgConnection, id: Uuid) -> Result<Option<RunRow>, StorageError> {
    Ok(
        diesel::sql_query(format!("SELECT {RUN_COLS} FROM recon_runs WHERE id = $1"))
            .bind::<SqlUuid, _>(id)
            .get_result(conn)
            .optional()?,
    )
}

/// One staged statement line: the row COPY writes into `recon_statement_lines`.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = super::schema::recon_statement_lines, treat_none_as_default_value = false)]
pub struct StagedLine {
    pub run_id: Uuid,
    pub source_line: i64,
    /// `PAYMENT` or `REFUND`.
    pub kind: &'static str,
    pub out_trade_no: String,
    pub out_refund_no: String,
    pub channel_trade_no: String,
    /// `SUCCEEDED`, `CLOSED`, `FAILED` or `OTHER`.
    pub state: &'static str,
    pub amount_minor: i64,
    pub currency: String,
    pub at: Option<DateTime<Utc>>,
}

/// Stages a batch of lines of run `run` and counts them into the run's progress.
///
/// Binary COPY, one round trip for the data: measured at 10^6 lines it costs a fraction of the
/// `INSERT … SELECT unnest(…)` of ten bound arrays it replaced (see docs/bench/reconciliation.md).
pub fn stage_page(
    conn: &mut PgConnection,
    run: Uuid,
    lines: &[StagedLine],
) -> Result<(), StorageError> {
    use super::schema::recon_statement_lines as l;
    conn.transaction(|conn| {
        diesel::copy_from(l::table)
            .from_insertable(lines)
            .execute(conn)?;
        diesel::sql_query(
            "UPDATE recon_runs SET lines_read = lines_read + $2, heartbeat_at = now() WHERE id = $1",
        )
        .bind::<SqlUuid, _>(run)
        .bind::<BigInt, _>(i64::try_from(lines.len()).unwrap_or(i64::MAX))
        .execute(conn)?;
        Ok(())
    })
}

/// Deletes a run's staged lines and repair queue (its scratch).
fn drop_scratch(conn: &mut PgConnection, run: Uuid) -> Result<(), StorageError> {
    diesel::sql_query(
        "WITH q AS (DELETE FROM recon_repair_queue WHERE run_id = $1) \
         DELETE FROM recon_statement_lines WHERE run_id = $1",
    )
    .bind::<SqlUuid, _>(run)
    .execute(conn)?;
    Ok(())
}

/// Ends a run FAILED: its staged lines are dropped and nothing else is recorded.
pub fn fail_run(conn: &mut PgConnection, run: Uuid, error: &str) -> Result<(), StorageError> {
    conn.transaction(|conn| {
        drop_scratch(conn, run)?;
        diesel::sql_query(
            "UPDATE recon_runs SET status = 'FAILED', error = $2, finished_at = now() \
             WHERE id = $1 AND status = 'RUNNING'",
        )
        .bind::<SqlUuid, _>(run)
        .bind::<Text, _>(error)
        .execute(conn)?;
        Ok(())
    })
}

/// The day's bounds in Beijing time, as SQL over `$3` (the day).
const DAY_START: &str = "(($3::date)::timestamp AT TIME ZONE 'Asia/Shanghai')";
const DAY_END: &str = "((($3::date) + 1)::timestamp AT TIME ZONE 'Asia/Shanghai')";

/// Records every discrepancy that needs no repair attempt, in one transaction; returns the ones
/// that are new (a re-run of a day returns nothing for what is known already), for their events.
///
/// `$1` run, `$2` channel, `$3` day.
pub fn compare(
    conn: &mut PgConnection,
    run: Uuid,
    channel: &str,
    day: NaiveDate,
) -> Result<Vec<DiscrepancyRow>, StorageError> {
    let insert = "INSERT INTO recon_discrepancies (id, run_id, channel, day, kind, out_trade_no, \
        out_refund_no, channel_amount_minor, local_amount_minor, source_line, status) ";
    let tail = format!(
        " ON CONFLICT ON CONSTRAINT recon_discrepancies_once DO NOTHING RETURNING {DISC_COLS}"
    );
    let lines = "recon_statement_lines l WHERE l.run_id = $1";
    let queries = [
        // The three kinds that start from the statement's payment successes, from one join of
        // them with our attempts (materialized once, instead of a join per kind): a trade we do
        // not know at all (MISSING_LOCALLY), a trade we know for another amount
        // (AMOUNT_MISMATCH), two successes for one order, one trade twice or two trades of the
        // order (DUPLICATE).
        //
        // The same join queues the repair candidates (a trade we know, same amount, not
        // SUCCEEDED here; the first line of a trade listed twice), for `repair_candidates`.
        format!(
            "WITH j AS MATERIALIZED ( \
               SELECT l.out_trade_no, l.amount_minor, l.source_line, l.channel_trade_no, \
                      l.currency, l.at, a.order_id, a.amount_minor AS local, \
                      a.status AS local_status \
               FROM recon_statement_lines l LEFT JOIN payment_attempts a \
                 ON a.out_trade_no = l.out_trade_no AND a.channel = $2 \
               WHERE l.run_id = $1 AND l.kind = 'PAYMENT' AND l.state = 'SUCCEEDED'), \
             dup AS (SELECT order_id FROM j WHERE order_id IS NOT NULL \
                     GROUP BY order_id HAVING count(*) > 1), \
             queued AS (INSERT INTO recon_repair_queue (run_id, out_trade_no, channel_trade_no, \
                 amount_minor, currency, at, source_line, local_amount_minor) \
               SELECT DISTINCT ON (out_trade_no) $1, out_trade_no, channel_trade_no, amount_minor, \
                 currency, at, source_line, local FROM j \
               WHERE order_id IS NOT NULL AND local_status <> 'SUCCEEDED' AND local = amount_minor \
               ORDER BY out_trade_no, source_line ON CONFLICT DO NOTHING) \
             {insert} \
             SELECT gen_random_uuid(), $1, $2, $3, 'MISSING_LOCALLY', out_trade_no, '', \
               amount_minor, NULL::bigint, source_line, 'OPEN' FROM j WHERE order_id IS NULL \
             UNION ALL SELECT gen_random_uuid(), $1, $2, $3, 'AMOUNT_MISMATCH', out_trade_no, '', \
               amount_minor, local, source_line, 'OPEN' FROM j \
               WHERE order_id IS NOT NULL AND local <> amount_minor \
             UNION ALL SELECT gen_random_uuid(), $1, $2, $3, 'DUPLICATE', out_trade_no, '', \
               amount_minor, local, source_line, 'OPEN' FROM j \
               WHERE order_id IN (SELECT order_id FROM dup) {tail}"
        ),
        // Our success of that day the channel does not list.
        format!(
            "{insert} SELECT gen_random_uuid(), $1, $2, $3, 'MISSING_AT_CHANNEL', a.out_trade_no, '', \
             NULL, a.amount_minor, NULL, 'OPEN' FROM payment_attempts a \
             WHERE a.channel = $2 AND a.status = 'SUCCEEDED' \
             AND a.succeeded_at >= {DAY_START} AND a.succeeded_at < {DAY_END} AND NOT EXISTS \
             (SELECT 1 FROM {lines} AND l.kind = 'PAYMENT' AND l.state = 'SUCCEEDED' \
              AND l.out_trade_no = a.out_trade_no) {tail}"
        ),
        // A refund at the channel we do not know.
        format!(
            "{insert} SELECT gen_random_uuid(), $1, $2, $3, 'REFUND_MISSING_LOCALLY', l.out_trade_no, \
             l.out_refund_no, l.amount_minor, NULL, l.source_line, 'OPEN' FROM {lines} \
             AND l.kind = 'REFUND' AND l.state = 'SUCCEEDED' AND NOT EXISTS \
             (SELECT 1 FROM refunds r WHERE r.out_refund_no = l.out_refund_no AND r.channel = $2) {tail}"
        ),
        // A refund we know, not settled here (the refund follow-up job owns that transition).
        format!(
            "{insert} SELECT gen_random_uuid(), $1, $2, $3, 'REFUND_STATUS_MISMATCH', l.out_trade_no, \
             l.out_refund_no, l.amount_minor, r.amount_minor, l.source_line, 'OPEN' \
             FROM recon_statement_lines l JOIN refunds r \
               ON r.out_refund_no = l.out_refund_no AND r.channel = $2 \
             WHERE l.run_id = $1 AND l.kind = 'REFUND' AND l.state = 'SUCCEEDED' \
               AND r.status <> 'SUCCEEDED' {tail}"
        ),
        // A refund we know, for another amount.
        format!(
            "{insert} SELECT gen_random_uuid(), $1, $2, $3, 'REFUND_AMOUNT_MISMATCH', l.out_trade_no, \
             l.out_refund_no, l.amount_minor, r.amount_minor, l.source_line, 'OPEN' \
             FROM recon_statement_lines l JOIN refunds r ON r.out_refund_no = l.out_refund_no \
             AND r.channel = $2 WHERE l.run_id = $1 AND l.kind = 'REFUND' AND l.state = 'SUCCEEDED' \
             AND r.amount_minor <> l.amount_minor {tail}"
        ),
        // Our refund of that day the channel does not list.
        format!(
            "{insert} SELECT gen_random_uuid(), $1, $2, $3, 'REFUND_MISSING_AT_CHANNEL', a.out_trade_no, \
             r.out_refund_no, NULL, r.amount_minor, NULL, 'OPEN' FROM refunds r \
             JOIN payment_attempts a ON a.id = r.attempt_id \
             WHERE r.channel = $2 AND r.status = 'SUCCEEDED' \
             AND r.succeeded_at >= {DAY_START} AND r.succeeded_at < {DAY_END} AND NOT EXISTS \
             (SELECT 1 FROM {lines} AND l.kind = 'REFUND' AND l.state = 'SUCCEEDED' \
              AND l.out_refund_no = r.out_refund_no) {tail}"
        ),
    ];
    // The staged lines were just written: without statistics the planner takes them for a few
    // rows and picks nested loops over a day of them. ANALYZE samples; it costs a fraction of a
    // second at 10^6 lines and makes the comparison hash joins.
    diesel::sql_query("ANALYZE recon_statement_lines").execute(conn)?;
    conn.transaction(|conn| {
        let mut found = Vec::new();
        for q in &queries {
            let rows: Vec<DiscrepancyRow> = diesel::sql_query(q.as_str())
                .bind::<SqlUuid, _>(run)
                .bind::<Text, _>(channel)
                .bind::<Date, _>(day)
                .load(conn)?;
            found.extend(rows);
        }
        Ok(found)
    })
}

/// A statement success for a trade we know that is not SUCCEEDED here, for the same amount.
#[derive(Debug, Clone, QueryableByName)]
pub struct RepairCandidate {
    #[diesel(sql_type = Text)]
    pub out_trade_no: String,
    #[diesel(sql_type = Text)]
    pub channel_trade_no: String,
    #[diesel(sql_type = BigInt)]
    pub amount_minor: i64,
    #[diesel(sql_type = Text)]
    pub currency: String,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub at: Option<DateTime<Utc>>,
    #[diesel(sql_type = BigInt)]
    pub source_line: i64,
    #[diesel(sql_type = BigInt)]
    pub local_amount_minor: i64,
}

/// The next `limit` repair candidates of the run's queue after `after` (keyset on out_trade_no),
/// skipping trades a discrepancy of this day already names.
pub fn repair_candidates(
    conn: &mut PgConnection,
    run: Uuid,
    channel: &str,
    day: NaiveDate,
    after: &str,
    limit: i64,
) -> Result<Vec<RepairCandidate>, StorageError> {
    // The attempt's status is read again: a callback may have settled it since the comparison.
    Ok(diesel::sql_query(
        "SELECT q.out_trade_no, q.channel_trade_no, q.amount_minor, q.currency, q.at, \
           q.source_line, q.local_amount_minor \
         FROM recon_repair_queue q JOIN payment_attempts a \
           ON a.out_trade_no = q.out_trade_no AND a.channel = $2 \
         WHERE q.run_id = $1 AND q.out_trade_no > $4 AND a.status <> 'SUCCEEDED' \
           AND NOT EXISTS (SELECT 1 FROM recon_discrepancies d WHERE d.channel = $2 AND d.day = $3 \
             AND d.kind IN ('MISSING_LOCALLY', 'STATUS_MISMATCH') AND d.out_trade_no = q.out_trade_no) \
         ORDER BY q.out_trade_no LIMIT $5",
    )
    .bind::<SqlUuid, _>(run)
    .bind::<Text, _>(channel)
    .bind::<Date, _>(day)
    .bind::<Text, _>(after)
    .bind::<BigInt, _>(limit)
    .load(conn)?)
}

/// Records what a repair attempt did: `MISSING_LOCALLY`/`REPAIRED` when the results transition
/// applied it, `STATUS_MISMATCH`/`OPEN` when it refused. Returns the row when it was new.
pub fn record_repair(
    conn: &mut PgConnection,
    run: Uuid,
    channel: &str,
    day: NaiveDate,
    c: &RepairCandidate,
    repaired: bool,
) -> Result<Option<DiscrepancyRow>, StorageError> {
    let (kind, status, resolution) = if repaired {
        (
            "MISSING_LOCALLY",
            "REPAIRED",
            Some("applied through the results transition"),
        )
    } else {
        ("STATUS_MISMATCH", "OPEN", None)
    };
    let row = diesel::sql_query(format!(
        "INSERT INTO recon_discrepancies (id, run_id, channel, day, kind, out_trade_no, \
         out_refund_no, channel_amount_minor, local_amount_minor, source_line, status, resolution, \
         resolved_by, resolved_at) VALUES (gen_random_uuid(), $1, $2, $3, $4, $5, '', $6, $7, $8, $9, \
         $10, CASE WHEN $9 = 'REPAIRED' THEN 'reconciliation' END, CASE WHEN $9 = 'REPAIRED' THEN now() END) \
         ON CONFLICT ON CONSTRAINT recon_discrepancies_once DO NOTHING RETURNING {DISC_COLS}"
    ))
    .bind::<SqlUuid, _>(run)
    .bind::<Text, _>(channel)
    .bind::<Date, _>(day)
    .bind::<Text, _>(kind)
    .bind::<Text, _>(&c.out_trade_no)
    .bind::<BigInt, _>(c.amount_minor)
    .bind::<BigInt, _>(c.local_amount_minor)
    .bind::<BigInt, _>(c.source_line)
    .bind::<Text, _>(status)
    .bind::<Nullable<Text>, _>(resolution)
    .get_result(conn)
    .optional()?;
    Ok(row)
}

/// The order a discrepancy is about, when we know the trade (by `out_trade_no`) or the refund
/// (by `out_refund_no`) on that channel; `None` for a trade we never made.
pub fn order_of(
    conn: &mut PgConnection,
    channel: &str,
    out_trade_no: &str,
    out_refund_no: &str,
) -> Result<Option<Uuid>, StorageError> {
    #[derive(QueryableByName)]
    struct O {
        #[diesel(sql_type = SqlUuid)]
        order_id: Uuid,
    }
    let o: Option<O> = diesel::sql_query(
        "SELECT order_id FROM payment_attempts WHERE channel = $1 AND out_trade_no = $2 \
         UNION ALL SELECT order_id FROM refunds WHERE channel = $1 AND out_refund_no = $3 \
         AND $3 <> '' LIMIT 1",
    )
    .bind::<Text, _>(channel)
    .bind::<Text, _>(out_trade_no)
    .bind::<Text, _>(out_refund_no)
    .get_result(conn)
    .optional()?;
    Ok(o.map(|o| o.order_id))
}

/// Ends a run COMPLETED with its counts; drops its staged lines.
pub fn complete_run(
    conn: &mut PgConnection,
    run: Uuid,
    discrepancies: i64,
    repaired: i64,
    payment_count: i64,
    refund_count: i64,
) -> Result<Option<RunRow>, StorageError> {
    conn.transaction(|conn| {
        drop_scratch(conn, run)?;
        Ok(diesel::sql_query(format!(
            "UPDATE recon_runs SET status = 'COMPLETED', finished_at = now(), discrepancies = $2, \
             repaired = $3, payment_count = $4, refund_count = $5 WHERE id = $1 AND status = 'RUNNING' \
             RETURNING {RUN_COLS}"
        ))
        .bind::<SqlUuid, _>(run)
        .bind::<BigInt, _>(discrepancies)
        .bind::<BigInt, _>(repaired)
        .bind::<BigInt, _>(payment_count)
        .bind::<BigInt, _>(refund_count)
        .get_result(conn)
        .optional()?)
    })
}

/// Filters of ListDiscrepancies (all optional, ANDed).
#[derive(Debug, Default, Clone)]
pub struct DiscrepancyFilter {
    pub run_id: Option<Uuid>,
    pub channel: Option<String>,
    pub day: Option<NaiveDate>,
    pub kind: Option<String>,
    pub status: Option<String>,
    /// Keyset: strictly older than (created_at, id).
    pub before: Option<(DateTime<Utc>, Uuid)>,
}

pub fn list_discrepancies(
    conn: &mut PgConnection,
    f: &DiscrepancyFilter,
    limit: i64,
) -> Result<Vec<DiscrepancyRow>, StorageError> {
    let (before_at, before_id) = f.before.unzip();
    diesel::sql_query(format!(
        "SELECT {DISC_COLS} FROM recon_discrepancies WHERE \
         ($1::uuid IS NULL OR run_id = $1) AND ($2::text IS NULL OR channel = $2) \
         AND ($3::date IS NULL OR day = $3) AND ($4::text IS NULL OR kind = $4) \
         AND ($5::text IS NULL OR status = $5) \
         AND ($6::timestamptz IS NULL OR (created_at, id) < ($6, $7)) \
         ORDER BY created_at DESC, id DESC LIMIT $8"
    ))
    .bind::<Nullable<SqlUuid>, _>(f.run_id)
    .bind::<Nullable<Text>, _>(f.channel.as_deref())
    .bind::<Nullable<Date>, _>(f.day)
    .bind::<Nullable<Text>, _>(f.kind.as_deref())
    .bind::<Nullable<Text>, _>(f.status.as_deref())
    .bind::<Nullable<Timestamptz>, _>(before_at)
    .bind::<Nullable<SqlUuid>, _>(before_id)
    .bind::<BigInt, _>(limit)
    .load::<DiscrepancyRow>(conn)?
    .into_iter()
    .map(unseal_note)
    .collect()
}

pub fn get_discrepancy(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<Option<DiscrepancyRow>, StorageError> {
    diesel::sql_query(format!(
        "SELECT {DISC_COLS} FROM recon_discrepancies WHERE id = $1"
    ))
    .bind::<SqlUuid, _>(id)
    .get_result(conn)
    .optional()?
    .map(unseal_note)
    .transpose()
}

/// Resolves an OPEN discrepancy; `None` when it is not OPEN (or does not exist).
pub fn resolve(
    conn: &mut PgConnection,
    id: Uuid,
    resolution: &str,
    note: &str,
    by: &str,
) -> Result<Option<DiscrepancyRow>, StorageError> {
    // The operator's note may name people (a payer who phoned): it is stored sealed only.
    let sealed = (!note.is_empty())
        .then(|| crate::crypto::keys().seal(&note_aad(id), note))
        .transpose()
        .map_err(|e| StorageError::Corrupt(e.to_string()))?;
    diesel::sql_query(format!(
        "UPDATE recon_discrepancies SET status = 'RESOLVED', resolution = $2, note = NULL, \
         note_sealed = $3, resolved_by = $4, resolved_at = now() \
         WHERE id = $1 AND status = 'OPEN' RETURNING {DISC_COLS}"
    ))
    .bind::<SqlUuid, _>(id)
    .bind::<Text, _>(resolution)
    .bind::<Nullable<Text>, _>(sealed)
    .bind::<Text, _>(by)
    .get_result(conn)
    .optional()?
    .map(unseal_note)
    .transpose()
}

#[derive(QueryableByName)]
struct Exists {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    e: bool,
}

/// Whether (channel, day) has a COMPLETED run (the scheduler leaves such a day alone).
pub fn completed_exists(
    conn: &mut PgConnection,
    channel: &str,
    day: NaiveDate,
) -> Result<bool, StorageError> {
    let r: Exists = diesel::sql_query(
        "SELECT EXISTS (SELECT 1 FROM recon_runs WHERE channel = $1 AND day = $2 \
         AND status = 'COMPLETED') AS e",
    )
    .bind::<Text, _>(channel)
    .bind::<Date, _>(day)
    .get_result(conn)?;
    Ok(r.e)
}
