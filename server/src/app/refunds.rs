//! Refunds: CreateRefund, the one idempotent transition for refund results (the creating call's
//! answer, ChannelEvents.ReportRefund, the refund query job), and the job itself.
//!
//! Money safety, in order of strength:
//! - the amount is reserved on the paying attempt by one conditional UPDATE in the transaction
//!   that records the refund (`storage::refunds::reserve`), under the order's row lock: refunds
//!   that are not FAILED can never add up to more than was captured, whatever the concurrency
//!   or the number of replicas; no Redis lock is involved (it could only turn concurrent refunds
//!   into ABORTED retries, and adds no safety the row lock does not give);
//! - the refund row is committed (PENDING, with its `out_refund_no`) before the channel is called,
//!   and no connection is held across the call: a crash after the call leaves a row the query
//!   job finds and settles;
//! - nothing is marked refunded unless the channel says so with the refund's own amount and
//!   currency; an unknown outcome stays PROCESSING and is queried, then flagged for a person.
use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::Connection;
use diesel::PgConnection;
use payproto::channel::v1 as cpb;

use super::events::{self as outbox_events, EventType, Extra};
use super::{App, Outcome, ServiceError, Subject};
use crate::channel_client::{CallFailure, timestamp};
use crate::domain::Order;
use crate::domain::{
    AppId, Channel, ChannelRefundState, NewRefund, OrderEvent, OrderId, OrderStatus, Refund,
    RefundEvent, RefundFilter, RefundResult, RefundStatus,
};
use crate::storage::events::{self, NewEvent};
use crate::storage::refunds::{self, NewRefundRow, RefundChange, RefundInsertRefused, RefundRow};
use crate::storage::{attempts, orders};
use anyhow::Context;

/// How unsettled refunds are followed up.
#[derive(Debug, Clone)]
pub struct RefundPolicy {
    /// After how long a PENDING refund (its creating call never came back: the process died, or
    /// Postgres was unreachable when the answer came) is picked up by the query job. Longer than
    /// the channel call timeout, so a live creator normally settles it first.
    pub pending_grace: Duration,
    /// Delays between queries of a PROCESSING refund, from the channel's answer on. Past the
    /// last, the refund is flagged for a person.
    pub query_delays: Vec<Duration>,
    /// How long a claimed refund is the claimer's (its next due time while being queried).
    pub claim_lease: Duration,
    /// How often the job looks for due refunds.
    pub tick: Duration,
    /// How many refunds one tick claims.
    pub batch: i64,
    /// How long a repeated CreateRefund waits for the first call's answer before answering with
    /// the refund as it stands.
    pub repeat_wait: Duration,
}

impl Default for RefundPolicy {
    fn default() -> Self {
        let s = Duration::from_secs;
        Self {
            pending_grace: s(20),
            query_delays: [
                5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21_600, 43_200, 86_400, 86_400,
                86_400,
            ]
            .into_iter()
            .map(s)
            .collect(),
            claim_lease: s(60),
            tick: s(1),
            batch: 32,
            repeat_wait: s(20),
        }
    }
}

/// Where a refund result came from (recorded as the actor of the change).
#[derive(Debug, Clone)]
pub enum RefundSource {
    /// The answer to our own Refund call (the creating call, or a re-send by the job).
    Answer,
    /// The refund query job's QueryRefund.
    Query,
    /// A channel notification, through ChannelEvents.ReportRefund (recorded in the inbox).
    Event {
        event_id: String,
        out_trade_no: String,
    },
}

impl RefundSource {
    fn actor(&self) -> String {
        match self {
            RefundSource::Answer => "channel:answer".to_owned(),
            RefundSource::Query => "channel:query".to_owned(),
            RefundSource::Event { event_id, .. } => format!("channel:event:{event_id}"),
        }
    }
}

/// What the core did with a refund result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefundOutcome {
    /// A repeat of an event already recorded: nothing was written.
    Repeated,
    /// The refund moved (to PROCESSING, SUCCEEDED or FAILED).
    Applied,
    /// Nothing changed: still in flight, or the refund is already in that state.
    NoChange,
    /// The channel said "succeeded" with another amount or currency, or with none: not believed;
    /// the refund stays in flight and is queried.
    AmountMismatch,
    /// The channel contradicts a final state (a success after a failure, or the reverse): nothing
    /// is changed, the refund is flagged for a person.
    Contradiction,
    /// No refund has this `out_refund_no`.
    UnknownRefund,
}

impl RefundOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            RefundOutcome::Repeated => "REPEATED",
            RefundOutcome::Applied => "APPLIED",
            RefundOutcome::NoChange => "NO_CHANGE",
            RefundOutcome::AmountMismatch => "AMOUNT_MISMATCH",
            RefundOutcome::Contradiction => "CONTRADICTION",
            RefundOutcome::UnknownRefund => "UNKNOWN_REFUND",
        }
    }
}

