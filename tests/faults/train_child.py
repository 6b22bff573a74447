"""Child process of the fault-injection harness: trains and checkpoints until it is killed.

It prints, flushed, one line per event, so that the parent knows what was saved even
after a SIGKILL:

* ``ready``                 training is about to start
* ``fp <step> <crc>``       fingerprint of the model's weights after optimizer step <step>
* ``saving <step>``         a checkpoint save starts
* ``saved <step> <path>``   a checkpoint save returned

Run: ``python tests/faults/train_child.py --dir D --impl mk --filepath ckpt.keras``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import zlib
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
SLICE = 4096


def build_model(params_millions: float = 20.0, seed: int = 0):
    """A Dense stack of about ``params_millions`` parameters (Adam, mse)."""
    import keras

    keras.utils.set_random_seed(seed)
    width = int((params_millions * 1e6 / 3.5) ** 0.5)
    model = keras.Sequential(
        [
            keras.Input((width // 2,)),
            keras.layers.Dense(width, activation="relu"),
            keras.layers.Dense(width, activation="relu"),
            keras.layers.Dense(width, activation="relu"),
            keras.layers.Dense(width // 4, activation="relu"),
            keras.layers.Dense(10),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="mse")
    return model


def fingerprint(model) -> int:
    """CRC-32 over the first and last bytes of every model weight: cheap, exact."""
    crc = 0
    for variable in model.weights:
        data = variable.numpy().tobytes()
        crc = zlib.crc32(data[:SLICE], crc)
        crc = zlib.crc32(data[-SLICE:], crc)
    return crc


def say(*parts) -> None:
    sys.stdout.write(" ".join(str(p) for p in parts) + "\n")
    sys.stdout.flush()


def _step(model) -> int:
    return int(model.optimizer.iterations.numpy())


def make_callbacks(args, model):
    import keras

    class Fingerprints(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            say("fp", _step(self.model), fingerprint(self.model))

    kwargs = json.loads(args.callback_kwargs)
    path = f"{args.dir}/{args.filepath}" if "://" in args.dir else str(Path(args.dir) / args.filepath)
    if args.impl == "keras":

        class Reporting(keras.callbacks.ModelCheckpoint):
            def _save_model(self, epoch, batch, logs):
                say("saving", _step(self.model))
                super()._save_model(epoch, batch, logs)
                say("saved", _step(self.model), path)

        checkpoint = Reporting(path, save_weights_only=args.weights_only, save_freq=args.save_freq, **kwargs)
    else:
        import modelkeep as mk

        class Reporting(mk.ModelCheckpoint):
            def write(self, job, **kwargs):  # step="local"/"upload": a URL's staged write, then its upload
                if kwargs.get("step") != "upload":
                    say("saving", job.metadata["step"])
                info = super().write(job, **kwargs)
                if info is not None and kwargs.get("step") != "local":
                    say("saved", job.metadata["step"], job.path)
                return info

        checkpoint = Reporting(path, save_weights_only=args.weights_only, save_freq=args.save_freq, **kwargs)
    return [Fingerprints(), checkpoint]


def first_step(directory: Path) -> int:
    """Continue the step count of earlier runs, so the newest checkpoint is this run's."""
    from modelkeep.checkpoint import store

    if not directory.is_dir():
        return 0
    steps = [i.step for i in store.list_checkpoints(directory, verify=False) if i.step is not None]
    return max(steps, default=0) + 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", required=True)
    parser.add_argument("--impl", choices=["mk", "keras"], default="mk")
    parser.add_argument("--filepath", default="ckpt.keras")
    parser.add_argument("--weights-only", action="store_true")
    parser.add_argument("--save-freq", type=int, default=2)
    parser.add_argument("--params", type=float, default=20.0)
    parser.add_argument("--callback-kwargs", default="{}")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import numpy as np

    from modelkeep.storage.fs import as_location

    directory = as_location(args.dir)  # a local path, or an s3:// URL (tests/test_object_storage_faults.py)
    directory.mkdir(parents=True, exist_ok=True)
    model = build_model(args.params, seed=args.seed)
    rng = np.random.default_rng(args.seed)
    x = rng.random((256, model.input_shape[-1]), dtype=np.float32)
    y = rng.random((256, 10), dtype=np.float32)
    model.optimizer.build(model.trainable_variables)
    if args.impl == "mk":
        model.optimizer.iterations.assign(first_step(directory))
    callbacks = make_callbacks(args, model)
    say("ready")
    model.fit(x, y, batch_size=32, epochs=10_000, verbose=0, callbacks=callbacks)
    return 0


if __name__ == "__main__":
    sys.exit(main())
