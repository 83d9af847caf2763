//! Pay: open (or reuse) the order's payment attempt at a channel, under the order's lock.
//!
//! No database connection is held across a channel call: the attempt is committed as INIT
//! before Prepay, and moved to PAYING after. An INIT attempt whose Prepay answer was lost is
//! retried with the same `out_trade_no`, which the platforms treat as the same trade, so a retry
//! never opens a second one.
//!
//! The rules that keep one order from having two payable trades:
//! - every trade gets a channel-side deadline (`pay_deadline`, sent as the platform's
//!   `time_expire`/`payTimeout`), no later than the order's expiry;
//! - a trade whose parameters were handed out (PAYING) stays payable until its channel confirms
//!   it closed or its deadline has lapsed: "no such trade" is not "closed" (Alipay and UnionPay
//!   create a trade only when the payer scans or submits), so a switch or a close waits;
//! - the last write of Pay re-checks, under the order's row lock, what the Redis lock promised
//!   (attempt still open, order still payable, no newer fence); when it fails, the trade just
//!   opened is closed again and the caller gets an error, never parameters.
use std::collections::BTreeMap;

use chrono::Utc;
use diesel::Connection;
use payproto::channel::v1 as cpb;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use std::time::Duration;

use chrono::DateTime;

use super::results::{PaymentResult, ResultOutcome};
use super::{App, IdempotentWrite, Outcome, ServiceError, Subject};
use crate::channel_client::{CallFailure, method_to_pb, result_from_pb, timestamp};
use crate::domain::{
    AppId, AttemptEvent, AttemptStatus, Channel, IllegalTransition, OrderEvent, OrderId,
    OrderStatus, PayMethod, TradeState,
};
use crate::locks::LockGuard;
use crate::storage::attempts::{self, AttemptChange, AttemptRow, InsertRefused, NewAttemptRow};
use crate::storage::idempotency;
use crate::storage::orders::{self, OrderRow, Transition, WriteRefused};
use anyhow::Context;

/// How long a new trade stays payable at each channel, and how long past a deadline a channel's
/// "no such trade" or "pending" is still not taken as closed.
#[derive(Debug, Clone, Copy)]
pub struct PayWindows {
    pub wechat: Duration,
    pub alipay: Duration,
    pub unionpay: Duration,
    pub deadline_margin: Duration,
}

impl PayWindows {
    pub fn window(&self, c: Channel) -> Duration {
        match c {
            Channel::Wechat => self.wechat,
            Channel::Alipay => self.alipay,
            Channel::Unionpay => self.unionpay,
        }
    }

    /// The deadline of a trade opened `now` for an order expiring at `order_expires_at`: whole
    /// seconds (the platforms' formats), rounded down so the platform never accepts longer.
    pub fn deadline(
        &self,
        c: Channel,
        now: DateTime<Utc>,
        order_expires_at: DateTime<Utc>,
    ) -> DateTime<Utc> {
        let window = chrono::Duration::from_std(self.window(c)).unwrap_or(chrono::Duration::MAX);
        let d = now
            .checked_add_signed(window)
            .unwrap_or(order_expires_at)
            .min(order_expires_at);
        DateTime::from_timestamp(d.timestamp(), 0).unwrap_or(d)
    }

    /// Whether the attempt's trade can no longer be paid at its channel: its deadline plus the
    /// margin has passed.
    pub fn lapsed(&self, a: &AttemptRow, now: DateTime<Utc>) -> bool {
        let margin = chrono::Duration::from_std(self.deadline_margin).unwrap_or_default();
        now > a.pay_deadline + margin
    }

    /// Whether a PAYING attempt's parameters may still be handed out: enough of its window is
    /// left for a payer to use them (a quarter of the window, at most a minute).
    pub fn reusable(&self, a: &AttemptRow, now: DateTime<Utc>) -> bool {
        let window = a.pay_deadline - a.created_at;
        let margin = (window / 4).min(chrono::Duration::seconds(60));
        now + margin < a.pay_deadline
    }
}

impl Default for PayWindows {
    fn default() -> Self {
        Self {
            wechat: Duration::from_secs(7_200),
            alipay: Duration::from_secs(900),
            unionpay: Duration::from_secs(900),
            deadline_margin: Duration::from_secs(60),
        }
    }
}

