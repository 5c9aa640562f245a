# Sourced by the scripts/setup-*.sh scripts: a test CA and a server certificate for one
# local service, so its tests can connect with full verification (and prove that a wrong
# CA is refused).
#
#   make_test_certs DIR OWNER
#
# Makes, in DIR, ca.pem (world-readable: tests read it), server.pem and server.key
# (mode 0600, owned by OWNER, the service's user) for localhost, 127.0.0.1 and ::1.
# Each service gets its own CA. Kept for 365 days and made again when the certificate
# has less than a week left; sets TEST_CERTS_MADE to 1 when it made new files, else 0.
make_test_certs() {
    local dir="$1" owner="$2" work
    TEST_CERTS_MADE=0
    if [ -f "$dir/server.pem" ] && [ -f "$dir/server.key" ] && [ -f "$dir/ca.pem" ] &&
        openssl x509 -checkend 604800 -noout -in "$dir/server.pem" >/dev/null 2>&1; then
        return 0
    fi
    mkdir -p "$dir"
    chmod 0755 "$dir"
    work="$(mktemp -d)"
    openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
        -subj "/CN=kv-rotator test CA ($(basename "$dir"))" -keyout "$work/ca.key" -out "$work/ca.pem" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -subj "/CN=localhost" -keyout "$work/server.key" -out "$work/server.csr" 2>/dev/null
    printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1" "extendedKeyUsage=serverAuth" \
        "basicConstraints=critical,CA:FALSE" >"$work/ext"
    openssl x509 -req -in "$work/server.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -CAcreateserial \
        -days 365 -extfile "$work/ext" -out "$work/server.pem" 2>/dev/null
    install -m 0644 "$work/ca.pem" "$dir/ca.pem"
    install -m 0644 "$work/server.pem" "$dir/server.pem"
    install -m 0600 "$work/server.key" "$dir/server.key"
    chown "$owner": "$dir" "$dir/server.key" "$dir/server.pem" "$dir/ca.pem" 2>/dev/null || true
    rm -rf "$work"
    TEST_CERTS_MADE=1
}
