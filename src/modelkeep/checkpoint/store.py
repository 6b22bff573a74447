"""Checkpoints on disk: manifests, listing, verification, and modelkeep's own layout.

Every checkpoint modelkeep writes has a manifest (``storage.checksums``) listing its
files with sizes and CRC-32s, plus metadata (step, epoch, logs, wall time, versions):

* a checkpoint in a user-chosen format (``saved_modelname``, ``weights.05.h5``,
  ``model_dir/``): a sidecar ``<name>.manifest.json`` beside it, written after the
  checkpoint itself is committed;
* modelkeep's own backup checkpoints: a directory ``ckpt-<step>/`` holding
  ``state.safetensors`` and ``manifest.json``, committed with one rename.

A checkpoint whose files are there but whose manifest is not is *incomplete* (the save
was interrupted between the two commits) and is never chosen for resume.

Example::

    info = save_state(directory, state, step=120)      # ckpt-000000120/
    [c.status for c in list_checkpoints(directory)]    # ['ok', ...], newest first
    state = load_state(latest_good(directory).path)
"""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from modelkeep.errors import CheckpointNotFoundError, CorruptCheckpointError, FormatError, ModelkeepError
from modelkeep.formats import registry
from modelkeep.formats.base import Format
from modelkeep.formats.safetensors import SafetensorsFormat
from modelkeep.formats.tf_checkpoint import DATA_SUFFIX, INDEX_SUFFIX, STATE_FILE
from modelkeep.state import ModelState
from modelkeep.storage import guard
from modelkeep.storage.checksums import (
    MANIFEST_VERSION,
    describe_files,
    read_manifest,
    verify_manifest,
    write_manifest,
)
from modelkeep.storage.commit import atomic_path, commit, fsync_path, is_leftover, temp_sibling, write_bytes
from modelkeep.storage.fs import is_url
from modelkeep.storage.phases import phase

MANIFEST_SUFFIX = ".manifest.json"
#: the manifest of a checkpoint whose files are being committed under an existing name
PENDING_SUFFIX = ".manifest.pending.json"
STORE_PREFIX = "ckpt-"
STORE_STATE = "state.safetensors"
STORE_MANIFEST = "manifest.json"

OK, CORRUPT, INCOMPLETE = "ok", "corrupt", "incomplete"


@dataclass
class CheckpointInfo:
    """What ``list_checkpoints`` tells of one checkpoint."""

    path: Path
    format: str
    status: str
    step: int | None = None
    epoch: int | None = None
    logs: dict[str, float] = field(default_factory=dict)
    wall_time: float | None = None
    size: int = 0
    problem: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["path"] = str(self.path)
        return out


# ------------------------------------------------------------------------ manifests
def manifest_path(target: Path) -> Path:
    """Where the manifest of the checkpoint at ``target`` lives."""
    if _is_store_dir(target):
        return target / STORE_MANIFEST
    return target.with_name(target.name + MANIFEST_SUFFIX)


def write_sidecar_manifest(target: Path, fmt: Format, metadata: dict[str, Any]) -> Path:
    """Write ``<target>.manifest.json`` for a committed checkpoint in any format."""
    path = manifest_path(target)
    write_manifest(path, fmt.files(target), {**metadata, "format": fmt.name, "name": target.name})
    return path


def _is_store_dir(path: Path) -> bool:
    # a TF checkpoint prefix may be called ckpt-5 too; only a directory is a backup
    return path.name.startswith(STORE_PREFIX) and path.is_dir() and not (path / "saved_model.pb").exists()


# ------------------------------------------------------------------------ own layout
def store_name(step: int) -> str:
    return f"{STORE_PREFIX}{step:09d}"


def save_state(directory: Path | str, state: ModelState, *, step: int, metadata: dict | None = None) -> CheckpointInfo:
    """Commit ``state`` as ``directory/ckpt-<step>/`` (safetensors + manifest), in one rename."""
    if is_url(directory):  # an object store: staged here, committed there (checkpoint.remote)
        from modelkeep.checkpoint import remote

        return remote.save_state(directory, state, step=step, metadata=metadata)
    directory = Path(directory)
    target = directory / store_name(step)
    meta = {**state.metadata, **(metadata or {}), "step": step, "wall_time": time.time()}
    with atomic_path(target, keep_suffix="") as tmp:
        tmp.mkdir()
        SafetensorsFormat().write(ModelState(state.variables, state.model_config, state.compile_config, meta), tmp / STORE_STATE)
        with phase("manifest crc-32 (files not checksummed while written)"):
            write_manifest(tmp / STORE_MANIFEST, [tmp / STORE_STATE], {**_summary(meta), "format": "modelkeep backup"})
    _remember_written(target / STORE_MANIFEST)
    return info_for(target, verify=False)


