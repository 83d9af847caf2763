//! `payment.v1.ReconciliationService`: parsed at the edge, then `app::reconciliation`.
use chrono::NaiveDate;
use payproto::payment::v1 as pb;
use payproto::payment::v1::reconciliation_service_server::ReconciliationService;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::convert::{channel_from_pb, decode_page_token, encode_cursor};
use super::payment::app_id;
use super::status::observe;
use crate::app::{App, ServiceError};
use crate::channel_client::{channel_to_pb, timestamp};
use crate::domain::FieldError;
use crate::storage::recon::{DiscrepancyFilter, DiscrepancyRow, RunRow};

const DEFAULT_PAGE_SIZE: u32 = 50;
const MAX_PAGE_SIZE: u32 = 500;
const KINDS: [&str; 9] = [
    "MISSING_LOCALLY",
    "MISSING_AT_CHANNEL",
    "AMOUNT_MISMATCH",
    "STATUS_MISMATCH",
    "DUPLICATE",
    "REFUND_MISSING_LOCALLY",
    "REFUND_MISSING_AT_CHANNEL",
    "REFUND_AMOUNT_MISMATCH",
    "REFUND_STATUS_MISMATCH",
];
const STATUSES: [&str; 3] = ["OPEN", "REPAIRED", "RESOLVED"];

pub struct ReconciliationApi {
    app: App,
}

impl ReconciliationApi {
    pub fn new(app: App) -> Self {
        Self { app }
    }

    fn respond<T>(
        &self,
        method: &str,
        r: Result<Result<T, Status>, ServiceError>,
    ) -> Result<Response<T>, Status> {
        match r {
            Ok(Ok(v)) => observe(&self.app.metrics, method, Ok(v)),
            Ok(Err(status)) => Err(status),
            Err(e) => observe(&self.app.metrics, method, Err(e)),
        }
    }
}

fn parse_day(field: &'static str, s: &str) -> Result<NaiveDate, FieldError> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map_err(|_| FieldError::new(field, "must be a day, YYYY-MM-DD (Beijing time)"))
}

fn parse_id(field: &'static str, s: &str) -> Result<Uuid, FieldError> {
    Uuid::try_parse(s).map_err(|_| FieldError::new(field, "must be a UUID"))
}

fn one_of(field: &'static str, s: &str, allowed: &[&str]) -> Result<Option<String>, FieldError> {
    if s.is_empty() {
        return Ok(None);
    }
    if allowed.contains(&s) {
        Ok(Some(s.to_owned()))
    } else {
        Err(FieldError::new(
            field,
            format!("must be one of {}", allowed.join(", ")),
        ))
    }
}

fn channel_pb(s: &str) -> i32 {
    s.parse::<crate::domain::Channel>()
        .map(|c| channel_to_pb(c) as i32)
        .unwrap_or_default()
}

fn u64_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or_default()
}

pub fn run_to_pb(r: &RunRow) -> pb::ReconciliationRun {
    pb::ReconciliationRun {
        id: r.id.to_string(),
        channel: channel_pb(&r.channel),
        day: r.day.format("%Y-%m-%d").to_string(),
        status: r.status.clone(),
        requested_by: r.requested_by.clone(),
        started_at: Some(timestamp(r.started_at)),
        finished_at: r.finished_at.map(timestamp),
        lines_read: u64_of(r.lines_read),
        discrepancies: u64_of(r.discrepancies),
        repaired: u64_of(r.repaired),
        payment_count: r.payment_count.map(u64_of).unwrap_or_default(),
        refund_count: r.refund_count.map(u64_of).unwrap_or_default(),
        error: r.error.clone().unwrap_or_default(),
        expected_lines: u64_of(r.expected_lines),
    }
}

pub fn discrepancy_to_pb(d: &DiscrepancyRow) -> pb::Discrepancy {
    pb::Discrepancy {
        id: d.id.to_string(),
        run_id: d.run_id.to_string(),
        channel: channel_pb(&d.channel),
        day: d.day.format("%Y-%m-%d").to_string(),
        kind: d.kind.clone(),
        out_trade_no: d.out_trade_no.clone(),
        out_refund_no: d.out_refund_no.clone(),
        channel_amount_minor: d.channel_amount_minor,
        local_amount_minor: d.local_amount_minor,
        source_line: d.source_line.map(u64_of).unwrap_or_default(),
        status: d.status.clone(),
        resolution: d.resolution.clone().unwrap_or_default(),
        note: d.note.clone().unwrap_or_default(),
        resolved_by: d.resolved_by.clone().unwrap_or_default(),
        created_at: Some(timestamp(d.created_at)),
        resolved_at: d.resolved_at.map(timestamp),
    }
}

