"""TensorFlow's checkpoint bundle (``P.index`` + ``P.data-00000-of-00001``) written from a snapshot.

TensorFlow's ``SaveV2`` op writes a bundle through the page cache: on a loaded 2-core VM,
a quarter of a second of CPU per 256 MiB, taken from training when a background writer
saves. When every numeric value lies in one page-aligned snapshot buffer
(``checkpoint.writer.SnapshotBuffers``), this module writes the same bundle itself: the
``.data`` file gets the buffer with ``O_DIRECT`` (the disk reads the memory; no CPU copy),
once: keys naming the same array (a SavedModel names each variable twice, as the Keras
variable and as its ``tf.Variable``) point at the same bytes, so a 270 MiB state is a
270 MiB file, not the 540 MiB ``SaveV2`` writes; the small ``.index`` is built here.

The layout is TensorFlow's (``tensorflow/core/util/tensor_bundle``): ``.data`` holds each
tensor's bytes at the offset its index entry gives (holes between them are allowed, as with
``data_alignment``); a string tensor is its varint64 lengths, the masked CRC-32C of those, then
the bytes. ``.index`` is a LevelDB-format table (TensorFlow's ``lib/io/table``): key ``""``
holds a ``BundleHeaderProto``, every other key a ``BundleEntryProto`` (dtype, shape, offset,
size, masked CRC-32C of the bytes, which TensorFlow checks on every read).

Example::

    ok = write_bundle_direct(Path("run/tmp-prefix"), {"w/.ATTRIBUTES/VARIABLE_VALUE": snapshot_array})
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from modelkeep.formats import safetensors as _safetensors
from modelkeep.formats.safetensors import DIRECT_ALIGN, _pwrite_all
from modelkeep.storage.checksums import BackgroundCrc32, remember_crc32

DATA_SUFFIX = ".data-00000-of-00001"
INDEX_SUFFIX = ".index"
_MAGIC = 0xDB4775248B80FB57
_BLOCK_SIZE = 262144
_RESTART_INTERVAL = 16


def _crc32c(data: Any, value: int = 0) -> int:
    import crc32c

    return crc32c.crc32c(data, value)


def mask(crc: int) -> int:
    """LevelDB's and TensorFlow's masked CRC-32C (what their files store)."""
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_string_tensor(values: list[bytes]) -> tuple[bytes, int]:
    """TensorFlow's on-disk form of a string tensor and its (unmasked) CRC-32C."""
    lengths = b"".join(_varint(len(v)) for v in values)
    # TensorFlow checksums each length as a little-endian uint32 (uint64 past 4 GiB), not its varint
    crc = _crc32c(b"".join(struct.pack("<I" if len(v) <= 0xFFFFFFFF else "<Q", len(v)) for v in values))
    checksum = struct.pack("<I", mask(crc))
    body = b"".join(values)
    return lengths + checksum + body, _crc32c(body, _crc32c(checksum, crc))


