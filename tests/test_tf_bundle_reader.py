"""TF checkpoints read without TensorFlow (``formats/tf_bundle_reader.py``): the same keys,
dtypes, shapes and bytes as ``tf.train.load_checkpoint``, the same ``inspect``/``verify``/``diff``
answers as the TensorFlow path, and clean errors (never a crash, never a read past a file's end)
on damaged or hostile bundles the tests make themselves."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import crc32c
import keras
import numpy as np
import pytest
import tensorflow as tf

import modelkeep as mk
from modelkeep.errors import CheckpointNotFoundError, CorruptCheckpointError, UnsafeFileError
from modelkeep.formats import tf_bundle, tf_bundle_reader
from modelkeep.formats.tf_bundle_reader import open_bundle
from modelkeep.storage import guard
from modelkeep.storage.tf_protos import message, parse
from modelkeep.tools import verify
from modelkeep.tools.diff import diff_paths
from modelkeep.tools.inspect import describe
from modelkeep.tools.light import describe_light, diff_light
from test_inspect_light import _probe

FIXTURES = Path(__file__).parent / "fixtures" / "tfkeras"
LEGACY = [FIXTURES / name / "ckpt" for name in ("tutorial", "embed_bigru_mask", "legacy_adam")]


# ------------------------------------------------------------------ helpers
def same_as_tensorflow(prefix: Path) -> None:
    """Keys, dtypes, shapes and every value as TensorFlow's reader gives them (bytes compared)."""
    ours, theirs = open_bundle(prefix), tf.train.load_checkpoint(str(prefix))
    assert ours is not None, prefix
    assert ours.get_variable_to_shape_map() == theirs.get_variable_to_shape_map()
    assert ours.get_variable_to_dtype_map() == {k: v.name for k, v in theirs.get_variable_to_dtype_map().items()}
    for key in theirs.get_variable_to_shape_map():
        want, got = theirs.get_tensor(key), ours.get_tensor(key)
        if isinstance(want, bytes):
            assert isinstance(got, bytes) and got == want, key
        elif want.dtype == object:
            assert got.dtype == object and got.shape == want.shape and got.tolist() == want.tolist(), key
        else:
            assert (got.dtype, got.shape) == (want.dtype, want.shape), key
            assert got.tobytes() == want.tobytes() and np.array_equal(got, want, equal_nan=True), key


