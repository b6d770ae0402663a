# Shared by the benchmark scripts (bench/run.sh, bench/onec.sh, bench/popup.sh,
# bench/push.sh, bench/sync.sh...): logging, clean-up of what a script
# started, clocks, waiting for a line of a program's output, CPU and steal
# time, the background-work control (busy_control, and wrk runs beside it:
# spin_control_wrk), CPU per thread, the gateway's config, start, readiness
# and stop, SayName over HTTP and wrk, and the mocks (1C, CRM) as processes.
# Source it after REPO is set; it uses the caller's PORT, SOAP_PATH, GATEWAY,
# GEN, MOCK, CRM_MOCK, READY_TIMEOUT, THREADS and CONNS when the functions
# that need them are called.

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ------------------------------------------------------------ clean-up
# Scripts add the pids they start to PIDS and set TMP to their temp folder;
# on exit, however it comes, the processes are stopped and TMP removed
# (kept with BENCH_KEEP=1).
TMP=""
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  if [[ -n $TMP && -d $TMP ]]; then
    if [[ ${BENCH_KEEP:-0} == 1 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------ clocks and processes
now_ns() { date +%s%N; }
ms_since() { echo $(( ($(now_ns) - $1) / 1000000 )); }

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# file_size FILE: its size in bytes (0 if missing).
file_size() { stat -c %s "$1" 2>/dev/null || echo 0; }

# wait_line FILE OFFSET REGEX TIMEOUT_S: until a line matching REGEX is
# written to FILE after byte OFFSET (0: found, 1: not within TIMEOUT_S). One
# tail and one grep per wait, woken by inotify: waiting costs no CPU, so the
# busy runs measure the gateway's work, not the script's polling.
wait_line() {
  local file=$1 offset=$2 regex=$3 limit=$4 fd tail_pid rc=0
  exec {fd}< <(exec timeout "$limit" tail -c +"$(( offset + 1 ))" -F "$file" 2>/dev/null)
  tail_pid=$!
  grep -m1 -q -E "$regex" <&"$fd" || rc=1
  exec {fd}<&-
  kill "$tail_pid" 2>/dev/null || true
  return "$rc"
}

# line_after FILE OFFSET REGEX: the first line matching REGEX written to FILE
# after byte OFFSET (empty when none).
line_after() { tail -c +"$(( $2 + 1 ))" "$1" 2>/dev/null | grep -m1 -E "$3" || true; }

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
hwm_kb() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

# cpu_ticks PID: utime+stime of the whole process (all threads), in clock ticks.
cpu_ticks() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
  stat=${stat##*) }  # the fields after "(comm) "; field 1 here is the state
  awk '{print $12 + $13}' <<<"$stat"
}

# wait_idle PID [MAX_S]: until the process uses at most 2 ticks of CPU in 1 s
# (the background work after a change, such as a snapshot save, has
# finished), at most MAX_S [60] s. Prints its ticks then.
wait_idle() {
  local pid=$1 last cur
  last=$(cpu_ticks "$pid")
  for _ in $(seq 1 "${2:-60}"); do
    sleep 1
    cur=$(cpu_ticks "$pid")
    (( cur - last <= 2 )) && break
    last=$cur
  done
  cpu_ticks "$pid"
}

# wait_http URL PID TIMEOUT_S: until URL answers 200; fails if PID dies.
wait_http() {
  local url=$1 pid=$2 timeout=$3 code deadline
  deadline=$(( $(date +%s) + timeout ))
  while (( $(date +%s) < deadline )); do
    kill -0 "$pid" 2>/dev/null || return 2
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url" || true)
    [[ $code == 200 ]] && return 0
    sleep 0.02
  done
  return 1
}

# stop_pid PID: SIGTERM, wait up to 30 s, then SIGKILL. Prints ms to exit.
stop_pid() {
  local pid=$1 t0
  t0=$(now_ns)
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    log "pid $pid ignored SIGTERM for 30 s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
  ms_since "$t0"
}

# median of the arguments ("-" when none), two decimals.
median() {
  (( $# > 0 )) || { echo -; return; }
  printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {printf "%.2f", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'
}

# steal_ticks: CPU time the hypervisor stole from this VM so far, all CPUs,
# in clock ticks (the 8th number of /proc/stat's cpu line).
steal_ticks() { awk '/^cpu / {print $9; exit}' /proc/stat; }

# ------------------------------------------------------------ background-work control
# busy_control KIND STOP_FILE: runs in the foreground, until STOP_FILE exists
# (or its folder is gone), one thread of work at the priority of the gateway's
# background threads (SCHED_IDLE and nice 19) that is not the gateway's:
# "spin" a busy loop, "memory" a memory writer (dd bs=64M). It is the control
# background work is judged against: what any work at that priority costs
# SayName on this machine (BENCH_BUSY=spin in bench/onec.sh).
busy_control() {
  local kind=$1 stop=$2
  case $kind in
    spin)
      chrt --idle 0 nice -n 19 bash -c \
        'while [[ ! -e $1 && -d ${1%/*} ]]; do for ((i = 0; i < 100000; i++)); do :; done; done' _ "$stop" ;;
    memory)
      chrt --idle 0 nice -n 19 bash -c \
        'while [[ ! -e $1 && -d ${1%/*} ]]; do dd if=/dev/zero of=/dev/null bs=64M count=8 status=none; done' _ "$stop" ;;
    *) die "busy_control: KIND must be spin or memory: $kind" ;;
  esac
}

# start_busy_control KIND STOP_FILE: busy_control in the background; sets
# BUSY_PID (added to PIDS, so it stops with the script). Touch STOP_FILE to
# end it.
start_busy_control() {
  busy_control "$1" "$2" &
  BUSY_PID=$!
  PIDS+=("$BUSY_PID")
}

# ------------------------------------------------------------ measured runs beside a control
# How background work is judged (bench/onec.sh, bench/sync.sh drain): wrk
# runs with the machine's interrupts and the hypervisor's steal time counted
# around each (a run with steal is noise, not a figure), and the spin
# control's run (busy_control spin beside wrk), the p99 any SCHED_IDLE work
# costs SayName on this machine.
HZ=${HZ:-$(getconf CLK_TCK)}

# thread_ticks PID: "NAME TICKS" per thread name (threads of one name summed).
thread_ticks() {
  local f stat comm
  for f in /proc/"$1"/task/*/stat; do
    stat=$(cat "$f" 2>/dev/null) || continue
    comm=${stat#*(}; comm=${comm%)*}; comm=${comm// /_}
    stat=${stat##*) }
    awk -v c="$comm" '{print c, $12 + $13}' <<<"$stat"
  done | awk '{t[$1] += $2} END {for (c in t) print c, t[c]}'
}
# thread_delta BEFORE AFTER: "name s, name s" of the CPU each thread name used
# in between (threads gone meanwhile are not counted), largest first.
thread_delta() {
  awk -v hz="$HZ" 'NR == FNR {b[$1] = $2; next} {d = $2 - b[$1]; if (d > 0) print d, $1}' "$1" "$2" \
    | sort -rn | awk -v hz="$HZ" '{printf "%s%s %.2f s", (NR > 1 ? ", " : ""), $2, $1 / hz}'
}
# ipis: "TLB CAL RES STEAL" machine-wide counts: interrupts from
# /proc/interrupts (TLB shootdowns, function calls, reschedules), all CPUs
# summed, and the hypervisor's steal time from /proc/stat (clock ticks).
ipis() {
  awk '$1 == "TLB:" || $1 == "CAL:" || $1 == "RES:" {n = 0; for (i = 2; i <= NF && $i ~ /^[0-9]+$/; i++) n += $i; c[$1] = n}
       END {printf "%d %d %d ", c["TLB:"], c["CAL:"], c["RES:"]}' /proc/interrupts 2>/dev/null || printf '0 0 0 '
  awk '$1 == "cpu" {print $9 + 0; exit}' /proc/stat 2>/dev/null || echo 0
}
# ipi_delta BEFORE AFTER: the counts in between, one line. Steal time (the
# hypervisor running someone else on our CPUs) makes a run's p99 worthless.
ipi_delta() {
  awk -v b="$1" -v a="$2" -v hz="$HZ" 'BEGIN {split(b, x, " "); split(a, y, " ");
    printf "TLB shootdowns %d, function-call IPIs %d, reschedule IPIs %d, steal %.2f s", y[1] - x[1], y[2] - x[2], y[3] - x[3], (y[4] - x[4]) / hz}'
}
# secs_of_ticks TICKS: seconds with two decimals.
secs_of_ticks() { awk -v t="$1" -v hz="$HZ" 'BEGIN { printf "%.2f", t / hz }'; }

# measured_wrk NAME URL DURATION: run_wrk with the interrupts and steal time
# around it. Sets RUN_RESULT (its WRK_RESULT line), RUN_IPIS (ipi_delta's
# line) and RUN_STEAL (seconds stolen). Runs in the caller's shell (not in
# $(...)) so that it can set them.
measured_wrk() {
  local ipi0
  ipi0=$(ipis)
  RUN_RESULT=$(run_wrk "$@") || die "wrk run $1 failed"
  RUN_IPIS=$(ipi_delta "$ipi0" "$(ipis)")
  RUN_STEAL=$(sed -n 's/.*steal \([0-9.]*\) s.*/\1/p' <<<"$RUN_IPIS")
}

# spin_control_wrk NAME URL DURATION: measured_wrk beside the spin control
# (busy_control spin, started before and stopped after the run, at most 5 s
# to stop). Sets what measured_wrk sets. Needs TMP.
SPIN_CONTROLS=0
spin_control_wrk() {
  # A stop file of its own each time: one left behind stops a stray spinner
  # for good, never the next run's.
  SPIN_CONTROLS=$(( SPIN_CONTROLS + 1 ))
  local stop=$TMP/spin-control.$SPIN_CONTROLS.stop
  start_busy_control spin "$stop"
  measured_wrk "$@"
  : >"$stop"
  for _ in $(seq 1 100); do kill -0 "$BUSY_PID" 2>/dev/null || break; sleep 0.05; done
  if kill -0 "$BUSY_PID" 2>/dev/null; then kill -TERM "$BUSY_PID" 2>/dev/null || true; fi
  wait "$BUSY_PID" 2>/dev/null || true
}

# steal_over MAX S...: true when any of the steal times S (seconds) exceeds
# MAX: the round is not counted.
steal_over() {
  local max=$1
  shift
  awk -v m="$max" 'BEGIN { for (i = 1; i < ARGC; i++) if (ARGV[i] + 0 > m) exit 0; exit 1 }' "$@"
}

# ------------------------------------------------------------ the gateway
# write_gateway_config [LEVEL [EXTRA]]: $TMP/gateway.toml for a gateway on
# 127.0.0.1:$PORT, SOAP at $SOAP_PATH (SOAP / 123), the file source
# $TMP/counterparties.jsonl, the store $TMP/store.sqlite, log level LEVEL
# [warn] (a tracing filter: "warn,cti_gateway::sources::push=info"), then
# EXTRA (more TOML sections, such as "[api]...") as it is. GATEWAY_SERVER_EXTRA,
# if set, is more keys of [server] (bench/tls.sh: tls_cert, tls_key).
write_gateway_config() {
  cat >"$TMP/gateway.toml" <<EOF
[server]
listen = "127.0.0.1:$PORT"
max_connections_per_address = 100000   # every bench client comes from 127.0.0.1
${GATEWAY_SERVER_EXTRA:-}

[soap]
path = "$SOAP_PATH"
username = "SOAP"
password = "123"

[directory]
file = "$TMP/counterparties.jsonl"

[store]
path = "$TMP/store.sqlite"

[log]
level = "${1:-warn}"
${2:-}
EOF
  chmod 600 "$TMP/gateway.toml" # the gateway warns about a password in a world-readable file
}

# generate_counterparties COUNT QUERIES SEED: $GEN (bench/gen_counterparties.rs)
# writes COUNT records to $TMP/counterparties.jsonl and QUERIES caller numbers
# (~90% of them known) to $TMP/numbers.txt.
generate_counterparties() {
  "$GEN" --count "$1" --out "$TMP/counterparties.jsonl" --numbers "$TMP/numbers.txt" \
    --queries "$2" --seed "$3" >&2 || die "gen_counterparties failed"
}

# start_gateway LOGNAME: starts $GATEWAY with $TMP/gateway.toml in the
# background, its output in $TMP/LOGNAME.log; sets GW_PID (added to PIDS)
# and GW_T0.
start_gateway() {
  port_free "$PORT" || die "127.0.0.1:$PORT is already in use (set BENCH_PORT)"
  GW_T0=$(now_ns)
  "$GATEWAY" serve --config "$TMP/gateway.toml" >"$TMP/$1.log" 2>&1 &
  GW_PID=$!
  PIDS+=("$GW_PID")
}

# ready_or_die LOGNAME: waits (READY_TIMEOUT s) for /readyz, prints ms from
# process start.
ready_or_die() {
  local rc=0
  wait_http "http://127.0.0.1:$PORT/readyz" "$GW_PID" "$READY_TIMEOUT" || rc=$?
  case $rc in
    0) ms_since "$GW_T0" ;;
    2) die "gateway exited before /readyz: $(tail -20 "$TMP/$1.log")" ;;
    *) die "gateway not ready after ${READY_TIMEOUT}s: $(tail -20 "$TMP/$1.log")" ;;
  esac
}

