"""Keras model <-> ``ModelState``: the only code that reaches into models and optimizers.

Example::

    state = capture(model)             # copy every variable to host memory
    restore(other_model, state)        # same architecture: same variables, exactly
    model = build_model(state)         # architecture + compile config + variables
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np

from modelkeep.errors import IncompatibleModelError, UnsupportedModelError
from modelkeep.own_state import META_KEY, capture_own, restore_own
from modelkeep.state import LAYERS, MODEL, OPTIMIZER, RNG, ModelState

FORMAT_VERSION = 1


def versions() -> dict[str, str]:
    """The versions of the libraries that wrote a state."""
    import keras
    import tensorflow as tf

    from modelkeep import __version__

    return {"modelkeep": __version__, "keras": keras.__version__, "tensorflow": tf.__version__}


# --------------------------------------------------------------------------- names
def _relative_path(layer: Any, variable: Any) -> str:
    layer_path = getattr(layer, "path", None) or layer.name
    path = variable.path
    if path.startswith(layer_path + "/"):
        return path[len(layer_path) + 1 :]
    return variable.name


def _is_container(layer: Any) -> bool:
    import keras

    return isinstance(layer, keras.Model) and bool(getattr(layer, "layers", None))


def _walk_layer_keys(layers: Iterable[Any], prefix: str, out: dict[int, str]) -> None:
    index = 0
    for layer in layers:
        if not layer.weights:
            continue
        layer_prefix = f"{prefix}layer_with_weights-{index}/"
        index += 1
        if _is_container(layer):
            _walk_layer_keys(layer.layers, layer_prefix, out)
        for variable in layer.weights:
            out.setdefault(id(variable), layer_prefix + _relative_path(layer, variable))


def model_variable_keys(model: Any) -> list[tuple[str, Any]]:
    """``(structural name, variable)`` for every model variable, in ``model.weights`` order."""
    by_id: dict[int, str] = {}
    _walk_layer_keys(getattr(model, "layers", []), "", by_id)
    return _unique([(by_id.get(id(v), "variables/" + v.name), v) for v in model.weights])


def rng_variable_keys(model: Any) -> list[tuple[str, Any]]:
    """``(name, variable)`` for the seed-generator states of the model (Dropout, noise layers).

    These are the variables of ``model.variables`` that are not weights; saving them makes
    the next training step after a load draw the same random numbers as the original's.
    """
    weight_ids = {id(v) for v in model.weights}
    extra = [v for v in getattr(model, "variables", []) if id(v) not in weight_ids]
    return _unique([(f"seed_generator-{i}", v) for i, v in enumerate(extra)])


def layer_names(model: Any) -> dict[str, str]:
    """``{"layer_with_weights-0": "dense", ...}`` for the model's top-level layers."""
    with_weights = [layer for layer in getattr(model, "layers", []) if layer.weights]
    return {f"layer_with_weights-{i}": layer.name for i, layer in enumerate(with_weights)}


def optimizer_variable_keys(model: Any) -> list[tuple[str, Any]]:
    """``(structural name, variable)`` for every optimizer variable, in optimizer order."""
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None or not getattr(optimizer, "built", False):
        return []
    model_names = {id(v): k for k, v in model_variable_keys(model)}
    slot_prefixes = []
    for trainable in getattr(optimizer, "_trainable_variables", []):
        if id(trainable) in model_names:
            slot_prefixes.append((trainable.path.replace("/", "_") + "_", model_names[id(trainable)]))
    slot_prefixes.sort(key=lambda item: -len(item[0]))
    keyed = []
    for variable in optimizer.variables:
        key = variable.name
        for var_prefix, model_key in slot_prefixes:
            if variable.name.startswith(var_prefix):
                key = f"slots/{model_key}/{variable.name[len(var_prefix):]}"
                break
        keyed.append((key, variable))
    return _unique(keyed)


