//! The one idempotent transition for channel results: callbacks (through ChannelEvents) and the
//! answers of active calls (close, query) all go through [`App::apply_payment_result`].
//!
//! In one transaction: record the event in the inbox (unique per channel event), check amount and
//! currency against the attempt, move the attempt and the order through their state machines, and
//! record a duplicate payment when a second attempt of an already paid order succeeds.
use chrono::Utc;
use diesel::Connection;
use diesel::PgConnection;

use super::events::{self as outbox_events, EventType, Extra};
use super::{App, ServiceError, Subject};
pub use crate::domain::PaymentResult;
use crate::domain::{Attempt, Order};
use crate::domain::{AttemptEvent, AttemptStatus, OrderEvent, OrderId, OrderStatus, TradeState};
use crate::storage::attempts::{self, AttemptChange};
use crate::storage::events::{self, NewEvent};
use crate::storage::orders::{self, Transition, WriteRefused};
use crate::storage::steps;
use anyhow::Context;

/// What the core did with a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultOutcome {
    /// A repeat of an event already recorded: nothing was written.
    Repeated,
    Applied,
    /// Recorded; no state changed (pending, unknown, or already in that state).
    NoChange,
    /// A success for an attempt that already succeeded with the same amount, channel trade
    /// number and channel, under a new event id (a platform's re-notification): nothing could
    /// change, so nothing was written, not even the inbox row (read-only, like a repeat).
    AlreadyApplied,
    /// A second successful attempt on a paid order: recorded for refund, alert fires.
    DuplicatePayment,
    /// The channel's amount or currency differs from the attempt's: nothing moved, a person looks.
    AmountMismatch,
    /// No attempt has this out_trade_no.
    UnknownAttempt,
}

impl ResultOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            ResultOutcome::Repeated => "REPEATED",
            ResultOutcome::Applied => "APPLIED",
            ResultOutcome::NoChange => "NO_CHANGE",
            ResultOutcome::AlreadyApplied => "ALREADY_APPLIED",
            ResultOutcome::DuplicatePayment => "DUPLICATE_PAYMENT",
            ResultOutcome::AmountMismatch => "AMOUNT_MISMATCH",
            ResultOutcome::UnknownAttempt => "UNKNOWN_ATTEMPT",
        }
    }
}

