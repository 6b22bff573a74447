"""``.keras`` zips written by modelkeep from a snapshot, the tensor bytes never passing through
h5py or ``zipfile``.

The archive holds what Keras's ``model.save`` writes (stored members ``metadata.json``,
``config.json``, ``model.weights.h5``, plus modelkeep's ``modelkeep_rng.safetensors``), so
``keras.saving.load_model`` reads it. What differs is who moves the bytes:

* the ``model.weights.h5`` *skeleton* (groups, attributes, dataset headers: Keras's layout,
  made with the same h5py calls as Keras's ``H5IOStore``) is made once a run into a scratch
  file, with every dataset contiguous and allocated at creation without being written
  (``h5_layout``); each dataset's offset in the file comes from ``dset.id.get_offset()``.
  Datasets of at least ``ALIGN_MIN`` bytes start at a multiple of ``ALIGN``;
* ``write`` lays the zip out itself (local headers, the weights member starting at a
  multiple of ``ALIGN`` thanks to a padding extra field, central directory, zip64 records
  where sizes or offsets need them) and sends each tensor from the snapshot to its offset:
  whole ``ALIGN`` blocks with ``O_DIRECT`` when the snapshot memory is page-aligned
  (``SnapshotBuffers.copy(align=ALIGN)``), the rest with ``os.pwrite``. Both release the
  GIL; the CRC-32s (member and whole file, for the manifest) come from memory with ISA-L.

Measured on the shared 2-core VM (load average 2-4), 270 MiB of weights: Keras's ``H5IOStore``
replay + ``zipfile`` copy took 1.0-1.4 s of the writer thread's CPU per save, much of it with
the GIL held (h5py keeps it while writing); this writer 0.025-0.045 s (writes, CRC-32s), plus
0.04 s for the manifest's read-back check (``benchmarks/ckpt_bench.py`` prints the breakdown).

Example::

    layout = h5_layout(snapshot.entries, snapshot.arrays, Path("run/.scratch.h5"))
    crc = write(Path("run/.c-3.keras.tmp"), snapshot, layout)     # None: not this snapshot
"""

from __future__ import annotations

import errno
import os
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelkeep.formats.safetensors import _pwrite_all
from modelkeep.storage import checksums
from modelkeep.storage.phases import phase

#: block size of direct I/O; the weights member and every large dataset start at a multiple
ALIGN = 4096
#: datasets of at least this many bytes are aligned in the HDF5 file (and written directly)
ALIGN_MIN = 64 << 10
#: sizes and offsets above this need zip64 fields (Python's ``zipfile.ZIP64_LIMIT``)
ZIP64_LIMIT = (1 << 31) - 1
_PAD_ID = 0xD935  # the padding extra field of Android's zipalign: readers skip unknown ids
_KINDS = "fiub"  # float, signed, unsigned, bool: dtypes whose bytes h5py stores as they are


@dataclass(frozen=True)
class H5Layout:
    """Where everything of one ``model.weights.h5`` lies: ``size`` bytes; ``skeleton`` the
    (offset, bytes) of everything that is not dataset data; ``offsets`` the data offset of each
    array key (None for an empty array)."""

    size: int
    skeleton: tuple[tuple[int, bytes], ...]
    offsets: dict[str, int | None]


_LAYOUTS: dict[Any, H5Layout] = {}
_LOCK = threading.Lock()


def _supported(array: np.ndarray) -> bool:
    dtype = array.dtype
    return dtype.kind in _KINDS and dtype.isnative and dtype.names is None and dtype.subdtype is None


def _signature(entries: list, arrays: dict[str, Any]) -> Any:
    return tuple((group, repr(sorted((attrs or {}).items())), tuple((name, key, arrays[key].shape, arrays[key].dtype.str)
                 for name, key in items)) for group, attrs, items in entries)  # fmt: skip


def h5_layout(entries: list, arrays: dict[str, Any], scratch: Path) -> H5Layout | None:
    """The layout of the weights file for a recording (``KerasZipSnapshot.entries``), made in
    ``scratch`` (removed after) or reused from an earlier save with the same groups, shapes and
    dtypes. None when an array's dtype is not stored as raw bytes (bfloat16, strings)."""
    used = [arrays[key] for _g, _a, items in entries for _n, key in items]
    if not all(isinstance(a, np.ndarray) and _supported(a) for a in used):
        return None
    key = _signature(entries, arrays)
    with _LOCK:
        found = _LAYOUTS.get(key)
    if found is not None:
        return found
    with phase("h5 skeleton (h5py, once a run)"):
        layout = _make_layout(entries, arrays, scratch)
    with _LOCK:
        if len(_LAYOUTS) >= 4:
            _LAYOUTS.clear()
        _LAYOUTS[key] = layout
    return layout


