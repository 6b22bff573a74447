"""TF 2.0-2.3's ``TensorFlowOpLayer`` (one raw TF graph op: ``AddV2``, ``StridedSlice``, ...) as a
``TFOpLambda`` call, so that ``legacy_tfops``' table carries it.

Before tf.keras 2.4 recorded ``tf.*`` calls by function (``TFOpLambda``), it recorded each raw
graph op a call created: the layer config holds the op's ``node_def`` (op name, input names,
attributes in protobuf JSON) and ``constants`` (input position -> value); the layer's inbound
node lists the other inputs in order. ``RAW`` maps an op to the TF 2 function that creates it
and says where each input and attribute goes; ops outside it are refused by name.

Example::

    entry = {"class_name": "TensorFlowOpLayer", "name": "tf_op_layer_truediv",
             "config": {"name": "truediv", "node_def": {"op": "RealDiv", "input": ["d", "truediv/y"]},
                        "constants": {"1": 255.0}},
             "inbound_nodes": [[["dense", 0, 0, {}]]]}
    as_tf_op_lambda(entry)["config"]["function"]     # "math.truediv"
"""

from __future__ import annotations

from typing import Any

from modelkeep.errors import UnsupportedModelError
from modelkeep.formats.legacy_tfops import REGISTERED

_DTYPES = {"DT_FLOAT": "float32", "DT_DOUBLE": "float64", "DT_HALF": "float16", "DT_BFLOAT16": "bfloat16",
           "DT_INT8": "int8", "DT_INT16": "int16", "DT_INT32": "int32", "DT_INT64": "int64", "DT_UINT8": "uint8",
           "DT_UINT16": "uint16", "DT_BOOL": "bool"}
_BINARY = {"AddV2": "math.add", "Add": "math.add", "Sub": "math.subtract", "Mul": "math.multiply",
           "RealDiv": "math.truediv", "FloorDiv": "math.floordiv", "FloorMod": "math.floormod", "Maximum": "math.maximum",
           "Minimum": "math.minimum", "Pow": "math.pow", "SquaredDifference": "math.squared_difference",
           "Greater": "math.greater", "GreaterEqual": "math.greater_equal", "Less": "math.less",
           "LessEqual": "math.less_equal", "Equal": "math.equal", "NotEqual": "math.not_equal",
           "LogicalAnd": "math.logical_and", "LogicalOr": "math.logical_or", "DivNoNan": "math.divide_no_nan",
           "Atan2": "math.atan2"}
_UNARY = {"Abs": "math.abs", "Exp": "math.exp", "Log": "math.log", "Sqrt": "math.sqrt", "Square": "math.square",
          "Sigmoid": "math.sigmoid", "Tanh": "math.tanh", "Neg": "math.negative", "Reciprocal": "math.reciprocal",
          "Inv": "math.reciprocal", "Rsqrt": "math.rsqrt", "Log1p": "math.log1p", "Expm1": "math.expm1",
          "Sin": "math.sin", "Cos": "math.cos", "Tan": "math.tan", "Floor": "math.floor", "Ceil": "math.ceil",
          "Round": "math.round", "Rint": "math.round", "Sign": "math.sign", "Softplus": "math.softplus",
          "Softsign": "math.softsign", "Erf": "math.erf", "LogicalNot": "math.logical_not", "Atan": "math.atan",
          "Asin": "math.asin", "Acos": "math.acos", "Sinh": "math.sinh", "Cosh": "math.cosh", "IsNan": "math.is_nan"}
_FEATURES = {"Relu": "nn.relu", "Relu6": "nn.relu6", "Elu": "nn.elu", "Selu": "nn.selu"}
_REDUCE = {"Mean": "math.reduce_mean", "Sum": "math.reduce_sum", "Max": "math.reduce_max", "Min": "math.reduce_min",
           "Prod": "math.reduce_prod", "Any": "math.reduce_any", "All": "math.reduce_all"}
