"""``.keras`` zips written by tf.keras 2.13-2.15 (and tf-keras 2.16+): Keras 2 configs in Keras 3's box.

Their ``config.json`` names Keras 2 modules (``keras.src.engine.functional``,
``tf_keras.src.engine.functional``) and holds Keras 2 configs (``batch_input_shape``, nested
node lists, ``hard_sigmoid`` ...); ``metadata.json`` says ``"keras_version": "2.x"``. Keras 3
refuses them. The config is translated as any Keras 2 config is (``legacy_config``), the
weights file (``model.weights.h5``: ``layers/<name>/vars/<i>``, the layout Keras 3 kept) is
used as it is, and Keras 3 loads the result.

Example::

    model = load_keras2_zip(Path("tf213_model.keras"))
"""

from __future__ import annotations

import json
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from modelkeep.errors import ModelkeepError
from modelkeep.formats import legacy_config
from modelkeep.storage import guard


def keras_version(path: Path) -> str | None:
    """The ``keras_version`` of a ``.keras`` zip's ``metadata.json`` (None when absent)."""
    try:
        with guard.open_zip(path) as archive:
            meta = guard.load_json(guard.read_member(archive, "metadata.json", source=f"{path}!metadata.json"),
                                   source=f"{path}!metadata.json", what="metadata.json")
        version = meta.get("keras_version")
        return version if isinstance(version, str) else None
    except (ModelkeepError, KeyError, ValueError, OSError, zipfile.BadZipFile):
        return None


def _compile_config(config: dict | None) -> dict | None:
    if not config:
        return None
    out = dict(config)
    if isinstance(out.get("optimizer"), dict):
        optimizer = {k: v for k, v in out["optimizer"].items() if k != "module"}
        out["optimizer"] = legacy_config.to_keras3_optimizer(optimizer)
    out["loss"] = legacy_config._loss(out.get("loss"))
    for key in ("run_eagerly", "jit_compile"):
        out[key] = bool(out.get(key) or False)
    out["steps_per_execution"] = out.get("steps_per_execution") or 1
    return out


def _keras2_snake(name: str) -> str:
    # tf.keras's generic_utils.to_snake_case (the group names of its model.weights.h5)
    import re

    name = re.sub("([a-z])([A-Z])", r"\1_\2", re.sub("(.)([A-Z][a-z0-9]+)", r"\1_\2", name)).lower()
    return name if name[0] != "_" else "private" + name


def _split_suffix(name: str) -> tuple[str, int]:
    base, _, tail = name.rpartition("_")
    return (base, int(tail)) if base and tail.isdigit() else (name, 0)


def _layer_groups(k2_layers: list, k3_layers: list, present: list[str]) -> dict[str, tuple[str, int]]:
    """Group names of a tf.keras ``model.weights.h5`` -> (Keras 3's group name, layer index).

    tf.keras names each layer's group by its class (``dense``, ``dense_1``, ...), counting in the
    order it walks the model; 2.13 walks ``_layer_checkpoint_dependencies``, where a layer with
    weights is listed twice (so its groups are ``dense``, ``dense_2``: the second visit writes
    nothing). Either way, a class's groups in suffix order are its layers in model order. Keras 3
    names them by *its* class (``TFOpLambda`` is ``TFOp``, ``CuDNNLSTM`` is ``LSTM``), counting the
    same way.
    """
    from keras.src.utils.naming import to_snake_case

    by_base: dict[str, list[tuple[int, str]]] = {}
    for name in present:
        base, number = _split_suffix(name)
        by_base.setdefault(base, []).append((number, name))
    for groups in by_base.values():
        groups.sort()
    taken: dict[str, int] = {}
    used: dict[str, int] = {}
    out = {}
    for index, (k2, k3) in enumerate(zip(k2_layers, k3_layers)):
        base = _keras2_snake(str(k2.get("class_name", "")))
        k = taken[base] = taken.get(base, -1) + 1
        target = to_snake_case(str(k3.get("class_name", "")))
        used[target] = used.get(target, -1) + 1
        target = target if used[target] == 0 else f"{target}_{used[target]}"
        if k < len(by_base.get(base, [])):
            out[by_base[base][k][1]] = (target, index)
    return out


def _with_keras3_layer_names(weights: bytes, config: dict, k3: dict) -> bytes:
    """A tf.keras 2.13-2.15 ``model.weights.h5`` with its layer groups where Keras 3 looks for them."""
    import io

    import h5py

    source, target = io.BytesIO(weights), io.BytesIO()
    with h5py.File(source, "r") as old, h5py.File(target, "w") as new:
        for name, value in old.attrs.items():
            new.attrs[name] = value
        for key in old:
            if key in ("layers", "_layer_checkpoint_dependencies"):
                _copy_layers(old[key], new.require_group("layers"), config, k3)
            else:
                old.copy(old[key], new, key)
    return target.getvalue()


