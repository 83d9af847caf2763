//! WatchEvents and RedeliverEvents of `payment.v1.PaymentService`: the app's outbox as a
//! resumable stream, and the operator's way back for dead-lettered deliveries. An app sees the
//! events addressed to it and no other: its orders' events, and, for the operations app
//! (`PAYD_OPS_APP_ID`), the events that concern no order (reconciliation runs, discrepancies of
//! trades we never made), which carry a `stream_key` instead of an order.
use std::pin::Pin;
use std::time::Duration;

use payproto::payment::v1 as pb;
use prost::Message;
use tonic::{Request, Status};

use super::payment::{PaymentApi, app_id};
use crate::app::ServiceError;
use crate::domain::FieldError;
use crate::storage::outbox;

pub type EventStream =
    Pin<Box<dyn futures::Stream<Item = Result<pb::WatchEventsResponse, Status>> + Send>>;

/// How often a caught-up stream looks for new events.
const POLL: Duration = Duration::from_millis(100);
const PAGE: i64 = 500;

/// The cursor is the event's stream position, in decimal.
fn parse_cursor(c: &str) -> Result<i64, FieldError> {
    if c.is_empty() {
        return Ok(0);
    }
    c.parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .ok_or_else(|| FieldError::new("cursor", "is not a cursor this server issued"))
}

/// The stored event with its stream position as cursor.
pub fn event_of(row: &outbox::OutboxRow) -> Result<pb::Event, ServiceError> {
    use anyhow::Context;
    let mut e = pb::Event::decode(row.payload.as_slice())
        .with_context(|| format!("outbox event {} does not decode", row.event_id))?;
    e.cursor = row.stream_seq.map(|s| s.to_string()).unwrap_or_default();
    Ok(e)
}

impl PaymentApi {
    pub(super) async fn watch_events_call(
        &self,
        req: Request<pb::WatchEventsRequest>,
    ) -> Result<EventStream, ServiceError> {
        let app = app_id(&req)?;
        let mut cursor = parse_cursor(&req.into_inner().cursor)?;
        let db = self.app().db.clone();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<pb::WatchEventsResponse, Status>>(64);
        tokio::spawn(async move {
            loop {
                let app_id = app.as_str().to_owned();
                let rows = db
                    .run(move |conn| outbox::read_stream(conn, &app_id, cursor, PAGE))
                    .await;
                let rows = match rows {
                    Ok(rows) => rows,
                    Err(e) => {
                        let _ = tx.send(Err(Status::from(ServiceError::from(e)))).await;
                        return;
                    }
                };
                let full = i64::try_from(rows.len()).unwrap_or(i64::MAX) >= PAGE;
                for row in rows {
                    let item = event_of(&row)
                        .map(|event| pb::WatchEventsResponse { event: Some(event) })
                        .map_err(Status::from);
                    if tx.send(item).await.is_err() {
                        return;
                    }
                    cursor = row.stream_seq.unwrap_or(cursor);
                }
                if !full {
                    tokio::select! {
                        () = tokio::time::sleep(POLL) => {}
                        () = tx.closed() => return,
                    }
                }
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    pub(super) async fn redeliver_events_call(
        &self,
        req: Request<pb::RedeliverEventsRequest>,
    ) -> Result<pb::RedeliverEventsResponse, ServiceError> {
        let app = app_id(&req)?;
        let ids = req
            .into_inner()
            .event_ids
            .iter()
            .map(|s| {
                uuid::Uuid::try_parse(s)
                    .map_err(|_| FieldError::new("event_ids", format!("{s:?} is not an event id")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let audit = crate::app::audit::current();
        let n = self
            .app()
            .db
            .run(move |conn| {
                use diesel::Connection;
                // The requeue and its audit record commit together.
                conn.transaction(|conn| {
                    let n = outbox::redeliver(conn, app.as_str(), &ids)?;
                    // Nothing requeued changed nothing: the edge records it as such.
                    if n == 0 {
                        return Ok(0);
                    }
                    crate::app::audit::record(
                        conn,
                        audit.as_ref(),
                        "RedeliverEvents",
                        &crate::app::audit::Targets {
                            target: Some(if ids.is_empty() {
                                "all dead-lettered events".to_owned()
                            } else {
                                ids.iter()
                                    .map(ToString::to_string)
                                    .collect::<Vec<_>>()
                                    .join(",")
                            }),
                            ..Default::default()
                        },
                    )?;
                    Ok::<_, crate::storage::StorageError>(n)
                })
            })
            .await?;
        tracing::info!(requeued = n, "dead-lettered events put back into delivery");
        Ok(pb::RedeliverEventsResponse {
            requeued: i64::try_from(n).unwrap_or(i64::MAX),
        })
    }
}
