#!/usr/bin/env bash
# Prepares a local OpenLDAP server (Debian's slapd) for kv-rotator's integration tests.
# Idempotent; run as root.
#
#   1. installs slapd and ldap-utils if they are missing, telling debconf to configure
#      nothing (no system directory is made; this script writes its own);
#   2. makes a test CA and a server certificate (scripts/lib/test-tls.sh);
#   3. writes an instance of its own in $DIR (slapd.conf, an MDB database): suffix
#      $SUFFIX, root DN cn=admin,$SUFFIX, ACLs that let an entry change its own
#      userPassword (`by self write`), let the service account cn=kv-rotator,ou=services
#      change the userPassword of entries under ou=people, and let anyone bind
#      (`by anonymous auth`); the ppolicy overlay, with no default policy and a policy
#      cn=strict,ou=policies (at least 20 characters, the last 3 passwords refused) that
#      test entries may name;
#   4. starts slapd directly (there is no systemd) on ldap://127.0.0.1:$PORT (StartTLS;
#      plain binds are accepted too, for the loopback-only plaintext test) and
#      ldaps://127.0.0.1:$TLS_PORT, or restarts it when its configuration or certificate
#      changed; a slapd already running with the same configuration is left alone;
#   5. adds the base entries (ou=people, ou=services, the service account) if missing and
#      sets the service account's password;
#   6. proves a verified LDAPS bind and a StartTLS bind work.
#
# The passwords are test fixtures, known to the tests through the same variables and
# defaults. The test CA is world-readable at $TLS_DIR/ca.pem (tests read KVR_TEST_LDAP_CA,
# defaulting to that path).
#
# Environment (and defaults):
#   KVR_TEST_LDAP_DIR                 /var/lib/kvr-test-slapd
#   KVR_TEST_LDAP_TLS_DIR             /var/lib/kvr-test-slapd-tls
#   KVR_TEST_LDAP_PORT                3389 (ldap://, StartTLS)
#   KVR_TEST_LDAPS_PORT               3636 (ldaps://)
#   KVR_TEST_LDAP_SUFFIX              dc=kvr,dc=test
#   KVR_TEST_LDAP_ADMIN_PASSWORD      kvr-test-ldap-admin (root DN cn=admin,<suffix>)
#   KVR_TEST_LDAP_SERVICE_PASSWORD    kvr-test-ldap-service (cn=kv-rotator,ou=services,<suffix>)
set -euo pipefail

DIR="${KVR_TEST_LDAP_DIR:-/var/lib/kvr-test-slapd}"
TLS_DIR="${KVR_TEST_LDAP_TLS_DIR:-/var/lib/kvr-test-slapd-tls}"
PORT="${KVR_TEST_LDAP_PORT:-3389}"
TLS_PORT="${KVR_TEST_LDAPS_PORT:-3636}"
SUFFIX="${KVR_TEST_LDAP_SUFFIX:-dc=kvr,dc=test}"
ADMIN_PASSWORD="${KVR_TEST_LDAP_ADMIN_PASSWORD:-kvr-test-ldap-admin}"
SERVICE_PASSWORD="${KVR_TEST_LDAP_SERVICE_PASSWORD:-kvr-test-ldap-service}"
ADMIN_DN="cn=admin,$SUFFIX"
SERVICE_DN="cn=kv-rotator,ou=services,$SUFFIX"
CONF="$DIR/slapd.conf"
PIDFILE="$DIR/run/slapd.pid"
URLS="ldap://127.0.0.1:$PORT/ ldaps://127.0.0.1:$TLS_PORT/"

