#!/usr/bin/env bash
# Runs the Python reader's tests against checkpoints written by C++ in this run.
#   run.sh suite   <source-dir> <work-dir> <fixtures-program> [train_resume]
#   run.sh install <source-dir> <work-dir> <fixtures-program>
# Exit 77 (ctest: skipped) when Debian's interpreter or one of its packages is missing.
set -euo pipefail
mode=$1 src=$2 work=$3 fixtures=$4 trainer=${5:-}
py=${SAVEPOINT_PYTHON:-/usr/bin/python3}  # Debian's: another python3 on PATH may lack torch
if [ ! -x "$py" ]; then echo "SKIPPED: no $py (Debian: python3)"; exit 77; fi
for module in torch numpy xxhash; do
  "$py" -c "import $module" 2>/dev/null || { echo "SKIPPED: $py cannot import $module (Debian: python3-$module)"; exit 77; }
done
rm -rf "$work" && mkdir -p "$work"
"$fixtures" "$work/fixtures" >/dev/null
export SAVEPOINT_FIXTURES="$work/fixtures"
if [ "$mode" = suite ]; then
  if [ -n "$trainer" ]; then
    "$trainer" "$work/train_resume" --epochs 3 >/dev/null
    export SAVEPOINT_TRAIN_RESUME_DIR="$work/train_resume"
  fi
  # From the source tree, as a user of the repository would.
  cd "$work" && PYTHONPATH="$src/python" "$py" -m unittest discover -s "$src/python/tests" -t "$src/python/tests" -v 2>&1 |
    tee "$work/unittest.log"
  # unittest exits 0 when tests are skipped: a skip here means a fixture went missing.
  ! grep -q 'skipped' "$work/unittest.log" || { echo "FAIL: tests were skipped"; exit 1; }
  exit 0
fi
# install: pip builds the package with setuptools from Debian, downloads nothing.
"$py" -m pip --version >/dev/null 2>&1 || { echo "SKIPPED: $py has no pip (Debian: python3-pip)"; exit 77; }
cp -r "$src/python" "$work/src"  # pip's build writes egg-info next to the sources
"$py" -m pip install --quiet --no-build-isolation --no-deps --no-index --disable-pip-version-check --root-user-action=ignore \
  --target "$work/site" "$work/src"
cd "$work" && PYTHONPATH="$work/site" "$py" - <<'PY'
import os, savepoint
assert savepoint.__file__.startswith(os.path.join(os.getcwd(), "site")), savepoint.__file__
run = savepoint.CheckpointDir(os.path.join(os.environ["SAVEPOINT_FIXTURES"], "Adam"))
before = run.checkpoint("CKPT+before")
assert before.verify() == [], before.verify()
state = before.state_dict("model")
print("installed savepoint", savepoint.__version__, "read", len(state), "tensors of", before.name)
PY
