#!/usr/bin/env bash
# The README's second command: install what is missing, build everything and run the whole
# test suite: ctest, then the install after the demo's build (scripts/check-install.sh), each
# fuzzer for a bounded time, then ctest again under ASan + UBSan.
#   SAVEPOINT_FUZZ_SECONDS=600 bash scripts/test.sh    # fuzz longer
#   SAVEPOINT_QUICK=1 bash scripts/test.sh             # ctest only (while developing)
#   SAVEPOINT_PLATFORMS="debian13 unstable" bash scripts/test.sh
#                     # then ctest in a root of each of those releases, as CI does (scripts/platforms.sh)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${SAVEPOINT_BUILD_DIR:-$root/build}
bash "$root/scripts/install-deps.sh"
if [ -n "${SAVEPOINT_PLATFORMS:-}" ]; then
  # The other releases' roots get ready (built, upgraded, dependencies installed: mostly
  # downloads) while the host builds and tests.
  mkdir -p "$build"
  # shellcheck disable=SC2086  # a list of names
  bash "$root/scripts/platforms.sh" prepare $SAVEPOINT_PLATFORMS >"$build/platforms-prepare.log" 2>&1 &
  prepare=$!
  trap 'kill $prepare 2>/dev/null || true' EXIT
fi
bash "$root/scripts/configure.sh" >/dev/null
cmake --build "$build" -j 2
bash "$root/scripts/ctest.sh" "$build" "" -j 2
if [ -n "${SAVEPOINT_QUICK:-}" ]; then exit 0; fi
# The README's consumer path after the demo: the demo's build alone, installed and consumed.
bash "$root/scripts/check-install.sh"
bash "$root/scripts/fuzz.sh" "${SAVEPOINT_FUZZ_SECONDS:-60}"
bash "$root/scripts/sanitize.sh"
if [ -n "${SAVEPOINT_PLATFORMS:-}" ]; then
  wait "$prepare" || true
  trap - EXIT
  cat "$build/platforms-prepare.log"
  # shellcheck disable=SC2086  # a list of names
  bash "$root/scripts/platforms.sh" $SAVEPOINT_PLATFORMS
fi
