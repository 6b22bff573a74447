"""A training script made resumable with ``mk.fit``; the kill harness runs it as a child.

    python train_child.py SCENARIO WORKDIR [--kill-at POINT] [--keras-backup]

``POINT`` is ``step:N`` (after optimizer step N, mid-epoch or not), ``after_save:N`` (just
after the backup taken at step N), ``val:E`` (during validation of epoch E, 0-based) or
``epoch_end:E``. At that point the script prints ``KILLPOINT`` and waits; the parent sends
SIGKILL. Without ``--kill-at`` it runs to the end and writes ``WORKDIR/result.npz`` (every
model, optimizer and metric variable) and ``WORKDIR/history.json``.

``--keras-backup`` runs the same training with ``model.fit`` + Keras's own
``keras.callbacks.BackupAndRestore`` instead, for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import modelkeep as mk  # noqa: E402

SEED = 1234
SAVE_FREQ = 3


class KillPoint(keras.callbacks.Callback):
    """Stops the process at one point of training, waiting for the parent's SIGKILL."""

    def __init__(self, point: str | None, save_freq: int, on_kill=None) -> None:
        super().__init__()
        self.kind, _, value = (point or "none:-1").partition(":")
        self.value = int(value)
        self.save_freq = save_freq
        self.on_kill = on_kill  # in-process tests raise here instead of waiting for SIGKILL

    def get_state(self) -> dict:  # nothing to keep; says so explicitly
        return {}

    def set_state(self, state: dict) -> None:
        pass

    def _stop(self, where: str) -> None:
        # mk.fit writes backups in the background (async_save=True): the kill points name
        # states where the backup taken before them is committed, so let the writer finish
        # (a kill during a background write is tested in tests/test_writer.py and tests/faults)
        mk.wait_for_saves()
        if self.on_kill is not None:
            self.on_kill(where)
        print(f"KILLPOINT {where}", flush=True)
        time.sleep(120)
        os._exit(3)  # the parent did not kill us

    def _step(self) -> int:
        return int(self.model.optimizer.iterations.numpy())

    def _epoch(self) -> int:
        return len(self.model.history.epoch)

    def on_train_batch_begin(self, batch, logs=None):
        step = self._step()
        if self.kind == "after_save" and step == self.value and step % self.save_freq == 0:
            self._stop(f"after_save:{step}")

    def on_train_batch_end(self, batch, logs=None):
        if self.kind == "step" and self._step() == self.value:
            self._stop(f"step:{self.value}")

    def on_test_batch_end(self, batch, logs=None):
        if self.kind == "val" and self._epoch() == self.value and batch >= 1:
            self._stop(f"val:{self.value}")

    def on_epoch_end(self, epoch, logs=None):
        if self.kind == "epoch_end" and epoch == self.value:
            self._stop(f"epoch_end:{epoch}")


class Batches(keras.utils.PyDataset):
    def __init__(self, x, y, batch_size):
        super().__init__()
        self.x, self.y, self.batch_size = x, y, batch_size

    def __len__(self):
        return int(np.ceil(len(self.x) / self.batch_size))

    def __getitem__(self, i):
        s = slice(i * self.batch_size, (i + 1) * self.batch_size)
        noise = np.random.normal(0, 0.01, self.x[s].shape).astype("float32")  # global NumPy RNG
        return self.x[s] + noise, self.y[s]


def data(n=120):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(n, 6)).astype("float32")
    y = (x @ rng.normal(size=(6, 1)) > 0).astype("float32")
    return x, y


def build(scenario: str) -> keras.Model:
    inputs = keras.Input((6,))
    h = keras.layers.Dense(16, activation="relu")(inputs)
    h = keras.layers.Dropout(0.3)(h)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.GaussianNoise(0.1)(h)
    h = keras.layers.Dense(8, activation="relu")(h)
    h = keras.layers.Dropout(0.2)(h)
    outputs = keras.layers.Dense(1, activation="sigmoid")(h)
    model = keras.Model(inputs, outputs)
    if scenario in ("arrays", "keras"):
        lr = keras.optimizers.schedules.ExponentialDecay(0.01, decay_steps=5, decay_rate=0.9)
        optimizer = keras.optimizers.Adam(lr)
    else:
        optimizer = keras.optimizers.SGD(0.05, momentum=0.9)
    model.compile(optimizer, "binary_crossentropy", metrics=["accuracy", keras.metrics.AUC(name="auc")])
    return model


