//! Pay: open (or reuse) the order's payment attempt at a channel, under the order's lock.
//!
//! No database connection is held across a channel call: the attempt is committed as INIT
//! before Prepay, and moved to PAYING after. An INIT attempt whose Prepay answer was lost is
//! retried with the same `out_trade_no`, which the platforms treat as the same trade, so a retry
//! never opens a second one.
use std::collections::BTreeMap;

use chrono::Utc;
use diesel::Connection;
use payproto::channel::v1 as cpb;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::results::PaymentResult;
use super::{App, IdemWrite, Outcome, ServiceError};
use crate::domain::{
    AppId, AttemptEvent, AttemptStatus, Channel, IllegalTransition, OrderEvent, OrderId,
    OrderStatus, PayMethod, TradeState,
};
use crate::locks::LockGuard;
use crate::storage::attempts::{self, AttemptChange, AttemptRow, NewAttemptRow};
use crate::storage::idempotency;
use crate::storage::orders::{self, OrderRow, Transition, WriteRefused};

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
    pub order: OrderRow,
    pub attempt: AttemptRow,
    pub pay_params: BTreeMap<String, String>,
}

fn payer_digest(payer_id: &str) -> Vec<u8> {
    Sha256::digest(payer_id.as_bytes()).to_vec()
}

pub fn channel_to_pb(c: Channel) -> cpb::Channel {
    match c {
        Channel::Wechat => cpb::Channel::Wechat,
        Channel::Alipay => cpb::Channel::Alipay,
        Channel::Unionpay => cpb::Channel::Unionpay,
    }
}

pub fn method_to_pb(m: PayMethod) -> cpb::PayMethod {
    match m {
        PayMethod::WechatJsapi => cpb::PayMethod::WechatJsapi,
        PayMethod::WechatNative => cpb::PayMethod::WechatNative,
        PayMethod::AlipayQr => cpb::PayMethod::AlipayQr,
        PayMethod::AlipayPage => cpb::PayMethod::AlipayPage,
        PayMethod::AlipayApp => cpb::PayMethod::AlipayApp,
        PayMethod::UnionpayFront => cpb::PayMethod::UnionpayFront,
    }
}

