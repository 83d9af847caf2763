//! The money invariants M1–M9 (`BENCH_AND_FAULTS.md`), checked after a load or fault run against
//! the sandboxes' own ledgers and the platform's Postgres — never against payd's own answers
//! alone — plus the client-side log the load keeps of every OK reply ([`ClientLog`]).
//!
//! A fault test drives load through [`ClientLog`]-recording calls, injects its fault, waits with
//! [`check_until_clean`] for the platform to converge (M8's horizon), and prints one
//! `FAULT_REPORT {json}` line per run ([`Report::emit`]) with tries, faults injected, counts and
//! violations, for the bench to collect (also appended to `$FAULT_REPORT_FILE` when set).
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use diesel::RunQueryDsl;
use payproto::payment::v1 as pb;
use serde_json::{Value, json};

use crate::TestDb;
use crate::pg_private::PrivateRedis;
use crate::platform::{Platform, SandboxedChannel};
use crate::sink::TestSink;

/// `FAULT_SIZE`: `small` (default, CI) or `full` (the fault table's sizes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    Small,
    Full,
}

impl Size {
    pub fn from_env() -> Self {
        match std::env::var("FAULT_SIZE").as_deref() {
            Ok("full") => Size::Full,
            _ => Size::Small,
        }
    }

    /// `small` at small size, else `full`.
    pub fn pick<T>(self, small: T, full: T) -> T {
        match self {
            Size::Small => small,
            Size::Full => full,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Size::Small => "small",
            Size::Full => "full",
        }
    }
}

/// `FAULT_REPEAT`: how many times each fault test runs its scenario (default 1).
pub fn repeat() -> u32 {
    std::env::var("FAULT_REPEAT")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(1)
}

/// Rows of `sql` as JSON objects (one round trip: `json_agg` over the query).
pub fn rows(db: &TestDb, sql: &str) -> Vec<Value> {
    #[derive(diesel::QueryableByName)]
    struct J {
        #[diesel(sql_type = diesel::sql_types::Text)]
        j: String,
    }
    let wrapped = format!("SELECT coalesce(json_agg(r__), '[]'::json)::text AS j FROM ({sql}) r__");
    let r: Vec<J> = diesel::sql_query(wrapped)
        .load(&mut db.connect())
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    serde_json::from_str::<Vec<Value>>(&r[0].j).expect("json rows")
}

fn s(v: &Value, k: &str) -> String {
    v[k].as_str().unwrap_or_default().to_owned()
}

fn n(v: &Value, k: &str) -> i64 {
    v[k].as_i64().unwrap_or(0)
}

/// What the clients saw: every OK reply (M4) and every reply per repeat key (M5).
#[derive(Default)]
pub struct ClientLog {
    inner: Mutex<LogInner>,
}

#[derive(Default)]
struct LogInner {
    /// (order id, merchant order no, amount) of every OK CreateOrder.
    orders: Vec<(String, String, i64)>,
    /// (order id, out_trade_no) of every OK Pay.
    pays: Vec<(String, String)>,
    /// (refund_request_no, amount) of every OK CreateRefund.
    refunds: Vec<(String, i64)>,
    first_order: HashMap<String, pb::Order>,
    first_pay: HashMap<String, pb::PayResponse>,
    m5: Vec<String>,
    calls: u64,
    errors: BTreeMap<String, u64>,
}

