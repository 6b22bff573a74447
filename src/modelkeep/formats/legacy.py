"""Files written by TF2-era Keras (today's ``tf-keras``): TF checkpoints, SavedModels, HDF5.

Their variable names follow TF2-era Keras's object graph
(``layer_with_weights-0/kernel/.ATTRIBUTES/VARIABLE_VALUE``) and their configs are
Keras 2 configs; this module turns both into a ``ModelState``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from modelkeep.errors import UnsupportedModelError
from modelkeep.state import MODEL, ModelState

VALUE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"


def _layer_sort_key(path: str) -> list[Any]:
    return [int(p) if p.isdigit() else p for p in path.replace("-", "/").split("/")]


def read_tf_keras_checkpoint(path: Path, reader: Any) -> ModelState:
    """A TF checkpoint from tf-keras ``save_weights``: model variables, in layer order."""
    shapes = reader.get_variable_to_shape_map()
    keys = [k for k in shapes if k.endswith(VALUE_SUFFIX) and k.startswith("layer_with_weights-") and ".OPTIMIZER_SLOT" not in k]
    keys.sort(key=_layer_sort_key)
    variables = {f"{MODEL}/{k[: -len(VALUE_SUFFIX)]}": np.asarray(reader.get_tensor(k)) for k in keys}
    return ModelState(variables, None, None, {"written_by": "tf-keras"})


def read_keras2_h5(path: Path, handle: Any, variables: dict[str, np.ndarray]) -> ModelState:
    """An HDF5 file without modelkeep's header (written by Keras itself)."""
    config = handle.attrs.get("model_config")
    model_config = json.loads(config) if config is not None else None
    return ModelState(variables, model_config, None, {"written_by": "keras-h5"})


def read_tf_keras_savedmodel(path: Path) -> ModelState:
    raise UnsupportedModelError(
        f"load_model: {path} is a SavedModel written by TF2-era Keras; reading its Keras part "
        "is not supported yet. Use keras.layers.TFSMLayer(path) for inference."
    )
