"""mk.ModelCheckpoint and mk.BackupAndRestore: Keras 3 semantics, every format, safety."""

from __future__ import annotations

import os
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import modelkeep as mk
from modelkeep.checkpoint import store
from modelkeep.storage.commit import TMP_MARK


def small_model(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((10,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse", metrics=["mae"])
    return model


def data(n: int = 64) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.random((n, 10), dtype=np.float32)
    return x, x.sum(axis=1, keepdims=True)


def files_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if not p.name.endswith(".json") and p.name != "checkpoint")


def drive(callback: keras.callbacks.Callback, model: keras.Model, epochs: list[dict], batches: int = 0) -> None:
    """Call the callback's hooks as fit would, with given logs (exact, no training noise)."""
    callback.set_model(model)
    callback.on_train_begin()
    for epoch, logs in enumerate(epochs):
        callback.on_epoch_begin(epoch)
        for batch in range(batches):
            callback.on_train_batch_end(batch, {"loss": logs["loss"] + batch})
        callback.on_epoch_end(epoch, logs)
    callback.on_train_end()


LOGS = [
    {"loss": 0.9, "val_loss": 0.6, "mae": 0.5},
    {"loss": 0.8, "val_loss": 0.4, "mae": 0.4},
    {"loss": 0.7, "val_loss": 0.45, "mae": 0.45},
    {"loss": 0.6, "val_loss": 0.3, "mae": 0.2},
    {"loss": 0.5, "val_loss": 0.35, "mae": 0.3},
]


# ------------------------------------------------------------------ (a) semantics vs Keras
@pytest.mark.parametrize(
    "template, kwargs, batches",
    [
        ("w-{epoch:02d}-{val_loss:.3f}.weights.h5", {"save_weights_only": True}, 0),
        ("m-{epoch}.keras", {"save_best_only": True}, 0),
        ("m-{epoch}.keras", {"save_best_only": True, "initial_value_threshold": 0.42}, 0),
        ("m-{epoch}.keras", {"save_best_only": True, "monitor": "mae", "mode": "max"}, 0),
        ("m-{epoch}.keras", {"save_best_only": True, "monitor": "mae", "mode": "min"}, 0),
        ("w-{epoch}-{batch}.weights.h5", {"save_weights_only": True, "save_freq": 3}, 4),
        ("w-{epoch}-{loss:.1f}.weights.h5", {"save_weights_only": True, "save_freq": 2}, 3),
    ],
)
def test_same_files_as_keras(tmp_path: Path, template: str, kwargs: dict, batches: int) -> None:
    model = small_model()
    model(np.zeros((1, 10), np.float32))
    (tmp_path / "keras").mkdir()
    (tmp_path / "mk").mkdir()
    drive(keras.callbacks.ModelCheckpoint(str(tmp_path / "keras" / template), **kwargs), model, LOGS, batches)
    ours = mk.ModelCheckpoint(str(tmp_path / "mk" / template), **kwargs)
    drive(ours, model, LOGS, batches)
    expected = files_in(tmp_path / "keras")
    assert expected, "the Keras run saved nothing; the case tests nothing"
    assert files_in(tmp_path / "mk") == expected
    for name in expected:  # every save of ours has a verified manifest
        assert store.info_for(tmp_path / "mk" / name).status == "ok"


def test_best_value_follows_keras(tmp_path: Path) -> None:
    model = small_model()
    model(np.zeros((1, 10), np.float32))
    theirs = keras.callbacks.ModelCheckpoint(str(tmp_path / "k.keras"), save_best_only=True)
    ours = mk.ModelCheckpoint(str(tmp_path / "m.keras"), save_best_only=True)
    drive(theirs, model, LOGS)
    drive(ours, model, LOGS)
    assert ours.best == pytest.approx(float(theirs.best)) == 0.3


def test_frequency_is_save_freq(tmp_path: Path) -> None:
    assert mk.ModelCheckpoint(tmp_path / "x.keras", frequency=5).save_freq == 5
    assert mk.ModelCheckpoint(tmp_path / "x.keras", frequency="epoch").save_freq == "epoch"
    with pytest.raises(ValueError, match="disagree"):
        mk.ModelCheckpoint(tmp_path / "x.keras", save_freq=2, frequency=3)
    with pytest.raises(ValueError, match="save_freq"):
        mk.ModelCheckpoint(tmp_path / "x.keras", save_freq="batch")


def test_path_without_a_format_fails_at_construction(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="weights only"):
        mk.ModelCheckpoint(tmp_path / "x.safetensors")  # a whole model cannot go in safetensors
    with pytest.raises(ValueError, match=".keras"):
        mk.ModelCheckpoint(tmp_path / "x.keras", save_weights_only=True)


def test_tutorial_form_and_latest_checkpoint(tmp_path: Path) -> None:
    x, y = data()
    model = small_model()
    callback = mk.ModelCheckpoint(str(tmp_path / "saved_modelname"), save_weights_only=True)
    model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[callback])
    assert tf.train.latest_checkpoint(str(tmp_path)) == str(tmp_path / "saved_modelname")
    fresh = small_model(seed=5)
    mk.load_weights(fresh, tmp_path)
    for a, b in zip(fresh.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_latest_checkpoint_names_newest_and_rotation_updates_state_file(tmp_path: Path) -> None:
    x, y = data()
    model = small_model()
    callback = mk.ModelCheckpoint(str(tmp_path / "ckpt-{epoch}"), save_weights_only=True, max_to_keep=2)
    model.fit(x, y, epochs=4, batch_size=16, verbose=0, callbacks=[callback])
    assert tf.train.latest_checkpoint(str(tmp_path)) == str(tmp_path / "ckpt-4")
    state = tf.train.get_checkpoint_state(str(tmp_path))
    assert [Path(p).name for p in state.all_model_checkpoint_paths] == ["ckpt-3", "ckpt-4"]
    assert not (tmp_path / "ckpt-1.index").exists() and not (tmp_path / "ckpt-2.index").exists()
    reader = tf.train.load_checkpoint(str(tmp_path / "ckpt-4"))
    kernel = reader.get_tensor("layer_with_weights-0/kernel/.ATTRIBUTES/VARIABLE_VALUE")
    np.testing.assert_array_equal(kernel, model.layers[0].kernel.numpy())


# the weights-only formats are also saved, damaged and loaded back in test_faults.py
FORMATS = [
    ("ckpt-{epoch}", True),
    ("m-{epoch}.keras", False),
    ("m-{epoch}.h5", False),
    ("sm-{epoch}", False),
]


@pytest.mark.parametrize("template, weights_only", FORMATS)
def test_every_format_saves_what_the_model_holds(tmp_path: Path, template: str, weights_only: bool) -> None:
    x, y = data()
    model = small_model()
    callback = mk.ModelCheckpoint(str(tmp_path / template), save_weights_only=weights_only, monitor="loss")
    model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[callback])
    infos = mk.list_checkpoints(tmp_path)
    assert [(i.epoch, i.step, i.status) for i in infos] == [(2, 8, "ok"), (1, 4, "ok")]
    assert set(infos[0].logs) >= {"loss", "mae"}
    newest = infos[0].path
    if weights_only:
        loaded = small_model(seed=9)
        mk.load_weights(loaded, newest)
    else:
        loaded = mk.load_model(newest)
        assert loaded.optimizer.iterations.numpy() == 8
    for a, b in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_leftovers_removed_at_train_begin(tmp_path: Path) -> None:
    leftover = tmp_path / f".ckpt.keras{TMP_MARK}999999999-deadbeef.keras"
    leftover.write_bytes(b"half a zip")
    live = tmp_path / f".ckpt.keras{TMP_MARK}{os.getpid()}-cafecafe.keras"  # a save in progress
    live.write_bytes(b"being written")
    x, y = data()
    model = small_model()
    model.fit(x, y, epochs=1, verbose=0, callbacks=[mk.ModelCheckpoint(str(tmp_path / "ckpt.keras"))])
    assert not leftover.exists()
    assert live.exists()
    assert [i.path.name for i in mk.list_checkpoints(tmp_path)] == ["ckpt.keras"]


def test_crash_between_file_and_manifest_commit_is_recovered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fixed name overwritten: killed after the new file's rename, before the manifest's."""
    x, y = data()
    model = small_model()
    target = tmp_path / "ckpt.weights.h5"
    model.fit(x, y, epochs=1, verbose=0, callbacks=[mk.ModelCheckpoint(str(target), save_weights_only=True)])
    real_replace = os.replace

    def dying_replace(src: os.PathLike, dst: os.PathLike) -> None:
        if str(src).endswith(store.PENDING_SUFFIX) and TMP_MARK not in str(src):
            raise SystemExit("killed")  # what a SIGKILL at this instant leaves behind
        real_replace(src, dst)

    monkeypatch.setattr(store.os, "replace", dying_replace)
    with pytest.raises(SystemExit):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[mk.ModelCheckpoint(str(target), save_weights_only=True)])
    monkeypatch.setattr(store.os, "replace", real_replace)
    assert store.pending_manifest_path(target).exists()
    info = store.info_for(target)
    assert info.status == "ok" and info.step == 4  # the new file, vouched for by the pending manifest
    assert store.recover_pending(tmp_path) == [target]
    assert not store.pending_manifest_path(target).exists()
    loaded = small_model(seed=3)
    mk.load_weights(loaded, tmp_path)
    for a, b in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_retention_in_the_callback(tmp_path: Path) -> None:
    callback = mk.ModelCheckpoint(
        str(tmp_path / "w-{epoch}.safetensors"), save_weights_only=True, max_to_keep=1, keep_best=1, monitor="val_loss"
    )
    model = small_model()
    model(np.zeros((1, 10), np.float32))
    drive(callback, model, LOGS)
    # newest (epoch 5) and best val_loss (epoch 4, 0.3)
    assert files_in(tmp_path) == ["w-4.safetensors", "w-5.safetensors"]


# ------------------------------------------------------------------ BackupAndRestore
class _Interrupt(keras.callbacks.Callback):
    def __init__(self, at_epoch: int) -> None:
        super().__init__()
        self.at_epoch = at_epoch

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if epoch == self.at_epoch:
            raise RuntimeError("interrupted")


def _interrupted_run(backup: Path, impl: type, at_epoch: int = 1) -> tuple[keras.Model, list[np.ndarray]]:
    x, y = data()
    model = small_model()
    with pytest.raises(RuntimeError, match="interrupted"):
        model.fit(x, y, epochs=4, batch_size=16, verbose=0, callbacks=[impl(str(backup)), _Interrupt(at_epoch)])
    mk.wait_for_saves()  # fit ended in an exception: its last backup may still be in the writer
    return model, [w.copy() for w in model.get_weights()]


@pytest.mark.parametrize("impl", [keras.callbacks.BackupAndRestore, mk.BackupAndRestore])
def test_backup_resumes_at_the_same_epoch_as_keras(tmp_path: Path, impl: type) -> None:
    model, weights = _interrupted_run(tmp_path / "backup", impl)
    x, y = data()
    fresh = small_model(seed=7)
    seen: list[list[np.ndarray]] = []
    probe = keras.callbacks.LambdaCallback(on_train_begin=lambda logs: seen.append(fresh.get_weights()))
    history = fresh.fit(x, y, epochs=4, batch_size=16, verbose=0, callbacks=[impl(str(tmp_path / "backup")), probe])
    assert history.epoch == [2, 3]
    for a, b in zip(seen[0], weights):
        np.testing.assert_array_equal(a, b)
    assert not (tmp_path / "backup").exists()  # delete_checkpoint=True


def test_backup_restores_optimizer_state(tmp_path: Path) -> None:
    model, _ = _interrupted_run(tmp_path / "backup", mk.BackupAndRestore)
    fresh = small_model(seed=7)
    fresh(np.zeros((1, 10), np.float32))
    callback = mk.BackupAndRestore(str(tmp_path / "backup"), delete_checkpoint=False)
    callback.set_model(fresh)
    callback.on_train_begin()
    assert int(fresh.optimizer.iterations.numpy()) == 8
    for a, b in zip(fresh.optimizer.variables, model.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert [p.name for p in sorted((tmp_path / "backup").iterdir())] == ["ckpt-000000004", "ckpt-000000008"]


def test_backup_falls_back_past_a_corrupt_one(tmp_path: Path) -> None:
    _interrupted_run(tmp_path / "backup", mk.BackupAndRestore, at_epoch=2)
    newest = tmp_path / "backup" / "ckpt-000000012" / "state.safetensors"
    raw = bytearray(newest.read_bytes())
    raw[-3] ^= 0x10
    newest.write_bytes(bytes(raw))
    fresh = small_model(seed=7)
    fresh(np.zeros((1, 10), np.float32))
    callback = mk.BackupAndRestore(str(tmp_path / "backup"))
    callback.set_model(fresh)
    with pytest.warns(UserWarning, match="ckpt-000000012"):
        callback.on_train_begin()
    assert callback.restored_from.name == "ckpt-000000008"
    assert fresh._initial_epoch == 2


def test_backup_every_n_batches(tmp_path: Path) -> None:
    x, y = data()
    model = small_model()
    callback = mk.BackupAndRestore(str(tmp_path / "b"), save_freq=3, delete_checkpoint=False, max_to_keep=3)
    model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[callback])
    infos = mk.list_checkpoints(tmp_path / "b")
    assert [i.step for i in infos] == [6, 3]  # Keras's counting: every 3 batches across epochs
    assert all(i.status == "ok" for i in infos)
