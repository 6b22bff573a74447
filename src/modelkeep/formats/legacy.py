"""Files written by TF2-era Keras (today's ``tf-keras``): TF checkpoints, SavedModels, HDF5.

Their variables are named by Keras 2's object graph
(``layer_with_weights-0/cell/kernel/.ATTRIBUTES/VARIABLE_VALUE``, optimizer state under
``optimizer/``) or by Keras 2 weight names (``dense/kernel:0``), and their configs are Keras 2
configs. This module matches them to a Keras 3 model by structure: the checkpoint's
``_CHECKPOINTABLE_OBJECT_GRAPH`` is walked from the root along the model's own structure
(``layer_with_weights-N``, ``cell``, ``forward_layer``), never by sorting key strings.

Example::

    load_checkpoint_into(model, Path("saved_modelname"), tf.train.load_checkpoint(...))
    model = load_savedmodel(Path("mysavedmodel"))     # a full Keras 3 model
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelkeep.capture import model_variable_keys, optimizer_variable_keys
from modelkeep.errors import CorruptCheckpointError, IncompatibleModelError, ModelkeepError, UnsupportedModelError
from modelkeep.formats import legacy_config
from modelkeep.state import MODEL, OPTIMIZER, ModelState
from modelkeep.storage import guard, limits

VALUE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
METADATA_FILE = "keras_metadata.pb"
#: Keras 2 optimizer slot names (new optimizers' list attributes, legacy optimizers' slots,
#: and HDF5 weight-name parts) -> Keras 3 slot names
SLOT_NAMES = {
    "m": "momentum", "momentum": "momentum", "momentums": "momentum",
    "v": "velocity", "velocity": "velocity", "velocities": "velocity", "rms": "velocity",
    "vhat": "velocity_hat", "velocity_hats": "velocity_hat",
    "mg": "average_gradient", "average_gradient": "average_gradient", "average_gradients": "average_gradient",
    "accumulator": "accumulator", "accumulators": "accumulator",
}
#: object-graph children of a Keras 2 model that hold no model variables
_NOT_MODEL = ("optimizer", "keras_api", "save_counter", "train_function", "train_tf_function")
_ITERATIONS = ("_iterations", "iter", "iterations", "iteration")
_LEARNING_RATE = ("_learning_rate", "learning_rate", "lr")


# --------------------------------------------------------------------------- object graph
@dataclass
class ObjectGraph:
    """The ``TrackableObjectGraph`` of a TF checkpoint, with lookups by node."""

    proto: Any

    @classmethod
    def of(cls, reader: Any, path: Path) -> ObjectGraph:
        from modelkeep.storage.tf_protos import parse  # TensorFlow's message, without importing TensorFlow

        try:
            graph = parse("TrackableObjectGraph", reader.get_tensor(OBJECT_GRAPH_KEY))
        except Exception as exc:  # noqa: BLE001 - any failure means the same to the user
            raise CorruptCheckpointError(
                f"load: the TF checkpoint {path} has no readable object graph ({exc}). It was not "
                "written by tf.train.Checkpoint or Keras; modelkeep cannot tell which tensor is which."
            ) from exc
        return cls(graph)

    def child(self, node: int, name: str) -> int | None:
        for ref in self.proto.nodes[node].children:
            if ref.local_name == name:
                return ref.node_id
        return None

    def children(self, node: int) -> list[tuple[str, int]]:
        return [(ref.local_name, ref.node_id) for ref in self.proto.nodes[node].children]

    def key(self, node: int) -> str | None:
        for attribute in self.proto.nodes[node].attributes:
            if attribute.name == "VARIABLE_VALUE":
                return attribute.checkpoint_key
        return None

    def leaves(self, node: int, skip: tuple[str, ...] = ("optimizer",)) -> list[tuple[str, int]]:
        """Variables under ``node``, depth first in tracking order, each once."""
        seen, out = {node}, []

        def visit(current: int) -> None:
            for name, child in self.children(current):
                if child in seen or name in skip:
                    continue
                seen.add(child)
                if self.key(child) is not None:
                    out.append((name, child))
                visit(child)

        visit(node)
        return out


#: Keras 3 weight names -> what Keras 2 called the same weight (DepthwiseConv2D's kernel)
WEIGHT_ALIASES = {"kernel": ("depthwise_kernel",)}


def _path_candidates(path: str) -> list[str]:
    """A Keras 3 variable path and its Keras 2 spellings (``x/kernel`` -> ``x/depthwise_kernel``)."""
    head, _, leaf = path.rpartition("/")
    return [path] + [f"{head}/{alias}" if head else alias for alias in WEIGHT_ALIASES.get(leaf, ())]


def _segment_candidates(segment: str) -> list[str]:
    """Keras 3 names of a variable path segment -> Keras 2 object-graph names to try."""
    out = [segment, *WEIGHT_ALIASES.get(segment, ())]
    if segment.endswith("_cell"):
        out.append("cell")
    if segment.startswith("forward_"):
        out.append("forward_layer")
    if segment.startswith("backward_"):
        out.append("backward_layer")
    return out


def _weighted_child(graph: ObjectGraph, node: int, index: int) -> int | None:
    """The ``index``-th ``layer_with_weights-N`` child of ``node`` that holds variables.

    Keras 2 numbers every layer whose ``weights`` list is not empty; an adapted
    ``TextVectorization``/``StringLookup`` lists its lookup table there (no variable), Keras 3
    does not count it. Skipping the children without variables numbers them as Keras 3 does.
    """
    cache = graph.__dict__.setdefault("_weighted", {})
    if node not in cache:
        numbered = sorted((int(n.rsplit("-", 1)[1]), c) for n, c in graph.children(node)
                          if n.startswith("layer_with_weights-") and n.rsplit("-", 1)[1].isdigit())
        cache[node] = [c for _, c in numbered if graph.leaves(c, skip=_NOT_MODEL)]
    children = cache[node]
    return children[index] if index < len(children) else None


def _resolve(graph: ObjectGraph, root: int, key: str) -> tuple[int | None, int]:
    """Walk ``key``'s segments from ``root``; (variable node or None, deepest node reached)."""
    node = root
    for segment in key.split("/"):
        number = segment.rsplit("-", 1)[1] if segment.startswith("layer_with_weights-") else ""
        if number.isdigit():
            nxt = _weighted_child(graph, node, int(number))
            if nxt is not None:
                node = nxt
                continue
        nxt = next((c for c in (graph.child(node, s) for s in _segment_candidates(segment)) if c is not None), None)
        if nxt is None:
            return None, node
        node = nxt
    return (node if graph.key(node) is not None else None), node


