//! Load against the platform: whole lifecycles (CreateOrder → Pay → the payer pays at the
//! sandbox → signed callback → adapter → PAID → `order.paid` delivered to our sink), closed loop
//! (N clients, each starting its next lifecycle when the last ends) and open loop (a fixed
//! arrival rate; latency counted from the intended send time, so a slow reply delays no later
//! send and queueing is not hidden: no coordinated omission).
//!
//! A lifecycle ends when the sink receives its `order.paid` event, so the client never polls.
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use e2e::calls;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use payproto::channel::v1 as cpb;
use payproto::payment::v1 as pb;
use payproto::payment::v1::event_sink_service_server::{EventSinkService, EventSinkServiceServer};
use tokio::sync::oneshot;

/// The one place the bench connects to payd: through the harness, so whatever the harness adds
/// to every client (request signing) the bench sends too.
pub async fn connect(endpoint: String) -> calls::Client {
    calls::client(endpoint).await
}

fn hist() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds")
}

#[derive(Default)]
struct SinkState {
    waiters: Mutex<HashMap<String, oneshot::Sender<()>>>,
    delivered: AtomicU64,
    refused: AtomicU64,
    down: AtomicBool,
    /// µs from the event's `occurred_at` (its commit) to its arrival here.
    lag: Mutex<Option<Histogram<u64>>>,
    last_at: Mutex<Option<Instant>>,
}

struct SinkService(Arc<SinkState>);

#[tonic::async_trait]
impl EventSinkService for SinkService {
    async fn deliver(
        &self,
        req: tonic::Request<pb::DeliverRequest>,
    ) -> Result<tonic::Response<pb::DeliverResponse>, tonic::Status> {
        let s = &self.0;
        if s.down.load(Ordering::Relaxed) {
            s.refused.fetch_add(1, Ordering::Relaxed);
            return Err(tonic::Status::unavailable("bench sink is down"));
        }
        let event = req
            .into_inner()
            .event
            .ok_or_else(|| tonic::Status::invalid_argument("no event"))?;
        if let Some(at) = &event.occurred_at {
            let occurred = SystemTime::UNIX_EPOCH
                + Duration::new(
                    u64::try_from(at.seconds).unwrap_or(0),
                    u32::try_from(at.nanos).unwrap_or(0),
                );
            let lag = SystemTime::now()
                .duration_since(occurred)
                .unwrap_or_default();
            if let Some(h) = s.lag.lock().expect("lag").as_mut() {
                h.record((lag.as_micros() as u64).max(1)).ok();
            }
        }
        *s.last_at.lock().expect("last") = Some(Instant::now());
        s.delivered.fetch_add(1, Ordering::Relaxed);
        if event.r#type == "order.paid"
            && let Some(tx) = s.waiters.lock().expect("waiters").remove(&event.order_id)
        {
            let _ = tx.send(());
        }
        Ok(tonic::Response::new(pb::DeliverResponse {}))
    }
}

/// The app's `EventSink`: counts deliveries, measures commit→delivery, and wakes the lifecycle
/// waiting for its order's `order.paid`.
#[derive(Clone)]
pub struct Sink {
    pub url: String,
    state: Arc<SinkState>,
}

impl Sink {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind sink");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let state = Arc::new(SinkState::default());
        let svc = EventSinkServiceServer::new(SinkService(state.clone()));
        tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(incoming)
                .await;
        });
        Self { url, state }
    }

    fn wait_paid(&self, order_id: &str) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        self.state
            .waiters
            .lock()
            .expect("waiters")
            .insert(order_id.to_owned(), tx);
        rx
    }

    fn forget(&self, order_id: &str) {
        self.state.waiters.lock().expect("waiters").remove(order_id);
    }

    pub fn delivered(&self) -> u64 {
        self.state.delivered.load(Ordering::Relaxed)
    }

    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::Relaxed);
    }

    pub fn last_delivery(&self) -> Option<Instant> {
        *self.state.last_at.lock().expect("last")
    }

    /// Starts measuring commit→delivery afresh.
    pub fn reset_lag(&self) {
        *self.state.lag.lock().expect("lag") = Some(hist());
    }

    pub fn take_lag(&self) -> Histogram<u64> {
        self.state
            .lag
            .lock()
            .expect("lag")
            .take()
            .unwrap_or_else(hist)
    }
}

