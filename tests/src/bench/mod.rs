//! The parts of `paybench` (`src/bin/paybench.rs`):
//! - [`infra`]: the private Postgres cluster and Redis, the baselines (pgbench, redis-benchmark,
//!   openssl speed) and the counters read around each measurement (`/proc`, pg_stat_*, WAL,
//!   Redis commandstats).
//! - [`load`]: closed- and open-loop lifecycles against the platform, duplicate callbacks, and
//!   the event sink that ends each lifecycle.
//! - [`svg`]: the report's plots.
pub mod infra;
pub mod load;
pub mod svg;
