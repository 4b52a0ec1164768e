"""s3://bucket/prefix roots read as the same checkpoints as their directories.

Runs against the S3 server that scripts/with-s3-server.sh starts (AWS_ENDPOINT_URL and
SAVEPOINT_TEST_S3_BUCKET set), e.g.

    scripts/with-s3-server.sh moto --faults -- bash tests/python/run.sh s3 ...

Without those variables this module defines no tests: run.sh fails a run that skips any (a
skip there means a fixture went missing), and no server is the ordinary case.
The fixtures C++ wrote are uploaded object by object under a prefix of their own, beside a
save that never finished (objects without meta.json), which the reader must not see.
"""

import os
import shutil
import tempfile
import unittest
import uuid

import savepoint
from support import fixtures

ENDPOINT = os.environ.get("AWS_ENDPOINT_URL")
BUCKET = os.environ.get("SAVEPOINT_TEST_S3_BUCKET")
FAULT_PLAN = os.environ.get("SAVEPOINT_TEST_FAULT_PLAN")  # with-s3-server.sh --faults
FIXTURES = ("Adam", "selection", "incremental")


def s3_client():
    import boto3
    from botocore.config import Config
    return boto3.session.Session().client("s3", endpoint_url=ENDPOINT, region_name=os.environ.get("AWS_REGION"),
                                          config=Config(s3={"addressing_style": "path"}))


def upload(client, directory, prefix):
    """Every file under `directory` as an object under `prefix`/."""
    for parent, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(parent, name)
            key = prefix + "/" + os.path.relpath(path, directory).replace(os.sep, "/")
            with open(path, "rb") as f:
                client.put_object(Bucket=BUCKET, Key=key, Body=f.read())


def delete_prefix(client, prefix):
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/"):
        for obj in page.get("Contents", []):
            client.delete_object(Bucket=BUCKET, Key=obj["Key"])


class S3Root(unittest.TestCase):
    """A prefix of the bucket holding copies of fixture directories, removed afterwards."""

    @classmethod
    def setUpClass(cls):
        cls.client = s3_client()
        cls.prefix = "savepoint-py-%s" % uuid.uuid4().hex[:12]
        cls.addClassCleanup(delete_prefix, cls.client, cls.prefix)

    def put(self, name, fixture):
        """s3:// URL of a copy of fixture directory `fixture`, under the name `name`."""
        upload(self.client, fixtures(fixture), self.prefix + "/" + name)
        return "s3://%s/%s/%s" % (BUCKET, self.prefix, name)

    def key(self, url):
        return url[len("s3://%s/" % BUCKET):]

    def get(self, url):
        return self.client.get_object(Bucket=BUCKET, Key=self.key(url))["Body"].read()

    def put_bytes(self, url, data):
        self.client.put_object(Bucket=BUCKET, Key=self.key(url), Body=data)


