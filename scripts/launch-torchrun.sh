#!/usr/bin/env bash
# examples/train_ddp under the real torchrun (its elastic agent, from Debian's python3-torch),
# started the way users start it: no --rank, --world or --store; the environment says them.
#   restart  4 workers under one agent (--max_restarts=2). One worker is SIGKILLed in epoch 2;
#            the agent stops the others and starts all four again; they resume from the newest
#            checkpoint on disk and end bit-identical to an uninterrupted run under torchrun.
#   elastic  two agents as two nodes (--nnodes=1:2, c10d rendezvous, 2 workers each), the memory
#            tier on. One node's agent and workers are SIGKILLed once epoch 2 is in memory (the
#            node that serves none of torchrun's stores: torchrun cannot lose that one); the
#            surviving agent restarts its workers as a world of 2, they resume from the memory
#            tier (the lost node's part from the buddy copies), every global batch after the
#            resumed position is the uninterrupted run's, and the weights end within 1e-4 of it.
#            The two nodes are network namespaces with their own host names where root allows,
#            else two agents on loopback with their own SAVEPOINT_NODE_ID (the script says which).
# The flags are the ones Debian 12's torchrun (PyTorch 1.13) accepts, which later ones accept
# too: underscores (--no_python), and -r 1 -t 1 --log_dir (1.13 crashes without a log dir).
# Exits 77 (ctest: skipped) without torchrun. Every process is bounded (timeout), every loop too.
#   launch-torchrun.sh restart|elastic <train_ddp> <work-dir>
set -euo pipefail
mode=$1 train=$2 work=$3
source "$(dirname "$0")/weights.sh"
command -v torchrun >/dev/null || { echo "skipped: no torchrun (Debian package python3-torch)"; exit 77; }
# torchrun's own interpreter (the one with torch; a python3 earlier in PATH may lack it).
py=$(sed -n '1s/^#! *//p' "$(command -v torchrun)"); py=${py:-python3}
version=$($py -c 'import torch; print(torch.__version__)' 2>/dev/null) || { echo "skipped: torchrun's Python cannot import torch"; exit 77; }
# Where PyTorch lacks libuv (Debian's 2.x), torchrun's stores cannot start: scripts/torchrun.py
# is torchrun with the classic store server (docs/distributed.md, "torchrun").
if $py -c 'from torch.distributed import TCPStore; TCPStore("127.0.0.1", 0, is_master=True)' >/dev/null 2>&1; then
  torchrun=(torchrun) launcher="torchrun of PyTorch $version"
else
  torchrun=($py "$(cd "$(dirname "$0")" && pwd)/torchrun.py")
  launcher="torchrun of PyTorch $version, through scripts/torchrun.py (this PyTorch is built without libuv)"
