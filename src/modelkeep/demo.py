"""The tutorial's save-and-reuse workflow on synthetic data (``modelkeep demo``).

Example::

    report = run_demo(Path("/tmp/mk-demo"))
    report.all_equal    # True: every loaded model predicts exactly as the trained one
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modelkeep.api import load_model, load_weights, save_model, save_weights

WHAT = {
    "checkpoint": "TF checkpoint state file (names the latest checkpoint)",
    ".index": "TF checkpoint: which tensor is where",
    ".data-00000-of-00001": "TF checkpoint: the weight values",
    ".manifest.json": "modelkeep manifest: sizes and checksums",
    "saved_model.pb": "SavedModel: the TensorFlow graph (serving_default)",
    "fingerprint.pb": "SavedModel: its fingerprint",
    "variables": "SavedModel: the weight values",
    "modelkeep.json": "SavedModel: what rebuilds the Keras model",
    "modelkeep_optimizer.safetensors": "SavedModel: the optimizer state",
    ".h5": "HDF5",
}


@dataclass
class DemoReport:
    directory: Path
    files: list[tuple[str, int, str]] = field(default_factory=list)
    new_rows: np.ndarray | None = None
    predictions: dict[str, list[float]] = field(default_factory=dict)
    all_equal: bool = True


def tutorial_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A stand-in of the tutorial's data: 10 features, a binary label."""
    rng = np.random.default_rng(seed)
    x_train = rng.random((512, 10), dtype=np.float32)
    y_train = (x_train.sum(axis=1) > 5).astype(np.float32)
    x_new = rng.random((5, 10), dtype=np.float32)
    return x_train, y_train, x_new


def tutorial_model(compiled: bool = True) -> Any:
    """The tutorial's model: Dense(128, sigmoid) on 10 inputs, then Dense(1) logits."""
    import keras

    model = keras.Sequential([keras.Input((10,)), keras.layers.Dense(128, activation="sigmoid"), keras.layers.Dense(1)])
    if compiled:
        model.compile(optimizer="sgd", loss=keras.losses.BinaryCrossentropy(from_logits=True))
    return model


def _describe(path: Path) -> str:
    for key, text in WHAT.items():
        if path.name == key or path.name.endswith(key) or key in path.parts:
            if key == ".h5":
                return "HDF5: the whole model" if path.name.startswith("mysavedmodel") else "HDF5: the weights"
            return text
    return ""


def run_demo(directory: Path, *, epochs: int = 5, log: Callable[[str], Any] = print) -> DemoReport:
    """Train, save in four ways, load each back, predict on new rows; report what happened."""
    import keras

    directory.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(0)
    x_train, y_train, x_new = tutorial_data()
    model = tutorial_model()
    log(f"Training the tutorial's model for {epochs} epochs, checkpointing every epoch ...")
    from modelkeep.checkpoint.callbacks import ModelCheckpoint

    # the tutorial's callback: a TF checkpoint `saved_modelname` + `checkpoint` file, every epoch
    checkpoint = ModelCheckpoint(str(directory / "saved_modelname"), save_weights_only=True)
    model.fit(x_train, y_train, epochs=epochs, verbose=0, callbacks=[checkpoint])
    expected = model.predict(x_new, verbose=0)[:, 0]

    save_weights(model, directory / "saved_modelname.h5")
    save_model(model, directory / "mysavedmodel")
    save_model(model, directory / "mysavedmodel.h5")
    log("Saved weights (TF checkpoint, HDF5) and the whole model (SavedModel, HDF5).")

    report = DemoReport(directory=directory, new_rows=x_new)
    report.predictions["trained"] = expected.tolist()
    for name, label in (("saved_modelname", "TF ckpt"), ("saved_modelname.h5", "HDF5 weights")):
        fresh = tutorial_model(compiled=False)
        load_weights(fresh, directory / name)
        report.predictions[label] = fresh.predict(x_new, verbose=0)[:, 0].tolist()
    for name, label in (("mysavedmodel", "SavedModel"), ("mysavedmodel.h5", "HDF5 model")):
        loaded = load_model(directory / name)
        report.predictions[label] = loaded.predict(x_new, verbose=0)[:, 0].tolist()
    report.all_equal = all(np.array_equal(np.float32(v), expected) for v in report.predictions.values())
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            report.files.append((str(path.relative_to(directory)), path.stat().st_size, _describe(path)))
    return report
