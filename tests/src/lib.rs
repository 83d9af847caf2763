//! Test support shared by the in-process API tests (`server/tests`) and the cross-process tests
//! here (`tests/tests`): a fresh Postgres database and a Redis key prefix per test, removed on drop,
//! and real `payd` processes ([`Payd`]).
//!
//! # Layout
//! - this file: [`TestDb`], [`RedisNamespace`], [`Payd`], free ports and binary lookup.
//! - [`platform`]: the whole platform as processes ([`platform::Platform`]: sandboxes, adapters
//!   and payd, one [`platform::SandboxedChannel`] per channel).
//! - [`calls`]: typed `payment.v1` calls and the payer's side at the sandboxes.
//! - [`sink`]: a test `EventSink` that records what it receives and can refuse deliveries.
//!
//! Environment: `TEST_DATABASE_URL` (server URL without a database; default
//! `postgres://postgres@127.0.0.1:5432`), `TEST_REDIS_URL` (default `redis://127.0.0.1:6379`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod calls;
pub mod invariants;
pub mod pg_private;
pub mod platform;
pub mod sink;

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use diesel::{Connection, PgConnection, RunQueryDsl};

pub fn server_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A database created for one test and dropped (with its connections) when this value drops.
pub struct TestDb {
    pub name: String,
    pub url: String,
    /// The server it lives on (URL without a database).
    pub server: String,
}

impl TestDb {
    /// Creates an empty database; the caller (payd, or `payd::storage::run_migrations`) migrates it.
    pub fn create() -> Self {
        Self::create_on(&server_url())
    }

    /// As [`TestDb::create`], on another server (a private cluster of a fault test).
    pub fn create_on(server: &str) -> Self {
        let name = format!("payd_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::establish(&format!("{server}/postgres"))
            .expect("connect to Postgres (is it running? see README)");
        diesel::sql_query(format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .expect("create test database");
        let url = format!("{server}/{name}");
        Self {
            name,
            url,
            server: server.to_owned(),
        }
    }

    pub fn connect(&self) -> PgConnection {
        PgConnection::establish(&self.url).expect("connect to test database")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Ok(mut admin) = PgConnection::establish(&format!("{}/postgres", self.server)) {
            let _ = diesel::sql_query(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .execute(&mut admin);
        }
    }
}

/// A Redis key prefix for one test; every key under it is deleted on drop.
pub struct RedisNamespace {
    pub prefix: String,
}

impl RedisNamespace {
    pub fn new() -> Self {
        Self {
            prefix: format!("test:{}:", uuid::Uuid::new_v4().simple()),
        }
    }

    pub fn keys(&self) -> Vec<String> {
        let client = redis::Client::open(redis_url()).expect("redis url");
        let mut conn = client
            .get_connection()
            .expect("connect to Redis (is it running? see README)");
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", self.prefix))
            .query(&mut conn)
            .unwrap_or_default();
        keys
    }
}

impl Default for RedisNamespace {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for RedisNamespace {
    fn drop(&mut self) {
        let keys = self.keys();
        if keys.is_empty() {
            return;
        }
        if let Ok(client) = redis::Client::open(redis_url())
            && let Ok(mut conn) = client.get_connection()
        {
            let _: Result<(), _> = redis::cmd("DEL").arg(keys).query(&mut conn);
        }
    }
}

/// A loopback port that no other test process on this machine will be handed while this process
/// lives, and that was free a moment ago.
///
/// Picked below Linux's ephemeral range (32768+), so the source ports of the many outgoing
/// connections tests make cannot take it before the process we start binds it. A random pick
/// alone is not enough: one platform takes ~10 ports and CI starts hundreds of platforms, in
/// parallel processes, so two picks of the same port (a birthday collision, ~0.3% per platform)
/// happened (an adapter given one port for both its gRPC and callback listeners). Each port
/// handed out is therefore reserved by binding the abstract Unix socket `payplatform-port-<n>`,
/// held until this process exits: the kernel makes that name exclusive across processes and
/// frees it when the process dies, however it dies, and it leaves no file behind. A port some
/// unrelated program takes meanwhile is still possible; [`start_listening`] retries then.
pub fn free_addr() -> SocketAddr {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr as UnixAddr, UnixListener};
    use std::sync::Mutex;
    static RESERVED: Mutex<Vec<UnixListener>> = Mutex::new(Vec::new());
    loop {
        let port = 20_000 + (uuid::Uuid::new_v4().as_u128() % 12_000) as u16;
        let name = format!("payplatform-port-{port}");
        let Ok(reservation) =
            UnixAddr::from_abstract_name(name.as_bytes()).and_then(|a| UnixListener::bind_addr(&a))
        else {
            continue; // handed to this or another test process already
        };
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            RESERVED
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(reservation);
            return SocketAddr::from(([127, 0, 0, 1], port));
        }
    }
}

/// Waits until `child` accepts connections on every address. `Err` when the child exits first
/// (typically: one of its ports was taken meanwhile) or does not listen in time.
pub fn wait_listening(
    child: &mut Child,
    addrs: &[SocketAddr],
    within: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "exited with {status} before listening on {addrs:?}"
            ));
        }
        if addrs
            .iter()
            .all(|a| std::net::TcpStream::connect(a).is_ok())
        {
            // A bind error surfaces within milliseconds of start: make sure the listener we
            // reached is the child's, not someone else's on a port it failed to bind.
            std::thread::sleep(Duration::from_millis(50));
            return match child.try_wait() {
                Ok(Some(status)) => Err(format!("exited with {status}")),
                _ => Ok(()),
            };
        }
        if Instant::now() > deadline {
            return Err(format!("did not listen on {addrs:?} within {within:?}"));
        }
        std::thread::sleep(Duration::from_millis(30));
    }
}

