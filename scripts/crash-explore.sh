#!/usr/bin/env bash
# Power-loss crash-state explorer, full run (docs/reliability.md, "Power loss"): records each
# scenario's file-system operations and checks every crash state the two persistence models
# allow, up to SAVEPOINT_CRASH_STATES_PER_POINT per crash point and model (default 1000: all
# of them where a crash point has at most that many, else the extremes and a seeded sample;
# each scenario's line says at how many crash points it sampled). CI runs the same test with
# 4 per crash point. About 3 minutes on 2 cores.
#   bash scripts/crash-explore.sh                 # every state, seed 1
#   SAVEPOINT_CRASH_SEED=7 bash scripts/crash-explore.sh
# Builds build/tests/savepoint_core_tests if needed (SAVEPOINT_BUILD_DIR to use another build
# directory). States are materialized under $TMPDIR (default /dev/shm when present: each
# state's next save fsyncs, which costs nothing on tmpfs).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${SAVEPOINT_BUILD_DIR:-$root/build}
if [ ! -f "$build/build.ninja" ] && [ ! -f "$build/Makefile" ]; then
  bash "$root/scripts/configure.sh" >/dev/null
fi
cmake --build "$build" --target savepoint_core_tests -j "${SAVEPOINT_JOBS:-2}" >/dev/null
if [ -z "${TMPDIR:-}" ] && [ -d /dev/shm ] && [ -w /dev/shm ]; then export TMPDIR=/dev/shm; fi
export SAVEPOINT_CRASH_STATES_PER_POINT=${SAVEPOINT_CRASH_STATES_PER_POINT:-1000}
export SAVEPOINT_CRASH_SEED=${SAVEPOINT_CRASH_SEED:-1}
exec "$build/tests/savepoint_core_tests" "[crash-states]"
