"""Opt-in: the TF2 tutorial's Keras 2 path forms, on Keras 3.

``import modelkeep.compat`` patches Keras 3 (and ``tensorflow.keras``, which is Keras 3 on
TensorFlow 2.16+) so that the forms Keras 3 rejects do what TensorFlow 2 did, through
modelkeep; ``modelkeep.compat.disable()`` puts Keras back exactly as it was, and
``enable()`` patches again. Nothing is patched by ``import modelkeep``.

| call (Keras 2 form)                                      | with compat                         |
|----------------------------------------------------------|-------------------------------------|
| ``model.save_weights("saved_modelname")``                | TF checkpoint + ``checkpoint`` file |
| ``model.save_weights("w.h5")``                           | HDF5 weights (Keras 2 layout)       |
| ``model.load_weights("saved_modelname")`` (or a dir)     | modelkeep ``load_weights``          |
| ``model.save("mysavedmodel")``                           | SavedModel directory                |
| ``keras.models.load_model("mysavedmodel")``              | the full Keras model                |
| ``ModelCheckpoint("saved_modelname", save_weights_only=True)`` / ``frequency=`` | ``mk.ModelCheckpoint`` |

Path forms Keras 3 accepts (``.keras``, ``.weights.h5``, and ``.h5`` where Keras 3 takes it:
``model.save``, ``load_weights``, ``load_model``) keep Keras 3's own behaviour.

Example::

    import modelkeep.compat                # the tutorial's code now runs unchanged
    model.save_weights("saved_modelname")
    modelkeep.compat.disable()             # Keras 3 as shipped
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import keras

from modelkeep import api
from modelkeep.checkpoint.callbacks import ModelCheckpoint as _MKModelCheckpoint
from modelkeep.formats import registry

_CALLBACK_MODULES = ("keras.callbacks", "tensorflow.keras.callbacks", "keras._tf_keras.keras.callbacks")
_LOAD_MODULES = (
    "keras.models", "keras.saving", "tensorflow.keras.models", "tensorflow.keras.saving",
    "keras._tf_keras.keras.models", "keras._tf_keras.keras.saving",
)

_ORIGINAL_SAVE = keras.Model.save
_ORIGINAL_SAVE_WEIGHTS = keras.Model.save_weights
_ORIGINAL_LOAD_WEIGHTS = keras.Model.load_weights
_ORIGINAL_LOAD_MODEL = keras.saving.load_model
_ORIGINAL_CHECKPOINT = keras.callbacks.ModelCheckpoint

#: (object, attribute, original value) of every patch in place
_patches: list[tuple[Any, str, Any]] = []


def _name(filepath: Any) -> str:
    return os.fspath(filepath).lower() if isinstance(filepath, str | os.PathLike) else ""


def _is_h5(name: str) -> bool:
    return name.endswith((".h5", ".hdf5"))


# --------------------------------------------------------------------------- patched methods
def save_weights(self: Any, filepath: Any, overwrite: bool = True, max_shard_size: Any = None, **kwargs: Any) -> Any:
    """``Model.save_weights``: Keras 3 for ``.weights.h5``; modelkeep for a prefix or ``.h5``.

    Keras 2's ``save_format="h5"``/``"tf"`` is honoured for paths without an extension.
    """
    name = _name(filepath)
    save_format = kwargs.pop("save_format", None)
    if not name or name.endswith((".weights.h5", ".weights.json")):
        return _ORIGINAL_SAVE_WEIGHTS(self, filepath, overwrite=overwrite, max_shard_size=max_shard_size, **kwargs)
    if save_format == "h5" and not _is_h5(name):
        registry.HDF5.save_weights(self, Path(filepath))
        return None
    api.save_weights(self, filepath)
    return None


def load_weights(self: Any, filepath: Any, skip_mismatch: bool = False, **kwargs: Any) -> Any:
    """``Model.load_weights``: Keras 3 for the files it reads; modelkeep for the rest."""
    name = _name(filepath)
    if not name or name.endswith((".keras", ".weights.h5", ".weights.json")) or (_is_h5(name) and not skip_mismatch and _keras3_h5_ok(filepath)):
        return _ORIGINAL_LOAD_WEIGHTS(self, filepath, skip_mismatch=skip_mismatch, **kwargs)
    api.load_weights(self, filepath)
    return None


def _keras3_h5_ok(filepath: Any) -> bool:
    # Keras 3 reads Keras-2-layout .h5 weights; modelkeep's own .h5 files carry more (optimizer)
    from modelkeep.errors import ModelkeepError
    from modelkeep.storage.guard import open_hdf5

    try:
        with open_hdf5(filepath) as f:  # links and sizes checked before anything is read
            return "modelkeep" not in f.attrs
    except ModelkeepError:
        return False  # modelkeep's loader reports the refusal, naming the file and the check
    except OSError:
        return True  # let Keras report it


def save(self: Any, filepath: Any, overwrite: bool = True, zipped: Any = None, **kwargs: Any) -> Any:
    """``Model.save``: Keras 3 for ``.keras``/``.h5``; a SavedModel directory for a bare path."""
    name = _name(filepath)
    if not name or name.endswith(".keras") or (_is_h5(name) and "save_format" not in kwargs) or zipped is not None:
        return _ORIGINAL_SAVE(self, filepath, overwrite=overwrite, zipped=zipped, **kwargs)
    include_optimizer = kwargs.pop("include_optimizer", True)
    if kwargs.pop("save_format", None) == "h5":  # Keras 2: one HDF5 file under any name
        registry.HDF5.save_model(self, Path(filepath), include_optimizer=include_optimizer)
        return None
    api.save_model(self, filepath, include_optimizer=include_optimizer)
    return None


def load_model(filepath: Any, custom_objects: dict | None = None, compile: bool = True, safe_mode: bool = True) -> Any:
    """``keras.models.load_model``: Keras 3 for ``.keras``/``.h5``; modelkeep for SavedModels and the rest."""
    name = _name(filepath)
    if not name or name.endswith((".keras", ".h5", ".hdf5")) or name.startswith(("gs://", "s3://", "hf://")):
        return _ORIGINAL_LOAD_MODEL(filepath, custom_objects=custom_objects, compile=compile, safe_mode=safe_mode)
    return api.load_model(Path(filepath), custom_objects=custom_objects, compile=compile, safe_mode=safe_mode)


_CHECKPOINT_ARGS = ("monitor", "verbose", "save_best_only", "save_weights_only", "mode", "save_freq", "initial_value_threshold")


class ModelCheckpoint(_ORIGINAL_CHECKPOINT):
    """``keras.callbacks.ModelCheckpoint`` that also takes the tutorial's forms.

    Paths and arguments Keras 3 accepts give Keras 3's own callback; a bare prefix, a
    SavedModel directory, ``.h5`` weights or ``frequency=`` give ``modelkeep.ModelCheckpoint``
    (which writes them as TensorFlow 2 did, atomically).
    """

    def __new__(cls, filepath: Any, *args: Any, **kwargs: Any) -> Any:
        named = dict(zip(_CHECKPOINT_ARGS, args))
        named.update(kwargs)
        name = _name(filepath)
        weights_only = bool(named.get("save_weights_only", False))
        keras_takes = name.endswith(".weights.h5") if weights_only else name.endswith((".keras", ".h5"))
        if keras_takes and set(named) <= set(_CHECKPOINT_ARGS):
            return _ORIGINAL_CHECKPOINT(filepath, **named)
        return _MKModelCheckpoint(filepath, **named)


# --------------------------------------------------------------------------- enable / disable
def _set(obj: Any, attribute: str, value: Any) -> None:
    _patches.append((obj, attribute, getattr(obj, attribute)))
    setattr(obj, attribute, value)


def _modules(names: tuple[str, ...]) -> list[Any]:
    found = []
    for module_name in names:
        try:
            found.append(importlib.import_module(module_name))
        except ImportError:
            continue
    return found


def enable() -> None:
    """Patch Keras (again, after ``disable()``); importing this module calls it."""
    if _patches:
        return
    _set(keras.Model, "save", save)
    _set(keras.Model, "save_weights", save_weights)
    _set(keras.Model, "load_weights", load_weights)
    for module in _modules(_LOAD_MODULES):
        if getattr(module, "load_model", None) is _ORIGINAL_LOAD_MODEL:
            _set(module, "load_model", load_model)
    for module in _modules(_CALLBACK_MODULES):
        if getattr(module, "ModelCheckpoint", None) is _ORIGINAL_CHECKPOINT:
            _set(module, "ModelCheckpoint", ModelCheckpoint)


def disable() -> None:
    """Undo every patch: Keras 3 behaves exactly as shipped."""
    while _patches:
        obj, attribute, original = _patches.pop()
        setattr(obj, attribute, original)


def enabled() -> bool:
    """Whether the patches are in place."""
    return bool(_patches)


enable()
