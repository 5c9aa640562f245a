#!/usr/bin/env bash
# The test command of the README: prepares the machine's services, then runs every test.
#   scripts/test.sh            all tests
#   scripts/test.sh -p NAME    extra arguments go to `cargo test`
set -euo pipefail
cd "$(dirname "$0")/.."

# PostgreSQL: running, and SCRAM (not trust) for the test roles in kvr_scram. MariaDB and
# Redis: running. All three: TLS with a test CA of their own.
bash scripts/setup-postgres.sh
bash scripts/setup-mariadb.sh
bash scripts/setup-redis.sh

# The tests cover the optional client-certificate credential, which links OpenSSL: its
# headers are needed to build them (default builds of kv-rotator need no OpenSSL).
if ! pkg-config --exists openssl 2>/dev/null; then
    echo "== installing libssl-dev and pkg-config (for the client-certificate feature's tests)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libssl-dev pkg-config >/dev/null
fi

cargo test --workspace --locked --features kv-rotator/client-certificate "$@"

# The crash matrix: the worker built with step-boundary failpoints (only this build has
# them), killed 200 times (CRASH_MATRIX_KILLS); prints its counts.
if [ $# -eq 0 ]; then
    cargo test --locked -p kv-rotator --features failpoints,client-certificate --test crash -- --nocapture
fi
