"""A loaded model's signature and its fast inference path.

``Predictor`` wraps one Keras model: it knows the names, dtypes and shapes of the
model's inputs and outputs (the serving signature), checks request arrays against them,
and runs a forward pass much cheaper than ``model.predict`` per call:

* a NumPy forward pass for Sequential models made only of ``Dense`` layers (the
  tutorial's model), or
* a ``tf.function`` traced once with a fixed input signature (batch dimension free).

The chosen path is checked against ``model.predict`` on random rows when the predictor is
built; a path that disagrees beyond float tolerance is dropped for the next one.

Example::

    predictor = Predictor.from_model(model)
    outputs = predictor.run([np.ones((4, 10), np.float32)])   # list, one array per output
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from modelkeep.serving.forward import build_forward

SIGNATURE_NAME = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"


@dataclass(frozen=True)
class TensorSpec:
    """One named input or output: dtype (numpy) and shape (None for any size)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]

    def describe(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.dtype.name}[{dims}]"


class RequestError(ValueError):
    """A request that does not fit the model's signature (HTTP 400 / INVALID_ARGUMENT)."""


def _spec(name: str, tensor: Any) -> TensorSpec:
    return TensorSpec(name, np.dtype(str(tensor.dtype)), tuple(tensor.shape))


class Predictor:
    """The signature and forward pass of one model; ``run`` is thread-safe."""

    def __init__(self, model: Any, inputs: list[TensorSpec], outputs: list[TensorSpec], forward: Any, path: str):
        self.model = model
        self.inputs = inputs
        self.outputs = outputs
        self._forward = forward
        self.path = path  # "numpy" or "tf.function": which fast path is in use
        self.input_names = [s.name for s in inputs]
        self.output_names = [s.name for s in outputs]

    @classmethod
    def from_model(cls, model: Any, *, check_rows: int = 8, allow_numpy: bool = True) -> Predictor:
        """Build the signature and the fastest path that matches ``model.predict``."""
        if not getattr(model, "inputs", None) or not getattr(model, "outputs", None):
            raise RequestError(
                "serve: the model has no defined inputs/outputs (a subclassed model that was never "
                "called); save it as a Functional or Sequential model to serve it."
            )
        inputs = [_spec(t.name, t) for t in model.inputs]
        names = list(getattr(model, "output_names", None) or [])
        if len(names) != len(model.outputs):
            names = [f"output_{i}" for i in range(len(model.outputs))]
        outputs = [_spec(n, t) for n, t in zip(names, model.outputs)]
        path, forward = build_forward(model, inputs, allow_numpy=allow_numpy)
        predictor = cls(model, inputs, outputs, forward, path)
        if check_rows:
            predictor.check_against_predict(check_rows)
        return predictor

    @classmethod
    def from_saved_model(cls, path: str, *, allow_unsafe_ops: bool = False) -> Predictor:
        """A SavedModel without a Keras part (``model.export()``, ``tf.saved_model.save``):
        its ``serving_default`` signature, called as TF Serving would, names included.

        Its graph is scanned first (protobuf only): one holding file-system, network or Python
        ops is refused (``UnsafeFileError`` naming them) unless ``allow_unsafe_ops=True``."""
        import tensorflow as tf

        from modelkeep.storage.graph_ops import check_saved_model_ops

        check_saved_model_ops(path, allow_unsafe_ops=allow_unsafe_ops)
        loaded = tf.saved_model.load(str(path))
        if SIGNATURE_NAME not in loaded.signatures:
            raise RequestError(
                f"serve: {path} has no {SIGNATURE_NAME!r} signature (found {sorted(loaded.signatures)}); "
                "export the model with model.export(path) or tf.saved_model.save(..., signatures=...)."
            )
        fn = loaded.signatures[SIGNATURE_NAME]
        _, kwargs = fn.structured_input_signature
        as_spec = lambda n, t: TensorSpec(n, np.dtype(t.dtype.as_numpy_dtype), tuple(t.shape))  # noqa: E731
        inputs = [as_spec(n, t) for n, t in sorted(kwargs.items())]
        outputs = [as_spec(n, t) for n, t in sorted(fn.structured_outputs.items())]
        names = [o.name for o in outputs]

        def forward(arrays: list[np.ndarray]) -> list[np.ndarray]:
            result = fn(**{spec.name: tf.constant(a) for spec, a in zip(inputs, arrays)})
            return [result[n].numpy() for n in names]

        return cls(loaded, inputs, outputs, forward, "signature")

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """Forward pass on arrays already checked by ``check_inputs`` (one per input)."""
        return self._forward(arrays)

    def sample_inputs(self, rows: int, seed: int = 0) -> list[np.ndarray]:
        """Random inputs of the signature's shapes (free dims → 1), for checks and warm-up."""
        rng = np.random.default_rng(seed)
        out = []
        for spec in self.inputs:
            shape = (rows,) + tuple(1 if d is None else d for d in spec.shape[1:])
            if spec.dtype.kind in "iu":
                out.append(rng.integers(0, 2, size=shape).astype(spec.dtype))
            elif spec.dtype.kind == "b":
                out.append(rng.integers(0, 2, size=shape).astype(bool))
            else:
                out.append(rng.random(shape).astype(spec.dtype))
        return out

    def check_against_predict(self, rows: int) -> None:
        """Fall back to the next path when this one disagrees with ``model.predict``."""
        arrays = self.sample_inputs(rows)
        if isinstance(getattr(self.model, "_inputs_struct", None), dict):
            feed: Any = dict(zip(self.input_names, arrays))
        else:
            feed = arrays if len(arrays) > 1 else arrays[0]
        expected = self.model.predict(feed, verbose=0)
        if isinstance(expected, dict):
            expected = [expected[n] for n in self.output_names]
        elif not isinstance(expected, (list, tuple)):
            expected = [expected]
        got = self.run(arrays)
        if all(np.allclose(g, np.asarray(e), rtol=1e-4, atol=1e-5) for g, e in zip(got, expected)):
            return
        if self.path == "numpy":
            _, self._forward = build_forward(self.model, self.inputs, allow_numpy=False)
            self.path = "tf.function"
            return self.check_against_predict(rows)
        raise RequestError("serve: the compiled forward pass disagrees with model.predict; refusing to serve it.")

    def warm_up(self, batch_sizes: tuple[int, ...] = (1, 2, 8, 32)) -> None:
        """Run each batch size once so the first real request pays no tracing cost."""
        for size in batch_sizes:
            self.run(self.sample_inputs(size))

    # ------------------------------------------------------------------ checking
    def check_inputs(self, named: dict[str, Any], *, allow_non_finite: bool = False) -> list[np.ndarray]:
        """Turn request values (nested lists or arrays) into arrays in input order.

        Raises ``RequestError`` naming what was expected and what came.
        """
        unknown = sorted(set(named) - set(self.input_names))
        if unknown:
            raise RequestError(
                f"unknown input name(s) {unknown}; the model's inputs are {self.input_names}."
            )
        missing = [n for n in self.input_names if n not in named]
        if missing:
            raise RequestError(f"missing input(s) {missing}; the model's inputs are {self.input_names}.")
        arrays = [coerce(named[s.name], s, allow_non_finite=allow_non_finite) for s in self.inputs]
        sizes = {len(a) for a in arrays}
        if len(sizes) > 1:
            got = {s.name: len(a) for s, a in zip(self.inputs, arrays)}
            raise RequestError(f"inputs have different batch sizes {got}; every input needs the same number of rows.")
        return arrays


