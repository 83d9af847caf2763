//! `channel.v1.ChannelAdapter` over any [`Adapter`], with the one error-to-status mapping:
//!
//! | error            | status              | meaning for the core               |
//! |------------------|---------------------|------------------------------------|
//! | InvalidArgument  | INVALID_ARGUMENT    | fix the request                    |
//! | Refused          | FAILED_PRECONDITION | final refusal by the platform      |
//! | Unavailable      | UNAVAILABLE         | nothing known: query later         |
//! | Timeout          | DEADLINE_EXCEEDED   | outcome unknown: query later       |
//! | BadResponse      | UNAUTHENTICATED     | answer not trusted: query later    |
//! | BadStatement     | DATA_LOSS           | statement unreadable: discard run  |
//! | Internal         | INTERNAL            | a bug                              |
//!
//! Every call must carry payd's token ([`RequirePaydToken`]); the health service stays open.
use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::pb::channel_adapter_service_server::ChannelAdapterService;
use crate::settings::Secret;
use crate::{Adapter, ChannelError, Metrics, pb};

/// Compares secrets without an early exit on the first differing byte, so response timing does
/// not reveal how much of a guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Admits a `ChannelAdapter` call only with `authorization: Bearer <ADAPTER_GRPC_TOKEN>`:
/// anyone else reaching the port could refund or close trades with the merchant's key. Refusals
/// are `UNAUTHENTICATED`, counted in `adapter_grpc_auth_failures_total` by reason.
#[derive(Clone)]
pub struct RequirePaydToken {
    expected: Arc<Secret>,
    metrics: Metrics,
}

impl RequirePaydToken {
    pub fn new(expected: Secret, metrics: Metrics) -> Self {
        Self {
            expected: Arc::new(expected),
            metrics,
        }
    }

    fn refuse(&self, reason: &str, message: &'static str) -> Status {
        self.metrics
            .grpc_auth_failures
            .with_label_values(&[self.metrics.channel(), reason])
            .inc();
        tracing::warn!(reason, "ChannelAdapter call refused");
        Status::unauthenticated(message)
    }
}

impl tonic::service::Interceptor for RequirePaydToken {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(value) = req.metadata().get("authorization") else {
            return Err(self.refuse(
                "missing",
                "payd's token is required (authorization: Bearer …)",
            ));
        };
        let Some(presented) = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")) else {
            return Err(self.refuse("malformed", "authorization must be Bearer <token>"));
        };
        if !constant_time_eq(presented.as_bytes(), self.expected.expose().as_bytes()) {
            return Err(self.refuse("wrong", "wrong token for this adapter"));
        }
        Ok(req)
    }
}