# ------------------------------------------------------------ SayName
envelope() {
  cat <<EOF
<?xml version="1.0" encoding="utf-8"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">
    <soap:Body>
        <SayName xmlns="http://VATS">
            <Number>$1</Number>
        </SayName>
    </soap:Body>
</soap:Envelope>
EOF
}

# say_name NUMBER OUTFILE: prints "http_code size_download".
say_name() {
  envelope "$1" | curl -s -o "$2" -w '%{http_code} %{size_download}' --max-time 5 \
    -X POST -H 'Content-Type: text/xml' -u SOAP:123 --data-binary @- \
    "http://127.0.0.1:$PORT$SOAP_PATH" || echo "000 0"
}

# need_wrk: installs wrk (apt-get) when it is missing; dies without it.
need_wrk() {
  command -v wrk >/dev/null 2>&1 && return 0
  log "wrk not found: apt-get install -y wrk"
  if [[ $(id -u) == 0 ]]; then apt-get install -y wrk >&2 || { apt-get update >&2 && apt-get install -y wrk >&2; }
  else sudo apt-get install -y wrk >&2; fi
  command -v wrk >/dev/null 2>&1 || die "wrk is required"
}

# wrk duration (20, 20s, 2m) in seconds, for the outer timeout.
secs() { local d=$1; case $d in *m) echo $(( ${d%m} * 60 ));; *s) echo "${d%s}";; *) echo "$d";; esac; }

