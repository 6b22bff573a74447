"""SavedModel directories: ``saved_model.pb``, ``variables/``, ``assets/``, plus the Keras part.

TensorFlow's part is written by Keras's own ``model.export`` (a ``serving_default``
signature, what TensorFlow Serving loads). modelkeep's part, beside it, is what rebuilds
the full Keras model: ``modelkeep.json`` (config, compile config, metadata, and where each
model variable sits in ``variables/``) and ``modelkeep_optimizer.safetensors`` (the optimizer
and seed-generator state). The model's weights are stored once, in ``variables/``.

Example::

    SavedModelFormat().save_model(model, Path("mysavedmodel"))
    tf.saved_model.load("mysavedmodel").signatures["serving_default"]
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelkeep.capture import build_model, capture, model_variable_keys
from modelkeep.errors import GraphOnlyModelError, UnsupportedModelError
from modelkeep.formats.base import Format
from modelkeep.formats.safetensors import SafetensorsFormat
from modelkeep.state import LAYERS, MODEL, OPTIMIZER, RNG, ModelState
from modelkeep.storage import guard
from modelkeep.storage.commit import atomic_path
from modelkeep.storage.phases import phase

HEADER_FILE = "modelkeep.json"
OPTIMIZER_FILE = "modelkeep_optimizer.safetensors"
LEGACY_METADATA = "keras_metadata.pb"


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        count = seen.get(name, 0)
        seen[name] = count + 1
        out.append(name if count == 0 else f"{name}_{count}")
    return out


def _keys_of(struct: Any, tensors: list[Any], layer_name: Any) -> list[str]:
    if isinstance(struct, dict):
        by_id = {id(t): k for k, t in struct.items()}
        if all(id(t) in by_id for t in tensors):
            return [by_id[id(t)] for t in tensors]
    return _unique([layer_name(t) for t in tensors])


def signature_keys(model: Any) -> tuple[list[str], list[str]]:
    """The SavedModel signature keys of a Keras model's inputs and outputs, in ``model.inputs``
    / ``model.outputs`` order: dict keys for dict-structured models, else the input layers'
    and output layers' names (made unique), as tf.keras 2 exports named them.

    Example::

        signature_keys(model)      # (['input_layer'], ['dense_1'])
    """

    def layer_name(t: Any) -> str:
        history = getattr(t, "_keras_history", None)
        op = getattr(history, "operation", None) if history is not None else None
        return getattr(op, "name", None) or t.name.split(":")[0]

    inputs = _keys_of(getattr(model, "_inputs_struct", None), list(model.inputs), layer_name)
    outputs = _keys_of(getattr(model, "_outputs_struct", None), list(model.outputs), layer_name)
    return inputs, outputs


def _export(model: Any, directory: Path) -> Any:
    """TensorFlow's part: a SavedModel whose ``serving_default`` calls the model, its inputs
    and outputs keyed by the Keras names (``signature_keys``), as TF Serving will show them."""
    import keras
    import tensorflow as tf

    archive = keras.export.ExportArchive()
    archive.track(model)
    in_keys, out_keys = signature_keys(model)
    specs = [tf.TensorSpec(tuple(t.shape), t.dtype, name=k) for k, t in zip(in_keys, model.inputs)]
    keyed = isinstance(getattr(model, "_inputs_struct", None), dict)

    def serve(*args: Any) -> Any:
        if keyed:
            out = model(dict(zip(in_keys, args)), training=False)
        else:
            out = model(list(args) if len(args) > 1 else args[0], training=False)
        if isinstance(out, dict):
            return {k: out[k] for k in out_keys}
        flat = list(out) if isinstance(out, (list, tuple)) else [out]
        return dict(zip(out_keys, flat))

    archive.add_endpoint("serve", serve, input_signature=specs)
    archive.write_out(str(directory), verbose=False)
    return archive


def has_keras_part(path: Path) -> bool:
    """A SavedModel from which a Keras model can be rebuilt (modelkeep's or tf-keras's), as
    opposed to a graph-only export (``tf.saved_model.save`` of a ``tf.Module``, a TF1 graph)."""
    return (path / HEADER_FILE).exists() or _keras2_part(path)


def _keras2_part(path: Path) -> bool:
    """A tf-keras SavedModel: ``keras_metadata.pb``, or (TF 2.0-2.4) Keras metadata in ``saved_model.pb``."""
    if (path / LEGACY_METADATA).exists():
        return True
    from modelkeep.formats import legacy

    return (path / "saved_model.pb").exists() and legacy.metadata_in_graph(path) is not None


def _positions(model: Any) -> list[int | None]:
    """Where each model weight (``model_variable_keys`` order) sits in ``model.variables``."""
    index = {id(v): i for i, v in enumerate(model.variables)}
    return [index.get(id(v)) for _, v in model_variable_keys(model)]


def _write_keras_part(state: ModelState, directory: Path, positions: list[int | None]) -> None:
    header = json.loads(state.header_json())
    header["order"] = list(state.group(MODEL))
    header["variables_index"] = positions
    (directory / HEADER_FILE).write_text(json.dumps(header))
    training_state = {k: v for k, v in state.variables.items() if k.startswith((OPTIMIZER + "/", RNG + "/", LAYERS + "/"))}
    if training_state:
        SafetensorsFormat().write(ModelState(training_state), directory / OPTIMIZER_FILE)


@dataclass
class SavedModelTemplate:
    """The traced part of one model's SavedModel, made once and reused for every later save.

    Exporting a SavedModel traces the model's call into a graph (seconds, on the training
    thread) and writes ``saved_model.pb``; between two checkpoints of one training run only
    the variable values change. ``trace`` exports once into a scratch directory and keeps
    ``saved_model.pb`` and the key of every value in ``variables/``; ``write`` then makes a
    SavedModel from a captured ``ModelState`` alone (any thread, no Keras call): the same
    graph, the values written with TensorFlow's ``SaveV2`` under the same keys, modelkeep's
    Keras part beside them. (``fingerprint.pb``, which TensorFlow only reads for logging, is
    not written.)

    Example::

        template = SavedModelTemplate.trace(model, Path("run/.scratch"))   # None: not reusable
        template.write(capture(model), Path("run/c-2"))
    """

    saved_model_pb: bytes
    object_graph: bytes
    #: (checkpoint key in variables/, state key of its value)
    keys: list[tuple[str, str]]
    #: model_variable_keys order -> index in model.variables (modelkeep.json's variables_index)
    positions: list[int | None]
    #: (path, shape, dtype) of every model variable: a model that differs needs a new trace
    signature: tuple[tuple[str, tuple[int, ...], str], ...]

    @staticmethod
    def signature_of(model: Any) -> tuple[tuple[str, tuple[int, ...], str], ...]:
        return tuple((v.path, tuple(v.shape), str(v.dtype)) for v in model.variables)

    def fits(self, model: Any) -> bool:
        """True when ``model`` still has the variables this template was traced with."""
        return self.signature == self.signature_of(model)

    @classmethod
    def trace(cls, model: Any, scratch: Path) -> SavedModelTemplate | None:
        """Export ``model`` once into ``scratch`` (removed after), keep what every save reuses.
        None when a value in ``variables/`` is not a model variable (a lookup table, ...):
        such a model is exported whole at every save."""
        import shutil

        import tensorflow as tf

        from modelkeep.capture import rng_variable_keys
        from modelkeep.formats.tf_checkpoint import OBJECT_GRAPH_KEY

        if not getattr(model, "inputs", None):
            return None
        state_key = {id(v): f"{MODEL}/{k}" for k, v in model_variable_keys(model)}
        state_key.update({id(v): f"{RNG}/{k}" for k, v in rng_variable_keys(model)})
        variables = list(model.variables)
        try:
            archive = _export(model, scratch)
            if any((scratch / "assets").iterdir()):
                return None
            listed = {"variables": variables, "_all_variables": list(getattr(archive._tf_trackable, "_all_variables", []))}
            by_tf_variable = {id(getattr(v, "value", v)): v for v in variables}
            reader = tf.train.load_checkpoint(str(scratch / "variables" / "variables"))
            keys = []
            for key in sorted(reader.get_variable_to_shape_map()):
                if key == OBJECT_GRAPH_KEY:
                    continue
                group, _, rest = key.partition("/")
                number, _, tail = rest.partition("/")
                if tail != ".ATTRIBUTES/VARIABLE_VALUE" or group not in listed or not number.isdigit():
                    return None
                found = listed[group][int(number)] if int(number) < len(listed[group]) else None
                variable = by_tf_variable.get(id(found), found) if group == "_all_variables" else found
                if variable is None or id(variable) not in state_key:
                    return None
                keys.append((key, state_key[id(variable)]))
            graph = reader.get_tensor(OBJECT_GRAPH_KEY)
            pb = (scratch / "saved_model.pb").read_bytes()
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return cls(pb, graph, keys, _positions(model), cls.signature_of(model))

    def write(self, state: ModelState, path: Path) -> list[Path]:
        """A SavedModel at ``path`` (committed atomically) holding ``state``'s values."""
        from modelkeep.formats.tf_checkpoint import OBJECT_GRAPH_KEY, save_tensors

        missing = [k for _, k in self.keys if k not in state.variables]
        if missing:
            raise UnsupportedModelError(
                f"save_model: {path}: the state lacks {missing[0]!r}, which this SavedModel template "
                "needs; capture the whole model (include_optimizer=True)."
            )
        with atomic_path(path, keep_suffix="") as tmp:
            (tmp / "variables").mkdir(parents=True)
            (tmp / "assets").mkdir()
            (tmp / "saved_model.pb").write_bytes(self.saved_model_pb)
            named: dict[str, Any] = {key: state.variables[k] for key, k in self.keys}
            named[OBJECT_GRAPH_KEY] = np.array(self.object_graph, dtype=object)
            save_tensors(tmp / "variables" / "variables", named)
            with phase("SavedModel Keras part (modelkeep.json, optimizer)"):
                _write_keras_part(state, tmp, self.positions)
        return SavedModelFormat().files(path)


