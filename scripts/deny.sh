#!/usr/bin/env bash
# cargo-deny over the whole dependency graph (deny.toml): advisories from the RustSec
# snapshot in ../shared/advisory-db, offline; licenses; bans; sources.
#   scripts/deny.sh              every check
#   scripts/deny.sh advisories   extra arguments go to `cargo deny check`
#
# cargo-deny reads an advisory database as a git checkout inside `db-path`, in a directory
# named after its URL (`advisory-db-<hash of the URL>`), and takes its fetch time from
# `.git/FETCH_HEAD`. The snapshot is data files only, so this lays that checkout out over
# it: its `crates/` linked in, the fetch time set to the snapshot's date (from its
# SNAPSHOT file), so `maximum-db-staleness` in deny.toml judges the snapshot's real age.
set -euo pipefail
cd "$(dirname "$0")/.."

snapshot=$(cd ../shared/advisory-db && pwd)
# cargo-deny 0.20's directory for https://github.com/rustsec/advisory-db (deny.toml db-urls).
db=target/cargo-deny/advisory-dbs/advisory-db-3157b0e258782691
snapshot_date=$(grep -oE '\([0-9]{4}-[0-9]{2}-[0-9]{2}\)' "$snapshot/SNAPSHOT" | tr -d '()' | head -n 1)
if [ -z "$snapshot_date" ]; then
    echo "error: no (YYYY-MM-DD) date in $snapshot/SNAPSHOT" >&2
    exit 1
fi
mkdir -p "$db/.git"
ln -sfn "$snapshot/crates" "$db/crates"
touch -d "$snapshot_date" "$db/.git/FETCH_HEAD"
echo "advisory snapshot: $snapshot_date ($(find -L "$db/crates" -name '*.md' | wc -l) advisories)"

# cargo-deny reads the whole graph (`cargo metadata`), every platform's crates included;
# a build fetches only this one's. Fetch the rest first (once per machine; the advisories
# stay offline).
cargo fetch --locked --quiet

cargo deny --offline --locked check "$@"
