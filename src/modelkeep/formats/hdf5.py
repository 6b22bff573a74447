"""HDF5 (``.h5``, ``.hdf5``) in the Keras 2 layout: weights alone, or the whole model.

Layout (what Keras's legacy H5 loader reads):

* whole model: root attrs ``model_config``, ``training_config``, ``keras_version``,
  ``backend``; group ``model_weights`` as below; group ``optimizer_weights`` with attr
  ``weight_names``.
* weights: attrs ``layer_names`` (layers with weights, in order); one group per layer
  with attr ``weight_names`` and one dataset per weight.

modelkeep adds root attr ``modelkeep`` (its JSON header: Keras 3 config, compile config,
metadata, variable order) so its own files round-trip exactly; files without it are
read the way Keras 2 wrote them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from modelkeep.errors import CorruptCheckpointError
from modelkeep.formats import legacy_config
from modelkeep.formats.base import Format
from modelkeep.own_state import restore_own
from modelkeep.state import LAYERS, MODEL, OPTIMIZER, RNG, ModelState
from modelkeep.storage.commit import atomic_path

HEADER_ATTR = "modelkeep"


def _layer_of(key: str) -> tuple[str, str]:
    """``layer_with_weights-0/kernel`` -> (``layer_with_weights-0``, ``kernel``)."""
    layer, _, rest = key.partition("/")
    return layer, rest or layer


def _write_weight_groups(
    group: Any, weights: dict[str, np.ndarray], layer_names: dict[str, str], trainable: dict[str, bool]
) -> dict[str, str]:
    """Write one group per layer; return ``{weight key: dataset path}``.

    Within a layer, trainable weights come first, as Keras 2 listed them
    (``layer.trainable_weights + layer.non_trainable_weights``), so tf-keras loads the file.
    """
    by_layer: dict[str, list[tuple[str, str, np.ndarray]]] = {}
    for key, array in weights.items():
        layer, rest = _layer_of(key)
        by_layer.setdefault(layer, []).append((key, rest, array))
    names, where = [], {}
    for structural, items in by_layer.items():
        items = [i for i in items if trainable.get(i[0], True)] + [i for i in items if not trainable.get(i[0], True)]
        name = layer_names.get(structural, structural)
        names.append(name)
        layer_group = group.create_group(name)
        weight_names = [f"{name}/{rest}:0" for _, rest, _ in items]
        layer_group.attrs["weight_names"] = [w.encode() for w in weight_names]
        for weight_name, (key, _, array) in zip(weight_names, items):
            _dataset(layer_group, weight_name, array)
            where[key] = f"{layer_group.name}/{weight_name}"
    group.attrs["layer_names"] = [n.encode() for n in names]
    return where


_NON_TRAINABLE_LEAVES = ("moving_mean", "moving_variance")


def _trainability(weights: dict[str, np.ndarray], model: Any) -> dict[str, bool]:
    if model is not None:
        from modelkeep.capture import model_variable_keys

        return {k: bool(v.trainable) for k, v in model_variable_keys(model)}
    return {k: not k.endswith(_NON_TRAINABLE_LEAVES) for k in weights}


def _read_weight_groups(group: Any, path: Path) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    index = 0
    for raw in group.attrs.get("layer_names", []):
        name = raw.decode() if isinstance(raw, bytes) else str(raw)
        layer_group = group[name]
        weight_names = [w.decode() if isinstance(w, bytes) else str(w) for w in layer_group.attrs.get("weight_names", [])]
        if not weight_names:
            continue
        for weight_name in weight_names:
            relative = weight_name.split("/", 1)[1] if "/" in weight_name else weight_name
            relative = relative.removesuffix(":0")
            try:
                out[f"layer_with_weights-{index}/{relative}"] = np.asarray(layer_group[weight_name])
            except KeyError as exc:
                raise CorruptCheckpointError(
                    f"load: {path} lists weight '{weight_name}' of layer '{name}' but does not hold it."
                ) from exc
        index += 1
    return out


def _dataset(group: Any, name: str, array: np.ndarray) -> None:
    """One weight as a dataset with HDF5's Fletcher-32 filter, so a flipped bit fails its read.

    (Scalars and empty arrays cannot be chunked, so they go without.)
    """
    group.create_dataset(name, data=array, fletcher32=array.ndim > 0 and array.size > 0)


def _open(path: Path) -> Any:
    """The file through ``storage.guard.open_hdf5``: links, layouts and sizes checked first."""
    from modelkeep.storage.guard import open_hdf5

    return open_hdf5(path)


def _read_by_name(f: Any, doc: dict, path: Path) -> ModelState:
    variables = {}
    for key in doc["order"]:
        name = doc["datasets"][key]
        try:
            variables[key] = np.asarray(f[name])
        except KeyError as exc:
            raise CorruptCheckpointError(f"load: {path} lists '{key}' but does not hold it; the file is damaged.") from exc
        except OSError as exc:  # h5py: a chunk that fails its Fletcher-32 checksum or is cut short
            raise CorruptCheckpointError(
                f"load: dataset '{name}' of {path} fails its checksum or is truncated ({exc}); the file "
                "is corrupt. Use another copy or an older checkpoint."
            ) from exc
    return ModelState(variables, doc.get("model_config"), doc.get("compile_config"), doc.get("metadata") or {})


def _fits_model(f: Any, model: Any, path: Path) -> None:
    """Refuse a file whose numeric weight datasets declare far more bytes than the model's weights
    (twice the model, for float64 files, plus 16 MiB for layers' own state such as integer lookup
    tables), before reading any of them. String datasets are not counted."""
    import h5py

    from modelkeep.errors import IncompatibleModelError

    weights = list(getattr(model, "weights", None) or [])
    if not weights:
        return
    expected = sum(int(np.prod(w.shape)) * np.dtype(str(getattr(w, "dtype", "float32"))).itemsize for w in weights)
    group = f["model_weights"] if "model_weights" in f else f
    declared = 0

    def visit(name: str, item: Any) -> None:
        nonlocal declared
        if isinstance(item, h5py.Dataset) and item.dtype.kind in "biufc" and not name.startswith(("optimizer", "modelkeep_rng")):
            declared += int(item.size) * item.dtype.itemsize

    group.visititems(visit)  # structure only: hard links, checked by the guard
    if declared > 2 * expected + (16 << 20):
        raise IncompatibleModelError(
            f"load_weights: {path} declares {declared} bytes of weights but the model's weights take {expected}. "
            "The file was saved from a different (larger) architecture; nothing was read."
        )


def _header(raw: Any, path: Path) -> dict | None:
    from modelkeep.storage.guard import load_json

    if raw is None:
        return None
    return load_json(raw.decode() if isinstance(raw, bytes) else str(raw), source=path, what="modelkeep header attribute")


class HDF5Format(Format):
    name = "HDF5"
    holds = ("weights", "model")
    keeps_optimizer = True

    def write(self, state: ModelState, path: Path, *, model: Any = None) -> list[Path]:
        import h5py
        import keras

        layer_names = state.metadata.get("layer_names", {})
        whole_model = state.model_config is not None and (state.compile_config is not None or state.has_optimizer)
        with atomic_path(path) as tmp:
            with h5py.File(tmp, "w") as f:
                order = [k for k in state.variables if k.startswith((MODEL + "/", OPTIMIZER + "/", RNG + "/", LAYERS + "/"))]
                f.attrs["keras_version"] = keras.__version__
                f.attrs["backend"] = "tensorflow"
                if whole_model:
                    # Keras 2's form, so tf-keras's load_model reads the file too
                    f.attrs["model_config"] = json.dumps(legacy_config.to_keras2_model_config(state.model_config))
                    if state.compile_config:
                        f.attrs["training_config"] = json.dumps(legacy_config.to_keras2_training_config(state.compile_config))
                    weights_group = f.create_group("model_weights")
                    # tf-keras reads the version from this group; without it, it assumes Keras 1
                    weights_group.attrs["keras_version"] = keras.__version__
                    weights_group.attrs["backend"] = "tensorflow"
                else:
                    weights_group = f
                model_weights = state.group(MODEL)
                where = _write_weight_groups(weights_group, model_weights, layer_names, _trainability(model_weights, model))
                datasets = {f"{MODEL}/{k}": v for k, v in where.items()}
                optimizer = state.group(OPTIMIZER)
                if optimizer:
                    opt_group = f.create_group("optimizer_weights")
                    # tf-keras sets these by position: the iteration count, then the slots
                    listed = [n for n in optimizer if n == "iteration" or n.startswith("slots/")]
                    opt_group.attrs["weight_names"] = [n.encode() for n in listed]
                    for name, array in optimizer.items():
                        _dataset(opt_group, name, array)
                        datasets[f"{OPTIMIZER}/{name}"] = f"{opt_group.name}/{name}"
                rng = state.group(RNG)
                if rng:
                    rng_group = f.create_group("modelkeep_rng")
                    rng_group.attrs["weight_names"] = [n.encode() for n in rng]
                    for name, array in rng.items():
                        _dataset(rng_group, name, array)
                        datasets[f"{RNG}/{name}"] = f"{rng_group.name}/{name}"
                own = state.group(LAYERS)
                if own:  # a layer's own state (lookup tables, ...): ``modelkeep.own_state``
                    own_group = f.create_group("modelkeep_layers")
                    for name, array in own.items():
                        _dataset(own_group, name, array)
                        datasets[f"{LAYERS}/{name}"] = f"{own_group.name}/{name}"
                f.attrs[HEADER_ATTR] = json.dumps({**json.loads(state.header_json()), "order": order, "datasets": datasets})
        return [path]

    def load_weights(self, model: Any, path: Path) -> None:
        self.require(path)
        with _open(path) as f:
            _fits_model(f, model, path)  # declared sizes against the model, before any dataset is read
            if f.attrs.get(HEADER_ATTR) is None:  # written by Keras itself: match by structure
                from modelkeep.formats import legacy

                legacy.load_h5_into(model, f, str(path), optimizer=False)
                restore_own(model, {}, None, source=str(path))  # Normalization: from its variables
                return
        super().load_weights(model, path)

    def load_model(self, path: Path, **kwargs: Any) -> Any:
        self.require(path)
        with _open(path) as f:
            if f.attrs.get(HEADER_ATTR) is None:
                from modelkeep.formats import legacy

                model = legacy.load_h5_model(path, f, **kwargs)
                restore_own(model, {}, None, source=str(path))
                return model
        return super().load_model(path, **kwargs)

    def read(self, path: Path) -> ModelState:
        self.require(path)
        with _open(path) as f:
            header = f.attrs.get(HEADER_ATTR)
            doc = _header(header, path)
            if doc is not None and "datasets" in doc:
                return _read_by_name(f, doc, path)
            weights_group = f["model_weights"] if "model_weights" in f else f
            weights = _read_weight_groups(weights_group, path)
            variables = {f"{MODEL}/{k}": v for k, v in weights.items()}
            for group_name, prefix in (("optimizer_weights", OPTIMIZER), ("modelkeep_rng", RNG)):
                if group_name not in f:
                    continue
                group = f[group_name]
                for raw in group.attrs.get("weight_names", []):
                    name = raw.decode() if isinstance(raw, bytes) else str(raw)
                    variables[f"{prefix}/{name}"] = np.asarray(group[name])
            if header is None:
                from modelkeep.formats import legacy

                return legacy.read_keras2_h5(path, f, variables)
        doc = _header(header, path)
        order = doc.pop("order", list(variables))
        by_position = dict(zip(order, variables.values())) if len(order) == len(variables) else variables
        return ModelState(by_position, doc.get("model_config"), doc.get("compile_config"), doc.get("metadata") or {})