/// What the reserving transaction found.
enum Reserved {
    /// A new refund, recorded PENDING with its amount reserved; the channel is to be called.
    Created(Box<(RefundRow, attempts::AttemptRow)>),
    /// The app's refund with this request number and these parameters already exists.
    Existing(Box<RefundRow>),
}

/// A repeated refund_request_no must describe the same refund.
fn same_refund(existing: &RefundRow, new: &NewRefund) -> Result<(), ServiceError> {
    let differs = if existing.order_id != new.order_id.as_uuid() {
        Some("order_id")
    } else if existing.amount_minor != new.amount.minor() {
        Some("amount.amount_minor")
    } else if existing.currency.trim() != new.amount.currency().code() {
        Some("amount.currency")
    } else if existing.reason != new.reason {
        Some("reason")
    } else {
        None
    };
    match differs {
        None => Ok(()),
        Some(field) => Err(ServiceError::AlreadyExists(format!(
            "refund_request_no {} already names refund {} with a different {field}",
            existing.refund_request_no, existing.id
        ))),
    }
}

impl App {
    /// Records and sends a refund, or answers a repeat of its request number.
    ///
    /// # Errors
    /// `NotFound` (no such order for this app), `AlreadyExists` (the number names another
    /// refund), `Invalid` (another currency), `NotRefundable`, `RefundExceeds`,
    /// `ChannelDisabled`, `LeaseLost`, storage errors. A channel that refuses or cannot be
    /// reached is not an error: the refund comes back FAILED or PROCESSING.
    pub async fn create_refund(
        &self,
        app: AppId,
        new: NewRefund,
        encode: fn(&Refund) -> Vec<u8>,
    ) -> Result<Outcome<Refund>, ServiceError> {
        let reserved = match self.reserve_refund(app.clone(), new.clone()).await {
            // Another order of this app took the number between our lookup and our insert: the
            // second look finds it and names the difference.
            Err(ServiceError::Conflict(Subject::RefundRequestNo(_))) => {
                self.reserve_refund(app, new).await?
            }
            other => other?,
        };
        let (row, attempt) = match reserved {
            Reserved::Existing(row) => return self.repeat_of(*row).await,
            Reserved::Created(b) => *b,
        };
        let answer = self.send_refund(&row, &attempt).await;
        let next = Utc::now()
            + self
                .refunds
                .query_delays
                .first()
                .copied()
                .unwrap_or_default();
        let (_, refund) = self
            .apply_refund_result(answer, RefundSource::Answer, next)
            .await?;
        let refund = refund.ok_or_else(|| anyhow::anyhow!("the refund we created vanished"))?;
        let bytes = encode(&refund);
        let id = refund.id;
        self.db
            .run(move |conn| refunds::store_create_response(conn, id, &bytes))
            .await?;
        Ok(Outcome::Done(refund))
    }

    /// The transaction that decides and reserves: under the order's row lock, a repeat of the
    /// request number is found (and compared), the order's state and currency are checked, and
    /// the amount is reserved on the paying attempt by one conditional UPDATE.
    async fn reserve_refund(&self, app: AppId, new: NewRefund) -> Result<Reserved, ServiceError> {
        let enabled: Vec<Channel> = Channel::ALL
            .into_iter()
            .filter(|c| self.channels.get(*c).is_ok())
            .collect();
        let ids = self.ids.clone();
        let grace = self.refunds.pending_grace;
        let audit = super::audit::current();
        self.db
            .run(move |conn| {
                conn.transaction(|conn| {
                    let order = orders::find_for_update_as(conn, &app, new.order_id)?
                        .ok_or(ServiceError::NotFound(Subject::Order(new.order_id)))?;
                    if let Some(existing) =
                        refunds::find_by_request_no(conn, &app, &new.refund_request_no)?
                    {
                        same_refund(&existing, &new)?;
                        return Ok(Reserved::Existing(Box::new(existing)));
                    }
                    if order.currency.trim() != new.amount.currency().code() {
                        return Err(crate::domain::FieldError::new(
                            "amount.currency",
                            format!(
                                "must be the order's currency {}, got {}",
                                order.currency.trim(),
                                new.amount.currency().code()
                            ),
                        )
                        .into());
                    }
                    match order.status {
                        OrderStatus::Paid | OrderStatus::PartiallyRefunded => {}
                        other => return Err(ServiceError::NotRefundable(other)),
                    }
                    let attempt =
                        attempts::paying_attempt(conn, new.order_id)?.ok_or_else(|| {
                            anyhow::anyhow!(
                                "order {} is {} but no attempt paid it",
                                order.id,
                                order.status
                            )
                        })?;
                    if !enabled.contains(&attempt.channel) {
                        return Err(crate::channel_client::ChannelDisabled(attempt.channel).into());
                    }
                    let amount = new.amount.minor();
                    if let Err(remaining) = refunds::reserve(conn, attempt.id, amount)? {
                        return Err(ServiceError::RefundExceeds {
                            requested: amount,
                            remaining,
                            paid: attempt.paid_minor.unwrap_or(0),
                            currency: order.currency.trim().to_owned(),
                        });
                    }
                    let out_refund_no = ids.out_trade_no().ok_or(ServiceError::LeaseLost)?;
                    let row = NewRefundRow {
                        id: uuid::Uuid::now_v7(),
                        app_id: app.as_str(),
                        order_id: order.id,
                        attempt_id: attempt.id,
                        refund_request_no: &new.refund_request_no,
                        out_refund_no: &out_refund_no,
                        channel: attempt.channel,
                        amount_minor: amount,
                        currency: order.currency.trim(),
                        reason: &new.reason,
                        status: RefundStatus::Pending,
                        requested_by: app.as_str(),
                        operator: new.operator.as_deref(),
                        next_query_at: Utc::now()
                            + chrono::Duration::from_std(grace).unwrap_or_default(),
                        duplicate_payment_id: None,
                    };
                    let actor = match &new.operator {
                        Some(op) => format!("app:{} operator:{op}", app.as_str()),
                        None => format!("app:{}", app.as_str()),
                    };
                    match refunds::insert(conn, &row, &actor)? {
                        Ok(r) => {
                            super::audit::record(
                                conn,
                                audit.as_ref(),
                                "/CreateRefund",
                                &super::audit::Targets {
                                    order_id: Some(r.order_id),
                                    refund_id: Some(r.id),
                                    target: Some(r.refund_request_no.clone()),
                                    ..Default::default()
                                },
                            )?;
                            Ok(Reserved::Created(Box::new((r, attempt))))
                        }
                        Err(RefundInsertRefused::RequestNoTaken) => Err(ServiceError::Conflict(
                            Subject::RefundRequestNo(new.refund_request_no.clone()),
                        )),
                        Err(RefundInsertRefused::RefundNoTaken) => Err(ServiceError::Conflict(
                            Subject::OutRefund(out_refund_no.clone()),
                        )),
                    }
                })
            })
            .await
    }

