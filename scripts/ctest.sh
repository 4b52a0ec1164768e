#!/usr/bin/env bash
# Runs ctest in a build directory and ends with one summary line naming the platform, e.g.
#   platform debian13 libtorch 2.6.0 c++17: 231 passed, 0 failed, 1 skipped
# Exits with ctest's status. Used by test.sh and sanitize.sh, on the host and in every root.
#   ctest.sh <build dir> <label> [ctest arguments...]     (label: "" or e.g. " asan+ubsan")
set -euo pipefail
build=$1 label=$2
shift 2

platform() {
  local ID="" VERSION_ID=""
  # shellcheck disable=SC1091
  [ -r /etc/os-release ] && . /etc/os-release
  if [ "$ID" = debian ] && [ -z "$VERSION_ID" ]; then echo unstable; else echo "${ID:-unknown}${VERSION_ID}"; fi
}
libtorch=$(dpkg-query -W -f='${Version}' libtorch-dev 2>/dev/null | sed 's/[+~-].*//')
standard=$(sed -n 's/^SAVEPOINT_CXX_STANDARD:[A-Z]*=//p' "$build/CMakeCache.txt")
log=$build/ctest-output.log
status=0
# --timeout: no test without a limit of its own can hang CI (the slowest takes under a minute).
(cd "$build" && ctest --output-on-failure --timeout 900 "$@") 2>&1 | tee "$log" || status=$?
total=$(sed -n 's/.* tests failed out of \([0-9]*\).*/\1/p' "$log" | tail -1)
failed=$(sed -n 's/.*, \([0-9]*\) tests failed out of.*/\1/p' "$log" | tail -1)
skipped=$(grep -cE '^[[:space:]]*[0-9]+ - .* \(Skipped\)$' "$log" || true)
if [ -z "$total" ]; then
  echo "platform $(platform) libtorch ${libtorch:-?} c++${standard:-?}${label}: ctest printed no summary (exit code $status)"
  exit $((status == 0 ? 1 : status))
fi
echo "platform $(platform) libtorch ${libtorch:-?} c++${standard:-?}${label}: $((total - failed - skipped)) passed, $failed failed, $skipped skipped"
exit $status
