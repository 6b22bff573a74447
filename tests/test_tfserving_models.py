"""Models TF Serving serves that modelkeep used to refuse: strings and bytes (b64 in, ``_bytes``
out, JPEG decoding), ``tf.Module`` with unknown-rank inputs and several signatures, Keras
models with dict outputs; plus TF Serving's tensor conversions as units (float formatting,
typed gRPC fields, ``tensor_content`` behind its flag) and ``mk.save_model``'s signature keys."""

from __future__ import annotations

import base64
import json

import grpc
import httpx
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from modelkeep.serving.signature import STRING, Signature, TensorSpec
from modelkeep.serving.tensors import array_to_proto, columns_to_arrays, format_floats, predict_json, rows_to_arrays
from tfserving_models import jpeg_bytes


def post(server, path, body):
    return httpx.post(f"{server.url}/v1/models/{path}", content=body if isinstance(body, str) else json.dumps(body), timeout=30)


def grpc_predict(server, model, inputs, signature=""):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(server.grpc_target))
    return stub.Predict(request, 20)


def test_string_inputs_row_columnar_b64_and_bytes_outputs(tfs_built):
    r = post(tfs_built, "strings:predict", {"instances": ["ab", {"b64": base64.b64encode(b"\x00\xff").decode()}]})
    assert r.json() == {"predictions": [
        {"length": 2, "y_bytes": {"b64": base64.b64encode(b"ab!").decode()}},
        {"length": 2, "y_bytes": {"b64": base64.b64encode(b"\x00\xff!").decode()}},
    ]}
    r = post(tfs_built, "strings:predict", {"inputs": {"text": ["héllo"]}})
    assert r.json() == {"outputs": {"length": [6], "y_bytes": [{"b64": base64.b64encode("héllo!".encode()).decode()}]}}
    r = post(tfs_built, "strings:predict", {"instances": [{"b64": "not base64!"}]})
    assert r.status_code == 400 and r.json()["error"].startswith("Unable to base64 decode")
    r = post(tfs_built, "strings:predict", {"instances": [1.5]})
    assert r.status_code == 400 and "JSON Value: 1.5 Type: Number is not of expected type: string" in r.json()["error"]
    result = grpc_predict(tfs_built, "strings", {"text": np.array([b"x", b"yz"], dtype=object)})
    assert list(result.outputs["y_bytes"].string_val) == [b"x!", b"yz!"]
    assert list(result.outputs["length"].int_val) == [1, 2]


def test_model_decoding_jpeg_bytes(tfs_built):
    data, mean = jpeg_bytes(seed=1)
    r = post(tfs_built, "jpeg:predict", {"instances": [{"b64": base64.b64encode(data).decode()}]})
    assert r.status_code == 200
    assert abs(r.json()["predictions"][0] - mean) < 1e-4
    result = grpc_predict(tfs_built, "jpeg", {"image_bytes": np.array([data, data], dtype=object)})
    assert np.allclose(result.outputs["mean"].float_val, [mean, mean], atol=1e-4)


def test_tf_module_unknown_rank_and_several_signatures(tfs_built):
    assert post(tfs_built, "module:predict", {"inputs": 2.0}).json() == {"outputs": 12.0}
    assert post(tfs_built, "module:predict", {"inputs": [[1.0, 2.0]]}).json() == {"outputs": [[6.0, 12.0]]}
    r = post(tfs_built, "module:predict", {"instances": 2.0})
    assert r.status_code == 400 and "Expecting 'instances' to be an list/array" in r.json()["error"]
    assert list(grpc_predict(tfs_built, "module", {"x": np.float32(2.0)}).outputs["y"].float_val) == [12.0]
    got = grpc_predict(tfs_built, "multi", {"x": np.float32(2.0)}, "custom_signature_key")
    assert list(got.outputs["y"].float_val) == [2.0] and got.model_spec.signature_name == "custom_signature_key"
    assert list(grpc_predict(tfs_built, "multi", {"x": np.float32(2.0)}).outputs["y"].float_val) == [1.0]
    meta = httpx.get(f"{tfs_built.url}/v1/models/multi/metadata").json()["metadata"]["signature_def"]["signature_def"]
    assert {"serving_default", "custom_signature_key"} <= set(meta)
    assert meta["serving_default"]["inputs"]["x"] == {
        "name": "serving_default_x:0", "dtype": "DT_FLOAT", "tensor_shape": {"dim": [], "unknown_rank": True}}


