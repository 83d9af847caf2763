//! The bench's own Postgres cluster and Redis server, the baselines run against them
//! (pgbench, redis-benchmark, openssl speed), and the counters read around each measurement
//! (`/proc` CPU, `pg_stat_database`, `pg_stat_statements`, WAL position, Redis commandstats).
//!
//! A private cluster (initdb on a free port, durable defaults, `pg_stat_statements` preloaded,
//! sized like the shared one) makes the figures reproducible on a fresh machine and keeps the
//! counters free of other users' traffic; the shared Postgres and Redis are never touched.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// SQL and pgbench scripts, kept as files so they can be run by hand too.
pub mod sql {
    pub const SCHEMA: &str = include_str!("../../bench/schema.sql");
    pub const LIFECYCLE: &str = include_str!("../../bench/lifecycle.sql");
    pub const DUP_NOTIFY: &str = include_str!("../../bench/dup_notify.sql");
    pub const DUP_SETUP: &str = include_str!("../../bench/dup_setup.sql");
    pub const OUTBOX_CLAIM: &str = include_str!("../../bench/outbox_claim.sql");
    pub const CLAIM_SETUP: &str = include_str!("../../bench/claim_setup.sql");
    pub const PREFILL_ORDERS: &str = include_str!("../../bench/prefill_orders.sql");
}

fn run_ok(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether we run as root (effective uid 0, from `/proc/self/status`).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|u| u.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// Runs `f` as the `postgres` OS user when we are root (initdb refuses root).
fn as_postgres(program: &str) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", program]);
        c
    } else {
        Command::new(program)
    }
}

/// A Postgres 15 cluster in a temp directory, stopped and removed on drop.
pub struct Cluster {
    pub dir: PathBuf,
    pub port: u16,
}

impl Cluster {
    /// `initdb` + start with durable defaults (fsync, synchronous_commit on), memory settings
    /// copied from the server at `like` when it answers, and `pg_stat_statements` preloaded.
    pub fn start(like: Option<&str>) -> Self {
        let dir =
            std::env::temp_dir().join(format!("paybench-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("cluster dir");
        if is_root() {
            run_ok(
                Command::new("chown").args(["postgres:postgres"]).arg(&dir),
                "chown",
            );
        }
        let data = dir.join("data");
        run_ok(
            as_postgres(&format!("{PG_BIN}/initdb"))
                .arg("-D")
                .arg(&data)
                .args(["-U", "postgres", "-A", "trust", "-E", "UTF8"])
                .stdout(Stdio::null()),
            "initdb",
        );
        let port = e2e::free_addr().port();
        let mut conf = format!(
            "\n# paybench\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             shared_preload_libraries = 'pg_stat_statements'\npg_stat_statements.track_utility = on\n\
             pg_stat_statements.max = 10000\npg_stat_statements.track_planning = on\nfsync = on\nsynchronous_commit = on\n",
            dir.display()
        );
        for (k, v) in like.map(shared_settings).unwrap_or_default() {
            conf.push_str(&format!("{k} = '{v}'\n"));
        }
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .expect("postgresql.conf");
        std::io::Write::write_all(&mut f, conf.as_bytes()).expect("write conf");
        run_ok(
            as_postgres(&format!("{PG_BIN}/pg_ctl"))
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(dir.join("pg.log"))
                .args(["-w", "start"])
                .stdout(Stdio::null()),
            "pg_ctl start",
        );
        let c = Self { dir, port };
        c.psql(
            "postgres",
            "CREATE EXTENSION IF NOT EXISTS pg_stat_statements",
        );
        c
    }

    /// Server URL without a database (as `TEST_DATABASE_URL` wants it).
    pub fn server_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.port)
    }

