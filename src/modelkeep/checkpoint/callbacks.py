"""Keras callbacks that checkpoint during training and never lose a good checkpoint.

``ModelCheckpoint`` takes every argument of Keras 3's, with the same meaning, and
writes any format modelkeep knows (chosen from the path as in DESIGN.md), through the
commit protocol, with a manifest of checksums, and optional retention.
``BackupAndRestore`` is a drop-in superset of Keras's: its backups are modelkeep
``ckpt-<step>/`` directories, each committed with one rename, and it restores from the
newest one that verifies.

A save is two calls, so that a background writer can take the second one:

* ``snapshot(epoch, batch, logs) -> SaveJob | None`` runs on the training thread: it
  decides whether to save (best tracking), names the file and copies the state to
  host memory;
* ``write(job) -> CheckpointInfo | None`` encodes, writes, commits, writes the
  manifest, verifies and applies retention; errors follow ``on_error``.

Example::

    import modelkeep as mk
    model.fit(x, y, epochs=10, callbacks=[
        mk.ModelCheckpoint("run/ckpt-{epoch:02d}", save_weights_only=True, max_to_keep=3),
        mk.BackupAndRestore("run/backup"),
    ])
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from modelkeep.capture import capture, state_nbytes, versions
from modelkeep.checkpoint import remote, retention, store
from modelkeep.checkpoint.distribute import should_write
from modelkeep.checkpoint.fit_guard import FitGuard
from modelkeep.checkpoint.writer import AsyncWriter, SnapshotBuffers, wait_for_saves
from modelkeep.errors import CheckpointWriteError, CorruptCheckpointError
from modelkeep.formats import registry
from modelkeep.formats.base import Format
from modelkeep.formats.keras_zip import KerasZipSnapshot
from modelkeep.formats.keras_zip_direct import ALIGN as DIRECT_ALIGN
from modelkeep.formats.savedmodel import SavedModelTemplate
from modelkeep.formats.tf_checkpoint import DATA_SUFFIX, INDEX_SUFFIX, update_state_file, write_bundle
from modelkeep.state import ModelState
from modelkeep.storage.commit import clean_leftovers, fsync_path, write_error
from modelkeep.storage.phases import phase

log = logging.getLogger("modelkeep.checkpoint")

#: formats that Keras writes itself from the live model (no host snapshot possible)
LIVE_MODEL_FORMATS = (registry.KERAS_ZIP, registry.KERAS_WEIGHTS, registry.SAVED_MODEL)


@dataclass
class SaveJob:
    """Everything the write step needs; made on the training thread by ``snapshot``."""

    path: Path
    fmt: Format
    state: ModelState
    metadata: dict[str, Any]
    #: the live model, for formats Keras writes itself (``LIVE_MODEL_FORMATS``); else None
    model: Any = None
    previous_best: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------ helpers
def _check_save_freq(save_freq: Any, message: str = "model_checkpoint") -> None:
    """Keras's rule: ``"epoch"`` or any integer (``bool`` included); Keras's words on error."""
    if save_freq == "epoch" or isinstance(save_freq, int):
        return
    if message == "backup":
        raise ValueError(
            "Invalid value for argument `save_freq`. "
            f"Received: save_freq={save_freq}. Expected either 'epoch' or an integer value."
        )
    raise ValueError(
        f"Unrecognized save_freq: {save_freq}. Expected save_freq are 'epoch' or integer values"
    )


def _check_on_error(on_error: str) -> None:
    if on_error not in ("raise", "warn"):
        raise ValueError(f"on_error must be 'raise' or 'warn'. Received: on_error={on_error!r}")


def _global_step(model: Any, fallback: int) -> int:
    optimizer = getattr(model, "optimizer", None)
    iterations = getattr(optimizer, "iterations", None)
    if iterations is None:
        return fallback
    try:
        return int(np.asarray(iterations.numpy() if hasattr(iterations, "numpy") else iterations))
    except (TypeError, ValueError):
        return fallback


def _scalar_logs(logs: dict | None) -> dict[str, float]:
    out = {}
    for key, value in (logs or {}).items():
        try:
            out[key] = float(np.asarray(value))
        except (TypeError, ValueError):
            continue
    return out


def _as_write_error(path: Path, exc: BaseException) -> CheckpointWriteError:
    if isinstance(exc, CheckpointWriteError):
        # the format's writer names its temporary file; the user knows the checkpoint's name
        return exc if str(path) in str(exc) else write_error(path, OSError(exc.errno, exc.strerror))
    if isinstance(exc, OSError):
        return write_error(path, exc)
    # TensorFlow's SaveV2 reports ENOSPC and EACCES as OpErrors; keep its first line
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    errno_guess = 28 if "space" in message.lower() else (13 if "permission" in message.lower() else 5)
    return write_error(path, OSError(errno_guess, message))


def write_tf_checkpoint(state: ModelState, prefix: Path) -> None:
    """Write a TF checkpoint under ``prefix`` (a temporary name) without touching ``checkpoint``."""
    write_bundle(state, prefix)
    for suffix in (DATA_SUFFIX, INDEX_SUFFIX):
        fsync_path(str(prefix) + suffix)


def write_job(job: SaveJob) -> store.CheckpointInfo:
    """Encode, write and commit one checkpoint with its manifest; return its verified info.

    Safe to run on another thread than training for every format outside
    ``LIVE_MODEL_FORMATS`` (the job then holds only host arrays).
    """
    job.path.parent.mkdir(parents=True, exist_ok=True)
    tmp = store.temp_target(job.path)
    try:
        if job.fmt is registry.TF_CHECKPOINT:
            write_tf_checkpoint(job.state, tmp)
        elif job.extra.get("keras_zip") is not None:  # a .keras from the recorded snapshot
            job.extra["keras_zip"].write(tmp)
        elif job.extra.get("template") is not None:  # a SavedModel from the state: traced once a run
            job.extra["template"].write(job.state, tmp)
        elif job.model is not None and job.metadata.get("weights_only"):
            job.fmt.save_weights(job.model, tmp)
        elif job.model is not None:
            job.fmt.save_model(job.model, tmp, include_optimizer=True)
        else:
            job.fmt.write(job.state, tmp)
        info = store.commit_checkpoint(tmp, job.path, job.fmt, job.metadata)
        if job.fmt is registry.TF_CHECKPOINT:
            update_state_file(job.path.absolute())  # relative dirs give "../name" entries
        return info
    finally:
        _remove_temps(tmp)


def _remove_temps(tmp: Path) -> None:
    for leftover in tmp.parent.glob(tmp.name + "*"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


class _SaveFrequency:
    """Keras's batch counting for an integer ``save_freq`` (steps_per_execution aware).

    As Keras: ``True`` is 1, and 0 or a negative number saves after every batch. ``False``
    means no save by batch count (what Keras's docstring says it is for; Keras's code saves
    after every batch then).
    """

    def __init__(self, save_freq: Any, last_batch: int | None = None) -> None:
        self.save_freq = save_freq
        self.seen_since_save = 0
        self.last_batch: int | None = last_batch

    def should_save(self, batch: int) -> bool:
        if self.save_freq == "epoch" or self.save_freq is False:
            return False
        if self.last_batch is None or batch <= self.last_batch:
            added = batch + 1
        else:
            added = batch - self.last_batch
        self.seen_since_save += added
        self.last_batch = batch
        if self.seen_since_save >= self.save_freq:
            self.seen_since_save = 0
            return True
        return False


# ------------------------------------------------------------------------ ModelCheckpoint
#: Keras's class as imported (``modelkeep.compat`` may later rebind the public name)
_KERAS_MODEL_CHECKPOINT = keras.callbacks.ModelCheckpoint


class ModelCheckpoint(_KERAS_MODEL_CHECKPOINT):
    """Keras 3's ``ModelCheckpoint`` with every format, atomic saves, manifests and retention.

    Arguments as Keras's (``filepath`` templates with ``{epoch}``, ``{batch}`` and logged
    metrics; ``monitor``, ``verbose``, ``save_best_only``, ``save_weights_only``, ``mode``,
    ``save_freq``, ``initial_value_threshold``), plus:

    * ``frequency``: the TF2 tutorial's name for ``save_freq``;
    * ``max_to_keep`` (newest N), ``keep_best`` (K best by ``monitor``),
      ``keep_every_n_epochs`` / ``keep_every_n_hours`` (kept for good); rules combine;
    * ``on_error``: ``"raise"`` (default) a ``CheckpointWriteError`` on a failed save, or
      ``"warn"``: log it, count it in ``failed_saves`` and keep training;
    * ``async_save`` (default True): training only copies the state to host memory; a
      background thread (``checkpoint.writer.AsyncWriter``) writes and commits it, one save
      in flight (the next waits for it). A failed background save raises at the next save
      or at the end of ``fit``. The copy goes into one host buffer kept for the next save
      (one copy of the state stays allocated during ``fit``). ``.keras`` zips are written
      from that copy too (Keras's own state walk, recorded), and SavedModels from a template
      traced at the run's first save (``formats.savedmodel.SavedModelTemplate``); only
      ``.weights.h5``, and models whose layers keep assets or other resources, are saved
      synchronously from the live model.

    The format comes from the path: a bare prefix with ``save_weights_only=True`` writes
    TF checkpoints (``tf.train.latest_checkpoint(dir)`` names the newest), a bare path
    without it SavedModel directories; ``.h5``, ``.keras``, ``.weights.h5``,
    ``.safetensors`` their formats.

    Example::

        mk.ModelCheckpoint("saved_modelname", save_weights_only=True)      # the tutorial
        mk.ModelCheckpoint("run/w-{epoch:03d}-{val_loss:.3f}.h5", save_weights_only=True,
                           max_to_keep=3, keep_best=1)
    """

    def __init__(
        self,
        filepath: str | os.PathLike,
        monitor: str = "val_loss",
        verbose: int = 0,
        save_best_only: bool = False,
        save_weights_only: bool = False,
        mode: str = "auto",
        save_freq: str | int = "epoch",
        initial_value_threshold: float | None = None,
        *,
        frequency: str | int | None = None,
        max_to_keep: int | None = None,
        keep_best: int | None = None,
        keep_every_n_epochs: int | None = None,
        keep_every_n_hours: float | None = None,
        on_error: str = "raise",
        async_save: bool = True,
    ) -> None:
        # Keras's own __init__ would refuse every format but .keras/.h5/.weights.h5, so its
        # parent's (MonitorCallback: monitor, mode, best, min_delta, monitor_op) runs, and the
        # rest of Keras's attributes are set below.
        super(_KERAS_MODEL_CHECKPOINT, self).__init__(monitor, mode, initial_value_threshold)
        self.async_save = async_save
        self._writer: AsyncWriter | None = None
        self._buffers = SnapshotBuffers()
        self._sm_template: SavedModelTemplate | None | bool = None
        if frequency is not None:
            if save_freq != "epoch" and save_freq != frequency:
                raise ValueError(
                    f"frequency={frequency!r} and save_freq={save_freq!r} disagree; frequency is "
                    "the tutorial's name for save_freq, give one of them."
                )
            save_freq = frequency
        _check_save_freq(save_freq)
        _check_on_error(on_error)
        for name, value in (("max_to_keep", max_to_keep), ("keep_best", keep_best)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be a positive integer or None. Received: {name}={value}")
        self.filepath = os.fspath(filepath)
        #: a URL's directory (s3://b/run): checkpoints are staged locally, committed there
        self._remote_dir = remote.template_directory(self.filepath)
        self._stage: Path | None = None
        self.verbose = verbose
        self.save_best_only = save_best_only
        self.save_weights_only = save_weights_only
        self.save_freq = save_freq
        self.on_error = on_error
        self.retention = {
            "max_to_keep": max_to_keep,
            "keep_best": keep_best,
            "keep_every_n_epochs": keep_every_n_epochs,
            "keep_every_n_hours": keep_every_n_hours,
        }
        self.failed_saves = 0
        self.last_error: CheckpointWriteError | None = None
        self.saved: list[Path] = []
        self._frequency = _SaveFrequency(save_freq)
        self._current_epoch = 0
        self._batches_total = 0
        self.format_for(Path(self.filepath))  # a path no format fits fails here, not mid-training

    # Keras's counters, as views of modelkeep's (code written against Keras reads them)
    @property
    def _batches_seen_since_last_saving(self) -> int:
        return self._frequency.seen_since_save

    @_batches_seen_since_last_saving.setter
    def _batches_seen_since_last_saving(self, value: int) -> None:
        self._frequency.seen_since_save = value

    @property
    def _last_batch_seen(self) -> int | None:
        return self._frequency.last_batch

    @_last_batch_seen.setter
    def _last_batch_seen(self, value: int | None) -> None:
        self._frequency.last_batch = value

    @property
    def _direction(self) -> str | None:
        """``"min"``/``"max"`` once ``monitor_op`` is set (Keras's rule for ``mode="auto"``)."""
        if self.monitor_op is None:
            return None if self.mode == "auto" else self.mode
        return "max" if self.monitor_op is keras.ops.greater else "min"

    # ---------------------------------------------------------------- format and names
    def format_for(self, path: Path) -> Format:
        """The format this callback writes ``path`` in (DESIGN.md path rules)."""
        if self.save_weights_only:
            return registry.weights_format(path)
        return registry.model_format(path)

    def file_path(self, epoch: int, batch: int | None, logs: dict | None) -> Path:
        """The filepath template filled as Keras fills it (``epoch`` and ``batch`` 1-based)."""
        logs = dict(logs or {})
        try:
            if batch is None or "batch" in logs:
                text = self.filepath.format(epoch=epoch + 1, **logs)
            else:
                text = self.filepath.format(epoch=epoch + 1, batch=batch + 1, **logs)
        except KeyError as exc:
            raise KeyError(
                f'Failed to format this callback filepath: "{self.filepath}". Reason: {exc}. '
                "Every {name} in the path must be epoch, batch or a logged metric."
            ) from exc
        if self._remote_dir is not None:  # written here first, then uploaded by write()
            if self._stage is None:
                self._stage = remote.new_stage(2 * remote.model_bytes(self.model))
            return self._stage / text.rsplit("/", 1)[-1]
        return Path(text)

    def _directory(self) -> Path | None:
        parent = Path(self.filepath).parent
        return None if "{" in str(parent) else parent

    # ---------------------------------------------------------------- Keras hooks
    def on_train_begin(self, logs: dict | None = None) -> None:
        wait_for_saves(raise_errors=False)  # a save of an earlier fit that ended in an exception
        self._writer = AsyncWriter(name="modelkeep-ModelCheckpoint") if self.async_save else None
        self._guard = FitGuard.install(self) if self.async_save else None
        self._sm_template = None  # traced again in each fit: once a run
        snapshots = self.format_for(Path(self.filepath)) is not registry.KERAS_WEIGHTS  # saved live, no snapshot
        if self._writer is not None and snapshots and should_write(self.model):
            nbytes = state_nbytes(self.model, include_optimizer=not self.save_weights_only)
            slack = DIRECT_ALIGN * (len(self.model.variables) + len(getattr(self.model.optimizer, "variables", None) or []) + 1)
            self._buffers.reserve_in(self._writer, nbytes + slack)  # room for each array's alignment
        if self._remote_dir is not None and should_write(self.model):  # chief only
            self._clean_remote()
        directory = self._directory()
        if self._remote_dir is None and directory is not None and directory.is_dir() and should_write(self.model):
            removed = clean_leftovers(directory)
            store.recover_pending(directory)
            if removed and self.verbose:
                log.info("removed %d leftovers of an interrupted save in %s", len(removed), directory)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._current_epoch = epoch

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self._batches_total += 1
        if self._frequency.should_save(batch):
            self._save(self._current_epoch, batch, logs)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.save_freq == "epoch":
            self._save(epoch, None, logs)

    def _save(self, epoch: int, batch: int | None, logs: dict | None) -> None:
        if self.monitor_op is None:
            # Keras's check (mode="auto" on a monitor whose direction it cannot tell raises a
            # ValueError), made before the first save, by batch count too
            self._set_monitor_op()
        if not should_write(self.model):  # a multi-worker job's other workers write nothing here
            self._follow_chief(epoch, batch, logs)
            return
        fmt = self.format_for(self.file_path(epoch, batch, logs))
        template = self._template(epoch, batch, logs) if fmt is registry.SAVED_MODEL else None
        if fmt is registry.KERAS_ZIP and self._writer is not None and self._remote_dir is None:
            template = self._keras_zip_ok()
        if self._writer is None or (fmt in LIVE_MODEL_FORMATS and template is None):
            if self._writer is not None:
                self._writer.wait()  # keep saves in order; surface a background error
            job = self.snapshot(epoch, batch, logs, copy=False)  # written now: no copy needed
            if job is not None and self._remote_dir is not None and self._writer is not None:
                # Keras writes the staged copy from the live model now; the upload goes in the background
                if self.write(job, step="local") is not None:
                    self._writer.submit(lambda: self.write(job, step="upload"), label=f"upload of {job.path.name}")
            elif job is not None:
                self.write(job)
            return
        self._writer.save(
            lambda: self._buffered(self.snapshot(epoch, batch, logs, copy=False, template=template)),
            lambda job: None if job is None else self.write(job),
            label=f"epoch {epoch + 1}" + ("" if batch is None else f" batch {batch + 1}"),
        )

    def _follow_chief(self, epoch: int, batch: int | None, logs: dict | None) -> None:
        """A non-chief worker: decide as the chief does, write nothing to ``filepath``.

        Keras's writers (``LIVE_MODEL_FORMATS``) read the metric variables, which is a
        collective every worker must join: those saves go to a local temporary directory,
        deleted at once (what Keras's own ModelCheckpoint does under MultiWorkerMirroredStrategy)."""
        path = self.file_path(epoch, batch, logs)
        if self.format_for(path) not in LIVE_MODEL_FORMATS:
            self._should_save(epoch, path, logs)  # keeps `best` equal to the chief's
            return
        job = self.snapshot(epoch, batch, logs, copy=False)
        if job is None:
            return
        with tempfile.TemporaryDirectory(prefix="modelkeep-worker-") as tmp:
            throwaway = Path(tmp) / path.name
            if self.save_weights_only:
                job.fmt.save_weights(self.model, throwaway)
            else:
                job.fmt.save_model(self.model, throwaway, include_optimizer=True)

    def _buffered(self, job: SaveJob | None) -> SaveJob | None:
        if job is not None and job.extra.get("keras_zip") is not None:
            snap = job.extra["keras_zip"]
            # the one copy, each array page-aligned: the .keras writer sends whole blocks with O_DIRECT
            snap.arrays = self._buffers.copy(ModelState(snap.arrays), align=DIRECT_ALIGN).variables
            snap.rng = {k[len("rng/"):]: v for k, v in snap.arrays.items() if k.startswith("rng/")}
        elif job is not None and job.model is None:
            # the one copy, into reused memory; TensorFlow's writers share it when 64-byte aligned
            align = 64 if job.fmt in (registry.TF_CHECKPOINT, registry.SAVED_MODEL) else 1
            job.state = self._buffers.copy(job.state, align=align)
        return job

    def _keras_zip_ok(self) -> str | None:
        """``"keras_zip"`` when ``.keras`` saves can be written from a snapshot (no layer keeps assets)."""
        if any(hasattr(layer, "save_assets") for layer in self.model._flatten_layers(include_self=True)):
            return None
        return "keras_zip"

    def _template(self, epoch: int, batch: int | None, logs: dict | None) -> SavedModelTemplate | None:
        """The SavedModel template of this run (traced at its first save), or None: saved whole."""
        if self._writer is None or self._remote_dir is not None or not should_write(self.model):
            return None
        if self._sm_template is False:  # this model's SavedModel cannot be made from a state
            return None
        if isinstance(self._sm_template, SavedModelTemplate) and self._sm_template.fits(self.model):
            return self._sm_template
        self._writer.wait()  # the scratch export runs alone
        path = self.file_path(epoch, batch, logs)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._sm_template = SavedModelTemplate.trace(self.model, store.temp_target(path)) or False
        return self._sm_template or None

    def on_train_end(self, logs: dict | None = None) -> None:
        """Wait for the last background save; raise its error, if any."""
        writer, self._writer = self._writer, None
        guard, self._guard = getattr(self, "_guard", None), None
        if guard is not None:
            guard.remove()
        try:
            if writer is not None:
                try:
                    writer.close()
                finally:
                    self._buffers.release()
        finally:
            if self._stage is not None:  # a URL's staging directory (its files are gone already)
                shutil.rmtree(self._stage, ignore_errors=True)
                self._stage = None

    # ---------------------------------------------------------------- the two steps
    def snapshot(
        self, epoch: int, batch: int | None, logs: dict | None, *, copy: bool = True, template: SavedModelTemplate | None = None
    ) -> SaveJob | None:
        """Training-thread part of a save: decide, name, copy the state. None: no save.

        ``copy=False`` takes read-only views instead of copies, for a save written at once.
        With a SavedModel ``template``, the state is captured and the SavedModel is written
        from it (no live model needed)."""
        path = self.file_path(epoch, batch, logs)
        previous_best = self.best
        if not self._should_save(epoch, path, logs):
            return None
        fmt = self.format_for(path)
        step = _global_step(self.model, self._batches_total)
        metadata = {
            "step": step,
            "epoch": epoch + 1,
            "batch": None if batch is None else batch + 1,
            "logs": _scalar_logs(logs),
            "wall_time": time.time(),
            "monitor": self.monitor,
            "mode": self._direction,
            "best": None if self.best is None else float(self.best),
            "callback": "ModelCheckpoint",
            "template": self.filepath,
            "weights_only": self.save_weights_only,
        }
        live = fmt in LIVE_MODEL_FORMATS and template is None
        extra: dict[str, Any] = {}
        if template == "keras_zip":  # Keras's own walk of the model, recorded; copied by _buffered
            state, extra["keras_zip"] = ModelState(metadata={"versions": versions()}), KerasZipSnapshot.take(self.model, copy=copy)
        else:
            state = ModelState() if live else capture(self.model, include_optimizer=not self.save_weights_only, copy=copy)
            if not live:
                state.metadata.update({k: metadata[k] for k in ("step", "epoch", "batch", "logs")})
            if template is not None:
                extra["template"] = template
        metadata["versions"] = state.metadata.get("versions")
        return SaveJob(path, fmt, state, metadata, model=self.model if live else None, previous_best=previous_best, extra=extra)

    def write(self, job: SaveJob, *, step: str = "all") -> store.CheckpointInfo | None:
        """Write, commit, verify, then apply retention. Errors follow ``on_error``.

        For a URL, ``step="local"`` only writes the staged copy and ``step="upload"`` does the
        rest (upload, commit, retention), so the upload can run on the writer's thread."""
        where = job.path if self._remote_dir is None else remote.RemotePath(self._remote_dir) / job.path.name
        try:
            info = write_job(job) if step != "upload" else None
            if step == "local":
                return info
            if self._remote_dir is not None:  # the local commit is the staged copy: upload, commit
                info = remote.publish_checkpoint(self._remote_dir, job.path, job.fmt)
        except Exception as exc:  # noqa: BLE001 - every failure of a save is reported the same way
            if not isinstance(exc, OSError) and type(exc).__module__.split(".")[0] != "tensorflow":
                raise
            self.best = job.previous_best  # the checkpoint of that best value does not exist
            error = exc if isinstance(exc, CorruptCheckpointError) else _as_write_error(where, exc)
            self.last_error = error if isinstance(error, CheckpointWriteError) else None
            if self.on_error == "raise":
                if error is exc:
                    raise
                raise error from exc
            self.failed_saves += 1
            log.warning("%s (failed saves so far: %d; training goes on)", error, self.failed_saves)
            warnings.warn(f"{error} Training goes on (on_error='warn').", stacklevel=2)
            return None
        self.saved.append(where)
        if self.verbose > 0:
            print(f"\nEpoch {job.metadata['epoch']}: finished saving model to {where}")
        with phase("retention"):
            self._apply_retention(where.parent)
        return info

    def _clean_remote(self) -> None:
        try:
            remote.clean(self._remote_dir)
        except OSError as exc:  # the store is unreachable: the first save will say so
            log.warning("could not clean leftovers in %s: %s", self._remote_dir, exc)

    def _apply_retention(self, directory: Path) -> list[Path]:
        if not any(v is not None for v in self.retention.values()):
            return []
        try:
            return retention.apply_retention(
                directory,
                monitor=self.monitor,
                mode=self._direction or "auto",
                select=lambda info: info.metadata.get("template") == self.filepath,
                **self.retention,
            )
        except OSError as exc:
            log.warning("retention in %s failed (%s); nothing more was deleted", directory, exc)
            return []

    # ---------------------------------------------------------------- best tracking
    def _should_save(self, epoch: int, path: Path, logs: dict | None) -> bool:
        if self.monitor_op is None:
            self._set_monitor_op()
        if not self.save_best_only:
            if self.verbose > 0:
                print(f"\nEpoch {epoch + 1}: saving model to {path}")
            return True
        current = (logs or {}).get(self.monitor)
        if current is None:
            warnings.warn(f"Can save best model only with {self.monitor} available.", stacklevel=3)
            return True
        current_array = np.asarray(current)
        if current_array.ndim > 0:
            warnings.warn(
                f"Can save best model only when `monitor` is a scalar value. Received: {current}. "
                "Falling back to `save_best_only=False`.",
                stacklevel=3,
            )
            return True
        value = float(current_array)
        best_text = "None" if self.best is None else f"{self.best:.5f}"
        if not math.isnan(value) and bool(self._is_improvement(value, self.best)):
            if self.verbose > 0:
                print(
                    f"\nEpoch {epoch + 1}: {self.monitor} improved from {best_text} to {value:.5f}, "
                    f"saving model to {path}"
                )
            self.best = value
            return True
        if self.verbose > 0:
            print(f"\nEpoch {epoch + 1}: {self.monitor} did not improve from {best_text}")
        return False


# ------------------------------------------------------------------------ BackupAndRestore
