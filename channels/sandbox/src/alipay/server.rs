//! The Alipay open API gateway: `POST|GET /gateway.do` with `method=` precreate, page/wap pay,
//! app pay, query, close, refund, refund query and the bill URL query; plus `trade_status_sync`
//! notifications. Calls are checked with [`AppKeys::verify`]; every JSON answer is a signed
//! `…_response` node and every notification a signed form.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use chrono::Utc;
use rand::Rng;
use serde_json::{Map, Value, json};

use super::protocol::{
    AlipaySigner, AppKeys, ERROR_NODE, GatewayRequest, ResultNode, VerifiedCall,
    encode_notify_body, format_timestamp, format_yuan, parse_trade_amount, parse_yuan,
    response_node_name,
};
use crate::callbacks::{self, Notification, NotificationKind};
use crate::control;
use crate::form::{self, Params};
use crate::http_client::OutgoingRequest;
use crate::keyfiles::AlipayKeyFiles;
use crate::keys;
use crate::ledger::{
    NewRefund, NewTrade, PrepayError, Refund, RefundError, RefundState, Trade, TradeState,
};
use crate::platform::{BuildError, Core, Profile, RefundEnding, SimulatedPlatform, Tamper, lock};

/// 4m, 10m, 10m, 1h, 2h, 6h, 15h: 8 notifications within 25 hours.
const RETRY_SCHEDULE: [Duration; 7] = [
    Duration::from_secs(240),
    Duration::from_secs(600),
    Duration::from_secs(600),
    Duration::from_secs(3600),
    Duration::from_secs(7200),
    Duration::from_secs(6 * 3600),
    Duration::from_secs(15 * 3600),
];

/// Alipay's notification rules.
pub static PROFILE: Profile = Profile {
    name: "alipay",
    retry_schedule: &RETRY_SCHEDULE,
    is_acknowledged: |reply| reply.body == b"success",
    new_notify_id: || format!("{}{}", Utc::now().format("%Y%m%d"), random_digits(26)),
};

/// Bill download links stay valid this long (Alipay: 30 s).
const BILL_URL_TTL: Duration = Duration::from_secs(30);

fn random_digits(len: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|_| char::from(b'0' + rng.gen_range(0..10u8)))
        .collect()
}

/// A business answer: the node's fields after `code`/`msg`.
type Node = Map<String, Value>;

fn success(fields: Value) -> Node {
    let mut node = Node::new();
    node.insert("code".into(), json!("10000"));
    node.insert("msg".into(), json!("Success"));
    if let Value::Object(extra) = fields {
        node.extend(extra);
    }
    node
}

fn business_error(sub_code: &str, sub_msg: &str) -> Node {
    let mut node = Node::new();
    node.insert("code".into(), json!("40004"));
    node.insert("msg".into(), json!("Business Failed"));
    node.insert("sub_code".into(), json!(sub_code));
    node.insert("sub_msg".into(), json!(sub_msg));
    node
}

/// What the gateway answers with.
enum Answer {
    /// A signed JSON node under `<method>_response`.
    Node(Node),
    /// A cashier page (page/wap pay).
    Page(String),
}

/// The Alipay stand-in.
pub struct Alipay {
    core: Core,
    app_id: String,
    seller_id: String,
    apps: AppKeys,
    signer: AlipaySigner,
    rogue: OnceLock<Option<AlipaySigner>>,
    bills: Mutex<HashMap<String, crate::statements::SpooledBill>>,
    /// Precreated QR codes the payer has scanned. Alipay creates the trade of a precreate only
    /// when the payer scans the code: until then the trade APIs answer `ACQ.TRADE_NOT_EXIST`.
    scanned: Mutex<std::collections::HashSet<String>>,
}

impl std::fmt::Debug for Alipay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Alipay")
            .field("app_id", &self.app_id)
            .finish_non_exhaustive()
    }
}

impl Alipay {
    /// Builds the platform from loaded key files.
    ///
    /// # Errors
    /// [`crate::alipay::protocol::AlipayProtocolError::Key`] if Alipay's private key cannot sign.
    pub fn new(
        files: AlipayKeyFiles,
        time_scale: f64,
    ) -> Result<Self, crate::alipay::protocol::AlipayProtocolError> {
        let mut apps = AppKeys::new();
        apps.register(&files.app_id, files.app_public_key);
        Ok(Self {
            core: Core::new(time_scale),
            app_id: files.app_id,
            seller_id: format!("2088{}", random_digits(12)),
            apps,
            signer: AlipaySigner::new(files.alipay_private_key)?,
            rogue: OnceLock::new(),
            bills: Mutex::new(HashMap::new()),
            scanned: Mutex::new(std::collections::HashSet::new()),
        })
    }

