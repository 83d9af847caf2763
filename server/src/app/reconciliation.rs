//! Reconciliation: a channel's statement for a Beijing day against our attempts and refunds.
//!
//! A run streams the adapter's `FetchStatement` page by page into `recon_statement_lines` (one
//! binary COPY per few pages, so payd holds a batch, never a day), then compares with set queries in
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
//! Events go through the outbox in the transaction that records their fact:
//! `reconciliation.discrepancy_found` with each new discrepancy (to its order's app when we know
//! the trade, else to the operations app), `reconciliation.completed` / `.failed` with the run's
//! end (to the operations app, `PAYD_OPS_APP_ID`). A re-run records no discrepancy already known,
//! so it emits no event for one either.
use std::time::Duration;

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveTime, Offset, Utc};
use futures::StreamExt;
use payproto::channel::v1 as cpb;
use uuid::Uuid;

use diesel::Connection;

use super::events::{self, EventType};
use super::{App, ServiceError};
use crate::domain::{Channel, PaymentResult, TradeState};
use crate::storage::StorageError;
use crate::storage::recon::{self, DiscrepancyFilter, DiscrepancyRow, RunRow, StagedLine};

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
/// Lines staged per INSERT (and commit): a few pages, about a megabyte.
const STAGE_BATCH: usize = 5_000;
/// Repair candidates read per database round trip.
const REPAIR_BATCH: i64 = 200;
/// Repairs in flight at once (each holds a pooled connection while it writes).
const REPAIR_CONCURRENCY: usize = 8;

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
                let ops = self.sinks.ops_app.clone();
                if let Err(e) = self
                    .db
                    .run(move |conn| {
                        conn.transaction(|conn| {
                            recon::fail_run(conn, id, &msg)?;
                            if let Some(run) = recon::get_run(conn, id)? {
                                events::record_run(
                                    conn,
                                    &ops,
                                    EventType::ReconciliationFailed,
                                    &run,
                                )?;
                            }
                            Ok::<_, StorageError>(())
                        })
                    })
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
        // Pages are gathered into batches of STAGE_BATCH lines, and a batch is staged while the
        // next one is being received (one staging in flight): the adapter's parsing and the
        // stream overlap Postgres's inserts, and there is one commit per batch, not per page.
        let mut totals = None;
        let mut batch: Vec<StagedLine> = Vec::with_capacity(STAGE_BATCH);
        let mut in_flight: Option<Staging> = None;
        let outcome = loop {
            let Some(msg) = stream.next().await else {
                break Ok(());
            };
            let msg = match msg {
                Ok(m) => m,
                Err(s) => break Err(statement_error(&s)),
            };
            if let Some(t) = msg.totals {
                totals = Some(t);
                continue;
            }
            if totals.is_some() {
                break Err(ServiceError::ChannelRefused(
                    "statement lines after its totals".into(),
                ));
            }
            stage(&mut batch, id, msg.lines);
            if batch.len() >= STAGE_BATCH {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(STAGE_BATCH));
                if let Err(e) = self.stage_next(&mut in_flight, id, channel, full).await {
                    break Err(e);
                }
            }
        };
        let last = match &outcome {
            Ok(()) if !batch.is_empty() => {
                self.stage_next(&mut in_flight, id, channel, batch).await
            }
            _ => Ok(()),
        };
        // Whatever happened, no staging may outlive this function: a failed run drops its staged
        // lines next, and a late insert would leave some behind.
        let drained = finish_staging(in_flight.take()).await;
        outcome?;
        last?;
        drained?;
        let Some(totals) = totals else {
            return Err(ServiceError::ChannelRefused(
                "the statement ended without its totals (incomplete)".into(),
            ));
        };
        let pc = i64::try_from(totals.payment_count).unwrap_or(i64::MAX);
        let rc = i64::try_from(totals.refund_count).unwrap_or(i64::MAX);
        self.settle_run(id, channel, day, pc, rc).await
    }

    /// Compares run `id`'s staged statement (read whole, with the statement's own counts) with
    /// our attempts and refunds, repairs what the results transition can repair, and completes
    /// the run. Each new discrepancy is recorded with its `reconciliation.discrepancy_found`
    /// event in one transaction, and the run's end with `reconciliation.completed`.
    ///
    /// # Errors
    /// Storage errors; errors of the results transition (the run then fails, and a re-run
    /// resumes: what was recorded stays recorded, and is not recorded twice).
    pub async fn settle_run(
        &self,
        id: Uuid,
        channel: Channel,
        day: NaiveDate,
        payment_count: i64,
        refund_count: i64,
    ) -> Result<RunRow, ServiceError> {
        let ch = channel.as_str();
        let ops = self.sinks.ops_app.clone();
        let o = ops.clone();
        let mut kinds = self
            .db
            .run(move |conn| {
                conn.transaction(|conn| {
                    let run = recon::get_run(conn, id)?
                        .ok_or_else(|| StorageError::Corrupt(format!("run {id} vanished")))?;
                    let found = recon::compare(conn, id, ch, day)?;
                    for d in &found {
                        events::record_discrepancy(conn, &o, &run, d)?;
                    }
                    Ok::<_, StorageError>(found.into_iter().map(|d| d.kind).collect::<Vec<_>>())
                })
            })
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
            // Candidates are distinct trades; their transitions lock their own orders, so they
            // run side by side (each one's result and record stay one unit, as before).
            let done: Vec<Result<(Option<String>, bool), ServiceError>> =
                futures::stream::iter(batch)
                    .map(|c| self.repair_one(id, channel, day, c))
                    .buffer_unordered(REPAIR_CONCURRENCY)
                    .collect()
                    .await;
            for d in done {
                let (new, fixed) = d?;
                if let Some(kind) = new {
                    kinds.push(kind);
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
        self.db
            .run(move |conn| {
                conn.transaction(|conn| {
                    let Some(run) = recon::complete_run(
                        conn,
                        id,
                        found,
                        repaired,
                        payment_count,
                        refund_count,
                    )?
                    else {
                        return Ok(None);
                    };
                    events::record_run(conn, &ops, EventType::ReconciliationCompleted, &run)?;
                    Ok::<_, StorageError>(Some(run))
                })
            })
            .await?
            .ok_or_else(|| ServiceError::ChannelRefused("the run vanished".into()))
    }

    /// Applies one repair candidate through the results transition and records what it did:
    /// (the new discrepancy's kind, if it was new; whether the transition applied it).
    async fn repair_one(
        &self,
        id: Uuid,
        channel: Channel,
        day: NaiveDate,
        c: recon::RepairCandidate,
    ) -> Result<(Option<String>, bool), ServiceError> {
        let ch = channel.as_str();
        let outcome = self
            .apply_payment_result(PaymentResult {
                channel,
                event_id: format!("recon:{day}:{}", c.out_trade_no),
                out_trade_no: c.out_trade_no.clone(),
                state: TradeState::Succeeded,
                channel_trade_no: Some(c.channel_trade_no.clone()).filter(|s| !s.is_empty()),
                paid: Some((c.amount_minor, c.currency.clone())),
                paid_at: c.at,
                channel_status: "RECONCILIATION".into(),
            })
            .await?;
        use super::results::ResultOutcome as O;
        let fixed = matches!(outcome, O::Applied | O::DuplicatePayment | O::Repeated);
        let ops = self.sinks.ops_app.clone();
        let new = self
            .db
            .run(move |conn| {
                conn.transaction(|conn| {
                    let Some(d) = recon::record_repair(conn, id, ch, day, &c, fixed)? else {
                        return Ok::<_, StorageError>(None);
                    };
                    let run = recon::get_run(conn, id)?
                        .ok_or_else(|| StorageError::Corrupt(format!("run {id} vanished")))?;
                    events::record_discrepancy(conn, &ops, &run, &d)?;
                    Ok(Some(d.kind))
                })
            })
            .await?;
        Ok((new, fixed))
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

/// Appends a page to a batch of staged lines of run `run`; lines in no final state are staged
/// with their state name.
fn stage(batch: &mut Vec<StagedLine>, run: Uuid, lines: Vec<cpb::StatementLine>) {
    batch.extend(lines.into_iter().map(|l| {
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
        StagedLine {
            run_id: run,
            source_line: i64::try_from(l.source_line).unwrap_or(i64::MAX),
            kind: if refund { "REFUND" } else { "PAYMENT" },
            out_trade_no: l.out_trade_no,
            out_refund_no: l.out_refund_no,
            channel_trade_no: l.channel_trade_no,
            state,
            amount_minor: minor.abs(),
            currency,
            at: l.at.and_then(|t| {
                DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0))
            }),
        }
    }));
}

/// A batch being staged in the background.
type Staging = tokio::task::JoinHandle<Result<(), ServiceError>>;

async fn finish_staging(h: Option<Staging>) -> Result<(), ServiceError> {
    match h {
        Some(h) => h
            .await
            .map_err(|e| ServiceError::from(StorageError::Corrupt(format!("staging task: {e}"))))?,
        None => Ok(()),
    }
}

impl App {
    /// Waits for the batch in flight, then starts staging `batch`.
    async fn stage_next(
        &self,
        in_flight: &mut Option<Staging>,
        id: Uuid,
        channel: Channel,
        batch: Vec<StagedLine>,
    ) -> Result<(), ServiceError> {
        finish_staging(in_flight.take()).await?;
        let (db, metrics) = (self.db.clone(), self.metrics.clone());
        *in_flight = Some(tokio::spawn(async move {
            let n = batch.len() as u64;
            db.run(move |conn| recon::stage_page(conn, id, &batch))
                .await?;
            metrics
                .recon_lines
                .with_label_values(&[channel.as_str()])
                .inc_by(n);
            Ok(())
        }));
        Ok(())
    }
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
