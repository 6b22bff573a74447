"""The fast tensor file path: safetensors written from the arrays, read by mapping, CRC-32s
computed from memory, and the benchmark command's smoke run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zlib
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file, save_file

from modelkeep.checkpoint import store
from modelkeep.errors import CorruptCheckpointError, FormatError
from modelkeep.formats import safetensors as fast
from modelkeep.formats.safetensors import SafetensorsFormat
from modelkeep.state import ModelState
from modelkeep.storage import checksums

ROOT = Path(__file__).resolve().parents[1]


def mixed_state() -> ModelState:
    rng = np.random.default_rng(0)
    return ModelState(
        {
            "model/layer_with_weights-0/kernel": rng.standard_normal((7, 5)).astype(np.float32),
            "model/layer_with_weights-0/bias": np.arange(5, dtype=np.float64),
            "model/fortran": np.asfortranarray(rng.standard_normal((3, 4))),
            "model/strided": np.arange(20, dtype=np.int32)[::2],
            "model/half": rng.standard_normal(6).astype(np.float16),
            "model/bf16": rng.standard_normal(6).astype(ml_dtypes.bfloat16),
            "model/empty": np.zeros((0, 3), np.float32),
            "model/flags": np.array([True, False, True]),
            "model/bytes": np.arange(9, dtype=np.uint8).reshape(3, 3),
            "optimizer/iteration": np.array(42, np.int64),
        },
        model_config={"class_name": "Sequential"},
        compile_config={"loss": "mse"},
        metadata={"epoch": 3},
    )


def assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert list(a) == list(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert a[key].shape == b[key].shape, key
        assert np.array_equal(a[key], b[key]), key


def test_round_trip_every_dtype_and_layout(tmp_path: Path) -> None:
    state = mixed_state()
    path = tmp_path / "w.safetensors"
    SafetensorsFormat().write(state, path)
    back = SafetensorsFormat().read(path)
    assert_same(state.variables, back.variables)
    assert (back.model_config, back.compile_config, back.metadata) == (
        state.model_config, state.compile_config, state.metadata)  # fmt: skip
    # views of the mapping are private: writing to one changes neither the file nor a new read
    back.variables["model/layer_with_weights-0/bias"][0] = 99.0
    again = SafetensorsFormat().read(path).variables["model/layer_with_weights-0/bias"]
    assert again[0] == 0.0


def test_output_is_standard_safetensors(tmp_path: Path) -> None:
    state = mixed_state()
    path = tmp_path / "w.safetensors"
    SafetensorsFormat().write(state, path)
    theirs = load_file(str(path))
    assert_same({k: theirs[k] for k in state.variables}, state.variables)
    header_len = int.from_bytes(path.read_bytes()[:8], "little")
    assert (8 + header_len) % fast.DATA_ALIGN == 0


def test_reads_files_written_by_safetensors_itself(tmp_path: Path) -> None:
    tensors = {"b": np.arange(4, dtype=np.float32), "a": np.ones((2, 3), np.int64)}
    save_file(tensors, str(tmp_path / "theirs.safetensors"))
    back = SafetensorsFormat().read(tmp_path / "theirs.safetensors")
    assert sorted(back.variables) == ["model/a", "model/b"]
    assert np.array_equal(back.variables["model/b"], tensors["b"])
    assert np.array_equal(back.variables["model/a"], tensors["a"])


def test_write_all_splits_large_and_many_buffers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fast, "_WRITE_MAX", 1000)  # force partial views across calls
    monkeypatch.setattr(fast, "_IOV_MAX", 7)
    rng = np.random.default_rng(1)
    buffers = [rng.integers(0, 255, size, dtype=np.uint8) for size in [0, 1, 2500, 3, 999, 1000, 1001] * 5]
    path = tmp_path / "out.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        fast.write_all(fd, [memoryview(b) for b in buffers])
    finally:
        os.close(fd)
    assert path.read_bytes() == b"".join(b.tobytes() for b in buffers)


def test_unsupported_dtype_is_refused_with_the_variable_named(tmp_path: Path) -> None:
    state = ModelState({"model/text": np.array(["a", "b"])})
    with pytest.raises(FormatError, match="model/text"):
        SafetensorsFormat().write(state, tmp_path / "w.safetensors")
    assert not list(tmp_path.iterdir())  # nothing left behind


@pytest.mark.parametrize(
    "damage",
    ["truncate_data", "truncate_header", "empty", "garbage_header", "gap", "bad_dtype"],
)
def test_damaged_files_raise_corrupt_checkpoint_error(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "w.safetensors"
    SafetensorsFormat().write(mixed_state(), path)
    data = bytearray(path.read_bytes())
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(bytes(data[8 : 8 + header_len]))
    if damage == "truncate_data":
        data = data[:-5]
    elif damage == "truncate_header":
        data = data[: 8 + header_len // 2]
    elif damage == "empty":
        data = bytearray()
    elif damage == "garbage_header":
        data[8:12] = b"\xff\xfe{{"
    else:
        key = "model/layer_with_weights-0/kernel"
        if damage == "gap":
            header[key]["data_offsets"][0] += 4
        else:
            header[key]["dtype"] = "Q99"
        text = json.dumps(header, separators=(",", ":")).encode().ljust(header_len)
        assert len(text) == header_len
        data[8 : 8 + header_len] = text
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError, match="w.safetensors"):
        SafetensorsFormat().read(path)


# ------------------------------------------------------------------------- checksums
@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=300), st.binary(max_size=300))
def test_crc32_combine_matches_zlib(a: bytes, b: bytes) -> None:
    assert checksums.crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_crc32_buffers_parallel_equals_zlib(monkeypatch: pytest.MonkeyPatch, threads: int) -> None:
    monkeypatch.setattr(checksums, "PARALLEL_MIN", 0)
    monkeypatch.setattr(checksums, "CHUNK", 4096)
    rng = np.random.default_rng(2)
    parts = [b"header", rng.standard_normal(5000).astype(np.float32), b"", rng.integers(0, 9, 777, dtype=np.int16)]
    joined = b"".join(bytes(memoryview(p).cast("B")) if not isinstance(p, bytes) else p for p in parts)
    assert checksums.crc32_buffers(parts, threads=threads) == zlib.crc32(joined)
    assert checksums.BackgroundCrc32(parts, threads=threads).result() == zlib.crc32(joined)


def test_file_crc32_large_file_uses_mapping_and_matches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checksums, "PARALLEL_MIN", 1024)
    data = np.random.default_rng(3).integers(0, 255, 300_001, dtype=np.uint8).tobytes()
    (tmp_path / "f").write_bytes(data)
    assert checksums.file_crc32(tmp_path / "f") == zlib.crc32(data)


def test_crc_from_the_write_is_used_only_while_the_file_is_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    fast.write_file(mixed_state(), path)
    on_disk = zlib.crc32(path.read_bytes())
    checksums.remember_crc32(path, 12345)  # a wrong value: known_crc32 trusts the record
    assert checksums.known_crc32(path) == 12345
    fast.write_file(mixed_state(), path)
    assert checksums.known_crc32(path) == on_disk  # recorded by the write, consumed once
    checksums.remember_crc32(path, 12345)
    with open(path, "ab") as handle:  # the file changed since: its record no longer applies
        handle.write(b"x")
    assert checksums.known_crc32(path) == zlib.crc32(path.read_bytes())


def test_backup_checkpoint_manifest_holds_the_true_crc(tmp_path: Path) -> None:
    state = mixed_state()
    info = store.save_state(tmp_path, state, step=7)
    manifest = json.loads((info.path / store.STORE_MANIFEST).read_text())
    entry = manifest["files"][store.STORE_STATE]
    raw = (info.path / store.STORE_STATE).read_bytes()
    assert entry == {"size": len(raw), "crc32": zlib.crc32(raw)}
    assert_same(state.variables, store.load_state(info.path).variables)
    with open(info.path / store.STORE_STATE, "r+b") as handle:  # one flipped bit is caught
        handle.seek(len(raw) - 3)
        handle.write(bytes([raw[-3] ^ 0x10]))
    with pytest.raises(CorruptCheckpointError, match=store.STORE_STATE):
        store.load_state(info.path)


# ------------------------------------------------------------------------- benchmark
def test_benchmark_smoke_run_writes_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--size-gb", "0.004", "--reps", "1",
           "--epochs", "2", "--json", str(out), "--dir", str(tmp_path)]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "targets:" in done.stdout
    figures = json.loads(out.read_text())
    assert figures["state_bytes"] > 0.9 * 0.004 * 2**30
    for key in ("write_fsync", "read", "read_assign", "copy"):
        assert figures["raw"][key]["seconds"] > 0
    assert {"zlib_crc32", "modelkeep_crc32_2_threads"} <= set(figures["raw"]["checksum"])
    expected = {
        "modelkeep backup ckpt (default)", "modelkeep safetensors", "modelkeep TF checkpoint",
        "modelkeep .weights.h5", "modelkeep .h5 (whole model)", "modelkeep .keras (whole model)",
        "modelkeep SavedModel (whole model)", "Keras save_weights(.weights.h5)+fsync / load_weights",
        "Keras model.save(.keras)+fsync / load_model", "tf.train.Checkpoint write+fsync / read",
    }  # fmt: skip
    assert set(figures["formats"]) == expected
    for name in expected:
        for op in ("save", "load"):
            assert figures["formats"][name][op]["seconds"] > 0 and figures["formats"][name][op]["gb_per_s"] > 0
    stall = figures["stall"]
    for key in ("sync_stall_per_ckpt_s", "async_stall_per_ckpt_s", "copy_floor_s", "async_final_drain_s"):
        assert stall[key] >= 0
    assert set(stall["blocked_in_callback_s"]) == {"sync", "async"}
    assert set(stall["other_designs_stall_per_ckpt_s"]) == {"async_fresh", "async_nice10", "async_cow"}
    assert figures["memory"]["async_save_extra_bytes"] >= 0 and figures["memory"]["sync_save_extra_bytes"] >= 0
    assert 0 < figures["gil"]["python_loop_speed_during_write_over_alone"]
    assert [t["target"] for t in figures["targets"]][:4] == [
        "save backup / raw write+fsync", "save backup / Keras save_weights+fsync",
        "load backup / floor (read + assign)", "load backup / Keras load_weights",
    ]  # fmt: skip
    assert all(isinstance(t["met"], bool) for t in figures["targets"])
    assert not any(p.name.startswith("modelkeep-bench-") for p in tmp_path.iterdir())  # cleaned up


# ------------------------------------------------------------------------- direct writes
def _snapshot(monkeypatch: pytest.MonkeyPatch) -> tuple[ModelState, dict[str, np.ndarray]]:
    from modelkeep.checkpoint.writer import SnapshotBuffers

    monkeypatch.setattr(fast, "DIRECT_MIN", 1)
    rng = np.random.default_rng(3)
    source = {"model/k": rng.standard_normal((33, 65)).astype(np.float32), "optimizer/iteration": np.array(9, np.int64),
              "model/b": rng.integers(0, 255, 4099, dtype=np.uint8), "model/h": rng.standard_normal(77).astype(np.float16)}  # fmt: skip
    return SnapshotBuffers().copy(ModelState(dict(source), {"cfg": 1}, None, {"epoch": 2})), source


def test_a_snapshot_is_written_with_o_direct_and_reads_back_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A SnapshotBuffers state goes to disk with O_DIRECT (data at a 4096-byte offset, file cut
    to its exact size); safetensors' own reader and ours read it bit for bit; the CRC-32
    recorded from memory is the file's."""
    state, source = _snapshot(monkeypatch)
    opened: list[int] = []
    real_open = os.open
    monkeypatch.setattr(fast.os, "open", lambda p, flags, *a: opened.append(flags) or real_open(p, flags, *a))
    path = tmp_path / "s.safetensors"
    size = fast.write_file(state, path)
    assert any(flags & os.O_DIRECT for flags in opened)
    assert path.stat().st_size == size
    assert (8 + int.from_bytes(path.read_bytes()[:8], "little")) % fast.DIRECT_ALIGN == 0
    assert checksums.known_crc32(path) == zlib.crc32(path.read_bytes())
    ours, theirs = fast.read_file(path)[0], load_file(str(path))
    for key, value in source.items():
        assert ours[key].dtype == value.dtype and np.array_equal(ours[key], value)
        assert np.array_equal(theirs[key], value)


