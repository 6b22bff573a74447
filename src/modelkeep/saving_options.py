"""The arguments of Keras's saving functions, as ``modelkeep.api`` takes them.

``save_model(model, path, overwrite=True, zipped=None, include_optimizer=..., save_format=...)``,
``save_weights(model, path, overwrite=True, max_shard_size=None, objects_to_skip=...)``,
``load_weights(model, path, skip_mismatch=False, objects_to_skip=..., by_name=...)``: the
same names, defaults and errors as Keras 3 (its words at the start of each message, the
exception type it raises), over every format modelkeep writes. Deliberate differences:
``overwrite=False`` raises ``TargetExistsError`` instead of prompting; ``.h5`` saves log
no "legacy format" warning (``.h5`` is a format modelkeep writes for TF2-era readers).

Example::

    include_optimizer = save_model_kwargs("m.keras", {"include_optimizer": False})
    check_overwrite(Path("m.keras"), overwrite=True, what="save_model")
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from modelkeep.errors import InvalidArgumentError, TargetExistsError

log = logging.getLogger("modelkeep")


def is_file_object(path: Any) -> bool:
    """A writable/readable Python file object (``io.BytesIO``...), which Keras's .keras accepts."""
    return hasattr(path, "read") or hasattr(path, "write")


def save_model_kwargs(path: Any, kwargs: dict[str, Any]) -> bool:
    """Check ``save_model``'s extra keywords as Keras does; return ``include_optimizer``."""
    kwargs = dict(kwargs)
    include_optimizer = kwargs.pop("include_optimizer", True)
    save_format = kwargs.pop("save_format", False)
    if save_format:
        text = str(path)
        if text.endswith((".h5", ".hdf5", ".keras")) or (save_format in ("tf", "tf_saved_model") and Path(text).suffix == ""):
            log.warning(
                "The `save_format` argument is deprecated in Keras 3; the format comes from the path. "
                "Received: save_format=%s",
                save_format,
            )
        else:
            raise InvalidArgumentError(
                "The `save_format` argument is deprecated in Keras 3. Please remove this argument and "
                "pass a file path with either `.keras` or `.h5` extension (modelkeep: or no extension "
                f"for a SavedModel directory). Received: save_format={save_format}, filepath={path}"
            )
    if kwargs:
        raise InvalidArgumentError(
            f"The following argument(s) are not supported: {list(kwargs.keys())}. save_model takes "
            "overwrite, zipped, include_optimizer (and the deprecated save_format)."
        )
    return bool(include_optimizer)


def check_overwrite(path: Path, overwrite: bool, what: str) -> None:
    """``overwrite=False`` on an existing target: an error, never a prompt."""
    if overwrite:
        return
    from modelkeep.formats.tf_checkpoint import INDEX_SUFFIX

    if path.exists() or Path(str(path) + INDEX_SUFFIX).exists():
        raise TargetExistsError(
            f"{what}: {path} exists and overwrite=False. Keras would ask on the terminal; modelkeep never "
            "prompts. Pass overwrite=True to replace it (the old one stays until the new one is "
            "committed), or choose another path."
        )


def check_save_weights(path: Path, max_shard_size: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``save_weights``'s keywords: ``objects_to_skip`` (Keras weights files only)."""
    kwargs = dict(kwargs)
    objects_to_skip = kwargs.pop("objects_to_skip", None)
    if kwargs:
        raise InvalidArgumentError(f"Invalid keyword arguments: {kwargs}. save_weights: {path}.")
    name = path.name.lower()
    if max_shard_size is not None and not name.endswith((".weights.h5", ".weights.json")):
        raise InvalidArgumentError(
            "The filename must end in `.weights.json` when `max_shard_size` is specified. "
            f"Received: filepath={path}"
        )
    if objects_to_skip is not None and not name.endswith((".weights.h5", ".weights.json")):
        raise InvalidArgumentError(
            f"`objects_to_skip` only supports saving '.weights.h5' files. Received: {path}. "
            "(modelkeep: .weights.json too.)"
        )
    return {"objects_to_skip": objects_to_skip}


def check_load_weights(path: Path, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``load_weights``'s keywords as Keras checks them; returns objects_to_skip and by_name."""
    kwargs = dict(kwargs)
    objects_to_skip = kwargs.pop("objects_to_skip", None)
    by_name = kwargs.pop("by_name", None)
    if kwargs:
        raise InvalidArgumentError(f"Invalid keyword arguments: {kwargs}. load_weights: {path}.")
    name = path.name.lower()
    keras_weights = name.endswith((".weights.h5", ".weights.json"))
    if objects_to_skip is not None and not keras_weights:
        raise InvalidArgumentError(f"`objects_to_skip` only supports loading '.weights.h5' files.Received: {path}")
    if by_name is not None and (keras_weights or not name.endswith((".h5", ".hdf5"))):
        raise InvalidArgumentError(f"`by_name` only supports loading legacy '.h5' or '.hdf5' files. Received: {path}")
    return {"objects_to_skip": objects_to_skip, "by_name": by_name}


def load_h5_by_name(model: Any, path: Path, skip_mismatch: bool) -> None:
    """``by_name=True`` on an ``.h5``: Keras 2's by-name matching (Keras's own loader)."""
    from keras.src.legacy.saving import legacy_h5_format

    from modelkeep.formats.hdf5 import _open
    from modelkeep.own_state import restore_own

    with _open(path) as f:
        group = f["model_weights"] if "layer_names" not in f.attrs and "model_weights" in f else f
        legacy_h5_format.load_weights_from_hdf5_group_by_name(group, model, skip_mismatch)
    restore_own(model, {}, None, source=str(path))  # Normalization recomputes from its variables


def load_weights_with(
    fmt: Any, model: Any, path: Path, *, skip_mismatch: bool, objects_to_skip: Any, by_name: Any
) -> None:
    """``load_weights`` with Keras's options, for the format of ``path``."""
    from modelkeep.capture import restore
    from modelkeep.formats import registry

    if by_name:
        load_h5_by_name(model, path, skip_mismatch)
    elif fmt is registry.KERAS_WEIGHTS:
        from keras.src.saving import saving_lib

        from modelkeep.formats.keras_zip import _load_own_state

        fmt.require(path)
        saving_lib.load_weights_only(model, str(path), skip_mismatch=skip_mismatch, objects_to_skip=objects_to_skip)
        if objects_to_skip is None and not skip_mismatch:
            _load_own_state(model, path)
    elif fmt is registry.KERAS_SHARDED:
        fmt.load_weights(model, path, skip_mismatch=skip_mismatch, objects_to_skip=objects_to_skip)
    elif fmt is registry.HDF5 and not _has_modelkeep_header(path):
        from keras.src.legacy.saving import legacy_h5_format

        from modelkeep.formats.hdf5 import _open

        fmt.require(path)
        with _open(path) as f:
            group = f["model_weights"] if "layer_names" not in f.attrs and "model_weights" in f else f
            legacy_h5_format.load_weights_from_hdf5_group(group, model, skip_mismatch)
    else:
        fmt.require(path)
        restore(model, fmt.read(path), source=str(path), optimizer=False, skip_mismatch=skip_mismatch)


def _has_modelkeep_header(path: Path) -> bool:
    from modelkeep.formats.hdf5 import HEADER_ATTR, _open

    with _open(path) as f:
        return f.attrs.get(HEADER_ATTR) is not None
