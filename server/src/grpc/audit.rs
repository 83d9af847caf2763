//! `payment.v1.AuditService`: the audit log, read-only. The role `audit.read` is checked by the
//! per-method role table (with the other services' roles); this file parses and pages.
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use payproto::payment::v1 as pb;
use payproto::payment::v1::audit_service_server::AuditService;
use tonic::{Request, Response, Status};

use super::convert::from_timestamp;
use super::payment::app_id;
use super::status::observe;
use crate::app::{App, ServiceError};
use crate::domain::FieldError;
use crate::storage::audit::{AuditFilter, AuditRow};

pub struct AuditApi {
    app: App,
}

impl AuditApi {
    pub fn new(app: App) -> Self {
        Self { app }
    }
}

fn outcome_to_pb(s: &str) -> pb::AuditOutcome {
    match s {
        "OK" => pb::AuditOutcome::Ok,
        "REPLAYED" => pb::AuditOutcome::Replayed,
        "REFUSED" => pb::AuditOutcome::Refused,
        "FAILED" => pb::AuditOutcome::Failed,
        _ => pb::AuditOutcome::Unspecified,
    }
}

fn record_to_pb(r: AuditRow) -> pb::AuditRecord {
    let s = |v: Option<uuid::Uuid>| v.map(|u| u.to_string()).unwrap_or_default();
    pb::AuditRecord {
        id: r.id,
        at: Some(prost_types::Timestamp {
            seconds: r.at.timestamp(),
            nanos: i32::try_from(r.at.timestamp_subsec_nanos()).unwrap_or(0),
        }),
        actor_kind: r.actor_kind,
        app_id: r.app_id.unwrap_or_default(),
        operator: r.operator.unwrap_or_default(),
        adapter: r.adapter.unwrap_or_default(),
        action: r.action,
        outcome: outcome_to_pb(&r.outcome).into(),
        code: r.code,
        request_id: r.request_id,
        order_id: s(r.order_id),
        out_trade_no: r.out_trade_no.unwrap_or_default(),
        refund_id: s(r.refund_id),
        recon_run_id: s(r.recon_run_id),
        target: r.target.unwrap_or_default(),
    }
}

/// Parses the request into a filter; `limit` is one more than the page, to see if more follow.
fn parse(b: &pb::ListAuditRecordsRequest) -> Result<(AuditFilter, usize), FieldError> {
    let page = match b.page_size {
        0 => 50,
        n @ 1..=200 => n,
        n => {
            return Err(FieldError::new(
                "page_size",
                format!("must be 0..=200, got {n}"),
            ));
        }
    };
    let from = b
        .from
        .as_ref()
        .map(|t| from_timestamp("from", t))
        .transpose()?;
    let to = b.to.as_ref().map(|t| from_timestamp("to", t)).transpose()?;
    if let (Some(f), Some(t)) = (from, to)
        && f > t
    {
        return Err(FieldError::new("from", "must not be after to"));
    }
    let before_id = (!b.page_token.is_empty())
        .then(|| {
            URL_SAFE_NO_PAD
                .decode(&b.page_token)
                .ok()
                .and_then(|v| String::from_utf8(v).ok())
                .and_then(|v| v.strip_prefix("audit:").and_then(|n| n.parse::<i64>().ok()))
                .ok_or_else(|| FieldError::new("page_token", "is not a token this server issued"))
        })
        .transpose()?;
    let text = |v: &str| (!v.is_empty()).then(|| v.to_owned());
    let page = usize::try_from(page).unwrap_or(50);
    Ok((
        AuditFilter {
            from,
            to,
            app_id: text(&b.app_id),
            action: text(&b.action),
            target: text(&b.target),
            before_id,
            limit: i64::try_from(page).unwrap_or(50) + 1,
        },
        page,
    ))
}

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn list_audit_records(
        &self,
        req: Request<pb::ListAuditRecordsRequest>,
    ) -> Result<Response<pb::ListAuditRecordsResponse>, Status> {
        let r = async {
            app_id(&req)?;
            let (filter, page) = parse(req.get_ref())?;
            let mut rows = self.app.list_audit_records(filter).await?;
            let more = rows.len() > page;
            rows.truncate(page);
            let next_page_token = match rows.last() {
                Some(last) if more => URL_SAFE_NO_PAD.encode(format!("audit:{}", last.id)),
                _ => String::new(),
            };
            Ok::<_, ServiceError>(pb::ListAuditRecordsResponse {
                records: rows.into_iter().map(record_to_pb).collect(),
                next_page_token,
            })
        }
        .await;
        observe(&self.app.metrics, "ListAuditRecords", r)
    }
}
