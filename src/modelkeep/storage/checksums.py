"""Checksums of files and manifests that list them.

A manifest is a small JSON file that names every file of a checkpoint with its size
and CRC-32, plus the checkpoint's metadata. ``verify_manifest`` re-reads the files and
raises ``CorruptCheckpointError`` naming the first file that fails, and the check.

Example::

    write_manifest(Path("ckpt.manifest.json"), [Path("ckpt.safetensors")], {"step": 10})
    verify_manifest(Path("ckpt.manifest.json"))
"""

from __future__ import annotations

import json
import mmap
import os
import threading
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from modelkeep.errors import CheckpointNotFoundError, CorruptCheckpointError
from modelkeep.storage.commit import write_bytes

try:  # ISA-L's CRC-32: the same values as zlib.crc32, ~6x faster (SIMD); releases the GIL
    from isal.isal_zlib import crc32 as _crc32
    from isal.isal_zlib import crc32_combine as _crc32_combine
except ImportError:  # pragma: no cover - isal is a dependency; zlib is the fallback
    _crc32 = zlib.crc32
    _crc32_combine = None

CHUNK = 8 << 20
MANIFEST_VERSION = 1


_LOCAL = threading.local()
#: files at least this large are read with O_DIRECT on a thread that asked for it
DIRECT_READ_MIN = 8 << 20
_DIRECT_CHUNK = 8 << 20


def prefer_direct_reads(enabled: bool = True) -> None:
    """Make ``file_crc32`` on the calling thread read large files with ``O_DIRECT``.

    For a background checkpoint writer: the files it checks (its own checkpoint after the
    commit, the ones retention lists) were mostly written with direct I/O and are not in the
    page cache; a direct read costs the disk's time but no CPU copy and evicts nothing,
    where a cached read would fill the page cache with CPU taken from training. Other
    threads (loading, the CLI) keep cached reads.
    """
    _LOCAL.direct = enabled


