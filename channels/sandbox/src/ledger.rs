//! One platform's in-memory book of trades and refunds, with the rules every platform shares:
//! idempotent prepay per `out_trade_no`, one payment per trade, idempotent refunds per refund
//! number, and refunds that never add up to more than was paid.
//!
//! The platforms differ only in vocabulary, which their server modules translate.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde::Serialize;

/// A trade's state, in the sandbox's own words.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TradeState {
    /// Created, waiting for the payer.
    Pending,
    /// Paid.
    Succeeded,
    /// The payment failed (the payer's bank refused, …).
    Failed,
    /// Closed by the merchant before payment, or by the platform at the trade's deadline.
    Closed,
}

/// A refund's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RefundState {
    /// Accepted, money not yet returned (WeChat `PROCESSING`/`ABNORMAL`, Alipay `fund_change: N`,
    /// UnionPay `origRespCode=05`). Counts against the refundable amount.
    Processing,
    /// Money returned.
    Succeeded,
    /// Refused or closed; no money moved, and its amount is refundable again.
    Failed,
}

/// How a refund in flight is settled (by the settle timer or `POST /sandbox/refunds/{no}/settle`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Settlement {
    /// Money returned: SUCCEEDED.
    Success,
    /// Refund failed: FAILED, its amount released.
    Fail,
    /// WeChat only: `ABNORMAL`, still PROCESSING (flag `abnormal`), resolved by hand later.
    Abnormal,
}

/// Why a refund could not be settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettleError {
    /// No such refund.
    NotFound,
    /// The refund is not PROCESSING (or already ABNORMAL, for `Abnormal`).
    WrongState(RefundState),
}

/// One refund of a trade.
#[derive(Clone, Debug, Serialize)]
pub struct Refund {
    /// The merchant's refund number (WeChat `out_refund_no`, Alipay `out_request_no`,
    /// UnionPay the refund's own `orderId`).
    pub out_refund_no: String,
    /// Amount in fen.
    pub amount_minor: u64,
    /// State.
    pub state: RefundState,
    /// WeChat `ABNORMAL`: still PROCESSING, but the platform reported it abnormal.
    pub abnormal: bool,
    /// How many refund-creating requests named this refund (the first included).
    pub requests: u32,
    /// When it became SUCCEEDED or FAILED.
    pub settled_at: Option<DateTime<Utc>>,
    /// The platform's refund id.
    pub channel_refund_no: String,
    /// Where the refund result is notified, if anywhere.
    #[serde(skip)]
    pub notify_url: Option<String>,
    /// Canonical request parameters, to tell a retry from a conflicting reuse.
    #[serde(skip)]
    pub fingerprint: String,
    /// Platform-specific fields (for example UnionPay's refund `txnTime`).
    #[serde(skip)]
    pub extra: BTreeMap<String, String>,
    /// Accepted at.
    pub created_at: DateTime<Utc>,
}

/// One trade.
#[derive(Clone, Debug, Serialize)]
pub struct Trade {
    /// The merchant's order number at the platform.
    pub out_trade_no: String,
    /// Payment product, for example `native`, `jsapi`, `precreate`, `page`, `app`, `front`, `back`.
    pub method: String,
    /// Current state.
    pub state: TradeState,
    /// Amount in fen.
    pub amount_minor: u64,
    /// ISO 4217 code.
    pub currency: String,
    /// Description shown to the payer.
    pub subject: String,
    /// The platform's trade id (WeChat `transaction_id`, Alipay `trade_no`, UnionPay `queryId`).
    pub channel_trade_no: String,
    /// How many prepay requests named this trade.
    pub prepay_requests: u32,
    /// Where payment results are notified.
    pub notify_url: String,
    /// Created at.
    pub created_at: DateTime<Utc>,
    /// Paid at.
    pub paid_at: Option<DateTime<Utc>>,
    /// Refunds, oldest first.
    pub refunds: Vec<Refund>,
    /// Closed while a payment was already on its way (`close_race`): that payment may still
    /// complete.
    #[serde(skip)]
    pub payment_in_flight: bool,
    /// The latest moment the payer may pay (WeChat `time_expire`, Alipay `time_expire` /
    /// `timeout_express`, UnionPay `payTimeout`); the platform closes the trade then.
    pub pay_deadline: Option<DateTime<Utc>>,
    /// The prepay answer, returned again for an identical repeat (prepay_id, code_url, …).
    #[serde(skip)]
    pub prepay_result: String,
    /// Canonical prepay parameters, to tell a retry from a conflicting reuse.
    #[serde(skip)]
    pub fingerprint: String,
    /// Platform-specific fields (appid, openid, attach, txnTime, frontUrl, …).
    #[serde(skip)]
    pub extra: BTreeMap<String, String>,
}

