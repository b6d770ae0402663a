#!/usr/bin/env bash
# SayName benchmark of cti-gateway against a hyper "floor", and its memory use.
#
#   bench/run.sh                      throughput, 100000 counterparties
#   bench/run.sh throughput 500000    throughput, 500000 counterparties
#   bench/run.sh memory               memory and start-up, 1000000 counterparties
#   bench/run.sh memory 250000
#
# throughput: builds release, generates N counterparties and 200000 caller
#   numbers (~90% known), starts `cti-gateway serve --config` on 127.0.0.1,
#   waits for /readyz, asks one SayName to learn the answer size, starts
#   bench/floor_server.rs answering a body of the same size, warms both up,
#   then runs BENCH_ROUNDS rounds of wrk (keep-alive, bench/saynames.lua):
#   the gateway, then the floor. Prints every round's requests/s, p50, p99
#   and ratio gateway/floor, the median ratio, the lowest, the ratio of the
#   median p99s, each against issue 13's goals, and the gateway's RSS.
#   With BENCH_FLOOR_SPIN_NS > 0 each round also runs a third server, the
#   floor made that many nanoseconds slower per request (floor_server
#   --spin-ns), and prints its p99 against the floor's: how far the
#   closed-loop p99 moves for a server that does a fraction of a microsecond
#   more work than the floor (the yardstick's resolution).
#   Then, for each rate of BENCH_TAIL_RATE, per round, both servers at that
#   fixed rate (bench/open_loop.rs, SayName/s over the same connections):
#   the p50/p99 a PBX sees when the cores are not saturated, and the ratio of
#   the median p99s.
# memory: generates N, starts the gateway, records time to /readyz and RSS,
#   stops it with SIGTERM, starts it again on the same store and records the
#   time from process start to /readyz 200 (start-up from snapshot); then once
#   more with the JSON Lines file moved away (the snapshot is all there is).
#
# Environment (defaults in brackets):
#   BENCH_THREADS [1] BENCH_CONNS [32] BENCH_DURATION [20s] BENCH_WARMUP [5s]
#   BENCH_ROUNDS [3] interleaved rounds (gateway, then floor) of throughput
#   BENCH_QUERIES [200000] BENCH_SEED [42] BENCH_PORT [18080] FLOOR_PORT [19090]
#   BENCH_READY_TIMEOUT [300] seconds to wait for /readyz
#   BENCH_FLOOR_SPIN_NS [100] the calibration floor's extra CPU per request
#     (0: no calibration runs)   SPIN_PORT [19091] its port
#   BENCH_TAIL_RATE ["20000 60000"] requests/s of the fixed-rate runs, one or
#     more (0: none)
#   BENCH_TAIL_SECONDS [10] seconds per fixed-rate run
#   BENCH_SKIP_BUILD [0] BENCH_KEEP [0] keep the temp dir (data, config, logs)
#   BENCH_PROFILE [release] cargo profile to build and run (dev: a smoke run, or
#     a memory A/B on a busy machine; heap figures hold, times do not)
#   BENCH_GATEWAY [the profile's cti-gateway] another gateway binary to measure
#     (an A/B: a copy of the build before a change)
#   CARGO_TARGET_DIR [./target]
# Everything listens on 127.0.0.1 only. Every wait is bounded. The script stops
# the processes it started (by pid) when it exits, however it exits.
#
# Lines starting with BENCH_RESULT are machine-readable (key=value).

set -euo pipefail

MODE=throughput
case "${1:-}" in
  throughput|memory) MODE=$1; shift ;;
  ''|[0-9]*) ;;
  -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
  *) echo "usage: $0 [throughput|memory] [COUNT]" >&2; exit 2 ;;
esac
if [[ $MODE == memory ]]; then COUNT=${1:-1000000}; else COUNT=${1:-100000}; fi
[[ $COUNT =~ ^[0-9]+$ ]] || { echo "COUNT must be a number: $COUNT" >&2; exit 2; }