/// Why the last write of a Pay was refused.
#[derive(Debug)]
enum CommitRefused {
    /// The attempt is no longer open: another call closed or failed it (or it was paid).
    AttemptGone(AttemptStatus),
    /// The order can no longer be paid.
    OrderFinal(OrderStatus),
    /// A newer lock holder has written the order.
    Fenced,
}

/// A validated Pay.
#[derive(Debug, Clone)]
pub struct PayCommand {
    pub order_id: OrderId,
    pub method: PayMethod,
    /// The payer's channel identity (WeChat openid), if the method needs one.
    pub payer_id: String,
    pub client_ip: String,
}

/// What Pay answers.
#[derive(Debug, Clone)]
pub struct PayOutcome {
    pub order: crate::domain::Order,
    pub attempt: crate::domain::Attempt,
    pub pay_params: BTreeMap<String, String>,
}

/// The payer's keyed hash (HMAC-SHA256 under the lookup key): a reused attempt must be for
/// the same payer, and equality is all that is needed, so the payer id itself is never stored.
fn payer_digest(payer_id: &str) -> Vec<u8> {
    crate::crypto::keys().lookup_hash("payer_id", payer_id)
}

/// Whether an attempt's stored digest names this payer. Attempts opened before keyed hashes
/// hold a plain SHA-256 (32 bytes); they are still recognised while open, and `payd reencrypt`
/// rewrites or clears them.
fn same_payer(stored: &[u8], payer_id: &str, digest: &[u8]) -> bool {
    stored == digest
        || (stored.len() == 32 && stored == Sha256::digest(payer_id.as_bytes()).as_slice())
}

fn params_of(a: &AttemptRow) -> BTreeMap<String, String> {
    a.pay_params
        .as_ref()
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default()
}

impl App {
    /// Pays an order through a channel. See `payment.v1.PaymentService.Pay` for the contract.
    pub async fn pay(
        &self,
        app: AppId,
        cmd: PayCommand,
        idem: Option<IdempotentWrite<PayOutcome>>,
    ) -> Result<Outcome<PayOutcome>, ServiceError> {
        let id = cmd.order_id;
        let (guard, read) = if self.single_statement_writes {
            // The lock's fencing token comes with the first read: one round trip for both.
            let pending = self.lock_order_unfenced(id).await?;
            let app_id = app.as_str().to_owned();
            let read = self
                .db
                .run(move |conn| crate::storage::steps::pay_context(conn, &app_id, id.as_uuid()))
                .await;
            match read {
                Ok(Some((fence, order, open))) => (
                    self.fence_order_lock(id, pending, fence).await?,
                    Some((order, open)),
                ),
                Ok(None) => {
                    self.locks.abandon(pending).await;
                    return Err(ServiceError::NotFound(Subject::Order(id)));
                }
                Err(e) => {
                    self.locks.abandon(pending).await;
                    return Err(e.into());
                }
            }
        } else {
            (self.lock_order(id).await?, None)
        };
        let r = self.pay_locked(app, cmd, &guard, idem, read).await;
        self.unlock(guard).await;
        if let Err(ServiceError::Fenced(_)) = &r {
            self.metrics.fence_rejections.inc();
        }
        r
    }

    /// `read`: the order and its open attempt as read under the lock, if the caller has read
    /// them already.
    async fn pay_locked(
        &self,
        app: AppId,
        cmd: PayCommand,
        guard: &LockGuard,
        idem: Option<IdempotentWrite<PayOutcome>>,
        read: Option<(OrderRow, Option<AttemptRow>)>,
    ) -> Result<Outcome<PayOutcome>, ServiceError> {
        // The key is checked under the lock and before any channel call: a concurrent Pay with
        // the same key and other parameters must not close this one's trade.
        if let Some(i) = &idem {
            let claim = i.claim.clone();
            let retention = self.idempotency_retention;
            if let Some(bytes) = self
                .db
                .run(move |conn| idempotency::lookup(conn, &claim, retention))
                .await?
            {
                return Ok(Outcome::Replayed(bytes));
            }
        }
        let id = cmd.order_id;
        let channel = cmd.method.channel();
        let digest = payer_digest(&cmd.payer_id);
        let (order, open) = match read {
            Some(read) => read,
            None => self.read_order_and_open_attempt(&app, id).await?,
        };
        ensure_payable(&order)?;
        let now = Utc::now();

        let attempt = match open {
            Some(a)
                if a.channel == channel
                    && a.method == cmd.method
                    && same_payer(&a.payer_digest, &cmd.payer_id, &digest)
                    && self.pay_windows.reusable(&a, now) =>
            {
                if a.status == AttemptStatus::Paying && a.pay_params.is_some() {
                    self.metrics
                        .attempts_reused
                        .with_label_values(&[channel.as_str()])
                        .inc();
                    return self
                        .commit_prepay(id, a.out_trade_no.clone(), None, guard.fence(), idem, None)
                        .await;
                }
                // INIT: an earlier Prepay's answer was lost; ask again with the same out_trade_no.
                a
            }
            // Another channel, method or payer, or parameters too close to their deadline: the
            // old trade is closed at its channel first (or this call waits until it can be).
            Some(other) => {
                self.close_at_channel(&other).await?;
                let (order, _) = self.read_order_and_open_attempt(&app, id).await?;
                ensure_payable(&order)?;
                let a = self
                    .create_attempt(&order, &cmd, &digest, guard.fence())
                    .await?;
                // The order was read again: the last write is guarded by that reading.
                return self
                    .prepay_and_commit(&order, a, &cmd, guard.fence(), idem)
                    .await;
            }
            None => {
                self.create_attempt(&order, &cmd, &digest, guard.fence())
                    .await?
            }
        };
        self.prepay_and_commit(&order, attempt, &cmd, guard.fence(), idem)
            .await
    }