def _direct_crc32(path: str | os.PathLike) -> int | None:
    """CRC-32 of a file read with O_DIRECT into an aligned buffer; None if refused."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT | getattr(os, "O_CLOEXEC", 0))
    except (OSError, AttributeError):
        return None
    try:
        buffer = mmap.mmap(-1, _DIRECT_CHUNK)
        try:
            view, crc, offset = memoryview(buffer), 0, 0
            while True:
                count = os.preadv(fd, [view], offset)
                if count <= 0:
                    break
                crc = _crc32(view[:count], crc)
                offset += count
                if count < len(view):
                    break
            view.release()
            return crc
        finally:
            buffer.close()
    except OSError:
        return None
    finally:
        os.close(fd)


def file_crc32(path: str | os.PathLike) -> int:
    """CRC-32 of a whole file: mapped, checksummed in two GIL-free threads for large files
    (read with O_DIRECT instead on a thread that asked for it: ``prefer_direct_reads``)."""
    if getattr(_LOCAL, "direct", False) and os.stat(path).st_size >= DIRECT_READ_MIN:
        crc = _direct_crc32(path)
        if crc is not None:
            return crc
    with open(path, "rb", buffering=0) as handle:
        size = os.fstat(handle.fileno()).st_size
        if size < PARALLEL_MIN:
            crc = 0
            while chunk := handle.read(CHUNK):
                crc = _crc32(chunk, crc)
            return crc
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            mapped.madvise(mmap.MADV_SEQUENTIAL)
            view = memoryview(mapped)
            try:
                return crc32_buffers([view])
            finally:
                view.release()


# ---------------------------------------------------------------- fast CRC-32
# CRC-32 over large buffers releases the GIL (zlib's and ISA-L's), so two threads over two
# halves, joined with crc32_combine, halve the time when a second core is free. On this
# machine zlib runs at ~2 GB/s per core, ISA-L at ~12 GB/s.
PARALLEL_MIN = 64 << 20


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """CRC-32 of ``A + B`` from ``crc32(A)``, ``crc32(B)`` and ``len(B)`` (ISA-L's, in C)."""
    if _crc32_combine is None:  # pragma: no cover - isal is a dependency
        raise RuntimeError("crc32_combine needs the isal package; install it (pip install isal).")
    return _crc32_combine(crc1, crc2, len2)


def _bytes_view(buffer: Any) -> memoryview:
    view = memoryview(buffer)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def crc32_buffers(buffers: Sequence[Any], *, threads: int = 2) -> int:
    """CRC-32 of the concatenation of ``buffers`` (bytes-like, C-contiguous), never joined.

    Large inputs are split into ``threads`` byte ranges checksummed in parallel
    (``zlib.crc32`` releases the GIL) and combined. Example::

        crc32_buffers([header, memoryview(array)]) == zlib.crc32(header + array.tobytes())
    """
    views = [_bytes_view(b) for b in buffers]
    total = sum(v.nbytes for v in views)
    if threads <= 1 or total < PARALLEL_MIN or _crc32_combine is None:
        return _crc_ranges(views, 0, total)
    bounds = [total * i // threads for i in range(threads + 1)]
    results = [0] * threads

    def run(i: int) -> None:
        results[i] = _crc_ranges(views, bounds[i], bounds[i + 1])

    workers = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(1, threads)]
    for worker in workers:
        worker.start()
    run(0)
    for worker in workers:
        worker.join()
    crc = results[0]
    for i in range(1, threads):
        crc = crc32_combine(crc, results[i], bounds[i + 1] - bounds[i])
    return crc


def _crc_ranges(views: list[memoryview], start: int, stop: int) -> int:
    """CRC-32 of bytes ``[start, stop)`` of the concatenation of ``views``."""
    crc, offset = 0, 0
    for view in views:
        end = offset + view.nbytes
        lo, hi = max(start, offset), min(stop, end)
        for pos in range(lo, hi, CHUNK):
            crc = _crc32(view[pos - offset : min(hi, pos + CHUNK) - offset], crc)
        offset = end
        if offset >= stop:
            break
    return crc


class BackgroundCrc32:
    """CRC-32 of buffers computed in threads while the caller does something else.

    Example::

        crc = BackgroundCrc32([header, memoryview(array)])
        write_everything()
        manifest_entry = crc.result()
    """

    def __init__(self, buffers: Sequence[Any], *, threads: int = 2) -> None:
        self._value: int | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(list(buffers), threads), daemon=True)
        self._thread.start()

    def _run(self, buffers: list[Any], threads: int) -> None:
        try:
            self._value = crc32_buffers(buffers, threads=threads)
        except BaseException as exc:  # handed to result()
            self._error = exc

    def result(self) -> int:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value


# ------------------------------------------------------ checksums known from the write
# A writer that checksummed a file while writing it records (identity, crc) here, so the
# manifest written right after does not read the file back. The identity (device, inode,
# size, mtime) must still match, so a file changed since is checksummed from disk.
_KNOWN: dict[str, tuple[tuple[int, int, int, int], int]] = {}
_KNOWN_LOCK = threading.Lock()


def _identity(stat: os.stat_result) -> tuple[int, int, int, int]:
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)


def remember_crc32(path: str | os.PathLike, crc: int) -> None:
    """Record the CRC-32 of a file this process just wrote (see ``known_crc32``)."""
    with _KNOWN_LOCK:
        if len(_KNOWN) > 256:
            _KNOWN.clear()
        _KNOWN[os.path.abspath(path)] = (_identity(os.stat(path)), crc)


