"""Damaged checkpoints and files are refused with errors naming the file and key."""

import json
import os
import struct
import unittest

import savepoint
from savepoint import safetensors
from support import TempCopy, fixtures


def flip_byte(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x55]))


class DamagedCheckpoints(unittest.TestCase):
    def test_checksums_are_verified(self):
        self.assertTrue(savepoint.checksums_available())  # run.sh requires python3-xxhash

    def test_a_flipped_byte_fails_the_checksum_naming_file_and_key(self):
        with TempCopy(fixtures("Adam")) as root:
            before = os.path.join(root, "CKPT+before")
            path = os.path.join(before, "model.safetensors")
            flip_byte(path, os.path.getsize(path) - 1)
            c = savepoint.CheckpointDir(root).checkpoint("CKPT+before")
            with self.assertRaises(savepoint.CorruptCheckpointError) as caught:
                c.state_dict("model")
            self.assertEqual(caught.exception.key, "model")
            self.assertEqual(caught.exception.path, path)
            self.assertRegex(str(caught.exception), r"model\.safetensors' \(key 'model'\) fails its checksum")
            problems = c.verify()
            self.assertEqual([(p.key, p.file) for p in problems], [("model", path)])
            report = savepoint.CheckpointDir(root).verify()
            self.assertEqual(report["CKPT+after"], [])
            self.assertEqual(len(report["CKPT+before"]), 1)
            c.optimizer_state_dict("optimizer")  # the other keys still load

    def test_a_truncated_or_missing_file_is_named(self):
        with TempCopy(fixtures("Adam")) as root:
            before = os.path.join(root, "CKPT+before")
            with open(os.path.join(before, "optimizer.safetensors"), "r+b") as f:
                f.truncate(100)
            os.remove(os.path.join(before, "grads.safetensors"))
            c = savepoint.CheckpointDir(root).checkpoint("CKPT+before")
            with self.assertRaisesRegex(savepoint.CorruptCheckpointError, r"key 'optimizer'\) has 100 bytes"):
                c.optimizer_state_dict("optimizer")
            with self.assertRaisesRegex(savepoint.CorruptCheckpointError, r"missing file 'grads.safetensors' of key 'grads'"):
                c.state_dict("grads")
            # Retention never counts or deletes a checkpoint with missing files (as C++).
            self.assertNotIn("CKPT+before", [x.name for x in savepoint.CheckpointDir(root).plan_deletions(0)])

    def test_a_damaged_meta_json_leaves_the_checkpoint_out_and_reports_it(self):
        with TempCopy(fixtures("Adam")) as root:
            meta = os.path.join(root, "CKPT+before", "meta.json")
            with open(meta) as f:
                text = f.read()
            with open(meta, "w") as f:
                f.write(text.replace('"step": 3', '"step": 30'))
            run = savepoint.CheckpointDir(root)
            self.assertEqual([c.name for c in run.list_checkpoints()], ["CKPT+after"])
            [problem] = run.unreadable_checkpoints()
            self.assertEqual(problem.file, meta)
            self.assertIn("checksum mismatch", problem.reason)
            with self.assertRaises(KeyError):
                run.checkpoint("CKPT+before")

    def test_another_format_version_is_refused(self):
        doc = {"format": "savepoint", "format_version": 3, "checksum": "0" * 16}
        with self.assertRaises(savepoint.FormatVersionError):
            savepoint.parse_meta("/x/CKPT+y", json.dumps(doc).encode())


def file_bytes(header, data=b""):
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


class SafetensorsReader(unittest.TestCase):
    def refuses(self, data, pattern):
        with self.assertRaisesRegex(savepoint.CorruptCheckpointError, "tensor file 'f.st' is invalid: .*" + pattern):
            safetensors.parse(data, "f.st")

    def test_a_valid_file_parses(self):
        h = safetensors.parse(file_bytes({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                          "__metadata__": {"k": "v"}}, b"\0" * 8), "f.st")
        self.assertEqual([(t.name, t.dtype, t.shape, t.nbytes) for t in h.tensors], [("a", "F32", [2], 8)])
        self.assertEqual(h.metadata, {"k": "v"})

    def test_every_rule_is_enforced(self):
        f32 = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}
        self.refuses(b"\1\0\0", "only 3 bytes")
        self.refuses(struct.pack("<Q", 200_000_000) + b"{}", "exceeds the 100000000 byte cap")
        self.refuses(struct.pack("<Q", 50) + b"{}", "runs past the end")
        self.refuses(struct.pack("<Q", 2) + b"[]", "does not start with")
        self.refuses(struct.pack("<Q", 3) + b"{x}", "not valid JSON")
        twice = b'{"a":' + json.dumps(f32).encode() + b',"a":' + json.dumps(f32).encode() + b"}"
        self.refuses(struct.pack("<Q", len(twice)) + twice + b"\0" * 4, "appears twice")
        self.refuses(file_bytes({"a": dict(f32, dtype="F128")}, b"\0" * 4), "unknown dtype 'F128'")
        self.refuses(file_bytes({"a": dict(f32, shape=[-1])}, b"\0" * 4), "not a non-negative integer")
        self.refuses(file_bytes({"a": dict(f32, data_offsets=[4, 0])}, b"\0" * 4), "ends before it begins")
        self.refuses(file_bytes({"a": dict(f32, data_offsets=[0, 8])}, b"\0" * 4), "ends at byte 8")
        self.refuses(file_bytes({"a": dict(f32, shape=[2])}, b"\0" * 4), "need a different size")
        self.refuses(file_bytes({"a": f32, "b": f32}, b"\0" * 4), "overlaps")
        self.refuses(file_bytes({"a": dict(f32, data_offsets=[4, 8])}, b"\0" * 8), "hole in the data buffer")
        self.refuses(file_bytes({"a": f32}, b"\0" * 6), "2 bytes after the last tensor")
        self.refuses(file_bytes({"__metadata__": {"k": 1}}), "__metadata__ value 'k' is not a string")


if __name__ == "__main__":
    unittest.main()
