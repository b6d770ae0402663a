#!/usr/bin/env bash
# 1C full read and refresh benchmark of cti-gateway against the mock 1C OData
# server (tests/support/mock_onec.rs, run by bench/onec_mock.rs).
#
#   bench/onec.sh             100000 counterparties
#   bench/onec.sh 250000
#
# Builds (release; BENCH_PROFILE), starts the mock 1C with COUNT generated counterparties, and
# the gateway with only [onec] as its source (page_size 1000 unless BENCH_PAGE_SIZE, refresh 1h, so
# every read after the first is one the script asks for with SIGHUP). Then:
#   a. warm-up: wall time from the gateway's start to its first completed read
#      (cti_onec_refresh_seconds_count >= 1 in /metrics), the gateway's own
#      measure (cti_onec_refresh_seconds_sum) and the gateway's CPU time
#      (utime+stime of /proc/PID/stat) up to then, and until it is idle again
#      (the snapshot of the new directory is written after the read);
#   b. a full re-read in which every record changed: SIGUSR1 to the mock (it
#      re-writes every record: new DataVersion), SIGHUP to the gateway; wall
#      (gateway's measure), CPU, cti_onec_refresh_changed_records;
#   c. a re-read in which nothing changed: SIGHUP only; the same figures;
#   d. SayName p99 with no refresh running: wrk (bench/saynames.lua, the
#      callers' numbers the mock wrote: every one known);
#   e. SayName p99 while all-changed refreshes run back to back (a loop of
#      SIGUSR1 mock, SIGHUP gateway, wait for the read to complete, for the
#      whole wrk run): p99, its ratio to d's, and how many reads ran.
# Goals (issue): a. at most 10 s for COUNT=100000; e. p99 at most 2x d's p99.
#
# Environment (defaults in brackets):
#   BENCH_THREADS [1] BENCH_CONNS [32] BENCH_DURATION [10s] BENCH_WARMUP [3s]
#   BENCH_ROUNDS [3] idle/busy pairs of wrk runs (d. then e., each DURATION)
#     counted; a pair is not counted when the hypervisor's steal time in either
#     run exceeds BENCH_STEAL_MAX [0.5] s (at most 3 x ROUNDS pairs are tried)
#   BENCH_PORT [18081] gateway port (the mock takes a free port)
#   BENCH_READ_TIMEOUT [120] seconds to wait for one full read
#   BENCH_PAGE_SIZE [1000] onec.page_size (rows per request)
#   BENCH_SKIP_BUILD [0] BENCH_KEEP [0] keep the temp dir (config, logs, wrk output)
#   BENCH_PROFILE [release] cargo profile to build and run (dev for a smoke run)
#   BENCH_BUSY [changed] what runs back to back during e.: "changed" (the
#     goal's case), "unchanged" (SIGHUP only: transfer and parse, no rebuild, no
#     snapshot save), "mock" (the mock re-writes its records and serves the same
#     pages to curl, the gateway reads nothing: what sharing the 2 cores with
#     the mock alone costs SayName), "spin" / "memory" (controls: a busy loop
#     / a memory writer (dd bs=64M) under SCHED_IDLE and nice 19 like the read
#     thread, the gateway reading nothing: what any work at that priority
#     costs SayName on this machine; bench/lib.sh's busy_control, which
#     bench/sync.sh runs beside wrk with spin_control_wrk)
#   BENCH_PERF [0] 1: `perf record` the gateway during e. (adds its own
#     overhead to e.'s figures); the top of the profile is printed, perf.data kept
#   BENCH_MOCK_NICE [unset] run the mock under `nice -n N` (19: the mock takes
#     only what the gateway and wrk leave, as a 1C on another machine would)
#   BENCH_MOCK_IDLE [unset] 1: run the mock under SCHED_IDLE (`chrt --idle 0`):
#     it gets a core only when nothing else wants it, closer still to a 1C
#     on its own machine
#   BENCH_MOCK_CPU [unset] N: run the mock on core N only (`taskset -c N`);
#     the gateway keeps its background work on its last core, so N = that
#     core keeps the mock off the cores that answer
#   CARGO_TARGET_DIR [./target]
# Everything listens on 127.0.0.1 only. Every wait is bounded. The script stops
# the processes it started (by pid) when it exits, however it exits.
#
# Lines starting with BENCH_RESULT are machine-readable (key=value); times in
# seconds (_s) or milliseconds (_ms), CPU in seconds of one core.