    /// A repeat of a request number: the first call's response, byte for byte, once it has one.
    /// While the first call is still talking to the channel, waits for it (bounded); a first
    /// call that died leaves the refund to the query job, and the repeat gets it as it stands.
    async fn repeat_of(&self, row: RefundRow) -> Result<Outcome<Refund>, ServiceError> {
        let deadline = tokio::time::Instant::now() + self.refunds.repeat_wait;
        let mut current = row;
        loop {
            if let Some(bytes) = current.create_response.take() {
                return Ok(Outcome::Replayed(bytes));
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(Outcome::Done(Refund::from(current)));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
            let no = current.out_refund_no.clone();
            current = self
                .db
                .run(move |conn| refunds::find_by_out_refund_no(conn, &no))
                .await?
                .ok_or_else(|| anyhow::anyhow!("refund {} vanished", current.out_refund_no))?;
        }
    }

    /// Calls the channel's Refund with the refund's own, stable number. Never fails: a call
    /// without a usable answer is a result in an unknown state.
    async fn send_refund(&self, row: &RefundRow, attempt: &attempts::AttemptRow) -> RefundResult {
        let req = cpb::RefundRequest {
            out_trade_no: attempt.out_trade_no.clone(),
            out_refund_no: row.out_refund_no.clone(),
            refund: Some(cpb_money(row.amount_minor, &row.currency)),
            total: Some(cpb_money(
                attempt.paid_minor.unwrap_or(attempt.amount_minor),
                &attempt.currency,
            )),
            reason: row.reason.clone(),
            channel_trade_no: attempt.channel_trade_no.clone().unwrap_or_default(),
            created_at: Some(timestamp(row.created_at)),
        };
        let answer = match self.channels.get(row.channel) {
            Ok(mut client) => client.refund(req).await.map(|r| r.into_inner().result),
            Err(e) => Err(tonic::Status::unavailable(e.to_string())),
        };
        self.read_answer(row, answer)
    }

    /// One reading of a Refund or QueryRefund answer.
    fn read_answer(
        &self,
        row: &RefundRow,
        answer: Result<Option<cpb::RefundResult>, tonic::Status>,
    ) -> RefundResult {
        let unknown = |status: String| RefundResult {
            channel: row.channel,
            out_refund_no: row.out_refund_no.clone(),
            state: ChannelRefundState::Unknown,
            channel_refund_no: None,
            refunded: None,
            succeeded_at: None,
            channel_status: status,
        };
        match answer {
            Ok(Some(r)) if r.out_refund_no == row.out_refund_no => {
                refund_result_from_pb(row.channel, r)
            }
            Ok(Some(r)) => unknown(format!(
                "the adapter answered for refund {:?}; not believed",
                r.out_refund_no
            )),
            Ok(None) => unknown("the adapter answered without a result".to_owned()),
            Err(status) => match CallFailure::from(&status) {
                // The platform's final refusal of this refund: nothing moved.
                CallFailure::Refused | CallFailure::Invalid => RefundResult {
                    state: ChannelRefundState::Failed,
                    channel_status: format!("refused: {}", status.message()),
                    ..unknown(String::new())
                },
                CallFailure::OutcomeUnknown | CallFailure::Untrusted | CallFailure::Unavailable => {
                    tracing::warn!(
                        channel = %row.channel,
                        out_refund_no = %row.out_refund_no,
                        code = ?status.code(),
                        message = status.message(),
                        "refund call without a usable answer; the query job settles it"
                    );
                    unknown(format!(
                        "no answer ({:?}): {}",
                        status.code(),
                        status.message()
                    ))
                }
            },
        }
    }

    /// Applies a channel's refund result exactly once (per channel event for notifications).
    /// `next_query_at` is when the query job looks again if the refund is still in flight.
    ///
    /// # Errors
    /// `PermissionDenied` when the refund belongs to another channel; storage errors.
    pub async fn apply_refund_result(
        &self,
        r: RefundResult,
        source: RefundSource,
        next_query_at: DateTime<Utc>,
    ) -> Result<(RefundOutcome, Option<Refund>), ServiceError> {
        let channel = r.channel;
        let audit = super::audit::current();
        let (outcome, settled, row) = self
            .db
            .run(move |conn| {
                if let RefundSource::Event { event_id, .. } = &source
                    && events::seen(conn, channel.as_str(), event_id)?
                {
                    if let Some(a) = &audit {
                        a.repeat_of_a_recorded_event();
                    }
                    return Ok((RefundOutcome::Repeated, None, None));
                }
                match conn.transaction(|conn| {
                    let applied = apply_in_tx(conn, &r, &source, next_query_at)?;
                    let target = match &source {
                        RefundSource::Event { event_id, .. } => Some(event_id.clone()),
                        _ => None,
                    };
                    super::audit::record(
                        conn,
                        audit.as_ref(),
                        "/ReportRefund",
                        &super::audit::Targets {
                            refund_id: applied.2.as_ref().map(|row| row.id),
                            order_id: applied.2.as_ref().map(|row| row.order_id),
                            target,
                            ..Default::default()
                        },
                    )?;
                    Ok(applied)
                }) {
                    Err(ServiceError::Conflict(_))
                        if matches!(&source, RefundSource::Event { event_id, .. }
                            if events::seen(conn, channel.as_str(), event_id)?) =>
                    {
                        if let Some(a) = &audit {
                            a.repeat_of_a_recorded_event();
                        }
                        Ok((RefundOutcome::Repeated, None, None))
                    }
                    other => other,
                }
            })
            .await?;
        let m = &self.metrics;
        m.channel_events
            .with_label_values(&[channel.as_str(), "REFUND", outcome.as_str()])
            .inc();
        if let (Some(status), Some(row)) = (settled, &row) {
            let outcome = match status {
                RefundStatus::Succeeded => {
                    m.refunded_minor
                        .with_label_values(&[channel.as_str(), row.currency.trim()])
                        .inc_by(u64::try_from(row.amount_minor).unwrap_or(0));
                    "succeeded"
                }
                _ => "failed",
            };
            m.refunds
                .with_label_values(&[channel.as_str(), outcome])
                .inc();
            if row.duplicate_payment_id.is_some() {
                m.duplicate_refunds
                    .with_label_values(&[channel.as_str(), outcome])
                    .inc();
            }
        }
        match outcome {
            RefundOutcome::Contradiction => {
                m.refunds_flagged
                    .with_label_values(&[channel.as_str(), "contradiction"])
                    .inc();
                tracing::error!(%channel, refund = ?row.as_ref().map(|r| &r.out_refund_no), "the channel contradicts a settled refund; flagged for a person");
            }
            RefundOutcome::AmountMismatch => {
                m.amount_mismatches
                    .with_label_values(&[channel.as_str()])
                    .inc();
                tracing::error!(%channel, refund = ?row.as_ref().map(|r| &r.out_refund_no), "the channel reported a refund success with another amount or without one; not believed");
            }
            RefundOutcome::UnknownRefund => {
                tracing::error!(%channel, "the channel reported a refund no refund row knows");
            }
            RefundOutcome::Repeated | RefundOutcome::Applied | RefundOutcome::NoChange => {}
        }
        Ok((outcome, row.map(Refund::from)))
    }

    pub async fn get_refund(&self, app: AppId, id: uuid::Uuid) -> Result<Refund, ServiceError> {
        self.db
            .run(move |conn| refunds::find(conn, &app, id))
            .await?
            .map(Refund::from)
            .ok_or(ServiceError::NotFound(Subject::Refund(id)))
    }

    pub async fn get_refund_by_request_no(
        &self,
        app: AppId,
        no: String,
    ) -> Result<Refund, ServiceError> {
        self.db
            .run({
                let no = no.clone();
                move |conn| refunds::find_by_request_no(conn, &app, &no)
            })
            .await?
            .map(Refund::from)
            .ok_or(ServiceError::NotFound(Subject::RefundRequestNo(no)))
    }

    /// # Errors
    /// `NotFound` when the filter names an order this app does not have.
    pub async fn list_refunds(
        &self,
        app: AppId,
        filter: RefundFilter,
    ) -> Result<Vec<Refund>, ServiceError> {
        Ok(self
            .db
            .run(move |conn| {
                if let Some(order) = filter.order_id {
                    let id = OrderId::from_uuid(order);
                    orders::find(conn, &app, id)?
                        .ok_or(ServiceError::NotFound(Subject::Order(id)))?;
                }
                Ok::<_, ServiceError>(refunds::list(conn, &app, &filter)?)
            })
            .await?
            .into_iter()
            .map(Refund::from)
            .collect())
    }

    /// One pass of the refund query job: claims due refunds (`FOR UPDATE SKIP LOCKED`, shared
    /// by replicas), asks each one's channel, and applies the answer through the one transition.
    /// A refund the channel has no record of is sent again with its same `out_refund_no` (every
    /// platform here treats a refund number as the refund: a re-send cannot refund twice). A
    /// refund still unknown after the last scheduled query is flagged for a person.
    ///
    /// Returns how many refunds were looked at.
    pub async fn run_refund_queries(&self) -> Result<usize, ServiceError> {
        let batch = self.refunds.batch;
        let lease = self.refunds.claim_lease;
        let due = self
            .db
            .run(move |conn| refunds::claim_due(conn, batch, lease))
            .await?;
        let n = due.len();
        let mut tasks = tokio::task::JoinSet::new();
        for row in due {
            let app = self.clone();
            tasks.spawn(async move {
                let no = row.out_refund_no.clone();
                if let Err(e) = app.query_one_refund(row).await {
                    tracing::warn!(out_refund_no = %no, error = ?e, "refund query failed; retried at the end of its lease");
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        Ok(n)
    }

    async fn query_one_refund(&self, row: RefundRow) -> Result<(), ServiceError> {
        let attempt_id = row.attempt_id;
        let attempt = self
            .db
            .run(move |conn| attempts::find_by_id(conn, attempt_id))
            .await?
            .ok_or_else(|| anyhow::anyhow!("refund {} has no attempt", row.out_refund_no))?;
        // `queries` already counts this one (the claim incremented it).
        let made = usize::try_from(row.queries).unwrap_or(usize::MAX);
        let delays = &self.refunds.query_delays;
        let next = delays.get(made).map(|d| Utc::now() + *d);
        let req = cpb::QueryRefundRequest {
            out_trade_no: attempt.out_trade_no.clone(),
            out_refund_no: row.out_refund_no.clone(),
            created_at: Some(timestamp(row.created_at)),
        };
        let answer = match self.channels.get(row.channel) {
            Ok(mut client) => client
                .query_refund(req)
                .await
                .map(|r| r.into_inner().result),
            Err(e) => Err(tonic::Status::unavailable(e.to_string())),
        };
        let mut result = self.read_answer(&row, answer);
        self.metrics
            .refund_queries
            .with_label_values(&[row.channel.as_str(), result.state.as_str()])
            .inc();
        let mut source = RefundSource::Query;
        if result.state == ChannelRefundState::NotFound {
            // Never reached the platform (or the creating call died before sending): the same
            // number again.
            tracing::info!(out_refund_no = %row.out_refund_no, "the channel has no such refund; sending it again with the same number");
            result = self.send_refund(&row, &attempt).await;
            source = RefundSource::Answer;
            if result.state == ChannelRefundState::Failed
                && !refusal_of_resend_is_final(row.channel)
            {
                result.state = ChannelRefundState::Unknown;
                result.channel_status =
                    format!("a re-send was refused ({})", result.channel_status);
            }
        }
        // A refund still in flight keeps the claim's lease as its next due time until it is
        // rescheduled below.
        let due = next.unwrap_or_else(Utc::now);
        let (_, after) = self.apply_refund_result(result, source, due).await?;
        let Some(after) = after else { return Ok(()) };
        if after.status.is_final() {
            return Ok(());
        }
        let id = after.id;
        match next {
            Some(at) => {
                self.db
                    .run(move |conn| refunds::schedule(conn, id, at))
                    .await?;
            }
            None => {
                let flagged = self
                    .db
                    .run(move |conn| {
                        conn.transaction(|conn| {
                            let reason = "outcome unknown after the last scheduled query";
                            if !refunds::flag_for_attention(
                                conn,
                                id,
                                reason,
                                refunds::FlagIf::Unsettled,
                            )? {
                                return Ok::<_, ServiceError>(false);
                            }
                            let refund =
                                refunds::find_by_out_refund_no(conn, &after.out_refund_no)?
                                    .ok_or_else(|| anyhow::anyhow!("refund {id} vanished"))?;
                            let order =
                                orders::find_by_id(conn, OrderId::from_uuid(refund.order_id))?
                                    .ok_or_else(|| anyhow::anyhow!("refund {id} has no order"))?;
                            outbox_events::record(
                                conn,
                                EventType::RefundNeedsAttention,
                                &Order::from(order),
                                Extra {
                                    refund: Some(&Refund::from(refund)),
                                    detail: reason,
                                    ..Extra::default()
                                },
                            )?;
                            Ok(true)
                        })
                    })
                    .await?;
                if flagged {
                    self.metrics
                        .refunds_flagged
                        .with_label_values(&[row.channel.as_str(), "unknown_after_last_query"])
                        .inc();
                    tracing::error!(
                        channel = %row.channel,
                        out_refund_no = %row.out_refund_no,
                        refund_id = %row.id,
                        queries = row.queries,
                        "refund outcome still unknown after the last query: flagged for a person, never guessed"
                    );
                }
            }
        }
        Ok(())
    }

    /// Refreshes the unsettled-refund gauges (one aggregate query).
    pub async fn refresh_refund_gauges(&self) -> Result<(), ServiceError> {
        let rows = self.db.run(refunds::unsettled_by_channel).await?;
        for c in Channel::ALL {
            let u = rows
                .iter()
                .find(|u| u.channel == c)
                .copied()
                .unwrap_or(refunds::Unsettled {
                    channel: c,
                    count: 0,
                    needing_attention: 0,
                    oldest_age_secs: 0,
                });
            let m = &self.metrics;
            m.refunds_unsettled
                .with_label_values(&[c.as_str()])
                .set(u.count);
            m.refunds_needing_attention
                .with_label_values(&[c.as_str()])
                .set(u.needing_attention);
            m.refunds_oldest_unsettled_age
                .with_label_values(&[c.as_str()])
                .set(u.oldest_age_secs);
        }
        Ok(())
    }
}

/// Records, in the caller's transaction (the one that recorded the duplicate payment), the
/// refund that gives a duplicate payment back in full: reserved on the duplicate attempt (never
/// on the paying attempt's refundable amount), PENDING and due at once, so the refund query job
/// sends it (a refund the channel does not know yet is sent with its number). Its numbers derive
/// from the duplicate attempt's, so a second detection of the same duplicate cannot make a second
/// refund.
///
/// # Errors
/// Storage errors; `Internal` if the duplicate attempt cannot be reserved in full (a bug).
pub fn create_duplicate_refund(
    conn: &mut PgConnection,
    order: &orders::OrderRow,
    attempt: &attempts::AttemptRow,
    duplicate_payment_id: uuid::Uuid,
) -> Result<Refund, ServiceError> {
    let amount = attempt.paid_minor.unwrap_or(attempt.amount_minor);
    if let Err(left) = refunds::reserve(conn, attempt.id, amount)? {
        return Err(anyhow::anyhow!(
            "duplicate attempt {} has only {left} of {amount} refundable",
            attempt.out_trade_no
        )
        .into());
    }
    let digits = attempt
        .out_trade_no
        .trim_start_matches(|c: char| !c.is_ascii_digit());
    let out_refund_no = format!("R{digits}");
    let request_no = format!("DUP-{}", attempt.out_trade_no);
    let row = NewRefundRow {
        id: uuid::Uuid::now_v7(),
        app_id: &order.app_id,
        order_id: order.id,
        attempt_id: attempt.id,
        refund_request_no: &request_no,
        out_refund_no: &out_refund_no,
        channel: attempt.channel,
        amount_minor: amount,
        currency: attempt.currency.trim(),
        reason: "duplicate payment",
        status: RefundStatus::Pending,
        requested_by: "system:duplicate-payment",
        operator: None,
        next_query_at: Utc::now(),
        duplicate_payment_id: Some(duplicate_payment_id),
    };
    let refund = match refunds::insert(conn, &row, "system:duplicate-payment")? {
        Ok(r) => r,
        Err(e) => {
            return Err(anyhow::anyhow!(
                "the refund of duplicate payment {duplicate_payment_id} collided ({e:?})"
            )
            .into());
        }
    };
    events::set_duplicate_status(conn, duplicate_payment_id, "REFUNDING")?;
    Ok(Refund::from(refund))
}

/// Whether the platform's refusal of a re-sent refund number says the refund failed. WeChat and
/// Alipay answer a repeated number with the refund it names (or refuse the refund itself), so
/// their refusal is about the refund; UnionPay refuses any repeated `orderId` as a duplicate,
/// so its refusal of a re-send proves nothing and the refund stays in flight (queried, then
/// flagged for a person).
fn refusal_of_resend_is_final(channel: Channel) -> bool {
    match channel {
        Channel::Wechat | Channel::Alipay => true,
        Channel::Unionpay => false,
    }
}

fn cpb_money(minor: i64, currency: &str) -> payproto::common::v1::Money {
    payproto::common::v1::Money {
        amount_minor: minor,
        currency: currency.trim().to_owned(),
    }
}

/// The contract's refund result as the core's. An unspecified state is UNKNOWN: never final.
pub fn refund_result_from_pb(channel: Channel, r: cpb::RefundResult) -> RefundResult {
    let state = match cpb::RefundState::try_from(r.state) {
        Ok(cpb::RefundState::Processing) => ChannelRefundState::Processing,
        Ok(cpb::RefundState::Succeeded) => ChannelRefundState::Succeeded,
        Ok(cpb::RefundState::Failed) => ChannelRefundState::Failed,
        Ok(cpb::RefundState::NotFound) => ChannelRefundState::NotFound,
        Ok(cpb::RefundState::Unknown | cpb::RefundState::Unspecified) | Err(_) => {
            ChannelRefundState::Unknown
        }
    };
    RefundResult {
        channel,
        out_refund_no: r.out_refund_no,
        state,
        channel_refund_no: Some(r.channel_refund_no).filter(|s| !s.is_empty()),
        refunded: r.refunded.map(|m| (m.amount_minor, m.currency)),
        succeeded_at: r
            .succeeded_at
            .and_then(|t| DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0))),
        channel_status: r.channel_status,
    }
}

/// (outcome, the final status reached if this result settled the refund, the refund after).
type Applied = (RefundOutcome, Option<RefundStatus>, Option<RefundRow>);

fn apply_in_tx(
    conn: &mut PgConnection,
    r: &RefundResult,
    source: &RefundSource,
    next_query_at: DateTime<Utc>,
) -> Result<Applied, ServiceError> {
    let applied = decide_and_apply(conn, r, source, next_query_at)?;
    if let RefundSource::Event {
        event_id,
        out_trade_no,
    } = source
    {
        let payload = serde_json::json!({
            "out_refund_no": r.out_refund_no,
            "state": r.state.as_str(),
            "channel_refund_no": r.channel_refund_no,
            "refunded_minor": r.refunded.as_ref().map(|p| p.0),
            "refunded_currency": r.refunded.as_ref().map(|p| p.1.clone()),
            "succeeded_at": r.succeeded_at,
            "channel_status": r.channel_status,
        });
        let first = events::record(
            conn,
            &NewEvent {
                channel: r.channel.as_str(),
                event_id,
                kind: "REFUND",
                out_trade_no,
                state: r.state.as_str(),
                outcome: applied.0.as_str(),
                payload,
            },
        )?;
        if !first {
            return Err(ServiceError::Conflict(Subject::Event(event_id.clone())));
        }
    }
    Ok(applied)
}

fn decide_and_apply(
    conn: &mut PgConnection,
    r: &RefundResult,
    source: &RefundSource,
    next_query_at: DateTime<Utc>,
) -> Result<Applied, ServiceError> {
    let Some(peek) = refunds::find_by_out_refund_no(conn, &r.out_refund_no)? else {
        return Ok((RefundOutcome::UnknownRefund, None, None));
    };
    if peek.channel != r.channel {
        return Err(ServiceError::PermissionDenied(format!(
            "{} may not report refunds of channel {}",
            r.channel, peek.channel
        )));
    }
    // Lock order, then refund: the order every writer uses.
    let order = orders::find_for_update(conn, OrderId::from_uuid(peek.order_id))?
        .ok_or_else(|| anyhow::anyhow!("refund {} has no order", r.out_refund_no))?;
    let refund = refunds::find_by_out_refund_no_for_update(conn, &r.out_refund_no)?
        .ok_or_else(|| anyhow::anyhow!("refund {} vanished", r.out_refund_no))?;
    let actor = source.actor();
    let mut event = r.state.event();
    let mut outcome = RefundOutcome::Applied;
    // A success that does not state this refund's amount (Alipay's notify carries only the
    // trade's cumulative refund_fee) is not believed either, but is no alarm: it is confirmed by
    // a query at once.
    let mut confirm_now = false;
    if event == RefundEvent::Succeeded {
        match &r.refunded {
            Some((minor, cur))
                if *minor == refund.amount_minor && cur.trim() == refund.currency.trim() => {}
            Some(_) => {
                event = RefundEvent::InFlight;
                outcome = RefundOutcome::AmountMismatch;
            }
            None => {
                event = RefundEvent::InFlight;
                confirm_now = true;
            }
        }
    }
    let next = match refund.status.apply(event) {
        Ok(next) => next,
        Err(_) => {
            let same = matches!(
                (refund.status, event),
                (RefundStatus::Succeeded, RefundEvent::Succeeded)
                    | (RefundStatus::Failed, RefundEvent::Failed)
                    | (_, RefundEvent::InFlight)
            );
            if same {
                return Ok((
                    if outcome == RefundOutcome::AmountMismatch {
                        outcome
                    } else {
                        RefundOutcome::NoChange
                    },
                    None,
                    Some(refund),
                ));
            }
            refunds::flag_for_attention(
                conn,
                refund.id,
                &format!(
                    "the channel said {} ({}) after the refund was {}",
                    r.state.as_str(),
                    r.channel_status,
                    refund.status
                ),
                refunds::FlagIf::Any,
            )?;
            let after = refunds::find_by_out_refund_no(conn, &r.out_refund_no)?;
            if let Some(a) = &after {
                outbox_events::record(
                    conn,
                    EventType::RefundNeedsAttention,
                    &Order::from(order.clone()),
                    Extra {
                        refund: Some(&Refund::from(a.clone())),
                        detail: "the channel contradicts the refund's final state",
                        ..Extra::default()
                    },
                )?;
            }
            return Ok((RefundOutcome::Contradiction, None, after));
        }
    };
    let conflict = || ServiceError::Conflict(Subject::OutRefund(r.out_refund_no.clone()));
    let mut change = RefundChange {
        channel_refund_no: r.channel_refund_no.clone(),
        channel_status: Some(r.channel_status.clone()).filter(|s| !s.is_empty()),
        ..RefundChange::default()
    };
    match next {
        RefundStatus::Processing => {
            change.next_query_at = Some(if confirm_now {
                Utc::now()
            } else if refund.status == RefundStatus::Processing {
                refund.next_query_at.unwrap_or(next_query_at)
            } else {
                next_query_at
            });
            let after = refunds::transition(
                conn,
                refund.id,
                refund.status,
                refund.version,
                next,
                change,
                &actor,
                "in flight at the channel",
            )?
            .ok_or_else(conflict)?;
            let outcome = if outcome == RefundOutcome::AmountMismatch {
                outcome
            } else if refund.status == RefundStatus::Processing {
                RefundOutcome::NoChange
            } else {
                RefundOutcome::Applied
            };
            Ok((outcome, None, Some(after)))
        }
        RefundStatus::Failed => {
            change.failure_reason = Some(if r.channel_status.is_empty() {
                "the channel reports the refund failed".to_owned()
            } else {
                r.channel_status.clone()
            });
            let after = refunds::transition(
                conn,
                refund.id,
                refund.status,
                refund.version,
                next,
                change,
                &actor,
                "the channel refused or closed it",
            )?
            .ok_or_else(conflict)?;
            refunds::release(conn, refund.attempt_id, refund.amount_minor)?;
            if let Some(dup) = refund.duplicate_payment_id {
                events::set_duplicate_status(conn, dup, "REFUND_FAILED")?;
            }
            outbox_events::record(
                conn,
                EventType::RefundFailed,
                &Order::from(order.clone()),
                Extra {
                    refund: Some(&Refund::from(after.clone())),
                    ..Extra::default()
                },
            )?;
            Ok((RefundOutcome::Applied, Some(next), Some(after)))
        }
        RefundStatus::Succeeded => {
            change.succeeded_at = Some(r.succeeded_at.unwrap_or_else(Utc::now));
            let after = refunds::transition(
                conn,
                refund.id,
                refund.status,
                refund.version,
                next,
                change,
                &actor,
                "the channel confirmed the money went back",
            )?
            .ok_or_else(conflict)?;
            refunds::add_refunded(conn, refund.attempt_id, refund.amount_minor)?;
            let view = Refund::from(after.clone());
            // A duplicate payment's refund gives back the duplicate attempt's money: the order's
            // own refunded total and status are not its business.
            if let Some(dup) = refund.duplicate_payment_id {
                events::set_duplicate_status(conn, dup, "REFUNDED")?;
                outbox_events::record(
                    conn,
                    EventType::RefundSucceeded,
                    &Order::from(order.clone()),
                    Extra {
                        refund: Some(&view),
                        detail: "duplicate payment refunded",
                        ..Extra::default()
                    },
                )?;
            } else {
                let refunded = order.refunded_minor + refund.amount_minor;
                let fully = refunded >= order.paid_minor;
                let to = order
                    .status
                    .apply(OrderEvent::RefundSucceeded { fully })
                    .context("a succeeded refund of an order the state machine refuses")?;
                let reason = if fully {
                    "refunded in full"
                } else {
                    "partially refunded"
                };
                let updated = Order::from(
                    orders::record_refund(conn, &order, refund.amount_minor, to, reason)?
                        .ok_or_else(|| ServiceError::Conflict(Subject::Order(order.order_id())))?,
                );
                let extra = || Extra {
                    refund: Some(&view),
                    ..Extra::default()
                };
                outbox_events::record(conn, EventType::RefundSucceeded, &updated, extra())?;
                let order_kind = if fully {
                    EventType::OrderRefunded
                } else {
                    EventType::OrderPartiallyRefunded
                };
                outbox_events::record(conn, order_kind, &updated, extra())?;
            }
            Ok((RefundOutcome::Applied, Some(next), Some(after)))
        }
        RefundStatus::Pending => {
            Err(anyhow::anyhow!("the refund machine went back to PENDING").into())
        }
    }
}