impl App {
    /// Applies a channel's payment result exactly once per (channel, event id).
    ///
    /// # Errors
    /// `PermissionDenied` when the attempt belongs to another channel; storage errors.
    pub async fn apply_payment_result(
        &self,
        r: PaymentResult,
    ) -> Result<ResultOutcome, ServiceError> {
        let channel = r.channel;
        let (out_trade_no, reported) = (r.out_trade_no.clone(), r.paid.clone());
        let (reported_minor, reported_currency) = reported.unzip();
        let audit = super::audit::current();
        let metrics = self.metrics.clone();
        let single_statement = self.single_statement_writes;
        let (outcome, superseded) = self
            .db
            .run(move |conn| {
                // One read without locks: a repeat costs that read, no lock and no write.
                let ctx =
                    steps::result_context(conn, channel.as_str(), &r.event_id, &r.out_trade_no)?;
                if ctx.seen {
                    if let Some(a) = &audit {
                        a.repeat_of_a_recorded_event();
                    }
                    return Ok((ResultOutcome::Repeated, Vec::new()));
                }
                // The attempt as read serves the fast paths and the transaction alike (its
                // order and channel never change; the transaction locks the rows).
                let peek = ctx.known.as_ref().map(|(a, _, _)| a.clone());
                // A success already applied, re-notified under a new id: still no write.
                // Anything else (a contradiction, another amount) is recorded.
                if peek.as_ref().is_some_and(|a| already_applied(a, &r)) {
                    if let Some(a) = &audit {
                        a.repeat_of_a_recorded_event();
                    }
                    return Ok((ResultOutcome::AlreadyApplied, Vec::new()));
                }
                // The common case, a success that pays the order, in one statement.
                if single_statement
                    && let Some((a, o, seq)) = &ctx.known
                    && pay_in_one_statement(conn, &r, a, o, *seq, audit.as_ref(), &metrics)?
                {
                    return Ok((ResultOutcome::Applied, Vec::new()));
                }
                match conn.transaction(|conn| {
                    let applied = apply_in_tx(conn, &r, peek.as_ref())?;
                    super::audit::record(
                        conn,
                        audit.as_ref(),
                        "/ReportPayment",
                        &super::audit::Targets {
                            order_id: peek.as_ref().map(|a| a.order_id),
                            out_trade_no: Some(r.out_trade_no.clone()),
                            target: Some(r.event_id.clone()),
                            ..Default::default()
                        },
                    )?;
                    Ok(applied)
                }) {
                    // Another delivery of this very event committed first.
                    Err(ServiceError::Conflict(_))
                        if events::seen(conn, channel.as_str(), &r.event_id)? =>
                    {
                        if let Some(a) = &audit {
                            a.repeat_of_a_recorded_event();
                        }
                        Ok((ResultOutcome::Repeated, Vec::new()))
                    }
                    other => other,
                }
            })
            .await?;
        // The order is paid: any other trade of it still open at a channel (a second QR on the
        // payer's screen) is closed, so it cannot be paid too.
        for attempt in superseded {
            self.spawn_close_superseded(attempt);
        }
        let m = &self.metrics;
        m.channel_events
            .with_label_values(&[channel.as_str(), "PAYMENT", outcome.as_str()])
            .inc();
        match outcome {
            ResultOutcome::DuplicatePayment => {
                m.duplicate_payments
                    .with_label_values(&[channel.as_str()])
                    .inc();
                tracing::error!(%channel, %out_trade_no, ?reported_minor, ?reported_currency, "duplicate payment detected: an already paid order was paid again");
            }
            ResultOutcome::AmountMismatch => {
                m.amount_mismatches
                    .with_label_values(&[channel.as_str()])
                    .inc();
                tracing::error!(%channel, %out_trade_no, ?reported_minor, ?reported_currency, "channel reported an amount that differs from the attempt");
            }
            ResultOutcome::UnknownAttempt => {
                tracing::error!(%channel, %out_trade_no, ?reported_minor, ?reported_currency, "channel reported a trade no attempt knows");
            }
            ResultOutcome::Repeated
            | ResultOutcome::Applied
            | ResultOutcome::NoChange
            | ResultOutcome::AlreadyApplied => {}
        }
        Ok(outcome)
    }
}

/// Applies the result; also returns the order's other open attempts when this result paid it.
/// Whether `r` is a success that the attempt `a` already holds exactly: same channel,
/// SUCCEEDED, the same paid amount and currency, and the same channel trade number. `a` was
/// read without a lock: an attempt that is SUCCEEDED stays SUCCEEDED (final in the state
/// machine), so the answer cannot go stale.
fn already_applied(a: &attempts::AttemptRow, r: &PaymentResult) -> bool {
    let Some((paid_minor, paid_currency)) = &r.paid else {
        return false;
    };
    r.state == TradeState::Succeeded
        && a.channel == r.channel
        && a.status == AttemptStatus::Succeeded
        && a.paid_minor == Some(*paid_minor)
        && a.currency.trim() == paid_currency.trim()
        && r.channel_trade_no.is_some()
        && a.channel_trade_no == r.channel_trade_no
}

