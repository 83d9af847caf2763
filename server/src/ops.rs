//! Operations gauges refreshed by one cheap periodic check (never by a scrape): whether Postgres
//! and Redis answer, whether this replica holds its worker-id lease, open orders by status, and
//! the database-derived gauges the duplicate-payment and stuck-attempt alerts watch. Also primes the counters the
//! alerts take `increase()` of, so their first increment is seen as one (a series born at 1 is
//! not an increase to Prometheus).
use std::time::Duration;

use diesel::RunQueryDsl;
use diesel::sql_types::{BigInt, Text};

use crate::app::App;
use crate::domain::attempt::Channel;
use crate::storage::StorageError;

/// How often the check runs.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(10);
/// A dependency that takes longer than this to answer counts as down.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// Sets the build info and creates the counters' zero series for every channel.
pub fn prime(app: &App) {
    let m = &app.metrics;
    m.build_info
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);
    for c in Channel::ALL {
        let c = c.as_str();
        m.duplicate_payments.with_label_values(&[c]);
        for outcome in ["succeeded", "failed"] {
            m.duplicate_refunds.with_label_values(&[c, outcome]);
        }
    }
}

/// Runs the check every [`CHECK_INTERVAL`] until `stop` changes.
pub async fn watch(app: App, mut stop: tokio::sync::watch::Receiver<bool>) {
    prime(&app);
    let mut tick = tokio::time::interval(CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        check(&app).await;
    }
}

#[derive(diesel::QueryableByName)]
struct ChannelAge {
    #[diesel(sql_type = Text)]
    channel: String,
    #[diesel(sql_type = BigInt)]
    n: i64,
    #[diesel(sql_type = BigInt)]
    age: i64,
}

/// One pass: the two dependency checks, the lease, and the database gauges.
pub async fn check(app: &App) {
    let m = &app.metrics;
    m.worker_lease_held.set(i64::from(app.ids.is_leased()));
    let redis = tokio::time::timeout(CHECK_TIMEOUT, app.locks.ping())
        .await
        .unwrap_or(false);
    m.dependency_up
        .with_label_values(&["redis"])
        .set(i64::from(redis));
    let gauges = tokio::time::timeout(CHECK_TIMEOUT, app.db.run(load_gauges)).await;
    let (dups, paying, open) = match gauges {
        Ok(Ok(v)) => {
            m.dependency_up.with_label_values(&["postgres"]).set(1);
            v
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "operations check: Postgres query failed");
            m.dependency_up.with_label_values(&["postgres"]).set(0);
            return;
        }
        Err(_) => {
            tracing::warn!("operations check: Postgres did not answer in time");
            m.dependency_up.with_label_values(&["postgres"]).set(0);
            return;
        }
    };
    for status in ["PENDING", "PAYING"] {
        m.orders_open
            .with_label_values(&[status])
            .set(open.iter().find(|r| r.channel == status).map_or(0, |r| r.n));
    }
    for c in Channel::ALL {
        let c = c.as_str();
        let d = dups.iter().find(|r| r.channel == c);
        m.duplicates_unrefunded
            .with_label_values(&[c])
            .set(d.map_or(0, |r| r.n));
        m.duplicates_oldest_unrefunded_age
            .with_label_values(&[c])
            .set(d.map_or(0, |r| r.age));
        let p = paying.iter().find(|r| r.channel == c);
        m.attempts_oldest_paying_age
            .with_label_values(&[c])
            .set(p.map_or(0, |r| r.age));
    }
}

type Gauges = (Vec<ChannelAge>, Vec<ChannelAge>, Vec<ChannelAge>);

/// Three small queries: duplicates not refunded (a handful of rows at most), open attempts and
/// open orders (each through its partial index on open rows).
fn load_gauges(conn: &mut diesel::PgConnection) -> Result<Gauges, StorageError> {
    let dups = diesel::sql_query(
        "SELECT a.channel, count(*) AS n, \
         coalesce(extract(epoch FROM now() - min(d.detected_at)), 0)::bigint AS age \
         FROM duplicate_payments d JOIN payment_attempts a ON a.id = d.attempt_id \
         WHERE d.status <> 'REFUNDED' GROUP BY a.channel",
    )
    .load::<ChannelAge>(conn)?;
    let paying = diesel::sql_query(
        "SELECT channel, count(*) FILTER (WHERE status = 'PAYING') AS n, \
         coalesce(extract(epoch FROM now() - min(created_at) FILTER (WHERE status = 'PAYING' AND NOT needs_attention)), 0)::bigint AS age \
         FROM payment_attempts WHERE status IN ('INIT', 'PAYING') GROUP BY channel",
    )
    .load::<ChannelAge>(conn)?;
    // `channel` holds the status here (same row shape).
    let open = diesel::sql_query(
        "SELECT status AS channel, count(*) AS n, 0::bigint AS age FROM orders \
         WHERE status IN ('PENDING', 'PAYING') GROUP BY status",
    )
    .load::<ChannelAge>(conn)?;
    Ok((dups, paying, open))
}
