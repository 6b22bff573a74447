"""Exact resume: ``mk.fit`` — kill training at any step, run the same command again, get the
bitwise-identical model.

``fit(model, x, y, backup_dir=..., save_freq=...)`` takes every argument of
``keras.Model.fit``. It writes backups to ``backup_dir`` (``ckpt-<step>/``, committed
atomically, the newest ``keep_backups`` kept) and, when ``backup_dir`` already holds a good
one, continues from it, in the middle of an epoch if that is where it was.

A backup holds everything a run's future depends on: model and optimizer variables,
seed-generator states, metric accumulators, the global RNG states (Python, NumPy, Keras,
TensorFlow), the data position (epoch, batch, pass and shuffle order), callback states,
and the history so far. Taking a backup is two steps, so that the write can move off the
training thread: :func:`snapshot` copies the state to host memory, :func:`write_backup`
commits it to disk and rotates old backups.

Example::

    keras.utils.set_random_seed(1)
    history = mk.fit(model, x, y, epochs=10, batch_size=32, validation_split=0.2,
                     backup_dir="run/backups", save_freq=50)
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelkeep import capture as cap
from modelkeep.checkpoint import callback_state, distribute, rng_state, store
from modelkeep.checkpoint.data_position import ArraySource, make_source
from modelkeep.checkpoint.loop import Progress, TrainingLoop, make_step_function
from modelkeep.checkpoint.writer import AsyncWriter, wait_for_saves
from modelkeep.errors import IncompatibleModelError
from modelkeep.state import ModelState
from modelkeep.storage.commit import clean_leftovers, temp_sibling
from modelkeep.storage.fs import RemotePath, as_location

RESUME_KEY = "resume"
RESUME_VERSION = 1
ORDER_KEY = "data/order"


# --------------------------------------------------------------------------- snapshot / write
def snapshot(model: Any, progress: Progress, source: Any, callbacks: list[Any], history: Any) -> ModelState:
    """Copy everything a resumed run needs to host memory (no disk I/O)."""
    state = cap.capture(model, include_optimizer=True)
    variables = dict(state.variables)
    variables.update(cap.capture_training_state(model))
    rng_arrays, rng_info = rng_state.capture_global_rngs()
    variables.update(rng_arrays)
    cb_arrays, cb_infos, _missing = callback_state.capture_callbacks(callbacks)
    variables.update(cb_arrays)
    data_state = None
    dataset = getattr(source, "dataset", None)
    if callable(getattr(dataset, "get_state", None)):
        arrays, data_state = callback_state.encode("data/state", dataset.get_state())
        variables.update(arrays)
    if isinstance(source, ArraySource) and source.shuffle and source.pass_index >= 0:
        variables[ORDER_KEY] = source.order.astype(np.int64)
    resume = {
        "version": RESUME_VERSION,
        "progress": progress.as_dict(),
        "position": source.position(),
        "rng": rng_info,
        "callbacks": cb_infos,
        "data_state": data_state,
        "history": {"history": copy.deepcopy(history.history), "epoch": list(history.epoch)},
    }
    meta = {**state.metadata, RESUME_KEY: resume, "epoch": progress.epoch, "batch": progress.batch}
    if progress.epoch_logs:
        meta["logs"] = progress.epoch_logs
    return ModelState(variables, state.model_config, state.compile_config, meta)


def write_backup(backup_dir: Path | str, state: ModelState, *, step: int, keep: int = 2) -> store.CheckpointInfo:
    """Commit ``state`` as ``backup_dir/ckpt-<step>/``, then delete all but the newest ``keep``."""
    info = store.save_state(backup_dir, state, step=step)
    prune_backups(as_location(backup_dir), keep=keep, protect=info.path)
    return info


def prune_backups(backup_dir: Path, *, keep: int, protect: Path | None = None) -> list[Path]:
    """Remove backups older than the newest ``keep``; a removal is a rename first, so a kill
    halfway leaves a leftover (cleaned on the next start), never a half-deleted backup."""
    if isinstance(backup_dir, RemotePath):  # object storage: delete by commit records
        from modelkeep.checkpoint import remote

        return remote.prune_backups(backup_dir, keep=keep, protect=protect)
    dirs = [p for p in backup_dir.iterdir() if p.is_dir() and p.name.startswith(store.STORE_PREFIX)
            and not _is_leftover(p)]
    dirs.sort(key=lambda p: p.name, reverse=True)
    removed = []
    for old in dirs[max(keep, 1):]:
        if protect is not None and old == protect:
            continue
        doomed = temp_sibling(old, keep_suffix=".old")
        os.rename(old, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
        removed.append(old)
    return removed


def _is_leftover(path: Path) -> bool:
    from modelkeep.storage.commit import is_leftover

    return is_leftover(path.name)


# --------------------------------------------------------------------------- restore
def restore_snapshot(model: Any, state: ModelState, source: Any, callbacks: list[Any], history: Any,
                     *, origin: str) -> tuple[Progress, list[str]]:
    """Put a run back where ``state`` was taken; return its progress and what was not restored."""
    resume = state.metadata[RESUME_KEY]
    position = resume["position"]
    source.check_position(position)
    cap.restore(model, state, source=origin)
    notes = [f"variable {n}" for n in cap.restore_training_state(model, state.variables)]
    notes += callback_state.restore_callbacks(callbacks, state.variables, resume["callbacks"])
    dataset = getattr(source, "dataset", None)
    if resume.get("data_state") is not None and callable(getattr(dataset, "set_state", None)):
        dataset.set_state(callback_state.decode("data/state", state.variables, resume["data_state"]))
    history.history = copy.deepcopy(resume["history"]["history"])
    history.epoch = list(resume["history"]["epoch"])
    _restore_position(source, position, state.variables.get(ORDER_KEY))
    rng_arrays = {k: v for k, v in state.variables.items() if k.startswith("rng/")}
    notes += rng_state.restore_global_rngs(rng_arrays, resume["rng"])
    return Progress(**resume["progress"]), notes


def _restore_position(source: Any, position: dict[str, Any], order: np.ndarray | None) -> None:
    if position["pass_done"]:
        source.pass_index, source.offset, source.pass_done = position["pass"], position["offset"], True
    else:
        source.seek(position["pass"], position["offset"])
    if order is not None and not np.array_equal(order, source.order):
        raise IncompatibleModelError(
            "mk.fit: the shuffle order saved in the backup differs from the one this process "
            "computes (different NumPy version?). Resume with the environment that wrote the backup."
        )


def find_backup(backup_dir: Path) -> tuple[store.CheckpointInfo | None, ModelState | None]:
    """The newest good backup of ``mk.fit`` in ``backup_dir`` (corrupt ones skipped with a warning)."""
    info = store.latest_good(backup_dir)
    if info is None:
        return None, None
    return load_backup(info.path, info)


def load_backup(path: Path, info: store.CheckpointInfo | None = None) -> tuple[store.CheckpointInfo, ModelState]:
    """One backup of ``mk.fit``, verified, with its info."""
    info = info or store.info_for(path)
    state = store.load_state(info.path)
    if RESUME_KEY not in state.metadata:
        raise IncompatibleModelError(
            f"mk.fit: {info.path} was not written by mk.fit (it has no resume state). "
            "Give mk.fit a backup_dir of its own."
        )
    return info, state


# --------------------------------------------------------------------------- fit
def fit(
    model: Any,
    x: Any = None,
    y: Any = None,
    *,
    backup_dir: str | os.PathLike,
    save_freq: str | int = "epoch",
    batch_size: int | None = None,
    epochs: int = 1,
    verbose: Any = "auto",
    callbacks: list[Any] | None = None,
    validation_split: float = 0.0,
    validation_data: Any = None,
    shuffle: bool = True,
    class_weight: dict | None = None,
    sample_weight: Any = None,
    initial_epoch: int = 0,
    steps_per_epoch: int | None = None,
    validation_steps: int | None = None,
    validation_batch_size: int | None = None,
    validation_freq: Any = 1,
    keep_backups: int = 2,
    async_save: bool = True,
) -> Any:
    """``model.fit`` that survives being killed: run the same call again and it continues from
    the newest good backup in ``backup_dir`` and ends with the same model, bit for bit.

    ``save_freq`` is ``"epoch"`` or a number of optimizer steps; ``keep_backups`` how many
    backups stay on disk. With ``async_save`` (default) the training thread only copies the
    state; a background thread writes each backup (one in flight; ``fit`` returns after the
    last one is committed). Returns the ``History``, covering every epoch across restarts.

    Example::

        keras.utils.set_random_seed(1)
        tf.config.experimental.enable_op_determinism()
        history = mk.fit(model, x, y, epochs=5, batch_size=32, backup_dir="backups", save_freq=20)
    """
    arguments = dict(locals())
    import keras

    dist = distribute.context_for(model)  # a tf.distribute strategy: see checkpoint/distribute.py
    if dist is not None and not dist.in_scope():
        with dist.scope():
            return fit(**arguments)
    _check_arguments(model, save_freq, callbacks, class_weight, sample_weight)
    backup_dir = as_location(backup_dir)  # s3://... stays a URL (RemotePath)
    if dist is None or dist.is_writer:  # the other workers of a multi-worker job write nothing
        backup_dir.mkdir(parents=True, exist_ok=True)
        clean_leftovers(backup_dir)
    wait_for_saves(raise_errors=False)  # a backup of an earlier fit that ended in an exception
    if validation_split and validation_data is None:
        from keras.src.trainers.data_adapters.array_slicing import train_validation_split

        (x, y, sample_weight), validation_data = train_validation_split(
            (x, y, sample_weight), validation_split=validation_split
        )
    info, saved = dist.agreed_backup(backup_dir, find_backup, load_backup) if dist else find_backup(backup_dir)
    seed = saved.metadata[RESUME_KEY]["progress"]["seed"] if saved else int(np.random.randint(0, 2**31 - 1))
    seed = dist.broadcast(seed) if dist else seed  # every worker shuffles as the chief does
    source = make_source(x, y, sample_weight, batch_size=batch_size, shuffle=shuffle, seed=seed,
                         class_weight=class_weight)
    source = dist.source(source) if dist else source
    spec_batch = source.spec_batch()
    cap.build_for_training(model, spec_batch)
    user_callbacks = list(callbacks or [])
    cbs = keras.callbacks.CallbackList(
        user_callbacks, add_history=True, add_progbar=verbose != 0, verbose=verbose, epochs=epochs,
        steps=steps_per_epoch or source.num_batches, model=model,
    )
    history = next(c for c in cbs.callbacks if isinstance(c, keras.callbacks.History))
    progress = Progress(epoch=initial_epoch, batch=0, step=0, seed=seed, first_epoch=initial_epoch)
    model.stop_training = False
    cbs.on_train_begin()
    if saved is not None:
        progress, notes = restore_snapshot(model, saved, source, user_callbacks, history, origin=str(info.path))
        notes += dist.restore_replicas(model, saved.variables) if dist else []
        model.stop_training = progress.stopped
        if verbose != 0:
            print(_resume_line(info.path, progress, epochs, steps_per_epoch or source.num_batches, notes))
    if not (progress.finished and (progress.stopped or progress.epoch >= epochs)):
        progress.finished = False
        backups = _Backups(backup_dir, keep_backups, model, progress, source, user_callbacks, history,
                           AsyncWriter(name="modelkeep-fit") if async_save else None, dist)
        validation = _validation_kwargs(validation_data, batch_size, validation_batch_size, validation_steps)
        distribute.refuse_unsupported(dist, validation)
        loop = TrainingLoop(
            model, source, cbs, progress, epochs, steps_per_epoch=steps_per_epoch,
            validation=validation, validation_freq=validation_freq, save_freq=save_freq, save=backups.save,
            step_function=dist.step_function(model, spec_batch, split=source.kind != "tf.data")
            if dist else make_step_function(model, spec_batch),
        )
        with dist.lost_worker_errors(backup_dir, progress) if dist else contextlib.nullcontext():
            _train(loop, backups, epochs)
    cbs.on_train_end(logs=progress.epoch_logs)
    return history


@dataclass
class _Backups:
    """Takes the backups of one ``fit`` call: snapshot on the training thread, write on the
    writer's thread (or here, without one)."""

    directory: Path
    keep: int
    model: Any
    progress: Progress
    source: Any
    callbacks: list[Any]
    history: Any
    writer: AsyncWriter | None = None
    dist: Any = None  # a distribute.Distributed: snapshots are collective, only the chief writes

    def _snapshot(self) -> ModelState:
        state = snapshot(self.model, self.progress, self.source, self.callbacks, self.history)
        return self.dist.add_replicas(state, self.model) if self.dist else state

    def save(self) -> None:
        if self.dist is not None and not self.dist.is_writer:
            self._snapshot()  # its collectives, with the chief's; nothing is written here
            return
        if self.writer is None:
            write_backup(self.directory, self._snapshot(), step=self.progress.step, keep=self.keep)
            return
        self.writer.save(  # waits for the backup in flight, then copies the state here
            lambda: (self._snapshot(), self.progress.step),
            lambda taken: write_backup(self.directory, taken[0], step=taken[1], keep=self.keep),
            label=f"backup at step {self.progress.step}",
        )

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()  # the final backup is committed (or its error raised) before returning

    def abandon(self) -> None:
        if self.writer is not None:  # leave no backup half-written behind a raised exception
            wait_for_saves(raise_errors=False)


