#!/usr/bin/env bash
# Prepares the local RabbitMQ for kv-rotator's integration tests. Idempotent; run as root.
#
#   1. starts the server if it is down (as the machine starts it: rabbitmq-server -detached);
#   2. enables the management plugin if it is off, its HTTP API listening on
#      127.0.0.1:$MGMT_PORT only (a marked block in rabbitmq.conf for later starts, and
#      the same setting in the running node before the plugin starts);
#   3. waits for the HTTP API and proves guest (an administrator on the machine's server,
#      and only from loopback) can call it.
#
# The AMQP listener (127.0.0.1:5672) is left as it is. Tests read KVR_TEST_RABBITMQ_URL
# (default http://127.0.0.1:15672) and KVR_TEST_RABBITMQ_AMQP (default 127.0.0.1:5672).
#
# Environment: KVR_TEST_RABBITMQ_MGMT_PORT (default 15672), RABBITMQ_CONF (default
# /etc/rabbitmq/rabbitmq.conf).
set -euo pipefail

MGMT_PORT="${KVR_TEST_RABBITMQ_MGMT_PORT:-15672}"
CONF="${RABBITMQ_CONF:-/etc/rabbitmq/rabbitmq.conf}"
MARK_BEGIN="# >>> kv-rotator test management API (scripts/setup-rabbitmq.sh) >>>"
MARK_END="# <<< kv-rotator test management API <<<"

log() { printf 'setup-rabbitmq: %s\n' "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

running() { rabbitmqctl --quiet status >/dev/null 2>&1; }

# 1. Running?
if ! running; then
    log "RabbitMQ is down; starting it"
    rabbitmq-server -detached
    for _ in $(seq 1 120); do
        running && break
        sleep 0.5
    done
    running || die "RabbitMQ did not come up (see /var/log/rabbitmq)"
fi

# 2. The management plugin, on loopback only.
if ! grep -qF "$MARK_BEGIN" "$CONF" 2>/dev/null; then
    # A last line without its newline would run into the block.
    if [ -s "$CONF" ] && [ -n "$(tail -c 1 "$CONF")" ]; then echo >>"$CONF"; fi
    printf '%s\nmanagement.tcp.ip = 127.0.0.1\nmanagement.tcp.port = %s\n%s\n' \
        "$MARK_BEGIN" "$MGMT_PORT" "$MARK_END" >>"$CONF"
    log "management API bound to 127.0.0.1:$MGMT_PORT in $CONF"
fi
if ! rabbitmq-plugins --quiet is_enabled rabbitmq_management >/dev/null 2>&1; then
    # The running node read its configuration before the block above existed.
    rabbitmqctl --quiet eval \
        "application:set_env(rabbitmq_management, tcp_config, [{ip, \"127.0.0.1\"}, {port, $MGMT_PORT}])." \
        >/dev/null
    rabbitmq-plugins --quiet enable rabbitmq_management >/dev/null
    log "enabled rabbitmq_management"
fi

# 3. The HTTP API answers, and guest may use it.
url="http://127.0.0.1:$MGMT_PORT"
for _ in $(seq 1 120); do
    curl -fsS -o /dev/null "$url/api/overview" -u guest:guest 2>/dev/null && break
    sleep 0.5
done
who="$(curl -fsS -u guest:guest "$url/api/whoami" 2>/dev/null)" ||
    die "the management API at $url does not answer guest (see /var/log/rabbitmq)"
case "$who" in
*'"administrator"'*) ;;
*) die "guest is not an administrator of the management API: $who" ;;
esac
log "ok: management API at $url, guest is an administrator"