def _region(arrays: list[np.ndarray]) -> tuple[memoryview, int, int] | None:
    """(page-rounded view, start address, byte length) of the span the arrays lie in, when all
    are views of one uint8 buffer and the span starts page-aligned; else None."""
    arrays = [a for a in arrays if a.nbytes]
    if not arrays or not hasattr(os, "O_DIRECT"):
        return None
    base = arrays[0].base
    if not isinstance(base, np.ndarray) or base.dtype != np.uint8 or base.ndim != 1:
        return None
    if any(a.base is not base or not a.flags.c_contiguous for a in arrays):
        return None
    origin = base.__array_interface__["data"][0]
    start = min(a.__array_interface__["data"][0] for a in arrays)
    end = max(a.__array_interface__["data"][0] + a.nbytes for a in arrays)
    rounded = -(-(end - start) // DIRECT_ALIGN) * DIRECT_ALIGN
    lo = start - origin
    if end - start < _safetensors.DIRECT_MIN or start % DIRECT_ALIGN or lo + rounded > base.nbytes:
        return None
    return memoryview(base[lo : lo + rounded]), start, end - start


def write_bundle_direct(prefix: Path, named: dict[str, Any]) -> bool:
    """Write ``prefix.index`` and ``prefix.data-00000-of-00001`` (fsynced; no commit). False, with
    nothing written, when the values are not one snapshot buffer (or a bytes/str scalar, or an
    object array of bytes) or the file system refuses direct writes: use ``SaveV2`` then."""
    try:
        import crc32c  # noqa: F401
    except ImportError:  # pragma: no cover - a dependency
        return False
    numeric = {k: v for k, v in named.items() if isinstance(v, np.ndarray) and v.dtype != object}
    strings = {k: v for k, v in named.items() if k not in numeric}
    region = _region(list({id(v): v for v in numeric.values()}.values()))
    if region is None or any(not _is_string(v) for v in strings.values()):
        return False
    view, start, length = region
    head = bytearray()
    entries: dict[str, tuple[Any, tuple[int, ...], int, int, int]] = {}
    for key, value in strings.items():
        values = [_as_bytes(v) for v in np.asarray(value, dtype=object).reshape(-1)]
        data, crc = encode_string_tensor(values)
        entries[key] = ("string", tuple(np.shape(value)), len(head), len(data), crc)
        head += data
    head_size = -(-len(head) // DIRECT_ALIGN) * DIRECT_ALIGN
    crcs: dict[int, int] = {}  # one CRC-32C per array, however many keys name it
    for key, value in numeric.items():
        if id(value) not in crcs:
            crcs[id(value)] = _crc32c(memoryview(value.reshape(-1).view(np.uint8)))
        offset = head_size + (value.__array_interface__["data"][0] - start)  # keys of one array share its bytes
        entries[key] = (value.dtype, value.shape, offset, value.nbytes, crcs[id(value)])
    regions = 1 if numeric else 0  # the snapshot's span, written once
    data_path, index_path = Path(str(prefix) + DATA_SUFFIX), Path(str(prefix) + INDEX_SUFFIX)
    try:
        fd = os.open(data_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT | getattr(os, "O_CLOEXEC", 0), 0o644)
    except OSError:
        return False
    # the file's CRC-32 for the manifest, from the memory the disk reads (the head's zero
    # padding included), beside the writes: the file is never read back for it
    head_bytes = bytes(head).ljust(head_size, b"\0") if regions else bytes(head)
    data_crc = BackgroundCrc32([head_bytes, view[:length]] if regions else [head_bytes], threads=1)
    try:
        if head_size:
            import mmap

            aligned = mmap.mmap(-1, head_size)
            aligned[: len(head)] = bytes(head)
            try:
                _pwrite_all(fd, memoryview(aligned), 0)
            finally:
                aligned.close()
        if regions:
            _pwrite_all(fd, view, head_size)
        os.ftruncate(fd, head_size + length if regions else len(head))
        os.fsync(fd)
    except OSError:
        os.close(fd)
        data_path.unlink(missing_ok=True)
        raise
    finally:
        crc = data_crc.result()
    os.close(fd)
    remember_crc32(data_path, crc)
    index = build_index(entries)
    with open(index_path, "wb") as handle:
        handle.write(index)
        handle.flush()
        os.fsync(handle.fileno())
    remember_crc32(index_path, zlib.crc32(index))
    return True


def _is_string(value: Any) -> bool:
    if isinstance(value, (bytes, str)):
        return True
    array = np.asarray(value)
    return array.dtype == object and all(isinstance(v, (bytes, str)) for v in array.reshape(-1))


def _as_bytes(value: Any) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


def build_index(entries: dict[str, tuple[Any, tuple[int, ...], int, int, int]]) -> bytes:
    """The ``.index`` table: ``{key: (dtype or "string", shape, offset, size, crc32c)}``."""
    import tensorflow as tf
    from tensorflow.core.framework import versions_pb2
    from tensorflow.core.protobuf import tensor_bundle_pb2 as pb

    header = pb.BundleHeaderProto(num_shards=1, endianness=pb.BundleHeaderProto.LITTLE,
                                  version=versions_pb2.VersionDef(producer=1))  # fmt: skip
    rows = [(b"", header.SerializeToString())]
    for key in sorted(entries, key=lambda k: k.encode()):
        dtype, shape, offset, size, crc = entries[key]
        entry = pb.BundleEntryProto(
            dtype=tf.string.as_datatype_enum if dtype == "string" else tf.as_dtype(dtype).as_datatype_enum,
            shard_id=0, offset=offset, size=size, crc32c=mask(crc),
        )  # fmt: skip
        for n in shape:
            entry.shape.dim.add(size=int(n))
        rows.append((key.encode(), entry.SerializeToString()))
    return _table(rows)


def _block(rows: list[tuple[bytes, bytes]], interval: int) -> bytes:
    out, restarts, last = bytearray(), [], b""
    for i, (key, value) in enumerate(rows):
        shared = 0
        if i % interval == 0:
            restarts.append(len(out))
        else:
            limit = min(len(last), len(key))
            while shared < limit and last[shared] == key[shared]:
                shared += 1
        out += _varint(shared) + _varint(len(key) - shared) + _varint(len(value)) + key[shared:] + value
        last = key
    for restart in restarts or [0]:
        out += struct.pack("<I", restart)
    out += struct.pack("<I", len(restarts or [0]))
    return bytes(out)


def _table(rows: list[tuple[bytes, bytes]]) -> bytes:
    """A LevelDB table (no compression) of sorted ``rows``."""
    out = bytearray()

    def emit(block: bytes) -> bytes:
        handle = _varint(len(out)) + _varint(len(block))
        out.extend(block)
        out.extend(b"\x00" + struct.pack("<I", mask(_crc32c(b"\x00", _crc32c(block)))))
        return handle

    index_rows, pending, size = [], [], 0
    for key, value in rows:
        pending.append((key, value))
        size += len(key) + len(value) + 8
        if size >= _BLOCK_SIZE:
            index_rows.append((key, emit(_block(pending, _RESTART_INTERVAL))))
            pending, size = [], 0
    if pending:
        index_rows.append((pending[-1][0], emit(_block(pending, _RESTART_INTERVAL))))
    meta = emit(_block([], 1))
    index = emit(_block(index_rows, 1))
    footer = (meta + index).ljust(40, b"\x00") + struct.pack("<Q", _MAGIC)
    return bytes(out) + footer
