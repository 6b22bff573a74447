"""Checkpoints, models and backups on object storage: stage locally, commit remotely.

Every format writes into a local temporary directory exactly as it writes to disk (TF
checkpoint, SavedModel, HDF5, ``.keras``, safetensors, modelkeep backups, each with its
manifest); ``storage.objects`` then uploads the files as one generation and writes its
commit record last. A load downloads the newest good commit into a local temporary
directory (every CRC-32 checked on arrival) and reuses the local readers.

Example::

    save_model(model, "s3://bucket/models/m.keras")
    model = load_model("s3://bucket/models/m.keras")
    [c.path.name for c in list_checkpoints("s3://bucket/run")]
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from modelkeep.checkpoint import store
from modelkeep.checkpoint.store import CheckpointInfo
from modelkeep.errors import CheckpointNotFoundError, CorruptCheckpointError
from modelkeep.formats import registry
from modelkeep.formats.base import Format
from modelkeep.storage import fs as sfs
from modelkeep.storage.commit import pid_alive
from modelkeep.storage.objects import OK, ObjectDir
from modelkeep.storage.objects import SUFFIX as OBJECT_SUFFIX

_FOREIGN = (".h5", ".hdf5", ".keras", ".safetensors", ".index")


def split(url: Any, storage_options: dict | None = None) -> tuple[ObjectDir, str]:
    """``s3://b/run/best.keras`` -> (the directory ``s3://b/run``, ``"best.keras"``)."""
    sfs.filesystem(str(url), storage_options)  # an unknown or uninstalled scheme names the full URL
    path = sfs.as_location(str(url))
    if not isinstance(path, sfs.RemotePath) or not path.name:
        raise CheckpointNotFoundError(f"{url}: expected a URL naming a file or checkpoint below a bucket.")
    return ObjectDir(str(path.parent), storage_options), path.name


#: where checkpoints are staged: $MODELKEEP_STAGING_DIR, else /dev/shm when it has room, else $TMPDIR
STAGING_ENV = "MODELKEEP_STAGING_DIR"
_SHM = Path("/dev/shm")


def staging_parent(size_hint: int = 0) -> str | None:
    """The directory to stage ``size_hint`` bytes in. A staged copy needs no durability (the
    commit point is the remote record), so memory-backed /dev/shm is used when it has twice
    the room: a loaded or slow disk then never throttles an upload or a download."""
    chosen = os.environ.get(STAGING_ENV)
    if chosen:
        return chosen
    try:
        stat = os.statvfs(_SHM)
        if os.access(_SHM, os.W_OK) and stat.f_bavail * stat.f_frsize > 2 * size_hint + (256 << 20):
            return str(_SHM)
    except OSError:
        pass
    return None


def new_stage(size_hint: int = 0) -> Path:
    """A new staging directory; stale ones of killed processes beside it are removed first."""
    parent = Path(staging_parent(size_hint) or tempfile.gettempdir())
    for stale in parent.glob("modelkeep-stage-*-*"):
        pid = stale.name.split("-")[2]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"modelkeep-stage-{os.getpid()}-", dir=parent))


def model_bytes(model: Any) -> int:
    """About how many bytes a model's variables (and optimizer slots) take."""
    total = 0
    for variable in list(getattr(model, "weights", [])) + list(getattr(getattr(model, "optimizer", None), "variables", []) or []):
        try:
            total += int(np.prod(variable.shape)) * np.dtype(str(variable.dtype)).itemsize
        except (TypeError, ValueError):
            continue
    return total


@contextlib.contextmanager
def staging(size_hint: int = 0) -> Iterator[Path]:
    """A local temporary directory (``staging_parent``), removed afterwards."""
    root = new_stage(size_hint)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _files_of(fmt: Format, local: Path) -> list[Path]:
    files = [f for f in fmt.files(local) if f.exists()]
    out = []
    for f in files:  # a SavedModel is a directory: its files
        out.extend(sorted(p for p in f.rglob("*") if p.is_file()) if f.is_dir() else [f])
    sidecar = store.manifest_path(local)
    if sidecar.exists() and sidecar not in out:
        out.append(sidecar)
    return out


