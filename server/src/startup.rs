//! Builds the application from settings and runs it until a shutdown signal.
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use axum::routing::get;
use payproto::payment::v1::payment_service_server::PaymentServiceServer;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use std::sync::Arc;

use crate::app::App;
use crate::channel_client::ChannelClients;
use crate::config::Settings;
use crate::domain::snowflake::Snowflake;
use crate::grpc::{build_grpc_router, payment::PaymentApi};
use crate::locks::Locks;
use crate::metrics::Metrics;
use crate::storage::Db;

/// How often expired idempotency keys are purged.
const PURGE_INTERVAL: Duration = Duration::from_secs(60);

pub struct Application {
    grpc: TcpListener,
    http: TcpListener,
    app: App,
    auth: crate::auth::AuthLayer,
    /// The gRPC port's TLS (`PAYD_TLS_*`), if any.
    tls: Option<tonic::transport::ServerTlsConfig>,
    database_url: String,
    lease_check: Duration,
    grace: Duration,
    outbox_tick: Duration,
    recon_schedule: Option<chrono::NaiveTime>,
}

impl Application {
    /// Connects (lazily) to Postgres and Redis and binds both listeners. Port 0 picks a free port,
    /// which tests read back from [`Application::grpc_addr`].
    pub async fn build(settings: &Settings) -> anyhow::Result<Self> {
        crate::crypto::install(std::sync::Arc::new(settings.data_keys()?));
        let metrics = Metrics::new()?;
        let db = Db::connect_lazy_with(
            settings.database_url.expose(),
            settings.database_pool_size,
            Duration::from_millis(settings.database_connect_timeout_ms),
            crate::storage::SessionSetup {
                transitions: Some(metrics.order_transitions.clone()),
                idle_in_transaction: (settings.database_idle_in_transaction_timeout_ms > 0).then(
                    || Duration::from_millis(settings.database_idle_in_transaction_timeout_ms),
                ),
            },
        )?;
        let client = redis::Client::open(settings.redis_url.expose()).context("redis_url")?;
        let redis_cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(2);
        let redis = redis::aio::ConnectionManager::new_lazy_with_config(client, redis_cfg)
            .context("redis")?;
        let auth = crate::auth::AuthLayer::new(
            crate::auth::Auth::from_settings(settings, redis.clone(), &metrics)
                .context("app credentials")?,
        );
        let locks = Locks::new(
            redis,
            settings.redis_key_prefix.clone(),
            settings.lock_ttl(),
            settings.lock_wait(),
            db.clone(),
        );
        let channels = ChannelClients::new_timed(
            &settings.adapter_endpoints()?,
            Duration::from_millis(settings.channel_timeout_ms),
            metrics.channel_request_duration.clone(),
            settings
                .channel_tls()
                .client("PAYD_CHANNEL_TLS_*")
                .context("adapter TLS")?,
        )
        .context("channel endpoints")?;
        let url = settings.database_url.expose().to_owned();
        let (lease, worker) =
            tokio::task::spawn_blocking(move || crate::storage::lease_worker_id(&url))
                .await?
                .context("leasing a snowflake worker id")?;
        tracing::info!(worker, "snowflake worker id leased");
        let app = App {
            db,
            locks,
            limits: settings.order_limits(),
            idempotency_retention: settings.idempotency_retention(),
            metrics,
            channels,
            adapter_tokens: Arc::new(settings.adapter_tokens()?),
            ids: Arc::new(Snowflake::new(worker)),
            worker_lease: Arc::new(std::sync::Mutex::new(lease)),
            pay_windows: settings.pay_windows(),
            refunds: settings.refund_policy()?,
            sinks: Arc::new(
                crate::app::delivery::EventSinks::new(
                    &settings.event_subscriptions()?,
                    Duration::from_millis(settings.event_sink_timeout_ms),
                    settings.event_retry_delays()?,
                )
                .context("event sinks")?
                .with_ops_app(settings.ops_app_id.clone()),
            ),
            payment_queries: settings.payment_queries()?,
            single_statement_writes: settings.single_statement_writes,
        };
        let grpc = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("binding listen {}", settings.listen))?;
        let http = TcpListener::bind(settings.metrics_listen)
            .await
            .with_context(|| format!("binding metrics_listen {}", settings.metrics_listen))?;
        Ok(Self {
            grpc,
            http,
            app,
            auth,
            tls: settings.server_tls().server("PAYD_TLS_*").context("TLS")?,
            database_url: settings.database_url.expose().to_owned(),
            lease_check: Duration::from_millis(settings.worker_lease_check_ms),
            grace: Duration::from_millis(settings.shutdown_grace_ms),
            outbox_tick: Duration::from_millis(settings.outbox_tick_ms),
            recon_schedule: settings.recon_schedule()?,
        })
    }

    pub fn grpc_addr(&self) -> std::io::Result<SocketAddr> {
        self.grpc.local_addr()
    }

    pub fn metrics_addr(&self) -> std::io::Result<SocketAddr> {
        self.http.local_addr()
    }

    pub fn app(&self) -> &App {
        &self.app
    }

    /// Serves until `shutdown` resolves; then reports NOT_SERVING, stops accepting, lets in-flight
    /// calls finish (up to the grace period) and returns.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let (router, health) =
            build_grpc_router(self.app.clone(), self.auth.clone(), self.tls.clone()).await?;

        let metrics = self.app.metrics.clone();
        let http_app = axum::Router::new()
            .route(
                "/metrics",
                get(move || {
                    std::future::ready((
                        [(
                            axum::http::header::CONTENT_TYPE,
                            crate::metrics::CONTENT_TYPE,
                        )],
                        metrics.render(),
                    ))
                }),
            )
            .route("/healthz", get(|| std::future::ready("ok")));
        let mut http_stop = stop_rx.clone();
        let http = tokio::spawn(
            axum::serve(
                axum::serve::ListenerExt::tap_io(self.http, |s: &mut tokio::net::TcpStream| {
                    let _ = s.set_nodelay(true);
                }),
                http_app,
            )
            .with_graceful_shutdown(async move {
                let _ = http_stop.wait_for(|s| *s).await;
            })
            .into_future(),
        );

        let purger = tokio::spawn(purge_loop(self.app.clone(), stop_rx.clone()));
        let refund_job = tokio::spawn(refund_query_loop(self.app.clone(), stop_rx.clone()));
        let outbox_job = tokio::spawn(outbox_loop(
            self.app.clone(),
            self.outbox_tick,
            stop_rx.clone(),
        ));
        let query_job = tokio::spawn(payment_query_loop(self.app.clone(), stop_rx.clone()));
        let expiry_job = tokio::spawn(expiry_loop(self.app.clone(), stop_rx.clone()));
        if let Some(at) = self.recon_schedule {
            tokio::spawn(crate::app::reconciliation::schedule_loop(
                self.app.clone(),
                at,
                stop_rx.clone(),
            ));
        }
        let ops = tokio::spawn(crate::ops::watch(self.app.clone(), stop_rx.clone()));
        let leaser = tokio::spawn(lease_loop(
            self.app.clone(),
            self.database_url.clone(),
            self.lease_check,
            stop_rx.clone(),
        ));

        let mut grpc_stop = stop_rx.clone();
        let grpc_signal = async move {
            let _ = grpc_stop.wait_for(|s| *s).await;
        };
        let grpc = tokio::spawn(
            // TCP_NODELAY: a response larger than one write (Pay's) would otherwise wait for the
            // client's delayed ACK (~40 ms) under Nagle's algorithm.
            router.serve_with_incoming_shutdown(
                TcpIncoming::from(self.grpc).with_nodelay(Some(true)),
                grpc_signal,
            ),
        );

        shutdown.await;
        tracing::info!("shutting down: no new calls, finishing in-flight ones");
        health
            .set_not_serving::<PaymentServiceServer<PaymentApi>>()
            .await;
        let _ = stop_tx.send(true);
        let drained = tokio::time::timeout(self.grace, async {
            let g = grpc.await;
            let _ = http.await;
            let _ = purger.await;
            let _ = refund_job.await;
            let _ = outbox_job.await;
            let _ = query_job.await;
            let _ = expiry_job.await;
            let _ = leaser.await;
            let _ = ops.await;
            g
        })
        .await;
        match drained {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(e.into()),
            Ok(Err(join)) => Err(join.into()),
            Err(_) => {
                tracing::warn!(grace = ?self.grace, "in-flight calls did not finish within the grace period");
                Ok(())
            }
        }
    }
}

