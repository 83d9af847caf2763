//! Postgres access: the connection pool, migrations, and one repository module per aggregate.
//! Repository functions take `&mut PgConnection` so that a use case can compose several of them
//! inside one transaction.
pub mod attempts;
pub mod audit;
pub mod events;
pub mod idempotency;
pub mod orders;
pub mod outbox;
pub mod recon;
pub mod refunds;
pub mod schema;
pub mod sql;
pub mod steps;
mod text_enums;
pub mod transitions;

use std::time::Duration;

use diesel::PgConnection;
use diesel::r2d2::{ConnectionManager, Pool, PooledConnection};
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

/// Every migration under the repository's `migrations/`, compiled into the binary.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations");

pub type PgPool = Pool<ConnectionManager<PgConnection>>;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// No connection could be had in time: the database is down or saturated.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Query(#[from] DieselError),
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error("migration failed: {0}")]
    Migration(String),
}

impl StorageError {
    /// Whether the failure says nothing about the data (connection lost), so a retry may work.
    pub fn is_transient(&self) -> bool {
        match self {
            StorageError::Unavailable(_) => true,
            StorageError::Query(DieselError::DatabaseError(kind, _)) => matches!(
                kind,
                DatabaseErrorKind::ClosedConnection
                    | DatabaseErrorKind::UnableToSendCommand
                    | DatabaseErrorKind::SerializationFailure
            ),
            StorageError::Query(_) | StorageError::Corrupt(_) | StorageError::Migration(_) => false,
        }
    }
}

/// How payd sets up each connection of its pool when the connection is made.
#[derive(Debug, Default)]
pub struct SessionSetup {
    /// Counts committed order transitions (see [`transitions`]).
    pub transitions: Option<prometheus::IntCounterVec>,
    /// `idle_in_transaction_session_timeout`: Postgres ends a session of this process that sits
    /// inside a transaction doing nothing for this long. payd never waits on anything but
    /// Postgres inside a transaction (no channel call, no Redis), so such a session belongs to
    /// a replica that was stopped (SIGSTOP, a frozen VM) or starved; ended, it releases the row
    /// locks it held, and the other replicas' calls on those orders go on instead of waiting
    /// until their callers give up (found by the fault suite's F7). Its transaction rolls back
    /// whole; the replica, should it wake, gets a closed connection (UNAVAILABLE, retryable).
    pub idle_in_transaction: Option<Duration>,
}

impl diesel::r2d2::CustomizeConnection<PgConnection, diesel::r2d2::Error> for SessionSetup {
    fn on_acquire(&self, conn: &mut PgConnection) -> Result<(), diesel::r2d2::Error> {
        use diesel::connection::SimpleConnection as _;
        if let Some(t) = self.idle_in_transaction {
            conn.batch_execute(&format!(
                "SET idle_in_transaction_session_timeout = {}",
                t.as_millis().max(1)
            ))
            .map_err(diesel::r2d2::Error::QueryError)?;
        }
        if let Some(counter) = &self.transitions {
            use diesel::Connection as _;
            conn.set_instrumentation(transitions::CountCommitted::new(counter.clone()));
        }
        Ok(())
    }
}

/// The pool plus the one way to use it from async code.
#[derive(Clone)]
pub struct Db {
    pool: PgPool,
}

impl Db {
    /// Builds the pool without connecting eagerly, so `payd` starts while Postgres is still coming
    /// up; requests fail with UNAVAILABLE until it answers.
    pub fn connect_lazy(url: &str, size: u32, timeout: Duration) -> Result<Self, StorageError> {
        Self::connect_lazy_with(url, size, timeout, SessionSetup::default())
    }