def fit_kwargs(scenario: str) -> dict:
    x, y = data()
    if scenario in ("arrays", "keras"):
        weights = np.linspace(0.5, 1.5, len(x)).astype("float32")
        return dict(x=x, y=y, sample_weight=weights, batch_size=16, epochs=4, validation_split=0.25,
                    callbacks=[keras.callbacks.EarlyStopping("val_loss", patience=10, restore_best_weights=True)])
    if scenario == "callbacks":
        xv, yv = data(40)
        return dict(x=x, y=y, class_weight={0: 1.0, 1: 2.0}, batch_size=16, epochs=4,
                    validation_data=(xv, yv),
                    callbacks=[keras.callbacks.ReduceLROnPlateau("loss", factor=0.5, patience=0, min_delta=10.0),
                               keras.callbacks.LearningRateScheduler(lambda e, lr: lr * 0.95),
                               keras.callbacks.EarlyStopping("loss", patience=10)])
    if scenario == "pydataset":
        return dict(x=Batches(x, y, 16), epochs=3)
    if scenario == "tfdata":
        ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(64).batch(16)
        xv, yv = data(32)
        return dict(x=ds, epochs=3, validation_data=tf.data.Dataset.from_tensor_slices((xv, yv)).batch(8))
    raise SystemExit(f"unknown scenario {scenario}")


def result(model, history, workdir: Path) -> None:
    arrays = {f"model/{i}": v.numpy() for i, v in enumerate(model.variables)}
    arrays.update({f"optimizer/{i}": v.numpy() for i, v in enumerate(model.optimizer.variables)})
    for i, metric in enumerate(model.metrics):
        arrays.update({f"metrics/{i}/{j}": v.numpy() for j, v in enumerate(metric.variables)})
    np.savez(workdir / "result.npz", **arrays)
    steps = int(model.optimizer.iterations.numpy())
    doc = {"history": history.history, "epoch": history.epoch, "steps": steps}
    (workdir / "history.json").write_text(json.dumps(doc))


def train(scenario: str, workdir: Path, *, kill_at: str | None = None, on_kill=None, save_freq="3",
          sync_save: bool = False, keras_backup: bool = False, verbose=2):
    """The training script proper; returns ``(model, history)``."""
    keras.utils.set_random_seed(SEED)
    tf.config.experimental.enable_op_determinism()
    model = build(scenario)
    kwargs = fit_kwargs(scenario)
    save_freq = "epoch" if save_freq == "epoch" else int(save_freq)
    kill = KillPoint(kill_at, save_freq if isinstance(save_freq, int) else 10**9, on_kill)
    kwargs["callbacks"] = kwargs.get("callbacks", []) + [kill]
    if keras_backup:
        backup = keras.callbacks.BackupAndRestore(str(workdir / "keras_backup"), save_freq=save_freq)
        kwargs["callbacks"].append(backup)
        return model, model.fit(verbose=0, **kwargs)
    # the one line that makes this script resumable:
    history = mk.fit(model, backup_dir=workdir / "backups", save_freq=save_freq, verbose=verbose,
                     async_save=not sync_save, **kwargs)
    return model, history


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario")
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--kill-at")
    parser.add_argument("--keras-backup", action="store_true")
    parser.add_argument("--save-freq", default=str(SAVE_FREQ))
    parser.add_argument("--sync-save", action="store_true", help="write backups on the training thread")
    args = parser.parse_args()
    model, history = train(args.scenario, args.workdir, kill_at=args.kill_at, save_freq=args.save_freq,
                           sync_save=args.sync_save, keras_backup=args.keras_backup)
    result(model, history, args.workdir)
    print("DONE", int(model.optimizer.iterations.numpy()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