async fn purge_loop(app: App, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(PURGE_INTERVAL);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {
                match app.purge_idempotency_keys().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(purged = n, "expired idempotency keys purged"),
                    Err(e) => tracing::warn!(error = ?e, "idempotency purge failed; will retry"),
                }
            }
        }
    }
}

/// The refund query job: on every tick, claims the due unsettled refunds (shared by replicas
/// through `FOR UPDATE SKIP LOCKED`) and settles what the channels say; refreshes the
/// unsettled-refund gauges every ten ticks. On stop, the pass in progress finishes (the server's
/// grace period bounds it).
async fn refund_query_loop(app: App, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(app.refunds.tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = app.run_refund_queries().await {
            tracing::warn!(error = ?e, "refund query pass failed; will retry");
        }
        if n.is_multiple_of(10)
            && let Err(e) = app.refresh_refund_gauges().await
        {
            tracing::warn!(error = ?e, "refreshing the refund gauges failed");
        }
        n += 1;
    }
}

/// The outbox's two workers in one loop: the sequencer (one replica at a time, by an advisory
/// lock) and the dispatcher (every replica, sharing by `SKIP LOCKED`). A pass that found a full
/// batch runs again at once; an idle one waits a tick. The gauges are refreshed once a second.
async fn outbox_loop(app: App, tick: Duration, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut last_gauges = tokio::time::Instant::now() - Duration::from_secs(2);
    // The first pass waits one tick like the others: a replica that has just started has nothing
    // urgent (the other replicas, or this one a tick later, deliver), and a test that sets a long
    // tick to drive the sequencer itself must not race a pass that fires during its setup.
    let mut busy = false;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(if busy { Duration::ZERO } else { tick }) => {}
        }
        let sequenced = match app.sequence_events().await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = ?e, "outbox sequencer pass failed; will retry");
                0
            }
        };
        let dispatched = match app.dispatch_events().await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = ?e, "event dispatch pass failed; will retry");
                0
            }
        };
        if last_gauges.elapsed() >= Duration::from_secs(1) {
            last_gauges = tokio::time::Instant::now();
            if let Err(e) = app.refresh_outbox_gauges().await {
                tracing::warn!(error = ?e, "refreshing the outbox gauges failed");
            }
        }
        busy = sequenced >= 1000 || dispatched > 0;
    }
}

