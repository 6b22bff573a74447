"""The only way modelkeep opens untrusted bytes: paths, JSON, zip archives, HDF5, TF checkpoints.

Every reader goes through here, so the rules of SECURITY.md hold in one place:

* **paths** named by a manifest, a ``checkpoint`` state file or found in a run directory
  resolve inside their directory (no absolute names, no ``..``, no symlink leaving it) and
  are regular files (never ``/dev/zero`` or a FIFO), with their size capped;
* **JSON** is size-capped, depth-checked and type-checked;
* **zip** archives are checked member by member before anything is read (count, names,
  declared and compressed sizes), and a member is read streaming, stopping at its cap;
* **HDF5** files are walked with h5py's low-level API before any data is read: external
  links, soft links, user-defined links, external storage, virtual datasets, unknown filters
  and datasets declaring far more than they store are refused (``guard_h5``);
* **TF checkpoints**: the companion files stay beside the prefix, and every tensor's declared
  size fits in the data file, checked before a tensor is read (``guard_h5``).

A refusal is an ``UnsafeFileError`` (a ``CorruptCheckpointError``) naming the file and the
check; ``malformed`` turns whatever else a damaged file raises into a ``CorruptCheckpointError``
naming the file. Every cap lives in ``storage.limits``.

Example::

    doc = read_json(Path("run/ckpt.manifest.json"), what="manifest")
    target = contained(Path("run"), doc["files"]["ckpt.index"], source=...)
    with open_hdf5(Path("weights.h5")) as f: ...
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, TypeVar

from modelkeep.errors import CheckpointNotFoundError, CorruptCheckpointError, ModelkeepError, UnsafeFileError
from modelkeep.storage import limits
from modelkeep.storage.guard_h5 import check_hdf5_structure, open_hdf5, open_tf_checkpoint

__all__ = [
    "check_keras_zip", "check_tree", "contained", "inside", "load_json", "malformed", "open_hdf5",
    "open_tf_checkpoint", "open_zip", "read_json", "read_member", "read_regular", "refuse", "regular_file",
    "check_hdf5_structure", "read_saved_model_proto", "read_state_file", "state_file_target",
]

F = TypeVar("F", bound=Callable[..., Any])


def refuse(path: Any, check: str, found: str, todo: str = "") -> UnsafeFileError:
    """The error for a refused file: ``<path>: refused (<check>): <found>. <todo>``."""
    todo = todo or "The file may be hostile; do not load it unless you trust where it came from."
    return UnsafeFileError(f"{path}: refused ({check}): {found}. {todo}", path=path, check=check)


# ---------------------------------------------------------------------------------- paths
def _real(path: Path | str) -> str:
    return os.path.realpath(os.fspath(path))


def inside(base: Path | str, path: Path | str) -> bool:
    """Whether ``path``, all symlinks resolved, is ``base`` or lies under it."""
    root, real = _real(base), _real(path)
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


def contained(base: Path, name: Any, *, source: Any, what: str = "file") -> Path:
    """``base / name`` for a ``name`` read from a file (``source``), refused when it leaves ``base``.

    ``name`` must be a relative string without ``..``; the joined path, symlinks resolved, must
    stay under ``base``. Example: ``contained(run, "ckpt.index", source=manifest)``.
    """
    if not isinstance(name, str) or not name or "\x00" in name:
        raise refuse(source, "path-type", f"a {what} name must be a non-empty string, found {type(name).__name__} {str(name)[:80]!r}")
    posix, windows = PurePosixPath(name), PureWindowsPath(name)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or ".." in posix.parts or ".." in windows.parts:
        raise refuse(source, "path-containment", f"it names the {what} {name!r}, which is outside {base}",
                     "Only names relative to the checkpoint's directory, without '..', are read.")
    target = base / name
    if not inside(base, target):
        raise refuse(source, "path-containment", f"the {what} {name!r} resolves (through a symlink) to a path outside {base}",
                     "Replace the symlink with the file itself.")
    return target


def regular_file(path: Path, *, source: Any = None, max_bytes: int | None = None, what: str = "file") -> os.stat_result:
    """``os.stat`` of ``path``, refused unless it is a regular file of at most ``max_bytes``."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise CheckpointNotFoundError(f"{source or path}: the {what} {path} is missing (or a dangling symlink).") from None
    except OSError as exc:
        raise CorruptCheckpointError(f"{path}: cannot be read ({exc.strerror or exc}).") from exc
    if not stat.S_ISREG(info.st_mode):
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else "a device, FIFO or socket"
        raise refuse(source or path, "regular-file", f"the {what} {path} is {kind}, not a regular file",
                     "Only regular files are read.")
    if max_bytes is not None and info.st_size > max_bytes:
        raise refuse(source or path, "size-cap", f"the {what} {path} has {info.st_size} bytes, over the cap of {max_bytes}",
                     "Raise modelkeep.storage.limits if the file is genuine.")
    return info


