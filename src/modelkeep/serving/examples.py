"""classify / regress / MultiInference: ``tf.Example`` lists turned into one signature call.

Both front ends make a list of serialized ``tf.Example`` (REST from TF Serving's JSON
form, gRPC from ``Input``; a ``context`` example is merged into each, as TF Serving merges
it), then run the signature's single ``inputs`` tensor like a predict, and read its
``classes``/``scores`` or ``outputs`` back as TF Serving's results.

Example::

    body = {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]}
    serialized = examples_from_json(body, "classify")
    result = classify(predictor.signature("classify_x_to_y"), predictor.call, serialized)
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from modelkeep.serving.signature import CLASSIFY_METHOD, REGRESS_METHOD, STRING, Signature, invalid
from modelkeep.serving.tensors import _JSON_TYPE, decode_b64, format_floats, is_b64


def _feature_value(feature: Any, name: str, value: Any) -> None:
    kind = feature.WhichOneof("kind")

    def need(want: str) -> None:
        if kind not in (None, want):
            have = {"bytes_list": "bytes", "float_list": "float", "int64_list": "int64"}[kind]
            raise invalid(f"Unexpected element type in feature: {name} expecting type: {have}")

    if isinstance(value, bool):
        need("int64_list")
        feature.int64_list.value.append(1 if value else 0)
    elif isinstance(value, float):
        need("float_list")
        feature.float_list.value.append(value)
    elif isinstance(value, int):
        need("int64_list")
        if value >= 2**63 or value < -(2**63):
            raise invalid(f"Feature: {name} has uint64_t element. Only int64_t is supported.")
        feature.int64_list.value.append(value)
    elif isinstance(value, str):
        need("bytes_list")
        feature.bytes_list.value.append(value.encode("utf-8"))
    elif is_b64(value):
        need("bytes_list")
        feature.bytes_list.value.append(decode_b64(value))
    else:
        raise invalid(f"Feature: {name} has element with unexpected JSON type: {_JSON_TYPE.get(type(value), 'Number')}")


def example_from_json(value: Any) -> Any:
    """TF Serving's MakeExampleFromJsonObject: ``{"x": 2.0, "tags": ["a", "b"]}`` → ``tf.train.Example``."""
    from tensorflow.core.example import example_pb2

    if not isinstance(value, dict):
        raise invalid(f"Example must be JSON object but got JSON {_JSON_TYPE.get(type(value), 'Number')}")
    example = example_pb2.Example()
    for name, content in value.items():
        feature = example.features.feature[name]
        for item in content if isinstance(content, list) else [content]:
            _feature_value(feature, name, item)
    return example


def examples_from_json(body: dict[str, Any], method: str) -> list[bytes]:
    """The ``examples`` (and ``context``) of a REST classify/regress body, serialized."""
    context = example_from_json(body["context"]).SerializeToString() if "context" in body else b""
    if "examples" not in body:
        raise invalid(f"JSON Value: {_short(body)} When method is {method}, key 'examples' is expected and was not found")
    examples = body["examples"]
    if not isinstance(examples, list):
        raise invalid(f"JSON Value: {_short(body)} Expecting 'examples' value to be an list/array")
    if not examples:
        raise invalid(f"JSON Value: {_short(body)} 'examples' value is an empty array")
    return [context + example_from_json(e).SerializeToString() for e in examples]


def _short(body: Any) -> str:
    text = json.dumps(body, separators=(",", ":"))
    return text if len(text) < 200 else text[:200] + "..."


def examples_from_input(message: Any) -> list[bytes]:
    """A gRPC ``Input``: ``example_list`` or ``example_list_with_context`` (context merged in)."""
    kind = message.WhichOneof("kind")
    if kind == "example_list":
        examples, context = message.example_list.examples, b""
    elif kind == "example_list_with_context":
        examples = message.example_list_with_context.examples
        context = message.example_list_with_context.context.SerializeToString()
    else:
        raise invalid("Input is empty. (modelkeep: set input.example_list or input.example_list_with_context)")
    if not examples:
        raise invalid("Input is empty. (modelkeep: the example list has no examples)")
    return [context + e.SerializeToString() for e in examples]