def _known(manifest: Path) -> dict[Path, tuple[int, int]]:
    """``{file: (size, crc32)}`` from a local manifest the writer just wrote."""
    try:
        files = json.loads(manifest.read_text()).get("files") or {}
        return {manifest.parent / rel: (int(v["size"]), int(v["crc32"])) for rel, v in files.items()}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _manifest_metadata(local: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(store.manifest_path(local).read_text()).get("metadata") or {})
    except (OSError, ValueError):
        return {}


# ------------------------------------------------------------------------ save / load
def save(model: Any, url: str, *, whole_model: bool, storage_options: dict | None = None,
         include_optimizer: bool = True) -> list[str]:  # fmt: skip
    """``mk.save_weights`` / ``mk.save_model`` to a URL; returns the URLs of the saved files."""
    directory, name = split(url, storage_options)
    with staging(model_bytes(model)) as root:
        local = root / name
        if whole_model:
            fmt = registry.model_format(local)
            fmt.save_model(model, local, include_optimizer=include_optimizer)
        else:
            fmt = registry.weights_format(local)
            fmt.save_weights(model, local)
        files = _files_of(fmt, local)
        commit = directory.publish(name, root, files, {"format": fmt.name, "name": name,
                                                      "weights_only": not whole_model})  # fmt: skip
    return [f"{directory.url}/{rel}" for rel in commit.files]


@contextlib.contextmanager
def fetched(url: Any, storage_options: dict | None = None) -> Iterator[Path]:
    """Download the checkpoint or file at ``url`` into a temporary directory; yield its local path.

    A name modelkeep committed comes from its newest good commit (CRC-checked); a file
    another tool uploaded (no ``.mk`` record) is downloaded as it is.
    """
    directory, name = split(url, storage_options)
    entry = directory.entry(name)
    with staging(entry.commit.size if entry is not None and entry.commit else 0) as root:
        if entry is not None:
            directory.fetch(name, root, entry=entry)
        else:
            _fetch_foreign(directory, name, root)
        yield root / name


@contextlib.contextmanager
def local_copy(path: Any, storage_options: dict | None = None) -> Iterator[Any]:
    """``path`` itself for a local path (or None), else ``fetched(path)``."""
    if path is None or not sfs.is_url(path):
        yield path
        return
    with fetched(path, storage_options) as local:
        yield local


def exists(url: Any, storage_options: dict | None = None) -> bool:
    """Whether ``url`` names a committed checkpoint or any object (a file or a folder's files)."""
    directory, name = split(url, storage_options)
    if directory.entry(name) is not None:
        return True
    tree = sfs.list_tree(directory.url, storage_options=directory.options)
    return any(rel == name or rel.startswith(name + "/") for rel in tree)


@contextlib.contextmanager
def local_target(path: Any, *, metadata: dict[str, Any] | None = None,
                 storage_options: dict | None = None) -> Iterator[Path]:  # fmt: skip
    """A local path to write ``path``'s file(s) to; a URL is committed when the block succeeds.

    For a local path this is the path itself. For a URL the block writes into a staging
    directory; everything written there (a file, a SavedModel directory, a sidecar
    manifest) is then uploaded as one generation and committed (``ObjectDir.publish``):
    readers see all of it or nothing. ``metadata`` (updated by the block if it likes) goes
    into the commit record, completed from a sidecar manifest the block wrote.

    Example::

        with local_target("s3://b/out/pred.npy") as local:
            np.save(local, y)
    """
    if path is None or not sfs.is_url(path):
        yield sfs.local_path(path) if path is not None else path
        return
    directory, name = split(path, storage_options)
    meta = metadata if metadata is not None else {}
    with staging() as root:
        yield root / name
        files = sorted(p for p in root.rglob("*") if p.is_file())
        if not files:
            raise CheckpointNotFoundError(f"write {path}: nothing was written to upload.")
        record = {**_manifest_metadata(root / name), **meta}
        record.setdefault("name", name)
        directory.publish(name, root, files, record, known=_known(store.manifest_path(root / name)))


