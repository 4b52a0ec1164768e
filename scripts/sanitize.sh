#!/usr/bin/env bash
# Builds the library, tests, examples and CLI with AddressSanitizer + UndefinedBehaviorSanitizer
# and runs the test suite under them. As C++20 (SAVEPOINT_SANITIZE_CXX_STANDARD): the plain build
# is C++17 on the same LibTorch, so the host checks both standards without a third build. Skipped: the package tests (they rebuild savepoint
# unsanitized) and the compile-fail tests (they run no code). The crash tests kill 50 children
# instead of 200 (the unsanitized pass runs 200; SAVEPOINT_CRASH_ROUNDS overrides both). Any
# report fails the run: UBSan does not recover, ASan aborts on the first error.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${SAVEPOINT_SANITIZE_BUILD_DIR:-$root/build-sanitize}
source "$root/scripts/ccache.sh"
# -g1: line tables are all a sanitizer's stack trace needs, and compile and link faster.
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG="-O0 -g1" \
  -DSAVEPOINT_SANITIZE=ON -DSAVEPOINT_CXX_STANDARD=${SAVEPOINT_SANITIZE_CXX_STANDARD:-20} \
  "${savepoint_ccache_args[@]}" >/dev/null
cmake --build "$build" -j 2
# LibTorch itself is not instrumented; leak checking would report its process-lifetime caches.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:abort_on_error=1:detect_stack_use_after_return=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export SAVEPOINT_CRASH_ROUNDS=${SAVEPOINT_CRASH_ROUNDS:-50}
bash "$root/scripts/ctest.sh" "$build" " asan+ubsan" -j 2 -E '^(package|compile): '
echo "savepoint: the suite is clean under ASan + UBSan"
