#!/usr/bin/env bash
# Runs the examples end to end and checks what they print (used by the demo and by ctest).
#   run-examples.sh <nutshell> <train_resume> <work-dir>
set -euo pipefail
nutshell=$1 train=$2 work=$3
rm -rf "$work" && mkdir -p "$work"
source "$(dirname "$0")/brief.sh"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
# Shows a train_resume log ($1) briefly: no per-step trace lines, its epoch lines as one line.
show() { grep -v '^step' "$1" | merge_epochs | sed 's/^/  /'; }

say "nutshell: every run trains one epoch, then 'crashes'; run it 11 times"
# One line per run ("run 3: resumed from CKPT+..., epoch 3, loss 0.0155703; crashes"); any
# other line (the last run's best model) is shown as it is. Each run's output: nutshell.run<N>.log.
for run in $(seq 1 11); do
  out=$("$nutshell" "$work/nutshell" 2>&1) || { echo "FAIL: nutshell run $run exited $?"; echo "$out"; exit 1; }
  echo "$out" > "$work/nutshell.run$run.log"
  awk -v run="$run" '
    /^Resumed from [^ ]+$/ { from = "resumed from " $3; next }
    /^Starting epoch [0-9]+\.$/ { epoch = $3; sub(/\.$/, "", epoch); next }
    /^Model prediction=[^ ]+, loss=[^ ]+$/ { loss = $0; sub(/.*loss=/, "", loss); next }
    /^Crashing after epoch [0-9]+ \(run me again to continue\)\.$/ { crash = 1; next }
    /^Epoch loop has finished\.$/ { done = 1; next }
    { rest[++n] = $0 }
    END {
      line = "run " run ": " (from != "" ? from : "a new run")
      if (epoch != "") line = line ", epoch " epoch ", loss " loss
      if (crash) line = line "; crashes"
      if (done) line = line "; the epoch loop has finished"
      print line
      for (i = 1; i <= n; i++) print "  " rest[i]
    }' <<<"$out" | sed 's/^/  /'
done
grep -q "Epoch loop has finished" <<<"$out" || { echo "FAIL: nutshell never finished"; exit 1; }
grep -q "Best model parameter" <<<"$out" || { echo "FAIL: nutshell did not load the best model"; exit 1; }

say "train_resume: an uninterrupted run, for reference"
"$train" "$work/reference" --epochs 6 > "$work/reference.log" ||
  { echo "FAIL: the reference run exited $?"; cat "$work/reference.log"; exit 1; }
show "$work/reference.log"

say "train_resume: interrupted after epoch 2 ..."
rc=0; "$train" "$work/resumed" --epochs 6 --stop-after-epoch 2 > "$work/interrupted.log" || rc=$?
show "$work/interrupted.log"
[ $rc -eq 0 ] || [ $rc -eq 3 ] || { echo "FAIL: the interrupted run exited $rc"; exit 1; }
# Waits until the trainer (logging to $1) has trained epoch $2 up to batch $3. --step-ms 20
# makes each step take 20 ms, like real training, so the signal lands before the run ends.
wait_for_step() {
  until grep -qs "^step epoch $2 batch $3\$" "$1"; do
    local state=Z
    [ -r "/proc/$4/stat" ] && read -r _ _ state _ < "/proc/$4/stat"
    [ "$state" != Z ] || { echo "FAIL: the trainer ended before epoch $2 batch $3"; cat "$1"; exit 1; }
    sleep 0.02
  done
}
say "... killed with SIGKILL in the middle of epoch 4 ..."
"$train" "$work/resumed" --epochs 6 --trace --step-ms 20 > "$work/killed.log" & pid=$!
wait_for_step "$work/killed.log" 4 5 $pid; kill -9 $pid; wait $pid 2>/dev/null || true
show "$work/killed.log"
echo "  on disk: $(ls "$work/resumed" | paste -sd' ')"
say "... preempted with SIGTERM (as a cluster scheduler does) in the middle of epoch 5 ..."
"$train" "$work/resumed" --epochs 6 --trace --step-ms 20 > "$work/preempted.log" & pid=$!
wait_for_step "$work/preempted.log" 5 2 $pid; kill -TERM $pid; wait $pid
show "$work/preempted.log"
grep -q "^preempted at epoch 5" "$work/preempted.log" || { echo "FAIL: no preemption save"; exit 1; }
say "... and resumed to the end"
"$train" "$work/resumed" --epochs 6 > "$work/resumed.log" ||
  { echo "FAIL: the resumed run exited $?"; cat "$work/resumed.log"; exit 1; }
show "$work/resumed.log"

# "final state xxh3 <hash>": XXH3-64 over every byte of every parameter, buffer and optimizer
# tensor (examples/state_hash.hpp); the whole lines are compared.
ref=$(grep "^final state xxh3 " "$work/reference.log") || { echo "FAIL: the reference run printed no final state"; exit 1; }
res=$(grep "^final state xxh3 " "$work/resumed.log") || { echo "FAIL: the resumed run printed no final state"; exit 1; }
grep -q "resumed from CKPT+" "$work/resumed.log" || { echo "FAIL: the run did not resume"; exit 1; }
if [ "$ref" != "$res" ]; then
  echo "FAIL: resumed run differs from the uninterrupted one: '$ref' vs '$res'"
  exit 1
fi
hash=$(awk '{ print $4 }' <<<"$ref")
say "OK: the interrupted run ended bit-identical to the uninterrupted one: every parameter, buffer and optimizer tensor hashes to $hash (xxh3 over all bytes)"