def tf_check(prefix: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """``verify``'s check through TensorFlow (the light reader switched off)."""
    with monkeypatch.context() as patch:
        patch.setattr(tf_bundle_reader, "check", lambda prefix: None)
        return verify.check_tf_checkpoint(prefix)


def write_bundle(prefix: Path, tensors: dict[str, tuple], *, shards: int = 1,
                 shard_of=lambda i: 0, entry_edit=None, header_edit=None) -> None:
    """A bundle made here: ``{key: (dtype enum, shape, raw bytes)}`` through TensorFlow's
    index layout (``tf_bundle._table``), each tensor in shard ``shard_of(i)``; ``entry_edit(key,
    entry)`` / ``header_edit(header)`` change the protos before they are written (hostile files)."""
    header = message("BundleHeaderProto")
    header.num_shards, header.version.producer = shards, 1
    if header_edit:
        header_edit(header)
    rows = [(b"", header.SerializeToString())]
    data = [bytearray() for _ in range(shards)]
    for i, key in enumerate(sorted(tensors, key=str.encode)):
        dtype, shape, raw, *crc = tensors[key]  # a string tensor's CRC-32C is not of its raw bytes: given
        entry = message("BundleEntryProto")
        entry.dtype, entry.shard_id = dtype, shard_of(i)
        entry.offset, entry.size = len(data[entry.shard_id]), len(raw)
        entry.crc32c = tf_bundle.mask(crc[0] if crc else crc32c.crc32c(raw))
        for n in shape:
            entry.shape.dim.add(size=n)
        data[entry.shard_id] += raw
        if entry_edit:
            entry_edit(key, entry)
        rows.append((key.encode(), entry.SerializeToString()))
    for n, blob in enumerate(data):
        Path(f"{prefix}.data-{n:05d}-of-{shards:05d}").write_bytes(bytes(blob))
    Path(f"{prefix}.index").write_bytes(tf_bundle._table(rows))


def _numeric(array: np.ndarray, code: int) -> tuple[int, tuple[int, ...], bytes]:
    return code, array.shape, array.tobytes()


def _small_model() -> keras.Model:
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, activation="relu"), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    return model


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tutorial's run directory: ``mk.ModelCheckpoint("run/ckpt-{epoch:02d}", save_weights_only=True)``,
    plus ``mk.save_weights(model, "run_w/weights")`` (optimizer state included)."""
    base = tmp_path_factory.mktemp("tfb")
    rng = np.random.default_rng(0)
    x, y = rng.random((40, 6), dtype=np.float32), rng.random((40, 1), dtype=np.float32)
    model = _small_model()
    model.fit(x, y, epochs=2, batch_size=10, validation_split=0.25, verbose=0,
              callbacks=[mk.ModelCheckpoint(str(base / "run" / "ckpt-{epoch:02d}"), save_weights_only=True)])
    mk.save_weights(model, base / "run_w" / "weights")
    return base


# ------------------------------------------------------------------ round trips against TensorFlow's reader
def test_modelkeep_and_tfkeras_checkpoints_read_as_tensorflow_reads_them(run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """mk.ModelCheckpoint / mk.save_weights checkpoints and tf-keras's own (fixtures): tensors,
    and what inspect, verify and diff say, are TensorFlow's."""
    prefixes = [run / "run" / "ckpt-01", run / "run" / "ckpt-02", run / "run_w" / "weights", *LEGACY]
    for prefix in prefixes:
        same_as_tensorflow(prefix)
        assert describe_light(prefix) == describe(prefix), prefix
        assert verify.check_tf_checkpoint(prefix) == tf_check(prefix, monkeypatch)
    assert tf_bundle_reader.read_state(LEGACY[2]).group("optimizer")  # tf-keras Adam: its state, named as the TF path names it
    for a, b in ((prefixes[0], prefixes[1]), (prefixes[1], prefixes[2]), (LEGACY[0], LEGACY[0])):
        assert diff_light(a, b).as_dict() == diff_paths(a, b).as_dict()


def test_other_models_in_tf_checkpoints(tmp_path: Path) -> None:
    """A Conv/BatchNorm Sequential (summary from the config) and a Functional model (summary through
    Keras, as the TF path does), and a TF checkpoint compared with a .keras file."""
    from test_inspect_light import _conv, _trained

    conv = _trained(_conv, keras.optimizers.SGD(momentum=0.9))
    inputs = keras.Input((4,), name="features")
    functional = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Dense(3)(inputs)))
    for model, name in ((conv, "conv"), (functional, "functional")):
        mk.save_weights(model, tmp_path / name)
        same_as_tensorflow(tmp_path / name)
        assert describe_light(tmp_path / name) == describe(tmp_path / name), name
    mk.save_model(conv, tmp_path / "conv.keras")
    assert diff_light(tmp_path / "conv", tmp_path / "conv.keras").as_dict() == diff_paths(tmp_path / "conv", tmp_path / "conv.keras").as_dict()


def test_every_dtype_tensorflow_writes_and_scalars(tmp_path: Path) -> None:
    """Numbers of every plain dtype (bfloat16 too), scalars, empty tensors, strings of any bytes."""
    rng = np.random.default_rng(1)
    values = {
        "f32": rng.standard_normal((3, 4)).astype(np.float32), "f16": rng.standard_normal(5).astype(np.float16),
        "f64": np.array([np.nan, -0.0, np.inf]), "i64": np.array(-(2**62), np.int64), "i32": np.arange(7, dtype=np.int32),
        "i16": np.array([-3, 3], np.int16), "i8": np.array([-128, 127], np.int8), "u8": np.arange(256, dtype=np.uint8),
        "u16": np.array([65535], np.uint16), "u32": np.array(7, np.uint32), "u64": np.array([2**64 - 1], np.uint64),
        "bool": np.array([True, False, True]), "bool0": np.array(True), "c64": np.array([1 + 2j], np.complex64),
        "c128": np.array([[3 - 1j]]), "empty": np.zeros((0, 3), np.float32),
    }  # fmt: skip
    tensors = {k: tf.constant(v) for k, v in values.items()}
    tensors["bf16"] = tf.constant([1.5, -2.25, 3e38], tf.bfloat16)
    tensors["str0"] = tf.constant(b"one string")
    tensors["strs"] = tf.constant([[b"a", b""], [b"\xff\x00 not utf-8", b"x" * 300]])
    prefix = tmp_path / "dtypes"
    tf.raw_ops.SaveV2(prefix=str(prefix), tensor_names=list(tensors), shape_and_slices=[""] * len(tensors),
                      tensors=list(tensors.values()))  # fmt: skip
    same_as_tensorflow(prefix)
    bundle = open_bundle(prefix)
    assert bundle.get_tensor("bf16").dtype.name == "bfloat16" and bundle.get_tensor("i64").shape == ()
    assert bundle.get_tensor("u8").flags.writeable  # a copy of the file's bytes, not a read-only view


