"""modelkeep's classes and functions stand in for Keras 3's: types, attributes, accepted
values, error types and words, and the behaviours Keras's own callback and saving tests
check (written anew here; README "Differences from Keras" lists what differs on purpose).
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import modelkeep as mk  # noqa: E402
from modelkeep.errors import (  # noqa: E402
    CheckpointNotFoundError,
    DeserializationError,
    IncompatibleModelError,
    TargetExistsError,
)

X = np.random.default_rng(0).random((12, 3)).astype("float32")
Y = np.random.default_rng(1).random((12, 1)).astype("float32")


def _model(units: int = 1, extra: bool = False) -> keras.Model:
    layers = [keras.Input((3,)), keras.layers.Dense(4), keras.layers.Dense(units)]
    if extra:
        layers.append(keras.layers.Dense(2))
    model = keras.Sequential(layers)
    model.compile(optimizer="sgd", loss="mse", metrics=["mae"], run_eagerly=True)  # tiny: no tracing
    return model


class Interrupt(keras.callbacks.Callback):
    def __init__(self, at_epoch: int):
        super().__init__()
        self.at_epoch = at_epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.at_epoch:
            raise RuntimeError("interrupted")


# ------------------------------------------------------------------ callbacks: the types
def test_callbacks_are_instances_of_keras_classes(tmp_path):
    checkpoint = mk.ModelCheckpoint(tmp_path / "m.keras")
    backup = mk.BackupAndRestore(tmp_path / "b")
    assert isinstance(checkpoint, keras.callbacks.ModelCheckpoint)
    assert isinstance(backup, keras.callbacks.BackupAndRestore)
    # Keras's public attributes, with Keras's defaults
    for name, value in dict(monitor="val_loss", mode="auto", best=None, min_delta=0, monitor_op=None, verbose=0,
                            save_best_only=False, save_weights_only=False, save_freq="epoch").items():  # fmt: skip
        assert getattr(checkpoint, name) == value, name
    assert checkpoint.filepath == str(tmp_path / "m.keras")
    assert (backup.save_freq, backup.double_checkpoint, backup.delete_checkpoint) == ("epoch", False, True)


@pytest.mark.parametrize("value", [0, True, 7, False])
def test_model_checkpoint_takes_every_integer_save_freq(tmp_path, value):
    pattern = str(tmp_path / "e{epoch}-b{batch}.weights.h5")
    model = _model()
    model.fit(X, Y, batch_size=4, epochs=1, verbose=0,
              callbacks=[mk.ModelCheckpoint(pattern, save_weights_only=True, save_freq=value)])  # fmt: skip
    saved = sorted(p.name for p in tmp_path.glob("*.weights.h5"))
    # as Keras's counting: 0, -1 and True (= 1) save after every one of the 3 batches
    # False (deliberate): no save by batch count, and not "epoch" either
    assert saved == ([] if value is False or value == 7 else ["e1-b1.weights.h5", "e1-b2.weights.h5", "e1-b3.weights.h5"])


def test_backup_save_freq_false_makes_no_periodic_backup(tmp_path):
    seen = []

    class Look(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(sorted(p.name for p in (tmp_path / "b").glob("ckpt-*")) if (tmp_path / "b").exists() else [])

    model = _model()
    model.fit(X, Y, batch_size=4, epochs=2, verbose=0, callbacks=[mk.BackupAndRestore(tmp_path / "b", save_freq=False), Look()])
    assert seen == [[], []]


def test_save_freq_errors_are_keras_words(tmp_path):
    with pytest.raises(ValueError, match=r"^Unrecognized save_freq: often"):
        mk.ModelCheckpoint(tmp_path / "m.keras", save_freq="often")
    with pytest.raises(ValueError, match=r"^Invalid value for argument `save_freq`"):
        mk.BackupAndRestore(tmp_path / "b", save_freq=0.5)
    with pytest.raises(ValueError, match=r"^Empty `backup_dir` argument passed"):
        mk.BackupAndRestore("")


def test_unknown_mode_warns_as_keras(tmp_path):
    with pytest.warns(UserWarning, match="ModelCheckpoint mode 'sideways' is unknown, fallback to auto mode"):
        checkpoint = mk.ModelCheckpoint(tmp_path / "m.keras", mode="sideways")
    assert checkpoint.mode == "auto"


@pytest.mark.parametrize("save_freq", ["epoch", 1])
def test_auto_mode_on_an_unknown_monitor_raises_before_any_save(tmp_path, save_freq):
    checkpoint = mk.ModelCheckpoint(tmp_path / "m-{epoch}-{batch}.keras", monitor="val_wobble", save_freq=save_freq)
    with pytest.raises(ValueError, match="isn't able to automatically determine whether that metric"):
        _model().fit(X, Y, batch_size=4, epochs=1, verbose=0, callbacks=[checkpoint])
    assert list(tmp_path.iterdir()) == []


def test_monitor_op_is_keras_rule(tmp_path):
    model = _model()
    for monitor, expected in (("val_loss", keras.ops.less), ("mae", keras.ops.less)):
        checkpoint = mk.ModelCheckpoint(tmp_path / "m.keras", monitor=monitor, save_best_only=True)
        model.fit(X, Y, batch_size=4, epochs=1, verbose=0, validation_data=(X, Y), callbacks=[checkpoint])
        assert checkpoint.monitor_op is expected
        assert checkpoint.best == pytest.approx(model.history.history[monitor][-1])


def test_best_threshold_not_beaten_writes_nothing(tmp_path):
    checkpoint = mk.ModelCheckpoint(tmp_path / "m.keras", monitor="val_loss", save_best_only=True,
                                    initial_value_threshold=0.0)  # fmt: skip
    _model().fit(X, Y, batch_size=4, epochs=1, verbose=0, validation_data=(X, Y), callbacks=[checkpoint])
    assert not (tmp_path / "m.keras").exists()


def test_a_nan_is_never_the_best(tmp_path):
    """Deliberate: in Keras a first NaN becomes `best` and no later value beats it."""
    checkpoint = mk.ModelCheckpoint(tmp_path / "m.keras", monitor="loss", save_best_only=True)
    checkpoint.set_model(_model())
    checkpoint._set_monitor_op()
    assert not checkpoint._should_save(0, tmp_path / "m.keras", {"loss": float("nan")})
    assert checkpoint.best is None
    assert checkpoint._should_save(1, tmp_path / "m.keras", {"loss": 3.0}) and checkpoint.best == 3.0


# ------------------------------------------------------------------ BackupAndRestore behaviour
class Counter(keras.layers.Layer):
    """Counts the batches it has seen, in a non-trainable weight (so a backup carries it)."""

    def build(self, shape):
        self.count = self.add_weight(shape=(), initializer="zeros", trainable=False)

    def call(self, x):
        self.count.assign_add(1.0)
        return x


def _counting_model() -> keras.Model:
    model = keras.Sequential([keras.Input((3,)), Counter(), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse", run_eagerly=True)
    return model


def test_interrupted_fit_resumes_from_the_backup_and_nothing_is_left_in_flight(tmp_path):
    model = _counting_model()
    backup = mk.BackupAndRestore(tmp_path / "b")
    with pytest.raises(RuntimeError, match="interrupted"):
        model.fit(X, Y, batch_size=4, epochs=6, verbose=0, callbacks=[backup, Interrupt(2)])
    # fit raised: the backup of epoch 2 is committed, no temporary is left, no writer busy
    names = sorted(p.name for p in (tmp_path / "b").iterdir())
    assert [n for n in names if not n.startswith("ckpt-")] == [] and len(names) == 2
    assert not any(w.busy for w in list(mk.checkpoint.writer._OPEN))
    assert int(model.layers[0].count.numpy()) == 6
    # Keras's names for "the latest backup" and "the one before", on modelkeep's layout
    newest, previous = sorted((tmp_path / "b").iterdir(), reverse=True)
    assert backup._weights_path == str(newest / "state.safetensors")
    assert backup._prev_weights_path == str(previous / "state.safetensors")
    assert backup._training_metadata_path == str(newest / "manifest.json")
    history = model.fit(X, Y, batch_size=4, epochs=5, verbose=0, callbacks=[backup])
    assert history.epoch == [2, 3, 4]
    assert int(model.layers[0].count.numpy()) == 15
    assert not (tmp_path / "b").exists()  # delete_checkpoint=True


def test_a_failed_backup_is_reported_in_the_run_that_raised(tmp_path, monkeypatch):
    from modelkeep.checkpoint import store

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store, "save_state", disk_full)
    model = _counting_model()
    with pytest.warns(UserWarning, match="failed before fit ended"), pytest.raises(RuntimeError) as raised:
        model.fit(X, Y, batch_size=4, epochs=3, verbose=0, callbacks=[mk.BackupAndRestore(tmp_path / "b"), Interrupt(1)])
    assert any("disk is full" in note for note in raised.value.__notes__)
    monkeypatch.undo()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing of the earlier run surfaces in the next one
        model.fit(X, Y, batch_size=4, epochs=1, verbose=0)


def test_a_failed_backup_is_reported_when_validation_raises(tmp_path, monkeypatch):
    from modelkeep.checkpoint import store

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    calls = []
    real_save_state = store.save_state

    def last_one_fails(*args, **kwargs):  # the backup after the last batch, before validation
        calls.append(1)
        return disk_full() if len(calls) == 3 else real_save_state(*args, **kwargs)

    monkeypatch.setattr(store, "save_state", last_one_fails)
    bad_y = np.zeros((12, 2, 3), "float32")  # the validation step itself fails
    with pytest.warns(UserWarning, match="failed before fit ended"), pytest.raises(Exception) as raised:
        _counting_model().fit(X, Y, batch_size=4, epochs=1, verbose=0, validation_data=(X, bad_y),
                              callbacks=[mk.BackupAndRestore(tmp_path / "b", save_freq=1)])  # fmt: skip
    assert any("disk is full" in note for note in raised.value.__notes__)


def test_a_kept_backup_does_not_move_a_later_fit_without_the_callback(tmp_path):
    """Deliberate: Keras leaves model._initial_epoch set for every later fit; modelkeep does not."""
    model = _counting_model()
    backup = mk.BackupAndRestore(tmp_path / "b", delete_checkpoint=False)
    with pytest.raises(RuntimeError):
        model.fit(X, Y, batch_size=4, epochs=4, verbose=0, callbacks=[backup, Interrupt(2)])
    assert model.fit(X, Y, batch_size=4, epochs=4, verbose=0, callbacks=[backup]).epoch == [2, 3]
    assert (tmp_path / "b").exists()
    assert model.fit(X, Y, batch_size=4, epochs=2, verbose=0).epoch == [0, 1]


# ------------------------------------------------------------------ saving API: errors
def test_missing_keras_file_is_a_value_error_in_keras_words(tmp_path):
    with pytest.raises(ValueError, match=r"^File not found: filepath=.*Please ensure the file is an accessible") as raised:
        mk.load_model(tmp_path / "absent.keras")
    assert isinstance(raised.value, (FileNotFoundError, CheckpointNotFoundError))


def test_save_and_load_errors_carry_keras_words_and_the_right_function(tmp_path):
    model = _model()
    with pytest.raises(ValueError, match=r"^Invalid filepath extension for saving.*save_model"):
        mk.save_model(model, tmp_path / "model.png")
    with pytest.raises(ValueError, match=r"^File format not supported.*load_model") as raised:
        mk.load_model(tmp_path / "model.pkl")
    assert "save_model" not in str(raised.value)
    with pytest.raises(ValueError, match=r"^File format not supported.*load_weights"):
        mk.load_weights(model, tmp_path / "weights.pkl")
    with pytest.raises(ValueError, match=r"^The following argument\(s\) are not supported: \['colour'\]"):
        mk.save_model(model, tmp_path / "m.keras", colour="red")
    with pytest.raises(ValueError, match=r"^The `save_format` argument is deprecated"):
        mk.save_model(model, tmp_path / "model.txt", save_format="keras")
    mk.save_model(model, tmp_path / "m.keras")
    with pytest.raises(ValueError, match=r"^`objects_to_skip` only supports loading '.weights.h5' files"):
        mk.load_weights(model, tmp_path / "m.keras", objects_to_skip=[])
    with pytest.raises(ValueError, match=r"^`by_name` only supports loading legacy '.h5' or '.hdf5' files"):
        mk.load_weights(model, tmp_path / "m.keras", by_name=True)
    with pytest.raises(ValueError, match=r"^Invalid keyword arguments"):
        mk.load_weights(model, tmp_path / "m.keras", colour=None)
    with pytest.raises(ValueError, match="should not end in `.keras`"):
        mk.save_model(model, tmp_path / "n.keras", zipped=False)


def test_unknown_class_is_a_type_error_as_in_keras(tmp_path):
    class Unregistered(keras.layers.Layer):
        def call(self, x):
            return x

    model = keras.Sequential([keras.Input((3,)), Unregistered()])
    mk.save_model(model, tmp_path / "m.h5")
    with pytest.raises(TypeError, match="Unregistered") as raised:
        mk.load_model(tmp_path / "m.h5")
    assert isinstance(raised.value, (DeserializationError, ValueError))


def test_overwrite_false_refuses_without_a_prompt(tmp_path):
    model = _model()
    mk.save_model(model, tmp_path / "m.keras")
    before = (tmp_path / "m.keras").read_bytes()
    with pytest.raises(TargetExistsError, match="overwrite=False") as raised:
        mk.save_model(model, tmp_path / "m.keras", overwrite=False)
    assert isinstance(raised.value, FileExistsError)
    mk.save_weights(model, tmp_path / "w.safetensors")
    with pytest.raises(FileExistsError):
        mk.save_weights(model, tmp_path / "w.safetensors", overwrite=False)
    assert (tmp_path / "m.keras").read_bytes() == before


def test_a_failed_save_keeps_the_previous_file_and_leaves_no_partial_one(tmp_path):
    """Deliberate: Keras leaves a partial .keras (and has destroyed the old one) when a save fails."""

    class Broken(keras.layers.Layer):
        def call(self, x):
            return x

        def save_own_variables(self, store):
            raise ValueError("cannot save")

    mk.save_model(_model(), tmp_path / "m.keras")
    before = (tmp_path / "m.keras").read_bytes()
    with pytest.raises(ValueError, match="cannot save"):
        mk.save_model(keras.Sequential([keras.Input((3,)), Broken()]), tmp_path / "m.keras")
    assert [p.name for p in tmp_path.iterdir()] == ["m.keras"]
    assert (tmp_path / "m.keras").read_bytes() == before


def test_h5_and_bare_paths_are_modelkeep_formats(tmp_path, monkeypatch):
    """Deliberate: .h5 is not "legacy" (no Keras warning); a bare path is a SavedModel."""
    from absl import logging as absl_logging

    said = []
    monkeypatch.setattr(absl_logging, "warning", lambda *a, **k: said.append(a))
    model = _model()
    mk.save_model(model, tmp_path / "m.h5")
    assert said == []
    with pytest.raises(ValueError, match="^File not found: filepath=.*no SavedModel there"):
        mk.load_model(tmp_path / "absent_model_dir")
    mk.save_model(model, tmp_path / "model_dir")
    assert (tmp_path / "model_dir" / "saved_model.pb").exists()


# ------------------------------------------------------------------ saving API: arguments
def _same_weights(a: keras.Model, b: keras.Model) -> None:
    for x, y in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_array_equal(x, y)


def test_sharded_weights_round_trip(tmp_path):
    model = _model()
    files = mk.save_weights(model, tmp_path / "w.weights.json", max_shard_size=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in files)
    assert len(files) == 2  # one shard and the index, as Keras writes them
    fresh = _model()
    mk.load_weights(fresh, tmp_path / "w.weights.json")
    _same_weights(model, fresh)
    with pytest.raises(ValueError, match=r"^The filename must end in `.weights.json` when `max_shard_size`"):
        mk.save_weights(model, tmp_path / "w.safetensors", max_shard_size=1)


def test_objects_to_skip(tmp_path):
    model, fresh = _model(), _model()
    kept = fresh.layers[0].kernel.numpy()
    mk.save_weights(model, tmp_path / "w.weights.h5")
    mk.load_weights(fresh, tmp_path / "w.weights.h5", objects_to_skip=[fresh.layers[0]])
    np.testing.assert_array_equal(fresh.layers[0].kernel.numpy(), kept)
    np.testing.assert_array_equal(fresh.layers[1].kernel.numpy(), model.layers[1].kernel.numpy())


@pytest.mark.parametrize("name", ["m.keras", "w.safetensors", "w.h5", "ckpt/w"])
def test_skip_mismatch(tmp_path, name):
    source = _model()
    if name.endswith(".keras"):
        mk.save_model(source, tmp_path / name)
    else:
        mk.save_weights(source, tmp_path / name)
    wider = _model(units=2)
    with pytest.raises(ValueError, match="must match") as raised:
        mk.load_weights(wider, tmp_path / name)
    assert isinstance(raised.value, IncompatibleModelError)
    kept = wider.layers[1].kernel.numpy()
    with pytest.warns(UserWarning, match="skip_mismatch"):
        mk.load_weights(wider, tmp_path / name, skip_mismatch=True)
    np.testing.assert_array_equal(wider.layers[0].kernel.numpy(), source.layers[0].kernel.numpy())
    np.testing.assert_array_equal(wider.layers[1].kernel.numpy(), kept)
    longer = _model(extra=True)
    with pytest.raises(ValueError, match="received 0 variables"):
        mk.load_weights(longer, tmp_path / name)
    with pytest.warns(UserWarning):
        mk.load_weights(longer, tmp_path / name, skip_mismatch=True)
    np.testing.assert_array_equal(longer.layers[1].kernel.numpy(), source.layers[1].kernel.numpy())


def test_by_name_on_h5(tmp_path):
    source = _model()
    mk.save_weights(source, tmp_path / "w.h5")
    inputs = keras.Input((3,))
    names = [layer.name for layer in source.layers]
    other = keras.Model(inputs, keras.layers.Dense(4, name=names[0])(inputs))  # the first layer only
    mk.load_weights(other, tmp_path / "w.h5", by_name=True)
    np.testing.assert_array_equal(other.layers[1].kernel.numpy(), source.layers[0].kernel.numpy())


def test_keras_file_in_a_file_object():
    model = _model()
    buffer = io.BytesIO()
    mk.save_model(model, buffer)
    buffer.seek(0)
    _same_weights(model, mk.load_model(buffer))


# ------------------------------------------------------------------ .h5 with a custom loss
@keras.saving.register_keras_serializable(package="modelkeep_tests")
def halved_mse(y_true, y_pred):
    return keras.ops.mean(keras.ops.square(y_true - y_pred)) / 2


def test_h5_of_a_model_with_a_registered_custom_loss(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss=halved_mse)
    model.fit(X, Y, epochs=1, verbose=0)
    mk.save_model(model, tmp_path / "m.h5")
    loaded = mk.load_model(tmp_path / "m.h5")
    assert loaded.loss is halved_mse
    assert int(loaded.optimizer.iterations.numpy()) == int(model.optimizer.iterations.numpy())
    # Keras 3's own loader reads the file uncompiled; compiled it refuses the key tf-keras needs
    _same_weights(model, keras.saving.load_model(tmp_path / "m.h5", compile=False))
    with pytest.raises(ValueError, match="is_legacy_optimizer"):
        keras.saving.load_model(tmp_path / "m.h5")
