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

from modelkeep import saving_options
from modelkeep.errors import CheckpointNotFoundError
from modelkeep.formats import registry
from modelkeep.formats.base import Format
from modelkeep.formats.tf_checkpoint import STATE_FILE, latest_in
from modelkeep.storage.fs import is_url, local_path

PathLike = str | os.PathLike


def _remote() -> Any:
    from modelkeep.checkpoint import remote

    return remote


def save_weights(
    model: Any, path: PathLike, overwrite: bool = True, max_shard_size: float | None = None, **kwargs: Any
) -> list[Path]:
    """Save the model's weights; the format comes from the path (bare prefix: TF checkpoint).

    Keras's arguments too: ``overwrite``, ``max_shard_size`` (GB per shard, for a
    ``.weights.json``), ``objects_to_skip`` (``.weights.h5``/``.weights.json``); see
    ``modelkeep.saving_options``. Returns the files written.
    Example: ``mk.save_weights(model, "ckpt/saved_modelname")``.
    A URL (``s3://bucket/run/w.weights.h5``) is saved to object storage (README "Object storage").
    """
    if is_url(path):
        return _remote().save(model, path, whole_model=False)
    path = local_path(path)
    options = saving_options.check_save_weights(path, max_shard_size, kwargs)
    saving_options.check_overwrite(path, overwrite, "save_weights")
    fmt = registry.weights_format(path)
    if fmt is registry.KERAS_SHARDED:
        return fmt.save_weights(model, path, max_shard_size=max_shard_size or 5.0, **options)
    if max_shard_size is not None:
        raise saving_options.InvalidArgumentError(
            f"save_weights: max_shard_size writes Keras's sharded weights; give a `.weights.json` path. "
            f"Received: filepath={path}"
        )
    if options["objects_to_skip"] is not None:
        return fmt.save_weights(model, path, **options)
    return fmt.save_weights(model, path)


def save_model(
    model: Any, path: PathLike, overwrite: bool = True, zipped: bool | None = None, *, include_optimizer: bool = True,
    **kwargs: Any,
) -> list[Path]:
    """Save the whole model: architecture, weights, compile config and optimizer state.

    Example: ``mk.save_model(model, "mysavedmodel")`` writes a SavedModel directory;
    ``"model.h5"`` one HDF5 file; ``"model.keras"`` a Keras 3 zip; ``zipped=False`` Keras's
    unzipped directory. ``overwrite=False`` refuses an existing target (no prompt).
    A URL (``s3://bucket/m.keras``) goes to object storage.
    """
    saving_options.save_model_kwargs(path, kwargs)
    if saving_options.is_file_object(path):  # Keras's .keras into an open file
        from keras.src.saving import saving_lib

        saving_lib.save_model(model, path)
        return []
    if is_url(path):
        return _remote().save(model, path, whole_model=True, include_optimizer=include_optimizer)
    path = local_path(path)
    saving_options.check_overwrite(path, overwrite, "save_model")
    if zipped is False:
        if path.name.endswith(".keras"):
            raise saving_options.InvalidArgumentError(
                "When using `zipped=False`, the `filepath` argument should not end in `.keras`. "
                f"Received: filepath={path}"
            )
        return registry.KERAS_DIR.save_model(model, path, include_optimizer=include_optimizer)
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
    return registry.weights_format(path, "load_weights"), path


def load_weights(model: Any, path: PathLike, skip_mismatch: bool = False, **kwargs: Any) -> None:
    """Load weights into a model of the same architecture.

    ``path`` is a TF checkpoint prefix, a weights or model file, a SavedModel directory,
    or a directory holding a ``checkpoint`` state file (its latest checkpoint is taken).
    Keras's arguments too: ``skip_mismatch``, ``objects_to_skip`` (Keras weights files),
    ``by_name`` (``.h5``). Example: ``mk.load_weights(model, "saved_modelname")``.
    """
    if is_url(path):
        return _remote().load_weights(model, path)
    path = local_path(path)
    options = saving_options.check_load_weights(path, kwargs)
    if skip_mismatch or options["objects_to_skip"] is not None or options["by_name"]:
        fmt, concrete = resolve_weights_path(path)
        saving_options.load_weights_with(fmt, model, concrete, skip_mismatch=skip_mismatch, **options)
        return
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
    if saving_options.is_file_object(path):  # Keras's .keras from an open file
        from keras.src.saving import saving_lib

        return saving_lib.load_model(path, custom_objects=custom_objects, compile=compile, safe_mode=safe_mode)
    if is_url(path):
        return _remote().load_model(path, custom_objects=custom_objects, compile=compile, safe_mode=safe_mode)
    path = local_path(path)
    fmt = (
        registry.detect(path)
        if path.exists() or Path(str(path) + ".index").exists()
        else registry.model_format(path, "load_model")
    )
    return fmt.load_model(path, custom_objects=custom_objects, compile=compile, safe_mode=safe_mode)
