"""savepoint: read checkpoints written by the savepoint C++ library.

    import savepoint
    run = savepoint.CheckpointDir("runs/exp1/save")
    for c in run.list_checkpoints():                    # oldest first, as in C++
        print(c.name, c.sequence, c.meta)
    best = run.find_checkpoint(min_key="val_loss")      # C++'s selection rules
    model.load_state_dict(best.state_dict("model"))
    optimizer.load_state_dict(best.optimizer_state_dict("optimizer"))

Listing, selecting and verifying need only the standard library (and the xxhash module, when
installed, for the XXH3 checksums); loading tensors needs numpy and torch. See docs/python.md.
"""

from .checkpoints import (Checkpoint, CheckpointDir, FileRecord, Problem, checksums_available, deletion_set,
                          finite_metric, parse_meta, rank, read_checkpoint)
from . import safetensors  # the strict safetensors reader: read_header, parse
from .errors import (CheckpointError, CorruptCheckpointError, Error, FormatVersionError, MismatchError,
                     MissingKeyError, UsageError)

__version__ = "0.1.0"

__all__ = ["safetensors", "Checkpoint", "CheckpointDir", "FileRecord", "Problem", "checksums_available", "deletion_set",
           "finite_metric", "parse_meta", "rank", "read_checkpoint", "CheckpointError", "CorruptCheckpointError",
           "Error", "FormatVersionError", "MismatchError", "MissingKeyError", "UsageError"]
