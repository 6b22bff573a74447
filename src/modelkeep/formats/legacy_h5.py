"""Keras 2 ``.h5`` files (``model.save("x.h5")``, ``save_weights("x.h5")``) into Keras 3 models.

Weights are matched layer by layer (the file's ``layer_names`` against the model's layers
with weights), within a layer by name, then by leaf name and shape; cuDNN-only layers'
weights are converted; optimizer state comes by name, or by position for Keras 2.0-2.3.

Example::

    with h5py.File("old_model.h5") as f:
        model = load_h5_model(Path("old_model.h5"), f)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from modelkeep.capture import model_variable_keys
from modelkeep.errors import IncompatibleModelError, UnsupportedModelError
from modelkeep.formats import legacy_config, legacy_semantics
from modelkeep.formats.legacy import (
    _ITERATIONS,
    _LEARNING_RATE,
    SLOT_NAMES,
    _assign_optimizer,
    _captured,
    _path_candidates,
    build_keras3_model,
)
from modelkeep.state import ModelState
from modelkeep.storage import guard


def _h5_text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _h5_layer_weights(group: Any) -> list[list[tuple[str, np.ndarray]]]:
    """Per layer with weights, in file order: ``[(Keras 2 weight name, array), ...]``."""
    out = []
    for raw in group.attrs.get("layer_names", []):
        layer = group[_h5_text(raw)]
        names = [_h5_text(w) for w in layer.attrs.get("weight_names", [])]
        if names:
            out.append([(n.removesuffix(":0"), np.asarray(layer[n])) for n in names])
    return out


def _match_layer(k3: list[tuple[str, Any]], k2: list[tuple[str, np.ndarray]]) -> list[int] | None:
    """For each Keras 3 variable, the index of its Keras 2 weight (names first, then leaf+shape)."""
    by_name = []
    for _, variable in k3:
        paths = _path_candidates(variable.path)
        hits = [i for i, (n, a) in enumerate(k2) if any(p == n or p.endswith("/" + n) for p in paths) and a.shape == tuple(variable.shape)]
        by_name.append(hits[0] if len(hits) == 1 else None)
    if None not in by_name and len(set(by_name)) == len(by_name):
        return by_name
    used: set[int] = set()
    order = []
    for key, variable in k3:
        leaf = key.rsplit("/", 1)[-1]
        leaves = [p.rsplit("/", 1)[-1] for p in _path_candidates(leaf)]
        pick = next((i for i, (n, a) in enumerate(k2) if i not in used and n.rsplit("/", 1)[-1] in leaves and a.shape == tuple(variable.shape)), None)
        if pick is None:
            return None
        used.add(pick)
        order.append(pick)
    return order


def load_h5_into(model: Any, handle: Any, source: str, *, optimizer: bool = True) -> None:
    """Load a Keras 2 HDF5 file's weights (and optimizer state) into a Keras 3 model."""
    group = handle["model_weights"] if "model_weights" in handle else handle
    file_layers = _h5_layer_weights(group)
    model_layers: dict[str, list[tuple[str, Any]]] = {}
    for key, variable in model_variable_keys(model):
        model_layers.setdefault(key.split("/", 1)[0], []).append((key, variable))
    if len(file_layers) != len(model_layers):
        raise IncompatibleModelError(
            f"load: the model has {len(model_layers)} layers with weights but {source} holds "
            f"{len(file_layers)}. The file was saved from a different architecture; build the "
            "model it was saved from, or load it whole with modelkeep.load_model."
        )
    k3_key_of: dict[str, str] = {}
    file_order: list[tuple[str, str]] = []  # (Keras 2 name, model key) in the file's weight order
    for (layer_key, k3), k2 in zip(model_layers.items(), file_layers):
        k2 = _cudnn_converted(k3, k2)
        order = _match_layer(k3, k2) if len(k3) == len(k2) else None
        if order is None:
            shown = ", ".join(f"{n} {a.shape}" for n, a in k2[:4])
            raise IncompatibleModelError(
                f"load: layer {layer_key} of the model has weights "
                f"{[(v.path, tuple(v.shape)) for _, v in k3][:4]} but {source} holds {shown} there. "
                "The file was saved from a different architecture."
            )
        for (key, variable), index in zip(k3, order):
            variable.assign(k2[index][1])
            k3_key_of[k2[index][0]] = key
        key_at = {index: key for (key, _), index in zip(k3, order)}
        file_order.extend((k2[i][0], key_at[i]) for i in range(len(k2)))
    if optimizer and "optimizer_weights" in handle and getattr(model, "optimizer", None) is not None:
        values, problem = _h5_optimizer(handle["optimizer_weights"], k3_key_of, model, file_order, _h5_keras_version(handle))
        _assign_optimizer(model, values, source, problem=problem)


def _cudnn_converted(k3: list[tuple[str, Any]], k2: list[tuple[str, np.ndarray]]) -> list[tuple[str, np.ndarray]]:
    """A Keras 2 CuDNNLSTM/CuDNNGRU layer's weights (bias of 8 or 6 units) in LSTM/GRU form."""
    if len(k2) != len(k3) or len(k2) % 3 or not all(tuple(v.shape) != a.shape for (_, v), (_, a) in zip(k3[2::3], k2[2::3])):
        return k2
    out = []
    for i in range(0, len(k2), 3):  # a Bidirectional holds two triples
        converted = legacy_semantics.from_cudnn([a for _, a in k2[i : i + 3]])
        if converted is None:
            return k2
        out.extend(zip([n for n, _ in k2[i : i + 3]], converted))
    return out


