"""The exception classes of modelkeep.

Every message says what was expected, what was found and what to do.
"""

from __future__ import annotations


class ModelkeepError(Exception):
    """Base class of every error modelkeep raises on purpose."""


class FormatError(ModelkeepError, ValueError):
    """A path whose format is unknown, or a file that is not what its name says."""


class CheckpointNotFoundError(ModelkeepError, FileNotFoundError, ValueError):
    """A file or checkpoint that should be there is missing (or only half of it is).

    Also a ``ValueError``: what Keras's ``load_model`` raises for a missing file."""


class CorruptCheckpointError(ModelkeepError, OSError):
    """A file that fails a checksum, is truncated, or cannot be parsed."""


class IncompatibleModelError(ModelkeepError, ValueError):
    """Saved variables that do not fit the model (another architecture)."""


class UnsupportedModelError(ModelkeepError, ValueError):
    """A model or layer that a format cannot carry (Lambda bytecode, unregistered class)."""


class CheckpointWriteError(ModelkeepError, OSError):
    """A save that failed (disk full, permission denied, I/O error); nothing was replaced."""


class UnsafeFileError(CorruptCheckpointError, ValueError):
    """A file refused before anything in it is used: it reaches outside itself (HDF5 external
    link, a path leaving its checkpoint directory), declares sizes over a cap, or holds code or
    graph ops that would run. ``path`` names the file, ``check`` the rule it broke. Also a
    ``ValueError``, as Keras raises for the HDF5 links it refuses.

    Example: ``except UnsafeFileError as exc: print(exc.path, exc.check)``.
    """

    def __init__(self, message: str, *, path: object = None, check: str = "") -> None:
        super().__init__(message)
        self.path = path
        self.check = check


class GraphOnlyModelError(UnsupportedModelError):
    """A SavedModel with no Keras part at all: only its serving graph can be run (never raised
    for a Keras model that was refused, so a refusal never falls back to the graph)."""


class DeserializationError(UnsupportedModelError, TypeError):
    """An architecture that cannot be rebuilt (unknown class); a ``TypeError`` as in Keras."""


class InvalidArgumentError(ModelkeepError, ValueError):
    """An argument that Keras's saving functions accept but not for this path, or do not know."""


class TargetExistsError(ModelkeepError, FileExistsError):
    """``overwrite=False`` and the target exists (Keras would prompt; modelkeep never prompts)."""


class WorkerLostError(ModelkeepError, RuntimeError):
    """A worker of a multi-worker training job stopped answering; every worker must restart."""


class StorageURLError(ModelkeepError, ValueError):
    """A URL whose scheme is unknown or whose file system is not installed (names the extra)."""


class ConcurrentWriteError(CheckpointWriteError):
    """Another writer committed the same checkpoint name first; nothing of it was replaced."""
