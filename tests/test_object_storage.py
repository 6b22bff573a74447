"""Object storage: URLs are never local paths; the commit protocol (memory://) and the whole
flow on a real S3 server (SeaweedFS, the ``s3_server`` fixture of conftest.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

import modelkeep as mk
from modelkeep.errors import ConcurrentWriteError, StorageURLError
from modelkeep.storage import fs as sfs
from modelkeep.storage.objects import CORRUPT, INCOMPLETE, OK, ObjectDir

fsspec = pytest.importorskip("fsspec", reason="object-storage tests need modelkeep[s3]")


def small_model(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(2)])
    model.compile(keras.optimizers.Adam(0.01), "mse")
    return model


def data(n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    return rng.normal(size=(n, 6)).astype("float32"), rng.normal(size=(n, 2)).astype("float32")


def same_weights(a: keras.Model, b: keras.Model) -> None:
    assert len(a.weights) == len(b.weights)
    for left, right in zip(a.weights, b.weights):
        np.testing.assert_array_equal(left.numpy(), right.numpy())


def memory_url(tmp_path: Path) -> str:
    return f"memory://mk-tests/{tmp_path.name}"


# ------------------------------------------------------------------------- paths and errors
def test_a_url_is_never_a_local_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert sfs.is_url("s3://b/run") and sfs.is_url("gs://b/x") and sfs.is_url("memory://x")
    assert not sfs.is_url("run/ckpt") and not sfs.is_url("file:///tmp/x") and not sfs.is_url(Path("s3:"))
    assert sfs.local_path("file:///tmp/x") == Path("/tmp/x")
    with pytest.raises(StorageURLError, match="remote URL"):
        sfs.local_path("s3://b/x")
    assert sfs.RemotePath("s3://b/run/") / "ckpt-5" == sfs.RemotePath("s3://b/run/ckpt-5")
    assert sfs.RemotePath("s3://b/run/w.h5").name == "w.h5"
    assert str(sfs.RemotePath("s3://b/run/w.h5").parent) == "s3://b/run"
    with pytest.raises(TypeError):  # no __fspath__: no local folder named "s3:" can be made from it
        Path(sfs.RemotePath("s3://b/run"))
    model = small_model()
    mk.save_weights(model, f"{memory_url(tmp_path)}/w.weights.h5")
    mk.ModelCheckpoint(f"{memory_url(tmp_path)}/ck-{{epoch}}.h5", save_weights_only=True)
    assert list(tmp_path.iterdir()) == []  # nothing named memory: (or s3:) appeared here


def test_unknown_scheme_and_missing_extra_are_clear_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = small_model()
    with pytest.raises(StorageURLError, match=r"unknown URL scheme nosuchfs://.*never taken as a local folder"):
        mk.save_model(model, "nosuchfs://bucket/m.keras")
    with pytest.raises(StorageURLError, match="nosuchfs"):
        mk.list_checkpoints("nosuchfs://bucket/run")
    with pytest.raises(StorageURLError, match="nosuchfs"):
        mk.ModelCheckpoint("nosuchfs://bucket/run/ckpt.keras")
    try:
        import gcsfs  # noqa: F401
    except ImportError:
        with pytest.raises(StorageURLError, match=r"pip install 'modelkeep\[gcs\]'"):
            mk.load_model("gs://bucket/m.keras")
    import importlib

    registry = importlib.import_module("fsspec.registry")
    monkeypatch.setitem(sys.modules, "s3fs", None)  # as if modelkeep[s3] were not installed
    monkeypatch.delitem(registry._registry, "s3", raising=False)
    with pytest.raises(StorageURLError, match=r"pip install 'modelkeep\[s3\]'"):
        mk.save_model(model, "s3://bucket/m.keras")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------- the protocol (memory://)
def _publish(directory: ObjectDir, root: Path, name: str, payload: bytes, **meta) -> None:
    (root / name).write_bytes(payload)
    directory.publish(name, root, [root / name], {"step": meta.get("step", 0)})


def test_fixed_name_is_versioned_and_old_generations_are_collected(tmp_path):
    directory = ObjectDir(memory_url(tmp_path))
    for step in range(1, 5):
        _publish(directory, tmp_path, "best.keras", bytes([step]) * 1000, step=step)
    entry = directory.entries()["best.keras"]
    assert entry.status == OK and entry.commit.seq == 4 and entry.commit.metadata["step"] == 4
    assert [c.seq for c in entry.good] == [4, 3]  # the previous one stays for readers in flight
    out = tmp_path / "out"
    directory.fetch("best.keras", out)
    assert (out / "best.keras").read_bytes() == bytes([4]) * 1000


def test_reader_never_takes_a_partial_or_corrupt_generation(tmp_path):
    url = memory_url(tmp_path)
    directory = ObjectDir(url)
    _publish(directory, tmp_path, "w.safetensors", b"a" * 500, step=1)
    _publish(directory, tmp_path, "w.safetensors", b"b" * 500, step=2)
    mem = fsspec.filesystem("memory")
    root = url.split("://", 1)[1]
    # an upload killed before its commit record: generation objects, no record
    mem.pipe_file(f"{root}/w.safetensors.mk/g000000003-otherhost-1-abc/w.safetensors", b"c" * 250)
    # a name whose upload never committed at all
    mem.pipe_file(f"{root}/x.h5.mk/g000000001-otherhost-1-abc/x.h5", b"partial")
    entries = directory.entries()
    assert entries["x.h5"].status == INCOMPLETE
    assert entries["w.safetensors"].commit.seq == 2
    newest = entries["w.safetensors"].commit
    data_path = f"{root}/w.safetensors.mk/{newest.generation}/w.safetensors"
    mem.pipe_file(data_path, b"B" * 500)  # same size, other bytes: only the CRC-32 can tell
    with pytest.warns(UserWarning, match="CRC-32"):
        directory.fetch("w.safetensors", tmp_path / "out")
    assert (tmp_path / "out" / "w.safetensors").read_bytes() == b"a" * 500  # the older good commit
    mem.pipe_file(data_path, b"b" * 10)  # truncated: the listing's size check drops it
    assert directory.entries()["w.safetensors"].commit.seq == 1
    for commit in directory.entries()["w.safetensors"].good:
        mem.rm(f"{root}/w.safetensors.mk/{commit.generation}/w.safetensors")
    assert directory.entries()["w.safetensors"].status == CORRUPT
    rows = {c.path.name: c.status for c in mk.list_checkpoints(url)}
    assert rows == {"w.safetensors": "corrupt", "x.h5": "incomplete"}


def test_two_writers_cannot_clobber_each_other(tmp_path):
    directory = ObjectDir(memory_url(tmp_path))
    _publish(directory, tmp_path, "best.keras", b"1" * 100, step=1)
    mem = fsspec.filesystem("memory")
    root = memory_url(tmp_path).split("://", 1)[1]
    real_list = directory._tree

    def racing(name):  # another writer commits seq 2 between this writer's listing and its record
        tree = real_list(name)
        mem.pipe_file(f"{root}/best.keras.mk/commit-000000002.json", json.dumps({
            "seq": 2, "generation": "g000000002-other-1-x", "files": {}, "writer": "other"}).encode())
        return tree

    directory._tree = racing
    (tmp_path / "best.keras").write_bytes(b"2" * 100)
    with pytest.raises(ConcurrentWriteError, match="another writer committed"):
        directory.publish("best.keras", tmp_path, [tmp_path / "best.keras"], {"step": 2})
    record = json.loads(mem.cat_file(f"{root}/best.keras.mk/commit-000000002.json"))
    assert record["writer"] == "other"  # the winner's record is untouched
    assert not [p for p in mem.find(f"{root}/best.keras.mk") if "/g000000002-" in p and "other" not in p]


# ------------------------------------------------------------------------- on a real S3 server
def test_tutorial_flow_on_s3(s3_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = small_model()
    x, y = data()
    model.fit(x, y, epochs=1, verbose=0)
    reference = model.predict(x, verbose=0)
    mk.save_weights(model, f"{s3_dir}/saved_modelname")  # TF checkpoint
    mk.save_weights(model, f"{s3_dir}/saved_modelname.h5")
    mk.save_model(model, f"{s3_dir}/mysavedmodel")  # SavedModel directory
    mk.save_model(model, f"{s3_dir}/mysavedmodel.h5")
    mk.save_model(model, f"{s3_dir}/model.keras")
    for name in ("saved_modelname", "saved_modelname.h5"):
        fresh = small_model(seed=9)
        mk.load_weights(fresh, f"{s3_dir}/{name}")
        same_weights(model, fresh)
    for name in ("mysavedmodel", "mysavedmodel.h5", "model.keras"):
        loaded = mk.load_model(f"{s3_dir}/{name}")
        np.testing.assert_array_equal(loaded.predict(x, verbose=0), reference)
    listed = {c.path.name: (c.format, c.status) for c in mk.list_checkpoints(s3_dir)}
    assert listed == {"saved_modelname": ("TF checkpoint", "ok"), "saved_modelname.h5": ("HDF5", "ok"),
                      "mysavedmodel": ("SavedModel", "ok"), "mysavedmodel.h5": ("HDF5", "ok"),
                      "model.keras": ("Keras zip (.keras)", "ok")}  # fmt: skip
    assert list(tmp_path.iterdir()) == []  # nothing local


def test_model_checkpoint_with_retention_and_best_on_s3(s3_dir):
    model = small_model()
    x, y = data()
    rotating = mk.ModelCheckpoint(f"{s3_dir}/w-{{epoch:02d}}.weights.h5", save_weights_only=True, max_to_keep=2,
                                  monitor="loss")  # fmt: skip
    best = mk.ModelCheckpoint(f"{s3_dir}/best.keras", save_best_only=True, monitor="loss")
    model.fit(x, y, epochs=4, batch_size=8, verbose=0, callbacks=[rotating, best])
    infos = mk.list_checkpoints(s3_dir)
    names = [c.path.name for c in infos]
    assert sorted(names) == ["best.keras", "w-03.weights.h5", "w-04.weights.h5"]
    assert all(c.status == "ok" for c in infos)
    assert rotating.saved[-1] == sfs.RemotePath(f"{s3_dir}/w-04.weights.h5")
    fresh = small_model(seed=3)
    mk.load_weights(fresh, f"{s3_dir}/w-04.weights.h5")
    same_weights(model, fresh)
    newest = small_model(seed=5)
    mk.load_weights(newest, s3_dir)  # a directory URL: its newest good checkpoint
    same_weights(model, newest)
    best_info = next(c for c in infos if c.path.name == "best.keras")
    assert best_info.logs["loss"] == pytest.approx(best.best)


def test_fit_resumes_exactly_from_s3(s3_dir, tmp_path):
    class Crash(Exception):
        pass

    class CrashAt(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if int(self.model.optimizer.iterations.numpy()) == 7:
                raise Crash()

    x, y = data()
    args = dict(batch_size=8, epochs=3, save_freq=2, verbose=0)
    straight = small_model()
    h_straight = mk.fit(straight, x, y, backup_dir=tmp_path / "local", **args)
    crashed = small_model()
    with pytest.raises(Crash):
        mk.fit(crashed, x, y, backup_dir=f"{s3_dir}/backup", callbacks=[CrashAt()], **args)
    mk.wait_for_saves()
    assert [c.step for c in mk.list_checkpoints(f"{s3_dir}/backup")] == [6, 4]
    resumed = small_model()
    h_resumed = mk.fit(resumed, x, y, backup_dir=f"{s3_dir}/backup", **args)
    for a, b in zip(straight.variables + straight.optimizer.variables, resumed.variables + resumed.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert h_resumed.history == h_straight.history
    assert [c.step for c in mk.list_checkpoints(f"{s3_dir}/backup")] == [15, 14]


def test_backup_and_restore_on_s3(s3_dir):
    x, y = data()
    first = small_model()
    first.fit(x, y, epochs=2, batch_size=8, verbose=0,
              callbacks=[mk.BackupAndRestore(f"{s3_dir}/bk", delete_checkpoint=False)])  # fmt: skip
    assert [c.epoch for c in mk.list_checkpoints(f"{s3_dir}/bk")] == [2, 1]
    second = small_model(seed=4)
    callback = mk.BackupAndRestore(f"{s3_dir}/bk")
    second.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[callback])  # nothing left to train
    assert str(callback.restored_from).endswith("/bk/ckpt-000000010")
    same_weights(first, second)
    assert mk.list_checkpoints(f"{s3_dir}/bk") == []  # delete_checkpoint=True removed them


def test_cli_ls_verify_inspect_diff_on_s3(s3_dir, s3_server, tmp_path):
    model = small_model()
    mk.save_weights(model, f"{s3_dir}/a.safetensors")
    mk.save_model(model, f"{s3_dir}/m.keras")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "COLUMNS": "200"}
    cli = [sys.executable, "-m", "modelkeep.cli.main"]
    done = subprocess.run([*cli, "ls", s3_dir, "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = {r["name"]: r["status"] for r in json.loads(done.stdout)["checkpoints"]}
    assert rows == {"a.safetensors": "ok", "m.keras": "ok"}
    from modelkeep.tools.verify import verify_paths

    results = verify_paths([s3_dir])  # what `modelkeep verify` runs
    assert [(str(r.path).rsplit("/", 1)[1], r.ok) for r in results] == [("a.safetensors", True), ("m.keras", True)]
    assert all("CRC-32" in r.checks[0] for r in results)
    from modelkeep.tools.diff import diff_paths
    from modelkeep.tools.inspect import describe

    described = describe(f"{s3_dir}/m.keras")  # what `modelkeep inspect` prints
    assert described["path"] == f"{s3_dir}/m.keras" and described["format"] == "Keras zip (.keras)"
    assert described["model"]["total_params"] == model.count_params()
    local = tmp_path / "a.safetensors"
    mk.save_weights(model, local)
    assert diff_paths(f"{s3_dir}/a.safetensors", local).identical
    commit = ObjectDir(s3_dir).entries()["m.keras"].commit
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    key = f"{s3_dir[5:]}/m.keras.mk/{commit.generation}/m.keras"
    payload = bytearray(fs.cat_file(key))
    payload[len(payload) // 2] ^= 0xFF
    fs.pipe_file(key, bytes(payload))
    done = subprocess.run([*cli, "verify", f"{s3_dir}/m.keras"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 1
    assert "CRC-32" in done.stdout + done.stderr


def test_s3_conditional_write_and_storage_options(s3_dir, s3_server, monkeypatch):
    """SeaweedFS enforces If-None-Match (the commit record's condition); set_storage_options
    reaches a server that the environment does not name."""
    assert sfs.put_bytes(f"{s3_dir}/once", b"1", exclusive=True) is True  # enforced by the server
    with pytest.raises(FileExistsError):
        sfs.put_bytes(f"{s3_dir}/once", b"2", exclusive=True)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    bucket = s3_dir.split("/")[2]
    monkeypatch.setattr(sfs, "_OPTIONS", {})
    mk.set_storage_options(f"s3://{bucket}", endpoint_url=s3_server.endpoint)
    model = small_model()
    mk.save_weights(model, f"{s3_dir}/opt.weights.h5")
    fresh = small_model(seed=2)
    mk.load_weights(fresh, f"{s3_dir}/opt.weights.h5")
    same_weights(model, fresh)


def test_two_serve_replicas_follow_an_s3_run(s3_dir, tmp_path):
    """Two `modelkeep serve` processes on one s3:// run switch to each new commit and say
    which version answered."""
    import httpx

    from modelkeep.capture import capture
    from modelkeep.checkpoint import store
    from modelkeep.demo import tutorial_data, tutorial_model
    from test_serving_helpers import ServerProcess, tutorial_rows

    x, y, _ = tutorial_data()
    model = tutorial_model()
    run = f"{s3_dir}/run"
    rows = tutorial_rows(2)
    expected = {}
    store.save_state(run, capture(model), step=1)
    expected[1] = np.asarray(model(rows, training=False))
    servers = [ServerProcess(run, "--name", "m", "--poll-seconds", "0.2", log_dir=tmp_path, grpc=False)
               for _ in range(2)]  # fmt: skip
    try:
        for server in servers:
            server.wait(timeout=180)

        def ask(server):
            r = httpx.post(f"{server.url}/v1/models/m:predict", json={"instances": rows.tolist()}, timeout=30)
            assert r.status_code == 200, r.text
            return int(r.headers["X-Model-Version"]), np.array(r.json()["predictions"])

        for server in servers:
            version, got = ask(server)
            assert version == 1
            np.testing.assert_allclose(got, expected[1], rtol=1e-5, atol=1e-6)
        model.fit(x, y, epochs=1, batch_size=64, verbose=0)
        store.save_state(run, capture(model), step=2)
        expected[2] = np.asarray(model(rows, training=False))
        import time

        for server in servers:
            deadline = time.monotonic() + 60
            while (answer := ask(server))[0] != 2 and time.monotonic() < deadline:
                assert answer[0] == 1
                time.sleep(0.1)
            assert answer[0] == 2, server.log()
            np.testing.assert_allclose(answer[1], expected[2], rtol=1e-5, atol=1e-6)
    finally:
        for server in servers:
            assert server.stop() == 0, server.log()


def test_cli_prune_on_s3(s3_dir, capsys):
    from modelkeep.checkpoint import store
    from modelkeep.cli.main import main
    from modelkeep.state import ModelState

    for step in (1, 2, 3):
        store.save_state(s3_dir, ModelState({"model/w": np.full(4, step, "float32")}), step=step)
    assert main(["prune", s3_dir, "--keep-last", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert sorted(p.rsplit("/", 1)[1] for p in report["deleted"]) == ["ckpt-000000001", "ckpt-000000002"]
    assert [c.step for c in mk.list_checkpoints(s3_dir)] == [3]
    np.testing.assert_array_equal(store.load_state(f"{s3_dir}/ckpt-000000003").variables["model/w"], np.full(4, 3, "float32"))