/// The payment query job: on every tick, claims the due open attempts (shared by replicas
/// through `FOR UPDATE SKIP LOCKED`) and applies what their channels say; refreshes the
/// open-attempt gauges every ten ticks. On stop, the pass in progress finishes.
async fn payment_query_loop(app: App, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(app.payment_queries.tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = app.run_payment_queries().await {
            tracing::warn!(error = ?e, "payment query pass failed; will retry");
        }
        if n.is_multiple_of(10)
            && let Err(e) = app.refresh_attempt_gauges().await
        {
            tracing::warn!(error = ?e, "refreshing the open-attempt gauges failed");
        }
        n += 1;
    }
}

/// The expiry job: on every tick, closes a batch of expired unpaid orders (at their channel
/// first). Replicas may run it at once: the order's lock and the state machine make a double
/// close harmless.
async fn expiry_loop(app: App, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(app.payment_queries.expiry_tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = app.expire_orders().await {
            tracing::warn!(error = ?e, "expiry pass failed; will retry");
        }
    }
}

/// Checks the snowflake worker-id lease every `period`. A lease found lost (its connection died,
/// e.g. a Postgres restart or a terminated backend, so another replica may now hold the same id)
/// stops minting at once; the loop then leases an id again (any free one) and minting resumes.
async fn lease_loop(
    app: App,
    url: String,
    period: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        let lease = app.worker_lease.clone();
        let ids = app.ids.clone();
        let url = url.clone();
        let r = tokio::task::spawn_blocking(move || {
            let mut conn = match lease.lock() {
                Ok(c) => c,
                Err(p) => p.into_inner(),
            };
            if crate::storage::worker_lease_held(&mut conn, ids.worker()) {
                if !ids.is_leased() {
                    ids.leased_again(ids.worker());
                }
                return Ok(None);
            }
            ids.lease_lost();
            let (fresh, worker) = crate::storage::lease_worker_id(&url)?;
            *conn = fresh;
            ids.leased_again(worker);
            Ok::<_, crate::storage::StorageError>(Some(worker))
        })
        .await;
        match r {
            Ok(Ok(None)) => {}
            Ok(Ok(Some(worker))) => {
                tracing::warn!(worker, "snowflake worker-id lease was lost; leased again")
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "snowflake worker-id lease lost and not regained; Pay is unavailable")
            }
            Err(e) => tracing::error!(error = %e, "lease check task failed"),
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
