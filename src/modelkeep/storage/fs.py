"""Local paths and fsspec URLs behind one interface.

A path with a scheme (``s3://b/run``, ``gs://...``, ``memory://...``, any fsspec protocol) is
a URL, never a local folder named ``s3:``; ``file://`` URLs are local paths. A scheme whose
file system is not installed, or that fsspec does not know, raises ``StorageURLError``
naming the extra to install (``pip install 'modelkeep[s3]'``).

Credentials and endpoints come the way s3fs/gcsfs users give them: the environment
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ``AWS_PROFILE``,
``GOOGLE_APPLICATION_CREDENTIALS``), their config files, or ``set_storage_options(prefix,
**options)``, whose options go to the file system of every URL under ``prefix``.

Transfers are parallel: files go up together, each large one in concurrent multipart parts
(s3fs), and come down in concurrent ranged reads streamed in place (into a mapped local file,
or into memory for ``download_buffers``); each file's CRC-32 is computed from the chunks as
they arrive, and no chunk is copied twice.

Example::

    set_storage_options("s3://bucket", endpoint_url="http://127.0.0.1:8333")
    upload_files([(Path("local.bin"), "s3://bucket/run/remote.bin")])
    download_files([("s3://bucket/run/remote.bin", Path("copy.bin"), size)])
    [(buffer, crc)] = download_buffers([("s3://bucket/run/remote.bin", size)])
"""

from __future__ import annotations

import asyncio
import mmap
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelkeep.errors import ModelkeepError, StorageURLError
from modelkeep.storage.checksums import crc32_combine

try:  # the same CRC-32 as zlib, faster, GIL released
    from isal.isal_zlib import crc32 as _crc32
except ImportError:  # pragma: no cover - isal is a dependency
    from zlib import crc32 as _crc32

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
#: scheme -> (the modelkeep extra, the package it brings)
EXTRAS = {"s3": ("s3", "s3fs"), "s3a": ("s3", "s3fs"), "gs": ("gcs", "gcsfs"), "gcs": ("gcs", "gcsfs")}
#: parallel requests of one transfer (parts of one file and files of one checkpoint)
CONCURRENCY = int(os.environ.get("MODELKEEP_S3_CONCURRENCY", "8"))
#: size of one ranged read / multipart part
PART_SIZE = 32 << 20

_OPTIONS: dict[str, dict[str, Any]] = {}
_OPTIONS_LOCK = threading.Lock()


# ----------------------------------------------------------------------------- paths
def scheme_of(path: Any) -> str | None:
    """The URL scheme of ``path`` (``"s3"``), or None for a plain local path."""
    if isinstance(path, RemotePath):
        return path.scheme
    if not isinstance(path, str):
        return None
    match = _SCHEME.match(path)
    return match.group(1).lower() if match else None


def is_url(path: Any) -> bool:
    """True for a remote URL (any scheme but ``file``); ``file://`` is a local path."""
    scheme = scheme_of(path)
    return scheme is not None and scheme != "file"


def local_path(path: str | os.PathLike) -> Path:
    """``path`` as a local ``Path`` (``file://x`` -> ``x``); a remote URL is an error."""
    if isinstance(path, RemotePath) or is_url(path):
        raise StorageURLError(f"{path} is a remote URL, not a local path; this operation needs a local file.")
    text = os.fspath(path)
    if scheme_of(text) == "file":
        text = text[len("file://") :]
    return Path(text)


def as_location(path: str | os.PathLike) -> Path | RemotePath:
    """A ``RemotePath`` for a URL, else a local ``Path``: what a directory argument becomes."""
    if isinstance(path, RemotePath):
        return path
    if is_url(path):
        return RemotePath(str(path))
    return local_path(path)


