#!/usr/bin/env bash
# Pop-up latency of cti-gateway: IncomingCall (SOAP) -> message on every
# WebSocket screen of the called operator key (issue #4's speed goals).
#
#   bench/popup.sh            both scenarios
#   bench/popup.sh one        1 key x 1000 screens   (goal: p99 <= 10 ms, last screen)
#   bench/popup.sh many       100 keys x 10 screens  (goal: p99 <= 5 ms, last screen of the key)
#
# For each scenario: writes a config with K operators (keys key{i}, tokens
# token-{i:08}), a small directory (one counterparty per call number, from
# `popup_latency --write-directory`), starts `cti-gateway serve --config` on
# 127.0.0.1, waits for /readyz, runs bench/popup_latency.rs (the example
# `popup_latency`: connects the screens, warms up, sends the calls, matches
# frames to calls), and stops the gateway with SIGTERM. Then a summary table
# and one BENCH_RESULT line per scenario.
#
# Environment (defaults in brackets):
#   POPUP_CALLS_ONE [500] POPUP_CALLS_MANY [1000] calls per scenario
#   POPUP_INTERVAL_MS [20] between calls   POPUP_WARMUP [20] warm-up calls
#   POPUP_CLIENT_THREADS [2] tokio workers of the client
#   POPUP_UNKNOWN_RATIO [0.1] share of callers not in the directory
#   POPUP_SEED [42] POPUP_PORT [18081]
#   BENCH_SKIP_BUILD [0] BENCH_KEEP [0] keep the temp dir (configs, logs)
#   CARGO_TARGET_DIR [./target]
# Raises the open-files limit (ulimit -n 8192): 1000 screens are 2000 sockets.
# Everything listens on 127.0.0.1 only. Every wait is bounded. The script stops
# the gateway it started (by pid) when it exits, however it exits.
# Exit status: 0 when every scenario ran clean (nothing lost) and met its goal.

set -euo pipefail

SCENARIOS=(one many)
case "${1:-}" in
  ''|all) ;;
  one|many) SCENARIOS=("$1") ;;
  -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
  *) echo "usage: $0 [all|one|many]" >&2; exit 2 ;;
esac

CALLS_ONE=${POPUP_CALLS_ONE:-500}
CALLS_MANY=${POPUP_CALLS_MANY:-1000}
INTERVAL_MS=${POPUP_INTERVAL_MS:-20}
WARMUP=${POPUP_WARMUP:-20}
CLIENT_THREADS=${POPUP_CLIENT_THREADS:-2}
UNKNOWN_RATIO=${POPUP_UNKNOWN_RATIO:-0.1}
SEED=${POPUP_SEED:-42}
PORT=${POPUP_PORT:-18081}
SOAP_PATH=/telephony/ws/VATS

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
GATEWAY=$TARGET/release/cti-gateway
CLIENT=$TARGET/release/examples/popup_latency