def read_regular(path: Path, *, max_bytes: int, source: Any = None, what: str = "file") -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (checked before and while reading)."""
    regular_file(path, source=source, max_bytes=max_bytes, what=what)
    with open(path, "rb") as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise refuse(source or path, "size-cap", f"the {what} {path} grew over the cap of {max_bytes} bytes while read")
    return data


def check_tree(directory: Path, *, source: Any = None) -> list[Path]:
    """Every regular file under ``directory``; refused if an entry is a symlink leaving it or
    not a regular file or directory, or if there are more than ``max_tree_entries``."""
    cap = limits.current().max_tree_entries
    files: list[Path] = []
    count = 0
    for root, dirs, names in os.walk(directory, followlinks=False):
        for name in dirs + names:
            count += 1
            if count > cap:
                raise refuse(source or directory, "size-cap", f"it holds more than {cap} entries")
            entry = Path(root) / name
            if entry.is_symlink() and not inside(directory, entry):
                raise refuse(source or directory, "path-containment", f"{entry} is a symlink to {os.readlink(entry)!r}, outside {directory}",
                             "Replace the symlink with the file itself.")
            if name in names:
                mode = os.stat(entry).st_mode if entry.exists() else 0
                if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
                    raise refuse(source or directory, "regular-file", f"{entry} is not a regular file")
                if stat.S_ISREG(mode):
                    files.append(entry)
        dirs[:] = [d for d in dirs if not (Path(root) / d).is_symlink()]
    return files


def state_file_target(directory: Path, named: str, *, source: Any) -> Path:
    """A checkpoint named by a TF ``checkpoint`` state file, refused when it leaves ``directory``.

    ``named`` is what TensorFlow returns (a relative name already joined to the directory, an
    absolute one as written); all symlinks and ``..`` resolved, it must lie inside ``directory``.
    Example: ``state_file_target(run, state.model_checkpoint_path, source=run / "checkpoint")``.
    """
    target = Path(named)
    if not inside(directory, target.parent) or not inside(directory, target):
        raise refuse(source, "path-containment", f"it names the checkpoint {named!r}, outside {directory}",
                     "A state file may only name checkpoints in its own directory; rewrite it or give the prefix.")
    for companion in sorted(target.parent.glob(target.name + ".*")) if target.parent.is_dir() else []:
        if not inside(directory, companion):
            raise refuse(source, "path-containment", f"{companion} is a symlink leaving {directory}",
                         "Replace the symlink with the file itself.")
    return target


def read_state_file(directory: Path) -> Any:
    """TensorFlow's ``CheckpointState`` of ``directory`` (or None), after the file was checked:
    a regular file within ``max_state_file_bytes`` (a listed ``/dev/zero`` would never end).

    Read as ``tf.train.get_checkpoint_state`` reads it, without importing TensorFlow: the text
    format parsed into the same message (``storage.tf_protos``), None when it does not parse,
    relative names joined with ``directory``; an empty ``model_checkpoint_path`` is an error.
    """
    from google.protobuf import text_format

    from modelkeep.storage.tf_protos import message

    state_file = directory / "checkpoint"
    if not os.path.lexists(state_file):
        return None
    caps = limits.current().max_state_file_bytes
    with malformed(state_file, "read the checkpoint state file"):
        text = read_regular(state_file, max_bytes=caps, what="checkpoint state file").decode()
        state = message("CheckpointState")
        try:
            text_format.Merge(text, state)
        except text_format.ParseError:
            return None  # what TensorFlow returns (after logging a warning)
        if not state.model_checkpoint_path:
            raise ValueError(f"Invalid checkpoint state loaded from {directory}")
        base = str(directory)
        if not os.path.isabs(state.model_checkpoint_path):
            state.model_checkpoint_path = os.path.join(base, state.model_checkpoint_path)
        for i, name in enumerate(state.all_model_checkpoint_paths):
            if not os.path.isabs(name):
                state.all_model_checkpoint_paths[i] = os.path.join(base, name)
        return state


# ----------------------------------------------------------------------------------- JSON
def _depth_ok(doc: Any, max_depth: int) -> bool:
    stack = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth > max_depth:
                return False
            children = value.values() if isinstance(value, dict) else value
            stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return True


def load_json(data: bytes | str, *, source: Any, what: str = "JSON document", expect: type | tuple[type, ...] | None = dict) -> Any:
    """Parse untrusted JSON: size cap, depth cap, top-level type; errors name ``source``."""
    caps = limits.current()
    if len(data) > caps.max_json_bytes:
        raise refuse(source, "size-cap", f"its {what} has {len(data)} bytes, over the cap of {caps.max_json_bytes}")
    try:
        doc = json.loads(data)
    except RecursionError:
        raise refuse(source, "json-depth", f"its {what} nests deeper than Python can parse") from None
    except (ValueError, UnicodeDecodeError, TypeError) as exc:
        raise CorruptCheckpointError(f"{source}: its {what} is not valid JSON ({str(exc)[:200]}); the file is corrupt or not what its name says.") from None
    if not _depth_ok(doc, caps.max_json_depth):
        raise refuse(source, "json-depth", f"its {what} nests deeper than {caps.max_json_depth} levels")
    if expect is not None and not isinstance(doc, expect):
        names = expect.__name__ if isinstance(expect, type) else "/".join(t.__name__ for t in expect)
        raise CorruptCheckpointError(f"{source}: its {what} should be a JSON {_json_name(names)} but is {_json_name(type(doc).__name__)}; the file is corrupt.")
    return doc


def _json_name(python: str) -> str:
    return {"dict": "object", "list": "array", "str": "string", "int": "number", "float": "number",
            "NoneType": "null", "bool": "boolean"}.get(python, python)


def read_json(path: Path, *, what: str = "JSON file", expect: type | tuple[type, ...] | None = dict, source: Any = None) -> Any:
    """A JSON file: regular, at most ``max_json_bytes``, parsed by ``load_json``."""
    data = read_regular(path, max_bytes=limits.current().max_json_bytes, source=source, what=what)
    return load_json(data, source=path, what=what, expect=expect)


# ------------------------------------------------------------------------------------ zip
def _member_cap(info: zipfile.ZipInfo) -> int:
    caps = limits.current()
    return max(caps.zip_bomb_floor, caps.max_zip_expansion * info.compress_size)


def open_zip(path: Path | str) -> zipfile.ZipFile:
    """A zip archive whose every member was checked: count, names, declared sizes vs compressed."""
    caps = limits.current()
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise CorruptCheckpointError(f"{path}: not a readable zip archive ({str(exc)[:200]}); it is truncated or corrupt.") from exc
    try:
        infos = archive.infolist()
        if len(infos) > caps.max_zip_members:
            raise refuse(path, "zip-members", f"it has {len(infos)} members, over the cap of {caps.max_zip_members}")
        for info in infos:
            name = info.filename
            parts = PurePosixPath(name.replace("\\", "/")).parts
            if name.startswith(("/", "\\")) or ".." in parts or (len(name) > 1 and name[1] == ":"):
                raise refuse(path, "zip-path", f"member {name!r} names a path outside the archive")
            if info.file_size > _member_cap(info):
                raise refuse(path, "zip-bomb", f"member {name!r} declares {info.file_size} bytes but stores only {info.compress_size}")
    except BaseException:
        archive.close()
        raise
    return archive


def read_member(archive: zipfile.ZipFile, name: str, *, source: Any, max_bytes: int | None = None) -> bytes:
    """One member's bytes, streamed; refused as soon as it inflates past its declared size or cap."""
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise CorruptCheckpointError(f"{source}: the archive has no member {name!r}; it is incomplete or not a Keras file.") from None
    cap = min(max_bytes or limits.current().max_member_read, _member_cap(info), info.file_size)
    if info.file_size > (max_bytes or limits.current().max_member_read):
        raise refuse(source, "size-cap", f"member {name!r} declares {info.file_size} bytes, over the cap of {max_bytes or limits.current().max_member_read}")
    chunks, total = [], 0
    try:
        with archive.open(info) as handle:
            while chunk := handle.read(1 << 20):
                total += len(chunk)
                if total > cap:
                    raise refuse(source, "zip-bomb", f"member {name!r} inflates past its declared {info.file_size} bytes")
                chunks.append(chunk)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error, NotImplementedError) as exc:
        if isinstance(exc, ModelkeepError):
            raise
        raise CorruptCheckpointError(f"{source}: member {name!r} cannot be read ({str(exc)[:200]}); the archive is corrupt.") from exc
    return b"".join(chunks)


