//! `paybench`: the platform's speed as ratios to baselines measured in the same run.
//!
//! Absolute figures on shared 2-core machines drift by 1.5–2× within minutes, so every figure is
//! a ratio to a baseline measured seconds apart on the same Postgres and Redis, interleaved
//! (B, P, B, P, B, P), and the report gives the median of the rounds (BENCH_AND_FAULTS.md).
//!
//! By default it starts its own Postgres cluster (durable, `pg_stat_statements` preloaded) and
//! Redis, then re-runs itself against them (`--inner`); the platform (payd, the WeChat adapter
//! and sandbox, release binaries) runs as real processes on that cluster, and an event sink in
//! this process ends each lifecycle when `order.paid` arrives. `--target-payd` measures a
//! platform that is already running instead (lifecycles only).
//!
//! Run: `bash scripts/bench.sh` (release build, then this), `--quick` for a ~5-minute run.
//! Writes `docs/BENCHMARKS.md` and the plots under `docs/bench/`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../bench/mod.rs"]
mod bench;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bench::infra::{self, PgBaselines, PgbenchResult};
use bench::load::{self, Sink, Target, Work};
use bench::svg;
use clap::Parser;
use e2e::platform::{Platform, PlatformOptions, SandboxedChannel};

#[derive(Parser, Clone, Debug)]
#[command(about = "Platform benchmarks against same-run baselines; writes docs/BENCHMARKS.md")]
struct Args {
    /// ~5 minutes: shorter measurements, fewer load points, stored data up to 10^5.
    #[arg(long)]
    quick: bool,
    /// Interleaved baseline/platform rounds (medians are over these).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds per measurement (default 8, quick 3).
    #[arg(long)]
    seconds: Option<f64>,
    /// Closed-loop client counts for the throughput curve (default 1,4,16,48; quick 4,16).
    #[arg(long, value_delimiter = ',')]
    clients: Vec<usize>,
    /// Open-loop rates as fractions of the round's G1 peak (default 0.25,0.5,0.75,1; quick 0.5,1).
    #[arg(long, value_delimiter = ',')]
    loads: Vec<f64>,
    /// Orders pre-stored for the cost-against-data runs (default 10^4,10^5,10^6; quick 10^4,10^5).
    #[arg(long, value_delimiter = ',')]
    stored: Vec<u64>,
    /// Skip the perf profile.
    #[arg(long)]
    no_profile: bool,
    /// payd's PAYD_DATABASE_POOL_SIZE (the harness default otherwise).
    #[arg(long)]
    pool_size: Option<u32>,
    /// Directory of the report (BENCHMARKS.md, bench/*.svg).
    #[arg(long, default_value = "docs")]
    out: PathBuf,
    /// A running platform's payd gRPC endpoint: measure lifecycles against it (no baselines).
    #[arg(long)]
    target_payd: Option<String>,
    /// With --target-payd: the WeChat sandbox's base URL.
    #[arg(long)]
    target_sandbox: Option<String>,
    /// With --target-payd: the app the calls are signed as (scripts/up.sh: demo-shop).
    #[arg(long, default_value = "demo-shop")]
    target_app: String,
    /// With --target-payd: a file with that app's secret (scripts/up.sh: .run/keys/app_secret).
    #[arg(long, env = "PAYBENCH_SECRET_FILE")]
    target_secret_file: Option<PathBuf>,
    /// Internal: already running against the private cluster and Redis.
    #[arg(long, hide = true)]
    inner: bool,
}

impl Args {
    fn secs(&self) -> f64 {
        self.seconds.unwrap_or(if self.quick { 3.0 } else { 8.0 })
    }
    fn clients(&self) -> Vec<usize> {
        match (&self.clients[..], self.quick) {
            ([], false) => vec![1, 4, 16, 48],
            ([], true) => vec![4, 16],
            (c, _) => c.to_vec(),
        }
    }
    fn loads(&self) -> Vec<f64> {
        match (&self.loads[..], self.quick) {
            ([], false) => vec![0.25, 0.5, 0.75, 1.0],
            ([], true) => vec![0.5, 1.0],
            (l, _) => l.to_vec(),
        }
    }
    fn stored(&self) -> Vec<u64> {
        match (&self.stored[..], self.quick) {
            ([], false) => vec![10_000, 100_000, 1_000_000],
            ([], true) => vec![10_000, 100_000],
            (s, _) => s.to_vec(),
        }
    }
}

fn main() {
    let args = Args::parse();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    if args.target_payd.is_some() {
        rt.block_on(target_mode(args));
        return;
    }
    if !args.inner {
        // A private cluster and Redis; the inner run gets them through the harness's variables.
        eprintln!("paybench: starting a private Postgres cluster and Redis");
        let cluster = infra::Cluster::start(Some(&e2e::server_url()));
        let redis = infra::Redis::start();
        let status = Command::new(std::env::current_exe().expect("exe"))
            .args(std::env::args_os().skip(1))
            .arg("--inner")
            .env("TEST_DATABASE_URL", cluster.server_url())
            .env(
                "TEST_REDIS_URL",
                format!("redis://127.0.0.1:{}", redis.port),
            )
            .env("PAYBENCH_PG_DATA", cluster.data_dir())
            .env("PAYBENCH_REDIS_PORT", redis.port.to_string())
            .env("PAYBENCH_REDIS_PID", redis.child.id().to_string())
            .status()
            .expect("run paybench --inner");
        drop(redis);
        drop(cluster);
        std::process::exit(status.code().unwrap_or(1));
    }
    rt.block_on(run(args));
}

/// Lifecycles against a platform somebody else started: GetOrder polls for PAID.
async fn target_mode(args: Args) {
    let endpoint = args.target_payd.clone().expect("target");
    let secret_file = args
        .target_secret_file
        .clone()
        .expect("--target-secret-file (or PAYBENCH_SECRET_FILE): every call to payd is signed");
    let secret = std::fs::read_to_string(&secret_file)
        .unwrap_or_else(|e| panic!("reading {}: {e}", secret_file.display()));
    let t = Target {
        payd: e2e::calls::client_as(endpoint, &args.target_app, secret.trim()).await,
        sandbox: args
            .target_sandbox
            .clone()
            .expect("--target-sandbox is needed with --target-payd"),
        http: reqwest::Client::new(),
        sink: None,
        paid: Arc::default(),
    };
    let tag = format!("T{}", uuid::Uuid::new_v4().simple());
    for c in args.clients() {
        let r = load::closed_loop(&t, &tag, Work::Lifecycle, c, args.secs()).await;
        println!(
            "{c:>3} clients: {:.1} lifecycles/s, create p99 {:.2} ms, pay p99 {:.2} ms, errors {}",
            r.per_sec,
            ms(&r.hists.create, 0.99),
            ms(&r.hists.pay, 0.99),
            r.errors
        );
    }
}

fn ms(h: &hdrhistogram::Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        return f64::NAN;
    }
    h.value_at_quantile(q) as f64 / 1000.0
}

fn median(v: impl IntoIterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = v.into_iter().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    }
}

/// Processes whose CPU is sampled from `/proc`.
#[derive(Clone)]
struct Pids {
    payd: u32,
    adapter: u32,
    sandbox: u32,
    bench: u32,
    redis: Option<u32>,
    postmaster: Option<u32>,
}

const PROCS: [&str; 6] = [
    "payd",
    "postgres",
    "wechat-adapter",
    "sandbox",
    "redis",
    "paybench (client+sink)",
];

impl Pids {
    fn cpu(&self) -> BTreeMap<&'static str, f64> {
        let c = |p: u32| infra::cpu_secs(p, false).unwrap_or(0.0);
        let mut m = BTreeMap::new();
        m.insert("payd", c(self.payd));
        m.insert("wechat-adapter", c(self.adapter));
        m.insert("sandbox", c(self.sandbox));
        m.insert("paybench (client+sink)", c(self.bench));
        m.insert("redis", self.redis.map(c).unwrap_or(0.0));
        m.insert(
            "postgres",
            self.postmaster.map(infra::postgres_cpu).unwrap_or(0.0),
        );
        m
    }
}

/// Counters read around a measurement.
struct Snapshot {
    at: Instant,
    cpu: BTreeMap<&'static str, f64>,
    commits: f64,
    statements: f64,
    wal: String,
    redis: BTreeMap<String, u64>,
    delivered: u64,
}

struct Ctx {
    pids: Pids,
    admin_url: String,
    db_name: String,
    db_url: String,
    redis_port: Option<u16>,
    sink: Sink,
}

