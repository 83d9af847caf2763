#!/usr/bin/env python3
"""The fault suite's report lines as the markdown tables of docs/FAULTS.md.

    python3 scripts/fault-tables.py target/fault-reports.jsonl > /tmp/tables.md

Input: one `FAULT_REPORT {json}` line per run (scripts/faults.sh collects them). Output: a
summary per test (runs, clean runs, sums of tries, faults, violations and seconds), then one row
per run with the checker's counts and, under "measured", every count the test added itself.
When a test ran more than once in the file (a re-run), the last FAULT_REPEAT runs of it are
the ones shown, so the table is always ten consecutive runs of the code that last ran.
"""
import json
import sys
from collections import defaultdict

# The checker's own counts (tests/src/invariants.rs) and the client log's; the rest of a run's
# counts are the test's measurements.
CHECKER = {
    "orders", "attempts", "sandbox_trades", "sandbox_successes", "prepay_requests",
    "duplicates", "refunds", "transitions", "paid_minor", "acknowledged", "events",
    "sink_deliveries", "sink_refused", "calls", "errors",
}


def main(path):
    runs = defaultdict(list)
    for line in open(path, encoding="utf-8"):
        line = line.strip().removeprefix("FAULT_REPORT").strip()
        if line:
            r = json.loads(line)
            runs[r["id"]].append(r)
    ids = sorted(runs, key=lambda k: int(k[1:]))
    # A re-run starts again at run 0: keep the last sequence that starts at 0.
    for k in ids:
        rs = runs[k]
        starts = [i for i, r in enumerate(rs) if r["run"] == 0]
        runs[k] = rs[starts[-1]:] if starts else rs

    print("| id | runs | clean | tries Σ | faults Σ | violations Σ | test s Σ |")
    print("|---|---|---|---|---|---|---|")
    for k in ids:
        rs = runs[k]
        print(f"| {k} | {len(rs)} | {sum(r['violations'] == 0 for r in rs)} "
              f"| {sum(r['tries'] for r in rs)} | {sum(r['faults_injected'] for r in rs)} "
              f"| {sum(r['violations'] for r in rs)} | {round(sum(r.get('secs', 0) for r in rs))} |")
    print()
    print("| id | run | s | tries | faults | violations | orders | sandbox successes | duplicates "
          "| refunds | events | client errors | measured |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for k in ids:
        for r in runs[k]:
            c = r.get("counts", {})
            errors = c.get("errors", 0)
            if isinstance(errors, dict):
                errors = sum(errors.values())
            measured = ", ".join(f"{m} {c[m]}" for m in sorted(c) if m not in CHECKER)
            print(f"| {k} | {r['run']} | {round(r.get('secs', 0))} | {r['tries']} "
                  f"| {r['faults_injected']} | {r['violations']} | {c.get('orders', '')} "
                  f"| {c.get('sandbox_successes', '')} | {c.get('duplicates', '')} "
                  f"| {c.get('refunds', '')} | {c.get('events', '')} | {errors} | {measured} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "target/fault-reports.jsonl")
