#!/usr/bin/env bash
# The README's first command: install what is missing, build the examples and run them end to
# end, showing a run interrupted (cleanly and with kill -9) and resumed from its checkpoint.
# It builds everything `cmake --install` installs (the library and the `savepoint` CLI), so
# the README's consumer path works afterwards; scripts/check-install.sh checks that in CI.
#   demo.sh --build-only   install what is missing and build, without running anything
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${SAVEPOINT_BUILD_DIR:-$root/build}
# The demo's targets: the examples it runs, and the CLI (installed with the library).
targets=(savepoint_cli nutshell train_resume train_ddp)
bash "$root/scripts/install-deps.sh" demo
echo "savepoint: configuring $build and building ${targets[*]} (the library comes with them)"
bash "$root/scripts/configure.sh" >/dev/null
cmake --build "$build" --target "${targets[@]}" -j 2
[ "${1:-}" = --build-only ] && exit 0
bash "$root/scripts/run-examples.sh" "$build/examples/nutshell" "$build/examples/train_resume" "$build/demo-runs"
# Several processes: stopped at 2 ranks, killed at 3, finished at 4 (docs/distributed.md).
bash "$root/scripts/ddp-demo.sh" "$build/examples/train_ddp" "$build/demo-runs/ddp"
echo
echo "savepoint: demo done. To use savepoint from your own CMake project: cmake --install $build --prefix <dir>"
echo "  (README, \"Using it from CMake\"); the whole test suite: bash scripts/test.sh"