def _unique(pairs: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    seen: dict[str, int] = {}
    out = []
    for key, value in pairs:
        if key in seen:
            seen[key] += 1
            key = f"{key}_{seen[key]}"
        else:
            seen[key] = 0
        out.append((key, value))
    return out


# --------------------------------------------------------------------------- capture
def _to_numpy(variable: Any, copy: bool = True) -> np.ndarray:
    if not copy:
        view = _host_view(variable)
        if view is not None:
            return view
    return np.asarray(variable.numpy())


def _host_view(variable: Any) -> np.ndarray | None:
    """A read-only view of a TF variable's current value in host memory, without a copy.

    ``read_value()`` gives a tensor sharing the variable's buffer; TensorFlow copies the
    buffer before the next update of the variable while that tensor lives (copy-on-write),
    so the view keeps the value it had when read. None where this does not apply.
    """
    read = getattr(getattr(variable, "value", None), "read_value", None)
    if read is None:
        return None
    try:
        array = read()._numpy()
    except (AttributeError, TypeError, ValueError):
        return None
    if not isinstance(array, np.ndarray):
        return None
    array = array.view()
    array.flags.writeable = False
    return array


def capture(
    model: Any, *, include_optimizer: bool = True, metadata: dict | None = None, copy: bool = True
) -> ModelState:
    """Copy a Keras model's variables, config and compile config into a ``ModelState``.

    With ``copy=False`` the arrays are read-only views of the variables' values (no
    copy; a synchronous save writes straight from them); they keep the captured values
    even if training goes on, because TensorFlow copies a variable before updating it
    while a view is alive. Example::

        state = capture(model)
        state.variables["model/layer_with_weights-0/kernel"].shape
    """
    variables: dict[str, np.ndarray] = {}
    for key, variable in model_variable_keys(model):
        variables[f"{MODEL}/{key}"] = _to_numpy(variable, copy)
    if include_optimizer:
        for key, variable in optimizer_variable_keys(model):
            variables[f"{OPTIMIZER}/{key}"] = _to_numpy(variable, copy)
        for key, variable in rng_variable_keys(model):
            variables[f"{RNG}/{key}"] = _to_numpy(variable, copy)
    own, own_info = capture_own(model)
    variables.update(own)
    meta = {
        "format_version": FORMAT_VERSION,
        "created": time.time(),
        "versions": versions(),
        "layer_names": layer_names(model),
    }
    if own_info:
        meta[META_KEY] = own_info
    meta.update(metadata or {})
    return ModelState(
        variables=variables,
        model_config=model_config_of(model),
        compile_config=compile_config_of(model) if include_optimizer else None,
        metadata=meta,
    )


def state_nbytes(model: Any, *, include_optimizer: bool = True) -> int:
    """Bytes of the variables ``capture`` copies (from shapes and dtypes: nothing is read).

    Layers' own state (lookup tables) is not counted. Example::

        buffers.reserve(state_nbytes(model))
    """
    pairs = model_variable_keys(model)
    if include_optimizer:
        pairs += optimizer_variable_keys(model) + rng_variable_keys(model)
    return sum(math.prod(v.shape) * np.dtype(getattr(v.dtype, "name", v.dtype)).itemsize for _, v in pairs)


def model_config_of(model: Any) -> dict | None:
    """The serialized architecture, or ``None`` when the model has no config."""
    import keras

    try:
        return keras.saving.serialize_keras_object(model)
    except (NotImplementedError, TypeError, ValueError):
        return None


def compile_config_of(model: Any) -> dict | None:
    try:
        return model.get_compile_config()
    except (AttributeError, NotImplementedError, TypeError, ValueError):
        return None


# --------------------------------------------------------------------------- restore
def _layer_counts(keys: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for key in keys:
        layer = key.rsplit("/", 1)[0] if "/" in key else key
        counts[layer] = counts.get(layer, 0) + 1
    return counts


def _count_mismatch(pairs: list[tuple[str, Any]], saved: dict[str, np.ndarray], what: str, source: str) -> str:
    """Keras's words ("Layer 'x' expected N variables, but received M variables") when a layer
    can be named, then modelkeep's."""
    ours, theirs = _layer_counts(k for k, _ in pairs), _layer_counts(saved)
    names = {key.rsplit("/", 1)[0]: variable.path.split("/")[-2] for key, variable in pairs if "/" in variable.path}
    for layer, count in ours.items():
        if theirs.get(layer, 0) != count:
            return (
                f"Layer '{names.get(layer, layer)}' expected {count} variables, but received "
                f"{theirs.get(layer, 0)} variables during loading. load: the model has {len(pairs)} {what} "
                f"variables but {source} holds {len(saved)}."
            )
    return f"load: the model has {len(pairs)} {what} variables but {source} holds {len(saved)}."


def _check_and_assign(
    pairs: list[tuple[str, Any]], saved: dict[str, np.ndarray], what: str, source: str, *, skip_mismatch: bool = False
) -> None:
    if skip_mismatch:
        _assign_matching(pairs, saved, what, source)
        return
    if len(pairs) != len(saved):
        raise IncompatibleModelError(
            _count_mismatch(pairs, saved, what, source)
            + " The file was saved from a different architecture; build the model it was saved "
            "from, load it whole with modelkeep.load_model, or pass skip_mismatch=True."
        )
    for (_key, variable), (saved_key, array) in zip(pairs, saved.items()):
        if tuple(variable.shape) != tuple(array.shape):
            raise IncompatibleModelError(
                f"The shape of the target variable and the shape of the target value must match. "
                f"load: variable '{variable.path}' has shape {tuple(variable.shape)} in the model "
                f"but {tuple(array.shape)} in {source} (saved as '{saved_key}'). "
                "The file was saved from a different architecture."
            )
    for (_, variable), array in zip(pairs, saved.values()):
        variable.assign(array)


def _assign_matching(pairs: list[tuple[str, Any]], saved: dict[str, np.ndarray], what: str, source: str) -> None:
    """``skip_mismatch=True``: assign by structural name where the shape fits, warn for the rest."""
    skipped = []
    for key, variable in pairs:
        array = saved.get(key)
        if array is None or tuple(array.shape) != tuple(variable.shape):
            skipped.append(variable.path)
            continue
        variable.assign(array)
    if skipped:
        warnings.warn(
            f"load: skip_mismatch=True: {len(skipped)} {what} variable(s) not in {source} or of another "
            f"shape there were left as they are: {', '.join(skipped)}.",
            stacklevel=4,
        )


def restore(
    model: Any, state: ModelState, *, source: str = "the file", optimizer: bool = True, skip_mismatch: bool = False
) -> None:
    """Assign the state's variables to ``model`` (same architecture), checking every shape.

    Example::

        restore(model, read_state("weights.safetensors"))
    """
    _check_and_assign(model_variable_keys(model), state.group(MODEL), "model", source, skip_mismatch=skip_mismatch)
    if skip_mismatch:
        return  # a partial load: layers' own state and the optimizer's are not matched
    restore_own(model, {f"{LAYERS}/{k}": v for k, v in state.group(LAYERS).items()}, state.metadata.get(META_KEY), source=source)
    if optimizer:
        restore_rng(model, state, source=source)
    saved_optimizer = state.group(OPTIMIZER)
    model_optimizer = getattr(model, "optimizer", None)
    if not (optimizer and saved_optimizer and model_optimizer is not None):
        return
    if not model_optimizer.built:
        model_optimizer.build(model.trainable_variables)
    pairs = optimizer_variable_keys(model)
    if len(pairs) != len(saved_optimizer):
        warnings.warn(
            f"load: the optimizer has {len(pairs)} variables but {source} holds "
            f"{len(saved_optimizer)}; the optimizer state was not restored. Compile the model "
            "with the optimizer it was saved with to carry its state.",
            stacklevel=2,
        )
        return
    _check_and_assign(pairs, saved_optimizer, "optimizer", source)


def restore_rng(model: Any, state: ModelState, *, source: str = "the file") -> None:
    """Assign saved seed-generator states, when the file has them for this model."""
    saved = state.group(RNG)
    pairs = rng_variable_keys(model)
    if saved and len(saved) == len(pairs):
        _check_and_assign(pairs, saved, "seed-generator", source)


def build_model(
    state: ModelState,
    *,
    custom_objects: dict | None = None,
    compile: bool = True,
    safe_mode: bool = True,
    source: str = "the file",
) -> Any:
    """Rebuild the Keras model a state was captured from, compiled, with its variables."""
    import keras

    from modelkeep.formats.legacy_semantics import ensure_registered

    ensure_registered()  # configs translated from Keras 2 may name modelkeep's keras2_hard_sigmoid

    if state.model_config is None:
        raise UnsupportedModelError(
            f"load_model: {source} holds weights but no model config, so the architecture "
            "cannot be rebuilt. Build the model in code and call modelkeep.load_weights(model, path)."
        )
    try:
        model = keras.saving.deserialize_keras_object(
            state.model_config, custom_objects=custom_objects, safe_mode=safe_mode
        )
    except (TypeError, ValueError) as exc:
        raise deserialization_error(exc, source) from exc
    if compile and state.compile_config:
        try:
            model.compile_from_config(state.compile_config)
        except (TypeError, ValueError) as exc:
            warnings.warn(
                f"load_model: the compile config in {source} could not be restored ({exc}); "
                "the model is returned uncompiled. Call model.compile(...) yourself.",
                stacklevel=2,
            )
    restore(model, state, source=source, optimizer=compile)
    return model


def deserialization_error(exc: Exception, source: str) -> UnsupportedModelError:
    """The error for an architecture Keras could not rebuild, of the type Keras raised."""
    from modelkeep.errors import DeserializationError

    cls = DeserializationError if isinstance(exc, TypeError) else UnsupportedModelError
    return cls(_explain_deserialize_error(exc, source))


def _explain_deserialize_error(exc: Exception, source: str) -> str:
    """Keras's own words first (code matches on them), then what to do, on one line that names
    the file (the CLI prints one line); the rest of Keras's text (the config) after it."""
    text, _, detail = str(exc).strip().partition("\n")
    detail = f"\n{detail.strip()}" if detail.strip() else ""
    if "Lambda" in text or "lambda" in text or "safe_mode" in text:
        return (
            f"{text} load_model: {source} contains a Lambda layer whose Python bytecode modelkeep will "
            "not run by default. If you trust the file, pass safe_mode=False; otherwise "
            "rebuild the model in code and load its weights." + detail
        )
    import re

    unknown = sorted(set(re.findall(r"Could not locate (?:class|function) '([^']+)'", str(exc))))
    named = f" It uses {', '.join(repr(n) for n in unknown)}, not registered here." if unknown else ""
    return (
        f"{text} load_model: the architecture in {source} could not be rebuilt.{named} If it uses a "
        "custom layer or model class, register it with @keras.saving.register_keras_serializable() "
        "or pass custom_objects={'Name': Class}; otherwise build the model in code and call "
        "modelkeep.load_weights(model, path)." + detail
    )


# --------------------------------------------------------------------------- training state
# What ``fit`` changes besides weights and optimizer variables: seed-generator states (and
# any other non-weight variable a layer keeps), metric accumulators, Keras's global
# SeedGenerator. Exact resume (``modelkeep.checkpoint.resume``) saves and restores these.
SEED_STATES = "rng/layers"
METRIC_STATES = "metrics"
KERAS_GLOBAL_SEED = "rng/keras_global_seed_generator"


def training_state_keys(model: Any) -> list[tuple[str, Any]]:
    """``(key, variable)`` for a model's seed states and metric accumulators, in a stable order.

    Example::

        [k for k, _ in training_state_keys(model)]  # ['rng/layers/0', 'metrics/0/0', ...]
    """
    metric_vars = []
    for i, metric in enumerate(getattr(model, "metrics", [])):
        metric_vars += [(f"{METRIC_STATES}/{i}/{j}", v) for j, v in enumerate(metric.variables)]
    metric_ids = {id(v) for _, v in metric_vars}
    seeds = [v for _, v in rng_variable_keys(model) if id(v) not in metric_ids]
    return [(f"{SEED_STATES}/{i}", v) for i, v in enumerate(seeds)] + metric_vars


def capture_training_state(model: Any) -> dict[str, np.ndarray]:
    """Copy seed states, metric accumulators and Keras's global SeedGenerator to host memory."""
    arrays = {key: _to_numpy(v) for key, v in training_state_keys(model)}
    generator = _keras_global_seed_generator(create=False)
    if generator is not None:
        arrays[KERAS_GLOBAL_SEED] = _to_numpy(generator.state)
    return arrays


def restore_training_state(model: Any, arrays: dict[str, np.ndarray]) -> list[str]:
    """Assign what :func:`capture_training_state` copied; return notes on what did not fit."""
    notes = []
    for key, variable in training_state_keys(model):
        saved = arrays.get(key)
        if saved is None or tuple(saved.shape) != tuple(variable.shape):
            notes.append(f"{key} ({variable.path})")
            continue
        variable.assign(saved)
    if KERAS_GLOBAL_SEED in arrays:
        generator = _keras_global_seed_generator(create=True)
        generator.state.assign(arrays[KERAS_GLOBAL_SEED])
    return notes


def _keras_global_seed_generator(*, create: bool) -> Any:
    from keras.src.backend.common import global_state
    from keras.src.random import seed_generator

    if create:
        return seed_generator.global_seed_generator()
    return global_state.get_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR)


def build_for_training(model: Any, data_batch: Any) -> None:
    """Create every variable ``fit`` would (layers, loss, metrics, optimizer) from one batch.

    ``data_batch`` is ``(x, y, sample_weight)`` of arrays, tensors or ``tf.TensorSpec``s.
    """
    model._symbolic_build(data_batch=data_batch)
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and not optimizer.built:
        optimizer.build(model.trainable_variables)