/// The common result, a success that pays its order, as one statement (`storage::steps`):
/// `true` when it committed. `false` (nothing written) when the result is anything else, or the
/// rows changed since they were read; the transaction then decides.
///
/// Only an open attempt qualifies: an order has at most one (the partial unique index
/// `payment_attempts_one_open_per_order`), so paying through it leaves no other trade of the
/// order to close, and a success on an order already paid (a duplicate payment) is refused by
/// the state machine here and handled by the transaction.
fn pay_in_one_statement(
    conn: &mut PgConnection,
    r: &PaymentResult,
    attempt: &attempts::AttemptRow,
    order: &orders::OrderRow,
    event_seq: i64,
    audit: Option<&super::audit::AuditCtx>,
    metrics: &crate::metrics::Metrics,
) -> Result<bool, ServiceError> {
    let Some((paid_minor, paid_currency)) = &r.paid else {
        return Ok(false);
    };
    if r.state != TradeState::Succeeded
        || attempt.channel != r.channel
        || *paid_minor != attempt.amount_minor
        || paid_currency.trim() != attempt.currency.trim()
        || !attempt.status.is_open()
    {
        return Ok(false);
    }
    let (Ok(attempt_to), Ok(order_to)) = (
        attempt.status.apply(AttemptEvent::Succeeded),
        order.status.apply(OrderEvent::PaymentSucceeded),
    ) else {
        return Ok(false);
    };
    let reason = if order.status == OrderStatus::Closed {
        "late payment on a closed order"
    } else {
        "paid"
    };
    let now = Utc::now();
    let at = steps::stored_instant(now);
    let succeeded_at = steps::stored_instant(r.paid_at.unwrap_or(now));
    let channel_trade_no = r
        .channel_trade_no
        .clone()
        .or_else(|| attempt.channel_trade_no.clone());
    // The rows as the statement leaves them, for the event.
    let paid_order = orders::OrderRow {
        status: order_to,
        version: order.version + 1,
        updated_at: at,
        closed_at: None,
        paid_minor: *paid_minor,
        ..order.clone()
    };
    let paid_attempt = attempts::AttemptRow {
        status: attempt_to,
        version: attempt.version + 1,
        updated_at: at,
        channel_trade_no: channel_trade_no.clone(),
        paid_minor: Some(*paid_minor),
        succeeded_at: Some(succeeded_at),
        ..attempt.clone()
    };
    let event_id = uuid::Uuid::now_v7();
    let payload = outbox_events::encode(
        EventType::OrderPaid,
        &Order::from(paid_order),
        &Extra {
            attempt: Some(&Attempt::from(paid_attempt)),
            detail: reason,
            ..Extra::default()
        },
        event_id,
        event_seq + 1,
        now,
    );
    let outcome = ResultOutcome::Applied;
    let record = super::audit::for_statement(
        audit,
        "/ReportPayment",
        &super::audit::Targets {
            order_id: Some(attempt.order_id),
            out_trade_no: Some(r.out_trade_no.clone()),
            target: Some(r.event_id.clone()),
            ..Default::default()
        },
    )?;
    let written = steps::pay_with_result(
        conn,
        &steps::PaidWrite {
            order,
            order_event_seq: event_seq,
            attempt,
            order_to,
            attempt_to,
            reason,
            at,
            paid_minor: *paid_minor,
            channel_trade_no: channel_trade_no.as_deref(),
            succeeded_at,
            event_id,
            event_type: EventType::OrderPaid.as_str(),
            payload: &payload,
            channel: r.channel.as_str(),
            channel_event_id: &r.event_id,
            state: r.state.as_str(),
            outcome: outcome.as_str(),
            inbox_payload: &inbox_payload(r),
            audit: record.as_ref().map(super::audit::InStatement::json),
        },
    )?;
    metrics
        .single_statement_writes
        .with_label_values(&[
            "payment_result",
            if written { "committed" } else { "refused" },
        ])
        .inc();
    if written {
        if let Some(record) = record {
            record.written();
        }
        metrics
            .order_transitions
            .with_label_values(&[order.status.as_str(), order_to.as_str()])
            .inc();
    }
    Ok(written)
}

/// What the inbox keeps of a result.
fn inbox_payload(r: &PaymentResult) -> serde_json::Value {
    serde_json::json!({
        "out_trade_no": r.out_trade_no,
        "state": r.state.as_str(),
        "channel_trade_no": r.channel_trade_no,
        "paid_minor": r.paid.as_ref().map(|p| p.0),
        "paid_currency": r.paid.as_ref().map(|p| p.1.clone()),
        "paid_at": r.paid_at,
        "channel_status": r.channel_status,
    })
}