#: op -> (function, parameter of each input in order, {attribute: parameter})
_PLAIN = {
    "Identity": ("identity", ("input",), {}),
    "Reshape": ("reshape", ("tensor", "shape"), {}),
    "ExpandDims": ("expand_dims", ("input", "axis"), {}),
    "Transpose": ("transpose", ("a", "perm"), {}),
    "Tile": ("tile", ("input", "multiples"), {}),
    "Pad": ("pad", ("tensor", "paddings"), {}),
    "PadV2": ("pad", ("tensor", "paddings", "constant_values"), {}),
    "MirrorPad": ("pad", ("tensor", "paddings"), {"mode": "mode"}),
    "GatherV2": ("gather", ("params", "indices", "axis"), {"batch_dims": "batch_dims"}),
    "SelectV2": ("where", ("condition", "x", "y"), {}),
    "Select": ("compat.v1.where", ("condition", "x", "y"), {}),
    "ClipByValue": ("clip_by_value", ("t", "clip_value_min", "clip_value_max"), {}),
    "ArgMax": ("math.argmax", ("input", "axis"), {"output_type": "output_type"}),
    "ArgMin": ("math.argmin", ("input", "axis"), {"output_type": "output_type"}),
    "Cumsum": ("math.cumsum", ("x", "axis"), {"exclusive": "exclusive", "reverse": "reverse"}),
    "ZerosLike": ("zeros_like", ("input",), {}),
    "OnesLike": ("ones_like", ("input",), {}),
    "MatMul": ("linalg.matmul", ("a", "b"), {"transpose_a": "transpose_a", "transpose_b": "transpose_b"}),
    "BatchMatMulV2": ("linalg.matmul", ("a", "b"), {"adj_x": "adjoint_a", "adj_y": "adjoint_b"}),
    "BatchMatMul": ("linalg.matmul", ("a", "b"), {"adj_x": "adjoint_a", "adj_y": "adjoint_b"}),
    "Softmax": ("nn.softmax", ("logits",), {}),
    "LogSoftmax": ("nn.log_softmax", ("logits",), {}),
    "Shape": ("shape", ("input",), {"out_type": "out_type"}),
    "Cast": ("cast", ("x",), {"DstT": "dtype"}),
    "BiasAdd": ("nn.bias_add", ("value", "bias"), {"data_format": "data_format"}),
    "Squeeze": ("squeeze", ("input",), {"squeeze_dims": "axis"}),
    "Pack": ("stack", ("values",), {"axis": "axis"}),
    "LeakyRelu": ("nn.leaky_relu", ("features",), {"alpha": "alpha"}),
}
_IGNORED_ATTRS = {"T", "Tidx", "Tshape", "Tperm", "Tmultiples", "Tpaddings", "Tparams", "Tindices", "Taxis", "Tdim",
                  "SrcT", "Truncate", "N", "TI", "Tcomplex", "_cloned", "grad_x", "grad_y", "grad_a", "grad_b",
                  "Tlabels", "Tout"}


def _attr(value: dict) -> Any:
    """A protobuf-JSON ``AttrValue`` as a Python value."""
    if "list" in value:
        inner = value["list"] or {}
        return [int(v) for v in inner.get("i", [])] or [float(v) for v in inner.get("f", [])] or []
    for key, cast in (("b", bool), ("i", int), ("f", float)):
        if key in value:
            return cast(value[key])
    if "type" in value:
        return _DTYPES.get(value["type"], value["type"])
    if "s" in value:
        import base64

        return base64.b64decode(value["s"]).decode("utf-8", "replace")
    return value


def _constant(value: Any) -> Any:
    if isinstance(value, dict) and value.get("class_name") == "__numpy__":
        return (value.get("config") or {}).get("value")
    return value


def _refused(layer: str, op: str, why: str) -> UnsupportedModelError:
    error = UnsupportedModelError(
        f"load_model: layer '{layer}' (TensorFlowOpLayer) records the raw TensorFlow op {op}, {why}. Build the "
        "model in code (use keras.ops or a layer for that step) and load the file's weights with "
        "modelkeep.load_weights(model, path)."
    )
    error._keras_call_info_injected = True  # type: ignore[attr-defined]
    return error


def as_tf_op_lambda(entry: dict) -> dict:
    """A ``TensorFlowOpLayer`` entry as the ``TFOpLambda`` entry of the same call (see ``legacy_tfops``)."""
    config = entry.get("config") or {}
    layer = entry.get("name", "?")
    node_def = config.get("node_def") or {}
    op = str(node_def.get("op", "?"))
    attrs = {k: _attr(v) for k, v in (node_def.get("attr") or {}).items() if isinstance(v, dict)}
    constants = {int(k): _constant(v) for k, v in (config.get("constants") or {}).items()}
    n_inputs = len(node_def.get("input") or [])
    nodes = []
    for node in entry.get("inbound_nodes") or []:
        refs = [list(r[:3]) for r in node] if isinstance(node, list) and all(isinstance(r, list) for r in node) else None
        if refs is None or len(refs) + len(constants) != n_inputs:
            raise _refused(layer, op, "whose inputs do not match its inbound node")
        pending = iter(refs)
        inputs = [constants[i] if i in constants else next(pending) for i in range(n_inputs)]
        function, params, values = _call(op, inputs, attrs, layer)
        nodes.append(_node(params, values))
    return {"class_name": "SlicingOpLambda" if function == "__operators__.getitem" else "TFOpLambda", "name": layer,
            "config": {"name": layer, "function": function, "dtype": config.get("dtype", "float32")},
            "inbound_nodes": nodes}


