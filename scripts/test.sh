#!/usr/bin/env bash
# The test command of the README: prepares the machine's services, then runs every test,
# then the leak scanner over everything the run captured.
#   scripts/test.sh            all tests
#   scripts/test.sh -p NAME    extra arguments go to `cargo test`
set -euo pipefail
cd "$(dirname "$0")/.."

# PostgreSQL: running, and SCRAM (not trust) for the test roles in kvr_scram. MariaDB and
# Redis: running. OpenLDAP: installed, its test directory made and slapd started (LDAPS
# and StartTLS). All four: TLS with a test CA of their own. RabbitMQ: running, with its
# management HTTP API on 127.0.0.1:15672 (the RabbitMQ exec plugin's tests).
bash scripts/setup-postgres.sh
bash scripts/setup-mariadb.sh
bash scripts/setup-redis.sh
bash scripts/setup-slapd.sh
bash scripts/setup-rabbitmq.sh

# Schemathesis (PyPI), which worker/tests/admin_schemathesis.rs runs against the admin API:
# pinned with everything it pulls in, in a virtual environment of its own.
schemathesis_venv=/opt/kvr-schemathesis
if ! "$schemathesis_venv/bin/schemathesis" --version >/dev/null 2>&1 \
    || ! cmp -s scripts/schemathesis/requirements.txt "$schemathesis_venv/requirements.txt"; then
    echo "== installing schemathesis into $schemathesis_venv"
    rm -rf "$schemathesis_venv"
    python3 -m venv "$schemathesis_venv"
    "$schemathesis_venv/bin/pip" install --quiet --disable-pip-version-check -r scripts/schemathesis/requirements.txt
    cp scripts/schemathesis/requirements.txt "$schemathesis_venv/requirements.txt"
fi
export KVR_SCHEMATHESIS="$schemathesis_venv/bin/schemathesis"

# The tests cover the optional client-certificate credential, which links OpenSSL: its
# headers are needed to build them (default builds of kv-rotator need no OpenSSL).
if ! pkg-config --exists openssl 2>/dev/null; then
    echo "== installing libssl-dev and pkg-config (for the client-certificate feature's tests)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libssl-dev pkg-config >/dev/null
fi

# The status page's browser test (worker/tests/status_page.rs) drives headless Chromium
# through chromedriver; it saves target/status-page.png, which CI keeps.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    echo "== installing chromium and chromium-driver (for the status page's browser test)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi

# The leak scanner (docs/security.md, "Leak scanner"): the suite runs as a `leak-ledger`
# build, which records every password and verifier it generates or handles in a ledger and
# captures what leaves kv-rotator (logs at every level, a child's output, argv and
# environment, vault metadata, metrics, alerts) into a scan directory, beside the run's own
# output (every test's prints and panics: RUST_TEST_NOCAPTURE). The scan comes last.
leak_run=$(mktemp -d "${TMPDIR:-/tmp}/kvr-leak-scan.XXXXXX")
trap 'rm -rf "$leak_run"' EXIT
ledger="$leak_run/ledger" captured="$leak_run/captured"
mkdir -p "$captured"
export KVR_LEAK_LEDGER="$ledger" KVR_LEAK_SCAN_DIR="$captured" RUST_TEST_NOCAPTURE=1

cargo test --workspace --locked --features kv-rotator/client-certificate,kv-rotator/leak-ledger "$@" 2>&1 \
    | tee "$captured/cargo-test.log"

# The crash matrix: the worker built with step-boundary failpoints (only this build has
# them), killed 200 times (CRASH_MATRIX_KILLS) against PostgreSQL, and at every step of a
# multi-password rotation and its retirement against Redis; each prints its counts.
if [ $# -eq 0 ]; then
    cargo test --locked -p kv-rotator --features failpoints,client-certificate,leak-ledger --test crash --test crash_multi_password -- --nocapture \
        2>&1 | tee "$captured/crash-matrix.log"
fi

unset KVR_LEAK_LEDGER KVR_LEAK_SCAN_DIR RUST_TEST_NOCAPTURE
# A full run must have captured every stream, or the scan would prove nothing there.
require=()
if [ $# -eq 0 ]; then
    require=(--require cargo-test,crash-matrix,log,stdout,stderr,spawn,devvault,metrics,alerts,notifications)
fi
# The scanner is outside the default members (so `cargo run -- demo` finds one binary).
if ! cargo run --locked --quiet -p kv-rotator-leakscan --bin leak-scan -- --ledger "$ledger" --dir "$captured" "${require[@]}"; then
    trap - EXIT
    echo "leak scan failed: the ledger and the captured files are kept in $leak_run" >&2
    exit 1
fi
