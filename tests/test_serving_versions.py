"""Multi-input/multi-output model in a TF Serving base directory: versions, named inputs,
bearer token, micro-batching, policies."""

from __future__ import annotations

import asyncio
import re
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

import modelkeep as mk
from modelkeep.serving.metrics import Metrics
from modelkeep.serving.versions import ModelSource
from modelkeep.serving.watcher import Policy, VersionManager
from test_serving_helpers import ServerProcess

NAME = "multi"
TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def multi_model(seed: int):
    import keras

    keras.utils.set_random_seed(seed)
    a = keras.Input((3,), name="a")
    b = keras.Input((2,), name="b", dtype="int32")
    x = keras.layers.Concatenate()([a, keras.layers.Dense(4)(keras.layers.Embedding(10, 2)(b)[:, :, 0])])
    score = keras.layers.Dense(1, name="score")(x)
    probs = keras.layers.Dense(3, activation="softmax", name="probs")(keras.layers.Dense(8, activation="relu")(x))
    return keras.Model([a, b], [score, probs])


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    base = tmp_path_factory.mktemp("base") / NAME
    models = {}
    for version in (1, 2):
        models[version] = multi_model(seed=version)
        mk.save_model(models[version], base / str(version))
    return base, models


@pytest.fixture(scope="module")
def served(base_dir, tmp_path_factory):
    base, models = base_dir
    tmp = tmp_path_factory.mktemp("serve-multi")
    (tmp / "key").write_text(TOKEN + "\n")
    server = ServerProcess(
        base, "--policy", "newest:2", "--api-key-file", str(tmp / "key"), "--batch-timeout-ms", "40", log_dir=tmp
    )
    try:
        server.wait(headers=AUTH)
        yield server, models
    finally:
        assert server.stop() == 0, server.log()


ROWS_A = [[0.1, 0.2, 0.3], [1.0, -1.0, 0.5]]
ROWS_B = [[1, 2], [3, 9]]


def expected(model):
    return model.predict([np.array(ROWS_A, np.float32), np.array(ROWS_B, np.int32)], verbose=0)


