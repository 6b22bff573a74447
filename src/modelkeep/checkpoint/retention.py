"""Which checkpoints to keep: newest N, best K by a metric, and permanent ones.

``plan_retention`` is a pure function over ``CheckpointInfo`` lists (what
``list_checkpoints`` returns); ``apply_retention`` lists a directory, plans, and
deletes safely: only checkpoints that verify are ever counted or deleted, the newest
good checkpoint is never deleted, each deleted checkpoint first disappears from the
TF ``checkpoint`` state file and then from the directory by renames to temporary
names (so a crash mid-delete never leaves a half checkpoint under a committed name).

Rules combine as a union: a checkpoint is kept if any rule keeps it.

Example::

    keep, delete = plan_retention(infos, max_to_keep=3, keep_best=1, monitor="val_loss")
    apply_retention("run", max_to_keep=3, keep_best=1, monitor="val_loss")   # -> deleted paths
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from modelkeep.checkpoint import store
from modelkeep.checkpoint.store import OK, CheckpointInfo
from modelkeep.storage.commit import fsync_path, temp_sibling
from modelkeep.storage.fs import is_url

_MAX_WORDS = ("acc", "auc", "precision", "recall", "f1", "iou", "r2")


def direction_of(monitor: str, known: dict[str, str] | None = None) -> str:
    """``"min"`` or ``"max"`` for a monitored quantity, as Keras's ``mode="auto"`` decides.

    Example: ``direction_of("val_loss") == "min"``, ``direction_of("val_accuracy") == "max"``.
    """
    name = monitor.removeprefix("val_")
    if known and name in known:
        return known[name]
    if name == "loss" or name.endswith(("loss", "error", "mse", "mae")):
        return "min"
    if any(word in name for word in _MAX_WORDS):
        return "max"
    raise ValueError(
        f"cannot tell whether monitor={monitor!r} should be maximized or minimized. Pass "
        "mode='max' for the highest value or mode='min' for the lowest."
    )


def _newest_first(infos: Sequence[CheckpointInfo]) -> list[CheckpointInfo]:
    return sorted(infos, key=lambda c: (c.step if c.step is not None else -1, c.wall_time or 0.0), reverse=True)


def _permanent(good: list[CheckpointInfo], every_epochs: int | None, every_hours: float | None) -> set[Path]:
    keep: set[Path] = set()
    if every_epochs:
        keep |= {c.path for c in good if c.epoch is not None and c.epoch % every_epochs == 0}
    if every_hours:
        # like tf.train.CheckpointManager: the first, then one whenever the interval has passed
        next_time: float | None = None
        for info in reversed(good):  # oldest first
            if info.wall_time is None:
                continue
            if next_time is None or info.wall_time >= next_time:
                keep.add(info.path)
                next_time = info.wall_time + every_hours * 3600.0
    return keep


def _best(good: list[CheckpointInfo], keep_best: int, monitor: str | None, mode: str) -> set[Path]:
    if not monitor:
        raise ValueError("keep_best needs monitor= (the logged metric that ranks checkpoints).")
    scored = [c for c in good if monitor in (c.logs or {})]
    direction = mode if mode in ("min", "max") else direction_of(monitor)
    scored.sort(key=lambda c: float(c.logs[monitor]), reverse=direction == "max")
    return {c.path for c in scored[:keep_best]}


def plan_retention(
    infos: Sequence[CheckpointInfo],
    *,
    max_to_keep: int | None = None,
    keep_best: int | None = None,
    monitor: str | None = None,
    mode: str = "auto",
    keep_every_n_epochs: int | None = None,
    keep_every_n_hours: float | None = None,
) -> tuple[list[CheckpointInfo], list[CheckpointInfo]]:
    """Split checkpoints into ``(keep, delete)``, both newest first.

    Only checkpoints with status ``ok`` can be deleted; others are kept untouched
    (they are not counted either). The newest good checkpoint is always kept. With no
    rule at all, everything is kept.

    Example::

        keep, delete = plan_retention(mk.list_checkpoints("run"), max_to_keep=2)
    """
    ordered = _newest_first(infos)
    good = [c for c in ordered if c.status == OK]
    if not good or all(r is None for r in (max_to_keep, keep_best, keep_every_n_epochs, keep_every_n_hours)):
        return ordered, []
    keep_paths = {good[0].path}
    if max_to_keep is not None:
        keep_paths |= {c.path for c in good[:max_to_keep]}
    if keep_best:
        keep_paths |= _best(good, keep_best, monitor, mode)
    keep_paths |= _permanent(good, keep_every_n_epochs, keep_every_n_hours)
    keep = [c for c in ordered if c.status != OK or c.path in keep_paths]
    delete = [c for c in good if c.path not in keep_paths]
    return keep, delete


def apply_retention(
    directory: str | os.PathLike,
    *,
    select: Callable[[CheckpointInfo], bool] | None = None,
    **rules: object,
) -> list[Path]:
    """Plan with ``rules`` (the keywords of ``plan_retention``) and delete; return what was deleted.

    ``select`` limits the rules to some checkpoints of the directory (those one
    callback wrote); others are left alone.

    Example: ``apply_retention("run", max_to_keep=3, keep_best=1, monitor="val_loss")``.
    """
    if is_url(directory):  # object storage: delete by commit records (checkpoint.remote)
        from modelkeep.checkpoint import remote

        return remote.apply_retention(directory, select=select, **rules)
    directory = Path(directory)
    infos = store.list_checkpoints(directory, verify=True)
    if select is not None:
        infos = [i for i in infos if select(i)]
    _keep, delete = plan_retention(infos, **rules)  # type: ignore[arg-type]
    if not delete:
        return []
    tf_deleted = [c.path for c in delete if c.format == "TF checkpoint"]
    if tf_deleted:
        _drop_from_state_file(directory.absolute(), tf_deleted)
    for info in delete:
        delete_checkpoint(info)
    fsync_path(directory)
    return [c.path for c in delete]


def checkpoint_entries(info: CheckpointInfo) -> list[Path]:
    """Every directory entry of a checkpoint, in deletion order: manifests first, key file next."""
    path = info.path
    if path.is_dir() and path.name.startswith(store.STORE_PREFIX):
        return [path]
    files = [Path(str(path) + ".index"), Path(str(path) + ".data-00000-of-00001")] if info.format == "TF checkpoint" else [path]
    return [store.manifest_path(path), store.pending_manifest_path(path), *files]


def delete_checkpoint(info: CheckpointInfo) -> None:
    """Remove one checkpoint: rename every entry to a temporary name, then delete them.

    The renames take microseconds; a crash among them leaves at worst files without a
    manifest (listed as incomplete, never loaded), never a manifest naming missing files.
    """
    doomed = []
    for entry in checkpoint_entries(info):
        if entry.exists():
            target = temp_sibling(entry, keep_suffix=".del")
            os.rename(entry, target)
            doomed.append(target)
    for target in doomed:
        if target.is_dir():
            shutil.rmtree(target, ignore_errors=True)
        else:
            target.unlink(missing_ok=True)


def _drop_from_state_file(directory: Path, removed: list[Path]) -> None:
    """Rewrite ``checkpoint`` without the removed prefixes (atomically, as TensorFlow does)."""
    import tensorflow as tf

    from modelkeep.formats.tf_checkpoint import STATE_FILE, update_state_file

    state_path = directory / STATE_FILE
    if not state_path.exists():
        return
    try:
        state = tf.train.get_checkpoint_state(str(directory))
    except Exception:  # noqa: BLE001 - an unreadable state file is rebuilt from what is on disk
        state = None
    removed_names = {p.name for p in removed}
    listed = [Path(p) for p in (state.all_model_checkpoint_paths if state else [])]
    remaining = [p for p in listed if p.name not in removed_names and Path(str(directory / p.name) + ".index").exists()]
    if not remaining:
        state_path.unlink()
        return
    latest = Path(state.model_checkpoint_path) if state else remaining[-1]
    if latest.name in removed_names or latest not in remaining:
        latest = remaining[-1]
    update_state_file(directory / latest.name, keep=[directory / p.name for p in remaining if p != latest])
