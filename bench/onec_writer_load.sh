# `bench/onec_writer.sh load`: SayName p99 while the 1C writer drains and the
# payments poll re-reads (issue 19, Speed). Sourced by bench/onec_writer.sh,
# whose header says what it measures, its goals, its environment and how
# long it takes. Uses bench/lib.sh's functions (wrk runs with steal time,
# the spin control, the mock 1C, the gateway's start and stop).

COUNTERPARTIES=${BENCH_COUNTERPARTIES:-100000}
PAYMENTS=${BENCH_PAYMENTS:-3000}
LOAD_RATE=${BENCH_LOAD_RATE:-200}
ROUNDS=${BENCH_ROUNDS:-3}
DRAIN_TIMEOUT=${BENCH_DRAIN_TIMEOUT:-300}
for v in COUNTERPARTIES LOAD_RATE ROUNDS DRAIN_TIMEOUT; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "BENCH_$v must be a positive number: ${!v}" >&2; exit 2; }
done
[[ $PAYMENTS =~ ^[0-9]+$ ]] && (( PAYMENTS <= 25000 )) \
  || { echo "BENCH_PAYMENTS must be 0 to 25000 (all within the 3-day re-read window): $PAYMENTS" >&2; exit 2; }
DURATION=${BENCH_DURATION:-10s}
WARMUP=${BENCH_WARMUP:-2s}
for v in DURATION WARMUP; do
  [[ ${!v} =~ ^[1-9][0-9]*[sm]?$ ]] || { echo "BENCH_$v must be a wrk duration (10s, 2m): ${!v}" >&2; exit 2; }
done
THREADS=${BENCH_THREADS:-1}
CONNS=${BENCH_CONNS:-32}
STEAL_MAX=${BENCH_STEAL_MAX:-0.5}
PORT=${BENCH_PORT:-18086}
GOALS=${BENCH_LOAD_GOALS:-busy,defaults}
[[ $GOALS =~ ^(busy|defaults)(,(busy|defaults))?$ ]] \
  || { echo "BENCH_LOAD_GOALS must be busy, defaults or both (comma-separated): $GOALS" >&2; exit 2; }
PROFILE=${BENCH_PROFILE:-release}
[[ $PROFILE =~ ^[a-z][a-z0-9_-]*$ ]] || { echo "BENCH_PROFILE must be a cargo profile name: $PROFILE" >&2; exit 2; }
SOAP_PATH=/telephony/ws/VATS
SOAP_URL=http://127.0.0.1:$PORT$SOAP_PATH
TOKEN=bench-load-api-token-0123456789
READY_TIMEOUT=$DRAIN_TIMEOUT

REPO=$(pwd)
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
OUT=$TARGET/$([[ $PROFILE == dev ]] && echo debug || echo "$PROFILE")
GATEWAY=$OUT/cti-gateway
MOCK=$OUT/examples/onec_mock

# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"

if [[ ${BENCH_SKIP_BUILD:-0} != 1 ]]; then
  log "cargo build --profile $PROFILE --bin cti-gateway --example onec_mock"
  cargo build -q --profile "$PROFILE" --bin cti-gateway --example onec_mock >&2
fi
for f in "$GATEWAY" "$MOCK"; do [[ -x $f ]] || die "missing $f (build failed?)"; done
command -v curl >/dev/null 2>&1 || die "curl is required"
need_wrk
port_free "$PORT" || die "127.0.0.1:$PORT is already in use (set BENCH_PORT)"

TMP=$(mktemp -d /tmp/cti-writer-load.XXXXXX)
BG_CPU=$(( $(nproc) - 1 ))
log "load: $COUNTERPARTIES counterparties, $PAYMENTS payment documents, goals $GOALS; machine: $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"
MOCK_ARGS=(--writes --payments "$PAYMENTS" --payment-rows 3)
MOCK_PREFIX=(taskset -c "$BG_CPU")
[[ ${BENCH_MOCK_IDLE:-1} == 1 ]] && MOCK_PREFIX+=(chrt --idle 0)
start_mock_onec "$COUNTERPARTIES" "${MOCK_PREFIX[@]}"

