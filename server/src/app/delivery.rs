//! Events out: the sequencer that puts committed outbox rows in stream order, and the dispatcher
//! that pushes them to each app's `EventSink`, one event of an order at a time and in the order's
//! sequence, retrying on a schedule and dead-lettering after the last try.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use payproto::payment::v1 as pb;
use payproto::payment::v1::event_sink_service_client::EventSinkServiceClient;
use prost::Message;

use super::{App, ServiceError};
use crate::storage::outbox::{self, OutboxRow};

/// Where each app's events are pushed, and how.
#[derive(Clone, Default)]
pub struct EventSinks {
    sinks: HashMap<String, EventSinkServiceClient<tonic::transport::Channel>>,
    /// Delays between delivery tries; past the last, the event is dead-lettered.
    pub retry_delays: Vec<Duration>,
    /// How long a claimed delivery is the claimer's.
    pub claim_lease: Duration,
    /// How many events one dispatcher pass claims.
    pub batch: i64,
    /// The app that receives events concerning no order (reconciliation runs, discrepancies of
    /// trades we do not know): `PAYD_OPS_APP_ID`. It reads them with WatchEvents as that app, and
    /// gets them pushed when `PAYD_EVENT_SINKS` names a sink for it, like any app.
    pub ops_app: String,
}

/// The operations app when `PAYD_OPS_APP_ID` is not set.
pub const DEFAULT_OPS_APP: &str = "ops";

#[derive(Debug, thiserror::Error)]
#[error("event sink of app {app}: {source}")]
pub struct SinkError {
    app: String,
    source: tonic::transport::Error,
}

impl EventSinks {
    /// Lazily connecting clients, one per subscribed app (`app=url` pairs).
    ///
    /// # Errors
    /// An endpoint that is not a valid URI.
    pub fn new(
        subscriptions: &[(String, String)],
        timeout: Duration,
        retry_delays: Vec<Duration>,
    ) -> Result<Self, SinkError> {
        let mut sinks = HashMap::new();
        for (app, url) in subscriptions {
            let ep = tonic::transport::Endpoint::from_shared(url.clone())
                .map_err(|source| SinkError {
                    app: app.clone(),
                    source,
                })?
                .connect_timeout(Duration::from_secs(2))
                .timeout(timeout);
            sinks.insert(app.clone(), EventSinkServiceClient::new(ep.connect_lazy()));
        }
        Ok(Self {
            sinks,
            retry_delays,
            claim_lease: timeout * 2 + Duration::from_secs(5),
            batch: 256,
            ops_app: DEFAULT_OPS_APP.to_owned(),
        })
    }

    /// Sends the events that concern no order to `app` instead of [`DEFAULT_OPS_APP`].
    #[must_use]
    pub fn with_ops_app(mut self, app: impl Into<String>) -> Self {
        self.ops_app = app.into();
        self
    }

    /// The apps with a sink, for the sequencer (which marks their events for delivery).
    pub fn subscribed(&self) -> Vec<String> {
        let mut apps: Vec<String> = self.sinks.keys().cloned().collect();
        apps.sort();
        apps
    }

    pub fn is_empty(&self) -> bool {
        self.sinks.is_empty()
    }
}

impl App {
    /// One sequencer pass; returns how many events got their stream position (0 when another
    /// replica holds the sequencer lock).
    pub async fn sequence_events(&self) -> Result<usize, ServiceError> {
        let subscribed = self.sinks.subscribed();
        Ok(self
            .db
            .run(move |conn| outbox::sequence(conn, &subscribed, 1000))
            .await?)
    }

