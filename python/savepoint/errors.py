"""The exception hierarchy, mirroring the C++ one (savepoint/errors.hpp).

Every message names the file and, where there is one, the key.
"""


class Error(Exception):
    """Base of every error savepoint raises."""


class UsageError(Error, ValueError):
    """The caller asked for something that cannot work (conflicting selectors, unknown key kind)."""


class CheckpointError(Error):
    """A checkpoint on disk is unusable; carries the path (and key, when known)."""

    def __init__(self, message, path=None, key=None):
        super().__init__(message)
        self.path = path
        self.key = key


class CorruptCheckpointError(CheckpointError):
    """Checksum or size mismatch, a damaged meta.json or tensor file."""


class FormatVersionError(CheckpointError):
    """Written by a format version this reader does not know."""


class MissingKeyError(CheckpointError):
    """The checkpoint has no file for the key asked for."""


class MismatchError(CheckpointError):
    """The checkpoint and the object it is loaded into disagree (optimizer kind, group sizes)."""
