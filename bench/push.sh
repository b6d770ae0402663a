#!/usr/bin/env bash
# Push API benchmark of cti-gateway at a million counterparties (issue 13):
# what a small `POST /api/v1/counterparties` costs with a large directory, and
# what concurrent pushes cost SayName.
#
#   bench/push.sh             1000000 counterparties
#   bench/push.sh 20000       a smoke run (with BENCH_PUSH_SECONDS=5)
#
# Builds release (the gateway, bench/gen_counterparties.rs, bench/push_load.rs),
# generates COUNT counterparties and the callers' numbers (~90% known), starts
# `cti-gateway serve --config` on 127.0.0.1 with the file as its source, a
# store, an [api] token and the push module's log at info (its line "push:
# counterparties upserted" says store_ms and directory_us), waits for /readyz
# and for the gateway to be idle (the file's snapshot saved), then:
#   1. one-record pushes: 200 sequential pushes, each a new id and a new
#      phone (bench/phone_slots.rs: a mobile number no generated record has),
#      each followed by one SayName for that phone, which must answer the
#      record's name (else a miss); then 10 pushes renaming records pushed
#      before, each followed by a SayName that must answer the new name.
#      Round trip p50/p99/max of every one-record push, and the directory's
#      part (directory_us of the gateway's log lines) p50/p99/max.
#      Goal: p99 <= 15 ms, directory_us p99 <= 1000, no miss, no error.
#   2. 1,000-record pushes: 20 sequential pushes of 1000 new records, each
#      followed by a SayName for the batch's last record.
#      Goal: p99 (with 20 pushes: the slowest) <= 150 ms, no miss, no error.
#   3. concurrent pushes and SayName: pairs of runs, each run
#      BENCH_PUSH_SECONDS long with wrk (bench/saynames.lua, -t1 -c32) asking
#      SayName for the generated numbers: first the control (bench/lib.sh's
#      `start_busy_control spin`, a SCHED_IDLE busy loop that is not the
#      gateway), then 64 clients pushing one new record at a time, back to
#      back. Per pair: records/s (200s within the run), push p50/p99, errors
#      (any non-2xx or timeout), SayName p99 of both runs and their ratio. A
#      pair in which the hypervisor stole more than BENCH_STEAL_MAX s of CPU in
#      either wrk run is printed but not counted (at most 3 x ROUNDS pairs are
#      tried for ROUNDS counted), as bench/onec.sh does.
#      Goal: median records/s >= 2000, no error, median p99 ratio <= 1.1.
# Ids are `pushbench-RUN-PHASE-SLOT` (RUN: this run's clock and pid), so no
# two pushes of a run, or of two runs, share an id; the directory grows by
# every record pushed (about 20,000 + 210, plus what phase 3 pushes).
#
# Environment (defaults in brackets):
#   BENCH_PUSH_SECONDS [60] length of each run of phase 3
#   BENCH_PUSH_CLIENTS [64] BENCH_SINGLE_PUSHES [200] BENCH_RENAMES [10]
#   BENCH_BATCH_PUSHES [20] BENCH_BATCH_SIZE [1000]
#   BENCH_ROUNDS [3] counted pairs of phase 3; BENCH_STEAL_MAX [0.5] s
#   BENCH_THREADS [1] BENCH_CONNS [32] wrk's; BENCH_WARMUP [3s] wrk warm-up
#     before each pair
#   BENCH_QUERIES [200000] BENCH_SEED [42] BENCH_PORT [18084]
#   BENCH_READY_TIMEOUT [600] seconds to wait for /readyz
#   BENCH_SKIP_BUILD [0] BENCH_KEEP [0] keep the temp dir (data, config, logs)
#   CARGO_TARGET_DIR [./target]
# Everything listens on 127.0.0.1 only. Every wait is bounded. The script stops
# the processes it started (by pid) when it exits, however it exits. The
# gateway logs a line per push (~230 bytes): phase 3 at 2,000 pushes/s
# writes ~0.5 MB/s to $TMP.
#
# Lines starting with BENCH_RESULT are machine-readable (key=value), times in ms
# unless the key says _us or _s. Exit status 0 when the benchmark ran, met or
# not.

set -euo pipefail

case "${1:-}" in
  -h|--help) sed -n '2,/^$/p' "$0"; exit 0 ;;
  ''|[0-9]*) ;;
  *) echo "usage: $0 [COUNT]" >&2; exit 2 ;;