# run_wrk NAME URL DURATION [extra env...]: runs wrk with bench/saynames.lua over
# $TMP/numbers.txt, keeps its output, prints the WRK_RESULT line.
# RUN_WRK_UNTIL, when set, names a command run beside wrk: once it succeeds,
# wrk is ended early (SIGINT: wrk reports what it measured so far, its
# duration_s the time it ran), so a run lasts as long as the work it measures
# (bench/sync.sh drain: the drain), at least a second (wrk's connections up)
# and at most DURATION. The command is left to end by itself (it must be
# bounded); its output is discarded.
run_wrk() {
  local name=$1 url=$2 dur=$3 out pid least rc=0
  out=$TMP/wrk-$name.txt
  shift 3
  env BENCH_NUMBERS="$TMP/numbers.txt" "$@" timeout $(( $(secs "$dur") + 60 )) \
    wrk -t"$THREADS" -c"$CONNS" -d"$dur" --latency -s "$REPO/bench/saynames.lua" "$url" >"$out" 2>&1 &
  pid=$!   # timeout's (env execs it), which passes a SIGINT on to wrk
  if [[ -n ${RUN_WRK_UNTIL:-} ]]; then
    (
      sleep 1 &
      least=$!
      "$RUN_WRK_UNTIL" && wait "$least" && kill -INT "$pid" 2>/dev/null
    ) >/dev/null 2>&1 &
  fi
  wait "$pid" || rc=$?
  (( rc == 0 )) || die "wrk against $name failed: $(tail -5 "$out")"
  grep '^WRK_RESULT' "$out" || die "no WRK_RESULT from wrk against $name: $(tail -5 "$out")"
}

