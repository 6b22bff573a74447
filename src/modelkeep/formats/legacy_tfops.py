"""tf.keras's ``TFOpLambda`` / ``SlicingOpLambda`` layers, carried to Keras 3 by a table of ops.

tf.keras >= 2.4 records a Python operator or a ``tf.*`` call on a Keras tensor in a Functional
model as a layer whose config names the function (``"reshape"``, ``"math.reduce_mean"``,
``"__operators__.getitem"``) and whose inbound node holds the call's arguments: the first
argument as the node's tensor references (or ``["_CONSTANT_VALUE", -1, value]``), every other
one as a keyword, by the name in the TF function's signature, tensors written as
``[layer, node, tensor]``. Nothing is ever evaluated: each function is looked up in ``OPS``
(op name -> ``Op``: the TF signature, the arguments it can carry and the ``keras.ops`` code that
computes the same numbers, TF's dtype rules included); a function or argument value outside it
is refused by name. The translated layer is ``modelkeep>TFOp``: one registered Keras 3 layer
whose call takes the node's tensors and the call's arguments as JSON.

Example::

    entry = {"class_name": "TFOpLambda", "name": "tf.reshape",
             "config": {"name": "tf.reshape", "function": "reshape"},
             "inbound_nodes": [["dense", 0, 0, {"shape": [-1, 4]}]]}
    layer = to_keras3_layer(entry)       # a modelkeep>TFOp layer entry of a Keras 3 config
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from modelkeep.errors import UnsupportedModelError

#: tf.keras's layer classes that record one TF function call each
OP_LAYERS = ("TFOpLambda", "SlicingOpLambda")
#: the registered name of the Keras 3 layer that replays one call
REGISTERED = "modelkeep>TFOp"
#: TF 1 argument names of ``tf.compat.v1.*`` functions, as their TF 2 names
_V1_NAMES = {"squeeze_dims": "axis", "dim": "axis", "reduction_indices": "axis", "keep_dims": "keepdims",
             "dimension": "axis"}
_IGNORED = ("name",)
#: functions whose first argument is a list of tensors (a list of one is still a list)
_LIST_FIRST = ("concat", "stack", "math.add_n")


@dataclass(frozen=True)
class Op:
    """One TF function: its parameters in TF's order (the first is the tensor input), the values
    of parameters it can only carry at one value, and ``run(a) -> tensor(s)`` on a dict of them."""

    params: tuple[str, ...]
    run: Callable[[dict], Any]
    defaults: dict = field(default_factory=dict)
    only: dict = field(default_factory=dict)  # parameter -> the values that can be carried


def _ops():
    from keras import ops

    return ops


# ------------------------------------------------------------------ TF's own rules, in keras.ops
def _is_tensor(value: Any) -> bool:
    return hasattr(value, "dtype") and hasattr(value, "shape")


def _dtype(value: Any) -> str:
    from keras import backend

    return backend.standardize_dtype(value.dtype)


def _binary(fn: str) -> Callable[[dict], Any]:
    """``x <op> y`` as TF computes it: a constant operand takes the tensor operand's dtype."""

    def run(a: dict) -> Any:
        ops = _ops()
        x, y = a["x"], a["y"]
        if not _is_tensor(x):
            x = ops.convert_to_tensor(x, dtype=_dtype(y))
        if not _is_tensor(y):
            y = ops.convert_to_tensor(y, dtype=_dtype(x))
        if fn == "true_divide":
            x, y = _tf_truediv_operands(x, y)
        elif fn == "div":  # tf.compat.v1.div: Python 2 division (floor for integers)
            fn_name = "floor_divide" if "int" in _dtype(x) else "true_divide"
            return getattr(ops, fn_name)(x, y)
        return getattr(ops, fn)(x, y)

    return run


def _tf_truediv_operands(x: Any, y: Any) -> tuple[Any, Any]:
    # TF divides int8/int16/uint8/uint16 in float32 and int32/int64 in float64 (Keras: float32)
    ops = _ops()
    kind = _dtype(x)
    if "int" in kind:
        target = "float32" if kind in ("int8", "int16", "uint8", "uint16") else "float64"
        return ops.cast(x, target), ops.cast(y, target)
    return x, y


