"""TensorFlow checkpoints (``P.index`` + ``P.data-*``) read without importing TensorFlow.

``modelkeep inspect``, ``verify`` and ``diff`` of a TF checkpoint of a few KB spent seconds
importing TensorFlow to read it. This module reads the tensor bundle itself, as TensorFlow's
``BundleReader`` does (``tensorflow/core/util/tensor_bundle``):

* ``.index`` is a LevelDB table (footer, index block, data blocks, each block's masked CRC-32C
  checked, snappy-compressed blocks of TensorFlow 1.x decompressed); key ``""`` holds a ``BundleHeaderProto``, every other key a ``BundleEntryProto``
  (parsed by ``storage.tf_protos``: the protobuf runtime, TensorFlow's field numbers);
* a tensor's bytes lie in shard ``entry.shard_id`` at ``[offset, offset + size)``; the masked
  CRC-32C of the bytes (for a string tensor: of its lengths, their checksum and the bytes) must
  match the entry, as TensorFlow checks on every read.

Untrusted input: every block handle, offset and size is checked against its file before
anything is read, a read never goes past a file's end, and each array is allocated only after
its size was checked against the bytes the file holds. Damage is a ``CorruptCheckpointError``
naming the file (and the tensor); a layout this reader does not know (another compression,
sliced/partitioned variables, big-endian bundles, a newer bundle version, dtypes such as
``resource``/``variant``/quantized) gives ``None``: then TensorFlow reads the file.

Example::

    bundle = open_bundle(Path("run/ckpt-02"))     # None: use tf.train.load_checkpoint
    if bundle is not None:
        bundle.get_variable_to_shape_map(), bundle.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH")
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelkeep.errors import CheckpointNotFoundError, CorruptCheckpointError, FormatError
from modelkeep.formats.tf_bundle import _MAGIC, mask
from modelkeep.state import ModelState
from modelkeep.storage import limits

INDEX_SUFFIX = ".index"
_FOOTER = 48  # two block handles padded to 40 bytes, then the 8-byte magic
_TRAILER = 5  # a block's compression type byte and masked CRC-32C
_NO_COMPRESSION, _SNAPPY = 0, 1
_STRING = 7
_BUNDLE_VERSION = 1  # kTensorBundleVersion: what TensorFlow 2.x writes and reads
_LITTLE = 0
_MAX_SHARDS = 1 << 16

#: TensorFlow's DataType enum -> the numpy dtype its reader returns (bfloat16: ml_dtypes)
DTYPES: dict[int, str] = {1: "float32", 2: "float64", 3: "int32", 4: "uint8", 5: "int16", 6: "int8", 8: "complex64",
                          9: "int64", 10: "bool", 14: "bfloat16", 17: "uint16", 18: "complex128", 19: "float16",
                          22: "uint32", 23: "uint64"}


class Unsupported(Exception):
    """A layout this reader does not handle (TensorFlow should read the file)."""


def _corrupt(path: Path, found: str) -> CorruptCheckpointError:
    return CorruptCheckpointError(f"{path}: {found}. The TF checkpoint is truncated or corrupt; use another checkpoint.")


def _crc32c(data: Any, value: int = 0) -> int:
    import crc32c

    return crc32c.crc32c(data, value)


def _numpy_dtype(code: int) -> np.dtype | None:
    name = DTYPES.get(code)
    if name == "bfloat16":
        try:
            import ml_dtypes
        except ImportError:
            return None
        return np.dtype(ml_dtypes.bfloat16)
    return None if name is None or np.little_endian is False else np.dtype(name).newbyteorder("<")


# ------------------------------------------------------------------ LevelDB table
def _varint(buf: bytes | memoryview, pos: int, end: int, path: Path, what: str, bits: int = 64) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift >= bits:
            raise _corrupt(path, f"a varint of the {what} runs past its end or over {bits} bits")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            if result >> bits:
                raise _corrupt(path, f"a varint of the {what} is over {bits} bits")
            return result, pos


def _block_handle(buf: bytes | memoryview, pos: int, end: int, path: Path, what: str) -> tuple[int, int, int]:
    offset, pos = _varint(buf, pos, end, path, what)
    size, pos = _varint(buf, pos, end, path, what)
    return offset, size, pos


def _read_block(data: bytes, offset: int, size: int, path: Path, what: str) -> memoryview:
    """A block's contents, its handle checked against the file, its CRC-32C checked."""
    limit = len(data) - _FOOTER
    if offset > limit or size > limit - offset or _TRAILER > limit - offset - size:
        raise _corrupt(path, f"the {what} is at bytes {offset}..{offset + size + _TRAILER} but the index has {len(data)} bytes")
    kind = data[offset + size]
    stored = struct.unpack_from("<I", data, offset + size + 1)[0]
    if mask(_crc32c(memoryview(data)[offset : offset + size + 1])) != stored:
        raise _corrupt(path, f"the {what} fails its CRC-32C check")
    if kind == _SNAPPY:  # TensorFlow 1.x wrote its index blocks snappy-compressed
        return memoryview(_unsnappy(memoryview(data)[offset : offset + size], path, what))
    if kind != _NO_COMPRESSION:
        raise Unsupported(f"{what} compressed (type {kind})")
    return memoryview(data)[offset : offset + size]


