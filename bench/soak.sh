#!/usr/bin/env bash
# Soak of cti-gateway: DURATION of steady, moderate mixed load, on 127.0.0.1.
#
#   bench/soak.sh             10 minutes
#   bench/soak.sh 60s         a quick run (any of 600, 90s, 10m)
#
# Builds release (cti-gateway, onec_mock, soak_load), starts the mock 1C
# (bench/onec_mock.rs) with COUNT counterparties, and the gateway with [onec]
# pointed at it (refresh every SOAK_REFRESH), an [api] token, KEYS operators
# (key{i} / token-{i:08}) and its store in a temp dir; waits for the first 1C
# read; then runs bench/soak_load.rs (the example soak_load) for DURATION:
#   - SayName ~SAY_RATE/s over SAY_CONNS keep-alive connections (callers 1C
#     lists, 5% unknown ones the gateway asks 1C about live, 5% pushed ones);
#   - IncomingCall ~CALL_RATE/s to random operator keys;
#   - KEYS x SCREENS_PER_KEY WebSocket screens connected the whole time
#     (every screen of the called key must get each pop-up, in seq order;
#     the gateway pings them every 10 s);
#   - a pool of 1,000 records pushed once before the load, then a push of
#     PUSH_BATCH of them every second (POST /api/v1/counterparties, new names)
#     and a DELETE of one every 10 s;
#   - SIGHUP to the gateway every minute (a 1C read at once) and SIGUSR1 to the
#     mock every 2 minutes from 15 s (it re-writes every record, so the next
#     read changes them all; the warm-up holds one such read); a short run
#     scales both to a third of its length;
# Every 10 s a line: p50/p99/max per operation in that window, errors, frames
# received vs expected, screens up, 1C reads, the gateway's RSS and CPU, load
# average. At the end: totals, p50/p99/max per operation over the whole run
# (SayName also by caller: listed by 1C, unknown, pushed), the gateway's RSS at
# start (median of the 1 s samples over the minute after a 1-minute warm-up;
# for a short run, 10% of it for each, at least 10 s for the span) and at end
# (median of the last minute) and its growth, plus the single samples and the
# least-squares trend (bench/soak_load.rs says why medians), and BENCH_RESULT
# lines (key=value). The RSS samples are kept in the temp dir (rss.tsv).
# Goals (issue): zero errors; RSS growth after warm-up under 5%.
#
# Environment (defaults in brackets):
#   SOAK_COUNT [20000] counterparties in the mock 1C
#   SOAK_KEYS [20] SOAK_SCREENS_PER_KEY [10] operators and screens per operator
#   SOAK_SAY_RATE [500] SOAK_SAY_CONNS [4] SOAK_CALL_RATE [5] SOAK_PUSH_BATCH [10]
#   SOAK_REFRESH [30s] onec.refresh   SOAK_PORT [18083] gateway port
#   SOAK_CLIENT_THREADS [2] tokio workers of the load
#   BENCH_SKIP_BUILD [0] BENCH_KEEP [0] keep the temp dir (config, logs, output)
#   CARGO_TARGET_DIR [./target]
# Everything listens on 127.0.0.1 only. Every wait is bounded; every request
# of the load has a 5 s timeout and the load ends at DURATION. The script
# stops the processes it started (by pid) when it exits, however it exits.
# Exit status: 0 when no error was counted and RSS grew by less than 5%; 1
# otherwise (or when something could not start).

set -euo pipefail

case "${1:-}" in
  -h|--help) sed -n '2,/^$/p' "$0"; exit 0 ;;
esac
DURATION_ARG=${1:-10m}
case $DURATION_ARG in
  *m) [[ ${DURATION_ARG%m} =~ ^[0-9]+$ ]] && DURATION_S=$(( ${DURATION_ARG%m} * 60 )) ;;
  *s) [[ ${DURATION_ARG%s} =~ ^[0-9]+$ ]] && DURATION_S=${DURATION_ARG%s} ;;
  *) [[ $DURATION_ARG =~ ^[0-9]+$ ]] && DURATION_S=$DURATION_ARG ;;
esac
[[ ${DURATION_S:-} =~ ^[0-9]+$ ]] && (( DURATION_S >= 10 )) \
  || { echo "usage: $0 [DURATION] (e.g. 10m, 60s, 600; at least 10 s)" >&2; exit 2; }

