//! What every sandbox process shares: the [`SimulatedPlatform`] trait and [`Profile`] data a
//! platform server provides so the control API and callback delivery can drive it, and the [`Core`] state (ledger, fault
//! settings, delivery log, time scale) it owns.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::callbacks::DeliveryRecord;
use crate::http_client::{OutgoingRequest, Reply};
use std::sync::Arc;

use crate::ledger::{Ledger, Refund, RefundState, SettleError, Settlement, Trade};

/// How a one-off notification sent through the control API is deliberately broken.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Tamper {
    /// Correct in every way.
    #[default]
    None,
    /// A wrong signature.
    Signature,
    /// The body changed after signing (the amount).
    Body,
    /// Signed by a key the merchant does not know (WeChat: an unknown `Wechatpay-Serial`).
    Serial,
    /// WeChat only: correctly signed, but the timestamp is 10 minutes old.
    StaleTimestamp,
}

/// Why a notification could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// This tampering makes no sense for the platform.
    #[error("tamper {0:?} is not applicable to {1}")]
    NotApplicable(Tamper, &'static str),
    /// Signing or encryption failed.
    #[error("{0}")]
    Crypto(String),
}

/// The constant parts of a platform's notification rules, as data: each platform server has one
/// (`PROFILE` in its `server` module), read by the control API and the callback deliverer.
#[derive(Debug)]
pub struct Profile {
    /// `wechat`, `alipay` or `unionpay`.
    pub name: &'static str,
    /// Delays between consecutive attempts of one notification, before time scaling.
    pub retry_schedule: &'static [Duration],
    /// Whether the merchant's reply acknowledges the notification, by the platform's rule.
    pub is_acknowledged: fn(&Reply) -> bool,
    /// A fresh notification id (WeChat event `id`, Alipay `notify_id`), kept across retries.
    pub new_notify_id: fn() -> String,
}

/// A simulated platform server, as seen by the control API and the callback deliverer.
pub trait SimulatedPlatform: Send + Sync + 'static {
    /// The platform's constant notification rules.
    fn profile(&self) -> &'static Profile;
    /// The shared state.
    fn core(&self) -> &Core;
    /// Builds (and signs afresh) the payment-success notification for `trade`.
    ///
    /// # Errors
    /// [`BuildError`].
    fn payment_notification(
        &self,
        trade: &Trade,
        notify_id: &str,
        tamper: Tamper,
    ) -> Result<OutgoingRequest, BuildError>;
    /// A refund was settled (SUCCEEDED, FAILED, or WeChat ABNORMAL) by the settle timer or the
    /// control API: schedules the platform's refund notification, where it sends one.
    fn refund_settled(self: Arc<Self>, trade: &Trade, refund: &Refund);
    /// Whether `refund_outcome: "abnormal"` exists on this platform (WeChat only).
    fn supports_abnormal_refunds(&self) -> bool {
        false
    }
}

/// How refunds created from now on end (`refund_outcome`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RefundEnding {
    /// The refund succeeds.
    #[default]
    Success,
    /// The refund fails (WeChat CLOSED, Alipay a business refusal, UnionPay a failure code).
    Fail,
    /// The refund stays PROCESSING until `POST /sandbox/refunds/{no}/settle`.
    Manual,
    /// WeChat only: the refund becomes ABNORMAL (still in flight, resolved by hand).
    Abnormal,
}

impl RefundEnding {
    /// The settlement the settle timer applies; `None` for `Manual`.
    pub fn settlement(self) -> Option<Settlement> {
        match self {
            Self::Success => Some(Settlement::Success),
            Self::Fail => Some(Settlement::Fail),
            Self::Abnormal => Some(Settlement::Abnormal),
            Self::Manual => None,
        }
    }
}

/// Settles a refund in flight and fires the platform's notification.
///
/// # Errors
/// [`SettleError`] from the ledger.
pub fn settle_refund(
    platform: &Arc<dyn SimulatedPlatform>,
    out_refund_no: &str,
    to: Settlement,
) -> Result<(Trade, Refund), SettleError> {
    let (trade, refund) = platform.core().ledger().settle_refund(out_refund_no, to)?;
    Arc::clone(platform).refund_settled(&trade, &refund);
    Ok((trade, refund))
}