impl ClientLog {
    fn with<R>(&self, f: impl FnOnce(&mut LogInner) -> R) -> R {
        f(&mut self.inner.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// An OK CreateOrder.
    pub fn order_ok(&self, o: &pb::Order) {
        let amount = o.amount.as_ref().map_or(0, |m| m.amount_minor);
        self.with(|l| {
            l.calls += 1;
            l.orders
                .push((o.order_id.clone(), o.merchant_order_no.clone(), amount));
        });
    }

    /// An OK Pay for `order_id`.
    pub fn pay_ok(&self, order_id: &str, r: &pb::PayResponse) {
        let no = r
            .attempt
            .as_ref()
            .map(|a| a.out_trade_no.clone())
            .unwrap_or_default();
        self.with(|l| {
            l.calls += 1;
            l.pays.push((order_id.to_owned(), no));
        });
    }

    /// An OK CreateRefund.
    pub fn refund_ok(&self, r: &pb::Refund) {
        let amount = r.amount.as_ref().map_or(0, |m| m.amount_minor);
        self.with(|l| {
            l.calls += 1;
            l.refunds.push((r.refund_request_no.clone(), amount));
        });
    }

    /// A refused or failed call, counted by code under `what` (e.g. `pay:Unavailable`).
    pub fn error(&self, what: &str, st: &tonic::Status) {
        self.with(|l| {
            l.calls += 1;
            *l.errors
                .entry(format!("{what}:{:?}", st.code()))
                .or_default() += 1;
        });
    }

    /// M5: every OK CreateOrder reply under one `key` is identical to the first.
    pub fn same_order_reply(&self, key: &str, o: &pb::Order) {
        self.with(|l| match l.first_order.get(key) {
            None => {
                l.first_order.insert(key.to_owned(), o.clone());
            }
            Some(first) if first == o => {}
            Some(first) => l.m5.push(format!(
                "M5: CreateOrder {key}: reply {o:?} differs from the first {first:?}"
            )),
        });
    }

    /// M5: every OK Pay reply under one `key` (same order and parameters, one burst) is
    /// identical to the first.
    pub fn same_pay_reply(&self, key: &str, r: &pb::PayResponse) {
        self.with(|l| match l.first_pay.get(key) {
            None => {
                l.first_pay.insert(key.to_owned(), r.clone());
            }
            Some(first) if first == r => {}
            Some(first) => l.m5.push(format!(
                "M5: Pay {key}: reply {r:?} differs from the first {first:?}"
            )),
        });
    }

    /// M5 (the other half): a repeat with other parameters must be refused; `got` is what came.
    pub fn expect_refused(&self, what: &str, got: Result<(), String>) {
        if let Ok(()) = got {
            self.with(|l| {
                l.m5.push(format!(
                    "M5: {what}: other parameters under the same key were accepted"
                ))
            });
        }
    }

    /// Calls made and errors by `call:code`.
    pub fn calls(&self) -> (u64, BTreeMap<String, u64>) {
        self.with(|l| (l.calls, l.errors.clone()))
    }

    /// Error codes seen so far (for "retryable errors only").
    pub fn error_codes(&self) -> BTreeMap<String, u64> {
        self.with(|l| l.errors.clone())
    }
}

/// The outcome of one check.
#[derive(Debug, Default, Clone)]
pub struct Findings {
    pub violations: Vec<String>,
    pub counts: BTreeMap<String, i64>,
}

/// A trade at a sandbox, in its own words.
struct Trade {
    channel: SandboxedChannel,
    out_trade_no: String,
    state: String,
    amount: i64,
    prepay_requests: i64,
    /// (out_refund_no, amount, state)
    refunds: Vec<(String, i64, String)>,
}

async fn sandbox_trades(p: &Platform, channels: &[SandboxedChannel]) -> Vec<Trade> {
    let mut out = Vec::new();
    for &ch in channels {
        let v = p.sandbox_get(ch, "/sandbox/trades").await;
        for t in v.as_array().cloned().unwrap_or_default() {
            out.push(Trade {
                channel: ch,
                out_trade_no: s(&t, "out_trade_no"),
                state: s(&t, "state"),
                amount: n(&t, "amount_minor"),
                prepay_requests: n(&t, "prepay_requests"),
                refunds: t["refunds"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .map(|r| (s(r, "out_refund_no"), n(r, "amount_minor"), s(r, "state")))
                    .collect(),
            });
        }
    }
    out
}

/// The legal order edges (`server/src/domain/order.rs`), written out again here on purpose:
/// an independent oracle, not the code under test.
fn legal_order_edge(from: Option<&str>, to: &str) -> bool {
    matches!(
        (from, to),
        (None, "PENDING")
            | (Some("PENDING" | "PAYING"), "PAYING")
            | (Some("PAYING"), "PENDING")
            | (Some("PENDING" | "PAYING" | "CLOSED"), "PAID")
            | (Some("PENDING" | "PAYING"), "CLOSED")
            | (
                Some("PAID" | "PARTIALLY_REFUNDED"),
                "PARTIALLY_REFUNDED" | "REFUNDED"
            )
    )
}

fn legal_refund_edge(from: Option<&str>, to: &str) -> bool {
    matches!(
        (from, to),
        (None, "PENDING" | "PROCESSING" | "SUCCEEDED" | "FAILED")
            | (
                Some("PENDING" | "PROCESSING"),
                "PROCESSING" | "SUCCEEDED" | "FAILED"
            )
    )
}

/// Checks M1–M6, M8 and M9 once (M7 is [`CostProbe`]). `sink` enables M6.
pub async fn check(
    p: &Platform,
    channels: &[SandboxedChannel],
    log: &ClientLog,
    sink: Option<&TestSink>,
) -> Findings {
    let mut f = Findings::default();
    let db = &p.db;
    let trades = sandbox_trades(p, channels).await;
    let orders = rows(
        db,
        "SELECT id::text, merchant_order_no, status, amount_minor, paid_minor, refunded_minor FROM orders",
    );
    let attempts = rows(
        db,
        "SELECT id::text, order_id::text, out_trade_no, status, amount_minor, \
         coalesce(paid_minor, 0) AS paid_minor, refund_reserved_minor, needs_attention FROM payment_attempts",
    );
    let dups = rows(
        db,
        "SELECT order_id::text, attempt_id::text, amount_minor, status FROM duplicate_payments",
    );
    let refunds = rows(
        db,
        "SELECT id::text, attempt_id::text, out_refund_no, refund_request_no, amount_minor, status, \
         needs_attention, duplicate_payment_id IS NOT NULL AS dup FROM refunds",
    );
    let by_no: HashMap<String, &Value> =
        attempts.iter().map(|a| (s(a, "out_trade_no"), a)).collect();
    let order_by_id: HashMap<String, &Value> = orders.iter().map(|o| (s(o, "id"), o)).collect();
    let succeeded_trades: Vec<&Trade> = trades.iter().filter(|t| t.state == "SUCCEEDED").collect();

    // M2: sandbox success ⟷ database, both ways, and the sums.
    let mut sandbox_sum = 0i64;
    for t in &succeeded_trades {
        sandbox_sum += t.amount;
        match by_no.get(&t.out_trade_no) {
            None => f.violations.push(format!(
                "M2: {} trade {} SUCCEEDED at the sandbox is unknown to the database",
                t.channel.name(),
                t.out_trade_no
            )),
            Some(a) if s(a, "status") != "SUCCEEDED" || n(a, "paid_minor") != t.amount => {
                f.violations.push(format!(
                    "M2: trade {} SUCCEEDED ({}) at the sandbox is {} ({}) in the database",
                    t.out_trade_no,
                    t.amount,
                    s(a, "status"),
                    n(a, "paid_minor")
                ))
            }
            Some(_) => {}
        }
    }
    let sandbox_ok: BTreeSet<&str> = succeeded_trades
        .iter()
        .map(|t| t.out_trade_no.as_str())
        .collect();
    let mut db_sum = 0i64;
    for a in attempts.iter().filter(|a| s(a, "status") == "SUCCEEDED") {
        db_sum += n(a, "paid_minor");
        if !sandbox_ok.contains(s(a, "out_trade_no").as_str()) {
            f.violations.push(format!(
                "M2: attempt {} is SUCCEEDED in the database but not at its sandbox",
                s(a, "out_trade_no")
            ));
        }
    }
    let paid_sum: i64 = orders.iter().map(|o| n(o, "paid_minor")).sum();
    let dup_sum: i64 = dups.iter().map(|d| n(d, "amount_minor")).sum();
    if sandbox_sum != db_sum || db_sum != paid_sum + dup_sum {
        f.violations.push(format!(
            "M2: sums differ: sandbox {sandbox_sum}, attempts {db_sum}, orders {paid_sum} + duplicates {dup_sum}"
        ));
    }

    // M1: per order, one success that is not a recorded (and refunded) duplicate.
    let mut per_order: HashMap<String, Vec<&Trade>> = HashMap::new();
    for t in &succeeded_trades {
        if let Some(a) = by_no.get(&t.out_trade_no) {
            per_order.entry(s(a, "order_id")).or_default().push(t);
        }
    }
    let dup_attempts: HashMap<String, &Value> =
        dups.iter().map(|d| (s(d, "attempt_id"), d)).collect();
    for (order, ts) in &per_order {
        let not_dup: Vec<&&Trade> = ts
            .iter()
            .filter(|t| !dup_attempts.contains_key(&s(by_no[&t.out_trade_no], "id")))
            .collect();
        if not_dup.len() > 1 {
            f.violations.push(format!(
                "M1: order {order} charged {} times without a recorded duplicate: {:?}",
                not_dup.len(),
                not_dup.iter().map(|t| &t.out_trade_no).collect::<Vec<_>>()
            ));
        }
        for t in ts {
            let a = by_no[&t.out_trade_no];
            if dup_attempts.contains_key(&s(a, "id")) {
                let back: i64 = t
                    .refunds
                    .iter()
                    .filter(|r| r.2 == "SUCCEEDED")
                    .map(|r| r.1)
                    .sum();
                if back != t.amount {
                    f.violations.push(format!(
                        "M1: duplicate payment {} of order {order}: {back} of {} refunded at the sandbox",
                        t.out_trade_no, t.amount
                    ));
                }
            }
        }
    }
    // A charge the database still calls open is not lost (M8 waits for it), but an order whose
    // paid amount disagrees with its paying attempt is.
    for o in &orders {
        let paid = n(o, "paid_minor");
        if paid > 0 && paid != n(o, "amount_minor") {
            f.violations.push(format!(
                "M2: order {} paid {paid} of {}",
                s(o, "id"),
                n(o, "amount_minor")
            ));
        }
    }

    // M3: one chain of legal edges per order and refund, each final state entered once.
    let trans = rows(
        db,
        "SELECT order_id::text, version, from_status, to_status FROM order_transitions ORDER BY order_id, version",
    );
    let mut chains: HashMap<String, Vec<&Value>> = HashMap::new();
    for t in &trans {
        chains.entry(s(t, "order_id")).or_default().push(t);
    }
    for (order, chain) in &chains {
        let mut prev: Option<String> = None;
        let mut entered: HashMap<String, u32> = HashMap::new();
        for t in chain {
            let from = t["from_status"].as_str();
            let to = s(t, "to_status");
            if from.map(str::to_owned) != prev {
                f.violations.push(format!(
                    "M3: order {order} v{}: from {from:?} but the previous state was {prev:?}",
                    n(t, "version")
                ));
            }
            if !legal_order_edge(from, &to) {
                f.violations
                    .push(format!("M3: order {order}: illegal edge {from:?} → {to}"));
            }
            *entered.entry(to.clone()).or_default() += 1;
            prev = Some(to);
        }
        // PENDING may be re-entered (an abandoned payment); these may not.
        for st in ["PAID", "REFUNDED", "CLOSED"] {
            if entered.get(st).copied().unwrap_or(0) > 1 {
                f.violations.push(format!(
                    "M3: order {order} entered {st} {} times",
                    entered[st]
                ));
            }
        }
        match order_by_id.get(order) {
            Some(o) if Some(s(o, "status")) == prev => {}
            Some(o) => f.violations.push(format!(
                "M3: order {order} is {} but its history ends at {prev:?}",
                s(o, "status")
            )),
            None => f
                .violations
                .push(format!("M3: transitions of an unknown order {order}")),
        }
    }
    for o in &orders {
        if !chains.contains_key(&s(o, "id")) {
            f.violations
                .push(format!("M3: order {} has no history", s(o, "id")));
        }
    }
    let rtrans = rows(
        db,
        "SELECT refund_id::text, version, from_status, to_status FROM refund_transitions ORDER BY refund_id, version",
    );
    let mut rchains: HashMap<String, Vec<&Value>> = HashMap::new();
    for t in &rtrans {
        rchains.entry(s(t, "refund_id")).or_default().push(t);
    }
    for (refund, chain) in &rchains {
        let mut prev: Option<String> = None;
        let mut finals = 0;
        for t in chain {
            let from = t["from_status"].as_str();
            let to = s(t, "to_status");
            if from.map(str::to_owned) != prev || !legal_refund_edge(from, &to) {
                f.violations.push(format!(
                    "M3: refund {refund}: edge {from:?} → {to} after {prev:?}"
                ));
            }
            if to == "SUCCEEDED" || to == "FAILED" {
                finals += 1;
            }
            prev = Some(to);
        }
        if finals > 1 {
            f.violations
                .push(format!("M3: refund {refund} settled {finals} times"));
        }
    }

    // M4: every OK a client saw is in the database.
    let (orders_ok, pays_ok, refunds_ok, m5) = log.with(|l| {
        (
            l.orders.clone(),
            l.pays.clone(),
            l.refunds.clone(),
            l.m5.clone(),
        )
    });
    for (id, no, amount) in &orders_ok {
        match order_by_id.get(id) {
            Some(o) if s(o, "merchant_order_no") == *no && n(o, "amount_minor") == *amount => {}
            Some(o) => f.violations.push(format!(
                "M4: order {id} acknowledged as {no}/{amount}, stored as {o}"
            )),
            None => f.violations.push(format!(
                "M4: acknowledged order {id} ({no}) is not in the database"
            )),
        }
    }
    for (order, no) in &pays_ok {
        match by_no.get(no) {
            Some(a) if s(a, "order_id") == *order && s(a, "status") != "INIT" => {}
            Some(a) => f.violations.push(format!(
                "M4: Pay of {order} acknowledged {no}, stored as {a}"
            )),
            None => f.violations.push(format!(
                "M4: acknowledged attempt {no} of order {order} is not in the database"
            )),
        }
    }
    let refund_by_req: HashMap<String, &Value> = refunds
        .iter()
        .map(|r| (s(r, "refund_request_no"), r))
        .collect();
    for (req, amount) in &refunds_ok {
        match refund_by_req.get(req) {
            Some(r) if n(r, "amount_minor") == *amount => {}
            other => f.violations.push(format!(
                "M4: acknowledged refund {req} ({amount}) stored as {other:?}"
            )),
        }
    }
    // M5: what the clients compared.
    f.violations.extend(m5);

    // M6: every event delivered, and seen by the consumer; facts have their events.
    if let Some(sink) = sink {
        let events = rows(
            db,
            "SELECT event_id::text, event_type, delivery FROM outbox_events",
        );
        let received = sink.received();
        let mut seen: HashMap<String, i64> = HashMap::new();
        for e in &received {
            *seen.entry(e.event_id.clone()).or_default() += 1;
        }
        for e in &events {
            let id = s(e, "event_id");
            if s(e, "delivery") != "DELIVERED" || !seen.contains_key(&id) {
                f.violations.push(format!(
                    "M6: event {id} ({}) is {} and seen {} times",
                    s(e, "event_type"),
                    s(e, "delivery"),
                    seen.get(&id).copied().unwrap_or(0)
                ));
            }
        }
        let count_type = |t: &str| events.iter().filter(|e| s(e, "event_type") == t).count() as i64;
        let into = |st: &str| trans.iter().filter(|t| s(t, "to_status") == st).count() as i64;
        for (st, ty) in [("PAID", "order.paid"), ("CLOSED", "order.closed")] {
            if into(st) != count_type(ty) {
                f.violations.push(format!(
                    "M6: {} transitions into {st}, {} {ty} events",
                    into(st),
                    count_type(ty)
                ));
            }
        }
        f.counts.insert("events".into(), events.len() as i64);
        f.counts
            .insert("sink_deliveries".into(), received.len() as i64);
        f.counts.insert(
            "sink_duplicates".into(),
            received.len() as i64 - seen.len() as i64,
        );
        f.counts
            .insert("sink_refused".into(), sink.refused() as i64);
    }

    // M8: nothing open past the horizon.
    let paying = orders.iter().filter(|o| s(o, "status") == "PAYING").count();
    let open_attempts = attempts
        .iter()
        .filter(|a| matches!(s(a, "status").as_str(), "INIT" | "PAYING"))
        .count();
    let open_refunds = refunds
        .iter()
        .filter(|r| matches!(s(r, "status").as_str(), "PENDING" | "PROCESSING"))
        .count();
    let flagged = attempts
        .iter()
        .filter(|a| a["needs_attention"] == json!(true))
        .count()
        + refunds
            .iter()
            .filter(|r| r["needs_attention"] == json!(true))
            .count();
    let unrefunded_dups = dups.iter().filter(|d| s(d, "status") != "REFUNDED").count();
    if paying + open_attempts + open_refunds + flagged + unrefunded_dups > 0 {
        f.violations.push(format!(
            "M8: unresolved: {paying} orders PAYING, {open_attempts} attempts open, \
             {open_refunds} refunds in flight, {flagged} flagged, {unrefunded_dups} duplicates not refunded"
        ));
    }

    // M9: refunds within payments, and the database and the sandbox agree on them.
    let mut reserved: HashMap<String, i64> = HashMap::new();
    for r in refunds.iter().filter(|r| s(r, "status") != "FAILED") {
        *reserved.entry(s(r, "attempt_id")).or_default() += n(r, "amount_minor");
    }
    for a in &attempts {
        let r = reserved.get(&s(a, "id")).copied().unwrap_or(0);
        if r > n(a, "paid_minor") || r != n(a, "refund_reserved_minor") {
            f.violations.push(format!(
                "M9: attempt {}: refunds {r}, reserved {}, paid {}",
                s(a, "out_trade_no"),
                n(a, "refund_reserved_minor"),
                n(a, "paid_minor")
            ));
        }
    }
    let mut sandbox_refunds: HashMap<String, (i64, String)> = HashMap::new();
    for t in &trades {
        let live: i64 = t
            .refunds
            .iter()
            .filter(|r| r.2 != "FAILED")
            .map(|r| r.1)
            .sum();
        if live > t.amount {
            f.violations.push(format!(
                "M9: trade {} refunded {live} of {} at the sandbox",
                t.out_trade_no, t.amount
            ));
        }
        for r in &t.refunds {
            sandbox_refunds.insert(r.0.clone(), (r.1, r.2.clone()));
        }
    }
    for r in &refunds {
        let db_ok = s(r, "status") == "SUCCEEDED";
        let sb = sandbox_refunds.get(&s(r, "out_refund_no"));
        let sb_ok = sb.is_some_and(|(amt, st)| st == "SUCCEEDED" && *amt == n(r, "amount_minor"));
        if db_ok != sb_ok {
            f.violations.push(format!(
                "M9: refund {} is {} here, {sb:?} at the sandbox",
                s(r, "out_refund_no"),
                s(r, "status")
            ));
        }
    }
    let db_refund_nos: BTreeSet<String> = refunds.iter().map(|r| s(r, "out_refund_no")).collect();
    for (no, (_, st)) in &sandbox_refunds {
        if st == "SUCCEEDED" && !db_refund_nos.contains(no) {
            f.violations.push(format!(
                "M9: refund {no} SUCCEEDED at the sandbox is unknown here"
            ));
        }
    }

    f.counts.insert("orders".into(), orders.len() as i64);
    f.counts.insert("attempts".into(), attempts.len() as i64);
    f.counts
        .insert("sandbox_trades".into(), trades.len() as i64);
    f.counts
        .insert("sandbox_successes".into(), succeeded_trades.len() as i64);
    f.counts.insert(
        "prepay_requests".into(),
        trades.iter().map(|t| t.prepay_requests).sum(),
    );
    f.counts.insert("duplicates".into(), dups.len() as i64);
    f.counts.insert("refunds".into(), refunds.len() as i64);
    f.counts.insert("transitions".into(), trans.len() as i64);
    f.counts.insert("paid_minor".into(), paid_sum);
    f.counts.insert(
        "acknowledged".into(),
        (orders_ok.len() + pays_ok.len() + refunds_ok.len()) as i64,
    );
    f
}

/// Repeats [`check`] until it finds nothing or `within` has passed (the convergence horizon:
/// queries, callback retries, refund jobs and outbox retries need their time). Returns the last
/// findings and how long convergence took.
pub async fn check_until_clean(
    p: &Platform,
    channels: &[SandboxedChannel],
    log: &ClientLog,
    sink: Option<&TestSink>,
    within: Duration,
) -> (Findings, Duration) {
    let started = Instant::now();
    loop {
        let f = check(p, channels, log, sink).await;
        if f.violations.is_empty() || started.elapsed() > within {
            return (f, started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// M7: what a stretch of duplicates cost: WAL bytes, Redis lock commands, outbox rows.
pub struct CostProbe {
    lsn: String,
    redis: BTreeMap<String, u64>,
    outbox: i64,
}

fn lock_commands(calls: &BTreeMap<String, u64>) -> u64 {
    // The lock is `EVALSHA` (`EVAL` on a script cache miss) for acquire, release and renewal.
    ["evalsha", "eval", "set", "pexpire", "del"]
        .iter()
        .map(|c| calls.get(*c).copied().unwrap_or(0))
        .sum()
}

impl CostProbe {
    /// Starts measuring (on a private cluster and Redis, so nobody else's work is counted).
    pub fn start(db: &TestDb, redis: &PrivateRedis) -> Self {
        let lsn = s(&rows(db, "SELECT pg_current_wal_lsn()::text AS l")[0], "l");
        let outbox = n(&rows(db, "SELECT count(*) AS c FROM outbox_events")[0], "c");
        Self {
            lsn,
            redis: redis.command_calls(),
            outbox,
        }
    }

    /// (WAL bytes, Redis lock commands, outbox rows added) since [`CostProbe::start`].
    pub fn finish(&self, db: &TestDb, redis: &PrivateRedis) -> (i64, u64, i64) {
        let wal = n(
            &rows(
                db,
                &format!(
                    "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '{}')::bigint AS w",
                    self.lsn
                ),
            )[0],
            "w",
        );
        let outbox = n(&rows(db, "SELECT count(*) AS c FROM outbox_events")[0], "c");
        let locks = lock_commands(&redis.command_calls()) - lock_commands(&self.redis);
        (wal, locks, outbox - self.outbox)
    }
}

/// One fault run's result, printed as `FAULT_REPORT {json}`.
#[derive(Debug)]
pub struct Report {
    pub id: &'static str,
    pub run: u32,
    pub tries: u64,
    pub faults: u64,
    pub counts: BTreeMap<String, Value>,
    pub violations: Vec<String>,
    pub started: Instant,
}

impl Report {
    pub fn new(id: &'static str, run: u32) -> Self {
        Self {
            id,
            run,
            tries: 0,
            faults: 0,
            counts: BTreeMap::new(),
            violations: Vec::new(),
            started: Instant::now(),
        }
    }

    pub fn count(&mut self, k: &str, v: impl Into<Value>) {
        self.counts.insert(k.to_owned(), v.into());
    }

    /// Records a violation of the test's own pass condition (beyond M1–M9).
    pub fn violation(&mut self, v: impl Into<String>) {
        self.violations.push(v.into());
    }

    /// Adds a check's findings.
    pub fn absorb(&mut self, f: &Findings) {
        for (k, v) in &f.counts {
            self.counts.insert(k.clone(), json!(v));
        }
        self.violations.extend(f.violations.iter().cloned());
    }

    /// Adds the client log's call and error counts.
    pub fn absorb_log(&mut self, log: &ClientLog) {
        let (calls, errors) = log.calls();
        self.count("calls", calls);
        self.count("errors", json!(errors));
    }

    /// Prints the report line (and appends it to `$FAULT_REPORT_FILE`), then fails the test
    /// when anything was violated.
    pub fn emit(self) {
        let line = json!({
            "id": self.id,
            "size": Size::from_env().name(),
            "run": self.run,
            "tries": self.tries,
            "faults_injected": self.faults,
            "violations": self.violations.len(),
            "secs": (self.started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
            "counts": self.counts,
        });
        println!("FAULT_REPORT {line}");
        if let Ok(path) = std::env::var("FAULT_REPORT_FILE") {
            use std::io::Write;
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                let _ = writeln!(f, "FAULT_REPORT {line}");
            }
        }
        assert!(
            self.violations.is_empty(),
            "{} run {}: {} violations:\n{}",
            self.id,
            self.run,
            self.violations.len(),
            self.violations
                .iter()
                .take(30)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}