impl Trade {
    /// Sum of the refunds that succeeded (money returned).
    pub fn refunded_minor(&self) -> u64 {
        self.refunds
            .iter()
            .filter(|r| r.state == RefundState::Succeeded)
            .map(|r| r.amount_minor)
            .sum()
    }

    /// Sum of the refunds that did not fail (succeeded or in flight): what is no longer refundable.
    pub fn committed_minor(&self) -> u64 {
        self.refunds
            .iter()
            .filter(|r| r.state != RefundState::Failed)
            .map(|r| r.amount_minor)
            .sum()
    }

    /// A platform-specific field, or `""`.
    pub fn extra(&self, key: &str) -> &str {
        self.extra.get(key).map(String::as_str).unwrap_or_default()
    }

    /// The refund with this number.
    pub fn refund(&self, out_refund_no: &str) -> Option<&Refund> {
        self.refunds
            .iter()
            .find(|r| r.out_refund_no == out_refund_no)
    }
}

/// The parameters of a prepay (order creation) request.
#[derive(Clone, Debug)]
pub struct NewTrade {
    /// Order number.
    pub out_trade_no: String,
    /// Payment product.
    pub method: String,
    /// Amount in fen.
    pub amount_minor: u64,
    /// ISO 4217 code.
    pub currency: String,
    /// Description.
    pub subject: String,
    /// Notification URL.
    pub notify_url: String,
    /// Canonical request parameters.
    pub fingerprint: String,
    /// Platform-specific fields.
    pub extra: BTreeMap<String, String>,
    /// The payable deadline the merchant asked for, if any.
    pub pay_deadline: Option<DateTime<Utc>>,
}

/// Why a prepay was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrepayError {
    /// The order number exists with other parameters.
    Conflict,
    /// The order number exists and is already paid.
    AlreadyPaid,
    /// The order number exists and is closed (or failed).
    Closed,
}

/// The parameters of a refund request.
#[derive(Clone, Debug)]
pub struct NewRefund {
    /// Refund number.
    pub out_refund_no: String,
    /// Amount in fen.
    pub amount_minor: u64,
    /// Where the result is notified.
    pub notify_url: Option<String>,
    /// Canonical request parameters.
    pub fingerprint: String,
    /// Platform-specific fields.
    pub extra: BTreeMap<String, String>,
    /// The state it is recorded in (`Failed` records a refused refund so repeats can be counted).
    pub initial_state: RefundState,
}

/// Why a refund was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundError {
    /// No such trade.
    TradeNotFound,
    /// The trade is not paid.
    NotPaid,
    /// The refund would take the total refunded above the paid amount.
    ExceedsPaid {
        /// What could still be refunded.
        refundable_minor: u64,
    },
    /// The refund number exists with other parameters (or on another trade).
    Conflict,
    /// A zero amount.
    ZeroAmount,
}

/// Why a state change through the control API or a close was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransitionError {
    /// No such trade.
    NotFound,
    /// The trade is in the wrong state for this change.
    WrongState(TradeState),
}