/// `peek`: the attempt of `r.out_trade_no` as read before the transaction (`None`: unknown).
fn apply_in_tx(
    conn: &mut PgConnection,
    r: &PaymentResult,
    peek: Option<&attempts::AttemptRow>,
) -> Result<(ResultOutcome, Vec<attempts::AttemptRow>), ServiceError> {
    let (outcome, paid) = decide_and_apply(conn, r, peek)?;
    let superseded = match paid {
        Some((order, attempt)) => attempts::find_open_others(conn, order, attempt)?,
        None => Vec::new(),
    };
    let payload = inbox_payload(r);
    let first = events::record(
        conn,
        &NewEvent {
            channel: r.channel.as_str(),
            event_id: &r.event_id,
            kind: "PAYMENT",
            out_trade_no: &r.out_trade_no,
            state: r.state.as_str(),
            outcome: outcome.as_str(),
            payload,
        },
    )?;
    if !first {
        // A concurrent delivery of the same event won the race: undo ours.
        return Err(ServiceError::Conflict(Subject::Event(r.event_id.clone())));
    }
    Ok((outcome, superseded))
}

/// The outcome, plus (order, attempt) when this result made the order PAID.
type Decided = (ResultOutcome, Option<(OrderId, uuid::Uuid)>);

fn decide_and_apply(
    conn: &mut PgConnection,
    r: &PaymentResult,
    peek: Option<&attempts::AttemptRow>,
) -> Result<Decided, ServiceError> {
    let Some(peek) = peek else {
        return Ok((ResultOutcome::UnknownAttempt, None));
    };
    if peek.channel != r.channel {
        return Err(ServiceError::PermissionDenied(format!(
            "{} may not report attempts of channel {}",
            r.channel, peek.channel
        )));
    }
    // Lock order, then attempt: the same order every writer uses.
    let order_id = OrderId::from_uuid(peek.order_id);
    let order = orders::find_for_update(conn, order_id)?
        .ok_or_else(|| anyhow::anyhow!("attempt {} has no order", r.out_trade_no))?;
    let attempt = attempts::find_by_out_trade_no_for_update(conn, &r.out_trade_no)?
        .ok_or_else(|| anyhow::anyhow!("attempt {} vanished", r.out_trade_no))?;
    let a_status = attempt.status;
    let o_status = order.status;
    let now = Utc::now();
    match r.state {
        TradeState::Succeeded => {
            let Some((paid_minor, paid_currency)) = &r.paid else {
                return Ok((ResultOutcome::AmountMismatch, None));
            };
            if *paid_minor != attempt.amount_minor
                || paid_currency.trim() != attempt.currency.trim()
            {
                tracing::warn!(out_trade_no = %r.out_trade_no, expected_minor = attempt.amount_minor,
                    expected_currency = %attempt.currency, reported_minor = paid_minor,
                    reported_currency = %paid_currency, "amount mismatch");
                return Ok((ResultOutcome::AmountMismatch, None));
            }
            if a_status == AttemptStatus::Succeeded {
                return Ok((ResultOutcome::NoChange, None));
            }
            let next = a_status
                .apply(AttemptEvent::Succeeded)
                .context("an attempt the results transition chose refused Succeeded")?;
            let paid_attempt = attempts::transition(
                conn,
                attempt.id,
                a_status,
                next,
                AttemptChange {
                    channel_trade_no: r.channel_trade_no.clone(),
                    paid_minor: Some(*paid_minor),
                    succeeded_at: Some(r.paid_at.unwrap_or(now)),
                    ..AttemptChange::default()
                },
            )?
            .ok_or_else(|| ServiceError::Conflict(Subject::Trade(r.out_trade_no.clone())))?;
            match o_status.apply(OrderEvent::PaymentSucceeded) {
                Ok(to) => {
                    let reason = if o_status == OrderStatus::Closed {
                        "late payment on a closed order"
                    } else {
                        "paid"
                    };
                    let paid =
                        transition_unlocked(conn, &order, o_status, to, reason, *paid_minor)?;
                    outbox_events::record(
                        conn,
                        EventType::OrderPaid,
                        &Order::from(paid),
                        Extra {
                            attempt: Some(&Attempt::from(paid_attempt)),
                            detail: reason,
                            ..Extra::default()
                        },
                    )?;
                    Ok((ResultOutcome::Applied, Some((order_id, attempt.id))))
                }
                Err(_) => {
                    let dup = events::record_duplicate(
                        conn,
                        order.id,
                        attempt.id,
                        *paid_minor,
                        &attempt.currency,
                    )?;
                    let refund = match dup {
                        Some(dup_id) => Some(super::refunds::create_duplicate_refund(
                            conn,
                            &order,
                            &paid_attempt,
                            dup_id,
                        )?),
                        None => None,
                    };
                    outbox_events::record(
                        conn,
                        EventType::DuplicateDetected,
                        &Order::from(order.clone()),
                        Extra {
                            attempt: Some(&Attempt::from(paid_attempt)),
                            refund: refund.as_ref(),
                            detail: "an already paid order was paid again; the duplicate is refunded in full",
                        },
                    )?;
                    Ok((ResultOutcome::DuplicatePayment, None))
                }
            }
        }
        TradeState::Failed | TradeState::Closed => {
            if !a_status.is_open() {
                return Ok((ResultOutcome::NoChange, None));
            }
            let event = if r.state == TradeState::Failed {
                AttemptEvent::Failed
            } else {
                AttemptEvent::Closed
            };
            let next = a_status
                .apply(event)
                .context("an attempt the results transition chose refused its event")?;
            attempts::transition(conn, attempt.id, a_status, next, AttemptChange::default())?
                .ok_or_else(|| ServiceError::Conflict(Subject::Trade(r.out_trade_no.clone())))?;
            // The order's only open attempt ended unpaid: the payer may try again.
            if o_status == OrderStatus::Paying {
                let to = o_status.apply(OrderEvent::PaymentAbandoned)?;
                transition_unlocked(
                    conn,
                    &order,
                    o_status,
                    to,
                    "payment attempt ended unpaid",
                    order.paid_minor,
                )?;
            }
            Ok((ResultOutcome::Applied, None))
        }
        TradeState::Pending | TradeState::Unknown | TradeState::NotFound => {
            Ok((ResultOutcome::NoChange, None))
        }
    }
}

