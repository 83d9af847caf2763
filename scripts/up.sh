#!/usr/bin/env bash
# Brings the whole platform up on this machine and pays one order through each channel:
#   Postgres and Redis (started if down), the `payments` database with migrations applied,
#   three sandboxes (WeChat Pay, Alipay, UnionPay stand-ins, fresh keys from `sandbox keygen`),
#   payd, and the three adapters pointed at the sandboxes by base URL and key files only;
#   then per channel: CreateOrder → Pay → the sandbox's payer pays → callback → PAID.
# Processes keep running in the background (logs and pids in .run/); `bash scripts/down.sh` stops them.
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
KEYS=$RUN/keys

start() { # name, then the command; logs to .run/NAME.log
    local name=$1; shift
    nohup "$@" >>"$RUN/$name.log" 2>&1 &
    echo $! >"$RUN/$name.pid"
}
wait_http() { # url, what
    for _ in $(seq 1 200); do curl -fs "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done
    log "$2 did not come up (see $RUN/*.log)"; exit 1
}

[ -f "$KEYS/wechat/merchant_key.pem" ] || { log "generating sandbox and merchant keys in $KEYS"; "$BIN/sandbox" keygen --dir "$KEYS"; }
# One secret per adapter for payd's ChannelEvents: each may report only for its own channel.
token() { od -An -N24 -tx1 /dev/urandom | tr -d ' \n'; }
if [ ! -f "$KEYS/adapter_tokens" ]; then
    for ch in wechat alipay unionpay; do token >"$KEYS/$ch/core_token"; done
    printf 'wechat:%s\nalipay:%s\nunionpay:%s\n' "$(cat "$KEYS/wechat/core_token")" \
        "$(cat "$KEYS/alipay/core_token")" "$(cat "$KEYS/unionpay/core_token")" >"$KEYS/adapter_tokens"
    chmod 600 "$KEYS/adapter_tokens" "$KEYS"/*/core_token
fi
# And payd's secret for each adapter's ChannelAdapter port: nobody else may prepay, close or refund.
for ch in wechat alipay unionpay; do
    [ -f "$KEYS/$ch/grpc_token" ] || { token >"$KEYS/$ch/grpc_token"; chmod 600 "$KEYS/$ch/grpc_token"; }
done

# The demo app's credentials for payment.v1 (every call is signed; README, "Calling payd").
if [ ! -f "$KEYS/app_secret" ]; then
    token >"$KEYS/app_secret"; chmod 600 "$KEYS/app_secret"
fi
cat >"$KEYS/app_credentials.toml" <<EOF
# Written by scripts/up.sh: the demo app, with every role.
[[app]]
id = "demo-shop"
secrets = ["$(cat "$KEYS/app_secret")"]
roles = ["orders.write", "orders.read", "refunds.write", "refunds.write_large", "refunds.read",
         "events.read", "events.write", "recon.admin", "audit.read"]
EOF
chmod 600 "$KEYS/app_credentials.toml"

log "starting the sandboxes: WeChat :8091, Alipay :8092, UnionPay :8093"
start sandbox-wechat   "$BIN/sandbox" wechat   --listen 127.0.0.1:8091 --keys-dir "$KEYS"
start sandbox-alipay   "$BIN/sandbox" alipay   --listen 127.0.0.1:8092 --keys-dir "$KEYS"
start sandbox-unionpay "$BIN/sandbox" unionpay --listen 127.0.0.1:8093 --keys-dir "$KEYS"
for port in 8091 8092 8093; do wait_http "http://127.0.0.1:$port/sandbox/health" "sandbox :$port"; done

export PAYD_DATABASE_URL=${PAYD_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/payments}
export PAYD_LISTEN=127.0.0.1:50051 PAYD_METRICS_LISTEN=127.0.0.1:9464
export PAYD_CHANNEL_WECHAT_ENDPOINT=http://127.0.0.1:50061
export PAYD_CHANNEL_ALIPAY_ENDPOINT=http://127.0.0.1:50062
export PAYD_CHANNEL_UNIONPAY_ENDPOINT=http://127.0.0.1:50063
export PAYD_CHANNEL_WECHAT_TOKEN_FILE=$KEYS/wechat/grpc_token
export PAYD_CHANNEL_ALIPAY_TOKEN_FILE=$KEYS/alipay/grpc_token
export PAYD_CHANNEL_UNIONPAY_TOKEN_FILE=$KEYS/unionpay/grpc_token
export PAYD_ADAPTER_TOKENS_FILE=$KEYS/adapter_tokens
export PAYD_APP_CREDENTIALS_FILE=$KEYS/app_credentials.toml
log "applying migrations"
"$BIN/payd" migrate 2>>"$RUN/payd.log"
log "starting payd on $PAYD_LISTEN (metrics http://$PAYD_METRICS_LISTEN/metrics)"
start payd "$BIN/payd" serve
wait_http "http://$PAYD_METRICS_LISTEN/healthz" payd

export ADAPTER_CORE_ENDPOINT=http://$PAYD_LISTEN
log "starting the adapters: wechat :50061, alipay :50062, unionpay :50063 (callbacks on :8081-8083)"
ADAPTER_CORE_TOKEN_FILE=$KEYS/wechat/core_token ADAPTER_GRPC_TOKEN_FILE=$KEYS/wechat/grpc_token \
WECHAT_API_BASE=http://127.0.0.1:8091 \
WECHAT_MCHID_FILE=$KEYS/wechat/mchid.txt WECHAT_APPID_FILE=$KEYS/wechat/appid.txt \
WECHAT_MERCHANT_KEY_FILE=$KEYS/wechat/merchant_key.pem WECHAT_MERCHANT_SERIAL_FILE=$KEYS/wechat/merchant_serial.txt \
WECHAT_PLATFORM_PUBLIC_KEY_FILE=$KEYS/wechat/platform_public.pem WECHAT_PLATFORM_SERIAL_FILE=$KEYS/wechat/platform_serial.txt \
WECHAT_APIV3_KEY_FILE=$KEYS/wechat/apiv3_key.txt ADAPTER_PUBLIC_CALLBACK_BASE=http://127.0.0.1:8081 \
    start wechat-adapter "$BIN/wechat-adapter"
ADAPTER_CORE_TOKEN_FILE=$KEYS/alipay/core_token ADAPTER_GRPC_TOKEN_FILE=$KEYS/alipay/grpc_token \
ALIPAY_GATEWAY=http://127.0.0.1:8092/gateway.do \
ALIPAY_APP_ID_FILE=$KEYS/alipay/app_id.txt ALIPAY_APP_PRIVATE_KEY_FILE=$KEYS/alipay/app_private_key.pem \
ALIPAY_PUBLIC_KEY_FILE=$KEYS/alipay/alipay_public_key.pem ADAPTER_PUBLIC_CALLBACK_BASE=http://127.0.0.1:8082 \
    start alipay-adapter "$BIN/alipay-adapter"
ADAPTER_CORE_TOKEN_FILE=$KEYS/unionpay/core_token ADAPTER_GRPC_TOKEN_FILE=$KEYS/unionpay/grpc_token \
UNIONPAY_GATEWAY_BASE=http://127.0.0.1:8093 \
UNIONPAY_MER_ID_FILE=$KEYS/unionpay/mer_id.txt UNIONPAY_SIGN_KEY_FILE=$KEYS/unionpay/merchant_sign_key.pem \
UNIONPAY_SIGN_CERT_ID_FILE=$KEYS/unionpay/merchant_cert_id.txt UNIONPAY_MIDDLE_CERT_FILE=$KEYS/unionpay/middle_cert.pem UNIONPAY_ROOT_CERT_FILE=$KEYS/unionpay/root_cert.pem \
UNIONPAY_ACCEPT_TEST_CN=true ADAPTER_PUBLIC_CALLBACK_BASE=http://127.0.0.1:8083 \
    start unionpay-adapter "$BIN/unionpay-adapter"
for port in 9561 9562 9563; do wait_http "http://127.0.0.1:$port/healthz" "adapter metrics :$port"; done

export PAYCTL_ENDPOINT="http://$PAYD_LISTEN" PAYCTL_APP_ID=demo-shop PAYCTL_SECRET_FILE=$KEYS/app_secret
# field PATH: reads payctl --json output on stdin, prints the dotted PATH (e.g. order.status).
field() { python3 -c 'import json,sys
v=json.load(sys.stdin)
for k in sys.argv[1].split("."): v=v[k]
print(v)' "$1"; }
pay_through() { # channel method sandbox-port
    local channel=$1 method=$2 port=$3 no id out status
    no="DEMO-$(echo "$channel" | tr a-z A-Z)-$(date +%s%N | cut -c1-13)"
    log "$channel: CreateOrder $no for 88.88 CNY"
    id=$("$BIN/payctl" --json create-order --merchant-order-no "$no" --amount 8888 --subject "Demo coffee" | field order.order_id)
    log "$channel: Pay with $method"
    out=$("$BIN/payctl" --json pay --order-id "$id" --channel "$channel" --method "$method" --client-ip 127.0.0.1)
    echo "$out"
    local trade; trade=$(echo "$out" | field attempt.out_trade_no)
    log "$channel: the sandbox's payer pays $trade"
    curl -fs -X POST -H 'content-type: application/json' -d '{"outcome":"success"}' \
        "http://127.0.0.1:$port/sandbox/trades/$trade/pay" >/dev/null
    for _ in $(seq 1 100); do
        status=$("$BIN/payctl" --json get-order --order-id "$id" | field order.status)
        case "$status" in PAID) "$BIN/payctl" get-order --order-id "$id"; log "$channel: PAID"; break;; esac
        sleep 0.2
    done
    case "$status" in PAID) ;; *) echo "$status"; log "$channel: the order did not reach PAID; see $RUN/*.log"; return 1;; esac
    log "$channel: CreateRefund of 10.00 CNY"
    "$BIN/payctl" refund --order-id "$id" --amount 1000 --refund-request-no "RF-$no" --reason "demo refund" --operator demo
    for _ in $(seq 1 100); do
        status=$("$BIN/payctl" --json get-refund --refund-request-no "RF-$no" | field refund.status)
        case "$status" in SUCCEEDED) "$BIN/payctl" get-refund --refund-request-no "RF-$no"; "$BIN/payctl" get-order --order-id "$id"; log "$channel: refunded 10.00 of 88.88 (PARTIALLY_REFUNDED)"; return 0;; esac
        sleep 0.2
    done
    echo "$status"; log "$channel: the refund did not succeed; see $RUN/*.log"; return 1
}
pay_through wechat wechat_native 8091
pay_through alipay alipay_qr 8092
pay_through unionpay unionpay_front 8093
log "the app's events (WatchEvents from the start: created, paid, refund.succeeded, partially_refunded per order)"
"$BIN/payctl" watch-events --limit 12
log "the audit log (who did what):"
"$BIN/payctl" audit --page-size 10
log "platform is up: payd $PAYD_LISTEN, adapters :50061-50063, sandboxes :8091-8093; stop with: bash scripts/down.sh"
