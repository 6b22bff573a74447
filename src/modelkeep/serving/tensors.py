"""Tensors in and out, as TF Serving converts them (``util/json_tensor.cc``, ``tensor_util``).

* ``json_to_array``: one JSON value (numbers, strings, ``{"b64": ...}``) as an array of a
  signature input's dtype, with TF Serving's error texts;
* ``rows_to_arrays`` / ``columns_to_arrays``: the ``instances`` and ``inputs`` forms;
* ``predict_json``: outputs as TF Serving's JSON text: float32 printed as TF Serving prints
  it (``%g``, or ``%.9g`` when ``%g`` does not read back to the same float; ``.0`` on whole
  numbers; ``NaN``/``Infinity``), ``*_bytes`` string outputs as ``{"b64": ...}``;
* ``array_to_proto`` / ``proto_to_array``: gRPC TensorProtos, the typed fields
  (``float_val``, ``int_val``, ``string_val``, ...) filled as TF Serving does by default,
  ``tensor_content`` only when asked (TF Serving's ``enable_serialization_as_tensor_content``).

Example::

    arrays = rows_to_arrays([[1.0], [2.0]], signature)      # {"x": array([[1.], [2.]], float32)}
    predict_json({"y": np.float32([[2.5], [3.0]])}, row_form=True)   # '{"predictions":[[2.5],[3.0]]}'
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from typing import Any

import numpy as np

from modelkeep.serving.signature import STRING, Signature, TensorSpec, dtype_name, invalid

_JSON_TYPE = {type(None): "Null", bool: "True", dict: "Object", list: "Array", str: "String", int: "Number", float: "Number"}


def _debug(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=True)


def _type_error(value: Any, spec: TensorSpec) -> Exception:
    kind = "False" if value is False else _JSON_TYPE.get(type(value), "Number")
    return invalid(
        f"JSON Value: {_debug(value)} Type: {kind} is not of expected type: {dtype_name(spec.dtype)} "
        f"(modelkeep: input '{spec.name}' is {spec.describe()})"
    )


def is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def decode_b64(value: Any) -> bytes:
    text = value["b64"]
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise invalid(f"Unable to base64 decode (modelkeep: {text[:40]!r} is not base64 text)") from None


def _leaf_ok(value: Any, spec: TensorSpec) -> bool:
    kind = spec.dtype.kind
    if kind == "f":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind in "iu":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "b":
        return isinstance(value, bool)
    return isinstance(value, str) or is_b64(value)


def _first_bad(value: Any, spec: TensorSpec) -> Any:
    if isinstance(value, list):
        for item in value:
            bad = _first_bad(item, spec)
            if bad is not _OK:
                return bad
        return _OK
    return _OK if _leaf_ok(value, spec) else value


_OK = object()


def _shape_of(value: Any) -> list[int]:
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _strings(value: Any, spec: TensorSpec) -> np.ndarray:
    shape = _shape_of(value)
    flat: list[bytes] = []

    def walk(v: Any, level: int) -> None:
        if isinstance(v, list):
            if level >= len(shape):
                raise invalid(f"Encountered list at unexpected level: {level} expected < {len(shape)}")
            if len(v) != shape[level]:
                raise invalid(
                    f"Encountered list at unexpected size: {len(v)} at level: {level} expected size: {shape[level]}"
                )
            for item in v:
                walk(item, level + 1)
            return
        if level != len(shape):
            raise invalid(
                f"JSON Value: {_debug(v)} found at incorrect level: {level + 1} in the JSON DOM. "
                f"Expected at level: {len(shape)}"
            )
        if isinstance(v, str):
            flat.append(v.encode("utf-8"))
        elif is_b64(v):
            flat.append(decode_b64(v))
        else:
            raise _type_error(v, spec)

    walk(value, 0)
    out = np.empty(len(flat), dtype=object)
    out[:] = flat
    return out.reshape(shape)


def json_to_array(value: Any, spec: TensorSpec) -> np.ndarray:
    """One JSON value as an array of ``spec.dtype`` (no shape check: the model decides)."""
    if spec.dtype == STRING:
        return _strings(value, spec)
    try:
        raw = np.asarray(value)
    except (ValueError, TypeError, OverflowError, RecursionError):
        raw = None
    if raw is None or raw.dtype.kind not in "fiub":
        bad = _first_bad(value, spec)
        if bad is not _OK:
            raise _type_error(bad, spec)
        shape = _shape_of(value)
        raise invalid(f"Expecting shape {shape} but got a ragged list (modelkeep: input '{spec.name}', rows of different lengths)")
    kind, want = raw.dtype.kind, spec.dtype.kind
    if (want == "b") != (kind == "b") or (want in "iu" and kind == "f"):
        bad = _first_bad(value, spec)
        raise _type_error(bad if bad is not _OK else value, spec)
    if want != "b" and raw.size and ((raw == 0) | (raw == 1)).any():  # a true/false numpy took for 1/0?
        bad = _first_bad(value, spec)
        if bad is not _OK:
            raise _type_error(bad, spec)
    if want in "iu" and raw.size:
        info = np.iinfo(spec.dtype)
        if raw.min() < info.min or raw.max() > info.max:
            raise invalid(
                f"JSON Value: {_debug(int(raw.max() if raw.max() > info.max else raw.min()))} Type: Number is not of "
                f"expected type: {dtype_name(spec.dtype)} (modelkeep: out of range [{info.min}, {info.max}])"
            )
    if want == "f":  # cast by Predictor.prepare, which tells overflow from NaN/Infinity
        return raw if kind == "f" else raw.astype(np.float64)
    return raw.astype(spec.dtype, copy=False)


def rows_to_arrays(instances: Any, signature: Signature) -> dict[str, Any]:
    """The ``instances`` (row) form: raw per-input values, batch first."""
    specs = signature.inputs
    if not isinstance(instances[0], dict) or is_b64(instances[0]):
        if len(specs) > 1:
            raise invalid(
                "instances is a plain list, but expecting list of objects as multiple input tensors required as "
                f"per tensorinfo_map (modelkeep: inputs {signature.describe_inputs()})"
            )
        for i, item in enumerate(instances):
            if isinstance(item, dict) and not is_b64(item):
                raise invalid(f"Expecting value/list but got object at item {i} of input list")
        (name,) = specs
        return {name: _stack(instances, specs[name])}
    names = sorted(specs)
    columns: dict[str, list] = {n: [] for n in names}
    for i, item in enumerate(instances):
        if not isinstance(item, dict) or is_b64(item):
            raise invalid(f"Expecting object but got list at item {i} of input list")
        for key in item:
            if key not in specs:
                raise invalid(
                    f"Failed to process element: {i} key: {key} of 'instances' list. Error: INVALID_ARGUMENT: "
                    f"JSON object: does not have named input: {key}"
                )
        if sorted(item) != names:
            raise invalid(
                f"Failed to process element: {i} of 'instances' list. JSON object: {_debug(item)} keys must be "
                f"equal to: {','.join(names)}"
            )
        for key in names:
            columns[key].append(item[key])
    return {k: _stack(v, specs[k]) for k, v in columns.items()}


def _stack(items: list, spec: TensorSpec) -> np.ndarray:
    shapes = {tuple(_shape_of(v)) for v in items[:2]}
    if len(shapes) > 1:
        a, b = (list(s) for s in (_shape_of(items[0]), _shape_of(items[1])))
        raise invalid(f"Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: Expecting shape {a} but got: {b}")
    return json_to_array(items, spec)


def columns_to_arrays(inputs: Any, signature: Signature) -> dict[str, Any]:
    """The ``inputs`` (columnar) form."""
    specs = signature.inputs
    if not isinstance(inputs, dict) or is_b64(inputs):
        if len(specs) > 1:
            raise invalid(
                "inputs is a plain value/list, but expecting an object as multiple input tensors required as per "
                f"tensorinfo_map (modelkeep: inputs {signature.describe_inputs()})"
            )
        (name,) = specs
        return {name: json_to_array(inputs, specs[name])}
    for name in sorted(specs):
        if name not in inputs:
            raise invalid(f"Missing named input: {name} in 'inputs' object. (modelkeep: inputs {signature.describe_inputs()})")
    return {name: json_to_array(inputs[name], spec) for name, spec in specs.items()}


def numeric_request(
    body: Any, predictor: Any, *, allow_non_finite: bool = False, has_bool: bool | None = None
) -> tuple[Any, dict[str, np.ndarray], bool] | None:
    """The common predict body, ready to run: ``(signature, {key: float array}, row_form)``, or None.

    Taken only for ``{"instances": [...]}`` or ``{"inputs": [...]}`` of numbers alone, for a
    Keras model's default signature with one float input, when the values convert in one
    NumPy call to an array of the input's rank and shape, finite (unless allowed). Anything
    else returns None and goes the general way (``parse_predict_json`` then
    ``Predictor.prepare``), which gives the same arrays and every error text; so this path
    changes only the cost (one ``np.asarray`` of the lists, no per-value Python).
    NumPy reads a JSON ``true``/``false`` among numbers as 1/0, which TF Serving refuses: when
    the array holds a 0 or a 1 and ``has_bool`` (whether the request's bytes hold ``true`` or
    ``false``) is not False, the lists are walked for a bool.

    Example::

        numeric_request({"instances": [[1.0, 2.0]]}, predictor)   # (sig, {"x": float32 (1, 2)}, True)
    """
    if type(body) is not dict or len(body) != 1:
        return None
    row_form = "instances" in body
    value = body["instances"] if row_form else body.get("inputs")
    if type(value) is not list or not value or type(value[0]) is dict:
        return None
    target = numeric_target(predictor)
    if target is None:
        return None
    try:
        raw = np.asarray(value)
    except (ValueError, TypeError, OverflowError, RecursionError):
        return None
    if raw.dtype.kind not in "fi" or not fits_numeric_target(raw.shape, target):
        return None
    if has_bool is not False and ((raw == 0) | (raw == 1)).any() and _holds_bool(value):
        return None  # the general path refuses a bool by name
    return finish_numeric(raw, target, row_form, allow_non_finite=allow_non_finite)


def fits_numeric_target(shape: tuple[int, ...], target: tuple[Any, str, np.dtype, tuple]) -> bool:
    """Whether an array of ``shape`` has the rank and fixed sizes of ``numeric_target``'s input, rows > 0."""
    want = target[3]
    if len(shape) != len(want) or shape[0] == 0:
        return False
    return all(w is None or g == w for g, w in zip(shape[1:], want[1:]))


