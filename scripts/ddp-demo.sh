#!/usr/bin/env bash
# examples/train_ddp end to end: data-parallel training over several processes (Gloo on
# loopback), preempted with SIGTERM on one rank at 2 ranks (every rank saves the same step and
# exits), resumed at 3 ranks and killed with SIGKILL, resumed at 4 ranks to the end; compared
# with an uninterrupted 2-rank run. Then the memory tier: 4 ranks as 2 nodes ask for a memory
# checkpoint every step (--skip-while-busy: started as often as they complete), one rank is
# SIGKILLed mid-epoch, all restart and resume from memory, bit-identical to an uninterrupted
# run: parameters and optimizer state, every byte (used by the demo and by ctest).
#   ddp-demo.sh <train_ddp> <work-dir>
set -euo pipefail
train=$1 work=$2
source "$(dirname "$0")/weights.sh"
source "$(dirname "$0")/brief.sh"
rm -rf "$work" && mkdir -p "$work"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
args=(--epochs 3 --samples 96 --global-batch 12 --every-steps 3)
run=0
pids=()
# Starts ranks 0..N-1 of a job on $1 (logs $work/<name>.rank<R>.log); extra arguments after N.
start() {
  local dir=$1 name=$2 n=$3; shift 3
  run=$((run + 1)); pids=()
  local store="$work/store-$run"
  for r in $(seq 0 $((n - 1))); do
    "$train" "$dir" --rank "$r" --world "$n" --store "$store" "${args[@]}" "$@" > "$work/$name.rank$r.log" 2>&1 &
    pids+=($!)
  done
}
# Waits until rank $2's log of job $1 has a line starting with $3 (or fails if it ended first).
wait_for() {
  until grep -qs "^$3" "$work/$1.rank$2.log"; do
    local state=Z
    [ -r "/proc/${pids[$2]}/stat" ] && read -r _ _ state _ < "/proc/${pids[$2]}/stat"
    [ "$state" != Z ] || { echo "FAIL: rank $2 of '$1' ended before '$3'"; cat "$work/$1.rank$2.log"; exit 1; }
    sleep 0.02
  done
}
finish() {  # waits for every rank; $1: "ok" if each must exit 0
  local rc=0
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || rc=$?; done
  if [ "$1" = ok ] && [ $rc -ne 0 ]; then echo "FAIL: a rank exited $rc"; tail -n 5 "$work"/*.log; exit 1; fi
}
# Shows job $1's logs once, briefly (every check reads the logs themselves): rank 0's lines,
# and what another rank printed unlike rank 0. "rank 0: X" reads "ranks 0-3: X" when ranks 1-3
# printed "rank R: X" too (ranks 0,2 when rank 2 alone did); a line every rank printed comes
# once; a rank's "(interval)" saves come as one line, their count, the first and the last;
# consecutive epoch lines as one line. Omitted: the trace ("consumed ..."), the weights, and
# rank 0's info lines "Going into epoch" (the epoch's line says it) and "Retention in".
show() {
  local files=() r=0
  while [ -e "$work/$1.rank$r.log" ]; do files+=("$work/$1.rank$r.log"); r=$((r + 1)); done
  awk '
    FNR == 1 { f++ }
    /^consumed/ || /: weights/ || /^\[savepoint info\] (Going into epoch|Retention in )/ { next }
    /^rank [0-9]+: saved epoch [0-9]+ position [0-9]+ \(interval\)$/ {
      p = $0; sub(/^rank [0-9]+: saved /, "", p); sub(/ \(interval\)$/, "", p)
      if (++iv[f] == 1) { first[f] = p; at[f] = ++n[f]; who[f] = $1 " " $2 } last[f] = p; next }
    { line[f, ++n[f]] = $0 }
    END {
      for (g = 1; g <= f; g++) {
        if (iv[g] == 1) line[g, at[g]] = who[g] " saved " first[g] " (interval)"
        if (iv[g] > 1) line[g, at[g]] = who[g] " saved " iv[g] " times at the interval, " first[g] " to " last[g]
        for (i = 1; i <= n[g]; i++) has[g, line[g, i]] = 1
      }
      for (i = 1; i <= n[1]; i++) {
        l = line[1, i]
        if (l !~ /^rank 0: /) {
          print l
          for (g = 2; g <= f; g++) used[g, l] = 1
          continue
        }
        x = substr(l, 9); ranks = "0"; k = 0
        for (g = 2; g <= f; g++)
          if ((g, "rank " (g - 1) ": " x) in has) { ranks = ranks "," (g - 1); k++; used[g, "rank " (g - 1) ": " x] = 1 }
        if (k == 0) print l
        else if (k == f - 1) print "ranks 0-" (f - 1) ": " x
        else print "ranks " ranks ": " x
      }
      for (g = 2; g <= f; g++)
        for (i = 1; i <= n[g]; i++) if (!((g, line[g, i]) in used)) print line[g, i]
    }' "${files[@]}" | merge_epochs | sed 's/^/  /'
}

say "an uninterrupted run at 2 ranks, for reference"
start "$work/reference" reference 2 --trace
finish ok; show reference

say "2 ranks; SIGTERM to rank 1 only in the middle of epoch 2 (as a scheduler preempting one node) ..."
start "$work/ckpt" preempted 2 --trace --step-ms 30
wait_for preempted 1 "consumed epoch 2 position 24"; kill -TERM "${pids[1]}"
finish ok; show preempted
[ "$(cat "$work"/preempted.rank*.log | grep -c 'preempted at')" = 2 ] ||
  { echo "FAIL: not every rank saved for preemption"; exit 1; }
a=$(sed -n 's/^rank 0: preempted at \(.*\);.*/\1/p' "$work/preempted.rank0.log")
b=$(sed -n 's/^rank 1: preempted at \(.*\);.*/\1/p' "$work/preempted.rank1.log")
[ -n "$a" ] && [ "$a" = "$b" ] || { echo "FAIL: the ranks stopped at different steps ('$a' vs '$b')"; exit 1; }

say "... resumed at 3 ranks, then killed with SIGKILL (every rank) in epoch 3 ..."
start "$work/ckpt" killed 3 --trace --step-ms 30
wait_for killed 0 "consumed epoch 3 position 36"; kill -9 "${pids[@]}"
finish any; show killed
echo "  on disk: $(ls "$work/ckpt" | paste -sd' ')"

say "... and resumed at 4 ranks to the end"
start "$work/ckpt" resumed 4 --trace
finish ok; show resumed
grep -q "resumed from" "$work/resumed.rank0.log" || { echo "FAIL: the run did not resume"; exit 1; }

# Another split of each global batch sums the gradients in another order: compare within
# float tolerance (at the same number of ranks the weights are bit-identical; ctest checks).
worst=$(max_weight_diff "$work/reference.rank0.log" "$work/resumed.rank0.log")
within_tolerance "$worst" ||
  { echo "FAIL: final weights differ from the uninterrupted run by $worst (tolerance $weights_tolerance)"; exit 1; }
say "OK: stopped at 2 ranks, killed at 3, finished at 4: each of the $(weight_count "$work/reference.rank0.log") final weights within $weights_tolerance of the uninterrupted 2-rank run (worst difference $worst)"
echo "  why not bit-identical: 4 ranks split each global batch of 12 into other shares, so the gradient sums run in another order: equal within float rounding, not bit-identical; at the same number of ranks the weights are bit-identical (ctest checks)"

# The memory tier: ranks 0-1 are node 0, ranks 2-3 node 1, each node with its own memory
# directory (a real job points it at /dev/shm/<job>; here under the work directory). The tier's
# background work at normal priority: this demo may share the machine with other work (CI runs
# tests side by side), which would starve a nice-19 thread and space the memory saves out.
start_tier() {  # like start; $1 dir, $2 name, $3 memory root
  local dir=$1 name=$2 shm=$3; shift 3
  run=$((run + 1)); pids=()
  local store="$work/store-$run"
  for r in 0 1 2 3; do
    "$train" "$dir" --rank "$r" --world 4 --store "$store" "${args[@]}" --every-steps 0 --trace \
      --memory "$shm/node$((r / 2))" --node "node$((r / 2))" --skip-while-busy --background-priority normal "$@" \
      > "$work/$name.rank$r.log" 2>&1 &
    pids+=($!)
  done
}
hash_of() { sed -n "s/^rank 0: final weights //p" "$work/$1.rank0.log"; }
# XXH3 over every byte of the parameters and the optimizer's state (examples/state_hash.hpp).
state_of() { sed -n "s/^rank 0: final state xxh3 \([0-9a-f]*\) .*/\1/p" "$work/$1.rank0.log"; }

say "the memory tier: 4 ranks as 2 nodes, a memory save asked for every step (skipped while one is busy), uninterrupted, for reference"
start_tier "$work/tier-reference" tier-reference "$work/shm-reference"
finish ok; show tier-reference
# Info lines come from rank 0 alone: the SIGPIPE notice once for the job, one line per save.
[ "$(cat "$work"/tier-reference.rank*.log | grep -c 'SIGPIPE was at its default action')" = 1 ] ||
  { echo "FAIL: the SIGPIPE notice is not said once for the job"; exit 1; }
[ "$(cat "$work"/tier-reference.rank*.log | grep -c '^\[savepoint info\] Saved an end-of-epoch')" = 3 ] ||
  { echo "FAIL: not one line per end-of-epoch save (3)"; exit 1; }

say "4 ranks as 2 nodes; rank 2 SIGKILLed in epoch 2 once a step of it is complete in memory ..."
# Steps of 100 ms: several memory saves complete in epochs 2 and 3 even where a save is slow (a
# sanitizer build on a loaded machine), so the kill below lands after one of them.
start_tier "$work/tier" tier-killed "$work/shm" --step-ms 100
wait_for tier-killed 2 "consumed epoch 2 position 12"
until [ -n "$(ls "$work/shm/node1/complete" 2>/dev/null)" ] &&  # epoch 3 if a loaded machine missed epoch 2
      grep -qsE '"epoch": [23]' "$work/shm/node1/own/$(ls "$work/shm/node1/complete" | tail -n 1)/meta.json"; do
  state=Z
  [ -r "/proc/${pids[2]}/stat" ] && read -r _ _ state _ < "/proc/${pids[2]}/stat"
  [ "$state" != Z ] || { echo "FAIL: rank 2 ended before epoch 2 was complete in memory"; tail -n 5 "$work"/tier-killed.*.log; exit 1; }
  sleep 0.01
done
kill -9 "${pids[2]}"
finish any
for n in 0 1; do  # each node: its complete markers, its part, its buddy copies (older ones dropped)
  node="$work/shm/node$n" copies=
  for d in "$node"/replicas/*/; do
    [ -d "$d" ] && copies+=", $(basename "$d")'s copy $(ls "$d" | grep -c '^CKPT+' || true)"
  done
  echo "  in memory on node$n: complete $(ls "$node/complete" 2>/dev/null | paste -sd' '); checkpoints held: own $(ls "$node/own" 2>/dev/null | grep -c '^CKPT+' || true)$copies"
done

say "... all 4 restarted: they resume from memory"
start_tier "$work/tier" tier-resumed "$work/shm"
finish ok; show tier-resumed
# From memory, or from the disk if it held a newer checkpoint when rank 2 died (the kill can
# land after the epoch's disk checkpoint and before the next memory one is complete).
if ! grep -q "resumed from CKPT+.* in memory" "$work/tier-resumed.rank0.log"; then
  grep -q "has a checkpoint newer than the memory tier's" "$work/tier-resumed.rank0.log" ||
    { echo "FAIL: not resumed from memory, nor said the disk was newer"; exit 1; }
  say "  (the disk's checkpoint was newer than the memory tier's when rank 2 died: resumed from it)"
fi
[ "$(hash_of tier-resumed)" = "$(hash_of tier-reference)" ] ||
  { echo "FAIL: final weights $(hash_of tier-resumed) differ from the uninterrupted run's $(hash_of tier-reference)"; exit 1; }
[ -n "$(state_of tier-reference)" ] && [ "$(state_of tier-resumed)" = "$(state_of tier-reference)" ] ||
  { echo "FAIL: final state '$(state_of tier-resumed)' differs from the uninterrupted run's '$(state_of tier-reference)'"; exit 1; }
say "OK: a rank killed mid-epoch, resumed from the memory tier: bit-identical to the uninterrupted run: every parameter and optimizer tensor hashes to $(state_of tier-resumed) (xxh3 over all bytes)"
