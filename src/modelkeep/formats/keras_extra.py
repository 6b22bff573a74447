"""Keras 3's other layouts: the unzipped model directory and sharded ``.weights.json``.

Keras writes and reads these (``save_model(..., zipped=False)``,
``save_weights(..., max_shard_size=N)``); modelkeep adds the commit protocol: the
directory is renamed into place whole; the shards go first and the ``.weights.json``
index last, so a reader that finds the index finds every shard it names.

Example::

    mk.save_model(model, "run/model_dir", zipped=False)   # config.json + model.weights.h5
    mk.save_weights(model, "run/w.weights.json", max_shard_size=0.5)   # GB per shard
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from modelkeep.capture import capture, deserialization_error
from modelkeep.errors import UnsupportedModelError
from modelkeep.formats.base import Format
from modelkeep.state import ModelState
from modelkeep.storage.commit import atomic_path, commit_group, temp_sibling, write_error

CONFIG_FILE = "config.json"


def is_keras_dir(path: Path) -> bool:
    return path.is_dir() and (path / CONFIG_FILE).exists() and not (path / "saved_model.pb").exists()


class KerasDirFormat(Format):
    """The unzipped ``.keras`` layout: a directory with ``config.json`` and ``model.weights.h5``."""

    name = "Keras directory (zipped=False)"
    holds = ("model",)
    keeps_optimizer = True

    def files(self, path: Path) -> list[Path]:
        return sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]

    def exists(self, path: Path) -> bool:
        return is_keras_dir(path)

    def write(self, state: ModelState, path: Path, *, model: Any = None) -> list[Path]:
        from keras.src.saving import saving_lib

        if model is None:
            raise UnsupportedModelError(f"save_model: {path}: an unzipped Keras directory is written from a live model.")
        with atomic_path(path, keep_suffix="") as tmp:
            saving_lib.save_model(model, str(tmp), zipped=False)
        return self.files(path)

    def save_model(self, model: Any, path: Path, *, include_optimizer: bool = True) -> list[Path]:
        return self.write(ModelState(), path, model=model)

    def load_model(self, path: Path, *, custom_objects: dict | None = None, compile: bool = True, safe_mode: bool = True) -> Any:
        import keras

        self.require(path)
        try:
            return keras.saving.load_model(str(path), custom_objects=custom_objects, compile=compile, safe_mode=safe_mode)
        except (TypeError, ValueError) as exc:
            raise deserialization_error(exc, str(path)) from exc

    def read(self, path: Path) -> ModelState:
        return capture(self.load_model(path))


class KerasShardedWeightsFormat(Format):
    """Keras's sharded weights: ``name.weights.json`` plus ``name_00000.weights.h5``, ..."""

    name = "Keras sharded weights (.weights.json)"
    holds = ("weights",)

    def files(self, path: Path) -> list[Path]:
        stem = path.name[: -len(".weights.json")]
        return sorted(path.parent.glob(f"{stem}_*.weights.h5")) + [path]

    def write(self, state: ModelState, path: Path, *, model: Any = None) -> list[Path]:
        if model is None:
            raise UnsupportedModelError(f"save_weights: {path}: sharded weights are written from a live model.")
        return self.save_weights(model, path)

    def save_weights(self, model: Any, path: Path, *, max_shard_size: float = 5.0, objects_to_skip: Any = None) -> list[Path]:
        from keras.src.saving import saving_lib

        from modelkeep.own_state import capture_own

        _, info = capture_own(model)
        with_assets = [e for e in info if e["assets"]]
        if with_assets:
            names = ", ".join(f"'{e['name']}' ({e['class']})" for e in with_assets)
            raise UnsupportedModelError(
                f"save_weights: {path}: Keras's sharded weights do not keep the assets of layer(s) {names} "
                "(an adapted vocabulary); loading would give wrong predictions. Save to .weights.h5, "
                ".safetensors, .h5 or a TF checkpoint, which keep them."
            )
        tmp_dir = temp_sibling(path, keep_suffix="")
        tmp_dir.mkdir(parents=True)
        try:
            saving_lib.save_weights_only(model, str(tmp_dir / path.name), max_shard_size, objects_to_skip=objects_to_skip)
            written = sorted(tmp_dir.iterdir())
            index = tmp_dir / path.name
            pairs = [(p, path.parent / p.name) for p in written if p != index] + [(index, path)]
            stale = [old for old in self.files(path)[:-1] if old.name not in {p.name for p in written}]
            commit_group(pairs)
            for old in stale:  # shards of an earlier, larger save, no longer named by the index
                old.unlink(missing_ok=True)
        except OSError as exc:
            raise write_error(path, exc) from exc
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)
        return self.files(path)

    def load_weights(self, model: Any, path: Path, *, skip_mismatch: bool = False, objects_to_skip: Any = None) -> None:
        from keras.src.saving import saving_lib

        self.require(path)
        saving_lib.load_weights_only(model, str(path), skip_mismatch=skip_mismatch, objects_to_skip=objects_to_skip)

    def read(self, path: Path) -> ModelState:
        from modelkeep.errors import FormatError

        raise FormatError(
            f"read: {path} is a Keras sharded weights file, which holds no architecture; load it into a "
            "model you build with modelkeep.load_weights(model, path)."
        )
