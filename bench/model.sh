#!/usr/bin/env bash
# The long run of the directory's property test (tests/directory_model.rs):
# CASES random histories of STEPS operations (file edits, pushes, deletes,
# 1C changes, restarts), each played against a real gateway and a mock 1C
# and checked against a model of the rules after every operation.
#
#   bench/model.sh              200 histories of 40 operations
#   bench/model.sh 1000 60      a longer hunt
#   CTI_MODEL_SEED=N bench/model.sh 1 STEPS
#                               replays the history of seed N
#
# Runs `cargo test --release --test directory_model -- --nocapture` with
# CTI_MODEL_CASES and CTI_MODEL_STEPS set; cargo test's own run plays 8
# histories of 20. Prints how many histories and operations passed. On a
# mismatch the test shrinks the history and prints the seed, the history,
# the smallest failing one found and the expected and actual answers; the
# script then exits non-zero after the operations that passed before it.
# About 1.5 s a history of 40 operations on the 2-core machine.
#
# Environment (defaults in brackets):
#   BENCH_TIMEOUT [7200] seconds the test may run
#   BENCH_KEEP [0] keep the temp dir (the test's whole output)
#   CARGO_TARGET_DIR [./target]
# Everything listens on 127.0.0.1 only (each history starts its own gateway
# and mock 1C on port 0). Every wait is bounded.
#
# Lines starting with BENCH_RESULT are machine-readable (key=value).

set -euo pipefail

case "${1:-}" in
  -h|--help) sed -n '2,/^$/p' "$0"; exit 0 ;;
  ''|[0-9]*) ;;
  *) echo "usage: $0 [CASES] [STEPS]" >&2; exit 2 ;;
esac
CASES=${1:-200}
STEPS=${2:-40}
for n in "$CASES" "$STEPS"; do
  [[ $n =~ ^[0-9]+$ ]] && (( n > 0 )) || { echo "CASES and STEPS must be positive numbers: $n" >&2; exit 2; }
done
TIMEOUT=${BENCH_TIMEOUT:-7200}

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"

TMP=$(mktemp -d /tmp/cti-model-bench.XXXXXX)
OUT=$TMP/model.out

log "building the test (release)"
cargo test --release --test directory_model --no-run >&2

what="$CASES histories of $STEPS operations"
[[ -n ${CTI_MODEL_SEED:-} ]] && what="seed $CTI_MODEL_SEED, $STEPS operations"
log "playing $what"
started=$(now_ns)
rc=0
CTI_MODEL_CASES=$CASES CTI_MODEL_STEPS=$STEPS timeout "$TIMEOUT" \
  cargo test --release --test directory_model -- --nocapture >"$OUT" 2>&1 || rc=$?
elapsed_ms=$(ms_since "$started")

# Histories that passed, and their operations, from the test's MODEL_CASE lines.
passed=$(grep -c '^MODEL_CASE ' "$OUT" || true)
operations=$(sed -n 's/^MODEL_CASE .* operations=\([0-9]*\).*/\1/p' "$OUT" | awk '{s += $1} END {print s + 0}')
if (( rc != 0 )); then
  # The panic message: from the test's failure line to cargo's summary.
  sed -n '/disagrees with the model/,/^stack backtrace:\|^note: run with/p' "$OUT" >&2 || true
  if (( rc == 124 )); then log "the test did not finish within $TIMEOUT s"; fi
  log "FAILED after $passed histories and $operations operations that agreed with the model ($(( elapsed_ms / 1000 )) s); output in $OUT"
  BENCH_KEEP=1
  echo "BENCH_RESULT mode=model cases=$CASES steps=$STEPS passed_histories=$passed passed_operations=$operations elapsed_s=$(( elapsed_ms / 1000 )) result=fail"
  exit 1
fi
result=$(grep '^MODEL_RESULT ' "$OUT") || die "no MODEL_RESULT line in the test's output: $(tail -5 "$OUT")"
log "passed: $passed histories, $operations operations, $(field answers "$result") SayName answers checked, in $(( elapsed_ms / 1000 )) s"
echo "BENCH_RESULT mode=model cases=$CASES steps=$STEPS passed_histories=$passed passed_operations=$operations answers=$(field answers "$result") elapsed_s=$(( elapsed_ms / 1000 )) result=pass"
