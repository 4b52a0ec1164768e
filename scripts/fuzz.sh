#!/usr/bin/env bash
# Builds the libFuzzer targets with clang and runs each for a bounded time (default 60 s).
#   bash scripts/fuzz.sh            # 60 s per target, as CI does
#   bash scripts/fuzz.sh 3600       # an hour per target
# New inputs go to build-fuzz/corpus-*, never into the checked-in seed corpus; a crash leaves
# its input as build-fuzz/crash-* and fails the script.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
seconds=${1:-60}
build=${SAVEPOINT_FUZZ_BUILD_DIR:-$root/build-fuzz}
source "$root/scripts/ccache.sh"
CXX=${FUZZ_CXX:-clang++} cmake -S "$root/fuzz" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release "${savepoint_ccache_args[@]}" >/dev/null
cmake --build "$build" -j 2
# The targets run side by side, each for the full time.
pids=()
targets=(meta safetensors pytorch parts dcp_metadata)
for target in "${targets[@]}"; do
  corpus="$build/corpus-$target"
  mkdir -p "$corpus"
  echo "savepoint: fuzzing the $target reader for ${seconds}s"
  (cd "$build" && "./fuzz_$target" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
     -max_len=65536 -print_final_stats=1 "$corpus" "$root/fuzz/corpus/$target" > "$build/fuzz-$target.log" 2>&1) &
  pids+=($!)
done
status=0
for i in "${!targets[@]}"; do
  target=${targets[$i]}
  if ! wait "${pids[$i]}"; then status=1; fi
  echo "--- fuzz_$target"; tail -n 12 "$build/fuzz-$target.log"
done
[ $status -eq 0 ] || { echo "savepoint: a fuzzer found a problem (see above; inputs in $build/crash-*)"; exit 1; }
echo "savepoint: fuzzers ran clean"
