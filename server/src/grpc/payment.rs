//! `payment.v1.PaymentService`: parses requests into domain values at the edge, calls the use
//! cases, and counts every outcome.
use payproto::payment::v1 as pb;
use payproto::payment::v1::payment_service_server::PaymentService;
use prost::Message;
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};

use super::convert::{
    PageRequest, attempt_to_pb, channel_from_pb, encode_page_token, method_from_pb, order_to_pb,
    status_from_pb,
};
use super::status::observe;
use crate::app::pay::{PayCommand, PayOutcome};
use crate::app::{App, IdempotentWrite, Outcome, ServiceError};
use crate::domain::KeyClaim;
use crate::domain::validation::RawNewOrder;
use crate::domain::{AppId, FieldError, IdempotencyKey, MerchantOrderNo, NewOrder, OrderId};
use crate::domain::{Order, OrderFilter};

/// Metadata key naming the calling app.
pub const APP_ID_HEADER: &str = "x-app-id";

pub struct PaymentApi {
    app: App,
}

impl PaymentApi {
    pub fn new(app: App) -> Self {
        Self { app }
    }

    /// Counts the outcome of `method` and turns the error into its status.
    fn respond<T>(&self, method: &str, r: Result<T, ServiceError>) -> Result<Response<T>, Status> {
        observe(&self.app.metrics, method, r)
    }

    pub(super) fn app(&self) -> &App {
        &self.app
    }

    pub(super) fn replayed(&self, method: &str) {
        self.app
            .metrics
            .idempotent_replays
            .with_label_values(&[method])
            .inc();
    }
}

/// The calling app, as the auth layer verified it (never the bare `x-app-id` header).
pub(super) fn app_id<T>(req: &Request<T>) -> Result<AppId, ServiceError> {
    req.extensions()
        .get::<crate::auth::Caller>()
        .map(|c| c.app.clone())
        .ok_or_else(|| {
            ServiceError::Unauthenticated(format!("{APP_ID_HEADER}: the call is not authenticated"))
        })
}

/// Builds the idempotency claim for a request whose key field is `key`: the fingerprint is the
/// SHA-256 of the request encoded with the key cleared (map fields encode in key order).
fn idem_claim<M: Message + Clone, T>(
    app: &AppId,
    method: &'static str,
    key: &str,
    req: &M,
    clear: impl FnOnce(&mut M),
    encode: fn(&T) -> Vec<u8>,
) -> Result<Option<IdempotentWrite<T>>, ServiceError> {
    if key.is_empty() {
        return Ok(None);
    }
    let key = IdempotencyKey::parse("idempotency_key", key)?;
    let mut stripped = req.clone();
    clear(&mut stripped);
    let fingerprint: [u8; 32] = Sha256::digest(stripped.encode_to_vec()).into();
    Ok(Some(IdempotentWrite {
        claim: KeyClaim {
            app: app.clone(),
            key,
            method,
            fingerprint,
        },
        encode,
    }))
}

fn encode_create(row: &Order) -> Vec<u8> {
    pb::CreateOrderResponse {
        order: Some(order_to_pb(row)),
    }
    .encode_to_vec()
}

fn encode_close(row: &Order) -> Vec<u8> {
    pb::CloseOrderResponse {
        order: Some(order_to_pb(row)),
    }
    .encode_to_vec()
}

pub(super) fn decode<M: Message + Default>(bytes: &[u8]) -> Result<M, ServiceError> {
    use anyhow::Context;
    Ok(M::decode(bytes).context("a stored idempotent response does not decode")?)
}

impl PaymentApi {
    async fn create_order(
        &self,
        req: Request<pb::CreateOrderRequest>,
    ) -> Result<pb::CreateOrderResponse, ServiceError> {
        const METHOD: &str = "/payment.v1.PaymentService/CreateOrder";
        let app = app_id(&req)?;
        let body = req.into_inner();
        let new = NewOrder::parse(
            RawNewOrder {
                merchant_order_no: &body.merchant_order_no,
                amount: body
                    .amount
                    .as_ref()
                    .map(|m| (m.amount_minor, m.currency.as_str())),
                subject: &body.subject,
                expires_in_seconds: body.expires_in_seconds,
                metadata: &body.metadata,
            },
            &self.app.limits,
        )?;
        let idem = idem_claim(
            &app,
            METHOD,
            &body.idempotency_key,
            &body,
            |r| r.idempotency_key.clear(),
            encode_create,
        )?;
        match self.app.create_order(app, new, idem).await? {
            Outcome::Done(row) => Ok(pb::CreateOrderResponse {
                order: Some(order_to_pb(&row)),
            }),
            Outcome::Replayed(bytes) => {
                self.replayed("CreateOrder");
                decode(&bytes)
            }
        }
    }

