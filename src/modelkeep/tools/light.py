"""``modelkeep inspect`` without importing Keras or TensorFlow, where the file says enough.

Importing TensorFlow takes seconds; a ``.keras``, ``.h5`` or ``.safetensors`` file of a few KB
should not. :func:`describe_light` gives what :func:`modelkeep.tools.inspect.describe` gives,
read with ``zipfile``, ``h5py`` and ``safetensors`` alone:

* ``.h5`` and ``.safetensors`` are read by their formats' own readers (neither needs Keras);
* a ``.keras`` zip's ``config.json`` and ``model.weights.h5`` are read directly, and its
  variables named as Keras would name them, for the layers and optimizers listed in
  :data:`LAYER_VARIABLES` and :data:`OPTIMIZER_SLOTS`;
* the model summary (layers, output shapes, parameters) comes from the saved config: a
  Sequential model's layers record their input shapes (``build_config``), so each layer's
  output shape is the next one's input shape, and the last one's follows from its class.

A TF checkpoint (``P.index`` + ``P.data-*``) is read by ``formats.tf_bundle_reader`` (no
TensorFlow), with the same summary rules for the model config modelkeep stores in it.

Anything else (another model class, a layer or optimizer not listed, a SavedModel, a bundle
layout only TensorFlow reads) goes the usual way, through Keras, with the same result. The
tests compare the two on the same files.

Example::

    info = describe_light("model.keras")      # no `import tensorflow`
    info["model"]["total_params"]
"""

from __future__ import annotations

import io
import math
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from modelkeep.formats import registry
from modelkeep.state import MODEL, OPTIMIZER, ModelState

#: the variables of a layer, in Keras's order, from its config (None: not known here)
LAYER_VARIABLES = {
    "Dense": lambda c: ["kernel"] + (["bias"] if c.get("use_bias", True) else []),
    "Conv1D": lambda c: ["kernel"] + (["bias"] if c.get("use_bias", True) else []),
    "Conv2D": lambda c: ["kernel"] + (["bias"] if c.get("use_bias", True) else []),
    "Conv3D": lambda c: ["kernel"] + (["bias"] if c.get("use_bias", True) else []),
    "Embedding": lambda c: ["embeddings"],
    "BatchNormalization": lambda c: (["gamma"] if c.get("scale", True) else []) + (["beta"] if c.get("center", True) else [])
    + ["moving_mean", "moving_variance"],
    "LayerNormalization": lambda c: (["gamma"] if c.get("scale", True) else []) + (["beta"] if c.get("center", True) else []),
}
#: the name Keras gives a layer's group in ``model.weights.h5``: its class in snake case, then
#: ``_1``, ``_2``, ... for the next layers of that class (not the layer's own name)
H5_GROUP = {"Dense": "dense", "Conv1D": "conv1d", "Conv2D": "conv2d", "Conv3D": "conv3d", "Embedding": "embedding",
            "BatchNormalization": "batch_normalization", "LayerNormalization": "layer_normalization"}
#: layers without variables (and without a seed generator)
NO_VARIABLES = {
    "InputLayer", "Activation", "ReLU", "Softmax", "LeakyReLU", "ELU", "Flatten", "Reshape", "Permute",
    "MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D", "AveragePooling2D", "AveragePooling3D",
    "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalAveragePooling1D", "GlobalAveragePooling2D",
}
#: output shape = input shape
SAME_SHAPE = {"Activation", "ReLU", "Softmax", "LeakyReLU", "ELU", "BatchNormalization", "LayerNormalization",
              "Dropout", "GaussianNoise", "GaussianDropout"}
NON_TRAINABLE = ("moving_mean", "moving_variance")
#: per trainable variable, the optimizer's slots, from its config (after `iteration`, `learning_rate`)
OPTIMIZER_SLOTS = {
    "Adam": lambda c: ["momentum", "velocity"] + (["velocity_hat"] if c.get("amsgrad") else []),
    "AdamW": lambda c: ["momentum", "velocity"] + (["velocity_hat"] if c.get("amsgrad") else []),
    "SGD": lambda c: ["momentum"] if c.get("momentum") else [],
}
LIGHT_SUFFIXES = (".keras", ".h5", ".hdf5", ".safetensors")  # and TF checkpoint prefixes


