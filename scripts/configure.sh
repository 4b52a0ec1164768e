#!/usr/bin/env bash
# Configures the build directory (default: build/) with Ninja; extra arguments go to cmake.
# A Release build: the README's commands and CI run the suite and the examples, and debug
# information makes a LibTorch translation unit compile 1.6x longer (57 s against 36 s for
# the LibTorch layer's unity file on the 2-core machine). For a debugger:
#   CMAKE_BUILD_TYPE=RelWithDebInfo bash scripts/configure.sh
# Every compile goes through ccache when it is installed (scripts/install-deps.sh installs it):
# CI builds the same sources in several build directories and several platforms' roots.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${SAVEPOINT_BUILD_DIR:-$root/build}
source "$root/scripts/ccache.sh"
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=${CMAKE_BUILD_TYPE:-Release} \
  "${savepoint_ccache_args[@]}" "$@"