/// The outcome of a successful refund call.
#[derive(Clone, Debug)]
pub struct RefundOutcome {
    /// The trade after the refund.
    pub trade: Trade,
    /// The refund.
    pub refund: Refund,
    /// `false` when this was an idempotent repeat of an earlier refund.
    pub created: bool,
}

/// All trades of one platform.
#[derive(Debug, Default)]
pub struct Ledger {
    trades: BTreeMap<String, Trade>,
    by_channel_no: HashMap<String, String>,
    channel_counter: u64,
    /// Pending trades by deadline, so expiry costs nothing per call when nothing is due.
    deadlines: std::collections::BTreeSet<(DateTime<Utc>, String)>,
}

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    /// A new platform id: a prefix, the Beijing-time date, and a counter (unique per process).
    pub fn next_channel_no(&mut self, prefix: &str, width: usize) -> String {
        self.channel_counter += 1;
        let date = Utc::now().format("%Y%m%d");
        let base = format!("{prefix}{date}");
        let digits = width.saturating_sub(base.len()).max(6);
        format!(
            "{base}{:0digits$}",
            self.channel_counter + u64::from(rand::random::<u16>()) * 1_000_000
        )
    }

    /// Closes every pending trade whose deadline has passed, as the platforms do at
    /// `time_expire`/`payTimeout`. Called on every access through [`crate::platform::Core::ledger`].
    pub fn expire_due(&mut self, now: DateTime<Utc>) {
        while let Some((deadline, no)) = self.deadlines.first().cloned() {
            if deadline >= now {
                return;
            }
            self.deadlines.pop_first();
            if let Some(t) = self.trades.get_mut(&no)
                && t.state == TradeState::Pending
            {
                t.state = TradeState::Closed;
            }
        }
    }

    /// Creates the trade, or returns the existing one for an identical repeat (counting it).
    /// `make_result` builds the prepay answer and the channel trade id for a new trade.
    ///
    /// # Errors
    /// [`PrepayError`] when the number exists with other parameters or is no longer payable.
    pub fn prepay(
        &mut self,
        new: NewTrade,
        channel_trade_no: String,
        prepay_result: String,
    ) -> Result<Trade, PrepayError> {
        if let Some(existing) = self.trades.get_mut(&new.out_trade_no) {
            if existing.fingerprint != new.fingerprint {
                return Err(PrepayError::Conflict);
            }
            match existing.state {
                TradeState::Pending => {}
                TradeState::Succeeded => return Err(PrepayError::AlreadyPaid),
                TradeState::Failed | TradeState::Closed => return Err(PrepayError::Closed),
            }
            existing.prepay_requests += 1;
            return Ok(existing.clone());
        }
        let trade = Trade {
            out_trade_no: new.out_trade_no.clone(),
            method: new.method,
            state: TradeState::Pending,
            amount_minor: new.amount_minor,
            currency: new.currency,
            subject: new.subject,
            channel_trade_no: channel_trade_no.clone(),
            prepay_requests: 1,
            notify_url: new.notify_url,
            created_at: Utc::now(),
            paid_at: None,
            refunds: Vec::new(),
            payment_in_flight: false,
            prepay_result,
            fingerprint: new.fingerprint,
            extra: new.extra,
            pay_deadline: new.pay_deadline,
        };
        if let Some(d) = new.pay_deadline {
            self.deadlines.insert((d, new.out_trade_no.clone()));
        }
        self.by_channel_no
            .insert(channel_trade_no, new.out_trade_no.clone());
        self.trades.insert(new.out_trade_no, trade.clone());
        Ok(trade)
    }

    /// The trade with this order number.
    pub fn trade(&self, out_trade_no: &str) -> Option<&Trade> {
        self.trades.get(out_trade_no)
    }

    /// The trade with this platform id.
    pub fn trade_by_channel_no(&self, channel_trade_no: &str) -> Option<&Trade> {
        self.by_channel_no
            .get(channel_trade_no)
            .and_then(|no| self.trades.get(no))
    }

    /// All trades, by order number.
    pub fn trades(&self) -> impl Iterator<Item = &Trade> {
        self.trades.values()
    }

    /// The refund with this number, with its trade.
    pub fn refund(&self, out_refund_no: &str) -> Option<(&Trade, &Refund)> {
        self.trades
            .values()
            .find_map(|t| t.refund(out_refund_no).map(|r| (t, r)))
    }

    /// Moves a pending trade to `to` (the payer's doing). Succeeded trades get `paid_at`.
    ///
    /// # Errors
    /// [`TransitionError`].
    pub fn settle(&mut self, out_trade_no: &str, to: TradeState) -> Result<Trade, TransitionError> {
        let trade = self
            .trades
            .get_mut(out_trade_no)
            .ok_or(TransitionError::NotFound)?;
        if trade.state == TradeState::Closed && trade.payment_in_flight {
            // The payment that was already on its way when the trade was closed completes.
            trade.payment_in_flight = false;
            trade.state = TradeState::Pending;
        }
        if trade.state == TradeState::Pending && trade.pay_deadline.is_some_and(|d| Utc::now() > d)
        {
            trade.state = TradeState::Closed;
        }
        if trade.state != TradeState::Pending {
            return Err(TransitionError::WrongState(trade.state));
        }
        trade.state = to;
        if to == TradeState::Succeeded {
            trade.paid_at = Some(Utc::now());
        }
        Ok(trade.clone())
    }

    /// Closes a pending trade while the payer's payment is already on its way inside the
    /// platform: the trade shows CLOSED, yet that payment can still complete (once) — the race
    /// by which a merchant that closes before switching channel is still paid twice.
    ///
    /// # Errors
    /// As [`Ledger::close`].
    pub fn close_with_payment_in_flight(
        &mut self,
        out_trade_no: &str,
    ) -> Result<Trade, TransitionError> {
        let was_pending = self
            .trades
            .get(out_trade_no)
            .is_some_and(|t| t.state == TradeState::Pending);
        let mut closed = self.close(out_trade_no)?;
        if was_pending && let Some(t) = self.trades.get_mut(out_trade_no) {
            t.payment_in_flight = true;
            closed = t.clone();
        }
        Ok(closed)
    }

    /// Closes a trade that is pending (or already closed or failed: closing is idempotent).
    ///
    /// # Errors
    /// [`TransitionError::WrongState`] for a paid trade.
    pub fn close(&mut self, out_trade_no: &str) -> Result<Trade, TransitionError> {
        let trade = self
            .trades
            .get_mut(out_trade_no)
            .ok_or(TransitionError::NotFound)?;
        match trade.state {
            TradeState::Succeeded => Err(TransitionError::WrongState(trade.state)),
            TradeState::Pending | TradeState::Failed | TradeState::Closed => {
                trade.state = TradeState::Closed;
                Ok(trade.clone())
            }
        }
    }

    /// Refunds part or all of a paid trade; a repeat with the same number and parameters
    /// returns the first result with `created = false`.
    ///
    /// # Errors
    /// [`RefundError`].
    pub fn refund_trade(
        &mut self,
        out_trade_no: &str,
        new: NewRefund,
        channel_refund_no: String,
    ) -> Result<RefundOutcome, RefundError> {
        if let Some(trade) = self
            .trades
            .values_mut()
            .find(|t| t.refund(&new.out_refund_no).is_some())
        {
            let same_trade = trade.out_trade_no == out_trade_no;
            let Some(existing) = trade
                .refunds
                .iter_mut()
                .find(|r| r.out_refund_no == new.out_refund_no)
            else {
                return Err(RefundError::Conflict);
            };
            if !same_trade || existing.fingerprint != new.fingerprint {
                return Err(RefundError::Conflict);
            }
            existing.requests += 1;
            let refund = existing.clone();
            return Ok(RefundOutcome {
                trade: trade.clone(),
                refund,
                created: false,
            });
        }
        let trade = self
            .trades
            .get_mut(out_trade_no)
            .ok_or(RefundError::TradeNotFound)?;
        if trade.state != TradeState::Succeeded {
            return Err(RefundError::NotPaid);
        }
        if new.amount_minor == 0 {
            return Err(RefundError::ZeroAmount);
        }
        let refundable_minor = trade.amount_minor.saturating_sub(trade.committed_minor());
        if new.amount_minor > refundable_minor {
            return Err(RefundError::ExceedsPaid { refundable_minor });
        }
        let now = Utc::now();
        let refund = Refund {
            out_refund_no: new.out_refund_no,
            amount_minor: new.amount_minor,
            state: new.initial_state,
            abnormal: false,
            requests: 1,
            settled_at: (new.initial_state != RefundState::Processing).then_some(now),
            channel_refund_no,
            notify_url: new.notify_url,
            fingerprint: new.fingerprint,
            extra: new.extra,
            created_at: now,
        };
        trade.refunds.push(refund.clone());
        Ok(RefundOutcome {
            trade: trade.clone(),
            refund,
            created: true,
        })
    }
}