@pytest.mark.parametrize("direct", [True, False])
def test_a_backup_never_reads_its_state_file_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, direct: bool) -> None:
    """The CRC-32 computed from memory while the file was written under its temporary name
    is still known after the rename to ``state.safetensors``: the manifest takes it without
    reading the file (a read of the file here fails the save), and it is the file's true CRC."""
    state = _snapshot(monkeypatch)[0] if direct else mixed_state()

    def no_read(path):  # noqa: ANN001, ANN202
        raise AssertionError(f"{path} was read back for its CRC-32")

    monkeypatch.setattr(checksums, "file_crc32", no_read)
    info = store.save_state(tmp_path, state, step=3)
    monkeypatch.undo()
    raw = (info.path / store.STORE_STATE).read_bytes()
    manifest = json.loads((info.path / store.STORE_MANIFEST).read_text())
    assert manifest["files"][store.STORE_STATE] == {"size": len(raw), "crc32": zlib.crc32(raw)}
    target = tmp_path / "w.safetensors"
    SafetensorsFormat().write(state, target)  # its own atomic rename: remembered under the final name
    assert checksums.is_remembered(target) and checksums.known_crc32(target) == zlib.crc32(target.read_bytes())


def test_direct_write_refused_falls_back_to_buffered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file system that refuses O_DIRECT (EINVAL, as tmpfs does) gets the ordinary writes."""
    import errno

    state, source = _snapshot(monkeypatch)
    real_open = os.open

    def refusing(path: str, flags: int, *args: object) -> int:
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(fast.os, "open", refusing)
    path = tmp_path / "s.safetensors"
    fast.write_file(state, path)
    ours = fast.read_file(path)[0]
    assert all(np.array_equal(ours[k], v) for k, v in source.items())


def test_arrays_not_in_one_buffer_are_not_written_direct() -> None:
    separate = [np.zeros(4 << 20, np.uint8), np.zeros(4 << 20, np.uint8)]
    assert fast.direct_span(separate) is None
    assert fast.direct_span([np.zeros(16 << 20, np.uint8)[1:]]) is None  # not a view of a uint8 base at an aligned start


def test_a_verified_checkpoint_changed_later_is_found_corrupt(tmp_path: Path) -> None:
    """Listing does not re-read a checkpoint it verified while its files are unchanged, but a
    bit flipped afterwards (same size) is still found."""
    info = store.save_state(tmp_path, ModelState({"model/w": np.arange(4096, dtype=np.float32)}), step=1)
    time.sleep(0.1)  # past the coarse mtime clock: the verification below is trusted later
    assert [c.status for c in store.list_checkpoints(tmp_path)] == [store.OK]
    assert store._still_verified(info.path / store.STORE_MANIFEST)
    target = info.path / store.STORE_STATE
    with open(target, "r+b") as handle:
        handle.seek(-5, os.SEEK_END)
        byte = handle.read(1)
        handle.seek(-5, os.SEEK_END)
        handle.write(bytes([byte[0] ^ 0x10]))
    assert [c.status for c in store.list_checkpoints(tmp_path)] == [store.CORRUPT]


# ------------------------------------------------------------------------- TF bundles from a snapshot
def _bundle_values(monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    from modelkeep.checkpoint.writer import SnapshotBuffers

    monkeypatch.setattr(fast, "DIRECT_MIN", 1)
    rng = np.random.default_rng(5)
    source = {"a": rng.standard_normal((300, 77)).astype(np.float32), "b": np.array(5, np.int64),
              "c": rng.integers(0, 9, 1001).astype(np.uint8), "d": rng.standard_normal(13).astype(np.float16)}  # fmt: skip
    snap = SnapshotBuffers().copy(ModelState(source), align=64).variables
    named: dict[str, object] = {f"{k}/.ATTRIBUTES/VARIABLE_VALUE": v for k, v in snap.items()}
    named["_all_variables/0/.ATTRIBUTES/VARIABLE_VALUE"] = snap["a"]  # a second key for one value (a SavedModel)
    named["_CHECKPOINTABLE_OBJECT_GRAPH"] = np.array(b"\x00graph\xff" * 99, dtype=object)
    named["_MODELKEEP_HEADER"] = np.array(json.dumps({"order": ["a"]}).encode(), dtype=object)
    return named


def test_a_tf_bundle_written_from_a_snapshot_is_read_by_tensorflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bundle modelkeep writes itself (direct I/O, its own .index) reads back through
    TensorFlow's reader, which checks every tensor's CRC-32C, bit for bit, and passes the guard."""
    import tensorflow as tf

    from modelkeep.formats import tf_bundle
    from modelkeep.storage.guard_h5 import open_tf_checkpoint

    named = _bundle_values(monkeypatch)
    prefix = tmp_path / "ckpt"
    assert tf_bundle.write_bundle_direct(prefix, named)
    reader = open_tf_checkpoint(prefix)
    assert set(reader.get_variable_to_shape_map()) == set(named)
    for key, value in named.items():
        got = reader.get_tensor(key)
        if value.dtype == object:
            assert got == value.item()
        else:
            assert got.dtype == value.dtype and got.shape == value.shape and np.array_equal(got, value)
    saved = tmp_path / "theirs"  # TensorFlow's own writer: the same tensors, the same shapes and dtypes
    tf.raw_ops.SaveV2(prefix=str(saved), tensor_names=list(named), shape_and_slices=[""] * len(named),
                      tensors=[tf.constant(v) for v in named.values()])  # fmt: skip
    theirs = tf.train.load_checkpoint(str(saved))
    assert reader.get_variable_to_dtype_map() == theirs.get_variable_to_dtype_map()
    assert reader.get_variable_to_shape_map() == theirs.get_variable_to_shape_map()