def load_state(path: Path | str) -> ModelState:
    """Verify and read a checkpoint directory of modelkeep's own layout."""
    if is_url(path):
        from modelkeep.checkpoint import remote

        return remote.load_state(path)
    path = Path(path)
    if not (path / STORE_MANIFEST).exists():
        raise CheckpointNotFoundError(
            f"load: {path} has no {STORE_MANIFEST}; it is not a complete modelkeep checkpoint."
        )
    verify_manifest(path / STORE_MANIFEST)
    return SafetensorsFormat().read(path / STORE_STATE)


def _summary(meta: dict[str, Any]) -> dict[str, Any]:
    keys = ("step", "epoch", "batch", "logs", "wall_time", "versions", "monitor", "best")
    return {k: meta[k] for k in keys if k in meta}


# ------------------------------------------------------------------------ verified once
# Retention lists (and verifies) a directory after every save; re-reading every kept
# checkpoint each time costs a read of max_to_keep states per save. A checkpoint this
# process verified is not re-read
# while its manifest and files keep their identity (device, inode, size, mtime): any change
# to a file since, by anyone, makes it read and checked again. File systems stamp mtimes with
# a coarse clock (a few ms), so a record is trusted only when it was made at least
# _MTIME_SLACK_NS after the newest mtime it holds: a later change then gets a newer mtime.
_VERIFIED: dict[str, tuple[int, tuple[tuple[int, int, int, int], ...]]] = {}
_MTIME_SLACK_NS = 50_000_000


def _identities(manifest: Path) -> tuple[tuple[int, int, int, int], ...] | None:
    try:
        doc = read_manifest(manifest)
        paths = [manifest, *(manifest.parent / name for name in doc["files"])]
        stats = [os.stat(p, follow_symlinks=False) for p in paths]
    except (ModelkeepError, OSError, ValueError):
        return None
    return tuple((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) for st in stats)


def _remember_verified(manifest: Path) -> None:
    ident = _identities(manifest)
    if ident is not None:
        if len(_VERIFIED) > 1024:
            _VERIFIED.clear()
        _VERIFIED[os.path.abspath(manifest)] = (time.time_ns(), ident)


def _remember_written(manifest: Path) -> None:
    """A manifest this process just committed, its checksums taken from the bytes it wrote:
    trusted while the files keep the identities they have now (as ``known_crc32`` trusts a
    CRC-32 remembered from a write), without the mtime slack a read-back record waits for."""
    ident = _identities(manifest)
    if ident is not None:
        if len(_VERIFIED) > 1024:
            _VERIFIED.clear()
        _VERIFIED[os.path.abspath(manifest)] = (max(i[3] for i in ident) + _MTIME_SLACK_NS, ident)


def _still_verified(manifest: Path) -> bool:
    known = _VERIFIED.get(os.path.abspath(manifest))
    if known is None:
        return False
    when, ident = known
    return when - max(i[3] for i in ident) >= _MTIME_SLACK_NS and ident == _identities(manifest)


# ------------------------------------------------------------------------ listing
def _candidates(directory: Path) -> list[Path]:
    """Every checkpoint-like entry of a directory (manifests, store dirs, foreign files)."""
    seen: dict[str, Path] = {}
    for entry in sorted(directory.iterdir()):
        name = entry.name
        if name == STATE_FILE or is_leftover(name):
            continue
        if name.endswith(MANIFEST_SUFFIX):
            seen[name[: -len(MANIFEST_SUFFIX)]] = entry.with_name(name[: -len(MANIFEST_SUFFIX)])
        elif _is_store_dir(entry):
            seen[name] = entry
        elif name.endswith(INDEX_SUFFIX):
            seen[name[: -len(INDEX_SUFFIX)]] = entry.with_name(name[: -len(INDEX_SUFFIX)])
        elif name.endswith(DATA_SUFFIX):
            seen.setdefault(name[: -len(DATA_SUFFIX)], entry.with_name(name[: -len(DATA_SUFFIX)]))
        elif entry.is_dir() and (entry / "saved_model.pb").exists():
            seen[name] = entry
        elif entry.suffix in (".h5", ".hdf5", ".keras", ".safetensors"):
            seen[name] = entry
    return list(seen.values())


def _format_of(path: Path) -> Format | None:
    if _is_store_dir(path):
        return None
    try:
        return registry.detect(path)
    except (FormatError, OSError):
        return None


def info_for(path: Path, *, verify: bool = True) -> CheckpointInfo:
    """Status and metadata of one checkpoint; with ``verify``, every checksum is checked.

    A checkpoint that cannot even be described (a hostile or mangled manifest) is reported
    ``corrupt`` with the reason, so one bad entry never stops the listing of a directory.
    """
    path = Path(path)
    try:
        with guard.malformed(path, "list"):
            return _info_for(path, verify=verify)
    except ModelkeepError as exc:
        return CheckpointInfo(path, "unknown", CORRUPT, problem=str(exc))


