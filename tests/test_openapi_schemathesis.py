"""Schemathesis (``--checks all``) against the served ``/openapi.json``: no failures.

One ``modelkeep serve`` process (its ``serve()`` with several models, strict mode) serves the
test models: the tutorial's ``.keras`` model, a TF1 ``half_plus_two`` graph with predict,
classify and regress signatures, a string-input ``tf.Module`` and a two-version base path.
Schemathesis runs, as an API user's CI would, once per model (its paths only), through its
command line in a subprocess; any failure it reports fails the test. The default run is
small (few examples per operation); the slow one is ``--max-examples 30``.
Measured 2026-12-02 (schemathesis 4.32.5, machine loaded: load average 11), one
``modelkeep serve MODEL --name N --port P --grpc-port 0`` per model and
``schemathesis run http://127.0.0.1:P/openapi.json --checks all --max-examples 30``:
tutorial 655 cases, 0 failures; half 1892 cases, 0 failures (2 errors: Hypothesis's
filter_too_much health check on the versioned :classify/:regress generators, hence
``--suppress-health-check all`` here); strings 661 cases, 0 failures; two 1942 cases, 0 failures.

``modelkeep-model-server`` is not run here: it answers TF Serving's 400 to a wrong method and
leaves stored signatures' shapes to the model, which no OpenAPI document can state exactly
(README, "A drop-in TensorFlow Serving").
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

import tfserving_models as tm
from test_serving_helpers import HOST, free_port

pytest.importorskip("schemathesis", reason="pip install schemathesis (modelkeep[test])")
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
MODELS = ("tutorial", "half", "strings", "two")

LAUNCH = """
import sys
from modelkeep.serving.model_config import ModelEntry
from modelkeep.serving.server import ServeConfig, serve
names, paths = sys.argv[2::2], sys.argv[3::2]
entries = [ModelEntry(n, p) for n, p in zip(names, paths)]
serve(ServeConfig(path=paths[0], models=entries, host="127.0.0.1", port=int(sys.argv[1]), grpc_port=None))
"""


def build(root: Path) -> dict[str, Path]:
    import modelkeep as mk

    import zoo

    mk.save_model(zoo.tutorial(), root / "tut.keras")
    two = tm.half_plus_two_tf1(root / "two", "00000123")
    tm.half_plus_two_tf1(two, "00000124", plus=3.0)
    return {"tutorial": root / "tut.keras", "half": tm.half_plus_two_tf1(root / "half"), "strings": tm.strings(root / "strings"),
            "two": two}


def wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"server not ready after {timeout}s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("st-models")
    models = build(root)
    port = free_port()
    args = [sys.executable, "-c", LAUNCH, str(port)]
    for name, path in models.items():
        args += [name, str(path)]
    log = root / "server.log"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://{HOST}:{port}"
    try:
        wait_ready(url, proc, log)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def schemathesis(url: str, model: str, examples: int, *extra: str) -> tuple[int, int, str]:
    """Run the CLI on one model's paths; (cases generated, failures, output)."""
    cmd = [str(SCHEMATHESIS), "run", f"{url}/openapi.json", "--checks", "all", "--max-examples", str(examples),
           "--include-path-regex", f"^/v1/models/{re.escape(model)}[/:]", "--no-color", "--seed", "1",
           "--suppress-health-check", "all", *extra]  # generator health (too_slow on a loaded machine), not API checks
    with tempfile.TemporaryDirectory() as scratch:  # its .schemathesis/ cache stays out of the repository
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=scratch)
    out = done.stdout + done.stderr
    generated = re.search(r"(\d+) generated", out)
    failures = re.search(r"(\d+) found (\d+) unique failure", out)
    count = int(failures.group(2)) if failures else 0
    assert generated, f"schemathesis printed no summary (exit {done.returncode}):\n{out[-4000:]}"
    assert done.returncode == 0 and count == 0, f"schemathesis found failures on {model!r}:\n{out[-8000:]}"
    return int(generated.group(1)), count, out


