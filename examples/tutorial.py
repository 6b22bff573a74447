"""The TensorFlow 2 tutorial's save-and-reuse flow, block by block, with modelkeep on Keras 3.

Run: ``python examples/tutorial.py [WORKDIR]`` (default: a new temporary directory).
Each block matches one of the tutorial's; the comments say what is on disk after it.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import modelkeep as mk  # noqa: E402


def build() -> keras.Model:
    model = keras.Sequential([keras.Input((10,)), keras.layers.Dense(128, activation="sigmoid"), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss=keras.losses.BinaryCrossentropy(from_logits=True))
    return model


def main(workdir: Path) -> dict[str, np.ndarray]:
    os.chdir(workdir)
    rng = np.random.default_rng(0)
    x_train = rng.random((512, 10), dtype=np.float32)
    y_train = (x_train.sum(axis=1) > 5).astype(np.float32)
    x_test = rng.random((64, 10), dtype=np.float32)

    # Block 1: save weights during training with a callback
    model = build()
    checkpoint = mk.ModelCheckpoint("saved_modelname", save_weights_only=True)
    model.fit(x_train, y_train, epochs=10, verbose=0, callbacks=[checkpoint])
    # on disk: checkpoint, saved_modelname.data-00000-of-00001, saved_modelname.index

    # Block 2: load the saved weights into the same architecture
    model = build()
    mk.load_weights(model, "saved_modelname")

    # Block 3: save weights by hand after training
    model = build()
    model.fit(x_train, y_train, epochs=10, verbose=0)
    mk.save_weights(model, "saved_modelname")
    mk.save_weights(model, "saved_modelname.h5")

    # Block 4: save the whole model during training (a SavedModel directory)
    checkpoint = mk.ModelCheckpoint(filepath="saved_model", frequency="epoch", save_weights_only=False, verbose=1)
    model.fit(x_train, y_train, verbose=0, callbacks=[checkpoint])
    # on disk: saved_model/ with assets/, saved_model.pb, variables/

    # Block 5: load the whole model
    model = mk.load_model("saved_model")

    # Block 6: save the whole model after training
    mk.save_model(model, "mysavedmodel")  # a directory, as in block 4
    mk.save_model(model, "mysavedmodel.h5")  # one HDF5 file

    # Block 7: predict on new data, with each saved form
    results = {"saved_model": model.predict(x_test, verbose=0)}
    for path in ("mysavedmodel", "mysavedmodel.h5"):
        results[path] = mk.load_model(path).predict(x_test, verbose=0)
    for name, values in results.items():
        print(f"{name:>16}: first predictions {np.round(values[:3, 0], 4).tolist()}")
    print("files:", " ".join(sorted(os.listdir("."))))
    return results


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="modelkeep-tutorial-"))
    target.mkdir(parents=True, exist_ok=True)
    main(target)
