"""The process-wide random number generators, as plain data (exact resume).

Four generators can change what a training run computes without being part of the
model: Python's ``random``, NumPy's global ``RandomState``, TensorFlow's global
``tf.random.Generator`` and TensorFlow's eager op-seed source (what an unseeded
``tf.random.uniform`` or ``Dataset.shuffle`` draws its op seed from once
``tf.random.set_seed`` was called). Keras's own global ``SeedGenerator`` is a Keras
object and is captured by ``modelkeep.capture``.

A snapshot is a pair ``(arrays, info)``: ``arrays`` go into the checkpoint's tensors
(under ``rng/``), ``info`` (small JSON values) into its metadata.

Example::

    arrays, info = capture_global_rngs()
    random.random()                       # advance the generators
    restore_global_rngs(arrays, info)     # back where they were
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np

PYTHON = "rng/python"
NUMPY = "rng/numpy"
TF_GLOBAL = "rng/tf_global_generator"
TF_OP_SEED = "rng/tf_op_seed"


def _python_state(generator: random.Random) -> tuple[np.ndarray, dict[str, Any]]:
    version, words, gauss_next = generator.getstate()
    return np.asarray(words, dtype=np.int64), {"version": version, "gauss_next": gauss_next}


def _set_python_state(generator: random.Random, words: np.ndarray, info: dict[str, Any]) -> None:
    generator.setstate((info["version"], tuple(int(w) for w in words), info["gauss_next"]))


def _tf_context() -> Any:
    from tensorflow.python.eager import context

    return context.context()


def _tf_global_generator() -> Any:
    from tensorflow.python.ops import stateful_random_ops

    return stateful_random_ops.global_generator


def capture_global_rngs() -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Copy the state of every process-wide generator that is in use."""
    arrays: dict[str, np.ndarray] = {}
    info: dict[str, Any] = {}
    arrays[PYTHON], info["python"] = _python_state(random)  # type: ignore[arg-type]
    name, keys, pos, has_gauss, cached = np.random.get_state()
    arrays[NUMPY] = np.asarray(keys, dtype=np.uint32)
    info["numpy"] = {"name": name, "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    generator = _tf_global_generator()
    if generator is not None:
        arrays[TF_GLOBAL] = np.asarray(generator.state.numpy())
        info["tf_global_generator"] = {"algorithm": int(generator.algorithm)}
    op_rng = getattr(_tf_context(), "_rng", None)
    if isinstance(op_rng, random.Random):
        arrays[TF_OP_SEED], info["tf_op_seed"] = _python_state(op_rng)
    return arrays, info


def restore_global_rngs(arrays: dict[str, np.ndarray], info: dict[str, Any]) -> list[str]:
    """Put the generators back; return a note for each one that could not be restored."""
    notes: list[str] = []
    if PYTHON in arrays and "python" in info:
        _set_python_state(random, arrays[PYTHON], info["python"])  # type: ignore[arg-type]
    if NUMPY in arrays and "numpy" in info:
        meta = info["numpy"]
        np.random.set_state(
            (meta["name"], arrays[NUMPY], meta["pos"], meta["has_gauss"], meta["cached_gaussian"])
        )
    if TF_GLOBAL in arrays:
        notes += _restore_tf_global(arrays[TF_GLOBAL], info.get("tf_global_generator", {}))
    if TF_OP_SEED in arrays and "tf_op_seed" in info:
        context = _tf_context()
        if isinstance(getattr(context, "_rng", None), random.Random):
            _set_python_state(context._rng, arrays[TF_OP_SEED], info["tf_op_seed"])
        else:
            notes.append("TensorFlow op seeds (tf.random.set_seed was not called before mk.fit)")
    return notes


def _restore_tf_global(state: np.ndarray, info: dict[str, Any]) -> list[str]:
    import tensorflow as tf

    generator = tf.random.get_global_generator()
    if int(generator.algorithm) != info.get("algorithm", int(generator.algorithm)) or tuple(
        generator.state.shape
    ) != tuple(state.shape):
        return ["tf.random global generator (different algorithm)"]
    generator.state.assign(state)
    return []
