#!/usr/bin/env bash
# SERVIO import (issue 20, "Speed"): the time from a file's drop to its
# clients in the directory, the memory an import takes, and SayName's p99
# while imports run, for COUNT clients (windows-1251 files written by
# bench/gen_counterparties.rs --servio, read through
# config/servio-mapping.example.toml).
#
#   bench/servio.sh              100000 clients (about 40-50 MB a file)
#   bench/servio.sh 2000         a smoke run (BENCH_PROFILE=dev to skip the
#                                release build; BENCH_DURATION=3s BENCH_ROUNDS=1)
#
# 1. A first import of COUNT clients, then a re-import with 10% of them
#    renamed, no SayName load. For each: the file is renamed into
#    servio.import_dir, the gateway is sent SIGHUP (servio.poll = 0s), and the
#    script waits (BENCH_TIMEOUT s at most) for
#    cti_servio_files_total{outcome="applied"} to count it. Printed: the wall
#    time from SIGHUP to applied (taken -> directory swapped and saved), the
#    gateway's own stages (cti_servio_file_seconds: hash, parse, apply, save;
#    a full file's entries are made while it is read, so "parse" includes
#    them and "apply" is the swap), the gateway's CPU time (all threads)
#    until it is idle again (comparable on a busy machine, where the wall
#    time is not), and the peak RSS of the import (VmHWM after clear_refs)
#    above the larger of the settled RSS before and after it. Goals: each
#    import <= 3 s; peak <= 64 MB over steady.
# 2. SayName under imports (wrk, bench/saynames.lua, the numbers of the
#    SERVIO clients' phones, about 10% unknown), BENCH_ROUNDS rounds of: a
#    BENCH_WARMUP run, an idle run, a run beside the spin control
#    (bench/lib.sh's spin_control_wrk: a SCHED_IDLE busy loop, what any work
#    at the import thread's priority costs SayName here) and a busy run while
#    two full files differing from the directory, and from each other, in
#    every client are imported back to back (a file is done when it has left
#    servio.import_dir: applied, saved, archived). The busy run lasts as long
#    as the two imports (bench/lib.sh's RUN_WRK_UNTIL), at least 1 s and at
#    most BENCH_DURATION (then the script waits for the rest); the share of
#    the imports it measured is printed. A round in which the hypervisor stole
#    more than BENCH_STEAL_MAX s in any run is not counted (at most 3 x
#    BENCH_ROUNDS tried). Goal: the median over the counted rounds of busy
#    p99 / spin-control p99 <= 1.1 (as bench/sync.sh drain judges).
#    BENCH_SAYNAME=0 skips this part.
#
# Environment (defaults in brackets): BENCH_PROFILE [release], BENCH_PORT
# [18791], BENCH_TIMEOUT [300], BENCH_SKIP_BUILD [0], BENCH_KEEP [0],
# BENCH_SAYNAME [1], BENCH_THREADS [1], BENCH_CONNS [32], BENCH_DURATION
# [10s], BENCH_WARMUP [2s], BENCH_ROUNDS [3], BENCH_STEAL_MAX [0.5],
# CARGO_TARGET_DIR [./target]. Listens on 127.0.0.1 only; needs wrk for part
# 2 (installed with apt-get when missing); stops what it starts. The files
# of part 2 are written one round at a time (two of about 50 MB at 100,000).
#
# Lines starting with BENCH_RESULT are machine-readable (key=value);
# goal_met=1 when the issue's goal was met in this run.

set -euo pipefail

case "${1:-}" in
  -h|--help) sed -n '2,/^$/p' "$0"; exit 0 ;;
  ''|[0-9]*) ;;
  *) echo "usage: $0 [COUNT]" >&2; exit 2 ;;
esac
COUNT=${1:-100000}
[[ $COUNT =~ ^[0-9]+$ ]] && (( COUNT > 0 )) || { echo "COUNT must be a positive number: $COUNT" >&2; exit 2; }
TIMEOUT=${BENCH_TIMEOUT:-300}
PORT=${BENCH_PORT:-18791}
SOAP_PATH=/telephony/ws/VATS
READY_TIMEOUT=120
PROFILE=${BENCH_PROFILE:-release}
[[ $PROFILE =~ ^[a-z][a-z0-9_-]*$ ]] || { echo "BENCH_PROFILE must be a cargo profile name: $PROFILE" >&2; exit 2; }
SAYNAME=${BENCH_SAYNAME:-1}
THREADS=${BENCH_THREADS:-1}
CONNS=${BENCH_CONNS:-32}
DURATION=${BENCH_DURATION:-10s}
WARMUP=${BENCH_WARMUP:-2s}
ROUNDS=${BENCH_ROUNDS:-3}
STEAL_MAX=${BENCH_STEAL_MAX:-0.5}
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "BENCH_ROUNDS must be a positive number: $ROUNDS" >&2; exit 2; }
[[ $DURATION =~ ^[1-9][0-9]*[sm]?$ && $WARMUP =~ ^[1-9][0-9]*[sm]?$ ]] \
  || { echo "BENCH_DURATION and BENCH_WARMUP must be wrk durations (10s, 2m): $DURATION $WARMUP" >&2; exit 2; }

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
OUT=$TARGET/$([[ $PROFILE == dev ]] && echo debug || echo "$PROFILE")
GATEWAY=$OUT/cti-gateway
GEN=$OUT/examples/gen_counterparties

# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"

if [[ ${BENCH_SKIP_BUILD:-0} != 1 ]]; then
  log "cargo build --profile $PROFILE --bin cti-gateway --example gen_counterparties"
  cargo build --profile "$PROFILE" --bin cti-gateway --example gen_counterparties >&2
fi
[[ -x $GATEWAY && -x $GEN ]] || die "missing $GATEWAY or $GEN (build failed?)"
[[ $SAYNAME == 0 ]] || need_wrk

TMP=$(mktemp -d /tmp/cti-servio-bench.XXXXXX)
mkdir -p "$TMP/in"
log "generating $COUNT clients"
"$GEN" --count "$COUNT" --out "$TMP/records.jsonl" --numbers "$TMP/numbers.txt" --queries 100000 --seed 42 \
  --servio "$TMP/first.xml" >&2 || die "gen_counterparties failed"
"$GEN" --count "$COUNT" --out "$TMP/records.jsonl" --queries 0 --seed 42 \
  --servio "$TMP/second.xml" --servio-changed 10 --servio-tag "(2)" >&2 || die "gen_counterparties failed"
# The directory file: one record of its own, so only SERVIO's clients count.
printf '%s\n' '{"id":"bench-1","name":"Bench","phones":["+7 999 000-00-01"]}' >"$TMP/counterparties.jsonl"
cp "$REPO/config/servio-mapping.example.toml" "$TMP/mapping.toml"

write_gateway_config warn "
[servio]
import_dir = \"$TMP/in\"
archive_dir = \"$TMP/archive\"
error_dir = \"$TMP/errors\"
mapping = \"$TMP/mapping.toml\"
poll = \"0s\"
settle = \"0s\"
max_records = $(( COUNT + 10 ))"

start_gateway gateway
ready_ms=$(ready_or_die gateway)
log "gateway ready after ${ready_ms} ms (pid $GW_PID)"

metric() { # metric NAME_WITH_LABELS: its value, 0 when absent
  curl -s --max-time 5 "http://127.0.0.1:$PORT/metrics" | awk -v m="$1" '$1 == m {print $2; found=1} END {if (!found) print 0}'
}

applied=0
import() { # import LABEL FILE
  local label=$1 file=$2 before_kb after_kb hwm t0 ms deadline cpu0 cpu1
  cpu0=$(wait_idle "$GW_PID" 30)
  before_kb=$(rss_kb "$GW_PID")
  echo 5 >"/proc/$GW_PID/clear_refs" 2>/dev/null || log "clear_refs not writable: the peak includes the start"
  local stages_before
  stages_before=$(for s in hash parse apply save; do metric "cti_servio_file_seconds_sum{stage=\"$s\"}"; done | tr '\n' ' ')
  cp "$file" "$TMP/in/Clients_$label.xml.part"
  mv "$TMP/in/Clients_$label.xml.part" "$TMP/in/Clients_$label.xml"
  t0=$(now_ns)
  kill -HUP "$GW_PID"
  applied=$(( applied + 1 ))
  deadline=$(( $(date +%s) + TIMEOUT ))
  until [[ $(metric 'cti_servio_files_total{outcome="applied"}') == "$applied" ]]; do
    (( $(date +%s) < deadline )) || die "$label not applied within ${TIMEOUT}s: $(tail -5 "$TMP/gateway.log")"
    [[ -z $(ls "$TMP/errors" 2>/dev/null) ]] || die "$label refused: $(cat "$TMP"/errors/*.error.txt)"
    sleep 0.05
  done
  ms=$(ms_since "$t0")
  hwm=$(hwm_kb "$GW_PID")
  cpu1=$(wait_idle "$GW_PID" 30)
  after_kb=$(rss_kb "$GW_PID")
  local steady=$(( before_kb > after_kb ? before_kb : after_kb ))
  local stages="" i=0 s b a
  read -r -a b <<<"$stages_before"
  for s in hash parse apply save; do
    a=$(metric "cti_servio_file_seconds_sum{stage=\"$s\"}")
    stages+=" servio_${label}_${s}_s=$(awk -v a="$a" -v b="${b[$i]}" 'BEGIN {printf "%.3f", a - b}')"
    i=$(( i + 1 ))
  done
  log "$label: applied ${ms} ms after SIGHUP; RSS ${before_kb} -> ${after_kb} kB, peak ${hwm} kB; gateway CPU $(secs_of_ticks $(( cpu1 - cpu0 ))) s"
  echo "BENCH_RESULT servio_${label}_clients=$COUNT servio_${label}_ms=$ms servio_${label}_cpu_s=$(secs_of_ticks $(( cpu1 - cpu0 )))${stages} servio_${label}_peak_over_steady_kb=$(( hwm - steady )) servio_${label}_rss_before_kb=$before_kb servio_${label}_rss_after_kb=$after_kb"
}