def set_storage_options(prefix: str, **options: Any) -> None:
    """Options (``endpoint_url``, ``key``, ``secret``, ``token``, ...) for every URL under ``prefix``.

    Example: ``set_storage_options("s3://bucket", endpoint_url="http://127.0.0.1:8333")``.
    """
    if not is_url(prefix):
        raise StorageURLError(f"set_storage_options: {prefix!r} is not a URL such as s3://bucket.")
    with _OPTIONS_LOCK:
        _OPTIONS[prefix.rstrip("/")] = dict(options)


def options_for(url: str) -> dict[str, Any]:
    """The options of the longest ``set_storage_options`` prefix that ``url`` starts with."""
    with _OPTIONS_LOCK:
        matches = [p for p in _OPTIONS if url == p or url.startswith(p + "/")]
        return dict(_OPTIONS[max(matches, key=len)]) if matches else {}


def filesystem(url: str, storage_options: dict[str, Any] | None = None) -> tuple[Any, str]:
    """The fsspec file system for ``url`` and the path inside it (no scheme)."""
    scheme = scheme_of(url)
    if scheme is None or scheme == "file":
        raise StorageURLError(f"{url} is not a remote URL.")
    extra, package = EXTRAS.get(scheme, (None, None))
    try:
        import fsspec
    except ImportError as exc:
        hint = f"pip install 'modelkeep[{extra}]'" if extra else "pip install fsspec (and the package of that scheme)"
        raise StorageURLError(
            f"{url}: URLs need the fsspec package, which is not installed. Install it: {hint}"
        ) from exc
    try:
        cls = fsspec.get_filesystem_class(scheme)
    except ImportError as exc:
        hint = f"pip install 'modelkeep[{extra}]'" if extra else f"install the fsspec file system of {scheme}://"
        raise StorageURLError(
            f"{url}: the file system of {scheme}:// is not installed ({package or exc}). Install it: {hint}"
        ) from exc
    except ValueError as exc:
        raise StorageURLError(
            f"{url}: unknown URL scheme {scheme}://; expected a local path or an fsspec URL "
            "(s3://, gs://, memory://, ...). A path with a scheme is never taken as a local folder."
        ) from exc
    options = {**_defaults(scheme), **options_for(url), **(storage_options or {})}
    return cls(**options), cls._strip_protocol(url)


def _defaults(scheme: str) -> dict[str, Any]:
    out: dict[str, Any] = {"use_listings_cache": False}  # another process may commit at any time
    if scheme in ("s3", "s3a"):
        out["max_concurrency"] = CONCURRENCY
        out["config_kwargs"] = {"connect_timeout": 5, "read_timeout": 60, "retries": {"max_attempts": 3}}
    return out


