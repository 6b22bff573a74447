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

from pathlib import Path
from typing import Any

import numpy as np

from modelkeep.serving.forward import build_forward
from modelkeep.serving.signature import (
    DEFAULT_SIGNATURE,
    PREDICT_METHOD,
    ServingError,
    Signature,
    TensorSpec,
    read_signature_defs,
    signatures_from_defs,
)

SIGNATURE_NAME = DEFAULT_SIGNATURE
__all__ = ["PREDICT_METHOD", "SIGNATURE_NAME", "Predictor", "RequestError", "TensorSpec", "coerce"]


class RequestError(ServingError, ValueError):
    """A request that does not fit the model's signature (HTTP 400 / INVALID_ARGUMENT)."""

    def __init__(self, message: str):
        super().__init__("INVALID_ARGUMENT", message)


def _keras_spec(name: str, tensor: Any, tensor_name: str) -> TensorSpec:
    return TensorSpec(name, np.dtype(str(tensor.dtype)), tuple(tensor.shape), tensor_name)


def _op_error(exc: Exception) -> ServingError:
    """A TensorFlow runtime error (bad shape, bad value) as its own status code."""
    from tensorflow.core.protobuf import error_codes_pb2

    code = getattr(exc, "error_code", None)
    name = error_codes_pb2.Code.Name(code) if code is not None else "INVALID_ARGUMENT"
    message = getattr(exc, "message", None) or str(exc)
    return ServingError(name, f"{message.strip()} (modelkeep: the model refused these inputs)")


