//! Who did what: one audit record per state-changing call.
//!
//! The gRPC edge opens an [`AuditCtx`] for each state-changing call (who, which method, the
//! request id) and runs the use case inside it ([`AuditCtx::run`]). A use case that changes
//! state writes the record in its own transaction ([`record`]), so the change and its record
//! commit or vanish together. When the call ends without having written one — it was refused,
//! failed, or was an idempotent repeat that changed nothing — the edge writes it on its own,
//! after the fact. Either way, exactly one record per call.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use diesel::PgConnection;
use uuid::Uuid;

use super::{App, ServiceError};
use crate::storage::StorageError;
use crate::storage::audit::{self as store, NewAuditRecord};

/// Metadata naming the person behind a call (payctl sends it; at most 64 printable chars).
pub const OPERATOR_HEADER: &str = "x-operator";
/// Metadata carrying the caller's request id; the server assigns one when absent and returns
/// it in the response metadata under the same name.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// What a record is about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Targets {
    pub order_id: Option<Uuid>,
    pub out_trade_no: Option<String>,
    pub refund_id: Option<Uuid>,
    pub recon_run_id: Option<Uuid>,
    /// Anything else: a discrepancy id, a channel event id, a refund_request_no.
    pub target: Option<String>,
}

impl Targets {
    pub fn order(id: impl Into<Uuid>) -> Self {
        Self {
            order_id: Some(id.into()),
            ..Self::default()
        }
    }
}

/// One call's audit identity. Cloned into the task-local scope; `recorded` is shared, so the
/// edge knows whether the use case wrote the record in its transaction.
#[derive(Debug, Clone)]
pub struct AuditCtx {
    /// The full gRPC method name.
    pub action: &'static str,
    pub app_id: Option<String>,
    pub operator: Option<String>,
    /// The reporting adapter's channel, for ChannelEvents.
    pub adapter: Option<String>,
    pub request_id: String,
    /// What the request names, for a record written outside a transaction.
    pub targets: Targets,
    recorded: Arc<AtomicBool>,
}

tokio::task_local! {
    static CURRENT: AuditCtx;
}

/// The audit context of the call this task serves, if it is a state-changing call. Read it
/// before `Db::run` (whose closure runs on a blocking thread) and hand it to [`record`].
pub fn current() -> Option<AuditCtx> {
    CURRENT.try_with(Clone::clone).ok()
}

fn printable(v: &str, max: usize) -> Option<String> {
    let v = v.trim();
    (!v.is_empty() && v.len() <= max && v.chars().all(|c| !c.is_control())).then(|| v.to_owned())
}

impl AuditCtx {
    /// Reads who is calling from the request metadata: the app (`x-app-id`, as the handlers
    /// read it), the person (`x-operator`), and the request id (`x-request-id`, or a new one).
    pub fn from_metadata(action: &'static str, md: &tonic::metadata::MetadataMap) -> Self {
        let get = |k: &str, max| {
            md.get(k)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| printable(v, max))
        };
        Self {
            action,
            app_id: get(crate::grpc::payment::APP_ID_HEADER, 64),
            operator: get(OPERATOR_HEADER, 64),
            adapter: None,
            request_id: get(REQUEST_ID_HEADER, 64).unwrap_or_else(|| Uuid::now_v7().to_string()),
            targets: Targets::default(),
            recorded: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn with_targets(mut self, t: Targets) -> Self {
        self.targets = t;
        self
    }

    pub fn with_adapter(mut self, channel: Option<&str>) -> Self {
        self.adapter = channel.map(str::to_lowercase);
        self
    }

    pub fn with_operator(mut self, operator: &str) -> Self {
        if let Some(op) = printable(operator, 64) {
            self.operator = Some(op);
        }
        self
    }

    fn actor_kind(&self) -> &'static str {
        if self.adapter.is_some() {
            "ADAPTER"
        } else if self.operator.is_some() {
            "OPERATOR"
        } else {
            "APP"
        }
    }

    fn new_record<'a>(
        &'a self,
        outcome: &'a str,
        code: &'a str,
        t: &'a Targets,
    ) -> NewAuditRecord<'a> {
        NewAuditRecord {
            actor_kind: self.actor_kind(),
            app_id: self.app_id.as_deref(),
            operator: self.operator.as_deref(),
            adapter: self.adapter.as_deref(),
            action: self.action,
            outcome,
            code,
            request_id: &self.request_id,
            order_id: t.order_id,
            out_trade_no: t.out_trade_no.as_deref(),
            refund_id: t.refund_id,
            recon_run_id: t.recon_run_id,
            target: t.target.as_deref(),
        }
    }

    /// An adapter's report that cannot change anything — an event already recorded, or a
    /// success the attempt already holds, re-notified under a new id — is not audited at all:
    /// the platforms resend notifications at will (WeChat up to 15 times, a storm at any rate),
    /// and a repeat must cost no write (no WAL, no commit: BENCH_AND_FAULTS M7). The first report
    /// is audited; repeats are counted in `payd_channel_events_total{outcome="REPEATED"}` and
    /// `{outcome="ALREADY_APPLIED"}`. Calls of apps and operators that change nothing are still
    /// audited (REPLAYED).
    pub fn repeat_of_a_recorded_event(&self) {
        self.recorded.store(true, Ordering::SeqCst);
    }

    /// Runs the use case as this call; writes the record outside any transaction if the use
    /// case wrote none (refused, failed, or a repeat that changed nothing). A failure to write
    /// that record is logged, not returned: the call's own answer stands.
    pub async fn run<T>(
        self,
        app: &App,
        fut: impl std::future::Future<Output = Result<T, ServiceError>>,
    ) -> Result<T, ServiceError> {
        self.run_with(app, fut, classify).await
    }

    /// [`AuditCtx::run`] for handlers that answer some refusals with a ready `Status`.
    pub async fn run_nested<T>(
        self,
        app: &App,
        fut: impl std::future::Future<Output = Result<Result<T, tonic::Status>, ServiceError>>,
    ) -> Result<Result<T, tonic::Status>, ServiceError> {
        self.run_with(app, fut, classify_nested).await
    }

    async fn run_with<R>(
        self,
        app: &App,
        fut: impl std::future::Future<Output = R>,
        classify: fn(&R) -> (&'static str, &'static str),
    ) -> R {
        let r = CURRENT.scope(self.clone(), fut).await;
        if !self.recorded.load(Ordering::SeqCst) {
            let (outcome, code) = classify(&r);
            let ctx = self.clone();
            let written = app
                .db
                .run(move |conn| {
                    let t = ctx.targets.clone();
                    store::insert(conn, &ctx.new_record(outcome, code, &t))
                })
                .await;
            if let Err(e) = written {
                tracing::error!(action = self.action, request_id = %self.request_id, error = ?e,
                    "writing the audit record of a call that changed nothing failed");
            }
        }
        r
    }
}