    /// Whether the trade exists at Alipay: always, except a precreated QR code nobody scanned
    /// (a payment, or a failed one, implies the scan).
    fn exists(&self, trade: &Trade) -> bool {
        // A QR that lapsed at its deadline unscanned never became a trade either.
        trade.method != "precreate"
            || !matches!(trade.state, TradeState::Pending | TradeState::Closed)
            || lock(&self.scanned).contains(&trade.out_trade_no)
    }

    /// The payer scans the QR code of a precreated trade: from now on it exists (WAIT_BUYER_PAY).
    ///
    /// # Errors
    /// A status and message when there is no such precreated trade.
    pub fn scan(&self, out_trade_no: &str) -> Result<Trade, (StatusCode, &'static str)> {
        let trade = self
            .core
            .ledger()
            .trade(out_trade_no)
            .cloned()
            .ok_or((StatusCode::NOT_FOUND, "no such trade"))?;
        if trade.method != "precreate" {
            return Err((StatusCode::CONFLICT, "only a precreated QR code is scanned"));
        }
        if trade.state == TradeState::Closed && !lock(&self.scanned).contains(&trade.out_trade_no) {
            return Err((StatusCode::CONFLICT, "the QR code has expired"));
        }
        lock(&self.scanned).insert(trade.out_trade_no.clone());
        Ok(trade)
    }

    fn signed_json(&self, node_name: &str, node: &impl serde::Serialize) -> Response {
        match self.signer.sign_response(node_name, node) {
            Ok(body) => {
                ([("Content-Type", "application/json;charset=utf-8")], body).into_response()
            }
            Err(e) => {
                tracing::error!(error = %e, "signing a response failed");
                StatusCode::INTERNAL_SERVER_ERROR.into_response()
            }
        }
    }

