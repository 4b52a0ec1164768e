"""Where the checkpoints written by C++ in this test run are (tests/python/run.sh sets these)."""

import os
import shutil
import tempfile
import unittest

FIXTURES = os.environ.get("SAVEPOINT_FIXTURES")
TRAIN_RESUME = os.environ.get("SAVEPOINT_TRAIN_RESUME_DIR")


def fixtures(*parts):
    if not FIXTURES:
        raise unittest.SkipTest("SAVEPOINT_FIXTURES is not set (run through ctest: tests/python/run.sh)")
    return os.path.join(FIXTURES, *parts)


class TempCopy:
    """A copy of a fixture directory to damage."""

    def __init__(self, source):
        self.source = source

    def __enter__(self):
        self.tmp = tempfile.mkdtemp(prefix="savepoint-py-")
        self.path = os.path.join(self.tmp, os.path.basename(self.source))
        shutil.copytree(self.source, self.path)
        return self.path

    def __exit__(self, *exc):
        shutil.rmtree(self.tmp)