def finish_numeric(
    raw: np.ndarray, target: tuple[Any, str, np.dtype, tuple], row_form: bool, *, allow_non_finite: bool = False
) -> tuple[Any, dict[str, np.ndarray], bool] | None:
    """``numeric_request``'s answer for ``raw`` (int or float values of the input's shape), or None
    when a value is not finite (and that is not allowed): the general path words that error."""
    signature, key, dtype, _ = target
    if raw.dtype.kind == "i":
        raw = raw.astype(np.float64)  # as the general path: int -> float64 -> the input's dtype
    array = raw.astype(dtype, copy=False)
    # A sum is finite only when every value is (NaN and infinities carry through it): one
    # reduction, and the exact test only when the sum is not finite (it may just overflow).
    if not allow_non_finite and not math.isfinite(np.add.reduce(array, None)) and not np.isfinite(array).all():
        return None
    return signature, {key: array}, row_form


def numeric_target(predictor: Any) -> tuple[Any, str, np.dtype, tuple] | None:
    """(signature, input key, dtype, shape) when ``numeric_request`` may serve this predictor, else None.

    Worked out once per predictor (its signatures never change) and kept on it."""
    target = predictor.__dict__.get("_numeric_target", False)
    if target is False:
        signature = predictor.signatures.get("serving_default")
        target = None
        if signature is not None and signature.strict_shapes and predictor.batchable and len(predictor.inputs) == 1:
            spec = predictor.inputs[0]
            if spec.dtype.kind == "f" and spec.shape is not None:
                target = (signature, predictor.input_names[0], spec.dtype, tuple(spec.shape))
        predictor.__dict__["_numeric_target"] = target
    return target