def test_a_flipped_byte_in_a_direct_tf_bundle_is_caught_by_tensorflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tensorflow as tf

    from modelkeep.formats import tf_bundle

    named = _bundle_values(monkeypatch)
    prefix = tmp_path / "ckpt"
    assert tf_bundle.write_bundle_direct(prefix, named)
    data = Path(str(prefix) + tf_bundle.DATA_SUFFIX)
    with open(data, "r+b") as handle:  # byte 10 of the snapshot region: inside the first array, 'a'
        handle.seek(fast.DIRECT_ALIGN + 10)
        byte = handle.read(1)
        handle.seek(fast.DIRECT_ALIGN + 10)
        handle.write(bytes([byte[0] ^ 1]))
    reader = tf.train.load_checkpoint(str(prefix))
    damaged = [k for k in named if not _reads(reader, k)]
    # its CRC-32C is checked; the second key of that array names the same bytes (stored once), so it fails too
    assert damaged == ["a/.ATTRIBUTES/VARIABLE_VALUE", "_all_variables/0/.ATTRIBUTES/VARIABLE_VALUE"], damaged
    assert data.stat().st_size < 2 * named["a/.ATTRIBUTES/VARIABLE_VALUE"].nbytes  # one copy of 'a', not two


def _reads(reader: object, key: str) -> bool:
    import tensorflow as tf

    try:
        reader.get_tensor(key)
    except (tf.errors.OpError, ValueError):
        return False
    return True


