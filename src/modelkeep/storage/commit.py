"""The commit protocol: a file under a committed name is always complete.

Every writer writes into a temporary sibling, fsyncs it, renames it over the final
name and fsyncs the directory. A crash at any instant leaves either the old file or
the new one under the name, never a part of one. Leftover temporaries of a killed
save carry ``.mk-tmp-`` in their names; :func:`clean_leftovers` removes them and no
reader ever opens them.

Example::

    with atomic_path("model.keras") as tmp:
        write_keras_zip(tmp)          # any writer that takes a path
    # here model.keras is complete and durable
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

from modelkeep.errors import CheckpointWriteError

TMP_MARK = ".mk-tmp-"
_RENAME_EXCHANGE = 2


def temp_sibling(path: str | os.PathLike, *, keep_suffix: str = "") -> Path:
    """A unique temporary name in the same directory (so the rename stays on one disk)."""
    final = Path(path)
    token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    return final.with_name(f".{final.name}{TMP_MARK}{token}{keep_suffix}")


def fsync_path(path: str | os.PathLike) -> None:
    """fsync a file or a directory."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if os.path.isdir(path) else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike) -> None:
    """fsync every file and directory below ``root`` (itself included)."""
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            fsync_path(os.path.join(dirpath, name))
        fsync_path(dirpath)


def write_error(path: str | os.PathLike, exc: OSError) -> CheckpointWriteError:
    """A clear error for a failed save: the path, the cause, what to do."""
    cause = {
        errno.ENOSPC: "the disk is full",
        errno.EDQUOT: "the disk quota is exceeded",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.EROFS: "the file system is read-only",
        errno.EIO: "an I/O error",
    }.get(exc.errno or 0, exc.strerror or str(exc))
    return CheckpointWriteError(
        exc.errno or errno.EIO,
        f"save: could not write {path}: {cause}. Nothing under that name was "
        "replaced; free space or fix the permissions and save again.",
    )


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, keep_suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary sibling path; on success commit it (file or directory) to ``path``.

    ``keep_suffix`` ends the temporary name with the given suffix, for writers that
    check the extension (``.weights.h5``). By default the final name's suffixes are kept.
    """
    final = Path(path)
    if keep_suffix is None:
        keep_suffix = "".join(final.suffixes)
    tmp = temp_sibling(final, keep_suffix=keep_suffix)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        commit(tmp, final)
    except OSError as exc:
        _remove(tmp)
        if isinstance(exc, CheckpointWriteError):
            raise
        raise write_error(final, exc) from exc
    except BaseException:
        _remove(tmp)
        raise


def commit(tmp: Path, final: Path) -> None:
    """fsync ``tmp`` (file or tree), move it to ``final`` atomically, fsync the directory."""
    if tmp.is_dir():
        fsync_tree(tmp)
        _replace_dir(tmp, final)
        _carry_crc(tmp, final)
    else:
        fsync_path(tmp)
        os.replace(tmp, final)
        _carry_crc(tmp, final)
    fsync_path(final.parent)


def _carry_crc(tmp: Path, final: Path) -> None:
    # a CRC-32 computed from memory while ``tmp`` was written stays known under its final
    # name, or the manifest written next reads the whole file back (checksums imports this module)
    from modelkeep.storage.checksums import carry_remembered

    carry_remembered(tmp, final)


def commit_group(pairs: Sequence[tuple[Path, Path]]) -> None:
    """Commit several files that form one checkpoint; the last pair is the one readers key on.

    Each rename is atomic; the key file (a TF checkpoint's ``.index``) goes last, so a
    reader that finds it finds the data it names.
    """
    for tmp, _final in pairs:
        fsync_path(tmp)
    for tmp, final in pairs:
        os.replace(tmp, final)
        _carry_crc(tmp, final)
    fsync_path(pairs[-1][1].parent)


def _replace_dir(tmp: Path, final: Path) -> None:
    if not final.exists():
        os.rename(tmp, final)
        return
    if _exchange(tmp, final):
        # tmp now holds the old directory
        shutil.rmtree(tmp, ignore_errors=True)
        return
    old = temp_sibling(final, keep_suffix=".old")
    os.rename(final, old)
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step with Linux renameat2(RENAME_EXCHANGE); False if unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    return result == 0


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write a small file atomically and durably."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)


def is_leftover(name: str) -> bool:
    """True for the temporary names of an interrupted save."""
    return TMP_MARK in name


def clean_leftovers(directory: str | os.PathLike) -> list[Path]:
    """Remove temporaries of saves whose process is gone; return what was removed."""
    from modelkeep.storage import fs

    if fs.is_url(directory):  # an object store: generations of killed uploads (storage.objects)
        from modelkeep.storage.objects import ObjectDir

        return [fs.RemotePath(u) for u in ObjectDir(str(directory)).clean()]
    removed = []
    root = Path(directory)
    if not root.is_dir():
        return removed
    for entry in root.iterdir():
        if not is_leftover(entry.name):
            continue
        pid_text = entry.name.split(TMP_MARK, 1)[1].split("-", 1)[0]
        if pid_text.isdigit() and pid_alive(int(pid_text)):
            continue
        _remove(entry)
        removed.append(entry)
    return removed


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (its leftovers must not be removed)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
