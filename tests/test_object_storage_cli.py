"""The CLI on object-storage URLs, end to end against the real S3 server (SeaweedFS):
``modelkeep convert | predict | plot`` of ``s3://`` (and ``memory://``) paths and run
directories, and ``modelkeep-model-server --model_base_path=s3://...`` of a TF Serving
versioned base directory, picking up a new version on poll."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

import modelkeep as mk
from modelkeep.checkpoint import remote
from modelkeep.cli.main import main
from modelkeep.storage.objects import OK, ObjectDir

pytest.importorskip("fsspec", reason="object-storage tests need modelkeep[s3]")


def small_model(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(2)])
    model.compile(keras.optimizers.Adam(0.01), "mse")
    return model


def rows(n: int = 5) -> np.ndarray:
    return np.random.default_rng(3).normal(size=(n, 6)).astype("float32")


def put_npy(url: str, array: np.ndarray, tmp_path: Path) -> None:
    """An input file as another tool uploads it: one plain object, no commit record."""
    local = tmp_path / "upload.npy"
    np.save(local, array)
    fs, path = remote.sfs.filesystem(url)
    fs.put_file(str(local), path)


def fetched_bytes(url: str) -> bytes:
    with remote.fetched(url) as local:
        return Path(local).read_bytes()


def test_cli_convert_predict_on_s3(s3_dir, tmp_path, capsys):
    model = small_model()
    model.fit(rows(16), np.zeros((16, 2), "float32"), epochs=1, verbose=0)  # optimizer state to carry
    mk.save_model(model, f"{s3_dir}/m.keras")
    # s3 -> s3: downloaded (CRC-checked), converted, read back, committed as one upload
    assert main(["convert", f"{s3_dir}/m.keras", f"{s3_dir}/w.safetensors"]) == 0
    assert f"wrote {s3_dir}/w.safetensors (safetensors" in capsys.readouterr().out
    entries = ObjectDir(s3_dir).entries()
    assert entries["w.safetensors"].status == OK
    assert entries["w.safetensors"].commit.metadata["format"] == "safetensors"
    assert entries["w.safetensors"].commit.metadata["converted_from"] == f"{s3_dir}/m.keras"
    fresh = small_model(seed=5)
    mk.load_weights(fresh, f"{s3_dir}/w.safetensors")
    for a, b in zip(model.weights, fresh.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # a destination that exists is refused, as on disk
    assert main(["convert", f"{s3_dir}/m.keras", f"{s3_dir}/w.safetensors"]) != 0
    assert "already exists" in capsys.readouterr().err
    # s3 -> local and local -> s3
    assert main(["convert", f"{s3_dir}/m.keras", str(tmp_path / "m.h5")]) == 0
    assert main(["convert", str(tmp_path / "m.h5"), f"{s3_dir}/back.keras"]) == 0
    capsys.readouterr()
    back = mk.load_model(f"{s3_dir}/back.keras")
    for a, b in zip(model.weights, back.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())

    # predict: model, input and output all on s3://
    x = rows(7)
    put_npy(f"{s3_dir}/in/x.npy", x, tmp_path)
    expected = np.asarray(model.predict(x, verbose=0))
    assert main(["predict", f"{s3_dir}/m.keras", "--input", f"{s3_dir}/in/x.npy", "--output", f"{s3_dir}/out/y.npy"]) == 0
    assert f"wrote {s3_dir}/out/y.npy: 7 rows" in capsys.readouterr().out
    out = ObjectDir(f"{s3_dir}/out").entries()["y.npy"]
    assert out.status == OK  # the output is committed like any checkpoint
    local_y = tmp_path / "y.npy"
    local_y.write_bytes(fetched_bytes(f"{s3_dir}/out/y.npy"))
    np.testing.assert_allclose(np.load(local_y), expected, rtol=1e-6, atol=1e-6)
    assert main(["predict", f"{s3_dir}/nothing.keras", "--input", f"{s3_dir}/in/x.npy"]) != 0
    assert "nothing at" in capsys.readouterr().err


def test_cli_plot_of_an_s3_run(s3_dir, capsys):
    x, y = rows(16), np.random.default_rng(4).normal(size=(16, 2)).astype("float32")
    model = small_model()
    callback = mk.ModelCheckpoint(f"{s3_dir}/run/ck-{{epoch:02d}}.weights.h5", save_weights_only=True)
    model.fit(x, y, validation_data=(x, y), epochs=3, batch_size=8, verbose=0, callbacks=[callback])
    assert main(["plot", f"{s3_dir}/run", "-o", f"{s3_dir}/plots/curves.png", "--monitor", "val_loss"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {s3_dir}/plots/curves.png" in printed and "over 3 checkpoints" in printed
    assert fetched_bytes(f"{s3_dir}/plots/curves.png")[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_convert_on_memory_urls(tmp_path, capsys):
    base = f"memory://mk-cli/{tmp_path.name}"
    model = small_model()
    mk.save_weights(model, f"{base}/w.weights.h5")
    assert main(["convert", f"{base}/w.weights.h5", f"{base}/w.safetensors", "--no-check"]) == 0
    capsys.readouterr()
    fresh = small_model(seed=9)
    mk.load_weights(fresh, f"{base}/w.safetensors")
    for a, b in zip(model.weights, fresh.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert sorted((c.path.name, c.status) for c in mk.list_checkpoints(base)) == [("w.safetensors", OK),
                                                                                 ("w.weights.h5", OK)]


def _model_server(base: str, tmp_path: Path) -> tuple[subprocess.Popen, str, Path]:
    from test_serving_helpers import HOST, free_port

    port = free_port()
    log = tmp_path / f"model-server-{port}.log"
    cmd = [sys.executable, "-m", "modelkeep.cli.model_server", "--port=0", f"--rest_api_port={port}",
           "--model_name=m", f"--model_base_path={base}", "--file_system_poll_wait_seconds=0.5", f"--host={HOST}"]  # fmt: skip
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    with open(log, "wb") as handle:
        proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env)
    return proc, f"http://{HOST}:{port}", log


def _ask(url: str, x: np.ndarray) -> tuple[int, np.ndarray] | None:
    import httpx

    try:
        r = httpx.post(f"{url}/v1/models/m:predict", json={"instances": x.tolist()}, timeout=30)
    except httpx.HTTPError:
        return None
    if r.status_code != 200:
        return None
    return int(r.headers["X-Model-Version"]), np.array(r.json()["predictions"])


def _wait_version(proc: subprocess.Popen, url: str, x: np.ndarray, version: int, log: Path, timeout: float = 180):
    deadline = time.monotonic() + timeout
    answer = None
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        answer = _ask(url, x)
        if answer is not None and answer[0] == version:
            return answer[1]
        if answer is not None:
            assert answer[0] < version, answer  # never a newer, never a partial one
        time.sleep(0.2)
    raise AssertionError(f"version {version} not served (last answer {answer}):\n{log.read_text()[-3000:]}")


@pytest.mark.slow
def test_model_server_follows_an_s3_base_directory(s3_dir, tmp_path):
    """``modelkeep-model-server --model_base_path=s3://...``: numbered SavedModel versions, the
    one saved with modelkeep (committed) and one uploaded by another tool (a plain folder)."""
    x = rows(4)
    base = f"{s3_dir}/models/m"
    first = small_model(seed=1)
    mk.save_model(first, f"{base}/1")  # a SavedModel, committed under base/1
    assert [(v, s) for v, _p, s, _pr, _st in remote.base_versions(base)] == [(1, OK)]
    proc, url, log = _model_server(base, tmp_path)
    try:
        got = _wait_version(proc, url, x, 1, log)
        np.testing.assert_allclose(got, np.asarray(first(x)), rtol=1e-5, atol=1e-6)
        second = small_model(seed=2)
        local = tmp_path / "export" / "2"
        mk.save_model(second, local)  # then uploaded as a plain folder, as `aws s3 cp --recursive` does
        fs, path = remote.sfs.filesystem(base)
        fs.put(str(local), f"{path}/2", recursive=True)
        got = _wait_version(proc, url, x, 2, log)
        np.testing.assert_allclose(got, np.asarray(second(x)), rtol=1e-5, atol=1e-6)
        status = json.loads(__import__("httpx").get(f"{url}/v1/models/m", timeout=10).text)
        assert {v["version"] for v in status["model_version_status"]} >= {"2"}
    finally:
        proc.terminate()
        proc.wait(30)


def test_serve_detects_an_s3_base_directory(s3_dir, tmp_path):
    """``ModelSource`` (what ``serve`` and the model server use) on a base directory URL: versions
    by number, a half-uploaded folder not taken, each version loaded from its download."""
    from modelkeep.serving.versions import ModelSource

    base = f"{s3_dir}/models/m"
    model = small_model(seed=3)
    mk.save_model(model, f"{base}/1.keras")  # not a number: not a version
    mk.save_model(model, f"{base}/4")
    fs, path = remote.sfs.filesystem(base)
    fs.pipe_file(f"{path}/7/saved_model.pb", b"half")  # saved_model.pb there, variables still uploading
    fs.pipe_file(f"{path}/7/variables/variables.data-00000-of-00001", b"x")
    source = ModelSource.detect(base)
    assert source.kind == "base"
    found = [(c.version, c.status) for c in source.scan()]
    assert found == [(7, "incomplete"), (4, OK)]
    loaded = source.load(next(c for c in source.scan() if c.version == 4))
    np.testing.assert_allclose(np.asarray(loaded(rows(3))), np.asarray(model(rows(3))), rtol=1e-5, atol=1e-6)
    assert ModelSource.detect(f"{base}/4").kind == "single"
    fs.put(str(_export(model, tmp_path)), f"{path}/9", recursive=True)  # an uploaded SavedModel folder
    assert ModelSource.detect(f"{base}/9").kind == "single"
    assert [c.version for c in ModelSource.detect(base).scan()] == [9, 7, 4]


def _export(model: keras.Model, tmp_path: Path) -> Path:
    local = tmp_path / "export" / "saved"
    mk.save_model(model, local)
    return local


def test_model_server_serves_a_graph_only_savedmodel_on_s3(s3_dir, tmp_path):
    """A SavedModel without a Keras part (``tf.saved_model.save`` of a ``tf.Module``), uploaded
    under ``base/1`` by another tool: served by its signature from the download, as on disk."""
    import tensorflow as tf

    class Half(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(np.arange(12, dtype="float32").reshape(6, 2) / 10)

        @tf.function(input_signature=[tf.TensorSpec([None, 6], tf.float32, name="x")])
        def serve(self, x):
            return {"y": tf.matmul(x, self.w) + 2.0}

    module = Half()
    local = tmp_path / "graph" / "1"
    tf.saved_model.save(module, str(local), signatures={"serving_default": module.serve})
    base = f"{s3_dir}/models/graph"
    fs, path = remote.sfs.filesystem(base)
    fs.put(str(local), f"{path}/1", recursive=True)
    x = rows(3)
    proc, url, log = _model_server(base, tmp_path)
    try:
        got = _wait_version(proc, url, x, 1, log)
        np.testing.assert_array_equal(got.astype("float32"), module.serve(tf.constant(x))["y"].numpy())
    finally:
        proc.terminate()
        proc.wait(30)
