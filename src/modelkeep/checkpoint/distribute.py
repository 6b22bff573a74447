"""``mk.fit`` under ``tf.distribute``: the step runs through the strategy, the chief saves.

A model built and compiled in ``strategy.scope()`` remembers its strategy; ``mk.fit``
then trains through it:

* **The step.** ``strategy.run(model.train_step)`` on every replica, gradients
  all-reduced by the optimizer, each replica's loss scaled by ``1/num_replicas`` (Keras's
  own per-replica loss reduction), the logs averaged over the replicas.
* **The data.** Arrays and ``PyDataset``: every worker computes the same global batch
  (same seed, broadcast from the chief) and each replica trains on its slice of it
  (``np.array_split`` sizes). ``tf.data``: ``strategy.experimental_distribute_dataset``,
  which shards per worker by the dataset's ``auto_shard_policy`` and splits each global
  batch over the replicas; it is repositioned as without a strategy (iterators re-created,
  batches skipped).
* **Checkpoints.** Only the chief (``strategy.extended.should_checkpoint``) touches
  ``backup_dir``: it cleans leftovers, picks the newest good backup and writes every
  backup. It broadcasts the step of the backup it picked; every worker loads that one
  (``backup_dir`` must be reachable from every worker: a shared folder or object store).
  A snapshot is collective: every worker takes it at the same step (they run the same
  loop), because the metric accumulators (``SyncOnRead`` variables) are gathered from
  every replica, so a resumed run continues each replica's own partial sums, bit for bit.
  The other workers read nothing back and write nothing.
* **A lost worker.** TensorFlow's health check (MultiWorkerMirroredStrategy checks its
  peers every 30 s) or a failed collective aborts the collectives of the survivors;
  ``mk.fit`` turns that error into :class:`~modelkeep.errors.WorkerLostError`, naming
  the backup to resume from. Start every worker again with the same command.

Example::

    strategy = tf.distribute.MultiWorkerMirroredStrategy()     # TF_CONFIG names the cluster
    with strategy.scope():
        model = make_model()
        model.compile("adam", "mse")
    mk.fit(model, x, y, batch_size=64, epochs=3, backup_dir="/shared/run", save_freq=20)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from modelkeep.checkpoint.data_position import DataSource, TFDataSource
from modelkeep.errors import CheckpointNotFoundError, WorkerLostError
from modelkeep.state import ModelState

#: prefix of the per-replica copies of the metric accumulators in a backup
REPLICA_PREFIX = "replicas/"


def strategy_of(model: Any) -> Any | None:
    """The ``tf.distribute`` strategy ``model`` was created under, or None (the default one).

    Example::

        with strategy.scope():
            model = make_model()
        assert strategy_of(model) is strategy
    """
    import tensorflow as tf

    strategy = getattr(model, "_distribute_strategy", None)
    if strategy is None and tf.distribute.has_strategy():
        strategy = tf.distribute.get_strategy()
    return strategy


def should_write(model: Any = None) -> bool:
    """False on a worker that must not write checkpoints (not the chief of a multi-worker job).

    Example::

        if should_write(model):
            mk.save_weights(model, "run/final.weights.h5")
    """
    import tensorflow as tf

    strategy = strategy_of(model) if model is not None else None
    if strategy is None:
        strategy = tf.distribute.get_strategy()
    return bool(getattr(strategy.extended, "should_checkpoint", True))


class Distributed:
    """What ``mk.fit`` needs to know and do under one strategy (see the module docstring).

    Example::

        dist = Distributed(tf.distribute.MultiWorkerMirroredStrategy())
        seed = dist.broadcast(seed)          # every worker now has the chief's
    """

    def __init__(self, strategy: Any) -> None:
        self.strategy = strategy
        self.replicas = int(strategy.num_replicas_in_sync)
        self.local_replicas = len(strategy.extended.worker_devices)
        self.is_writer = bool(getattr(strategy.extended, "should_checkpoint", True))
        resolver = getattr(strategy, "cluster_resolver", None)
        spec = resolver.cluster_spec() if resolver is not None else None
        self.workers = sum(spec.num_tasks(job) for job in spec.jobs) if spec and spec.jobs else 1
        self.task = (getattr(resolver, "task_type", None), getattr(resolver, "task_id", None))
        self._gather: Callable | None = None

    @property
    def multi_worker(self) -> bool:
        return self.workers > 1

    def scope(self) -> Any:
        return self.strategy.scope()

    def in_scope(self) -> bool:
        import tensorflow as tf

        return tf.distribute.has_strategy() and tf.distribute.get_strategy() is self.strategy

    # ------------------------------------------------------------------ agreement
    def broadcast(self, value: int) -> int:
        """The chief's ``value`` on every worker (a collective: every worker calls it)."""
        if not self.multi_worker:
            return int(value)
        import tensorflow as tf

        def local(ctx: Any) -> Any:
            first = ctx.replica_id_in_sync_group % self.local_replicas == 0
            return tf.constant(int(value) if (self.is_writer and first) else 0, tf.int64)

        per_replica = self.strategy.experimental_distribute_values_from_function(local)
        return int(self.strategy.reduce("SUM", per_replica, axis=None).numpy())

    def agreed_backup(self, backup_dir: Path, find: Callable[[Path], tuple[Any, Any]],
                      load: Callable[[Path], tuple[Any, Any]]) -> tuple[Any, Any]:
        """``find(backup_dir)`` on the chief; every other worker loads the backup it picked."""
        if not self.multi_worker:
            return find(backup_dir)
        with self.lost_worker_errors(backup_dir):  # the chief failed to read its backup, say
            return self._agreed_backup(backup_dir, find, load)

    def _agreed_backup(self, backup_dir: Path, find: Callable[[Path], tuple[Any, Any]],
                       load: Callable[[Path], tuple[Any, Any]]) -> tuple[Any, Any]:
        info, saved = find(backup_dir) if self.is_writer else (None, None)
        step = self.broadcast(-1 if info is None else int(info.step))
        if step < 0:
            return None, None
        if not self.is_writer:
            from modelkeep.checkpoint import store

            path = backup_dir / store.store_name(step)
            if not (path / store.STORE_MANIFEST).exists():
                raise CheckpointNotFoundError(
                    f"mk.fit: worker {self.task[0]}:{self.task[1]} cannot read {path}, the backup the "
                    "chief resumes from. backup_dir must be one location every worker reaches "
                    "(a shared folder or an object store URL), not a folder local to each machine."
                )
            info, saved = load(path)
        self.broadcast(0)  # a barrier: every worker has read the backup before the chief writes again
        return info, saved

    # ------------------------------------------------------------------ data
    def source(self, source: DataSource) -> DataSource:
        """The source each worker reads: a distributed one for ``tf.data``."""
        if isinstance(source, TFDataSource):
            if source.class_weight is not None:
                raise ValueError(
                    "mk.fit: class_weight with a tf.data.Dataset under a tf.distribute strategy is not "
                    "supported. Map the weights into the dataset as a third element (x, y, w)."
                )
            return DistributedTFDataSource(source.dataset, self.strategy)
        return source

    # ------------------------------------------------------------------ step
    def step_function(self, model: Any, spec_batch: tuple, *, split: bool) -> Callable[[Any], Any]:
        """One training step through ``strategy.run``; ``split``: the batch is global (slice it)."""
        import keras
        import tensorflow as tf

        from modelkeep.checkpoint.loop import _drop_trailing_none, _relaxed_spec

        strategy = self.strategy

        def replica_step(data: Any) -> Any:
            if split:
                ctx = tf.distribute.get_replica_context()
                data = keras.tree.map_structure(
                    lambda t: _replica_slice(t, ctx.replica_id_in_sync_group, ctx.num_replicas_in_sync), data)
            return model.train_step(data)

        def step(data: Any) -> Any:
            outputs = strategy.run(replica_step, args=(data,))
            return keras.tree.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), outputs)

        if model.run_eagerly:
            return lambda data: step(_drop_trailing_none(data))
        compiled = tf.function(step, reduce_retracing=True, jit_compile=bool(model.jit_compile))
        if split:
            compiled.get_concrete_function(keras.tree.map_structure(_relaxed_spec, _drop_trailing_none(spec_batch)))
        return lambda data: compiled(_drop_trailing_none(data))

    # ------------------------------------------------------------------ replica state
    def _replica_local(self, model: Any) -> list[tuple[str, Any, bool]]:
        """``(key, variable, summed)`` for every variable whose replicas hold different values:
        the metric accumulators (``SyncOnRead``, summed when read) and the non-trainable
        variables Keras updates per replica without aggregation (BatchNormalization's moving
        statistics: each replica keeps its own; the backup's model holds the first one's)."""
        import tensorflow as tf
        from tensorflow.python.distribute import values as tf_values

        from modelkeep.capture import model_variable_keys, training_state_keys
        from modelkeep.state import MODEL

        out = []
        for key, v in model_variable_keys(model):
            inner = getattr(v, "value", v)
            if (isinstance(inner, tf_values.MirroredVariable) and not inner.trainable
                    and inner.aggregation == tf.VariableAggregation.NONE):
                out.append((f"{MODEL}/{key}", v, False))
        for key, v in training_state_keys(model):
            if isinstance(getattr(v, "value", v), tf_values.SyncOnReadVariable):
                out.append((key, v, True))
        return out

    def capture_replicas(self, model: Any) -> dict[str, np.ndarray]:
        """Each replica's own value of every metric accumulator, ``(replicas, *shape)``.

        A collective under MultiWorkerMirroredStrategy: every worker calls it at the same step."""
        pairs = self._replica_local(model)
        if not pairs:
            return {}
        if self._gather is None:
            self._gather = self._make_gather([v for _, v, _ in pairs])
        gathered = self._gather()
        return {REPLICA_PREFIX + key: np.asarray(value) for (key, _, _), value in zip(pairs, gathered)}

    def _make_gather(self, variables: list[Any]) -> Callable[[], list[Any]]:
        import tensorflow as tf

        strategy = self.strategy

        def local() -> list[Any]:
            return [tf.expand_dims(tf.identity(getattr(v, "value", v)), 0) for v in variables]

        @tf.function
        def gather() -> list[Any]:
            return [strategy.gather(value, axis=0) for value in strategy.run(local)]

        return lambda: [t.numpy() for t in gather()]

    def restore_replicas(self, model: Any, arrays: dict[str, np.ndarray]) -> list[str]:
        """Put every replica's own values back. A backup from another number of replicas (or
        none) gives every replica the saved value, and a sum all to the first replica; the
        returned notes name those variables."""
        import tensorflow as tf

        pairs = self._replica_local(model)
        notes: list[str] = []
        rows = []
        for key, variable, summed in pairs:
            saved = arrays.get(REPLICA_PREFIX + key)
            if saved is None or saved.shape[0] != self.replicas:
                total = np.asarray(arrays[key]) if key in arrays else np.zeros(variable.shape, variable.dtype)
                saved = np.stack([total] * self.replicas)
                if summed:
                    saved[1:] = 0
                notes.append(f"the per-replica values of {key} (the backup has them for another number of replicas)")
            rows.append(tf.constant(saved))
        if not pairs:
            return notes

        def local(*values: Any) -> None:
            rid = tf.distribute.get_replica_context().replica_id_in_sync_group
            for (_, variable, _), value in zip(pairs, values):
                getattr(variable, "value", variable).assign(value[rid])

        tf.function(lambda: self.strategy.run(local, args=tuple(rows)))()
        return notes

    def add_replicas(self, state: ModelState, model: Any) -> ModelState:
        state.variables.update(self.capture_replicas(model))
        return state

    # ------------------------------------------------------------------ faults
    @contextlib.contextmanager
    def lost_worker_errors(self, backup_dir: Path, progress: Any = None) -> Iterator[None]:
        """Turn the error a lost peer causes into a ``WorkerLostError`` naming what to do."""
        if not self.multi_worker:
            yield
            return
        import tensorflow as tf

        lost = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.CancelledError,
                tf.errors.AbortedError, tf.errors.FailedPreconditionError, tf.errors.InternalError)
        try:
            yield
        except lost as exc:
            raise WorkerLostError(
                f"mk.fit: worker {self.task[0]}:{self.task[1]} (one of {self.workers}) stopped"
                f"{'' if progress is None else f' after step {progress.step}'}: {_peer_problem(exc)}. "
                "Expected every worker to answer; one was lost or cannot be reached. Start every "
                "worker again with the same command; training resumes from the newest good backup "
                f"in {backup_dir}."
            ) from exc


