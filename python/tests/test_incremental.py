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

import savepoint
from savepoint import _canonical, safetensors
from savepoint.checkpoints import xxh3_hex
from support import fixtures


def part_file(tensors, metadata):
    """A safetensors file of `tensors` ({name: float32 ndarray}) with `metadata`."""
    specs = [(n, "F32", list(a.shape), a.nbytes) for n, a in tensors.items()]
    header, order = safetensors.build_header(specs, metadata)
    return header + b"".join(tensors[n].astype("<f4").tobytes() for n, _, _, _ in order)


def write_checkpoint(root, name, files, version=2):
    """A checkpoint directory of `files` ([(key, file name, bytes, part or None)])."""
    path = os.path.join(root, name)
    os.makedirs(path)
    records = []
    for key, file, data, part in files:
        with open(os.path.join(path, file), "wb") as f:
            f.write(data)
        rec = {"key": key, "file": file, "hook": "torch.Tensor", "bytes": len(data), "xxh3": xxh3_hex(bytes(data))}
        if part is not None:
            rec["part"] = part
        records.append(rec)
    doc = {"format": "savepoint", "format_version": version, "savepoint_version": "0.1.0", "sequence": 1,
           "unixtime": 2, "end_of_epoch": True, "meta": {}, "files": records}
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