def _input(signature: Signature, method: str, label: str, check_method: bool) -> str:
    if check_method and signature.method_name != method:
        raise invalid(f"Expected {label} signature method_name to be {method}. Was: {signature.method_name}")
    if len(signature.inputs) != 1:
        raise invalid("Expected one input Tensor.")
    if "inputs" not in signature.inputs:
        raise invalid(f"No {label} inputs found in SignatureDef: {signature.key} (modelkeep: its input key must be 'inputs')")
    return "inputs"


def _batch(serialized: list[bytes]) -> np.ndarray:
    out = np.empty(len(serialized), dtype=STRING)
    out[:] = serialized
    return out


def classify(signature: Signature, call: Any, serialized: list[bytes], check_method: bool = True) -> Any:
    """A ``ClassificationResult`` (blocking: run it off the event loop).

    ``check_method``: the signature's method_name must be classify (TF Serving checks it
    for TF1 SavedModels only; TF2 exports mark every signature predict)."""
    from tensorflow_serving.apis import classification_pb2

    key = _input(signature, CLASSIFY_METHOD, "classification", check_method)
    if len(signature.outputs) not in (1, 2):
        raise invalid(f"Expected one or two output Tensors, found {len(signature.outputs)}")
    if "classes" not in signature.outputs and "scores" not in signature.outputs:
        raise invalid(
            'Expected classification signature outputs to contain at least one of "classes" or "scores". '
            f"Signature was: {signature.key}"
        )
    outputs = call(signature.key, {key: _batch(serialized)})
    classes, scores = outputs.get("classes"), outputs.get("scores")
    n = len(serialized)
    for name, tensor in (("classes", classes), ("scores", scores)):
        if tensor is not None and (tensor.ndim != 2 or tensor.shape[0] != n):
            raise invalid(f"Expected Tensor shape: [batch_size num_classes] but got {list(tensor.shape)} (modelkeep: output '{name}')")
    if classes is not None and scores is not None and classes.shape != scores.shape:
        raise invalid(f"Tensors class and score should match in shape. Got {list(classes.shape)} and {list(scores.shape)}")
    result = classification_pb2.ClassificationResult()
    width = (scores if scores is not None else classes).shape[1]
    for i in range(n):
        row = result.classifications.add()
        for j in range(width):
            item = row.classes.add()
            if classes is not None:
                label = classes[i, j]
                item.label = label.decode("utf-8", "replace") if isinstance(label, bytes) else str(label)
            if scores is not None:
                item.score = float(scores[i, j])
    return result


def regress(signature: Signature, call: Any, serialized: list[bytes], check_method: bool = True) -> Any:
    """A ``RegressionResult`` (blocking)."""
    from tensorflow_serving.apis import regression_pb2

    key = _input(signature, REGRESS_METHOD, "regression", check_method)
    if len(signature.outputs) != 1:
        raise invalid("Expected one output Tensor.")
    if "outputs" not in signature.outputs:
        raise invalid(f"No regression outputs found in SignatureDef: {signature.key} (modelkeep: its output key must be 'outputs')")
    values = call(signature.key, {key: _batch(serialized)})["outputs"]
    n = len(serialized)
    if not (values.shape == (n,) or values.shape == (n, 1)):
        raise invalid(f"Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got {list(values.shape)}")
    if values.dtype != np.float32:
        raise invalid(f"Expected output Tensor of DT_FLOAT.  Got: {values.dtype.name}")
    result = regression_pb2.RegressionResult()
    for v in values.reshape(n).tolist():
        result.regressions.add().value = v
    return result


def classification_json(result: Any) -> str:
    """``{"results": [[["label", score], ...], ...]}`` as TF Serving writes it."""
    rows = []
    for c in result.classifications:
        scores = format_floats(np.array([x.score for x in c.classes], np.float32))
        rows.append("[" + ",".join(f"[{json.dumps(x.label)},{s}]" for x, s in zip(c.classes, scores)) + "]")
    return '{"results":[' + ",".join(rows) + "]}"


def regression_json(result: Any) -> str:
    values = format_floats(np.array([r.value for r in result.regressions], np.float32))
    return '{"results":[' + ",".join(values) + "]}"