class SameAsTheDirectory(S3Root):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.roots = {}
        for fixture in FIXTURES:
            upload(cls.client, fixtures(fixture), cls.prefix + "/" + fixture)
            cls.roots[fixture] = "s3://%s/%s/%s" % (BUCKET, cls.prefix, fixture)
        # A save that never finished: its files, no meta.json.
        unfinished = cls.prefix + "/Adam/CKPT+unfinished/"
        with open(os.path.join(fixtures("Adam"), "CKPT+before", "model.safetensors"), "rb") as f:
            cls.client.put_object(Bucket=BUCKET, Key=unfinished + "model.safetensors", Body=f.read())
        cls.client.put_object(Bucket=BUCKET, Key=unfinished + "PINNED", Body=b"")

    def both(self, fixture):
        return savepoint.CheckpointDir(fixtures(fixture)), savepoint.CheckpointDir(self.roots[fixture])

    def test_only_committed_checkpoints_are_listed_as_from_the_directory(self):
        for fixture in FIXTURES:
            local, remote = self.both(fixture)
            want = [(c.name, c.sequence, c.meta, c.pinned, c.world_size) for c in local.list_checkpoints()]
            got = [(c.name, c.sequence, c.meta, c.pinned, c.world_size) for c in remote.list_checkpoints()]
            self.assertEqual(got, want, fixture)
            self.assertEqual(remote.unreadable_checkpoints(), [], fixture)
            self.assertTrue(all(c.path == self.roots[fixture] + "/" + c.name for c in remote.list_checkpoints()))
        self.assertIn(True, [c.pinned for c in self.both("selection")[1].list_checkpoints()])  # PINNED objects
        with self.assertRaises(KeyError):
            self.both("Adam")[1].checkpoint("CKPT+unfinished")

    def test_a_trailing_slash_or_a_missing_bucket(self):
        root = savepoint.CheckpointDir(self.roots["Adam"] + "/")
        self.assertEqual([c.name for c in root.list_checkpoints()], ["CKPT+before", "CKPT+after"])
        empty = savepoint.CheckpointDir("s3://%s/%s/nothing-here" % (BUCKET, self.prefix))
        self.assertEqual(empty.list_checkpoints(), [])
        with self.assertRaises(FileNotFoundError):
            savepoint.CheckpointDir("s3://savepoint-no-such-bucket-%s/x" % uuid.uuid4().hex[:8])

    def test_selection_and_retention_plans_agree(self):
        local, remote = self.both("selection")
        names = lambda cs: [c.name for c in cs]
        for selector in ({}, {"min_key": "loss"}, {"max_key": "acc"}):
            self.assertEqual(names(remote.find_checkpoints(**selector)), names(local.find_checkpoints(**selector)))
        for keep in (0, 1, 3):
            self.assertEqual(names(remote.plan_deletions(keep, min_keys=("loss",))),
                             names(local.plan_deletions(keep, min_keys=("loss",))))

    def test_every_key_reads_and_loads_the_same_values(self):
        import torch
        for fixture in FIXTURES:
            local, remote = self.both(fixture)
            for lc, rc in zip(local.list_checkpoints(), remote.list_checkpoints()):
                self.assertEqual(rc.verify(), [], rc.path)
                for rec in lc.files:
                    if rec.part:
                        continue
                    self.assertEqual(rc.read_verified(rec.key, rec.rank), lc.read_verified(rec.key, rec.rank))
                    if rec.hook == "torch.nn.Module":
                        want, got = lc.state_dict(rec.key), rc.state_dict(rec.key)
                        self.assertEqual(list(got), list(want))
                        self.assertTrue(all(torch.equal(got[n], want[n]) for n in want), (rc.path, rec.key))
                    elif rec.hook == "torch.optim.Optimizer":
                        want, got = lc.optimizer_state_dict(rec.key), rc.optimizer_state_dict(rec.key)
                        self.assertEqual(got["param_groups"], want["param_groups"])
                        self.assertEqual(sorted(got["state"]), sorted(want["state"]))
                        for i, fields in want["state"].items():
                            self.assertEqual(sorted(got["state"][i]), sorted(fields))
                            self.assertTrue(all(torch.equal(torch.as_tensor(got["state"][i][n]), torch.as_tensor(v))
                                                for n, v in fields.items()), (rc.path, rec.key, i))
        self.assertEqual(self.both("Adam")[1].verify(), {"CKPT+before": [], "CKPT+after": []})

    def test_ranged_and_capped_reads(self):
        from savepoint import storage
        local = os.path.join(fixtures("Adam"), "CKPT+before", "model.safetensors")
        url = self.roots["Adam"] + "/CKPT+before/model.safetensors"
        with open(local, "rb") as f:
            data = f.read()
        self.assertEqual(storage.lstat(url), (len(data), True))
        self.assertIsNone(storage.lstat(url + ".nothing"))
        for offset, size, limit in ((0, None, None), (8, 16, None), (0, 8, None), (len(data) - 3, 10, None),
                                    (len(data) + 5, 4, None), (0, None, 100), (0, None, 1 << 30)):
            want = storage.read(local, offset, size, limit)
            self.assertEqual(storage.read(url, offset, size, limit), want, (offset, size, limit))
        with self.assertRaises(FileNotFoundError):
            storage.read(url + ".nothing")

    def test_safetensors_headers_read_by_ranges(self):
        from savepoint import safetensors
        local = os.path.join(fixtures("Adam"), "CKPT+before", "model.safetensors")
        url = self.roots["Adam"] + "/CKPT+before/model.safetensors"
        want, got = safetensors.read_header(local), safetensors.read_header(url)
        self.assertEqual([(t.name, t.dtype, t.shape, t.begin, t.end) for t in got.tensors],
                         [(t.name, t.dtype, t.shape, t.begin, t.end) for t in want.tensors])
        self.assertEqual((got.metadata, got.data_start), (want.metadata, want.data_start))
        with self.assertRaises(FileNotFoundError):
            safetensors.read_header(url + ".nothing")