def _make_layout(entries: list, arrays: dict[str, Any], scratch: Path) -> H5Layout:
    import h5py

    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)  # the offset is known now; nothing is written
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    offsets: dict[str, int | None] = {}
    try:
        with h5py.File(scratch, "w", alignment_threshold=ALIGN_MIN, alignment_interval=ALIGN) as f:
            for group, attrs, items in entries:
                if not attrs and not items:  # Keras's H5IOStore makes no empty group without metadata
                    continue
                target = f.create_group("vars") if not group else f.create_group(group).create_group("vars")
                for name, value in (attrs or {}).items():
                    target.attrs[name] = value
                for name, key in items:
                    array = arrays[key]
                    dset = target.create_dataset(name, shape=array.shape, dtype=array.dtype, dcpl=dcpl)
                    offset = dset.id.get_offset()
                    if offset is None and array.nbytes:  # a scalar is allocated at its first write only
                        dset[()] = array
                        offset = dset.id.get_offset()
                    if array.nbytes and (offset is None or dset.id.get_storage_size() != array.nbytes):
                        raise RuntimeError(f"h5_layout: dataset {group}/vars/{name} is not one contiguous block")
                    offsets[key] = offset if array.nbytes else None
        size = os.path.getsize(scratch)
        spans = sorted((o, o + arrays[k].nbytes) for k, o in offsets.items() if o is not None)
        size = max([size] + [end for _, end in spans])
        skeleton, at = [], 0
        with open(scratch, "rb") as handle:
            for start, end in [*spans, (size, size)]:
                if start > at:
                    piece = os.pread(handle.fileno(), start - at, at)
                    skeleton.append((at, piece + bytes(start - at - len(piece))))  # a hole reads as zeros
                at = max(at, end)
    finally:
        scratch.unlink(missing_ok=True)
    return H5Layout(size, tuple(skeleton), offsets)


# ------------------------------------------------------------------ the zip, laid out by hand
def _dos_time(stamp: float) -> tuple[int, int]:
    t = time.localtime(stamp)
    return (max(0, t.tm_year - 1980) << 9) | (t.tm_mon << 5) | t.tm_mday, (t.tm_hour << 11) | (t.tm_min << 5) | (t.tm_sec // 2)


def _bytes(array: np.ndarray) -> memoryview:
    return memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8))


@dataclass
class _Member:
    name: str
    parts: list[tuple[int, memoryview]]  # (offset in the member, bytes), in order, covering it
    size: int
    align: bool = False
    crc: int = 0
    header_offset: int = 0
    data_offset: int = 0


def _local_header(m: _Member, at: int, date: int, clock: int) -> bytes:
    name = m.name.encode()
    big = m.size > ZIP64_LIMIT
    extra = struct.pack("<HHQQ", 1, 16, m.size, m.size) if big else b""
    if m.align:
        pad = -(at + 30 + len(name) + len(extra)) % ALIGN
        pad += ALIGN if 0 < pad < 4 else 0
        extra += struct.pack("<HH", _PAD_ID, pad - 4) + bytes(pad - 4) if pad else b""
    size32 = 0xFFFFFFFF if big else m.size
    return struct.pack("<4s5H3L2H", b"PK\x03\x04", 45 if big else 20, 0, 0, clock, date, m.crc, size32, size32,
                       len(name), len(extra)) + name + extra  # fmt: skip


def _central_entry(m: _Member, date: int, clock: int) -> bytes:
    name = m.name.encode()
    fields = [v for v in (m.size, m.size, m.header_offset) if v > ZIP64_LIMIT]
    big = m.size > ZIP64_LIMIT
    extra = struct.pack(f"<HH{len(fields)}Q", 1, 8 * len(fields), *fields) if fields else b""
    size32 = 0xFFFFFFFF if big else m.size
    offset32 = 0xFFFFFFFF if m.header_offset > ZIP64_LIMIT else m.header_offset
    version = 45 if fields else 20
    return struct.pack("<4s6H3L5H2L", b"PK\x01\x02", (3 << 8) | version, version, 0, 0, clock, date, m.crc, size32,
                       size32, len(name), len(extra), 0, 0, 0, 0o100644 << 16, offset32) + name + extra  # fmt: skip