/// Called by a platform server when a refund-creating call has recorded a PROCESSING refund
/// (the answer is already built, before any answer delay, so a merchant that hangs up does not
/// stop it): settles it to
/// `refund_outcome` `refund_settle_ms` after its creation, or at once when that moment has
/// passed; `Manual` never. Returns at once.
pub fn schedule_refund_settlement(
    platform: &Arc<dyn SimulatedPlatform>,
    refund: &Refund,
    ending: RefundEnding,
) {
    let Some(to) = ending.settlement() else {
        return;
    };
    if refund.state != RefundState::Processing {
        return;
    }
    let settle_ms = platform.core().faults().refund_settle_ms;
    let due = refund.created_at
        + chrono::Duration::milliseconds(settle_ms.try_into().unwrap_or(i64::MAX));
    let wait = (due - chrono::Utc::now()).to_std().unwrap_or_default();
    let out_refund_no = refund.out_refund_no.clone();
    let settle = move |platform: &Arc<dyn SimulatedPlatform>| {
        // A refund settled by hand in the meantime stays as it is.
        if let Err(e) = settle_refund(platform, &out_refund_no, to) {
            tracing::debug!(%out_refund_no, ?e, "refund settle timer: nothing to settle");
        }
    };
    if wait.is_zero() {
        // Due already (0 ms): settled now; the answer (already built) says PROCESSING, and
        // every later call sees the outcome.
        settle(platform);
        return;
    }
    let platform = Arc::clone(platform);
    tokio::spawn(async move {
        tokio::time::sleep(wait).await;
        settle(&platform);
    });
}

/// Callback delivery mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CallbackMode {
    /// Deliver (with retries).
    #[default]
    Deliver,
    /// Drop every notification silently.
    Lose,
}

/// Injected faults; see the README's "Fault modes".
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Faults {
    /// Deliver or lose callbacks.
    pub callback_mode: CallbackMode,
    /// Each notification is sent this many times, concurrently (at least 1).
    pub callback_copies: u32,
    /// Wait before the first attempt, in milliseconds (not time-scaled).
    pub callback_delay_ms: u64,
    /// Hold notifications for a short window and release them newest first.
    pub callback_reorder: bool,
    /// Fraction of API calls answered with the platform's system error.
    pub api_error_rate: f64,
    /// Delay before every API answer, in milliseconds.
    pub api_delay_ms: u64,
    /// WeChat only: paid trades are reported (query answers and callbacks) with this many fen
    /// more than was paid, like a platform that booked another amount.
    pub reported_amount_delta_minor: i64,
    /// How refunds created from now on end.
    pub refund_outcome: RefundEnding,
    /// A PROCESSING refund settles this many ms after creation (0 = once the creating call
    /// has answered); not time-scaled.
    pub refund_settle_ms: u64,
    /// Refund-creating calls are executed, then answered this much later.
    pub refund_answer_delay_ms: u64,
    /// WeChat only: a close of an unpaid trade closes it (queries show CLOSED), but a payment
    /// already in flight inside the platform when the close arrived can still complete once (the
    /// payer's next `pay` succeeds). The way a merchant that closes before switching can still
    /// be paid twice.
    pub close_race: bool,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            callback_mode: CallbackMode::Deliver,
            callback_copies: 1,
            callback_delay_ms: 0,
            callback_reorder: false,
            api_error_rate: 0.0,
            api_delay_ms: 0,
            reported_amount_delta_minor: 0,
            refund_outcome: RefundEnding::Success,
            refund_settle_ms: 0,
            refund_answer_delay_ms: 0,
            close_race: false,
        }
    }
}

/// A partial update of [`Faults`]: omitted fields stay as they are.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultsPatch {
    /// See [`Faults::callback_mode`].
    pub callback_mode: Option<CallbackMode>,
    /// See [`Faults::callback_copies`].
    pub callback_copies: Option<u32>,
    /// See [`Faults::callback_delay_ms`].
    pub callback_delay_ms: Option<u64>,
    /// See [`Faults::callback_reorder`].
    pub callback_reorder: Option<bool>,
    /// See [`Faults::api_error_rate`].
    pub api_error_rate: Option<f64>,
    /// See [`Faults::api_delay_ms`].
    pub api_delay_ms: Option<u64>,
    /// See [`Faults::reported_amount_delta_minor`].
    pub reported_amount_delta_minor: Option<i64>,
    /// See [`Faults::refund_outcome`].
    pub refund_outcome: Option<RefundEnding>,
    /// See [`Faults::refund_settle_ms`].
    pub refund_settle_ms: Option<u64>,
    /// See [`Faults::refund_answer_delay_ms`].
    pub refund_answer_delay_ms: Option<u64>,
    /// See [`Faults::close_race`].
    pub close_race: Option<bool>,
}