# metric NAME [FILTER]: the sum of NAME's series in the gateway's /metrics
# (those whose line holds FILTER, such as system="onec", when given), 0 when none.
metric() {
  curl -s --max-time 5 "http://127.0.0.1:$PORT/metrics" 2>/dev/null \
    | awk -v m="$1" -v f="${2:-}" 'index($0, m) == 1 && substr($0, length(m) + 1, 1) ~ /[ {]/ && index($0, f) {s += $NF}
        END {printf "%.6f", s + 0}'
}
# onec_pending: onec's pending rows in the outbox (the admin API's first
# page: at most 1,000 counted), "" when unreadable.
onec_pending() {
  local body
  body=$(curl -s --max-time 5 -H "Authorization: Bearer $TOKEN" \
    "http://127.0.0.1:$PORT/api/v1/sync/outbox?system=onec&state=pending&limit=1000" 2>/dev/null) || return 0
  [[ $body == *'"rows":'* ]] || return 0
  # One "record_key" a row (its body, JSON too, has none: records have an "id").
  { grep -o '"record_key":' <<<"$body" || true; } | wc -l
}
# wait_metric NAME MIN: until NAME reaches MIN (DRAIN_TIMEOUT s at most).
wait_metric() {
  local deadline=$(( $(date +%s) + DRAIN_TIMEOUT ))
  until awk -v v="$(metric "$1")" -v m="$2" 'BEGIN { exit !(v >= m) }'; do
    kill -0 "$GW_PID" 2>/dev/null || die "the gateway exited: $(tail -5 "$TMP/$GW_LOG.log")"
    (( $(date +%s) < deadline )) || die "$1 did not reach $2 within $DRAIN_TIMEOUT s: $(tail -5 "$TMP/$GW_LOG.log")"
    sleep 0.2
  done
}

# start_load_gateway NAME STORE RATE POLL: a gateway on the store folder
# STORE (made when missing, kept between starts: the 1C source reads 1C
# again at each start) with the writer at RATE req/s and payments every
# POLL; waits for its first 1C read and first payments read.
start_load_gateway() {
  local name=$1 store=$2 rate=$3 poll=$4 ms sample res
  mkdir -p "$TMP/$store"
  [[ -f $TMP/counterparties.jsonl ]] || : >"$TMP/counterparties.jsonl"
  write_gateway_config warn "
[api]
token = \"$TOKEN\"

[onec]
odata_url = \"$URL\"
username = \"odata\"
password = \"secret\"
refresh = \"1h\"

[sync.onec]
write_username = \"writer\"
write_password = \"write-secret-1c\"
per_second = $rate
concurrency = 8
timeout = \"10s\"

[payments]
source = \"odata\"
poll = \"$poll\"
"
  sed -i "s|^path = \"$TMP/store.sqlite\"|path = \"$TMP/$store/store.sqlite\"|" "$TMP/gateway.toml"
  GW_LOG=$name
  start_gateway "$GW_LOG"
  ms=$(ready_or_die "$GW_LOG") || exit 1
  wait_metric cti_onec_refresh_seconds_count 1
  if (( PAYMENTS > 0 )); then wait_metric cti_payments_poll_seconds_count 1; fi
  sample=$(head -1 "$TMP/numbers.txt")
  res=$(say_name "$sample" "$TMP/answer.xml")
  [[ ${res%% *} == 200 ]] && grep -q '&lt;title&gt;[^&]' "$TMP/answer.xml" \
    || die "SayName $sample: HTTP ${res%% *}, not a known caller: $(head -c 600 "$TMP/answer.xml")"
  log "$name: gateway (pid $GW_PID, writer $rate req/s, payments poll $poll) ready in $ms ms, 1C and payments read"
}

# push_companies N: N new companies (valid INNs the mock has not seen) through
# the push API, 1,000 a request; the feed queues a create of each for onec.
NEXT_COMPANY=0
push_companies() {
  local n=$1 from to code
  while (( n > 0 )); do
    from=$NEXT_COMPANY
    to=$(( from + (n < 1000 ? n : 1000) ))
    # A file, not an argument: 1,000 companies are ~150 KB, over the
    # kernel's 128 KiB limit on one argument.
    awk -v a="$from" -v b="$to" 'BEGIN {
      split("2 4 10 3 5 9 4 6 8", w, " "); printf "[";
      for (i = a; i < b; i++) {
        body = sprintf("77%07d", i % 10000000); s = 0;
        for (k = 1; k <= 9; k++) s += substr(body, k, 1) * w[k];
        printf "%s{\"id\":\"load%07d\",\"name\":\"Клиент %d\",\"inn\":\"%s%d\",\"kpp\":\"770101001\",\"phones\":[\"8916%07d\"],\"emails\":[\"c%d@example.ru\"]}", (i > a ? "," : ""), i, i, body, s % 11 % 10, i % 10000000, i
      }
      printf "]" }' >"$TMP/push.json"
    code=$(curl -s -o "$TMP/push.out" -w '%{http_code}' --max-time 30 -X POST \
      -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
      --data-binary "@$TMP/push.json" "http://127.0.0.1:$PORT/api/v1/counterparties") || code=000
    [[ $code == 200 ]] || die "push API: HTTP $code: $(head -c 300 "$TMP/push.out")"
    NEXT_COMPANY=$to
    n=$(( n - (to - from) ))
  done
}

