//! Callback delivery: every notification runs as a tokio task that POSTs it to the merchant,
//! decides by the platform's rule whether it was acknowledged, and retries on the platform's
//! schedule (× time scale) until acknowledged or out of attempts. Fault settings are applied
//! here: lose, copies, delay, reorder.

use std::sync::Arc;
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use serde::Serialize;

use crate::http_client::{self, OutgoingRequest};
use crate::platform::{BuildError, CallbackMode, SimulatedPlatform, lock};

/// Per-attempt timeout, as the platforms allow the merchant about 5 s to answer.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long reordered notifications are held when `callback_delay_ms` is 0.
const DEFAULT_REORDER_WINDOW: Duration = Duration::from_millis(200);

/// Gap between releasing held notifications, so their arrival order is the release order.
const REORDER_GAP: Duration = Duration::from_millis(50);

/// Longest reply excerpt kept in the log.
const EXCERPT_CHARS: usize = 200;

/// Payment or refund.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationKind {
    /// A payment result.
    Payment,
    /// A refund result.
    Refund,
}

/// Builds the request for one attempt; called again for every retry so signatures and
/// timestamps are fresh while the notification id stays the same.
pub type BuildRequest = Arc<dyn Fn() -> Result<OutgoingRequest, BuildError> + Send + Sync>;

/// One notification to deliver.
#[derive(Clone)]
pub struct Notification {
    /// Stays the same across retries and copies.
    pub notify_id: String,
    /// The trade it is about.
    pub out_trade_no: String,
    /// Payment or refund.
    pub kind: NotificationKind,
    /// Request builder.
    pub build: BuildRequest,
}

impl std::fmt::Debug for Notification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notification")
            .field("notify_id", &self.notify_id)
            .field("out_trade_no", &self.out_trade_no)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// One delivery attempt, as listed by `GET /sandbox/callbacks`.
#[derive(Clone, Debug, Serialize)]
pub struct DeliveryRecord {
    /// Notification id.
    pub notify_id: String,
    /// Trade.
    pub out_trade_no: String,
    /// Payment or refund.
    pub kind: NotificationKind,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// Which copy (1-based) when `callback_copies` > 1.
    pub copy: u32,
    /// RFC 3339 time of the attempt's end.
    pub at: String,
    /// The merchant's HTTP status; `None` on connect error or timeout.
    pub http_status: Option<u16>,
    /// Whether the platform would count this attempt as acknowledged.
    pub delivered: bool,
    /// The start of the merchant's reply body.
    pub body_excerpt: String,
    /// Transport error, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Hands a notification to delivery, honouring the fault settings. Returns immediately.
pub fn dispatch(platform: Arc<dyn SimulatedPlatform>, notification: Notification) {
    let faults = platform.core().faults();
    if faults.callback_mode == CallbackMode::Lose {
        tracing::info!(notify_id = %notification.notify_id, "callback lost (fault injection)");
        return;
    }
    let delay = Duration::from_millis(faults.callback_delay_ms);
    if faults.callback_reorder {
        hold_for_reorder(platform, notification, delay.max(DEFAULT_REORDER_WINDOW));
        return;
    }
    tokio::spawn(async move {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        start_copies(&platform, &notification);
    });
}

/// Adds the notification to the held batch; the first one in a batch opens a window at the end
/// of which the whole batch is released newest first.
fn hold_for_reorder(
    platform: Arc<dyn SimulatedPlatform>,
    notification: Notification,
    window: Duration,
) {
    let opens_batch = {
        let mut held = lock(&platform.core().held);
        match held.as_mut() {
            Some(batch) => {
                batch.push(notification);
                false
            }
            None => {
                *held = Some(vec![notification]);
                true
            }
        }
    };
    if !opens_batch {
        return;
    }
    tokio::spawn(async move {
        tokio::time::sleep(window).await;
        let batch = lock(&platform.core().held).take().unwrap_or_default();
        for notification in batch.into_iter().rev() {
            start_copies(&platform, &notification);
            tokio::time::sleep(REORDER_GAP).await;
        }
    });
}

fn start_copies(platform: &Arc<dyn SimulatedPlatform>, notification: &Notification) {
    let copies = platform.core().faults().callback_copies.max(1);
    for copy in 1..=copies {
        let platform = Arc::clone(platform);
        let notification = notification.clone();
        tokio::spawn(async move { deliver_with_retries(platform, notification, copy).await });
    }
}

async fn deliver_with_retries(
    platform: Arc<dyn SimulatedPlatform>,
    notification: Notification,
    copy: u32,
) {
    let schedule = platform.profile().retry_schedule;
    let attempts = schedule.len() + 1;
    for attempt in 1..=attempts {
        if attempt > 1 {
            let delay = platform.core().scaled(schedule[attempt - 2]);
            tokio::time::sleep(delay).await;
        }
        if attempt_once(&*platform, &notification, attempt as u32, copy).await {
            return;
        }
    }
    tracing::warn!(notify_id = %notification.notify_id, "callback retries exhausted");
}

/// Makes one attempt and logs it; `true` when acknowledged.
async fn attempt_once(
    platform: &dyn SimulatedPlatform,
    notification: &Notification,
    attempt: u32,
    copy: u32,
) -> bool {
    let mut record = DeliveryRecord {
        notify_id: notification.notify_id.clone(),
        out_trade_no: notification.out_trade_no.clone(),
        kind: notification.kind,
        attempt,
        copy,
        at: String::new(),
        http_status: None,
        delivered: false,
        body_excerpt: String::new(),
        error: None,
    };
    match (notification.build)() {
        Err(e) => record.error = Some(e.to_string()),
        Ok(request) => match http_client::send(&request, ATTEMPT_TIMEOUT).await {
            Ok(reply) => {
                record.http_status = Some(reply.status);
                record.delivered = (platform.profile().is_acknowledged)(&reply);
                record.body_excerpt = reply.text().chars().take(EXCERPT_CHARS).collect();
            }
            Err(e) => record.error = Some(e.to_string()),
        },
    }
    record.at = Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true);
    tracing::info!(
        notify_id = %record.notify_id,
        attempt,
        copy,
        status = ?record.http_status,
        delivered = record.delivered,
        "callback attempt"
    );
    let delivered = record.delivered;
    lock(&platform.core().deliveries).push(record);
    delivered
}

/// Sends one notification once, synchronously, without logging or retrying (the control API's
/// tamper probe). Returns the merchant's status and body.
///
/// # Errors
/// The transport error as text.
pub async fn send_once(request: &OutgoingRequest) -> Result<(u16, String), String> {
    http_client::send(request, ATTEMPT_TIMEOUT)
        .await
        .map(|reply| (reply.status, reply.text()))
        .map_err(|e| e.to_string())
}