COUNT=${SOAK_COUNT:-20000}
KEYS=${SOAK_KEYS:-20}
SCREENS_PER_KEY=${SOAK_SCREENS_PER_KEY:-10}
SAY_RATE=${SOAK_SAY_RATE:-500}
SAY_CONNS=${SOAK_SAY_CONNS:-4}
CALL_RATE=${SOAK_CALL_RATE:-5}
PUSH_BATCH=${SOAK_PUSH_BATCH:-10}
REFRESH=${SOAK_REFRESH:-30s}
PORT=${SOAK_PORT:-18083}
CLIENT_THREADS=${SOAK_CLIENT_THREADS:-2}
SOAP_PATH=/telephony/ws/VATS
API_TOKEN=soak-api-token-$$
for v in COUNT KEYS SCREENS_PER_KEY SAY_CONNS PUSH_BATCH PORT CLIENT_THREADS; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "SOAK_$v must be a positive number: ${!v}" >&2; exit 2; }
done

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
GATEWAY=$TARGET/release/cti-gateway
MOCK=$TARGET/release/examples/onec_mock
LOAD=$TARGET/release/examples/soak_load

# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"   # log, die, cleanup of PIDS and TMP on exit, rss_kb

# 200 screens: a socket each on both sides, plus the SOAP and 1C connections.
ulimit -n 4096 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true
(( $(ulimit -n) >= 1024 )) || die "open files limit $(ulimit -n) is too low (ulimit -n 4096)"

# ------------------------------------------------------------ build
if [[ ${BENCH_SKIP_BUILD:-0} != 1 ]]; then
  log "cargo build --release --bin cti-gateway --example onec_mock --example soak_load"
  cargo build --release --bin cti-gateway --example onec_mock --example soak_load >&2
fi
for b in "$GATEWAY" "$MOCK" "$LOAD"; do [[ -x $b ]] || die "missing $b (build failed?)"; done
command -v curl >/dev/null 2>&1 || die "curl is required"
port_free "$PORT" || die "127.0.0.1:$PORT is already in use (set SOAK_PORT)"

TMP=$(mktemp -d /tmp/cti-soak.XXXXXX)
CPU=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
log "machine: $(nproc) CPUs ($CPU), $(awk '/MemTotal/ {printf "%.1f GB", $2/1048576}' /proc/meminfo); load average $LOAD_START; work dir $TMP"

# ------------------------------------------------------------ mock 1C
start_mock_onec "$COUNT"

# ------------------------------------------------------------ gateway
{
  cat <<EOF
[server]
listen = "127.0.0.1:$PORT"
max_connections_per_address = 100000   # every bench client comes from 127.0.0.1
max_connections = 1024

[soap]
path = "$SOAP_PATH"
username = "SOAP"
password = "123"

[onec]
odata_url = "$URL"
username = "odata"
password = "secret"
refresh = "$REFRESH"
category_field = "КатегорияКлиента"
manager_phone_field = "ДобавочныйМенеджера"

[store]
path = "$TMP/store.sqlite"

[api]
token = "$API_TOKEN"

[popup]
ping_interval = "10s"

[log]
level = "info"
EOF
  for (( i = 0; i < KEYS; i++ )); do
    printf '\n[[operator]]\nkey = "key%d"\ntoken = "token-%08d"\nname = "Оператор %d"\n' "$i" "$i" "$i"
  done
} >"$TMP/gateway.toml"
chmod 600 "$TMP/gateway.toml"

log "starting the gateway on 127.0.0.1:$PORT ($KEYS operators, [onec] refresh $REFRESH), waiting for the first 1C read"
"$GATEWAY" serve --config "$TMP/gateway.toml" >"$TMP/gateway.log" 2>&1 &
GW_PID=$!
PIDS+=("$GW_PID")
reads=""
for _ in $(seq 1 1200); do   # 120 s
  kill -0 "$GW_PID" 2>/dev/null || die "the gateway exited: $(tail -20 "$TMP/gateway.log")"
  reads=$(curl -s --max-time 2 "http://127.0.0.1:$PORT/metrics" 2>/dev/null \
    | awk '$1 == "cti_onec_refresh_seconds_count" {print $2}' || true)
  [[ $reads =~ ^[0-9]+$ ]] && (( reads >= 1 )) && break
  sleep 0.1
