"""Training data as a positionable stream of batches (exact resume).

A run reads its data in *passes*: one pass is one full iteration over the data (for
arrays and ``PyDataset``s, in the shuffle order of that pass). The position of a run
in its data is ``(pass, offset)``: the pass index and how many batches of it were
consumed. Every source can be put back at any position in a fresh process:

* arrays (NumPy, or tensors turned into NumPy): the order of pass ``p`` is
  ``default_rng([seed, p]).permutation(n)``, a pure function of the run's seed and
  ``p``, so positioning is free;
* ``keras.utils.PyDataset``: batch ``i`` is ``dataset[order[i]]``, the order shuffled
  the same way when ``shuffle=True``; batches are fetched in the calling thread, in
  order (``workers``/``use_multiprocessing`` are not used);
* ``tf.data.Dataset``: pass ``p`` is the ``p``-th ``iter(dataset)``; to reposition,
  ``p`` iterators are created and dropped (this advances the reshuffle seed of a
  ``shuffle(..., reshuffle_each_iteration=True)`` exactly as the first run did) and
  ``offset`` batches are skipped. Exact when the pipeline is deterministic given its
  seeds (seeded or ``tf.random.set_seed`` + op determinism, no ``AUTOTUNE``-dependent
  nondeterminism).

A plain Python generator cannot be positioned: :func:`make_source` refuses it.

Example::

    source = make_source(x, y, batch_size=32, shuffle=True, seed=7)
    source.seek(pass_index=2, offset=5)
    batch = source.next_batch()     # the 6th batch of the 3rd pass
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from modelkeep.errors import IncompatibleModelError


class DataSource:
    """A stream of ``(x, y, sample_weight)`` batches with a ``(pass, offset)`` position."""

    kind = "source"

    def __init__(self, class_weight: dict | None) -> None:
        self.class_weight = class_weight
        self.pass_index = -1  # no pass started yet
        self.offset = 0
        self.pass_done = True

    @property
    def num_batches(self) -> int | None:
        raise NotImplementedError

    def spec_batch(self) -> Any:
        """A batch (or a tree of ``tf.TensorSpec``) to build the model's variables from."""
        raise NotImplementedError

    def _start_pass(self, pass_index: int, offset: int) -> None:
        raise NotImplementedError

    def _fetch(self) -> Any:
        """The batch at ``offset`` of the current pass, or ``None`` at the end of the pass."""
        raise NotImplementedError

    def seek(self, pass_index: int, offset: int) -> None:
        """Position the stream: the next batch is batch ``offset`` of pass ``pass_index``."""
        self.pass_index, self.offset, self.pass_done = pass_index, offset, pass_index < 0
        if pass_index >= 0:
            self._start_pass(pass_index, offset)

    def next_batch(self) -> Any | None:
        """The next batch, starting a new pass when the current one is used up.

        Returns ``None`` when a pass ends before it yielded any batch (empty data).
        """
        if self.pass_done or (self.num_batches is not None and self.offset >= self.num_batches):
            self.seek(self.pass_index + 1, 0)
        batch = self._fetch()
        if batch is None:
            self.pass_done = True
            return None
        self.offset += 1
        return self._standardize(batch)

    def end_of_pass(self) -> bool:
        """True when the current pass has no batch left (known without fetching)."""
        return self.pass_done or (self.num_batches is not None and self.offset >= self.num_batches)

    def _standardize(self, batch: Any) -> tuple:
        from keras.src.trainers.data_adapters import data_adapter_utils

        x, y, sample_weight = data_adapter_utils.unpack_x_y_sample_weight(batch)
        if self.class_weight is not None and y is not None:
            if sample_weight is not None:
                raise ValueError(
                    "mk.fit: `class_weight` and per-sample weights from the data cannot be combined. "
                    "Drop one of them."
                )
            sample_weight = data_adapter_utils.class_weight_to_sample_weights(y, self.class_weight)
        return (x, y, sample_weight)

    def on_epoch_begin(self) -> None:
        pass

    def on_epoch_end(self) -> None:
        pass

    def position(self) -> dict[str, Any]:
        return {"kind": self.kind, "pass": self.pass_index, "offset": self.offset,
                "pass_done": self.pass_done, "num_batches": self.num_batches}

    def check_position(self, saved: dict[str, Any]) -> None:
        """Raise if a backup's data position does not belong to this data."""
        if saved.get("kind") != self.kind or saved.get("num_batches") != self.num_batches:
            raise IncompatibleModelError(
                f"mk.fit: the backup was taken on {saved.get('kind')} data with "
                f"{saved.get('num_batches')} batches per pass, but this run passes {self.kind} data "
                f"with {self.num_batches}. Resume with the same data and batch size, or use a new "
                "backup_dir to start over."
            )


