//! Reconciliation: a channel's statement for a Beijing day against our attempts and refunds.
//!
//! A run streams the adapter's `FetchStatement` page by page into `recon_statement_lines` (one
//! INSERT per page, so payd holds a page, never a day), then compares with set queries in
//! Postgres (`storage::recon::compare`). A statement success for a trade we know that is not
//! SUCCEEDED here goes through the one results transition ([`App::apply_payment_result`], event
//! id `recon:<day>:<out_trade_no>`): the order becomes PAID, or the duplicate path refunds it.
//! Everything else waits for a person (`ResolveDiscrepancy`).
//!
//! A statement that ends without totals, or with an error (DATA_LOSS naming the line), fails the
//! run: its staged lines are dropped and nothing is recorded.
//!
//! Exactly one run per channel and day at a time across replicas: `storage::recon::start_run`
//! (advisory lock + partial unique index on RUNNING runs).
//!
//! Events: `reconciliation.completed` and `reconciliation.discrepancy_found` are not about one
//! order, and the outbox's events are (every event names an order and goes to its app's sink).
//! They are therefore metrics (`payment_reconciliation_*`) and structured log lines, not outbox
//! events.
use std::time::Duration;

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveTime, Offset, Utc};
use futures::StreamExt;
use payproto::channel::v1 as cpb;
use uuid::Uuid;

use super::{App, ServiceError};
use crate::domain::{Channel, PaymentResult, TradeState};
use crate::storage::recon::{self, DiscrepancyFilter, DiscrepancyRow, RunRow, StagedPage};

/// The platforms' time zone: China Standard Time, UTC+8 all year (no DST).
pub fn beijing() -> FixedOffset {
    FixedOffset::east_opt(8 * 3600).unwrap_or_else(|| Utc.fix())
}

/// The Beijing day `t` falls on.
pub fn beijing_day(t: DateTime<Utc>) -> NaiveDate {
    t.with_timezone(&beijing()).date_naive()
}

/// Lines per page asked of the adapter.
const PAGE_SIZE: u32 = 1_000;
/// Repair candidates handled per database round trip.
const REPAIR_BATCH: i64 = 200;

impl App {
    /// Starts a run of (channel, day) in the background, or returns the RUNNING one (`true`).
    ///
    /// # Errors
    /// `ChannelRefused` when no adapter is configured for the channel; storage errors.
    pub async fn run_reconciliation(
        &self,
        channel: Channel,
        day: NaiveDate,
        requested_by: String,
    ) -> Result<(RunRow, bool), ServiceError> {
        if self.channels.get(channel).is_err() {
            return Err(ServiceError::ChannelRefused(format!(
                "no adapter is configured for {channel}"
            )));
        }
        let audit = super::audit::current();
        let (run, already) = self
            .db
            .run(move |conn| {
                use diesel::Connection;
                conn.transaction(|conn| {
                    let (run, already) =
                        recon::start_run(conn, channel.as_str(), day, &requested_by)?;
                    // Joining a RUNNING run changes nothing: the edge records it as a repeat.
                    if !already {
                        super::audit::record(
                            conn,
                            audit.as_ref(),
                            "/RunReconciliation",
                            &super::audit::Targets {
                                recon_run_id: Some(run.id),
                                ..Default::default()
                            },
                        )?;
                    }
                    Ok::<_, crate::storage::StorageError>((run, already))
                })
            })
            .await?;
        if !already {
            let app = self.clone();
            let id = run.id;
            tokio::spawn(async move { app.execute_run(id, channel, day).await });
        }
        Ok((run, already))
    }

    /// Runs to the end (COMPLETED or FAILED) and returns the finished run.
    pub async fn execute_run(&self, id: Uuid, channel: Channel, day: NaiveDate) -> Option<RunRow> {
        let started = std::time::Instant::now();
        let outcome = match self.read_and_compare(id, channel, day).await {
            Ok(run) => Some(run),
            Err(e) => {
                let msg = e.to_string();
                tracing::error!(%channel, %day, run = %id, error = %msg, "reconciliation failed");
                if let Err(e) = self
                    .db
                    .run(move |conn| recon::fail_run(conn, id, &msg))
                    .await
                {
                    tracing::error!(run = %id, error = %e, "could not record the failed run");
                }
                self.metrics
                    .recon_runs
                    .with_label_values(&[channel.as_str(), "FAILED"])
                    .inc();
                None
            }
        };
        if let Some(run) = &outcome {
            self.metrics
                .recon_runs
                .with_label_values(&[channel.as_str(), "COMPLETED"])
                .inc();
            tracing::info!(
                event = "reconciliation.completed", %channel, %day, run = %id,
                lines = run.lines_read, discrepancies = run.discrepancies, repaired = run.repaired,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "reconciliation completed"
            );
        }
        match outcome {
            Some(r) => Some(r),
            None => self
                .db
                .run(move |conn| recon::get_run(conn, id))
                .await
                .ok()
                .flatten(),
        }
    }

