"""The front door: save and load weights or whole models, format from the path.

Example::

    import modelkeep as mk
    mk.save_weights(model, "saved_modelname")       # TF checkpoint + `checkpoint` file
    mk.load_weights(model, "saved_modelname")
    mk.save_model(model, "mysavedmodel")            # SavedModel directory
    model = mk.load_model("mysavedmodel")
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from modelkeep.errors import CheckpointNotFoundError
from modelkeep.formats import registry
from modelkeep.formats.base import Format
from modelkeep.formats.tf_checkpoint import STATE_FILE, latest_in
from modelkeep.storage.fs import is_url, local_path

PathLike = str | os.PathLike


def _remote() -> Any:
    from modelkeep.checkpoint import remote

    return remote


def save_weights(model: Any, path: PathLike) -> list[Path]:
    """Save the model's weights; the format comes from the path (bare prefix: TF checkpoint).

    Returns the files written. Example: ``mk.save_weights(model, "ckpt/saved_modelname")``.
    A URL (``s3://bucket/run/w.weights.h5``) is saved to object storage (README "Object storage").
    """
    if is_url(path):
        return _remote().save(model, path, whole_model=False)
    path = local_path(path)
    return registry.weights_format(path).save_weights(model, path)


def save_model(model: Any, path: PathLike, *, include_optimizer: bool = True) -> list[Path]:
    """Save the whole model: architecture, weights, compile config and optimizer state.

    Example: ``mk.save_model(model, "mysavedmodel")`` writes a SavedModel directory;
    ``"model.h5"`` one HDF5 file; ``"model.keras"`` a Keras 3 zip; a URL goes to object storage.
    """
    if is_url(path):
        return _remote().save(model, path, whole_model=True, include_optimizer=include_optimizer)
    path = local_path(path)
    return registry.model_format(path).save_model(model, path, include_optimizer=include_optimizer)


def resolve_weights_path(path: PathLike) -> tuple[Format, Path]:
    """The format and concrete path ``load_weights`` reads for ``path``."""
    path = Path(path)
    if path.is_dir() and not (path / "saved_model.pb").exists():
        if (path / STATE_FILE).exists():
            latest = latest_in(path)
            if latest is not None:
                return registry.TF_CHECKPOINT, latest
        raise CheckpointNotFoundError(
            f"load_weights: {path} is a directory without a `{STATE_FILE}` state file naming a "
            "checkpoint. Give the checkpoint's prefix or file, or the directory a "
            "ModelCheckpoint wrote to."
        )
    path = registry.strip_tf_suffix(path)
    if path.exists() or Path(str(path) + ".index").exists() or Path(str(path) + ".data-00000-of-00001").exists():
        return registry.detect(path), path
    return registry.weights_format(path), path


def load_weights(model: Any, path: PathLike) -> None:
    """Load weights into a model of the same architecture.

    ``path`` is a TF checkpoint prefix, a weights or model file, a SavedModel directory,
    or a directory holding a ``checkpoint`` state file (its latest checkpoint is taken).
    Example: ``mk.load_weights(model, "saved_modelname")``.
    """
    if is_url(path):
        return _remote().load_weights(model, path)
    path = local_path(path)
    if path.is_dir() and not (path / "saved_model.pb").exists() and _load_newest_good(model, path):
        return
    fmt, concrete = resolve_weights_path(path)
    fmt.load_weights(model, concrete)


def _load_newest_good(model: Any, directory: Path) -> bool:
    """Load the newest checkpoint of ``directory`` that verifies, warning about newer bad ones.

    Returns False when the directory holds no checkpoint with a modelkeep manifest (a
    directory written by other tools: the ``checkpoint`` state file decides then).
    """
    import warnings

    from modelkeep.capture import restore
    from modelkeep.checkpoint import store

    infos = [i for i in store.list_checkpoints(directory) if store.manifest_path(i.path).exists() or i.status == store.OK]
    if not infos:
        return False
    for info in infos:
        if info.status != store.OK:
            warnings.warn(
                f"load_weights: skipping checkpoint {info.path} ({info.status}: {info.problem}); "
                "falling back to an older one.",
                stacklevel=3,
            )
            continue
        if info.format == "modelkeep backup":
            restore(model, store.load_state(info.path), source=str(info.path), optimizer=False)
        else:
            registry.detect(info.path).load_weights(model, info.path)
        return True
    from modelkeep.errors import CorruptCheckpointError

    raise CorruptCheckpointError(
        f"load_weights: no checkpoint in {directory} verifies: "
        + "; ".join(f"{i.path.name}: {i.problem}" for i in infos)
        + ". Restore the files from a copy, or retrain."
    )


def load_model(
    path: PathLike,
    *,
    custom_objects: dict | None = None,
    compile: bool = True,
    safe_mode: bool = True,
) -> Any:
    """Load a whole model from any supported format (TF2-era files included).

    Example: ``model = mk.load_model("mysavedmodel")``.
    """
    if is_url(path):
        return _remote().load_model(path, custom_objects=custom_objects, compile=compile, safe_mode=safe_mode)
    path = local_path(path)
    fmt = registry.detect(path) if path.exists() or Path(str(path) + ".index").exists() else registry.model_format(path)
    return fmt.load_model(path, custom_objects=custom_objects, compile=compile, safe_mode=safe_mode)