THREADS=${BENCH_THREADS:-1}
CONNS=${BENCH_CONNS:-32}
DURATION=${BENCH_DURATION:-20s}
ROUNDS=${BENCH_ROUNDS:-3}
WARMUP=${BENCH_WARMUP:-5s}
QUERIES=${BENCH_QUERIES:-200000}
SEED=${BENCH_SEED:-42}
PORT=${BENCH_PORT:-18080}
FPORT=${FLOOR_PORT:-19090}
SPIN_NS=${BENCH_FLOOR_SPIN_NS:-100}
SPORT=${SPIN_PORT:-19091}
[[ $SPIN_NS =~ ^[0-9]+$ ]] || { echo "BENCH_FLOOR_SPIN_NS must be a number of nanoseconds: $SPIN_NS" >&2; exit 2; }
READY_TIMEOUT=${BENCH_READY_TIMEOUT:-300}
TAIL_SECONDS=${BENCH_TAIL_SECONDS:-10}
SOAP_PATH=/telephony/ws/VATS

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
PROFILE=${BENCH_PROFILE:-release}
[[ $PROFILE =~ ^[a-z][a-z0-9_-]*$ ]] || { echo "BENCH_PROFILE must be a cargo profile name: $PROFILE" >&2; exit 2; }
# cargo puts the dev profile's output under debug/.
OUT=$TARGET/$([[ $PROFILE == dev ]] && echo debug || echo "$PROFILE")
GATEWAY=${BENCH_GATEWAY:-$OUT/cti-gateway}
GEN=$OUT/examples/gen_counterparties
FLOOR=$OUT/examples/floor_server

# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"
set_tail_rates "${BENCH_TAIL_RATE:-20000 60000}"

# ------------------------------------------------------------ helpers

# Sizes of the store files (sqlite, -wal, -shm), in bytes.
store_bytes() { du -cb "$TMP"/store.sqlite* 2>/dev/null | awk 'END {print $1+0}'; }

# Waits (at most 120 s) until the store stops growing for 3 s: the snapshot
# of a freshly loaded directory may be written after /readyz turns 200.
wait_store_settled() {
  local last=-1 cur stable=0
  for _ in $(seq 1 240); do
    cur=$(store_bytes)
    if [[ $cur == "$last" && $cur -gt 0 ]]; then
      stable=$((stable + 1))
      (( stable >= 6 )) && break
    else
      stable=0
    fi
    last=$cur
    sleep 0.5
  done
  echo "$cur"
}

# ------------------------------------------------------------ build and data
if [[ ${BENCH_SKIP_BUILD:-0} != 1 ]]; then
  log "cargo build --profile $PROFILE --examples --bins"
  cargo build --profile "$PROFILE" --examples --bins >&2
fi
for b in "$GATEWAY" "$GEN" "$FLOOR"; do [[ -x $b ]] || die "missing $b (build failed?)"; done

need_wrk
command -v curl >/dev/null 2>&1 || die "curl is required"

TMP=$(mktemp -d /tmp/cti-bench.XXXXXX)
log "work dir $TMP"
[[ $MODE == memory ]] && QUERIES=1000
generate_counterparties "$COUNT" "$QUERIES" "$SEED"
JSONL_BYTES=$(stat -c %s "$TMP/counterparties.jsonl")
write_gateway_config

CPU=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
log "machine: $(nproc) CPUs ($CPU), $(awk '/MemTotal/ {printf "%.1f GB", $2/1048576}' /proc/meminfo); load average $(cut -d' ' -f1-3 /proc/loadavg)"

