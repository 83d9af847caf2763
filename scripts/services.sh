#!/usr/bin/env bash
# Sourced by up.sh and test.sh: makes sure the tools and local services the platform needs are
# installed and running on a Debian machine of the project's kind. Idempotent; needs root only
# for what is missing.
set -euo pipefail

log() { printf '==> %s\n' "$*" >&2; }

apt_install() {
    if [ "$(id -u)" != 0 ]; then
        log "missing $*; install it (as root: apt-get install $*)"
        return 1
    fi
    if [ -z "${APT_UPDATED:-}" ]; then
        apt-get update -qq
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

ensure_tools() {
    command -v redis-server >/dev/null || { log "installing redis-server"; apt_install redis-server; }
    command -v psql >/dev/null || { log "installing PostgreSQL 15"; apt_install postgresql-15 postgresql-client-15 libpq-dev; }
    command -v pkg-config >/dev/null || apt_install pkg-config
}

ensure_postgres() {
    if pg_isready -h 127.0.0.1 -p 5432 -q; then return 0; fi
    log "starting PostgreSQL"
    local ver
    ver=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1 || true)
    if [ -z "$ver" ]; then
        ver=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
        pg_createcluster "$ver" main >/dev/null
    fi
    pg_ctlcluster --skip-systemctl-redirect "$ver" main start
    for _ in $(seq 1 50); do
        pg_isready -h 127.0.0.1 -p 5432 -q && return 0
        sleep 0.2
    done
    log "PostgreSQL did not come up"; return 1
}

ensure_redis() {
    if redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then return 0; fi
    log "starting Redis"
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/ci.log
    for _ in $(seq 1 50); do
        redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    log "Redis did not come up"; return 1
}

# Tests connect as `postgres` over TCP (trust auth on this kind of machine).
ensure_services() {
    ensure_tools
    ensure_postgres
    ensure_redis
}