def match_model_variables(model: Any, graph: ObjectGraph, shapes: dict, source: str, root: int = 0) -> list[tuple[str, Any, str]]:
    """``(modelkeep key, variable, checkpoint key)`` for every model variable."""
    pairs = model_variable_keys(model)
    used: set[int] = set()
    resolved: dict[str, int] = {}
    deepest: dict[str, int] = {}
    for key, variable in pairs:
        node, reached = _resolve(graph, root, key)
        if node is not None and node not in used and _shape_ok(shapes, graph.key(node), variable):
            resolved[key] = node
            used.add(node)
        else:
            deepest[key] = reached
    for key, variable in pairs:  # fallback: same leaf name and shape, in tracking order
        if key in resolved:
            continue
        leaf = key.rsplit("/", 1)[-1]
        for name, node in graph.leaves(deepest[key], skip=_NOT_MODEL):
            if node not in used and name == leaf and _shape_ok(shapes, graph.key(node), variable):
                resolved[key] = node
                used.add(node)
                break
        else:
            _raise_unmatched(key, variable, graph, deepest[key], shapes, source)
    leftover = [graph.key(n) for _, n in graph.leaves(root, skip=_NOT_MODEL) if n not in used and _is_model_leaf(graph.key(n))]
    if leftover:
        raise IncompatibleModelError(
            f"load: {source} holds {len(leftover)} variable(s) the model has no place for, e.g. "
            f"'{leftover[0].removesuffix(VALUE_SUFFIX)}'. The file was saved from a different "
            "architecture; build the model it was saved from."
        )
    return [(key, variable, graph.key(resolved[key])) for key, variable in pairs]


def _is_model_leaf(key: str | None) -> bool:
    return bool(key) and not key.startswith(("optimizer/", "save_counter", "_")) and ".OPTIMIZER_SLOT" not in key


def _shape_ok(shapes: dict, ckpt_key: str | None, variable: Any) -> bool:
    return ckpt_key in shapes and tuple(shapes[ckpt_key]) == tuple(variable.shape)