impl Ctx {
    fn snapshot(&self) -> Snapshot {
        let row = infra::psql(
            &self.admin_url,
            &format!(
                "SELECT (SELECT xact_commit FROM pg_stat_database WHERE datname = '{0}'), \
                 (SELECT coalesce(sum(calls), 0) FROM pg_stat_statements s JOIN pg_database d \
                  ON d.oid = s.dbid WHERE d.datname = '{0}'), pg_current_wal_lsn()",
                self.db_name
            ),
            &[],
        );
        let f: Vec<&str> = row.split('|').collect();
        Snapshot {
            at: Instant::now(),
            cpu: self.pids.cpu(),
            commits: f.first().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN),
            statements: f.get(1).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN),
            wal: f.get(2).map(|s| (*s).to_owned()).unwrap_or_default(),
            redis: self.redis_port.map(infra::commandstats).unwrap_or_default(),
            delivered: self.sink.delivered(),
        }
    }

    fn wal_bytes(&self, a: &Snapshot, b: &Snapshot) -> f64 {
        infra::psql(
            &self.admin_url,
            &format!("SELECT pg_wal_lsn_diff('{}', '{}')", b.wal, a.wal),
            &[],
        )
        .parse()
        .unwrap_or(f64::NAN)
    }

    fn count(&self, sql: &str) -> f64 {
        infra::psql(&self.db_url, sql, &[])
            .parse()
            .unwrap_or(f64::NAN)
    }
}

/// Per-unit costs between two snapshots.
#[derive(Clone, Default, Debug)]
struct Costs {
    /// CPU ms per unit by process.
    cpu_ms: BTreeMap<&'static str, f64>,
    commits: f64,
    statements: f64,
    wal_bytes: f64,
    redis: BTreeMap<String, f64>,
    events: f64,
}

fn costs(ctx: &Ctx, a: &Snapshot, b: &Snapshot, units: f64) -> Costs {
    let units = units.max(1.0);
    Costs {
        cpu_ms: b
            .cpu
            .iter()
            .map(|(k, v)| {
                (
                    *k,
                    (v - a.cpu.get(k).copied().unwrap_or(0.0)) * 1000.0 / units,
                )
            })
            .collect(),
        commits: (b.commits - a.commits) / units,
        statements: (b.statements - a.statements) / units,
        wal_bytes: ctx.wal_bytes(a, b) / units,
        redis: infra::commandstats_delta(&a.redis, &b.redis)
            .into_iter()
            .map(|(k, v)| (k, v as f64 / units))
            .collect(),
        events: (b.delivered - a.delivered) as f64 / units,
    }
}

#[derive(Clone, Default, Debug)]
struct Baselines {
    life: PgbenchResult,
    dup: PgbenchResult,
    claim: PgbenchResult,
    tpcb: PgbenchResult,
    lock_set: f64,
    lock_cad: f64,
    lock: f64,
    sign: f64,
}

impl Baselines {
    fn l(&self) -> f64 {
        self.life.tps.min(self.sign / 3.0)
    }
}

#[derive(Clone, Debug)]
struct ClosedPoint {
    clients: usize,
    per_sec: f64,
    errors: u64,
    create_p99: f64,
    pay_p99: f64,
    costs: Costs,
}

#[derive(Clone, Debug)]
struct OpenPoint {
    fraction: f64,
    rate: f64,
    achieved: f64,
    errors: u64,
    shed: u64,
    create: [f64; 3],
    pay: [f64; 3],
    total: [f64; 3],
    lag_p99: f64,
}

#[derive(Clone, Debug, Default)]
struct DupResult {
    per_sec: f64,
    sent: u64,
    refused: u64,
    wal_per_dup: f64,
    wal_idle_per_sec: f64,
    redis_per_dup: BTreeMap<String, f64>,
    outbox_added: f64,
    statements_per_dup: f64,
    commits_per_dup: f64,
    cpu_ms: BTreeMap<&'static str, f64>,
}

#[derive(Clone, Debug, Default)]
struct LockResult {
    per_sec: f64,
    errors: u64,
    redis_per_section: BTreeMap<String, f64>,
    statements_per_section: f64,
}

#[derive(Clone, Debug, Default)]
struct DrainResult {
    backlog: u64,
    drain_secs: f64,
    per_sec: f64,
    undelivered: i64,
    /// At the moment the sink came back: pending events due then, and pending events not due
    /// yet (a retry scheduled, or claimed by a dispatcher pass), with the latest due time in s.
    due_at_flip: i64,
    waiting_at_flip: i64,
    latest_due_s: f64,
    /// Events committed but not yet sequenced (so not yet pending) at that moment.
    unsequenced_at_flip: i64,
}

#[derive(Clone, Debug)]
struct Round {
    load_before: f64,
    b: Baselines,
    closed: Vec<ClosedPoint>,
    open: Vec<OpenPoint>,
    dup: DupResult,
    lock: LockResult,
    drain: DrainResult,
}

impl Round {
    fn peak(&self) -> &ClosedPoint {
        self.closed
            .iter()
            .max_by(|a, b| a.per_sec.total_cmp(&b.per_sec))
            .expect("closed points")
    }
    fn half(&self) -> Option<&OpenPoint> {
        self.open.iter().min_by(|a, b| {
            (a.fraction - 0.5)
                .abs()
                .total_cmp(&(b.fraction - 0.5).abs())
        })
    }
}

fn pct(h: &hdrhistogram::Histogram<u64>) -> [f64; 3] {
    [ms(h, 0.5), ms(h, 0.99), ms(h, 0.999)]
}

async fn baselines(pg: &PgBaselines, redis_port: Option<u16>, secs: f64, quick: bool) -> Baselines {
    let s = secs.ceil() as u64;
    let pg_url = (pg.url.clone(), pg.tpcb_url.clone(), pg.load_secs);
    let pgb = PgBaselines {
        url: pg_url.0,
        tpcb_url: pg_url.1,
        load_secs: pg_url.2,
    };
    tokio::task::spawn_blocking(move || {
        eprintln!("  baselines: B_life, B_dup, B_claim, B_tpcb, B_lock, S");
        let life = pgb.life(s);
        let dup = pgb.dup(s.clamp(2, 5));
        let claim = pgb.claim(s.clamp(2, 5));
        let tpcb = pgb.tpcb(s);
        let (lock_set, lock_cad, lock) = redis_port
            .map(|p| infra::lock_baseline(p, if quick { 100_000 } else { 300_000 }))
            .unwrap_or((f64::NAN, f64::NAN, f64::NAN));
        let sign = infra::rsa_signs(if quick { 1 } else { 2 });
        Baselines {
            life,
            dup,
            claim,
            tpcb,
            lock_set,
            lock_cad,
            lock,
            sign,
        }
    })
    .await
    .expect("baselines")
}

