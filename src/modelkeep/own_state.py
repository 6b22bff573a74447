"""A layer's own state: what its ``save_own_variables`` / ``save_assets`` write.

Most layers keep all their state in variables, which ``capture`` copies by name. Some do
not, or need a hook to run after their variables are set:

* ``Normalization`` recomputes its mean and variance tensors in ``load_own_variables``;
  assigning its variables alone leaves it the identity;
* ``StringLookup`` / ``IntegerLookup`` / ``TextVectorization`` keep an adapted vocabulary
  in a lookup table, written by ``save_assets`` (and tf-idf weights by
  ``save_own_variables``);
* custom layers that override ``save_own_variables`` / ``load_own_variables``.

For every such layer (found depth first, not descending into it), ``capture_own`` puts
its store into the ``ModelState`` as ``layers/<n>/vars/<key>`` and its asset files as
``layers/<n>/assets/<file>`` (bytes as ``uint8``), with their class names in the metadata
(``layer_state``). ``restore_own`` gives them back through ``load_own_variables`` and
``load_assets``, after the variables are assigned, the order Keras's loader uses. Text
values ride as UTF-8 JSON bytes, so every format that holds numeric arrays carries them.

Example::

    arrays, info = capture_own(model)       # {"layers/0/vars/0": ..., ...}, [{"class": ...}]
    restore_own(model, arrays, info, source="w.safetensors")
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from modelkeep.errors import CorruptCheckpointError, IncompatibleModelError

LAYERS = "layers"
META_KEY = "layer_state"

# Keras classes whose save/load_own_variables overrides only change quantized or LoRA
# layers; their state is their variables, which capture copies by name.
_VARIABLE_ONLY = {"Layer", "Dense", "EinsumDense", "Embedding", "BaseConv", "Operation", "Model", "Functional",
                  "Sequential", "Trainer", "TensorFlowTrainer", "TFLayer"}


def _definer(cls: type, method: str) -> str | None:
    for klass in cls.__mro__:
        if method in vars(klass):
            return klass.__name__ if klass.__module__.startswith("keras.") else klass.__qualname__ + "@user"
    return None


def has_own_state(layer: Any) -> bool:
    """True when ``layer`` saves or loads more than its variables (see the module docstring)."""
    cls = type(layer)
    if callable(getattr(layer, "save_assets", None)) or callable(getattr(layer, "load_assets", None)):
        return True
    for method in ("save_own_variables", "load_own_variables"):
        definer = _definer(cls, method)
        if definer is not None and definer not in _VARIABLE_ONLY:
            return True
    return False


def own_state_layers(model: Any) -> list[Any]:
    """The layers of ``model`` with their own state, depth first (not inside such a layer)."""
    out: list[Any] = []
    seen: set[int] = set()

    def visit(layer: Any) -> None:
        for child in layer._flatten_layers(include_self=False, recursive=False):
            if id(child) in seen:
                continue
            seen.add(id(child))
            if has_own_state(child):
                out.append(child)
            else:
                visit(child)

    if hasattr(model, "_flatten_layers"):
        visit(model)
    return out


def _to_array(value: Any) -> tuple[np.ndarray, bool]:
    """A store value as a numeric array; text as UTF-8 JSON bytes (second item True)."""
    if hasattr(value, "numpy") and not isinstance(value, np.ndarray):
        value = value.numpy()
    array = np.array(value)
    if array.dtype.kind in "USO":
        items = np.vectorize(lambda v: v.decode() if isinstance(v, bytes) else str(v), otypes=[object])(array)
        text = json.dumps(items.tolist() if array.ndim else items.item())
        return np.frombuffer(text.encode(), dtype=np.uint8).copy(), True
    return array, False


def _from_array(array: np.ndarray, text: bool) -> Any:
    if not text:
        return array
    return np.array(json.loads(bytes(np.asarray(array, dtype=np.uint8)).decode()))


def capture_own(model: Any) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    """Own-state arrays (``layers/<n>/...``) and their description, for every such layer."""
    arrays: dict[str, np.ndarray] = {}
    info: list[dict[str, Any]] = []
    for n, layer in enumerate(own_state_layers(model)):
        entry: dict[str, Any] = {"class": type(layer).__name__, "name": layer.name, "vars": [], "text": [], "assets": []}
        store: dict[str, Any] = {}
        if hasattr(layer, "save_own_variables"):
            layer.save_own_variables(store)
        for key, value in store.items():
            array, text = _to_array(value)
            arrays[f"{LAYERS}/{n}/vars/{key}"] = array
            entry["vars"].append(str(key))
            if text:
                entry["text"].append(str(key))
        if callable(getattr(layer, "save_assets", None)):
            with tempfile.TemporaryDirectory(prefix="modelkeep-assets-") as tmp:
                layer.save_assets(tmp)
                for file in sorted(Path(tmp).rglob("*")):
                    if file.is_file():
                        relative = file.relative_to(tmp).as_posix()
                        arrays[f"{LAYERS}/{n}/assets/{relative}"] = np.frombuffer(file.read_bytes(), dtype=np.uint8).copy()
                        entry["assets"].append(relative)
        info.append(entry)
    return arrays, info


def restore_own(model: Any, arrays: dict[str, np.ndarray], info: list[dict[str, Any]] | None, *, source: str) -> None:
    """Give each own-state layer its saved store and assets (after its variables are set).

    A layer whose file has no own state of it (a file written by Keras 2, or before
    modelkeep kept it): one that only re-derives state from its variables (``Normalization``)
    gets them through ``load_own_variables``; any other is named in a warning.
    """
    layers = own_state_layers(model)
    info = list(info or [])
    if info and len(info) != len(layers):
        raise IncompatibleModelError(
            f"load: {source} holds the own state of {len(info)} layers "
            f"({', '.join(e['class'] for e in info)}) but the model has {len(layers)} such layers "
            f"({', '.join(type(layer).__name__ for layer in layers) or 'none'}). The file was saved "
            "from a different architecture."
        )
    for n, layer in enumerate(layers):
        if not info:
            _rederive(layer, source)
            continue
        entry = info[n]
        if entry["class"] != type(layer).__name__:
            raise IncompatibleModelError(
                f"load: own state {n} in {source} is of a {entry['class']} layer ('{entry['name']}') but "
                f"the model's is a {type(layer).__name__} ('{layer.name}'). The file was saved from a "
                "different architecture."
            )
        wanted = [f"{LAYERS}/{n}/vars/{key}" for key in entry["vars"]] + [f"{LAYERS}/{n}/assets/{a}" for a in entry["assets"]]
        missing = [key for key in wanted if key not in arrays]
        if missing:
            raise CorruptCheckpointError(
                f"load: {source} lists own state {', '.join(missing)} of layer '{entry['name']}' but does not "
                "hold it; the file is damaged. Use another copy."
            )
        store = {key: _from_array(arrays[f"{LAYERS}/{n}/vars/{key}"], key in entry["text"]) for key in entry["vars"]}
        if hasattr(layer, "load_own_variables"):
            layer.load_own_variables(store)
        if entry["assets"] and callable(getattr(layer, "load_assets", None)):
            with tempfile.TemporaryDirectory(prefix="modelkeep-assets-") as tmp:
                for relative in entry["assets"]:
                    target = Path(tmp, *relative.split("/"))
                    if not target.resolve().is_relative_to(Path(tmp).resolve()):
                        raise IncompatibleModelError(f"load: {source} names asset '{relative}' outside its layer.")
                    os.makedirs(target.parent, exist_ok=True)
                    target.write_bytes(np.asarray(arrays[f"{LAYERS}/{n}/assets/{relative}"], dtype=np.uint8).tobytes())
                layer.load_assets(tmp)


def _rederive(layer: Any, source: str) -> None:
    if _definer(type(layer), "save_own_variables") in _VARIABLE_ONLY and not callable(getattr(layer, "save_assets", None)):
        values = layer._trainable_variables + layer._non_trainable_variables
        layer.load_own_variables({str(i): v.numpy() for i, v in enumerate(values)})
        return
    if getattr(layer, "input_vocabulary", None) is not None:
        return  # a lookup layer whose vocabulary is in its config
    warnings.warn(
        f"load: {source} holds no own state for layer '{layer.name}' ({type(layer).__name__}), which keeps "
        "state outside its variables (save_own_variables/save_assets); that state is not restored. "
        "Save the model with modelkeep or as .keras to keep it.",
        stacklevel=4,
    )
