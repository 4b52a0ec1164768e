#!/usr/bin/env bash
# Builds tests/consumer against savepoint the ways users do, and runs it:
#   install:      cmake --install into a temporary prefix, then the consumer with find_package
#                 AND with `pkg-config --cflags --libs savepoint`; the installed CLI `savepoint` runs
#   subdirectory: the consumer with add_subdirectory
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
if [ "$mode" = install ]; then
  pc=$(dirname "$(find "$work/prefix" -name savepoint.pc | head -1)")
  [ -f "$pc/savepoint.pc" ] && [ -f "$pc/savepoint-core.pc" ] || { echo "FAIL: savepoint.pc not installed"; exit 1; }
  export PKG_CONFIG_PATH="$pc"
  # shellcheck disable=SC2046  # the flags are words
  ${CXX:-c++} -std=c++17 "$src/tests/consumer/main.cpp" -o "$work/consumer-pkg-config" \
    $(pkg-config --cflags --libs savepoint)
  "$work/consumer-pkg-config" "$work/ckpts-pkg-config"
  echo "pkg-config consumer built with: $(pkg-config --cflags --libs savepoint)"
  # The CLI is installed as `savepoint`, and reads what the consumer wrote.
  "$work/prefix/bin/savepoint" verify "$work/ckpts-pkg-config"
fi
echo "package test passed ($mode)"