@pytest.mark.parametrize("model", MODELS)
def test_schemathesis_all_checks_no_failures(strict_server, model):
    generated, failures, _ = schemathesis(strict_server, model, 2, "--phases", "examples,coverage,fuzzing")
    assert generated > 20 and failures == 0


def test_document_lists_exactly_each_models_signatures(strict_server):
    paths = httpx.get(f"{strict_server}/openapi.json").json()["paths"]
    assert "/v1/models/half:classify" in paths and "/v1/models/half:regress" in paths
    for model in ("tutorial", "strings"):  # no classify/regress signature: not listed
        assert f"/v1/models/{model}:classify" not in paths and f"/v1/models/{model}:regress" not in paths
        assert f"/v1/models/{model}:predict" in paths
    assert not any("/labels/" in p for p in paths)  # no labels configured
    body = paths["/v1/models/tutorial:predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    rows = [f["properties"]["instances"]["items"] for f in body["anyOf"] if "instances" in f["properties"]]
    row = next(r for r in rows if r.get("type") == "array")  # input_layer: float32[?, 10]
    assert (row["minItems"], row["maxItems"], row["items"]["type"]) == (10, 10, "number")
    assert row["items"]["maximum"] == 3.4028235677973366e38 and row["items"]["exclusiveMaximum"] is True  # rounds to inf
    half = paths["/v1/models/half:predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    names = {tuple(f["properties"]["signature_name"]["enum"]) for f in half["anyOf"]}
    assert names == {("", "serving_default")}  # classify/regress signatures are for :classify / :regress
    classify = paths["/v1/models/half:classify"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    alone, in_context = classify["anyOf"]  # x in every example, or in the context (merged into each)
    assert alone["properties"]["signature_name"]["enum"] == ["classify_x_to_y"]
    assert alone["properties"]["examples"]["items"]["required"] == ["x"]  # read from the graph's ParseExample
    assert in_context["properties"]["context"]["required"] == ["x"] and in_context["required"][-1] == "context"
    r = httpx.post(f"{strict_server}/v1/models/half:classify",
                   json={"signature_name": "classify_x_to_y", "context": {"x": 2.5}, "examples": [{}]})
    assert r.json() == {"results": [[["", 3.25]]]}
    assert "get" not in paths["/v1/models/half:predict"]  # modelkeep serve: a GET there is 405
    r = httpx.get(f"{strict_server}/v1/models/half:predict")
    assert r.status_code == 405 and r.headers["allow"] == "POST" and r.json()["error"].startswith("Malformed request: GET")
    r = httpx.post(f"{strict_server}/v1/models/half/metadata")
    assert r.status_code == 405 and r.headers["allow"] == "GET"
    # shapes are checked as the document says: the string model's text is string[?]
    r = httpx.post(f"{strict_server}/v1/models/strings:predict", json={"inputs": [["a"]]})
    assert r.status_code == 400 and "expected shape string[?], got [1, 1]" in r.json()["error"]
    r = httpx.post(f"{strict_server}/v1/models/strings:predict", json={"inputs": ["a"]})
    assert r.json()["outputs"]["length"] == [1]
    half = [f["properties"]["inputs"] for f in half["anyOf"]]  # x's SignatureDef shape is unknown rank
    assert half == [{"anyOf": [{"type": "number", "minimum": -3.4028235677973366e38, "exclusiveMinimum": True,
                                "maximum": 3.4028235677973366e38, "exclusiveMaximum": True},
                               {"type": "array", "items": {"type": "number", "minimum": -3.4028235677973366e38,
                                "exclusiveMinimum": True, "maximum": 3.4028235677973366e38, "exclusiveMaximum": True}}]}]


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_schemathesis_all_checks_30_examples(strict_server, model):
    generated, failures, _ = schemathesis(strict_server, model, 30)
    assert generated > 100 and failures == 0
