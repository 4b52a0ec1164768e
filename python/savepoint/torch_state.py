"""Tensors, module state and optimizer state for torch, from a checkpoint's files.

The optimizer file (hook "torch.optim.Optimizer") holds tensors state.<i>.<field>, <i> the
parameter's position counted over all param groups in order, and the metadata key
"savepoint": {"optimizer": "Adam", "param_groups": [{"num_params": n, "options": {...}}],
"state": {"<i>": {"type": "Adam", "fields": {"step": 3}}}} (docs/format.md). LibTorch and
torch.optim name options and state fields alike; what differs is converted here: `step` is a
tensor in torch.optim's Adam, AdamW and Adagrad (an int in RMSprop before torch 2), `betas` a
tuple, and each group carries every option of the Python optimizer (its defaults filled in).
"""

import collections
import inspect
import json

from . import safetensors
from .errors import CorruptCheckpointError, MismatchError, UsageError

MODULE_HOOK = "torch.nn.Module"
OPTIMIZER_HOOK = "torch.optim.Optimizer"

# Per optimizer: the state fields that are tensors, and whether "step" is stored as a tensor.
_OPTIMIZERS = {
    "Adam": ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
    "AdamW": ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
    "SGD": ("momentum_buffer",),
    "Adagrad": ("sum",),
    "RMSprop": ("square_avg", "momentum_buffer", "grad_avg"),
}


def _tensor_file(checkpoint, key):
    rec = checkpoint.record(key)
    if not rec.file.endswith(".safetensors"):
        raise UsageError("savepoint: key '%s' of '%s' is stored as '%s' (hook %s), not as tensors"
                         % (key, checkpoint.path, rec.file, rec.hook))
    data = checkpoint.read_verified(key)
    header = safetensors.parse(data, "%s/%s" % (checkpoint.path, rec.file))
    return rec, data, header


def load_tensors(checkpoint, key):
    """{name: torch.Tensor} of a safetensors key, in file order (verified first)."""
    _, data, header = _tensor_file(checkpoint, key)
    return collections.OrderedDict((t.name, safetensors.to_torch(data, header, t)) for t in header.tensors)


def module_state_dict(checkpoint, key="model"):
    """A module key (hook torch.nn.Module) as an OrderedDict that nn.Module.load_state_dict
    accepts: every parameter and buffer under its named_parameters()/named_buffers() name."""
    rec = checkpoint.record(key)
    if rec.hook != MODULE_HOOK:
        raise UsageError("savepoint: key '%s' of '%s' was written by hook %s, not %s"
                         % (key, checkpoint.path, rec.hook, MODULE_HOOK))
    tensors = load_tensors(checkpoint, key)
    return collections.OrderedDict(sorted(tensors.items()))


def _number(v):
    # Non-finite doubles are stored as strings.
    if isinstance(v, str) and v in ("inf", "-inf", "nan"):
        return float(v)
    return v


def _python_defaults(cls):
    params = inspect.signature(cls.__init__).parameters
    return {name: p.default for name, p in params.items()
            if name not in ("self", "params") and p.default is not inspect.Parameter.empty
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _step_as_tensor(optimizer):
    import torch
    if optimizer == "RMSprop":
        return int(torch.__version__.split(".")[0]) >= 2
    return optimizer in ("Adam", "AdamW", "Adagrad")


def optimizer_state_dict(checkpoint, key="optimizer"):
    """An optimizer key as the state_dict of the matching torch.optim optimizer (Adam, AdamW,
    SGD, Adagrad, RMSprop), param groups and options included:

        opt = torch.optim.Adam(model.parameters())
        opt.load_state_dict(ckpt.optimizer_state_dict("optimizer"))

    The optimizer must be built over the same parameters in the same order (and groups) as
    the C++ one; torch's load_state_dict checks the group sizes."""
    import torch

    rec = checkpoint.record(key)
    if rec.hook != OPTIMIZER_HOOK:
        raise UsageError("savepoint: key '%s' of '%s' was written by hook %s, not %s"
                         % (key, checkpoint.path, rec.hook, OPTIMIZER_HOOK))
    _, data, header = _tensor_file(checkpoint, key)
    where = "%s/%s" % (checkpoint.path, rec.file)

    def bad(why):
        raise CorruptCheckpointError("'%s' (key '%s') has malformed optimizer state: %s" % (where, key, why), where, key)

    try:
        doc = json.loads(header.metadata["savepoint"])
    except KeyError:
        bad("no \"savepoint\" metadata")
    except ValueError as e:
        bad("the \"savepoint\" metadata is not JSON (%s)" % e)
    if not isinstance(doc, dict) or not isinstance(doc.get("param_groups"), list) or not isinstance(doc.get("state"), dict):
        bad("no param_groups or state")
    kind = doc.get("optimizer")
    if kind not in _OPTIMIZERS:
        raise UsageError("savepoint: '%s' (key '%s') holds %s state; the Python reader converts %s"
                         % (where, key, kind, ", ".join(_OPTIMIZERS)))
    defaults = _python_defaults(getattr(torch.optim, kind))

    groups, first = [], 0
    for g, group in enumerate(doc["param_groups"]):
        if not isinstance(group, dict) or not isinstance(group.get("options"), dict) or \
                not isinstance(group.get("num_params"), int):
            bad("param group %d is malformed" % g)
        options = dict(defaults)
        for name, value in group["options"].items():
            value = _number(value)
            options[name] = tuple(_number(v) for v in value) if isinstance(value, list) else value
        n = group["num_params"]
        options["params"] = list(range(first, first + n))
        first += n
        groups.append(options)

    step_tensor = _step_as_tensor(kind)
    state = {}
    for index, entry in doc["state"].items():
        try:
            i = int(index)
        except ValueError:
            bad("state key '%s' is not a parameter index" % index)
        if not 0 <= i < first:
            bad("state for parameter %d but the groups hold %d parameters" % (i, first))
        if not isinstance(entry, dict) or entry.get("type") != kind:
            raise MismatchError("'%s' (key '%s'): parameter %d has %s state in a %s optimizer"
                                % (where, key, i, entry.get("type") if isinstance(entry, dict) else entry, kind), where, key)
        fields = entry.get("fields", {})
        s = {}
        if "step" in fields:
            step = _number(fields["step"])
            s["step"] = torch.tensor(float(step)) if step_tensor else int(step)
        for field in _OPTIMIZERS[kind]:
            info = header.find("state.%d.%s" % (i, field))
            if info is not None:
                s[field] = safetensors.to_torch(data, header, info)
        state[i] = s
    return {"state": state, "param_groups": groups}