def check_keras_zip(path: Path) -> None:
    """Check a ``.keras`` archive before Keras reads it: members (``open_zip``), ``config.json``
    (JSON caps), and the inner HDF5 weights walked without being read (``check_hdf5_structure``)."""
    with open_zip(path) as archive:
        names = set(archive.namelist())
        if "config.json" in names:
            load_json(read_member(archive, "config.json", source=f"{path}!config.json"), source=f"{path}!config.json",
                      what="config.json")
        for name in sorted(names):
            if name.endswith(".h5"):
                info = archive.getinfo(name)
                with archive.open(name) as handle:
                    check_hdf5_structure(handle, source=f"{path}!{name}", size=info.file_size)


# ------------------------------------------------------------------------------ protobuf
def read_saved_model_proto(directory: Path) -> Any:
    """``saved_model.pb`` parsed as a protobuf (nothing of it runs), size-capped."""
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import saved_model_pb2

    path = directory / "saved_model.pb"
    data = read_regular(path, max_bytes=limits.current().max_protobuf_bytes, what="saved_model.pb")
    proto = saved_model_pb2.SavedModel()
    try:
        proto.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise CorruptCheckpointError(f"{path}: not a valid SavedModel protobuf ({str(exc)[:200]}); it is truncated or corrupt.") from exc
    if not proto.meta_graphs:
        raise CorruptCheckpointError(f"{path}: holds no meta graph; it is not a usable SavedModel.")
    return proto