set -euo pipefail

case "${1:-}" in
  -h|--help) sed -n '2,/^$/p' "$0"; exit 0 ;;
  ''|[0-9]*) ;;
  *) echo "usage: $0 [COUNT]" >&2; exit 2 ;;
esac
COUNT=${1:-100000}
[[ $COUNT =~ ^[0-9]+$ ]] && (( COUNT > 0 )) || { echo "COUNT must be a positive number: $COUNT" >&2; exit 2; }

THREADS=${BENCH_THREADS:-1}
CONNS=${BENCH_CONNS:-32}
DURATION=${BENCH_DURATION:-10s}
ROUNDS=${BENCH_ROUNDS:-3}
STEAL_MAX=${BENCH_STEAL_MAX:-0.5}
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "BENCH_ROUNDS must be a positive number: $ROUNDS" >&2; exit 2; }
WARMUP=${BENCH_WARMUP:-3s}
PORT=${BENCH_PORT:-18081}
READ_TIMEOUT=${BENCH_READ_TIMEOUT:-120}
PAGE_SIZE=${BENCH_PAGE_SIZE:-1000}
[[ $PAGE_SIZE =~ ^[1-9][0-9]*$ ]] || { echo "BENCH_PAGE_SIZE must be a positive number: $PAGE_SIZE" >&2; exit 2; }
BUSY_MODE=${BENCH_BUSY:-changed}
case $BUSY_MODE in changed|unchanged|mock|spin|memory) ;; *) echo "BENCH_BUSY must be changed, unchanged, mock, spin or memory: $BUSY_MODE" >&2; exit 2 ;; esac
SOAP_PATH=/telephony/ws/VATS
SOAP_URL=http://127.0.0.1:$PORT$SOAP_PATH

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
PROFILE=${BENCH_PROFILE:-release}
[[ $PROFILE =~ ^[a-z][a-z0-9_-]*$ ]] || { echo "BENCH_PROFILE must be a cargo profile name: $PROFILE" >&2; exit 2; }
# cargo puts the dev profile's output under debug/.
OUT=$TARGET/$([[ $PROFILE == dev ]] && echo debug || echo "$PROFILE")
GATEWAY=$OUT/cti-gateway
MOCK=$OUT/examples/onec_mock
HZ=$(getconf CLK_TCK)

# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"

# ------------------------------------------------------------ helpers

# metric NAME: its value in the gateway's /metrics (an unlabelled series), or empty.
metric() {
  curl -s --max-time 2 "http://127.0.0.1:$PORT/metrics" 2>/dev/null \
    | awk -v m="$1" '$1 == m {print $2; found=1; exit} END {if (!found) print ""}' || true
}
refresh_count() { local v; v=$(metric cti_onec_refresh_seconds_count); echo "${v:-0}"; }

# wait_refresh_after N [POLL_S]: until the gateway's completed reads exceed N
# (at most READ_TIMEOUT s; 2 if the gateway died, 1 on timeout). Polls /metrics
# every POLL_S [0.02] s (a curl each: only outside the measured wrk runs).
wait_refresh_after() {
  local n=$1 poll=${2:-0.02} deadline c
  deadline=$(( $(date +%s) + READ_TIMEOUT ))
  while (( $(date +%s) < deadline )); do
    kill -0 "$GW_PID" 2>/dev/null || return 2
    c=$(refresh_count)
    [[ $c =~ ^[0-9]+$ ]] && (( c > n )) && return 0
    sleep "$poll"
  done
  return 1
}

refresh_or_die() {
  local rc=0
  wait_refresh_after "$1" || rc=$?
  case $rc in
    0) ;;
    2) die "gateway exited during a 1C read: $(tail -20 "$TMP/gateway.log")" ;;
    *) die "no 1C read completed within ${READ_TIMEOUT}s: $(tail -20 "$TMP/gateway.log")" ;;
  esac
}

# touch_mock: SIGUSR1 to the mock, until it says it re-wrote every record (60 s).
touch_mock() {
  local at
  at=$(file_size "$TMP/mock.out")
  kill -USR1 "$MOCK_PID" 2>/dev/null || return 2
  wait_line "$TMP/mock.out" "$at" '^ONEC_MOCK touched=' 60
}