def test_bundles_written_by_modelkeep_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """formats/tf_bundle.py's own writer (snapshot buffer, direct I/O, its own index) and a bundle in
    three shards made here: read as TensorFlow reads them."""
    from modelkeep.checkpoint.writer import SnapshotBuffers
    from modelkeep.formats import safetensors as fast
    from modelkeep.state import ModelState

    monkeypatch.setattr(fast, "DIRECT_MIN", 1)
    rng = np.random.default_rng(5)
    source = {"a": rng.standard_normal((30, 7)).astype(np.float32), "b": np.array(5, np.int64),
              "c": rng.integers(0, 9, 101).astype(np.uint8), "d": rng.standard_normal(13).astype(np.float16)}  # fmt: skip
    named: dict[str, object] = {f"{k}/.ATTRIBUTES/VARIABLE_VALUE": v for k, v in SnapshotBuffers().copy(ModelState(source), align=64).variables.items()}
    named["_all_variables/0/.ATTRIBUTES/VARIABLE_VALUE"] = named["a/.ATTRIBUTES/VARIABLE_VALUE"]
    named["_MODELKEEP_HEADER"] = np.array(json.dumps({"order": ["a"]}).encode(), dtype=object)
    prefix = tmp_path / "direct"
    if not tf_bundle.write_bundle_direct(prefix, named):
        pytest.skip("this file system refuses O_DIRECT writes: tf_bundle's direct writer does not run here")
    same_as_tensorflow(prefix)
    sharded = tmp_path / "sharded"
    write_bundle(sharded, {k: _numeric(v, code) for (k, v), code in zip(source.items(), (1, 9, 4, 19))},
                 shards=3, shard_of=lambda i: i % 3)
    same_as_tensorflow(sharded)
    assert len(open_bundle(sharded).shards) == 3


def test_layouts_it_does_not_know_go_to_tensorflow(tmp_path: Path) -> None:
    """Sliced (partitioned) variables, a big-endian or newer bundle, a resource dtype, a block
    compressed other than with snappy: None, and ``inspect`` says what the TensorFlow path says."""
    sliced = tmp_path / "sliced"
    tf.raw_ops.SaveV2(prefix=str(sliced), tensor_names=["x"], shape_and_slices=["4 0,2"], tensors=[tf.constant([1.0, 2.0])])
    assert open_bundle(sliced) is None
    plain = {"x": _numeric(np.arange(3, dtype=np.float32), 1)}
    cases = {
        "big": {"header_edit": lambda h: setattr(h, "endianness", 1)},
        "newer": {"header_edit": lambda h: setattr(h.version, "min_consumer", 2)},
        "resource": {"entry_edit": lambda k, e: setattr(e, "dtype", 20)},
    }
    for name, edits in cases.items():
        write_bundle(tmp_path / name, plain, **edits)
        assert open_bundle(tmp_path / name) is None, name
    write_bundle(tmp_path / "zstd", plain)
    index = tmp_path / "zstd.index"
    data = bytearray(index.read_bytes())  # the first data block's trailer: type 7 (not snappy), its CRC made to match
    offset, size = _first_data_block(index, bytes(data))
    data[offset + size] = 7
    struct.pack_into("<I", data, offset + size + 1, tf_bundle.mask(crc32c.crc32c(bytes(data[offset : offset + size + 1]))))
    index.write_bytes(bytes(data))
    assert open_bundle(tmp_path / "zstd") is None
    with pytest.raises(Exception) as tf_way:  # noqa: PT011 - the TF path's own error, whatever it is
        describe(sliced)
    with pytest.raises(type(tf_way.value)):
        describe_light(sliced)  # not read here: the TF path's answer


