//! The refund calls of `payment.v1.PaymentService`: parsed at the edge, then the use cases of
//! `app::refunds`.
use payproto::payment::v1 as pb;
use prost::Message;
use tonic::Request;

use super::convert::{PageRequest, encode_cursor, refund_status_from_pb, refund_to_pb};
use super::payment::{PaymentApi, app_id, decode};
use crate::app::{Outcome, ServiceError};
use crate::domain::{FieldError, NewRefund, OrderId, Refund, RefundFilter};

fn encode_create_refund(r: &Refund) -> Vec<u8> {
    pb::CreateRefundResponse {
        refund: Some(refund_to_pb(r)),
    }
    .encode_to_vec()
}

impl PaymentApi {
    pub(super) async fn create_refund_call(
        &self,
        req: Request<pb::CreateRefundRequest>,
    ) -> Result<pb::CreateRefundResponse, ServiceError> {
        let app = app_id(&req)?;
        let body = req.into_inner();
        let new = NewRefund::parse(
            &body.order_id,
            body.amount
                .as_ref()
                .map(|m| (m.amount_minor, m.currency.as_str())),
            &body.reason,
            &body.refund_request_no,
            &body.operator,
        )?;
        match self
            .app()
            .create_refund(app, new, encode_create_refund)
            .await?
        {
            Outcome::Done(r) => Ok(pb::CreateRefundResponse {
                refund: Some(refund_to_pb(&r)),
            }),
            Outcome::Replayed(bytes) => {
                self.replayed("CreateRefund");
                decode(&bytes)
            }
        }
    }

    pub(super) async fn get_refund_call(
        &self,
        req: Request<pb::GetRefundRequest>,
    ) -> Result<pb::GetRefundResponse, ServiceError> {
        let app = app_id(&req)?;
        let refund = match req.into_inner().lookup {
            Some(pb::get_refund_request::Lookup::RefundId(id)) => {
                let id = uuid::Uuid::try_parse(&id)
                    .map_err(|_| FieldError::new("refund_id", "must be a UUID"))?;
                self.app().get_refund(app, id).await?
            }
            Some(pb::get_refund_request::Lookup::RefundRequestNo(no)) => {
                if no.is_empty() || no.len() > 64 {
                    return Err(
                        FieldError::new("refund_request_no", "must be 1..=64 characters").into(),
                    );
                }
                self.app().get_refund_by_request_no(app, no).await?
            }
            None => {
                return Err(FieldError::new(
                    "lookup",
                    "one of refund_id or refund_request_no is required",
                )
                .into());
            }
        };
        Ok(pb::GetRefundResponse {
            refund: Some(refund_to_pb(&refund)),
        })
    }

    pub(super) async fn list_refunds_call(
        &self,
        req: Request<pb::ListRefundsRequest>,
    ) -> Result<pb::ListRefundsResponse, ServiceError> {
        let app = app_id(&req)?;
        let body = req.into_inner();
        let page = PageRequest::parse(
            body.page_size,
            body.created_from.as_ref(),
            body.created_to.as_ref(),
            &body.page_token,
        )?;
        let page_size = page.page_size;
        let order_id = if body.order_id.is_empty() {
            None
        } else {
            Some(OrderId::parse("order_id", &body.order_id)?.as_uuid())
        };
        let statuses = body
            .statuses
            .iter()
            .map(|s| refund_status_from_pb("statuses", *s))
            .collect::<Result<Vec<_>, _>>()?;
        let limit = usize::try_from(page_size).unwrap_or(usize::MAX);
        let filter = RefundFilter {
            order_id,
            statuses,
            created_from: page.created_from,
            created_to: page.created_to,
            after: page.after,
            limit: i64::from(page_size) + 1,
        };
        let mut rows = self.app().list_refunds(app, filter).await?;
        let more = rows.len() > limit;
        rows.truncate(limit);
        let next_page_token = match (more, rows.last()) {
            (true, Some(last)) => encode_cursor(last.created_at, last.id),
            _ => String::new(),
        };
        Ok(pb::ListRefundsResponse {
            refunds: rows.iter().map(refund_to_pb).collect(),
            next_page_token,
        })
    }
}