def _raise_unmatched(key: str, variable: Any, graph: ObjectGraph, near: int, shapes: dict, source: str) -> None:
    found = [(graph.key(n), tuple(shapes.get(graph.key(n), ()))) for _, n in graph.leaves(near)]
    same_name = [f"'{k.removesuffix(VALUE_SUFFIX)}' {s}" for k, s in found if k.removesuffix(VALUE_SUFFIX).endswith(key.rsplit("/", 1)[-1])]
    seen = f" Nearest in the file: {', '.join(same_name[:3])}." if same_name else ""
    raise IncompatibleModelError(
        f"load: variable '{variable.path}' (shape {tuple(variable.shape)}) has no counterpart in "
        f"{source}.{seen} The file was saved from a different architecture; build the model it "
        "was saved from."
    )


# --------------------------------------------------------------------------- optimizer
def _optimizer_node(graph: ObjectGraph, root: int) -> int | None:
    return graph.child(root, "optimizer")


def match_optimizer(model: Any, graph: ObjectGraph, shapes: dict, matched: list[tuple[str, Any, str]], root: int = 0) -> dict[str, str]:
    """``{modelkeep optimizer key: checkpoint key}``; empty when the file has no optimizer."""
    opt = _optimizer_node(graph, root)
    if opt is None:
        return {}
    out: dict[str, str] = {}
    for name, node in graph.children(opt):
        if name in _ITERATIONS and graph.key(node):
            out["iteration"] = graph.key(node)
        elif name in _LEARNING_RATE and graph.key(node):
            out["learning_rate"] = graph.key(node)
    model_key_of = {id(v): k for k, v, _ in matched}
    trainable = [model_key_of[id(v)] for v in model.trainable_variables if id(v) in model_key_of]
    for name, node in graph.children(opt):  # new optimizers: one list per slot kind
        slot = SLOT_NAMES.get(name.lstrip("_"))
        if slot is None:
            continue
        items = graph.children(node)
        if len(items) != len(trainable):
            continue
        for (_, item), model_key in zip(items, trainable):
            if graph.key(item):
                out[f"slots/{model_key}/{slot}"] = graph.key(item)
    node_of = {ckpt: k for k, _, ckpt in matched}
    for slot_ref in graph.proto.nodes[opt].slot_variables:  # legacy optimizers
        original = graph.key(slot_ref.original_variable_node_id)
        slot = SLOT_NAMES.get(slot_ref.slot_name)
        if original in node_of and slot and graph.key(slot_ref.slot_variable_node_id):
            out[f"slots/{node_of[original]}/{slot}"] = graph.key(slot_ref.slot_variable_node_id)
    return out


def _assign_optimizer(model: Any, values: dict[str, np.ndarray], source: str, *, problem: str | None = None) -> None:
    """Assign Keras-3-keyed optimizer values; warn (not fail) when the optimizers differ."""
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and problem:
        warnings.warn(
            f"load: the optimizer state in {source} was not restored: {problem}. The model's "
            f"{type(optimizer).__name__} starts afresh (iterations 0, empty slots); the weights are restored.",
            stacklevel=3,
        )
        return
    if optimizer is None or not values:
        return
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    pairs = dict(optimizer_variable_keys(model))
    slots = [k for k in pairs if k.startswith("slots/")]
    missing = [k for k in slots if k not in values]
    problems = [k for k in values if k in pairs and tuple(pairs[k].shape) != tuple(np.shape(values[k]))]
    if missing or problems:
        what = (f"it has no value for '{missing[0]}'" if missing else
                f"'{problems[0]}' has shape {tuple(np.shape(values[problems[0]]))}, the model's {tuple(pairs[problems[0]].shape)}")
        warnings.warn(
            f"load: the optimizer state in {source} does not fit the model's {type(optimizer).__name__}: "
            f"{what} ({len(missing)} slot(s) missing, {len(problems)} of another shape). Nothing of it was "
            "restored (iterations 0, empty slots); the weights are. If you compiled the model yourself, "
            "compile it with the optimizer the file was saved with.",
            stacklevel=3,
        )
        return
    for key, variable in pairs.items():
        if key in values:
            variable.assign(np.asarray(values[key]).astype(variable.dtype))


# --------------------------------------------------------------------------- checkpoints
def load_checkpoint_into(model: Any, path: Path, reader: Any, *, optimizer: bool = True, root: int = 0) -> None:
    """Load a tf-keras TF checkpoint (``save_weights`` or SavedModel ``variables/``) into ``model``."""
    graph = ObjectGraph.of(reader, path)
    shapes = reader.get_variable_to_shape_map()
    matched = match_model_variables(model, graph, shapes, str(path), root)
    for _, variable, ckpt_key in matched:
        variable.assign(reader.get_tensor(ckpt_key))
    if optimizer and getattr(model, "optimizer", None) is not None:
        opt_keys = match_optimizer(model, graph, shapes, matched, root)
        if any(k.startswith("slots/") for k in opt_keys) or "iteration" in opt_keys:
            _assign_optimizer(model, {k: reader.get_tensor(c) for k, c in opt_keys.items()}, str(path))


