#!/usr/bin/env bash
# Builds and runs the benchmark; prints the table that docs/performance.md shows.
#   bash scripts/bench.sh                                  # 64 MiB ... 2 GiB, 10,000 checkpoints
#   bash scripts/bench.sh --sizes 64,256 --checkpoints 1000 --dir /path/on/the/disk/to/test
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${SAVEPOINT_BENCH_BUILD_DIR:-$root/build-bench}
bash "$root/scripts/install-deps.sh" >/dev/null
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSAVEPOINT_BUILD_BENCH=ON \
  -DSAVEPOINT_BUILD_TESTS=OFF -DSAVEPOINT_BUILD_EXAMPLES=OFF -DSAVEPOINT_BUILD_TOOLS=OFF >/dev/null
cmake --build "$build" --target savepoint_bench -j 2
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB RAM, $(uname -r)"
"$build/bench/savepoint_bench" "$@"
