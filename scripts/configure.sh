#!/usr/bin/env bash
# Configures the build directory (default: build/) with Ninja; extra arguments go to cmake.
# Every compile goes through ccache when it is installed (scripts/install-deps.sh installs it):
# CI builds the same sources in several build directories and several platforms' roots.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${SAVEPOINT_BUILD_DIR:-$root/build}
source "$root/scripts/ccache.sh"
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=${CMAKE_BUILD_TYPE:-RelWithDebInfo} \
  "${savepoint_ccache_args[@]}" "$@"
