#!/usr/bin/env bash
# SERVIO import: the time from a file's drop to its clients in the directory,
# and the memory an import takes, for a first import of COUNT clients and a
# re-import with 10% of them renamed (windows-1251 files written by
# bench/gen_counterparties.rs --servio, read through
# config/servio-mapping.example.toml).
#
#   bench/servio.sh              100000 clients (about 40-50 MB a file)
#   bench/servio.sh 2000         a smoke run (BENCH_PROFILE=dev to skip the release build)
#
# For each import: the file is renamed into servio.import_dir, the gateway is
# sent SIGHUP (servio.poll = 0s), and the script waits (BENCH_TIMEOUT s at most)
# for cti_servio_files_total{outcome="applied"} to count it. Printed: the wall
# time from SIGHUP to applied (taken -> directory swapped and saved), the
# gateway's own stages (cti_servio_file_seconds: hash, parse, apply, save), and
# the peak RSS of the import (VmHWM after clear_refs) above the larger of the
# settled RSS before and after it. No SayName load here: the p99-under-import
# comparison with the BENCH_BUSY=spin control (as bench/onec.sh does) is not
# written yet.
#
# Environment (defaults in brackets): BENCH_PROFILE [release], BENCH_PORT
# [18791], BENCH_TIMEOUT [300], BENCH_SKIP_BUILD [0], BENCH_KEEP [0],
# CARGO_TARGET_DIR [./target]. Listens on 127.0.0.1 only; stops what it starts.
#
# Lines starting with BENCH_RESULT are machine-readable (key=value).

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

TMP=$(mktemp -d /tmp/cti-servio-bench.XXXXXX)
mkdir -p "$TMP/in"
log "generating $COUNT clients"
"$GEN" --count "$COUNT" --out "$TMP/records.jsonl" --queries 0 --seed 42 \
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
  local label=$1 file=$2 before_kb after_kb hwm t0 ms deadline
  wait_idle "$GW_PID" 30 >/dev/null
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
  wait_idle "$GW_PID" 30 >/dev/null
  after_kb=$(rss_kb "$GW_PID")
  local steady=$(( before_kb > after_kb ? before_kb : after_kb ))
  local stages="" i=0 s b a
  read -r -a b <<<"$stages_before"
  for s in hash parse apply save; do
    a=$(metric "cti_servio_file_seconds_sum{stage=\"$s\"}")
    stages+=" servio_${label}_${s}_s=$(awk -v a="$a" -v b="${b[$i]}" 'BEGIN {printf "%.3f", a - b}')"
    i=$(( i + 1 ))
  done
  log "$label: applied ${ms} ms after SIGHUP; RSS ${before_kb} -> ${after_kb} kB, peak ${hwm} kB"
  echo "BENCH_RESULT servio_${label}_clients=$COUNT servio_${label}_ms=$ms${stages} servio_${label}_peak_over_steady_kb=$(( hwm - steady )) servio_${label}_rss_before_kb=$before_kb servio_${label}_rss_after_kb=$after_kb"
}

import first "$TMP/first.xml"
import reimport "$TMP/second.xml"
counterparties=$(metric cti_directory_counterparties)
log "directory: $counterparties counterparties"
[[ $counterparties == $(( COUNT + 1 )) ]] || die "expected $(( COUNT + 1 )) counterparties, the directory has $counterparties"
stop_ms=$(stop_pid "$GW_PID")
echo "BENCH_RESULT servio_file_bytes=$(stat -c %s "$TMP/first.xml") servio_stop_ms=$stop_ms"
