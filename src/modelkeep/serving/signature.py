"""The one request model every front end turns into: signatures, named tensors, status codes.

* ``TensorSpec``: one named input or output of a signature (its key, dtype, shape, and the
  graph tensor name TF Serving's metadata shows); DT_STRING is ``np.dtype(object)`` holding
  ``bytes``;
* ``Signature``: one SignatureDef (method name, inputs, outputs), as a protobuf on demand;
* ``ServingError``: a TF Serving status code (``INVALID_ARGUMENT``, ``NOT_FOUND``, ...) with
  TF Serving's message text first and modelkeep's explanation after it; ``http_status`` and
  ``grpc_code`` map the code as TF Serving's ``ToHTTPStatusCode`` does;
* ``read_signature_defs``: the SignatureDefs of a SavedModel's ``serve`` MetaGraph, exactly
  as stored (the names TF Serving lists in metadata).

REST JSON, gRPC TensorProtos and classify/regress ``tf.Example`` lists all become
``(signature name, {key: ndarray})`` before a model runs.

Example::

    sig = predictor.signature("serving_default")     # ServingError FAILED_PRECONDITION if unknown
    arrays = sig.prepare({"x": [[1.0], [2.0]]})      # {key: ndarray of the signature's dtype}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
STRING = np.dtype(object)

# TF Serving's http_server.cc ToHTTPStatusCode
HTTP_STATUS = {
    "OK": 200, "CANCELLED": 499, "UNKNOWN": 500, "INVALID_ARGUMENT": 400, "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404, "ALREADY_EXISTS": 409, "PERMISSION_DENIED": 403, "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400, "ABORTED": 409, "OUT_OF_RANGE": 400, "UNIMPLEMENTED": 501,
    "INTERNAL": 500, "UNAVAILABLE": 503, "DATA_LOSS": 500, "UNAUTHENTICATED": 401,
}


class ServingError(Exception):
    """A request refused with a TF Serving status code; ``message`` starts with TF Serving's text."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.code, 500)

    @property
    def grpc_code(self) -> Any:
        import grpc

        return getattr(grpc.StatusCode, self.code)


def invalid(message: str) -> ServingError:
    return ServingError("INVALID_ARGUMENT", message)


def dtype_name(dtype: np.dtype) -> str:
    """TF's DataTypeString: ``float``, ``double``, ``int32``, ``string``, ..."""
    if dtype == STRING:
        return "string"
    return {"float32": "float", "float64": "double", "float16": "half"}.get(dtype.name, dtype.name)


@dataclass(frozen=True)
class TensorSpec:
    """One named input or output: its signature key, dtype, shape (None: unknown rank)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...] | None
    tensor_name: str = ""

    def describe(self) -> str:
        if self.shape is None:
            return f"{dtype_name(self.dtype)}[unknown rank]"
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{dtype_name(self.dtype)}[{dims}]"

    def tensor_info(self) -> Any:
        import tensorflow as tf
        from tensorflow.core.framework import tensor_shape_pb2
        from tensorflow.core.protobuf import meta_graph_pb2

        if self.shape is None:
            shape = tensor_shape_pb2.TensorShapeProto(unknown_rank=True)
        else:
            dims = [tensor_shape_pb2.TensorShapeProto.Dim(size=-1 if d is None else d) for d in self.shape]
            shape = tensor_shape_pb2.TensorShapeProto(dim=dims)
        dtype = tf.string if self.dtype == STRING else tf.as_dtype(self.dtype)
        return meta_graph_pb2.TensorInfo(name=self.tensor_name, dtype=dtype.as_datatype_enum, tensor_shape=shape)

    @classmethod
    def from_tensor_info(cls, key: str, info: Any) -> TensorSpec:
        import tensorflow as tf

        if not info.dtype:  # DT_INVALID: an op output such as __saved_model_init_op's NoOp
            return cls(key, STRING, None, info.name)
        dtype = tf.as_dtype(info.dtype)
        np_dtype = STRING if dtype == tf.string else np.dtype(dtype.as_numpy_dtype)
        shape = None if info.tensor_shape.unknown_rank else tuple(None if d.size < 0 else d.size for d in info.tensor_shape.dim)
        return cls(key, np_dtype, shape, info.name)


@dataclass
class Signature:
    """One SignatureDef; ``strict_shapes`` for Keras models (checked before running)."""

    key: str
    method_name: str
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    strict_shapes: bool = False
    proto: Any = field(default=None, repr=False)  # the stored SignatureDef, when read from a file

    def to_proto(self) -> Any:
        if self.proto is not None:
            return self.proto
        from tensorflow.core.protobuf import meta_graph_pb2

        sig = meta_graph_pb2.SignatureDef(method_name=self.method_name)
        for key, spec in self.inputs.items():
            sig.inputs[key].CopyFrom(spec.tensor_info())
        for key, spec in self.outputs.items():
            sig.outputs[key].CopyFrom(spec.tensor_info())
        return sig

    def check_names(self, given: Any) -> None:
        """TF Serving's predict_util check: the request's keys are the signature's keys."""
        given, wanted = set(given), set(self.inputs)
        if given == wanted:
            return
        extra, missing = sorted(given - wanted), sorted(wanted - given)
        raise invalid(
            f"input size does not match signature: {len(given)}!={len(wanted)} len({{{','.join(sorted(given))}}}) "
            f"!= len({{{','.join(sorted(wanted))}}}). Sent extra: {{{','.join(extra)}}}. "
            f"Missing but required: {{{','.join(missing)}}}. (modelkeep: signature {self.key!r} takes "
            f"{self.describe_inputs()}.)"
        )

    def describe_inputs(self) -> str:
        return ", ".join(f"{k}: {s.describe()}" for k, s in sorted(self.inputs.items()))

    def check_output_filter(self, names: list[str]) -> list[str]:
        seen: set[str] = set()
        for alias in names:
            if alias not in self.outputs:
                raise invalid(
                    f"output tensor alias not found in signature: {alias} Outputs expected to be in the set "
                    f"{{{','.join(sorted(self.outputs))}}}."
                )
            if alias in seen:
                raise invalid(f"duplicate output tensor alias: {alias}")
            seen.add(alias)
        return names or list(self.outputs)


def read_signature_defs(path: str | Path) -> tuple[dict[str, Any], bool]:
    """The ``serve`` MetaGraph's SignatureDefs of a SavedModel, and whether it is TF1 (no object graph)."""
    from modelkeep.storage import guard

    message = guard.read_saved_model_proto(Path(path))  # size-capped, parsed only
    graphs = [g for g in message.meta_graphs if "serve" in g.meta_info_def.tags] or list(message.meta_graphs)
    if not graphs:
        return {}, True
    graph = graphs[0]
    return dict(graph.signature_def), not graph.object_graph_def.nodes


def signatures_from_defs(defs: dict[str, Any]) -> dict[str, Signature]:
    out = {}
    for key, sig in defs.items():
        inputs = {k: TensorSpec.from_tensor_info(k, v) for k, v in sig.inputs.items()}
        outputs = {k: TensorSpec.from_tensor_info(k, v) for k, v in sig.outputs.items()}
        out[key] = Signature(key, sig.method_name, inputs, outputs, proto=sig)
    return out
