//! `channel.v1.ChannelAdapter` over any [`Adapter`], with the one error-to-status mapping:
//!
//! | error            | status              | meaning for the core               |
//! |------------------|---------------------|------------------------------------|
//! | InvalidArgument  | INVALID_ARGUMENT    | fix the request                    |
//! | Refused          | FAILED_PRECONDITION | final refusal by the platform      |
//! | Unavailable      | UNAVAILABLE         | nothing known: query later         |
//! | Timeout          | DEADLINE_EXCEEDED   | outcome unknown: query later       |
//! | BadResponse      | UNAUTHENTICATED     | answer not trusted: query later    |
//! | Internal         | INTERNAL            | a bug                              |
use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::pb::channel_adapter_server::ChannelAdapter;
use crate::{Adapter, ChannelError, Metrics, pb};

impl From<ChannelError> for Status {
    fn from(e: ChannelError) -> Self {
        match e {
            ChannelError::InvalidArgument(m) => Status::invalid_argument(m),
            e @ ChannelError::Refused { .. } => Status::failed_precondition(e.to_string()),
            ChannelError::Unavailable(m) => Status::unavailable(m),
            ChannelError::Timeout(m) => Status::deadline_exceeded(m),
            ChannelError::BadResponse(m) => Status::unauthenticated(m),
            ChannelError::Internal(m) => {
                tracing::error!(error = %m, "adapter internal error");
                Status::internal("internal adapter error")
            }
        }
    }
}

pub struct AdapterService<A> {
    adapter: Arc<A>,
    metrics: Metrics,
}

impl<A> AdapterService<A> {
    pub fn new(adapter: Arc<A>, metrics: Metrics) -> Self {
        Self { adapter, metrics }
    }

    fn count<T>(&self, op: &str, r: Result<T, ChannelError>) -> Result<Response<T>, Status> {
        let outcome = match &r {
            Ok(_) => "ok",
            Err(ChannelError::InvalidArgument(_)) => "invalid_argument",
            Err(ChannelError::Refused { .. }) => "refused",
            Err(ChannelError::Unavailable(_)) => "unavailable",
            Err(ChannelError::Timeout(_)) => "timeout",
            Err(ChannelError::BadResponse(_)) => "bad_response",
            Err(ChannelError::Internal(_)) => "internal",
        };
        self.metrics
            .platform_requests
            .with_label_values(&[self.metrics.channel(), op, outcome])
            .inc();
        if let Err(e) = &r {
            tracing::warn!(op, error = %e, "platform call failed");
        }
        r.map(Response::new).map_err(Status::from)
    }
}

#[tonic::async_trait]
impl<A: Adapter> ChannelAdapter for AdapterService<A> {
    async fn prepay(
        &self,
        req: Request<pb::PrepayRequest>,
    ) -> Result<Response<pb::PrepayResponse>, Status> {
        let r = self.adapter.prepay(req.into_inner()).await;
        self.count("prepay", r)
    }

    async fn query_payment(
        &self,
        req: Request<pb::QueryPaymentRequest>,
    ) -> Result<Response<pb::QueryPaymentResponse>, Status> {
        let r = self
            .adapter
            .query_payment(req.into_inner())
            .await
            .map(|result| pb::QueryPaymentResponse {
                result: Some(result),
            });
        self.count("query_payment", r)
    }

    async fn close_payment(
        &self,
        req: Request<pb::ClosePaymentRequest>,
    ) -> Result<Response<pb::ClosePaymentResponse>, Status> {
        let r = self
            .adapter
            .close_payment(req.into_inner())
            .await
            .map(|result| pb::ClosePaymentResponse {
                result: Some(result),
            });
        self.count("close_payment", r)
    }

    async fn refund(
        &self,
        req: Request<pb::RefundRequest>,
    ) -> Result<Response<pb::RefundResponse>, Status> {
        let r = self
            .adapter
            .refund(req.into_inner())
            .await
            .map(|result| pb::RefundResponse {
                result: Some(result),
            });
        self.count("refund", r)
    }

    async fn query_refund(
        &self,
        req: Request<pb::QueryRefundRequest>,
    ) -> Result<Response<pb::QueryRefundResponse>, Status> {
        let r = self
            .adapter
            .query_refund(req.into_inner())
            .await
            .map(|result| pb::QueryRefundResponse {
                result: Some(result),
            });
        self.count("query_refund", r)
    }

    async fn fetch_statement(
        &self,
        req: Request<pb::FetchStatementRequest>,
    ) -> Result<Response<pb::FetchStatementResponse>, Status> {
        let r = self
            .adapter
            .fetch_statement(req.into_inner())
            .await
            .map(|lines| pb::FetchStatementResponse { lines });
        self.count("fetch_statement", r)
    }
}