# hup_and_wait: SIGHUP to the gateway, until it logs that the read is done
# (READ_TIMEOUT s; 2 if the gateway is gone).
hup_and_wait() {
  local at
  at=$(file_size "$TMP/gateway.log")
  kill -HUP "$GW_PID" 2>/dev/null || return 2
  : >"$TMP/loop.started"
  wait_line "$TMP/gateway.log" "$at" 'counterparties read from 1C|reading 1C failed' "$READ_TIMEOUT"
}

# gateway_sum: cti_onec_refresh_seconds_sum (0 if absent).
gateway_sum() { local v; v=$(metric cti_onec_refresh_seconds_sum); echo "${v:-0}"; }
sub() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a - b }'; }






# urlenc TEXT: percent-encoded UTF-8 (unreserved characters and , kept).
urlenc() {
  local hex out="" h
  hex=$(printf '%s' "$1" | od -An -tx1 -v | tr -s ' \n' ' ')
  for h in $hex; do
    case $h in
      2[cd]|2e|3[0-9]|4[1-9a-f]|5[0-9a]|5f|6[1-9a-f]|7[0-9a]|7e) out+=$(printf "\\x$h") ;;
      *) out+="%${h^^}" ;;
    esac
  done
  printf '%s' "$out"
}

# write_mock_pages FILE: a curl config that GETs every page of a full read the
# way the gateway asks for them (same sets, $select, $orderby, page size).
write_mock_pages() {
  local file=$1 set sel ord rows skip auth
  auth=$(printf 'odata:secret' | base64)
  : >"$file"
  for spec in "Catalog_Контрагенты|Ref_Key,DataVersion,DeletionMark,IsFolder,Description,НаименованиеПолное,ИНН,КПП,КатегорияКлиента,ДобавочныйМенеджера|Ref_Key" \
              "Catalog_Контрагенты_КонтактнаяИнформация|Ref_Key,LineNumber,Тип,Представление,НомерТелефона,АдресЭП|Ref_Key,LineNumber"; do
    IFS='|' read -r set sel ord <<<"$spec"
    set=$(urlenc "$set"); sel=$(urlenc "$sel"); ord=$(urlenc "$ord")
    rows=$(curl -s --max-time 30 -H "Authorization: Basic $auth" \
      "$URL/$set?\$format=json&\$inlinecount=allpages&\$top=0" | sed -n 's/.*"odata.count":"\([0-9]*\)".*/\1/p')
    [[ $rows =~ ^[0-9]+$ ]] || die "the mock did not count $set"
    for (( skip = 0; skip <= rows; skip += PAGE_SIZE )); do
      printf 'url = "%s/%s?$format=json&$select=%s&$orderby=%s&$top=%d&$skip=%d"\noutput = "/dev/null"\n' \
        "$URL" "$set" "$sel" "$ord" "$PAGE_SIZE" "$skip" >>"$file"
    done
  done
  printf 'header = "Authorization: Basic %s"\n' "$auth" >>"$file"
}

# refresh_loop: reads (BUSY_MODE) back to back until $TMP/loop.stop exists.
# Appends one line per completed read to $TMP/loop.log; on trouble writes
# $TMP/loop.error and stops. Runs in the background (a subshell).
refresh_loop() {
  while [[ ! -e $TMP/loop.stop ]]; do
    if [[ $BUSY_MODE == changed || $BUSY_MODE == mock ]]; then
      touch_mock || { echo "mock did not touch its records" >"$TMP/loop.error"; return 1; }
    fi
    if [[ $BUSY_MODE == spin || $BUSY_MODE == memory ]]; then
      # A control: one thread of work at the read thread's priority that
      # is not the gateway's; what any SCHED_IDLE work costs SayName here.
      : >"$TMP/loop.started"
      busy_control "$BUSY_MODE" "$TMP/loop.stop"
    elif [[ $BUSY_MODE == mock ]]; then
      : >"$TMP/loop.started"
      curl -s -f --max-time "$READ_TIMEOUT" -K "$TMP/pages.curl" \
        || { echo "curl of the mock's pages failed" >"$TMP/loop.error"; return 1; }
    else
      hup_and_wait || { echo "read did not complete (rc=$?)" >"$TMP/loop.error"; return 1; }
    fi
    echo "$(date +%s.%N)" >>"$TMP/loop.log"
  done
}

# ------------------------------------------------------------ build
if [[ ${BENCH_SKIP_BUILD:-0} != 1 ]]; then
  log "cargo build --profile $PROFILE --bin cti-gateway --example onec_mock"
  cargo build --profile "$PROFILE" --bin cti-gateway --example onec_mock >&2