async fn g4_locks(ctx: &Ctx, secs: f64) -> LockResult {
    let client = redis::Client::open(e2e::redis_url()).expect("redis url");
    let cm = redis::aio::ConnectionManager::new(client)
        .await
        .expect("redis");
    let db = payd::storage::Db::connect_lazy(&ctx.db_url, 8, Duration::from_secs(5)).expect("db");
    let locks = payd::locks::Locks::new(
        cm,
        "paybench:",
        Duration::from_secs(30),
        Duration::from_secs(1),
        db,
    );
    // Warm: connections and the scripts' SHA cached in Redis.
    for _ in 0..3 {
        let g = locks.acquire("warm").await.expect("lock");
        locks.release(g).await.expect("release");
    }
    // The lock as Pay takes it: Redis only, its fencing token drawn by the section's first
    // statement (`payd_mint_fence()` in Pay's first read, counted in G7), here a local counter.
    let fences = Arc::new(std::sync::atomic::AtomicI64::new(1));
    let a = ctx.snapshot();
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..50 {
        let locks = locks.clone();
        let (done, errors, fences) = (done.clone(), errors.clone(), fences.clone());
        tasks.push(tokio::spawn(async move {
            let key = format!("bench-{w}");
            while Instant::now() < end {
                let taken = match locks.acquire_unfenced(&key).await {
                    Ok(pending) => {
                        let fence = fences.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        locks.fence(pending, fence).await
                    }
                    Err(e) => Err(e),
                };
                match taken {
                    Ok(g) => match locks.release(g).await {
                        Ok(_) => {
                            done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        Err(_) => {
                            errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    },
                    Err(_) => {
                        errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let n = done.load(std::sync::atomic::Ordering::Relaxed) as f64;
    let b = ctx.snapshot();
    let c = costs(ctx, &a, &b, n);
    LockResult {
        per_sec: n / secs,
        errors: errors.load(std::sync::atomic::Ordering::Relaxed),
        redis_per_section: c.redis,
        statements_per_section: c.statements,
    }
}

async fn g3_duplicates(ctx: &Ctx, t: &Target, secs: f64) -> DupResult {
    // Background WAL (workers ticking) over an idle window, to tell it from the duplicates'.
    let i0 = ctx.snapshot();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let i1 = ctx.snapshot();
    let wal_idle_per_sec = ctx.wal_bytes(&i0, &i1) / (i1.at - i0.at).as_secs_f64();
    let outbox0 = ctx.count("SELECT count(*) FROM outbox_events");
    let a = ctx.snapshot();
    let (per_sec, sent, refused) = load::duplicates(t, 16, secs).await;
    let b = ctx.snapshot();
    let outbox1 = ctx.count("SELECT count(*) FROM outbox_events");
    let accepted = (sent - refused) as f64;
    let c = costs(ctx, &a, &b, accepted);
    DupResult {
        per_sec,
        sent,
        refused,
        wal_per_dup: c.wal_bytes,
        wal_idle_per_sec,
        redis_per_dup: c.redis,
        outbox_added: outbox1 - outbox0,
        statements_per_dup: c.statements,
        commits_per_dup: c.commits,
        cpu_ms: c.cpu_ms,
    }
}

async fn g5_drain(ctx: &Ctx, t: &Target, clients: usize, secs: f64) -> DrainResult {
    let sink = t.sink.clone().expect("sink");
    sink.set_down(true);
    let r = load::closed_loop(t, "G5backlog", Work::CreateOnly, clients, secs).await;
    let backlog = r.completed;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let want = sink.delivered() + backlog;
    sink.set_down(false);
    let up = Instant::now();
    let due_at_flip = ctx.count(
        "SELECT count(*) FROM outbox_events WHERE delivery = 'PENDING' AND next_delivery_at <= now()",
    ) as i64;
    let waiting_at_flip = ctx.count(
        "SELECT count(*) FROM outbox_events WHERE delivery = 'PENDING' AND next_delivery_at > now()",
    ) as i64;
    let unsequenced_at_flip =
        ctx.count("SELECT count(*) FROM outbox_events WHERE stream_seq IS NULL") as i64;
    let latest_due_s = ctx.count(
        "SELECT coalesce(extract(epoch FROM max(next_delivery_at) - now()), 0) \
         FROM outbox_events WHERE delivery = 'PENDING'",
    );
    while sink.delivered() < want && up.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drain_secs = sink
        .last_delivery()
        .map(|l| (l - up).as_secs_f64())
        .unwrap_or(f64::NAN)
        .max(1e-3);
    let undelivered = ctx.count("SELECT count(*) FROM outbox_events WHERE delivery = 'PENDING'");
    DrainResult {
        backlog,
        drain_secs,
        per_sec: backlog as f64 / drain_secs,
        undelivered: undelivered as i64,
        due_at_flip,
        waiting_at_flip,
        latest_due_s,
        unsequenced_at_flip,
    }
}

async fn closed_point(ctx: &Ctx, t: &Target, tag: &str, clients: usize, secs: f64) -> ClosedPoint {
    let a = ctx.snapshot();
    let r = load::closed_loop(t, tag, Work::Lifecycle, clients, secs).await;
    infra::settle();
    let b = ctx.snapshot();
    if let Some(e) = &r.first_error {
        eprintln!("  {tag} {clients} clients: {} errors, first: {e}", r.errors);
    }
    ClosedPoint {
        clients,
        per_sec: r.per_sec,
        errors: r.errors,
        create_p99: ms(&r.hists.create, 0.99),
        pay_p99: ms(&r.hists.pay, 0.99),
        costs: costs(ctx, &a, &b, r.completed as f64),
    }
}

async fn open_point(t: &Target, tag: &str, fraction: f64, peak: f64, secs: f64) -> OpenPoint {
    let sink = t.sink.clone().expect("sink");
    let rate = (fraction * peak).max(1.0);
    sink.reset_lag();
    let r = load::open_loop(t, tag, Work::Lifecycle, rate, secs).await;
    let lag = sink.take_lag();
    if let Some(e) = &r.first_error {
        eprintln!("  {tag} open {rate:.0}/s: {} errors, first: {e}", r.errors);
    }
    OpenPoint {
        fraction,
        rate,
        achieved: r.per_sec,
        errors: r.errors,
        shed: r.shed,
        create: pct(&r.hists.create),
        pay: pct(&r.hists.pay),
        total: pct(&r.hists.total),
        lag_p99: ms(&lag, 0.99),
    }
}

#[derive(Clone, Debug)]
struct StoredPoint {
    orders: f64,
    closed: ClosedPoint,
    open: OpenPoint,
    b_life: f64,
}

/// perf's view of each process during a closed-loop run: top symbols by self time.
async fn profile(
    ctx: &Ctx,
    t: &Target,
    clients: usize,
    secs: f64,
    out: &std::path::Path,
) -> String {
    let dir = std::env::temp_dir().join(format!("paybench-perf-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("perf dir");
    let data = dir.join("perf.data");
    let backends: Vec<u32> = ctx
        .pids
        .postmaster
        .map(infra::children_of)
        .unwrap_or_default();
    let perf_log = dir.join("perf.log");
    // Every CPU (-a), split by pid in the report: `-p` fails outright when a thread of a listed
    // process ends while perf starts (tokio's blocking threads come and go).
    let perf = Command::new("perf")
        .args(["record", "-a", "-F", "499", "-g", "-o"])
        .arg(&data)
        .args(["--", "sleep"])
        .arg(format!("{}", secs.ceil()))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&perf_log).expect("perf log"))
        .spawn();
    let Ok(mut perf) = perf else {
        return "perf could not start: no profile.\n".into();
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = load::closed_loop(t, "profile", Work::Lifecycle, clients, secs).await;
    let ok = tokio::task::spawn_blocking(move || perf.wait())
        .await
        .ok()
        .and_then(Result::ok)
        .is_some_and(|s| s.success());
    if !ok {
        return format!(
            "perf record failed (perf_event_paranoid = {}): {}\n",
            std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
                .unwrap_or_default()
                .trim(),
            std::fs::read_to_string(&perf_log)
                .unwrap_or_default()
                .lines()
                .last()
                .unwrap_or_default()
        );
    }
    let mut md = format!(
        "perf record -F 499 -g on payd, the WeChat adapter and sandbox and the Postgres \
         processes for {secs:.0} s of closed-loop lifecycles at {clients} clients \
         ({:.0} lifecycles/s). Top symbols by self time, per process (share of that process's \
         samples):\n\n",
        r.per_sec
    );
    let mut raw = String::new();
    let groups: Vec<(&str, Vec<u32>)> = vec![
        ("payd", vec![ctx.pids.payd]),
        ("wechat-adapter", vec![ctx.pids.adapter]),
        ("sandbox", vec![ctx.pids.sandbox]),
        ("postgres", {
            // Backends that connected during the run count too.
            let mut all = backends.clone();
            all.extend(
                ctx.pids
                    .postmaster
                    .map(infra::children_of)
                    .unwrap_or_default(),
            );
            all.sort_unstable();
            all.dedup();
            all
        }),
    ];
    for (name, pids) in groups {
        if pids.is_empty() {
            continue;
        }
        let list = pids
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let out = Command::new("perf")
            .arg("report")
            .arg("-i")
            .arg(&data)
            .args([
                "--stdio",
                "--no-children",
                "-g",
                "none",
                "--percentage",
                "relative",
                "--sort",
                "dso,sym",
                "--pid",
                &list,
            ])
            .output();
        let text = out
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let top: Vec<String> = text
            .lines()
            .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
            .take(12)
            .map(|l| l.trim().to_owned())
            .collect();
        let _ = writeln!(md, "**{name}**\n\n```");
        for l in top.iter().take(8) {
            let _ = writeln!(md, "{l}");
        }
        md.push_str("```\n\n");
        let _ = writeln!(raw, "== {name} (pids {list})\n{}\n", top.join("\n"));
    }
    // Flame graphs when inferno is installed (optional).
    let collapse = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "command -v inferno-collapse-perf >/dev/null && perf script -i {} --pid {} 2>/dev/null \
             | inferno-collapse-perf | inferno-flamegraph > {}",
            data.display(),
            ctx.pids.payd,
            out.join("bench/flame-payd.svg").display()
        ))
        .status();
    if collapse.is_ok_and(|s| s.success()) {
        md.push_str("Flame graph of payd: [bench/flame-payd.svg](bench/flame-payd.svg).\n\n");
    }
    let _ = std::fs::write(out.join("bench/profile.txt"), raw);
    let _ = std::fs::remove_dir_all(&dir);
    md
}

async fn run(args: Args) {
    let secs = args.secs();
    let started = Instant::now();
    let out = args.out.clone();
    std::fs::create_dir_all(out.join("bench")).expect("out dir");
    let machine = infra::machine();
    let pg_data = std::env::var("PAYBENCH_PG_DATA").ok().map(PathBuf::from);
    let redis_port: Option<u16> = std::env::var("PAYBENCH_REDIS_PORT")
        .ok()
        .and_then(|p| p.parse().ok());
    let redis_pid: Option<u32> = std::env::var("PAYBENCH_REDIS_PID")
        .ok()
        .and_then(|p| p.parse().ok());

    let sink = Sink::start().await;
    // A refused delivery is retried soon (G5 builds its backlog with the sink down).
    let retry = vec!["250"; 400].join(",");
    let mut payd_env = vec![
        (
            "PAYD_EVENT_SINKS".to_owned(),
            format!("shop-1={}", sink.url),
        ),
        ("PAYD_EVENT_RETRY_DELAYS_MS".to_owned(), retry),
    ];
    if let Some(n) = args.pool_size {
        payd_env.push(("PAYD_DATABASE_POOL_SIZE".to_owned(), n.to_string()));
    }
    eprintln!("paybench: starting the platform (payd, wechat adapter and sandbox)");
    let platform = Platform::start_with(
        &[SandboxedChannel::Wechat],
        1.0,
        PlatformOptions {
            payd_env: payd_env.clone(),
            adapter_env: Vec::new(),
        },
    );
    let pg = {
        let server = e2e::server_url();
        tokio::task::spawn_blocking(move || PgBaselines::prepare(&server))
            .await
            .expect("prepare baselines")
    };
    let ctx = Ctx {
        pids: Pids {
            payd: platform.payd.child.id(),
            adapter: platform.adapters[&SandboxedChannel::Wechat].child.id(),
            sandbox: platform.sandboxes[&SandboxedChannel::Wechat].child.id(),
            bench: std::process::id(),
            redis: redis_pid,
            postmaster: pg_data.as_deref().and_then(infra::postmaster_pid),
        },
        admin_url: format!("{}/postgres", e2e::server_url()),
        db_name: platform.db.name.clone(),
        db_url: platform.db.url.clone(),
        redis_port,
        sink: sink.clone(),
    };
    let target = Target {
        payd: load::connect(platform.payd.endpoint()).await,
        sandbox: platform.sandbox_url(SandboxedChannel::Wechat, ""),
        http: reqwest::Client::new(),
        sink: Some(sink.clone()),
        paid: Arc::new(Mutex::new(Vec::new())),
    };
    // Warm-up: connections, prepared statements, the adapter's and sandbox's first calls.
    let _ = load::closed_loop(&target, "warmup", Work::Lifecycle, 4, secs.min(2.0)).await;

    let mut rounds: Vec<Round> = Vec::new();
    for round in 0..args.rounds {
        eprintln!(
            "round {}/{} (load average {:.2})",
            round + 1,
            args.rounds,
            infra::loadavg()
        );
        let load_before = infra::loadavg();
        let b = baselines(&pg, redis_port, secs, args.quick).await;
        eprintln!(
            "  B_life {:.0}/s (p99 {:.2} ms), B_dup {:.0}/s, B_claim {:.0}/s, B_tpcb {:.0}/s, B_lock {:.0}/s, S {:.0}/s",
            b.life.tps, b.life.p99_ms, b.dup.tps, b.claim.tps, b.tpcb.tps, b.lock, b.sign
        );
        let mut closed = Vec::new();
        for &c in &args.clients() {
            let p = closed_point(&ctx, &target, &format!("R{round}G1"), c, secs).await;
            eprintln!("  G1 {c} clients: {:.1} lifecycles/s", p.per_sec);
            closed.push(p);
        }
        let peak = closed.iter().map(|p| p.per_sec).fold(0.0, f64::max);
        let peak_clients = closed
            .iter()
            .max_by(|a, b| a.per_sec.total_cmp(&b.per_sec))
            .map(|p| p.clients)
            .unwrap_or(16);
        let mut open = Vec::new();
        for &f in &args.loads() {
            let p = open_point(&target, &format!("R{round}G2"), f, peak, secs).await;
            eprintln!(
                "  G2 {:.0}/s offered: create p99 {:.2} ms, pay p99 {:.2} ms",
                p.rate, p.create[1], p.pay[1]
            );
            open.push(p);
        }
        let dup = g3_duplicates(&ctx, &target, secs).await;
        eprintln!("  G3 {:.0} duplicates/s", dup.per_sec);
        let lock = g4_locks(&ctx, secs).await;
        eprintln!("  G4 {:.0} lock cycles/s", lock.per_sec);
        let drain = g5_drain(&ctx, &target, peak_clients.max(16), secs).await;
        eprintln!(
            "  G5 backlog {} drained at {:.0} events/s (at the flip: {} due, {} waiting, latest in {:.1} s, {} unsequenced)",
            drain.backlog,
            drain.per_sec,
            drain.due_at_flip,
            drain.waiting_at_flip,
            drain.latest_due_s,
            drain.unsequenced_at_flip
        );
        rounds.push(Round {
            load_before,
            b,
            closed,
            open,
            dup,
            lock,
            drain,
        });
    }

    let prof = if args.no_profile {
        "Skipped (--no-profile).\n".to_owned()
    } else {
        eprintln!("profile");
        let clients = rounds.last().map(|r| r.peak().clients).unwrap_or(16);
        profile(&ctx, &target, clients, secs.max(5.0), &out).await
    };
    eprintln!("statements per lifecycle");
    let prof = prof + &statement_profile(&ctx, &target, secs).await;

    // Cost against stored data: the same G1/G2 runs with more orders already stored.
    let mut stored = Vec::new();
    let mut inserted = 0u64;
    let peak_clients = rounds.last().map(|r| r.peak().clients).unwrap_or(16);
    for &n in &args.stored() {
        if n > inserted {
            eprintln!("stored data: inserting {} orders", n - inserted);
            let url = ctx.db_url.clone();
            let (add, tag) = (n - inserted, format!("n{n}"));
            tokio::task::spawn_blocking(move || {
                infra::psql(
                    &url,
                    infra::sql::PREFILL_ORDERS,
                    &[("n", add.to_string()), ("tag", tag)],
                )
            })
            .await
            .expect("prefill");
            inserted = n;
        }
        let orders = ctx.count("SELECT count(*) FROM orders");
        let b_life = {
            let pgb = PgBaselines {
                url: pg.url.clone(),
                tpcb_url: pg.tpcb_url.clone(),
                load_secs: pg.load_secs,
            };
            let s = secs.ceil() as u64;
            tokio::task::spawn_blocking(move || pgb.life(s).tps)
                .await
                .expect("B_life")
        };
        let closed = closed_point(&ctx, &target, &format!("S{n}"), peak_clients, secs).await;
        let open = open_point(&target, &format!("S{n}"), 0.5, closed.per_sec, secs).await;
        eprintln!(
            "  {orders:.0} orders: {:.1} lifecycles/s, create p99 {:.2} ms",
            closed.per_sec, open.create[1]
        );
        stored.push(StoredPoint {
            orders,
            closed,
            open,
            b_life,
        });
    }

    let total = started.elapsed();
    let report = report(&args, &machine, &pg, &rounds, &stored, &prof, total);
    std::fs::write(out.join("BENCHMARKS.md"), report).expect("write report");
    plots(&out, &rounds, &stored);
    eprintln!(
        "paybench: wrote {} in {:.0} s",
        out.join("BENCHMARKS.md").display(),
        total.as_secs_f64()
    );
    drop(platform);
}

fn verdict(ok: bool) -> &'static str {
    if ok { "**pass**" } else { "**miss**" }
}

fn by_how_much(value: f64, target: f64, higher_is_better: bool) -> String {
    if value.is_nan() {
        return "not measured".into();
    }
    let ok = if higher_is_better {
        value >= target
    } else {
        value <= target
    };
    if ok {
        return verdict(true).into();
    }
    let factor = if higher_is_better {
        target / value.max(1e-12)
    } else {
        value / target
    };
    format!("{} by {factor:.1}×", verdict(false))
}

/// The report's account of the throughput misses, from this run's own figures: the CPU a
/// lifecycle (or a duplicate) costs all processes together bounds what the machine's cores can
/// do, whatever the code's concurrency; when that bound is under the target, the miss is the
/// cost per unit, and the table says which process carries it.
fn limits(rounds: &[Round], g7c: f64) -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2) as f64;
    let cpu = |m: &BTreeMap<&'static str, f64>, p: &str| m.get(p).copied().unwrap_or(0.0);
    let life_all = med(rounds, |r| r.peak().costs.cpu_ms.values().sum());
    let life_signers = med(rounds, |r| {
        cpu(&r.peak().costs.cpu_ms, "wechat-adapter") + cpu(&r.peak().costs.cpu_ms, "sandbox")
    });
    let life_pg = med(rounds, |r| cpu(&r.peak().costs.cpu_ms, "postgres"));
    let life_payd = med(rounds, |r| cpu(&r.peak().costs.cpu_ms, "payd"));
    let l = med(rounds, |r| r.b.l());
    let peak = med(rounds, |r| r.peak().per_sec);
    let dup_all = med(rounds, |r| r.dup.cpu_ms.values().sum());
    let dup_sandbox = med(rounds, |r| cpu(&r.dup.cpu_ms, "sandbox"));
    let dup_adapter = med(rounds, |r| cpu(&r.dup.cpu_ms, "wechat-adapter"));
    let b_dup = med(rounds, |r| r.b.dup.tps);
    let dups = med(rounds, |r| r.dup.per_sec);
    let budget = cores * 1000.0;
    // CPU ms of one RSA-2048 signature at S, and the per-unit budgets the targets allow.
    let sign_ms = budget / med(rounds, |r| r.b.sign).max(1.0);
    let life_budget = budget / (0.5 * l);
    let dup_budget = budget / (0.15 * b_dup);
    let mut s = String::from("## Where the misses come from (figures of this run)\n\n");
    let _ = writeln!(
        s,
        "- **G1**: a lifecycle costs the machine **{life_all:.2} ms of CPU** at the peak, all \
         processes together (Postgres {life_pg:.2}, payd {life_payd:.2}, the WeChat adapter and \
         the sandbox {life_signers:.2}, the rest the bench's client and sink and Redis). {cores:.0} \
         cores give {budget:.0} ms a second, so no schedule of this work can exceed \
         **{:.0} lifecycles/s** (measured peak {peak:.0}/s, {:.0} % of that bound: the rest is \
         idle time while lifecycles wait on fsync and on one another). 0.5 × L = {:.0}/s \
         needs at most {:.2} ms per lifecycle, {:.1}× less than now. L assumes the three RSA \
         signatures are the only cost; here they are about {:.1} ms of the {life_all:.2} \
         (three signatures at S). {} The profile at the end shows where each process spends \
         its share.",
        budget / life_all,
        100.0 * peak / (budget / life_all),
        0.5 * l,
        life_budget,
        life_all / life_budget,
        3.0 * sign_ms,
        if life_pg > life_budget {
            "Postgres's share alone, a lifecycle's rows in 9 tables with fsync, exceeds that \
             budget."
        } else {
            "Postgres's share alone fits that budget; the sum does not."
        },
    );
    let _ = writeln!(
        s,
        "- **G3**: a duplicate costs **{dup_all:.3} ms of CPU**, of which the sandbox \
         {dup_sandbox:.3} (it signs every notification it sends, as the platform does) and the \
         adapter {dup_adapter:.3} (it verifies and decrypts it); bound {:.0}/s, measured \
         {dups:.0}/s. 0.15 × B_dup = {:.0}/s needs at most {:.3} ms per duplicate, {:.1}× \
         less than now; the sandbox's one RSA signature per notification ({:.3} ms at S) is \
         {:.0} % of that budget. B_dup is a bare UPDATE in pgbench; the duplicate path \
         writes nothing in Postgres (WAL 0, no lock, no outbox row: the M7 rows above).",
        budget / dup_all,
        0.15 * b_dup,
        dup_budget,
        dup_all / dup_budget,
        sign_ms,
        100.0 * sign_ms / dup_budget,
    );
    let _ = writeln!(
        s,
        "- **G7 commits** ({g7c:.2} per lifecycle): every autocommit statement is a commit in \
         `pg_stat_database`, reads included. The lifecycle's floor as built is about six: CreateOrder \
         (1), Pay's first read with its fencing token, the attempt's insert before the channel \
         call (durable before money can move, so a crash mid-call leaves a trade the query job \
         finds), Pay's last write (3), and a result's read and its guarded write (2); the outbox's \
         sequencer, claim and delivery mark add a share per batch. Reaching 4 means folding \
         Pay's read into its insert and a result's read into its write (one statement that \
         decides and writes), which the single-statement steps prepared but do not yet do.\n\
         - **G2 and G4** depend most on the machine's other load (other jobs; before `c7ced19`, \
         also the outbox's own quadratic plans during a backlog, which missed G2): every round \
         is in the tables below.\n"
    );
    s
}

/// Median over rounds of `f`.
fn med(rounds: &[Round], f: impl Fn(&Round) -> f64) -> f64 {
    median(rounds.iter().map(f))
}

fn fmt_redis(m: &BTreeMap<String, f64>) -> String {
    if m.is_empty() {
        return "none".into();
    }
    m.iter()
        .map(|(k, v)| format!("{k} {v:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// EVALSHA/EVAL calls: the client's round trips for scripted sections (the scripts' inner
/// SET/GET/DEL are counted by Redis too, but travel no network).
fn script_calls(m: &BTreeMap<String, f64>) -> f64 {
    m.iter()
        .filter(|(k, _)| k.starts_with("eval"))
        .map(|(_, v)| v)
        .sum()
}

/// Client round trips: every command but those a script runs inside Redis.
fn round_trips(m: &BTreeMap<String, f64>) -> f64 {
    let inner = ["set", "get", "del", "pexpire"];
    let scripts = script_calls(m);
    m.iter()
        .filter(|(k, _)| scripts == 0.0 || !inner.contains(&k.as_str()))
        .map(|(_, v)| v)
        .sum()
}

#[allow(clippy::too_many_lines)]
fn report(
    args: &Args,
    machine: &[(String, String)],
    pg: &PgBaselines,
    rounds: &[Round],
    stored: &[StoredPoint],
    prof: &str,
    took: Duration,
) -> String {
    let mut s = String::new();
    let mode = if args.quick { "--quick" } else { "full" };
    let _ = writeln!(
        s,
        "# Benchmarks\n\nWritten by `paybench` ({mode} run, {} rounds, {:.0} s per measurement, \
         {:.1} min in all). Every figure is a ratio to a baseline measured in the same run, \
         seconds apart, on the same private Postgres cluster and Redis (durable: fsync and \
         synchronous_commit on); each round runs the baselines then the platform (B, P, B, P, …), \
         and the tables give the **median of the rounds**. Regenerate with `bash scripts/bench.sh` \
         (or `bash scripts/bench.sh --quick`).\n",
        rounds.len(),
        args.secs(),
        took.as_secs_f64() / 60.0
    );
    s.push_str("## Machine\n\n| | |\n|---|---|\n");
    for (k, v) in machine {
        let _ = writeln!(s, "| {k} | {} |", v.replace('\n', "; "));
    }
    let loads: Vec<String> = rounds
        .iter()
        .map(|r| format!("{:.2}", r.load_before))
        .collect();
    let _ = writeln!(
        s,
        "| load average before each round | {} |\n",
        loads.join(", ")
    );
    s.push_str(
        "A load average above ~0.5 before a round means foreign CPU load (other builds): ratios \
         stay comparable, absolute figures do not.\n\n",
    );

    // Baselines.
    s.push_str("## Baselines (same run)\n\n| baseline | command | per round | median |\n|---|---|---|---|\n");
    let row = |s: &mut String, name: &str, cmd: &str, f: &dyn Fn(&Round) -> f64| {
        let v: Vec<String> = rounds.iter().map(|r| format!("{:.0}", f(r))).collect();
        let _ = writeln!(
            s,
            "| {name} | `{cmd}` | {} | {:.0} |",
            v.join(", "),
            med(rounds, f)
        );
    };
    let t = args.secs().ceil();
    row(
        &mut s,
        "B_life lifecycles/s",
        &format!("pgbench -M prepared -n -c 8 -j 2 -T {t} -f tests/bench/lifecycle.sql"),
        &|r| r.b.life.tps,
    );
    let _ = writeln!(
        s,
        "| B_life p99 ms | (per-transaction log of the same run) | {} | {:.2} |",
        rounds
            .iter()
            .map(|r| format!("{:.2}", r.b.life.p99_ms))
            .collect::<Vec<_>>()
            .join(", "),
        med(rounds, |r| r.b.life.p99_ms)
    );
    row(
        &mut s,
        "B_dup updates/s",
        "pgbench -n -c 8 -j 2 -f tests/bench/dup_notify.sql",
        &|r| r.b.dup.tps,
    );
    row(
        &mut s,
        "B_claim claims/s (×50 rows)",
        "pgbench -n -c 1 -j 1 -f tests/bench/outbox_claim.sql",
        &|r| r.b.claim.tps,
    );
    row(
        &mut s,
        "B_tpcb TPS (scale 10)",
        &format!("pgbench -c 8 -j 2 -T {t}"),
        &|r| r.b.tpcb.tps,
    );
    row(
        &mut s,
        "Redis SET NX PX /s",
        "redis-benchmark -c 50 -P 1 SET k v NX PX 30000",
        &|r| r.b.lock_set,
    );
    row(
        &mut s,
        "Redis EVALSHA compare-and-delete /s",
        "redis-benchmark -c 50 -P 1 EVALSHA …",
        &|r| r.b.lock_cad,
    );
    row(
        &mut s,
        "B_lock cycles/s (harmonic)",
        "1 / (1/SET + 1/EVALSHA)",
        &|r| r.b.lock,
    );
    row(
        &mut s,
        "S RSA-2048 signs/s",
        "openssl speed -multi 2 rsa2048",
        &|r| r.b.sign,
    );
    row(&mut s, "L = min(B_life, S/3)", "", &|r| r.b.l());
    let _ = writeln!(
        s,
        "| B_load s | `pgbench -i -s 10` (once) | {:.1} | {:.1} |\n",
        pg.load_secs, pg.load_secs
    );

    // Targets.
    let g1 = med(rounds, |r| r.peak().per_sec / r.b.l());
    let g1_abs = med(rounds, |r| r.peak().per_sec);
    let payd_cpu = med(rounds, |r| {
        r.peak()
            .costs
            .cpu_ms
            .get("payd")
            .copied()
            .unwrap_or(f64::NAN)
    });
    let pg_cpu = med(rounds, |r| {
        r.peak()
            .costs
            .cpu_ms
            .get("postgres")
            .copied()
            .unwrap_or(f64::NAN)
    });
    let half = |f: &dyn Fn(&OpenPoint) -> f64| med(rounds, |r| r.half().map(f).unwrap_or(f64::NAN));
    let g2c = med(rounds, |r| {
        r.half().map(|h| h.create[1]).unwrap_or(f64::NAN) / r.b.life.p99_ms
    });
    let g2p = med(rounds, |r| {
        r.half().map(|h| h.pay[1]).unwrap_or(f64::NAN) / r.b.life.p99_ms
    });
    let g2c999 = half(&|h| h.create[2]);
    let g2p999 = half(&|h| h.pay[2]);
    let g3 = med(rounds, |r| r.dup.per_sec / r.b.dup.tps);
    let g3_wal = med(rounds, |r| r.dup.wal_per_dup);
    let g3_wal_idle = med(rounds, |r| r.dup.wal_idle_per_sec / r.dup.per_sec.max(1e-9));
    let g3_lock = med(rounds, |r| script_calls(&r.dup.redis_per_dup));
    let g3_outbox = rounds
        .iter()
        .map(|r| r.dup.outbox_added)
        .fold(0.0, f64::max);
    let g4 = med(rounds, |r| r.lock.per_sec / r.b.lock);
    let g4_rt = med(rounds, |r| round_trips(&r.lock.redis_per_section));
    let g5 = med(rounds, |r| {
        r.drain.per_sec / (r.peak().per_sec * r.peak().costs.events.max(1.0))
    });
    let g5_lag = half(&|h| h.lag_p99);
    let g7c = med(rounds, |r| r.peak().costs.commits);
    let g7s = med(rounds, |r| r.peak().costs.statements);

    s.push_str("## Targets\n\n| id | figure (median of rounds) | value | target | result |\n|---|---|---|---|---|\n");
    let _ = writeln!(
        s,
        "| G1 | full lifecycles/s ÷ L (peak {g1_abs:.1}/s) | {g1:.3} | ≥ 0.5 | {} |",
        by_how_much(g1, 0.5, true)
    );
    let _ = writeln!(
        s,
        "| G1b | payd CPU ms per lifecycle vs Postgres CPU ms per lifecycle | {payd_cpu:.2} vs {pg_cpu:.2} | payd ≤ Postgres | {} |",
        by_how_much(payd_cpu, pg_cpu, false)
    );
    let _ = writeln!(
        s,
        "| G2 | p99 CreateOrder at 50% of the peak ÷ B_life p99 | {g2c:.2} | ≤ 2 | {} |",
        by_how_much(g2c, 2.0, false)
    );
    let _ = writeln!(
        s,
        "| G2 | p99 Pay at 50% ÷ B_life p99 | {g2p:.2} | ≤ 3 | {} |",
        by_how_much(g2p, 3.0, false)
    );
    let _ = writeln!(
        s,
        "| G2 | p99.9 CreateOrder / Pay at 50% (ms) | {g2c999:.1} / {g2p999:.1} | ≤ 50 | {} |",
        by_how_much(g2c999.max(g2p999), 50.0, false)
    );
    let _ = writeln!(
        s,
        "| G3 | duplicate callbacks/s through the adapter ÷ B_dup | {g3:.4} | ≥ 0.15 | {} |",
        by_how_much(g3, 0.15, true)
    );
    let _ = writeln!(
        s,
        "| G3 | WAL bytes per duplicate (background alone: {g3_wal_idle:.0}) | {g3_wal:.0} | 0 | {} |",
        by_how_much(g3_wal - g3_wal_idle, 0.5, false)
    );
    let _ = writeln!(
        s,
        "| G3 | Redis lock scripts per duplicate | {g3_lock:.3} | 0 | {} |",
        by_how_much(g3_lock, 0.0, false)
    );
    let _ = writeln!(
        s,
        "| G3 | outbox rows added by duplicates (max of rounds) | {g3_outbox:.0} | 0 | {} |",
        by_how_much(g3_outbox, 0.0, false)
    );
    let _ = writeln!(
        s,
        "| G4 | payd lock cycles/s (50 tasks, `payd::locks`) ÷ B_lock | {g4:.3} | ≥ 0.5 | {} |",
        by_how_much(g4, 0.5, true)
    );
    let _ = writeln!(
        s,
        "| G4 | Redis round trips per locked section | {g4_rt:.2} | 2 | {} |",
        if (g4_rt - 2.0).abs() < 0.05 {
            verdict(true).to_owned()
        } else {
            format!("{} ({g4_rt:.2})", verdict(false))
        }
    );
    let _ = writeln!(
        s,
        "| G5 | outbox delivery capacity ÷ event production at the G1 peak | {g5:.2} | ≥ 2 | {} |",
        by_how_much(g5, 2.0, true)
    );
    let _ = writeln!(
        s,
        "| G5 | p99 commit→delivery at 50% load (ms) | {g5_lag:.1} | ≤ 1000 | {} |",
        by_how_much(g5_lag, 1000.0, false)
    );
    let _ = writeln!(
        s,
        "| G7 | Postgres commits per lifecycle | {g7c:.2} | ≤ 4 | {} |",
        by_how_much(g7c, 4.0, false)
    );
    let _ = writeln!(
        s,
        "| G7 | database round trips (statements) per lifecycle | {g7s:.2} | ≤ 16 | {} |",
        by_how_much(g7s, 16.0, false)
    );
    s.push_str("| G6 | reconciliation | see [bench/reconciliation.md](bench/reconciliation.md) | ≤ 10× B_load | (reconbench) |\n");
    s.push_str("\nThe fault suite's counts (F1–F12, M1–M9): [FAULTS.md](FAULTS.md). What the single-statement steps changed, measured before and after on one machine: [bench/before-after.md](bench/before-after.md).\n\n");
    s.push_str(&limits(rounds, g7c));

    // G1 detail.
    s.push_str("## G1: throughput against clients (closed loop)\n\n![throughput](bench/throughput.svg) ![ratio](bench/ratio.svg)\n\n| clients | lifecycles/s (median) | ÷ L | errors (sum) | CreateOrder p99 ms | Pay p99 ms |\n|---|---|---|---|---|---|\n");
    for (i, c) in args.clients().iter().enumerate() {
        let v = med(rounds, |r| {
            r.closed.get(i).map(|p| p.per_sec).unwrap_or(f64::NAN)
        });
        let ratio = med(rounds, |r| {
            r.closed
                .get(i)
                .map(|p| p.per_sec / r.b.l())
                .unwrap_or(f64::NAN)
        });
        let e: u64 = rounds
            .iter()
            .filter_map(|r| r.closed.get(i))
            .map(|p| p.errors)
            .sum();
        let cp = med(rounds, |r| {
            r.closed.get(i).map(|p| p.create_p99).unwrap_or(f64::NAN)
        });
        let pp = med(rounds, |r| {
            r.closed.get(i).map(|p| p.pay_p99).unwrap_or(f64::NAN)
        });
        let _ = writeln!(s, "| {c} | {v:.1} | {ratio:.3} | {e} | {cp:.2} | {pp:.2} |");
    }

    // G1b / G7 costs.
    s.push_str("\n## G1b, G7: cost per lifecycle at the peak\n\n![cpu](bench/cpu_per_lifecycle.svg)\n\n| process | CPU ms per lifecycle (median) |\n|---|---|\n");
    for p in PROCS {
        let v = med(rounds, |r| {
            r.peak().costs.cpu_ms.get(p).copied().unwrap_or(f64::NAN)
        });
        let _ = writeln!(s, "| {p} | {v:.2} |");
    }
    let _ = writeln!(
        s,
        "\n| per lifecycle | median |\n|---|---|\n| Postgres commits (`pg_stat_database.xact_commit`) | {g7c:.2} |\n\
         | statements (`pg_stat_statements` calls, BEGIN/COMMIT included) | {g7s:.2} |\n\
         | WAL bytes | {:.0} |\n| events delivered | {:.2} |\n| Redis commands | {} |\n",
        med(rounds, |r| r.peak().costs.wal_bytes),
        med(rounds, |r| r.peak().costs.events),
        fmt_redis(
            &rounds
                .last()
                .map(|r| r.peak().costs.redis.clone())
                .unwrap_or_default()
        )
    );
    s.push_str(
        "Commits and statements include the background workers' (outbox sequencer and \
         dispatcher, payment queries, expiry) during the run. `pg_stat_database` is updated by \
         backends at most once a second, so commits carry about ±1 s of activity at each end of \
         the window; `pg_stat_statements` counts are exact.\n\n",
    );

    // G2.
    s.push_str("## G2: latency against offered load (open loop, from the intended send time)\n\n![latency](bench/latency.svg)\n\n| offered (× peak) | offered/s | achieved/s | CreateOrder p50/p99/p99.9 ms | Pay p50/p99/p99.9 ms | whole lifecycle p50/p99 ms | commit→delivery p99 ms | errors | shed |\n|---|---|---|---|---|---|---|---|---|\n");
    for (i, f) in args.loads().iter().enumerate() {
        let g = |f: &dyn Fn(&OpenPoint) -> f64| {
            med(rounds, |r| r.open.get(i).map(f).unwrap_or(f64::NAN))
        };
        let e: u64 = rounds
            .iter()
            .filter_map(|r| r.open.get(i))
            .map(|p| p.errors)
            .sum();
        let sh: u64 = rounds
            .iter()
            .filter_map(|r| r.open.get(i))
            .map(|p| p.shed)
            .sum();
        let _ = writeln!(
            s,
            "| {f:.2} | {:.0} | {:.1} | {:.2} / {:.2} / {:.2} | {:.2} / {:.2} / {:.2} | {:.1} / {:.1} | {:.1} | {e} | {sh} |",
            g(&|p| p.rate),
            g(&|p| p.achieved),
            g(&|p| p.create[0]),
            g(&|p| p.create[1]),
            g(&|p| p.create[2]),
            g(&|p| p.pay[0]),
            g(&|p| p.pay[1]),
            g(&|p| p.pay[2]),
            g(&|p| p.total[0]),
            g(&|p| p.total[1]),
            g(&|p| p.lag_p99)
        );
    }

    // G3.
    let _ = writeln!(
        s,
        "\n## G3: duplicate callbacks for paid orders\n\nThe sandbox signs and sends a paid trade's \
         notification again (`POST /sandbox/trades/<no>/notify`, 16 concurrent), the adapter \
         verifies it and reports it to payd.\n\n| per round | duplicates/s | ÷ B_dup | refused | WAL B/dup | \
         background WAL B/s | statements/dup | commits/dup | Redis commands/dup | outbox rows added |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    for (i, r) in rounds.iter().enumerate() {
        let d = &r.dup;
        let _ = writeln!(
            s,
            "| {} | {:.0} | {:.4} | {} of {} | {:.0} | {:.0} | {:.2} | {:.2} | {} | {:.0} |",
            i + 1,
            d.per_sec,
            d.per_sec / r.b.dup.tps,
            d.refused,
            d.sent,
            d.wal_per_dup,
            d.wal_idle_per_sec,
            d.statements_per_dup,
            d.commits_per_dup,
            fmt_redis(&d.redis_per_dup),
            d.outbox_added
        );
    }
    s.push_str("\n| process | CPU ms per duplicate (median) |\n|---|---|\n");
    for p in PROCS {
        let v = med(rounds, |r| r.dup.cpu_ms.get(p).copied().unwrap_or(f64::NAN));
        let _ = writeln!(s, "| {p} | {v:.3} |");
    }

    // G4.
    s.push_str("\n## G4: payd's order locks (`payd::locks::Locks`, 50 tasks, acquire + release)\n\nThe lock as Pay takes it (`Locks::acquire_unfenced`, then `Locks::fence`): two Redis round trips; its fencing token is drawn by the section's first statement (`payd_mint_fence()` in Pay's first read, one of G7's statements), here a counter. `Locks::acquire`, for the sections whose first statement is not a read of the order, draws it in a statement of its own.\n\n| per round | cycles/s | ÷ B_lock | errors | Redis commands per section | Postgres statements per section |\n|---|---|---|---|---|---|\n");
    for (i, r) in rounds.iter().enumerate() {
        let _ = writeln!(
            s,
            "| {} | {:.0} | {:.3} | {} | {} | {:.2} |",
            i + 1,
            r.lock.per_sec,
            r.lock.per_sec / r.b.lock,
            r.lock.errors,
            fmt_redis(&r.lock.redis_per_section),
            r.lock.statements_per_section
        );
    }
    s.push_str("\nRedis counts a script's inner SET/GET/DEL under their own names; the client's round trips are the EVALSHA calls.\n");

    // G5.
    s.push_str("\n## G5: outbox delivery capacity\n\nA backlog of `order.created` events is built with the sink refusing deliveries (CreateOrder only, closed loop); then the sink accepts and the bench times the drain. Refused deliveries are retried after 250 ms in this run (`PAYD_EVENT_RETRY_DELAYS_MS`), so the drain starts at most that late.\n\n| per round | backlog events | drain s | events/s | event production at the G1 peak /s | ratio | still pending after | at the sink's return: due / not yet due (latest, s) / not yet sequenced |\n|---|---|---|---|---|---|---|---|\n");
    for (i, r) in rounds.iter().enumerate() {
        let prod = r.peak().per_sec * r.peak().costs.events.max(1.0);
        let _ = writeln!(
            s,
            "| {} | {} | {:.2} | {:.0} | {:.0} | {:.2} | {} | {} / {} ({:.1}) / {} |",
            i + 1,
            r.drain.backlog,
            r.drain.drain_secs,
            r.drain.per_sec,
            prod,
            r.drain.per_sec / prod,
            r.drain.undelivered,
            r.drain.due_at_flip,
            r.drain.waiting_at_flip,
            r.drain.latest_due_s,
            r.drain.unsequenced_at_flip
        );
    }

    // Stored data.
    s.push_str("\n## Cost against stored data\n\nOrders bulk-inserted by SQL (`tests/bench/prefill_orders.sql`: PAID orders of the same app), then the G1 run at the peak's client count and the G2 run at 50% of that throughput, with a B_life measured just before each.\n\n![stored](bench/stored.svg)\n\n| orders stored | lifecycles/s | ÷ B_life | CreateOrder p99 ms | Pay p99 ms | B_life |\n|---|---|---|---|---|---|\n");
    for p in stored {
        let _ = writeln!(
            s,
            "| {:.0} | {:.1} | {:.4} | {:.2} | {:.2} | {:.0} |",
            p.orders,
            p.closed.per_sec,
            p.closed.per_sec / p.b_life,
            p.open.create[1],
            p.open.pay[1],
            p.b_life
        );
    }
    if stored.len() >= 2 {
        // Least-squares slope of throughput ÷ B_life against log10(orders), relative to the first.
        let pts: Vec<(f64, f64)> = stored
            .iter()
            .map(|p| (p.orders.max(1.0).log10(), p.closed.per_sec / p.b_life))
            .collect();
        let n = pts.len() as f64;
        let (mx, my) = (
            pts.iter().map(|p| p.0).sum::<f64>() / n,
            pts.iter().map(|p| p.1).sum::<f64>() / n,
        );
        let slope = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum::<f64>()
            / pts
                .iter()
                .map(|p| (p.0 - mx).powi(2))
                .sum::<f64>()
                .max(1e-12);
        let _ = writeln!(
            s,
            "\nSlope: {:+.1}% of the (÷ B_life) throughput per tenfold more stored orders; \
             p99 CreateOrder from {:.2} to {:.2} ms.\n",
            slope / my * 100.0,
            stored.first().map(|p| p.open.create[1]).unwrap_or(f64::NAN),
            stored.last().map(|p| p.open.create[1]).unwrap_or(f64::NAN)
        );
    }

    s.push_str("\n## CPU profile of the lifecycle\n\n");
    s.push_str(prof);
    s.push_str("Raw top frames: [bench/profile.txt](bench/profile.txt).\n");
    s
}

/// Which statements a lifecycle costs (G7): `pg_stat_statements` reset, a closed-loop run of
/// 4 clients, then every statement's calls per completed lifecycle, background workers
/// included. Exact counts, whatever the machine's load: the list to shorten for G7.
async fn statement_profile(ctx: &Ctx, target: &Target, secs: f64) -> String {
    let reset = || infra::psql(&ctx.admin_url, "SELECT pg_stat_statements_reset()", &[]);
    reset();
    let commits = |c: &Ctx| -> f64 {
        infra::psql(
            &c.admin_url,
            &format!(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = '{}'",
                c.db_name
            ),
            &[],
        )
        .trim()
        .parse()
        .unwrap_or(0.0)
    };
    let c0 = commits(ctx);
    let r = load::closed_loop(target, "G7stmts", Work::Lifecycle, 4, secs.max(5.0)).await;
    // pg_stat_database lags up to a second behind the backends.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let c1 = commits(ctx);
    let n = (r.completed as f64).max(1.0);
    let rows = infra::psql(
        &ctx.admin_url,
        &format!(
            "SELECT s.calls, round((s.total_exec_time + s.total_plan_time)::numeric, 3), \
             s.wal_bytes, left(regexp_replace(s.query, '\\s+', ' ', 'g'), 160) \
             FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid \
             WHERE d.datname = '{}' ORDER BY s.calls DESC LIMIT 40",
            ctx.db_name
        ),
        &[],
    );
    let mut out = format!(
        "\n### Statements per lifecycle (G7)\n\n{} lifecycles, 4 clients, {:.2} commits per \
         lifecycle (`pg_stat_database`, includes the run's last second of background work). The \
         statements, by calls per lifecycle (`pg_stat_statements`, background workers included):\n\n\
         | calls / lifecycle | ms / lifecycle (plan + execute) | WAL bytes / lifecycle | statement |\n|---|---|---|---|\n",
        r.completed,
        (c1 - c0) / n
    );
    let (mut total, mut total_ms, mut total_wal) = (0.0, 0.0, 0.0);
    for line in rows.lines() {
        let mut parts = line.splitn(4, '|');
        let (Some(calls), Some(ms), Some(wal), Some(query)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let num = |v: &str| v.trim().parse::<f64>().unwrap_or(0.0) / n;
        let (per, ms, wal) = (num(calls), num(ms), num(wal));
        total += per;
        total_ms += ms;
        total_wal += wal;
        if per >= 0.05 {
            let _ = writeln!(
                out,
                "| {per:.2} | {ms:.3} | {wal:.0} | `{}` |",
                query.replace('|', "\\|")
            );
        }
    }
    let _ = writeln!(
        out,
        "\nTotal (top 40): {total:.2} statements, {total_ms:.2} ms inside Postgres (planning and \
         execution as `pg_stat_statements` times them: wall time, not CPU) and {total_wal:.0} WAL \
         bytes per lifecycle.\n"
    );
    out
}

fn plots(out: &std::path::Path, rounds: &[Round], stored: &[StoredPoint]) {
    let w = |name: &str, text: String| {
        let _ = std::fs::write(out.join("bench").join(name), text);
    };
    let Some(last) = rounds.last() else { return };
    let clients: Vec<usize> = last.closed.iter().map(|p| p.clients).collect();
    let per_clients = |f: &dyn Fn(&Round, &ClosedPoint) -> f64| -> Vec<(f64, f64)> {
        clients
            .iter()
            .enumerate()
            .map(|(i, c)| {
                (
                    *c as f64,
                    med(rounds, |r| {
                        r.closed.get(i).map(|p| f(r, p)).unwrap_or(f64::NAN)
                    }),
                )
            })
            .collect()
    };
    w(
        "throughput.svg",
        svg::lines(
            "Lifecycles/s against closed-loop clients (median of rounds)",
            "clients",
            "lifecycles/s",
            &[("platform".into(), per_clients(&|_, p| p.per_sec))],
            true,
            &[
                ("L (median)".into(), med(rounds, |r| r.b.l())),
                ("0.5 L target".into(), med(rounds, |r| r.b.l()) * 0.5),
            ],
        ),
    );
    w(
        "ratio.svg",
        svg::lines(
            "Ratio to baselines (median of rounds)",
            "clients",
            "ratio",
            &[
                (
                    "lifecycles/s ÷ L".into(),
                    per_clients(&|r, p| p.per_sec / r.b.l()),
                ),
                (
                    "lifecycles/s ÷ B_life".into(),
                    per_clients(&|r, p| p.per_sec / r.b.life.tps),
                ),
            ],
            true,
            &[("G1 target 0.5".into(), 0.5)],
        ),
    );
    let loads: Vec<f64> = last.open.iter().map(|p| p.fraction).collect();
    let per_load = |f: &dyn Fn(&OpenPoint) -> f64| -> Vec<(f64, f64)> {
        loads
            .iter()
            .enumerate()
            .map(|(i, _)| {
                (
                    med(rounds, |r| {
                        r.open.get(i).map(|p| p.rate).unwrap_or(f64::NAN)
                    }),
                    med(rounds, |r| r.open.get(i).map(f).unwrap_or(f64::NAN)),
                )
            })
            .collect()
    };
    w(
        "latency.svg",
        svg::lines(
            "Latency percentiles against offered load (open loop)",
            "offered lifecycles/s",
            "ms",
            &[
                ("CreateOrder p50".into(), per_load(&|p| p.create[0])),
                ("CreateOrder p99".into(), per_load(&|p| p.create[1])),
                ("Pay p50".into(), per_load(&|p| p.pay[0])),
                ("Pay p99".into(), per_load(&|p| p.pay[1])),
                ("Pay p99.9".into(), per_load(&|p| p.pay[2])),
            ],
            false,
            &[("B_life p99".into(), med(rounds, |r| r.b.life.p99_ms))],
        ),
    );
    let procs: Vec<String> = PROCS.iter().map(|p| (*p).to_owned()).collect();
    let bar =
        |label: &str, f: &dyn Fn(&Round) -> BTreeMap<&'static str, f64>| -> (String, Vec<f64>) {
            (
                label.to_owned(),
                PROCS
                    .iter()
                    .map(|p| med(rounds, |r| f(r).get(p).copied().unwrap_or(0.0)))
                    .collect(),
            )
        };
    w(
        "cpu_per_lifecycle.svg",
        svg::stacked_bars(
            "CPU ms per lifecycle / per duplicate, by process",
            "CPU ms",
            &procs,
            &[
                bar("lifecycle (G1 peak)", &|r| r.peak().costs.cpu_ms.clone()),
                bar("duplicate callback (G3)", &|r| r.dup.cpu_ms.clone()),
            ],
            &[],
        ),
    );
    if !stored.is_empty() {
        w(
            "stored.svg",
            svg::lines(
                "Throughput and p99 against stored orders",
                "orders stored",
                "lifecycles/s, ms",
                &[
                    (
                        "lifecycles/s".into(),
                        stored
                            .iter()
                            .map(|p| (p.orders, p.closed.per_sec))
                            .collect(),
                    ),
                    (
                        "CreateOrder p99 ms ×10".into(),
                        stored
                            .iter()
                            .map(|p| (p.orders, p.open.create[1] * 10.0))
                            .collect(),
                    ),
                    (
                        "Pay p99 ms ×10".into(),
                        stored
                            .iter()
                            .map(|p| (p.orders, p.open.pay[1] * 10.0))
                            .collect(),
                    ),
                ],
                true,
                &[],
            ),
        );
    }
}