# ------------------------------------------------------------ memory mode
if [[ $MODE == memory ]]; then
  log "start 1: $COUNT counterparties from JSON Lines ($((JSONL_BYTES / 1000000)) MB), empty store"
  start_gateway gateway-1
  READY1=$(ready_or_die gateway-1)
  RSS1=$(rss_kb "$GW_PID"); HWM1=$(hwm_kb "$GW_PID")
  log "ready in ${READY1} ms; RSS ${RSS1} kB (peak ${HWM1} kB); waiting for the store to settle"
  # The snapshot save runs after /readyz; a dev build's takes minutes and its
  # first seconds (the diff on a read connection) leave the file as it was,
  # which the size alone would take for settled. Its CPU shows it at work.
  wait_idle "$GW_PID" 900 >/dev/null
  STORE=$(wait_store_settled)
  RSS1B=$(rss_kb "$GW_PID"); HWM1B=$(hwm_kb "$GW_PID")
  READYZ1=$(curl -s --max-time 2 "http://127.0.0.1:$PORT/readyz" || true)
  STOP1=$(stop_pid "$GW_PID")
  log "store ${STORE} bytes; RSS after settle ${RSS1B} kB (peak ${HWM1B} kB); stopped in ${STOP1} ms"

  log "start 2: same config, store from start 1"
  start_gateway gateway-2
  READY2=$(ready_or_die gateway-2)
  RSS2=$(rss_kb "$GW_PID")
  READYZ2=$(curl -s --max-time 2 "http://127.0.0.1:$PORT/readyz" || true)
  sleep 5   # let a reload of the file (if it does one) finish before measuring again
  RSS2B=$(rss_kb "$GW_PID"); HWM2=$(hwm_kb "$GW_PID")
  STOP2=$(stop_pid "$GW_PID")
  log "ready in ${READY2} ms; RSS ${RSS2} kB at ready, ${RSS2B} kB 5 s later (peak ${HWM2} kB)"

  log "start 3: JSON Lines file moved away, only the store"
  mv "$TMP/counterparties.jsonl" "$TMP/counterparties.jsonl.away"
  start_gateway gateway-3
  rc=0; wait_http "http://127.0.0.1:$PORT/readyz" "$GW_PID" "$READY_TIMEOUT" || rc=$?
  if [[ $rc == 0 ]]; then
    READY3=$(ms_since "$GW_T0"); RSS3=$(rss_kb "$GW_PID")
    READYZ3=$(curl -s --max-time 2 "http://127.0.0.1:$PORT/readyz" || true)
    stop_pid "$GW_PID" >/dev/null
  else
    READY3="failed(rc=$rc)"; RSS3=0; READYZ3="$(tail -5 "$TMP/gateway-3.log" | tr '\n' ' ')"
    kill -0 "$GW_PID" 2>/dev/null && stop_pid "$GW_PID" >/dev/null
  fi
  mv "$TMP/counterparties.jsonl.away" "$TMP/counterparties.jsonl"

  echo
  echo "== cti-gateway memory and start-up: $COUNT counterparties ($((JSONL_BYTES / 1000000)) MB JSON Lines), $(nproc) CPUs, $PROFILE build =="
  printf '%-44s %s\n' "load from JSON Lines, empty store: ready in" "$READY1 ms"
  printf '%-44s %s\n' "  RSS at ready / after store settled" "$((RSS1 / 1024)) MB / $((RSS1B / 1024)) MB (peak $((HWM1B / 1024)) MB)"
  printf '%-44s %s\n' "  bytes per counterparty (RSS / N)" "$((RSS1B * 1024 / (COUNT > 0 ? COUNT : 1)))"
  printf '%-44s %s\n' "  store on disk" "$((STORE / 1000000)) MB"
  printf '%-44s %s\n' "  SIGTERM to exit" "$STOP1 ms"
  printf '%-44s %s\n' "start-up from snapshot (same config): ready in" "$READY2 ms"
  printf '%-44s %s\n' "  RSS at ready / 5 s later" "$((RSS2 / 1024)) MB / $((RSS2B / 1024)) MB (peak $((HWM2 / 1024)) MB)"
  printf '%-44s %s\n' "start-up from snapshot only (file gone)" "$READY3 ms, RSS $((RSS3 / 1024)) MB"
  echo "/readyz after start 1: $READYZ1"
  echo "/readyz after start 2: $READYZ2"
  echo "/readyz after start 3: $READYZ3"
  echo "BENCH_RESULT mode=memory profile=$PROFILE count=$COUNT jsonl_bytes=$JSONL_BYTES ready_from_file_ms=$READY1 rss_kb=$RSS1B hwm_kb=$HWM1B bytes_per_counterparty=$((RSS1B * 1024 / (COUNT > 0 ? COUNT : 1))) store_bytes=$STORE stop_ms=$STOP1 ready_from_snapshot_ms=$READY2 rss_after_snapshot_kb=$RSS2B ready_snapshot_only_ms=$READY3"
  exit 0
fi

# ------------------------------------------------------------ throughput mode
log "starting gateway with $COUNT counterparties"
start_gateway gateway
READY=$(ready_or_die gateway)
log "gateway ready in ${READY} ms, RSS $(rss_kb "$GW_PID") kB"

