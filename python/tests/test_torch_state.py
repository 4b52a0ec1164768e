"""Module and optimizer state written by C++ load into torch, and training continues in Python
exactly as it did in C++: for Adam, AdamW, SGD, Adagrad and RMSprop, each with two param
groups and non-default options, Python takes step 4 from the converted state with the
gradient C++ used, and ends where C++ ended (CKPT+after)."""

import json
import os
import unittest

import torch
from torch import nn

import savepoint
from support import fixtures

OPTIMIZERS = ["Adam", "AdamW", "SGD", "Adagrad", "RMSprop"]


class Net(nn.Module):
    """The fixtures program's Net: fc1 = Linear(4, 8), bn = BatchNorm1d(8), fc2 = Linear(8, 2)."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.bn = nn.BatchNorm1d(8)
        self.fc2 = nn.Linear(8, 2)

    def groups(self):
        return [{"params": [self.fc1.weight, self.fc1.bias, self.bn.weight, self.bn.bias]},
                {"params": [self.fc2.weight, self.fc2.bias]}]


def flat(t):
    return t.detach().to(torch.float64).reshape(-1).tolist()


class ModuleState(unittest.TestCase):
    def test_module_values_equal_what_cpp_held(self):
        for kind in OPTIMIZERS:
            with self.subTest(kind):
                root = fixtures(kind)
                with open(os.path.join(root, "expected.json")) as f:
                    expected = json.load(f)
                state = savepoint.CheckpointDir(root).checkpoint("CKPT+before").state_dict("model")
                self.assertEqual(sorted(state), sorted(expected["model"]))
                for name, values in expected["model"].items():
                    self.assertEqual(flat(state[name]), values, name)  # bit for bit
                self.assertEqual(state["bn.num_batches_tracked"].dtype, torch.int64)
                net = Net()
                net.load_state_dict(state)  # strict: every name and shape matches
                self.assertTrue(torch.equal(net.fc1.weight, state["fc1.weight"]))

    def test_a_non_module_key_is_refused(self):
        before = savepoint.CheckpointDir(fixtures("Adam")).checkpoint("CKPT+before")
        with self.assertRaisesRegex(savepoint.UsageError, "optimizer.*torch.optim.Optimizer"):
            before.state_dict("optimizer")
        with self.assertRaises(savepoint.MissingKeyError):
            before.state_dict("nokey")


class OptimizerState(unittest.TestCase):
    def check_one_more_step(self, kind):
        run = savepoint.CheckpointDir(fixtures(kind))
        before, after = run.checkpoint("CKPT+before"), run.checkpoint("CKPT+after")
        net = Net()
        net.load_state_dict(before.state_dict("model"))
        optimizer = getattr(torch.optim, kind)(net.groups(), lr=0.123)
        converted = before.optimizer_state_dict("optimizer")
        optimizer.load_state_dict(converted)

        # The options C++ used, group by group (lr 0.123 above is replaced by the checkpoint's).
        meta = json.loads(savepoint.safetensors.read_header(
            os.path.join(before.path, "optimizer.safetensors")).metadata["savepoint"])
        for group, saved in zip(optimizer.param_groups, meta["param_groups"]):
            for name, value in saved["options"].items():
                self.assertEqual(group[name], tuple(value) if isinstance(value, list) else value, name)
        self.assertEqual(len(optimizer.state), len(converted["state"]))

        # Step 4 with C++'s gradient.
        grads = before.state_dict("grads")
        for name, p in net.named_parameters():
            p.grad = grads[name].clone()
        optimizer.step()

        want = after.state_dict("model")
        for name, p in net.named_parameters():
            torch.testing.assert_close(p.detach(), want[name], rtol=1e-5, atol=1e-6, msg=lambda m: "%s: %s" % (name, m))
        # And the optimizer state after the step equals C++'s after the step.
        stepped = optimizer.state_dict()["state"]
        want_state = after.optimizer_state_dict("optimizer")["state"]
        self.assertEqual(sorted(stepped), sorted(want_state))
        for i, fields in want_state.items():
            self.assertEqual(sorted(k for k, v in stepped[i].items() if v is not None), sorted(fields), i)
            for field, value in fields.items():
                if field == "step":
                    self.assertEqual(float(stepped[i][field]), float(value))
                else:
                    torch.testing.assert_close(stepped[i][field], value, rtol=1e-5, atol=1e-6)

    def test_adam(self):
        self.check_one_more_step("Adam")

    def test_adamw(self):
        self.check_one_more_step("AdamW")

    def test_sgd(self):
        self.check_one_more_step("SGD")

    def test_adagrad(self):
        self.check_one_more_step("Adagrad")

    def test_rmsprop(self):
        self.check_one_more_step("RMSprop")

    def test_step_and_groups_have_torch_optim_layout(self):
        sd = savepoint.CheckpointDir(fixtures("Adam")).checkpoint("CKPT+before").optimizer_state_dict()
        self.assertEqual([g["params"] for g in sd["param_groups"]], [[0, 1, 2, 3], [4, 5]])
        self.assertEqual(sd["param_groups"][0]["betas"], (0.8, 0.95))
        self.assertTrue(sd["param_groups"][1]["amsgrad"])
        self.assertIn("maximize", sd["param_groups"][0])  # torch.optim's own defaults filled in
        self.assertTrue(torch.is_tensor(sd["state"][0]["step"]))
        self.assertEqual(float(sd["state"][0]["step"]), 3.0)
        self.assertIn("max_exp_avg_sq", sd["state"][4])
        self.assertNotIn("max_exp_avg_sq", sd["state"][0])


class TrainResumeExample(unittest.TestCase):
    """examples/train_resume's run directory, as a user would open it."""

    def setUp(self):
        from support import TRAIN_RESUME
        if not TRAIN_RESUME:
            self.skipTest("SAVEPOINT_TRAIN_RESUME_DIR is not set")
        self.checkpoints = savepoint.CheckpointDir(TRAIN_RESUME)

    def test_best_checkpoint_loads_into_the_same_model_and_trains_on(self):
        listed = self.checkpoints.list_checkpoints()
        self.assertGreaterEqual(len(listed), 2)
        ends = [c for c in listed if "val_loss" in c.meta]
        best = self.checkpoints.find_checkpoint(min_key="val_loss")
        self.assertEqual(best.meta["val_loss"], min(c.meta["val_loss"] for c in ends))
        self.assertEqual(self.checkpoints.find_checkpoint(), max(listed, key=lambda c: c.sequence))
        net = nn.Sequential()
        net.add_module("fc1", nn.Linear(8, 32))
        net.add_module("drop", nn.Dropout(0.2))
        net.add_module("fc2", nn.Linear(32, 1))
        net.load_state_dict(best.state_dict("model"))
        opt = torch.optim.Adam(net.parameters())
        opt.load_state_dict(best.optimizer_state_dict("optimizer"))
        self.assertEqual(opt.param_groups[0]["lr"], best.optimizer_state_dict()["param_groups"][0]["lr"])
        loss = net(torch.randn(4, 8)).pow(2).mean()
        loss.backward()
        opt.step()
        self.assertEqual(best.load_json("epochs")["current"], best.meta["epoch"])
        self.assertEqual(self.checkpoints.verify(), {c.name: [] for c in listed})


if __name__ == "__main__":
    unittest.main()