def _h5_optimizer(group: Any, k3_key_of: dict[str, str], model: Any = None, file_order: list[tuple[str, str]] | None = None,
                  keras_version: str | None = None) -> tuple[dict[str, np.ndarray], str | None]:
    """Optimizer values by Keras 3 key, from Keras 2 names (new and legacy optimizers) or Keras 3's.

    Keras 2.0-2.3 names say nothing (``Variable_3:0``): then the list is read by position
    (``legacy_optimizer``). Returns the values and, when they could not be matched, why.
    """
    values: dict[str, np.ndarray] = {}
    flat_key_of = {name.replace("/", "_"): key for name, key in k3_key_of.items()}
    listed = [(_h5_text(raw), np.asarray(group[_h5_text(raw)])) for raw in group.attrs.get("weight_names", [])]
    for name, array in listed:
        parts = name.removesuffix(":0").split("/")
        if parts[-1] in _ITERATIONS:
            values["iteration"] = array
        elif parts[-1] in _LEARNING_RATE:
            values["learning_rate"] = array
        elif _keras2_slot(parts, k3_key_of):  # "Adam/m/dense/kernel", "Adam/dense/kernel/m", under wrappers too
            key, slot = _keras2_slot(parts, k3_key_of)
            values[f"slots/{key}/{slot}"] = array
        elif len(parts) == 2:  # Keras 3's own .h5: "adam/sequential_dense_kernel_momentum"
            for slot in _KERAS3_SLOTS:
                flat = parts[1].removesuffix("_" + slot)
                if flat != parts[1] and flat in flat_key_of:
                    values[f"slots/{flat_key_of[flat]}/{slot}"] = array
                    break
    if any(k.startswith("slots/") for k in values) or model is None or len(listed) <= 1:
        return values, None
    from modelkeep.formats import legacy_optimizer

    trainable_ids = {id(v) for v in model.trainable_variables}
    variable_of = dict(model_variable_keys(model))
    trainable = [(name, k) for name, k in file_order or [] if id(variable_of[k]) in trainable_ids]
    # Keras 2.0 collected the trainable weights sorted by variable name; later versions in layer order
    orders = [trainable, sorted(trainable)]
    if legacy_semantics._version(keras_version) is not None and legacy_semantics._version(keras_version) < (2, 1):
        orders.reverse()
    optimizer = model.optimizer
    problem = None
    for order in orders:
        positional, problem = legacy_optimizer.positional_state(
            type(optimizer).__name__, [a for _, a in listed], [(k, tuple(variable_of[k].shape)) for _, k in order],
            amsgrad=bool(getattr(optimizer, "amsgrad", False)))
        if not problem:
            return positional, None
    return {}, f"its {len(listed)} arrays are unnamed (Keras 2.0-2.3) and {problem}"


def _keras2_slot(parts: list[str], k3_key_of: dict[str, str]) -> tuple[str, str] | None:
    for i in range(len(parts) - 1):
        if parts[i] in SLOT_NAMES and "/".join(parts[i + 1 :]) in k3_key_of:  # new optimizers
            return k3_key_of["/".join(parts[i + 1 :])], SLOT_NAMES[parts[i]]
        if parts[-1] in SLOT_NAMES and "/".join(parts[i:-1]) in k3_key_of:  # legacy optimizers
            return k3_key_of["/".join(parts[i:-1])], SLOT_NAMES[parts[-1]]
    return None


_KERAS3_SLOTS = ("velocity_hat", "average_gradient", "momentum", "velocity", "accumulator")


def _h5_keras_version(handle: Any) -> str | None:
    raw = handle.attrs.get("keras_version")
    if raw is None and "model_weights" in handle:
        raw = handle["model_weights"].attrs.get("keras_version")
    return _h5_text(raw) if raw is not None else None


def load_h5_model(path: Path, handle: Any, **kwargs: Any) -> Any:
    """A full Keras 3 model from a Keras 2 ``model.save("x.h5")`` file."""
    raw = handle.attrs.get("model_config")
    if raw is None:
        raise UnsupportedModelError(
            f"load_model: {path} holds weights only (no model_config), so the architecture cannot "
            "be rebuilt. Build the model in code and call modelkeep.load_weights(model, path)."
        )
    training = handle.attrs.get("training_config")
    config = guard.load_json(_h5_text(raw), source=path, what="model_config", expect=None)
    training = guard.load_json(_h5_text(training), source=path, what="training_config", expect=None) if training is not None else None
    model = build_keras3_model(config, training, source=str(path), keras_version=_h5_keras_version(handle), **kwargs)
    load_h5_into(model, handle, str(path), optimizer=kwargs.get("compile", True))
    return model


def read_keras2_h5(path: Path, handle: Any, variables: dict[str, np.ndarray]) -> ModelState:
    """An HDF5 file without modelkeep's header (written by Keras 2 or Keras 3's legacy writer)."""
    if handle.attrs.get("model_config") is not None:
        try:
            return _captured(load_h5_model(path, handle), "keras-h5")
        except UnsupportedModelError as exc:
            if not getattr(exc, "unknown_class", False):
                raise
        config = guard.load_json(_h5_text(handle.attrs["model_config"]), source=path, what="model_config", expect=None)
        k3 = legacy_config.to_keras3_model_config(config, strict=False, keras_version=_h5_keras_version(handle))
        return ModelState(variables, k3, None, {"written_by": "keras-h5"})
    return ModelState(variables, None, None, {"written_by": "keras-h5"})
