#!/usr/bin/env bash
# The sync foundation's figures (issue 17, "Speed").
#
#   bench/sync.sh                 every part below that exists
#   bench/sync.sh store           the sync store (bench/sync_store.rs)
#   bench/sync.sh overlay         the overlay (bench/sync_overlay.rs, when it exists)
#   bench/sync.sh limiter         the sync limiter (bench/sync_limiter.rs, issue 18)
#   bench/sync.sh pull            1C's pull exchange (bench/onec_pull.rs, issue 19)
#
# store: in a temp dir, the main store and the sync store opened as the
# gateway opens them; a call's journal append 100 times a second, idle for
# BENCH_SYNC_IDLE_S seconds, then while BENCH_SYNC_ROWS outbox rows are
# enqueued in commands of 1,000, BENCH_SYNC_ROUNDS times, 5 s apart (the
# appends of all rounds pooled: one round is under 100 appends; the pause
# lets the sync file's checkpoint end, its appends are shown apart); then BENCH_SYNC_SINGLE rows one per command
# from 64 concurrent tasks. Goals: bulk >= 50,000 rows/s committed (the file
# size is printed), single >= 5,000 rows/s, the appends' p99 during the bulk
# <= 2x their idle p99 in the same run.
#
# overlay: runs the example sync_overlay (another part of issue 17 writes
# it) with BENCH_SYNC_OVERLAY_ARGS, and BENCH_TMP set to a temp folder of its
# own; its BENCH_RESULT lines are passed on. Skipped, said once, while the
# example is not there.
#
# limiter: the sync runtime's limiter (4 senders sharing it, as a worker's
# concurrency) against an in-process HTTP server keeping an exact bucket
# (Bitrix24's 50 and 2/s unless BENCH_SYNC_LIMITER_ARGS says otherwise, e.g.
# "--gap-ms 143" for amoCRM, "--per-window 100 --window-s 30" for Bpium)
# for BENCH_SYNC_LIMITER_S seconds. Goal (issue 18): zero limit answers and
# >= 90% of what the bucket allows; requests/s printed.
#
# pull: a gateway with [sync.onec] transport = "pull" on 127.0.0.1 and
# BENCH_SYNC_PULL_ROWS rows in the onec outbox; one poller (HTTP, as the 1C
# sample polls): leases of 500 timed with 1,000 and with that many pending
# (BENCH_SYNC_PULL_SAMPLES each, median; goal: at most 1.5x), then the whole
# outbox drained with leases and acks (goals: <= 30 s, lease p99 <= 100 ms).
#
# Environment (defaults in brackets):
#   BENCH_SYNC_ROWS [100000] BENCH_SYNC_SINGLE [20000] BENCH_SYNC_IDLE_S [5]
#   BENCH_SYNC_ROUNDS [5]
#   BENCH_SYNC_OVERLAY_ARGS [] arguments of sync_overlay
#   BENCH_SYNC_LIMITER_S [60] BENCH_SYNC_LIMITER_ARGS [--burst 50 --per-second 2]
#   BENCH_SYNC_PULL_ROWS [100000] BENCH_SYNC_PULL_SAMPLES [20]
#   BENCH_PROFILE [release] cargo profile to build and run (dev for a smoke run)
#   BENCH_TIMEOUT [600] seconds each program may run
#   BENCH_SKIP_BUILD [0] BENCH_KEEP [0] keep the temp dir (the store files, the logs)
#   CARGO_TARGET_DIR [./target]
# The store part writes about 1.5 KB a row to /tmp (file and WAL) and
# checks that much is free. Listens on nothing. Every wait is bounded.
#
# Lines starting with BENCH_RESULT are machine-readable (key=value); times in
# seconds (_s) or milliseconds (_ms); goal_met=1 when the issue's goal was
# met in this run.

set -euo pipefail

PART=${1:-all}
case "$PART" in
  -h|--help) sed -n '2,/^$/p' "$0"; exit 0 ;;
  all|store|overlay|limiter|pull) ;;
  *) echo "usage: $0 [all|store|overlay|limiter|pull]" >&2; exit 2 ;;