def _info_for(path: Path, *, verify: bool) -> CheckpointInfo:
    fmt = _format_of(path)
    fmt_name = "modelkeep backup" if _is_store_dir(path) else (fmt.name if fmt else "unknown")
    mpath = manifest_path(path)
    files = [path / STORE_STATE] if _is_store_dir(path) else (fmt.files(path) if fmt else [path])
    size = sum(f.stat().st_size for f in files if f.exists())
    pending = pending_manifest_path(path)
    if pending.exists() and _verifies(pending):
        mpath = pending  # the save finished its files but not the manifest's rename
    if not mpath.exists():
        missing = [f.name for f in files if not f.exists()]
        problem = f"missing {', '.join(missing)}" if missing else "no manifest: the save did not finish"
        return CheckpointInfo(path, fmt_name, INCOMPLETE, size=size, problem=problem, wall_time=_mtime(path))
    try:
        if verify and not _still_verified(mpath):
            doc = verify_manifest(mpath)
            _remember_verified(mpath)
        else:
            doc = read_manifest(mpath)
        status, problem = OK, None
    except (CorruptCheckpointError, CheckpointNotFoundError) as exc:
        status, problem = CORRUPT, str(exc)
        try:
            doc = guard.read_json(mpath, what="manifest")
        except (ModelkeepError, OSError):
            doc = {}
    meta = doc.get("metadata", {}) if isinstance(doc, dict) else {}
    bad = _bad_metadata(meta if isinstance(meta, dict) else {"metadata": meta})
    if bad:
        status, problem, meta = CORRUPT, f"{mpath}: {bad}; the manifest is corrupt.", {}
    return CheckpointInfo(
        path,
        meta.get("format", fmt_name),
        status,
        step=meta.get("step"),
        epoch=meta.get("epoch"),
        logs=meta.get("logs") or {},
        wall_time=meta.get("wall_time", _mtime(path)),
        size=size,
        problem=problem,
        metadata=meta,
    )


_META_TYPES: dict[str, tuple[type, ...]] = {
    "step": (int,), "epoch": (int,), "wall_time": (int, float), "logs": (dict,), "format": (str,), "metadata": (dict,),
}


def _bad_metadata(meta: dict[str, Any]) -> str | None:
    """What is wrong with a manifest's metadata fields that listing relies on, if anything."""
    for key, types in _META_TYPES.items():
        value = meta.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, types)):
            return f"metadata field {key!r} is a {type(value).__name__}, expected {'/'.join(t.__name__ for t in types)}"
    logs = meta.get("logs") or {}
    if any(not isinstance(v, (int, float)) or isinstance(v, bool) for v in logs.values()):
        return "metadata field 'logs' holds values that are not numbers"
    return None


def escapes(directory: Path, path: Path) -> str | None:
    """Why a checkpoint found in ``directory`` may not be read (a symlink leaving it), or None."""
    fmt = _format_of(path) if guard.inside(directory, path) else None
    files = [path / STORE_STATE] if _is_store_dir(path) else (fmt.files(path) if fmt else [])
    for candidate in [path, manifest_path(path), *files]:
        if os.path.lexists(candidate) and not guard.inside(directory, candidate):
            return str(guard.refuse(candidate, "path-containment", f"a symlink to {os.path.realpath(candidate)}, outside {directory}",
                                    "Replace the symlink with the file itself."))
    return None


def _mtime(path: Path) -> float | None:
    for candidate in (path, Path(str(path) + INDEX_SUFFIX)):
        if candidate.exists():
            return candidate.stat().st_mtime
    return None


def list_checkpoints(directory: Path | str, *, verify: bool = True) -> list[CheckpointInfo]:
    """Every checkpoint in ``directory`` with its metadata and status, newest first.

    Example::

        for c in mk.list_checkpoints("run"):
            print(c.path.name, c.step, c.status)
    """
    if is_url(directory):  # s3://, gs://, ...: the commit records of storage.objects
        from modelkeep.checkpoint import remote

        return remote.list_checkpoints(directory, verify=verify)
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointNotFoundError(f"list_checkpoints: {directory} is not a directory.")
    infos = []
    for candidate in _candidates(directory):
        problem = escapes(directory, candidate)
        if problem is not None:  # never stat'ed or read: only its name is reported
            infos.append(CheckpointInfo(candidate, "unknown", CORRUPT, problem=problem))
        else:
            infos.append(info_for(candidate, verify=verify))
    infos.sort(key=lambda c: (c.step if c.step is not None else -1, c.wall_time or 0.0), reverse=True)
    return infos