    async fn get_order(
        &self,
        req: Request<pb::GetOrderRequest>,
    ) -> Result<pb::GetOrderResponse, ServiceError> {
        let app = app_id(&req)?;
        let row = match req.into_inner().lookup {
            Some(pb::get_order_request::Lookup::OrderId(id)) => {
                self.app
                    .get_order(app, OrderId::parse("order_id", &id)?)
                    .await?
            }
            Some(pb::get_order_request::Lookup::MerchantOrderNo(no)) => {
                let no = MerchantOrderNo::parse("merchant_order_no", &no)?;
                self.app
                    .get_order_by_merchant_no(app, no.as_str().to_owned())
                    .await?
            }
            None => {
                return Err(FieldError::new(
                    "lookup",
                    "one of order_id or merchant_order_no is required",
                )
                .into());
            }
        };
        Ok(pb::GetOrderResponse {
            order: Some(order_to_pb(&row)),
        })
    }

    async fn list_orders(
        &self,
        req: Request<pb::ListOrdersRequest>,
    ) -> Result<pb::ListOrdersResponse, ServiceError> {
        let app = app_id(&req)?;
        let body = req.into_inner();
        let page = PageRequest::parse(
            body.page_size,
            body.created_from.as_ref(),
            body.created_to.as_ref(),
            &body.page_token,
        )?;
        let page_size = page.page_size;
        let statuses = body
            .statuses
            .iter()
            .map(|s| status_from_pb("statuses", *s))
            .collect::<Result<Vec<_>, _>>()?;
        // One row more than the page tells whether another page exists.
        let filter = OrderFilter {
            statuses,
            created_from: page.created_from,
            created_to: page.created_to,
            after: page.after,
            limit: i64::from(page_size) + 1,
        };
        let mut rows = self.app.list_orders(app, filter).await?;
        let more = rows.len() > usize::try_from(page_size).unwrap_or(usize::MAX);
        rows.truncate(usize::try_from(page_size).unwrap_or(usize::MAX));
        let next_page_token = match (more, rows.last()) {
            (true, Some(last)) => encode_page_token(last),
            _ => String::new(),
        };
        Ok(pb::ListOrdersResponse {
            orders: rows.iter().map(order_to_pb).collect(),
            next_page_token,
        })
    }

    async fn close_order(
        &self,
        req: Request<pb::CloseOrderRequest>,
    ) -> Result<pb::CloseOrderResponse, ServiceError> {
        const METHOD: &str = "/payment.v1.PaymentService/CloseOrder";
        let app = app_id(&req)?;
        let body = req.into_inner();
        let id = OrderId::parse("order_id", &body.order_id)?;
        let idem = idem_claim(
            &app,
            METHOD,
            &body.idempotency_key,
            &body,
            |r| r.idempotency_key.clear(),
            encode_close,
        )?;
        match self.app.close_order(app, id, idem).await? {
            Outcome::Done(row) => Ok(pb::CloseOrderResponse {
                order: Some(order_to_pb(&row)),
            }),
            Outcome::Replayed(bytes) => {
                self.replayed("CloseOrder");
                decode(&bytes)
            }
        }
    }
}

fn encode_pay(o: &PayOutcome) -> Vec<u8> {
    pay_response(o).encode_to_vec()
}

fn pay_response(o: &PayOutcome) -> pb::PayResponse {
    pb::PayResponse {
        order: Some(order_to_pb(&o.order)),
        attempt: Some(attempt_to_pb(&o.attempt)),
        pay_params: o.pay_params.clone(),
    }
}

/// Parses a Pay at the edge: the method must belong to the channel, and a payer id is required
/// exactly where the method needs one.
fn parse_pay(body: &pb::PayRequest) -> Result<PayCommand, FieldError> {
    let order_id = OrderId::parse("order_id", &body.order_id)?;
    let channel = channel_from_pb(body.channel)?;
    let method = method_from_pb(body.method)?;
    if method.channel() != channel {
        return Err(FieldError::new(
            "method",
            format!(
                "{} does not belong to channel {}",
                method.as_str(),
                channel.as_str()
            ),
        ));
    }
    let payer = body.payer.clone().unwrap_or_default();
    if method.needs_payer_id() && payer.payer_id.is_empty() {
        return Err(FieldError::new(
            "payer.payer_id",
            format!("is required for {}", method.as_str()),
        ));
    }
    if payer.payer_id.len() > 128 || !payer.payer_id.chars().all(|c| c.is_ascii_graphic()) {
        return Err(FieldError::new(
            "payer.payer_id",
            "must be at most 128 printable ASCII characters",
        ));
    }
    if !payer.client_ip.is_empty() && payer.client_ip.parse::<std::net::IpAddr>().is_err() {
        return Err(FieldError::new(
            "payer.client_ip",
            "must be an IPv4 or IPv6 address",
        ));
    }
    Ok(PayCommand {
        order_id,
        method,
        payer_id: payer.payer_id,
        client_ip: payer.client_ip,
    })
}

