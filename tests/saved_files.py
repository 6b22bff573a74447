"""Real saved files of every format, for the CLI and tools tests (``test_cli``, ``test_tools``).

``make_all(root)`` trains a small compiled model (so it has optimizer state) and writes:

* ``files/``: one file of each format, without manifests (as ``save_weights`` leaves them);
* ``signed/``: the same formats, each with a sidecar manifest (``<name>.manifest.json``);
* ``run/``: four ``ckpt-<step>/`` backups with logged ``loss``/``val_loss``/``accuracy``.

and returns a ``SavedFiles`` with the paths and the model.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# name -> (path under files/, save function name)
LAYOUT = {
    "tf_checkpoint": ("ckpt", "save_weights"),
    "savedmodel": ("exported", "save_model"),
    "h5_weights": ("weights.h5", "save_weights"),
    "h5_model": ("model.h5", "save_model"),
    "keras": ("model.keras", "save_model"),
    "weights_h5": ("model.weights.h5", "save_weights"),
    "safetensors": ("weights.safetensors", "save_weights"),
}
FORMAT_NAMES = {
    "tf_checkpoint": "TF checkpoint",
    "savedmodel": "SavedModel",
    "h5_weights": "HDF5",
    "h5_model": "HDF5",
    "keras": "Keras zip (.keras)",
    "weights_h5": "Keras weights (.weights.h5)",
    "safetensors": "safetensors",
    "backup": "modelkeep backup",
}
# val_loss is lowest at step 30: the best checkpoint is not the newest
RUN_LOGS = {
    10: {"loss": 1.0, "val_loss": 1.2, "accuracy": 0.50},
    20: {"loss": 0.5, "val_loss": 0.6, "accuracy": 0.70},
    30: {"loss": 0.3, "val_loss": 0.4, "accuracy": 0.80},
    40: {"loss": 0.2, "val_loss": 0.7, "accuracy": 0.85},
}


@dataclass
class SavedFiles:
    root: Path
    paths: dict[str, Path]          # unsigned files, by format key (+ "backup")
    signed: dict[str, Path]         # the same with manifests
    run: Path
    model: Any
    x: np.ndarray

    def backup(self, step: int) -> Path:
        return self.run / f"ckpt-{step:09d}"


def build_model() -> Any:
    import keras

    inputs = keras.Input((4,), name="features")
    hidden = keras.layers.Dense(8, activation="relu", name="hidden")(inputs)
    outputs = keras.layers.Dense(1, name="score")(hidden)
    model = keras.Model(inputs, outputs, name="small")
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse", metrics=["mae"])
    return model


def _save_all(model: Any, directory: Path, *, manifests: bool) -> dict[str, Path]:
    import modelkeep as mk
    from modelkeep.checkpoint.store import write_sidecar_manifest
    from modelkeep.formats import registry

    directory.mkdir(parents=True)
    out = {}
    for key, (name, how) in LAYOUT.items():
        path = directory / name
        getattr(mk, how)(model, path)
        if manifests:
            write_sidecar_manifest(path, registry.detect(path), {"step": 1})
        out[key] = path
    return out


def make_all(root: Path) -> SavedFiles:
    from modelkeep.capture import capture
    from modelkeep.checkpoint.store import save_state

    rng = np.random.default_rng(7)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = (x.sum(axis=1, keepdims=True) > 0).astype("float32")
    model = build_model()
    model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    paths = _save_all(model, root / "files", manifests=False)
    signed = _save_all(model, root / "signed", manifests=True)
    run = root / "run"
    for step, logs in RUN_LOGS.items():
        model.fit(x, y, epochs=1, batch_size=16, verbose=0)
        save_state(run, capture(model), step=step, metadata={"epoch": step // 10, "logs": logs})
    paths["backup"] = run / f"ckpt-{40:09d}"
    signed["backup"] = paths["backup"]
    return SavedFiles(root, paths, signed, run, model, x)


def files_of(path: Path) -> list[Path]:
    """Every file making up a saved object (a prefix's .index and .data, a directory's files)."""
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    index = Path(str(path) + ".index")
    if index.exists():
        return [index, Path(str(path) + ".data-00000-of-00001")]
    return [path]


def copy_saved(src: Path, dst: Path) -> Path:
    """Copy a saved object (and its sidecar manifest, if any) to ``dst``."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        for file in files_of(src):
            shutil.copy(file, Path(str(dst) + file.name[len(src.name):]))
    manifest = src.with_name(src.name + ".manifest.json")
    if manifest.exists():
        text = manifest.read_text().replace(f'"{src.name}', f'"{dst.name}')
        dst.with_name(dst.name + ".manifest.json").write_text(text)
    return dst


def flip_bit(file: Path, where: float = 0.5) -> None:
    data = bytearray(file.read_bytes())
    data[int(len(data) * where)] ^= 0x10
    file.write_bytes(bytes(data))


def truncate(file: Path, keep: float = 0.6) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: int(len(data) * keep)])
