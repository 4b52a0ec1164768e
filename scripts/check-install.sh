#!/usr/bin/env bash
# CI: the README's consumer path works after the demo. A fresh build directory gets exactly
# the demo's build (scripts/demo.sh --build-only), then `cmake --install` into a temporary
# prefix (below it), and tests/consumer is built against that prefix with find_package(savepoint) and with
# `pkg-config --cflags --libs savepoint`, and run (tests/consumer/run.sh, as ctest's package
# test does with the full build). Prints one closing line, "install: ... ok" or "install: FAILED".
#   check-install.sh [build-dir]   (default: build/check-install, emptied first; ccache makes
#                                   the rebuild cheap)
#   SAVEPOINT_INSTALL_CHECK_TIMEOUT=1800   seconds for the whole check
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-${SAVEPOINT_BUILD_DIR:-$root/build}/check-install}
limit=${SAVEPOINT_INSTALL_CHECK_TIMEOUT:-1800}
rm -rf "$dir" && mkdir -p "$dir"
log=$dir/check-install.log
# The prefix and the consumer's builds: temporary (removed with $dir), and below the source
# tree, so that ccache, which hashes paths relative to it, reuses the consumer's compiles.
work=$dir/consumer
start=$SECONDS
check() {
  SAVEPOINT_BUILD_DIR="$dir" bash "$root/scripts/demo.sh" --build-only &&
    bash "$root/tests/consumer/run.sh" "$root" "$dir" "$work" install
}
export -f check
export root dir work
if timeout "$limit" bash -c check >"$log" 2>&1 && grep -q "package test passed" "$log"; then
  rm -rf "$dir"  # ccache keeps what it compiled
  echo "install: the demo's build, cmake --install into a temporary prefix, find_package and pkg-config consumers built and run: ok ($((SECONDS - start)) s)"
else
  rc=$?
  tail -n 40 "$log"
  [ "$rc" -eq 124 ] && why="timed out after $limit s" || why="see $log"
  echo "install: FAILED ($why)"
  exit 1
fi
