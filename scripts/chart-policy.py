#!/usr/bin/env python3
"""Policy checks on the chart's rendered manifests (scripts/chart-check.sh runs it):
- no Secret is rendered and no secret value appears: the operator's Secrets are referenced by
  name only. Checked against the shapes of secrets (URLs with credentials, PEM blocks) and the
  canary values the test fixtures use; env entries whose names look secret must come from a
  secretKeyRef or a mounted file (NAME_FILE); no secret-looking key in a ConfigMap. (The values
  schema refuses secret settings in values; chart-check.sh checks that too.)
- every Deployment's containers have readiness and liveness probes and cpu/memory requests;
- the ServiceMonitor and PrometheusRule have the shape the Prometheus Operator needs (there is no
  built-in schema for them), and the PrometheusRule holds exactly files/alerts.yml.
Usage: chart-policy.py RENDERED.yaml ALERTS.yml"""
import re
import sys

import yaml

rendered_path, alerts_path = sys.argv[1:3]
text = open(rendered_path).read()
docs = [d for d in yaml.safe_load_all(text) if d]
bad = []

# Canaries: what the operator's Secrets would hold. None of it may appear in the output.
CANARIES = [
    "postgres://payd:s3cr3t-canary@db.internal:5432/payments",
    "redis://:s3cr3t-canary@redis.internal:6379/0",
    "wechat:tok-canary-1,alipay:tok-canary-2,unionpay:tok-canary-3",
    "-----BEGIN PRIVATE KEY-----",
    "s3cr3t-canary",
]
for c in CANARIES:
    if c in text:
        bad.append(f"a secret value appears in the rendered output: {c!r}")
if re.search(r"\w+://[^/\s:@]+:[^/\s@]+@", text):
    bad.append("a URL with credentials appears in the rendered output")
if "BEGIN" in text and re.search(r"-----BEGIN [A-Z ]*(PRIVATE KEY|CERTIFICATE)-----", text):
    bad.append("a PEM block appears in the rendered output")

SECRETISH = re.compile(r"(URL|TOKEN|TOKENS|KEY|SECRET|PASSWORD)$")
deployments = 0
for d in docs:
    kind, name = d.get("kind"), d.get("metadata", {}).get("name")
    where = f"{kind}/{name}"
    if kind == "Secret":
        bad.append(f"{where}: the chart must not render Secrets (reference existing ones)")
    if kind == "ConfigMap":
        for k, v in (d.get("data") or {}).items():
            if SECRETISH.search(k) and not k.endswith("_FILE"):
                bad.append(f"{where}: {k} looks secret and is in a ConfigMap")
    pod = None
    if kind in ("Deployment", "Job"):
        pod = d["spec"]["template"]["spec"]
    if pod:
        for c in pod.get("containers", []):
            for e in c.get("env", []) or []:
                if SECRETISH.search(e["name"]) and "value" in e:
                    bad.append(f"{where}/{c['name']}: env {e['name']} has a literal value (use a Secret)")
            if kind == "Deployment":
                for p in ("readinessProbe", "livenessProbe"):
                    if p not in c:
                        bad.append(f"{where}/{c['name']}: no {p}")
            req = (c.get("resources") or {}).get("requests") or {}
            for r in ("cpu", "memory"):
                if r not in req:
                    bad.append(f"{where}/{c['name']}: no {r} request")
    if kind == "Deployment":
        deployments += 1
    if kind == "ServiceMonitor":
        eps = d.get("spec", {}).get("endpoints") or []
        if not eps or not all("port" in e for e in eps) or "selector" not in d["spec"]:
            bad.append(f"{where}: needs spec.selector and spec.endpoints[].port")
    if kind == "PrometheusRule":
        want = yaml.safe_load(open(alerts_path))["groups"]
        if d.get("spec", {}).get("groups") != want:
            bad.append(f"{where}: its groups differ from {alerts_path}")
        else:
            for g in want:
                for r in g["rules"]:
                    if not {"severity"} <= set(r.get("labels", {})) or not {"summary", "runbook_url"} <= set(r.get("annotations", {})):
                        bad.append(f"{where}: alert {r.get('alert')} lacks severity, summary or runbook_url")
if deployments == 0:
    bad.append("no Deployment rendered")
for b in bad:
    print(b, file=sys.stderr)
if bad:
    sys.exit(1)
print(f"{rendered_path}: {len(docs)} objects, {deployments} Deployments: no secret values, probes and requests everywhere")