def _first_data_block(index: Path, data: bytes) -> tuple[int, int]:
    reader = tf_bundle_reader
    _, _, pos = reader._block_handle(data, len(data) - 48, len(data) - 8, index, "footer")
    offset, size, _ = reader._block_handle(data, pos, len(data) - 8, index, "footer")
    rows = reader._block_rows(memoryview(data)[offset : offset + size], index, "index block")
    first, first_size, _ = reader._block_handle(rows[0][1], 0, len(rows[0][1]), index, "index block")
    return first, first_size


def _snappy(raw: bytes) -> bytes:
    """A raw snappy encoding made here (greedy matches: 1- and 2-byte-offset copies, literals)."""
    out, pos, literal = bytearray(tf_bundle._varint(len(raw))), 0, bytearray()

    def flush() -> None:
        while literal:
            chunk = literal[:200]
            del literal[:200]
            out.extend(bytes([(len(chunk) - 1) << 2]) if len(chunk) <= 60 else bytes([60 << 2, len(chunk) - 1]))
            out.extend(chunk)

    while pos < len(raw):
        best = (0, 0)
        for start in range(max(0, pos - 2000), pos):
            n = 0
            while n < 64 and pos + n < len(raw) and raw[start + n] == raw[pos + n]:
                n += 1  # may run into what it copies: overlapping copies are snappy's
            best = max(best, (n, pos - start))
        length, back = best
        if length < 4:
            literal.append(raw[pos])
            pos += 1
            continue
        flush()
        if length <= 11 and back < 2048:
            out += bytes([((back >> 8) << 5) | ((length - 4) << 2) | 1, back & 0xFF])
        else:
            out += bytes([((length - 1) << 2) | 2]) + struct.pack("<H", back)
        pos += length
    flush()
    return bytes(out)


def _snappy_table(rows: list[tuple[bytes, bytes]], block: bytes | None = None) -> bytes:
    """TensorFlow 1.x's index layout: one snappy-compressed data block (``block``: its compressed
    bytes as given), an uncompressed index block."""
    block = _snappy(tf_bundle._block(rows, 16)) if block is None else block
    out = bytearray(block) + b"\x01" + struct.pack("<I", tf_bundle.mask(crc32c.crc32c(block + b"\x01")))
    index_block = tf_bundle._block([(rows[-1][0], tf_bundle._varint(0) + tf_bundle._varint(len(block)))], 1)
    handle = tf_bundle._varint(len(out)) + tf_bundle._varint(len(index_block))
    out += index_block + b"\x00" + struct.pack("<I", tf_bundle.mask(crc32c.crc32c(index_block + b"\x00")))
    return bytes(out + (handle + handle).ljust(40, b"\x00") + struct.pack("<Q", tf_bundle._MAGIC))


def test_snappy_compressed_indexes_of_tensorflow_1(tmp_path: Path) -> None:
    """TF 1.x compressed its index blocks with snappy: decompressed here, read as TensorFlow reads
    them; a snappy block that lies (size, back-reference, literal) is a named error."""
    prefix = tmp_path / "tf1"
    write_bundle(prefix, {f"layer_{i}/kernel": _numeric(np.full(3, i, np.float32), 1) for i in range(40)})
    rows = [(key, bytes(value)) for key, value in tf_bundle_reader.read_table(prefix, Path(f"{prefix}.index").read_bytes())]
    packed = _snappy_table(rows)
    assert len(packed) < len(Path(f"{prefix}.index").read_bytes())  # the copies did compress it
    Path(f"{prefix}.index").write_bytes(packed)
    same_as_tensorflow(prefix)
    block = tf_bundle._block(rows[:2], 16)
    for name, lie, found in (
        ("size", tf_bundle._varint(10**6) + _snappy(block)[3:], "declares 1000000 bytes"),
        ("back", tf_bundle._varint(len(block)) + b"\x00a" + b"\x05\x09", "reaches outside what is decompressed"),
        ("literal", tf_bundle._varint(len(block)) + bytes([59 << 2]) + b"abc", "literal of the snappy data block runs past"),
    ):
        Path(f"{tmp_path / name}.index").write_bytes(_snappy_table(rows[:2], lie))
        Path(f"{tmp_path / name}.data-00000-of-00001").write_bytes(b"")
        with pytest.raises(CorruptCheckpointError, match=found):
            open_bundle(tmp_path / name)


