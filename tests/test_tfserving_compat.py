"""TF Serving's own request/response pairs, asserted against ``modelkeep-model-server``.

Taken from ``tensorflow_model_server_test.py`` (gRPC and REST), ``http_rest_api_handler_test.cc``
and ``g3doc/api_rest.md``; status codes and texts from the server code
(``http_rest_api_util.cc``, ``http_server.cc``, ``json_tensor.cc``, ``predict_util.cc``,
``basic_manager.cc``, ``server_core.cc``, ``get_model_status_impl.cc``). Each test runs on our
own equivalents of TF Serving's test models (``built``) and, when ``../shared/tfserving`` is
there, on TF Serving's real ones (``shared``).
"""

from __future__ import annotations

import json

import grpc
import httpx
import pytest
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from tfserving_server import SHARED, start


@pytest.fixture(scope="module")
def tfs_shared(tmp_path_factory):
    server = start("shared", tmp_path_factory.mktemp("tfs-shared")).wait()
    yield server
    server.stop()


@pytest.fixture(params=["built", "shared"])
def tfs(request):
    return request.getfixturevalue(f"tfs_{request.param}")


def post(server, path: str, body) -> httpx.Response:
    content = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return httpx.post(f"{server.url}/v1/models/{path}", content=content, timeout=30)


def stub(server):
    return prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(server.grpc_target))