def base_versions(url: Any, storage_options: dict | None = None) -> list[tuple[int, Any, str, str | None, float]]:
    """The numbered versions of a TF Serving base directory URL (``base/1``, ``base/2``), newest
    first, as ``(version, url, status, problem, stamp)`` (stamp: the commit's time, else 0).

    A version modelkeep committed (``save_model(m, "s3://b/base/2")``) has the status of its
    commit; a folder another tool uploaded (``base/3/saved_model.pb``, or a ``.keras`` /
    ``.h5`` file in it) has no commit record, so it counts as whole once ``saved_model.pb``
    (with ``variables/variables.index`` when it has variables) or the model file is there.
    """
    odir = ObjectDir(str(url), storage_options)
    base = sfs.RemotePath(odir.url)
    found: dict[int, tuple[int, Any, str, str | None, float]] = {}
    for name, entry in odir.entries().items():
        if name.isdigit():
            found[int(name)] = (int(name), base / name, entry.status, entry.problem, float(entry.wall_time or 0.0))
    tree = sfs.list_tree(odir.url, storage_options=storage_options)
    folders: dict[str, set[str]] = {}
    for rel in tree:
        head, _, rest = rel.partition("/")
        if head.isdigit() and rest:
            folders.setdefault(head, set()).add(rest)
    for head, rels in folders.items():
        if int(head) in found:
            continue
        models = sorted(r for r in rels if "/" not in r and r.endswith((".keras", ".h5", ".hdf5")))
        if "saved_model.pb" in rels:
            partial = any(r.startswith("variables/") for r in rels) and "variables/variables.index" not in rels
            status, problem = (store.INCOMPLETE, "variables/variables.index not uploaded yet") if partial else (OK, None)
            found[int(head)] = (int(head), base / head, status, problem, 0.0)
        elif models:
            found[int(head)] = (int(head), base / head / models[0], OK, None, 0.0)
        else:
            found[int(head)] = (int(head), base / head, store.INCOMPLETE, "no saved_model.pb or model file yet", 0.0)
    return sorted(found.values(), key=lambda v: v[0], reverse=True)


def holds_saved_model(url: Any, storage_options: dict | None = None) -> bool:
    """Whether ``url`` is a SavedModel folder another tool uploaded (``saved_model.pb`` in it)."""
    return "saved_model.pb" in sfs.list_tree(str(url), storage_options=storage_options)


def is_base_directory(url: Any, storage_options: dict | None = None) -> bool:
    """Whether a directory URL holds numbered versions (TF Serving's layout) rather than a run."""
    return bool(base_versions(url, storage_options))


def _fetch_foreign(directory: ObjectDir, name: str, root: Path) -> None:
    tree = sfs.list_tree(directory.url, storage_options=directory.options)
    picked = {rel: size for rel, size in tree.items()
              if rel == name or rel.startswith(name + "/") or rel.startswith(name + ".")}  # fmt: skip
    picked = {rel: size for rel, size in picked.items() if not rel.startswith(name + OBJECT_SUFFIX + "/")}
    if not picked:
        raise CheckpointNotFoundError(
            f"load: nothing at {directory.url}/{name}: no checkpoint of that name and no object. "
            "Check the URL (`modelkeep ls` lists a directory)."
        )
    sfs.download_files([(f"{directory.url}/{rel}", root / rel, size) for rel, size in picked.items()],
                       storage_options=directory.options)  # fmt: skip


def load_model(url: Any, storage_options: dict | None = None, **kwargs: Any) -> Any:
    from modelkeep import api

    with fetched(url, storage_options) as local:
        return api.load_model(local, **kwargs)


def load_weights(model: Any, url: Any, storage_options: dict | None = None) -> None:
    """A file, prefix or model at ``url``; or a directory URL: its newest good checkpoint."""
    from modelkeep import api

    directory, name = split(url, storage_options)
    if directory.entry(name) is None and _is_directory(str(url), storage_options):
        for info in list_checkpoints(url, storage_options=storage_options):
            if info.status != OK:
                continue
            if info.format == "modelkeep backup":
                from modelkeep.capture import restore

                restore(model, load_state(info.path, storage_options), source=str(info.path), optimizer=False)
            else:
                with fetched(info.path, storage_options) as local:
                    api.load_weights(model, local)
            return
        raise CheckpointNotFoundError(f"load_weights: no checkpoint in {url} verifies (or there is none).")
    with fetched(url, storage_options) as local:
        api.load_weights(model, local)


def _is_directory(url: str, storage_options: dict | None) -> bool:
    tree = sfs.list_tree(url, storage_options=storage_options)
    return any("/" in rel for rel in tree)


