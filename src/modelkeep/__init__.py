"""modelkeep: save, checkpoint, restore and serve Keras models.

Example::

    import modelkeep as mk
    mk.save_weights(model, "saved_modelname")
    model = mk.load_model("mysavedmodel")
"""

__version__ = "0.1.0"

from modelkeep import quiet as _quiet  # noqa: E402

_quiet.install()  # TensorFlow's CPU-only start-up lines stay off stderr (modelkeep/quiet.py)

from modelkeep.api import load_model, load_weights, save_model, save_weights  # noqa: E402
from modelkeep.checkpoint.resume import fit  # noqa: E402
from modelkeep.checkpoint.store import list_checkpoints  # noqa: E402
from modelkeep.checkpoint.writer import AsyncWriter, wait_for_saves  # noqa: E402
from modelkeep.errors import (  # noqa: E402
    CheckpointNotFoundError,
    CheckpointWriteError,
    CorruptCheckpointError,
    DeserializationError,
    FormatError,
    IncompatibleModelError,
    InvalidArgumentError,
    ModelkeepError,
    TargetExistsError,
    UnsupportedModelError,
    WorkerLostError,
)
from modelkeep.state import ModelState  # noqa: E402
from modelkeep.storage.fs import set_storage_options  # noqa: E402

__all__ = [
    "AsyncWriter",
    "BackupAndRestore",
    "ModelCheckpoint",
    "list_checkpoints",
    "CheckpointNotFoundError",
    "CheckpointWriteError",
    "CorruptCheckpointError",
    "DeserializationError",
    "FormatError",
    "IncompatibleModelError",
    "InvalidArgumentError",
    "TargetExistsError",
    "ModelState",
    "ModelkeepError",
    "UnsupportedModelError",
    "WorkerLostError",
    "fit",
    "load_model",
    "load_weights",
    "save_model",
    "save_weights",
    "set_storage_options",
    "wait_for_saves",
]


def __getattr__(name: str):  # the callbacks import Keras; `import modelkeep` stays light
    if name == "ModelCheckpoint":
        from modelkeep.checkpoint.callbacks import ModelCheckpoint

        return ModelCheckpoint
    if name == "BackupAndRestore":
        from modelkeep.checkpoint.backup import BackupAndRestore

        return BackupAndRestore
    raise AttributeError(f"module 'modelkeep' has no attribute {name!r}")
