#!/usr/bin/env python3
"""PyTorch side of bench/bench-dcp.sh: write a large sharded DCP checkpoint, and time dcp.load.

    dcp_bench.py save --out DIR --world 4 --gib 1 [--tensors 16]
    dcp_bench.py load --dir DIR --world 2
    dcp_bench.py expect --dir DIR --world 2

`save` runs --world Gloo ranks; each builds ONLY its Shard(0) rows of --tensors float32 tensors
"model.layer{i}.weight" of [rows, 4096] (together --gib GiB; rows divisible by 4 so that
DTensor's chunk split and savepoint's even_rows agree at worlds 1, 2 and 4), values from a
generator seeded by (tensor, rank), wraps them with DTensor.from_local on a 1-D CPU mesh and
calls dcp.save: no rank ever holds more than its rows. Beside DIR it writes
DIR.rowsums/rank<r>.pt, the byte sums of every row it wrote, from which `expect` computes the
checksum any loader must find at another world size.

`load` runs --world Gloo ranks; each reads DIR/.metadata, allocates its Shard(0) part of every
tensor key (torch.empty, every page touched with zero_(), all before the clock), then times
dcp.load(state_dict, checkpoint_id=DIR) only, between two barriers. Each rank prints one line of
JSON (as bench/bench_dcp.cpp does):
    {"loader": "python", "rank", "world", "seconds", "bytes", "shard_mib", "base_rss_mib",
     "peak_rss_mib", "checksum", "tensors", "split_matches_even_rows"}
peak_rss_mib is resource.getrusage's ru_maxrss right after the load (before the checksum),
base_rss_mib the same before the shard is allocated (Python with torch imported and the process
group up). checksum: over the tensor keys in sorted order (index t) and each of this rank's rows
(global row g), the sum of the row's bytes times (g + 1 + t * 1000003), summed modulo 2**64.

Ranks are processes of this script (hidden --rank/--port), CPU and Gloo over 127.0.0.1, bounded
in time (--timeout: the launcher kills every rank when one fails or the deadline passes). Each
rank ends with os._exit after a last barrier: torch 2.6's Gloo process group can deadlock in its
destructor (see tests/dcp/dcp_py.py, run_rank).
"""

import argparse
import json
import os
import pickle
import resource
import shutil
import sys
import time
import warnings

# The rank launcher the DCP tests use.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "dcp"))
from gloo_ranks import launch, run_rank  # noqa: E402

os.environ.setdefault("USE_LIBUV", "0")  # Debian's torch has no libuv TCPStore
for _message in ("TypedStorage is deprecated", "torch.distributed is disabled",
                 "Please use DTensor instead", "pytorch/pytorch/issues/125958"):
    warnings.filterwarnings("ignore", message=".*" + _message)

COLS = 4096
WEIGHT = 1000003
MASK = (1 << 64) - 1
RANK = None


def log(message):
    print((f"[rank {RANK}] " if RANK is not None else "") + message, file=sys.stderr, flush=True)


def max_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def even_rows(global_rows, rank, world):
    """savepoint::even_rows: the first global_rows % world ranks get one row more."""
    base, extra = divmod(global_rows, world)
    rows = base + (1 if rank < extra else 0)
    return rank * base + min(rank, extra), rows