impl From<ChannelError> for Status {
    fn from(e: ChannelError) -> Self {
        match e {
            ChannelError::InvalidArgument(m) => Status::invalid_argument(m),
            ChannelError::Refused { code, message } => {
                // The platform's own code travels as a field, not only inside the text.
                let details = prost::Message::encode_to_vec(&pb::PlatformRefusal {
                    code: code.clone(),
                    message: message.clone(),
                });
                Status::with_details(
                    tonic::Code::FailedPrecondition,
                    format!("refused by the platform: {code}: {message}"),
                    details.into(),
                )
            }
            ChannelError::Unavailable(m) => Status::unavailable(m),
            ChannelError::Timeout(m) => Status::deadline_exceeded(m),
            ChannelError::BadResponse(m) => Status::unauthenticated(m),
            ChannelError::BadStatement(m) => Status::data_loss(m),
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

    fn count<T>(
        &self,
        op: &str,
        start: std::time::Instant,
        r: Result<T, ChannelError>,
    ) -> Result<Response<T>, Status> {
        self.metrics
            .platform_request_duration
            .with_label_values(&[self.metrics.channel(), op])
            .observe(start.elapsed().as_secs_f64());
        record(&self.metrics, op, &r);
        r.map(Response::new).map_err(Status::from)
    }
}

fn record<T>(metrics: &Metrics, op: &str, r: &Result<T, ChannelError>) {
    let outcome = match r {
        Ok(_) => "ok",
        Err(ChannelError::InvalidArgument(_)) => "invalid_argument",
        Err(ChannelError::Refused { .. }) => "refused",
        Err(ChannelError::Unavailable(_)) => "unavailable",
        Err(ChannelError::Timeout(_)) => "timeout",
        Err(ChannelError::BadResponse(_)) => "bad_response",
        Err(ChannelError::BadStatement(_)) => "bad_statement",
        Err(ChannelError::Internal(_)) => "internal",
    };
    metrics
        .platform_requests
        .with_label_values(&[metrics.channel(), op, outcome])
        .inc();
    if let Err(e) = r {
        tracing::warn!(op, error = %e, "platform call failed");
    }
}

type Page = Result<pb::FetchStatementResponse, Status>;

/// Runs the adapter's fetch and pages its lines out; the last message is the totals, or the
/// error status (after which the consumer discards the pages it got).
async fn stream_statement<A: Adapter>(
    adapter: Arc<A>,
    metrics: Metrics,
    req: pb::FetchStatementRequest,
    out: tokio::sync::mpsc::Sender<Page>,
) {
    let start = std::time::Instant::now();
    let page_size = crate::statement::page_size(&req);
    let (sink, mut lines) = crate::statement::LineSink::channel(page_size);
    let fetch = adapter.fetch_statement(req, sink);
    tokio::pin!(fetch);
    let mut result = None;
    let mut page = Vec::with_capacity(page_size);
    let mut sent = 0u64;
    let send_page = |page: &mut Vec<pb::StatementLine>| {
        let lines = std::mem::replace(page, Vec::with_capacity(page_size));
        out.send(Ok(pb::FetchStatementResponse {
            lines,
            totals: None,
        }))
    };
    loop {
        tokio::select! {
            r = &mut fetch, if result.is_none() => result = Some(r),
            line = lines.recv() => match line {
                Some(line) => {
                    page.push(line);
                    sent += 1;
                    if page.len() >= page_size && send_page(&mut page).await.is_err() {
                        return; // the consumer went away; dropping `fetch` stops the parser
                    }
                }
                None => break,
            },
        }
    }
    let result = match result {
        Some(r) => r,
        None => fetch.await,
    };
    let result = result.and_then(|totals| {
        if totals.line_count == sent {
            Ok(totals)
        } else {
            Err(ChannelError::Internal(format!(
                "statement totals count {} lines, {sent} were streamed",
                totals.line_count
            )))
        }
    });
    // The whole download and parse, like every other platform call's latency.
    metrics
        .platform_request_duration
        .with_label_values(&[metrics.channel(), "fetch_statement"])
        .observe(start.elapsed().as_secs_f64());
    record(&metrics, "fetch_statement", &result);
    if !page.is_empty() && send_page(&mut page).await.is_err() {
        return;
    }
    let last = result
        .map(|totals| pb::FetchStatementResponse {
            lines: Vec::new(),
            totals: Some(totals),
        })
        .map_err(Status::from);
    let _ = out.send(last).await;
}

#[tonic::async_trait]
impl<A: Adapter> ChannelAdapterService for AdapterService<A> {
    async fn prepay(
        &self,
        req: Request<pb::PrepayRequest>,
    ) -> Result<Response<pb::PrepayResponse>, Status> {
        let start = std::time::Instant::now();
        let r = self.adapter.prepay(req.into_inner()).await;
        self.count("prepay", start, r)
    }

    async fn query_payment(
        &self,
        req: Request<pb::QueryPaymentRequest>,
    ) -> Result<Response<pb::QueryPaymentResponse>, Status> {
        let start = std::time::Instant::now();
        let r = self
            .adapter
            .query_payment(req.into_inner())
            .await
            .map(|result| pb::QueryPaymentResponse {
                result: Some(result),
            });
        self.count("query_payment", start, r)
    }

    async fn close_payment(
        &self,
        req: Request<pb::ClosePaymentRequest>,
    ) -> Result<Response<pb::ClosePaymentResponse>, Status> {
        let start = std::time::Instant::now();
        let r = self
            .adapter
            .close_payment(req.into_inner())
            .await
            .map(|result| pb::ClosePaymentResponse {
                result: Some(result),
            });
        self.count("close_payment", start, r)
    }

    async fn refund(
        &self,
        req: Request<pb::RefundRequest>,
    ) -> Result<Response<pb::RefundResponse>, Status> {
        let start = std::time::Instant::now();
        let r = self
            .adapter
            .refund(req.into_inner())
            .await
            .map(|result| pb::RefundResponse {
                result: Some(result),
            });
        self.count("refund", start, r)
    }

    async fn query_refund(
        &self,
        req: Request<pb::QueryRefundRequest>,
    ) -> Result<Response<pb::QueryRefundResponse>, Status> {
        let start = std::time::Instant::now();
        let r = self
            .adapter
            .query_refund(req.into_inner())
            .await
            .map(|result| pb::QueryRefundResponse {
                result: Some(result),
            });
        self.count("query_refund", start, r)
    }

    type FetchStatementStream = tokio_stream::wrappers::ReceiverStream<Page>;

    async fn fetch_statement(
        &self,
        req: Request<pb::FetchStatementRequest>,
    ) -> Result<Response<Self::FetchStatementStream>, Status> {
        let (out, pages) = tokio::sync::mpsc::channel(2);
        tokio::spawn(stream_statement(
            self.adapter.clone(),
            self.metrics.clone(),
            req.into_inner(),
            out,
        ));
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            pages,
        )))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use tonic::service::Interceptor;