# ------------------------------------------------------------------------ listing
def list_checkpoints(directory: Any, *, verify: bool = True, storage_options: dict | None = None) -> list[CheckpointInfo]:
    """Every checkpoint under a directory URL, newest first (``store.list_checkpoints``'s rows).

    A listing checks that every object of each commit is there with its size; CRC-32s are
    checked when a checkpoint is loaded or by ``modelkeep verify``.
    """
    odir = ObjectDir(str(directory), storage_options)
    base = sfs.RemotePath(odir.url)
    infos = []
    for name, entry in odir.entries().items():
        commit = entry.commit
        meta = dict(commit.metadata) if commit else {}
        infos.append(CheckpointInfo(
            base / name, meta.get("format", "unknown"), entry.status, step=meta.get("step"), epoch=meta.get("epoch"),
            logs=meta.get("logs") or {}, wall_time=meta.get("wall_time"), size=commit.size if commit else 0,
            problem=entry.problem, metadata=meta,
        ))  # fmt: skip
    committed = {i.path.name for i in infos}
    tree = sfs.list_tree(odir.url, storage_options=storage_options)
    for rel, size in tree.items():  # files other tools uploaded: listed, never counted as good
        if "/" in rel or not rel.endswith(_FOREIGN):
            continue
        name = rel[: -len(".index")] if rel.endswith(".index") else rel
        if name not in committed:
            infos.append(CheckpointInfo(base / name, "unknown", store.INCOMPLETE, size=size,
                                        problem="no manifest: not committed by modelkeep"))  # fmt: skip
    infos.sort(key=lambda c: (c.step if c.step is not None else -1, c.wall_time or 0.0), reverse=True)
    return infos


# ------------------------------------------------------------------------ backups (ckpt-<step>/)
def save_state(directory: Any, state: Any, *, step: int, metadata: dict | None = None) -> CheckpointInfo:
    """``store.save_state`` to a directory URL: the same ``ckpt-<step>/``, committed remotely."""
    odir = ObjectDir(str(directory))
    with staging(sum(int(getattr(v, "nbytes", 0)) for v in state.variables.values())) as root:
        local = store.save_state(root, state, step=step, metadata=metadata)
        files = [local.path / store.STORE_STATE, local.path / store.STORE_MANIFEST]
        meta = json.loads((local.path / store.STORE_MANIFEST).read_text()).get("metadata") or {}
        commit = odir.publish(local.path.name, root, files, meta,
                              known=_known(local.path / store.STORE_MANIFEST))  # fmt: skip
    return CheckpointInfo(sfs.RemotePath(odir.url) / commit.name, "modelkeep backup", OK, step=meta.get("step"),
                          epoch=meta.get("epoch"), logs=meta.get("logs") or {}, wall_time=meta.get("wall_time"),
                          size=commit.size, metadata=meta)  # fmt: skip


def load_state(path: Any, storage_options: dict | None = None) -> Any:
    """``store.load_state`` of a backup at a URL (downloaded and verified)."""
    from modelkeep.formats.safetensors import SafetensorsFormat

    directory, name = split(path, storage_options)
    entry = directory.entry(name)
    if entry is None:  # not committed by modelkeep: its own manifest decides
        with fetched(path, storage_options) as local:
            return store.load_state(local)
    state_rel, manifest_rel = f"{name}/{store.STORE_STATE}", f"{name}/{store.STORE_MANIFEST}"
    if entry.commit is not None and not {state_rel, manifest_rel} <= set(entry.commit.files):
        raise CheckpointNotFoundError(f"load: {path} is not a modelkeep backup (no {store.STORE_MANIFEST}).")
    # straight into memory, every CRC-32 checked on arrival; the arrays are views of the download
    commit, buffers = directory.fetch_memory(name, entry=entry)
    if state_rel not in buffers or manifest_rel not in buffers:
        raise CheckpointNotFoundError(f"load: {path} commit {commit.seq} is not a modelkeep backup.")
    return SafetensorsFormat().read_buffer(buffers[state_rel], f"{path} ({store.STORE_STATE})")


def prune_backups(directory: Any, *, keep: int, protect: Any = None) -> list[Any]:
    """Delete ``ckpt-<step>`` backups older than the newest ``keep`` of a directory URL."""
    odir = ObjectDir(str(directory))
    names = sorted((n for n, e in odir.entries().items() if n.startswith(store.STORE_PREFIX)), reverse=True)
    removed = []
    for name in names[max(keep, 1):]:
        if protect is not None and str(protect).endswith("/" + name):
            continue
        odir.delete(name)
        removed.append(sfs.RemotePath(odir.url) / name)
    return removed