# --------------------------------------------------------------------------- arrays
class ArraySource(DataSource):
    kind = "arrays"

    def __init__(self, x: Any, y: Any, sample_weight: Any, *, batch_size: int, shuffle: bool,
                 seed: int, class_weight: dict | None = None) -> None:
        import keras

        super().__init__(class_weight)
        self.data = tuple(keras.tree.map_structure(_host_array, d) for d in (x, y, sample_weight))
        sizes = {a.shape[0] for a in keras.tree.flatten(self.data) if a is not None}
        if len(sizes) != 1:
            raise ValueError(
                f"mk.fit: x, y and sample_weight must have the same number of samples; found {sorted(sizes)}."
            )
        self.size = sizes.pop()
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.order = np.arange(self.size)

    @property
    def num_batches(self) -> int:
        return math.ceil(self.size / self.batch_size)

    def pass_order(self, pass_index: int) -> np.ndarray:
        """The sample order of a pass: a pure function of the seed and the pass index."""
        if not self.shuffle:
            return np.arange(self.size)
        return np.random.default_rng([self.seed, pass_index]).permutation(self.size)

    def _start_pass(self, pass_index: int, offset: int) -> None:
        self.order = self.pass_order(pass_index)

    def _take(self, index: np.ndarray) -> tuple:
        import keras

        return tuple(keras.tree.map_structure(lambda a: None if a is None else _to_tensor(a[index]), d) for d in self.data)

    def _fetch(self) -> Any:
        start = self.offset * self.batch_size
        if start >= self.size:
            return None
        return self._take(self.order[start : start + self.batch_size])

    def spec_batch(self) -> Any:
        return self._standardize(self._take(np.arange(min(self.batch_size, self.size))))

    def position(self) -> dict[str, Any]:
        return {**super().position(), "samples": self.size, "shuffle": bool(self.shuffle)}


def _host_array(value: Any) -> Any:
    if value is None:
        return None
    if hasattr(value, "numpy") and not isinstance(value, np.ndarray):
        value = value.numpy()
    return np.asarray(value)


def _to_tensor(array: np.ndarray) -> Any:
    import keras
    import tensorflow as tf

    if np.issubdtype(array.dtype, np.floating) and array.dtype != np.dtype(keras.backend.floatx()):
        array = array.astype(keras.backend.floatx())
    return tf.convert_to_tensor(array)


# --------------------------------------------------------------------------- PyDataset
class PyDatasetSource(DataSource):
    kind = "PyDataset"

    def __init__(self, dataset: Any, *, shuffle: bool, seed: int, class_weight: dict | None = None) -> None:
        super().__init__(class_weight)
        self.dataset, self.shuffle, self.seed = dataset, shuffle, seed
        self.order = np.arange(self.num_batches or 0)

    @property
    def num_batches(self) -> int | None:
        return self.dataset.num_batches

    def _start_pass(self, pass_index: int, offset: int) -> None:
        n = self.num_batches
        if n is None:
            self.order = None
        elif self.shuffle:
            self.order = np.random.default_rng([self.seed, pass_index]).permutation(n)
        else:
            self.order = np.arange(n)

    def _fetch(self) -> Any:
        if self.num_batches is not None and self.offset >= self.num_batches:
            return None
        index = int(self.order[self.offset]) if self.order is not None else self.offset
        return self.dataset[index]

    def spec_batch(self) -> Any:
        return self._standardize(self.dataset[0])

    def on_epoch_begin(self) -> None:
        self.dataset.on_epoch_begin()

    def on_epoch_end(self) -> None:
        self.dataset.on_epoch_end()