class Predictor:
    """The signatures and forward pass of one model; ``run`` and ``call`` are thread-safe.

    ``inputs``/``outputs``/``run`` are the default signature's (positional, batchable for
    Keras models); ``call(signature, {key: array})`` runs any signature by its keys.
    """

    def __init__(
        self,
        model: Any,
        inputs: list[TensorSpec],
        outputs: list[TensorSpec],
        forward: Any,
        path: str,
        signatures: dict[str, Signature] | None = None,
        caller: Any = None,
    ):
        self.model = model
        self.inputs = inputs
        self.outputs = outputs
        self._forward = forward
        self.path = path  # "numpy", "tf.function", "signature" or "session": which path is in use
        self.input_names = [s.name for s in inputs]
        self.output_names = [s.name for s in outputs]
        self.signatures = signatures or {
            DEFAULT_SIGNATURE: Signature(
                DEFAULT_SIGNATURE, PREDICT_METHOD, {s.name: s for s in inputs}, {s.name: s for s in outputs}, True
            )
        }
        self._caller = caller  # (signature key, {key: array}) -> {key: array}, for non-Keras models
        self.batchable = caller is None  # Keras models: the default signature goes through the micro-batcher
        self.tf1 = path == "session"  # TF1 graph: classify/regress check the signature's method_name

    def signature(self, name: str | None) -> Signature:
        """The signature ``name`` ('' or None: serving_default); FAILED_PRECONDITION when absent."""
        key = name or DEFAULT_SIGNATURE
        found = self.signatures.get(key)
        if found is None:
            raise ServingError(
                "FAILED_PRECONDITION",
                f'Serving signature key "{key}" not found. (modelkeep: this model has {sorted(self.signatures)})',
            )
        return found

    def call(self, name: str, named: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run signature ``name`` on arrays keyed by its input keys; outputs keyed by its output keys."""
        if self._caller is None:
            outputs = self.run([named[k] for k in self.input_names])
            return dict(zip(self.output_names, outputs))
        return self._caller(name, named)

    @classmethod
    def from_model(
        cls, model: Any, *, check_rows: int = 8, allow_numpy: bool = True, saved_model_dir: str | Path | None = None
    ) -> Predictor:
        """Build the signature and the fastest path that matches ``model.predict``.

        Inputs and outputs are keyed as ``mk.save_model``'s SavedModel signature keys them
        (the Keras input and output names); with ``saved_model_dir``, the stored SignatureDef
        supplies the graph tensor names TF Serving's metadata shows."""
        from modelkeep.formats.savedmodel import signature_keys

        if not getattr(model, "inputs", None) or not getattr(model, "outputs", None):
            raise RequestError(
                "serve: the model has no defined inputs/outputs (a subclassed model that was never "
                "called); save it as a Functional or Sequential model to serve it."
            )
        in_keys, out_keys = signature_keys(model)
        inputs = [_keras_spec(k, t, f"serving_default_{k}:0") for k, t in zip(in_keys, model.inputs)]
        outputs = [_keras_spec(k, t, f"StatefulPartitionedCall:{i}") for i, (k, t) in enumerate(zip(out_keys, model.outputs))]
        path, forward = build_forward(model, inputs, allow_numpy=allow_numpy)
        predictor = cls(model, inputs, outputs, forward, path)
        if saved_model_dir is not None and (Path(saved_model_dir) / "saved_model.pb").exists():
            stored = read_signature_defs(saved_model_dir)[0].get(DEFAULT_SIGNATURE)
            if stored is not None and set(stored.inputs) == set(in_keys) and set(stored.outputs) == set(out_keys):
                predictor.signatures[DEFAULT_SIGNATURE].proto = stored
        if check_rows:
            predictor.check_against_predict(check_rows)
        return predictor

    @classmethod
    def from_saved_model(cls, path: str, *, allow_unsafe_ops: bool = False) -> Predictor:
        """A SavedModel without a Keras part, served as TF Serving serves it: every signature
        of its ``serve`` MetaGraph, by the signature's keys, with no shape check of its own.

        TF2 SavedModels (``tf.saved_model.save``, ``model.export``) run their restored
        signature functions; TF1 ones (``SavedModelBuilder``) run in a ``tf.compat.v1`` session.
        Its graph is scanned first (protobuf only): one holding file-system, network or Python
        ops is refused (``UnsafeFileError`` naming them) unless ``allow_unsafe_ops=True``."""
        from modelkeep.storage.graph_ops import check_saved_model_ops

        check_saved_model_ops(path, allow_unsafe_ops=allow_unsafe_ops)
        defs, tf1 = read_signature_defs(path)
        signatures = signatures_from_defs(defs)
        if not signatures:
            raise RequestError(
                f"serve: {path} has no signatures; export the model with model.export(path) or "
                "tf.saved_model.save(..., signatures=...)."
            )
        model, caller = (_session_caller if tf1 else _function_caller)(str(path), signatures)
        default = signatures.get(DEFAULT_SIGNATURE) or signatures[sorted(signatures)[0]]
        inputs = [default.inputs[k] for k in sorted(default.inputs)]
        outputs = [default.outputs[k] for k in sorted(default.outputs)]
        out_names = [o.name for o in outputs]

        def forward(arrays: list[np.ndarray]) -> list[np.ndarray]:
            result = caller(default.key, {spec.name: a for spec, a in zip(inputs, arrays)})
            return [result[n] for n in out_names]

        return cls(model, inputs, outputs, forward, "session" if tf1 else "signature", signatures, caller)

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
        if self._caller is not None:  # a stored signature: traced when saved, nothing to warm
            return
        for size in batch_sizes:
            self.run(self.sample_inputs(size))

    # ------------------------------------------------------------------ checking
    def prepare(
        self, signature: Signature, named: dict[str, Any], *, allow_non_finite: bool = False, check_shapes: bool = False
    ) -> dict[str, np.ndarray]:
        """Request arrays (already of the signature's dtypes) checked as this model needs.

        Keras signatures check shapes (the fast paths need them); stored signatures leave
        shapes to the model, as TF Serving does, unless ``check_shapes`` (``modelkeep serve``:
        rank and known dimensions as the signature declares them, as its /openapi.json says).
        Non-finite floats are refused unless allowed."""
        signature.check_names(named)
        if signature.strict_shapes:
            arrays = self.check_inputs(named, allow_non_finite=allow_non_finite)
            return dict(zip(self.input_names, arrays))
        out = {}
        for key, array in named.items():
            spec = signature.inputs[key]
            if check_shapes:
                check_shape(array, spec)
            if spec.dtype.kind == "f":
                cast = array.astype(spec.dtype, copy=False)
                if not allow_non_finite and not np.isfinite(cast).all():
                    bad = "NaN/Infinity" if not np.isfinite(array).all() else f"numbers too large for {spec.dtype.name}"
                    raise RequestError(f"input '{key}': expected finite numbers, got {bad} (start with --allow-non-finite to accept them).")
                array = cast
            out[key] = array
        return out

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


def check_shape(array: np.ndarray, spec: TensorSpec) -> None:
    """``array`` has ``spec``'s rank and known dimensions (an unknown rank takes any shape)."""
    if spec.shape is None:
        return
    if array.ndim != len(spec.shape) or any(w is not None and g != w for g, w in zip(array.shape, spec.shape)):
        raise RequestError(
            f"input '{spec.name}': expected shape {spec.describe()}, got {list(array.shape)} "
            "(modelkeep serve checks shapes; modelkeep-model-server leaves them to the model, as TF Serving does)."
        )


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


def _function_caller(path: str, signatures: dict[str, Signature]) -> tuple[Any, Any]:
    """TF2: the restored signature functions, called with the signature's keys."""
    import tensorflow as tf

    loaded = tf.saved_model.load(path)
    functions = {k: loaded.signatures[k] for k in signatures if k in loaded.signatures}

    def call(name: str, named: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        fn = functions.get(name)
        if fn is None:
            raise ServingError("FAILED_PRECONDITION", f"signature {name!r} is not callable (modelkeep: it is not a function of the SavedModel)")
        try:
            result = fn(**{k: tf.constant(v) for k, v in named.items()})
        except tf.errors.OpError as exc:
            raise _op_error(exc) from None
        except (TypeError, ValueError) as exc:
            raise RequestError(f"{exc} (modelkeep: signature {name!r} takes {signatures[name].describe_inputs()})") from None
        return {k: v.numpy() for k, v in result.items()}

    return loaded, call


def _session_caller(path: str, signatures: dict[str, Signature]) -> tuple[Any, Any]:
    """TF1 (SavedModelBuilder): the graph in a ``tf.compat.v1`` session, fed by tensor name.

    The feed goes straight to the session (as TF Serving's ``Session::Run``): no Python-side
    shape check, so ``[2.0, 3.0]`` reaches a ``[?, 1]`` placeholder as TF Serving lets it."""
    import tensorflow as tf

    graph = tf.Graph()
    session = tf.compat.v1.Session(graph=graph)
    with graph.as_default():
        tf.compat.v1.saved_model.loader.load(session, ["serve"], path)
    plans = {}
    for key, sig in signatures.items():
        try:
            feeds = {k: graph.get_tensor_by_name(s.tensor_name)._as_tf_output() for k, s in sig.inputs.items()}
            fetches = [(k, graph.get_tensor_by_name(s.tensor_name)._as_tf_output()) for k, s in sig.outputs.items()]
        except (KeyError, ValueError):
            continue  # a signature naming tensors the graph lacks: not servable, as in TF Serving
        plans[key] = (feeds, fetches)

    def call(name: str, named: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if name not in plans:
            raise ServingError("FAILED_PRECONDITION", f"signature {name!r} is not callable (modelkeep: its tensors are not in the graph)")
        feeds, fetches = plans[name]
        feed = {feeds[k]: v for k, v in named.items()}
        try:
            values = session._call_tf_sessionrun(None, feed, [t for _, t in fetches], [], None)
        except tf.errors.OpError as exc:
            raise _op_error(exc) from None
        return {k: np.asarray(v) for (k, _), v in zip(fetches, values)}

    return session, call
