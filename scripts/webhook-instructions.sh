#!/usr/bin/env bash
# Instructions per webhook delivery, in process, counted by callgrind: repeatable to the
# instruction for one binary, where timings on a shared machine swing by several percent.
# Prints each target of webhook/benches/handler_cost.rs next to the bare axum handler.
#
#   scripts/webhook-instructions.sh            # 5000 deliveries per target
#   BENCH_DELIVERIES=20000 scripts/webhook-instructions.sh
#
# Each count is of the whole process, so a run with N deliveries and one with 2N are
# measured and their difference divided by N: start-up and body generation cancel out.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 1; }
n=${BENCH_DELIVERIES:-5000}
bin=$(cargo bench -p kv-rotator-webhook --bench handler_cost --no-run --message-format=json 2>/dev/null |
    sed -n 's/.*"executable":"\([^"]*handler_cost[^"]*\)".*/\1/p' | tail -1)
[ -x "$bin" ] || { echo "could not build the handler_cost bench" >&2; exit 1; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
count() { # target deliveries -> instructions of the whole run
    BENCH_TARGET=$1 BENCH_DELIVERIES=$2 valgrind --tool=callgrind --callgrind-out-file="$out/cg" "$bin" 2>&1 >/dev/null |
        sed -n 's/.*refs: *\([0-9,]*\).*/\1/p' | tr -d ,
}
per_delivery() { echo $(( ($(count "$1" $((2 * n))) - $(count "$1" "$n")) / n )); }
bare=$(per_delivery bare)
printf '%-12s %8s instructions per delivery\n' bare "$bare"
for target in webhook webhook-key; do
    ins=$(per_delivery "$target")
    awk -v t="$target" -v i="$ins" -v b="$bare" \
        'BEGIN { printf "%-12s %8d instructions per delivery  %.2fx bare  (+%d)\n", t, i, i / b, i - b }'
done
echo "(under valgrind SHA-256 runs without the CPU's SHA extensions: webhook-key's extra over webhook is far smaller natively)"
