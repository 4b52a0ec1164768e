#!/usr/bin/env bash
# Builds tests/consumer against savepoint the ways users do, reusing the one build of savepoint:
#   install:      cmake --install of that build into a temporary prefix, then the consumer with
#                 find_package as C++20, and with `pkg-config --cflags --libs savepoint` as C++17
#                 (C++20 where LibTorch demands it, which savepoint.pc then says itself); each
#                 runs, and must report the standard it asked for; the installed CLI runs
#   subdirectory: the consumer with add_subdirectory: configured and generated (savepoint's
#                 targets and LibTorch's are visible to the parent, its options default off),
#                 and the consumer's own source compiled with the flags savepoint passes on.
#                 Linking it would build savepoint a second time; the install mode links and
#                 runs the same program.
#   run.sh <source-dir> <build-dir-of-savepoint> <work-dir> <mode: install|subdirectory>
set -euo pipefail
src=$1 build=$2 work=$3 mode=$4
source "$src/scripts/ccache.sh"
rm -rf "$work" && mkdir -p "$work"
torch_standard=$(sed -n 's/^SAVEPOINT_CXX_STANDARD:[A-Z]*=//p' "$build/CMakeCache.txt")
torch_min=$(grep -q -- '-std=c++20' "$build/savepoint.pc" 2>/dev/null && echo 20 || echo 17)

expect_standard() {  # expect_standard <output> <standard>
  case $1 in
    *"(C++ 2017"*) got=17 ;; *"(C++ 2020"*) got=20 ;; *) got="?" ;;
  esac
  [ "$got" = "$2" ] || { echo "FAIL: the consumer was compiled as C++$got, not C++$2: $1"; exit 1; }
}

if [ "$mode" = subdirectory ]; then
  cmake -S "$src/tests/consumer" -B "$work/build" -G Ninja -DSAVEPOINT_SOURCE_DIR="$src" \
    "${savepoint_ccache_args[@]}" >/dev/null
  grep -q "SAVEPOINT_BUILD_TESTS:BOOL=OFF" "$work/build/CMakeCache.txt" ||
    { echo "FAIL: savepoint's tests default on under add_subdirectory"; exit 1; }
  cmake --build "$work/build" --target CMakeFiles/consumer.dir/main.cpp.o >/dev/null
  echo "package test passed ($mode: configured, consumer compiled; savepoint built once, by its own build)"
  exit 0
fi

cmake --install "$build" --prefix "$work/prefix" >/dev/null
cmake -S "$src/tests/consumer" -B "$work/build" -G Ninja -DCMAKE_PREFIX_PATH="$work/prefix" \
  -DCMAKE_CXX_STANDARD=20 "${savepoint_ccache_args[@]}" >/dev/null
cmake --build "$work/build" -j 2 >/dev/null
out=$("$work/build/consumer" "$work/ckpts")
echo "find_package: $out"
expect_standard "$out" 20

pc=$(dirname "$(find "$work/prefix" -name savepoint.pc | head -1)")
[ -f "$pc/savepoint.pc" ] && [ -f "$pc/savepoint-core.pc" ] || { echo "FAIL: savepoint.pc not installed"; exit 1; }
export PKG_CONFIG_PATH="$pc"
flags=$(pkg-config --cflags --libs savepoint)
if [ "$torch_min" = 20 ]; then
  # savepoint.pc carries -std=c++20 itself: a consumer that names no standard gets it.
  pc_standard=20 std_flag=""
else
  pc_standard=17 std_flag="-std=c++17"
fi
launcher=()
command -v ccache >/dev/null 2>&1 && [ ${#savepoint_ccache_args[@]} -gt 0 ] && launcher=(ccache)
# shellcheck disable=SC2086  # the flags are words
"${launcher[@]}" ${CXX:-c++} $std_flag "$src/tests/consumer/main.cpp" -o "$work/consumer-pkg-config" $flags
out=$("$work/consumer-pkg-config" "$work/ckpts-pkg-config")
echo "pkg-config: $out"
expect_standard "$out" "$pc_standard"
echo "pkg-config consumer built with: $std_flag $flags"
# The CLI is installed as `savepoint`, and reads what the consumer wrote.
"$work/prefix/bin/savepoint" verify "$work/ckpts-pkg-config"
# savepoint-torchrun (scripts/torchrun.py) is installed, runnable, and is torchrun.
if command -v torchrun >/dev/null 2>&1; then
  py=$(sed -n '1s/^#! *//p' "$(command -v torchrun)")
  "${py:-python3}" "$work/prefix/bin/savepoint-torchrun" --help | grep -q -- "--nproc" ||
    { echo "savepoint-torchrun --help is not torchrun's"; exit 1; }
else
  [ -x "$work/prefix/bin/savepoint-torchrun" ] || { echo "savepoint-torchrun is not installed"; exit 1; }
fi
echo "package test passed ($mode; savepoint's own build is C++$torch_standard)"