def test_values_outside_one_snapshot_buffer_go_to_saveV2(tmp_path: Path) -> None:  # noqa: N802
    from modelkeep.formats import tf_bundle

    assert not tf_bundle.write_bundle_direct(tmp_path / "x", {"a": np.zeros(16 << 20, np.float32)})
    assert not list(tmp_path.iterdir())


def test_file_crc32_with_direct_reads_matches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A thread that prefers direct reads gets the same CRC-32 (files of any length, not only
    whole blocks); other threads are unaffected."""
    import threading

    monkeypatch.setattr(checksums, "DIRECT_READ_MIN", 1)
    monkeypatch.setattr(checksums, "_DIRECT_CHUNK", 1 << 16)
    data = np.random.default_rng(8).integers(0, 255, (1 << 18) + 777, dtype=np.uint8).tobytes()
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    calls: list[str] = []
    real = checksums._direct_crc32
    monkeypatch.setattr(checksums, "_direct_crc32", lambda p: calls.append(str(p)) or real(p))
    found: dict[str, int] = {}

    def run() -> None:
        checksums.prefer_direct_reads()
        found["direct"] = checksums.file_crc32(path)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join()
    assert calls == [str(path)] and found["direct"] == zlib.crc32(data)
    assert checksums.file_crc32(path) == zlib.crc32(data) and len(calls) == 1  # this thread: cached reads


# ------------------------------------------------------------------------- no read-back after a save
@pytest.mark.parametrize(
    ("template", "weights_only"),
    [("w-{epoch}", True), ("w-{epoch}.safetensors", True), ("m-{epoch}.keras", False), ("m-{epoch}", False)],
    ids=["tf-checkpoint", "safetensors", "keras", "savedmodel"],
)
def test_an_async_checkpoint_is_never_read_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, template: str, weights_only: bool
) -> None:
    """Every large file of an async checkpoint is checksummed from the memory it was written
    from: committing it, and the retention listing after it, read none of them back. The
    manifest holds each file's true CRC-32, and a byte changed later is still found."""
    import keras

    import modelkeep as mk

    monkeypatch.setattr(fast, "DIRECT_MIN", 1)
    real_crc = checksums.file_crc32
    read_back: list[str] = []

    def recording(path):  # noqa: ANN001, ANN202
        if os.path.getsize(path) >= 64 << 10:  # small files (a SavedModel's graph) are read for theirs
            read_back.append(str(path))
        return real_crc(path)

    monkeypatch.setattr(checksums, "file_crc32", recording)
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(512), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    x, y = np.ones((16, 64), np.float32), np.ones((16, 1), np.float32)
    callback = mk.ModelCheckpoint(str(tmp_path / template), save_weights_only=weights_only, max_to_keep=2)
    model.fit(x, y, epochs=3, batch_size=8, verbose=0, callbacks=[callback])
    assert read_back == []
    monkeypatch.undo()
    infos = store.list_checkpoints(tmp_path, verify=False)
    assert len(infos) == 2
    for info in infos:
        manifest = json.loads(store.manifest_path(info.path).read_text())
        for name, entry in manifest["files"].items():
            assert entry["crc32"] == zlib.crc32((tmp_path / name).read_bytes()), name
    newest = max(infos, key=lambda i: i.epoch)
    largest = max((tmp_path / n for n in json.loads(store.manifest_path(newest.path).read_text())["files"]),
                  key=lambda p: p.stat().st_size)  # fmt: skip
    time.sleep(0.1)
    with open(largest, "r+b") as handle:  # same size, same inode: only the bytes change
        handle.seek(largest.stat().st_size // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0x01]))
    status = {i.epoch: i.status for i in store.list_checkpoints(tmp_path)}
    assert status[newest.epoch] == store.CORRUPT