# ------------------------------------------------------------------ JSON out
_F32 = struct.Struct("f")


def _holds_bool(value: list) -> bool:
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if type(item) is bool:
            return True
        if type(item) is list:
            stack.extend(item)
    return False


def _text32(v: float) -> str:
    """WriteDecimal of one float32 (as a Python float): %g, else %.9g; '.0' on whole numbers."""
    text = f"{v:g}"
    if "n" in text:  # nan, inf, -inf: the only texts of %g with a letter n
        return "NaN" if v != v else ("Infinity" if v > 0 else "-Infinity")
    try:
        same = _F32.unpack(_F32.pack(float(text)))[0] == v
    except OverflowError:
        same = False
    if not same:
        text = f"{v:.9g}"
    return text if ("." in text or "e" in text) else text + ".0"


def _text64(v: float) -> str:
    if not math.isfinite(v):
        return "NaN" if v != v else ("Infinity" if v > 0 else "-Infinity")
    text = f"{v:g}"
    if float(text) != v:
        text = f"{v:.17g}"
    return text if ("." in text or "e" in text) else text + ".0"


def _needs_nine(flat: np.ndarray) -> np.ndarray:
    """True where no 6-significant-digit decimal reads back as the float32: %g cannot round-trip.

    The nearest 6-digit decimal (what %g prints) is within one unit of ``rint(v * 10**(5-e))``,
    so when none of those three candidates reads back as ``v``, %g does not either."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        return _needs_nine_unchecked(flat)


def _needs_nine_unchecked(flat: np.ndarray) -> np.ndarray:
    d = flat.astype(np.float64)
    ok = np.isfinite(d) & (d != 0)
    e = np.floor(np.log10(np.abs(np.where(ok, d, 1.0))))
    scale = 10.0 ** (5 - e)
    m = np.rint(d * scale)
    near = np.zeros(len(flat), dtype=bool)
    for k in (-1.0, 0.0, 1.0):
        near |= ((m + k) / scale).astype(np.float32) == flat
    return ok & ~near


def format_floats(values: np.ndarray) -> list[str]:
    """TF Serving's WriteDecimal for every value of a float array (flattened)."""
    if type(values) is np.ndarray and values.dtype == np.float32 and values.size < 32:  # the common small answer
        return [_text32(v) for v in values.ravel().tolist()]
    flat = np.asarray(values).ravel()
    if flat.dtype == np.float64:
        return [_text64(v) for v in flat.tolist()]
    flat = flat.astype(np.float32, copy=False)
    items = flat.tolist()
    if len(items) < 32:
        return [_text32(v) for v in items]
    out = []
    for v, nine in zip(items, _needs_nine(flat).tolist()):
        if nine:
            text = f"{v:.9g}"
            out.append(text if ("." in text or "e" in text) else text + ".0")
        else:
            out.append(_text32(v))
    return out