esac
ROWS=${BENCH_SYNC_ROWS:-100000}
SINGLE=${BENCH_SYNC_SINGLE:-20000}
IDLE_S=${BENCH_SYNC_IDLE_S:-5}
ROUNDS=${BENCH_SYNC_ROUNDS:-5}
LIMITER_S=${BENCH_SYNC_LIMITER_S:-60}
PULL_ROWS=${BENCH_SYNC_PULL_ROWS:-100000}
PULL_SAMPLES=${BENCH_SYNC_PULL_SAMPLES:-20}
for v in ROWS SINGLE IDLE_S ROUNDS LIMITER_S PULL_ROWS PULL_SAMPLES; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "BENCH_SYNC_$v must be a positive number: ${!v}" >&2; exit 2; }
done
PROFILE=${BENCH_PROFILE:-release}
[[ $PROFILE =~ ^[a-z][a-z0-9_-]*$ ]] || { echo "BENCH_PROFILE must be a cargo profile name: $PROFILE" >&2; exit 2; }
TIMEOUT=${BENCH_TIMEOUT:-600}

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
# cargo puts the dev profile's output under debug/.
OUT=$TARGET/$([[ $PROFILE == dev ]] && echo debug || echo "$PROFILE")/examples

# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"

# has_example NAME: Cargo.toml declares it (its program is in bench/).
has_example() { grep -q "^name = \"$1\"$" "$REPO/Cargo.toml" && [[ -f $REPO/bench/$1.rs ]]; }

EXAMPLES=()
[[ $PART == all || $PART == store ]] && EXAMPLES+=(sync_store)
if [[ $PART == all || $PART == overlay ]]; then
  if has_example sync_overlay; then
    EXAMPLES+=(sync_overlay)
  elif [[ $PART == overlay ]]; then
    die "no example sync_overlay yet (bench/sync_overlay.rs and its [[example]] in Cargo.toml)"
  else
    log "overlay: skipped, no example sync_overlay yet"
  fi
fi
[[ $PART == all || $PART == limiter ]] && EXAMPLES+=(sync_limiter)
[[ $PART == all || $PART == pull ]] && EXAMPLES+=(onec_pull)

if [[ ${BENCH_SKIP_BUILD:-0} != 1 ]]; then
  args=()
  for e in "${EXAMPLES[@]}"; do args+=(--example "$e"); done
  log "cargo build --profile $PROFILE ${args[*]}"
  cargo build --profile "$PROFILE" "${args[@]}" >&2
fi
for e in "${EXAMPLES[@]}"; do
  [[ -x $OUT/$e ]] || die "missing $OUT/$e (build failed?)"
done

TMP=$(mktemp -d /tmp/cti-sync-bench.XXXXXX)

# run_program NAME ARGS...: runs it bounded, its stdout to TMP/NAME.out,
# stderr to TMP/NAME.log; dies naming the log's last lines if it fails.
run_program() {
  local name=$1 rc=0 t0
  shift
  log "$name $*"
  t0=$(now_ns)
  timeout "$TIMEOUT" "$OUT/$name" "$@" >"$TMP/$name.out" 2>"$TMP/$name.log" || rc=$?
  (( rc == 0 )) || die "$name failed (exit $rc$( (( rc == 124 )) && echo ": over ${TIMEOUT}s")): $(tail -5 "$TMP/$name.log")"
  log "$name done in $(( $(ms_since "$t0") / 1000 )) s"
  grep '^BENCH_RESULT' "$TMP/$name.out" || die "no BENCH_RESULT from $name: $(tail -5 "$TMP/$name.log")"
}

RESULTS=""
for e in "${EXAMPLES[@]}"; do
  case $e in
    sync_store)
      NEED_KB=$(( (ROWS * ROUNDS + SINGLE) * 3 / 2 ))
      FREE_KB=$(df -Pk "$TMP" | awk 'NR == 2 {print $4}')
      (( FREE_KB > NEED_KB )) || die "$TMP has ${FREE_KB} KiB free, $ROWS rows need about ${NEED_KB} KiB"
      mkdir "$TMP/store"
      # Other programs' writes still in the page cache would be flushed
      # during the run and measured as ours.
      sync
      RESULTS+=$(run_program sync_store --dir "$TMP/store" --rows "$ROWS" --batch 1000 \
        --single "$SINGLE" --tasks 64 --rate 100 --idle-s "$IDLE_S" --bulk-rounds "$ROUNDS")$'\n'
      ;;
    sync_overlay)
      mkdir "$TMP/overlay"
      # shellcheck disable=SC2086 # the arguments are split on purpose
      RESULTS+=$(BENCH_TMP="$TMP/overlay" run_program sync_overlay ${BENCH_SYNC_OVERLAY_ARGS:-})$'\n'
      ;;
    sync_limiter)
      # shellcheck disable=SC2086 # the arguments are split on purpose
      RESULTS+=$(run_program sync_limiter --seconds "$LIMITER_S" --tasks 4 \
        ${BENCH_SYNC_LIMITER_ARGS:---burst 50 --per-second 2})$'\n'
      ;;
    onec_pull)
      mkdir "$TMP/pull"
      RESULTS+=$(run_program onec_pull --dir "$TMP/pull" --rows "$PULL_ROWS" --samples "$PULL_SAMPLES")$'\n'
      ;;
  esac