def describe_light(path: Path | str, *, signatures: bool = True) -> dict[str, Any]:
    """:func:`~modelkeep.tools.inspect.describe`, without Keras where the file allows."""
    from modelkeep.tools import inspect

    path = registry.strip_tf_suffix(Path(path))
    fmt = None if path.is_dir() else registry.detect(path)  # raises for a path that does not exist
    if fmt is registry.TF_CHECKPOINT:
        files = [f for f in fmt.files(path) if f.exists()]
    elif fmt in (registry.KERAS_ZIP, registry.HDF5, registry.SAFETENSORS) and path.is_file():
        files = [path]
    else:
        return inspect.describe(path, signatures=signatures)  # directories, SavedModels
    try:
        state = _read_light_state(path, fmt)
    except Exception:  # noqa: BLE001 - whatever Keras or TensorFlow says about this file is the answer
        state = None
    if state is None:
        return inspect.describe(path, signatures=signatures)
    summary = light_summary(state) if state.model_config else None
    info: dict[str, Any] = {
        "path": str(path),
        "format": fmt.name,
        "files": [{"name": f.name, "size": f.stat().st_size} for f in files],
        "model": summary if summary is not None else inspect.model_summary(state.model_config),
        "variables": inspect.variable_table(state),
        "optimizer": inspect.optimizer_summary(state),
        "compile": inspect._compile_summary(state.compile_config),
        "metadata": inspect._metadata(state, path, fmt.name),
        "signatures": None,
        "note": None,
    }
    info["total_size"] = sum(f["size"] for f in info["files"])
    return info


def _read_light_state(path: Path, fmt: Any) -> ModelState | None:
    if fmt is registry.KERAS_ZIP:
        return _read_keras_zip(path)
    if fmt is registry.TF_CHECKPOINT:
        from modelkeep.formats import tf_bundle_reader

        return tf_bundle_reader.read_state(path)  # None: a layout only TensorFlow reads
    return fmt.read(path)


def read_light(path: Path | str) -> tuple[str, ModelState] | None:
    """``(format name, state)`` as :func:`~modelkeep.tools.reading.read_state` gives it, read
    without Keras; None where that needs Keras (then use ``read_state``)."""
    path = registry.strip_tf_suffix(Path(path))
    fmt = None if path.is_dir() else registry.detect(path)
    if fmt is registry.TF_CHECKPOINT:
        from modelkeep.formats import tf_bundle_reader

        state = tf_bundle_reader.read_state(path)
        return None if state is None else (fmt.name, state)
    if fmt not in (registry.KERAS_ZIP, registry.HDF5, registry.SAFETENSORS) or not path.is_file():
        return None
    if fmt is registry.KERAS_ZIP:
        state = _read_keras_zip(path)
        return None if state is None else (fmt.name, state)
    from modelkeep.formats.hdf5 import HEADER_ATTR, _open

    if fmt is registry.HDF5:
        with _open(path) as f:
            if f.attrs.get(HEADER_ATTR) is None:
                return None  # written by Keras itself: its config is translated through Keras
    return fmt.name, fmt.read(path)


def diff_light(a: Path | str, b: Path | str, *, like: Path | str | None = None) -> Any:
    """:func:`~modelkeep.tools.diff.diff_paths`, without Keras when both files allow it."""
    from modelkeep.tools.diff import diff_paths, diff_states

    read_a, read_b = (None, None) if like is not None else (read_light(a), read_light(b))
    if read_a is None or read_b is None:
        return diff_paths(a, b, like=like)
    report = diff_states(read_a[1], read_b[1], label_a=str(a), label_b=str(b))
    report.format_a, report.format_b = read_a[0], read_b[0]
    return report


