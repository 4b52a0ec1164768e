#!/usr/bin/env bash
# Builds tests/consumer against savepoint: installed + find_package, and add_subdirectory.
#   run.sh <source-dir> <build-dir-of-savepoint> <work-dir> <mode: install|subdirectory>
set -euo pipefail
src=$1 build=$2 work=$3 mode=$4
rm -rf "$work" && mkdir -p "$work"
if [ "$mode" = install ]; then
  cmake --install "$build" --prefix "$work/prefix" >/dev/null
  cmake -S "$src/tests/consumer" -B "$work/build" -G Ninja -DCMAKE_PREFIX_PATH="$work/prefix" >/dev/null
else
  cmake -S "$src/tests/consumer" -B "$work/build" -G Ninja -DSAVEPOINT_SOURCE_DIR="$src" >/dev/null
fi
cmake --build "$work/build" -j 2 >/dev/null
"$work/build/consumer" "$work/ckpts"