    fn trade_status(trade: &Trade) -> &'static str {
        match trade.state {
            TradeState::Pending => "WAIT_BUYER_PAY",
            TradeState::Succeeded if trade.refunded_minor() < trade.amount_minor => "TRADE_SUCCESS",
            TradeState::Succeeded | TradeState::Failed | TradeState::Closed => "TRADE_CLOSED",
        }
    }

    fn handle(&self, this: &Arc<Self>, call: &VerifiedCall, params: &Params) -> Answer {
        let biz = &call.biz_content;
        match call.method.as_str() {
            "alipay.trade.precreate" => self.prepay(call, params, "precreate"),
            "alipay.trade.page.pay" => self.prepay(call, params, "page"),
            "alipay.trade.wap.pay" => self.prepay(call, params, "wap"),
            "alipay.trade.app.pay" => self.prepay(call, params, "app"),
            "alipay.trade.query" => Answer::Node(self.query(biz)),
            "alipay.trade.close" => Answer::Node(self.close(biz)),
            "alipay.trade.refund" => Answer::Node(self.refund(this, biz)),
            "alipay.trade.fastpay.refund.query" => Answer::Node(self.refund_query(biz)),
            "alipay.data.dataservice.bill.downloadurl.query" => {
                Answer::Node(self.bill_url(biz, params))
            }
            _ => Answer::Node(business_error("ACQ.INVALID_METHOD", "不支持的方法")),
        }
    }

    fn find_trade(&self, biz: &Node) -> Option<Trade> {
        let trade = {
            let ledger = self.core.ledger();
            match (str_of(biz, "out_trade_no"), str_of(biz, "trade_no")) {
                (Some(no), _) => ledger.trade(no).cloned(),
                (None, Some(id)) => ledger.trade_by_channel_no(id).cloned(),
                (None, None) => None,
            }
        };
        trade.filter(|t| self.exists(t))
    }

    fn prepay(&self, call: &VerifiedCall, params: &Params, kind: &str) -> Answer {
        let biz = &call.biz_content;
        let (Some(out_trade_no), Some(amount_text), Some(subject)) = (
            str_of(biz, "out_trade_no"),
            str_of(biz, "total_amount"),
            str_of(biz, "subject"),
        ) else {
            return Answer::Node(business_error(
                "ACQ.INVALID_PARAMETER",
                "out_trade_no, total_amount and subject are required",
            ));
        };
        let Ok(amount) = parse_trade_amount(amount_text) else {
            return Answer::Node(business_error("ACQ.INVALID_PARAMETER", "total_amount 无效"));
        };
        // out_trade_no: 64 characters at most, letters, digits and underscores.
        if !(1..=64).contains(&out_trade_no.len())
            || !out_trade_no
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Answer::Node(business_error(
                "ACQ.INVALID_PARAMETER",
                "out_trade_no 仅支持64个字符以内的字母、数字、下划线",
            ));
        }
        let notify_url = params.get("notify_url").cloned().unwrap_or_default();
        // The payable window: `time_expire` (Beijing wall clock) or `timeout_express` (1m–15d,
        // counted from now); the trade is closed when it has passed.
        let pay_deadline = match (str_of(biz, "time_expire"), str_of(biz, "timeout_express")) {
            (Some(t), _) => match super::protocol::parse_timestamp(t)
                .and_then(|n| n.checked_sub_signed(chrono::Duration::hours(8)))
            {
                Some(utc) => Some(utc.and_utc()),
                None => {
                    return Answer::Node(business_error(
                        "ACQ.INVALID_PARAMETER",
                        "time_expire 格式错误",
                    ));
                }
            },
            (None, Some(e)) => match parse_timeout_express(e) {
                Some(d) => Some(Utc::now() + d),
                None => {
                    return Answer::Node(business_error(
                        "ACQ.INVALID_PARAMETER",
                        "timeout_express 格式错误",
                    ));
                }
            },
            (None, None) => None,
        };
        let mut extra = BTreeMap::new();
        extra.insert("buyer_id".to_owned(), format!("2088{}", random_digits(12)));
        extra.insert(
            "passback_params".to_owned(),
            str_of(biz, "passback_params")
                .unwrap_or_default()
                .to_owned(),
        );
        extra.insert(
            "return_url".to_owned(),
            params.get("return_url").cloned().unwrap_or_default(),
        );
        let fingerprint =
            json!([kind, amount, subject, notify_url, biz.get("product_code")]).to_string();
        let result = {
            let mut ledger = self.core.ledger();
            let trade_no = ledger.next_channel_no("", 28);
            let qr_code = format!("https://qr.alipay.com/bax0{}", random_digits(20));
            ledger.prepay(
                NewTrade {
                    out_trade_no: out_trade_no.to_owned(),
                    method: kind.to_owned(),
                    amount_minor: amount,
                    currency: "CNY".to_owned(),
                    subject: subject.to_owned(),
                    notify_url,
                    fingerprint,
                    extra,
                    pay_deadline,
                },
                trade_no,
                qr_code,
            )
        };
        let trade = match result {
            Ok(trade) => trade,
            Err(PrepayError::Conflict) => {
                return Answer::Node(business_error("ACQ.CONTEXT_INCONSISTENT", "交易信息被篡改"));
            }
            Err(PrepayError::AlreadyPaid) => {
                return Answer::Node(business_error("ACQ.TRADE_HAS_SUCCESS", "交易已被支付"));
            }
            Err(PrepayError::Closed) => {
                return Answer::Node(business_error("ACQ.TRADE_HAS_CLOSE", "交易已经关闭"));
            }
        };
        match kind {
            "precreate" => Answer::Node(success(json!({
                "out_trade_no": trade.out_trade_no,
                "qr_code": trade.prepay_result,
            }))),
            "app" => Answer::Node(success(json!({
                "out_trade_no": trade.out_trade_no,
                "trade_no": trade.channel_trade_no,
                "total_amount": format_yuan(trade.amount_minor),
                "seller_id": self.seller_id,
                "merchant_order_no": trade.out_trade_no,
            }))),
            _ => Answer::Page(cashier_page(&trade)),
        }
    }

    fn query(&self, biz: &Node) -> Node {
        let Some(trade) = self.find_trade(biz) else {
            return business_error("ACQ.TRADE_NOT_EXIST", "交易不存在");
        };
        let mut fields = json!({
            "trade_no": trade.channel_trade_no,
            "out_trade_no": trade.out_trade_no,
            "buyer_logon_id": "sandbox***@alipay.com",
            "trade_status": Self::trade_status(&trade),
            "total_amount": format_yuan(trade.amount_minor),
            "buyer_user_id": trade.extra("buyer_id"),
        });
        if let Some(paid_at) = trade.paid_at {
            let paid = format_yuan(trade.amount_minor);
            fields["buyer_pay_amount"] = json!(paid);
            fields["receipt_amount"] = json!(paid);
            fields["invoice_amount"] = json!(paid);
            fields["point_amount"] = json!("0.00");
            fields["send_pay_date"] = json!(format_timestamp(paid_at));
            fields["fund_bill_list"] = json!([{"amount": paid, "fund_channel": "ALIPAYACCOUNT"}]);
        }
        success(fields)
    }

    fn close(&self, biz: &Node) -> Node {
        let Some(trade) = self.find_trade(biz) else {
            return business_error("ACQ.TRADE_NOT_EXIST", "交易不存在");
        };
        match self.core.ledger().close(&trade.out_trade_no) {
            Ok(_) => success(json!({
                "trade_no": trade.channel_trade_no,
                "out_trade_no": trade.out_trade_no,
            })),
            Err(_) => business_error("ACQ.TRADE_STATUS_ERROR", "交易状态不合法"),
        }
    }

    fn refund(&self, this: &Arc<Self>, biz: &Node) -> Node {
        let Some(trade) = self.find_trade(biz) else {
            return business_error("ACQ.TRADE_NOT_EXIST", "交易不存在");
        };
        let Some(amount) = str_of(biz, "refund_amount").and_then(|a| parse_yuan(a).ok()) else {
            return business_error("ACQ.INVALID_PARAMETER", "refund_amount 无效");
        };
        // Without out_request_no Alipay treats the call as one refund named by the trade.
        let given = str_of(biz, "out_request_no").is_some();
        let out_request_no = str_of(biz, "out_request_no").unwrap_or(&trade.out_trade_no);
        let mut extra = BTreeMap::new();
        // Its notify then carries no out_biz_no.
        extra.insert("out_request_no_given".to_owned(), given.to_string());
        // The refund is synchronous: it succeeds or is refused at once, unless the fault setting
        // leaves it in flight (`fund_change: N` until settled).
        let initial_state = match self.core.faults().refund_outcome {
            RefundEnding::Success => RefundState::Succeeded,
            RefundEnding::Fail => RefundState::Failed,
            RefundEnding::Manual | RefundEnding::Abnormal => RefundState::Processing,
        };
        let result = {
            let mut ledger = self.core.ledger();
            let refund_no = ledger.next_channel_no("R", 28);
            ledger.refund_trade(
                &trade.out_trade_no,
                NewRefund {
                    out_refund_no: out_request_no.to_owned(),
                    amount_minor: amount,
                    notify_url: Some(trade.notify_url.clone()),
                    fingerprint: amount.to_string(),
                    extra,
                    initial_state,
                },
                refund_no,
            )
        };
        match result {
            // A refused refund is recorded (so repeats are counted) and refused again on a repeat.
            Ok(outcome) if outcome.refund.state == RefundState::Failed => {
                business_error("ACQ.SELLER_BALANCE_NOT_ENOUGH", "卖家余额不足")
            }
            Ok(outcome) => {
                let moved = outcome.created && outcome.refund.state == RefundState::Succeeded;
                if moved {
                    this.schedule_refund_notification(&outcome.trade, &outcome.refund);
                }
                let mut node = json!({
                    "trade_no": outcome.trade.channel_trade_no,
                    "out_trade_no": outcome.trade.out_trade_no,
                    "buyer_logon_id": "sandbox***@alipay.com",
                    "buyer_user_id": outcome.trade.extra("buyer_id"),
                    "fund_change": if moved { "Y" } else { "N" },
                    "refund_fee": format_yuan(outcome.trade.refunded_minor()),
                    "send_back_fee": format_yuan(if moved { outcome.refund.amount_minor } else { 0 }),
                    "out_request_no": outcome.refund.out_refund_no,
                });
                if let Some(at) = outcome.refund.settled_at {
                    node["gmt_refund_pay"] = json!(format_timestamp(at));
                }
                success(node)
            }
            Err(RefundError::TradeNotFound) => business_error("ACQ.TRADE_NOT_EXIST", "交易不存在"),
            Err(RefundError::NotPaid) => business_error("ACQ.TRADE_STATUS_ERROR", "交易状态不合法"),
            Err(RefundError::ExceedsPaid { .. }) => {
                business_error("ACQ.REFUND_AMT_NOT_EQUAL_TOTAL", "退款金额超限")
            }
            Err(RefundError::Conflict) => {
                business_error("ACQ.DISCORDANT_REPEAT_REQUEST", "请求信息不一致")
            }
            Err(RefundError::ZeroAmount) => {
                business_error("ACQ.INVALID_PARAMETER", "refund_amount 无效")
            }
        }
    }

    fn refund_query(&self, biz: &Node) -> Node {
        let Some(trade) = self.find_trade(biz) else {
            return business_error("ACQ.TRADE_NOT_EXIST", "交易不存在");
        };
        let out_request_no = str_of(biz, "out_request_no").unwrap_or(&trade.out_trade_no);
        let mut fields = json!({
            "trade_no": trade.channel_trade_no,
            "out_trade_no": trade.out_trade_no,
            "out_request_no": out_request_no,
        });
        // An absent refund_status means "not received, or failed", as at Alipay: a refund in
        // flight or refused answers exactly like an unknown one.
        if let Some(refund) = trade
            .refund(out_request_no)
            .filter(|r| r.state == RefundState::Succeeded)
        {
            fields["total_amount"] = json!(format_yuan(trade.amount_minor));
            fields["refund_amount"] = json!(format_yuan(refund.amount_minor));
            fields["refund_status"] = json!("REFUND_SUCCESS");
            fields["gmt_refund_pay"] = json!(format_timestamp(
                refund.settled_at.unwrap_or(refund.created_at)
            ));
        }
        success(fields)
    }

    fn bill_url(&self, biz: &Node, params: &Params) -> Node {
        let (Some(bill_type), Some(bill_date)) =
            (str_of(biz, "bill_type"), str_of(biz, "bill_date"))
        else {
            return business_error(
                "ACQ.INVALID_PARAMETER",
                "bill_type and bill_date are required",
            );
        };
        let Ok(date) = chrono::NaiveDate::parse_from_str(bill_date, "%Y-%m-%d") else {
            return business_error(
                "isv.invalid-bill-date",
                "账单日期格式不正确 (only daily bills)",
            );
        };
        if bill_type != "trade" {
            return business_error("isv.invalid-bill-type", "账单类型不正确 (only trade)");
        }
        let lines = {
            let ledger = self.core.ledger();
            let trades: Vec<&Trade> = ledger.trades().collect();
            super::bill::ledger_lines(&trades, date)
        };
        let faults = lock(&self.core.statement_faults).clone();
        let statement = crate::statements::DayStatement::new(date, lines, &faults);
        // Written to a temp file as a stream (a synthetic day may hold 10^6 lines). This runs on
        // the gateway's answer path, which is synchronous here; the file is on local disk.
        let written = tempfile::NamedTempFile::new().and_then(|mut file| {
            let out = std::io::BufWriter::new(file.as_file_mut());
            super::bill::write_trade_bill_zip(out, &self.seller_id, &statement)?
                .into_inner()
                .map_err(|e| e.into_error())?;
            Ok(file)
        });
        let file = match written {
            Ok(file) => file,
            Err(e) => {
                tracing::error!(error = %e, "writing a bill failed");
                return business_error("ACQ.SYSTEM_ERROR", "系统繁忙");
            }
        };
        let token = random_digits(24);
        {
            let mut bills = lock(&self.bills);
            crate::statements::purge(&mut bills);
            bills.insert(
                token.clone(),
                crate::statements::SpooledBill {
                    name: super::bill::file_name(&self.seller_id, date),
                    file: std::sync::Arc::new(file),
                    expires: std::time::Instant::now() + BILL_URL_TTL,
                },
            );
        }
        let host = params
            .get("__host")
            .cloned()
            .unwrap_or_else(|| "127.0.0.1".to_owned());
        success(json!({
            "bill_download_url": format!(
                "http://{host}/sandbox-bill/alipay/download?bizType=trade&userId={}0156&fileType=csv.zip&bizDates={}&token={token}",
                self.seller_id,
                date.format("%Y%m%d"),
            ),
        }))
    }

    fn notify_params(&self, trade: &Trade, notify_id: &str) -> Params {
        let mut params = Params::new();
        let mut put = |k: &str, v: String| {
            if !v.is_empty() {
                params.insert(k.to_owned(), v);
            }
        };
        let paid = format_yuan(trade.amount_minor);
        let paid_at = trade.paid_at.unwrap_or_else(Utc::now);
        put("notify_time", format_timestamp(Utc::now()));
        put("notify_type", "trade_status_sync".to_owned());
        put("notify_id", notify_id.to_owned());
        put("app_id", self.app_id.clone());
        put("auth_app_id", self.app_id.clone());
        put("charset", "utf-8".to_owned());
        put("version", "1.0".to_owned());
        put("trade_no", trade.channel_trade_no.clone());
        put("out_trade_no", trade.out_trade_no.clone());
        put("trade_status", Self::trade_status(trade).to_owned());
        put("total_amount", paid.clone());
        put("receipt_amount", paid.clone());
        put("invoice_amount", paid.clone());
        put("buyer_pay_amount", paid.clone());
        put("point_amount", "0.00".to_owned());
        put("buyer_id", trade.extra("buyer_id").to_owned());
        put("buyer_logon_id", "sandbox***@alipay.com".to_owned());
        put("seller_id", self.seller_id.clone());
        put("subject", trade.subject.clone());
        put("gmt_create", format_timestamp(trade.created_at));
        put("gmt_payment", format_timestamp(paid_at));
        put(
            "fund_bill_list",
            json!([{"amount": paid, "fundChannel": "ALIPAYACCOUNT"}]).to_string(),
        );
        put("passback_params", trade.extra("passback_params").to_owned());
        params
    }

    fn signed_notification(
        &self,
        url: &str,
        params: Params,
        tamper: Tamper,
    ) -> Result<OutgoingRequest, BuildError> {
        let crypto = |e: &dyn std::fmt::Display| BuildError::Crypto(e.to_string());
        let signer = match tamper {
            Tamper::Serial => self.rogue_signer()?,
            Tamper::StaleTimestamp => return Err(BuildError::NotApplicable(tamper, "alipay")),
            _ => &self.signer,
        };
        let mut signed = signer.sign_notify(params).map_err(|e| crypto(&e))?;
        match tamper {
            Tamper::Signature => {
                let mut other = signed.clone();
                other.insert("notify_type".to_owned(), "trade_status_sync_x".to_owned());
                let resigned = self.signer.sign_notify(other).map_err(|e| crypto(&e))?;
                if let Some(sign) = resigned.get("sign") {
                    signed.insert("sign".to_owned(), sign.clone());
                }
            }
            Tamper::Body => {
                let bumped = signed
                    .get("total_amount")
                    .and_then(|a| parse_yuan(a).ok())
                    .map(|fen| format_yuan(fen + 100))
                    .unwrap_or_else(|| "1.00".to_owned());
                signed.insert("total_amount".to_owned(), bumped);
            }
            Tamper::None | Tamper::Serial | Tamper::StaleTimestamp => {}
        }
        Ok(OutgoingRequest::post(
            url,
            "application/x-www-form-urlencoded; charset=utf-8",
            encode_notify_body(&signed),
        ))
    }

    fn rogue_signer(&self) -> Result<&AlipaySigner, BuildError> {
        self.rogue
            .get_or_init(|| {
                keys::generate_rsa_2048()
                    .ok()
                    .and_then(|k| AlipaySigner::new(k).ok())
            })
            .as_ref()
            .ok_or_else(|| BuildError::Crypto("could not generate a second key".to_owned()))
    }

    /// `trade_status_sync` after a refund succeeded (never for one in flight or refused).
    fn schedule_refund_notification(self: &Arc<Self>, trade: &Trade, refund: &Refund) {
        if trade.notify_url.is_empty() || refund.state != RefundState::Succeeded {
            return;
        }
        let notify_id = (PROFILE.new_notify_id)();
        let build = {
            let this = Arc::clone(self);
            let trade = trade.clone();
            let refund = refund.clone();
            let notify_id = notify_id.clone();
            Arc::new(move || {
                let mut params = this.notify_params(&trade, &notify_id);
                params.insert("refund_fee".to_owned(), format_yuan(trade.refunded_minor()));
                if refund.extra.get("out_request_no_given").map(String::as_str) != Some("false") {
                    params.insert("out_biz_no".to_owned(), refund.out_refund_no.clone());
                }
                let refunded_at = refund.settled_at.unwrap_or(refund.created_at);
                params.insert(
                    "gmt_refund".to_owned(),
                    format!("{}.000", format_timestamp(refunded_at)),
                );
                if trade.refunded_minor() >= trade.amount_minor {
                    params.insert("gmt_close".to_owned(), format_timestamp(refunded_at));
                }
                this.signed_notification(&trade.notify_url, params, Tamper::None)
            })
        };
        let platform: Arc<dyn SimulatedPlatform> = self.clone();
        callbacks::dispatch(
            platform,
            Notification {
                notify_id,
                out_trade_no: trade.out_trade_no.clone(),
                kind: NotificationKind::Refund,
                build,
            },
        );
    }
}