# ------------------------------------------------------------------------------- malformed
@contextlib.contextmanager
def malformed(path: Any, action: str = "load") -> Iterator[None]:
    """Turn what a damaged or hostile file makes a parser raise into a ``CorruptCheckpointError``
    naming ``path`` (``ModelkeepError``s pass unchanged).

    Example: ``with malformed(path, "load"): legacy.load_h5_into(model, f, ...)``.
    """
    try:
        yield
    except ModelkeepError as exc:
        if str(path) in str(exc) or Path(str(path)).name in str(exc):
            raise
        raise _naming(exc, path) from exc
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, RecursionError, OverflowError,
            UnicodeError, OSError, MemoryError, EOFError, AssertionError, RuntimeError, LookupError) as exc:
        detail = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        raise CorruptCheckpointError(
            f"{action}: {path} cannot be read ({type(exc).__name__}{': ' + detail if detail else ''}). The file is "
            "damaged, hostile, not what its name says, or uses something modelkeep does not handle; use another copy."
        ) from exc


def _naming(exc: ModelkeepError, path: Any) -> ModelkeepError:
    """The same error, its message prefixed with the file it is about (attributes kept)."""
    try:
        named = type(exc)(f"{path}: {exc}")
    except TypeError:  # a subclass with another signature: keep the original
        return exc
    named.__dict__.update(exc.__dict__)
    return named


def guarded(action: str, path_arg: int = 0) -> Callable[[F], F]:
    """Decorator form of ``malformed`` for a reader method; ``path_arg`` is the path's position."""
    import functools

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            path = args[path_arg + 1] if len(args) > path_arg + 1 else kwargs.get("path", "the file")
            with malformed(path, action):
                return fn(*args, **kwargs)

        inner.__guarded__ = True  # type: ignore[attr-defined]
        return inner  # type: ignore[return-value]

    return wrap
