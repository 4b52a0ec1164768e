#!/usr/bin/env bash
# examples/train_ddp under SLURM on a one-machine cluster this script starts and stops
# (scripts/slurm-cluster.sh: munged, slurmctld, slurmd on 127.0.0.1), submitted with
# examples/slurm/train_ddp.sbatch as a user submits it: two tasks under srun, no --rank,
# --world or --store (SLURM_PROCID, SLURM_NTASKS and the node list say them).
#   requeue  `scontrol requeue` in the middle of epoch 2: SLURM sends SIGTERM to every task,
#            each saves the same step and exits; the job starts again (SLURM_RESTART_COUNT=1),
#            resumes and ends bit-identical to an uninterrupted job.
#   signal   `--time=1 --signal=B:USR1@30`: SLURM's warning reaches the batch script, which
#            passes it to srun; every task saves the same step and exits 0, the script requeues
#            the job, it resumes (as often as the time limit comes first) and ends bit-identical.
#            SLURM sends the warning at its next time-limit check (every 30 s): the training is
#            made to last longer than that (--step-ms).
# Exits 77 (ctest: skipped) where slurm-wlm or munge is missing or a daemon cannot run here.
#   launch-slurm.sh requeue|signal <train_ddp> <work-dir>
set -euo pipefail
mode=$1 train=$2 work=$3
here=$(cd "$(dirname "$0")" && pwd)
batch=$here/../examples/slurm/train_ddp.sbatch
for tool in sbatch slurmctld slurmd munged; do
  command -v $tool >/dev/null || { echo "skipped: no $tool (Debian packages slurm-wlm and munge)"; exit 77; }
done
rm -rf "$work" && mkdir -p "$work"
cluster=$work/cluster
cleanup() { bash "$here/slurm-cluster.sh" stop "$cluster" >/dev/null 2>&1 || true; }
trap cleanup EXIT
rc=0
bash "$here/slurm-cluster.sh" start "$cluster" >"$work/cluster.log" 2>&1 || rc=$?
if [ $rc -eq 77 ]; then tail -n 1 "$work/cluster.log"; exit 77; fi
[ $rc -eq 0 ] || { cat "$work/cluster.log"; echo "FAIL: the cluster did not start"; exit 1; }
grep "^slurm ready" "$work/cluster.log"
source "$cluster/env.sh"
export GLOO_SOCKET_IFNAME=lo OMP_NUM_THREADS=1
fail() { echo "FAIL: $*"; exit 1; }
state_in() { sed -n 's/^rank 0: final state xxh3 \([0-9a-f]*\) .*/\1/p' "$1" | head -n 1; }
# Waits (bounded by $2 seconds) until job $1 has left the queue; fails if it did not complete.
await_job() {
  local deadline=$((SECONDS + $2)) state
  while state=$(squeue -h -j "$1" -o %T 2>/dev/null) && [ -n "$state" ]; do
    [ $SECONDS -lt $deadline ] || { scontrol show job "$1"; fail "job $1 still $state after $2 s"; }
    sleep 0.5
  done
}
args=(--epochs 3 --samples 96 --global-batch 12 --every-steps 4)

# The uninterrupted job, for reference (the same script: no requeue, no signal comes).
ref=$(sbatch --parsable -o "$work/reference.out" "$batch" "$train" "$work/reference" "${args[@]}")
await_job "$ref" 120
reference=$(state_in "$work/reference.out")
[ -n "$reference" ] || { cat "$work/reference.out"; fail "the uninterrupted job printed no final state"; }
grep -q "^rank 0: launched by SLURM job $ref: rank 0 of 2" "$work/reference.out" ||
  { cat "$work/reference.out"; fail "rank 0 did not read SLURM's environment"; }
echo "uninterrupted job $ref, 2 tasks under srun: final state xxh3 $reference"

case $mode in
requeue)
  job=$(sbatch --parsable -o "$work/job.out" "$batch" "$train" "$work/ckpt" "${args[@]}" --trace --step-ms 100)
  deadline=$((SECONDS + 120))
  until grep -qs "^consumed epoch 2 position 60" "$work/job.out"; do
    [ $SECONDS -lt $deadline ] && [ -n "$(squeue -h -j "$job" -o %T)" ] ||
      { cat "$work/job.out"; fail "job $job did not reach epoch 2 position 60"; }
    sleep 0.05
  done
  scontrol requeue "$job"
  echo "job $job requeued by scontrol in epoch 2"
  await_job "$job" 180
  out=$(cat "$work/job.out")
  grep -q "^job $job, run 2" <<<"$out" || { echo "$out"; fail "job $job did not run again"; }
  grep -q "^rank 0: launched by SLURM job $job (restart 1): rank 0 of 2" <<<"$out" ||
    { echo "$out"; fail "the second run did not read SLURM_RESTART_COUNT=1"; }
  # SLURM's SIGTERM reaches each task on its own: every rank saves the same step.
  steps=$(sed -n 's/^rank [01]: preempted at \(epoch [0-9]* position [0-9]*\);.*/\1/p' <<<"$out" | sort | uniq -c)
  [ "$(grep -c . <<<"$steps")" = 1 ] && grep -q "^ *2 " <<<"$steps" ||
    { echo "$out"; fail "the ranks did not both save one step on SIGTERM: $steps"; }
  echo "both ranks saved on SIGTERM at $(sed 's/^ *2 //' <<<"$steps")"
  grep -m1 "^rank 0: resumed from" <<<"$out" || { echo "$out"; fail "the second run did not resume"; }
  resumed=$(state_in "$work/job.out")
  [ "$resumed" = "$reference" ] || fail "final state $resumed differs from the uninterrupted job's $reference"
  echo "OK: SLURM requeued job $job in epoch 2; it resumed and ended bit-identical (final state xxh3 $resumed)"
  ;;
signal)
  # 24 steps of 1.5 s: longer than SLURM's first time-limit check, whenever it comes.
  job=$(sbatch --parsable --time=1 --signal=B:USR1@30 -o "$work/job.out" "$batch" "$train" "$work/ckpt" \
        "${args[@]}" --step-ms 1500)
  await_job "$job" 240
  out=$(cat "$work/job.out")
  saves=$(grep -c "saved ahead of the time limit; requeued" <<<"$out" || true)
  [ "$saves" -ge 1 ] || { echo "$out"; fail "no run of job $job saved on the time-limit signal"; }
  grep -q "^rank [01]: preempted at .* checkpoint saved, exiting" <<<"$out" ||
    { echo "$out"; fail "the ranks did not save on SIGUSR1"; }
  grep "^rank 0: preempted at\|^rank 0: resumed from" <<<"$out"
  resumed=$(state_in "$work/job.out")
  [ "$resumed" = "$reference" ] || fail "final state $resumed differs from the uninterrupted job's $reference"
  echo "OK: job $job got SLURM's time-limit signal (--signal=B:USR1@30) $saves time(s), saved, was requeued, resumed, and ended bit-identical (final state xxh3 $resumed)"
  ;;
*) echo "usage: launch-slurm.sh requeue|signal <train_ddp> <work-dir>" >&2; exit 2 ;;
esac