def _unsnappy(src: memoryview, path: Path, what: str) -> bytes:
    """A raw snappy block decompressed: literals and back-references, every length and offset
    checked; the declared size is capped by what ``len(src)`` bytes can expand to (64 per 3)."""
    size, pos = _varint(src, 0, len(src), path, f"snappy {what}", 32)
    if size > 22 * len(src):
        raise _corrupt(path, f"the snappy {what} declares {size} bytes from {len(src)}")
    out = bytearray()
    while pos < len(src):
        tag, pos = src[pos], pos + 1
        kind, high = tag & 3, tag >> 2
        if kind == 0:  # literal: its length - 1 in the tag, or in the next 1-4 bytes
            if high >= 60:
                extra = high - 59
                if pos + extra > len(src):
                    raise _corrupt(path, f"the snappy {what} ends inside a literal's length")
                high, pos = int.from_bytes(src[pos : pos + extra], "little"), pos + extra
            length = high + 1
            if length > len(src) - pos or len(out) + length > size:
                raise _corrupt(path, f"a literal of the snappy {what} runs past its end")
            out += src[pos : pos + length]
            pos += length
            continue
        width = {1: 1, 2: 2, 3: 4}[kind]
        if pos + width > len(src):
            raise _corrupt(path, f"the snappy {what} ends inside a copy")
        if kind == 1:
            length, back = 4 + (high & 7), ((high >> 3) << 8) | src[pos]
        else:
            length, back = high + 1, int.from_bytes(src[pos : pos + width], "little")
        pos += width
        if not 0 < back <= len(out) or len(out) + length > size:
            raise _corrupt(path, f"a copy of the snappy {what} reaches outside what is decompressed")
        start = len(out) - back
        for i in range(length):  # copies may overlap what they write
            out.append(out[start + i])
    if len(out) != size:
        raise _corrupt(path, f"the snappy {what} decompresses to {len(out)} bytes, not the {size} it declares")
    return bytes(out)


def _block_rows(block: memoryview, path: Path, what: str, budget: list[int] | None = None) -> list[tuple[bytes, memoryview]]:
    """The (key, value) rows of a block (prefix-compressed keys, restart array at the end);
    ``budget[0]``: the key bytes still allowed (each row's key is taken from it)."""
    if len(block) < 4:
        raise _corrupt(path, f"the {what} has {len(block)} bytes, too few for its restart count")
    restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
    if restarts > (len(block) - 4) // 4:
        raise _corrupt(path, f"the {what} declares {restarts} restart points in {len(block)} bytes")
    end = len(block) - 4 - 4 * restarts
    rows, pos, last = [], 0, b""
    while pos < end:
        shared, pos = _varint(block, pos, end, path, what, 32)
        own, pos = _varint(block, pos, end, path, what, 32)
        length, pos = _varint(block, pos, end, path, what, 32)
        if shared > len(last) or own > end - pos or length > end - pos - own:
            raise _corrupt(path, f"a row of the {what} runs past the block's end")
        if budget is not None:
            budget[0] -= shared + own
            if budget[0] < 0:
                from modelkeep.storage.guard import refuse

                raise refuse(path, "tf-key-expansion", "its prefix-compressed keys expand to more than "
                             f"{limits.current().max_tf_key_expansion} times the index's size")
        key = last[:shared] + bytes(block[pos : pos + own])
        pos += own
        rows.append((key, block[pos : pos + length]))
        pos += length
        last = key
    return rows