/// Converts a channel's answer into the core's result type. An unspecified state is UNKNOWN:
/// never final.
pub fn result_from_pb(channel: Channel, event_id: String, r: cpb::PaymentResult) -> PaymentResult {
    let state = match cpb::TradeState::try_from(r.state) {
        Ok(cpb::TradeState::Pending) => TradeState::Pending,
        Ok(cpb::TradeState::Succeeded) => TradeState::Succeeded,
        Ok(cpb::TradeState::Failed) => TradeState::Failed,
        Ok(cpb::TradeState::Closed) => TradeState::Closed,
        Ok(cpb::TradeState::NotFound) => TradeState::NotFound,
        Ok(cpb::TradeState::Unknown | cpb::TradeState::Unspecified) | Err(_) => TradeState::Unknown,
    };
    PaymentResult {
        channel,
        event_id,
        out_trade_no: r.out_trade_no,
        state,
        channel_trade_no: Some(r.channel_trade_no).filter(|s| !s.is_empty()),
        paid: r.paid.map(|a| (a.amount_minor, a.currency)),
        paid_at: r.paid_at.and_then(|t| {
            chrono::DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0))
        }),
        channel_status: r.channel_status,
    }
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
        idem: Option<IdemWrite<PayOutcome>>,
    ) -> Result<Outcome<PayOutcome>, ServiceError> {
        if let Some(i) = &idem {
            let claim = i.claim.clone();
            let retention = self.idempotency_retention;
            let replay = self
                .db
                .run(move |conn| idempotency::lookup(conn, &claim, retention))
                .await
                .map_err(ServiceError::from)?;
            if let Some(bytes) = replay {
                return Ok(Outcome::Replayed(bytes));
            }
        }
        let guard = self.lock_order(cmd.order_id).await?;
        let r = self.pay_locked(app, cmd, &guard, idem).await;
        self.unlock(guard).await;
        r
    }

    async fn pay_locked(
        &self,
        app: AppId,
        cmd: PayCommand,
        guard: &LockGuard,
        idem: Option<IdemWrite<PayOutcome>>,
    ) -> Result<Outcome<PayOutcome>, ServiceError> {
        let id = cmd.order_id;
        let channel = cmd.method.channel();
        let digest = payer_digest(&cmd.payer_id);
        let (order, open) = self.read_order_and_open_attempt(&app, id).await?;
        ensure_payable(&order)?;

        let attempt = match open {
            Some(a)
                if a.channel()? == channel
                    && a.method()? == cmd.method
                    && a.payer_digest == digest =>
            {
                if a.status()? == AttemptStatus::Paying && a.pay_params.is_some() {
                    self.metrics
                        .attempts_reused
                        .with_label_values(&[channel.as_str()])
                        .inc();
                    return self
                        .finish(id, a.out_trade_no.clone(), None, guard.fence(), idem)
                        .await;
                }
                // INIT: an earlier Prepay's answer was lost; ask again with the same out_trade_no.
                a
            }
            Some(other) => {
                self.close_at_channel(&other).await?;
                // The close may have revealed a payment.
                let (order, _) = self.read_order_and_open_attempt(&app, id).await?;
                ensure_payable(&order)?;
                self.create_attempt(&order, &cmd, &digest).await?
            }
            None => self.create_attempt(&order, &cmd, &digest).await?,
        };

        let mut client = self.channels.get(channel)?;
        let prepay = client
            .prepay(cpb::PrepayRequest {
                out_trade_no: attempt.out_trade_no.clone(),
                method: method_to_pb(cmd.method) as i32,
                amount: Some(cpb::Amount {
                    amount_minor: order.amount_minor,
                    currency: order.currency.trim().to_owned(),
                }),
                subject: order.subject.clone(),
                expires_at: Some(crate::grpc::convert::timestamp(order.expires_at)),
                payer_id: cmd.payer_id.clone(),
                payer_ip: cmd.client_ip.clone(),
                created_at: Some(crate::grpc::convert::timestamp(attempt.created_at)),
            })
            .await;
        match prepay {
            Ok(resp) => {
                let resp = resp.into_inner();
                self.finish(id, attempt.out_trade_no, Some(resp), guard.fence(), idem)
                    .await
            }
            Err(status) => match status.code() {
                tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition => {
                    // A final refusal: this attempt will never be payable.
                    let out = attempt.out_trade_no.clone();
                    self.db
                        .run(move |conn| {
                            conn.transaction(|conn| {
                                let a = attempts::find_by_out_trade_no_for_update(conn, &out)?
                                    .ok_or_else(|| {
                                        ServiceError::Internal("attempt vanished".into())
                                    })?;
                                let from = a.status()?;
                                if let Ok(to) = from.apply(AttemptEvent::Failed) {
                                    attempts::transition(
                                        conn,
                                        a.id,
                                        from,
                                        to,
                                        AttemptChange::default(),
                                    )?;
                                }
                                Ok::<_, ServiceError>(())
                            })
                        })
                        .await?;
                    Err(ServiceError::ChannelRefused(status.message().to_owned()))
                }
                _ => Err(ServiceError::ChannelUnavailable(
                    channel.to_string(),
                    status.message().to_owned(),
                )),
            },
        }
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
                    .ok_or_else(|| ServiceError::NotFound(format!("order {id}")))?;
                let open = attempts::find_open(conn, id)?;
                Ok::<_, ServiceError>((order, open))
            })
            .await
    }

    async fn create_attempt(
        &self,
        order: &OrderRow,
        cmd: &PayCommand,
        digest: &[u8],
    ) -> Result<AttemptRow, ServiceError> {
        let out_trade_no = self.ids.out_trade_no();
        let row_id = Uuid::now_v7();
        let order_id = order.id;
        let amount = order.amount_minor;
        let currency = order.currency.clone();
        let method = cmd.method;
        let digest = digest.to_vec();
        self.db
            .run(move |conn| {
                let row = NewAttemptRow {
                    id: row_id,
                    order_id,
                    out_trade_no: &out_trade_no,
                    channel: method.channel().as_str(),
                    method: method.as_str(),
                    amount_minor: amount,
                    currency: &currency,
                    status: AttemptStatus::Init.as_str(),
                    payer_digest: &digest,
                };
                // The partial unique index refuses a second open attempt even if two callers got
                // past the Redis lock (an expired lease): the loser is told to retry.
                attempts::insert(conn, &row)?
                    .ok_or_else(|| ServiceError::Conflict(order_id.to_string()))
            })
            .await
    }

    /// Commits the Prepay answer (if any): attempt INIT → PAYING, order PENDING → PAYING (fenced
    /// by this call's lock), and the idempotency record; all in one transaction.
    async fn finish(
        &self,
        id: OrderId,
        out_trade_no: String,
        prepay: Option<cpb::PrepayResponse>,
        fence: i64,
        idem: Option<IdemWrite<PayOutcome>>,
    ) -> Result<Outcome<PayOutcome>, ServiceError> {
        let retention = self.idempotency_retention;
        self.db
            .run(move |conn| {
                conn.transaction(|conn| {
                    let order = orders::find_for_update(conn, id)?
                        .ok_or_else(|| ServiceError::NotFound(format!("order {id}")))?;
                    let mut attempt =
                        attempts::find_by_out_trade_no_for_update(conn, &out_trade_no)?
                            .ok_or_else(|| ServiceError::Internal("attempt vanished".into()))?;
                    if let Some(p) = prepay {
                        let from = attempt.status()?;
                        let params = serde_json::to_value(&p.pay_params)
                            .map_err(|e| ServiceError::Internal(e.to_string()))?;
                        // A callback may have beaten us here (the payer was quick): keep its state.
                        let to = from.apply(AttemptEvent::Prepared).unwrap_or(from);
                        attempt = attempts::transition(
                            conn,
                            attempt.id,
                            from,
                            to,
                            AttemptChange {
                                pay_params: Some(params),
                                channel_prepay_id: Some(p.channel_prepay_id)
                                    .filter(|s| !s.is_empty()),
                                ..AttemptChange::default()
                            },
                        )?
                        .ok_or_else(|| ServiceError::Conflict(id.to_string()))?;
                    }
                    let from = order.status()?;
                    let order = if from == OrderStatus::Pending && attempt.status()?.is_open() {
                        let to = from.apply(OrderEvent::PaymentStarted)?;
                        let t = Transition {
                            id,
                            from,
                            to,
                            expected_version: order.version,
                            fence,
                            reason: "payment started",
                            at: Utc::now(),
                            paid_minor: order.paid_minor,
                        };
                        match orders::transition(conn, &t)? {
                            Ok(row) => row,
                            Err(WriteRefused::StaleFence { .. }) => {
                                return Err(ServiceError::Fenced(id.to_string()));
                            }
                            Err(WriteRefused::Conflict { .. } | WriteRefused::Missing) => {
                                return Err(ServiceError::Conflict(id.to_string()));
                            }
                        }
                    } else {
                        order
                    };
                    let outcome = PayOutcome {
                        pay_params: params_of(&attempt),
                        order,
                        attempt,
                    };
                    if let Some(i) = &idem {
                        match idempotency::claim(conn, &i.claim, retention)? {
                            idempotency::Claimed::Fresh => {
                                idempotency::store_response(
                                    conn,
                                    &i.claim,
                                    &(i.encode)(&outcome)?,
                                )?;
                            }
                            idempotency::Claimed::Replay(bytes) => {
                                return Ok(Outcome::Replayed(bytes));
                            }
                        }
                    }
                    Ok::<_, ServiceError>(Outcome::Done(outcome))
                })
            })
            .await
    }

    /// Closes an open attempt at its channel and applies what the channel says. If the channel
    /// says the attempt was paid, the order becomes PAID and the caller's action is refused.
    ///
    /// # Errors
    /// `ChannelUnavailable` when the channel cannot confirm the close: nothing else may start
    /// while the old trade might still be paid.
    pub async fn close_at_channel(&self, attempt: &AttemptRow) -> Result<(), ServiceError> {
        let channel = attempt.channel()?;
        let mut client = self.channels.get(channel)?;
        let resp = client
            .close_payment(cpb::ClosePaymentRequest {
                out_trade_no: attempt.out_trade_no.clone(),
                method: method_to_pb(attempt.method()?) as i32,
                channel_prepay_id: attempt.channel_prepay_id.clone().unwrap_or_default(),
            })
            .await
            .map_err(|s| {
                ServiceError::ChannelUnavailable(channel.to_string(), s.message().to_owned())
            })?
            .into_inner();
        let result = resp.result.ok_or_else(|| {
            ServiceError::ChannelUnavailable(
                channel.to_string(),
                "close answered without a result".into(),
            )
        })?;
        let mut r = result_from_pb(channel, String::new(), result);
        r.out_trade_no = attempt.out_trade_no.clone();
        // A trade the channel never created (its Prepay never arrived) is as closed as can be.
        if r.state == TradeState::NotFound {
            r.state = TradeState::Closed;
        }
        r.event_id = format!("close:{}:{}", attempt.out_trade_no, r.state.as_str());
        match r.state {
            TradeState::Closed | TradeState::Failed => {
                self.apply_payment_result(r).await?;
                Ok(())
            }
            TradeState::Succeeded => {
                self.apply_payment_result(r).await?;
                Err(IllegalTransition {
                    from: OrderStatus::Paid,
                    event: OrderEvent::PaymentStarted,
                }
                .into())
            }
            // Still open and payable at the channel (UnionPay has no close: its trades lapse at
            // their pay timeout). Nothing new may start while the old trade can still be paid.
            TradeState::Pending => Err(ServiceError::ChannelRefused(format!(
                "the open {channel} trade {} cannot be closed at the channel ({}); pay it, or retry after it expires",
                attempt.out_trade_no, r.channel_status
            ))),
            TradeState::Unknown | TradeState::NotFound => Err(ServiceError::ChannelUnavailable(
                channel.to_string(),
                "the channel could not confirm the close; retry".into(),
            )),
        }
    }
}

/// Only PENDING or PAYING orders that have not expired can be paid.
fn ensure_payable(order: &OrderRow) -> Result<(), ServiceError> {
    let status = order.status()?;
    status.apply(OrderEvent::PaymentStarted)?;
    if order.expires_at <= Utc::now() {
        return Err(ServiceError::Expired(order.expires_at.to_rfc3339()));
    }
    Ok(())
}
