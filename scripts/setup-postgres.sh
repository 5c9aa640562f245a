#!/usr/bin/env bash
# Prepares the local PostgreSQL for kv-rotator's integration tests. Idempotent; run as root.
#
# The test machines' pg_hba.conf trusts every connection, so any password logs in and
# "the old password is rejected" could never be tested. This script makes password
# checks real for test roles only:
#   1. starts the cluster if it is down;
#   2. creates the NOLOGIN group role kvr_scram (tests put their roles in it);
#   3. puts, once, at the top of pg_hba.conf (first match wins; a block found lower down
#      is moved up):
#        host all +kvr_scram 127.0.0.1/32 scram-sha-256
#        host all +kvr_scram ::1/128      scram-sha-256
#      (and the same for one fixed test role name, below) so members of kvr_scram must
#      present their password; everyone else (postgres included) keeps the existing rules;
#   4. sets password_encryption = 'scram-sha-256' (ALTER SYSTEM) if it is not already;
#   5. reloads the configuration and proves it worked: a probe member role logs in
#      with its password and is refused with a wrong one;
#   6. turns on TLS with a certificate from a test CA made here (step 6 below) and proves
#      a verify-full connection works.
#
# Environment: PGHOST_TEST (default 127.0.0.1) and PGPORT (default 5432) for the probe;
# KVR_TEST_PG_TLS_DIR (default /var/lib/postgresql/kvr-test-tls) for the certificates.
set -euo pipefail

MARK_BEGIN="# >>> kv-rotator test roles: password auth for members of kvr_scram (scripts/setup-postgres.sh) >>>"
MARK_END="# <<< kv-rotator test roles <<<"
HOST="${PGHOST_TEST:-127.0.0.1}"
PORT="${PGPORT:-5432}"

log() { printf 'setup-postgres: %s\n' "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

# Superuser psql over the Unix socket: as the postgres OS user when we are root (works
# with peer or trust), else as the postgres role (trust).
psql_admin() {
    if [ "$(id -u)" = 0 ] && id postgres >/dev/null 2>&1; then
        (cd / && runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -d postgres -tA "$@")
    else
        psql -X -q -v ON_ERROR_STOP=1 -U postgres -d postgres -tA "$@"
    fi
}

# 1. Running?
if ! pg_isready -q -h "$HOST" -p "$PORT"; then
    version="$(ls /etc/postgresql | sort -V | tail -n 1)"
    [ -n "$version" ] || die "no cluster under /etc/postgresql"
    log "PostgreSQL is down; starting cluster $version/main"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start
    for _ in $(seq 1 30); do
        pg_isready -q -h "$HOST" -p "$PORT" && break
        sleep 1
    done
    pg_isready -q -h "$HOST" -p "$PORT" || die "PostgreSQL did not come up on $HOST:$PORT"
fi

# 2. Group role.
psql_admin <<'SQL'
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'kvr_scram') THEN
        CREATE ROLE kvr_scram NOLOGIN;
    END IF;
END
$$;
SQL

# 3. pg_hba.conf block, at the top, once. `kvr_e2e_ghost_clone` is a role a test drops
# while a secret still names it: like a server that checks every role, it must meet a
# password check (a fake SCRAM exchange) rather than trust when it does not exist.
hba="$(psql_admin -c 'SHOW hba_file')"
[ -f "$hba" ] || die "hba_file '$hba' is not a file"
block() {
    printf '%s\n' "$MARK_BEGIN"
    printf '%s\n' "host    all    +kvr_scram             127.0.0.1/32    scram-sha-256"
    printf '%s\n' "host    all    +kvr_scram             ::1/128         scram-sha-256"
    printf '%s\n' "host    all    kvr_e2e_ghost_clone    127.0.0.1/32    scram-sha-256"
    printf '%s\n' "host    all    kvr_e2e_ghost_clone    ::1/128         scram-sha-256"
    printf '%s\n' "$MARK_END"
}
if [ "$(head -n "$(block | wc -l)" "$hba")" = "$(block)" ]; then
    log "pg_hba.conf already starts with the kvr_scram block ($hba)"
else
    tmp="$(mktemp "$hba.kvr.XXXXXX")"
    {
        block
        # An earlier block (this one moved down by hand, or an older one) is taken out,
        # not duplicated.
        awk -v b="# >>> kv-rotator test roles" -v e="$MARK_END" \
            'index($0, b) == 1 { skip = 1 } !skip { print } $0 == e { skip = 0 }' "$hba"
    } >"$tmp"
    # Copy over rather than rename: keeps the file's owner, mode and inode.
    cat "$tmp" >"$hba"
    rm -f "$tmp"
    log "put the kvr_scram block at the top of $hba"
