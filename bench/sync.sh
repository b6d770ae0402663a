#!/usr/bin/env bash
# The sync foundation's figures (issue 17, "Speed").
#
#   bench/sync.sh                 every part below that exists
#   bench/sync.sh store           the sync store (bench/sync_store.rs)
#   bench/sync.sh overlay         the overlay (bench/sync_overlay.rs, when it exists)
#   bench/sync.sh limiter         the sync limiter (bench/sync_limiter.rs, issue 18)
#   bench/sync.sh pull            1C's pull exchange (bench/onec_pull.rs, issue 19)
#   bench/sync.sh drain           SayName while the outbox drains (bench/sync_drain.rs, issue 18)
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
# drain: BENCH_COUNTERPARTIES generated counterparties (gen_counterparties)
# in the example sync_drain: an in-process gateway on 127.0.0.1:BENCH_PORT
# with them as its directory file and the tests' TestSystem as [sync.testcrm]
# over the mock CRM (crm_mock), a process of its own under SCHED_IDLE
# (chrt --idle 0) on the last core, where the gateway keeps its background
# threads. One mock for the whole run (the id-map holds its remote ids).
# First the initial load: every record sent to the mock, its bucket off
# (timed, a lookup and a write per record; not measured further). Then each
# goal restarts the gateway on the same store (the id-map full: nothing to
# send at start):
#   unlimited: the mock's bucket off, [sync.testcrm] burst 10000 and
#     per_second 100000; per round a wrk run idle, one beside the spin control
#     (bench/lib.sh's spin_control_wrk: a SCHED_IDLE busy loop, what any work
#     at that priority costs SayName here) and one during a drain. Goal:
#     SayName p99 during the drain <= 1.1x the spin control's.
#   published: the mock's bucket on, 50 draining 2/s (Bitrix24's), the test
#     system's published limit; per round an idle run and a drain's. Goal:
#     SayName p99 during the drain <= 1.5x idle.
# A drain: SIGUSR1 to sync_drain, which pushes BENCH_CHANGES records of the
# file with a new name through the push API (1,000 a request) and says when
# the feed has queued them all; wrk starts then and runs until the outbox is
# empty (bench/lib.sh's RUN_WRK_UNTIL), at least 1 s, at most BENCH_DURATION;
# then the script waits for the rest of the drain (at the published rate
# 10,000 rows are 200 requests: 49 at once, then 2/s, about 75 s). The
# first wrk run of a round follows a BENCH_WARMUP run. BENCH_ROUNDS rounds
# counted per goal, the median of their p99 ratios judged; a round in which
# the hypervisor stole more than BENCH_STEAL_MAX s of CPU in any run is not
# counted (at most 3 x BENCH_ROUNDS tried). Printed: the drain's time and
# rows/s, the share of it the busy run measured and of the run it lasted,
# the sync requests, limit answers (the gateway's count and the mock's),
# duplicate creates, dead rows, PASS/FAIL per goal. A full run at the
# defaults takes about 8 minutes on the 2-core VM in release (2026-12-05),
# 5 of them the published rate's three drains of 76-87 s
# (BENCH_DRAIN_GOALS=unlimited alone: about 2.5).
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
#   drain: BENCH_COUNTERPARTIES [100000] BENCH_CHANGES [10000] BENCH_ROUNDS [3]
#     BENCH_DURATION [10s] BENCH_WARMUP [2s] BENCH_THREADS [1] BENCH_CONNS [32]
#     BENCH_STEAL_MAX [0.5] BENCH_PORT [18085] BENCH_DRAIN_GOALS [unlimited,published]
#     (one of them alone: that goal only) BENCH_DRAIN_TIMEOUT [600] seconds the
#     initial load or one drain may take
#   BENCH_PROFILE [release] cargo profile to build and run (dev for a smoke run)
#   BENCH_TIMEOUT [600] seconds each program may run
#   BENCH_SKIP_BUILD [0] BENCH_KEEP [0] keep the temp dir (the store files, the logs)
#   CARGO_TARGET_DIR [./target]
# The store part writes about 1.5 KB a row to /tmp (file and WAL) and
# checks that much is free. Only drain listens (127.0.0.1: the gateway, the
# mock); it needs wrk (installed with apt-get when missing). Every wait is
# bounded; the processes started are stopped when the script exits.
#
# Lines starting with BENCH_RESULT are machine-readable (key=value); times in
# seconds (_s) or milliseconds (_ms); goal_met=1 when the issue's goal was
# met in this run.