def _leaves(array: np.ndarray, name: str) -> list[str]:
    kind = array.dtype.kind
    if kind == "f":
        return format_floats(array)
    if kind in "iu":
        return [str(v) for v in array.ravel().tolist()]
    if kind == "b":
        return ["true" if v else "false" for v in array.ravel().tolist()]
    values = [v if isinstance(v, bytes) else str(v).encode() for v in array.ravel().tolist()]
    if name.endswith("_bytes"):
        return ['{"b64":"' + base64.b64encode(v).decode("ascii") + '"}' for v in values]
    return [json.dumps(v.decode("utf-8", errors="replace")) for v in values]


def _nest(texts: list[str], shape: tuple[int, ...]) -> str:
    if not shape:
        return texts[0]
    if len(shape) == 1:
        return "[" + ",".join(texts) + "]"
    step = math.prod(shape[1:])
    return "[" + ",".join(_nest(texts[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])) + "]"


def tensor_json(array: np.ndarray, name: str) -> str:
    if array.ndim == 2 and array.dtype == np.float32:  # the common answer (rows of scores): one join a row
        texts, width = format_floats(array), array.shape[1]
        if width == 1:
            return "[[" + "],[".join(texts) + "]]" if texts else "[]"
        return "[" + ",".join(["[" + ",".join(texts[i : i + width]) + "]" for i in range(0, len(texts), width)]) + "]"
    return _nest(_leaves(array, name), array.shape)