log() { printf '[popup %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# 1000 screens: a socket each on both sides, plus the gateway's own files.
ulimit -n 8192 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true
(( $(ulimit -n) >= 2200 )) || die "open files limit $(ulimit -n) is too low for 1000 screens (need ~2200; ulimit -n 8192)"

# ------------------------------------------------------------ clean-up
TMP=""
GW_PID=""
cleanup() {
  if [[ -n $GW_PID ]] && kill -0 "$GW_PID" 2>/dev/null; then
    kill -TERM "$GW_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$GW_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$GW_PID" 2>/dev/null || true
  fi
  if [[ -n $TMP && -d $TMP ]]; then
    if [[ ${BENCH_KEEP:-0} == 1 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_ready PID TIMEOUT_S: until /readyz answers 200; fails if PID dies.
wait_ready() {
  local pid=$1 deadline code
  deadline=$(( $(date +%s) + $2 ))
  while (( $(date +%s) < deadline )); do
    kill -0 "$pid" 2>/dev/null || return 2
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$PORT/readyz" || true)
    [[ $code == 200 ]] && return 0
    sleep 0.05
  done
  return 1
}

stop_gateway() {
  [[ -n $GW_PID ]] || return 0
  kill -TERM "$GW_PID" 2>/dev/null || true
  for _ in $(seq 1 150); do kill -0 "$GW_PID" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$GW_PID" 2>/dev/null; then
    log "gateway ignored SIGTERM for 15 s: SIGKILL"
    kill -KILL "$GW_PID" 2>/dev/null || true
  fi
  wait "$GW_PID" 2>/dev/null || true
  GW_PID=""
}

# The busiest processes right now (top's second frame: CPU over 0.5 s).
busiest() {
  command -v top >/dev/null 2>&1 || { echo "(no top)"; return; }
  top -b -n 2 -d 0.5 -o %CPU -w 200 2>/dev/null \
    | awk '/^top -/ {n++} n == 2 && $1 ~ /^[0-9]+$/ && $9 + 0 >= 5 {printf "%s %s%%; ", $12, $9}' | head -c 400
}

field() { sed -n "s/.*[[:space:]]$1=\([^[:space:]]*\).*/\1/p" <<<"$2"; }

# write_config DIR KEYS CALLS
write_config() {
  local dir=$1 keys=$2 calls=$3 i
  mkdir -p "$dir"
  "$CLIENT" --write-directory "$dir/counterparties.jsonl" --calls "$calls"
  {
    cat <<EOF
[server]
listen = "127.0.0.1:$PORT"
max_connections = 4096

[soap]
path = "$SOAP_PATH"
username = "SOAP"
password = "123"

[directory]
file = "$dir/counterparties.jsonl"

[store]
path = "$dir/store.sqlite"

[popup]
replay_len = 50
queue_len = 1024

[log]
level = "warn"
EOF
    for (( i = 0; i < keys; i++ )); do
      printf '\n[[operator]]\nkey = "key%d"\ntoken = "token-%08d"\nname = "Оператор %d"\n' "$i" "$i" "$i"
    done
  } >"$dir/gateway.toml"
  chmod 600 "$dir/gateway.toml"
}

# scenario NAME KEYS SCREENS_PER_KEY CALLS GOAL_MS
RESULTS=()
STATUS=0
scenario() {
  local name=$1 keys=$2 spk=$3 calls=$4 goal=$5 dir rc out limit
  dir=$TMP/$name
  write_config "$dir" "$keys" "$calls"
  port_free "$PORT" || die "127.0.0.1:$PORT is already in use (set POPUP_PORT)"
  log "$name: $keys key(s) x $spk screens, $calls calls every $INTERVAL_MS ms; load average $(cut -d' ' -f1-3 /proc/loadavg)"
  log "$name: busiest processes (0.5 s sample): $(busiest)"
  "$GATEWAY" serve --config "$dir/gateway.toml" >"$dir/gateway.log" 2>&1 &
  GW_PID=$!
  rc=0; wait_ready "$GW_PID" 60 || rc=$?
  [[ $rc == 0 ]] || die "gateway not ready (rc=$rc): $(tail -20 "$dir/gateway.log")"

  limit=$(( 120 + (calls + WARMUP) * INTERVAL_MS / 1000 * 2 ))
  rc=0
  timeout "$limit" "$CLIENT" --addr "127.0.0.1:$PORT" --keys "$keys" --screens-per-key "$spk" \
    --calls "$calls" --interval-ms "$INTERVAL_MS" --warmup "$WARMUP" --seed "$SEED" \
    --unknown-ratio "$UNKNOWN_RATIO" --client-threads "$CLIENT_THREADS" \
    --soap-path "$SOAP_PATH" --label "$name" --goal-p99-ms "$goal" --gateway-pid "$GW_PID" >"$dir/client.out" 2>"$dir/client.err" || rc=$?
  GW_RSS=$(awk '/^VmRSS:/ {print $2}' "/proc/$GW_PID/status" 2>/dev/null || echo 0)
  stop_gateway
  grep -v '^BENCH_RESULT' "$dir/client.out" || true
  out=$(grep '^BENCH_RESULT' "$dir/client.out" || true)
  if [[ -z $out ]]; then
    log "$name: no result (exit $rc): $(tail -5 "$dir/client.err")"
    STATUS=1
    RESULTS+=("BENCH_RESULT mode=popup scenario=$name keys=$keys screens_per_key=$spk calls=$calls failed=1 exit=$rc")
    return 0
  fi
  (( rc == 0 )) || STATUS=1
  if grep -qiE 'error|warn' "$dir/gateway.log"; then
    log "$name: the gateway logged: $(grep -iE 'error|warn' "$dir/gateway.log" | head -3 | tr '\n' ' ')"
  fi
  RESULTS+=("$out gateway_rss_kb=$GW_RSS")
}

# ------------------------------------------------------------ build
if [[ ${BENCH_SKIP_BUILD:-0} != 1 ]]; then
  log "cargo build --release --bin cti-gateway --example popup_latency"
  cargo build --release --bin cti-gateway --example popup_latency >&2
fi
for b in "$GATEWAY" "$CLIENT"; do [[ -x $b ]] || die "missing $b (build failed?)"; done
command -v curl >/dev/null 2>&1 || die "curl is required"

TMP=$(mktemp -d /tmp/cti-popup-bench.XXXXXX)
CPU=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
log "machine: $(nproc) CPUs ($CPU); open files limit $(ulimit -n); work dir $TMP"

for s in "${SCENARIOS[@]}"; do
  case $s in
    one)  scenario 1key-x-1000 1 1000 "$CALLS_ONE" 10 ;;
    many) scenario 100keys-x-10 100 10 "$CALLS_MANY" 5 ;;
  esac
done

echo
echo "== pop-up latency summary: ms from IncomingCall written to message read by the screen; $(nproc) CPUs shared by gateway and clients =="
printf '%-14s %7s %6s %9s %6s %8s %8s %8s %8s %8s %8s %8s %7s %5s %4s\n' scenario screens calls received lost \
  "scr p50" "scr p99" "last p50" "last p99" "last max" "soap p99" "gw cpu" other% goal met
for r in "${RESULTS[@]}"; do
  if [[ $(field failed "$r") == 1 ]]; then
    printf '%-14s %s\n' "$(field scenario "$r")" "FAILED (exit $(field exit "$r"))"
    continue
  fi
  printf '%-14s %7s %6s %9s %6s %8s %8s %8s %8s %8s %8s %8s %7s %5s %4s\n' "$(field scenario "$r")" \
    "$(field screens "$r")" "$(field calls "$r")" "$(field received "$r")" "$(field lost "$r")" \
    "$(field screen_p50_ms "$r")" "$(field screen_p99_ms "$r")" "$(field last_p50_ms "$r")" \
    "$(field last_p99_ms "$r")" "$(field last_max_ms "$r")" "$(field soap_p99_ms "$r")" \
    "$(field gateway_cpu_ms_per_call "$r")" "$(field other_cpu_pct "$r")" \
    "$(field goal_p99_ms "$r")" "$( [[ $(field goal_met "$r") == 1 ]] && echo yes || echo no)"
done
echo "(scr: every (call, screen) pair; last: per call, the last screen of the called key; goal: p99 of last, ms;"
echo " gw cpu: gateway CPU ms per call; other%: share of the machine's CPUs used by other processes during the calls)"
for r in "${RESULTS[@]}"; do echo "$r"; done
exit "$STATUS"
