#!/usr/bin/env bash
# The fault suite at full size, repeated: F1–F11 with real processes (release build), each test
# FAULT_REPEAT times in a row, M1–M9 checked after every run; one FAULT_REPORT line per run goes
# to the report file, and its tables (scripts/fault-tables.py) to the same name ending .md
# (docs/FAULTS.md explains the counts).
#   bash scripts/faults.sh                 # 10 runs of each test at full size (~50 min on 2 cores)
#   bash scripts/faults.sh 2               # 2 runs of each
#   FAULT_REPORT_FILE=/tmp/f.jsonl bash scripts/faults.sh
# Extra arguments after the count go to nextest (e.g. -E 'test(f7_)').
set -euo pipefail
cd "$(dirname "$0")/.."
repeat="${1:-10}"
shift || true
export FAULT_SIZE=full FAULT_REPEAT="$repeat"
export FAULT_REPORT_FILE="${FAULT_REPORT_FILE:-target/fault-reports.jsonl}"
: > "$FAULT_REPORT_FILE"
cargo build --release --workspace --bins
status=0
cargo nextest run --release -p e2e --test faults -j 2 --no-fail-fast "$@" || status=$?
echo "fault reports: $FAULT_REPORT_FILE"
python3 scripts/fault-tables.py "$FAULT_REPORT_FILE" | tee "${FAULT_REPORT_FILE%.jsonl}.md"
exit "$status"
