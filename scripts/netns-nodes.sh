#!/usr/bin/env bash
# The memory tier across two "nodes" as real as one machine allows: each node's two ranks of
# examples/train_ddp run in a network namespace of their own, joined by a veth pair on a
# private /30 link that this script creates and removes (trap). The ranks rendezvous over a
# TCPStore served by rank 0 and Gloo uses the veth interface, so nothing relies on sharing lo.
#   1. an uninterrupted run, for reference;
#   2. one rank of node 1 SIGKILLed once a step of epoch 2 is complete in memory; all four
#      restart and resume from memory, bit-identical to the reference;
#   3. node 0 lost (its ranks SIGKILLed, its memory directory deleted): node 1's two ranks
#      restart as a world of 2 and resume from the buddy copies, within 1e-4 of the reference.
# Needs root, iproute2 and permission to create namespaces: otherwise prints why and exits 77
# (ctest: skipped). Every process is bounded (timeout), loops are bounded.
#   netns-nodes.sh <train_ddp> <work-dir>
set -euo pipefail
train=$1 work=$2
source "$(dirname "$0")/weights.sh"
skip() { echo "skipped: $*"; exit 77; }
[ "$(id -u)" = 0 ] || skip "not root (network namespaces need root); the loopback tests cover the tier"
command -v ip >/dev/null || skip "no 'ip' (Debian package iproute2)"
rm -rf "$work" && mkdir -p "$work"
tag=$(( $$ % 100000 ))
ns=(spn0-$tag spn1-$tag) dev=(spv0-$tag spv1-$tag)
octet=$(( $$ % 250 + 1 ))
addr=(10.213.$octet.1 10.213.$octet.2)
pids=()
# A rank is `timeout` running train_ddp: SIGKILL both (timeout does not pass SIGKILL on).
kill_rank() { pkill -9 -P "$1" 2>/dev/null || true; kill -9 "$1" 2>/dev/null || true; }
cleanup() {
  for p in "${pids[@]}"; do kill_rank "$p"; done
  for n in "${ns[@]}"; do ip netns del "$n" 2>/dev/null || true; done  # takes its veth end along
}
trap cleanup EXIT
link_up() {
  ip netns add "${ns[0]}" && ip netns add "${ns[1]}" &&
    ip link add "${dev[0]}" netns "${ns[0]}" type veth peer name "${dev[1]}" netns "${ns[1]}" &&
    for i in 0 1; do
      ip -n "${ns[$i]}" addr add "${addr[$i]}/30" dev "${dev[$i]}" && ip -n "${ns[$i]}" link set "${dev[$i]}" up &&
        ip -n "${ns[$i]}" link set lo up || return 1
    done
}
link_up 2>"$work/setup.log" || skip "cannot set up two network namespaces and a veth pair here: $(tail -n 1 "$work/setup.log")"
# `ip netns exec` remounts /sys and needs / to be a mount point: not so in a chroot.
ip netns exec "${ns[0]}" true 2>"$work/setup.log" ||
  skip "cannot run a process in a network namespace here (a chroot?): $(tail -n 1 "$work/setup.log")"
# The link carries: rank 0's store is reached from the other namespace (bash's /dev/tcp needs
# no ping), checked by the first job's rendezvous itself; a broken link fails there (timeout).
echo "nodes: ${ns[0]} (${addr[0]}, ranks 0-1) and ${ns[1]} (${addr[1]}, ranks 2-3) on a veth pair"

