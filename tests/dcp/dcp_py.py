#!/usr/bin/env python3
"""PyTorch side of savepoint's torch.distributed.checkpoint (DCP) interoperability tests.

    dcp_py.py save --out DIR --world 4 [--format torch_save|safetensors] [--hf]
    dcp_py.py load --dir DIR --world N --expected FILE.pt
    dcp_py.py to_torch_save --dir DIR --out FILE --expected FILE.pt
    dcp_py.py describe --dir DIR

`save` writes a sharded checkpoint the way FSDP2 users do (get_state_dict + dcp.save) and, beside
it, DIR/../<name>.expected.pt ({flat DCP key: full tensor}) and <name>.expected.json ({flat key:
value} for the non-tensor items), which the C++ reader is checked against. `load` and
`to_torch_save` read a checkpoint (the C++ writer's, say) back with PyTorch and compare it bit
for bit with such an expected file. `describe` prints a checkpoint's .metadata.

`save` and `load` run one process per rank, started by this script itself (the same file, with
the hidden --rank/--port options), on CPU with Gloo over 127.0.0.1. Everything is bounded in
time: the launcher kills every rank when one fails or the deadline passes, and each rank also
ends itself (faulthandler) if the launcher is gone.
"""

import argparse
import io
import json
import os
import pickle
import shutil
import struct
import sys
import warnings
import zipfile

from gloo_ranks import launch, run_rank  # beside this file

# Debian's torch is built without libuv; the TCPStore must use its plain implementation.
# Set before torch is imported anywhere in this process or its children.
os.environ.setdefault("USE_LIBUV", "0")

# Noise from torch 2.6/2.14 on a CPU mesh, harmless for these tests; keeps the ranks' stderr
# (printed when something fails) to the point.
for _message in ("TypedStorage is deprecated", "DTensor random operators",
                 "torch.distributed is disabled", "Please use DTensor instead",
                 "pytorch/pytorch/issues/125958"):
    warnings.filterwarnings("ignore", message=".*" + _message)

DEFAULT_TIMEOUT_S = 240


# ----------------------------------------------------------------------------------------------
# The model and its training: fixed seeds and inputs, so every run (and every rank) computes the
# same values.

def make_model():
    import torch
    from torch import nn
    from torch.distributed.tensor import DTensor, Replicate

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(8, 16)
            self.fc2 = nn.Linear(16, 4)
            # A buffer: FSDP2 leaves it a plain (replicated) tensor, so the checkpoint holds one
            # unsharded chunk beside the sharded parameters.
            self.register_buffer("scale", torch.linspace(0.5, 2.0, 4, dtype=torch.float32))

        def forward(self, x):
            out = self.fc2(torch.relu(self.fc1(x)))
            scale = self.scale
            if isinstance(out, DTensor) and not isinstance(scale, DTensor):
                # Hand-made DTensor parameters (no FSDP2): the buffer stays a plain tensor and
                # DTensor refuses to mix the two.
                scale = DTensor.from_local(scale, out.device_mesh, [Replicate()])
            return out * scale

    torch.manual_seed(0)
    return Net()


def training_data():
    import torch
    torch.manual_seed(1)
    x = torch.randn(32, 8)
    y = torch.randn(32, 4)
    return x, y


def make_optimizer(model):
    import torch
    return torch.optim.Adam(model.parameters(), lr=1e-2)


EXTRA = {"lr": 0.01, "names": ["a", "b"], "nested": {"k": 1}}


# ----------------------------------------------------------------------------------------------
# Sharding: FSDP2 where the torch at hand can run it on CPU/Gloo, else DTensors made by hand.
# Both shard every parameter by rows (Shard(0)) over a 1-D mesh; the optimizer state follows.

def fully_shard_fn():
    try:
        from torch.distributed.fsdp import fully_shard  # public from 2.6 on
    except ImportError:
        from torch.distributed._composable.fsdp import fully_shard
    return fully_shard