set -euo pipefail

PART=${1:-all}
case "$PART" in
  -h|--help) sed -n '2,/^$/p' "$0"; exit 0 ;;
  all|store|overlay|limiter|drain|pull) ;;
  *) echo "usage: $0 [all|store|overlay|limiter|drain|pull]" >&2; exit 2 ;;
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
# drain's
COUNTERPARTIES=${BENCH_COUNTERPARTIES:-100000}
CHANGES=${BENCH_CHANGES:-10000}
DRAIN_ROUNDS=${BENCH_ROUNDS:-3}
DRAIN_TIMEOUT=${BENCH_DRAIN_TIMEOUT:-600}
for v in COUNTERPARTIES CHANGES DRAIN_TIMEOUT; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "BENCH_$v must be a positive number: ${!v}" >&2; exit 2; }
done
[[ $DRAIN_ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "BENCH_ROUNDS must be a positive number: $DRAIN_ROUNDS" >&2; exit 2; }
(( CHANGES <= COUNTERPARTIES )) || { echo "BENCH_CHANGES ($CHANGES) may not exceed BENCH_COUNTERPARTIES ($COUNTERPARTIES): a drain changes distinct records" >&2; exit 2; }
DURATION=${BENCH_DURATION:-10s}
WARMUP=${BENCH_WARMUP:-2s}
for v in DURATION WARMUP; do
  [[ ${!v} =~ ^[1-9][0-9]*[sm]?$ ]] || { echo "BENCH_$v must be a wrk duration (10s, 2m): ${!v}" >&2; exit 2; }
done
THREADS=${BENCH_THREADS:-1}
CONNS=${BENCH_CONNS:-32}
STEAL_MAX=${BENCH_STEAL_MAX:-0.5}
PORT=${BENCH_PORT:-18085}
DRAIN_GOALS=${BENCH_DRAIN_GOALS:-unlimited,published}
[[ $DRAIN_GOALS =~ ^(unlimited|published)(,(unlimited|published))?$ ]] \
  || { echo "BENCH_DRAIN_GOALS must be unlimited, published or both (comma-separated): $DRAIN_GOALS" >&2; exit 2; }
SOAP_PATH=/telephony/ws/VATS
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
# drain's programs are not run by run_program below: they run beside wrk.
DRAIN_EXAMPLES=()
[[ $PART == all || $PART == drain ]] && DRAIN_EXAMPLES=(sync_drain crm_mock gen_counterparties)

if [[ ${BENCH_SKIP_BUILD:-0} != 1 ]]; then
  args=()
  for e in "${EXAMPLES[@]}" "${DRAIN_EXAMPLES[@]}"; do args+=(--example "$e"); done
  log "cargo build --profile $PROFILE ${args[*]}"
  cargo build --profile "$PROFILE" "${args[@]}" >&2
fi
for e in "${EXAMPLES[@]}" "${DRAIN_EXAMPLES[@]}"; do
  [[ -x $OUT/$e ]] || die "missing $OUT/$e (build failed?)"
done
if (( ${#DRAIN_EXAMPLES[@]} > 0 )); then
  need_wrk
  port_free "$PORT" || die "127.0.0.1:$PORT is already in use (set BENCH_PORT)"
fi

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

# ------------------------------------------------------------ drain
GEN=$OUT/gen_counterparties
CRM_MOCK=$OUT/crm_mock
SOAP_URL=http://127.0.0.1:$PORT$SOAP_PATH
# The core the gateway keeps its background threads on (its last): the mock
# runs there, under SCHED_IDLE, as a CRM on another machine would take none
# of the cores that answer.
BG_CPU=$(( $(nproc) - 1 ))
DRAIN_OUT=""
DRAIN_AT=0

# start_drain_gateway NAME LIMIT: sync_drain over the mock at CRM_URL with
# the limiter LIMIT (unlimited, published), its store in $TMP/drain-store
# (kept between starts), its output in $TMP/NAME.out and .log; waits for its
# initial load. Sets GW_PID (added to PIDS), DRAIN_OUT, INITIAL (its line).
start_drain_gateway() {
  local name=$1 limit=$2
  DRAIN_OUT=$TMP/$name.out
  : >"$DRAIN_OUT"
  "$OUT/sync_drain" --dir "$TMP/drain-store" --directory "$TMP/counterparties.jsonl" \
    --crm "$CRM_URL" --listen "127.0.0.1:$PORT" --limit "$limit" --changes "$CHANGES" \
    --drain-timeout "$DRAIN_TIMEOUT" --max-seconds 3600 >"$DRAIN_OUT" 2>"$TMP/$name.log" &
  GW_PID=$!
  PIDS+=("$GW_PID")
  log "$name: sync_drain (pid $GW_PID, limiter $limit) loading $COUNTERPARTIES counterparties"
  wait_line "$DRAIN_OUT" 0 '^SYNC_DRAIN (url=|failed|stopped)' $(( DRAIN_TIMEOUT + 60 )) \
    || die "$name: sync_drain not ready within $(( DRAIN_TIMEOUT + 60 )) s: $(tail -5 "$TMP/$name.log")"
  [[ -n $(line_after "$DRAIN_OUT" 0 '^SYNC_DRAIN url=') ]] \
    || die "$name: sync_drain did not start: $(line_after "$DRAIN_OUT" 0 '^SYNC_DRAIN failed') $(tail -5 "$TMP/$name.log")"
  INITIAL=$(line_after "$DRAIN_OUT" 0 '^SYNC_DRAIN initial')
  log "$name: ready; ${INITIAL#SYNC_DRAIN }"
}

# crm_stats: the mock's counters now (a "CRM_MOCK stats ..." line, asked
# for with SIGUSR1).
crm_stats() {
  local at
  at=$(file_size "$TMP/crm.out")
  kill -USR1 "$CRM_PID" 2>/dev/null || die "the mock CRM is gone: $(tail -5 "$TMP/crm.log")"
  wait_line "$TMP/crm.out" "$at" '^CRM_MOCK stats' 30 || die "the mock CRM printed no stats within 30 s"
  line_after "$TMP/crm.out" "$at" '^CRM_MOCK stats'
}

# crm_bucket on|off: the mock's bucket (50, 2/s) on or off (SIGUSR2 toggles
# it; the mock starts with it off).
CRM_BUCKET=off
crm_bucket() {
  local at
  [[ $CRM_BUCKET == "$1" ]] && return 0
  at=$(file_size "$TMP/crm.out")
  kill -USR2 "$CRM_PID" 2>/dev/null || die "the mock CRM is gone: $(tail -5 "$TMP/crm.log")"
  wait_line "$TMP/crm.out" "$at" "^CRM_MOCK bucket=$1" 30 || die "the mock CRM did not switch its bucket $1"
  CRM_BUCKET=$1
}

# drain_ended: the drain begun at DRAIN_AT ended (RUN_WRK_UNTIL of the busy run).
drain_ended() { wait_line "$DRAIN_OUT" "$DRAIN_AT" '^SYNC_DRAIN (drained|failed)' "$DRAIN_TIMEOUT"; }

# ratio A B: A / B, two decimals (0 when B is 0).
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }

# drain_round GOAL R: one round: idle, the spin control (unlimited only) and
# a drain's wrk runs. Sets IDLE SPIN BUSY (WRK_RESULT lines), STEALS,
# DRAINING DRAINED (sync_drain's lines), COVER (% of the drain the busy run
# measured), SHARE (% of the busy run the drain lasted).
drain_round() {
  local goal=$1 r=$2 t0
  wait_idle "$GW_PID" 30 >/dev/null   # the last drain's snapshot save, if any, is done
  run_wrk "$goal-warmup$r" "$SOAP_URL" "$WARMUP" >/dev/null
  measured_wrk "$goal-idle$r" "$SOAP_URL" "$DURATION"
  IDLE=$RUN_RESULT STEALS=$RUN_STEAL SPIN=""
  if [[ $goal == unlimited ]]; then
    spin_control_wrk "$goal-spin$r" "$SOAP_URL" "$DURATION"
    SPIN=$RUN_RESULT STEALS+=" $RUN_STEAL"
  fi
  DRAIN_AT=$(file_size "$DRAIN_OUT")
  kill -USR1 "$GW_PID" 2>/dev/null || die "sync_drain is gone: $(tail -5 "$TMP/drain-$goal.log")"
  wait_line "$DRAIN_OUT" "$DRAIN_AT" '^SYNC_DRAIN (draining|failed)' "$DRAIN_TIMEOUT" \
    || die "$goal round $r: the changes were not queued within $DRAIN_TIMEOUT s"
  DRAINING=$(line_after "$DRAIN_OUT" "$DRAIN_AT" '^SYNC_DRAIN draining')
  [[ -n $DRAINING ]] || die "$goal round $r: $(line_after "$DRAIN_OUT" "$DRAIN_AT" '^SYNC_DRAIN failed')"
  (( $(field pending "$DRAINING") > 0 )) \
    || die "$goal round $r: the outbox was empty again before wrk could start (${DRAINING#SYNC_DRAIN }): raise BENCH_CHANGES"
  t0=$(( $(now_ns) / 1000000 ))
  RUN_WRK_UNTIL=drain_ended
  measured_wrk "$goal-busy$r" "$SOAP_URL" "$DURATION"
  RUN_WRK_UNTIL=""
  BUSY=$RUN_RESULT STEALS+=" $RUN_STEAL"
  drain_ended || die "$goal round $r: the drain did not end within $DRAIN_TIMEOUT s: $(tail -3 "$TMP/drain-$goal.log")"
  DRAINED=$(line_after "$DRAIN_OUT" "$DRAIN_AT" '^SYNC_DRAIN drained')
  [[ -n $DRAINED ]] || die "$goal round $r: $(line_after "$DRAIN_OUT" "$DRAIN_AT" '^SYNC_DRAIN failed')"
  # The share of the drain (from every change queued to the outbox empty)
  # the busy run measured: all of it, unless the drain outlasts DURATION.
  # And the share of the busy run the drain lasted: all of it, unless the
  # drain ended within the run's first second (a run lasts at least that).
  COVER=$(awk -v w="$(field duration_s "$BUSY")" -v a="$(field at_ms "$DRAINING")" -v b="$(field at_ms "$DRAINED")" \
    'BEGIN { c = (b > a ? w * 100000 / (b - a) : 100); if (c > 100) c = 100; printf "%.0f", c }')
  SHARE=$(awk -v w="$(field duration_s "$BUSY")" -v t="$t0" -v b="$(field at_ms "$DRAINED")" \
    'BEGIN { c = (w > 0 ? (b - t) / (w * 10) : 0); if (c > 100) c = 100; if (c < 0) c = 0; printf "%.0f", c }')
  log "$goal round $r: idle p99 $(field p99_ms "$IDLE") ms${SPIN:+, spin control $(field p99_ms "$SPIN") ms}, drain $(field p99_ms "$BUSY") ms over $(field duration_s "$BUSY") s (${COVER}% of the drain, which lasted ${SHARE}% of the run); ${DRAINED#SYNC_DRAIN }; steal $STEALS s"
}

# drain_goal GOAL: the goal's mock and gateway, its rounds, its summary
# lines (DRAIN_SUMMARY) and BENCH_RESULT line (RESULTS).
DRAIN_SUMMARY=""
drain_goal() {
  local goal=$1 round counted=() noisy=0 rows=() r b base stats0 stats1
  local drain_s=() rows_per_s=() covers=() shares=() limited=0 retried=0 dead=0 requests=0 queued_ms=()
  case $goal in
    unlimited) crm_bucket off ;;
    published) crm_bucket on ;;
  esac
  stats0=$(crm_stats)
  start_drain_gateway "drain-$goal" "$goal"
  for (( round = 1; round <= DRAIN_ROUNDS * 3 && ${#counted[@]} < DRAIN_ROUNDS; round++ )); do
    drain_round "$goal" "$round"
    if [[ $goal == unlimited ]]; then base=$SPIN; else base=$IDLE; fi
    r=$(ratio "$(field p99_ms "$BUSY")" "$(field p99_ms "$base")")
    # shellcheck disable=SC2086 # the steal times are split on purpose
    if steal_over "$STEAL_MAX" $STEALS; then
      noisy=$(( noisy + 1 ))
      log "$goal round $round: not counted, steal $STEALS s (over $STEAL_MAX s); p99 ratio would be $r"
      rows+=("$round idle (not counted)|$IDLE")
      [[ -n $SPIN ]] && rows+=("$round spin control (not counted)|$SPIN")
      rows+=("$round drain (not counted)|$BUSY")
      continue
    fi
    counted+=("$r")
    rows+=("$round idle|$IDLE")
    [[ -n $SPIN ]] && rows+=("$round spin control|$SPIN")
    rows+=("$round drain (${COVER}% of it)|$BUSY")
    drain_s+=("$(field seconds "$DRAINED")")
    rows_per_s+=("$(field rows_per_s "$DRAINED")")
    queued_ms+=("$(field queued_ms "$DRAINING")")
    covers+=("$COVER")
    shares+=("$SHARE")
    requests=$(( requests + $(field requests "$DRAINED") ))
    limited=$(( limited + $(field limited "$DRAINED") ))
    retried=$(( retried + $(field retried "$DRAINED") ))
    b=$(field dead "$DRAINED"); (( b > dead )) && dead=$b
  done
  stop_pid "$GW_PID" >/dev/null
  stats1=$(crm_stats)
  (( ${#counted[@]} > 0 )) || die "$goal: every round had more than $STEAL_MAX s of steal time: the machine is too noisy to measure p99 now"

  local median_ratio idle_p99 spin_p99 busy_p99 met verdict what limit_answers dups
  median_ratio=$(median "${counted[@]}")
  idle_p99=$(median $(for row in "${rows[@]}"; do [[ $row == *" idle|"* ]] && field p99_ms "${row#*|}"; done))
  spin_p99=$(median $(for row in "${rows[@]}"; do [[ $row == *" spin control|"* ]] && field p99_ms "${row#*|}"; done))
  busy_p99=$(median $(for row in "${rows[@]}"; do [[ $row == *" drain ("*"% of it)|"* ]] && field p99_ms "${row#*|}"; done))
  limit_answers=$(( $(field limit_answers "$stats1") - $(field limit_answers "$stats0") ))
  dups=$(field duplicate_creates "$stats1")
  if [[ $goal == unlimited ]]; then
    what="SayName p99 during the drain <= 1.1x the spin control's"
    met=$(awk -v r="$median_ratio" 'BEGIN { print (r <= 1.1 ? 1 : 0) }')
  else
    what="SayName p99 during the drain <= 1.5x idle"
    met=$(awk -v r="$median_ratio" 'BEGIN { print (r <= 1.5 ? 1 : 0) }')
  fi
  verdict=$([[ $met == 1 ]] && echo PASS || echo FAIL)

  DRAIN_SUMMARY+=$'\n'"drain, mock $goal ($([[ $goal == unlimited ]] && echo "no bucket, limiter burst 10000 per_second 100000" || echo "bucket 50 draining 2/s, the published limit")): $CHANGES changes a round, $COUNTERPARTIES counterparties"$'\n'
  DRAIN_SUMMARY+=$(printf '%-34s %10s %9s %9s %9s %9s %8s %7s' "run" "requests/s" "p50 ms" "p90 ms" "p99 ms" "p99.9 ms" "errors" "secs")$'\n'
  local row name v
  for row in "${rows[@]}"; do
    name=${row%%|*}; v=${row#*|}
    DRAIN_SUMMARY+=$(printf '%-34s %10s %9s %9s %9s %9s %8s %7s' "$name" "$(field rps "$v")" "$(field p50_ms "$v")" \
      "$(field p90_ms "$v")" "$(field p99_ms "$v")" "$(field p999_ms "$v")" \
      "$(( $(field non2xx "$v") + $(field socket_errors "$v") ))" "$(field duration_s "$v")")$'\n'
  done
  DRAIN_SUMMARY+="  p99 ratios (drain / $([[ $goal == unlimited ]] && echo "spin control" || echo idle)) per counted round: ${counted[*]}; median $median_ratio ($noisy rounds not counted for steal time)"$'\n'
  DRAIN_SUMMARY+="  drain: $(median "${drain_s[@]}") s median from the first push to an empty outbox ($(median "${rows_per_s[@]}") rows/s; queued after $(median "${queued_ms[@]}") ms), the busy run measured $(median "${covers[@]}")% of the drain once queued and the drain lasted $(median "${shares[@]}")% of the busy run (medians); $requests sync requests, $limited limited and $retried failed as the gateway counts them, $limit_answers limit answers as the mock counts them, $dups external ids created twice, $dead dead rows"$'\n'
  DRAIN_SUMMARY+="goal drain/$goal ($what): $verdict (median ${median_ratio}x of ${#counted[@]} rounds)"$'\n'
  RESULTS+="BENCH_RESULT mode=sync_drain_$goal counterparties=$COUNTERPARTIES changes=$CHANGES threads=$THREADS conns=$CONNS duration=$DURATION rounds=${#counted[@]} noisy_rounds=$noisy idle_p99_ms=$idle_p99 spin_p99_ms=${spin_p99/-/} busy_p99_ms=$busy_p99 p99_ratios=$(IFS=,; echo "${counted[*]}") p99_ratio=$median_ratio drain_s=$(median "${drain_s[@]}") drain_rows_per_s=$(median "${rows_per_s[@]}") drain_measured_pct=$(median "${covers[@]}") run_draining_pct=$(median "${shares[@]}") requests=$requests limited=$limited retried=$retried mock_limit_answers=$limit_answers duplicate_creates=$dups dead=$dead goal_met=$met"$'\n'
}

if (( ${#DRAIN_EXAMPLES[@]} > 0 )); then
  log "drain: $COUNTERPARTIES counterparties, $CHANGES changes a drain, goals $DRAIN_GOALS; machine: $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"
  generate_counterparties "$COUNTERPARTIES" 100000 42
  # The initial load: every record sent to an unlimited mock once, so each
  # goal's gateway starts with the id-map full (the published rate would
  # take hours to create them).
  # One mock for the whole run (the id-map holds its remote ids): its
  # bucket off for the initial load and the unlimited goal, on for the
  # published one.
  start_mock_crm crm "--capacity 50 --drain 2 --start-unlimited --max-seconds 3600" \
    taskset -c "$BG_CPU" chrt --idle 0
  start_drain_gateway drain-initial unlimited
  stop_pid "$GW_PID" >/dev/null
  CRM_STATS=$(crm_stats)
  INITIAL_S=$(field seconds "$INITIAL")
  INITIAL_REQUESTS=$(field requests "$INITIAL")
  DRAIN_SUMMARY+="drain: initial load of $(field counterparties "$INITIAL") counterparties ($(field linked "$INITIAL") linked) to the unlimited mock in $INITIAL_S s ($(ratio "$(field counterparties "$INITIAL")" "$INITIAL_S") records/s, $INITIAL_REQUESTS requests: a lookup before each create), mock: ${CRM_STATS#CRM_MOCK stats }"$'\n'
  RESULTS+="BENCH_RESULT mode=sync_drain_initial counterparties=$(field counterparties "$INITIAL") linked=$(field linked "$INITIAL") seconds=$INITIAL_S records_per_s=$(ratio "$(field counterparties "$INITIAL")" "$INITIAL_S") requests=$INITIAL_REQUESTS"$'\n'
  for goal in ${DRAIN_GOALS//,/ }; do
    drain_goal "$goal"
  done
  stop_pid "$CRM_PID" >/dev/null
fi

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
if (( ${#DRAIN_EXAMPLES[@]} > 0 )); then
  printf '%s' "$DRAIN_SUMMARY"
fi
printf '%s' "$RESULTS"