/// What a lifecycle needs from the platform under test.
#[derive(Clone)]
pub struct Target {
    pub payd: calls::Client,
    pub sandbox: String,
    pub http: reqwest::Client,
    /// `None` when the platform has no sink of ours (a running platform): then GetOrder polls.
    pub sink: Option<Sink>,
    /// out_trade_nos of paid trades, for the duplicate-callback run.
    pub paid: Arc<Mutex<Vec<String>>>,
}

/// Latencies of one run, µs from the intended start.
pub struct Hists {
    pub create: Histogram<u64>,
    pub pay: Histogram<u64>,
    pub total: Histogram<u64>,
}

impl Hists {
    fn new() -> Self {
        Self {
            create: hist(),
            pay: hist(),
            total: hist(),
        }
    }
}

pub struct RunResult {
    /// Lifecycles completed within the measured window, per second.
    pub per_sec: f64,
    pub completed: u64,
    pub errors: u64,
    /// Open loop: arrivals the generator could not start (too many in flight).
    pub shed: u64,
    pub hists: Hists,
    pub first_error: Option<String>,
}

fn create_req(no: String) -> pb::CreateOrderRequest {
    pb::CreateOrderRequest {
        merchant_order_no: no,
        amount: Some(pb::Money {
            amount_minor: 100,
            currency: "CNY".into(),
        }),
        subject: "bench".into(),
        expires_in_seconds: 900,
        metadata: std::collections::BTreeMap::new(),
        idempotency_key: String::new(),
    }
}

/// What a run does per arrival.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Work {
    /// The whole lifecycle, until `order.paid` is delivered.
    Lifecycle,
    /// CreateOrder only (it produces one `order.created` event): for the outbox backlog.
    CreateOnly,
}

struct Sample {
    create_us: u64,
    pay_us: u64,
    total_us: u64,
}

async fn one(t: &mut Target, no: String, work: Work, intended: Instant) -> Result<Sample, String> {
    let order = t
        .payd
        .create_order(calls::req(create_req(no)))
        .await
        .map_err(|e| format!("CreateOrder: {e}"))?
        .into_inner()
        .order
        .ok_or("CreateOrder: no order")?;
    let created = Instant::now();
    let create_us = (created - intended).as_micros() as u64;
    if work == Work::CreateOnly {
        return Ok(Sample {
            create_us,
            pay_us: 0,
            total_us: create_us,
        });
    }
    let paying = t
        .payd
        .pay(calls::req(pb::PayRequest {
            order_id: order.order_id.clone(),
            channel: cpb::Channel::Wechat as i32,
            method: cpb::PayMethod::WechatNative as i32,
            payer: None,
            idempotency_key: String::new(),
        }))
        .await
        .map_err(|e| format!("Pay: {e}"))?
        .into_inner();
    let pay_us = created.elapsed().as_micros() as u64;
    let out = paying.attempt.ok_or("Pay: no attempt")?.out_trade_no;
    let waiter = t.sink.as_ref().map(|s| s.wait_paid(&order.order_id));
    let paid = t
        .http
        .post(format!("{}/sandbox/trades/{out}/pay", t.sandbox))
        .json(&serde_json::json!({"outcome": "success"}))
        .send()
        .await
        .map_err(|e| format!("sandbox pay: {e}"))?;
    if !paid.status().is_success() {
        if let Some(s) = &t.sink {
            s.forget(&order.order_id);
        }
        return Err(format!("sandbox pay: HTTP {}", paid.status()));
    }
    match waiter {
        Some(rx) => {
            if tokio::time::timeout(Duration::from_secs(30), rx)
                .await
                .is_err()
            {
                if let Some(s) = &t.sink {
                    s.forget(&order.order_id);
                }
                return Err("order.paid not delivered within 30 s".into());
            }
        }
        None => poll_paid(&mut t.payd, &order.order_id).await?,
    }
    {
        let mut p = t.paid.lock().expect("paid");
        if p.len() < 20_000 {
            p.push(out);
        }
    }
    Ok(Sample {
        create_us,
        pay_us,
        total_us: intended.elapsed().as_micros() as u64,
    })
}

