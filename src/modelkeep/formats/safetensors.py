"""``.safetensors``: every variable of a ``ModelState`` as a named tensor, at disk speed.

The header's ``__metadata__`` holds ``modelkeep`` (config, compile config and training
metadata as JSON) and ``modelkeep_order`` (the variable names in model order).

The file is the standard safetensors layout (8-byte little-endian header length, JSON
header, then the tensors' bytes back to back, no holes), so ``safetensors.numpy.load_file``
and any other safetensors reader open it. modelkeep writes and reads it itself:

* **write**: the header is built from shapes and dtypes alone; then each array's own
  memory goes to the file through ``os.writev`` (large sequential writes, no joined
  buffer, no copy), and one ``fsync``. The CRC-32 for the manifest is computed from the
  same in-memory arrays in a GIL-free thread while the kernel writes and syncs, so the
  manifest never reads the file back (``storage.checksums.remember_crc32``).
* **read**: the file is memory-mapped (copy-on-write) and every tensor is a numpy view of
  the mapping: no read copy; the one copy is the caller's (``variable.assign``).

Example::

    SafetensorsFormat().write(state, Path("w.safetensors"))
    state = SafetensorsFormat().read(Path("w.safetensors"))
"""

from __future__ import annotations

import errno
import json
import math
import mmap
import os
from pathlib import Path
from typing import Any

import numpy as np

from modelkeep.errors import CorruptCheckpointError, FormatError
from modelkeep.formats.base import Format
from modelkeep.state import ModelState
from modelkeep.storage import guard, limits
from modelkeep.storage.checksums import BackgroundCrc32, remember_crc32
from modelkeep.storage.commit import atomic_path

HEADER_LIMIT = 100_000_000  # the default of storage.limits.max_safetensors_header (the spec's cap)
#: the tensor bytes start at a multiple of this offset in the file
DATA_ALIGN = 64
_IOV_MAX = 1024
_WRITE_MAX = 1 << 30  # bytes per writev call (Linux caps one call just under 2 GiB)

_CODES = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16",
    "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8",
    "uint64": "U64", "uint32": "U32", "uint16": "U16", "uint8": "U8", "bool": "BOOL",
    "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
}  # fmt: skip
_DTYPES = {code: name for name, code in _CODES.items()}


class SafetensorsFormat(Format):
    name = "safetensors"
    holds = ("weights",)
    keeps_optimizer = True

    def write(self, state: ModelState, path: Path, *, model: Any = None) -> list[Path]:
        from modelkeep.storage.phases import phase

        with atomic_path(path) as tmp, phase("safetensors write (O_DIRECT from the snapshot when it can)"):
            write_file(state, tmp)
        return [path]

    def read(self, path: Path) -> ModelState:
        self.require(path)
        return _state(*read_file(path), path)

    def read_buffer(self, buffer: Any, source: Any) -> ModelState:
        """A ``ModelState`` of views of ``buffer`` (the bytes of a safetensors file, e.g. a
        verified download); ``source`` names it in errors."""
        return _state(*read_buffer(buffer, source), source)


def _state(tensors: dict[str, np.ndarray], metadata: dict[str, str], path: Any) -> ModelState:
    order = _order(metadata, tensors, path)
    if "modelkeep" in metadata:
        config, compile_config, meta = header_fields(metadata["modelkeep"], path)
    else:  # a foreign safetensors file: its tensors are model weights
        config, compile_config, meta = None, None, {}
        order = ["model/" + k for k in order]
        tensors = {"model/" + k: v for k, v in tensors.items()}
    return ModelState({k: tensors[k] for k in order}, config, compile_config, meta)


# ------------------------------------------------------------------------------ write
def encode_header(state: ModelState, *, align: int = DATA_ALIGN) -> tuple[bytes, list[np.ndarray]]:
    """The header bytes (length prefix included, padded so the data starts at a multiple of
    ``align``) and the arrays to write after it."""
    metadata = {"modelkeep": state.header_json(), "modelkeep_order": json.dumps(list(state.variables))}
    header: dict[str, Any] = {"__metadata__": metadata}
    arrays, offset = [], 0
    for key, value in state.variables.items():
        array = _contiguous(key, value)
        header[key] = {"dtype": _CODES[array.dtype.name], "shape": list(array.shape),
                       "data_offsets": [offset, offset + array.nbytes]}  # fmt: skip
        offset += array.nbytes
        arrays.append(array)
    text = json.dumps(header, separators=(",", ":")).encode()
    padded = len(text) + (-(8 + len(text)) % align)
    return padded.to_bytes(8, "little") + text.ljust(padded, b" "), arrays


def _contiguous(key: str, value: Any) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype.name not in _CODES:
        raise FormatError(
            f"save: variable '{key}' has dtype {array.dtype}, which safetensors cannot hold "
            f"(it holds {', '.join(sorted(_CODES))}). Cast it or save to another format."
        )
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return np.require(array, requirements="C")  # keeps 0-d arrays 0-d, copies only if needed