# ------------------------------------------------------------------------ callbacks' helpers
RemotePath = sfs.RemotePath


def template_directory(filepath: str) -> str | None:
    """The directory URL of a ``ModelCheckpoint`` template, or None for a local path."""
    if not sfs.is_url(filepath):
        return None
    directory = filepath.rsplit("/", 1)[0]
    sfs.filesystem(filepath)  # an unknown scheme fails when the callback is made
    if "{" in directory or directory.count("/") < 3:
        raise ValueError(
            f"ModelCheckpoint: {filepath} must name a fixed directory below a bucket "
            "(s3://bucket/run/ckpt-{epoch}); only the file name may hold {epoch}, {batch} or metrics."
        )
    return directory


def publish_checkpoint(url_dir: str, local: Path, fmt: Format) -> CheckpointInfo:
    """Upload a checkpoint ``ModelCheckpoint`` committed in its local staging directory, then
    remove the local copy; returns the remote ``CheckpointInfo``."""
    odir = ObjectDir(url_dir)
    files = _files_of(fmt, local)
    meta = _manifest_metadata(local)
    try:
        commit = odir.publish(local.name, local.parent, files, meta, known=_known(store.manifest_path(local)))
    finally:
        for f in [*fmt.files(local), store.manifest_path(local)]:
            if f.is_dir():
                shutil.rmtree(f, ignore_errors=True)
            else:
                f.unlink(missing_ok=True)
    return CheckpointInfo(sfs.RemotePath(odir.url) / commit.name, meta.get("format", fmt.name), OK,
                          step=meta.get("step"), epoch=meta.get("epoch"), logs=meta.get("logs") or {},
                          wall_time=meta.get("wall_time"), size=commit.size, metadata=meta)  # fmt: skip


def apply_retention(directory: Any, *, select: Callable[[CheckpointInfo], bool] | None = None,
                    **rules: Any) -> list[Any]:  # fmt: skip
    """``retention.apply_retention`` on a directory URL: plan on the listing, delete by commit."""
    from modelkeep.checkpoint.retention import plan_retention

    infos = list_checkpoints(directory)
    if select is not None:
        infos = [i for i in infos if select(i)]
    _keep, delete = plan_retention(infos, **rules)
    odir = ObjectDir(str(directory))
    for info in delete:
        odir.delete(info.path.name)
    return [c.path for c in delete]


def clean(directory: Any) -> list[str]:
    """Remove generations of killed uploads (this host, writer gone) below a directory URL."""
    return ObjectDir(str(directory)).clean()


def delete_all(directory: Any) -> None:
    ObjectDir(str(directory)).delete_all()


def verify(url: Any, check: Callable[[Path], Any]) -> list[tuple[str, str, Any]]:
    """Download each checkpoint at ``url`` (one, or every one of a directory) from its newest
    commit, every object's size and CRC-32 checked on arrival, then ``check(local path)``.

    Returns ``(url, format, check's result or the problem found)`` rows; no fallback to an
    older commit here: a bad newest commit is the finding.
    """
    location = sfs.as_location(str(url))
    directory, name = split(location)
    entry = directory.entry(name)
    if entry is not None:
        targets = [(directory, name, entry)]
    else:
        odir = ObjectDir(str(location))
        targets = [(odir, n, e) for n, e in odir.entries().items()]
    rows: list[tuple[str, str, Any]] = []
    for odir, n, entry in targets:
        where = f"{odir.url}/{n}"
        fmt = entry.commit.metadata.get("format", "unknown") if entry.commit else "unknown"
        commits = [c for c in odir._records(n, odir._tree(n))]
        if entry.status != OK or not commits or commits[0].seq != entry.commit.seq:
            rows.append((where, fmt, entry.problem or "the newest commit record's objects are missing or resized"))
            continue
        try:
            with staging(entry.commit.size) as root:
                odir._download(entry.commit, root)
                rows.append((where, fmt, check(root / n)))
        except (CorruptCheckpointError, CheckpointNotFoundError, OSError) as exc:
            rows.append((where, fmt, str(exc)))
    return rows