    async fn read_and_compare(
        &self,
        id: Uuid,
        channel: Channel,
        day: NaiveDate,
    ) -> Result<RunRow, ServiceError> {
        let mut client = self
            .channels
            .get(channel)
            .map_err(|_| ServiceError::ChannelRefused(format!("no adapter for {channel}")))?;
        let mut stream = client
            .fetch_statement(cpb::FetchStatementRequest {
                day: day.format("%Y-%m-%d").to_string(),
                page_size: PAGE_SIZE,
            })
            .await
            .map_err(|s| statement_error(&s))?
            .into_inner();
        let mut totals = None;
        while let Some(msg) = stream.next().await {
            let msg = msg.map_err(|s| statement_error(&s))?;
            if let Some(t) = msg.totals {
                totals = Some(t);
                continue;
            }
            if totals.is_some() {
                return Err(ServiceError::ChannelRefused(
                    "statement lines after its totals".into(),
                ));
            }
            let page = stage(msg.lines);
            if page.is_empty() {
                continue;
            }
            let n = page.len() as u64;
            self.db
                .run(move |conn| recon::stage_page(conn, id, &page))
                .await?;
            self.metrics
                .recon_lines
                .with_label_values(&[channel.as_str()])
                .inc_by(n);
        }
        let Some(totals) = totals else {
            return Err(ServiceError::ChannelRefused(
                "the statement ended without its totals (incomplete)".into(),
            ));
        };
        let ch = channel.as_str();
        let mut kinds = self
            .db
            .run(move |conn| recon::compare(conn, id, ch, day))
            .await?;
        let mut repaired = 0i64;
        let mut after = String::new();
        loop {
            let a = after.clone();
            let batch = self
                .db
                .run(move |conn| recon::repair_candidates(conn, id, ch, day, &a, REPAIR_BATCH))
                .await?;
            let Some(last) = batch.last() else { break };
            after = last.out_trade_no.clone();
            for c in batch {
                let outcome = self
                    .apply_payment_result(PaymentResult {
                        channel,
                        event_id: format!("recon:{day}:{}", c.out_trade_no),
                        out_trade_no: c.out_trade_no.clone(),
                        state: TradeState::Succeeded,
                        channel_trade_no: Some(c.channel_trade_no.clone())
                            .filter(|s| !s.is_empty()),
                        paid: Some((c.amount_minor, c.currency.clone())),
                        paid_at: c.at,
                        channel_status: "RECONCILIATION".into(),
                    })
                    .await?;
                use super::results::ResultOutcome as O;
                let fixed = matches!(outcome, O::Applied | O::DuplicatePayment | O::Repeated);
                let new = self
                    .db
                    .run(move |conn| recon::record_repair(conn, id, ch, day, &c, fixed))
                    .await?;
                if new {
                    kinds.push(
                        if fixed {
                            "MISSING_LOCALLY"
                        } else {
                            "STATUS_MISMATCH"
                        }
                        .into(),
                    );
                }
                if fixed {
                    repaired += 1;
                    self.metrics.recon_repairs.with_label_values(&[ch]).inc();
                }
            }
        }
        for k in &kinds {
            self.metrics
                .recon_discrepancies
                .with_label_values(&[ch, k.as_str()])
                .inc();
        }
        if !kinds.is_empty() {
            tracing::warn!(
                event = "reconciliation.discrepancy_found", channel = ch, %day, run = %id,
                found = kinds.len(), repaired, "reconciliation found discrepancies"
            );
        }
        let found = i64::try_from(kinds.len()).unwrap_or(i64::MAX);
        let pc = i64::try_from(totals.payment_count).unwrap_or(i64::MAX);
        let rc = i64::try_from(totals.refund_count).unwrap_or(i64::MAX);
        self.db
            .run(move |conn| recon::complete_run(conn, id, found, repaired, pc, rc))
            .await?
            .ok_or_else(|| ServiceError::ChannelRefused("the run vanished".into()))
    }

    pub async fn get_reconciliation_run(&self, id: Uuid) -> Result<Option<RunRow>, ServiceError> {
        Ok(self.db.run(move |conn| recon::get_run(conn, id)).await?)
    }

