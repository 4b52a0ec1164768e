#!/usr/bin/env bash
# The README's second command: install what is missing, build everything and run the whole
# test suite: ctest, then each fuzzer for a bounded time, then ctest again under ASan + UBSan.
#   SAVEPOINT_FUZZ_SECONDS=600 bash scripts/test.sh    # fuzz longer
#   SAVEPOINT_QUICK=1 bash scripts/test.sh             # ctest only (while developing)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${SAVEPOINT_BUILD_DIR:-$root/build}
bash "$root/scripts/install-deps.sh"
bash "$root/scripts/configure.sh" >/dev/null
cmake --build "$build" -j 2
(cd "$build" && ctest --output-on-failure -j 2)
if [ -n "${SAVEPOINT_QUICK:-}" ]; then exit 0; fi
bash "$root/scripts/fuzz.sh" "${SAVEPOINT_FUZZ_SECONDS:-60}"
bash "$root/scripts/sanitize.sh"