#[tonic::async_trait]
impl ReconciliationService for ReconciliationApi {
    async fn run_reconciliation(
        &self,
        req: Request<pb::RunReconciliationRequest>,
    ) -> Result<Response<pb::RunReconciliationResponse>, Status> {
        let ctx = crate::app::audit::AuditCtx::from_metadata(
            "/payment.v1.ReconciliationService/RunReconciliation",
            req.metadata(),
        )
        .with_targets(crate::app::audit::Targets {
            target: Some(req.get_ref().day.clone()),
            ..Default::default()
        });
        let r = ctx
            .run_nested(&self.app, async {
                let app = app_id(&req)?;
                let body = req.into_inner();
                let channel = channel_from_pb(body.channel)?;
                let day = parse_day("day", &body.day)?;
                let (run, already) = self
                    .app
                    .run_reconciliation(channel, day, app.as_str().to_owned())
                    .await?;
                Ok(Ok(pb::RunReconciliationResponse {
                    run: Some(run_to_pb(&run)),
                    already_running: already,
                }))
            })
            .await;
        self.respond("RunReconciliation", r)
    }

    async fn get_reconciliation_run(
        &self,
        req: Request<pb::GetReconciliationRunRequest>,
    ) -> Result<Response<pb::GetReconciliationRunResponse>, Status> {
        let r = async {
            app_id(&req)?;
            let id = parse_id("id", &req.get_ref().id)?;
            Ok(match self.app.get_reconciliation_run(id).await? {
                Some(run) => Ok(pb::GetReconciliationRunResponse {
                    run: Some(run_to_pb(&run)),
                }),
                None => Err(Status::not_found(format!(
                    "reconciliation run {id} not found"
                ))),
            })
        }
        .await;
        self.respond("GetReconciliationRun", r)
    }

    async fn list_discrepancies(
        &self,
        req: Request<pb::ListDiscrepanciesRequest>,
    ) -> Result<Response<pb::ListDiscrepanciesResponse>, Status> {
        let r = async {
            app_id(&req)?;
            let b = req.into_inner();
            let filter = DiscrepancyFilter {
                run_id: (!b.run_id.is_empty())
                    .then(|| parse_id("run_id", &b.run_id))
                    .transpose()?,
                channel: (b.channel != 0)
                    .then(|| channel_from_pb(b.channel).map(|c| c.as_str().to_owned()))
                    .transpose()?,
                day: (!b.day.is_empty())
                    .then(|| parse_day("day", &b.day))
                    .transpose()?,
                kind: one_of("kind", &b.kind, &KINDS)?,
                status: one_of("status", &b.status, &STATUSES)?,
                before: (!b.cursor.is_empty())
                    .then(|| decode_page_token(&b.cursor))
                    .transpose()
                    .map_err(|_| FieldError::new("cursor", "is not a cursor this server issued"))?,
            };
            let size = match b.page_size {
                0 => DEFAULT_PAGE_SIZE,
                n => n.min(MAX_PAGE_SIZE),
            };
            let rows = self
                .app
                .list_discrepancies(filter, i64::from(size) + 1)
                .await?;
            let more = rows.len() > size as usize;
            let rows: Vec<_> = rows.into_iter().take(size as usize).collect();
            let next_cursor = match rows.last() {
                Some(last) if more => encode_cursor(last.created_at, last.id),
                _ => String::new(),
            };
            Ok(Ok(pb::ListDiscrepanciesResponse {
                discrepancies: rows.iter().map(discrepancy_to_pb).collect(),
                next_cursor,
            }))
        }
        .await;
        self.respond("ListDiscrepancies", r)
    }

    async fn resolve_discrepancy(
        &self,
        req: Request<pb::ResolveDiscrepancyRequest>,
    ) -> Result<Response<pb::ResolveDiscrepancyResponse>, Status> {
        let ctx = crate::app::audit::AuditCtx::from_metadata(
            "/payment.v1.ReconciliationService/ResolveDiscrepancy",
            req.metadata(),
        )
        .with_operator(&req.get_ref().operator)
        .with_targets(crate::app::audit::Targets {
            target: Some(req.get_ref().id.clone()),
            ..Default::default()
        });
        let r = ctx
            .run_nested(&self.app, async {
                let app = app_id(&req)?;
                let b = req.into_inner();
                let id = parse_id("id", &b.id)?;
                if b.resolution.trim().is_empty() || b.resolution.len() > 500 {
                    return Err(FieldError::new("resolution", "must be 1..=500 characters").into());
                }
                if b.note.len() > 2000 {
                    return Err(FieldError::new("note", "must be at most 2000 characters").into());
                }
                if b.operator.trim().is_empty() || b.operator.len() > 64 {
                    return Err(FieldError::new("operator", "must be 1..=64 characters").into());
                }
                let by = format!("{}/{}", app.as_str(), b.operator.trim());
                Ok(
                    match self
                        .app
                        .resolve_discrepancy(id, b.resolution, b.note, by)
                        .await?
                    {
                        Some(Ok(d)) => Ok(pb::ResolveDiscrepancyResponse {
                            discrepancy: Some(discrepancy_to_pb(&d)),
                        }),
                        Some(Err(d)) => Err(Status::failed_precondition(format!(
                            "discrepancy {id} is {}, not OPEN",
                            d.status
                        ))),
                        None => Err(Status::not_found(format!("discrepancy {id} not found"))),
                    },
                )
            })
            .await;
        self.respond("ResolveDiscrepancy", r)
    }
}
