#!/usr/bin/env bash
# The cost of disabled trace events on the switch path (DESIGN.md §5): the
# resume + yield round trip (`coroutine` bench, `round_trip/corio`) built
# normally, with every event compiled in and disabled, vs built with
# RUSTFLAGS="--cfg corio_trace_off", which compiles them out. Target: within 5%.
#
#   crates/corio/benches/trace_overhead.sh            # 2 runs of each, alternating
#   RUNS=3 crates/corio/benches/trace_overhead.sh
#
# The compiled-out build uses its own target directory (target/trace-off, or
# $TRACE_OFF_TARGET_DIR) so that the normal build is not invalidated. If
# valgrind is installed, the script also counts the instructions of the round
# trip under callgrind (stable on a noisy machine): the bench binary run with
# CORIO_CALLGRIND=round_trip:N executes N round trips in `callgrind_region`,
# and only that function is collected.
set -euo pipefail

cd "$(dirname "$0")/../../.."
ROOT=$(pwd)
ON_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
OFF_DIR=${TRACE_OFF_TARGET_DIR:-$ROOT/target/trace-off}
RUNS=${RUNS:-2}
ITERS=${CALLGRIND_ITERS:-100000}
BENCH_ARGS=(--warm-up-time 1 --measurement-time 3)
FILTER='^round_trip/corio$'

# Prints the path of the coroutine bench binary built into target dir $1
# (remaining arguments: environment for cargo).
build() {
    local dir=$1
    shift
    env "$@" CARGO_TARGET_DIR="$dir" cargo bench -p corio --bench coroutine --no-run \
        --message-format=json 2>/dev/null |
        jq -r 'select(.reason == "compiler-artifact" and .target.name == "coroutine"
                      and .executable != null) | .executable' | tail -n 1
}

# Median time in ns of the last criterion run in target dir $1.
median_ns() {
    jq '.median.point_estimate' "$1/criterion/round_trip/corio/new/estimates.json"
}

OFF_FLAGS="${RUSTFLAGS:-} --cfg corio_trace_off"
echo "building (trace compiled in: $ON_DIR; compiled out: $OFF_DIR)..." >&2
ON_BIN=$(build "$ON_DIR")
OFF_BIN=$(build "$OFF_DIR" RUSTFLAGS="$OFF_FLAGS")
[ -x "$ON_BIN" ] && [ -x "$OFF_BIN" ] || {
    echo "build failed; run: cargo bench -p corio --bench coroutine --no-run" >&2
    exit 1
}

LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
# Runs cargo with its output in $LOG, shown if it fails.
quiet() {
    "$@" >"$LOG" 2>&1 || {
        tail -n 30 "$LOG" >&2
        exit 1
    }
}

on=()
off=()
for i in $(seq "$RUNS"); do
    echo "run $i/$RUNS: compiled in" >&2
    quiet env CARGO_TARGET_DIR="$ON_DIR" cargo bench -p corio --bench coroutine -- \
        "${BENCH_ARGS[@]}" "$FILTER"
    on+=("$(median_ns "$ON_DIR")")
    echo "run $i/$RUNS: compiled out" >&2
    quiet env RUSTFLAGS="$OFF_FLAGS" CARGO_TARGET_DIR="$OFF_DIR" cargo bench -p corio \
        --bench coroutine -- "${BENCH_ARGS[@]}" "$FILTER"
    off+=("$(median_ns "$OFF_DIR")")
done

python3 - "${on[*]}" "${off[*]}" <<'EOF'
import statistics, sys
on = [float(x) for x in sys.argv[1].split()]
off = [float(x) for x in sys.argv[2].split()]
fmt = lambda v: " ".join(f"{x:.2f}" for x in v)
mon, moff = statistics.median(on), statistics.median(off)
print(f"round_trip/corio, trace compiled in (disabled): {fmt(on)} ns  (median {mon:.2f})")
print(f"round_trip/corio, trace compiled out:           {fmt(off)} ns  (median {moff:.2f})")
print(f"time ratio in/out: {mon / moff:.3f}  (target <= 1.05)")
EOF

if command -v valgrind >/dev/null; then
    count() {
        CORIO_CALLGRIND="round_trip:$ITERS" valgrind --tool=callgrind --collect-atstart=no \
            --toggle-collect='*callgrind_region*' --callgrind-out-file=/dev/null "$1" 2>&1 |
            sed -n 's/.*Collected : *\([0-9]*\).*/\1/p'
    }
    ir_on=$(count "$ON_BIN")
    ir_off=$(count "$OFF_BIN")
    python3 - "$ir_on" "$ir_off" "$ITERS" <<'EOF'
import sys
on, off, n = (int(x) for x in sys.argv[1:])
print(f"callgrind, instructions per round trip: compiled in {on / n:.1f}, "
      f"compiled out {off / n:.1f}, ratio {on / off:.3f}")
EOF
else
    echo "valgrind not found: no instruction counts" >&2
fi
