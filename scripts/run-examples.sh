#!/usr/bin/env bash
# Runs the examples end to end and checks what they print (used by the demo and by ctest).
#   run-examples.sh <nutshell> <train_resume> <work-dir>
set -euo pipefail
nutshell=$1 train=$2 work=$3
rm -rf "$work" && mkdir -p "$work"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "nutshell: every run trains one epoch, then 'crashes'; run it 11 times"
for run in $(seq 1 11); do
  out=$("$nutshell" "$work/nutshell" 2>&1)
  echo "[run $run] $out" | sed 's/^/  /'
done
grep -q "Epoch loop has finished" <<<"$out" || { echo "FAIL: nutshell never finished"; exit 1; }
grep -q "Best model parameter" <<<"$out" || { echo "FAIL: nutshell did not load the best model"; exit 1; }

say "train_resume: an uninterrupted run, for reference"
"$train" "$work/reference" --epochs 6 | tee "$work/reference.log"

say "train_resume: interrupted after epoch 2 ..."
"$train" "$work/resumed" --epochs 6 --stop-after-epoch 2 || [ $? -eq 3 ]
say "... killed with SIGKILL while training or saving epoch 3-4 ..."
"$train" "$work/resumed" --epochs 6 & pid=$!
sleep 0.6; kill -9 $pid 2>/dev/null || true; wait $pid 2>/dev/null || true
ls "$work/resumed" | sed 's/^/  on disk: /'
say "... and resumed to the end"
"$train" "$work/resumed" --epochs 6 | tee "$work/resumed.log"

ref=$(grep "final weight checksum" "$work/reference.log")
res=$(grep "final weight checksum" "$work/resumed.log")
grep -q "resumed from CKPT+" "$work/resumed.log" || { echo "FAIL: the run did not resume"; exit 1; }
if [ "$ref" != "$res" ]; then
  echo "FAIL: resumed run differs from the uninterrupted one: '$ref' vs '$res'"
  exit 1
fi
say "OK: the interrupted run ended with exactly the weights of the uninterrupted one ($ref)"