def write_file(state: ModelState, path: str | os.PathLike, *, fsync: bool = True, checksum: bool = True) -> int:
    """Write ``state`` to ``path`` (no commit protocol: give it a temporary path).

    Returns the file size. With ``checksum``, the file's CRC-32 is computed from memory
    while the bytes are written and recorded for the manifest (``remember_crc32``).

    When the arrays lie back to back in one page-aligned buffer (a
    ``checkpoint.writer.SnapshotBuffers`` snapshot) of at least ``DIRECT_MIN`` bytes, the
    file is written with ``O_DIRECT``: the disk reads that memory itself, and no CPU
    copies it into the page cache (``direct_span``). Elsewhere, or where the file system
    refuses ``O_DIRECT``, ordinary ``writev`` calls.
    """
    header, arrays = encode_header(state)
    span = direct_span(arrays) if fsync else None
    if span is not None:
        header, arrays = encode_header(state, align=DIRECT_ALIGN)
        size = _write_direct(path, header, span, checksum=checksum)
        if size is not None:
            return size
    views = [header] + [_byte_view(a) for a in arrays if a.nbytes]
    crc = BackgroundCrc32(views, threads=1) if checksum else None
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        write_all(fd, views)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
        value = crc.result() if crc is not None else None
    if value is not None:
        remember_crc32(path, value)
    return sum(len(v) for v in views)


#: direct I/O: buffers, file offsets and lengths are multiples of this
DIRECT_ALIGN = 4096
#: below this many bytes of tensors, buffered writes (the page cache costs little)
DIRECT_MIN = 8 << 20


def direct_span(arrays: list[np.ndarray]) -> tuple[memoryview, int] | None:
    """``(view, nbytes)`` when ``arrays`` lie back to back from a ``DIRECT_ALIGN``-aligned
    address in one buffer that extends to the next multiple of ``DIRECT_ALIGN``: ``view``
    is that rounded-up range, ``nbytes`` the arrays' bytes. Else None."""
    arrays = [a for a in arrays if a.nbytes]
    if not arrays or not hasattr(os, "O_DIRECT"):
        return None
    base = arrays[0].base
    if not isinstance(base, np.ndarray) or base.dtype != np.uint8 or base.ndim != 1:
        return None
    start = arrays[0].__array_interface__["data"][0]
    origin = base.__array_interface__["data"][0]
    end = start
    for array in arrays:
        if array.base is not base or array.__array_interface__["data"][0] != end:
            return None
        end += array.nbytes
    nbytes = end - start
    rounded = -(-nbytes // DIRECT_ALIGN) * DIRECT_ALIGN
    lo = start - origin
    if nbytes < DIRECT_MIN or start % DIRECT_ALIGN or lo + rounded > base.nbytes:
        return None
    return memoryview(base[lo : lo + rounded]), nbytes


def _write_direct(path: str | os.PathLike, header: bytes, span: tuple[memoryview, int], *, checksum: bool) -> int | None:
    """Write ``header`` + the span with ``O_DIRECT``, truncate to the exact size, fsync.
    None (nothing left behind) when the file system does not take direct writes."""
    data, nbytes = span
    crc = BackgroundCrc32([header, data[:nbytes]], threads=1) if checksum else None
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT | getattr(os, "O_CLOEXEC", 0), 0o644)
    except OSError:  # EINVAL: tmpfs and some others refuse O_DIRECT
        if crc is not None:
            crc.result()
        return None
    try:
        head = mmap.mmap(-1, len(header))  # page-aligned, as O_DIRECT wants
        head[:] = header
        try:
            _pwrite_all(fd, memoryview(head), 0)
        finally:
            head.close()
        _pwrite_all(fd, data, len(header))
        os.ftruncate(fd, len(header) + nbytes)  # the last block was written whole
        os.fsync(fd)
    except OSError as exc:
        os.close(fd)
        if crc is not None:
            crc.result()
        if exc.errno == errno.EINVAL:  # refused after all (alignment rules of this device)
            os.unlink(path)
            return None
        raise
    os.close(fd)
    if crc is not None:
        remember_crc32(path, crc.result())
    return len(header) + nbytes


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done : done + _WRITE_MAX], offset + done)


def _byte_view(array: np.ndarray) -> memoryview:
    return memoryview(array.reshape(-1).view(np.uint8))


def write_all(fd: int, views: list[Any]) -> None:
    """Write every buffer in order with as few ``writev`` calls as the kernel allows."""
    pending = [memoryview(v) for v in views if len(v)]
    while pending:
        batch, size = [], 0
        for view in pending[:_IOV_MAX]:
            if size + len(view) > _WRITE_MAX:
                if not batch:
                    batch.append(view[:_WRITE_MAX])
                break
            batch.append(view)
            size += len(view)
        written = os.writev(fd, batch)
        while written:  # drop what the kernel took; keep the tail of a partly written view
            head = pending[0]
            if written >= len(head):
                written -= len(head)
                pending.pop(0)
            else:
                pending[0] = head[written:]
                written = 0