def test_token_is_required_everywhere_but_healthz(served):
    server, _ = served
    assert httpx.get(server.url + "/healthz").status_code == 200
    for path in ("/readyz", "/metrics", "/openapi.json", f"/v1/models/{NAME}", f"/v1/models/{NAME}/metadata"):
        r = httpx.get(server.url + path)
        assert r.status_code == 401 and "bearer token" in r.json()["error"], path
        assert httpx.get(server.url + path, headers=AUTH).status_code == 200, path
    r = httpx.post(f"{server.url}/v1/models/{NAME}:predict", json={"inputs": {"a": ROWS_A, "b": ROWS_B}},
                   headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401


def test_named_inputs_both_forms_and_versions(served):
    server, models = served
    score2, probs2 = expected(models[2])
    r = httpx.post(f"{server.url}/v1/models/{NAME}:predict", headers=AUTH,
                   json={"instances": [{"a": a, "b": b} for a, b in zip(ROWS_A, ROWS_B)]})
    assert r.status_code == 200, r.text
    assert r.headers["X-Model-Version"] == "2"
    rows = r.json()["predictions"]
    assert [sorted(row) for row in rows] == [["probs", "score"]] * 2
    np.testing.assert_allclose([row["score"] for row in rows], score2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose([row["probs"] for row in rows], probs2, rtol=1e-5, atol=1e-6)

    score1, probs1 = expected(models[1])
    r = httpx.post(f"{server.url}/v1/models/{NAME}/versions/1:predict", headers=AUTH,
                   json={"inputs": {"a": ROWS_A, "b": ROWS_B}})
    assert r.status_code == 200 and r.headers["X-Model-Version"] == "1"
    np.testing.assert_allclose(r.json()["outputs"]["score"], score1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r.json()["outputs"]["probs"], probs1, rtol=1e-5, atol=1e-6)
    assert not np.allclose(score1, score2)

    for body, needle in [
        ({"instances": [ROWS_A[0]]}, "instances is a plain list, but expecting list of objects"),
        ({"inputs": {"a": ROWS_A}}, "Missing named input: b in 'inputs' object."),
        ({"inputs": {"a": ROWS_A, "b": [[1.5, 2]]}}, "JSON Value: 1.5 Type: Number is not of expected type: int32"),
        ({"inputs": {"a": ROWS_A, "b": [[1, 2]]}}, "different batch sizes"),
        ({"instances": [{"a": ROWS_A[0], "b": ROWS_B[0]}, {"a": ROWS_A[1]}]}, "keys must be equal to: a,b"),
    ]:
        r = httpx.post(f"{server.url}/v1/models/{NAME}:predict", headers=AUTH, json=body)
        assert r.status_code == 400 and needle in r.json()["error"], (body, r.text)


def test_status_and_metadata_list_both_versions(served):
    server, _ = served
    status = httpx.get(f"{server.url}/v1/models/{NAME}", headers=AUTH).json()["model_version_status"]
    assert [(s["version"], s["state"]) for s in status] == [("2", "AVAILABLE"), ("1", "AVAILABLE")]
    meta = httpx.get(f"{server.url}/v1/models/{NAME}/versions/1/metadata", headers=AUTH).json()
    sig = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert {k: v["dtype"] for k, v in sig["inputs"].items()} == {"a": "DT_FLOAT", "b": "DT_INT32"}
    assert {k: [d["size"] for d in v["tensor_shape"]["dim"]] for k, v in sig["outputs"].items()} == {
        "score": ["-1", "1"], "probs": ["-1", "3"],
    }


def test_grpc_token_version_and_output_filter(served):
    server, models = served
    _, probs1 = expected(models[1])
    request = predict_pb2.PredictRequest()
    request.model_spec.name = NAME
    request.model_spec.version.value = 1
    request.inputs["a"].CopyFrom(tf.make_tensor_proto(np.array(ROWS_A, np.float32)))
    request.inputs["b"].CopyFrom(tf.make_tensor_proto(np.array(ROWS_B, np.int32)))
    request.output_filter.append("probs")
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.Predict(request, timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        response = stub.Predict(request, timeout=10, metadata=[("authorization", f"Bearer {TOKEN}")])
    assert response.model_spec.version.value == 1 and list(response.outputs) == ["probs"]
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["probs"]), probs1, rtol=1e-5, atol=1e-6)


def _batch_metrics(server) -> tuple[float, float]:
    text = httpx.get(server.url + "/metrics", headers=AUTH).text
    count = float(re.search(rf'modelkeep_batch_size_count{{model="{NAME}"}} (\S+)', text).group(1))
    total = float(re.search(rf'modelkeep_batch_size_sum{{model="{NAME}"}} (\S+)', text).group(1))
    return count, total


def test_concurrent_requests_share_forward_passes(served):
    server, models = served
    score2, _ = expected(models[2])
    count0, rows0 = _batch_metrics(server)
    n = 16

    def one(i: int) -> float:
        r = httpx.post(f"{server.url}/v1/models/{NAME}:predict", headers=AUTH,
                       json={"instances": [{"a": ROWS_A[i % 2], "b": ROWS_B[i % 2]}]})
        assert r.status_code == 200, r.text
        return r.json()["predictions"][0]["score"][0]

    with ThreadPoolExecutor(n) as pool:
        scores = list(pool.map(one, range(n)))
    np.testing.assert_allclose(scores, [score2[i % 2, 0] for i in range(n)], rtol=1e-5, atol=1e-6)
    count1, rows1 = _batch_metrics(server)
    assert rows1 - rows0 == n  # every row went through exactly one forward pass
    assert count1 - count0 < n  # ... and some passes carried several requests
    print(f"{n} concurrent requests answered in {int(count1 - count0)} forward passes")


def test_policies_choose_versions(base_dir):
    base, _ = base_dir
    assert Policy.parse("latest").wanted([3, 5, 4]) == [5]
    assert Policy.parse("newest:2").wanted([3, 5, 4]) == [5, 4]
    assert Policy.parse("pinned:3").wanted([3, 5, 4]) == [3]
    assert Policy.parse("pinned:9").wanted([3, 5]) == []
    for bad in ("newest:0", "pinned", "oldest", "latest:2"):
        with pytest.raises(ValueError, match="--policy"):
            Policy.parse(bad)

    async def pinned() -> tuple[list[int], int]:
        manager = VersionManager(NAME, ModelSource.detect(base), Policy.parse("pinned:1"), Metrics())
        await manager.poll_once()
        try:
            return sorted(manager.loaded), manager.resolve(None).version
        finally:
            await manager.close()

    assert asyncio.run(pinned()) == ([1], 1)
