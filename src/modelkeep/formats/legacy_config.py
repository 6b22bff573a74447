"""Keras 2 (tf-keras) configs <-> Keras 3 configs, as plain JSON-like data.

TF2-era files hold Keras 2 configs: layers as ``{"class_name", "config"}`` without a module,
``batch_input_shape``, RNN arguments Keras 3 dropped (``time_major``), dtype policies as
``{"class_name": "Policy"}``, and a ``training_config`` instead of a compile config. Keras 3's
own legacy loader stumbles on several of these; this module rewrites them into the form
``keras.saving.deserialize_keras_object`` reads, and back (for ``.h5`` files tf-keras loads).

Example::

    k3 = to_keras3_model_config(json.loads(h5.attrs["model_config"]))
    model = keras.saving.deserialize_keras_object(k3)
    compile_config = to_keras3_compile_config(json.loads(h5.attrs["training_config"]))
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass
from typing import Any

from modelkeep.errors import UnsupportedModelError
from modelkeep.formats import legacy_semantics, legacy_tfops, legacy_tfraw

MODELS = ("Functional", "Model", "Sequential")
#: Keras 2 layers that record TensorFlow ops or Python code, which Keras 3 cannot rebuild
TF_OP_LAYERS = ("TFOpLambda", "SlicingOpLambda", "TensorFlowOpLayer")
#: Keras 2 arguments with no Keras 3 counterpart whose dropping changes nothing
_HARMLESS = {"time_major", "fn", "implementation", "ragged", "fused", "renorm", "renorm_clipping",
             "renorm_momentum", "virtual_batch_size", "adjustment", "is_legacy_optimizer", "jit_compile"}
_SUB_OBJECTS = {
    "initializer": "keras.initializers",
    "regularizer": "keras.regularizers",
    "constraint": "keras.constraints",
}


# ------------------------------------------------------------------------- helpers
def plain(obj: Any) -> Any:
    """Undo SavedModel metadata encodings: ``__tuple__`` wrappers and ``shared_object_id``."""
    if isinstance(obj, dict):
        if obj.get("class_name") == "__tuple__" and "items" in obj:
            return [plain(v) for v in obj["items"]]
        return {k: plain(v) for k, v in obj.items() if k != "shared_object_id"}
    if isinstance(obj, list | tuple):
        return [plain(v) for v in obj]
    return obj


def _accepted_args(cls: type) -> set[str] | None:
    """Constructor arguments of a Keras 3 class (``None``: accept anything)."""
    names: set[str] = {"input_shape", "input_dim"}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            params = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):
            return None
        names.update(p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return names - {"self"}


def _filter(config: dict, cls: type, what: str) -> dict:
    accepted = _accepted_args(cls)
    if accepted is None or not str(getattr(cls, "__module__", "")).startswith("keras"):
        return config
    kept = {k: v for k, v in config.items() if k in accepted}
    dropped = {k: v for k, v in config.items() if k not in accepted}
    if dropped.get("time_major"):
        raise UnsupportedModelError(
            f"load_model: {what} was saved with time_major=True, which Keras 3 does not have. "
            "Build the model in code with batch-major inputs and load its weights."
        )
    noisy = {k: v for k, v in dropped.items() if k not in _HARMLESS and v not in (None, False, 0, "", [], {})
             and not (k in legacy_semantics.KERAS2_DEFAULTS and legacy_semantics.KERAS2_DEFAULTS[k] in (v, None))}
    if noisy:
        warnings.warn(f"load_model: {what}: Keras 3 has no argument(s) {noisy}; they were dropped.", stacklevel=3)
    return kept


def _sub_object(value: Any, module: str) -> Any:
    if isinstance(value, dict) and "class_name" in value and "module" not in value:
        return {"module": module, "class_name": value["class_name"], "config": value.get("config", {}), "registered_name": None}
    return value


def _policy_name(dtype: Any) -> Any:
    if isinstance(dtype, dict):
        return (dtype.get("config") or {}).get("name", "float32")
    return dtype


# ------------------------------------------------------------------------- classes
def _layer_class(class_name: str, custom_objects: dict | None) -> tuple[type | None, bool]:
    """(class, is_builtin) for a Keras 2 class name, looked up in Keras 3."""
    import keras

    if custom_objects and class_name in custom_objects:
        return custom_objects[class_name], False
    registered = keras.saving.get_registered_object(class_name)
    if registered is not None:
        return registered, False
    if class_name in ("Functional", "Model"):
        return keras.Model, True
    found = getattr(keras.layers, class_name, None)
    if found is None and class_name == "Sequential":
        found = keras.Sequential
    return (found, True) if isinstance(found, type) else (None, False)


def _refuse(class_name: str, name: str) -> UnsupportedModelError:
    if class_name in TF_OP_LAYERS:
        return UnsupportedModelError(
            f"load_model: layer '{name}' ({class_name}) records a TensorFlow op call (tf.* on a "
            "Keras tensor), which Keras 3 cannot rebuild. Build the model in code (use keras.ops "
            "or a layer for that step) and load the file's weights with "
            "modelkeep.load_weights(model, path)."
        )
    error = UnsupportedModelError(
        f"load_model: layer '{name}' is of class '{class_name}', which is not a Keras 3 layer "
        "and is not registered. Register it with @keras.saving.register_keras_serializable() "
        f"or pass custom_objects={{'{class_name}': {class_name}}}; or build the model in code "
        "and load the file's weights with modelkeep.load_weights(model, path)."
    )
    error.unknown_class = True  # type: ignore[attr-defined]
    return error


# ------------------------------------------------------------------------- Keras 2 -> 3
def to_keras3_model_config(config: dict, *, custom_objects: dict | None = None, safe_mode: bool = True,
                           strict: bool = True, keras_version: str | None = None) -> dict:
    """A Keras 2 model config (``{"class_name", "config"}``) in Keras 3's serialized form.

    ``strict=False`` leaves classes unknown here as registered names for Keras to resolve
    later (with the caller's ``custom_objects``) instead of raising. ``keras_version`` (of
    the writer; default: the config's own ``keras_version``) decides the defaults of
    arguments old Keras versions did not write (``legacy_semantics``).
    """
    legacy_semantics.ensure_registered()
    version = keras_version or config.get("keras_version")
    return _layer(plain(config), _Options(custom_objects, safe_mode, strict, version))


@dataclass(frozen=True)
class _Options:
    custom_objects: dict | None
    safe_mode: bool
    strict: bool
    keras_version: str | None = None


def _layer(entry: dict, opts: _Options) -> dict:
    class_name = entry.get("class_name")
    raw = entry.get("config") or {}
    # Keras 2.0-2.2 wrote a Sequential's config as the bare list of its layers
    config = {"name": entry.get("name") or "sequential", "layers": raw} if isinstance(raw, list) else dict(raw)
    name = config.get("name", entry.get("name", "?"))
    if class_name in MODELS:
        out = _model(class_name, config, opts)
    elif _layer_class(class_name, opts.custom_objects)[0] is None and _op_module(entry):
        # an op node of a Keras 3 config (Keras 3's own .h5 drops its module): Keras 3 rebuilds it
        out = {**entry, "module": _op_module(entry), "registered_name": None}
    else:
        if _layer_class(class_name, opts.custom_objects)[1] or class_name in legacy_semantics.RENAMED:
            # a Keras built-in: what its Keras 2 config meant, in Keras 3's words
            class_name, config = legacy_semantics.translate(class_name, config, keras_version=opts.keras_version, name=name)
        cls, builtin = _layer_class(class_name, opts.custom_objects)
        if cls is None and opts.strict:
            raise _refuse(class_name, name)
        if class_name == "Lambda" and opts.safe_mode:
            raise UnsupportedModelError(
                f"load_model: layer '{name}' is a Lambda layer; its function is stored as Python "
                "bytecode, which modelkeep does not run by default (it can execute anything, and "
                "only works on the Python version that wrote it). If you trust the file, pass "
                "safe_mode=False; otherwise build the model in code and load the file's weights "
                "with modelkeep.load_weights(model, path)."
            )
        config = _layer_config(class_name, config, opts)
        if builtin and cls is not None:
            config = _filter(config, cls, f"layer '{name}' ({class_name})")
            out = {"module": "keras.layers", "class_name": class_name, "config": config, "registered_name": None}
        else:
            out = {"module": None, "class_name": class_name, "config": config, "registered_name": class_name}
    if "inbound_nodes" in entry:
        out["name"] = entry.get("name", name)
        out["inbound_nodes"] = entry["inbound_nodes"]
    return out


def _op_module(entry: dict) -> str | None:
    """The ``keras.src.ops`` module of an op node (``NotEqual`` from ``mask_zero``) in a Keras 3 config."""
    import importlib

    if str(entry.get("module") or "").startswith("keras.src.ops"):
        return entry["module"]
    if not any(isinstance(node, dict) for node in entry.get("inbound_nodes") or []):
        return None  # Keras 2 configs have no op nodes
    for name in ("numpy", "math", "nn", "core"):
        module = importlib.import_module(f"keras.src.ops.{name}")
        if isinstance(getattr(module, entry.get("class_name", ""), None), type):
            return module.__name__
    return None


def _layer_config(class_name: str, config: dict, opts: _Options) -> dict:
    if class_name == "Lambda" and "function_type" in config:
        config = _lambda_config(config)
    config.pop("batch_input_shape", None) if class_name != "InputLayer" else None
    if "dtype" in config:
        config["dtype"] = _policy_name(config["dtype"])
    if class_name == "InputLayer":
        if "batch_input_shape" in config:
            config["batch_shape"] = config.pop("batch_input_shape")
        config.pop("ragged", None)
    if class_name in ("BatchNormalization", "LayerNormalization") and isinstance(config.get("axis"), list):
        axis = config["axis"]
        config["axis"] = axis[0] if len(axis) == 1 else axis
    for key, value in list(config.items()):
        if key.endswith("initializer") and not str(opts.keras_version or "").startswith("3"):
            value = config[key] = legacy_semantics.initializer(value)
        for suffix, module in _SUB_OBJECTS.items():
            if key.endswith(suffix):
                config[key] = _sub_object(value, module)
        if key in ("layer", "backward_layer", "cell") and isinstance(value, dict) and "class_name" in value:
            config[key] = _layer(value, opts)
        if key == "cells" and isinstance(value, list):
            config[key] = [_layer(v, opts) for v in value]
    return config


def _lambda_config(config: dict) -> dict:
    """A Keras 2 ``Lambda`` config (``function`` + ``function_type``, ``module``) in Keras 3's form.

    Keras 2 stores a lambda as ``[base64 marshal bytecode, defaults, closure]``, Keras 3 as
    ``{"class_name": "__lambda__", "config": {"code", "defaults", "closure"}}`` (the same
    encoding); a named function becomes a reference Keras 3 resolves by name. Only reached
    with ``safe_mode=False``.
    """
    config = dict(config)
    name = config.get("name", "?")
    module = config.pop("module", None)
    config["function"] = _function(config.get("function"), config.pop("function_type", "lambda"), module, name)
    shape_type = config.pop("output_shape_type", "raw")
    shape_module = config.pop("output_shape_module", None)
    if config.get("output_shape") is None:
        config.pop("output_shape", None)
    elif shape_type != "raw":
        config["output_shape"] = _function(config["output_shape"], shape_type, shape_module, name)
    return config


def _function(value: Any, kind: str, module: Any, layer: str) -> Any:
    if kind != "lambda":  # a named function of `module`: custom_objects or that module provides it
        return {"module": module, "class_name": "function", "config": value, "registered_name": value}
    code, defaults, closure = (list(value) + [None, None])[:3] if isinstance(value, (list, tuple)) else (value, None, None)
    _check_bytecode(code, layer)
    return {"class_name": "__lambda__", "config": {"code": code, "defaults": defaults, "closure": closure}}


def _check_bytecode(code: Any, layer: str) -> None:
    """Refuse, saying why, bytecode this Python cannot read (it was written by another version)."""
    import binascii
    import marshal
    import sys
    import types

    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    try:
        loaded = marshal.loads(binascii.a2b_base64(str(code).encode("ascii")))
        problem = None if isinstance(loaded, types.CodeType) else f"it holds a {type(loaded).__name__}, not code"
    except (ValueError, EOFError, TypeError, binascii.Error) as exc:
        problem = str(exc)
    if problem is not None:
        raise UnsupportedModelError(
            f"load_model: layer '{layer}' is a Lambda layer whose function is Python bytecode that "
            f"Python {version} cannot read ({problem}). Bytecode only runs on the Python version that "
            "wrote it, so this file was saved by another one: load it with that version, or build the "
            "model in code and load the file's weights with modelkeep.load_weights(model, path)."
        )


def _model(class_name: str, config: dict, opts: _Options) -> dict:
    raw = config.get("layers", [])
    raw_nested = {entry.get("name") for entry in raw if entry.get("class_name") in MODELS}
    raw = [legacy_tfraw.as_tf_op_lambda(e) if e.get("class_name") == "TensorFlowOpLayer" else e for e in raw]
    layers = [legacy_tfops.to_keras3_layer({**entry, "inbound_nodes": _shift_refs(entry.get("inbound_nodes"), raw_nested)})
              if entry.get("class_name") in legacy_tfops.OP_LAYERS else _layer(entry, opts) for entry in raw]
    if class_name == "Sequential":
        first = (config.get("layers") or [{}])[0].get("config", {})
        if layers and layers[0]["class_name"] != "InputLayer" and first.get("batch_input_shape"):
            layers.insert(0, _input_layer(first["batch_input_shape"], first.get("dtype"), config.get("name", "sequential")))
        body = {"name": config.get("name"), "trainable": config.get("trainable", True), "layers": layers}
        return {"module": "keras", "class_name": "Sequential", "config": body, "registered_name": None}
    # Keras 2 counts a nested model's own first node; Keras 3 models have none (Keras 3
    # already subtracts it for Functional models named in input/output layers).
    nested = {entry["name"] for entry in layers if entry.get("class_name") in ("Sequential", "Functional")}
    sequential = {entry["name"] for entry in layers if entry.get("class_name") == "Sequential"}
    for entry in layers:
        entry["inbound_nodes"] = _shift_refs(entry.get("inbound_nodes", []), nested)
        if entry.get("class_name") in _RECURRENT:
            entry["inbound_nodes"] = [_initial_state_node(node) for node in entry["inbound_nodes"]]
    layers, renamed = legacy_tfraw.valid_op_names(layers)
    body = {
        "name": config.get("name"),
        "trainable": config.get("trainable", True),
        "layers": layers,
        "input_layers": _single(_shift_refs(config.get("input_layers"), sequential)),
        "output_layers": legacy_tfraw.rename_refs(_single(_shift_refs(config.get("output_layers"), sequential)), renamed),
    }
    return {"module": "keras.src.models.functional", "class_name": "Functional", "config": body, "registered_name": "Functional"}


_RECURRENT = ("LSTM", "GRU", "SimpleRNN", "RNN", "ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D", "Bidirectional")


def _initial_state_node(node: Any) -> Any:
    """A Keras 2 RNN call node ``[[x...], [h...], [c...]]`` as Keras 3's ``layer(x, initial_state=[h, c])``.

    Keras 2 recorded ``initial_state`` tensors as extra inbound tensors of the node; Keras 3
    would pass them as inputs.
    """
    if not (isinstance(node, list) and len(node) > 1 and all(_is_ref(r) for r in node)):
        return node

    tensor = legacy_semantics._tensor
    kwargs = dict(node[0][3]) if len(node[0]) > 3 and isinstance(node[0][3], dict) else {}
    kwargs["initial_state"] = [tensor(r) for r in node[1:]]
    return {"args": [tensor(node[0])], "kwargs": kwargs}


def _is_ref(value: Any) -> bool:
    return isinstance(value, list) and len(value) >= 3 and isinstance(value[0], str) and isinstance(value[1], int)


def _single(refs: Any) -> Any:
    """Keras 2 writes one input or output as a one-element list and unwraps it when it builds the
    model (a single tensor, not a list of one); Keras 3 would keep the list, so unwrap it here."""
    if isinstance(refs, list) and len(refs) == 1 and _is_ref(refs[0]):
        return refs[0]
    return refs


def _shift_refs(refs: Any, sequential: set[str]) -> Any:
    """Node references ``[layer, node_index, tensor_index, ...]`` to Sequential layers, minus one."""
    if isinstance(refs, list) and len(refs) >= 3 and isinstance(refs[0], str) and isinstance(refs[1], int):
        if refs[0] in sequential and refs[1] > 0:
            return [refs[0], refs[1] - 1, *refs[2:]]
        return refs
    if isinstance(refs, list):
        return [_shift_refs(r, sequential) for r in refs]
    return refs


def _input_layer(batch_shape: list, dtype: Any, model_name: str) -> dict:
    config = {"batch_shape": batch_shape, "dtype": _policy_name(dtype) or "float32", "sparse": False, "name": f"{model_name}_input"}
    return {"module": "keras.layers", "class_name": "InputLayer", "config": config, "registered_name": None}


# ------------------------------------------------------------------------- compile config
def to_keras3_compile_config(training_config: dict | None, *, single_output: bool = True) -> dict | None:
    """A Keras 2 ``training_config`` as a Keras 3 compile config (``model.compile_from_config``)."""
    if not training_config:
        return None
    tc = plain(training_config)
    if "optimizer" in tc and "optimizer_config" not in tc:
        return tc  # Keras 3's own .h5 writer stores its compile config as is
    metrics = _metrics(tc.get("metrics"), single_output)
    weighted = _metrics(tc.get("weighted_metrics"), single_output)
    return {
        "optimizer": to_keras3_optimizer(tc.get("optimizer_config")),
        "loss": _loss(tc.get("loss")),
        "loss_weights": tc.get("loss_weights"),
        "metrics": metrics,
        "weighted_metrics": weighted,
        "run_eagerly": False,
        "steps_per_execution": 1,
        "jit_compile": False,
    }


def to_keras3_optimizer(config: dict | None) -> Any:
    import keras

    if not config:
        return "rmsprop"
    class_name = config["class_name"].split(">")[-1]
    if class_name.startswith("LossScaleOptimizer") and "inner_optimizer" in (config.get("config") or {}):
        # Keras 3's compile wraps the optimizer itself under a mixed_float16 policy
        return to_keras3_optimizer(config["config"]["inner_optimizer"])
    cls = getattr(keras.optimizers, class_name, None)
    if cls is None:
        raise UnsupportedModelError(
            f"load_model: the file's optimizer '{config['class_name']}' has no Keras 3 counterpart. "
            "Load with compile=False and compile the model yourself."
        )
    body = dict(config.get("config") or {})
    if "lr" in body:
        body.setdefault("learning_rate", body.pop("lr"))
    if body.get("decay"):
        warnings.warn(
            f"load_model: the file's {class_name} used decay={body['decay']}, which Keras 3 optimizers do "
            "not have; use a keras.optimizers.schedules learning rate instead. It was dropped.",
            stacklevel=3,
        )
    body.pop("decay", None)
    if isinstance(body.get("learning_rate"), dict):
        body["learning_rate"] = _sub_object(body["learning_rate"], "keras.optimizers.schedules")
    body = _filter(body, cls, f"optimizer {class_name}")
    return {"module": "keras.optimizers", "class_name": class_name, "config": body, "registered_name": None}


def _loss(loss: Any) -> Any:
    import keras

    if isinstance(loss, dict) and "class_name" in loss:
        cls = getattr(keras.losses, loss["class_name"], None)
        if cls is None:
            return loss.get("config", {}).get("fn") or loss["class_name"]
        body = dict(loss.get("config") or {})
        if body.get("reduction") == "auto":
            body["reduction"] = "sum_over_batch_size"
        body = _filter(body, cls, f"loss {loss['class_name']}")
        return {"module": "keras.losses", "class_name": loss["class_name"], "config": body, "registered_name": None}
    if isinstance(loss, dict):
        return {k: _loss(v) for k, v in loss.items()}
    if isinstance(loss, list):
        return [_loss(v) for v in loss]
    return loss


def _metric(metric: Any) -> Any:
    import keras

    if not isinstance(metric, dict):
        return metric
    config = metric.get("config") or {}
    if metric.get("class_name") == "MeanMetricWrapper":
        name, fn = config.get("name"), config.get("fn")
        if name in ("accuracy", "acc", "crossentropy", "ce"):
            return name
        for candidate in (name, fn):
            try:
                keras.metrics.get(candidate)
                return candidate
            except (ValueError, TypeError):
                continue
        return fn
    cls = getattr(keras.metrics, metric.get("class_name", ""), None)
    if cls is None:
        return config.get("name") or metric.get("class_name")
    return {"module": "keras.metrics", "class_name": metric["class_name"], "config": _filter(dict(config), cls, "metric"), "registered_name": None}


def _metrics(metrics: Any, single_output: bool) -> Any:
    if metrics is None:
        return None
    if isinstance(metrics, dict):
        return {k: _metrics(v, True) for k, v in metrics.items()}
    if isinstance(metrics, list):
        if single_output and len(metrics) == 1 and isinstance(metrics[0], list):
            metrics = metrics[0]
        # Keras 2 lists metrics per output, with None for an output that has none
        return [(_metrics(m, True) if isinstance(m, list | dict) and "class_name" not in m else _metric(m)) for m in metrics if m is not None]
    return _metric(metrics)


# ------------------------------------------------------------------------- Keras 3 -> 2
#: Keras 3 arguments TF2-era Keras does not take (dropped when writing files tf-keras reads)
_KERAS3_ONLY = {"input_axes", "output_axes", "quantization_config", "lora_rank", "lora_alpha", "use_cudnn",
                "loss_scale_factor", "gradient_accumulation_steps", "rms_scaling"}
_KERAS3_ONLY_BY_CLASS = {"LSTM": {"seed"}, "GRU": {"seed"}, "SimpleRNN": {"seed"}, "LSTMCell": {"seed"},
                         "GRUCell": {"seed"}, "SimpleRNNCell": {"seed"}}


def to_keras2_model_config(config: dict) -> dict:
    """A Keras 3 serialized model in the Keras 2 form tf-keras's ``load_model`` reads (``.h5``)."""
    return _k2_object(config)


def _k2_object(obj: Any) -> Any:
    if isinstance(obj, list):
        return [_k2_object(v) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if obj.get("registered_name") == legacy_tfops.REGISTERED:
        return legacy_tfops.to_tf_op_lambda(obj)
    if "class_name" in obj and "config" in obj and ("module" in obj or "registered_name" in obj):
        class_name = obj["class_name"]
        if obj.get("class_name") == "DTypePolicy":
            return (obj.get("config") or {}).get("name", "float32")
        config = obj["config"]
        if isinstance(config, dict):
            config = _k2_config(class_name, config)
        # "module"/"registered_name" stay: tf-keras ignores them, Keras 3's own .h5 loader uses them
        out = {"class_name": class_name, "config": config, "module": obj.get("module"), "registered_name": obj.get("registered_name")}
        if "inbound_nodes" in obj:
            out["name"] = obj.get("name", config.get("name") if isinstance(config, dict) else None)
            out["inbound_nodes"] = obj["inbound_nodes"]
        return out
    return {k: _k2_object(v) for k, v in obj.items()}


def _k2_config(class_name: str, config: dict) -> dict:
    drop = _KERAS3_ONLY | _KERAS3_ONLY_BY_CLASS.get(class_name, set())
    out = {k: _k2_object(v) for k, v in config.items() if k not in drop}
    if class_name == "InputLayer" and "batch_shape" in out:
        out["batch_input_shape"] = out.pop("batch_shape")
    if class_name in ("Functional", "Model"):
        out["layers"] = _without_mask_ops(out.get("layers", []))
        nested = {e["name"] for e in out.get("layers", []) if e.get("class_name") in ("Sequential", "Functional")}
        sequential = {e["name"] for e in out.get("layers", []) if e.get("class_name") == "Sequential"}
        for entry in out.get("layers", []):
            entry["inbound_nodes"] = [_k2_node(node, nested) for node in entry.get("inbound_nodes", [])]
        for key in ("input_layers", "output_layers"):
            out[key] = _unshift_refs(out.get(key), sequential)
    return out


def _without_mask_ops(layers: list[dict]) -> list[dict]:
    """Drop Keras 3 op nodes (``NotEqual`` from ``mask_zero``) whose outputs only feed ``mask=``.

    Keras 3 records the mask computation in the graph; Keras 2 recomputes masks itself.
    """
    used_as_arg: set[str] = set()

    def collect(value: Any) -> None:
        if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
            used_as_arg.add(value["config"]["keras_history"][0])
        elif isinstance(value, list | tuple):
            for v in value:
                collect(v)

    for entry in layers:
        for node in entry.get("inbound_nodes", []):
            collect(node.get("args", []) if isinstance(node, dict) else [])
    return [e for e in layers if not (str(e.get("module") or "").startswith("keras.src.ops") and e["name"] not in used_as_arg)]


def _k2_node(node: Any, nested: set[str]) -> Any:
    """A Keras 3 call node (``{"args", "kwargs"}``) as Keras 2's ``[[layer, node, tensor, kwargs]]``."""
    if isinstance(node, list):
        return _unshift_refs(node, nested)
    histories: list[list] = []

    def collect(value: Any) -> None:
        if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
            histories.append(list(value["config"]["keras_history"]))
        elif isinstance(value, list | tuple):
            for v in value:
                collect(v)

    collect(node.get("args", []))
    kwargs = {k: v for k, v in (node.get("kwargs") or {}).items() if not _holds_tensor(v)}
    return [[*_unshift_refs(h, nested)[:3], kwargs] for h in histories]


def _holds_tensor(value: Any) -> bool:
    if isinstance(value, dict):
        return value.get("class_name") == "__keras_tensor__" or any(_holds_tensor(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_holds_tensor(v) for v in value)
    return False


def _unshift_refs(refs: Any, models: set[str]) -> Any:
    if isinstance(refs, list) and len(refs) >= 3 and isinstance(refs[0], str) and isinstance(refs[1], int):
        return [refs[0], refs[1] + 1, *refs[2:]] if refs[0] in models else refs
    if isinstance(refs, list):
        return [_unshift_refs(r, models) for r in refs]
    return refs


def to_keras2_training_config(compile_config: dict | None) -> dict | None:
    """A Keras 3 compile config as the ``training_config`` tf-keras's ``load_model`` compiles from."""
    if not compile_config:
        return None
    optimizer = compile_config.get("optimizer")
    if isinstance(optimizer, str):
        optimizer = {"class_name": optimizer, "config": {}}
    elif isinstance(optimizer, dict):
        body = {k: v for k, v in (optimizer.get("config") or {}).items() if k not in _KERAS3_ONLY}
        body.setdefault("is_legacy_optimizer", False)
        # without it tf-keras picks its legacy optimizer classes
        optimizer = {"class_name": optimizer["class_name"], "config": body}
    return {
        "loss": _k2_loss(compile_config.get("loss")),
        "metrics": _k2_object(compile_config.get("metrics")),
        "weighted_metrics": _k2_object(compile_config.get("weighted_metrics")),
        "loss_weights": compile_config.get("loss_weights"),
        "optimizer_config": optimizer,
    }


def _k2_loss(loss: Any) -> Any:
    if isinstance(loss, dict) and "class_name" in loss and not isinstance(loss.get("config") or {}, dict):
        return loss["config"]  # a function (a registered custom loss): Keras 2 wrote its name
    if isinstance(loss, dict) and "class_name" in loss:
        body = {k: v for k, v in (loss.get("config") or {}).items() if k != "dtype"}
        return {"class_name": loss["class_name"], "config": body}
    if isinstance(loss, dict):
        return {k: _k2_loss(v) for k, v in loss.items()}
    if isinstance(loss, list):
        return [_k2_loss(v) for v in loss]
    return loss