# ------------------------------------------------------------------------------- read
def read_header(data: memoryview | bytes, path: Path) -> tuple[dict[str, Any], int]:
    """The parsed JSON header and the offset where tensor bytes start."""
    if len(data) < 8:
        raise _corrupt(path, "it is shorter than the 8-byte header length")
    size = int.from_bytes(data[:8], "little")
    cap = limits.current().max_safetensors_header
    if size > cap or 8 + size > len(data):
        raise _corrupt(path, f"its header length {size} exceeds the file or the {cap}-byte cap")
    with limits.override(max_json_bytes=max(cap, limits.current().max_json_bytes)):
        header = guard.load_json(bytes(data[8 : 8 + size]), source=path, what="safetensors header", expect=dict)
    metadata = header.get("__metadata__")
    if metadata is not None and (not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values())):
        raise _corrupt(path, "its __metadata__ is not an object of strings")
    return header, 8 + size


def read_file(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Map ``path`` and return ``({name: array view}, metadata)``; arrays are writable
    (copy-on-write) and stay valid after the file is replaced or deleted."""
    path = Path(path)
    with open(path, "rb") as handle:
        if os.fstat(handle.fileno()).st_size == 0:
            raise _corrupt(path, "it is empty")
        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
    mapped.madvise(mmap.MADV_WILLNEED)
    return read_buffer(mapped, path)


def read_buffer(buffer: Any, path: Any) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """``read_file`` of bytes already in memory (a writable buffer gives writable arrays)."""
    length = len(buffer)
    if length == 0:
        raise _corrupt(path, "it is empty")
    header, start = read_header(memoryview(buffer)[: min(length, limits.current().max_safetensors_header + 8)], path)
    metadata = header.pop("__metadata__", None) or {}
    tensors, spans = {}, []
    for name, info in header.items():
        tensors[name] = _tensor(buffer, start, length, name, info, path)
        spans.append(tuple(info["data_offsets"]))
    spans.sort()
    end = 0
    for lo, hi in spans:
        if lo != end:
            raise _corrupt(path, f"its tensors leave a gap or overlap at byte {end}")
        end = hi
    if start + end != length:
        raise _corrupt(path, f"its tensors end at byte {start + end} but the file has {length} bytes")
    return tensors, metadata


def _tensor(mapped: Any, start: int, length: int, name: str, info: Any, path: Path) -> np.ndarray:
    try:
        dtype = np.dtype(_numpy_dtype(info["dtype"]))
        shape = tuple(_whole(n) for n in info["shape"])
        lo, hi = (_whole(n) for n in info["data_offsets"])
    except (KeyError, TypeError, ValueError) as exc:
        raise _corrupt(path, f"its entry for '{name}' is malformed ({exc})") from exc
    count = math.prod(shape)  # Python ints: a huge shape cannot wrap around to a small count
    if hi - lo != count * dtype.itemsize or lo < 0 or start + hi > length:
        raise _corrupt(path, f"tensor '{name}' ({info['dtype']}{list(shape)}) does not fit bytes {lo}..{hi}")
    return np.frombuffer(mapped, dtype=dtype, count=count, offset=start + lo).reshape(shape)


def _whole(value: Any) -> int:
    """A JSON number that must be a non-negative integer (no bools, floats or strings)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected a non-negative integer, found {value!r}")
    return value


def header_fields(text: str, path: Path) -> tuple[dict | None, dict | None, dict]:
    """``(model config, compile config, metadata)`` from modelkeep's JSON header, types checked."""
    doc = guard.load_json(text, source=path, what="modelkeep header")
    config, compile_config, meta = doc.get("model_config"), doc.get("compile_config"), doc.get("metadata") or {}
    for what, value in (("model_config", config), ("compile_config", compile_config), ("metadata", meta)):
        if value is not None and not isinstance(value, dict):
            raise _corrupt(path, f"its {what} is a JSON {type(value).__name__}, not an object")
    return config, compile_config, meta


def _numpy_dtype(code: str) -> Any:
    name = _DTYPES[code]
    if name in ("bfloat16", "float8_e4m3fn", "float8_e5m2"):
        import ml_dtypes

        return getattr(ml_dtypes, name)
    return name


def _order(metadata: dict[str, str], tensors: dict[str, np.ndarray], path: Path) -> list[str]:
    order = guard.load_json(metadata.get("modelkeep_order", "null"), source=path, what="modelkeep_order", expect=(list, type(None)))
    order = order or sorted(tensors)
    if not all(isinstance(k, str) for k in order) or len(set(order)) != len(order):
        raise _corrupt(path, "its modelkeep_order is not a list of distinct names")
    missing = [k for k in order if k not in tensors]
    if missing:
        raise FormatError(f"load: {path} names tensor '{missing[0]}' in its order but does not hold it.")
    return order


def _corrupt(path: Path, what: str) -> CorruptCheckpointError:
    return CorruptCheckpointError(
        f"load: {path} is not a readable safetensors file: {what}. It may be truncated or "
        "corrupt; use another checkpoint."
    )