esac
COUNT=${1:-1000000}
[[ $COUNT =~ ^[0-9]+$ ]] && (( COUNT > 0 )) || { echo "COUNT must be a positive number: $COUNT" >&2; exit 2; }

positive() { [[ $2 =~ ^[1-9][0-9]*$ ]] || { echo "$1 must be a positive number: $2" >&2; exit 2; }; }
PUSH_SECONDS=${BENCH_PUSH_SECONDS:-60}; positive BENCH_PUSH_SECONDS "$PUSH_SECONDS"
CLIENTS=${BENCH_PUSH_CLIENTS:-64}; positive BENCH_PUSH_CLIENTS "$CLIENTS"
SINGLES=${BENCH_SINGLE_PUSHES:-200}; positive BENCH_SINGLE_PUSHES "$SINGLES"
RENAMES=${BENCH_RENAMES:-10}; [[ $RENAMES =~ ^[0-9]+$ ]] || { echo "BENCH_RENAMES must be a number: $RENAMES" >&2; exit 2; }
BATCHES=${BENCH_BATCH_PUSHES:-20}; positive BENCH_BATCH_PUSHES "$BATCHES"
BATCH_SIZE=${BENCH_BATCH_SIZE:-1000}; positive BENCH_BATCH_SIZE "$BATCH_SIZE"
ROUNDS=${BENCH_ROUNDS:-3}; positive BENCH_ROUNDS "$ROUNDS"
STEAL_MAX=${BENCH_STEAL_MAX:-0.5}
THREADS=${BENCH_THREADS:-1}
CONNS=${BENCH_CONNS:-32}
WARMUP=${BENCH_WARMUP:-3s}
QUERIES=${BENCH_QUERIES:-200000}
SEED=${BENCH_SEED:-42}
PORT=${BENCH_PORT:-18084}
READY_TIMEOUT=${BENCH_READY_TIMEOUT:-600}
SOAP_PATH=/telephony/ws/VATS
SOAP_URL=http://127.0.0.1:$PORT$SOAP_PATH
# The goals (issue 13).
GOAL_SINGLE_P99_MS=15
GOAL_DIRECTORY_P99_US=1000
GOAL_BATCH_P99_MS=150
GOAL_RECORDS_PER_S=2000
GOAL_P99_RATIO=1.1

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
GATEWAY=$TARGET/release/cti-gateway
GEN=$TARGET/release/examples/gen_counterparties
LOAD=$TARGET/release/examples/push_load
HZ=$(getconf CLK_TCK)
RUN=$(date +%s)-$$
TOKEN=pushbench-token-$RUN

# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"

# ------------------------------------------------------------ helpers

# dist FILE: "p50 p99 max" of the numbers in FILE, one a line (nearest rank),
# or "- - -" when it has none.
dist() {
  sort -n "$1" | awk '{v[NR] = $1}
    function rank(p) { r = int(p * NR / 100); if (r < p * NR / 100) r++; if (r < 1) r = 1; return v[r] }
    END { if (NR == 0) print "- - -"; else print rank(50), rank(99), v[NR] }'
}

# met CONDITION: "MET" when the awk condition holds, else "NOT MET".
met() { awk "BEGIN { exit !($1) }" && echo MET || echo "NOT MET"; }
# num VALUE: VALUE when it is a number, else one larger than any goal (a
# figure that could not be measured ("-") meets no goal).
num() { [[ $1 =~ ^[0-9]+(\.[0-9]+)?$ ]] && echo "$1" || echo 1e18; }

# What every push_load run is given. Fresh phone slots are handed out in
# order: each run starts at NEXT_SLOT, and its result moves NEXT_SLOT past
# the slots it used, so no two pushes of this run share a phone.
LOAD_ARGS=(--addr "127.0.0.1:$PORT" --token "$TOKEN" --soap-path "$SOAP_PATH" --seed "$SEED" --run "$RUN")
NEXT_SLOT=0
# load_result PHASE OUTFILE: sets LOAD_RESULT to the PUSH_RESULT line of a
# push_load run's output and moves NEXT_SLOT on.
load_result() {
  LOAD_RESULT=$(grep '^PUSH_RESULT' "$2") || die "no PUSH_RESULT from push_load $1: $(tail -5 "$TMP/load-$1.log")"
  NEXT_SLOT=$(field next_slot "$LOAD_RESULT")
  [[ $NEXT_SLOT =~ ^[0-9]+$ ]] || die "push_load $1 said no next_slot: $LOAD_RESULT"
}
# load PHASE ARGS...: runs push_load PHASE to its end (bounded), its stderr
# to $TMP/load-PHASE.log; sets LOAD_RESULT.
load() {
  local phase=$1 rc=0
  shift
  timeout 3600 "$LOAD" "$phase" "${LOAD_ARGS[@]}" --first-slot "$NEXT_SLOT" "$@" \
    >"$TMP/$phase.out" 2>>"$TMP/load-$phase.log" || rc=$?
  (( rc == 0 )) || die "push_load $phase failed (rc=$rc): $(tail -5 "$TMP/load-$phase.log")"
  load_result "$phase" "$TMP/$phase.out"
}

