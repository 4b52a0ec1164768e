#!/usr/bin/env bash
# Loading a PyTorch DCP checkpoint written by 4 ranks, at 2 ranks: savepoint::dcp::load
# (bench/bench_dcp.cpp) against Python's dcp.load (bench/dcp_bench.py), in the same run.
#
#   bash bench/bench-dcp.sh BENCH_DCP [GIB]      # GIB: checkpoint size, default 1
#
# BENCH_DCP is the savepoint_bench_dcp binary (a build with -DSAVEPOINT_BUILD_BENCH=ON, e.g.
# build-bench/bench/savepoint_bench_dcp); python3 needs torch.distributed.checkpoint.
# In a fresh temporary directory: Python's dcp.save from 4 Gloo ranks (each builds only its
# rows; not timed), then at 2 ranks: C++ load (two processes started together), Python load,
# Python load again, C++ load again. The reported warm-cache figures are each loader's second
# run (the first ones are shown, as warm-up). Where the page cache can be dropped (root, and
# BENCH_DCP_COLD is not 0), each loader is also run once after `echo 3 > drop_caches`; else the
# output says "page cache warm" only. Prints a table (loader, run, rank, seconds, peak RSS,
# shard), the ratio Python seconds / C++ seconds (slowest rank of each), and whether every
# rank's checksum matched between C++, Python and the rows the save wrote.
# Every command runs under `timeout`; exits 1 when a step fails or a checksum differs.
set -euo pipefail
if [ $# -lt 1 ] || [ ! -x "$1" ]; then
  echo "usage: bash bench/bench-dcp.sh BENCH_DCP [GIB]  (BENCH_DCP: the savepoint_bench_dcp binary)" >&2
  exit 2
fi
bin=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
gib=${2:-1}
here=$(cd "$(dirname "$0")" && pwd)
py=(python3 "$here/dcp_bench.py")
work=$(mktemp -d "${TMPDIR:-/tmp}/bench-dcp.XXXXXX")
trap 'rm -rf "$work"' EXIT
ckpt=$work/ckpt
results=$work/results.jsonl
: >"$results"
# One intra-op thread per rank, as torchrun sets for several ranks on one machine.
export OMP_NUM_THREADS=1 USE_LIBUV=0

step() { echo "bench-dcp: $*" >&2; }

step "python3 dcp_bench.py save: ${gib} GiB from 4 ranks into $ckpt"
timeout 900 "${py[@]}" save --out "$ckpt" --world 4 --gib "$gib" --timeout 840 >"$work/save.jsonl"
cat "$work/save.jsonl" >&2
timeout 300 "${py[@]}" expect --dir "$ckpt" --world 2 | sed 's/^{/{"run":"expected",/' >>"$results"

# Tags each JSON line with the run's name.
tag() { sed "s/^{/{\"run\":\"$1\",/"; }

cpp_load() {
  local run=$1 p0 p1 s0=0 s1=0
  step "C++ bench_dcp load at 2 ranks ($run)"
  timeout 600 "$bin" load "$ckpt" 0 2 >"$work/$run.0" &
  p0=$!
  timeout 600 "$bin" load "$ckpt" 1 2 >"$work/$run.1" &
  p1=$!
  wait "$p0" || s0=$?
  wait "$p1" || s1=$?
  if [ "$s0" -ne 0 ] || [ "$s1" -ne 0 ]; then
    echo "bench-dcp: bench_dcp failed (rank 0: exit $s0, rank 1: exit $s1)" >&2
    return 1
  fi
  cat "$work/$run.0" "$work/$run.1" | tag "$run" >>"$results"
}

py_load() {
  local run=$1
  step "Python dcp.load at 2 ranks ($run)"
  timeout 660 "${py[@]}" load --dir "$ckpt" --world 2 --timeout 600 >"$work/$run.py"
  tag "$run" <"$work/$run.py" >>"$results"
}

drop_caches() {
  [ "${BENCH_DCP_COLD:-1}" != 0 ] && sync && { echo 3 >/proc/sys/vm/drop_caches; } 2>/dev/null
}

cpp_load warmup
py_load warmup
py_load warm
cpp_load warm
cache="page cache warm (each loader's second run; cold runs: not possible here)"
if drop_caches; then
  cpp_load cold
  if drop_caches; then
    py_load cold
    cache="page cache warm (each loader's second run); cold: after drop_caches, one run each"
  fi
fi

timeout 60 python3 - "$results" "$cache" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
expected = {r["rank"]: r["checksum"] for r in rows if r["run"] == "expected"}
runs = [r for r in rows if r["run"] != "expected"]
print(f"DCP checkpoint: {runs[0]['tensors']} tensors, loaded at world {runs[0]['world']}; "
      f"{sys.argv[2]}")
head = (f"{'loader':<7} {'run':<7} {'rank':>4} {'seconds':>8} {'peak RSS MiB':>12} "
        f"{'base RSS MiB':>12} {'shard MiB':>9} {'peak-base-shard':>15} {'checksum':>8}")
print(head)
print("-" * len(head))
ok = True
for r in runs:
    match = r["checksum"] == expected.get(r["rank"])
    ok = ok and match
    print(f"{r['loader']:<7} {r['run']:<7} {r['rank']:>4} {r['seconds']:>8.3f} "
          f"{r['peak_rss_mib']:>12.1f} {r['base_rss_mib']:>12.1f} {r['shard_mib']:>9.1f} "
          f"{r['peak_rss_mib'] - r['base_rss_mib'] - r['shard_mib']:>15.1f} "
          f"{'ok' if match else 'DIFFERS':>8}")
print()
for run in ("warm", "cold"):
    cpp = [r["seconds"] for r in runs if r["run"] == run and r["loader"] == "cpp"]
    pyt = [r["seconds"] for r in runs if r["run"] == run and r["loader"] == "python"]
    if cpp and pyt:
        ratio = max(pyt) / max(cpp)
        print(f"{run}: Python {max(pyt):.3f} s / C++ {max(cpp):.3f} s (slowest rank each) = "
              f"{ratio:.2f}x  (goal >= 2x: {'met' if ratio >= 2 else 'NOT met'})")
split = all(r.get("split_matches_even_rows", True) for r in runs)
print(f"checksums: {'all matched' if ok else 'MISMATCH'} (C++ and Python, every run and rank, "
      f"against the rows the 4-rank save wrote); DTensor's split == even_rows: {split}")
sys.exit(0 if ok else 1)
EOF
