"""``BackupAndRestore``: a drop-in superset of Keras's, whose backups are never half-written.

Each backup is a modelkeep ``ckpt-<step>/`` directory (safetensors + manifest, committed
with one rename); at the start of ``fit`` the newest one that verifies is restored.
For resume that is exact to the bit, mid-epoch included, use ``modelkeep.fit``.

Example::

    model.fit(x, y, epochs=20, callbacks=[mk.BackupAndRestore("run/backup")])
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import keras

from modelkeep.capture import capture, restore
from modelkeep.checkpoint import retention, store
from modelkeep.checkpoint.callbacks import (
    _as_write_error,
    _check_on_error,
    _check_save_freq,
    _global_step,
    _SaveFrequency,
)
from modelkeep.checkpoint.writer import AsyncWriter, SnapshotBuffers, wait_for_saves
from modelkeep.state import ModelState
from modelkeep.storage.commit import clean_leftovers
from modelkeep.storage.fs import RemotePath, as_location


class BackupAndRestore(keras.callbacks.Callback):
    """Keras 3's ``BackupAndRestore``, with atomic, verified backups and fallback on restore.

    At the start of ``fit`` it restores the weights, the optimizer state and the epoch
    from the newest backup that verifies (warning about each newer one that does not);
    it backs up every epoch or every ``save_freq`` batches into ``backup_dir/ckpt-<step>/``
    (safetensors + manifest, one atomic rename), keeps the newest ``max_to_keep``, and
    deletes the backups when training ends if ``delete_checkpoint``.

    Example::

        model.fit(x, y, epochs=20, callbacks=[mk.BackupAndRestore("run/backup")])
        # killed? run the same line again: it continues from the last backup's epoch
    """

    def __init__(
        self,
        backup_dir: str | os.PathLike,
        save_freq: str | int = "epoch",
        double_checkpoint: bool = False,
        delete_checkpoint: bool = True,
        max_to_keep: int = 2,
        *,
        on_error: str = "raise",
        async_save: bool = True,
    ) -> None:
        super().__init__()
        self.async_save = async_save
        self._writer: AsyncWriter | None = None
        self._buffers = SnapshotBuffers()
        if not backup_dir:
            raise ValueError("Empty `backup_dir` argument passed")
        _check_save_freq(save_freq)
        _check_on_error(on_error)
        if max_to_keep < 1:
            raise ValueError(f"max_to_keep must be at least 1. Received: max_to_keep={max_to_keep}")
        self.backup_dir = as_location(backup_dir)  # a Path, or a RemotePath for s3://...
        self.save_freq = save_freq
        self.double_checkpoint = double_checkpoint  # kept for Keras compatibility: always >= 2 here
        self.delete_checkpoint = delete_checkpoint
        self.max_to_keep = max(max_to_keep, 2 if double_checkpoint else 1)
        self.on_error = on_error
        self.failed_saves = 0
        self.restored_from: Path | None = None
        self._frequency = _SaveFrequency(save_freq)
        self._current_epoch = 0
        self._last_batch_seen = 0
        self._batches_total = 0

    def on_train_begin(self, logs: dict | None = None) -> None:
        if not self.model.built:
            raise ValueError(
                "To use the BackupAndRestore callback, your model must be built before you call "
                f"`fit()`. Model {self.model} is unbuilt. Build it by calling it on a batch of data."
            )
        wait_for_saves(raise_errors=False)  # a backup of an earlier fit that ended in an exception
        self._writer = AsyncWriter(name="modelkeep-BackupAndRestore") if self.async_save else None
        if not self.backup_dir.is_dir():
            return
        clean_leftovers(self.backup_dir)
        info = self.newest_good_backup()
        if info is None:
            return
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is not None and not optimizer.built:
            optimizer.build(self.model.trainable_variables)
        restore(self.model, store.load_state(info.path), source=str(info.path), optimizer=True)
        epoch = int(info.metadata.get("epoch") or 0)
        self.model._initial_epoch = epoch  # what Keras's own BackupAndRestore sets; fit starts there
        self._current_epoch = epoch
        self.restored_from = info.path

    def newest_good_backup(self) -> store.CheckpointInfo | None:
        """The newest ``ckpt-<step>/`` that verifies; warns naming each newer bad one."""
        for info in store.list_checkpoints(self.backup_dir):
            if info.format != "modelkeep backup":
                continue
            if info.status == store.OK:
                return info
            warnings.warn(
                f"BackupAndRestore: skipping backup {info.path} ({info.status}: {info.problem}); "
                "restoring an older one.",
                stacklevel=3,
            )
        return None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self._current_epoch = epoch + 1
        self._last_batch_seen = 0
        if self.save_freq == "epoch":
            self._save(None)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self._batches_total += 1
        self._last_batch_seen = batch + 1
        if self._frequency.should_save(batch):
            self._save(batch)

    def snapshot(self, batch: int | None, *, copy: bool = True) -> tuple[ModelState, int, dict[str, Any]]:
        """Training-thread part of a backup: the state copy, its step and metadata.

        ``copy=False`` takes read-only views instead of copies, for a backup written at once."""
        step = _global_step(self.model, self._batches_total)
        metadata = {
            "epoch": self._current_epoch,
            "batch": self._last_batch_seen if batch is not None else 0,
            "callback": "BackupAndRestore",
        }
        return capture(self.model, include_optimizer=True, metadata=metadata, copy=copy), step, metadata

    def write(self, state: ModelState, step: int, metadata: dict[str, Any]) -> store.CheckpointInfo | None:
        """Commit one backup and keep the newest ``max_to_keep``; errors follow ``on_error``."""
        try:
            info = store.save_state(self.backup_dir, state, step=step, metadata=metadata)
        except OSError as exc:
            error = _as_write_error(self.backup_dir / store.store_name(step), exc)
            if self.on_error == "raise":
                raise error from exc
            self.failed_saves += 1
            warnings.warn(f"{error} Training goes on (on_error='warn').", stacklevel=2)
            return None
        retention.apply_retention(
            self.backup_dir,
            max_to_keep=self.max_to_keep,
            select=lambda i: i.format == "modelkeep backup",
        )
        return info

    def _save(self, batch: int | None) -> None:
        if self._writer is None:
            self.write(*self.snapshot(batch, copy=False))
            return
        label = f"backup at epoch {self._current_epoch}" + ("" if batch is None else f" batch {batch + 1}")
        self._writer.save(lambda: self._buffered(batch), lambda snap: self.write(*snap), label=label)

    def _buffered(self, batch: int | None) -> tuple[ModelState, int, dict[str, Any]]:
        state, step, metadata = self.snapshot(batch, copy=False)
        return self._buffers.copy(state), step, metadata  # the one copy, into reused arrays

    def on_train_end(self, logs: dict | None = None) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            try:
                writer.close()  # the last backup is committed (or its error raised) before any delete
            finally:
                self._buffers.release()
        self.model._initial_epoch = None  # a later fit() starts where it is told, as without us
        if self.delete_checkpoint and isinstance(self.backup_dir, RemotePath):
            from modelkeep.checkpoint import remote

            remote.delete_all(self.backup_dir)
        elif self.delete_checkpoint and self.backup_dir.exists():
            shutil.rmtree(self.backup_dir)
