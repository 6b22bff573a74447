"""Whole-model checkpoints written in the background: a SavedModel traced once a run (not once a
save) and ``.keras`` zips written from a snapshot. Each checkpoint holds exactly the values the
model had at its epoch, and loads and predicts as the model did."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

import modelkeep as mk
from modelkeep.formats import safetensors, savedmodel


def _model() -> keras.Model:
    keras.utils.set_random_seed(4)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(5), keras.layers.BatchNormalization(),
                              keras.layers.Dropout(0.2), keras.layers.Dense(2)])  # fmt: skip
    model.compile(optimizer="adam", loss="mse")
    return model


class Record(keras.callbacks.Callback):
    """Every variable (model and optimizer) at each epoch's end, and the predictions then."""

    def __init__(self, x: np.ndarray) -> None:
        super().__init__()
        self.x, self.values, self.outputs = x, [], []

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        variables = list(self.model.variables) + list(self.model.optimizer.variables)
        self.values.append([v.numpy().copy() for v in variables])
        self.outputs.append(self.model(self.x, training=False).numpy())


def _fit(tmp_path: Path, template: str) -> tuple[keras.Model, Record, np.ndarray]:
    model = _model()
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((48, 3)).astype("float32"), rng.standard_normal((48, 2)).astype("float32")
    record = Record(x)
    model.fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=[record, mk.ModelCheckpoint(str(tmp_path / template))])
    return model, record, x


def _assert_holds_epoch(loaded: keras.Model, record: Record, epoch: int, *, seeds: bool = True) -> None:
    """Every variable as at that epoch; ``seeds=False``: not the seed-generator states (Keras's own
    loader does not read modelkeep's member that keeps them)."""
    variables = list(loaded.variables) + list(loaded.optimizer.variables)
    assert len(variables) == len(record.values[epoch])
    for variable, b in zip(variables, record.values[epoch]):
        if not seeds and "seed_generator" in variable.path:
            continue
        a = variable.numpy()
        assert a.dtype == b.dtype and np.array_equal(a, b), variable.path
    assert np.array_equal(loaded(record.x, training=False).numpy(), record.outputs[epoch])


@pytest.mark.parametrize("direct", [False, True], ids=["SaveV2", "direct-io"])
def test_savedmodel_checkpoints_trace_once_and_hold_each_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, direct: bool) -> None:
    """direct-io: the variables/ bundle written by modelkeep from the snapshot (formats.tf_bundle)."""
    if direct:
        monkeypatch.setattr(safetensors, "DIRECT_MIN", 1)
    exports = []
    real = savedmodel._export
    monkeypatch.setattr(savedmodel, "_export", lambda m, d: exports.append(d) or real(m, d))
    _model_, record, x = _fit(tmp_path, "c-{epoch}")
    assert len(exports) == 1, "the second and third saves traced the model again"
    assert [c.status for c in mk.list_checkpoints(tmp_path)] == ["ok"] * 3
    for epoch in range(3):
        path = tmp_path / f"c-{epoch + 1}"
        _assert_holds_epoch(mk.load_model(path), record, epoch)
        serve = tf.saved_model.load(str(path)).signatures["serving_default"]  # TensorFlow's own loader
        (out,) = serve(tf.constant(x)).values()
        assert np.array_equal(out.numpy(), record.outputs[epoch])
    assert not [p for p in tmp_path.iterdir() if "mk-tmp" in p.name]  # the scratch export is gone


def test_keras_zip_checkpoints_are_written_from_a_snapshot_in_keras_layout(tmp_path: Path) -> None:
    model, record, _x = _fit(tmp_path, "c-{epoch}.keras")
    assert [c.status for c in mk.list_checkpoints(tmp_path)] == ["ok"] * 3
    for epoch in range(3):
        path = tmp_path / f"c-{epoch + 1}.keras"
        _assert_holds_epoch(mk.load_model(path), record, epoch)
        _assert_holds_epoch(keras.models.load_model(path), record, epoch, seeds=False)  # Keras's own loader
    model.save(tmp_path / "ref.keras")  # the model after the last epoch: what Keras itself writes

    def layout(path: Path) -> dict:
        with zipfile.ZipFile(path) as archive:
            found = {}
            with h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r") as f:
                f.visititems(lambda n, o: found.__setitem__(n, (o[()] if isinstance(o, h5py.Dataset) else None, dict(o.attrs))))
            return {"config": archive.read("config.json"), "h5": found}

    ours, keras_own = layout(tmp_path / "c-3.keras"), layout(tmp_path / "ref.keras")
    assert ours["config"] == keras_own["config"]
    assert list(ours["h5"]) == list(keras_own["h5"])
    for name, (value, attrs) in ours["h5"].items():
        theirs, their_attrs = keras_own["h5"][name]
        assert attrs == their_attrs
        assert (value is None and theirs is None) or np.array_equal(value, theirs), name


def test_weights_only_tf_checkpoints_from_a_snapshot_load_everywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tutorial's weights-only checkpoint, its bundle written by modelkeep with direct I/O:
    TensorFlow names the newest, and each epoch's weights load back exactly."""
    monkeypatch.setattr(safetensors, "DIRECT_MIN", 1)
    model = _model()
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((48, 3)).astype("float32"), rng.standard_normal((48, 2)).astype("float32")
    weights = []
    keep = keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: weights.append([w.numpy().copy() for w in model.weights]))
    model.fit(x, y, batch_size=8, epochs=2, verbose=0,
              callbacks=[keep, mk.ModelCheckpoint(str(tmp_path / "w-{epoch}"), save_weights_only=True)])  # fmt: skip
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("w-2")
    for epoch in range(2):
        fresh = _model()
        mk.load_weights(fresh, tmp_path / f"w-{epoch + 1}")
        assert all(np.array_equal(a.numpy(), b) for a, b in zip(fresh.weights, weights[epoch]))
