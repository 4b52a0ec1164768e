#!/usr/bin/env bash
# torch.distributed.checkpoint both ways, against Python's own DCP (python3-torch: Debian 13's
# 2.6, unstable's 2.14), every step bounded in time:
#   1. Python: dcp.save from 4 ranks (Gloo on CPU, FSDP2 or DTensor rows, Adam) -> C++ loads it
#      as each rank of 1, 2 and 3, every value bit-equal to Python's full tensors;
#   2. C++: save from 3 ranks -> Python's dcp.load at 1 and at 4 ranks, bit-equal;
#   3. Python's dcp_to_torch_save of the C++ save, torch.load(weights_only=True), bit-equal;
#   4. the CLI's show / verify / export on both directories, and its convert: Python's checkpoint
#      into a savepoint checkpoint and back into DCP, which Python's dcp.load reads bit-equal.
# Exits 77 (ctest: Skipped) where Python has no torch.distributed.checkpoint.
#   bash tests/dcp/cross.sh <dcp_cpp> <work dir> [<savepoint CLI>]
set -euo pipefail
tool=$1 work=$2 cli=${3:-}
here=$(cd "$(dirname "$0")" && pwd)
python=${SAVEPOINT_PYTHON:-python3}
if ! timeout 120 "$python" -c 'import torch.distributed.checkpoint' 2>/dev/null; then
  echo "SKIPPED: $python has no torch.distributed.checkpoint (python3-torch is not installed)"
  exit 77
fi
rm -rf "$work" && mkdir -p "$work"
py() { timeout 600 "$python" "$here/dcp_py.py" "$@"; }
step() { echo "=== $*"; }

step "Python saves from 4 ranks"
py save --out "$work/py" --world 4 | tail -n 3
step "C++ loads Python's checkpoint at 1, 2 and 3 ranks"
timeout 300 "$tool" load "$work/py" "$work/py.expected.pt" 1 2 3

step "C++ saves from 3 ranks"
timeout 300 "$tool" save "$work/cpp" 3 "$work/cpp.expected.pt"
for world in 1 4; do
  step "Python's dcp.load of the C++ checkpoint at $world rank(s)"
  py load --dir "$work/cpp" --world "$world" --expected "$work/cpp.expected.pt" | grep -E '^OK|differ'
done
step "Python's dcp_to_torch_save of the C++ checkpoint"
py to_torch_save --dir "$work/cpp" --out "$work/cpp.pt" --expected "$work/cpp.expected.pt" | grep -E '^OK|differ'

if [ -n "$cli" ]; then
  step "the CLI on both"
  for d in py cpp; do
    timeout 120 "$cli" verify "$work/$d"
    timeout 120 "$cli" show "$work/$d" > /dev/null
    timeout 120 "$cli" export "$work/$d" model --to "$work/$d.model.safetensors" > /dev/null
  done
  step "the CLI's convert: Python's DCP -> a savepoint checkpoint -> DCP, loaded by Python at 2 ranks"
  timeout 120 "$cli" convert "$work/py" --to "$work/converted"
  timeout 120 "$cli" convert "$work/converted/$(ls "$work/converted" | grep '^CKPT+')" --to "$work/back"
  py load --dir "$work/back" --world 2 --expected "$work/py.expected.pt" | grep -E '^OK|differ'
fi
echo "dcp cross-language: all passed"