def _train(loop: TrainingLoop, backups: _Backups, epochs: int) -> None:
    """Run the loop to the end, finalize the optimizer and take the final backup."""
    import keras

    try:
        loop.run()
    except BaseException:
        backups.abandon()
        raise
    model = loop.model
    if epochs > 0 and isinstance(model.optimizer, keras.optimizers.Optimizer):
        model.optimizer.finalize_variable_values(model.trainable_weights)
    loop.progress.finished = True
    backups.save()
    backups.close()


def _check_arguments(model: Any, save_freq: Any, callbacks: Any, class_weight: Any, sample_weight: Any) -> None:
    import keras

    if not getattr(model, "compiled", False) or getattr(model, "optimizer", None) is None:
        raise ValueError("mk.fit: the model is not compiled. Call model.compile(optimizer=..., loss=...) first.")
    if not (save_freq == "epoch" or (isinstance(save_freq, int) and save_freq > 0)):
        raise ValueError(f"mk.fit: save_freq must be 'epoch' or a positive number of steps. Received: {save_freq!r}")
    if class_weight is not None and sample_weight is not None:
        raise ValueError("mk.fit: `sample_weight` and `class_weight` cannot be given together. Drop one.")
    for callback in callbacks or []:
        if isinstance(callback, keras.callbacks.BackupAndRestore) or type(callback).__name__ == "BackupAndRestore":
            raise ValueError(
                "mk.fit: remove the BackupAndRestore callback; mk.fit takes its own backups in "
                "backup_dir (with the RNG, data and callback state BackupAndRestore does not keep)."
            )


