//! `paybench`: measures the platform against a Postgres baseline taken in the same run.
//!
//! Absolute figures on shared 2-core machines drift by 1.5–2× within minutes, so every figure is
//! reported as a ratio to a baseline measured seconds apart on the same Postgres, interleaved
//! (B, P, B, P, …), median of the rounds:
//! - B_life: `pgbench -M prepared -c 8 -j 2` running the two durable transactions any payment
//!   platform must make per lifecycle (create order + outbox event; mark paid + outbox event).
//! - P_create: CreateOrder calls/s through payd (closed loop, `--concurrency` clients).
//! - P_life: whole lifecycles/s: CreateOrder → Pay (WeChat Native) → the sandbox's payer pays →
//!   signed callback → adapter verifies and forwards → PAID observed by GetOrder.
//!
//! Build in release first: `cargo build --release --workspace --bins`, then
//! `target/release/paybench --seconds 10 --rounds 3`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use e2e::platform::{Platform, SandboxedChannel};
use hdrhistogram::Histogram;
use payproto::channel::v1 as cpb;
use payproto::payment::v1 as pb;
use payproto::payment::v1::payment_service_client::PaymentServiceClient;
use tokio::sync::Mutex;

#[derive(Parser)]
struct Args {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Interleaved baseline/platform rounds.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Concurrent clients of the platform.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
}

const LIFECYCLE_SQL: &str = r"\set m random(1, 1000)
\set amt random(1, 1000000)
BEGIN;
INSERT INTO pay_orders (merchant_id, merchant_order_no, amount) VALUES (:m, gen_random_uuid()::text, :amt) ON CONFLICT DO NOTHING RETURNING id AS oid \gset
INSERT INTO pay_outbox (order_id, event_type, payload) VALUES (:oid, 1, '{}');
COMMIT;
BEGIN;
UPDATE pay_orders SET status = 2, version = version + 1, updated_at = now() WHERE id = :oid AND status = 0;
INSERT INTO pay_outbox (order_id, event_type, payload) VALUES (:oid, 2, '{}');
COMMIT;
";

const SCHEMA: &str = "DROP TABLE IF EXISTS pay_outbox, pay_orders;
CREATE TABLE pay_orders (id bigserial PRIMARY KEY, merchant_id int NOT NULL, merchant_order_no text NOT NULL,
  amount bigint NOT NULL, status smallint NOT NULL DEFAULT 0, version int NOT NULL DEFAULT 0,
  created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now(),
  UNIQUE (merchant_id, merchant_order_no));
CREATE TABLE pay_outbox (id bigserial PRIMARY KEY, order_id bigint NOT NULL, event_type smallint NOT NULL,
  payload jsonb NOT NULL, created_at timestamptz NOT NULL DEFAULT now(), sent_at timestamptz);
CREATE INDEX pay_outbox_unsent ON pay_outbox (id) WHERE sent_at IS NULL;";

/// Runs B_life once on a scratch database; returns lifecycles/s.
fn baseline(db: &str, seconds: u64) -> f64 {
    let psql = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-q",
            "-d",
            db,
            "-c",
            SCHEMA,
        ])
        .status()
        .expect("psql");
    assert!(psql.success());
    let script = std::env::temp_dir().join("paybench_lifecycle.sql");
    std::fs::write(&script, LIFECYCLE_SQL).unwrap();
    let out = Command::new("pgbench")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-M",
            "prepared",
            "-n",
            "-c",
            "8",
            "-j",
            "2",
            "-T",
        ])
        .arg(seconds.to_string())
        .arg("-f")
        .arg(&script)
        .arg(db)
        .output()
        .expect("pgbench (postgresql-contrib/client) on PATH");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| {
            l.strip_prefix("tps = ")
                .and_then(|r| r.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or_else(|| panic!("no tps in pgbench output: {text}"))
}

fn req<T>(body: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(body);
    r.metadata_mut()
        .insert("x-app-id", "bench".parse().unwrap());
    r
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
        metadata: BTreeMap::new(),
        idempotency_key: String::new(),
    }
}

struct Measured {
    per_sec: f64,
    create: Histogram<u64>,
    pay: Histogram<u64>,
    errors: u64,
}