/// Starts a process on fresh ports, retrying with new ones if a port was taken in between.
/// `spawn` gets `n` fresh addresses and returns the child.
pub fn start_listening<const N: usize>(
    what: &str,
    mut spawn: impl FnMut([SocketAddr; N]) -> Child,
) -> (Child, [SocketAddr; N]) {
    let mut last = String::new();
    for _ in 0..5 {
        let addrs: [SocketAddr; N] = std::array::from_fn(|_| free_addr());
        let mut child = spawn(addrs);
        match wait_listening(&mut child, &addrs, Duration::from_secs(30)) {
            Ok(()) => return (child, addrs),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                last = e;
            }
        }
    }
    panic!("{what} did not start: {last}");
}

/// Path of a workspace binary, built by `cargo build --workspace --bins` before the tests run
/// (the README's test command does this).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // A test runs from target/<profile>/deps/, a binary (the bench) from target/<profile>/.
    let here = exe.parent().expect("exe dir");
    let dir = if here.ends_with("deps") {
        here.parent().expect("target dir")
    } else {
        here
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// A running `payd` process, killed on drop.
pub struct Payd {
    pub child: Child,
    pub grpc: SocketAddr,
    pub metrics: SocketAddr,
    /// Its gRPC port speaks TLS (`PAYD_TLS_CERT_FILE` was given).
    pub tls: bool,
}

fn tls_in(env: &[(&str, &str)]) -> bool {
    env.iter().any(|(k, _)| *k == "PAYD_TLS_CERT_FILE")
}

impl Payd {
    /// Starts `payd` on fresh ports against `db` and the Redis `ns`, and waits until it serves.
    pub fn start(db: &TestDb, ns: &RedisNamespace, extra_env: &[(&str, &str)]) -> Self {
        let (child, [grpc, metrics]) = start_listening("payd", |[grpc, metrics]| {
            Self::spawn(db, ns, grpc, metrics, extra_env)
        });
        Self {
            child,
            grpc,
            metrics,
            tls: tls_in(extra_env),
        }
    }

    /// Starts `payd` on the given ports (a restart where clients expect the old address).
    pub fn start_on(
        db: &TestDb,
        ns: &RedisNamespace,
        grpc: SocketAddr,
        metrics: SocketAddr,
        extra_env: &[(&str, &str)],
    ) -> Self {
        let mut child = Self::spawn(db, ns, grpc, metrics, extra_env);
        if let Err(e) = wait_listening(&mut child, &[grpc, metrics], Duration::from_secs(30)) {
            panic!("payd: {e}");
        }
        Self {
            child,
            grpc,
            metrics,
            tls: tls_in(extra_env),
        }
    }

    fn spawn(
        db: &TestDb,
        ns: &RedisNamespace,
        grpc: SocketAddr,
        metrics: SocketAddr,
        extra_env: &[(&str, &str)],
    ) -> Child {
        let mut cmd = Command::new(binary("payd"));
        cmd.env("PAYD_LISTEN", grpc.to_string())
            .env("PAYD_METRICS_LISTEN", metrics.to_string())
            .env("PAYD_DATABASE_URL", &db.url)
            .env("PAYD_REDIS_URL", redis_url())
            .env("PAYD_REDIS_KEY_PREFIX", &ns.prefix)
            .env("PAYD_APP_CREDENTIALS", calls::test_credentials_toml())
            .env("PAYD_DATABASE_POOL_SIZE", "8")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        cmd.spawn().expect("spawn payd")
    }

    pub fn endpoint(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.grpc)
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        let pid = Pid::from_raw(i32::try_from(self.child.id()).expect("pid"));
        kill(pid, Signal::SIGTERM).expect("SIGTERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "payd did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGSTOP: the process stops running (a long GC pause, a frozen VM) but keeps its sockets.
    pub fn pause(&self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
    }

    /// SIGCONT after [`Payd::pause`].
    pub fn resume(&self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).expect("pid"));
        nix::sys::signal::kill(pid, sig).expect("signal payd");
    }

    /// SIGKILL: no chance to clean up, as in a crash.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Payd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CI failure this guards against: one platform's adapter was given the same port for two
    /// listeners. 1,000 picks out of 12,000 ports collide ~40 times when picks are merely random.
    #[test]
    fn free_addr_never_hands_out_a_port_twice_even_across_threads() {
        let picks: Vec<SocketAddr> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| s.spawn(|| (0..250).map(|_| free_addr()).collect::<Vec<_>>()))
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("picker thread"))
                .collect()
        });
        let distinct: std::collections::HashSet<_> = picks.iter().collect();
        assert_eq!(distinct.len(), picks.len(), "a port was handed out twice");
    }

    /// Another test process asking for a port this one holds finds its reservation taken.
    #[test]
    fn a_handed_out_port_stays_reserved_for_the_process() {
        use std::os::linux::net::SocketAddrExt;
        let port = free_addr().port();
        let name = format!("payplatform-port-{port}");
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        assert!(std::os::unix::net::UnixListener::bind_addr(&addr).is_err());
    }
}