# push_log_figures FROM KEY: "p50 p99 max count" of KEY=N in the gateway's
# "push: counterparties upserted" lines written after byte FROM of its log.
push_log_figures() {
  local from=$1 key=$2
  tail -c +"$(( from + 1 ))" "$TMP/gateway.log" | grep 'push: counterparties upserted' \
    | sed -n "s/.* $key=\([0-9]*\).*/\1/p" >"$TMP/figures-$key.txt" || true
  echo "$(dist "$TMP/figures-$key.txt") $(grep -c '' "$TMP/figures-$key.txt" || true)"
}

# steal_s FROM_TICKS: seconds stolen since FROM_TICKS.
steal_s() { awk -v a="$1" -v b="$(steal_ticks)" -v hz="$HZ" 'BEGIN { printf "%.2f", (b - a) / hz }'; }

directory_size() {
  curl -s --max-time 5 "http://127.0.0.1:$PORT/readyz" | sed -n 's/.*"counterparties":\([0-9]*\).*/\1/p'
}

# ------------------------------------------------------------ build and data
if [[ ${BENCH_SKIP_BUILD:-0} != 1 ]]; then
  log "cargo build --release --bin cti-gateway --example gen_counterparties --example push_load"
  cargo build --release --bin cti-gateway --example gen_counterparties --example push_load >&2
fi
for b in "$GATEWAY" "$GEN" "$LOAD"; do [[ -x $b ]] || die "missing $b (build failed?)"; done
need_wrk
command -v curl >/dev/null 2>&1 || die "curl is required"
port_free "$PORT" || die "127.0.0.1:$PORT is already in use (set BENCH_PORT)"

TMP=$(mktemp -d /tmp/cti-push-bench.XXXXXX)
log "work dir $TMP; run $RUN"
CPU=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
log "machine: $(nproc) CPUs ($CPU), $(awk '/MemTotal/ {printf "%.1f GB", $2/1048576}' /proc/meminfo); load average $(cut -d' ' -f1-3 /proc/loadavg)"
generate_counterparties "$COUNT" "$QUERIES" "$SEED"
write_gateway_config "warn,cti_gateway::sources::push=info" "
[api]
token = \"$TOKEN\""

log "starting the gateway with $COUNT counterparties"
start_gateway gateway
READY=$(ready_or_die gateway)
log "ready in $READY ms, RSS $(rss_kb "$GW_PID") kB; waiting (at most ${READY_TIMEOUT} s) for it to be idle (the file's snapshot saved)"
wait_idle "$GW_PID" "$READY_TIMEOUT" >/dev/null
START_SIZE=$(directory_size)
log "idle; $START_SIZE counterparties, RSS $(rss_kb "$GW_PID") kB"

# ------------------------------------------------------------ 1. one-record pushes
log "1. $SINGLES one-record pushes of new records, then $RENAMES renames, each followed by a SayName"
AT=$(file_size "$TMP/gateway.log")
load single --pushes "$SINGLES" --updates "$RENAMES"
SINGLE=$LOAD_RESULT
read -r DIR_P50 DIR_P99 DIR_MAX DIR_N <<<"$(push_log_figures "$AT" directory_us)"
read -r STORE_P50 STORE_P99 STORE_MAX _ <<<"$(push_log_figures "$AT" store_ms)"
S_N=$(field pushes "$SINGLE"); S_ERR=$(field errors "$SINGLE"); S_MISS=$(field say_misses "$SINGLE")
S_P99=$(field p99_ms "$SINGLE")
(( DIR_N == S_N )) || log "1. $DIR_N push lines in the gateway's log for $S_N pushes: the directory figures are of those"
GOAL1=$(met "$(num "$S_P99") <= $GOAL_SINGLE_P99_MS && $(num "$DIR_P99") <= $GOAL_DIRECTORY_P99_US && $S_ERR == 0 && $S_MISS == 0 && $S_N > 0")
log "1. $SINGLE"
log "1. directory_us p50/p99/max $DIR_P50/$DIR_P99/$DIR_MAX over $DIR_N lines; store_ms $STORE_P50/$STORE_P99/$STORE_MAX"

