"""Property-based fuzz run of the REST API (hypothesis): no input gives a 5xx.

Paths come from the server's own OpenAPI document (with random versions) and from random
text; bodies from random JSON, near-valid predict requests (wrong shapes, types, NaN,
huge numbers, nesting) and raw bytes. Every answer must be < 500 and JSON-shaped errors
must be ``{"error": ...}``; the server must still answer correctly afterwards.
"""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import modelkeep as mk
from modelkeep.demo import tutorial_model
from test_serving_helpers import ServerProcess, tutorial_rows

NAME = "tutorial"
COUNT = {"requests": 0, "by_status": {}}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    model = tutorial_model()
    mk.save_model(model, tmp / "tutorial.keras")
    server = ServerProcess(tmp / "tutorial.keras", "--max-request-bytes", "4096", log_dir=tmp, grpc=False)
    try:
        server.wait()
        doc = httpx.get(server.url + "/openapi.json").json()
        with httpx.Client(base_url=server.url, timeout=30) as client:
            yield server, client, sorted(doc["paths"]), model
    finally:
        assert server.stop() == 0, server.log()


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
    server, client, doc_paths, model = served

    @settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(requests(doc_paths))
    def one(req):
        method, path, body, content_type = req
        r = client.request(method, path, content=body, headers={"content-type": content_type})
        COUNT["requests"] += 1
        COUNT["by_status"][r.status_code] = COUNT["by_status"].get(r.status_code, 0) + 1
        assert r.status_code < 500, (method, path, body[:200], r.status_code, r.text)
        if r.status_code >= 400:
            assert set(r.json()) == {"error"}, r.text

    one()
    print(f"fuzz: {COUNT['requests']} requests, 0 server errors; status counts {COUNT['by_status']}")
    assert COUNT["requests"] >= 500
    assert server.proc.poll() is None
    x = tutorial_rows(3)
    assert COUNT["by_status"].get(400, 0) > 100  # the fuzzer reached the input checks
    r = client.post(f"/v1/models/{NAME}:predict", json={"instances": x.tolist()})
    np.testing.assert_allclose(r.json()["predictions"], model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    assert "modelkeep_request_errors_total" in client.get("/metrics").text