    pub async fn list_discrepancies(
        &self,
        filter: DiscrepancyFilter,
        limit: i64,
    ) -> Result<Vec<DiscrepancyRow>, ServiceError> {
        Ok(self
            .db
            .run(move |conn| recon::list_discrepancies(conn, &filter, limit))
            .await?)
    }

    /// Resolves an OPEN discrepancy. `Ok(Err(row))` when it is not OPEN (the row as it is).
    pub async fn resolve_discrepancy(
        &self,
        id: Uuid,
        resolution: String,
        note: String,
        by: String,
    ) -> Result<Option<Result<DiscrepancyRow, DiscrepancyRow>>, ServiceError> {
        let audit = super::audit::current();
        Ok(self
            .db
            .run(move |conn| {
                use diesel::Connection;
                let resolved = conn.transaction(|conn| {
                    let r = recon::resolve(conn, id, &resolution, &note, &by)?;
                    if let Some(r) = &r {
                        super::audit::record(
                            conn,
                            audit.as_ref(),
                            "/ResolveDiscrepancy",
                            &super::audit::Targets {
                                recon_run_id: Some(r.run_id),
                                target: Some(id.to_string()),
                                ..Default::default()
                            },
                        )?;
                    }
                    Ok::<_, crate::storage::StorageError>(r)
                })?;
                if let Some(r) = resolved {
                    return Ok::<_, crate::storage::StorageError>(Some(Ok(r)));
                }
                Ok(recon::get_discrepancy(conn, id)?.map(Err))
            })
            .await?)
    }
}

fn statement_error(s: &tonic::Status) -> ServiceError {
    ServiceError::ChannelRefused(format!(
        "statement download failed ({:?}): {}",
        s.code(),
        s.message()
    ))
}

/// A page in staging columns; lines in no final state are staged with their state name.
fn stage(lines: Vec<cpb::StatementLine>) -> StagedPage {
    let mut p = StagedPage::default();
    for l in lines {
        let refund = !l.out_refund_no.is_empty();
        let state = if refund {
            match cpb::RefundState::try_from(l.refund_state) {
                Ok(cpb::RefundState::Succeeded) => "SUCCEEDED",
                Ok(cpb::RefundState::Failed) => "FAILED",
                _ => "OTHER",
            }
        } else {
            match cpb::TradeState::try_from(l.trade_state) {
                Ok(cpb::TradeState::Succeeded) => "SUCCEEDED",
                Ok(cpb::TradeState::Closed) => "CLOSED",
                Ok(cpb::TradeState::Failed) => "FAILED",
                _ => "OTHER",
            }
        };
        let (minor, currency) = l
            .amount
            .map(|m| (m.amount_minor, m.currency))
            .unwrap_or_default();
        p.source_line
            .push(i64::try_from(l.source_line).unwrap_or(i64::MAX));
        p.kind
            .push(if refund { "REFUND" } else { "PAYMENT" }.to_owned());
        p.out_trade_no.push(l.out_trade_no);
        p.out_refund_no.push(l.out_refund_no);
        p.channel_trade_no.push(l.channel_trade_no);
        p.state.push(state.to_owned());
        p.amount_minor.push(minor.abs());
        p.currency.push(currency);
        p.at.push(l.at.and_then(|t| {
            DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0))
        }));
    }
    p
}

/// The daily schedule: at `at` Beijing time, each enabled channel's previous Beijing day.
/// Every replica runs it; `start_run` lets only one of them run a (channel, day) at a time, and a
/// replica that finds it RUNNING or already COMPLETED today leaves it.
pub async fn schedule_loop(app: App, at: NaiveTime, mut stop: tokio::sync::watch::Receiver<bool>) {
    {
        loop {
            let now = Utc::now().with_timezone(&beijing());
            let today_at = now.date_naive().and_time(at);
            let next = if now.naive_local() < today_at {
                today_at
            } else {
                today_at + chrono::Duration::days(1)
            };
            let wait = (next - now.naive_local())
                .to_std()
                .unwrap_or(Duration::from_secs(60));
            tokio::select! {
                _ = stop.changed() => return,
                () = tokio::time::sleep(wait) => {}
            }
            let day = next.date() - chrono::Duration::days(1);
            for channel in Channel::ALL {
                if app.channels.get(channel).is_err() {
                    continue;
                }
                let done = app
                    .db
                    .run(move |conn| recon::completed_exists(conn, channel.as_str(), day))
                    .await
                    .unwrap_or(false);
                if done {
                    continue;
                }
                if let Err(e) = app
                    .run_reconciliation(channel, day, "scheduler".into())
                    .await
                {
                    tracing::error!(%channel, %day, error = %e, "scheduled reconciliation did not start");
                }
            }
        }
    }
}
