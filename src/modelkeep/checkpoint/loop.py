"""The epoch loop of ``mk.fit``: Keras's ``fit`` loop, owned, so that it can stop and restart
at any batch.

It calls callbacks in the order ``keras.Model.fit`` does, computes epoch logs and runs
validation as Keras does, and feeds batches from a positionable source
(:mod:`modelkeep.checkpoint.data_position`) to one compiled step function whose input
signature has an unknown batch dimension, so a resumed process traces the same graph
whatever batch it restarts at.

A resumed epoch's ``on_epoch_begin`` is not called again (it ran before the backup and
its effects, such as a learning rate a ``LearningRateScheduler`` set, are in the
restored state); only the progress bar is told that the epoch begins.

Example (what ``mk.fit`` does)::

    loop = TrainingLoop(model, source, callback_list, progress, epochs=5)
    loop.run(save=lambda: ...)
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from modelkeep import quiet
from modelkeep.checkpoint.data_position import DataSource


@dataclass
class Progress:
    """Where a run is: the data position lives in the source, the rest here."""

    epoch: int  # the epoch in progress, or the next one to start
    batch: int  # batches of ``epoch`` already trained on
    step: int  # optimizer steps taken by the run, across restarts
    seed: int  # the run's shuffle seed
    first_epoch: int
    stopped: bool = False  # ``model.stop_training`` was set
    finished: bool = False  # the run ended (``on_train_end`` reached)
    batch_logs: dict[str, Any] = field(default_factory=dict)
    epoch_logs: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def pythonify(logs: Any) -> dict[str, Any]:
    from keras.src.utils.python_utils import pythonify_logs

    return dict(pythonify_logs(logs or {}))


# --------------------------------------------------------------------------- step function
def _drop_trailing_none(batch: tuple) -> tuple:
    batch = tuple(batch)
    while len(batch) > 1 and batch[-1] is None:
        batch = batch[:-1]
    return batch


def _relaxed_spec(value: Any) -> Any:
    import tensorflow as tf

    if isinstance(value, tf.TensorSpec):
        shape = value.shape
    else:
        value = tf.convert_to_tensor(value)
        shape = value.shape
    if shape.rank:
        shape = tf.TensorShape([None] + shape.as_list()[1:])
    return tf.TensorSpec(shape, value.dtype)


def make_step_function(model: Any, spec_batch: tuple) -> Callable[[tuple], Any]:
    """One training step on one batch, traced once for an unknown batch size."""
    import keras
    import tensorflow as tf

    def step(data: Any) -> Any:
        return model.train_step(data)

    if model.run_eagerly:
        return step
    compiled = tf.function(step, reduce_retracing=True, jit_compile=bool(model.jit_compile))
    spec = keras.tree.map_structure(_relaxed_spec, _drop_trailing_none(spec_batch))
    compiled.get_concrete_function(spec)
    warned = []

    def run(data: Any) -> Any:
        logs = compiled(_drop_trailing_none(data))
        if compiled.experimental_get_tracing_count() > 1 and not warned:
            warned.append(True)
            warnings.warn(
                "mk.fit: a batch did not match the structure, dtypes or shapes of the first one, "
                "so the training step was traced again; a resumed run may trace in another order "
                "and differ in the last bits. Give every batch the same structure and dtypes.",
                stacklevel=2,
            )
        return logs

    return run


# --------------------------------------------------------------------------- the loop
@dataclass
class TrainingLoop:
    model: Any
    source: DataSource
    callbacks: Any  # keras.callbacks.CallbackList
    progress: Progress
    epochs: int
    steps_per_epoch: int | None = None
    validation: dict[str, Any] | None = None  # evaluate() keyword arguments
    validation_freq: Any = 1
    save_freq: Any = "epoch"
    save: Callable[[], None] = lambda: None
    step_function: Callable[[tuple], Any] | None = None

    def run(self) -> None:
        """Train from ``progress`` to the end; ``save`` is called at every backup point."""
        p = self.progress
        while p.epoch < self.epochs and not p.stopped:
            self._epoch(resumed=p.batch > 0)

    def _epoch(self, *, resumed: bool) -> None:
        p, model = self.progress, self.model
        epoch = p.epoch
        if resumed:
            self._progbar_epoch_begin(epoch)
        else:
            model.reset_metrics()
            self.source.on_epoch_begin()
            self.callbacks.on_epoch_begin(epoch)
        logs: Any = p.batch_logs
        ran = False
        while self._more_batches():
            batch = self.source.next_batch()
            if batch is None:
                if self.steps_per_epoch is not None:
                    warnings.warn(
                        f"mk.fit: the data ran out after {p.batch} of steps_per_epoch="
                        f"{self.steps_per_epoch} batches in epoch {epoch + 1}; the epoch ends early.",
                        stacklevel=3,
                    )
                break
            self.callbacks.on_train_batch_begin(p.batch)
            logs = self.step_function(batch)
            self.callbacks.on_train_batch_end(p.batch, logs)
            p.batch += 1
            p.step += 1
            ran = True
            p.batch_logs = pythonify(logs)
            if isinstance(self.save_freq, int) and p.step % self.save_freq == 0:
                self.save()
            if model.stop_training:
                break
        if not ran:
            logs = p.batch_logs
        self._end_epoch(epoch, logs)

    def _more_batches(self) -> bool:
        p = self.progress
        if self.steps_per_epoch is not None:
            return p.batch < self.steps_per_epoch
        # one epoch = the rest of the current pass (a new pass begins at batch 0)
        return p.batch == 0 or not self.source.end_of_pass()

    def _end_epoch(self, epoch: int, logs: Any) -> None:
        p, model = self.progress, self.model
        epoch_logs = dict(model._get_metrics_result_or_logs(logs))
        if self.validation is not None and model._should_eval(epoch, self.validation_freq):
            with quiet.determinism_rewrite_line():
                val_logs = model.evaluate(callbacks=self.callbacks, return_dict=True, **self.validation)
            epoch_logs.update({f"val_{name}": value for name, value in val_logs.items()})
        self.callbacks.on_epoch_end(epoch, epoch_logs)
        self.source.on_epoch_end()
        p.epoch_logs = pythonify(epoch_logs)
        p.epoch, p.batch = epoch + 1, 0
        p.stopped = bool(model.stop_training)
        if self.save_freq == "epoch":
            self.save()

    def _progbar_epoch_begin(self, epoch: int) -> None:
        import keras

        for callback in self.callbacks.callbacks:
            if isinstance(callback, keras.callbacks.ProgbarLogger):
                callback.on_epoch_begin(epoch)
