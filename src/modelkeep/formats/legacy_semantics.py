"""What a Keras 2 config *means*, where Keras 3 reads the same words differently.

A Keras 2 config translated word for word can rebuild a Keras 3 model that predicts
something else: ``hard_sigmoid`` is ``clip(0.2x + 0.5, 0, 1)`` in Keras 2 (tf-keras too) and
``relu6(x + 3) / 6`` in Keras 3; a Keras 2.0 ``GRU`` without ``reset_after`` computed the
reset gate before the matmul (Keras 3's default is after); a Keras 2.0-2.2 ``LSTM`` without
``recurrent_activation`` used ``hard_sigmoid``. This module holds each such entry, checked
against tf-keras in ``tests/test_legacy_semantics.py``: translated to the Keras 3 form that
computes the same numbers, or refused by name when it cannot be carried.

=========================  =========================================================
Keras 2                    Keras 3 (here)
=========================  =========================================================
``hard_sigmoid`` (any      ``modelkeep>keras2_hard_sigmoid``: ``clip(0.2x + 0.5, 0, 1)``
activation argument)
GRU without reset_after    ``reset_after=False`` (Keras 2.0's only behaviour)
RNN without                ``hard_sigmoid`` (Keras 2.0-2.2's default) for files older
recurrent_activation       than 2.3, else ``sigmoid``
LeakyReLU ``alpha``        ``negative_slope`` (same value; the default 0.3 written out)
ThresholdedReLU ``theta``  ``ReLU(threshold=theta)``
VarianceScaling            ``truncated_normal`` (what Keras 2.1+ meant by ``normal``;
``distribution="normal"``  only affects freshly initialized weights)
Attention ``causal=True``  refused: Keras 3 takes it as a call argument
BatchNormalization         refused: its renorm weights have no Keras 3 place
``renorm=True``
CuDNNLSTM / CuDNNGRU       LSTM / GRU(reset_after=True), sigmoid gates; weights converted
                           as Keras 2 did (``from_cudnn``)
LocallyConnected1D/2D,     refused by name: Keras 3 has no such layer
DenseFeatures, Merge ...
=========================  =========================================================

Unchanged meaning (tested too): ``ReLU``/``ELU``/``Softmax``/``PReLU`` arguments,
``BatchNormalization`` axis/epsilon/momentum/center/scale, ``Embedding``/``Masking``
masks, ``TimeDistributed``, the merge layers, every other activation name.

Example::

    class_name, config = translate("LSTM", {"units": 4}, keras_version="2.2.2")
    config["recurrent_activation"]   # the Keras 2 hard_sigmoid, serialized
"""

from __future__ import annotations

from typing import Any

from modelkeep.errors import UnsupportedModelError

#: Keras 2 built-in layers that Keras 3 does not have: refused with this reason
REMOVED = {
    "LocallyConnected1D": "Keras 3 has no locally connected layers",
    "LocallyConnected2D": "Keras 3 has no locally connected layers",
    "DenseFeatures": "Keras 3 has no feature-column layers",
    "Merge": "it is Keras 1's merge layer (Keras 2 already replaced it with Add, Concatenate, ...)",
    "RandomFourierFeatures": "Keras 3 has no such layer",
}
#: Keras 2 built-ins Keras 3 lacks: translated (ThresholdedReLU) or refused (the rest)
RENAMED = {*REMOVED, "ThresholdedReLU", "CuDNNLSTM", "CuDNNGRU"}
#: arguments Keras 3 dropped, at the value that means "nothing": dropping them is silent
KERAS2_DEFAULTS = {"groups": 1, "input_length": None, "autocast": True, "kernel_initializer": None,
                   "kernel_regularizer": None, "kernel_constraint": None}
_RNN = ("LSTM", "GRU", "SimpleRNN", "LSTMCell", "GRUCell", "SimpleRNNCell", "ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D")


def keras2_hard_sigmoid(x: Any) -> Any:
    """Keras 2's (and tf-keras's) ``hard_sigmoid``: ``clip(0.2 * x + 0.5, 0, 1)``."""
    from keras import ops

    return ops.clip(x * 0.2 + 0.5, 0.0, 1.0)


def ensure_registered() -> None:
    """Register ``keras2_hard_sigmoid`` and ``modelkeep>TFOp`` with Keras (idempotent), so configs naming them load."""
    import keras

    if keras.saving.get_registered_object("modelkeep>keras2_hard_sigmoid") is None:
        keras.saving.register_keras_serializable(package="modelkeep")(keras2_hard_sigmoid)
    from modelkeep.formats import legacy_tfops

    legacy_tfops.layer_class()  # tf.keras's TFOpLambda layers, translated


def _hard_sigmoid_config() -> dict:
    import keras

    ensure_registered()
    return keras.saving.serialize_keras_object(keras.saving.get_registered_object("modelkeep>keras2_hard_sigmoid"))