    /// Asks the channel for the attempt's trade and commits the answer. `order`: the order as
    /// read under the lock, which guards the single-statement commit.
    async fn prepay_and_commit(
        &self,
        order: &OrderRow,
        attempt: AttemptRow,
        cmd: &PayCommand,
        fence: i64,
        idem: Option<IdempotentWrite<PayOutcome>>,
    ) -> Result<Outcome<PayOutcome>, ServiceError> {
        let id = cmd.order_id;
        let channel = cmd.method.channel();
        let mut client = self.channels.get(channel)?;
        let prepay = client
            .prepay(cpb::PrepayRequest {
                out_trade_no: attempt.out_trade_no.clone(),
                method: method_to_pb(cmd.method) as i32,
                amount: Some(cpb::Money {
                    amount_minor: order.amount_minor,
                    currency: order.currency.trim().to_owned(),
                }),
                subject: order.subject.clone(),
                // The trade's own deadline at the channel, never past the order's expiry.
                expires_at: Some(timestamp(attempt.pay_deadline)),
                payer_id: cmd.payer_id.clone(),
                payer_ip: cmd.client_ip.clone(),
                created_at: Some(timestamp(attempt.created_at)),
            })
            .await;
        match prepay {
            Ok(resp) => {
                self.commit_prepay(
                    id,
                    attempt.out_trade_no.clone(),
                    Some(resp.into_inner()),
                    fence,
                    idem,
                    Some((order, &attempt)),
                )
                .await
            }
            // A refusal is settled from a query; anything else leaves the outcome unknown, and
            // the INIT attempt is retried with the same out_trade_no by the next Pay.
            Err(status) => match CallFailure::from(&status) {
                f @ (CallFailure::Refused | CallFailure::Invalid) => {
                    tracing::info!(%channel, failure = ?f, "prepay refused; querying the trade");
                    self.settle_refused_prepay(&attempt, &status).await
                }
                f @ (CallFailure::OutcomeUnknown
                | CallFailure::Untrusted
                | CallFailure::Unavailable) => Err(ServiceError::ChannelUnavailable {
                    channel,
                    failure: Some(f),
                    detail: format!("prepay: {}", status.message()),
                }),
            },
        }
    }

