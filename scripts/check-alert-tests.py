#!/usr/bin/env python3
"""Checks that every alert in the rule file has a promtool test case where it fires and one where
it stays quiet, and a section in docs/RUNBOOK.md. Usage: check-alert-tests.py RULES TESTS RUNBOOK"""
import re
import sys

import yaml

rules_path, tests_path, runbook_path = sys.argv[1:4]
alerts = [r["alert"] for g in yaml.safe_load(open(rules_path))["groups"] for r in g["rules"] if "alert" in r]
fires, quiet = set(), set()
for t in yaml.safe_load(open(tests_path))["tests"]:
    for a in t.get("alert_rule_test", []):
        (fires if a.get("exp_alerts") else quiet).add(a["alertname"])
runbook = open(runbook_path).read()
sections = {m.lower() for m in re.findall(r"^## (\w+)", runbook, re.M)}
bad = []
for a in alerts:
    if a not in fires:
        bad.append(f"{a}: no test case where it fires")
    if a not in quiet:
        bad.append(f"{a}: no test case where it stays quiet")
    if a.lower() not in sections:
        bad.append(f"{a}: no '## {a}' section in {runbook_path}")
for b in bad:
    print(b, file=sys.stderr)
if bad:
    sys.exit(1)
print(f"{len(alerts)} alerts: each fires and stays quiet in a test and has a runbook section")