impl Ledger {
    /// Settles a refund in flight: `Success` → SUCCEEDED, `Fail` → FAILED (amount released),
    /// `Abnormal` → still PROCESSING with `abnormal` set.
    ///
    /// # Errors
    /// [`SettleError`] for an unknown refund, or one that is not PROCESSING (or already abnormal
    /// when asked to become abnormal).
    pub fn settle_refund(
        &mut self,
        out_refund_no: &str,
        to: Settlement,
    ) -> Result<(Trade, Refund), SettleError> {
        let trade = self
            .trades
            .values_mut()
            .find(|t| t.refund(out_refund_no).is_some())
            .ok_or(SettleError::NotFound)?;
        let refund = trade
            .refunds
            .iter_mut()
            .find(|r| r.out_refund_no == out_refund_no)
            .ok_or(SettleError::NotFound)?;
        if refund.state != RefundState::Processing
            || (to == Settlement::Abnormal && refund.abnormal)
        {
            return Err(SettleError::WrongState(refund.state));
        }
        match to {
            Settlement::Success => {
                refund.state = RefundState::Succeeded;
                refund.settled_at = Some(Utc::now());
            }
            Settlement::Fail => {
                refund.state = RefundState::Failed;
                refund.settled_at = Some(Utc::now());
            }
            Settlement::Abnormal => refund.abnormal = true,
        }
        let refund = refund.clone();
        Ok((trade.clone(), refund))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn new_trade(amount: u64) -> NewTrade {
        NewTrade {
            out_trade_no: "T1".into(),
            method: "native".into(),
            amount_minor: amount,
            currency: "CNY".into(),
            subject: "s".into(),
            notify_url: "http://n".into(),
            fingerprint: format!("amount={amount}"),
            extra: BTreeMap::new(),
            pay_deadline: None,
        }
    }

    fn new_refund(no: &str, amount: u64) -> NewRefund {
        NewRefund {
            out_refund_no: no.into(),
            amount_minor: amount,
            notify_url: None,
            fingerprint: format!("amount={amount}"),
            extra: BTreeMap::new(),
            initial_state: RefundState::Processing,
        }
    }

    #[test]
    fn an_identical_prepay_is_counted_and_a_different_one_conflicts() {
        let mut ledger = Ledger::new();
        ledger
            .prepay(new_trade(100), "C1".into(), "R1".into())
            .unwrap();
        let again = ledger
            .prepay(new_trade(100), "C2".into(), "R2".into())
            .unwrap();
        assert_eq!(again.prepay_requests, 2);
        assert_eq!(again.prepay_result, "R1");
        assert_eq!(
            ledger
                .prepay(new_trade(101), "C3".into(), "R3".into())
                .unwrap_err(),
            PrepayError::Conflict
        );
    }

    #[test]
    fn refunds_never_exceed_the_paid_amount_and_repeat_idempotently() {
        let mut ledger = Ledger::new();
        ledger
            .prepay(new_trade(100), "C1".into(), "R1".into())
            .unwrap();
        assert_eq!(
            ledger
                .refund_trade("T1", new_refund("F1", 10), "X".into())
                .unwrap_err(),
            RefundError::NotPaid
        );
        ledger.settle("T1", TradeState::Succeeded).unwrap();
        assert!(
            ledger
                .refund_trade("T1", new_refund("F1", 60), "X1".into())
                .unwrap()
                .created
        );
        assert!(
            !ledger
                .refund_trade("T1", new_refund("F1", 60), "X2".into())
                .unwrap()
                .created
        );
        assert_eq!(
            ledger
                .refund_trade("T1", new_refund("F1", 61), "X3".into())
                .unwrap_err(),
            RefundError::Conflict
        );
        assert_eq!(
            ledger
                .refund_trade("T1", new_refund("F2", 41), "X4".into())
                .unwrap_err(),
            RefundError::ExceedsPaid {
                refundable_minor: 40
            }
        );
        assert!(
            ledger
                .refund_trade("T1", new_refund("F2", 40), "X5".into())
                .unwrap()
                .created
        );
    }

    #[test]
    fn a_trade_past_its_deadline_is_closed_and_cannot_be_paid() {
        let mut ledger = Ledger::new();
        let mut t = new_trade(100);
        t.pay_deadline = Some(Utc::now() - chrono::Duration::seconds(1));
        ledger.prepay(t, "C1".into(), String::new()).unwrap();
        assert_eq!(
            ledger.settle("T1", TradeState::Succeeded).unwrap_err(),
            TransitionError::WrongState(TradeState::Closed)
        );
        let mut t = new_trade(100);
        t.out_trade_no = "T2".into();
        t.pay_deadline = Some(Utc::now() + chrono::Duration::milliseconds(50));
        ledger.prepay(t, "C2".into(), String::new()).unwrap();
        ledger.expire_due(Utc::now());
        assert_eq!(ledger.trade("T2").unwrap().state, TradeState::Pending);
        ledger.expire_due(Utc::now() + chrono::Duration::seconds(1));
        assert_eq!(ledger.trade("T2").unwrap().state, TradeState::Closed);
    }

    #[test]
    fn a_paid_trade_cannot_be_closed_and_closing_is_idempotent() {
        let mut ledger = Ledger::new();
        ledger
            .prepay(new_trade(100), "C1".into(), "R1".into())
            .unwrap();
        ledger.close("T1").unwrap();
        ledger.close("T1").unwrap();
        assert_eq!(
            ledger.settle("T1", TradeState::Succeeded).unwrap_err(),
            TransitionError::WrongState(TradeState::Closed)
        );
        let mut ledger = Ledger::new();
        ledger
            .prepay(new_trade(100), "C1".into(), "R1".into())
            .unwrap();
        ledger.settle("T1", TradeState::Succeeded).unwrap();
        assert_eq!(
            ledger.close("T1").unwrap_err(),
            TransitionError::WrongState(TradeState::Succeeded)
        );
    }

    fn paid_ledger(amount: u64) -> Ledger {
        let mut ledger = Ledger::new();
        ledger
            .prepay(new_trade(amount), "C1".into(), "R1".into())
            .unwrap();
        ledger.settle("T1", TradeState::Succeeded).unwrap();
        ledger
    }

    #[test]
    fn a_processing_refund_counts_against_the_refundable_amount() {
        let mut ledger = paid_ledger(100);
        let first = ledger
            .refund_trade("T1", new_refund("F1", 70), "X1".into())
            .unwrap();
        assert_eq!(first.refund.state, RefundState::Processing);
        assert_eq!(first.refund.settled_at, None);
        assert_eq!(first.trade.committed_minor(), 70);
        assert_eq!(first.trade.refunded_minor(), 0);
        assert_eq!(
            ledger
                .refund_trade("T1", new_refund("F2", 31), "X2".into())
                .unwrap_err(),
            RefundError::ExceedsPaid {
                refundable_minor: 30
            }
        );
        let (trade, refund) = ledger.settle_refund("F1", Settlement::Success).unwrap();
        assert_eq!(refund.state, RefundState::Succeeded);
        assert!(refund.settled_at.is_some());
        assert_eq!(trade.refunded_minor(), 70);
        assert_eq!(
            ledger.settle_refund("F1", Settlement::Fail).unwrap_err(),
            SettleError::WrongState(RefundState::Succeeded)
        );
        assert_eq!(
            ledger.settle_refund("nope", Settlement::Fail).unwrap_err(),
            SettleError::NotFound
        );
    }

    #[test]
    fn a_failed_refund_releases_its_amount_to_a_new_refund_number() {
        let mut ledger = paid_ledger(100);
        ledger
            .refund_trade("T1", new_refund("F1", 100), "X1".into())
            .unwrap();
        ledger.settle_refund("F1", Settlement::Fail).unwrap();
        // The same number stays the failed refund.
        let again = ledger
            .refund_trade("T1", new_refund("F1", 100), "X2".into())
            .unwrap();
        assert!(!again.created);
        assert_eq!(again.refund.state, RefundState::Failed);
        // A new number may take the whole amount again.
        let second = ledger
            .refund_trade("T1", new_refund("F2", 100), "X3".into())
            .unwrap();
        assert!(second.created);
        assert_eq!(second.trade.committed_minor(), 100);
        // A refund recorded as refused at once also releases its amount.
        let mut ledger = paid_ledger(100);
        let mut refused = new_refund("F1", 100);
        refused.initial_state = RefundState::Failed;
        let refused = ledger.refund_trade("T1", refused, "X1".into()).unwrap();
        assert_eq!(refused.refund.state, RefundState::Failed);
        assert!(refused.refund.settled_at.is_some());
        assert!(
            ledger
                .refund_trade("T1", new_refund("F2", 100), "X2".into())
                .is_ok()
        );
    }

    #[test]
    fn every_request_naming_a_refund_is_counted() {
        let mut ledger = paid_ledger(100);
        for expected in 1..=3 {
            let outcome = ledger
                .refund_trade("T1", new_refund("F1", 10), format!("X{expected}"))
                .unwrap();
            assert_eq!(outcome.refund.requests, expected);
            assert_eq!(outcome.refund.channel_refund_no, "X1");
        }
        // A conflicting reuse is refused and not counted.
        assert!(
            ledger
                .refund_trade("T1", new_refund("F1", 11), "X9".into())
                .is_err()
        );
        assert_eq!(ledger.refund("F1").unwrap().1.requests, 3);
        assert_eq!(ledger.trade("T1").unwrap().refunds.len(), 1);
    }

    #[test]
    fn an_abnormal_refund_stays_in_flight_until_resolved() {
        let mut ledger = paid_ledger(100);
        ledger
            .refund_trade("T1", new_refund("F1", 100), "X1".into())
            .unwrap();
        let (_, r) = ledger.settle_refund("F1", Settlement::Abnormal).unwrap();
        assert_eq!((r.state, r.abnormal), (RefundState::Processing, true));
        assert_eq!(
            ledger
                .settle_refund("F1", Settlement::Abnormal)
                .unwrap_err(),
            SettleError::WrongState(RefundState::Processing)
        );
        assert!(
            ledger
                .refund_trade("T1", new_refund("F2", 1), "X2".into())
                .is_err()
        );
        let (_, r) = ledger.settle_refund("F1", Settlement::Success).unwrap();
        assert_eq!(r.state, RefundState::Succeeded);
    }
}
