#!/usr/bin/env bash
# The multi-process benchmark (docs/performance.md, "Multi-process saves"): for each world size,
# N dist_worker processes (scenario save_bench) over Gloo on loopback print the save time of 4 replicated keys
# written by rank 0 alone vs spread over the ranks, savepoint's collectives per save, and the
# per-step cost of the agreement check (a store read) and of an after_step that does not save.
#   bash scripts/bench-dist.sh [MiB per key, default 64] [world sizes, default "2 4"]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${SAVEPOINT_BUILD_DIR:-$root/build}
mib=${1:-64}
worlds=${2:-2 4}
[ -d "$build" ] || bash "$root/scripts/configure.sh" >/dev/null
cmake --build "$build" --target dist_worker -j 2 >/dev/null
worker="$build/tests/dist_worker"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB RAM, $(uname -r); checkpoints in $work"
for n in $worlds; do
  pids=()
  for r in $(seq 0 $((n - 1))); do
    "$worker" save_bench "$r" "$n" "$work/store-$n" "$work/ckpt-$n" "$mib" > "$work/rank$r.log" 2>&1 & pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || { echo "a rank failed:"; cat "$work"/rank*.log; exit 1; }; done
  grep -h -v ': ok$' "$work"/rank*.log
  rm -rf "$work"/ckpt-"$n"*
done