log() { printf 'setup-slapd: %s\n' "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

# 1. Packages.
if ! command -v slapd >/dev/null 2>&1 && [ ! -x /usr/sbin/slapd ] || ! command -v ldapwhoami >/dev/null 2>&1; then
    log "installing slapd and ldap-utils"
    echo "slapd slapd/no_configuration boolean true" | debconf-set-selections
    apt-get update -qq >/dev/null
    # The package's maintainer scripts must not start a system slapd (there is no
    # configuration for it, and this script runs its own).
    policy_made=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 0755 /usr/sbin/policy-rc.d
        policy_made=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slapd ldap-utils >/dev/null ||
        { [ "$policy_made" = 0 ] || rm -f /usr/sbin/policy-rc.d; die "apt-get install slapd ldap-utils"; }
    [ "$policy_made" = 0 ] || rm -f /usr/sbin/policy-rc.d
fi
SLAPD=/usr/sbin/slapd
id openldap >/dev/null 2>&1 || die "the openldap user is missing (the slapd package makes it)"

# 2. TLS.
# shellcheck source=scripts/lib/test-tls.sh
. "$(dirname "$0")/lib/test-tls.sh"
make_test_certs "$TLS_DIR" openldap
if [ "$TEST_CERTS_MADE" = 1 ]; then log "made a test CA and server certificate in $TLS_DIR"; fi

# 3. Configuration. The root DN's password is stored hashed; the hash (salted, so
# different at every run) is kept while the password stays the same, so an unchanged
# configuration does not restart the server.
mkdir -p "$DIR/data" "$DIR/run"
chown openldap:openldap "$DIR/data" "$DIR/run"
chmod 0700 "$DIR/data"
admin_mark="$(printf '%s' "$ADMIN_PASSWORD" | sha256sum | cut -d' ' -f1)"
rootpw=""
if [ -f "$CONF" ] && grep -qxF "# admin-password-sha256 $admin_mark" "$CONF"; then
    rootpw="$(sed -n 's/^rootpw[[:space:]]\{1,\}//p' "$CONF")"
fi
if [ -z "$rootpw" ]; then
    rootpw="$(slappasswd -h '{SSHA}' -s "$ADMIN_PASSWORD")"
fi
new_conf="$(mktemp)"
trap 'rm -f "$new_conf"' EXIT
cat >"$new_conf" <<EOF
# Written by kv-rotator's scripts/setup-slapd.sh: a test directory, not a production one.
# admin-password-sha256 $admin_mark
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/nis.schema
include /etc/ldap/schema/inetorgperson.schema

pidfile $PIDFILE
argsfile $DIR/run/slapd.args
modulepath /usr/lib/ldap
moduleload back_mdb
moduleload ppolicy

TLSCACertificateFile $TLS_DIR/ca.pem
TLSCertificateFile $TLS_DIR/server.pem
TLSCertificateKeyFile $TLS_DIR/server.key
TLSProtocolMin 3.3

password-hash {SSHA}

database mdb
maxsize 104857600
suffix "$SUFFIX"
rootdn "$ADMIN_DN"
rootpw $rootpw
directory $DIR/data
index objectClass eq
index uid eq
# No default policy: an entry gets one by naming it (pwdPolicySubentry), as the tests of a
# refused password do with cn=strict,ou=policies.
overlay ppolicy

access to dn.subtree="ou=people,$SUFFIX" attrs=userPassword
    by self write
    by dn.exact="$SERVICE_DN" write
    by anonymous auth
    by * none
access to attrs=userPassword
    by self write
    by anonymous auth
    by * none
access to dn.subtree="ou=people,$SUFFIX"
    by self read
    by dn.exact="$SERVICE_DN" read
    by * none
access to *
    by self read
    by users read
    by * none
EOF
conf_changed=0
if [ ! -f "$CONF" ] || ! cmp -s "$new_conf" "$CONF"; then
    install -m 0640 -o root -g openldap "$new_conf" "$CONF"
    conf_changed=1
fi
"$SLAPD" -Tt -u -f "$CONF" >/dev/null 2>&1 || die "slapd refuses $CONF: $("$SLAPD" -Tt -u -f "$CONF" 2>&1 | tail -n 3)"

# 4. Running with this configuration?
running_pid() {
    local pid
    pid="$(cat "$PIDFILE" 2>/dev/null || true)"
    if [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "-f $CONF"; then
        echo "$pid"
    fi
}
answers() { ldapsearch -x -LLL -H "ldap://127.0.0.1:$PORT" -s base -b "" namingContexts >/dev/null 2>&1; }
pid="$(running_pid)"
if [ -n "$pid" ] && { [ "$conf_changed" = 1 ] || [ "$TEST_CERTS_MADE" = 1 ]; }; then
    log "configuration or certificate changed: stopping slapd (pid $pid)"
    kill "$pid"
    for _ in $(seq 1 100); do
        [ -d "/proc/$pid" ] || break
        sleep 0.1
    done
    [ ! -d "/proc/$pid" ] || die "slapd (pid $pid) did not stop"
    pid=""
fi
if [ -z "$pid" ]; then
    if answers; then
        die "something else answers LDAP on 127.0.0.1:$PORT; set KVR_TEST_LDAP_PORT and KVR_TEST_LDAPS_PORT"
    fi
    log "starting slapd on $URLS"
    "$SLAPD" -h "$URLS" -f "$CONF" -u openldap -g openldap ||
        die "slapd did not start (try: $SLAPD -d 1 -h '$URLS' -f $CONF -u openldap -g openldap)"
    for _ in $(seq 1 50); do
        answers && break
        sleep 0.1
    done
fi
answers || die "slapd does not answer on ldap://127.0.0.1:$PORT"

# 5. Base entries, as the root DN.
root_ldap() { "$@" -x -H "ldap://127.0.0.1:$PORT" -ZZ -D "$ADMIN_DN" -w "$ADMIN_PASSWORD"; }
exists() { root_ldap ldapsearch -LLL -s base -b "$1" dn >/dev/null 2>&1; }
add_if_missing() {
    local dn="$1" ldif="$2"
    if ! exists "$dn"; then
        printf 'dn: %s\n%s\n' "$dn" "$ldif" | root_ldap ldapadd >/dev/null || die "could not add $dn"
        log "added $dn"
    fi
}
export LDAPTLS_CACERT="$TLS_DIR/ca.pem" LDAPTLS_REQCERT=demand
dc="$(printf '%s' "$SUFFIX" | sed -n 's/^dc=\([^,]*\).*/\1/p')"
add_if_missing "$SUFFIX" "$(printf 'objectClass: dcObject\nobjectClass: organization\ndc: %s\no: kv-rotator tests' "$dc")"
add_if_missing "ou=people,$SUFFIX" "$(printf 'objectClass: organizationalUnit\nou: people')"
add_if_missing "ou=services,$SUFFIX" "$(printf 'objectClass: organizationalUnit\nou: services')"
add_if_missing "ou=policies,$SUFFIX" "$(printf 'objectClass: organizationalUnit\nou: policies')"
add_if_missing "cn=strict,ou=policies,$SUFFIX" "$(printf 'objectClass: applicationProcess\nobjectClass: pwdPolicy\ncn: strict\npwdAttribute: userPassword\npwdMinLength: 20\npwdCheckQuality: 2\npwdInHistory: 3')"
add_if_missing "$SERVICE_DN" "$(printf 'objectClass: applicationProcess\nobjectClass: simpleSecurityObject\ncn: kv-rotator\nuserPassword: %s' "$(slappasswd -h '{SSHA}' -s "$SERVICE_PASSWORD")")"
if ! ldapwhoami -x -H "ldap://127.0.0.1:$PORT" -ZZ -D "$SERVICE_DN" -w "$SERVICE_PASSWORD" >/dev/null 2>&1; then
    root_ldap ldappasswd -s "$SERVICE_PASSWORD" "$SERVICE_DN" >/dev/null || die "could not set the password of $SERVICE_DN"
    log "set the password of $SERVICE_DN"
fi

# 6. Verified TLS both ways.
ldapwhoami -x -H "ldaps://127.0.0.1:$TLS_PORT" -D "$ADMIN_DN" -w "$ADMIN_PASSWORD" >/dev/null ||
    die "no verified LDAPS bind on 127.0.0.1:$TLS_PORT with $TLS_DIR/ca.pem"
ldapwhoami -x -H "ldap://127.0.0.1:$PORT" -ZZ -D "$SERVICE_DN" -w "$SERVICE_PASSWORD" >/dev/null ||
    die "no verified StartTLS bind on 127.0.0.1:$PORT with $TLS_DIR/ca.pem"
log "ok: LDAPS on 127.0.0.1:$TLS_PORT and StartTLS on 127.0.0.1:$PORT (suffix $SUFFIX, CA $TLS_DIR/ca.pem)"