fi
for b in "$GATEWAY" "$MOCK"; do [[ -x $b ]] || die "missing $b (build failed?)"; done

need_wrk
command -v curl >/dev/null 2>&1 || die "curl is required"
port_free "$PORT" || die "127.0.0.1:$PORT is already in use (set BENCH_PORT)"

TMP=$(mktemp -d /tmp/cti-onec-bench.XXXXXX)
log "work dir $TMP"
CPU=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
log "machine: $(nproc) CPUs ($CPU), $(awk '/MemTotal/ {printf "%.1f GB", $2/1048576}' /proc/meminfo); load average $(cut -d' ' -f1-3 /proc/loadavg)"

# ------------------------------------------------------------ mock 1C
MOCK_PREFIX=()
[[ -n ${BENCH_MOCK_CPU:-} ]] && MOCK_PREFIX+=(taskset -c "$BENCH_MOCK_CPU")
[[ -n ${BENCH_MOCK_IDLE:-} ]] && MOCK_PREFIX+=(chrt --idle 0)
[[ -n ${BENCH_MOCK_NICE:-} ]] && MOCK_PREFIX+=(nice -n "$BENCH_MOCK_NICE")
start_mock_onec "$COUNT" "${MOCK_PREFIX[@]}"

cat >"$TMP/gateway.toml" <<EOF
[server]
listen = "127.0.0.1:$PORT"
max_connections_per_address = 100000   # every bench client comes from 127.0.0.1

[soap]
path = "$SOAP_PATH"
username = "SOAP"
password = "123"

[onec]
odata_url = "$URL"
username = "odata"
password = "secret"
refresh = "1h"
page_size = $PAGE_SIZE
category_field = "КатегорияКлиента"
manager_phone_field = "ДобавочныйМенеджера"

[store]
path = "$TMP/store.sqlite"

[log]
level = "info"
EOF
chmod 600 "$TMP/gateway.toml" # the gateway warns about a password in a world-readable file

# ------------------------------------------------------------ a. warm-up
log "a. warm-up: starting the gateway (empty store), waiting for the first full read"
GW_T0=$(now_ns)
"$GATEWAY" serve --config "$TMP/gateway.toml" >"$TMP/gateway.log" 2>&1 &
GW_PID=$!
PIDS+=("$GW_PID")
MOCK_CPU0=$(cpu_ticks "$MOCK_PID")
refresh_or_die 0
WARM_WALL_MS=$(ms_since "$GW_T0")
WARM_CPU=$(cpu_ticks "$GW_PID")
WARM_SUM=$(sub "$(gateway_sum)" 0)
WARM_MOCK_CPU=$(( $(cpu_ticks "$MOCK_PID") - MOCK_CPU0 ))
WARM_RSS=$(rss_kb "$GW_PID")
WARM_CPU_IDLE=$(wait_idle "$GW_PID")
log "a. first read done ${WARM_WALL_MS} ms after start (gateway's measure ${WARM_SUM} s), gateway CPU $(secs_of_ticks "$WARM_CPU") s ($(secs_of_ticks "$WARM_CPU_IDLE") s until idle), mock CPU $(secs_of_ticks "$WARM_MOCK_CPU") s"

# One SayName: the directory answers from 1C's records.
SAMPLE=$(head -1 "$TMP/numbers.txt")
res=$(say_name "$SAMPLE" "$TMP/answer.xml")
[[ ${res%% *} == 200 ]] && grep -q '&lt;title&gt;[^&]' "$TMP/answer.xml" \
  || die "SayName $SAMPLE: HTTP ${res%% *}, not a known caller: $(head -c 600 "$TMP/answer.xml")"
log "SayName $SAMPLE -> ${res##* } bytes, a known caller"

