#!/usr/bin/env bash
# Fuzzes each parser of outside input for a set time with libFuzzer:
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 60 s, every target)
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`) and a nightly toolchain, or
# the stable one with RUSTC_BOOTSTRAP=1 (used when no nightly is installed);
# no network once they are installed and the crates fetched. Builds with
# `cargo fuzz build` (release, debug assertions, AddressSanitizer),
# then runs each target for SECONDS_PER_TARGET (-max_total_time) starting
# from its seed corpus (fuzz/corpus/<target>, read only) and the inputs
# earlier runs found (fuzz/work/<target>, where new ones go), with its
# dictionary (fuzz/dict/). Prints per target the executions run (libFuzzer's
# `stat::number_of_executed_units`) and the crashes found (panics, timeouts,
# out-of-memory, leaks: files under fuzz/artifacts/<target>/, with libFuzzer's
# log beside them in fuzz/work/<target>.log). Exits 1 when any was found.
#
# A run stops at its first crash. Reproduce one with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run <target> fuzz/artifacts/<target>/<file>
# then make it a regression test beside the parser.
set -euo pipefail

FUZZ_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SECONDS_PER_TARGET="${1:-60}"
shift || true
ALL_TARGETS=(soap_envelope phone push_body jsonl odata_page servio_file)
if [[ $# -gt 0 ]]; then TARGETS=("$@"); else TARGETS=("${ALL_TARGETS[@]}"); fi

if ! [[ "$SECONDS_PER_TARGET" =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 [SECONDS_PER_TARGET] [TARGET...]  (targets: ${ALL_TARGETS[*]})" >&2
    exit 2
fi

dict_of() {
    case "$1" in
        soap_envelope | servio_file) echo xml ;;
        phone) echo phone ;;
        push_body | jsonl) echo json ;;
        odata_page) echo odata ;;
        *) echo "unknown target: $1 (targets: ${ALL_TARGETS[*]})" >&2; exit 2 ;;
    esac
}
for t in "${TARGETS[@]}"; do dict_of "$t" >/dev/null; done

cd "$FUZZ_DIR"
# No network: the crates must be fetched once beforehand
# (`cargo fetch --manifest-path fuzz/Cargo.toml`); CARGO_NET_OFFLINE=false lifts this.
export CARGO_NET_OFFLINE="${CARGO_NET_OFFLINE:-true}"
# cargo-fuzz passes nightly-only flags (-Zsanitizer=address): a nightly
# toolchain if there is one, else the stable one with its unstable features
# unlocked (RUSTC_BOOTSTRAP=1; stable ships the sanitizer runtime too), as on
# a machine whose only toolchain is stable.
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    FUZZ=(cargo +nightly fuzz)
else
    FUZZ=(env RUSTC_BOOTSTRAP=1 cargo fuzz)
fi
echo "building fuzz targets (${FUZZ[*]} build)..." >&2
"${FUZZ[@]}" build >&2

mkdir -p work artifacts
declare -A EXECS CRASHES
failed=0
for t in "${TARGETS[@]}"; do
    mkdir -p "work/$t" "artifacts/$t"
    log="work/$t.log"
    before="$(find "artifacts/$t" -type f | sort)"
    echo "fuzzing $t for ${SECONDS_PER_TARGET}s (log: fuzz/$log)..." >&2
    # libFuzzer exits non-zero on a crash; the artifacts tell, not the status.
    # The outer `timeout` only guards against a run that ignores its budget.
    timeout --kill-after=30 "$((SECONDS_PER_TARGET + 120))" \
        "${FUZZ[@]}" run "$t" "work/$t" "corpus/$t" -- \
        -max_total_time="$SECONDS_PER_TARGET" \
        -print_final_stats=1 \
        -timeout=10 \
        -rss_limit_mb=2048 \
        -dict="dict/$(dict_of "$t").dict" \
        >"$log" 2>&1 || true
    execs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1 || true)"
    new="$(comm -13 <(echo "$before") <(find "artifacts/$t" -type f | sort) | sed '/^$/d')"
    EXECS[$t]="${execs:-?}"
    CRASHES[$t]="$(echo -n "$new" | grep -c . || true)"
    if [[ -z "$execs" ]]; then
        echo "  $t: no final stats in fuzz/$log (did the build or the run fail?)" >&2
        tail -20 "$log" >&2
        failed=1
    fi
    if [[ -n "$new" ]]; then
        failed=1
        sed 's/^/  new artifact: fuzz\//' <<<"$new" >&2
        grep -m1 -E 'panicked at|ERROR: libFuzzer|ERROR: AddressSanitizer' "$log" | sed 's/^/  /' >&2 || true
    fi
done

printf '\n%-14s %14s %8s\n' target executions crashes
for t in "${TARGETS[@]}"; do
    printf '%-14s %14s %8s\n' "$t" "${EXECS[$t]}" "${CRASHES[$t]}"
done
exit "$failed"