def test_real_tf_checkpoints_of_shared_files() -> None:
    """Every TF checkpoint among the real files of ``../shared`` (TF 1.x and 2.x, Keras and TF Serving's)."""
    shared = Path(__file__).resolve().parents[2] / "shared"
    prefixes = sorted(p.with_suffix("") for p in shared.rglob("*.index")) if shared.is_dir() else []
    if not prefixes:
        pytest.skip(f"{shared} holds no TF checkpoint (the real files are not on this machine)")
    for prefix in prefixes:
        same_as_tensorflow(prefix)


# ------------------------------------------------------------------ hostile and damaged bundles
def _good(tmp_path: Path) -> Path:
    prefix = tmp_path / "good"
    write_bundle(prefix, {"w": _numeric(np.arange(64, dtype=np.float32), 1), "z": _numeric(np.arange(8, dtype=np.int64), 9)})
    same_as_tensorflow(prefix)
    return prefix


def test_truncated_index(tmp_path: Path) -> None:
    prefix = _good(tmp_path)
    index = Path(f"{prefix}.index")
    whole = index.read_bytes()
    for length in (0, 10, 47, len(whole) // 2, len(whole) - 1):
        index.write_bytes(whole[:length])
        with pytest.raises(CorruptCheckpointError, match=r"good\.index"):
            open_bundle(prefix)
        with pytest.raises(tf.errors.OpError):  # TensorFlow refuses it too
            tf.train.load_checkpoint(str(prefix))
    index.write_bytes(whole[:20] + bytes([whole[20] ^ 0x40]) + whole[21:])  # a flipped bit in a block: its CRC-32C
    with pytest.raises(CorruptCheckpointError, match=r"good\.index.*CRC-32C"):
        open_bundle(prefix)


def test_offsets_and_sizes_past_the_data_end_are_refused_before_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tf_bundle_reader.Bundle, "_read", lambda self, entry: pytest.fail("read before the checks"))
    raw = {"w": _numeric(np.arange(64, dtype=np.float32), 1)}
    edits = {
        "offset": (lambda k, e: setattr(e, "offset", 250), r"bytes 250\.\.506 of data shard 0, which has 256 bytes"),
        "size": (lambda k, e: setattr(e, "size", 2**62), r"which has 256 bytes"),  # a huge size in a varint
        "shape": (lambda k, e: e.shape.dim.add(size=2**40), r"needs \d+ bytes but its entry says 256"),
        "negative": (lambda k, e: setattr(e, "offset", -1), "negative"),
        "shard": (lambda k, e: setattr(e, "shard_id", 3), "shard 3 of a bundle of 1"),
    }
    for name, (edit, message_re) in edits.items():
        write_bundle(tmp_path / name, raw, entry_edit=edit)
        with pytest.raises(CorruptCheckpointError, match=message_re) as caught:
            open_bundle(tmp_path / name)
        assert f"{name}.index" in str(caught.value) and "'w'" in str(caught.value), name


def test_huge_varints_in_the_table(tmp_path: Path) -> None:
    """A row whose key length is an 11-byte varint, a block handle over 64 bits: named, not a crash."""
    prefix = tmp_path / "varint"
    header = message("BundleHeaderProto")
    header.num_shards = 1
    good = tf_bundle._block([(b"", header.SerializeToString())], 16)
    bad = b"\x00" + b"\xff" * 10 + b"\x01" + good[len(good) - 8 :]  # shared 0, then a never-ending varint
    _raw_table(prefix, bad)
    with pytest.raises(CorruptCheckpointError, match="varint of the data block"):
        open_bundle(prefix)
    footer = bytearray(Path(f"{prefix}.index").read_bytes())
    footer[-48:-8] = (b"\xff" * 12).ljust(40, b"\x00")
    Path(f"{prefix}.index").write_bytes(bytes(footer))
    with pytest.raises(CorruptCheckpointError, match="varint of the table footer"):
        open_bundle(prefix)


