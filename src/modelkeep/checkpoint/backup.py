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

from modelkeep.capture import capture, restore, state_nbytes
from modelkeep.checkpoint import retention, store
from modelkeep.checkpoint.callbacks import (
    _as_write_error,
    _check_on_error,
    _check_save_freq,
    _global_step,
    _SaveFrequency,
)
from modelkeep.checkpoint.distribute import should_write
from modelkeep.checkpoint.fit_guard import FitGuard
from modelkeep.checkpoint.writer import AsyncWriter, SnapshotBuffers, wait_for_saves
from modelkeep.state import ModelState
from modelkeep.storage.commit import clean_leftovers
from modelkeep.storage.fs import RemotePath, as_location


class BackupAndRestore(keras.callbacks.BackupAndRestore):
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
        # Keras's own __init__: its checks and messages (empty backup_dir, save_freq), its
        # attributes (save_freq, double_checkpoint, delete_checkpoint, its counters)
        super().__init__(os.fspath(backup_dir) if backup_dir else backup_dir, save_freq, double_checkpoint, delete_checkpoint)
        self.async_save = async_save
        self._writer: AsyncWriter | None = None
        self._buffers = SnapshotBuffers()
        _check_save_freq(save_freq, "backup")
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
        self._frequency = _SaveFrequency(save_freq, last_batch=0)  # Keras's starts at 0 here
        self._current_epoch = 0
        self._batches_total = 0
        self._batches_in_epoch = 0

    # Keras's counters, as views of modelkeep's (code written against Keras reads them)
    @property
    def _batches_seen_since_last_saving(self) -> int:
        return self._frequency.seen_since_save if hasattr(self, "_frequency") else 0

    @_batches_seen_since_last_saving.setter
    def _batches_seen_since_last_saving(self, value: int) -> None:
        if hasattr(self, "_frequency"):
            self._frequency.seen_since_save = value

    @property
    def _last_batch_seen(self) -> int:
        return self._frequency.last_batch if hasattr(self, "_frequency") else 0

    @_last_batch_seen.setter
    def _last_batch_seen(self, value: int) -> None:
        if hasattr(self, "_frequency"):
            self._frequency.last_batch = value

    # Keras's file names, mapped onto modelkeep's layout: the weights and metadata of the
    # newest backup and of the one before it (Keras's ``.bkp`` copies); its own names when
    # there is none. Read-only: Keras's __init__ sets them, modelkeep ignores that.
    def _backup_file(self, index: int, name: str, keras_name: str) -> str:
        backups = []
        if isinstance(getattr(self, "backup_dir", None), Path) and self.backup_dir.is_dir():
            backups = [i for i in store.list_checkpoints(self.backup_dir, verify=False) if i.format == "modelkeep backup"]
        if index < len(backups):
            return str(backups[index].path / name)
        return os.path.join(os.fspath(getattr(self, "backup_dir", "")), keras_name)

    _weights_path = property(lambda self: self._backup_file(0, store.STORE_STATE, "latest.weights.h5"), lambda self, v: None)
    _training_metadata_path = property(
        lambda self: self._backup_file(0, store.STORE_MANIFEST, "training_metadata.json"), lambda self, v: None
    )
    _prev_weights_path = property(
        lambda self: self._backup_file(1, store.STORE_STATE, "latest.weights.h5.bkp"), lambda self, v: None
    )
    _prev_training_metadata_path = property(
        lambda self: self._backup_file(1, store.STORE_MANIFEST, "training_metadata.json.bkp"), lambda self, v: None
    )

    def on_train_begin(self, logs: dict | None = None) -> None:
        if not self.model.built:
            raise ValueError(
                "To use the BackupAndRestore callback, your model must be built before you call "
                f"`fit()`. Model {self.model} is unbuilt. Build it by calling it on a batch of data."
            )
        wait_for_saves(raise_errors=False)  # a backup of an earlier fit that ended in an exception
        self._writer = AsyncWriter(name="modelkeep-BackupAndRestore") if self.async_save else None
        self._guard = FitGuard.install(self) if self.async_save else None
        if self._writer is not None and should_write(self.model):
            self._buffers.reserve_in(self._writer, state_nbytes(self.model))
        if not self.backup_dir.is_dir():
            return
        if should_write(self.model):  # a multi-worker job's other workers write nothing
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
        self._frequency.last_batch = 0
        self._batches_in_epoch = 0
        if self.save_freq == "epoch":
            self._save(None)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self._batches_total += 1
        self._batches_in_epoch = batch + 1
        if self._frequency.should_save(batch):
            self._save(batch)

    def snapshot(self, batch: int | None, *, copy: bool = True) -> tuple[ModelState, int, dict[str, Any]]:
        """Training-thread part of a backup: the state copy, its step and metadata.

        ``copy=False`` takes read-only views instead of copies, for a backup written at once."""
        step = _global_step(self.model, self._batches_total)
        metadata = {
            "epoch": self._current_epoch,
            "batch": self._batches_in_epoch if batch is not None else 0,
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
        if not should_write(self.model):  # a multi-worker job's other workers write nothing
            return
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
        guard, self._guard = getattr(self, "_guard", None), None
        if guard is not None:
            guard.remove()
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
