"""Read anything on disk into a ``ModelState``, for inspecting, comparing and converting.

The formats' own readers do the work; two cases need more than they give:

* a Keras 3 ``.weights.h5`` holds no architecture, so its variables are read as they are
  stored (``model/layers/dense/vars/0``, ``optimizer/vars/3``) unless a model (``like``) is
  given to load them into;
* a modelkeep backup directory ``ckpt-<step>/`` is read with ``store.load_state``.

Example::

    fmt_name, state = read_state("run/ckpt-000000120")
    fmt_name, state = read_state("w.weights.h5", like="model.keras")
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from modelkeep.checkpoint import store
from modelkeep.errors import CorruptCheckpointError
from modelkeep.formats import registry
from modelkeep.formats.base import Format
from modelkeep.state import MODEL, OPTIMIZER, ModelState
from modelkeep.storage.fs import is_url

BACKUP = "modelkeep backup"


def is_backup_dir(path: Path) -> bool:
    """A checkpoint directory of modelkeep's own layout (``ckpt-<step>/``)."""
    return path.is_dir() and (path / store.STORE_STATE).exists()


def format_name(path: Path | str) -> str:
    """The name of the format of something on disk (``FormatError`` if unknown)."""
    path = Path(path)
    return BACKUP if is_backup_dir(path) else registry.detect(path).name


def detect(path: Path | str) -> Format | None:
    """The format of ``path``, or ``None`` for a modelkeep backup directory."""
    path = Path(path)
    return None if is_backup_dir(path) else registry.detect(path)


def read_state(path: Path | str, *, like: Path | str | None = None) -> tuple[str, ModelState]:
    """``(format name, state)`` of a saved file, prefix or directory.

    ``like`` names a saved whole model whose architecture a weights-only file without
    config (Keras 3 ``.weights.h5``) is loaded into, to get structural names.
    A URL (``s3://...``) is downloaded (CRC-checked) and read the same way.
    """
    if is_url(path) or is_url(like):
        from modelkeep.checkpoint import remote

        with remote.local_copy(path) as local, remote.local_copy(like) as local_like:
            return read_state(local, like=local_like)
    path = registry.strip_tf_suffix(Path(path))
    if is_backup_dir(path):
        return BACKUP, store.load_state(path)
    fmt = registry.detect(path)
    fmt.require(path)
    if fmt is registry.KERAS_WEIGHTS:
        if like is not None:
            return fmt.name, _through_model(path, Path(like))
        return fmt.name, read_keras_weights_raw(path)
    return fmt.name, fmt.read(path)


def read_tf_checkpoint_raw(prefix: Path) -> ModelState:
    """Every tensor of a TF checkpoint under its checkpoint key (object-graph entries left out).

    What a SavedModel without a Keras part (``tf.saved_model.save`` of a ``tf.Module``) can
    still show: its variables, though not which layer each belongs to.
    """
    from modelkeep.storage.guard import open_tf_checkpoint

    reader = open_tf_checkpoint(prefix)
    keys = sorted(k for k in reader.get_variable_to_shape_map() if not k.startswith("_CHECKPOINTABLE_OBJECT_GRAPH"))
    variables = {}
    for key in keys:
        value = reader.get_tensor(key)
        if not isinstance(value, bytes):
            variables[f"{MODEL}/{key.removesuffix('/.ATTRIBUTES/VARIABLE_VALUE')}"] = np.asarray(value)
    return ModelState(variables, None, None, {"stored_names": True})


def _through_model(path: Path, like: Path) -> ModelState:
    from modelkeep.api import load_model
    from modelkeep.capture import capture

    model = load_model(like)
    registry.KERAS_WEIGHTS.load_weights(model, path)
    state = capture(model, include_optimizer=False)
    state.metadata["weights_from"] = str(path)
    return state


def _natural_key(name: str) -> list[Any]:
    # dense, dense_1, dense_2, dense_10: the order Keras created the layers in
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def read_keras_weights_raw(path: Path) -> ModelState:
    """The variables of a Keras 3 ``.weights.h5`` under their stored names."""
    import h5py

    from modelkeep.formats.hdf5 import _open

    variables: dict[str, np.ndarray] = {}

    def walk(group: Any, prefix: str) -> None:
        for name in sorted(group, key=_natural_key):
            item = group[name]
            if isinstance(item, h5py.Dataset):
                name = item.name.lstrip("/")
                variables[f"{prefix}/{name}" if prefix else name] = np.asarray(item)
            else:
                walk(item, prefix)

    with _open(path) as handle:
        try:
            for name in sorted(handle, key=_natural_key):
                if name == OPTIMIZER:
                    walk(handle[name], "")
                else:
                    walk(handle[name], MODEL)
        except (OSError, KeyError, RuntimeError) as exc:
            raise CorruptCheckpointError(f"read: a dataset of {path} cannot be read ({exc}); the file is corrupt.") from exc
    return ModelState(variables, None, None, {"stored_names": True})