def _raw_table(prefix: Path, block: bytes) -> None:
    """An index of one data block of raw bytes (its CRC-32C made to match), and an empty .data."""
    out = bytearray(block) + b"\x00" + struct.pack("<I", tf_bundle.mask(crc32c.crc32c(block + b"\x00")))
    index_block = tf_bundle._block([(b"\xff", tf_bundle._varint(0) + tf_bundle._varint(len(block)))], 1)
    handle = tf_bundle._varint(len(out)) + tf_bundle._varint(len(index_block))
    out += index_block + b"\x00" + struct.pack("<I", tf_bundle.mask(crc32c.crc32c(index_block + b"\x00")))
    out += (handle + handle).ljust(40, b"\x00") + struct.pack("<Q", tf_bundle._MAGIC)
    Path(f"{prefix}.index").write_bytes(bytes(out))
    Path(f"{prefix}.data-00000-of-00001").write_bytes(b"")


def test_keys_that_expand_and_dimensions_too_large(tmp_path: Path) -> None:
    """Prefix compression lets a few KB of index name keys of GBs (each row repeats the last key and
    adds a byte): refused at the cap. A shape whose elements overflow: named, nothing allocated."""
    rows, length = bytearray(), 0
    for _ in range(3000):
        rows += tf_bundle._varint(length) + b"\x01\x00" + b"k"
        length += 1
    _raw_table(tmp_path / "keys", bytes(rows) + struct.pack("<II", 0, 1))
    with pytest.raises(UnsafeFileError, match="tf-key-expansion"):
        open_bundle(tmp_path / "keys")
    write_bundle(tmp_path / "dims", {"w": (1, (0, 2**40, 2**40), b"")})
    with pytest.raises(CorruptCheckpointError, match="more elements than any file holds"):
        open_bundle(tmp_path / "dims")


def test_a_flipped_byte_in_the_data_names_the_tensor(tmp_path: Path) -> None:
    prefix = _good(tmp_path)
    data = Path(f"{prefix}.data-00000-of-00001")
    blob = bytearray(data.read_bytes())
    blob[300] ^= 1  # inside 'z' (after w's 256 bytes)
    data.write_bytes(bytes(blob))
    bundle = open_bundle(prefix)
    assert np.array_equal(bundle.get_tensor("w"), np.arange(64, dtype=np.float32))
    with pytest.raises(CorruptCheckpointError, match=r"tensor 'z' fails its CRC-32C check"):
        bundle.get_tensor("z")
    with pytest.raises(tf.errors.OpError, match="Checksum does not match"):  # the same tensor, for TensorFlow
        tf.train.load_checkpoint(str(prefix)).get_tensor("z")
    result = verify.verify_one(prefix)
    assert not result.ok and "tensor 'z'" in result.problem, result.problem


def test_strings_that_do_not_add_up(tmp_path: Path) -> None:
    body, crc = tf_bundle.encode_string_tensor([b"abc", b"de"])
    write_bundle(tmp_path / "s", {"s": (7, (2,), body, crc)})
    same_as_tensorflow(tmp_path / "s")
    assert open_bundle(tmp_path / "s").get_tensor("s").tolist() == [b"abc", b"de"]
    write_bundle(tmp_path / "long", {"s": (7, (2,), b"\x05\x09" + body[2:])})  # lengths over the bytes there
    with pytest.raises(CorruptCheckpointError, match="string tensor 's' declares 14 bytes"):
        open_bundle(tmp_path / "long").get_tensor("s")
    write_bundle(tmp_path / "many", {"s": (7, (10**9,), body)})  # more elements than bytes
    with pytest.raises(CorruptCheckpointError, match="1000000000 elements"):
        open_bundle(tmp_path / "many")


def test_missing_shards_and_escaping_files(tmp_path: Path) -> None:
    prefix = tmp_path / "three"
    write_bundle(prefix, {k: _numeric(np.arange(4.0), 2) for k in "abc"}, shards=3, shard_of=lambda i: i)
    Path(f"{prefix}.data-00001-of-00003").unlink()
    with pytest.raises(CheckpointNotFoundError, match=r"data-00001-of-00003 is missing"):
        open_bundle(prefix)
    with pytest.raises(CheckpointNotFoundError, match="missing"):
        tf_bundle_reader.read_state(prefix)  # through the format's own completeness check
    (tmp_path / "inside").mkdir()
    prefix = _good(tmp_path / "inside")
    Path(f"{prefix}.data-00000-of-00001").unlink()
    with pytest.raises(CheckpointNotFoundError):
        tf_bundle_reader.check(prefix)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.data-00000-of-00001").write_bytes(b"\x00" * 320)
    os.symlink(outside / "x.data-00000-of-00001", f"{prefix}.data-00000-of-00001")
    with pytest.raises(UnsafeFileError, match="outside"):
        open_bundle(prefix)