def read_table(index: Path, data: bytes) -> list[tuple[bytes, memoryview]]:
    """Every (key, value) row of a LevelDB table (the bytes of ``index``), in file order."""
    if len(data) < _FOOTER:
        raise _corrupt(index, f"{len(data)} bytes, shorter than the {_FOOTER}-byte table footer")
    footer = len(data) - _FOOTER
    if struct.unpack_from("<Q", data, len(data) - 8)[0] != _MAGIC:
        raise _corrupt(index, "the table footer's magic number is wrong")
    _, _, pos = _block_handle(data, footer, len(data) - 8, index, "table footer")  # the meta index: unused
    offset, size, _ = _block_handle(data, pos, len(data) - 8, index, "table footer")
    rows: list[tuple[bytes, memoryview]] = []
    budget = [limits.current().max_tf_key_expansion * len(data) + (1 << 20)]
    for _, handle in _block_rows(_read_block(data, offset, size, index, "index block"), index, "index block", budget):
        block_offset, block_size, _ = _block_handle(handle, 0, len(handle), index, "index block")
        rows.extend(_block_rows(_read_block(data, block_offset, block_size, index, "data block"), index, "data block", budget))
    return rows


# ------------------------------------------------------------------ the bundle
@dataclass(frozen=True)
class Entry:
    """One tensor of the bundle: where its bytes are and what they must be."""

    key: str
    dtype: int
    shape: tuple[int, ...]
    shard: int
    offset: int
    size: int
    crc32c: int  # masked, as stored


