#!/usr/bin/env bash
# The fault suite at full size, repeated: F1–F11 with real processes (release build), each test
# FAULT_REPEAT times in a row, M1–M9 checked after every run; one FAULT_REPORT line per run goes
# to the report file (docs/FAULTS.md explains the counts).
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
python3 - "$FAULT_REPORT_FILE" <<'PY'
import json, sys, collections
runs = collections.defaultdict(lambda: [0, 0, 0, 0])  # runs, clean, tries, faults
for line in open(sys.argv[1], encoding="utf-8"):
    line = line.strip().removeprefix("FAULT_REPORT").strip()
    if not line:
        continue
    r = json.loads(line)
    t = runs[r["id"]]
    t[0] += 1
    t[1] += r["violations"] == 0
    t[2] += r["tries"]
    t[3] += r["faults_injected"]
print("test  runs  clean  tries  faults")
for k in sorted(runs, key=lambda k: int(k[1:])):
    print(f"{k:5} {runs[k][0]:5} {runs[k][1]:6} {runs[k][2]:6} {runs[k][3]:7}")
PY
exit "$status"