def _unary(fn: str) -> Op:
    return Op(("x",), lambda a: getattr(_ops(), fn)(a["x"]))


def _reduce(fn: str) -> Op:
    def run(a: dict) -> Any:
        ops = _ops()
        x, axis, keepdims = a["input_tensor"], _axis(a["axis"]), bool(a["keepdims"])
        kind = _dtype(x)
        if fn == "mean" and ("int" in kind or kind == "bool"):
            raise _CallRefused("reduce_mean of an integer tensor (TF divides in integers, Keras 3 in floats)")
        if fn in ("logsumexp", "var", "std") and "float" not in kind:
            raise _CallRefused(f"reduce_{fn} of a {kind} tensor")
        out = getattr(ops, fn)(x, axis=axis, keepdims=keepdims)
        if fn in ("sum", "prod") and "int" in kind:
            out = ops.cast(out, kind)  # TF keeps int8/int16; Keras 3 widens them
        return out

    return Op(("input_tensor", "axis", "keepdims"), run, {"axis": None, "keepdims": False})


def _axis(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


class _CallRefused(Exception):
    """A call whose tensors' dtypes or shapes make Keras 3's op compute something else."""


def _matmul(a: dict) -> Any:
    ops = _ops()
    operands = []
    for key in ("a", "b"):
        value = a[key]
        if a[f"adjoint_{key}"] and "complex" in _dtype(value):
            raise _CallRefused("adjoint of a complex tensor")
        if a[f"transpose_{key}"] or a[f"adjoint_{key}"]:  # the adjoint of a real matrix is its transpose
            value = ops.swapaxes(value, -1, -2)
        operands.append(value)
    return ops.matmul(*operands)


def _l2_normalize(a: dict) -> Any:
    # TF: x * rsqrt(max(sum(x^2, axis, keepdims), epsilon)), axis None = every axis
    ops = _ops()
    x = a["x"]
    square_sum = ops.sum(ops.square(x), axis=_axis(a["axis"]), keepdims=True)
    epsilon = ops.convert_to_tensor(a["epsilon"], dtype=_dtype(x))
    return ops.multiply(x, ops.rsqrt(ops.maximum(square_sum, epsilon)))


def _softmax(fn: str) -> Op:
    return Op(("logits", "axis"), lambda a: getattr(_ops(), fn)(a["logits"], axis=-1 if a["axis"] is None else a["axis"]),
              {"axis": None})


def _split(a: dict) -> Any:
    import numpy as np

    ops = _ops()
    x, sizes, axis = a["value"], a["num_or_size_splits"], a["axis"]
    if isinstance(sizes, int):
        return ops.split(x, sizes, axis=axis)
    sizes = list(sizes)
    if -1 in sizes:
        length = x.shape[axis]
        if length is None:
            raise _CallRefused("a size of -1 along an axis of unknown length")
        sizes[sizes.index(-1)] = length - (sum(sizes) + 1)
    return ops.split(x, [int(i) for i in np.cumsum(sizes[:-1])], axis=axis)


def _shape(a: dict) -> Any:
    ops = _ops()
    dims = ops.shape(a["input"])
    return ops.stack([ops.cast(d, a["out_type"]) for d in dims]) if dims else ops.zeros((0,), a["out_type"])


def _one_hot(a: dict) -> Any:
    ops = _ops()
    on, off, dtype = a["on_value"], a["off_value"], a["dtype"]
    if dtype is None:
        dtype = _dtype(on) if _is_tensor(on) else _dtype(off) if _is_tensor(off) else (
            "float32" if on is None and off is None else _const_dtype(on if on is not None else off))
    hot = ops.one_hot(a["indices"], a["depth"], axis=-1 if a["axis"] is None else a["axis"], dtype=dtype)
    if on is None and off is None:
        return hot
    on = ops.convert_to_tensor(1 if on is None else on, dtype=dtype)
    off = ops.convert_to_tensor(0 if off is None else off, dtype=dtype)
    return ops.where(ops.cast(hot, "bool"), on, off)


def _const_dtype(value: Any) -> str:
    return "float32" if isinstance(value, float) else "int32" if isinstance(value, int) else "float32"


def _gather(a: dict) -> Any:
    axis = a["batch_dims"] if a["axis"] is None else a["axis"]  # TF's default axis is batch_dims (0)
    return _ops().take(a["params"], a["indices"], axis=axis)


def _where(a: dict) -> Any:
    ops = _ops()
    if a["x"] is None and a["y"] is None:
        raise _CallRefused("tf.where(condition) (indices of true elements, a dynamic shape)")
    return ops.where(a["condition"], a["x"], a["y"])


def _where_v1(a: dict) -> Any:
    cond, x = a["condition"], a["x"]
    if x is not None and len(cond.shape) != len(x.shape):
        raise _CallRefused("tf.compat.v1.where selecting rows by a lower-rank condition")
    return _where(a)


def _argminmax(fn: str) -> Op:
    def run(a: dict) -> Any:
        ops = _ops()
        out = getattr(ops, fn)(a["input"], axis=0 if a["axis"] is None else a["axis"])  # TF: None means 0
        return ops.cast(out, a["output_type"])

    return Op(("input", "axis", "output_type"), run, {"axis": None, "output_type": "int64"})


def _resize(a: dict) -> Any:
    from keras import ops

    return ops.image.resize(a["images"], tuple(a["size"]), interpolation=a["method"], antialias=bool(a["antialias"]),
                            data_format="channels_last")


def _getitem(a: dict) -> Any:
    spec = a["slice_spec"]
    key = tuple(_slice_item(s) for s in spec) if isinstance(spec, list) else _slice_item(spec)
    return a["tensor"][key]


def _slice_item(item: Any) -> Any:
    if isinstance(item, dict) and item.get("__slice__"):
        return slice(*item["__slice__"])
    if isinstance(item, dict) and item.get("__ellipsis__"):
        return Ellipsis
    return item


def _pad(a: dict) -> Any:
    mode = str(a["mode"]).lower()
    kwargs = {"constant_values": a["constant_values"]} if mode == "constant" else {}
    return _ops().pad(a["tensor"], a["paddings"], mode=mode, **kwargs)


def _squeeze(a: dict) -> Any:
    x, axis = a["input"], _axis(a["axis"])
    if axis is None and any(d is None for d in x.shape):
        # TF drops every size-1 axis it finds at run time (the batch axis too, for one sample)
        raise _CallRefused("tf.squeeze without an axis on a tensor of unknown shape (its rank depends on the data)")
    return _ops().squeeze(x, axis=axis)


def _gelu(a: dict) -> Any:
    return _ops().gelu(a["features"], approximate=bool(a["approximate"]))  # TF's default False, Keras 3's True


def _build_table() -> dict[str, Op]:
    k = _ops
    table: dict[str, Op] = {}
    for name, fn in {"__operators__.add": "add", "math.add": "add", "math.subtract": "subtract",
                     "math.multiply": "multiply", "math.truediv": "true_divide", "math.divide": "true_divide",
                     "math.floordiv": "floor_divide", "floor_div": "floor_divide", "math.floormod": "mod",
                     "math.pow": "power", "math.maximum": "maximum", "math.minimum": "minimum",
                     "math.greater": "greater", "math.greater_equal": "greater_equal", "math.less": "less",
                     "math.less_equal": "less_equal", "math.equal": "equal", "math.not_equal": "not_equal",
                     "math.logical_and": "logical_and", "math.logical_or": "logical_or",
                     "math.logical_xor": "logical_xor", "div": "div"}.items():
        table[name] = Op(("x", "y"), _binary(fn))
    table["math.squared_difference"] = Op(("x", "y"), lambda a: k().square(_binary("subtract")(a)))
    for name, fn in {"abs": "abs", "exp": "exp", "log": "log", "sqrt": "sqrt", "square": "square",
                     "sigmoid": "sigmoid", "tanh": "tanh", "negative": "negative", "reciprocal": "reciprocal",
                     "rsqrt": "rsqrt", "log1p": "log1p", "expm1": "expm1", "sin": "sin", "cos": "cos", "tan": "tan",
                     "floor": "floor", "ceil": "ceil", "round": "round", "sign": "sign", "softplus": "softplus",
                     "erf": "erf", "logical_not": "logical_not", "softsign": "softsign", "log_sigmoid": "log_sigmoid",
                     "is_nan": "isnan", "is_inf": "isinf", "is_finite": "isfinite"}.items():
        table[f"math.{name}"] = _unary(fn)
    for name, fn in {"sum": "sum", "mean": "mean", "max": "max", "min": "min", "prod": "prod", "any": "any",
                     "all": "all"}.items():
        table[f"math.reduce_{name}"] = _reduce(fn)
    table["math.argmax"], table["math.argmin"] = _argminmax("argmax"), _argminmax("argmin")
    table["math.add_n"] = Op(("inputs",), lambda a: _add_n(a["inputs"]))
    table["math.cumsum"] = Op(("x", "axis", "exclusive", "reverse"), lambda a: k().cumsum(a["x"], axis=a["axis"]),
                              {"axis": 0, "exclusive": False, "reverse": False}, {"exclusive": (False,), "reverse": (False,)})
    for name in ("relu", "relu6", "elu", "selu"):
        table[f"nn.{name}"] = Op(("features",), lambda a, fn=name: getattr(k(), fn)(a["features"]))
    table["nn.silu"] = Op(("features", "beta"), lambda a: k().multiply(a["features"], k().sigmoid(
        k().multiply(a["features"], k().convert_to_tensor(a["beta"], dtype=_dtype(a["features"]))))), {"beta": 1.0})
    table["nn.leaky_relu"] = Op(("features", "alpha"), lambda a: k().leaky_relu(a["features"], negative_slope=a["alpha"]),
                                {"alpha": 0.2})
    table["nn.gelu"] = Op(("features", "approximate"), _gelu, {"approximate": False})
    table["nn.softmax"], table["nn.log_softmax"] = _softmax("softmax"), _softmax("log_softmax")
    table["math.l2_normalize"] = Op(("x", "axis", "epsilon"), _l2_normalize, {"axis": None, "epsilon": 1e-12})
    table["linalg.matmul"] = Op(("a", "b", "transpose_a", "transpose_b", "adjoint_a", "adjoint_b", "a_is_sparse",
                                 "b_is_sparse", "output_type"), _matmul,
                                {"transpose_a": False, "transpose_b": False, "adjoint_a": False, "adjoint_b": False,
                                 "a_is_sparse": False, "b_is_sparse": False, "output_type": None},
                                {"output_type": (None,)})
    table["reshape"] = Op(("tensor", "shape"), lambda a: k().reshape(a["tensor"], a["shape"]))
    table["concat"] = Op(("values", "axis"), lambda a: k().concatenate(list(a["values"]), axis=a["axis"]))
    table["stack"] = Op(("values", "axis"), lambda a: k().stack(list(a["values"]), axis=a["axis"]), {"axis": 0})
    table["expand_dims"] = Op(("input", "axis"), lambda a: k().expand_dims(a["input"], a["axis"]))
    table["squeeze"] = Op(("input", "axis"), _squeeze, {"axis": None})
    table["transpose"] = Op(("a", "perm", "conjugate"), lambda a: k().transpose(a["a"], axes=a["perm"]),
                            {"perm": None, "conjugate": False}, {"conjugate": (False,)})
    table["cast"] = Op(("x", "dtype"), lambda a: k().cast(a["x"], a["dtype"]))
    table["clip_by_value"] = Op(("t", "clip_value_min", "clip_value_max"),
                                lambda a: k().clip(a["t"], a["clip_value_min"], a["clip_value_max"]))
    table["where"] = Op(("condition", "x", "y"), _where, {"x": None, "y": None})
    table["split"] = Op(("value", "num_or_size_splits", "axis", "num"), _split, {"axis": 0, "num": None})
    table["tile"] = Op(("input", "multiples"), lambda a: k().tile(a["input"], a["multiples"]))
    table["pad"] = Op(("tensor", "paddings", "mode", "constant_values"), _pad, {"mode": "CONSTANT", "constant_values": 0},
                      {"mode": ("CONSTANT", "REFLECT", "SYMMETRIC", "constant", "reflect", "symmetric")})
    table["shape"] = Op(("input", "out_type"), _shape, {"out_type": "int32"})
    table["one_hot"] = Op(("indices", "depth", "on_value", "off_value", "axis", "dtype"), _one_hot,
                          {"on_value": None, "off_value": None, "axis": None, "dtype": None})
    table["gather"] = Op(("params", "indices", "validate_indices", "axis", "batch_dims"), _gather,
                         {"validate_indices": None, "axis": None, "batch_dims": 0}, {"batch_dims": (0,)})
    table["image.resize"] = Op(("images", "size", "method", "preserve_aspect_ratio", "antialias"), _resize,
                               {"method": "bilinear", "preserve_aspect_ratio": False, "antialias": False},
                               {"preserve_aspect_ratio": (False,),
                                "method": ("bilinear", "nearest", "bicubic", "area", "lanczos3", "lanczos5")})
    table["__operators__.getitem"] = Op(("tensor", "slice_spec"), _getitem)
    table["compat.v1.where"] = Op(("condition", "x", "y"), _where_v1, {"x": None, "y": None})
    _more(table)
    return table


def _norm(a: dict) -> Any:
    # TF's euclidean norm: sqrt(sum(x * x)) over ``axis`` (every axis when None)
    ops = _ops()
    x = a["tensor"]
    return ops.sqrt(ops.sum(ops.multiply(x, x), axis=_axis(a["axis"]), keepdims=bool(a["keepdims"])))


def _sort(a: dict) -> Any:
    ops = _ops()
    out = ops.sort(a["values"], axis=a["axis"])
    return ops.flip(out, axis=a["axis"]) if a["direction"] == "DESCENDING" else out


def _bias_add(a: dict) -> Any:
    return _binary("add")({"x": a["value"], "y": a["bias"]})


def _more(table: dict[str, Op]) -> None:
    k = _ops
    for name, fn in {"atan": "arctan", "asin": "arcsin", "acos": "arccos", "sinh": "sinh", "cosh": "cosh",
                     "asinh": "arcsinh", "acosh": "arccosh", "atanh": "arctanh", "rint": "round"}.items():
        table[f"math.{name}"] = _unary(fn)
    table["identity"] = Op(("input",), lambda a: k().copy(a["input"]))  # tf.concat of one tensor records it
    table["math.atan2"] = Op(("y", "x"), lambda a: k().arctan2(a["y"], a["x"]))
    table["math.divide_no_nan"] = Op(("x", "y"), _binary("divide_no_nan"))
    table["math.reduce_logsumexp"] = _reduce("logsumexp")
    table["math.reduce_variance"] = _reduce("var")
    table["math.reduce_std"] = _reduce("std")
    table["math.reduce_euclidean_norm"] = Op(("input_tensor", "axis", "keepdims"),
                                             lambda a: _norm({"tensor": a["input_tensor"], "axis": a["axis"],
                                                              "keepdims": a["keepdims"]}), {"axis": None, "keepdims": False})
    table["norm"] = Op(("tensor", "ord", "axis", "keepdims"), _norm, {"ord": "euclidean", "axis": None, "keepdims": None},
                       {"ord": ("euclidean", 2, 2.0), "axis": (None, *range(-8, 8))})
    table["math.cumprod"] = Op(("x", "axis", "exclusive", "reverse"), lambda a: k().cumprod(a["x"], axis=a["axis"]),
                               {"axis": 0, "exclusive": False, "reverse": False}, {"exclusive": (False,), "reverse": (False,)})
    table["zeros_like"] = Op(("input", "dtype"), lambda a: k().zeros_like(a["input"], dtype=a["dtype"]), {"dtype": None})
    table["ones_like"] = Op(("input", "dtype"), lambda a: k().ones_like(a["input"], dtype=a["dtype"]), {"dtype": None})
    table["unstack"] = Op(("value", "num", "axis"), lambda a: k().unstack(a["value"], num=a["num"], axis=a["axis"]),
                          {"num": None, "axis": 0})
    table["reverse"] = Op(("tensor", "axis"), lambda a: k().flip(a["tensor"], axis=_axis(a["axis"])))
    table["broadcast_to"] = Op(("input", "shape"), lambda a: k().broadcast_to(a["input"], a["shape"]))
    table["repeat"] = Op(("input", "repeats", "axis"), lambda a: k().repeat(a["input"], a["repeats"], axis=a["axis"]),
                         {"axis": None})
    table["sort"] = Op(("values", "axis", "direction"), _sort, {"axis": -1, "direction": "ASCENDING"},
                       {"direction": ("ASCENDING", "DESCENDING")})
    table["nn.bias_add"] = Op(("value", "bias", "data_format"), _bias_add, {"data_format": None},
                              {"data_format": (None, "NHWC", "NWC", "NDHWC", "N...C")})


def _add_n(values: Any) -> Any:
    ops = _ops()
    values = list(values)
    out = values[0]
    for value in values[1:]:
        out = ops.add(out, value)
    return out


#: TF 2 names that tf.keras records for the same function (tf.nn.sigmoid is tf.math.sigmoid, ...)
ALIASES = {"nn.sigmoid": "math.sigmoid", "nn.tanh": "math.tanh", "nn.l2_normalize": "math.l2_normalize",
           "nn.swish": "nn.silu", "matmul": "linalg.matmul", "math.floor_div": "floor_div",
           "nn.softplus": "math.softplus", "nn.softsign": "math.softsign", "math.realdiv": "math.truediv",
           "truediv": "math.truediv"}
_TABLE: dict[str, Op] | None = None


def table() -> dict[str, Op]:
    """Op name (as tf.keras records it, without ``tf.``) -> ``Op``."""
    global _TABLE
    if _TABLE is None:
        _TABLE = _build_table()
    return _TABLE


def lookup(function: str) -> tuple[str, Op, bool] | None:
    """``(canonical name, Op, is_v1)`` of a recorded function name, or None when not carried."""
    name = function[3:] if function.startswith("tf.") else function
    v1 = False
    if name.startswith("compat.v1.") and name not in table():
        name, v1 = name[len("compat.v1."):], True
    for candidate in (name, f"math.{name}"):
        candidate = ALIASES.get(candidate, candidate)
        if candidate in table():
            return candidate, table()[candidate], v1
    return None


# ------------------------------------------------------------------ config translation
def _refused(layer: str, function: str, why: str, kind: str = "TFOpLambda") -> UnsupportedModelError:
    if function == "__operators__.getitem":
        kind = "SlicingOpLambda"
    error = UnsupportedModelError(
        f"load_model: layer '{layer}' ({kind}) records the TensorFlow call tf.{function}, {why}. "
        "Build the model in code (use keras.ops or a layer for that step) and load the file's weights "
        "with modelkeep.load_weights(model, path)."
    )
    error._keras_call_info_injected = True  # type: ignore[attr-defined]  # Keras relays it unchanged
    return error


def _is_ref(value: Any) -> bool:
    # tf.keras's own test for a serialized tensor inside call arguments
    return (isinstance(value, list) and len(value) in (3, 4) and isinstance(value[0], str)
            and isinstance(value[1], int) and isinstance(value[2], int) and value[0] != "_CONSTANT_VALUE")


def _node_refs(node: Any) -> list | None:
    if isinstance(node, list) and len(node) == 4 and isinstance(node[0], str) and isinstance(node[3], dict):
        return [node]
    if isinstance(node, list) and node and all(isinstance(r, list) and len(r) == 4 and isinstance(r[0], str)
                                               and isinstance(r[3], dict) for r in node):
        return node
    return None


class _Template:
    """Call arguments with each tensor reference replaced by ``{"__tensor__": i}``."""

    def __init__(self) -> None:
        self.refs: list[list] = []

    def tensor(self, ref: list) -> dict:
        self.refs.append(list(ref[:3]))
        return {"__tensor__": len(self.refs) - 1}

    def value(self, value: Any, *, slices: bool = False) -> Any:
        if _is_ref(value):
            return self.tensor(value)
        if isinstance(value, dict):
            if slices and set(value) == {"start", "stop", "step"}:
                return {"__slice__": [self.value(value[k]) for k in ("start", "stop", "step")]}
            if slices and value.get("class_name") == "__ellipsis__":
                return {"__ellipsis__": True}
            if "__tensor__" in value or "__slice__" in value or "__ellipsis__" in value:
                raise ValueError("a constant that looks like a placeholder")
            return {k: self.value(v, slices=slices) for k, v in value.items()}
        if isinstance(value, list):
            return [self.value(v, slices=slices) for v in value]
        if value is None or isinstance(value, bool | int | float | str):
            return value
        raise ValueError(f"a {type(value).__name__} constant")


def to_keras3_layer(entry: dict) -> dict:
    """A tf.keras ``TFOpLambda``/``SlicingOpLambda`` entry as a ``modelkeep>TFOp`` entry.

    Raises ``UnsupportedModelError`` naming the layer and the function when the function, an
    argument or an argument's value has no faithful Keras 3 translation.
    """
    config = entry.get("config") or {}
    layer = entry.get("name", config.get("name", "?"))
    function = str(config.get("function", "?"))
    found = lookup(function)
    if found is None:
        raise _refused(layer, function, "which has no Keras 3 translation in modelkeep (keras.ops has no op computing "
                       "exactly what it computed)")
    canonical, op, v1 = found
    nodes = []
    for node in entry.get("inbound_nodes") or []:
        refs = _node_refs(node)
        if refs is None:
            raise _refused(layer, function, f"whose call node {json.dumps(node)[:200]} is not in tf.keras's form")
        template = _Template()
        first: Any
        if refs[0][0] == "_CONSTANT_VALUE":
            first = template.value(refs[0][2])
        elif len(refs) > 1 or canonical in _LIST_FIRST:
            first = [template.tensor(r) for r in refs]
        else:
            first = template.tensor(refs[0])
        arguments = {op.params[0]: first}
        for key, value in refs[0][3].items():
            key = _V1_NAMES.get(key, key)  # TF 1 names, still accepted (deprecated) by several TF 2 functions
            if key in _IGNORED or (value is None and key in arguments):
                continue
            if key not in op.params:
                raise _refused(layer, function, f"with the argument '{key}', which modelkeep cannot carry")
            try:
                arguments[key] = template.value(value, slices=canonical == "__operators__.getitem")
            except ValueError as exc:
                raise _refused(layer, function, f"with the argument '{key}' holding {exc}") from None
        for key, allowed in op.only.items():
            if key in arguments and arguments[key] not in allowed:
                raise _refused(layer, function, f"with {key}={arguments[key]!r}, which modelkeep cannot carry "
                               f"(only {', '.join(map(repr, allowed))})")
        missing = [p for p in op.params if p not in arguments and p not in op.defaults]
        if missing:
            raise _refused(layer, function, f"without the argument(s) {missing}")
        refs_out = [{"class_name": "__keras_tensor__", "config": {"shape": [None], "dtype": "float32", "keras_history": r}}
                    for r in template.refs]
        nodes.append({"args": [refs_out], "kwargs": {"spec": json.dumps(arguments)}})
    body = {"name": layer, "function": canonical, "recorded": function, "trainable": False,
            "dtype": config.get("dtype", "float32")}
    if isinstance(body["dtype"], dict):
        body["dtype"] = (body["dtype"].get("config") or {}).get("name", "float32")
    return {"module": None, "class_name": "TFOp", "registered_name": REGISTERED, "config": body, "name": layer,
            "inbound_nodes": nodes}


# ------------------------------------------------------------------ the Keras 3 layer
_LAYER: type | None = None


def layer_class() -> type:
    """The registered Keras 3 layer ``modelkeep>TFOp`` (created once, on first use)."""
    global _LAYER
    if _LAYER is not None:
        return _LAYER
    import keras

    existing = keras.saving.get_registered_object(REGISTERED)
    if existing is not None:
        _LAYER = existing
        return existing

    @keras.saving.register_keras_serializable(package="modelkeep", name="TFOp")
    class TFOp(keras.layers.Layer):
        """One call of a TF function recorded by tf.keras, replayed with ``keras.ops`` (see ``OPS``)."""

        def __init__(self, function: str, recorded: str | None = None, **kwargs: Any) -> None:
            kwargs.pop("autocast", None)
            super().__init__(autocast=False, **kwargs)
            found = lookup(function)
            if found is None:
                raise _refused(self.name, function, "which has no Keras 3 translation in modelkeep")
            self.function, self._op = found[0], found[1]
            self.recorded = recorded or function  # the name tf.keras wrote, for writing it back

        def call(self, inputs: Any, spec: str = "{}") -> Any:
            tensors = list(inputs) if isinstance(inputs, list | tuple) else [inputs]
            arguments = {**self._op.defaults, **_fill(json.loads(spec), tensors)}
            try:
                return self._op.run(arguments)
            except _CallRefused as exc:
                raise _refused(self.name, self.function, f"as {exc}, which Keras 3 computes differently") from None

        def compute_output_spec(self, *args: Any, **kwargs: Any) -> Any:
            from keras.src import backend

            try:
                return backend.compute_output_spec(self.call, *args, **kwargs)
            except UnsupportedModelError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure of the op on these inputs is a refusal
                raise _refused(self.name, self.function, f"which Keras 3 could not run on these inputs ({exc})") from exc

        def get_config(self) -> dict:
            return {**super().get_config(), "function": self.function, "recorded": self.recorded}

    _LAYER = TFOp
    return TFOp


def _fill(value: Any, tensors: list) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__tensor__"}:
            return tensors[value["__tensor__"]]
        return {k: _fill(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, tensors) for v in value]
    return value


# ------------------------------------------------------------------ back to tf.keras (.h5 that tf-keras reads)
def to_tf_op_lambda(entry: dict) -> dict:
    """A serialized ``modelkeep>TFOp`` layer as the ``TFOpLambda``/``SlicingOpLambda`` tf.keras wrote."""
    config = entry.get("config") or {}
    function = str(config.get("recorded") or config.get("function"))
    function = function[3:] if function.startswith("tf.") else function
    if function == "floor_div":
        function = "compat.v1.floor_div"
    canonical, op, _ = lookup(function) or (function, None, False)
    nodes = []
    for node in entry.get("inbound_nodes") or []:
        refs = [list(t["config"]["keras_history"]) for t in (node.get("args") or [[]])[0]]
        arguments = json.loads((node.get("kwargs") or {}).get("spec", "{}"))
        arguments = _unfill(arguments, refs)
        first_name = op.params[0] if op is not None else next(iter(arguments))
        first = arguments.pop(first_name)
        if isinstance(first, list) and first and all(_is_ref(r) for r in first):
            nodes.append([[*r, arguments] for r in first])
        elif _is_ref(first):
            nodes.append([*first, arguments])
        else:
            nodes.append(["_CONSTANT_VALUE", -1, first, arguments])
    kind = "SlicingOpLambda" if canonical == "__operators__.getitem" else "TFOpLambda"
    body = {"name": config.get("name"), "trainable": config.get("trainable", True),
            "dtype": config.get("dtype") if isinstance(config.get("dtype"), str) else "float32", "function": function}
    return {"class_name": kind, "config": body, "name": entry.get("name", config.get("name")), "inbound_nodes": nodes}


def _unfill(value: Any, refs: list) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__tensor__"}:
            return refs[value["__tensor__"]]
        if set(value) == {"__slice__"}:
            return dict(zip(("start", "stop", "step"), (_unfill(v, refs) for v in value["__slice__"])))
        if set(value) == {"__ellipsis__"}:
            return {"class_name": "__ellipsis__"}
        return {k: _unfill(v, refs) for k, v in value.items()}
    if isinstance(value, list):
        return [_unfill(v, refs) for v in value]
    return value