fi
rm -rf "$work" && mkdir -p "$work"
export GLOO_SOCKET_IFNAME=lo OMP_NUM_THREADS=1
agents=() node_prefix=() namespaces=()
cleanup() {
  for n in "${namespaces[@]}"; do ip netns del "$n" 2>/dev/null || true; rm -rf "/etc/netns/$n"; done
  for a in "${agents[@]}"; do kill -9 $(pgrep -P "$a") "$a" 2>/dev/null || true; done
  pkill -9 -f "^$train $work/" 2>/dev/null || true
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; exit 1; }
alive() { local state=Z; [ -r "/proc/$1/stat" ] && read -r _ _ state _ < "/proc/$1/stat"; [ "$state" != Z ]; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# agent NAME LOG-DIR [torchrun options...] -- [train_ddp arguments...]: starts one agent in the
# background (its own output in $work/NAME.out), marking its workers with SP_AGENT=NAME.
agent() {
  local name=$1; shift
  local opts=()
  while [ "$1" != -- ]; do opts+=("$1"); shift; done
  shift
  SP_AGENT=$name "${node_prefix[@]}" timeout 240 "${torchrun[@]}" --no_python "${opts[@]}" -r 1 -t 1 \
    --log_dir "$work/logs-$name" "$train" "$@" >"$work/$name.out" 2>&1 &
  agents+=($!)
}
# The worker processes of agent $1 (local rank $2 if given): train_ddp with SP_AGENT=$1.
workers() {
  local p
  for p in $(pgrep -f "^$train $work/" || true); do
    tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx "SP_AGENT=$1" || continue
    [ -z "${2:-}" ] || tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx "LOCAL_RANK=$2" || continue
    echo "$p"
  done
}
# A worker's stdout in attempt $3 of agent $1, local rank $2 (layout: DIR/<run>/attempt_N/L/).
log_of() { ls "$work/logs-$1"/*/attempt_"$3"/"$2"/stdout.log 2>/dev/null | head -n 1; }
# Waits (bounded: while agent $1 lives) until its local rank $2's log of attempt $3 has a line
# starting with $4.
wait_line() {
  until grep -qs "^$4" "$(log_of "$1" "$2" "$3")"; do
    alive "${agents[$5]}" || { cat "$work/$1.out"; fail "agent $1 ended before its rank $2 printed '$4'"; }
    sleep 0.02
  done
}
finish() {  # waits for agent index $1; it must exit 0 (see below for $2)
  local rc=0
  wait "${agents[$1]}" || rc=$?
  [ $rc -eq 0 ] && return 0
  # $2 (an agent's name): torchrun 1.13's agents leave the c10d rendezvous when their workers
  # are done; one whose rendezvous host has already left fails there ("has failed to shutdown
  # the rendezvous"), although its workers finished. That is not the job's failure.
  if [ -n "${2:-}" ] && grep -q "has failed to shutdown the rendezvous" "$work/$2.out" &&
     [ "$(grep -ls "final weights" "$work/logs-$2"/*/attempt_0/*/stdout.log | wc -l)" -ge 2 ]; then
    echo "(agent $2's workers finished; the agent then failed to leave the rendezvous its host had closed)"
    return 0
  fi
  tail -n 30 "$work"/*.out; fail "agent $1 exited $rc"
}
state_in() { sed -n 's/^rank 0: final state xxh3 \([0-9a-f]*\) .*/\1/p' "$@" | head -n 1; }
args=(--epochs 3 --samples 96 --global-batch 12 --every-steps 4)

echo "$launcher"
case $mode in
restart)
  agent reference --standalone --nproc_per_node=4 -- "$work/reference" "${args[@]}"
  finish 0
  reference=$(state_in "$work/reference.out" "$work"/logs-reference/*/attempt_0/0/stdout.log)
  [ -n "$reference" ] || fail "the uninterrupted run printed no final state"
  echo "uninterrupted, 4 workers under torchrun: final state xxh3 $reference"

  agent restarted --standalone --nproc_per_node=4 --max_restarts=2 -- "$work/ckpt" "${args[@]}" --trace --step-ms 100
  wait_line restarted 2 0 "rank 2: " 1  # started: its pid, then the kill as soon as its line comes
  victim=$(workers restarted 2)
  [ -n "$victim" ] || fail "no worker of local rank 2 found"
  wait_line restarted 2 0 "consumed epoch 2 position 60" 1
  kill -9 "$victim"
  echo "worker of rank 2 (pid $victim) SIGKILLed after 'consumed epoch 2 position 60'"
  finish 1
  log0=$(log_of restarted 0 1)
  [ -n "$log0" ] || { cat "$work/restarted.out"; fail "the agent did not restart its workers (no attempt_1)"; }
  grep -q "^rank 0: launched by torchrun .*(restart 1 of at most 2): rank 0 of 4" "$log0" ||
    { cat "$log0"; fail "attempt 1's rank 0 did not read restart 1 of at most 2 from the environment"; }
  grep -m1 "^rank 0: resumed from" "$log0" || { cat "$log0"; fail "attempt 1 did not resume"; }
  for r in 1 2 3; do grep -q "^rank $r: resumed from" "$(log_of restarted $r 1)" || fail "rank $r of attempt 1 did not resume"; done
  resumed=$(state_in "$log0")
  [ "$resumed" = "$reference" ] || fail "final state $resumed differs from the uninterrupted run's $reference"
  echo "OK: torchrun restarted all 4 workers after one was killed; they resumed and ended bit-identical (final state xxh3 $resumed, every byte of every parameter and optimizer tensor)"
  ;;
elastic)
  # Where root allows, each node is a network namespace of its own (a veth pair on a private
  # /30, which this script creates and removes) with a UTS namespace naming its host: torchrun
  # hands out host names, which /etc/netns/<ns>/hosts resolves there, Gloo uses the veth, and
  # the memory tier's node id is the default, the host name. Elsewhere (no root, a chroot), two
  # agents on loopback, told apart by SAVEPOINT_NODE_ID.
  tag=$(( $$ % 100000 )) octet=$(( $$ % 250 + 1 ))
  ns=(sptA-$tag sptB-$tag) dev=(sptvA-$tag sptvB-$tag) addr=(10.214.$octet.1 10.214.$octet.2) host=(spnodeA-$tag spnodeB-$tag)
  netns_up() {
    [ "$(id -u)" = 0 ] && command -v ip >/dev/null && command -v unshare >/dev/null || return 1
    namespaces=("${ns[@]}")
    ip netns add "${ns[0]}" && ip netns add "${ns[1]}" &&
      ip link add "${dev[0]}" netns "${ns[0]}" type veth peer name "${dev[1]}" netns "${ns[1]}" || return 1
    local i
    for i in 0 1; do
      ip -n "${ns[$i]}" addr add "${addr[$i]}/30" dev "${dev[$i]}" && ip -n "${ns[$i]}" link set "${dev[$i]}" up &&
        ip -n "${ns[$i]}" link set lo up || return 1
      mkdir -p "/etc/netns/${ns[$i]}" &&
        printf '127.0.0.1 localhost\n%s %s\n%s %s\n' "${addr[0]}" "${host[0]}" "${addr[1]}" "${host[1]}" >"/etc/netns/${ns[$i]}/hosts"
    done
    ip netns exec "${ns[0]}" unshare --uts true  # `ip netns exec` needs / to be a mount point: not so in a chroot
  }
  if netns_up 2>"$work/netns.log"; then
    nodes=netns endpoint=${addr[0]}
    echo "nodes: network namespaces ${ns[0]} (host ${host[0]}, ${addr[0]}) and ${ns[1]} (host ${host[1]}, ${addr[1]}) on a veth pair"
  else
    for n in "${namespaces[@]}"; do ip netns del "$n" 2>/dev/null || true; rm -rf "/etc/netns/$n"; done
    namespaces=() nodes=loopback endpoint=127.0.0.1
    echo "nodes: two agents on loopback (no network namespaces here: $(tail -n 1 "$work/netns.log" 2>/dev/null))"
  fi
  # start_node NAME INDEX [torchrun options...] -- [train_ddp arguments...]: agent NAME as node INDEX.
  start_node() {
    local name=$1 i=$2; shift 2
    if [ "$nodes" = netns ]; then
      node_prefix=(ip netns exec "${ns[$i]}" unshare --uts bash -c 'hostname "$0" && exec "$@"' "${host[$i]}")
      GLOO_SOCKET_IFNAME=${dev[$i]} agent "$name" "$@"
      node_prefix=()
    else
      SAVEPOINT_NODE_ID=node$((i + 1)) agent "$name" "$@"
    fi
  }
  port=$(( 29400 + $$ % 1000 ))
  [ "$nodes" = netns ] || port=$(free_port)
  rdzv=(--nnodes=1:2 --nproc_per_node=2 --rdzv_backend=c10d --rdzv_endpoint=$endpoint:$port --rdzv_id=sp$$
        --max_restarts=3 --rdzv_conf=last_call_timeout=20,keep_alive_interval=1,keep_alive_max_attempt=3)
  # Disk checkpoints at the ends of epochs only: the memory tier's, every step, are newer when
  # node B is lost in epoch 2 (recovery takes the newest complete source).
  # Four epochs: two left after node B is lost in epoch 2, whenever the poll below sees it.
  targs=(--epochs 4 --samples 96 --global-batch 12 --every-steps 0 --trace --memory-every 1)
  # last_call_timeout: how long a round that has its minimum (one node) waits for more. The
  # first round must have both nodes (node B's agent takes seconds to start on a loaded
  # machine); the survivors' round after the loss waits this long too.
  # Node A starts first and serves the rendezvous's store (the port of --rdzv_endpoint), and
  # joins with the lower pid, so it is also group rank 0, whose agent serves the workers' store
  # from PyTorch 2.x on: torchrun survives the loss of a node that serves neither (node B).
  serving() {  # $1 port, $2 agent index, $3 "netns" if in node A's namespace
    local in=()
    [ "${3:-}" = netns ] && in=(ip netns exec "${ns[0]}")
    until "${in[@]}" ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; do
      alive "${agents[$2]}" || { cat "$work"/*.out; fail "the first agent ended before serving port $1"; }
      sleep 0.05
    done
  }
  # The reference: the same two nodes, uninterrupted (its own rendezvous, memory and checkpoints).
  ref_port=$(free_port)
  ref=("${rdzv[@]}"); ref[3]=--rdzv_endpoint=127.0.0.1:$ref_port; ref[4]=--rdzv_id=ref$$
  SAVEPOINT_NODE_ID=nodeA agent refA "${ref[@]}" -- "$work/reference" "${targs[@]}" --memory "$work/shm-ref/A"
  serving "$ref_port" 0
  SAVEPOINT_NODE_ID=nodeB agent refB "${ref[@]}" -- "$work/reference" "${targs[@]}" --memory "$work/shm-ref/B"
  finish 0; finish 1 refB
  ref_logs=("$work"/logs-ref?/*/attempt_0/*/stdout.log)
  grep -qh "^rank 0: launched by torchrun .*: rank 0 of 4" "${ref_logs[@]}" || fail "the reference did not run as a world of 4"
  grep -h "^rank 0: weights" "${ref_logs[@]}" >"$work/reference.rank0.log"

  start_node A 0 "${rdzv[@]}" -- "$work/ckpt" "${targs[@]}" --step-ms 150 --memory "$work/shm/A"
  serving "$port" 2 "$nodes"
  start_node B 1 "${rdzv[@]}" -- "$work/ckpt" "${targs[@]}" --step-ms 150 --memory "$work/shm/B"
  lost=B lost_index=3 survivor=A survivor_index=2
  # Node $lost is lost once epoch 2 is complete in memory on node $survivor (whose copies survive).
  until grep -qs "^consumed epoch 2 position 12" "$(log_of $lost 0 0)" && [ -n "$(ls "$work/shm/$survivor/complete" 2>/dev/null)" ] &&
        grep -qsE '"epoch": [23]' "$work/shm/$survivor/own/$(ls "$work/shm/$survivor/complete" | tail -n 1)/meta.json"; do
    alive "${agents[$lost_index]}" || { cat "$work/$lost.out"; fail "node $lost ended before epoch 2 was in memory"; }
    sleep 0.02
  done
  grep -qh "^rank 0: launched by torchrun .*: rank 0 of 4" "$work"/logs-[AB]/*/attempt_0/*/stdout.log ||
    fail "the first round did not join both nodes as a world of 4 (node B took longer than last_call_timeout=20 to join?)"
  # The agent first (the child of its `timeout`, which does not pass SIGKILL on), so that
  # nothing restarts the workers, then the workers.
  kill -9 $(pgrep -P "${agents[$lost_index]}") "${agents[$lost_index]}" 2>/dev/null || true
  kill -9 $(workers $lost) 2>/dev/null || true
  wait "${agents[$lost_index]}" 2>/dev/null || true
  echo "node B lost: its agent and both workers SIGKILLed in epoch 2"
  finish $survivor_index
  a0=$(log_of $survivor 0 1) a1=$(log_of $survivor 1 1)
  [ -n "$a0" ] || { cat "$work/$survivor.out"; fail "node $survivor's agent did not restart its workers"; }
  survivors=$(cat "$a0" "$a1")
  grep -q "^rank 0: launched by torchrun .*: rank 0 of 2" <<<"$survivors" || { echo "$survivors"; fail "the survivors did not restart as a world of 2"; }
  grep -q "^rank 0: resumed from CKPT+.* in memory (saved by 4 ranks)" <<<"$survivors" ||
    { echo "$survivors"; fail "the survivors did not resume from the memory tier"; }
  grep "^rank 0: resumed from" <<<"$survivors"
  if [ "$nodes" = netns ]; then  # the memory tier's node id defaulted to the host name
    grep -q "^rank 0: launched by torchrun .*node 0 '${host[0]}'" <<<"$survivors" ||
      { echo "$survivors"; fail "the survivors' node id is not their host name ${host[0]}"; }
  fi
  # Every global batch the survivors trained on is the uninterrupted run's at that position
  # (the sampler's position counts the whole job's samples), and none is skipped or repeated.
  python3 - "$work" "${ref_logs[@]}" -- "$a0" "$a1" <<'EOF'
import re, sys
args = sys.argv[2:]
split = args.index("--")
def batches(paths):
    out = {}
    for path in paths:
        for m in re.finditer(r"^consumed epoch (\d+) position (\d+):((?: \d+)*)$", open(path).read(), re.M):
            out.setdefault((int(m[1]), int(m[2])), []).extend(int(i) for i in m[3].split())
    return out
ref, surv = batches(args[:split]), batches(args[split + 1:])
resumed = open(args[split + 1]).read()
m = re.search(r"resumed from \S+ in memory .* at epoch (\d+) position (\d+)", resumed)
start = (int(m[1]), int(m[2]))
expected = sorted(k for k in ref if k >= start)  # positions: where each batch starts
if sorted(surv) != expected:
    sys.exit(f"FAIL: the survivors trained on batches {sorted(surv)[:3]}..., expected those after {start}: {expected[:3]}...")
for k in expected:
    if sorted(surv[k]) != sorted(ref[k]):
        sys.exit(f"FAIL: the global batch at epoch {k[0]} position {k[1]} is {sorted(surv[k])}, uninterrupted {sorted(ref[k])}")
print(f"every global batch from epoch {start[0]} position {start[1]} on ({len(expected)}) is the uninterrupted run's, each once")
EOF
  grep -h "^rank 0: weights" "$a0" "$a1" >"$work/survivors.rank0.log"
  worst=$(max_weight_diff "$work/reference.rank0.log" "$work/survivors.rank0.log")
  within_tolerance "$worst" || fail "the survivors' weights differ from the uninterrupted run by $worst (tolerance $weights_tolerance)"
  where="two network namespaces, the node ids their host names"
  [ "$nodes" = netns ] || where="two agents on loopback, the node ids from SAVEPOINT_NODE_ID"
  echo "OK: a node lost under torchrun's elastic agent ($where): the survivors restarted as a world of 2, resumed from the memory tier, final weights within $weights_tolerance of the uninterrupted 4-worker run (worst difference $worst)"
  ;;
*) echo "usage: launch-torchrun.sh restart|elastic <train_ddp> <work-dir>" >&2; exit 2 ;;
esac