fn str_of<'a>(biz: &'a Node, key: &str) -> Option<&'a str> {
    biz.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn escape_html(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn cashier_page(trade: &Trade) -> String {
    format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>支付宝 - 网上支付 (sandbox)</title></head>\
         <body><h1>Alipay sandbox cashier</h1><p>out_trade_no: <b id=\"out_trade_no\">{}</b></p>\
         <p>trade_no: <b id=\"trade_no\">{}</b></p><p>total_amount: <b id=\"total_amount\">{}</b></p>\
         <p>subject: {}</p><p>Pay with <code>POST /sandbox/trades/{}/pay</code>.</p></body></html>",
        escape_html(&trade.out_trade_no),
        escape_html(&trade.channel_trade_no),
        format_yuan(trade.amount_minor),
        escape_html(&trade.subject),
        escape_html(&trade.out_trade_no),
    )
}

impl SimulatedPlatform for Alipay {
    fn profile(&self) -> &'static Profile {
        &PROFILE
    }

    fn core(&self) -> &Core {
        &self.core
    }

    fn refund_settled(self: Arc<Self>, trade: &Trade, refund: &Refund) {
        self.schedule_refund_notification(trade, refund);
    }

    fn payment_notification(
        &self,
        trade: &Trade,
        notify_id: &str,
        tamper: Tamper,
    ) -> Result<OutgoingRequest, BuildError> {
        let mut paid = trade.clone();
        paid.state = TradeState::Succeeded;
        paid.refunds.clear();
        paid.paid_at = paid.paid_at.or(Some(Utc::now()));
        let params = self.notify_params(&paid, notify_id);
        self.signed_notification(&trade.notify_url, params, tamper)
    }
}

