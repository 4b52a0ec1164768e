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
echo "savepoint: configuring $build for ${targets[*]} (the library comes with them)"
bash "$root/scripts/configure.sh" >/dev/null
# One line for the build: ninja's own lines go to a log, whose end is shown if it fails.
steps=$(cmake --build "$build" --target "${targets[@]}" -- -n 2>/dev/null | grep -c '^\[[0-9]*/[0-9]*\]' || true)
log="$build/demo-build.log" start=$SECONDS
if [ "$steps" -gt 0 ]; then
  printf 'savepoint: building %s steps (the first build takes ~6 min on 2 cores) ...' "$steps"
else
  printf 'savepoint: checking the build ...'
fi
if ! cmake --build "$build" --target "${targets[@]}" -j 2 >"$log" 2>&1; then
  printf ' FAILED; the end of %s:\n' "$log"; tail -n 40 "$log"; exit 1
fi
if [ "$steps" -gt 0 ]; then echo " built in $((SECONDS - start)) s (its log: $log)"; else echo " up to date"; fi
[ "${1:-}" = --build-only ] && exit 0
bash "$root/scripts/run-examples.sh" "$build/examples/nutshell" "$build/examples/train_resume" "$build/demo-runs"
# Several processes: stopped at 2 ranks, killed at 3, finished at 4 (docs/distributed.md).
bash "$root/scripts/ddp-demo.sh" "$build/examples/train_ddp" "$build/demo-runs/ddp"
echo
echo "savepoint: demo done (every run's full log: $build/demo-runs). To use savepoint from your own CMake project: cmake --install $build --prefix <dir>"
echo "  (README, \"Using it from CMake\"); the whole test suite: bash scripts/test.sh"