def _version(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    parts = []
    for piece in str(text).split("-")[0].split(".")[:3]:
        if not piece.isdigit():
            break
        parts.append(int(piece))
    return tuple(parts) or None


def _activation(value: Any) -> Any:
    # Keras 2 writes activations as names; a serialized dict is Keras 3's own and keeps its meaning
    return _hard_sigmoid_config() if value == "hard_sigmoid" else value


def translate(class_name: str, config: dict, *, keras_version: str | None = None, name: str = "?") -> tuple[str, dict]:
    """A Keras 2 layer's ``(class_name, config)`` with Keras 2's meaning, in Keras 3's words."""
    if class_name in REMOVED:
        raise UnsupportedModelError(
            f"load_model: layer '{name}' is a Keras 2 {class_name}; {REMOVED[class_name]}, so it cannot be "
            "carried. Build the model in code with a Keras 3 replacement and load the weights yourself."
        )
    if class_name in CUDNN:
        class_name, config = cudnn_config(class_name, config)
    config = dict(config)
    version = _version(keras_version)
    if version is not None and version >= (3,):
        return class_name, config  # Keras 3's own .h5: its words mean what Keras 3 says
    if class_name in _RNN and "recurrent_activation" not in config and class_name not in ("SimpleRNN", "SimpleRNNCell"):
        config["recurrent_activation"] = "hard_sigmoid" if version is None or version < (2, 3) else "sigmoid"
    if class_name in ("GRU", "GRUCell") and "reset_after" not in config:
        config["reset_after"] = False
    for key, value in list(config.items()):
        if key == "activation" or key.endswith("_activation"):
            config[key] = _activation(value)
    if class_name == "LeakyReLU":
        config["negative_slope"] = config.pop("alpha", config.get("negative_slope", 0.3))
    if class_name == "ThresholdedReLU":
        theta = config.pop("theta", 1.0)
        config = {k: v for k, v in config.items() if k in ("name", "trainable", "dtype")}
        config.update({"threshold": theta, "negative_slope": 0.0, "max_value": None})
        class_name = "ReLU"
    if class_name in ("Attention", "AdditiveAttention") and config.pop("causal", False):
        raise UnsupportedModelError(
            f"load_model: layer '{name}' ({class_name}) was saved with causal=True; Keras 3 takes causality "
            "as a call argument (use_causal_mask=True), which a config cannot carry. Build the model in code."
        )
    if class_name == "BatchNormalization" and config.get("renorm"):
        raise UnsupportedModelError(
            f"load_model: layer '{name}' (BatchNormalization) uses renorm=True, whose renormalization weights "
            "Keras 3 has no place for. Build the model in code without renorm and load the other weights."
        )
    return class_name, config


def initializer(value: Any) -> Any:
    """A Keras 2 initializer config in the form Keras 3 reads with the same distribution."""
    if isinstance(value, dict) and value.get("class_name") == "VarianceScaling":
        body = dict(value.get("config") or {})
        if body.get("distribution") == "normal":
            body["distribution"] = "truncated_normal"
        return {**value, "config": body}
    return value


def _tensor(ref: list) -> dict:
    return {"class_name": "__keras_tensor__", "config": {"shape": [None], "dtype": "float32", "keras_history": list(ref[:3])}}


#: Keras 2's cuDNN-only recurrent layers: the portable layer that computes the same function
CUDNN = {"CuDNNLSTM": "LSTM", "CuDNNGRU": "GRU"}


def cudnn_config(class_name: str, config: dict) -> tuple[str, dict]:
    """``CuDNNLSTM``/``CuDNNGRU`` as the ``LSTM``/``GRU`` that computes what they computed."""
    out = {k: v for k, v in config.items() if k not in ("implementation",)}
    out.update({"activation": "tanh", "recurrent_activation": "sigmoid", "use_bias": True, "dropout": 0.0,
                "recurrent_dropout": 0.0, "unroll": False})
    if class_name == "CuDNNGRU":
        out["reset_after"] = True
    return CUDNN[class_name], out


def from_cudnn(arrays: list) -> list | None:
    """``[kernel, recurrent_kernel, bias]`` of a CuDNNLSTM/CuDNNGRU as LSTM/GRU(reset_after) weights.

    As Keras 2 converted them: per gate, the input kernel changes layout (cuDNN's Fortran
    order), the recurrent kernel is transposed, the two bias sets of an LSTM are summed and a
    GRU's are stacked. None when the arrays are not cuDNN-shaped.
    """
    import numpy as np

    if len(arrays) != 3:
        return None
    kernel, recurrent, bias = (np.asarray(a) for a in arrays)
    units = recurrent.shape[0]
    gates = {8 * units: 4, 6 * units: 3}.get(bias.shape[0]) if bias.ndim == 1 else None
    if gates is None or recurrent.shape[1] != gates * units:
        return None
    kernel = np.hstack([k.T.reshape(k.shape, order="F") for k in np.hsplit(kernel, gates)])
    recurrent = np.hstack([k.T for k in np.hsplit(recurrent, gates)])
    bias = np.sum(np.split(bias, 2), axis=0) if gates == 4 else bias.reshape(2, -1)
    return [kernel, recurrent, bias]