class Bundle:
    """The tensors of a TF checkpoint, read with the checks TensorFlow's reader makes.

    Its methods are those of ``tf.train.load_checkpoint``'s reader that modelkeep uses:
    ``get_variable_to_shape_map``, ``get_variable_to_dtype_map`` (dtype names), ``has_tensor``,
    ``get_tensor`` (a writable array; a scalar string as ``bytes``, as TensorFlow returns it).
    """

    def __init__(self, prefix: Path, entries: dict[str, Entry], shards: list[Path]):
        self.prefix, self.entries, self.shards = prefix, entries, shards

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def has_tensor(self, key: str) -> bool:
        return key in self.entries

    def get_variable_to_shape_map(self) -> dict[str, list[int]]:
        return {k: list(e.shape) for k, e in self.entries.items()}

    def get_variable_to_dtype_map(self) -> dict[str, str]:
        return {k: "string" if e.dtype == _STRING else DTYPES[e.dtype] for k, e in self.entries.items()}

    def get_tensor(self, key: str) -> Any:
        entry = self.entries.get(key)
        if entry is None:
            raise KeyError(f"{self.prefix}: the TF checkpoint has no tensor {key!r}")
        raw = self._read(entry)
        if entry.dtype == _STRING:
            values = self._strings(entry, raw)
            if not entry.shape:
                return values[0]
            out = np.empty(len(values), dtype=object)
            out[:] = values
            return out.reshape(entry.shape)
        if mask(_crc32c(raw)) != entry.crc32c:
            raise self._crc_error(entry)
        return np.frombuffer(raw, dtype=_numpy_dtype(entry.dtype)).reshape(entry.shape)

    def _read(self, entry: Entry) -> bytearray:
        """The entry's bytes; its span was checked against the shard's size when opened."""
        path = self.shards[entry.shard]
        buf = bytearray(entry.size)
        with open(path, "rb") as handle:
            handle.seek(entry.offset)
            got = handle.readinto(buf) if entry.size else 0
        if got != entry.size:
            raise _corrupt(path, f"tensor {entry.key!r} needs bytes {entry.offset}..{entry.offset + entry.size} "
                           f"but the file ended after {entry.offset + (got or 0)}")
        return buf

    def _crc_error(self, entry: Entry) -> CorruptCheckpointError:
        return CorruptCheckpointError(
            f"{self.shards[entry.shard]}: tensor {entry.key!r} fails its CRC-32C check (the index stores "
            f"{entry.crc32c:#010x}, its bytes give another): the data file is corrupt. Use another checkpoint."
        )

    def _strings(self, entry: Entry, raw: bytearray) -> list[bytes]:
        """A string tensor's elements: varint64 lengths, their masked CRC-32C, then the bytes."""
        path, count, pos, crc = self.shards[entry.shard], math.prod(entry.shape), 0, 0
        lengths = []
        for _ in range(count):
            length, pos = _varint(raw, pos, len(raw), path, f"string tensor {entry.key!r}")
            lengths.append(length)
            crc = _crc32c(struct.pack("<I" if length <= 0xFFFFFFFF else "<Q", length), crc)
        if pos + 4 > len(raw) or sum(lengths) != len(raw) - pos - 4:
            raise _corrupt(path, f"string tensor {entry.key!r} declares {sum(lengths)} bytes of strings in {entry.size} bytes")
        stored = struct.unpack_from("<I", raw, pos)[0]
        if mask(crc) != stored:
            raise self._crc_error(entry)
        if mask(_crc32c(memoryview(raw)[pos:], crc)) != entry.crc32c:
            raise self._crc_error(entry)
        pos += 4
        out = []
        for length in lengths:
            out.append(bytes(raw[pos : pos + length]))
            pos += length
        return out


def _entry(key: str, value: memoryview, num_shards: int, sizes: list[int], index: Path) -> Entry:
    from google.protobuf.message import DecodeError

    from modelkeep.storage.tf_protos import parse

    try:
        proto = parse("BundleEntryProto", bytes(value))
    except DecodeError as exc:
        raise _corrupt(index, f"the entry of tensor {key!r} does not parse ({exc})") from None
    if proto.slices or proto.shape.unknown_rank:
        raise Unsupported(f"tensor {key!r} is sliced or of unknown rank")
    if proto.dtype != _STRING and _numpy_dtype(proto.dtype) is None:
        raise Unsupported(f"tensor {key!r} has dtype {proto.dtype}")
    shape = tuple(int(d.size) for d in proto.shape.dim)
    if any(n < 0 for n in shape) or proto.offset < 0 or proto.size < 0:
        raise _corrupt(index, f"tensor {key!r} has a negative dimension, offset or size")
    if math.prod(max(n, 1) for n in shape) >= 1 << 62:
        raise _corrupt(index, f"tensor {key!r} has dimensions {list(shape)}, more elements than any file holds")
    if not 0 <= proto.shard_id < num_shards:
        raise _corrupt(index, f"tensor {key!r} is in shard {proto.shard_id} of a bundle of {num_shards}")
    have = sizes[proto.shard_id]
    if proto.offset > have or proto.size > have - proto.offset:
        raise _corrupt(index, f"tensor {key!r} is at bytes {proto.offset}..{proto.offset + proto.size} of data "
                       f"shard {proto.shard_id}, which has {have} bytes")
    count = math.prod(shape)
    if proto.dtype == _STRING:
        if count > proto.size:  # every element takes at least its one-byte length
            raise _corrupt(index, f"string tensor {key!r} has {count} elements in {proto.size} bytes")
    elif count * _numpy_dtype(proto.dtype).itemsize != proto.size:
        raise _corrupt(index, f"tensor {key!r} of shape {list(shape)} and dtype {DTYPES[proto.dtype]} needs "
                       f"{count * _numpy_dtype(proto.dtype).itemsize} bytes but its entry says {proto.size}")
    return Entry(key, proto.dtype, shape, proto.shard_id, proto.offset, proto.size, proto.crc32c)


