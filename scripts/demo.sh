#!/usr/bin/env bash
# The README's first command: install what is missing, build the examples and run them end to
# end, showing a run interrupted (cleanly and with kill -9) and resumed from its checkpoint.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${SAVEPOINT_BUILD_DIR:-$root/build}
bash "$root/scripts/install-deps.sh"
bash "$root/scripts/configure.sh" >/dev/null
cmake --build "$build" --target nutshell train_resume train_ddp -j 2
bash "$root/scripts/run-examples.sh" "$build/examples/nutshell" "$build/examples/train_resume" "$build/demo-runs"
# Several processes: stopped at 2 ranks, killed at 3, finished at 4 (docs/distributed.md).
bash "$root/scripts/ddp-demo.sh" "$build/examples/train_ddp" "$build/demo-runs/ddp"
