"""What is inside a saved file: format, files, model summary, variables, optimizer,
metadata and, for SavedModel directories, the serving signatures.

Example::

    info = describe("mysavedmodel")
    info["format"], info["model"]["total_params"], list(info["signatures"])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelkeep.checkpoint import store
from modelkeep.errors import UnsupportedModelError
from modelkeep.formats import registry
from modelkeep.state import MODEL, OPTIMIZER, ModelState
from modelkeep.storage.checksums import read_manifest
from modelkeep.storage.fs import is_url
from modelkeep.tools.reading import BACKUP, detect, read_state, read_tf_checkpoint_raw


def describe(path: Path | str, *, signatures: bool = True) -> dict[str, Any]:
    """Everything ``modelkeep inspect`` shows, as plain JSON-able data (a URL: of its download)."""
    if is_url(path):
        from modelkeep.checkpoint import remote

        with remote.local_copy(path) as local:
            info = describe(local, signatures=signatures)
        info["path"] = str(path)
        return info
    path = registry.strip_tf_suffix(Path(path))
    fmt = detect(path)
    note = None
    try:
        fmt_name, state = read_state(path)
    except UnsupportedModelError as exc:
        if fmt is not registry.SAVED_MODEL:
            raise
        # a SavedModel without a Keras part still has variables and signatures to show
        fmt_name, state = fmt.name, read_tf_checkpoint_raw(path / "variables" / "variables")
        note = str(exc).splitlines()[0]
    files = [path / store.STORE_STATE, path / store.STORE_MANIFEST] if fmt_name == BACKUP else fmt.files(path)
    info: dict[str, Any] = {
        "path": str(path),
        "format": fmt_name,
        "files": [{"name": _relative(f, path), "size": f.stat().st_size} for f in files if f.exists()],
        "model": model_summary(state.model_config),
        "variables": variable_table(state),
        "optimizer": optimizer_summary(state),
        "compile": _compile_summary(state.compile_config),
        "metadata": _metadata(state, path, fmt_name),
        "signatures": None,
        "note": note,
    }
    info["total_size"] = sum(f["size"] for f in info["files"])
    if signatures and fmt is registry.SAVED_MODEL:
        info["signatures"] = saved_model_signatures(path)
    return info


def _relative(file: Path, path: Path) -> str:
    if file == path:
        return file.name
    try:
        return str(file.relative_to(path))
    except ValueError:
        return file.name


def variable_table(state: ModelState) -> list[dict[str, Any]]:
    """Name, group, shape, dtype and byte size of every variable, in saved order."""
    return [
        {
            "name": name,
            "group": name.split("/", 1)[0],
            "shape": list(array.shape),
            "dtype": str(array.dtype),
            "size": int(array.nbytes),
        }
        for name, array in state.variables.items()
    ]


def model_summary(config: dict[str, Any] | None) -> dict[str, Any] | None:
    """Layers with class, output shape and parameter count, from a saved model config.

    The architecture is rebuilt (no weights, ``safe_mode=True``: no code from the file);
    when that fails, the layers are listed from the config alone.
    """
    if not config:
        return None
    try:
        return _summary_of_model(_build(config))
    except Exception as exc:  # noqa: BLE001 - fall back to what the config says
        inner = config.get("config", {}) if isinstance(config, dict) else {}
        layers = [
            {"name": (layer.get("config") or {}).get("name", "?"), "class": layer.get("class_name", "?"),
             "output_shape": None, "params": None}
            for layer in inner.get("layers", []) if isinstance(layer, dict)
        ]
        return {"class": config.get("class_name"), "name": inner.get("name"), "layers": layers,
                "total_params": None, "trainable_params": None, "note": f"not rebuilt: {str(exc).splitlines()[0][:200]}"}


def _build(config: dict[str, Any]) -> Any:
    import keras

    return keras.saving.deserialize_keras_object(config, safe_mode=True)


def _summary_of_model(model: Any) -> dict[str, Any]:
    layers = []
    for layer in model.layers:
        try:
            shape = _shape_text(layer.output.shape)
        except (AttributeError, ValueError, RuntimeError):
            shape = None
        layers.append({"name": layer.name, "class": type(layer).__name__, "output_shape": shape,
                       "params": int(layer.count_params()) if layer.built else 0})
    trainable = sum(int(v.numpy().size) for v in model.trainable_weights)
    return {"class": type(model).__name__, "name": model.name, "layers": layers,
            "total_params": sum(int(v.numpy().size) for v in model.weights), "trainable_params": trainable}


def _shape_text(shape: Any) -> str:
    if isinstance(shape, (list, tuple)) and shape and isinstance(shape[0], (list, tuple)):
        return ", ".join(_shape_text(s) for s in shape)
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"


def optimizer_summary(state: ModelState) -> dict[str, Any] | None:
    """The optimizer's class and settings (from the compile config) and its saved state."""
    optimizer_vars = state.group(OPTIMIZER)
    config = (state.compile_config or {}).get("optimizer")
    if not optimizer_vars and not config:
        return None
    out: dict[str, Any] = {"class": None, "config": {}, "variables": len(optimizer_vars),
                           "bytes": sum(int(v.nbytes) for v in optimizer_vars.values()), "iterations": None}
    if isinstance(config, str):
        out["class"] = config
    elif isinstance(config, dict):
        out["class"] = config.get("class_name")
        settings = config.get("config") or {}
        keep = ("learning_rate", "beta_1", "beta_2", "epsilon", "momentum", "nesterov", "weight_decay", "clipnorm")
        out["config"] = {k: settings[k] for k in keep if settings.get(k) is not None}
    counters = [v for k, v in optimizer_vars.items() if k.rsplit("/", 1)[-1] in ("iteration", "iterations", "_iterations")]
    iteration = counters[0] if counters else None
    if iteration is not None and iteration.size == 1:
        out["iterations"] = int(iteration.reshape(()))
    return out


