#!/usr/bin/env bash
# The benchmark report: release build of the platform's binaries and paybench, then paybench,
# which starts a private Postgres cluster and Redis, runs the baselines interleaved with the
# platform, and writes docs/BENCHMARKS.md and docs/bench/*.svg.
#   bash scripts/bench.sh           # full run (≤ 15 min on 2 cores)
#   bash scripts/bench.sh --quick   # ~5 min
# Other paybench options pass through (target/release/paybench --help).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p payd --bin payd -p channel-wechat --bin wechat-adapter \
  -p sandbox --bin sandbox -p e2e --bin paybench
exec target/release/paybench "$@"
