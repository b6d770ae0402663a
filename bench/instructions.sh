#!/usr/bin/env bash
# Instructions per SayName, of the gateway and of the bare hyper floor
# (bench/floor_server.rs), counted by valgrind's callgrind: a figure that
# stays put whatever else the machine runs, where requests/s on two shared
# cores move by 10-20% between runs. For an A/B of a hot-path change.
#
#   bench/instructions.sh                  the build's gateway and the floor
#   BENCH_GATEWAY=/tmp/gw-before bench/instructions.sh    another gateway binary
#
# Starts each server under `valgrind --tool=callgrind --instr-atstart=no`,
# waits until it answers, warms it up with wrk (3 s), switches the
# instrumentation on (callgrind_control -i on), runs wrk -t1 -c4 for
# BENCH_DURATION over bench/saynames.lua, switches it off, stops the server
# and divides callgrind's instruction total by the requests wrk counted.
# Counts user-space instructions only (the kernel's socket work is not in
# them) and not cache misses: pair it with bench/run.sh for time.
#
# Environment: BENCH_COUNT [1000] counterparties (the instruction count hardly
# depends on it; a small directory starts fast under valgrind), BENCH_DURATION
# [10s], BENCH_PORT [18080], FLOOR_PORT [19090], BENCH_SKIP_BUILD, BENCH_KEEP,
# BENCH_GATEWAY, CARGO_TARGET_DIR as bench/run.sh. Needs valgrind (installed
# with apt-get when missing, as wrk is) and a release build (about 10 minutes).
#
# Prints BENCH_RESULT mode=instructions gateway_ir_per_request=...
# floor_ir_per_request=... ratio=...

set -euo pipefail

COUNT=${BENCH_COUNT:-1000}
DURATION=${BENCH_DURATION:-10s}
PORT=${BENCH_PORT:-18080}
FPORT=${FLOOR_PORT:-19090}
READY_TIMEOUT=${BENCH_READY_TIMEOUT:-300}
THREADS=1
CONNS=4
SOAP_PATH=/telephony/ws/VATS

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
OUT=$TARGET/release
GATEWAY=${BENCH_GATEWAY:-$OUT/cti-gateway}
GEN=$OUT/examples/gen_counterparties
FLOOR=$OUT/examples/floor_server

# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"

if [[ ${BENCH_SKIP_BUILD:-0} != 1 ]]; then
  log "cargo build --release --bin cti-gateway --example gen_counterparties --example floor_server"
  cargo build --release --bin cti-gateway --example gen_counterparties --example floor_server >&2
fi
for b in "$GATEWAY" "$GEN" "$FLOOR"; do [[ -x $b ]] || die "missing $b (build failed?)"; done
need_wrk
if ! command -v valgrind >/dev/null 2>&1; then
  log "valgrind not found: apt-get install -y valgrind"
  if [[ $(id -u) == 0 ]]; then apt-get install -y valgrind >&2 || { apt-get update >&2 && apt-get install -y valgrind >&2; }
  else sudo apt-get install -y valgrind >&2; fi
fi
command -v callgrind_control >/dev/null 2>&1 || die "valgrind (callgrind_control) is required"

TMP=$(mktemp -d /tmp/cti-instructions.XXXXXX)
log "work dir $TMP"
generate_counterparties "$COUNT" 200000 42
write_gateway_config

# count NAME PORT CMD...: instructions per SayName of the server CMD starts.
count() {
  local name=$1 port=$2 pid requests total
  shift 2
  port_free "$port" || die "127.0.0.1:$port is already in use"
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$TMP/$name.callgrind" \
    "$@" >"$TMP/$name.log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  # Any HTTP answer will do: the floor has no /readyz, the gateway's is 200 once loaded.
  local waited=0
  until curl -s -o /dev/null --max-time 5 "http://127.0.0.1:$port/readyz" &&
    [[ $name != gateway || $(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$port/readyz") == 200 ]]; do
    kill -0 "$pid" 2>/dev/null || die "$name exited: $(tail -5 "$TMP/$name.log")"
    (( waited++ < READY_TIMEOUT * 2 )) || die "$name not ready after ${READY_TIMEOUT}s"
    sleep 0.5
  done
  local url="http://127.0.0.1:$port$SOAP_PATH"
  run_wrk "$name-warmup" "$url" 3s >/dev/null
  callgrind_control -i on "$pid" >/dev/null
  run_wrk "$name" "$url" "$DURATION" >/dev/null
  callgrind_control -i off "$pid" >/dev/null
  stop_pid "$pid" >/dev/null
  requests=$(awk '/requests in/ {print $1}' "$TMP/wrk-$name.txt")
  total=$(callgrind_annotate "$TMP/$name.callgrind" 2>/dev/null |
    awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}')
  [[ -n $requests && $requests -gt 0 && -n $total ]] || die "no count for $name: $(tail -5 "$TMP/wrk-$name.txt")"
  log "$name: $requests requests, $total instructions"
  echo $(( total / requests ))
}

log "gateway under callgrind ($COUNT counterparties)"
G=$(count gateway "$PORT" "$GATEWAY" serve --config "$TMP/gateway.toml")
log "floor under callgrind"
# A body of a known caller's answer's size (bench/run.sh measures it; the
# count hardly depends on it).
F=$(count floor "$FPORT" "$FLOOR" --listen "127.0.0.1:$FPORT" --size 577)
RATIO=$(awk -v g="$G" -v f="$F" 'BEGIN { printf "%.2f", g / f }')

echo
echo "== SayName: user-space instructions per request (callgrind), wrk -t$THREADS -c$CONNS -d$DURATION, $COUNT counterparties =="
printf '%-10s %12s\n' server "instr/req"
printf '%-10s %12s\n' gateway "$G" floor "$F"
echo "gateway/floor: $RATIO"
echo "BENCH_RESULT mode=instructions count=$COUNT duration=$DURATION gateway_ir_per_request=$G floor_ir_per_request=$F ratio=$RATIO"
