"""Checkpoints saved by several ranks (docs/distributed.md): meta.json's "world_size" and the
per-rank records ("rank" on each of a key's files) are read as the C++ parser reads them."""

import os
import shutil
import unittest

import savepoint
from savepoint import _canonical
from savepoint.checkpoints import xxh3_hex
from support import TempCopy, fixtures


def number(n):
    return _canonical.parse_keeping_numbers(str(n))  # the canonical dump keeps numbers' text


def make_per_rank(checkpoint_dir, key, world_size, rank_of_copy=1, bad_rank=None):
    """Turns `key` of a C++-written checkpoint into a per-rank key of a `world_size`-rank
    checkpoint: rank 0 keeps the file, rank `rank_of_copy` gets a copy; meta.json re-signed."""
    meta_path = os.path.join(checkpoint_dir, "meta.json")
    with open(meta_path, "rb") as f:
        doc = _canonical.parse_keeping_numbers(f.read().decode("utf-8"))
    doc["world_size"] = number(world_size)
    records = doc["files"]
    rec = next(r for r in records if r["key"] == key)
    copy = dict(rec)
    base, ext = os.path.splitext(rec["file"])
    copy["file"] = "%s.rank%d%s" % (base, rank_of_copy, ext)
    shutil.copyfile(os.path.join(checkpoint_dir, rec["file"]), os.path.join(checkpoint_dir, copy["file"]))
    rec["rank"] = number(0)
    copy["rank"] = number(rank_of_copy if bad_rank is None else bad_rank)
    records.append(copy)
    body = {k: v for k, v in doc.items() if k != "checksum"}
    doc["checksum"] = xxh3_hex(_canonical.dump(body))
    with open(meta_path, "wb") as f:
        f.write(_canonical.dump(doc))
    return os.path.join(checkpoint_dir, copy["file"])


class PerRankCheckpoints(unittest.TestCase):
    def test_per_rank_records_are_read_verified_and_loaded_by_rank(self):
        with TempCopy(fixtures("Adam")) as root:
            before = os.path.join(root, "CKPT+before")
            rank1_file = make_per_rank(before, "model", world_size=2)
            c = savepoint.CheckpointDir(root).checkpoint("CKPT+before")
            self.assertEqual(c.world_size, 2)
            self.assertEqual(c.keys.count("model"), 1)
            self.assertEqual(c.file("model").rank, 0)
            self.assertEqual(c.file("model", 1).file, os.path.basename(rank1_file))
            self.assertEqual(c.verify(), [])
            rank0 = c.state_dict("model")
            # Damage only rank 1's file: verify names it; rank 0's key still loads.
            with open(rank1_file, "r+b") as f:
                f.seek(-1, os.SEEK_END)
                last = f.read(1)
                f.seek(-1, os.SEEK_END)
                f.write(bytes([last[0] ^ 0x55]))
            problems = c.verify()
            self.assertEqual([(p.key, p.file) for p in problems], [("model", rank1_file)])
            with self.assertRaises(savepoint.CorruptCheckpointError):
                c.read_verified("model", 1)
            self.assertEqual(sorted(c.state_dict("model")), sorted(rank0))
            with self.assertRaises(savepoint.MissingKeyError):
                c.record("model", 5)

    def test_a_rank_outside_world_size_is_refused(self):
        with TempCopy(fixtures("Adam")) as root:
            before = os.path.join(root, "CKPT+before")
            make_per_rank(before, "model", world_size=2, bad_rank=2)
            with self.assertRaisesRegex(savepoint.CorruptCheckpointError, r'"rank" of key \'model\''):
                savepoint.checkpoints.read_checkpoint(before)

    def test_two_records_of_one_rank_are_a_duplicate_key(self):
        with TempCopy(fixtures("Adam")) as root:
            before = os.path.join(root, "CKPT+before")
            make_per_rank(before, "model", world_size=2, bad_rank=0)
            with self.assertRaisesRegex(savepoint.CorruptCheckpointError, r"duplicate key 'model'"):
                savepoint.checkpoints.read_checkpoint(before)


if __name__ == "__main__":
    unittest.main()