fi

# 4. Verifiers stored as SCRAM (an md5 verifier cannot answer a scram-sha-256 line).
if [ "$(psql_admin -c 'SHOW password_encryption')" != "scram-sha-256" ]; then
    psql_admin -c "ALTER SYSTEM SET password_encryption = 'scram-sha-256'"
    log "set password_encryption = 'scram-sha-256'"
fi

# 5. Reload and check.
psql_admin -c 'SELECT pg_reload_conf()' >/dev/null
bad_rules="$(psql_admin -c 'SELECT count(*) FROM pg_hba_file_rules WHERE error IS NOT NULL')"
[ "$bad_rules" = 0 ] || die "pg_hba.conf has $bad_rules invalid line(s): SELECT * FROM pg_hba_file_rules WHERE error IS NOT NULL"

probe="kvr_setup_probe"
probe_password="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
psql_admin <<SQL
SET client_min_messages = warning;
DROP ROLE IF EXISTS $probe;
CREATE ROLE $probe LOGIN IN ROLE kvr_scram PASSWORD '$probe_password';
SQL
cleanup() { psql_admin -c "DROP ROLE IF EXISTS $probe" >/dev/null 2>&1 || true; }
trap cleanup EXIT

try_login() { PGPASSWORD="$1" psql -X -w -q -h "$HOST" -p "$PORT" -U "$probe" -d postgres -tAc 'SELECT 1' >/dev/null 2>&1; }

# The reload is a signal: give the postmaster a moment to re-read the files.
ok=""
for _ in $(seq 1 50); do
    if ! try_login "wrong-$probe_password" && try_login "$probe_password"; then
        ok=1
        break
    fi
    sleep 0.1
done
[ -n "$ok" ] || die "a kvr_scram member still logs in with a wrong password (or not with the right one) on $HOST:$PORT; check $hba"
log "ok: members of kvr_scram need their password on $HOST:$PORT"

# 6. TLS: the server gets a certificate from a CA made here, so tests can connect with
#    sslmode = verify-full (and prove that a wrong CA is refused). Kept for 365 days and
#    made again when it has less than a week left. The CA certificate is world-readable
#    at $TLS_DIR/ca.pem (tests read KVR_TEST_PG_CA, defaulting to that path).
TLS_DIR="${KVR_TEST_PG_TLS_DIR:-/var/lib/postgresql/kvr-test-tls}"
as_postgres() {
    if [ "$(id -u)" = 0 ] && id postgres >/dev/null 2>&1; then runuser -u postgres -- "$@"; else "$@"; fi
}
# shellcheck source=scripts/lib/test-tls.sh
. "$(dirname "$0")/lib/test-tls.sh"
make_test_certs "$TLS_DIR" postgres
if [ "$TEST_CERTS_MADE" = 1 ]; then
    log "made a test CA and server certificate in $TLS_DIR"
fi
if [ "$(psql_admin -c 'SHOW ssl')" != on ] || [ "$(psql_admin -c 'SHOW ssl_cert_file')" != "$TLS_DIR/server.pem" ]; then
    psql_admin -c "ALTER SYSTEM SET ssl_cert_file = '$TLS_DIR/server.pem'"
    psql_admin -c "ALTER SYSTEM SET ssl_key_file = '$TLS_DIR/server.key'"
    psql_admin -c "ALTER SYSTEM SET ssl = on"
    log "turned on ssl with $TLS_DIR/server.pem"
fi
psql_admin -c 'SELECT pg_reload_conf()' >/dev/null
ok=""
for _ in $(seq 1 50); do
    if as_postgres psql -X -w -q "host=$HOST port=$PORT dbname=postgres user=postgres sslmode=verify-full sslrootcert=$TLS_DIR/ca.pem" \
        -tAc 'SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()' 2>/dev/null | grep -qx t; then
        ok=1
        break
    fi
    sleep 0.1
done
[ -n "$ok" ] || die "no verify-full TLS connection to $HOST:$PORT with $TLS_DIR/ca.pem (see the server log)"
log "ok: TLS with verify-full on $HOST:$PORT (CA $TLS_DIR/ca.pem)"
