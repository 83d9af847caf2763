#!/usr/bin/env bash
# Brings the platform up on this machine and walks an order through it:
# Postgres and Redis (started if down), the `payments` database, payd with migrations applied,
# then a CreateOrder → GetOrder → ListOrders → CloseOrder round with payctl.
# Processes keep running in the background; `bash scripts/down.sh` stops them.
# Usage: bash scripts/up.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
ensure_services

RUN=.run
mkdir -p "$RUN"
bash scripts/down.sh >/dev/null 2>&1 || true

psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'payments'" | grep -q 1 \
    || psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE payments"

log "building"
cargo build --workspace --bins --quiet
BIN=target/debug

export PAYD_DATABASE_URL=${PAYD_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/payments}
export PAYD_LISTEN=${PAYD_LISTEN:-127.0.0.1:50051}
export PAYD_METRICS_LISTEN=${PAYD_METRICS_LISTEN:-127.0.0.1:9464}

log "applying migrations"
"$BIN/payd" migrate 2>>"$RUN/payd.log"

log "starting payd on $PAYD_LISTEN (logs: $RUN/payd.log, metrics: http://$PAYD_METRICS_LISTEN/metrics)"
nohup "$BIN/payd" serve >>"$RUN/payd.log" 2>&1 &
echo $! >"$RUN/payd.pid"
for _ in $(seq 1 100); do
    curl -fs "http://$PAYD_METRICS_LISTEN/healthz" >/dev/null 2>&1 && break
    sleep 0.1
done
curl -fs "http://$PAYD_METRICS_LISTEN/healthz" >/dev/null || { log "payd did not start; see $RUN/payd.log"; exit 1; }

export PAYCTL_ENDPOINT="http://$PAYD_LISTEN" PAYCTL_APP_ID=demo-shop
NO="DEMO-$(date +%s)"
log "CreateOrder $NO for 88.88 CNY"
"$BIN/payctl" create-order --merchant-order-no "$NO" --amount 8888 --subject "Demo coffee" --idempotency-key "demo-$NO"
log "the same CreateOrder again returns the same order"
ID=$("$BIN/payctl" create-order --merchant-order-no "$NO" --amount 8888 --subject "Demo coffee" --idempotency-key "demo-$NO" | awk '{print $2}')
echo "order id: $ID"
log "GetOrder by merchant order number"
"$BIN/payctl" get-order --merchant-order-no "$NO"
log "ListOrders (PENDING)"
"$BIN/payctl" list-orders --status PENDING --page-size 3
log "CloseOrder"
"$BIN/payctl" close-order --order-id "$ID"
log "platform is up: payd $PAYD_LISTEN; stop it with: bash scripts/down.sh"