def shard_model(model, mesh, mode):
    from torch import nn
    if mode == "fsdp":
        fully_shard = fully_shard_fn()
        fully_shard(model.fc1, mesh=mesh)
        fully_shard(model.fc2, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model
    from torch.distributed.tensor import Shard, distribute_tensor
    for module in (model.fc1, model.fc2):
        for name, param in list(module.named_parameters(recurse=False)):
            # Every rank holds the same full value (same seed), so scattering from rank 0 is
            # only a formality.
            setattr(module, name, nn.Parameter(distribute_tensor(param.detach(), mesh, [Shard(0)])))
    return model


def train(model, optim, mesh, mode, steps=2):
    import torch
    x, y = training_data()
    if mode == "dtensor":
        # Hand-made DTensor parameters need a DTensor input (DTensor refuses to mix with plain
        # tensors); the data is the same on every rank, hence Replicate.
        from torch.distributed.tensor import DTensor, Replicate
        x = DTensor.from_local(x, mesh, [Replicate()])
    for _ in range(steps):
        optim.zero_grad()
        out = model(x)
        if mode == "dtensor":
            # DTensor (2.6) has no sharding rule for mse_loss: take the loss on the gathered
            # output (full_tensor() is differentiable).
            out = out.full_tensor()
        loss = torch.nn.functional.mse_loss(out, y)
        loss.backward()
        optim.step()


def build(mesh, mode, steps):
    """Net + Adam, sharded with `mode`, trained `steps` steps."""
    model = shard_model(make_model(), mesh, mode)
    optim = make_optimizer(model)
    if steps:
        train(model, optim, mesh, mode, steps)
    return model, optim


def build_any(mesh, requested, steps):
    """Tries FSDP2 first when --shard auto. Every rank meets the same error at the same point
    (an unsupported Gloo collective, say), so all fall back together."""
    modes = ["fsdp", "dtensor"] if requested == "auto" else [requested]
    for i, mode in enumerate(modes):
        try:
            model, optim = build(mesh, mode, steps)
            return model, optim, mode
        except Exception as e:  # noqa: BLE001 - any failure of FSDP2 means "use DTensors"
            if i + 1 == len(modes):
                raise
            log(f"fully_shard did not work ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                "using hand-made DTensors")
    raise AssertionError("unreachable")


# ----------------------------------------------------------------------------------------------
# Helpers shared by the subcommands.

RANK = None  # set in a rank process


def log(message):
    """To stderr, tagged with the rank: stdout carries the results."""
    prefix = f"[rank {RANK}] " if RANK is not None else ""
    print(prefix + message, file=sys.stderr, flush=True)


def say(message):
    """Results: printed by rank 0 only (the launcher shows rank 0's stdout)."""
    if not RANK:
        print(message, flush=True)


def flatten(state):
    """DCP's own flattening (dicts always; lists only when they hold tensors or dicts), so the
    keys are exactly those of .metadata."""
    from torch.distributed.checkpoint._nested_dict import flatten_state_dict
    return flatten_state_dict(state)[0]


def full_cpu(t):
    """The full, plain, contiguous CPU tensor behind a DTensor (a collective) or a tensor."""
    from torch.distributed.tensor import DTensor
    if isinstance(t, DTensor):
        t = t.full_tensor()
    return t.detach().cpu().contiguous().clone()


def bit_equal(a, b):
    """Same dtype, same shape, same bytes (torch.equal alone would call -0.0 == 0.0 and
    NaN != NaN)."""
    import torch
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.contiguous().reshape(-1).view(torch.uint8),
                       b.contiguous().reshape(-1).view(torch.uint8))


def json_value(value):
    """A non-tensor item as plain JSON (tuples become lists)."""
    return json.loads(json.dumps(value, default=repr))


def read_metadata(directory):
    import torch  # noqa: F401 - the pickle refers to torch.distributed.checkpoint classes
    with open(os.path.join(directory, ".metadata"), "rb") as f:
        return pickle.load(f)


def is_tensor_md(md):
    return hasattr(md, "chunks")


def key_kind(md):
    if is_tensor_md(md):
        return (f"tensor {str(md.properties.dtype).replace('torch.', '')} {list(md.size)} "
                f"chunks={len(md.chunks)}")
    return "bytes"


def expected_paths(directory):
    stem = os.path.join(os.path.dirname(os.path.abspath(directory)),
                        os.path.basename(os.path.normpath(directory)))
    return stem + ".expected.pt", stem + ".expected.json"


def json_path_for(expected_pt):
    return expected_pt[:-3] + ".json" if expected_pt.endswith(".pt") else expected_pt + ".json"


def is_hf_dir(directory):
    return (not os.path.exists(os.path.join(directory, ".metadata"))
            and any(n.endswith(".safetensors") for n in os.listdir(directory)))


# ----------------------------------------------------------------------------------------------
# save

def rank_save(args, mesh):
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model, optim, mode = build_any(mesh, args.shard, steps=2)
    say(f"torch {torch.__version__}: sharding={mode} world={dist.get_world_size()}")
    model_sd, optim_sd = get_state_dict(model, optim)

    if args.hf:
        # The HF writer stores tensors only (no BYTE_IO items), under their plain names.
        # save_distributed: every rank writes its own shard file (sharded/shard-0000<r>-...),
        # which enable_consolidation then merges into full model-0000x-of-0000y.safetensors
        # files plus model.safetensors.index.json. (Without save_distributed it assumes rank-0
        # checkpointing of a full state dict: every rank would write the same file name.)
        state = model_sd
        writer = dcp.HuggingFaceStorageWriter(args.out, save_distributed=True,
                                              enable_consolidation=True)
        dcp.save(state, storage_writer=writer)
    else:
        state = {"model": model_sd, "optim": optim_sd, "step": 2, "extra": EXTRA}
        if args.format == "safetensors":
            from torch.distributed.checkpoint import FileSystemWriter
            from torch.distributed.checkpoint.filesystem import SerializationFormat
            writer = FileSystemWriter(args.out, serialization_format=SerializationFormat.SAFETENSORS)
            dcp.save(state, storage_writer=writer)
        else:
            dcp.save(state, checkpoint_id=args.out)

    # Every rank takes part: full_tensor() of a DTensor is a collective.
    flat = flatten(state)
    full = {k: full_cpu(v) for k, v in flat.items() if isinstance(v, torch.Tensor)}
    dist.barrier()
    if RANK != 0:
        return

    expected_pt, expected_json = expected_paths(args.out)
    if args.hf:
        tensor_keys, byte_keys = sorted(full), []
        say("no .metadata (HF format): tensors = " + ", ".join(tensor_keys))
    else:
        md = read_metadata(args.out)
        sdm = md.state_dict_metadata
        tensor_keys = sorted(k for k, v in sdm.items() if is_tensor_md(v))
        byte_keys = sorted(k for k, v in sdm.items() if not is_tensor_md(v))
        if set(tensor_keys) != set(full):
            raise RuntimeError(f"tensor keys differ: .metadata {sorted(tensor_keys)} "
                               f"vs state dict {sorted(full)}")
        say(f".metadata keys ({len(sdm)}):")
        for k in sorted(sdm):
            say(f"  {k}: {key_kind(sdm[k])}")
    torch.save({k: full[k] for k in tensor_keys}, expected_pt)
    with open(expected_json, "w") as f:
        json.dump({k: json_value(flat[k]) for k in byte_keys}, f, indent=1, sort_keys=True)
        f.write("\n")
    say(f"wrote {args.out}, {expected_pt} ({len(tensor_keys)} tensors), "
        f"{expected_json} ({len(byte_keys)} values)")


# ----------------------------------------------------------------------------------------------
# load

def rank_load(args, mesh):
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (get_state_dict, set_model_state_dict,
                                                         set_state_dict)

    # A fresh Adam has no state to load into: get_state_dict() creates it (one step with zero
    # gradients and lr 0, torch.distributed.checkpoint.state_dict._init_optim_state), which is
    # how torchtitan and the DCP recipes load optimizer state.
    model, optim, mode = build_any(mesh, args.shard, steps=0)
    model_sd, optim_sd = get_state_dict(model, optim)

    hf = is_hf_dir(args.dir)
    if hf:
        reader = dcp.HuggingFaceStorageReader(args.dir)
        sdm = reader.read_metadata().state_dict_metadata
        target = dict(model_sd)
        has_optim = False
    else:
        reader = dcp.FileSystemReader(args.dir)
        sdm = read_metadata(args.dir).state_dict_metadata
        target = {"model": model_sd}
        # A checkpoint without optimizer state (a model-only one from the C++ writer) is loaded
        # without it: DCP refuses target keys the checkpoint does not have.
        has_optim = any(k.startswith("optim.") for k in sdm)
        if has_optim:
            target["optim"] = optim_sd
        # Anything else in the checkpoint ("step", "extra.*") is loaded under its flat key,
        # which DCP matches as is: a placeholder for values, a full tensor for tensors.
        for k, md in sdm.items():
            if not k.startswith(("model.", "optim.")):
                target[k] = (torch.empty(tuple(md.size), dtype=md.properties.dtype)
                             if is_tensor_md(md) else None)
    say(f"torch {torch.__version__}: sharding={mode} world={dist.get_world_size()} "
        f"reader={type(reader).__name__}")

    dcp.load(target, storage_reader=reader)
    if hf or not has_optim:
        # set_state_dict() refuses an empty optimizer state dict.
        set_model_state_dict(model, target if hf else target["model"])
    else:
        set_state_dict(model, optim, model_state_dict=target["model"],
                       optim_state_dict=target["optim"])

    # Read back through the model and optimizer, so that set_state_dict is checked too.
    model_sd, optim_sd = get_state_dict(model, optim)
    if hf:
        loaded = dict(model_sd)
    else:
        loaded = {k: v for k, v in target.items() if k not in ("model", "optim")}
        loaded["model"] = model_sd
        if has_optim:
            loaded["optim"] = optim_sd
    loaded = flatten(loaded)

    expected = torch.load(args.expected, weights_only=True)
    failures = []
    compared = 0
    for k in sorted(expected):
        if k not in loaded or not isinstance(loaded[k], torch.Tensor):
            failures.append(f"{k}: missing from the loaded state")
            continue
        got = full_cpu(loaded[k])  # a collective: every rank walks the same keys
        if bit_equal(got, expected[k]):
            compared += 1
            say(f"  equal  {k} {str(got.dtype).replace('torch.', '')} {list(got.shape)}")
        else:
            failures.append(f"{k}: differs (loaded {got.dtype} {list(got.shape)}, "
                            f"expected {expected[k].dtype} {list(expected[k].shape)})")
    checkpoint_tensors = {k for k, md in sdm.items() if is_tensor_md(md)}
    for k in sorted(checkpoint_tensors - set(expected)):
        failures.append(f"{k}: in the checkpoint but not in {args.expected}")

    # Non-tensor items: compared only where the checkpoint has them and the expected .json
    # (beside the .pt) gives a value.
    json_file = json_path_for(args.expected)
    expected_values = {}
    if os.path.exists(json_file):
        with open(json_file) as f:
            expected_values = json.load(f)
    values = 0
    for k in sorted(k for k, md in sdm.items() if not is_tensor_md(md)):
        got = json_value(loaded.get(k))
        if k in expected_values:
            if got == expected_values[k]:
                values += 1
                say(f"  equal  {k} = {json.dumps(got)}")
            else:
                failures.append(f"{k}: loaded {json.dumps(got)}, expected "
                                f"{json.dumps(expected_values[k])}")
        else:
            say(f"  loaded {k} = {json.dumps(got)} (no expected value)")

    if failures:
        say("FAILED: " + failures[0])
        for line in failures[1:]:
            say("  also: " + line)
        raise SystemExit(1)
    say(f"OK: {compared} tensors bit-equal at world {dist.get_world_size()}"
        + (f", {values} values equal" if values else ""))


# ----------------------------------------------------------------------------------------------
# to_torch_save and describe (single process, no process group)

def cmd_to_torch_save(args):
    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
    dcp_to_torch_save(args.dir, args.out)
    flat = flatten(torch.load(args.out, weights_only=True))
    expected = torch.load(args.expected, weights_only=True)
    failures, compared = [], 0
    for k in sorted(expected):
        v = flat.get(k)
        if not isinstance(v, torch.Tensor):
            failures.append(f"{k}: missing from {args.out}")
        elif not bit_equal(v, expected[k]):
            failures.append(f"{k}: differs")
        else:
            compared += 1
            print(f"  equal  {k} {str(v.dtype).replace('torch.', '')} {list(v.shape)}")
    extra = sorted(k for k, v in flat.items() if isinstance(v, torch.Tensor) and k not in expected)
    failures += [f"{k}: in {args.out} but not in {args.expected}" for k in extra]
    json_file = json_path_for(args.expected)
    values = 0
    if os.path.exists(json_file):
        with open(json_file) as f:
            for k, want in sorted(json.load(f).items()):
                if k not in flat:
                    failures.append(f"{k}: missing from {args.out}")
                elif json_value(flat[k]) != want:
                    failures.append(f"{k}: {json.dumps(json_value(flat[k]))} != {json.dumps(want)}")
                else:
                    values += 1
                    print(f"  equal  {k} = {json.dumps(want)}")
    if failures:
        print("FAILED: " + failures[0])
        for line in failures[1:]:
            print("  also: " + line)
        return 1
    print(f"OK: {compared} tensors bit-equal in {args.out} (dcp_to_torch_save)"
          + (f", {values} values equal" if values else ""))
    return 0


def safetensors_header(raw, offset):
    """The safetensors header at `offset` (8-byte little-endian length, then JSON), or None."""
    if offset + 8 > len(raw):
        return None
    (n,) = struct.unpack_from("<Q", raw, offset)
    if n <= 0 or offset + 8 + n > len(raw) or raw[offset + 8:offset + 9] != b"{":
        return None
    try:
        return json.loads(raw[offset + 8:offset + 8 + n]), offset + 8 + n
    except ValueError:
        return None


def describe_hf(directory):
    """An HF-format directory: no .metadata; the index json and each file's safetensors header
    (sharded/ holds the per-rank files when the writer consolidated them)."""
    for root, _, names in sorted(os.walk(directory)):
        for name in sorted(names):
            path = os.path.join(root, name)
            rel = os.path.relpath(path, directory)
            if name.endswith(".json"):
                with open(path) as f:
                    print(f"{rel}: {json.dumps(json.load(f), sort_keys=True)}")
            elif name.endswith(".safetensors"):
                with open(path, "rb") as f:
                    raw = f.read()
                header, data_start = safetensors_header(raw, 0)
                print(f"{rel}: header {data_start - 8} bytes, data from @{data_start}, "
                      f"file size {len(raw)}")
                for key in sorted(header):
                    print(f"  {key}: {json.dumps(header[key])}")
    return 0


def cmd_describe(args):
    import torch
    if is_hf_dir(args.dir):
        return describe_hf(args.dir)
    md = read_metadata(args.dir)
    print(f"{os.path.join(args.dir, '.metadata')}: {type(md).__module__}.{type(md).__name__}")
    print(f"version: {getattr(md, 'version', '(no field)')!r}")
    print(f"storage_meta: {md.storage_meta!r}")
    sdm = md.state_dict_metadata
    print(f"state_dict_metadata ({len(sdm)} keys):")
    for k in sorted(sdm):
        v = sdm[k]
        print(f"  {k}: {key_kind(v)}")
        if is_tensor_md(v):
            p = v.properties
            print(f"      properties: layout={p.layout} requires_grad={p.requires_grad} "
                  f"memory_format={p.memory_format} pin_memory={p.pin_memory}")
            for c in v.chunks:
                print(f"      chunk offsets={list(c.offsets)} sizes={list(c.sizes)}")
    if md.planner_data is not None:
        print("planner_data (flat key -> path in the nested state dict):")
        for k in sorted(md.planner_data):
            print(f"  {k}: {md.planner_data[k]!r}")

    files = {}
    def raw_of(path):
        if path not in files:
            with open(os.path.join(args.dir, path), "rb") as f:
                files[path] = f.read()
        return files[path]

    print("storage_data:")
    items = sorted(md.storage_data.items(),
                   key=lambda kv: (kv[1].relative_path, kv[1].offset, kv[0].fqn))
    for index, info in items:
        offset = None if index.offset is None else list(index.offset)
        line = (f"  {index.fqn} offset={offset} -> {info.relative_path} "
                f"@{info.offset} +{info.length}")
        transforms = getattr(info, "transform_descriptors", None)
        if transforms:
            line += f" transforms={transforms!r}"
        print(line)
        raw = raw_of(info.relative_path)
        head = raw[info.offset:info.offset + min(info.length, 16)]
        kind = "zip (torch.save)" if head.startswith(b"PK\x03\x04") else "not a zip"
        detail = ""
        if not is_tensor_md(sdm[index.fqn]):
            try:
                obj = torch.load(io.BytesIO(raw[info.offset:info.offset + info.length]),
                                 weights_only=False)
                detail = f" value={obj!r}"
            except Exception as e:  # noqa: BLE001 - only a description
                detail = f" (torch.load failed: {e})"
        print(f"      first bytes {head.hex()} [{kind}]{detail}")
        if kind.startswith("zip"):
            try:
                with zipfile.ZipFile(io.BytesIO(raw[info.offset:info.offset + info.length])) as z:
                    print(f"      zip members {z.namelist()}")
            except zipfile.BadZipFile as e:
                print(f"      (not a readable zip: {e})")

    # Safetensors-format .distcp files: the tensors of a file share one safetensors blob.
    for path in sorted({info.relative_path for info in md.storage_data.values()}):
        raw = raw_of(path)
        starts = sorted({info.offset for index, info in md.storage_data.items()
                         if info.relative_path == path and is_tensor_md(sdm[index.fqn])})
        for start in starts:
            found = safetensors_header(raw, start)
            if found:
                header, data_start = found
                print(f"{path}: safetensors blob at @{start}, header {data_start - start - 8} "
                      f"bytes, data from @{data_start}, file size {len(raw)}")
                for name in sorted(header):
                    print(f"  {name}: {json.dumps(header[name])}")
    return 0


def prepare_out_dir(path):
    """`save` starts from an empty directory; it deletes only what looks like a checkpoint."""
    if os.path.isdir(path) and os.listdir(path):
        names = os.listdir(path)
        if not any(n == ".metadata" or n.endswith((".distcp", ".safetensors", ".json"))
                   or n == "sharded" for n in names):
            raise SystemExit(f"{path} is not empty and holds no checkpoint; not deleting it")
        shutil.rmtree(path)
    os.makedirs(path, exist_ok=True)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rank", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=None, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="cmd", required=True)

    def dist_options(p):
        p.add_argument("--world", type=int, default=4, help="number of ranks (default 4)")
        p.add_argument("--shard", choices=("auto", "fsdp", "dtensor"), default="auto",
                       help="FSDP2 fully_shard, hand-made Shard(0) DTensors, or FSDP2 with "
                            "DTensors as the fallback (default)")
        p.add_argument("--timeout", type=int, default=DEFAULT_TIMEOUT_S,
                       help=f"seconds for all ranks together (default {DEFAULT_TIMEOUT_S})")

    p = sub.add_parser("save", help="train 2 steps sharded and dcp.save model + optimizer")
    p.add_argument("--out", required=True)
    p.add_argument("--format", choices=("torch_save", "safetensors"), default="torch_save")
    p.add_argument("--hf", action="store_true",
                   help="HuggingFaceStorageWriter (model weights only; torch 2.8+)")
    dist_options(p)

    p = sub.add_parser("load", help="dcp.load into a fresh sharded model and compare")
    p.add_argument("--dir", required=True)
    p.add_argument("--expected", required=True)
    dist_options(p)

    p = sub.add_parser("to_torch_save", help="dcp_to_torch_save, then compare")
    p.add_argument("--dir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--expected", required=True)

    p = sub.add_parser("describe", help="print a checkpoint's .metadata")
    p.add_argument("--dir", required=True)
    return parser.parse_args(argv)


def main(argv):
    args = parse_args(argv)
    if args.rank is not None:
        global RANK
        RANK = args.rank
        run_rank(args, {"save": rank_save, "load": rank_load})
    if args.cmd == "save":
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint import filesystem
        if args.format == "safetensors" and not hasattr(filesystem, "SerializationFormat"):
            print("dcp_py.py save: --format safetensors needs torch 2.8 or later "
                  "(FileSystemWriter(serialization_format=...))", file=sys.stderr)
            return 2
        if args.hf and not hasattr(dcp, "HuggingFaceStorageWriter"):
            print("dcp_py.py save: --hf needs torch 2.8 or later "
                  "(torch.distributed.checkpoint.HuggingFaceStorageWriter)", file=sys.stderr)
            return 2
        if args.hf and args.format != "torch_save":
            print("dcp_py.py save: --hf and --format are exclusive", file=sys.stderr)
            return 2
        prepare_out_dir(args.out)
    if args.cmd in ("save", "load"):
        return launch(args, argv, __file__)
    return {"to_torch_save": cmd_to_torch_save, "describe": cmd_describe}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
