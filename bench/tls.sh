#!/usr/bin/env bash
# SayName over TLS: cti-gateway against the TLS floor (issue 15, "Speed").
#
#   bench/tls.sh              100000 counterparties
#   bench/tls.sh 500000
#
# Builds release, generates N counterparties and caller numbers (~90% known),
# makes a CA and a leaf certificate for 127.0.0.1 with openssl (ECDSA P-256,
# what certbot issues by default; BENCH_TLS_KEY=rsa for RSA 2048), starts the
# gateway with server.tls_cert/tls_key and bench/floor_server.rs behind the
# gateway's own TLS setup (same rustls configuration, same certificate) with a
# body of the gateway's answer size, warms both up, then:
#   (a) keep-alive: BENCH_ROUNDS interleaved rounds (gateway, then floor) of
#       wrk over https (bench/saynames.lua, BENCH_CONNS connections): each
#       round's ratio gateway/floor (goal >= 0.85 in every round), the median,
#       and the ratio of the median p99s (goal <= 1.2); with
#       BENCH_FLOOR_SPIN_NS > 0 a third server in each round, the TLS floor
#       that many nanoseconds slower per request (floor_server --spin-ns),
#       and its p99 against the floor's: how far this p99 moves for a
#       fraction of a microsecond more work per request;
#   (b) new connections: BENCH_ROUNDS interleaved rounds of
#       bench/tls_connect_load.rs (BENCH_CONNS tasks, each: connect, full TLS
#       handshake verified against the CA with no session resumption, one
#       SayName with Connection: close, the whole answer, close): connections
#       per second, ratio per round and median (goal >= 0.85).
#   (c) fixed rate: for each rate of BENCH_TAIL_RATE, BENCH_ROUNDS interleaved
#       rounds of bench/open_loop.rs over TLS keep-alive connections at that
#       many SayName/s: p50/p99 with the cores not saturated, and the ratio
#       of the median p99s.
#
# Environment (defaults in brackets):
#   BENCH_THREADS [1] wrk threads   BENCH_CONNS [32]   BENCH_DURATION [20s]
#   BENCH_WARMUP [5s]   BENCH_ROUNDS [3]   BENCH_QUERIES [200000]   BENCH_SEED [42]
#   BENCH_PORT [18443] FLOOR_PORT [19443]   BENCH_TLS_KEY [ec] ec or rsa
#   BENCH_FLOOR_SPIN_NS [100] (0: no calibration server)   SPIN_PORT [19444]
#   BENCH_TLS12 [0] 1: part (b) negotiates TLS 1.2 instead of 1.3
#   BENCH_TAIL_RATE ["20000 60000"] requests/s of part (c), one or more (0: none)
#   BENCH_TAIL_SECONDS [10]
#   BENCH_READY_TIMEOUT [300]   BENCH_SKIP_BUILD [0]   BENCH_KEEP [0]
#   CARGO_TARGET_DIR [./target]
# Everything listens on 127.0.0.1 only; every wait is bounded; the processes
# started here are stopped (by pid) on exit, however it comes.
#
# Lines starting with BENCH_RESULT are machine-readable (key=value): one for
# mode=tls_keepalive, one for mode=tls_new_connections.

set -euo pipefail

case "${1:-}" in
  -h|--help) sed -n '2,36p' "$0"; exit 0 ;;
esac
COUNT=${1:-100000}
[[ $COUNT =~ ^[0-9]+$ ]] || { echo "usage: $0 [COUNT]" >&2; exit 2; }

THREADS=${BENCH_THREADS:-1}
CONNS=${BENCH_CONNS:-32}
DURATION=${BENCH_DURATION:-20s}
ROUNDS=${BENCH_ROUNDS:-3}
WARMUP=${BENCH_WARMUP:-5s}
QUERIES=${BENCH_QUERIES:-200000}
SEED=${BENCH_SEED:-42}
PORT=${BENCH_PORT:-18443}
FPORT=${FLOOR_PORT:-19443}
SPIN_NS=${BENCH_FLOOR_SPIN_NS:-100}
SPORT=${SPIN_PORT:-19444}
[[ $SPIN_NS =~ ^[0-9]+$ ]] || { echo "BENCH_FLOOR_SPIN_NS must be a number of nanoseconds: $SPIN_NS" >&2; exit 2; }
KEY_KIND=${BENCH_TLS_KEY:-ec}
READY_TIMEOUT=${BENCH_READY_TIMEOUT:-300}
SOAP_PATH=/telephony/ws/VATS

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
GATEWAY=$TARGET/release/cti-gateway
GEN=$TARGET/release/examples/gen_counterparties
FLOOR=$TARGET/release/examples/floor_server
CONNECT=$TARGET/release/examples/tls_connect_load
OPEN_LOOP=$TARGET/release/examples/open_loop
TAIL_SECONDS=${BENCH_TAIL_SECONDS:-10}

# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"
set_tail_rates "${BENCH_TAIL_RATE:-20000 60000}"

# ------------------------------------------------------------ helpers

# make_certificates: $TMP/ca.pem, and $TMP/cert.pem (the leaf for 127.0.0.1,
# then the CA: a chain, as certbot's fullchain.pem) with $TMP/key.pem.
make_certificates() {
  local newkey
  case $KEY_KIND in
    ec) newkey=(-newkey ec -pkeyopt ec_paramgen_curve:P-256) ;;
    rsa) newkey=(-newkey rsa:2048) ;;
    *) die "BENCH_TLS_KEY must be ec or rsa: $KEY_KIND" ;;
  esac
  (
    cd "$TMP"
    openssl req -x509 "${newkey[@]}" -nodes -days 2 -subj "/CN=cti-gateway bench CA" \
      -keyout ca.key -out ca.pem
    openssl req -new "${newkey[@]}" -nodes -subj "/CN=127.0.0.1" -keyout key.pem -out leaf.csr
    printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' >leaf.ext
    openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
      -extfile leaf.ext -out leaf.pem
    cat leaf.pem ca.pem >cert.pem
    chmod 600 key.pem ca.key
  ) >"$TMP/openssl.log" 2>&1 || die "openssl failed: $(tail -5 "$TMP/openssl.log")"
}

# curl over https, trusting the bench CA only.
tls_curl() { curl -s --cacert "$TMP/ca.pem" --max-time 5 "$@"; }

# wait_https URL PID TIMEOUT_S: until URL answers 200; fails if PID dies.
wait_https() {
  local url=$1 pid=$2 timeout=$3 code deadline
  deadline=$(( $(date +%s) + timeout ))
  while (( $(date +%s) < deadline )); do
    kill -0 "$pid" 2>/dev/null || return 2
    code=$(tls_curl -o /dev/null -w '%{http_code}' "$url" || true)
    [[ $code == 200 ]] && return 0
    sleep 0.05
  done
  return 1
}

# run_connect NAME HOST:PORT: one round of new TLS connections for
# $DURATION; prints its CONNECT_RESULT line.
run_connect() {
  local name=$1 addr=$2 out=$TMP/connect-$1.txt tls12=()
  [[ ${BENCH_TLS12:-0} == 1 ]] && tls12=(--tls12)
  timeout $(( $(secs "$DURATION") + 60 )) "$CONNECT" --addr "$addr" --path "$SOAP_PATH" \
    --ca "$TMP/ca.pem" --numbers "$TMP/numbers.txt" --conns "$CONNS" \
    --duration "$(secs "$DURATION")" "${tls12[@]}" >"$out" 2>&1 \
    || die "tls_connect_load against $name failed: $(tail -5 "$out")"
  grep '^CONNECT_RESULT' "$out" || die "no CONNECT_RESULT against $name: $(tail -5 "$out")"
}

# run_wrk_tls NAME URL: one keep-alive round; a round with no answer at all
# (seen once on a loaded machine: every wrk handshake stalled, for both
# servers alike) is run once more, said in the log, before it counts.
run_wrk_tls() {
  local line
  line=$(run_wrk "$1" "$2" "$DURATION")
  if [[ $(field requests "$line") == 0 ]]; then
    log "WARNING: wrk got no answer from $1 in $DURATION (its TLS handshakes stalled): running the round again"
    line=$(run_wrk "$1-again" "$2" "$DURATION")
  fi
  echo "$line"
}

ratio_of() { awk -v g="$1" -v f="$2" 'BEGIN { printf "%.2f", (f > 0 ? g / f : 0) }'; }
met() { awk -v v="$1" -v op="$2" -v g="$3" 'BEGIN { ok = (op == ">=" ? v >= g : v <= g); print (ok ? "MET" : "NOT MET") }'; }
column() { local key=$1; shift; for r in "$@"; do field "$key" "$r"; done; }

# ------------------------------------------------------------ build, data, certificates
if [[ ${BENCH_SKIP_BUILD:-0} != 1 ]]; then
  log "cargo build --release (gateway, floor_server, gen_counterparties, tls_connect_load, open_loop)"
  cargo build --release --bin cti-gateway --example floor_server --example gen_counterparties \
    --example tls_connect_load --example open_loop >&2