    /// [`Db::connect_lazy`] with every connection set up by `session` when it is made.
    pub fn connect_lazy_with(
        url: &str,
        size: u32,
        timeout: Duration,
        session: SessionSetup,
    ) -> Result<Self, StorageError> {
        let pool = Pool::builder()
            .max_size(size)
            .min_idle(Some(0))
            .connection_timeout(timeout)
            .test_on_check_out(false)
            .connection_customizer(Box::new(session))
            .build_unchecked(ConnectionManager::new(url));
        Ok(Self { pool })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    fn conn(&self) -> Result<PooledConnection<ConnectionManager<PgConnection>>, StorageError> {
        self.pool
            .get()
            .map_err(|e| StorageError::Unavailable(e.to_string()))
    }

    /// Runs blocking diesel code on the blocking pool. Everything that touches Postgres goes
    /// through here, so no async worker thread ever blocks on the database.
    pub async fn run<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut PgConnection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StorageError> + Send + 'static,
    {
        let db = self.clone();
        match tokio::task::spawn_blocking(move || {
            let mut conn = db.conn()?;
            f(&mut conn)
        })
        .await
        {
            Ok(r) => r,
            Err(join) => Err(StorageError::Corrupt(format!("database task failed: {join}")).into()),
        }
    }

    /// Applies pending migrations; safe to run from several processes at once.
    pub async fn migrate(&self) -> Result<usize, StorageError> {
        self.run(run_migrations).await
    }
}

/// Applies pending migrations under a Postgres advisory lock, so replicas starting together do not
/// race each other through the same DDL.
pub fn run_migrations(conn: &mut PgConnection) -> Result<usize, StorageError> {
    use diesel::RunQueryDsl;
    const LOCK: i64 = 0x0070_6179_646d_6967; // "paydmig"
    diesel::sql_query(format!("SELECT pg_advisory_lock({LOCK})")).execute(conn)?;
    let result = conn
        .run_pending_migrations(MIGRATIONS)
        .map(|v| v.len())
        .map_err(|e| StorageError::Migration(e.to_string()));
    diesel::sql_query(format!("SELECT pg_advisory_unlock({LOCK})")).execute(conn)?;
    result
}

/// First key of the worker-id advisory locks ("SFLK"); the second is the worker id.
pub const WORKER_LEASE_NAMESPACE: i32 = 0x5346_4c4b;

/// Whether `conn` still holds the advisory lock on worker id `id`: false when the lock is gone
/// or the connection is (a Postgres restart, a terminated backend, a network cut).
pub fn worker_lease_held(conn: &mut PgConnection, id: u16) -> bool {
    use diesel::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Held {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        held: bool,
    }
    diesel::sql_query(
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND classid = $1::oid \
         AND objid = $2::oid AND objsubid = 2 AND pid = pg_backend_pid() AND granted) AS held",
    )
    .bind::<diesel::sql_types::BigInt, _>(i64::from(WORKER_LEASE_NAMESPACE))
    .bind::<diesel::sql_types::BigInt, _>(i64::from(id))
    .get_result::<Held>(conn)
    .map(|h| h.held)
    .unwrap_or(false)
}

/// Leases a snowflake worker id: the first free one of 0..=1023, held as a session advisory lock
/// by a dedicated connection for as long as the returned connection lives. A crashed process's
/// lease ends with its connection, so ids are reused only when their holder is gone.
///
/// # Errors
/// When Postgres is unreachable or all 1024 ids are taken.
pub fn lease_worker_id(url: &str) -> Result<(PgConnection, u16), StorageError> {
    use diesel::{Connection, RunQueryDsl};
    #[derive(diesel::QueryableByName)]
    struct Got {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        ok: bool,
    }
    let mut conn =
        PgConnection::establish(url).map_err(|e| StorageError::Unavailable(e.to_string()))?;
    for id in 0..=1023u16 {
        let got: Got = diesel::sql_query("SELECT pg_try_advisory_lock($1, $2) AS ok")
            .bind::<diesel::sql_types::Integer, _>(WORKER_LEASE_NAMESPACE)
            .bind::<diesel::sql_types::Integer, _>(i32::from(id))
            .get_result(&mut conn)?;
        if got.ok {
            return Ok((conn, id));
        }
    }
    Err(StorageError::Unavailable(
        "all 1024 snowflake worker ids are leased".into(),
    ))
}

/// Re-encrypts every sealed field under the active key and seals legacy clear ones, batch by
/// batch (`payd reencrypt`); returns (refund reasons, discrepancy notes, payer digests) changed.
///
/// # Errors
/// A row that does not open under any loaded key stops the run (nothing of its batch changes):
/// load that key again and rerun.
pub async fn reseal_all(db: &Db, batch: i64) -> Result<(usize, usize, usize), StorageError> {
    let mut totals = (0, 0, 0);
    let mut after = None;
    loop {
        let (last, n) = db
            .run(move |c| refunds::reseal_batch(c, after, batch))
            .await?;
        totals.0 += n;
        match last {
            Some(l) => after = Some(l),
            None => break,
        }
    }
    let mut after = None;
    loop {
        let (last, n) = db
            .run(move |c| recon::reseal_notes_batch(c, after, batch))
            .await?;
        totals.1 += n;
        match last {
            Some(l) => after = Some(l),
            None => break,
        }
    }
    totals.2 = db
        .run(move |c| attempts::rewrite_legacy_payer_digests(c, batch))
        .await?;
    Ok(totals)
}