/// Closed-loop load for `seconds`; `full` runs whole lifecycles, otherwise CreateOrder only.
async fn measure(
    p: &Platform,
    round: usize,
    full: bool,
    seconds: u64,
    concurrency: usize,
) -> Measured {
    let client = PaymentServiceClient::connect(p.payd.endpoint())
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let sandbox = p.sandbox_url(SandboxedChannel::Wechat, "");
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let hist = Arc::new(Mutex::new((
        Histogram::<u64>::new(3).unwrap(),
        Histogram::<u64>::new(3).unwrap(),
    )));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let mut c = client.clone();
        let http = http.clone();
        let sandbox = sandbox.clone();
        let (done, errors, hist) = (done.clone(), errors.clone(), hist.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while Instant::now() < deadline {
                i += 1;
                let no = format!("B{round}{}W{w}N{i}", u8::from(full));
                let t0 = Instant::now();
                let order = match c.create_order(req(create_req(no))).await {
                    Ok(r) => r.into_inner().order.unwrap(),
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                };
                let create_us = t0.elapsed().as_micros() as u64;
                if !full {
                    hist.lock().await.0.record(create_us).ok();
                    done.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let t1 = Instant::now();
                let paying = c
                    .pay(req(pb::PayRequest {
                        order_id: order.order_id.clone(),
                        channel: cpb::Channel::Wechat as i32,
                        method: cpb::PayMethod::WechatNative as i32,
                        payer: None,
                        idempotency_key: String::new(),
                    }))
                    .await;
                let Ok(paying) = paying else {
                    errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let pay_us = t1.elapsed().as_micros() as u64;
                let out = paying.into_inner().attempt.unwrap().out_trade_no;
                let paid = http
                    .post(format!("{sandbox}/sandbox/trades/{out}/pay"))
                    .json(&serde_json::json!({"outcome": "success"}))
                    .send()
                    .await;
                if paid.is_err() {
                    errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                loop {
                    let o = c
                        .get_order(req(pb::GetOrderRequest {
                            lookup: Some(pb::get_order_request::Lookup::OrderId(order.order_id.clone())),
                        }))
                        .await;
                    if matches!(&o, Ok(r) if r.get_ref().order.as_ref().map(|o| o.status) == Some(pb::OrderStatus::Paid as i32)) {
                        break;
                    }
                    if Instant::now() > deadline + Duration::from_secs(30) {
                        errors.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let mut h = hist.lock().await;
                h.0.record(create_us).ok();
                h.1.record(pay_us).ok();
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let started = Instant::now();
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (create, pay) = Arc::try_unwrap(hist).ok().unwrap().into_inner();
    Measured {
        per_sec: done.load(Ordering::Relaxed) as f64 / elapsed,
        create,
        pay,
        errors: errors.load(Ordering::Relaxed),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let p = Platform::start_channels(&[SandboxedChannel::Wechat], 1.0);
    let scratch = e2e::TestDb::create();
    let (mut b, mut create_r, mut life_r) = (Vec::new(), Vec::new(), Vec::new());
    println!(
        "round  B_life/s  P_create/s  ratio  P_life/s  ratio  create p50/p99 ms  pay p50/p99 ms  errors"
    );
    for round in 0..args.rounds {
        let base = baseline(&scratch.name, args.seconds);
        let c = measure(&p, round, false, args.seconds, args.concurrency).await;
        let base2 = baseline(&scratch.name, args.seconds);
        let l = measure(&p, round, true, args.seconds, args.concurrency).await;
        let (rc, rl) = (c.per_sec / base, l.per_sec / base2);
        println!(
            "{round:>5}  {base:>8.0}  {:>10.0}  {rc:>5.3}  {:>8.1}  {rl:>5.3}  {:>6.2}/{:<8.2}  {:>6.2}/{:<8.2}  {}",
            c.per_sec,
            l.per_sec,
            ms(&c.create, 0.5),
            ms(&c.create, 0.99),
            ms(&l.pay, 0.5),
            ms(&l.pay, 0.99),
            c.errors + l.errors
        );
        b.push((base + base2) / 2.0);
        create_r.push(rc);
        life_r.push(rl);
    }
    println!(
        "median: B_life {:.0}/s; CreateOrder/B_life {:.3}; lifecycle/B_life {:.4} ({} clients, {} s each, {} rounds)",
        median(b),
        median(create_r),
        median(life_r),
        args.concurrency,
        args.seconds,
        args.rounds
    );
}
