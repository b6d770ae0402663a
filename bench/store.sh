#!/usr/bin/env bash
# The store under a large snapshot (bench/store_snapshot.rs, the example
# store_snapshot), as the 1C snapshot of COUNT counterparties makes it.
#
#   bench/store.sh              1000000 counterparties
#   bench/store.sh 20000        a quick run
#
# Builds release, then in a temp dir: three replaces of COUNT records (into an
# empty store; the same again; 1% changed, 0.1% gone, 0.1% new), each timed
# while a call's journal append is made every 10 ms (how long a call waits
# behind a replace); the close; three loads of the snapshot, each in a fresh
# process, as at start-up; the journal's append rate one at a time and from
# 20,000 concurrent tasks. A table, then the program's BENCH_RESULT lines.
# The figure to watch: the slowest append during a replace, how long a call
# waits for its journal row behind a large snapshot save (README quotes it
# for a million).
#
# Environment (defaults in brackets):
#   BENCH_STORE_CHUNK [unset] OPS[,MS]: replaces in chunks of at most OPS row
#     changes and about MS ms (100 if not given) instead of the store's own
#     (20000, 100 ms), to compare chunk sizes
#   BENCH_TIMEOUT [1800] seconds the program may run
#   BENCH_SKIP_BUILD [0] BENCH_KEEP [0] keep the temp dir (the store file, the log)
#   CARGO_TARGET_DIR [./target]
# The program holds two sets of COUNT records (the table prints its peak
# memory); the store file takes about 700 bytes a row in /tmp, and the script
# wants twice that free. Listens on nothing. Every wait is bounded.
#
# Lines starting with BENCH_RESULT are machine-readable (key=value); times in
# seconds (_s) or milliseconds (_ms), CPU in seconds of one core.

set -euo pipefail

case "${1:-}" in
  -h|--help) sed -n '2,/^$/p' "$0"; exit 0 ;;
  ''|[0-9]*) ;;
  *) echo "usage: $0 [COUNT]" >&2; exit 2 ;;
esac
COUNT=${1:-1000000}
[[ $COUNT =~ ^[0-9]+$ ]] && (( COUNT > 0 )) || { echo "COUNT must be a positive number: $COUNT" >&2; exit 2; }
CHUNK=${BENCH_STORE_CHUNK:-}
[[ -z $CHUNK || $CHUNK =~ ^[1-9][0-9]*(,[0-9]+)?$ ]] || { echo "BENCH_STORE_CHUNK must be OPS or OPS,MS: $CHUNK" >&2; exit 2; }
TIMEOUT=${BENCH_TIMEOUT:-1800}

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
PROGRAM=$TARGET/release/examples/store_snapshot

# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"

if [[ ${BENCH_SKIP_BUILD:-0} != 1 ]]; then
  log "cargo build --release --example store_snapshot"
  cargo build --release --example store_snapshot >&2
fi
[[ -x $PROGRAM ]] || die "missing $PROGRAM (build failed?)"

TMP=$(mktemp -d /tmp/cti-store-bench.XXXXXX)
# About 700 bytes a row in the file, and as much again in the WAL at worst.
NEED_KB=$(( COUNT * 3 / 2 ))
FREE_KB=$(df -Pk "$TMP" | awk 'NR == 2 {print $4}')
(( FREE_KB > NEED_KB )) || die "$TMP has ${FREE_KB} KiB free, $COUNT counterparties need about ${NEED_KB} KiB"

ARGS=(--count "$COUNT" --dir "$TMP")
[[ -n $CHUNK ]] && ARGS+=(--chunk "$CHUNK")
log "store_snapshot ${ARGS[*]}"
T0=$(now_ns)
rc=0
timeout "$TIMEOUT" "$PROGRAM" "${ARGS[@]}" >"$TMP/results.txt" 2>"$TMP/log.txt" || rc=$?
(( rc == 0 )) || die "store_snapshot failed (exit $rc$( (( rc == 124 )) && echo ": over ${TIMEOUT}s")): $(tail -5 "$TMP/log.txt")"
log "done in $(( $(ms_since "$T0") / 1000 )) s"

RESULTS=$(grep '^BENCH_RESULT' "$TMP/results.txt") || die "no BENCH_RESULT from store_snapshot: $(tail -5 "$TMP/log.txt")"
line() { grep " mode=$1 " <<<"$RESULTS" | grep -- "${2:-}" | head -1; }

echo
echo "== store: $COUNT counterparties$([[ -n $CHUNK ]] && echo ", chunks $CHUNK"), $(nproc) CPUs =="
printf '%-44s %8s %8s %8s %10s %9s %9s\n' "replace of source onec" "wall s" "CPU s" "commits" "append max" "median ms" "p99 ms"
for step in save same changed; do
  r=$(line store_replace "step=$step ")
  case $step in
    save) name="into an empty store" ;;
    same) name="the same records again" ;;
    changed) name="1% changed, 0.1% gone, 0.1% new" ;;
  esac
  printf '%-44s %8s %8s %8s %7s ms %9s %9s\n' "$name" "$(field wall_s "$r")" "$(field cpu_s "$r")" \
    "$(field transactions "$r")" "$(field append_max_ms "$r")" "$(field append_median_ms "$r")" "$(field append_p99_ms "$r")"
done
echo "  append: a call's journal append, one every 10 ms during the replace ($(field appends "$(line store_replace "step=save ")") during the first)"
f=$(line store_file)
echo "close (WAL checkpoint) $(field close_s "$f") s; file $(( $(field file_bytes "$f") >> 20 )) MiB, ~$(field json_bytes_per_row "$f") B JSON per row; peak memory $(( $(field hwm_kb "$f") >> 10 )) MiB"
for round in 1 2 3; do
  l=$(line store_load "round=$round ")
  echo "load in a fresh process, round $round: $(field wall_s "$l") s wall, $(field cpu_s "$l") s CPU, $(field records "$l") records"
done
a=$(line store_appends)
echo "appends: $(field serial_per_s "$a")/s one at a time; $(field grouped_per_s "$a")/s from 20000 concurrent tasks ($(field appends_per_commit "$a") per commit)"
echo "$RESULTS"
