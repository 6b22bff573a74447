"""``.keras`` checkpoints written by modelkeep itself from a snapshot (``formats.keras_zip_direct``):
Keras's own loader reads them bit-exact, the weights member and its large datasets are aligned
for direct I/O, zip64 fields are right, a flipped byte is caught, and a kill mid-write keeps the
previous checkpoint good."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

import modelkeep as mk
from modelkeep.checkpoint import store
from modelkeep.errors import UnsafeFileError
from modelkeep.formats import keras_zip_direct as direct
from modelkeep.storage.commit import TMP_MARK, clean_leftovers
from modelkeep.tools.verify import verify_paths

ROOT = Path(__file__).resolve().parents[1]


def _model() -> keras.Model:
    """A 256x160 kernel (160 KiB: aligned, written with O_DIRECT), small biases, BatchNorm, Dropout
    (a seed state), Adam (slots and a scalar iteration count)."""
    keras.utils.set_random_seed(7)
    model = keras.Sequential([keras.Input((256,)), keras.layers.Dense(160), keras.layers.BatchNormalization(),
                              keras.layers.Dropout(0.1), keras.layers.Dense(3)])  # fmt: skip
    model.compile(optimizer="adam", loss="mse")
    return model


class Record(keras.callbacks.Callback):
    """Every model and optimizer variable at each epoch's end (before the checkpoint's snapshot)."""

    def __init__(self) -> None:
        super().__init__()
        self.values: list[list[np.ndarray]] = []

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.values.append([v.numpy().copy() for v in list(self.model.variables) + list(self.model.optimizer.variables)])


def _fit(directory: Path, epochs: int = 2) -> tuple[keras.Model, Record, list]:
    model, record = _model(), Record()
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((64, 256)).astype("float32"), rng.standard_normal((64, 3)).astype("float32")
    calls: list = []
    real = direct.write_file

    def spy(path: Path, writes: list) -> None:
        calls.append(writes)
        real(path, writes)

    direct.write_file = spy
    try:
        model.fit(x, y, batch_size=16, epochs=epochs, verbose=0, callbacks=[record, mk.ModelCheckpoint(str(directory / "c-{epoch}.keras"))])
    finally:
        direct.write_file = real
    return model, record, calls


def _assert_epoch(loaded: keras.Model, record: Record, epoch: int) -> None:
    variables = list(loaded.variables) + list(loaded.optimizer.variables)
    assert len(variables) == len(record.values[epoch])
    for variable, expected in zip(variables, record.values[epoch]):
        if "seed_generator" in variable.path:  # Keras's loader does not read modelkeep's seed member
            continue
        got = variable.numpy()
        assert got.dtype == expected.dtype and np.array_equal(got, expected), variable.path


def test_keras_loads_each_checkpoint_bit_exact_and_the_weights_are_aligned(tmp_path: Path) -> None:
    _model_, record, calls = _fit(tmp_path)
    assert len(calls) == 2, "the checkpoints were not written by keras_zip_direct"
    for epoch in range(2):
        path = tmp_path / f"c-{epoch + 1}.keras"
        _assert_epoch(keras.saving.load_model(path), record, epoch)  # plain Keras
        _assert_epoch(mk.load_model(path), record, epoch)  # modelkeep's loader (the guard first)
        with zipfile.ZipFile(path) as archive:
            assert archive.testzip() is None  # every member's CRC-32
            assert archive.namelist() == ["metadata.json", "config.json", "model.weights.h5", "modelkeep_rng.safetensors"]
            info = archive.getinfo("model.weights.h5")
            with open(path, "rb") as handle:
                handle.seek(info.header_offset + 26)
                name_len, extra_len = np.frombuffer(handle.read(4), "<u2")
            start = info.header_offset + 30 + int(name_len) + int(extra_len)
            assert start % direct.ALIGN == 0, start
            with h5py.File(archive.open("model.weights.h5"), "r") as f:
                kernel = f["layers/dense/vars/0"]
                assert kernel.shape == (256, 160) and (start + kernel.id.get_offset()) % direct.ALIGN == 0
    results = verify_paths([tmp_path / "c-1.keras", tmp_path / "c-2.keras"])  # what `modelkeep verify` runs
    assert [r.ok for r in results] == [True, True], [r.problem for r in results]


def test_a_flipped_byte_in_a_tensor_is_caught_by_verify(tmp_path: Path) -> None:
    _fit(tmp_path, epochs=1)
    path = tmp_path / "c-1.keras"
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("model.weights.h5")
        with h5py.File(archive.open("model.weights.h5"), "r") as f:
            inside = f["layers/dense/vars/0"].id.get_offset() + 1000
    with open(path, "rb") as handle:
        handle.seek(info.header_offset + 26)
        name_len, extra_len = np.frombuffer(handle.read(4), "<u2")
    at = info.header_offset + 30 + int(name_len) + int(extra_len) + inside
    with open(path, "r+b") as handle:
        handle.seek(at)
        byte = handle.read(1)
        handle.seek(at)
        handle.write(bytes([byte[0] ^ 0x10]))
    (result,) = verify_paths([path])
    assert not result.ok and "crc" in (result.problem or "").lower(), result.problem
    assert [c.status for c in mk.list_checkpoints(tmp_path)] != ["ok"]


def test_zip64_fields_where_sizes_and_offsets_need_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sizes and offsets above the limit get zip64 fields (limit lowered, as past 2 GiB): Python's
    zipfile and Keras read the archive, bit-exact."""
    monkeypatch.setattr(direct, "ZIP64_LIMIT", 1000)
    _model_, record, _calls = _fit(tmp_path, epochs=1)
    path = tmp_path / "c-1.keras"
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None
        info = archive.getinfo("model.weights.h5")
        assert info.file_size > 1000 and info.extra[:2] == b"\x01\x00"  # the zip64 extra field
        assert archive.getinfo("modelkeep_rng.safetensors").header_offset > 1000
    _assert_epoch(keras.saving.load_model(path), record, 0)