done

line() { grep " mode=$1 " <<<"$RESULTS" | head -1; }
goal() { [[ $(field goal_met "$1") == 1 ]] && echo "met" || echo "NOT MET"; }

echo
echo "== sync: $PROFILE build, $(nproc) CPUs =="
if [[ " ${EXAMPLES[*]} " == *" sync_store "* ]]; then
  b=$(line sync_bulk)
  j=$(line sync_journal)
  s=$(line sync_single)
  echo "bulk enqueue, $(field rows "$b") rows in commands of $(field batch "$b"), $(field rounds "$b") rounds: $(field rows_per_s "$b") rows/s median, $(field rows_per_s_slowest "$b") slowest ($(field wall_s "$b") s, $(field transactions "$b") transactions); goal >= 50000: $(goal "$b")"
  c=$(line sync_file)
  echo "  after the bulk: sync file $(( $(field file_bytes "$b") >> 10 )) KiB + WAL $(( $(field wal_bytes "$b") >> 10 )) KiB (checkpointed once idle); closed with $(field rows "$c") rows: $(( $(field file_bytes "$c") >> 10 )) KiB, $(field bytes_per_row "$c") B per row"
  echo "64 tasks enqueuing single rows: $(field rows_per_s "$s") rows/s, $(field rows_per_commit "$s") rows per commit; goal >= 5000: $(goal "$s")"
  echo "journal append at $(field rate "$j")/s: p99 idle $(field idle_p99_ms "$j") ms ($(field idle_appends "$j") appends), during the bulks $(field bulk_p99_ms "$j") ms ($(field bulk_appends "$j")), ratio $(field p99_ratio "$j"); goal <= 2: $(goal "$j")"
  a=$(line sync_journal_between)
  echo "  between the bulks (the sync file checkpointed once idle): p99 $(field p99_ms "$a") ms, max $(field max_ms "$a") ms ($(field appends "$a") appends)"
fi
if [[ " ${EXAMPLES[*]} " == *" sync_overlay "* ]]; then
  o=$(line sync_overlay)
  echo "overlay, $(field counterparties "$o") counterparties, $(field linked "$o") linked, $(field changes "$o") one-record changes: change -> SayName p50 $(field p50_ms "$o") ms, p99 $(field p99_ms "$o") ms, max $(field max_ms "$o") ms ($(field missed "$o") missed; the change itself p99 $(field set_p99_ms "$o") ms); goal p99 <= 10: $(goal "$o")"
fi
if [[ " ${EXAMPLES[*]} " == *" sync_limiter "* ]]; then
  l=$(line sync_limiter)
  echo "limiter ($(field kind "$l"), $(field tasks "$l") senders, $(field seconds "$l") s): $(field requests "$l") requests, $(field requests_per_s "$l") requests/s, $(field used "$l") of the remote's allowance of $(field allowance "$l"), $(field limit_answers "$l") limit answers; goal 0 limit answers and >= 0.9: $(goal "$l")"
fi
if [[ " ${EXAMPLES[*]} " == *" onec_pull "* ]]; then
  p=$(line onec_pull_lease)
  d=$(line onec_pull_drain)
  echo "1C pull, lease of $(field portion "$p"): median $(field small_median_ms "$p") ms with $(field small_pending "$p") pending, $(field large_median_ms "$p") ms with $(field large_pending "$p") ($(field samples "$p") each), ratio $(field ratio "$p"); goal <= 1.5: $(goal "$p")"
  echo "1C pull, drain of $(field rows "$d") rows by one poller: $(field wall_s "$d") s, $(field leases "$d") leases, p50 $(field lease_p50_ms "$d") ms, p99 $(field lease_p99_ms "$d") ms; goal <= 30 s and p99 <= 100 ms: $(goal "$d")"
fi
printf '%s' "$RESULTS"