    pub fn url(&self, db: &str) -> String {
        format!("{}/{db}", self.server_url())
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Runs SQL in `db`; returns unaligned, tuples-only output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        psql(&self.url(db), sql, &[])
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = as_postgres(&format!("{PG_BIN}/pg_ctl"))
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", "fast", "-w", "stop"])
            .stdout(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Memory and WAL settings of the shared server, so the private cluster is sized like it.
fn shared_settings(url: &str) -> Vec<(String, String)> {
    let out = Command::new("psql")
        .args(["-X", "-A", "-t", "-q", "-F", "|", "-d"])
        .arg(format!("{url}/postgres"))
        .arg("-c")
        .arg(
            "SELECT name, setting || coalesce(unit, '') FROM pg_settings WHERE name IN \
             ('shared_buffers','max_connections','wal_buffers','max_wal_size','min_wal_size',\
              'work_mem','effective_cache_size','checkpoint_timeout','maintenance_work_mem')",
        )
        .output();
    let Ok(out) = out else { return Vec::new() };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('|'))
        .map(|(k, v)| {
            // pg_settings gives blocks of 8kB for some units: keep them in bytes-with-unit form.
            let v = match v.strip_suffix("8kB") {
                Some(n) => format!("{}kB", n.parse::<u64>().unwrap_or(0) * 8),
                None => v.to_owned(),
            };
            (k.to_owned(), v)
        })
        .collect()
}

/// `psql` with `-v` variables; unaligned, tuples only, stops at the first error.
pub fn psql(url: &str, sql: &str, vars: &[(&str, String)]) -> String {
    let mut c = Command::new("psql");
    c.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d", url]);
    for (k, v) in vars {
        c.arg("-v").arg(format!("{k}={v}"));
    }
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("psql on PATH");
    std::io::Write::write_all(child.stdin.as_mut().expect("stdin"), sql.as_bytes())
        .expect("psql stdin");
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("psql");
    assert!(
        out.status.success(),
        "psql failed: {}\n{sql}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// One pgbench result: transactions (script runs) per second and latency percentiles.
#[derive(Debug, Clone, Copy, Default)]
pub struct PgbenchResult {
    pub tps: f64,
    #[allow(dead_code)] // kept for ad-hoc printing beside p99
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Runs pgbench with per-transaction logs, from which the percentiles come.
pub fn pgbench(url: &str, args: &[&str], script: Option<&str>, secs: u64) -> PgbenchResult {
    let dir = std::env::temp_dir().join(format!("paybench-log-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("log dir");
    let mut c = Command::new("pgbench");
    c.args(args).arg("-T").arg(secs.to_string()).arg("-l");
    c.arg(format!("--log-prefix={}", dir.join("tx").display()));
    if let Some(s) = script {
        let f = dir.join("script.sql");
        std::fs::write(&f, s).expect("script");
        c.arg("-f").arg(f);
    }
    c.arg(url);
    let out = run_ok(c.stderr(Stdio::null()), "pgbench");
    let tps = out
        .lines()
        .find_map(|l| {
            l.strip_prefix("tps = ")
                .and_then(|r| r.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or_else(|| panic!("no tps in pgbench output: {out}"));
    let mut h = hdrhistogram::Histogram::<u64>::new(3).expect("histogram");
    for entry in std::fs::read_dir(&dir).expect("logs").flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with("tx") {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        for l in text.lines() {
            if let Some(us) = l
                .split_whitespace()
                .nth(2)
                .and_then(|v| v.parse::<u64>().ok())
            {
                h.record(us.max(1)).ok();
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    PgbenchResult {
        tps,
        p50_ms: h.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: h.value_at_quantile(0.99) as f64 / 1000.0,
    }
}

/// The Postgres baselines of BENCH_AND_FAULTS.md, each on freshly created tables.
pub struct PgBaselines {
    pub url: String,
    pub tpcb_url: String,
    /// Seconds `pgbench -i -s 10` took (B_load, the reconciliation baseline).
    pub load_secs: f64,
}

impl PgBaselines {
    /// Creates the baseline databases on the server at `server` (a URL without a database)
    /// and loads the TPC-B tables, timing the load.
    pub fn prepare(server: &str) -> Self {
        let admin = format!("{server}/postgres");
        psql(&admin, "DROP DATABASE IF EXISTS paybench_base", &[]);
        psql(&admin, "DROP DATABASE IF EXISTS paybench_tpcb", &[]);
        psql(&admin, "CREATE DATABASE paybench_base", &[]);
        psql(&admin, "CREATE DATABASE paybench_tpcb", &[]);
        let tpcb_url = format!("{server}/paybench_tpcb");
        let t = Instant::now();
        run_ok(
            Command::new("pgbench")
                .args(["-i", "-q", "-s", "10"])
                .arg(&tpcb_url)
                .stderr(Stdio::null()),
            "pgbench -i",
        );
        Self {
            url: format!("{server}/paybench_base"),
            tpcb_url,
            load_secs: t.elapsed().as_secs_f64(),
        }
    }

    /// B_life: the two durable transactions of a lifecycle, prepared, 8 clients.
    pub fn life(&self, secs: u64) -> PgbenchResult {
        psql(&self.url, sql::SCHEMA, &[]);
        pgbench(
            &self.url,
            &["-M", "prepared", "-n", "-c", "8", "-j", "2"],
            Some(sql::LIFECYCLE),
            secs,
        )
    }

    /// B_dup: a conditional update that matches no row (the order is already paid).
    pub fn dup(&self, secs: u64) -> PgbenchResult {
        psql(&self.url, sql::SCHEMA, &[]);
        psql(&self.url, sql::DUP_SETUP, &[]);
        pgbench(
            &self.url,
            &["-n", "-c", "8", "-j", "2"],
            Some(sql::DUP_NOTIFY),
            secs,
        )
    }

    /// B_claim: claims of 50 outbox rows `FOR UPDATE SKIP LOCKED`, one client.
    pub fn claim(&self, secs: u64) -> PgbenchResult {
        psql(&self.url, sql::SCHEMA, &[]);
        // More rows than the run can claim (≈ 800 claims/s × 50 rows on a quiet machine).
        psql(
            &self.url,
            sql::CLAIM_SETUP,
            &[("rows", (secs * 60_000).to_string())],
        );
        pgbench(
            &self.url,
            &["-n", "-c", "1", "-j", "1"],
            Some(sql::OUTBOX_CLAIM),
            secs,
        )
    }

    /// B_tpcb: the built-in TPC-B-like script, scale 10, 8 clients.
    pub fn tpcb(&self, secs: u64) -> PgbenchResult {
        pgbench(&self.tpcb_url, &["-c", "8", "-j", "2"], None, secs)
    }
}

/// A private `redis-server` (no persistence), killed on drop.
pub struct Redis {
    pub child: Child,
    pub port: u16,
}

impl Redis {
    pub fn start() -> Self {
        let (child, [addr]) = e2e::start_listening("redis-server", |[addr]| {
            Command::new("redis-server")
                .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .arg("--port")
                .arg(addr.port().to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server on PATH")
        });
        Self {
            child,
            port: addr.port(),
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn redis_cli(port: u16, args: &[&str]) -> String {
    run_ok(
        Command::new("redis-cli")
            .arg("-p")
            .arg(port.to_string())
            .args(args),
        "redis-cli",
    )
}

/// Calls per command from `INFO commandstats` (script-internal calls are counted under their
/// own command too, so EVALSHA's inner SET/GET/DEL show up beside it).
pub fn commandstats(port: u16) -> BTreeMap<String, u64> {
    e2e::pg_private::parse_commandstats(&redis_cli(port, &["INFO", "commandstats"]))
}

/// `after - before` per command, leaving out the bench's own INFO calls.
pub fn commandstats_delta(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter(|(k, _)| k.as_str() != "info")
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect()
}

/// B_lock: `SET k v NX PX 30000` and a compare-and-delete `EVALSHA`, 50 clients, no
/// pipelining; the harmonic combination is acquire+release cycles/s.
pub fn lock_baseline(port: u16, requests: u64) -> (f64, f64, f64) {
    const CAD: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";
    let sha = redis_cli(port, &["SCRIPT", "LOAD", CAD]).trim().to_owned();
    let bench = |cmd: &[&str]| -> f64 {
        let out = run_ok(
            Command::new("redis-benchmark")
                .arg("-p")
                .arg(port.to_string())
                .args(["-c", "50", "-P", "1", "--csv", "-r", "1000000", "-n"])
                .arg(requests.to_string())
                .args(cmd),
            "redis-benchmark",
        );
        out.lines()
            .filter_map(|l| l.split(',').nth(1))
            .filter_map(|v| v.trim_matches('"').parse::<f64>().ok())
            .next_back()
            .unwrap_or_else(|| panic!("no rate in redis-benchmark output: {out}"))
    };
    let set = bench(&["SET", "lock:__rand_int__", "tok", "NX", "PX", "30000"]);
    let cad = bench(&["EVALSHA", &sha, "1", "lock:__rand_int__", "tok"]);
    (set, cad, 1.0 / (1.0 / set + 1.0 / cad))
}

/// S: RSA-2048 signatures/s on both cores (`openssl speed -multi 2`).
pub fn rsa_signs(secs: u64) -> f64 {
    let out = run_ok(
        Command::new("openssl")
            .args(["speed", "-multi", "2", "-seconds"])
            .arg(secs.to_string())
            .arg("rsa2048")
            .stderr(Stdio::null()),
        "openssl speed",
    );
    out.lines()
        .filter(|l| l.starts_with("rsa") && l.contains("2048"))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(f.len().checked_sub(2)?)?.parse::<f64>().ok()
        })
        .next_back()
        .unwrap_or_else(|| panic!("no sign/s in openssl output: {out}"))
}

/// Cumulative CPU seconds (user + system) of a process from `/proc/<pid>/stat`; with
/// `children`, also of its waited-for children.
pub fn cpu_secs(pid: u32, children: bool) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    // After the comm field: state(0) ppid(1) … utime(11) stime(12) cutime(13) cstime(14).
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let ticks = n(11) + n(12) + if children { n(13) + n(14) } else { 0.0 };
    Some(ticks / clock_ticks())
}

fn clock_ticks() -> f64 {
    static TCK: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TCK.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

fn ppid(pid: u32) -> Option<u32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    text.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Children of `parent` (Postgres backends and auxiliary processes of a postmaster).
pub fn children_of(parent: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter(|pid| ppid(*pid) == Some(parent))
                .collect()
        })
        .unwrap_or_default()
}

/// CPU of a whole Postgres cluster: the postmaster with its reaped children, plus every live
/// child (backends that exit in between land in the postmaster's `cutime`).
pub fn postgres_cpu(postmaster: u32) -> f64 {
    cpu_secs(postmaster, true).unwrap_or(0.0)
        + children_of(postmaster)
            .into_iter()
            .filter_map(|p| cpu_secs(p, false))
            .sum::<f64>()
}

/// The postmaster's pid from its data directory.
pub fn postmaster_pid(data: &Path) -> Option<u32> {
    std::fs::read_to_string(data.join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// The machine, for the report's header.
pub fn machine() -> Vec<(String, String)> {
    let sh = |c: &str| {
        Command::new("sh")
            .args(["-c", c])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    vec![
        ("nproc".into(), sh("nproc")),
        (
            "CPU".into(),
            sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'"),
        ),
        ("RAM".into(), sh("free -g | awk '/Mem:/{print $2\" GiB\"}'")),
        ("kernel".into(), sh("uname -sr")),
        (
            "Postgres".into(),
            sh("pgbench --version; postgres --version 2>/dev/null | head -1"),
        ),
        (
            "Redis".into(),
            sh("redis-server --version | cut -d' ' -f1-3"),
        ),
        ("OpenSSL".into(), sh("openssl version")),
        ("rustc".into(), sh("rustc --version")),
        (
            "load average at start".into(),
            sh("cut -d' ' -f1-3 /proc/loadavg"),
        ),
    ]
}

/// Load average (1 min), to note the foreign load per round.
pub fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Sleeps a moment so counters updated after commit (pg_stat_database) catch up.
pub fn settle() {
    std::thread::sleep(Duration::from_millis(1200));
}