    /// A refused Prepay says nothing certain about the trade (Alipay answers
    /// `ACQ.TRADE_HAS_SUCCESS` for a trade that was paid meanwhile): ask the channel and apply
    /// what it says before answering.
    async fn settle_refused_prepay(
        &self,
        attempt: &AttemptRow,
        refusal: &tonic::Status,
    ) -> Result<Outcome<PayOutcome>, ServiceError> {
        let channel = attempt.channel;
        let mut r = match self.query_at_channel(attempt).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(out_trade_no = %attempt.out_trade_no, error = ?e, "prepay refused and the trade could not be queried; it stays open until it can be");
                return Err(ServiceError::ChannelUnavailable {
                    channel,
                    failure: Some(CallFailure::from(refusal)),
                    detail: format!(
                        "the channel refused ({}) and the trade's state could not be confirmed",
                        refusal.message()
                    ),
                });
            }
        };
        // No trade at the channel, and our Prepay was refused: it will never exist (this
        // attempt's parameters were never handed out).
        if r.state == TradeState::NotFound && attempt.status == AttemptStatus::Init {
            r.state = TradeState::Failed;
        }
        r.event_id = format!(
            "prepay-refused:{}:{}",
            attempt.out_trade_no,
            r.state.as_str()
        );
        let outcome = match r.state {
            TradeState::Succeeded | TradeState::Failed | TradeState::Closed => {
                Some(self.apply_payment_result(r).await?)
            }
            TradeState::Pending | TradeState::NotFound | TradeState::Unknown => None,
        };
        if outcome == Some(ResultOutcome::AmountMismatch) {
            return Err(ServiceError::AmountHeld {
                channel,
                out_trade_no: attempt.out_trade_no.clone(),
            });
        }
        let order = self
            .order_by_id(OrderId::from_uuid(attempt.order_id))
            .await?;
        let status = order.status;
        if !matches!(status, OrderStatus::Pending | OrderStatus::Paying) {
            return Err(IllegalTransition {
                from: status,
                event: OrderEvent::PaymentStarted,
            }
            .into());
        }
        Err(ServiceError::ChannelRefused(refusal.message().to_owned()))
    }

    async fn order_by_id(&self, id: OrderId) -> Result<OrderRow, ServiceError> {
        self.db
            .run(move |conn| {
                orders::find_by_id(conn, id)?
                    .ok_or_else(|| ServiceError::NotFound(Subject::Order(id)))
            })
            .await
    }

    async fn read_order_and_open_attempt(
        &self,
        app: &AppId,
        id: OrderId,
    ) -> Result<(OrderRow, Option<AttemptRow>), ServiceError> {
        let app = app.clone();
        self.db
            .run(move |conn| {
                let order = orders::find(conn, &app, id)?
                    .ok_or_else(|| ServiceError::NotFound(Subject::Order(id)))?;
                let open = attempts::find_open(conn, id)?;
                Ok::<_, ServiceError>((order, open))
            })
            .await
    }

    /// Commits a new INIT attempt, as the holder of `fence`: under the order's row lock, only
    /// while the order can be paid and no newer lock holder has written it.
    async fn create_attempt(
        &self,
        order: &OrderRow,
        cmd: &PayCommand,
        digest: &[u8],
        fence: i64,
    ) -> Result<AttemptRow, ServiceError> {
        let out_trade_no = self.ids.out_trade_no().ok_or(ServiceError::LeaseLost)?;
        let row_id = Uuid::now_v7();
        let order_id = order.order_id();
        let amount = order.amount_minor;
        let currency = order.currency.clone();
        let method = cmd.method;
        let digest = digest.to_vec();
        let pay_deadline =
            self.pay_windows
                .deadline(method.channel(), Utc::now(), order.expires_at);
        // Its Prepay answer may be lost: the query job looks at it even if Pay never returns.
        let first_query = self.payment_queries.first_due(Utc::now());
        let single_statement = self.single_statement_writes;
        let metrics = self.metrics.clone();
        self.db
            .run(move |conn| {
                let row = NewAttemptRow {
                    id: row_id,
                    order_id: order_id.as_uuid(),
                    out_trade_no: &out_trade_no,
                    channel: method.channel(),
                    method,
                    amount_minor: amount,
                    currency: &currency,
                    status: AttemptStatus::Init,
                    payer_digest: &digest,
                    pay_deadline,
                    // Its Prepay answer may be lost: the query job looks at it anyway.
                    next_query_at: Some(first_query),
                };
                if single_statement {
                    // The states a payment may start from, as the state machine says.
                    let payable: Vec<&str> = OrderStatus::ALL
                        .into_iter()
                        .filter(|s| s.apply(OrderEvent::PaymentStarted).is_ok())
                        .map(OrderStatus::as_str)
                        .collect();
                    let opened = crate::storage::steps::open_attempt(conn, fence, &payable, &row)?;
                    metrics
                        .single_statement_writes
                        .with_label_values(&[
                            "open_attempt",
                            if matches!(opened, Ok(Some(_))) {
                                "committed"
                            } else {
                                "refused"
                            },
                        ])
                        .inc();
                    match opened {
                        Ok(Some(a)) => return Ok(a),
                        // Refused: the transaction below says why.
                        Ok(None) => {}
                        Err(InsertRefused::OpenAttemptExists | InsertRefused::TradeNoTaken) => {
                            return Err(ServiceError::Conflict(Subject::Order(order_id)));
                        }
                    }
                }
                conn.transaction(|conn| {
                    let current = orders::find_for_update(conn, order_id)?
                        .ok_or_else(|| ServiceError::NotFound(Subject::Order(order_id)))?;
                    current.status.apply(OrderEvent::PaymentStarted)?;
                    match orders::claim_fence(conn, order_id, fence)? {
                        Ok(_) => {}
                        Err(WriteRefused::StaleFence { .. }) => {
                            return Err(ServiceError::Fenced(order_id));
                        }
                        Err(WriteRefused::Conflict { .. } | WriteRefused::Missing) => {
                            return Err(ServiceError::Conflict(Subject::Order(order_id)));
                        }
                    }
                    match attempts::insert(conn, &row)? {
                        Ok(a) => Ok(a),
                        // The partial unique index refuses a second open attempt even if two
                        // callers got past the Redis lock; a taken out_trade_no means two
                        // minters shared a worker id. Both: retry.
                        Err(InsertRefused::OpenAttemptExists | InsertRefused::TradeNoTaken) => {
                            Err(ServiceError::Conflict(Subject::Order(order_id)))
                        }
                    }
                })
            })
            .await
    }

    /// The last write of Pay: attempt INIT → PAYING with the Prepay answer (if any), order
    /// PENDING → PAYING, and the idempotency record, in one transaction that re-checks, under
    /// the order's row lock, what the Redis lock promised. When the check fails, a trade this
    /// call has just opened is closed again, and the caller gets an error, not parameters.
    ///
    /// `read`: the order as read under the lock and the attempt as opened (or read) since; when
    /// given, and the call has no idempotency key, the common case is one statement guarded by
    /// that reading, and the transaction runs only if it is refused.
    async fn commit_prepay(
        &self,
        id: OrderId,
        out_trade_no: String,
        prepay: Option<cpb::PrepayResponse>,
        fence: i64,
        idem: Option<IdempotentWrite<PayOutcome>>,
        read: Option<(&OrderRow, &AttemptRow)>,
    ) -> Result<Outcome<PayOutcome>, ServiceError> {
        let retention = self.idempotency_retention;
        let opened = prepay.is_some();
        let first_query = self.payment_queries.first_due(Utc::now());
        let out = out_trade_no.clone();
        let audit = super::audit::current();
        if self.single_statement_writes
            && idem.is_none()
            && let (Some(p), Some((order, attempt))) = (&prepay, read)
            && attempt.status == AttemptStatus::Init
            && let Some(done) = self
                .commit_prepay_in_one_statement(order, attempt, p, fence, first_query, &audit)
                .await?
        {
            return Ok(Outcome::Done(done));
        }
        let committed = self
            .db
            .run(move |conn| {
                conn.transaction(|conn| {
                    let order = orders::find_for_update(conn, id)?
                        .ok_or_else(|| ServiceError::NotFound(Subject::Order(id)))?;
                    let mut attempt = attempts::find_by_out_trade_no_for_update(conn, &out)?
                        .ok_or_else(|| {
                            anyhow::anyhow!("attempt {out} vanished under its order's lock")
                        })?;
                    let a_status = attempt.status;
                    let o_status = order.status;
                    if !a_status.is_open() {
                        return Ok(Err((CommitRefused::AttemptGone(a_status), attempt)));
                    }
                    if !matches!(o_status, OrderStatus::Pending | OrderStatus::Paying) {
                        return Ok(Err((CommitRefused::OrderFinal(o_status), attempt)));
                    }
                    let order = match orders::claim_fence(conn, id, fence)? {
                        Ok(o) => o,
                        Err(_) => return Ok(Err((CommitRefused::Fenced, attempt))),
                    };
                    if let Some(p) = prepay
                        && a_status == AttemptStatus::Init
                    {
                        let params = serde_json::to_value(&p.pay_params)
                            .context("encoding the Prepay parameters")?;
                        attempt = attempts::transition(
                            conn,
                            attempt.id,
                            a_status,
                            a_status
                                .apply(AttemptEvent::Prepared)
                                .context("an open attempt refused Prepared")?,
                            AttemptChange {
                                pay_params: Some(params),
                                channel_prepay_id: Some(p.channel_prepay_id)
                                    .filter(|s| !s.is_empty()),
                                // PAYING: its result may come by callback, or only by query.
                                next_query_at: Some(first_query),
                                ..AttemptChange::default()
                            },
                        )?
                        .ok_or_else(|| ServiceError::Conflict(Subject::Order(id)))?;
                    }
                    let order = if o_status == OrderStatus::Pending {
                        let t = Transition {
                            id,
                            from: o_status,
                            to: o_status.apply(OrderEvent::PaymentStarted)?,
                            expected_version: order.version,
                            fence,
                            reason: "payment started",
                            at: Utc::now(),
                            paid_minor: order.paid_minor,
                        };
                        match orders::transition(conn, &t)? {
                            Ok(row) => row,
                            Err(WriteRefused::StaleFence { .. }) => {
                                return Ok(Err((CommitRefused::Fenced, attempt)));
                            }
                            Err(WriteRefused::Conflict { .. } | WriteRefused::Missing) => {
                                return Err(ServiceError::Conflict(Subject::Order(id)));
                            }
                        }
                    } else {
                        order
                    };
                    let outcome = PayOutcome {
                        pay_params: params_of(&attempt),
                        order: order.into(),
                        attempt: attempt.into(),
                    };
                    if let Some(i) = &idem {
                        match idempotency::claim(conn, &i.claim, retention)? {
                            idempotency::Claimed::Fresh => {
                                idempotency::store_response(conn, &i.claim, &(i.encode)(&outcome))?;
                            }
                            idempotency::Claimed::Replay(bytes) => {
                                return Ok(Ok(Outcome::Replayed(bytes)));
                            }
                        }
                    }
                    super::audit::record(
                        conn,
                        audit.as_ref(),
                        "/Pay",
                        &super::audit::Targets {
                            out_trade_no: Some(out.clone()),
                            ..super::audit::Targets::order(id.as_uuid())
                        },
                    )?;
                    Ok::<_, ServiceError>(Ok(Outcome::Done(outcome)))
                })
            })
            .await?;
        let (why, attempt) = match committed {
            Ok(done) => return Ok(done),
            Err(refused) => refused,
        };
        tracing::warn!(%out_trade_no, reason = ?why, "pay refused at its last write");
        // The trade this call opened or refreshed must not stay payable: close it unless the
        // attempt is still someone's open attempt (a newer holder reused it) or was paid.
        let close = opened
            && match why {
                CommitRefused::AttemptGone(s) => s != AttemptStatus::Succeeded,
                CommitRefused::OrderFinal(_) => true,
                CommitRefused::Fenced => false,
            };
        if close && let Err(e) = self.close_at_channel(&attempt).await {
            tracing::warn!(%out_trade_no, error = ?e, "closing a superseded trade failed; it lapses at its deadline");
        }
        match why {
            CommitRefused::OrderFinal(from) => Err(IllegalTransition {
                from,
                event: OrderEvent::PaymentStarted,
            }
            .into()),
            CommitRefused::AttemptGone(AttemptStatus::Succeeded) => Err(IllegalTransition {
                from: OrderStatus::Paid,
                event: OrderEvent::PaymentStarted,
            }
            .into()),
            CommitRefused::AttemptGone(_) | CommitRefused::Fenced => Err(ServiceError::Fenced(id)),
        }
    }

    /// The common last write of Pay (a new trade's parameters; see `storage::steps`): the
    /// outcome when it committed, `None` when it was refused (nothing written).
    async fn commit_prepay_in_one_statement(
        &self,
        order: &OrderRow,
        attempt: &AttemptRow,
        prepay: &cpb::PrepayResponse,
        fence: i64,
        first_query: DateTime<Utc>,
        audit: &Option<super::audit::AuditCtx>,
    ) -> Result<Option<PayOutcome>, ServiceError> {
        let (Ok(order_to), Ok(attempt_to)) = (
            order.status.apply(OrderEvent::PaymentStarted),
            attempt.status.apply(AttemptEvent::Prepared),
        ) else {
            return Ok(None);
        };
        let at = crate::storage::steps::stored_instant(Utc::now());
        let params =
            serde_json::to_value(&prepay.pay_params).context("encoding the Prepay parameters")?;
        let prepay_id = Some(prepay.channel_prepay_id.clone()).filter(|s| !s.is_empty());
        let moved = order_to != order.status;
        // The rows as the statement leaves them: the answer.
        let outcome = PayOutcome {
            pay_params: prepay.pay_params.clone().into_iter().collect(),
            order: OrderRow {
                status: order_to,
                version: order.version + i64::from(moved),
                updated_at: if moved { at } else { order.updated_at },
                fence,
                ..order.clone()
            }
            .into(),
            attempt: AttemptRow {
                status: attempt_to,
                version: attempt.version + 1,
                updated_at: at,
                pay_params: Some(params.clone()),
                channel_prepay_id: prepay_id
                    .clone()
                    .or_else(|| attempt.channel_prepay_id.clone()),
                ..attempt.clone()
            }
            .into(),
        };
        let (order, attempt, audit) = (order.clone(), attempt.clone(), audit.clone());
        let metrics = self.metrics.clone();
        self.db
            .run(move |conn| {
                let record = super::audit::for_statement(
                    audit.as_ref(),
                    "/Pay",
                    &super::audit::Targets {
                        out_trade_no: Some(attempt.out_trade_no.clone()),
                        ..super::audit::Targets::order(order.id)
                    },
                )?;
                let written = crate::storage::steps::commit_prepay(
                    conn,
                    &crate::storage::steps::PrepayWrite {
                        order: &order,
                        order_to,
                        reason: moved.then_some("payment started"),
                        fence,
                        attempt: &attempt,
                        attempt_to,
                        at,
                        pay_params: &params,
                        channel_prepay_id: prepay_id.as_deref(),
                        next_query_at: first_query,
                        audit: record.as_ref().map(super::audit::InStatement::json),
                    },
                )?;
                metrics
                    .single_statement_writes
                    .with_label_values(&["pay", if written { "committed" } else { "refused" }])
                    .inc();
                if !written {
                    return Ok::<_, ServiceError>(None);
                }
                if let Some(record) = record {
                    record.written();
                }
                if moved {
                    metrics
                        .order_transitions
                        .with_label_values(&[order.status.as_str(), order_to.as_str()])
                        .inc();
                }
                Ok(Some(outcome))
            })
            .await
    }

    /// Asks the channel for the attempt's trade.
    pub(super) async fn query_at_channel(
        &self,
        attempt: &AttemptRow,
    ) -> Result<PaymentResult, ServiceError> {
        let channel = attempt.channel;
        let mut client = self.channels.get(channel)?;
        let resp = client
            .query_payment(cpb::QueryPaymentRequest {
                out_trade_no: attempt.out_trade_no.clone(),
                method: method_to_pb(attempt.method) as i32,
                channel_prepay_id: attempt.channel_prepay_id.clone().unwrap_or_default(),
                created_at: Some(timestamp(attempt.created_at)),
            })
            .await
            .map_err(|s| unconfirmed(channel, "query", &s))?
            .into_inner();
        trade_result(attempt, "query", resp.result)
    }

    /// Closes an open attempt at its channel and applies what the channel says.
    ///
    /// "No such trade" or "still pending" is taken as closed only when the attempt's parameters
    /// were never handed out (INIT) or its deadline has lapsed: an Alipay QR or a UnionPay form
    /// that was handed out can still become a trade and be paid until then.
    ///
    /// # Errors
    /// `IllegalTransition` naming the order's real state when the channel says the trade was
    /// paid; `AmountHeld` when it was paid with another amount; `TradeStillPayable` when it
    /// cannot be closed yet; `ChannelUnavailable` when the channel cannot confirm anything.
    pub async fn close_at_channel(&self, attempt: &AttemptRow) -> Result<(), ServiceError> {
        let channel = attempt.channel;
        let mut client = self.channels.get(channel)?;
        let resp = client
            .close_payment(cpb::ClosePaymentRequest {
                out_trade_no: attempt.out_trade_no.clone(),
                method: method_to_pb(attempt.method) as i32,
                channel_prepay_id: attempt.channel_prepay_id.clone().unwrap_or_default(),
                created_at: Some(timestamp(attempt.created_at)),
            })
            .await
            .map_err(|s| unconfirmed(channel, "close", &s))?
            .into_inner();
        let mut r = trade_result(attempt, "close", resp.result)?;
        let handed_out = attempt.status == AttemptStatus::Paying;
        let lapsed = self.pay_windows.lapsed(attempt, Utc::now());
        r.state = match r.state {
            TradeState::NotFound if !handed_out || lapsed => TradeState::Closed,
            TradeState::Pending if lapsed => TradeState::Closed,
            s => s,
        };
        r.event_id = format!("close:{}:{}", attempt.out_trade_no, r.state.as_str());
        match r.state {
            TradeState::Closed | TradeState::Failed => {
                self.apply_payment_result(r).await?;
                Ok(())
            }
            TradeState::Succeeded => {
                if self.apply_payment_result(r).await? == ResultOutcome::AmountMismatch {
                    return Err(ServiceError::AmountHeld {
                        channel,
                        out_trade_no: attempt.out_trade_no.clone(),
                    });
                }
                let order = self
                    .order_by_id(OrderId::from_uuid(attempt.order_id))
                    .await?;
                Err(IllegalTransition {
                    from: order.status,
                    event: OrderEvent::PaymentStarted,
                }
                .into())
            }
            TradeState::Pending | TradeState::NotFound => {
                let margin = chrono::Duration::from_std(self.pay_windows.deadline_margin)
                    .unwrap_or_default();
                Err(ServiceError::TradeStillPayable {
                    channel,
                    out_trade_no: attempt.out_trade_no.clone(),
                    until: attempt.pay_deadline,
                    retry_after: attempt.pay_deadline + margin,
                    detail: r.channel_status,
                })
            }
            TradeState::Unknown => Err(ServiceError::ChannelUnavailable {
                channel,
                failure: None,
                detail: "the channel could not confirm the close".into(),
            }),
        }
    }
}