file_bytes=$(stat -c %s "$TMP/first.xml")
import first "$TMP/first.xml"
import reimport "$TMP/second.xml"
counterparties=$(metric cti_directory_counterparties)
log "directory: $counterparties counterparties"
[[ $counterparties == $(( COUNT + 1 )) ]] || die "expected $(( COUNT + 1 )) counterparties, the directory has $counterparties"
rm -f "$TMP/first.xml" "$TMP/second.xml"   # part 2 writes its own

# ------------------------------------------------------------ 2. SayName under imports
SOAP_URL=http://127.0.0.1:$PORT$SOAP_PATH

# servio_file NAME TAG: $TMP/NAME.xml, the COUNT clients with every name
# tagged TAG: different in every client from a file of another tag.
servio_file() {
  "$GEN" --count "$COUNT" --out "$TMP/records.jsonl" --queries 0 --seed 42 \
    --servio "$TMP/$1.xml" --servio-changed 100 --servio-tag "$2" >/dev/null 2>&1 \
    || die "gen_counterparties --servio $1 failed"
}

# import_pair: imports $TMP/pair-a.xml then $TMP/pair-b.xml, each once the
# one before has left servio.import_dir (applied, saved and archived), and
# writes "ms_a ms_b" to $TMP/pair.ms; "failed" there if a file went to
# servio.error_dir or did not leave within BENCH_TIMEOUT s. The busy run's
# RUN_WRK_UNTIL: it runs in a subshell beside wrk and waits by looking at the
# folder (no /metrics requests beside the measured ones).
import_pair() {
  local f t0 name deadline times=()
  for f in a b; do
    name=Clients_pair_$PAIR-$f.xml
    mv "$TMP/pair-$f.xml" "$TMP/in/$name"
    t0=$(now_ns)
    kill -HUP "$GW_PID" 2>/dev/null || { echo failed >"$TMP/pair.ms"; return 1; }
    deadline=$(( $(date +%s) + TIMEOUT ))
    while [[ -e $TMP/in/$name ]]; do
      if compgen -G "$TMP/errors/*$name*" >/dev/null || (( $(date +%s) >= deadline )); then
        echo failed >"$TMP/pair.ms"
        return 1
      fi
      sleep 0.1
    done
    times+=("$(ms_since "$t0")")
  done
  echo "${times[*]}" >"$TMP/pair.ms"
}

# ratio A B: A / B, two decimals (0 when B is 0).
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }

PAIR=0
if [[ $SAYNAME != 0 ]]; then
  log "SayName under imports: $ROUNDS rounds of warm-up $WARMUP, idle, spin control, two imports (wrk -t$THREADS -c$CONNS, at most $DURATION a run)"
  counted=() rows=() noisy=0 covers=() pair_ms=()
  for (( round = 1; round <= ROUNDS * 3 && ${#counted[@]} < ROUNDS; round++ )); do
    PAIR=$round
    # Written before the runs, outside them: a file differing in every
    # client from the directory, then one differing from that.
    servio_file pair-a "(r$round a)"
    servio_file pair-b "(r$round b)"
    rm -f "$TMP/pair.ms"
    wait_idle "$GW_PID" 30 >/dev/null
    run_wrk "warmup$round" "$SOAP_URL" "$WARMUP" >/dev/null
    measured_wrk "idle$round" "$SOAP_URL" "$DURATION"
    IDLE=$RUN_RESULT STEALS=$RUN_STEAL
    spin_control_wrk "spin$round" "$SOAP_URL" "$DURATION"
    SPIN=$RUN_RESULT STEALS+=" $RUN_STEAL"
    t0=$(now_ns)
    RUN_WRK_UNTIL=import_pair
    measured_wrk "busy$round" "$SOAP_URL" "$DURATION"
    RUN_WRK_UNTIL=""
    BUSY=$RUN_RESULT STEALS+=" $RUN_STEAL"
    # The imports may outlast the run: wait for them (bounded by import_pair).
    deadline=$(( $(date +%s) + 2 * TIMEOUT + 10 ))
    until [[ -s $TMP/pair.ms ]]; do
      (( $(date +%s) < deadline )) || die "round $round: the two imports did not end: $(tail -5 "$TMP/gateway.log")"
      sleep 0.2
    done
    read -r -a ms <"$TMP/pair.ms"
    [[ ${ms[0]} != failed ]] || die "round $round: an import failed: $(cat "$TMP"/errors/*.error.txt 2>/dev/null | head -5) $(tail -5 "$TMP/gateway.log")"
    pair_total=$(( ms[0] + ms[1] ))
    # The share of the two imports the busy run measured (all of it unless
    # they outlasted BENCH_DURATION).
    cover=$(awk -v w="$(field duration_s "$BUSY")" -v t="$pair_total" 'BEGIN { c = (t > 0 ? w * 100000 / t : 100); if (c > 100) c = 100; printf "%.0f", c }')
    r=$(ratio "$(field p99_ms "$BUSY")" "$(field p99_ms "$SPIN")")
    log "round $round: idle p99 $(field p99_ms "$IDLE") ms, spin control $(field p99_ms "$SPIN") ms, imports $(field p99_ms "$BUSY") ms over $(field duration_s "$BUSY") s (imports ${ms[0]} + ${ms[1]} ms, ${cover}% measured); ratio $r; steal $STEALS s"
    # shellcheck disable=SC2086 # the steal times are split on purpose
    if steal_over "$STEAL_MAX" $STEALS; then
      noisy=$(( noisy + 1 ))
      log "round $round: not counted, steal $STEALS s (over $STEAL_MAX s)"
      rows+=("$round idle (not counted)|$IDLE" "$round spin control (not counted)|$SPIN" "$round imports (not counted)|$BUSY")
      continue
    fi
    counted+=("$r")
    covers+=("$cover")
    pair_ms+=("${ms[0]}" "${ms[1]}")
    rows+=("$round idle|$IDLE" "$round spin control|$SPIN" "$round imports (${cover}% of them)|$BUSY")
  done
  (( ${#counted[@]} > 0 )) || die "every round had more than $STEAL_MAX s of steal time: the machine is too noisy to measure p99 now"
  median_ratio=$(median "${counted[@]}")
  idle_p99=$(median $(for row in "${rows[@]}"; do [[ $row == *" idle|"* ]] && field p99_ms "${row#*|}"; done))
  spin_p99=$(median $(for row in "${rows[@]}"; do [[ $row == *" spin control|"* ]] && field p99_ms "${row#*|}"; done))
  busy_p99=$(median $(for row in "${rows[@]}"; do [[ $row == *" imports ("*"% of them)|"* ]] && field p99_ms "${row#*|}"; done))
  met=$(awk -v r="$median_ratio" 'BEGIN { print (r <= 1.1 ? 1 : 0) }')
  echo
  echo "SayName under SERVIO imports: $COUNT clients a file, two files differing in every client back to back, wrk -t$THREADS -c$CONNS"
  printf '%-34s %10s %9s %9s %9s %9s %8s %7s\n' "run" "requests/s" "p50 ms" "p90 ms" "p99 ms" "p99.9 ms" "errors" "secs"
  for row in "${rows[@]}"; do
    name=${row%%|*}; v=${row#*|}
    printf '%-34s %10s %9s %9s %9s %9s %8s %7s\n' "$name" "$(field rps "$v")" "$(field p50_ms "$v")" \
      "$(field p90_ms "$v")" "$(field p99_ms "$v")" "$(field p999_ms "$v")" \
      "$(( $(field non2xx "$v") + $(field socket_errors "$v") ))" "$(field duration_s "$v")"
  done
  echo "  p99 ratios (imports / spin control) per counted round: ${counted[*]}; median $median_ratio ($noisy rounds not counted for steal time)"
  echo "  an import under load: $(median "${pair_ms[@]}") ms median from SIGHUP to archived (yields to SayName by design: printed, not judged); the busy run measured $(median "${covers[@]}")% of the two imports (median)"
  echo "goal sayname/imports (SayName p99 during the imports <= 1.1x the spin control's): $([[ $met == 1 ]] && echo PASS || echo FAIL) (median ${median_ratio}x of ${#counted[@]} rounds)"
  echo "BENCH_RESULT mode=servio_saynames clients=$COUNT threads=$THREADS conns=$CONNS duration=$DURATION rounds=${#counted[@]} noisy_rounds=$noisy idle_p99_ms=$idle_p99 spin_p99_ms=$spin_p99 busy_p99_ms=$busy_p99 p99_ratios=$(IFS=,; echo "${counted[*]}") p99_ratio=$median_ratio import_ms=$(median "${pair_ms[@]}") imports_measured_pct=$(median "${covers[@]}") goal_met=$met"
fi

stop_ms=$(stop_pid "$GW_PID")
echo "BENCH_RESULT servio_file_bytes=$file_bytes servio_stop_ms=$stop_ms"
