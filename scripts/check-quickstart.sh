#!/usr/bin/env bash
# The README's quick start cannot rot: its ```cpp block must be exactly the region of
# examples/quickstart.cpp between the lines "// [quickstart]" and "// [/quickstart]" (a diff
# is printed otherwise), and the built program must run, twice (the second run recovers).
#   check-quickstart.sh <README.md> <examples/quickstart.cpp> <quickstart binary> <work-dir>
set -euo pipefail
readme=$1 source=$2 binary=$3 work=$4

# The first ```cpp block of the README (the quick start), without its fences.
readme_block() { awk '/^```cpp[[:space:]]*$/ { inside = 1; next } inside && /^```/ { exit } inside' "$readme"; }
# The lines strictly between the markers.
source_region() { awk '/^\/\/ \[\/quickstart\]/ { exit } inside; /^\/\/ \[quickstart\]/ { inside = 1 }' "$source"; }

grep -q '^```cpp' "$readme" || { echo "FAIL: $readme has no \`\`\`cpp block"; exit 1; }
[ "$(grep -c '^// \[quickstart\]' "$source")" -eq 1 ] && [ "$(grep -c '^// \[/quickstart\]' "$source")" -eq 1 ] ||
  { echo "FAIL: $source needs exactly one '// [quickstart]' and one '// [/quickstart]' line"; exit 1; }
if ! diff -u --label "README.md (the \`\`\`cpp block)" --label "examples/quickstart.cpp (between the // [quickstart] markers)" \
       <(readme_block) <(source_region); then
  echo "FAIL: the README's quick start and examples/quickstart.cpp differ (diff above); edit them together"
  exit 1
fi
echo "the README's quick start is examples/quickstart.cpp ($(source_region | wc -l) lines)"

# Run it where it writes runs/exp1/save: a first run trains, a second one recovers and ends.
rm -rf "$work" && mkdir -p "$work"
for run in 1 2; do
  (cd "$work" && "$binary") || { echo "FAIL: quickstart run $run exited with status $?"; exit 1; }
  n=0
  [ -d "$work/runs/exp1/save" ] && n=$(find "$work/runs/exp1/save" -mindepth 1 -maxdepth 1 -name 'CKPT+*' | wc -l)
  [ "$n" -ge 1 ] || { echo "FAIL: quickstart run $run left no checkpoint in runs/exp1/save"; exit 1; }
  echo "quickstart run $run: exit 0, $n checkpoint(s) in runs/exp1/save"
done
