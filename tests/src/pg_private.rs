//! Private Postgres and Redis servers for the fault tests that break their database or their
//! Redis on purpose (stop, restart, pause). The shared servers on 5432/6379 belong to everyone
//! and are never touched: each [`PrivatePostgres`] is a fresh `initdb` cluster in a temp dir on a
//! free port (durable: `fsync=on`, `synchronous_commit=on`), each [`PrivateRedis`] a
//! `redis-server` child on a free port. Both are stopped and removed when dropped.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::free_addr;

/// Where the Postgres 15 server binaries are (`PG_BIN` overrides).
fn pg_bin(tool: &str) -> PathBuf {
    let dir = std::env::var("PG_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".to_owned());
    Path::new(&dir).join(tool)
}

/// Whether this process runs as root (`/proc/self` belongs to the effective uid).
fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// `initdb` and `postgres` refuse to run as root: run them as the `postgres` user then.
fn as_cluster_owner(program: &Path, args: &[String]) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program).args(args);
        c
    } else {
        let mut c = Command::new(program);
        c.args(args);
        c
    }
}

/// A throwaway Postgres cluster owned by one test.
pub struct PrivatePostgres {
    dir: PathBuf,
    pub port: u16,
}

impl PrivatePostgres {
    /// `initdb` into a temp dir and start the server on a free loopback port.
    ///
    /// # Panics
    /// When the cluster cannot be created or started (the server log is in the panic message).
    pub fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("payd-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("pg temp dir");
        if is_root() {
            let ok = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&dir)
                .status()
                .expect("chown")
                .success();
            assert!(ok, "chown of the private cluster's dir");
        }
        let data = dir.join("data").display().to_string();
        // --no-sync only skips initdb's own final sync; the server runs with fsync on.
        let out = as_cluster_owner(
            &pg_bin("initdb"),
            &[
                "-D".into(),
                data,
                "-U".into(),
                "postgres".into(),
                "-A".into(),
                "trust".into(),
                "--no-sync".into(),
            ],
        )
        .stdout(Stdio::null())
        .output()
        .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_addr().port();
        let pg = Self { dir, port };
        pg.start_server();
        pg
    }

    /// `postgres://postgres@127.0.0.1:<port>`, what [`crate::TestDb::create_on`] takes.
    pub fn server_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.port)
    }

    fn pg_ctl(&self, args: &[&str]) -> std::process::Output {
        let mut all: Vec<String> = vec![
            "-D".into(),
            self.dir.join("data").display().to_string(),
            "-l".into(),
            self.dir.join("server.log").display().to_string(),
        ];
        all.extend(args.iter().map(|s| (*s).to_owned()));
        as_cluster_owner(&pg_bin("pg_ctl"), &all)
            .stdout(Stdio::null())
            .output()
            .expect("run pg_ctl")
    }

    /// Starts (or restarts, after [`PrivatePostgres::stop_immediate`]: crash recovery) the
    /// server on the same port, and waits until it accepts connections.
    pub fn start_server(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=on -c synchronous_commit=on \
             -c max_connections=200 -c shared_buffers=32MB",
            self.port,
            self.dir.display()
        );
        let out = self.pg_ctl(&["-o", &opts, "-w", "-t", "60", "start"]);
        assert!(
            out.status.success(),
            "private postgres did not start: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
        );
    }

    /// `pg_ctl stop -m immediate`: every backend dies without a checkpoint, as in a crash.
    pub fn stop_immediate(&self) {
        let _ = self.pg_ctl(&["-m", "immediate", "-w", "stop"]);
    }

    /// The postmaster's pid (first line of `postmaster.pid`).
    pub fn postmaster_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.dir.join("data").join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    /// Pids of the client backends connected to `database` (`pg_stat_activity`).
    pub fn backend_pids(&self, database: &str) -> Vec<i32> {
        use diesel::{Connection, PgConnection, RunQueryDsl};
        #[derive(diesel::QueryableByName)]
        struct P {
            #[diesel(sql_type = diesel::sql_types::Integer)]
            pid: i32,
        }
        let Ok(mut c) = PgConnection::establish(&format!("{}/postgres", self.server_url())) else {
            return Vec::new();
        };
        diesel::sql_query(format!(
            "SELECT pid FROM pg_stat_activity WHERE datname = '{database}' \
             AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
        ))
        .load::<P>(&mut c)
        .map(|v| v.into_iter().map(|p| p.pid).collect())
        .unwrap_or_default()
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.stop_immediate();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// SIGSTOP (`true`) or SIGCONT (`false`) to a process of ours (a Postgres backend, Redis).
pub fn set_stopped(pid: i32, stopped: bool) {
    let sig = if stopped {
        Signal::SIGSTOP
    } else {
        Signal::SIGCONT
    };
    let _ = kill(Pid::from_raw(pid), sig);
}

/// A `redis-server` child owned by one test, without persistence.
pub struct PrivateRedis {
    pub port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    /// Starts `redis-server` on a free loopback port and waits for PONG.
    pub fn start() -> Self {
        let port = free_addr().port();
        let mut r = Self { port, child: None };
        r.start_server();
        r
    }

    /// `redis://127.0.0.1:<port>`, for `PAYD_REDIS_URL`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// (Re)starts the server on its port, empty (no persistence: what a restarted cache has).
    pub fn start_server(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn redis-server (apt-get install redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.pings() {
            assert!(Instant::now() < deadline, "private redis did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn pings(&self) -> bool {
        let Ok(client) = redis::Client::open(self.url()) else {
            return false;
        };
        let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_millis(300)) else {
            return false;
        };
        redis::cmd("PING").query::<String>(&mut conn).is_ok()
    }

    /// `redis-cli shutdown nosave`, as an operator (or a crash of a cache) would stop it.
    pub fn shutdown_nosave(&mut self) {
        let _ = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "shutdown", "nosave"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Some(mut c) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP (`true`) / SIGCONT (`false`): Redis stops answering but keeps its connections.
    pub fn set_paused(&self, paused: bool) {
        if let Some(c) = &self.child {
            set_stopped(i32::try_from(c.id()).expect("pid"), paused);
        }
    }

    /// `INFO commandstats` as (command, calls) pairs, e.g. ("evalsha", 12).
    pub fn command_calls(&self) -> std::collections::BTreeMap<String, u64> {
        let client = redis::Client::open(self.url()).expect("redis url");
        let mut conn = client.get_connection().expect("private redis");
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut conn)
            .unwrap_or_default();
        parse_commandstats(&info)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = kill(
                Pid::from_raw(i32::try_from(c.id()).unwrap_or(0)),
                Signal::SIGCONT,
            );
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// (command, calls) pairs from the text of `INFO commandstats`; shared by the fault tests and
/// paybench so both count Redis round trips the same way.
pub fn parse_commandstats(info: &str) -> std::collections::BTreeMap<String, u64> {
    info.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("cmdstat_")?;
            let (cmd, stats) = rest.split_once(':')?;
            let calls = stats
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))?
                .trim()
                .parse()
                .ok()?;
            Some((cmd.to_owned(), calls))
        })
        .collect()
}