def _is_ref(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 3 and isinstance(value[0], str) and isinstance(value[1], int)


def _node(params: list[str], values: list[Any]) -> Any:
    kwargs = dict(zip(params[1:], values[1:]))
    first = values[0]
    if isinstance(first, list) and first and all(_is_ref(v) for v in first):  # a list of tensors (concat, stack)
        return [[*ref, kwargs] for ref in first]
    if _is_ref(first):
        return [*first, kwargs]
    return ["_CONSTANT_VALUE", -1, first, kwargs]


def _call(op: str, inputs: list, attrs: dict, layer: str) -> tuple[str, list[str], list[Any]]:
    """(TF 2 function, its parameters, their values) of one raw op."""
    unknown = lambda: _refused(layer, op, "which modelkeep has no Keras 3 translation for")  # noqa: E731
    if op in _BINARY:
        return _BINARY[op], ["x", "y"], inputs
    if op in _UNARY:
        return _UNARY[op], ["x"], inputs
    if op in _FEATURES:
        return _FEATURES[op], ["features"], inputs
    if op in _REDUCE:
        return _REDUCE[op], ["input_tensor", "axis", "keepdims"], [*inputs, bool(attrs.get("keep_dims", False))]
    if op == "ConcatV2":
        return "concat", ["values", "axis"], [inputs[:-1], inputs[-1]]
    if op == "Split":
        return "split", ["value", "num_or_size_splits", "axis"], [inputs[1], attrs.get("num_split"), inputs[0]]
    if op == "OneHot":
        return "one_hot", ["indices", "depth", "on_value", "off_value", "axis", "dtype"], [
            *inputs, attrs.get("axis", -1), attrs.get("T", "float32")]
    if op in ("ResizeBilinear", "ResizeNearestNeighbor"):
        if attrs.get("align_corners") or not attrs.get("half_pixel_centers"):
            raise _refused(layer, op, "with TF 1's corner alignment (align_corners / no half_pixel_centers), "
                           "which Keras 3's resize does not compute")
        method = "bilinear" if op == "ResizeBilinear" else "nearest"
        return "image.resize", ["images", "size", "method"], [*inputs, method]
    if op == "StridedSlice":
        return "__operators__.getitem", ["tensor", "slice_spec"], [inputs[0], _slice_spec(inputs[1:], attrs, layer)]
    if op not in _PLAIN:
        raise unknown()
    function, params, attr_params = _PLAIN[op]
    params, values = list(params), list(inputs)
    if op == "Pack":
        values = [list(inputs)]
    elif len(inputs) != len(params):
        raise unknown()
    for name, value in attrs.items():
        if name in attr_params:
            params.append(attr_params[name])
            values.append(value if not (op == "Squeeze" and value == []) else None)
        elif name not in _IGNORED_ATTRS:
            raise _refused(layer, op, f"with the attribute {name}={value!r}, which modelkeep cannot carry")
    return function, params, values


def _slice_spec(bounds: list, attrs: dict, layer: str) -> list:
    """``StridedSlice``'s begin/end/strides and masks as the Python slice that made them."""
    if any(_is_ref(b) or not isinstance(b, list) for b in bounds):
        raise _refused(layer, "StridedSlice", "with bounds computed at run time")
    begin, end, strides = bounds
    bit = lambda name, i: bool(int(attrs.get(name, 0)) >> i & 1)  # noqa: E731
    spec: list = []
    for i in range(len(begin)):
        if bit("ellipsis_mask", i):
            spec.append({"class_name": "__ellipsis__"})
        elif bit("new_axis_mask", i):
            spec.append(None)
        elif bit("shrink_axis_mask", i):
            spec.append(begin[i])
        else:
            spec.append({"start": None if bit("begin_mask", i) else begin[i],
                         "stop": None if bit("end_mask", i) else end[i], "step": strides[i]})
    return spec


def valid_op_names(layers: list[dict]) -> tuple[list[dict], dict[str, str]]:
    """TF 2.0-2.3 op layers are named after graph nodes (``tf_op_layer_l2_normalize/Square``);
    Keras 3 refuses ``/`` in a name. Such layers (weightless) get ``_`` instead, and every
    reference to them follows."""
    taken = {entry.get("name") for entry in layers}
    renamed: dict[str, str] = {}
    for entry in layers:
        name = entry.get("name")
        if entry.get("registered_name") == REGISTERED and isinstance(name, str) and "/" in name:
            new = name.replace("/", "_")
            while new in taken:
                new += "_"
            taken.add(new)
            renamed[name] = new
            entry["name"] = entry["config"]["name"] = new
    if renamed:
        for entry in layers:
            entry["inbound_nodes"] = rename_refs(entry.get("inbound_nodes", []), renamed)
    return layers, renamed


def rename_refs(value: Any, renamed: dict[str, str]) -> Any:
    if not renamed:
        return value
    if _is_node_ref(value) and value[0] in renamed:
        return [renamed[value[0]], *value[1:]]
    if isinstance(value, dict):
        out = {k: rename_refs(v, renamed) for k, v in value.items()}
        history = out.get("keras_history")
        if isinstance(history, list) and history and history[0] in renamed:
            out["keras_history"] = [renamed[history[0]], *history[1:]]
        return out
    if isinstance(value, list):
        return [rename_refs(v, renamed) for v in value]
    return value


def _is_node_ref(value: Any) -> bool:
    return isinstance(value, list) and len(value) >= 3 and isinstance(value[0], str) and isinstance(value[1], int)
