"""One worker of a distributed ``mk.fit`` run; the tests start it as a child process.

    python train_worker.py STRATEGY DATA WORKDIR [--kill-at step:N] [--no-wait]

``STRATEGY`` is ``mirrored`` (one process, 2 logical CPU devices) or ``mwms``
(``MultiWorkerMirroredStrategy``; ``TF_CONFIG`` names the cluster and this task).
``DATA`` is ``arrays``, ``tfdata`` or ``pydataset``. With ``--kill-at step:N`` the worker
prints ``KILLPOINT step:N`` after optimizer step N and waits to be SIGKILLed (after the
backup in flight is committed, unless ``--no-wait``: then the kill may land mid-write).
At the end each worker writes ``WORKDIR/result-<task>.npz`` (every model, optimizer and
metric variable) and ``WORKDIR/history-<task>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402


def _strategy(name: str):
    if name == "mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=float(os.environ.get("MK_TIMEOUT", 60)))
    strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    interval = os.environ.get("MK_HEALTH_INTERVAL")
    if interval:  # how often TensorFlow checks that the peers are alive (30 s by default)
        strategy.extended._check_health_interval = float(interval)
    return strategy




def _audit(directories: list[Path]) -> dict:
    """Count this process's file-system calls in ``directories`` (Python audit events)."""
    prefixes = tuple(os.path.abspath(d) for d in directories)
    counts = {"read": 0, "write": 0, "after_start": 0, "started": False}

    def hook(event: str, event_args: tuple) -> None:
        if event not in ("open", "os.rename", "os.remove", "os.mkdir", "os.rmdir", "shutil.rmtree", "os.listdir",
                         "os.scandir"):
            return
        path = event_args[0] if event_args else None
        if not isinstance(path, (str, bytes, os.PathLike)) or not os.path.abspath(os.fsdecode(path)).startswith(prefixes):
            return
        mode = event_args[1] if event == "open" and len(event_args) > 1 else None
        flags = event_args[2] if event == "open" and len(event_args) > 2 else 0
        writing = event not in ("open", "os.listdir", "os.scandir") or (isinstance(mode, str) and any(
            c in mode for c in "wax+")) or bool(isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
        counts["write" if writing else "read"] += 1
        counts["after_start"] += int(counts["started"])

    sys.addaudithook(hook)
    return counts


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("strategy", choices=["mirrored", "mwms"])
    parser.add_argument("data", choices=["arrays", "tfdata", "pydataset"])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--kill-at")
    parser.add_argument("--no-wait", action="store_true")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--save-freq", type=int, default=3)
    parser.add_argument("--checkpoint", action="store_true", help="add an mk.ModelCheckpoint")
    parser.add_argument("--keras-fit", action="store_true", help="model.fit + mk.BackupAndRestore instead")
    args = parser.parse_args()
    audit = _audit([args.workdir / "backups", args.workdir / "ckpts"])
    strategy = _strategy(args.strategy)  # first: it starts TensorFlow's runtime

    import keras
    import numpy as np

    import modelkeep as mk

    keras.utils.set_random_seed(1234)
    tf.config.experimental.enable_op_determinism()
    task = json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {}).get("index", 0)

    class Kill(keras.callbacks.Callback):
        def __init__(self, point):
            super().__init__()
            self.step = int(point.split(":")[1]) if point else -1

        def get_state(self):
            return {}

        def set_state(self, state):
            pass

        def on_train_batch_begin(self, batch, logs=None):
            audit["started"] = True  # the backup, if any, was read before the first step

        def on_train_batch_end(self, batch, logs=None):
            if int(self.model.optimizer.iterations.numpy()) == self.step:
                if not args.no_wait:
                    mk.wait_for_saves()
                print(f"KILLPOINT step:{self.step} {time.time():.3f}", flush=True)
                time.sleep(600)
                os._exit(3)

    class Batches(keras.utils.PyDataset):
        def __init__(self, x, y, batch_size):
            super().__init__()
            self.x, self.y, self.batch_size = x, y, batch_size

        def __len__(self):
            return int(np.ceil(len(self.x) / self.batch_size))

        def __getitem__(self, i):
            s = slice(i * self.batch_size, (i + 1) * self.batch_size)
            return self.x[s], self.y[s]

    rng = np.random.default_rng(7)
    x = rng.normal(size=(72, 6)).astype("float32")
    y = (x @ rng.normal(size=(6, 1)) > 0).astype("float32")
    with strategy.scope():
        inputs = keras.Input((6,))
        h = keras.layers.Dense(16, activation="relu")(inputs)
        h = keras.layers.Dropout(0.3)(h)
        h = keras.layers.BatchNormalization()(h)
        outputs = keras.layers.Dense(1, activation="sigmoid")(h)
        model = keras.Model(inputs, outputs)
        model.compile(keras.optimizers.Adam(0.01), "binary_crossentropy", metrics=["accuracy"])
    kwargs: dict = {"epochs": args.epochs}
    if args.data == "arrays":
        kwargs.update(x=x, y=y, batch_size=12)
    elif args.data == "pydataset":
        kwargs.update(x=Batches(x, y, 12))
    else:
        ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(72, seed=3).batch(12)
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        kwargs.update(x=ds.with_options(options))
    callbacks = [Kill(args.kill_at)]
    if args.checkpoint:
        callbacks.append(mk.ModelCheckpoint(str(args.workdir / "ckpts" / "weights-{epoch}.weights.h5"), save_weights_only=True))
    if args.keras_fit:
        callbacks.append(mk.BackupAndRestore(str(args.workdir / "backups"), save_freq=args.save_freq))
        history = model.fit(verbose=0, callbacks=callbacks, **kwargs)
        history.history = {k: [float(v) for v in vs] for k, vs in history.history.items()}
    else:
        history = mk.fit(model, backup_dir=args.workdir / "backups", save_freq=args.save_freq, verbose=0,
                         callbacks=callbacks, **kwargs)
    print("AUDIT", json.dumps({k: v for k, v in audit.items() if k != "started"}), flush=True)
    arrays = {f"model/{i}/{v.path}": v.numpy() for i, v in enumerate(model.variables)}
    arrays.update({f"optimizer/{i}": v.numpy() for i, v in enumerate(model.optimizer.variables)})
    for i, metric in enumerate(model.metrics):
        arrays.update({f"metrics/{i}/{j}": v.numpy() for j, v in enumerate(metric.variables)})
    np.savez(args.workdir / f"result-{task}.npz", **arrays)
    doc = {"history": history.history, "epoch": history.epoch, "steps": int(model.optimizer.iterations.numpy())}
    (args.workdir / f"history-{task}.json").write_text(json.dumps(doc))
    print("DONE", doc["steps"], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