    use super::*;

    #[test]
    fn a_platform_refusal_carries_the_platforms_code_as_a_field() {
        let s = Status::from(ChannelError::Refused {
            code: "ACQ.TRADE_HAS_SUCCESS".into(),
            message: "交易已被支付".into(),
        });
        assert_eq!(s.code(), tonic::Code::FailedPrecondition);
        let r: pb::PlatformRefusal = prost::Message::decode(s.details()).unwrap();
        assert_eq!(r.code, "ACQ.TRADE_HAS_SUCCESS");
        assert_eq!(r.message, "交易已被支付");
        assert!(s.message().contains("ACQ.TRADE_HAS_SUCCESS"));
    }

    fn call(auth: Option<&str>) -> (Result<Request<()>, Status>, Metrics) {
        let metrics = Metrics::new(pb::Channel::Alipay).unwrap();
        let mut i = RequirePaydToken::new(Secret::new("0123456789abcdef-payd"), metrics.clone());
        let mut req = Request::new(());
        if let Some(a) = auth {
            req.metadata_mut()
                .insert("authorization", a.parse().unwrap());
        }
        (i.call(req), metrics)
    }

    fn refused(auth: Option<&str>) -> (String, String) {
        let (r, metrics) = call(auth);
        let s = r.err().unwrap();
        assert_eq!(s.code(), tonic::Code::Unauthenticated);
        (s.message().to_owned(), metrics.render())
    }

    #[test]
    fn payds_token_is_admitted() {
        assert!(call(Some("Bearer 0123456789abcdef-payd")).0.is_ok());
    }

    #[test]
    fn a_missing_token_is_refused_as_missing() {
        let (message, metrics) = refused(None);
        assert!(message.contains("required"), "{message}");
        assert!(metrics.contains(r#"reason="missing"} 1"#), "{metrics}");
    }

    #[test]
    fn a_wrong_or_truncated_token_is_refused_as_wrong() {
        for t in [
            "Bearer 0123456789abcdef-payX",
            "Bearer 0123456789abcdef-pay",
        ] {
            let (message, metrics) = refused(Some(t));
            assert!(message.contains("wrong token"), "{message}");
            assert!(metrics.contains(r#"reason="wrong"} 1"#), "{metrics}");
        }
    }

    #[test]
    fn a_token_without_the_bearer_scheme_is_refused_as_malformed() {
        let (_, metrics) = refused(Some("0123456789abcdef-payd"));
        assert!(metrics.contains(r#"reason="malformed"} 1"#), "{metrics}");
    }
}