/// Against a running platform without our sink: GetOrder until PAID.
async fn poll_paid(c: &mut calls::Client, order_id: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = c
            .get_order(calls::req(pb::GetOrderRequest {
                lookup: Some(pb::get_order_request::Lookup::OrderId(order_id.to_owned())),
            }))
            .await
            .map_err(|e| format!("GetOrder: {e}"))?;
        if o.get_ref().order.as_ref().map(|o| o.status) == Some(pb::OrderStatus::Paid as i32) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err("not PAID within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

struct Shared {
    done: AtomicU64,
    done_in_window: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
    hists: Mutex<Hists>,
    end: Instant,
}

impl Shared {
    fn new(end: Instant) -> Arc<Self> {
        Arc::new(Self {
            done: AtomicU64::new(0),
            done_in_window: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            first_error: Mutex::new(None),
            hists: Mutex::new(Hists::new()),
            end,
        })
    }

    fn record(&self, r: Result<Sample, String>) {
        match r {
            Ok(s) => {
                {
                    let mut h = self.hists.lock().expect("hists");
                    h.create.record(s.create_us.max(1)).ok();
                    if s.pay_us > 0 {
                        h.pay.record(s.pay_us).ok();
                    }
                    h.total.record(s.total_us.max(1)).ok();
                }
                self.done.fetch_add(1, Ordering::Relaxed);
                if Instant::now() <= self.end {
                    self.done_in_window.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                self.first_error.lock().expect("err").get_or_insert(e);
            }
        }
    }

    /// The run's result; the progress task may still hold a clone, so values are taken, not
    /// unwrapped.
    fn finish(self: Arc<Self>, secs: f64, shed: u64) -> RunResult {
        RunResult {
            per_sec: self.done_in_window.load(Ordering::Relaxed) as f64 / secs,
            completed: self.done.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            shed,
            hists: std::mem::replace(&mut *self.hists.lock().expect("hists"), Hists::new()),
            first_error: self.first_error.lock().expect("err").take(),
        }
    }
}

fn progress(label: &str, secs: f64, shared: &Arc<Shared>) -> tokio::task::JoinHandle<()> {
    let pb = ProgressBar::new((secs * 10.0) as u64);
    pb.set_style(
        ProgressStyle::with_template("{prefix:>28} [{bar:30}] {elapsed:>4} {msg}")
            .expect("template")
            .progress_chars("=> "),
    );
    pb.set_prefix(label.to_owned());
    let shared = shared.clone();
    tokio::spawn(async move {
        let start = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let el = start.elapsed().as_secs_f64();
            pb.set_position(((el * 10.0) as u64).min(pb.length().unwrap_or(0)));
            let done = shared.done.load(Ordering::Relaxed);
            pb.set_message(format!(
                "{done} done, {:.0}/s, {} errors",
                done as f64 / el.max(0.1),
                shared.errors.load(Ordering::Relaxed)
            ));
            if Instant::now() > shared.end + Duration::from_secs(1) {
                pb.finish_and_clear();
                return;
            }
        }
    })
}

/// `clients` loops, each starting its next arrival when its last one ends, for `secs`.
/// A merchant-order-number prefix no other run of this process uses: `tag` (letters, digits,
/// `-` and `_` only) and the run's number. Two runs sharing numbers would find each other's
/// orders (CreateOrder returns the first) and Pay would refuse the paid ones.
fn run_prefix(tag: &str) -> String {
    static RUNS: AtomicU64 = AtomicU64::new(0);
    let clean: String = tag
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(24)
        .collect();
    format!("{clean}-r{}", RUNS.fetch_add(1, Ordering::Relaxed))
}

pub async fn closed_loop(
    t: &Target,
    tag: &str,
    work: Work,
    clients: usize,
    secs: f64,
) -> RunResult {
    let prefix = run_prefix(tag);
    let start = Instant::now();
    let shared = Shared::new(start + Duration::from_secs_f64(secs));
    let bar = progress(&format!("{tag} closed {clients}c"), secs, &shared);
    let mut tasks = Vec::new();
    for w in 0..clients {
        let mut t = t.clone();
        let shared = shared.clone();
        let prefix = prefix.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while Instant::now() < shared.end {
                i += 1;
                let r = one(&mut t, format!("{prefix}-w{w}-{i}"), work, Instant::now()).await;
                shared.record(r);
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    bar.abort();
    shared.finish(secs, 0)
}

/// Arrivals at `rate`/s for `secs`, each on its own task; latency from the intended start.
pub async fn open_loop(t: &Target, tag: &str, work: Work, rate: f64, secs: f64) -> RunResult {
    const MAX_IN_FLIGHT: u64 = 4096;
    let prefix = run_prefix(tag);
    let start = Instant::now() + Duration::from_millis(20);
    let shared = Shared::new(start + Duration::from_secs_f64(secs));
    let bar = progress(&format!("{tag} open {rate:.0}/s"), secs, &shared);
    let n = (rate * secs).round() as u64;
    let in_flight = Arc::new(AtomicU64::new(0));
    let mut shed = 0;
    let mut tasks = Vec::new();
    for i in 0..n {
        let intended = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(intended.into()).await;
        if in_flight.load(Ordering::Relaxed) >= MAX_IN_FLIGHT {
            shed += 1;
            continue;
        }
        in_flight.fetch_add(1, Ordering::Relaxed);
        let mut t = t.clone();
        let shared = shared.clone();
        let in_flight = in_flight.clone();
        let no = format!("{prefix}-o-{i}");
        tasks.push(tokio::spawn(async move {
            let r = one(&mut t, no, work, intended).await;
            shared.record(r);
            in_flight.fetch_sub(1, Ordering::Relaxed);
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    bar.abort();
    shared.finish(secs, shed)
}

/// Duplicate callbacks for already-paid trades: the sandbox signs and sends the trade's
/// notification again (`/sandbox/trades/{no}/notify`), the adapter verifies it and reports it
/// to payd, which must find the order final. Returns (accepted/s, sent, refused).
pub async fn duplicates(t: &Target, clients: usize, secs: f64) -> (f64, u64, u64) {
    let trades: Vec<String> = t.paid.lock().expect("paid").clone();
    assert!(!trades.is_empty(), "no paid trades to duplicate");
    let trades = Arc::new(trades);
    let start = Instant::now();
    let shared = Shared::new(start + Duration::from_secs_f64(secs));
    let bar = progress("G3 duplicate callbacks", secs, &shared);
    let mut tasks = Vec::new();
    for w in 0..clients {
        let t = t.clone();
        let trades = trades.clone();
        let shared = shared.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while Instant::now() < shared.end {
                let no = &trades[i % trades.len()];
                i += clients;
                let r = async {
                    let v: serde_json::Value = t
                        .http
                        .post(format!("{}/sandbox/trades/{no}/notify", t.sandbox))
                        .json(&serde_json::json!({}))
                        .send()
                        .await
                        .map_err(|e| e.to_string())?
                        .json()
                        .await
                        .map_err(|e| e.to_string())?;
                    if v["http_status"].as_u64() == Some(200) {
                        Ok(Sample {
                            create_us: 1,
                            pay_us: 0,
                            total_us: 1,
                        })
                    } else {
                        Err(format!("adapter answered the duplicate with {v}"))
                    }
                }
                .await;
                shared.record(r);
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    bar.abort();
    let r = shared.finish(secs, 0);
    if let Some(e) = &r.first_error {
        eprintln!("G3: first refused duplicate: {e}");
    }
    (r.per_sec, r.completed + r.errors, r.errors)
}
