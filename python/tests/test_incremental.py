"""Incremental checkpoints (format 2, docs/format.md "Parts"): a key split into part files.

The fixture written by C++ (CKPT+first, CKPT+second sharing the frozen backbone's parts by
hard links) loads with every tensor equal to what C++ held; the safetensors bytes the reader
assembles are those of the unsplit file; hand-made damage to the parts is refused with the
part's file and the key named."""

import json
import os
import shutil
import struct
import tempfile
import unittest

import numpy as np

try:  # Debian: python3-torch (tests/python/run.sh requires it; the torch tests skip without it)
    import torch
except ImportError:  # pragma: no cover - depends on the machine
    torch = None

import savepoint
from savepoint import _canonical, safetensors
from savepoint.checkpoints import xxh3_hex
from support import fixtures


_DTYPES = {np.dtype("float32"): "F32", np.dtype("int64"): "I64", np.dtype("float16"): "F16", np.dtype("uint8"): "U8"}


def part_file(tensors, metadata):
    """A safetensors file of `tensors` ({name: ndarray}, float32 unless told) with `metadata`,
    laid out as savepoint's C++ writer lays it out."""
    tensors = {n: np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")) for n, a in tensors.items()}
    specs = [(n, _DTYPES[a.dtype.newbyteorder("=")], list(a.shape), a.nbytes) for n, a in tensors.items()]
    header, order = safetensors.build_header(specs, metadata)
    return header + b"".join(tensors[n].tobytes() for n, _, _, _ in order)


def write_checkpoint(root, name, files, version=2, world_size=None):
    """A checkpoint directory of `files` ([(key, file name, bytes, part or None)], or dicts
    with those fields and optionally "rank" and "hook"), listed in meta.json in that order."""
    path = os.path.join(root, name)
    os.makedirs(path)
    records = []
    for entry in files:
        if not isinstance(entry, dict):
            entry = dict(zip(("key", "file", "data", "part"), entry))
        data = entry["data"]
        with open(os.path.join(path, entry["file"]), "wb") as f:
            f.write(data)
        rec = {"key": entry["key"], "file": entry["file"], "hook": entry.get("hook", "torch.Tensor"),
               "bytes": len(data), "xxh3": xxh3_hex(bytes(data))}
        for field in ("part", "rank"):
            if entry.get(field) is not None:
                rec[field] = entry[field]
        records.append(rec)
    doc = {"format": "savepoint", "format_version": version, "savepoint_version": "0.1.0", "sequence": 1,
           "unixtime": 2, "end_of_epoch": True, "meta": {}, "files": records}
    if world_size is not None:
        doc["world_size"] = world_size
    doc["checksum"] = xxh3_hex(_canonical.dump(doc))
    with open(os.path.join(path, "meta.json"), "w") as f:
        json.dump(doc, f)
    return path


class HandMadeParts(unittest.TestCase):
    def setUp(self):
        self.root = tempfile.mkdtemp(prefix="savepoint-py-parts-")
        self.table = np.arange(40 * 3, dtype=np.float32).reshape(40, 3)
        self.bias = np.array([1.5, -2.0], dtype=np.float32)
        self.parts = [
            part_file({"table": self.table[:16]}, {"savepoint.part": "0", "savepoint.segment": "0/40", "k": "v"}),
            part_file({"table": self.table[16:32]}, {"savepoint.part": "1", "savepoint.segment": "16/40"}),
            part_file({"table": self.table[32:]}, {"savepoint.part": "2", "savepoint.segment": "32/40"}),
            part_file({"bias": self.bias}, {"savepoint.part": "3"}),
        ]

    def tearDown(self):
        shutil.rmtree(self.root)

    def files(self, parts=None, numbers=None):
        parts = self.parts if parts is None else parts
        numbers = list(range(len(parts))) if numbers is None else numbers
        return [("w", "w.part%05d.safetensors" % i, data, i) for i, data in zip(numbers, parts)]

    def test_a_split_key_reads_as_the_unsplit_file(self):
        c = savepoint.read_checkpoint(write_checkpoint(self.root, "CKPT+a", self.files()))
        self.assertEqual(c.keys, ["w"])
        self.assertEqual([r.part for r in c.parts("w")], [0, 1, 2, 3])
        data = c.read_verified("w")
        unsplit = part_file({"table": self.table, "bias": self.bias}, {"k": "v"})
        self.assertEqual(bytes(data), bytes(unsplit))  # byte for byte what one file would hold
        header = safetensors.parse(data, "w")
        self.assertEqual(header.metadata, {"k": "v"})
        self.assertTrue(np.array_equal(safetensors.to_numpy(data, header, header.find("table")), self.table))
        self.assertEqual(c.verify(), [])

    def test_a_damaged_part_is_named(self):
        path = write_checkpoint(self.root, "CKPT+a", self.files())
        with open(os.path.join(path, "w.part00001.safetensors"), "r+b") as f:
            f.seek(-3, os.SEEK_END)
            f.write(b"\xff")
        c = savepoint.read_checkpoint(path)
        [problem] = c.verify()
        self.assertTrue(problem.file.endswith("w.part00001.safetensors"))
        with self.assertRaisesRegex(savepoint.CorruptCheckpointError, "w.part00001.safetensors"):
            c.read_verified("w")

    def test_parts_that_do_not_fit_together_are_refused(self):
        with self.assertRaisesRegex(savepoint.CorruptCheckpointError, "parts of key 'w' are not numbered"):
            savepoint.read_checkpoint(write_checkpoint(self.root, "CKPT+gap", self.files(numbers=[0, 1, 2, 4])))
        missing_rows = [self.parts[0], self.parts[2], self.parts[3]]
        relabelled = [missing_rows[0],
                      part_file({"table": self.table[32:]}, {"savepoint.part": "1", "savepoint.segment": "32/40"}),
                      part_file({"bias": self.bias}, {"savepoint.part": "2"})]
        c = savepoint.read_checkpoint(write_checkpoint(self.root, "CKPT+rows", self.files(parts=relabelled)))
        with self.assertRaisesRegex(savepoint.CorruptCheckpointError, "w.part00001.safetensors.*rows 32 to 40"):
            c.read_verified("w")

    def test_parts_need_format_2_and_other_versions_are_refused(self):
        with self.assertRaisesRegex(savepoint.CorruptCheckpointError, "not a part index"):
            savepoint.read_checkpoint(write_checkpoint(self.root, "CKPT+v1", self.files(), version=1))
        with self.assertRaises(savepoint.FormatVersionError):
            savepoint.read_checkpoint(write_checkpoint(self.root, "CKPT+v3", self.files(), version=3))
        plain = part_file({"bias": self.bias}, {})
        c = savepoint.read_checkpoint(write_checkpoint(self.root, "CKPT+plain", [("b", "b.safetensors", plain, None)],
                                                       version=1))
        self.assertEqual(bytes(c.read_verified("b")), bytes(plain))

    def test_records_out_of_part_order_still_assemble(self):
        files = self.files()
        c = savepoint.read_checkpoint(write_checkpoint(self.root, "CKPT+shuffled", [files[2], files[0], files[3], files[1]]))
        self.assertEqual(c.file("w").part, 0)  # part 0's record stands for the key
        self.assertEqual([r.part for r in c.parts("w")], [0, 1, 2, 3])
        unsplit = part_file({"table": self.table, "bias": self.bias}, {"k": "v"})
        self.assertEqual(bytes(c.read_verified("w")), bytes(unsplit))

    def test_segments_that_do_not_continue_are_refused(self):
        def refused(name, parts, pattern):
            c = savepoint.read_checkpoint(write_checkpoint(self.root, name, self.files(parts=parts)))
            with self.assertRaisesRegex(savepoint.CorruptCheckpointError, pattern) as e:
                c.read_verified("w")
            self.assertEqual(e.exception.key, "w")

        p0, p1, p2, p3 = self.parts
        wrong_dtype = part_file({"table": self.table[16:32].astype(np.float16)},
                                {"savepoint.part": "1", "savepoint.segment": "16/40"})
        refused("CKPT+dtype", [p0, wrong_dtype, p2, p3], r"w\.part00001\.safetensors.*rows 16 to 32 of tensor 'table'")
        wrong_dims = part_file({"table": np.zeros((16, 4), np.float32)},
                               {"savepoint.part": "1", "savepoint.segment": "16/40"})
        refused("CKPT+dims", [p0, wrong_dims, p2, p3], r"w\.part00001\.safetensors.*do not continue")
        other_total = part_file({"table": self.table[16:32]}, {"savepoint.part": "1", "savepoint.segment": "16/41"})
        refused("CKPT+total", [p0, other_total, p2, p3], r"w\.part00001\.safetensors.*do not continue")
        not_from_row_0 = part_file({"table": self.table[:16]}, {"savepoint.part": "0", "savepoint.segment": "8/40"})
        refused("CKPT+start", [not_from_row_0, p1, p2, p3], r"w\.part00000\.safetensors.*rows 8 to 24 of tensor 'table'")
        after_whole = [part_file({"bias": self.bias}, {"savepoint.part": "0"}),
                       part_file({"table": self.table[16:32]}, {"savepoint.part": "1", "savepoint.segment": "16/40"})]
        refused("CKPT+after", after_whole, r"w\.part00001\.safetensors.*rows 16 to 32")
        # The last segment is lost (and the parts after it renumbered): the tensor ends early.
        short = part_file({"table": self.table[16:32]}, {"savepoint.part": "1", "savepoint.segment": "16/40"})
        refused("CKPT+short", [p0, short], r"tensor 'table' ends at row 32 of 40.*w\.part00001\.safetensors")
        # Whole tensors where a segment must continue.
        refused("CKPT+unfinished", [p0, p1, part_file({"bias": self.bias}, {"savepoint.part": "2"})],
                r"w\.part00002\.safetensors.*unfinished segmented tensor 'table'")
        malformed = part_file({"table": self.table[16:32]}, {"savepoint.part": "1", "savepoint.segment": "16-40"})
        refused("CKPT+malformed", [p0, malformed, p2, p3], r"w\.part00001\.safetensors.*malformed")
        # A part that says it is another part; a tensor in two parts.
        refused("CKPT+index", [p0, p2, p1, p3], r"w\.part00001\.safetensors.*does not say it is part 1")
        twice = part_file({"bias": self.bias}, {"savepoint.part": "4"})
        refused("CKPT+twice", [p0, p1, p2, p3, twice], r"key 'w': tensor 'bias' appears in two parts")

    def test_meta_json_with_parts_that_do_not_add_up_is_refused(self):
        files = self.files()
        for name, listed, pattern in [
                ("CKPT+nozero", files[1:], "parts of key 'w' are not numbered 0 to 2"),
                ("CKPT+twice", files + [("w", "w.again.safetensors", self.parts[0], 0)], "duplicate key 'w'"),
                ("CKPT+mixed", files + [("w", "w.safetensors", self.parts[3], None)], "duplicate key 'w'")]:
            with self.assertRaisesRegex(savepoint.CorruptCheckpointError, pattern) as e:
                savepoint.read_checkpoint(write_checkpoint(self.root, name, listed))
            self.assertTrue(e.exception.path.endswith(os.path.join(name, "meta.json")), e.exception.path)
        negative = [("w", "w.part00000.safetensors", self.parts[3], -1)]
        with self.assertRaisesRegex(savepoint.CorruptCheckpointError, "not a part index"):
            savepoint.read_checkpoint(write_checkpoint(self.root, "CKPT+negative", negative))

    def test_a_version_1_checkpoint_is_still_read_and_version_3_is_refused_without_parts(self):
        plain = part_file({"table": self.table, "bias": self.bias}, {"k": "v"})
        c = savepoint.read_checkpoint(write_checkpoint(self.root, "CKPT+v1", [("w", "w.safetensors", plain, None)],
                                                       version=1))
        self.assertEqual([r.part for r in c.parts("w")], [None])
        self.assertEqual(bytes(c.read_verified("w")), bytes(plain))
        self.assertEqual(c.verify(), [])
        with self.assertRaisesRegex(savepoint.FormatVersionError, "format version 3"):
            savepoint.read_checkpoint(write_checkpoint(self.root, "CKPT+v3", [("w", "w.safetensors", plain, None)],
                                                       version=3))


@unittest.skipIf(torch is None, "torch is not installed (Debian: python3-torch)")
class HandMadePartsInTorch(unittest.TestCase):
    """A module key and a per-rank key in parts, loaded as torch tensors."""

    MODULE_META = {"format": "pt", "savepoint.hook": "torch.nn.Module"}

    def setUp(self):
        self.root = tempfile.mkdtemp(prefix="savepoint-py-parts-")
        rng = np.random.default_rng(7)
        self.weight = rng.standard_normal((10, 2, 3)).astype(np.float32)
        self.bias = rng.standard_normal(3).astype(np.float32)
        self.steps = np.array([41], dtype=np.int64)
        self.mask = np.array([1, 0, 1], dtype=np.uint8)
        model = [
            part_file({"weight": self.weight[:4]}, dict(self.MODULE_META, **{"savepoint.part": "0",
                                                                            "savepoint.segment": "0/10"})),
            part_file({"weight": self.weight[4:8]}, {"savepoint.part": "1", "savepoint.segment": "4/10"}),
            part_file({"weight": self.weight[8:]}, {"savepoint.part": "2", "savepoint.segment": "8/10"}),
            part_file({"bias": self.bias, "steps": self.steps, "mask": self.mask}, {"savepoint.part": "3"}),
        ]
        self.model_parts = model
        files = [{"key": "model", "file": "model.part%05d.safetensors" % i, "data": d, "part": i,
                  "hook": "torch.nn.Module"} for i, d in enumerate(model)]
        self.rng_state = {r: np.arange(6, dtype=np.uint8) + 10 * r for r in (0, 1)}
        for r in (0, 1):
            for i, (a, b) in enumerate([(0, 4), (4, 6)]):
                meta = {"savepoint.part": str(i), "savepoint.segment": "%d/6" % a}
                if i == 0:
                    meta["rank"] = str(r)
                files.append({"key": "rng", "file": "rng.rank%d.part%05d.safetensors" % (r, i), "part": i, "rank": r,
                              "data": part_file({"state": self.rng_state[r][a:b]}, meta)})
        self.path = write_checkpoint(self.root, "CKPT+torch", files, world_size=2)

    def tearDown(self):
        shutil.rmtree(self.root)

    def test_a_module_key_in_parts_loads_whole(self):
        c = savepoint.read_checkpoint(self.path)
        self.assertEqual(c.verify(), [])
        state = c.state_dict("model")
        self.assertEqual(list(state), ["bias", "mask", "steps", "weight"])
        self.assertEqual(tuple(state["weight"].shape), (10, 2, 3))
        self.assertTrue(torch.equal(state["weight"], torch.from_numpy(self.weight)))
        self.assertTrue(torch.equal(state["bias"], torch.from_numpy(self.bias)))
        self.assertEqual(state["steps"].dtype, torch.int64)
        self.assertEqual(state["steps"].tolist(), [41])
        self.assertEqual(state["mask"].tolist(), [1, 0, 1])
        # The unsplit file: tensors by descending element size, then name; part 0's metadata
        # without the part's own entries.
        data = c.read_verified("model")
        header = safetensors.parse(data, "model")
        self.assertEqual(header.metadata, self.MODULE_META)
        self.assertEqual([t.name for t in header.tensors], ["steps", "bias", "weight", "mask"])
        unsplit = part_file({"weight": self.weight, "bias": self.bias, "steps": self.steps, "mask": self.mask},
                            self.MODULE_META)
        self.assertEqual(bytes(data), bytes(unsplit))

    def test_a_per_rank_key_in_parts_loads_each_rank(self):
        c = savepoint.read_checkpoint(self.path)
        self.assertEqual(c.keys, ["model", "rng"])
        for r in (0, 1):
            parts = c.parts("rng", r)
            self.assertEqual([(p.rank, p.part) for p in parts], [(r, 0), (r, 1)])
            data = c.read_verified("rng", r)
            header = safetensors.parse(data, "rng")
            self.assertEqual(header.metadata, {"rank": str(r)})
            self.assertEqual(safetensors.to_numpy(data, header, header.find("state")).tolist(),
                             self.rng_state[r].tolist())
        self.assertEqual(c.load_tensors("rng")["state"].tolist(), self.rng_state[0].tolist())

    def test_a_damaged_part_of_a_module_key_is_named(self):
        with open(os.path.join(self.path, "rng.rank1.part00001.safetensors"), "r+b") as f:
            f.seek(-1, os.SEEK_END)
            f.write(b"\x7f")
        c = savepoint.read_checkpoint(self.path)
        [problem] = c.verify()
        self.assertEqual((problem.key, os.path.basename(problem.file)), ("rng", "rng.rank1.part00001.safetensors"))
        self.assertEqual(c.read_verified("rng", 0)[:8], c.read_verified("rng")[:8])  # rank 0's parts are intact
        with self.assertRaisesRegex(savepoint.CorruptCheckpointError, "rng.rank1.part00001.safetensors.*checksum"):
            c.read_verified("rng", 1)
        os.remove(os.path.join(self.path, "model.part00002.safetensors"))
        with self.assertRaisesRegex(savepoint.CorruptCheckpointError, "missing file 'model.part00002.safetensors'"):
            c.state_dict("model")


class WrittenByCpp(unittest.TestCase):
    def test_incremental_checkpoints_load_what_cpp_held(self):
        root = fixtures("incremental")
        with open(os.path.join(root, "expected.json")) as f:
            expected = json.load(f)
        run = savepoint.CheckpointDir(root)
        first, second = run.checkpoint("CKPT+first"), run.checkpoint("CKPT+second")
        for c in (first, second):
            self.assertEqual(c.verify(), [])
            self.assertTrue(len(c.parts("model")) > 2, c.parts("model"))
            state = c.state_dict("model")
            for name, values in expected[c.name[len("CKPT+"):]].items():
                self.assertEqual(state[name].reshape(-1).double().tolist(), values, name)
        # The backbone's segments are one file under both checkpoints.
        shared = [r.file for r in second.parts("model")
                  if os.path.samefile(os.path.join(first.path, r.file), os.path.join(second.path, r.file))]
        self.assertTrue(len(shared) >= 2, shared)


if __name__ == "__main__":
    unittest.main()
