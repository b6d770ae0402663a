#!/usr/bin/env bash
# The 1C writer's request rate (issue 19) against the mock 1C, in one process
# (bench/onec_writer.rs: the mock of tests/support/mock_onec.rs and a gateway
# whose [sync.onec] creates COUNT companies 1C lacks: a search by INN and a
# POST with two contact rows each).
#
#   bench/onec_writer.sh              10000 creates at per_second 200
#   bench/onec_writer.sh 2000 100
#
# Goal (issue): at per_second = 200, at least 180 requests/s over the run and
# never more than 200 in any 1 s window (BENCH_RESULT req_per_s, max_1s).
#
# Environment (defaults in brackets):
#   BENCH_PROFILE [release] cargo profile (dev for a smoke run)
#   BENCH_CONCURRENCY [8] [sync.onec] concurrency
#   BENCH_TIMEOUT [300] seconds to wait for every create
#   BENCH_SKIP_BUILD [0]
#   CARGO_TARGET_DIR [./target]
# Everything listens on 127.0.0.1 only; the run is bounded by BENCH_TIMEOUT
# and the process it starts ends with it.
set -euo pipefail
cd "$(dirname "$0")/.."

COUNT="${1:-10000}"
PER_SECOND="${2:-200}"
PROFILE="${BENCH_PROFILE:-release}"
CONCURRENCY="${BENCH_CONCURRENCY:-8}"
TIMEOUT="${BENCH_TIMEOUT:-300}"
TARGET="${CARGO_TARGET_DIR:-target}"
case "$PROFILE" in
  dev) OUT="$TARGET/debug/examples/onec_writer" ;;
  *) OUT="$TARGET/$PROFILE/examples/onec_writer" ;;
esac

if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
  cargo build -q --profile "$PROFILE" --example onec_writer
fi

echo "onec_writer: $COUNT creates at per_second=$PER_SECOND (concurrency $CONCURRENCY, $PROFILE build)"
LOG="$(mktemp)"
trap 'rm -f "$LOG"' EXIT
# The example stops its gateway and mock itself; timeout(1) bounds it anyway.
timeout --signal=TERM --kill-after=10 "$((TIMEOUT + 60))" \
  "$OUT" --count "$COUNT" --per-second "$PER_SECOND" --concurrency "$CONCURRENCY" \
  --timeout "$TIMEOUT" | tee "$LOG"

result="$(grep '^BENCH_RESULT bench=onec_writer' "$LOG" | tail -1)"
value() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$result"; }
rate="$(value req_per_s)"
max_1s="$(value max_1s)"
floor="$(awk -v p="$PER_SECOND" 'BEGIN { printf "%.1f", p * 0.9 }')"
verdict=PASS
awk -v r="$rate" -v f="$floor" 'BEGIN { exit !(r >= f) }' || verdict=FAIL
[ "$max_1s" -le "${PER_SECOND%.*}" ] || verdict=FAIL
echo "BENCH_RESULT bench=onec_writer_goal req_per_s=$rate floor=$floor max_1s=$max_1s limit=$PER_SECOND verdict=$verdict"