    /// One dispatcher pass: claims due deliveries (`SKIP LOCKED`, shared by replicas; at most one
    /// per order), pushes them concurrently, and records the outcomes in two statements.
    /// Returns how many were claimed.
    pub async fn dispatch_events(&self) -> Result<usize, ServiceError> {
        if self.sinks.is_empty() {
            return Ok(0);
        }
        let (batch, lease) = (self.sinks.batch, self.sinks.claim_lease);
        let due = self
            .db
            .run(move |conn| outbox::claim_deliverable(conn, batch, lease))
            .await?;
        let n = due.len();
        if n == 0 {
            return Ok(0);
        }
        let mut tasks = tokio::task::JoinSet::new();
        for row in due {
            let sink = self.sinks.sinks.get(&row.app_id).cloned();
            tasks.spawn(async move {
                let outcome = match sink {
                    Some(mut client) => deliver(&mut client, &row).await,
                    None => Err(format!("app {} has no event sink any more", row.app_id)),
                };
                (row, outcome)
            });
        }
        let mut delivered = Vec::new();
        let mut failed = Vec::new();
        while let Some(done) = tasks.join_next().await {
            let Ok((row, outcome)) = done else { continue };
            match outcome {
                Ok(()) => {
                    let lag = (Utc::now() - row.created_at).to_std().unwrap_or_default();
                    self.metrics.event_delivery_lag.observe(lag.as_secs_f64());
                    delivered.push(row.id);
                }
                Err(e) => failed.push((row, e)),
            }
        }
        self.metrics
            .event_deliveries
            .with_label_values(&["delivered"])
            .inc_by(delivered.len() as u64);
        let delays = self.sinks.retry_delays.clone();
        let metrics = self.metrics.clone();
        let failed: Vec<outbox::Failed> = failed
            .into_iter()
            .map(|(row, error)| {
                // `delivery_attempts` already counts this try (the claim incremented it).
                let tries = usize::try_from(row.delivery_attempts).unwrap_or(usize::MAX);
                let retry_at = delays
                    .get(tries.saturating_sub(1))
                    .map(|d| Utc::now() + chrono::Duration::from_std(*d).unwrap_or_default());
                let outcome = if retry_at.is_some() { "failed" } else { "dead" };
                metrics.event_deliveries.with_label_values(&[outcome]).inc();
                if retry_at.is_none() {
                    tracing::error!(event_id = %row.event_id, app = %row.app_id, tries, %error, "event delivery gave up: dead-lettered");
                } else {
                    tracing::warn!(event_id = %row.event_id, app = %row.app_id, tries, %error, "event delivery failed; will retry");
                }
                outbox::Failed {
                    id: row.id,
                    error,
                    retry_at,
                }
            })
            .collect();
        // Outcomes in two statements per pass, whatever the batch size.
        self.db
            .run(move |conn| {
                outbox::mark_delivered(conn, &delivered)?;
                outbox::mark_failed(conn, &failed)?;
                Ok::<_, ServiceError>(())
            })
            .await?;
        Ok(n)
    }

    /// Refreshes the outbox gauges (one aggregate query).
    pub async fn refresh_outbox_gauges(&self) -> Result<(), ServiceError> {
        let (unsequenced, pending, dead, oldest) = self.db.run(outbox::backlog).await?;
        let m = &self.metrics;
        m.outbox_unsequenced.set(unsequenced);
        m.outbox_pending.set(pending);
        m.outbox_dead.set(dead);
        m.outbox_oldest_pending_age.set(oldest);
        Ok(())
    }
}

/// Pushes one event; any answer but OK is a failed try.
async fn deliver(
    client: &mut EventSinkServiceClient<tonic::transport::Channel>,
    row: &OutboxRow,
) -> Result<(), String> {
    let mut event = pb::Event::decode(row.payload.as_slice())
        .map_err(|e| format!("stored event does not decode: {e}"))?;
    event.cursor = row.stream_seq.map(|s| s.to_string()).unwrap_or_default();
    client
        .deliver(pb::DeliverRequest { event: Some(event) })
        .await
        .map(|_| ())
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

/// Shared handle, for the loops.
pub type Sinks = Arc<EventSinks>;
