#!/usr/bin/env bash
# Runs the Python reader's tests against checkpoints written by C++ in this run.
#   run.sh suite   <source-dir> <work-dir> <fixtures-program> [train_resume]
#   run.sh install <source-dir> <work-dir> <fixtures-program>
#   run.sh s3      <source-dir> <work-dir> <fixtures-program> [train_resume]
# s3: only python/tests/test_s3.py, against the server scripts/with-s3-server.sh started
# (AWS_ENDPOINT_URL and SAVEPOINT_TEST_S3_BUCKET set); train_resume is not used there.
# Exit 77 (ctest: skipped) when Debian's interpreter or one of its packages is missing, or (s3)
# when no server is given.
set -euo pipefail
mode=$1 src=$2 work=$3 fixtures=$4 trainer=${5:-}
py=${SAVEPOINT_PYTHON:-/usr/bin/python3}  # Debian's: another python3 on PATH may lack torch
if [ ! -x "$py" ]; then echo "SKIPPED: no $py (Debian: python3)"; exit 77; fi
for module in torch numpy xxhash; do
  "$py" -c "import $module" 2>/dev/null || { echo "SKIPPED: $py cannot import $module (Debian: python3-$module)"; exit 77; }
done
if [ "$mode" = s3 ]; then
  for var in AWS_ENDPOINT_URL SAVEPOINT_TEST_S3_BUCKET; do
    [ -n "${!var:-}" ] || { echo "SKIPPED: $var is not set (run under scripts/with-s3-server.sh)"; exit 77; }
  done
  "$py" -c "import boto3" 2>/dev/null || { echo "SKIPPED: $py cannot import boto3 (Debian: python3-boto3)"; exit 77; }
fi
rm -rf "$work" && mkdir -p "$work"
"$fixtures" "$work/fixtures" >/dev/null
export SAVEPOINT_FIXTURES="$work/fixtures"
# unittest_all <pattern>: the tests of python/tests matching <pattern>, from the source tree as
# a user of the repository would run them. unittest exits 0 when tests are skipped, or (before
# Python 3.12) when none ran: either means a fixture or a server went missing, and fails here.
unittest_all() {
  (cd "$work" && PYTHONPATH="$src/python" "$py" -m unittest discover -s "$src/python/tests" -t "$src/python/tests" \
     -p "$1" -v 2>&1) | tee "$work/unittest.log"
  ! grep -q 'skipped' "$work/unittest.log" || { echo "FAIL: tests were skipped"; exit 1; }
  ! grep -q '^Ran 0 tests' "$work/unittest.log" || { echo "FAIL: no tests ran"; exit 1; }
}
if [ "$mode" = suite ]; then
  if [ -n "$trainer" ]; then
    "$trainer" "$work/train_resume" --epochs 3 >/dev/null
    export SAVEPOINT_TRAIN_RESUME_DIR="$work/train_resume"
  fi
  unittest_all 'test*.py'
  exit 0
fi
if [ "$mode" = s3 ]; then
  unittest_all test_s3.py
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