def _end_records(count: int, cd_size: int, cd_offset: int) -> bytes:
    if count < 0xFFFF and cd_size <= ZIP64_LIMIT and cd_offset <= ZIP64_LIMIT:
        return struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, count, count, cd_size, cd_offset, 0)
    record = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, cd_size, cd_offset)
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, cd_offset + cd_size, 1)
    return record + locator + struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, min(count, 0xFFFF), min(count, 0xFFFF),
                                          0xFFFFFFFF, 0xFFFFFFFF, 0)  # fmt: skip


def _weights_member(layout: H5Layout, arrays: dict[str, Any]) -> _Member:
    parts = [(offset, memoryview(piece)) for offset, piece in layout.skeleton]
    parts += [(offset, _bytes(arrays[key])) for key, offset in layout.offsets.items() if offset is not None]
    parts.sort(key=lambda p: p[0])
    return _Member("model.weights.h5", parts, layout.size, align=True)


def _crc_of(parts: list[tuple[int, memoryview]]) -> int:
    crc = 0
    for _offset, view in parts:
        crc = checksums._crc32(view, crc)  # ISA-L (or zlib) releases the GIL on large buffers
    return crc


def plan(members: list[tuple[str, bytes]], layout: H5Layout, arrays: dict[str, Any], *,
         after: list[tuple[str, bytes]] = ()) -> tuple[list[tuple[int, memoryview]], int]:  # fmt: skip
    """``(writes, file_crc)``: every (file offset, bytes) of the archive, in order, and the
    CRC-32 of the whole file. ``members`` come before ``model.weights.h5``, ``after`` after it."""
    listed = [_Member(n, [(0, memoryview(b))], len(b)) for n, b in members]
    listed.append(_weights_member(layout, arrays))
    listed += [_Member(n, [(0, memoryview(b))], len(b)) for n, b in after]
    date, clock = _dos_time(time.time())
    writes: list[tuple[int, memoryview]] = []
    file_crc, at = 0, 0
    with phase("crc-32 (ISA-L, GIL released)"):
        for m in listed:
            m.crc = _crc_of(m.parts)
            m.header_offset = at
            header = _local_header(m, at, date, clock)
            writes.append((at, memoryview(header)))
            file_crc = checksums._crc32(header, file_crc)
            at += len(header)
            m.data_offset = at
            writes += [(at + offset, view) for offset, view in m.parts]
            file_crc = _combine(file_crc, m.crc, m.size, m.parts)
            at += m.size
        directory = b"".join(_central_entry(m, date, clock) for m in listed)
        tail = directory + _end_records(len(listed), len(directory), at)
        writes.append((at, memoryview(tail)))
        file_crc = checksums._crc32(tail, file_crc)
    return writes, file_crc


def _combine(crc: int, member_crc: int, size: int, parts: list[tuple[int, memoryview]]) -> int:
    if checksums._crc32_combine is None:  # pragma: no cover - isal is a dependency
        for _offset, view in parts:
            crc = checksums._crc32(view, crc)
        return crc
    return checksums.crc32_combine(crc, member_crc, size) if size else crc


def write_file(path: Path, writes: list[tuple[int, memoryview]]) -> None:
    """Write ``writes`` into a new file at ``path`` and fsync it: blocks that are whole, aligned
    in the file and in memory with ``O_DIRECT`` (no page-cache copy), the rest buffered."""
    total = max(offset + len(view) for offset, view in writes)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o644)
    direct = -1
    try:
        os.ftruncate(fd, total)
        if hasattr(os, "O_DIRECT"):
            try:
                direct = os.open(path, os.O_WRONLY | os.O_DIRECT | getattr(os, "O_CLOEXEC", 0))
            except OSError:  # tmpfs and others refuse O_DIRECT: everything buffered
                direct = -1
        with phase("pwrite (GIL released)"):
            for offset, view in writes:
                done = 0
                if direct >= 0 and len(view) >= ALIGN_MIN and offset % ALIGN == 0 and _address(view) % ALIGN == 0:
                    whole = len(view) // ALIGN * ALIGN
                    try:
                        _pwrite_all(direct, view[:whole], offset)
                        done = whole
                    except OSError as exc:
                        if exc.errno != errno.EINVAL:
                            raise
                        os.close(direct)  # this device's rules differ: buffered from here on
                        direct = -1
                if done < len(view):
                    _pwrite_all(fd, view[done:], offset + done)
        with phase("fsync"):
            os.fsync(fd)
    finally:
        if direct >= 0:
            os.close(direct)
        os.close(fd)


def _address(view: memoryview) -> int:
    return np.frombuffer(view, dtype=np.uint8).__array_interface__["data"][0] if len(view) else 0