def carry_remembered(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """After ``os.replace(src, dst)``: a CRC-32 remembered for ``src`` (or, for a directory,
    for any file under it) now belongs to the same file under ``dst`` (a rename keeps the
    inode, size and mtime the identity check compares)."""
    old, new = os.path.abspath(src), os.path.abspath(dst)
    with _KNOWN_LOCK:
        for key in [k for k in _KNOWN if k == old or k.startswith(old + os.sep)]:
            _KNOWN[new + key[len(old):]] = _KNOWN.pop(key)


def is_remembered(path: str | os.PathLike) -> bool:
    """True when ``known_crc32(path)`` would answer from memory (a CRC-32 recorded at write)."""
    with _KNOWN_LOCK:
        return os.path.abspath(path) in _KNOWN


def known_crc32(path: str | os.PathLike) -> int:
    """The CRC-32 of a file: remembered from its write if the file is unchanged, else read."""
    key = os.path.abspath(path)
    with _KNOWN_LOCK:
        entry = _KNOWN.pop(key, None)
    if entry is not None and entry[0] == _identity(os.stat(path)):
        return entry[1]
    return file_crc32(path)


def describe_files(root: Path, files: list[Path]) -> dict[str, dict[str, int]]:
    """``{relative name: {"size": n, "crc32": c}}`` for the given files under ``root``."""
    return {
        str(path.relative_to(root)): {"size": path.stat().st_size, "crc32": known_crc32(path)}
        for path in files
    }


def write_manifest(path: Path, files: list[Path], metadata: dict[str, Any]) -> None:
    """Write a manifest for ``files`` (relative to the manifest's directory), atomically."""
    doc = {
        "manifest_version": MANIFEST_VERSION,
        "files": describe_files(path.parent, files),
        "metadata": metadata,
    }
    write_bytes(path, json.dumps(doc, indent=1, default=str).encode())


def read_manifest(path: Path) -> dict[str, Any]:
    """A manifest, parsed through ``storage.guard`` (regular file, size and depth caps) and its
    fields type-checked: ``files`` maps names to ``{"size": int, "crc32": int}``."""
    from modelkeep.storage import guard

    if not os.path.lexists(path):
        raise CheckpointNotFoundError(f"verify: no manifest at {path}.")
    doc = guard.read_json(path, what="manifest")
    files = doc.get("files")
    if not isinstance(files, dict):
        raise CorruptCheckpointError(f"verify: {path} is not a modelkeep manifest (no 'files' object).")
    for name, entry in files.items():
        ok = isinstance(entry, dict) and all(
            isinstance(entry.get(k), int) and not isinstance(entry.get(k), bool) and 0 <= entry[k] < limit
            for k, limit in (("size", 1 << 62), ("crc32", 1 << 32))
        )
        if not ok:
            raise CorruptCheckpointError(
                f"verify: {path} lists {str(name)[:100]!r} without a whole-number size and crc32 (found "
                f"{str(entry)[:100]}); the manifest is corrupt."
            )
    if not isinstance(doc.get("metadata", {}), dict):
        raise CorruptCheckpointError(f"verify: the metadata of {path} is not a JSON object; the manifest is corrupt.")
    return doc


def verify_manifest(path: Path) -> dict[str, Any]:
    """Check every file the manifest lists: inside its directory, a regular file, right size, right CRC-32."""
    from modelkeep.storage import guard

    doc = read_manifest(path)
    for name, expected in doc["files"].items():
        target = guard.contained(path.parent, name, source=path, what="listed file")
        if not os.path.lexists(target):
            raise CorruptCheckpointError(
                f"verify: {target} is listed in {path.name} but missing; the checkpoint is incomplete."
            )
        size = guard.regular_file(target, source=path, what="listed file").st_size
        if size != expected["size"]:
            raise CorruptCheckpointError(
                f"verify: {target} has {size} bytes but the manifest expects {expected['size']} "
                "(size check): the file is truncated or was overwritten. Use an older checkpoint."
            )
        crc = file_crc32(target)
        if crc != expected["crc32"]:
            raise CorruptCheckpointError(
                f"verify: {target} fails its CRC-32 check (expected {expected['crc32']:08x}, "
                f"found {crc:08x}): the file is corrupt. Use an older checkpoint."
            )
    return doc