def _compile_summary(compile_config: dict[str, Any] | None) -> dict[str, Any] | None:
    if not compile_config:
        return None
    return {key: _short(compile_config.get(key)) for key in ("loss", "metrics", "loss_weights") if compile_config.get(key) is not None}


def _short(value: Any) -> Any:
    """A serialized Keras object as its class or function name."""
    if isinstance(value, dict):
        if "class_name" in value:
            config = value.get("config")
            return config if value["class_name"] == "function" and isinstance(config, str) else value["class_name"]
        return {k: _short(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_short(v) for v in value]
    return value


def _metadata(state: ModelState, path: Path, fmt_name: str) -> dict[str, Any]:
    meta = {k: v for k, v in state.metadata.items() if k != "layer_names"}
    manifest = path / store.STORE_MANIFEST if fmt_name == BACKUP else store.manifest_path(path)
    if manifest.exists():
        try:
            meta = {**meta, **read_manifest(manifest).get("metadata", {})}
        except OSError:
            pass
    return meta


def saved_model_signatures(path: Path) -> dict[str, Any]:
    """``{signature: {"inputs": {name: spec}, "outputs": {name: spec}}}`` read from
    ``saved_model.pb`` as a protobuf: nothing of the SavedModel is loaded or run."""
    from modelkeep.storage.guard import read_saved_model_proto

    proto = read_saved_model_proto(Path(path))
    meta = next((m for m in proto.meta_graphs if "serve" in m.meta_info_def.tags), proto.meta_graphs[0])
    out: dict[str, Any] = {}
    for name in sorted(meta.signature_def):
        if name.startswith("__"):  # __saved_model_init_op: an initializer, not a signature
            continue
        signature = meta.signature_def[name]
        out[name] = {"inputs": {k: _spec(v) for k, v in sorted(signature.inputs.items())},
                     "outputs": {k: _spec(v) for k, v in sorted(signature.outputs.items())}}
    return out


def _spec(info: Any) -> dict[str, Any]:
    """A ``TensorInfo`` as ``{"dtype": "float32", "shape": [None, 10]}`` (shape None if unknown rank)."""
    from tensorflow.python.framework import dtypes

    try:
        dtype = dtypes.as_dtype(info.dtype).name
    except (TypeError, ValueError):
        dtype = f"unknown({info.dtype})"
    shape = None if info.tensor_shape.unknown_rank else [None if d.size < 0 else int(d.size) for d in info.tensor_shape.dim]
    return {"dtype": dtype, "shape": shape}


__all__ = ["MODEL", "describe", "model_summary", "optimizer_summary", "saved_model_signatures", "variable_table"]