fi
for b in "$GATEWAY" "$GEN" "$FLOOR" "$CONNECT" "$OPEN_LOOP"; do [[ -x $b ]] || die "missing $b (build failed?)"; done
need_wrk
command -v curl >/dev/null 2>&1 || die "curl is required"
command -v openssl >/dev/null 2>&1 || die "openssl is required (the command line, for the certificates)"

TMP=$(mktemp -d /tmp/cti-bench-tls.XXXXXX)
log "work dir $TMP"
generate_counterparties "$COUNT" "$QUERIES" "$SEED"
make_certificates
GATEWAY_SERVER_EXTRA="tls_cert = \"$TMP/cert.pem\"
tls_key = \"$TMP/key.pem\""
write_gateway_config

CPU=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
log "machine: $(nproc) CPUs ($CPU); load average $(cut -d' ' -f1-3 /proc/loadavg); certificate: $KEY_KIND"

# ------------------------------------------------------------ servers
log "starting the gateway over TLS with $COUNT counterparties"
start_gateway gateway
rc=0; wait_https "https://127.0.0.1:$PORT/readyz" "$GW_PID" "$READY_TIMEOUT" || rc=$?
[[ $rc == 0 ]] || die "gateway not ready over https (rc=$rc): $(tail -20 "$TMP/gateway.log")"
READY=$(ms_since "$GW_T0")
log "gateway ready over https in ${READY} ms"