# full_read NAME TOUCH: one SIGHUP read (after the mock re-wrote every record
# when TOUCH=1). Sets R_WALL_MS (script's), R_SUM (gateway's, s), R_CPU,
# R_CPU_IDLE (ticks), R_CHANGED, R_UNCHANGED, R_MOCK_CPU (ticks).
full_read() {
  local name=$1 touch=$2 c sum0 cpu0 mock0 t0 rc=0
  if [[ $touch == 1 ]]; then touch_mock || die "the mock did not re-write its records: $(tail -3 "$TMP/mock.log")"; fi
  c=$(refresh_count); sum0=$(gateway_sum)
  cpu0=$(cpu_ticks "$GW_PID"); mock0=$(cpu_ticks "$MOCK_PID")
  t0=$(now_ns)
  kill -HUP "$GW_PID"
  refresh_or_die "$c"
  R_WALL_MS=$(ms_since "$t0")
  R_CPU=$(( $(cpu_ticks "$GW_PID") - cpu0 ))
  R_MOCK_CPU=$(( $(cpu_ticks "$MOCK_PID") - mock0 ))
  R_SUM=$(sub "$(gateway_sum)" "$sum0")
  R_CHANGED=$(metric cti_onec_refresh_changed_records)
  R_UNCHANGED=$(metric cti_onec_refresh_unchanged_records)
  R_CPU_IDLE=$(( $(wait_idle "$GW_PID") - cpu0 ))
  log "$name: read in $R_SUM s (gateway's measure; $R_WALL_MS ms SIGHUP to /metrics), gateway CPU $(secs_of_ticks "$R_CPU") s ($(secs_of_ticks "$R_CPU_IDLE") s until idle), mock CPU $(secs_of_ticks "$R_MOCK_CPU") s, changed $R_CHANGED unchanged $R_UNCHANGED"
}

# ------------------------------------------------------------ b. all changed
log "b. full re-read, every record changed"
full_read b 1
B_SUM=$R_SUM B_WALL_MS=$R_WALL_MS B_CPU=$R_CPU B_CPU_IDLE=$R_CPU_IDLE B_CHANGED=$R_CHANGED B_UNCHANGED=$R_UNCHANGED B_MOCK_CPU=$R_MOCK_CPU

# ------------------------------------------------------------ c. unchanged
log "c. full re-read, nothing changed"
full_read c 0
C_SUM=$R_SUM C_WALL_MS=$R_WALL_MS C_CPU=$R_CPU C_CPU_IDLE=$R_CPU_IDLE C_CHANGED=$R_CHANGED C_UNCHANGED=$R_UNCHANGED C_MOCK_CPU=$R_MOCK_CPU

# ------------------------------------------------------------ d./e. p99, idle then busy
# The VM's own noise moves p99 by several times within minutes, so idle and
# busy runs alternate (ROUNDS pairs) and each busy run is compared with the
# idle run just before it; the goal is judged on the median of the ratios.
case $BUSY_MODE in
  changed) E_WHAT="during back-to-back all-changed reads" ;;
  unchanged) E_WHAT="during back-to-back unchanged reads" ;;
  mock) E_WHAT="while the mock serves reads to curl" ;;
  spin) E_WHAT="beside a SCHED_IDLE busy loop" ;;
  memory) E_WHAT="beside a SCHED_IDLE memory writer" ;;
esac
[[ $BUSY_MODE == mock ]] && write_mock_pages "$TMP/pages.curl"