def test_an_entry_that_does_not_parse_is_an_error_not_an_abort(tmp_path: Path) -> None:
    """TensorFlow's CheckpointReader aborts the process (``Check failed: entry.ParseFromString``) on
    such an index; the guard parses every entry first and raises."""
    header = message("BundleHeaderProto")
    header.num_shards = 1
    prefix = tmp_path / "abort"
    Path(f"{prefix}.index").write_bytes(tf_bundle._table([(b"", header.SerializeToString()), (b"w", b"\x0f")]))
    Path(f"{prefix}.data-00000-of-00001").write_bytes(b"\x00" * 8)
    with pytest.raises(CorruptCheckpointError, match=r"abort\.index: the entry of tensor 'w' does not parse"):
        guard.open_tf_checkpoint(prefix)
    result = verify.verify_one(prefix)
    assert not result.ok and "does not parse" in result.problem


# ------------------------------------------------------------------ the protobufs and the state file
def test_object_graphs_parse_as_tensorflows_own_message() -> None:
    from google.protobuf import text_format
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import trackable_object_graph_pb2

    for prefix in LEGACY:
        raw = tf.train.load_checkpoint(str(prefix)).get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH")
        theirs = trackable_object_graph_pb2.TrackableObjectGraph.FromString(raw)
        assert text_format.MessageToString(parse("TrackableObjectGraph", raw)) == text_format.MessageToString(theirs)
    for broken in (b"\x0a\x05\x0a\x03", b"\x0a\x02\x12\x01\xff", b"\x0f"):  # truncated, bad UTF-8 in a name, bad wire type
        with pytest.raises(DecodeError):
            trackable_object_graph_pb2.TrackableObjectGraph.FromString(broken)
        with pytest.raises(DecodeError):
            parse("TrackableObjectGraph", broken)


def test_state_files_read_as_tensorflow_reads_them(run: Path, tmp_path: Path) -> None:
    texts = {
        "relative": None,  # the one mk.ModelCheckpoint wrote
        "absolute": 'model_checkpoint_path: "/abs/ckpt-2"\nall_model_checkpoint_paths: "/abs/ckpt-1"\n'
                    'all_model_checkpoint_paths: "ckpt-2"\nall_model_checkpoint_timestamps: 1.5e9\nlast_preserved_timestamp: 2.25\n',
        "escapes": 'model_checkpoint_path: "ck\\"pt \\303\\251"\n',
        "unknown": 'model_checkpoint_path: "ckpt-1"\nunknown_field: 3\n',
        "garbage": "this is { not a state file",
        "empty_path": 'all_model_checkpoint_paths: "ckpt-1"\n',
    }
    for name, text in texts.items():
        directory = run / "run" if text is None else tmp_path / name
        if text is not None:
            directory.mkdir()
            (directory / "checkpoint").write_text(text)
        try:
            want = tf.train.get_checkpoint_state(str(directory))
        except ValueError:
            with pytest.raises(CorruptCheckpointError, match="Invalid checkpoint state"):
                guard.read_state_file(directory)
            continue
        got = guard.read_state_file(directory)
        if want is None:
            assert got is None, name
            continue
        assert got.model_checkpoint_path == want.model_checkpoint_path, name
        assert list(got.all_model_checkpoint_paths) == list(want.all_model_checkpoint_paths), name
        assert list(got.all_model_checkpoint_timestamps) == list(want.all_model_checkpoint_timestamps), name
        assert got.last_preserved_timestamp == want.last_preserved_timestamp, name


