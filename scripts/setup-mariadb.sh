#!/usr/bin/env bash
# Prepares the local MariaDB for kv-rotator's integration tests. Idempotent; run as root.
#
#   1. starts the server if it is down (as the machine starts it: start-stop-daemon);
#   2. installs the ed25519 authentication plugin (tests prove such accounts are
#      refused by name, not rotated);
#   3. turns on TLS with a certificate from a test CA made here: a marked block in
#      my.cnf names the files, and the server is restarted once to read them (MariaDB
#      cannot turn TLS on at run time when it started without it);
#   4. proves a verify-full connection works.
#
# The test CA is world-readable at $TLS_DIR/ca.pem (tests read KVR_TEST_MARIADB_CA,
# defaulting to that path). Root logs in over the Unix socket without a password, as on
# the test machines.
#
# Environment: KVR_TEST_MARIADB_TLS_DIR (default /var/lib/mysql-kvr-test-tls),
# MARIADB_CNF (default /etc/mysql/my.cnf).
set -euo pipefail

TLS_DIR="${KVR_TEST_MARIADB_TLS_DIR:-/var/lib/mysql-kvr-test-tls}"
CNF="${MARIADB_CNF:-/etc/mysql/my.cnf}"
MARK_BEGIN="# >>> kv-rotator test TLS (scripts/setup-mariadb.sh) >>>"
MARK_END="# <<< kv-rotator test TLS <<<"

log() { printf 'setup-mariadb: %s\n' "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

sql() { mariadb -uroot --batch --skip-column-names -e "$1"; }

start() {
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
    for _ in $(seq 1 60); do
        mariadb-admin -uroot ping >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    die "MariaDB did not come up (see its error log)"
}

# 1. Running?
if ! mariadb-admin -uroot ping >/dev/null 2>&1; then
    log "MariaDB is down; starting it"
    start
fi

# 2. ed25519, so tests can show such an account is refused rather than rotated.
if [ "$(sql "SELECT COUNT(*) FROM information_schema.PLUGINS WHERE PLUGIN_NAME = 'ed25519' AND PLUGIN_STATUS = 'ACTIVE'")" = 0 ]; then
    sql "INSTALL SONAME 'auth_ed25519'"
    log "installed the ed25519 authentication plugin"
fi

# 3. TLS.
# shellcheck source=scripts/lib/test-tls.sh
. "$(dirname "$0")/lib/test-tls.sh"
make_test_certs "$TLS_DIR" mysql
if [ "$TEST_CERTS_MADE" = 1 ]; then log "made a test CA and server certificate in $TLS_DIR"; fi
if ! grep -qxF "$MARK_BEGIN" "$CNF"; then
    {
        printf '\n%s\n' "$MARK_BEGIN"
        printf '%s\n' "[mysqld]" "ssl_cert = $TLS_DIR/server.pem" "ssl_key = $TLS_DIR/server.key" "ssl_ca = $TLS_DIR/ca.pem"
        printf '%s\n' "$MARK_END"
    } >>"$CNF"
    log "named the test certificate in $CNF"
fi
if [ "$(sql "SELECT @@have_ssl")" != YES ] || [ "$(sql "SELECT @@ssl_cert")" != "$TLS_DIR/server.pem" ]; then
    log "restarting MariaDB to turn TLS on"
    mariadb-admin -uroot shutdown
    for _ in $(seq 1 60); do
        pgrep -x mariadbd >/dev/null || break
        sleep 0.5
    done
    pgrep -x mariadbd >/dev/null && die "MariaDB did not stop"
    start
elif [ "$TEST_CERTS_MADE" = 1 ]; then
    sql "FLUSH SSL"
    log "reloaded the new certificate (FLUSH SSL)"
fi
[ "$(sql "SELECT @@have_ssl")" = YES ] || die "TLS is still off (see the error log for ssl_cert errors)"

# 4. A verify-full connection over TCP (a throw-away account: root may log in only
#    over the socket elsewhere).
probe=kvr_setup_probe
probe_password="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
sql "DROP USER IF EXISTS $probe@'%'; CREATE USER $probe@'%' IDENTIFIED BY '$probe_password' REQUIRE SSL"
cleanup() { sql "DROP USER IF EXISTS $probe@'%'" >/dev/null 2>&1 || true; }
trap cleanup EXIT
cipher="$(mariadb -h 127.0.0.1 -P 3306 -u "$probe" -p"$probe_password" --ssl --ssl-ca="$TLS_DIR/ca.pem" \
    --ssl-verify-server-cert --batch --skip-column-names -e "SHOW STATUS LIKE 'Ssl_cipher'" 2>/dev/null | cut -f2)"
[ -n "$cipher" ] || die "no verified TLS connection to 127.0.0.1:3306 with $TLS_DIR/ca.pem"
log "ok: TLS with a verified certificate on 127.0.0.1:3306 ($cipher, CA $TLS_DIR/ca.pem)"