def test_without_direct_io_every_byte_goes_through_pwrite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "O_DIRECT", raising=False)  # a platform or file system without it
    _model_, record, calls = _fit(tmp_path, epochs=1)
    assert calls
    _assert_epoch(keras.saving.load_model(tmp_path / "c-1.keras"), record, 0)


def test_a_dtype_h5py_converts_is_not_laid_out_by_hand() -> None:
    import ml_dtypes

    arrays = {"0:layers/d/0": np.zeros((4, 4), ml_dtypes.bfloat16)}
    assert direct.h5_layout([("layers/d", None, [("0", "0:layers/d/0")])], arrays, Path("unused.h5")) is None


def test_a_kill_mid_write_leaves_the_previous_checkpoint_good(tmp_path: Path) -> None:
    """The child saves epoch 1, then SIGKILLs itself in the middle of epoch 2's tensor writes."""
    child = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(ROOT / "tests")!r})
        import numpy as np
        from pathlib import Path
        import modelkeep as mk
        from modelkeep.formats import keras_zip_direct as direct
        from test_keras_zip_direct import Record, _model
        out = Path({str(tmp_path)!r})
        real, count = direct._pwrite_all, []
        def dying(fd, view, offset):
            count.append(1)
            if len(count) > 40:  # well into the second archive's writes
                real(fd, view[: len(view) // 2], offset)
                os.kill(os.getpid(), signal.SIGKILL)
            real(fd, view, offset)
        direct._pwrite_all = dying
        record = Record()
        saved = []
        class Keep(Record):
            def on_epoch_end(self, epoch, logs=None):
                super().on_epoch_end(epoch, logs)
                np.savez(out / f"epoch-{{epoch}}.npz", *self.values[-1])
        model = _model()
        rng = np.random.default_rng(0)
        x, y = rng.standard_normal((64, 256)).astype("float32"), rng.standard_normal((64, 3)).astype("float32")
        model.fit(x, y, batch_size=16, epochs=3, verbose=0, callbacks=[Keep(), mk.ModelCheckpoint(str(out / "c-{{epoch}}.keras"))])
        print("not killed", len(count))
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stdout + done.stderr[-3000:]
    committed = sorted(p.name for p in tmp_path.glob("c-*.keras"))
    assert committed == ["c-1.keras"], committed
    assert [TMP_MARK in p.name for p in tmp_path.iterdir()].count(True) >= 1  # the killed write's temporary
    assert [c.status for c in mk.list_checkpoints(tmp_path)] == ["ok"]
    with np.load(tmp_path / "epoch-0.npz") as saved:
        expected = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    record = Record()
    record.values = [expected]
    _assert_epoch(keras.saving.load_model(tmp_path / "c-1.keras"), record, 0)
    clean_leftovers(tmp_path)  # the killed process is gone: its temporaries go
    assert not [p for p in tmp_path.iterdir() if TMP_MARK in p.name or p.name.endswith(store.PENDING_SUFFIX)]


def test_the_guard_takes_two_keys_per_tensor_and_refuses_three(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A SavedModel names each variable twice; the bundle stores it once. Declaring more than
    twice the data file's bytes is still a size bomb."""
    from modelkeep.checkpoint.writer import SnapshotBuffers
    from modelkeep.formats import safetensors, tf_bundle
    from modelkeep.state import ModelState
    from modelkeep.storage.guard_h5 import open_tf_checkpoint

    monkeypatch.setattr(safetensors, "DIRECT_MIN", 1)
    value = SnapshotBuffers().copy(ModelState({"a": np.arange(50_000, dtype=np.float32)}), align=64).variables["a"]
    two = {"variables/0/.ATTRIBUTES/VARIABLE_VALUE": value, "_all_variables/0/.ATTRIBUTES/VARIABLE_VALUE": value}
    assert tf_bundle.write_bundle_direct(tmp_path / "two", two)
    reader = open_tf_checkpoint(tmp_path / "two")
    assert all(np.array_equal(reader.get_tensor(k), value) for k in two)
    three = {**two, "extra/.ATTRIBUTES/VARIABLE_VALUE": value}
    assert tf_bundle.write_bundle_direct(tmp_path / "three", three)
    with pytest.raises(UnsafeFileError, match="tf-size-bomb"):
        open_tf_checkpoint(tmp_path / "three")


def test_a_bfloat16_model_goes_through_keras_own_writers_and_loads_bit_exact(tmp_path: Path) -> None:
    """h5py stores bfloat16 with a conversion Keras marks in an attribute: such a snapshot is
    written by Keras's H5IOStore and zipfile (the fallback), still from the snapshot."""
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, dtype="bfloat16"), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    record = Record()
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((32, 8)).astype("float32"), rng.standard_normal((32, 2)).astype("float32")
    calls: list = []
    real = direct.write_file
    direct.write_file = lambda path, writes: calls.append(path) or real(path, writes)
    try:
        model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[record, mk.ModelCheckpoint(str(tmp_path / "b-{epoch}.keras"))])
    finally:
        direct.write_file = real
    assert not calls  # not laid out by hand
    loaded = keras.saving.load_model(tmp_path / "b-1.keras")
    assert str(loaded.layers[0].kernel.dtype) == "bfloat16"
    _assert_epoch(loaded, record, 0)
    assert [c.status for c in mk.list_checkpoints(tmp_path)] == ["ok"]


def test_the_snapshot_reads_adam_slots_as_views_not_keras_numpy_copies() -> None:
    """Keras's optimizer hands ``variable.numpy()`` copies to the store; during modelkeep's walk it
    hands the variables (read as views, copied once into the snapshot), and is left as it was."""
    from modelkeep.formats import keras_zip

    model = _model()
    model.optimizer.build(model.trainable_variables)
    entries, sources = keras_zip._walk(model)
    optimizer_slots = [value for slot, value in sources if slot.split(":", 1)[1].startswith("optimizer/")]
    assert len(optimizer_slots) == len(model.optimizer.variables)
    assert all(a is b for a, b in zip(optimizer_slots, model.optimizer.variables))
    assert "save_own_variables" not in vars(model.optimizer)
