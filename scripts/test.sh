#!/usr/bin/env bash
# The test command of the README: prepares the machine's services, then runs every test.
#   scripts/test.sh            all tests
#   scripts/test.sh -p NAME    extra arguments go to `cargo test`
set -euo pipefail
cd "$(dirname "$0")/.."

# PostgreSQL: running, and SCRAM (not trust) for the test roles in kvr_scram.
bash scripts/setup-postgres.sh

cargo test --workspace --locked "$@"

# The crash matrix: the worker built with step-boundary failpoints (only this build has
# them), killed 200 times (CRASH_MATRIX_KILLS); prints its counts.
if [ $# -eq 0 ]; then
    cargo test --locked -p kv-rotator --features failpoints --test crash -- --nocapture
fi