def shard_rows(global_shape, mesh):
    """(offset, rows) of this rank's Shard(0) part, as DTensor computes it."""
    try:
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
        from torch.distributed.tensor import Shard
        shape, offset = compute_local_shape_and_global_offset(global_shape, mesh, [Shard(0)])
        return offset[0], shape[0]
    except ImportError:  # torch.chunk semantics: ceil-sized pieces
        world, rank = mesh.size(), mesh.get_local_rank()
        step = -(-global_shape[0] // world)
        start = min(rank * step, global_shape[0])
        return start, min(step, global_shape[0] - start)


def row_sums(local):
    """Byte sum of every row of `local` (a 0-dim tensor is one row), int64."""
    import torch
    flat = local.detach().contiguous().reshape(1 if local.dim() == 0 else local.shape[0], -1)
    return flat.view(torch.uint8).sum(dim=1, dtype=torch.int64)


def weighted(sums, offset, t):
    import torch
    weights = torch.arange(offset, offset + sums.numel(), dtype=torch.int64) + 1 + t * WEIGHT
    return int((sums * weights).sum()) & MASK  # int64 wraps as uint64 would


def read_metadata(directory):
    import torch  # noqa: F401 - the pickle names torch.distributed.checkpoint classes
    with open(os.path.join(directory, ".metadata"), "rb") as f:
        return pickle.load(f)


def tensor_items(md):
    """[(key, size, dtype)] of the tensor keys, sorted by key."""
    sdm = md.state_dict_metadata
    return [(k, tuple(sdm[k].size), sdm[k].properties.dtype)
            for k in sorted(sdm) if hasattr(sdm[k], "chunks")]


# ----------------------------------------------------------------------------------------------
# save

def plan(gib, tensors, world):
    total_elems = int(gib * (1 << 30)) // 4
    rows = total_elems // tensors // COLS
    rows -= rows % 4
    if rows < 4 or rows % world:
        raise SystemExit(f"dcp_bench.py: {gib} GiB in {tensors} tensors gives {rows} rows; "
                         f"need a multiple of 4 and of --world {world}")
    return rows


def rank_save(args, mesh):
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.tensor import DTensor, Shard

    rows = plan(args.gib, args.tensors, args.world)
    local_rows = rows // args.world
    offset = args.rank * local_rows
    state, sums = {}, {}
    for i in range(args.tensors):
        g = torch.Generator().manual_seed(1000 * i + args.rank)
        local = torch.rand((local_rows, COLS), generator=g, dtype=torch.float32)
        key = f"layer{i}.weight"
        state[key] = DTensor.from_local(local, mesh, [Shard(0)], run_check=False,
                                        shape=torch.Size((rows, COLS)), stride=(COLS, 1))
        sums[f"model.{key}"] = (offset, row_sums(local))
    start = time.monotonic()
    dcp.save({"model": state}, checkpoint_id=args.out)
    seconds = time.monotonic() - start
    os.makedirs(args.out + ".rowsums", exist_ok=True)
    torch.save(sums, os.path.join(args.out + ".rowsums", f"rank{args.rank}.pt"))
    dist.barrier()
    print(json.dumps({"save_rank": args.rank, "world": args.world, "seconds": round(seconds, 3),
                      "bytes": local_rows * COLS * 4 * args.tensors,
                      "peak_rss_mib": round(max_rss_mib(), 1),
                      "tensors": args.tensors, "shape": [rows, COLS]}), flush=True)


# ----------------------------------------------------------------------------------------------
# load

def rank_load(args, mesh):
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.tensor import DTensor, Shard

    base_rss = max_rss_mib()
    items = tensor_items(read_metadata(args.dir))
    state, locals_ = {}, []
    nbytes, split_ok = 0, True
    for key, size, dtype in items:
        if len(size) == 0 or size[0] <= 1:
            local = torch.empty(size, dtype=dtype)  # whole on every rank, as bench_dcp does
            state[key], offset = local, 0
        else:
            offset, rows = shard_rows(size, mesh)
            split_ok = split_ok and (offset, rows) == even_rows(size[0], args.rank, args.world)
            local = torch.empty((rows,) + size[1:], dtype=dtype)
            stride = torch.empty(size, dtype=dtype, device="meta").stride()
            state[key] = DTensor.from_local(local, mesh, [Shard(0)], run_check=False,
                                            shape=torch.Size(size), stride=stride)
        local.zero_()  # touch every page before the clock, as bench_dcp does
        nbytes += local.numel() * local.element_size()
        locals_.append((local, offset))

    dist.barrier()
    start = time.monotonic()
    dcp.load(state, checkpoint_id=args.dir)
    seconds = time.monotonic() - start
    peak_rss = max_rss_mib()
    dist.barrier()

    checksum = 0
    for t, (local, offset) in enumerate(locals_):
        checksum = (checksum + weighted(row_sums(local), offset, t)) & MASK
    print(json.dumps({"loader": "python", "rank": args.rank, "world": args.world,
                      "seconds": round(seconds, 6), "bytes": nbytes,
                      "shard_mib": round(nbytes / (1 << 20), 1),
                      "base_rss_mib": round(base_rss, 1), "peak_rss_mib": round(peak_rss, 1),
                      "checksum": str(checksum), "tensors": len(items),
                      "split_matches_even_rows": split_ok}), flush=True)


# ----------------------------------------------------------------------------------------------
# expect (one process): the checksum each rank of a load at --world must find, from the row sums
# the save wrote (savepoint's even_rows split).

def cmd_expect(args):
    import torch
    folder = os.path.normpath(args.dir) + ".rowsums"
    rowsums = {}
    for name in sorted(os.listdir(folder)):
        for key, (offset, sums) in torch.load(os.path.join(folder, name), weights_only=True).items():
            rowsums.setdefault(key, []).append((offset, sums))
    keys = [k for k, _, _ in tensor_items(read_metadata(args.dir))]
    if sorted(rowsums) != keys:
        raise SystemExit(f"dcp_bench.py expect: {folder} and {args.dir} name different tensors")
    full = {k: torch.cat([s for _, s in sorted(v, key=lambda p: p[0])]) for k, v in rowsums.items()}
    for rank in range(args.world):
        checksum = 0
        for t, key in enumerate(keys):
            sums = full[key]
            if sums.numel() <= 1:
                offset, rows = 0, sums.numel()
            else:
                offset, rows = even_rows(sums.numel(), rank, args.world)
            checksum = (checksum + weighted(sums[offset:offset + rows], offset, t)) & MASK
        print(json.dumps({"expected": True, "rank": rank, "world": args.world,
                          "checksum": str(checksum)}))
    return 0


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rank", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=None, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("save", help="write a sharded float32 DCP checkpoint from --world ranks")
    p.add_argument("--out", required=True)
    p.add_argument("--world", type=int, default=4)
    p.add_argument("--gib", type=float, default=1.0)
    p.add_argument("--tensors", type=int, default=16)
    p.add_argument("--timeout", type=int, default=600)
    p = sub.add_parser("load", help="time dcp.load of DIR at --world ranks")
    p.add_argument("--dir", required=True)
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--timeout", type=int, default=600)
    p = sub.add_parser("expect", help="the checksums a load at --world must find")
    p.add_argument("--dir", required=True)
    p.add_argument("--world", type=int, default=2)
    return parser.parse_args(argv)


def main(argv):
    args = parse_args(argv)
    if args.rank is not None:
        global RANK
        RANK = args.rank
        run_rank(args, {"save": rank_save, "load": rank_load})
    if args.cmd == "expect":
        return cmd_expect(args)
    if args.cmd == "save":
        plan(args.gib, args.tensors, args.world)  # fails early on an impossible split
        if (os.path.isdir(args.out) and os.listdir(args.out)
                and not os.path.exists(os.path.join(args.out, ".metadata"))):
            raise SystemExit(f"{args.out} is not empty and holds no checkpoint; not deleting it")
        for path in (args.out, args.out + ".rowsums"):
            if os.path.exists(path):
                shutil.rmtree(path)
        os.makedirs(args.out)
    return launch(args, argv, __file__, all_stdout=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