impl Faults {
    /// Applies `patch`, clamping the rate to [0, 1] and copies to at least 1.
    pub fn apply(&mut self, patch: FaultsPatch) {
        if let Some(v) = patch.callback_mode {
            self.callback_mode = v;
        }
        if let Some(v) = patch.callback_copies {
            self.callback_copies = v.max(1);
        }
        if let Some(v) = patch.callback_delay_ms {
            self.callback_delay_ms = v;
        }
        if let Some(v) = patch.callback_reorder {
            self.callback_reorder = v;
        }
        if let Some(v) = patch.api_error_rate {
            self.api_error_rate = if v.is_finite() {
                v.clamp(0.0, 1.0)
            } else {
                0.0
            };
        }
        if let Some(v) = patch.api_delay_ms {
            self.api_delay_ms = v;
        }
        if let Some(v) = patch.reported_amount_delta_minor {
            self.reported_amount_delta_minor = v;
        }
        if let Some(v) = patch.refund_outcome {
            self.refund_outcome = v;
        }
        if let Some(v) = patch.refund_settle_ms {
            self.refund_settle_ms = v;
        }
        if let Some(v) = patch.refund_answer_delay_ms {
            self.refund_answer_delay_ms = v;
        }
        if let Some(v) = patch.close_race {
            self.close_race = v;
        }
    }
}

/// Locks a mutex, carrying on with the data if a panicking thread poisoned it (every update
/// here is a single assignment or push, so the data is never half-written).
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// State shared by one platform process.
#[derive(Debug)]
pub struct Core {
    /// Trades and refunds.
    pub ledger: Mutex<Ledger>,
    /// Injected faults.
    pub faults: Mutex<Faults>,
    /// Every callback attempt.
    pub deliveries: Mutex<Vec<DeliveryRecord>>,
    /// Notifications held back for reordering.
    pub(crate) held: Mutex<Option<Vec<crate::callbacks::Notification>>>,
    /// Multiplies every retry delay.
    pub time_scale: f64,
    /// What the statements get wrong on purpose, and the synthetic days.
    pub statement_faults: Mutex<crate::statements::StatementFaults>,
}

impl Core {
    /// The ledger, locked, with trades past their deadline closed first: every platform API and
    /// control call sees the platform's expiry.
    pub fn ledger(&self) -> MutexGuard<'_, Ledger> {
        let mut l = lock(&self.ledger);
        l.expire_due(chrono::Utc::now());
        l
    }

    /// Empty state with the given time scale (non-finite or negative values become 1.0).
    pub fn new(time_scale: f64) -> Self {
        let time_scale = if time_scale.is_finite() && time_scale >= 0.0 {
            time_scale
        } else {
            1.0
        };
        Self {
            ledger: Mutex::new(Ledger::new()),
            faults: Mutex::new(Faults::default()),
            deliveries: Mutex::new(Vec::new()),
            held: Mutex::new(None),
            time_scale,
            statement_faults: Mutex::new(crate::statements::StatementFaults::default()),
        }
    }

    /// A snapshot of the fault settings.
    pub fn faults(&self) -> Faults {
        lock(&self.faults).clone()
    }

    /// Rolls the dice for `api_error_rate`: `true` means answer with a system error.
    pub fn inject_api_error(&self) -> bool {
        let rate = lock(&self.faults).api_error_rate;
        rate > 0.0 && rand::random::<f64>() < rate
    }

    /// Sleeps `api_delay_ms`, if set.
    pub async fn delay_api_answer(&self) {
        let delay = lock(&self.faults).api_delay_ms;
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
    }

    /// Sleeps `refund_answer_delay_ms` (refund-creating calls only), if set.
    pub async fn delay_refund_answer(&self) {
        let delay = lock(&self.faults).refund_answer_delay_ms;
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
    }

    /// `delay` multiplied by the time scale.
    pub fn scaled(&self, delay: Duration) -> Duration {
        Duration::from_secs_f64(delay.as_secs_f64() * self.time_scale)
    }
}