def predict_json(outputs: dict[str, np.ndarray], row_form: bool) -> str:
    """``{"predictions": ...}`` (row form) or ``{"outputs": ...}`` (columnar), as TF Serving writes them."""
    if len(outputs) == 1:  # one output (most models): no sorting, no batch sizes to compare
        ((name, array),) = outputs.items()
        if array.ndim:
            return ('{"predictions":' if row_form else '{"outputs":') + tensor_json(array, name) + "}"
    if not outputs:
        raise invalid("Cannot convert empty tensor map to JSON")
    names = sorted(outputs)
    if not row_form:
        if len(names) == 1:
            return '{"outputs":' + tensor_json(outputs[names[0]], names[0]) + "}"
        parts = [json.dumps(n) + ":" + tensor_json(outputs[n], n) for n in names]
        return '{"outputs":{' + ",".join(parts) + "}}"
    batch = None
    for n in names:
        shape = outputs[n].shape
        if not shape:
            raise invalid(f"Tensor name: {n} has no shape information  (modelkeep: a scalar output has no rows; use the 'inputs' form)")
        if batch is not None and shape[0] != batch:
            raise invalid(f"Tensor name: {n} has inconsistent batch size: {shape[0]} expecting: {batch}")
        batch = shape[0]
    if len(names) == 1:
        return '{"predictions":' + tensor_json(outputs[names[0]], names[0]) + "}"
    leaves = {n: _leaves(outputs[n], n) for n in names}
    rows = []
    for i in range(batch or 0):
        fields = []
        for n in names:
            shape = outputs[n].shape[1:]
            step = math.prod(shape)
            fields.append(json.dumps(n) + ":" + _nest(leaves[n][i * step : (i + 1) * step], shape))
        rows.append("{" + ",".join(fields) + "}")
    return '{"predictions":[' + ",".join(rows) + "]}"


# ------------------------------------------------------------------ gRPC
_TYPED_FIELD = {
    "float32": "float_val", "float64": "double_val", "int32": "int_val", "int16": "int_val", "int8": "int_val",
    "uint8": "int_val", "uint16": "int_val", "int64": "int64_val", "uint32": "uint32_val", "uint64": "uint64_val",
    "bool": "bool_val",
}


def array_to_proto(array: np.ndarray, *, tensor_content: bool = False) -> Any:
    """A TensorProto with the typed value fields filled (``tensor_content`` when asked)."""
    import tensorflow as tf
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2

    array = np.asarray(array)
    if array.dtype == STRING or array.dtype.kind in "SU":
        proto = tensor_pb2.TensorProto(dtype=tf.string.as_datatype_enum)
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in array.ravel().tolist())
    else:
        field = _TYPED_FIELD.get(array.dtype.name)
        if tensor_content or (field is None and array.dtype != np.float16):
            return tf.make_tensor_proto(array)
        proto = tensor_pb2.TensorProto(dtype=tf.as_dtype(array.dtype).as_datatype_enum)
        if array.dtype == np.float16:
            proto.half_val.extend(array.view(np.uint16).ravel().tolist())
        else:
            getattr(proto, field).extend(array.ravel().tolist())
    proto.tensor_shape.CopyFrom(tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in array.shape]))
    return proto


# dtypes whose tensor_content is the NumPy buffer as it is (little-endian, as TensorFlow writes it)
_CONTENT_DTYPES = frozenset(("float32", "float64", "int32", "int64", "int16", "int8", "uint8", "uint16", "uint32", "uint64", "float16"))


def proto_to_array(proto: Any, spec: TensorSpec, position: int) -> np.ndarray:
    """A request TensorProto as an array; its dtype must be the signature's.

    ``tensor_content`` of a plain numeric dtype is read with ``np.frombuffer`` (a read-only
    view of the bytes, no copy); typed fields and other dtypes go through ``tf.make_ndarray``."""
    import tensorflow as tf

    got = tf.as_dtype(proto.dtype) if proto.dtype else None
    want = tf.string if spec.dtype == STRING else tf.as_dtype(spec.dtype)
    if got != want:
        got_name = "invalid" if got is None else dtype_name(STRING if got == tf.string else np.dtype(got.as_numpy_dtype))
        raise invalid(
            f"Expects arg[{position}] to be {dtype_name(spec.dtype)} but {got_name} is provided "
            f"(modelkeep: input '{spec.name}' is {spec.describe()})"
        )
    if proto.tensor_content and spec.dtype.name in _CONTENT_DTYPES:
        shape = [d.size for d in proto.tensor_shape.dim]
        content = proto.tensor_content  # bytes: the one copy out of the message
        if all(d >= 0 for d in shape) and len(content) == math.prod(shape) * spec.dtype.itemsize:
            return np.frombuffer(content, dtype=spec.dtype).reshape(shape)  # a read-only view, no second copy
    try:
        array = tf.make_ndarray(proto)
    except Exception as exc:  # noqa: BLE001 - any undecodable TensorProto is bad input
        raise invalid(f"input '{spec.name}': the TensorProto cannot be decoded ({exc}).") from None
    return array
