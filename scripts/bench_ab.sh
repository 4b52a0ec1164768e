#!/usr/bin/env bash
# A/B of savepoint_bench: another revision (A) against the work tree (B), their runs alternated
# (A B B A A B ...) in one invocation, so that neither is favoured by the state of the disk or the
# machine. Prints, per state size and series, the median seconds of each, B / A, and each one's
# sync save and load against the raw I/O of its own rounds.
#   bash scripts/bench_ab.sh 9fc8252                        # 64 MiB, 4 pairs of 3 rounds
#   bash scripts/bench_ab.sh HEAD~3 --pairs 6 --sizes 64,256 --dir /mnt/fast/tmp
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
[ $# -ge 1 ] || { echo "usage: bench_ab.sh REVISION [--pairs N] [--sizes 64,256] [--rounds R] [--dir D]" >&2; exit 2; }
rev=$1
shift
pairs=4 sizes=64 rounds=3 dir=${TMPDIR:-/tmp}/savepoint-bench-ab
while [ $# -gt 0 ]; do
  case $1 in
    --pairs) pairs=$2 ;;
    --sizes) sizes=$2 ;;
    --rounds) rounds=$2 ;;
    --dir) dir=$2 ;;
    *) echo "bench_ab.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift 2
done
bash "$root/scripts/install-deps.sh" >/dev/null
source "$root/scripts/ccache.sh"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git -C "$root" rev-parse --verify -q "$rev^{commit}" >/dev/null || { echo "bench_ab.sh: no revision '$rev'" >&2; exit 2; }
mkdir -p "$work/a"
git -C "$root" archive "$rev" | tar -x -C "$work/a"
build() {  # build <source dir> <build dir>
  cmake -S "$1" -B "$2" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSAVEPOINT_BUILD_BENCH=ON -DSAVEPOINT_BUILD_TESTS=OFF \
    -DSAVEPOINT_BUILD_EXAMPLES=OFF -DSAVEPOINT_BUILD_TOOLS=OFF "${savepoint_ccache_args[@]}" >/dev/null
  cmake --build "$2" --target savepoint_bench -j 2 >/dev/null
}
echo "savepoint: building savepoint_bench of $rev (A) and of the work tree (B)"
build "$work/a" "$work/build-a"
build "$root" "${SAVEPOINT_BENCH_BUILD_DIR:-$root/build-bench}"
a=$work/build-a/bench/savepoint_bench
b=${SAVEPOINT_BENCH_BUILD_DIR:-$root/build-bench}/bench/savepoint_bench
run() {  # run <binary> <csv>
  "$1" --sizes "$sizes" --rounds "$rounds" --checkpoints 0 --async-rounds 10 --warm-memory-gib 0 \
    --dir "$dir" --csv "$2" >/dev/null 2>&1
}
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB RAM; $pairs pairs of $rounds rounds at $sizes MiB"
for ((i = 0; i < pairs; i++)); do
  if ((i % 2 == 0)); then run "$a" "$work/a.csv"; run "$b" "$work/b.csv"
  else run "$b" "$work/b.csv"; run "$a" "$work/a.csv"; fi
done
python3 - "$work/a.csv" "$work/b.csv" "$rev" <<'EOF'
import csv, statistics, sys
def load(path):
    out = {}
    for row in csv.DictReader(open(path)):
        out.setdefault((int(row["state_mib"]), row["series"]), []).append(float(row["value"]))
    return out
a, b, rev = load(sys.argv[1]), load(sys.argv[2]), sys.argv[3]
series = ["raw_write_s", "sync_save_s", "host_copy_s", "async_stall_s", "async_total_s", "raw_read_warm_s",
          "load_s", "raw_read_fresh_s", "startup_s"]
print(f"\n| state | series | A ({rev}) median ms | B (work tree) median ms | B / A | rounds each |")
print("|---|---|---|---|---|---|")
for mib in sorted({k[0] for k in a}):
    for s in series:
        if (mib, s) not in a or (mib, s) not in b:
            continue
        ma, mb = statistics.median(a[(mib, s)]), statistics.median(b[(mib, s)])
        print(f"| {mib} MiB | {s[:-2]} | {ma * 1e3:.1f} | {mb * 1e3:.1f} | {mb / ma:.2f}x | {len(a[(mib, s)])} |")
    for name, num, den in [("sync save / raw write", "sync_save_s", "raw_write_s"),
                           ("load / raw read (warm buffer)", "load_s", "raw_read_warm_s")]:
        ra = statistics.median(a[(mib, num)]) / statistics.median(a[(mib, den)])
        rb = statistics.median(b[(mib, num)]) / statistics.median(b[(mib, den)])
        print(f"| {mib} MiB | {name} (time ratio) | {ra:.2f}x | {rb:.2f}x | {rb / ra:.2f}x | |")
EOF