# One known answer: its size sizes the floor's body.
SIZE=0
i=0
while read -r number && (( i < 50 )); do
  i=$((i + 1))
  res=$(say_name "$number" "$TMP/answer.xml")
  code=${res%% *}; size=${res##* }
  [[ $code == 200 ]] || die "SayName $number answered HTTP $code: $(head -c 400 "$TMP/answer.xml")"
  if grep -q '&lt;title&gt;[^&]' "$TMP/answer.xml"; then SIZE=$size; SAMPLE=$number; break; fi
done <"$TMP/numbers.txt"
(( SIZE > 0 )) || die "none of the first 50 numbers got a known answer: $(head -c 600 "$TMP/answer.xml")"
log "SayName $SAMPLE -> $SIZE bytes:"
{ sed "s/^/    /" "$TMP/answer.xml"; echo; } >&2

URL="http://127.0.0.1:$PORT$SOAP_PATH"
port_free "$FPORT" || die "127.0.0.1:$FPORT is already in use (set FLOOR_PORT)"
"$FLOOR" --listen "127.0.0.1:$FPORT" --size "$SIZE" >"$TMP/floor.log" 2>&1 &
FL_PID=$!
PIDS+=("$FL_PID")
rc=0; wait_http "http://127.0.0.1:$FPORT/" "$FL_PID" 30 || rc=$?
[[ $rc == 0 ]] || die "floor_server did not start: $(cat "$TMP/floor.log")"
FURL="http://127.0.0.1:$FPORT$SOAP_PATH"
if (( SPIN_NS > 0 )); then
  # The calibration floor: the same server, SPIN_NS slower per request.
  port_free "$SPORT" || die "127.0.0.1:$SPORT is already in use (set SPIN_PORT)"
  "$FLOOR" --listen "127.0.0.1:$SPORT" --size "$SIZE" --spin-ns "$SPIN_NS" >"$TMP/floor-spin.log" 2>&1 &
  SP_PID=$!
  PIDS+=("$SP_PID")
  rc=0; wait_http "http://127.0.0.1:$SPORT/" "$SP_PID" 30 || rc=$?
  [[ $rc == 0 ]] || die "floor_server --spin-ns did not start: $(cat "$TMP/floor-spin.log")"
  SURL="http://127.0.0.1:$SPORT$SOAP_PATH"
fi
log "warm-up $WARMUP each"
run_wrk gateway-warmup "$URL" "$WARMUP" >/dev/null
run_wrk floor-warmup "$FURL" "$WARMUP" >/dev/null
(( SPIN_NS > 0 )) && run_wrk floor-spin-warmup "$SURL" "$WARMUP" >/dev/null

# Interleaved rounds, gateway then floor, both servers up throughout: this
# VM's floor moves by ±20% between runs minutes apart, so each round's ratio
# compares runs seconds apart, and the goal is judged on the median round.
GWS=(); FLS=(); SPS=(); RATIOS=()
for ((r = 1; r <= ROUNDS; r++)); do
  log "round $r/$ROUNDS: gateway, then floor$( (( SPIN_NS > 0 )) && echo ", then floor+${SPIN_NS}ns"): wrk -t$THREADS -c$CONNS -d$DURATION"
  G=$(run_wrk "gateway-$r" "$URL" "$DURATION")
  F=$(run_wrk "floor-$r" "$FURL" "$DURATION")
  (( SPIN_NS > 0 )) && SPS+=("$(run_wrk "floor-spin-$r" "$SURL" "$DURATION")")
  GWS+=("$G"); FLS+=("$F")
  RATIOS+=("$(awk -v g="$(field rps "$G")" -v f="$(field rps "$F")" 'BEGIN { printf "%.2f", (f > 0 ? g / f : 0) }')")
done
# The same servers at a fixed rate (bench/open_loop.rs): the latency a PBX
# sees, with the cores not saturated; wrk's p99 above is queueing at
# saturation, where a fraction of a microsecond of CPU per request moves it.
TAIL_REPORTS=()
if [[ -n $TAIL_RATES ]]; then
  OPEN_LOOP=$OUT/examples/open_loop
  [[ -x $OPEN_LOOP ]] || die "missing $OPEN_LOOP (build failed?)"
  fixed_rate_rounds tail "== SayName at a fixed rate: %s/s over $CONNS keep-alive connections, ${TAIL_SECONDS}s per run, latency from write to whole answer (bench/open_loop.rs) =="
fi
GW_RSS=$(rss_kb "$GW_PID"); GW_HWM=$(hwm_kb "$GW_PID")
log "answers check (3 s, wrk reads every body)"
CHECK=$(run_wrk gateway-check "$URL" 3s BENCH_CHECK=1)
METRICS_LINES=$(curl -s --max-time 2 "http://127.0.0.1:$PORT/metrics" | grep -c '' || true)
stop_pid "$GW_PID" >/dev/null
stop_pid "$FL_PID" >/dev/null
(( SPIN_NS > 0 )) && stop_pid "$SP_PID" >/dev/null

column() { local key=$1; shift; for r in "$@"; do field "$key" "$r"; done; }
ratio=$(median "${RATIOS[@]}")
low=$(printf '%s\n' "${RATIOS[@]}" | sort -g | head -1)
g_p99=$(median $(column p99_ms "${GWS[@]}")); f_p99=$(median $(column p99_ms "${FLS[@]}"))
p99_ratio=$(awk -v g="$g_p99" -v f="$f_p99" 'BEGIN { printf "%.2f", (f > 0 ? g / f : 0) }')
g_rps=$(median $(column rps "${GWS[@]}")); f_rps=$(median $(column rps "${FLS[@]}"))
bpc=$(( GW_RSS * 1024 / (COUNT > 0 ? COUNT : 1) ))
met() { awk -v v="$1" -v op="$2" -v g="$3" 'BEGIN { ok = (op == ">=" ? v >= g : v <= g); print (ok ? "MET" : "NOT MET") }'; }

echo
echo "== SayName: $COUNT counterparties, wrk -t$THREADS -c$CONNS -d$DURATION keep-alive, answer $SIZE bytes, $(nproc) CPUs, $ROUNDS interleaved rounds =="
printf '%-14s %12s %9s %9s %9s %9s %8s %8s\n' server "requests/s" "p50 ms" "p90 ms" "p99 ms" "p99.9 ms" non2xx errors
for ((r = 0; r < ROUNDS; r++)); do
  rows=("gateway $((r + 1))|${GWS[r]}" "floor $((r + 1))|${FLS[r]}")
  (( SPIN_NS > 0 )) && rows+=("floor+${SPIN_NS}ns $((r + 1))|${SPS[r]}")
  for row in "${rows[@]}"; do
    name=${row%%|*}; v=${row#*|}
    printf '%-14s %12s %9s %9s %9s %9s %8s %8s\n' "$name" "$(field rps "$v")" "$(field p50_ms "$v")" \
      "$(field p90_ms "$v")" "$(field p99_ms "$v")" "$(field p999_ms "$v")" "$(field non2xx "$v")" "$(field socket_errors "$v")"
  done
  printf '%-14s %12s\n' "  ratio" "${RATIOS[r]}"
done
echo "gateway/floor requests/s per round: ${RATIOS[*]}; median $ratio (goal >= 0.85: $(met "$ratio" ">=" 0.85)), lowest $low (goal >= 0.75: $(met "$low" ">=" 0.75))"
echo "p99 median gateway $g_p99 ms / floor $f_p99 ms = $p99_ratio (goal <= 1.2: $(met "$p99_ratio" "<=" 1.2))"
SPIN_FIELDS=""
if (( SPIN_NS > 0 )); then
  s_p99=$(median $(column p99_ms "${SPS[@]}")); s_rps=$(median $(column rps "${SPS[@]}"))
  s_p99_ratio=$(awk -v g="$s_p99" -v f="$f_p99" 'BEGIN { printf "%.2f", (f > 0 ? g / f : 0) }')
  s_ratio=$(awk -v g="$s_rps" -v f="$f_rps" 'BEGIN { printf "%.2f", (f > 0 ? g / f : 0) }')
  echo "calibration: the floor ${SPIN_NS} ns slower per request: requests/s $s_ratio of the floor's, p99 median $s_p99 ms / floor $f_p99 ms = $s_p99_ratio (the same p99 goal, applied to it: $(met "$s_p99_ratio" "<=" 1.2))"
  SPIN_FIELDS=" spin_ns=$SPIN_NS spin_rps=$s_rps spin_p99_ms=$s_p99 spin_p99_ratio=$s_p99_ratio"
fi
for report in "${TAIL_REPORTS[@]}"; do
  echo
  cat "$report"
done
echo "gateway ready in $READY ms; RSS after the runs $((GW_RSS / 1024)) MB (peak $((GW_HWM / 1024)) MB) = $bpc bytes per counterparty (whole process / N)"
echo "answers check: known=$(field known "$CHECK") unknown=$(field unknown "$CHECK") non2xx=$(field non2xx "$CHECK") (numbers file: ~90% known)"
echo "BENCH_RESULT mode=throughput count=$COUNT threads=$THREADS conns=$CONNS duration=$DURATION rounds=$ROUNDS answer_bytes=$SIZE gateway_rps=$g_rps gateway_p99_ms=$g_p99 floor_rps=$f_rps floor_p99_ms=$f_p99 ratio=$ratio ratios=$(IFS=,; echo "${RATIOS[*]}") lowest_ratio=$low p99_ratio=$p99_ratio rss_kb=$GW_RSS bytes_per_counterparty=$bpc ready_ms=$READY metrics_lines=$METRICS_LINES$SPIN_FIELDS"