def latest_good(directory: Path | str, *, warn: bool = True) -> CheckpointInfo | None:
    """The newest checkpoint that verifies; warns naming each newer one that does not."""
    for info in list_checkpoints(directory):
        if info.status == OK:
            return info
        if warn:
            warnings.warn(
                f"skipping checkpoint {info.path} ({info.status}: {info.problem}); "
                "falling back to an older one.",
                stacklevel=2,
            )
    return None


# ------------------------------------------------------------------------ journaled commit
def pending_manifest_path(target: Path) -> Path:
    """The manifest written before a checkpoint's files replace an existing name."""
    return target.with_name(target.name + PENDING_SUFFIX)


def _verifies(manifest: Path) -> bool:
    try:
        verify_manifest(manifest)
    except (CorruptCheckpointError, CheckpointNotFoundError, OSError, KeyError, TypeError):
        return False
    return True


def temp_target(final: Path) -> Path:
    """A temporary sibling for a whole checkpoint, keeping the suffix its format needs."""
    name = final.name.lower()
    known = (".weights.h5", ".h5", ".hdf5", ".keras", ".safetensors")
    suffix = next((s for s in known if name.endswith(s)), "")
    return temp_sibling(final, keep_suffix=suffix)


def commit_checkpoint(tmp: Path, final: Path, fmt: Format, metadata: dict[str, Any]) -> CheckpointInfo:
    """Publish a checkpoint written (and committed by its format) under the temporary ``tmp``.

    The steps keep the newest good checkpoint loadable at every instant, also when
    ``final`` already holds an older checkpoint (a fixed file name):

    1. the new manifest, with the checksums of the temporary files and the final
       names, is committed as ``<final>.manifest.pending.json``;
    2. each file (or directory) is renamed over its final name (a TF checkpoint's
       ``.data`` before its ``.index``);
    3. the pending manifest is renamed over ``<final>.manifest.json``.

    A crash before 2 leaves the old checkpoint and its manifest; after 2, the pending
    manifest matches the files and is accepted (``info_for``) and promoted on the next
    start (``recover_pending``). Returns the verified ``CheckpointInfo``.

    Example::

        tmp = temp_target(Path("run/best.keras"))
        registry.KERAS_ZIP.write(state, tmp, model=model)
        commit_checkpoint(tmp, Path("run/best.keras"), registry.KERAS_ZIP, {"step": 10})
    """
    tmp_files = fmt.files(tmp)
    pairs = [(f, Path(str(f).replace(str(tmp), str(final), 1))) for f in tmp_files]
    # the checksums come from the bytes as written (from memory, or read from the file), the
    # renames keep the inodes and bytes: nothing is read back after the commit
    with phase("manifest crc-32 (files not checksummed while written)"):
        described = describe_files(tmp.parent, tmp_files)
    files = {
        str(dst.relative_to(final.parent)): described[str(src.relative_to(tmp.parent))] for src, dst in pairs
    }
    doc = {
        "manifest_version": MANIFEST_VERSION,
        "files": files,
        "metadata": {**metadata, "format": fmt.name, "name": final.name},
    }
    pending = pending_manifest_path(final)
    with phase("commit (manifest, renames, fsyncs)"):
        write_bytes(pending, json.dumps(doc, indent=1, default=str).encode())
        if tmp.is_dir():
            commit(tmp, final)
        else:
            # data files first, the key file (.index) last; each was fsynced by its format
            for src, dst in sorted(pairs, key=lambda p: p[1].name.endswith(INDEX_SUFFIX)):
                os.replace(src, dst)
            fsync_path(final.parent)
        os.replace(pending, manifest_path(final))
        fsync_path(final.parent)
    with phase("check manifest"):
        info = info_for(final, verify=False)
        _remember_written(manifest_path(final))
    if info.status != OK:
        raise CorruptCheckpointError(
            f"save: {final} was written but its manifest does not read back ({info.problem}). "
            "The disk may be failing; older checkpoints were kept."
        )
    return info


def recover_pending(directory: Path | str) -> list[Path]:
    """Finish or drop the journaled commits a crash interrupted; return the manifests promoted."""
    promoted: list[Path] = []
    if is_url(directory):  # object stores commit with one record: nothing to finish
        return promoted
    directory = Path(directory)
    if not directory.is_dir():
        return promoted
    for pending in sorted(directory.glob("*" + PENDING_SUFFIX)):
        target = pending.with_name(pending.name[: -len(PENDING_SUFFIX)])
        if _verifies(pending):
            os.replace(pending, manifest_path(target))
            promoted.append(target)
        else:
            pending.unlink(missing_ok=True)
    if promoted:
        fsync_path(directory)
    return promoted