# measure_round R: d. an idle wrk run, then e. a busy one; sets IDLE BUSY
# D_THREADS E_THREADS E_READS E_BUSY E_CPU E_MOCK E_CHANGED.
measure_round() {
  wait_idle "$GW_PID" >/dev/null   # the last round's snapshot save is done
  log "d$1. SayName, no read running: warm-up $WARMUP, then wrk -t$THREADS -c$CONNS -d$DURATION"
  run_wrk idle-warmup "$SOAP_URL" "$WARMUP" >/dev/null
  thread_ticks "$GW_PID" >"$TMP/threads-d0.txt"
  measured_wrk "idle$1" "$SOAP_URL" "$DURATION"
  IDLE=$RUN_RESULT D_IPIS=$RUN_IPIS D_STEAL=$RUN_STEAL
  thread_ticks "$GW_PID" >"$TMP/threads-d1.txt"
  D_THREADS=$(thread_delta "$TMP/threads-d0.txt" "$TMP/threads-d1.txt")
  log "d$1. $IDLE"
  log "d$1. gateway CPU by thread: $D_THREADS; $D_IPIS"

  log "e$1. SayName $E_WHAT: wrk -t$THREADS -c$CONNS -d$DURATION"
  rm -f "$TMP/loop.stop" "$TMP/loop.error" "$TMP/loop.started" "$TMP/loop.log"
  refresh_loop &
  LOOP_PID=$!
  PIDS+=("$LOOP_PID")
  for _ in $(seq 1 1200); do   # 60 s: until the first SIGHUP is out
    [[ -e $TMP/loop.started || -e $TMP/loop.error ]] && break
    sleep 0.05
  done
  [[ -e $TMP/loop.started ]] || die "the refresh loop did not start: $(cat "$TMP/loop.error" 2>/dev/null)"
  PERF_PID=""
  if [[ ${BENCH_PERF:-0} == 1 && $1 == 1 ]]; then
    command -v perf >/dev/null 2>&1 || die "BENCH_PERF=1 but perf is not installed"
    perf record -F 499 -p "$GW_PID" -o "$TMP/perf$1.data" -- sleep "$(secs "$DURATION")" >"$TMP/perf$1.log" 2>&1 &
    PERF_PID=$!
    PIDS+=("$PERF_PID")
  fi
  thread_ticks "$GW_PID" >"$TMP/threads-e0.txt"
  E_COUNT0=$(refresh_count); E_SUM0=$(gateway_sum); E_CPU0=$(cpu_ticks "$GW_PID"); E_MOCK0=$(cpu_ticks "$MOCK_PID")
  E_LOOP0=$(grep -c '' "$TMP/loop.log" 2>/dev/null || true)
  E_T0=$(now_ns)
  measured_wrk "busy$1" "$SOAP_URL" "$DURATION"
  BUSY=$RUN_RESULT E_IPIS=$RUN_IPIS E_STEAL=$RUN_STEAL
  E_MS=$(ms_since "$E_T0")
  E_COUNT1=$(refresh_count); E_SUM1=$(gateway_sum); E_CPU=$(( $(cpu_ticks "$GW_PID") - E_CPU0 )); E_MOCK=$(( $(cpu_ticks "$MOCK_PID") - E_MOCK0 ))
  E_LOOP1=$(grep -c '' "$TMP/loop.log" 2>/dev/null || true)
  thread_ticks "$GW_PID" >"$TMP/threads-e1.txt"
  E_THREADS=$(thread_delta "$TMP/threads-e0.txt" "$TMP/threads-e1.txt")
  : >"$TMP/loop.stop"
  for _ in $(seq 1 $(( (READ_TIMEOUT + 70) * 10 ))); do kill -0 "$LOOP_PID" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$LOOP_PID" 2>/dev/null && die "the refresh loop did not stop"
  wait "$LOOP_PID" 2>/dev/null || true
  [[ -e $TMP/loop.error ]] && die "the refresh loop failed: $(cat "$TMP/loop.error")"
  E_READS=$(( E_COUNT1 - E_COUNT0 ))
  [[ $BUSY_MODE == mock ]] && E_READS=$(( ${E_LOOP1:-0} - ${E_LOOP0:-0} ))
  # Share of the wrk run a read was in progress (gateway's measure of the reads
  # that completed during it; a read straddling its end is counted whole).
  E_BUSY=$(awk -v a="$E_SUM1" -v b="$E_SUM0" -v ms="$E_MS" 'BEGIN { printf "%.0f", (ms > 0 ? (a - b) * 100000 / ms : 0) }')
  E_CHANGED=$(metric cti_onec_refresh_changed_records)
  log "e$1. $BUSY"
  log "e$1. $E_READS reads completed during the run (gateway reading ~$E_BUSY% of it), last changed $E_CHANGED; mock CPU $(secs_of_ticks "$E_MOCK") s"
  log "e$1. gateway CPU by thread: $E_THREADS; $E_IPIS"
  if [[ -n $PERF_PID ]]; then
    for _ in $(seq 1 600); do kill -0 "$PERF_PID" 2>/dev/null || break; sleep 0.1; done
    wait "$PERF_PID" 2>/dev/null || true
    perf report -i "$TMP/perf$1.data" --no-children --sort comm,dso,sym --stdio 2>/dev/null \
      | grep -E '^ +[0-9.]+%' | head -40 >"$TMP/perf-top$1.txt" || true
    log "e$1. perf (gateway, by thread/dso/symbol, self time), top 40, from $TMP/perf$1.data:"
    sed 's/^/    /' "$TMP/perf-top$1.txt" >&2
  fi
}