def test_sequential_keras_saved_model_save(tfs_built):
    """TF Serving's test: x of shape [1, 1] = 2.0, no output filter, y = 2.0 in float_val."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = "keras_sequential", "serving_default"
    request.inputs["x"].dtype = tf.float32.as_datatype_enum
    request.inputs["x"].float_val.append(2.0)
    request.inputs["x"].tensor_shape.dim.add().size = 1
    request.inputs["x"].tensor_shape.dim.add().size = 1
    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(tfs_built.grpc_target))
    result = stub.Predict(request, 20)
    assert result.outputs["y"].dtype == tf.float32.as_datatype_enum and list(result.outputs["y"].float_val) == [2.0]
    assert result.model_spec.version.value == 123


def test_keras_dict_outputs_by_keras_names(tfs_built):
    model = tfs_built.extras["keras_model"]
    a, b = np.float32([[1, 2, 3]]), np.float32([[4, 5]])
    expected = model.predict({"a": a, "b": b}, verbose=0)
    r = post(tfs_built, "keras_dict:predict", {"instances": [{"a": a[0].tolist(), "b": b[0].tolist()}]}).json()
    (row,) = r["predictions"]
    assert set(row) == {"total", "double"}
    np.testing.assert_allclose(row["total"], expected["total"][0], rtol=1e-5)
    np.testing.assert_allclose(row["double"], expected["double"][0], rtol=1e-5)
    result = grpc_predict(tfs_built, "keras_dict", {"a": a, "b": b})
    np.testing.assert_allclose(result.outputs["double"].float_val, expected["double"][0], rtol=1e-5)
    meta = httpx.get(f"{tfs_built.url}/v1/models/keras_dict/metadata").json()["metadata"]["signature_def"]["signature_def"]
    sig = meta["serving_default"]
    assert set(sig["inputs"]) == {"a", "b"} and set(sig["outputs"]) == {"total", "double"}
    assert sig["inputs"]["a"]["name"] == "serve_a:0" or sig["inputs"]["a"]["name"].endswith("a:0")


def test_save_model_signature_keys_are_keras_names(tfs_built):
    from modelkeep.serving.signature import read_signature_defs

    defs, tf1 = read_signature_defs(tfs_built.models["keras_dict"] / "1")
    assert not tf1
    assert set(defs["serving_default"].inputs) == {"a", "b"}
    assert set(defs["serving_default"].outputs) == {"total", "double"}
    loaded = tf.saved_model.load(str(tfs_built.models["keras_dict"] / "1"))
    out = loaded.signatures["serving_default"](a=tf.ones((1, 3)), b=tf.ones((1, 2)))
    assert set(out) == {"total", "double"}  # TF itself (and so TF Serving) sees the same keys


# ------------------------------------------------------------------ units: json_tensor.cc
@pytest.mark.parametrize("value,text", [
    (2.05, "2.05"), (3.0, "3.0"), (0.1, "0.1"), (1e-5, "1e-05"), (9000000.0, "9e+06"),
    (0.123456789, "0.123456791"), (16777216.0, "16777216.0"), (-0.0, "-0.0"),
    (float("nan"), "NaN"), (float("inf"), "Infinity"), (float("-inf"), "-Infinity"),
])
def test_float32_formatting_is_tf_serving_writedecimal(value, text):
    assert format_floats(np.float32([value])) == [text]


def test_float32_formatting_of_large_arrays_equals_the_per_value_rule():
    from modelkeep.serving.tensors import _text32

    rng = np.random.default_rng(0)
    with np.errstate(over="ignore"):
        values = np.concatenate([
            rng.random(3000, dtype=np.float32), np.float32(rng.integers(-10**7, 10**7, 3000)),
            (rng.standard_normal(3000) * 10.0 ** rng.integers(-40, 39, 3000)).astype(np.float32),
            np.round(rng.random(3000), 3).astype(np.float32),
            np.float32([0.0, -0.0, np.nan, np.inf, -np.inf, 1e-45, 3.4028235e38, 16777216, 2.05, 0.1, 1e-5, 9e6]),
        ])
    assert format_floats(values) == [_text32(v) for v in values.tolist()]


def test_float64_keeps_17_digits_when_needed():
    assert format_floats(np.float64([0.1, 2.05, 1 / 3])) == ["0.1", "2.05", "0.33333333333333331"]


def test_row_and_columnar_json_forms():
    sig = Signature("s", "tensorflow/serving/predict", {
        "tag": TensorSpec("tag", STRING, None), "signal": TensorSpec("signal", np.dtype("int32"), None),
    }, {})
    rows = rows_to_arrays([{"tag": "foo", "signal": [1, 2]}, {"tag": "bar", "signal": [3, 4]}], sig)
    assert rows["tag"].tolist() == [b"foo", b"bar"] and rows["signal"].dtype == np.int32
    cols = columns_to_arrays({"tag": ["foo", "bar"], "signal": [[1, 2], [3, 4]]}, sig)
    assert cols["signal"].tolist() == [[1, 2], [3, 4]]
    text = predict_json({"y": np.float32([[1.5], [2.0]]), "ok": np.array([True, False])}, row_form=True)
    assert json.loads(text) == {"predictions": [{"ok": True, "y": [1.5]}, {"ok": False, "y": [2.0]}]}
    with pytest.raises(Exception, match="has inconsistent batch size"):
        predict_json({"a": np.zeros(2, np.float32), "b": np.zeros(3, np.float32)}, row_form=True)


def test_grpc_typed_fields_and_tensor_content_flag():
    proto = array_to_proto(np.float32([[1.5, 2.0]]))
    assert list(proto.float_val) == [1.5, 2.0] and not proto.tensor_content
    assert [d.size for d in proto.tensor_shape.dim] == [1, 2]
    assert list(array_to_proto(np.int64([7])).int64_val) == [7]
    assert list(array_to_proto(np.array([True])).bool_val) == [True]
    assert list(array_to_proto(np.array([b"a"], dtype=object)).string_val) == [b"a"]
    assert list(array_to_proto(np.float64([0.25])).double_val) == [0.25]
    packed = array_to_proto(np.float32([1.5, 2.0]), tensor_content=True)
    assert packed.tensor_content and not packed.float_val
    assert tf.make_ndarray(packed).tolist() == [1.5, 2.0]


def test_openapi_document_describes_each_model_by_its_signature(tfs_built):
    doc = httpx.get(f"{tfs_built.url}/openapi.json").json()
    paths = doc["paths"]
    for model in ("default", "keras_dict", "strings"):
        for route in (":predict", "", "/metadata"):
            for prefix in ("", "/versions/{version}"):
                assert f"/v1/models/{model}{prefix}{route}" in paths
        assert f"/v1/models/{model}/labels/{{label}}" not in paths  # no labels
    label = paths["/v1/models/saved_model_half_plus_two_2_versions/labels/{label}:predict"]["post"]["parameters"][0]
    assert label["schema"]["enum"] == ["stable"]
    assert "/v1/models/default:classify" in paths and "/v1/models/default:regress" in paths  # TF1 graph's signatures
    assert "/v1/models/strings:classify" not in paths and "/v1/models/keras_dict:regress" not in paths

    def body(model):
        return paths[f"/v1/models/{model}:predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]["anyOf"]

    rows = [f["properties"]["instances"]["items"] for f in body("keras_dict") if "instances" in f["properties"]]
    (keyed,) = [r for r in rows if r.get("type") == "object"]
    assert keyed["required"] == ["a", "b"] and keyed["properties"]["a"]["type"] == "array"
    strings = [f["properties"]["instances"]["items"] for f in body("strings") if "instances" in f["properties"]]
    assert {"type": "string"} in strings[-1]["anyOf"]
    assert "400" in paths["/v1/models/default:predict"]["get"]["responses"]  # TF Serving's 'Malformed request'
    r = httpx.get(f"{tfs_built.url}/v1/models/default:predict")
    assert r.status_code == 400 and r.json()["error"].startswith("Malformed request: GET /v1/models/default:predict")
    r = httpx.delete(f"{tfs_built.url}/v1/models/default")
    assert r.status_code == 405 and r.headers["allow"] == "GET, POST"  # model-server: both methods get TF Serving's answer


def _served(server, name, timeout=60.0):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = httpx.get(f"{server.url}/v1/models/{name}", timeout=5)
        if r.status_code == 200 and r.json()["model_version_status"][0]["state"] == "AVAILABLE":
            return True
        time.sleep(0.2)
    return False


def test_model_config_file_is_polled_and_reload_config_request(tfs_built):
    """testModelConfigReload: a model added to the config file is served after the poll; a
    HandleReloadConfigRequest without it unloads it again; the other models keep serving."""
    from google.protobuf import text_format
    from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc
    from tensorflow_serving.config import model_server_config_pb2

    original = tfs_built.config.read_text()
    base = tfs_built.models["half_plus_three"]
    added = original.rstrip().rstrip("}") + f'  config: {{ name: "added", base_path: "{base}", model_platform: "tensorflow" }}\n}}\n'
    tfs_built.config.write_text(added)
    try:
        assert _served(tfs_built, "added")
        assert post(tfs_built, "added:predict", {"instances": [2.0]}).json() == {"predictions": [4.0]}
    finally:
        tfs_built.config.write_text(original)
    request = model_management_pb2.ReloadConfigRequest()
    request.config.CopyFrom(text_format.Parse(original, model_server_config_pb2.ModelServerConfig()))
    stub = model_service_pb2_grpc.ModelServiceStub(grpc.insecure_channel(tfs_built.grpc_target))
    assert stub.HandleReloadConfigRequest(request, 60).status.error_code == 0
    r = post(tfs_built, "added:predict", {"instances": [2.0]})
    assert r.status_code == 404 and r.json()["error"].startswith("Servable not found for request: Latest(added)")
    assert post(tfs_built, "default:predict", {"instances": [2.0]}).json() == {"predictions": [3.0]}


def test_classify_examples_json_b64_context_and_labelled_results():
    """api_rest.md: the classify_objects request (b64 image + caption), a context, and the
    label/score pairs of a signature with both ``classes`` and ``scores``."""
    from tensorflow.core.example import example_pb2

    from modelkeep.serving import examples

    body = {"signature_name": "classify_objects", "context": {"site": 7}, "examples": [
        {"image": {"b64": "aW1hZ2UgYnl0ZXM="}, "caption": "seaside"},
        {"image": {"b64": "YXdlc29tZSBpbWFnZSBieXRlcw=="}, "caption": "mountains", "sensor_readings": [1.0, -3.14, float("nan")]},
    ]}
    serialized = examples.examples_from_json(body, "classify")
    first, second = (example_pb2.Example.FromString(s) for s in serialized)
    assert first.features.feature["image"].bytes_list.value == [b"image bytes"]
    assert first.features.feature["caption"].bytes_list.value == [b"seaside"]
    assert first.features.feature["site"].int64_list.value == [7]  # the context, merged in
    assert second.features.feature["image"].bytes_list.value == [b"awesome image bytes"]
    assert len(second.features.feature["sensor_readings"].float_list.value) == 3

    spec = TensorSpec("inputs", STRING, (None,))
    out = {"classes": TensorSpec("classes", STRING, (None, 2)), "scores": TensorSpec("scores", np.dtype("float32"), (None, 2))}
    sig = Signature("classify_objects", "tensorflow/serving/classify", {"inputs": spec}, out)

    def call(name, named):
        n = len(named["inputs"])
        return {"classes": np.array([[b"sea", b"hill"]] * n, dtype=object), "scores": np.float32([[0.75, 0.25]] * n)}

    result = examples.classify(sig, call, serialized)
    assert json.loads(examples.classification_json(result)) == {"results": [[["sea", 0.75], ["hill", 0.25]]] * 2}
    with pytest.raises(Exception, match="When method is classify, key 'examples' is expected and was not found"):
        examples.examples_from_json({"instances": [1]}, "classify")
    with pytest.raises(Exception, match="Unexpected element type in feature: x expecting type: float"):
        examples.examples_from_json({"examples": [{"x": [1.0, "a"]}]}, "regress")
