"""How predictions are compared: bit for bit only with a reference computed here, now.

Stored data (weights, optimizer slots, configs) is the same on every machine and is compared
with ``np.array_equal``. A float32 *result* is not: a matmul or a recurrent step groups its
sums differently by CPU instruction set (AVX2 or AVX-512), by TensorFlow's kernel choice
(oneDNN on or off) and by thread count. So a prediction is compared

- bit for bit with a reference computed on this machine in this run (the same architecture
  built in code, given the file's stored weights: ``keras3_reference``), and
- within ``ulps`` float32 units in the last place of the output's largest magnitude with a
  prediction stored from another run or machine (``assert_close_ulps``). The budget per layer
  kind is in ``STORED_ULPS``; a wrong activation or a weight loaded in the wrong place moves
  outputs by millions of ulps, so the tolerance cannot hide a loading error.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

#: Measured on an AMD EPYC (AVX-512) with ``TF_ENABLE_ONEDNN_OPTS=0`` against predictions that
#: tf-keras made with oneDNN on: 2 ulps for Dense stacks (dot products of <= 128 terms) and for
#: a masked bidirectional GRU; 0 with oneDNN on or one intra-op thread. The budget is 4x the
#: largest difference seen, per kind of layer the model's longest reduction runs through.
STORED_ULPS = {
    "dense": 8,  # one dot product per unit, at most a few hundred terms
    "recurrent": 16,  # the error of each step feeds the next: sums over steps x units
}


def ulps_at_scale(got: np.ndarray, want: np.ndarray) -> float:
    """Largest |got - want| in float32 ulps of ``want``'s largest magnitude.

    >>> ulps_at_scale(np.float32([1.0]), np.float32([1.0]) + np.spacing(np.float32(1.0)))
    1.0
    """
    scale = np.float32(max(float(np.max(np.abs(want))), np.finfo(np.float32).tiny))
    return float(np.max(np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64))) / np.spacing(scale))


def assert_close_ulps(got: np.ndarray, want: np.ndarray, ulps: int, what: str) -> None:
    """``got`` within ``ulps`` float32 ulps (at the output's scale) of a stored ``want``."""
    assert np.shape(got) == np.shape(want), f"{what}: shape {np.shape(got)} != stored {np.shape(want)}"
    seen = ulps_at_scale(got, want)
    assert seen <= ulps, f"{what}: {seen:.1f} ulps from the stored prediction (budget {ulps})"


def keras3_reference(builder: Callable, weights: list[np.ndarray], x) -> list[np.ndarray]:
    """Predictions of ``builder(keras)`` given ``weights`` (stored arrays, in the order of the
    model's ``weights``, as Keras 2 and Keras 3 both list them).

    The model is built in code and its variables assigned directly, with no modelkeep reader
    involved, so its output is an independent reference computed on this machine in this run.
    """
    import keras

    model = builder(keras)
    assert len(model.weights) == len(weights), f"{len(model.weights)} variables built, {len(weights)} stored"
    for variable, value in zip(model.weights, weights):
        variable.assign(value)  # Keras checks the shape
    got = model.predict(x, verbose=0)
    return got if isinstance(got, list) else [got]
