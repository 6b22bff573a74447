"""Forward passes cheaper than ``model.predict`` per call.

``model.predict`` builds a data pipeline and a step function on every call: about 79 ms for
one row of the tutorial's model on this machine. Two paths here do the same arithmetic:

* ``numpy``: a Sequential model of ``Dense`` layers only, with float32 weights and an
  activation NumPy can compute, is evaluated as matrix products (microseconds);
* ``tf.function``: any other model, traced once with a fixed input signature whose batch
  dimension is free, so every batch size reuses one graph.

Both are checked against ``model.predict`` by ``Predictor.check_against_predict``.

Example::

    path, forward = build_forward(model, input_specs)
    outputs = forward([x])          # list of numpy arrays, one per model output
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

Forward = Callable[[list[np.ndarray]], list[np.ndarray]]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (np.tanh(0.5 * x) + 1.0)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


_ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray] | None] = {
    "linear": None,
    "relu": lambda x: np.maximum(x, 0, out=x),
    "sigmoid": _sigmoid,
    "tanh": np.tanh,
    "softmax": _softmax,
}


def _dense_stack(model: Any) -> list[tuple[np.ndarray, np.ndarray | None, Callable | None]] | None:
    """The (kernel, bias, activation) of each layer, or None when the model is not a Dense stack."""
    import keras

    if not isinstance(model, keras.Sequential) or len(model.inputs) != 1:
        return None
    stack = []
    for layer in model.layers:
        if type(layer) is not keras.layers.Dense or layer.dtype_policy.name != "float32":
            return None
        if getattr(layer, "lora_enabled", False) or getattr(layer, "quantization_mode", None):
            return None
        activation = keras.activations.serialize(layer.activation)
        name = activation if isinstance(activation, str) else activation.get("config", activation.get("class_name"))
        if name not in _ACTIVATIONS or len(layer.input.shape) != 2:
            return None
        kernel = np.ascontiguousarray(keras.ops.convert_to_numpy(layer.kernel))
        bias = keras.ops.convert_to_numpy(layer.bias) if layer.use_bias else None
        stack.append((kernel, bias, _ACTIVATIONS[name]))
    return stack or None


def numpy_forward(model: Any) -> Forward | None:
    """A NumPy forward pass for a Dense-only Sequential model, else None."""
    stack = _dense_stack(model)
    if stack is None:
        return None

    def forward(arrays: list[np.ndarray]) -> list[np.ndarray]:
        x = arrays[0]
        for kernel, bias, activation in stack:
            x = x @ kernel
            if bias is not None:
                x += bias
            if activation is not None:
                x = activation(x)
        return [x]

    return forward


def tf_function_forward(model: Any, input_specs: list[Any]) -> Forward:
    """``model(inputs, training=False)`` traced once; batch dimension free."""
    import tensorflow as tf

    signature = [tf.TensorSpec((None, *s.shape[1:]), tf.as_dtype(s.dtype), name=_safe(s.name)) for s in input_specs]
    single = len(input_specs) == 1
    # a Functional model built on a dict of inputs is called with a dict, else with a list
    keyed = isinstance(getattr(model, "_inputs_struct", None), dict)
    names = [s.name for s in input_specs]
    from modelkeep.formats.savedmodel import signature_keys

    out_keys = signature_keys(model)[1]

    @tf.function(input_signature=signature, reduce_retracing=True)
    def call(*xs: Any) -> Any:
        if keyed:
            out = model(dict(zip(names, xs)), training=False)
        else:
            out = model(xs[0] if single else list(xs), training=False)
        if isinstance(out, dict):
            return [out[k] for k in out_keys]
        return list(out) if isinstance(out, (list, tuple)) else [out]

    def forward(arrays: list[np.ndarray]) -> list[np.ndarray]:
        return [t.numpy() for t in call(*arrays)]

    return forward


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else "_" for c in name) or "input"


def build_forward(model: Any, input_specs: list[Any], *, allow_numpy: bool = True) -> tuple[str, Forward]:
    """The fastest path for ``model``: ("numpy", fn) or ("tf.function", fn)."""
    if allow_numpy:
        fn = numpy_forward(model)
        if fn is not None:
            return "numpy", fn
    return "tf.function", tf_function_forward(model, input_specs)
