//! The unsigned control API under `/sandbox/`: the test's (or demo's) hand on the payer, on
//! fault injection and on the callback log. Plain JSON, same listener as the platform API.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::callbacks::{self, Notification, NotificationKind};
use crate::ledger::{
    Refund, RefundState, SettleError, Settlement, Trade, TradeState, TransitionError,
};
use crate::platform::{Faults, FaultsPatch, RefundEnding, SimulatedPlatform, Tamper, lock};
use crate::statements::{StatementFaults, StatementFaultsPatch, SyntheticDay};

/// The control routes, to be merged into a platform's router.
pub fn router(platform: Arc<dyn SimulatedPlatform>) -> Router {
    Router::new()
        .route("/sandbox/health", get(|| async { "ok" }))
        .route("/sandbox/trades", get(list_trades))
        .route("/sandbox/trades/{out_trade_no}", get(show_trade))
        .route("/sandbox/trades/{out_trade_no}/pay", post(pay))
        .route("/sandbox/trades/{out_trade_no}/notify", post(notify_once))
        .route("/sandbox/refunds/{out_refund_no}", get(show_refund))
        .route(
            "/sandbox/refunds/{out_refund_no}/settle",
            post(settle_refund),
        )
        .route(
            "/sandbox/faults",
            get(show_faults).post(patch_faults).delete(reset_faults),
        )
        .route(
            "/sandbox/statements/faults",
            get(show_statement_faults)
                .post(patch_statement_faults)
                .delete(reset_statement_faults),
        )
        .route("/sandbox/statements/synthetic", post(set_synthetic_day))
        .route(
            "/sandbox/callbacks",
            get(list_callbacks).delete(clear_callbacks),
        )
        .with_state(platform)
}

/// A refund in the control API's JSON (alone, and as the items of a trade's `refunds`).
#[derive(Debug, Serialize)]
pub struct RefundView {
    out_trade_no: String,
    out_refund_no: String,
    amount_minor: u64,
    state: RefundState,
    /// WeChat ABNORMAL (state stays PROCESSING).
    abnormal: bool,
    channel_refund_no: String,
    requests: u32,
    created_at: String,
    settled_at: Option<String>,
}

impl RefundView {
    fn new(trade: &Trade, r: &Refund) -> Self {
        Self {
            out_trade_no: trade.out_trade_no.clone(),
            out_refund_no: r.out_refund_no.clone(),
            amount_minor: r.amount_minor,
            state: r.state,
            abnormal: r.abnormal,
            channel_refund_no: r.channel_refund_no.clone(),
            requests: r.requests,
            created_at: r.created_at.to_rfc3339(),
            settled_at: r.settled_at.map(|t| t.to_rfc3339()),
        }
    }
}

/// A trade in the control API's JSON.
#[derive(Debug, Serialize)]
pub struct TradeView {
    out_trade_no: String,
    method: String,
    state: TradeState,
    amount_minor: u64,
    currency: String,
    subject: String,
    channel_trade_no: String,
    prepay_requests: u32,
    notify_url: String,
    created_at: String,
    paid_at: Option<String>,
    refunds: Vec<RefundView>,
}