/// The gateway plus the bill download and the control API.
pub fn router(alipay: Arc<Alipay>) -> Router {
    let platform: Arc<dyn SimulatedPlatform> = alipay.clone();
    Router::new()
        .route("/gateway.do", get(gateway).post(gateway))
        .route("/sandbox-bill/alipay/download", get(download_bill))
        .route("/sandbox/trades/{out_trade_no}/scan", post(scan))
        .with_state(alipay)
        .merge(control::router(platform))
}

/// `POST /sandbox/trades/{no}/scan`: the payer scans a precreated QR code.
async fn scan(
    State(alipay): State<Arc<Alipay>>,
    axum::extract::Path(out_trade_no): axum::extract::Path<String>,
) -> Response {
    match alipay.scan(&out_trade_no) {
        Ok(trade) => axum::Json(json!({
            "out_trade_no": trade.out_trade_no,
            "scanned": true,
            "trade_status": Alipay::trade_status(&trade),
        }))
        .into_response(),
        Err((status, message)) => (status, axum::Json(json!({ "error": message }))).into_response(),
    }
}

async fn gateway(
    State(alipay): State<Arc<Alipay>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (response, refund_call) = gateway_answer(&alipay, query.as_deref(), &headers, &body);
    if refund_call {
        alipay.core.delay_refund_answer().await;
    }
    alipay.core.delay_api_answer().await;
    response
}

