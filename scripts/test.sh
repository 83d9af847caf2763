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

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
log "building binaries for the cross-process tests"
cargo build --workspace --bins --quiet
log "running tests"
cargo nextest run --workspace --no-fail-fast "$@"
