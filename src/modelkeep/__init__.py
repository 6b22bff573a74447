"""modelkeep: save, checkpoint, restore and serve Keras models.

Example::

    import modelkeep as mk
    mk.save_weights(model, "saved_modelname")
    model = mk.load_model("mysavedmodel")
"""

__version__ = "0.1.0"

from modelkeep.api import load_model, load_weights, save_model, save_weights  # noqa: E402
from modelkeep.errors import (  # noqa: E402
    CheckpointNotFoundError,
    CheckpointWriteError,
    CorruptCheckpointError,
    FormatError,
    IncompatibleModelError,
    ModelkeepError,
    UnsupportedModelError,
)
from modelkeep.state import ModelState  # noqa: E402

__all__ = [
    "CheckpointNotFoundError",
    "CheckpointWriteError",
    "CorruptCheckpointError",
    "FormatError",
    "IncompatibleModelError",
    "ModelState",
    "ModelkeepError",
    "UnsupportedModelError",
    "load_model",
    "load_weights",
    "save_model",
    "save_weights",
]