# --------------------------------------------------------------------------- tf.data
class TFDataSource(DataSource):
    kind = "tf.data"

    def __init__(self, dataset: Any, *, class_weight: dict | None = None) -> None:
        import tensorflow as tf

        super().__init__(class_weight)
        self.dataset = dataset
        cardinality = int(dataset.cardinality())
        self._infinite = cardinality == tf.data.INFINITE_CARDINALITY
        self._num_batches = cardinality if cardinality >= 0 else None
        self._iterator: Any = None
        self._created = 0

    @property
    def num_batches(self) -> int | None:
        return self._num_batches

    @property
    def infinite(self) -> bool:
        return self._infinite

    def _start_pass(self, pass_index: int, offset: int) -> None:
        # Iterator number ``pass_index`` of the dataset; earlier ones are made and dropped
        # so that a reshuffling pipeline draws the same seeds as the first run did.
        while self._created < pass_index:
            iter(self.dataset)
            self._created += 1
        self._iterator = iter(self.dataset)
        self._created += 1
        for _ in range(offset):
            next(self._iterator)

    def _fetch(self) -> Any:
        try:
            return next(self._iterator)
        except StopIteration:
            return None

    def spec_batch(self) -> Any:
        import tensorflow as tf
        from keras.src.trainers.data_adapters import data_adapter_utils

        x, y, sample_weight = data_adapter_utils.unpack_x_y_sample_weight(self.dataset.element_spec)
        if self.class_weight is not None and sample_weight is None:
            sample_weight = tf.TensorSpec([None], tf.float32)
        return (x, y, sample_weight)


# --------------------------------------------------------------------------- factory
def make_source(x: Any, y: Any = None, sample_weight: Any = None, *, batch_size: int | None,
                shuffle: bool, seed: int, class_weight: dict | None = None) -> DataSource:
    """The positionable source for what ``fit`` was given as ``x``; refuses generators."""
    import keras
    import tensorflow as tf

    if isinstance(x, tf.data.Dataset):
        _no_extra("a tf.data.Dataset", y, sample_weight, batch_size)
        return TFDataSource(x, class_weight=class_weight)
    if isinstance(x, keras.utils.PyDataset):
        _no_extra("a keras.utils.PyDataset", y, sample_weight, batch_size)
        return PyDatasetSource(x, shuffle=bool(shuffle), seed=seed, class_weight=class_weight)
    if _is_iterator(x):
        raise TypeError(
            f"mk.fit: x is a {type(x).__name__}, which cannot be positioned, so a run could not "
            "resume in the middle of it. Wrap the data in a keras.utils.PyDataset (batch i from "
            "__getitem__(i)) or a tf.data.Dataset, or pass arrays."
        )
    return ArraySource(x, y, sample_weight, batch_size=batch_size or 32, shuffle=bool(shuffle),
                       seed=seed, class_weight=class_weight)


def _is_iterator(x: Any) -> bool:
    import types

    return isinstance(x, types.GeneratorType) or (hasattr(x, "__next__") and not hasattr(x, "shape"))


def _no_extra(what: str, y: Any, sample_weight: Any, batch_size: Any) -> None:
    for name, value in (("y", y), ("sample_weight", sample_weight), ("batch_size", batch_size)):
        if value is not None:
            raise ValueError(f"mk.fit: when x is {what}, `{name}` must not be given (the data yields it).")