impl App {
    /// Closes, in the background, an open attempt of an order that another attempt has paid.
    /// A trade that cannot be closed yet (it may still come into existence until its deadline)
    /// is tried again once its deadline has lapsed; if the payer pays it meanwhile, that is a
    /// duplicate payment, recorded and counted like any other.
    fn spawn_close_superseded(&self, attempt: attempts::AttemptRow) {
        let app = self.clone();
        let task: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> = Box::pin(
            async move {
                for _ in 0..10 {
                    let wait = match app.close_at_channel(&attempt).await {
                        Ok(()) | Err(ServiceError::IllegalTransition(_)) => return,
                        Err(ServiceError::TradeStillPayable { .. }) => {
                            let margin = app.pay_windows.deadline_margin;
                            let left = (attempt.pay_deadline - Utc::now())
                                .to_std()
                                .unwrap_or_default();
                            left + margin + std::time::Duration::from_millis(100)
                        }
                        Err(e) => {
                            tracing::warn!(out_trade_no = %attempt.out_trade_no, error = ?e, "closing a superseded trade failed; retrying");
                            std::time::Duration::from_secs(5)
                        }
                    };
                    tokio::time::sleep(wait).await;
                }
                tracing::error!(out_trade_no = %attempt.out_trade_no, "a superseded trade could not be closed at its channel");
            },
        );
        tokio::spawn(task);
    }
}

/// An order transition by a writer that holds the order's row lock but not its Redis lock: it
/// keeps the current fence (it does not claim one).
fn transition_unlocked(
    conn: &mut PgConnection,
    order: &orders::OrderRow,
    from: OrderStatus,
    to: OrderStatus,
    reason: &str,
    paid_minor: i64,
) -> Result<orders::OrderRow, ServiceError> {
    let t = Transition {
        id: OrderId::from_uuid(order.id),
        from,
        to,
        expected_version: order.version,
        fence: order.fence,
        reason,
        at: Utc::now(),
        paid_minor,
    };
    match orders::transition(conn, &t)? {
        Ok(row) => Ok(row),
        Err(
            WriteRefused::StaleFence { .. } | WriteRefused::Conflict { .. } | WriteRefused::Missing,
        ) => Err(ServiceError::Conflict(Subject::Order(order.order_id()))),
    }
}