args=(--epochs 3 --samples 48 --global-batch 12 --every-steps 0 --trace)
port=$(( 20000 + $$ % 20000 ))
run=0
# Starts a job of $3 ranks whose rank r lives on node first + r / 2 (its namespace, its memory
# directory under $4); $1 dir, $2 name, $5 first node; extra arguments after.
start() {
  local dir=$1 name=$2 n=$3 shm=$4 first=$5; shift 5
  run=$((run + 1)); pids=()
  local store="tcp://${addr[$first]}:$((port + run))"
  for r in $(seq 0 $((n - 1))); do
    local node=$((first + r / 2))
    ip netns exec "${ns[$node]}" timeout 120 "$train" "$dir" --rank "$r" --world "$n" --store "$store" \
      --iface "${dev[$node]}" --memory "$shm/node$node" --node "node$node" "${args[@]}" "$@" \
      > "$work/$name.rank$r.log" 2>&1 &
    pids+=($!)
  done
}
finish() {  # $1: "ok" if every rank must exit 0
  local rc=0
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || rc=$?; done
  if [ "$1" = ok ] && [ $rc -ne 0 ]; then echo "FAIL: a rank exited $rc"; tail -n 5 "$work"/*.log; exit 1; fi
  pids=()
}
alive() { local state=Z; [ -r "/proc/$1/stat" ] && read -r _ _ state _ < "/proc/$1/stat"; [ "$state" != Z ]; }
# Waits until rank $2 of job $1 logged "consumed epoch 2" and node $3's newest complete memory
# checkpoint is of epoch 2 or later (bounded: fails if rank $2 ended first). "Or later": a
# poll that misses epoch 2's window on a loaded machine kills in epoch 3 instead.
wait_epoch2_in_memory() {
  local name=$1 rank=$2 root=$work/shm/node$3
  until grep -q "^consumed epoch 2 position 12" "$work/$name.rank$rank.log" &&
        [ -n "$(ls "$root/complete" 2>/dev/null)" ] &&
        grep -qsE '"epoch": [23]' "$root/own/$(ls "$root/complete" | tail -n 1)/meta.json"; do
    alive "${pids[$rank]}" || { echo "FAIL: rank $rank of '$name' ended first"; tail -n 5 "$work/$name".*.log; exit 1; }
    sleep 0.01
  done
}
hash_of() { sed -n "s/^rank 0: final weights //p" "$work/$1.rank0.log"; }
# Job $1 resumed from memory, or from the disk because it held a newer checkpoint: the kill
# can land after an epoch's disk checkpoint and before the next memory one is complete (the
# rule is "the newest complete source"; the log says which it took and why).
from_newest_tier() {
  grep -q "resumed from CKPT+.* in memory (saved by 4 ranks)" "$work/$1.rank0.log" && return 0
  grep -q "has a checkpoint newer than the memory tier's" "$work/$1.rank0.log" ||
    { echo "FAIL: '$1' did not resume from memory, nor say the disk was newer"; cat "$work/$1.rank0.log"; exit 1; }
  echo "  (the disk's checkpoint was newer than the memory tier's when the ranks died: resumed from it)"
}

start "$work/reference" reference 4 "$work/shm-reference" 0
finish ok
echo "reference: final weights $(hash_of reference)"

start "$work/ckpt" killed 4 "$work/shm" 0 --step-ms 40
wait_epoch2_in_memory killed 3 1
kill_rank "${pids[3]}"
finish any
start "$work/ckpt" resumed 4 "$work/shm" 0
finish ok
from_newest_tier resumed
[ "$(hash_of resumed)" = "$(hash_of reference)" ] ||
  { echo "FAIL: final weights $(hash_of resumed) differ from $(hash_of reference)"; exit 1; }
echo "rank 3 killed, all resumed from memory: final weights bit-identical ($(hash_of resumed))"

rm -rf "$work/shm"  # the previous job's memory: this job starts afresh
start "$work/ckpt2" lost 4 "$work/shm" 0 --step-ms 40
wait_epoch2_in_memory lost 0 0
kill_rank "${pids[0]}"; kill_rank "${pids[1]}"
rm -rf "$work/shm/node0"
finish any
start "$work/ckpt2" survivors 2 "$work/shm" 1
finish ok
from_newest_tier survivors
worst=$(max_weight_diff "$work/reference.rank0.log" "$work/survivors.rank0.log")
within_tolerance "$worst" ||
  { echo "FAIL: the survivors' final weights differ from the reference by $worst (tolerance $weights_tolerance)"; exit 1; }
echo "node 0 lost, node 1 resumed alone from the buddy copies: final weights within $weights_tolerance of the reference (worst difference $worst; 2 ranks instead of 4 sum the gradients in another order)"
echo "OK: the memory tier across two network namespaces"