def verify_predict(server, model="default", expected=3.0, signature="serving_default", specify_output=True, batch=False):
    """TF Serving's VerifyPredictRequest: x = [2.0] of shape [1] (or [1, 1]); y read from float_val."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    request.inputs["x"].dtype = types_pb2.DT_FLOAT
    request.inputs["x"].float_val.append(2.0)
    request.inputs["x"].tensor_shape.dim.add().size = 1
    if batch:
        request.inputs["x"].tensor_shape.dim.add().size = 1
    if specify_output:
        request.output_filter.append("y")
    result = stub(server).Predict(request, 20)
    assert "y" in result.outputs
    assert result.outputs["y"].dtype == types_pb2.DT_FLOAT
    assert list(result.outputs["y"].float_val) == [expected]
    assert (result.model_spec.name, result.model_spec.signature_name) == (model, signature)
    return result


# ------------------------------------------------------------------ gRPC (tensorflow_model_server_test.py)
def test_grpc_get_model_status(tfs):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "default"
    result = model_service_pb2_grpc.ModelServiceStub(grpc.insecure_channel(tfs.grpc_target)).GetModelStatus(request, 20)
    assert len(result.model_version_status) == 1
    assert result.model_version_status[0].version == 123
    assert result.model_version_status[0].status.error_code == 0


def test_grpc_get_model_metadata(tfs):
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "default"
    request.metadata_field.append("signature_def")
    result = stub(tfs).GetModelMetadata(request, 20)
    assert result.model_spec.name == "default" and result.model_spec.version.value == 123
    assert list(result.metadata) == ["signature_def"]


@pytest.mark.parametrize("model", ["default", "tf2"])
def test_grpc_classify_regress_multi_inference(tfs, model):
    s = stub(tfs)
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name, request.model_spec.signature_name = model, "classify_x_to_y"
    request.input.example_list.examples.add().features.feature["x"].float_list.value.extend([2.0])
    result = s.Classify(request, 20)
    assert len(result.result.classifications) == 1 and len(result.result.classifications[0].classes) == 1
    assert result.result.classifications[0].classes[0].score == 3.0
    assert (result.model_spec.signature_name, result.model_spec.version.value) == ("classify_x_to_y", 123)

    request = regression_pb2.RegressionRequest()
    request.model_spec.name, request.model_spec.signature_name = model, "regress_x_to_y"
    request.input.example_list.examples.add().features.feature["x"].float_list.value.extend([2.0])
    result = s.Regress(request, 20)
    assert [r.value for r in result.result.regressions] == [3.0]
    assert (result.model_spec.name, result.model_spec.version.value) == (model, 123)

    multi = inference_pb2.MultiInferenceRequest()
    for signature, method in (("regress_x_to_y", "regress"), ("classify_x_to_y", "classify")):
        task = multi.tasks.add()
        task.model_spec.name, task.model_spec.signature_name = model, signature
        task.method_name = f"tensorflow/serving/{method}"
    multi.input.example_list.examples.add().features.feature["x"].float_list.value.extend([2.0])
    result = s.MultiInference(multi, 20)
    assert len(result.results) == 2
    assert result.results[0].regression_result.regressions[0].value == 3.0
    assert result.results[1].classification_result.classifications[0].classes[0].score == 3.0
    for got, task in zip(result.results, multi.tasks):
        assert (got.model_spec.name, got.model_spec.signature_name, got.model_spec.version.value) == (
            model, task.model_spec.signature_name, 123)


def test_grpc_classify_with_context_merges_it_into_each_example(tfs):
    request = regression_pb2.RegressionRequest()
    request.model_spec.name, request.model_spec.signature_name = "default", "regress_x_to_y"
    with_context = request.input.example_list_with_context
    with_context.context.features.feature["x"].float_list.value.extend([10.0])
    with_context.examples.add().features.feature["x"].float_list.value.extend([2.0])  # overrides the context
    with_context.examples.add()  # takes x from the context
    assert [r.value for r in stub(tfs).Regress(request, 20).result.regressions] == [3.0, 7.0]


def test_grpc_predict_and_good_model_config(tfs):
    verify_predict(tfs)  # testPredictSavedModel
    verify_predict(tfs, specify_output=False)
    result = verify_predict(tfs, "half_plus_three", 4.0)  # testGoodModelConfig
    assert result.model_spec.version.value == 123
    verify_predict(tfs, "half_plus_three", 4.0, specify_output=False)
    verify_predict(tfs, "tf2")
    assert not verify_predict(tfs).outputs["y"].tensor_content  # typed fields, as TF Serving fills them


def test_grpc_unknown_signature_is_failed_precondition(tfs):
    with pytest.raises(grpc.RpcError) as err:
        verify_predict(tfs, signature="nope")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert err.value.details().startswith('Serving signature key "nope" not found.')


def test_grpc_errors_name_tf_serving_status(tfs):
    with pytest.raises(grpc.RpcError) as err:
        verify_predict(tfs, model="nope")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert err.value.details().startswith("Servable not found for request: Latest(nope)")
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "default"
    request.inputs["wrong"].CopyFrom(predict_pb2.PredictRequest().inputs["x"])
    request.inputs["wrong"].dtype = types_pb2.DT_FLOAT
    with pytest.raises(grpc.RpcError) as err:
        stub(tfs).Predict(request, 20)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(
        "input size does not match signature: 1!=1 len({wrong}) != len({x}). Sent extra: {wrong}. Missing but required: {x}."
    )
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "default"
    request.inputs["x"].dtype = types_pb2.DT_FLOAT
    request.inputs["x"].float_val.append(2.0)
    request.output_filter.append("z")
    with pytest.raises(grpc.RpcError) as err:
        stub(tfs).Predict(request, 20)
    assert err.value.details().startswith("output tensor alias not found in signature: z Outputs expected to be in the set {y}.")


def test_grpc_version_label_and_specific_policy(tfs):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "saved_model_half_plus_two_2_versions"
    request.model_spec.version_label = "stable"
    request.inputs["x"].dtype = types_pb2.DT_FLOAT
    request.inputs["x"].float_val.append(2.0)
    assert stub(tfs).Predict(request, 20).model_spec.version.value == 123
    request.model_spec.version.value = 124  # not in the specific policy: not loaded
    with pytest.raises(grpc.RpcError) as err:
        stub(tfs).Predict(request, 20)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert err.value.details().startswith("Servable not found for request: Specific(saved_model_half_plus_two_2_versions, 124)")


# ------------------------------------------------------------------ REST (tensorflow_model_server_test.py)
def test_rest_predict_row_and_columnar(tfs):
    assert post(tfs, "default:predict", {"instances": [2.0, 3.0, 4.0]}).json() == {"predictions": [3.0, 3.5, 4.0]}
    assert post(tfs, "default:predict", {"inputs": [2.0, 3.0, 4.0]}).json() == {"outputs": [3.0, 3.5, 4.0]}


def test_rest_classify_and_regress(tfs):
    body = {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]}
    assert post(tfs, "default:classify", body).json() == {"results": [[["", 3.0]]]}
    body = {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]}
    assert post(tfs, "default:regress", body).json() == {"results": [3.0]}


def test_rest_status(tfs):
    expected = {"model_version_status": [{"version": "123", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
    assert httpx.get(f"{tfs.url}/v1/models/default").json() == expected
    model = "saved_model_half_plus_two_2_versions"
    for suffix in ("", "/versions/123", "/labels/stable"):  # GetStatus of the handler test
        assert httpx.get(f"{tfs.url}/v1/models/{model}{suffix}").json() == expected
    r = httpx.get(f"{tfs.url}/v1/models/nope")  # get_model_status_impl.cc
    assert r.status_code == 404 and r.json()["error"].startswith("Could not find any versions of model nope")
    r = httpx.get(f"{tfs.url}/v1/models/default/versions/7")
    assert r.status_code == 404 and r.json()["error"].startswith("Could not find version 7 of model default")


def test_rest_metadata_lists_every_signature_with_tf_serving_names(tfs):
    got = httpx.get(f"{tfs.url}/v1/models/default/metadata").json()
    assert got["model_spec"] == {"name": "default", "signature_name": "", "version": "123"}
    signatures = got["metadata"]["signature_def"]["signature_def"]
    assert signatures["serving_default"]["inputs"]["x"]["name"] == "x:0"
    assert signatures["serving_default"]["outputs"]["y"]["name"] == "y:0"
    assert signatures["classify_x_to_y"]["method_name"] == "tensorflow/serving/classify"
    assert signatures["regress_x_to_y"]["inputs"]["inputs"]["dtype"] == "DT_STRING"
    if tfs.kind == "shared":  # testGetModelMetadataREST / GetModelMetadata: the expected files, exactly
        expected = json.loads((SHARED / "half_plus_two_model_metadata.json").read_text())
        assert got == expected
        model = "saved_model_half_plus_two_2_versions"
        expected = json.loads((SHARED / f"{model}_metadata.json").read_text())
        assert httpx.get(f"{tfs.url}/v1/models/{model}/metadata").json() == expected


def test_rest_prometheus_endpoint(tfs):
    post(tfs, "default:predict", {"instances": [1.0]})
    text = httpx.get(f"{tfs.url}/monitoring/prometheus/metrics").text
    assert "# TYPE" in text
    assert ':tensorflow:serving:request_count{model_name="default",status="OK"}' in text
    assert ':tensorflow:serving:request_latency_bucket{model_name="default",API="predict",entrypoint="REST"' in text


# ------------------------------------------------------------------ REST (http_rest_api_handler_test.cc)
MALFORMED = [
    ("GET", "/v1/foo"), ("POST", "/v1/foo"), ("GET", "/v1/models/debug/model_name"), ("POST", "/v1/models"),
    ("GET", "/v1/models/foo:predict"), ("GET", "/v1/models/foo/version/50:predict"),
    ("POST", "/v1/models/foo/version/50:regress"), ("POST", "/v1/models/foo/versions/HELLO:regress"),
    ("POST", "/v1/models/foo/metadata"), ("POST", "/v1/models/foo/label/some_label:regress"),
    ("POST", "/v1/models/foo/versions/50/labels/some_label:regress"), ("POST", "/v1/models/foo/versions/some_label:regress"),
]


def test_rest_unsupported_api_calls(tfs):
    for method, path in MALFORMED:
        r = httpx.request(method, tfs.url + path)  # every /v1/ path reaches TF Serving's handler
        assert r.status_code == 400 and r.json()["error"].startswith(f"Malformed request: {method} {path}"), (method, path, r.text)
    assert httpx.get(f"{tfs.url}/statuspage").status_code == 404  # outside kPathRegex
    r = httpx.get(f"{tfs.url}/v1/models")
    assert r.status_code == 400 and "Missing model name" in r.json()["error"]
    r = httpx.post(f"{tfs.url}/v1/models/foo/versions/{2**64 - 1}:regress")
    assert r.status_code == 400 and "Failed to convert version" in r.json()["error"]


def test_rest_predict_model_name_version_errors(tfs):
    for path in ("foo:predict", "foo/versions/50:predict", "default99:predict"):
        r = post(tfs, path, {"instances": [1]})
        assert r.status_code == 404, path
    assert post(tfs, "foo:predict", {"instances": [1]}).json()["error"].startswith("Servable not found for request: Latest(foo)")


def test_rest_predict_request_errors(tfs):
    cases = [
        ("", "JSON Parse error: The document is empty"),
        ("instances = [1, 2]", "JSON Parse error: Invalid value"),
        ({"instances": ["x", "y"]}, "not of expected type: float"),
        ({"signature_name": 100}, "'signature_name' key must be a string value."),
    ]
    for body, needle in cases:
        r = post(tfs, "default:predict", body)
        assert r.status_code == 400 and needle in r.json()["error"], (body, r.text)
    r = post(tfs, "default/labels/nonexistent:predict", {"instances": ["x", "y"]})
    assert r.status_code == 400 and "Unrecognized servable version label" in r.json()["error"]


def test_rest_handler_predict_regress_classify(tfs):
    model = "saved_model_half_plus_two_2_versions"
    assert post(tfs, f"{model}:predict", {"instances": [[1.0, 2.0], [3.0, 4.0]]}).json() == {"predictions": [[2.5, 3.0], [3.5, 4.0]]}
    for where in ("/versions/123", "/labels/stable"):
        assert post(tfs, f"{model}{where}:predict", {"instances": [1.0, 2.0]}).json() == {"predictions": [2.5, 3.0]}
    body = {"signature_name": "serving_default", "instances": [3.0, 4.0]}
    assert post(tfs, f"{model}/versions/123:predict", body).json() == {"predictions": [3.5, 4.0]}
    body = {"signature_name": "serving_default", "inputs": [3.0, 4.0]}
    assert post(tfs, f"{model}/versions/123:predict", body).json() == {"outputs": [3.5, 4.0]}
    body = {"signature_name": "regress_x_to_y", "examples": [{"x": 80.0}]}
    for where in ("", "/versions/123", "/labels/stable"):
        r = post(tfs, f"{model}{where}:regress", body)
        assert r.json() == {"results": [42]} and r.headers["content-type"] == "application/json"
    assert post(tfs, f"{model}:classify", {"signature_name": "classify_x_to_y", "examples": [{"x": 20.0}]}).json() == {"results": [[["", 12]]]}
    body = {"signature_name": "classify_x_to_y", "examples": [{"x": 10.0}]}
    assert post(tfs, f"{model}/labels/stable:classify", body).json() == {"results": [[["", 7]]]}


# ------------------------------------------------------------------ api_rest.md and json_tensor.cc
def test_rest_json_floats_nan_and_infinity(tfs):
    r = post(tfs, "default:predict", '{"instances": [0.1, NaN, Infinity, -Infinity, 1e-7, 16777216]}')
    assert r.status_code == 200
    assert r.text.replace(" ", "") == '{"predictions":[2.05,NaN,Infinity,-Infinity,2.0,8.38861e+06]}'


def test_rest_half_plus_three_api_rest_md_examples(tfs):
    expected = {"model_version_status": [{"version": "123", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
    assert httpx.get(f"{tfs.url}/v1/models/half_plus_three").json() == expected
    assert post(tfs, "half_plus_three:predict", {"instances": [1.0, 2.0, 5.0]}).json() == {"predictions": [3.5, 4.0, 5.5]}
    body = {"signature_name": "tensorflow/serving/regress", "examples": [{"x": 1.0}, {"x": 2.0}]}
    assert post(tfs, "half_plus_three:regress", body).json() == {"results": [3.5, 4.0]}
    r = post(tfs, "half_plus_three:regress", {"examples": [{"x": 1.0}]})  # regress needs its signature named
    assert r.status_code == 400
    assert r.json()["error"].startswith("Expected regression signature method_name to be tensorflow/serving/regress. Was: tensorflow/serving/predict")