def _copy_layers(old: Any, new: Any, config: dict, k3: dict) -> None:
    k2_layers = (config.get("config") or {}).get("layers") or []
    k3_layers = (k3.get("config") or {}).get("layers") or []
    if k3.get("class_name") == "Sequential" and k3_layers and k3_layers[0].get("class_name") == "InputLayer":
        k3_layers = k3_layers[1:]  # Keras 3's Sequential does not list its InputLayer
        if k2_layers and k2_layers[0].get("class_name") == "InputLayer":
            k2_layers = k2_layers[1:]
    mapping = _layer_groups(k2_layers, k3_layers, list(old))
    for name in old:
        if name not in mapping:
            continue
        target, index = mapping[name]
        inner = old[name]
        nested = ("_layer_checkpoint_dependencies" in inner or "layers" in inner) and "class_name" in k2_layers[index]
        if nested and k2_layers[index].get("class_name") in legacy_config.MODELS:
            group = new.require_group(target)
            for key in inner:
                if key in ("layers", "_layer_checkpoint_dependencies"):
                    _copy_layers(inner[key], group.require_group("layers"), k2_layers[index], k3_layers[index])
                else:
                    inner.copy(inner[key], group, key)
        else:
            old.copy(inner, new, target)


def _with_learning_rate(weights: bytes, compile_config: dict) -> bytes:
    """Keras 2's optimizer variables are ``[iterations, slots...]``; Keras 3's are ``[iteration,
    learning_rate, slots...]`` in the same slot order: insert the learning rate so they line up."""
    import io

    import h5py
    import keras
    import numpy as np

    try:  # a name ("adam") means its default learning rate, the same in Keras 2 and 3
        rate = float(keras.optimizers.get(compile_config.get("optimizer")).learning_rate.numpy())
    except (ValueError, TypeError, AttributeError):
        return weights
    source, target = io.BytesIO(weights), io.BytesIO()
    with h5py.File(source, "r") as old, h5py.File(target, "w") as new:
        for key in old:
            if key != "optimizer":
                old.copy(old[key], new, key)
        for name, value in old.attrs.items():
            new.attrs[name] = value
        if "optimizer" in old and "vars" in old["optimizer"]:
            group = new.create_group("optimizer").create_group("vars")
            stored = old["optimizer"]["vars"]
            for i in range(len(stored)):
                group[str(i + 1 if i else 0)] = np.asarray(stored[str(i)])
            group["1"] = np.asarray(rate, dtype="float32")
    return target.getvalue()


def load_keras2_zip(path: Path, *, custom_objects: dict | None = None, compile: bool = True, safe_mode: bool = True) -> Any:
    """A Keras 3 model from a Keras 2 ``.keras`` zip (weights and compile config; optimizer state when it fits)."""
    import keras

    with guard.open_zip(path) as archive:  # checked by keras_zip's guard.check_keras_zip before we get here
        config = guard.load_json(guard.read_member(archive, "config.json", source=f"{path}!config.json"),
                                 source=f"{path}!config.json", what="config.json")
        members = {name: guard.read_member(archive, name, source=f"{path}!{name}")
                   for name in archive.namelist() if name not in ("config.json", "metadata.json")}
    version = keras_version(path)
    k3 = legacy_config.to_keras3_model_config(config, custom_objects=custom_objects, safe_mode=safe_mode, keras_version=version)
    for key in ("build_config",):
        if key in config:
            k3[key] = config[key]
    compile_config = _compile_config(config.get("compile_config"))
    if compile_config:
        k3["compile_config"] = compile_config
    with tempfile.TemporaryDirectory() as tmp:
        rewritten = Path(tmp) / "translated.keras"
        with zipfile.ZipFile(rewritten, "w") as out:
            out.writestr("metadata.json", json.dumps({"keras_version": keras.__version__, "translated_from": version}))
            out.writestr("config.json", json.dumps(k3))
            for name, data in members.items():
                if name == "model.weights.h5":
                    data = _with_keras3_layer_names(data, config, k3)
                if name == "model.weights.h5" and compile_config:
                    data = _with_learning_rate(data, compile_config)
                out.writestr(name, data)
        return keras.saving.load_model(rewritten, custom_objects=custom_objects, compile=compile, safe_mode=safe_mode)