# One known answer: its size sizes the floor's body.
SIZE=0
i=0
while read -r number && (( i < 50 )); do
  i=$((i + 1))
  res=$(envelope "$number" | tls_curl -o "$TMP/answer.xml" -w '%{http_code} %{size_download}' \
    -X POST -H 'Content-Type: text/xml' -u SOAP:123 --data-binary @- \
    "https://127.0.0.1:$PORT$SOAP_PATH" || echo "000 0")
  code=${res%% *}; size=${res##* }
  [[ $code == 200 ]] || die "SayName $number over https answered HTTP $code: $(head -c 400 "$TMP/answer.xml")"
  if grep -q '&lt;title&gt;[^&]' "$TMP/answer.xml"; then SIZE=$size; break; fi
done <"$TMP/numbers.txt"
(( SIZE > 0 )) || die "none of the first 50 numbers got a known answer"
log "SayName answer: $SIZE bytes"

port_free "$FPORT" || die "127.0.0.1:$FPORT is already in use (set FLOOR_PORT)"
"$FLOOR" --listen "127.0.0.1:$FPORT" --size "$SIZE" --tls-cert "$TMP/cert.pem" --tls-key "$TMP/key.pem" \
  >"$TMP/floor.log" 2>&1 &
FL_PID=$!
PIDS+=("$FL_PID")
rc=0; wait_https "https://127.0.0.1:$FPORT/" "$FL_PID" 30 || rc=$?
[[ $rc == 0 ]] || die "floor_server did not start over https: $(cat "$TMP/floor.log")"

if (( SPIN_NS > 0 )); then
  # The calibration floor: the same TLS floor, SPIN_NS slower per request.
  port_free "$SPORT" || die "127.0.0.1:$SPORT is already in use (set SPIN_PORT)"
  "$FLOOR" --listen "127.0.0.1:$SPORT" --size "$SIZE" --tls-cert "$TMP/cert.pem" --tls-key "$TMP/key.pem" \
    --spin-ns "$SPIN_NS" >"$TMP/floor-spin.log" 2>&1 &
  SP_PID=$!
  PIDS+=("$SP_PID")
  rc=0; wait_https "https://127.0.0.1:$SPORT/" "$SP_PID" 30 || rc=$?
  [[ $rc == 0 ]] || die "floor_server --spin-ns did not start over https: $(cat "$TMP/floor-spin.log")"
fi

URL="https://127.0.0.1:$PORT$SOAP_PATH"
FURL="https://127.0.0.1:$FPORT$SOAP_PATH"
SURL="https://127.0.0.1:$SPORT$SOAP_PATH"
log "warm-up $WARMUP each (keep-alive)"
run_wrk gateway-warmup "$URL" "$WARMUP" >/dev/null
run_wrk floor-warmup "$FURL" "$WARMUP" >/dev/null
(( SPIN_NS > 0 )) && run_wrk floor-spin-warmup "$SURL" "$WARMUP" >/dev/null

# ------------------------------------------------------------ (a) keep-alive
# CPU time the hypervisor takes from this VM over the rounds: a round it
# stalled (seen: a 30 s pause of every process) is not the servers' doing.
STEAL0=$(steal_ticks)
# Interleaved rounds, both servers up throughout: each round's ratio compares
# runs seconds apart (this VM's floor moves by +-20% over minutes).
KA_G=(); KA_F=(); KA_S=(); KA_R=()
for ((r = 1; r <= ROUNDS; r++)); do
  log "keep-alive round $r/$ROUNDS: gateway, then floor$( (( SPIN_NS > 0 )) && echo ", then floor+${SPIN_NS}ns"): wrk -t$THREADS -c$CONNS -d$DURATION over https"
  G=$(run_wrk_tls "gateway-ka-$r" "$URL")
  F=$(run_wrk_tls "floor-ka-$r" "$FURL")
  (( SPIN_NS > 0 )) && KA_S+=("$(run_wrk_tls "floor-spin-ka-$r" "$SURL")")
  KA_G+=("$G"); KA_F+=("$F")
  KA_R+=("$(ratio_of "$(field rps "$G")" "$(field rps "$F")")")
done

# ------------------------------------------------------------ (b) new connections
NC_G=(); NC_F=(); NC_R=()
for ((r = 1; r <= ROUNDS; r++)); do
  log "new-connection round $r/$ROUNDS: gateway, then floor: $CONNS tasks, $DURATION, one SayName per TLS connection"
  G=$(run_connect "gateway-nc-$r" "127.0.0.1:$PORT")
  F=$(run_connect "floor-nc-$r" "127.0.0.1:$FPORT")
  NC_G+=("$G"); NC_F+=("$F")
  NC_R+=("$(ratio_of "$(field rps "$G")" "$(field rps "$F")")")
done

# ------------------------------------------------------------ (c) fixed rate
# The keep-alive connections again, at a fixed rate (bench/open_loop.rs):
# the latency a PBX sees with the cores not saturated; (a)'s p99 is queueing
# at saturation, where a fraction of a microsecond per request moves it.
TAIL_REPORTS=()
if [[ -n $TAIL_RATES ]]; then
  fixed_rate_rounds tls_tail "-- (c) keep-alive at a fixed rate: %s SayName/s over $CONNS TLS connections, ${TAIL_SECONDS}s per run (bench/open_loop.rs)" --ca "$TMP/ca.pem"
fi

STEAL=$(( $(steal_ticks) - STEAL0 ))
HANDSHAKE_FAILURES=$(tls_curl "https://127.0.0.1:$PORT/metrics" | awk '/^cti_tls_handshake_failures_total / {print $2}')
GW_RSS=$(rss_kb "$GW_PID")
stop_pid "$GW_PID" >/dev/null
stop_pid "$FL_PID" >/dev/null
(( SPIN_NS > 0 )) && stop_pid "$SP_PID" >/dev/null

# ------------------------------------------------------------ report
# print_rounds GATEWAY_RUNS FLOOR_RUNS RATIOS HEADER [SPIN_RUNS]
print_rounds() {
  local -n gs=$1 fs=$2 rs=$3
  local spin_runs=${5:-}
  printf '%-14s %12s %9s %9s %9s %9s %8s %8s\n' server "$4" "p50 ms" "p90 ms" "p99 ms" "p99.9 ms" non2xx errors
  for ((r = 0; r < ROUNDS; r++)); do
    local rows=("gateway $((r + 1))|${gs[r]}" "floor $((r + 1))|${fs[r]}")
    if [[ -n $spin_runs ]]; then
      local -n ss=$spin_runs
      rows+=("floor+${SPIN_NS}ns $((r + 1))|${ss[r]}")
    fi
    for row in "${rows[@]}"; do
      local name=${row%%|*} v=${row#*|}
      printf '%-14s %12s %9s %9s %9s %9s %8s %8s\n' "$name" "$(field rps "$v")" "$(field p50_ms "$v")" \
        "$(field p90_ms "$v")" "$(field p99_ms "$v")" "$(field p999_ms "$v")" "$(field non2xx "$v")" "$(field socket_errors "$v")"
    done
    printf '%-14s %12s\n' "  ratio" "${rs[r]}"
  done
}

ka_ratio=$(median "${KA_R[@]}")
ka_low=$(printf '%s\n' "${KA_R[@]}" | sort -g | head -1)
ka_g_p99=$(median $(column p99_ms "${KA_G[@]}")); ka_f_p99=$(median $(column p99_ms "${KA_F[@]}"))
ka_p99_ratio=$(ratio_of "$ka_g_p99" "$ka_f_p99")
ka_g_rps=$(median $(column rps "${KA_G[@]}")); ka_f_rps=$(median $(column rps "${KA_F[@]}"))
nc_ratio=$(median "${NC_R[@]}")
nc_low=$(printf '%s\n' "${NC_R[@]}" | sort -g | head -1)
nc_g_rps=$(median $(column rps "${NC_G[@]}")); nc_f_rps=$(median $(column rps "${NC_F[@]}"))
nc_g_p99=$(median $(column p99_ms "${NC_G[@]}")); nc_f_p99=$(median $(column p99_ms "${NC_F[@]}"))
tls_version=$([[ ${BENCH_TLS12:-0} == 1 ]] && echo 1.2 || echo 1.3)

echo
echo "== SayName over TLS ($KEY_KIND certificate): $COUNT counterparties, answer $SIZE bytes, $(nproc) CPUs, $ROUNDS interleaved rounds of $DURATION =="
echo "-- (a) keep-alive: wrk -t$THREADS -c$CONNS over https"
print_rounds KA_G KA_F KA_R "requests/s" "$( (( SPIN_NS > 0 )) && echo KA_S)"
echo "gateway/floor requests/s per round: ${KA_R[*]}; median $ka_ratio; lowest $ka_low (goal >= 0.85 in every round: $(met "$ka_low" ">=" 0.85))"
echo "p99 median gateway $ka_g_p99 ms / floor $ka_f_p99 ms = $ka_p99_ratio (goal <= 1.2: $(met "$ka_p99_ratio" "<=" 1.2))"
SPIN_FIELDS=""
if (( SPIN_NS > 0 )); then
  ka_s_p99=$(median $(column p99_ms "${KA_S[@]}")); ka_s_rps=$(median $(column rps "${KA_S[@]}"))
  ka_s_p99_ratio=$(ratio_of "$ka_s_p99" "$ka_f_p99")
  echo "calibration: the TLS floor ${SPIN_NS} ns slower per request: requests/s $(ratio_of "$ka_s_rps" "$ka_f_rps") of the floor's, p99 median $ka_s_p99 ms / floor $ka_f_p99 ms = $ka_s_p99_ratio (the same p99 goal, applied to it: $(met "$ka_s_p99_ratio" "<=" 1.2))"
  SPIN_FIELDS=" spin_ns=$SPIN_NS spin_rps=$ka_s_rps spin_p99_ms=$ka_s_p99 spin_p99_ratio=$ka_s_p99_ratio"
fi
echo "-- (b) new TLS connections (TLS $tls_version, full handshakes, no resumption), one SayName each: $CONNS concurrent"
print_rounds NC_G NC_F NC_R "conns/s"
echo "gateway/floor connections/s per round: ${NC_R[*]}; median $nc_ratio (goal >= 0.85: $(met "$nc_ratio" ">=" 0.85)); lowest $nc_low"
for report in "${TAIL_REPORTS[@]}"; do
  cat "$report"
done
echo "CPU steal during the rounds: $STEAL ticks ($(getconf CLK_TCK) a second per CPU): a round with a large share of it, or with errors, is to be run again"
echo "gateway: ready in $READY ms, RSS after the runs $((GW_RSS / 1024)) MB, cti_tls_handshake_failures_total ${HANDSHAKE_FAILURES:-?} (wrk opens and drops one plain TCP connection per run to check the address: $(( 1 + ROUNDS )) of them are those)"
echo "BENCH_RESULT mode=tls_keepalive count=$COUNT key=$KEY_KIND threads=$THREADS conns=$CONNS duration=$DURATION rounds=$ROUNDS answer_bytes=$SIZE gateway_rps=$ka_g_rps gateway_p99_ms=$ka_g_p99 floor_rps=$ka_f_rps floor_p99_ms=$ka_f_p99 ratio=$ka_ratio ratios=$(IFS=,; echo "${KA_R[*]}") lowest_ratio=$ka_low p99_ratio=$ka_p99_ratio$SPIN_FIELDS"
echo "BENCH_RESULT mode=tls_new_connections count=$COUNT key=$KEY_KIND tls=$tls_version conns=$CONNS duration=$DURATION rounds=$ROUNDS gateway_cps=$nc_g_rps gateway_p99_ms=$nc_g_p99 floor_cps=$nc_f_rps floor_p99_ms=$nc_f_p99 ratio=$nc_ratio ratios=$(IFS=,; echo "${NC_R[*]}") lowest_ratio=$nc_low handshake_failures=${HANDSHAKE_FAILURES:-unknown} steal_ticks=$STEAL"