class DamageIsDetected(S3Root):
    def test_a_flipped_byte_fails_the_checksum_naming_object_and_key(self):
        root = self.put("flipped", "Adam")
        url = root + "/CKPT+before/model.safetensors"
        data = bytearray(self.get(url))
        data[-1] ^= 0x55
        self.put_bytes(url, bytes(data))
        c = savepoint.CheckpointDir(root).checkpoint("CKPT+before")
        with self.assertRaises(savepoint.CorruptCheckpointError) as caught:
            c.state_dict("model")
        self.assertEqual((caught.exception.key, caught.exception.path), ("model", url))
        self.assertRegex(str(caught.exception), r"model\.safetensors' \(key 'model'\) fails its checksum")
        self.assertEqual([(p.key, p.file) for p in c.verify()], [("model", url)])
        report = savepoint.CheckpointDir(root).verify()
        self.assertEqual((report["CKPT+after"], len(report["CKPT+before"])), ([], 1))
        c.optimizer_state_dict("optimizer")  # the other keys still load

    def test_a_truncated_or_missing_object_is_named(self):
        root = self.put("truncated", "Adam")
        before = root + "/CKPT+before"
        self.put_bytes(before + "/optimizer.safetensors", self.get(before + "/optimizer.safetensors")[:100])
        self.client.delete_object(Bucket=BUCKET, Key=self.key(before + "/grads.safetensors"))
        c = savepoint.CheckpointDir(root).checkpoint("CKPT+before")
        with self.assertRaisesRegex(savepoint.CorruptCheckpointError, r"key 'optimizer'\) has 100 bytes"):
            c.optimizer_state_dict("optimizer")
        with self.assertRaisesRegex(savepoint.CorruptCheckpointError, r"missing file 'grads.safetensors' of key 'grads'"):
            c.state_dict("grads")
        self.assertNotIn("CKPT+before", [x.name for x in savepoint.CheckpointDir(root).plan_deletions(0)])

    def test_a_damaged_or_empty_meta_json_is_reported_not_listed(self):
        root = self.put("meta", "Adam")
        meta = root + "/CKPT+before/meta.json"
        self.put_bytes(meta, self.get(meta).replace(b'"step": 3', b'"step": 30'))
        self.put_bytes(root + "/CKPT+after/meta.json", b"")
        run = savepoint.CheckpointDir(root)
        self.assertEqual(run.list_checkpoints(), [])
        problems = {p.file: p.reason for p in run.unreadable_checkpoints()}
        self.assertIn("checksum mismatch", problems[meta])
        self.assertIn("not valid JSON", problems[root + "/CKPT+after/meta.json"])

    def test_the_same_damage_reads_the_same_as_in_a_directory(self):
        # One damaged copy, both ways: the messages differ only by the path.
        root = self.put("same", "Adam")
        tmp = tempfile.mkdtemp(prefix="savepoint-py-")
        self.addCleanup(shutil.rmtree, tmp)
        local = os.path.join(tmp, "same")
        shutil.copytree(fixtures("Adam"), local)
        with open(os.path.join(local, "CKPT+after", "model.safetensors"), "r+b") as f:
            f.seek(20)
            b = f.read(1)
            f.seek(20)
            f.write(bytes([b[0] ^ 1]))
        with open(os.path.join(local, "CKPT+after", "model.safetensors"), "rb") as f:
            self.put_bytes(root + "/CKPT+after/model.safetensors", f.read())
        want = savepoint.CheckpointDir(local).verify()
        got = savepoint.CheckpointDir(root).verify()
        self.assertEqual({n: [(p.key, p.reason.replace(root, local)) for p in ps] for n, ps in got.items()},
                         {n: [(p.key, p.reason) for p in ps] for n, ps in want.items()})


class ObjectStorageFaults(S3Root):
    """Through the fault proxy: transient errors are retried, a cut body is read again."""

    def plan(self, rules):
        import json
        with open(FAULT_PLAN, "w") as f:
            json.dump(rules, f)
        self.addCleanup(self.clear_plan)

    def clear_plan(self):
        with open(FAULT_PLAN, "w") as f:
            f.write("[]")

    def test_503s_a_reset_and_a_cut_body_are_survived(self):
        root = self.put("faults", "Adam")
        want = savepoint.CheckpointDir(fixtures("Adam")).checkpoint("CKPT+before").read_verified("model")
        self.plan([{"method": "GET", "key_contains": "faults/CKPT+before/model", "action": "503", "times": 1},
                   {"method": "GET", "key_contains": "faults/CKPT+before/model", "action": "slowdown", "times": 1},
                   {"method": "HEAD", "key_contains": "faults/CKPT+before/model", "action": "reset", "times": 1},
                   {"method": "GET", "key_contains": "faults/CKPT+before/model", "action": "cut_body", "times": 1}])
        c = savepoint.CheckpointDir(root).checkpoint("CKPT+before")
        self.assertEqual(c.read_verified("model"), want)
        with open(os.environ["SAVEPOINT_TEST_FAULT_LOG"]) as f:
            fired = [line.split()[-1] for line in f if "faults/CKPT+before/model" in line and "fault=" in line]
        self.assertEqual(sorted(fired), ["fault=503", "fault=cut_body", "fault=reset", "fault=slowdown"])

    def test_errors_that_last_are_errors_not_missing_checkpoints(self):
        root = self.put("lasting", "Adam")
        os.environ["AWS_MAX_ATTEMPTS"] = "2"  # not 5 attempts, seconds apart
        self.addCleanup(os.environ.pop, "AWS_MAX_ATTEMPTS")
        self.plan([{"method": "*", "key_contains": "lasting/CKPT+before/model", "action": "500"}])
        c = savepoint.CheckpointDir(root).checkpoint("CKPT+before")
        with self.assertRaises(OSError) as caught:
            c.read_verified("model")
        self.assertNotIsInstance(caught.exception, FileNotFoundError)
        self.assertEqual(caught.exception.filename, root + "/CKPT+before/model.safetensors")


# Defined only where a server is (see the docstring).
if not (ENDPOINT and BUCKET):
    del SameAsTheDirectory, DamageIsDetected
if not (ENDPOINT and BUCKET and FAULT_PLAN):
    del ObjectStorageFaults

if __name__ == "__main__":
    unittest.main()