# ------------------------------------------------------------------ the command line
def test_cli_on_a_run_directory_imports_no_tensorflow(run: Path) -> None:
    """`inspect run/ckpt-02`, `verify run`, `diff`: no TensorFlow, no Keras, TensorFlow's answers."""
    done = _probe(["inspect", "run/ckpt-02", "--json"], run)
    assert done.returncode == 0 and "imported: []" in done.stderr, done.stderr
    assert json.loads(done.stdout) == json.loads(json.dumps(describe(run / "run" / "ckpt-02"), default=str)) | {"path": "run/ckpt-02"}
    done = _probe(["verify", "run", "run_w/weights", "--json"], run)
    assert done.returncode == 0 and "imported: []" in done.stderr, done.stderr
    results = json.loads(done.stdout)["results"]
    assert [r["ok"] for r in results] == [True] * 4 and results[-1]["checks"][-1].startswith("TF checkpoint: ")
    done = _probe(["diff", "run/ckpt-01", "run/ckpt-02", "--json"], run)
    assert done.returncode == 0 and "imported: []" in done.stderr, done.stderr
    assert json.loads(done.stdout)["counts"]["changed"] == 4
    bare = run / "bare"  # no manifest: the bundle's own CRC-32C finds the flipped bit
    bare.mkdir()
    for name in ("ckpt-02.index", "ckpt-02.data-00000-of-00001"):
        (bare / name).write_bytes((run / "run" / name).read_bytes())
    data = bare / "ckpt-02.data-00000-of-00001"
    blob = bytearray(data.read_bytes())
    blob[-1] ^= 1
    data.write_bytes(bytes(blob))
    done = _probe(["verify", "bare/ckpt-02", "--json"], run)
    assert done.returncode == 1 and "imported: []" in done.stderr, done.stderr
    problem = json.loads(done.stdout)["results"][0]["problem"]
    assert "ckpt-02.data-00000-of-00001: tensor '" in problem and "fails its CRC-32C check" in problem, problem


# ------------------------------------------------------------------ fuzzed: the same verdict as TensorFlow
def _verdict(call, prefix: Path) -> str:
    """'ok: <line>', 'error' (a ModelkeepError or TensorFlow's own), or 'none' (left to TensorFlow)."""
    from modelkeep.errors import ModelkeepError

    try:
        out = call(prefix)
    except (ModelkeepError, tf.errors.OpError):
        return "error"
    return "none" if out is None else f"ok: {out}"


@pytest.mark.parametrize("examples", [40, pytest.param(400, marks=pytest.mark.slow)])
def test_fuzzed_bundles_get_tensorflows_verdict(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, examples: int) -> None:
    """A real checkpoint changed at random (raw bytes of its .index and .data, or the bytes of the
    index's rows with every block CRC made to match): the light check raises only modelkeep's
    errors, and where it says "intact" (or leaves the file to TensorFlow) TensorFlow's check, behind
    the guard, says the same. (Unguarded, TensorFlow aborts the process on some of these inputs.)"""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    good = tmp_path / "good"
    mk.save_weights(_small_model(), good)
    files = {suffix: Path(f"{good}{suffix}").read_bytes() for suffix in (".index", ".data-00000-of-00001")}
    rows = [(key, bytes(value)) for key, value in tf_bundle_reader.read_table(good, files[".index"])]
    edits = st.lists(st.tuples(st.sampled_from([".index", ".data-00000-of-00001", "row"]), st.integers(0, 1 << 16),
                               st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1, max_size=4)  # fmt: skip

    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(edits, st.integers(0, 3) | st.integers(0, 300))
    def body(changes, cut):
        blobs = {k: bytearray(v) for k, v in files.items()}
        table = [(key, bytearray(value)) for key, value in rows]
        for where, row, position, byte in changes:
            target = table[row % len(table)][1] if where == "row" else blobs[where]
            if target:
                target[position % len(target)] = byte
        if any(where == "row" for where, *_ in changes):
            blobs[".index"] = bytearray(tf_bundle._table([(k, bytes(v)) for k, v in table]))
        prefix = tmp_path / "fuzzed"
        Path(f"{prefix}.index").write_bytes(bytes(blobs[".index"][: max(1, len(blobs[".index"]) - cut)]))
        Path(f"{prefix}.data-00000-of-00001").write_bytes(bytes(blobs[".data-00000-of-00001"]))
        light = _verdict(tf_bundle_reader.check, prefix)
        theirs = _verdict(lambda p: tf_check(p, monkeypatch), prefix)
        assert light in ("none", "error", theirs), (changes, light, theirs)
        assert not light.startswith("ok") or light == theirs, changes

    body()