impl PaymentApi {
    async fn pay(&self, req: Request<pb::PayRequest>) -> Result<pb::PayResponse, ServiceError> {
        const METHOD: &str = "/payment.v1.PaymentService/Pay";
        let app = app_id(&req)?;
        let body = req.into_inner();
        let cmd = parse_pay(&body)?;
        let idem = idem_claim(
            &app,
            METHOD,
            &body.idempotency_key,
            &body,
            |r| r.idempotency_key.clear(),
            encode_pay,
        )?;
        match self.app.pay(app, cmd, idem).await? {
            Outcome::Done(o) => Ok(pay_response(&o)),
            Outcome::Replayed(bytes) => {
                self.replayed("Pay");
                decode(&bytes)
            }
        }
    }
}

/// The order a request names, for the audit record of a call that changed nothing.
fn order_target(order_id: &str) -> crate::app::audit::Targets {
    crate::app::audit::Targets {
        order_id: uuid::Uuid::try_parse(order_id).ok(),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl PaymentService for PaymentApi {
    async fn create_order(
        &self,
        req: Request<pb::CreateOrderRequest>,
    ) -> Result<Response<pb::CreateOrderResponse>, Status> {
        let ctx = crate::app::audit::AuditCtx::from_metadata(
            "/payment.v1.PaymentService/CreateOrder",
            req.metadata(),
        )
        .with_targets(crate::app::audit::Targets {
            target: Some(req.get_ref().merchant_order_no.clone()).filter(|s| !s.is_empty()),
            ..Default::default()
        });
        let r = ctx
            .run(&self.app, PaymentApi::create_order(self, req))
            .await;
        self.respond("CreateOrder", r)
    }

    async fn get_order(
        &self,
        req: Request<pb::GetOrderRequest>,
    ) -> Result<Response<pb::GetOrderResponse>, Status> {
        let r = PaymentApi::get_order(self, req).await;
        self.respond("GetOrder", r)
    }

    async fn list_orders(
        &self,
        req: Request<pb::ListOrdersRequest>,
    ) -> Result<Response<pb::ListOrdersResponse>, Status> {
        let r = PaymentApi::list_orders(self, req).await;
        self.respond("ListOrders", r)
    }

    async fn close_order(
        &self,
        req: Request<pb::CloseOrderRequest>,
    ) -> Result<Response<pb::CloseOrderResponse>, Status> {
        let ctx = crate::app::audit::AuditCtx::from_metadata(
            "/payment.v1.PaymentService/CloseOrder",
            req.metadata(),
        )
        .with_targets(order_target(&req.get_ref().order_id));
        let r = ctx.run(&self.app, PaymentApi::close_order(self, req)).await;
        self.respond("CloseOrder", r)
    }

    async fn pay(&self, req: Request<pb::PayRequest>) -> Result<Response<pb::PayResponse>, Status> {
        let ctx = crate::app::audit::AuditCtx::from_metadata(
            "/payment.v1.PaymentService/Pay",
            req.metadata(),
        )
        .with_targets(order_target(&req.get_ref().order_id));
        let r = ctx.run(&self.app, PaymentApi::pay(self, req)).await;
        self.respond("Pay", r)
    }

    type WatchEventsStream = super::watch::EventStream;

    async fn watch_events(
        &self,
        req: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let r = self.watch_events_call(req).await;
        self.respond("WatchEvents", r)
    }

    async fn redeliver_events(
        &self,
        req: Request<pb::RedeliverEventsRequest>,
    ) -> Result<Response<pb::RedeliverEventsResponse>, Status> {
        let ctx = crate::app::audit::AuditCtx::from_metadata(
            "/payment.v1.PaymentService/RedeliverEvents",
            req.metadata(),
        );
        let r = ctx.run(&self.app, self.redeliver_events_call(req)).await;
        self.respond("RedeliverEvents", r)
    }

    async fn create_refund(
        &self,
        req: Request<pb::CreateRefundRequest>,
    ) -> Result<Response<pb::CreateRefundResponse>, Status> {
        let ctx = crate::app::audit::AuditCtx::from_metadata(
            "/payment.v1.PaymentService/CreateRefund",
            req.metadata(),
        )
        .with_operator(&req.get_ref().operator)
        .with_targets(crate::app::audit::Targets {
            target: Some(req.get_ref().refund_request_no.clone()).filter(|s| !s.is_empty()),
            ..order_target(&req.get_ref().order_id)
        });
        let r = ctx.run(&self.app, self.create_refund_call(req)).await;
        self.respond("CreateRefund", r)
    }

    async fn get_refund(
        &self,
        req: Request<pb::GetRefundRequest>,
    ) -> Result<Response<pb::GetRefundResponse>, Status> {
        let r = self.get_refund_call(req).await;
        self.respond("GetRefund", r)
    }

    async fn list_refunds(
        &self,
        req: Request<pb::ListRefundsRequest>,
    ) -> Result<Response<pb::ListRefundsResponse>, Status> {
        let r = self.list_refunds_call(req).await;
        self.respond("ListRefunds", r)
    }
}
