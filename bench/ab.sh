#!/usr/bin/env bash
# A/B of two gateway builds on SayName against one floor, in interleaved
# rounds: what a hot-path change is worth, measured minutes apart at most.
#
#   bench/ab.sh BIN_A BIN_B [ROUNDS] [DURATION]     e.g. bench/ab.sh /tmp/gw-before target/release/cti-gateway 4 10s
#
# Generates 100,000 counterparties (bench/gen_counterparties.rs), starts
# both gateways (each its own store) and bench/floor_server.rs with an
# answer of the gateway's size on 127.0.0.1, warms each up, then per round
# runs wrk -t1 -c32 (bench/saynames.lua) against A, B and the floor and
# prints requests/s, p99 and the ratios A/floor, B/floor, B/A. Needs release
# builds of the examples (cargo build --release --examples) and wrk.
# The config sets only keys every build knows (A may predate a key): 32
# connections stay under server.max_connections_per_address's default.
set -euo pipefail
A=${1:?usage: bench/ab.sh BIN_A BIN_B [ROUNDS] [DURATION]}
B=${2:?usage: bench/ab.sh BIN_A BIN_B [ROUNDS] [DURATION]}
ROUNDS=${3:-3}
DUR=${4:-10s}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"
GEN=$TARGET/release/examples/gen_counterparties
FLOOR=$TARGET/release/examples/floor_server
for b in "$A" "$B" "$GEN" "$FLOOR"; do [[ -x $b ]] || die "missing $b"; done
need_wrk
TMP=$(mktemp -d /tmp/cti-ab.XXXXXX)
generate_counterparties 100000 200000 42
config() {
  cat >"$TMP/$1.toml" <<EOT
[server]
listen = "127.0.0.1:$2"
[soap]
path = "/telephony/ws/VATS"
username = "SOAP"
password = "123"
[directory]
file = "$TMP/counterparties.jsonl"
[store]
path = "$TMP/$1.sqlite"
[log]
level = "warn"
EOT
  chmod 600 "$TMP/$1.toml"
}
config a 18101
config b 18102
"$A" serve --config "$TMP/a.toml" >"$TMP/a.log" 2>&1 & PIDS+=($!)
"$B" serve --config "$TMP/b.toml" >"$TMP/b.log" 2>&1 & PIDS+=($!)
"$FLOOR" --listen 127.0.0.1:18103 --size 577 >"$TMP/floor.log" 2>&1 & PIDS+=($!)
for port in 18101 18102 18103; do
  for _ in $(seq 1 600); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/readyz") == 200 ]] && break
    [[ $port == 18103 ]] && { curl -s -o /dev/null "http://127.0.0.1:$port/" && break; }
    sleep 0.1
  done
done
w() {
  BENCH_NUMBERS="$TMP/numbers.txt" wrk -t1 -c32 -d"$2" --latency -s "$REPO/bench/saynames.lua" \
    "http://127.0.0.1:$1/telephony/ws/VATS" 2>&1 | grep '^WRK_RESULT'
}
for port in 18101 18102 18103; do w $port 3s >/dev/null; done
for ((r = 1; r <= ROUNDS; r++)); do
  a=$(w 18101 "$DUR"); b=$(w 18102 "$DUR"); f=$(w 18103 "$DUR")
  awk -v r="$r" -v a="$(field rps "$a")" -v ap="$(field p99_ms "$a")" -v b="$(field rps "$b")" \
      -v bp="$(field p99_ms "$b")" -v f="$(field rps "$f")" -v fp="$(field p99_ms "$f")" \
    'BEGIN { printf "round %d: A %.0f/s p99 %s | B %.0f/s p99 %s | floor %.0f/s p99 %s | A/floor %.3f B/floor %.3f B/A %.3f\n", r, a, ap, b, bp, f, fp, a / f, b / f, b / a }'
done
