"""Listing, selection and retention plans agree with C++ (expected.json was written by C++
from the same checkpoints)."""

import json
import math
import os
import unittest

import savepoint
from support import fixtures


def minus_epoch(c):
    return -float(c.meta["epoch"]) if "epoch" in c.meta else math.nan


def even(c):
    return c.meta.get("epoch", 1) % 2 == 0


class SelectionAgreesWithCpp(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.root = fixtures("selection")
        with open(os.path.join(cls.root, "expected.json")) as f:
            cls.expected = json.load(f)
        cls.checkpoints = savepoint.CheckpointDir(cls.root)

    def names(self, checkpoints):
        return [c.name for c in checkpoints]

    def test_list_is_oldest_first_by_sequence(self):
        listed = self.checkpoints.list_checkpoints()
        self.assertEqual(self.names(listed), self.expected["list"])
        self.assertEqual([c.sequence for c in listed], sorted(c.sequence for c in listed))
        self.assertEqual(self.checkpoints.unreadable_checkpoints(), [])

    def test_meta_holds_user_meta_and_the_reserved_keys(self):
        listed = self.checkpoints.list_checkpoints()
        self.assertIsNone(listed[3].meta["loss"])  # NaN is stored as null
        self.assertEqual([c.end_of_epoch for c in listed].count(False), 1)
        self.assertTrue(all(isinstance(c.unixtime, float) for c in listed))
        self.assertEqual([c.name for c in listed if c.pinned], [listed[8].name])
        self.assertIn("CKPT+best", self.names(listed))

    def test_meta_checksum_is_recomputed_for_every_kind_of_value(self):
        # Listed (not unreadable) means meta.json's checksum matched nlohmann's dump.
        c = self.checkpoints.list_checkpoints()[-1]
        self.assertEqual(c.meta["note"], 'h\u00e9llo "q" \\ \x01\t \U0001F600 /')
        self.assertEqual(c.meta["u64"], 18446744073709551615)
        self.assertEqual((c.meta["fifteen"], c.meta["big"], c.meta["tiny"]), (1e15, 1e17, 1e-7))
        self.assertEqual(c.meta["nested"], {"a": {}, "b": [1, 2.5, None, False]})

    def test_selectors_rank_as_cpp(self):
        rank = self.expected["rank"]
        self.assertEqual(self.names(self.checkpoints.find_checkpoints()), rank["most_recent"])
        self.assertEqual(self.names(self.checkpoints.find_checkpoints(min_key="loss")), rank["min_loss"])
        self.assertEqual(self.names(self.checkpoints.find_checkpoints(max_key="acc")), rank["max_acc"])
        self.assertEqual(self.names(self.checkpoints.find_checkpoints(min_key="loss", where=lambda c: c.end_of_epoch)),
                         rank["min_loss_end_of_epoch"])
        self.assertEqual(self.names(self.checkpoints.find_checkpoints(importance_key=minus_epoch)),
                         rank["importance_minus_epoch"])
        self.assertEqual(self.names(self.checkpoints.find_checkpoints(where=even)), rank["where_even_epoch"])
        self.assertEqual(self.checkpoints.find_checkpoint(min_key="loss").name, rank["min_loss"][0])
        self.assertIsNone(self.checkpoints.find_checkpoint(min_key="no such key"))

    def test_retention_plans_delete_what_cpp_deletes(self):
        plans = self.expected["delete"]
        plan = self.checkpoints.plan_deletions
        self.assertEqual(self.names(plan(1, min_keys=["loss"])), plans["keep1_min_loss"])
        self.assertEqual(self.names(plan(2, max_keys=["acc"], keep_recent=False)), plans["keep2_max_acc_no_recent"])
        self.assertEqual(self.names(plan(0)), plans["keep0"])
        self.assertEqual(self.names(plan(1, predicate=even)), plans["keep1_even_may_go"])
        self.assertEqual(self.names(plan(1, importance_keys=[minus_epoch], keep_recent=False)), plans["keep1_importance"])
        self.assertEqual(self.names(plan(1, importance_keys=[minus_epoch], keep_recent=False, keep_newest=False)),
                         plans["keep1_importance_release_newest"])
        self.assertNotEqual(plans["keep1_importance"], plans["keep1_importance_release_newest"])
        self.assertEqual(self.names(plan(2, min_keys=["loss"], max_keys=["acc"])), plans["keep2_min_loss_max_acc"])

    def test_conflicting_selectors_are_a_usage_error(self):
        with self.assertRaises(savepoint.UsageError):
            self.checkpoints.find_checkpoints(min_key="loss", max_key="acc")
        with self.assertRaises(savepoint.UsageError):
            self.checkpoints.plan_deletions(-1)

    def test_a_missing_directory_is_an_error_not_an_empty_list(self):
        with self.assertRaises(FileNotFoundError):
            savepoint.CheckpointDir(os.path.join(self.root, "no", "such", "dir"))


if __name__ == "__main__":
    unittest.main()
