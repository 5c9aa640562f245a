#!/usr/bin/env bash
# Prepares the local Redis for kv-rotator's integration tests. Idempotent; run as root.
#
#   1. starts the server if it is down (as the machine starts it: no persistence);
#   2. gives it a TLS port ($TLS_PORT, default 6380) with a certificate from a test CA
#      made here, at run time (CONFIG SET: the server has no configuration file to
#      write, so this step runs again after every restart);
#   3. proves a verified TLS connection works.
#
# The plain port stays as it is (the default user, without a password, is how tests and
# this script administer it). The test CA is world-readable at $TLS_DIR/ca.pem (tests
# read KVR_TEST_REDIS_CA, defaulting to that path).
#
# Environment: KVR_TEST_REDIS_TLS_DIR (default /var/lib/redis/kvr-test-tls),
# KVR_TEST_REDIS_TLS_PORT (default 6380).
set -euo pipefail

TLS_DIR="${KVR_TEST_REDIS_TLS_DIR:-/var/lib/redis/kvr-test-tls}"
TLS_PORT="${KVR_TEST_REDIS_TLS_PORT:-6380}"

log() { printf 'setup-redis: %s\n' "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

cli() { redis-cli -h 127.0.0.1 -p 6379 "$@"; }

# 1. Running?
if ! cli PING >/dev/null 2>&1; then
    log "Redis is down; starting it"
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/ci.log
    for _ in $(seq 1 50); do
        cli PING >/dev/null 2>&1 && break
        sleep 0.1
    done
    cli PING >/dev/null 2>&1 || die "Redis did not come up on 127.0.0.1:6379"
fi

# 2. TLS port.
# shellcheck source=scripts/lib/test-tls.sh
. "$(dirname "$0")/lib/test-tls.sh"
owner="$(ps -o user= -p "$(cli INFO server | tr -d '\r' | sed -n 's/^process_id://p')")"
make_test_certs "$TLS_DIR" "${owner:-root}"
if [ "$TEST_CERTS_MADE" = 1 ]; then log "made a test CA and server certificate in $TLS_DIR"; fi
current_port="$(cli CONFIG GET tls-port | sed -n 2p)"
current_cert="$(cli CONFIG GET tls-cert-file | sed -n 2p)"
if [ "$current_port" != "$TLS_PORT" ] || [ "$current_cert" != "$TLS_DIR/server.pem" ] || [ "$TEST_CERTS_MADE" = 1 ]; then
    cli CONFIG SET tls-cert-file "$TLS_DIR/server.pem" tls-key-file "$TLS_DIR/server.key" \
        tls-ca-cert-file "$TLS_DIR/ca.pem" tls-auth-clients no >/dev/null
    [ "$(cli CONFIG SET tls-port "$TLS_PORT")" = OK ] || die "could not open TLS port $TLS_PORT (see the server log)"
    log "TLS on port $TLS_PORT with $TLS_DIR/server.pem"
fi

# 3. A verified TLS connection.
[ "$(redis-cli -h 127.0.0.1 -p "$TLS_PORT" --tls --cacert "$TLS_DIR/ca.pem" PING 2>/dev/null)" = PONG ] ||
    die "no verified TLS connection to 127.0.0.1:$TLS_PORT with $TLS_DIR/ca.pem"
log "ok: TLS with a verified certificate on 127.0.0.1:$TLS_PORT (CA $TLS_DIR/ca.pem)"