_KIND_NAMES = {"f": "float", "i": "int", "u": "unsigned int", "b": "bool", "U": "string", "S": "bytes", "O": "mixed"}


def coerce(value: Any, spec: TensorSpec, *, allow_non_finite: bool = False) -> np.ndarray:
    """One request value as an array of ``spec``'s dtype and shape, or ``RequestError``."""
    try:
        raw = value if isinstance(value, np.ndarray) else np.asarray(value)
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise RequestError(
            f"input '{spec.name}': ragged or malformed values (rows of different lengths?); "
            f"expected {spec.describe()}. Detail: {exc}"
        ) from None
    kind = raw.dtype.kind
    if kind not in "fiub" or (kind == "b" and spec.dtype.kind != "b"):
        got = _KIND_NAMES.get(kind, raw.dtype.name)
        if kind == "O":
            got = "mixed or ragged values"
        raise RequestError(f"input '{spec.name}': expected {spec.describe()} numbers, got {got} values.")
    if raw.ndim != len(spec.shape):
        raise RequestError(
            f"input '{spec.name}': expected shape {spec.describe()} (rank {len(spec.shape)}, batch first), "
            f"got shape {list(raw.shape)} (rank {raw.ndim})."
        )
    if raw.shape[0] == 0:
        raise RequestError(f"input '{spec.name}': empty batch; send at least one row of {spec.describe()}.")
    for got, want in zip(raw.shape[1:], spec.shape[1:]):
        if want is not None and got != want:
            raise RequestError(f"input '{spec.name}': expected shape {spec.describe()}, got {list(raw.shape)}.")
    want_kind = spec.dtype.kind
    if want_kind == "f":
        # float64 -> float32 overflow gives inf (found just below); the server silences numpy's
        # cast warning once at start-up rather than paying for np.errstate on every request.
        arr = raw.astype(spec.dtype, copy=False)
        if not allow_non_finite and not np.isfinite(arr).all():
            finite_raw = np.isfinite(raw.astype(np.float64, copy=False)).all()
            bad = f"numbers too large for {spec.dtype.name}" if finite_raw else "NaN/Infinity"
            raise RequestError(f"input '{spec.name}': expected finite numbers, got {bad}.")
        return arr
    if want_kind in "iu":
        if kind == "f" and not (np.isfinite(raw).all() and (raw == np.round(raw)).all()):
            raise RequestError(f"input '{spec.name}': expected integers ({spec.describe()}), got non-integer numbers.")
        info = np.iinfo(spec.dtype)
        if raw.min() < info.min or raw.max() > info.max:
            raise RequestError(f"input '{spec.name}': numbers out of range for {spec.dtype.name} [{info.min}, {info.max}].")
        return raw.astype(spec.dtype, copy=False)
    return raw.astype(spec.dtype, copy=False)