def _validation_kwargs(data: Any, batch_size: Any, validation_batch_size: Any, steps: Any) -> dict | None:
    if data is None:
        return None
    from keras.src.trainers.data_adapters import data_adapter_utils

    if isinstance(data, (tuple, list)):
        vx, vy, vsw = data_adapter_utils.unpack_x_y_sample_weight(tuple(data))
    else:
        vx, vy, vsw = data, None, None
    kwargs = {"x": vx, "y": vy, "sample_weight": vsw, "steps": steps}
    with contextlib.suppress(ImportError):
        import tensorflow as tf

        if not isinstance(vx, tf.data.Dataset) and not hasattr(vx, "num_batches"):
            kwargs["batch_size"] = validation_batch_size or batch_size
    return kwargs


def _resume_line(path: Path, progress: Progress, epochs: int, steps: int | None, notes: list[str]) -> str:
    where = f"epoch {progress.epoch + 1}/{epochs}, batch {progress.batch}/{steps if steps else '?'}"
    if progress.finished and (progress.stopped or progress.epoch >= epochs):
        where = f"the end of training (epoch {progress.epoch}/{epochs})"
    missing = "; not restored: " + ", ".join(notes) if notes else "; everything restored"
    return f"mk.fit: resumed from {path.name} at {where}, step {progress.step}{missing}"