/// A failed query or close confirms nothing, whatever the status says: even a refusal leaves the
/// trade's state unknown, so every reading is answered UNAVAILABLE (the reading is kept for logs).
fn unconfirmed(channel: Channel, call: &str, s: &tonic::Status) -> ServiceError {
    ServiceError::ChannelUnavailable {
        channel,
        failure: Some(CallFailure::from(s)),
        detail: format!("{call}: {}", s.message()),
    }
}

/// The core's reading of what an adapter answered about `attempt`'s trade (`op` names the
/// call); the trade is always named by the attempt's own `out_trade_no`.
fn trade_result(
    attempt: &AttemptRow,
    op: &str,
    result: Option<cpb::PaymentResult>,
) -> Result<PaymentResult, ServiceError> {
    let channel = attempt.channel;
    let result = result.ok_or_else(|| ServiceError::ChannelUnavailable {
        channel,
        failure: None,
        detail: format!("{op} answered without a result"),
    })?;
    let mut r = result_from_pb(channel, String::new(), result);
    r.out_trade_no = attempt.out_trade_no.clone();
    Ok(r)
}

/// Only PENDING or PAYING orders that have not expired can be paid.
fn ensure_payable(order: &OrderRow) -> Result<(), ServiceError> {
    let status = order.status;
    status.apply(OrderEvent::PaymentStarted)?;
    if order.expires_at <= Utc::now() {
        return Err(ServiceError::Expired(order.expires_at));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn attempt(created: DateTime<Utc>, deadline: DateTime<Utc>) -> AttemptRow {
        AttemptRow {
            id: Uuid::nil(),
            order_id: Uuid::nil(),
            out_trade_no: "P1".into(),
            channel: Channel::Wechat,
            method: PayMethod::WechatNative,
            amount_minor: 1,
            currency: "CNY".into(),
            status: AttemptStatus::Paying,
            payer_digest: vec![],
            pay_params: None,
            channel_prepay_id: None,
            channel_trade_no: None,
            paid_minor: None,
            version: 0,
            created_at: created,
            updated_at: created,
            succeeded_at: None,
            pay_deadline: deadline,
        }
    }

    #[test]
    fn a_deadline_is_the_window_in_whole_seconds_and_never_past_the_order() {
        let w = PayWindows::default();
        let now = DateTime::from_timestamp(1_800_000_000, 700_000_000).unwrap();
        let far = now + chrono::Duration::days(7);
        assert_eq!(
            w.deadline(Channel::Wechat, now, far),
            DateTime::from_timestamp(1_800_000_000 + 7_200, 0).unwrap()
        );
        let soon = now + chrono::Duration::seconds(30);
        assert!(w.deadline(Channel::Alipay, now, soon) <= soon);
    }

    #[test]
    fn parameters_near_their_deadline_are_not_handed_out_again() {
        let w = PayWindows::default();
        let t0 = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let a = attempt(t0, t0 + chrono::Duration::seconds(7_200));
        assert!(w.reusable(&a, t0 + chrono::Duration::seconds(7_000)));
        assert!(!w.reusable(&a, t0 + chrono::Duration::seconds(7_150)));
        assert!(!w.lapsed(&a, t0 + chrono::Duration::seconds(7_250)));
        assert!(w.lapsed(&a, t0 + chrono::Duration::seconds(7_261)));
    }
}
