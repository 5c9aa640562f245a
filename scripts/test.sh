#!/usr/bin/env bash
# The test command of the README: prepares the machine's services, then runs every test.
#   scripts/test.sh            all tests
#   scripts/test.sh -p NAME    extra arguments go to `cargo test`
set -euo pipefail
cd "$(dirname "$0")/.."

# PostgreSQL: running, and SCRAM (not trust) for the test roles in kvr_scram.
bash scripts/setup-postgres.sh

cargo test --workspace --locked "$@"