# ------------------------------------------------------------ 2. 1,000-record pushes
log "2. $BATCHES pushes of $BATCH_SIZE new records"
AT=$(file_size "$TMP/gateway.log")
load batch --pushes "$BATCHES" --size "$BATCH_SIZE"
BATCH=$LOAD_RESULT
read -r BDIR_P50 BDIR_P99 BDIR_MAX _ <<<"$(push_log_figures "$AT" directory_us)"
B_P99=$(field p99_ms "$BATCH"); B_ERR=$(field errors "$BATCH"); B_MISS=$(field say_misses "$BATCH")
GOAL2=$(met "$(num "$B_P99") <= $GOAL_BATCH_P99_MS && $B_ERR == 0 && $B_MISS == 0")
log "2. $BATCH"
log "2. directory_us p50/p99/max $BDIR_P50/$BDIR_P99/$BDIR_MAX"

# ------------------------------------------------------------ 3. concurrent pushes, SayName beside them
# The VM's own noise moves p99 by several times within minutes, so control
# and push runs alternate, each push run is compared with the control run just
# before it, and the goal is judged on the median of the ratios.
RATIOS=()
RATES=()
ROWS=()
NOISY=0
C_ERRORS=0
BUSY_STOP=$TMP/busy.stop
for (( round = 1; round <= ROUNDS * 3 && ${#RATIOS[@]} < ROUNDS; round++ )); do
  wait_idle "$GW_PID" >/dev/null
  log "3.$round control: warm-up $WARMUP, then wrk -t$THREADS -c$CONNS -d${PUSH_SECONDS}s beside a SCHED_IDLE busy loop"
  run_wrk "warmup$round" "$SOAP_URL" "$WARMUP" >/dev/null
  rm -f "$BUSY_STOP"
  start_busy_control spin "$BUSY_STOP"
  s0=$(steal_ticks)
  CONTROL=$(run_wrk "control$round" "$SOAP_URL" "${PUSH_SECONDS}s")
  C_STEAL=$(steal_s "$s0")
  : >"$BUSY_STOP"
  for _ in $(seq 1 100); do kill -0 "$BUSY_PID" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$BUSY_PID" 2>/dev/null && die "the busy loop did not stop"
  wait "$BUSY_PID" 2>/dev/null || true
  log "3.$round control: $CONTROL (steal $C_STEAL s)"

  log "3.$round pushes: $CLIENTS clients pushing one record at a time for ${PUSH_SECONDS} s, wrk as above"
  AT=$(file_size "$TMP/gateway.log")
  # In the background, for as long as wrk runs (pushes still waiting at the
  # end are let finish: bounded by push_load's --timeout).
  timeout $(( PUSH_SECONDS + 300 )) "$LOAD" concurrent "${LOAD_ARGS[@]}" --first-slot "$NEXT_SLOT" \
    --clients "$CLIENTS" --seconds "$PUSH_SECONDS" >"$TMP/concurrent$round.out" 2>>"$TMP/load-concurrent.log" &
  LOAD_PID=$!
  PIDS+=("$LOAD_PID")
  s0=$(steal_ticks)
  PUSHING=$(run_wrk "push$round" "$SOAP_URL" "${PUSH_SECONDS}s")
  P_STEAL=$(steal_s "$s0")
  rc=0; wait "$LOAD_PID" || rc=$?
  (( rc == 0 )) || die "push_load concurrent failed (rc=$rc): $(tail -5 "$TMP/load-concurrent.log")"
  load_result concurrent "$TMP/concurrent$round.out"
  CONC=$LOAD_RESULT
  read -r CDIR_P50 CDIR_P99 CDIR_MAX _ <<<"$(push_log_figures "$AT" directory_us)"
  log "3.$round pushes: $PUSHING (steal $P_STEAL s)"
  log "3.$round pushes: $CONC; directory_us p50/p99/max $CDIR_P50/$CDIR_P99/$CDIR_MAX"

  r=$(awk -v p="$(field p99_ms "$PUSHING")" -v c="$(field p99_ms "$CONTROL")" 'BEGIN { printf "%.2f", (c > 0 ? p / c : 0) }')
  rate=$(field records_per_s "$CONC")
  errs=$(( $(field errors "$CONC") + $(field non2xx "$PUSHING") + $(field socket_errors "$PUSHING") ))
  C_ERRORS=$(( C_ERRORS + $(field errors "$CONC") ))
  what="records/s $rate, push p50/p99 $(field p50_ms "$CONC")/$(field p99_ms "$CONC") ms, directory p99 $CDIR_P99 us, errors $(field errors "$CONC")"
  if awk -v c="$C_STEAL" -v p="$P_STEAL" -v m="$STEAL_MAX" 'BEGIN { exit !(c > m || p > m) }'; then
    NOISY=$(( NOISY + 1 )); COUNTED=0
    ROWS+=("$round. control (steal ${C_STEAL}s)|$CONTROL|" "$round. pushes (steal ${P_STEAL}s) NOT COUNTED|$PUSHING|$what")
    log "3.$round: not counted, the hypervisor stole $C_STEAL s / $P_STEAL s of CPU (over $STEAL_MAX s); p99 pushes/control would be $r"
  else
    COUNTED=1
    RATIOS+=("$r")
    RATES+=("$rate")
    ROWS+=("$round. control|$CONTROL|" "$round. pushes|$PUSHING|$what")
    log "3.$round: SayName p99 pushes/control $r; $what"
  fi
  echo "BENCH_RESULT mode=push_pair count=$COUNT round=$round counted=$COUNTED control_p99_ms=$(field p99_ms "$CONTROL") push_p99_ms=$(field p99_ms "$PUSHING") p99_ratio=$r control_steal_s=$C_STEAL push_steal_s=$P_STEAL records_per_s=$rate push_p50_ms=$(field p50_ms "$CONC") push_lat_p99_ms=$(field p99_ms "$CONC") directory_p99_us=$CDIR_P99 errors=$errs" >>"$TMP/pairs.txt"
done
(( ${#RATIOS[@]} > 0 )) || die "every pair had more than $STEAL_MAX s of steal time: the machine is too noisy to measure p99 now"
RATIO=$(median "${RATIOS[@]}")
RATE=$(median "${RATES[@]}")
GOAL3=$(met "$(num "$RATE") >= $GOAL_RECORDS_PER_S && $(num "$RATIO") <= $GOAL_P99_RATIO && $C_ERRORS == 0")

END_SIZE=$(directory_size)
GW_RSS=$(rss_kb "$GW_PID"); GW_HWM=$(hwm_kb "$GW_PID")
WARN=$(grep -ci 'warn\|error' "$TMP/gateway.log" || true)

# ------------------------------------------------------------ report
echo
echo "== Push API: $COUNT counterparties ($START_SIZE at start, $END_SIZE at the end), $(nproc) CPUs =="
printf '%-44s %9s %9s %9s %7s %7s\n' "" "p50 ms" "p99 ms" "max ms" errors misses
printf '%-44s %9s %9s %9s %7s %7s\n' "1. one-record push, round trip (all $S_N)" "$(field p50_ms "$SINGLE")" "$S_P99" "$(field max_ms "$SINGLE")" "$S_ERR" "$S_MISS"
printf '%-44s %9s %9s %9s\n' "   new records only" "$(field insert_p50_ms "$SINGLE")" "$(field insert_p99_ms "$SINGLE")" "$(field insert_max_ms "$SINGLE")"
printf '%-44s %9s %9s %9s\n' "   renames only ($(field rename_pushes "$SINGLE"))" "$(field rename_p50_ms "$SINGLE")" "$(field rename_p99_ms "$SINGLE")" "$(field rename_max_ms "$SINGLE")"
printf '%-44s %9s %9s %9s\n' "   store commit (store_ms, gateway's log)" "$STORE_P50" "$STORE_P99" "$STORE_MAX"
printf '%-44s %9s %9s %9s   (us: %s / %s / %s)\n' "   directory part (directory_us / 1000)" \
  "$(awk -v u="$DIR_P50" 'BEGIN{printf "%.3f", u/1000}')" "$(awk -v u="$DIR_P99" 'BEGIN{printf "%.3f", u/1000}')" \
  "$(awk -v u="$DIR_MAX" 'BEGIN{printf "%.3f", u/1000}')" "$DIR_P50" "$DIR_P99" "$DIR_MAX"
printf '%-44s %9s %9s %9s\n' "   SayName right after the 200 ($(field say_checks "$SINGLE"))" "$(field say_p50_ms "$SINGLE")" "$(field say_p99_ms "$SINGLE")" "$(field say_max_ms "$SINGLE")"
printf '%-44s %9s %9s %9s %7s %7s\n' "2. $BATCH_SIZE-record push, round trip ($(field pushes "$BATCH"))" "$(field p50_ms "$BATCH")" "$B_P99" "$(field max_ms "$BATCH")" "$B_ERR" "$B_MISS"
printf '%-44s %9s %9s %9s   (us)\n' "   directory part (directory_us)" "$BDIR_P50" "$BDIR_P99" "$BDIR_MAX"
echo
echo "3. $CLIENTS clients pushing single records for $PUSH_SECONDS s; SayName wrk -t$THREADS -c$CONNS beside them and beside the control (SCHED_IDLE busy loop)"
printf '%-44s %10s %9s %9s %9s %8s  %s\n' "SayName" "requests/s" "p50 ms" "p99 ms" "p99.9 ms" errors "pushes"
for row in "${ROWS[@]}"; do
  IFS='|' read -r name r what <<<"$row"
  printf '%-44s %10s %9s %9s %9s %8s  %s\n' "$name" "$(field rps "$r")" "$(field p50_ms "$r")" \
    "$(field p99_ms "$r")" "$(field p999_ms "$r")" "$(( $(field non2xx "$r") + $(field socket_errors "$r") ))" "$what"
done
echo "   p99 pushes/control per counted pair: ${RATIOS[*]}; median ${RATIO}x; records/s per counted pair: ${RATES[*]}; median $RATE ($NOISY pairs not counted for steal time)"
echo
echo "goal 1 (one-record push at $COUNT: p99 <= $GOAL_SINGLE_P99_MS ms, directory part p99 <= $GOAL_DIRECTORY_P99_US us, SayName answers right after the 200): $GOAL1 (p99 $S_P99 ms, directory p99 $DIR_P99 us, $S_MISS misses, $S_ERR errors)"
echo "goal 2 ($BATCH_SIZE-record push at $COUNT: p99 <= $GOAL_BATCH_P99_MS ms): $GOAL2 (p99 $B_P99 ms, $B_MISS misses, $B_ERR errors)"
echo "goal 3 ($CLIENTS clients: >= $GOAL_RECORDS_PER_S records/s for $PUSH_SECONDS s, SayName p99 <= ${GOAL_P99_RATIO}x the control's): $GOAL3 (median $RATE records/s, median ratio ${RATIO}x, $C_ERRORS push errors)"
echo "gateway ready in $READY ms; RSS at the end $((GW_RSS / 1024)) MB (peak $((GW_HWM / 1024)) MB)"
if (( WARN > 0 )); then
  echo "gateway log has $WARN warn/error lines: $(grep -i 'warn\|error' "$TMP/gateway.log" | head -3)"
fi
cat "$TMP/pairs.txt"
echo "BENCH_RESULT mode=push_single count=$COUNT pushes=$S_N p50_ms=$(field p50_ms "$SINGLE") p99_ms=$S_P99 max_ms=$(field max_ms "$SINGLE") directory_p50_us=$DIR_P50 directory_p99_us=$DIR_P99 directory_max_us=$DIR_MAX store_p50_ms=$STORE_P50 store_p99_ms=$STORE_P99 say_misses=$S_MISS errors=$S_ERR goal=${GOAL1// /_}"
echo "BENCH_RESULT mode=push_batch count=$COUNT size=$BATCH_SIZE pushes=$(field pushes "$BATCH") p50_ms=$(field p50_ms "$BATCH") p99_ms=$B_P99 max_ms=$(field max_ms "$BATCH") directory_p99_us=$BDIR_P99 say_misses=$B_MISS errors=$B_ERR goal=${GOAL2// /_}"
echo "BENCH_RESULT mode=push_concurrent count=$COUNT clients=$CLIENTS seconds=$PUSH_SECONDS pairs=${#RATIOS[@]} noisy_pairs=$NOISY records_per_s=$RATE rates=$(IFS=,; echo "${RATES[*]}") p99_ratio=$RATIO p99_ratios=$(IFS=,; echo "${RATIOS[*]}") errors=$C_ERRORS goal=${GOAL3// /_} rss_kb=$GW_RSS hwm_kb=$GW_HWM counterparties=$END_SIZE"