impl From<&Trade> for TradeView {
    fn from(t: &Trade) -> Self {
        Self {
            out_trade_no: t.out_trade_no.clone(),
            method: t.method.clone(),
            state: t.state,
            amount_minor: t.amount_minor,
            currency: t.currency.clone(),
            subject: t.subject.clone(),
            channel_trade_no: t.channel_trade_no.clone(),
            prepay_requests: t.prepay_requests,
            notify_url: t.notify_url.clone(),
            created_at: t.created_at.to_rfc3339(),
            paid_at: t.paid_at.map(|p| p.to_rfc3339()),
            refunds: t.refunds.iter().map(|r| RefundView::new(t, r)).collect(),
        }
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

async fn list_trades(State(platform): State<Arc<dyn SimulatedPlatform>>) -> Json<Vec<TradeView>> {
    let ledger = platform.core().ledger();
    Json(ledger.trades().map(TradeView::from).collect())
}

async fn show_trade(
    State(platform): State<Arc<dyn SimulatedPlatform>>,
    Path(out_trade_no): Path<String>,
) -> Response {
    match platform.core().ledger().trade(&out_trade_no) {
        Some(trade) => Json(TradeView::from(trade)).into_response(),
        None => error(StatusCode::NOT_FOUND, "no such trade"),
    }
}

/// What the payer does.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum Outcome {
    Success,
    Fail,
    Abandon,
}

#[derive(Debug, Deserialize)]
struct PayBody {
    outcome: Outcome,
}

async fn pay(
    State(platform): State<Arc<dyn SimulatedPlatform>>,
    Path(out_trade_no): Path<String>,
    Json(body): Json<PayBody>,
) -> Response {
    let result = {
        let mut ledger = platform.core().ledger();
        match body.outcome {
            Outcome::Success => ledger.settle(&out_trade_no, TradeState::Succeeded),
            Outcome::Fail => ledger.settle(&out_trade_no, TradeState::Failed),
            // The payer walks away: nothing changes, but the trade must exist and be open.
            Outcome::Abandon => match ledger.trade(&out_trade_no) {
                None => Err(TransitionError::NotFound),
                Some(t) if t.state != TradeState::Pending => {
                    Err(TransitionError::WrongState(t.state))
                }
                Some(t) => Ok(t.clone()),
            },
        }
    };
    match result {
        Err(TransitionError::NotFound) => error(StatusCode::NOT_FOUND, "no such trade"),
        Err(TransitionError::WrongState(state)) => error(
            StatusCode::CONFLICT,
            format!("trade is {state:?}, not PENDING"),
        ),
        Ok(trade) => {
            if body.outcome == Outcome::Success {
                schedule_payment_notification(&platform, &trade);
            }
            Json(TradeView::from(&trade)).into_response()
        }
    }
}

/// Schedules the payment-success callback of a freshly paid trade.
pub fn schedule_payment_notification(platform: &Arc<dyn SimulatedPlatform>, trade: &Trade) {
    let notify_id = (platform.profile().new_notify_id)();
    let build = {
        let platform = Arc::clone(platform);
        let trade = trade.clone();
        let notify_id = notify_id.clone();
        Arc::new(move || platform.payment_notification(&trade, &notify_id, Tamper::None))
    };
    callbacks::dispatch(
        Arc::clone(platform),
        Notification {
            notify_id,
            out_trade_no: trade.out_trade_no.clone(),
            kind: NotificationKind::Payment,
            build,
        },
    );
}

#[derive(Debug, Deserialize)]
struct NotifyBody {
    #[serde(default)]
    tamper: Tamper,
    /// Re-send under this notification id (a late copy of one already sent, as the platform
    /// retries it) instead of a fresh one.
    #[serde(default)]
    notify_id: Option<String>,
}

async fn notify_once(
    State(platform): State<Arc<dyn SimulatedPlatform>>,
    Path(out_trade_no): Path<String>,
    body: Option<Json<NotifyBody>>,
) -> Response {
    let (tamper, notify_id) = body
        .map(|Json(b)| (b.tamper, b.notify_id))
        .unwrap_or_default();
    let Some(trade) = platform.core().ledger().trade(&out_trade_no).cloned() else {
        return error(StatusCode::NOT_FOUND, "no such trade");
    };
    let notify_id = notify_id.unwrap_or_else(|| (platform.profile().new_notify_id)());
    let request = match platform.payment_notification(&trade, &notify_id, tamper) {
        Ok(request) => request,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    match callbacks::send_once(&request).await {
        Ok((status, body)) => {
            Json(serde_json::json!({ "http_status": status, "body": body })).into_response()
        }
        Err(e) => {
            Json(serde_json::json!({ "http_status": null, "body": "", "error": e })).into_response()
        }
    }
}

async fn show_refund(
    State(platform): State<Arc<dyn SimulatedPlatform>>,
    Path(out_refund_no): Path<String>,
) -> Response {
    match platform.core().ledger().refund(&out_refund_no) {
        Some((trade, refund)) => Json(RefundView::new(trade, refund)).into_response(),
        None => error(StatusCode::NOT_FOUND, "no such refund"),
    }
}

#[derive(Debug, Deserialize)]
struct SettleBody {
    outcome: Settlement,
}

async fn settle_refund(
    State(platform): State<Arc<dyn SimulatedPlatform>>,
    Path(out_refund_no): Path<String>,
    Json(body): Json<SettleBody>,
) -> Response {
    if body.outcome == Settlement::Abnormal && !platform.supports_abnormal_refunds() {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{} has no abnormal refunds", platform.profile().name),
        );
    }
    match crate::platform::settle_refund(&platform, &out_refund_no, body.outcome) {
        Ok((trade, refund)) => Json(RefundView::new(&trade, &refund)).into_response(),
        Err(SettleError::NotFound) => error(StatusCode::NOT_FOUND, "no such refund"),
        Err(SettleError::WrongState(state)) => error(
            StatusCode::CONFLICT,
            format!("refund is {state:?}, not PROCESSING (or already abnormal)"),
        ),
    }
}

async fn show_faults(State(platform): State<Arc<dyn SimulatedPlatform>>) -> Json<Faults> {
    Json(platform.core().faults())
}

async fn patch_faults(
    State(platform): State<Arc<dyn SimulatedPlatform>>,
    Json(patch): Json<FaultsPatch>,
) -> Response {
    if patch.refund_outcome == Some(RefundEnding::Abnormal) && !platform.supports_abnormal_refunds()
    {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "refund_outcome abnormal is WeChat only, not {}",
                platform.profile().name
            ),
        );
    }
    let mut faults = lock(&platform.core().faults);
    faults.apply(patch);
    Json(faults.clone()).into_response()
}