def read_tf_keras_checkpoint(path: Path, reader: Any) -> ModelState:
    """A tf-keras TF checkpoint as a ``ModelState`` (Keras 2 paths, object-graph order).

    Without a model the Keras 3 names are unknown, so keys keep Keras 2's object paths;
    ``load_checkpoint_into`` is what matches them to a model.
    """
    graph = ObjectGraph.of(reader, path)
    variables: dict[str, np.ndarray] = {}
    for _, node in graph.leaves(0, skip=_NOT_MODEL):
        key = graph.key(node)
        if _is_model_leaf(key):
            variables[f"{MODEL}/{key.removesuffix(VALUE_SUFFIX)}"] = np.asarray(reader.get_tensor(key))
    opt = _optimizer_node(graph, 0)
    if opt is not None:
        for _, node in graph.leaves(opt, skip=()):
            key = graph.key(node)
            variables[f"{OPTIMIZER}/{key.removesuffix(VALUE_SUFFIX)}"] = np.asarray(reader.get_tensor(key))
    return ModelState(variables, None, None, {"written_by": "tf-keras"})


# --------------------------------------------------------------------------- SavedModel
def _parse_saved_metadata(data: bytes) -> list[dict[str, Any]]:
    """Decode ``keras_metadata.pb`` (``SavedMetadata``) without tf-keras's generated code."""

    def varint(buf: bytes, pos: int) -> tuple[int, int]:
        result = shift = 0
        while True:
            byte = buf[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return result, pos

    def fields(buf: bytes):
        pos = 0
        while pos < len(buf):
            tag, pos = varint(buf, pos)
            number, wire = tag >> 3, tag & 7
            if wire == 0:
                value, pos = varint(buf, pos)
            elif wire == 2:
                length, pos = varint(buf, pos)
                value, pos = buf[pos : pos + length], pos + length
            elif wire == 5:
                value, pos = buf[pos : pos + 4], pos + 4
            elif wire == 1:
                value, pos = buf[pos : pos + 8], pos + 8
            else:
                raise ValueError(f"unexpected wire type {wire}")
            yield number, value

    nodes = []
    for number, value in fields(data):
        if number != 1:
            continue
        node: dict[str, Any] = {}
        for n, v in fields(value):
            if n == 2:
                node["node_id"] = v
            elif n in (3, 4, 5):
                node[{3: "node_path", 4: "identifier", 5: "metadata"}[n]] = v.decode()
        nodes.append(node)
    return nodes


def metadata_in_graph(path: Path) -> dict[str, Any] | None:
    """TF 2.0-2.4 kept the Keras metadata in ``saved_model.pb`` (the root's ``SavedUserObject``).

    Returns the root's metadata when the root is a Keras model, else None.
    """
    try:
        root = guard.read_saved_model_proto(path).meta_graphs[0].object_graph_def.nodes[0]
    except (ModelkeepError, OSError, IndexError):
        return None
    if root.WhichOneof("kind") != "user_object" or not root.user_object.identifier.startswith("_tf_keras"):
        return None
    try:
        meta = root.user_object.metadata
        return guard.load_json(meta, source=path / "saved_model.pb", what="Keras metadata") if meta else None
    except (ValueError, ModelkeepError):
        return None


def savedmodel_root_metadata(path: Path) -> dict[str, Any]:
    """The root object's metadata in a tf-keras SavedModel: class, config, training config."""
    if not (path / METADATA_FILE).exists():
        meta = metadata_in_graph(path)
        if meta is not None:
            return meta
    try:
        nodes = _parse_saved_metadata(guard.read_regular(path / METADATA_FILE, max_bytes=limits.current().max_protobuf_bytes))
        root = next(n for n in nodes if n.get("node_path") == "root")
        return guard.load_json(root["metadata"], source=path / METADATA_FILE, what="root metadata")
    except (OSError, ValueError, StopIteration, IndexError, KeyError) as exc:
        raise CorruptCheckpointError(
            f"load_model: {path / METADATA_FILE} cannot be read ({exc}); the Keras part of the "
            "SavedModel is truncated or corrupt. It can still serve predictions through "
            "tf.saved_model.load(path)."
        ) from exc


def build_keras3_model(config: dict, training_config: dict | None, *, source: str, custom_objects: dict | None = None,
                       compile: bool = True, safe_mode: bool = True, keras_version: str | None = None) -> Any:
    """A Keras 3 model from a Keras 2 model config (and training config), uncompiled weights."""
    import keras

    if config is None or "config" not in config:
        raise UnsupportedModelError(
            f"load_model: {source} holds no model config (a subclassed Keras 2 model without "
            "get_config), so the architecture cannot be rebuilt. Build the model in code and call "
            "modelkeep.load_weights(model, path)."
        )
    k3 = legacy_config.to_keras3_model_config(config, custom_objects=custom_objects, safe_mode=safe_mode,
                                              keras_version=keras_version)
    try:
        with keras.saving.custom_object_scope(custom_objects or {}):
            model = keras.saving.deserialize_keras_object(k3, custom_objects=custom_objects, safe_mode=safe_mode)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        if isinstance(exc, UnsupportedModelError):
            raise
        raise UnsupportedModelError(
            f"load_model: the Keras 2 architecture in {source} could not be rebuilt in Keras 3: {exc}. "
            "Build the model in code and call modelkeep.load_weights(model, path)."
        ) from exc
    if compile and training_config:
        try:
            cc = legacy_config.to_keras3_compile_config(training_config, single_output=len(model.outputs) == 1)
            model.compile_from_config(cc)
        except (TypeError, ValueError, KeyError, UnsupportedModelError) as exc:
            warnings.warn(
                f"load_model: the training config in {source} could not be restored ({exc}); the "
                "model is returned uncompiled. Call model.compile(...) yourself.",
                stacklevel=3,
            )
    return model


def load_savedmodel(path: Path, **kwargs: Any) -> Any:
    """A full Keras 3 model from a tf-keras ``model.save(dir)`` SavedModel."""

    meta = savedmodel_root_metadata(path)
    config = {"class_name": meta.get("class_name"), "config": meta.get("config")} if meta.get("config") else None
    model = build_keras3_model(config, meta.get("training_config"), source=str(path), keras_version=meta.get("keras_version"),
                               **kwargs)
    prefix = path / "variables" / "variables"
    reader = guard.open_tf_checkpoint(prefix, source=path)  # sizes checked; CorruptCheckpointError if unreadable
    load_checkpoint_into(model, prefix, reader, optimizer=kwargs.get("compile", True))
    return model


def read_tf_keras_savedmodel(path: Path) -> ModelState:
    """A tf-keras SavedModel as a ``ModelState`` with Keras 3 names, config and compile config.

    The model is rebuilt in Keras 3 and captured, so the state restores positionally like
    any other. Classes only known through ``custom_objects`` cannot be rebuilt here; then
    the state keeps Keras 2 paths in object-graph order and the config translated loosely,
    and ``build_model`` (which has the custom objects) finishes the job.
    """

    try:
        return _captured(load_savedmodel(path), "tf-keras SavedModel")
    except UnsupportedModelError as exc:
        if not getattr(exc, "unknown_class", False):
            raise
        warnings.warn(
            f"{exc} With custom_objects the model is rebuilt from them, but the optimizer state of "
            "this SavedModel is not carried (build and compile it in code, then "
            "modelkeep.load_weights, to keep it).",
            stacklevel=4,
        )
    meta = savedmodel_root_metadata(path)
    state = read_tf_keras_checkpoint(path, guard.open_tf_checkpoint(path / "variables" / "variables", source=path))
    state.variables = {k: v for k, v in state.variables.items() if k.startswith(MODEL + "/")}
    config = {"class_name": meta.get("class_name"), "config": meta.get("config")}
    state.model_config = legacy_config.to_keras3_model_config(config, strict=False, keras_version=meta.get("keras_version"))
    state.compile_config = legacy_config.to_keras3_compile_config(meta.get("training_config"))
    state.metadata["written_by"] = "tf-keras SavedModel"
    return state


def _captured(model: Any, written_by: str) -> ModelState:
    from modelkeep.capture import capture

    state = capture(model, include_optimizer=True, metadata={"written_by": written_by})
    return state


# --------------------------------------------------------------------------- HDF5
# (in legacy_h5; re-exported here, where the formats look for them)
from modelkeep.formats.legacy_h5 import load_h5_into, load_h5_model, read_keras2_h5  # noqa: E402, F401