# wait_drained: until onec has no pending row (DRAIN_TIMEOUT s at most).
wait_drained() {
  local deadline=$(( $(date +%s) + DRAIN_TIMEOUT )) p
  while :; do
    p=$(onec_pending)
    [[ $p == 0 ]] && return 0
    (( $(date +%s) < deadline )) || die "the writer did not drain within $DRAIN_TIMEOUT s ($p pending): $(tail -5 "$TMP/$GW_LOG.log")"
    sleep 0.5
  done
}

# ratio A B: A / B, two decimals (0 when B is 0).
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }

# load_round GOAL RATE POLL R: warm-up, idle and (busy only) the spin
# control's runs, then a drain's run. The busy goal's control runs are on a
# gateway whose payments poll is 5 min (no re-read during them), its drain
# run on one restarted with POLL: the payments re-reads run in the drain's
# run only. Sets IDLE SPIN BUSY (WRK_RESULT lines), STEALS, LEFT (rows
# pending at the drain run's end), WRITER_RPS (the writer's requests/s over
# the run), READS (payments reads during it).
load_round() {
  local goal=$1 rate=$2 poll=$3 r=$4 creates secs req0 reads0 p0 deadline
  if [[ $goal == busy ]]; then
    start_load_gateway "$goal-control$r" "store-$goal" "$rate" 5m
  fi
  wait_idle "$GW_PID" 5 >/dev/null
  run_wrk "$goal-warmup$r" "$SOAP_URL" "$WARMUP" >/dev/null
  measured_wrk "$goal-idle$r" "$SOAP_URL" "$DURATION"
  IDLE=$RUN_RESULT STEALS=$RUN_STEAL SPIN=""
  if [[ $goal == busy ]]; then
    spin_control_wrk "$goal-spin$r" "$SOAP_URL" "$DURATION"
    SPIN=$RUN_RESULT STEALS+=" $RUN_STEAL"
    stop_pid "$GW_PID" >/dev/null
    start_load_gateway "$goal-drain$r" "store-$goal" "$rate" "$poll"
    run_wrk "$goal-warmup$r-drain" "$SOAP_URL" "$WARMUP" >/dev/null
  fi
  secs=$(secs "$DURATION")
  creates=$(awk -v r="$rate" -v s="$secs" 'BEGIN { n = int(r * s * 0.6 + 0.999); print (n < 1 ? 1 : n) }')
  push_companies "$creates"
  # The drain has begun once the feed queued the creates (at most 10 s).
  deadline=$(( $(date +%s) + 10 ))
  until p0=$(onec_pending); [[ -n $p0 && $p0 -gt 0 ]]; do
    (( $(date +%s) < deadline )) || die "$goal round $r: no create queued for onec within 10 s: $(tail -3 "$TMP/$GW_LOG.log")"
    sleep 0.05
  done
  req0=$(metric cti_sync_requests_total 'system="onec"')
  reads0=$(metric cti_payments_poll_seconds_count)
  measured_wrk "$goal-busy$r" "$SOAP_URL" "$DURATION"
  BUSY=$RUN_RESULT STEALS+=" $RUN_STEAL"
  LEFT=$(onec_pending)
  WRITER_RPS=$(awk -v a="$req0" -v b="$(metric cti_sync_requests_total 'system="onec"')" -v s="$(field duration_s "$BUSY")" \
    'BEGIN { printf "%.1f", (s > 0 ? (b - a) / s : 0) }')
  READS=$(awk -v a="$reads0" -v b="$(metric cti_payments_poll_seconds_count)" 'BEGIN { printf "%d", b - a }')
  wait_drained
  if [[ $goal == busy ]]; then stop_pid "$GW_PID" >/dev/null; fi
  log "$goal round $r: idle p99 $(field p99_ms "$IDLE") ms${SPIN:+, spin control $(field p99_ms "$SPIN") ms}, drain $(field p99_ms "$BUSY") ms; $creates creates ($p0 queued at the run's start, ${LEFT:-?} left at its end), writer ${WRITER_RPS} req/s as the gateway counts them, $READS payments reads; steal $STEALS s"
}