async fn reset_faults(State(platform): State<Arc<dyn SimulatedPlatform>>) -> Json<Faults> {
    let mut faults = lock(&platform.core().faults);
    *faults = Faults::default();
    Json(faults.clone())
}

async fn list_callbacks(
    State(platform): State<Arc<dyn SimulatedPlatform>>,
) -> Json<Vec<callbacks::DeliveryRecord>> {
    Json(lock(&platform.core().deliveries).clone())
}

async fn clear_callbacks(State(platform): State<Arc<dyn SimulatedPlatform>>) -> StatusCode {
    lock(&platform.core().deliveries).clear();
    StatusCode::NO_CONTENT
}

async fn show_statement_faults(
    State(platform): State<Arc<dyn SimulatedPlatform>>,
) -> Json<StatementFaults> {
    Json(lock(&platform.core().statement_faults).clone())
}

async fn patch_statement_faults(
    State(platform): State<Arc<dyn SimulatedPlatform>>,
    Json(patch): Json<StatementFaultsPatch>,
) -> Json<StatementFaults> {
    let mut faults = lock(&platform.core().statement_faults);
    faults.apply(patch, chrono::Utc::now());
    Json(faults.clone())
}

async fn reset_statement_faults(
    State(platform): State<Arc<dyn SimulatedPlatform>>,
) -> Json<StatementFaults> {
    let mut faults = lock(&platform.core().statement_faults);
    *faults = StatementFaults::default();
    Json(faults.clone())
}

async fn set_synthetic_day(
    State(platform): State<Arc<dyn SimulatedPlatform>>,
    Json(day): Json<SyntheticDay>,
) -> Json<StatementFaults> {
    let mut faults = lock(&platform.core().statement_faults);
    faults.set_synthetic(day);
    Json(faults.clone())
}