RATIOS=()
ROWS=()
NOISY=0
for (( round = 1; round <= ROUNDS * 3 && ${#RATIOS[@]} < ROUNDS; round++ )); do
  measure_round "$round"
  r=$(awk -v b="$(field p99_ms "$BUSY")" -v i="$(field p99_ms "$IDLE")" 'BEGIN { printf "%.2f", (i > 0 ? b / i : 0) }')
  if steal_over "$STEAL_MAX" "${D_STEAL:-0}" "${E_STEAL:-0}"; then
    NOISY=$(( NOISY + 1 ))
    ROWS+=("d$round. idle (steal ${D_STEAL}s)|$IDLE" "e$round. (steal ${E_STEAL}s) NOT COUNTED|$BUSY")
    log "round $round: not counted, the hypervisor stole ${D_STEAL} s / ${E_STEAL} s of CPU (over $STEAL_MAX s); p99 busy/idle would be $r"
    continue
  fi
  RATIOS+=("$r")
  ROWS+=("d$round. idle|$IDLE" "e$round. $E_WHAT|$BUSY")
  log "round $round: p99 busy/idle $r; $E_READS reads completed in the busy run (reading ~$E_BUSY% of it)"
done
(( ${#RATIOS[@]} > 0 )) || die "every round had more than $STEAL_MAX s of steal time: the machine is too noisy to measure p99 now"
RATIO=$(median "${RATIOS[@]}")

GW_RSS=$(rss_kb "$GW_PID"); GW_HWM=$(hwm_kb "$GW_PID")
READS_LOG=$(grep -c 'counterparties read from 1C' "$TMP/gateway.log" || true)
ELAPSED=$(grep 'counterparties read from 1C' "$TMP/gateway.log" | sed -n 's/.*elapsed_ms=\([0-9]*\).*/\1/p' | tr '\n' ' ')
WARN=$(grep -ci 'warn\|error' "$TMP/gateway.log" || true)

i_p99=$(field p99_ms "$IDLE"); b_p99=$(field p99_ms "$BUSY")
WARM_S=$(awk -v ms="$WARM_WALL_MS" 'BEGIN { printf "%.2f", ms / 1000 }')
goal_a=$(awk -v s="$WARM_S" 'BEGIN { print (s <= 10 ? "met" : "MISSED") }')
goal_e=$(awk -v r="$RATIO" 'BEGIN { print (r <= 2 ? "met" : "MISSED") }')
[[ $BUSY_MODE == changed ]] || goal_e=n/a

echo
echo "== 1C full read and refresh: $COUNT counterparties from the mock 1C (page $PAGE_SIZE), wrk -t$THREADS -c$CONNS -d$DURATION, $(nproc) CPUs =="
printf '%-42s %10s %10s %10s %10s %10s %10s\n' "read" "wall s" "gw read s" "gw CPU s" "+snapshot" "mock CPU s" "changed"
printf '%-42s %10s %10s %10s %10s %10s %10s\n' "a. warm-up (start to first read done)" "$WARM_S" "$WARM_SUM" \
  "$(secs_of_ticks "$WARM_CPU")" "$(secs_of_ticks "$WARM_CPU_IDLE")" "$(secs_of_ticks "$WARM_MOCK_CPU")" "-"
printf '%-42s %10s %10s %10s %10s %10s %10s\n' "b. re-read, every record changed" "$(awk -v m="$B_WALL_MS" 'BEGIN{printf "%.2f", m/1000}')" "$B_SUM" \
  "$(secs_of_ticks "$B_CPU")" "$(secs_of_ticks "$B_CPU_IDLE")" "$(secs_of_ticks "$B_MOCK_CPU")" "$B_CHANGED"
printf '%-42s %10s %10s %10s %10s %10s %10s\n' "c. re-read, nothing changed" "$(awk -v m="$C_WALL_MS" 'BEGIN{printf "%.2f", m/1000}')" "$C_SUM" \
  "$(secs_of_ticks "$C_CPU")" "$(secs_of_ticks "$C_CPU_IDLE")" "$(secs_of_ticks "$C_MOCK_CPU")" "$C_CHANGED"
echo "  wall s: the script's clock (start or SIGHUP to /metrics showing the read); gw read s: cti_onec_refresh_seconds;"
echo "  gw CPU s: gateway utime+stime until the read showed; +snapshot: until the gateway was idle again"
echo
printf '%-42s %10s %9s %9s %9s %9s %8s\n' "SayName" "requests/s" "p50 ms" "p90 ms" "p99 ms" "p99.9 ms" non2xx
for row in "${ROWS[@]}"; do
  name=${row%%|*}; r=${row#*|}
  printf '%-42s %10s %9s %9s %9s %9s %8s\n' "$name" "$(field rps "$r")" "$(field p50_ms "$r")" \
    "$(field p90_ms "$r")" "$(field p99_ms "$r")" "$(field p999_ms "$r")" "$(( $(field non2xx "$r") + $(field socket_errors "$r") ))"
done
echo "  p99 busy/idle per counted round: ${RATIOS[*]}; median $RATIO ($NOISY rounds not counted for steal time). Last round: $E_READS reads completed during the busy run (the gateway reading ~$E_BUSY% of it); CPU in it: gateway $(secs_of_ticks "$E_CPU") s, mock $(secs_of_ticks "$E_MOCK") s"
echo "  gateway CPU by thread in the last idle run: $D_THREADS"
echo "  gateway CPU by thread in the last busy run: $E_THREADS"
echo
echo "goal a (full read of $COUNT at most 10 s): $goal_a ($WARM_S s from process start; $WARM_SUM s the read itself)"
echo "goal e (p99 during refreshes at most 2x idle p99): $goal_e (median of ${#RATIOS[@]} counted rounds ${RATIO}x; last round $b_p99 ms vs $i_p99 ms)$([[ $BUSY_MODE == changed ]] || echo " -- NOT the goal's case: BENCH_BUSY=$BUSY_MODE")"
echo "gateway RSS at the end $((GW_RSS / 1024)) MB (peak $((GW_HWM / 1024)) MB); $READS_LOG reads logged, elapsed_ms: $ELAPSED"
if (( WARN > 0 )); then
  echo "gateway log has $WARN warn/error lines: $(grep -i 'warn\|error' "$TMP/gateway.log" | head -3)"
fi
echo "BENCH_RESULT mode=onec_read count=$COUNT page_size=$PAGE_SIZE numbers=$NUMBERS warmup_wall_s=$WARM_S warmup_read_s=$WARM_SUM warmup_cpu_s=$(secs_of_ticks "$WARM_CPU") warmup_cpu_settled_s=$(secs_of_ticks "$WARM_CPU_IDLE") warmup_mock_cpu_s=$(secs_of_ticks "$WARM_MOCK_CPU") rss_after_warmup_kb=$WARM_RSS goal_10s=$goal_a"
echo "BENCH_RESULT mode=onec_reread_changed count=$COUNT read_s=$B_SUM wall_ms=$B_WALL_MS cpu_s=$(secs_of_ticks "$B_CPU") cpu_settled_s=$(secs_of_ticks "$B_CPU_IDLE") mock_cpu_s=$(secs_of_ticks "$B_MOCK_CPU") changed=$B_CHANGED unchanged=$B_UNCHANGED"
echo "BENCH_RESULT mode=onec_reread_unchanged count=$COUNT read_s=$C_SUM wall_ms=$C_WALL_MS cpu_s=$(secs_of_ticks "$C_CPU") cpu_settled_s=$(secs_of_ticks "$C_CPU_IDLE") mock_cpu_s=$(secs_of_ticks "$C_MOCK_CPU") changed=$C_CHANGED unchanged=$C_UNCHANGED"
echo "BENCH_RESULT mode=onec_saynames count=$COUNT threads=$THREADS conns=$CONNS duration=$DURATION idle_rps=$(field rps "$IDLE") idle_p50_ms=$(field p50_ms "$IDLE") idle_p99_ms=$i_p99 busy_rps=$(field rps "$BUSY") busy_p50_ms=$(field p50_ms "$BUSY") busy_p99_ms=$b_p99 busy_p999_ms=$(field p999_ms "$BUSY") busy_mode=$BUSY_MODE rounds=${#RATIOS[@]} noisy_rounds=$NOISY p99_ratios=$(IFS=,; echo "${RATIOS[*]}") p99_ratio=$RATIO reads_during=$E_READS read_busy_pct=$E_BUSY busy_cpu_s=$(secs_of_ticks "$E_CPU") busy_mock_cpu_s=$(secs_of_ticks "$E_MOCK") idle_errors=$(( $(field non2xx "$IDLE") + $(field socket_errors "$IDLE") )) busy_errors=$(( $(field non2xx "$BUSY") + $(field socket_errors "$BUSY") )) goal_2x=$goal_e rss_kb=$GW_RSS hwm_kb=$GW_HWM"
