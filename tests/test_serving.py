"""``modelkeep serve`` on the tutorial's model, used as a client would (subprocess, loopback):
both REST forms, the official gRPC stubs, status and metadata, bad input, limits, start-up
errors, and a hypothesis fuzz run of the REST API (one server for all, to keep the run short)."""

from __future__ import annotations

import json

import grpc
import httpx
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

import modelkeep as mk
from modelkeep.demo import tutorial_data, tutorial_model
from test_serving_helpers import ServerProcess, tutorial_rows

NAME = "tutorial"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    import keras

    keras.utils.set_random_seed(3)
    tmp = tmp_path_factory.mktemp("serve")
    x, y, _ = tutorial_data()
    model = tutorial_model()
    model.fit(x, y, epochs=1, verbose=0)
    mk.save_model(model, tmp / "tutorial.keras")
    server = ServerProcess(tmp / "tutorial.keras", "--max-request-bytes", "20000", log_dir=tmp)
    try:
        server.wait()
        yield server, model
    finally:
        assert server.stop() == 0, server.log()


def test_rest_row_and_columnar_forms_match_model_predict(served):
    server, model = served
    rows = tutorial_rows(5)
    expected = model.predict(rows, verbose=0)
    r = httpx.post(f"{server.url}/v1/models/{NAME}:predict", json={"instances": rows.tolist()})
    assert r.status_code == 200, r.text
    assert r.headers["X-Model-Version"] == "1"
    np.testing.assert_allclose(np.array(r.json()["predictions"]), expected, rtol=1e-5, atol=1e-6)
    r = httpx.post(
        f"{server.url}/v1/models/{NAME}/versions/1:predict",
        json={"signature_name": "serving_default", "inputs": rows.tolist()},
    )
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(np.array(r.json()["outputs"]), expected, rtol=1e-5, atol=1e-6)
    # named row form with the model's own input name, as a TF Serving client may send it
    meta = httpx.get(f"{server.url}/v1/models/{NAME}/metadata").json()
    (input_name,) = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]["inputs"]
    r = httpx.post(f"{server.url}/v1/models/{NAME}:predict", json={"instances": [{input_name: rows[0].tolist()}]})
    np.testing.assert_allclose(np.array(r.json()["predictions"]), expected[:1], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_sequential_requests_are_not_delayed(served):
    """A keep-alive client asking one row at a time gets answers in milliseconds (no Nagle /
    delayed-ACK stall, no batching wait). A wall-clock bound: slow run only, on a quiet machine
    (on 2 loaded cores a scheduler delay alone can pass 20 ms)."""
    import time

    server, _ = served
    body = {"instances": tutorial_rows(1).tolist()}
    times = []
    with httpx.Client(base_url=server.url) as client:
        for _ in range(40):
            started = time.perf_counter()
            assert client.post(f"/v1/models/{NAME}:predict", json=body).status_code == 200
            times.append(time.perf_counter() - started)
    median = sorted(times)[len(times) // 2]
    print(f"sequential predict: median {median * 1000:.2f} ms")
    assert median < 0.02


def test_rest_status_and_metadata_in_tf_serving_shape(served):
    server, _ = served
    status = httpx.get(f"{server.url}/v1/models/{NAME}").json()
    assert status == {
        "model_version_status": [{"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]
    }
    assert httpx.get(f"{server.url}/v1/models/{NAME}/versions/1").json() == status
    meta = httpx.get(f"{server.url}/v1/models/{NAME}/versions/1/metadata").json()
    assert meta["model_spec"] == {"name": NAME, "signature_name": "", "version": "1"}
    sig = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sig["method_name"] == "tensorflow/serving/predict"
    (inp,) = sig["inputs"].values()
    (out,) = sig["outputs"].values()
    assert inp["dtype"] == out["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in inp["tensor_shape"]["dim"]] == ["-1", "10"]
    assert [d["size"] for d in out["tensor_shape"]["dim"]] == ["-1", "1"]


def test_grpc_with_official_stubs(served):
    server, model = served
    rows = tutorial_rows(3, seed=11)
    with grpc.insecure_channel(server.grpc_target) as channel:
        predict = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        meta_req = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        meta_req.model_spec.name = NAME
        meta = predict.GetModelMetadata(meta_req, timeout=10)
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        assert meta.metadata["signature_def"].Unpack(sig_map)
        sig = sig_map.signature_def["serving_default"]
        (input_name,) = sig.inputs
        (output_name,) = sig.outputs
        assert [d.size for d in sig.inputs[input_name].tensor_shape.dim] == [-1, 10]

        request = predict_pb2.PredictRequest()
        request.model_spec.name = NAME
        request.model_spec.signature_name = "serving_default"
        request.inputs[input_name].CopyFrom(tf.make_tensor_proto(rows))
        response = predict.Predict(request, timeout=10)
        assert response.model_spec.version.value == 1
        got = tf.make_ndarray(response.outputs[output_name])
        np.testing.assert_allclose(got, model.predict(rows, verbose=0), rtol=1e-5, atol=1e-6)

        status_req = get_model_status_pb2.GetModelStatusRequest()
        status_req.model_spec.name = NAME
        status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(status_req, timeout=10)
        (entry,) = status.model_version_status
        assert (entry.version, entry.state) == (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE)

        bad = predict_pb2.PredictRequest()
        bad.model_spec.name = NAME
        bad.inputs[input_name].CopyFrom(tf.make_tensor_proto(rows[:, :7]))
        with pytest.raises(grpc.RpcError) as err:
            predict.Predict(bad, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "expected shape float[?, 10]" in err.value.details() and "[3, 7]" in err.value.details()
        bad.model_spec.name = "nope"
        with pytest.raises(grpc.RpcError) as err:
            predict.Predict(bad, timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        strings = predict_pb2.PredictRequest()
        strings.model_spec.name = NAME
        strings.inputs[input_name].CopyFrom(tf.make_tensor_proto([["a"] * 10]))
        with pytest.raises(grpc.RpcError) as err:
            predict.Predict(strings, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        big = predict_pb2.PredictRequest()
        big.model_spec.name = NAME
        big.inputs[input_name].CopyFrom(tf.make_tensor_proto(tutorial_rows(1000)))  # 40 kB > --max-request-bytes
        with pytest.raises(grpc.RpcError) as err:
            predict.Predict(big, timeout=10)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert predict.Predict(request, timeout=10).model_spec.version.value == 1  # still serving


BAD_BODIES = [
    (b"{not json", "JSON Parse error: Invalid value"),
    (b"[1, 2]", "Is not object"),
    (json.dumps({"instances": []}).encode(), "No values in 'instances' array"),
    (json.dumps({"instances": [[1.0] * 9]}).encode(), "expected shape float[?, 10]"),
    (json.dumps({"instances": [[1.0] * 10, [1.0] * 9]}).encode(), "Expecting shape [10] but got: [9]"),
    (json.dumps({"instances": [["a"] * 10]}).encode(), 'JSON Value: "a" Type: String is not of expected type: float'),
    (json.dumps({"instances": [[True] * 10]}).encode(), "Type: True is not of expected type: float"),
    (json.dumps({"instances": [{"nope": [1.0] * 10}]}).encode(), "does not have named input: nope"),
    (json.dumps({"inputs": {"nope": [[1.0] * 10]}}).encode(), "Missing named input: "),
    (b'{"instances": [[NaN, 1, 1, 1, 1, 1, 1, 1, 1, 1]]}', "expected finite numbers"),
    (json.dumps({"instances": [[1e300] * 10]}).encode(), "too large for float32"),
    (json.dumps({"instances": [[1.0] * 10], "inputs": [[1.0] * 10]}).encode(), "expecting only one of 'inputs' or 'instances' keys"),
    (json.dumps({"instances": [[1.0] * 10], "signature_name": "other"}).encode(), 'Serving signature name: "other" not found'),
    (json.dumps({"inputs": 3}).encode(), "expected shape float[?, 10]"),
]


@pytest.mark.parametrize("body,needle", BAD_BODIES, ids=[n for _, n in BAD_BODIES])
def test_rest_bad_input_is_a_400_that_says_what_was_expected(served, body, needle):
    server, _ = served
    r = httpx.post(f"{server.url}/v1/models/{NAME}:predict", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"], r.json()


def test_rest_limits_unknown_routes_and_service_endpoints(served):
    server, _ = served
    assert httpx.post(f"{server.url}/v1/models/{NAME}:predict", json={"instances": [[0.5] * 10]}).status_code == 200
    assert httpx.post(f"{server.url}/v1/models/{NAME}:predict", json={"instances": [[0.5] * 9]}).status_code == 400
    big = json.dumps({"instances": tutorial_rows(400).tolist()}).encode()
    assert len(big) > 20000
    r = httpx.post(f"{server.url}/v1/models/{NAME}:predict", content=big)
    assert r.status_code == 413 and "20000" in r.json()["error"]
    chunks = (big[i : i + 4096] for i in range(0, len(big), 4096))  # chunked: no Content-Length to trust
    r = httpx.post(f"{server.url}/v1/models/{NAME}:predict", content=chunks)
    assert r.status_code == 413 and "exceeds the limit of 20000" in r.json()["error"]
    r = httpx.post(f"{server.url}/v1/models/{NAME}/versions/7:predict", json={"instances": [[0.0] * 10]})
    assert r.status_code == 404 and "Servable not found for request: Specific(tutorial, 7)" in r.json()["error"]
    r = httpx.post(f"{server.url}/v1/models/..%2F..%2Fetc:predict", json={"instances": [[0.0] * 10]})
    assert r.status_code == 400 and "Malformed request" in r.json()["error"]
    r = httpx.get(f"{server.url}/v1/models/{NAME}:predict")  # TF Serving's text; 405 (modelkeep-model-server: its 400)
    assert r.status_code == 405 and r.json()["error"].startswith(f"Malformed request: GET /v1/models/{NAME}:predict")
    assert r.headers["allow"] == "POST"
    r = httpx.put(f"{server.url}/v1/models/{NAME}:predict")
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    r = httpx.post(f"{server.url}/healthz")
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"
    extra = {"instances": [[0.5] * 10], "path": "/etc/passwd"}  # TF Serving ignores unknown keys
    assert httpx.post(f"{server.url}/v1/models/{NAME}:predict", json=extra).status_code == 200
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "alive"}
    assert httpx.get(f"{server.url}/readyz").json()["versions"] == [1]
    doc = httpx.get(f"{server.url}/openapi.json").json()
    assert doc["openapi"].startswith("3.") and f"/v1/models/{NAME}:predict" in doc["paths"]
    metrics = httpx.get(f"{server.url}/metrics").text
    for needle in (
        'modelkeep_requests_total{api="rest",method="predict",code="200"}',
        'modelkeep_requests_total{api="rest",method="predict",code="400"}',
        "modelkeep_request_latency_seconds_bucket",
        "modelkeep_batch_size_count",
        f'modelkeep_model_version_served{{model="{NAME}"}} 1',
        'modelkeep_request_errors_total{api="rest",kind="too_large"}',
    ):
        assert needle in metrics, needle


def test_default_bind_is_loopback():
    from modelkeep.cli.main import build_parser
    from modelkeep.serving.server import ServeConfig

    args = build_parser().parse_args(["serve", "model.keras"])
    assert args.host == "127.0.0.1" and ServeConfig(path="x").host == "127.0.0.1"


def test_start_up_errors_are_one_line_and_exit_1(served, tmp_path):
    import os
    import subprocess

    from test_serving_helpers import command

    server, _ = served
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    cases = [
        (["serve", str(tmp_path / "missing.keras")], "does not exist"),
        (["serve", str(tmp_path), "--port", str(server.port), "--grpc-port", "0"], "Choose another --port"),
    ]
    procs = [
        subprocess.Popen([*command(), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for args, _ in cases
    ]
    for proc, (args, needle) in zip(procs, cases):
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 1, (args, stderr)
        assert needle in stderr.strip().splitlines()[-1], stderr


# ---------------------------------------------------------------------- fuzz
scalars = (
    st.none()
    | st.booleans()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.integers(-(2**70), 2**70)
    | st.text(max_size=6)
)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=24
)
numbers = st.floats(allow_nan=True, allow_infinity=True, width=64) | st.integers(-(2**40), 2**40)
rows = st.lists(st.lists(numbers, min_size=0, max_size=12), min_size=0, max_size=4)
named_rows = st.lists(st.dictionaries(st.sampled_from(["input_layer", "x", "keras_tensor", ""]), rows, max_size=2), max_size=3)
predict_bodies = st.fixed_dictionaries(
    {},
    optional={
        "instances": rows | named_rows | json_values,
        "inputs": rows | st.dictionaries(st.text(max_size=8), rows, max_size=2) | json_values,
        "signature_name": st.sampled_from(["", "serving_default", "other"]) | json_values,
        "extra": json_values,
    },
)
bodies = (
    predict_bodies.map(lambda b: json.dumps(b, allow_nan=True).encode())
    | json_values.map(lambda b: json.dumps(b, allow_nan=True).encode())
    | st.binary(max_size=300)
    | st.just(b"[" * 5000)
)
random_paths = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789/:._-%~", max_size=40).map(lambda p: "/" + p)


@st.composite
def requests(draw, doc_paths):
    if draw(st.integers(0, 9)) < 6:  # most requests: a predict call with a fuzzed body
        path = draw(st.sampled_from([f"/v1/models/{NAME}:predict", f"/v1/models/{NAME}/versions/1:predict"]))
        return "POST", path, draw(bodies), "application/json"
    if draw(st.booleans()):
        path = draw(st.sampled_from(doc_paths)).replace("{version}", str(draw(st.integers(-2, 3) | st.just(10**20))))
    else:
        path = draw(st.sampled_from(["/v1/models/", "/v1/models/tutorial", ""]) ) + draw(random_paths)
    method = draw(st.sampled_from(["POST", "POST", "GET", "PUT", "DELETE"]))
    content_type = draw(st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded"]))
    return method, path, draw(bodies), content_type


def test_fuzz_rest_api_never_answers_5xx(served):
    """Property-based fuzz run (hypothesis): paths from the server's OpenAPI document and random
    text, bodies from random JSON, near-valid predict requests and raw bytes; no answer >= 500."""
    server, model = served
    client = httpx.Client(base_url=server.url, timeout=30)
    doc_paths = sorted(client.get("/openapi.json").json()["paths"])

    count = {"requests": 0, "by_status": {}}

    @settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(requests(doc_paths))
    def one(req):
        method, path, body, content_type = req
        r = client.request(method, path, content=body, headers={"content-type": content_type})
        count["requests"] += 1
        count["by_status"][r.status_code] = count["by_status"].get(r.status_code, 0) + 1
        assert r.status_code < 500, (method, path, body[:200], r.status_code, r.text)
        if r.status_code >= 400:
            assert set(r.json()) == {"error"}, r.text

    one()
    print(f"fuzz: {count['requests']} requests, 0 server errors; status counts {count['by_status']}")
    assert count["requests"] >= 500
    assert server.proc.poll() is None
    x = tutorial_rows(3)
    assert count["by_status"].get(400, 0) > 100  # the fuzzer reached the input checks
    r = client.post(f"/v1/models/{NAME}:predict", json={"instances": x.tolist()})
    np.testing.assert_allclose(r.json()["predictions"], model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    assert "modelkeep_request_errors_total" in client.get("/metrics").text
    client.close()