def _peer_problem(exc: BaseException) -> str:
    """The informative part of TensorFlow's collective error: which peer, what happened."""
    import re

    text = str(getattr(exc, "message", exc))
    peer = re.search(r"(/job:\w+/replica:\d+/task:\d+)", text)
    why = next((line.strip() for line in text.splitlines()
                if "aborted by" in line or "is down" in line or "timed out" in line.lower()), None)
    why = why or (text.strip().splitlines() or [type(exc).__name__])[-1].strip()
    reported = f"; reported by {peer.group(1)}" if peer else ""
    return f"a collective with the other workers failed ({type(exc).__name__}: {why[:240]}{reported})"


def _replica_slice(tensor: Any, replica: Any, replicas: int) -> Any:
    """Rows of a global batch for one replica, ``np.array_split`` sizes (first ones one longer)."""
    import tensorflow as tf

    if tensor is None:
        return None
    n = tf.shape(tensor, out_type=tf.int64)[0]
    replica = tf.cast(replica, tf.int64)
    base, extra = n // replicas, n % replicas
    start = replica * base + tf.minimum(replica, extra)
    size = base + tf.cast(replica < extra, tf.int64)
    return tensor[start : start + size]


class DistributedTFDataSource(TFDataSource):
    """A ``tf.data`` source read through ``strategy.experimental_distribute_dataset``."""

    def __init__(self, dataset: Any, strategy: Any) -> None:
        super().__init__(dataset)
        self.distributed = strategy.experimental_distribute_dataset(dataset)

    def _start_pass(self, pass_index: int, offset: int) -> None:
        while self._created < pass_index:
            iter(self.distributed)
            self._created += 1
        self._iterator = iter(self.distributed)
        self._created += 1
        for _ in range(offset):
            next(self._iterator)

    def _standardize(self, batch: Any) -> tuple:
        from keras.src.trainers.data_adapters import data_adapter_utils

        return tuple(data_adapter_utils.unpack_x_y_sample_weight(batch))


def context_for(model: Any) -> Distributed | None:
    """A :class:`Distributed` for the model's strategy, or None when it has none."""
    strategy = strategy_of(model)
    return None if strategy is None else Distributed(strategy)


def refuse_unsupported(dist: Distributed | None, validation: Any) -> None:
    """Raise for what ``mk.fit`` does not do under a strategy yet (named, with what to do)."""
    if dist is not None and dist.multi_worker and validation is not None:
        raise ValueError(
            "mk.fit: validation data under MultiWorkerMirroredStrategy is not supported (Keras's "
            "evaluate fails there, keras-team/keras#20585). Drop validation_data/validation_split "
            "and evaluate the saved model on one worker afterwards."
        )
