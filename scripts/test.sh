#!/usr/bin/env bash
# The README's second command: install what is missing, build everything and run the whole
# test suite through ctest.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${SAVEPOINT_BUILD_DIR:-$root/build}
bash "$root/scripts/install-deps.sh"
bash "$root/scripts/configure.sh" >/dev/null
cmake --build "$build" -j 2
cd "$build" && ctest --output-on-failure -j 2
