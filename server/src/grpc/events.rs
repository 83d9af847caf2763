//! `channel.v1.ChannelEvents`: what adapters report. Each report is recorded once (unique per
//! channel event) and applied in the same transaction; the OK goes back only after the commit,
//! so an adapter acknowledges its platform only once the result is durable.
use payproto::channel::v1 as cpb;
use payproto::channel::v1::channel_events_service_server::ChannelEventsService;
use tonic::{Request, Response, Status};

use super::convert::channel_from_pb;
use super::status::observe;
use crate::app::refunds::{RefundOutcome, RefundSource, refund_result_from_pb};
use crate::app::results::ResultOutcome;
use crate::app::{App, ServiceError};
use crate::channel_client::result_from_pb;
use crate::domain::{Channel, FieldError};

/// Compares secrets without an early exit, so response timing does not reveal how much of a
/// guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub struct EventsApi {
    app: App,
}

impl EventsApi {
    pub fn new(app: App) -> Self {
        Self { app }
    }

    fn respond<T>(&self, method: &str, r: Result<T, ServiceError>) -> Result<Response<T>, Status> {
        observe(&self.app.metrics, method, r)
    }

    /// The channel whose adapter token the caller presented.
    fn authenticate(
        &self,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<Channel, ServiceError> {
        let presented = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                ServiceError::Unauthenticated(
                    "an adapter token (authorization: Bearer …) is required".into(),
                )
            })?;
        self.app
            .adapter_tokens
            .iter()
            .find(|(_, t)| constant_time_eq(t.expose().as_bytes(), presented.as_bytes()))
            .map(|(c, _)| *c)
            .ok_or_else(|| ServiceError::Unauthenticated("unknown adapter token".into()))
    }

    async fn report_payment(
        &self,
        caller: Channel,
        body: cpb::ReportPaymentRequest,
    ) -> Result<cpb::ReportPaymentResponse, ServiceError> {
        let channel = channel_from_pb(body.channel)?;
        if channel != caller {
            return Err(ServiceError::PermissionDenied(format!(
                "the {caller} adapter may not report for {channel}"
            )));
        }
        let event_id = body.channel_event_id;
        if event_id.is_empty() || event_id.len() > 128 {
            return Err(FieldError::new("channel_event_id", "must be 1..=128 characters").into());
        }
        let result = body
            .result
            .ok_or_else(|| FieldError::new("result", "is required"))?;
        if result.out_trade_no.is_empty() || result.out_trade_no.len() > 64 {
            return Err(FieldError::new("result.out_trade_no", "must be 1..=64 characters").into());
        }
        if result.state == cpb::TradeState::Succeeded as i32 && result.paid.is_none() {
            return Err(
                FieldError::new("result.paid", "is required for a successful payment").into(),
            );
        }
        let outcome = self
            .app
            .apply_payment_result(result_from_pb(channel, event_id, result))
            .await?;
        Ok(cpb::ReportPaymentResponse {
            // Recorded now: not a repeat, and not a success the attempt already held.
            first_time: !matches!(
                outcome,
                ResultOutcome::Repeated | ResultOutcome::AlreadyApplied
            ),
        })
    }
}

impl EventsApi {
    /// A refund result from a channel notification: recorded once per (channel, event id) and
    /// applied through the one refund transition, which checks amount and currency.
    async fn report_refund(
        &self,
        caller: Channel,
        body: cpb::ReportRefundRequest,
    ) -> Result<cpb::ReportRefundResponse, ServiceError> {
        let channel = channel_from_pb(body.channel)?;
        if channel != caller {
            return Err(ServiceError::PermissionDenied(format!(
                "the {caller} adapter may not report for {channel}"
            )));
        }
        let event_id = body.channel_event_id;
        if event_id.is_empty() || event_id.len() > 128 {
            return Err(FieldError::new("channel_event_id", "must be 1..=128 characters").into());
        }
        let result = body
            .result
            .ok_or_else(|| FieldError::new("result", "is required"))?;
        if result.out_refund_no.is_empty() || result.out_refund_no.len() > 64 {
            return Err(
                FieldError::new("result.out_refund_no", "must be 1..=64 characters").into(),
            );
        }
        if body.out_trade_no.len() > 64 {
            return Err(FieldError::new("out_trade_no", "must be at most 64 characters").into());
        }
        let next = chrono::Utc::now()
            + self
                .app
                .refunds
                .query_delays
                .first()
                .copied()
                .unwrap_or_default();
        let (outcome, _) = self
            .app
            .apply_refund_result(
                refund_result_from_pb(channel, result),
                RefundSource::Event {
                    event_id,
                    out_trade_no: body.out_trade_no,
                },
                next,
            )
            .await?;
        Ok(cpb::ReportRefundResponse {
            first_time: outcome != RefundOutcome::Repeated,
        })
    }
}

/// The channel a report claims to come from, as the audit log names adapters.
fn adapter_name(channel: i32) -> Option<&'static str> {
    match payproto::channel::v1::Channel::try_from(channel) {
        Ok(payproto::channel::v1::Channel::Wechat) => Some("wechat"),
        Ok(payproto::channel::v1::Channel::Alipay) => Some("alipay"),
        Ok(payproto::channel::v1::Channel::Unionpay) => Some("unionpay"),
        _ => Some("unknown"),
    }
}

#[tonic::async_trait]
impl ChannelEventsService for EventsApi {
    async fn report_payment(
        &self,
        req: Request<cpb::ReportPaymentRequest>,
    ) -> Result<Response<cpb::ReportPaymentResponse>, Status> {
        let ctx = crate::app::audit::AuditCtx::from_metadata(
            "/channel.v1.ChannelEventsService/ReportPayment",
            req.metadata(),
        )
        .with_adapter(adapter_name(req.get_ref().channel))
        .with_targets(crate::app::audit::Targets {
            out_trade_no: req
                .get_ref()
                .result
                .as_ref()
                .map(|r| r.out_trade_no.clone()),
            target: Some(req.get_ref().channel_event_id.clone()),
            ..Default::default()
        });
        let r = ctx
            .run(&self.app, async {
                let caller = self.authenticate(req.metadata())?;
                EventsApi::report_payment(self, caller, req.into_inner()).await
            })
            .await;
        self.respond("ReportPayment", r)
    }

    async fn report_refund(
        &self,
        req: Request<cpb::ReportRefundRequest>,
    ) -> Result<Response<cpb::ReportRefundResponse>, Status> {
        let ctx = crate::app::audit::AuditCtx::from_metadata(
            "/channel.v1.ChannelEventsService/ReportRefund",
            req.metadata(),
        )
        .with_adapter(adapter_name(req.get_ref().channel))
        .with_targets(crate::app::audit::Targets {
            out_trade_no: Some(req.get_ref().out_trade_no.clone()),
            target: Some(req.get_ref().channel_event_id.clone()),
            ..Default::default()
        });
        let r = ctx
            .run(&self.app, async {
                let caller = self.authenticate(req.metadata())?;
                EventsApi::report_refund(self, caller, req.into_inner()).await
            })
            .await;
        self.respond("ReportRefund", r)
    }
}