# field KEY LINE: the value of KEY=... in a key=value line.
field() { sed -n "s/.*[[:space:]]$1=\([^[:space:]]*\).*/\1/p" <<<"$2"; }

# start_mock_onec COUNT [PREFIX...]: starts $MOCK (bench/onec_mock.rs) with
# COUNT counterparties (and the arguments in the array MOCK_ARGS, if set:
# --writes, --payments N), under the command words PREFIX (taskset, chrt,
# nice) if any, its output in $TMP/mock.out and $TMP/mock.log; waits (60 s) for
# its URL. Sets MOCK_PID (added to PIDS), URL (checked to be on 127.0.0.1)
# and NUMBERS (the caller numbers it wrote to $TMP/numbers.txt).
start_mock_onec() {
  local count=$1
  shift
  log "starting the mock 1C with $count counterparties"
  : >"$TMP/mock.out"   # exists before the mock starts: the wait below reads it
  "$@" "$MOCK" "$count" --numbers "$TMP/numbers.txt" ${MOCK_ARGS[@]+"${MOCK_ARGS[@]}"} \
    >"$TMP/mock.out" 2>"$TMP/mock.log" &
  MOCK_PID=$!
  PIDS+=("$MOCK_PID")
  URL=""
  for _ in $(seq 1 1200); do   # 60 s
    URL=$(sed -n 's/^ONEC_MOCK url=//p' "$TMP/mock.out")
    [[ -n $URL ]] && break
    kill -0 "$MOCK_PID" 2>/dev/null || die "the mock exited: $(tail -5 "$TMP/mock.log")"
    sleep 0.05
  done
  [[ -n $URL ]] || die "the mock printed no url within 60 s: $(tail -5 "$TMP/mock.log")"
  [[ $URL == http://127.0.0.1:* ]] || die "the mock is not on 127.0.0.1: $URL"
  NUMBERS=$(grep -c '' "$TMP/numbers.txt" || true)
  (( NUMBERS > 0 )) || die "the mock wrote no caller numbers"
  log "mock 1C at $URL (pid $MOCK_PID); $NUMBERS caller numbers; $(tail -1 "$TMP/mock.log")"
}

# start_mock_crm NAME ARGS [PREFIX...]: starts $CRM_MOCK (bench/crm_mock.rs)
# with the arguments ARGS (one string, split on spaces: "--capacity 50
# --drain 2"), under the command words PREFIX (taskset, chrt, nice) if any,
# its output in $TMP/NAME.out and $TMP/NAME.log; waits (60 s) for its URL.
# Sets CRM_PID (added to PIDS) and CRM_URL (checked to be on 127.0.0.1).
# SIGUSR1 makes it print a "CRM_MOCK stats ..." line; SIGTERM prints one
# and stops it.
start_mock_crm() {
  local name=$1 args=$2
  shift 2
  : >"$TMP/$name.out"
  # shellcheck disable=SC2086 # ARGS is split on purpose
  "$@" "$CRM_MOCK" $args >"$TMP/$name.out" 2>"$TMP/$name.log" &
  CRM_PID=$!
  PIDS+=("$CRM_PID")
  CRM_URL=""
  for _ in $(seq 1 1200); do   # 60 s
    CRM_URL=$(sed -n 's/^CRM_MOCK url=//p' "$TMP/$name.out")
    [[ -n $CRM_URL ]] && break
    kill -0 "$CRM_PID" 2>/dev/null || die "the mock CRM exited: $(tail -5 "$TMP/$name.log")"
    sleep 0.05
  done
  [[ -n $CRM_URL ]] || die "the mock CRM printed no url within 60 s: $(tail -5 "$TMP/$name.log")"
  [[ $CRM_URL == http://127.0.0.1:* ]] || die "the mock CRM is not on 127.0.0.1: $CRM_URL"
  log "mock CRM at $CRM_URL (pid $CRM_PID): $(tail -1 "$TMP/$name.log")"
}

# --- SayName at a fixed rate (bench/open_loop.rs), for run.sh and tls.sh ---

# open_loop_run PORT [ARG...]: one run of $OPEN_LOOP against 127.0.0.1:PORT at
# $TAIL_RATE SayName/s over $CONNS connections for $TAIL_SECONDS s (numbers
# from $TMP/numbers.txt, the bench config's SOAP credentials); prints the
# fields of its TAIL_RESULT line.
open_loop_run() {
  local port=$1; shift
  "$OPEN_LOOP" --addr "127.0.0.1:$port" --path "$SOAP_PATH" --numbers "$TMP/numbers.txt" \
    --rate "$TAIL_RATE" --conns "$CONNS" --seconds "$TAIL_SECONDS" --basic SOAP:123 "$@" |
    sed -n 's/^TAIL_RESULT //p'
}

# set_tail_rates VALUE: TAIL_RATES, the rates of BENCH_TAIL_RATE ("20000 60000"
# or "20000,60000"; "0" or empty: none), one per word; dies on anything else.
set_tail_rates() {
  local v=${1//,/ }
  TAIL_RATES=""
  [[ -z ${v// /} || $v == 0 ]] && return 0
  [[ $v =~ ^\ *[0-9]+(\ +[0-9]+)*\ *$ ]] || die "BENCH_TAIL_RATE must be rates (requests/s) separated by spaces: $1"
  TAIL_RATES=$v
}

# fixed_rate_rounds MODE TITLE [ARG...]: for each rate of $TAIL_RATES,
# $ROUNDS interleaved rounds of open_loop_run against $PORT then $FPORT (the
# ARGs passed on); each rate's print_fixed_rate report (TITLE a printf format
# whose %s is the rate; MODE its BENCH_RESULT mode) is written to a file in
# $TMP whose path is added to TAIL_REPORTS, for the report at the end.
fixed_rate_rounds() {
  local mode=$1 title=$2
  shift 2
  local r report
  TAIL_REPORTS=()
  for TAIL_RATE in $TAIL_RATES; do
    local fixed_g=() fixed_f=()
    for ((r = 1; r <= ROUNDS; r++)); do
      log "fixed-rate round $r/$ROUNDS: $TAIL_RATE SayName/s over $CONNS connections for ${TAIL_SECONDS}s, gateway then floor"
      fixed_g+=("$(open_loop_run "$PORT" "$@")")
      fixed_f+=("$(open_loop_run "$FPORT" "$@")")
    done
    report=$TMP/fixed-rate-$mode-$TAIL_RATE.txt
    # shellcheck disable=SC2059 # the title is the format
    print_fixed_rate "$(printf -- "$title" "$TAIL_RATE")" fixed_g fixed_f "$mode" >"$report"
    TAIL_REPORTS+=("$report")
  done
}

# print_fixed_rate TITLE GATEWAY_RUNS FLOOR_RUNS MODE: the rounds of both
# servers (arrays named by GATEWAY_RUNS and FLOOR_RUNS, one open_loop_run
# each), the ratio of their median p99s and a BENCH_RESULT line of MODE.
print_fixed_rate() {
  local title=$1 mode=$4
  local -n gs=$2 fs=$3
  echo "$title"
  printf '%-14s %9s %9s %9s %9s %9s %6s %7s\n' server "p50 ms" "p90 ms" "p99 ms" "p99.9 ms" "max ms" late errors
  local r row name v
  for ((r = 0; r < ${#gs[@]}; r++)); do
    for row in "gateway $((r + 1))|${gs[r]}" "floor $((r + 1))|${fs[r]}"; do
      name=${row%%|*}; v=${row#*|}
      printf '%-14s %9s %9s %9s %9s %9s %6s %7s\n' "$name" "$(field p50_ms "$v")" "$(field p90_ms "$v")" \
        "$(field p99_ms "$v")" "$(field p999_ms "$v")" "$(field max_ms "$v")" "$(field late "$v")" "$(field errors "$v")"
    done
  done
  local g f ratio
  g=$(median $(for v in "${gs[@]}"; do field p99_ms "$v"; done))
  f=$(median $(for v in "${fs[@]}"; do field p99_ms "$v"; done))
  ratio=$(awk -v g="$g" -v f="$f" 'BEGIN { printf "%.2f", (f > 0 ? g / f : 0) }')
  echo "fixed-rate p99 median gateway $g ms / floor $f ms = $ratio"
  echo "BENCH_RESULT mode=$mode rate=$TAIL_RATE conns=$CONNS seconds=$TAIL_SECONDS rounds=${#gs[@]} gateway_p99_ms=$g floor_p99_ms=$f p99_ratio=$ratio"
}