def _header(rows: list[tuple[bytes, memoryview]], index: Path) -> int:
    """The number of shards, from the ``""`` row; ``Unsupported`` for another version or endianness."""
    from google.protobuf.message import DecodeError

    from modelkeep.storage.tf_protos import parse

    if not rows or rows[0][0] != b"":
        raise _corrupt(index, "the table has no bundle header (key '') first")
    try:
        header = parse("BundleHeaderProto", bytes(rows[0][1]))
    except DecodeError as exc:
        raise _corrupt(index, f"the bundle header does not parse ({exc})") from None
    version = header.version
    if header.endianness != _LITTLE or version.min_consumer > _BUNDLE_VERSION or _BUNDLE_VERSION in version.bad_consumers:
        raise Unsupported("another endianness or bundle version")
    if not 0 < header.num_shards <= _MAX_SHARDS:
        raise _corrupt(index, f"the bundle header declares {header.num_shards} data shards")
    return header.num_shards


def _checked_file(path: Path, directory: Path, source: Path, what: str) -> int:
    """The size of a companion file, refused when it leaves the prefix's directory or is no regular file."""
    from modelkeep.storage.guard import inside, refuse, regular_file

    if path.is_symlink() and not inside(directory, path):
        raise refuse(source, "path-containment", f"{path.name} is a symlink to {os.readlink(path)!r}, outside {directory}",
                     "Replace the symlink with the file itself.")
    return regular_file(path, source=source, what=what).st_size


def open_bundle(prefix: Path | str) -> Bundle | None:
    """The bundle at ``prefix``, every entry checked against its files; None where TensorFlow
    should read it (a layout this reader does not know). Raises ``CheckpointNotFoundError`` for a
    missing file, ``CorruptCheckpointError``/``UnsafeFileError`` for a damaged or hostile one.

    Also the guard's check before TensorFlow opens a bundle (``storage.guard_h5``): TensorFlow's
    ``CheckpointReader`` aborts the whole process (``Check failed: entry.ParseFromString``) on an
    index entry that does not parse; here that is a ``CorruptCheckpointError``."""
    prefix = Path(prefix)
    if prefix.is_dir():
        raise FormatError(f"load: {prefix} is a directory, not a TF checkpoint prefix.")
    index, directory = Path(str(prefix) + INDEX_SUFFIX), prefix.parent
    caps = limits.current()
    size = _checked_file(index, directory, prefix, "checkpoint index")
    if size > caps.max_protobuf_bytes:
        from modelkeep.storage.guard import refuse

        raise refuse(prefix, "size-cap", f"{index.name} has {size} bytes, over the cap of {caps.max_protobuf_bytes}")
    data = index.read_bytes()[: caps.max_protobuf_bytes]
    try:
        rows = read_table(index, data)
        num_shards = _header(rows, index)
        shards = [Path(f"{prefix}.data-{i:05d}-of-{num_shards:05d}") for i in range(num_shards)]
        missing = [p.name for p in shards if not os.path.lexists(p)]
        if missing:
            raise CheckpointNotFoundError(
                f"load: {index} lists {num_shards} data shard(s) but {missing[0]} is missing: the TF checkpoint "
                "is incomplete. Copy every .data file too, or use another checkpoint.")
        sizes = [_checked_file(p, directory, prefix, "checkpoint data file") for p in shards]
        if len(rows) - 1 > caps.max_tf_tensors:
            from modelkeep.storage.guard import refuse

            raise refuse(prefix, "tf-tensors", f"its index lists {len(rows) - 1} tensors, over the cap of {caps.max_tf_tensors}")
    except Unsupported:
        return None
    entries: dict[str, Entry] = {}
    unsupported, previous = False, b""
    for key, value in rows[1:]:  # every entry is checked, even after one this reader leaves to TensorFlow:
        try:  # TensorFlow's reader aborts the process on an entry that does not parse
            if key <= previous:
                raise Unsupported("keys out of order or repeated")  # TensorFlow's lookups would disagree
            name = key.decode(errors="replace")
            entries[name] = _entry(name, value, num_shards, sizes, index)
            if "\ufffd" in name:
                raise Unsupported("a key that is not UTF-8")
        except Unsupported:
            unsupported = True
        previous = max(previous, key)
    return None if unsupported else Bundle(prefix, entries, shards)


