#!/usr/bin/env bash
# The benchmark report: release build of the platform's binaries and paybench, then paybench,
# which starts a private Postgres cluster and Redis, runs the baselines interleaved with the
# platform, and writes docs/BENCHMARKS.md and docs/bench/*.svg.
#   bash scripts/bench.sh           # full run (≤ 15 min on 2 cores)
#   bash scripts/bench.sh --quick   # ~5 min
# Other paybench options pass through (target/release/paybench --help).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
# The CPU profile: perf (Debian's linux-perf), allowed to sample other processes.
if [[ " $* " != *" --no-profile "* ]]; then
    command -v perf >/dev/null || { log "installing perf (Debian package linux-perf)"; apt_install linux-perf || log "no perf: the report will say so"; }
    if [ "$(cat /proc/sys/kernel/perf_event_paranoid 2>/dev/null || echo 2)" -gt 1 ] && [ "$(id -u)" = 0 ]; then
        echo -1 > /proc/sys/kernel/perf_event_paranoid || log "cannot lower perf_event_paranoid: the report will say so"
    fi
fi
cargo build --release -p payd --bin payd -p channel-wechat --bin wechat-adapter \
  -p sandbox --bin sandbox -p e2e --bin paybench
exec target/release/paybench "$@"
