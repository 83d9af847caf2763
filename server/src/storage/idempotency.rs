//! Idempotency keys, Stripe-style. The key row is written in the same transaction as the business
//! change it guards, so either both commit or neither does; a concurrent request with the same key
//! waits on the primary key until the first commits, then replays its response.
use std::time::Duration;

use diesel::prelude::*;
use diesel::sql_types::{Bytea, Interval, Text};

use super::StorageError;
use super::schema::idempotency_keys;

pub use crate::domain::KeyClaim;

#[derive(Debug, PartialEq, Eq)]
pub enum Claimed {
    /// The key is new (or its previous use has expired): do the work, then [`store_response`].
    Fresh,
    /// The same request was already answered: send this encoded response again.
    Replay(Vec<u8>),
}

#[derive(Debug, thiserror::Error)]
pub enum IdempotencyError {
    #[error("idempotency key was already used with different parameters")]
    Mismatch,
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<diesel::result::Error> for IdempotencyError {
    fn from(e: diesel::result::Error) -> Self {
        IdempotencyError::Storage(e.into())
    }
}

fn interval(d: Duration) -> diesel::pg::data_types::PgInterval {
    diesel::pg::data_types::PgInterval::from_microseconds(
        i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
    )
}

/// Claims `claim.key` inside the caller's transaction. One round trip when the key is new: an
/// expired row is taken over by the same upsert.
pub fn claim(
    conn: &mut PgConnection,
    claim: &KeyClaim,
    retention: Duration,
) -> Result<Claimed, IdempotencyError> {
    let fresh = diesel::sql_query(
        "INSERT INTO idempotency_keys (app_id, idem_key, method, fingerprint, response, created_at) \
         VALUES ($1, $2, $3, $4, NULL, now()) \
         ON CONFLICT (app_id, idem_key) DO UPDATE \
           SET method = EXCLUDED.method, fingerprint = EXCLUDED.fingerprint, response = NULL, created_at = now() \
           WHERE idempotency_keys.created_at < now() - $5",
    )
    .bind::<Text, _>(claim.app.as_str())
    .bind::<Text, _>(claim.key.as_str())
    .bind::<Text, _>(claim.method)
    .bind::<Bytea, _>(&claim.fingerprint[..])
    .bind::<Interval, _>(interval(retention))
    .execute(conn)?;
    if fresh == 1 {
        return Ok(Claimed::Fresh);
    }
    let (method, fingerprint, response): (String, Vec<u8>, Option<Vec<u8>>) =
        idempotency_keys::table
            .filter(idempotency_keys::app_id.eq(claim.app.as_str()))
            .filter(idempotency_keys::idem_key.eq(claim.key.as_str()))
            .select((
                idempotency_keys::method,
                idempotency_keys::fingerprint,
                idempotency_keys::response,
            ))
            .first(conn)?;
    if method != claim.method || fingerprint != claim.fingerprint {
        return Err(IdempotencyError::Mismatch);
    }
    // A committed row always has its response: it is stored in the transaction that claimed it.
    response.map(Claimed::Replay).ok_or_else(|| {
        StorageError::Corrupt("idempotency key committed without a response".into()).into()
    })
}

/// Looks a key up without claiming it: the stored response when the same request was already
/// answered. For calls whose work spans several transactions (Pay), which claim at the end.
pub fn lookup(
    conn: &mut PgConnection,
    claim: &KeyClaim,
    retention: Duration,
) -> Result<Option<Vec<u8>>, IdempotencyError> {
    let row: Option<(String, Vec<u8>, Option<Vec<u8>>)> = idempotency_keys::table
        .filter(idempotency_keys::app_id.eq(claim.app.as_str()))
        .filter(idempotency_keys::idem_key.eq(claim.key.as_str()))
        .filter(idempotency_keys::created_at.gt(chrono::Utc::now()
            - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX)))
        .select((
            idempotency_keys::method,
            idempotency_keys::fingerprint,
            idempotency_keys::response,
        ))
        .first(conn)
        .optional()?;
    match row {
        None => Ok(None),
        Some((method, fp, _)) if method != claim.method || fp != claim.fingerprint => {
            Err(IdempotencyError::Mismatch)
        }
        Some((_, _, response)) => Ok(response),
    }
}

/// Stores the response of a [`Claimed::Fresh`] request, in the same transaction.
pub fn store_response(
    conn: &mut PgConnection,
    claim: &KeyClaim,
    response: &[u8],
) -> Result<(), StorageError> {
    diesel::update(
        idempotency_keys::table
            .filter(idempotency_keys::app_id.eq(claim.app.as_str()))
            .filter(idempotency_keys::idem_key.eq(claim.key.as_str())),
    )
    .set(idempotency_keys::response.eq(response))
    .execute(conn)?;
    Ok(())
}

/// Deletes up to `batch` keys older than `retention`; returns how many went. Batched so a large
/// backlog never holds long locks.
pub fn purge_expired(
    conn: &mut PgConnection,
    retention: Duration,
    batch: i64,
) -> Result<usize, StorageError> {
    Ok(diesel::sql_query(
        "DELETE FROM idempotency_keys WHERE ctid IN \
           (SELECT ctid FROM idempotency_keys WHERE created_at < now() - $1 LIMIT $2)",
    )
    .bind::<Interval, _>(interval(retention))
    .bind::<diesel::sql_types::BigInt, _>(batch)
    .execute(conn)?)
}