# ------------------------------------------------------------------ what the TF path reads from it
def read_state(prefix: Path | str) -> ModelState | None:
    """What ``TFCheckpointFormat.read`` gives, without TensorFlow; None where TensorFlow should read it.

    modelkeep's checkpoints name their variables in the ``_MODELKEEP_HEADER`` tensor; tf-keras's
    are named by walking the ``_CHECKPOINTABLE_OBJECT_GRAPH`` (``formats.legacy``).
    """
    from modelkeep.formats import registry
    from modelkeep.formats.tf_checkpoint import HEADER_KEY, VALUE_SUFFIX, object_path
    from modelkeep.storage.guard import load_json, malformed

    prefix = Path(prefix)
    registry.TF_CHECKPOINT.require(prefix)
    bundle = open_bundle(prefix)
    if bundle is None:
        return None
    if HEADER_KEY not in bundle:
        from modelkeep.formats import legacy

        return legacy.read_tf_keras_checkpoint(prefix, bundle)
    raw = bundle.get_tensor(HEADER_KEY)
    if not isinstance(raw, bytes):
        return None
    with malformed(prefix, "read"):  # a header without 'order', a name that is no tensor: named errors
        header = load_json(raw.decode(), source=prefix, what="modelkeep header tensor")
        order = header.pop("order")
        paths = header.pop("paths", None) or [object_path(k) for k in order]
        variables = {}
        for key, object_key in zip(order, paths):
            value = bundle.get_tensor(object_key + VALUE_SUFFIX)
            variables[key] = value.decode() if isinstance(value, bytes) else np.asarray(value)
        return ModelState(variables, header.get("model_config"), header.get("compile_config"), header.get("metadata") or {})


def check(prefix: Path | str) -> str | None:
    """``verify``'s check of a TF checkpoint: every tensor read and CRC-checked, modelkeep's
    header and the object graph parsed; the same line TensorFlow's check gives, or None where
    TensorFlow should check it."""
    from google.protobuf.message import DecodeError

    from modelkeep.formats import registry
    from modelkeep.formats.tf_checkpoint import HEADER_KEY, OBJECT_GRAPH_KEY
    from modelkeep.storage.guard import load_json
    from modelkeep.storage.tf_protos import parse

    prefix = Path(prefix)
    registry.TF_CHECKPOINT.require(prefix)
    bundle = open_bundle(prefix)
    if bundle is None:
        return None
    values = {}
    for key in sorted(bundle.entries):  # every tensor read and checked; only the two parsed below kept
        value = bundle.get_tensor(key)
        if key in (HEADER_KEY, OBJECT_GRAPH_KEY):
            values[key] = value
    if HEADER_KEY in values:
        raw = values[HEADER_KEY]
        header = load_json(raw.decode() if isinstance(raw, bytes) else str(raw), source=prefix, what="modelkeep header tensor")
        if not isinstance(header.get("order"), list):
            raise CorruptCheckpointError("modelkeep's header tensor has no 'order' list: corrupt")
    if OBJECT_GRAPH_KEY in values:
        if not isinstance(values[OBJECT_GRAPH_KEY], bytes):
            return None
        try:
            parse("TrackableObjectGraph", values[OBJECT_GRAPH_KEY])
        except DecodeError as exc:
            raise CorruptCheckpointError(f"the object graph tensor does not parse ({exc}): corrupt") from exc
    return f"TF checkpoint: {len(bundle.entries)} tensors read, each matches its crc32c"


__all__ = ["DTYPES", "Bundle", "Entry", "check", "open_bundle", "read_state", "read_table"]