done
[[ $reads =~ ^[0-9]+$ ]] && (( reads >= 1 )) || die "no 1C read completed within 120 s: $(tail -20 "$TMP/gateway.log")"
SAMPLE=$(head -1 "$TMP/numbers.txt")
res=$(say_name "$SAMPLE" "$TMP/answer.xml")
[[ ${res%% *} == 200 ]] && grep -q '&lt;title&gt;[^&]' "$TMP/answer.xml" \
  || die "SayName $SAMPLE: HTTP ${res%% *}, not a known caller: $(head -c 600 "$TMP/answer.xml")"
log "gateway ready (pid $GW_PID), RSS $(( $(rss_kb "$GW_PID") / 1024 )) MB; SayName $SAMPLE known"

# ------------------------------------------------------------ the soak
log "soak: $DURATION_S s; load average $(cut -d' ' -f1-3 /proc/loadavg)"
rc=0
timeout --kill-after=10 $(( DURATION_S + 120 )) "$LOAD" \
  --addr "127.0.0.1:$PORT" --duration "${DURATION_S}s" --numbers "$TMP/numbers.txt" \
  --keys "$KEYS" --screens-per-key "$SCREENS_PER_KEY" \
  --say-rate "$SAY_RATE" --say-conns "$SAY_CONNS" --call-rate "$CALL_RATE" --push-batch "$PUSH_BATCH" \
  --soap-path "$SOAP_PATH" --api-token "$API_TOKEN" --client-threads "$CLIENT_THREADS" \
  --gateway-pid "$GW_PID" --mock-pid "$MOCK_PID" --rss-out "$TMP/rss.tsv" 2>"$TMP/load.err" | tee "$TMP/load.out" || rc=$?
# (pipefail: rc is the load's status when it failed, tee's being 0)
[[ -s $TMP/load.err ]] && log "soak_load stderr: $(tail -5 "$TMP/load.err")"

# ------------------------------------------------------------ after
STATUS=0
case $rc in
  0) ;;
  1) STATUS=1 ;;
  124|137) log "soak_load did not finish in time (exit $rc)"; STATUS=1 ;;
  *) log "soak_load failed (exit $rc)"; STATUS=1 ;;
esac
GW_ALIVE=1; kill -0 "$GW_PID" 2>/dev/null || { GW_ALIVE=0; STATUS=1; log "the gateway is gone: $(tail -5 "$TMP/gateway.log")"; }
MOCK_ALIVE=1; kill -0 "$MOCK_PID" 2>/dev/null || { MOCK_ALIVE=0; STATUS=1; log "the mock 1C is gone: $(tail -5 "$TMP/mock.log")"; }
# Levels as the text format writes them ("  WARN ", " ERROR ").
WARN_LINES=$(grep -cE '^[^ ]+ +WARN ' "$TMP/gateway.log" || true)
ERROR_LINES=$(grep -cE '^[^ ]+ +ERROR ' "$TMP/gateway.log" || true)
READS=$(grep -c 'counterparties read from 1C' "$TMP/gateway.log" || true)
READS_FAILED=$(grep -c 'reading 1C failed' "$TMP/gateway.log" || true)
echo
echo "gateway log: $(grep -c '' "$TMP/gateway.log") lines, $WARN_LINES WARN, $ERROR_LINES ERROR; 1C reads logged $READS, failed $READS_FAILED; gateway alive at the end: $GW_ALIVE, mock: $MOCK_ALIVE"
if (( WARN_LINES + ERROR_LINES > 0 )); then
  grep -E '^[^ ]+ +(WARN|ERROR) ' "$TMP/gateway.log" | head -10 | sed 's/^/  /'
fi
if (( ERROR_LINES > 0 || READS_FAILED > 0 )); then STATUS=1; fi
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
echo "load average: before $LOAD_START, at the end $LOAD_END ($(nproc) CPUs shared by the gateway, the mock 1C and the load)"
echo "BENCH_RESULT mode=soak_env duration_s=$DURATION_S count=$COUNT numbers=$NUMBERS keys=$KEYS screens_per_key=$SCREENS_PER_KEY say_rate=$SAY_RATE call_rate=$CALL_RATE push_batch=$PUSH_BATCH refresh=$REFRESH gateway_warn_lines=$WARN_LINES gateway_error_lines=$ERROR_LINES onec_reads_logged=$READS onec_reads_failed=$READS_FAILED gateway_alive=$GW_ALIVE loadavg_start=${LOAD_START// /,} loadavg_end=${LOAD_END// /,} status=$STATUS"
exit "$STATUS"