class SavedModelFormat(Format):
    name = "SavedModel"
    holds = ("model",)
    keeps_optimizer = True

    def files(self, path: Path) -> list[Path]:
        return sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]

    def exists(self, path: Path) -> bool:
        return (path / "saved_model.pb").exists()

    def write(self, state: ModelState, path: Path, *, model: Any = None) -> list[Path]:
        if model is None:
            model = build_model(state)
        if not getattr(model, "inputs", None):
            raise UnsupportedModelError(
                f"save_model: {path} would be a SavedModel, but the model has no known inputs "
                "(a subclassed model that was never called). Call it on data once, or save "
                "to a .keras file."
            )
        with atomic_path(path, keep_suffix="") as tmp:
            _export(model, tmp)
            _write_keras_part(state, tmp, _positions(model))
        return self.files(path)

    def save_model(self, model: Any, path: Path, *, include_optimizer: bool = True) -> list[Path]:
        return self.write(capture(model, include_optimizer=include_optimizer), path, model=model)

    def load_model(self, path: Path, **kwargs: Any) -> Any:
        self.require(path)
        guard.check_tree(path)  # no symlink leaving the directory, no device or FIFO inside
        if not (path / HEADER_FILE).exists() and _keras2_part(path):
            from modelkeep.formats import legacy

            # built once, with the caller's custom_objects, optimizer state included
            from modelkeep.own_state import restore_own

            model = legacy.load_savedmodel(path, **kwargs)
            restore_own(model, {}, None, source=str(path))  # Normalization: from its variables
            return model
        if self.exists(path) and not (path / HEADER_FILE).exists():
            from modelkeep.formats import legacy_signature

            # a tf.Module export or a TF1 graph: no Keras layers, but a serving signature; its graph
            # runs, so it is scanned for file-system/Python ops first (run anyway with safe_mode=False)
            return legacy_signature.inference_model(path, allow_unsafe_ops=kwargs.get("safe_mode", True) is False)
        return super().load_model(path, **kwargs)

    def read(self, path: Path) -> ModelState:
        self.require(path)
        guard.check_tree(path)
        header_path = path / HEADER_FILE
        if not header_path.exists():
            from modelkeep.formats import legacy

            if _keras2_part(path):
                return legacy.read_tf_keras_savedmodel(path)
            raise GraphOnlyModelError(
                f"load_model: {path} is a SavedModel without a Keras part (no {HEADER_FILE} or "
                f"{LEGACY_METADATA}), so no Keras model can be rebuilt from it. It can still serve "
                "predictions: `modelkeep serve`, tf.saved_model.load(path), or "
                "keras.layers.TFSMLayer(path) for inference inside Keras."
            )
        header = guard.read_json(header_path, what=HEADER_FILE)
        reader = guard.open_tf_checkpoint(path / "variables" / "variables", source=path)
        variables = {}
        for key, position in zip(header["order"], header["variables_index"]):
            variables[f"{MODEL}/{key}"] = np.asarray(reader.get_tensor(f"variables/{position}/.ATTRIBUTES/VARIABLE_VALUE"))
        if (path / OPTIMIZER_FILE).exists():
            variables.update(SafetensorsFormat().read(path / OPTIMIZER_FILE).variables)
        return ModelState(variables, header.get("model_config"), header.get("compile_config"), header.get("metadata") or {})