# ------------------------------------------------------------------ .keras without Keras
def _layer_list(config: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The layers of a Sequential model's config (InputLayer left out, as ``model.layers`` does)."""
    if not isinstance(config, dict) or config.get("class_name") != "Sequential" or config.get("module") not in ("keras", "keras.models", None):
        return None
    layers = (config.get("config") or {}).get("layers")
    if not isinstance(layers, list) or not all(isinstance(layer, dict) for layer in layers):
        return None
    return [layer for layer in layers if layer.get("class_name") != "InputLayer"]


def _read_keras_zip(path: Path) -> ModelState | None:
    """The state ``capture(load_model(path))`` gives, for Sequential models of the known layers."""
    import h5py

    from modelkeep.storage import guard

    if not zipfile.is_zipfile(path):
        return None  # the usual reader says what the file is
    guard.check_keras_zip(path)  # members, config.json and the inner HDF5 (links, sizes) checked first
    with guard.open_zip(path) as archive:
        names = set(archive.namelist())
        if not {"config.json", "model.weights.h5"} <= names or names - {"config.json", "metadata.json", "model.weights.h5"}:
            return None  # modelkeep's seed-generator member, assets: the usual way

        def member(name: str) -> bytes:
            return guard.read_member(archive, name, source=f"{path}!{name}")

        config = guard.load_json(member("config.json"), source=f"{path}!config.json", what="config.json")
        meta = guard.load_json(member("metadata.json"), source=f"{path}!metadata.json", what="metadata.json") if "metadata.json" in names else {}
        weights = member("model.weights.h5")
    layers = _layer_list(config)
    if layers is None:
        return None
    variables: dict[str, np.ndarray] = {}
    trainable: list[str] = []
    with h5py.File(io.BytesIO(weights), "r") as f:
        index = 0
        seen: dict[str, int] = {}
        consumed: set[str] = set()
        for layer in layers:
            cls, cfg = layer.get("class_name"), layer.get("config") or {}
            if cls in NO_VARIABLES:
                continue
            if cls not in LAYER_VARIABLES:
                return None
            group = H5_GROUP[cls] + (f"_{seen[cls]}" if cls in seen else "")
            seen[cls] = seen.get(cls, 0) + 1
            stored = f.get(f"layers/{group}/vars")
            consumed.add(group)
            var_names = LAYER_VARIABLES[cls](cfg)
            if stored is None or len(stored) != len(var_names):
                return None
            for j, name in enumerate(var_names):
                key = f"{MODEL}/layer_with_weights-{index}/{name}"
                variables[key] = np.asarray(stored[str(j)])
                if name not in NON_TRAINABLE:
                    trainable.append(key)
            index += 1
        if set(f.get("layers", {}).keys()) - consumed or any(len(f[k]) for k in f if k not in ("layers", "optimizer", "vars")):
            return None  # something this does not know about
        compile_config = config.get("compile_config")
        optimizer = f.get("optimizer/vars")
        if optimizer is not None and len(optimizer):
            slots = _optimizer_slots(compile_config)
            built = slots is not None and len(optimizer) == 2 + len(slots) * len(trainable)
            if not built and not (slots is not None and len(optimizer) == 2):
                return None
            names = ["iteration", "learning_rate"] + [
                f"slots/{key.removeprefix(MODEL + '/')}/{slot}" for key in trainable for slot in slots
            ]
            for j, name in enumerate(names):
                if j < len(optimizer):
                    variables[f"{OPTIMIZER}/{name}"] = np.asarray(optimizer[str(j)])
                else:  # compiled, never trained: Keras builds the slots as zeros when it loads the file
                    like = variables[f"{MODEL}/{name.removeprefix('slots/').rsplit('/', 1)[0]}"]
                    variables[f"{OPTIMIZER}/{name}"] = np.zeros_like(like)
    metadata = {"format_version": 1, "created": _saved_time(meta.get("date_saved")),
                "versions": {"keras": meta.get("keras_version")}}
    return ModelState(variables, config, compile_config, {k: v for k, v in metadata.items() if v is not None})


def _optimizer_slots(compile_config: Any) -> list[str] | None:
    optimizer = (compile_config or {}).get("optimizer")
    if not isinstance(optimizer, dict) or optimizer.get("module") not in ("keras.optimizers", None):
        return None
    rule = OPTIMIZER_SLOTS.get(optimizer.get("class_name"))
    settings = optimizer.get("config") or {}
    if rule is None or not isinstance(settings.get("learning_rate"), (int, float)):
        return None  # a schedule keeps no learning_rate variable
    return rule(settings)


def _saved_time(text: Any) -> float | None:
    # Keras writes "2026-12-02@00:28:51", local time
    try:
        return time.mktime(time.strptime(str(text), "%Y-%m-%d@%H:%M:%S"))
    except ValueError:
        return None


# ------------------------------------------------------------------ the summary without Keras
def light_summary(state: ModelState) -> dict[str, Any] | None:
    """Layers, output shapes and parameters of a Sequential model from its config; None if unsure."""
    config = state.model_config
    layers = _layer_list(config)
    if not layers:
        return None
    by_layer = _variables_by_layer(state, layers)
    if by_layer is None:
        return None
    out = []
    total = trainable = 0
    model_trainable = (config.get("config") or {}).get("trainable", True)
    for i, layer in enumerate(layers):
        cls, cfg = layer.get("class_name"), layer.get("config") or {}
        if cls not in LAYER_VARIABLES and cls not in NO_VARIABLES and cls not in SAME_SHAPE:
            return None
        shape = _output_shape(layers, i)
        if shape is None:
            return None
        arrays = by_layer.get(cfg.get("name"), {})
        params = sum(int(a.size) for a in arrays.values())
        total += params
        if model_trainable and cfg.get("trainable", True):
            trainable += sum(int(a.size) for n, a in arrays.items() if n not in NON_TRAINABLE)
        out.append({"name": cfg.get("name"), "class": cls, "output_shape": _shape_text(shape), "params": params})
    inner = config.get("config") or {}
    return {"class": "Sequential", "name": inner.get("name"), "layers": out, "total_params": total,
            "trainable_params": trainable}


def _variables_by_layer(state: ModelState, layers: list[dict[str, Any]]) -> dict[str, dict[str, np.ndarray]] | None:
    with_weights = [layer["config"]["name"] for layer in layers if layer.get("class_name") in LAYER_VARIABLES]
    names = state.metadata.get("layer_names") or {f"layer_with_weights-{i}": n for i, n in enumerate(with_weights)}
    if sorted(names.values()) != sorted(with_weights):
        return None
    out: dict[str, dict[str, np.ndarray]] = {}
    for key, array in state.group(MODEL).items():
        head, _, tail = key.partition("/")
        if head not in names or "/" in tail:
            return None
        out.setdefault(names[head], {})[tail] = array
    for layer in layers:  # every variable the class has, and no other
        rule = LAYER_VARIABLES.get(layer.get("class_name"))
        if rule is not None and sorted(rule(layer["config"])) != sorted(out.get(layer["config"]["name"], {})):
            return None
    return out


def _input_shape(layer: dict[str, Any]) -> list | None:
    shape = (layer.get("build_config") or {}).get("input_shape")
    return list(shape) if isinstance(shape, list) and all(d is None or isinstance(d, int) for d in shape) else None


def _output_shape(layers: list[dict[str, Any]], i: int) -> list | None:
    if i + 1 < len(layers):
        return _input_shape(layers[i + 1])
    layer = layers[i]
    shape, cls, cfg = _input_shape(layer), layer.get("class_name"), layer.get("config") or {}
    if shape is None:
        return None
    if cls == "Dense" and isinstance(cfg.get("units"), int):
        return shape[:-1] + [cfg["units"]]
    if cls in SAME_SHAPE:
        return shape
    if cls == "Flatten" and all(isinstance(d, int) for d in shape[1:]):
        return [shape[0], math.prod(shape[1:])]
    return None


def _shape_text(shape: list) -> str:
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"


__all__ = ["LAYER_VARIABLES", "OPTIMIZER_SLOTS", "describe_light", "diff_light", "light_summary", "read_light"]
