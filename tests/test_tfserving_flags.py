"""``modelkeep-model-server`` flags and answers checked end to end on a running server:
``--grpc_channel_arguments`` (a message-size limit a client runs into), a configured model with
no version loaded yet (TF Serving's NOT_FOUND "Servable not found for request: Latest(name)"),
and TF Serving's metric names on ``--monitoring_config_file``'s path, scraped after requests.
"""

from __future__ import annotations

import re
import time

import grpc
import httpx
import pytest
from tensorflow.core.example import example_pb2
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import inference_pb2, predict_pb2, prediction_service_pb2_grpc

import tfserving_models as tm
from tfserving_server import ModelServer, write_config

LIMIT = 4096  # bytes: --grpc_channel_arguments=grpc.max_receive_message_length=4096


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("tfs-flags")
    (root / "pending" / "1").mkdir(parents=True)  # a version directory with nothing in it yet
    (root / "broken" / "1").mkdir(parents=True)
    (root / "broken" / "1" / "saved_model.pb").write_bytes(b"not a protobuf")
    models = {"half": tm.half_plus_two_tf1(root / "half"), "pending": root / "pending", "broken": root / "broken"}
    config = write_config(root / "models.config", models)
    monitoring = root / "monitoring.config"
    monitoring.write_text('prometheus_config: {\n  enable: true,\n  path: "/monitoring/prometheus/metrics"\n}\n')
    s = ModelServer(config, root, f"--monitoring_config_file={monitoring}",
                    f"--grpc_channel_arguments=grpc.max_receive_message_length={LIMIT}")
    s.models = models
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:  # /readyz stays 503: 'pending' never loads
        assert s.proc.poll() is None, s.log()
        try:
            r = httpx.get(f"{s.url}/v1/models/half", timeout=2)
            if r.status_code == 200 and r.json()["model_version_status"][0]["state"] == "AVAILABLE":
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    else:
        raise TimeoutError(s.log())
    yield s
    s.stop()


def predict_request(n: int) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half"
    request.inputs["x"].dtype = types_pb2.DT_FLOAT
    request.inputs["x"].float_val.extend([2.0] * n)
    request.inputs["x"].tensor_shape.dim.add().size = n
    request.inputs["x"].tensor_shape.dim.add().size = 1
    return request


def test_grpc_channel_arguments_reach_the_grpc_server(server):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(server.grpc_target))
    small = stub.Predict(predict_request(10), 30)
    assert list(small.outputs["y"].float_val) == [3.0] * 10
    big = predict_request(2000)  # 8 kB of floats: over the 4 kB the flag allows
    assert big.ByteSize() > LIMIT
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(big, 30)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_configured_model_without_a_loaded_version_is_not_found(server):
    r = httpx.post(f"{server.url}/v1/models/pending:predict", json={"instances": [1.0]}, timeout=30)
    assert r.status_code == 404  # TF Serving's BasicManager: NOT_FOUND, not UNAVAILABLE
    assert r.json()["error"].startswith("Servable not found for request: Latest(pending) (modelkeep: no version of 'pending'")
    r = httpx.post(f"{server.url}/v1/models/pending/versions/1:predict", json={"instances": [1.0]}, timeout=30)
    assert r.status_code == 404 and r.json()["error"].startswith("Servable not found for request: Specific(pending, 1)")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(server.grpc_target))
    request = predict_request(1)
    request.model_spec.name = "pending"
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(request, 30)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert info.value.details().startswith("Servable not found for request: Latest(pending)")
    assert httpx.get(f"{server.url}/readyz").status_code == 503  # modelkeep's own readiness says so


def _value(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    match = re.search(rf"^{re.escape(name)}\{{{re.escape(want)}\}} (\S+)$", text, re.M)
    assert match, f"{name}{{{want}}} not in:\n{text[:3000]}"
    return float(match.group(1))


def test_tf_serving_metric_names_after_requests(server):
    url = f"{server.url}/monitoring/prometheus/metrics"
    before = httpx.get(url).text
    ok_before = _value(before, ":tensorflow:serving:request_count", model_name="half", status="OK") if 'model_name="half",status="OK"' in before else 0
    for _ in range(3):
        assert httpx.post(f"{server.url}/v1/models/half:predict", json={"instances": [[1.0]]}).status_code == 200
    assert httpx.post(f"{server.url}/v1/models/half:predict", json={"instances": "x"}).status_code == 400
    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(server.grpc_target))
    stub.Predict(predict_request(2), 30)
    multi = inference_pb2.MultiInferenceRequest()
    task = multi.tasks.add()
    task.model_spec.name, task.model_spec.signature_name, task.method_name = "half", "regress_x_to_y", "tensorflow/serving/regress"
    for value in (1.0, 2.0, 3.0):
        example = example_pb2.Example()
        example.features.feature["x"].float_list.value.append(value)
        multi.input.example_list.examples.append(example)
    assert [r.regression_result.regressions[0].value for r in stub.MultiInference(multi, 30).results] == [2.5]
    text = httpx.get(url).text
    for kind in ("# TYPE :tensorflow:serving:request_count counter", "# TYPE :tensorflow:serving:request_latency histogram",
                 "# TYPE :tensorflow:serving:runtime_latency histogram", "# TYPE :tensorflow:serving:request_example_counts histogram",
                 "# TYPE :tensorflow:serving:request_example_count_total counter",
                 "# TYPE :tensorflow:cc:saved_model:load_attempt_count counter", "# TYPE :tensorflow:cc:saved_model:load_latency counter"):
        assert kind in text
    assert _value(text, ":tensorflow:serving:request_count", model_name="half", status="OK") == ok_before + 4  # 3 REST + 1 gRPC
    assert _value(text, ":tensorflow:serving:request_count", model_name="half", status="INVALID_ARGUMENT") >= 1
    assert _value(text, ":tensorflow:serving:request_latency_count", model_name="half", API="predict", entrypoint="REST") >= 3
    assert _value(text, ":tensorflow:serving:request_latency_count", model_name="half", API="Predict", entrypoint="GRPC") >= 1
    assert _value(text, ":tensorflow:serving:runtime_latency_count", model_name="half", API="Predict", runtime="TF1") >= 4
    assert _value(text, ":tensorflow:serving:request_example_count_total", model="half") == 3
    assert _value(text, ":tensorflow:serving:request_example_counts_bucket", model="half", le="2") == 0
    assert _value(text, ":tensorflow:serving:request_example_counts_bucket", model="half", le="4") == 1
    half_path = str(server.models["half"] / "00000123")
    assert _value(text, ":tensorflow:cc:saved_model:load_attempt_count", model_path=half_path, status="success") == 1
    assert _value(text, ":tensorflow:cc:saved_model:load_latency", model_path=half_path) > 0
    broken = str(server.models["broken"] / "1")
    assert _value(text, ":tensorflow:cc:saved_model:load_attempt_count", model_path=broken, status="fail") >= 1