@dataclass(frozen=True)
class RemotePath:
    """A URL with the few ``Path`` operations the checkpoint code uses on directories.

    It has no ``__fspath__``: a local file function given one fails instead of creating a
    folder named ``s3:``. Example: ``(RemotePath("s3://b/run") / "ckpt-5").name == "ckpt-5"``.
    """

    url: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", self.url.rstrip("/") if self.url.count("/") > 2 else self.url)

    @property
    def scheme(self) -> str:
        return scheme_of(self.url) or ""

    @property
    def name(self) -> str:
        head = self.url.split("://", 1)[1]
        return head.rsplit("/", 1)[-1] if "/" in head else ""

    @property
    def parent(self) -> RemotePath:
        scheme, head = self.url.split("://", 1)
        return RemotePath(f"{scheme}://{head.rsplit('/', 1)[0]}") if "/" in head else self

    def __truediv__(self, other: str) -> RemotePath:
        return RemotePath(f"{self.url}/{str(other).strip('/')}")

    def __str__(self) -> str:
        return self.url

    def is_dir(self) -> bool:
        return self.exists()

    def exists(self) -> bool:
        fs, path = filesystem(self.url)
        return bool(call(fs.exists, path, what=f"check {self.url}"))

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Object stores have no directories: nothing to create."""


# ----------------------------------------------------------------------------- errors
class RemoteStorageError(ModelkeepError, OSError):
    """A request to an object store failed (server down, no permission, network)."""


def call(fn: Any, *args: Any, what: str, **kwargs: Any) -> Any:
    """``fn(*args)``; a failure of the store becomes a ``RemoteStorageError`` saying what failed."""
    try:
        return fn(*args, **kwargs)
    except (ModelkeepError, FileNotFoundError, FileExistsError):
        raise
    except Exception as exc:  # noqa: BLE001 - botocore/aiohttp/gcsfs errors vary; all mean the same here
        raise remote_error(what, exc) from exc


def remote_error(what: str, exc: BaseException) -> RemoteStorageError:
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return RemoteStorageError(
        None,  # no errno: the message is the cause (write_error keeps it)
        f"could not {what}: {type(exc).__name__}: {detail}. Check the endpoint, the credentials "
        "and that the server is up, then try again.",
    )


# ----------------------------------------------------------------------------- transfers
def _is_async(fs: Any) -> bool:
    return bool(getattr(fs, "async_impl", False)) and getattr(fs, "loop", None) is not None


def _run(fs: Any, coroutine: Any) -> Any:
    from fsspec.asyn import sync

    return sync(fs.loop, lambda: coroutine)


def upload_files(pairs: Sequence[tuple[Path, str]], *, storage_options: dict | None = None) -> None:
    """Upload local files to URLs, all at once; large files in concurrent multipart parts."""
    if not pairs:
        return
    fs, _ = filesystem(pairs[0][1], storage_options)
    targets = [(Path(local), fs._strip_protocol(url)) for local, url in pairs]
    what = f"upload {len(pairs)} file(s) to {pairs[0][1].rsplit('/', 1)[0]}"
    if _is_async(fs):

        async def run() -> None:
            await asyncio.gather(*(fs._put_file(str(lp), rp, max_concurrency=CONCURRENCY) for lp, rp in targets))

        call(_run, fs, run(), what=what)
    else:
        for lp, rp in targets:
            call(fs.put_file, str(lp), rp, what=what)


def download_files(items: Sequence[tuple[str, Path, int]], *, storage_options: dict | None = None) -> list[int]:
    """Download ``(url, local path, size)`` items; return the CRC-32 of each, computed on arrival.

    Each file is preallocated, mapped, and filled in place by concurrent ranged reads of
    ``PART_SIZE`` (at most ``CONCURRENCY`` in flight over all files); a short read is an error.
    """
    if not items:
        return []
    for _url, local, _size in items:
        Path(local).parent.mkdir(parents=True, exist_ok=True)
    targets = [_FileTarget(Path(local), size) for _url, local, size in items]
    try:
        return _download(items[0][0], [(u, t.view) for (u, _l, _s), t in zip(items, targets)], storage_options)
    finally:
        for target in targets:
            target.close()


def download_buffers(items: Sequence[tuple[str, int]], *, storage_options: dict | None = None) -> list[tuple[Any, int]]:
    """Download ``(url, size)`` items into new memory; return ``(buffer, crc32)`` of each.

    A buffer is an anonymous mapping (transparent huge pages asked for: fewer page faults
    than many small allocations) that ranged reads fill in place, each chunk checksummed as
    it arrives; nothing is written to disk and no second copy is made. ``numpy.frombuffer``
    views of it stay valid as long as they live.

    Example: ``[(buf, crc)] = download_buffers([("s3://b/run/w.safetensors", size)])``.
    """
    if not items:
        return []
    buffers = [_anonymous(size) for _url, size in items]
    views = [(url, memoryview(buf) if size else memoryview(bytearray())) for (url, size), buf in zip(items, buffers)]
    try:
        crcs = _download(items[0][0], views, storage_options)
    finally:
        for _url, view in views:
            view.release()
    return list(zip(buffers, crcs))


def _anonymous(size: int) -> Any:
    if not size:
        return bytearray()
    buffer = mmap.mmap(-1, size)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            buffer.madvise(mmap.MADV_HUGEPAGE)
        except OSError:  # pragma: no cover - a kernel without THP
            pass
    return buffer


class _FileTarget:
    """A local file of ``size`` bytes, mapped writable (``view``) until ``close``."""

    def __init__(self, path: Path, size: int) -> None:
        self.handle = open(path, "w+b")  # noqa: SIM115 - closed in close()
        self.map: mmap.mmap | None = None
        try:
            self.handle.truncate(size)
            self.map = mmap.mmap(self.handle.fileno(), size) if size else None
        except BaseException:
            self.handle.close()
            raise
        self.view = memoryview(self.map) if self.map is not None else memoryview(bytearray())

    def close(self) -> None:
        self.view.release()
        if self.map is not None:
            self.map.close()
        self.handle.close()


def _download(first_url: str, views: Sequence[tuple[str, memoryview]], storage_options: dict | None) -> list[int]:
    fs, _ = filesystem(first_url, storage_options)
    what = f"download {len(views)} file(s) from {first_url.rsplit('/', 1)[0]}"
    if not _is_async(fs):
        out = []
        for url, view in views:
            data = call(fs.cat_file, fs._strip_protocol(url), what=what)
            _check_length(url, len(data), len(view))
            view[:] = data
            out.append(_crc32(data))
        return out
    return call(_run, fs, _download_async(fs, views), what=what)


def _check_length(url: str, got: int, expected: int) -> None:
    if got != expected:
        from modelkeep.errors import CorruptCheckpointError

        raise CorruptCheckpointError(
            f"load: {url} has {got} bytes where {expected} were expected (size check); the object "
            "was overwritten or truncated. Use an older checkpoint."
        )


async def _download_async(fs: Any, views: Sequence[tuple[str, memoryview]]) -> list[int]:
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(url: str, view: memoryview) -> int:
        path, size = fs._strip_protocol(url), len(view)
        bounds = [(start, min(size, start + PART_SIZE)) for start in range(0, size, PART_SIZE)]

        async def part(start: int, end: int) -> int:
            async with gate:
                return await _read_range(fs, path, url, start, end, view[start:end])

        crcs = await asyncio.gather(*(part(s, e) for s, e in bounds))
        if not bounds:  # an empty object: still check that it is there and empty
            info = await fs._info(path)
            _check_length(url, int(info.get("size") or 0), 0)
        crc = 0
        for (start, end), value in zip(bounds, crcs):
            crc = value if start == 0 else crc32_combine(crc, value, end - start)
        return crc

    return list(await asyncio.gather(*(one(u, v) for u, v in views)))


#: attempts of one ranged read whose body broke off mid-transfer (the request itself is retried by s3fs)
READ_ATTEMPTS = 2


async def _read_range(fs: Any, path: str, url: str, start: int, end: int, dest: memoryview) -> int:
    """Bytes ``[start, end)`` of ``path`` into ``dest``; their CRC-32, computed chunk by chunk."""
    for attempt in range(READ_ATTEMPTS):
        try:
            if hasattr(fs, "_call_s3"):
                return await _stream_s3(fs, path, url, start, end, dest)
            data = await fs._cat_file(path, start=start, end=end)  # other stores: one buffer per part
            _check_length(f"{url} [bytes {start}-{end})", len(data), end - start)
            dest[:] = data
            return _crc32(data)
        except (ModelkeepError, FileNotFoundError, PermissionError):
            raise
        except Exception:  # noqa: BLE001 - a broken stream: read the part again, once
            if attempt + 1 == READ_ATTEMPTS:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


async def _stream_s3(fs: Any, path: str, url: str, start: int, end: int, dest: memoryview) -> int:
    """One S3 ranged GET streamed into ``dest``: each network chunk is copied once, where it
    belongs, and checksummed while it is in cache (s3fs's ``_cat_file`` joins the chunks into
    one more buffer first)."""
    bucket, key, version = fs.split_path(path)
    extra = {"VersionId": version} if version else {}
    response = await fs._call_s3("get_object", Bucket=bucket, Key=key, Range=f"bytes={start}-{end - 1}",
                                 **getattr(fs, "req_kw", {}), **extra)  # fmt: skip
    body = response["Body"]
    stream = getattr(getattr(body, "raw_stream", None), "content", None)
    chunked = stream is not None and hasattr(stream, "readchunk") and hasattr(stream, "at_eof")
    pos, crc, size = 0, 0, len(dest)
    try:
        while True:
            data = (await stream.readchunk())[0] if chunked else await body.read(1 << 20)
            if not data:
                if not chunked or stream.at_eof():
                    break
                continue
            count = len(data)
            if pos + count > size:
                _check_length(f"{url} [bytes {start}-{end})", pos + count, size)
            dest[pos : pos + count] = data
            crc = _crc32(data, crc)
            pos += count
    finally:
        body.close()
    _check_length(f"{url} [bytes {start}-{end})", pos, size)
    return crc


def put_bytes(url: str, data: bytes, *, exclusive: bool = False, storage_options: dict | None = None) -> bool:
    """Write a small object. With ``exclusive``, only if no object has that name yet.

    Returns True when the file system took ``mode="create"`` (s3fs sends S3's
    ``If-None-Match: *``; memory:// checks itself); False when the store took no condition and
    the name was only checked just before the write (a race stays possible there).
    Raises ``FileExistsError`` when the name is taken.
    """
    fs, path = filesystem(url, storage_options)
    what = f"write {url}"
    if not exclusive:
        call(fs.pipe_file, path, data, what=what)
        return False
    try:
        call(fs.pipe_file, path, data, mode="create", what=what)
        return True
    except FileExistsError:
        raise
    except TypeError:  # a file system without mode=: check, then write
        if call(fs.exists, path, what=f"check {url}"):
            raise FileExistsError(url) from None
        call(fs.pipe_file, path, data, what=what)
        return False
    except RemoteStorageError as exc:
        if "precondition" in str(exc).lower() or "pre-condition" in str(exc).lower():
            raise FileExistsError(url) from exc
        raise


def read_many(urls: Sequence[str], *, storage_options: dict | None = None) -> dict[str, bytes | BaseException]:
    """The bytes of several small objects, fetched concurrently; a failure is kept per URL."""
    if not urls:
        return {}
    fs, _ = filesystem(urls[0], storage_options)
    paths = [fs._strip_protocol(u) for u in urls]
    got = call(fs.cat, paths, on_error="return", what=f"read {len(urls)} object(s)")
    if not isinstance(got, dict):  # a single path returns bytes
        got = {paths[0]: got}
    return {u: got.get(p, FileNotFoundError(u)) for u, p in zip(urls, paths)}


def list_tree(url: str, *, storage_options: dict | None = None) -> dict[str, int]:
    """``{path relative to url: size}`` of every object below ``url`` (one listing)."""
    fs, root = filesystem(url, storage_options)
    root = root.rstrip("/")
    found = call(fs.find, root, detail=True, what=f"list {url}")
    out = {}
    for name, info in found.items():
        name = name.rstrip("/")
        if info.get("type") == "directory" or not name.startswith(root + "/"):
            continue
        out[name[len(root) + 1 :]] = int(info.get("size") or 0)
    return out


def remove(urls: Sequence[str], *, storage_options: dict | None = None) -> None:
    """Delete objects (missing ones are fine)."""
    if not urls:
        return
    fs, _ = filesystem(urls[0], storage_options)
    paths = [fs._strip_protocol(u) for u in urls]
    try:
        call(fs.rm, paths, what=f"delete {len(paths)} object(s) under {urls[0].rsplit('/', 1)[0]}")
    except FileNotFoundError:
        pass