fn gateway_answer(
    alipay: &Arc<Alipay>,
    query: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> (Response, bool) {
    // Parameters may come in the query string (browser redirects, `?charset=utf-8`) and the
    // form body; the body wins where both carry a key.
    let parsed = (|| {
        let mut params = form::decode(query.unwrap_or_default())?;
        params.extend(form::decode(&String::from_utf8_lossy(body))?);
        Ok::<_, form::FormError>(params)
    })();
    let params = match parsed {
        Ok(p) => p,
        Err(e) => {
            return (
                reject(alipay, &super::protocol::GatewayRejection::Form(e)),
                false,
            );
        }
    };
    let request = GatewayRequest::from_params(params.clone());
    let call = match alipay.apps.verify(&request) {
        Ok(call) => call,
        Err(rejection) => {
            tracing::info!(%rejection, "gateway call refused");
            return (reject(alipay, &rejection), false);
        }
    };
    let Ok(node_name) = response_node_name(&call.method) else {
        let answer = alipay.signed_json(
            ERROR_NODE,
            &ResultNode {
                code: "40002".into(),
                msg: "Invalid Arguments".into(),
                sub_code: Some("isv.invalid-method".into()),
                sub_msg: Some("不存在的方法名".into()),
            },
        );
        return (answer, false);
    };
    if alipay.core.inject_api_error() {
        let answer = alipay.signed_json(
            &node_name,
            &ResultNode {
                code: "20000".into(),
                msg: "Service Currently Unavailable".into(),
                sub_code: Some("isp.unknow-error".into()),
                sub_msg: Some("系统繁忙".into()),
            },
        );
        return (answer, false);
    }
    let mut params = params;
    if let Some(host) = headers.get("host").and_then(|h| h.to_str().ok()) {
        params.insert("__host".to_owned(), host.to_owned());
    }
    // Refund-creating calls (executed by now) get `refund_answer_delay_ms`.
    let refund_call = call.method == "alipay.trade.refund";
    let answer = match alipay.handle(alipay, &call, &params) {
        Answer::Node(node) if call.method == "alipay.trade.precreate" => {
            match alipay
                .signer
                .sign_response_escaping_slashes(&node_name, &node)
            {
                Ok(body) => {
                    ([("Content-Type", "application/json;charset=utf-8")], body).into_response()
                }
                Err(e) => {
                    tracing::error!(error = %e, "signing a response failed");
                    StatusCode::INTERNAL_SERVER_ERROR.into_response()
                }
            }
        }
        Answer::Node(node) => alipay.signed_json(&node_name, &node),
        Answer::Page(html) => Html(html).into_response(),
    };
    (answer, refund_call)
}

fn reject(alipay: &Alipay, rejection: &super::protocol::GatewayRejection) -> Response {
    if let super::protocol::GatewayRejection::UnknownApp(_) = rejection {
        // No app, so no key pairing to sign with: the gateway answers this one unsigned
        // (ASSUMPTION: the notes do not list which gateway errors come unsigned; that some do
        // is why the official SDK verifies failures only when they carry a sign).
        let body = json!({ (ERROR_NODE): rejection.to_node() }).to_string();
        return ([("Content-Type", "application/json;charset=utf-8")], body).into_response();
    }
    match alipay.signer.sign_rejection(rejection) {
        Ok(body) => ([("Content-Type", "application/json;charset=utf-8")], body).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn download_bill(
    State(alipay): State<Arc<Alipay>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let bill = query.get("token").and_then(|t| {
        lock(&alipay.bills)
            .get(t)
            .filter(|b| b.expires > std::time::Instant::now())
            .map(|b| (b.name.clone(), b.file.path().to_owned()))
    });
    let Some((name, path)) = bill else {
        return (StatusCode::OK, "下载超时，请重新下载").into_response();
    };
    match crate::statements::file_body(&path).await {
        Ok(body) => (
            [
                ("Content-Type", "application/zip".to_owned()),
                (
                    "Content-Disposition",
                    format!("attachment; filename=\"{name}\""),
                ),
            ],
            body,
        )
            .into_response(),
        Err(_) => (StatusCode::OK, "下载超时，请重新下载").into_response(),
    }
}

/// `timeout_express`: `1m`–`15d` in minutes (`m`), hours (`h`) or days (`d`); `1c` (until the
/// end of the day) is not modelled.
fn parse_timeout_express(text: &str) -> Option<chrono::Duration> {
    let (n, unit) = text.split_at(text.len().checked_sub(1)?);
    let n: i64 = n.parse().ok().filter(|n| *n > 0)?;
    let d = match unit {
        "m" => chrono::Duration::minutes(n),
        "h" => chrono::Duration::hours(n),
        "d" => chrono::Duration::days(n),
        _ => return None,
    };
    (d <= chrono::Duration::days(15)).then_some(d)
}