SUMMARY=""
RESULTS=""
# load_goal GOAL: its gateway, rounds, summary and BENCH_RESULT line.
load_goal() {
  local goal=$1 rate poll round counted=() noisy=0 rows=() r base lefts=() rps=() reads=()
  case $goal in
    busy) rate=$LOAD_RATE poll=1s ;;
    defaults) rate=5 poll=5m ;;
  esac
  # The defaults' gateway runs for all its rounds; the busy goal's are
  # started per run (load_round).
  [[ $goal == defaults ]] && start_load_gateway "$goal" "store-$goal" "$rate" "$poll"
  for (( round = 1; round <= ROUNDS * 3 && ${#counted[@]} < ROUNDS; round++ )); do
    load_round "$goal" "$rate" "$poll" "$round"
    if [[ $goal == busy ]]; then base=$SPIN; else base=$IDLE; fi
    r=$(ratio "$(field p99_ms "$BUSY")" "$(field p99_ms "$base")")
    # shellcheck disable=SC2086 # the steal times are split on purpose
    if steal_over "$STEAL_MAX" $STEALS; then
      noisy=$(( noisy + 1 ))
      log "$goal round $round: not counted, steal $STEALS s (over $STEAL_MAX s); p99 ratio would be $r"
      continue
    fi
    counted+=("$r")
    rows+=("$round idle|$IDLE")
    [[ -n $SPIN ]] && rows+=("$round spin control|$SPIN")
    rows+=("$round drain|$BUSY")
    lefts+=("${LEFT:-0}")
    rps+=("$WRITER_RPS")
    reads+=("$READS")
  done
  [[ $goal == defaults ]] && stop_pid "$GW_PID" >/dev/null
  (( ${#counted[@]} > 0 )) || die "$goal: every round had more than $STEAL_MAX s of steal time: the machine is too noisy to measure p99 now"

  local median_ratio idle_p99 spin_p99 busy_p99 met verdict what row name v
  median_ratio=$(median "${counted[@]}")
  idle_p99=$(median $(for row in "${rows[@]}"; do [[ $row == *" idle|"* ]] && field p99_ms "${row#*|}"; done))
  spin_p99=$(median $(for row in "${rows[@]}"; do [[ $row == *" spin control|"* ]] && field p99_ms "${row#*|}"; done))
  busy_p99=$(median $(for row in "${rows[@]}"; do [[ $row == *" drain|"* ]] && field p99_ms "${row#*|}"; done))
  if [[ $goal == busy ]]; then
    what="SayName p99 while the writer drains at $rate req/s and payments are re-read every $poll <= 1.1x the spin control's"
    met=$(awk -v r="$median_ratio" 'BEGIN { print (r <= 1.1 ? 1 : 0) }')
  else
    what="SayName p99 while the writer drains at the defaults ($rate req/s, payments poll $poll) <= 1.5x idle"
    met=$(awk -v r="$median_ratio" 'BEGIN { print (r <= 1.5 ? 1 : 0) }')
  fi
  verdict=$([[ $met == 1 ]] && echo PASS || echo FAIL)
  SUMMARY+=$'\n'"load, $goal: writer per_second $rate, payments poll $poll over $PAYMENTS documents (3 rows), $COUNTERPARTIES counterparties in 1C"$'\n'
  SUMMARY+=$(printf '%-24s %10s %9s %9s %9s %9s %8s %7s' "run" "requests/s" "p50 ms" "p90 ms" "p99 ms" "p99.9 ms" "errors" "secs")$'\n'
  for row in "${rows[@]}"; do
    name=${row%%|*}; v=${row#*|}
    SUMMARY+=$(printf '%-24s %10s %9s %9s %9s %9s %8s %7s' "$name" "$(field rps "$v")" "$(field p50_ms "$v")" \
      "$(field p90_ms "$v")" "$(field p99_ms "$v")" "$(field p999_ms "$v")" \
      "$(( $(field non2xx "$v") + $(field socket_errors "$v") ))" "$(field duration_s "$v")")$'\n'
  done
  SUMMARY+="  p99 ratios (drain / $([[ $goal == busy ]] && echo "spin control" || echo idle)) per counted round: ${counted[*]}; median $median_ratio ($noisy rounds not counted for steal time)"$'\n'
  SUMMARY+="  during the drain runs (medians): the writer $(median "${rps[@]}") req/s as the gateway counts them, $(median "${reads[@]}") payments reads, $(median "${lefts[@]}") rows still pending at the run's end (0: the drain ended within the run)"$'\n'
  SUMMARY+="goal load/$goal ($what): $verdict (median ${median_ratio}x of ${#counted[@]} rounds)"$'\n'
  RESULTS+="BENCH_RESULT mode=onec_writer_load_$goal counterparties=$COUNTERPARTIES payments=$PAYMENTS per_second=$rate poll=$poll threads=$THREADS conns=$CONNS duration=$DURATION rounds=${#counted[@]} noisy_rounds=$noisy idle_p99_ms=$idle_p99 spin_p99_ms=${spin_p99/-/} busy_p99_ms=$busy_p99 p99_ratios=$(IFS=,; echo "${counted[*]}") p99_ratio=$median_ratio writer_req_per_s=$(median "${rps[@]}") payments_reads=$(median "${reads[@]}") pending_at_end=$(median "${lefts[@]}") goal_met=$met"$'\n'
}

for goal in ${GOALS//,/ }; do
  load_goal "$goal"
done
stop_pid "$MOCK_PID" >/dev/null

echo
echo "== 1C writer and payments under SayName: $PROFILE build, $(nproc) CPUs =="
printf '%s' "$SUMMARY"
printf '%s' "$RESULTS"
