#!/usr/bin/env bash
# The tools on an object store, run under scripts/with-s3-server.sh (which exports the
# endpoint, the keys and SAVEPOINT_TEST_S3_BUCKET): the train_resume example trains and
# resumes with its checkpoints on s3://, the CLI lists, verifies, shows, diffs, exports and
# prunes them there, Python's reader (boto3) loads the same model the CLI exported, and one
# flipped byte in an object is found by `verify` and by the reader.
#   object_store_tools.sh CLI TRAINER WORK
set -euo pipefail
cli=$1 trainer=$2 work=$3
rm -rf "$work" && mkdir -p "$work"
fail() { echo "FAIL: $*"; exit 1; }
: "${SAVEPOINT_TEST_S3_BUCKET:?run under scripts/with-s3-server.sh}"
root="s3://$SAVEPOINT_TEST_S3_BUCKET/tools-$$"
py=${SAVEPOINT_PYTHON:-/usr/bin/python3}

# Train 2 epochs, stop, resume to 3: the second run must resume from the store.
"$trainer" "$root" --epochs 2 > "$work/run1.txt"
"$trainer" "$root" --epochs 3 > "$work/run2.txt"
grep -q "resumed" "$work/run2.txt" || { cat "$work/run2.txt"; fail "the second run did not resume from $root"; }
[ ! -e "s3:" ] || fail "a local directory 's3:' was created: an s3:// path was taken for a local one"

"$cli" list "$root" > "$work/list.txt"
cat "$work/list.txt"
n=$(grep -c '^CKPT+' "$work/list.txt")
[ "$n" -ge 2 ] || fail "list shows $n checkpoints on $root"
grep -q ' ok ' "$work/list.txt" || fail "no checkpoint listed ok"
"$cli" verify "$root" > "$work/verify.txt" || { cat "$work/verify.txt"; fail "verify found a problem on a fresh store"; }
newest=$(grep '^CKPT+' "$work/list.txt" | tail -1 | cut -d' ' -f1)
oldest=$(grep '^CKPT+' "$work/list.txt" | head -1 | cut -d' ' -f1)
"$cli" show "$root/$newest" > "$work/show.txt"
grep -q 'model' "$work/show.txt" || fail "show lists no model key"
"$cli" diff "$root/$oldest" "$root/$newest" > "$work/diff.txt" || true
grep -q 'model' "$work/diff.txt" || { cat "$work/diff.txt"; fail "diff names no model tensor"; }
"$cli" export "$root/$newest" model --to "$work/model.safetensors"
[ -s "$work/model.safetensors" ] || fail "export wrote nothing"

# Python reads the same checkpoint from the store: the model equals what the CLI exported.
if "$py" -c "import boto3, torch, numpy, xxhash" 2>/dev/null; then
  PYTHONPATH="$(cd "$(dirname "$0")/.." && pwd)/python" "$py" - "$root" "$newest" "$work/model.safetensors" <<'PY'
import sys, savepoint, torch
from savepoint import safetensors as st
root, name, exported = sys.argv[1:]
run = savepoint.CheckpointDir(root)
names = [c.name for c in run.list_checkpoints()]
assert name in names, (name, names)
ckpt = run.checkpoint(name)
assert ckpt.verify() == [], ckpt.verify()
state = ckpt.state_dict("model")
data = open(exported, "rb").read()
header = st.parse(data, exported)
assert sorted(t.name for t in header.tensors) == sorted(state), (header.tensors, sorted(state))
for t in header.tensors:
    got = state[t.name].contiguous().view(torch.uint8).numpy().tobytes()
    assert got == data[header.data_start + t.begin:header.data_start + t.end], t.name
print(f"python: {len(state)} tensors of {name} read from {root} through boto3, equal to the CLI's export")
PY
else
  echo "python: skipped ($py cannot import boto3, torch, numpy and xxhash)"
fi

# One flipped byte in the newest checkpoint's model: verify exits 1 naming it.
if "$py" -c "import boto3" 2>/dev/null; then
  "$py" - "$root/$newest/model.safetensors" <<'PY'
import os, sys, urllib.parse
import boto3
url = sys.argv[1][len("s3://"):]
bucket, key = url.split("/", 1)
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
body = bytearray(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
body[len(body) // 2] ^= 1
s3.put_object(Bucket=bucket, Key=key, Body=bytes(body))
PY
  rc=0
  "$cli" verify "$root" > "$work/verify2.txt" || rc=$?
  [ "$rc" -eq 1 ] || { cat "$work/verify2.txt"; fail "verify exits $rc on a damaged object, not 1"; }
  grep -q "model.safetensors" "$work/verify2.txt" || fail "verify does not name the damaged object"
  # Recovery falls back past the damaged checkpoint.
  "$trainer" "$root" --epochs 3 > "$work/run3.txt"
  grep "^resumed from " "$work/run3.txt" | grep -vq "$newest" || { cat "$work/run3.txt"; fail "recovery did not fall back past the damaged $newest"; }
fi

"$cli" prune "$root" --keep 1 > "$work/prune.txt"
[ "$("$cli" list "$root" | grep -c '^CKPT+')" -ge 1 ] || fail "prune left nothing"
echo "OK: the CLI and the Python reader on $root ($n checkpoints)"
