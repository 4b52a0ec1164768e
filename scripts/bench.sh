#!/usr/bin/env bash
# Builds and runs the benchmark; prints the tables that docs/performance.md shows (and writes
# every round to a CSV, --csv FILE, by default savepoint-bench-<UTC time>.csv here).
#   bash scripts/bench.sh                                  # 64 MiB ... 4 GiB, 5 rounds, 10,000 checkpoints
#   bash scripts/bench.sh --sizes 64,256 --checkpoints 1000 --dir /path/on/the/disk/to/test
#   bash scripts/bench.sh average --mib 256 --checkpoints 5   # memory of checkpoint averaging
#   bash scripts/bench.sh io --sizes 256,1024 --rounds 5 --csv io.csv   # overlapped stall, direct I/O
#   bash scripts/bench.sh tier --sizes 256,1024 --rounds 3             # the memory tier, 2 processes as 2 nodes
#   bash scripts/bench.sh incremental --mib 256                        # incremental against full saves (40 rounds)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${SAVEPOINT_BENCH_BUILD_DIR:-$root/build-bench}
bash "$root/scripts/install-deps.sh" >/dev/null
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSAVEPOINT_BUILD_BENCH=ON \
  -DSAVEPOINT_BUILD_TESTS=OFF -DSAVEPOINT_BUILD_EXAMPLES=OFF -DSAVEPOINT_BUILD_TOOLS=OFF >/dev/null
program=savepoint_bench
if [ "${1:-}" = average ]; then
  program=savepoint_bench_average
  shift
elif [ "${1:-}" = io ]; then
  program=savepoint_bench_io
  shift
elif [ "${1:-}" = tier ]; then
  program=savepoint_bench_tier
  shift
elif [ "${1:-}" = incremental ]; then
  program=savepoint_bench_incremental
  shift
fi
cmake --build "$build" --target "$program" -j 2
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB RAM, $(uname -r)"
"$build/bench/$program" "$@"