/// Writes the call's record (outcome OK) inside the caller's transaction, once per call. Does
/// nothing outside a state-changing call (workers) or when the call is not `action` (a use
/// case reused inside another call, e.g. a payment result applied while Pay closes a trade:
/// the outer call writes its own record).
///
/// # Errors
/// The insert's; the caller's transaction then rolls back with it.
pub fn record(
    conn: &mut PgConnection,
    ctx: Option<&AuditCtx>,
    action: &str,
    targets: &Targets,
) -> Result<(), StorageError> {
    let Some(ctx) = ctx.filter(|c| c.action.ends_with(action)) else {
        return Ok(());
    };
    if ctx.recorded.swap(true, Ordering::SeqCst) {
        return Ok(());
    }
    if let Err(e) = store::insert(conn, &ctx.new_record("OK", "OK", targets)) {
        ctx.recorded.store(false, Ordering::SeqCst);
        return Err(e);
    }
    Ok(())
}

/// The call's record, claimed for a single-statement write (`storage::steps`) that inserts it
/// from [`InStatement::json`]. Dropped without [`InStatement::written`] (the statement was
/// refused or failed), the claim is given back, so the path that runs instead writes the record.
#[derive(Debug)]
pub struct InStatement<'a> {
    ctx: &'a AuditCtx,
    json: serde_json::Value,
    written: bool,
}

impl InStatement<'_> {
    pub fn json(&self) -> &serde_json::Value {
        &self.json
    }

    /// The statement committed: the record is written.
    pub fn written(mut self) {
        self.written = true;
    }
}

impl Drop for InStatement<'_> {
    fn drop(&mut self) {
        if !self.written {
            self.ctx.recorded.store(false, Ordering::SeqCst);
        }
    }
}

/// As [`record`], for a write that inserts the record inside its own single statement: `None`
/// when there is nothing to write (not a state-changing call, another action, or already
/// written).
///
/// # Errors
/// Only if the record cannot be encoded as JSON.
pub fn for_statement<'a>(
    ctx: Option<&'a AuditCtx>,
    action: &str,
    targets: &Targets,
) -> Result<Option<InStatement<'a>>, StorageError> {
    let Some(ctx) = ctx.filter(|c| c.action.ends_with(action)) else {
        return Ok(None);
    };
    if ctx.recorded.swap(true, Ordering::SeqCst) {
        return Ok(None);
    }
    let mut claim = InStatement {
        ctx,
        json: serde_json::Value::Null,
        written: false,
    };
    claim.json = serde_json::to_value(ctx.new_record("OK", "OK", targets))
        .map_err(|e| StorageError::Corrupt(format!("encoding an audit record: {e}")))?;
    Ok(Some(claim))
}

fn outcome_of_code(code: tonic::Code) -> &'static str {
    match crate::grpc::status::rejection_reason(code) {
        Some(_) => "REFUSED",
        None => "FAILED",
    }
}

/// How a finished call that wrote no record itself reads in the log: (outcome, code name).
/// A success that wrote nothing is an idempotent repeat.
fn classify<T>(r: &Result<T, ServiceError>) -> (&'static str, &'static str) {
    match r {
        Ok(_) => ("REPLAYED", "OK"),
        Err(e) => {
            let code = crate::grpc::status::code_of(e);
            (outcome_of_code(code), crate::grpc::status::code_name(code))
        }
    }
}

fn classify_nested<T>(
    r: &Result<Result<T, tonic::Status>, ServiceError>,
) -> (&'static str, &'static str) {
    match r {
        Ok(Err(s)) => (
            outcome_of_code(s.code()),
            crate::grpc::status::code_name(s.code()),
        ),
        Ok(Ok(_)) => ("REPLAYED", "OK"),
        Err(e) => {
            let code = crate::grpc::status::code_of(e);
            (outcome_of_code(code), crate::grpc::status::code_name(code))
        }
    }
}

impl App {
    /// The audit log, newest first.
    pub async fn list_audit_records(
        &self,
        filter: store::AuditFilter,
    ) -> Result<Vec<store::AuditRow>, ServiceError> {
        Ok(self.db.run(move |conn| store::list(conn, &filter)).await?)
    }
}
