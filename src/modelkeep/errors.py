"""The exception classes of modelkeep.

Every message says what was expected, what was found and what to do.
"""

from __future__ import annotations


class ModelkeepError(Exception):
    """Base class of every error modelkeep raises on purpose."""


class FormatError(ModelkeepError, ValueError):
    """A path whose format is unknown, or a file that is not what its name says."""


class CheckpointNotFoundError(ModelkeepError, FileNotFoundError):
    """A file or checkpoint that should be there is missing (or only half of it is)."""


class CorruptCheckpointError(ModelkeepError, OSError):
    """A file that fails a checksum, is truncated, or cannot be parsed."""


class IncompatibleModelError(ModelkeepError, ValueError):
    """Saved variables that do not fit the model (another architecture)."""


class UnsupportedModelError(ModelkeepError, ValueError):
    """A model or layer that a format cannot carry (Lambda bytecode, unregistered class)."""


class CheckpointWriteError(ModelkeepError, OSError):
    """A save that failed (disk full, permission denied, I/O error); nothing was replaced."""


class StorageURLError(ModelkeepError, ValueError):
    """A URL whose scheme is unknown or whose file system is not installed (names the extra)."""


class ConcurrentWriteError(CheckpointWriteError):
    """Another writer committed the same checkpoint name first; nothing of it was replaced."""
